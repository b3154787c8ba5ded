"""Experiment tracking: Optuna callbacks that send every finished trial to TensorBoard or MLflow.

Both are ordinary Optuna callbacks ``f(study, frozen_trial)``: pass them to
``vae_automl.search(..., callbacks=[...])`` or ``vae_automl.worker``, or to
any ``study.optimize``; ``vae-automl search --tensorboard DIR --mlflow URI``
builds them from the command line. Each trial's sampled parameters, its
objective values (by the study's metric names) and every figure its record
measured (``latency_ms``, ``recon_error``, ...) arrive there.

- :class:`TensorBoardCallback` writes event files with tensorboardX (the
  ``tensorboard`` extra; Ray Tune installs it too): one hparams run per
  completed trial under ``DIR/trial-N`` (TensorBoard's HParams tab lists the
  trials with their parameters and metrics) and ``objective/NAME`` and
  ``metric/NAME`` scalars in ``DIR`` over the trial number.
- :class:`MLflowCallback` logs one MLflow run per finished trial (the
  ``mlflow`` extra, mlflow-skinny suffices) in an experiment named after the
  study: parameters, metrics, and the trial's number and state as tags.
  Pruned and failed trials are logged too, with their parameters and state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import optuna

from vae_automl.errors import ConfigError
from vae_automl.record import METRICS_ATTR
from vae_automl.study import TrialCallback, objectives_of

__all__ = ["MLflowCallback", "TensorBoardCallback", "tracking_callbacks", "trial_metrics"]

MLFLOW_LOGGERS = ("mlflow", "alembic")
"""MLflow's own loggers, and that of the schema migrations it runs on a new SQLite store."""


@contextlib.contextmanager
def quiet_loggers(names: Sequence[str], verbose: bool) -> Iterator[None]:
    """The ``names`` loggers at WARNING for the block (INFO lines through only when ``verbose``), restored after.

    MLflow prints ``INFO mlflow.store.db.utils: Creating initial MLflow database tables...`` to stderr, among the
    progress lines; Optuna's own lines are kept quiet the same way (:func:`vae_automl.study.optuna_logging`).
    """
    loggers = [logging.getLogger(name) for name in names]
    previous = [logger.level for logger in loggers]
    if not verbose:
        for logger in loggers:
            logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for logger, level in zip(loggers, previous):
            logger.setLevel(level)


def trial_metrics(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    """The objective values by name, then every other figure the trial's record measured (empty for an unfinished one)."""
    names, _ = objectives_of(study)
    metrics = {name: float(value) for name, value in zip(names, trial.values or ())}
    for name, value in (trial.user_attrs.get(METRICS_ATTR) or {}).items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            metrics.setdefault(name, float(value))
    return metrics


def _hparam(value: Any) -> bool | str | float | int:
    return value if isinstance(value, bool | str | float | int) else str(value)


class TensorBoardCallback:
    """Writes each completed trial's parameters and metrics as TensorBoard event files under ``log_dir``.

    Args:
        log_dir: the folder TensorBoard is pointed at (``tensorboard --logdir DIR``); created.
    """

    def __init__(self, log_dir: str | Path) -> None:
        try:
            # deferred: tensorboardX is optional (the tensorboard extra)
            from tensorboardX import SummaryWriter
        except ImportError:
            raise ConfigError(
                "--tensorboard needs tensorboardX: pip install 'vae-automl[tensorboard]' (or tensorboardX)"
            ) from None
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer_class = SummaryWriter
        self._writer: Any = None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state != optuna.trial.TrialState.COMPLETE:
            return
        if self._writer is None:
            # tensorboardX names its file by the second and the host only: a worker started in the same second in
            # the same folder would overwrite this one's events, so the pid and a random part make it unique
            suffix = f".{os.getpid()}.{uuid.uuid4().hex[:8]}"
            self._writer = self._writer_class(logdir=str(self.log_dir), filename_suffix=suffix)
        metrics = trial_metrics(study, trial)
        objectives = set(objectives_of(study)[0])
        for name, value in metrics.items():
            self._writer.add_scalar(f"{'objective' if name in objectives else 'metric'}/{name}", value, trial.number)
        params = {key: _hparam(value) for key, value in trial.params.items()}
        self._writer.add_hparams(params, metrics, name=f"trial-{trial.number}", global_step=trial.number)
        self._writer.flush()  # a running search's trials are readable at once

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class MLflowCallback:
    """Logs each finished trial as an MLflow run: parameters, metrics, and its number and state as tags.

    Args:
        tracking_uri: where MLflow stores runs: ``sqlite:///mlflow.db``, ``http://HOST:5000`` (MLflow 3 refuses
            a ``file:`` store unless ``MLFLOW_ALLOW_FILE_STORE=true``).
        experiment: the MLflow experiment (default: the study's name); created if missing.
        verbose: let MLflow's own INFO log lines through (``-v``); WARNING and above only otherwise.
    """

    def __init__(self, tracking_uri: str, experiment: str | None = None, verbose: bool = False) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.verbose = verbose
        self._experiment_ids: dict[str, str] = {}
        try:
            # deferred: mlflow is optional (the mlflow extra) and slow to import
            import mlflow  # (its import sets up its loggers, so they are quieted after it)
        except ImportError:
            raise ConfigError("--mlflow needs mlflow: pip install 'vae-automl[mlflow]' (or mlflow-skinny)") from None
        with quiet_loggers(MLFLOW_LOGGERS, verbose):
            try:  # a store MLflow refuses fails here, before any trial runs, not after the first one
                self._client = mlflow.MlflowClient(tracking_uri=tracking_uri)
                self._client.search_experiments(max_results=1)
            except Exception as exc:
                raise ConfigError(f"--mlflow {tracking_uri}: MLflow cannot use this tracking store: {exc}") from None

    def _experiment_id(self, name: str) -> str:
        if name not in self._experiment_ids:
            found = self._client.get_experiment_by_name(name)
            self._experiment_ids[name] = found.experiment_id if found is not None else self._client.create_experiment(name)
        return self._experiment_ids[name]

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        with quiet_loggers(MLFLOW_LOGGERS, self.verbose):
            self._log(study, trial)

    def _log(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # deferred: mlflow is optional (the mlflow extra) and slow to import
        from mlflow.entities import Metric, Param

        experiment_id = self._experiment_id(self.experiment or study.study_name)
        tags = {"optuna.study": study.study_name, "optuna.trial": str(trial.number), "optuna.state": trial.state.name}
        run = self._client.create_run(experiment_id, run_name=f"trial-{trial.number}", tags=tags)
        now_ms = int(time.time() * 1000)
        self._client.log_batch(
            run.info.run_id,
            metrics=[Metric(name, value, now_ms, 0) for name, value in trial_metrics(study, trial).items()],
            params=[Param(key, str(value)) for key, value in trial.params.items()],
        )
        status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(trial.state.name, "FAILED")
        self._client.set_terminated(run.info.run_id, status=status)


def tracking_callbacks(
    mlflow: str | None = None, tensorboard: str | Path | None = None, verbose: bool = False
) -> Sequence[TrialCallback]:
    """The callbacks ``--mlflow URI`` and ``--tensorboard DIR`` ask for (none for None); ``verbose``: MLflow's INFO lines too."""
    callbacks: list[TrialCallback] = []
    if mlflow:
        callbacks.append(MLflowCallback(mlflow, verbose=verbose))
    if tensorboard:
        callbacks.append(TensorBoardCallback(tensorboard))
    return callbacks
