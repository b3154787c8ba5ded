"""The code of the built-in pruners (:mod:`vae_automl.builtin.pruning` declares them): scores, masks, shrinking."""

from __future__ import annotations

import copy
from collections.abc import Callable
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


def masks_from_scores(scores: dict[str, torch.Tensor], sparsity: float, scope: str) -> dict[str, torch.Tensor]:
    """Boolean keep-masks removing the ``sparsity`` fraction of lowest scores, globally or per tensor."""
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


class UnstructuredPrunerCode(_UnstructuredPruner):
    """The work of :class:`~vae_automl.builtin.pruning._UnstructuredPruner`."""

    def scores(self, model: VAE, params: dict[str, Any], ctx: CompressionContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def apply(self, model: VAE, params: dict[str, Any], ctx: CompressionContext) -> VAE:
        values = self.resolve_params(params)
        torch.manual_seed(ctx.seed)
        pruned = copy.deepcopy(model).to(ctx.device)
        scores = self.scores(pruned, values, ctx)
        masks = masks_from_scores(scores, values["sparsity"], values["scope"])
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
