"""Running one trial: datasets, teacher zoo, distillation training, the Ray actor."""

from workers import zoo
from workers.spec import (
    BadSpecError,
    FullTraining,
    SearchTraining,
    TrainingFailedError,
    TrialResult,
    TrialSpec,
    WorkerError,
    WorkerOutOfMemoryError,
)

__all__ = [
    "BadSpecError",
    "FullTraining",
    "SearchTraining",
    "TrainingFailedError",
    "TrialResult",
    "TrialSpec",
    "WorkerError",
    "WorkerOutOfMemoryError",
    "zoo",
]
