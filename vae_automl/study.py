"""The study: where trials are stored, the space and budget stored with it, and what it holds.

This module owns opening a storage, creating or loading a study with its
stored space, objectives, out dir and trial budget, planning how many
trials a run starts, and reading the study back (completed trials, records,
the Pareto front). Both backends and the worker come here for all of it.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import math
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import optuna
from optuna.storages.journal import JournalFileBackend, JournalStorage

from vae_automl import fingerprint, pareto
from vae_automl.errors import ConfigError
from vae_automl.record import RECORD_ATTR, TrialRecord

if TYPE_CHECKING:
    from vae_automl.config import SearchSpace
    from vae_automl.registry import Registry

__all__ = [
    "ATTEMPTS_PER_TRIAL",
    "BASELINE_ATTR",
    "BASE_MODEL_ATTR",
    "BUDGET_ATTR",
    "PLUGINS_ATTR",
    "FAILURE_ATTR",
    "JOURNAL_PREFIX",
    "OBJECTIVES_ATTR",
    "OUT_DIR_ATTR",
    "RECORD_ATTR",
    "SPACE_ATTR",
    "SPACE_FILE_ATTR",
    "Budget",
    "FrontEntry",
    "TrialCallback",
    "add_plugins",
    "check_base_model",
    "check_limits",
    "completed_trials",
    "completed_values",
    "count_completed",
    "create_study",
    "directions_of",
    "exhausted",
    "fail_stale_trials",
    "front_of_study",
    "has_heartbeat",
    "warn_without_heartbeats",
    "load_front",
    "name_objectives",
    "objectives_of",
    "open_storage",
    "optuna_logging",
    "open_study",
    "plan_search",
    "plan_worker",
    "stored_budget",
    "stored_out_dir",
    "stored_space",
]

SPACE_ATTR = "vae_automl_space"
SPACE_FILE_ATTR = "vae_automl_space_file"
OBJECTIVES_ATTR = "vae_automl_objectives"
OUT_DIR_ATTR = "vae_automl_out_dir"
BUDGET_ATTR = "vae_automl_trial_budget"
DATASET_ATTR = "vae_automl_dataset"
"""The dataset spec and split a study was searched on (after --dataset), so a resume on other data is refused."""
BASE_MODEL_ATTR = "vae_automl_base_model"
"""``{factory, checkpoint_sha256}`` of a study started from a user's model."""
BASELINE_ATTR = "vae_automl_baseline"
"""The user's model as given, measured with the study's objectives: ``{objectives, metrics}``."""
PLUGINS_ATTR = "vae_automl_plugins"
"""Every plugin a trial of the study used: ``{plugin: {distribution, version, module}}``."""
FAILURE_ATTR = "failure_reason"

HEARTBEAT_INTERVAL_ENV = "VAE_AUTOML_HEARTBEAT_INTERVAL_S"
HEARTBEAT_GRACE_ENV = "VAE_AUTOML_HEARTBEAT_GRACE_S"
"""Override the heartbeat timing: a shorter grace re-queues a killed worker's trial sooner, at more storage traffic."""
HEARTBEAT_INTERVAL_S = 10
HEARTBEAT_GRACE_S = 30
MAX_RETRY = 3
JOURNAL_PREFIX = "journal:"
ATTEMPTS_PER_TRIAL = 3
"""``--n-trials N`` stops after this many attempts per wanted trial, so a space whose trials all fail ends."""


TrialCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]
"""An ordinary Optuna callback, as ``study.optimize(callbacks=...)`` takes it: the study and a finished trial."""


@dataclass
class FrontEntry:
    trial: int
    params: dict[str, Any]
    objectives: dict[str, float]
    record: TrialRecord | None
    """None for a trial stored without a record (by another tool)."""

    def as_dict(self) -> dict[str, Any]:
        return {"trial": self.trial, "params": self.params, "objectives": self.objectives}


POSTGRES_DRIVER = "postgresql+psycopg://"


def rdb_url(url: str) -> str:
    """``url`` with PostgreSQL's driver named: psycopg 3, the one the ``postgres`` extra installs.

    SQLAlchemy 2.0 maps a bare ``postgresql://`` to psycopg2 and 2.1 to psycopg 3; naming it makes one
    driver enough whatever SQLAlchemy is installed. A URL that names a driver is kept.
    """
    for bare in ("postgresql://", "postgres://"):
        if url.startswith(bare):
            return POSTGRES_DRIVER + url[len(bare) :]
    return url


def storage_file(url: str) -> Path | None:
    """The file a ``sqlite:///`` or ``journal:`` storage URL names (None: a server, or SQLite in memory)."""
    if url.startswith(JOURNAL_PREFIX):
        return Path(url[len(JOURNAL_PREFIX) :]).expanduser()
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///") :].partition("?")[0]).expanduser()
    return None


def open_storage(url: str | optuna.storages.BaseStorage, create: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage from a URL: ``sqlite:///``, ``postgresql://``, ``mysql://`` or ``journal:PATH``.

    RDB storages get heartbeats so a worker killed mid-trial has its trial
    marked failed and re-queued by the next worker; journal files suit
    shared file systems where SQLite would lock. With ``create=False`` (the
    commands that read a study) a storage file must exist: a mistyped path
    must not leave an empty database behind.
    """
    if not isinstance(url, str):
        return url
    file = storage_file(url)
    if file is not None:
        if not create and not file.is_file():
            raise ConfigError(f"storage {url}: no such file {file}; check the path (a search creates it)")
        if file.exists() and not file.is_file():
            raise ConfigError(f"storage {url}: {file} is a folder, not a storage file")
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"storage {url}: cannot create the folder {file.parent}: {exc.strerror}") from None
    if url.startswith(JOURNAL_PREFIX):
        assert file is not None
        try:
            journal = JournalStorage(JournalFileBackend(str(file)))
            journal.get_all_studies()  # reads the whole file now, so damage shows here and not mid-search
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"storage {url}: the journal file {file} is corrupt ({type(exc).__name__}: {exc})") from None
        return journal
    if "://" not in url:
        raise ConfigError(f"storage {url!r} is not a URL: use sqlite:///PATH, postgresql://..., or journal:PATH")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                rdb_url(url),
                heartbeat_interval=int(os.environ.get(HEARTBEAT_INTERVAL_ENV, HEARTBEAT_INTERVAL_S)),
                grace_period=int(os.environ.get(HEARTBEAT_GRACE_ENV, HEARTBEAT_GRACE_S)),
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
                engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
            )
    except Exception as exc:
        raise ConfigError(f"cannot open storage {url}: {exc}") from exc


@contextlib.contextmanager
def optuna_logging(verbose: bool = False) -> Iterator[None]:
    """Optuna's own log lines (study created, trial finished) at INFO when ``verbose``, else errors only,
    restored afterwards: the progress lines say the same, and a Python caller's setting comes back."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def has_heartbeat(study: optuna.Study) -> bool:
    """Whether the study's storage records heartbeats (RDB storages do; JournalStorage does not)."""
    storage = study._storage
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and bool(interval())


def warn_without_heartbeats(study: optuna.Study) -> str | None:
    """Warn (``UserWarning``) that the study's storage has no heartbeats, and return the warning; None if it has them.

    Optuna 5's JournalStorage has none (it is no ``BaseHeartbeat``; read in optuna/storages/journal/_storage.py):
    a trial whose worker or driver is killed stays RUNNING there for ever. It is not retried, and since a running
    trial's point counts as taken, its point is never drawn again. Every search and worker on such a storage says so.
    """
    if has_heartbeat(study) or not isinstance(study._storage, JournalStorage):
        return None
    message = (
        "journal storage has no heartbeats: a trial whose worker or Ray driver is killed stays RUNNING, is not retried, "
        "and its point is not drawn again; use PostgreSQL (or SQLite on one machine) where processes may die"
    )
    warnings.warn(message, UserWarning, stacklevel=2)
    return message


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and re-queue) the trials of killed processes whose heartbeat went stale; a no-op without heartbeats.

    Optuna goes by heartbeats alone, so a trial whose process was killed between creating it and its first
    heartbeat would stay RUNNING for ever: such a trial, silent for the grace period since it started, is
    failed and re-queued too (:func:`_fail_silent_trials`).
    """
    if has_heartbeat(study):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
            _fail_silent_trials(study)


def _fail_silent_trials(study: optuna.Study) -> None:
    """Fail the RUNNING trials of ``study`` that never beat and started over the grace period ago, as Optuna's
    ``fail_stale_trials`` fails stale ones (then its stale-trial callback queues the retry)."""
    rdb = _rdb_backend(study)
    if rdb is None:
        return
    # deferred: Optuna's table models and SQLAlchemy, needed only here and only for RDB storages
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    trial_t, beat_t = models.TrialModel.__table__, models.TrialHeartbeatModel.__table__
    grace_s = rdb.grace_period or 2 * (rdb.get_heartbeat_interval() or HEARTBEAT_INTERVAL_S)
    # datetime_start is the creating client's local time (optuna.storages.RDBStorage.create_new_trial)
    before = datetime.datetime.now() - datetime.timedelta(seconds=grace_s)
    with rdb.engine.connect() as conn:
        silent = [
            row[0]
            for row in conn.execute(
                sa.select(trial_t.c.trial_id)
                .outerjoin(beat_t, beat_t.c.trial_id == trial_t.c.trial_id)
                .where(
                    trial_t.c.study_id == study._study_id,
                    trial_t.c.state == optuna.trial.TrialState.RUNNING,
                    trial_t.c.datetime_start < before,
                    beat_t.c.trial_id.is_(None),
                )
            )
        ]
    failed = []
    for trial_id in silent:
        try:
            if study._storage.set_trial_state_values(trial_id, state=optuna.trial.TrialState.FAIL):
                failed.append(trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process failed it first
    callback = rdb.get_heartbeat_stale_trial_callback()
    if callback is not None:
        for trial_id in failed:
            callback(study, copy.deepcopy(study._storage.get_trial(trial_id)))


def open_study(storage: Any, study_name: str, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    """An existing study (with ``sampler``, else Optuna's default), or an error listing the studies there.

    A study stored before objective names went through Optuna gets them now (:func:`name_objectives`).
    """
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage, create=False), sampler=sampler)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(open_storage(storage, create=False))]
        raise ConfigError(f"no study {study_name!r} in {storage}; studies there: {', '.join(names) or '(none)'}") from None
    stored = study.user_attrs.get(OBJECTIVES_ATTR)
    if stored is not None and study.metric_names is None:
        try:
            name_objectives(study, list(stored))
        except Exception:  # a read-only storage still opens: objectives_of falls back to our attribute
            pass
    return study


def name_objectives(study: optuna.Study, names: list[str]) -> None:
    """Give the study's objectives their names through ``study.set_metric_names``, unless they have them.

    Optuna keeps them where optuna-dashboard, ``trials_dataframe()`` (``values_test_elbo_nats``) and its
    plots read them; :data:`OBJECTIVES_ATTR` stays for readers of studies written before 0.3.
    """
    if study.metric_names == names or len(names) != len(study.directions):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)


def check_base_model(study: optuna.Study, factory: str | None, checkpoint_sha256: str | None) -> None:
    """Record the study's base model, or refuse one whose checkpoint differs from the one the study was started with."""
    stored = study.user_attrs.get(BASE_MODEL_ATTR)
    if stored is None:
        study.set_user_attr(BASE_MODEL_ATTR, {"factory": factory, "checkpoint_sha256": checkpoint_sha256})
    elif stored.get("checkpoint_sha256") != checkpoint_sha256:
        raise ConfigError(
            f"study {study.study_name!r} was started from base_model checkpoint sha256 "
            f"{stored.get('checkpoint_sha256')} ({stored.get('factory')}), but this one is "
            f"{checkpoint_sha256} ({factory}); its trials would not be comparable: use another --study name"
        )


def add_plugins(study: optuna.Study, plugins: dict[str, dict[str, str]]) -> None:
    """Merge a trial's plugins into the study's :data:`PLUGINS_ATTR` (provenance of the whole study)."""
    known = dict(study.user_attrs.get(PLUGINS_ATTR, {}))
    if any(name not in known for name in plugins):
        study.set_user_attr(PLUGINS_ATTR, {**known, **plugins})


def directions_of(space: SearchSpace, registry: Registry) -> tuple[Literal["minimize", "maximize"], ...]:
    """``minimize``/``maximize`` of each objective of ``space``, as its plugin declares."""
    return tuple(registry.objectives.get(name).direction for name in space.objectives)


def create_study(
    space: SearchSpace,
    storage: Any,
    study_name: str,
    out_dir: str | Path,
    registry: Registry,
    sampler: optuna.samplers.BaseSampler | None = None,
) -> optuna.Study:
    """Create the study, or load it if it exists (then its objectives must match).

    A new study stores the space's text and file, its objectives, the out
    dir and the trial budget, so workers need only the storage and the name.
    """
    from vae_automl.config import study_name_problem  # deferred: config imports components and the YAML stack

    if problem := study_name_problem(study_name):
        raise ConfigError(problem)
    study = optuna.create_study(
        storage=open_storage(storage),
        study_name=study_name,
        directions=list(directions_of(space, registry)),
        sampler=sampler,
        load_if_exists=True,
    )
    stored = study.user_attrs.get(OBJECTIVES_ATTR)
    if stored is not None and list(stored) != list(space.objectives):
        raise ConfigError(
            f"study {study_name!r} optimizes {stored}, but {space.path} asks for {list(space.objectives)}; "
            "use another --study name"
        )
    if space.base_model is not None:
        check_base_model(study, space.base_model.factory, space.base_model.checkpoint_sha256())
    dataset: dict[str, Any] = {"spec": space.dataset.spec, "split": asdict(space.dataset.split)}
    # only when set, so studies made before these keys existed compare equal
    if space.dataset.image_size is not None:
        dataset["image_size"] = list(space.dataset.image_size)
    if space.dataset.color is not None:
        dataset["color"] = space.dataset.color
    stored_dataset = study.user_attrs.get(DATASET_ATTR)
    if stored_dataset is not None and stored_dataset != dataset:
        # trials on other data would share one front and fail export's split check later
        raise ConfigError(
            f"study {study_name!r} in {storage} was searched on dataset {stored_dataset['spec']!r} "
            f"(split {stored_dataset['split']}), but this run asks for {dataset['spec']!r} (split {dataset['split']}); "
            "use another --study name or --out"
        )
    changes = fingerprint.check(study.user_attrs.get(fingerprint.FINGERPRINT_ATTR), space, f"study {study_name!r} in {storage}")
    if changes:
        # only ranges changed: the study goes on with the new space (workers read it), the change noted
        warnings.warn(
            f"study {study_name!r} continues with changed ranges ({'; '.join(map(str, changes))}); "
            f"noted in its user attribute {fingerprint.CHANGES_ATTR!r}",
            UserWarning,
            stacklevel=2,
        )
        study.set_user_attr(
            fingerprint.CHANGES_ATTR, [*study.user_attrs.get(fingerprint.CHANGES_ATTR, []), fingerprint.note(changes)]
        )
        study.set_user_attr(SPACE_ATTR, space.source)
        study.set_user_attr(SPACE_FILE_ATTR, space.path)
    if changes or fingerprint.FINGERPRINT_ATTR not in study.user_attrs:
        study.set_user_attr(fingerprint.FINGERPRINT_ATTR, fingerprint.fingerprint(space))
    if stored_dataset is None:
        study.set_user_attr(DATASET_ATTR, dataset)
    name_objectives(study, list(space.objectives))
    if stored is None:
        study.set_user_attr(OBJECTIVES_ATTR, list(space.objectives))
        study.set_user_attr(SPACE_ATTR, space.source)
        study.set_user_attr(SPACE_FILE_ATTR, space.path)
        study.set_user_attr(OUT_DIR_ATTR, str(Path(out_dir).resolve()))
        study.set_user_attr(BUDGET_ATTR, space.trials)
    return study


def stored_space(study: optuna.Study, registry: Registry) -> SearchSpace:
    """The search space stored in ``study`` by ``vae-automl search``."""
    from vae_automl.config import load_space_text  # deferred: config imports components and the YAML stack

    source = study.user_attrs.get(SPACE_ATTR)
    if not source:
        raise ConfigError(
            f"study {study.study_name!r} stores no search space (user attr {SPACE_ATTR!r}); "
            "create it with `vae-automl search SPACE.yaml --storage URL --study NAME --n-trials 0`"
        )
    file = study.user_attrs.get(SPACE_FILE_ATTR, "space.yaml")
    return load_space_text(source, f"{file} (stored in study {study.study_name!r})", registry)


def stored_out_dir(study: optuna.Study) -> Path | None:
    out = study.user_attrs.get(OUT_DIR_ATTR)
    return Path(out) if out else None


@dataclass(frozen=True)
class Budget:
    """How many trials one run of a backend starts, and when it stops.

    Attributes:
        n_trials: completed trials this run aims for (the progress total).
        target_completed: stop once the study holds this many completed
            trials (every process's count); None: no study-wide target.
        own_limit: stop once this run completed this many trials itself
            (a worker's ``--n-trials``); None: no such limit.
        max_attempts: stop after this many failed trials, so a space whose
            trials all fail ends (trials stopped early do not count).
        timeout_s: start no trial after this many seconds (a running one stops by ``TrialEnv.deadline``).
    """

    n_trials: int
    target_completed: int | None
    own_limit: int | None
    max_attempts: int
    timeout_s: float | None


def exhausted(budget: Budget, completed: int, repeats: int, failed: int) -> str | None:
    """Why a run completed fewer trials than ``budget`` asked because the space ran out of new points; None otherwise.

    A drawn point that a completed or running trial already has is not run (a repeat); repeats count toward
    ``budget.max_attempts`` with failures, so a space with no new point left ends. That end, with ``repeats``
    among the attempts and ``completed`` short of ``budget.n_trials``, is this. A run stopped by ``--timeout``,
    by the study-wide target (other workers completed the rest) or by ``stop_when`` is not.
    """
    if completed >= budget.n_trials or repeats == 0 or repeats + failed < budget.max_attempts:
        return None
    return (
        f"completed {completed} of the {budget.n_trials} trials asked: the search space holds no new point "
        f"({repeats} draws repeated a completed or running trial and were not run); widen its ranges or choices, "
        "or set sampler: {repeats: true} to run repeats"
    )


def check_limits(trials: Any, timeout_s: Any) -> None:
    """Refuse a trial count or a timeout that cannot be meant, before any data is loaded.

    Raises:
        ConfigError: ``trials`` is not a whole number >= 0, or ``timeout_s`` not a finite number > 0.
    """
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int) or trials < 0):
        raise ConfigError(f"trials (--n-trials) must be a whole number >= 0, but got {trials!r}")
    if timeout_s is not None and (
        isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not math.isfinite(timeout_s) or timeout_s <= 0
    ):
        raise ConfigError(f"timeout (--timeout) must be a finite number of seconds > 0, but got {timeout_s!r}")


def plan_search(study: optuna.Study, space: SearchSpace, trials: int | None, timeout_s: float | None) -> Budget:
    """The budget of ``search``: ``trials`` more completed trials, or the space's budget counting what is done.

    Failed and early-stopped trials do not count, so re-running an
    interrupted command resumes it.
    """
    done = len(completed_trials(study))
    if trials is not None:
        n, target = trials, done + trials
    else:
        n, target = max(space.trials - done, 0), max(space.trials, done)
    return Budget(n, target, None, n * ATTEMPTS_PER_TRIAL, timeout_s)


def plan_worker(study: optuna.Study, space: SearchSpace, trials: int | None, timeout_s: float | None) -> Budget:
    """The budget of a worker: ``trials`` completed by itself, or until the study completed its stored budget."""
    if trials is not None:
        return Budget(trials, None, trials, trials * ATTEMPTS_PER_TRIAL, timeout_s)
    done = len(completed_trials(study))
    budget = stored_budget(study, space)
    return Budget(max(budget - done, 0), max(budget, done), None, max(budget - done, 0) * ATTEMPTS_PER_TRIAL, timeout_s)


def stored_budget(study: optuna.Study, space: SearchSpace) -> int:
    """The trial budget stored with the study (the space's ``trials`` when it stored none)."""
    return int(study.user_attrs.get(BUDGET_ATTR, space.trials))


def objectives_of(study: optuna.Study) -> tuple[list[str], list[str]]:
    """The objective names (Optuna's metric names, else our 0.2 user attribute) and their directions."""
    names = study.metric_names or study.user_attrs.get(OBJECTIVES_ATTR)
    if names is None:
        names = [f"objective{i}" for i in range(len(study.directions))]
    directions = ["minimize" if d == optuna.study.StudyDirection.MINIMIZE else "maximize" for d in study.directions]
    return list(names), directions


def completed_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def count_completed(study: optuna.Study) -> int:
    """How many completed trials the study holds, every process's: one ``count`` query on an RDB storage.

    Reading the trials (:func:`completed_trials`) re-reads every running trial from the storage each time.
    """
    rdb = _rdb_backend(study)
    if rdb is None:
        return len(completed_trials(study))
    # deferred: Optuna's table models and SQLAlchemy, needed only here and only for RDB storages
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    trial_t = models.TrialModel.__table__
    with rdb.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(trial_t)
                .where(trial_t.c.study_id == study._study_id, trial_t.c.state == optuna.trial.TrialState.COMPLETE)
            ).scalar_one()
        )


def completed_values(study: optuna.Study) -> dict[int, list[float]]:
    """Trial number -> objective values of every completed trial: one query on an RDB storage.

    What a progress line needs after each trial (the study-wide best and front size); reading the trials
    instead (:func:`completed_trials`) re-reads every running trial, which 64 workers each doing it after every
    trial turn into the storage's main load.
    """
    rdb = _rdb_backend(study)
    if rdb is None:
        return {t.number: list(t.values) for t in completed_trials(study)}
    with rdb.engine.connect() as conn:
        return dict(_rdb_completed_values(conn, study).values())


def _rdb_completed_values(conn: Any, study: optuna.Study) -> dict[int, tuple[int, list[float]]]:
    """Trial id -> (trial number, objective values) of every completed trial, read with one query on Optuna's tables."""
    # deferred: Optuna's table models and SQLAlchemy, needed only here and only for RDB storages
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    trial_t, value_t = models.TrialModel.__table__, models.TrialValueModel.__table__
    rows = conn.execute(
        sa.select(trial_t.c.trial_id, trial_t.c.number, value_t.c.objective, value_t.c.value, value_t.c.value_type)
        .join(value_t, value_t.c.trial_id == trial_t.c.trial_id)
        .where(trial_t.c.study_id == study._study_id, trial_t.c.state == optuna.trial.TrialState.COMPLETE)
    ).all()
    width = 1 + max((row[2] for row in rows), default=0)
    completed: dict[int, tuple[int, list[float]]] = {}
    for trial_id, number, objective, value, value_type in rows:
        completed.setdefault(trial_id, (number, [math.nan] * width))[1][objective] = models.TrialValueModel.stored_repr_to_value(
            value, value_type
        )
    return completed


NOT_RDB = object()
"""What :func:`rdb_duplicate_of` returns for a storage it cannot query (then read the trials instead)."""


def rdb_duplicate_of(
    study: optuna.Study,
    number: int,
    params: dict[str, Any],
    distributions: dict[str, optuna.distributions.BaseDistribution],
) -> int | None | object:
    """The number of a completed or running trial other than ``number`` whose params are exactly ``params``, found
    with one query on Optuna's tables; None if there is none; :data:`NOT_RDB` on a storage that is not an RDB.

    Exactly: the same names, no more and no fewer, each with the same stored (internal) value.
    """
    rdb = _rdb_backend(study)
    if rdb is None:
        return NOT_RDB
    if not params:
        return None
    # deferred: Optuna's table models and SQLAlchemy, needed only here and only for RDB storages
    import sqlalchemy as sa
    from optuna.storages._rdb import models

    trial_t, param_t = models.TrialModel.__table__, models.TrialParamModel.__table__
    own = param_t.alias("own")  # every param of the candidate trial, to refuse one with more params than ``params``
    every = sa.select(sa.func.count()).select_from(own).where(own.c.trial_id == trial_t.c.trial_id).correlate(trial_t)
    matches = sa.or_(
        *(
            sa.and_(param_t.c.param_name == name, param_t.c.param_value == distributions[name].to_internal_repr(value))
            for name, value in params.items()
        )
    )
    query = (
        sa.select(trial_t.c.number)
        .join(param_t, param_t.c.trial_id == trial_t.c.trial_id)
        .where(
            trial_t.c.study_id == study._study_id,
            trial_t.c.number != number,
            trial_t.c.state.in_([optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]),
            matches,
        )
        .group_by(trial_t.c.trial_id, trial_t.c.number)
        .having(sa.func.count() == len(params))
        .having(every.scalar_subquery() == len(params))
        .order_by(trial_t.c.number)
        .limit(1)
    )
    with rdb.engine.connect() as conn:
        found = conn.execute(query).scalar_one_or_none()
    return None if found is None else int(found)


def front_of_study(study: optuna.Study) -> list[FrontEntry]:
    """The non-dominated completed trials, ordered by the first objective.

    On an RDB storage (PostgreSQL, SQLite, MySQL) it reads the completed trials' values in one query and
    then the params and records of the front's trials only (:func:`_rdb_front`): a study of 10,000 trials
    would otherwise build 10,000 full trials (every record parsed) to keep a hundred.
    """
    names, directions = objectives_of(study)
    rdb = _rdb_backend(study)
    if rdb is not None:
        return _sorted_front(_rdb_front(rdb, study, names, directions), names, directions)
    trials = completed_trials(study)
    if not trials:
        return []
    indices = pareto.non_dominated([t.values for t in trials], directions)
    entries = [
        FrontEntry(
            trials[i].number, dict(trials[i].params), dict(zip(names, trials[i].values)), TrialRecord.from_trial(trials[i])
        )
        for i in indices
    ]
    return _sorted_front(entries, names, directions)


def _sorted_front(entries: list[FrontEntry], names: list[str], directions: list[str]) -> list[FrontEntry]:
    return sorted(entries, key=lambda e: e.objectives[names[0]] * (1 if directions[0] == "minimize" else -1))


def _rdb_backend(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The study's RDBStorage (Optuna wraps it in a cache), or None for another kind of storage."""
    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def _rdb_front(rdb: optuna.storages.RDBStorage, study: optuna.Study, names: list[str], directions: list[str]) -> list[FrontEntry]:
    """The front read with three bulk queries on Optuna's tables: every completed trial's values, then the
    params and the record of the front's trials."""
    # deferred: Optuna's table models and SQLAlchemy, needed only here and only for RDB storages
    import sqlalchemy as sa
    from optuna.distributions import json_to_distribution
    from optuna.storages._rdb import models

    param_t, attr_t = models.TrialParamModel.__table__, models.TrialUserAttributeModel.__table__
    with rdb.engine.connect() as conn:
        completed = _rdb_completed_values(conn, study)
        ids = sorted(completed)
        if not ids:
            return []
        numbers = {i: completed[i][0] for i in ids}
        values = {i: completed[i][1] for i in ids}
        front_ids = [ids[i] for i in pareto.non_dominated([values[i] for i in ids], directions)]
        params: dict[int, dict[str, Any]] = {i: {} for i in front_ids}
        for trial_id, name, value, distribution in conn.execute(
            sa.select(param_t.c.trial_id, param_t.c.param_name, param_t.c.param_value, param_t.c.distribution_json).where(
                param_t.c.trial_id.in_(front_ids)
            )
        ):
            params[trial_id][name] = json_to_distribution(distribution).to_external_repr(value)
        records: dict[int, str] = dict(
            conn.execute(
                sa.select(attr_t.c.trial_id, attr_t.c.value_json).where(
                    attr_t.c.trial_id.in_(front_ids), attr_t.c.key == RECORD_ATTR
                )
            ).all()
        )
    return [
        FrontEntry(
            numbers[i],
            params[i],
            dict(zip(names, values[i])),
            TrialRecord.from_dict(json.loads(records[i])) if i in records else None,
        )
        for i in front_ids
    ]


def load_front(storage: Any, study_name: str) -> list[FrontEntry]:
    """The Pareto front of a stored study (either backend)."""
    return front_of_study(open_study(storage, study_name))
