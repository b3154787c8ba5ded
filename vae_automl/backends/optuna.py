"""The Optuna backend: multi-objective studies, samplers, storages, resume, early stopping."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Any

import optuna

from vae_automl import space as space_mod
from vae_automl import study as study_mod
from vae_automl.config import SamplerConfig, SearchSpace
from vae_automl.early_stopping import CurveStopper, PeerCurve
from vae_automl.errors import ConfigError, VaeAutomlError
from vae_automl.progress import Progress
from vae_automl.trial import TrialEnv, run_trial

HEARTBEAT_INTERVAL_ENV = "VAE_AUTOML_HEARTBEAT_INTERVAL_S"
HEARTBEAT_GRACE_ENV = "VAE_AUTOML_HEARTBEAT_GRACE_S"
"""Override the heartbeat timing: a shorter grace re-queues a killed worker's trial sooner, at more storage traffic."""
HEARTBEAT_INTERVAL_S = 10
HEARTBEAT_GRACE_S = 30
MAX_RETRY = 3
ATTEMPTS_PER_TRIAL = 3
"""``--trials N`` stops after this many attempts per wanted trial, so a space whose trials all fail ends."""
JOURNAL_PREFIX = "journal:"


def open_storage(url: str | optuna.storages.BaseStorage) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL: ``sqlite:///``, ``postgresql://``, ``mysql://`` or ``journal:PATH``.

    RDB storages get heartbeats so a worker killed mid-trial has its trial
    marked failed and re-queued by the next worker; journal files suit
    shared file systems where SQLite would lock.
    """
    if not isinstance(url, str):
        return url
    if url.startswith(JOURNAL_PREFIX):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(url[len(JOURNAL_PREFIX):]).expanduser()
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if "://" not in url:
        raise ConfigError(f"storage {url!r} is not a URL: use sqlite:///PATH, postgresql://..., or journal:PATH")
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                heartbeat_interval=int(os.environ.get(HEARTBEAT_INTERVAL_ENV, HEARTBEAT_INTERVAL_S)),
                grace_period=int(os.environ.get(HEARTBEAT_GRACE_ENV, HEARTBEAT_GRACE_S)),
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
            )
    except Exception as exc:
        raise ConfigError(f"cannot open storage {url}: {exc}") from exc


def make_sampler(config: SamplerConfig) -> optuna.samplers.BaseSampler:
    if config.name == "nsga2":
        kwargs: dict[str, Any] = {"seed": config.seed}
        if config.population_size:
            kwargs["population_size"] = config.population_size
        return optuna.samplers.NSGAIISampler(**kwargs)
    if config.name == "tpe":
        kwargs = {"seed": config.seed}
        if config.n_startup_trials is not None:
            kwargs["n_startup_trials"] = config.n_startup_trials
        return optuna.samplers.TPESampler(**kwargs)
    return optuna.samplers.RandomSampler(seed=config.seed)


def create_study(space: SearchSpace, storage: Any, study_name: str, out_dir: str | Path) -> optuna.Study:
    """Create the study, or load it if it exists (then its objectives must match)."""
    directions = [space_registry_direction(space, name) for name in space.objectives]
    study = optuna.create_study(storage=open_storage(storage), study_name=study_name, directions=directions,
                                sampler=make_sampler(space.sampler), load_if_exists=True)
    stored = study.user_attrs.get(study_mod.OBJECTIVES_ATTR)
    if stored is not None and list(stored) != list(space.objectives):
        raise ConfigError(f"study {study_name!r} optimizes {stored}, but {space.path} asks for {list(space.objectives)}; "
                          "use another --study name")
    if space.base_model is not None:
        study_mod.check_base_model(study, space.base_model.factory, space.base_model.checkpoint_sha256())
    if stored is None:
        study.set_user_attr(study_mod.OBJECTIVES_ATTR, list(space.objectives))
        study.set_user_attr(study_mod.SPACE_ATTR, space.source)
        study.set_user_attr(study_mod.SPACE_FILE_ATTR, space.path)
        study.set_user_attr(study_mod.OUT_DIR_ATTR, str(Path(out_dir).resolve()))
        study.set_user_attr(study_mod.BUDGET_ATTR, space.trials)
    return study


def space_registry_direction(space: SearchSpace, name: str) -> str:
    from vae_automl.registry import get_registry

    return get_registry().objectives.get(name).direction


def peer_curves(study: optuna.Study) -> list[PeerCurve]:
    peers = []
    for t in study_mod.completed_trials(study):
        curve, params = t.user_attrs.get("validation_curve"), t.user_attrs.get("base_params")
        if curve and params is not None:
            peers.append(PeerCurve(tuple(curve), int(params)))
    return peers


def make_objective(env: TrialEnv, study: optuna.Study):  # noqa: ANN201
    """The function ``study.optimize`` calls: sample, run, store the record, return the objective values."""

    def objective(trial: optuna.Trial) -> list[float]:
        params = space_mod.suggest(trial, env.space)
        spec = space_mod.resolve(env.space, params, env.registry)
        trial.set_user_attr("config", spec.as_dict())
        peers = peer_curves(study) if env.space.pruner.name != "none" else []
        curve: list[float] = []
        stopper: CurveStopper | None = None

        def on_epoch(epoch: int, validation_loss: float, base_params: int) -> None:
            nonlocal stopper
            if stopper is None:
                stopper = CurveStopper(env.space.pruner, peers, base_params)
            curve.append(validation_loss)
            if stopper.should_stop(epoch, validation_loss):
                trial.set_user_attr("validation_curve", curve)
                trial.set_user_attr("pruned_at_epoch", epoch + 1)
                raise optuna.TrialPruned(f"validation loss {validation_loss:.3f} at epoch {epoch + 1} is above "
                                         f"{stopper.threshold(epoch):.3f}, the {env.space.pruner.percentile:g}th percentile "
                                         f"of {len(stopper.peers)} no-larger completed trials")

        try:
            record = run_trial(env, spec, trial.number, on_epoch=on_epoch)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            reason = str(exc) if isinstance(exc, VaeAutomlError) else f"{type(exc).__name__}: {exc}"
            trial.set_user_attr(study_mod.FAILURE_ATTR, reason)
            raise
        for key, value in record.to_user_attrs().items():
            trial.set_user_attr(key, value)
        study_mod.add_plugins(study, record.plugins)
        return [record.objectives[name] for name in env.space.objectives]

    return objective


def progress_callback(progress: Progress):  # noqa: ANN201
    def callback(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        seconds = trial.duration.total_seconds() if trial.duration else None
        reason = trial.user_attrs.get(study_mod.FAILURE_ATTR)
        if trial.state == optuna.trial.TrialState.PRUNED:
            reason = f"stopped at epoch {trial.user_attrs.get('pruned_at_epoch')}"
        front = len(study_mod.front_of_study(study)) if trial.state == optuna.trial.TrialState.COMPLETE else None
        progress.trial_finished(trial.number, trial.state.name, trial.values, seconds, reason, front)

    return callback


def optimize(env: TrialEnv, study: optuna.Study, target_completed: int, max_attempts: int,
             timeout_s: float | None, progress: Progress) -> None:
    """Run trials in this process until the study has ``target_completed`` completed trials.

    Stops early after ``max_attempts`` trials or ``timeout_s``. A failing
    trial fails alone: it is recorded with its reason and the study goes on.
    """
    callbacks = [progress_callback(progress),
                 optuna.study.MaxTrialsCallback(target_completed, states=(optuna.trial.TrialState.COMPLETE,))]
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study.optimize(make_objective(env, study), n_trials=max_attempts, timeout=timeout_s, catch=(Exception,),
                   callbacks=callbacks, gc_after_trial=False)


def plan_trials(study: optuna.Study, space: SearchSpace, trials: int | None) -> tuple[int, int]:
    """How many more trials to complete, and the completed count at which to stop.

    ``trials`` given: complete that many more (failed and early-stopped
    trials do not count). Not given: complete the space's budget, counting
    what the study already completed, so re-running an interrupted command
    resumes it.
    """
    done = len(study_mod.completed_trials(study))
    if trials is not None:
        return trials, done + trials
    return max(space.trials - done, 0), max(space.trials, done)


def run(space: SearchSpace, env: TrialEnv, storage: Any, study_name: str, out_dir: Path,
        trials: int | None, timeout_s: float | None, show_progress: bool = True) -> optuna.Study:
    study = create_study(space, storage, study_name, out_dir)
    n_trials, target = plan_trials(study, space, trials)
    progress = Progress(n_trials, space.objectives, tuple(space_registry_direction(space, o) for o in space.objectives),
                        timeout_s, enabled=show_progress)
    done = len(study_mod.completed_trials(study))
    progress.message(f"study {study_name!r} in {storage}: {done} completed trials; completing {n_trials} more "
                     f"on {env.device} ({env.data.info['n_train']} training images of {env.data.info['dataset']})")
    if n_trials > 0:
        started = time.monotonic()
        optimize(env, study, target, n_trials * ATTEMPTS_PER_TRIAL, timeout_s, progress)
        progress.message(f"finished in {time.monotonic() - started:.1f}s: {progress.done} completed, "
                         f"{progress.pruned} stopped early, {progress.failed} failed; bases trained "
                         f"{env.stats['base_trained']}, reused {env.stats['base_reused']}")
    return study
