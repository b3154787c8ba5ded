"""NSGA-II against random search on one space with the same trial budget: wall time, trials/min, hypervolume.

Both searches run one after the other in this process, on the same space,
data and device; only the sampler differs. The hypervolume of each is
normalized with one common box for both, computed from the union of their
completed trials (ideal: the best value of each objective; reference: the
nadir pushed out by 10% of the range, :func:`vae_automl.pareto.default_reference`),
so the two numbers are comparable.

Usage::

    python benchmarks/search_quality.py [SPACE] [--trials N] [--device cpu|cuda|auto] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import optuna

from vae_automl import pareto
from vae_automl.config import SamplerConfig, load_space
from vae_automl.registry import get_registry
from vae_automl.api import search
from vae_automl.study import objectives_of

DEFAULT_SPACE = Path(__file__).resolve().parents[1] / "search_spaces" / "mnist_mlp.yaml"


def run_one(space: Any, sampler: SamplerConfig, trials: int, device: str | None, data_dir: str | None) -> dict[str, Any]:
    space = dataclasses.replace(space, sampler=sampler, name=f"{space.name}-{sampler.name}")
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = search(space, trials=trials, out_dir=out, device=device, data_dir=data_dir, show_progress=False)
        seconds = time.perf_counter() - started
        study = optuna.load_study(study_name=result.study_name, storage=result.storage)
        names, directions = objectives_of(study)
        points = [t.values for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    return {"sampler": sampler.name, "completed": result.completed, "seconds": seconds,
            "trials_per_min": 60.0 * result.completed / seconds, "points": points, "objectives": names,
            "directions": directions, "base_trained": result.stats.get("base_trained"),
            "base_reused": result.stats.get("base_reused")}


def add_hypervolumes(runs: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """Normalized hypervolume of each run in place, in the box of the union of all runs' points."""
    directions = runs[0]["directions"]
    union = np.array([p for run in runs for p in run["points"]], dtype=float)
    signs = np.array([1.0 if d == "minimize" else -1.0 for d in directions])
    ideal = [float(v) for v in (union * signs).min(axis=0) * signs]
    reference = [float(v) for v in pareto.default_reference(union, directions)]
    for run in runs:
        run["hypervolume"] = (pareto.normalized_hypervolume(run["points"], ideal, reference, directions)
                              if run["points"] else 0.0)
    return ideal, reference


def table(runs: list[dict[str, Any]]) -> str:
    lines = ["| sampler | trials completed | wall s | trials/min | normalized hypervolume |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for run in runs:
        lines.append(f"| {run['sampler']} | {run['completed']} | {run['seconds']:.1f} | {run['trials_per_min']:.1f} | "
                     f"{run['hypervolume']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("space", nargs="?", type=Path, default=DEFAULT_SPACE, help="search-space YAML")
    parser.add_argument("--trials", type=int, help="budget of each search (default: the space's trials)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), help="override the space's device")
    parser.add_argument("--data-dir", help="override the space's dataset.data_dir")
    parser.add_argument("--seed", type=int, default=0, help="seed of both samplers")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    if not args.space.is_file():
        parser.error(f"{args.space}: no such search-space file")
    space = load_space(args.space, get_registry())
    trials = args.trials or space.trials
    nsga2 = SamplerConfig(name="nsga2", seed=args.seed, population_size=space.sampler.population_size
                          if space.sampler.name == "nsga2" else None)
    runs = [run_one(space, nsga2, trials, args.device, args.data_dir),
            run_one(space, SamplerConfig(name="random", seed=args.seed), trials, args.device, args.data_dir)]
    ideal, reference = add_hypervolumes(runs)
    ratio = runs[0]["hypervolume"] / runs[1]["hypervolume"] if runs[1]["hypervolume"] > 0 else float("inf")
    print(f"space: {args.space.name}; budget: {trials} trials each; objectives: "
          f"{', '.join(f'{n} ({d})' for n, d in zip(runs[0]['objectives'], runs[0]['directions']))}")
    print(f"common box from both runs: ideal {[round(v, 4) for v in ideal]}, reference {[round(v, 4) for v in reference]}\n")
    print(table(runs))
    print(f"\nhypervolume NSGA-II / random: {ratio:.3f}")
    report = {"space": str(args.space), "trials": trials, "ideal": ideal, "reference": reference,
              "hypervolume_ratio_nsga2_vs_random": ratio, "runs": runs}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
