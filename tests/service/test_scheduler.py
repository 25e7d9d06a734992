"""Coordinator pieces that need no Ray: seeds, the teacher's space, searcher rebuild on resume,
the stored encoder."""

from __future__ import annotations

import asyncio
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from embedding.space import Action
from service.db import Job, JobState
from service.fitter import Fitter
from service.runner import in_daemon_thread, trial_seed
from service.searchers import (
    build_space,
    canonical_order,
    encoder_bytes,
    encoder_from_bytes,
    make_searcher,
)
from workers import zoo
from workers.export import state_to_safetensors


def _job(strategy: str = "random", seed: int = 7) -> Job:
    now = datetime(2026, 1, 1)
    return Job(
        id=1, teacher_id=1, dataset="digits", strategy=strategy, steps=3, per_step=2, search={},
        top_k=1, full_training={}, reward="params", seed=seed, embedding_from=None,
        searcher={"kernels": 1, "subset": 1.0, "candidates": 20, "train_encoder": True},
        status=JobState.RUNNING, error=None, encoder_id=None, created_at=now, started_at=now,
        finished_at=None, updated_at=now,
    )  # fmt: skip


@pytest.fixture(scope="module")
def teacher_args() -> tuple[str, int, bytes, tuple[int, ...]]:
    torch.manual_seed(0)
    return ("resnet20", 10, state_to_safetensors(zoo.build("resnet20", 10)), (3, 32, 32))


@pytest.fixture(scope="module")
def space(teacher_args):
    return build_space(*teacher_args)


def test_trial_seeds_are_stable_and_distinct() -> None:
    seeds = [trial_seed(7, n) for n in range(1000)]
    assert len(set(seeds)) == 1000 and seeds == [trial_seed(7, n) for n in range(1000)]
    assert trial_seed(8, 0) != trial_seed(7, 0)


def test_encoder_bytes_before_and_after_a_fit(space) -> None:
    esnac = make_searcher(_job("esnac"), space)
    rng = np.random.default_rng(0)
    esnac.observe([space.sample(rng) for _ in range(2)], [0.2, 0.3])
    assert encoder_bytes(esnac) is None  # observed, but never fitted: nothing to store
    assert encoder_bytes(make_searcher(_job("random"), space)) is None
    esnac.observe([space.sample(rng) for _ in range(2)], [0.25, 0.35])
    esnac.suggest(1)
    data = encoder_bytes(esnac)
    assert data is not None
    learned = esnac.encoder_state()
    assert learned is not None
    restored = encoder_from_bytes(data)
    assert restored.keys() == learned.keys()
    assert all(torch.equal(restored[k], learned[k]) for k in learned)


def test_space_matches_the_workers_max_layers(space) -> None:
    assert space.max_layers == max(128, space.num_layers)
    big = build_space("resnet56", 10, state_to_safetensors(zoo.build("resnet56", 10)), (3, 32, 32))
    assert big.num_layers > 128 and big.max_layers == big.num_layers


@pytest.mark.parametrize(
    "strategy", ["random", "n2n", pytest.param("esnac", marks=pytest.mark.slow)]
)
def test_resumed_searcher_proposes_what_the_original_would(
    space, teacher_args, strategy: str
) -> None:
    """Before each proposal the scheduler reseeds from (job seed, first trial number) and puts
    observations in trial-number order; on resume it replays results + pending: a restarted
    job proposes exactly what the uninterrupted one would have."""
    job = _job(strategy)

    def propose(searcher, first_number: int, n: int) -> list[Action]:
        canonical_order(searcher, numbers)
        searcher.rng = np.random.default_rng([job.seed, first_number])
        out = searcher.suggest(n)
        numbers.update((a.key, first_number + k) for k, a in enumerate(out))
        return out

    numbers: dict[str, int] = {}
    live = make_searcher(job, space)
    first = propose(live, 0, 3)
    live.observe([first[0]], [0.25])
    second = propose(live, 3, 2)
    live.observe([second[0], first[2]], [0.4, 0.5])  # completion order != trial order
    want = propose(live, 5, 2)  # (esnac: a real fit on 3 observations)

    resumed = make_searcher(job, space)
    resumed.observe([first[0], first[2], second[0]], [0.25, 0.5, 0.4])  # replay by number
    resumed.mark_pending([first[1], second[1]])
    canonical_order(resumed, numbers)
    # ... proposed in the fit process, as the scheduler does
    fitter = Fitter(threads=1)
    try:
        got = asyncio.run(fitter.propose(resumed, job, "job-1", teacher_args, 2, [job.seed, 5]))
    finally:
        fitter.shutdown()
    assert [a.key for a in got] == [a.key for a in want]
    assert set(resumed.pending) == {first[1].key, second[1].key} | {a.key for a in got}
    assert resumed.state_dict()["rewards"] == [0.25, 0.5, 0.4]


def test_daemon_thread_calls_leave_the_loop_running_and_do_not_block_exit() -> None:
    # The random strategy's proposals run through in_daemon_thread (ESNAC's go to the fitter).
    import asyncio
    import subprocess
    import sys
    import threading

    async def main() -> None:
        started, release = threading.Event(), threading.Event()

        def call() -> int:
            started.set()
            # only the event loop sets `release`: a blocked loop makes this wait time out
            return 42 if release.wait(30) else -1

        task = asyncio.ensure_future(in_daemon_thread(call))
        while not started.is_set():
            await asyncio.sleep(0.01)
        release.set()
        assert await task == 42
        with pytest.raises(ZeroDivisionError):
            await in_daemon_thread(lambda: 1 / 0)

    asyncio.run(main())
    # A call that never returns does not keep the process alive (a non-daemon thread would:
    # the run would then hit its timeout and raise).
    code = (
        "import asyncio, threading\n"
        "from service.runner import in_daemon_thread\n"
        "async def main():\n"
        "    asyncio.create_task(in_daemon_thread(threading.Event().wait))\n"
        "    await asyncio.sleep(0.1)\n"
        "asyncio.run(main())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_the_fit_process_dies_with_a_killed_coordinator() -> None:
    # A coordinator killed with SIGKILL runs no shutdown code; its fit process must not stay
    # behind as an orphan (it holds the teachers' spaces).
    import os
    import signal
    import subprocess
    import sys
    import time

    code = (
        "import os, sys, time\n"
        "from service.fitter import Fitter\n"
        "f = Fitter(threads=1)\n"
        "print(f._pool().submit(os.getpid).result(timeout=120), flush=True)\n"
        "time.sleep(600)\n"
    )
    coordinator = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert coordinator.stdout is not None
        fit_pid = int(coordinator.stdout.readline())
        os.kill(fit_pid, 0)  # alive while the coordinator lives
        coordinator.send_signal(signal.SIGKILL)
        coordinator.wait(30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:  # gone, or a zombie (dead, not yet reaped by a subreaper such as suite_time.py)
                stat = open(f"/proc/{fit_pid}/stat").read()
            except FileNotFoundError:
                return
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                return
            time.sleep(0.1)
        raise AssertionError(f"fit process {fit_pid} outlived its killed coordinator")
    finally:
        if coordinator.poll() is None:
            coordinator.kill()


def test_without_an_address_the_coordinator_starts_its_own_ray_whatever_the_environment(
    tmp_path: Path,
) -> None:
    # A shell's RAY_ADDRESS (or a `ray start` cluster on the machine) once made the demo connect
    # to that cluster and crash ("num_cpus ... must not be provided"): ESNAC_RAY_ADDRESS unset
    # means a new local Ray.
    import subprocess
    import sys

    code = (
        "import ray\n"
        "from service.app import _start_ray\n"
        "from service.settings import Settings\n"
        f"s = Settings(database_url='sqlite:///{tmp_path / 'x.db'}', ray_num_cpus=1)\n"
        "assert _start_ray(s) is True\n"
        "print(ray.cluster_resources()['CPU'])\n"
        "ray.shutdown()\n"
    )
    env = {**os.environ, "RAY_ADDRESS": "127.0.0.1:9"}  # nothing listens there
    env.pop("ESNAC_RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=180, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "1.0"
