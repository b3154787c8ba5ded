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

Layout of version 3 (integers are unsigned LEB128 varints)::

    b"VAC" + bytes([version])
    varint n, then n bytes: deflate(JSON {"config": ..., "specs": [[spec, meta, [[suffix, dtype], ...]], ...]})
    varint t (tensors), then per tensor: varint index into "specs", then a varint count per 1-D part of that spec
    the parts' bytes back to back, in the tensors' order (little-endian, as safetensors stores them)

``specs`` lists each distinct (spec, codec metadata, part names and
dtypes) once: the five biases of a zoo CNN share one entry. A part's count
is its number of elements; a part that is not 1-D is listed as
``[suffix, dtype, shape]`` in its spec instead and has no count. The parts
must fill the rest of the file exactly: a truncated or padded file is
refused.

Versions 1 and 2 keep each tensor's spec, metadata and part counts in the
deflated JSON (``{"config": ..., "tensors": [[spec, meta, [[suffix, dtype,
count], ...]], ...]}``, ``count`` a shape when the part is not 1-D) and
have no binary listing: deflate then spent about a byte per tensor
repeating a spec and two to three per count written as text.

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
VERSION = 3
"""The version written. 2 extended the preset dictionary (:data:`ZDICTS`) with the specs of quantized biases and
float8 codebooks; 3 lists each distinct spec once and the part counts as varints (about 25 bytes less on a zoo
CNN). Files of every earlier version still load, and a model loaded from one is written in its version again."""
LISTED = 3
"""The first version with the binary listing (distinct specs in the JSON, counts as varints)."""

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
ZDICT_V3 = ZDICT_V2 + (
    b'{"entropy":{"":{"kind":"codes","n":'
    b'[{"bits":2,"codebook_dtype":"float8_e4m3","codec":"codebook","entropy":true},{},[["","U8"],["codebook","F8_E4M3"]]]'
    b'{"mask":"bitmask"},[["","U8"],["codebook","F8_E4M3"],["mask","U8"]]],'
    b'[{"bits":3,"codebook_dtype":"float8_e4m3","codec":"codebook","entropy":true,"sparse":true},'
    b'{"entropy":{"mask":{"kind":"mask"}},"mask":"bitmask"}'
    b'[{"axis":null,"bits":6,"codec":"uniform","entropy":true,"scale_dtype":"float16","symmetric":true},{},'
    b'[["","U8"],["scale","F16"]]]'
    b'},"specs":[['
)
"""Version 3's dictionary: version 2's, then the pieces of its ``specs`` list (a spec, its metadata and its parts'
names and dtypes, without counts) for the k-means and bias specs the quantizers write."""
ZDICTS = {1: ZDICT_V1, 2: ZDICT_V2, 3: ZDICT_V3}


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
            raise ExportError("compact weights file: truncated inside its header (a length or count)")
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


def _layout_item(suffix: str, part: torch.Tensor) -> list[Any]:
    if part.dtype not in _NAMES:
        raise ExportError(f"compact weights file: part {suffix!r} has dtype {part.dtype}, which it cannot store")
    return [suffix, _NAMES[part.dtype], part.numel() if part.dim() == 1 else list(part.shape)]


def write(config: dict[str, Any], entries: list[Entry], version: int = VERSION) -> bytes:
    """The compact container of ``entries`` (one per state-dict tensor, in order) for a model built from ``config``,
    in format ``version`` (the current one unless a loaded file's own is kept)."""
    if version not in ZDICTS:
        raise ExportError(f"compact weights file: no version {version}; known: {', '.join(map(str, ZDICTS))}")
    payload = b"".join(_raw(part) for _, _, parts in entries for part in parts.values())
    layouts = [[_layout_item(suffix, part) for suffix, part in parts.items()] for _, _, parts in entries]
    if version < LISTED:
        listing = [[spec, meta, layout] for (spec, meta, _), layout in zip(entries, layouts)]
        header = _deflate(_json({"config": config, "tensors": listing}), version)
        return MAGIC + bytes([version]) + _varint(len(header)) + header + payload
    specs: list[Any] = []
    index: dict[bytes, int] = {}
    binary = bytearray(_varint(len(entries)))
    for (spec, meta, _), layout in zip(entries, layouts):
        # A 1-D part's count goes to the binary listing; a part of another shape keeps its shape in the spec.
        named = [item if isinstance(item[2], list) else item[:2] for item in layout]
        key = _json([spec, meta, named])
        if key not in index:
            index[key] = len(specs)
            specs.append([spec, meta, named])
        binary += _varint(index[key])
        for item in layout:
            if not isinstance(item[2], list):
                binary += _varint(item[2])
    header = _deflate(_json({"config": config, "specs": specs}), version)
    return MAGIC + bytes([version]) + _varint(len(header)) + header + bytes(binary) + payload


def _json(value: Any) -> bytes:
    """Canonical JSON: equal headers give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


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
        config = header["config"]
        listing = header["tensors"] if version < LISTED else header["specs"]
    except (zlib.error, ValueError, KeyError, TypeError) as exc:
        raise ExportError(f"compact weights file: unreadable header ({exc!r})") from None
    pos += length
    if version >= LISTED:
        listing, pos = _read_listing(data, pos, listing)
    entries: list[Entry] = []
    for spec, meta, layout in listing:
        parts: dict[str, torch.Tensor] = {}
        for suffix, dtype_name, count in layout:
            if dtype_name not in DTYPES:
                raise ExportError(f"compact weights file: part {suffix!r} has unknown dtype {dtype_name!r}")
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


def _read_listing(data: bytes, pos: int, specs: list[Any]) -> tuple[list[Any], int]:
    """Version 3's binary listing after the header: each tensor's ``[spec, meta, [[suffix, dtype, count], ...]]``
    (the counts of its 1-D parts read from the varints) and the position of the first part."""
    count, pos = _read_varint(data, pos)
    listing = []
    for _ in range(count):
        i, pos = _read_varint(data, pos)
        if i >= len(specs):
            raise ExportError(f"compact weights file: a tensor names spec {i}, but the header lists {len(specs)}")
        try:
            spec, meta, named = specs[i]
            lengths = [len(item) for item in named]
        except (ValueError, TypeError) as exc:
            raise ExportError(f"compact weights file: unreadable spec {i} ({exc!r})") from None
        if any(n not in (2, 3) for n in lengths):
            raise ExportError(f"compact weights file: spec {i} lists a part that is not [suffix, dtype(, shape)]")
        layout = []
        for item in named:
            if len(item) == 3:
                layout.append(item)
            else:
                n, pos = _read_varint(data, pos)
                layout.append([*item, n])
        listing.append([spec, meta, layout])
    return listing, pos
