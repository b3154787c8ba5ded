"""The plugin manager: built-ins, installed entry points, and ``--plugin`` modules."""

from __future__ import annotations

import importlib
import os
import sys
from importlib import metadata
from typing import Any

import pluggy

from vae_automl import hookspecs
from vae_automl.errors import PluginError

PROJECT = "vae_automl"
ENTRY_POINT_GROUP = "vae_automl"
DISABLE_AUTOLOAD_ENV = "VAE_AUTOML_DISABLE_PLUGIN_AUTOLOAD"
"""Set to 1 to skip installed third-party plugins (useful to tell whether one of them is at fault)."""
EXTRA_PLUGINS_ENV = "VAE_AUTOML_PLUGINS"
"""Comma-separated module paths loaded like ``--plugin``; carries CLI plugins to Ray workers."""

DEFAULT_PLUGINS: tuple[str, ...] = (
    "vae_automl.builtin.architectures",
    "vae_automl.builtin.classifiers",
    "vae_automl.builtin.codecs",
    "vae_automl.builtin.datasets",
    "vae_automl.builtin.objectives",
    "vae_automl.builtin.exporters",
    "vae_automl.builtin.distillation",
    "vae_automl.builtin.entropy_coding",
    "vae_automl.builtin.pruning",
    "vae_automl.builtin.quantization",
    "vae_automl.builtin.tasks",
    "vae_automl.builtin.weight_vae",
    "vae_automl.builtin.codec",
)

hookimpl = pluggy.HookimplMarker(PROJECT)

_pm: pluggy.PluginManager | None = None


def plugin_version(pm: pluggy.PluginManager, plugin: Any) -> str:
    """The version of the distribution a plugin comes from (vae-automl's for built-ins)."""

    for registered, dist in pm.list_plugin_distinfo():
        if registered is plugin:
            return str(dist.version)
    module = getattr(plugin, "__name__", "") or type(plugin).__module__
    top = module.split(".")[0]
    if top == "vae_automl":
        from vae_automl import __version__

        return __version__
    version = getattr(plugin, "__version__", None) or getattr(sys.modules.get(top), "__version__", None)
    if version:
        return str(version)
    try:
        return metadata.version(top.replace("_", "-"))
    except metadata.PackageNotFoundError:
        return "unknown"


def plugin_distribution(pm: pluggy.PluginManager, plugin: Any) -> str:
    """The name of the distribution (pip package) a plugin comes from: ``vae-automl`` for built-ins, "" if unknown."""

    for registered, dist in pm.list_plugin_distinfo():
        if registered is plugin:
            name = getattr(dist, "project_name", None) or dist.metadata.get("Name")
            return str(name) if name else ""
    module = getattr(plugin, "__name__", "") or type(plugin).__module__
    top = module.split(".")[0]
    if top == "vae_automl":
        return "vae-automl"
    names = metadata.packages_distributions().get(top, [])
    return names[0] if names else ""


def load_plugin_module(pm: pluggy.PluginManager, module_path: str, source: str = "--plugin") -> None:
    """Import and register the plugin module ``module_path`` (``source`` names where the name came from, for errors)."""
    if pm.has_plugin(module_path):
        return
    if not module_path or "/" in module_path or "\\" in module_path or module_path.endswith(".py"):
        raise PluginError(
            f"{source}: {module_path!r} is not a module path; give an importable dotted name (my_pkg.plugin), "
            "with its folder on PYTHONPATH"
        )
    try:
        module = importlib.import_module(module_path)
    except ImportError as exc:
        raise PluginError(f"{source}: cannot import plugin module {module_path!r}: {exc}") from exc
    except SyntaxError as exc:
        raise PluginError(
            f"{source}: plugin module {module_path!r} has a syntax error: {exc.filename}:{exc.lineno}: {exc.msg}"
        ) from None
    except Exception as exc:
        raise PluginError(f"{source}: importing plugin module {module_path!r} raised {type(exc).__name__}: {exc}") from exc
    # An installed plugin also named with --plugin is already registered under its entry-point name.
    if pm.is_registered(module):
        return
    pm.register(module, name=module_path)


def load_entry_points(pm: pluggy.PluginManager) -> None:
    """Register every installed plugin of the entry-point group, naming the one that fails and how to skip them all."""
    skip = f"set {DISABLE_AUTOLOAD_ENV}=1 to run without installed plugins"
    entry_points = [ep for dist in metadata.distributions() for ep in dist.entry_points if ep.group == ENTRY_POINT_GROUP]
    for ep in entry_points:
        where = f"installed plugin {ep.name!r} (entry point {ep.name} = {ep.value})"
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP, name=ep.name)
        except pluggy.PluginValidationError as exc:
            raise PluginError(f"{where} implements an unknown hook: {exc}; {skip}") from exc
        except Exception as exc:
            raise PluginError(f"{where} failed to load: {type(exc).__name__}: {exc}; {skip}") from exc


def new_plugin_manager(extra_plugins: tuple[str, ...] = (), autoload: bool | None = None) -> pluggy.PluginManager:
    """A fresh plugin manager with built-ins, entry points (unless disabled) and ``extra_plugins``."""
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    for module_path in DEFAULT_PLUGINS:
        load_plugin_module(pm, module_path)
    if autoload is None:
        autoload = os.environ.get(DISABLE_AUTOLOAD_ENV, "") in ("", "0")
    if autoload:
        load_entry_points(pm)
    env_plugins = tuple(p.strip() for p in os.environ.get(EXTRA_PLUGINS_ENV, "").split(",") if p.strip())
    for module_path in env_plugins:
        load_plugin_module(pm, module_path, source=f"${EXTRA_PLUGINS_ENV}")
    for module_path in extra_plugins:
        load_plugin_module(pm, module_path.strip())
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {pm.get_name(exc.plugin)!r} implements an unknown hook: {exc}") from exc
    return pm


def get_plugin_manager(extra_plugins: tuple[str, ...] = ()) -> pluggy.PluginManager:
    """The process-wide plugin manager; extra plugin modules are added to it once."""
    global _pm
    if _pm is None:
        _pm = new_plugin_manager()
    for module_path in extra_plugins:
        load_plugin_module(_pm, module_path)
    return _pm


def reset_plugin_manager() -> None:
    """Forget the process-wide plugin manager (the registry built from it is rebuilt with the next one)."""
    global _pm
    _pm = None
