"""The checks a teacher passes before it is stored: architecture, dataset, weights, accuracy.

`check_teacher` builds the architecture, loads uploaded weights strictly and measures their
accuracy on the dataset's validation split when the user did not give it. The coordinator runs
it in a short-lived child process per request (`answer`, forked from a server that has imported
torch and these modules once; or `python -m workers.teacher_check`, JSON request on stdin, JSON
answer on stdout; see `service.teacher_check`), so the API process never loads torch, a slow
validation pass never competes with the API, and a file that crashes the loader crashes only
the child. A worker actor calls the same function (`TrialWorker.measure_teacher`).
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

__all__ = ["TeacherFacts", "check_teacher", "main", "measure_accuracy"]


#: A teacher below this multiple of chance accuracy is refused unless the user insists.
LOW_ACCURACY = 1.5


@dataclass(frozen=True)
class TeacherFacts:
    """What the checks found: the network's size, the dataset's input shape, the accuracy, and
    the limits of a size budget (the teacher's FLOPs; the smallest student's parameters and
    FLOPs, counted by its compression space)."""

    params: int
    input_shape: tuple[int, int, int]
    accuracy: float | None
    sizes: dict[str, int]


def check_teacher(
    arch: str,
    num_classes: int,
    dataset: str,
    data_dir: str | None = None,
    weights: bytes | None = None,
    accuracy: float | None = None,
    device: Any = None,
    accept_low_accuracy: bool = False,
) -> TeacherFacts:
    """Check a teacher; with `weights` and no `accuracy`, measure the accuracy.

    Args:
        arch: a zoo or plugin architecture name, or `ONNX_ARCH` (then `weights` is the ONNX
            file: it is imported, and the imported network must reproduce ONNX Runtime's
            outputs on random inputs).
        num_classes: the classifier's width; must equal the dataset's class count.
        dataset: a dataset spec (`workers.dataspec`).
        data_dir: where relative dataset paths are looked up.
        weights: safetensors bytes of a state dict, loaded strictly (None: architecture only),
            or the ONNX file.
        accuracy: the accuracy the user states, in (0, 1] (None: measured when weights are given).
        device: where to evaluate (default CPU).
        accept_low_accuracy: register a teacher below `LOW_ACCURACY` x chance anyway (otherwise
            refused: a wrong dataset, other preprocessing or an untrained network is likelier
            than a useful teacher).

    Raises:
        BadSpecError: with a message that names the problem and how to fix it.
    """
    from embedding.fx_trace import trace
    from embedding.graph import UnsupportedModelError
    from embedding.space import CompressionSpace
    from workers import zoo
    from workers.dataspec import dataset_info
    from workers.spec import ONNX_ARCH, BadSpecError

    if arch == ONNX_ARCH and weights is None:
        raise BadSpecError(
            f"an {ONNX_ARCH!r} teacher is uploaded with its ONNX file (POST /v1/teachers, field "
            "`model`); it cannot be trained from its name"
        )
    if arch != ONNX_ARCH and arch not in zoo.names():
        raise BadSpecError(f"unknown arch {arch!r}; known: {', '.join(zoo.names())}")
    if num_classes < 1:
        raise BadSpecError(f"num_classes must be at least 1, got {num_classes}")
    if accuracy is not None and not 0.0 < accuracy <= 1.0:
        raise BadSpecError(f"accuracy must be a fraction in (0, 1], got {accuracy}")
    stated = accuracy is not None
    try:
        n, shape = dataset_info(dataset, root=data_dir)
    except BadSpecError as e:
        raise BadSpecError(f"dataset {dataset!r}: {e.message}") from e
    if n != num_classes:
        raise BadSpecError(
            f"dataset {dataset!r} has {n} classes but num_classes={num_classes}; they must match"
        )
    input_shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    if arch == ONNX_ARCH and weights is not None:
        model = _onnx_teacher(weights, num_classes, input_shape)
    else:
        try:
            model = zoo.build(arch, num_classes)
        except zoo.UnknownModelError as e:  # an unknown name, or a plugin that fails: the user's
            raise BadSpecError(str(e)) from e
    try:
        graph = trace(model, input_shape)  # the search must be able to read it (plugins, ONNX)
    except UnsupportedModelError as e:
        raise BadSpecError(f"the search cannot read this network: {e}") from e
    space = CompressionSpace(graph)
    smallest = space.most_aggressive_action()
    sizes = {"flops": space.num_flops(space.empty_action()),
             "min_params": space.num_params(smallest), "min_flops": space.num_flops(smallest)}
    params = sum(p.numel() for p in model.parameters())
    if weights is not None:
        from workers.export import load_state_safetensors

        if arch != ONNX_ARCH:
            load_state_safetensors(model, weights, strict=True)
        if accuracy is None:
            accuracy = measure_accuracy(model, dataset, data_dir, device)
            if accuracy <= 0.0:
                raise BadSpecError(
                    f"the weights score 0 accuracy on {dataset!r}'s validation split; "
                    "wrong dataset?"
                )
    chance = 1.0 / num_classes
    if accuracy is not None and accuracy < LOW_ACCURACY * chance and not accept_low_accuracy:
        how = "is stated as" if stated else "scores"
        raise BadSpecError(
            f"the teacher {how} {100 * accuracy:.1f} % on {dataset!r}'s validation split, below "
            f"{LOW_ACCURACY:g}x chance ({100 * LOW_ACCURACY * chance:.1f} % for {num_classes} "
            "classes). Likely causes: the network was trained on another dataset, expects other "
            "preprocessing (the service feeds images scaled to 0..1 and normalised per channel "
            "by the training split's mean and std), or is untrained. To register it anyway, "
            "pass accept_low_accuracy=true (CLI: --accept-low-accuracy)"
        )
    return TeacherFacts(params, input_shape, accuracy, sizes)


def _onnx_teacher(data: bytes, num_classes: int, input_shape: tuple[int, int, int]) -> Any:
    """Import an ONNX teacher and prove the import exact against ONNX Runtime.

    Raises:
        BadSpecError: the file is refused, or does not fit the dataset's images or classes.
    """
    from workers.onnx_import import check_against_onnxruntime, import_onnx
    from workers.spec import BadSpecError

    imported = import_onnx(data)
    if imported.input_shape != input_shape:
        if sorted(imported.input_shape) == sorted(input_shape):  # the same sizes, reordered
            raise BadSpecError(
                f"the ONNX model takes C x H x W = {imported.input_shape} images but the "
                f"dataset's read as {input_shape}: the dataset's arrays are probably in another "
                "layout. An npz dataset holds x as N x H x W x C (channels last): convert "
                "channels-first arrays with x.transpose(0, 2, 3, 1) and save again"
            )
        raise BadSpecError(
            f"the ONNX model takes {imported.input_shape} images but the dataset's are "
            f"{input_shape}; export it with an input of that shape"
        )
    if imported.num_classes != num_classes:
        raise BadSpecError(
            f"the ONNX model returns {imported.num_classes} logits but num_classes="
            f"{num_classes}; they must match"
        )
    check_against_onnxruntime(data, imported)
    return imported.model


def measure_accuracy(model: Any, dataset: str, data_dir: str | None, device: Any = None) -> float:
    """Accuracy of `model` on the dataset's validation split (its test split if it has none).

    Raises:
        BadSpecError: the dataset cannot be loaded or has neither split.
    """
    from workers.data import load_dataset
    from workers.spec import BadSpecError
    from workers.train import evaluate

    try:
        splits = load_dataset(dataset, root=data_dir, download=False)
    except BadSpecError as e:
        raise BadSpecError(
            f"cannot load dataset {dataset!r} to measure accuracy: {e.message}"
        ) from e
    split = splits.val if splits.val is not None else splits.test
    if split is None:
        raise BadSpecError(f"dataset {dataset!r} has no validation or test split; pass `accuracy`")
    model.eval()
    return float(evaluate(model, split, device=device))


#: What `answer` needs, imported once by the server its children are forked from
#: (`service.teacher_check`), so a check does not pay torch's import (~3 CPU s) every time.
PRELOAD = (
    "torch", "embedding.fx_trace", "embedding.space", "workers.zoo", "workers.dataspec",
    "workers.export", "workers.teacher_check",
)  # fmt: skip


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """The answer to one request: `{"ok": true, <TeacherFacts>}`, or `{"ok": false, "message":
    ...}` for a refused teacher. Errors that are not the user's propagate."""
    import torch

    from workers.spec import WorkerError

    torch.set_num_threads(int(request.get("threads") or 1))
    path = request.get("weights_path")
    try:
        facts = check_teacher(
            str(request["arch"]),
            int(request["num_classes"]),
            str(request["dataset"]),
            request.get("data_dir"),
            Path(path).read_bytes() if path else None,
            request.get("accuracy"),
            accept_low_accuracy=bool(request.get("accept_low_accuracy")),
        )
    except WorkerError as e:
        return {"ok": False, "message": e.message}
    return {"ok": True, **asdict(facts)}


def serve_one(request: dict[str, Any], conn: Any, cwd: str) -> None:
    """A forked child's whole life: answer `request` in `cwd` and send the answer through
    `conn` as JSON bytes (a crash sends `{"crashed": <its last line>}` instead)."""
    import os
    import traceback

    try:
        os.chdir(cwd)  # no relative path reaches the coordinator's directory
        reply = answer(request)
    except BaseException as e:  # the parent reports it as a failed check
        lines = traceback.format_exception_only(type(e), e)
        reply = {"crashed": lines[-1].strip() if lines else type(e).__name__}
    try:
        conn.send_bytes(json.dumps(reply).encode())
    finally:
        conn.close()


def main() -> int:
    """Answer one JSON request from stdin on stdout (exit status 0 for a refused teacher too)."""
    json.dump(answer(json.load(sys.stdin)), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
