"""The code of the NNI compressors (:mod:`vae_automl_nni.compressors` declares them): NNI's pruners and quantizers run."""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vae_automl.builtin.pruning_impl import (
    apply_masks,
    fine_tune_masked,
    mark_sparse,
    prunable_weights,
    saliency_batches,
    saliency_loss,
    shrink,
)
from vae_automl.layers import channel_groups
from vae_automl_nni.compressors import NniPruner, NniQuantizer

if TYPE_CHECKING:
    from vae_automl.components import CompressionContext
    from vae_automl.vae import VAE


INSTALL_HINT = "the nni_* compressors need NNI 3.0: pip install 'nni==3.0' (or pip install plugins/vae-automl-nni)"


def import_nni() -> Any:
    """The ``nni`` module, or a clear error saying how to install it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import nni
            import nni.compression.pruning  # noqa: F401
            import nni.compression.quantization  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    return nni


def _evaluator(nni: Any, model: VAE, ctx: CompressionContext, lr: float) -> Any:
    """An NNI TorchEvaluator that trains on the trial's training batches with the trial's loss.

    A VAE's loss is the negative ELBO (seeded noise); any other model's is
    its task's loss with the batch labels (a classifier's cross-entropy).
    """
    from nni.compression import TorchEvaluator

    batches = saliency_batches(ctx, 64)
    generator = torch.Generator(device=ctx.data.train.device).manual_seed(ctx.seed)

    def training_step(batch: tuple[torch.Tensor, torch.Tensor | None], m: nn.Module) -> torch.Tensor:
        x, y = batch
        return saliency_loss(m, ctx, x, y, generator)

    def training_func(
        m: nn.Module,
        optimizers: Any,
        step: Any,
        lr_schedulers: Any = None,
        max_steps: int | None = None,
        max_epochs: int | None = None,
    ) -> None:
        optimizer = optimizers[0] if isinstance(optimizers, list) else optimizers
        m.train()
        total = max_steps if max_steps is not None else len(batches) * (max_epochs or 1)
        for i in range(total):
            loss = step(batches[i % len(batches)], m)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    optimizer = nni.trace(torch.optim.Adam)(model.parameters(), lr=lr)
    # NNI only calls evaluating_func for its own reports; without one it logs a warning per compressor.
    return TorchEvaluator(training_func, optimizer, training_step, evaluating_func=lambda m: 0.0)


def _train_lr(ctx: CompressionContext) -> float:
    return float(getattr(ctx.train_config, "lr", 1e-3) or 1e-3)


class NniPrunerCode(NniPruner):
    """The work of :class:`~vae_automl_nni.compressors.NniPruner`."""

    def apply(self, model: VAE, params: dict[str, Any], ctx: CompressionContext) -> VAE:
        values = self.resolve_params(params)
        nni = import_nni()
        torch.manual_seed(ctx.seed)
        work = copy.deepcopy(model).to(ctx.device)
        if values["sparsity"] == 0.0:
            return work.eval()
        if values["pruner"] == "level":
            return self._unstructured(work, values, ctx)
        return self._structured(nni, work, values, ctx)

    @staticmethod
    def _masks(pruner: Any) -> dict[str, dict[str, torch.Tensor]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, masks = pruner.compress()
            pruner.unwrap_model()
        return masks

    def _unstructured(self, work: VAE, values: dict[str, Any], ctx: CompressionContext) -> VAE:
        from nni.compression.pruning import LevelPruner

        layers = [name[: -len(".weight")] for name in prunable_weights(work)]
        config = [{"op_names": layers, "target_names": ["weight"], "sparse_ratio": float(values["sparsity"])}]
        nni_masks = self._masks(LevelPruner(work, config))
        masks = {f"{layer}.weight": m["weight"].bool() for layer, m in nni_masks.items() if "weight" in m}
        apply_masks(work, masks)
        fine_tune_masked(work, masks, values["finetune_epochs"], ctx)
        mark_sparse(work, masks)
        return work.eval()

    def _structured(self, nni: Any, work: VAE, values: dict[str, Any], ctx: CompressionContext) -> VAE:
        from nni.compression.pruning import L1NormPruner, L2NormPruner, TaylorPruner

        if ctx.build_model is None:
            raise ValueError("nni_prune removes units by rebuilding the model and needs ctx.build_model")
        groups = channel_groups(work, architecture=ctx.architecture)
        modules = dict(work.named_modules())
        # Only producers whose dim 0 is one unit per row: NNI's output-channel masks map onto them.
        prunable = {
            k: g.producer[0][: -len(".weight")]
            for k, g in enumerate(groups)
            if g.producer[1] == 0
            and g.slices[0][2] == 1
            and isinstance(modules[g.producer[0][: -len(".weight")]], (nn.Linear, nn.Conv2d))
        }
        keep = [torch.arange(g.size) for g in groups]
        if prunable:
            config = [
                {
                    "op_names": sorted(set(prunable.values())),
                    "target_names": ["weight", "bias"],
                    "sparse_ratio": float(values["sparsity"]),
                }
            ]
            if values["pruner"] == "taylor":
                evaluator = _evaluator(nni, work, ctx, _train_lr(ctx))
                pruner = TaylorPruner(work, config, evaluator, training_steps=values["taylor_steps"])
            else:
                pruner = (L1NormPruner if values["pruner"] == "l1_norm" else L2NormPruner)(work, config)
            nni_masks = self._masks(pruner)
            for k, layer in prunable.items():
                mask = nni_masks[layer]["weight"].reshape(groups[k].size, -1).any(dim=1)
                kept = torch.nonzero(mask).flatten()
                keep[k] = kept.cpu() if len(kept) else torch.tensor([0])
        pruned = shrink(work, groups, keep, ctx.build_model)
        if values["finetune_epochs"] > 0:
            ctx.fine_tune(pruned, values["finetune_epochs"])
        return pruned.eval()


class NniQuantizerCode(NniQuantizer):
    """The work of :class:`~vae_automl_nni.compressors.NniQuantizer`."""

    def apply(self, model: VAE, params: dict[str, Any], ctx: CompressionContext) -> VAE:
        values = self.resolve_params(params)
        nni = import_nni()
        from nni.compression.quantization import PtqQuantizer, QATQuantizer

        torch.manual_seed(ctx.seed)
        work = copy.deepcopy(model).to(ctx.device)
        zeros = {name: (w == 0) for name, w in prunable_weights(work).items() if work.encodings.get(name, {}).get("sparse")}
        layers = [name[: -len(".weight")] for name in prunable_weights(work)]
        config = [
            {
                "op_names": layers,
                "target_names": ["weight"],
                "quant_dtype": f"int{values['bits']}",
                "quant_scheme": values["scheme"],
                "granularity": values["granularity"],
            }
        ]
        evaluator = _evaluator(nni, work, ctx, _train_lr(ctx) * 0.1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if values["quantizer"] == "qat":
                quantizer = QATQuantizer(work, config, evaluator, quant_start_step=0)
                quantizer.compress(max_steps=values["steps"], max_epochs=None)
            else:
                quantizer = PtqQuantizer(work, config, evaluator)
                quantizer.compress(max_steps=values["steps"], max_epochs=None)
            grids = {}
            for layer, spaces in quantizer._target_spaces.items():
                space = spaces["weight"]
                grids[f"{layer}.weight"] = (
                    space.scale.detach().clone(),
                    space.zero_point.detach().clone(),
                    int(space.qmin),
                    int(space.qmax),
                )
            quantizer.unwrap_model()
        with torch.no_grad():
            for name, (scale, zero_point, qmin, qmax) in grids.items():
                weight = work.get_parameter(name)
                spec = _uniform_spec(weight, scale, zero_point, qmin, qmax, values["bits"])
                codes = torch.round(weight / _per_row(scale, weight)) + _per_row(zero_point, weight) - qmin
                codes = codes.clamp(0, qmax - qmin)
                weight.copy_(
                    (codes - _per_row(torch.tensor(spec["zero_point"], dtype=torch.float32), weight))
                    * _per_row(torch.tensor(spec["scale"], dtype=torch.float32), weight)
                )
                if name in zeros:
                    weight.masked_fill_(zeros[name], 0.0)
                    spec["sparse"] = True
                work.encodings[name] = {**{k: v for k, v in work.encodings.get(name, {}).items() if k == "sparse"}, **spec}
        return work.eval()


def _per_row(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """NNI's scale / zero point (one value, or one per output channel) broadcast over ``weight``."""
    flat = values.detach().float().flatten().to(weight.device)
    if flat.numel() == 1:
        return flat.reshape([1] * weight.dim())
    return flat[: weight.shape[0]].reshape(-1, *([1] * (weight.dim() - 1)))


def _uniform_spec(
    weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, bits: int
) -> dict[str, Any]:
    """The ``uniform`` codec spec of NNI's grid ``(q - zp) * scale``, q in [qmin, qmax], as codes ``c = q - qmin``."""
    per_channel = scale.numel() > 1
    s = scale.detach().float().flatten()[: weight.shape[0] if per_channel else 1]
    zp = zero_point.detach().float().flatten()[: weight.shape[0] if per_channel else 1]
    if qmax - qmin > (1 << bits) - 1:
        raise ValueError(f"NNI's grid [{qmin}, {qmax}] needs more than bits={bits}")
    return {
        "codec": "uniform",
        "bits": int(bits),
        "symmetric": False,
        "axis": 0 if per_channel else None,
        "scale": [float(v) for v in s],
        "zero_point": [int(round(float(v))) - qmin for v in zp],
        "scale_dtype": "float32",
    }
