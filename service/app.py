"""The FastAPI application: routes, error mapping, and the scheduler in its lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from sqlalchemy.exc import DBAPIError

from service.api.limits import BodyLimit
from service.api.routes import health, jobs, teachers, trials
from service.artifacts import ArtifactStore
from service.db import NotFoundError, Storage
from service.db.migrate import check
from service.db.retry import StorageUnavailableError, is_transient
from service.settings import Settings

__all__ = ["create_app"]

log = logging.getLogger(__name__)

_STATIC = Path(__file__).resolve().parent / "static"


class _NoSigtermNotice(logging.Filter):
    """Drops Ray's "SIGTERM handler is not set" warning: `ray.init` runs in a worker thread
    here, and the server's SIGTERM is uvicorn's to handle (a graceful shutdown), not Ray's."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("SIGTERM handler is not set")


_NO_SIGTERM_NOTICE = _NoSigtermNotice()  # one instance: adding it again is a no-op


def _start_ray(settings: Settings) -> bool:
    """Connect to (or start) Ray; returns whether this process started it."""
    import ray

    logging.getLogger("ray._private.worker").addFilter(_NO_SIGTERM_NOTICE)
    if ray.is_initialized():
        return False
    if settings.ray_address:
        ray.init(address=settings.ray_address, log_to_driver=False)
    else:  # a new local Ray, whatever RAY_ADDRESS this process inherited (a shell's, a test's)
        ray.init(address="local", num_cpus=settings.ray_num_cpus, log_to_driver=False)
    return True


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # Never migrate here: refuse an outdated schema with the command that fixes it.
    await asyncio.to_thread(check, settings.database_url)
    app.state.scheduler = None
    if not settings.scheduler:
        yield
        app.state.storage.dispose()
        return
    from service.pool import WorkerPool
    from service.scheduler import Scheduler

    # Hand the GIL over more often (default 5 ms): a BO fit in a thread then delays a request
    # by less.
    sys.setswitchinterval(0.001)
    started_ray = await asyncio.to_thread(_start_ray, settings)
    pool = WorkerPool(settings)
    scheduler = Scheduler(settings, app.state.storage, app.state.artifacts, pool)
    app.state.scheduler = scheduler
    task = asyncio.create_task(scheduler.run(), name="scheduler")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await scheduler.stop()
        pool.shutdown()
        if started_ray:
            import ray

            await asyncio.to_thread(ray.shutdown)
        app.state.storage.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. The database schema is checked (not migrated) when the app starts."""
    settings = settings or Settings()
    # The API docs (/docs, /redoc) load Swagger UI and ReDoc from files shipped in the
    # `fastapi-offline` package, never from a CDN: clusters are often air-gapped.
    app = FastAPIOffline(
        title="ESNAC",
        version="0.1.0",
        description="Neural network compression by Bayesian optimisation over a learned "
        "architecture embedding (ESNAC, ICLR 2019).",
        lifespan=_lifespan,
    )
    app.state.settings = settings
    app.state.storage = Storage(settings.database_url)
    app.state.artifacts = ArtifactStore(settings.artifact_dir)
    app.state.scheduler = None

    app.add_middleware(BodyLimit, max_upload_mb=settings.max_upload_mb)

    @app.exception_handler(NotFoundError)
    async def _not_found(_request: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)

    @app.exception_handler(DBAPIError)
    async def _database_down(request: Request, exc: DBAPIError) -> JSONResponse:
        # A database restart is the client's cue to retry, not a server bug: 503 + Retry-After.
        if not is_transient(exc):
            raise exc  # a real error: logged with its traceback, answered 500
        log.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc.orig)
        return JSONResponse(
            {"detail": "the database is unavailable (restarting?); retry in a few seconds"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "2"},
        )

    @app.exception_handler(StorageUnavailableError)
    async def _storage_down(request: Request, exc: StorageUnavailableError) -> JSONResponse:
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": str(exc)},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "30"},
        )

    for r in (health.router, teachers.router, jobs.router, trials.router):
        app.include_router(r)
    # The dashboard (plain files shipped in the package) at `/`; mounted last so that every API
    # route above takes precedence.
    app.mount("/", StaticFiles(directory=_STATIC, html=True), name="dashboard")
    return app
