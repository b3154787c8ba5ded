"""vae-automl: multi-objective search for compressed variational autoencoders."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vae_automl.errors import (
    CodecError,
    ConfigError,
    DataError,
    ExportError,
    IntegrityError,
    PluginError,
    TrialFailed,
    VaeAutomlError,
)

__version__ = "0.1.0"

__all__ = [
    "CodecError",
    "ConfigError",
    "DataError",
    "ExportError",
    "IntegrityError",
    "PluginError",
    "TrialFailed",
    "VaeAutomlError",
    "__version__",
    "hookimpl",
    "load",
    "search",
]

if TYPE_CHECKING:
    from vae_automl.api import search
    from vae_automl.loading import load


def __getattr__(name: str) -> Any:
    # Deferred so `import vae_automl` stays light (no torch, optuna or ray at import).
    if name == "hookimpl":
        # deferred: `import vae_automl` stays light (no torch, optuna or ray)
        from vae_automl.plugin_manager import hookimpl

        return hookimpl
    if name == "search":
        # deferred: `import vae_automl` stays light (no torch, optuna or ray)
        from vae_automl.api import search

        return search
    if name == "load":
        # deferred: `import vae_automl` stays light (no torch, optuna or ray)
        from vae_automl.loading import load

        return load
    raise AttributeError(f"module 'vae_automl' has no attribute {name!r}")
