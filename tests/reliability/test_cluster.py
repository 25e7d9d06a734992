"""A real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: a head and worker
nodes, each its own raylet with its own resources), driven by a live coordinator on Postgres.

- `ESNAC_WORKERS=auto`: the pool follows the cluster's CPUs; a node added mid-job takes trials,
  a node removed mid-trial loses its attempts (`node_lost`, not counted toward
  `ESNAC_MAX_ATTEMPTS`), which are retried on the remaining node; with every worker node gone the
  job waits, visibly, and goes on when a node joins; it succeeds with no trial lost or doubled;
- data without shared disks: a worker node with an empty data directory gets a small dataset
  through the object store, and fails `dataset_missing` for one too large to ship;
- the pool's bookkeeping when it shrinks under busy slots.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from service.devserver import free_port
from service.pool import WorkerPool
from service.settings import Settings
from tests.reliability.harness import (
    Server,
    all_trials,
    ledger,
    submit_job,
    upload_teacher,
    wait_job,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster() -> Iterator[Any]:
    """A head that runs no trials (0 CPUs) and no worker node yet."""
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "gcs_server_port": free_port(), "include_dashboard": False},
    )
    try:
        yield c
    finally:
        c.shutdown()


def _readyz(server: Server) -> dict[str, str]:
    return httpx.get(server.url + "/readyz", timeout=10).json()  # type: ignore[no-any-return]


def _until(what: str, ok: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.3)


@pytest.mark.postgres
def test_auto_workers_follow_nodes_that_join_and_leave_mid_job(
    make_server: Callable[..., Server], postgres_url: str, cluster: Any
) -> None:
    first = cluster.add_node(num_cpus=1)
    # ESNAC_MAX_ATTEMPTS=1: an attempt lost with its node must not count, or its trial fails
    server = make_server(
        postgres_url, ESNAC_RAY_ADDRESS=cluster.address, ESNAC_WORKERS="auto",
        ESNAC_CPUS_PER_TRIAL="1", ESNAC_HEARTBEAT_TIMEOUT="600", ESNAC_MAX_ATTEMPTS="1",
    ).start()  # fmt: skip
    assert _readyz(server)["workers"].startswith("1 (auto)"), _readyz(server)
    assert _readyz(server)["nodes"] == "2"  # the head and one worker node
    with server.client() as c:
        teacher = upload_teacher(c)
        # Budget: trials long enough (3 epochs of 512 images) to be mid-run when their node
        # goes; 3 steps of 2, so trials are left for the node that joins last. (6 steps ran
        # twice the training for the same assertions.)
        job_id = submit_job(c, teacher, steps=3, per_step=2, samples=512, epochs=3,
                            strategy="esnac")  # fmt: skip

        def running() -> int:
            page = c.get(f"/v1/jobs/{job_id}/trials", params={"status": "running"}).json()
            return len(page["items"])

        _until("a trial runs", lambda: running() >= 1)
        second = cluster.add_node(num_cpus=1)
        _until("the pool grew", lambda: _readyz(server)["workers"].startswith("2 (auto)"))
        assert _readyz(server)["nodes"] == "3"
        _until("two trials run at once", lambda: running() == 2, timeout=120)
        cluster.remove_node(first)  # one of the two running trials was on it
        _until("the pool shrank", lambda: _readyz(server)["workers"].startswith("1 (auto)"))
        # every node that can run a trial gone: the job waits, visibly, instead of failing
        cluster.remove_node(second)
        _until("the pool is empty", lambda: _readyz(server)["workers"].startswith("0 (auto)"))
        time.sleep(2)
        ready, job = _readyz(server), c.get(f"/v1/jobs/{job_id}").json()
        assert "no trial workers" in ready.get("waiting", ""), ready
        assert job["status"] == "running" and "no trial workers" in (job["waiting"] or ""), job
        cluster.add_node(num_cpus=1)  # capacity returns: the job goes on
        job = wait_job(c, job_id, 300)
        trials = all_trials(c, job_id)
    assert job["status"] == "succeeded" and job["waiting"] is None, (job, server.tail())
    fig = ledger(trials, 6)
    assert fig["lost"] == 0 and fig["duplicates"] == 0, fig
    lost = [e for t in trials for e in t["lost_attempts"]]
    assert lost and all(e["code"] == "node_lost" for e in lost), lost
    assert all("does not count toward ESNAC_MAX_ATTEMPTS" in e["message"] for e in lost), lost
    assert all(t["status"] == "succeeded" for t in trials)
    assert _readyz(server)["nodes"] == "2"


def test_data_reaches_workers_without_the_coordinators_disk(
    make_server: Callable[..., Server], sqlite_url: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The worker host's data directory is empty: a small dataset is shipped through the object
    store; one over ESNAC_DATA_SHIP_MAX_MB is not, and its trial fails `dataset_missing`."""
    from ray.cluster_utils import Cluster

    coordinator_data, worker_data = tmp_path / "coordinator-data", tmp_path / "worker-data"
    coordinator_data.mkdir()
    worker_data.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("small.npz", 100), ("big.npz", 400)):  # 0.3 MB and 1.2 MB
        x = rng.integers(0, 256, (n, 32, 32, 3), np.uint8)
        np.savez(coordinator_data / name, x=x, y=np.arange(n) % 10)
    monkeypatch.setenv("ESNAC_DATA_DIR", str(worker_data))  # the worker node's own setting
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "gcs_server_port": free_port(), "include_dashboard": False},
    )
    try:
        server = make_server(
            sqlite_url, ESNAC_RAY_ADDRESS=c.address, ESNAC_DATA_DIR=str(coordinator_data),
            ESNAC_DATA_SHIP_MAX_MB="1",
        ).start()  # fmt: skip
        with server.client() as client:
            teacher = upload_teacher(client)
            jobs, finished = {}, {}
            for name in ("small.npz", "big.npz"):  # one job at a time
                r = client.post("/v1/jobs", json={
                    "teacher_id": teacher, "strategy": "random", "steps": 1, "per_step": 1,
                    "dataset": f"npz:{name}", "top_k": 0,
                    "search": {"epochs": 1, "max_train_samples": 64, "batch_size": 32},
                })  # fmt: skip
                assert r.status_code == 201, r.text
                jobs[name] = r.json()["id"]
                finished[name] = wait_job(client, jobs[name], 180)
            small = all_trials(client, jobs["small.npz"])
            big = all_trials(client, jobs["big.npz"])
    finally:
        c.shutdown()
    assert [t["status"] for t in small] == ["succeeded"], (small, finished, server.tail())
    assert [(t["status"], t["error_code"]) for t in big] == [("failed", "dataset_missing")], (
        big, finished, server.tail())
    message = big[0]["error"]
    assert str(worker_data / "big.npz") in message and "worker host" in message, message
    assert "shipping dataset npz:small.npz" in server.tail(100_000)


def test_a_shrinking_pool_retires_free_slots_at_once_and_busy_ones_when_released() -> None:
    pool = WorkerPool(Settings(workers=3, scheduler=False))
    pool._new_actor = lambda: object()  # type: ignore[method-assign]  # bookkeeping only
    assert (pool.size, pool.free) == (3, 3)

    async def run() -> None:
        a, b = await pool.acquire(), await pool.acquire()
        a.placed = b.placed = True  # both actors answered: running trials finish first
        pool.resize(1)  # one free slot goes now, one busy slot goes when released
        assert (pool.size, pool.free) == (1, 0) and b.retired and b.actor is not None
        pool.release(b)
        pool.release(a)
        assert (pool.size, pool.free) == (1, 1)
        pool.resize(4)
        assert (pool.size, pool.free) == (4, 4)
        assert len({s.index for s in pool._slots}) == 4  # fresh indexes, never reused
        # a busy slot whose fresh actor never answered (its node died) is retired and killed
        # first: its call fails at once and is retried elsewhere, instead of waiting for ever
        held = [await pool.acquire() for _ in range(4)]
        for s in held:
            s.placed = s is not held[1]
        pool.resize(3)
        assert held[1].retired and held[1].actor is None
        assert [s.retired for s in held] == [False, True, False, False]
        for s in held:
            pool.release(s)
        assert (pool.size, pool.free) == (3, 3)

    asyncio.run(run())
