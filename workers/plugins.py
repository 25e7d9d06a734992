"""Architecture plugins: teacher constructors registered by installed packages.

A team that prefers its own PyTorch code declares its constructors in its package's metadata,
under the entry point group `esnac.architectures`, and installs the package on the coordinator and
on every worker (plugins are code: they are installed, never uploaded):

    # pyproject.toml of the team's package
    [project.entry-points."esnac.architectures"]
    mynet = "my_package.models:build_mynet"     # build_mynet(num_classes: int) -> nn.Module

The name (`mynet`) is then an `arch` like the zoo's: `GET /v1/teachers/archs` lists it, teachers
are trained or registered with it, and the search reads the network with the same tracer as the
zoo's (so it must be built from the ops the space supports). A plugin may not reuse a zoo name.

Listing the names reads package metadata only (no plugin code runs, no torch): the REST layer uses
it. Building one imports the plugin (workers).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from workers.spec import ZOO_NAMES

__all__ = ["GROUP", "PluginError", "load", "names"]

GROUP = "esnac.architectures"


class PluginError(ValueError):
    """A plugin that cannot be used: a zoo name, a failed import, not a constructor."""


def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)  # the first on sys.path wins, as for imports
    return found


def names() -> list[str]:
    """Names of the installed plugin architectures (zoo names excluded), sorted."""
    return sorted(n for n in _entry_points() if n not in ZOO_NAMES)


def load(name: str) -> Callable[[int], Any]:
    """The constructor `name` registers (`constructor(num_classes) -> nn.Module`).

    Raises:
        KeyError: no plugin has that name.
        PluginError: it shadows a zoo architecture, cannot be imported, or is not callable.
    """
    if name in ZOO_NAMES:
        raise PluginError(f"a plugin may not reuse the zoo architecture name {name!r}")
    ep = _entry_points().get(name)
    if ep is None:
        raise KeyError(name)
    try:
        obj = ep.load()
    except Exception as exc:  # any import error of third-party code, reported with its cause
        raise PluginError(
            f"plugin architecture {name!r} ({ep.value}, entry point group {GROUP}) could not "
            f"be imported: {type(exc).__name__}: {exc}"
        ) from exc
    if not callable(obj):
        raise PluginError(f"plugin architecture {name!r} ({ep.value}) is not a constructor")
    return obj  # type: ignore[no-any-return]
