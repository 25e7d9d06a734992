"""Fixtures of the reliability suite: live servers on the session's local Ray, a fresh database.

The servers are real `python -m service.server` processes (see `harness.Server`) connected to the
Ray started by `tests/conftest.py::ray_session`; every one made through `make_server` is stopped
when the test ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.db.migrate import upgrade
from tests.reliability.harness import Server, pg_database, server_env


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'esnac.db'}"
    upgrade(url)
    return url


@pytest.fixture
def postgres_url(pg_template: str) -> Iterator[str]:
    """A fresh, migrated Postgres database of its own (so outages can target just it)."""
    with pg_database() as url:
        yield url


@pytest.fixture
def make_server(ray_session: str, tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """`make_server(database_url, **env)` -> a (not yet started) server; all stopped at the end."""
    made: list[Server] = []

    def make(database_url: str, **extra: str) -> Server:
        env = server_env(database_url, tmp_path / "artifacts", ray_session, **extra)
        server = Server(env, tmp_path / f"server{len(made)}.log")
        made.append(server)
        return server

    yield make
    for s in made:
        s.stop()
