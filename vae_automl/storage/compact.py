"""The compact container: a packed model with a header of tens of bytes instead of kilobytes.

A safetensors file spends about 60 bytes of JSON per stored part (name,
dtype, shape, offsets) and then holds the vae-automl header (config,
per-tensor specs and metadata) as a JSON string: about 3 KB for the
2,464-parameter zoo CNN, whose packed codes take under 1 KB. The compact
container stores the very same parts and the very same header, without
what the model's config already says:

* tensor names and shapes are not stored: they are those of the model the
  config builds (loading builds it anyway, and refuses a mismatch), taken
  in name order (a state dict's own order changes when pruning re-registers
  a parameter);
* part names, dtypes and lengths are a short list per tensor;
* the header is canonical JSON, raw-deflated (``zlib``, level 9) against a
  fixed preset dictionary of the strings headers are made of (:data:`ZDICTS`, one per version).

Layout (integers are unsigned LEB128 varints)::

    b"VAC" + bytes([version])
    varint n, then n bytes: deflate(JSON {"config": ..., "tensors": [[spec, meta, [[suffix, dtype, count], ...]], ...]})
    the parts' bytes back to back, in the header's order (little-endian, as safetensors stores them)

``count`` is a part's number of elements when it is 1-D, else its shape (a
list). The parts must fill the rest of the file exactly: a truncated or
padded file is refused.

:data:`ZDICTS` is part of the format: changing a dictionary changes every
file's bytes, so a new dictionary needs a new :data:`VERSION` (the golden
files in ``tests/data`` fail otherwise); every version's dictionary is kept
so its files still load.
"""

from __future__ import annotations

import json
import math
import zlib
from typing import Any

import torch

from vae_automl.errors import ExportError

MAGIC = b"VAC"
VERSION = 2
"""The version written. 2 extended the preset dictionary (:data:`ZDICTS`) with the specs of quantized biases and
float8 codebooks; version 1 files still load, and a model loaded from one is written as version 1 again."""

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
"""Part dtypes by the names safetensors gives them."""
_NAMES = {dtype: name for name, dtype in DTYPES.items()}

ZDICT_V1 = (
    b'"sparse":true"symmetric":true"symmetric":false"scale_dtype":"float32""axis":null"axis":0'
    b'"zero_point""weight_vae""uniform""index16""delta16""index32""kind":"codes","n":"kind":"float16"'
    b'"preset":"seed_784_400_20""architecture":"mlp""hidden_layers":1,"hidden_width":400,"latent_dim":20,'
    b'"likelihood":"bernoulli","width_decay":1.0"task":"vae""architecture":"lenet5""architecture":"lenet_300_100"'
    b'"architecture":"zoo_cnn","conv_channels":[8,6,4],"conv_kernels":[5,5,2],"conv_pool":[true,true,false],'
    b'"hidden_widths":[20],"input_shape":[1,28,28],"num_classes":10,"task":"classifier"},"activation":"relu"'
    b'{"config":{"activation":"tanh",'
    b'"tensors":[[{},{},[["","F32",'
    b'[[{"bits":4,"codebook_dtype":"float16","codec":"codebook","entropy":true,"sparse":true},'
    b'{"entropy":{"":{"kind":"codes","n":'
    b'"mask":{"kind":"mask"}},"mask":"bitmask"},[["","U8",'
    b'],["codebook","F16",8],["mask","U8",'
    b'],["scale","F16",'
)
"""Strings the deflated header is likely to repeat (a preset dictionary: it costs no stored byte)."""
ZDICT_V2 = ZDICT_V1 + (
    b'"codebook_dtype":"float8_e4m3"],["codebook","F8_E4M3",8],["mask","U8",'
    b'"bits":8,"codec":"uniform"'
    b'{"axis":null,"bits":6,"codec":"uniform","scale_dtype":"float16","symmetric":true},{},[["","U8",6],["scale","F16",1]]],'
)
"""Version 2's dictionary: version 1's, then the spec of a bias on a per-tensor uniform grid (``bias_bits``) and
a float8 codebook (the strings deflate matches most cheaply go last)."""
ZDICTS = {1: ZDICT_V1, 2: ZDICT_V2}


def is_compact(data: bytes) -> bool:
    """Whether ``data`` is a compact container (a safetensors file starts with its header length instead)."""
    return data[: len(MAGIC)] == MAGIC


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ExportError("compact weights file: truncated inside its header length")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _deflate(text: bytes, version: int = VERSION) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, ZDICTS[version])
    return compressor.compress(text) + compressor.flush()


def _inflate(data: bytes, version: int = VERSION) -> bytes:
    decompressor = zlib.decompressobj(-15, ZDICTS[version])
    text = decompressor.decompress(data) + decompressor.flush()
    if not decompressor.eof:
        raise ExportError("compact weights file: its header is truncated")
    return text


def _raw(tensor: torch.Tensor) -> bytes:
    flat = tensor.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""


Entry = tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]
"""One model tensor as stored: its header spec, its codec metadata, its parts (suffix -> tensor)."""


def write(config: dict[str, Any], entries: list[Entry], version: int = VERSION) -> bytes:
    """The compact container of ``entries`` (one per state-dict tensor, in order) for a model built from ``config``,
    in format ``version`` (the current one unless a loaded file's own is kept)."""
    if version not in ZDICTS:
        raise ExportError(f"compact weights file: no version {version}; known: {', '.join(map(str, ZDICTS))}")
    listing = []
    payload = bytearray()
    for spec, meta, parts in entries:
        layout = []
        for suffix, part in parts.items():
            if part.dtype not in _NAMES:
                raise ExportError(f"compact weights file: part {suffix!r} has dtype {part.dtype}, which it cannot store")
            layout.append([suffix, _NAMES[part.dtype], part.numel() if part.dim() == 1 else list(part.shape)])
            payload += _raw(part)
        listing.append([spec, meta, layout])
    text = json.dumps({"config": config, "tensors": listing}, sort_keys=True, separators=(",", ":")).encode()
    header = _deflate(text, version)
    return MAGIC + bytes([version]) + _varint(len(header)) + header + bytes(payload)


def version_of(data: bytes) -> int:
    """The format version of a compact container, or an error naming the versions this one reads."""
    version = data[len(MAGIC)] if len(data) > len(MAGIC) and is_compact(data) else None
    if version not in ZDICTS:
        known = ", ".join(map(str, ZDICTS))
        raise ExportError(f"not a compact weights file of a version this one reads ({known}): version byte {version!r}")
    return int(version)


def read(data: bytes) -> tuple[dict[str, Any], list[Entry]]:
    """The inverse of :func:`write`: the config and the entries, parts as fresh tensors (any version in :data:`ZDICTS`)."""
    version = version_of(data)
    length, pos = _read_varint(data, len(MAGIC) + 1)
    if pos + length > len(data):
        raise ExportError(f"compact weights file: its header claims {length} bytes, but the file ends first")
    try:
        header = json.loads(_inflate(data[pos : pos + length], version))
        config, listing = header["config"], header["tensors"]
    except (zlib.error, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"compact weights file: unreadable header ({exc!r})") from None
    pos += length
    entries: list[Entry] = []
    for spec, meta, layout in listing:
        parts: dict[str, torch.Tensor] = {}
        for suffix, dtype_name, count in layout:
            dtype = DTYPES[dtype_name]
            shape = [count] if isinstance(count, int) else list(count)
            nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if pos + nbytes > len(data):
                raise ExportError(f"compact weights file: truncated in part {suffix!r} ({nbytes} bytes, {len(data) - pos} left)")
            raw = bytearray(data[pos : pos + nbytes])
            parts[suffix] = (torch.frombuffer(raw, dtype=dtype) if nbytes else torch.empty(0, dtype=dtype)).reshape(shape)
            pos += nbytes
        entries.append((spec, meta, parts))
    if pos != len(data):
        raise ExportError(f"compact weights file: {len(data) - pos} bytes after the last part")
    return config, entries
