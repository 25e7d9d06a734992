"""The contract between the coordinator and the workers: what one trial asks for and returns.

Plain, JSON-able data only (weights travel as safetensors bytes), so a spec or a result can cross
Ray's object store, the REST API or the database without pickling user objects.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

__all__ = [
    "BadSpecError",
    "FullTraining",
    "LATENCY_BACKENDS",
    "LatencySpec",
    "REWARDS",
    "SIZE_TARGETS",
    "SearchTraining",
    "TeacherTraining",
    "TrainingFailedError",
    "TrialResult",
    "TrialSpec",
    "WorkerError",
    "WorkerOutOfMemoryError",
    "ONNX_ARCH",
    "ZOO_NAMES",
]

#: The `arch` of a teacher uploaded as an ONNX file: its network is read from the file
#: (`workers.onnx_import`), which is stored as the teacher's weights artifact.
ONNX_ARCH = "onnx"

#: The teacher architectures `workers.zoo` builds (here, torch-free, for the REST layer).
ZOO_NAMES = (
    "mobilenetv2",
    "resnet18",
    "resnet20",
    "resnet32",
    "resnet34",
    "resnet56",
    "shufflenetv2",
    "vgg19",
)


class WorkerError(Exception):
    """Base of the errors a trial can end with; `code` is stable and stored with the trial."""

    code = "worker_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class BadSpecError(WorkerError):
    """The trial spec cannot be run as given (unknown dataset, foreign action, bad setting)."""

    code = "bad_spec"


class WorkerOutOfMemoryError(WorkerError):
    """The student did not fit in the worker's memory."""

    code = "out_of_memory"


class TrainingFailedError(WorkerError):
    """Training diverged (non-finite loss) or crashed."""

    code = "training_failed"


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise BadSpecError(f"{name} must be a finite number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise BadSpecError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


_S = TypeVar("_S", bound="_Settings")


class _Settings:
    """Shared behaviour of the settings dataclasses: these classes are the one definition of
    every default and rule; the REST models and the CLI take theirs from here."""

    def validate(self) -> None:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload, no-any-return]

    @classmethod
    def from_dict(cls: type[_S], data: dict[str, Any] | None) -> _S:
        """Settings from JSON (missing keys take the defaults), validated.

        Raises:
            BadSpecError: an unknown key or an invalid value.
        """
        data = dict(data or {})
        unknown = sorted(set(data) - {f.name for f in fields(cls)})  # type: ignore[arg-type]
        if unknown:
            raise BadSpecError(f"unknown {cls.__name__} settings {unknown}")
        out = cls(**data)
        out.validate()
        return out


@dataclass(frozen=True)
class SearchTraining(_Settings):
    """Search-time knowledge distillation (the paper's defaults, docs/ALGORITHM.md)."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 5e-4
    augment: bool = True
    #: Train on at most this many training images (None: all).
    max_train_samples: int | None = None
    #: Compute the teacher's logits once per job and reuse them (only when `augment` is off).
    cache_teacher_logits: bool = False
    #: Before distilling, recompute the student's BatchNorm running statistics on this many
    #: training images (train mode, no gradient; EagleEye, ECCV 2020): an inherited student's
    #: statistics are the teacher's, which no longer describe a network with removed layers
    #: and fewer channels. 0: keep the inherited statistics.
    bn_recalibration: int = 0

    def validate(self) -> None:
        _check_positive("epochs", self.epochs)
        _check_positive("bn_recalibration", self.bn_recalibration, allow_zero=True)
        _check_positive("batch_size", self.batch_size)
        _check_positive("lr", self.lr)
        _check_positive("weight_decay", self.weight_decay, allow_zero=True)
        if self.max_train_samples is not None:
            _check_positive("max_train_samples", self.max_train_samples)
        if self.cache_teacher_logits and self.augment:
            raise BadSpecError(
                "cache_teacher_logits needs augment=False (augmented images change every epoch, "
                "so their teacher logits cannot be cached)"
            )


@dataclass(frozen=True)
class FullTraining(_Settings):
    """Full training of a finished search's best students (the paper: 300 epochs, step 100)."""

    epochs: int = 300
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    step_every: int = 100
    gamma: float = 0.1

    def validate(self) -> None:
        _check_positive("epochs", self.epochs, allow_zero=True)
        _check_positive("batch_size", self.batch_size)
        _check_positive("lr", self.lr)
        _check_positive("momentum", self.momentum, allow_zero=True)
        _check_positive("weight_decay", self.weight_decay, allow_zero=True)
        _check_positive("step_every", self.step_every)
        _check_positive("gamma", self.gamma)


@dataclass(frozen=True)
class TeacherTraining(_Settings):
    """Training a zoo teacher when the user has none (the paper: SGD lr 0.1, 400 epochs, lr x 0.1
    every 100, momentum 0.9, weight decay 5e-4, batch 128)."""

    epochs: int = 400
    lr: float = 0.1
    batch_size: int = 128
    step_every: int = 100
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    #: Train on at most this many training images (None: all).
    max_train_samples: int | None = None

    def validate(self) -> None:
        _check_positive("epochs", self.epochs, allow_zero=True)
        _check_positive("lr", self.lr)
        _check_positive("batch_size", self.batch_size)
        _check_positive("step_every", self.step_every)
        _check_positive("momentum", self.momentum, allow_zero=True)
        _check_positive("weight_decay", self.weight_decay, allow_zero=True)
        _check_positive("seed", self.seed, allow_zero=True)
        if self.max_train_samples is not None:
            _check_positive("max_train_samples", self.max_train_samples)


#: What the compression C of the reward is measured on.
REWARDS = ("params", "flops", "latency", "latency_target", "params_target", "flops_target")
#: The rewards that bound a size measure (`TrialSpec.target`), and that measure.
SIZE_TARGETS = {"params_target": "params", "flops_target": "flops"}

#: Where a latency can be measured (see `workers.latency`).
LATENCY_BACKENDS = ("onnxruntime-cpu", "torch-cpu", "torch-cuda")


@dataclass(frozen=True)
class LatencySpec:
    """Where and how a latency is measured.

    Attributes:
        backend: one of `LATENCY_BACKENDS`.
        batch: images per forward pass.
        threads: CPU threads of the run (intra-op threads for ONNX Runtime).
        warmup: untimed runs first (allocations, caches, lazy initialisation).
        runs: timed runs; the latency is their median.
        target_ms: the latency budget of the "latency_target" reward (None: no budget).
    """

    backend: str = "onnxruntime-cpu"
    batch: int = 1
    threads: int = 1
    warmup: int = 10
    runs: int = 30
    target_ms: float | None = None

    def validate(self) -> None:
        if self.backend not in LATENCY_BACKENDS:
            raise BadSpecError(
                f"latency backend must be one of {', '.join(LATENCY_BACKENDS)}, "
                f"got {self.backend!r}"
            )
        for name, low, high in (
            ("batch", 1, 1024),
            ("threads", 1, 256),
            ("warmup", 0, 1000),
            ("runs", 3, 10000),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise BadSpecError(
                    f"latency {name} must be an integer in [{low}, {high}], got {value!r}"
                )
        target = self.target_ms
        if target is not None and (
            not isinstance(target, int | float) or isinstance(target, bool) or not target > 0
        ):
            raise BadSpecError(f"latency target_ms must be a positive number, got {target!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencySpec:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise BadSpecError(f"unknown latency settings: {', '.join(sorted(unknown))}")
        return cls(**data)


@dataclass(frozen=True)
class TrialSpec:
    """One candidate to evaluate.

    Attributes:
        trial_id: the coordinator's id for the trial (echoed in the result).
        action: `Action.to_dict()` of the candidate, relative to the worker's teacher.
        seed: seeds every random number generator of the trial (reproducible results).
        training: search-time distillation settings.
        reward: one of `REWARDS` -- what the compression C is measured on ("latency": the
            measured latency of `latency`'s target).
        return_weights: include the student's safetensors bytes in the result.
        latency: `LatencySpec.to_dict()` of the target on which the student and the teacher
            are timed (None: not measured, unless the reward is "latency", which then uses
            the default target).
        target: the budget of a `SIZE_TARGETS` reward, in parameters or FLOPs (absolute).
    """

    trial_id: int
    action: dict[str, Any]
    seed: int = 0
    training: SearchTraining = field(default_factory=SearchTraining)
    reward: str = "params"
    return_weights: bool = True
    latency: dict[str, Any] | None = None
    target: float | None = None

    def validate(self) -> None:
        if self.reward not in REWARDS:
            raise BadSpecError(f"reward must be one of {', '.join(REWARDS)}, got {self.reward!r}")
        self.training.validate()
        spec = self.latency_spec()
        if spec is not None:
            spec.validate()
        if self.reward in SIZE_TARGETS:
            t = self.target
            if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) \
                    or t <= 0:
                raise BadSpecError(
                    f"reward {self.reward!r} needs a positive budget `target` (the "
                    f"{SIZE_TARGETS[self.reward]} a student may have), got {t!r}"
                )
        if self.reward == "latency_target" and (spec is None or spec.target_ms is None):
            raise BadSpecError(
                "reward 'latency_target' needs a latency budget: latency.target_ms (e.g. "
                '{"target_ms": 5.0})'
            )

    def latency_spec(self) -> LatencySpec | None:
        """The latency target of this trial (None: latency is not measured)."""
        if self.latency is not None:
            if not isinstance(self.latency, dict):
                raise BadSpecError(f"latency must be an object, got {self.latency!r}")
            return LatencySpec.from_dict(self.latency)
        return LatencySpec() if self.reward == "latency" else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialSpec:
        data = dict(data)
        data["training"] = SearchTraining(**data.get("training", {}))
        return cls(**data)


@dataclass(frozen=True)
class TrialResult:
    """What a worker reports for one trial.

    Attributes:
        accuracy: best validation accuracy over the search epochs, in [0, 1].
        params / flops: the student's size (FLOPs of one 1-image forward pass).
        compression: C on the measure named by the spec's `reward`.
        reward: f(x) = C (2 - C) * accuracy / teacher accuracy.
        history: validation accuracy after every epoch.
        seconds: wall-clock timings ("build", "train", "eval", "total").
        weights: the trained student's state dict as safetensors bytes (or None).
        worker: a name for the process that ran the trial (host:pid).
        latency_ms / teacher_latency_ms: the median measured latency of the student and of the
            teacher on the same worker and target (None when not measured).
        latency_spread: (p90 - p10) / median of the student's timed runs.
    """

    trial_id: int
    accuracy: float
    params: int
    flops: int
    compression: float
    reward: float
    history: list[float]
    seconds: dict[str, float]
    weights: bytes | None = None
    worker: str = ""
    latency_ms: float | None = None
    teacher_latency_ms: float | None = None
    latency_spread: float | None = None
