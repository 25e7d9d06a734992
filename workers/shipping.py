"""Datasets for workers that do not share the coordinator's disk.

A job's `npz:` / `folder:` dataset is read by the coordinator, which can see it (the API checked
the spec there). Workers on other hosts may not. So, once per job:

- the coordinator packs the dataset's files (`pack`: one `.npz`, or every regular file of an
  image folder) when they total at most `ESNAC_DATA_SHIP_MAX_MB`, and puts the payload in Ray's
  object store; a worker without a copy of its own fetches it (Ray moves it to each node once)
  and loads it from a private temporary copy (`load_shipped`);
- a worker whose host has its own copy reads it and never fetches the shipped one: the same
  relative path under the host's own `ESNAC_DATA_DIR` (its environment; the coordinator's
  setting when the host has none); so does every worker of a larger dataset (or with shipping
  turned off, `ESNAC_DATA_SHIP_MAX_MB=0`);
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
    "local_copy",
    "pack",
    "require_local",
]

MIB = 1 << 20


class DatasetMissingError(WorkerError):
    """The worker's host has no copy of the job's dataset and none was shipped to it."""

    code = "dataset_missing"


def _files(root: Path) -> list[Path]:
    """Regular files under a folder, symlinks followed as the loader follows them (each real
    directory once, so a link loop ends)."""
    out: list[Path] = []
    seen: set[str] = set()
    for dirpath, dirs, names in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
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


def local_copy(spec: str, coordinator_dir: str | None) -> tuple[bool, str | None]:
    """Whether this host has the dataset, and the data root to read it under: the host's own
    `ESNAC_DATA_DIR` (its environment) when it has one, else the coordinator's (the same
    machine, or hosts set up alike). Torchvision and bundled datasets always count as here."""
    root = os.environ.get("ESNAC_DATA_DIR") or coordinator_dir
    kind, path, _options = parse_spec(spec)
    if kind not in ("npz", "folder"):
        return True, root
    p = resolve_path(path, root)
    return (p.is_file() if kind == "npz" else p.is_dir()), root


def require_local(spec: str, coordinator_dir: str | None) -> str | None:
    """The data root of this host's copy of the dataset (see `local_copy`).

    Raises:
        DatasetMissingError: this host has none; the message names the host and the paths.
    """
    found, root = local_copy(spec, coordinator_dir)
    if found:
        return root
    _kind, path, _options = parse_spec(spec)
    raise DatasetMissingError(
        f"dataset {spec!r} is not on worker host {socket.gethostname()!r}: "
        f"{str(resolve_path(path, root))!r} does not "
        "exist, and the coordinator did not ship it (datasets over ESNAC_DATA_SHIP_MAX_MB are "
        "not shipped; 0 turns shipping off). Put a copy at that path under the host's "
        "ESNAC_DATA_DIR, or raise ESNAC_DATA_SHIP_MAX_MB"
    )
