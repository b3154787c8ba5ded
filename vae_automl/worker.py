"""Optuna workers: run trials of an existing study from any machine that reaches its storage.

A study made by ``vae-automl search SPACE.yaml --storage URL --n-trials 0``
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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna

from vae_automl import study as study_mod
from vae_automl.backends.base import SearchPolicy, TrialCallback
from vae_automl.backends.optuna import OptunaBackend
from vae_automl.config import SearchSpace, apply_overrides
from vae_automl.locations import make_out_dir
from vae_automl.plugin_manager import get_plugin_manager
from vae_automl.progress import Progress
from vae_automl.registry import Registry, get_registry
from vae_automl.tracking import tracking_callbacks
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
    failure: str | None = None
    """Set when every trial this worker finished failed: why (the CLI exits 1 with it)."""
    exhausted: str | None = None
    """Set when this worker completed fewer trials than asked because the space has no new point left: why (the
    CLI exits 3 with it)."""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def space_of_study(study: optuna.Study, registry: Registry | None = None) -> SearchSpace:
    """The search space stored in ``study`` by ``vae-automl search`` (see :func:`vae_automl.study.stored_space`)."""
    return study_mod.stored_space(study, registry or get_registry())


def run_worker(
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
        show_progress: print progress lines on stderr.
        callbacks: Optuna callbacks ``f(study, frozen_trial)`` after each trial this worker finishes.
        verbose: let Optuna's own INFO log lines through (errors only otherwise).
        mlflow, tensorboard: log every finished trial there (default: the stored YAML's ``tracking:``).
    """
    study_mod.check_limits(trials, timeout_s)
    pm = get_plugin_manager(plugins)
    registry = get_registry(plugins)
    study = study_mod.open_study(storage, study_name)
    space = apply_overrides(study_mod.stored_space(study, registry), data_dir=data_dir, device=device)
    policy = SearchPolicy(space, registry)
    # load again with the space's sampler: load_study would otherwise pick a default one; the backend reseeds it
    # from the number of this worker's first trial (SeedFromFirstTrial), so workers never draw the same points
    study = study_mod.open_study(storage, study_name, sampler=policy.sampler())
    out = Path(out_dir or study_mod.stored_out_dir(study) or Path("runs") / study_name)
    make_out_dir(out)
    env = prepare(space, out, registry, pm)
    if env.base_model is not None:  # this machine's checkpoint must be the one the study started from
        study_mod.check_base_model(study, env.base_model_info["base_model"], env.base_model_info["checkpoint_sha256"])
    name = worker_name()
    backend = OptunaBackend(env, trial_attrs={WORKER_ATTR: name})
    done = len(study_mod.completed_trials(study))
    budget = study_mod.plan_worker(study, space, trials, timeout_s)
    progress = Progress(
        budget.n_trials, space.objectives, study_mod.directions_of(space, registry), timeout_s, enabled=show_progress
    )
    for trial in study_mod.completed_trials(study):  # the best so far counts every worker's trials
        progress.observe(trial.number, trial.values)
    no_heartbeats = study_mod.warn_without_heartbeats(study)
    progress.message(
        f"worker {name}: study {study_name!r} in {storage}: {done} of "
        f"{study_mod.stored_budget(study, space)} trials completed; out dir {out}; device {env.device}"
        + (f"; {no_heartbeats}" if no_heartbeats else "")
    )
    started = time.monotonic()
    trackers = tracking_callbacks(mlflow or space.tracking.mlflow, tensorboard or space.tracking.tensorboard, verbose)
    with study_mod.optuna_logging(verbose):
        stats = backend.run(study, budget, policy, progress, callbacks=(*trackers, *callbacks))
    progress.message(
        f"worker {name} finished in {time.monotonic() - started:.1f}s: {progress.done} completed, "
        f"{progress.pruned} stopped early, {progress.failed} failed; the study has "
        f"{len(study_mod.completed_trials(study))} completed trials"
    )
    return WorkerResult(
        study,
        name,
        progress.done,
        stats,
        failure=progress.all_failed(),
        exhausted=study_mod.exhausted(budget, progress.done, stats.get("repeats", 0), progress.failed),
    )


__all__ = ["WORKER_ATTR", "WorkerResult", "run_worker", "space_of_study", "worker_name"]
