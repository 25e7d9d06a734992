"""Promises 1-3: a dead worker, a crashed coordinator and a database outage lose nothing.

Each test runs a tiny search job (digits, resnet20, 1 epoch on 128 samples; random search, and
ESNAC for the worker and coordinator faults) on a live server with 2 Ray workers, injects a real
fault mid-job, and checks the job's ledger: every trial of the budget succeeded exactly once (no
lost trial, no duplicate: the ledger also counts an action stored twice, so a resumed ESNAC
searcher that proposes a candidate again fails it), and re-runs happened only where a fault
forced them.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.reliability.harness import (
    Server,
    coordinator_crash,
    database_outage,
    upload_teacher,
    worker_death,
)

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("strategy", ["random", "esnac"])
def test_killed_worker_is_retried_and_nothing_is_lost_or_doubled(
    make_server: Callable[..., Server], sqlite_url: str, strategy: str
) -> None:
    server = make_server(sqlite_url).start()
    with server.client() as c:
        teacher = upload_teacher(c)
    fig = worker_death(server, teacher, steps=3, kills=1, strategy=strategy)
    assert fig["job_status"] == "succeeded", (fig, server.tail())
    assert fig["faults_injected"] == 1
    assert fig["lost"] == 0 and fig["duplicates"] == 0 and fig["trials"] == 6
    # each kill costs at most one re-run, and a victim that had not finished yet was re-run
    assert fig["reruns"] <= fig["faults_injected"]
    assert fig["victims_retried"] + fig["victims_finished_before_kill"] == 1, fig
    assert "on trial" in server.tail(10**7) and "lost: " in server.tail(10**7)
    # every re-run is explained by a lost attempt recorded on its trial
    assert fig["lost_attempts_recorded"] == fig["reruns"], fig


@pytest.mark.parametrize("strategy", ["random", "esnac"])
def test_coordinator_sigkill_resumes_keeping_finished_trials(
    make_server: Callable[..., Server], sqlite_url: str, strategy: str
) -> None:
    fig = coordinator_crash(lambda: make_server(sqlite_url), steps=3, strategy=strategy)
    assert fig["job_status"] == "succeeded", fig
    assert fig["finished_before_crash"][0] >= 2 and fig["finished_before_crash_kept"], fig
    assert fig["max_extra_runs_of_in_flight"] <= 1, fig
    assert fig["lost"] == 0 and fig["duplicates"] == 0 and fig["trials"] == 6, fig
    assert fig["reruns"] <= fig["in_flight_at_crash"], fig


@pytest.mark.postgres
def test_database_outage_holds_results_until_postgres_is_back(
    postgres_url: str, make_server: Callable[..., Server]
) -> None:
    server = make_server(postgres_url).start()
    with server.client() as c:
        teacher = upload_teacher(c)
    fig = database_outage(server, postgres_url, teacher, steps=3, hold=30.0, restarts=1)
    assert fig["job_status"] == "succeeded", (fig, server.tail())
    assert fig["api_status_during_outage"] == 503, fig  # "retry later", not a crash
    assert fig["results_held_during_outage"] >= 1, (fig, server.tail())
    assert fig["lost"] == 0 and fig["duplicates"] == 0 and fig["reruns"] == 0, fig
    assert fig["5xx_after_recovery"] == []
