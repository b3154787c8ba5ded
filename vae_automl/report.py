"""Human-readable views of a front: the table printed by ``search`` and ``front``, and the HTML report."""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vae_automl import pareto
from vae_automl.errors import VaeAutomlError
from vae_automl.progress import format_number
from vae_automl.record import TrialRecord
from vae_automl.study import SPACE_ATTR, FrontEntry, completed_trials, front_of_study, objectives_of, open_study, stored_space

if TYPE_CHECKING:
    import optuna
    import torch

    from vae_automl.config import Target
    from vae_automl.vae import VAE


def short_params(params: dict[str, Any], limit: int = 70) -> str:
    parts = []
    for key, value in params.items():
        short_key = key.split(".")[-1] if not key.startswith("compressor") or key.count(".") == 0 else key.split(".", 1)[1]
        parts.append(f"{short_key}={format_number(value) if isinstance(value, float) else value}")
    text = " ".join(parts)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def format_front_table(front: list[FrontEntry], knee: int | None = None, baseline: dict[str, float] | None = None) -> str:
    """A markdown table: trial, short params, one column per objective; the knee trial is starred.

    ``baseline``: the objectives of a ``base_model:`` study's user model as given, shown as a first row.
    """
    if not front:
        return "(no completed trials)"
    names = list(front[0].objectives)
    header = ["trial", *names, "params"]
    rows = []
    if baseline:
        rows.append(["baseline", *(format_number(baseline[n]) if n in baseline else "" for n in names), "base_model as given"])
    for entry in front:
        mark = "*" if knee is not None and entry.trial == knee else ""
        rows.append([f"{entry.trial}{mark}", *(format_number(entry.objectives[n]) for n in names), short_params(entry.params)])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *(line(r) for r in rows)])


def _change(name: str, value: float, base: float, unit: str) -> str:
    if unit == "bytes" and value > 0:
        return f"{name} {base / value:.1f}x smaller"
    return f"{name} {100.0 * (value - base) / abs(base):+.1f}%" if base else f"{name} {value:.4g}"


def format_against_baseline(front: list[FrontEntry], targets: Sequence[Target] = (), completed: Sequence[FrontEntry] = ()) -> str:
    """Each front point against its own uncompressed base model (x smaller, % change), with its targets.

    ``completed``: every completed trial; where none meets every target, the three nearest
    to meeting them are listed with how far each missed.
    """
    from vae_automl import constraints  # deferred: it imports the config stack, which `front` does not need
    from vae_automl.registry import get_registry  # deferred: the registry loads every plugin

    objectives = get_registry().objectives

    def checks_of(entry: FrontEntry) -> list[constraints.Check]:
        assert entry.record is not None
        return constraints.check(targets, entry.record.metrics, entry.record.baseline)

    def describe(entry: FrontEntry) -> str:
        baseline = entry.record.baseline if entry.record is not None else {}
        parts = [
            _change(n, v, baseline[n], objectives.get(n).unit) if n in baseline else f"{n} {v:.4g}"
            for n, v in entry.objectives.items()
        ]
        text = f"trial {entry.trial}: " + ", ".join(parts)
        if targets and entry.record is not None and entry.record.baseline:
            checks = checks_of(entry)
            text += " | " + (
                "meets every target" if constraints.feasible(checks) else "; ".join(c.describe() for c in checks if not c.met)
            )
        return text

    lines = ["Front against each trial's own uncompressed base model:", *(f"  {describe(e)}" for e in front)]
    if targets:

        def worst(entry: FrontEntry) -> float:
            return max(c.violation for c in checks_of(entry))

        scored = [e for e in completed if e.record is not None and e.record.baseline]
        feasible = [e for e in scored if worst(e) <= 0]
        if feasible:
            lines.append(
                f"{len(feasible)} of {len(scored)} completed trials meet every target "
                f"(first: trial {min(e.trial for e in feasible)})"
            )
        else:
            lines.append(f"no completed trial meets every target; the nearest ({len(scored)} completed):")
            lines.extend(f"  {describe(e)}" for e in sorted(scored, key=worst)[:3])
    return "\n".join(lines)


# --- The HTML report: Pareto plot, front table, each front model's reconstructions and samples. ---

SUBPLOT_WIDTH_IN = 5.0
SUBPLOT_HEIGHT_IN = 4.5
PLOT_DPI = 100
"""``pareto.png`` is ``SUBPLOT_HEIGHT_IN * PLOT_DPI`` pixels high and that much per projection wide."""
GRID_IMAGES = 8
"""Test images (and prior samples per row) shown for each front model."""
MIN_TILE_PX = 56


@dataclass
class StudyPoints:
    """Every completed trial of a study as points, with the front and the baseline marked."""

    names: list[str]
    directions: list[str]
    trials: list[int]
    values: np.ndarray
    front: list[int]
    """Indices into ``trials`` of the non-dominated trials."""
    baseline: int | None
    """Index of the uncompressed baseline (see :func:`baseline_index`), or None."""


def baseline_index(
    records: Sequence[TrialRecord | dict[str, Any] | None], values: np.ndarray, directions: list[str]
) -> int | None:
    """The uncompressed baseline: the completed trial with an empty compression pipeline and the best first objective.

    None when every trial compressed its model. A record may be given as its stored dict.
    """
    candidates = [i for i, r in enumerate(records) if not _pipeline(r)]
    if not candidates:
        return None
    sign = 1.0 if directions[0] == "minimize" else -1.0
    return min(candidates, key=lambda i: sign * values[i, 0])


def study_points(study: optuna.Study) -> StudyPoints:
    names, directions = objectives_of(study)
    trials = completed_trials(study)
    values = np.array([t.values for t in trials], dtype=float).reshape(len(trials), len(names))
    front = pareto.non_dominated(values.tolist(), directions) if trials else []
    records = [TrialRecord.from_trial(t) for t in trials]
    baseline = baseline_index(records, values, directions) if trials else None
    return StudyPoints(names, directions, [t.number for t in trials], values, list(front), baseline)


def _pipeline(record: TrialRecord | dict[str, Any] | None) -> list[dict[str, Any]]:
    if isinstance(record, TrialRecord):
        return record.pipeline
    return list((record or {}).get("config", {}).get("pipeline") or [])


def plot_pareto(points: StudyPoints, path: str | Path) -> Path:
    """Write the Pareto plot: all trials grey, the front highlighted, the baseline starred.

    Two objectives give one scatter; k > 2 give the k(k-1)/2 pairwise
    projections side by side (a point on the front may look dominated in a
    projection: it is better in an objective not shown). The image is
    ``PLOT_DPI * SUBPLOT_HEIGHT_IN`` pixels high and ``PLOT_DPI *
    SUBPLOT_WIDTH_IN`` per projection wide.
    """
    # A Figure of its own, not pyplot: the caller's backend (a notebook's inline one) stays as it was.
    # deferred: matplotlib is optional (the export extra) and slow to import
    from matplotlib.figure import Figure

    k = len(points.names)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)] or [(-1, 0)]
    fig = Figure(figsize=(SUBPLOT_WIDTH_IN * len(pairs), SUBPLOT_HEIGHT_IN), dpi=PLOT_DPI)
    axes = fig.subplots(1, len(pairs), squeeze=False)
    trial_numbers = np.array(points.trials, dtype=float)
    for ax, (i, j) in zip(axes[0], pairs):
        # One objective: plot it against the trial number.
        xs = trial_numbers if i < 0 else points.values[:, i]
        ys = points.values[:, j]
        ax.scatter(xs, ys, s=18, c="#b0b0b0", label="completed trials")
        if points.front:
            order = sorted(points.front, key=lambda t: xs[t])
            # A line joins the front only where it is the whole picture (two objectives); in projections it zigzags.
            ax.plot(xs[order], ys[order], "-o" if k == 2 else "o", c="#d62728", ms=6, lw=1.2, label="Pareto front")
        if points.baseline is not None:
            b = points.baseline
            ax.scatter(
                [xs[b]],
                [ys[b]],
                marker="*",
                s=220,
                c="#1f77b4",
                edgecolors="black",
                zorder=5,
                label=f"uncompressed baseline (trial {points.trials[b]})",
            )
        ax.set_xlabel("trial" if i < 0 else points.names[i])
        ax.set_ylabel(points.names[j])
        for axis, data in (("x", xs), ("y", ys)):
            if i >= 0 or axis == "y":
                positive = data[data > 0]
                if len(positive) == len(data) and len(data) and positive.max() / positive.min() > 30:
                    getattr(ax, f"set_{axis}scale")("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=PLOT_DPI)
    return path


def _tile(images: torch.Tensor) -> np.ndarray:
    """N x C x H x W in [0, 1] -> one row image, upscaled so small digits stay visible."""
    arr = images.detach().cpu().clamp(0, 1).numpy()
    scale = max(1, -(-MIN_TILE_PX // arr.shape[-1]))
    arr = arr.repeat(scale, axis=-1).repeat(scale, axis=-2)
    pad = np.ones((arr.shape[0], arr.shape[1], arr.shape[2], 2), dtype=arr.dtype)
    row = np.concatenate([np.concatenate([a, p], axis=-1) for a, p in zip(arr, pad)], axis=-1)
    return row.transpose(1, 2, 0)


def image_grid(model: VAE, x: torch.Tensor, seed: int = 0) -> np.ndarray:
    """Rows: test images, their reconstructions, then two rows of samples from the prior. H x W x C in [0, 1]."""
    # deferred: `vae-automl front` imports this module and must not import torch
    import torch

    model = model.eval()
    generator = torch.Generator().manual_seed(seed)
    rows = [_tile(x), _tile(model.reconstruct(x)), _tile(model.sample(len(x), generator)), _tile(model.sample(len(x), generator))]
    gap = np.ones((4, rows[0].shape[1], rows[0].shape[2]), dtype=rows[0].dtype)
    grid = np.concatenate([part for r in rows for part in (r, gap)][:-1], axis=0)
    return grid[..., 0] if grid.shape[-1] == 1 else grid


def recorded_metrics(front: Sequence[FrontEntry], objectives: Sequence[str]) -> list[str]:
    """Every figure the front's trials recorded besides the objectives (``latency_ms``, ``recon_error``, ...),
    in the order first met, for the report's table."""
    seen: dict[str, None] = {}
    for entry in front:
        for name in entry.record.metrics if entry.record else {}:
            if name not in objectives:
                seen.setdefault(name)
    return list(seen)


def write_report(
    storage: str,
    study: str,
    out_dir: str | Path,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    plugins: tuple[str, ...] = (),
) -> list[Path]:
    """Write ``pareto.png``, one ``trial-N.png`` grid per front model, and ``index.html`` into ``out_dir``.

    Args:
        storage: the Optuna storage URL.
        study: the study name.
        out_dir: the report folder (created).
        dataset, data_dir: the search's ``--dataset`` / ``--data-dir`` if it used them.
        plugins: extra plugin modules (as given to the search).

    Returns:
        The files written, ``index.html`` last.
    """
    # deferred: `vae-automl front` imports this module and must not import torch
    import torch

    # imsave draws on a Figure of its own, so the caller's backend is left alone.
    # deferred: matplotlib is optional (the export extra) and slow to import
    from matplotlib import image as mpimg

    # deferred: `vae-automl front` imports this module and must not import torch
    from vae_automl.export import load_artifact, open_study_context
    from vae_automl.vae import VAE

    ctx = open_study_context(storage, study, dataset, data_dir, plugins)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    points = study_points(ctx.study)
    written = [plot_pareto(points, out / "pareto.png")]
    front = front_of_study(ctx.study)
    names = points.names
    k = pareto.knee_point([[e.objectives[n] for n in names] for e in front], points.directions) if front else None
    knee = front[k].trial if k is not None else None
    baseline = points.trials[points.baseline] if points.baseline is not None else None
    esc = html.escape
    sections = []
    x = ctx.data.test[:GRID_IMAGES]
    for entry in front:
        note = ""
        try:
            model, _ = load_artifact(entry.record, ctx.registry)
            grid_path = out / f"trial-{entry.trial}.png"
            if isinstance(model, VAE):
                mpimg.imsave(grid_path, image_grid(model, x), cmap="gray", vmin=0.0, vmax=1.0)
                caption = "rows: test images; their reconstructions; two rows of samples from the prior"
            else:  # a classifier: the test images and what it calls them
                grid = _tile(x)
                mpimg.imsave(grid_path, grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0.0, vmax=1.0)
                with torch.no_grad():
                    predicted = " ".join(str(int(c)) for c in model.eval()(x).argmax(1))
                truth = (
                    " ".join(str(int(c)) for c in ctx.data.test_labels[:GRID_IMAGES]) if ctx.data.test_labels is not None else "?"
                )
                caption = f"test images; predicted classes: {predicted}; labels: {truth}"
            written.append(grid_path)
            picture = f'<img src="{grid_path.name}" alt="trial {entry.trial}"><p class=note>{esc(caption)}</p>'
        except VaeAutomlError as exc:
            picture, note = "", f"<p class=error>no images: {esc(str(exc))}</p>"
        params = "".join(f"<tr><td>{esc(str(key))}</td><td>{esc(str(value))}</td></tr>" for key, value in entry.params.items())
        pipeline = entry.record.pipeline if entry.record else []
        steps = (
            ", ".join(f"{p['compressor']}({', '.join(f'{a}={b}' for a, b in p['params'].items())})" for p in pipeline)
            or "none (uncompressed)"
        )
        sections.append(
            f"<section id=trial-{entry.trial}><h3>Trial {entry.trial}"
            f"{' (knee)' if entry.trial == knee else ''}</h3>"
            f"<p>compression pipeline: {esc(steps)}; latency runtime: "
            f"{esc(entry.record.latency.runtime if entry.record else '?')}</p>"
            f"<table><tr><th>param</th><th>value</th></tr>{params}</table>{picture}{note}</section>"
        )
    recorded = recorded_metrics(front, names)
    header = "".join(f"<th>{esc(n)} ({d[:3]})</th>" for n, d in zip(names, points.directions))
    header += "".join(f"<th>{esc(n)}</th>" for n in recorded)

    def metric_cell(entry: FrontEntry, name: str) -> str:
        value = entry.record.metrics.get(name) if entry.record else None
        return f"<td>{format_number(value)}</td>" if isinstance(value, int | float) else "<td></td>"

    rows = "".join(
        f"<tr><td><a href=#trial-{e.trial}>{e.trial}</a>{'*' if e.trial == knee else ''}</td>"
        + "".join(f"<td>{format_number(e.objectives[n])}</td>" for n in names)
        + "".join(metric_cell(e, n) for n in recorded)
        + f"<td>{esc(short_params(e.params, 120))}</td></tr>"
        for e in front
    )
    baseline_text = (
        f"trial {baseline} (the completed trial with no compression step and the best {names[0]})"
        if baseline is not None
        else "none: every completed trial compressed its model"
    )
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>vae-automl report: {esc(study)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}table{{border-collapse:collapse;margin:.5em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}img{{max-width:100%;image-rendering:pixelated}}
.note{{color:#555;font-size:90%}}.error{{color:#b00}}</style></head><body>
<h1>Study {esc(study)}</h1>
<p>{len(points.trials)} completed trials, {len(front)} on the Pareto front (* = knee point).
Uncompressed baseline: {esc(baseline_text)}.</p>
<h2>Pareto front</h2>
<img src="pareto.png" alt="Pareto plot">
<table><tr><th>trial</th>{header}<th>searched params</th></tr>{rows}</table>
<h2>Front models</h2>
{"".join(sections)}
</body></html>
"""
    index = out / "index.html"
    index.write_text(page)
    written.append(index)
    return written


def against_baseline(storage: str, study_name: str, front: list[FrontEntry]) -> str:
    """:func:`format_against_baseline` for a stored study, with the targets of its stored search space."""
    from vae_automl.registry import get_registry  # deferred: the registry loads every plugin

    study = open_study(storage, study_name)
    targets = stored_space(study, get_registry()).targets if study.user_attrs.get(SPACE_ATTR) else ()
    names, _ = objectives_of(study)
    completed = [
        FrontEntry(t.number, dict(t.params), dict(zip(names, t.values)), TrialRecord.from_trial(t))
        for t in completed_trials(study)
    ]
    return format_against_baseline(front, targets, completed)
