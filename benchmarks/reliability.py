"""Reliability figures: faults injected into a live coordinator, bad input, access, and load.

Every scenario runs against real `python -m service.server` processes on 127.0.0.1 with a local
Ray (2 CPUs), real training of tiny random-search trials (resnet20 teacher, digits, 1 epoch on
128 samples) and real faults (see `tests/reliability/harness.py`, shared with the tests):

1. worker death: SIGKILL the worker process of a running trial, several times in one job;
2. coordinator crash: SIGKILL the server mid-job and restart it, twice in one job;
3. database outage (Postgres): the job's database refuses connections until a trial result had
   to be held, then two real `pg_ctlcluster ... restart`s while trials run;
4. bad input: schemathesis fuzzing of every endpoint (SQLite and Postgres servers), bad uploads
   and absurd job settings;
5. access: every mutating route with missing / wrong tokens;
6. load: 50 clients poll `GET /v1/jobs/{id}/trials` incrementally (cursor), each every 2 s like
   the dashboard, for 60 s while a job runs; the job's progress (trials finished per minute in
   the window) against the same job without the load, measured alternately in this run (median
   of 3 each); plus one 60 s run with the 50 clients polling back to back (a stress figure). The
   clients run on the same 2 cores as the server and the workers.

During 1-3 two background clients poll `GET /v1/jobs` every 0.25 s: their `5xx` (server errors
other than a deliberate 503), `503`, `unreachable` counts and p50/p99 latency are reported.

Prints JSON and writes `benchmarks/results/reliability.json`. Run (about 15 minutes on 2
cores): `python benchmarks/reliability.py` (`--quick` for a short smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from service.db.migrate import upgrade  # noqa: E402
from tests.reliability import harness as h  # noqa: E402
from tests.reliability import test_input as inputs  # noqa: E402


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).replace(tzinfo=None).isoformat()  # noqa: UP017


class Bench:
    def __init__(self, tmp: Path, ray_address: str) -> None:
        self.tmp, self.ray = tmp, ray_address
        self.n = 0

    def sqlite(self) -> str:
        self.n += 1
        url = f"sqlite:///{self.tmp / f'db{self.n}.db'}"
        upgrade(url)
        return url

    def server(self, url: str, **env: str) -> h.Server:
        self.n += 1
        e = h.server_env(url, self.tmp / f"artifacts{self.n}", self.ray, **env)
        return h.Server(e, self.tmp / f"server{self.n}.log")


def scenario_worker_death(b: Bench, steps: int, kills: int) -> dict[str, Any]:
    server = b.server(b.sqlite()).start()
    try:
        with server.client() as c:
            teacher = h.upload_teacher(c)
        with h.Poller(lambda: server.url) as poll:
            fig = h.worker_death(server, teacher, steps=steps, kills=kills)
        return fig | {"api": poll.figures()}
    finally:
        server.stop()


def scenario_coordinator_crash(b: Bench, steps: int, crashes: int) -> dict[str, Any]:
    url = b.sqlite()
    current: list[h.Server] = []

    def make() -> h.Server:
        if current:  # same database, same artifacts: a restart of the same deployment
            s = h.Server(current[-1].env, b.tmp / f"crash{len(current)}.log")
        else:
            s = b.server(url)
        current.append(s)
        return s

    try:
        with h.Poller(lambda: current[-1].url if current else "http://127.0.0.1:9") as poll:
            fig = h.coordinator_crash(make, steps=steps, crashes=crashes)
        return fig | {"api": poll.figures()}
    finally:
        for s in current:
            s.stop()


def scenario_database_outage(b: Bench, steps: int, restarts: int) -> dict[str, Any]:
    with h.pg_database() as url:
        server = b.server(url).start()
        try:
            with server.client() as c:
                teacher = h.upload_teacher(c)
            with h.Poller(lambda: server.url) as poll:
                fig = h.database_outage(server, url, teacher, steps=steps, hold=30.0,
                                        restarts=restarts)  # fmt: skip
            return fig | {"api": poll.figures()}
        finally:
            server.stop()


def scenario_bad_input(b: Bench, examples: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with h.pg_database() as pg:
        for name, url in (("sqlite", b.sqlite()), ("postgres", pg)):
            server = b.server(url, ESNAC_SCHEDULER="false",
                              ESNAC_MAX_UPLOAD_MB=str(inputs.MAX_UPLOAD_MB)).start()  # fmt: skip
            try:
                with server.client() as c:
                    teacher = h.upload_teacher(c)
                    c.post("/v1/jobs", json={"teacher_id": teacher, "strategy": "random"})
                out[f"fuzz_{name}"] = h.fuzz(server.url, examples=examples)
                if name == "sqlite":
                    out |= _uploads_and_settings(server, teacher, b.tmp / "pwned")
            finally:
                server.stop()
    return out


def _uploads_and_settings(server: h.Server, teacher: int, marker: Path) -> dict[str, Any]:
    artifacts = Path(server.env["ESNAC_ARTIFACT_DIR"])
    before = sorted(p.name for p in artifacts.iterdir())
    uploads = inputs._bad_uploads(str(marker))
    codes: dict[str, int] = {}
    with server.client() as c:
        n_teachers = len(c.get("/v1/teachers").json())
        for name, (fields, data) in uploads.items():
            r = c.post("/v1/teachers", data=fields, files={"weights": ("w", data)})
            codes[name] = r.status_code
        stored = len(c.get("/v1/teachers").json()) - n_teachers
        jobs = inputs._absurd_jobs(teacher)
        job_codes = {k: c.post("/v1/jobs", json=v).status_code for k, v in jobs.items()}
    after = sorted(p.name for p in artifacts.iterdir())
    return {
        "uploads": {
            "sent": len(uploads), "4xx": sum(400 <= s < 500 for s in codes.values()),
            "5xx": sum(s >= 500 for s in codes.values()), "statuses": codes,
            "teachers_stored": stored, "files_left": len(after) - len(before),
            "pickle_executed": marker.exists(),
        },
        "absurd_jobs": {
            "sent": len(jobs), "422": sum(s == 422 for s in job_codes.values()),
            "5xx": sum(s >= 500 for s in job_codes.values()), "statuses": job_codes,
        },
    }  # fmt: skip


def scenario_access(b: Bench) -> dict[str, Any]:
    server = b.server(b.sqlite(), ESNAC_SCHEDULER="false").start()
    wrong: list[dict[str, str]] = [
        {}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {h.TOKEN}"},
        {"Authorization": f"Bearer {h.TOKEN}x"}, {"X-API-Token": h.TOKEN},
    ]  # fmt: skip
    codes: dict[str, int] = {}
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for method, path in inputs._mutating_routes():
                for k, headers in enumerate(wrong):
                    codes[f"{method} {path} #{k}"] = c.request(
                        method, path, headers=headers, json={}
                    ).status_code
        return {
            "mutating_routes": sorted({k.rsplit(" #", 1)[0] for k in codes}),
            "requests_without_valid_token": len(codes),
            "refused_401_403": sum(s in (401, 403) for s in codes.values()),
            "let_through": sorted(k for k, s in codes.items() if s not in (401, 403)),
        }
    finally:
        server.stop()


def _progress(server: h.Server, teacher: int, window: float, clients: int,
              interval: float, seed: int) -> dict[str, Any]:  # fmt: skip
    """Trials finished per minute during `window` s of a long job, with `clients` pollers."""
    with server.client() as c:
        job = h.submit_job(c, teacher, steps=200, seed=seed)
        h.wait_for(c, f"/v1/jobs/{job}", lambda j: j["progress"]["succeeded"] >= 2, 300)
        t0 = time.time()
        load = None
        if clients:
            load = h.poll_load(server.url, job, clients=clients, seconds=window, interval=interval)
        else:
            time.sleep(window)
        t1 = time.time()
        trials = h.all_trials(c, job)
        c.post(f"/v1/jobs/{job}/cancel")
    lo, hi = _iso(t0), _iso(t1)
    done = [t for t in trials if t["status"] == "succeeded" and lo <= t["finished_at"] < hi]
    return {
        "window_s": round(t1 - t0, 1),
        "trials_finished": len(done),
        "trials_per_min": round(len(done) / (t1 - t0) * 60, 2),
        "load": load,
    }


def scenario_load(b: Bench, window: float, clients: int, interval: float) -> dict[str, Any]:
    server = b.server(b.sqlite()).start()
    try:
        with server.client() as c:
            teacher = h.upload_teacher(c)
            warm = h.submit_job(c, teacher, steps=2, seed=99)  # start + warm the workers
            h.wait_job(c, warm, 300)
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "polled": []}
        for k in range(3):  # alternate, so that drift in the machine's load hits both
            runs["baseline"].append(_progress(server, teacher, window, 0, 0.0, seed=k))
            runs["polled"].append(_progress(server, teacher, window, clients, interval, seed=k))
        hammer = _progress(server, teacher, window, clients, 0.0, seed=0)
    finally:
        server.stop()
    base = round(statistics.median(r["trials_per_min"] for r in runs["baseline"]), 1)
    polled = round(statistics.median(r["trials_per_min"] for r in runs["polled"]), 1)
    loads = [r["load"] for r in runs["polled"]]
    return {
        "clients": clients, "seconds": window, "poll_interval_s": interval,
        "requests": sum(x["requests"] for x in loads),
        "errors": sum(x["errors"] for x in loads), "5xx": sum(x["5xx"] for x in loads),
        "p50_ms": round(statistics.median(x["p50_ms"] for x in loads), 1),
        "p99_ms": max(x["p99_ms"] for x in loads),
        "trials_per_min_baseline": base, "trials_per_min_polled": polled,
        "slowdown_pct": round(100 * (1 - polled / base), 1) if base else None,
        "slowdown_pct_per_pair": [
            round(100 * (1 - p["trials_per_min"] / q["trials_per_min"]), 1)
            for q, p in zip(runs["baseline"], runs["polled"], strict=True)
        ],
        "back_to_back": {
            "requests": hammer["load"]["requests"], "rps": hammer["load"]["rps"],
            "errors": hammer["load"]["errors"], "p50_ms": hammer["load"]["p50_ms"],
            "p99_ms": hammer["load"]["p99_ms"], "trials_per_min": hammer["trials_per_min"],
            "slowdown_pct": round(100 * (1 - hammer["trials_per_min"] / base), 1) if base else None,
        },
        "runs": runs,
    }  # fmt: skip


def summary(res: dict[str, Any]) -> list[dict[str, Any]]:
    """One line per promise: faults injected, trials lost, duplicates, 5xx, p50/p99 latency."""
    lines = []
    for key, promise in (("worker_death", "1 worker death"),
                         ("coordinator_crash", "2 coordinator crash"),
                         ("database_outage", "3 database outage")):  # fmt: skip
        f = res.get(key)
        if f is None:
            continue
        lines.append({
            "promise": promise, "job": f["job_status"], "faults_injected": f["faults_injected"],
            "trials": f["trials"], "trials_lost": f["lost"], "duplicates": f["duplicates"],
            "reruns": f["reruns"], "5xx": f["api"]["5xx"], "503": f["api"]["503"],
            "p50_ms": f["api"]["p50_ms"], "p99_ms": f["api"]["p99_ms"],
        })  # fmt: skip
    if "bad_input" in res:
        bi = res["bad_input"]
        fz = [bi["fuzz_sqlite"], bi["fuzz_postgres"]]
        lines.append({
            "promise": "4 bad input", "faults_injected": sum(x["requests"] for x in fz)
            + bi["uploads"]["sent"] + bi["absurd_jobs"]["sent"],
            "trials_lost": 0, "duplicates": 0,
            "5xx": sum(x["5xx"] for x in fz) + bi["uploads"]["5xx"] + bi["absurd_jobs"]["5xx"],
            "bad_uploads_stored": bi["uploads"]["teachers_stored"] + bi["uploads"]["files_left"],
        })  # fmt: skip
    if "access" in res:
        a = res["access"]
        lines.append({
            "promise": "5 access", "faults_injected": a["requests_without_valid_token"],
            "let_through": len(a["let_through"]), "5xx": 0,
        })  # fmt: skip
    if "load" in res:
        ld = res["load"]
        lines.append({
            "promise": "6 load", "faults_injected": ld["requests"], "trials_lost": 0,
            "duplicates": 0, "5xx": ld["5xx"], "errors": ld["errors"], "p50_ms": ld["p50_ms"],
            "p99_ms": ld["p99_ms"], "slowdown_pct": ld["slowdown_pct"],
        })  # fmt: skip
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--only", nargs="*", default=None, help="scenario names to run")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/reliability.json"))
    args = parser.parse_args()
    q = args.quick
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    address = ray.get_runtime_context().gcs_address
    scenarios = {
        "worker_death": lambda b: scenario_worker_death(b, steps=3 if q else 8,
                                                        kills=1 if q else 3),
        "coordinator_crash": lambda b: scenario_coordinator_crash(b, steps=3 if q else 8,
                                                                  crashes=1 if q else 2),
        "database_outage": lambda b: scenario_database_outage(b, steps=3 if q else 8,
                                                              restarts=1 if q else 2),
        "bad_input": lambda b: scenario_bad_input(b, examples=10 if q else 50),
        "access": scenario_access,
        # each client polls at the dashboard's own rate (service/static/app.js: POLL_MS = 2000)
        "load": lambda b: scenario_load(b, window=10.0 if q else 60.0, clients=20 if q else 50,
                                        interval=2.0),
    }  # fmt: skip
    res: dict[str, Any] = {
        "command": "python benchmarks/reliability.py" + (" --quick" if q else ""),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),  # noqa: UP017
    }  # fmt: skip
    t = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="esnac-rel-") as tmp:
            b = Bench(Path(tmp), address)
            for name, run in scenarios.items():
                if args.only and name not in args.only:
                    continue
                s = time.monotonic()
                try:
                    res[name] = run(b)
                except Exception as e:  # noqa: BLE001 - reported in the JSON, not hidden
                    res[name] = {"error": f"{e.__class__.__name__}: {e}"[:3000]}
                res[name]["scenario_s"] = round(time.monotonic() - s, 1)
                print(f"{name}: {json.dumps(res[name])[:400]}", file=sys.stderr, flush=True)
    finally:
        ray.shutdown()
    res["total_s"] = round(time.monotonic() - t, 1)
    ok = {k: v for k, v in res.items() if isinstance(v, dict) and "error" not in v}
    res["summary"] = summary(ok)
    text = json.dumps(res, indent=2)
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
