"""Measured inference latency of a network on a declared target (the latency-aware reward).

A measurement is warm-up runs, then `runs` timed forward passes of one `batch x C x H x W` input;
its figure is the median, and the spread of the timed runs is kept with it (10th and 90th
percentiles) so a reader can tell a real difference from noise. The teacher is measured the same
way on the same worker, so a student's latency ratio never mixes two machines.

Backends:
- `onnxruntime-cpu`: the network exported to ONNX (`workers.export.to_onnx`) and run by an
  ONNX Runtime CPU session with `threads` intra-op threads (what most deployments run);
- `torch-cpu`: eager PyTorch on the CPU with `threads` threads (restored afterwards);
- `torch-cuda`: eager PyTorch on the worker's GPU, synchronised around every run.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from workers.spec import BadSpecError, LatencySpec

__all__ = ["Latency", "measure_latency"]


@dataclass(frozen=True)
class Latency:
    """One measurement, in milliseconds per forward pass of one batch."""

    median_ms: float
    p10_ms: float
    p90_ms: float

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative spread of the timed runs."""
        return (self.p90_ms - self.p10_ms) / self.median_ms if self.median_ms > 0 else 0.0


def _time_runs(
    run: Callable[[], object],
    spec: LatencySpec,
    sync: Callable[[], None],
    beat: Callable[[], None],
) -> Latency:
    for _ in range(spec.warmup):
        run()
        beat()
    sync()
    times = []
    for _ in range(spec.runs):
        t0 = time.perf_counter()
        run()
        sync()
        times.append((time.perf_counter() - t0) * 1000.0)
        beat()
    p10, median, p90 = np.percentile(np.asarray(times), [10, 50, 90])
    return Latency(float(median), float(p10), float(p90))


def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    spec: LatencySpec | None = None,
    *,
    device: torch.device | str | None = None,
    beat: Callable[[], None] | None = None,
) -> Latency:
    """Measure `model`'s inference latency on `spec`'s backend (the model is left unchanged).

    Args:
        model: a teacher or a student, on any device.
        input_shape: one input's shape `(C, H, W)`.
        spec: the target (default: ONNX Runtime on 1 CPU thread, batch 1).
        device: the worker's device; `torch-cuda` times on it (None: the current CUDA device).
        beat: called after every run (the attempt's heartbeat: a long measurement is not a
            stalled worker).

    Raises:
        BadSpecError: a bad spec, or `torch-cuda` on a worker whose device is not a GPU.
    """
    spec = spec or LatencySpec()
    spec.validate()
    beat = beat or (lambda: None)
    shape = (spec.batch, *(int(s) for s in input_shape))
    if spec.backend == "onnxruntime-cpu":
        import onnxruntime as ort

        from workers.export import to_onnx

        options = ort.SessionOptions()
        options.intra_op_num_threads = spec.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session = ort.InferenceSession(
            to_onnx(model, input_shape), options, providers=["CPUExecutionProvider"]
        )
        feed = {"input": np.zeros(shape, dtype=np.float32)}
        return _time_runs(lambda: session.run(None, feed), spec, lambda: None, beat)

    if spec.backend == "torch-cuda":
        dev = torch.device(device) if device is not None else torch.device("cuda")
        if dev.type != "cuda" or not torch.cuda.is_available():
            raise BadSpecError(
                f"latency backend 'torch-cuda' needs a worker that trains on a GPU (this one "
                f"uses {dev})"
            )
    else:
        dev = torch.device("cpu")
    m = copy.deepcopy(model).to(device=dev, dtype=torch.float32).eval()
    x = torch.zeros(shape, device=dev)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(spec.threads)
    try:
        with torch.inference_mode():
            return _time_runs(lambda: m(x), spec, sync, beat)
    finally:
        torch.set_num_threads(threads)
