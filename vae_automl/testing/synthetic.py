"""A synthetic trial, for measuring the orchestration (storage, workers, Ray) rather than the CPU.

Load it like any plugin (``--plugin vae_automl.testing.synthetic`` or
``VAE_AUTOML_PLUGINS``). It registers:

* the ``synthetic`` dataset: 256 seeded random 8x8 images (no file, no
  scikit-learn import), so a worker starts fast;
* the ``synthetic`` architecture: a plain Python model (``torch_models =
  False``), a config and encodings and no weights, so a process running
  synthetic trials never imports torch (64 concurrent Ray workers fit in
  a small machine's memory);
* the ``synthetic_work`` compressor: its ``seconds`` parameter is how long
  the trial sleeps (the stand-in for training time), and its ``x`` and ``y``
  parameters are the trial's drawn outcome; it sleeps, then returns a copy of
  the model carrying them in ``model.config["synthetic"]``;
* the ``synthetic_loss`` and ``synthetic_size`` objectives (both minimized),
  computed from ``x`` and ``y`` by :func:`objectives_of` (a trade-off, so the
  front holds many trials).

A search space using it (:func:`space_yaml`) builds the synthetic
architecture's model once and caches it as a real base is cached: every
trial after the first reuses it, so a trial costs its sleep plus the
orchestration around it (sampling, storage, the base-model cache, the
record, the artifact). ``space_yaml(..., architecture="mlp")`` uses the
built-in MLP (as tiny as it goes, one epoch) instead: the same trial with
torch.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from vae_automl.components import Architecture, CompressionContext, Compressor, Dataset, MeasureContext, Objective, Param
from vae_automl.plugin_manager import hookimpl

__all__ = [
    "SyntheticArchitecture",
    "SyntheticDataset",
    "SyntheticModel",
    "SyntheticLoss",
    "SyntheticSize",
    "SyntheticWork",
    "objectives_of",
    "register_architectures",
    "register_compressors",
    "register_datasets",
    "register_objectives",
    "space_yaml",
]

MODULE = __name__
CONFIG_KEY = "synthetic"


def objectives_of(x: float, y: float) -> tuple[float, float]:
    """``(synthetic_loss, synthetic_size)`` of a trial that drew ``x`` and ``y`` (both in [0, 1]).

    Loss falls and size grows with ``x``; ``y`` adds a penalty to both, so
    only trials with small ``y`` reach the front.
    """
    return (1.0 - x) + 0.5 * y, math.sqrt(x) + 0.5 * y


class SyntheticDataset(Dataset):
    name = "synthetic"
    help = "256 seeded random 8x8 images in [0, 1] (for orchestration tests and benchmarks)"

    def load(self, arg: str | None, data_dir: str | None, download: bool) -> np.ndarray:
        return np.random.default_rng(0).random((256, 8, 8), dtype=np.float32)


class SyntheticModel:
    """The synthetic architecture's model: its config and encodings, no weights (nothing of torch)."""

    def __init__(self, config: dict[str, Any], encodings: dict[str, Any] | None = None) -> None:
        self.config, self.encodings = config, dict(encodings or {})


class SyntheticArchitecture(Architecture):
    name = "synthetic"
    help = "a plain Python stand-in model (no torch, nothing to train), for orchestration tests and benchmarks"
    torch_models = False
    params = (Param("width", "int", 1, minimum=1, maximum=1024, help="recorded in the config only"),)

    def config_from_params(self, values: dict[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
        return {"architecture": self.name, "input_shape": list(input_shape), **self.resolve_params(values)}

    def build(self, config: dict[str, Any]) -> Any:
        return SyntheticModel(dict(config))

    def to_bytes(self, model: Any) -> bytes:
        return json.dumps({"config": model.config, "encodings": model.encodings}, sort_keys=True).encode()

    def from_bytes(self, data: bytes) -> Any:
        stored = json.loads(data)
        return SyntheticModel(stored["config"], stored["encodings"])


class SyntheticWork(Compressor):
    name = "synthetic_work"
    stage = "quantize"
    help = "sleeps `seconds` (the stand-in for training), then carries the drawn x and y to the synthetic objectives"
    params = (
        Param("seconds", "float", 1.0, minimum=0.0, maximum=3600.0, help="how long the trial sleeps"),
        Param("x", "float", 0.5, minimum=0.0, maximum=1.0, help="the drawn outcome: trades loss for size"),
        Param("y", "float", 0.5, minimum=0.0, maximum=1.0, help="the drawn outcome: a penalty on both objectives"),
    )

    def apply(self, model: Any, params: dict[str, Any], ctx: CompressionContext) -> Any:
        values = self.resolve_params(params)
        time.sleep(values["seconds"])
        out = copy.deepcopy(model)
        out.config = {**out.config, CONFIG_KEY: {"x": values["x"], "y": values["y"], "seconds": values["seconds"]}}
        return out


def _drawn(model: Any) -> tuple[float, float]:
    drawn = getattr(model, "config", {}).get(CONFIG_KEY)
    if drawn is None:  # the uncompressed base, measured as the baseline: the worst point
        return 0.0, 1.0
    return float(drawn["x"]), float(drawn["y"])


class SyntheticLoss(Objective):
    name = "synthetic_loss"
    unit = "arbitrary"
    help = "the synthetic trial's drawn loss (see vae_automl.testing.synthetic.objectives_of)"

    def measure(self, ctx: MeasureContext) -> float:
        return objectives_of(*_drawn(ctx.model))[0]


class SyntheticSize(Objective):
    name = "synthetic_size"
    unit = "arbitrary"
    help = "the synthetic trial's drawn size (see vae_automl.testing.synthetic.objectives_of)"

    def measure(self, ctx: MeasureContext) -> float:
        return objectives_of(*_drawn(ctx.model))[1]


@hookimpl
def register_datasets(register: Callable[[Dataset], None]) -> None:
    register(SyntheticDataset())


@hookimpl
def register_architectures(register: Callable[[Architecture], None]) -> None:
    register(SyntheticArchitecture())


@hookimpl
def register_compressors(register: Callable[[Compressor], None]) -> None:
    register(SyntheticWork())


@hookimpl
def register_objectives(register: Callable[[Objective], None]) -> None:
    register(SyntheticLoss())
    register(SyntheticSize())


ARCHITECTURES = {
    "synthetic": "synthetic: {width: 1}",
    "mlp": "mlp: {hidden_layers: 1, hidden_width: 2, latent_dim: 1}",
}
"""The architectures :func:`space_yaml` offers: the torch-free stand-in, or the built-in MLP as tiny as it goes."""


def space_yaml(
    name: str, trials: int, seconds: tuple[float, float], seed: int = 0, sampler: str = "random", architecture: str = "synthetic"
) -> str:
    """A search space of synthetic trials that sleep a drawn time in ``seconds`` (low, high), on ``architecture``
    (a key of :data:`ARCHITECTURES`)."""
    low, high = seconds
    sleep = f"{low}" if low == high else f"{{low: {low}, high: {high}}}"
    return f"""\
# synthetic trials (vae_automl.testing.synthetic): a drawn sleep and drawn objectives, a cached base
name: {name}
dataset: {{spec: synthetic, split: {{validation: 0.25, test: 0.25, seed: 0}}}}
device: cpu
seed: {seed}
architecture:
  {ARCHITECTURES[architecture]}
training: {{epochs: 1, batch_size: 128, lr: 1.0e-3}}
compressors:
  - name: synthetic_work
    params: {{seconds: {sleep}, x: {{low: 0.0, high: 1.0}}, y: {{low: 0.0, high: 1.0}}}}
objectives: [synthetic_loss, synthetic_size]
record: []
sampler: {{name: {sampler}, seed: {seed}}}
pruner: {{name: none}}
trials: {trials}
"""
