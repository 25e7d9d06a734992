"""Datasets for workers that do not share the coordinator's disk.

A job's `npz:` / `folder:` dataset is read by the coordinator, which can see it (the API checked
the spec there). Workers on other hosts may not. So, once per job:

- the coordinator packs the dataset's files (`pack`: one `.npz`, or every regular file of an
  image folder) when they total at most `ESNAC_DATA_SHIP_MAX_MB`, and puts the payload in Ray's
  object store; every worker of the job receives it (Ray moves it to each node once) and loads
  it from a private temporary copy (`load_shipped`);
- a larger dataset (or shipping turned off with `ESNAC_DATA_SHIP_MAX_MB=0`) is read from the
  worker's own copy: the same relative path under the worker host's `ESNAC_DATA_DIR` (its own
  environment; the coordinator's setting when the host has none);
- a worker that has neither fails with `DatasetMissingError` (code `dataset_missing`), naming its
  host and the path it looked at (`require_local`).

`cifar10` / `cifar100` are torchvision's files under each worker's data directory and `digits`
ships with scikit-learn: neither is packed.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from workers.dataspec import parse_spec, resolve_path
from workers.spec import BadSpecError, WorkerError

__all__ = [
    "DatasetMissingError",
    "load_shipped",
    "pack",
    "require_local",
    "worker_data_dir",
]

MIB = 1 << 20


class DatasetMissingError(WorkerError):
    """The worker's host has no copy of the job's dataset and none was shipped to it."""

    code = "dataset_missing"


def _files(root: Path) -> list[Path]:
    """Regular files under a folder (symlinked ones too, but no symlinked directories)."""
    out: list[Path] = []
    for dirpath, _dirs, names in os.walk(root):
        out.extend(p for p in (Path(dirpath) / n for n in sorted(names)) if p.is_file())
    return sorted(out)


def pack(spec: str, root: str | None, max_mb: float) -> dict[str, Any] | None:
    """The files of an `npz:` / `folder:` dataset as one payload for Ray's object store, or None
    when there is nothing to ship: another kind of dataset, shipping off (`max_mb` <= 0), a
    dataset over `max_mb` MiB, or one this process cannot read (workers then use their own copy).

    Returns:
        `{"spec", "name", "files": {relative posix path: bytes}, "bytes"}`.
    """
    kind, path, _options = parse_spec(spec)
    if kind not in ("npz", "folder") or max_mb <= 0:
        return None
    p = resolve_path(path, root)
    try:
        if kind == "npz":
            if not p.is_file():
                return None
            members = {p.name: p}
        else:
            if not p.is_dir():
                return None
            members = {f.relative_to(p).as_posix(): f for f in _files(p)}
        total = sum(f.stat().st_size for f in members.values())
        if total > max_mb * MIB:
            return None
        files = {rel: f.read_bytes() for rel, f in members.items()}
    except OSError:
        return None
    return {"spec": spec, "name": p.name or "data", "files": files, "bytes": total}


def load_shipped(spec: str, payload: dict[str, Any], seed: int = 0) -> Any:
    """Load a job's dataset from a `pack` payload (written to a private temporary directory,
    read with `workers.data.load_dataset`, then deleted).

    Raises:
        BadSpecError: the payload does not belong to `spec`, or is malformed.
    """
    from workers.data import load_dataset

    if not isinstance(payload, dict) or payload.get("spec") != spec:
        raise BadSpecError(f"the shipped data is not dataset {spec!r}")
    kind, _path, options = parse_spec(spec)
    name = str(payload.get("name") or "data")
    files = payload.get("files")
    if not isinstance(files, dict) or not files or "/" in name or name in (".", ".."):
        raise BadSpecError(f"the shipped data of {spec!r} is malformed")
    tmp = Path(tempfile.mkdtemp(prefix="esnac-data-"))
    try:
        base = tmp / name
        for rel, data in files.items():
            parts = PurePosixPath(rel).parts
            if not parts or PurePosixPath(rel).is_absolute() or ".." in parts:
                raise BadSpecError(f"the shipped data of {spec!r} holds a bad path {rel!r}")
            target = base if kind == "npz" else base.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        query = "&".join(f"{k}={v}" for k, v in options.items())
        local = f"{kind}:{base}" + (f"?{query}" if query else "")
        splits = load_dataset(local, None, False, seed=seed)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return splits


def worker_data_dir(coordinator_dir: str | None) -> str | None:
    """The data directory of this worker's host: its own `ESNAC_DATA_DIR` when set, else the
    coordinator's (the same machine, or hosts configured alike)."""
    return os.environ.get("ESNAC_DATA_DIR") or coordinator_dir


def require_local(spec: str, root: str | None) -> None:
    """Check that an unshipped `npz:` / `folder:` dataset exists on this host.

    Raises:
        DatasetMissingError: it does not; the message names the host and the path.
    """
    kind, path, _options = parse_spec(spec)
    if kind not in ("npz", "folder"):
        return
    p = resolve_path(path, root)
    if p.is_file() if kind == "npz" else p.is_dir():
        return
    raise DatasetMissingError(
        f"dataset {spec!r} is not on worker host {socket.gethostname()!r}: {str(p)!r} does not "
        "exist, and the coordinator did not ship it (datasets over ESNAC_DATA_SHIP_MAX_MB are "
        "not shipped; 0 turns shipping off). Put a copy at that path under the host's "
        "ESNAC_DATA_DIR, or raise ESNAC_DATA_SHIP_MAX_MB"
    )
