"""Entropy coding of integer symbols with ``constriction``'s ANS coder, bit-exact both ways.

Two models:

* :func:`encode_categorical` / :func:`decode_categorical`: an empirical
  distribution over ``0..alphabet-1``, stored as integer counts (the
  decoder rebuilds exactly the same float64 probabilities from the same
  integers, so the coder's fixed-point tables agree bit for bit);
* :func:`encode_gaussian` / :func:`decode_gaussian`: a zero-mean Gaussian
  quantized to integer bins on ``[-radius, radius]``, one standard
  deviation per symbol (learned latents: ``weight_vae``).

The coded stream is constriction's 32-bit words, stored as little-endian
bytes.
"""

from __future__ import annotations

import numpy as np

COUNT_DTYPE = np.uint32


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


def encode_categorical(symbols: np.ndarray, alphabet: int) -> tuple[np.ndarray, np.ndarray]:
    """ANS-code ``symbols`` (ints in ``0..alphabet-1``) under their own frequencies.

    Returns:
        The coded bytes (uint8) and the counts (uint32, one per symbol of the
        alphabet) that :func:`decode_categorical` needs. An empty input gives
        no bytes.
    """
    import constriction

    values = np.asarray(symbols, dtype=np.int64).ravel()
    if values.size and (values.min() < 0 or values.max() >= alphabet):
        raise ValueError(f"symbols must be in 0..{alphabet - 1}, got [{values.min()}, {values.max()}]")
    counts = np.bincount(values, minlength=alphabet).astype(COUNT_DTYPE)
    if values.size == 0 or np.count_nonzero(counts) <= 1:
        # A single symbol (or none) carries no information: its count alone tells the decoder.
        return np.zeros(0, np.uint8), counts
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(values.astype(np.int32), _categorical(counts))
    return _words_to_bytes(coder.get_compressed()), counts


def decode_categorical(data: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The inverse of :func:`encode_categorical`: int64 symbols, as many as the counts add up to."""
    import constriction

    counts = np.asarray(counts).astype(np.int64)
    total = int(counts.sum())
    nonzero = np.flatnonzero(counts)
    if total == 0:
        return np.zeros(0, np.int64)
    if len(nonzero) == 1:
        return np.full(total, int(nonzero[0]), np.int64)
    coder = constriction.stream.stack.AnsCoder(_bytes_to_words(data))
    return coder.decode(_categorical(counts), total).astype(np.int64)


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
