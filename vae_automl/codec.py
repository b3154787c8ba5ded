"""A VAE as a learned image codec: a quantized latent, entropy-coded under a learned factorized prior.

Training follows Ballé et al. (2017/2018): the latent ``y`` gets uniform
noise for the rate term (a differentiable stand-in for rounding), the
decoder sees ``round(y)`` through a straight-through estimator, and the
loss is ``bits/pixel + lmbda * 255**2 * MSE`` (CompressAI's convention).
The prior is, per latent dimension, a mixture of logistics; its
probability of an integer ``k`` is the mixture's mass on ``[k-0.5, k+0.5]``.

At test time ``round(y)`` is coded with :mod:`vae_automl.entropy` under
integer frequency tables that :meth:`CodecVAE.build_tables` derives from
the prior once, after training, and stores in the model as buffers: the
decoder needs nothing computed in floating point to parse a bitstream.

A per-image bitstream is one header byte (the format and the image shape,
``SHAPE_NATIVE``: the model's own input shape) and the range coder's bytes.
"""

from __future__ import annotations

import copy
import hashlib
import math
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vae_automl.entropy import Coder, FrequencyTables
from vae_automl.vae import VAE

BITSTREAM_VERSION = 1
SHAPE_NATIVE = 0
HEADER_BYTE = (BITSTREAM_VERSION << 4) | SHAPE_NATIVE
TAIL_SCALES = 20.0
"""A table spans each mixture component's mean +- this many scales (logistic tail mass e**-20)."""
MAX_TABLE_SYMBOLS = 4096
"""Wider tables are cut to this; values outside are escaped (see :mod:`vae_automl.entropy`)."""
LIKELIHOOD_FLOOR = 1e-9
INITIAL_GAIN = 16.0

_coders: dict[str, Coder] = {}


class LogisticMixturePrior(nn.Module):
    """Per latent dimension, a mixture of ``components`` logistics, learned."""

    def __init__(self, latent_dim: int, components: int, scale: float = 1.0) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(latent_dim, components))
        spread = torch.linspace(-scale, scale, components) if components > 1 else torch.zeros(1)
        self.means = nn.Parameter(spread.repeat(latent_dim, 1))
        self.log_scales = nn.Parameter(torch.full((latent_dim, components), math.log(scale)))

    def likelihood(self, v: torch.Tensor) -> torch.Tensor:
        """Probability of the unit interval around each entry of ``v`` (``B x D``), floored at 1e-9."""
        weights = torch.softmax(self.logits, dim=-1)
        scales = torch.exp(self.log_scales)
        centered = v.unsqueeze(-1) - self.means
        upper = (centered + 0.5) / scales
        lower = (centered - 0.5) / scales
        # Above the mean, 1 - sigmoid loses the tail to rounding; mirror it (CompressAI's sign trick).
        sign = -torch.sign(upper + lower)
        mass = torch.abs(torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower))
        return (mass * weights).sum(-1).clamp_min(LIKELIHOOD_FLOOR)

    @torch.no_grad()
    def pmfs(self) -> tuple[list[np.ndarray], list[int]]:
        """Per dimension: the probabilities of the integers ``low .. high`` and ``low``, computed in float64."""
        means = self.means.detach().double().cpu()
        scales = torch.exp(self.log_scales.detach().double().cpu())
        weights = torch.softmax(self.logits.detach().double().cpu(), dim=-1)
        pmfs, lows = [], []
        for d in range(means.shape[0]):
            low = math.floor(float((means[d] - TAIL_SCALES * scales[d]).min()))
            high = math.ceil(float((means[d] + TAIL_SCALES * scales[d]).max()))
            center = round(float((weights[d] * means[d]).sum()))
            half = (MAX_TABLE_SYMBOLS - 1) // 2
            low, high = max(low, center - half), min(high, center + half)
            k = torch.arange(low, high + 1, dtype=torch.float64).unsqueeze(-1)
            cdf = lambda t: torch.sigmoid((t - means[d]) / scales[d])  # noqa: E731, B023 - used in this iteration only
            mass = ((cdf(k + 0.5) - cdf(k - 0.5)) * weights[d]).sum(-1)
            pmfs.append(mass.numpy())
            lows.append(low)
        return pmfs, lows


class CodecVAE(VAE):
    """A codec model: ``analysis`` (x -> y), ``gain``, ``prior``, and a decoder made of every other module.

    Subclasses set ``self.analysis`` and implement :meth:`synthesis`. ``encode``
    returns ``(y, zeros)`` and ``decode`` takes the (rounded) latent, so the
    VAE-generic code (latency, exports, compressors) works unchanged.

    Config keys besides the VAE's: ``lmbda`` (the rate-distortion trade-off),
    ``prior_components``, and ``table_symbols`` (the length of the stored
    frequency tables; 0 until :meth:`build_tables` ran).
    """

    analysis: nn.Module

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__({**config, "likelihood": "bernoulli"})
        self.lmbda = float(config["lmbda"])
        # A per-dimension gain between the networks and the rounding (Cui et al. 2021's gain unit):
        # starting the latent at a few quantization steps per unit of the networks' scale saves the
        # thousands of steps a plain layer needs to grow its output from ~0.1 to the tens a high rate needs.
        self.gain = nn.Parameter(torch.full((self.latent_dim,), math.log(INITIAL_GAIN)))
        self.prior = LogisticMixturePrior(self.latent_dim, int(config.get("prior_components", 3)), INITIAL_GAIN)
        size = int(config.get("table_symbols", 0))
        self.register_buffer("table_freqs", torch.zeros(size, dtype=torch.int32))
        self.register_buffer("table_offsets", torch.zeros(self.latent_dim + 1, dtype=torch.int32))
        self.register_buffer("table_lows", torch.zeros(self.latent_dim, dtype=torch.int32))

    # --- the VAE interface ---
    def synthesis(self, z: torch.Tensor) -> torch.Tensor:
        """The decoded image ``B x C x H x W`` (unclamped) from the gain-normalized latent ``B x latent_dim``."""
        raise NotImplementedError

    def analyze(self, x: torch.Tensor) -> torch.Tensor:
        """The continuous latent ``y`` (``B x latent_dim``); the integers coded are ``round(y)``."""
        return self.analysis(x) * torch.exp(self.gain)

    def synthesize(self, y_hat: torch.Tensor) -> torch.Tensor:
        """The decoded image (unclamped) from the (rounded) latent."""
        return self.synthesis(y_hat * torch.exp(-self.gain))

    def mean_image(self, decoded: torch.Tensor) -> torch.Tensor:
        """The decoder's output is the image itself (trained on MSE without a squashing output, as CompressAI's models)."""
        return decoded.clamp(0.0, 1.0)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.analyze(x)
        return y, torch.zeros_like(y)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.synthesize(z)

    def forward(self, x: torch.Tensor, eps: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y = self.analyze(x)
        return self.synthesize(torch.round(y)), y, torch.zeros_like(y)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The image the decoder makes from the rounded latent (what a bitstream decodes to)."""
        return self.synthesize(torch.round(self.analyze(x))).clamp(0.0, 1.0)

    # --- training ---
    def rd_terms(self, x: torch.Tensor, noise: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Per image: estimated bits of the latent, and the mean squared error in [0, 1] units.

        With ``noise`` the rate sees ``y + U(-0.5, 0.5)`` and the decoder a
        straight-through ``round(y)``; without, both see ``round(y)``.
        """
        y = self.analyze(x)
        y_rate = y + (torch.rand_like(y) - 0.5) if noise else torch.round(y)
        bits = -torch.log2(self.prior.likelihood(y_rate)).sum(1)
        y_hat = y + (torch.round(y) - y).detach()
        x_hat = self.synthesize(y_hat)
        mse = F.mse_loss(x_hat, x, reduction="none").flatten(1).mean(1)
        return bits, mse

    def rd_loss(self, x: torch.Tensor, noise: bool = True) -> torch.Tensor:
        """Mean over the batch of ``bits/pixel + lmbda * 255**2 * MSE``."""
        bits, mse = self.rd_terms(x, noise)
        pixels = math.prod(self.input_shape)
        return (bits / pixels + self.lmbda * 255.0**2 * mse).mean()

    # --- coding ---
    def build_tables(self) -> None:
        """Derive the integer frequency tables from the prior and store them (changes ``config``)."""
        pmfs, lows = self.prior.pmfs()
        tables = FrequencyTables.from_pmfs(pmfs, lows)
        device = self.table_offsets.device
        self.table_freqs = torch.from_numpy(tables.freqs.astype(np.int32)).to(device)
        self.table_offsets = torch.from_numpy(tables.offsets.astype(np.int32)).to(device)
        self.table_lows = torch.from_numpy(tables.lows.astype(np.int32)).to(device)
        self.config["table_symbols"] = int(len(tables.freqs))

    def coder(self) -> Coder:
        """The range coder over the stored tables.

        Kept in a process-wide cache by the tables' digest, not on the module:
        constriction's models cannot be deep-copied or pickled, and compressors
        copy models.
        """
        if int(self.config.get("table_symbols", 0)) == 0:
            raise ValueError("the model has no frequency tables yet: call build_tables() after training")
        arrays = [t.cpu().numpy().astype(np.int64) for t in (self.table_freqs, self.table_offsets, self.table_lows)]
        key = hashlib.sha256(b"".join(a.tobytes() for a in arrays)).hexdigest()
        if key not in _coders:
            if len(_coders) >= 64:
                _coders.pop(next(iter(_coders)))
            _coders[key] = Coder(FrequencyTables(*arrays))
        return _coders[key]

    @torch.no_grad()
    def latents(self, x: torch.Tensor, chunk: int = 1024) -> np.ndarray:
        """The integer latents of images ``x`` (``N x latent_dim`` int64)."""
        was_training = self.training
        self.eval()
        out = [torch.round(self.analyze(x[i : i + chunk])).cpu() for i in range(0, len(x), chunk)]
        self.train(was_training)
        return torch.cat(out).numpy().astype(np.int64)

    @torch.no_grad()
    def images_from_latents(self, values: np.ndarray, chunk: int = 1024) -> torch.Tensor:
        """Decoded images in [0, 1] from integer latents (``N x latent_dim``)."""
        was_training = self.training
        self.eval()
        device = self.table_offsets.device
        z = torch.from_numpy(np.asarray(values, np.float32))
        out = [self.synthesize(z[i : i + chunk].to(device)).clamp(0.0, 1.0).cpu() for i in range(0, len(z), chunk)]
        self.train(was_training)
        return torch.cat(out)

    def encode_latents(self, values: np.ndarray) -> list[bytes]:
        """Each image's standalone bitstream: the header byte, then its range-coded latent (``values``: N x latent_dim)."""
        coder = self.coder()
        return [bytes([HEADER_BYTE]) + coder.encode(v) for v in values]

    def decode_latents(self, bitstreams: list[bytes]) -> np.ndarray:
        """The integer latents (``N x latent_dim``) of bitstreams of :meth:`encode_latents`."""
        coder = self.coder()
        out = np.zeros((len(bitstreams), self.latent_dim), np.int64)
        for i, bitstream in enumerate(bitstreams):
            if not bitstream:
                raise ValueError(f"bitstream {i} is empty")
            if bitstream[0] != HEADER_BYTE:
                raise ValueError(
                    f"bitstream {i}: header byte {bitstream[0]:#04x} is not {HEADER_BYTE:#04x} "
                    f"(format {BITSTREAM_VERSION}, the model's input shape)"
                )
            out[i] = coder.decode(bitstream[1:])
        return out

    def decoder_part(self) -> CodecVAE:
        """A copy holding only what decoding needs (synthesis and the tables): what ``decoder_bytes`` packs."""
        part = copy.deepcopy(self)
        part.analysis = nn.Identity()
        part.prior = nn.Identity()  # type: ignore[assignment]
        part.encodings = {k: v for k, v in self.encodings.items() if not k.startswith(("analysis.", "prior."))}
        return part
