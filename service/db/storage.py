"""Engine/session handling and the repository: the only code that touches SQLAlchemy sessions.

`Storage(url)` owns the engine; `with storage.session() as repo:` is one transaction (committed
on success, rolled back on error) whose `Repository` methods return frozen domain objects.

Why one module of ~650 lines: it is the one place that touches sessions and rows (STYLE.md,
"the database backend lives in one place"), so every query and state change is here, behind
the transition table of `service.db.domain`.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Engine, case, create_engine, event, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from service.db.domain import (
    Artifact,
    Job,
    JobState,
    Teacher,
    TeacherState,
    Trial,
    TrialState,
    next_states,
)
from service.db.models import ArtifactModel, JobModel, TeacherModel, TrialModel

__all__ = [
    "BadCursorError",
    "NotFoundError",
    "Repository",
    "StaleTrialError",
    "Storage",
    "IllegalTransitionError",
    "StorageError",
    "UpdateFinishedJobError",
    "UpdateFinishedTrialError",
    "decode_cursor",
    "decode_job_cursor",
    "encode_cursor",
    "encode_job_cursor",
    "make_engine",
    "utcnow",
]


class StorageError(Exception):
    """Base of the storage's errors."""


class NotFoundError(StorageError):
    """No row with that id."""


class IllegalTransitionError(StorageError):
    """A state change that `service.db.domain.TRANSITIONS` does not allow."""


def _check_move(
    what: str, current: TrialState | JobState | TeacherState, target: enum.Enum
) -> None:
    """Raise unless `TRANSITIONS` allows `current -> target` (finished states: the specific
    `UpdateFinished*Error`)."""
    if target in next_states(current):
        return
    message = f"{what} is {current.value}; it cannot become {target.value}"
    if not next_states(current):
        if isinstance(current, TrialState):
            raise UpdateFinishedTrialError(message)
        if isinstance(current, JobState):
            raise UpdateFinishedJobError(message)
    raise IllegalTransitionError(message)


class UpdateFinishedTrialError(IllegalTransitionError):
    """A finished trial (succeeded/failed) cannot change state again."""


class StaleTrialError(StorageError):
    """The trial was re-dispatched since: this attempt lost the race and its result is ignored."""


class UpdateFinishedJobError(IllegalTransitionError):
    """A finished job (succeeded/failed/cancelled) cannot change state again."""


class BadCursorError(StorageError):
    """The pagination cursor was not produced by this API."""


#: Ids are INTEGER columns (32-bit on Postgres): a larger number names no row, and must not reach
#: the database (SQLite raises OverflowError, Postgres "integer out of range" -> a 500).
MAX_ID = 2**31 - 1


def _no_such(kind: str, row_id: int) -> NotFoundError | None:
    return None if 0 < row_id <= MAX_ID else NotFoundError(f"{kind} {row_id} not found")


def utcnow() -> datetime:
    """Naive UTC now (stored as `timestamp without time zone` everywhere)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)  # noqa: UP017 (py3.10 target)


def make_engine(url: str) -> Engine:
    """An engine for `url`: Postgres with `pool_pre_ping`; SQLite shared across threads, WAL."""
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, future=True
        )

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control from pysqlite (it would run our SELECTs outside any
            # transaction), so that "BEGIN IMMEDIATE" below makes read-modify-write atomic.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            if ":memory:" not in url and url not in ("sqlite://", "sqlite:///"):
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Any) -> None:
            # Writers serialise on SQLite's write lock (what FOR UPDATE does on Postgres);
            # read-only sessions get a plain snapshot and never wait for a writer (WAL).
            readonly = conn.get_execution_options().get("esnac_readonly", False)
            conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, future=True)


# The API's pagination cursors: opaque url-safe base64 without padding, decoded here only.
_BAD_CURSOR = "invalid cursor: pass back the next_cursor of a previous response unchanged"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(cursor: str) -> bytes:
    return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))


def encode_job_cursor(job_id: int) -> str:
    """The job-list cursor: jobs older (smaller id) than `job_id` come next."""
    return _b64(f"j{job_id}".encode())


def decode_job_cursor(cursor: str) -> int:
    """Raises `BadCursorError` for anything `encode_job_cursor` did not produce."""
    try:
        raw = _unb64(cursor).decode()
        if not raw.startswith("j"):
            raise ValueError(raw)
        return int(raw[1:])
    except (binascii.Error, ValueError, UnicodeDecodeError) as e:
        raise BadCursorError(_BAD_CURSOR) from e


def encode_cursor(updated_at: datetime, trial_id: int) -> str:
    """The trial-polling cursor: the (updated_at, id) position of the last trial seen."""
    return _b64(json.dumps([updated_at.isoformat(), trial_id]).encode())


def decode_cursor(cursor: str) -> tuple[datetime, int]:
    """Raises `BadCursorError` for anything `encode_cursor` did not produce."""
    try:
        raw = _unb64(cursor)
        stamp, tid = json.loads(raw)
        if not 0 <= int(tid) <= MAX_ID:
            raise ValueError(f"trial id {tid} out of range")
        return datetime.fromisoformat(stamp), int(tid)
    except (binascii.Error, ValueError, TypeError) as e:
        raise BadCursorError(_BAD_CURSOR) from e


class Storage:
    """Owns the engine; hands out one `Repository` per transaction."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(
            self.engine.execution_options(esnac_readonly=True), expire_on_commit=False
        )

    @contextmanager
    def session(self, *, readonly: bool = False) -> Iterator[Repository]:
        """One transaction: commit when the block ends normally, roll back on an exception.

        `readonly=True` promises no writes: on SQLite such a transaction does not take the
        write lock, so reads (API polling) never queue behind the scheduler's writes.
        """
        with (self._read_sessions if readonly else self._sessions)() as s, s.begin():
            yield Repository(s)

    def ping(self) -> None:
        """Raise if the database cannot be reached."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()


# ------------------------------------------------------------------------------ conversions
def _artifact(m: ArtifactModel) -> Artifact:
    return Artifact(m.id, m.kind, m.path, m.size, m.sha256, m.created_at)


def _teacher(m: TeacherModel) -> Teacher:
    return Teacher(
        id=m.id, arch=m.arch, num_classes=m.num_classes, dataset=m.dataset,
        status=TeacherState(m.status),
        source=m.source, accuracy=m.accuracy, params=m.params, input_shape=tuple(m.input_shape),
        train_settings=m.train_settings, weights_id=m.weights_id, error=m.error,
        created_at=m.created_at, updated_at=m.updated_at,
        progress=dict(m.progress) if m.progress is not None else None, name=m.name,
        sizes=dict(m.sizes) if m.sizes is not None else None,
    )  # fmt: skip


def _job(m: JobModel) -> Job:
    return Job(
        id=m.id, teacher_id=m.teacher_id, dataset=m.dataset, strategy=m.strategy, steps=m.steps,
        per_step=m.per_step, search=dict(m.search), top_k=m.top_k,
        full_training=dict(m.full_training), reward=m.reward, seed=m.seed,
        embedding_from=m.embedding_from, searcher=dict(m.searcher), status=JobState(m.status),
        error=m.error, encoder_id=m.encoder_id, created_at=m.created_at,
        started_at=m.started_at, finished_at=m.finished_at, updated_at=m.updated_at,
        latency=dict(m.latency) if m.latency is not None else None,
        target=dict(m.target) if m.target is not None else None,
        accuracy_floor=m.accuracy_floor,
    )  # fmt: skip


def _trial(m: TrialModel) -> Trial:
    return Trial(
        id=m.id, job_id=m.job_id, number=m.number, status=TrialState(m.status),
        action=dict(m.action), params=m.params, flops=m.flops, accuracy=m.accuracy,
        compression=m.compression, reward=m.reward, attempts=m.attempts, worker=m.worker,
        history=list(m.history or []), seconds=dict(m.seconds or {}), error_code=m.error_code,
        error=m.error, weights_id=m.weights_id, final_accuracy=m.final_accuracy,
        final_history=list(m.final_history) if m.final_history is not None else None,
        final_seconds=m.final_seconds, final_weights_id=m.final_weights_id, onnx_id=m.onnx_id,
        created_at=m.created_at, started_at=m.started_at, finished_at=m.finished_at,
        updated_at=m.updated_at, step=m.step, kernel=m.kernel,
        progress=dict(m.progress) if m.progress is not None else None,
        heartbeat_at=m.heartbeat_at, lost_attempts=list(m.lost_attempts or []),
        latency_ms=m.latency_ms, teacher_latency_ms=m.teacher_latency_ms,
        latency_spread=m.latency_spread, card=dict(m.card) if m.card is not None else None,
        tag=m.tag, finish=dict(m.finish) if m.finish is not None else None,
    )  # fmt: skip


_TRIAL_FIELDS = frozenset(
    {
        "params", "flops", "accuracy", "compression", "reward", "worker", "history", "seconds",
        "error_code", "error", "weights_id", "latency_ms", "teacher_latency_ms", "latency_spread",
    }
)  # fmt: skip


class Repository:
    """Storage operations inside one transaction. Returns frozen domain objects."""

    def __init__(self, session: Session) -> None:
        self._s = session

    # -------------------------------------------------------------------------- artifacts
    def add_artifact(self, kind: str, path: str, size: int, sha256: str) -> Artifact:
        m = ArtifactModel(kind=kind, path=path, size=size, sha256=sha256, created_at=utcnow())
        self._s.add(m)
        self._s.flush()
        return _artifact(m)

    def get_artifact(self, artifact_id: int) -> Artifact:
        if err := _no_such("artifact", artifact_id):
            raise err
        m = self._s.get(ArtifactModel, artifact_id)
        if m is None:
            raise NotFoundError(f"artifact {artifact_id} not found")
        return _artifact(m)

    # -------------------------------------------------------------------------- teachers
    def create_teacher(
        self,
        *,
        arch: str,
        num_classes: int,
        dataset: str,
        status: TeacherState,
        source: str,
        params: int,
        input_shape: Sequence[int],
        accuracy: float | None = None,
        weights_id: int | None = None,
        train_settings: dict[str, Any] | None = None,
        name: str | None = None,
        sizes: dict[str, int] | None = None,
    ) -> Teacher:
        now = utcnow()
        m = TeacherModel(
            arch=arch, name=name, num_classes=num_classes, dataset=dataset,
            status=TeacherState(status).value, source=source,
            accuracy=accuracy, params=params, input_shape=list(input_shape),
            train_settings=train_settings, weights_id=weights_id, created_at=now, updated_at=now,
            sizes=sizes,
        )  # fmt: skip
        self._s.add(m)
        self._s.flush()
        return _teacher(m)

    def get_teacher(self, teacher_id: int) -> Teacher:
        if err := _no_such("teacher", teacher_id):
            raise err
        m = self._s.get(TeacherModel, teacher_id)
        if m is None:
            raise NotFoundError(f"teacher {teacher_id} not found")
        return _teacher(m)

    def list_teachers(self, status: TeacherState | None = None) -> list[Teacher]:
        q = select(TeacherModel).order_by(TeacherModel.id)
        if status is not None:
            q = q.where(TeacherModel.status == TeacherState(status).value)
        return [_teacher(m) for m in self._s.scalars(q)]

    def finish_teacher(
        self,
        teacher_id: int,
        *,
        weights_id: int | None = None,
        accuracy: float | None = None,
        error: str | None = None,
    ) -> Teacher:
        """End a teacher's training: ready with weights + accuracy, or failed with `error`."""
        m = self._s.get(TeacherModel, teacher_id, with_for_update=True)
        if m is None:
            raise NotFoundError(f"teacher {teacher_id} not found")
        target = TeacherState.READY if error is None else TeacherState.FAILED
        _check_move(f"teacher {teacher_id}", TeacherState(m.status), target)
        if error is None:
            m.weights_id, m.accuracy = weights_id, accuracy
        else:
            m.error = error
        m.status = target.value
        m.updated_at = utcnow()
        return _teacher(m)

    def record_teacher_progress(self, teacher_id: int, progress: dict[str, Any]) -> bool:
        """Store a training teacher's progress report; False if it is not training any more."""
        m = self._s.get(TeacherModel, teacher_id, with_for_update=True)
        if m is None:
            raise NotFoundError(f"teacher {teacher_id} not found")
        if m.status != TeacherState.TRAINING.value:
            return False
        m.progress = dict(progress)
        m.updated_at = utcnow()
        return True

    # -------------------------------------------------------------------------- jobs
    def create_job(self, **values: Any) -> Job:
        now = utcnow()
        m = JobModel(status=JobState.QUEUED.value, created_at=now, updated_at=now, **values)
        self._s.add(m)
        self._s.flush()
        return _job(m)

    def get_job(self, job_id: int) -> Job:
        if err := _no_such("job", job_id):
            raise err
        m = self._s.get(JobModel, job_id)
        if m is None:
            raise NotFoundError(f"job {job_id} not found")
        return _job(m)

    def list_jobs(
        self, *, status: str | None = None, before_id: int | None = None, limit: int = 50
    ) -> list[Job]:
        """Jobs newest first (id descending), optionally with ids below `before_id`."""
        q = select(JobModel).order_by(JobModel.id.desc()).limit(limit)
        if status is not None:
            q = q.where(JobModel.status == status)
        if before_id is not None:
            q = q.where(JobModel.id < min(before_id, MAX_ID + 1))
        return [_job(m) for m in self._s.scalars(q)]

    def active_jobs(self) -> list[Job]:
        """Jobs the scheduler must drive: queued, running or finalizing, oldest first."""
        active = [JobState.QUEUED.value, JobState.RUNNING.value, JobState.FINALIZING.value]
        q = select(JobModel).where(JobModel.status.in_(active)).order_by(JobModel.id)
        return [_job(m) for m in self._s.scalars(q)]

    def set_job_state(self, job_id: int, state: JobState, *, error: str | None = None) -> Job:
        """Move a job to `state` (row locked); a finished job raises `UpdateFinishedJobError`."""
        if err := _no_such("job", job_id):
            raise err
        m = self._s.get(JobModel, job_id, with_for_update=True)
        if m is None:
            raise NotFoundError(f"job {job_id} not found")
        _check_move(f"job {job_id}", JobState(m.status), state)
        now = utcnow()
        m.status = state.value
        if state is JobState.RUNNING and m.started_at is None:
            m.started_at = now
        if state.is_finished():
            m.finished_at = now
        if error is not None:
            m.error = error
        m.updated_at = now
        return _job(m)

    def set_job_encoder(self, job_id: int, artifact_id: int) -> None:
        m = self._s.get(JobModel, job_id, with_for_update=True)
        if m is None:
            raise NotFoundError(f"job {job_id} not found")
        m.encoder_id = artifact_id
        m.updated_at = utcnow()

    def job_counts(self, job_id: int) -> dict[str, int]:
        """Trial counts by status, plus `created` and `finalized`."""
        rows = self._s.execute(
            select(TrialModel.status, func.count())
            .where(TrialModel.job_id == job_id)
            .group_by(TrialModel.status)
        ).all()
        counts = {s.value: 0 for s in TrialState}
        for status, n in rows:
            counts[status] = int(n)
        counts["created"] = sum(counts[s.value] for s in TrialState)
        counts["finalized"] = int(
            self._s.scalar(
                select(func.count()).where(
                    TrialModel.job_id == job_id, TrialModel.final_accuracy.is_not(None)
                )
            )
            or 0
        )
        return counts

    def best_trial(self, job_id: int, min_accuracy: float | None = None) -> Trial | None:
        """The succeeded trial with the highest reward (ties: lowest number); with
        `min_accuracy`, one at or above it when there is one."""
        below = case((TrialModel.accuracy < (min_accuracy or 0.0), 1), else_=0)
        m = self._s.scalars(
            select(TrialModel)
            .where(TrialModel.job_id == job_id, TrialModel.status == TrialState.SUCCEEDED.value)
            .order_by(below, TrialModel.reward.desc(), TrialModel.number)
            .limit(1)
        ).first()
        return _trial(m) if m is not None else None

    # -------------------------------------------------------------------------- trials
    def create_trials(
        self,
        job_id: int,
        actions: Sequence[dict[str, Any]],
        *,
        step: int | None = None,
        kernels: Sequence[int | None] | None = None,
        tags: Sequence[str | None] | None = None,
    ) -> list[Trial]:
        """Append pending trials, numbered after the job's existing ones.

        Args:
            job_id: the job.
            actions: one action (JSON dict) per trial.
            step: the search step that proposed them.
            kernels: the kernel that proposed each (None entries: not model-based).
            tags: why each exists beside the searcher's proposals (`Trial.tag`).
        """
        if kernels is not None and len(kernels) != len(actions):
            raise StorageError(f"{len(actions)} actions but {len(kernels)} kernels")
        if tags is not None and len(tags) != len(actions):
            raise StorageError(f"{len(actions)} actions but {len(tags)} tags")
        job = self._s.get(JobModel, job_id, with_for_update=True)
        if job is None:
            raise NotFoundError(f"job {job_id} not found")
        if JobState(job.status).is_finished():
            raise UpdateFinishedJobError(f"job {job_id} is already {job.status}")
        start = self._s.scalar(
            select(func.coalesce(func.max(TrialModel.number) + 1, 0)).where(
                TrialModel.job_id == job_id
            )
        )
        now = utcnow()
        models = [
            TrialModel(
                job_id=job_id,
                number=int(start or 0) + k,
                status=TrialState.PENDING.value,
                action=dict(a),
                attempts=0,
                history=[],
                seconds={},
                step=step,
                kernel=None if kernels is None else kernels[k],
                tag=None if tags is None else tags[k],
                created_at=now,
                updated_at=now,
            )  # fmt: skip
            for k, a in enumerate(actions)
        ]
        self._s.add_all(models)
        self._s.flush()
        return [_trial(m) for m in models]

    def get_trial(self, trial_id: int) -> Trial:
        if err := _no_such("trial", trial_id):
            raise err
        m = self._s.get(TrialModel, trial_id)
        if m is None:
            raise NotFoundError(f"trial {trial_id} not found")
        return _trial(m)

    def job_trials(self, job_id: int) -> list[Trial]:
        """Every trial of a job, by number."""
        q = select(TrialModel).where(TrialModel.job_id == job_id).order_by(TrialModel.number)
        return [_trial(m) for m in self._s.scalars(q)]

    def poll_trials(
        self,
        job_id: int,
        *,
        status: str | None = None,
        updated_after: datetime | None = None,
        after: tuple[datetime, int] | None = None,
        limit: int = 100,
    ) -> list[Trial]:
        """Trials ordered by (updated_at, id), strictly after the cursor position `after`.

        Served by the index (job_id, updated_at, id), so it stays fast for large jobs.
        """
        q = select(TrialModel).where(TrialModel.job_id == job_id)
        if status is not None:
            q = q.where(TrialModel.status == status)
        if updated_after is not None:
            q = q.where(TrialModel.updated_at > updated_after)
        if after is not None:
            stamp, tid = after
            q = q.where(
                (TrialModel.updated_at > stamp)
                | ((TrialModel.updated_at == stamp) & (TrialModel.id > tid))
            )
        q = q.order_by(TrialModel.updated_at, TrialModel.id).limit(limit)
        return [_trial(m) for m in self._s.scalars(q)]

    def update_trial(
        self,
        trial_id: int,
        state: TrialState,
        *,
        expect_attempts: int | None = None,
        new_attempt: bool = False,
        **values: Any,
    ) -> Trial:
        """Change one trial's state (row locked; `_check_move` enforces `TRANSITIONS`).

        Args:
            trial_id: the trial.
            state: the new state.
            expect_attempts: if given, the trial must still be on this attempt; a trial that was
                re-dispatched since raises `StaleTrialError` (the caller's result is stale).
            new_attempt: count a new dispatch (attempts + 1, started_at now, worker reset).
            **values: result fields (params, flops, accuracy, compression, reward, worker,
                history, seconds, error_code, error, weights_id).

        Raises:
            UpdateFinishedTrialError: the trial already succeeded or failed.
            StaleTrialError: see `expect_attempts`.
        """
        unknown = set(values) - _TRIAL_FIELDS
        if unknown:
            raise StorageError(f"unknown trial fields: {sorted(unknown)}")
        m = self._s.get(TrialModel, trial_id, with_for_update=True)
        if m is None:
            raise NotFoundError(f"trial {trial_id} not found")
        _check_move(f"trial {trial_id}", TrialState(m.status), state)
        if expect_attempts is not None and m.attempts != expect_attempts:
            raise StaleTrialError(
                f"trial {trial_id} is on attempt {m.attempts}, not {expect_attempts}"
            )
        now = utcnow()
        if new_attempt:
            m.attempts += 1
            m.started_at = now
            m.worker = None
            m.progress, m.heartbeat_at = None, now
        for k, v in values.items():
            setattr(m, k, v)
        m.status = state.value
        if state.is_finished():
            m.finished_at = now
        m.updated_at = now
        return _trial(m)

    def record_progress(
        self, trial_id: int, attempt: int, progress: dict[str, Any], beat_at: datetime
    ) -> bool:
        """Store a running attempt's progress report and heartbeat time; False (nothing stored)
        if the trial is no longer running that attempt."""
        m = self._s.get(TrialModel, trial_id, with_for_update=True)
        if m is None:
            raise NotFoundError(f"trial {trial_id} not found")
        if m.status != TrialState.RUNNING.value or m.attempts != attempt:
            return False
        m.progress, m.heartbeat_at = dict(progress), beat_at
        m.updated_at = utcnow()
        return True

    def record_lost_attempt(self, trial_id: int, attempt: int, code: str, message: str) -> None:
        """Note that attempt `attempt` of a trial was lost (its state does not change)."""
        m = self._s.get(TrialModel, trial_id, with_for_update=True)
        if m is None:
            raise NotFoundError(f"trial {trial_id} not found")
        entry = {"attempt": attempt, "code": code, "message": message,
                 "at": utcnow().isoformat()}  # fmt: skip
        m.lost_attempts = [*(m.lost_attempts or []), entry]
        m.updated_at = utcnow()

    def fail_unfinished_trials(self, job_id: int, code: str, message: str) -> int:
        """Fail every pending/running trial of a job (cancel); returns how many."""
        q = (
            select(TrialModel)
            .where(
                TrialModel.job_id == job_id,
                TrialModel.status.in_([TrialState.PENDING.value, TrialState.RUNNING.value]),
            )
            .with_for_update()
        )
        now = utcnow()
        n = 0
        for m in self._s.scalars(q):
            _check_move(f"trial {m.id}", TrialState(m.status), TrialState.FAILED)
            m.status, m.error_code, m.error = TrialState.FAILED.value, code, message
            m.finished_at = m.updated_at = now
            n += 1
        return n

    def record_finish(self, trial_id: int, finish: dict[str, Any]) -> Trial:
        """Attach a succeeded trial's finishing evaluation (`Trial.finish`)."""
        m = self._s.get(TrialModel, trial_id, with_for_update=True)
        if m is None:
            raise NotFoundError(f"trial {trial_id} not found")
        if m.status != TrialState.SUCCEEDED.value:
            raise StorageError(f"trial {trial_id} is {m.status}; only succeeded ones finish")
        m.finish = dict(finish)
        m.updated_at = utcnow()
        return _trial(m)

    def record_final(
        self,
        trial_id: int,
        *,
        accuracy: float,
        history: Sequence[float],
        seconds: float,
        weights_id: int,
        onnx_id: int | None,
        card: dict[str, Any] | None = None,
    ) -> Trial:
        """Attach the full-training result to a succeeded trial (its state does not change)."""
        m = self._s.get(TrialModel, trial_id, with_for_update=True)
        if m is None:
            raise NotFoundError(f"trial {trial_id} not found")
        if m.status != TrialState.SUCCEEDED.value:
            raise StorageError(f"trial {trial_id} is {m.status}; only succeeded ones are final")
        m.final_accuracy, m.final_history, m.final_seconds = accuracy, list(history), seconds
        m.final_weights_id, m.onnx_id, m.card = weights_id, onnx_id, card
        m.updated_at = utcnow()
        return _trial(m)
