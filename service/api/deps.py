"""Shared dependencies of the routes, as `Annotated` aliases (the FastAPI template's habit)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated, Any, Protocol

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.artifacts import ArtifactStore
from service.db import Repository, Storage
from service.settings import Settings

__all__ = [
    "ArtifactsDep",
    "AuthDep",
    "SchedulerDep",
    "SchedulerStatus",
    "SessionDep",
    "SettingsDep",
    "StorageDep",
    "confined",
]


def get_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_storage(request: Request) -> Storage:
    return request.app.state.storage  # type: ignore[no-any-return]


def get_artifacts(request: Request) -> ArtifactStore:
    return request.app.state.artifacts  # type: ignore[no-any-return]


class SchedulerStatus(Protocol):
    """All the API asks of the scheduler (which the app's lifespan loads, with Ray and torch;
    the API never imports it, not even for type checking)."""

    def notify(self) -> None:
        """Look for new work now (a job or a teacher training was submitted)."""

    async def cancel(self, job_id: int) -> None:
        """Stop driving a job already marked cancelled."""

    def waiting(self) -> str | None:
        """Why no trial can start now (no workers in the cluster), or None."""

    def usage(self) -> dict[str, Any]:
        """The worker slots for `/readyz`: mode, workers, busy, waiting."""


def get_scheduler(request: Request) -> SchedulerStatus | None:
    return getattr(request.app.state, "scheduler", None)


def get_session(storage: Annotated[Storage, Depends(get_storage)]) -> Iterator[Repository]:
    """A read transaction for one request (mutating routes open their own, committed before
    they answer)."""
    with storage.session(readonly=True) as repo:
        yield repo


_bearer = HTTPBearer(auto_error=False, description="ESNAC_API_TOKEN, when one is configured")


def require_token(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """401 unless the request carries `Authorization: Bearer <ESNAC_API_TOKEN>` (when set)."""
    token = settings.api_token
    if not token:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "missing API token: send the header 'Authorization: Bearer <ESNAC_API_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "wrong API token",
            headers={"WWW-Authenticate": "Bearer"},
        )


SettingsDep = Annotated[Settings, Depends(get_settings)]
StorageDep = Annotated[Storage, Depends(get_storage)]
ArtifactsDep = Annotated[ArtifactStore, Depends(get_artifacts)]
SchedulerDep = Annotated["SchedulerStatus | None", Depends(get_scheduler)]
SessionDep = Annotated[Repository, Depends(get_session)]
AuthDep = Annotated[None, Depends(require_token)]


def confined(settings: Settings, dataset: str) -> None:
    """422 for a dataset spec outside the data directory (`workers.dataspec.check_confined`)."""
    from workers.dataspec import check_confined
    from workers.spec import WorkerError

    try:
        check_confined(dataset, settings.data_dir, settings.data_allow_any_path)
    except WorkerError as e:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, e.message) from e
