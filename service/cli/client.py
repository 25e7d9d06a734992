"""The HTTP client of the `esnac` command line, and its errors.

The CLI talks to a coordinator only through its REST API, so everything a user sees in the
terminal is also available to scripts through the same endpoints.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx

__all__ = ["ApiError", "CliError", "Client", "ServerUnreachableError"]


class CliError(Exception):
    """A user-facing error: printed as `esnac: error: <message>`, exit status 1."""


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
