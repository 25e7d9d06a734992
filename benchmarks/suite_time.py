"""Where the test suite spends its time: wall and CPU seconds of every test, as JSON.

Runs `python -m pytest` (any extra arguments are passed on) with a small plugin that records,
for every test, its wall seconds (setup + call + teardown), the CPU seconds of this process and
of the child processes it waited for, and `tree_cpu_s`: the CPU seconds of everything running
under this process during the test (Ray's workers and servers included; work a test leaves
running is charged to the next). Under pytest-xdist (`-n 2`) the tests run in worker processes:
then a test's wall seconds come from its reports and its CPU seconds are not known; `-- -n 0`
gives them.

The whole run's CPU seconds (`tree_cpu_s`) are the user + sys seconds of the entire process
tree, counted by the kernel in a cgroup (`cpuacct`) of the run's own (see `_CpuMeter`; as root
on Linux), so they include Ray's workers, which no parent waits for. `cpu_s` and
`children_cpu_s` are what rusage alone sees: this process and the descendants that were reaped
(the run becomes the "child subreaper", Linux `PR_SET_CHILD_SUBREAPER`, so orphans -- a killed
server's Ray, a fork server -- are reparented here and reaped at the end); before the cgroup,
their sum was the figure reported. Also the machine's GEMM speed when `--gemm` is given, and the
load average.

    python benchmarks/suite_time.py                       # the whole suite
    python benchmarks/suite_time.py -- -m "not slow"      # the quick tier
    python benchmarks/suite_time.py --out benchmarks/results/suite_time.json -- tests/service

The JSON lists the tests slowest first; `--top N` prints the N slowest.
"""

from __future__ import annotations

import argparse
import contextlib
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


_CPUACCT = Path("/sys/fs/cgroup/cpuacct")


class _CpuMeter:
    """CPU seconds (user + sys) of everything this process starts, exited processes included.

    Where it can, it moves this process into a cgroup of its own (cgroup v1 `cpuacct`, as root),
    which every descendant inherits: the kernel then counts each one's CPU whatever becomes of
    it. Reaping alone misses some: Ray's raylet lets its workers (where trials train) be reaped
    without a wait (`SIGCHLD` ignored), so their seconds never reach any parent's rusage.
    Without the cgroup: own + reaped children + live descendants (read from /proc), which
    misses exited Ray workers.
    """

    def __init__(self) -> None:
        self.cgroup: Path | None = None
        self.home = _CPUACCT / _own_cpuacct_path()  # where this process was, and goes back to
        for stale in self.home.glob("esnac_suite_*"):  # left by runs whose descendants lingered
            with contextlib.suppress(OSError):
                stale.rmdir()  # only an empty group goes
        group = self.home / f"esnac_suite_{os.getpid()}"
        try:
            group.mkdir()
        except OSError:
            return  # not root, or no cgroup v1 cpuacct here
        try:
            (group / "cgroup.procs").write_text(str(os.getpid()))
            self.cgroup = group
        except OSError:
            group.rmdir()

    @property
    def how(self) -> str:
        return "cgroup cpuacct" if self.cgroup else "rusage + /proc (misses exited Ray workers)"

    def seconds(self) -> float:
        if self.cgroup is not None:
            return int((self.cgroup / "cpuacct.usage").read_text()) / 1e9
        return _tree_cpu()

    def close(self) -> None:
        """Back to the group it came from; the run's group is removed once empty (a descendant
        still running keeps it until the next run clears it)."""
        if self.cgroup is None:
            return
        with contextlib.suppress(OSError):
            (self.home / "cgroup.procs").write_text(str(os.getpid()))
            self.cgroup.rmdir()


def _own_cpuacct_path() -> str:
    """This process's cgroup under the cpuacct hierarchy ("" for its root)."""
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "cpuacct" in controllers.split(","):
                return path.lstrip("/")
    except OSError:
        pass
    return ""


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user + sys seconds of it and of the children it has reaped)."""
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            # after the name: state ppid ... utime(12) stime(13) cutime(14) cstime(15)
            table[int(d)] = (int(fields[1]), sum(int(f) for f in fields[11:15]) / _TICK)
    return table


def _tree_cpu() -> float:
    """CPU seconds of this process's tree so far: itself, the children it reaped (and, as the
    subreaper, the orphans), and every live descendant with what each of those reaped."""
    own, reaped = _cpu()
    table = _proc_table()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    total, todo = own + reaped, list(kids.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        total += table[pid][1]
        todo.extend(kids.get(pid, []))
    return total


class _Timer:
    """A pytest plugin: per-test wall and CPU seconds, summed over setup, call and teardown."""

    def __init__(self, meter: _CpuMeter) -> None:
        self.tests: dict[str, dict[str, Any]] = {}
        self.meter = meter

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: Any) -> Any:
        t0, (c0, k0), tree0 = time.perf_counter(), _cpu(), self.meter.seconds()
        yield
        c1, k1 = _cpu()
        self.tests.setdefault(item.nodeid, {}).update({  # the outcome is already there
            "wall_s": time.perf_counter() - t0, "cpu_s": c1 - c0, "children_cpu_s": k1 - k0,
            "tree_cpu_s": self.meter.seconds() - tree0,
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
    import signal
    from multiprocessing import forkserver

    server: Any = forkserver._forkserver  # type: ignore[attr-defined]
    if server._forkserver_pid is not None:  # it lives while any process it forked does: end it
        with contextlib.suppress(OSError):
            os.kill(server._forkserver_pid, signal.SIGTERM)
    server._stop()
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
    me = os.getpid()
    return sum(1 for ppid, _ in _proc_table().values() if ppid == me)


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
    meter = _CpuMeter()
    timer = _Timer(meter)
    load0 = os.getloadavg()
    subreaper = _become_subreaper()
    t0, (c0, k0), m0 = time.perf_counter(), _cpu(), meter.seconds()
    code = pytest.main(["-p", "no:cacheprovider", "-q", *args.pytest_args], plugins=[timer])
    wall = time.perf_counter() - t0
    left_running = _reap_all()
    c1, k1, m1 = *_cpu(), meter.seconds()
    meter.close()
    for v in timer.tests.values():
        v.setdefault("wall_s", v.get("reported_s", 0.0))  # under xdist: from the reports
    tests = sorted(timer.tests.items(), key=lambda kv: -kv[1].get("wall_s", 0.0))
    summary = {
        "pytest_args": args.pytest_args, "exit_code": int(code), "tests": len(tests),
        "wall_s": wall, "cpu_s": c1 - c0, "children_cpu_s": k1 - k0,
        "tree_cpu_s": m1 - m0, "tree_cpu_measured_by": meter.how,
        "subreaper": subreaper, "descendants_left_running": left_running,
        "slow_tests_wall_s": sum(v.get("wall_s", 0.0) for _, v in tests if v.get("slow")),
        "load_average": [list(load0), list(os.getloadavg())],
        "gemm": _gemm() if args.gemm else None, "cpus": os.cpu_count(),
        "per_test": [{"id": k, **v} for k, v in tests],
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{len(tests)} tests, {summary['wall_s']:.0f} s wall, "
          f"{summary['tree_cpu_s']:.0f} s CPU ({meter.how}; reaped only: "
          f"{summary['cpu_s'] + summary['children_cpu_s']:.0f} s); the slowest:")  # fmt: skip
    for k, v in tests[: args.top]:
        print(f"  {v.get('wall_s', 0.0):7.1f} s  {k}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
