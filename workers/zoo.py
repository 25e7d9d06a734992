"""Teacher zoo: CIFAR-sized (32x32 input) networks built only from ops the search space traces.

Every model here is written with modules (`nn.ReLU`, `nn.AdaptiveAvgPool2d`, `nn.Flatten`,
`nn.ChannelShuffle`) and plain tensor adds/concats so that `embedding.fx_trace.trace` reads it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from workers import plugins
from workers.spec import ONNX_ARCH, ZOO_NAMES, BadSpecError

__all__ = ["UnknownModelError", "build", "load_teacher", "names"]


class UnknownModelError(ValueError):
    """Raised for a teacher architecture name the zoo does not know."""


def _conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]


class BasicBlock(nn.Module):
    """The two-conv residual block of ResNet (He et al. 2016), projection shortcut when needed."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(*_conv_bn(cin, cout, k=1, stride=stride))
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet: 3x3 stem, no max-pool, global average pool, one linear classifier."""

    def __init__(self, widths: list[int], depths: list[int], num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, widths[0]), nn.ReLU())
        blocks: list[nn.Module] = []
        cin = widths[0]
        for stage, (width, depth) in enumerate(zip(widths, depths, strict=True)):
            for i in range(depth):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(BasicBlock(cin, width, stride))
                cin = width
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.layers(self.stem(x)))))


class VGG(nn.Module):
    """VGG with BatchNorm, CIFAR variant (one linear classifier on the 1x1 map)."""

    def __init__(self, cfg: list[int | str], num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = 3
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                width = int(item)
                layers += [*_conv_bn(cin, width), nn.ReLU()]
                cin = width
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit (Ma et al. 2018): channel split (stride 1) or two branches (stride 2)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = cout // 2
        if stride == 1:
            inp = cin // 2
            self.left: nn.Module = nn.Identity()
        else:
            inp = cin
            self.left = nn.Sequential(
                *_conv_bn(inp, inp, k=3, stride=2, groups=inp),
                *_conv_bn(inp, branch, k=1),
                nn.ReLU(),
            )
        self.right = nn.Sequential(
            *_conv_bn(inp, branch, k=1),
            nn.ReLU(),
            *_conv_bn(branch, branch, k=3, stride=stride, groups=branch),
            *_conv_bn(branch, branch, k=1),
            nn.ReLU(),
        )
        self.shuffle = nn.ChannelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat([self.left(a), self.right(b)], dim=1)
        else:
            out = torch.cat([self.left(x), self.right(x)], dim=1)
        return self.shuffle(out)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 1.0x adapted to 32x32 inputs (3x3 stride-1 stem, no max-pool)."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (116, 232, 464)) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 24), nn.ReLU())
        units: list[nn.Module] = []
        cin = 24
        for width, depth in zip(widths, (4, 8, 4), strict=True):
            for i in range(depth):
                units.append(ShuffleUnit(cin, width, 2 if i == 0 else 1))
                cin = width
        self.units = nn.Sequential(*units)
        self.head = nn.Sequential(*_conv_bn(cin, 1024, k=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.units(self.stem(x)))
        return self.fc(self.flatten(self.pool(x)))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 projection; residual if shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [*_conv_bn(cin, hidden, k=1), nn.ReLU6()]
        layers += [*_conv_bn(hidden, hidden, k=3, stride=stride, groups=hidden), nn.ReLU6()]
        layers += _conv_bn(hidden, cout, k=1)
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.residual:
            return x + self.block(x)
        return self.block(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) for 32x32: stride-1 stem, first stages at stride 1."""

    # (expansion, channels, repeats, stride) with the CIFAR strides.
    SETTINGS = [
        (1, 16, 1, 1),
        (6, 24, 2, 1),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    ]

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 32), nn.ReLU6())
        blocks: list[nn.Module] = []
        cin = 32
        for expand, width, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                blocks.append(InvertedResidual(cin, width, stride if i == 0 else 1, expand))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(*_conv_bn(cin, 1280, k=1), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.dropout = nn.Dropout(0.2)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.fc(self.dropout(self.flatten(self.pool(x))))


_VGG19: list[int | str] = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
    "M",
]

_BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "resnet20": lambda n: ResNet([16, 32, 64], [3, 3, 3], n),
    "resnet32": lambda n: ResNet([16, 32, 64], [5, 5, 5], n),
    "resnet56": lambda n: ResNet([16, 32, 64], [9, 9, 9], n),
    "resnet18": lambda n: ResNet([64, 128, 256, 512], [2, 2, 2, 2], n),
    "resnet34": lambda n: ResNet([64, 128, 256, 512], [3, 4, 6, 3], n),
    "vgg19": lambda n: VGG(list(_VGG19), n),
    "shufflenetv2": lambda n: ShuffleNetV2(n),
    "mobilenetv2": lambda n: MobileNetV2(n),
}
if set(_BUILDERS) != set(ZOO_NAMES):  # a zoo entry added in one place only
    raise ImportError(
        f"workers.spec.ZOO_NAMES {ZOO_NAMES} does not list the zoo {sorted(_BUILDERS)}"
    )


def names() -> list[str]:
    """The teacher architectures that can be built, sorted: the zoo (`workers.spec.ZOO_NAMES`)
    and the installed plugins (`workers.plugins`)."""
    return sorted((*ZOO_NAMES, *plugins.names()))


def build(name: str, num_classes: int) -> nn.Module:
    """Build a freshly initialised teacher.

    Args:
        name: one of `names()` (a zoo architecture or an installed plugin's).
        num_classes: size of the classifier output.

    Raises:
        UnknownModelError: for a name neither the zoo nor a plugin knows (the message lists the
            known ones), or a plugin that fails to import or to build a module.
        ValueError: for a non-positive `num_classes`.
    """
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    if name in _BUILDERS:
        return _BUILDERS[name](int(num_classes))
    if name == ONNX_ARCH:
        raise UnknownModelError(
            f"an {ONNX_ARCH!r} teacher is read from its ONNX file (upload it: POST /v1/teachers "
            "with the field `model`); it cannot be built or trained from its name"
        )
    try:
        constructor = plugins.load(name)
    except KeyError:
        raise UnknownModelError(
            f"unknown teacher architecture {name!r}; known: {', '.join(names())}"
        ) from None
    except plugins.PluginError as exc:
        raise UnknownModelError(str(exc)) from exc
    try:
        model = constructor(int(num_classes))
    except Exception as exc:  # third-party code: any failure, reported with its cause
        raise UnknownModelError(
            f"plugin architecture {name!r} failed to build: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise UnknownModelError(
            f"plugin architecture {name!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model


def load_teacher(arch: str, num_classes: int, data: bytes) -> nn.Module:
    """A teacher with its weights, in eval mode on the CPU: the one way workers and the
    coordinator turn a stored teacher into a network.

    Args:
        arch: a zoo or plugin architecture (then `data` is its state dict as safetensors), or
            `ONNX_ARCH` (then `data` is the ONNX file, read by `workers.onnx_import`).
        num_classes: the classifier's width.
        data: the teacher's stored weights artifact.

    Raises:
        BadSpecError: unknown architecture, weights that do not fit, an unreadable ONNX file or
            one whose output width is not `num_classes`.
    """
    if arch == ONNX_ARCH:
        from workers.onnx_import import import_onnx

        imported = import_onnx(bytes(data))
        if imported.num_classes != int(num_classes):
            raise BadSpecError(
                f"the ONNX model returns {imported.num_classes} logits but num_classes="
                f"{num_classes}; they must match"
            )
        return imported.model
    from workers.export import load_state_safetensors

    try:
        model = build(arch, int(num_classes))
    except (UnknownModelError, ValueError) as exc:
        raise BadSpecError(str(exc)) from exc
    load_state_safetensors(model, data)
    return model.eval()
