"""Built-in storage codecs: dense floats, uniform n-bit codes, codebook indices."""

from __future__ import annotations

from collections.abc import Callable

from vae_automl import packing
from vae_automl.plugin_manager import hookimpl
from vae_automl.storage.codec import Codec
from vae_automl.storage.codecs import builtin_codecs


@hookimpl
def register_codecs(register: Callable[[Codec], None]) -> None:
    # Codecs given to the deprecated packing.register_codec come in here, so they take the same route.
    for codec in (*builtin_codecs().values(), *packing.legacy_codecs()):
        register(codec)
