"""The storage format with the process-wide registry filled in: the module plugin code has imported so far.

The format itself lives in :mod:`vae_automl.storage` (bit packing, codecs,
header, format), whose functions take the codecs or the registry as an
argument. The functions here are the same ones with the process-wide
registry (:func:`vae_automl.registry.get_registry`) as the default, so
``packing.size_bytes(model)`` keeps working in plugin code and tests and
knows every codec a loaded plugin registered.

``register_codec`` is deprecated: implement the ``register_codecs`` hook.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from vae_automl.registry import get_registry, reset_registry
from vae_automl.storage.bits import decode_mask, encode_mask, mask_bits, mask_encodings, pack_bits, unpack_bits
from vae_automl.storage.codec import Codec
from vae_automl.storage.codecs import FLOAT_BITS, FLOAT_DTYPES, CodebookCodec, DenseCodec, UniformCodec, builtin_codecs
from vae_automl.storage.format import deserialize_model as _deserialize
from vae_automl.storage.format import pack_model as _pack
from vae_automl.storage.format import serialize_model as _serialize
from vae_automl.storage.format import theoretical_bits as _theoretical_bits
from vae_automl.storage.header import FORMAT_VERSION, HEADER_KEY, PART_SEPARATOR, read_header

if TYPE_CHECKING:
    import torch

    from vae_automl.registry import Registry
    from vae_automl.vae import VAE

__all__ = [
    "CODECS",
    "FLOAT_BITS",
    "FLOAT_DTYPES",
    "FORMAT_VERSION",
    "HEADER_KEY",
    "PART_SEPARATOR",
    "CodebookCodec",
    "Codec",
    "DenseCodec",
    "UniformCodec",
    "decode_mask",
    "deserialize_model",
    "encode_mask",
    "mask_bits",
    "mask_encodings",
    "pack_bits",
    "pack_model",
    "read_header",
    "register_codec",
    "serialize_model",
    "size_bytes",
    "theoretical_bits",
    "unpack_bits",
]

CODECS: dict[str, Codec] = builtin_codecs()
"""The built-in codecs by name (read-only; a plugin registers its codecs through ``register_codecs``)."""

_legacy: dict[str, Codec] = {}


def _registry(registry: Registry | None) -> Registry:
    return registry or get_registry()


def pack_model(model: VAE, registry: Registry | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The safetensors tensors and metadata that store ``model``."""
    return _pack(model, _registry(registry).codec_map())


def serialize_model(model: VAE, registry: Registry | None = None) -> bytes:
    """The bytes of ``weights.safetensors`` for ``model``."""
    return _serialize(model, _registry(registry).codec_map())


def size_bytes(model: VAE, registry: Registry | None = None) -> int:
    """Exactly ``len(serialize_model(model))``: the size objective and the exported file's length."""
    return len(serialize_model(model, registry))


def theoretical_bits(model: VAE, registry: Registry | None = None) -> int:
    """Information bits of the encodings (see :func:`vae_automl.storage.format.theoretical_bits`)."""
    return _theoretical_bits(model, _registry(registry).codec_map())


def deserialize_model(data: bytes, registry: Registry | None = None) -> VAE:
    """Rebuild a model from :func:`serialize_model` bytes (no pickle involved)."""
    return _deserialize(data, _registry(registry))


def register_codec(codec: Codec) -> None:
    """Deprecated since 0.2: implement the ``register_codecs`` hook in the plugin instead.

    The codec is still registered (by the built-in codecs plugin, when the
    registry is next built).
    """
    warnings.warn(
        "vae_automl.packing.register_codec is deprecated; implement the register_codecs hook", DeprecationWarning, stacklevel=2
    )
    if codec.name in _legacy and type(_legacy[codec.name]) is not type(codec):
        raise ValueError(f"codec {codec.name!r} is already registered by {type(_legacy[codec.name]).__qualname__}")
    _legacy[codec.name] = codec
    reset_registry()


def legacy_codecs() -> tuple[Codec, ...]:
    """The codecs given to :func:`register_codec`."""
    return tuple(_legacy.values())
