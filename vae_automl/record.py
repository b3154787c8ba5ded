"""The record of one finished trial: what a trial writes and every reader of the study reads.

A :class:`TrialRecord` is built by :func:`vae_automl.trial.run_trial`,
handed to ``on_trial_complete`` plugins, stored on the Optuna trial with
:meth:`TrialRecord.to_user_attrs` (by either backend) and read back with
:meth:`TrialRecord.from_trial` (study, export, report). On disk it is the
JSON dict of :meth:`TrialRecord.as_dict` under the user attribute
``record``, the same keys as in 0.1, so studies stored before stay readable.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna

RECORD_ATTR = "record"
"""Trial user attribute holding :meth:`TrialRecord.as_dict`."""
METRICS_ATTR = "metrics"
METRIC_ATTR_PREFIX = "metric_"
"""Each measured figure also gets its own trial user attribute, ``metric_latency_ms``: optuna-dashboard lists it
and ``study.trials_dataframe()`` makes it a column (``user_attrs_metric_latency_ms``), which the dict under
:data:`METRICS_ATTR` is not."""
CURVE_ATTR = "validation_curve"
"""Trial user attribute: the base's validation loss per epoch (early stopping compares against it)."""
BASE_PARAMS_ATTR = "base_params"
"""Trial user attribute: the parameter count of the base (early stopping compares no-larger peers)."""


@dataclass
class BaseInfo:
    """How the trial's base model came about: trained here, or reused from the base-model cache."""

    cache_key: str
    params: int
    """Parameters of the base model."""
    epochs_run: int
    stopped_early: bool
    train_seconds: float
    samples_per_s: float
    validation_curve: list[float]
    captured: bool = False
    """Whether the training step ran as a captured CUDA graph."""
    cache_hit: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    """Keys this version does not know (written by a newer one), kept so a round trip loses nothing."""

    def as_dict(self) -> dict[str, Any]:
        return _as_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BaseInfo:
        return _from_dict(cls, data)


@dataclass
class LatencyInfo:
    """Where and how ``latency_ms`` was measured."""

    batch_size: int
    target: str
    """The device the latency was timed on (``cpu``, ``cuda``)."""
    repeats: int
    runtime: str
    """What ran the model (``torch``, or ``onnxruntime-int8`` for 8-bit models on CPU)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return _as_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyInfo:
        return _from_dict(cls, data)


@dataclass
class TrialRecord:
    """One trial that finished measuring.

    Attributes:
        trial: the Optuna trial number (it names the artifact).
        params: the sampled parameters, as Optuna names them.
        config: the resolved trial config (``TrialSpec.as_dict``).
        model_config: the canonical config of the final model.
        objectives: objective name -> value, in the space's order.
        metrics: every measured figure, objectives included.
        data: the dataset and split the trial used (``DataSplits.info``).
        device: the torch device the trial ran on.
        latency: how latency was measured.
        base: how the base model was obtained.
        artifact: absolute path of the trial's ``.safetensors`` file.
        artifact_sha256: its sha256, checked by export.
        seconds: wall time of the trial.
        plugins: ``{plugin: {distribution, version, module}}`` of every component the trial used.
        baseline: the objectives (and the figures targets bound) measured on the trial's uncompressed
            base model: what ``max_relative_to_baseline`` targets and the front's "x smaller" compare with.
        extra: keys of a stored record this version does not know.
    """

    trial: int
    params: dict[str, Any]
    config: dict[str, Any]
    model_config: dict[str, Any]
    objectives: dict[str, float]
    metrics: dict[str, float]
    data: dict[str, Any]
    device: str
    latency: LatencyInfo
    base: BaseInfo
    artifact: str
    artifact_sha256: str
    seconds: float
    plugins: dict[str, dict[str, str]] = field(default_factory=dict)
    baseline: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The JSON-ready dict stored in the study (the record's 0.1 layout)."""
        data = _as_dict(self)
        for key in ("plugins", "baseline"):
            if not data[key]:  # records from before provenance and baselines round-trip unchanged
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialRecord:
        return _from_dict(cls, data)

    @property
    def pipeline(self) -> list[dict[str, Any]]:
        """The compression steps the trial ran (``[]``: the uncompressed base)."""
        return list(self.config.get("pipeline") or [])

    def to_user_attrs(self) -> dict[str, Any]:
        """The trial user attributes that store this record (set them all before the trial is told)."""
        return {
            RECORD_ATTR: self.as_dict(),
            METRICS_ATTR: dict(self.metrics),
            **{METRIC_ATTR_PREFIX + name: value for name, value in self.metrics.items()},
            CURVE_ATTR: list(self.base.validation_curve),
            BASE_PARAMS_ATTR: self.base.params,
        }

    @classmethod
    def from_trial(cls, trial: optuna.trial.FrozenTrial) -> TrialRecord | None:
        """The record stored on ``trial``, or None for a trial that stored none (failed, pruned, running)."""
        data = trial.user_attrs.get(RECORD_ATTR)
        return cls.from_dict(data) if data else None

    def __getitem__(self, key: str) -> Any:
        """``record["metrics"]``: the 0.1 dict access, kept for ``on_trial_complete`` plugins written against it."""
        data = self.as_dict()
        if key not in data:
            raise KeyError(key)
        return data[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``record.get("metrics")``, as on the 0.1 dict."""
        return self.as_dict().get(key, default)


_NESTED: dict[str, Any] = {"latency": LatencyInfo, "base": BaseInfo}


def _as_dict(obj: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name == "extra":
            continue
        out[f.name] = value.as_dict() if hasattr(value, "as_dict") else value
    out.update(obj.extra)
    # through JSON, so the dict equals what a reader gets back from the storage (tuples become lists)
    result: dict[str, Any] = json.loads(json.dumps(out))
    return result


def _from_dict(cls: Any, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    missing = sorted(n for n in names if n not in data and _required(cls, n))
    if missing:
        raise ValueError(f"a stored {cls.__name__} lacks {', '.join(missing)}")
    kwargs = {k: (_NESTED[k].from_dict(v) if k in _NESTED and cls is TrialRecord else v) for k, v in data.items() if k in names}
    return cls(**kwargs, extra={k: v for k, v in data.items() if k not in names})


def _required(cls: Any, name: str) -> bool:
    f = cls.__dataclass_fields__[name]
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
