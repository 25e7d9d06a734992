"""Riding out database outages: which errors are transient, and retrying calls with backoff.

A Postgres restart (or failover) breaks every pooled connection and refuses new ones for a few
seconds. `pool_pre_ping` replaces dead connections when the database is back; this module covers
the window itself: the scheduler's storage calls are retried with exponential backoff until the
database answers again, so a result that arrives during an outage is held in memory and written
once it is back instead of failing the trial (or the job).

Retrying is safe because every storage call is one transaction (`Storage.session()`): a call that
failed was rolled back, and running it again starts from the same state.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

__all__ = [
    "DatabaseUnavailableError",
    "StorageUnavailableError",
    "is_transient",
    "retry_transient",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: How long a storage call keeps retrying before the error is raised (seconds).
DEFAULT_TIMEOUT = 300.0
#: First wait between attempts; doubles up to `MAX_DELAY` (with jitter).
BASE_DELAY = 0.2
MAX_DELAY = 5.0

# SQLite reports missing tables, bad SQL etc. as OperationalError too; only these are transient.
_SQLITE_TRANSIENT = ("database is locked", "database is busy", "disk i/o error", "unable to open")


class DatabaseUnavailableError(RuntimeError):
    """The database stayed unreachable for longer than the retry window."""


class StorageUnavailableError(RuntimeError):
    """Storage beside the database (the artifact directory: full, read-only, unmounted) cannot be
    written now. Transient like a database outage: the scheduler holds the result and retries,
    the API answers 503 with this message."""


def is_transient(exc: BaseException) -> bool:
    """Whether `exc` means "the database is (briefly) unreachable", so a retry may succeed.

    True for lost or refused connections (a restart, a failover, a network blip), a pool that
    timed out, Postgres shutting down or still starting up, SQLite's lock timeouts and an artifact
    directory that cannot be written (`StorageUnavailableError`); False for everything that would
    fail again (constraint violations, bad SQL, missing tables).
    """
    if isinstance(exc, PoolTimeoutError | StorageUnavailableError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated:
        return True
    if not isinstance(exc, (OperationalError, InterfaceError)):
        return False
    module = type(exc.orig).__module__ if exc.orig is not None else ""
    if module.startswith("sqlite3"):
        message = str(exc.orig).lower()
        return any(m in message for m in _SQLITE_TRANSIENT)
    return True


async def retry_transient(
    call: Callable[[], Awaitable[T]],
    *,
    what: str = "database call",
    timeout: float = DEFAULT_TIMEOUT,
    base_delay: float = BASE_DELAY,
    max_delay: float = MAX_DELAY,
) -> T:
    """Await `call()`; on a transient database error wait (exponential backoff) and try again.

    Args:
        call: makes a fresh awaitable per attempt (e.g. `lambda: asyncio.to_thread(fn)`).
        what: named in the log lines.
        timeout: give up after this many seconds of failures.
        base_delay: first wait in seconds; doubles each attempt up to `max_delay`.
        max_delay: longest wait between two attempts.

    Returns:
        What `call()` returned once it succeeded.

    Raises:
        DatabaseUnavailableError: still failing with transient errors after `timeout` seconds
            (the last error is its `__cause__`).
        StorageUnavailableError: the same, when the last error was the artifact directory's.
        Exception: any non-transient error of `call()`, unchanged.
    """
    start = time.monotonic()
    delay = base_delay
    failures = 0
    kind = "database"
    while True:
        try:
            out = await call()
        except Exception as e:
            if not is_transient(e):
                raise
            failures += 1
            kind = "storage" if isinstance(e, StorageUnavailableError) else "database"
            waited = time.monotonic() - start
            if waited >= timeout and isinstance(e, StorageUnavailableError):
                raise StorageUnavailableError(
                    f"{what}: still failing after {waited:.0f} s ({failures} tries): {e}"
                ) from e
            if waited >= timeout:
                raise DatabaseUnavailableError(
                    f"{what}: the database was unreachable for {waited:.0f} s ({failures} tries); "
                    f"last error: {e.__class__.__name__}: {str(e).splitlines()[0]}. Check that "
                    "the database server is running and ESNAC_DATABASE_URL points to it."
                ) from e
            pause = min(delay, max_delay, max(0.0, timeout - waited)) * (0.5 + random.random() / 2)
            log.warning(
                "%s unavailable during %s (try %d, %s); retrying in %.2f s",
                kind, what, failures, str(e).splitlines()[0][:200], pause,
            )  # fmt: skip
            await asyncio.sleep(pause)
            delay = min(delay * 2, max_delay)
            continue
        if failures:
            log.warning(
                "%s back: %s succeeded after %d failed tries (%.1f s)",
                kind, what, failures, time.monotonic() - start,
            )  # fmt: skip
        return out
