"""Domain objects -> response schemas."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from service.api.schemas import (
    EmbeddingSource,
    EsnacOptions,
    FinalPublic,
    FinishPublic,
    FullTrainingIn,
    JobPublic,
    LatencyIn,
    LostAttempt,
    Progress,
    RunProgress,
    SearchTrainingIn,
    TargetPublic,
    TeacherPublic,
    TrialPublic,
)
from service.db import Job, JobState, Repository, Teacher, Trial
from service.targets import floor_accuracy

__all__ = ["job_public", "teacher_public", "trial_public", "utc"]


def utc(t: datetime) -> datetime:
    """Stored naive UTC -> aware UTC (serialised with an explicit offset)."""
    return t.replace(tzinfo=timezone.utc)  # noqa: UP017


def _utc(t: datetime | None) -> datetime | None:
    return utc(t) if t is not None else None


def teacher_public(t: Teacher) -> TeacherPublic:
    return TeacherPublic(
        id=t.id, arch=t.arch, name=t.name, num_classes=t.num_classes, dataset=t.dataset,
        status=t.status.value, source=t.source, accuracy=t.accuracy,  # type: ignore[arg-type]
        params=t.params, sizes=t.sizes, input_shape=list(t.input_shape), error=t.error,
        progress=_progress(t.progress), created_at=utc(t.created_at),
        updated_at=utc(t.updated_at),
    )  # fmt: skip


def _progress(report: dict[str, Any] | None) -> RunProgress | None:
    if not report:
        return None
    return RunProgress(**{k: report[k] for k in RunProgress.model_fields if k in report})


def trial_public(t: Trial) -> TrialPublic:
    final = None
    if t.final_accuracy is not None:
        final = FinalPublic(
            accuracy=t.final_accuracy, params=t.params or 0, flops=t.flops or 0,
            history=list(t.final_history or []), seconds=t.final_seconds or 0.0,
            has_onnx=t.onnx_id is not None,
        )  # fmt: skip
    return TrialPublic(
        id=t.id, job_id=t.job_id, number=t.number, status=t.status.value, action=t.action,
        params=t.params, flops=t.flops, accuracy=t.accuracy, compression=t.compression,
        reward=t.reward, attempts=t.attempts, worker=t.worker, history=t.history,
        seconds=t.seconds, error_code=t.error_code, error=t.error,
        has_weights=t.weights_id is not None or t.final_weights_id is not None, final=final,
        has_card=t.card is not None,
        step=t.step, kernel=t.kernel,
        progress=_progress(t.progress), latency_ms=t.latency_ms,
        teacher_latency_ms=t.teacher_latency_ms, latency_spread=t.latency_spread, tag=t.tag,
        finish=FinishPublic(**t.finish) if t.finish is not None else None,
        lost_attempts=[LostAttempt(**e) for e in t.lost_attempts],
        heartbeat_at=_utc(t.heartbeat_at), created_at=utc(t.created_at),
        started_at=_utc(t.started_at),
        finished_at=_utc(t.finished_at), updated_at=utc(t.updated_at),
    )  # fmt: skip


def _source(repo: Repository, j: Job) -> EmbeddingSource | None:
    if j.embedding_from is None:
        return None
    src = repo.get_job(j.embedding_from)
    t = repo.get_teacher(src.teacher_id)
    return EmbeddingSource(
        job=src.id, teacher_id=t.id, teacher_arch=t.arch, teacher_name=t.name,
        other_teacher=src.teacher_id != j.teacher_id,
    )  # fmt: skip


def job_public(repo: Repository, j: Job, waiting: str | None = None) -> JobPublic:
    """`waiting`: why the scheduler cannot start trials now (shown for unfinished jobs)."""
    counts = repo.job_counts(j.id)
    teacher = repo.get_teacher(j.teacher_id)
    floor = floor_accuracy(j.accuracy_floor, teacher.accuracy, teacher.num_classes)
    best = repo.best_trial(j.id, min_accuracy=floor)
    return JobPublic(
        id=j.id, teacher_id=j.teacher_id, dataset=j.dataset,
        strategy=j.strategy,  # type: ignore[arg-type]
        steps=j.steps, per_step=j.per_step, search=SearchTrainingIn(**j.search), top_k=j.top_k,
        full_training=FullTrainingIn(**j.full_training),
        reward=j.reward,  # type: ignore[arg-type]
        latency=LatencyIn(**j.latency) if j.latency is not None else None,
        target=TargetPublic(**j.target) if j.target is not None else None,
        accuracy_floor=j.accuracy_floor or 0.0, floor_accuracy=floor,
        seed=j.seed, embedding_from=j.embedding_from, embedding_source=_source(repo, j),
        searcher=EsnacOptions(**j.searcher),
        status=j.status.value, error=j.error,
        waiting=waiting if j.status in (JobState.QUEUED, JobState.RUNNING) else None,
        progress=Progress(total=j.budget, **counts),
        best_trial=trial_public(best) if best is not None else None,
        has_encoder=j.encoder_id is not None, created_at=utc(j.created_at),
        started_at=_utc(j.started_at), finished_at=_utc(j.finished_at),
        updated_at=utc(j.updated_at),
    )  # fmt: skip
