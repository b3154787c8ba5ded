"""What ``vae-automl plugins`` lists: every registered component, its kind, plugin, version, parameters."""

from __future__ import annotations

from typing import Any

from vae_automl.registry import HOOK_FOR_KIND, Registry, get_registry


def list_components(registry: Registry | None = None) -> list[dict[str, Any]]:
    registry = registry or get_registry()
    rows = []
    for kind in HOOK_FOR_KIND:
        for entry in registry.table(kind).entries():
            c = entry.component
            row: dict[str, Any] = {
                "kind": kind,
                "name": c.name,
                "plugin": entry.plugin,
                "version": entry.version,
                "help": c.help,
                "params": [
                    {"name": p.name, "type": p.type, "default": p.default, "minimum": p.minimum,
                     "maximum": p.maximum, "choices": list(p.choices) if p.choices is not None else None}
                    for p in c.params
                ],
            }
            if kind == "compressor":
                row["stage"] = c.stage
            if kind == "objective":
                row["direction"] = c.direction
                row["unit"] = c.unit
            rows.append(row)
    return rows
