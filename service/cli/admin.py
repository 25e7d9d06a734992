"""`esnac serve` and `esnac db upgrade|check`: the commands that run on the coordinator's host."""

from __future__ import annotations

import argparse

from service.cli.client import CliError

__all__ = ["cmd_db_check", "cmd_db_upgrade", "cmd_serve"]


def cmd_serve(args: argparse.Namespace) -> int:
    from service.db.migrate import SchemaError
    from service.server import UnsafeBindError, serve
    from service.settings import Settings

    try:
        serve(Settings(), host=args.host, port=args.port)
    except (UnsafeBindError, SchemaError) as exc:
        raise CliError(str(exc)) from exc
    return 0


def _database_url(args: argparse.Namespace) -> str:
    if args.database_url:
        return str(args.database_url)
    from service.settings import Settings

    return Settings().database_url


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from service.db.migrate import current, head, upgrade

    url = _database_url(args)
    try:
        before = current(url)
        upgrade(url)
    except SQLAlchemyError as exc:
        raise CliError(f"cannot upgrade the database {_redact(url)}: {exc}") from exc
    if before is None:
        print(f"created the database schema, revision {head()} ({_redact(url)})")
    elif before != head():
        print(f"upgraded the database schema from revision {before} to {head()} "
              f"({_redact(url)})")  # fmt: skip
    else:
        print(f"database schema is up to date, revision {head()} ({_redact(url)})")
    return 0


def cmd_db_check(args: argparse.Namespace) -> int:
    from service.db.migrate import SchemaError, check

    url = _database_url(args)
    try:
        check(url)
    except SchemaError as exc:
        raise CliError(str(exc)) from exc
    print(f"database schema is current ({_redact(url)})")
    return 0


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
