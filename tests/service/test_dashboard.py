"""The dashboard in a real browser (Debian's Chromium driven by Playwright) on a real server.

Playwright's own browser download is never used: the browser is `/usr/bin/chromium`
(`apt-get install chromium`; `.ci/run` installs it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.cli.client import Client
from service.devserver import LocalServer, local_server
from tests.conftest import require

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = [pytest.mark.slow, pytest.mark.browser]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require(f"Chromium at {CHROMIUM}", os.access(CHROMIUM, os.X_OK),
            "apt-get install -y chromium; never a Playwright browser download")  # fmt: skip
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class PageLog:
    """Every request the page makes, and its console errors."""

    def __init__(self, page: Any) -> None:
        self.requests: list[str] = []
        self.errors: list[str] = []
        page.on("request", lambda r: self.requests.append(r.url))
        page.on("pageerror", lambda e: self.errors.append(str(e)))
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))


def _open(browser: Any, url: str) -> tuple[Any, PageLog]:
    page = browser.new_page(viewport={"width": 1360, "height": 1100})
    log = PageLog(page)
    page.goto(url)
    # A marker that only survives if the page is never reloaded.
    page.evaluate("window.__marker = 'no reload'")
    return page, log


def _not_reloaded(page: Any) -> bool:
    return bool(
        page.evaluate(
            "window.__marker === 'no reload' && "
            "performance.getEntriesByType('navigation').length === 1"
        )
    )


def _upload_teacher(client: Client) -> dict[str, Any]:
    from workers import zoo
    from workers.export import state_to_safetensors

    data = state_to_safetensors(zoo.build("resnet20", 10))
    return client.post(
        "/v1/teachers",
        data={"arch": "resnet20", "num_classes": "10", "dataset": "digits", "accuracy": "0.95",
              "name": "tiny-resnet"},
        files={"weights": ("teacher.safetensors", data, "application/octet-stream")},
    )


# ------------------------------------------------------------------ a real job, live
# Enough (and long enough) trials that a fast machine cannot finish the job before the page
# has rendered its first poll.
LIVE_TRIALS = 8


def test_new_trials_appear_without_reload_while_a_job_runs(
    browser: Any, tmp_path: Path, ray_session: str
) -> None:
    env = {
        "ESNAC_RAY_ADDRESS": ray_session,
        "ESNAC_WORKERS": "1",
        "ESNAC_CPUS_PER_TRIAL": "1",
        "ESNAC_THREADS_PER_TRIAL": "1",
        "ESNAC_HEARTBEAT_TIMEOUT": "5",  # progress polled every second
    }
    with local_server(tmp_path, env=env) as server, Client(server.url, server.token) as client:
        teacher = _upload_teacher(client)
        job = client.post("/v1/jobs", json={
            "teacher_id": teacher["id"], "strategy": "random", "steps": LIVE_TRIALS,
            "per_step": 1, "search": {"epochs": 2, "max_train_samples": 512, "batch_size": 64},
            "top_k": 1, "full_training": {"epochs": 1, "batch_size": 64}, "seed": 1,
            "accuracy_floor": 0,  # an untrained teacher: its students sit near chance
        })  # fmt: skip
        page, log = _open(browser, f"{server.url}/#/jobs/{job['id']}")
        rows = page.locator("#trial-rows tr[data-trial-id]")
        done = page.locator("#trial-rows tr.st-succeeded")
        page.wait_for_function(
            "document.querySelectorAll('#trial-rows tr.st-succeeded').length >= 1",
            timeout=120_000,
        )
        first_rows, first_done = rows.count(), done.count()
        assert first_done < LIVE_TRIALS, "the job finished before the page could watch it"
        page.wait_for_function(
            f"document.querySelectorAll('#trial-rows tr.st-succeeded').length > {first_done}",
            timeout=120_000,
        )
        assert rows.count() >= first_rows and done.count() > first_done
        # a running trial shows its epochs as a bar, from the worker's heartbeat
        bar = page.locator("#trial-rows tr.st-running .trial-progress")
        bar.first.wait_for(timeout=120_000)
        assert "epoch" in bar.first.inner_text() and "/2" in bar.first.inner_text()
        headers = page.locator("#trials thead th").all_inner_texts()
        assert "step" in headers and "kernel" in headers
        assert _not_reloaded(page)

        final = client.job(job["id"])
        deadline = time.monotonic() + 180
        while final["status"] not in ("succeeded", "failed", "cancelled"):
            assert time.monotonic() < deadline, f"job still {final['status']}"
            time.sleep(1)
            final = client.job(job["id"])
        assert final["status"] == "succeeded", final.get("error")
        page.wait_for_selector("#job-head .badge-succeeded", timeout=30_000)
        page.wait_for_selector("tr[data-final-id] a.dl", timeout=30_000)
        assert rows.count() == LIVE_TRIALS and done.count() == LIVE_TRIALS
        assert _not_reloaded(page)
        best = page.locator("#chart-best svg circle")
        assert best.count() == LIVE_TRIALS
        assert page.locator("#chart-scatter svg .teacher-mark").count() == 1
        assert "reward, low → high" in page.locator(".legend").last.inner_text()
        href = page.locator("tr[data-final-id] a.dl").first.get_attribute("href")
        assert href and client.request("GET", href).content[:8]  # the download link works
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard_job.png"), full_page=True)
        _assert_offline(log, server)


def _assert_offline(log: PageLog, server: LocalServer, expected: tuple[str, ...] = ()) -> None:
    foreign = [u for u in log.requests if not u.startswith(server.url)]
    assert not foreign, f"the dashboard fetched from outside the server: {foreign}"
    errors = [e for e in log.errors if not any(x in e for x in expected)]
    assert not errors, errors


# ------------------------------------------------------------------ thousands of trials
N_TRIALS = 2000


def _seed_trials(server: LocalServer, job_id: int, teacher_params: int) -> list[int]:
    """Write a big job's trials through the storage layer, as the scheduler would."""
    from service.db import JobState, Storage, TrialState

    rng = np.random.default_rng(0)
    storage = Storage(f"sqlite:///{server.workdir / 'esnac.db'}")
    try:
        with storage.session() as repo:
            repo.set_job_state(job_id, JobState.RUNNING)
            tags = ["seed:uniform", "seed:global"] + [None] * (N_TRIALS - 2)
            trials = repo.create_trials(job_id, [{"seed": i} for i in range(N_TRIALS)], tags=tags)
            for t in trials[:-2]:
                repo.update_trial(t.id, TrialState.RUNNING, new_attempt=True, worker="host:1")
                params = int(rng.integers(2_000, teacher_params))
                c = 1 - params / teacher_params
                acc = float(np.clip(0.95 - 0.4 * c**3 + rng.normal(0, 0.02), 0.1, 1))
                repo.update_trial(
                    t.id, TrialState.SUCCEEDED, params=params, flops=params * 30, accuracy=acc,
                    compression=c, reward=c * (2 - c) * acc / 0.95, history=[acc],
                    seconds={"total": 12.5}, latency_ms=0.05 + 2.0 * params / teacher_params,
                    teacher_latency_ms=2.0 + 0.01 * (t.number % 3), latency_spread=0.1,
                )  # fmt: skip
            for t in trials[-2:]:
                repo.update_trial(t.id, TrialState.RUNNING, new_attempt=True, worker="host:2")
        return [t.id for t in trials[-2:]]
    finally:
        storage.dispose()


def test_thousands_of_trials_poll_incrementally_and_cancel(browser: Any, tmp_path: Path) -> None:
    with (
        local_server(tmp_path, env={"ESNAC_SCHEDULER": "false"}) as server,
        Client(server.url, server.token) as client,
    ):
        teacher = _upload_teacher(client)
        job = client.post("/v1/jobs", json={"teacher_id": teacher["id"], "steps": 500,
                                             "per_step": 4, "reward": "params_target",
                                             "target": {"times_smaller": 4}})  # fmt: skip
        running = _seed_trials(server, job["id"], teacher["params"])

        page, log = _open(browser, f"{server.url}/#/jobs/{job['id']}")
        page.wait_for_function(f"window.__esnac.trials === {N_TRIALS}", timeout=30_000)
        page.wait_for_selector("#trial-pager >> text=page 1 of 20")
        assert page.locator("#trial-rows tr[data-trial-id]").count() == 100
        assert "2000 · 1998 succeeded · 2 running" in page.inner_text("#trial-count")
        # a budgeted job: the budget in its header, the seeds tagged in the trial table
        assert "accuracy within" in page.inner_text("#job-head")
        assert "tiny-resnet" in page.inner_text("#job-head")  # the teacher's name
        assert "4× smaller" in page.inner_text("#job-head")
        page.click("#trials th[data-key=number]")  # trial order: the seeds come first
        page.wait_for_selector("#trial-rows .seed >> text=seed:uniform")
        page.click("#trials th[data-key=number]")  # back to the newest first
        assert page.locator("#chart-scatter svg circle").count() == N_TRIALS - 2
        # the scatter's x-axis switches between parameters, FLOPs and the measured latency
        axis_label = page.locator("#chart-scatter svg .axis-label").first
        assert "parameters" in (axis_label.text_content() or "")
        page.select_option("#scatter-x", "latency")
        page.wait_for_selector("#chart-scatter svg .axis-label >> text=measured latency")
        assert page.locator("#chart-scatter svg circle").count() == N_TRIALS - 2
        mark = page.locator("#chart-scatter svg .teacher-mark title").text_content() or ""
        assert "2.01 ms" in mark or "2.0 ms" in mark, mark  # the median of its measurements
        assert "latency" in page.inner_text("#trials thead") and " ms" in page.inner_text(
            "#trial-rows"
        )
        page.select_option("#scatter-x", "flops")
        page.wait_for_selector("#chart-scatter svg .axis-label >> text=FLOPs")
        assert page.locator("#chart-scatter svg .teacher-mark").count() == 0
        page.select_option("#scatter-x", "params")

        # Catching up took a few big pages; every later poll asks only for what changed.
        polls = page.evaluate("window.__esnac.polls")
        page.wait_for_function(f"window.__esnac.polls >= {polls + 2}", timeout=15_000)
        trial_calls = [u for u in log.requests if "/trials?" in u]
        assert len(trial_calls) < 12
        assert all("cursor=" in u for u in trial_calls[-2:])

        # A trial finishing on the server shows up in place.
        from service.db import Storage, TrialState

        storage = Storage(f"sqlite:///{server.workdir / 'esnac.db'}")
        with storage.session() as repo:
            repo.update_trial(running[0], TrialState.FAILED, error_code="out_of_memory",
                              error="the student did not fit in memory")  # fmt: skip
        storage.dispose()
        page.wait_for_function(
            "document.querySelector('#trial-count').textContent.includes('1 running')",
            timeout=15_000,
        )
        row = page.locator(f"tr[data-trial-id='{running[0]}']")
        assert "the student did not fit in memory" in row.inner_text()
        assert _not_reloaded(page)

        # Cancel asks for the token; a wrong one is refused with the server's message.
        answers = iter(["wrong", server.token])
        alerts: list[str] = []

        def on_dialog(d: Any) -> None:
            if d.type == "prompt":
                d.accept(next(answers))
            else:
                alerts.append(d.message)
                d.accept()

        page.on("dialog", on_dialog)
        page.click("#cancel")
        deadline = time.monotonic() + 10
        while not alerts and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        assert alerts and "wrong API token" in alerts[0]
        assert client.job(job["id"])["status"] == "running"
        page.click("#cancel")
        page.wait_for_selector("#job-head .badge-cancelled", timeout=15_000)
        assert client.job(job["id"])["status"] == "cancelled"
        assert page.locator("#cancel").count() == 0

        page.goto(f"{server.url}/")
        page.wait_for_selector(f"tr[data-job-id='{job['id']}'] .badge-cancelled")
        assert "2000 / 2000, 2 failed" in page.inner_text(f"tr[data-job-id='{job['id']}']")
        _assert_offline(log, server, expected=("status of 401",))  # the wrong token


# ------------------------------------------------------------------ API docs, air-gapped
def test_api_docs_render_with_the_network_blocked(browser: Any, tmp_path: Path) -> None:
    with local_server(tmp_path, env={"ESNAC_SCHEDULER": "false"}) as server:
        page = browser.new_page(viewport={"width": 1360, "height": 1100})
        blocked: list[str] = []

        def only_loopback(route: Any) -> None:
            if route.request.url.startswith(server.url):
                route.continue_()
            else:
                blocked.append(route.request.url)
                route.abort()

        page.route("**/*", only_loopback)
        log = PageLog(page)
        page.goto(f"{server.url}/docs")
        page.wait_for_selector(".opblock", timeout=60_000)  # Swagger UI's operations
        assert page.locator(".opblock").count() >= 10
        assert "/v1/jobs" in page.locator(".opblock-summary-path").all_inner_texts()
        assert blocked == [] and log.errors == [], (blocked, log.errors)
        page.goto(f"{server.url}/redoc")
        page.wait_for_function("document.body.innerText.includes('/v1/jobs/{job_id}/trials')",
                               timeout=60_000)  # fmt: skip
        # ReDoc's bundle links its "powered by" logo from its CDN: an image that simply does
        # not show offline (newer Chromium logs the aborted request as a console error).
        # Nothing else may leave the machine, and nothing else may fail.
        assert all(u.endswith("/logo-mini.svg") for u in blocked), blocked
        aborted = "Failed to load resource: net::ERR_FAILED"
        assert [e for e in log.errors if e != aborted] == [], log.errors
        assert log.errors.count(aborted) <= len(blocked), (log.errors, blocked)
        page.close()
