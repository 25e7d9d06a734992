"""Schema migrations as plain functions (what `esnac db upgrade` and the server call).

The app never migrates on import or start-up: `upgrade` is an explicit pre-start step and the
server's start-up only `check`s.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import SQLAlchemyError

from service.db.storage import make_engine

__all__ = ["SchemaError", "alembic_config", "check", "current", "head", "upgrade"]

_SCRIPTS = Path(__file__).resolve().parents[2] / "migrations"


class SchemaError(RuntimeError):
    """The database schema is missing or older than this version of the service."""


def _url(database_url: str | None) -> str:
    if database_url is not None:
        return database_url
    from service.settings import Settings

    return Settings().database_url


def alembic_config(database_url: str | None = None) -> Config:
    """An Alembic `Config` pointing at `migrations/` and the given (or configured) database."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.set_main_option("sqlalchemy.url", _url(database_url).replace("%", "%%"))
    return cfg


def upgrade(database_url: str | None = None, revision: str = "head") -> None:
    """Apply migrations up to `revision` (default: the newest) to the database."""
    command.upgrade(alembic_config(database_url), revision)


def head() -> str:
    """The newest revision this code knows."""
    rev = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if rev is None:
        raise SchemaError(f"no migrations found in {_SCRIPTS}")
    return rev


def current(database_url: str | None = None) -> str | None:
    """The database's revision, or None for an empty (never migrated) database."""
    engine = make_engine(_url(database_url))
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def check(database_url: str | None = None) -> None:
    """Raise `SchemaError` unless the database is at the newest revision.

    Raises:
        SchemaError: missing, outdated or unknown schema (or an unreachable database); the
            message names the command that fixes it.
    """
    url = _url(database_url)
    try:
        rev = current(url)
    except SQLAlchemyError as e:
        raise SchemaError(
            f"cannot reach the database {_safe(url)}: {e.__class__.__name__}: {e}"
        ) from e
    want = head()
    if rev == want:
        return
    if rev is None:
        raise SchemaError(
            f"the database {_safe(url)} has no ESNAC schema; run `esnac db upgrade` first"
        )
    raise SchemaError(
        f"the database {_safe(url)} is at schema revision {rev}, this version needs {want}; "
        "run `esnac db upgrade`"
    )


def _safe(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only used for a message
        return "<database>"
