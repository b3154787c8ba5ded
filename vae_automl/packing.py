"""The storage format of a model: safetensors with packed tensors and a JSON header.

The byte length of :func:`serialize_model` is the ``size_bytes`` objective,
and ``export`` writes exactly these bytes as ``weights.safetensors``: one
piece of code decides both, so they cannot disagree.

Each tensor is stored by a codec named in ``model.encodings[name]["codec"]``
(dense float32 when absent):

``dense``
    float32 (default), float16 or bfloat16 values (``"dtype"``).
``uniform``
    n-bit integer codes (``"bits"`` 1..8) bit-packed into bytes, with a
    scale per tensor or per slice along ``"axis"`` and, when not
    ``"symmetric"``, an integer zero point. See :class:`UniformCodec`.
``codebook``
    n-bit indices into a small table of float values (k-means weight
    sharing, power-of-two levels). See :class:`CodebookCodec`.

Any spec may add ``"sparse": true``: the positions of the non-zero values
are stored as a bitmask or as 16/32-bit absolute indices or 16-bit deltas,
whichever takes fewest bytes, and only the non-zero values go through the
codec; zeros come back exactly zero.

Two guarantees hold for every built-in codec, and :func:`pack_model` checks
the second one rather than silently re-quantizing:

* ``serialize_model(deserialize_model(b)) == b``;
* the unpacked float tensor equals the model's tensor exactly (a quantizer
  leaves the dequantized values in the model, and the grid in the spec).

Grids (scales, zero points, codebooks) live in the encoding spec as lists
of floats while in memory; on disk they are tensors beside the codes, and
:func:`deserialize_model` puts them back into ``model.encodings``.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
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
FLOAT_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
FLOAT_BITS = {"float32": 32, "float16": 16, "bfloat16": 16}


class Codec(Protocol):
    """How one tensor is stored.

    ``mask`` (a bool tensor of the tensor's shape, or None) is given when the
    spec says ``"sparse": true``: the codec stores only the masked values,
    in row-major order, and ``unpack`` returns the full tensor with zeros
    elsewhere. A codec without mask support still works with sparse specs:
    :func:`pack_model` hands it the 1-D vector of non-zero values instead.
    """

    name: str

    def pack(self, tensor: torch.Tensor, spec: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Return the parts to store (suffix -> tensor) and JSON metadata needed to unpack."""

    def unpack(self, parts: dict[str, torch.Tensor], meta: dict[str, Any]) -> torch.Tensor:
        """Rebuild the float32 tensor from its parts and metadata."""

    def theoretical_bits(self, tensor: torch.Tensor, spec: dict[str, Any]) -> int:
        """Information bits the encoding needs, without container overhead."""


# ----------------------------------------------------------------------------------------------
# bit packing and sparse masks


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned ``codes`` (each < 2**bits) -> uint8 bytes, ``bits`` per code, least significant bit first.

    Eight 1-bit codes fill one byte; the last byte is zero-padded. The length
    is ``ceil(len(codes) * bits / 8)``.
    """
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, but got {bits}")
    values = codes.detach().to("cpu", torch.int64).flatten().numpy()
    if values.size and (values.min() < 0 or values.max() >= 1 << bits):
        raise ValueError(f"codes must be in [0, {(1 << bits) - 1}] for {bits} bits, got [{values.min()}, {values.max()}]")
    if bits == 8:
        return torch.from_numpy(values.astype(np.uint8))
    bit_matrix = (values[:, None] >> np.arange(bits)) & 1
    return torch.from_numpy(np.packbits(bit_matrix.astype(np.uint8).ravel(), bitorder="little"))


def unpack_bits(data: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    """The inverse of :func:`pack_bits`: ``count`` codes as int64."""
    raw = data.detach().to("cpu", torch.uint8).flatten().numpy()
    if bits == 8:
        return torch.from_numpy(raw[:count].astype(np.int64))
    bit_stream = np.unpackbits(raw, bitorder="little", count=count * bits).reshape(count, bits).astype(np.int64)
    return torch.from_numpy((bit_stream << np.arange(bits)).sum(1))


def packed_nbytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def mask_encodings(mask: torch.Tensor) -> dict[str, int]:
    """Bytes each way of storing ``mask`` would take (only the ways that can hold it)."""
    n = mask.numel()
    flat = mask.flatten()
    nnz = int(flat.sum())
    sizes = {"bitmask": (n + 7) // 8}
    if n <= 1 << 16:
        sizes["index16"] = 2 * nnz
    else:
        sizes["index32"] = 4 * nnz
        idx = torch.nonzero(flat).flatten()
        # Deltas between successive positions (the first from 0) fit 16 bits when no gap reaches 2**16.
        if nnz == 0 or int(torch.diff(idx, prepend=idx.new_zeros(1)).max()) < 1 << 16:
            sizes["delta16"] = 2 * nnz
    return sizes


def encode_mask(mask: torch.Tensor) -> tuple[torch.Tensor, str]:
    """The smallest encoding of a bool mask (ties go to the bitmask) and its kind."""
    sizes = mask_encodings(mask)
    kind = min(sizes, key=lambda k: (sizes[k], k != "bitmask"))
    flat = mask.detach().to("cpu").flatten()
    if kind == "bitmask":
        return pack_bits(flat.to(torch.int64), 1), kind
    idx = torch.nonzero(flat).flatten()
    if kind == "delta16":
        idx = torch.diff(idx, prepend=idx.new_zeros(1))
    dtype = torch.int32 if kind == "index32" else torch.int16
    # uint16 is stored through int16's bit pattern: safetensors' torch side has no uint16 ops on every version.
    values = idx.to(torch.int64)
    if dtype == torch.int16:
        values = torch.where(values >= 1 << 15, values - (1 << 16), values)
    return values.to(dtype), kind


def decode_mask(data: torch.Tensor, kind: str, numel: int) -> torch.Tensor:
    """The inverse of :func:`encode_mask`: a flat bool mask of ``numel`` elements."""
    if kind == "bitmask":
        return unpack_bits(data, 1, numel).bool()
    values = data.to(torch.int64)
    if data.dtype == torch.int16:
        values = torch.where(values < 0, values + (1 << 16), values)
    if kind == "delta16":
        values = torch.cumsum(values, 0)
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[values] = True
    return mask


def mask_bits(mask: torch.Tensor) -> int:
    """Information bits of the chosen mask encoding (a bitmask counts one bit per element, no padding)."""
    sizes = mask_encodings(mask)
    kind = min(sizes, key=lambda k: (sizes[k], k != "bitmask"))
    return mask.numel() if kind == "bitmask" else 8 * sizes[kind]


# ----------------------------------------------------------------------------------------------
# codecs


def _scatter(values: torch.Tensor, shape: list[int] | tuple[int, ...], mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return values.reshape(shape)
    out = torch.zeros(math.prod(shape), dtype=values.dtype)
    out[mask.flatten()] = values
    return out.reshape(shape)


class DenseCodec:
    """Plain float tensors: float32 (the default), float16 or bfloat16."""

    name = "dense"
    supports_mask = True

    def pack(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        dtype = FLOAT_DTYPES[spec.get("dtype", "float32")]
        values = tensor[mask] if mask is not None else tensor
        return {"": values.detach().to("cpu", dtype).contiguous()}, {}

    def unpack(self, parts: dict[str, torch.Tensor], meta: dict[str, Any],
               shape: list[int] | None = None, mask: torch.Tensor | None = None) -> torch.Tensor:
        values = parts[""].float()
        return values if shape is None else _scatter(values.flatten(), shape, mask)

    def theoretical_bits(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None) -> int:
        count = int(mask.sum()) if mask is not None else tensor.numel()
        return count * FLOAT_BITS[spec.get("dtype", "float32")]


class _GridCodec:
    """Shared machinery of codecs that store integer codes plus a grid kept in the spec."""

    name = ""
    supports_mask = True
    grid_keys: tuple[str, ...] = ()

    def codes(self, tensor: torch.Tensor, spec: dict[str, Any]) -> tuple[torch.Tensor, int]:
        """Non-negative int64 codes of the tensor's shape, and the bits each takes."""
        raise NotImplementedError

    def decode(self, codes: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
        """Float32 values of ``codes`` (same shape)."""
        raise NotImplementedError

    def grid_parts(self, spec: dict[str, Any]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def grid_from_parts(self, parts: dict[str, torch.Tensor], header_spec: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def grid_bits(self, spec: dict[str, Any]) -> int:
        raise NotImplementedError

    def header_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The spec as written in the JSON header: the grid goes into tensors instead."""
        return {k: v for k, v in spec.items() if k not in self.grid_keys}

    def full_spec(self, parts: dict[str, torch.Tensor], header_spec: dict[str, Any]) -> dict[str, Any]:
        """The in-memory spec rebuilt from the header spec and the stored grid tensors."""
        return {**header_spec, **self.grid_from_parts(parts, header_spec)}

    def pack(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        codes, bits = self.codes(tensor, spec)
        decoded = self.decode(codes, spec)
        exact = decoded == tensor if mask is None else (decoded == tensor) | ~mask
        if not bool(exact.all()):
            worst = float((decoded - tensor).abs().max())
            raise ExportError(f"{self.name} codec: the weights are not on the grid of their encoding spec "
                              f"(largest difference {worst:.3g}); a compressor changed them after quantizing")
        selected = codes[mask] if mask is not None else codes.flatten()
        return {"": pack_bits(selected, bits), **self.grid_parts(spec)}, {}

    def unpack(self, parts: dict[str, torch.Tensor], meta: dict[str, Any],
               shape: list[int] | None = None, mask: torch.Tensor | None = None, spec: dict[str, Any] | None = None
               ) -> torch.Tensor:
        if shape is None or spec is None:
            raise ExportError(f"the {self.name} codec needs the tensor's shape and spec to unpack")
        count = int(mask.sum()) if mask is not None else math.prod(shape)
        codes = unpack_bits(parts[""], int(spec["bits"]), count)
        full = torch.zeros(math.prod(shape), dtype=torch.int64)
        if mask is not None:
            full[mask.flatten()] = codes
        else:
            full = codes
        values = self.decode(full.reshape(shape), spec)
        return values if mask is None else torch.where(mask, values, torch.zeros((), dtype=values.dtype))

    def theoretical_bits(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None) -> int:
        count = int(mask.sum()) if mask is not None else tensor.numel()
        return count * int(spec["bits"]) + self.grid_bits(spec)


def _float_list_tensor(values: list[float], dtype_name: str) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).to(FLOAT_DTYPES[dtype_name]).contiguous()


class UniformCodec(_GridCodec):
    """n-bit uniform codes, bit-packed, with per-tensor or per-channel scales.

    Spec keys: ``bits`` (1..8); ``axis`` (None: one scale for the tensor; an
    int: one scale per slice along that axis, 0 = output channels of Linear
    and Conv weights); ``symmetric`` (bool); ``scale`` (list of floats, one
    per channel); ``zero_point`` (list of ints, asymmetric only);
    ``scale_dtype`` (``float16``, the default, or ``float32``: how scales are
    stored; the quantizer rounds scales to that dtype so the stored value is
    the one used).

    Values: symmetric ``w = q * scale`` with ``q`` in
    ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` stored as ``q + 2**(bits-1) - 1``
    (the restricted range: 2 bits give -1, 0, +1); with 1 bit symmetric,
    ``w = (2c - 1) * scale`` (binary +-scale, no zero level). Asymmetric
    ``w = (c - zero_point) * scale`` with ``c`` in ``[0, 2**bits - 1]``.

    onnxruntime compatibility: for 8-bit symmetric per-channel weights
    (``bits: 8, symmetric: true, axis: 0``) the quantizers pick
    ``scale = max|w_q| / 127`` per output channel, where ``w_q`` are the
    stored (dequantized) weights, and ``scale`` is float16-representable so
    ``127 * scale`` is exact in float32. onnxruntime's
    ``quantize_dynamic(per_channel=True, weight_type=QInt8)`` computes its
    scale as ``2 * max|w| / 254`` of the weights it is given, which is then
    exactly our scale, and ``round(w / scale)`` exactly our codes: the
    int8 kernels run the very grid this file stores.
    """

    name = "uniform"
    grid_keys = ("scale", "zero_point")

    @staticmethod
    def _levels(spec: dict[str, Any]) -> tuple[int, int]:
        """(offset, largest code): stored code = q + offset."""
        bits = int(spec["bits"])
        if not 1 <= bits <= 8:
            raise ExportError(f"uniform codec: bits must be in 1..8, but got bits={bits}")
        if spec.get("symmetric", True):
            if bits == 1:
                return 0, 1
            half = (1 << (bits - 1)) - 1
            return half, 2 * half
        return 0, (1 << bits) - 1

    def _broadcast(self, values: list[float], shape: torch.Size, spec: dict[str, Any], dtype: torch.dtype) -> torch.Tensor:
        axis = spec.get("axis")
        t = torch.tensor(values, dtype=torch.float64).to(dtype)
        if axis is None:
            if t.numel() != 1:
                raise ExportError(f"uniform codec: a per-tensor spec needs one scale, got {t.numel()}")
            return t.reshape([1] * len(shape))
        axis = int(axis) % len(shape)
        if t.numel() != shape[axis]:
            raise ExportError(f"uniform codec: axis {axis} has {shape[axis]} channels but the spec gives {t.numel()} scales")
        view = [1] * len(shape)
        view[axis] = shape[axis]
        return t.reshape(view)

    def _scale(self, shape: torch.Size, spec: dict[str, Any]) -> torch.Tensor:
        # The scale as stored (rounded to its dtype), used in float32 arithmetic.
        scale = self._broadcast(spec["scale"], shape, spec, FLOAT_DTYPES[spec.get("scale_dtype", "float16")])
        return scale.float()

    def codes(self, tensor: torch.Tensor, spec: dict[str, Any]) -> tuple[torch.Tensor, int]:
        offset, top = self._levels(spec)
        scale = self._scale(tensor.shape, spec)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        if spec.get("symmetric", True):
            if int(spec["bits"]) == 1:
                codes = (tensor >= 0).to(torch.int64)
            else:
                codes = torch.round(tensor / safe).to(torch.int64) + offset
        else:
            zp = self._broadcast(spec["zero_point"], tensor.shape, spec, torch.float32)
            codes = torch.round(tensor / safe).to(torch.int64) + zp.to(torch.int64)
        return codes.clamp(0, top), int(spec["bits"])

    def decode(self, codes: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
        offset, _ = self._levels(spec)
        scale = self._scale(codes.shape, spec)
        if spec.get("symmetric", True):
            q = (2 * codes - 1) if int(spec["bits"]) == 1 else codes - offset
        else:
            q = codes - self._broadcast(spec["zero_point"], codes.shape, spec, torch.float32).to(torch.int64)
        return q.to(torch.float32) * scale

    def grid_parts(self, spec: dict[str, Any]) -> dict[str, torch.Tensor]:
        parts = {"scale": _float_list_tensor(spec["scale"], spec.get("scale_dtype", "float16"))}
        if not spec.get("symmetric", True):
            parts["zero_point"] = torch.tensor(spec["zero_point"], dtype=torch.uint8)
        return parts

    def grid_from_parts(self, parts: dict[str, torch.Tensor], header_spec: dict[str, Any]) -> dict[str, Any]:
        grid: dict[str, Any] = {"scale": parts["scale"].double().tolist()}
        if "zero_point" in parts:
            grid["zero_point"] = parts["zero_point"].to(torch.int64).tolist()
        return grid

    def grid_bits(self, spec: dict[str, Any]) -> int:
        n = len(spec["scale"])
        zp = 0 if spec.get("symmetric", True) else n * int(spec["bits"])
        return n * FLOAT_BITS[spec.get("scale_dtype", "float16")] + zp


class CodebookCodec(_GridCodec):
    """n-bit indices into a codebook of float values (k-means weight sharing, power-of-two levels).

    Spec keys: ``bits`` (1..8, at least ``ceil(log2(len(codebook)))``);
    ``codebook`` (a sorted list of distinct floats, at most ``2**bits``);
    ``codebook_dtype`` (``float16``, the default, or ``float32``). Each
    value is stored as the index of its codebook entry.
    """

    name = "codebook"
    grid_keys = ("codebook",)

    def _table(self, spec: dict[str, Any]) -> torch.Tensor:
        table = _float_list_tensor(spec["codebook"], spec.get("codebook_dtype", "float16")).float()
        bits = int(spec["bits"])
        if not 1 <= bits <= 8 or len(table) > 1 << bits or len(table) == 0:
            raise ExportError(f"codebook codec: {len(table)} entries do not fit bits={bits} (1..8)")
        if len(table) > 1 and not bool((table[1:] > table[:-1]).all()):
            raise ExportError("codebook codec: the codebook must be sorted and free of duplicates in its dtype")
        return table

    def codes(self, tensor: torch.Tensor, spec: dict[str, Any]) -> tuple[torch.Tensor, int]:
        table = self._table(spec)
        idx = torch.searchsorted(table, tensor.contiguous().float()).clamp(max=len(table) - 1)
        lower = (idx - 1).clamp(min=0)
        # Nearest entry: exact matches land on idx; otherwise pick the closer neighbour.
        use_lower = (tensor - table[lower]).abs() < (table[idx] - tensor).abs()
        return torch.where(use_lower, lower, idx).to(torch.int64), int(spec["bits"])

    def decode(self, codes: torch.Tensor, spec: dict[str, Any]) -> torch.Tensor:
        return self._table(spec)[codes]

    def grid_parts(self, spec: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {"codebook": _float_list_tensor(spec["codebook"], spec.get("codebook_dtype", "float16"))}

    def grid_from_parts(self, parts: dict[str, torch.Tensor], header_spec: dict[str, Any]) -> dict[str, Any]:
        return {"codebook": parts["codebook"].double().tolist()}

    def grid_bits(self, spec: dict[str, Any]) -> int:
        return len(spec["codebook"]) * FLOAT_BITS[spec.get("codebook_dtype", "float16")]


CODECS: dict[str, Codec] = {"dense": DenseCodec(), "uniform": UniformCodec(), "codebook": CodebookCodec()}


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


def _header_spec(codec: Codec, spec: dict[str, Any]) -> dict[str, Any]:
    to_header = getattr(codec, "header_spec", None)
    return to_header(spec) if callable(to_header) else spec


def _pack_tensor(name: str, tensor: torch.Tensor, spec: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    codec = _codec_for(name, spec)
    try:
        if not spec.get("sparse"):
            return codec.pack(tensor, spec)
        mask = tensor != 0
        mask_data, kind = encode_mask(mask)
        if getattr(codec, "supports_mask", False):
            parts, meta = codec.pack(tensor, spec, mask=mask)  # type: ignore[call-arg]
        else:
            parts, meta = codec.pack(tensor[mask], spec)
        return {**parts, "mask": mask_data}, {**meta, "mask": kind}
    except (KeyError, ValueError, TypeError) as exc:
        raise ExportError(f"tensor {name!r}: cannot pack with spec {_header_spec(codec, spec)}: {exc!r}") from exc


def _unpack_tensor(name: str, parts: dict[str, torch.Tensor], meta: dict[str, Any], spec: dict[str, Any],
                   shape: list[int]) -> torch.Tensor:
    codec = _codec_for(name, spec)
    mask = None
    if spec.get("sparse"):
        mask = decode_mask(parts.pop("mask"), meta["mask"], math.prod(shape)).reshape(shape)
    if isinstance(codec, _GridCodec):
        return codec.unpack(parts, meta, shape=shape, mask=mask, spec=spec)
    if getattr(codec, "supports_mask", False):
        return codec.unpack(parts, meta, shape=shape, mask=mask)  # type: ignore[call-arg]
    values = codec.unpack(parts, meta)
    return _scatter(values.flatten(), shape, mask) if mask is not None else values.reshape(shape)


def pack_model(model: VAE) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The safetensors tensors and metadata that store ``model``."""
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {}
    for name, tensor in model.state_dict().items():
        spec = model.encodings.get(name, {})
        parts, meta = _pack_tensor(name, tensor.detach().float().cpu(), spec)
        for suffix, part in parts.items():
            tensors[name + (PART_SEPARATOR + suffix if suffix else "")] = part
        layout[name] = {"spec": _header_spec(_codec_for(name, spec), spec), "meta": meta, "shape": list(tensor.shape)}
    header = {"format": FORMAT_VERSION, "config": model.config, "tensors": layout}
    return tensors, {HEADER_KEY: json.dumps(header, sort_keys=True, separators=(",", ":"))}


def serialize_model(model: VAE) -> bytes:
    """The bytes of ``weights.safetensors`` for ``model``."""
    tensors, metadata = pack_model(model)
    return st_save(tensors, metadata=metadata)


def size_bytes(model: VAE) -> int:
    """Exactly ``len(serialize_model(model))``: the size objective and the exported file's length."""
    return len(serialize_model(model))


def theoretical_bits(model: VAE) -> int:
    """Information bits of the encodings: codes, scales, zero points, codebooks and sparse masks.

    Headers, shapes, alignment and the padding of the last byte of a packed
    tensor are left out.
    """
    total = 0
    for name, tensor in model.state_dict().items():
        spec = model.encodings.get(name, {})
        codec = _codec_for(name, spec)
        t = tensor.detach().float().cpu()
        if spec.get("sparse"):
            mask = t != 0
            if getattr(codec, "supports_mask", False):
                total += codec.theoretical_bits(t, spec, mask=mask) + mask_bits(mask)  # type: ignore[call-arg]
            else:
                total += codec.theoretical_bits(t[mask], spec) + mask_bits(mask)
        else:
            total += codec.theoretical_bits(t, spec)
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
        spec = entry["spec"]
        codec = _codec_for(name, spec)
        full_spec = getattr(codec, "full_spec", None)
        if callable(full_spec):
            spec = full_spec(parts, spec)
        state[name] = _unpack_tensor(name, dict(parts), entry["meta"], spec, entry["shape"])
        if spec:
            model.encodings[name] = spec
    model.load_state_dict(state)
    return model.eval()
