"""Datasets shipped to workers without the coordinator's disk (`workers.shipping`)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from workers.data import load_dataset
from workers.shipping import DatasetMissingError, load_shipped, local_copy, pack, require_local
from workers.spec import BadSpecError


def _same(a: object, b: object) -> bool:
    return all(
        torch.equal(getattr(a, s).images, getattr(b, s).images)
        and torch.equal(getattr(a, s).labels, getattr(b, s).labels)
        for s in ("train", "val")
    )


def test_an_npz_travels_as_bytes_and_loads_as_the_original(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 8, 8, 3), np.uint8)
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 4)
    spec = "npz:d.npz?limit=30&val=0.2"  # relative to the coordinator's data directory
    payload = pack(spec, str(tmp_path), max_mb=1)
    assert payload is not None and list(payload["files"]) == ["d.npz"]
    assert payload["bytes"] == (tmp_path / "d.npz").stat().st_size
    shipped = load_shipped(spec, payload)
    assert _same(shipped, load_dataset(spec, str(tmp_path)))  # the options travel with the spec
    assert (len(shipped.train), len(shipped.val)) == (24, 6)
    # nothing to ship: too large, shipping off, not there, or not a file dataset
    assert pack(spec, str(tmp_path), max_mb=0.001) is None
    assert pack(spec, str(tmp_path), max_mb=0) is None
    assert pack("npz:missing.npz", str(tmp_path), max_mb=1) is None
    assert pack("digits", str(tmp_path), max_mb=1) is None


def test_an_image_folder_travels_file_by_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for cls in ("cat", "dog"):
            d = tmp_path / "pets" / split / cls
            d.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (12, 10, 3), np.uint8)).save(d / f"{i}.png")
    spec = f"folder:{tmp_path / 'pets'}?size=8"
    payload = pack(spec, None, max_mb=1)
    assert payload is not None and len(payload["files"]) == 8
    assert "train/cat/0.png" in payload["files"]
    assert _same(load_shipped(spec, payload), load_dataset(spec))


def test_a_payload_of_another_dataset_or_with_escaping_paths_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((10, 8, 8, 3), np.uint8), y=np.arange(10) % 2)
    payload = pack("npz:d.npz", str(tmp_path), max_mb=1)
    assert payload is not None
    with pytest.raises(BadSpecError, match="not dataset"):
        load_shipped("npz:other.npz", payload)
    evil = {"spec": "folder:x", "name": "x", "files": {"../../escape.png": b"x"}}
    with pytest.raises(BadSpecError, match="bad path"):
        load_shipped("folder:x", evil)
    assert not (tmp_path.parent / "escape.png").exists()


def test_a_worker_without_a_copy_names_its_host_and_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ESNAC_DATA_DIR", raising=False)
    np.savez(tmp_path / "here.npz", x=np.zeros((10, 8, 8, 3), np.uint8), y=np.arange(10) % 2)
    require_local("npz:here.npz", str(tmp_path))  # present: fine
    require_local("digits", None)  # bundled: fine
    with pytest.raises(DatasetMissingError) as e:
        require_local("npz:gone.npz", str(tmp_path))
    assert e.value.code == "dataset_missing"
    assert socket.gethostname() in e.value.message
    assert str(tmp_path / "gone.npz") in e.value.message
    assert "ESNAC_DATA_SHIP_MAX_MB" in e.value.message


def test_symlinked_folders_travel_as_the_loader_reads_them(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for cls in ("cat", "dog"):
        d = tmp_path / "real" / cls
        d.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(d / f"{i}.png")
    (tmp_path / "pets").mkdir()
    (tmp_path / "pets" / "cat").symlink_to(tmp_path / "real" / "cat")
    (tmp_path / "pets" / "dog").symlink_to(tmp_path / "real" / "dog")
    (tmp_path / "real" / "cat" / "loop").symlink_to(tmp_path / "pets")  # a cycle ends
    spec = f"folder:{tmp_path / 'pets'}?size=8"
    payload = pack(spec, None, max_mb=1)
    assert payload is not None and {r.split("/")[0] for r in payload["files"]} >= {"cat", "dog"}
    assert _same(load_shipped(spec, payload), load_dataset(spec))


def test_the_hosts_own_data_directory_comes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "coordinator").mkdir()
    (tmp_path / "host").mkdir()
    np.savez(tmp_path / "coordinator" / "d.npz", x=np.zeros((4, 8, 8, 3), np.uint8), y=[0, 1, 0, 1])
    monkeypatch.delenv("ESNAC_DATA_DIR", raising=False)
    assert local_copy("npz:d.npz", str(tmp_path / "coordinator")) == (
        True, str(tmp_path / "coordinator"))  # fmt: skip
    monkeypatch.setenv("ESNAC_DATA_DIR", str(tmp_path / "host"))  # another disk: no copy here
    assert local_copy("npz:d.npz", str(tmp_path / "coordinator")) == (False, str(tmp_path / "host"))
    with pytest.raises(DatasetMissingError, match=str(tmp_path / "host" / "d.npz")):
        require_local("npz:d.npz", str(tmp_path / "coordinator"))
