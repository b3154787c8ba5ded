"""docs/architecture.md matches the code: every module is placed once, and core imports only point down."""

from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import import_graph  # noqa: E402

DOC = REPO / "docs" / "architecture.md"
PLUGIN_PACKAGES = ("vae_automl.builtin.", "vae_automl.testing.")
ALLOWED_CORE_TO_PLUGIN = {("vae_automl.train", "vae_automl.builtin.tasks")}  # the default task, deferred


def module_of(name: str) -> str:
    return "vae_automl" if name == "__init__" else f"vae_automl.{name}"


def placements(modules: set[str]) -> tuple[dict[str, int], set[str]]:
    """Each core module's layer (the first layer whose text names it), and the plugin modules the doc names."""
    text = DOC.read_text()
    layers_text = text.split("## Layers, top to bottom")[1].split("## The route of one trial")[0]
    core_text, plugin_text = layers_text.split("**Plugins**")
    layers: dict[str, int] = {}
    current = 0
    for line in core_text.splitlines():
        heading = re.match(r"(\d+)\. \*\*", line)
        if heading:
            current = int(heading.group(1))
        if current == 0:
            continue  # the introduction names modules only in passing
        for name in re.findall(r"`([a-z_][a-z_.]*)`", line):
            if module_of(name) in modules:
                layers.setdefault(module_of(name), current)
    plugins = {module_of(name) for name in re.findall(r"`((?:builtin|testing)\.[a-z_]+)`", plugin_text)}
    return layers, plugins


def test_every_module_is_placed_once_and_only_real_modules_are() -> None:
    modules, _, _ = import_graph.collect(REPO / "vae_automl")
    packages = {"vae_automl.backends", "vae_automl.builtin", "vae_automl.testing", "vae_automl.storage"}
    layers, plugins = placements(modules)
    named = set(layers) | plugins
    assert not set(layers) & plugins
    assert sorted(modules - packages - named) == [], "modules the doc does not place"
    assert sorted(named - modules) == [], "names in the doc that are not modules"


def test_core_imports_point_down_and_never_into_plugins() -> None:
    modules, imports, _ = import_graph.collect(REPO / "vae_automl")
    layers, _ = placements(modules)
    wrong = []
    for imp in imports:
        if imp.target not in modules or imp.source not in layers:
            continue  # other packages, and imports made by plugins
        if imp.target.startswith(PLUGIN_PACKAGES):
            if (imp.source, imp.target) not in ALLOWED_CORE_TO_PLUGIN:
                wrong.append(f"{imp.source}:{imp.line} imports the plugin {imp.target}")
        elif imp.target in layers and layers[imp.target] < layers[imp.source]:
            wrong.append(f"{imp.source} (layer {layers[imp.source]}):{imp.line} imports {imp.target} "
                         f"(layer {layers[imp.target]})")
    assert wrong == []
