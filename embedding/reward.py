"""The compression reward of the paper: f(x) = C (2 - C) * A_student / A_teacher."""

from __future__ import annotations

__all__ = ["compression", "reward"]


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
