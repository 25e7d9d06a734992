"""The layering rules that import-linter cannot see: what importing a module loads at run time."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "ray", "botorch", "gpytorch", "service.scheduler", "service.runner")


def _loaded_after(statement: str) -> list[str]:
    code = (
        f"import json, sys\n{statement}\n"
        f"print(json.dumps([m for m in {list(HEAVY)!r} if m in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_the_api_layer_loads_no_ray_torch_or_scheduler_at_import_time() -> None:
    assert _loaded_after("import service.app, service.api.routes.teachers, service.cli") == []


def test_settings_modules_are_light() -> None:
    # the REST models take their defaults from these two modules
    assert _loaded_after("import workers.spec, embedding.options") == []


def test_package_exports_load_on_first_use() -> None:
    assert "torch" in _loaded_after("import embedding; embedding.CompressionSpace")


def test_teacher_requests_leave_torch_out_of_the_api_process(tmp_path) -> None:
    # An upload (strict load + accuracy pass) and a training request: their checks run in a
    # child process (service.teacher_check), so the serving process never imports torch.
    import torch

    from workers import zoo
    from workers.export import state_to_safetensors

    torch.manual_seed(0)
    weights = tmp_path / "t.safetensors"
    weights.write_bytes(state_to_safetensors(zoo.build("resnet20", 10)))
    db = f"sqlite:///{tmp_path / 'esnac.db'}"
    statement = (
        "from fastapi.testclient import TestClient\n"
        "from service.app import create_app\n"
        "from service.db.migrate import upgrade\n"
        "from service.settings import Settings\n"
        f"upgrade({db!r})\n"
        f"s = Settings(database_url={db!r}, artifact_dir={str(tmp_path / 'a')!r}, "
        "scheduler=False)\n"
        "with TestClient(create_app(s)) as c:\n"
        "    form = {'arch': 'resnet20', 'num_classes': '10', 'dataset': 'digits'}\n"
        f"    w = open({str(weights)!r}, 'rb').read()\n"
        # an untrained network, accepted on purpose (it is below the 1.5x-chance guard)
        "    up = c.post('/v1/teachers', data={**form, 'accept_low_accuracy': 'true'}, "
        "files={'weights': ('t', w)})\n"
        "    assert up.status_code == 201 and 0 < up.json()['accuracy'] <= 1, up.text\n"
        "    tr = c.post('/v1/teachers/train', json={**form, 'num_classes': 10})\n"
        "    assert tr.status_code == 202 and tr.json()['params'] == up.json()['params'], tr.text\n"
        "    bad = c.post('/v1/teachers', data={**form, 'arch': 'resnet56'}, "
        "files={'weights': ('t', w)})\n"
        "    assert bad.status_code == 422 and 'missing' in bad.text, bad.text\n"
    )
    assert _loaded_after(statement) == []


def test_importing_the_searchers_prints_no_jit_deprecation_warning() -> None:
    out = subprocess.run(
        [sys.executable, "-W", "default", "-c", "import embedding.search, service.fitter"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "torch.jit.script" not in out.stderr, out.stderr
