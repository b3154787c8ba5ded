"""The hook implementations vae-automl loads through the ``vae_automl`` entry point."""

from __future__ import annotations

from typing import Callable

from vae_automl import hookimpl
from vae_automl.components import Compressor

from vae_automl_nni.compressors import NniPruner, NniQuantizer


@hookimpl
def register_compressors(register: Callable[[Compressor], None]) -> None:
    register(NniPruner())
    register(NniQuantizer())
