"""Terminal rendering of the `esnac` command line: tables, counts, durations, a progress bar."""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = [
    "PARETO_AXES",
    "RESULT_HEADERS",
    "TERMINAL_JOB_STATES",
    "ProgressBar",
    "format_count",
    "format_duration",
    "format_table",
    "has_latency",
    "pareto_trials",
    "result_headers",
    "ranked_trials",
    "results_rows",
    "within_target",
]

TERMINAL_JOB_STATES = frozenset({"succeeded", "failed", "cancelled"})
RESULT_HEADERS = (
    "rank",
    "trial",
    "step/kernel",
    "params",
    "accuracy",
    "times smaller",
    "C",
    "reward",
    "final acc",
)


def format_duration(seconds: float) -> str:
    """`75.2` -> `1m15s`; `3.4` -> `3.4s`."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def format_count(n: int | None) -> str:
    """`1234567` -> `1.23M`; `27450` -> `27.4k`."""
    if n is None:
        return "-"
    if n >= 1_000_000:
        return f"{n / 1_000_000:.2f}M"
    if n >= 10_000:
        return f"{n / 1_000:.1f}k"
    return str(n)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table; columns whose cells are numbers are right-aligned."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def numeric(cell: str) -> bool:
        return cell[:1].isdigit() or (cell[:1] in "-+." and cell[1:2].isdigit())

    body = cells[1:]
    right = [
        any(numeric(r[i]) for r in body) and all(numeric(r[i]) or r[i] == "-" for r in body)
        for i in range(len(headers))
    ]

    def line(row: list[str]) -> str:
        out = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)]
        return "  ".join(out).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule] + [line(r) for r in cells[1:]])


def ranked_trials(
    trials: Sequence[dict[str, Any]], floor: float | None = None
) -> list[dict[str, Any]]:
    """Succeeded trials, best reward first (ties: fewer parameters first); those below the
    job's accuracy `floor` (`JobPublic.floor_accuracy`) after all others."""
    done = [t for t in trials if t["status"] == "succeeded" and t.get("reward") is not None]
    return sorted(done, key=lambda t: (_below(t, floor), -t["reward"], t.get("params") or 0))


def _below(t: dict[str, Any], floor: float | None) -> bool:
    return floor is not None and (t.get("accuracy") or 0.0) < floor


#: the `--pareto` axes: what "smaller" is measured on, as a trial field
PARETO_AXES = {"params": "params", "flops": "flops", "latency": "latency_ms"}


def pareto_trials(trials: Sequence[dict[str, Any]], axis: str) -> list[dict[str, Any]]:
    """The succeeded students no other student beats on both `axis` (smaller) and search
    accuracy (higher), smallest first (`axis`: a `PARETO_AXES` key)."""
    key = PARETO_AXES[axis]
    done = [
        t
        for t in trials
        if t["status"] == "succeeded" and t.get(key) is not None and t.get("accuracy") is not None
    ]
    front: list[dict[str, Any]] = []
    for t in sorted(done, key=lambda t: (t[key], -t["accuracy"])):
        if not front or t["accuracy"] > front[-1]["accuracy"]:
            front.append(t)
    return front


def has_latency(trials: Sequence[dict[str, Any]]) -> bool:
    """Whether the job measured latencies (then the result table has a latency column)."""
    return any(t.get("latency_ms") is not None for t in trials)


def within_target(target: dict[str, Any], trial: dict[str, Any]) -> bool:
    """Whether a student meets a job's size budget (`JobPublic.target`)."""
    size = trial.get(target["measure"])
    return size is not None and size <= target["value"]


def result_headers(latency: bool, budget: bool = False) -> tuple[str, ...]:
    """The result table's headers, with a `latency` column after `params` when measured and a
    `budget` column (whether the student meets the job's) at the end for a budgeted job."""
    headers = RESULT_HEADERS + (("budget",) if budget else ())
    if not latency:
        return headers
    i = headers.index("params") + 1
    return (*headers[:i], "latency", *headers[i:])


def results_rows(
    trials: Sequence[dict[str, Any]],
    teacher: dict[str, Any],
    top: int,
    latency: bool = False,
    pareto: str | None = None,
    target: dict[str, Any] | None = None,
    floor: float | None = None,
) -> list[list[Any]]:
    """Rows of the result table: the teacher first, then the `top` best students (with the
    `result_headers(latency, target is not None)` columns; the teacher's latency is the median
    of its measurements on the trials' workers). With `pareto` (a `PARETO_AXES` key) the
    students are the Pareto front on that axis and accuracy, smallest first, instead of the
    best rewards; with `target` (a job's size budget) a last column says which meet it; with
    `floor` the students below it come last, marked."""
    students = pareto_trials(trials, pareto) if pareto else ranked_trials(trials, floor)
    teacher_params = int(teacher["params"])
    rows: list[list[Any]] = [
        [
            "teacher",
            teacher["arch"],
            "-",
            format_count(teacher_params),
            _pct(teacher.get("accuracy")),
            "1.00x",
            "0",
            "-",
            "-",
        ]
    ]
    for rank, t in enumerate(students[:top], start=1):
        params = t.get("params")
        smaller = teacher_params / params if params else math.inf
        final = t.get("final") or {}
        rows.append(
            [
                rank,
                t["id"],
                _step_kernel(t),
                format_count(params),
                _pct(t.get("accuracy")),
                f"{smaller:.2f}x",
                f"{t['compression']:.4f}" if t.get("compression") is not None else None,
                f"{t['reward']:.4f}"
                + (f" (finish {t['finish']['reward']:.4f})" if t.get("finish") else "")
                + (" (below floor)" if _below(t, floor) else ""),
                _pct(final.get("accuracy")),
            ]
        )
        if target is not None:
            rows[-1].append("meets" if within_target(target, t) else "over")
    if target is not None:
        rows[0].append("-")
    if latency:
        i = RESULT_HEADERS.index("params") + 1
        measured = [t["teacher_latency_ms"] for t in trials if t.get("teacher_latency_ms")]
        column = [_ms(statistics.median(measured) if measured else None)]
        column += [_ms(t.get("latency_ms")) for t in students[:top]]
        for row, cell in zip(rows, column, strict=True):
            row.insert(i, cell)
    return rows


def _ms(x: float | None) -> str | None:
    return None if x is None else f"{x:.3g} ms"


def _step_kernel(t: dict[str, Any]) -> str:
    """`step/kernel` of the proposal ("1/3"); "0/-" for a random pick, "0/seed:uniform" for a
    budget's seed, "-" for old trials."""
    if t.get("step") is None:
        return "-"
    kernel = t.get("tag") or t.get("kernel")
    return f"{t['step']}/{'-' if kernel is None else kernel}"


def _pct(x: float | None) -> str | None:
    return None if x is None else f"{100 * x:.2f}%"


class ProgressBar:
    """A one-line progress bar on a terminal; one line per change elsewhere (CI logs).

    Args:
        stream: where to write (default stdout).
        width: characters of the bar itself.
    """

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream or sys.stdout
        self.width = width
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = ""
        self._open = False
        self._start = time.monotonic()
        self._last_note = -math.inf

    def update(self, done: int, total: int, label: str, extra: str = "") -> None:
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        filled = int(round(frac * self.width))
        bar = "#" * filled + "." * (self.width - filled)
        body = f"{label} [{bar}] {done}/{total}"
        if extra:
            body += f"  {extra}"
        if body == self._last:
            if self.tty:
                self._write_tty(body)
            return
        self._last = body
        if self.tty:
            self._write_tty(body)
        else:
            self.stream.write(f"{body}  ({format_duration(time.monotonic() - self._start)})\n")
            self.stream.flush()

    def note(self, text: str, every: float = 15.0) -> None:
        """Indeterminate progress: rewrite the line on a terminal; elsewhere (CI logs) print it
        at most once every `every` seconds."""
        if self.tty:
            self._write_tty(text)
            return
        now = time.monotonic()
        if now - self._last_note >= every:
            self._last_note = now
            self.stream.write(f"{text}  ({format_duration(now - self._start)})\n")
            self.stream.flush()

    def _write_tty(self, body: str) -> None:
        elapsed = format_duration(time.monotonic() - self._start)
        self.stream.write(f"\r\033[K{body}  {elapsed}")
        self.stream.flush()
        self._open = True

    def close(self) -> None:
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
