"""Device names (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``): checked without torch, resolved with it."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from vae_automl.errors import VaeAutomlError

if TYPE_CHECKING:
    import torch

DEVICE_NAMES = "cpu, cuda, cuda:N, mps or auto"


def check_device(value: object) -> str:
    """``value`` if it names a device this package runs on; ValueError otherwise (no torch import: the CLI checks early)."""
    if isinstance(value, str):
        name, sep, index = value.partition(":")
        if value in ("cpu", "cuda", "mps", "auto") or (name == "cuda" and sep and index.isdigit()):
            return value
    raise ValueError(f"device must be {DEVICE_NAMES}, but got {value!r}")


def resolve_device(device: str) -> torch.device:
    """The torch device of a name; ``auto`` is the first CUDA device, else the CPU.

    ``auto`` never picks MPS: a search there is opt-in (``--device mps``), since Apple's backend lacks
    some kernels and CUDA graphs. Raises :class:`VaeAutomlError` when the device is absent.
    """
    # deferred: torch loads only when a search or an export runs (the CLI checks names without it)
    import torch

    device = check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise VaeAutomlError(f"device {device!r} was asked for but torch sees no CUDA device; use --device cpu or auto")
        resolved = torch.device(device)
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise VaeAutomlError(
                f"device {device!r} was asked for but torch sees {count} CUDA device(s): cuda:0..cuda:{count - 1}"
            )
        return resolved
    if device == "mps" and not torch.backends.mps.is_available():
        raise VaeAutomlError("device 'mps' was asked for but torch has no MPS backend here (Apple silicon, macOS 12.3+)")
    return torch.device(device)


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What waits for the device's queued work, so a timer measures it: CUDA and MPS run asynchronously."""
    # deferred: as in resolve_device
    import torch

    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    if device.type == "mps":
        return torch.mps.synchronize
    return lambda: None
