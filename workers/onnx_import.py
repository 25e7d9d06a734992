"""Read an ONNX classifier into the network the search works on: the teacher of an ONNX upload.

`import_onnx(data)` parses the file with the `onnx` package (never onnx2torch, never a pickle),
checks it (one 4-D image input with static channels and size, one output, weights inside the
file, an opset in the tested range) and reads its nodes in order into the layers of a
`embedding.space.StudentNet` -- the executor that runs every student -- with the weights taken
from the initializers (or from `Constant` nodes, where some exporters keep them). The result is a
plain module of `nn.Conv2d` / `nn.BatchNorm2d` / `nn.Linear` / ... that `embedding.fx_trace.trace`
reads like any zoo teacher, so search, distillation, full training and export need nothing else.

Supported (`SUPPORTED_OPS`): Conv (any groups, with or without bias), BatchNormalization (eval
mode), Relu, Clip(0, 6) as ReLU6, MaxPool, AveragePool, GlobalAveragePool, ReduceMean over the
spatial axes, Gemm, MatMul (+ Add of a constant bias), Add, Concat, Flatten and the Reshape that
flattens, the Reshape-Transpose-Reshape channel shuffle, Slice / Split along channels, Identity and
Dropout. Shape arithmetic on constants (Shape, Gather, Unsqueeze, Div, ... as exporters write it for
`x.view(x.size(0), -1)` or `chunk`) is evaluated at import time with `onnx.reference`. Both PyTorch
exports work: eval mode (BatchNorm folded into Conv) and `training=TrainingMode.PRESERVE` of an
eval-mode model (BatchNorm kept); the TorchScript-based and the dynamo-based exporter.

`check_against_onnxruntime` runs the file in ONNX Runtime and the imported network in PyTorch on
the same random inputs: the upload's proof that the import is exact.

Why one module of ~860 lines: one small handler per supported op, all reading and writing the
importer's state (the values by name, the layers, each layer's value on the example input); the
container checks and the ONNX Runtime comparison sit beside them because an upload runs all three.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from embedding.graph import INPUT, Layer
from embedding.space import StudentNet
from workers.spec import BadSpecError

__all__ = [
    "MAX_OPSET",
    "MIN_OPSET",
    "SUPPORTED_OPS",
    "ImportedTeacher",
    "OnnxImportError",
    "check_against_onnxruntime",
    "import_onnx",
    "load_onnx",
]

#: The opsets of the default domain the importer is tested with (PyTorch's exporters write 17-20).
MIN_OPSET, MAX_OPSET = 11, 21

#: Ops that become layers of the network.
LAYER_OPS = (
    "Conv", "BatchNormalization", "Relu", "Clip", "MaxPool", "AveragePool", "GlobalAveragePool",
    "ReduceMean", "Gemm", "MatMul", "Add", "Concat", "Flatten", "Reshape", "Transpose", "Slice",
    "Split", "Identity", "Dropout",
)  # fmt: skip

#: Ops evaluated at import time when all their inputs are constants (shape arithmetic).
CONSTANT_OPS = (
    "Constant", "Shape", "Size", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast", "Div", "Mul",
    "Add", "Sub", "Neg", "Floor", "Ceil", "Slice", "Reshape", "Identity", "Transpose", "Max",
    "Min", "ReduceProd", "Equal", "Where", "Split",
)  # fmt: skip

SUPPORTED_OPS: tuple[str, ...] = tuple(sorted(set(LAYER_OPS) | set(CONSTANT_OPS)))

#: Ops on constants whose output is no larger than their input (weights pass through them).
_SIZE_PRESERVING = frozenset({
    "Constant", "Identity", "Cast", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Slice",
    "Split", "Floor", "Ceil", "Neg", "ReduceProd", "Shape", "Size",
})  # fmt: skip
#: Elements of an input to other constant arithmetic (shape arithmetic is tiny).
_MAX_ARITH_INPUT = 1 << 16
#: Elements a constant computed at import time may have.
_MAX_CONST_ELEMENTS = 1 << 20
#: Elements of one image (C x H x W) the importer accepts, and of one example value.
_MAX_IMAGE_ELEMENTS = 3 * 1024 * 1024
_MAX_VALUE_ELEMENTS = 1 << 25
#: The example batch of the import (the ONNX Runtime check uses the file's fixed batch).
_BATCH = 2
_MAX_FIXED_BATCH = 64


class OnnxImportError(BadSpecError):
    """The file cannot be read as a teacher; the message names the problem and how to fix it."""


@dataclass(frozen=True)
class ImportedTeacher:
    """An imported ONNX classifier.

    Attributes:
        model: the network (eval mode, CPU), a `StudentNet` of standard modules.
        input_shape: one example's shape (channels, height, width).
        num_classes: width of the output.
        opset: the file's opset of the default domain.
        batch: the batch size the file fixes, or None when it is dynamic.
    """

    model: nn.Module
    input_shape: tuple[int, int, int]
    num_classes: int
    opset: int
    batch: int | None


def _refuse(message: str) -> OnnxImportError:
    return OnnxImportError(message)


def load_onnx(data: bytes) -> Any:
    """Parse and check the container: an ONNX model, weights inside, a tested opset.

    Raises:
        OnnxImportError: not ONNX, truncated, external data, opset out of range, no graph.
    """
    import onnx
    from google.protobuf.message import DecodeError

    if not data:
        raise _refuse("the ONNX file is empty")
    try:
        model = onnx.load_model_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise _refuse(
            f"the file is not a readable ONNX model ({type(exc).__name__}: {exc}); it may be "
            "truncated or another format -- upload the .onnx file torch.onnx.export wrote"
        ) from exc
    if not model.HasField("graph") or not model.graph.node or not model.opset_import:
        raise _refuse(
            "the file is not an ONNX model (no graph or no opset); upload the .onnx file "
            "torch.onnx.export wrote"
        )
    if _has_sparse(model.graph):
        raise _refuse(
            "the model holds sparse tensors; export it with dense initializers (the weights "
            "PyTorch's exporters write)"
        )
    external = [t.name for t in _all_tensors(model.graph) if _is_external(t)]
    if external:
        raise _refuse(
            f"the model keeps {len(external)} tensor(s) in external data files (first: "
            f"{external[0]!r}; torch.onnx.export writes model.onnx + model.onnx.data by "
            "default); register it with `esnac teacher register --onnx model.onnx`, which puts "
            "the data file beside it inside, or upload one file: export with "
            "torch.onnx.export(..., external_data=False), or re-save with "
            "onnx.save(onnx.load('model.onnx'), 'single.onnx', save_as_external_data=False)"
        )
    opset = _default_opset(model)
    if opset is None or not MIN_OPSET <= opset <= MAX_OPSET:
        raise _refuse(
            f"opset {opset} is outside the tested range {MIN_OPSET}..{MAX_OPSET}; re-export with "
            f"torch.onnx.export(..., opset_version=17) or convert with "
            "onnx.version_converter.convert_version(model, 17)"
        )
    for fn in model.functions:
        raise _refuse(
            f"the model defines the local function {fn.name!r}; export without custom functions "
            "(inline them with onnx.inliner.inline_local_functions)"
        )
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise _refuse(f"the ONNX model is malformed: {str(exc).splitlines()[0]}") from exc
    return model


def _default_opset(model: Any) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return None


def _is_external(t: Any) -> bool:
    import onnx

    return bool(t.data_location == onnx.TensorProto.EXTERNAL or t.external_data)


def _has_sparse(graph: Any) -> bool:
    if graph.sparse_initializer:
        return True
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("sparse_tensor") or attr.sparse_tensors:
                return True
            subgraphs = [attr.g] if attr.HasField("g") else []
            if any(_has_sparse(g) for g in [*subgraphs, *attr.graphs]):
                return True
    return False


def _all_tensors(graph: Any) -> list[Any]:
    """Initializers and the tensors held by node attributes (Constant values), subgraphs too."""
    found = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                found.append(attr.t)
            found.extend(attr.tensors)
            if attr.HasField("g"):
                found.extend(_all_tensors(attr.g))
            for g in attr.graphs:
                found.extend(_all_tensors(g))
    return found


# --------------------------------------------------------------------------------------- values
@dataclass
class _Tensor:
    """A tensor the network computes: the layer that produces it and its value on the example."""

    index: int
    value: torch.Tensor


@dataclass
class _Grouped:
    """`Reshape(N, C, H, W -> N, g, C/g, H, W)`, possibly transposed: half a channel shuffle."""

    src: _Tensor
    groups: int
    transposed: bool


def import_onnx(data: bytes) -> ImportedTeacher:
    """Read an ONNX classifier (see the module docstring).

    Raises:
        OnnxImportError: naming the node, its op type and the supported ops, or the check failed.
    """
    import onnx

    model = load_onnx(data)
    opset = _default_opset(model)
    if opset is None:  # load_onnx refused it already
        raise _refuse("no default-domain opset")
    importer = None
    try:
        with torch.random.fork_rng(devices=[]):  # module inits must not move the caller's RNG
            importer = _Importer(model, opset)
            return importer.run()
    except OnnxImportError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, ArithmeticError, RuntimeError,
            MemoryError, onnx.checker.ValidationError) as exc:  # fmt: skip
        where = f" at node {importer.current!r}" if importer and importer.current else ""
        raise _refuse(f"the ONNX model cannot be read{where}: {type(exc).__name__}: {exc}") from exc


class _Importer:
    def __init__(self, model: Any, opset: int) -> None:
        from onnx import numpy_helper

        self.model = model
        self.graph = model.graph
        self.opset = opset
        self.current = ""  # the node being read (named in errors)
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in self.graph.initializer
        }
        self.file_batch: int | None = None
        self.aliases: dict[int, list[str]] = {}  # layer index -> the names of its value
        self.values: dict[str, Any] = {}
        self.layers: list[Layer] = []
        self.modules: dict[int, nn.Module] = {}
        self.slices: dict[int, tuple[int, int]] = {}
        self.shuffles: dict[int, int] = {}
        self.tensors: list[torch.Tensor] = []  # each layer's value on the example input
        self.example = torch.empty(0)
        self.uses: Counter[str] = Counter(i for n in self.graph.node for i in n.input if i)
        self.uses.update(o.name for o in self.graph.output)

    # ---------------------------------------------------------------------------- the graph
    def run(self) -> ImportedTeacher:
        graph = self.graph
        inputs = [i for i in graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise _refuse(
                f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
                "a teacher takes one image batch"
            )
        if len(graph.output) != 1:
            raise _refuse(
                f"the model has {len(graph.output)} outputs; a teacher returns one logits tensor "
                "-- export only the classifier's output"
            )
        batch, shape = self._input_shape(inputs[0])
        self.file_batch = batch
        self.example = torch.rand(_BATCH, *shape, generator=torch.Generator().manual_seed(0))
        self.values[inputs[0].name] = _Tensor(INPUT, self.example)
        needed = self._needed_nodes()
        with torch.no_grad():
            for k, node in enumerate(graph.node):
                if k in needed:
                    self.current = node.name or f"#{k} ({node.op_type})"
                    self._node(node)
            self.current = ""
        out = self.values.get(graph.output[0].name)
        if not isinstance(out, _Tensor) or out.index == INPUT:
            raise _refuse("the model's output is not computed from its input by supported ops")
        if out.index != len(self.layers) - 1:
            raise _refuse("the model's output must be produced by its last node")
        if out.value.dim() != 2:
            raise _refuse(
                f"the model's output has shape {tuple(out.value.shape)}; a classifier returns "
                "(batch, classes) logits"
            )
        net = StudentNet(
            self.layers, [la.inputs for la in self.layers], set(), self.modules, self.slices,
            self.shuffles,
        )  # fmt: skip
        net.eval()
        return ImportedTeacher(net, shape, int(out.value.shape[1]), self.opset, batch)

    def _input_shape(self, value_info: Any) -> tuple[int | None, tuple[int, int, int]]:
        t = value_info.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if t.elem_type != 1:  # FLOAT
            raise _refuse(
                f"the input {value_info.name!r} is not float32; export the model in float32"
            )
        if len(dims) != 4:
            raise _refuse(
                f"the input {value_info.name!r} has rank {len(dims)}; a teacher takes "
                "(batch, channels, height, width) images"
            )
        if any(d is None or d <= 0 for d in dims[1:]):
            raise _refuse(
                f"the input {value_info.name!r} has dynamic channels or spatial size "
                f"({dims[1:]}); export with a fixed image size (only the batch may be dynamic)"
            )
        batch = dims[0] if dims[0] else None
        image = (int(dims[1]), int(dims[2]), int(dims[3]))  # type: ignore[arg-type]
        if math.prod(image) > _MAX_IMAGE_ELEMENTS:
            raise _refuse(f"the input images {image} are too large (at most 3 x 1024 x 1024)")
        if batch is not None and batch > _MAX_FIXED_BATCH:
            raise _refuse(
                f"the model fixes the batch to {batch}; export it with a batch of 1 (or a "
                "dynamic batch axis)"
            )
        return batch, image

    def _needed_nodes(self) -> set[int]:
        """Positions of the nodes the output depends on (dead branches are skipped)."""
        producer = {o: k for k, n in enumerate(self.graph.node) for o in n.output if o}
        needed: set[int] = set()
        stack = [o.name for o in self.graph.output]
        seen: set[str] = set()
        while stack:
            name = stack.pop()
            if name in seen or name not in producer:
                continue
            seen.add(name)
            k = producer[name]
            needed.add(k)
            stack.extend(i for i in self.graph.node[k].input if i)
        return needed

    def _node(self, node: Any) -> None:
        op = node.op_type
        if node.domain not in ("", "ai.onnx"):
            raise self._unsupported(node)
        args = [self._value(node, i) if i else None for i in node.input]
        present = [a for a in args if a is not None]
        if op in CONSTANT_OPS and all(isinstance(a, np.ndarray) for a in present):
            self._fold(node)
            return
        if op in ("Shape", "Size"):
            self._shape(node, args[0])
            return
        handler = getattr(self, "_op_" + op, None)
        if handler is None:
            raise self._unsupported(node)
        handler(node, args)

    def _value(self, node: Any, name: str) -> Any:
        if name in self.consts:
            return self.consts[name]
        if name not in self.values:
            raise _refuse(
                f"node {node.name!r} ({node.op_type}) reads {name!r}, which nothing makes"
            )
        return self.values[name]

    def _unsupported(self, node: Any) -> OnnxImportError:
        domain = f" in domain {node.domain!r}" if node.domain else ""
        return _refuse(
            f"node {node.name!r} has op type {node.op_type}{domain}, which the importer does not "
            f"support; supported ops: {', '.join(SUPPORTED_OPS)}"
        )

    def _attrs(self, node: Any) -> dict[str, Any]:
        from onnx import helper

        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    def _set(self, node: Any, value: Any, k: int = 0) -> None:
        name = node.output[k]
        self.values[name] = value
        if isinstance(value, _Tensor) and value.index != INPUT:
            self.aliases.setdefault(value.index, []).append(name)

    # ------------------------------------------------------------------------------ constants
    def _fold(self, node: Any) -> None:
        """Evaluate a node whose inputs are all constants with the ONNX reference runtime."""
        from onnx import helper
        from onnx.reference import ReferenceEvaluator

        feeds = {i: self._value(node, i) for i in node.input if i}
        if node.op_type == "Identity":  # weights pass through it (the TorchScript exporter)
            self._set(node, next(iter(feeds.values())))
            return
        self._fold_guard(node, list(feeds.values()))
        inputs = [
            helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
            for i, v in feeds.items()
        ]
        outputs = [helper.make_empty_tensor_value_info(o) for o in node.output if o]
        g = helper.make_graph([node], "fold", inputs, outputs)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        try:
            results = ReferenceEvaluator(m).run(None, feeds)
        except Exception as exc:  # the reference runtime raises many types for bad nodes
            raise _refuse(
                f"node {node.name!r} ({node.op_type}) on constants cannot be evaluated: {exc}"
            ) from exc
        names = [o for o in node.output if o]
        for name, r in zip(names, results, strict=True):
            self.values[name] = np.asarray(r)

    def _fold_guard(self, node: Any, feeds: list[np.ndarray]) -> None:
        """Refuse constant arithmetic whose result could be huge, before computing it: an
        op that does not grow its input is bounded by the file; any other must take small
        inputs and (broadcasting, gathering, concatenating) give a small output."""
        op = node.op_type
        if op in _SIZE_PRESERVING:
            return
        huge = _refuse(
            f"node {node.name!r} ({op}) computes on large constants; only shape arithmetic is "
            "evaluated at import time"
        )
        if any(v.size > _MAX_ARITH_INPUT for v in feeds):
            raise huge
        if op == "Concat":
            out = sum(v.size for v in feeds)
        elif op == "Gather":
            data, idx = feeds[0], feeds[1]
            axis = int(self._attrs(node).get("axis", 0)) % max(1, data.ndim)
            out = math.prod(data.shape[:axis]) * idx.size * math.prod(data.shape[axis + 1 :])
        else:  # elementwise, broadcasting
            try:
                out = math.prod(np.broadcast_shapes(*(v.shape for v in feeds)))
            except ValueError as exc:
                raise _refuse(f"node {node.name!r} ({op}): shapes do not broadcast") from exc
        if out > _MAX_CONST_ELEMENTS:
            raise huge

    def _shape(self, node: Any, x: Any) -> None:
        t = self._tensor_arg(node, x)
        shape = np.array(t.value.shape, dtype=np.int64)
        if node.op_type == "Size":
            self._set(node, np.array(int(np.prod(shape)), dtype=np.int64))
            return
        a = self._attrs(node)
        start, end = int(a.get("start", 0)), a.get("end")
        self._set(node, shape[start : None if end is None else int(end)])

    def _const(self, node: Any, x: Any, what: str) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise _refuse(
                f"node {node.name!r} ({node.op_type}) takes its {what} from a computed tensor; "
                "only constant (initializer) weights are supported"
            )
        return x

    def _tensor_arg(self, node: Any, x: Any) -> _Tensor:
        if isinstance(x, _Grouped):
            raise _refuse(
                f"node {node.name!r} ({node.op_type}) reads a 5-D channel grouping; only the "
                "Reshape-Transpose-Reshape channel shuffle is supported"
            )
        if not isinstance(x, _Tensor):
            raise _refuse(f"node {node.name!r} ({node.op_type}) expects a computed tensor")
        return x

    # -------------------------------------------------------------------------------- layers
    def _layer(
        self,
        node: Any,
        kind: str,
        op: str,
        srcs: list[_Tensor],
        value: torch.Tensor,
        module: nn.Module | None = None,
    ) -> _Tensor:
        idx = len(self.layers)
        self.layers.append(
            Layer(
                idx,
                node.name or f"{node.op_type}_{idx}",
                kind,
                op,
                tuple(s.index for s in srcs),
                tuple(srcs[0].value.shape[1:]),
                tuple(value.shape[1:]),
            )  # fmt: skip
        )
        if module is not None:
            self.modules[idx] = module
        self.tensors.append(value)
        return _Tensor(idx, value)

    def _module(self, node: Any, kind: str, op: str, src: _Tensor, module: nn.Module) -> None:
        module.eval()
        self._set(node, self._layer(node, kind, op, [src], module(src.value), module))

    def _op_Conv(self, node: Any, args: list[Any]) -> None:
        x = self._tensor_arg(node, args[0])
        w = self._const(node, args[1], "weights")
        b = None if _arg(args, 2) is None else self._const(node, args[2], "bias")
        a = self._attrs(node)
        if w.ndim != 4 or x.value.dim() != 4:
            raise _refuse(f"node {node.name!r} (Conv) is not a 2-D convolution")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise _refuse(
                f"node {node.name!r} (Conv) uses auto_pad={a['auto_pad']!r}; export with "
                "explicit padding"
            )
        pads = _sym_pads(node, a.get("pads", [0, 0, 0, 0]))
        groups = int(a.get("group", 1))
        cout, cin_g, kh, kw = (int(s) for s in w.shape)
        strides, dilations = _pair(node, a, "strides"), _pair(node, a, "dilations")
        if groups < 1 or cout % groups or cin_g * groups != x.value.shape[1]:
            raise _refuse(
                f"node {node.name!r} (Conv): a {tuple(w.shape)} weight with group={groups} "
                f"does not fit {x.value.shape[1]} input channels"
            )
        self._guard_size(node, x, cout, (kh, kw), strides, pads, dilations, ceil=False)
        conv = nn.Conv2d(
            cin_g * groups, cout, (kh, kw), stride=strides, padding=pads, dilation=dilations,
            groups=groups, bias=b is not None,
        )  # fmt: skip
        if conv.in_channels != x.value.shape[1]:
            raise _refuse(
                f"node {node.name!r} (Conv) expects {conv.in_channels} channels but gets "
                f"{x.value.shape[1]}"
            )
        _load(conv, weight=w, bias=b)
        self._module(node, "Conv2d", "conv", x, conv)

    def _guard_size(
        self,
        node: Any,
        x: _Tensor,
        channels: int,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        pad: tuple[int, int],
        dilation: tuple[int, int],
        ceil: bool,
    ) -> None:
        """Refuse a conv / pool whose output would be empty or huge, before computing it."""
        size = []
        for dim, k, s, p, d in zip(x.value.shape[2:], kernel, stride, pad, dilation, strict=True):
            span = int(dim) + 2 * p - d * (k - 1) - 1
            size.append((-(-span // s) if ceil else span // s) + 1)
        if min(size) < 1 or x.value.shape[0] * channels * math.prod(size) > _MAX_VALUE_ELEMENTS:
            raise _refuse(
                f"node {node.name!r} ({node.op_type}) would make a {channels} x {size[0]} x "
                f"{size[1]} output from {tuple(x.value.shape[1:])}"
            )

    def _op_BatchNormalization(self, node: Any, args: list[Any]) -> None:
        x = self._tensor_arg(node, args[0])
        a = self._attrs(node)
        if x.value.dim() != 4:
            raise _refuse(
                f"node {node.name!r} (BatchNormalization) normalises a {x.value.dim()}-D tensor; "
                "only BatchNorm2d on images (after a Conv) is supported"
            )
        if int(a.get("training_mode", 0)) or int(a.get("is_test", 1)) == 0:
            raise _refuse(
                f"node {node.name!r} (BatchNormalization) is in training mode: the model was "
                "exported while training; call model.eval() before torch.onnx.export (with "
                "training=TrainingMode.PRESERVE to keep BatchNorm unfolded)"
            )
        scale, bias, mean, var = (self._const(node, v, "statistics") for v in args[1:5])
        c = int(x.value.shape[1])
        if any(t.shape != (c,) for t in (scale, bias, mean, var)):
            raise _refuse(f"node {node.name!r} (BatchNormalization) has mis-shaped statistics")
        momentum = 1.0 - float(a.get("momentum", 0.9))
        bn = nn.BatchNorm2d(c, eps=float(a.get("epsilon", 1e-5)), momentum=momentum)
        _load(bn, weight=scale, bias=bias, running_mean=mean, running_var=var)
        self._module(node, "BatchNorm2d", "bn", x, bn)

    def _op_Relu(self, node: Any, args: list[Any]) -> None:
        self._module(node, "ReLU", "relu", self._tensor_arg(node, args[0]), nn.ReLU())

    def _op_Clip(self, node: Any, args: list[Any]) -> None:
        a = self._attrs(node)
        lo = a.get("min") if _arg(args, 1) is None else _scalar(args[1])
        hi = a.get("max") if _arg(args, 2) is None else _scalar(args[2])
        x = self._tensor_arg(node, args[0])
        if lo == 0 and hi == 6:
            self._module(node, "ReLU", "relu6", x, nn.ReLU6())
        elif lo == 0 and (hi is None or math.isinf(hi)):
            self._module(node, "ReLU", "relu", x, nn.ReLU())
        else:
            raise _refuse(
                f"node {node.name!r} (Clip) clips to [{lo}, {hi}]; only Clip(0, 6) (ReLU6) and "
                "Clip(0) (ReLU) are supported"
            )

    def _pool(self, node: Any, args: list[Any], kind: str) -> None:
        x = self._tensor_arg(node, args[0])
        a = self._attrs(node)
        if len([o for o in node.output if o]) > 1:
            raise _refuse(f"node {node.name!r} (MaxPool) returns indices; not supported")
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"VALID", "VALID"):
            raise _refuse(f"node {node.name!r} ({node.op_type}) uses auto_pad; export with pads")
        if any(int(d) != 1 for d in a.get("dilations", [1, 1])):
            raise _refuse(f"node {node.name!r} ({node.op_type}) is dilated; not supported")
        kh, kw = (int(v) for v in a["kernel_shape"])
        k, s = (kh, kw), _pair(node, a, "strides")
        p = _sym_pads(node, a.get("pads", [0, 0, 0, 0]))
        ceil = bool(a.get("ceil_mode", 0))
        if min(k) < 1 or p[0] > kh // 2 or p[1] > kw // 2:
            raise _refuse(
                f"node {node.name!r} ({node.op_type}): kernel {k} with pads {p}; the padding "
                "may be at most half the kernel"
            )
        self._guard_size(node, x, int(x.value.shape[1]), k, s, p, (1, 1), ceil)
        if kind == "MaxPool2d":
            self._module(node, kind, "maxpool", x, nn.MaxPool2d(k, s, p, ceil_mode=ceil))
        else:
            pool = nn.AvgPool2d(k, s, p, ceil_mode=ceil,
                                count_include_pad=bool(a.get("count_include_pad", 0)))  # fmt: skip
            self._module(node, kind, "avgpool", x, pool)

    def _op_MaxPool(self, node: Any, args: list[Any]) -> None:
        self._pool(node, args, "MaxPool2d")

    def _op_AveragePool(self, node: Any, args: list[Any]) -> None:
        self._pool(node, args, "AvgPool2d")

    def _op_GlobalAveragePool(self, node: Any, args: list[Any]) -> None:
        x = self._tensor_arg(node, args[0])
        self._module(node, "AvgPool2d", "adaptive_avgpool", x, nn.AdaptiveAvgPool2d(1))

    def _op_ReduceMean(self, node: Any, args: list[Any]) -> None:
        x = self._tensor_arg(node, args[0])
        a = self._attrs(node)
        axes = a.get("axes")
        if _arg(args, 1) is not None:
            axes = self._const(node, args[1], "axes").tolist()
        rank = x.value.dim()
        spatial = sorted(int(v) % rank for v in (axes or [])) == [2, 3] and rank == 4
        if not spatial:
            raise _refuse(
                f"node {node.name!r} (ReduceMean) averages over axes {axes}; only the global "
                "average pool over the spatial axes (2, 3) is supported"
            )
        pool = nn.AdaptiveAvgPool2d(1)
        pool_node = _Renamed(node, "" if int(a.get("keepdims", 1)) else "/pool")
        self._module(pool_node, "AvgPool2d", "adaptive_avgpool", x, pool)
        if not int(a.get("keepdims", 1)):
            pooled = self.values[node.output[0]]
            self._module(node, "Flatten", "flatten", pooled, nn.Flatten())

    def _linear(self, node: Any, x: _Tensor, w: np.ndarray, b: np.ndarray | None) -> None:
        """`y = x @ w.T + b` with `w` of shape (out, in)."""
        if x.value.dim() != 2 or w.ndim != 2 or w.shape[1] != x.value.shape[1]:
            raise _refuse(
                f"node {node.name!r} ({node.op_type}) multiplies {tuple(x.value.shape)} by a "
                f"{tuple(w.shape)} weight; only a classifier layer on flattened features is "
                "supported"
            )
        if b is not None:
            b = np.broadcast_to(b, (1, w.shape[0])).reshape(-1) if b.size in (1, w.shape[0]) else b
            if b.shape != (w.shape[0],):
                raise _refuse(f"node {node.name!r} ({node.op_type}) has a mis-shaped bias")
        lin = nn.Linear(int(w.shape[1]), int(w.shape[0]), bias=b is not None)
        _load(lin, weight=w, bias=b)
        self._module(node, "Linear", "linear", x, lin)

    def _op_Gemm(self, node: Any, args: list[Any]) -> None:
        a = self._attrs(node)
        if int(a.get("transA", 0)):
            raise _refuse(f"node {node.name!r} (Gemm) transposes its input; not supported")
        x = self._tensor_arg(node, args[0])
        w = self._const(node, args[1], "weights").astype(np.float32)
        w = w if int(a.get("transB", 0)) else w.T
        w = w * float(a.get("alpha", 1.0))
        b = None
        if _arg(args, 2) is not None:
            b = self._const(node, args[2], "bias").astype(np.float32) * float(a.get("beta", 1.0))
        self._linear(node, x, w, b)

    def _op_MatMul(self, node: Any, args: list[Any]) -> None:
        x = self._tensor_arg(node, args[0])
        w = self._const(node, args[1], "weights").astype(np.float32)
        self._linear(node, x, w.T, None)

    def _op_Add(self, node: Any, args: list[Any]) -> None:
        a, b = args[0], args[1]
        if isinstance(a, np.ndarray) and isinstance(b, _Tensor):
            a, b = b, a
        if isinstance(a, _Tensor) and isinstance(b, np.ndarray):
            self._add_bias(node, a, b)
            return
        ta, tb = self._tensor_arg(node, a), self._tensor_arg(node, b)
        if ta.value.shape != tb.value.shape:
            raise _refuse(
                f"node {node.name!r} (Add) adds tensors of shapes {tuple(ta.value.shape)} and "
                f"{tuple(tb.value.shape)}; only same-shape (residual) adds are supported"
            )
        self._set(node, self._layer(node, "Identity", "add", [ta, tb], ta.value + tb.value))

    def _add_bias(self, node: Any, x: _Tensor, b: np.ndarray) -> None:
        """`MatMul` + `Add(constant)`: the constant becomes the linear layer's bias."""
        mod = self.modules.get(x.index)
        fusable = (
            isinstance(mod, nn.Linear) and mod.bias is None and x.index == len(self.layers) - 1
            and sum(self.uses[n] for n in self.aliases.get(x.index, [])) == 1
        )  # fmt: skip
        if not isinstance(mod, nn.Linear) or not fusable:
            raise _refuse(
                f"node {node.name!r} (Add) adds a constant to a tensor; only the bias of a "
                "MatMul classifier layer (read by nothing else) is supported"
            )
        b = np.asarray(b, dtype=np.float32).reshape(-1)
        if b.size == 1:
            b = np.full(mod.out_features, b.item(), dtype=np.float32)
        if b.shape != (mod.out_features,):
            raise _refuse(f"node {node.name!r} (Add) has a bias of the wrong size")
        lin = nn.Linear(mod.in_features, mod.out_features, bias=True)
        _load(lin, weight=mod.weight.detach().numpy(), bias=b)
        self.modules[x.index] = lin.eval()
        src = self.layers[x.index].inputs[0]
        value = lin(self.example if src == INPUT else self.tensors[src])
        self.tensors[x.index] = value
        self._set(node, _Tensor(x.index, value))

    def _op_Concat(self, node: Any, args: list[Any]) -> None:
        axis = int(self._attrs(node).get("axis", 0))
        srcs = [self._tensor_arg(node, a) for a in args if a is not None]
        if axis not in (1, -3) or any(s.value.dim() != 4 for s in srcs):
            raise _refuse(
                f"node {node.name!r} (Concat) joins along axis {axis}; only channel concats "
                "(axis 1 of images) are supported"
            )
        if sum(s.value.numel() for s in srcs) > _MAX_VALUE_ELEMENTS:
            raise _refuse(f"node {node.name!r} (Concat) would make a huge tensor")
        value = torch.cat([s.value for s in srcs], dim=1)
        self._set(node, self._layer(node, "Concat", "concat", srcs, value))

    def _flatten(self, node: Any, x: _Tensor) -> None:
        if x.value.dim() == 2:
            self._set(node, x)  # already flat
        else:
            self._module(node, "Flatten", "flatten", x, nn.Flatten())

    def _op_Flatten(self, node: Any, args: list[Any]) -> None:
        x = self._tensor_arg(node, args[0])
        if int(self._attrs(node).get("axis", 1)) != 1:
            raise _refuse(f"node {node.name!r} (Flatten) must keep the batch axis (axis=1)")
        self._flatten(node, x)

    def _op_Reshape(self, node: Any, args: list[Any]) -> None:
        x, shape = args[0], self._const(node, args[1], "shape").astype(np.int64)
        if isinstance(x, _Grouped):
            if not x.transposed:
                raise _refuse(f"node {node.name!r} (Reshape) regroups channels without shuffling")
            src = x.src
            n, c, h, w = src.value.shape
            grouped = (n, c // x.groups, x.groups, h, w)  # after the transpose
            if _resolve(shape, grouped, node, self.file_batch) != tuple(src.value.shape):
                raise _refuse(f"node {node.name!r} (Reshape) does not undo the channel grouping")
            value = torch.channel_shuffle(src.value, x.groups)
            self.shuffles[len(self.layers)] = x.groups
            self._set(node, self._layer(node, "Shuffle", "shuffle", [src], value))
            return
        t = self._tensor_arg(node, x)
        target = _resolve(shape, tuple(t.value.shape), node, self.file_batch)
        batch, rest = int(t.value.shape[0]), tuple(t.value.shape[1:])
        if target == tuple(t.value.shape):
            self._set(node, t)
        elif target == (batch, math.prod(rest)):
            self._flatten(node, t)
        elif (
            t.value.dim() == 4
            and len(target) == 5
            and target[0] == batch
            and (target[1] * target[2] == rest[0] and target[3:] == rest[1:])
        ):
            self._set(node, _Grouped(t, int(target[1]), transposed=False))
        else:
            raise _refuse(
                f"node {node.name!r} (Reshape) turns {tuple(t.value.shape)} into {target}; only "
                "flattening and the channel shuffle are supported"
            )

    def _op_Transpose(self, node: Any, args: list[Any]) -> None:
        x = args[0]
        perm = list(self._attrs(node).get("perm", []))
        if isinstance(x, _Grouped) and not x.transposed and perm == [0, 2, 1, 3, 4]:
            self._set(node, _Grouped(x.src, x.groups, transposed=True))
            return
        raise _refuse(
            f"node {node.name!r} (Transpose) with perm {perm}; only the channel shuffle's "
            "Reshape-Transpose(0, 2, 1, 3, 4)-Reshape is supported"
        )

    def _channel_slice(self, node: Any, x: _Tensor, start: int, stop: int, k: int = 0) -> None:
        c = int(x.value.shape[1])
        start, stop, _ = slice(start, stop).indices(c)
        if stop <= start:
            raise _refuse(f"node {node.name!r} ({node.op_type}) takes no channels")
        idx = len(self.layers)
        value = x.value[:, start:stop]
        self.slices[idx] = (start, stop)
        self._set(node, self._layer(_Renamed(node, f"/{k}" if k else ""), "Identity", "slice",
                                    [x], value), k)  # fmt: skip

    def _op_Slice(self, node: Any, args: list[Any]) -> None:
        x = self._tensor_arg(node, args[0])
        if self.opset < 10:
            raise _refuse(f"node {node.name!r} (Slice) of opset < 10")
        starts, ends = (self._const(node, v, "bounds").tolist() for v in args[1:3])
        rank = x.value.dim()
        axes, steps = _arg(args, 3), _arg(args, 4)
        axes = (
            list(range(len(starts))) if axes is None else self._const(node, axes, "axes").tolist()
        )
        steps = [1] * len(starts) if steps is None else self._const(node, steps, "steps").tolist()
        span = None
        for ax, s, e, st in zip(axes, starts, ends, steps, strict=True):
            ax = int(ax) % rank
            dim = int(x.value.shape[ax])
            whole = slice(int(s), int(e), int(st)).indices(dim) == (0, dim, 1)
            if ax == 1 and st == 1 and rank == 4:
                span = (int(s), int(e))
            elif not whole:
                span = None
                break
        if span is None:
            raise _refuse(
                f"node {node.name!r} (Slice) slices outside the channel axis; only channel "
                "slices x[:, a:b] are supported"
            )
        self._channel_slice(node, x, *span)

    def _op_Split(self, node: Any, args: list[Any]) -> None:
        x = self._tensor_arg(node, args[0])
        a = self._attrs(node)
        axis = int(a.get("axis", 0))
        if x.value.dim() != 4 or axis % 4 != 1:
            raise _refuse(f"node {node.name!r} (Split) splits axis {axis}; only channels (1)")
        outs = [o for o in node.output]
        c = int(x.value.shape[1])
        if _arg(args, 1) is not None:
            sizes = [int(v) for v in self._const(node, args[1], "sizes").tolist()]
        elif "split" in a:
            sizes = [int(v) for v in a["split"]]
        else:
            step = -(-c // len(outs))
            sizes = [min(step, c - k * step) for k in range(len(outs))]
        if sum(sizes) != c or len(sizes) != len(outs):
            raise _refuse(f"node {node.name!r} (Split) has sizes {sizes} for {c} channels")
        start = 0
        for k, (size, name) in enumerate(zip(sizes, outs, strict=True)):
            if name:
                self._channel_slice(node, x, start, start + size, k)
            start += size

    def _op_Identity(self, node: Any, args: list[Any]) -> None:
        self._set(node, args[0])

    def _op_Dropout(self, node: Any, args: list[Any]) -> None:
        if len(node.output) > 1 and node.output[1] and self.uses[node.output[1]]:
            raise _refuse(f"node {node.name!r} (Dropout): its mask is read; not supported")
        self._set(node, args[0])


class _Renamed:
    """A node seen under another name (one ONNX node that becomes two layers)."""

    def __init__(self, node: Any, suffix: str) -> None:
        self._node, self.name = node, node.name + suffix
        self.output, self.op_type = node.output, node.op_type

    def __getattr__(self, item: str) -> Any:
        return getattr(self._node, item)


def _arg(args: list[Any], k: int) -> Any:
    """The `k`-th input of a node, None when it is absent or left empty."""
    return args[k] if len(args) > k else None


def _pair(node: Any, attrs: dict[str, Any], name: str) -> tuple[int, int]:
    """A positive 2-D stride / dilation attribute (default 1, 1)."""
    v = [int(x) for x in attrs.get(name, [1, 1])]
    if len(v) != 2 or min(v) < 1:
        raise _refuse(f"node {node.name!r} ({node.op_type}) has {name}={v}; want two positive ints")
    return v[0], v[1]


def _sym_pads(node: Any, pads: list[int]) -> tuple[int, int]:
    p = [int(v) for v in pads]
    if len(p) != 4 or p[0] != p[2] or p[1] != p[3]:
        raise _refuse(
            f"node {node.name!r} ({node.op_type}) pads asymmetrically {p}; only symmetric "
            "padding is supported"
        )
    return p[0], p[1]


def _scalar(v: Any) -> float | None:
    if isinstance(v, np.ndarray) and v.size == 1:
        return float(v.reshape(-1)[0])
    return None


def _resolve(
    shape: np.ndarray, in_shape: tuple[int, ...], node: Any, file_batch: int | None
) -> tuple[int, ...]:
    """A Reshape's target shape with 0 (copy) and -1 (infer) resolved against `in_shape`.

    The import runs at its own example batch; a file with a fixed batch writes that batch into
    its reshape targets (`[1, 512]`), so a leading dimension equal to it means "the batch"."""
    dims = [int(v) for v in shape.reshape(-1).tolist()]
    numel = math.prod(in_shape)
    allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
    if any(d < -1 for d in dims) or (allowzero and 0 in dims):
        raise _refuse(f"node {node.name!r} (Reshape) has the target shape {dims}")
    out = [int(in_shape[i]) if d == 0 and i < len(in_shape) else d for i, d in enumerate(dims)]
    if file_batch is not None and out and out[0] == file_batch:
        out[0] = in_shape[0]
    if out.count(-1) > 1:
        raise _refuse(f"node {node.name!r} (Reshape) has several -1 dimensions")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or numel % known:
            raise _refuse(f"node {node.name!r} (Reshape) cannot reshape {in_shape} to {dims}")
        out[out.index(-1)] = numel // known
    if math.prod(out) != numel:
        raise _refuse(f"node {node.name!r} (Reshape) cannot reshape {in_shape} to {dims}")
    return tuple(out)


def _load(module: nn.Module, **tensors: np.ndarray | None) -> None:
    """Copy the given arrays into `module`'s parameters / buffers of the same names."""
    state = {}
    for k, v in tensors.items():
        if v is None:
            continue
        own = getattr(module, k)
        if v.size != own.numel():
            raise _refuse(f"weight {k} of {type(module).__name__} has the wrong size")
        state[k] = torch.tensor(np.asarray(v, dtype=np.float32)).reshape(own.shape)
    module.load_state_dict(state, strict=False)


def check_against_onnxruntime(
    data: bytes, teacher: ImportedTeacher, trials: int = 2, tolerance: float = 1e-4
) -> float:
    """Run the file in ONNX Runtime and the imported network on the same random inputs.

    Returns:
        The largest absolute difference of the outputs, relative to max(1, |output|).

    Raises:
        OnnxImportError: ONNX Runtime cannot run the file, or the outputs differ by more than
            `tolerance`.
    """
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, torch.get_num_threads())
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise _refuse(f"ONNX Runtime cannot load the model: {exc}") from exc
    name = session.get_inputs()[0].name
    gen = torch.Generator().manual_seed(1)
    worst = 0.0
    teacher.model.eval()
    for _ in range(trials):
        x = torch.rand(teacher.batch or 3, *teacher.input_shape, generator=gen)
        try:
            (ref,) = session.run(None, {name: x.numpy()})[:1]
        except Exception as exc:  # noqa: BLE001 - reported to the user
            raise _refuse(f"ONNX Runtime cannot run the model: {exc}") from exc
        with torch.no_grad():
            got = teacher.model(x).numpy()
        if got.shape != ref.shape:
            raise _refuse(f"the imported network returns {got.shape}, ONNX Runtime {ref.shape}")
        if not (np.isfinite(ref).all() and np.isfinite(got).all()):
            raise _refuse(
                "the model's outputs are not finite (NaN or infinity) on random inputs; check "
                "its weights"
            )
        scale = max(1.0, float(np.abs(ref).max()))
        worst = max(worst, float(np.abs(got - ref).max()) / scale)
    if worst > tolerance:
        raise _refuse(
            f"the imported network's outputs differ from ONNX Runtime's by {worst:.2e} "
            f"(relative; tolerance {tolerance:g}); please report this model"
        )
    return worst
