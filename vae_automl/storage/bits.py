"""Bit packing of integer codes, and the encodings of sparse masks."""

from __future__ import annotations

import numpy as np
import torch


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
