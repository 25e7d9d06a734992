"""Dataset spec strings, parsed without loading torch (the REST layer validates them).

Spec strings:
Spec strings:
    - ``cifar10`` / ``cifar100``: torchvision's copies under ``root`` (``download=True`` fetches
      them); the 50k training images are split 45k train / 5k validation with a fixed seed, the
      10k test images are the test split.
    - ``digits``: scikit-learn's bundled 1,797 8x8 digits, resized to 32x32x3 (offline);
      a fixed-seed 80/20 train/validation split.
    - ``npz:<path>``: arrays ``x`` (uint8 N x H x W x C, or N x H x W) and ``y`` (labels); optional
      ``x_val``/``y_val`` and ``x_test``/``y_test``. Without validation arrays, a fixed-seed 90/10
      split. Options after ``?``: ``limit=N`` (use only the first N images of ``x``), ``val=F``
      (validation fraction), e.g. ``npz:/data/train.npz?limit=10000``.
    - ``folder:<path>``: an ImageFolder tree (one sub-folder per class). If the folder holds
      ``train/`` (and optionally ``val/``, ``test/``) sub-trees, they are the splits; otherwise a
      fixed-seed 90/10 split. Images are resized to ``size`` x ``size`` (option ``size``,
      default 32).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from workers.spec import BadSpecError

__all__ = [
    "CIFAR_CLASSES",
    "check_confined",
    "dataset_info",
    "fraction_option",
    "int_option",
    "parse_spec",
    "read_npz",
    "resolve_path",
]

CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}


def parse_spec(spec: str) -> tuple[str, str, dict[str, str]]:
    """Split a spec string into (kind, path, options)."""
    if not isinstance(spec, str) or not spec.strip():
        raise BadSpecError(f"dataset spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec in ("cifar10", "cifar100", "digits"):
        return spec, "", {}
    kind, sep, rest = spec.partition(":")
    if not sep or kind not in ("npz", "folder") or not rest:
        raise BadSpecError(
            f"unknown dataset {spec!r}; use one of cifar10, cifar100, digits, npz:<path>, "
            "folder:<path>"
        )
    path, _, query = rest.partition("?")
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = item.partition("=")
        if not eq:
            raise BadSpecError(f"dataset option {item!r} in {spec!r} must look like key=value")
        options[key] = value
    allowed = {"npz": {"limit", "val"}, "folder": {"val", "size"}}[kind]
    unknown = set(options) - allowed
    if unknown:
        raise BadSpecError(
            f"unknown dataset option(s) {sorted(unknown)} for {kind}; known: {sorted(allowed)}"
        )
    return kind, path, options


def int_option(options: dict[str, str], key: str, default: int | None) -> int | None:
    if key not in options:
        return default
    try:
        value = int(options[key])
    except ValueError:
        raise BadSpecError(
            f"dataset option {key} must be an integer, got {options[key]!r}"
        ) from None
    if value < 1:
        raise BadSpecError(f"dataset option {key} must be >= 1, got {value}")
    return value


def fraction_option(options: dict[str, str], key: str, default: float) -> float:
    if key not in options:
        return default
    try:
        value = float(options[key])
    except ValueError:
        raise BadSpecError(f"dataset option {key} must be a number, got {options[key]!r}") from None
    if not 0.0 < value < 1.0:
        raise BadSpecError(f"dataset option {key} must lie in (0, 1), got {value}")
    return value


def resolve_path(path: str, root: str | None) -> Path:
    """Where an `npz:`/`folder:` path points: a relative one under `root` (the data directory)
    when there is one, else under the working directory."""
    p = Path(os.path.expanduser(path))
    if not p.is_absolute() and root is not None:
        p = Path(root) / p
    return p


def check_confined(spec: str, root: str | None, allow_any: bool = False) -> None:
    """Refuse an `npz:`/`folder:` spec whose path lies outside the data root `root`.

    A relative path is read under `root`; an absolute one must lie under it too. The check is on
    the resolved path (symlinks followed), so neither `..` nor a link leads out. `allow_any`
    (the operator's `ESNAC_DATA_ALLOW_ANY_PATH=true`) turns the check off.

    Raises:
        BadSpecError: outside the root, or no root configured (the message says how to fix it).
    """
    kind, path, _options = parse_spec(spec)
    if kind not in ("npz", "folder") or allow_any:
        return
    if root is None:
        raise BadSpecError(
            f"{kind}: datasets are read only under the server's data directory, and none is "
            "configured; the operator sets ESNAC_DATA_DIR (or ESNAC_DATA_ALLOW_ANY_PATH=true)"
        )
    try:
        base = Path(root).expanduser().resolve()
        target = resolve_path(path, str(base)).resolve()
    except (RuntimeError, ValueError, OSError) as e:  # `~nosuchuser`, a NUL byte, a link loop
        raise BadSpecError(f"dataset path {path!r} cannot be resolved: {e}") from None
    if not target.is_relative_to(base):
        raise BadSpecError(
            f"dataset path {path!r} lies outside the data directory {str(base)!r} "
            "(ESNAC_DATA_DIR); give a path under it (relative paths are read from there), or "
            "the operator sets ESNAC_DATA_ALLOW_ANY_PATH=true"
        )


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an .npz file (never unpickling), checked to hold `x` and `y`.

    Raises:
        BadSpecError: the file is not an .npz of arrays (one holding pickled objects included)
            or lacks `x` or `y`.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError):
        raise _not_npz(path) from None
    if "x" not in arrays or "y" not in arrays:
        raise BadSpecError(
            f"{str(path)!r} must hold arrays 'x' (uint8 N x H x W x C) and 'y' (labels); "
            f"found {sorted(arrays)}"
        )
    return arrays


def _not_npz(path: Path) -> BadSpecError:
    # numpy's own message for an object array suggests allow_pickle=True: never tell a user that
    return BadSpecError(
        f"{str(path)!r} is not an .npz file of plain arrays 'x' (uint8 N x H x W x C) and 'y' "
        "(integer labels)"
    )


def dataset_info(spec: str, root: str | None = None) -> tuple[int, tuple[int, int, int]]:
    """`(num_classes, input_shape)` of a dataset without loading its images where possible.

    Raises:
        BadSpecError: as `load_dataset`.
    """
    kind, path, options = parse_spec(spec)
    if kind in CIFAR_CLASSES:
        return CIFAR_CLASSES[kind], (3, 32, 32)
    if kind == "digits":
        return 10, (3, 32, 32)
    if kind == "npz":
        p = resolve_path(path, root)
        if not p.is_file():
            raise BadSpecError(f"npz dataset file {str(p)!r} does not exist")
        try:
            with np.load(p, allow_pickle=False) as z:
                if "x" not in z or "y" not in z:
                    raise BadSpecError(
                        f"{str(p)!r} must hold arrays 'x' (uint8 N x H x W x C) and 'y' "
                        f"(labels); found {sorted(z.files)}"
                    )
                ys = [z[k] for k in ("y", "y_val", "y_test") if k in z]
                limit = int_option(options, "limit", None)
                if limit is not None:
                    ys[0] = ys[0][:limit]
                x0 = z["x"][:1]
        except (OSError, ValueError, EOFError):
            raise _not_npz(p) from None
        if x0.ndim not in (3, 4) or x0.shape[0] == 0:
            raise BadSpecError(f"{str(p)!r}: x must be N x H x W x C with N > 0")
        c = 1 if x0.ndim == 3 else int(x0.shape[3])
        num_classes = int(max(int(np.max(y)) for y in ys if len(y))) + 1
        return num_classes, (c, int(x0.shape[1]), int(x0.shape[2]))
    p = resolve_path(path, root)
    if not p.is_dir():
        raise BadSpecError(f"image folder {str(p)!r} does not exist")
    size = int_option(options, "size", 32) or 32
    base = p / "train" if (p / "train").is_dir() else p
    classes = [d for d in base.iterdir() if d.is_dir()]
    if not classes:
        raise BadSpecError(f"{str(base)!r} holds no class sub-folders (expected <class>/<image>)")
    return len(classes), (3, size, size)
