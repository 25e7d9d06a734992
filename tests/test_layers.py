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
