"""An artifact directory that cannot be written (full, read-only, unmounted) holds results.

The directory is made unwritable mid-job by putting a plain file where it was (the tests run as
root, which permission bits do not stop; a file in place of the directory fails every write, as
an unmounted or read-only volume does). While it lasts, `/readyz` says why, an upload is refused
with a 503 naming the directory, and finished trials wait with their results; once the directory
is back, every result is written and the job succeeds with nothing lost or doubled.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.reliability.harness import (
    Server,
    all_trials,
    ledger,
    submit_job,
    teacher_weights,
    upload_teacher,
    wait_for,
    wait_job,
)

pytestmark = pytest.mark.slow


def test_results_are_held_while_the_artifact_directory_cannot_be_written(
    make_server: Callable[..., Server], sqlite_url: str, tmp_path: Path
) -> None:
    server = make_server(sqlite_url).start()
    artifacts = Path(server.env["ESNAC_ARTIFACT_DIR"])
    moved = artifacts.with_name("artifacts.away")
    with server.client() as c:
        teacher = upload_teacher(c)
        job_id = submit_job(c, teacher, steps=2, per_step=2, samples=128, epochs=1)
        wait_for(c, f"/v1/jobs/{job_id}/trials?status=running", lambda p: bool(p["items"]), 120)
        artifacts.rename(moved)
        artifacts.write_text("not a directory")
        try:
            # a finished trial cannot store its weights: it waits, the job does not fail
            deadline = time.monotonic() + 120
            while "storage unavailable" not in server.log.read_text(errors="replace"):
                assert time.monotonic() < deadline, server.tail()
                time.sleep(0.5)
            ready = httpx.get(server.url + "/readyz", timeout=10)
            assert ready.status_code == 503, ready.text
            assert "cannot be written" in ready.json()["artifacts"]
            r = c.post(
                "/v1/teachers", files={"weights": ("t.safetensors", teacher_weights())},
                data={"arch": "resnet20", "num_classes": "10", "dataset": "digits",
                      "accuracy": "0.5"},
            )  # fmt: skip
            assert r.status_code == 503, r.text
            assert "ESNAC_ARTIFACT_DIR" in r.json()["detail"]
            job = c.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == "running", job
            assert job["progress"]["succeeded"] < 4
            assert len(c.get("/v1/teachers").json()) == 1  # the refused upload stored nothing
        finally:
            artifacts.unlink()
            moved.rename(artifacts)
        job = wait_job(c, job_id, 240)
        trials = all_trials(c, job_id)
    assert job["status"] == "succeeded", (job, server.tail())
    assert all(t["status"] == "succeeded" and t["has_weights"] for t in trials)
    assert ledger(trials, 4)["lost"] == 0 and ledger(trials, 4)["duplicates"] == 0
    assert "storage back" in server.log.read_text(errors="replace")
    assert httpx.get(server.url + "/readyz", timeout=10).status_code == 200
