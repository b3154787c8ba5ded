"""Entropy coding of integer symbols with ``constriction``'s ANS coder, bit-exact both ways.

Two models, both integer-exact (the stored byte frequencies become integer
tables summing to ``2**16`` with the codec task's
:func:`vae_automl.entropy.quantize_pmf`, so encoder and decoder build the
same model in any process):

* :func:`encode_with_table` / :func:`decode_with_table`: an empirical
  distribution over ``0..alphabet-1``, its frequencies stored as one byte
  per symbol ahead of the stream; :func:`encode_columns` codes each column
  of a matrix under its own table (``weight_vae``'s latent units);
* :func:`encode_signed` / :func:`decode_signed`: an exp-Golomb code of
  integers of any sign whose length classes are ANS-coded (deltas of
  float16 codebooks and scales).

The coded stream is constriction's 32-bit words, stored as little-endian
bytes.
"""

from __future__ import annotations

import numpy as np

from vae_automl.entropy import PRECISION_BITS, quantize_pmf


def _words_to_bytes(words: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(words.astype("<u4")).view(np.uint8)


def _bytes_to_words(data: np.ndarray) -> np.ndarray:
    raw = np.ascontiguousarray(np.asarray(data, dtype=np.uint8))
    if raw.size % 4:
        raise ValueError(f"an ANS stream is whole 32-bit words, but got {raw.size} bytes")
    return raw.view("<u4").astype(np.uint32)


def _categorical(freq: np.ndarray):  # noqa: ANN202 - constriction's model type has no stub
    """The coder's model of stored byte frequencies: integer frequencies summing to ``2**PRECISION_BITS``
    (:func:`vae_automl.entropy.quantize_pmf`), so the coder sees exact dyadic probabilities in any process."""
    # deferred: constriction loads only when something is entropy coded
    import constriction

    table = quantize_pmf(np.asarray(freq, np.float64))
    return constriction.stream.model.Categorical(table.astype(np.float64) / float(1 << PRECISION_BITS), perfect=False)


# ----------------------------------------------------------------------------------------------
# frequency tables stored with the stream

SIGNED_CLASSES = 18
"""Bit lengths 0..17 of zigzag-mapped values below 2**16 in magnitude (:func:`encode_signed`)."""
FREQ_MAX = 255
"""Frequencies are stored as one byte each, scaled so the most frequent symbol has 255."""


def quantized_frequencies(counts: np.ndarray) -> np.ndarray:
    """``counts`` scaled to one byte each (present symbols keep at least 1, absent ones 0)."""
    counts = np.asarray(counts, np.int64)
    if counts.size == 0 or counts.max() == 0:
        return np.zeros(counts.size, np.uint8)
    freq = np.round(counts * (FREQ_MAX / counts.max())).astype(np.int64)
    freq[(counts > 0) & (freq == 0)] = 1
    return freq.astype(np.uint8)


def encode_with_table(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """``[one frequency byte per symbol of the alphabet] + [ANS stream]`` for ints in ``0..alphabet-1``.

    The stream is coded under the stored (byte-quantized) frequencies, so the
    decoder's model is the encoder's exactly. A single repeated symbol (or
    none) needs no stream.
    """
    # deferred: constriction loads only when something is entropy coded
    import constriction

    values = np.asarray(symbols, dtype=np.int64).ravel()
    if values.size and (values.min() < 0 or values.max() >= alphabet):
        raise ValueError(f"symbols must be in 0..{alphabet - 1}, got [{values.min()}, {values.max()}]")
    freq = quantized_frequencies(np.bincount(values, minlength=alphabet))
    if np.count_nonzero(freq) <= 1:
        return freq
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(values.astype(np.int32), _categorical(freq))
    return np.concatenate([freq, _words_to_bytes(coder.get_compressed())])


def decode_with_table(data: np.ndarray, alphabet: int, count: int) -> np.ndarray:
    """The inverse of :func:`encode_with_table`: ``count`` int64 symbols."""
    # deferred: constriction loads only when something is entropy coded
    import constriction

    raw = np.asarray(data, np.uint8).ravel()
    if raw.size < alphabet:
        raise ValueError(f"an entropy-coded part starts with {alphabet} frequency bytes, but has {raw.size} bytes")
    freq = raw[:alphabet]
    present = np.flatnonzero(freq)
    if count == 0:
        return np.zeros(0, np.int64)
    if len(present) == 1:
        return np.full(count, int(present[0]), np.int64)
    if len(present) == 0:
        raise ValueError(f"an entropy-coded part of {count} symbols has an all-zero frequency table")
    coder = constriction.stream.stack.AnsCoder(_bytes_to_words(raw[alphabet:]))
    return coder.decode(_categorical(freq), count).astype(np.int64)


def encode_columns(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    """Each column of ``symbols`` (``rows x columns`` ints in ``0..alphabet-1``) under its own frequencies.

    Returns:
        ``[columns x alphabet frequency bytes] + [one ANS stream]``.
    """
    # deferred: constriction loads only when something is entropy coded
    import constriction

    values = np.asarray(symbols, np.int64)
    rows, columns = values.shape
    if values.size and (values.min() < 0 or values.max() >= alphabet):
        raise ValueError(f"symbols must be in 0..{alphabet - 1}, got [{values.min()}, {values.max()}]")
    freqs = [quantized_frequencies(np.bincount(values[:, j], minlength=alphabet)) for j in range(columns)]
    coder = constriction.stream.stack.AnsCoder()
    for j in reversed(range(columns)):  # a stack: the decoder pops column 0 first
        if np.count_nonzero(freqs[j]) > 1:
            coder.encode_reverse(values[:, j].astype(np.int32), _categorical(freqs[j]))
    stream = _words_to_bytes(coder.get_compressed()) if rows else np.zeros(0, np.uint8)
    return np.concatenate([*freqs, stream]) if columns else stream


def decode_columns(data: np.ndarray, alphabet: int, rows: int, columns: int) -> np.ndarray:
    """The inverse of :func:`encode_columns`: an int64 ``rows x columns`` matrix."""
    # deferred: constriction loads only when something is entropy coded
    import constriction

    raw = np.asarray(data, np.uint8).ravel()
    out = np.zeros((rows, columns), np.int64)
    if rows == 0 or columns == 0:
        return out
    head = columns * alphabet
    coder = constriction.stream.stack.AnsCoder(_bytes_to_words(raw[head:]))
    for j in range(columns):
        freq = raw[j * alphabet : (j + 1) * alphabet]
        present = np.flatnonzero(freq)
        out[:, j] = coder.decode(_categorical(freq), rows) if len(present) > 1 else present[0]
    return out


def encode_signed(values: np.ndarray) -> np.ndarray:
    """Integers of any sign (|v| < 2**16) as an exp-Golomb code whose length classes are ANS-coded.

    Each value is zigzag-mapped (``0, -1, 1, -2, ... -> 0, 1, 2, 3, ...``);
    its bit length (0..17) is coded under the stored frequencies of the
    lengths, the bits below the leading one under a uniform model. Small
    values (the deltas of a sorted codebook) cost few bits; no table grows
    with their range, and every model is integer-exact.

    Returns:
        ``[18 frequency bytes] + [ANS stream]``.
    """
    # deferred: constriction loads only when something is entropy coded
    import constriction

    v = np.asarray(values, np.int64).ravel()
    if v.size and int(np.abs(v).max()) >= 1 << 16:
        raise ValueError(f"values must satisfy |v| < 2**16, got {int(np.abs(v).max())}")
    z = np.where(v >= 0, 2 * v, -2 * v - 1)
    lengths = np.array([int(x).bit_length() for x in z], np.int64)
    freq = quantized_frequencies(np.bincount(lengths, minlength=SIGNED_CLASSES))
    if v.size == 0:
        return freq
    lengths_model = _categorical(freq)
    coder = constriction.stream.stack.AnsCoder()
    for zi, length in zip(z[::-1], lengths[::-1]):  # a stack: the decoder pops the first value first
        if length >= 2:
            coder.encode_reverse(
                np.array([zi - (1 << (length - 1))], np.int32), constriction.stream.model.Uniform(1 << (length - 1))
            )
        coder.encode_reverse(np.array([length], np.int32), lengths_model)
    return np.concatenate([freq, _words_to_bytes(coder.get_compressed())])


def decode_signed(data: np.ndarray, count: int) -> np.ndarray:
    """The inverse of :func:`encode_signed`: ``count`` int64 values."""
    # deferred: constriction loads only when something is entropy coded
    import constriction

    raw = np.asarray(data, np.uint8).ravel()
    if count == 0:
        return np.zeros(0, np.int64)
    lengths_model = _categorical(raw[:SIGNED_CLASSES])
    coder = constriction.stream.stack.AnsCoder(_bytes_to_words(raw[SIGNED_CLASSES:]))
    z = np.zeros(count, np.int64)
    for i in range(count):
        length = int(coder.decode(lengths_model, 1)[0])
        z[i] = (
            0
            if length == 0
            else (1 << (length - 1))
            + (int(coder.decode(constriction.stream.model.Uniform(1 << (length - 1)), 1)[0]) if length >= 2 else 0)
        )
    return np.where(z % 2 == 0, z // 2, -(z + 1) // 2)
