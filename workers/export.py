"""Model exchange without pickling: state dicts as safetensors bytes, students as ONNX, and the
model card that makes an exported student self-contained.

A fully trained student is exported three ways: its weights (safetensors), its ONNX (which takes
raw images scaled to 0..1: the dataset's normalisation is folded in, so `onnxruntime` alone runs
it) and its model card (JSON: the student's architecture, the action, size, accuracies, input
shape, classes and the normalisation it expects). `load_student(weights, card)` rebuilds the
PyTorch module from the first and the last, without the teacher or the search space.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from workers.spec import BadSpecError

__all__ = [
    "CARD_FORMAT",
    "Normalize",
    "load_state_safetensors",
    "load_student",
    "state_to_safetensors",
    "to_onnx",
]

#: The `format` of a model card.
CARD_FORMAT = "esnac-student-card/1"


class Normalize(nn.Module):
    """`(x - mean) / std` per channel: a network's input preprocessing as a module."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32)[:, None, None])
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32)[:, None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def state_to_safetensors(model: nn.Module) -> bytes:
    """The model's state dict (parameters and buffers) as safetensors bytes (CPU tensors)."""
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    return st_save(state)


def load_state_safetensors(model: nn.Module, data: bytes, strict: bool = True) -> None:
    """Load safetensors bytes into `model` in place.

    Args:
        model: the module to fill (its parameters keep their device and dtype).
        data: bytes from `state_to_safetensors` (or any safetensors file of a state dict).
        strict: require exactly the model's keys.

    Raises:
        BadSpecError: the bytes are not safetensors, or keys are missing/unexpected, or a tensor
            has the wrong shape (the message names them).
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise BadSpecError(f"weights must be safetensors bytes, got {type(data).__name__}")
    try:
        state = st_load(bytes(data))
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise BadSpecError(
            f"weights are not a valid safetensors file ({exc}); save them with "
            "safetensors.torch.save(model.state_dict())"
        ) from exc
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    problems: list[str] = []
    if strict and missing:
        problems.append(f"missing keys {_short(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    wrong = [
        f"{k}: expected {tuple(own[k].shape)}, got {tuple(v.shape)}"
        for k, v in state.items()
        if k in own and tuple(own[k].shape) != tuple(v.shape)
    ]
    if wrong:
        problems.append(f"wrong shapes ({_short(wrong)})")
    if problems:
        raise BadSpecError(
            "the weights do not fit this architecture: "
            + "; ".join(problems)
            + " -- check the architecture name and num_classes"
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=strict)


def _short(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return f"[{shown}{', ...' if len(items) > n else ''}] ({len(items)})"


def to_onnx(
    model: nn.Module,
    input_shape: Sequence[int],
    normalize: tuple[Sequence[float], Sequence[float]] | None = None,
) -> bytes:
    """Export `model` (in eval mode, on the CPU) to ONNX bytes with a dynamic batch dimension.

    Args:
        model: the network; it is exported from a CPU copy and left unchanged.
        input_shape: `(C, H, W)` of one input image.
        normalize: `(mean, std)` per channel to fold in front of the network, so the ONNX takes
            raw images scaled to 0..1 (None: it takes what `model` takes).

    Returns:
        The serialised ONNX model (input "input" `batch x C x H x W`, output "logits").
    """
    import copy

    m = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    if normalize is not None:
        m = nn.Sequential(Normalize(*normalize), m).eval()
    example = torch.zeros(1, *(int(s) for s in input_shape))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            m,
            (example,),
            buf,  # type: ignore[arg-type]
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return buf.getvalue()


def load_student(
    weights: bytes | bytearray | memoryview | str | os.PathLike[str],
    card: dict[str, Any] | str | os.PathLike[str],
    raw_input: bool = False,
) -> nn.Module:
    """Rebuild an exported student as a PyTorch module (eval mode, CPU).

    Args:
        weights: the student's safetensors (bytes or a path), e.g. `esnac export`'s file.
        card: its model card (a dict or the path of the `.card.json` written beside the weights).
        raw_input: fold the card's normalisation in front, so the module takes raw images
            scaled to 0..1 like the ONNX export (default: it takes normalised images, as in
            training).

    Raises:
        BadSpecError: not a model card this version reads, or weights that do not fit it.

    Example::

        from workers.export import load_student
        net = load_student("trial-7.safetensors", "trial-7.safetensors.card.json", raw_input=True)
        logits = net(images)  # images: N x C x H x W floats in 0..1
    """
    import json

    from embedding.space import InvalidActionError, StudentNet

    if not isinstance(card, dict):
        try:
            card = json.loads(Path(card).read_text())
        except ValueError as exc:
            raise BadSpecError(f"the model card {card} is not JSON: {exc}") from exc
    if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
        got = card.get("format") if isinstance(card, dict) else type(card).__name__
        raise BadSpecError(f"not an ESNAC model card (format {got!r}; expected {CARD_FORMAT!r})")
    try:
        net = StudentNet.from_architecture(card["architecture"])
    except (InvalidActionError, KeyError) as exc:
        raise BadSpecError(f"the model card's architecture cannot be read: {exc}") from exc
    if isinstance(weights, bytes | bytearray | memoryview):
        data = bytes(weights)
    else:
        data = Path(weights).read_bytes()
    load_state_safetensors(net, data)
    if raw_input:
        norm = card.get("normalization")
        if not isinstance(norm, dict) or not {"mean", "std"} <= set(norm):
            raise BadSpecError("the model card has no normalization mean/std")
        return nn.Sequential(Normalize(norm["mean"], norm["std"]), net).eval()
    return net.eval()
