"""Datasets by spec string, held in memory as uint8 tensors, with batched augmentation.

Spec strings (``cifar10``, ``cifar100``, ``digits``, ``npz:<path>``, ``folder:<path>``) are
parsed by `workers.dataspec`, which documents them and needs no torch.

Whole datasets live in memory as uint8 tensors; `iterate_batches` normalises and augments whole
batches at once (random crop from a zero-padded image + horizontal flip, the paper's augmentation),
which is much faster on a CPU than per-image PIL transforms.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from workers.dataspec import (
    CIFAR_CLASSES,
    dataset_info,
    fraction_option,
    int_option,
    parse_spec,
    read_npz,
    resolve_path,
)
from workers.spec import BadSpecError

__all__ = [
    "DatasetSplits",
    "ImageTensors",
    "augment_batch",
    "dataset_info",
    "describe",
    "iterate_batches",
    "load_dataset",
    "num_batches",
]

_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
_CIFAR_VAL = 5000
_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif")


class ImageTensors(Dataset):
    """A labelled image set held in memory.

    Attributes:
        images: uint8 tensor `N x C x H x W`.
        labels: int64 tensor `N`.
        mean / std: float32 tensors `C`, the per-channel normalisation (on the 0..1 scale).
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise BadSpecError(
                f"images must be a uint8 N x C x H x W tensor, got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise BadSpecError(
                f"got {images.shape[0]} images but labels of shape {tuple(labels.shape)}"
            )
        self.images = images.contiguous()
        self.labels = labels.to(torch.int64).contiguous()
        self.mean = mean.to(torch.float32)
        self.std = std.to(torch.float32)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index].to(torch.float32) / 255.0
        x = (x - self.mean[:, None, None]) / self.std[:, None, None]
        return x, int(self.labels[index])

    def head(self, n: int | None) -> ImageTensors:
        """The first `n` images (all of them for None or n >= len)."""
        if n is None or n >= len(self):
            return self
        return ImageTensors(self.images[:n], self.labels[:n], self.mean, self.std)

    def normalized(self, index: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Normalised float32 images `n x C x H x W` (no augmentation)."""
        imgs = self.images if index is None else self.images[index]
        return _normalize(imgs, self.mean, self.std)


@dataclass
class DatasetSplits:
    """Train / validation / test splits of one dataset.

    Attributes:
        train / val / test: the splits (`test` is None when the dataset has none).
        num_classes: number of classes (labels are 0..num_classes-1).
        input_shape: `(C, H, W)` of one image.
        name: the spec string the splits were loaded from.
    """

    train: ImageTensors
    val: ImageTensors
    test: ImageTensors | None
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str


# ------------------------------------------------------------------------------------ helpers
def _normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = images.to(torch.float32).div_(255.0)
    m = mean.to(x.device)[None, :, None, None]
    s = std.to(x.device)[None, :, None, None]
    return x.sub_(m).div_(s)


def _stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (0..1 scale) of uint8 `N x C x H x W` images."""
    x = images.to(torch.float64) / 255.0
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return mean.to(torch.float32), std.to(torch.float32)


def _nhwc_to_tensor(x: np.ndarray, what: str) -> torch.Tensor:
    if x.dtype != np.uint8:
        raise BadSpecError(f"{what} must be uint8 images, got dtype {x.dtype}")
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise BadSpecError(f"{what} must be N x H x W x C (or N x H x W), got shape {x.shape}")
    return torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2).contiguous()


def _labels(y: np.ndarray, n: int, what: str) -> torch.Tensor:
    y = np.asarray(y).reshape(-1)
    if y.shape[0] != n:
        raise BadSpecError(f"{what} has {y.shape[0]} labels for {n} images")
    if not np.issubdtype(y.dtype, np.integer):
        raise BadSpecError(f"{what} must hold integer labels, got dtype {y.dtype}")
    if n and y.min() < 0:
        raise BadSpecError(f"{what} holds negative labels")
    return torch.from_numpy(y.astype(np.int64))


def _split(n: int, n_val: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed-seed permutation split into (train indices, validation indices)."""
    if n_val < 1 or n_val >= n:
        raise BadSpecError(f"cannot split {n} images into train and {n_val} validation images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_val:], perm[:n_val]


def _splits(
    name: str,
    images: torch.Tensor,
    labels: torch.Tensor,
    val_fraction: float,
    seed: int,
    num_classes: int,
    *,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    test: tuple[torch.Tensor, torch.Tensor] | None = None,
    stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    n_val: int | None = None,
) -> DatasetSplits:
    if val is None:
        n_val = n_val if n_val is not None else max(1, int(round(val_fraction * len(labels))))
        tr, va = _split(len(labels), n_val, seed)
        val = (images[va], labels[va])
        images, labels = images[tr], labels[tr]
    mean, std = stats if stats is not None else _stats(images)
    for part, arr in (("val", val), ("test", test)):
        if arr is not None and arr[0].shape[1:] != images.shape[1:]:
            raise BadSpecError(
                f"{name}: {part} images are {tuple(arr[0].shape[1:])} (C x H x W) but training "
                f"images are {tuple(images.shape[1:])}; all splits need the same image shape"
            )
    checks = {"train": labels, "val": val[1], "test": test[1] if test is not None else None}
    for part, lab in checks.items():
        if lab is not None and len(lab) and int(lab.max()) >= num_classes:
            raise BadSpecError(f"{name}: {part} label {int(lab.max())} >= {num_classes} classes")
    c, h, w = images.shape[1:]
    return DatasetSplits(
        train=ImageTensors(images, labels, mean, std),
        val=ImageTensors(val[0], val[1], mean, std),
        test=ImageTensors(test[0], test[1], mean, std) if test is not None else None,
        num_classes=num_classes,
        input_shape=(int(c), int(h), int(w)),
        name=name,
    )


# ------------------------------------------------------------------------------------ loaders
def _load_cifar(kind: str, root: str | None, download: bool, seed: int) -> DatasetSplits:
    from torchvision import datasets

    cls = datasets.CIFAR10 if kind == "cifar10" else datasets.CIFAR100
    where = root or os.path.join(os.path.expanduser("~"), ".cache", "esnac", "data")
    try:
        train = cls(where, train=True, download=download)
        test = cls(where, train=False, download=download)
    except (RuntimeError, OSError) as exc:
        raise BadSpecError(
            f"{kind} is not available under {where!r} ({exc}); pass download=True (needs "
            f"internet), point the data dir at a folder holding torchvision's {kind} copy, or "
            "convert it to an .npz file and use 'npz:<path>'"
        ) from exc
    x = _nhwc_to_tensor(np.asarray(train.data), f"{kind} train")
    y = torch.as_tensor(np.asarray(train.targets), dtype=torch.int64)
    xt = _nhwc_to_tensor(np.asarray(test.data), f"{kind} test")
    yt = torch.as_tensor(np.asarray(test.targets), dtype=torch.int64)
    mean, std = (torch.tensor(v) for v in _CIFAR_STATS[kind])
    return _splits(
        kind,
        x,
        y,
        0.0,
        seed,
        CIFAR_CLASSES[kind],
        test=(xt, yt),
        stats=(mean, std),
        n_val=_CIFAR_VAL,
    )


def _digits_table() -> np.ndarray:
    """scikit-learn's digits as `load_digits` reads them (1797 rows: 64 pixels, then the
    label), straight from the file scikit-learn ships: importing scikit-learn costs ~2 CPU s,
    paid by every worker process of a digits job."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as f:
                return np.loadtxt(f, delimiter=",")
    from sklearn.datasets import load_digits  # a layout without the file: its own loader

    d = load_digits()
    return np.concatenate([d.data, d.target[:, None]], axis=1)


def _digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    table = _digits_table()
    pixels, target = table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    small = torch.from_numpy(pixels.astype(np.float32) / 16.0)[:, None]  # N x 1 x 8 x 8
    big = torch.nn.functional.interpolate(
        small, size=(32, 32), mode="bilinear", align_corners=False
    )
    images = (big.clamp(0, 1) * 255.0).round().to(torch.uint8).expand(-1, 3, -1, -1).contiguous()
    return images, torch.from_numpy(target)


def _load_digits(seed: int) -> DatasetSplits:
    images, labels = _digits_arrays()
    return _splits("digits", images, labels, 0.2, seed, 10)


def _load_npz(
    spec: str, path: str, options: dict[str, str], root: str | None, seed: int
) -> DatasetSplits:
    limit = int_option(options, "limit", None)
    val_fraction = fraction_option(options, "val", 0.1)
    p = resolve_path(path, root)
    if not p.is_file():
        raise BadSpecError(f"npz dataset file {str(p)!r} does not exist")
    arrays = read_npz(p)
    x, y = arrays["x"], arrays["y"]
    if limit is not None:
        x, y = x[:limit], y[:limit]
    images = _nhwc_to_tensor(x, f"{p.name}: x")
    labels = _labels(y, images.shape[0], f"{p.name}: y")
    parts: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for part in ("val", "test"):
        if f"x_{part}" in arrays:
            xi = _nhwc_to_tensor(arrays[f"x_{part}"], f"{p.name}: x_{part}")
            if f"y_{part}" not in arrays:
                raise BadSpecError(f"{str(p)!r} has x_{part} but no y_{part}")
            parts[part] = (xi, _labels(arrays[f"y_{part}"], xi.shape[0], f"{p.name}: y_{part}"))
    all_labels = [labels] + [lab for _, lab in parts.values()]
    num_classes = int(max(int(lab.max()) for lab in all_labels if len(lab))) + 1
    return _splits(
        spec,
        images,
        labels,
        val_fraction,
        seed,
        num_classes,
        val=parts.get("val"),
        test=parts.get("test"),
    )


def _image_folder(
    path: Path, classes: list[str] | None, size: int
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from PIL import Image

    found = sorted(d.name for d in path.iterdir() if d.is_dir())
    if classes is None:
        classes = found
    if not classes:
        raise BadSpecError(f"{str(path)!r} holds no class sub-folders (expected <class>/<image>)")
    index = {c: i for i, c in enumerate(classes)}
    images: list[np.ndarray] = []
    labels: list[int] = []
    for cname in found:
        if cname not in index:
            raise BadSpecError(f"class folder {cname!r} under {str(path)!r} is not in {classes}")
        for f in sorted((path / cname).iterdir()):
            if f.suffix.lower() not in _IMAGE_EXTENSIONS:
                continue
            try:
                with Image.open(f) as im:
                    rgb = im.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                    images.append(np.asarray(rgb, dtype=np.uint8))
            except OSError as exc:
                raise BadSpecError(f"cannot read image {str(f)!r}: {exc}") from exc
            labels.append(index[cname])
    if not images:
        raise BadSpecError(f"no images found under {str(path)!r}")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.int64), classes


def _load_folder(
    spec: str, path: str, options: dict[str, str], root: str | None, seed: int
) -> DatasetSplits:
    p = resolve_path(path, root)
    if not p.is_dir():
        raise BadSpecError(f"image folder {str(p)!r} does not exist")
    size = int_option(options, "size", 32) or 32
    val_fraction = fraction_option(options, "val", 0.1)
    if (p / "train").is_dir():
        x, y, classes = _image_folder(p / "train", None, size)
        val = _image_folder(p / "val", classes, size)[:2] if (p / "val").is_dir() else None
        test = _image_folder(p / "test", classes, size)[:2] if (p / "test").is_dir() else None
    else:
        x, y, classes = _image_folder(p, None, size)
        val = test = None
    return _splits(spec, x, y, val_fraction, seed, len(classes), val=val, test=test)


def load_dataset(
    spec: str, root: str | None = None, download: bool = False, seed: int = 0
) -> DatasetSplits:
    """Load a dataset by spec string (see the module docstring) into memory.

    Args:
        spec: ``cifar10``, ``cifar100``, ``digits``, ``npz:<path>[?opts]``,
            ``folder:<path>[?opts]``.
        root: data directory (torchvision's root for CIFAR; base for relative paths).
        download: let torchvision download CIFAR when it is missing.
        seed: seed of the train/validation split (fixed per job).

    Returns:
        The splits, images as uint8 `N x C x H x W` tensors.

    Raises:
        BadSpecError: unknown spec, missing or malformed data (the message says how to fix it).
    """
    kind, path, options = parse_spec(spec)
    if kind in CIFAR_CLASSES:
        return _load_cifar(kind, root, download, seed)
    if kind == "digits":
        return _load_digits(seed)
    if kind == "npz":
        return _load_npz(spec, path, options, root, seed)
    return _load_folder(spec, path, options, root, seed)


# ------------------------------------------------------------------------------------ batches
def augment_batch(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """The paper's augmentation on a whole batch: random crop of a zero-padded image + flip.

    Args:
        images: `B x C x H x W` (any dtype, any device).
        generator: a CPU generator drawing the crop offsets and flips.
        pad: zero padding on each side before cropping back to `H x W`.

    Returns:
        Tensor `B x C x H x W` of the same dtype and device.
    """
    b, c, h, w = images.shape
    offs = torch.randint(0, 2 * pad + 1, (2, b), generator=generator)
    flip = torch.rand(b, generator=generator) < 0.5
    dev = images.device
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad))
    rows = (offs[0][:, None] + torch.arange(h)[None, :]).to(dev)  # B x H
    cols = (offs[1][:, None] + torch.arange(w)[None, :]).to(dev)  # B x W
    cols = torch.where(flip.to(dev)[:, None], cols.flip(1), cols)
    out = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * pad))
    return out.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def iterate_batches(
    data: ImageTensors,
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    channels_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Normalised (and optionally augmented) batches of an in-memory image set.

    Args:
        data: the images.
        batch_size: images per batch (the last batch may be smaller).
        shuffle: visit the images in a random order drawn from `generator`.
        augment: apply `augment_batch` (random crop with padding 4 + horizontal flip).
        generator: CPU generator for the order and the augmentation (required for either).
        device: where the batches go.
        channels_last: return the images in channels-last memory format.

    Yields:
        `(x, y, idx)`: float32 images `B x C x H x W` on `device`, int64 labels `B` on `device`,
        and the int64 indices `B` (CPU) of the images in `data`.
    """
    if (shuffle or augment) and generator is None:
        raise ValueError("shuffle/augment need a torch.Generator for reproducibility")
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    dev = torch.device(device)
    non_blocking = dev.type == "cuda"
    mean = data.mean.to(dev)
    std = data.std.to(dev)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        imgs = data.images[idx]
        if non_blocking:
            imgs = imgs.pin_memory()
        imgs = imgs.to(dev, non_blocking=non_blocking)
        if augment:
            imgs = augment_batch(imgs, generator)  # type: ignore[arg-type]
        x = _normalize(imgs, mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, data.labels[idx].to(dev, non_blocking=non_blocking), idx


def num_batches(n: int, batch_size: int) -> int:
    """Number of batches `iterate_batches` yields for `n` images."""
    return math.ceil(n / batch_size)


def describe(splits: DatasetSplits) -> dict[str, Any]:
    """A short JSON-able summary of loaded splits (sizes, classes, shape)."""
    return {
        "name": splits.name,
        "train": len(splits.train),
        "val": len(splits.val),
        "test": len(splits.test) if splits.test is not None else 0,
        "num_classes": splits.num_classes,
        "input_shape": list(splits.input_shape),
    }
