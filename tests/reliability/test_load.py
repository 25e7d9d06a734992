"""Promise 6 (bounded version): 20 clients poll a running job's trials for 5 s with no error.

The full figure (50 clients x 60 s, and the job's progress with and without the load) is
measured by `benchmarks/reliability.py`.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.reliability.harness import Server, poll_load, submit_job, upload_teacher, wait_for

pytestmark = pytest.mark.slow


def test_polling_clients_get_no_errors_while_a_job_runs(
    make_server: Callable[..., Server], sqlite_url: str
) -> None:
    server = make_server(sqlite_url).start()
    with server.client() as c:
        job = submit_job(c, upload_teacher(c), steps=10, seed=1)
        wait_for(c, f"/v1/jobs/{job}", lambda j: j["status"] == "running", 60)
        # 5 s: long enough for every client to poll while trials finish and are written (the
        # server and the 20 clients share 2 cores: the CPU cost is the window's length)
        fig = poll_load(server.url, job, clients=20, seconds=5.0)
        progress = c.get(f"/v1/jobs/{job}").json()["progress"]
        c.post(f"/v1/jobs/{job}/cancel")
    assert fig["errors"] == 0 and fig["5xx"] == 0, fig
    assert fig["requests"] >= 100, fig  # the clients really polled (>= 1 request/s each)
    assert fig["p99_ms"] < 5000, fig
    assert progress["created"] >= 2, progress  # and the job moved meanwhile
    assert "Traceback" not in server.tail(10**7)
