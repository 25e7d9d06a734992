"""Where the test suite spends its time: wall and CPU seconds of every test, as JSON.

Runs `python -m pytest` (any extra arguments are passed on) with a small plugin that records,
for every test, its wall seconds (setup + call + teardown) and the CPU seconds of this process
and of the child processes it waited for (servers, teacher checks; Ray's workers are not waited
for, so a test that trains on Ray shows its wall time but little CPU). Under pytest-xdist
(`-n 2`) the tests run in worker processes: then a test's wall seconds come from its reports
and its CPU seconds are not known.

The whole run's CPU seconds are the user + sys seconds of the entire process tree: this process
becomes the "child subreaper" of everything it starts (Linux `PR_SET_CHILD_SUBREAPER`), so a
process orphaned by its parent (a killed server's Ray, a fork server) is reparented here and its
seconds are counted when it is reaped at the end. Also the machine's GEMM speed when `--gemm`
is given, and the load average.

    python benchmarks/suite_time.py                       # the whole suite
    python benchmarks/suite_time.py -- -m "not slow"      # the quick tier
    python benchmarks/suite_time.py --out benchmarks/results/suite_time.json -- tests/service

The JSON lists the tests slowest first; `--top N` prints the N slowest.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent


def _cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


class _Timer:
    """A pytest plugin: per-test wall and CPU seconds, summed over setup, call and teardown."""

    def __init__(self) -> None:
        self.tests: dict[str, dict[str, Any]] = {}

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: Any) -> Any:
        t0, (c0, k0) = time.perf_counter(), _cpu()
        yield
        c1, k1 = _cpu()
        self.tests.setdefault(item.nodeid, {}).update({  # the outcome is already there
            "wall_s": time.perf_counter() - t0, "cpu_s": c1 - c0, "children_cpu_s": k1 - k0,
            "slow": item.get_closest_marker("slow") is not None,
        })  # fmt: skip

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self.tests.setdefault(report.nodeid, {})
        if report.when == "call" or report.outcome != "passed":
            entry["outcome"] = report.outcome
        entry["reported_s"] = entry.get("reported_s", 0.0) + report.duration
        entry.setdefault("slow", "slow" in report.keywords)


def _become_subreaper() -> bool:
    """Orphaned descendants are reparented to this process (Linux), so their CPU is counted."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(36, 1, 0, 0, 0) == 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _reap_all(wait_s: float = 30.0) -> int:
    """Stop this process's fork server, then reap every descendant that is left (waiting up to
    `wait_s` for those still running); returns how many were still alive at the end."""
    from multiprocessing import forkserver

    forkserver._forkserver._stop()  # type: ignore[attr-defined]
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 0  # none left
        if pid == 0:
            if time.monotonic() > deadline:
                return _live_children()
            time.sleep(0.2)


def _live_children() -> int:
    me = str(os.getpid())
    n = 0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == me:
                n += 1
    return n


def _gemm() -> str | None:
    script = ROOT.parent.parent / "shared" / "tools" / "gemm_speed.py"
    if not script.exists():
        return None
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    return done.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "suite_time.json")
    parser.add_argument("--top", type=int, default=15, help="print the N slowest tests")
    parser.add_argument("--gemm", action="store_true", help="record the machine's GEMM speed")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    timer = _Timer()
    load0 = os.getloadavg()
    subreaper = _become_subreaper()
    t0, (c0, k0) = time.perf_counter(), _cpu()
    code = pytest.main(["-p", "no:cacheprovider", "-q", *args.pytest_args], plugins=[timer])
    wall = time.perf_counter() - t0
    left_running = _reap_all()
    c1, k1 = _cpu()
    for v in timer.tests.values():
        v.setdefault("wall_s", v.get("reported_s", 0.0))  # under xdist: from the reports
    tests = sorted(timer.tests.items(), key=lambda kv: -kv[1].get("wall_s", 0.0))
    summary = {
        "pytest_args": args.pytest_args, "exit_code": int(code), "tests": len(tests),
        "wall_s": wall, "cpu_s": c1 - c0, "children_cpu_s": k1 - k0,
        "subreaper": subreaper, "descendants_left_running": left_running,
        "slow_tests_wall_s": sum(v.get("wall_s", 0.0) for _, v in tests if v.get("slow")),
        "load_average": [list(load0), list(os.getloadavg())],
        "gemm": _gemm() if args.gemm else None, "cpus": os.cpu_count(),
        "per_test": [{"id": k, **v} for k, v in tests],
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{len(tests)} tests, {summary['wall_s']:.0f} s wall, "
          f"{summary['cpu_s'] + summary['children_cpu_s']:.0f} s CPU; the slowest:")  # fmt: skip
    for k, v in tests[: args.top]:
        print(f"  {v.get('wall_s', 0.0):7.1f} s  {k}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
