"""Storage contract: the same tests against SQLite and the real Postgres."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest

from service.db import (
    IllegalTransitionError,
    JobState,
    NotFoundError,
    StaleTrialError,
    Storage,
    TeacherState,
    TrialState,
    UpdateFinishedJobError,
    UpdateFinishedTrialError,
)
from service.db.domain import next_states
from service.db.migrate import SchemaError, check, current, head, upgrade


@pytest.fixture
def storage(db_url: str):
    s = Storage(db_url)
    yield s
    s.dispose()


def _job(storage: Storage, n_trials: int = 0) -> int:
    with storage.session() as repo:
        t = repo.create_teacher(
            arch="resnet20", num_classes=10, dataset="digits", status="ready", source="upload",
            params=272474, input_shape=(3, 32, 32), accuracy=0.9,
        )  # fmt: skip
        job = repo.create_job(
            teacher_id=t.id, dataset="digits", strategy="random", steps=2, per_step=2,
            search={}, top_k=1, full_training={}, reward="params", seed=0,
            embedding_from=None, searcher={},
        )  # fmt: skip
        if n_trials:
            repo.create_trials(job.id, [{"removed": [k]} for k in range(n_trials)])
        return job.id


def test_schema_check_names_the_upgrade_command(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'new.db'}"
    with pytest.raises(SchemaError, match="esnac db upgrade"):
        check(url)
    upgrade(url, revision="base")
    upgrade(url)
    assert current(url) == head()
    check(url)


def test_migrated_database_is_at_head(db_url: str) -> None:
    assert current(db_url) == head()
    check(db_url)


def test_trial_lifecycle_and_finished_trials_are_frozen(storage: Storage) -> None:
    job_id = _job(storage, n_trials=3)
    with storage.session() as repo:
        trials = repo.job_trials(job_id)
        assert [t.number for t in trials] == [0, 1, 2]
        assert all(t.status is TrialState.PENDING and t.attempts == 0 for t in trials)
        t0 = repo.update_trial(trials[0].id, TrialState.RUNNING, new_attempt=True)
        assert t0.attempts == 1 and t0.started_at is not None
        t0 = repo.update_trial(
            t0.id, TrialState.SUCCEEDED, expect_attempts=1, reward=0.5, accuracy=0.8,
            params=10, flops=20, compression=0.4, history=[0.7, 0.8], seconds={"total": 1.0},
        )  # fmt: skip
        assert t0.status.is_finished() and t0.finished_at is not None
    with storage.session() as repo:
        with pytest.raises(UpdateFinishedTrialError):
            repo.update_trial(t0.id, TrialState.FAILED, error="late")
    with storage.session() as repo:
        got = repo.get_trial(t0.id)
        assert got.status is TrialState.SUCCEEDED and got.reward == 0.5
        assert got.history == [0.7, 0.8] and got.error is None
        # a result of an older attempt is refused
        t1 = repo.update_trial(trials[1].id, TrialState.RUNNING, new_attempt=True)
        t1 = repo.update_trial(t1.id, TrialState.RUNNING, new_attempt=True)
        with pytest.raises(StaleTrialError):
            repo.update_trial(t1.id, TrialState.SUCCEEDED, expect_attempts=1, reward=1.0)
        with pytest.raises(Exception, match="unknown trial fields"):
            repo.update_trial(t1.id, TrialState.RUNNING, job_id=99)
        assert repo.best_trial(job_id).id == t0.id
        counts = repo.job_counts(job_id)
        assert counts == {
            "pending": 1, "running": 1, "succeeded": 1, "failed": 0, "created": 3, "finalized": 0,
        }  # fmt: skip


def test_steps_kernels_progress_and_lost_attempts(storage: Storage) -> None:
    job_id = _job(storage)
    with storage.session() as repo:
        warm = repo.create_trials(job_id, [{"removed": [0]}, {"removed": [1]}], step=0)
        step = repo.create_trials(
            job_id, [{"removed": [2]}, {"removed": [3]}], step=1, kernels=[3, None]
        )
        with pytest.raises(Exception, match="2 actions but 1 kernels"):
            repo.create_trials(job_id, [{"removed": [4]}, {"removed": [5]}], kernels=[0])
    assert [(t.number, t.step, t.kernel) for t in warm + step] == [
        (0, 0, None), (1, 0, None), (2, 1, 3), (3, 1, None),
    ]  # fmt: skip
    tid = step[0].id
    report = {"phase": "train", "epoch": 2, "epochs": 5, "val_accuracy": 0.5, "seconds": 3.0}
    with storage.session() as repo:
        now = repo.get_trial(tid).updated_at + timedelta(seconds=1)
        assert not repo.record_progress(tid, 0, report, now)  # pending: nothing to report on
        t = repo.update_trial(tid, TrialState.RUNNING, new_attempt=True)
        assert t.heartbeat_at is not None and t.progress is None
        assert not repo.record_progress(tid, 2, report, now)  # not this trial's attempt
        assert repo.record_progress(tid, 1, report, now)
        repo.record_lost_attempt(tid, 1, "stalled", "no heartbeat for 601 s")
    with storage.session() as repo:
        t = repo.get_trial(tid)
        assert t.progress == report and t.heartbeat_at == now
        assert [(e["attempt"], e["code"]) for e in t.lost_attempts] == [(1, "stalled")]
        # a new attempt starts without the old one's progress; the lost attempt stays recorded
        t = repo.update_trial(tid, TrialState.RUNNING, new_attempt=True)
        assert t.progress is None and t.attempts == 2 and len(t.lost_attempts) == 1
        teacher = repo.create_teacher(
            arch="resnet20", num_classes=10, dataset="digits", status=TeacherState.TRAINING,
            source="trained", params=1, input_shape=(3, 32, 32),
        )  # fmt: skip
        assert repo.record_teacher_progress(teacher.id, report)
        assert repo.get_teacher(teacher.id).progress == report
        repo.finish_teacher(teacher.id, error="boom")
        assert not repo.record_teacher_progress(teacher.id, report)  # finished: not stored


def test_racing_finishers_exactly_one_wins(storage: Storage) -> None:
    job_id = _job(storage, n_trials=1)
    with storage.session() as repo:
        tid = repo.job_trials(job_id)[0].id
        repo.update_trial(tid, TrialState.RUNNING, new_attempt=True)
    outcomes: list[str] = []
    barrier = threading.Barrier(4)

    def finish(k: int) -> None:
        barrier.wait()
        try:
            with storage.session() as repo:
                repo.update_trial(tid, TrialState.SUCCEEDED, expect_attempts=1, reward=float(k))
            outcomes.append("won")
        except UpdateFinishedTrialError:
            outcomes.append("lost")

    threads = [threading.Thread(target=finish, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["lost", "lost", "lost", "won"]


def test_job_states_and_cancel(storage: Storage) -> None:
    job_id = _job(storage, n_trials=2)
    with storage.session() as repo:
        job = repo.set_job_state(job_id, JobState.RUNNING)
        assert job.started_at is not None and job.budget == 4
        assert [j.id for j in repo.active_jobs()] == [job_id]
        repo.set_job_state(job_id, JobState.CANCELLED)
        assert repo.fail_unfinished_trials(job_id, "cancelled", "the job was cancelled") == 2
        assert repo.active_jobs() == []
    with storage.session() as repo:
        with pytest.raises(UpdateFinishedJobError):
            repo.set_job_state(job_id, JobState.RUNNING)
    with storage.session() as repo:
        with pytest.raises(UpdateFinishedJobError):
            repo.create_trials(job_id, [{}])
    with storage.session() as repo:
        assert all(t.error_code == "cancelled" for t in repo.job_trials(job_id))
        with pytest.raises(NotFoundError):
            repo.get_job(job_id + 100)


def test_poll_trials_cursor_sees_every_change_once(storage: Storage) -> None:
    from service.db.storage import decode_cursor, encode_cursor

    job_id = _job(storage, n_trials=25)
    seen: list[int] = []
    after = None
    with storage.session() as repo:
        while True:
            page = repo.poll_trials(job_id, after=after, limit=10)
            if not page:
                break
            seen += [t.id for t in page]
            after = decode_cursor(encode_cursor(page[-1].updated_at, page[-1].id))
        assert len(seen) == 25 and len(set(seen)) == 25
        changed = repo.update_trial(seen[3], TrialState.RUNNING, new_attempt=True)
    with storage.session() as repo:
        page = repo.poll_trials(job_id, after=after, limit=10)
        assert [t.id for t in page] == [changed.id]
        assert repo.poll_trials(job_id, status="running") == page
        earlier = changed.updated_at - timedelta(microseconds=1)
        assert [t.id for t in repo.poll_trials(job_id, updated_after=earlier)] == [changed.id]


def test_orm_models_match_the_migrations(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from service.db.models import Base
    from service.db.storage import make_engine

    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


ILLEGAL_JOB_MOVES = [(a, b) for a in JobState for b in JobState if b not in next_states(a)]


def _drive_job(repo, job_id: int, to: JobState) -> None:
    path = {
        JobState.QUEUED: [],
        JobState.RUNNING: [JobState.RUNNING],
        JobState.FINALIZING: [JobState.RUNNING, JobState.FINALIZING],
        JobState.SUCCEEDED: [JobState.RUNNING, JobState.FINALIZING, JobState.SUCCEEDED],
        JobState.FAILED: [JobState.FAILED],
        JobState.CANCELLED: [JobState.CANCELLED],
    }[to]
    for state in path:
        repo.set_job_state(job_id, state)


@pytest.mark.parametrize(("src", "dst"), ILLEGAL_JOB_MOVES, ids=lambda s: s.value)
def test_every_illegal_job_transition_is_refused(storage: Storage, src, dst) -> None:
    job_id = _job(storage)
    with storage.session() as repo:
        _drive_job(repo, job_id, src)
    with storage.session() as repo, pytest.raises(IllegalTransitionError, match="cannot become"):
        repo.set_job_state(job_id, dst)
    with storage.session() as repo:
        assert repo.get_job(job_id).status is src  # nothing changed


def test_every_illegal_trial_transition_is_refused(storage: Storage) -> None:
    job_id = _job(storage, n_trials=1)
    with storage.session() as repo:
        trial = repo.job_trials(job_id)[0]
        for dst in (TrialState.PENDING, TrialState.SUCCEEDED):  # pending -> only running/failed
            with pytest.raises(IllegalTransitionError):
                repo.update_trial(trial.id, dst)
        repo.update_trial(trial.id, TrialState.RUNNING, new_attempt=True)
        with pytest.raises(IllegalTransitionError):
            repo.update_trial(trial.id, TrialState.PENDING)
        repo.update_trial(trial.id, TrialState.SUCCEEDED, reward=0.5)
        for dst in TrialState:
            with pytest.raises(UpdateFinishedTrialError):
                repo.update_trial(trial.id, dst)


def test_teacher_transitions(storage: Storage) -> None:
    with storage.session() as repo:
        t = repo.create_teacher(
            arch="resnet20", num_classes=10, dataset="digits", status=TeacherState.TRAINING,
            source="trained", params=1, input_shape=(3, 32, 32),
        )  # fmt: skip
        assert repo.list_teachers(status=TeacherState.TRAINING)[0].id == t.id
        done = repo.finish_teacher(t.id, error="boom")
        assert done.status is TeacherState.FAILED and done.status.is_finished()
        with pytest.raises(IllegalTransitionError, match="failed; it cannot become ready"):
            repo.finish_teacher(t.id, weights_id=None, accuracy=0.5)
