from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from embedding import UnsupportedModelError, trace
from embedding.graph import INPUT


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(r)) + r
        return self.fc(self.flat(self.pool(y)))


def test_layers_in_topological_order_with_shapes_and_edges() -> None:
    g = trace(Residual())
    assert [la.op for la in g.layers] == [
        "conv",
        "bn",
        "relu",
        "conv",
        "bn",
        "add",
        "adaptive_avgpool",
        "flatten",
        "linear",
    ]
    assert g.layers[0].inputs == (INPUT,)
    assert g.layers[5].inputs == (4, 2)
    assert g.layers[0].out_shape == (8, 32, 32)
    assert g.layers[6].out_shape == (8, 1, 1)
    assert g.layers[8].in_shape == (8,)
    assert g.layers[0].attrs["kernel"] == 3 and g.layers[0].attrs["padding"] == 1


def test_residual_add_joins_channel_groups() -> None:
    g = trace(Residual())
    # conv1's output and conv2's output are summed: one group, shrinkable.
    assert g.specs[0] == g.specs[3] == g.specs[5]
    assert len(g.shrinkable_groups) == 1
    # network input and the classifier output are frozen.
    assert g.input_spec[0][0] in g.frozen
    assert g.specs[8][0][0] in g.frozen


def test_depthwise_conv_shares_its_group_and_grouped_conv_freezes() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 8, 1),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.Conv2d(8, 8, 1),
        nn.Conv2d(8, 8, 3, padding=1, groups=2),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )
    g = trace(model)
    assert g.specs[0] == g.specs[1]
    assert g.specs[2][0][0] in g.frozen  # input of the grouped conv
    assert g.specs[3][0][0] in g.frozen


class WithLSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.flat = nn.Flatten()
        self.rnn = nn.LSTM(3600, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.flat(self.conv(x)))[0]


def test_unsupported_module_is_named_with_its_path() -> None:
    with pytest.raises(UnsupportedModelError, match=r"LSTM at 'rnn'"):
        trace(WithLSTM())


class WithGelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 4, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.block(x))


def test_unsupported_function_is_named() -> None:
    with pytest.raises(UnsupportedModelError, match="gelu"):
        trace(WithGelu())


def test_torchvision_models_trace_without_per_family_code() -> None:
    for build in (torchvision.models.resnet18, torchvision.models.mobilenet_v2):
        g = trace(build(num_classes=10))
        assert g.layers[-1].op == "linear"
        assert g.shrinkable_groups


def test_traces_in_two_threads_do_not_break_each_other() -> None:
    """torch.fx patches `nn.Module.__call__` for the whole process while it traces: a trace in
    one thread once broke another's shape pass ("module is not installed as a submodule"), so
    a coordinator starting two jobs at once failed one at random."""
    import threading

    from workers import zoo

    errors: list[BaseException] = []

    def work() -> None:
        model = zoo.build("resnet20", 10)
        try:
            for _ in range(4):
                trace(model)
        except BaseException as e:  # noqa: BLE001 -- reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
