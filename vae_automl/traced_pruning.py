"""Channel groups of a model whose architecture cannot declare them (a user's ``base_model:``), traced by Torch-Pruning.

Torch-Pruning's ``DependencyGraph`` (DepGraph) traces ``encode`` then
``decode`` through autograd and, for each layer's output units, returns the
group of every layer those units feed (the next layer's inputs, a flattened
feature map's ``H * W`` columns per channel, a BatchNorm's statistics).
:func:`traced_channel_groups` turns each group into a
:class:`~vae_automl.layers.ChannelGroup`, so the structured pruners score and
slice them like the built-in architectures' declared groups.

Removals are kept as data, never as a pickled module: :func:`vae_automl.builtin.pruning_impl.shrink`
appends ``[layer, removed unit indices]`` to the config's ``pruning_plan``,
and :func:`replay` rebuilds the shrunk shapes from the user's factory with
DepGraph's own ``load_pruning_history`` before the stored tensors are loaded.

Some groups cannot be removed because the user's code fixes a shape
(``view(-1, 32, 2, 2)``), or because the units are the protocol's output
(the image's channels). Each candidate group is therefore tried first: one
unit is removed from a copy and the protocol runs on a batch; a group whose
trial crashes or changes an output shape is left out, with the reason
logged once per model. A group whose trial changes only the latent size is
the latent group (``include_latent``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vae_automl.layers import ChannelGroup

logger = logging.getLogger(__name__)

# Which dim of each tensor an output / input unit indexes, for the layer types whose tensors we slice ourselves.
_LINEAR_CONV = (nn.Linear, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var")
FAILS = "the model fails once one unit is removed"


@dataclass(frozen=True)
class TracedGroups:
    """What tracing found: the removable hidden groups, the latent group (or None), and what was left out, with why."""

    groups: tuple[ChannelGroup, ...]
    latent: ChannelGroup | None
    excluded: tuple[tuple[str, str], ...]


def import_torch_pruning() -> Any:
    """The ``torch_pruning`` module, or an ImportError saying how to install it."""
    try:
        # deferred: only structured pruning of a user's model needs Torch-Pruning
        import torch_pruning
    except ImportError as exc:  # pragma: no cover - a dependency of the package
        raise ImportError("structured pruning of a base_model needs Torch-Pruning: pip install 'torch-pruning>=1.6'") from exc
    return torch_pruning


def protocol_forward(module: Any, x: torch.Tensor) -> torch.Tensor:
    """``decode(mu + exp(logvar / 2))``: both heads and the decoder in one autograd graph for DepGraph to trace."""
    mu, logvar = module.encode(x)
    return module.decode(mu + torch.exp(0.5 * logvar))


def dependency_graph(module: nn.Module, input_shape: Sequence[int]) -> Any:
    """DepGraph of ``module`` traced on one random image of ``input_shape`` (CPU, gradients on: DepGraph needs autograd)."""
    tp = import_torch_pruning()
    example = torch.rand(1, *input_shape, generator=torch.Generator().manual_seed(0))
    # DepGraph sees a layer only through the autograd graph of its weights: a frozen model (a distillation
    # teacher, a user's requires_grad_(False)) would hide its layers. The flags come back as they were.
    frozen = [p for p in module.parameters() if not p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            graph = tp.DependencyGraph()
            return graph.build_dependency(module, example_inputs=example, forward_fn=protocol_forward, verbose=False)
    finally:
        for p in frozen:
            p.requires_grad_(False)


def replay(module: nn.Module, plan: Sequence[Sequence[Any]], input_shape: Sequence[int]) -> nn.Module:
    """Remove the units ``plan`` lists (``[[layer, [unit indices]], ...]``, in order) from ``module``, in place.

    Only the shapes matter: the caller loads the stored tensors afterwards.
    """
    if not plan:
        return module
    was_training = module.training
    graph = dependency_graph(module, input_shape)
    graph.load_pruning_history([[str(layer), True, [int(i) for i in removed]] for layer, removed in plan])
    return module.train(was_training)


def _out_channels_fn(graph: Any, layer: nn.Module) -> Any:
    return graph.get_pruner_of_module(layer).prune_out_channels


def _slices(module: nn.Module, name: str, out: bool, block: int) -> list[tuple[str, int, int]] | None:
    """``(tensor, dim, block)`` of one member of a group, or None for a layer type whose tensors we do not slice."""
    if isinstance(module, nn.ConvTranspose2d) and module.groups == 1:  # weight is in x out x kH x kW
        dims = {"weight": 1, "bias": 0} if out else {"weight": 0}
    elif isinstance(module, _LINEAR_CONV) and getattr(module, "groups", 1) == 1:
        dims = {"weight": 0, "bias": 0} if out else {"weight": 1}
    elif isinstance(module, _NORMS):
        dims = dict.fromkeys(_NORM_TENSORS, 0)
    elif next(module.parameters(recurse=False), None) is None and next(module.buffers(recurse=False), None) is None:
        return []
    else:
        return None
    own = dict(module.named_parameters(recurse=False)) | dict(module.named_buffers(recurse=False))
    return [(f"{name}.{t}", d, block) for t, d in dims.items() if own.get(t) is not None]


def _protocol_shapes(module: Any, x: torch.Tensor) -> tuple[tuple[int, ...], ...]:
    with torch.no_grad():
        mu, logvar = module.encode(x)
        return tuple(mu.shape), tuple(logvar.shape), tuple(module.decode(mu).shape)


def _trial_removal(module: nn.Module, input_shape: Sequence[int], layer: str, unit: int, x: torch.Tensor) -> str:
    """Remove one unit of ``layer`` from a copy and run the protocol: "hidden", "latent", or why it cannot be removed."""
    trial = copy.deepcopy(module)
    try:
        replay(trial, [[layer, [unit]]], input_shape)
        shapes = _protocol_shapes(trial.eval(), x)
    except Exception as exc:  # the user's code: any error means these units are not removable
        return f"{FAILS} ({type(exc).__name__}: {str(exc)[:160]})"
    before = _protocol_shapes(module, x)
    if shapes == before:
        return "hidden"
    (mu, logvar, decoded), (mu0, _, decoded0) = shapes, before
    if decoded == decoded0 and mu == logvar and mu[0] == mu0[0] and mu[1] == mu0[1] - 1:
        return "latent"
    return f"removing a unit changes the protocol's output shapes {before} -> {shapes}"


def traced_channel_groups(module: nn.Module, input_shape: Sequence[int], prefix: str = "") -> TracedGroups:
    """The removable unit groups of ``module`` (a protocol model), tensor names prefixed with ``prefix``.

    Candidates are DepGraph's groups rooted at each Linear / Conv2d /
    ConvTranspose2d layer's outputs. A group is kept when every member is a
    layer type whose tensors we slice (Linear, Conv2d, ConvTranspose2d with
    ``groups=1``, BatchNorm, parameter-free ops), each member's indices are
    ``block`` consecutive entries per unit, and removing one unit keeps the
    protocol working (see the module docstring).
    """
    work = copy.deepcopy(module).cpu().eval()
    graph = dependency_graph(work, input_shape)
    names = {m: n for n, m in work.named_modules()}
    x = torch.rand(2, *input_shape, generator=torch.Generator().manual_seed(1))
    groups: list[ChannelGroup] = []
    latent: ChannelGroup | None = None
    excluded: list[tuple[str, str]] = []
    roots = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)
    for full in graph.get_all_groups(root_module_types=roots):
        root = full[0].dep.target.module
        layer = names[root]
        size = len(full[0].idxs)
        if size < 2:
            excluded.append((layer, "a single unit"))
            continue
        # First the user's code: does the model still run, with the protocol's shapes, without one unit?
        kind = _trial_removal(work, input_shape, layer, size - 1, x)
        if kind not in ("hidden", "latent"):
            excluded.append((layer, kind))
            continue
        one = graph.get_pruning_group(root, _out_channels_fn(graph, root), [size - 1])
        last = {id(item.dep.target): set(item.idxs) for item in one}
        slices: list[tuple[str, int, int]] = []
        reason = None
        for item in full:
            member = item.dep.target.module
            if not isinstance(member, nn.Module) or member not in names:
                continue  # DepGraph's own op nodes (reshape, add, ...): no tensors
            idxs = set(item.idxs)
            block = len(idxs) // size
            if (
                block * size != len(idxs)
                or idxs != set(range(len(idxs)))
                or last.get(id(item.dep.target)) != set(range((size - 1) * block, size * block))
            ):
                reason = f"{names[member]} takes the units in a layout other than {block} consecutive entries each"
                break
            member_slices = _slices(member, f"{prefix}{names[member]}", graph.is_out_channel_pruning_fn(item.dep.handler), block)
            if member_slices is None:
                grouped = f"grouped (groups={member.groups}) " if getattr(member, "groups", 1) != 1 else ""
                reason = f"{names[member]} is a {grouped}{type(member).__name__}, whose tensors structured pruning does not slice"
                break
            slices += [s for s in member_slices if s not in slices]
        if reason is not None:
            excluded.append((layer, reason))
            continue
        producer = (f"{prefix}{layer}.weight", 1 if isinstance(root, nn.ConvTranspose2d) else 0)
        key = "latent_dim" if kind == "latent" else None
        group = ChannelGroup(key, 0, size, producer, tuple(slices), f"{prefix}{layer}", plan_root=layer)
        if kind == "latent":
            latent = group
        else:
            groups.append(group)
    return TracedGroups(tuple(groups), latent, tuple(excluded))


_logged: set[str] = set()


def log_exclusions(key: str, who: str, traced: TracedGroups) -> None:
    """Log once per model (``key``) which layers' units structured pruning leaves alone, and why."""
    if key in _logged or not traced.excluded:
        return
    _logged.add(key)
    for layer, reason in traced.excluded:
        # A crash is the user's code fixing a shape (worth a warning); a single unit or an output shape is expected.
        level = logging.WARNING if reason.startswith(FAILS) else logging.INFO
        logger.log(level, "%s: structured pruning leaves the outputs of %s alone: %s", who, layer, reason)
