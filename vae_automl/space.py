"""Parameters -> ``trial.suggest_*``: one define-by-run space, shared by the Optuna and Ray backends.

:func:`suggest` asks an Optuna trial for every searched value and returns
the flat dict of what it sampled; :func:`resolve` turns such a dict (from a
trial, a Ray config or a stored study) into the full :class:`TrialSpec`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vae_automl.components import STAGES
from vae_automl.config import BASE_MODEL_ARCHITECTURE, NONE_CHOICE, ComponentSpace, ParamSpace, SearchSpace
from vae_automl.errors import ConfigError
from vae_automl.registry import get_registry

if TYPE_CHECKING:
    import optuna

    from vae_automl.registry import Registry

ARCHITECTURE_KEY = "architecture"


def slot_key(index: int) -> str:
    return f"compressor{index}"


_SLOT = re.compile(r"compressor\d+(\..+)?")


def is_compression_param(name: str) -> bool:
    """Whether the parameter ``name`` chooses the compression (a compressor slot or one of its options' values)
    rather than the trained base (architecture and training): trials that differ only in these share a base."""
    return _SLOT.fullmatch(name) is not None


def params_key(params: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """Sampled parameters as a hashable key: equal keys, the same configuration."""
    return tuple(sorted((name, repr(value)) for name, value in params.items()))


def base_key(
    params: Mapping[str, Any], is_compression: Callable[[str], bool] = is_compression_param
) -> tuple[tuple[str, str], ...]:
    """The sampled parameters that make a trial's base (all but the compression's), as a hashable key: trials with
    equal keys share a base (a searched training setting outside the base-model cache key, such as
    ``finetune_lr_schedule``, is kept in it: that only misses a reuse)."""
    return params_key({name: value for name, value in params.items() if not is_compression(name)})


def searches_compression(space: SearchSpace) -> bool:
    """Whether two trials of ``space`` can differ in their compression alone: a slot is optional, offers several
    compressors, or searches a parameter."""
    return any(
        slot.optional or len(slot.options) > 1 or any(p.searched for option in slot.options for p in option.params.values())
        for slot in space.compressors
    )


def _suggest_one(trial: optuna.Trial, key: str, space: ParamSpace) -> Any:
    if space.kind in ("int", "float"):
        assert space.low is not None and space.high is not None  # a range always has both (config.parse_param)
    if space.kind == "int":
        return trial.suggest_int(key, int(space.low), int(space.high), step=int(space.step or 1), log=space.log)  # type: ignore[arg-type]
    if space.kind == "float":
        return trial.suggest_float(key, space.low, space.high, step=space.step, log=space.log)  # type: ignore[arg-type]
    if space.kind == "categorical":
        return trial.suggest_categorical(key, list(space.choices))
    return space.value


def _suggest_params(trial: optuna.Trial, prefix: str, params: dict[str, ParamSpace], out: dict[str, Any]) -> None:
    for name, space in params.items():
        if space.searched:
            out[f"{prefix}.{name}"] = _suggest_one(trial, f"{prefix}.{name}", space)


def _architectures(space: SearchSpace) -> dict[str, ComponentSpace]:
    """The searched architectures; a study of a ``base_model:`` without students has only the user's model."""
    if not space.architectures:
        return {BASE_MODEL_ARCHITECTURE: ComponentSpace(BASE_MODEL_ARCHITECTURE, {})}
    return {a.name: a for a in space.architectures}


def suggest(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """Sample one point of ``space`` through ``trial``; return the flat sampled params."""
    params: dict[str, Any] = {}
    archs = _architectures(space)
    if len(archs) > 1:
        params[ARCHITECTURE_KEY] = trial.suggest_categorical(ARCHITECTURE_KEY, list(archs))
    arch = archs[params.get(ARCHITECTURE_KEY, next(iter(archs)))]
    _suggest_params(trial, arch.name, arch.params, params)
    _suggest_params(trial, "training", space.training, params)
    for i, slot in enumerate(space.compressors):
        names = [o.name for o in slot.options] + ([NONE_CHOICE] if slot.optional else [])
        chosen = trial.suggest_categorical(slot_key(i), names) if len(names) > 1 else names[0]
        if len(names) > 1:
            params[slot_key(i)] = chosen
        for option in slot.options:
            if option.name == chosen:
                _suggest_params(trial, f"{slot_key(i)}.{option.name}", option.params, params)
    return params


@dataclass
class TrialSpec:
    """Everything a trial needs, resolved from the space and the sampled params."""

    architecture: str
    architecture_params: dict[str, Any]
    training: dict[str, Any]
    pipeline: list[tuple[str, dict[str, Any]]]
    seed: int
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "architecture": self.architecture,
            "architecture_params": self.architecture_params,
            "training": self.training,
            "pipeline": [{"compressor": n, "params": p} for n, p in self.pipeline],
            "seed": self.seed,
        }


def _values(prefix: str, spaces: dict[str, ParamSpace], params: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for name, space in spaces.items():
        key = f"{prefix}.{name}"
        if space.searched:
            if key not in params:
                raise ConfigError(f"sampled params lack {key!r} (the study was made from another search space?)")
            values[name] = params[key]
        else:
            values[name] = space.value
    return values


def resolve(space: SearchSpace, params: dict[str, Any], registry: Registry | None = None) -> TrialSpec:
    """The full trial spec for sampled ``params``; compressors are put in stage order."""

    registry = registry or get_registry()
    archs = _architectures(space)
    arch_name = params.get(ARCHITECTURE_KEY, next(iter(archs)))
    if arch_name not in archs:
        raise ConfigError(f"architecture {arch_name!r} is not in the search space ({', '.join(archs)})")
    arch: ComponentSpace = archs[arch_name]
    pipeline = []
    for i, slot in enumerate(space.compressors):
        chosen = params.get(slot_key(i))
        if chosen is None:
            chosen = slot.options[0].name if len(slot.options) == 1 and not slot.optional else None
            if chosen is None:
                raise ConfigError(f"sampled params lack {slot_key(i)!r}")
        if chosen == NONE_CHOICE:
            continue
        option = next(o for o in slot.options if o.name == chosen)
        pipeline.append((chosen, _values(f"{slot_key(i)}.{chosen}", option.params, params)))
    order = {stage: k for k, stage in enumerate(STAGES)}
    pipeline.sort(key=lambda item: order[registry.compressors.get(item[0]).stage])
    return TrialSpec(
        architecture=arch_name,
        architecture_params=_values(arch_name, arch.params, params),
        training=_values("training", space.training, params),
        pipeline=pipeline,
        seed=space.seed,
        params=dict(params),
    )
