"""Fixtures for the worker tests: a small real dataset on disk and a teacher's weights."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from workers import zoo
from workers.data import _digits_arrays
from workers.export import state_to_safetensors
from workers.trial import JobContext, PreparedJob, prepare_job


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: the CPU is shared, and results must match the 1-thread Ray actors."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_npz(tmp_path_factory: pytest.TempPathFactory) -> str:
    """`npz:` spec of the first 240 digits (32x32x3 uint8), a fixed 90/10 split -> 216/24."""
    images, labels = _digits_arrays()
    path = tmp_path_factory.mktemp("data") / "digits240.npz"
    x = images[:240].permute(0, 2, 3, 1).numpy()
    np.savez(path, x=x, y=labels[:240].numpy())
    return f"npz:{path}"


@pytest.fixture(scope="session")
def teacher_bytes() -> bytes:
    """Weights of a freshly initialised resnet20 (10 classes), seed 0."""
    torch.manual_seed(0)
    return state_to_safetensors(zoo.build("resnet20", 10))


@pytest.fixture(scope="module")
def ctx(small_npz: str, teacher_bytes: bytes) -> JobContext:
    """A job on the small dataset with the resnet20 teacher (teacher accuracy 0.8)."""
    return JobContext("job-1", "resnet20", 10, teacher_bytes, 0.8, small_npz)


@pytest.fixture(scope="module")
def state(ctx: JobContext) -> PreparedJob:
    """`ctx` prepared on the CPU (one per test module: its caches start empty)."""
    return prepare_job(ctx, device="cpu")


def npz_path(spec: str) -> Path:
    return Path(spec.removeprefix("npz:"))
