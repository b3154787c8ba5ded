"""Test suites that plugin authors run on their own components (``pytest`` is needed to use them).

The suites (and torch, which they import) load at the first name asked for: the package also holds the synthetic
trial plugin (:mod:`vae_automl.testing.synthetic`), which a torch-free worker process imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vae_automl.testing.architectures import ArchitectureContract, registry_with_architecture
    from vae_automl.testing.compressors import CompressorContract, make_context, registry_with, tiny_model

_HOMES = {
    "ArchitectureContract": "vae_automl.testing.architectures",
    "registry_with_architecture": "vae_automl.testing.architectures",
    "CompressorContract": "vae_automl.testing.compressors",
    "make_context": "vae_automl.testing.compressors",
    "registry_with": "vae_automl.testing.compressors",
    "tiny_model": "vae_automl.testing.compressors",
}

__all__ = [
    "ArchitectureContract",
    "CompressorContract",
    "make_context",
    "registry_with",
    "registry_with_architecture",
    "tiny_model",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
