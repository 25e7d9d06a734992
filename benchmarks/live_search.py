"""Live search through the service: one ESNAC job and one random job on the CIFAR-10 teacher.

The same cached resnet20 teacher as `search_efficiency.py` (its `teacher` stage must have run) is
registered with a real `python -m service.server` (SQLite, local Ray with 2 CPUs, 2 one-thread
workers); then an `esnac` job and a `random` job with the same search training, steps, seed and
top-1 fine-tuning run one after the other, each with the whole machine. Reported per job: best
search reward, its accuracy / params / C, the fine-tuned accuracy of the best student, wall time
(submit to finished) and the job's trials.

    python benchmarks/live_search.py    # 3 steps x 8, KD 5,000 images x 2 epochs, 1-epoch tune
    python benchmarks/live_search.py --train-samples 2000 --epochs 1   # shorter

Prints JSON and writes `benchmarks/results/live_search.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.search_efficiency import DEFAULT_NPZ, _dataset, _teacher  # noqa: E402
from service.db.migrate import upgrade  # noqa: E402
from tests.reliability import harness as h  # noqa: E402


def run_job(c: Any, teacher_id: int, strategy: str, args: argparse.Namespace) -> dict[str, Any]:
    body = {
        "teacher_id": teacher_id,
        "strategy": strategy,
        "steps": args.steps,
        "per_step": args.per_step,
        "search": {
            "epochs": args.epochs,
            "max_train_samples": args.train_samples,
            "batch_size": 128,
            # as in the pool: no augmentation, so the teacher's logits are computed once per job
            "augment": False,
            "cache_teacher_logits": True,
        },
        "top_k": 1,
        "full_training": {"epochs": args.finetune_epochs, "step_every": 10**6},
        "seed": args.seed,
    }
    t0 = time.monotonic()
    r = c.post("/v1/jobs", json=body)
    if r.status_code != 201:
        raise RuntimeError(f"job submit: {r.status_code} {r.text}")
    job_id = int(r.json()["id"])
    job = h.wait_job(c, job_id, timeout=args.timeout_minutes * 60)
    wall = time.monotonic() - t0
    trials = h.all_trials(c, job_id)
    done = [t for t in trials if t["status"] == "succeeded" and t["reward"] is not None]
    best = max(done, key=lambda t: t["reward"])
    final = next((t["final"] for t in trials if t["final"]), None)
    return {
        "job_id": job_id,
        "status": job["status"],
        "error": job["error"],
        "wall_s": round(wall, 1),
        "trials_succeeded": len(done),
        "best_reward": best["reward"],
        "best_search_accuracy": best["accuracy"],
        "best_params": best["params"],
        "best_compression": best["compression"],
        "best_found_at": best["number"] + 1,
        "finetuned_accuracy": final["accuracy"] if final else None,
        "finetune_s": round(final["seconds"], 1) if final else None,
        "rewards_in_order": [t["reward"] for t in sorted(done, key=lambda t: t["number"])],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--npz", type=Path, default=DEFAULT_NPZ)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--per-step", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=5000)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-minutes", type=float, default=90)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/live_search.json")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    weights, meta = _teacher()

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    res: dict[str, Any] = {
        "command": "python " + " ".join(sys.argv),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, 2 one-thread workers",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017
        "teacher": {"arch": "resnet20", "accuracy": meta["accuracy"]},
        "settings": {k: v for k, v in vars(args).items() if k not in ("npz", "out")},
    }
    try:
        with tempfile.TemporaryDirectory(prefix="esnac-live-") as tmp:
            url = f"sqlite:///{Path(tmp) / 'live.db'}"
            upgrade(url)
            env = h.server_env(url, Path(tmp) / "artifacts", address, ESNAC_POLL_INTERVAL="0.5")
            server = h.Server(env, Path(tmp) / "server.log").start()
            try:
                with server.client() as c:
                    r = c.post(
                        "/v1/teachers",
                        files={"weights": ("teacher.safetensors", weights)},
                        data={
                            "arch": "resnet20",
                            "num_classes": "10",
                            "dataset": _dataset(args.npz.resolve()),
                            "accuracy": str(meta["accuracy"]),
                        },
                    )
                    if r.status_code != 201:
                        raise RuntimeError(f"teacher upload: {r.status_code} {r.text}")
                    teacher_id = int(r.json()["id"])
                    for strategy in ("esnac", "random"):
                        res[strategy] = run_job(c, teacher_id, strategy, args)
                        print(strategy, json.dumps(res[strategy])[:600], file=sys.stderr)
            except Exception:
                print(server.tail(), file=sys.stderr)
                raise
            finally:
                server.stop()
    finally:
        ray.shutdown()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
