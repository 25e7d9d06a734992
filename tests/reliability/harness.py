"""Fault injection and measurement against a live coordinator, shared by the reliability tests and
`benchmarks/reliability.py` (the tests run each scenario small and assert; the benchmark runs
them larger and prints the figures).

Everything talks HTTP to a real `python -m service.server` process on 127.0.0.1, with real Ray
workers and real (tiny) training; faults are real: SIGKILL of a worker or of the server process,
a Postgres database made unreachable, a Postgres restart.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from service.devserver import DevServer

TOKEN = "reliability-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PG_ADMIN = os.environ.get("ESNAC_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
FINISHED = ("succeeded", "failed", "cancelled")


class Server(DevServer):
    """`python -m service.server` in a subprocess on 127.0.0.1 (the product's `DevServer`), with
    an HTTP client carrying the test token."""

    def client(self, token: str | None = TOKEN) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


def server_env(
    database_url: str, artifact_dir: Path, ray_address: str | None, **extra: str
) -> dict[str, str]:
    """Environment of a test server: 2 one-thread workers on the given Ray, fast polling."""
    env = dict(os.environ)
    env.update(
        ESNAC_DATABASE_URL=database_url, ESNAC_ARTIFACT_DIR=str(artifact_dir),
        ESNAC_API_TOKEN=TOKEN, ESNAC_WORKERS="2", ESNAC_CPUS_PER_TRIAL="1",
        ESNAC_THREADS_PER_TRIAL="1", ESNAC_POLL_INTERVAL="0.2", OMP_NUM_THREADS="1",
    )  # fmt: skip
    if ray_address:
        env["ESNAC_RAY_ADDRESS"] = ray_address
    env.update(extra)
    return env


# --------------------------------------------------------------------------------- jobs
def teacher_weights(arch: str = "resnet20", num_classes: int = 10, seed: int = 0) -> bytes:
    import torch

    from workers import zoo
    from workers.export import state_to_safetensors

    torch.manual_seed(seed)
    return state_to_safetensors(zoo.build(arch, num_classes))


def upload_teacher(c: httpx.Client) -> int:
    """Register an (untrained) resnet20 digits teacher with a given accuracy; returns its id."""
    r = c.post(
        "/v1/teachers", files={"weights": ("t.safetensors", teacher_weights())},
        data={"arch": "resnet20", "num_classes": "10", "dataset": "digits", "accuracy": "0.5"},
    )  # fmt: skip
    if r.status_code != 201:
        raise RuntimeError(f"teacher upload: {r.status_code} {r.text}")
    return int(r.json()["id"])


def submit_job(
    c: httpx.Client,
    teacher_id: int,
    *,
    steps: int,
    per_step: int = 2,
    samples: int = 128,
    epochs: int = 1,
    seed: int = 0,
    top_k: int = 0,
    strategy: str = "random",
) -> int:
    """A job of `steps * per_step` tiny trials (digits, 1 epoch); returns its id. `esnac` jobs
    get a small searcher (2 kernels, 50 candidates) that a 2-core machine fits in seconds."""
    body: dict[str, Any] = {
        "teacher_id": teacher_id, "strategy": strategy, "steps": steps, "per_step": per_step,
        "search": {"epochs": epochs, "max_train_samples": samples, "batch_size": 64,
                   "augment": False},
        "top_k": top_k, "full_training": {"epochs": 1, "batch_size": 64}, "seed": seed,
        "accuracy_floor": 0,  # an untrained teacher: its students sit near chance
    }  # fmt: skip
    if strategy == "esnac":
        body["searcher"] = {"kernels": 2, "candidates": 50}
    r = c.post("/v1/jobs", json=body)
    if r.status_code != 201:
        raise RuntimeError(f"job submit: {r.status_code} {r.text}")
    return int(r.json()["id"])


def wait_for(
    c: httpx.Client, path: str, done: Callable[[Any], bool], timeout: float, every: float = 0.3
) -> Any:
    """GET `path` until `done(body)`; tolerates a server that is briefly unreachable."""
    deadline = time.monotonic() + timeout
    body: Any = None
    while True:
        try:
            r = c.get(path)
            if r.status_code == 200:
                body = r.json()
                if done(body):
                    return body
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path}: still {str(body)[:2000]}")
        time.sleep(every)


def wait_job(c: httpx.Client, job_id: int, timeout: float) -> dict[str, Any]:
    return wait_for(c, f"/v1/jobs/{job_id}", lambda j: j["status"] in FINISHED, timeout)  # type: ignore[no-any-return]


def all_trials(c: httpx.Client, job_id: int) -> list[dict[str, Any]]:
    page = c.get(f"/v1/jobs/{job_id}/trials", params={"limit": 1000}).json()
    return sorted(page["items"], key=lambda t: (t["number"], t["id"]))


def ledger(trials: list[dict[str, Any]], budget: int) -> dict[str, int]:
    """Lost / duplicated trials of a finished job.

    `lost`: trial numbers of the budget without a succeeded row. `duplicates`: rows beyond one
    per number, plus distinct ids sharing an action (a candidate stored twice). `reruns`: extra
    evaluations (attempts beyond the first), each of which must be explained by a fault.
    """
    numbers = Counter(t["number"] for t in trials)
    ok = {t["number"] for t in trials if t["status"] == "succeeded" and t["reward"] is not None}
    actions = Counter(repr(sorted(t["action"].items())) for t in trials)
    return {
        "trials": len(trials),
        "lost": sum(1 for n in range(budget) if n not in ok),
        "duplicates": sum(k - 1 for k in numbers.values()) + sum(k - 1 for k in actions.values()),
        "reruns": sum(max(0, t["attempts"] - 1) for t in trials),
        "lost_attempts_recorded": sum(len(t.get("lost_attempts") or []) for t in trials),
    }


def _iso(unix: float) -> str:
    """A unix time as the API writes timestamps (naive UTC ISO 8601)."""
    return datetime.fromtimestamp(unix, timezone.utc).replace(tzinfo=None).isoformat()  # noqa: UP017


def worker_pid(trial: dict[str, Any]) -> int:
    """The pid of the worker process running a trial (workers are named `host:pid`)."""
    return int(str(trial["worker"]).rsplit(":", 1)[1])


# --------------------------------------------------------------------------------- faults
def kill_workers(
    c: httpx.Client, job_id: int, kills: int, gap: float = 1.0, timeout: float = 120.0
) -> list[dict[str, Any]]:
    """SIGKILL the worker process of a running trial, `kills` times (a fresh victim each time).

    Returns the victims as they were just before their worker was killed.
    """
    victims: list[dict[str, Any]] = []
    killed: set[int] = set()
    for _ in range(kills):
        page = wait_for(
            c, f"/v1/jobs/{job_id}/trials?status=running&limit=1000",
            lambda p: any(t["worker"] and worker_pid(t) not in killed for t in p["items"]),
            timeout, every=0.1,
        )  # fmt: skip
        victim = next(t for t in page["items"] if t["worker"] and worker_pid(t) not in killed)
        pid = worker_pid(victim)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
        killed.add(pid)
        victims.append(victim | {"killed_at": time.time()})
        time.sleep(gap)
    return victims


def worker_death(server: Server, teacher_id: int, *, steps: int, kills: int,
                 samples: int = 128, timeout: float = 300.0,
                 strategy: str = "random") -> dict[str, Any]:  # fmt: skip
    """Promise 1: kill trial workers mid-trial; the job still completes with every trial once."""
    with server.client() as c:
        budget = steps * 2
        job_id = submit_job(c, teacher_id, steps=steps, samples=samples, seed=11,
                            strategy=strategy)  # fmt: skip
        started = time.monotonic()
        victims = kill_workers(c, job_id, kills)
        job = wait_job(c, job_id, timeout)
        trials = all_trials(c, job_id)
    by_id = {t["id"]: t for t in trials}
    retried = sum(1 for v in victims if by_id[v["id"]]["attempts"] > v["attempts"])
    # a victim whose result was stored just before its worker died needs no retry (a lost race)
    raced = sum(
        1 for v in victims
        if by_id[v["id"]]["attempts"] == v["attempts"]
        and by_id[v["id"]]["finished_at"] < _iso(v["killed_at"])
    )  # fmt: skip
    return {
        "job_status": job["status"], "budget": budget, "faults_injected": len(victims),
        "victims_retried": retried, "victims_finished_before_kill": raced,
        "wall_s": round(time.monotonic() - started, 1),
        **ledger(trials, budget),
    }  # fmt: skip


@contextmanager
def pg_database() -> Iterator[str]:
    """A fresh, migrated Postgres database on 127.0.0.1:5432; yields its URL, drops it after."""
    import uuid

    from sqlalchemy import create_engine, text

    from service.db.migrate import upgrade

    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    name = f"esnac_rel_{uuid.uuid4().hex[:12]}"
    url = PG_ADMIN.rsplit("/", 1)[0] + "/" + name
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        upgrade(url)
        yield url
    finally:
        for _ in range(30):  # the database may be restarting
            try:
                with admin.connect() as conn:
                    conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                break
            except Exception:  # noqa: BLE001
                time.sleep(1)
        admin.dispose()


@contextmanager
def database_unreachable(url: str) -> Iterator[None]:
    """Make one Postgres database refuse every connection (and drop the open ones) while inside.

    An outage of just this database: the same effect on the coordinator as a server restart
    (every pooled connection breaks, reconnects are refused), held for as long as needed, without
    disturbing other databases on the server.
    """
    from sqlalchemy import create_engine, text

    name = url.rsplit("/", 1)[1]
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false'))
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = :n AND pid <> pg_backend_pid()"
            ),
            {"n": name},
        )
    try:
        yield
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true'))
        admin.dispose()


def restart_postgres() -> float:
    """`pg_ctlcluster <version> main restart`; returns how long it took (s)."""
    version = sorted(os.listdir("/etc/postgresql"))[0]
    t = time.monotonic()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return time.monotonic() - t


_HELD = re.compile(r"database back: JobRunner\._finish\.<locals>\.store succeeded")


def database_outage(server: Server, database_url: str, teacher_id: int, *, steps: int,
                    hold: float = 20.0, restarts: int = 0, samples: int = 128,
                    timeout: float = 300.0) -> dict[str, Any]:  # fmt: skip
    """Promise 3: the job's database becomes unreachable while trials run (until a trial result
    had to be held, at most `hold` s), then `restarts` real Postgres restarts; the job completes
    and nothing is lost, duplicated or re-run."""
    budget = steps * 2
    five_xx_outside: list[int] = []
    with server.client() as c:
        job_id = submit_job(c, teacher_id, steps=steps, samples=samples, seed=7)
        started = time.monotonic()
        wait_for(c, f"/v1/jobs/{job_id}/trials?status=running",
                 lambda p: any(t["worker"] for t in p["items"]), 120, every=0.1)  # fmt: skip
        with database_unreachable(database_url):
            t0 = time.monotonic()
            during = c.get(f"/v1/jobs/{job_id}")
            held = lambda: "JobRunner._finish.<locals>.store (try" in server.tail(10**7)  # noqa: E731
            while time.monotonic() - t0 < hold and not held():
                time.sleep(0.2)
            outage_s = time.monotonic() - t0
        restart_s = []
        for _ in range(restarts):
            wait_for(c, f"/v1/jobs/{job_id}/trials?status=running",
                     lambda p: any(t["worker"] for t in p["items"]), 120, every=0.1)  # fmt: skip
            restart_s.append(restart_postgres())
        job = wait_job(c, job_id, timeout)
        trials = all_trials(c, job_id)
        after = c.get(f"/v1/jobs/{job_id}")
        if after.status_code >= 500:
            five_xx_outside.append(after.status_code)
    log = server.tail(10**7)
    return {
        "job_status": job["status"], "budget": budget, "faults_injected": 1 + restarts,
        "outage_s": round(outage_s, 1), "pg_restart_s": [round(s, 1) for s in restart_s],
        "results_held_during_outage": len(_HELD.findall(log)),
        "api_status_during_outage": during.status_code, "5xx_after_recovery": five_xx_outside,
        "wall_s": round(time.monotonic() - started, 1), **ledger(trials, budget),
    }  # fmt: skip


def coordinator_crash(make_server: Callable[[], Server], *, steps: int, crashes: int = 1,
                      samples: int = 128, timeout: float = 300.0,
                      strategy: str = "random") -> dict[str, Any]:  # fmt: skip
    """Promise 2: SIGKILL the server mid-job `crashes` times, restarting it each time."""
    from service.db import Storage

    budget = steps * 2
    server = make_server().start()
    with server.client() as c:
        job_id = submit_job(c, upload_teacher(c), steps=steps, samples=samples, seed=5,
                            strategy=strategy)  # fmt: skip
    started = time.monotonic()
    snapshots: list[dict[int, Any]] = []  # the stored trials at each crash
    recovery_s: list[float] = []
    for k in range(crashes):
        with server.client() as c:
            want = (k + 1) * budget // (crashes + 2) + 1
            wait_for(c, f"/v1/jobs/{job_id}", lambda j, w=want: j["progress"]["succeeded"] >= w,
                     timeout)  # fmt: skip
        server.kill()
        storage = Storage(server.env["ESNAC_DATABASE_URL"])
        with storage.session(readonly=True) as repo:
            snapshots.append({t.id: t for t in repo.job_trials(job_id)})
        storage.dispose()
        t0 = time.monotonic()
        server = make_server().start()
        recovery_s.append(time.monotonic() - t0)
    with server.client() as c:
        job = wait_job(c, job_id, timeout)
        now = {t["id"]: t for t in all_trials(c, job_id)}
    # every trial finished before a crash is unchanged; every one in flight was re-run at most
    # once more per crash it lived through
    kept_ok, in_flight_reruns, finished_at_crash = True, [], []
    for i, snap in enumerate(snapshots):
        finished_at_crash.append(sum(1 for t in snap.values() if t.status.is_finished()))
        later = snapshots[i + 1] if i + 1 < len(snapshots) else {}
        for tid, old in snap.items():
            t = now[tid]
            if old.status.is_finished():
                kept_ok &= (t["attempts"], t["reward"], t["status"]) == (
                    old.attempts,
                    old.reward,
                    old.status.value,
                )
            elif old.status.value == "running":  # attempts added before the next crash
                nxt = later[tid].attempts if tid in later else t["attempts"]
                in_flight_reruns.append(nxt - old.attempts)
    with server.client() as c:
        trials = all_trials(c, job_id)
    server.stop()
    return {
        "job_status": job["status"], "budget": budget,
        "faults_injected": crashes, "finished_before_crash": finished_at_crash,
        "finished_before_crash_kept": kept_ok,
        "in_flight_at_crash": len(in_flight_reruns),
        "max_extra_runs_of_in_flight": max(in_flight_reruns, default=0),
        "restart_to_ready_s": [round(s, 1) for s in recovery_s],
        "wall_s": round(time.monotonic() - started, 1), **ledger(trials, budget),
    }  # fmt: skip


# --------------------------------------------------------------------------------- load
def poll_load(url: str, job_id: int, *, clients: int, seconds: float,
              interval: float = 0.0, max_requests: int = 10**6) -> dict[str, Any]:  # fmt: skip
    """`clients` threads poll `GET /v1/jobs/{id}/trials` incrementally (cursor) for `seconds`.

    Each client waits `interval` s between its polls (0: back to back). Bounded by `seconds`
    and by `max_requests` per client. Returns request/error counts and latency percentiles (ms).
    """
    lat: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        mine: list[float] = []
        bad: Counter[str] = Counter()
        cursor: str | None = None
        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(max_requests):
                if time.monotonic() >= stop:
                    break
                t = time.perf_counter()
                try:
                    r = c.get(f"/v1/jobs/{job_id}/trials",
                              params={"cursor": cursor} if cursor else {})  # fmt: skip
                    mine.append(time.perf_counter() - t)
                    if r.status_code != 200:
                        bad[str(r.status_code)] += 1
                    else:
                        cursor = r.json()["next_cursor"]
                except httpx.HTTPError as e:
                    bad[e.__class__.__name__] += 1
                if interval:
                    time.sleep(interval)
        with lock:
            lat.extend(mine)
            errors.update(bad)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(seconds + 60)
    elapsed = time.monotonic() - t0
    ms = sorted(x * 1000 for x in lat)

    def pct(q: float) -> float:
        return round(ms[min(len(ms) - 1, int(q * len(ms)))], 1) if ms else float("nan")

    return {
        "clients": clients, "seconds": round(elapsed, 1), "interval_s": interval,
        "requests": len(lat), "rps": round(len(lat) / elapsed, 1),
        "errors": sum(errors.values()), "error_kinds": dict(errors),
        "5xx": sum(v for k, v in errors.items() if k.startswith("5")),
        "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": round(ms[-1], 1) if ms else None,
        "mean_ms": round(statistics.fmean(ms), 1) if ms else None,
    }  # fmt: skip


# --------------------------------------------------------------------------------- input
def fuzz(url: str, *, examples: int, token: str = TOKEN) -> dict[str, Any]:
    """Promise 4: every operation of the live server's OpenAPI schema, `examples` generated
    requests each (derandomized: the same requests every run), sent with a valid token.

    Returns the operations, the status counts and every 5xx (method, path, status, body).
    """
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    statuses: Counter[int] = Counter()
    server_errors: list[dict[str, Any]] = []
    operations: list[str] = []
    for result in schema.get_all_operations():
        op = result.ok()
        operations.append(f"{op.method.upper()} {op.path}")

        @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
                  suppress_health_check=list(HealthCheck), print_blob=False)  # fmt: skip
        @given(case=op.as_strategy())
        def run(case: Any) -> None:
            r = case.call(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
            statuses[r.status_code] += 1
            if r.status_code >= 500:
                server_errors.append({
                    "operation": f"{case.method} {case.formatted_path}",
                    "status": r.status_code, "body": r.text[:300],
                })  # fmt: skip

        run()
    return {
        "operations": operations, "examples_per_operation": examples,
        "requests": sum(statuses.values()), "statuses": dict(sorted(statuses.items())),
        "5xx": len(server_errors), "server_errors": server_errors[:20],
    }  # fmt: skip


class Poller:
    """Background dashboard-like traffic during a scenario: `clients` threads GET `path` every
    `interval` s from whatever server `url()` names now (it may change across restarts).

    `figures()`: requests, p50/p99 latency (ms) of answered requests, `5xx` (server errors other
    than 503), `503` (the deliberate "retry later" while the database is down) and
    `unreachable` (connection refused: the server process was down).
    """

    def __init__(self, url: Callable[[], str], path: str = "/v1/jobs?limit=20",
                 clients: int = 2, interval: float = 0.25) -> None:  # fmt: skip
        self.url, self.path, self.clients, self.interval = url, path, clients, interval
        self.lat: list[float] = []
        self.codes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            try:
                r = httpx.get(self.url() + self.path, timeout=30)
                with self._lock:
                    self.lat.append(time.perf_counter() - t)
                    self.codes[str(r.status_code)] += 1
            except httpx.HTTPError as e:
                with self._lock:
                    self.codes[e.__class__.__name__] += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> Poller:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)

    def figures(self) -> dict[str, Any]:
        ms = sorted(x * 1000 for x in self.lat)

        def pct(q: float) -> float | None:
            return round(ms[min(len(ms) - 1, int(q * len(ms)))], 1) if ms else None

        codes = self.codes
        return {
            "requests": sum(codes.values()), "p50_ms": pct(0.5), "p99_ms": pct(0.99),
            "5xx": sum(v for k, v in codes.items() if k.startswith("5") and k != "503"),
            "503": codes.get("503", 0),
            "unreachable": sum(v for k, v in codes.items() if not k.isdigit()),
        }  # fmt: skip
