"""The paper's step in the service, heartbeats and deadlines, on a live server with 2 Ray workers.

- an ESNAC step fits `kernels` GPs and yields `per_step` candidates, each tagged with its step
  and kernel, also when fewer workers than candidates exist;
- a worker frozen with SIGSTOP mid-trial is declared `stalled` within the heartbeat timeout (plus
  the poll interval), its actor is killed, the trial succeeds on a fresh worker, and nothing is
  recorded twice;
- `ESNAC_TRIAL_TIMEOUT` ends attempts that run too long (`timeout`);
- running trials and training teachers report their progress through the API.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import datetime, timezone

import pytest

from tests.reliability.harness import (
    Server,
    all_trials,
    ledger,
    submit_job,
    upload_teacher,
    wait_for,
    wait_job,
    worker_pid,
)

pytestmark = pytest.mark.slow


def test_each_step_is_per_step_candidates_from_distinct_kernels(
    make_server: Callable[..., Server], sqlite_url: str
) -> None:
    server = make_server(sqlite_url).start()  # 2 workers
    with server.client() as c:
        teacher = upload_teacher(c)
        r = c.post("/v1/jobs", json={
            "teacher_id": teacher, "strategy": "esnac", "steps": 2, "per_step": 8, "top_k": 0,
            "search": {"epochs": 1, "max_train_samples": 64, "batch_size": 64, "augment": False},
            "searcher": {"candidates": 30}, "seed": 1,
        })  # fmt: skip
        assert r.status_code == 201, r.text
        job = wait_job(c, r.json()["id"], 600)
        trials = all_trials(c, job["id"])
    assert job["status"] == "succeeded", (job, server.tail())
    by_step: dict[int, list[dict]] = defaultdict(list)
    for t in trials:
        by_step[t["step"]].append(t)
    assert sorted(by_step) == [0, 1] and [len(v) for v in by_step.values()] == [8, 8]
    # step 0 is the random warm-up (no observations yet); step 1 is the paper's step: 8 GPs,
    # one candidate each, although only 2 workers exist
    assert all(t["kernel"] is None for t in by_step[0])
    assert sorted(t["kernel"] for t in by_step[1]) == list(range(8))
    # step 1's fit started while step 0 still ran: from fewer than its 8 results (the runner
    # starts the next fit when fewer candidates than workers are queued, so at most 7 were
    # finished); a dispatch that waited for the last result would have fitted on 8. (The fit's
    # end is not compared with step 0's end: on a loaded CPU the 8 fits outlast the trials.)
    fits = re.findall(
        rf"job {job['id']}: proposing 8 candidates from (\d+) results \(esnac\)",
        server.log.read_text(errors="replace"),
    )
    assert len(fits) == 2 and fits[0] == "0" and 2 <= int(fits[1]) < 8, (fits, server.tail())
    assert ledger(trials, 16)["duplicates"] == 0


def test_a_frozen_worker_is_stalled_and_its_trial_retried(
    make_server: Callable[..., Server], sqlite_url: str
) -> None:
    # 10 s: short for a test, long enough that a loaded 2-core machine never misses a beat
    # (a 4 s timeout once stalled a healthy teacher training under three parallel workloads)
    timeout = 10.0
    server = make_server(sqlite_url, ESNAC_HEARTBEAT_TIMEOUT=str(timeout)).start()
    stopped: list[int] = []
    try:
        with server.client() as c:
            # a training teacher reports its epochs through the API while it trains
            r = c.post("/v1/teachers/train", json={
                "arch": "resnet20", "num_classes": 10, "dataset": "digits", "epochs": 3,
                "max_train_samples": 384, "batch_size": 32,
            })  # fmt: skip
            assert r.status_code == 202, r.text
            seen: list[dict] = []

            def ready(t: dict) -> bool:
                if t.get("progress"):
                    seen.append(t["progress"])
                return t["status"] != "training"

            teacher = wait_for(c, f"/v1/teachers/{r.json()['id']}", ready, 240, every=0.2)
            assert teacher["status"] == "ready", teacher
            trained = [p for p in seen if p["phase"] == "train"]
            assert trained and all(p["epochs"] == 3 for p in trained), seen
            assert max(p["epoch"] for p in trained) >= 1

            # one step of 2 trials, each long enough (4 epochs of 512 images) to be frozen
            # mid-run after its first epoch; a second step would only train more
            job_id = submit_job(c, teacher["id"], steps=1, per_step=2, samples=512, epochs=4)
            # a running trial shows its progress, then its worker is frozen
            page = wait_for(
                c, f"/v1/jobs/{job_id}/trials?status=running",
                lambda p: any(t["progress"] and t["progress"]["epoch"] >= 1 for t in p["items"]),
                240, every=0.2,
            )  # fmt: skip
            victim = next(t for t in page["items"] if t["progress"])
            assert victim["progress"]["epochs"] == 4 and victim["heartbeat_at"]
            assert 0.0 <= victim["progress"]["val_accuracy"] <= 1.0
            pid = worker_pid(victim)
            os.kill(pid, signal.SIGSTOP)
            stopped.append(pid)
            frozen_at = time.time()
            job = wait_job(c, job_id, 300)
            trials = all_trials(c, job_id)
    finally:
        for pid in stopped:  # the coordinator kills it; never leave a stopped process behind
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
    assert job["status"] == "succeeded", (job, server.tail())
    v = next(t for t in trials if t["id"] == victim["id"])
    assert v["status"] == "succeeded" and v["attempts"] == victim["attempts"] + 1
    [lost] = v["lost_attempts"]
    assert lost["code"] == "stalled" and lost["attempt"] == victim["attempts"]
    assert "ESNAC_HEARTBEAT_TIMEOUT" in lost["message"]
    lost_at = datetime.fromisoformat(lost["at"]).replace(tzinfo=timezone.utc).timestamp()
    assert lost_at - frozen_at < timeout + 8.0, (lost_at - frozen_at, lost)  # + poll intervals
    with pytest.raises(ProcessLookupError):  # the frozen worker was killed, not left behind
        for _ in range(50):
            os.kill(pid, 0)
            time.sleep(0.2)
    fig = ledger(trials, 2)
    assert fig["lost"] == 0 and fig["duplicates"] == 0 and fig["reruns"] == 1, fig


def test_trial_timeout_ends_attempts_that_run_too_long(
    make_server: Callable[..., Server], sqlite_url: str
) -> None:
    server = make_server(
        sqlite_url, ESNAC_TRIAL_TIMEOUT="3", ESNAC_MAX_ATTEMPTS="2", ESNAC_WORKERS="1"
    ).start()
    with server.client() as c:
        job_id = submit_job(c, upload_teacher(c), steps=1, per_step=1, samples=1024, epochs=50)
        job = wait_job(c, job_id, 240)
        [trial] = all_trials(c, job_id)
    assert job["status"] == "failed" and "every trial failed" in job["error"], job
    assert trial["status"] == "failed" and trial["error_code"] == "timeout", trial
    assert trial["attempts"] == 2 and "ESNAC_MAX_ATTEMPTS=2" in trial["error"]
    assert [e["code"] for e in trial["lost_attempts"]] == ["timeout", "timeout"]
    assert "ESNAC_TRIAL_TIMEOUT=3" in trial["lost_attempts"][0]["message"]
