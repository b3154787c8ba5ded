"""Search-space YAML -> a validated, typed config. Every error names the file and the key path."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from vae_automl.components import GROUP_NAMES, STAGES, Component, Param
from vae_automl.data import SplitConfig
from vae_automl.devices import check_device
from vae_automl.errors import ConfigError, PluginError
from vae_automl.images import COLORS, check_image_size
from vae_automl.registry import get_registry

if TYPE_CHECKING:
    from vae_automl.registry import Registry

TRAINING_PARAMS: tuple[Param, ...] = (
    Param("epochs", "int", 20, minimum=0, maximum=100_000, help="passes over the training split"),
    Param("batch_size", "int", 128, minimum=1, maximum=1_000_000, log=True),
    Param("lr", "float", 1e-3, minimum=1e-7, maximum=1.0, log=True, help="Adam learning rate"),
    Param(
        "lr_schedule",
        "categorical",
        "constant",
        choices=("constant", "cosine"),
        help="learning rate over the base's training: constant, or cosine decay from lr to 0",
    ),
    Param(
        "finetune_lr_schedule",
        "categorical",
        "constant",
        choices=("constant", "cosine"),
        help="learning rate over each fine-tuning run of the compressors (each decays over its own epochs)",
    ),
    Param("beta", "float", 1.0, minimum=0.0, maximum=100.0, help="weight of the KL term"),
    Param("weight_decay", "float", 0.0, minimum=0.0, maximum=1.0),
    Param("patience", "int", None, minimum=1, maximum=100_000, help="early stopping on validation loss"),
    Param("capture", "categorical", "auto", choices=("auto", "on", "off"), help="CUDA-graph capture of the step"),
    Param("max_seconds", "float", None, minimum=1e-3, maximum=1e9, help="per-trial time limit, every stage"),
)
SAMPLERS = ("auto", "hvi", "gp", "tpe", "nsga2", "random")
PRUNERS = ("none", "pareto")
RUNG_SCORES = ("base", "compressed")
RENAMED_PRUNERS = {"median": "pareto"}
"""Pruner names of 0.1 still accepted, with a warning: 0.2 replaced the median rule by Pareto-aware successive halving."""
STOP_WHEN = ("budget", "first_feasible")
NONE_CHOICE = "none"
BASE_MODEL_ARCHITECTURE = "base_model"


@dataclass(frozen=True)
class ParamSpace:
    """One parameter in a search space: a constant, a numeric range, or a set of choices."""

    name: str
    kind: str  # "const" | "int" | "float" | "categorical"
    value: Any = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    @property
    def searched(self) -> bool:
        return self.kind != "const"


@dataclass(frozen=True)
class ComponentSpace:
    """A component chosen by name, with the space of each of its parameters."""

    name: str
    params: dict[str, ParamSpace]
    preset: str | None = None


@dataclass(frozen=True)
class CompressorSlot:
    """One place in the pipeline: one of ``options`` is applied, or none if ``optional``."""

    options: tuple[ComponentSpace, ...]
    optional: bool = False


@dataclass(frozen=True)
class DatasetConfig:
    spec: str = "digits"
    data_dir: str | None = None
    download: bool = False
    split: SplitConfig = field(default_factory=SplitConfig)
    image_size: tuple[int, int] | None = None
    """``(height, width)`` every image is resized to; None keeps the dataset's (a folder's images must then agree)."""
    color: str | None = None
    """``grey`` (1 channel) or ``rgb`` (3 channels); None keeps the dataset's."""


@dataclass(frozen=True)
class SamplerConfig:
    """``auto``: the rule of :func:`vae_automl.samplers.choose`; any other name is that Optuna sampler."""

    name: str = "auto"
    seed: int | None = None
    population_size: int | None = None
    n_startup_trials: int | None = None
    repeats: bool = False
    """Run a configuration again even if a completed (or running) trial of the study has exactly its parameters."""
    full_epochs: bool = True
    """``hvi``: run every trial at the top of a searched ``training.epochs`` range while at least half of the completed
    trials' validation curves end near their lowest point (:mod:`vae_automl.hvi_sampler`); false searches it as any
    parameter. An explicit true for a sampler other than ``hvi`` is refused: it would be ignored."""
    recompress: bool = True
    """``hvi``: also draw recompressions of trained bases (a completed trial's architecture and training exactly, its
    compression drawn anew), which the base-model cache trains nothing for, and prefer them when nearly as good
    (:mod:`vae_automl.hvi_sampler`). False where the cache is not shared between the trials (no shared folder under a
    cluster's workers), so a recompression would train its base again. An explicit true for a sampler other than
    ``hvi`` is refused: it would be ignored."""


@dataclass(frozen=True)
class PrunerConfig:
    """Pareto-aware successive halving (:mod:`vae_automl.early_stopping`); ``none`` runs every trial to the end."""

    name: str = "none"
    warmup_epochs: int = 2
    """Epochs of the first rung."""
    min_trials: int = 4
    """Peers a rung needs before it stops anyone."""
    reduction_factor: int = 3
    """Rungs at warmup_epochs * reduction_factor**k; each keeps about 1/reduction_factor of its trials."""
    score: str = "base"
    """What a rung compares besides the objectives known before training: ``base``, the validation loss of the
    base model so far; ``compressed``, that of the base so far compressed by the trial's pipeline without
    fine-tuning, with one more rung after the base is trained (or taken from the cache) and before any
    fine-tuning (:mod:`vae_automl.early_stopping`)."""


@dataclass(frozen=True)
class Target:
    """A bound on one measured figure: ``max``/``min`` absolute, or ``max_relative_to_baseline`` (0.03: at most
    3% above the trial's own uncompressed base model)."""

    name: str
    kind: str  # "max" | "min" | "max_relative_to_baseline"
    value: float


@dataclass(frozen=True)
class LatencyConfig:
    batch_size: int = 128
    repeats: int = 30
    warmup: int = 5
    target: str = "cpu"


@dataclass(frozen=True)
class BaseModelConfig:
    """``base_model:`` of a search space.

    Attributes:
        factory: ``"pkg.module:callable"`` or ``"path/to/file.py:callable"`` (a relative file path is
            resolved against the YAML file's folder).
        kwargs: keyword arguments of the factory.
        checkpoint: path of the state_dict (``.safetensors``, or ``.pt``/``.pth`` read with weights_only).
        likelihood: ``bernoulli`` (decode gives logits) or ``gaussian`` (decode gives the mean).
        groups: optional layer groups by module-name prefix of the user's module
            (``{encoder: [enc], heads: [fc_mu, fc_logvar], decoder: [dec]}``); default: the traced rule.
        fine_tune_epochs: epochs of our trainer on the base before compressing (0: the model as given).
    """

    factory: str | None
    kwargs: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    likelihood: str = "bernoulli"
    groups: dict[str, tuple[str, ...]] | None = None
    fine_tune_epochs: int = 0
    needs_groups: bool = False
    """Set by the loader: a compressor asks for per-group settings, so the traced rule must find groups."""
    needs_channel_groups: bool = False
    """Set by the loader: a compressor removes units (structured pruning), so tracing must find removable ones."""
    instance: Any = field(default=None, compare=False, repr=False)
    """An ``nn.Module`` given through the Python API (``search(..., base_model=module)``) instead of factory + checkpoint."""

    def checkpoint_sha256(self) -> str | None:
        """The sha256 of the checkpoint file, or of the safetensors bytes of an instance's weights (None: neither)."""
        if self.instance is not None:
            # deferred: safetensors.torch imports torch; only a base_model given as a module needs it
            from safetensors.torch import save

            state = {k: v.detach().cpu().contiguous() for k, v in self.instance.state_dict().items()}
            return hashlib.sha256(save(state)).hexdigest()
        if self.checkpoint is None:
            return None
        with open(self.checkpoint, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()


@dataclass(frozen=True)
class TrackingConfig:
    """``tracking:``: where every finished trial is logged besides the study (see :mod:`vae_automl.tracking`).

    Stored with the study's YAML, so every worker logs there too; ``--mlflow`` and ``--tensorboard`` replace them.
    """

    mlflow: str | None = None
    """An MLflow tracking URI: ``sqlite:///mlflow.db``, ``http://HOST:5000``."""
    tensorboard: str | None = None
    """A folder for TensorBoard event files (relative to the working directory)."""


@dataclass(frozen=True)
class SearchSpace:
    """A validated search space. ``source`` is the file's text, kept so workers need no copy of it."""

    path: str
    name: str
    dataset: DatasetConfig
    architectures: tuple[ComponentSpace, ...]
    training: dict[str, ParamSpace]
    compressors: tuple[CompressorSlot, ...]
    objectives: tuple[str, ...]
    record: tuple[str, ...]
    sampler: SamplerConfig
    pruner: PrunerConfig
    latency: LatencyConfig
    trials: int = 10
    timeout_s: float | None = None
    device: str = "auto"
    seed: int = 0
    teacher: str | None = None
    base_model: BaseModelConfig | None = None
    reference_point: dict[str, float] | None = None
    targets: tuple[Target, ...] = ()
    stop_when: str = "budget"
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    source: str = ""
    task: str = "vae"
    needs_labels: bool = False
    """Whether the task or a measured objective reads the dataset's labels (they are loaded only then)."""


def study_name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a study, or None.

    A study name becomes a folder (``runs/NAME``) and is joined to paths, so
    it is a name, never a path: a shared YAML's ``name: ../../x`` or ``/etc``
    must not decide where files go.
    """
    if not name or not name.strip():
        return f"a study name must not be empty, but got {name!r}"
    if any(sep in name for sep in ("/", "\\", "\0")) or name in (".", ".."):
        return f"a study name is a name, not a path (no '/', '\\', '.' or '..'), but got {name!r}"
    return None


class _Loc:
    """A place in a file, for error messages: ``quick.yaml: architecture.mlp.latent_dim``."""

    def __init__(self, file: str, path: tuple[str, ...] = ()) -> None:
        self.file, self.path = file, path

    def __truediv__(self, key: object) -> _Loc:
        return _Loc(self.file, (*self.path, str(key)))

    def error(self, message: str) -> ConfigError:
        where = ".".join(self.path)
        return ConfigError(f"{self.file}: {where}: {message}" if where else f"{self.file}: {message}")


def _mapping(value: Any, loc: _Loc, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise loc.error(f"expected a mapping, got {type(value).__name__} {value!r}")
    if allowed is not None:
        for key in value:
            if key not in allowed:
                raise (loc / key).error(f"unknown key; valid keys: {', '.join(allowed)}")
    return value


@contextlib.contextmanager
def _at(loc: _Loc, errors: tuple[type[Exception], ...] = (ValueError,)) -> Iterator[None]:
    """Re-raise ``errors`` from the block as a ConfigError naming the file and key ``loc``."""
    try:
        yield
    except errors as exc:
        raise loc.error(str(exc)) from None


def _coerce(param: Param, value: Any, loc: _Loc) -> Any:
    """``param.coerce(value)``, its error naming the file and key."""
    with _at(loc):
        return param.coerce(value)


def parse_param(param: Param, raw: Any, loc: _Loc, present: bool = True) -> ParamSpace:
    """A YAML value for ``param`` -> its space: constant, ``{low, high, log, step}``, ``{choices}`` or ``search``."""
    if not present:
        return ParamSpace(param.name, "const", value=param.default)
    if raw == "search":
        if param.choices is not None:
            return ParamSpace(param.name, "categorical", choices=tuple(param.choices))
        if param.type == "bool":
            return ParamSpace(param.name, "categorical", choices=(False, True))
        if param.minimum is None or param.maximum is None:
            raise loc.error("'search' needs bounds; give {low, high}")
        return ParamSpace(param.name, param.type, low=param.minimum, high=param.maximum, log=param.log)
    if isinstance(raw, dict):
        if "choices" in raw:
            _mapping(raw, loc, ("choices",))
            choices = raw["choices"]
            if not isinstance(choices, list) or not choices:
                raise (loc / "choices").error("expected a non-empty list")
            values = tuple(_coerce(param, c, loc / "choices" / i) for i, c in enumerate(choices))
            return ParamSpace(param.name, "categorical", choices=values)
        _mapping(raw, loc, ("low", "high", "log", "step"))
        if param.type not in ("int", "float"):
            raise loc.error(f"a range needs a numeric parameter; {param.name} is {param.type}: use choices")
        for key in ("low", "high"):
            if key not in raw:
                raise (loc / key).error("missing; a range needs low and high")
        low = _coerce(param, raw["low"], loc / "low")
        high = _coerce(param, raw["high"], loc / "high")
        for key, bound in (("low", low), ("high", high)):
            if bound is None:  # a nullable parameter accepts null as a value, but not as a range's end
                raise (loc / key).error(f"a range needs a number; for {param.name} unset, write {param.name}: null")
        if low > high:
            raise loc.error(f"low {low} is above high {high}")
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise (loc / "log").error(f"expected true or false, got {log!r}")
        if log and low <= 0:
            raise (loc / "low").error(f"a log range needs low > 0, got {low}")
        step = raw.get("step")
        if step is not None:
            step = _coerce(Param(param.name, param.type, 1, minimum=0), step, loc / "step")
            if step <= 0 or log:
                raise (loc / "step").error("step must be > 0 and cannot be combined with log")
        if low == high:
            return ParamSpace(param.name, "const", value=low)
        return ParamSpace(param.name, param.type, low=low, high=high, log=log, step=step)
    if isinstance(raw, list):
        raise loc.error("a list is not a parameter value; for a set of choices write {choices: [...]}")
    return ParamSpace(param.name, "const", value=_coerce(param, raw, loc))


def _component_params(
    component: Component, raw: dict[str, Any], loc: _Loc, base: dict[str, Any] | None = None
) -> dict[str, ParamSpace]:
    known = {p.name for p in component.params}
    for key in raw:
        if key not in known:
            raise (loc / key).error(
                f"{component.kind} {component.name!r} has no parameter {key!r}; "
                f"its parameters: {', '.join(sorted(known)) or '(none)'}"
            )
    spaces = {}
    for p in component.params:
        if p.name in raw:
            spaces[p.name] = parse_param(p, raw[p.name], loc / p.name)
        elif base and p.name in base:
            spaces[p.name] = ParamSpace(p.name, "const", value=base[p.name])
        else:
            spaces[p.name] = parse_param(p, None, loc / p.name, present=False)
    constants = {k: s.value for k, s in spaces.items() if not s.searched}
    with _at(loc):
        component.validate_params(constants)
    return spaces


def _lookup(table: Any, name: Any, loc: _Loc) -> Any:
    if not isinstance(name, str):
        raise loc.error(f"expected a component name, got {type(name).__name__} {name!r}; known: {', '.join(table.names())}")
    with _at(loc, (PluginError,)):
        return table.get(name)


def _key(loc: _Loc) -> str:
    return loc.path[-1] if loc.path else "value"


def _int(value: Any, loc: _Loc, minimum: int | None = None, allow_none: bool = False) -> Any:
    """An integer YAML value that is not a component parameter, checked the same way as one."""
    return _coerce(Param(_key(loc), "int", None if allow_none else 0, minimum=minimum), value, loc)


def _number(value: Any, loc: _Loc, minimum: float | None = None, allow_none: bool = False) -> Any:
    """A numeric YAML value that is not a component parameter, checked the same way as one."""
    return _coerce(Param(_key(loc), "float", None if allow_none else 0.0, minimum=minimum), value, loc)


def _choice(value: Any, loc: _Loc, choices: tuple[str, ...]) -> str:
    result: str = _coerce(Param(_key(loc), "categorical", choices[0], choices=choices), value, loc)
    return result


def _device(value: Any, loc: _Loc) -> str:
    try:
        return check_device(value)
    except ValueError as exc:
        raise loc.error(str(exc)) from None


def _teacher(value: Any, loc: _Loc) -> str | None:
    """``teacher:``: the path of a model saved by a search (``models/trial-N.safetensors``)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise loc.error(f"expected the path of a saved model (.safetensors), got {value!r}")
    return value


BASE_MODEL_KEYS = ("factory", "kwargs", "checkpoint", "likelihood", "groups", "fine_tune_epochs")


def _parse_base_model(raw: Any, loc: _Loc, base_dir: Path | None) -> BaseModelConfig:

    raw = _mapping(raw, loc, BASE_MODEL_KEYS)
    factory = raw.get("factory")
    if not isinstance(factory, str) or ":" not in factory:
        raise (loc / "factory").error(f"expected 'pkg.module:callable' or 'path/to/file.py:callable', got {factory!r}")
    module_part, _, attr = factory.rpartition(":")
    if module_part.endswith(".py") and base_dir is not None and not Path(module_part).is_absolute():
        factory = f"{(base_dir / module_part).resolve()}:{attr}"
    kwargs = _mapping(raw.get("kwargs"), loc / "kwargs")
    checkpoint = raw.get("checkpoint")
    if checkpoint is not None:
        if not isinstance(checkpoint, str):
            raise (loc / "checkpoint").error(f"expected a file path, got {checkpoint!r}")
        if not checkpoint.endswith((".safetensors", ".pt", ".pth")):
            raise (loc / "checkpoint").error(
                f"{checkpoint}: a state_dict in .safetensors (or .pt/.pth, read with weights_only=True) is expected"
            )
        if base_dir is not None and not Path(checkpoint).is_absolute():
            checkpoint = str((base_dir / checkpoint).resolve())
    # deferred: vae imports torch, which only a base_model: space needs (its model is torch's); loading any other
    # space must not import it (a Ray worker of a torch-free trial)
    from vae_automl.vae import LIKELIHOODS

    likelihood = _choice(raw.get("likelihood", "bernoulli"), loc / "likelihood", LIKELIHOODS)
    groups = None
    if raw.get("groups") is not None:
        g_raw = _mapping(raw["groups"], loc / "groups", GROUP_NAMES)
        groups = {}
        for g in GROUP_NAMES:
            names = g_raw.get(g)
            if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
                raise (loc / "groups" / g).error(f"expected a non-empty list of module-name prefixes, got {names!r}")
            groups[g] = tuple(names)
    epochs = _int(raw.get("fine_tune_epochs", 0), loc / "fine_tune_epochs", minimum=0)
    return BaseModelConfig(
        factory=factory, kwargs=dict(kwargs), checkpoint=checkpoint, likelihood=likelihood, groups=groups, fine_tune_epochs=epochs
    )


def _stage_order(slots: list[CompressorSlot], registry: Registry) -> list[int]:
    order = {stage: k for k, stage in enumerate(STAGES)}
    return sorted(range(len(slots)), key=lambda i: order[registry.compressors.get(slots[i].options[0].name).stage])


def _check_composition(slots: list[CompressorSlot], registry: Registry, loc: _Loc) -> None:
    """Refuse a pipeline where a stage's output form is not one the next stage takes, naming both stages."""
    before: dict[str, str] = {"dense": "the base model"}  # form -> who gives it
    for i in _stage_order(slots, registry):
        slot = slots[i]
        after: dict[str, str] = dict(before) if slot.optional else {}
        for j, option in enumerate(slot.options):
            comp = registry.compressors.get(option.name)
            for form, giver in before.items():
                if form not in comp.takes:
                    where = loc / i / "choices" / j if len(slot.options) > 1 else loc / i
                    raise (where / "name").error(
                        f"compressor {option.name!r} (stage {comp.stage}) takes {', '.join(comp.takes)}, but "
                        f"{giver} before it gives {form}; this pipeline cannot work (reorder, make a stage optional, "
                        f"or drop one)"
                    )
            after.setdefault(comp.gives, f"compressor {option.name!r} (stage {comp.stage})")
        before = after


def _value_variants(option: ComponentSpace) -> list[dict[str, Any]]:
    """Constants plus, one searched parameter at a time, each value it may take (categoricals) or its low end."""
    base = {k: s.value if not s.searched else (s.choices[0] if s.choices else s.low) for k, s in option.params.items()}
    variants = [base]
    for k, s in option.params.items():
        if s.searched:
            variants += [{**base, k: c} for c in (s.choices or (s.low, s.high))]
    return variants


def _check_requirements(
    slots: list[CompressorSlot], registry: Registry, loc: _Loc, arch: Any, what: str, skip_stages: tuple[str, ...] = ()
) -> set[str]:
    """Refuse compressor settings the architecture cannot serve; return the needs left for a model-time check."""
    has = {
        "layer_groups": bool(getattr(arch, "group_names", ())) if arch is not None else False,
        "channel_groups": bool(getattr(arch, "has_channel_groups", False)) if arch is not None else False,
    }
    deferred: set[str] = set()
    for i, slot in enumerate(slots):
        for j, option in enumerate(slot.options):
            comp = registry.compressors.get(option.name)
            if comp.stage in skip_stages:
                continue
            needs = set().union(*(comp.requirements(v) for v in _value_variants(option)))
            for need in sorted(needs):
                if arch is None:
                    deferred.add(need)
                    continue
                if not has[need]:
                    where = loc / i / "choices" / j if len(slot.options) > 1 else loc / i
                    detail = (
                        f"per-group settings ({', '.join(p for p in comp.group_params if p in option.params)})"
                        if need == "layer_groups"
                        else "units it can remove"
                    )
                    raise where.error(
                        f"compressor {option.name!r} needs {need.replace('_', ' ')} for its {detail}, but {what} declares none"
                    )
    return deferred


TOP_KEYS = (
    "name",
    "dataset",
    "device",
    "seed",
    "architecture",
    "training",
    "compressors",
    "objectives",
    "record",
    "sampler",
    "pruner",
    "latency",
    "trials",
    "timeout_s",
    "teacher",
    "reference_point",
    "task",
    "base_model",
    "targets",
    "stop_when",
    "tracking",
)
TRACKING_KEYS = ("mlflow", "tensorboard")
TARGET_KINDS = ("max", "min", "max_relative_to_baseline")


def parse_space(data: Any, file: str, registry: Registry, source: str = "", base_dir: Path | None = None) -> SearchSpace:
    """Validate a parsed YAML document into a :class:`SearchSpace`.

    ``base_dir`` (the YAML file's folder) resolves relative paths of ``base_model:``.
    """
    root = _Loc(file)
    data = _mapping(data, root, TOP_KEYS)

    ds_loc = root / "dataset"
    ds_raw = data.get("dataset", "digits")
    if isinstance(ds_raw, str):
        ds_raw = {"spec": ds_raw}
    ds_raw = _mapping(ds_raw, ds_loc, ("spec", "data_dir", "download", "split", "image_size", "color"))
    split_raw = _mapping(ds_raw.get("split"), ds_loc / "split", ("validation", "test", "seed", "shuffle", "limit"))
    split_raw = dict(split_raw)
    for key in ("validation", "test"):
        if key in split_raw:
            split_raw[key] = _number(split_raw[key], ds_loc / "split" / key, minimum=0)
    if "seed" in split_raw:
        split_raw["seed"] = _int(split_raw["seed"], ds_loc / "split" / "seed", minimum=0)
    if "limit" in split_raw:
        split_raw["limit"] = _int(split_raw["limit"], ds_loc / "split" / "limit", minimum=3, allow_none=True)
    if not isinstance(split_raw.get("shuffle", True), bool):
        raise (ds_loc / "split" / "shuffle").error(f"expected true or false, got {split_raw['shuffle']!r}")
    try:
        split = SplitConfig(**split_raw)
    except (TypeError, ValueError) as exc:
        raise (ds_loc / "split").error(str(exc)) from None
    spec = ds_raw.get("spec", "digits")
    if not isinstance(spec, str):
        raise (ds_loc / "spec").error(f"expected a dataset spec string, got {spec!r}")
    _lookup(registry.datasets, spec.partition(":")[0], ds_loc / "spec")
    image_size = None
    if ds_raw.get("image_size") is not None:
        try:
            image_size = check_image_size(ds_raw["image_size"])
        except ValueError as exc:
            raise (ds_loc / "image_size").error(str(exc)) from None
    color = ds_raw.get("color")
    if color is not None:
        color = _choice(color, ds_loc / "color", COLORS)
    dataset = DatasetConfig(
        spec=spec,
        data_dir=ds_raw.get("data_dir"),
        download=bool(ds_raw.get("download", False)),
        split=split,
        image_size=image_size,
        color=color,
    )

    task_name = data.get("task", "vae")
    if not isinstance(task_name, str):
        raise (root / "task").error(f"expected a task name, got {task_name!r}")
    task = _lookup(registry.tasks, task_name, root / "task")

    base_model = _parse_base_model(data.get("base_model"), root / "base_model", base_dir) if "base_model" in data else None
    arch_loc = root / "architecture"
    arch_raw = _mapping(data.get("architecture"), arch_loc)
    if not arch_raw and base_model is None:
        raise arch_loc.error("at least one architecture is needed, e.g. architecture: {mlp: {latent_dim: {low: 2, high: 32}}}")
    architectures = []
    for name, params_raw in arch_raw.items():
        loc = arch_loc / name
        if name == BASE_MODEL_ARCHITECTURE:
            raise loc.error("a user's model is given as base_model: {factory, checkpoint, ...}, not under architecture:")
        arch = _lookup(registry.architectures, name, loc)
        if task.name not in arch.tasks:
            raise loc.error(
                f"architecture {name!r} does not support task {task.name!r} (task:); "
                f"it supports: {', '.join(arch.tasks) or '(none)'}"
            )
        params_raw = dict(_mapping(params_raw, loc))
        preset = params_raw.pop("preset", None)
        base = None
        if preset is not None:
            if preset not in arch.presets:
                raise (loc / "preset").error(
                    f"unknown preset {preset!r}; presets of {name!r}: {', '.join(arch.presets) or '(none)'}"
                )
            base = arch.presets[preset]
        architectures.append(ComponentSpace(name, _component_params(arch, params_raw, loc, base), preset))

    tr_loc = root / "training"
    tr_raw = _mapping(data.get("training"), tr_loc, tuple(p.name for p in TRAINING_PARAMS))
    training = {p.name: parse_param(p, tr_raw.get(p.name), tr_loc / p.name, present=p.name in tr_raw) for p in TRAINING_PARAMS}

    comp_loc = root / "compressors"
    comp_raw = data.get("compressors") or []
    if not isinstance(comp_raw, list):
        raise comp_loc.error("expected a list of pipeline slots")
    slots = []
    for i, slot_raw in enumerate(comp_raw):
        loc = comp_loc / i
        if isinstance(slot_raw, str):
            slot_raw = {"name": slot_raw}
        slot_raw = _mapping(slot_raw, loc, ("name", "params", "optional", "choices"))
        optional = slot_raw.get("optional", False)
        if not isinstance(optional, bool):
            raise (loc / "optional").error(f"expected true or false, got {optional!r}")
        if "choices" in slot_raw:
            if "name" in slot_raw or "params" in slot_raw:
                raise loc.error("give either name (and params) or choices, not both")
            options_raw = slot_raw["choices"]
            if not isinstance(options_raw, list) or not options_raw:
                raise (loc / "choices").error("expected a non-empty list of {name, params}")
            option_locs = [(loc / "choices" / j, o if isinstance(o, dict) else {"name": o}) for j, o in enumerate(options_raw)]
        else:
            if "name" not in slot_raw:
                raise loc.error("a pipeline slot needs a compressor name (or choices)")
            option_locs = [(loc, slot_raw)]
        options = []
        for oloc, option in option_locs:
            option = _mapping(option, oloc, ("name", "params", "optional", "choices") if oloc is loc else ("name", "params"))
            cname = option.get("name")
            comp = _lookup(registry.compressors, cname, oloc / "name")
            if comp.stage not in STAGES:
                raise (oloc / "name").error(f"compressor {cname!r} has stage {comp.stage!r}, not one of {', '.join(STAGES)}")
            options.append(
                ComponentSpace(
                    comp.name, _component_params(comp, _mapping(option.get("params"), oloc / "params"), oloc / "params")
                )
            )
        names = [o.name for o in options]
        if len(set(names)) != len(names):
            raise loc.error(f"a compressor appears twice among the choices: {names}")
        if len({registry.compressors.get(n).stage for n in names}) > 1:
            raise loc.error(
                f"the choices of one slot must share a stage, got {[(n, registry.compressors.get(n).stage) for n in names]}"
            )
        slots.append(CompressorSlot(tuple(options), optional))
    _check_composition(slots, registry, comp_loc)
    has_distill = any(registry.compressors.get(o.name).stage == "distill" for s in slots for o in s.options)
    if base_model is not None:
        if has_distill and not architectures:
            raise arch_loc.error(
                "with base_model:, a distill stage trains a student of a built-in family named under "
                "architecture: (e.g. architecture: {conv: {base_channels: {low: 4, high: 16}}})"
            )
        if architectures and not has_distill:
            raise arch_loc.error(
                "with base_model:, architecture: names distillation students; add a distill stage "
                "to compressors: or remove architecture:"
            )
        # The user's model itself: its layer groups and channel groups are found by tracing when it is loaded.
        needs = _check_requirements(slots, registry, comp_loc, None, "base_model", skip_stages=("distill",))
        if "channel_groups" in needs:
            base_model = dataclasses.replace(base_model, needs_channel_groups=True)
        if "layer_groups" in needs and base_model.groups is None:
            base_model = dataclasses.replace(base_model, needs_groups=True)
    for arch_space in architectures:
        _check_requirements(
            slots,
            registry,
            comp_loc,
            registry.architectures.get(arch_space.name),
            f"architecture {arch_space.name!r}",
            skip_stages=("distill",) if base_model is not None else (),
        )

    obj_loc = root / "objectives"
    objectives = data.get("objectives", list(task.default_objectives))
    if not isinstance(objectives, list) or not objectives:
        raise obj_loc.error("expected a non-empty list of objective names")

    def measurable(name: str, loc: _Loc) -> Any:
        objective = _lookup(registry.objectives, name, loc)
        if objective.tasks is not None and task.name not in objective.tasks:
            raise loc.error(
                f"objective {name!r} measures models of task {', '.join(objective.tasks)}, not of task {task.name!r} (task:)"
            )
        return objective

    for i, name in enumerate(objectives):
        measurable(name, obj_loc / i)
    if len(set(objectives)) != len(objectives):
        raise obj_loc.error(f"an objective is listed twice: {objectives}")
    record_raw = data.get("record")
    rec_loc = root / "record"
    if record_raw is None:
        record = [
            n
            for n in registry.objectives.names()
            if n not in objectives
            and ((tasks := registry.objectives.get(n).tasks) is None or task.name in tasks)
            and not registry.objectives.get(n).needs_labels
        ]
    else:
        if not isinstance(record_raw, list):
            raise rec_loc.error("expected a list of objective names to measure without optimizing")
        for i, name in enumerate(record_raw):
            measurable(name, rec_loc / i)
        record = [n for n in record_raw if n not in objectives]

    s_loc = root / "sampler"
    s_raw = data.get("sampler", "auto")
    if isinstance(s_raw, str):
        s_raw = {"name": s_raw}
    s_raw = _mapping(
        s_raw, s_loc, ("name", "seed", "population_size", "n_startup_trials", "repeats", "full_epochs", "recompress")
    )
    repeats, full_epochs = s_raw.get("repeats", False), s_raw.get("full_epochs", True)
    recompress = s_raw.get("recompress", True)
    for key, flag in (("repeats", repeats), ("full_epochs", full_epochs), ("recompress", recompress)):
        if not isinstance(flag, bool):
            raise (s_loc / key).error(f"expected true or false, got {flag!r}")
    s_name = _choice(s_raw.get("name", "auto"), s_loc / "name", SAMPLERS)
    # auto is hvi on two objectives (samplers.choose); an explicit true elsewhere would be silently ignored
    picked = ("hvi" if len(objectives) == 2 else "tpe") if s_name == "auto" else s_name
    only_hvi = {
        "full_epochs": "trains every trial for the top of training.epochs",
        "recompress": "recompresses trained bases",
    }
    for key, what in only_hvi.items():
        if s_raw.get(key) is True and picked != "hvi":
            count = f"{len(objectives)} objective{'s' if len(objectives) != 1 else ''}"
            chosen = f"auto picks {picked} for {count}" if s_name == "auto" else f"{picked} is chosen"
            raise (s_loc / key).error(f"only hvi {what}, and {chosen}; remove {key} or set name: hvi")
    sampler = SamplerConfig(
        name=s_name,
        seed=_int(s_raw.get("seed"), s_loc / "seed", allow_none=True),
        population_size=_int(s_raw.get("population_size"), s_loc / "population_size", minimum=2, allow_none=True),
        n_startup_trials=_int(s_raw.get("n_startup_trials"), s_loc / "n_startup_trials", minimum=0, allow_none=True),
        repeats=repeats,
        full_epochs=full_epochs,
        recompress=recompress,
    )

    p_loc = root / "pruner"
    p_raw = data.get("pruner", "none")
    if isinstance(p_raw, str):
        p_raw = {"name": p_raw}
    p_raw = _mapping(p_raw, p_loc, ("name", "warmup_epochs", "min_trials", "reduction_factor", "score", "percentile"))
    p_name = p_raw.get("name", "none")
    if isinstance(p_name, str) and p_name in RENAMED_PRUNERS:  # a list or mapping is refused by _choice below
        # 0.1 spaces keep working; `percentile` belonged to the median rule and has no meaning now
        p_name = RENAMED_PRUNERS[p_name]
        warnings.warn(
            f"{p_loc.file}: pruner.name: 'median' was replaced in 0.2 by '{p_name}' (successive halving "
            f"on every objective), which this search runs; write name: {p_name}",
            FutureWarning,
            stacklevel=2,
        )
    elif "percentile" in p_raw:
        raise (p_loc / "percentile").error(
            "`percentile` belonged to the 0.1 median rule; the pareto rule has warmup_epochs, min_trials and reduction_factor"
        )
    pruner = PrunerConfig(
        name=_choice(p_name, p_loc / "name", PRUNERS),
        warmup_epochs=_int(p_raw.get("warmup_epochs", 2), p_loc / "warmup_epochs", minimum=1),
        min_trials=_int(p_raw.get("min_trials", 4), p_loc / "min_trials", minimum=1),
        reduction_factor=_int(p_raw.get("reduction_factor", 3), p_loc / "reduction_factor", minimum=2),
        score=_choice(p_raw.get("score", "base"), p_loc / "score", RUNG_SCORES),
    )

    l_loc = root / "latency"
    l_raw = _mapping(data.get("latency"), l_loc, ("batch_size", "repeats", "warmup", "target"))
    latency = LatencyConfig(
        batch_size=_int(l_raw.get("batch_size", 128), l_loc / "batch_size", minimum=1),
        repeats=_int(l_raw.get("repeats", 30), l_loc / "repeats", minimum=1),
        warmup=_int(l_raw.get("warmup", 5), l_loc / "warmup", minimum=0),
        target=_device(l_raw.get("target", "cpu"), l_loc / "target"),
    )

    ref_raw = data.get("reference_point")
    reference_point = None
    if ref_raw is not None:
        ref_loc = root / "reference_point"
        ref_raw = _mapping(ref_raw, ref_loc, tuple(objectives))
        reference_point = {k: _number(v, ref_loc / k) for k, v in ref_raw.items()}

    t_loc = root / "targets"
    targets = []
    for key, bound in _mapping(data.get("targets"), t_loc).items():
        if key not in objectives and key not in record:
            raise (t_loc / key).error(
                f"no such measured figure; targets may bound the objectives and record entries: "
                f"{', '.join([*objectives, *record])}"
            )
        bound = _mapping(bound, t_loc / key, TARGET_KINDS)
        if not bound:
            raise (t_loc / key).error(f"expected one of {', '.join(TARGET_KINDS)}, e.g. {{max: 200000}}")
        for kind, value in bound.items():
            targets.append(Target(key, kind, _number(value, t_loc / key / kind)))
    stop_when = _choice(data.get("stop_when", "budget"), root / "stop_when", STOP_WHEN)
    if stop_when == "first_feasible" and not targets:
        raise (root / "stop_when").error("first_feasible needs targets to be feasible against")

    tracking_raw = _mapping(data.get("tracking") or {}, root / "tracking", TRACKING_KEYS)
    for key, value in tracking_raw.items():
        if not isinstance(value, str) or not value.strip():
            raise (root / "tracking" / key).error(f"expected a URI or folder (a non-empty string), got {value!r}")

    name = data.get("name") or Path(file).stem
    if not isinstance(name, str):
        raise (root / "name").error(f"expected a string, got {name!r}")
    if problem := study_name_problem(name):
        raise (root / "name").error(problem)
    return SearchSpace(
        path=file,
        name=name,
        dataset=dataset,
        architectures=tuple(architectures),
        training=training,
        compressors=tuple(slots),
        objectives=tuple(objectives),
        record=tuple(record),
        sampler=sampler,
        pruner=pruner,
        latency=latency,
        trials=_int(data.get("trials", 10), root / "trials", minimum=0),
        timeout_s=_number(data.get("timeout_s"), root / "timeout_s", minimum=1e-3, allow_none=True),
        device=_device(data.get("device", "auto"), root / "device"),
        seed=_int(data.get("seed", 0), root / "seed"),
        teacher=_teacher(data.get("teacher"), root / "teacher"),
        base_model=base_model,
        reference_point=reference_point,
        targets=tuple(targets),
        stop_when=stop_when,
        tracking=TrackingConfig(**tracking_raw),
        source=source,
        task=task.name,
        needs_labels=task.needs_labels or any(registry.objectives.get(n).needs_labels for n in (*objectives, *record)),
    )


def load_space_text(
    text: str, file: str, registry: Registry | None = None, base_dir: Path | None = None, base_model: Any = None
) -> SearchSpace:
    """Validate YAML text (``file`` names it in errors).

    Args:
        text: the YAML.
        file: its name in error messages.
        registry: default: the process-wide one.
        base_dir: resolves relative ``base_model:`` paths (default: the working directory).
        base_model: replaces the YAML's ``base_model:``: a mapping of the same keys (written into the
            stored text, so workers and export see it) or a ``torch.nn.Module`` (this process only).
    """

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from None
    instance = None
    if isinstance(base_model, dict) and isinstance(data, dict):
        data = {**data, "base_model": base_model}
        text = yaml.safe_dump(data, sort_keys=False)
    elif base_model is not None and isinstance(data, dict):
        instance = base_model
        # Validated as a placeholder factory, which the instance then replaces (the module is not YAML).
        data = {**data, "base_model": {"factory": "instance:given"}}
    space = parse_space(data, file, registry or get_registry(), source=text, base_dir=base_dir or Path.cwd())
    if instance is None and space.base_model is not None and isinstance(data, dict):
        # Store the resolved paths, so workers and export that re-read the study's text find the same files.
        resolved = {**data["base_model"], "factory": space.base_model.factory, "checkpoint": space.base_model.checkpoint}
        if resolved != data["base_model"]:
            space = dataclasses.replace(space, source=yaml.safe_dump({**data, "base_model": resolved}, sort_keys=False))
    if instance is not None:
        assert space.base_model is not None
        space = dataclasses.replace(space, base_model=dataclasses.replace(space.base_model, factory=None, instance=instance))
    return space


def load_space(path: str | Path, registry: Registry | None = None, base_model: Any = None) -> SearchSpace:
    """Read and validate a search-space YAML file (``base_model``: see :func:`load_space_text`)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); save it as UTF-8"
        ) from None
    return load_space_text(text, path.name, registry, base_dir=path.resolve().parent, base_model=base_model)


def apply_overrides(
    space: SearchSpace, dataset: str | None = None, data_dir: str | None = None, device: str | None = None
) -> SearchSpace:
    """``space`` with the command line's ``--dataset``, ``--data-dir`` and ``--device`` in place of its own (None keeps it)."""
    if dataset is not None or data_dir is not None:
        changes: dict[str, Any] = {k: v for k, v in {"spec": dataset, "data_dir": data_dir}.items() if v is not None}
        ds = dataclasses.replace(space.dataset, **changes)
        space = dataclasses.replace(space, dataset=ds)
    if device is not None:
        space = dataclasses.replace(space, device=device)
    return space
