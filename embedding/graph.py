"""The ordered layer graph of a teacher, which the search space works on.

A teacher read by `embedding.fx_trace.trace` (torch.fx) becomes a `LayerGraph`: each
supported op becomes a `Layer` (in topological order) with its kind, hyper-parameters, input and
output shapes and the indices of the layers it reads. Pass-through modules (Identity, Dropout) are
folded away. Channel groups -- sets of tensors whose channel counts must stay equal (everything
joined by a residual add, a depthwise conv's input and output, ...) -- are derived from the graph
with a union-find, never written per model family.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "INPUT",
    "KINDS",
    "ChannelSpec",
    "Layer",
    "LayerGraph",
    "GraphBuilder",
    "UnionFind",
    "UnsupportedModelError",
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
#: Columns of an encoded row before its connection vectors: the kind one-hot and six numbers
#: (`CompressionSpace.encode`; the encoder projects them densely).
DENSE_COLUMNS = len(KINDS) + 6

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


Segments = list[tuple[int, int]]  # (union-find element, channels) per channel segment


class GraphBuilder:
    """Layers in topological order with their channel segments; channel groups by union-find.

    Independent of how the network was read: `add` appends a layer, `union` / `freeze` join and
    freeze channel groups, and `finish` numbers the groups and returns the `LayerGraph`.
    """

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        self.input_shape = tuple(input_shape)
        self.uf = UnionFind()
        self.layers: list[Layer] = []
        self.specs: list[Segments] = []
        self.spatial: list[int] = []  # flattened spatial size per output (1 unless flattened)
        self.input_spec: Segments = [(self.uf.add(input_shape[0], frozen=True), input_shape[0])]

    def spec(self, idx: int) -> Segments:
        return self.input_spec if idx == INPUT else self.specs[idx]

    def shape(self, idx: int) -> tuple[int, ...]:
        return self.input_shape if idx == INPUT else self.layers[idx].out_shape

    def spatial_of(self, idx: int) -> int:
        return 1 if idx == INPUT else self.spatial[idx]

    def freeze(self, idx: int) -> None:
        for g, _ in self.spec(idx):
            self.uf.freeze(g)

    def new_group(self, channels: int, frozen: bool = False) -> Segments:
        return [(self.uf.add(channels, frozen=frozen), channels)]

    def add(
        self,
        name: str,
        kind: str,
        op: str,
        inputs: list[int],
        out_shape: tuple[int, ...],
        attrs: dict,
        module: str | None,
        out_spec: Segments,
        out_spatial: int,
    ) -> int:
        idx = len(self.layers)
        in_shape = self.shape(inputs[0])
        self.layers.append(
            Layer(idx, name, kind, op, tuple(inputs), tuple(in_shape), out_shape, attrs, module)
        )
        self.specs.append(out_spec)
        self.spatial.append(out_spatial)
        return idx

    def finish(self, output_index: int | None) -> LayerGraph:
        """Freeze the output's groups, number the groups by first appearance, and build."""
        if output_index is None or output_index != len(self.layers) - 1:
            raise UnsupportedModelError("the model's output must be produced by its last layer")
        for g, _ in self.specs[output_index]:
            self.uf.freeze(g)
        canon: dict[int, int] = {}
        sizes: list[int] = []
        frozen: set[int] = set()

        def canon_spec(sp: Segments) -> ChannelSpec:
            out = []
            for g, size in sp:
                root = self.uf.find(g)
                if root not in canon:
                    canon[root] = len(sizes)
                    sizes.append(size)
                    if self.uf.frozen[root]:
                        frozen.add(canon[root])
                out.append((canon[root], size))
            return tuple(out)

        in_spec = canon_spec(self.input_spec)
        specs = tuple(canon_spec(sp) for sp in self.specs)
        layers = []
        for layer, sp in zip(self.layers, self.spatial, strict=True):
            attrs = dict(layer.attrs)
            attrs["spatial"] = sp
            if layer.op == "linear" and layer.inputs[0] != INPUT:
                attrs["in_spatial"] = self.spatial[layer.inputs[0]]
            layers.append(dataclasses.replace(layer, attrs=attrs))
        return LayerGraph(
            tuple(layers), specs, in_spec, tuple(sizes), frozenset(frozen), self.input_shape
        )
