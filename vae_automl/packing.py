"""The storage format of a model: safetensors with packed tensors and a JSON header.

The byte length of :func:`serialize_model` is the ``size_bytes`` objective,
and ``export`` writes exactly these bytes as ``weights.safetensors``: one
piece of code decides both, so they cannot disagree.

Each tensor is stored by a codec named in ``model.encodings[name]["codec"]``
(dense float32 when absent). A codec turns a tensor into named parts plus
JSON metadata and back; ``pack(unpack(b)) == b`` holds for every codec.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Protocol

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vae_automl.errors import ExportError

if TYPE_CHECKING:
    from vae_automl.registry import Registry
    from vae_automl.vae import VAE

FORMAT_VERSION = 1
HEADER_KEY = "vae_automl"
PART_SEPARATOR = "::"


class Codec(Protocol):
    """How one tensor is stored."""

    name: str

    def pack(self, tensor: torch.Tensor, spec: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Return the parts to store (suffix -> tensor) and JSON metadata needed to unpack."""

    def unpack(self, parts: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        """Rebuild the float32 tensor from its parts and metadata."""

    def theoretical_bits(self, tensor: torch.Tensor, spec: dict[str, Any]) -> int:
        """Information bits the encoding needs, without container overhead."""


class DenseCodec:
    """Plain float tensors: float32 (the default) or float16."""

    name = "dense"

    def pack(self, tensor: torch.Tensor, spec: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[spec.get("dtype", "float32")]
        return {"": tensor.detach().to("cpu", dtype).contiguous()}, {}

    def unpack(self, parts: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        return parts[""].float()

    def theoretical_bits(self, tensor: torch.Tensor, spec: dict[str, Any]) -> int:
        return tensor.numel() * (32 if spec.get("dtype", "float32") == "float32" else 16)


CODECS: dict[str, Codec] = {"dense": DenseCodec()}


def register_codec(codec: Codec) -> None:
    """Make a storage codec available (compressor plugins with their own format call this at import)."""
    if codec.name in CODECS and type(CODECS[codec.name]) is not type(codec):
        raise ValueError(f"codec {codec.name!r} is already registered by {type(CODECS[codec.name]).__qualname__}")
    CODECS[codec.name] = codec


def _codec_for(name: str, spec: dict[str, Any]) -> Codec:
    codec_name = spec.get("codec", "dense")
    if codec_name not in CODECS:
        raise ExportError(f"tensor {name!r} asks for unknown codec {codec_name!r}; known: {', '.join(sorted(CODECS))}")
    return CODECS[codec_name]


def pack_model(model: VAE) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The safetensors tensors and metadata that store ``model``."""
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {}
    for name, tensor in model.state_dict().items():
        spec = model.encodings.get(name, {})
        codec = _codec_for(name, spec)
        parts, meta = codec.pack(tensor.detach().float().cpu(), spec)
        for suffix, part in parts.items():
            tensors[name + (PART_SEPARATOR + suffix if suffix else "")] = part
        layout[name] = {"spec": spec, "meta": meta, "shape": list(tensor.shape)}
    header = {"format": FORMAT_VERSION, "config": model.config, "tensors": layout}
    return tensors, {HEADER_KEY: json.dumps(header, sort_keys=True, separators=(",", ":"))}


def serialize_model(model: VAE) -> bytes:
    """The bytes of ``weights.safetensors`` for ``model``."""
    tensors, metadata = pack_model(model)
    return st_save(tensors, metadata=metadata)


def size_bytes(model: VAE) -> int:
    return len(serialize_model(model))


def theoretical_bits(model: VAE) -> int:
    """Bits the tensors' encodings need, without headers, shapes or padding."""
    total = 0
    for name, tensor in model.state_dict().items():
        spec = model.encodings.get(name, {})
        total += _codec_for(name, spec).theoretical_bits(tensor.detach().float().cpu(), spec)
    return total


def read_header(data: bytes) -> dict[str, Any]:
    """The JSON header of serialized model bytes."""
    if len(data) < 8:
        raise ExportError("not a safetensors file: shorter than its 8-byte length prefix")
    n = int.from_bytes(data[:8], "little")
    try:
        st_header = json.loads(data[8:8 + n])
        return json.loads(st_header["__metadata__"][HEADER_KEY])
    except (ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"not a vae-automl weights file: {exc!r}") from exc


def deserialize_model(data: bytes, registry: Registry | None = None) -> VAE:
    """Rebuild a model from :func:`serialize_model` bytes (no pickle involved)."""
    from vae_automl.registry import get_registry

    registry = registry or get_registry()
    header = read_header(data)
    if header.get("format") != FORMAT_VERSION:
        raise ExportError(f"weights format {header.get('format')!r} is not the supported {FORMAT_VERSION}")
    stored = st_load(data)
    model = registry.build_model(header["config"])
    state = {}
    for name, entry in header["tensors"].items():
        prefix = name + PART_SEPARATOR
        parts = {key[len(prefix):]: t for key, t in stored.items() if key.startswith(prefix)}
        if name in stored:
            parts[""] = stored[name]
        codec = _codec_for(name, entry["spec"])
        state[name] = codec.unpack(parts, entry["meta"]).reshape(entry["shape"])
        if entry["spec"]:
            model.encodings[name] = entry["spec"]
    model.load_state_dict(state)
    return model.eval()
