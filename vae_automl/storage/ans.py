"""Entropy coding of integer symbols with ``constriction``'s ANS coder, bit-exact both ways.

Three models:

* :func:`encode_with_table` / :func:`decode_with_table`: an empirical
  distribution over ``0..alphabet-1``, its frequencies stored as one byte
  per symbol ahead of the stream (the decoder rebuilds exactly the same
  float64 probabilities from the same bytes, so the coder's fixed-point
  tables agree bit for bit);
* :func:`encode_gaussian` / :func:`decode_gaussian`: a zero-mean Gaussian
  quantized to integer bins on ``[-radius, radius]``, one standard
  deviation per symbol (learned latents: ``weight_vae``);
* :func:`encode_laplace` / :func:`decode_laplace`: one quantized Laplace
  for every symbol (deltas of float16 tables).

The coded stream is constriction's 32-bit words, stored as little-endian
bytes.
"""

from __future__ import annotations

import numpy as np


def _words_to_bytes(words: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(words.astype("<u4")).view(np.uint8)


def _bytes_to_words(data: np.ndarray) -> np.ndarray:
    raw = np.ascontiguousarray(np.asarray(data, dtype=np.uint8))
    if raw.size % 4:
        raise ValueError(f"an ANS stream is whole 32-bit words, but got {raw.size} bytes")
    return raw.view("<u4").astype(np.uint32)


def _categorical(counts: np.ndarray):  # noqa: ANN202 - constriction's model type has no stub
    import constriction

    probabilities = counts.astype(np.float64)
    return constriction.stream.model.Categorical(probabilities / probabilities.sum(), perfect=False)


def encode_gaussian(symbols: np.ndarray, stds: np.ndarray, radius: int) -> np.ndarray:
    """ANS-code integer ``symbols`` in ``[-radius, radius]`` under zero-mean quantized Gaussians of ``stds``."""
    import constriction

    values = np.asarray(symbols, dtype=np.int32).ravel()
    if values.size == 0:
        return np.zeros(0, np.uint8)
    if int(np.abs(values).max()) > radius:
        raise ValueError(f"symbols must be in [-{radius}, {radius}], got |symbol| up to {int(np.abs(values).max())}")
    model = constriction.stream.model.QuantizedGaussian(-radius, radius)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(values, model, np.zeros(values.size), np.asarray(stds, np.float64).ravel())
    return _words_to_bytes(coder.get_compressed())


def decode_gaussian(data: np.ndarray, stds: np.ndarray, radius: int) -> np.ndarray:
    """The inverse of :func:`encode_gaussian`: int64 symbols, one per entry of ``stds``."""
    import constriction

    stds = np.asarray(stds, np.float64).ravel()
    if stds.size == 0:
        return np.zeros(0, np.int64)
    model = constriction.stream.model.QuantizedGaussian(-radius, radius)
    coder = constriction.stream.stack.AnsCoder(_bytes_to_words(data))
    return coder.decode(model, np.zeros(stds.size), stds).astype(np.int64)


# ----------------------------------------------------------------------------------------------
# frequency tables stored with the stream

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


def encode_laplace(symbols: np.ndarray, scale: float, radius: int) -> np.ndarray:
    """ANS-code integer ``symbols`` in ``[-radius, radius]`` under one zero-mean quantized Laplace of ``scale``."""
    import constriction

    values = np.asarray(symbols, dtype=np.int32).ravel()
    if values.size == 0:
        return np.zeros(0, np.uint8)
    model = constriction.stream.model.QuantizedLaplace(-radius, radius)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(values, model, np.zeros(values.size), np.full(values.size, float(scale)))
    return _words_to_bytes(coder.get_compressed())


def decode_laplace(data: np.ndarray, scale: float, radius: int, count: int) -> np.ndarray:
    """The inverse of :func:`encode_laplace`: ``count`` int64 symbols."""
    import constriction

    if count == 0:
        return np.zeros(0, np.int64)
    model = constriction.stream.model.QuantizedLaplace(-radius, radius)
    coder = constriction.stream.stack.AnsCoder(_bytes_to_words(data))
    return coder.decode(model, np.zeros(count), np.full(count, float(scale))).astype(np.int64)
