"""Built-in distillation compressors (registered through the compressor hook like any plugin)."""

from __future__ import annotations

from typing import Callable

from vae_automl.components import Compressor
from vae_automl.plugin_manager import hookimpl


@hookimpl
def register_compressors(register: Callable[[Compressor], None]) -> None:
    pass
