"""The built-in codecs: ``dense`` floats, ``uniform`` n-bit codes, ``codebook`` indices.

``dense``
    float32 (default), float16 or bfloat16 values (``"dtype"``).
``uniform``
    n-bit integer codes (``"bits"`` 1..8) bit-packed into bytes, with a
    scale per tensor or per slice along ``"axis"`` and, when not
    ``"symmetric"``, an integer zero point. See :class:`UniformCodec`.
``codebook``
    n-bit indices into a small table of float values (k-means weight
    sharing, power-of-two levels). See :class:`CodebookCodec`.

Grids (scales, zero points, codebooks) live in the encoding spec as lists
of floats while in memory; on disk they are tensors beside the codes
(:meth:`header_spec` / :meth:`full_spec` move them).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vae_automl.errors import ExportError
from vae_automl.storage.bits import pack_bits, unpack_bits
from vae_automl.storage.codec import Codec, Parts

FLOAT_DTYPES = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float8_e4m3": torch.float8_e4m3fn,
}
FLOAT_BITS = {"float32": 32, "float16": 16, "bfloat16": 16, "float8_e4m3": 8}


def scatter(values: torch.Tensor, shape: list[int] | tuple[int, ...], mask: torch.Tensor | None) -> torch.Tensor:
    """``values`` (the masked ones, in row-major order, when ``mask`` is given) as a tensor of ``shape``."""
    if mask is None:
        return values.reshape(shape)
    out = torch.zeros(math.prod(shape), dtype=values.dtype)
    out[mask.flatten()] = values
    return out.reshape(shape)


class DenseCodec:
    """Plain float tensors: float32 (the default), float16 or bfloat16."""

    name = "dense"
    supports_mask = True

    def header_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        return spec

    def full_spec(self, parts: Parts, header_spec: dict[str, Any]) -> dict[str, Any]:
        return header_spec

    def pack(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None) -> tuple[Parts, dict[str, Any]]:
        dtype = FLOAT_DTYPES[spec.get("dtype", "float32")]
        values = tensor[mask] if mask is not None else tensor
        return {"": values.detach().to("cpu", dtype).contiguous()}, {}

    def unpack(
        self, parts: Parts, meta: dict[str, Any], shape: list[int], spec: dict[str, Any], mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        return scatter(parts[""].float().flatten(), shape, mask)

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

    def full_spec(self, parts: Parts, header_spec: dict[str, Any]) -> dict[str, Any]:
        """The in-memory spec rebuilt from the header spec and the stored grid tensors."""
        return {**header_spec, **self.grid_from_parts(parts, header_spec)}

    def pack(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None) -> tuple[Parts, dict[str, Any]]:
        codes, bits = self.codes(tensor, spec)
        decoded = self.decode(codes, spec)
        exact = decoded == tensor if mask is None else (decoded == tensor) | ~mask
        if not bool(exact.all()):
            worst = float((decoded - tensor).abs().max())
            raise ExportError(
                f"{self.name} codec: the weights are not on the grid of their encoding spec "
                f"(largest difference {worst:.3g}); a compressor changed them after quantizing"
            )
        selected = codes[mask] if mask is not None else codes.flatten()
        return {"": pack_bits(selected, bits), **self.grid_parts(spec)}, {}

    def unpack(
        self, parts: Parts, meta: dict[str, Any], shape: list[int], spec: dict[str, Any], mask: torch.Tensor | None = None
    ) -> torch.Tensor:
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
    ``codebook_dtype`` (``float16``, the default, ``float32``, or
    ``float8_e4m3``: 4 exponent and 3 mantissa bits, a byte per entry for
    tiny models whose codebooks are a tenth of the file). Each value is
    stored as the index of its codebook entry.
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


def builtin_codecs() -> dict[str, Codec]:
    """A fresh instance of each built-in codec, by name."""
    return {codec.name: codec for codec in (DenseCodec(), UniformCodec(), CodebookCodec())}
