"""Read a PyTorch teacher into a `LayerGraph` with `torch.fx` and shape propagation.

The teacher is traced with `torch.fx` and its shapes propagated on one example input; each node
is read into a `GraphBuilder` (one method per op family), so channel groups come from the graph
itself, never from per-family code. The first unsupported op is named with the module that owns it.
"""

from __future__ import annotations

import math
import operator
import threading
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from embedding.graph import INPUT, GraphBuilder, LayerGraph, Segments, UnsupportedModelError

__all__ = ["channel_shuffle", "trace"]

_PASS_MODULES = (nn.Identity, nn.Dropout)
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_FLATTEN_FUNCS = {torch.flatten}
_RELU_FUNCS = {torch.relu, torch.nn.functional.relu}
_CAT_FUNCS = {torch.cat, torch.concat}


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's channel shuffle as reshape-transpose-reshape: the form ONNX exporters write
    (PyTorch's native `channel_shuffle` has no ONNX export). Modules that call it register it
    with `torch.fx.wrap` so `trace` sees one shuffle, not three shape ops."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


_SHUFFLE_FUNCS = {torch.channel_shuffle, torch.nn.functional.channel_shuffle, channel_shuffle}


def _shape(meta: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in meta.shape[1:])


def _owner(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        return str(path[0] if isinstance(path, tuple) else path) or "<root>"
    return "<root>"


def _pair(v: Any) -> int:
    """The paper's encoding stores one number per hyper-parameter; square ops keep the first."""
    return int(v[0] if isinstance(v, tuple | list) else v)


def _module_layer(mod: nn.Module, path: str, in_shape: tuple[int, ...]) -> tuple[str, str, dict]:
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            raise UnsupportedModelError(
                f"Conv2d at '{path}' uses padding={mod.padding!r}/{mod.padding_mode!r}; "
                "only numeric zero padding is supported"
            )
        return (
            "Conv2d",
            "conv",
            {
                "kernel": _pair(mod.kernel_size),
                "stride": _pair(mod.stride),
                "padding": _pair(mod.padding),
                "groups": mod.groups,
                "in_channels": mod.in_channels,
                "out_channels": mod.out_channels,
                "kernel_size": tuple(mod.kernel_size),
                "stride2": tuple(mod.stride),
                "padding2": tuple(mod.padding),
                "dilation": tuple(mod.dilation),
                "bias": mod.bias is not None,
            },
        )
    if isinstance(mod, nn.BatchNorm2d):
        return (
            "BatchNorm2d",
            "bn",
            {
                "eps": mod.eps,
                "momentum": mod.momentum,
                "affine": mod.affine,
                "track_running_stats": mod.track_running_stats,
            },
        )
    if isinstance(mod, nn.ReLU6):
        return "ReLU", "relu6", {}
    if isinstance(mod, nn.ReLU):
        return "ReLU", "relu", {}
    if isinstance(mod, nn.MaxPool2d | nn.AvgPool2d):
        kind = "MaxPool2d" if isinstance(mod, nn.MaxPool2d) else "AvgPool2d"
        stride = mod.stride if mod.stride is not None else mod.kernel_size
        attrs = {
            "kernel": _pair(mod.kernel_size),
            "stride": _pair(stride),
            "padding": _pair(mod.padding),
            "kernel_size": mod.kernel_size,
            "stride2": stride,
            "padding2": mod.padding,
            "ceil_mode": mod.ceil_mode,
        }
        if isinstance(mod, nn.MaxPool2d):
            if _pair(mod.dilation) != 1:
                raise UnsupportedModelError(f"dilated MaxPool2d at '{path}' is not supported")
        else:
            attrs["count_include_pad"] = mod.count_include_pad
        return kind, "maxpool" if kind == "MaxPool2d" else "avgpool", attrs
    if isinstance(mod, nn.AdaptiveAvgPool2d):
        return "AvgPool2d", "adaptive_avgpool", _adaptive_attrs(mod.output_size, in_shape, path)
    if isinstance(mod, nn.Linear):
        return (
            "Linear",
            "linear",
            {
                "in_channels": mod.in_features,
                "out_channels": mod.out_features,
                "bias": mod.bias is not None,
            },
        )
    if isinstance(mod, nn.Flatten):
        if mod.start_dim != 1 or mod.end_dim != -1:
            raise UnsupportedModelError(f"Flatten at '{path}' must flatten dims 1..-1")
        return "Flatten", "flatten", {}
    if isinstance(mod, nn.ChannelShuffle):
        return "Shuffle", "shuffle", {"groups": int(mod.groups)}
    raise UnsupportedModelError(
        f"unsupported module {type(mod).__name__} at '{path}'; supported: Conv2d, BatchNorm2d, "
        "ReLU, ReLU6, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Linear, Flatten, ChannelShuffle, "
        "Identity, Dropout, residual add, torch.cat, Tensor.chunk"
    )


def _adaptive_attrs(output_size: Any, in_shape: tuple[int, ...], path: str) -> dict:
    out = output_size if isinstance(output_size, tuple | list) else (output_size, output_size)
    h, w = in_shape[-2:]
    oh, ow = (h if out[0] is None else out[0]), (w if out[1] is None else out[1])
    if h % oh or w % ow:
        raise UnsupportedModelError(
            f"AdaptiveAvgPool2d at '{path}' maps {h}x{w} to {oh}x{ow}, which is not a plain pooling"
        )
    return {"kernel": h // oh, "stride": h // oh, "padding": 0, "output_size": (oh, ow)}


#: torch.fx's symbolic tracing patches `nn.Module.__call__` for the whole process while it runs,
#: so a forward pass in another thread meanwhile is intercepted by that tracer: it fails ("module
#: is not installed as a submodule") or pollutes the other graph. Every trace holds this lock
#: (re-entrant), as does code that runs modules in threads beside traces (the coordinator's
#: `service.searchers.build_space`, which loads ONNX teachers by running their modules).
TRACE_LOCK = threading.RLock()


def trace(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32)) -> LayerGraph:
    """Trace `model` into a `LayerGraph`.

    Args:
        model: any module built from supported ops.
        input_shape: shape of one example without the batch dimension.

    Raises:
        UnsupportedModelError: naming the first unsupported op and the module that owns it.
    """
    gm = _traced_with_shapes(model, input_shape)
    visitor = _FxVisitor(gm, GraphBuilder(input_shape))
    for node in gm.graph.nodes:
        visitor.visit(node)
    return visitor.graph.finish(visitor.output_index)


def _traced_with_shapes(model: nn.Module, input_shape: tuple[int, ...]) -> torch.fx.GraphModule:
    """`torch.fx` trace of `model` with every node's `tensor_meta` (eval mode, batch of 2)."""
    with TRACE_LOCK:
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception as exc:  # fx raises many types for dynamic control flow
            raise UnsupportedModelError(f"the model cannot be traced by torch.fx: {exc}") from exc
        was_training = model.training
        model.eval()
        gm.eval()
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(torch.zeros(2, *input_shape))
        except Exception as exc:  # the user's model failing on the example input
            shape = ", ".join(map(str, input_shape))
            raise UnsupportedModelError(
                f"the model fails on an input of shape (2, {shape}): {exc}; check input_shape"
            ) from exc
        finally:
            model.train(was_training)
    return gm


class _FxVisitor:
    """Reads a shape-propagated `torch.fx` graph node by node into a `GraphBuilder`."""

    def __init__(self, gm: torch.fx.GraphModule, graph: GraphBuilder) -> None:
        self.modules = dict(gm.named_modules())
        self.graph = graph
        self.where: dict[str, Any] = {}  # fx node name -> layer index, INPUT, or a chunk
        self.output_index: int | None = None

    def source(self, arg: Any, node: torch.fx.Node) -> int:
        """The layer index that produces `arg` (an fx node read by `node`)."""
        if not isinstance(arg, torch.fx.Node):
            raise UnsupportedModelError(
                f"op '{node.target}' in '{_owner(node)}' takes a non-tensor argument {arg!r}"
            )
        loc = self.where.get(arg.name)
        if not isinstance(loc, int):
            raise UnsupportedModelError(
                f"op '{node.target}' in '{_owner(node)}' reads '{arg.name}', which is not a tensor "
                "produced by a supported op"
            )
        return loc

    def add(
        self,
        node: torch.fx.Node,
        kind: str,
        op: str,
        inputs: list[int],
        attrs: dict,
        module: str | None,
        out_spec: Segments,
        out_spatial: int,
    ) -> None:
        shape = _shape(node.meta["tensor_meta"])
        self.where[node.name] = self.graph.add(
            node.name, kind, op, inputs, shape, attrs, module, out_spec, out_spatial
        )

    def visit(self, node: torch.fx.Node) -> None:
        if node.op == "placeholder":
            if self.where:
                raise UnsupportedModelError("models with more than one input are not supported")
            self.where[node.name] = INPUT
        elif node.op == "output":
            out = node.args[0]
            if not isinstance(out, torch.fx.Node) or not isinstance(self.where.get(out.name), int):
                raise UnsupportedModelError("the model must return a single tensor")
            self.output_index = self.where[out.name]
        elif node.op == "get_attr":
            raise UnsupportedModelError(
                f"parameter/buffer access '{node.target}' outside a module is not supported"
            )
        elif node.op == "call_module":
            self.module(node, self.modules[str(node.target)])
        elif node.op in ("call_function", "call_method"):
            self.function(node)
        else:
            raise UnsupportedModelError(f"unsupported graph node {node.op} '{node.target}'")

    def module(self, node: torch.fx.Node, mod: Any) -> None:
        g = self.graph
        src = self.source(node.args[0], node)
        if isinstance(mod, _PASS_MODULES):
            self.where[node.name] = src
            return
        in_shape = g.shape(src)
        kind, op, attrs = _module_layer(mod, str(node.target), tuple(in_shape))
        in_spec = g.spec(src)
        out_spatial = 1 if op == "linear" else g.spatial_of(src)
        out_spec = in_spec
        if op == "conv":
            depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
            if not depthwise and mod.groups > 1:
                g.freeze(src)
                out_spec = g.new_group(mod.out_channels, frozen=True)
            elif not depthwise:
                out_spec = g.new_group(mod.out_channels)
            attrs["depthwise"] = depthwise
        elif op == "linear":
            out_spec = g.new_group(mod.out_features)
        elif op == "shuffle":
            g.freeze(src)
        elif op == "flatten":
            out_spatial = math.prod(int(s) for s in in_shape[1:])
        self.add(node, kind, op, [src], attrs, str(node.target), out_spec, out_spatial)

    def function(self, node: torch.fx.Node) -> None:
        target, method = node.target, node.op == "call_method"
        if (method and target == "contiguous") or target is torch.nn.functional.dropout:
            self.where[node.name] = self.source(node.args[0], node)
        elif target in _ADD_FUNCS or (method and target in ("add", "add_")):
            self.residual_add(node)
        elif target in _CAT_FUNCS:
            self.concat(node)
        elif target in _FLATTEN_FUNCS or (method and target == "flatten"):
            self.flatten(node)
        elif target in _RELU_FUNCS or (method and target == "relu"):
            src = self.source(node.args[0], node)
            g = self.graph
            self.add(node, "ReLU", "relu", [src], {}, None, g.spec(src), g.spatial_of(src))
        elif target is torch.nn.functional.adaptive_avg_pool2d:
            src = self.source(node.args[0], node)
            size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
            attrs = _adaptive_attrs(size, tuple(self.graph.shape(src)), _owner(node))
            self.add(node, "AvgPool2d", "adaptive_avgpool", [src], attrs, None,
                     self.graph.spec(src), 1)  # fmt: skip
        elif method and target == "chunk":
            self.chunk(node)
        elif target is operator.getitem and (chunk := self._chunk_read(node)) is not None:
            self.chunk_part(node, chunk)
        elif target is operator.getitem and (span := _channel_span(node)) is not None:
            src = self.source(node.args[0], node)
            self.channel_slice(node, src, *span)
        elif target in _SHUFFLE_FUNCS:
            self.shuffle(node)
        else:
            name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
            raise UnsupportedModelError(
                f"unsupported op '{name}' ({node.op}) in module '{_owner(node)}'; supported "
                "functional ops: residual add, torch.cat(dim=1), torch.flatten(start_dim=1), "
                "relu, Tensor.chunk(dim=1), x[:, a:b], channel_shuffle"
            )

    def residual_add(self, node: torch.fx.Node) -> None:
        """Two tensors summed: their channel groups become one (or both freeze if they differ)."""
        g = self.graph
        if len(node.args) != 2 or node.kwargs:
            raise UnsupportedModelError(f"add in '{_owner(node)}' must add exactly two tensors")
        a, b = self.source(node.args[0], node), self.source(node.args[1], node)
        sa, sb = g.spec(a), g.spec(b)
        if len(sa) == len(sb) == 1:
            g.uf.union(sa[0][0], sb[0][0])
        elif [s for _, s in sa] == [s for _, s in sb]:
            for (ga, _), (gb, _) in zip(sa, sb, strict=True):
                g.uf.union(ga, gb)
        else:
            g.freeze(a)
            g.freeze(b)
        self.add(node, "Identity", "add", [a, b], {}, None, list(sa), g.spatial_of(a))

    def concat(self, node: torch.fx.Node) -> None:
        tensors = node.args[0]
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if dim not in (1, -3) or not isinstance(tensors, list | tuple):
            raise UnsupportedModelError(f"torch.cat in '{_owner(node)}' must join channels (dim=1)")
        srcs = [self.source(t, node) for t in tensors]
        out_spec = [seg for s in srcs for seg in self.graph.spec(s)]
        self.add(node, "Concat", "concat", srcs, {}, None, out_spec, 1)

    def flatten(self, node: torch.fx.Node) -> None:
        start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
        if start != 1 or len(node.args) > 2 or "end_dim" in node.kwargs:
            raise UnsupportedModelError(f"flatten in '{_owner(node)}' must use start_dim=1")
        src = self.source(node.args[0], node)
        sp = math.prod(int(s) for s in self.graph.shape(src)[1:])
        self.add(node, "Flatten", "flatten", [src], {}, None, self.graph.spec(src), sp)

    def chunk(self, node: torch.fx.Node) -> None:
        """`Tensor.chunk` along channels: remembered until its parts are read (`chunk_part`)."""
        dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
        chunks = node.kwargs.get("chunks", node.args[1] if len(node.args) > 1 else None)
        if dim not in (1, -3) or not isinstance(chunks, int):
            raise UnsupportedModelError(f"chunk in '{_owner(node)}' must split channels (dim=1)")
        src = self.source(node.args[0], node)
        self.graph.freeze(src)
        self.where[node.name] = ("chunk", src, chunks)

    def _chunk_read(self, node: torch.fx.Node) -> tuple[str, int, int] | None:
        """The `chunk` record that `node` (a `getitem`) indexes, or None if it reads no chunk."""
        parent = node.args[0]
        if not isinstance(parent, torch.fx.Node):
            return None
        record = self.where.get(parent.name)
        return record if isinstance(record, tuple) else None

    def chunk_part(self, node: torch.fx.Node, chunk: tuple[str, int, int]) -> None:
        _, src, chunks = chunk
        part = int(node.args[1])  # type: ignore[arg-type]
        channels = sum(s for _, s in self.graph.spec(src))
        step = -(-channels // chunks)
        self.channel_slice(node, src, part * step, (part + 1) * step)

    def channel_slice(self, node: torch.fx.Node, src: int, start: int, stop: int | None) -> None:
        """Channels `start:stop` of `src`: a new frozen group (the source freezes too)."""
        channels = sum(s for _, s in self.graph.spec(src))
        start, stop, _ = slice(start, stop).indices(channels)
        if stop <= start:
            raise UnsupportedModelError(f"empty channel slice in '{_owner(node)}'")
        self.graph.freeze(src)
        out_spec = self.graph.new_group(stop - start, frozen=True)
        self.add(node, "Identity", "slice", [src], {"start": start, "stop": stop}, None,
                 out_spec, 1)  # fmt: skip

    def shuffle(self, node: torch.fx.Node) -> None:
        """`channel_shuffle(x, groups)` as a function (the module form is read in `module`)."""
        groups = node.kwargs.get("groups", node.args[1] if len(node.args) > 1 else None)
        if not isinstance(groups, int):
            raise UnsupportedModelError(f"channel_shuffle in '{_owner(node)}' needs int groups")
        src = self.source(node.args[0], node)
        self.graph.freeze(src)
        self.add(node, "Shuffle", "shuffle", [src], {"groups": groups}, None,
                 self.graph.spec(src), self.graph.spatial_of(src))  # fmt: skip


def _channel_span(node: torch.fx.Node) -> tuple[int, int | None] | None:
    """`(start, stop)` when `node` is `x[:, start:stop]` (step 1), else None."""
    index = node.args[1]
    if not isinstance(index, tuple) or len(index) != 2:
        return None
    whole, part = index
    if not (isinstance(whole, slice) and whole == slice(None)) or not isinstance(part, slice):
        return None
    if part.step not in (None, 1) or not all(
        v is None or isinstance(v, int) for v in (part.start, part.stop)
    ):
        return None
    return part.start or 0, part.stop
