"""Two (or more) studies side by side: their Pareto fronts and their hypervolumes against one reference point.

``vae-automl compare A B`` calls :func:`compare_studies`. The reference point is shared, so the
hypervolumes compare: by default it is the nadir of every front point pooled, pushed out by 10% of each
objective's range (:func:`vae_automl.pareto.default_reference`). Each study's share of the pooled
front's hypervolume says how much of the best known front it reaches on its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from vae_automl import pareto
from vae_automl.errors import ConfigError
from vae_automl.progress import format_number
from vae_automl.study import FrontEntry, completed_trials, front_of_study, objectives_of, open_study, storage_file


@dataclass
class StudyFront:
    storage: str
    study_name: str
    completed: int
    front: list[FrontEntry]
    hypervolume: float
    share_of_pooled: float
    """This front's hypervolume over the pooled front's (1.0: it alone reaches the best known front)."""


@dataclass
class Comparison:
    objectives: list[str]
    directions: list[str]
    reference: list[float]
    pooled_hypervolume: float
    studies: list[StudyFront]

    def as_dict(self) -> dict[str, Any]:
        return {
            "objectives": self.objectives,
            "directions": self.directions,
            "reference_point": self.reference,
            "pooled_hypervolume": self.pooled_hypervolume,
            "studies": [
                {
                    "storage": s.storage,
                    "study": s.study_name,
                    "completed": s.completed,
                    "hypervolume": s.hypervolume,
                    "share_of_pooled": s.share_of_pooled,
                    "front": [e.as_dict() for e in s.front],
                }
                for s in self.studies
            ],
        }


def compare_studies(studies: Sequence[tuple[str, str]], reference: Sequence[float] | None = None) -> Comparison:
    """The fronts of ``studies`` (``(storage URL, study name)`` pairs) and their hypervolumes at one reference point.

    Args:
        studies: two or more studies; they must have the same objectives in the same directions.
        reference: the reference point, one value per objective (default: the pooled nadir plus 10% of each range).

    Raises:
        ConfigError: fewer than two studies, objectives that differ, or a reference of the wrong length.
    """
    if len(studies) < 2:
        raise ConfigError(f"compare needs at least two studies, but got {len(studies)}")
    opened = [(storage, name, open_study(storage, name)) for storage, name in studies]
    names, directions = objectives_of(opened[0][2])
    for storage, name, study in opened[1:]:
        other = objectives_of(study)
        if other != (names, directions):
            raise ConfigError(
                f"study {name!r} ({storage}) has objectives {list(zip(*other))}, but {opened[0][1]!r} has "
                f"{list(zip(names, directions))}: hypervolumes of different objectives do not compare"
            )
    fronts = [front_of_study(study) for _, _, study in opened]
    points = [[[e.objectives[n] for n in names] for e in front] for front in fronts]
    pooled = [p for front_points in points for p in front_points]
    if reference is None:
        reference = pareto.default_reference(pooled, directions) if pooled else [0.0] * len(names)
    elif len(reference) != len(names):
        raise ConfigError(f"the reference point needs {len(names)} values ({', '.join(names)}), but got {len(reference)}")
    reference = [float(r) for r in reference]
    pooled_hv = pareto.hypervolume(pooled, reference, directions)
    rows = []
    for (storage, name, study), front, front_points in zip(opened, fronts, points):
        hv = pareto.hypervolume(front_points, reference, directions)
        share = hv / pooled_hv if pooled_hv > 0 else 0.0
        rows.append(StudyFront(storage, name, len(completed_trials(study)), front, hv, share))
    return Comparison(names, directions, reference, pooled_hv, rows)


def study_labels(studies: Sequence[StudyFront]) -> list[str]:
    """Each study's name, with its storage where two compared studies share a name (two runs of one YAML)."""
    counts = Counter(s.study_name for s in studies)
    return [
        s.study_name if counts[s.study_name] == 1 else f"{s.study_name} @ {storage_file(s.storage) or s.storage}" for s in studies
    ]


def format_comparison(comparison: Comparison) -> str:
    """One markdown table: every front point with its study, and each study's hypervolume on its first row."""
    names = comparison.objectives
    header = ["study", "trial", *names, "hypervolume", "share"]
    rows: list[list[str]] = []
    labels = study_labels(comparison.studies)
    for s, label in zip(comparison.studies, labels):
        summary = [format_number(s.hypervolume), f"{100 * s.share_of_pooled:.1f}%"]
        if not s.front:
            rows.append([label, "(none)", *([""] * len(names)), *summary])
        for k, entry in enumerate(s.front):
            rows.append(
                [
                    label,
                    str(entry.trial),
                    *(format_number(entry.objectives[n]) for n in names),
                    *(summary if k == 0 else ["", ""]),
                ]
            )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    reference = ", ".join(f"{n}={format_number(r)}" for n, r in zip(names, comparison.reference))
    return "\n".join(
        [
            line(header),
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
            *(line(r) for r in rows),
            f"hypervolume at the shared reference point ({reference}); share: of the pooled front's "
            f"({format_number(comparison.pooled_hypervolume)})",
        ]
    )
