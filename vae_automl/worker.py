"""Optuna workers: run trials of an existing study from any machine that reaches its storage.

A study made by ``vae-automl search SPACE.yaml --storage URL --trials 0``
stores the search space, objectives, out dir and budget as study user
attributes, so a worker needs only the storage URL and the study name.
Workers share nothing but the storage (and, for the base-model cache and
the artifacts, the out dir): start as many as there are devices.

On an RDB storage (PostgreSQL, MySQL, SQLite) every running trial sends a
heartbeat; a trial whose worker died (kill -9, lost node) goes stale after
the grace period, and the next worker to start a trial marks it failed and
queues a copy with the same params (``RetryHeartbeatStaleTrialCallback``).
Optuna's JournalStorage has no heartbeats: there a killed worker's trial
stays RUNNING and is not retried.
"""

from __future__ import annotations

import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from vae_automl import study as study_mod
from vae_automl.backends import optuna as optuna_backend
from vae_automl.config import SearchSpace, load_space_text
from vae_automl.errors import ConfigError
from vae_automl.plugin_manager import get_plugin_manager
from vae_automl.progress import Progress
from vae_automl.registry import get_registry
from vae_automl.api import apply_overrides
from vae_automl.trial import prepare

WORKER_ATTR = "worker"
"""Trial user attribute naming the ``host:pid`` that ran it."""


@dataclass
class WorkerResult:
    study: optuna.Study
    worker: str
    completed: int
    """Trials this worker completed."""
    stats: dict[str, int]


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def space_of_study(study: optuna.Study, registry: Any = None) -> SearchSpace:
    """The search space stored in ``study`` by ``vae-automl search``."""
    source = study.user_attrs.get(study_mod.SPACE_ATTR)
    if not source:
        raise ConfigError(f"study {study.study_name!r} stores no search space (user attr {study_mod.SPACE_ATTR!r}); "
                          "create it with `vae-automl search SPACE.yaml --storage URL --study NAME --trials 0`")
    file = study.user_attrs.get(study_mod.SPACE_FILE_ATTR, "space.yaml")
    return load_space_text(source, f"{file} (stored in study {study.study_name!r})", registry)


class _OwnCompletedLimit:
    """Stop this process's ``study.optimize`` after it completed ``limit`` trials (other workers' do not count)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.completed = limit, 0

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            self.completed += 1
            if self.completed >= self.limit:
                study.stop()


def run_worker(storage: str, study_name: str, trials: int | None = None, timeout_s: float | None = None,
               out_dir: str | Path | None = None, device: str | None = None, data_dir: str | None = None,
               plugins: tuple[str, ...] = (), show_progress: bool = True) -> WorkerResult:
    """Run trials of the stored study ``study_name`` in this process.

    Args:
        storage: the study's storage URL (``postgresql://...``, ``sqlite:///...``, ``journal:PATH``).
        study_name: a study created by ``vae-automl search``.
        trials: stop after this worker completed that many trials; None: until the study
            has completed its budget (the YAML's ``trials``), counting every worker's.
        timeout_s: start no trial after this many seconds.
        out_dir: where the base-model cache and artifacts go (default: the study's out dir,
            which should be a shared file system when workers run on several machines).
        device, data_dir: override the stored space's (another machine, another mount).
        plugins: extra plugin modules, as ``--plugin``.
    """
    pm = get_plugin_manager(plugins)
    registry = get_registry(plugins)
    study = study_mod.open_study(storage, study_name)
    space = apply_overrides(space_of_study(study, registry), data_dir=data_dir, device=device)
    # load again with the space's sampler: load_study would otherwise pick a default one
    study = optuna.load_study(study_name=study_name, storage=optuna_backend.open_storage(storage),
                              sampler=optuna_backend.make_sampler(space.sampler))
    out = Path(out_dir or study.user_attrs.get(study_mod.OUT_DIR_ATTR) or Path("runs") / study_name)
    env = prepare(space, out, registry, pm)
    name = worker_name()
    done = len(study_mod.completed_trials(study))
    budget = int(study.user_attrs.get(study_mod.BUDGET_ATTR, space.trials))
    directions = tuple(optuna_backend.space_registry_direction(space, o) for o in space.objectives)
    progress = Progress(trials if trials is not None else max(budget - done, 0), space.objectives, directions,
                        timeout_s, enabled=show_progress)
    if trials is not None:
        limit: Any = _OwnCompletedLimit(trials)
        attempts = trials * optuna_backend.ATTEMPTS_PER_TRIAL
    else:
        limit = optuna.study.MaxTrialsCallback(max(budget, done), states=(optuna.trial.TrialState.COMPLETE,))
        attempts = max(budget - done, 0) * optuna_backend.ATTEMPTS_PER_TRIAL
    journal = str(storage).startswith(optuna_backend.JOURNAL_PREFIX)
    progress.message(f"worker {name}: study {study_name!r} in {storage}: {done} of {budget} trials completed; "
                     f"out dir {out}; device {env.device}"
                     + ("; journal storage has no heartbeats, so a killed worker's trial is not retried" if journal else ""))
    # a worker joining late cleans up after dead ones even if the budget leaves it nothing to run
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    started = time.monotonic()
    if attempts > 0:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        study.optimize(_tagged(optuna_backend.make_objective(env, study), name), n_trials=attempts, timeout=timeout_s,
                       catch=(Exception,), callbacks=[optuna_backend.progress_callback(progress), limit],
                       gc_after_trial=False)
    progress.message(f"worker {name} finished in {time.monotonic() - started:.1f}s: {progress.done} completed, "
                     f"{progress.pruned} stopped early, {progress.failed} failed; the study has "
                     f"{len(study_mod.completed_trials(study))} completed trials")
    return WorkerResult(study, name, progress.done, dict(env.stats))


def _tagged(objective: Any, name: str) -> Any:
    def run(trial: optuna.Trial) -> Any:
        trial.set_user_attr(WORKER_ATTR, name)
        return objective(trial)

    return run


__all__ = ["WORKER_ATTR", "WorkerResult", "run_worker", "space_of_study", "worker_name"]
