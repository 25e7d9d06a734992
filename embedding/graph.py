"""Trace a teacher network into the ordered layer graph the search space works on.

The teacher is traced with `torch.fx` and its shapes propagated on one example input. Each
supported op becomes a `Layer` (in topological order) with its kind, hyper-parameters, input and
output shapes and the indices of the layers it reads. Pass-through modules (Identity, Dropout) are
folded away. Channel groups -- sets of tensors whose channel counts must stay equal (everything
joined by a residual add, a depthwise conv's input and output, ...) -- are derived from the graph
with a union-find, never written per model family.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

__all__ = [
    "INPUT",
    "KINDS",
    "ChannelSpec",
    "Layer",
    "LayerGraph",
    "UnsupportedModelError",
    "trace",
]

#: The ten layer kinds of the paper's encoding, in one-hot order.
KINDS: tuple[str, ...] = (
    "Identity",
    "Flatten",
    "Concat",
    "Shuffle",
    "Conv2d",
    "MaxPool2d",
    "AvgPool2d",
    "ReLU",
    "BatchNorm2d",
    "Linear",
)

#: Index used in `Layer.inputs` for the network input.
INPUT = -1


class UnsupportedModelError(ValueError):
    """The model contains an op the search space cannot represent."""


#: One tensor's channels as segments: (channel group id, number of channels in the teacher).
ChannelSpec = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Layer:
    """One layer of the teacher graph.

    Attributes:
        index: position in topological order.
        name: the fx node name (module path with dots replaced) -- unique.
        kind: one of `KINDS` (the encoding's view of the op).
        op: the executable op: conv, bn, relu, relu6, maxpool, avgpool, adaptive_avgpool,
            linear, flatten, add, concat, shuffle, slice.
        inputs: indices of the layers read (`INPUT` for the network input), in argument order.
        in_shape: shape of the (first) input without the batch dimension.
        out_shape: shape of the output without the batch dimension.
        attrs: hyper-parameters (kernel, stride, padding, groups, in/out channels, bias, ...).
        module: dotted path of the teacher module that owns the weights, if any.
    """

    index: int
    name: str
    kind: str
    op: str
    inputs: tuple[int, ...]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    module: str | None = None


@dataclass(frozen=True)
class LayerGraph:
    """The traced teacher: layers, channel specs and channel groups.

    Attributes:
        layers: in topological order; the last one produces the network output.
        specs: channel spec of every layer's output (index-aligned with `layers`).
        input_spec: channel spec of the network input.
        group_sizes: teacher channel count of each group.
        frozen: group ids whose width may not change (network input/output, channel shuffles,
            channel splits, grouped convs).
        input_shape: shape of one example without the batch dimension.
    """

    layers: tuple[Layer, ...]
    specs: tuple[ChannelSpec, ...]
    input_spec: ChannelSpec
    group_sizes: tuple[int, ...]
    frozen: frozenset[int]
    input_shape: tuple[int, ...]

    def spec_of(self, index: int) -> ChannelSpec:
        """Channel spec of layer `index`'s output (`INPUT` for the network input)."""
        return self.input_spec if index == INPUT else self.specs[index]

    @property
    def shrinkable_groups(self) -> tuple[int, ...]:
        """Group ids an action may shrink, in increasing order."""
        return tuple(g for g in range(len(self.group_sizes)) if g not in self.frozen)


class UnionFind:
    """Disjoint sets of integer elements (path halving; the lower id becomes the root), each
    with a size and a frozen flag that a union propagates. Used for the teacher's channel
    groups here and for an action's merged groups in `embedding.space`."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.frozen: list[bool] = []

    def add(self, size: int, frozen: bool = False) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.frozen.append(frozen)
        return len(self.parent) - 1

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        lo, hi = min(ra, rb), max(ra, rb)
        self.parent[hi] = lo
        self.frozen[lo] = self.frozen[lo] or self.frozen[hi]

    def freeze(self, a: int) -> None:
        self.frozen[self.find(a)] = True


_PASS_MODULES = (nn.Identity, nn.Dropout)
_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_FLATTEN_FUNCS = {torch.flatten}
_RELU_FUNCS = {torch.relu, torch.nn.functional.relu}
_CAT_FUNCS = {torch.cat, torch.concat}


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


def trace(model: nn.Module, input_shape: tuple[int, ...] = (3, 32, 32)) -> LayerGraph:
    """Trace `model` into a `LayerGraph`.

    Args:
        model: any module built from supported ops.
        input_shape: shape of one example without the batch dimension.

    Raises:
        UnsupportedModelError: naming the first unsupported op and the module that owns it.
    """
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
        raise UnsupportedModelError(
            f"the model fails on an input of shape (2, {', '.join(map(str, input_shape))}): {exc}; "
            "check input_shape"
        ) from exc
    finally:
        model.train(was_training)
    modules = dict(gm.named_modules())

    uf = UnionFind()
    layers: list[Layer] = []
    specs: list[list[tuple[int, int]]] = []  # segments of union-find elements
    spatial: list[int] = []  # flattened spatial size per output (1 unless after a flatten)
    where: dict[str, Any] = {}  # fx node name -> layer index, INPUT, or ("chunk", idx, n)
    input_group = uf.add(input_shape[0], frozen=True)
    input_spec = [(input_group, input_shape[0])]
    output_index: int | None = None

    def spec(idx: int) -> list[tuple[int, int]]:
        return input_spec if idx == INPUT else specs[idx]

    def freeze(idx: int) -> None:
        for g, _ in spec(idx):
            uf.freeze(g)

    def source(arg: Any, node: torch.fx.Node) -> int:
        if not isinstance(arg, torch.fx.Node):
            raise UnsupportedModelError(
                f"op '{node.target}' in '{_owner(node)}' takes a non-tensor argument {arg!r}"
            )
        loc = where.get(arg.name)
        if not isinstance(loc, int):
            raise UnsupportedModelError(
                f"op '{node.target}' in '{_owner(node)}' reads '{arg.name}', which is not a tensor "
                "produced by a supported op"
            )
        return loc

    def add_layer(
        node: torch.fx.Node,
        kind: str,
        op: str,
        inputs: list[int],
        attrs: dict,
        module: str | None,
        out_spec: list[tuple[int, int]],
        out_spatial: int,
    ) -> None:
        first = inputs[0]
        in_shape = input_shape if first == INPUT else layers[first].out_shape
        idx = len(layers)
        layers.append(
            Layer(
                idx,
                node.name,
                kind,
                op,
                tuple(inputs),
                tuple(in_shape),
                _shape(node.meta["tensor_meta"]),
                attrs,
                module,
            )
        )
        specs.append(out_spec)
        spatial.append(out_spatial)
        where[node.name] = idx

    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if where:
                raise UnsupportedModelError("models with more than one input are not supported")
            where[node.name] = INPUT
            continue
        if node.op == "output":
            out = node.args[0]
            if not isinstance(out, torch.fx.Node) or not isinstance(where.get(out.name), int):
                raise UnsupportedModelError("the model must return a single tensor")
            output_index = where[out.name]
            continue
        if node.op == "get_attr":
            raise UnsupportedModelError(
                f"parameter/buffer access '{node.target}' outside a module is not supported"
            )
        owner = _owner(node)
        if node.op == "call_module":
            mod = modules[str(node.target)]
            if isinstance(mod, _PASS_MODULES):
                where[node.name] = source(node.args[0], node)
                continue
            src = source(node.args[0], node)
            in_shape = input_shape if src == INPUT else layers[src].out_shape
            kind, op, attrs = _module_layer(mod, str(node.target), tuple(in_shape))
            in_spec = spec(src)
            out_spatial = 1 if op == "linear" else spatial[src] if src != INPUT else 1
            if op == "conv":
                depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
                if depthwise:
                    out_spec = in_spec
                elif mod.groups > 1:
                    freeze(src)
                    out_spec = [(uf.add(mod.out_channels, frozen=True), mod.out_channels)]
                else:
                    out_spec = [(uf.add(mod.out_channels), mod.out_channels)]
                attrs["depthwise"] = depthwise
            elif op == "linear":
                out_spec = [(uf.add(mod.out_features), mod.out_features)]
            elif op == "shuffle":
                freeze(src)
                out_spec = in_spec
            elif op == "flatten":
                out_spatial = 1
                for s in in_shape[1:]:
                    out_spatial *= int(s)
                out_spec = in_spec
            else:
                out_spec = in_spec
            add_layer(node, kind, op, [src], attrs, str(node.target), out_spec, out_spatial)
            continue
        if node.op not in ("call_function", "call_method"):
            raise UnsupportedModelError(f"unsupported graph node {node.op} '{node.target}'")
        target = node.target
        name = target if isinstance(target, str) else getattr(target, "__name__", str(target))
        if (
            node.op == "call_method"
            and target == "contiguous"
            or (node.op == "call_function" and target is torch.nn.functional.dropout)
        ):
            where[node.name] = source(node.args[0], node)
            continue
        if target in _ADD_FUNCS or (node.op == "call_method" and target in ("add", "add_")):
            if len(node.args) != 2 or node.kwargs:
                raise UnsupportedModelError(f"add in '{owner}' must add exactly two tensors")
            a, b = source(node.args[0], node), source(node.args[1], node)
            sa, sb = spec(a), spec(b)
            if len(sa) == len(sb) == 1:
                uf.union(sa[0][0], sb[0][0])
            elif [s for _, s in sa] == [s for _, s in sb]:
                for (ga, _), (gb, _) in zip(sa, sb, strict=True):
                    uf.union(ga, gb)
            else:
                freeze(a)
                freeze(b)
            add_layer(
                node, "Identity", "add", [a, b], {}, None, list(sa), spatial[a] if a != INPUT else 1
            )
            continue
        if target in _CAT_FUNCS:
            tensors = node.args[0]
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
            if dim not in (1, -3) or not isinstance(tensors, list | tuple):
                raise UnsupportedModelError(f"torch.cat in '{owner}' must join channels (dim=1)")
            srcs = [source(t, node) for t in tensors]
            out_spec = [seg for s in srcs for seg in spec(s)]
            add_layer(node, "Concat", "concat", srcs, {}, None, out_spec, 1)
            continue
        if target in _FLATTEN_FUNCS or (node.op == "call_method" and target == "flatten"):
            start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
            if start != 1 or len(node.args) > 2 or "end_dim" in node.kwargs:
                raise UnsupportedModelError(f"flatten in '{owner}' must use start_dim=1")
            src = source(node.args[0], node)
            shp = input_shape if src == INPUT else layers[src].out_shape
            sp = 1
            for s in shp[1:]:
                sp *= int(s)
            add_layer(node, "Flatten", "flatten", [src], {}, None, spec(src), sp)
            continue
        if target in _RELU_FUNCS or (node.op == "call_method" and target == "relu"):
            src = source(node.args[0], node)
            add_layer(
                node,
                "ReLU",
                "relu",
                [src],
                {},
                None,
                spec(src),
                spatial[src] if src != INPUT else 1,
            )
            continue
        if target is torch.nn.functional.adaptive_avg_pool2d:
            src = source(node.args[0], node)
            shp = input_shape if src == INPUT else layers[src].out_shape
            size = node.kwargs.get("output_size", node.args[1] if len(node.args) > 1 else None)
            attrs = _adaptive_attrs(size, tuple(shp), owner)
            add_layer(node, "AvgPool2d", "adaptive_avgpool", [src], attrs, None, spec(src), 1)
            continue
        if node.op == "call_method" and target == "chunk":
            dim = node.kwargs.get("dim", node.args[2] if len(node.args) > 2 else 0)
            chunks = node.kwargs.get("chunks", node.args[1] if len(node.args) > 1 else None)
            if dim not in (1, -3) or not isinstance(chunks, int):
                raise UnsupportedModelError(f"chunk in '{owner}' must split channels (dim=1)")
            src = source(node.args[0], node)
            freeze(src)
            where[node.name] = ("chunk", src, chunks)
            continue
        if (
            target is operator.getitem
            and isinstance(node.args[0], torch.fx.Node)
            and isinstance(where.get(node.args[0].name), tuple)
        ):
            _, src, chunks = where[node.args[0].name]
            part = int(node.args[1])
            channels = sum(s for _, s in spec(src))
            step = -(-channels // chunks)
            start, stop = part * step, min(channels, (part + 1) * step)
            g = uf.add(stop - start, frozen=True)
            add_layer(
                node,
                "Identity",
                "slice",
                [src],
                {"start": start, "stop": stop},
                None,
                [(g, stop - start)],
                1,
            )
            continue
        raise UnsupportedModelError(
            f"unsupported op '{name}' ({node.op}) in module '{owner}'; supported functional ops: "
            "residual add, torch.cat(dim=1), torch.flatten(start_dim=1), relu, Tensor.chunk(dim=1)"
        )

    if output_index is None or output_index != len(layers) - 1:
        raise UnsupportedModelError("the model's output must be produced by its last layer")
    for g, _ in specs[output_index]:
        uf.freeze(g)

    # Canonical group ids: union-find roots numbered by first appearance.
    canon: dict[int, int] = {}
    sizes: list[int] = []
    frozen: set[int] = set()

    def canon_spec(sp: list[tuple[int, int]]) -> ChannelSpec:
        out = []
        for g, size in sp:
            root = uf.find(g)
            if root not in canon:
                canon[root] = len(sizes)
                sizes.append(size)
                if uf.frozen[root]:
                    frozen.add(canon[root])
            out.append((canon[root], size))
        return tuple(out)

    in_spec_c = canon_spec(input_spec)
    final_specs = tuple(canon_spec(s) for s in specs)
    layers_out = []
    for layer, sp in zip(layers, spatial, strict=True):
        attrs = dict(layer.attrs)
        attrs["spatial"] = sp
        if layer.op == "linear" and layer.inputs[0] != INPUT:
            attrs["in_spatial"] = spatial[layer.inputs[0]]
        layers_out.append(
            Layer(
                layer.index,
                layer.name,
                layer.kind,
                layer.op,
                layer.inputs,
                layer.in_shape,
                layer.out_shape,
                attrs,
                layer.module,
            )
        )
    return LayerGraph(
        tuple(layers_out),
        final_specs,
        in_spec_c,
        tuple(sizes),
        frozenset(frozen),
        tuple(input_shape),
    )
