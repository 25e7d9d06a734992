"""Model exchange without pickling: state dicts as safetensors bytes, students as ONNX."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from workers.spec import BadSpecError

__all__ = ["load_state_safetensors", "state_to_safetensors", "to_onnx"]


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


def to_onnx(model: nn.Module, input_shape: Sequence[int]) -> bytes:
    """Export `model` (in eval mode, on the CPU) to ONNX bytes with a dynamic batch dimension.

    Args:
        model: the network; it is exported from a CPU copy and left unchanged.
        input_shape: `(C, H, W)` of one input image.

    Returns:
        The serialised ONNX model (input "input" `batch x C x H x W`, output "logits").
    """
    import copy

    m = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
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
