"""HTTP client and terminal rendering for the `esnac` command line.

The CLI talks to a coordinator only through its REST API (issue 5), so everything a user sees in
the terminal is also available to scripts through the same endpoints.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

import httpx

__all__ = [
    "RESULT_HEADERS",
    "TERMINAL_JOB_STATES",
    "ApiError",
    "Client",
    "ProgressBar",
    "ServerUnreachableError",
    "format_count",
    "format_duration",
    "format_table",
    "ranked_trials",
    "results_rows",
]

TERMINAL_JOB_STATES = frozenset({"succeeded", "failed", "cancelled"})
RESULT_HEADERS = (
    "rank",
    "trial",
    "params",
    "accuracy",
    "times smaller",
    "C",
    "reward",
    "final acc",
)


class ApiError(Exception):
    """The server answered with an error; `message` is what it said."""

    def __init__(self, status: int, message: str, method: str, path: str) -> None:
        super().__init__(f"{message} (HTTP {status} from {method} {path})")
        self.status = status
        self.message = message


class ServerUnreachableError(Exception):
    """No ESNAC server answered at the URL."""


def _error_message(response: httpx.Response) -> str:
    """The human part of an error response (FastAPI's `detail`, validation errors joined)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip() or response.reason_phrase
    detail = body.get("detail", body) if isinstance(body, dict) else body
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
                parts.append(f"{loc}: {item.get('msg', item)}" if loc else str(item.get("msg")))
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


class Client:
    """A small synchronous client of the REST API v1.

    Args:
        url: the server's base URL, e.g. `http://127.0.0.1:8000`.
        token: the API token sent as `Authorization: Bearer <token>` (None: no header).
        timeout: seconds to wait for one response.
    """

    def __init__(self, url: str, token: str | None = None, *, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """Send a request; raise `ApiError` for a 4xx/5xx answer, `ServerUnreachableError` when
        nothing answers."""
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachableError(
                f"cannot reach the ESNAC server at {self.url} ({exc.__class__.__name__}: {exc}); "
                "start one with `esnac serve` or point --url / ESNAC_URL at a running server"
            ) from exc
        if response.status_code >= 400:
            raise ApiError(response.status_code, _error_message(response), method, path)
        return response

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=clean).json()

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        return self.request("POST", path, json=json, **kwargs).json()

    def download(self, path: str) -> bytes:
        return self.request("GET", path).content

    # ----------------------------------------------------------------------- resources
    def teacher(self, teacher_id: int) -> dict[str, Any]:
        return self.get(f"/v1/teachers/{teacher_id}")

    def job(self, job_id: int) -> dict[str, Any]:
        return self.get(f"/v1/jobs/{job_id}")

    def jobs(self, status: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        """The newest `limit` jobs (all pages up to `limit`)."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        while len(items) < limit:
            page = self.get("/v1/jobs", status=status, limit=min(100, limit), cursor=cursor)
            items.extend(page["items"])
            cursor = page.get("next_cursor")
            if not cursor or not page["items"]:
                break
        return items[:limit]

    def trials(self, job_id: int, page_size: int = 500) -> list[dict[str, Any]]:
        """Every trial of a job, latest state of each, ordered by `number`."""
        by_id: dict[int, dict[str, Any]] = {}
        for trial in self.iter_trial_updates(job_id, page_size=page_size):
            by_id[trial["id"]] = trial
        return sorted(by_id.values(), key=lambda t: t["number"])

    def iter_trial_updates(
        self, job_id: int, cursor: str | None = None, page_size: int = 500
    ) -> Iterator[dict[str, Any]]:
        """Trials created or changed after `cursor`, page by page, until none are waiting."""
        while True:
            page = self.get(f"/v1/jobs/{job_id}/trials", limit=page_size, cursor=cursor)
            yield from page["items"]
            cursor = page.get("next_cursor") or cursor
            if not page.get("has_more"):
                return

    def wait_ready(self, timeout: float, poll: float = 0.5) -> None:
        """Wait until `GET /readyz` answers 200 (database and Ray reachable)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                response = self._http.get("/readyz")
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}: {_error_message(response)}"
            except httpx.TransportError as exc:
                last = f"{exc.__class__.__name__}: {exc}"
            time.sleep(poll)
        raise ServerUnreachableError(
            f"the server at {self.url} was not ready within {timeout:.0f} s (last: {last})"
        )


# --------------------------------------------------------------------------- rendering
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


def ranked_trials(trials: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Succeeded trials, best reward first (ties: fewer parameters first)."""
    done = [t for t in trials if t["status"] == "succeeded" and t.get("reward") is not None]
    return sorted(done, key=lambda t: (-t["reward"], t.get("params") or 0))


def results_rows(
    trials: Sequence[dict[str, Any]], teacher: dict[str, Any], top: int
) -> list[list[Any]]:
    """Rows of the result table: the teacher first, then the `top` best students."""
    teacher_params = int(teacher["params"])
    rows: list[list[Any]] = [
        [
            "teacher",
            teacher["arch"],
            format_count(teacher_params),
            _pct(teacher.get("accuracy")),
            "1.00x",
            "0",
            "-",
            "-",
        ]
    ]
    for rank, t in enumerate(ranked_trials(trials)[:top], start=1):
        params = t.get("params")
        smaller = teacher_params / params if params else math.inf
        final = t.get("final") or {}
        rows.append(
            [
                rank,
                t["id"],
                format_count(params),
                _pct(t.get("accuracy")),
                f"{smaller:.2f}x",
                f"{t['compression']:.4f}" if t.get("compression") is not None else None,
                f"{t['reward']:.4f}",
                _pct(final.get("accuracy")),
            ]
        )
    return rows


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
