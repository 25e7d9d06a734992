"""Shared fixtures: databases (SQLite and the real Postgres) and one local Ray per session.

Postgres: a fresh, uniquely named database on 127.0.0.1:5432 (user postgres) per test session,
migrated once and used as a template for a fresh database per test; all dropped afterwards.
Without a reachable server the Postgres variants skip -- except in CI (`CI=true`), where they
fail instead.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ADMIN = os.environ.get("ESNAC_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def require(what: str, available: bool, fix: str) -> None:
    """Skip a test whose outside part (Postgres, Chromium) is missing -- with one clear reason
    -- except in CI (`CI=true`), where every part is required and its absence fails the test."""
    if available:
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is required in CI: {fix}")
    pytest.skip(f"no {what} on this machine ({fix})")


def postgres_listening(host: str = "127.0.0.1", port: int = 5432) -> bool:
    import socket

    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


PG_START = "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"


@pytest.fixture
def postgres_up() -> None:
    """Postgres must accept connections on 127.0.0.1:5432 (skipped without, outside CI)."""
    require("Postgres on 127.0.0.1:5432", postgres_listening(), PG_START)


def _pg_admin():  # type: ignore[no-untyped-def]
    from sqlalchemy import create_engine

    return create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT", pool_pre_ping=True)


def _pg_url(name: str) -> str:
    return PG_ADMIN.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """Name of a migrated Postgres database (a template for per-test databases)."""
    from sqlalchemy import text
    from sqlalchemy.exc import OperationalError

    try:
        engine = _pg_admin()
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
    except OperationalError as e:
        # the same reason as `postgres_up`; the driver's first line says what failed
        first = f"{e}".splitlines()[0].removeprefix("(psycopg.OperationalError) ")
        require("Postgres on 127.0.0.1:5432", False, f"{PG_START}; {first}")
    from service.db.migrate import upgrade

    name = f"esnac_test_{uuid.uuid4().hex[:12]}"
    with engine.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        upgrade(_pg_url(name))
        yield name
    finally:
        with engine.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from service.db.migrate import upgrade

    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database per test: SQLite, then the real Postgres."""
    if request.param == "sqlite":
        path = tmp_path / "esnac.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    from sqlalchemy import text

    template = request.getfixturevalue("pg_template")
    name = f"{template}_{uuid.uuid4().hex[:8]}"
    engine = _pg_admin()
    with engine.connect() as c:
        c.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield _pg_url(name)
    finally:
        with engine.connect() as c:
            c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[str]:
    """One new local Ray per test process (`ray.init(address="local", num_cpus=2)`: never a
    cluster that is already running, such as test_cluster's in the other xdist process)."""
    import ray

    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


#: Fixtures that reach the shared Postgres server (one test restarts it: test_faults).
_PG_FIXTURES = {"pg_template", "postgres_url", "postgres_up"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist's `--dist loadgroup` (the default, see pyproject): a file's tests
    run in one process, so its module fixtures are built once; every test that reaches Postgres
    runs in one process ("postgres"), so a test that restarts the server meets no other."""
    for item in items:
        pg = item.get_closest_marker("postgres") is not None or bool(
            _PG_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        )
        group = "postgres" if pg else item.nodeid.split("::", 1)[0]
        item.add_marker(pytest.mark.xdist_group(group))


def pytest_configure(config: pytest.Config) -> None:
    """One intra-op thread for the test process: the tests run small batches, where a second
    OpenMP thread only adds synchronisation (5-100x slower on a loaded 2-core machine)."""
    import torch

    torch.set_num_threads(1)
