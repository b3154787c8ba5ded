"""Entropy coding of integer symbols under integer frequency tables, with the ``constriction`` range coder.

The tables are integers (frequencies summing to ``2**PRECISION_BITS``), so
encoder and decoder build identical models in any process on any machine:
the coder sees ``freq / 2**PRECISION_BITS``, a float64 that is exact, and
``constriction`` (Rust) turns it into its fixed-point model deterministically.
No float computed by torch or numpy ever reaches the coder.

Each symbol is coded under one table of a :class:`FrequencyTables`; a
table covers the values ``lo .. lo + len - 2`` plus an escape symbol
(the last) for values outside, which are then sent as a 16-bit uniform
symbol. A bitstream is the coder's 32-bit words, little-endian, with
trailing zero bytes cut (the decoder pads them back).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PRECISION_BITS = 16
ESCAPE_BITS = 16
ESCAPE_OFFSET = 1 << (ESCAPE_BITS - 1)


def _constriction():  # noqa: ANN202 - deferred import with an install hint
    try:
        # deferred: constriction loads only when something is entropy coded
        import constriction
    except ImportError as exc:  # pragma: no cover - constriction is a dependency
        raise ImportError("entropy coding needs the constriction package: pip install constriction") from exc
    return constriction


def quantize_pmf(pmf: np.ndarray, precision_bits: int = PRECISION_BITS) -> np.ndarray:
    """Integer frequencies, each at least 1, summing exactly to ``2**precision_bits``, close to ``pmf``.

    Args:
        pmf: non-negative probabilities (any positive sum) of ``n`` symbols, ``n <= 2**precision_bits``.
        precision_bits: bits of the fixed-point total.

    Returns:
        An int64 array of length ``n``.
    """
    pmf = np.asarray(pmf, dtype=np.float64)
    total = 1 << precision_bits
    n = len(pmf)
    if n == 0 or n > total:
        raise ValueError(f"a table needs 1..{total} symbols, got {n}")
    if not np.all(np.isfinite(pmf)) or np.any(pmf < 0) or pmf.sum() <= 0:
        raise ValueError("probabilities must be finite, non-negative and not all zero")
    freq = np.maximum(1, np.floor(pmf / pmf.sum() * (total - n))).astype(np.int64)
    # Hand the remainder to the most probable symbols, one each, largest first (deterministic order).
    remainder = total - int(freq.sum())
    order = np.argsort(-pmf, kind="stable")
    while remainder > 0:
        take = min(remainder, n)
        freq[order[:take]] += 1
        remainder -= take
    return freq


@dataclass(frozen=True)
class FrequencyTables:
    """One integer frequency table per coded position.

    Attributes:
        freqs: all tables' frequencies, concatenated (int64).
        offsets: start of table ``i`` in ``freqs`` (length ``n_tables + 1``).
        lows: the value coded by symbol 0 of table ``i``.
    """

    freqs: np.ndarray
    offsets: np.ndarray
    lows: np.ndarray

    def __post_init__(self) -> None:
        if len(self.offsets) != len(self.lows) + 1:
            raise ValueError("offsets must have one entry more than lows")
        for i in range(len(self.lows)):
            table = self.freqs[self.offsets[i] : self.offsets[i + 1]]
            if len(table) < 2 or int(table.sum()) != 1 << PRECISION_BITS or int(table.min()) < 1:
                raise ValueError(
                    f"table {i} is not a valid frequency table (>= 2 symbols, each >= 1, summing to 2**{PRECISION_BITS})"
                )

    @classmethod
    def from_pmfs(cls, pmfs: list[np.ndarray], lows: list[int]) -> FrequencyTables:
        """Tables from probabilities over ``lows[i] ..`` (an escape symbol is appended to each)."""
        freqs = [quantize_pmf(np.append(np.asarray(p, np.float64), 1e-9)) for p in pmfs]
        offsets = np.cumsum([0] + [len(f) for f in freqs])
        return cls(np.concatenate(freqs), offsets.astype(np.int64), np.asarray(lows, np.int64))

    @property
    def n_tables(self) -> int:
        return len(self.lows)

    def models(self) -> list[object]:
        """One constriction categorical model per table (build once, reuse for many images)."""
        model = _constriction().stream.model
        scale = float(1 << PRECISION_BITS)
        return [
            model.Categorical(self.freqs[self.offsets[i] : self.offsets[i + 1]].astype(np.float64) / scale, perfect=False)
            for i in range(self.n_tables)
        ]

    def ideal_bits(self, values: np.ndarray) -> float:
        """Information content of ``values`` (one per table) under the tables, in bits, escapes included."""
        bits = 0.0
        for i, v in enumerate(np.asarray(values, np.int64)):
            table = self.freqs[self.offsets[i] : self.offsets[i + 1]]
            s = int(v - self.lows[i])
            if 0 <= s < len(table) - 1:
                bits += PRECISION_BITS - np.log2(table[s])
            else:
                bits += PRECISION_BITS - np.log2(table[-1]) + ESCAPE_BITS
        return bits


class Coder:
    """Encodes one integer per table into a byte string, and back (a ``constriction`` range coder)."""

    def __init__(self, tables: FrequencyTables) -> None:
        self.tables = tables
        self._models = tables.models()
        self._uniform = _constriction().stream.model.Uniform(1 << ESCAPE_BITS)
        self._sizes = np.diff(tables.offsets)

    def encode(self, values: np.ndarray) -> bytes:
        """The bitstream of ``values`` (integers, one per table, in table order)."""
        values = np.asarray(values, np.int64)
        if values.shape != (self.tables.n_tables,):
            raise ValueError(f"expected {self.tables.n_tables} values, got shape {values.shape}")
        stream = _constriction().stream
        encoder = stream.queue.RangeEncoder()
        escape_values = []
        for i, v in enumerate(values):
            s = int(v - self.tables.lows[i])
            if not 0 <= s < self._sizes[i] - 1:
                if not -ESCAPE_OFFSET <= v < ESCAPE_OFFSET:
                    raise ValueError(
                        f"value {int(v)} at position {i} is outside the codable range [{-ESCAPE_OFFSET}, {ESCAPE_OFFSET - 1}]"
                    )
                escape_values.append(int(v) + ESCAPE_OFFSET)
                s = int(self._sizes[i] - 1)
            encoder.encode(s, self._models[i])
        if escape_values:
            encoder.encode(np.asarray(escape_values, np.int32), self._uniform)
        words = encoder.get_compressed().astype("<u4").tobytes()
        return words.rstrip(b"\0")

    def decode(self, data: bytes) -> np.ndarray:
        """The values :meth:`encode` was given; ``data`` must be one whole bitstream."""
        padded = data + b"\0" * (-len(data) % 4)
        words = np.frombuffer(padded, dtype="<u4").astype(np.uint32)
        decoder = _constriction().stream.queue.RangeDecoder(words)
        symbols = np.asarray([decoder.decode(m) for m in self._models], np.int64)
        escaped = np.flatnonzero(symbols == self._sizes - 1)
        values = symbols + self.tables.lows
        if len(escaped):
            extra = np.asarray(decoder.decode(self._uniform, len(escaped)), np.int64) - ESCAPE_OFFSET
            values[escaped] = extra
        return values
