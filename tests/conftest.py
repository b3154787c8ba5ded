"""Shared fixtures. Installed third-party plugins are not autoloaded here, so tests see only what they register."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

os.environ.setdefault("VAE_AUTOML_DISABLE_PLUGIN_AUTOLOAD", "1")

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


@pytest.fixture
def mnist_dir() -> Path:
    """The real MNIST test set beside the checkout; tests using it skip where it is absent."""
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST not found at {SHARED_MNIST}")
    return SHARED_MNIST


@pytest.fixture
def register_plugin() -> Iterator[Any]:
    """Register plugin objects/modules on the process-wide plugin manager for one test, unregistered in finally."""
    from vae_automl.plugin_manager import get_plugin_manager
    from vae_automl.registry import reset_registry

    pm = get_plugin_manager()
    registered: list[Any] = []

    def register(plugin: Any, name: str | None = None) -> Any:
        pm.register(plugin, name=name)
        registered.append(plugin)
        reset_registry()
        return plugin

    try:
        yield register
    finally:
        for plugin in registered:
            pm.unregister(plugin)
        reset_registry()
