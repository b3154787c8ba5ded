"""What ``vae-automl plugins`` lists: every registered component, its kind, plugin, version, parameters."""

from __future__ import annotations

from typing import Any

from vae_automl.components import Param
from vae_automl.registry import HOOK_FOR_KIND, Registry, get_registry


def param_row(p: Param) -> dict[str, Any]:
    """One parameter as ``vae-automl plugins --json`` gives it (bool parameters list their two values as choices)."""
    choices = list(p.choices) if p.choices is not None else ([False, True] if p.type == "bool" else None)
    return {
        "name": p.name,
        "type": p.type,
        "default": p.default,
        "minimum": p.minimum,
        "maximum": p.maximum,
        "choices": choices,
        "log": p.log,
        "help": p.help,
    }


def _yaml_value(value: Any) -> str:
    """A value as the YAML writes it (true/false, none for an unset default)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


def describe_param(row: dict[str, Any]) -> str:
    """``bits: int in [1, 8], default 8 - bits per weight``: type, bounds or choices, default, help."""
    if row["choices"] is not None:
        bounds = "one of {" + ", ".join(_yaml_value(c) for c in row["choices"]) + "}"
    elif row["minimum"] is not None or row["maximum"] is not None:
        low = _yaml_value(row["minimum"]) if row["minimum"] is not None else "-inf"
        high = _yaml_value(row["maximum"]) if row["maximum"] is not None else "inf"
        bounds = f"in [{low}, {high}]" + (" (log scale)" if row.get("log") else "")
    else:
        bounds = ""
    text = f"{row['name']}: {row['type']}{' ' + bounds if bounds else ''}, default {_yaml_value(row['default'])}"
    return f"{text} - {row['help']}" if row.get("help") else text


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
                "distribution": entry.distribution,
                "help": c.help,
                "params": [param_row(p) for p in c.params],
            }
            if kind == "compressor":
                row["stage"] = c.stage
                row["takes"] = list(c.takes)
                row["gives"] = c.gives
            if kind == "objective":
                row["direction"] = c.direction
                row["unit"] = c.unit
            rows.append(row)
    return rows


def format_components(rows: list[dict[str, Any]]) -> str:
    """The text of ``vae-automl plugins``: one block per component, one line per parameter."""
    lines = []
    for row in rows:
        extra = f" stage={row['stage']} takes={','.join(row['takes'])} gives={row['gives']}" if "stage" in row else ""
        extra += f" {row['direction']}" if "direction" in row else ""
        lines.append(f"{row['kind']:<12} {row['name']:<22} {row['plugin']} {row['version']}{extra}")
        if row["help"]:
            lines.append(f"{'':<14}{row['help']}")
        lines += [f"{'':<16}{describe_param(p)}" for p in row["params"]]
    return "\n".join(lines)
