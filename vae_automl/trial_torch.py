"""The torch side of one trial: what :mod:`vae_automl.trial` does with a model that is a torch module.

Building and training a fresh base, the memory check before it, storing and
loading models through :mod:`vae_automl.storage`, and the deployed runtime's
name. :mod:`vae_automl.trial` imports this module only when a trial's
architecture makes torch models (``Architecture.torch_models``), so a process
that runs only torch-free trials (the synthetic trial of a scaling benchmark on
a Ray worker) never loads torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from vae_automl import runtime
from vae_automl.errors import TrialFailed, VaeAutomlError
from vae_automl.storage.format import SUFFIXES, container_of, deserialize_model, serialize_model
from vae_automl.train import train
from vae_automl.train_config import TrainConfig, TrainResult

if TYPE_CHECKING:
    from vae_automl.components import Architecture, Task
    from vae_automl.data import DataSplits
    from vae_automl.registry import Registry
    from vae_automl.vae import VAE

__all__ = [
    "BYTES_PER_TRAINED_PARAM",
    "available_memory_bytes",
    "build",
    "check_memory",
    "is_model",
    "load",
    "load_teacher",
    "rng_state",
    "runtime_name",
    "save",
    "set_device",
    "set_rng_state",
    "train",
    "train_fresh",
]

BYTES_PER_TRAINED_PARAM = 16
"""float32 weights, their gradients and Adam's two moments: what training holds per parameter, activations aside."""


def set_device(device: torch.device) -> None:
    """Make a CUDA ``device`` the current one: CUDA graphs and bare torch.cuda calls act on it."""
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` (CUDA: the driver's figure; CPU: the OS's available pages), None where unknown."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # not POSIX
        return None


def check_memory(arch: Any, model_config: dict[str, Any], device: torch.device) -> None:
    """Fail the trial before building a model whose training cannot fit in the device's free memory."""
    try:
        with torch.device("meta"):  # shapes only: no memory, no time
            n_params = sum(p.numel() for p in arch.build(model_config).parameters())
    except Exception:
        return  # an architecture that cannot build on the meta device is built for real, unestimated
    need = n_params * BYTES_PER_TRAINED_PARAM
    free = available_memory_bytes(device)
    if free is not None and need > free:
        raise TrialFailed(
            f"the model has {n_params:,} parameters: training needs about {need / 2**30:.1f} GiB for weights, gradients "
            f"and Adam state, but {device} has {free / 2**30:.1f} GiB free; narrow the architecture's ranges"
        )


def train_fresh(
    arch: Architecture,
    model_config: dict[str, Any],
    data: DataSplits,
    device: torch.device,
    task: Task,
    config: TrainConfig,
    seed: int,
    on_epoch: Callable[[VAE], Callable[[int, float], None]] | None,
) -> tuple[VAE, TrainResult]:
    """Build ``model_config`` on ``device``, seeded, and train it; ``on_epoch(model)`` makes the per-epoch callback."""
    check_memory(arch, model_config, device)
    model = build(arch, model_config, device, seed)
    task.prepare(model, data)
    result = train(model, data, config, seed=seed, on_epoch=on_epoch(model) if on_epoch else None, task=task)
    task.finalize(model)
    return model, result


def build(arch: Architecture, model_config: dict[str, Any], device: torch.device, seed: int) -> VAE:
    """An untrained model of ``model_config`` on ``device``, seeded."""
    torch.manual_seed(seed)
    return arch.build(model_config).to(device)


def save(model: VAE, registry: Registry, serialized: bytes | None = None) -> tuple[bytes, str]:
    """The stored bytes of ``model`` and its file suffix (``.safetensors`` or ``.vac``); ``serialized``: those
    bytes where an objective already made them (the size objective), reused."""
    return serialized or serialize_model(model, registry.codec_map()), SUFFIXES[container_of(model)]


def load(data: bytes, registry: Registry, device: torch.device) -> VAE:
    """The model stored in ``data`` (:func:`save`), on ``device``."""
    return deserialize_model(data, registry).to(device)


def load_teacher(path: Any, where: str, registry: Registry, device: torch.device) -> VAE:
    """The teacher checkpoint ``path`` of a space (``where`` names the file), on ``device``."""
    try:
        return deserialize_model(path.read_bytes(), registry).to(device)
    except Exception as exc:
        raise VaeAutomlError(
            f"{where}: teacher: {path} is not a model saved by vae-automl (a models/trial-N.safetensors or .vac of a "
            f"search): {type(exc).__name__}: {exc}"
        ) from None


def is_model(out: Any) -> bool:
    """Whether a compressor's output is a model: an nn.Module with an ``encodings`` dict, like its input."""
    return isinstance(out, torch.nn.Module) and isinstance(getattr(out, "encodings", None), dict)


def runtime_name(model: VAE, target: str) -> str:
    """The runtime the latency objective times ``model`` with (see :func:`vae_automl.runtime.runtime_name`)."""
    return runtime.runtime_name(model, target)


def rng_state() -> torch.Tensor:
    """torch's global CPU RNG state (scoring a part-trained base must leave its training's draws as they were)."""
    return torch.get_rng_state()


def set_rng_state(state: torch.Tensor) -> None:
    """Restore what :func:`rng_state` gave."""
    torch.set_rng_state(state)
