"""`service.db.retry` against real database errors (no fakes): what counts as transient, and
retrying until the database answers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import DBAPIError

from service.db.retry import (
    DatabaseUnavailableError,
    StorageUnavailableError,
    is_transient,
    retry_transient,
)

NOWHERE = "postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=2"  # nothing listens


def _error(url: str, sql: str) -> DBAPIError:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text(sql))
    except DBAPIError as e:
        return e
    finally:
        engine.dispose()
    raise AssertionError(f"{sql} did not fail")


def test_connection_failures_are_transient_and_bad_statements_are_not(tmp_path: Path) -> None:
    assert is_transient(_error(NOWHERE, "SELECT 1"))
    sqlite = f"sqlite:///{tmp_path / 'x.db'}"
    assert not is_transient(_error(sqlite, "SELECT * FROM no_such_table"))
    assert not is_transient(_error(sqlite, "SELEC 1"))
    assert not is_transient(ValueError("database is locked"))  # not a database error at all


def test_sqlite_lock_timeout_is_transient(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    holder = create_engine(url)
    waiter = create_engine(url, connect_args={"timeout": 0.1})
    with holder.connect() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
        conn.commit()
        conn.exec_driver_sql("BEGIN EXCLUSIVE")
        with pytest.raises(DBAPIError) as info, waiter.connect() as other:
            other.execute(text("SELECT * FROM t"))
        conn.rollback()
    assert is_transient(info.value)
    holder.dispose()
    waiter.dispose()


def test_retry_waits_for_the_database_and_gives_up_after_the_window(tmp_path: Path) -> None:
    good = create_engine(f"sqlite:///{tmp_path / 'ok.db'}")
    bad = create_engine(NOWHERE)
    calls: list[str] = []

    def query() -> int:  # unreachable for the first two tries, then back
        engine = bad if len(calls) < 2 else good
        calls.append(str(engine.url))
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT 7")).scalar_one())

    out = asyncio.run(retry_transient(lambda: asyncio.to_thread(query), base_delay=0.01))
    assert out == 7 and len(calls) == 3

    t = time.monotonic()
    with pytest.raises(DatabaseUnavailableError, match="unreachable") as info:
        asyncio.run(
            retry_transient(lambda: asyncio.to_thread(bad.connect), timeout=0.5, base_delay=0.05)
        )
    assert 0.4 < time.monotonic() - t < 10
    assert isinstance(info.value.__cause__, DBAPIError)

    def broken() -> None:
        with good.connect() as conn:
            conn.execute(text("SELECT * FROM missing"))

    n = len(calls)
    with pytest.raises(DBAPIError):  # not transient: raised at once, unchanged
        asyncio.run(retry_transient(lambda: asyncio.to_thread(broken), timeout=30))
    assert len(calls) == n
    good.dispose()
    bad.dispose()


def test_an_unwritable_artifact_directory_is_held_and_retried(tmp_path: Path) -> None:
    """Writes fail while a file stands where the directory was (root ignores permission bits),
    with a message naming it; a retried call succeeds once it is back, and gives up with a
    `StorageUnavailableError` after the window."""
    from service.artifacts import ArtifactDirUnavailableError, ArtifactStore
    from service.db import Storage
    from service.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(url)
    storage, root = Storage(url), tmp_path / "artifacts"
    store = ArtifactStore(root)
    root.write_text("not a directory")
    with pytest.raises(ArtifactDirUnavailableError, match="ESNAC_ARTIFACT_DIR") as info:
        store.check_writable()
    assert is_transient(info.value) and str(root) in str(info.value)
    tries: list[int] = []

    def write() -> int:
        tries.append(1)
        if len(tries) == 3:  # back on the third try
            root.unlink()
        with storage.session() as repo:
            return store.write(repo, "student", b"weights").id

    artifact_id = asyncio.run(retry_transient(lambda: asyncio.to_thread(write), base_delay=0.01))
    assert len(tries) == 3 and artifact_id >= 1
    with storage.session() as repo:
        assert store.read(repo.get_artifact(artifact_id)) == b"weights"
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # no temp left
    root.rename(tmp_path / "away")
    root.write_text("gone")
    with pytest.raises(StorageUnavailableError, match="still failing after"):
        asyncio.run(retry_transient(
            lambda: asyncio.to_thread(store.check_writable), timeout=0.3, base_delay=0.05
        ))  # fmt: skip
    storage.dispose()


def test_a_result_of_two_files_leaves_no_orphan_when_the_second_fails(tmp_path: Path) -> None:
    """A full training's weights are written, then its ONNX write fails (the directory became
    unwritable): the transaction rolls back and the weights file goes with it, so the retry
    that follows writes both anew and nothing unrecorded stays on disk."""
    from service.artifacts import ArtifactDirUnavailableError, ArtifactStore
    from service.db import Storage
    from service.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'a.db'}"
    upgrade(url)
    storage, store = Storage(url), ArtifactStore(tmp_path / "artifacts")
    real_write = store.write

    def failing_onnx(repo: Any, kind: str, data: bytes, written: Any = None) -> Any:
        if kind == "onnx":
            raise store._unavailable(OSError(28, "No space left on device"), "written")
        return real_write(repo, kind, data, written)

    store.write = failing_onnx  # type: ignore[method-assign]
    with pytest.raises(ArtifactDirUnavailableError, match="No space left"):
        with store.all_or_nothing() as written, storage.session() as repo:
            store.write(repo, "final", b"weights", written)
            store.write(repo, "onnx", b"onnx", written)
    assert list((tmp_path / "artifacts").iterdir()) == []  # the weights file went too
    store.write = real_write  # type: ignore[method-assign]
    with store.all_or_nothing() as written, storage.session() as repo:
        a = store.write(repo, "final", b"weights", written).id
        b = store.write(repo, "onnx", b"onnx", written).id
    with storage.session() as repo:
        files = {store.path(repo.get_artifact(i)).name for i in (a, b)}
    assert {p.name for p in (tmp_path / "artifacts").iterdir()} == files
    storage.dispose()
