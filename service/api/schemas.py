"""Request and response bodies of the REST API v1 (separate from the ORM models).

Names follow the FastAPI template: `<Thing>Create` / `<Thing>Train` for requests,
`<Thing>Public` for responses, `<Thing>Page` for cursor-paginated lists.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from embedding.options import INHERITANCE as _INHERITANCE
from embedding.options import PRESETS as _PRESETS
from embedding.options import REMOVALS as _REMOVALS
from embedding.options import SAMPLERS as _SAMPLERS
from embedding.options import EsnacOptions as _Esnac
from workers.spec import LATENCY_BACKENDS, REWARDS, SIZE_TARGETS, WorkerError
from workers.spec import FullTraining as _Full
from workers.spec import LatencySpec as _Latency
from workers.spec import SearchTraining as _Search
from workers.spec import TeacherTraining as _Teacher

__all__ = [
    "EsnacOptions",
    "FinalPublic",
    "FullTrainingIn",
    "JobCreate",
    "JobPage",
    "JobPublic",
    "JobStatus",
    "LatencyIn",
    "Progress",
    "SearchTrainingIn",
    "TeacherPublic",
    "TeacherStatus",
    "TargetIn",
    "TargetPublic",
    "TeacherTrain",
    "TrialPage",
    "TrialPublic",
    "TrialStatus",
]

#: The default accuracy floor: chance + 10 % of the teacher's margin over chance. On the v2
#: CIFAR-10 pool (600 members, teacher 87.56 %) it passes over 45 students (8.7-17.6 % proxy
#: accuracy, rewards at most 0.20 against the pool's best 0.53).
ACCURACY_FLOOR = 0.1

JobStatus = Literal["queued", "running", "finalizing", "succeeded", "failed", "cancelled"]
TrialStatus = Literal["pending", "running", "succeeded", "failed"]
TeacherStatus = Literal["training", "ready", "failed"]


class _In(BaseModel):
    """A request body. Defaults and cross-field rules come from the worker-side settings
    dataclasses (`workers.spec`, `embedding.options`); the bounds here are the API's limits."""

    model_config = ConfigDict(extra="forbid")


def _validated(model: BaseModel, settings: type) -> None:
    """Apply the settings dataclass's own `validate()` (its rules live there, once)."""
    try:
        settings(**model.model_dump()).validate()
    except (WorkerError, ValueError) as e:
        raise ValueError(getattr(e, "message", str(e))) from e


# ------------------------------------------------------------------------------------ teachers
class TeacherTrain(_In):
    """`POST /v1/teachers/train`: train a zoo teacher on a worker (SGD, step lr schedule)."""

    arch: str = Field(
        description="a zoo or plugin architecture, e.g. resnet20 (GET /v1/teachers/archs)"
    )
    num_classes: int = Field(ge=1, le=100_000)
    dataset: str = Field(min_length=1, description="cifar10, cifar100, digits, npz:<path>, ...")
    epochs: int = Field(default=_Teacher.epochs, ge=1, le=5000)
    lr: float = Field(default=_Teacher.lr, gt=0, le=10)
    batch_size: int = Field(default=_Teacher.batch_size, ge=1, le=65536)
    seed: int = Field(default=_Teacher.seed, ge=0, le=2**31 - 1)
    max_train_samples: int | None = Field(default=_Teacher.max_train_samples, ge=1)


class RunProgress(BaseModel):
    """A running training's progress (a trial's attempt, a teacher), as its worker last
    reported it."""

    phase: str = Field(description="'prepare', 'train' or 'evaluate'")
    epoch: int = Field(description="epochs finished")
    epochs: int = Field(description="epochs of this training")
    val_accuracy: float | None = Field(description="validation accuracy after the last epoch")
    seconds: float = Field(description="seconds since the attempt started on the worker")


class TeacherPublic(BaseModel):
    """A registered teacher (uploaded, or trained by the service)."""

    id: int
    arch: str = Field(description="a zoo or plugin architecture, or `onnx` for an ONNX upload")
    name: str | None = Field(default=None, description="the name given at upload, if any")
    num_classes: int
    dataset: str
    status: TeacherStatus
    source: Literal["upload", "trained"]
    accuracy: float | None = Field(description="validation accuracy in [0, 1]")
    params: int
    sizes: dict[str, int] | None = Field(
        default=None, description="what a size budget is checked against: flops (the "
        "teacher's per image), min_params and min_flops (the smallest student its space can "
        "build); null for teachers registered before they were counted",
    )  # fmt: skip
    input_shape: list[int]
    error: str | None = None
    progress: RunProgress | None = Field(
        default=None, description="while training: epochs done and validation accuracy"
    )
    created_at: datetime
    updated_at: datetime


# ------------------------------------------------------------------------------------ jobs
class SearchTrainingIn(_In):
    """Search-time distillation of each candidate (defaults: the paper's settings)."""

    epochs: int = Field(default=_Search.epochs, ge=1, le=1000)
    batch_size: int = Field(default=_Search.batch_size, ge=1, le=65536)
    lr: float = Field(default=_Search.lr, gt=0, le=10)
    weight_decay: float = Field(default=_Search.weight_decay, ge=0, le=1)
    augment: bool = _Search.augment
    max_train_samples: int | None = Field(default=_Search.max_train_samples, ge=1)
    cache_teacher_logits: bool = _Search.cache_teacher_logits
    bn_recalibration: int = Field(
        default=_Search.bn_recalibration, ge=0, le=10_000_000,
        description="recompute each student's BatchNorm statistics on this many training "
        "images before distilling it (0: keep the teacher's)",
    )  # fmt: skip

    @model_validator(mode="after")
    def _rules(self) -> SearchTrainingIn:
        _validated(self, _Search)
        return self


class FullTrainingIn(_In):
    """Full training of the top-k students (defaults: the paper's 300 epochs, step 100)."""

    epochs: int = Field(default=_Full.epochs, ge=1, le=5000)
    batch_size: int = Field(default=_Full.batch_size, ge=1, le=65536)
    lr: float = Field(default=_Full.lr, gt=0, le=10)
    momentum: float = Field(default=_Full.momentum, ge=0, lt=1)
    weight_decay: float = Field(default=_Full.weight_decay, ge=0, le=1)
    step_every: int = Field(default=_Full.step_every, ge=1)
    gamma: float = Field(default=_Full.gamma, gt=0, le=1)


class LatencyIn(_In):
    """The target on which every student and the teacher are timed (median of `runs` timed
    forward passes after `warmup` untimed ones, on the worker that trained the student)."""

    backend: Literal[LATENCY_BACKENDS] = Field(  # type: ignore[valid-type]
        default=_Latency.backend,
        description="onnxruntime-cpu (the ONNX export run by ONNX Runtime), torch-cpu or "
        "torch-cuda (eager PyTorch)",
    )
    batch: int = Field(default=_Latency.batch, ge=1, le=1024, description="images per pass")
    threads: int = Field(default=_Latency.threads, ge=1, le=256, description="CPU threads")
    warmup: int = Field(default=_Latency.warmup, ge=0, le=1000)
    runs: int = Field(default=_Latency.runs, ge=3, le=10000)
    target_ms: float | None = Field(
        default=_Latency.target_ms,
        gt=0,
        description="the latency budget of reward 'latency_target' (ms per batch)",
    )


class TargetIn(_In):
    """The budget of reward `params_target` or `flops_target`: one of an absolute count (of the
    reward's measure) or `times_smaller`, a factor relative to the teacher."""

    params: int | None = Field(default=None, description="at most this many parameters (> 0)")
    flops: int | None = Field(default=None, description="at most this many FLOPs a 1-image "
                              "forward pass (> 0)")  # fmt: skip
    times_smaller: float | None = Field(
        default=None, description="at most the teacher's size divided by this (> 1; 5 means 5x)"
    )


class TargetPublic(BaseModel):
    """A job's size budget, resolved."""

    measure: Literal["params", "flops"]
    value: float = Field(description="the budget: a student meets it with at most this size")
    times_smaller: float | None = Field(description="the factor asked for, if any")
    teacher: float = Field(description="the teacher's size on the same measure")


class EsnacOptions(_In):
    """Advanced knobs of the ESNAC searcher (defaults: the paper's, except that the LSTM
    encoder stays at its initialisation, `train_encoder` false, and students keep the teacher's
    most important channels, `inheritance` importance; ignored by `random` and `n2n`, except
    `inheritance`, which every strategy's students follow, and `removal`, which random search
    follows too).
    `{"preset": "paper"}` asks for the paper's exact settings (other keys override them); the
    job stores and shows the resulting values."""

    kernels: int = Field(default=_Esnac.kernels, ge=1, le=64)
    subset: float = Field(default=_Esnac.subset, gt=0, le=1)
    candidates: int = Field(default=_Esnac.candidates, ge=1, le=100_000)
    train_encoder: bool = _Esnac.train_encoder
    warm_start: bool = Field(
        default=_Esnac.warm_start,
        description="start each step's kernels from the previous step's learned LSTM",
    )
    train_after: int = Field(
        default=_Esnac.train_after, ge=0, le=100_000,
        description="keep the LSTM fixed until a kernel expects this many observations",
    )  # fmt: skip
    pretrain: bool = Field(
        default=_Esnac.pretrain,
        description="start from an LSTM pretrained on free labels (size, depth, ...) of "
        "sampled architectures, once per teacher",
    )
    inheritance: Literal[_INHERITANCE] = Field(  # type: ignore[valid-type]
        default=_Esnac.inheritance,
        description="which teacher channels a shrunk channel group keeps, for every strategy: "
        "importance (largest group L2 magnitude, as Torch-Pruning ranks them) or first (the "
        "paper's first-k slicing)",
    )
    finish_epochs: int = Field(
        default=_Esnac.finish_epochs, ge=0, le=1000,
        description="before full training, the best 2 x top_k students get this many more "
        "search-training epochs on all training images and the top_k are chosen by that "
        "longer evaluation (0: no finish); every strategy",
    )  # fmt: skip
    removal: Literal[_REMOVALS] = Field(  # type: ignore[valid-type]
        default=_Esnac.removal,
        description="what one layer removal removes: layer (any shape-preserving layer, the "
        "paper's rule) or unit (a conv with the BatchNorm and activation after it); random "
        "and esnac",
    )
    sampler: Literal[_SAMPLERS] = Field(  # type: ignore[valid-type]
        default=_Esnac.sampler,
        description="where the acquisition's candidates come from: paper (the paper's "
        "distribution) or mixed (half of it, a quarter near-uniform actions with few "
        "removals, a quarter local moves around the best observed actions)",
    )

    @model_validator(mode="before")
    @classmethod
    def _preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and "preset" in data:
            data = dict(data)
            name = data.pop("preset")
            if not isinstance(name, str) or name not in _PRESETS:
                raise ValueError(f"unknown searcher preset {name!r}; known: {sorted(_PRESETS)}")
            data = {**_PRESETS[name], **data}
        return data


class JobCreate(_In):
    """`POST /v1/jobs`: a compression search for one teacher."""

    teacher_id: int
    dataset: str | None = Field(
        default=None, min_length=1, description="defaults to the teacher's dataset"
    )
    strategy: Literal["esnac", "random", "n2n"] = Field(
        default="esnac",
        description="esnac: Bayesian optimisation on the learned embedding (the paper); random: "
        "the paper's sampling distributions; n2n: the reinforcement-learning baseline (N2N, "
        "Ashok et al. 2018: two policy LSTMs trained by REINFORCE, one update per step)",
    )
    steps: int = Field(default=20, ge=1, le=1000)
    per_step: int = Field(default=8, ge=1, le=256, description="candidates proposed per step")
    search: SearchTrainingIn = Field(default_factory=SearchTrainingIn)
    top_k: int = Field(default=4, ge=0, le=64, description="students fully trained at the end")
    full_training: FullTrainingIn = Field(default_factory=FullTrainingIn)
    reward: Literal[REWARDS] = Field(  # type: ignore[valid-type]
        default="params",
        description="params / flops / latency: f = C(2 - C)·A with C the compression of that "
        "measure (latency: measured on `latency`'s target, the default one when not given); "
        "latency_target / params_target / flops_target: accuracy under a budget "
        "(latency.target_ms, or `target`), f = A within it and A·budget/size beyond",
    )
    target: TargetIn | None = Field(
        default=None,
        description='the size budget of params_target / flops_target: {"params": 100000}, '
        '{"flops": 10000000} or {"times_smaller": 5}',
    )
    accuracy_floor: float = Field(
        default=ACCURACY_FLOOR, ge=0, lt=1,
        description="a student whose search accuracy is below chance + this fraction of the "
        "teacher's margin over chance cannot rank first or be fully trained (a tiny student "
        "near chance can otherwise win f(x)); 0 turns the floor off",
    )  # fmt: skip
    latency: LatencyIn | None = Field(
        default=None,
        description="measure every student's (and the teacher's) latency on this target; "
        "null: not measured unless reward is latency",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    embedding_from: int | None = Field(
        default=None, description="a finished esnac job whose learned encoder to start from"
    )
    searcher: EsnacOptions = Field(default_factory=EsnacOptions)

    @model_validator(mode="after")
    def _target_rules(self) -> JobCreate:
        if self.reward in SIZE_TARGETS and self.target is None:
            measure = SIZE_TARGETS[self.reward]
            raise ValueError(
                f"reward {self.reward!r} needs a budget: \"target\": {{\"{measure}\": ...}} or "
                '{"times_smaller": 5}'
            )
        if self.target is not None and self.reward not in SIZE_TARGETS:
            raise ValueError(
                f"`target` is the budget of reward {' or '.join(SIZE_TARGETS)}; "
                f"reward is {self.reward!r}"
            )
        return self

    @model_validator(mode="after")
    def _latency_rules(self) -> JobCreate:
        if self.reward == "latency_target" and (
            self.latency is None or self.latency.target_ms is None
        ):
            raise ValueError(
                "reward 'latency_target' needs a latency budget: "
                '"latency": {"target_ms": 5.0} (ms per batch on the latency target)'
            )
        return self


class Progress(BaseModel):
    """Trial counts of a job; `total` is the budget `steps * per_step`."""

    total: int
    created: int
    pending: int
    running: int
    succeeded: int
    failed: int
    finalized: int


class FinalPublic(BaseModel):
    """The result of fully training a top-k student."""

    accuracy: float
    params: int
    flops: int
    history: list[float]
    seconds: float
    has_onnx: bool


class FinishPublic(BaseModel):
    """A finalist's finishing evaluation: more epochs of the search training on every image."""

    accuracy: float
    reward: float
    epochs: int
    seconds: float


class LostAttempt(BaseModel):
    """An attempt the coordinator lost and retried."""

    attempt: int
    code: str = Field(description="'worker_died', 'stalled' (no heartbeat) or 'timeout'")
    message: str
    at: datetime


class TrialPublic(BaseModel):
    """One evaluated (or to-be-evaluated) candidate architecture."""

    id: int
    job_id: int
    number: int = Field(description="0-based position in the job")
    status: TrialStatus
    action: dict[str, Any]
    params: int | None
    flops: int | None
    accuracy: float | None = Field(description="best search-time validation accuracy")
    compression: float | None = Field(description="C = 1 - size(student) / size(teacher)")
    reward: float | None
    attempts: int
    worker: str | None
    history: list[float]
    seconds: dict[str, float]
    error_code: str | None
    error: str | None
    has_weights: bool
    has_card: bool = Field(
        default=False, description="a model card is at GET /v1/trials/{id}/card (top-k students)"
    )
    final: FinalPublic | None
    step: int | None = Field(description="the search step that proposed it (0-based)")
    kernel: int | None = Field(
        description="the ESNAC kernel (GP) of that step that proposed it; null for random "
        "search and for the random warm-up of the first step"
    )
    progress: RunProgress | None = Field(
        description="the running attempt's last report (null before the first)"
    )
    heartbeat_at: datetime | None = Field(
        description="when the coordinator last heard from the running attempt's worker"
    )
    lost_attempts: list[LostAttempt] = Field(
        description="attempts that ended without a result: the worker died, stalled or timed out"
    )
    latency_ms: float | None = Field(
        default=None, description="median measured latency of the student (ms per batch)"
    )
    teacher_latency_ms: float | None = Field(
        default=None, description="the teacher's, measured on the same worker and target"
    )
    latency_spread: float | None = Field(
        default=None, description="(p90 - p10) / median of the student's timed runs"
    )
    finish: FinishPublic | None = Field(
        default=None, description="the finishing evaluation of a finalist (searcher option "
        "finish_epochs): the longer second score that chose the top-k",
    )  # fmt: skip
    tag: str | None = Field(
        default=None, description="seed:uniform / seed:global: a budget's seed (the uniform "
        "shrink and global magnitude pruning to the budget), added to the first step; null: "
        "proposed by the searcher",
    )  # fmt: skip
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class EmbeddingSource(BaseModel):
    """Where a job's starting embedding came from (`embedding_from`)."""

    job: int
    teacher_id: int
    teacher_arch: str
    teacher_name: str | None
    #: the encoder was learned on another teacher (its connection vectors were mapped to this
    #: teacher's row width when the widths differ)
    other_teacher: bool


class JobPublic(BaseModel):
    """A search job, its settings, progress and best trial so far."""

    id: int
    teacher_id: int
    dataset: str
    strategy: Literal["esnac", "random", "n2n"]
    steps: int
    per_step: int
    search: SearchTrainingIn
    top_k: int
    full_training: FullTrainingIn
    reward: Literal[REWARDS]  # type: ignore[valid-type]
    latency: LatencyIn | None
    target: TargetPublic | None = None
    accuracy_floor: float = Field(default=0.0, description="the floor's fraction (0: none)")
    floor_accuracy: float | None = Field(
        default=None, description="the search accuracy a student needs to rank first or be "
        "fully trained (null: no floor)",
    )  # fmt: skip
    seed: int
    embedding_from: int | None
    embedding_source: EmbeddingSource | None = None
    searcher: EsnacOptions
    status: JobStatus
    error: str | None
    #: why no trial can start now (e.g. every node that could run one left the Ray cluster):
    #: the job waits and continues when capacity returns; None when nothing holds it up
    waiting: str | None = None
    progress: Progress
    best_trial: TrialPublic | None
    has_encoder: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class JobPage(BaseModel):
    """A page of jobs, newest first; pass `next_cursor` as `cursor` for the next page."""

    items: list[JobPublic]
    next_cursor: str | None


class TrialPage(BaseModel):
    """A page of trials ordered by (updated_at, id).

    `next_cursor` is always set while the job has trials: pass it back as `cursor` to get only
    trials created or changed since (incremental polling); `has_more` says whether more are
    already waiting.
    """

    items: list[TrialPublic]
    next_cursor: str | None
    has_more: bool
