"""Jobs: submit, list, inspect, cancel, and poll a job's trials incrementally."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, status

from embedding.graph import DENSE_COLUMNS
from embedding.options import ENCODER_HIDDEN, ENCODER_LAYERS
from service.api.convert import job_public, trial_public
from service.api.deps import (
    ArtifactsDep,
    AuthDep,
    SchedulerDep,
    SchedulerStatus,
    SessionDep,
    SettingsDep,
    StorageDep,
    confined,
)
from service.api.schemas import (
    JobCreate,
    JobPage,
    JobPublic,
    JobStatus,
    LatencyIn,
    TrialPage,
    TrialStatus,
)
from service.artifacts import ArtifactStore
from service.db import (
    Job,
    JobState,
    NotFoundError,
    Repository,
    TeacherState,
    UpdateFinishedJobError,
)
from service.db.storage import (
    BadCursorError,
    decode_cursor,
    decode_job_cursor,
    encode_cursor,
    encode_job_cursor,
)
from service.targets import TargetError, resolve_target

__all__ = ["router"]

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(422, message)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=JobPublic)
def create_job(
    body: JobCreate,
    _auth: AuthDep,
    settings: SettingsDep,
    storage: StorageDep,
    artifacts: ArtifactsDep,
    scheduler: SchedulerDep,
) -> JobPublic:
    """Submit a search; the scheduler starts it as soon as workers are free."""
    from workers.dataspec import dataset_info
    from workers.spec import WorkerError

    with storage.session() as repo:
        try:
            teacher = repo.get_teacher(body.teacher_id)
        except NotFoundError as e:
            raise _unprocessable(
                f"teacher_id {body.teacher_id} does not exist (GET /v1/teachers lists them)"
            ) from e
        if teacher.status is not TeacherState.READY:
            raise _unprocessable(
                f"teacher {teacher.id} is {teacher.status}; wait until it is ready"
            )
        dataset = body.dataset or teacher.dataset
        try:
            confined(settings, dataset)
        except HTTPException as e:
            if body.dataset is None:  # the teacher's own, registered before or under other rules
                e.detail = f"teacher {teacher.id}'s dataset: {e.detail}; pass another `dataset`"
            raise
        if dataset != teacher.dataset:
            try:
                n, _shape = dataset_info(dataset, root=settings.data_dir)
            except WorkerError as e:
                raise _unprocessable(f"dataset {dataset!r}: {e.message}") from e
            if n != teacher.num_classes:
                raise _unprocessable(
                    f"dataset {dataset!r} has {n} classes, teacher {teacher.id} has "
                    f"{teacher.num_classes}"
                )
            if tuple(_shape) != tuple(teacher.input_shape):
                raise _unprocessable(
                    f"dataset {dataset!r} has {tuple(_shape)} images, teacher {teacher.id} takes "
                    f"{tuple(teacher.input_shape)}"
                )
        if body.embedding_from is not None:
            if body.strategy != "esnac":
                raise _unprocessable("embedding_from needs strategy 'esnac'")
            try:
                src = repo.get_job(body.embedding_from)
            except NotFoundError as e:
                raise _unprocessable(f"embedding_from: job {body.embedding_from} not found") from e
            if src.encoder_id is None:
                raise _unprocessable(
                    f"embedding_from: job {src.id} ({src.strategy}, {src.status.value}) has no "
                    "learned encoder; use a succeeded esnac job"
                )
            _check_encoder(artifacts, repo, src.id, src.encoder_id)
            _check_learned(repo, src)
        target = None
        if body.target is not None:
            try:
                target = resolve_target(body.reward, body.target.model_dump(), teacher)
            except TargetError as e:
                raise _unprocessable(str(e)) from e
        # a latency reward without a target records the default one the workers use
        latency = body.latency or (LatencyIn() if body.reward == "latency" else None)
        job = repo.create_job(
            teacher_id=teacher.id, dataset=dataset, strategy=body.strategy, steps=body.steps,
            per_step=body.per_step, search=body.search.model_dump(), top_k=body.top_k,
            full_training=body.full_training.model_dump(), reward=body.reward, seed=body.seed,
            embedding_from=body.embedding_from, searcher=body.searcher.model_dump(),
            latency=latency.model_dump() if latency is not None else None, target=target,
            accuracy_floor=body.accuracy_floor,
        )  # fmt: skip
        out = job_public(repo, job)
    if scheduler is not None:
        scheduler.notify()
    return out


def _check_encoder(artifacts: ArtifactStore, repo: Repository, job_id: int, art_id: int) -> None:
    """A stored encoder can start another job's kernels when its LSTM has this server's shape
    (its row width may differ: it is mapped to the new teacher's, `adapt_encoder_state`)."""
    try:
        shapes = artifacts.tensor_shapes(repo.get_artifact(art_id))
    except (ValueError, FileNotFoundError) as e:
        raise _unprocessable(
            f"embedding_from: job {job_id}'s stored encoder is unusable: {e}"
        ) from e
    hidden = shapes.get("lstm.weight_hh_l0", [0, 0])[-1]
    layers = sum(1 for k in shapes if k.startswith("lstm.weight_ih_l") and "reverse" not in k)
    width = shapes.get("lstm.weight_ih_l0", [0, 0])[-1]
    if width <= DENSE_COLUMNS or (width - DENSE_COLUMNS) % 2 or (
        "lstm.weight_ih_l0_reverse" not in shapes
    ):
        raise _unprocessable(
            f"embedding_from: job {job_id}'s stored encoder is not an ESNAC encoder (input "
            f"width {width}, expected {DENSE_COLUMNS} + 2 x max_layers, both directions)"
        )
    if (hidden, layers) != (ENCODER_HIDDEN, ENCODER_LAYERS):
        raise _unprocessable(
            f"embedding_from: job {job_id}'s encoder is an LSTM of {layers} layers x {hidden} "
            f"hidden units, but this server's searcher uses {ENCODER_LAYERS} x {ENCODER_HIDDEN}: "
            "it cannot be reused; start without embedding_from"
        )


def _check_learned(repo: Repository, src: Job) -> None:
    """An encoder is worth reusing when it learned something: its job trained the LSTM
    (`train_encoder`, the paper's way), pretrained it on free labels, or itself started from a
    learned encoder (a transfer of a transfer). Since the default searcher keeps the LSTM at its
    random initialisation, a job run with the defaults has nothing to pass on. (A job that asked
    for training but whose `train_after` was never reached is accepted: its options say it
    learns, and the threshold depends on how many results it got.)"""
    job: Job | None = src  # (a chain ends: each job can only start from an earlier one)
    while job is not None:
        if job.searcher.get("train_encoder") or job.searcher.get("pretrain"):
            return
        job = repo.get_job(job.embedding_from) if job.embedding_from is not None else None
    raise _unprocessable(
        f"embedding_from: job {src.id}'s encoder was never trained (it ran with "
        "train_encoder false, the default, and did not start from a learned encoder), so it "
        "holds only a random initialisation; reuse a job run with searcher "
        '{"train_encoder": true} or {"preset": "paper"}, or start without embedding_from'
    )


def _waiting(scheduler: SchedulerStatus | None) -> str | None:
    return scheduler.waiting() if scheduler is not None else None


@router.get("", response_model=JobPage)
def list_jobs(
    repo: SessionDep,
    scheduler: SchedulerDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: str | None = None,
) -> JobPage:
    """Jobs, newest first."""
    try:
        before = decode_job_cursor(cursor) if cursor else None
    except BadCursorError as e:
        raise _unprocessable(str(e)) from e
    jobs = repo.list_jobs(status=status_, before_id=before, limit=limit + 1)
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return JobPage(
        items=[job_public(repo, j, _waiting(scheduler)) for j in jobs],
        next_cursor=encode_job_cursor(jobs[-1].id) if more else None,
    )


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: int, repo: SessionDep, scheduler: SchedulerDep) -> JobPublic:
    return job_public(repo, repo.get_job(job_id), _waiting(scheduler))


@router.post("/{job_id}/cancel", response_model=JobPublic)
async def cancel_job(
    job_id: int, _auth: AuthDep, storage: StorageDep, scheduler: SchedulerDep
) -> JobPublic:
    """Cancel a job: unfinished trials fail with code `cancelled`, their workers are freed."""
    from fastapi.concurrency import run_in_threadpool

    def cancel() -> None:
        with storage.session() as repo:
            try:
                repo.set_job_state(job_id, JobState.CANCELLED)
            except UpdateFinishedJobError as e:
                raise HTTPException(status.HTTP_409_CONFLICT, str(e)) from e
            repo.fail_unfinished_trials(job_id, "cancelled", "the job was cancelled")

    await run_in_threadpool(cancel)
    if scheduler is not None:
        await scheduler.cancel(job_id)

    def read() -> JobPublic:
        with storage.session() as repo:
            return job_public(repo, repo.get_job(job_id))

    return await run_in_threadpool(read)


@router.get("/{job_id}/trials", response_model=TrialPage)
def list_trials(
    job_id: int,
    repo: SessionDep,
    status_: Annotated[TrialStatus | None, Query(alias="status")] = None,
    updated_after: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    cursor: str | None = None,
) -> TrialPage:
    """A job's trials ordered by (updated_at, id), for incremental polling.

    Keep the returned `next_cursor` and pass it back as `cursor`: the next call returns only
    trials created or changed since.
    """
    repo.get_job(job_id)  # 404 for an unknown job
    if updated_after is not None and updated_after.tzinfo is not None:
        updated_after = updated_after.astimezone(timezone.utc).replace(tzinfo=None)  # noqa: UP017
    try:
        after = decode_cursor(cursor) if cursor else None
    except BadCursorError as e:
        raise _unprocessable(str(e)) from e
    trials = repo.poll_trials(
        job_id, status=status_, updated_after=updated_after, after=after, limit=limit + 1
    )
    more = len(trials) > limit
    trials = trials[:limit]
    if trials:
        next_cursor: str | None = encode_cursor(trials[-1].updated_at, trials[-1].id)
    else:
        next_cursor = cursor
    return TrialPage(
        items=[trial_public(t) for t in trials], next_cursor=next_cursor, has_more=more
    )
