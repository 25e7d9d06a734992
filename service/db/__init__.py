"""Storage of the coordinator: ORM models, sessions, repository functions, migrations."""

from service.db.domain import (
    TRANSITIONS,
    Artifact,
    Job,
    JobState,
    Teacher,
    TeacherState,
    Trial,
    TrialState,
)
from service.db.storage import (
    BadCursorError,
    IllegalTransitionError,
    NotFoundError,
    Repository,
    StaleTrialError,
    Storage,
    StorageError,
    UpdateFinishedJobError,
    UpdateFinishedTrialError,
)

__all__ = [
    "TRANSITIONS",
    "Artifact",
    "BadCursorError",
    "IllegalTransitionError",
    "Job",
    "JobState",
    "NotFoundError",
    "Repository",
    "StaleTrialError",
    "Storage",
    "StorageError",
    "Teacher",
    "TeacherState",
    "Trial",
    "TrialState",
    "UpdateFinishedJobError",
    "UpdateFinishedTrialError",
]
