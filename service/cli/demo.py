"""`esnac demo`: a server on this machine, a digits teacher, a short search and its results."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from service.cli.client import Client, CliError
from service.cli.commands import job_body, print_results, teacher_line, wait_for_teacher, watch_job
from service.cli.render import format_duration
from service.devserver import DevServer, DevServerError, local_server

__all__ = ["cmd_demo"]


def cmd_demo(args: argparse.Namespace) -> int:
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
        with (
            _terminate_as_interrupt(),
            local_server(
                workdir, port=args.port, env=env, start_timeout=args.start_timeout
            ) as server,
        ):
            url = server.url
            print(f"== dashboard: {url}/   (API docs: {url}/docs)")
            note = "  (deleted when the demo ends; --keep-dir keeps it)"
            print(f"   server log: {server.log_path}{note if temp and not args.keep_dir else ''}")
            with Client(url, server.token) as client:
                job_id = _demo_run(client, args, url)
            print(f"== demo finished in {format_duration(time.monotonic() - started)}")
            if args.keep_serving:
                print(f"== still serving: dashboard of this job at {url}/#/jobs/{job_id}")
                print(f"   API token (for submit/cancel): {server.token}")
                print(f"   export ESNAC_URL={url} ESNAC_API_TOKEN={server.token}")
                print(f"   then e.g. esnac status {job_id}; esnac cancel <job>")
                print("   Ctrl-C stops the server")
                _wait_interrupt(server.server)
            else:
                print("== stopping the server (--keep-serving keeps it and its dashboard up)")
    except DevServerError as exc:
        raise CliError(str(exc)) from exc
    finally:
        if temp and not args.keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the server (in its own session) and its Ray are stopped
    instead of being left running. Ctrl-C (SIGINT) does so too even where the demo was started
    with SIGINT ignored (a shell script's background job: `esnac demo &` inherits SIG_IGN, and
    the demo then ignored the Ctrl-C it tells the user to press)."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    previous_int = signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def _demo_run(client: Client, args: argparse.Namespace, url: str) -> int:
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
    print(f"   {teacher_line(teacher)}")
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
    return int(job["id"])


def _wait_interrupt(server: DevServer) -> None:
    try:
        while server.running():
            time.sleep(0.5)
    except KeyboardInterrupt:
        print()
