"""Training and measuring networks: teacher training, search-time KD, full training, evaluation.

The settings (and their defaults, the paper's: docs/ALGORITHM.md) are the dataclasses of
`workers.spec`: `TeacherTraining` (SGD, step schedule, cross-entropy), `SearchTraining`
(distillation: MSE between student and teacher logits, Adam; a candidate's accuracy is its best
validation accuracy over the epochs) and `FullTraining` (SGD, step schedule, cross-entropy on the
labels, starting from the search weights); all use random crop (pad 4) + horizontal flip.
On CUDA, mixed precision (bfloat16 autocast) and channels-last are on by default; on the CPU
everything runs in plain float32.

Why one module of ~530 lines: the three training loops share the device, precision, batching
and evaluation helpers; apart, each would import the others' private pieces.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from workers import zoo
from workers.data import DatasetSplits, ImageTensors, iterate_batches, load_dataset
from workers.export import state_to_safetensors
from workers.progress import Progress
from workers.spec import (
    BadSpecError,
    FullTraining,
    SearchTraining,
    TeacherTraining,
    TrainingFailedError,
)

__all__ = [
    "DistillResult",
    "FinetuneResult",
    "TeacherResult",
    "count_params",
    "distill",
    "evaluate",
    "finetune",
    "recalibrate_bn",
    "resolve_device",
    "seed_everything",
    "teacher_logits",
    "train_teacher",
]


@dataclass
class TeacherResult:
    """A trained teacher.

    Attributes:
        model: the network after the last epoch (on the training device, eval mode).
        accuracy: its validation accuracy in [0, 1].
        weights: its state dict as safetensors bytes.
        metadata: JSON-able description: arch, num_classes, dataset, accuracy, epochs, ...
        history: validation accuracy after every epoch.
    """

    model: nn.Module
    accuracy: float
    weights: bytes
    metadata: dict[str, Any]
    history: list[float] = field(default_factory=list)


@dataclass
class DistillResult:
    """Outcome of search-time distillation (the student holds its best epoch's weights).

    Attributes:
        best_accuracy: best validation accuracy over the epochs, in [0, 1].
        history: validation accuracy after every epoch.
        best_epoch: index of the epoch that reached `best_accuracy`.
        images: training images processed (all epochs).
        seconds: wall-clock time spent in the training steps (validation excluded).
    """

    best_accuracy: float
    history: list[float]
    best_epoch: int = 0
    images: int = 0
    seconds: float = 0.0


@dataclass
class FinetuneResult:
    """Outcome of full training.

    Attributes:
        accuracy: validation accuracy after the last epoch.
        history: validation accuracy after every epoch.
        test_accuracy: accuracy on the test split where the dataset has one, else None.
    """

    accuracy: float
    history: list[float]
    test_accuracy: float | None = None


# ------------------------------------------------------------------------------------ helpers
def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: the given one, else CUDA when available, else the CPU.

    Raises:
        BadSpecError: a device string torch does not understand, or CUDA asked for but absent.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise BadSpecError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BadSpecError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _autocast(dev: torch.device, amp: bool) -> contextlib.AbstractContextManager:
    if amp and dev.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _defaults(dev: torch.device, amp: bool | None, channels_last: bool | None) -> tuple[bool, bool]:
    on_cuda = dev.type == "cuda"
    return (on_cuda if amp is None else amp), (on_cuda if channels_last is None else channels_last)


def _prepare(model: nn.Module, dev: torch.device, channels_last: bool) -> nn.Module:
    if channels_last:
        return model.to(dev).to(memory_format=torch.channels_last)
    return model.to(device=dev)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[nn.Module]:
    was = model.training
    model.train(training)
    try:
        yield model
    finally:
        model.train(was)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: ImageTensors,
    device: str | torch.device | None = None,
    batch_size: int = 512,
    *,
    amp: bool | None = None,
) -> float:
    """Top-1 accuracy of `model` on `dataset`, in [0, 1] (0 for an empty set).

    Args:
        model: the network (moved to `device` when one is given; its mode is restored).
        dataset: normalised on the fly from its uint8 images.
        device: where to run; None keeps the model where it is.
        batch_size: images per forward pass.
        amp: bfloat16 autocast on CUDA (default: on for CUDA).
    """
    dev = _model_device(model) if device is None else resolve_device(device)
    if device is not None:
        model.to(dev)
    use_amp = dev.type == "cuda" if amp is None else amp
    if len(dataset) == 0:
        return 0.0
    correct = torch.zeros((), dtype=torch.int64, device=dev)
    with _mode(model, False), _autocast(dev, use_amp):
        for x, y, _ in iterate_batches(dataset, batch_size, device=dev):
            correct += (model(x).argmax(dim=1) == y).sum()
    return float(correct.item()) / len(dataset)


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module,
    dataset: ImageTensors,
    images: int,
    *,
    batch_size: int = 128,
    amp: bool | None = None,
    channels_last: bool = False,
) -> int:
    """Recompute every BatchNorm's running statistics on the first `images` images.

    The statistics are reset and re-estimated as an exact average over the batches (momentum
    None), in train mode with no gradient and no augmentation; the weights do not change and
    the model's mode is restored.

    Args:
        model: the network, where it is to run.
        dataset: the images (its first `images` are used, all when it has fewer).
        images: how many; 0 does nothing.
        batch_size: images per forward pass.
        amp: bfloat16 autocast on CUDA (default: on for CUDA).
        channels_last: feed channels-last images (as the training that follows does).

    Returns:
        The number of BatchNorm layers recalibrated.
    """
    bns = [
        m for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]  # fmt: skip
    if images <= 0 or not bns or len(dataset) == 0:
        return 0
    dev = _model_device(model)
    use_amp = dev.type == "cuda" if amp is None else amp
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    try:
        with _mode(model, True), _autocast(dev, use_amp):
            for x, _, _ in iterate_batches(
                dataset.head(images), batch_size, device=dev, channels_last=channels_last
            ):
                model(x)
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
    return len(bns)


@torch.no_grad()
def teacher_logits(
    teacher: nn.Module,
    dataset: ImageTensors,
    device: str | torch.device | None = None,
    batch_size: int = 512,
) -> torch.Tensor:
    """The teacher's logits on the un-augmented images, for the KD logit cache.

    Returns:
        float32 tensor `N x num_classes` on the CPU, row i for image i of `dataset`.
    """
    dev = _model_device(teacher) if device is None else resolve_device(device)
    out: list[torch.Tensor] = []
    with _mode(teacher, False), _autocast(dev, dev.type == "cuda"):
        for x, _, _ in iterate_batches(dataset, batch_size, device=dev):
            out.append(teacher(x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def _check_finite(total: torch.Tensor, what: str, epoch: int, lr: float) -> None:
    if not bool(torch.isfinite(total)):
        raise TrainingFailedError(
            f"{what} diverged: the loss became non-finite in epoch {epoch + 1} (lr {lr}); "
            "lower the learning rate"
        )


# ------------------------------------------------------------------------------ distillation
def distill(
    student: nn.Module,
    teacher: nn.Module,
    splits: DatasetSplits,
    training: SearchTraining,
    *,
    seed: int,
    device: str | torch.device | None = None,
    teacher_logits: torch.Tensor | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    progress: Progress | None = None,
    checkpoint: str | Path | None = None,
) -> DistillResult:
    """Search-time knowledge distillation: MSE between student and teacher logits, Adam.

    Args:
        student: the network to train (moved to `device`; holds the best epoch's weights after).
        teacher: the frozen teacher (moved to `device`, used in eval mode).
        splits: the data; trains on `splits.train` (its first `training.max_train_samples`),
            validates on `splits.val` after every epoch.
        training: the settings (validated here).
        seed: seeds the global generators and the data order / augmentation generator.
        device: where to train (default: CUDA when available).
        teacher_logits: cached teacher logits `N_train x num_classes` for the un-augmented
            training images (see `teacher_logits`); only valid when `training.augment` is off.
        amp / channels_last: default on for CUDA, off on the CPU.
        progress: beaten every batch, told every finished epoch (the attempt's heartbeat).
        checkpoint: a file written after every epoch (student, optimizer, data-order generator,
            history) and resumed from when it exists, so a long training that is stopped
            continues where it was and ends as an uninterrupted one would (on the same device).
            The caller deletes it once the result is kept.

    Raises:
        BadSpecError: invalid settings, a logit cache that does not match, or a checkpoint
            made with other settings or another seed.
        TrainingFailedError: the loss became non-finite.
    """
    training.validate()
    dev = resolve_device(device)
    use_amp, use_cl = _defaults(dev, amp, channels_last)
    train = splits.train.head(training.max_train_samples)
    if teacher_logits is not None:
        if training.augment:
            raise BadSpecError(
                "cached teacher logits need augment=False (augmented images change every epoch)"
            )
        if teacher_logits.shape[0] < len(train):
            raise BadSpecError(
                f"the logit cache holds {teacher_logits.shape[0]} rows for {len(train)} images"
            )
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    _prepare(student, dev, use_cl)
    _prepare(teacher, dev, use_cl)
    teacher.eval()
    ckpt = (_DistillCheckpoint(checkpoint, training, seed, len(train), student, teacher,
                               (dev.type, use_amp, use_cl)) if checkpoint else None)  # fmt: skip
    resumed = ckpt.load() if ckpt is not None else None
    if resumed is None:
        recalibrate_bn(
            student, train, training.bn_recalibration, batch_size=training.batch_size,
            amp=use_amp, channels_last=use_cl,
        )  # fmt: skip
    opt = torch.optim.Adam(student.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    history: list[float] = []
    best, best_epoch, images, seconds = -1.0, 0, 0, 0.0
    best_state: dict[str, torch.Tensor] = {}
    start = 0
    if resumed is not None:
        student.load_state_dict(resumed["student"])
        opt.load_state_dict(resumed["optimizer"])
        gen.set_state(resumed["generator"])
        best_state = resumed["best_state"]
        history, start = list(resumed["history"]), len(resumed["history"])
        best, best_epoch = float(resumed["best"]), int(resumed["best_epoch"])
        images, seconds = int(resumed["images"]), float(resumed["seconds"])
    if progress is not None:
        progress.start("train", training.epochs)
    for epoch in range(start, training.epochs):
        student.train()
        total = torch.zeros((), device=dev)
        t0 = time.perf_counter()
        for x, _, idx in iterate_batches(
            train,
            training.batch_size,
            shuffle=True,
            augment=training.augment,
            generator=gen,
            device=dev,
            channels_last=use_cl,
        ):
            if teacher_logits is not None:
                target = teacher_logits[idx].to(dev, non_blocking=True)
            else:
                with torch.no_grad(), _autocast(dev, use_amp):
                    target = teacher(x).float()
            with _autocast(dev, use_amp):
                out = student(x)
            loss = F.mse_loss(out.float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            images += int(x.shape[0])
            if progress is not None:
                progress.beat()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        seconds += time.perf_counter() - t0
        _check_finite(total, "distillation", epoch, training.lr)
        acc = evaluate(student, splits.val, amp=use_amp)
        history.append(acc)
        if progress is not None:
            progress.epoch_done(epoch + 1, acc)
        if acc > best:
            best, best_epoch = acc, epoch
            best_state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        if ckpt is not None:
            ckpt.save({
                "student": student.state_dict(), "optimizer": opt.state_dict(),
                "generator": gen.get_state(), "best_state": best_state, "history": history,
                "best": best, "best_epoch": best_epoch, "images": images, "seconds": seconds,
            })  # fmt: skip
    if best_state:
        student.load_state_dict(best_state)
    return DistillResult(max(best, 0.0), history, best_epoch, images, seconds)


class _DistillCheckpoint:
    """`distill`'s per-epoch state in one file (torch's format, read back with
    `weights_only=True`: tensors and plain containers only, never arbitrary objects), written
    atomically and synced, with what it was made for: the settings, the seed, the data size,
    the student's shapes, a digest of the teacher's weights, and device type / amp /
    channels-last -- another training's file is refused, never resumed into."""

    def __init__(
        self, path: str | Path, training: SearchTraining, seed: int, n: int,
        student: nn.Module, teacher: nn.Module, mode: tuple[str, bool, bool],
    ) -> None:  # fmt: skip
        import hashlib

        digest = hashlib.sha256()
        for k, v in teacher.state_dict().items():
            digest.update(k.encode())
            digest.update(v.detach().cpu().contiguous().numpy().tobytes())
        self.path = Path(path)
        self.made_for = {
            "training": asdict(training), "seed": seed, "train_images": n,
            "student": {k: list(v.shape) for k, v in student.state_dict().items()},
            "teacher": digest.hexdigest(), "device_amp_channels_last": list(mode),
        }  # fmt: skip

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("made_for") != self.made_for:
            raise BadSpecError(
                f"{self.path} is a checkpoint of another training ({state.get('made_for')}, "
                f"not {self.made_for}); delete it to start afresh"
            )
        return state  # type: ignore[no-any-return]

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            torch.save({**state, "made_for": self.made_for}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


# ------------------------------------------------------------------------ supervised training
def _supervised(
    model: nn.Module,
    splits: DatasetSplits,
    *,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    step_every: int,
    gamma: float,
    seed: int,
    dev: torch.device,
    amp: bool | None,
    channels_last: bool | None,
    max_train_samples: int | None,
    what: str,
    time_budget_s: float | None = None,
    progress: Progress | None = None,
) -> list[float]:
    """SGD with a step schedule and cross-entropy on the labels, with augmentation.

    With `time_budget_s`, the schedule follows the clock instead of the epoch count: the lr is
    multiplied by `gamma` at the first epoch boundary after 3/4 of the budget, and training
    stops before an epoch that would end past the budget (judged by the slowest epoch so far).
    """
    use_amp, use_cl = _defaults(dev, amp, channels_last)
    train = splits.train.head(max_train_samples)
    seed_everything(seed)
    gen = torch.Generator().manual_seed(seed)
    _prepare(model, dev, use_cl)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step_every, gamma=gamma)
    history: list[float] = []
    start, slowest, decayed = time.perf_counter(), 0.0, False
    if progress is not None:
        progress.start("train", epochs)
    for epoch in range(epochs):
        if time_budget_s is not None:
            elapsed = time.perf_counter() - start
            if epoch > 0 and elapsed + slowest > time_budget_s:
                break
            if not decayed and elapsed >= 0.75 * time_budget_s:
                decayed = True
                for group in opt.param_groups:
                    group["lr"] *= gamma
        t_epoch = time.perf_counter()
        model.train()
        total = torch.zeros((), device=dev)
        for x, y, _ in iterate_batches(
            train,
            batch_size,
            shuffle=True,
            augment=True,
            generator=gen,
            device=dev,
            channels_last=use_cl,
        ):
            with _autocast(dev, use_amp):
                out = model(x)
            loss = F.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach()
            if progress is not None:
                progress.beat()
        _check_finite(total, what, epoch, lr)
        if time_budget_s is None:
            sched.step()
        history.append(evaluate(model, splits.val, amp=use_amp))
        if progress is not None:
            progress.epoch_done(epoch + 1, history[-1])
        slowest = max(slowest, time.perf_counter() - t_epoch)
    return history


def finetune(
    student: nn.Module,
    splits: DatasetSplits,
    training: FullTraining,
    *,
    seed: int,
    device: str | torch.device | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    progress: Progress | None = None,
) -> FinetuneResult:
    """The paper's full training of a student (SGD, step schedule, cross-entropy, augmentation).

    Args:
        student: starts from its current (search) weights; trained in place.
        splits: trains on `splits.train`, reports `splits.val` (and `splits.test` if present).
        training: the settings (validated here).
        seed: seeds the data order and augmentation.
        device: where to train (default: CUDA when available).
        progress: beaten every batch, told every finished epoch (the heartbeat).

    Raises:
        BadSpecError: invalid settings.
        TrainingFailedError: the loss became non-finite.
    """
    training.validate()
    dev = resolve_device(device)
    history = _supervised(
        student,
        splits,
        epochs=training.epochs,
        lr=training.lr,
        momentum=training.momentum,
        weight_decay=training.weight_decay,
        batch_size=training.batch_size,
        step_every=training.step_every,
        gamma=training.gamma,
        seed=seed,
        dev=dev,
        amp=amp,
        channels_last=channels_last,
        max_train_samples=None,
        what="full training",
        progress=progress,
    )
    acc = history[-1] if history else evaluate(student, splits.val)
    test = evaluate(student, splits.test) if splits.test is not None else None
    return FinetuneResult(acc, history, test)


def train_teacher(
    arch: str,
    num_classes: int,
    dataset: str,
    training: TeacherTraining | None = None,
    *,
    root: str | None = None,
    device: str | torch.device | None = None,
    download: bool = False,
    splits: DatasetSplits | None = None,
    amp: bool | None = None,
    channels_last: bool | None = None,
    time_budget_s: float | None = None,
    progress: Progress | None = None,
) -> TeacherResult:
    """Train a zoo teacher with the paper's recipe (SGD, step schedule, CE, augmentation).

    Args:
        arch: a `workers.zoo` name.
        num_classes: must match the dataset.
        dataset: a `load_dataset` spec string (ignored for loading when `splits` is given).
        training: the schedule (`TeacherTraining()`: the paper's; the lr is multiplied by 0.1
            every `step_every` epochs) and seed (initialisation, data order, augmentation).
        root: data directory.
        device: where to train (default: CUDA when available).
        download: let torchvision download CIFAR.
        splits: already loaded data (skips `load_dataset`).
        time_budget_s: train for at most this long (wall clock, validation included),
            `training.epochs` being the maximum: the lr drops x0.1 once 3/4 of the budget has
            passed (instead of every `step_every` epochs) and no epoch starts that would end
            past the budget.
        progress: beaten every batch, told every finished epoch (the heartbeat).

    Returns:
        The model after the last epoch, its validation accuracy, safetensors weights and metadata.

    Raises:
        BadSpecError: unknown architecture or dataset, wrong `num_classes`, invalid settings.
        TrainingFailedError: the loss became non-finite.
    """
    training = training or TeacherTraining()
    training.validate()
    if time_budget_s is not None and not (
        isinstance(time_budget_s, int | float)
        and math.isfinite(time_budget_s)
        and time_budget_s > 0
    ):
        raise BadSpecError(f"time_budget_s must be a positive number, got {time_budget_s!r}")
    epochs, seed, max_train_samples = training.epochs, training.seed, training.max_train_samples
    dev = resolve_device(device)
    data = splits if splits is not None else load_dataset(dataset, root, download, seed=0)
    if data.num_classes != int(num_classes):
        raise BadSpecError(
            f"dataset {dataset!r} has {data.num_classes} classes but num_classes={num_classes}"
        )
    seed_everything(seed)
    try:
        model = zoo.build(arch, int(num_classes))
    except (zoo.UnknownModelError, ValueError) as exc:
        raise BadSpecError(str(exc)) from exc
    t0 = time.perf_counter()
    history = _supervised(
        model,
        data,
        epochs=int(epochs),
        lr=float(training.lr),
        momentum=float(training.momentum),
        weight_decay=float(training.weight_decay),
        batch_size=int(training.batch_size),
        step_every=int(training.step_every),
        gamma=0.1,
        seed=seed,
        dev=dev,
        amp=amp,
        channels_last=channels_last,
        max_train_samples=max_train_samples,
        what="teacher training",
        time_budget_s=time_budget_s,
        progress=progress,
    )
    model.eval()
    acc = history[-1] if history else evaluate(model, data.val)
    metadata: dict[str, Any] = {
        "arch": arch,
        "num_classes": int(num_classes),
        "dataset": dataset,
        "accuracy": acc,
        **training.to_dict(),
        "epochs_run": len(history),
        "time_budget_s": time_budget_s,
        "input_shape": list(data.input_shape),
        "train_seconds": time.perf_counter() - t0,
    }
    return TeacherResult(model, acc, state_to_safetensors(model), metadata, history)
