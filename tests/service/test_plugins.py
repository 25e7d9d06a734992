"""Architecture plugins: a package that registers a constructor under the `esnac.architectures`
entry point group is listed beside the zoo, trains as a teacher and is searched.

The plugin here is a real installed distribution: a package and its `.dist-info` (metadata and
`entry_points.txt`, what pip writes) in a directory on the path of the test process and of the
server, its Ray workers and its teacher checks (through `PYTHONPATH`).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from torch import nn

from service.cli.client import Client
from service.devserver import local_server
from workers import plugins, zoo
from workers.spec import ZOO_NAMES

PLUGIN = '''
from torch import nn


def tiny_cnn(num_classes):
    """Two conv-BN-ReLU blocks, global pooling, a linear classifier."""
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes),
    )


def broken(num_classes):
    return "not a module"
'''

ENTRY_POINTS = """[esnac.architectures]
tinycnn = esnac_test_plugin:tiny_cnn
notamodule = esnac_test_plugin:broken
missing = esnac_test_plugin_gone:build
resnet20 = esnac_test_plugin:tiny_cnn
"""


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("site")
    (root / "esnac_test_plugin").mkdir()
    (root / "esnac_test_plugin" / "__init__.py").write_text(PLUGIN)
    info = root / "esnac_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: esnac-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    sys.path.insert(0, str(root))
    importlib.invalidate_caches()
    yield root
    sys.path.remove(str(root))
    sys.modules.pop("esnac_test_plugin", None)
    importlib.invalidate_caches()


def test_plugins_are_listed_beside_the_zoo_and_built(plugin_dir: Path) -> None:
    # a plugin may not shadow a zoo name: resnet20 stays the zoo's
    assert plugins.names() == ["missing", "notamodule", "tinycnn"]
    assert {"tinycnn", "resnet20", "vgg19"} <= set(zoo.names())
    net = zoo.build("tinycnn", 7)
    assert isinstance(net, nn.Module) and net[-1].out_features == 7
    assert sum(p.numel() for p in zoo.build("resnet20", 10).parameters()) > 200_000
    with pytest.raises(zoo.UnknownModelError, match="not a torch.nn.Module"):
        zoo.build("notamodule", 10)
    with pytest.raises(zoo.UnknownModelError, match="could not be imported: ModuleNotFound"):
        zoo.build("missing", 10)
    with pytest.raises(zoo.UnknownModelError, match="known: .*tinycnn"):
        zoo.build("nosuchnet", 10)


@pytest.mark.slow
def test_a_plugin_architecture_trains_as_a_teacher_and_is_searched(
    plugin_dir: Path, tmp_path: Path
) -> None:
    path = os.pathsep.join(p for p in (str(plugin_dir), os.environ.get("PYTHONPATH")) if p)
    env = {"PYTHONPATH": path, "ESNAC_WORKERS": "1", "ESNAC_RAY_NUM_CPUS": "1",
           "ESNAC_CPUS_PER_TRIAL": "1", "ESNAC_THREADS_PER_TRIAL": "1"}  # fmt: skip
    with (
        local_server(tmp_path, env=env) as server,
        Client(server.url, server.token) as client,
    ):
        # the zoo's, then the plugins' (listed from metadata: a broken one fails when used)
        archs = client.get("/v1/teachers/archs")
        assert archs == [*ZOO_NAMES, "missing", "notamodule", "tinycnn"]
        teacher = client.post("/v1/teachers/train", json={
            "arch": "tinycnn", "num_classes": 10, "dataset": "digits", "epochs": 2,
            "max_train_samples": 512, "batch_size": 32,
        })  # fmt: skip
        teacher = _wait(
            client, f"/v1/teachers/{teacher['id']}", lambda t: t["status"] != "training"
        )
        assert teacher["status"] == "ready", (teacher, server.server.tail())
        assert teacher["arch"] == "tinycnn" and 0 < teacher["accuracy"] <= 1
        job = client.post("/v1/jobs", json={
            "teacher_id": teacher["id"], "strategy": "esnac", "steps": 2, "per_step": 1,
            "search": {"epochs": 1, "max_train_samples": 128, "batch_size": 64}, "top_k": 0,
            "searcher": {"kernels": 1, "candidates": 20},
        })  # fmt: skip
        done = ("succeeded", "failed", "cancelled")
        job = _wait(client, f"/v1/jobs/{job['id']}", lambda j: j["status"] in done)
        assert job["status"] == "succeeded", (job, server.server.tail())
        best = job["best_trial"]
        assert best["params"] < teacher["params"] and best["accuracy"] is not None


def _wait(client: Client, path: str, ready: Callable[[dict], bool], timeout: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        item = client.get(path)
        if ready(item) or time.monotonic() > deadline:
            return item
        time.sleep(0.5)
