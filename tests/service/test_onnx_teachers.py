"""ONNX teachers through the REST API: upload, check against ONNX Runtime, refuse what cannot be
read (storing nothing), and -- with workers -- search one to a deployable student."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from service.app import create_app
from service.db import Storage
from service.settings import Settings
from tests.workers.test_onnx_import import export, torchvision_net

TOKEN = "onnx-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def settings(tmp_path: Path, sqlite_template: Path) -> Settings:
    shutil.copy(sqlite_template, tmp_path / "esnac.db")
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'esnac.db'}", artifact_dir=tmp_path / "artifacts",
        api_token=TOKEN, scheduler=False, max_upload_mb=256,
    )  # fmt: skip


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


def _upload(client: TestClient, data: bytes, **form: str):
    fields = {"num_classes": "10", "dataset": "digits", "accuracy": "0.5", **form}
    return client.post(
        "/v1/teachers", data=fields, files={"model": ("net.onnx", data)}, headers=AUTH
    )


def _stored(settings: Settings) -> tuple[int, list[str]]:
    s = Storage(settings.database_url)
    with s.session() as repo:
        n = len(repo.list_teachers())
    s.dispose()
    files = sorted(p.name for p in settings.artifact_dir.glob("*"))
    return n, files


@pytest.mark.slow
def test_onnx_networks_become_teachers(client: TestClient, settings: Settings) -> None:
    # both exports of each kind of network; each upload is checked against ONNX Runtime
    cases = [("resnet18", "eval"), ("vgg11_bn", "preserve"), ("mobilenet_v2", "preserve"),
             ("shufflenet_v2_x0_5", "dynamo")]  # fmt: skip
    for name, mode in cases:
        model = torchvision_net(name)
        data = export(model, mode)
        r = _upload(client, data, name=f"{name}-{mode}")
        assert r.status_code == 201, (name, mode, r.text)
        t = r.json()
        assert t["arch"] == "onnx" and t["name"] == f"{name}-{mode}" and t["status"] == "ready"
        assert t["input_shape"] == [3, 32, 32] and t["accuracy"] == 0.5
        if mode == "preserve":  # BN kept: exactly the torchvision parameters
            assert t["params"] == sum(p.numel() for p in model.parameters())
        w = client.get(f"/v1/teachers/{t['id']}/weights")
        assert w.status_code == 200 and w.content == data
        assert f"teacher-{t['id']}.onnx" in w.headers["content-disposition"]
    assert _stored(settings)[0] == len(cases)


def _with_resize() -> bytes:
    w = numpy_helper.from_array(np.ones((10, 3), np.float32), "w")
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["big"], name="upsample"),
        helper.make_node("GlobalAveragePool", ["big"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], initializer=[w, scales],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def test_unreadable_onnx_files_are_refused_and_store_nothing(
    client: TestClient, settings: Settings
) -> None:
    good = _with_resize()
    external = onnx.load_from_string(good)
    w = external.graph.initializer[0]
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="w.bin")
    rng = np.random.default_rng(0)
    cases = {
        "unsupported": (good, "node 'upsample' has op type Resize"),
        "external": (external.SerializeToString(), "esnac teacher register --onnx model.onnx"),
        "truncated": (good[: len(good) // 2], "not a readable ONNX model"),
        "random": (rng.integers(0, 256, 5000, dtype=np.uint8).tobytes(), "ONNX"),
        "empty": (b"", "empty"),
    }
    for kind, (data, needle) in cases.items():
        r = _upload(client, data)
        assert r.status_code == 422, (kind, r.text)
        assert needle in r.json()["detail"], (kind, r.text)
    assert "supported ops: " in _upload(client, good).json()["detail"]
    # the fields: one network, in the right field
    r = client.post("/v1/teachers", headers=AUTH, data={"num_classes": "10", "dataset": "digits"})
    assert r.status_code == 422 and "either `model`" in r.text
    r = client.post("/v1/teachers", headers=AUTH, files={"weights": ("w", good)},
                    data={"arch": "onnx", "num_classes": "10", "dataset": "digits"})  # fmt: skip
    assert r.status_code == 422 and "field `model`" in r.text
    r = _upload(client, good, arch="resnet20")
    assert r.status_code == 422 and "leave `arch` out" in r.text
    r = client.post("/v1/teachers/train", headers=AUTH,
                    json={"arch": "onnx", "num_classes": 10, "dataset": "digits"})  # fmt: skip
    assert r.status_code == 422 and "ONNX file" in r.text
    assert _stored(settings) == (0, [])


def test_a_channels_first_dataset_gets_the_layout_message(
    settings: Settings, tmp_path: Path
) -> None:
    from workers.data import _digits_arrays

    images, labels = _digits_arrays()  # N x 3 x 32 x 32: channels first, not what npz takes
    np.savez(tmp_path / "cf.npz", x=images[:100].numpy(), y=labels[:100].numpy())
    with TestClient(create_app(settings.model_copy(update={"data_dir": str(tmp_path)}))) as c:
        r = _upload(c, _with_resize_free(), dataset="npz:cf.npz")
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "layout" in detail and "x.transpose(0, 2, 3, 1)" in detail and "export it" not in detail


def _with_resize_free() -> bytes:
    """A small supported ONNX classifier of 3 x 32 x 32 images."""
    w = numpy_helper.from_array(np.ones((10, 3), np.float32), "w")
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["y"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], initializer=[w],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.slow
def test_onnx_teachers_are_searched_to_self_contained_students(
    tmp_path: Path, ray_session: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`esnac teacher register --onnx`, a search, `esnac export`: the student's ONNX runs in
    onnxruntime alone on raw 0..1 images and scores what the service reported; its weights and
    model card rebuild it in PyTorch without the teacher."""
    import json

    import onnxruntime as ort
    import torch

    from service.cli import main
    from service.devserver import local_server
    from workers import zoo
    from workers.data import load_dataset
    from workers.export import load_student

    torch.manual_seed(0)
    teachers = {  # a zoo network and a torchvision one, both exported to ONNX
        "resnet20": export(zoo.build("resnet20", 10).eval(), "preserve", batch=1),
        "shufflenet": export(torchvision_net("shufflenet_v2_x0_5"), "eval"),
    }
    val = load_dataset("digits", None, False, seed=0).val
    raw = val.images.float().numpy() / 255.0  # what a user has: images scaled to 0..1
    env = {"ESNAC_RAY_ADDRESS": ray_session, "ESNAC_WORKERS": "1",
           "ESNAC_THREADS_PER_TRIAL": "1"}  # fmt: skip
    with local_server(tmp_path / "server", env=env) as server:
        auth = ["--url", server.url, "--token", server.token]
        for job_id, (name, data) in enumerate(teachers.items(), start=1):
            path = tmp_path / f"{name}.onnx"
            path.write_bytes(data)
            assert main(["teacher", "register", "--onnx", str(path), "--name", name,
                         "--num-classes", "10", "--dataset", "digits", "--accuracy", "0.5",
                         *auth]) == 0  # fmt: skip
            out = capsys.readouterr().out
            assert out.startswith(f"teacher {job_id}: onnx ({name}) on digits, ready"), out
            code = main(["submit", "--teacher", str(job_id), "--steps", "2", "--per-step", "1",
                         "--search-epochs", "1", "--max-train-samples", "64", "--top-k", "1",
                         "--accuracy-floor", "0",
                         "--full-epochs", "1", "--watch", *auth])  # fmt: skip
            out, err = capsys.readouterr()
            assert code == 0 and f"job {job_id} (succeeded)" in out, (out, err)

            best = tmp_path / f"{name}-student.onnx"
            assert main(["export", "--job", str(job_id), "--format", "onnx", "-o", str(best),
                         "--url", server.url]) == 0  # fmt: skip
            assert "its model card to" in capsys.readouterr().out
            card = json.loads(Path(f"{best}.card.json").read_text())
            assert card["teacher"]["arch"] == "onnx" and card["teacher"]["name"] == name
            assert card["input_shape"] == [3, 32, 32] and card["num_classes"] == 10
            assert len(card["normalization"]["mean"]) == 3 and card["params"] > 0
            session = ort.InferenceSession(best.read_bytes(), providers=["CPUExecutionProvider"])
            logits = session.run(None, {"input": raw})[0]
            onnx_acc = float((logits.argmax(1) == val.labels.numpy()).mean())
            assert abs(onnx_acc - card["accuracy"]) <= 0.005, (onnx_acc, card["accuracy"])

            weights = tmp_path / f"{name}-student.safetensors"
            assert main(["export", "--job", str(job_id), "-o", str(weights),
                         "--url", server.url]) == 0  # fmt: skip
            capsys.readouterr()
            net = load_student(weights, Path(f"{weights}.card.json"), raw_input=True)
            with torch.no_grad():
                torch_logits = net(torch.from_numpy(raw)).numpy()
            assert np.abs(torch_logits - logits).max() < 1e-3


@pytest.mark.slow
def test_a_grayscale_28x28_network_runs_a_job_end_to_end(
    tmp_path: Path, ray_session: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Images other than 3 x 32 x 32: a 1 x 28 x 28 classifier (MNIST-sized) on grayscale
    digits, from ONNX registration to an exported student that takes 1 x 28 x 28 images."""
    import io
    import json

    import onnxruntime as ort
    import torch
    from torch import nn

    from service.cli import main
    from service.devserver import local_server
    from workers.data import _digits_arrays

    images, labels = _digits_arrays()  # N x 3 x 32 x 32 uint8
    gray = torch.nn.functional.interpolate(images[:, :1].float(), size=(28, 28), mode="bilinear")
    x = gray.round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()  # N x 28 x 28: grayscale
    np.savez(tmp_path / "gray28.npz", x=x, y=labels.numpy())
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    ).eval()  # fmt: skip
    buf = io.BytesIO()
    torch.onnx.export(net, (torch.rand(1, 1, 28, 28),), buf, dynamo=False,
                      training=torch.onnx.TrainingMode.PRESERVE)  # fmt: skip
    path = tmp_path / "gray.onnx"
    path.write_bytes(buf.getvalue())
    env = {"ESNAC_RAY_ADDRESS": ray_session, "ESNAC_WORKERS": "1",
           "ESNAC_THREADS_PER_TRIAL": "1", "ESNAC_DATA_DIR": str(tmp_path)}  # fmt: skip
    with local_server(tmp_path / "server", env=env) as server:
        auth = ["--url", server.url, "--token", server.token]
        assert main(["teacher", "register", "--onnx", str(path), "--name", "gray",
                     "--num-classes", "10", "--dataset", "npz:gray28.npz", "--accuracy", "0.5",
                     *auth]) == 0  # fmt: skip
        assert "onnx (gray) on npz:gray28.npz, ready" in capsys.readouterr().out
        code = main(["submit", "--teacher", "1", "--steps", "2", "--per-step", "1",
                     "--search-epochs", "1", "--max-train-samples", "64", "--top-k", "1",
                     "--accuracy-floor", "0", "--full-epochs", "1", "--watch", *auth])  # fmt: skip
        out, err = capsys.readouterr()
        assert code == 0 and "job 1 (succeeded)" in out, (out, err)
        best = tmp_path / "student.onnx"
        assert main(["export", "--job", "1", "--format", "onnx", "-o", str(best),
                     "--url", server.url]) == 0  # fmt: skip
    card = json.loads(Path(f"{best}.card.json").read_text())
    assert card["input_shape"] == [1, 28, 28] and len(card["normalization"]["mean"]) == 1
    session = ort.InferenceSession(best.read_bytes(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": np.random.default_rng(0).random((2, 1, 28, 28),
                                                                         dtype=np.float32)})[0]
    assert logits.shape == (2, 10)
