"""The prepared GPU check: run it whenever a GPU is lent (one command, a few minutes, JSON out).

1. KD throughput on CUDA, bfloat16 autocast vs float32: a resnet56 teacher and a half-width
   student, `workers.train.distill` (the search-time training) on random 32x32 images.
2. One ESNAC proposal step with the paper's settings (resnet34 space, 160 observations,
   8 kernels, 1,000 candidates each) on CUDA and on the CPU, in the same run.
3. One trial through a `num_gpus=1` Ray actor (`RemoteTrialWorker`), with its heartbeat polled.

Every part is timed against its baseline in the same run; on a machine without CUDA the script
says so and runs the CPU halves only (`--cpu-smoke`: tiny sizes, to check the plumbing here).

    python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from embedding.options import PRESETS  # noqa: E402
from embedding.search import EsnacSearcher  # noqa: E402
from embedding.space import Action, CompressionSpace  # noqa: E402
from workers import zoo  # noqa: E402
from workers.data import DatasetSplits, ImageTensors  # noqa: E402
from workers.export import state_to_safetensors  # noqa: E402
from workers.spec import SearchTraining, TrialSpec  # noqa: E402
from workers.train import distill  # noqa: E402
from workers.trial import JobContext  # noqa: E402


def _splits(n: int, seed: int = 0) -> DatasetSplits:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    train = ImageTensors(x, y, mean, std)
    val = ImageTensors(x[: max(1, n // 8)], y[: max(1, n // 8)], mean, std)
    return DatasetSplits(train, val, None, 10, (3, 32, 32), "random")


def kd_throughput(device: str, images: int, repeats: int) -> dict[str, Any]:
    """Images/s of `distill` (1 epoch) with bf16 autocast and in float32, same data and nets."""
    torch.manual_seed(0)
    teacher = zoo.build("resnet56", 10)
    space = CompressionSpace.for_teacher(teacher)
    half = Action((), tuple(0.5 for _ in space.shrinkable), (), space.fingerprint)
    splits = _splits(images)
    training = SearchTraining(epochs=1, batch_size=128, augment=False)
    out: dict[str, Any] = {"device": device, "images": images}
    for name, amp in (("float32", False), ("bfloat16", True)):
        rates = []
        for r in range(repeats + 1):  # the first run warms up kernels and the allocator
            student = space.materialize(half)
            res = distill(student, teacher, splits, training, seed=r, device=device, amp=amp)
            if r:
                rates.append(res.images / max(res.seconds, 1e-9))
        out[f"{name}_images_per_s"] = float(np.median(rates))
    out["bf16_speedup"] = out["bfloat16_images_per_s"] / out["float32_images_per_s"]
    return out


def proposal_step(device: str, observations: int, candidates: int, seed: int = 0) -> dict:
    """One `suggest(8)` with the paper's settings on `device`; wall seconds and fit steps."""
    space = CompressionSpace.for_teacher(zoo.build("resnet34", 100))
    rng = np.random.default_rng(seed)
    observed: dict[str, Action] = {}
    while len(observed) < observations:
        a = space.sample(rng)
        observed.setdefault(a.key, a)
    # the paper preset: the LSTM trained (the product default keeps it untrained, no fit steps)
    paper = {**PRESETS["paper"], "candidates": candidates}
    searcher = EsnacSearcher(space, seed=seed, device=device, **paper)
    searcher.observe(list(observed.values()), rng.random(observations).tolist())
    t0 = time.perf_counter()
    picks = searcher.suggest(8)
    wall = time.perf_counter() - t0
    assert searcher.last_fit is not None
    return {"device": device, "seconds": wall, "proposals": len(picks),
            "kernels": sorted(k for k in searcher.last_kernels if k is not None),
            "fit_steps_mean": float(np.mean(searcher.last_fit.steps)),
            **{f"{k}_s": v for k, v in searcher.last_timings.items()}}  # fmt: skip


def actor_trial(num_gpus: float, images: int) -> dict[str, Any]:
    """One trial through `RemoteTrialWorker` holding `num_gpus`, its progress polled meanwhile."""
    import ray

    from workers.actor import RemoteTrialWorker

    ray.init(address="local", num_cpus=2, num_gpus=1 if num_gpus else 0, log_to_driver=False)
    try:
        torch.manual_seed(0)
        teacher = zoo.build("resnet20", 10)
        space = CompressionSpace.for_teacher(teacher)
        action = space.sample(np.random.default_rng(0))
        np_path = Path(os.environ.get("TMPDIR", "/tmp")) / "esnac_gpu_check.npz"
        g = np.random.default_rng(0)
        np.savez(np_path, x=g.integers(0, 256, (images, 32, 32, 3), dtype=np.uint8),
                 y=g.integers(0, 10, images))  # fmt: skip
        ctx = JobContext("gpu-check", "resnet20", 10, state_to_safetensors(teacher), 0.9,
                         f"npz:{np_path}")  # fmt: skip
        ctx_dict = {k: v for k, v in dataclasses.asdict(ctx).items() if k != "teacher_weights"}
        worker = RemoteTrialWorker.options(num_cpus=1, num_gpus=num_gpus).remote()
        name = ray.get(worker.prepare.remote(ctx_dict, ray.put(ctx.teacher_weights)))
        spec = TrialSpec(0, action.to_dict(), seed=0, training=SearchTraining(epochs=2))
        t0 = time.perf_counter()
        ref = worker.evaluate.remote("gpu-check", spec.to_dict())
        reports = []
        while not ray.wait([ref], timeout=0.5)[0]:
            reports.append(ray.get(worker.progress.remote(), timeout=30))
        result = ray.get(ref)
        return {"num_gpus": num_gpus, "worker": name, "seconds": time.perf_counter() - t0,
                "accuracy": result["accuracy"], "train_s": result["seconds"].get("train"),
                "progress_reports": len([r for r in reports if r])}  # fmt: skip
    finally:
        ray.shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "results" / "gpu_check.json")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, CPU only (plumbing)")
    args = p.parse_args()
    cuda = torch.cuda.is_available()
    smoke = args.cpu_smoke or not cuda
    result: dict[str, Any] = {
        "cuda": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        "smoke": smoke,
        "load_average": os.getloadavg(),
    }
    images, repeats = (256, 1) if smoke else (8192, 3)
    obs, cands = (24, 50) if smoke else (160, 1000)
    started = time.perf_counter()
    args.out.parent.mkdir(parents=True, exist_ok=True)

    def step(name: str, fn: Any, *fn_args: Any) -> None:
        # one failing part is recorded and the others still run: a lease is too short to rerun all
        try:
            result[name] = fn(*fn_args)
        except Exception as exc:  # noqa: BLE001 - reported in the JSON, not hidden
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        result["wall_s"] = time.perf_counter() - started
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(name, json.dumps(result[name]), flush=True)

    if cuda:
        step("kd", kd_throughput, "cuda", images, repeats)
        step("proposal_cuda", proposal_step, "cuda", obs, cands)
    if not cuda or args.cpu_smoke:
        step("kd_cpu", kd_throughput, "cpu", images, repeats)
    torch.set_num_threads(os.cpu_count() or 1)
    step("proposal_cpu", proposal_step, "cpu", obs, cands)
    gpu_s, cpu_s = (result.get(k, {}).get("seconds") for k in ("proposal_cuda", "proposal_cpu"))
    if gpu_s and cpu_s:
        result["proposal_speedup"] = cpu_s / gpu_s
    step("actor_trial", actor_trial, 1 if cuda else 0, 2048 if not smoke else 128)
    failed = [k for k, v in result.items() if isinstance(v, dict) and "error" in v]
    if failed:
        raise SystemExit(f"gpu_check: {', '.join(failed)} failed (see {args.out})")


if __name__ == "__main__":
    main()
