"""The ONNX importer: torchvision networks exported both ways read back exactly, and every file
it cannot read is refused with a message that names the problem."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from embedding.fx_trace import trace
from embedding.reward import model_flops
from embedding.space import CompressionSpace
from workers import zoo
from workers.onnx_import import (
    SUPPORTED_OPS,
    OnnxImportError,
    check_against_onnxruntime,
    import_onnx,
)
from workers.spec import ONNX_ARCH, BadSpecError


def torchvision_net(name: str) -> nn.Module:
    """A torchvision classifier for 10 classes with random weights and non-trivial BN statistics.

    vgg11_bn gets the CIFAR head (global pool, 512 -> 4096): torchvision's own pools a 1x1 map of
    a 32x32 input up to 7x7, which the TorchScript exporter refuses and the dynamo exporter
    writes as GatherND.
    """
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(num_classes=10)
    if name == "vgg11_bn":
        m.avgpool = nn.AdaptiveAvgPool2d(1)
        m.classifier[0] = nn.Linear(512, 4096)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    return m.eval()


def export(model: nn.Module, mode: str, batch: int = 2) -> bytes:
    """`mode`: "eval" (BatchNorm folded), "preserve" (training=PRESERVE of the eval model: BN
    kept), "dynamo" (the default exporter of recent PyTorch)."""
    x = torch.randn(batch, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "dynamo":
            return torch.onnx.export(model, (x,), dynamo=True).model_proto.SerializeToString()
        buf = io.BytesIO()
        kw = {"training": torch.onnx.TrainingMode.PRESERVE} if mode == "preserve" else {}
        torch.onnx.export(model, (x,), buf, dynamo=False, **kw)
    return buf.getvalue()


CASES = [
    (name, mode)
    for name in ("resnet18", "vgg11_bn", "mobilenet_v2", "shufflenet_v2_x0_5")
    for mode in ("eval", "preserve")
] + [("shufflenet_v2_x0_5", "dynamo")]  # the dynamo exporter: ReduceMean, Split


@pytest.mark.parametrize(("name", "mode"), CASES)
def test_torchvision_exports_import_exactly(name: str, mode: str) -> None:
    model = torchvision_net(name)
    data = export(model, mode)
    ops = {n.op_type for n in onnx.load_from_string(data).graph.node}
    assert ("BatchNormalization" in ops) == (mode == "preserve")  # the two kinds of export
    teacher = import_onnx(data)
    assert teacher.num_classes == 10 and teacher.input_shape == (3, 32, 32)
    assert check_against_onnxruntime(data, teacher) <= 1e-4
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(teacher.model(x), model(x), atol=1e-4, rtol=1e-4)
    # the search reads it like a zoo teacher, and its students build from it
    space = CompressionSpace.for_teacher(teacher.model, teacher.input_shape)
    assert len(space.shrinkable) > 0 and len(space.removable) > 0
    action = space.sample(np.random.default_rng(0))
    student = space.materialize(action).eval()
    assert student(x).shape == (3, 10)
    assert space.num_params(space.empty_action()) == sum(
        p.numel() for p in teacher.model.parameters()
    )
    # the workers count FLOPs from the graph: exactly what the FLOP counter measures
    shape = teacher.input_shape
    assert space.num_flops(space.empty_action()) == model_flops(teacher.model, shape)
    assert space.num_flops(action) == model_flops(student, shape)


def test_load_teacher_reads_an_onnx_file_like_a_zoo_teacher() -> None:
    torch.manual_seed(0)
    net = zoo.build("resnet20", 10).eval()
    data = export(net, "preserve", batch=1)  # a fixed batch of 1: the imported net takes any
    teacher = zoo.load_teacher(ONNX_ARCH, 10, data)
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(teacher(x), net(x), atol=1e-5)
    # the same layer graph as the zoo network it came from
    want, got = trace(net), trace(teacher)
    assert [(la.op, la.inputs, la.out_shape) for la in got.layers] == [
        (la.op, la.inputs, la.out_shape) for la in want.layers
    ]
    assert got.group_sizes == want.group_sizes and got.frozen == want.frozen
    with pytest.raises(BadSpecError, match="returns 10 logits but num_classes=100"):
        zoo.load_teacher(ONNX_ARCH, 100, data)


# ------------------------------------------------------------------------------------ refusals
def _model(nodes, inits=(), inp=(1, 3, 8, 8), out=(1, 4), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(inp))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out))],
        initializer=list(inits),
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _classifier(opset: int = 17, inp=(1, 3, 8, 8)) -> onnx.ModelProto:
    """Global pool, flatten, a 3 -> 4 Gemm: the smallest classifier the importer reads."""
    w = numpy_helper.from_array(
        np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32), "w"
    )
    return _model(
        [helper.make_node("GlobalAveragePool", ["x"], ["p"], name="pool"),
         helper.make_node("Flatten", ["p"], ["f"], name="flat"),
         helper.make_node("Gemm", ["f", "w"], ["y"], name="fc", transB=1)],
        [w], inp=inp, opset=opset,
    )  # fmt: skip


def test_a_hand_built_classifier_imports() -> None:
    data = _classifier().SerializeToString()
    assert check_against_onnxruntime(data, import_onnx(data)) <= 1e-6


def test_unsupported_ops_are_named_with_the_supported_list() -> None:
    m = _classifier()
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    m.graph.initializer.append(scales)
    m.graph.node.insert(0, helper.make_node("Resize", ["x", "", "scales"], ["x2"], name="up"))
    m.graph.node[1].input[0] = "x2"
    with pytest.raises(OnnxImportError) as err:
        import_onnx(m.SerializeToString())
    msg = str(err.value)
    assert "node 'up' has op type Resize" in msg and "supported ops: " in msg
    assert all(op in msg for op in SUPPORTED_OPS)


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("empty", "is empty"),
        ("random", "not a readable ONNX model"),
        ("truncated", "not a readable ONNX model"),
        ("external", "external data"),
        ("old_opset", "opset 9 is outside the tested range"),
        ("new_opset", "opset 99 is outside the tested range"),
        ("dynamic_size", "dynamic channels or spatial size"),
        ("two_outputs", "has 2 outputs"),
        ("training_bn", r"call model.eval\(\) before torch.onnx.export"),
        ("asymmetric_pads", "pads asymmetrically"),
        ("reshape", "only flattening and the channel shuffle"),
        ("huge_input", "too large"),
        ("huge_constant", "computes on large constants"),
        ("huge_conv", "would make a"),
        ("bn_2d", "normalises a 2-D tensor"),
        ("bad_group", "does not fit 3 input channels"),
        ("sparse", "sparse tensors"),
        ("missing_attribute", "malformed"),
    ],
)
def test_unreadable_files_are_refused_with_a_reason(kind: str, needle: str) -> None:
    m = _classifier()
    if kind == "empty":
        data = b""
    elif kind == "random":
        data = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    elif kind == "truncated":
        net = export(torchvision_net("resnet18"), "eval")
        data = net[: len(net) // 2]
    elif kind == "external":
        w = m.graph.initializer[0]
        w.ClearField("raw_data")
        w.ClearField("float_data")
        w.data_location = TensorProto.EXTERNAL
        w.external_data.add(key="location", value="weights.bin")
        data = m.SerializeToString()
    elif kind in ("old_opset", "new_opset"):
        m.opset_import[0].version = 9 if kind == "old_opset" else 99
        data = m.SerializeToString()
    elif kind == "dynamic_size":
        data = _classifier(inp=(1, 3, "h", "w")).SerializeToString()
    elif kind == "two_outputs":
        m.graph.output.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 3, 1, 1]))
        data = m.SerializeToString()
    elif kind == "training_bn":
        stats = [numpy_helper.from_array(np.ones(3, np.float32), f"s{i}") for i in range(4)]
        m.graph.initializer.extend(stats)
        bn = helper.make_node("BatchNormalization", ["x", "s0", "s1", "s2", "s3"], ["b"],
                              name="bn", training_mode=1)  # fmt: skip
        m.graph.node.insert(0, bn)
        m.graph.node[1].input[0] = "b"
        data = m.SerializeToString()
    elif kind == "asymmetric_pads":
        pool = helper.make_node("MaxPool", ["x"], ["mp"], kernel_shape=[2, 2], pads=[0, 0, 1, 1])
        m.graph.node.insert(0, pool)
        m.graph.node[1].input[0] = "mp"
        data = m.SerializeToString()
    elif kind == "huge_input":
        data = _classifier(inp=(1, 3, 4096, 4096)).SerializeToString()
    elif kind == "huge_constant":  # two small constants that broadcast to 2**32 elements
        a = numpy_helper.from_array(np.zeros((65536, 1), np.float32), "a")
        b = numpy_helper.from_array(np.zeros((1, 65536), np.float32), "b")
        m.graph.initializer.extend([a, b])
        m.graph.node.insert(0, helper.make_node("Add", ["a", "b"], ["w2"], name="blowup"))
        m.graph.node[-1].input[1] = "w2"
        data = m.SerializeToString()
    elif kind == "huge_conv":  # a 1x1 conv padded by 20,000
        w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "cw")
        m.graph.initializer.append(w)
        conv = helper.make_node("Conv", ["x", "cw"], ["c"], name="c", pads=[20000] * 4)
        m.graph.node.insert(0, conv)
        m.graph.node[1].input[0] = "c"
        data = m.SerializeToString()
    elif kind == "bn_2d":
        stats = [numpy_helper.from_array(np.ones(3, np.float32), f"s{i}") for i in range(4)]
        m.graph.initializer.extend(stats)
        bn = helper.make_node("BatchNormalization", ["f", "s0", "s1", "s2", "s3"], ["fb"])
        m.graph.node.insert(2, bn)
        m.graph.node[3].input[0] = "fb"
        data = m.SerializeToString()
    elif kind == "bad_group":
        w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "cw")
        m.graph.initializer.append(w)
        m.graph.node.insert(0, helper.make_node("Conv", ["x", "cw"], ["c"], name="c", group=2))
        m.graph.node[1].input[0] = "c"
        data = m.SerializeToString()
    elif kind == "sparse":
        values = numpy_helper.from_array(np.ones(2, np.float32), "sv")
        indices = numpy_helper.from_array(np.array([0, 1], np.int64), "si")
        m.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [4, 3]))
        data = m.SerializeToString()
    elif kind == "missing_attribute":  # MaxPool without its required kernel_shape
        m.graph.node.insert(0, helper.make_node("MaxPool", ["x"], ["mp"], name="mp"))
        m.graph.node[1].input[0] = "mp"
        data = m.SerializeToString()
    else:  # a reshape that is neither a flatten nor a shuffle
        shape = numpy_helper.from_array(np.array([1, 3, 4, 16], np.int64), "shape")
        m.graph.initializer.append(shape)
        m.graph.node.insert(0, helper.make_node("Reshape", ["x", "shape"], ["r"], name="r"))
        m.graph.node[1].input[0] = "r"
        data = m.SerializeToString()
    with pytest.raises(OnnxImportError, match=needle):
        import_onnx(data)


def test_non_finite_outputs_fail_the_onnx_runtime_check() -> None:
    m = _classifier()
    nan = numpy_helper.from_array(np.full((4, 3), np.nan, np.float32), "w")
    m.graph.initializer[0].CopyFrom(nan)
    data = m.SerializeToString()
    with pytest.raises(OnnxImportError, match="not finite"):
        check_against_onnxruntime(data, import_onnx(data))


def test_a_fixed_batch_file_imports_for_any_batch_and_keeps_the_global_rng() -> None:
    """Exported at batch 1, the shuffles' reshape targets say 1; the network takes any batch."""
    data = export(torchvision_net("shufflenet_v2_x0_5"), "eval", batch=1)
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    teacher = import_onnx(data)
    assert torch.equal(torch.rand(3), want)  # importing did not draw from the global RNG
    assert teacher.batch == 1 and check_against_onnxruntime(data, teacher) <= 1e-4
    with torch.no_grad():
        assert teacher.model(torch.rand(5, 3, 32, 32)).shape == (5, 10)
