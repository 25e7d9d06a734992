"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from service.api.deps import ArtifactsDep, StorageDep

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request, storage: StorageDep, artifacts: ArtifactsDep) -> JSONResponse:
    """200 when the database answers, the artifact directory can be written and Ray is connected
    (if this process schedules), else 503 with the reason."""
    body: dict[str, str] = {}
    ok = True
    try:
        await run_in_threadpool(storage.ping)
        body["database"] = "ok"
    except Exception as e:  # noqa: BLE001 - reported to the caller
        ok, body["database"] = False, f"{e.__class__.__name__}: {e}"
    try:
        await run_in_threadpool(artifacts.check_writable)
        body["artifacts"] = "ok"
    except Exception as e:  # noqa: BLE001 - reported to the caller
        ok, body["artifacts"] = False, str(e)
    if getattr(request.app.state, "scheduler", None) is None:
        body["ray"] = "not used (scheduler off)"
    else:
        import ray

        try:
            if not ray.is_initialized():
                raise RuntimeError("not connected")
            nodes = await run_in_threadpool(ray.nodes)
            alive = sum(1 for n in nodes if n.get("Alive"))
            body["ray"] = "ok"
            body["nodes"] = str(alive)
            usage = request.app.state.scheduler.usage()
            body["workers"] = f"{usage['workers']} ({usage['mode']}), {usage['busy']} busy"
            if usage.get("waiting"):
                body["waiting"] = usage["waiting"]
        except Exception as e:  # noqa: BLE001 - reported to the caller
            ok, body["ray"] = False, f"{e.__class__.__name__}: {e}"
    return JSONResponse(body, status_code=200 if ok else 503)
