"""A real multi-node Ray cluster on this machine (`ray.cluster_utils.Cluster`: a head and worker
nodes, each its own raylet with its own resources), driven by a live coordinator on Postgres.

- `ESNAC_WORKERS=auto`: the pool follows the cluster's CPUs; a node added mid-job takes trials,
  a node removed mid-trial loses its attempts, which are retried on the remaining node; the job
  succeeds with no trial lost or doubled and the pool shrinks back;
- the pool's bookkeeping when it shrinks under busy slots.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
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
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "gcs_server_port": free_port(), "include_dashboard": False},
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
    server = make_server(
        postgres_url, ESNAC_RAY_ADDRESS=cluster.address, ESNAC_WORKERS="auto",
        ESNAC_CPUS_PER_TRIAL="1", ESNAC_HEARTBEAT_TIMEOUT="600",
    ).start()  # fmt: skip
    assert _readyz(server)["workers"].startswith("1 (auto)"), _readyz(server)
    assert _readyz(server)["nodes"] == "1"
    with server.client() as c:
        teacher = upload_teacher(c)
        job_id = submit_job(c, teacher, steps=5, per_step=2, samples=512, epochs=3)

        def running() -> int:
            page = c.get(f"/v1/jobs/{job_id}/trials", params={"status": "running"}).json()
            return len(page["items"])

        _until("a trial runs", lambda: running() >= 1)
        node = cluster.add_node(num_cpus=1)
        _until("the pool grew", lambda: _readyz(server)["workers"].startswith("2 (auto)"))
        assert _readyz(server)["nodes"] == "2"
        _until("two trials run at once", lambda: running() == 2, timeout=120)
        cluster.remove_node(node)  # one of the two running trials was on it
        _until("the pool shrank", lambda: _readyz(server)["workers"].startswith("1 (auto)"))
        job = wait_job(c, job_id, 300)
        trials = all_trials(c, job_id)
    assert job["status"] == "succeeded", (job, server.tail())
    fig = ledger(trials, 10)
    assert fig["lost"] == 0 and fig["duplicates"] == 0, fig
    lost = [e for t in trials for e in t["lost_attempts"]]
    assert lost and all(e["code"] == "worker_died" for e in lost), lost
    assert all(t["status"] == "succeeded" for t in trials)
    assert _readyz(server)["nodes"] == "1"


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
