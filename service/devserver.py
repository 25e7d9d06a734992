"""A coordinator in a child process on this machine: `esnac demo`, the tests and the benchmarks.

`DevServer` runs `python -m service.server` on 127.0.0.1 with a given environment, waits until
`GET /readyz` answers, and stops it (gracefully, or with SIGKILL to emulate a crash).
`local_server` adds what the demo needs: a fresh SQLite database with the current schema, an
artifact directory and an API token, all under one working directory.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx

__all__ = ["DevServer", "DevServerError", "LocalServer", "free_port", "local_server"]

S = TypeVar("S", bound="DevServer")


class DevServerError(RuntimeError):
    """The server exited or did not become ready; the message ends with its log's tail."""


def free_port(preferred: int = 0) -> int:
    """`preferred` if it is free on 127.0.0.1, else any free port."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise DevServerError("no free TCP port on 127.0.0.1")


class DevServer:
    """`python -m service.server` on 127.0.0.1 in a subprocess; its output is appended to `log`.

    Args:
        env: the server's whole environment (its `ESNAC_*` settings included).
        log: file the server's stdout and stderr are appended to.
        port: TCP port (0: a free one, chosen now so that a restart keeps the URL).
        cwd: the server's working directory (default: this process's).
        new_session: start it in its own session, so a terminal's Ctrl-C reaches only the
            parent, which then stops the server in order (the demo).
    """

    def __init__(
        self,
        env: dict[str, str],
        log: Path,
        *,
        port: int = 0,
        cwd: Path | None = None,
        new_session: bool = False,
    ) -> None:
        self.env, self.log, self.cwd, self.new_session = env, log, cwd, new_session
        self.port = free_port(port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self: S, timeout: float = 120.0) -> S:
        """Start the process and wait for `GET /readyz` (the database and Ray) to answer 200.

        Raises:
            DevServerError: it exited, or was not ready within `timeout` seconds (it is stopped).
        """
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service.server", "--host", "127.0.0.1",
                 "--port", str(self.port)],
                env=self.env, cwd=self.cwd, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=self.new_session,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise DevServerError(
                    f"the server exited with status {self.proc.returncode}:\n{self.tail()}"
                )
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise DevServerError(
                    f"the server did not become ready within {timeout:.0f} s; "
                    f"log tail:\n{self.tail()}"
                )
            time.sleep(0.3)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, n: int = 3000) -> str:
        """The last `n` characters of the server's log."""
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def kill(self) -> None:
        """Crash it (SIGKILL): no shutdown code runs."""
        if self.proc is not None and self.running():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 30.0) -> None:
        """Interrupt it (it shuts its scheduler and Ray down); SIGKILL after `timeout` s."""
        if self.proc is None or not self.running():
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()


@dataclass(frozen=True)
class LocalServer:
    """A started `local_server`: where it answers, its token and its files."""

    url: str
    token: str
    workdir: Path
    log_path: Path
    server: DevServer


@contextlib.contextmanager
def local_server(
    workdir: Path,
    *,
    port: int = 0,
    env: dict[str, str] | None = None,
    start_timeout: float = 120.0,
) -> Iterator[LocalServer]:
    """Run a server on loopback with an embedded SQLite database under `workdir`.

    The schema of `<workdir>/esnac.db` is upgraded first; artifacts go to `<workdir>/artifacts`,
    the server's output to `<workdir>/server.log`. A fresh API token is set. On exit the server
    is interrupted (and killed if it does not stop within 20 s).

    Args:
        workdir: directory for the database, artifacts and log (created if missing).
        port: TCP port on 127.0.0.1 (0 or taken: any free one).
        env: extra `ESNAC_*` settings for the server (e.g. `ESNAC_WORKERS`).
        start_timeout: seconds to wait for `GET /readyz` (the database and Ray).

    Raises:
        DevServerError: the server exited or did not become ready; the message has its log's tail.
    """
    from service.db.migrate import upgrade

    workdir.mkdir(parents=True, exist_ok=True)
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
    server = DevServer(child_env, log_path, port=port, cwd=workdir, new_session=True)
    try:
        server.start(timeout=start_timeout)
        yield LocalServer(server.url, token, workdir, log_path, server)
    finally:
        server.stop(timeout=20)
