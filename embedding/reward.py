"""The compression reward of the paper: f(x) = C (2 - C) * A_student / A_teacher.

C is measured on parameters by default (the paper); pass FLOPs (`model_flops`) as the sizes for
the FLOPs variant.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "budget_reward",
    "compression",
    "latency_reward",
    "latency_target_reward",
    "model_flops",
    "reward",
]


def model_flops(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32)) -> int:
    """Floating-point operations of one forward pass on one input (PyTorch's FLOP counter:
    convolutions and matrix products, 2 per multiply-accumulate).

    Args:
        model: a teacher or a materialised student (its mode is restored afterwards).
        input_shape: one input's shape, without the batch dimension.

    Returns:
        The FLOP count, for `reward(..., student_flops, teacher_flops)`.
    """
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def compression(student_size: float, teacher_size: float) -> float:
    """C = 1 - size(student) / size(teacher), for parameters or FLOPs."""
    if teacher_size <= 0:
        raise ValueError(f"teacher size must be positive, got {teacher_size}")
    return 1.0 - float(student_size) / float(teacher_size)


def reward(
    student_acc: float, teacher_acc: float, student_size: float, teacher_size: float
) -> float:
    """f(x) = C (2 - C) * A, with C the compression of `size` (parameters by default, or FLOPs)
    and A = student_acc / teacher_acc.

    Raises:
        ValueError: a non-positive teacher accuracy or size.
    """
    if teacher_acc <= 0:
        raise ValueError(f"teacher accuracy must be positive, got {teacher_acc}")
    c = compression(student_size, teacher_size)
    return c * (2.0 - c) * (float(student_acc) / float(teacher_acc))


def latency_reward(
    student_acc: float, teacher_acc: float, latency_ms: float, teacher_latency_ms: float
) -> float:
    """The paper's reward on measured latency, C = 1 - latency / teacher latency, except that a
    student slower than its teacher gets 0: C(2 - C)·A would be negative there and fall as the
    accuracy rises, ranking a more accurate slow student below a less accurate one."""
    return reward(student_acc, teacher_acc, min(latency_ms, teacher_latency_ms), teacher_latency_ms)


def budget_reward(
    student_acc: float, teacher_acc: float, size: float, budget: float, w: float = 1.0
) -> float:
    """Accuracy under a budget on any size measure (parameters, FLOPs, milliseconds):
    A = student_acc / teacher_acc when `size` is within `budget`, A * (budget / size)^w beyond
    it (MnasNet's hard-constraint form, ACC * (SIZE / T)^-w with w = 0 within the budget). The
    one definition behind every `*_target` reward.

    Raises:
        ValueError: a non-positive teacher accuracy, size or budget.
    """
    if teacher_acc <= 0 or size <= 0 or budget <= 0:
        raise ValueError(
            f"teacher accuracy, size and budget must be positive, got {teacher_acc}, {size}, "
            f"{budget}"
        )
    a = float(student_acc) / float(teacher_acc)
    return a if size <= budget else a * (float(budget) / float(size)) ** w


def latency_target_reward(
    student_acc: float, teacher_acc: float, latency_ms: float, target_ms: float
) -> float:
    """Accuracy under a latency budget (`budget_reward` on milliseconds, w = 1)."""
    return budget_reward(student_acc, teacher_acc, latency_ms, target_ms)
