"""Storage of the coordinator: ORM models, sessions, repository functions, migrations."""

from service.db.domain import Artifact, Job, JobState, Teacher, Trial, TrialState
from service.db.storage import (
    BadCursorError,
    NotFoundError,
    Repository,
    StaleTrialError,
    Storage,
    StorageError,
    UpdateFinishedJobError,
    UpdateFinishedTrialError,
)

__all__ = [
    "Artifact",
    "BadCursorError",
    "Job",
    "JobState",
    "NotFoundError",
    "Repository",
    "StaleTrialError",
    "Storage",
    "StorageError",
    "Teacher",
    "Trial",
    "TrialState",
    "UpdateFinishedJobError",
    "UpdateFinishedTrialError",
]
