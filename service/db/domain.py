"""Frozen domain objects handed out by the storage (never live ORM rows)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = ["Artifact", "Job", "JobState", "Teacher", "Trial", "TrialState"]


class TrialState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    def is_finished(self) -> bool:
        return self in (TrialState.SUCCEEDED, TrialState.FAILED)


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    FINALIZING = "finalizing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


@dataclass(frozen=True)
class Artifact:
    id: int
    kind: str
    path: str
    size: int
    sha256: str
    created_at: datetime


@dataclass(frozen=True)
class Teacher:
    id: int
    arch: str
    num_classes: int
    dataset: str
    status: str
    source: str
    accuracy: float | None
    params: int
    input_shape: tuple[int, ...]
    train_settings: dict[str, Any] | None
    weights_id: int | None
    error: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class Job:
    id: int
    teacher_id: int
    dataset: str
    strategy: str
    steps: int
    per_step: int
    search: dict[str, Any]
    top_k: int
    full_training: dict[str, Any]
    reward: str
    seed: int
    embedding_from: int | None
    searcher: dict[str, Any]
    status: JobState
    error: str | None
    encoder_id: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @property
    def budget(self) -> int:
        """Trials the search evaluates: `steps * per_step`."""
        return self.steps * self.per_step


@dataclass(frozen=True)
class Trial:
    id: int
    job_id: int
    number: int
    status: TrialState
    action: dict[str, Any]
    params: int | None
    flops: int | None
    accuracy: float | None
    compression: float | None
    reward: float | None
    attempts: int
    worker: str | None
    history: list[float]
    seconds: dict[str, float]
    error_code: str | None
    error: str | None
    weights_id: int | None
    final_accuracy: float | None
    final_history: list[float] | None
    final_seconds: float | None
    final_weights_id: int | None
    onnx_id: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime
