"""Trials: details and the students' weights / ONNX files."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

from service.api.convert import trial_public
from service.api.deps import ArtifactsDep, SessionDep
from service.api.schemas import TrialPublic

__all__ = ["router"]

router = APIRouter(prefix="/v1/trials", tags=["trials"])


@router.get("/{trial_id}", response_model=TrialPublic)
def get_trial(trial_id: int, repo: SessionDep) -> TrialPublic:
    return trial_public(repo.get_trial(trial_id))


@router.get("/{trial_id}/weights", response_class=FileResponse)
def trial_weights(trial_id: int, repo: SessionDep, artifacts: ArtifactsDep) -> FileResponse:
    """The student's weights (safetensors): after full training for a top-k student, else the
    search-time weights. The header `X-ESNAC-Weights` says which (`final` or `search`)."""
    t = repo.get_trial(trial_id)
    which, art_id = "search", t.weights_id
    if t.final_weights_id is not None:
        which, art_id = "final", t.final_weights_id
    if art_id is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"trial {trial_id} ({t.status.value}) has no weights"
        )
    return FileResponse(
        artifacts.path(repo.get_artifact(art_id)),
        media_type="application/octet-stream",
        filename=f"trial-{t.id}-{which}.safetensors",
        headers={"X-ESNAC-Weights": which},
    )


@router.get("/{trial_id}/card")
def trial_card(trial_id: int, repo: SessionDep) -> dict[str, Any]:
    """The fully trained student's model card (JSON): its architecture (what
    `workers.export.load_student` rebuilds), action, params, FLOPs, accuracies, input shape,
    classes, the normalisation its weights expect (the ONNX export has it folded in), and the
    teacher, job and trial it came from."""
    t = repo.get_trial(trial_id)
    if t.card is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"trial {trial_id} has no model card: only the top-k students get one, after the "
            "job's full training",
        )
    return t.card


@router.get("/{trial_id}/onnx", response_class=FileResponse)
def trial_onnx(trial_id: int, repo: SessionDep, artifacts: ArtifactsDep) -> FileResponse:
    """The fully trained student as ONNX (top-k students of a finished search only). It takes
    raw images scaled to 0..1: the dataset's normalisation is folded in."""
    t = repo.get_trial(trial_id)
    if t.onnx_id is None:
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"trial {trial_id} has no ONNX export: only the top-k students get one, after "
            "the job's full training",
        )
    return FileResponse(
        artifacts.path(repo.get_artifact(t.onnx_id)),
        media_type="application/octet-stream",
        filename=f"trial-{t.id}.onnx",
    )
