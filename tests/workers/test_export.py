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


def test_student_onnx_takes_raw_images_and_round_trips_through_the_importer() -> None:
    """The ONNX has the normalisation folded in; a ShuffleNet student (channel shuffles) exports
    and reads back with the ONNX importer to the same outputs."""
    import numpy as np
    import onnxruntime as ort

    from workers.onnx_import import import_onnx

    torch.manual_seed(0)
    space = CompressionSpace.for_teacher(zoo.build("shufflenetv2", 10).eval())
    student = space.materialize(space.sample(np.random.default_rng(0))).eval()
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    raw = torch.rand(4, 3, 32, 32)
    normed = (raw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    with torch.no_grad():
        want = student(normed).numpy()
    folded = to_onnx(student, (3, 32, 32), normalize=(mean, std))
    got = ort.InferenceSession(folded, providers=["CPUExecutionProvider"]).run(
        None, {"input": raw.numpy()}
    )[0]
    assert np.abs(got - want).max() < 1e-4
    imported = import_onnx(to_onnx(student, (3, 32, 32)))
    with torch.no_grad():
        assert np.abs(imported.model(normed).numpy() - want).max() < 1e-4


def test_load_student_refuses_what_is_not_a_card(space: CompressionSpace, tmp_path) -> None:
    from workers.export import CARD_FORMAT, load_student

    student = space.materialize(half(space)).eval()
    weights = state_to_safetensors(student)
    card = {"format": CARD_FORMAT, "architecture": student.architecture(),
            "normalization": {"mean": [0.0] * 3, "std": [1.0] * 3}}  # fmt: skip
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(load_student(weights, card)(x), student(x))
    assert torch.equal(load_student(weights, card, raw_input=True)(x), student(x))
    with pytest.raises(BadSpecError, match="not an ESNAC model card"):
        load_student(weights, {"format": "other"})
    with pytest.raises(BadSpecError, match="architecture cannot be read"):
        load_student(weights, {"format": CARD_FORMAT, "architecture": {"format": 1}})
    other = space.materialize(space.most_aggressive_action()).architecture()
    with pytest.raises(BadSpecError, match="do not fit"):
        load_student(weights, {**card, "architecture": other})
