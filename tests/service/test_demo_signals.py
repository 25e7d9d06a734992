"""`esnac demo --keep-serving` stops its whole tree on SIGTERM and on SIGINT (Ctrl-C); a plain
`esnac demo` ends with lines that point only at what still exists.

The demo starts the server in its own session (so a terminal's Ctrl-C reaches the demo, which
then stops the server in order); a signal to the demo must therefore end the server and the
local Ray it started, never leave them answering on the port.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from service.devserver import free_port

pytestmark = pytest.mark.slow


def _processes_of_session(sid: int) -> list[str]:
    """Live (not zombie) processes of session `sid`, as `pid cmdline`."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) != sid:
                continue
            if (entry / "stat").read_text().split(") ", 1)[1].startswith("Z"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        out.append(f"{entry.name} {cmd[:120]}")
    return out


def _server_pid(port: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"service.server" in cmd and str(port).encode() in cmd:
                return int(entry.name)
    raise AssertionError(f"no server process on port {port}")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_demo_its_server_and_ray(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESNAC_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "demo", "--keep-serving", "--port", str(port),
         "--teacher-epochs", "1", "--steps", "1", "--per-step", "1", "--search-epochs", "1",
         "--max-train-samples", "64", "--top-k", "0", "--workers", "1", "--dir",
         str(tmp_path / "demo")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + 300
        for line in demo.stdout:
            lines.append(line)
            if line.strip().startswith("Ctrl-C stops the server"):
                break
            assert time.monotonic() < deadline, "".join(lines)
        else:
            raise AssertionError("the demo ended early:\n" + "".join(lines))
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/healthz", timeout=5).status_code == 200
        # the printed token is the one the kept server wants for mutating requests
        [export] = [x.split() for x in lines if x.strip().startswith("export ESNAC_URL=")]
        assert export[1] == f"ESNAC_URL={url}", lines
        token = export[2].removeprefix("ESNAC_API_TOKEN=")
        cancel = url + "/v1/jobs/1/cancel"
        assert httpx.post(cancel, timeout=10).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        assert httpx.post(cancel, headers=auth, timeout=10).status_code != 401
        server_sid = os.getsid(_server_pid(port))
        assert _processes_of_session(server_sid)
        demo.send_signal(sig)
        rest = demo.communicate(timeout=90)[0]
        assert demo.returncode in (0, 130), rest
        for _ in range(50):  # the server's children may take a moment to be reaped
            if not _processes_of_session(server_sid):
                break
            time.sleep(0.2)
        assert _processes_of_session(server_sid) == []
        with pytest.raises(httpx.HTTPError):
            httpx.get(url + "/healthz", timeout=2)
    finally:
        if demo.poll() is None:
            demo.kill()


def test_the_demo_ends_pointing_only_at_what_still_exists() -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ESNAC_")}
    # the demo's temporary directory is made here (short: Ray's socket paths live under TMPDIR)
    tmp_path = Path(tempfile.mkdtemp(prefix="esd-", dir="/tmp"))
    env["TMPDIR"] = str(tmp_path)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "service.cli", "demo", "--port", str(port),
             "--teacher-epochs", "1", "--steps", "1", "--per-step", "1", "--search-epochs", "1",
             "--max-train-samples", "64", "--top-k", "0", "--workers", "1"],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        out = done.stdout + done.stderr
        assert done.returncode == 0, out
        lines = done.stdout.splitlines()
        [log_line] = [x for x in lines if x.strip().startswith("server log:")]
        assert "deleted when the demo ends" in log_line
        log = Path(log_line.split()[2])
        assert log.parent.parent == tmp_path and not log.parent.exists(), (log, out)
        after = lines[lines.index("== results") :]
        assert not [x for x in after if "http://" in x], out  # no link to the stopped server
        assert lines[-1].startswith("== stopping the server"), out
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)
