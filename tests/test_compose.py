"""Cross-checks of docker-compose.yml, the Dockerfiles and their entrypoints against the code.

There is no Docker engine here, so the compose file is checked as data against the real CLI
parser and the real Settings, and the entrypoint scripts run as plain commands (the wait-for
script against the real local Postgres).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from service.cli import build_parser
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
SCRIPTS = sorted(DOCKER.glob("*.sh"))
_INTERPOLATION = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def _interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR}`, `${VAR:-default}` and `${VAR:?error}` against `env`."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        if op == "-":
            return arg
        if op == "?":
            raise KeyError(f"{name}: {arg}")
        return ""

    return _INTERPOLATION.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def _dockerfile(path: Path) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    """ENTRYPOINT, CMD (exec form) and COPY (source, destination) pairs of a Dockerfile."""
    text = path.read_text().replace("\\\n", " ")
    entry = cmd = None
    copies = []
    for line in text.splitlines():
        word, _, rest = line.strip().partition(" ")
        if word == "ENTRYPOINT":
            entry = json.loads(rest)
        elif word == "CMD":
            cmd = json.loads(rest)
        elif word == "COPY":
            parts = [p for p in rest.split() if not p.startswith("--")]
            copies += [(src, parts[-1]) for src in parts[:-1]]
    assert entry is not None and cmd is not None, f"{path.name} needs exec-form ENTRYPOINT/CMD"
    return entry, cmd, copies


def test_expected_services(services: dict[str, Any]) -> None:
    assert set(services) == {"postgres", "migrate", "coordinator", "ray-head", "ray-worker"}


def test_every_esnac_command_parses_with_the_real_cli(services: dict[str, Any]) -> None:
    parser = build_parser()
    commands = {name: s["command"] for name, s in services.items() if "command" in s}
    esnac = {n: c for n, c in commands.items() if c[0] == "esnac"}
    assert set(esnac) == {"migrate", "coordinator"}
    # SystemExit (a failure) on an unknown command; each service runs the command it is for
    assert parser.parse_args(esnac["migrate"][1:]).func.__name__ == "cmd_db_upgrade"
    serve = parser.parse_args(esnac["coordinator"][1:])
    assert serve.func.__name__ == "cmd_serve"
    assert serve.host == "0.0.0.0"  # reachable from other containers: needs a token
    assert "ESNAC_API_TOKEN" in _env(services["coordinator"])


def test_dockerfile_defaults_are_real_commands() -> None:
    parser = build_parser()
    entry, cmd, copies = _dockerfile(DOCKER / "coordinator.Dockerfile")
    assert cmd[0] == "esnac"
    parser.parse_args(cmd[1:])
    assert entry == ["/opt/esnac/docker/entrypoint-coordinator.sh"]
    entry_w, cmd_w, copies_w = _dockerfile(DOCKER / "worker.Dockerfile")
    assert entry_w == ["/opt/esnac/docker/entrypoint-ray.sh"] and cmd_w == ["worker"]
    for src, _ in copies + copies_w:
        matches = list(ROOT.glob(src))
        assert matches, f"COPY {src}: nothing in the build context matches"
    for script in ("entrypoint-coordinator.sh", "entrypoint-ray.sh", "wait-for.sh"):
        assert os.access(DOCKER / script, os.X_OK), f"docker/{script} must be executable"


def test_ray_service_commands_are_entrypoint_modes(services: dict[str, Any]) -> None:
    modes = set(re.findall(r"^\s{4}(\w+)\)", (DOCKER / "entrypoint-ray.sh").read_text(), re.M))
    assert services["ray-head"]["command"] == ["head"]
    assert services["ray-worker"]["command"] == ["worker"]
    assert {"head", "worker"} <= modes
    built = {s["image"]: s["build"]["dockerfile"] for s in services.values() if "build" in s}
    for name in ("ray-head", "ray-worker"):
        assert built[services[name]["image"]] == "docker/worker.Dockerfile"
    for name in ("migrate", "coordinator"):
        assert built[services[name]["image"]] == "docker/coordinator.Dockerfile"
    for name, s in services.items():
        if "image" in s and "build" not in s and name != "postgres":
            assert s["image"] in built, f"{name}: image {s['image']} is built by no service"


def test_every_esnac_variable_is_a_real_setting(services: dict[str, Any]) -> None:
    fields = set(Settings.model_fields)
    seen = set()
    for name, service in services.items():
        for key in _env(service):
            if key.startswith("ESNAC_"):
                seen.add(key)
                assert key[len("ESNAC_") :].lower() in fields, f"{name}: {key} is not a setting"
    scripts = " ".join(p.read_text() for p in SCRIPTS)
    for key in set(re.findall(r"\bESNAC_[A-Z_]+\b", scripts)):
        assert key[len("ESNAC_") :].lower() in fields, f"docker/*.sh reads {key}, not a setting"
    assert {"ESNAC_DATABASE_URL", "ESNAC_RAY_ADDRESS", "ESNAC_API_TOKEN"} <= seen


def test_coordinator_environment_builds_valid_settings(
    services: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    for key in list(os.environ):
        if key.startswith("ESNAC_"):
            monkeypatch.delenv(key)
    with pytest.raises(KeyError, match="ESNAC_API_TOKEN"):
        {k: _interpolate(v, {}) for k, v in _env(services["coordinator"]).items()}
    env = {
        k: _interpolate(v, {"ESNAC_API_TOKEN": "t0ken"})
        for k, v in _env(services["coordinator"]).items()
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.api_token == "t0ken"
    assert settings.ray_address == "ray-head:6379"
    assert settings.gpus_per_trial >= 1


def test_database_url_matches_postgres_service(services: dict[str, Any]) -> None:
    pg = _env(services["postgres"])
    pg_env = {"POSTGRES_PASSWORD": "secret"}
    for name in ("migrate", "coordinator"):
        url = make_url(_interpolate(_env(services[name])["ESNAC_DATABASE_URL"], pg_env))
        assert url.get_backend_name() == "postgresql" and url.host == "postgres"
        assert url.port == 5432
        assert url.username == pg["POSTGRES_USER"] and url.database == pg["POSTGRES_DB"]
        assert url.password == _interpolate(pg["POSTGRES_PASSWORD"], pg_env)
    test = services["postgres"]["healthcheck"]["test"]
    check = shlex.split(test[-1] if test[0] == "CMD-SHELL" else " ".join(test[1:]))
    assert check[0] == "pg_isready"
    assert check[check.index("-U") + 1] == pg["POSTGRES_USER"]
    assert check[check.index("-d") + 1] == pg["POSTGRES_DB"]


def test_start_order(services: dict[str, Any]) -> None:
    migrate = services["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no"  # one-shot
    coord = services["coordinator"]["depends_on"]
    assert coord["migrate"]["condition"] == "service_completed_successfully"
    assert "ray-head" in coord
    assert "ray-head" in services["ray-worker"]["depends_on"]


def test_ray_addresses_point_at_the_head(services: dict[str, Any]) -> None:
    head_port = re.search(r"RAY_PORT:-(\d+)", (DOCKER / "entrypoint-ray.sh").read_text())
    assert head_port is not None
    head = f"ray-head:{head_port.group(1)}"
    assert _env(services["coordinator"])["ESNAC_RAY_ADDRESS"] == head
    assert _env(services["ray-worker"])["RAY_HEAD_ADDRESS"] == head


def test_gpu_worker_is_reserved_and_scalable(services: dict[str, Any]) -> None:
    worker = services["ray-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
    reserved = sum(int(d.get("count", 1)) for d in devices)
    assert int(_env(worker)["RAY_WORKER_GPUS"]) == reserved
    # `--scale ray-worker=N` fails with a fixed name or a published host port.
    assert "container_name" not in worker and "ports" not in worker


def _published(service: dict[str, Any]) -> list[tuple[str, int]]:
    out = []
    for spec in service.get("ports", []):
        host, container = _interpolate(str(spec), {}).rsplit(":", 1)
        out.append((host, int(container)))
    return out


def test_ports_are_the_ones_services_listen_on(services: dict[str, Any]) -> None:
    parser = build_parser()
    serve = parser.parse_args(services["coordinator"]["command"][1:])
    assert [c for _, c in _published(services["coordinator"])] == [serve.port]
    health = " ".join(services["coordinator"]["healthcheck"]["test"])
    assert f"127.0.0.1:{serve.port}/readyz" in health
    dash = re.search(r"RAY_DASHBOARD_PORT:-(\d+)", (DOCKER / "entrypoint-ray.sh").read_text())
    assert dash is not None
    assert [c for _, c in _published(services["ray-head"])] == [int(dash.group(1))]
    hosts = [h for s in services.values() for h, _ in _published(s)]
    assert len(hosts) == len(set(hosts)), f"two services publish the same host port: {hosts}"


def test_volumes_are_declared_used_and_hold_the_configured_dirs(
    compose: dict[str, Any], services: dict[str, Any]
) -> None:
    declared = set(compose["volumes"])
    used = set()
    for name, service in services.items():
        mounts = {}
        for spec in service.get("volumes", []):
            source, target = str(spec).split(":")[:2]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
            mounts[target] = source
        coordinator = _env(services["coordinator"])
        wanted = {
            "coordinator": ("ESNAC_ARTIFACT_DIR", "ESNAC_DATA_DIR"),
            # the coordinator sends its data dir to the workers, which load datasets from it
            "ray-worker": ("ESNAC_DATA_DIR",),
        }.get(name, ())
        for key in wanted:
            path = coordinator[key]
            assert any(path == t or path.startswith(t + "/") for t in mounts), (
                f"{name}: {key}={path} is not on a volume"
            )
    assert used == declared, f"declared but unused volumes: {declared - used}"
    assert any(
        str(v).endswith(":/var/lib/postgresql/data") for v in services["postgres"]["volumes"]
    )


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_valid_bash(script: Path) -> None:
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_up")
def test_wait_for_real_postgres_then_runs_command() -> None:
    result = subprocess.run(
        [str(DOCKER / "wait-for.sh"), "-t", "10", "127.0.0.1:5432", "--", "echo", "started"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["wait-for: 127.0.0.1:5432 is up", "started"]


def test_wait_for_gives_up_with_a_message() -> None:
    start = time.monotonic()
    result = subprocess.run(
        [str(DOCKER / "wait-for.sh"), "-t", "2", "127.0.0.1:1", "--", "echo", "never"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1 and "never" not in result.stdout
    assert "127.0.0.1:1 did not accept connections within 2s" in result.stderr
    assert time.monotonic() - start < 10


@pytest.mark.postgres
@pytest.mark.usefixtures("postgres_up")
def test_coordinator_entrypoint_waits_for_the_database_url() -> None:
    env = dict(
        os.environ,
        ESNAC_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        WAIT_FOR_TIMEOUT="10",
    )
    env.pop("ESNAC_RAY_ADDRESS", None)
    result = subprocess.run(
        [str(DOCKER / "entrypoint-coordinator.sh"), "echo", "serving"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["wait-for: 127.0.0.1:5432 is up", "serving"]

    env.update(ESNAC_DATABASE_URL="postgresql+psycopg://u@127.0.0.1:1/x", WAIT_FOR_TIMEOUT="1")
    result = subprocess.run(
        [str(DOCKER / "entrypoint-coordinator.sh"), "echo", "serving"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 1 and "serving" not in result.stdout
    assert "127.0.0.1:1 did not accept connections" in result.stderr


def test_ray_worker_entrypoint_waits_for_the_head() -> None:
    env = dict(os.environ, RAY_HEAD_ADDRESS="127.0.0.1:1", WAIT_FOR_TIMEOUT="1")
    result = subprocess.run(
        [str(DOCKER / "entrypoint-ray.sh"), "worker"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 1
    assert "127.0.0.1:1 did not accept connections" in result.stderr
    result = subprocess.run(
        [str(DOCKER / "entrypoint-ray.sh"), "echo", "other"], capture_output=True, text=True
    )
    assert result.stdout == "other\n"
