"""A user's own trained VAE as the starting point of a study (``base_model:`` in the YAML, ``base_model=`` in Python).

The model protocol (docs/bring-your-own-model.md): any ``nn.Module`` with

* ``encode(x) -> (mu, logvar)``, ``x`` an ``N x C x H x W`` float tensor in
  [0, 1], ``mu`` and ``logvar`` both ``N x latent_dim``;
* ``decode(z) -> logits`` (Bernoulli) or the mean (Gaussian), shaped like ``x``.

It is built by a factory (``"pkg.module:build"`` or ``"path/to/file.py:build"``,
called with ``kwargs``) and given its weights from a checkpoint: a
``state_dict`` in safetensors, or a ``.pt``/``.pth`` file read with
``torch.load(weights_only=True)`` (no arbitrary unpickling).

Inside vae-automl it is wrapped as a :class:`UserVAE` of architecture
``base_model`` whose config records the factory, its kwargs and the
checkpoint's sha256, so the packed files, export and ``vae_automl.load``
rebuild it by importing the factory again.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file
from torch import nn

from vae_automl.components import Architecture
from vae_automl.config import BaseModelConfig
from vae_automl.errors import ConfigError
from vae_automl.layers import GROUP_NAMES, PRUNING_PLAN, ChannelGroup, LayerGroups, groups_by_prefix, traced_layer_groups
from vae_automl.vae import LIKELIHOODS, VAE

if TYPE_CHECKING:
    from vae_automl.traced_pruning import TracedGroups

ARCHITECTURE_NAME = "base_model"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth")
WRAPPED = "net"
"""The attribute holding the user's module: its tensors appear as ``net.<name>`` in our files."""

# Modules given as instances through the Python API, by the sha256 of their weights, so this process can
# rebuild them without importing a factory (other processes need an importable factory).
_INSTANCES: dict[str, nn.Module] = {}


class BaseModelError(ConfigError):
    """The user's model breaks the protocol, or its factory or checkpoint cannot be used."""


def import_factory(spec: str) -> Callable[..., nn.Module]:
    """The callable named by ``"pkg.module:name"`` or ``"path/to/file.py:name"``; BaseModelError naming it otherwise."""
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise BaseModelError(f"base_model.factory {spec!r} must be 'pkg.module:callable' or 'path/to/file.py:callable'")
    try:
        if module_part.endswith(".py"):
            path = Path(module_part)
            if not path.is_file():
                raise BaseModelError(f"base_model.factory {spec!r}: no such file {path}")
            name = "vae_automl_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
            module = sys.modules.get(name)
            if module is None:
                loader_spec = importlib.util.spec_from_file_location(name, path)
                assert loader_spec is not None and loader_spec.loader is not None
                module = importlib.util.module_from_spec(loader_spec)
                sys.modules[name] = module
                try:
                    loader_spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
        else:
            module = importlib.import_module(module_part)
    except BaseModelError:
        raise
    except Exception as exc:
        raise BaseModelError(f"base_model.factory {spec!r}: cannot import {module_part}: {type(exc).__name__}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        raise BaseModelError(f"base_model.factory {spec!r}: {module_part} has no callable {attr!r}")
    return target


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors: safetensors, or torch.load(weights_only=True) for .pt/.pth."""
    path = Path(path)
    if not path.is_file():
        raise BaseModelError(f"base_model.checkpoint: no such file {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        if path.suffix in (".pt", ".pth"):
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise BaseModelError(
                f"base_model.checkpoint {path}: use a .safetensors state_dict "
                f"(or .pt/.pth, read with weights_only=True), not {path.suffix or 'no suffix'}"
            )
    except BaseModelError:
        raise
    except Exception as exc:
        raise BaseModelError(f"base_model.checkpoint {path}: cannot read: {type(exc).__name__}: {exc}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BaseModelError(f"base_model.checkpoint {path}: expected a state_dict (name -> tensor)")
    return state


def check_protocol(module: nn.Module, x: torch.Tensor, factory: str) -> int:
    """Run the protocol on one batch; return ``latent_dim`` or raise BaseModelError naming the factory and the fault."""
    who = f"base_model {factory!r}"
    for method in ("encode", "decode"):
        if not callable(getattr(module, method, None)):
            raise BaseModelError(
                f"{who}: the model has no {method}() method; the protocol is encode(x) -> (mu, logvar) "
                "and decode(z) -> logits or mean"
            )
    shape = tuple(x.shape[1:])
    with torch.no_grad():
        try:
            out = module.encode(x)
        except Exception as exc:
            raise BaseModelError(
                f"{who}: encode failed on a batch of the dataset's images (N x C x H x W = "
                f"{tuple(x.shape)}); does the model expect another image size? "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
            raise BaseModelError(f"{who}: encode(x) must return (mu, logvar), got {type(out).__name__}")
        mu, logvar = out
        if mu.dim() != 2 or mu.shape[0] != len(x) or logvar.shape != mu.shape:
            raise BaseModelError(
                f"{who}: encode(x) must give mu and logvar of shape N x latent_dim, got "
                f"{tuple(mu.shape)} and {tuple(logvar.shape)} for N = {len(x)}"
            )
        try:
            decoded = module.decode(mu)
        except Exception as exc:
            raise BaseModelError(f"{who}: decode failed on z of shape {tuple(mu.shape)}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(decoded, torch.Tensor) or tuple(decoded.shape) != tuple(x.shape):
            got = tuple(decoded.shape) if isinstance(decoded, torch.Tensor) else type(decoded).__name__
            raise BaseModelError(
                f"{who}: decode(z) must give the images' shape {tuple(x.shape)} (the dataset's C x H x W is {shape}), got {got}"
            )
        for name, t in (("mu", mu), ("logvar", logvar), ("decode(mu)", decoded)):
            if not torch.isfinite(t).all():
                raise BaseModelError(f"{who}: {name} has non-finite values on the dataset's images")
    return int(mu.shape[1])


class UserVAE(VAE):
    """A user's module behind the :class:`VAE` interface; its weights are ``net.*``."""

    def __init__(self, config: dict[str, Any], module: nn.Module | None = None) -> None:
        super().__init__(config)
        self.net = module if module is not None else build_user_module(config)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net.encode(x)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.net.decode(z)


def build_user_module(config: dict[str, Any]) -> nn.Module:
    """A module of a ``base_model`` config, its weights to be loaded by the caller: from the factory, or a copy of
    the instance this process was given (``base_model=module`` without a factory)."""
    instance = _INSTANCES.get(config.get("checkpoint_sha256") or "")
    if instance is not None and config.get("factory") is None:
        return with_plan(copy.deepcopy(instance), config)
    factory = config.get("factory")
    if not factory:
        raise BaseModelError(
            "this base_model was given as a module instance without a factory, so it can only be "
            "rebuilt in the process that gave it; pass base_model={'factory': ..., ...} to export or load it"
        )
    module = import_factory(factory)(**config.get("kwargs", {}))
    if not isinstance(module, nn.Module):
        raise BaseModelError(f"base_model.factory {factory!r} returned {type(module).__name__}, not a torch.nn.Module")
    return with_plan(module, config)


def with_plan(module: nn.Module, config: dict[str, Any]) -> nn.Module:
    """``module`` with the units of the config's pruning plan removed (structured pruning recorded them)."""
    plan = config.get(PRUNING_PLAN)
    if not plan:
        return module
    # deferred: Torch-Pruning is needed only for a structurally pruned user model
    from vae_automl.traced_pruning import replay

    try:
        return replay(module, plan, config["input_shape"])
    except Exception as exc:
        raise BaseModelError(
            f"base_model {config.get('factory')!r}: cannot replay the recorded structured pruning {plan} on the "
            f"model the factory builds now (was its code changed?): {type(exc).__name__}: {exc}"
        ) from exc


class BaseModelArchitecture(Architecture):
    """Rebuilds a user's model from its recorded factory (never searched: ``base_model:`` selects it)."""

    name = ARCHITECTURE_NAME
    help = "a user's own trained VAE given as base_model: (factory + checkpoint); see docs/bring-your-own-model.md"
    group_names = GROUP_NAMES

    def config_from_params(self, values: dict[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
        raise ValueError("the base_model architecture is chosen by base_model: in the YAML, not under architecture:")

    def build(self, config: dict[str, Any]) -> VAE:
        return UserVAE(config)

    def layer_groups(self, model: VAE) -> LayerGroups:
        named = model.config.get("groups")
        if named:
            return groups_by_prefix(model, {g: tuple(f"{WRAPPED}.{p}" for p in named.get(g, ())) for g in GROUP_NAMES})
        x = torch.rand(2, *model.input_shape, generator=torch.Generator().manual_seed(0))
        return traced_layer_groups(model, x.to(next(model.parameters()).device))

    def channel_groups(self, model: VAE, include_latent: bool = False) -> list[ChannelGroup]:
        """The unit groups Torch-Pruning's DepGraph traces in the user's module (:mod:`vae_automl.traced_pruning`).

        Groups whose removal breaks the user's code (a hard-coded ``view``) or
        changes the protocol's output shapes are left out, and logged. The
        latent group, with ``include_latent``, is appended when tracing finds
        one; ValueError when no group can be removed.
        """
        traced = traced_groups(model)
        groups = list(traced.groups)
        if include_latent and traced.latent is not None:
            groups.append(traced.latent)
        if not groups:
            reasons = "; ".join(f"{layer}: {why}" for layer, why in traced.excluded) or "no Linear or conv layers"
            raise ValueError(f"base_model {model.config.get('factory')!r}: no units can be removed ({reasons})")
        return groups


_TRACED: dict[str, TracedGroups] = {}


def traced_groups(model: VAE) -> TracedGroups:
    """:func:`~vae_automl.traced_pruning.traced_channel_groups` of a UserVAE, once per config (the shapes follow from it)."""
    # deferred: Torch-Pruning is needed only for structured pruning of a user model
    from vae_automl.traced_pruning import log_exclusions, traced_channel_groups

    key = json.dumps(model.config, sort_keys=True, default=str)
    if key not in _TRACED:
        _TRACED[key] = traced_channel_groups(model.net, model.input_shape, prefix=f"{WRAPPED}.")
        # once per user model, however it was pruned since
        who = json.dumps([model.config.get(k) for k in ("factory", "kwargs", "checkpoint_sha256")], default=str)
        log_exclusions(who, f"base_model {model.config.get('factory')!r}", _TRACED[key])
    return _TRACED[key]


def wrap(config: BaseModelConfig, images: torch.Tensor) -> VAE:
    """The user's model, weights loaded and protocol checked on ``images`` (one batch of the dataset), as a UserVAE."""
    if config.likelihood not in LIKELIHOODS:
        raise BaseModelError(f"base_model.likelihood must be one of {', '.join(LIKELIHOODS)}, got {config.likelihood!r}")
    factory, kwargs, likelihood, groups = config.factory, dict(config.kwargs), config.likelihood, config.groups
    if config.instance is not None:
        if not isinstance(config.instance, nn.Module):
            raise BaseModelError(f"base_model= must be a torch.nn.Module or a mapping, got {type(config.instance).__name__}")
        sha = config.checkpoint_sha256()
        assert sha is not None
        _INSTANCES[sha] = copy.deepcopy(config.instance).cpu()
        module = copy.deepcopy(config.instance)
        if factory is not None:  # the factory must rebuild the same shapes, or export/load would fail later
            build_user_module({"factory": factory, "kwargs": kwargs}).load_state_dict(module.state_dict())
    else:
        # Without a checkpoint the factory's initialization is the model: seeded, so the driver, every worker
        # and a resumed run start from the same weights (and the baseline row is theirs).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            module = build_user_module({"factory": factory, "kwargs": kwargs})
        sha = None
        if config.checkpoint is not None:
            state = load_state_dict(config.checkpoint)
            try:
                module.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise BaseModelError(
                    f"base_model {factory!r}: checkpoint {config.checkpoint} does not fit the model the factory built: {exc}"
                ) from exc
            sha = config.checkpoint_sha256()
    module = module.to(images.device).eval()
    latent_dim = check_protocol(module, images, factory or type(module).__qualname__)
    model_config: dict[str, Any] = {
        "architecture": ARCHITECTURE_NAME,
        "factory": factory,
        "kwargs": kwargs,
        "input_shape": list(images.shape[1:]),
        "latent_dim": latent_dim,
        "likelihood": likelihood,
        "checkpoint_sha256": sha,
    }
    if groups:
        model_config["groups"] = {g: list(v) for g, v in groups.items()}
    model = UserVAE(model_config, module).to(images.device)
    if likelihood == "gaussian":
        fit_log_sigma(model, images)
    return model.eval()


@torch.no_grad()
def fit_log_sigma(model: VAE, x: torch.Tensor) -> None:
    """The per-pixel Gaussian scale that maximizes the likelihood of ``x`` under the model's mean.

    The user gives only the mean.
    """
    mu, _ = model.encode(x)
    residual = (x - model.decode(mu)).pow(2).mean(0)
    model.log_sigma.copy_(0.5 * torch.log(residual.clamp_min(1e-6)))
