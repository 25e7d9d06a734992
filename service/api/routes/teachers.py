"""Teachers: upload (safetensors weights of a zoo/plugin architecture, or an ONNX network; strictly
checked), train on a worker, list, download."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from service.api.convert import teacher_public
from service.api.deps import (
    ArtifactsDep,
    AuthDep,
    SchedulerDep,
    SessionDep,
    SettingsDep,
    StorageDep,
    confined,
)
from service.api.schemas import TeacherPublic, TeacherTrain
from service.artifacts import ArtifactStore
from service.db import Storage, Teacher, TeacherState
from service.settings import Settings
from service.teacher_check import (
    CheckedTeacher,
    TeacherCheckFailedError,
    TeacherRefusedError,
    check_teacher,
)
from workers import plugins
from workers.spec import ONNX_ARCH, ZOO_NAMES

__all__ = ["router"]

router = APIRouter(prefix="/v1/teachers", tags=["teachers"])


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(422, message)


async def _checked(settings: Settings, **kw: Any) -> CheckedTeacher:
    """The teacher's checks, run in a child process; a refusal is a 422 with its message."""
    confined(settings, kw["dataset"])
    try:
        return await check_teacher(settings, **kw)
    except TeacherRefusedError as e:
        raise _unprocessable(e.message) from e
    except TeacherCheckFailedError as e:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(e)) from e


def _store_upload(
    storage: Storage,
    artifacts: ArtifactStore,
    arch: str,
    num_classes: int,
    dataset: str,
    checked: CheckedTeacher,
    data: bytes,
    name: str | None = None,
) -> Teacher:
    """Store checked weights and their teacher row (all or nothing)."""
    art = None
    try:
        with storage.session() as repo:
            art = artifacts.write(repo, "teacher", data)
            return repo.create_teacher(
                arch=arch, num_classes=num_classes, dataset=dataset, status=TeacherState.READY,
                source="upload", params=checked.params, input_shape=checked.input_shape,
                accuracy=checked.accuracy, weights_id=art.id, name=name, sizes=checked.sizes,
            )  # fmt: skip
    except Exception:
        if art is not None:  # the transaction rolled back: remove its file too
            artifacts.path(art).unlink(missing_ok=True)
        raise


@router.get("/archs", response_model=list[str])
def list_archs() -> list[str]:
    """The architectures teachers can have: the zoo's, then the installed plugins'."""
    return [*ZOO_NAMES, *plugins.names()]


async def _read_limited(settings: Settings, upload: UploadFile, what: str) -> bytes:
    limit = settings.max_upload_mb * 1024 * 1024
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(
            413, f"{what} larger than ESNAC_MAX_UPLOAD_MB={settings.max_upload_mb} MiB"
        )
    if not data:
        raise _unprocessable(f"the uploaded {what} file is empty")
    return data


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TeacherPublic)
async def upload_teacher(
    request: Request,
    _auth: AuthDep,
    settings: SettingsDep,
    storage: StorageDep,
    artifacts: ArtifactsDep,
    num_classes: Annotated[int, Form()],
    dataset: Annotated[str, Form()],
    arch: Annotated[str | None, Form(description="zoo/plugin architecture of `weights`")] = None,
    weights: Annotated[
        UploadFile | None, File(description="the state dict of `arch` as safetensors")
    ] = None,
    model: Annotated[
        UploadFile | None,
        File(description="an ONNX classifier with its weights inside (instead of arch+weights)"),
    ] = None,
    accuracy: Annotated[float | None, Form()] = None,
    name: Annotated[str | None, Form(max_length=128)] = None,
    accept_low_accuracy: Annotated[
        bool, Form(description="register a teacher below 1.5x chance accuracy anyway")
    ] = False,
) -> TeacherPublic:
    """Register a trained teacher: either `arch` + `weights` (loaded strictly into the
    architecture; 422 naming missing or unexpected keys and wrong shapes) or `model`, an ONNX
    file (imported into the search's own network and checked against ONNX Runtime; 422 naming
    an unsupported node and the supported ops). The accuracy is measured on the dataset's
    validation split when not given. A teacher below 1.5x chance accuracy (measured or given) is
    refused, with the likely causes, unless `accept_low_accuracy`. Nothing is stored when any
    check fails."""
    if weights is not None and model is not None:
        raise _unprocessable(
            "send either `model` (an ONNX file) or `arch` and `weights` (safetensors), not both"
        )
    if weights is not None:
        if not arch:
            raise _unprocessable("`arch` is required with `weights` (see GET /v1/teachers/archs)")
        if arch == ONNX_ARCH:
            raise _unprocessable("an ONNX network is uploaded in the field `model`, not `weights`")
        data = await _read_limited(settings, weights, "weights")
    elif model is not None:
        if arch not in (None, ONNX_ARCH):
            raise _unprocessable(
                f"an ONNX `model` carries its own architecture: leave `arch` out (got {arch!r})"
            )
        arch, data = ONNX_ARCH, await _read_limited(settings, model, "model")
    else:
        raise _unprocessable(
            "send either `model` (an ONNX file) or `arch` and `weights` (safetensors)"
        )
    checked = await _checked(
        settings, arch=arch, num_classes=num_classes, dataset=dataset, weights=data,
        accuracy=accuracy, accept_low_accuracy=accept_low_accuracy,
    )  # fmt: skip
    teacher = await run_in_threadpool(
        _store_upload, storage, artifacts, arch, num_classes, dataset, checked, data, name
    )
    return teacher_public(teacher)


@router.post("/train", status_code=status.HTTP_202_ACCEPTED, response_model=TeacherPublic)
async def train_teacher(
    body: TeacherTrain,
    _auth: AuthDep,
    settings: SettingsDep,
    storage: StorageDep,
    scheduler: SchedulerDep,
) -> TeacherPublic:
    """Train a zoo teacher on a worker; poll `GET /v1/teachers/{id}` until `ready`."""
    checked = await _checked(
        settings, arch=body.arch, num_classes=body.num_classes, dataset=body.dataset
    )

    def store() -> Teacher:
        with storage.session() as repo:
            return repo.create_teacher(
                arch=body.arch, num_classes=body.num_classes, dataset=body.dataset,
                status=TeacherState.TRAINING, source="trained", params=checked.params,
                input_shape=checked.input_shape, sizes=checked.sizes,
                train_settings=body.model_dump(exclude={"arch", "num_classes", "dataset"}),
            )  # fmt: skip

    teacher = await run_in_threadpool(store)
    if scheduler is not None:
        scheduler.notify()
    return teacher_public(teacher)


@router.get("", response_model=list[TeacherPublic])
def list_teachers(repo: SessionDep) -> list[TeacherPublic]:
    return [teacher_public(t) for t in repo.list_teachers()]


@router.get("/{teacher_id}", response_model=TeacherPublic)
def get_teacher(teacher_id: int, repo: SessionDep) -> TeacherPublic:
    return teacher_public(repo.get_teacher(teacher_id))


@router.get("/{teacher_id}/weights", response_class=FileResponse)
def teacher_weights(teacher_id: int, repo: SessionDep, artifacts: ArtifactsDep) -> FileResponse:
    """The teacher's weights: safetensors, or the ONNX file of an ONNX upload."""
    t = repo.get_teacher(teacher_id)
    if t.weights_id is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"teacher {teacher_id} is {t.status}")
    path = artifacts.path(repo.get_artifact(t.weights_id))
    suffix = "onnx" if t.arch == ONNX_ARCH else "safetensors"
    return FileResponse(
        path, media_type="application/octet-stream", filename=f"teacher-{t.id}.{suffix}"
    )
