from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from embedding import Action, CompressionSpace, InvalidActionError, TooManyLayersError
from embedding.space import PAPER_MAX_LAYERS, REMOVE_PROBS, default_max_layers
from tests.embedding.test_graph import Residual
from workers import zoo


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # Tiny batches: intra-op threads only add synchronisation (100x slower on a loaded CPU).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _space(name: str) -> tuple[nn.Module, CompressionSpace]:
    torch.manual_seed(0)
    teacher = zoo.build(name, 10)
    with torch.no_grad():  # non-trivial BN statistics so that slicing errors would show
        for m in teacher.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return teacher, CompressionSpace.for_teacher(teacher, max_layers=256)


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.names())
def test_sampled_students_run_and_count_params(name: str) -> None:
    # 100 per network (500 until 2026-12): every sample removes 30-70 % of the removable layers,
    # shrinks every kept layer and may add skips, so each layer of the teacher is removed,
    # kept and shrunk dozens of times over 100 samples; the 400 more cost ~130 CPU s a run
    _, space = _space(name)
    rng = np.random.default_rng(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for _ in range(100):
            action = space.sample(rng)
            student = space.materialize(action)
            assert student(x).shape == (2, 10)
            assert space.num_params(action) == sum(p.numel() for p in student.parameters())


@pytest.mark.parametrize("name", zoo.names())
def test_empty_action_rebuilds_the_teacher(name: str) -> None:
    teacher, space = _space(name)
    teacher.eval()
    student = space.materialize(space.empty_action()).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (student(x) - teacher(x)).abs().max().item() < 1e-5
    assert space.teacher_params == sum(p.numel() for p in teacher.parameters())
    assert space.num_params(space.empty_action()) == space.teacher_params


@pytest.mark.parametrize("name", ["resnet20", "shufflenetv2", "mobilenetv2", "vgg19"])
def test_most_aggressive_action_still_works(name: str) -> None:
    _, space = _space(name)
    action = space.most_aggressive_action()
    student = space.materialize(action)
    out = student(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert space.num_params(action) < space.teacher_params / 5


def test_json_round_trip_rebuilds_identical_student() -> None:
    _, space = _space("resnet20")
    action = space.sample(np.random.default_rng(3))
    again = Action.from_json(action.to_json())
    assert again == action
    a, b = space.materialize(action), space.materialize(again)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.randn(2, 3, 32, 32)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))


def test_sampling_follows_the_papers_distributions() -> None:
    _, space = _space("resnet20")
    rng = np.random.default_rng(0)
    actions = [space.sample(rng) for _ in range(400)]
    removed_frac = np.array([len(a.removed) / len(space.removable) for a in actions])
    assert (
        REMOVE_PROBS[0] - 0.2 < removed_frac.min() and removed_frac.max() < REMOVE_PROBS[-1] + 0.2
    )
    assert abs(removed_frac.mean() - 0.5) < 0.03
    shrink = np.concatenate([a.shrink for a in actions])
    assert 0 <= shrink.min() and shrink.max() < 1 and abs(shrink.mean() - 0.5) < 0.02
    assert any(a.skips for a in actions)
    for a in actions[:50]:
        assert not set(j for _, j in a.skips) & set(a.removed)


def test_encoding_rows_match_hand_computed_values() -> None:
    space = CompressionSpace.for_teacher(Residual(), max_layers=16)
    assert space.row_size == 48 and space.num_layers == 9
    # Skip (0, 3): conv1's output also feeds conv2; remove bn2 (layer 4); halve the one group.
    assert (0, 3) in space.skip_candidates and 4 in space.removable
    action = Action(removed=(4,), shrink=(0.5,), skips=((0, 3),), teacher=space.fingerprint)
    rows = space.encode([action])[0]
    assert rows.shape == (9, 48)

    def expect(kind: int, nums: list[float], ins: list[int], outs: list[int]) -> torch.Tensor:
        row = torch.zeros(48)
        row[kind] = 1
        row[10:16] = torch.tensor(nums)
        for d in ins:
            row[16 + d] = 1
        for d in outs:
            row[32 + d] = 1
        return row

    conv, bn, relu, ident, avg, flat, lin = 4, 8, 7, 0, 6, 1, 9
    expected = [
        expect(conv, [3, 1, 1, 1, 3, 4], [], [1, 3]),  # conv1: 8 -> 4 channels, skip to 3
        expect(bn, [0] * 6, [1], [1]),
        expect(relu, [0] * 6, [1], [1, 3]),
        expect(conv, [3, 1, 1, 1, 4, 4], [1, 3], [1]),  # conv2 reads relu and (skip) conv1
        expect(ident, [0] * 6, [1], [1]),  # removed bn2: Identity, numbers zeroed
        expect(ident, [0] * 6, [1, 3], [1]),  # the residual add
        expect(avg, [32, 32, 0, 0, 0, 0], [1], [1]),
        expect(flat, [0] * 6, [1], [1]),
        expect(lin, [0, 0, 0, 0, 4, 4], [1], []),
    ]
    for i, row in enumerate(expected):
        assert torch.equal(rows[i], row), f"row {i}: {rows[i].tolist()} != {row.tolist()}"
    student = space.materialize(action)
    assert student(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    assert space.num_params(action) == sum(p.numel() for p in student.parameters())


def test_encode_batches_and_matches_single() -> None:
    _, space = _space("resnet20")
    rng = np.random.default_rng(1)
    actions = [space.sample(rng) for _ in range(5)]
    batch = space.encode(actions)
    assert batch.shape == (5, space.num_layers, 16 + 2 * space.max_layers)
    assert torch.equal(batch[2], space.encode([actions[2]])[0])


def test_foreign_and_malformed_actions_are_refused() -> None:
    _, space = _space("resnet20")
    _, other = _space("resnet56")
    foreign = other.sample(np.random.default_rng(0))
    with pytest.raises(InvalidActionError, match="teacher"):
        space.materialize(foreign)
    with pytest.raises(InvalidActionError, match="shrink ratios"):
        space.num_params(Action(shrink=(0.1,)))
    with pytest.raises(InvalidActionError, match="cannot be removed"):
        space.validate(Action(removed=(10_000,), shrink=space.empty_action().shrink))
    with pytest.raises(InvalidActionError, match="version"):
        Action.from_json('{"version": 99}')
    with pytest.raises(InvalidActionError, match="JSON"):
        Action.from_json("{not json")


def test_too_many_layers_is_a_clear_error() -> None:
    with pytest.raises(TooManyLayersError, match="max_layers"):
        CompressionSpace.for_teacher(zoo.build("resnet56", 10), max_layers=128)


def test_any_depth_works_through_the_default_call() -> None:
    """MobileNetV2 (152 layers) needs no max_layers argument: the library picks L_max."""
    deep = CompressionSpace.for_teacher(zoo.build("mobilenetv2", 10))
    assert deep.num_layers > PAPER_MAX_LAYERS and deep.max_layers == deep.num_layers
    shallow = CompressionSpace.for_teacher(zoo.build("resnet20", 10))
    assert shallow.max_layers == PAPER_MAX_LAYERS == default_max_layers(shallow.num_layers)


def test_unknown_zoo_name_lists_known_ones() -> None:
    with pytest.raises(zoo.UnknownModelError, match="resnet20"):
        zoo.build("resnet9000", 10)


def test_student_moves_like_any_module() -> None:
    _, space = _space("resnet20")
    student = space.materialize(space.sample(np.random.default_rng(5))).to(torch.float64)
    assert next(student.parameters()).dtype == torch.float64
    assert student(torch.randn(2, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("arch", ["shufflenetv2", "mobilenetv2"])
def test_students_trace_to_their_own_graph_and_rebuild_from_their_architecture(arch: str) -> None:
    """A student is a network like any teacher: `trace` reads it back to the same graph (what an
    ONNX teacher relies on), and `architecture()` rebuilds it without the teacher."""
    import json

    from embedding.fx_trace import trace
    from embedding.space import StudentNet

    space = CompressionSpace.for_teacher(zoo.build(arch, 10).eval())
    teacher_net = space.materialize(space.empty_action()).eval()
    again = trace(teacher_net)
    assert [(la.op, la.inputs, la.out_shape) for la in again.layers] == [
        (la.op, la.inputs, la.out_shape) for la in space.graph.layers
    ]
    assert again.group_sizes == space.graph.group_sizes and again.frozen == space.graph.frozen
    student = space.materialize(space.sample(np.random.default_rng(3))).eval()
    rebuilt = StudentNet.from_architecture(json.loads(json.dumps(student.architecture())))
    rebuilt.load_state_dict(student.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), student(x))
    with pytest.raises(InvalidActionError, match="format"):
        StudentNet.from_architecture({"format": 99})


# ------------------------------------------------------------------------ channel inheritance
def _uneven_resnet20() -> tuple[nn.Module, CompressionSpace]:
    """resnet20 whose conv filters have very different magnitudes, so that the group ranking
    is far from the channel order."""
    teacher, _ = _space("resnet20")
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in teacher.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.mul_(2 * torch.rand(m.weight.shape[0], 1, 1, 1, generator=gen))
    return teacher, CompressionSpace.for_teacher(teacher, max_layers=256)


@pytest.mark.parametrize("module", ["stem.0", "layers.0.conv1", "layers.4.conv1", "layers.8.conv2"])
def test_a_shrunk_group_keeps_the_channels_torch_pruning_ranks_highest(module: str) -> None:
    import torch_pruning as tp

    teacher, space = _uneven_resnet20()
    layer = next(la for la in space.graph.layers if la.module == module)
    gid = space.graph.specs[layer.index][0][0]
    size = space.graph.group_sizes[gid]
    conv = teacher.get_submodule(module)
    dg = tp.DependencyGraph().build_dependency(teacher, example_inputs=torch.randn(1, 3, 32, 32))
    group = dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=list(range(size)))
    tp_score = tp.importance.GroupMagnitudeImportance(p=2)(group).double().numpy()
    ours = space.channel_scores()[gid]
    # Torch-Pruning averages over the coupled layers and divides by the mean; we sum.
    assert np.allclose(ours / ours.mean(), tp_score / tp_score.mean(), rtol=1e-4)

    k = size // 4
    shrink = [0.0] * len(space.shrinkable)
    shrink[space.shrinkable.index(gid)] = 1 - (k + 0.5) / size
    student = space.materialize(Action((), tuple(shrink), (), space.fingerprint))
    top = np.sort(np.argsort(-tp_score)[:k])
    assert not np.array_equal(top, np.arange(k))  # the test would not tell the rules apart
    kept = student.layers[str(layer.index)].weight
    assert torch.equal(kept, conv.weight[torch.from_numpy(top)])


def test_merged_groups_rank_by_the_sum_of_their_members_scores() -> None:
    teacher, space = _uneven_resnet20()
    layers = space.graph.layers
    conv = next(la for la in layers if la.module == "layers.0.conv2")  # 16 -> 16, removable
    assert conv.index in space.removable
    g_in = space.graph.spec_of(conv.inputs[0])[0][0]
    g_out = space.graph.specs[conv.index][0][0]
    assert g_in != g_out
    shrink = [0.0] * len(space.shrinkable)
    shrink[space.shrinkable.index(min(g_in, g_out))] = 0.5  # the merged set takes this ratio
    action = Action((conv.index,), tuple(shrink), (), space.fingerprint)
    student = space.materialize(action)
    scores = space.channel_scores()
    top = torch.from_numpy(np.sort(np.argsort(-(scores[g_in] + scores[g_out]))[:8]))
    for alone in (scores[g_in], scores[g_out]):  # neither member's own ranking would do
        assert not torch.equal(top, torch.from_numpy(np.sort(np.argsort(-alone)[:8])))
    first = next(la for la in layers if la.module == "layers.0.conv1")
    w = teacher.get_submodule("layers.0.conv1").weight
    assert torch.equal(student.layers[str(first.index)].weight, w[top][:, top])
    assert student(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert space.num_params(action) == sum(p.numel() for p in student.parameters())


#: sha256 prefixes of the state dicts of 30 students per zoo network (`_first_k_digest`), made
#: with commit b5f36ef's `materialize`, which always sliced the teacher's first channels.
_FIRST_K_DIGESTS = {
    "mobilenetv2": "b3f95dff939a2f8d", "resnet18": "e64e4932e79c727a",
    "resnet20": "83d00100972c7a17", "resnet32": "cdd995fa0d0a4d0f",
    "resnet34": "ded4abb2392fb43d", "resnet56": "e87e42b6876bc853",
    "shufflenetv2": "9e7ffd86ba7a140e", "vgg19": "befcac967c92e395",
}  # fmt: skip


def _first_k_digest(space: CompressionSpace) -> str:
    import hashlib

    rng = np.random.default_rng(1)
    h = hashlib.sha256()
    for _ in range(30):
        sd = space.materialize(space.sample(rng)).state_dict()
        for k in sorted(sd):
            h.update(k.encode())
            h.update(sd[k].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(_FIRST_K_DIGESTS))
def test_first_k_inheritance_reproduces_the_earlier_students_bit_for_bit(name: str) -> None:
    teacher, _ = _space(name)
    space = CompressionSpace.for_teacher(teacher, max_layers=256, inheritance="first")
    assert _first_k_digest(space) == _FIRST_K_DIGESTS[name]


def test_first_k_students_hold_the_teachers_leading_block() -> None:
    teacher, _ = _uneven_resnet20()
    space = CompressionSpace.for_teacher(teacher, max_layers=256, inheritance="first")
    ref = {k: v for k, v in teacher.state_dict().items()}
    modules = {la.index: la.module for la in space.graph.layers}
    rng = np.random.default_rng(3)
    for _ in range(5):
        student = space.materialize(space.sample(rng))
        for key, t in student.state_dict().items():
            idx, name = key.split(".")[1:]
            full = ref[f"{modules[int(idx)]}.{name}"]
            assert torch.equal(t, full[tuple(slice(0, n) for n in t.shape)])


def test_importance_and_first_students_differ_only_in_weights() -> None:
    teacher, space = _uneven_resnet20()
    first = CompressionSpace.for_teacher(teacher, max_layers=256, inheritance="first")
    action = space.sample(np.random.default_rng(0))
    a, b = space.materialize(action), first.materialize(action)
    assert a.architecture() == b.architecture()
    assert space.num_params(action) == first.num_params(action)
    assert torch.equal(space.encode([action]), first.encode([action]))
    assert any(not torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())


def test_unknown_inheritance_is_refused() -> None:
    teacher, _ = _space("resnet20")
    with pytest.raises(ValueError, match="importance"):
        CompressionSpace.for_teacher(teacher, inheritance="last")


# ------------------------------------------------------------------------------ unit removal
@pytest.mark.parametrize("name", ["resnet20", "mobilenetv2"])
def test_unit_removal_never_leaves_a_lone_batchnorm_or_activation_removed(name: str) -> None:
    teacher, layered = _space(name)
    space = CompressionSpace(layered.graph, teacher, layered.max_layers, removal="unit")
    layers = space.graph.layers
    assert space.units and all(layers[u[0]].op == "conv" for u in space.units)
    assert {layers[i].op for u in space.units for i in u[1:]} <= {"bn", "relu", "relu6"}
    lone = [i for i in layered.removable if layers[i].op in ("bn", "relu", "relu6")]
    assert lone  # the paper's rule can remove them alone
    rng = np.random.default_rng(0)
    x = torch.randn(2, 3, 32, 32)
    from embedding.candidates import CandidateSampler

    draws = [space.sample(rng) for _ in range(100)]
    draws += CandidateSampler(space, "mixed").draw(rng, 100, set(), draws[:4])
    for action in draws:
        removed = set(action.removed)
        for i in removed:
            if layers[i].op != "conv":  # its unit's conv is removed with it
                unit = next(u for u in space.units if i in u)
                assert set(unit) <= removed
        assert space.num_params(action) == sum(
            p.numel() for p in space.materialize(action).parameters()
        )
    with torch.no_grad():
        assert space.materialize(draws[0])(x).shape == (2, 10)
    bn = next(i for u in space.units for i in u if layers[i].op == "bn")
    with pytest.raises(InvalidActionError, match="without the rest of its unit"):
        space.validate(Action((bn,), space.empty_action().shrink, (), space.fingerprint))
    # the encoding is the paper's: a unit removal is its layers' removals
    assert torch.equal(space.encode([draws[0]]), layered.encode([draws[0]]))


def test_n2n_refuses_a_space_that_removes_units() -> None:
    from embedding.n2n import N2NSearcher
    from embedding.options import SearcherError

    teacher, layered = _space("resnet20")
    space = CompressionSpace(layered.graph, teacher, layered.max_layers, removal="unit")
    with pytest.raises(SearcherError, match="single layers"):
        N2NSearcher(space)


def test_a_uniform_shrink_is_torch_prunings_per_layer_pruning() -> None:
    import torch_pruning as tp

    teacher, space = _uneven_resnet20()
    action = Action((), tuple(0.5 for _ in space.shrinkable), (), space.fingerprint)
    ours = space.materialize(action).eval()
    pruned = copy.deepcopy(teacher).eval()
    tp.pruner.BasePruner(
        pruned, torch.zeros(1, 3, 32, 32), importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=0.5, ignored_layers=[pruned.fc],
    ).step()  # fmt: skip
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(ours(x), pruned(x))
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in pruned.parameters())
