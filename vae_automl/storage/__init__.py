"""How a model is stored: bit packing, codecs, the safetensors format and its header.

Layers, bottom up: :mod:`~vae_automl.storage.bits` (bit packing, sparse
masks), :mod:`~vae_automl.storage.codec` (the :class:`Codec` contract),
:mod:`~vae_automl.storage.codecs` (the built-in codecs),
:mod:`~vae_automl.storage.header` (the JSON header) and
:mod:`~vae_automl.storage.format` (whole models to and from bytes).

Names are loaded on first use, so that importing the :class:`Codec`
contract (the registry does) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vae_automl.storage.bits import decode_mask, encode_mask, mask_bits, mask_encodings, pack_bits, unpack_bits
    from vae_automl.storage.codec import Codec, Parts
    from vae_automl.storage.codecs import FLOAT_BITS, FLOAT_DTYPES, CodebookCodec, DenseCodec, UniformCodec, builtin_codecs
    from vae_automl.storage.format import (
        Codecs,
        codec_for,
        deserialize_model,
        pack_model,
        serialize_model,
        size_bytes,
        theoretical_bits,
    )
    from vae_automl.storage.header import FORMAT_VERSION, HEADER_KEY, PART_SEPARATOR, read_header

_MODULE_OF = {
    "decode_mask": "bits",
    "encode_mask": "bits",
    "mask_bits": "bits",
    "mask_encodings": "bits",
    "pack_bits": "bits",
    "unpack_bits": "bits",
    "Codec": "codec",
    "Parts": "codec",
    "FLOAT_BITS": "codecs",
    "FLOAT_DTYPES": "codecs",
    "CodebookCodec": "codecs",
    "DenseCodec": "codecs",
    "UniformCodec": "codecs",
    "builtin_codecs": "codecs",
    "Codecs": "format",
    "codec_for": "format",
    "deserialize_model": "format",
    "pack_model": "format",
    "serialize_model": "format",
    "size_bytes": "format",
    "theoretical_bits": "format",
    "FORMAT_VERSION": "header",
    "HEADER_KEY": "header",
    "PART_SEPARATOR": "header",
    "read_header": "header",
}

__all__ = [
    "CodebookCodec",
    "Codec",
    "Codecs",
    "DenseCodec",
    "FLOAT_BITS",
    "FLOAT_DTYPES",
    "FORMAT_VERSION",
    "HEADER_KEY",
    "PART_SEPARATOR",
    "Parts",
    "UniformCodec",
    "builtin_codecs",
    "codec_for",
    "decode_mask",
    "deserialize_model",
    "encode_mask",
    "mask_bits",
    "mask_encodings",
    "pack_bits",
    "pack_model",
    "read_header",
    "serialize_model",
    "size_bytes",
    "theoretical_bits",
    "unpack_bits",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
