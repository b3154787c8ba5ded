"""The code of ``weight_vae`` (:mod:`vae_automl.builtin.weight_vae` declares it): the chunk VAE, its codec, its size."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from vae_automl.builtin.objectives_impl import serialized
from vae_automl.builtin.weight_vae import (
    SizeBytesAmortized,
    WeightVAE,
)
from vae_automl.builtin.weight_vae_codec import FP16, WeightVAECodec, decode_chunks, decode_weight, decoder_bytes, make_decoder

if TYPE_CHECKING:
    from vae_automl.components import CompressionContext, MeasureContext


ENCODED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
CHUNK_NOISE_VAR = 0.01


"""Variance of the Gaussian likelihood the chunk VAE fits unit-scaled weights with (1% of their variance)."""


MIN_SIGMA = 0.11


"""Smallest standard deviation (in grid steps) of a latent unit's code model; below it every code is 0 anyway."""


FIT_BATCH = 4096


def fp16(value: torch.Tensor) -> torch.Tensor:
    """``value`` rounded to float16 and back: what is stored is what is used."""
    return value.detach().to(FP16).float()


def to_chunks(w: torch.Tensor, chunk: int) -> torch.Tensor:
    """``w`` flattened row-major, zero-padded to whole chunks, as ``n_chunks x chunk``."""
    flat = w.reshape(-1)
    pad = (-flat.numel()) % chunk
    return torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, chunk)


def code_bits(y: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Bits of the grid values ``y`` (in steps) under zero-mean Gaussians of ``sigma`` (steps) integrated over unit bins."""
    normal = torch.distributions.Normal(torch.zeros_like(sigma), sigma)
    p = normal.cdf(y + 0.5) - normal.cdf(y - 0.5)
    return -torch.log2(p.clamp_min(1e-9)).sum()


class ChunkVAE(nn.Module):
    """The VAE fitted to weight chunks: its decoder is what gets stored."""

    def __init__(self, chunk: int, latent_dim: int, hidden: int) -> None:
        super().__init__()
        width = max(hidden, 2 * chunk)
        self.encoder = nn.Sequential(nn.Linear(chunk, width), nn.ReLU(), nn.Linear(width, 2 * latent_dim))
        self.decoder = make_decoder(latent_dim, hidden, chunk)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 6.0)

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        nll = (x - self.decoder(z)).pow(2).sum(1) / (2 * CHUNK_NOISE_VAR)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)
        return (nll + kl).mean()


def fit_chunk_vae(chunks: torch.Tensor, latent_dim: int, hidden: int, steps: int, seed: int) -> ChunkVAE:
    """Train a :class:`ChunkVAE` on ``chunks`` (rows) for ``steps`` Adam steps."""
    torch.manual_seed(seed)
    vae = ChunkVAE(chunks.shape[1], latent_dim, hidden).to(chunks.device)
    optimizer = torch.optim.Adam(vae.parameters(), lr=3e-3)
    generator = torch.Generator(device=chunks.device).manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(chunks), (min(FIT_BATCH, len(chunks)),), generator=generator, device=chunks.device)
        optimizer.zero_grad(set_to_none=True)
        vae.loss(chunks[idx]).backward()
        optimizer.step()
    return vae.eval()


class _Group(nn.Module):
    """One decoder and the code model of its latent units, shared by the layers of a group."""

    def __init__(self, decoder: nn.Module, log_sigma: torch.Tensor) -> None:
        super().__init__()
        self.decoder = decoder
        self.log_sigma = nn.Parameter(log_sigma)


class _DecodedWeight(nn.Module):
    """A parametrization: the weight is the decoder's output for the (grid-rounded) latents."""

    def __init__(
        self, latents: torch.Tensor, group: _Group, step: float, scale: float, shape: torch.Size, keep: torch.Tensor | None
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(latents)
        self.group = group
        self.step, self.scale, self.shape = step, scale, tuple(shape)
        self.register_buffer("keep", keep, persistent=False)

    def rounded(self) -> torch.Tensor:
        y = self.latents / self.step
        return (y + (torch.round(y) - y).detach()) * self.step

    def forward(self, _original: torch.Tensor) -> torch.Tensor:
        weight = decode_chunks(self.group.decoder, self.rounded(), self.scale, self.shape)
        return weight if self.keep is None else weight * self.keep

    def bits(self) -> torch.Tensor:
        y = self.latents / self.step
        noisy = y + (torch.rand_like(y) - 0.5) if self.training else torch.round(y)
        sigma = (self.group.log_sigma.exp() / self.step).clamp_min(MIN_SIGMA)
        return code_bits(noisy, sigma.expand_as(noisy))


class WeightVAECode(WeightVAE):
    """The work of :class:`~vae_automl.builtin.weight_vae.WeightVAE`."""

    def apply(self, model: Any, params: dict[str, Any], ctx: CompressionContext) -> Any:
        values = self.resolve_params(params)
        out = copy.deepcopy(model).to(ctx.device)
        layers = [(name, m) for name, m in out.named_modules() if isinstance(m, ENCODED_LAYERS)]
        if not layers:
            raise ValueError("weight_vae found no Linear or Conv layer to encode")
        chunk, latent_dim, hidden, step = values["chunk"], values["latent_dim"], values["hidden"], float(values["step"])
        step = float(fp16(torch.tensor(step)))
        scales, chunks, keeps = {}, {}, {}
        for name, module in layers:
            w = module.weight.detach().float()
            # An earlier pruning stage's zeros stay zero (the format stores the mask).
            keeps[name] = (w != 0).float() if out.encodings.get(f"{name}.weight", {}).get("sparse") else None
            std = float(w.std()) if w.numel() > 1 else float(w.abs().max())
            scales[name] = float(fp16(torch.tensor(std if std > 0 else 1.0)))
            chunks[name] = to_chunks(w / scales[name], chunk)
        members = [[name for name, _ in layers]] if values["sharing"] == "shared" else [[name] for name, _ in layers]
        groups: dict[str, _Group] = {}
        params_of: dict[str, _DecodedWeight] = {}
        modules = dict(layers)
        for k, names in enumerate(members):
            vae = fit_chunk_vae(torch.cat([chunks[n] for n in names]), latent_dim, hidden, values["vae_steps"], ctx.seed + k)
            with torch.no_grad():
                mus = {n: vae.encode(chunks[n])[0] for n in names}
                spread = torch.cat(list(mus.values())).std(0).clamp_min(step)
            group = _Group(vae.decoder, spread.log())
            groups[names[0]] = group
            for n in names:
                module = modules[n]
                decoded = _DecodedWeight(mus[n].clone(), group, step, scales[n], module.weight.shape, keeps[n]).to(ctx.device)
                parametrize.register_parametrization(module, "weight", decoded, unsafe=True)
                params_of[n] = decoded
        rate_weight = float(values["rate_weight"])

        def rate_loss(_model: Any, _x: torch.Tensor, *_rest: Any) -> torch.Tensor:
            return rate_weight * sum(p.bits() for p in params_of.values())

        try:
            if values["finetune_epochs"] > 0:
                ctx.fine_tune(
                    out, values["finetune_epochs"], extra_loss=rate_loss if rate_weight else None, lr=values["finetune_lr"]
                )
        finally:
            for _, module in layers:
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
        self._finalize(out, layers, members, groups, params_of, values, step)
        return out.eval()

    @staticmethod
    def _finalize(
        out: Any,
        layers: list[tuple[str, nn.Module]],
        members: list[list[str]],
        groups: dict[str, _Group],
        params_of: dict[str, _DecodedWeight],
        values: dict[str, Any],
        step: float,
    ) -> None:
        """Snap latents to the grid and decoders to float16, set each weight to its decoded value, record the specs."""
        modules = dict(layers)
        for names in members:
            group = groups[names[0]]
            decoder = copy.deepcopy(group.decoder).cpu().float()
            with torch.no_grad():
                for p in decoder.parameters():
                    p.copy_(fp16(p))
            decoder_state = {key: t.detach().tolist() for key, t in decoder.state_dict().items()}
            for n in names:
                p = params_of[n]
                codes = torch.round(p.latents.detach().cpu() / step).to(torch.int64)
                weight = decode_weight(decoder, codes, step, p.scale, p.shape)
                if p.keep is not None:
                    weight = weight * p.keep.cpu()
                module = modules[n]
                with torch.no_grad():
                    module.weight.copy_(weight.to(module.weight.device))
                spec = {
                    "codec": "weight_vae",
                    "chunk": values["chunk"],
                    "latent_dim": values["latent_dim"],
                    "hidden": values["hidden"],
                    "step": step,
                    "scale": p.scale,
                    "amortize_over": values["amortize_over"],
                    "codes": codes.flatten().tolist(),
                    "decoder_state": decoder_state,
                }
                if n != names[0]:
                    spec["parts_from"] = f"{names[0]}.weight"
                if p.keep is not None:
                    spec["sparse"] = True
                out.encodings[f"{n}.weight"] = spec


class SizeBytesAmortizedCode(SizeBytesAmortized):
    """The work of :class:`~vae_automl.builtin.weight_vae.SizeBytesAmortized`."""

    def measure(self, ctx: MeasureContext) -> float:
        total = float(len(serialized(ctx)))
        for spec in ctx.model.encodings.values():
            if spec.get("codec") == WeightVAECodec.name:
                n = int(spec.get("amortize_over", 1))
                total -= decoder_bytes(spec) * (n - 1) / n
        return total
