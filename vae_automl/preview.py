"""What a search would search, without training: the resolved space, model sizes in parameters and bytes.

``vae-automl search SPACE --dry-run`` calls :func:`dry_run`. The searched parameters are read off the
space's own define-by-run sampler (:func:`vae_automl.space.suggest`) run on a recording trial, so they
are exactly what Optuna would be asked for, conditional ones included. Parameter counts come from
building (not training) each sampled architecture; sizes from the bytes of its uncompressed file
(:func:`vae_automl.packing.serialize_model`) and, for the compressed end, from the fewest bits and the
most sparsity the sampled pipelines ask for: an estimate, since a compressor's real bytes are known
only once it ran.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vae_automl.config import BASE_MODEL_ARCHITECTURE, SearchSpace, apply_overrides, load_space
from vae_automl.data import load_images
from vae_automl.packing import serialize_model
from vae_automl.progress import format_number
from vae_automl.registry import Registry, get_registry
from vae_automl.samplers import budget_param, recompresses
from vae_automl.space import ARCHITECTURE_KEY, resolve, suggest

N_SAMPLES = 256
FLOAT_BITS = 32
# compressor parameters that shrink what is stored: the fraction of weights (or units) they remove
REMOVED_FRACTION_PARAMS = ("sparsity", "ratio")


@dataclass(frozen=True)
class SearchedParam:
    """One parameter the sampler is asked for: a range (``low``..``high``) or ``choices``."""

    key: str
    kind: str  # "int" | "float" | "categorical"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        if self.kind == "categorical":
            return ", ".join(map(str, self.choices))
        text = f"{format_number(float(self.low or 0))} .. {format_number(float(self.high or 0))}"
        return text + (" (log)" if self.log else "") + (f" step {format_number(self.step)}" if self.step else "")


@dataclass
class DryRun:
    space_file: str
    study_name: str
    dataset: str
    input_shape: list[int]
    n_images: int
    objectives: list[str]
    trials: int
    searched: list[SearchedParam]
    fixed: dict[str, Any]
    samples: int
    params_min: int | None
    params_max: int | None
    size_bytes_min: int | None
    """Estimated: the smallest sampled model at the fewest bits and the most sparsity its pipeline samples."""
    size_bytes_max: int | None
    """Measured: the uncompressed file of the largest sampled model."""
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "space": self.space_file,
            "study": self.study_name,
            "dataset": self.dataset,
            "input_shape": self.input_shape,
            "n_images": self.n_images,
            "objectives": self.objectives,
            "trials": self.trials,
            "searched": [{k: v for k, v in vars(p).items() if v not in (None, (), False) or k == "key"} for p in self.searched],
            "fixed": self.fixed,
            "samples": self.samples,
            "params": {"min": self.params_min, "max": self.params_max},
            "size_bytes": {"min_estimated": self.size_bytes_min, "max_uncompressed": self.size_bytes_max},
            "notes": self.notes,
        }


class _RecordingTrial:
    """Stands in for an ``optuna.Trial``: records every distribution asked for, answers by ``mode``."""

    def __init__(self, rng: random.Random, mode: str, forced: dict[str, Any] | None = None) -> None:
        self.rng, self.mode, self.forced = rng, mode, forced or {}
        self.asked: dict[str, SearchedParam] = {}

    def _number(self, low: float, high: float, log: bool, step: float | None, integer: bool) -> float:
        if self.mode == "low":
            return low
        if self.mode == "high":
            return high
        value = math.exp(self.rng.uniform(math.log(low), math.log(high))) if log and low > 0 else self.rng.uniform(low, high)
        if step:
            value = low + round((value - low) / step) * step
        return min(max(round(value) if integer else value, low), high)

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        self.asked[name] = SearchedParam(name, "int", low, high, log, step if step != 1 else None)
        return int(self.forced.get(name, self._number(low, high, log, step, True)))

    def suggest_float(self, name: str, low: float, high: float, step: float | None = None, log: bool = False) -> float:
        self.asked[name] = SearchedParam(name, "float", low, high, log, step)
        return float(self.forced.get(name, self._number(low, high, log, step, False)))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        self.asked[name] = SearchedParam(name, "categorical", choices=tuple(choices))
        if name in self.forced:
            return self.forced[name]
        if self.mode == "low":
            return choices[0]
        if self.mode == "high":
            return choices[-1]
        return self.rng.choice(list(choices))


def _top(param: SearchedParam) -> float:
    """The top of a searched parameter's range, on its step's grid, or its largest choice."""
    if param.kind == "categorical":
        return float(max(param.choices))
    assert param.low is not None and param.high is not None
    if not param.step:
        return float(param.high)
    return float(param.low + (param.high - param.low) // param.step * param.step)


def _fixed_values(space: SearchSpace) -> dict[str, Any]:
    """Every constant parameter that has a value (unset optional ones, None, are left out)."""
    fixed: dict[str, Any] = {}
    for arch in space.architectures:
        fixed.update({f"{arch.name}.{n}": p.value for n, p in arch.params.items() if not p.searched})
    fixed.update({f"training.{n}": p.value for n, p in space.training.items() if not p.searched})
    for i, slot in enumerate(space.compressors):
        for option in slot.options:
            fixed.update({f"compressor{i}.{option.name}.{n}": p.value for n, p in option.params.items() if not p.searched})
    return {k: v for k, v in fixed.items() if v is not None}


def dry_run(
    space: str | Path | SearchSpace,
    dataset: str | None = None,
    data_dir: str | None = None,
    plugins: tuple[str, ...] = (),
    samples: int = N_SAMPLES,
    registry: Registry | None = None,
) -> DryRun:
    """Resolve ``space`` and size its models without training anything.

    Args:
        space: a search-space YAML path, or a loaded :class:`SearchSpace`.
        dataset, data_dir: override the space's (as ``search`` does); the images are loaded for their shape.
        plugins: extra plugin modules to load (like ``--plugin``).
        samples: random points drawn besides each architecture's smallest and largest corner.
    """
    registry = registry or get_registry(plugins)
    if not isinstance(space, SearchSpace):
        space = load_space(space, registry)
    space = apply_overrides(space, dataset, data_dir)
    ds = space.dataset
    images = load_images(ds.spec, ds.data_dir, ds.download, registry, ds.image_size, ds.color)
    input_shape = tuple(int(d) for d in images.shape[1:])
    arch_names = [a.name for a in space.architectures] or [BASE_MODEL_ARCHITECTURE]
    rng = random.Random(space.seed)
    # each architecture's smallest and largest corner, then random points
    trials = [
        _RecordingTrial(rng, mode, {ARCHITECTURE_KEY: a} if len(arch_names) > 1 else None)
        for a in arch_names
        for mode in ("low", "high")
    ]
    trials += [_RecordingTrial(rng, "random") for _ in range(samples)]
    searched: dict[str, SearchedParam] = {}
    sizes: dict[str, tuple[int, int]] = {}  # model config -> (parameters, uncompressed bytes)
    params_seen: list[int] = []
    bytes_max: list[int] = []
    estimates: list[float] = []
    notes: list[str] = []
    for trial in trials:
        spec = resolve(space, suggest(trial, space), registry)  # type: ignore[arg-type]  # a recording stand-in
        for key, param in trial.asked.items():
            searched.setdefault(key, param)
        if spec.architecture == BASE_MODEL_ARCHITECTURE:
            continue
        arch = registry.architectures.get(spec.architecture)
        config = arch.config_from_params(spec.architecture_params, input_shape)
        key = repr(sorted(config.items()))
        if key not in sizes:
            model = arch.build(config)
            sizes[key] = (sum(p.numel() for p in model.parameters()), len(serialize_model(model, registry)))
        n_params, n_bytes = sizes[key]
        params_seen.append(n_params)
        bytes_max.append(n_bytes)
        bits = min([int(p["bits"]) for _, p in spec.pipeline if "bits" in p] or [FLOAT_BITS])
        kept = math.prod(1.0 - float(p[name]) for _, p in spec.pipeline for name in REMOVED_FRACTION_PARAMS if name in p)
        overhead = max(n_bytes - 4 * n_params, 0)  # header and names, kept by any compressed file
        estimates.append(overhead + n_params * kept * bits / 8)
    if space.base_model is not None:
        notes.append("base_model: the user's model is not built by a dry run; its size is not estimated")
    budget = budget_param(space.sampler, space)
    if budget is not None and budget in searched:
        notes.append(
            f"{budget}: hvi trains every trial for {format_number(_top(searched[budget]))} epochs, the top of the range, "
            "while at least half of the completed trials' validation curves end within 1% of their lowest point, and "
            "searches it after that (sampler: {full_epochs: false} searches it from the start)"
        )
    if recompresses(space.sampler, space):
        notes.append(
            "compressors: hvi also runs recompressions of trained bases (a completed trial's architecture and training "
            "exactly, its compression drawn anew), whose base the base-model cache hands over untrained "
            "(sampler: {recompress: false} turns them off)"
        )
    return DryRun(
        space_file=space.path,
        study_name=space.name,
        dataset=ds.spec,
        input_shape=list(input_shape),
        n_images=len(images),
        objectives=list(space.objectives),
        trials=space.trials,
        searched=sorted(searched.values(), key=lambda p: p.key),
        fixed=_fixed_values(space),
        samples=len(trials),
        params_min=min(params_seen) if params_seen else None,
        params_max=max(params_seen) if params_seen else None,
        size_bytes_min=int(math.ceil(min(estimates))) if estimates else None,
        size_bytes_max=max(bytes_max) if bytes_max else None,
        notes=notes,
    )


def format_dry_run(result: DryRun) -> str:
    """The dry run as text: the searched parameters, the fixed ones, the size ranges."""
    width = max([len(p.key) for p in result.searched] + [10])
    lines = [
        f"search space {result.space_file} (study {result.study_name!r}): {result.trials} trials, "
        f"objectives {', '.join(result.objectives)}",
        f"dataset {result.dataset}: {result.n_images} images of {'x'.join(map(str, result.input_shape))}",
        f"searched parameters ({len(result.searched)}):",
        *(f"  {p.key.ljust(width)}  {p.kind:<11}  {p.describe()}" for p in result.searched),
    ]
    if result.fixed:
        lines.append("fixed: " + ", ".join(f"{k}={v}" for k, v in sorted(result.fixed.items())))
    if result.params_min is not None and result.params_max is not None:
        lines.append(f"model parameters: {result.params_min:,} .. {result.params_max:,} (over {result.samples} sampled points)")
    if result.size_bytes_min is not None and result.size_bytes_max is not None:
        lines.append(
            f"size: about {result.size_bytes_min:,} bytes (estimated: fewest bits, most sparsity) .. "
            f"{result.size_bytes_max:,} bytes (the largest model, uncompressed)"
        )
    lines.extend(result.notes)
    lines.append("nothing was trained (dry run)")
    return "\n".join(lines)
