"""Scheduling beyond this machine -- a SIMULATION of the workers, not of the coordinator.

The real coordinator (scheduler, job runner, fit process, SQLite storage) drives N Ray actors
whose "training" is a replay of a tabulated pool (`benchmarks/data/cifar10_resnet20_pool.json`):
each evaluation sleeps for `--trial-seconds` (emulating a GPU trial) and returns the pool's
metrics for the action. The searcher's candidates are restricted to pool members not yet
evaluated (`Searcher(candidate_pool=...)`). Measured per N:

- worker idle fraction: time a worker was free while the job still had candidates to hand out
  (from the job's first dispatch to its last), over worker time in that window;
- seconds per fit, kernels per fit, proposals per step.

`--mode baseline` runs the behaviour before the pipelined step, in the same process and run:
a proposal starts only when slots free up, asks for as many candidates as slots are free, and
fits that many kernels (at most `kernels`). Results: `benchmarks/results/scheduling.json`.

    python benchmarks/scheduling.py --workers 8 32 --trial-seconds 60 --budget 160
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import ray

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

from embedding.space import Action  # noqa: E402
from service import runner as runner_module  # noqa: E402
from service import scheduler as scheduler_module  # noqa: E402
from service.artifacts import ArtifactStore  # noqa: E402
from service.db import Storage, TeacherState, TrialState  # noqa: E402
from service.db.migrate import upgrade  # noqa: E402
from service.fitter import Fitter  # noqa: E402
from service.pool import Slot, WorkerPool  # noqa: E402
from service.settings import Settings  # noqa: E402

POOL = ROOT / "data" / "cifar10_resnet20_pool.json"
RESULTS = ROOT / "results" / "scheduling.json"


# ----------------------------------------------------------------------------- simulated workers
@ray.remote(num_cpus=0, concurrency_groups={"progress": 1})
class ReplayWorker:
    """A trial worker whose evaluation is a table look-up after a sleep (a simulated GPU)."""

    def __init__(self, table: dict[str, dict[str, Any]], seconds: float, spread: bool) -> None:
        self.table, self.seconds = table, seconds
        # --durations pool: each trial lasts `seconds` x its member's measured training time over
        # the pool's median (bigger students train longer); fixed: every trial lasts `seconds`
        median = float(np.median([row["seconds"] for row in table.values()]))
        self.scale = {k: row["seconds"] / median if spread else 1.0 for k, row in table.items()}
        self.spans: list[tuple[float, float]] = []
        self.started: float | None = None

    def name(self) -> str:
        return f"replay:{os.getpid()}"

    def prepare(self, ctx: dict[str, Any], weights: Any = None) -> str:
        return self.name()

    @ray.method(concurrency_group="progress")
    def progress(self) -> dict[str, Any] | None:
        if self.started is None:
            return None
        return {"phase": "train", "epoch": 0, "epochs": 1, "val_accuracy": None,
                "seconds": time.time() - self.started, "silent_s": 0.0}  # fmt: skip

    def evaluate(self, job_key: str, spec: dict[str, Any]) -> dict[str, Any]:
        self.started = start = time.time()
        key = Action.from_json(spec["action"]).key
        row = self.table[key]
        time.sleep(self.seconds * self.scale[key])
        self.spans.append((start, time.time()))
        self.started = None
        keys = ("params", "flops", "accuracy", "compression", "reward")
        out: dict[str, Any] = {k: row[k] for k in keys}
        took = self.seconds * self.scale[key]
        out.update(history=[], seconds={"train": took}, worker=self.name(), weights=None)
        return out

    def timeline(self) -> list[tuple[float, float]]:
        return self.spans

    def release(self, job_key: str) -> None:
        pass


class ReplayPool(WorkerPool):
    """The product's worker pool with simulated actors (every actor ever made is kept)."""

    table: dict[str, dict[str, Any]] = {}
    seconds = 60.0
    spread = False
    made: list[Any] = []

    def _new_actor(self) -> Any:
        actor = ReplayWorker.remote(self.table, self.seconds, self.spread)
        self.made.append(actor)
        return actor


# ----------------------------------------------------------------------------- fits
_SPACE: Any = None


def _pool_propose(job, job_key, teacher, state, n, rng_key, threads, members):  # type: ignore[no-untyped-def]
    """(In the fit process.) `service.fitter`'s proposal with candidates limited to `members`."""
    import torch

    from service.searchers import build_space, make_searcher

    global _SPACE
    torch.set_num_threads(threads)
    if _SPACE is None:
        _SPACE = build_space(*teacher)
    searcher = make_searcher(job, _SPACE)
    searcher.load_state_dict(state)
    searcher.candidate_pool = [Action.from_json(a) for a in members]
    searcher.rng = np.random.default_rng(rng_key)
    t0 = time.perf_counter()
    actions = searcher.suggest(n)
    took = time.perf_counter() - t0
    return [a.to_dict() for a in actions], list(searcher.last_kernels), searcher.state_dict(), took


class PoolFitter(Fitter):
    """The product's fit process, with pool-restricted candidates and a record of each fit."""

    members: list[dict[str, Any]] = []
    fits: list[dict[str, Any]] = []

    async def propose(self, searcher, job, job_key, teacher, n, rng_key):  # type: ignore[no-untyped-def, override]
        loop = asyncio.get_running_loop()
        kernels_before = getattr(searcher, "kernels", None)
        dicts, kernels, state, took = await loop.run_in_executor(
            self._pool(), _pool_propose, job, job_key, teacher, searcher.state_dict(), n,
            rng_key, self.threads, self.members,
        )  # fmt: skip
        searcher.load_state_dict(state)
        searcher.last_kernels = kernels
        model_based = [k for k in kernels if k is not None]
        self.fits.append({"n": n, "seconds": took, "observations": len(searcher.rewards),
                          "kernels_fitted": kernels_before if model_based else 0,
                          "distinct_kernels": len(set(model_based))})  # fmt: skip
        return [Action.from_json(d) for d in dicts]


# ----------------------------------------------------------------------------- the baseline
class BaselineRunner(runner_module.JobRunner):
    """The dispatch before the pipelined step (commit 031f74a): when slots free up, propose as
    many candidates as slots are free, fitting that many kernels (at most `kernels`)."""

    async def _search(self, trials: list[Any]) -> None:  # type: ignore[override]
        s, job = self.s, self.job
        budget, created = job.budget, len(trials)
        inflight: set[asyncio.Task[None]] = set()
        step = 0
        try:
            while created < budget:
                slots: list[Slot] = [await s.pool.acquire()]
                slots += s.pool.acquire_nowait(budget - created - 1)
                n = min(len(slots), budget - created)
                full = self.searcher.kernels if hasattr(self.searcher, "kernels") else None
                if full is not None:
                    self.searcher.kernels = min(n, full)  # type: ignore[attr-defined]
                try:
                    new = await self._propose(n, created, step)
                    step += 1
                finally:
                    if full is not None:
                        self.searcher.kernels = full  # type: ignore[attr-defined]
                created += len(new)
                for trial in new:
                    task = asyncio.create_task(self._trial(trial, slots.pop()))
                    inflight.add(task)
                    task.add_done_callback(inflight.discard)
                for slot in slots:
                    s.pool.release(slot)
            while inflight:
                await asyncio.gather(*list(inflight))
        finally:
            for t in list(inflight):
                t.cancel()

        def finish() -> None:
            with s.storage.session() as repo:
                repo.set_job_state(self.job_id, runner_module.JobState.FINALIZING)

        await s.db(finish)


# ----------------------------------------------------------------------------- one run
async def _run_job(args: argparse.Namespace, workers: int, mode: str, tmp: Path) -> dict[str, Any]:
    pool_data = json.loads(args.pool.read_text())
    table = {e["key"]: e for e in pool_data["entries"]}
    ReplayPool.table, ReplayPool.seconds, ReplayPool.made = table, args.trial_seconds, []
    ReplayPool.spread = args.durations == "pool"
    PoolFitter.members = [e["action"] for e in pool_data["entries"]]
    PoolFitter.fits = []
    url = f"sqlite:///{tmp / f'{mode}-{workers}.db'}"
    upgrade(url)
    settings = Settings(database_url=url, artifact_dir=tmp / "artifacts", workers=workers,
                        cpus_per_trial=0, poll_interval=0.2, heartbeat_timeout=3600,
                        fit_threads=args.fit_threads)  # fmt: skip
    storage, artifacts = Storage(url), ArtifactStore(settings.artifact_dir)
    weights = _teacher_weights()
    with storage.session() as repo:
        art = artifacts.write(repo, "teacher", weights)
        teacher = repo.create_teacher(
            arch="resnet20", num_classes=10, dataset="digits", status=TeacherState.READY,
            source="upload", params=272474, input_shape=(3, 32, 32), accuracy=float(
                pool_data["settings"]["teacher_accuracy"]), weights_id=art.id,
        )  # fmt: skip
        job = repo.create_job(
            teacher_id=teacher.id, dataset="digits", strategy="esnac",
            steps=args.budget // args.per_step, per_step=args.per_step,
            search={"epochs": 1}, top_k=0, full_training={}, reward="params", seed=args.seed,
            embedding_from=None, searcher={"kernels": args.kernels, "subset": 0.5,
                                           "candidates": args.candidates, "train_encoder": True},
        )  # fmt: skip
    scheduler_module.JobRunner = BaselineRunner if mode == "baseline" else runner_module.JobRunner
    sched = scheduler_module.Scheduler(settings, storage, artifacts, ReplayPool(settings))
    sched.fitter = PoolFitter(sched.fitter.threads)
    started = time.time()
    task = asyncio.create_task(sched.run())
    try:
        while True:
            await asyncio.sleep(1.0)
            with storage.session() as repo:
                status = repo.get_job(job.id).status
            if status.is_finished() or status.value == "finalizing":
                break
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sched.stop()
    wall = time.time() - started
    with storage.session() as repo:
        trials = repo.job_trials(job.id)
    spans = [ray.get(a.timeline.remote()) for a in ReplayPool.made]
    for a in ReplayPool.made:
        ray.kill(a)
    storage.dispose()
    starts = [s for actor in spans for s, _ in actor]
    t0, t1 = min(starts), max(starts)  # the window in which the job had candidates to hand out
    busy = sum(max(0.0, min(e, t1) - max(s, t0)) for actor in spans for s, e in actor)
    window = workers * (t1 - t0)
    steps = Counter(t.step for t in trials if t.step is not None)
    fits = [f for f in PoolFitter.fits if f["kernels_fitted"]]
    return {
        "mode": mode, "workers": workers, "evaluations": len(trials),
        "succeeded": sum(t.status is TrialState.SUCCEEDED for t in trials),
        "wall_s": round(wall, 1),
        "worker_idle_fraction": round(1 - busy / window, 4) if window > 0 else None,
        "fits": len(fits),
        "seconds_per_fit_median": round(float(np.median([f["seconds"] for f in fits])), 2)
        if fits else None,
        "seconds_per_fit": [round(f["seconds"], 2) for f in fits],
        "kernels_per_fit": [f["kernels_fitted"] for f in fits],
        "distinct_kernels_per_fit": [f["distinct_kernels"] for f in fits],
        "proposals_per_step": [steps[k] for k in sorted(steps)] if mode != "baseline"
        else [f["n"] for f in PoolFitter.fits],
        "best_reward": max((t.reward for t in trials if t.reward is not None), default=None),
    }  # fmt: skip


def _teacher_weights() -> bytes:
    """Weights of the pool's teacher architecture (the replay reads no weights; the space only
    needs the graph, which is the same for any resnet20)."""
    path = ROOT / "data" / "teachers" / "cifar10_resnet20.safetensors"
    return path.read_bytes()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, nargs="+", default=[8, 32])
    p.add_argument("--trial-seconds", type=float, default=60.0)
    p.add_argument(
        "--durations",
        choices=("fixed", "pool"),
        default="fixed",
        help="fixed: every trial lasts --trial-seconds; pool: --trial-seconds x the member's "
        "measured training time over the pool's median (the spread of real trials)",
    )
    p.add_argument("--budget", type=int, default=160)
    p.add_argument("--per-step", type=int, default=8)
    p.add_argument("--kernels", type=int, default=8)
    p.add_argument("--candidates", type=int, default=1000)
    p.add_argument("--fit-threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mode", choices=("both", "pipelined", "baseline"), default="both")
    p.add_argument("--pool", type=Path, default=POOL)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    ray.init(address="local", num_cpus=2, log_to_driver=False)
    modes = ["pipelined", "baseline"] if args.mode == "both" else [args.mode]
    runs: list[dict[str, Any]] = []
    load = os.getloadavg()

    def write() -> None:  # after every run: a long benchmark keeps what it measured
        out = {
            "simulation": "the real coordinator with simulated workers (sleep + pool look-up)",
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "load_average_before": load, "load_average_after": os.getloadavg(),
            "cpus": os.cpu_count(), "runs": runs,
        }  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(out, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as tmp:
        for n in args.workers:
            for mode in modes:
                run = asyncio.run(_run_job(args, n, mode, Path(tmp)))
                runs.append(run)
                write()
                print(json.dumps(run), flush=True)


if __name__ == "__main__":
    main()
