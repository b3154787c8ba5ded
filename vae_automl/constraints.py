"""Targets (``targets:`` in the YAML): feasibility of a trial, Optuna's ``constraints_func``, and how far a miss is.

A target bounds one measured figure of the final model: ``max`` / ``min``
(absolute), or ``max_relative_to_baseline`` (the same figure measured on
the trial's own uncompressed base model, times ``1 + value``). Each target
gives one constraint value, the signed relative distance to its limit,
``(value - limit) / |limit|`` (mirrored for ``min``): at most 0 is
feasible, and a positive value says by what fraction the trial missed.
The objective (Optuna backend) or the driver (Ray) stores them on the trial
with ``trial.set_constraint`` before it finishes; every Optuna sampler
(TPE, GP, NSGA-II) then steers by them. Trials stopped early have none and
count as neither feasible nor infeasible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import optuna

from vae_automl.config import Target


@dataclass(frozen=True)
class Check:
    target: Target
    value: float
    limit: float

    @property
    def violation(self) -> float:
        """Signed relative distance to the limit; <= 0 means met."""
        gap = self.value - self.limit if self.target.kind != "min" else self.limit - self.value
        return gap / abs(self.limit) if self.limit else gap

    @property
    def met(self) -> bool:
        return self.violation <= 0

    def describe(self) -> str:
        bound = {"max": "<=", "min": ">=", "max_relative_to_baseline": "<="}[self.target.kind]
        state = "met" if self.met else f"missed by {100 * self.violation:.1f}%"
        return f"{self.target.name} {self.value:.4g} {bound} {self.limit:.4g}: {state}"


def check(targets: Sequence[Target], measured: Mapping[str, float], baseline: Mapping[str, float]) -> list[Check]:
    """Every target against a trial's measured figures (``baseline``: the same figures of its uncompressed base)."""
    checks = []
    for target in targets:
        if target.kind == "max_relative_to_baseline":
            limit = baseline[target.name] * (1.0 + target.value)
        else:
            limit = target.value
        checks.append(Check(target, float(measured[target.name]), float(limit)))
    return checks


def feasible(checks: Sequence[Check]) -> bool:
    return all(c.met for c in checks)


def baseline_names(targets: Sequence[Target]) -> list[str]:
    """Figures that must be measured on the uncompressed base too."""
    return sorted({t.name for t in targets if t.kind == "max_relative_to_baseline"})


def constraint_key(target: Target) -> str:
    return f"{target.name}.{target.kind}"


def set_constraints(trial: optuna.Trial, checks: Sequence[Check]) -> None:
    """Store each target's constraint value on the running trial, where every Optuna sampler reads it.

    (Optuna 5 samplers take constraints from ``trial.set_constraint``; a ``constraints_func`` is deprecated.)
    """
    for c in checks:
        trial.set_constraint(constraint_key(c.target), c.violation)


def is_feasible_trial(trial: optuna.trial.FrozenTrial) -> bool | None:
    """Whether a finished trial met every target; None where it holds no constraint values (no targets)."""
    values = trial.constraints
    return None if not values else all(v <= 0 for v in values.values())
