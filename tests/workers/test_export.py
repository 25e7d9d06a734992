from __future__ import annotations

import onnx
import pytest
import torch

from embedding.space import Action, CompressionSpace
from workers import zoo
from workers.export import load_state_safetensors, state_to_safetensors, to_onnx
from workers.spec import BadSpecError


@pytest.fixture(scope="module")
def space() -> CompressionSpace:
    torch.manual_seed(0)
    return CompressionSpace.for_teacher(zoo.build("resnet20", 10))


def half(space: CompressionSpace) -> Action:
    return Action((), tuple(0.5 for _ in space.shrinkable), (), space.fingerprint)


def test_safetensors_round_trip_restores_the_student(space: CompressionSpace) -> None:
    student = space.materialize(half(space)).eval()
    data = state_to_safetensors(student)
    fresh = space.materialize(half(space), inherit=False).eval()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(fresh(x), student(x))
    load_state_safetensors(fresh, data)
    assert torch.equal(fresh(x), student(x))


def test_load_errors_name_the_problem(space: CompressionSpace) -> None:
    student_bytes = state_to_safetensors(space.materialize(half(space)))
    teacher = zoo.build("resnet20", 10)
    with pytest.raises(BadSpecError, match="missing keys .*unexpected keys"):
        load_state_safetensors(teacher, student_bytes)
    with pytest.raises(BadSpecError, match=r"fc.weight: expected \(10, 64\), got \(100, 64\)"):
        load_state_safetensors(teacher, state_to_safetensors(zoo.build("resnet20", 100)))
    with pytest.raises(BadSpecError, match="not a valid safetensors"):
        load_state_safetensors(teacher, b"\x00" * 64)
    with pytest.raises(BadSpecError, match="bytes"):
        load_state_safetensors(teacher, "weights.safetensors")  # type: ignore[arg-type]


def test_onnx_export_is_a_valid_model_with_dynamic_batch(space: CompressionSpace) -> None:
    student = space.materialize(half(space))
    model = onnx.load_from_string(to_onnx(student, (3, 32, 32)))
    onnx.checker.check_model(model)
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    assert student.training  # the export works on a copy
