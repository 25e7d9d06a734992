"""The `esnac` command line: run the coordinator, and drive it through its REST API.

    esnac serve                      the API, scheduler and dashboard (SQLite + local Ray default)
    esnac db upgrade                 bring the database schema up to date
    esnac teacher train|register|list|show
    esnac submit / status / watch / results / cancel / export
    esnac demo                       everything above on this machine, offline, in a few minutes

Client commands read the server from `--url` / `ESNAC_URL` (default http://127.0.0.1:8000) and
the token from `--token` / `ESNAC_API_TOKEN`. Errors from the server are printed as the server
worded them, and the command exits non-zero.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from service.api.schemas import (
    EsnacOptions,
    FullTrainingIn,
    JobCreate,
    SearchTrainingIn,
    TeacherTrain,
)
from service.cli_client import (
    RESULT_HEADERS,
    TERMINAL_JOB_STATES,
    ApiError,
    Client,
    ProgressBar,
    ServerUnreachableError,
    format_count,
    format_duration,
    format_table,
    ranked_trials,
    results_rows,
)

__all__ = ["CliError", "LocalServer", "build_parser", "local_server", "main"]

DEFAULT_URL = "http://127.0.0.1:8000"


class CliError(Exception):
    """A user-facing error: printed as `esnac: error: <message>`, exit status 1."""


# ============================================================================ server commands
def _cmd_serve(args: argparse.Namespace) -> int:
    from service.db.migrate import SchemaError
    from service.server import UnsafeBindError, serve
    from service.settings import Settings

    try:
        serve(Settings(), host=args.host, port=args.port)
    except (UnsafeBindError, SchemaError) as exc:
        raise CliError(str(exc)) from exc
    return 0


def _database_url(args: argparse.Namespace) -> str:
    if args.database_url:
        return str(args.database_url)
    from service.settings import Settings

    return Settings().database_url


def _cmd_db_upgrade(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from service.db.migrate import upgrade

    url = _database_url(args)
    try:
        upgrade(url)
    except SQLAlchemyError as exc:
        raise CliError(f"cannot upgrade the database {_redact(url)}: {exc}") from exc
    print(f"database schema is up to date ({_redact(url)})")
    return 0


def _cmd_db_check(args: argparse.Namespace) -> int:
    from service.db.migrate import SchemaError, check

    url = _database_url(args)
    try:
        check(url)
    except SchemaError as exc:
        raise CliError(str(exc)) from exc
    print(f"database schema is current ({_redact(url)})")
    return 0


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


# ============================================================================ client commands
def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.token)


def _cmd_teacher_train(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "arch": args.arch,
        "num_classes": args.num_classes,
        "dataset": args.dataset,
    }
    for opt in ("epochs", "lr", "batch_size", "seed", "max_train_samples"):
        if getattr(args, opt) is not None:  # unset: the server's default
            body[opt] = getattr(args, opt)
    with _client(args) as client:
        teacher = client.post("/v1/teachers/train", json=body)
        print(f"teacher {teacher['id']}: training {teacher['arch']} on {teacher['dataset']}")
        if args.wait:
            teacher = wait_for_teacher(client, teacher["id"])
            print(_teacher_line(teacher))
    return 0


def wait_for_teacher(client: Client, teacher_id: int, poll: float = 1.0) -> dict[str, Any]:
    """Poll a training teacher until it is ready; raise `CliError` if its training failed."""
    bar = ProgressBar()
    try:
        while True:
            teacher = client.teacher(teacher_id)
            if teacher["status"] != "training":
                break
            bar.note(f"teacher {teacher_id}: training")
            time.sleep(poll)
    finally:
        bar.close()
    if teacher["status"] == "failed":
        raise CliError(f"teacher {teacher_id} failed to train: {teacher.get('error')}")
    return teacher


def _teacher_line(t: dict[str, Any]) -> str:
    acc = "-" if t.get("accuracy") is None else f"{100 * t['accuracy']:.2f}%"
    return (
        f"teacher {t['id']}: {t['arch']} on {t['dataset']}, {t['status']}, "
        f"{format_count(t['params'])} params, accuracy {acc}"
    )


def _cmd_teacher_register(args: argparse.Namespace) -> int:
    path = Path(args.weights)
    if not path.is_file():
        raise CliError(f"weights file {path} does not exist")
    data: dict[str, str] = {
        "arch": args.arch,
        "num_classes": str(args.num_classes),
        "dataset": args.dataset,
    }
    if args.accuracy is not None:
        data["accuracy"] = str(args.accuracy)
    with _client(args) as client, path.open("rb") as fh:
        files = {"weights": (path.name, fh, "application/octet-stream")}
        teacher = client.post("/v1/teachers", data=data, files=files)
    print(_teacher_line(teacher))
    return 0


def _cmd_teacher_list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        teachers = client.get("/v1/teachers")
    rows = [
        [
            t["id"],
            t["arch"],
            t["dataset"],
            t["status"],
            format_count(t["params"]),
            "-" if t.get("accuracy") is None else f"{100 * t['accuracy']:.2f}%",
        ]
        for t in teachers
    ]
    print(format_table(("id", "arch", "dataset", "status", "params", "accuracy"), rows))
    return 0


def _cmd_teacher_show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        teacher = client.teacher(args.teacher)
    print(json.dumps(teacher, indent=2) if args.json else _teacher_line(teacher))
    return 0


def job_body(args: argparse.Namespace) -> dict[str, Any]:
    """The `POST /v1/jobs` body from `submit` / `demo` options (unset options: server default)."""
    body: dict[str, Any] = {"teacher_id": args.teacher}
    for opt in ("strategy", "steps", "per_step", "top_k", "reward", "seed"):
        if getattr(args, opt, None) is not None:
            body[opt] = getattr(args, opt)
    if getattr(args, "dataset", None):
        body["dataset"] = args.dataset
    if getattr(args, "embedding_from", None) is not None:
        body["embedding_from"] = args.embedding_from
    search: dict[str, Any] = {}
    for opt, key in (
        ("search_epochs", "epochs"),
        ("search_batch_size", "batch_size"),
        ("max_train_samples", "max_train_samples"),
    ):
        if getattr(args, opt, None) is not None:
            search[key] = getattr(args, opt)
    if getattr(args, "no_augment", False):
        search["augment"] = False
    if search:
        body["search"] = search
    full: dict[str, Any] = {}
    for opt, key in (("full_epochs", "epochs"), ("full_batch_size", "batch_size")):
        if getattr(args, opt, None) is not None:
            full[key] = getattr(args, opt)
    if full:
        body["full_training"] = full
    searcher: dict[str, Any] = {}
    for opt, key in (("kernels", "kernels"), ("candidates", "candidates")):
        if getattr(args, opt, None) is not None:
            searcher[key] = getattr(args, opt)
    if searcher:
        body["searcher"] = searcher
    return body


def _cmd_submit(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.post("/v1/jobs", json=job_body(args))
        print(
            f"job {job['id']}: {job['strategy']} search of teacher {job['teacher_id']}, "
            f"{job['steps']} steps x {job['per_step']} candidates, top {job['top_k']} fully trained"
        )
        if args.watch:
            job = watch_job(client, job["id"])
            print_results(client, job, top=args.top)
            return 0 if job["status"] == "succeeded" else 1
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.job is None:
            jobs = client.jobs(status=args.status, limit=args.limit)
            rows = [_job_row(j) for j in jobs]
            print(
                format_table(
                    ("job", "status", "teacher", "strategy", "trials", "best reward", "age"), rows
                )
            )
            return 0
        job = client.job(args.job)
    if args.json:
        print(json.dumps(job, indent=2))
        return 0
    p = job["progress"]
    best = job.get("best_trial")
    print(f"job {job['id']}: {job['status']}  ({job['strategy']}, teacher {job['teacher_id']})")
    print(
        f"  trials: {p['succeeded']} succeeded, {p['failed']} failed, {p['running']} running, "
        f"{p['pending']} pending of {p['total']}; {p['finalized']}/{job['top_k']} fully trained"
    )
    if best:
        print(
            f"  best: trial {best['id']}  reward {best['reward']:.4f}  accuracy "
            f"{100 * best['accuracy']:.2f}%  params {format_count(best['params'])}"
        )
    if job.get("error"):
        print(f"  error: {job['error']}")
    return 0


def _job_row(job: dict[str, Any]) -> list[Any]:
    p = job["progress"]
    best = job.get("best_trial")
    return [
        job["id"],
        job["status"],
        job["teacher_id"],
        job["strategy"],
        f"{p['succeeded'] + p['failed']}/{p['total']}",
        f"{best['reward']:.4f}" if best and best.get("reward") is not None else "-",
        _age(job["created_at"]),
    ]


def _age(timestamp: str) -> str:
    from datetime import datetime, timezone

    created = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return format_duration((datetime.now(timezone.utc) - created).total_seconds())


def watch_job(client: Client, job_id: int, poll: float = 1.0) -> dict[str, Any]:
    """Show a progress bar of a job's trials (then of its full training) until it finishes.

    Returns:
        The finished job (`JobPublic` as a dict).
    """
    bar = ProgressBar()
    phase = ""
    try:
        while True:
            job = client.job(job_id)
            p = job["progress"]
            best = job.get("best_trial")
            best_text = (
                f"best reward {best['reward']:.4f} (trial {best['id']}, "
                f"{format_count(best['params'])} params, {100 * best['accuracy']:.1f}%)"
                if best and best.get("reward") is not None
                else "best reward -"
            )
            # A short full training can start and end between two polls: a succeeded job with
            # finalized students still gets its full-training bar.
            final_phase = (
                job["status"] == "finalizing"
                or (job["status"] == "succeeded" and p["finalized"] > 0)
                or (phase == "final" and job["status"] in TERMINAL_JOB_STATES)
            )
            extra = f"running {p['running']}  failed {p['failed']}  {best_text}"
            if final_phase and job["top_k"] > 0:
                if phase != "final":
                    bar.update(p["succeeded"] + p["failed"], p["total"], "trials", extra)
                    bar.close()
                    bar = ProgressBar()
                    phase = "final"
                bar.update(p["finalized"], job["top_k"], "full training", best_text)
            else:
                bar.update(p["succeeded"] + p["failed"], p["total"], "trials", extra)
            if job["status"] in TERMINAL_JOB_STATES:
                break
            time.sleep(poll)
    finally:
        bar.close()
    if job["status"] != "succeeded":
        print(f"job {job_id} {job['status']}" + (f": {job['error']}" if job.get("error") else ""))
    return job


def _cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = watch_job(client, args.job, poll=args.interval)
        print_results(client, job, top=args.top)
    return 0 if job["status"] == "succeeded" else 1


def print_results(client: Client, job: dict[str, Any], top: int = 5) -> None:
    """Print the result table of a job: the teacher, then its best students."""
    teacher = client.teacher(job["teacher_id"])
    trials = client.trials(job["id"])
    print(
        f"job {job['id']} ({job['status']}): {len(ranked_trials(trials))} students evaluated, "
        f"teacher {teacher['arch']} on {job['dataset']}"
    )
    print(format_table(RESULT_HEADERS, results_rows(trials, teacher, top)))


def _cmd_results(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.job(args.job)
        if args.json:
            ranked = ranked_trials(client.trials(args.job))[: args.top]
            print(json.dumps(ranked, indent=2))
        else:
            print_results(client, job, top=args.top)
    return 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = client.post(f"/v1/jobs/{args.job}/cancel")
    print(f"job {job['id']}: {job['status']}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.trial is None:
            if args.job is None:
                raise CliError("give a trial id, or --job JOB (with --rank N) to export a student")
            ranked = ranked_trials(client.trials(args.job))
            if len(ranked) < args.rank:
                raise CliError(
                    f"job {args.job} has {len(ranked)} succeeded trials, no rank {args.rank}"
                )
            trial = ranked[args.rank - 1]
        else:
            trial = client.get(f"/v1/trials/{args.trial}")
        kind = "onnx" if args.format == "onnx" else "weights"
        response = client.request("GET", f"/v1/trials/{trial['id']}/{kind}")
    out = Path(args.output)
    if out.is_dir():
        out = out / f"trial-{trial['id']}.{'onnx' if kind == 'onnx' else 'safetensors'}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(response.content)
    action_path = out.with_name(out.name + ".action.json")
    action_path.write_text(json.dumps(trial["action"], indent=2) + "\n")
    which = response.headers.get("X-ESNAC-Weights", kind)
    print(
        f"trial {trial['id']}: wrote {which} {kind} ({len(response.content):,} bytes) to {out}, "
        f"its architecture (action) to {action_path}"
    )
    return 0


# ============================================================================ demo
def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise CliError("no free TCP port on 127.0.0.1")


@dataclass(frozen=True)
class LocalServer:
    """A coordinator running in a child process on this machine (see `local_server`)."""

    url: str
    token: str
    workdir: Path
    log_path: Path
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def local_server(
    workdir: Path,
    *,
    port: int = 0,
    env: dict[str, str] | None = None,
    start_timeout: float = 120.0,
) -> Iterator[LocalServer]:
    """Run `python -m service.server` on loopback with an embedded SQLite database.

    The schema of `<workdir>/esnac.db` is upgraded first; artifacts go to `<workdir>/artifacts`,
    the server's output to `<workdir>/server.log`. A fresh API token is set. On exit the server
    is interrupted (and killed if it does not stop within 20 s).

    Args:
        workdir: directory for the database, artifacts and log (created if missing).
        port: TCP port on 127.0.0.1 (0: any free one).
        env: extra `ESNAC_*` settings for the server (e.g. `ESNAC_WORKERS`).
        start_timeout: seconds to wait for `GET /readyz` (the database and Ray).

    Raises:
        CliError: the server exited or did not become ready; the message has its log's tail.
    """
    from service.db.migrate import upgrade

    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port(port)
    token = secrets.token_hex(16)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("ESNAC_")}
    child_env.update(
        {
            "ESNAC_DATABASE_URL": f"sqlite:///{(workdir / 'esnac.db').resolve()}",
            "ESNAC_ARTIFACT_DIR": str((workdir / "artifacts").resolve()),
            "ESNAC_API_TOKEN": token,
        }
    )
    child_env.update(env or {})
    upgrade(child_env["ESNAC_DATABASE_URL"])
    log_path = workdir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "service.server", "--host", "127.0.0.1", "--port", str(port)],
            env=child_env,
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LocalServer(f"http://127.0.0.1:{port}", token, workdir, log_path, process)
    try:
        with Client(server.url, token) as client:
            _wait_server(client, server, timeout=start_timeout)
        yield server
    finally:
        _stop(process)


def _cmd_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    temp = args.dir is None
    workdir = Path(tempfile.mkdtemp(prefix="esnac-demo-")) if temp else Path(args.dir)
    env = {
        "ESNAC_WORKERS": str(args.workers),
        "ESNAC_CPUS_PER_TRIAL": "1",
        "ESNAC_THREADS_PER_TRIAL": "1",
        "ESNAC_RAY_NUM_CPUS": str(args.workers),
    }
    print(f"== ESNAC demo in {workdir} (SQLite + local Ray, {args.workers} workers)")
    print("== starting the server (and a local Ray) ...")
    try:
        with local_server(
            workdir, port=args.port, env=env, start_timeout=args.start_timeout
        ) as server:
            url = server.url
            print(f"== dashboard: {url}/   (API docs: {url}/docs, log: {server.log_path})")
            with Client(url, server.token) as client:
                _demo_run(client, args, url)
            print(f"== demo finished in {format_duration(time.monotonic() - started)}")
            if args.keep_serving:
                print(
                    f"== serving the dashboard at {url}/ (API token {server.token}); "
                    "Ctrl-C stops it"
                )
                _wait_interrupt(server.process)
    finally:
        if temp and not args.keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _wait_server(client: Client, server: LocalServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.process.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-3000:]
            raise CliError(f"the server exited with status {server.process.returncode}:\n{tail}")
        try:
            client.wait_ready(timeout=min(2.0, max(0.1, deadline - time.monotonic())))
            return
        except ServerUnreachableError:
            if time.monotonic() >= deadline:
                tail = server.log_path.read_text(errors="replace")[-3000:]
                raise CliError(
                    f"the server did not become ready within {timeout:.0f} s; log tail:\n{tail}"
                ) from None


def _demo_run(client: Client, args: argparse.Namespace, url: str) -> None:
    teacher = client.post(
        "/v1/teachers/train",
        json={
            "arch": args.arch,
            "num_classes": 10,
            "dataset": "digits",
            "epochs": args.teacher_epochs,
            "lr": 0.05,
            "batch_size": 32,
            "seed": args.seed,
        },
    )
    print(
        f"== training teacher {teacher['id']}: {args.arch} on digits, {args.teacher_epochs} epochs"
    )
    teacher = wait_for_teacher(client, teacher["id"])
    print(f"   {_teacher_line(teacher)}")
    args.teacher = teacher["id"]
    job = client.post("/v1/jobs", json=job_body(args))
    print(
        f"== searching: job {job['id']}, {job['strategy']}, {job['steps']} steps x "
        f"{job['per_step']} candidates, {args.search_epochs} distillation epoch(s) each  "
        f"({url}/#/jobs/{job['id']})"
    )
    job = watch_job(client, job["id"])
    if job["status"] != "succeeded":
        raise CliError(f"the demo job {job['id']} {job['status']}: {job.get('error')}")
    print("== results")
    print_results(client, job, top=args.top)
    print(f"== dashboard of this job: {url}/#/jobs/{job['id']}")


def _wait_interrupt(server: subprocess.Popen[bytes]) -> None:
    try:
        while server.poll() is None:
            time.sleep(0.5)
    except KeyboardInterrupt:
        print()


def _stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is not None:
        return
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


# ============================================================================ parser
def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_client_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server")
    group.add_argument(
        "--url",
        default=os.environ.get("ESNAC_URL", DEFAULT_URL),
        help="the ESNAC server (env ESNAC_URL; default %(default)s)",
    )
    group.add_argument(
        "--token",
        default=os.environ.get("ESNAC_API_TOKEN"),
        help="API token for mutating requests (env ESNAC_API_TOKEN)",
    )


def _default(model: type[BaseModel], name: str) -> Any:
    """A request field's server-side default (which the workers' settings dataclasses define)."""
    return model.model_fields[name].get_default(call_default_factory=True)


def _add_search_options(parser: argparse.ArgumentParser, demo: bool = False) -> None:
    """Search options; outside the demo each defaults to None (not sent: the server default)."""

    def option(flag: str, demo_value: Any, model: type[BaseModel], name: str, text: str,
               **kw: Any) -> None:  # fmt: skip
        if demo and demo_value is not None:
            g.add_argument(flag, default=demo_value, help=f"{text} (default %(default)s)", **kw)
        else:
            server = _default(model, name)
            g.add_argument(flag, default=None, help=f"{text} (server default: {server})", **kw)

    g = parser.add_argument_group("search")
    option("--strategy", "esnac", JobCreate, "strategy", "search strategy",
           choices=("esnac", "random"))  # fmt: skip
    option("--steps", 3, JobCreate, "steps", "search steps", type=_positive_int)
    option("--per-step", 2, JobCreate, "per_step", "candidates proposed per step",
           type=_positive_int)  # fmt: skip
    option("--search-epochs", 2, SearchTrainingIn, "epochs",
           "distillation epochs per candidate", type=_positive_int)  # fmt: skip
    option("--search-batch-size", 32, SearchTrainingIn, "batch_size",
           "distillation batch size", type=_positive_int)  # fmt: skip
    option("--max-train-samples", None, SearchTrainingIn, "max_train_samples",
           "train each candidate on at most this many images", type=_positive_int)  # fmt: skip
    g.add_argument("--no-augment", action="store_true", help="no random crop / flip in search")
    option("--top-k", 1, JobCreate, "top_k", "best students fully trained at the end",
           type=_non_negative_int)  # fmt: skip
    option("--full-epochs", 2, FullTrainingIn, "epochs", "full-training epochs of the top-k",
           type=_positive_int)  # fmt: skip
    option("--full-batch-size", 32, FullTrainingIn, "batch_size",
           "full-training batch size", type=_positive_int)  # fmt: skip
    option("--reward", None, JobCreate, "reward", "what C is measured on",
           choices=("params", "flops"))  # fmt: skip
    option("--seed", 0, JobCreate, "seed", "job seed", type=int)
    option("--kernels", None, EsnacOptions, "kernels", "ESNAC: kernels per step",
           type=_positive_int)  # fmt: skip
    option("--candidates", 200, EsnacOptions, "candidates",
           "ESNAC: random candidates scored per kernel", type=_positive_int)  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    """The full `esnac` parser (also used by tests to check docker-compose commands)."""
    parser = argparse.ArgumentParser(
        prog="esnac",
        description="ESNAC: compress trained networks by Bayesian optimisation over a learned "
        "architecture embedding (ICLR 2019), as a service.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "serve",
        help="run the API, scheduler and dashboard",
        description="Run the coordinator: REST API, job scheduler and dashboard. "
        "Configured by ESNAC_* environment variables (see README).",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="bind address (default %(default)s; non-loopback needs ESNAC_API_TOKEN)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default %(default)s)")
    p.set_defaults(func=_cmd_serve)

    db = sub.add_parser("db", help="database schema", description="Manage the database schema.")
    db_sub = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    for name, func, text in (
        ("upgrade", _cmd_db_upgrade, "apply all migrations (run before `esnac serve`)"),
        ("check", _cmd_db_check, "exit non-zero unless the schema is up to date"),
    ):
        p = db_sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument(
            "--database-url",
            default=None,
            help="SQLAlchemy URL (default: ESNAC_DATABASE_URL, else ./esnac.db)",
        )
        p.set_defaults(func=func)

    teacher = sub.add_parser(
        "teacher",
        help="register or train teachers",
        description="Teachers: the trained networks to compress.",
    )
    t_sub = teacher.add_subparsers(dest="teacher_command", metavar="COMMAND", required=True)
    p = t_sub.add_parser(
        "train",
        help="train a zoo teacher on a worker",
        description="Train a teacher from the zoo on the server's workers.",
    )
    p.add_argument("--arch", required=True, help="zoo architecture, e.g. resnet20")
    p.add_argument("--dataset", required=True, help="digits, cifar10, cifar100, npz:PATH, ...")
    p.add_argument("--num-classes", type=_positive_int, required=True)
    for flag, name, kind in (
        ("--epochs", "epochs", _positive_int),
        ("--lr", "lr", float),
        ("--batch-size", "batch_size", _positive_int),
        ("--seed", "seed", int),
        ("--max-train-samples", "max_train_samples", _positive_int),
    ):
        p.add_argument(
            flag, type=kind, default=None,
            help=f"server default: {_default(TeacherTrain, name)}",
        )  # fmt: skip
    p.add_argument("--wait", action="store_true", help="wait until training finishes")
    _add_client_options(p)
    p.set_defaults(func=_cmd_teacher_train)

    p = t_sub.add_parser(
        "register",
        help="upload trained weights (safetensors)",
        description="Register a trained teacher by uploading its weights.",
    )
    p.add_argument("--arch", required=True, help="zoo architecture the weights belong to")
    p.add_argument("--num-classes", type=_positive_int, required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--weights", required=True, help="a .safetensors state dict")
    p.add_argument(
        "--accuracy",
        type=float,
        default=None,
        help="validation accuracy in [0, 1] (default: measured by the server)",
    )
    _add_client_options(p)
    p.set_defaults(func=_cmd_teacher_register)

    p = t_sub.add_parser("list", help="list teachers", description="List the teachers.")
    _add_client_options(p)
    p.set_defaults(func=_cmd_teacher_list)

    p = t_sub.add_parser("show", help="show one teacher", description="Show one teacher.")
    p.add_argument("teacher", type=int)
    p.add_argument("--json", action="store_true")
    _add_client_options(p)
    p.set_defaults(func=_cmd_teacher_show)

    p = sub.add_parser(
        "submit",
        help="submit a compression search job",
        description="Submit a compression search for a teacher.",
    )
    p.add_argument("--teacher", type=int, required=True, help="teacher id")
    p.add_argument("--dataset", default=None, help="default: the teacher's dataset")
    p.add_argument(
        "--embedding-from",
        type=int,
        default=None,
        help="reuse the learned encoder of this finished job",
    )
    _add_search_options(p)
    p.add_argument("--watch", action="store_true", help="then watch it and print the results")
    p.add_argument("--top", type=_positive_int, default=5, help="rows of the result table")
    _add_client_options(p)
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser(
        "status",
        help="list jobs, or show one job",
        description="Without JOB: list jobs. With JOB: its progress and best trial.",
    )
    p.add_argument("job", type=int, nargs="?")
    p.add_argument("--status", default=None, help="list only jobs in this state")
    p.add_argument("--limit", type=_positive_int, default=20)
    p.add_argument("--json", action="store_true")
    _add_client_options(p)
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "watch",
        help="progress bar of a job until it finishes",
        description="Follow a job: trials done, best reward so far; then results.",
    )
    p.add_argument("job", type=int)
    p.add_argument("--interval", type=float, default=2.0, help="seconds between polls")
    p.add_argument("--top", type=_positive_int, default=5)
    _add_client_options(p)
    p.set_defaults(func=_cmd_watch)

    p = sub.add_parser(
        "results",
        help="table of a job's best students",
        description="The best students of a job, best reward first.",
    )
    p.add_argument("job", type=int)
    p.add_argument("--top", type=_positive_int, default=10)
    p.add_argument("--json", action="store_true", help="the ranked trials as JSON")
    _add_client_options(p)
    p.set_defaults(func=_cmd_results)

    p = sub.add_parser("cancel", help="cancel a job", description="Cancel a queued/running job.")
    p.add_argument("job", type=int)
    _add_client_options(p)
    p.set_defaults(func=_cmd_cancel)

    p = sub.add_parser(
        "export",
        help="download a student's weights or ONNX",
        description="Download a student's weights (safetensors) or ONNX model, "
        "and its architecture (the action JSON) beside it.",
    )
    p.add_argument("trial", type=int, nargs="?", help="trial id (or use --job/--rank)")
    p.add_argument("--job", type=int, default=None, help="export the job's rank-N student")
    p.add_argument("--rank", type=_positive_int, default=1)
    p.add_argument("--format", choices=("safetensors", "onnx"), default="safetensors")
    p.add_argument("-o", "--output", required=True, help="file or directory to write")
    _add_client_options(p)
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "demo",
        help="train a teacher and compress it, offline, in minutes",
        description="A self-contained demo on this machine: SQLite + local Ray, "
        "a small teacher trained on scikit-learn's digits, a short ESNAC search "
        "with a progress bar, and the result table.",
    )
    p.add_argument("--dir", default=None, help="working directory (default: a temporary one)")
    p.add_argument(
        "--port",
        type=int,
        default=8000,
        help="server port (default %(default)s; a free one if taken)",
    )
    p.add_argument("--arch", default="resnet20", help="teacher architecture (default %(default)s)")
    p.add_argument(
        "--teacher-epochs",
        type=_positive_int,
        default=6,
        help="teacher training epochs (SGD lr 0.05, batch 32; default %(default)s)",
    )
    p.add_argument("--workers", type=_positive_int, default=2, help="trials in flight at once")
    p.add_argument("--top", type=_positive_int, default=5, help="rows of the result table")
    p.add_argument(
        "--start-timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the server (and Ray) to start",
    )
    p.add_argument(
        "--keep-serving",
        action="store_true",
        help="leave the server and dashboard running until Ctrl-C",
    )
    p.add_argument("--keep-dir", action="store_true", help="keep the temporary directory")
    _add_search_options(p, demo=True)
    p.set_defaults(func=_cmd_demo, dataset=None, embedding_from=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `esnac` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except ApiError as exc:
        print(f"esnac: error: {exc.message} (HTTP {exc.status})", file=sys.stderr)
        return 1
    except (ServerUnreachableError, CliError) as exc:
        print(f"esnac: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("esnac: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
