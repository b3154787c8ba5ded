"""The JSON header of a weights file: format version, model config and per-tensor layout.

The header sits in the safetensors ``__metadata__`` under :data:`HEADER_KEY`;
each tensor's entry holds its header spec, the codec's metadata and its shape.
"""

from __future__ import annotations

import json
from typing import Any

from vae_automl.errors import ExportError

FORMAT_VERSION = 1
HEADER_KEY = "vae_automl"
PART_SEPARATOR = "::"
"""Stored tensor ``NAME::SUFFIX`` is part ``SUFFIX`` of model tensor ``NAME`` (the main part has no suffix)."""


def encode_header(config: dict[str, Any], layout: dict[str, Any]) -> dict[str, str]:
    """The safetensors metadata holding the header (canonical JSON, so equal models give equal bytes)."""
    header = {"format": FORMAT_VERSION, "config": config, "tensors": layout}
    return {HEADER_KEY: json.dumps(header, sort_keys=True, separators=(",", ":"))}


def read_header(data: bytes) -> dict[str, Any]:
    """The JSON header of serialized model bytes (safetensors container).

    A compact container (:mod:`vae_automl.storage.compact`) names no tensors
    in its header (the config's model does): read it with
    ``deserialize_model``.
    """
    if data[:3] == b"VAC":
        raise ExportError("a compact weights file: its header names no tensors; load it with deserialize_model")
    if len(data) < 8:
        raise ExportError("not a safetensors file: shorter than its 8-byte length prefix")
    n = int.from_bytes(data[:8], "little")
    try:
        st_header = json.loads(data[8 : 8 + n])
        header: dict[str, Any] = json.loads(st_header["__metadata__"][HEADER_KEY])
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"not a vae-automl weights file: {exc!r}") from exc
    return header
