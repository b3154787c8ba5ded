"""Layer groups: which Linear / Conv2d / ConvTranspose2d layers of a VAE are encoder, latent heads or decoder.

Compressors that treat parts of a model differently (bits per group,
structured pruning, distillation's shrunk-teacher start) ask the model's
:class:`~vae_automl.components.Architecture` through :func:`layer_groups`
and :func:`channel_groups`; they never guess from module names.

The rule for a model whose architecture declares no groups (a user's own
model given as ``base_model:``, see docs/bring-your-own-model.md), applied by
:func:`traced_layer_groups` on one batch:

1. the layers are the model's ``Linear``, ``Conv2d`` and ``ConvTranspose2d``
   modules (everything else stays float32 and counts in the size);
2. a layer that runs during ``encode(x)`` is in ``heads`` when its output has
   ``latent_dim`` or ``2 * latent_dim`` values per image, otherwise in
   ``encoder``; a layer that runs during ``decode(z)`` is in ``decoder``;
3. if a layer runs in both, or a group comes out empty, the model has no
   groups: per-group settings are refused (never a silent default), and
   the YAML can name the groups instead (``base_model.groups``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vae_automl.components import GROUP_NAMES as GROUP_NAMES  # re-exported: config and base_model read it here
from vae_automl.registry import get_registry

if TYPE_CHECKING:
    from vae_automl.components import Architecture
    from vae_automl.vae import VAE

LAYER_TYPES = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)

LayerGroups = dict[str, tuple[str, ...]]

PRUNING_PLAN = "pruning_plan"
"""The config key listing the units removed from a model rebuilt by replaying them: ``[[layer, [indices]], ...]``."""


@dataclass(frozen=True)
class ChannelGroup:
    """Hidden units (neurons or channels) that are removed together across the tensors they index.

    Attributes:
        config_key: the config list holding this group's size (``encoder_widths``, ...), or None.
        config_index: the position in that list.
        size: units in the group now.
        producer: ``(weight_name, dim)`` of the layer computing the units (its norm ranks them).
        slices: every ``(tensor_name, dim, block)`` indexed by the group; ``block`` consecutive
            entries per unit (a flattened ``C x H x W`` feature map has ``H * W`` per channel).
        activation: the module whose output holds the units (for the Taylor criterion).
        tied_to: index of an earlier group whose kept count this one must equal (a shape the
            config cannot set on its own).
        plan_root: for a group traced in a user's model (:mod:`vae_automl.traced_pruning`), the
            layer whose outputs are the units, named inside the user's module; :func:`shrink
            <vae_automl.builtin.pruning_impl.shrink>` appends ``[plan_root, removed indices]`` to the
            config's :data:`PRUNING_PLAN`, which the architecture's ``build`` replays.
    """

    config_key: str | None
    config_index: int
    size: int
    producer: tuple[str, int]
    slices: tuple[tuple[str, int, int], ...]
    activation: str
    tied_to: int | None = None
    plan_root: str | None = None


def layer_names(model: nn.Module) -> list[str]:
    """Module names of every Linear / Conv2d / ConvTranspose2d layer, in registration order."""
    return [name for name, module in model.named_modules() if isinstance(module, LAYER_TYPES)]


def groups_by_prefix(model: nn.Module, prefixes: dict[str, tuple[str, ...]]) -> LayerGroups:
    """Layer groups from module-name prefixes (``{"heads": ("mu", "logvar")}``): a layer joins the first group that matches."""
    out: dict[str, list[str]] = {g: [] for g in prefixes}
    for name in layer_names(model):
        for group, heads in prefixes.items():
            if any(name == p or name.startswith(p + ".") for p in heads):
                out[group].append(name)
                break
    return {g: tuple(v) for g, v in out.items()}


@torch.no_grad()
def traced_layer_groups(model: VAE, x: torch.Tensor) -> LayerGroups:
    """The documented rule (module docstring) on one batch ``x``; ``{}`` when no groups can be found."""
    modules = {name: m for name, m in model.named_modules() if isinstance(m, LAYER_TYPES)}
    calls: dict[str, list[tuple[str, int]]] = {"encode": [], "decode": []}
    phase = ["encode"]

    def hook_for(name: str) -> Any:
        def hook(_m: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            calls[phase[0]].append((name, output[0].numel()))

        return hook

    handles = [m.register_forward_hook(hook_for(n)) for n, m in modules.items()]
    was_training = model.training
    model.eval()
    try:
        mu, _ = model.encode(x)
        phase[0] = "decode"
        model.decode(mu)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    enc_names = dict.fromkeys(n for n, _ in calls["encode"])
    dec_names = dict.fromkeys(n for n, _ in calls["decode"])
    if set(enc_names) & set(dec_names):
        return {}
    latent = int(mu.shape[1])
    heads = tuple(dict.fromkeys(n for n, size in calls["encode"] if size in (latent, 2 * latent)))
    groups = {"encoder": tuple(n for n in enc_names if n not in heads), "heads": heads, "decoder": tuple(dec_names)}
    return groups if all(groups.values()) else {}


def architecture_of(model: VAE, architecture: Architecture | None = None) -> Architecture:
    """``architecture`` if given, else the registered architecture named by ``model.config``."""
    if architecture is not None:
        return architecture

    return get_registry().architectures.get(model.config["architecture"])


def layer_groups(model: VAE, architecture: Architecture | None = None) -> LayerGroups:
    """The model's layer groups as its architecture declares them (``{}``: none)."""
    return architecture_of(model, architecture).layer_groups(model)


def group_of_layers(groups: LayerGroups) -> dict[str, str]:
    """Layer module name -> its group."""
    return {layer: group for group, layers in groups.items() for layer in layers}


def channel_groups(model: VAE, include_latent: bool = False, architecture: Architecture | None = None) -> list[ChannelGroup]:
    """The prunable unit groups of ``model`` as its architecture declares them (ValueError when it declares none)."""
    return architecture_of(model, architecture).channel_groups(model, include_latent)
