"""Entropy coding of a packed tensor's parts: codes, sparse masks and float16 grids (Deep Compression's third stage).

A codec packs a tensor into parts (bit-packed codes, a mask, a codebook or
scales). With entropy coding on, each part is replaced by an ANS-coded
version when that is smaller, and ``meta["entropy"]`` records, per part,
how it was coded; :func:`decode_parts` gives back the very same parts, so
the codec's own unpacking (and the bit-exactness it guarantees) is
untouched:

``codes``
    the ``""`` part of a grid codec (``bits`` per code): the codes under
    their own frequencies (:func:`vae_automl.storage.ans.encode_with_table`).
``mask``
    the sparse mask (bitmask or index list): the keep/drop bit of every
    position under its own two frequencies.
``mask_rows`` / ``mask_columns``
    the same bits, the tensor seen as a matrix (its first dim by the rest),
    each row (an output's weights) or each column (an input's weights)
    under its own two frequencies
    (:func:`vae_automl.storage.ans.encode_columns`): 2 bytes a line, paid
    back where kept weights concentrate in some lines (a pruned decoder's
    outputs on pixels that are always 0, an encoder's inputs there). Tried
    only where the spec also has ``"mask_lines": true`` (``entropy_code``'s
    ``mask_lines``, so that files written before re-serialize to the same
    bytes); of the three, the smallest is stored.
``float16``
    a float16 grid (codebook, scales): each entry's bit pattern as an
    ordered integer, minus the previous entry's, in an exp-Golomb code
    whose length classes are ANS-coded (:func:`vae_automl.storage.ans.encode_signed`;
    sorted codebooks have small deltas).

A part whose coded form is not smaller stays as it was (and is not
listed in ``meta["entropy"]``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from vae_automl.storage import ans
from vae_automl.storage.bits import decode_mask, encode_mask, pack_bits, unpack_bits

CODES, MASK, FLOAT16 = "codes", "mask", "float16"
MASK_ROWS, MASK_COLUMNS = "mask_rows", "mask_columns"


def _mask_candidates(mask: torch.Tensor, shape: list[int], lines: bool) -> list[tuple[np.ndarray, dict[str, Any]]]:
    """The mask's bits coded per tensor, and if ``lines`` (and the tensor has >= 2 dims) per row and per column."""
    bits = mask.numpy().astype(np.int64)
    out = [(ans.encode_with_table(bits, 2), {"kind": MASK})]
    if lines and len(shape) >= 2 and shape[0] > 0:
        matrix = bits.reshape(shape[0], -1)
        out.append((ans.encode_columns(matrix.T, 2), {"kind": MASK_ROWS}))
        out.append((ans.encode_columns(matrix, 2), {"kind": MASK_COLUMNS}))
    return out


def _ordered(bits16: np.ndarray) -> np.ndarray:
    """float16 bit patterns -> integers in the order of the values (sign-magnitude to two's complement)."""
    b = bits16.astype(np.int64)
    return np.where(b & 0x8000, -(b & 0x7FFF) - 1, b)


def _unordered(ordered: np.ndarray) -> np.ndarray:
    return np.where(ordered < 0, (-(ordered + 1)) | 0x8000, ordered).astype(np.uint16)


def _encode_float16(values: torch.Tensor) -> tuple[np.ndarray, dict[str, Any]]:
    ordered = _ordered(values.contiguous().view(torch.int16).numpy().view(np.uint16).ravel())
    return ans.encode_signed(np.diff(ordered, prepend=0)), {"shape": list(values.shape)}


def _decode_float16(data: np.ndarray, meta: dict[str, Any]) -> torch.Tensor:
    shape = meta["shape"]
    deltas = ans.decode_signed(data, math.prod(shape))
    return torch.from_numpy(_unordered(np.cumsum(deltas)).view(np.int16).copy()).view(torch.float16).reshape(shape)


def _as_part(data: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8).copy())


def code_parts(
    parts: dict[str, torch.Tensor], spec: dict[str, Any], meta: dict[str, Any], shape: list[int]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Entropy-code what pays in ``parts``; returns the new parts and ``meta`` with an ``entropy`` entry."""
    coded: dict[str, torch.Tensor] = {}
    how: dict[str, Any] = {}
    numel = math.prod(shape)
    mask = decode_mask(parts["mask"], meta["mask"], numel) if "mask" in parts else None
    for key, part in parts.items():
        candidate: tuple[np.ndarray, Any] | None = None
        if key == "" and "bits" in spec and part.dtype == torch.uint8:
            count = int(mask.sum()) if mask is not None else numel
            bits = int(spec["bits"])
            codes = unpack_bits(part, bits, count).numpy()
            candidate = ans.encode_with_table(codes, 1 << bits), {"kind": CODES, "n": count}
        elif key == "mask" and mask is not None:
            # ties go to the per-tensor code (the earliest), which older readers know
            candidate = min(_mask_candidates(mask, shape, bool(spec.get("mask_lines"))), key=lambda c: c[0].size)
        elif part.dtype == torch.float16 and part.numel() > 1:
            data, info = _encode_float16(part)
            candidate = data, {"kind": FLOAT16, **info}
        if candidate is not None and candidate[0].size < part.numel() * part.element_size():
            coded[key] = _as_part(candidate[0])
            how[key] = candidate[1]
        else:
            coded[key] = part
    return coded, ({**meta, "entropy": how} if how else meta)


def decode_parts(
    parts: dict[str, torch.Tensor], spec: dict[str, Any], meta: dict[str, Any], shape: list[int]
) -> dict[str, torch.Tensor]:
    """The inverse of :func:`code_parts`: the parts exactly as the codec packed them."""
    how = meta.get("entropy", {})
    out = dict(parts)
    numel = math.prod(shape)
    for key, info in how.items():
        data = parts[key].numpy()
        kind = info["kind"]
        if kind == MASK:
            mask = torch.from_numpy(ans.decode_with_table(data, 2, numel).astype(bool))
            out[key], _ = encode_mask(mask)
        elif kind in (MASK_ROWS, MASK_COLUMNS):
            rows = shape[0]
            columns = numel // rows if rows else 0
            matrix = (
                ans.decode_columns(data, 2, columns, rows).T if kind == MASK_ROWS else ans.decode_columns(data, 2, rows, columns)
            )
            out[key], _ = encode_mask(torch.from_numpy(np.ascontiguousarray(matrix).astype(bool).ravel()))
        elif kind == CODES:
            bits = int(spec["bits"])
            out[key] = pack_bits(torch.from_numpy(ans.decode_with_table(data, 1 << bits, int(info["n"]))), bits)
        elif kind == FLOAT16:
            out[key] = _decode_float16(data, info)
        else:
            raise ValueError(f"unknown entropy coding {kind!r} of part {key!r}")
    return out
