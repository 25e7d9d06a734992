"""Alembic environment: runs migrations online against `sqlalchemy.url` (set by the caller)."""

from __future__ import annotations

from alembic import context

from service.db.storage import make_engine

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=None, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:  # plain `alembic -c service/alembic.ini ...`: the service's own setting
        from service.settings import Settings

        url = Settings().database_url
    engine = make_engine(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=None, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run `esnac db upgrade`")
run_migrations_online()
