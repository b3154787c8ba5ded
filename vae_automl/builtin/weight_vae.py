"""``weight_vae``: a network's weights encoded by a small VAE, its latents entropy-coded, its decoder stored.

Every Linear / Conv weight is scaled to unit standard deviation (the scale
is kept, float16), flattened row-major and cut into chunks of ``chunk``
values (the last one zero-padded). A small VAE learns those chunks:
an encoder (used only here) gives each chunk ``latent_dim`` latents, a
decoder (``latent_dim -> hidden -> chunk``, or linear with ``hidden: 0``)
turns latents back into weights. ``sharing: shared`` fits one VAE to the
chunks of every layer; ``sharing: layer`` fits one per layer, as Entropy
Penalized Reparameterization (Oktay, Ballé et al., ICLR 2020) gives each
layer its own tiny decoder.

Then the network is re-parameterized: each weight *is* the decoder's
output for its latents rounded to a grid of ``step`` (a straight-through
estimator passes the gradient), and latents, decoders and the rest of the
network are fine-tuned on the task's loss plus ``rate_weight`` times the
latents' code length in bits, under a zero-mean quantized Gaussian with a
learned standard deviation per latent unit (uniform noise stands in for
rounding in that term, as in Ballé et al. 2017). That keeps the decoded
network accurate while pushing the latents to cheap codes.

Stored (the ``weight_vae`` storage codec, :class:`WeightVAECodec`): per
weight tensor the integer latents, ANS-coded by ``constriction`` with one
frequency table per latent unit (the learned Gaussians only shape the
training; the file codes under the latents' own frequencies, which cost
no more); per decoder its parameters in float16, with the first tensor
that uses it. Loading runs the decoder on the CPU in float32 on exactly
those values, the very computation this compressor used to set the
weights, so the loaded weights equal the trained model's bit for bit and
``size_bytes`` counts the decoder.

Weights an earlier stage pruned (``"sparse": true``) stay zero: the
decoded weight is masked, and the format stores the mask.

``amortize_over`` (N) declares that N models share each decoder (a model
zoo stored with one decoder): the ``size_bytes_amortized`` objective then
counts 1/N of the decoder bytes. ``size_bytes`` is still the file: both
figures are reported.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from vae_automl.builtin.objectives import serialized
from vae_automl.components import Compressor, Objective, Param
from vae_automl.errors import ExportError
from vae_automl.plugin_manager import hookimpl
from vae_automl.storage import ans
from vae_automl.storage.format import SHARED_PREFIX

if TYPE_CHECKING:
    from vae_automl.components import CompressionContext, MeasureContext
    from vae_automl.storage.codec import Codec

ENCODED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
SHARINGS = ("shared", "layer")
CHUNK_NOISE_VAR = 0.01
"""Variance of the Gaussian likelihood the chunk VAE fits unit-scaled weights with (1% of their variance)."""
MIN_SIGMA = 0.11
"""Smallest standard deviation (in grid steps) of a latent unit's code model; below it every code is 0 anyway."""
FIT_BATCH = 4096
FP16 = torch.float16


def fp16(value: torch.Tensor) -> torch.Tensor:
    """``value`` rounded to float16 and back: what is stored is what is used."""
    return value.detach().to(FP16).float()


def make_decoder(latent_dim: int, hidden: int, chunk: int) -> nn.Sequential:
    """The chunk decoder ``latent_dim -> hidden -> chunk`` (tanh), or one linear layer when ``hidden`` is 0."""
    if hidden == 0:
        return nn.Sequential(nn.Linear(latent_dim, chunk))
    return nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, chunk))


def to_chunks(w: torch.Tensor, chunk: int) -> torch.Tensor:
    """``w`` flattened row-major, zero-padded to whole chunks, as ``n_chunks x chunk``."""
    flat = w.reshape(-1)
    pad = (-flat.numel()) % chunk
    return torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, chunk)


def decode_chunks(decoder: nn.Module, latents: torch.Tensor, scale: float, shape: tuple[int, ...] | list[int]) -> torch.Tensor:
    """The weight of ``shape`` that ``decoder`` makes from ``latents`` (``n_chunks x latent_dim``, grid values)."""
    return (decoder(latents) * scale).reshape(-1)[: math.prod(shape)].reshape(shape)


@torch.no_grad()
def decode_weight(
    decoder: nn.Module, codes: torch.Tensor, step: float, scale: float, shape: tuple[int, ...] | list[int]
) -> torch.Tensor:
    """The stored weight: integer ``codes`` times ``step`` through the decoder, on the CPU in float32.

    The compressor and the loader both call this, so they agree bit for bit.
    """
    return decode_chunks(decoder.cpu().float(), codes.cpu().to(torch.float32) * step, scale, shape).contiguous()


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


class WeightVAE(Compressor):
    name = "weight_vae"
    stage = "quantize"
    takes = ("dense", "masked")
    gives = "codec:weight_vae"
    help = (
        "encode every Linear/Conv weight with a small VAE over weight chunks; latents on a grid, "
        "entropy-coded; the decoder is stored and counted; fine-tuned on the task loss + rate"
    )
    params = (
        Param("chunk", "int", 16, minimum=2, maximum=1024, log=True, help="weights per chunk the VAE encodes"),
        Param("latent_dim", "int", 4, minimum=1, maximum=256, log=True, help="latents per chunk"),
        Param("hidden", "int", 32, minimum=0, maximum=4096, help="hidden units of the decoder (0: a linear decoder)"),
        Param(
            "sharing",
            "categorical",
            "shared",
            choices=SHARINGS,
            help="shared: one VAE for every layer; layer: one per layer (EPR)",
        ),
        Param("step", "float", 0.25, minimum=1e-3, maximum=10.0, log=True, help="grid step of the latents"),
        Param(
            "rate_weight",
            "float",
            1e-6,
            minimum=0.0,
            maximum=1.0,
            help="weight of the latents' code length (bits) next to the task loss (per image)",
        ),
        Param("vae_steps", "int", 500, minimum=0, maximum=100_000, log=False, help="Adam steps fitting the chunk VAE"),
        Param("finetune_epochs", "int", 5, minimum=0, maximum=1000, help="epochs fine-tuning latents, decoders and network"),
        Param(
            "finetune_lr",
            "float",
            None,
            minimum=1e-6,
            maximum=1.0,
            log=True,
            help="fine-tuning learning rate (default: the trial's lr)",
        ),
        Param(
            "amortize_over",
            "int",
            1,
            minimum=1,
            maximum=1_000_000,
            help="models declared to share each decoder: size_bytes_amortized counts 1/N of its bytes",
        ),
    )

    def validate_params(self, values: dict[str, Any]) -> None:
        chunk, latent = values.get("chunk"), values.get("latent_dim")
        if isinstance(chunk, int) and isinstance(latent, int) and latent > chunk:
            raise ValueError(
                f"`latent_dim` must be at most `chunk` (a code no smaller than what it encodes saves "
                f"nothing), but got latent_dim={latent}, chunk={chunk}"
            )

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


class WeightVAECodec:
    """Storage of ``weight_vae`` tensors: ANS-coded latents; the decoder with the first tensor that uses it.

    Header spec keys: ``chunk``, ``latent_dim``, ``hidden``, ``step`` and
    ``scale`` (float16-exact floats), ``chunks`` and ``radius`` (rows of
    latents and their largest magnitude), ``amortize_over``, and, on every
    tensor but the decoder's own, ``parts_from``: the tensor whose parts
    hold the decoder. In memory the spec also holds ``codes`` (the ``chunks x latent_dim`` integer latents,
    row-major, as a list) and ``decoder_state`` (parameter name -> nested
    lists of float16-exact floats), so the spec stays plain JSON data.

    Parts: ``""``, the latents, one column per latent unit under its own
    frequencies (:func:`vae_automl.storage.ans.encode_columns`); on the
    decoder's own tensor also ``decoder.<param>`` (float16).
    """

    name = "weight_vae"
    supports_mask = True
    memory_keys = ("codes", "decoder_state")
    decoder_prefix = "decoder."

    @staticmethod
    def codes(spec: dict[str, Any]) -> torch.Tensor:
        """The latents of a spec as an int64 ``chunks x latent_dim`` tensor."""
        return torch.tensor(spec["codes"], dtype=torch.int64).reshape(-1, int(spec["latent_dim"]))

    def header_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        codes = self.codes(spec)
        radius = max(1, int(codes.abs().max())) if codes.numel() else 1
        return {**{k: v for k, v in spec.items() if k not in self.memory_keys}, "chunks": int(codes.shape[0]), "radius": radius}

    def full_spec(self, parts: dict[str, torch.Tensor], header_spec: dict[str, Any]) -> dict[str, Any]:
        prefix = (SHARED_PREFIX if "parts_from" in header_spec else "") + self.decoder_prefix
        state = {k[len(prefix) :]: t.float().tolist() for k, t in parts.items() if k.startswith(prefix)}
        if not state:
            raise ExportError(f"weight_vae codec: no decoder parts ({prefix}*) for a tensor with spec {header_spec}")
        radius, rows, columns = int(header_spec["radius"]), int(header_spec["chunks"]), int(header_spec["latent_dim"])
        codes = ans.decode_columns(parts[""].numpy(), 2 * radius + 1, rows, columns) - radius
        spec = {k: v for k, v in header_spec.items() if k not in ("chunks", "radius")}
        return {**spec, "codes": codes.flatten().tolist(), "decoder_state": state}

    @staticmethod
    def _decoder(spec: dict[str, Any]) -> nn.Module:
        decoder = make_decoder(int(spec["latent_dim"]), int(spec["hidden"]), int(spec["chunk"]))
        decoder.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in spec["decoder_state"].items()})
        return decoder

    def decode(self, spec: dict[str, Any], shape: tuple[int, ...] | list[int]) -> torch.Tensor:
        return decode_weight(self._decoder(spec), self.codes(spec), float(spec["step"]), float(spec["scale"]), shape)

    def decode_masked(self, spec: dict[str, Any], shape: tuple[int, ...] | list[int], mask: torch.Tensor | None) -> torch.Tensor:
        decoded = self.decode(spec, shape)
        return decoded if mask is None else torch.where(mask, decoded, torch.zeros((), dtype=decoded.dtype))

    def pack(
        self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if not torch.equal(self.decode_masked(spec, tensor.shape, mask), tensor):
            raise ExportError(
                "weight_vae codec: the weights are not what the decoder makes of their latents; "
                "a compressor changed them after weight_vae"
            )
        radius = self.header_spec(spec)["radius"]
        coded = ans.encode_columns((self.codes(spec) + radius).numpy(), 2 * radius + 1)
        parts = {"": torch.from_numpy(coded.copy())}
        if "parts_from" not in spec:
            parts.update(
                {self.decoder_prefix + k: torch.tensor(v, dtype=torch.float32).to(FP16) for k, v in spec["decoder_state"].items()}
            )
        return parts, {}

    def unpack(
        self,
        parts: dict[str, torch.Tensor],
        meta: dict[str, Any],
        shape: list[int],
        spec: dict[str, Any],
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.decode_masked(spec, shape, mask)

    def theoretical_bits(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None) -> int:
        parts, _ = self.pack(tensor, spec, mask)
        return 8 * sum(p.numel() * p.element_size() for p in parts.values())


def decoder_bytes(spec: dict[str, Any]) -> int:
    """Bytes of the float16 decoder a ``weight_vae`` spec owns (0 when it takes the decoder from another tensor)."""
    return 0 if "parts_from" in spec else 2 * sum(torch.tensor(v).numel() for v in spec["decoder_state"].values())


class SizeBytesAmortized(Objective):
    name = "size_bytes_amortized"
    unit = "bytes"
    help = (
        "size_bytes with each weight_vae decoder counted 1/N, N its amortize_over (the models declared to share it); "
        "equal to size_bytes for every other model"
    )

    def measure(self, ctx: MeasureContext) -> float:
        total = float(len(serialized(ctx)))
        for spec in ctx.model.encodings.values():
            if spec.get("codec") == WeightVAECodec.name:
                n = int(spec.get("amortize_over", 1))
                total -= decoder_bytes(spec) * (n - 1) / n
        return total


@hookimpl
def register_compressors(register: Callable[[Compressor], None]) -> None:
    register(WeightVAE())


@hookimpl
def register_codecs(register: Callable[[Codec], None]) -> None:
    register(WeightVAECodec())


@hookimpl
def register_objectives(register: Callable[[Objective], None]) -> None:
    register(SizeBytesAmortized())
