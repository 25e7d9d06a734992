"""The reward, with parameters (the paper) or FLOPs as the size measure."""

from __future__ import annotations

import numpy as np
import pytest

from embedding.reward import compression, model_flops, reward
from embedding.space import CompressionSpace
from workers import zoo


def test_reward_formula() -> None:
    assert reward(0.9, 0.9, 50, 100) == pytest.approx(0.5 * 1.5)
    assert reward(0.45, 0.9, 0, 100) == pytest.approx(0.5)
    assert compression(25, 100) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        reward(0.5, 0.0, 1, 2)


def test_flops_variant_on_a_real_student() -> None:
    space = CompressionSpace.for_teacher(zoo.build("resnet20", 10))
    teacher = space.materialize(space.empty_action())
    student = space.materialize(space.sample(np.random.default_rng(0)))
    student.eval()
    t_flops, s_flops = model_flops(teacher), model_flops(student)
    assert 0 < s_flops < t_flops
    assert 3.5e7 < t_flops < 9e7  # resnet20 on 32x32: about 41M MACs = 82M FLOPs
    assert teacher.training and not student.training  # counting restores either mode
    r = reward(0.8, 0.9, s_flops, t_flops)
    c = 1 - s_flops / t_flops
    assert r == pytest.approx(c * (2 - c) * 0.8 / 0.9)
