"""KD training throughput: the Ray actor path vs a plain in-process loop, and the logit cache.

Same teacher (resnet56), student (every channel group at half width), images, batch size and
thread count in all three measurements; each repeat runs them back to back and the report gives
medians:

- plain: a minimal in-process loop over pre-normalised tensors (teacher forward, student
  forward/backward, Adam step) -- the baseline;
- actor: `TrialWorker.evaluate` in a Ray actor (1 CPU, 1 thread), training time as the actor
  reports it (`seconds["train"]`: the epoch's steps, validation excluded), augmentation off;
- actor + cache: the same with `cache_teacher_logits=True` (the job's logit cache is built by the
  first trial and reused by the next ones; its one-off cost is reported separately).

    python benchmarks/train_throughput.py [--images 512] [--repeats 3] [--dataset digits]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import ray
import torch
from torch.nn import functional as F

from embedding.space import Action, CompressionSpace
from workers import zoo
from workers.actor import RemoteTrialWorker
from workers.data import load_dataset
from workers.export import state_to_safetensors
from workers.spec import SearchTraining, TrialSpec
from workers.trial import JobContext


def plain_loop(
    teacher: torch.nn.Module, student: torch.nn.Module, x: torch.Tensor, batch: int
) -> float:
    """Images/s of the simplest KD loop on pre-normalised images (one epoch, fixed order)."""
    teacher.eval()
    student.train()
    opt = torch.optim.Adam(student.parameters(), lr=1e-3, weight_decay=5e-4)
    t0 = time.perf_counter()
    for start in range(0, len(x), batch):
        xb = x[start : start + batch]
        with torch.no_grad():
            target = teacher(xb)
        loss = F.mse_loss(student(xb), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return len(x) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--teacher", default="resnet56")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results/train_throughput.json")
    )
    args = parser.parse_args()

    torch.set_num_threads(1)
    splits = load_dataset(args.dataset)
    torch.manual_seed(0)
    teacher = zoo.build(args.teacher, splits.num_classes).eval()
    space = CompressionSpace.for_teacher(teacher, splits.input_shape, max_layers=256)
    action = Action((), tuple(0.5 for _ in space.shrinkable), (), space.fingerprint)
    x = splits.train.head(args.images).normalized()

    ctx = JobContext(
        "bench",
        args.teacher,
        splits.num_classes,
        state_to_safetensors(teacher),
        1.0,
        args.dataset,
        max_layers=256,
    )
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    worker = RemoteTrialWorker.options(num_cpus=1).remote(device="cpu", threads=1)
    ctx_dict = {k: v for k, v in dataclasses.asdict(ctx).items() if k != "teacher_weights"}
    ray.get(worker.prepare.remote(ctx_dict, ray.put(ctx.teacher_weights)))
    training = SearchTraining(
        epochs=1, batch_size=args.batch_size, augment=False, max_train_samples=args.images
    )
    cached_training = dataclasses.replace(training, cache_teacher_logits=True)

    def actor_run(tr: SearchTraining) -> tuple[float, dict]:
        spec = TrialSpec(0, action.to_dict(), seed=0, training=tr, return_weights=False)
        t0 = time.perf_counter()
        res = ray.get(worker.evaluate.remote("bench", spec.to_dict()))
        wall = time.perf_counter() - t0
        return args.images / res["seconds"]["train"], {**res["seconds"], "wall": wall}

    # The first cached trial builds the job's logit cache; its cost is reported on its own.
    _, first_cached = actor_run(cached_training)
    plain_loop(teacher, space.materialize(action), x[: args.batch_size], args.batch_size)  # warm-up
    runs: dict[str, list[float]] = {"plain": [], "actor": [], "actor_cached": []}
    walls: dict[str, list[float]] = {"actor": [], "actor_cached": []}
    for _ in range(args.repeats):
        runs["plain"].append(plain_loop(teacher, space.materialize(action), x, args.batch_size))
        rate, secs = actor_run(training)
        runs["actor"].append(rate)
        walls["actor"].append(secs["wall"])
        rate, secs = actor_run(cached_training)
        runs["actor_cached"].append(rate)
        walls["actor_cached"].append(secs["wall"])
    ray.shutdown()

    med = {k: statistics.median(v) for k, v in runs.items()}
    result = {
        "benchmark": "train_throughput",
        "config": {
            "dataset": args.dataset,
            "teacher": args.teacher,
            "student": "every shrinkable channel group at ratio 0.5",
            "images_per_run": args.images,
            "batch_size": args.batch_size,
            "threads": 1,
            "device": "cpu",
            "repeats": args.repeats,
            "augment": False,
        },
        "images_per_s": {k: round(v, 2) for k, v in med.items()},
        "actor_vs_plain": round(med["actor"] / med["plain"], 3),
        "cache_speedup_vs_actor": round(med["actor_cached"] / med["actor"], 3),
        # Each repeat runs the three back to back: per-repeat ratios cancel slow load drifts.
        "paired_ratio_medians": {
            "actor_vs_plain": round(
                statistics.median(a / p for a, p in zip(runs["actor"], runs["plain"], strict=True)),
                3,
            ),
            "cache_speedup_vs_actor": round(
                statistics.median(
                    c / a for c, a in zip(runs["actor_cached"], runs["actor"], strict=True)
                ),
                3,
            ),
        },
        "cache_build_trial_seconds": {k: round(v, 3) for k, v in first_cached.items()},
        "actor_wall_seconds_median": {k: round(statistics.median(v), 3) for k, v in walls.items()},
        "targets": {"actor_vs_plain": 0.95, "cache_speedup_vs_actor": 1.3},
        "runs": {k: [round(r, 2) for r in v] for k, v in runs.items()},
    }
    result["meets_targets"] = (
        result["actor_vs_plain"] >= 0.95 and result["cache_speedup_vs_actor"] >= 1.3
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
