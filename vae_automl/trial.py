"""One trial: build, train (or reuse a cached base), compress, measure, save.

The base-model cache key is the sha256 of the JSON of: the canonical model
config (architecture and its resolved parameters, input shape), the
training settings that change the weights (epochs, batch_size, lr, beta,
weight_decay, patience, and lr_schedule unless constant), the dataset spec with the sha256 of its split
indices, the seed, and the storage format version. Trials that differ only
in their compression pipeline share a base.

This module is the driver and imports no torch: what it does to a torch
model (build and train a base, store and load it) is in
:mod:`vae_automl.trial_torch`, imported when a trial's architecture makes
torch models. An architecture with ``torch_models = False`` (plain Python
models, such as the synthetic trial's) runs the same route, its models
stored by its own ``to_bytes`` / ``from_bytes``, and torch is never loaded.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

from filelock import FileLock

from vae_automl.components import CompressionContext, MeasureContext
from vae_automl.config import BASE_MODEL_ARCHITECTURE, BaseModelConfig
from vae_automl.data import DataSplits, load_images, load_labels, make_splits
from vae_automl.devices import check_device, resolve_device
from vae_automl.errors import PluginError, TrialFailed, VaeAutomlError
from vae_automl.files import write_atomic
from vae_automl.record import BaseInfo, LatencyInfo, TrialRecord
from vae_automl.registry import call_each
from vae_automl.storage.header import FORMAT_VERSION
from vae_automl.train_config import TrainConfig, train_config_from

if TYPE_CHECKING:
    import pluggy
    import torch

    from vae_automl.components import Architecture
    from vae_automl.config import SearchSpace
    from vae_automl.registry import Entry, Registry
    from vae_automl.space import TrialSpec
    from vae_automl.vae import VAE

OnEpoch = Callable[[int, float, int, Callable[[], float]], None]
"""``on_epoch(epoch, validation_loss, base_params, compressed_loss)`` while a base trains (see :func:`run_trial`)."""
WEIGHT_TRAINING_KEYS = ("epochs", "batch_size", "lr", "beta", "weight_decay", "patience")
PLAIN_SUFFIX = ".bin"
"""The file suffix of a stored plain (non-torch) model: whatever its architecture's ``to_bytes`` wrote."""


def torch_side() -> ModuleType:
    """:mod:`vae_automl.trial_torch`, imported the first time a trial handles a torch model."""
    # deferred: it imports torch (~300 MB a process); a process running only torch-free trials never needs it
    from vae_automl import trial_torch

    return trial_torch


def uses_torch(space: SearchSpace, registry: Registry) -> bool:
    """Whether trials of ``space`` may handle torch models: a base model, a teacher, or an architecture making them."""
    if space.base_model is not None or space.teacher:
        return True
    return any(registry.architectures.get(a.name).torch_models for a in space.architectures)


def _architecture_of(env: TrialEnv, model: Any) -> Architecture:
    return env.registry.architectures.get(model.config["architecture"])


@dataclass
class TrialEnv:
    """What a process needs to run trials of one search space; built once per process."""

    space: SearchSpace
    registry: Registry
    pm: pluggy.PluginManager
    device: torch.device
    data: DataSplits
    cache_dir: Path
    artifact_dir: Path
    teacher: VAE | None = None
    base_model: VAE | None = None
    """The user's model of a ``base_model:`` study (fine-tuned if asked), shared read-only by every trial."""
    base_model_info: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, int] = field(default_factory=lambda: {"base_trained": 0, "base_reused": 0})
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    """The uncompressed figures of each base this process measured, by base cache key: trials sharing a base
    (compression-only search) measure it once."""
    study_baseline: dict[str, Any] | None = None
    """The baseline row of a ``base_model:`` study (:func:`base_model_baseline`), once measured in this process."""
    deadline: float | None = None
    """``time.monotonic()`` at which the run's ``--timeout`` ends: a running trial stops there too."""


_splits_cache: dict[tuple[Any, ...], DataSplits] = {}


def prepare(
    space: SearchSpace, out_dir: str | Path, registry: Registry, pm: pluggy.PluginManager, device: str | None = None
) -> TrialEnv:
    """Load the data onto the device once and set up the cache and artifact folders.

    A space whose trials handle no torch model (:func:`uses_torch`) keeps its data numpy arrays and its device a
    checked name: torch is not imported.
    """
    torch_trials = uses_torch(space, registry)
    if torch_trials:
        dev = resolve_device(device or space.device)
        torch_side().set_device(dev)
    else:
        # plain models run on no device: the name is recorded as given
        dev = cast("torch.device", check_device(device or space.device))
    ds = space.dataset
    key = (ds.spec, ds.data_dir, ds.split, ds.image_size, ds.color, str(dev), space.needs_labels)
    if key not in _splits_cache:
        images = load_images(ds.spec, ds.data_dir, ds.download, registry, ds.image_size, ds.color)
        labels = load_labels(ds.spec, len(images), ds.data_dir, ds.download, registry) if space.needs_labels else None
        on = dev if torch_trials else None
        _splits_cache[key] = make_splits(images, ds.split, on, spec=ds.spec, labels=labels)
    out = Path(out_dir)
    env = TrialEnv(space, registry, pm, dev, _splits_cache[key], out / "cache", out / "models")
    env.cache_dir.mkdir(parents=True, exist_ok=True)
    env.artifact_dir.mkdir(parents=True, exist_ok=True)
    if space.teacher:
        path = Path(space.teacher)
        if not path.is_file():
            raise VaeAutomlError(f"{space.path}: teacher: no such checkpoint {path}")
        env.teacher = torch_side().load_teacher(path, str(space.path), registry, dev)
    if space.base_model is not None:
        env.base_model, env.base_model_info = load_base_model(env, space.base_model)
    return env


def load_base_model(env: TrialEnv, config: BaseModelConfig) -> tuple[VAE, dict[str, Any]]:
    """The user's model, protocol-checked on the training images; fine-tuned (and cached by checkpoint sha256) if asked."""
    # deferred: base_model imports the user's model code; only base_model: spaces need it
    from vae_automl import base_model as bm

    space = env.space
    images = env.data.train[:1024]
    try:
        model = bm.wrap(config, images)
    except bm.BaseModelError as exc:
        raise bm.BaseModelError(f"{space.path}: {exc}") from None
    factory = model.config["factory"]
    if config.needs_groups and not env.registry.architectures.get(BASE_MODEL_ARCHITECTURE).layer_groups(model):
        raise bm.BaseModelError(
            f"{space.path}: base_model {factory!r}: a compressor asks for per-layer-group settings (bits_encoder, ...), "
            "but the documented rule finds no encoder / heads / decoder groups in this model; name them in "
            "base_model.groups: {encoder: [...], heads: [...], decoder: [...]} or set `bits` only"
        )
    if config.needs_channel_groups:
        try:
            env.registry.architectures.get(BASE_MODEL_ARCHITECTURE).channel_groups(model)
        except ValueError as exc:
            raise bm.BaseModelError(
                f"{space.path}: a compressor removes units (structured pruning), but {exc}; use unstructured pruning "
                "(magnitude_prune, taylor_prune, l1_prune) or distill to a built-in family"
            ) from None
    epochs = config.fine_tune_epochs
    info: dict[str, Any] = {
        "base_model": factory,
        "checkpoint_sha256": model.config["checkpoint_sha256"],
        "fine_tune_epochs": epochs,
        "params": sum(p.numel() for p in model.parameters()),
    }
    if epochs > 0:
        training = {k: s.value if not s.searched else None for k, s in space.training.items()}
        cfg = train_config_from({k: v for k, v in training.items() if v is not None}, epochs=epochs, patience=None)
        key = base_cache_key(model.config, {**training, "epochs": epochs}, env.data, space.seed)
        weights = env.cache_dir / f"base-{key}.safetensors"
        # concurrent workers wanting the same base wait for the first to train it (POSIX and Windows)
        with FileLock(env.cache_dir / f"base-{key}.lock"):
            cached = read_cached(weights, env)
            if cached is not None:
                model = cached
            else:
                torch_side().train(model, env.data, cfg, seed=space.seed)
                write_atomic(weights, torch_side().save(model, env.registry)[0])
        info["cache_key"] = key
    return model.eval(), info


def read_cached(weights: Path, env: TrialEnv, meta_path: Path | None = None, arch: Architecture | None = None) -> VAE | None:
    """The cached base model in ``weights`` (and its ``meta_path`` record), or None if absent.

    A damaged cache file (a process killed mid-write on a file system
    without atomic rename, a full disk) is named in a warning, removed and
    rebuilt: it must not fail every later trial that shares the base.
    ``arch``: the architecture of an untrained plain (non-torch) model, read by its ``from_bytes``.
    """
    if not weights.is_file() or (meta_path is not None and not meta_path.is_file()):
        return None
    try:
        if arch is not None and not arch.torch_models:
            model = arch.from_bytes(weights.read_bytes())
        else:
            model = torch_side().load(weights.read_bytes(), env.registry, env.device)
        if meta_path is not None:
            BaseInfo.from_dict(json.loads(meta_path.read_text()))
    except Exception as exc:
        warnings.warn(
            f"{weights}: the cached base model cannot be read ({type(exc).__name__}: {exc}); removing it and training it again",
            UserWarning,
            stacklevel=2,
        )
        for path in (weights, meta_path):
            if path is not None:
                path.unlink(missing_ok=True)
        return None
    return model


def base_cache_key(model_config: dict[str, Any], training: dict[str, Any], data: DataSplits, seed: int, task: str = "vae") -> str:
    payload: dict[str, Any] = {
        "model": model_config,
        "training": {k: training.get(k) for k in WEIGHT_TRAINING_KEYS},
        "data": {"spec": data.info["dataset"], "split_sha256": data.info["split_sha256"]},
        "seed": seed,
        "format": FORMAT_VERSION,
    }
    if training.get("lr_schedule", "constant") != "constant":  # so the keys of caches made before it stay valid
        payload["training"]["lr_schedule"] = training["lr_schedule"]
    if task != "vae":  # so the keys of existing vae caches stay valid
        payload["task"] = task
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


def train_base(env: TrialEnv, spec: TrialSpec, train_config: TrainConfig, on_epoch: OnEpoch | None) -> tuple[VAE, BaseInfo]:
    """The trained base model of ``spec``, from the cache or freshly trained (then cached).

    In a ``base_model:`` study it is the user's model (distillation students are made by the distill stage).
    """
    if env.base_model is not None:
        given = env.base_model_info
        return env.base_model, BaseInfo(
            cache_key=given.get("cache_key", ""),
            params=given["params"],
            epochs_run=0,
            stopped_early=False,
            train_seconds=0.0,
            samples_per_s=0.0,
            validation_curve=[],
            cache_hit=True,
            extra={k: given[k] for k in ("base_model", "checkpoint_sha256", "fine_tune_epochs")},
        )
    arch = env.registry.architectures.get(spec.architecture)
    try:
        model_config = arch.config_from_params(spec.architecture_params, env.data.input_shape)
    except (ValueError, KeyError) as exc:
        raise TrialFailed(
            f"architecture {spec.architecture!r} (plugin {env.registry.architectures.plugin_of(spec.architecture)!r}) "
            f"cannot be built from {spec.architecture_params}: {exc}"
        ) from exc
    task = env.registry.tasks.get(env.space.task)
    key = base_cache_key(model_config, spec.training, env.data, spec.seed, task.name)
    suffix = ".safetensors" if arch.torch_models else PLAIN_SUFFIX
    weights, meta_path = env.cache_dir / f"base-{key}{suffix}", env.cache_dir / f"base-{key}.json"
    # concurrent workers wanting the same base wait for the first to train it (POSIX and Windows)
    with FileLock(env.cache_dir / f"base-{key}.lock"):
        cached = read_cached(weights, env, meta_path, arch)
        if cached is not None:
            info = BaseInfo.from_dict(json.loads(meta_path.read_text()))
            info.cache_hit = True
            env.stats["base_reused"] += 1
            return cached, info
        if arch.torch_models:
            model, info = _train_torch_base(env, spec, arch, model_config, train_config, on_epoch)
            data = torch_side().save(model, env.registry)[0]
        else:
            # a plain model has no weights to train: the built model is the base
            model = arch.build(model_config)
            info = BaseInfo(
                "", params=0, epochs_run=0, stopped_early=False, train_seconds=0.0, samples_per_s=0.0, validation_curve=[]
            )
            data = arch.to_bytes(model)
        info.cache_key = key
        write_atomic(weights, data)
        write_atomic(meta_path, json.dumps(info.as_dict()).encode())
        env.stats["base_trained"] += 1
        return model, info


def _train_torch_base(
    env: TrialEnv,
    spec: TrialSpec,
    arch: Architecture,
    model_config: dict[str, Any],
    train_config: TrainConfig,
    on_epoch: OnEpoch | None,
) -> tuple[VAE, BaseInfo]:
    """A fresh torch base model of ``spec``, trained by the space's task (its ``cache_key`` left for the caller)."""
    make_callback = None
    if on_epoch is not None:
        score = _Scorer(env, spec, train_config)

        def make_callback(model: VAE) -> Callable[[int, float], None]:
            n_params = sum(p.numel() for p in model.parameters())
            return lambda epoch, loss: on_epoch(epoch, loss, n_params, lambda: score(model))

    task = env.registry.tasks.get(env.space.task)
    model, result = torch_side().train_fresh(
        arch, model_config, env.data, env.device, task, train_config, spec.seed, make_callback
    )
    info = BaseInfo(
        cache_key="",
        params=sum(p.numel() for p in model.parameters()),
        epochs_run=result.epochs_run,
        stopped_early=result.stopped_early,
        train_seconds=result.seconds,
        samples_per_s=result.samples_per_s,
        captured=result.captured,
        validation_curve=list(result.validation_curve),
    )
    return model, info


def compress(
    env: TrialEnv,
    base: VAE,
    spec: TrialSpec,
    train_config: TrainConfig,
    fine_tuning: bool = True,
    skipped_epochs: list[int] | None = None,
) -> VAE:
    """Apply the pipeline in stage order; a raising compressor fails the trial, naming its plugin.

    ``fine_tuning=False`` makes every fine-tune a no-op: the shapes and codes come out as usual, cheaply;
    the epochs each skipped fine-tune asked for are appended to ``skipped_epochs``.
    """
    teacher = env.teacher if env.teacher is not None else base
    task = env.registry.tasks.get(env.space.task)

    def fine_tune(model: VAE, epochs: int, extra_loss: Any = None, after_step: Any = None, lr: float | None = None) -> VAE:
        if not fine_tuning:
            if skipped_epochs is not None:
                skipped_epochs.append(int(epochs))
            return model
        cfg = train_config.for_fine_tuning(epochs)
        torch_side().train(model, env.data, cfg, seed=spec.seed, extra_loss=extra_loss, after_step=after_step, lr=lr, task=task)
        return model

    student = None
    if env.base_model is not None and spec.architecture != BASE_MODEL_ARCHITECTURE:
        # The user's model teaches a student of the built-in family this trial sampled.
        student = env.registry.architectures.get(spec.architecture).config_from_params(
            spec.architecture_params, env.data.input_shape
        )
    model = base
    for name, values in spec.pipeline:
        entry = env.registry.compressors.entry(name)
        ctx = CompressionContext(
            data=env.data,
            device=env.device,
            seed=spec.seed,
            fine_tune=fine_tune,
            teacher=teacher,
            train_config=train_config,
            build_model=env.registry.build_model,
            architecture=env.registry.architectures.get(model.config["architecture"]),
            student=student if entry.component.stage == "distill" else None,
            task=task,
        )
        try:
            out = entry.component.apply(model, dict(values), ctx)
        except TrialFailed:
            raise
        except Exception as exc:
            raise TrialFailed(f"compressor {name!r} (plugin {entry.plugin!r}) failed: {type(exc).__name__}: {exc}") from exc
        plain = not _architecture_of(env, model).torch_models
        if not (_is_plain_model(out) if plain else torch_side().is_model(out)):
            raise TrialFailed(
                f"compressor {name!r} (plugin {entry.plugin!r}) returned {type(out).__name__}, not a model "
                f"({'an object' if plain else 'an nn.Module'} with config and encodings, like its input)"
            )
        model = out if plain else out.to(env.device)
    if spec.pipeline and _architecture_of(env, model).torch_models:
        task.finalize(model)  # the task's hook readies a torch model to measure and store
    return model


def _is_plain_model(out: Any) -> bool:
    return isinstance(getattr(out, "config", None), dict) and isinstance(getattr(out, "encodings", None), dict)


def base_model_baseline(env: TrialEnv) -> dict[str, Any] | None:
    """The baseline row of a ``base_model:`` study: the user's model as given (or as fine-tuned by
    ``base_model.fine_tune_epochs``), measured with the study's objectives and recorded figures.

    Measured once per process; None for a study without a base model. What the study stores
    under :data:`vae_automl.study.BASELINE_ATTR`: ``{"objectives", "metrics", "base_model"}``.
    """
    if env.base_model is None:
        return None
    if env.study_baseline is None:
        metrics, _ = measure(env, copy.deepcopy(env.base_model), (*env.space.objectives, *env.space.record), env.space.seed)
        env.study_baseline = {
            "objectives": {n: metrics[n] for n in env.space.objectives},
            "metrics": metrics,
            "base_model": env.base_model_info,
        }
    return env.study_baseline


def measure(env: TrialEnv, model: VAE, names: tuple[str, ...], seed: int) -> tuple[dict[str, float], MeasureContext]:
    lat = env.space.latency
    ctx = MeasureContext(
        model=model.eval() if _architecture_of(env, model).torch_models else model,
        data=env.data,
        device=env.device,
        seed=seed,
        registry=env.registry,
        latency_batch_size=lat.batch_size,
        latency_repeats=lat.repeats,
        latency_warmup=lat.warmup,
        latency_target=str(env.device) if lat.target == "auto" else lat.target,
    )
    values = {}
    for name in names:
        entry = env.registry.objectives.entry(name)
        try:
            value = float(entry.component.measure(ctx))
        except Exception as exc:
            raise TrialFailed(f"objective {name!r} (plugin {entry.plugin!r}) failed: {type(exc).__name__}: {exc}") from exc
        if not math.isfinite(value):
            raise TrialFailed(f"objective {name!r} measured {value}")
        values[name] = value
    return values, ctx


def plugins_used(env: TrialEnv, spec: TrialSpec, model: VAE) -> dict[str, dict[str, str]]:
    """``{plugin: {distribution, version, module}}`` of every component this trial used (what loading its files needs)."""
    reg = env.registry
    entries: list[Entry[Any]] = [
        reg.architectures.entry(model.config["architecture"]),
        *(reg.compressors.entry(name) for name, _ in spec.pipeline),
        *(reg.objectives.entry(name) for name in (*env.space.objectives, *env.space.record)),
        reg.datasets.entry(env.space.dataset.spec.partition(":")[0]),
    ]
    if env.base_model is not None:
        entries.append(reg.architectures.entry(env.base_model.config["architecture"]))
    # the codecs the packed file needs may come from another plugin than the compressor that chose them
    codecs = {spec.get("codec", "dense") for spec in model.encodings.values()}
    entries += [reg.codecs.entry(name) for name in sorted(codecs) if name in reg.codecs]
    return {e.plugin: e.provenance() for e in sorted(entries, key=lambda e: e.plugin)}


class _Scorer:
    """:func:`compressed_validation_loss` of one trial's bases (the pipeline resolved once)."""

    def __init__(self, env: TrialEnv, spec: TrialSpec, train_config: TrainConfig) -> None:
        self.env, self.train_config = env, train_config
        stages = {name: env.registry.compressors.get(name).stage for name, _ in spec.pipeline}
        # a distill stage trains its student from scratch: unscored without fine-tuning, so it is left out
        self.spec = dataclasses.replace(spec, pipeline=[(n, v) for n, v in spec.pipeline if stages[n] != "distill"])

    def __call__(self, base: VAE, skipped_epochs: list[int] | None = None) -> float:
        return compressed_validation_loss(self.env, base, self.spec, self.train_config, skipped_epochs)


def compressed_validation_loss(
    env: TrialEnv, base: VAE, spec: TrialSpec, train_config: TrainConfig, skipped_epochs: list[int] | None = None
) -> float:
    """The validation loss of ``base`` (trained or part-trained) compressed by ``spec``'s pipeline without fine-tuning.

    The fine-tuning epochs the pipeline asked for are appended to ``skipped_epochs``.

    The AMC idea (He et al. 2018): the compressed model's quality before fine-tuning is a cheap, early
    score of the compression setting. ``base`` is left as found (its weights, mode and the global RNG
    state, so a training run that asks mid-way goes on exactly as without).
    """
    task = env.registry.tasks.get(env.space.task)
    state, was_training = torch_side().rng_state(), base.training
    try:
        model = compress(env, base, spec, train_config, False, skipped_epochs) if spec.pipeline else base
        return float(task.validation_loss(model, env.data, train_config, spec.seed))
    finally:
        torch_side().set_rng_state(state)
        base.train(was_training)


def measure_before_training(env: TrialEnv, spec: TrialSpec) -> dict[str, float]:
    """The objectives that do not need training (``Objective.needs_training`` false), measured on the untrained
    model compressed without fine-tuning: what early stopping compares at a rung besides the validation loss."""
    names = env.registry.known_before_training(env.space.objectives)
    if not names:
        return {}
    arch = env.registry.architectures.get(spec.architecture)
    model_config = arch.config_from_params(spec.architecture_params, env.data.input_shape)
    model = torch_side().build(arch, model_config, env.device, spec.seed) if arch.torch_models else arch.build(model_config)
    compressed = compress(env, model, spec, train_config_from(spec.training), fine_tuning=False)
    values, _ = measure(env, compressed, names, spec.seed)
    return values


MIN_SECONDS = 1e-3
"""The least time limit training takes (``training.max_seconds``'s minimum)."""


@dataclass(frozen=True)
class TimeLimit:
    """When a trial must end: ``training.max_seconds`` after its start, or the run's ``--timeout``, whichever is first.

    Training and fine-tuning stop themselves at it (their ``max_seconds`` is
    the time left); the other stages are checked as each ends.
    """

    at: float | None
    """``time.monotonic()`` of the limit; None: no limit."""
    what: str
    by_timeout: bool = False
    """Whether the run's ``--timeout`` comes first (else training.max_seconds, or nothing)."""

    @classmethod
    def of(cls, env: TrialEnv, config: TrainConfig) -> TimeLimit:
        now = time.monotonic()
        limits = [] if env.deadline is None else [(env.deadline, "the run's --timeout")]
        if config.max_seconds is not None:
            limits.append((now + config.max_seconds, f"training.max_seconds={config.max_seconds:g} s"))
        at, what = min(limits) if limits else (None, "")
        return cls(at, what, by_timeout=at is not None and at == env.deadline)

    def bound(self, config: TrainConfig, stage: str) -> TrainConfig:
        """``config`` with its training time limited to what is left before ``stage``; TrialFailed if nothing is."""
        if self.at is None:
            return config
        left = self.at - time.monotonic()
        if left < MIN_SECONDS:
            raise TrialFailed(f"the trial ran past {self.what} before {stage}")
        return dataclasses.replace(config, max_seconds=left)

    def check(self, stage: str) -> None:
        if self.at is not None and time.monotonic() > self.at:
            raise TrialFailed(f"the trial ran past {self.what} while {stage}")


def run_trial(
    env: TrialEnv,
    spec: TrialSpec,
    number: int,
    on_epoch: OnEpoch | None = None,
    before_fine_tuning: Callable[[float], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> TrialRecord:
    """Run one trial end to end and return its record (see ``hookspecs.on_trial_complete``).

    ``on_epoch(epoch, validation_loss, base_params, compressed_loss)`` is called while the
    base trains (not on a cache hit) and may raise to stop the trial; ``compressed_loss()``
    scores the base so far as :func:`compressed_validation_loss` does.
    ``before_fine_tuning(compressed_loss)`` is called once the base is trained or taken from
    the cache, before any fine-tuning, with that score of the base, when the pipeline (less a
    distill stage, which the score leaves out) fine-tunes at all; it may raise to stop the trial
    (the cheapest rung: no training spent).
    ``on_stage(stage)`` is told when the trial starts a stage: ``train``, ``compress``, ``measure`` (progress lines).
    """
    stage = on_stage or (lambda name: None)
    started = time.perf_counter()
    try:
        train_config = train_config_from(spec.training)
    except ValueError as exc:
        raise TrialFailed(f"training settings {spec.training}: {exc}") from exc
    limit = TimeLimit.of(env, train_config)
    # the base trains first: its own max_seconds is the trial's, unless the run's --timeout ends sooner
    stage("train")
    base_config = limit.bound(train_config, "training the base model") if limit.by_timeout else train_config
    base, base_info = train_base(env, spec, base_config, on_epoch)
    limit.check("training the base model")
    # the uncompressed base's figures: targets relative to the baseline, and the front's "x smaller, % ELBO"
    baseline_names = tuple(dict.fromkeys([*env.space.objectives, *(t.name for t in env.space.targets)]))
    if base_info.cache_key not in env.baselines:
        env.baselines[base_info.cache_key], _ = measure(env, base, baseline_names, spec.seed)
        limit.check("measuring the base model")
    baseline = dict(env.baselines[base_info.cache_key])
    if before_fine_tuning is not None and spec.pipeline:
        skipped: list[int] = []
        score = _Scorer(env, spec, train_config)(base, skipped)
        if any(skipped):  # a pipeline that does not fine-tune has nothing left to save here
            before_fine_tuning(score)
        limit.check("scoring the compressed base before fine-tuning")
    stage("compress")
    model = compress(env, base, spec, limit.bound(train_config, "compressing"))
    limit.check("compressing")
    stage("measure")
    metrics, ctx = measure(env, model, (*env.space.objectives, *env.space.record), spec.seed)
    limit.check("measuring")
    arch = _architecture_of(env, model)
    if arch.torch_models:
        data, suffix = torch_side().save(model, env.registry, ctx.cache.get("serialized"))
        runtime_name = torch_side().runtime_name(model, ctx.latency_target)
    else:
        data, suffix, runtime_name = arch.to_bytes(model), PLAIN_SUFFIX, "python"
    artifact = env.artifact_dir / f"trial-{number}{suffix}"
    write_atomic(artifact, data)
    record = TrialRecord(
        trial=number,
        params=dict(spec.params),
        config=spec.as_dict(),
        model_config=model.config,
        objectives={name: metrics[name] for name in env.space.objectives},
        metrics=metrics,
        data=env.data.info,
        device=str(env.device),
        latency=LatencyInfo(
            batch_size=env.space.latency.batch_size,
            target=ctx.latency_target,
            repeats=env.space.latency.repeats,
            runtime=runtime_name,
        ),
        base=base_info,
        artifact=str(artifact.resolve()),
        artifact_sha256=hashlib.sha256(data).hexdigest(),
        seconds=time.perf_counter() - started,
        plugins=plugins_used(env, spec, model),
        baseline=baseline,
    )
    try:
        call_each(env.pm, "on_trial_complete", record=record)
    except PluginError as exc:
        raise TrialFailed(str(exc)) from exc
    return record
