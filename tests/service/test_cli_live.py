"""The `esnac` workflow against a live server running a real (small) job on local Ray."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from service.cli import main
from service.devserver import local_server

pytestmark = pytest.mark.slow


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_register_submit_watch_results_export(
    tmp_path: Path, ray_session: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnx
    import torch

    from embedding.space import Action, CompressionSpace
    from workers import zoo
    from workers.export import load_state_safetensors, state_to_safetensors

    torch.manual_seed(0)
    teacher = zoo.build("resnet20", 10)
    weights = tmp_path / "teacher.safetensors"
    weights.write_bytes(state_to_safetensors(teacher))
    env = {"ESNAC_RAY_ADDRESS": ray_session, "ESNAC_WORKERS": "1",
           "ESNAC_THREADS_PER_TRIAL": "1"}  # fmt: skip
    with local_server(tmp_path / "server", env=env) as server:
        auth = ["--url", server.url, "--token", server.token]

        code, _, err = _run(capsys, "teacher", "register", "--arch", "resnet20",
                            "--num-classes", "10", "--dataset", "digits", "--weights",
                            str(weights), "--accuracy", "0.9", "--url", server.url,
                            "--token", "wrong")  # fmt: skip
        assert code == 1 and "esnac: error: wrong API token (HTTP 401)" in err

        code, out, err = _run(capsys, "teacher", "register", "--arch", "resnet56",
                              "--num-classes", "10", "--dataset", "digits", "--weights",
                              str(weights), "--accuracy", "0.9", *auth)  # fmt: skip
        assert code == 1 and "(HTTP 422)" in err and "resnet56" not in out

        code, out, _ = _run(capsys, "teacher", "register", "--arch", "resnet20",
                            "--num-classes", "10", "--dataset", "digits", "--weights",
                            str(weights), "--accuracy", "0.9", *auth)  # fmt: skip
        assert code == 0 and out.startswith("teacher 1: resnet20 on digits, ready")

        code, out, err = _run(capsys, "submit", "--teacher", "1", "--strategy", "random",
                              "--steps", "2", "--per-step", "1", "--search-epochs", "1",
                              "--max-train-samples", "64", "--top-k", "1", "--full-epochs", "1",
                              "--accuracy-floor", "0",
                              "--watch", *auth)  # fmt: skip
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("job 1: random search of teacher 1, 2 steps x 1 candidates")
        assert any(line.startswith("trials [") and " 2/2 " in line for line in lines)
        assert any(line.startswith("full training [") for line in lines)
        assert "job 1 (succeeded): 2 students evaluated" in out

        code, out, _ = _run(capsys, "results", "1", "--json", "--url", server.url)
        ranked = json.loads(out)
        assert code == 0 and len(ranked) == 2
        assert ranked[0]["reward"] >= ranked[1]["reward"] and ranked[0]["final"] is not None

        code, out, _ = _run(capsys, "results", "1", "--url", server.url)
        table = out.splitlines()
        assert table[1].split() == ["rank", "trial", "step/kernel", "params", "accuracy", "times",
                                    "smaller", "C", "reward", "final", "acc"]  # fmt: skip
        assert table[3].split()[0] == "teacher" and len(table) == 6
        # random search, one candidate per step: steps 0 and 1, no kernel
        assert sorted(row.split()[2] for row in table[4:]) == ["0/-", "1/-"]

        code, out, _ = _run(capsys, "status", "--url", server.url)
        assert code == 0 and out.splitlines()[2].split()[:2] == ["1", "succeeded"]
        code, out, _ = _run(capsys, "status", "1", "--url", server.url)
        assert "2 succeeded, 0 failed" in out and "1/1 fully trained" in out

        best = tmp_path / "best.safetensors"
        code, out, _ = _run(capsys, "export", "--job", "1", "--rank", "1", "-o", str(best),
                            "--url", server.url)  # fmt: skip
        assert code == 0 and "wrote the final weights" in out
        action = Action.from_json(json.loads(Path(f"{best}.action.json").read_text()))
        student = CompressionSpace.for_teacher(teacher).materialize(action)
        load_state_safetensors(student, best.read_bytes(), strict=True)

        code, out, _ = _run(capsys, "export", str(ranked[0]["id"]), "--format", "onnx",
                            "-o", str(tmp_path), "--url", server.url)  # fmt: skip
        assert code == 0 and "wrote the ONNX model (" in out and "onnx onnx" not in out
        onnx.checker.check_model(onnx.load(tmp_path / f"trial-{ranked[0]['id']}.onnx"))

        code, _, err = _run(capsys, "export", str(ranked[1]["id"]), "--format", "onnx",
                            "-o", str(tmp_path), "--url", server.url)  # fmt: skip
        assert code == 1 and "only the top-k students get one" in err

        code, _, err = _run(capsys, "cancel", "1", *auth)
        assert code == 1 and "(HTTP 409)" in err

        # the README's export line, exactly, registers through the CLI under its name; so does
        # the default export, which writes the weights to a second file beside the model
        readme = (Path(__file__).parents[2] / "README.md").read_text()
        line = next(x for x in readme.splitlines() if "torch.onnx.export(" in x)
        mynet = tmp_path / "mynet"
        mynet.mkdir()
        model = teacher.eval()
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(mynet)
            exec(line.lstrip("# "), {"torch": torch, "model": model})  # noqa: S102
            torch.onnx.export(model, (torch.rand(1, 3, 32, 32),), "two.onnx")
        assert sorted(p.name for p in mynet.iterdir()) == [
            "mynet.onnx", "two.onnx", "two.onnx.data"]  # fmt: skip
        for name, expect in (("mynet", "teacher 2: onnx (mynet) on digits, ready"),
                             ("two", "teacher 3: onnx (two) on digits, ready")):  # fmt: skip
            code, out, err = _run(
                capsys, "teacher", "register", "--onnx", str(mynet / f"{name}.onnx"), "--name",
                name, "--num-classes", "10", "--dataset", "digits", "--accuracy", "0.5", *auth,
            )  # fmt: skip
            assert code == 0 and expect in out, (out, err)
        assert "put inside for upload" in out
        code, out, _ = _run(capsys, "teacher", "list", "--url", server.url)
        names = [row.split()[1] for row in out.splitlines()[2:]]
        assert code == 0 and names == ["-", "mynet", "two"]
