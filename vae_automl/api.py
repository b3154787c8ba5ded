"""The Python API: one function per command (``vae-automl search`` calls :func:`search`, and so on).

``vae_automl.search``, ``front``, ``export``, ``report``, ``worker`` and
``plugins`` are these functions; the CLI parses its arguments and calls
them. Importing this module stays light: ``front`` and ``plugins`` need no
torch, so what trains is imported when :func:`search` runs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from vae_automl import pareto
from vae_automl import study as study_mod
from vae_automl.errors import ConfigError
from vae_automl.locations import default_storage, make_out_dir, remove_unused_out_dir
from vae_automl.plugin_manager import get_plugin_manager
from vae_automl.plugins_info import list_components
from vae_automl.progress import Progress
from vae_automl.registry import call_each, get_registry
from vae_automl.study import BASELINE_ATTR, FrontEntry, TrialCallback, front_of_study
from vae_automl.tracking import tracking_callbacks

if TYPE_CHECKING:
    from vae_automl.config import SearchSpace
    from vae_automl.trial import TrialEnv
    from vae_automl.worker import WorkerResult

__all__ = [
    "Front",
    "SearchResult",
    "TrialCallback",
    "export",
    "front",
    "plugins",
    "report",
    "search",
    "worker",
]


def knee_of(study: optuna.Study, entries: Sequence[FrontEntry]) -> int | None:
    """The trial number of the front's knee point (:func:`vae_automl.pareto.knee_point`), or None for an empty front."""
    if not entries:
        return None
    names, directions = study_mod.objectives_of(study)
    k = pareto.knee_point([[e.objectives[n] for n in names] for e in entries], directions)
    return entries[k].trial if k is not None else None


@dataclass
class Front:
    """The Pareto front of a stored study, as :func:`front` reads it.

    Attributes:
        study: the Optuna study (``study.trials_dataframe()``, optuna's plots, ``study.best_trials``).
        entries: the non-dominated completed trials, ordered by the first objective.
        knee: the trial number of the knee point, or None for an empty front.
        baseline: a ``base_model:`` study's user model as given, measured with the study's objectives
            (``{objectives, metrics, base_model}``), or None.
    """

    study: optuna.Study
    entries: list[FrontEntry]
    knee: int | None
    baseline: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """What ``vae-automl front --json`` prints, the same object for every study (since 0.3).

        Returns:
            ``{"points": [{trial, params, objectives}, ...], "knee": trial number or None,
            "baseline": {objectives, metrics, base_model} or None}``; ``baseline`` is set for a
            ``base_model:`` study only. (0.2 printed the bare list of points, or
            ``{"front", "baseline"}`` for a ``base_model:`` study.)
        """
        return {"points": [e.as_dict() for e in self.entries], "knee": self.knee, "baseline": self.baseline}


@dataclass
class SearchResult:
    """What :func:`search` returns: the study and its front after the run.

    Attributes:
        study: the ``optuna.Study`` the search ran (resume it, plot it, or hand it to other Optuna tools).
        study_name, storage: where it is stored.
        out_dir: the storage, base-model cache and trial models' folder.
        front: the Pareto front after the run (every process's trials, not this run's only).
        completed: the study's completed trials.
        stats: counters of the run (``base_trained``, ``base_reused``, ``repeats``: drawn points another trial had, not run).
        baseline: a ``base_model:`` study's user model as given, measured with the study's objectives
            (optuna backend).
        knee: the trial number of the front's knee point, or None.
    """

    study_name: str
    storage: str
    out_dir: Path
    front: list[FrontEntry]
    completed: int
    stats: dict[str, int]
    baseline: dict[str, float] | None = None
    study: optuna.Study | None = None
    knee: int | None = None
    failure: str | None = None
    """Set when every trial this run finished failed: why (the CLI exits 1 with it)."""
    exhausted: str | None = None
    """Set when the run completed fewer trials than asked because the space has no new point left
    (:func:`vae_automl.study.exhausted`): why (the CLI exits 3 with it)."""


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
    callbacks: Sequence[TrialCallback] = (),
    verbose: bool = False,
    mlflow: str | None = None,
    tensorboard: str | Path | None = None,
    **backend_options: Any,
) -> SearchResult:
    """Run (or resume) a multi-objective search and return its study and Pareto front.

    Args:
        space: a search-space YAML path, or a loaded :class:`SearchSpace`.
        trials: run this many more trials; None completes the space's ``trials`` budget.
        timeout_s: after this many seconds start no trial, and stop a running one (``--timeout``).
        storage: an Optuna storage URL (default: SQLite in ``out_dir``).
        study_name: default: the space's ``name``.
        out_dir: where the storage, the base-model cache and trial models go (default ``runs/<study>``).
        dataset, data_dir, device: override the space's.
        plugins: extra plugin modules to load (like ``--plugin``).
        backend: ``optuna`` or ``ray``.
        show_progress: print progress on stderr: a live line per running trial (stage, epoch, validation loss;
            a tqdm bar on a terminal, plain lines elsewhere) and one per finished trial (study-wide best, front size).
        verbose: let Optuna's own INFO log lines through (quiet otherwise: errors only).
        mlflow: log every finished trial to this MLflow tracking URI (default: the YAML's ``tracking.mlflow``).
        tensorboard: write every completed trial as TensorBoard events here (default: ``tracking.tensorboard``).
        base_model: the user's trained VAE to compress, replacing the YAML's ``base_model:``: a mapping
            ``{factory, kwargs, checkpoint, likelihood, groups, fine_tune_epochs}`` or a ``torch.nn.Module``
            with ``encode``/``decode`` (see docs/bring-your-own-model.md).
        callbacks: Optuna callbacks ``f(study, frozen_trial)``, called after each finished trial (complete,
            stopped early or failed) once its record is stored, as ``study.optimize(callbacks=...)`` calls them;
            ``optuna.study.MaxTrialsCallback`` and ``study.stop()`` work as there.
        backend_options: the Ray backend's ``address``, ``gpus_per_trial``, ``cpus_per_trial``,
            ``concurrency``, ``scheduler``.

    Returns:
        A :class:`SearchResult` holding the ``optuna.Study`` and its front.
    """
    # deferred: these import torch; `front` and `plugins` use this module without it
    from vae_automl.backends.base import Backend, SearchPolicy
    from vae_automl.backends.optuna import OptunaBackend  # deferred: imports torch (above)
    from vae_automl.config import SearchSpace, apply_overrides, load_space, study_name_problem  # deferred: torch (above)
    from vae_automl.trial import prepare  # deferred: imports torch (above)

    study_mod.check_limits(trials, timeout_s)
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
    created = make_out_dir(out)
    storage = storage or default_storage(out)
    if timeout_s is None:
        timeout_s = space.timeout_s
    runner: Backend
    env: TrialEnv | None = None
    try:  # the data, the device and the backend are checked here: a refused run leaves no empty run folder
        if backend == "optuna":
            env = prepare(space, out, registry, pm)
            runner = OptunaBackend(env)
        elif backend == "ray":
            from vae_automl.backends.ray import RayBackend  # deferred: ray is an optional, heavy dependency

            runner = RayBackend(space, out, plugins=plugins, **backend_options)
        else:
            raise ConfigError(f"unknown backend {backend!r}; use optuna or ray")
    except BaseException:
        remove_unused_out_dir(created)
        raise
    policy = SearchPolicy(space, registry)
    with study_mod.optuna_logging(verbose):
        study = study_mod.create_study(space, storage, study_name, out, registry, sampler=policy.sampler())
        budget = study_mod.plan_search(study, space, trials, timeout_s)
        progress = Progress(
            budget.n_trials, space.objectives, study_mod.directions_of(space, registry), timeout_s, enabled=show_progress
        )
        for trial in study_mod.completed_trials(study):  # the best so far counts what the study held before this run
            progress.observe(trial.number, trial.values)
        done = len(study_mod.completed_trials(study))
        no_heartbeats = study_mod.warn_without_heartbeats(study)
        progress.message(
            f"study {study_name!r} in {storage}: {done} completed trials; completing {budget.n_trials} more {runner.describe()}"
            + (f"; {no_heartbeats}" if no_heartbeats else "")
        )
        started = time.monotonic()
        trackers = tracking_callbacks(mlflow or space.tracking.mlflow, tensorboard or space.tracking.tensorboard, verbose)
        stats = runner.run(study, budget, policy, progress, callbacks=(*trackers, *callbacks))
        if budget.n_trials > 0:
            progress.message(
                f"finished in {time.monotonic() - started:.1f}s: {progress.done} completed, "
                f"{progress.pruned} stopped early, {progress.failed} failed; bases trained "
                f"{stats['base_trained']}, reused {stats['base_reused']}"
            )
    if env is not None and env.base_model is not None:
        measure_baseline(env, study)
    entries = front_of_study(study)
    call_each(pm, "on_search_complete", front=[e.as_dict() for e in entries])
    completed = len(study_mod.completed_trials(study))
    baseline = study.user_attrs.get(BASELINE_ATTR)
    return SearchResult(
        study_name,
        storage,
        out,
        entries,
        completed,
        dict(stats),
        baseline=baseline["objectives"] if baseline else None,
        study=study,
        knee=knee_of(study, entries),
        failure=progress.all_failed(),
        exhausted=study_mod.exhausted(budget, progress.done, stats.get("repeats", 0), progress.failed),
    )


def measure_baseline(env: TrialEnv, study: optuna.Study) -> None:
    """Store the user's model's baseline row (:func:`vae_automl.trial.base_model_baseline`) once per study."""
    from vae_automl.trial import base_model_baseline  # deferred: imports torch; `front` uses this module without it

    if BASELINE_ATTR in study.user_attrs:
        return
    baseline = base_model_baseline(env)
    if baseline is not None:
        study.set_user_attr(BASELINE_ATTR, baseline)


def front(storage: str, study_name: str) -> Front:
    """The Pareto front of a stored study (either backend); imports no torch.

    Args:
        storage: the study's Optuna storage URL (``sqlite:///...``, ``postgresql://...``, ``journal:PATH``).
        study_name: the study's name.

    Returns:
        A :class:`Front`: the study, its non-dominated completed trials, the knee and a ``base_model:`` baseline.

    Raises:
        ConfigError: no such study there (the message lists the studies it holds).
    """
    study = study_mod.open_study(storage, study_name)
    entries = front_of_study(study)
    return Front(study, entries, knee_of(study, entries), study.user_attrs.get(BASELINE_ATTR))


def export(
    storage: str,
    study_name: str,
    out_dir: str | Path,
    trials: str | Sequence[int] = "front",
    formats: Sequence[str] | None = None,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    plugins: tuple[str, ...] = (),
    overwrite: bool = False,
) -> list[Path]:
    """Write the chosen trials' models as files, each re-measured against the search (``vae-automl export``).

    Args:
        storage: the study's Optuna storage URL.
        study_name: the study's name.
        out_dir: where ``trial-N/`` folders go.
        trials: ``"front"`` (default) or a list of trial numbers.
        formats: exporter names (``onnx``, ``torchscript``, ``safetensors`` or a plugin's); None: the
            default set of :func:`vae_automl.export.export_study`.
        dataset, data_dir: the search's ``dataset`` / ``data_dir`` if it overrode the space's.
        plugins: extra plugin modules, as given to the search.
        overwrite: replace an earlier export in ``trial-N/`` (only the files its manifest lists); without it a
            non-empty ``trial-N/`` is refused.

    Returns:
        The written ``trial-N`` folders, each with a ``manifest.json``.

    Raises:
        ExportError: a saved model changed since the search, or an exported file does not reproduce its figures.
    """
    # deferred: export imports torch and the exporters; `front` uses this module without them
    from vae_automl.export import export_study

    options: dict[str, Any] = {"formats": tuple(formats)} if formats is not None else {}
    return export_study(
        storage,
        study_name,
        out_dir,
        trials=trials,
        dataset=dataset,
        data_dir=data_dir,
        plugins=plugins,
        overwrite=overwrite,
        **options,
    )


def report(
    storage: str,
    study_name: str,
    out_dir: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    plugins: tuple[str, ...] = (),
) -> list[Path]:
    """Write the HTML report of a stored study (``vae-automl report``).

    ``pareto.png``, one image grid per front model and ``index.html`` (the front with every recorded
    metric, each model's parameters). matplotlib draws on figures of its own: the caller's backend stays.

    Args:
        storage: the study's Optuna storage URL.
        study_name: the study's name.
        out_dir: the report folder (created).
        dataset, data_dir: the search's ``dataset`` / ``data_dir`` if it overrode the space's.
        plugins: extra plugin modules, as given to the search.

    Returns:
        The files written, ``index.html`` last.
    """
    # deferred: the report's images need torch and matplotlib; `front` uses this module without them
    from vae_automl.report import write_report

    return write_report(storage, study_name, out_dir, dataset=dataset, data_dir=data_dir, plugins=plugins)


def worker(
    storage: str,
    study_name: str,
    trials: int | None = None,
    timeout_s: float | None = None,
    out_dir: str | Path | None = None,
    device: str | None = None,
    data_dir: str | None = None,
    plugins: tuple[str, ...] = (),
    show_progress: bool = True,
    callbacks: Sequence[TrialCallback] = (),
    verbose: bool = False,
    mlflow: str | None = None,
    tensorboard: str | Path | None = None,
) -> WorkerResult:
    """Run trials of a study made by :func:`search` in this process (``vae-automl worker``); start one per device.

    Args:
        storage: the study's storage URL, shared by every worker (``postgresql://...``, ``journal:PATH``).
        study_name: a study created by ``search(..., trials=0)`` or ``vae-automl search ... --n-trials 0``.
        trials: stop after this worker completed that many trials; None: until the study completed its budget.
        timeout_s: after this many seconds start no trial, and stop a running one (``--timeout``).
        out_dir: the base-model cache and artifact folder (default: the study's).
        device, data_dir: override the stored space's (another machine, another mount).
        plugins: extra plugin modules, as given to the search.
        show_progress: print progress lines on stderr.
        callbacks: Optuna callbacks ``f(study, frozen_trial)`` after each of this worker's finished trials.
        verbose: let Optuna's own INFO log lines through (errors only otherwise).
        mlflow, tensorboard: as in :func:`search` (default: the stored YAML's ``tracking:``).

    Returns:
        A :class:`vae_automl.worker.WorkerResult`: the study, this worker's name and its completed trials.
    """
    # deferred: the worker trains (torch); `front` uses this module without it
    from vae_automl.worker import run_worker

    return run_worker(
        storage,
        study_name,
        trials=trials,
        timeout_s=timeout_s,
        out_dir=out_dir,
        device=device,
        data_dir=data_dir,
        plugins=plugins,
        show_progress=show_progress,
        callbacks=callbacks,
        verbose=verbose,
        mlflow=mlflow,
        tensorboard=tensorboard,
    )


def plugins(extra: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Every registered component (``vae-automl plugins --json``): kind, name, plugin, version, parameters.

    Args:
        extra: plugin modules to load besides the built-ins and installed ones (like ``--plugin``).

    Returns:
        One dict per component: ``kind``, ``name``, ``plugin``, ``version``, ``distribution``, ``help``,
        ``params`` (each ``name``, ``type``, ``default``, ``minimum``, ``maximum``, ``choices``, ``log``,
        ``help``); compressors add ``stage``, ``takes``, ``gives``; objectives ``direction`` and ``unit``.
    """
    return list_components(get_registry(tuple(extra)))
