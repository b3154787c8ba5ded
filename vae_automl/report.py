"""Human-readable views of a front: the table printed by ``search`` and ``front``."""

from __future__ import annotations

from typing import Any

from vae_automl.progress import format_number
from vae_automl.study import FrontEntry


def short_params(params: dict[str, Any], limit: int = 70) -> str:
    parts = []
    for key, value in params.items():
        short_key = key.split(".")[-1] if not key.startswith("compressor") or key.count(".") == 0 else key.split(".", 1)[1]
        parts.append(f"{short_key}={format_number(value) if isinstance(value, float) else value}")
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_front_table(front: list[FrontEntry], knee: int | None = None) -> str:
    """A markdown table: trial, short params, one column per objective; the knee trial is starred."""
    if not front:
        return "(no completed trials)"
    names = list(front[0].objectives)
    header = ["trial", *names, "params"]
    rows = []
    for entry in front:
        mark = "*" if knee is not None and entry.trial == knee else ""
        rows.append([f"{entry.trial}{mark}", *(format_number(entry.objectives[n]) for n in names), short_params(entry.params)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows)])
