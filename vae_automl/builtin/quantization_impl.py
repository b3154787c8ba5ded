"""The code of the built-in quantizers (:mod:`vae_automl.builtin.quantization` declares them): grids, calibration, QAT."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import parametrize

from vae_automl.builtin.distillation_impl import teacher_matching_loss
from vae_automl.builtin.quantization import (
    GROUPS,
    KMeansQuantizer,
    Pow2Quantizer,
    UniformQuantizer,
    _CodebookQuantizer,
    _Quantizer,
)
from vae_automl.layers import LayerGroups, group_of_layers, layer_groups
from vae_automl.storage.codecs import FLOAT_DTYPES
from vae_automl.vae import VAE

if TYPE_CHECKING:
    from vae_automl.components import CompressionContext


GRID_INPUT_CODECS = ("dense", "uniform", "codebook")


"""The codecs a quantizer may re-store; any other (a plugin's) is refused rather than dropped."""


QUANTIZED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
CLIP_RATIOS = torch.linspace(0.1, 1.0, 37)
CALIBRATION_ROWS = 4096
FP16_MIN_NORMAL = 2.0**-14


def quantizable_layers(model: nn.Module, groups: LayerGroups | None = None) -> list[tuple[str, nn.Module, str | None]]:
    """``(module name, module, group)`` of every layer whose weight is quantized; group None: no group."""
    group_of = group_of_layers(groups or {})
    return [(name, module, group_of.get(name)) for name, module in model.named_modules() if isinstance(module, QUANTIZED_LAYERS)]


def group_bits_asked(values: dict[str, Any]) -> list[str]:
    """The ``bits_<group>`` parameters set to a value (not left to default to ``bits``)."""
    return [f"bits_{g}" for g in GROUPS if values.get(f"bits_{g}") is not None]


def bits_for(params: dict[str, Any], group: str | None) -> int:
    value = params.get(f"bits_{group}") if group else None
    return int(value if value is not None else params["bits"])


def _rows(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """The weight as [channels, -1] (one row for a per-tensor grid)."""
    return w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)


def _round_scale(scale: torch.Tensor, dtype_name: str) -> torch.Tensor:
    return scale.to(FLOAT_DTYPES[dtype_name]).float()


def uniform_grid(
    w: torch.Tensor, bits: int, symmetric: bool, per_channel: bool, ratios: torch.Tensor, scale_dtype: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Quantize ``w`` on the grid clipped at ``ratios`` (per row) of its range.

    Returns the dequantized weight, the scales (as stored) and the zero
    points (asymmetric only). The arithmetic is that of the ``uniform`` codec,
    so packing finds the values exactly on the grid.
    """
    rows = _rows(w, per_channel)
    r = ratios.to(w.device).reshape(-1, 1)
    if symmetric:
        top = 1 if bits == 1 else (1 << (bits - 1)) - 1
        scale = _round_scale(r * rows.abs().amax(1, keepdim=True) / top, scale_dtype)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        if bits == 1:
            q = torch.where(rows >= 0, 1.0, -1.0)
        else:
            q = torch.round(rows / safe).clamp(-top, top)
        deq, zero_point = q * scale, None
    else:
        top = (1 << bits) - 1
        lo = r * rows.amin(1, keepdim=True).clamp(max=0)
        hi = r * rows.amax(1, keepdim=True).clamp(min=0)
        scale = _round_scale((hi - lo) / top, scale_dtype)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = torch.where(scale > 0, torch.round(-lo / safe), torch.zeros_like(lo)).clamp(0, top)
        codes = (torch.round(rows / safe) + zero_point).clamp(0, top)
        deq = (codes - zero_point) * scale
    return deq.reshape(w.shape), scale.flatten(), None if zero_point is None else zero_point.flatten()


def _row_errors(w: torch.Tensor, deq: torch.Tensor, x: torch.Tensor | None, per_channel: bool) -> torch.Tensor:
    """Squared error per row: of the layer output on ``x`` when given, else of the weight."""
    diff = (deq - w).reshape(w.shape[0], -1)
    per_out = (x @ diff.T).pow(2).sum(0) if x is not None else diff.pow(2).sum(1)
    return per_out if per_channel else per_out.sum().reshape(1)


def calibrate_uniform(
    w: torch.Tensor, bits: int, symmetric: bool, per_channel: bool, calibration: str, x: torch.Tensor | None, scale_dtype: str
) -> torch.Tensor:
    """The clip ratio (per row) that minimizes the calibration error."""
    n_rows = w.shape[0] if per_channel else 1
    if calibration == "minmax":
        return torch.ones(n_rows)
    best_err = torch.full((n_rows,), math.inf)
    best = torch.ones(n_rows)
    for ratio in CLIP_RATIOS.flip(0):  # from 1.0 down, so ties keep the wider range
        deq, _, _ = uniform_grid(w, bits, symmetric, per_channel, ratio.expand(n_rows), scale_dtype)
        err = _row_errors(w, deq, x if calibration == "output" else None, per_channel)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, ratio, best)
    return best


def pow2_levels(scale: float, bits: int) -> torch.Tensor:
    """``0, +-scale * 2**-j`` for ``j = 0 .. 2**(bits-1) - 2``: ``2**bits - 1`` levels."""
    exps = torch.arange((1 << (bits - 1)) - 1, dtype=torch.float64)
    mags = scale * 2.0**-exps
    return torch.cat([-mags, torch.zeros(1, dtype=torch.float64), mags])


def fp_codebook(values: torch.Tensor, dtype_name: str) -> torch.Tensor:
    """Sorted distinct codebook entries as stored (rounded to the codebook dtype), in float32."""
    return torch.unique(values.to(FLOAT_DTYPES[dtype_name]).float())


def snap_to_codebook(w: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    table = table.to(w.device)
    idx = torch.searchsorted(table, w.contiguous()).clamp(max=len(table) - 1)
    lower = (idx - 1).clamp(min=0)
    use_lower = (w - table[lower]).abs() < (table[idx] - w).abs()
    return table[torch.where(use_lower, lower, idx)]


def kmeans_1d(values: torch.Tensor, k: int, init: str, seed: int, iterations: int = 30) -> torch.Tensor:
    """Lloyd's k-means on scalars; ``linear`` init spreads centroids over [min, max] (Han et al. 2016)."""
    v = values.double().flatten()
    k = min(k, int(torch.unique(v).numel()))
    if init == "linear":
        centroids = torch.linspace(float(v.min()), float(v.max()), k, dtype=torch.float64)
    else:  # k-means++ seeding, reproducible from the trial's seed
        generator = torch.Generator().manual_seed(seed)
        chosen = [v[torch.randint(len(v), (1,), generator=generator)]]
        d2 = (v - chosen[0]).pow(2)
        for _ in range(k - 1):
            if float(d2.sum()) == 0:
                break
            chosen.append(v[torch.multinomial(d2 / d2.sum(), 1, generator=generator)])
            d2 = torch.minimum(d2, (v - chosen[-1]).pow(2))
        centroids = torch.cat(chosen).sort().values
    for _ in range(iterations):
        updated = lloyd_step(v, centroids)
        if torch.equal(updated, centroids):
            break
        centroids = updated
    return centroids.sort().values.float()


def lloyd_step(values: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """One Lloyd iteration on scalars (float64): each centroid moves to the mean of the values nearest to it.

    A centroid no value is nearest to stays where it is.
    """
    v = values.double().flatten()
    centroids = centroids.double().sort().values
    bounds = (centroids[1:] + centroids[:-1]) / 2
    assign = torch.searchsorted(bounds, v)
    sums = torch.zeros(len(centroids), dtype=torch.float64).index_add_(0, assign, v)
    counts = torch.zeros(len(centroids), dtype=torch.float64).index_add_(0, assign, torch.ones_like(v))
    return torch.where(counts > 0, sums / counts.clamp(min=1), centroids)


class _FakeQuant(nn.Module):
    """A parametrization: the forward pass sees the quantized weight, gradients pass straight through."""

    def __init__(self, quantize: Callable[[torch.Tensor], torch.Tensor], keep: torch.Tensor | None) -> None:
        super().__init__()
        self.quantize = quantize
        self.register_buffer("keep", keep, persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q = self.quantize(w)
        if self.keep is not None:
            q = q * self.keep
        return w + (q - w).detach()


def calibration_inputs(
    model: VAE, layers: list[tuple[str, nn.Module, str | None]], ctx: CompressionContext, samples: int
) -> dict[str, torch.Tensor]:
    """Per layer, the rows ``X`` with ``output = X @ W.T`` (unfolded patches for convolutions), on the CPU."""
    x = ctx.data.train[:samples]
    generator = torch.Generator().manual_seed(ctx.seed)
    captured: dict[str, torch.Tensor] = {}
    hooks = []

    def hook_for(name: str, module: nn.Module) -> Callable[..., None]:
        def hook(_mod: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
            inp = inputs[0].detach().float()
            if isinstance(module, nn.Linear):
                rows = inp.reshape(-1, inp.shape[-1])
            elif isinstance(module, nn.Conv2d) and module.groups == 1 and isinstance(module.padding, tuple):
                patches = F.unfold(inp, module.kernel_size, module.dilation, module.padding, module.stride)
                rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
            else:
                return
            rows = rows.cpu()
            if len(rows) > CALIBRATION_ROWS:
                rows = rows[torch.randperm(len(rows), generator=generator)[:CALIBRATION_ROWS]]
            captured[name] = rows

        return hook

    for name, module, _ in layers:
        hooks.append(module.register_forward_hook(hook_for(name, module)))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            if isinstance(model, VAE):
                eps = torch.randn(len(x), model.latent_dim, generator=torch.Generator().manual_seed(ctx.seed)).to(x.device)
                model(x, eps)
            else:  # a model without noise (a classifier): its plain forward pass
                model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return captured


def quantize_bias(model: VAE, key: str, bias: torch.Tensor, bits: int) -> None:
    """Put ``bias`` on a ``bits``-bit symmetric uniform grid over its largest magnitude, recorded in ``model.encodings``.

    No clipping: a bias is one value per unit, and its largest ones matter. The scale is float16 unless that
    would make it subnormal (float32 then), as for weights.
    """
    b = bias.detach().float().cpu()
    scale_dtype = "float16"
    _, scale, _ = uniform_grid(b, bits, True, False, torch.ones(1), "float32")
    if bool(((scale > 0) & (scale < FP16_MIN_NORMAL)).any()):
        scale_dtype = "float32"
    deq, scale, _ = uniform_grid(b, bits, True, False, torch.ones(1), scale_dtype)
    with torch.no_grad():
        bias.copy_(deq.to(bias.device, bias.dtype))
    model.encodings[key] = {
        "codec": "uniform",
        "bits": bits,
        "symmetric": True,
        "axis": None,
        "scale_dtype": scale_dtype,
        "scale": scale.double().tolist(),
    }


class QuantizerCode(_Quantizer):
    """The work of :class:`~vae_automl.builtin.quantization._Quantizer`."""

    # Subclasses: the grid of one weight.
    def fit(self, w: torch.Tensor, bits: int, values: dict[str, Any], x: torch.Tensor | None, seed: int) -> dict[str, Any]:
        """Calibrate the grid of ``w``; returns a state that :meth:`quantize` and :meth:`spec` use."""
        raise NotImplementedError

    def quantize(self, w: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        """``w`` on the grid (differentiability not needed; the STE wraps it)."""
        raise NotImplementedError

    def spec(self, w: torch.Tensor, state: dict[str, Any]) -> dict[str, Any]:
        """The encoding spec (with its grid) of ``w`` quantized by :meth:`quantize`."""
        raise NotImplementedError

    def needs_zero_mask(self, state: dict[str, Any]) -> bool:
        """Whether the grid lacks an exact zero level, so kept zeros need the sparse mask."""
        return False

    def follows(self, values: dict[str, Any]) -> bool:
        """Whether :meth:`follow` moves the grid during fine-tuning (the default: no, uniform grids follow the
        weights through their scale in :meth:`quantize`)."""
        return False

    def follow(self, w: torch.Tensor, state: dict[str, Any]) -> None:
        """After a fine-tuning step: move the grid in ``state`` with the latent weights ``w`` (kept ones only)."""

    def apply(self, model: VAE, params: dict[str, Any], ctx: CompressionContext) -> VAE:
        values = self.resolve_params(params)
        out = copy.deepcopy(model)
        device = next(out.parameters()).device
        groups = layer_groups(out, ctx.architecture) if group_bits_asked(values) else {}
        if group_bits_asked(values) and not groups:
            raise ValueError(
                f"{', '.join(group_bits_asked(values))} need layer groups, but architecture "
                f"{out.config.get('architecture')!r} declares none; set `bits` only"
            )
        layers = quantizable_layers(out, groups)
        for name, _, _ in layers:
            codec = out.encodings.get(f"{name}.weight", {}).get("codec", "dense")
            if codec not in GRID_INPUT_CODECS:
                # Re-storing on our grid would silently drop the earlier stage's codec (and its bytes).
                raise ValueError(
                    f"{name}.weight is stored by codec {codec!r} from an earlier stage; {self.name} "
                    f"quantizes only {', '.join(GRID_INPUT_CODECS)} tensors"
                )
        inputs = (
            calibration_inputs(out, layers, ctx, values["calibration_samples"]) if values.get("calibration") == "output" else {}
        )
        states: dict[str, dict[str, Any]] = {}
        keeps: dict[str, torch.Tensor | None] = {}
        for name, module, group in layers:
            w = module.weight.detach().float().cpu().clone()
            zeros = w == 0
            keeps[name] = (~zeros).float() if bool(zeros.any()) else None
            states[name] = self.fit(w, bits_for(values, group), values, inputs.get(name), ctx.seed)
        if values["qat_epochs"] > 0:
            self._fine_tune(out, layers, states, keeps, values, ctx, device)
        for name, module, _ in layers:
            w = module.weight.detach().float().cpu().clone()
            w_q = self.quantize(w, states[name])
            if keeps[name] is not None:
                w_q = w_q * keeps[name]
            with torch.no_grad():
                module.weight.copy_(w_q.to(device, module.weight.dtype))
            key = f"{name}.weight"
            previous = out.encodings.get(key, {})
            spec = self.spec(w, states[name])
            if previous.get("sparse") or (keeps[name] is not None and self.needs_zero_mask(states[name])):
                spec["sparse"] = True
            out.encodings[key] = spec
        if values.get("bias_bits"):
            for name, module, _ in layers:
                if module.bias is not None:
                    quantize_bias(out, f"{name}.bias", module.bias, int(values["bias_bits"]))
        return out

    def _fine_tune(
        self,
        model: VAE,
        layers: list[tuple[str, nn.Module, str | None]],
        states: dict[str, dict[str, Any]],
        keeps: dict[str, torch.Tensor | None],
        values: dict[str, Any],
        ctx: CompressionContext,
        device: torch.device,
    ) -> None:
        # On the weights' device once, not at every step.
        device_keeps = {name: None if keep is None else keep.to(device) for name, keep in keeps.items()}
        for name, module, _ in layers:
            state = states[name]

            def fake(w: torch.Tensor, _state: dict[str, Any] = state) -> torch.Tensor:
                return self.quantize(w.detach().float(), _state).to(w.dtype)

            parametrize.register_parametrization(module, "weight", _FakeQuant(fake, device_keeps[name]))

        following = self.follows(values)

        def keep_zeros_and_follow(m: nn.Module) -> None:
            with torch.no_grad():
                for name, module, _ in layers:
                    latent = module.parametrizations.weight.original
                    keep = device_keeps[name]
                    if keep is not None:
                        latent.mul_(keep)
                    if following:
                        kept = latent if keep is None else latent[keep > 0]
                        self.follow(kept.detach().float().cpu(), states[name])

        extra = None
        if values["distill_alpha"] > 0:
            if ctx.teacher is None:
                raise ValueError("distill_alpha > 0 needs a teacher (ctx.teacher: the trial's fp32 model), but there is none")
            extra = teacher_matching_loss(ctx.teacher, values["distill_alpha"], values["distill_temperature"], model)
        try:
            ctx.fine_tune(model, values["qat_epochs"], extra_loss=extra, after_step=keep_zeros_and_follow, lr=values["qat_lr"])
        finally:
            for _, module, _ in layers:
                if parametrize.is_parametrized(module, "weight"):
                    # Keep the latent float weight: it is snapped to the grid next.
                    parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)


class UniformQuantizerCode(UniformQuantizer):
    """The work of :class:`~vae_automl.builtin.quantization.UniformQuantizer`."""

    def fit(self, w: torch.Tensor, bits: int, values: dict[str, Any], x: torch.Tensor | None, seed: int) -> dict[str, Any]:
        per_channel = values["granularity"] == "per_channel" and w.dim() > 1
        symmetric = bool(values["symmetric"])
        ratios = calibrate_uniform(w, bits, symmetric, per_channel, values["calibration"], x, values["scale_dtype"])
        scale_dtype = values["scale_dtype"]
        _, scale, _ = uniform_grid(w, bits, symmetric, per_channel, ratios, "float32")
        if scale_dtype == "float16" and bool(((scale > 0) & (scale < FP16_MIN_NORMAL)).any()):
            scale_dtype = "float32"  # float16 would make these scales subnormal and coarse
        return {"bits": bits, "symmetric": symmetric, "per_channel": per_channel, "scale_dtype": scale_dtype, "ratios": ratios}

    def quantize(self, w: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        deq, _, _ = uniform_grid(
            w, state["bits"], state["symmetric"], state["per_channel"], state["ratios"], state["scale_dtype"]
        )
        return deq

    def spec(self, w: torch.Tensor, state: dict[str, Any]) -> dict[str, Any]:
        _, scale, zero_point = uniform_grid(
            w, state["bits"], state["symmetric"], state["per_channel"], state["ratios"], state["scale_dtype"]
        )
        spec: dict[str, Any] = {
            "codec": "uniform",
            "bits": state["bits"],
            "symmetric": state["symmetric"],
            "axis": 0 if state["per_channel"] else None,
            "scale_dtype": state["scale_dtype"],
            "scale": scale.double().tolist(),
        }
        if zero_point is not None:
            spec["zero_point"] = [int(z) for z in zero_point.tolist()]
        return spec

    def needs_zero_mask(self, state: dict[str, Any]) -> bool:
        return state["symmetric"] and state["bits"] == 1


class CodebookQuantizerCode(_CodebookQuantizer):
    """The work of :class:`~vae_automl.builtin.quantization._CodebookQuantizer`."""

    def quantize(self, w: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
        return snap_to_codebook(w, state["table"])

    def spec(self, w: torch.Tensor, state: dict[str, Any]) -> dict[str, Any]:
        return {
            "codec": "codebook",
            "bits": state["bits"],
            "codebook_dtype": state["dtype"],
            "codebook": state["table"].double().tolist(),
        }

    def needs_zero_mask(self, state: dict[str, Any]) -> bool:
        return not bool((state["table"] == 0).any())


class Pow2QuantizerCode(Pow2Quantizer):
    """The work of :class:`~vae_automl.builtin.quantization.Pow2Quantizer`."""

    def fit(self, w: torch.Tensor, bits: int, values: dict[str, Any], x: torch.Tensor | None, seed: int) -> dict[str, Any]:
        top = float(w.abs().max())
        ratios = torch.ones(1) if values["calibration"] == "minmax" else CLIP_RATIOS.flip(0)
        best, best_err = None, math.inf
        for ratio in ratios:
            table = fp_codebook(pow2_levels(top * float(ratio), bits), "float16")
            err = float(_row_errors(w, snap_to_codebook(w, table), x if values["calibration"] == "output" else None, False))
            if best is None or err < best_err:
                best, best_err = table, err
        return {"bits": bits, "table": best, "dtype": "float16"}


class KMeansQuantizerCode(KMeansQuantizer):
    """The work of :class:`~vae_automl.builtin.quantization.KMeansQuantizer`."""

    def fit(self, w: torch.Tensor, bits: int, values: dict[str, Any], x: torch.Tensor | None, seed: int) -> dict[str, Any]:
        nonzero = w[w != 0]
        source = nonzero if nonzero.numel() else w.flatten()
        centroids = kmeans_1d(source, 1 << bits, values["init"], seed)
        return {"bits": bits, "table": fp_codebook(centroids, values["codebook_dtype"]), "dtype": values["codebook_dtype"]}

    def follows(self, values: dict[str, Any]) -> bool:
        return bool(values["qat_codebook"] == "lloyd")

    def follow(self, w: torch.Tensor, state: dict[str, Any]) -> None:
        # Deep Compression trains the shared values; a Lloyd step after each optimizer step keeps every centroid at
        # the mean of the latent weights it stands for, as stored (rounded to the codebook dtype).
        if w.numel():
            state["table"] = fp_codebook(lloyd_step(w, state["table"]).float(), state["dtype"])
