"""Frozen domain objects handed out by the storage (never live ORM rows)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "TRANSITIONS",
    "Artifact",
    "Job",
    "JobState",
    "Teacher",
    "TeacherState",
    "Trial",
    "TrialState",
    "next_states",
]


class TrialState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    def is_finished(self) -> bool:
        return not next_states(self)


class JobState(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    FINALIZING = "finalizing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_finished(self) -> bool:
        return not next_states(self)


class TeacherState(str, enum.Enum):
    TRAINING = "training"
    READY = "ready"
    FAILED = "failed"

    def is_finished(self) -> bool:
        return not next_states(self)


_T, _J, _H = TrialState, JobState, TeacherState

#: The one table of allowed state changes, per kind of object; the storage refuses every other
#: one. A state with no successor is finished. RUNNING -> RUNNING is a trial's next attempt.
#: (One table per enum: the enums are str-valued, so "running" of a job and of a trial would
#: collide as keys of a single dict.)
TRANSITIONS: dict[type[enum.Enum], dict[Any, frozenset[Any]]] = {
    TrialState: {
        _T.PENDING: frozenset({_T.RUNNING, _T.FAILED}),
        _T.RUNNING: frozenset({_T.RUNNING, _T.SUCCEEDED, _T.FAILED}),
        _T.SUCCEEDED: frozenset(),
        _T.FAILED: frozenset(),
    },
    JobState: {
        _J.QUEUED: frozenset({_J.RUNNING, _J.FAILED, _J.CANCELLED}),
        _J.RUNNING: frozenset({_J.FINALIZING, _J.FAILED, _J.CANCELLED}),
        _J.FINALIZING: frozenset({_J.SUCCEEDED, _J.FAILED, _J.CANCELLED}),
        _J.SUCCEEDED: frozenset(),
        _J.FAILED: frozenset(),
        _J.CANCELLED: frozenset(),
    },
    TeacherState: {
        _H.TRAINING: frozenset({_H.READY, _H.FAILED}),
        _H.READY: frozenset(),
        _H.FAILED: frozenset(),
    },
}


def next_states(state: TrialState | JobState | TeacherState) -> frozenset[Any]:
    """The states `state` may change to (empty: finished)."""
    return TRANSITIONS[type(state)][state]


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
    status: TeacherState
    source: str
    accuracy: float | None
    params: int
    input_shape: tuple[int, ...]
    train_settings: dict[str, Any] | None
    weights_id: int | None
    error: str | None
    created_at: datetime
    updated_at: datetime
    #: the training's last report: epoch, epochs, val_accuracy (None: not training / no report)
    progress: dict[str, Any] | None = None
    #: the user's name for it (ONNX uploads), None when unnamed
    name: str | None = None
    #: what a size budget is checked against: "flops" (the teacher's), "min_params" and
    #: "min_flops" (the smallest student its space can build); None: checked before they were
    sizes: dict[str, int] | None = None


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
    #: the latency target (`workers.spec.LatencySpec` fields; None: latency is not measured)
    latency: dict[str, Any] | None = None
    #: the size budget of a `*_target` reward: {"measure": "params" | "flops", "value": the
    #: absolute budget, "times_smaller": the factor asked for or None}
    target: dict[str, Any] | None = None
    #: a student below chance + this fraction of the teacher's margin over chance cannot rank
    #: first or be fully trained (None or 0: no floor)
    accuracy_floor: float | None = None

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
    #: the search step and the kernel (GP) that proposed it (None: random or warm-up)
    step: int | None = None
    kernel: int | None = None
    #: the running attempt's last report: epoch, epochs, val_accuracy, phase (None: none yet)
    progress: dict[str, Any] | None = None
    heartbeat_at: datetime | None = None
    #: attempts the coordinator lost: {attempt, code, message, at} (worker died, stalled, ...)
    lost_attempts: list[dict[str, Any]] = field(default_factory=list)
    #: measured latencies (ms) of the student and of the teacher on the same worker, and the
    #: student's (p90 - p10) / median over its timed runs (None: not measured)
    latency_ms: float | None = None
    teacher_latency_ms: float | None = None
    latency_spread: float | None = None
    #: a fully trained student's model card (`workers.export`), None before full training
    card: dict[str, Any] | None = None
    #: why the trial exists beside the searcher's proposals: "seed:uniform" / "seed:global"
    #: (the budget's seeds, `embedding.budget`); None: proposed by the searcher
    tag: str | None = None
    #: the finishing evaluation (a longer second score that chooses the top-k): "accuracy",
    #: "reward", "epochs", "seconds"; None: not among the finalists (or no finish)
    finish: dict[str, Any] | None = None
