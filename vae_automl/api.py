"""The search entry point of the Python API (``vae-automl search`` calls it)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vae_automl import study as study_mod
from vae_automl.backends.base import Backend, SearchPolicy
from vae_automl.backends.optuna import OptunaBackend
from vae_automl.config import SearchSpace, load_space, study_name_problem
from vae_automl.errors import ConfigError
from vae_automl.locations import default_storage
from vae_automl.plugin_manager import get_plugin_manager
from vae_automl.progress import Progress
from vae_automl.registry import call_each, get_registry
from vae_automl.study import BASELINE_ATTR, FrontEntry, front_of_study
from vae_automl.trial import TrialEnv, base_model_baseline, prepare

if TYPE_CHECKING:
    import optuna


@dataclass
class SearchResult:
    study_name: str
    storage: str
    out_dir: Path
    front: list[FrontEntry]
    completed: int
    stats: dict[str, int]
    baseline: dict[str, float] | None = None
    """A ``base_model:`` study's user model as given, measured with the study's objectives (optuna backend)."""
    failure: str | None = None
    """Set when every trial this run finished failed: why (the CLI exits 1 with it)."""


def make_out_dir(out: Path) -> None:
    """Create the output folder, or say which path is in the way and why."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file, not a folder; give a folder path")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out}: cannot create the output folder: {exc.strerror}") from None


def apply_overrides(
    space: SearchSpace, dataset: str | None = None, data_dir: str | None = None, device: str | None = None
) -> SearchSpace:
    if dataset is not None or data_dir is not None:
        changes: dict[str, Any] = {k: v for k, v in {"spec": dataset, "data_dir": data_dir}.items() if v is not None}
        ds = dataclasses.replace(space.dataset, **changes)
        space = dataclasses.replace(space, dataset=ds)
    if device is not None:
        space = dataclasses.replace(space, device=device)
    return space


def search(
    space: str | Path | SearchSpace,
    trials: int | None = None,
    timeout_s: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    out_dir: str | Path | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    device: str | None = None,
    plugins: tuple[str, ...] = (),
    backend: str = "optuna",
    show_progress: bool = True,
    base_model: Any = None,
    **backend_options: Any,
) -> SearchResult:
    """Run (or resume) a multi-objective search and return its Pareto front.

    Args:
        space: a search-space YAML path, or a loaded :class:`SearchSpace`.
        trials: run this many more trials; None completes the space's ``trials`` budget.
        timeout_s: stop starting trials after this many seconds.
        storage: an Optuna storage URL (default: SQLite in ``out_dir``).
        study_name: default: the space's ``name``.
        out_dir: where the storage, the base-model cache and trial models go (default ``runs/<study>``).
        dataset, data_dir, device: override the space's.
        plugins: extra plugin modules to load (like ``--plugin``).
        backend: ``optuna`` or ``ray``.
        base_model: the user's trained VAE to compress, replacing the YAML's ``base_model:``: a mapping
            ``{factory, kwargs, checkpoint, likelihood, groups, fine_tune_epochs}`` or a ``torch.nn.Module``
            with ``encode``/``decode`` (see docs/bring-your-own-model.md).
    """
    pm = get_plugin_manager(plugins)
    registry = get_registry(plugins)
    if not isinstance(space, SearchSpace):
        space = load_space(space, registry, base_model=base_model)
    elif base_model is not None:
        raise ConfigError("base_model= goes with a YAML path; a loaded SearchSpace carries its own base_model")
    space = apply_overrides(space, dataset, data_dir, device)
    study_name = study_name or space.name
    if problem := study_name_problem(study_name):
        raise ConfigError(f"--study: {problem}")
    out = Path(out_dir or Path("runs") / study_name)
    make_out_dir(out)
    storage = storage or default_storage(out)
    if timeout_s is None:
        timeout_s = space.timeout_s
    runner: Backend
    env: TrialEnv | None = None
    if backend == "optuna":
        env = prepare(space, out, registry, pm)
        runner = OptunaBackend(env)
    elif backend == "ray":
        from vae_automl.backends.ray import RayBackend  # deferred: ray is an optional, heavy dependency

        runner = RayBackend(space, out, plugins=plugins, **backend_options)
    else:
        raise ConfigError(f"unknown backend {backend!r}; use optuna or ray")
    policy = SearchPolicy(space, registry)
    study = study_mod.create_study(space, storage, study_name, out, registry, sampler=policy.sampler())
    existing = len(study.get_trials(deepcopy=False))
    if existing:
        # resuming: a seeded sampler would replay the random start-up points the study already holds
        study.sampler = policy.sampler(seed_offset=existing)
    budget = study_mod.plan_search(study, space, trials, timeout_s)
    progress = Progress(
        budget.n_trials, space.objectives, study_mod.directions_of(space, registry), timeout_s, enabled=show_progress
    )
    done = len(study_mod.completed_trials(study))
    progress.message(
        f"study {study_name!r} in {storage}: {done} completed trials; completing {budget.n_trials} more {runner.describe()}"
    )
    started = time.monotonic()
    stats = runner.run(study, budget, policy, progress)
    if budget.n_trials > 0:
        progress.message(
            f"finished in {time.monotonic() - started:.1f}s: {progress.done} completed, "
            f"{progress.pruned} stopped early, {progress.failed} failed; bases trained "
            f"{stats['base_trained']}, reused {stats['base_reused']}"
        )
    if env is not None and env.base_model is not None:
        measure_baseline(env, study)
    front = front_of_study(study)
    call_each(pm, "on_search_complete", front=[e.as_dict() for e in front])
    completed = len(study_mod.completed_trials(study))
    baseline = study.user_attrs.get(BASELINE_ATTR)
    return SearchResult(
        study_name,
        storage,
        out,
        front,
        completed,
        dict(stats),
        baseline=baseline["objectives"] if baseline else None,
        failure=progress.all_failed(),
    )


def measure_baseline(env: TrialEnv, study: optuna.Study) -> None:
    """Store the user's model's baseline row (:func:`vae_automl.trial.base_model_baseline`) once per study."""

    if BASELINE_ATTR in study.user_attrs:
        return
    baseline = base_model_baseline(env)
    if baseline is not None:
        study.set_user_attr(BASELINE_ATTR, baseline)
