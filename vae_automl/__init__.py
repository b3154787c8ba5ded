"""vae-automl: multi-objective search for compressed variational autoencoders.

The Python API, one function per command (see :mod:`vae_automl.api`)::

    vae_automl.search(...)   vae_automl.front(...)   vae_automl.export(...)
    vae_automl.report(...)   vae_automl.worker(...)  vae_automl.plugins(...)
    vae_automl.load(...)     # an exported model, back as a torch module
"""

from __future__ import annotations

import sys
import types
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

__version__ = "0.3.0"
"""The release; the one source of the version (pyproject.toml reads it). 0.2 added tasks and codecs, 0.3 the
issue-15 API, the declared (torch-free) components and the ``front --json`` object."""

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
    "compare",
    "dry_run",
    "export",
    "front",
    "hookimpl",
    "load",
    "plugins",
    "report",
    "search",
    "worker",
]

if TYPE_CHECKING:
    from vae_automl.api import export, front, plugins, report, search, worker
    from vae_automl.comparison import compare_studies as compare
    from vae_automl.loading import load
    from vae_automl.plugin_manager import hookimpl
    from vae_automl.preview import dry_run

API_FUNCTIONS = ("search", "front", "export", "report", "worker", "plugins")
"""Names of :mod:`vae_automl.api` functions; ``export``, ``report`` and ``worker`` are also submodules."""


class _Package(types.ModuleType):
    """The package module, keeping ``vae_automl.export`` (and ``report``, ``worker``) the API functions.

    Importing a submodule binds it as an attribute of its package: the first
    ``from vae_automl.export import ...`` anywhere would turn ``vae_automl.export``
    from the function into the module. Those bindings are not made here;
    ``from vae_automl.export import X`` and ``importlib.import_module`` still
    reach the submodules through ``sys.modules``.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in API_FUNCTIONS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in API_FUNCTIONS:
        # deferred: `import vae_automl` stays light (no torch, optuna or ray)
        from vae_automl import api

        return getattr(api, name)
    if name == "hookimpl":
        # deferred: `import vae_automl` stays light (no torch, optuna or ray)
        from vae_automl.plugin_manager import hookimpl

        return hookimpl
    if name == "load":
        # deferred: `import vae_automl` stays light (no torch, optuna or ray)
        from vae_automl.loading import load

        return load
    if name == "compare":
        # deferred: `import vae_automl` stays light (no torch, optuna or ray)
        from vae_automl.comparison import compare_studies

        return compare_studies
    if name == "dry_run":
        # deferred: `import vae_automl` stays light (no torch, optuna or ray)
        from vae_automl.preview import dry_run

        return dry_run
    raise AttributeError(f"module 'vae_automl' has no attribute {name!r}")
