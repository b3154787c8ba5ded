"""Built-in storage codecs: dense floats, uniform n-bit codes, codebook indices."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from vae_automl.plugin_manager import hookimpl

if TYPE_CHECKING:
    from vae_automl.storage.codec import Codec


@hookimpl
def register_codecs(register: Callable[[Codec], None]) -> None:
    # deferred: the codecs are torch code; the registry asks for them only when a model is stored or loaded
    from vae_automl import packing
    from vae_automl.storage.codecs import builtin_codecs  # deferred: as packing

    # Codecs given to the deprecated packing.register_codec come in here, so they take the same route.
    for codec in (*builtin_codecs().values(), *packing.legacy_codecs()):
        register(codec)
