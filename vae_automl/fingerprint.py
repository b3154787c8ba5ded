"""What defines a study's trials, recorded with the study, so a run that would mix other trials into it is refused.

A trial's figures depend on the searched space (architectures, training,
compressor slots, each parameter's range or value), the task, the dataset
and its split, the seed, how latency is timed, and the base model. Two runs
of one study must agree on all of it, or `front` would compare trials
that answer different questions. A run that only widens or narrows ranges
(a numeric ``low``/``high``, a categorical's ``choices``) still asks the
same question of a different region: it may continue, and the change is
noted in the study (:data:`CHANGES_ATTR`).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vae_automl.errors import ConfigError

if TYPE_CHECKING:
    from vae_automl.config import ParamSpace, SearchSpace

FINGERPRINT_ATTR = "vae_automl_fingerprint"
"""Study user attribute: :func:`fingerprint` of the space the study was searched with."""
CHANGES_ATTR = "vae_automl_space_changes"
"""Study user attribute: ``[{at, changes: [...]}]``, every range change a later run brought."""
RANGE_KEYS = ("low", "high", "choices")
"""The keys of a parameter whose change only widens or narrows where a search looks."""


def _param(space: ParamSpace) -> dict[str, Any]:
    if space.kind == "const":
        return {"kind": "const", "value": space.value}
    if space.kind == "categorical":
        return {"kind": "categorical", "choices": list(space.choices)}
    return {"kind": space.kind, "low": space.low, "high": space.high, "log": space.log, "step": space.step}


def _params(params: dict[str, ParamSpace]) -> dict[str, Any]:
    return {name: _param(p) for name, p in params.items()}


def fingerprint(space: SearchSpace) -> dict[str, Any]:
    """The JSON-able description of what defines the trials of ``space`` (see the module docstring)."""
    base = space.base_model
    raw = {
        "task": space.task,
        "architectures": {a.name: {"preset": a.preset, "params": _params(a.params)} for a in space.architectures},
        "training": {
            name: p
            for name, p in _params(space.training).items()
            # a study recorded before the schedules existed trained at a constant rate: it may continue
            if not (name in ("lr_schedule", "finetune_lr_schedule") and p == {"kind": "const", "value": "constant"})
        },
        "compressors": [
            {"optional": slot.optional, "options": {o.name: _params(o.params) for o in slot.options}}
            for slot in space.compressors
        ],
        "dataset": {"spec": space.dataset.spec, "split": dataclasses.asdict(space.dataset.split)},
        "seed": space.seed,
        "latency": dataclasses.asdict(space.latency),
        "base_model": None if base is None else {"factory": base.factory, "checkpoint_sha256": base.checkpoint_sha256()},
    }
    # the form a study's user attribute gives back (tuples become lists)
    result: dict[str, Any] = json.loads(json.dumps(raw, default=str))
    return result


@dataclass(frozen=True)
class Change:
    """One difference between two fingerprints: where, the stored value, this run's value."""

    path: str
    old: Any
    new: Any

    @property
    def range_only(self) -> bool:
        """Whether this change only widens or narrows a searched parameter's range or choices."""
        return self.path.rpartition(".")[2] in RANGE_KEYS and self.old is not None and self.new is not None

    def __str__(self) -> str:
        return f"{self.path}: {json.dumps(self.old)} -> {json.dumps(self.new)}"


def diff(old: Any, new: Any, path: str = "") -> list[Change]:
    """The leaf differences of two fingerprints, with dotted paths (``training.lr.high``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        changes: list[Change] = []
        for key in dict.fromkeys([*old, *new]):
            sub = f"{path}.{key}" if path else str(key)
            if key not in old or key not in new:
                changes.append(Change(sub, old.get(key), new.get(key)))
            else:
                changes += diff(old[key], new[key], sub)
        return changes
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new) and not path.endswith("choices"):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in diff(a, b, f"{path}.{i}")]
    return [] if old == new else [Change(path, old, new)]


def check(stored: dict[str, Any] | None, space: SearchSpace, where: str) -> list[Change]:
    """The range changes ``space`` brings to a study whose fingerprint is ``stored`` (none: a new study).

    Raises:
        ConfigError: any other difference, listed one per line, naming ``where`` (the study).
    """
    if stored is None:
        return []
    changes = diff(stored, fingerprint(space))
    refused = [c for c in changes if not c.range_only]
    if refused:
        lines = "\n".join(f"  {c}" for c in refused)
        raise ConfigError(
            f"{where} was searched with another definition of its trials than {space.path} gives now, so their figures "
            f"would not be comparable:\n{lines}\nuse another --study name or --out (a run that only widens or narrows "
            "ranges or choices may continue the study)"
        )
    return changes


def note(changes: list[Change]) -> dict[str, Any]:
    """The entry :data:`CHANGES_ATTR` gets for a run that changed ranges."""
    return {
        "at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "changes": [{"path": c.path, "old": c.old, "new": c.new} for c in changes],
    }
