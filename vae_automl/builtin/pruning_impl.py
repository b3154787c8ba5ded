"""The code of the built-in pruners (:mod:`vae_automl.builtin.pruning` declares them): scores, masks, shrinking."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vae_automl.builtin.pruning import (
    L1Pruner,
    MagnitudePruner,
    StructuredPruner,
    TaylorPruner,
    _UnstructuredPruner,
)
from vae_automl.layers import PRUNING_PLAN, ChannelGroup, channel_groups
from vae_automl.vae import VAE, negative_elbo

if TYPE_CHECKING:
    from vae_automl.components import CompressionContext


PRUNABLE_LAYERS = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
RAMP_UPDATES_PER_EPOCH = 4
"""How often per epoch gradual magnitude pruning (``ramp_epochs``) recomputes its masks."""


def prunable_weights(model: nn.Module) -> dict[str, nn.Parameter]:
    """The weight matrices / kernels of linear and conv layers, by state-dict name (biases stay dense)."""
    out = {}
    for module_name, module in model.named_modules():
        if isinstance(module, PRUNABLE_LAYERS):
            out[f"{module_name}.weight" if module_name else "weight"] = module.weight
    return out


def masks_from_scores(
    scores: dict[str, torch.Tensor], sparsity: float, scope: str, magnitudes: dict[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Boolean keep-masks removing the ``sparsity`` fraction of lowest scores, globally or per tensor; scope
    ``magnitude_layers``: each tensor keeps as many as global pruning of ``magnitudes`` (|w|) keeps in it, the ones
    of highest score."""
    if scope == "magnitude_layers":
        if magnitudes is None:
            raise ValueError("scope magnitude_layers needs the weights' magnitudes")
        budget = masks_from_scores(magnitudes, sparsity, "global")
        masks = {}
        for name, s in scores.items():
            keep = torch.ones(s.numel(), dtype=torch.bool, device=s.device)
            keep[torch.argsort(s.flatten(), stable=True)[: s.numel() - int(budget[name].sum())]] = False
            masks[name] = keep.view_as(s)
        return masks
    if sparsity <= 0.0:
        return {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.items()}
    if scope == "global":
        flat = torch.cat([s.flatten() for s in scores.values()])
        k = int(round(sparsity * flat.numel()))
        if k == 0:
            return {name: torch.ones_like(s, dtype=torch.bool) for name, s in scores.items()}
        # Rank-based rather than a threshold, so ties (e.g. already-zero weights) still give exactly k.
        order = torch.argsort(flat, stable=True)
        keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
        keep[order[:k]] = False
        masks, start = {}, 0
        for name, s in scores.items():
            masks[name] = keep[start : start + s.numel()].view_as(s)
            start += s.numel()
        return masks
    masks = {}
    for name, s in scores.items():
        k = int(round(sparsity * s.numel()))
        keep = torch.ones(s.numel(), dtype=torch.bool, device=s.device)
        keep[torch.argsort(s.flatten(), stable=True)[:k]] = False
        masks[name] = keep.view_as(s)
    return masks


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero the masked-out weights in place."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        params[name].mul_(mask.to(params[name].dtype))


def mark_sparse(model: VAE, names: list[str] | tuple[str, ...] | Any) -> None:
    """Ask the packer to store these tensors sparsely (bitmask or indices, whichever is smaller)."""
    for name in names:
        model.encodings[name] = {**model.encodings.get(name, {}), "sparse": True}


def fine_tune_masked(model: VAE, masks: dict[str, torch.Tensor], epochs: int, ctx: CompressionContext) -> VAE:
    """Fine-tune with the pruning mask re-applied after every optimizer step, so zeros stay zero.

    The re-application is marked ``capture_safe``: on CUDA the whole step, mask included, is captured in a
    CUDA graph (see :func:`vae_automl.train.train`).
    """
    if epochs > 0:
        params = dict(model.named_parameters())
        # Converted once, on the weights' device and dtype, so a step does no host work and allocates nothing.
        factors = {name: mask.to(params[name].device, params[name].dtype) for name, mask in masks.items()}

        def reapply_masks(m: nn.Module) -> None:
            apply_masks(m, factors)

        reapply_masks.capture_safe = True  # type: ignore[attr-defined]  # read by train.capture_blocker
        ctx.fine_tune(model, epochs, after_step=reapply_masks)
        apply_masks(model, masks)
    return model


def saliency_batches(
    ctx: CompressionContext, batches: int, batch_size: int = 128
) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """``batches`` fixed training batches ``(x, labels or None)`` chosen by the trial seed (repeatable saliency estimates)."""
    generator = torch.Generator().manual_seed(ctx.seed)
    n = len(ctx.data.train)
    size = min(batch_size, n)
    labels = ctx.data.train_labels
    out = []
    for _ in range(batches):
        idx = torch.randperm(n, generator=generator)[:size].to(ctx.data.train.device)
        out.append((ctx.data.train[idx], None if labels is None else labels[idx]))
    return out


def elbo_batches(ctx: CompressionContext, batches: int, batch_size: int = 128) -> list[torch.Tensor]:
    """The images of :func:`saliency_batches`."""
    return [x for x, _ in saliency_batches(ctx, batches, batch_size)]


def saliency_loss(
    model: Any, ctx: CompressionContext, x: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator
) -> torch.Tensor:
    """The loss saliencies differentiate: a VAE's negative ELBO with seeded noise, else the trial's task loss."""
    if isinstance(model, VAE):
        eps = torch.randn(len(x), model.latent_dim, generator=generator, device=x.device)
        return negative_elbo(model, x, eps=eps)
    if ctx.task is None:
        raise ValueError(f"saliency of a {type(model).__name__} needs the trial's task (ctx.task) for its loss")
    return ctx.task.loss(model, x, y, ctx.train_config)


def taylor_weight_scores(model: VAE, ctx: CompressionContext, batches: int) -> dict[str, torch.Tensor]:
    """First-order Taylor saliency ``sum over batches of |w * dL/dw|`` (L: :func:`saliency_loss`), per weight."""
    weights = prunable_weights(model)
    scores = {name: torch.zeros_like(w) for name, w in weights.items()}
    generator = torch.Generator(device=ctx.data.train.device).manual_seed(ctx.seed)
    was_training = model.training
    model.train()
    for xb, yb in saliency_batches(ctx, batches):
        model.zero_grad(set_to_none=True)
        saliency_loss(model, ctx, xb, yb, generator).backward()
        with torch.no_grad():
            for name, w in weights.items():
                scores[name] += (w * w.grad).abs()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return scores


@dataclass(frozen=True)
class InputStatistics:
    """Per prunable weight (by state-dict name): its layer's inputs over calibration batches, per input feature
    (Linear) or input channel (conv)."""

    norms: dict[str, torch.Tensor]
    """L2 norm over every image (and position) of the batches."""
    means: dict[str, torch.Tensor]
    """Mean over every image (and position)."""
    grad_norms: dict[str, torch.Tensor] | None = None
    """Per output feature or channel: the L2 norm over every image (and position) of the loss's gradient with
    respect to the layer's output; None unless asked for."""


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The linear and conv layers of :func:`prunable_weights`, by their weight's state-dict name."""
    return {
        f"{name}.weight" if name else "weight": module
        for name, module in model.named_modules()
        if isinstance(module, PRUNABLE_LAYERS)
    }


def _per_feature(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``x`` (a layer's input or output) as rows of features: Linear's last dim, a conv's channels (dim 1)."""
    x = x.detach().float()
    return x.reshape(-1, x.shape[-1]) if isinstance(module, nn.Linear) else x.transpose(0, 1).flatten(1).T


def input_statistics(model: nn.Module, ctx: CompressionContext, batches: int, gradients: bool = False) -> InputStatistics:
    """The inputs of every prunable layer over the images of :func:`saliency_batches`, the model in eval mode running
    :func:`saliency_loss`; with ``gradients``, also the loss's gradients at the layers' outputs (one backward pass per
    batch; an image's output depends on that image only, so each image's gradient is squared on its own).

    Raises ValueError naming the layers that saw no input (their weights could not be scored).
    """
    modules = prunable_layers(model)
    squares: dict[str, torch.Tensor] = {}
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    grad_squares: dict[str, torch.Tensor] = {}

    def recorder(name: str, module: nn.Module) -> Callable[..., None]:
        def record(_: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            rows = _per_feature(module, inputs[0])
            squares[name] = squares.get(name, 0) + rows.pow(2).sum(0)
            sums[name] = sums.get(name, 0) + rows.sum(0)
            counts[name] = counts.get(name, 0) + rows.shape[0]
            if gradients and output.requires_grad:

                def record_grad(g: torch.Tensor) -> None:
                    grad_squares[name] = grad_squares.get(name, 0) + _per_feature(module, g).pow(2).sum(0)

                output.register_hook(record_grad)

        return record

    handles = [module.register_forward_hook(recorder(name, module)) for name, module in modules.items()]
    generator = torch.Generator(device=ctx.data.train.device).manual_seed(ctx.seed)
    was_training = model.training
    model.eval()
    try:
        for xb, yb in saliency_batches(ctx, batches):
            with torch.set_grad_enabled(gradients):
                loss = saliency_loss(model, ctx, xb, yb, generator)
            if gradients:
                loss.backward()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    unseen = sorted(set(modules) - set(squares))
    if unseen:
        raise ValueError(f"layers {unseen} received no input during calibration; their weights cannot be scored")
    return InputStatistics(
        norms={name: total.sqrt() for name, total in squares.items()},
        means={name: total / counts[name] for name, total in sums.items()},
        grad_norms=(
            {name: grad_squares[name].sqrt() if name in grad_squares else torch.zeros(_outputs(m)) for name, m in modules.items()}
            if gradients
            else None
        ),
    )


def _outputs(module: nn.Module) -> int:
    """Output features (Linear) or channels (conv) of a prunable layer."""
    w = module.weight
    return int(w.shape[1]) * int(module.groups) if isinstance(module, nn.ConvTranspose2d) else int(w.shape[0])  # type: ignore[arg-type]


def per_output_weight(module: nn.Module, values: torch.Tensor) -> torch.Tensor:
    """``values`` (one per output feature or channel of ``module``) broadcast to the shape of its weight."""
    w = module.weight
    if isinstance(module, nn.ConvTranspose2d):  # weight (in, out / groups, kh, kw): input c feeds its group's outputs
        groups = int(module.groups)  # type: ignore[arg-type]
        per_group = values.reshape(groups, -1).repeat_interleave(w.shape[0] // groups, dim=0)
        return per_group[:, :, None, None].expand_as(w)
    return values.reshape(-1, *([1] * (w.dim() - 1))).expand_as(w)


def per_weight(module: nn.Module, values: torch.Tensor) -> torch.Tensor:
    """``values`` (one per input feature or channel of ``module``) broadcast to the shape of its weight."""
    w = module.weight
    if isinstance(module, nn.Linear):
        return values[None, :].expand_as(w)
    if isinstance(module, nn.ConvTranspose2d):  # weight (in, out / groups, kh, kw)
        return values[:, None, None, None].expand_as(w)
    # Conv2d weight (out, in / groups, kh, kw): output o reads the input channels of its group.
    groups = int(module.groups)  # type: ignore[arg-type]
    per_group = values.reshape(groups, -1).repeat_interleave(w.shape[0] // groups, dim=0)
    return per_group[:, :, None, None].expand_as(w)


def wanda_weight_scores(model: nn.Module, stats: InputStatistics) -> dict[str, torch.Tensor]:
    """Wanda's importance ``|w_ij| * ||x_j||_2`` (Sun et al. 2023), ``x_j`` the weight's input over calibration batches.

    A weight on an input that is always zero scores 0 and is pruned first, whatever its size. Each layer's norms are
    divided by their root mean square: Wanda compares weights within one output row, where a per-layer constant changes
    no ranking, and the division puts layers on the scale of their weights, so global scope compares them as magnitude
    pruning does. Conv kernels take their input channel's norm at every kernel position.
    """
    scores = {}
    for name, module in prunable_layers(model).items():
        n = _rms_normalized(stats.norms[name])
        w = module.weight.detach().abs()
        scores[name] = w * per_weight(module, n).to(w.dtype)
    return scores


def _rms_normalized(values: torch.Tensor) -> torch.Tensor:
    rms = values.pow(2).mean().sqrt()
    return values / rms if rms > 0 else values


def kfac_weight_scores(model: nn.Module, stats: InputStatistics) -> dict[str, torch.Tensor]:
    """``|w_ij| * ||x_j|| * ||g_i||``, ``g_i`` the loss's gradient at output ``i``: the square root of Optimal Brain
    Damage's saliency ``w^2 F`` with the Fisher diagonal factored as K-FAC does (``E[x_j^2] E[g_i^2]``).

    Wanda's score times the output's gradient norm: a weight into an output the loss does not depend on (a decoder's
    logit of a pixel that is always 0, saturated) scores 0 as does one on an input that is always 0. Both norms are
    divided by their layer's root mean square, as in :func:`wanda_weight_scores`.
    """
    if stats.grad_norms is None:
        raise ValueError("the kfac criterion needs the output gradients (input_statistics(..., gradients=True))")
    wanda = wanda_weight_scores(model, stats)
    return {
        name: wanda[name] * per_output_weight(module, _rms_normalized(stats.grad_norms[name])).to(wanda[name].dtype)
        for name, module in prunable_layers(model).items()
    }


@torch.no_grad()
def compensate_biases(model: nn.Module, masks: dict[str, torch.Tensor], means: dict[str, torch.Tensor]) -> None:
    """Add to each output's bias what its pruned weights gave on the mean input: ``b_i += sum_j w_ij * mean(x_j)``
    over the pruned ``j`` (as FLAP, An et al. 2024), so the layer's mean output is unchanged. An output whose input
    weights are all pruned keeps its mean (a decoder's logit for a pixel that is always 0 stays very negative).
    Conv layers ignore padding (every kernel position is taken to see the channel mean); a transposed conv of stride
    ``s`` adds the average over its output positions (each gets ``1/s`` of the taps along each axis). Layers without
    a bias are left as they are.
    """
    for name, module in prunable_layers(model).items():
        if name not in masks or module.bias is None:
            continue
        w = module.weight
        removed = w * (~masks[name].to(w.device)).to(w.dtype) * per_weight(module, means[name].to(w.dtype))
        if isinstance(module, nn.ConvTranspose2d):  # (in, out / groups, kh, kw): outputs are dim 1, per group
            groups = int(module.groups)  # type: ignore[arg-type]
            per_in = removed.sum(dim=(2, 3))  # (in, out / groups)
            shift = per_in.reshape(groups, -1, per_in.shape[1]).sum(dim=1).reshape(-1)
            # With stride s an output position receives 1/s of the taps along each axis: the shift is their average.
            shift = shift / (int(module.stride[0]) * int(module.stride[1]))
        else:
            shift = removed.flatten(1).sum(dim=1)
        module.bias.add_(shift)


class UnstructuredPrunerCode(_UnstructuredPruner):
    """The work of :class:`~vae_automl.builtin.pruning._UnstructuredPruner`."""

    def scores(self, model: VAE, params: dict[str, Any], ctx: CompressionContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def apply(self, model: VAE, params: dict[str, Any], ctx: CompressionContext) -> VAE:
        values = self.resolve_params(params)
        torch.manual_seed(ctx.seed)
        pruned = copy.deepcopy(model).to(ctx.device)
        scores = self.scores(pruned, values, ctx)
        magnitudes = {name: w.detach().abs() for name, w in prunable_weights(pruned).items()}
        masks = masks_from_scores(scores, values["sparsity"], values["scope"], magnitudes)
        if values.get("bias_compensation"):
            compensate_biases(pruned, masks, input_statistics(pruned, ctx, values["batches"]).means)
        apply_masks(pruned, masks)
        fine_tune_masked(pruned, masks, values["finetune_epochs"], ctx)
        mark_sparse(pruned, masks)
        return pruned.eval()


def ramped_sparsity(final: float, step: int, ramp_steps: int) -> float:
    """Zhu & Gupta (2017)'s cubic ramp from 0: ``final x (1 - (1 - step / ramp_steps)^3)``, ``final`` from ``ramp_steps`` on.

    It prunes fast while many redundant weights are left and slowly near the end, when few are.
    """
    if step >= ramp_steps:
        return final
    return final * (1.0 - (1.0 - step / ramp_steps) ** 3)


class MagnitudePrunerCode(MagnitudePruner):
    """The work of :class:`~vae_automl.builtin.pruning.MagnitudePruner`."""

    def scores(self, model: VAE, params: dict[str, Any], ctx: CompressionContext) -> dict[str, torch.Tensor]:
        if params["criterion"] == "wanda":
            return wanda_weight_scores(model, input_statistics(model, ctx, params["batches"]))
        if params["criterion"] == "kfac":
            return kfac_weight_scores(model, input_statistics(model, ctx, params["batches"], gradients=True))
        return {name: w.detach().abs() for name, w in prunable_weights(model).items()}

    def apply(self, model: VAE, params: dict[str, Any], ctx: CompressionContext) -> VAE:
        values = self.resolve_params(params)
        if values["ramp_epochs"] == 0:
            return UnstructuredPrunerCode.apply(self, model, params, ctx)  # type: ignore[arg-type]  # self: the declaration
        torch.manual_seed(ctx.seed)
        pruned = copy.deepcopy(model).to(ctx.device)
        sparsity, scope = values["sparsity"], values["scope"]
        steps_per_epoch = ctx.train_config.steps_per_epoch(len(ctx.data.train))
        ramp_steps = values["ramp_epochs"] * steps_per_epoch
        # The masks follow the ramp a few times per epoch (Zhu & Gupta prune every 100-1000 steps of far longer runs).
        every = max(1, steps_per_epoch // RAMP_UPDATES_PER_EPOCH)
        state: dict[str, Any] = {"step": 0, "masks": masks_from_scores(self.scores(pruned, values, ctx), 0.0, scope)}

        def follow_the_ramp(m: nn.Module) -> None:
            state["step"] += 1
            step = state["step"]
            apply_masks(m, state["masks"])  # first: the optimizer step moved the pruned weights off zero
            if step <= ramp_steps and (step % every == 0 or step == ramp_steps):
                # Weights pruned earlier are zero again, so they rank lowest: the pruned set only grows.
                state["masks"] = masks_from_scores(
                    self.scores(m, values, ctx), ramped_sparsity(sparsity, step, ramp_steps), scope
                )
                apply_masks(m, state["masks"])

        ctx.fine_tune(pruned, values["finetune_epochs"], after_step=follow_the_ramp)
        # Fine-tuning may be skipped (a trial measuring shapes only): the final cut is then made at once.
        masks = masks_from_scores(self.scores(pruned, values, ctx), sparsity, scope)
        apply_masks(pruned, masks)
        mark_sparse(pruned, masks)
        return pruned.eval()


class TaylorPrunerCode(TaylorPruner):
    """The work of :class:`~vae_automl.builtin.pruning.TaylorPruner`."""

    def scores(self, model: VAE, params: dict[str, Any], ctx: CompressionContext) -> dict[str, torch.Tensor]:
        return taylor_weight_scores(model, ctx, params["batches"])


class L1PrunerCode(L1Pruner):
    """The work of :class:`~vae_automl.builtin.pruning.L1Pruner`."""

    def scores(self, model: VAE, params: dict[str, Any], ctx: CompressionContext) -> dict[str, torch.Tensor]:
        names = tuple(prunable_weights(model))
        strength = float(params["l1_strength"])

        def l1_penalty(m: VAE, x: torch.Tensor) -> torch.Tensor:
            # Looked up on the model being trained (the trainer may hand in the same object only).
            current = prunable_weights(m)
            return strength * sum(current[n].abs().sum() for n in names)

        ctx.fine_tune(model, params["l1_epochs"], extra_loss=l1_penalty)
        return {name: w.detach().abs() for name, w in prunable_weights(model).items()}


def magnitude_unit_scores(model: VAE, groups: list[ChannelGroup]) -> list[torch.Tensor]:
    """Per unit: L2 norm of its incoming weights times L2 norm of its outgoing weights.

    The product is unchanged by rescaling a ReLU unit's in and out weights
    in opposite directions, unlike either norm alone.
    """
    state = model.state_dict()
    weights = {n for n, _ in model.named_parameters()}  # a traced group also slices BatchNorm statistics: not weights
    scores = []
    for g in groups:
        name, dim = g.producer
        w_in = state[name].detach().float().transpose(0, dim).reshape(g.size, -1).norm(dim=1)
        outgoing = [
            state[n].detach().float().transpose(0, d).reshape(g.size, -1)
            for n, d, _ in g.slices
            if n != name and not n.endswith(".bias") and n in weights
        ]
        w_out = torch.cat(outgoing, dim=1).norm(dim=1)
        scores.append(w_in * w_out)
    return scores


def taylor_unit_scores(model: VAE, groups: list[ChannelGroup], ctx: CompressionContext, batches: int) -> list[torch.Tensor]:
    """Per unit: ``sum over images of |sum over positions of a * dL/da|`` (Molchanov et al. 2017)."""
    modules = dict(model.named_modules())
    captured: dict[int, torch.Tensor] = {}
    handles = []
    for k, g in enumerate(groups):

        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor, _k: int = k) -> None:
            output.retain_grad()
            captured[_k] = output

        handles.append(modules[g.activation].register_forward_hook(hook))
    scores = [torch.zeros(g.size, device=ctx.data.train.device) for g in groups]
    generator = torch.Generator(device=ctx.data.train.device).manual_seed(ctx.seed)
    was_training = model.training
    model.train()
    try:
        for xb, yb in saliency_batches(ctx, batches):
            captured.clear()
            model.zero_grad(set_to_none=True)
            saliency_loss(model, ctx, xb, yb, generator).backward()
            for k, g in enumerate(groups):
                a = captured[k]
                # Linear layers give B x units; conv layers B x C x H x W; the decoder's
                # linear input of a conv VAE is reshaped afterwards, so this covers both.
                contribution = (a * a.grad).reshape(len(xb), g.size, -1).sum(2).abs().sum(0)
                scores[k] += contribution.detach()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return scores


def shrink(model: VAE, groups: list[ChannelGroup], keep: list[torch.Tensor], build_model: Callable[[dict[str, Any]], VAE]) -> VAE:
    """A new model keeping unit indices ``keep[k]`` of each group, rebuilt from the updated config.

    A group with a ``config_key`` sets that size in the config; a traced group
    (``plan_root``, a user's model) appends its removed indices to the config's
    ``pruning_plan``, which the architecture's build replays. Loading the
    sliced tensors into ``build_model(new_config)`` with ``strict=True``
    checks that config and shapes agree.
    """
    state = {name: t.detach().clone() for name, t in model.state_dict().items()}
    config = copy.deepcopy(model.config)
    for g, idx in zip(groups, keep):
        idx = idx.sort().values.to("cpu")
        for name, dim, block in g.slices:
            tensor = state[name]
            full = (idx[:, None] * block + torch.arange(block)[None, :]).flatten().to(tensor.device)
            state[name] = tensor.index_select(dim, full)
        if g.config_key == "latent_dim":
            config["latent_dim"] = len(idx)
        elif g.config_key is not None:
            config[g.config_key] = list(config[g.config_key])
            config[g.config_key][g.config_index] = len(idx)
        if g.plan_root is not None:
            removed = sorted(set(range(g.size)) - set(idx.tolist()))
            if removed:
                config[PRUNING_PLAN] = [*config.get(PRUNING_PLAN, []), [g.plan_root, removed]]
    new = build_model(config)
    new.load_state_dict(state, strict=True)
    new.encodings = {name: dict(spec) for name, spec in model.encodings.items() if name in state}
    device = next(model.parameters()).device
    return new.to(device)


def keep_top(groups: list[ChannelGroup], scores: list[torch.Tensor], counts: list[int]) -> list[torch.Tensor]:
    """Indices of the ``counts[k]`` highest-scoring units per group (tied groups share their partner's count)."""
    keep = []
    for k, (g, s) in enumerate(zip(groups, scores)):
        count = counts[g.tied_to] if g.tied_to is not None else counts[k]
        keep.append(torch.topk(s.float(), max(1, min(count, g.size)), sorted=False).indices)
    return keep


class StructuredPrunerCode(StructuredPruner):
    """The work of :class:`~vae_automl.builtin.pruning.StructuredPruner`."""

    def apply(self, model: VAE, params: dict[str, Any], ctx: CompressionContext) -> VAE:
        values = self.resolve_params(params)
        if ctx.build_model is None:
            raise ValueError("structured pruning rebuilds the model from its config and needs ctx.build_model")
        torch.manual_seed(ctx.seed)
        work = copy.deepcopy(model).to(ctx.device)
        groups = channel_groups(work, architecture=ctx.architecture)
        if values["criterion"] == "taylor":
            scores = taylor_unit_scores(work, groups, ctx, values["batches"])
        else:
            scores = magnitude_unit_scores(work, groups)
        counts = [max(1, round(g.size * (1.0 - values["ratio"]))) for g in groups]
        pruned = shrink(work, groups, keep_top(groups, scores, counts), ctx.build_model)
        if values["finetune_epochs"] > 0:
            ctx.fine_tune(pruned, values["finetune_epochs"])
        return pruned.eval()
