"""Teachers: upload (safetensors only, strictly checked), train on a worker, list, download."""

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
)
from service.api.schemas import TeacherPublic, TeacherTrain
from service.artifacts import ArtifactStore
from service.db import Storage, Teacher, TeacherState
from service.settings import Settings

__all__ = ["router"]

router = APIRouter(prefix="/v1/teachers", tags=["teachers"])


def _unprocessable(message: str) -> HTTPException:
    return HTTPException(422, message)


def check_teacher_fields(
    arch: str, num_classes: int, dataset: str, data_dir: str | None
) -> tuple[int, ...]:
    """Validate an architecture/dataset pair; returns the dataset's input shape (C, H, W).

    Raises:
        HTTPException: 422 with a message naming the problem.
    """
    from workers import zoo
    from workers.data import dataset_info
    from workers.spec import WorkerError

    if arch not in zoo.names():
        raise _unprocessable(f"unknown arch {arch!r}; known: {', '.join(zoo.names())}")
    if num_classes < 1:
        raise _unprocessable(f"num_classes must be at least 1, got {num_classes}")
    try:
        n, shape = dataset_info(dataset, root=data_dir)
    except WorkerError as e:
        raise _unprocessable(f"dataset {dataset!r}: {e.message}") from e
    if n != num_classes:
        raise _unprocessable(
            f"dataset {dataset!r} has {n} classes but num_classes={num_classes}; they must match"
        )
    return tuple(shape)


def _register(
    settings: Settings,
    storage: Storage,
    artifacts: ArtifactStore,
    arch: str,
    num_classes: int,
    dataset: str,
    accuracy: float | None,
    data: bytes,
) -> Teacher:
    """Check uploaded weights strictly, measure accuracy if needed, then store (all or nothing)."""
    from workers import zoo
    from workers.export import load_state_safetensors
    from workers.spec import WorkerError

    shape = check_teacher_fields(arch, num_classes, dataset, settings.data_dir)
    if accuracy is not None and not 0.0 < accuracy <= 1.0:
        raise _unprocessable(f"accuracy must be a fraction in (0, 1], got {accuracy}")
    model = zoo.build(arch, num_classes)
    try:
        load_state_safetensors(model, data, strict=True)
    except WorkerError as e:
        raise _unprocessable(e.message) from e
    model.eval()
    if accuracy is None:
        accuracy = measure_accuracy(model, dataset, settings.data_dir)
    params = sum(p.numel() for p in model.parameters())
    art = None
    try:
        with storage.session() as repo:
            art = artifacts.write(repo, "teacher", data)
            return repo.create_teacher(
                arch=arch, num_classes=num_classes, dataset=dataset, status=TeacherState.READY,
                source="upload", params=params, input_shape=shape, accuracy=accuracy,
                weights_id=art.id,
            )  # fmt: skip
    except Exception:
        if art is not None:  # the transaction rolled back: remove its file too
            artifacts.path(art).unlink(missing_ok=True)
        raise


def measure_accuracy(model: Any, dataset: str, data_dir: str | None) -> float:
    """Accuracy of `model` on the dataset's validation split (its test split if it has none)."""
    from workers.data import load_dataset
    from workers.spec import WorkerError
    from workers.train import evaluate

    try:
        splits = load_dataset(dataset, root=data_dir, download=False)
    except WorkerError as e:
        raise _unprocessable(
            f"cannot load dataset {dataset!r} to measure accuracy: {e.message}"
        ) from e
    split = splits.val if splits.val is not None else splits.test
    if split is None:
        raise _unprocessable(
            f"dataset {dataset!r} has no validation or test split; pass `accuracy`"
        )
    acc = float(evaluate(model, split))
    if acc <= 0.0:
        raise _unprocessable(
            f"the weights score 0 accuracy on {dataset!r}'s validation split; wrong dataset?"
        )
    return acc


@router.get("/archs", response_model=list[str])
def list_archs() -> list[str]:
    """The architectures teachers can have (the zoo)."""
    from workers import zoo

    return zoo.names()


@router.post("", status_code=status.HTTP_201_CREATED, response_model=TeacherPublic)
async def upload_teacher(
    request: Request,
    _auth: AuthDep,
    settings: SettingsDep,
    storage: StorageDep,
    artifacts: ArtifactsDep,
    arch: Annotated[str, Form()],
    num_classes: Annotated[int, Form()],
    dataset: Annotated[str, Form()],
    weights: Annotated[UploadFile, File(description="the state dict as safetensors")],
    accuracy: Annotated[float | None, Form()] = None,
) -> TeacherPublic:
    """Register trained weights. They are loaded strictly into `arch` (422 naming missing or
    unexpected keys and wrong shapes); the accuracy is measured on the dataset's validation
    split when not given. Nothing is stored when any check fails."""
    limit = settings.max_upload_mb * 1024 * 1024
    data = await weights.read(limit + 1)
    if len(data) > limit:
        raise HTTPException(
            413,
            f"weights larger than ESNAC_MAX_UPLOAD_MB={settings.max_upload_mb} MiB",
        )
    teacher = await run_in_threadpool(
        _register, settings, storage, artifacts, arch, num_classes, dataset, accuracy, data
    )
    return teacher_public(teacher)


@router.post("/train", status_code=status.HTTP_202_ACCEPTED, response_model=TeacherPublic)
def train_teacher(
    body: TeacherTrain,
    _auth: AuthDep,
    settings: SettingsDep,
    storage: StorageDep,
    scheduler: SchedulerDep,
) -> TeacherPublic:
    """Train a zoo teacher on a worker; poll `GET /v1/teachers/{id}` until `ready`."""
    from workers import zoo

    shape = check_teacher_fields(body.arch, body.num_classes, body.dataset, settings.data_dir)
    params = sum(p.numel() for p in zoo.build(body.arch, body.num_classes).parameters())
    with storage.session() as repo:
        teacher = repo.create_teacher(
            arch=body.arch, num_classes=body.num_classes, dataset=body.dataset,
            status=TeacherState.TRAINING, source="trained", params=params, input_shape=shape,
            train_settings=body.model_dump(exclude={"arch", "num_classes", "dataset"}),
        )  # fmt: skip
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
    """The teacher's weights (safetensors)."""
    t = repo.get_teacher(teacher_id)
    if t.weights_id is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"teacher {teacher_id} is {t.status}")
    path = artifacts.path(repo.get_artifact(t.weights_id))
    return FileResponse(
        path, media_type="application/octet-stream", filename=f"teacher-{t.id}.safetensors"
    )
