"""One trial, in process: teacher + action -> student -> distillation -> metrics and weights.

`run_trial` is what the Ray actor (`workers.actor.TrialWorker`) calls; a `PreparedJob` holds what
all trials of one job share (the teacher, its compression space, the data, the teacher's FLOPs and
the teacher-logit cache), so the actor builds it once per job.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from embedding.fx_trace import trace
from embedding.graph import UnsupportedModelError
from embedding.reward import (
    budget_reward,
    compression,
    latency_reward,
    latency_target_reward,
    reward,
)
from embedding.space import (
    INHERITANCE,
    Action,
    CompressionSpace,
    InvalidActionError,
    StudentNet,
    TooManyLayersError,
)
from workers import zoo
from workers.data import DatasetSplits, load_dataset
from workers.export import (
    CARD_FORMAT,
    load_state_safetensors,
    state_to_safetensors,
    to_onnx,
)
from workers.latency import Latency, measure_latency
from workers.progress import Progress
from workers.spec import (
    SIZE_TARGETS,
    BadSpecError,
    FullTraining,
    LatencySpec,
    TrainingFailedError,
    TrialResult,
    TrialSpec,
    WorkerError,
    WorkerOutOfMemoryError,
)
from workers.train import (
    count_params,
    distill,
    finetune,
    resolve_device,
    seed_everything,
    teacher_logits,
)

__all__ = [
    "JobContext",
    "PreparedJob",
    "finetune_student",
    "guard",
    "prepare_job",
    "run_trial",
    "worker_name",
]


@dataclass(frozen=True)
class JobContext:
    """What every trial of one job shares; the coordinator sends it once per job and worker.

    Attributes:
        job_key: the coordinator's key for the job (the actor caches per key).
        teacher_arch: a `workers.zoo` name.
        num_classes: classifier size of the teacher (must match the dataset).
        teacher_weights: the teacher's state dict as safetensors bytes.
        teacher_accuracy: the teacher's validation accuracy in (0, 1] (the reward divides by it).
        dataset: a `workers.data.load_dataset` spec string.
        data_dir: data directory for the dataset (None: the default).
        max_layers: the encoding's L_max; 0 means the library's policy
            (`embedding.space.default_max_layers`), as the coordinator uses.
        download: let torchvision download CIFAR when it is missing.
        inheritance: which teacher channels a shrunk group keeps (`embedding.INHERITANCE`:
            "importance", the default, or the paper's "first").
    """

    job_key: str
    teacher_arch: str
    num_classes: int
    teacher_weights: bytes
    teacher_accuracy: float
    dataset: str
    data_dir: str | None = None
    max_layers: int = 0
    download: bool = False
    inheritance: str = "importance"

    def validate(self) -> None:
        if not isinstance(self.job_key, str) or not self.job_key:
            raise BadSpecError("job_key must be a non-empty string")
        acc = self.teacher_accuracy
        if not isinstance(acc, int | float) or not math.isfinite(acc) or not 0 < acc <= 1:
            raise BadSpecError(
                f"teacher_accuracy must be a fraction in (0, 1], got {acc!r} (a percentage? "
                "divide by 100)"
            )
        if int(self.max_layers) < 0:
            raise BadSpecError(f"max_layers must be >= 0, got {self.max_layers}")
        if self.inheritance not in INHERITANCE:
            raise BadSpecError(
                f"inheritance must be one of {list(INHERITANCE)}, got {self.inheritance!r}"
            )


def worker_name() -> str:
    """`host:pid` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError | torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


@contextlib.contextmanager
def guard(what: str, *, wrap_all: bool = False) -> Iterator[None]:
    """Turn out-of-memory into `WorkerOutOfMemoryError` (and, with `wrap_all`, any other
    non-worker exception into `TrainingFailedError`) so callers always see a typed error."""
    try:
        yield
    except WorkerError:
        raise
    except Exception as exc:
        if _is_oom(exc):
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise WorkerOutOfMemoryError(
                f"{what} ran out of memory ({type(exc).__name__}); use a smaller batch_size or a "
                "worker with more memory"
            ) from exc
        if not wrap_all:
            raise
        raise TrainingFailedError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


class PreparedJob:
    """What the trials of one job share, built once per job and worker.

    Attributes:
        ctx: the job (without a copy of the teacher bytes kept elsewhere).
        teacher: the teacher network with its weights, eval mode.
        space: its compression space (students are materialised from it).
        splits: the data.
        teacher_flops: FLOPs of one teacher forward pass on one image.
        device: where trials run.
    """

    def __init__(
        self,
        ctx: JobContext,
        teacher: nn.Module,
        space: CompressionSpace,
        splits: DatasetSplits,
        device: torch.device,
    ) -> None:
        self.ctx = ctx
        self.teacher = teacher
        self.space = space
        self.splits = splits
        self.device = device
        # counted from the traced graph, as `model_flops` counts them (equal for every
        # network the space can trace: tests/embedding/test_budget.py), without running the
        # FLOP counter, whose first use imports torch._dynamo (~1.3 CPU s per worker process)
        self.teacher_flops = space.num_flops(space.empty_action())
        self._logits: torch.Tensor | None = None
        self._teacher_latency: dict[LatencySpec, Latency] = {}

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.splits.input_shape

    def logits(self, n: int | None) -> torch.Tensor:
        """Teacher logits `n x num_classes` of the first `n` un-augmented training images,
        computed once per job (the prefix grows when a later trial asks for more)."""
        want = len(self.splits.train) if n is None else min(int(n), len(self.splits.train))
        if self._logits is None or self._logits.shape[0] < want:
            self._logits = teacher_logits(
                self.teacher, self.splits.train.head(want), device=self.device
            )
        return self._logits[:want]

    def teacher_latency(self, spec: LatencySpec, progress: Progress | None = None) -> Latency:
        """The teacher's latency on `spec`'s target, measured once per job on this worker (so
        every student of this worker is compared with a teacher timed on the same machine)."""
        if spec not in self._teacher_latency:
            self._teacher_latency[spec] = measure_latency(
                self.teacher, self.input_shape, spec, device=self.device,
                beat=progress.beat if progress is not None else None,
            )  # fmt: skip
        return self._teacher_latency[spec]

    def action(self, data: dict[str, Any] | str) -> Action:
        """Parse and check an action against this job's teacher.

        Raises:
            BadSpecError: malformed, or made for another teacher.
        """
        try:
            action = Action.from_json(data)
            self.space.validate(action)
        except InvalidActionError as exc:
            raise BadSpecError(f"the action does not fit this job's teacher: {exc}") from exc
        return action

    def student(self, action: Action) -> StudentNet:
        """The student for `action`, weights sliced from the teacher by the job's inheritance
        rule (CPU, training mode)."""
        try:
            return self.space.materialize(action)
        except InvalidActionError as exc:
            raise BadSpecError(f"the action does not fit this job's teacher: {exc}") from exc


def prepare_job(
    ctx: JobContext,
    *,
    device: str | torch.device | None = None,
    splits: DatasetSplits | None = None,
) -> PreparedJob:
    """Build a job's shared state: teacher with weights, compression space, data.

    Args:
        ctx: the job.
        device: where its trials run (default: CUDA when available).
        splits: already loaded data (skips `load_dataset`).

    Raises:
        BadSpecError: unknown architecture or dataset, weights that do not fit, a teacher the
            space cannot trace, a class-count mismatch, a bad teacher accuracy.
    """
    ctx.validate()
    dev = resolve_device(device)
    teacher = zoo.load_teacher(ctx.teacher_arch, int(ctx.num_classes), ctx.teacher_weights)
    data = (
        splits
        if splits is not None
        else load_dataset(ctx.dataset, ctx.data_dir, ctx.download, seed=0)
    )
    if data.num_classes != int(ctx.num_classes):
        raise BadSpecError(
            f"dataset {ctx.dataset!r} has {data.num_classes} classes but the teacher has "
            f"{ctx.num_classes}"
        )
    try:
        graph = trace(teacher, data.input_shape)
        space = CompressionSpace(
            graph, teacher, int(ctx.max_layers) or None, inheritance=ctx.inheritance
        )
    except (UnsupportedModelError, TooManyLayersError) as exc:
        raise BadSpecError(str(exc)) from exc
    return PreparedJob(ctx, teacher, space, data, dev)


def run_trial(
    ctx: JobContext,
    spec: TrialSpec | dict[str, Any],
    *,
    device: str | torch.device | None = None,
    cache: PreparedJob | None = None,
    progress: Progress | None = None,
    init_weights: bytes | None = None,
) -> TrialResult:
    """Evaluate one candidate: materialise, distil, measure, reward.

    Args:
        ctx: the job.
        spec: the trial (a `TrialSpec` or its `to_dict()`).
        device: where to run when no `cache` is given (default: CUDA when available).
        cache: the job's prepared state (`prepare_job(ctx)`); built here when None.
        progress: the attempt's heartbeat (see `workers.progress`).
        init_weights: the student's starting weights (safetensors), e.g. its search weights
            for a longer, finishing evaluation; None: inherited from the teacher.

    Returns:
        The result; `accuracy` is the best validation accuracy over the search epochs and the
        weights are that epoch's.

    Raises:
        BadSpecError: malformed spec (bad settings, an action from another teacher, ...).
        WorkerOutOfMemoryError: the student did not fit in memory.
        TrainingFailedError: the loss became non-finite.
    """
    t0 = time.perf_counter()
    if isinstance(spec, dict):
        try:
            spec = TrialSpec.from_dict(spec)
        except TypeError as exc:
            raise BadSpecError(f"malformed trial spec: {exc}") from exc
    spec.validate()
    state = cache if cache is not None else prepare_job(ctx, device=device)
    with guard(f"trial {spec.trial_id}"):
        action = state.action(spec.action)
        seed_everything(spec.seed)
        student = state.student(action)
        if init_weights is not None:
            load_state_safetensors(student, init_weights)
        params = count_params(student)
        flops = state.space.num_flops(action)
        t_build = time.perf_counter() - t0
        training = spec.training
        logits = state.logits(training.max_train_samples) if training.cache_teacher_logits else None
        t1 = time.perf_counter()
        result = distill(
            student,
            state.teacher,
            state.splits,
            training,
            seed=spec.seed,
            device=state.device,
            teacher_logits=logits,
            progress=progress,
        )
        t_distill = time.perf_counter() - t1
        target = spec.latency_spec()
        latency = teacher_latency = None
        t_latency = 0.0
        if target is not None:
            t2 = time.perf_counter()
            beat = progress.beat if progress is not None else None
            latency = measure_latency(
                student, state.input_shape, target, device=state.device, beat=beat
            )
            teacher_latency = state.teacher_latency(target, progress)
            t_latency = time.perf_counter() - t2
        size: float
        teacher_size: float
        if spec.reward in ("params", "params_target"):
            size, teacher_size = params, state.space.teacher_params
        elif spec.reward in ("flops", "flops_target"):
            size, teacher_size = flops, state.teacher_flops
        elif latency is None or teacher_latency is None or target is None:
            raise BadSpecError(f"reward {spec.reward!r} needs a latency target")
        else:  # latency, latency_target
            size, teacher_size = latency.median_ms, teacher_latency.median_ms
        if spec.reward in SIZE_TARGETS and spec.target is not None:
            value = budget_reward(result.best_accuracy, ctx.teacher_accuracy, size, spec.target)
        elif spec.reward == "latency_target":
            if target is None or target.target_ms is None:
                raise BadSpecError("reward 'latency_target' needs latency.target_ms")
            value = latency_target_reward(
                result.best_accuracy, ctx.teacher_accuracy, size, target.target_ms
            )
        elif spec.reward == "latency":
            value = latency_reward(result.best_accuracy, ctx.teacher_accuracy, size, teacher_size)
        else:
            value = reward(result.best_accuracy, ctx.teacher_accuracy, size, teacher_size)
        weights = state_to_safetensors(student) if spec.return_weights else None
    total = time.perf_counter() - t0
    return TrialResult(
        trial_id=spec.trial_id,
        accuracy=result.best_accuracy,
        params=params,
        flops=flops,
        compression=compression(size, teacher_size),
        reward=value,
        history=list(result.history),
        seconds={
            "build": t_build,
            "train": result.seconds,
            "eval": max(0.0, t_distill - result.seconds),
            **({"latency": t_latency} if target is not None else {}),
            "total": total,
        },
        weights=weights,
        worker=worker_name(),
        latency_ms=latency.median_ms if latency is not None else None,
        teacher_latency_ms=teacher_latency.median_ms if teacher_latency is not None else None,
        latency_spread=latency.spread if latency is not None else None,
    )


def finetune_student(
    state: PreparedJob,
    action: dict[str, Any] | str,
    weights: bytes | None,
    training: FullTraining,
    seed: int,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Full training of one student, starting from its search weights.

    Args:
        state: the job.
        action: the student's action (`Action.to_dict()` or JSON).
        weights: the student's search weights (safetensors); None starts from the teacher slice.
        training: full-training settings.
        seed: seeds the data order and augmentation.
        progress: the attempt's heartbeat (see `workers.progress`).

    Returns:
        `{"accuracy", "test_accuracy", "history", "weights", "onnx", "params", "flops", "card",
        "seconds"}` (weights as safetensors bytes, the model as ONNX bytes taking raw 0..1
        images, the worker's part of the model card, `workers.export`).

    Raises:
        BadSpecError, WorkerOutOfMemoryError, TrainingFailedError: as `run_trial`.
    """
    t0 = time.perf_counter()
    training.validate()
    with guard("full training"):
        act = state.action(action)
        seed_everything(seed)
        student = state.student(act)
        if weights is not None:
            load_state_safetensors(student, weights)
        result = finetune(
            student, state.splits, training, seed=seed, device=state.device, progress=progress
        )
        train = state.splits.train
        mean, std = train.mean.tolist(), train.std.tolist()
        params, flops = count_params(student), state.space.num_flops(act)
        out: dict[str, Any] = {
            "accuracy": result.accuracy,
            "test_accuracy": result.test_accuracy,
            "history": list(result.history),
            "weights": state_to_safetensors(student),
            "onnx": to_onnx(student, state.input_shape, normalize=(mean, std)),
            "params": params,
            "flops": flops,
            "card": {
                "format": CARD_FORMAT,
                "architecture": student.architecture(),
                "action": act.to_dict(),
                "inheritance": state.space.inheritance,
                "params": params,
                "flops": flops,
                "accuracy": result.accuracy,
                "test_accuracy": result.test_accuracy,
                "input_shape": list(state.input_shape),
                "num_classes": int(state.ctx.num_classes),
                "dataset": state.ctx.dataset,
                "normalization": {"mean": mean, "std": std, "input_range": [0.0, 1.0],
                                  "folded_into_onnx": True},  # fmt: skip
            },
        }
    out["seconds"] = time.perf_counter() - t0
    return out
