"""The Ray Tune backend: the same define-by-run space and study, trials spread over a Ray cluster.

Ray Tune's ``OptunaSearch`` samples through :func:`vae_automl.space.suggest`
on an Optuna study opened on *our* storage with *our* study name, so a
trial exists in the study from the moment Ray asks for it (its number
names the artifact) and ``front``, ``export`` and ``report`` read Ray
searches exactly like Optuna ones; Optuna workers may even share the study.
The alternative, copying each finished Ray trial into the study with
``study.add_trial``, would number trials only after they ran and hide
running ones from other workers and from a resumed run.

``OptunaSearch`` is subclassed (:class:`StudySearcher`) for what it does not do:

* store the trial's record and failure reason as user attrs before telling
  Optuna the outcome (a finished trial's attrs can no longer change);
* tell a trial stopped at a rung PRUNED (with its rung values) and a failed one FAIL (stock OptunaSearch
  tells a multi-objective trial without values COMPLETE, which Optuna
  refuses, leaving it RUNNING forever);
* decide when to stop: no new trial once the study reached its target of
  completed trials, the timeout, 3N failed trials, or (``stop_when:
  first_feasible``) a trial that met every target, so ``--n-trials N`` means
  N more *completed* trials, like the Optuna backend (trials stopped at a
  rung do not count toward that cap: successive halving stops most by design);
* send heartbeats for running trials on RDB storages, so a killed driver's
  trials go stale and the next run (or any Optuna worker) fails and retries them;
* store the baseline row of a ``base_model:`` study (the user's model as
  given), which the driver never loads: trials asked while the study lacks
  it measure it in their worker (once per worker process, as the Optuna
  backend does per process) and report it with their record; the first one
  to complete is stored.

Early stopping is the Optuna backend's rule (:func:`vae_automl.early_stopping.decide`)
in a Tune scheduler on the driver (:class:`ParetoRungScheduler`), which
keeps every trial's rung points, those of the study's earlier trials
included. The trainable runs on the Ray workers: it trains, reports the
validation loss each epoch with ``tune.report`` (with its rung point and
``rung`` key at a rung, and once more before fine-tuning under ``score:
compressed``), then reports the objective values and the trial record. A raising trial reports its reason
instead of raising, so the reason reaches the study and the run goes on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import optuna

from vae_automl import constraints, early_stopping
from vae_automl import space as space_mod
from vae_automl import study as study_mod
from vae_automl.backends.base import (
    DUPLICATE_ATTR,
    PRUNED_AT_ATTR,
    Backend,
    SearchPolicy,
    TrialCallback,
    duplicate_of,
    failure_reason,
    observe_study,
    pruned_reason,
)
from vae_automl.errors import ConfigError, VaeAutomlError
from vae_automl.plugin_manager import DISABLE_AUTOLOAD_ENV, EXTRA_PLUGINS_ENV
from vae_automl.progress import Progress
from vae_automl.record import CURVE_ATTR, RECORD_ATTR, TrialRecord

if TYPE_CHECKING:
    from vae_automl.config import SearchSpace
    from vae_automl.study import Budget
    from vae_automl.trial import TrialEnv

NUMBER_KEY = "__vae_automl_trial_number"
"""Config key carrying the Optuna trial number to the trainable (it names the artifact)."""
WANTS_BASELINE_KEY = "__vae_automl_wants_baseline"
"""Config key telling the trainable the study has no baseline row yet (a ``base_model:`` study): measure it."""
BASELINE_KEY = "baseline_json"
VALIDATION_LOSS = "validation_loss"
FAILURE_KEY = "failure_reason"
RECORD_KEY = "record_json"
CONFIG_KEY = "config_json"
RUNG_KEY = "rung_values"
SCHEDULERS = ("pareto", "none")
STORE_THREADS = 4
"""Threads of the Ray driver that store finished trials. Storing one (its record and attributes, then ``tell``) is about
ten round trips to the storage; in Tune's event loop they were the driver's ceiling: with 16 concurrent trials of 15 s
the loop spent most of its time waiting on PostgreSQL, and trials waited to start. The threads mostly wait on the
network, so a few of them overlap those waits."""
COUNT_REFRESH_S = 1.0
"""How stale the driver's count of the study's completed trials may be when it decides to hand out another trial
(re-counted fresh before it finishes): Optuna workers sharing the study complete trials too."""


def _import_ray() -> Any:
    try:
        # deferred: Ray is optional (the ray extra) and slow to import
        import ray
        from ray import tune  # noqa: F401
    except ImportError as exc:
        raise VaeAutomlError(f"the ray backend needs Ray Tune: pip install 'vae-automl[ray]' ({exc})") from None
    return ray


class _DefineByRun:
    """The define-by-run space for OptunaSearch: a class, not a closure, since Tune pickles the searcher."""

    def __init__(self, space: SearchSpace) -> None:
        self.space = space

    def __call__(self, trial: Any) -> None:
        space_mod.suggest(trial, self.space)


def rung_values_of(result: dict[str, Any]) -> dict[str, list[float]]:
    """The :data:`RUNG_KEY` mapping of a trial's result, as reported or as Tune hands it on.

    Tune flattens the results its schedulers and searchers get (``{"rung_values/1": [...]}``); read as reported,
    the rung points would be missing and no trial ever stopped at a rung.
    """
    nested = result.get(RUNG_KEY)
    if isinstance(nested, dict):
        return {str(rung): list(point) for rung, point in nested.items()}
    prefix = RUNG_KEY + "/"
    return {key[len(prefix) :]: list(point) for key, point in result.items() if key.startswith(prefix)}


def _outcome(
    result: dict[str, Any] | None, error: bool, objectives: tuple[str, ...]
) -> tuple[optuna.trial.TrialState, list[float] | None, dict[str, Any]]:
    """The Optuna state, values and user attrs of a finished Ray trial, from its last result."""
    result = result or {}
    attrs: dict[str, Any] = {}
    if result.get(CONFIG_KEY):
        attrs["config"] = json.loads(result[CONFIG_KEY])
    if result.get(RECORD_KEY):
        record = TrialRecord.from_dict(json.loads(result[RECORD_KEY]))
        attrs.update(record.to_user_attrs())
        if rung_values := rung_values_of(result):
            attrs[early_stopping.RUNG_VALUES_ATTR] = rung_values
        return optuna.trial.TrialState.COMPLETE, [float(record.objectives[n]) for n in objectives], attrs
    if result.get(FAILURE_KEY):
        attrs[study_mod.FAILURE_ATTR] = result[FAILURE_KEY]
        return optuna.trial.TrialState.FAIL, None, attrs
    if error:
        attrs[study_mod.FAILURE_ATTR] = "the Ray trial errored (its worker process died?); see its error.txt under out/ray"
        return optuna.trial.TrialState.FAIL, None, attrs
    if result.get(VALIDATION_LOSS) is not None:
        # stopped by the scheduler at a rung
        attrs[CURVE_ATTR] = list(result.get("validation_curve") or [])
        attrs[early_stopping.RUNG_VALUES_ATTR] = rung_values_of(result)
        rung = result.get("rung")
        attrs[PRUNED_AT_ATTR] = int(result.get("epoch", 0)) if rung != early_stopping.FINE_TUNE_RUNG else rung
        return optuna.trial.TrialState.PRUNED, None, attrs
    attrs[study_mod.FAILURE_ATTR] = "the Ray trial ended before reporting anything (stopped while pending?)"
    return optuna.trial.TrialState.FAIL, None, attrs


def store_baseline(study: optuna.Study, result: dict[str, Any] | None) -> bool:
    """Store the baseline row a trial reported (``BASELINE_KEY``) unless the study has one; whether it has one now."""
    if study_mod.BASELINE_ATTR in study.user_attrs:
        return True
    reported = (result or {}).get(BASELINE_KEY)
    if not reported:
        return False
    study.set_user_attr(study_mod.BASELINE_ATTR, json.loads(reported))
    return True


def _make_searcher_class() -> type:
    # deferred: Ray is optional (the ray extra) and slow to import
    from ray.tune.search import Searcher
    from ray.tune.search.optuna import OptunaSearch

    class StudySearcher(OptunaSearch):
        """OptunaSearch on our study that stores records, and stops at a completed-trial target."""

        def __init__(
            self,
            *,
            objectives: tuple[str, ...],
            target_completed: int,
            done: int,
            max_failures: int,
            deadline: float | None,
            progress: Progress,
            policy: SearchPolicy | None = None,
            callbacks: Sequence[TrialCallback] = (),
            has_baseline: bool = True,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            self.has_baseline = has_baseline
            self.objectives = objectives
            self.stop_at_feasible = policy is not None and policy.space.stop_when == "first_feasible"
            self.found_feasible = False
            self.target_completed, self.completed, self.max_failures = target_completed, done, max_failures
            self.deadline, self.progress, self.policy = deadline, progress, policy
            self.callbacks = tuple(callbacks)
            self.seeder = policy.seeder() if policy is not None else None
            self.failed = 0
            self.in_flight: dict[str, Any] = {}
            self.stats = {"base_trained": 0, "base_reused": 0, "repeats": 0}
            self.lock = threading.Lock()
            self._start_storing()
            self.counted_at = time.monotonic()

        def _start_storing(self) -> None:
            # a finished trial is stored by a pool thread, not in Tune's event loop: its dozen storage round trips
            # would otherwise hold up every other trial's start and result (see STORE_THREADS)
            self.pool = ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="vae-automl-store")
            self.pending: set[Future[None]] = set()
            self.report_lock = threading.Lock()

        def _study_completed(self, fresh: bool = False) -> int:
            """The study's completed trials, every process's (Optuna workers may share the study), re-counted at most
            every COUNT_REFRESH_S unless ``fresh``; without a study (tests), this searcher's own count."""
            study = cast(optuna.Study | None, self._ot_study)
            if study is not None and (fresh or time.monotonic() - self.counted_at > COUNT_REFRESH_S):
                counted = study_mod.count_completed(study)
                with self.lock:
                    self.completed, self.counted_at = max(self.completed, counted), time.monotonic()
            return self.completed

        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]  # Searcher.FINISHED is a str
            # successive halving stops most trials by design: only failures and repeats count toward the cap
            finished = (
                (self._study_completed() >= self.target_completed and self._study_completed(fresh=True) >= self.target_completed)
                or self.failed >= self.max_failures
                or self.found_feasible
                or (self.deadline is not None and time.monotonic() > self.deadline)
            )
            if finished:
                return Searcher.FINISHED
            if self.completed + len(self.in_flight) >= self.target_completed:
                return None  # wait: the running trials may complete the target, or fail and need a successor
            with warnings.catch_warnings():
                # the driver beats for Ray's trials itself (see _heartbeat_loop)
                warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
                if self.seeder is not None and self._ot_study is not None and trial_id not in self._ot_trials:
                    # asked here rather than in OptunaSearch.suggest, so the sampler is seeded by its number first
                    self._ot_trials[trial_id] = self._ot_study.ask()
                    self.seeder(cast(optuna.Study, self._ot_study), self._ot_trials[trial_id].number)
                try:
                    config = super().suggest(trial_id)
                except Exception as exc:
                    # a sampling error (a stored parameter whose distribution changed) fails this trial with its reason
                    if trial_id not in self._ot_trials:
                        raise
                    attrs = {study_mod.FAILURE_ATTR: failure_reason(exc)}
                    self._finish(trial_id, self._ot_trials[trial_id], optuna.trial.TrialState.FAIL, None, attrs, None)
                    return None
            if not isinstance(config, dict):
                return config
            ot_trial = self._ot_trials[trial_id]
            if self.policy is not None and not self.policy.space.sampler.repeats:
                repeat = duplicate_of(
                    cast(optuna.Study, self._ot_study), ot_trial.number, dict(ot_trial.params), ot_trial.distributions
                )
                if repeat is not None:
                    self._finish(trial_id, ot_trial, optuna.trial.TrialState.PRUNED, None, {DUPLICATE_ATTR: repeat}, None)
                    self.failed += 1  # repeats count toward the cap, so a space with no new point left ends
                    self.stats["repeats"] += 1
                    return None
            with self.lock:
                self.in_flight[trial_id] = ot_trial
            study = cast(optuna.Study, self._ot_study)
            if study_mod.has_heartbeat(study):
                # the first beat now, not an interval later: a driver killed before it would leave the trial RUNNING for ever
                cast(Any, study._storage).record_heartbeat(ot_trial._trial_id)
            return {**config, NUMBER_KEY: ot_trial.number, WANTS_BASELINE_KEY: not self.has_baseline}

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            # intermediate results are for the scheduler (Optuna pruners are not used here) and the live progress line
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and VALIDATION_LOSS in result and "epoch" in result:
                if ot_trial.number not in self.progress.running:
                    self.progress.trial_started(ot_trial.number)
                self.progress.trial_epoch(ot_trial.number, int(result["epoch"]), float(result[VALIDATION_LOSS]))

        def on_trial_complete(self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            self._completed_trials.add(trial_id)
            future = self.pool.submit(self._store_or_drop, trial_id, self._ot_trials[trial_id], result, error)
            with self.lock:
                self.pending.add(future)
            future.add_done_callback(self._stored)

        def _stored(self, future: Future[None]) -> None:
            with self.lock:
                self.pending.discard(future)

        def _store_or_drop(self, trial_id: str, ot_trial: Any, result: dict[str, Any] | None, error: bool) -> None:
            try:
                self._store(trial_id, ot_trial, result, error)
            except Exception as exc:
                # a storage outage: the trial stays RUNNING without heartbeats, so it goes stale and is retried
                with self.lock:
                    self.in_flight.pop(trial_id, None)
                    self.failed += 1
                self.progress.message(f"trial {ot_trial.number}: storing its outcome failed: {failure_reason(exc)}")

        def drain(self) -> None:
            """Wait until every finished trial handed to the store threads is stored."""
            while True:
                with self.lock:
                    pending = list(self.pending)
                if not pending:
                    return
                wait(pending)

        def _store(self, trial_id: str, ot_trial: Any, result: dict[str, Any] | None, error: bool) -> None:
            state, values, attrs = _outcome(result, error, self.objectives)
            checks: list[Any] = []
            if state == optuna.trial.TrialState.COMPLETE:
                record = TrialRecord.from_dict(attrs[RECORD_ATTR])
                if self.policy is not None:
                    attrs.update(self.policy.trial_attrs(record))
                    checks = self.policy.constraints(record)
                with self.report_lock:  # read-modify-write of study attributes: one thread at a time
                    study_mod.add_plugins(cast(optuna.Study, self._ot_study), record.plugins)
                    if not self.has_baseline:
                        self.has_baseline = store_baseline(cast(optuna.Study, self._ot_study), result)
            self._finish(trial_id, ot_trial, state, values, attrs, result, checks)

        def _finish(
            self,
            trial_id: str,
            ot_trial: Any,
            state: optuna.trial.TrialState,
            values: list[float] | None,
            attrs: dict[str, Any],
            result: dict[str, Any] | None,
            checks: Any = (),
        ) -> None:
            self._completed_trials.add(trial_id)
            study = cast(optuna.Study, self._ot_study)
            try:
                for key, value in attrs.items():
                    ot_trial.set_user_attr(key, value)
                constraints.set_constraints(ot_trial, checks)
                frozen = study.tell(ot_trial, values, state=state)
            except optuna.exceptions.UpdateFinishedTrialError:
                # another process found its heartbeat stale and failed (and re-queued) it first
                with self.lock:
                    self.in_flight.pop(trial_id, None)
                self.progress.message(f"trial {ot_trial.number} was already failed as stale by another process")
                return
            # counted before it leaves in_flight, so suggest never sees the trial in neither (and overshoots)
            counted = study_mod.count_completed(study) if state == optuna.trial.TrialState.COMPLETE else 0
            with self.lock:
                self.in_flight.pop(trial_id, None)
                if state == optuna.trial.TrialState.COMPLETE:
                    self.completed = max(self.completed, counted)
                    self.found_feasible |= self.stop_at_feasible and constraints.is_feasible_trial(frozen) is True
                    hit = bool((result or {}).get("base_cache_hit"))
                    self.stats["base_reused" if hit else "base_trained"] += 1
                elif state == optuna.trial.TrialState.FAIL:
                    self.failed += 1
            with self.report_lock:  # progress lines and the user's callbacks, one trial at a time
                self._report(frozen, state, values, attrs)

        def _report(
            self,
            frozen: optuna.trial.FrozenTrial,
            state: optuna.trial.TrialState,
            values: list[float] | None,
            attrs: dict[str, Any],
        ) -> None:
            reason = attrs.get(study_mod.FAILURE_ATTR)
            if state == optuna.trial.TrialState.PRUNED:
                reason = pruned_reason(attrs)
            seconds = frozen.duration.total_seconds() if frozen.duration else None
            front = None
            if state == optuna.trial.TrialState.COMPLETE:
                # the study-wide best, earlier runs' trials included
                front = observe_study(cast(optuna.Study, self._ot_study), self.progress)
            self.progress.trial_finished(frozen.number, state.name, values, seconds, reason, front)
            for callback in self.callbacks:  # the user's Optuna callbacks, as study.optimize calls them
                callback(cast(optuna.Study, self._ot_study), frozen)

        def fail_in_flight(self, reason: str) -> None:
            """Store every finished trial, then tell every asked-but-unfinished trial FAIL (the driver is going away)."""
            self.drain()
            for trial_id, ot_trial in list(self.in_flight.items()):
                self._finish(trial_id, ot_trial, optuna.trial.TrialState.FAIL, None, {study_mod.FAILURE_ATTR: reason}, None)

        def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
            """Nothing to save: the study is the state, and re-running the command resumes from it."""

        def __getstate__(self) -> dict[str, Any]:
            # the Tuner pickles its config once; the lock and the progress stream do not pickle
            # (nor does the policy's registry); the driver's own searcher keeps them
            skip = ("lock", "progress", "policy", "callbacks", "pool", "pending", "report_lock", "seeder")
            return {k: v for k, v in self.__dict__.items() if k not in skip}

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state)
            self.lock = threading.Lock()
            self._start_storing()
            self.progress = Progress(None, self.objectives, (), enabled=False)
            self.policy = None
            self.seeder = None
            self.callbacks = ()

        def heartbeat_ids(self) -> list[int]:
            with self.lock:
                return [t._trial_id for t in self.in_flight.values()]

    return StudySearcher


def _make_scheduler_class() -> type:
    # deferred: Ray is optional (the ray extra) and slow to import
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class ParetoRungScheduler(FIFOScheduler):
        """The Optuna backend's early-stopping rule as a Tune scheduler: a trial reports its rung point, this stops it or not."""

        def __init__(self, config: Any, directions: list[str], known: list[dict[str, list[float]]]) -> None:
            super().__init__()
            self.config, self.directions = config, directions
            self.points: dict[str, dict[str, list[float]]] = {f"study-{i}": dict(v) for i, v in enumerate(known)}

        def on_trial_result(self, tune_controller: Any, trial: Any, result: dict[str, Any]) -> str:
            rung = str(result.get("rung"))
            point = rung_values_of(result).get(rung) if "rung" in result else None
            if point is None or rung in self.points.get(trial.trial_id, {}):
                return TrialScheduler.CONTINUE
            peers = early_stopping.peers_at([v for k, v in self.points.items() if k != trial.trial_id], rung)
            self.points.setdefault(trial.trial_id, {})[rung] = list(point)
            decision = early_stopping.decide(point, peers, self.directions, self.config)
            return TrialScheduler.STOP if decision.stop else TrialScheduler.CONTINUE

    return ParetoRungScheduler


_envs: dict[tuple[Any, ...], TrialEnv] = {}


def _worker_env(source: str, file: str, dataset: Any, device: str, out_dir: str) -> TrialEnv:
    """The trial environment of this Ray worker process, built once (data stay resident)."""
    key = (source, file, dataset, device, out_dir)
    if key not in _envs:
        # deferred: only the Ray worker process runs trials (and imports torch)
        from vae_automl.config import load_space_text
        from vae_automl.plugin_manager import get_plugin_manager
        from vae_automl.registry import get_registry
        from vae_automl.trial import prepare

        pm, registry = get_plugin_manager(), get_registry()
        space = dataclasses.replace(load_space_text(source, file, registry), dataset=dataset, device=device)
        _envs[key] = prepare(space, out_dir, registry, pm)
    return _envs[key]


def _trainable(
    config: dict[str, Any],
    source: str,
    file: str,
    dataset: Any,
    device: str,
    out_dir: str,
    deadline_unix_s: float | None = None,
) -> None:
    """One Ray trial: resolve the sampled params, run the trial, report per-epoch losses then the record.

    ``deadline_unix_s`` is the end of the driver's ``--timeout`` (wall clock: the worker may be on another machine);
    a trial still running then stops, as in the Optuna backend.
    """
    # deferred: Ray is optional (the ray extra) and slow to import
    from ray import tune

    # deferred: only the Ray worker process runs trials (and imports torch)
    from vae_automl.trial import base_model_baseline, measure_before_training, run_trial

    params = {k: v for k, v in config.items() if k not in (NUMBER_KEY, WANTS_BASELINE_KEY)}
    curve: list[float] = []
    spec_json = ""
    rung_values: dict[str, list[float]] = {}
    static: dict[str, float] | None = None

    def report_rung(rung: int | str, score: float, validation_loss: float) -> None:
        nonlocal static
        static = static if static is not None else measure_before_training(env, spec)
        rung_values[str(rung)] = [score, *static.values()]
        tune.report(
            {
                VALIDATION_LOSS: validation_loss,
                "epoch": len(curve),
                RUNG_KEY: dict(rung_values),
                "rung": str(rung),
                "validation_curve": list(curve),
                CONFIG_KEY: spec_json,
            }
        )

    def on_epoch(epoch: int, validation_loss: float, base_params: int, compressed_loss: Callable[[], float]) -> None:
        curve.append(validation_loss)
        if epoch + 1 in rungs:
            report_rung(epoch + 1, early_stopping.rung_score(env.space.pruner, validation_loss, compressed_loss), validation_loss)
            return
        tune.report(
            {
                VALIDATION_LOSS: validation_loss,
                "epoch": epoch + 1,
                "validation_curve": list(curve),
                CONFIG_KEY: spec_json,
                RUNG_KEY: dict(rung_values),
            }
        )

    def before_fine_tuning(compressed_loss: float) -> None:
        # the cheapest rung (score: compressed): the scheduler may stop the trial on this report
        report_rung(early_stopping.FINE_TUNE_RUNG, compressed_loss, curve[-1] if curve else compressed_loss)

    try:
        env = _worker_env(source, file, dataset, device, out_dir)
        env.deadline = None if deadline_unix_s is None else time.monotonic() + (deadline_unix_s - time.time())
        spec = space_mod.resolve(env.space, params, env.registry)
        spec_json = json.dumps(spec.as_dict())
        rungs = set(early_stopping.rungs(env.space.pruner, int(spec.training.get("epochs") or 0)))
        pruner = env.space.pruner
        fine_tune_rung = pruner.name != "none" and pruner.score == "compressed"
        record = run_trial(
            env,
            spec,
            int(config[NUMBER_KEY]),
            on_epoch=on_epoch,
            before_fine_tuning=before_fine_tuning if fine_tune_rung else None,
        )
        baseline = base_model_baseline(env) if config.get(WANTS_BASELINE_KEY) else None
    except Exception as exc:  # the reason goes to the study; the search goes on
        reason = failure_reason(exc)
        tune.report({FAILURE_KEY: reason, CONFIG_KEY: spec_json})
        return
    tune.report(
        {
            **record.objectives,
            RECORD_KEY: json.dumps(record.as_dict()),
            CONFIG_KEY: spec_json,
            "base_cache_hit": record.base.cache_hit,
            RUNG_KEY: dict(rung_values),
            BASELINE_KEY: json.dumps(baseline) if baseline is not None else "",
        }
    )


def ray_init_address(address: str | None, environ: Mapping[str, str]) -> str | None:
    """What ``ray.init`` gets for ``--address``: the user's address, else ``RAY_ADDRESS``, else a new local Ray.

    ``ray.init(address=None)`` connects to the cluster named in
    ``/tmp/ray/ray_current_cluster``, the last ``ray start`` on the machine; when that
    cluster is gone the driver waits for it, then fails. Without an address the user asked
    for a local Ray, so ``"local"`` starts one whatever that file says.
    """
    if address is not None:
        return address
    return None if environ.get("RAY_ADDRESS") else "local"


def _runtime_env(plugins: tuple[str, ...]) -> dict[str, Any]:
    """Environment variables that make Ray workers load the same plugins as the driver."""
    env_vars = {"RAY_CHDIR_TO_TRIAL_DIR": "0"}
    extra = [p for p in os.environ.get(EXTRA_PLUGINS_ENV, "").split(",") if p.strip()] + list(plugins)
    if extra:
        env_vars[EXTRA_PLUGINS_ENV] = ",".join(dict.fromkeys(extra))
    if os.environ.get(DISABLE_AUTOLOAD_ENV):
        env_vars[DISABLE_AUTOLOAD_ENV] = os.environ[DISABLE_AUTOLOAD_ENV]
    # plugin modules next to the driver (a local file, a PYTHONPATH entry) import on local workers too
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p] + [os.getcwd()]
    env_vars["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return {"env_vars": env_vars}


def _heartbeat_loop(storage: Any, searcher: Any, stop: threading.Event, interval_s: float) -> None:
    while not stop.wait(interval_s):
        for trial_id in searcher.heartbeat_ids():
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # a finished trial or a storage hiccup: the next beat tries again
                pass


class RayBackend(Backend):
    """Trials on a Ray cluster (or a local Ray), sampled through an Optuna study on our storage.

    Args:
        space: the search space (sent to the workers as its text).
        out: the out dir (base-model cache, artifacts, Ray's logs under ``out/ray``).
        plugins: extra plugin modules the workers load too.
        address: ``auto`` or ``HOST:PORT`` of a running cluster; None: the cluster ``RAY_ADDRESS`` names,
            else a new local Ray (never a stale one recorded by an earlier ``ray start``).
        gpus_per_trial: GPUs per trial, fractional to pack trials on a GPU (0.5: two per GPU).
        cpus_per_trial: CPUs per trial (Ray sets the worker's thread count from it).
        concurrency: at most this many trials at once (default: as many as the resources allow).
        scheduler: ``pareto`` stops trials at the rungs by the space's pruner settings, the rule of the
            Optuna backend; ``none`` runs every trial to the end. Default: ``pareto`` unless the space's
            pruner is ``none``.

    Raises:
        ConfigError: an option is out of range.
    """

    name = "ray"

    def __init__(
        self,
        space: SearchSpace,
        out: Path,
        plugins: tuple[str, ...] = (),
        address: str | None = None,
        gpus_per_trial: float = 0.0,
        cpus_per_trial: float = 1.0,
        concurrency: int | None = None,
        scheduler: str | None = None,
    ) -> None:
        if scheduler is None:
            scheduler = "none" if space.pruner.name == "none" else "pareto"
        if scheduler not in SCHEDULERS:
            raise ConfigError(f"--scheduler must be one of {', '.join(SCHEDULERS)}, but got {scheduler!r}")
        if scheduler == "pareto" and space.pruner.name == "none":
            raise ConfigError(f"{space.path}: --scheduler pareto needs rungs: set pruner: {{name: pareto}} in the space")
        if gpus_per_trial < 0 or cpus_per_trial <= 0:
            raise ConfigError(
                f"--gpus-per-trial must be >= 0 and --cpus-per-trial > 0, but got {gpus_per_trial} and {cpus_per_trial}"
            )
        if concurrency is not None and concurrency < 1:
            raise ConfigError(f"--concurrency must be >= 1, but got {concurrency}")
        device = "cuda" if gpus_per_trial > 0 else space.device
        if device.startswith("cuda") and gpus_per_trial == 0:
            raise ConfigError(
                f"{space.path}: device is {device}, but Ray hides GPUs from trials without --gpus-per-trial (e.g. 0.5)"
            )
        self.space, self.out, self.plugins, self.address = space, out, plugins, address
        self.gpus_per_trial, self.cpus_per_trial, self.concurrency = gpus_per_trial, cpus_per_trial, concurrency
        self.scheduler, self.device = scheduler, device

    def describe(self) -> str:
        return (
            f"on Ray ({self.address or 'local'}; {self.cpus_per_trial:g} CPU, {self.gpus_per_trial:g} GPU per trial; "
            f"scheduler {self.scheduler})"
        )

    def run(
        self,
        study: optuna.Study,
        budget: Budget,
        policy: SearchPolicy,
        progress: Progress,
        callbacks: Sequence[TrialCallback] = (),
    ) -> dict[str, int]:
        """Run trials on Ray until the study holds ``budget.target_completed`` completed trials."""
        if budget.own_limit is not None or budget.target_completed is None:
            raise ConfigError(
                "the ray backend runs towards a study-wide target of completed trials; "
                "use `vae-automl worker` for a per-process limit"
            )
        space, out = self.space, self.out
        storage_obj = study._storage
        study_mod.fail_stale_trials(study)  # trials of a killed driver or worker: failed and re-queued
        stats = {"base_trained": 0, "base_reused": 0, "repeats": 0}
        if budget.n_trials == 0:
            return stats
        done = len(study_mod.completed_trials(study))
        directions = study_mod.objectives_of(study)[1]

        ray = _import_ray()
        from ray import tune  # deferred with ray itself: an optional, heavy dependency

        # Ctrl+C must reach us as KeyboardInterrupt so running trials are told FAIL, not left RUNNING
        os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
        # per-epoch results carry the validation loss only; the objectives come with the last one
        os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
        # Tune's own tables would interleave with our progress lines
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        owns_ray = not ray.is_initialized()
        if owns_ray:
            init_kwargs: dict[str, Any] = {
                "address": ray_init_address(self.address, os.environ),
                "runtime_env": _runtime_env(self.plugins),
                "logging_level": "WARNING",
                "log_to_driver": False,
            }
            if self.address is None:
                init_kwargs["include_dashboard"] = False
            try:
                ray.init(**init_kwargs)
            except ConnectionError as exc:
                raise VaeAutomlError(
                    f"cannot connect to the Ray cluster at {self.address}: {exc} ({exc.__cause__}). Clusters started with "
                    "`ray start` use token authentication: export RAY_AUTH_MODE=token, with the cluster's token in "
                    "~/.ray/auth_token or RAY_AUTH_TOKEN"
                ) from None
        searcher = _make_searcher_class()(
            space=_DefineByRun(space),
            metric=list(space.objectives),
            mode=["min" if d == "minimize" else "max" for d in directions],
            sampler=study.sampler,
            study_name=study.study_name,
            storage=storage_obj,
            objectives=tuple(space.objectives),
            target_completed=budget.target_completed,
            done=done,
            max_failures=budget.max_attempts,
            deadline=time.monotonic() + budget.timeout_s if budget.timeout_s is not None else None,
            progress=progress,
            policy=policy,
            callbacks=callbacks,
            has_baseline=space.base_model is None or study_mod.BASELINE_ATTR in study.user_attrs,
        )
        sched = None
        if self.scheduler == "pareto":
            known = [t.user_attrs.get(early_stopping.RUNG_VALUES_ATTR) or {} for t in study.get_trials(deepcopy=False)]
            sched = _make_scheduler_class()(space.pruner, policy.rung_directions(), known)
        dataset = space.dataset
        if dataset.data_dir:
            dataset = dataclasses.replace(dataset, data_dir=str(Path(dataset.data_dir).resolve()))
        trainable = tune.with_resources(
            tune.with_parameters(
                _trainable,
                source=space.source,
                file=space.path,
                dataset=dataset,
                device=self.device,
                out_dir=str(Path(out).resolve()),
                deadline_unix_s=time.time() + budget.timeout_s if budget.timeout_s is not None else None,
            ),
            {"cpu": self.cpus_per_trial, "gpu": self.gpus_per_trial},
        )
        tuner = tune.Tuner(
            trainable,
            # reused actors keep torch imported and the data resident (_envs): a fresh one per trial costs seconds
            tune_config=tune.TuneConfig(
                search_alg=searcher, scheduler=sched, num_samples=-1, max_concurrent_trials=self.concurrency, reuse_actors=True
            ),
            run_config=tune.RunConfig(
                name=f"{study.study_name}-{int(time.time())}",
                storage_path=str((Path(out) / "ray").resolve()),
                verbose=0,
                log_to_file=True,
            ),
        )
        stop = threading.Event()
        if study_mod.has_heartbeat(study):
            threading.Thread(
                target=_heartbeat_loop,
                daemon=True,
                args=(storage_obj, searcher, stop, getattr(storage_obj, "get_heartbeat_interval", lambda: 10)() or 10),
            ).start()
        try:
            tuner.fit()
        finally:
            stop.set()
            searcher.fail_in_flight("the Ray driver stopped before this trial finished (interrupted?)")
            searcher.pool.shutdown()
            if owns_ray:
                ray.shutdown()
        return dict(searcher.stats)
