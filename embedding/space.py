"""The compression search space of a teacher: actions, students, parameter counts, encodings.

An `Action` is plain data -- which layers are removed, how much each channel group shrinks, which
skip edges are added -- and `teacher + action -> student` is deterministic (`materialize`).

Why one module of ~680 lines: sampling, validation, parameter counting, materialisation and
encoding all read the same private resolution of an action against the teacher graph
(`_resolve`); splitting them would make that resolution a public interface.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn

from embedding.fx_trace import channel_shuffle, trace
from embedding.graph import INPUT, KINDS, Layer, LayerGraph, UnionFind
from embedding.options import INHERITANCE, REMOVALS

torch.fx.wrap("channel_shuffle")  # one traced op in StudentNet (see embedding.fx_trace)

__all__ = [
    "ACTION_FORMAT_VERSION",
    "INHERITANCE",
    "REMOVE_PROBS",
    "SKIP_PROBS",
    "Action",
    "CompressionSpace",
    "InvalidActionError",
    "PAPER_MAX_LAYERS",
    "StudentNet",
    "TooManyLayersError",
    "default_max_layers",
]

ACTION_FORMAT_VERSION = 1
#: The paper's choices for the per-candidate layer-removal probability p1.
REMOVE_PROBS: tuple[float, ...] = (0.3, 0.4, 0.5, 0.6, 0.7)
#: The paper's choices for the per-candidate skip-addition probability p3.
SKIP_PROBS: tuple[float, ...] = (0.003, 0.005, 0.01, 0.03, 0.05)

_NUMERIC = ("kernel", "stride", "padding", "groups", "in_channels", "out_channels")


class InvalidActionError(ValueError):
    """An action that does not belong to this space (wrong teacher, bad indices, bad ratios)."""


class TooManyLayersError(ValueError):
    """The teacher has more layers than the encoding's `max_layers`."""


@dataclass(frozen=True)
class Action:
    """One compressed architecture, relative to its teacher.

    Attributes:
        removed: indices of layers replaced by identity, increasing.
        shrink: one ratio r in [0, 1) per shrinkable channel group; the group keeps
            max(1, int((1 - r) * F)) of its F channels.
        skips: added edges (i, j), i < j: layer j also reads layer i's output.
        teacher: fingerprint of the teacher space the action belongs to (optional).
    """

    removed: tuple[int, ...] = ()
    shrink: tuple[float, ...] = ()
    skips: tuple[tuple[int, int], ...] = ()
    teacher: str | None = None

    def to_json(self) -> str:
        """Serialise to a JSON string (format version included)."""
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": ACTION_FORMAT_VERSION,
            "teacher": self.teacher,
            "removed": list(self.removed),
            "shrink": list(self.shrink),
            "skips": [list(e) for e in self.skips],
        }

    @classmethod
    def from_json(cls, data: str | bytes | dict[str, Any]) -> Action:
        """Parse an action from `to_json()` output (or the equivalent dict).

        Raises:
            InvalidActionError: malformed JSON, unknown format version or wrong field types.
        """
        try:
            obj = json.loads(data) if isinstance(data, str | bytes) else dict(data)
        except (ValueError, TypeError) as exc:
            raise InvalidActionError(f"action is not valid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise InvalidActionError("action JSON must be an object")
        version = obj.get("version", ACTION_FORMAT_VERSION)
        if version != ACTION_FORMAT_VERSION:
            raise InvalidActionError(
                f"action format version {version!r} is not supported (expected "
                f"{ACTION_FORMAT_VERSION})"
            )
        try:
            teacher = obj.get("teacher")
            return cls(
                removed=tuple(int(i) for i in obj.get("removed", ())),
                shrink=tuple(float(r) for r in obj.get("shrink", ())),
                skips=tuple((int(e[0]), int(e[1])) for e in obj.get("skips", ())),
                teacher=None if teacher is None else str(teacher),
            )
        except (TypeError, ValueError, IndexError, KeyError) as exc:
            raise InvalidActionError(f"action JSON has a malformed field: {exc}") from exc

    @property
    def key(self) -> str:
        """A canonical string identifying the architecture (ignores the teacher fingerprint)."""
        return json.dumps(
            [list(self.removed), [repr(r) for r in self.shrink], [list(e) for e in self.skips]],
            separators=(",", ":"),
        )


@dataclass
class _Resolved:
    """Per-action channel counts and effective inputs, computed once and shared."""

    removed: set[int]
    keep: np.ndarray  # kept channels per teacher group id
    inputs: list[tuple[int, ...]]  # effective inputs per layer (teacher edges + skips)
    roots: np.ndarray  # the merged set (union-find root) of every teacher group id


class StudentNet(nn.Module):
    """Executes a (compressed) layer graph in topological order.

    Each kept layer with weights is a submodule `layers.<index>`; removed layers pass their input
    through; a layer with several inputs sums them (concatenates for Concat layers).
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        inputs: Sequence[tuple[int, ...]],
        removed: set[int],
        modules: dict[int, nn.Module],
        slices: dict[int, tuple[int, int]],
        shuffles: dict[int, int],
    ) -> None:
        super().__init__()
        self.ops = [layer.op for layer in layers]
        self.inputs = [tuple(i) for i in inputs]
        self.removed = sorted(removed)
        self._removed = set(removed)
        self.layers = nn.ModuleDict({str(i): m for i, m in modules.items()})
        self.slices = dict(slices)
        self.shuffles = dict(shuffles)
        # Drop each intermediate output after its last reader, to bound activation memory.
        last_use: dict[int, int] = {}
        for i, ins in enumerate(self.inputs):
            for j in ins:
                last_use[j] = i
        self._free_after = [
            [j for j, last in last_use.items() if last == i and j != INPUT]
            for i in range(len(self.inputs))
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs: dict[int, torch.Tensor] = {INPUT: x}
        for i, (op, ins) in enumerate(zip(self.ops, self.inputs, strict=True)):
            if op == "concat":
                y = torch.cat([outs[j] for j in ins], dim=1)
            else:
                y = outs[ins[0]]
                for j in ins[1:]:
                    y = y + outs[j]
                if i not in self._removed:
                    y = self._run_layer(i, op, y)
            outs[i] = y
            for j in self._free_after[i]:
                del outs[j]
        return outs[len(self.ops) - 1]

    def architecture(self) -> dict[str, Any]:
        """The network as JSON-able data (no weights): what `StudentNet.from_architecture`
        rebuilds, so a student can be loaded without its teacher (the model card's)."""
        return {
            "format": STUDENT_FORMAT_VERSION,
            "ops": list(self.ops),
            "inputs": [list(i) for i in self.inputs],
            "removed": list(self.removed),
            "modules": {k: _module_spec(m) for k, m in self.layers.items()},
            "slices": {str(k): list(v) for k, v in self.slices.items()},
            "shuffles": {str(k): v for k, v in self.shuffles.items()},
        }

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> StudentNet:
        """Rebuild a student from `architecture()` (freshly initialised weights).

        Raises:
            InvalidActionError: the data is not a student architecture this version reads.
        """
        try:
            if arch.get("format") != STUDENT_FORMAT_VERSION:
                raise InvalidActionError(
                    f"student architecture format {arch.get('format')!r}; this version reads "
                    f"{STUDENT_FORMAT_VERSION}"
                )
            ops = [str(op) for op in arch["ops"]]
            layers = [Layer(i, str(i), "", op, (), (), ()) for i, op in enumerate(ops)]
            modules = {int(k): _module_from_spec(v) for k, v in arch["modules"].items()}
            return cls(
                layers, [tuple(int(j) for j in i) for i in arch["inputs"]],
                {int(i) for i in arch["removed"]}, modules,
                {int(k): (int(v[0]), int(v[1])) for k, v in arch["slices"].items()},
                {int(k): int(v) for k, v in arch["shuffles"].items()},
            )  # fmt: skip
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise InvalidActionError(f"malformed student architecture: {exc!r}") from exc

    def _run_layer(self, i: int, op: str, y: torch.Tensor) -> torch.Tensor:
        if op == "add":
            return y
        if op == "flatten":
            return torch.flatten(y, 1)
        if op == "slice":
            start, stop = self.slices[i]
            return y[:, start:stop]
        if op == "shuffle":
            return channel_shuffle(y, self.shuffles[i])
        return self.layers[str(i)](y)


#: Version of `StudentNet.architecture()`'s format.
STUDENT_FORMAT_VERSION = 1

#: The modules a student holds, with the constructor arguments its architecture records.
_MODULE_ARGS: dict[str, tuple[type[nn.Module], tuple[str, ...]]] = {
    "Conv2d": (nn.Conv2d, ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                           "dilation", "groups")),
    "BatchNorm2d": (nn.BatchNorm2d, ("num_features", "eps", "momentum", "affine",
                                     "track_running_stats")),
    "Linear": (nn.Linear, ("in_features", "out_features")),
    "ReLU": (nn.ReLU, ()),
    "ReLU6": (nn.ReLU6, ()),
    "MaxPool2d": (nn.MaxPool2d, ("kernel_size", "stride", "padding", "ceil_mode")),
    "AvgPool2d": (nn.AvgPool2d, ("kernel_size", "stride", "padding", "ceil_mode",
                                 "count_include_pad")),
    "AdaptiveAvgPool2d": (nn.AdaptiveAvgPool2d, ("output_size",)),
    "Flatten": (nn.Flatten, ()),
}  # fmt: skip


def _module_spec(mod: nn.Module) -> dict[str, Any]:
    name = type(mod).__name__
    if name not in _MODULE_ARGS:
        raise InvalidActionError(f"a student holds no {name} modules")
    spec: dict[str, Any] = {"type": name}
    for arg in _MODULE_ARGS[name][1]:
        v = getattr(mod, arg)
        spec[arg] = list(v) if isinstance(v, tuple) else v
    if isinstance(mod, nn.Conv2d | nn.Linear):
        spec["bias"] = mod.bias is not None
    return spec


def _module_from_spec(spec: dict[str, Any]) -> nn.Module:
    cls, args = _MODULE_ARGS[str(spec["type"])]
    kw = {a: tuple(spec[a]) if isinstance(spec[a], list) else spec[a] for a in args}
    if "bias" in spec:
        kw["bias"] = bool(spec["bias"])
    return cls(**kw)


#: The paper's L_max: the encoding has 16 + 2 * 128 numbers per layer.
PAPER_MAX_LAYERS = 128


def default_max_layers(num_layers: int) -> int:
    """L_max for a teacher of `num_layers` layers: the paper's 128, or the teacher's depth when
    it is deeper (MobileNetV2 has 152 layers). The one place this policy lives."""
    return max(PAPER_MAX_LAYERS, int(num_layers))


class CompressionSpace:
    """All students reachable from one teacher by the paper's three compression operators.

    Build it with `CompressionSpace.for_teacher(teacher)`; it keeps a reference to the teacher's
    weights for `materialize`. `max_layers` (L_max, the width of the encoding's connection
    vectors) defaults to `default_max_layers(...)`: the paper's 128, or the teacher's layer
    count when it has more, so any teacher works and coordinator and workers agree on it.
    `inheritance` (one of `INHERITANCE`) says which teacher channels a shrunk group keeps; it
    changes the students' weights only, never the actions, parameter counts or encodings.
    `removal` (one of `REMOVALS`) says what is removed together: the paper's single layers, or
    units (`units`); actions and encodings keep their format either way.
    """

    def __init__(
        self,
        graph: LayerGraph,
        teacher: nn.Module | None = None,
        max_layers: int | None = None,
        inheritance: str = "importance",
        removal: str = "layer",
    ) -> None:
        if inheritance not in INHERITANCE:
            raise ValueError(
                f"inheritance must be one of {list(INHERITANCE)}, got {inheritance!r}"
            )
        if removal not in REMOVALS:
            raise ValueError(f"removal must be one of {list(REMOVALS)}, got {removal!r}")
        if max_layers is None:
            max_layers = default_max_layers(len(graph.layers))
        if len(graph.layers) > max_layers:
            raise TooManyLayersError(
                f"the teacher has {len(graph.layers)} layers but max_layers={max_layers}; "
                f"pass max_layers >= {len(graph.layers)}"
            )
        self.graph = graph
        self.max_layers = int(max_layers)
        self.inheritance = inheritance
        self.removal = removal
        self.teacher = teacher
        self._scores: list[np.ndarray] | None = None
        self._state = (
            {k: v.detach() for k, v in teacher.state_dict().items()} if teacher is not None else {}
        )
        layers = graph.layers
        self.num_layers = len(layers)
        self.shrinkable = graph.shrinkable_groups
        self._shrink_pos = {g: k for k, g in enumerate(self.shrinkable)}
        single = [layer.index for layer in layers if self._is_removable(layer)]
        #: what one removal removes together, in layer order: single layers, or units
        self.units: tuple[tuple[int, ...], ...] = (
            tuple((i,) for i in single) if removal == "layer" else self._units(set(single))
        )
        self.removable: tuple[int, ...] = tuple(sorted(i for u in self.units for i in u))
        self._unit_of = {i: u for u in self.units for i in u}
        self.skip_candidates: tuple[tuple[int, int], ...] = self._skip_candidates()
        self._skip_set = set(self.skip_candidates)
        self._removable_set = set(self.removable)
        self.fingerprint = hashlib.sha256(
            json.dumps([[la.op, list(la.inputs), list(la.out_shape)] for la in layers]).encode()
        ).hexdigest()[:16]
        self._template = self._encode_template()
        self.teacher_params = self.num_params(self.empty_action())

    # ----------------------------------------------------------------------------- building
    @classmethod
    def for_teacher(
        cls,
        teacher: nn.Module,
        input_shape: tuple[int, ...] = (3, 32, 32),
        max_layers: int | None = None,
        inheritance: str = "importance",
    ) -> CompressionSpace:
        """Trace `teacher` and build its space with the library's `max_layers` policy (or the
        given L_max). Raises `UnsupportedModelError`, `TooManyLayersError`."""
        return cls(trace(teacher, input_shape), teacher, max_layers, inheritance)

    def _is_removable(self, layer: Layer) -> bool:
        if len(layer.inputs) != 1 or layer.in_shape != layer.out_shape:
            return False
        if layer.op in ("add", "slice", "concat", "flatten"):
            return False
        in_spec = self.graph.spec_of(layer.inputs[0])
        out_spec = self.graph.specs[layer.index]
        return in_spec == out_spec or (len(in_spec) == 1 and len(out_spec) == 1)

    def _units(self, removable: set[int]) -> tuple[tuple[int, ...], ...]:
        """Each removable conv with the BatchNorm and activation that directly follow it (each
        the only reader of the one before, and itself removable)."""
        layers = self.graph.layers
        readers: dict[int, list[int]] = {}
        for layer in layers:
            for j in layer.inputs:
                readers.setdefault(j, []).append(layer.index)
        def sole_reader(i: int, ops: tuple[str, ...]) -> int | None:
            nxt = readers.get(i, [])
            ok = len(nxt) == 1 and nxt[0] in removable and layers[nxt[0]].op in ops
            return nxt[0] if ok else None

        units = []
        for layer in layers:
            if layer.op != "conv" or layer.index not in removable:
                continue
            unit = [layer.index]
            for ops in (("bn",), ("relu", "relu6")):  # each optional, in this order
                nxt = sole_reader(unit[-1], ops)
                if nxt is not None:
                    unit.append(nxt)
            units.append(tuple(unit))
        return tuple(units)

    def _skip_candidates(self) -> tuple[tuple[int, int], ...]:
        layers = self.graph.layers
        out: list[tuple[int, int]] = []
        for j, lj in enumerate(layers):
            if lj.op in ("concat", "slice"):
                continue
            in_spec = self.graph.spec_of(lj.inputs[0])
            for i in range(j - 1):
                if i in lj.inputs or layers[i].out_shape != lj.in_shape:
                    continue
                sp = self.graph.specs[i]
                if sp == in_spec or (len(sp) == 1 and len(in_spec) == 1):
                    out.append((i, j))
        return tuple(out)

    def empty_action(self) -> Action:
        """The action that changes nothing (rebuilds the teacher)."""
        return Action((), tuple(0.0 for _ in self.shrinkable), (), self.fingerprint)

    def most_aggressive_action(self) -> Action:
        """Every removable layer removed and every shrinkable group down to one channel."""
        return Action(
            self.removable, tuple(0.999999 for _ in self.shrinkable), (), self.fingerprint
        )

    # ----------------------------------------------------------------------------- sampling
    def sample(self, rng: np.random.Generator) -> Action:
        """Draw an action with the paper's distributions (docs/ALGORITHM.md)."""
        p1 = REMOVE_PROBS[int(rng.integers(len(REMOVE_PROBS)))]
        p3 = SKIP_PROBS[int(rng.integers(len(SKIP_PROBS)))]
        if self.removal == "layer":
            removable = np.asarray(self.removable, dtype=np.int64)
            removed = removable[rng.random(len(removable)) < p1]
        else:  # each unit with probability p1
            chosen = rng.random(len(self.units)) < p1
            removed = np.asarray(
                sorted(i for u, c in zip(self.units, chosen, strict=True) if c for i in u),
                dtype=np.int64,
            )
        shrink = rng.random(len(self.shrinkable))
        removed_set = set(removed.tolist())
        cand = self.skip_candidates
        picks = np.flatnonzero(rng.random(len(cand)) < p3)
        skips = tuple(cand[k] for k in picks if cand[k][1] not in removed_set)
        return Action(
            tuple(int(i) for i in removed), tuple(float(r) for r in shrink), skips, self.fingerprint
        )

    def validate(self, action: Action) -> None:
        """Raise `InvalidActionError` unless `action` belongs to this space."""
        if action.teacher is not None and action.teacher != self.fingerprint:
            raise InvalidActionError(
                f"the action was made for teacher {action.teacher}, not this one "
                f"({self.fingerprint}); sample actions from this teacher's space"
            )
        if len(action.shrink) != len(self.shrinkable):
            raise InvalidActionError(
                f"the action has {len(action.shrink)} shrink ratios but this teacher has "
                f"{len(self.shrinkable)} shrinkable channel groups"
            )
        for r in action.shrink:
            if not 0.0 <= r < 1.0:
                raise InvalidActionError(f"shrink ratios must lie in [0, 1), got {r}")
        for i in action.removed:
            if i not in self._removable_set:
                raise InvalidActionError(f"layer {i} cannot be removed (not a removable layer)")
        removed = set(action.removed)
        if self.removal == "unit":
            for i in removed:
                if not removed.issuperset(self._unit_of[i]):
                    raise InvalidActionError(
                        f"layer {i} is removed without the rest of its unit "
                        f"{list(self._unit_of[i])} (this space removes whole units)"
                    )
        for e in action.skips:
            if e not in self._skip_set:
                raise InvalidActionError(f"skip edge {e} is not allowed in this teacher's space")
            if e[1] in removed:
                raise InvalidActionError(f"skip edge {e} leads into a removed layer")

    # ------------------------------------------------------------------ channel resolution
    def _resolve(self, action: Action) -> _Resolved:
        self.validate(action)
        g = self.graph
        uf = UnionFind()
        for size in g.group_sizes:
            uf.add(size)
        find, union = uf.find, uf.union

        def join(sa: tuple, sb: tuple) -> None:
            for (ga, _), (gb, _) in zip(sa, sb, strict=True):
                union(ga, gb)

        removed = set(action.removed)
        for i in removed:
            join(g.spec_of(g.layers[i].inputs[0]), g.specs[i])
        skip_in: list[list[int]] = [[] for _ in g.layers]
        for i, j in action.skips:
            join(g.specs[i], g.spec_of(g.layers[j].inputs[0]))
            skip_in[j].append(i)
        # Each merged set keeps the ratio of its lowest-numbered member; frozen members win.
        keep = np.asarray(g.group_sizes, dtype=np.int64).copy()
        root_keep: dict[int, int] = {}
        frozen_roots = {find(f) for f in g.frozen}
        for grp in range(len(g.group_sizes)):
            root = find(grp)
            if root in root_keep:
                keep[grp] = root_keep[root]
                continue
            if root in frozen_roots:
                k = g.group_sizes[grp]
            else:
                r = action.shrink[self._shrink_pos[grp]]
                k = max(1, int((1.0 - r) * g.group_sizes[grp]))
            root_keep[root] = k
            keep[grp] = k
        inputs = [tuple(layer.inputs) + tuple(skip_in[layer.index]) for layer in g.layers]
        roots = np.fromiter((find(grp) for grp in range(len(g.group_sizes))), dtype=np.int64)
        return _Resolved(removed, keep, inputs, roots)

    def _channels(self, spec: tuple, keep: np.ndarray) -> int:
        return int(sum(keep[gid] for gid, _ in spec))

    def _indices(self, spec: tuple, kept: list[torch.Tensor]) -> slice | torch.Tensor:
        """Teacher channel positions kept for a tensor: a slice (a cheap view) when the kept
        channels are its first ones, an index tensor otherwise."""
        if len(spec) == 1:
            idx = kept[spec[0][0]]
            if len(idx) == 0 or int(idx[-1]) == len(idx) - 1:  # increasing, so 0..k-1
                return slice(0, len(idx))
            return idx
        parts, offset = [], 0
        for gid, size in spec:
            parts.append(kept[gid] + offset)
            offset += size
        return torch.cat(parts)

    # ------------------------------------------------------------------ channel importance
    def channel_scores(self) -> list[np.ndarray]:
        """Importance of every teacher channel, per teacher channel group.

        The group L2 magnitude that Torch-Pruning's `GroupMagnitudeImportance` (p = 2) ranks
        by, summed instead of averaged over the coupled layers (the same order within a
        group): for each channel, the squared weights of the conv filters and linear rows
        that produce it, of the conv and linear input slices that read it, and of the
        BatchNorm scales that scale it. Computed once per space.

        Returns:
            One float64 array per teacher group id, of that group's size (zeros when the
            space holds no teacher weights).
        """
        if self._scores is not None:
            return self._scores
        g = self.graph
        scores = [np.zeros(size, dtype=np.float64) for size in g.group_sizes]

        def add(spec: tuple, per_channel: torch.Tensor) -> None:
            values = per_channel.detach().double().cpu().numpy()
            offset = 0
            for gid, size in spec:
                scores[gid] += values[offset : offset + size]
                offset += size

        for layer in g.layers:
            w = self._param(layer, "weight")
            if w is None or layer.op not in ("conv", "bn", "linear"):
                continue
            sq = w.detach().double() ** 2
            out_spec, in_spec = g.specs[layer.index], g.spec_of(layer.inputs[0])
            if layer.op == "bn":
                add(out_spec, sq)
                continue
            add(out_spec, sq.flatten(1).sum(1))
            if layer.op == "conv" and not layer.attrs["depthwise"] and layer.attrs["groups"] == 1:
                add(in_spec, sq.transpose(0, 1).flatten(1).sum(1))
            elif layer.op == "linear":
                sp = layer.attrs.get("in_spatial", 1)
                add(in_spec, sq.reshape(sq.shape[0], -1, sp).sum(dim=(0, 2)))
        self._scores = scores
        return scores

    def _kept(self, res: _Resolved) -> list[torch.Tensor]:
        """The teacher channel positions each group keeps, increasing: its first `keep` ones
        (inheritance "first"), or those of highest importance summed over the teacher groups
        the action merged into one (channel i of every member is one channel of the merged
        set). Ties go to the lower position, so a teacher without weights keeps the first."""
        g, keep = self.graph, res.keep
        if self.inheritance == "first" or not self._state:
            return [torch.arange(int(k)) for k in keep]
        scores = self.channel_scores()
        merged: dict[int, np.ndarray] = {}
        for gid, root in enumerate(res.roots.tolist()):
            if int(keep[gid]) < g.group_sizes[gid]:
                merged[root] = merged.get(root, 0.0) + scores[gid]
        kept: list[torch.Tensor] = []
        chosen: dict[int, torch.Tensor] = {}
        for gid, root in enumerate(res.roots.tolist()):
            k = int(keep[gid])
            if k >= g.group_sizes[gid]:
                kept.append(torch.arange(k))
                continue
            if root not in chosen:
                order = np.argsort(-merged[root], kind="stable")[:k]
                chosen[root] = torch.from_numpy(np.sort(order))
            kept.append(chosen[root])
        return kept

    # ------------------------------------------------------------------ parameters, modules
    def num_params(self, action: Action) -> int:
        """Trainable parameter count of the student, computed without building it."""
        res = self._resolve(action)
        g, keep, total = self.graph, res.keep, 0
        for layer in g.layers:
            if layer.index in res.removed:
                continue
            a = layer.attrs
            if layer.op == "conv":
                cin = self._channels(g.spec_of(layer.inputs[0]), keep)
                cout = self._channels(g.specs[layer.index], keep)
                groups = cout if a["depthwise"] else a["groups"]
                kh, kw = a["kernel_size"]
                total += cout * (cin // groups) * kh * kw + (cout if a["bias"] else 0)
            elif layer.op == "bn" and a["affine"]:
                total += 2 * self._channels(g.specs[layer.index], keep)
            elif layer.op == "linear":
                cin = self._channels(g.spec_of(layer.inputs[0]), keep) * a.get("in_spatial", 1)
                cout = self._channels(g.specs[layer.index], keep)
                total += cin * cout + (cout if a["bias"] else 0)
        return total

    def num_flops(self, action: Action) -> int:
        """FLOPs of the student's forward pass on one input, computed without building it:
        what `embedding.reward.model_flops` counts (convolutions and matrix products, 2 per
        multiply-accumulate)."""
        res = self._resolve(action)
        g, keep, total = self.graph, res.keep, 0
        for layer in g.layers:
            if layer.index in res.removed or layer.op not in ("conv", "linear"):
                continue
            a = layer.attrs
            cin = self._channels(g.spec_of(layer.inputs[0]), keep)
            cout = self._channels(g.specs[layer.index], keep)
            if layer.op == "conv":
                groups = cout if a["depthwise"] else a["groups"]
                kh, kw = a["kernel_size"]
                spatial = int(np.prod(layer.out_shape[1:]))
                total += 2 * cout * (cin // groups) * kh * kw * spatial
            else:
                total += 2 * cin * a.get("in_spatial", 1) * cout
        return total

    def materialize(self, action: Action, *, inherit: bool = True) -> StudentNet:
        """Build the student for `action`, weights sliced from the teacher's channels that the
        space's `inheritance` rule keeps (the most important ones by default, the first ones
        with "first").

        Args:
            action: an action of this space.
            inherit: copy (sliced) teacher weights; otherwise keep the fresh initialisation.

        Returns:
            A `StudentNet` on the CPU in training mode.

        Raises:
            InvalidActionError: the action does not belong to this space.
        """
        res = self._resolve(action)
        g, keep = self.graph, res.keep
        kept = self._kept(res)
        modules: dict[int, nn.Module] = {}
        slices: dict[int, tuple[int, int]] = {}
        shuffles: dict[int, int] = {}
        gen = torch.Generator().manual_seed(0)
        # With inherited weights, build modules on the meta device and assign the sliced teacher
        # tensors: skips the (large) random initialisation that would be overwritten anyway.
        dev = "meta" if inherit and self._state else None
        for layer in g.layers:
            if layer.index in res.removed:
                continue
            a = layer.attrs
            in_spec = g.spec_of(layer.inputs[0])
            out_spec = g.specs[layer.index]
            mod: nn.Module | None = None
            weights: dict[str, torch.Tensor] = {}
            if layer.op == "conv":
                cin, cout = self._channels(in_spec, keep), self._channels(out_spec, keep)
                groups = cout if a["depthwise"] else a["groups"]
                mod = nn.Conv2d(
                    cin,
                    cout,
                    a["kernel_size"],
                    a["stride2"],
                    a["padding2"],
                    a["dilation"],
                    groups,
                    a["bias"],
                    device=dev,
                )
                oi = self._indices(out_spec, kept)
                w = self._param(layer, "weight")
                if w is not None:
                    w = w[oi]
                    if not a["depthwise"] and groups == 1:
                        w = w[:, self._indices(in_spec, kept)]
                    weights["weight"] = w
                    b = self._param(layer, "bias")
                    if b is not None:
                        weights["bias"] = b[oi]
            elif layer.op == "bn":
                c = self._channels(out_spec, keep)
                mod = nn.BatchNorm2d(
                    c, a["eps"], a["momentum"], a["affine"], a["track_running_stats"], device=dev
                )
                oi = self._indices(out_spec, kept)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    t = self._param(layer, name)
                    if t is not None:
                        weights[name] = t[oi]
                t = self._param(layer, "num_batches_tracked")
                if t is not None:
                    weights["num_batches_tracked"] = t
            elif layer.op == "linear":
                sp = a.get("in_spatial", 1)
                ci = self._indices(in_spec, kept)
                cidx = torch.arange(ci.stop) if isinstance(ci, slice) else ci
                ii = (cidx[:, None] * sp + torch.arange(sp)[None, :]).reshape(-1)
                cout = self._channels(out_spec, keep)
                mod = nn.Linear(len(ii), cout, a["bias"], device=dev)
                oi = self._indices(out_spec, kept)
                w = self._param(layer, "weight")
                if w is not None:
                    weights["weight"] = w[oi][:, ii]
                    b = self._param(layer, "bias")
                    if b is not None:
                        weights["bias"] = b[oi]
            elif layer.op == "relu":
                mod = nn.ReLU()
            elif layer.op == "relu6":
                mod = nn.ReLU6()
            elif layer.op == "maxpool":
                mod = nn.MaxPool2d(
                    a["kernel_size"], a["stride2"], a["padding2"], ceil_mode=a["ceil_mode"]
                )
            elif layer.op == "avgpool":
                mod = nn.AvgPool2d(
                    a["kernel_size"],
                    a["stride2"],
                    a["padding2"],
                    ceil_mode=a["ceil_mode"],
                    count_include_pad=a["count_include_pad"],
                )
            elif layer.op == "adaptive_avgpool":
                mod = nn.AdaptiveAvgPool2d(a["output_size"])
            elif layer.op == "slice":
                slices[layer.index] = (a["start"], a["stop"])
            elif layer.op == "shuffle":
                shuffles[layer.index] = a["groups"]
            if mod is None:
                continue
            if inherit and weights:
                mod.load_state_dict(
                    {k: v.clone(memory_format=torch.contiguous_format) for k, v in weights.items()},
                    assign=dev == "meta",
                )
            elif not inherit:
                self._reset(mod, gen)
            modules[layer.index] = mod
        return StudentNet(g.layers, res.inputs, res.removed, modules, slices, shuffles)

    @staticmethod
    def _reset(mod: nn.Module, gen: torch.Generator) -> None:
        with torch.no_grad():
            for p in mod.parameters():
                if p.dim() > 1:
                    bound = 1.0 / max(1, p[0].numel()) ** 0.5
                    p.uniform_(-bound, bound, generator=gen)

    def _param(self, layer: Layer, name: str) -> torch.Tensor | None:
        if layer.module is None:
            return None
        return self._state.get(f"{layer.module}.{name}")

    # ----------------------------------------------------------------------------- encoding
    @property
    def row_size(self) -> int:
        """Width of one encoded row: 16 + 2 * max_layers."""
        return len(KINDS) + len(_NUMERIC) + 2 * self.max_layers

    def _encode_template(self) -> np.ndarray:
        g, L = self.graph, self.max_layers
        rows = np.zeros((self.num_layers, self.row_size), dtype=np.float32)
        base = len(KINDS) + len(_NUMERIC)
        for layer in g.layers:
            i = layer.index
            rows[i, KINDS.index(layer.kind)] = 1.0
            for k, name in enumerate(_NUMERIC[:4]):
                rows[i, len(KINDS) + k] = float(layer.attrs.get(name, 0))
            for j in layer.inputs:
                if j != INPUT:
                    rows[i, base + (i - j)] = 1.0
                    rows[j, base + L + (i - j)] = 1.0
        return rows

    def encode(self, actions: Sequence[Action]) -> torch.Tensor:
        """The paper's per-layer rows for each action.

        Args:
            actions: `batch` actions of this space.

        Returns:
            Tensor `batch x num_layers x (16 + 2 * max_layers)`, float32: a one-hot of the layer
            kind, kernel, stride, padding, groups, in- and out-channels (channels for Conv2d and
            Linear only), then in-connection and out-connection vectors. Removed layers are
            encoded as Identity with zeroed numbers; added skips appear in the connection vectors.
        """
        g, L = self.graph, self.max_layers
        base = len(KINDS) + len(_NUMERIC)
        n_kind = len(KINDS)
        ident = KINDS.index("Identity")
        chan_layers = [la for la in g.layers if la.op in ("conv", "linear")]
        out = np.empty((len(actions), self.num_layers, self.row_size), dtype=np.float32)
        for b, action in enumerate(actions):
            res = self._resolve(action)
            rows = out[b]
            rows[:] = self._template
            keep = res.keep
            for la in chan_layers:
                i = la.index
                cin = self._channels(g.spec_of(la.inputs[0]), keep) * la.attrs.get("in_spatial", 1)
                cout = self._channels(g.specs[i], keep)
                rows[i, n_kind + 4] = cin
                rows[i, n_kind + 5] = cout
                if la.attrs.get("depthwise"):
                    rows[i, n_kind + 3] = cout
            if res.removed:
                idx = np.fromiter(res.removed, dtype=np.int64)
                rows[idx, :base] = 0.0
                rows[idx, ident] = 1.0
            for i, j in action.skips:
                rows[j, base + (j - i)] = 1.0
                rows[i, base + L + (j - i)] = 1.0
        return torch.from_numpy(out)
