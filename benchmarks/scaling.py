"""Completed trials per minute with 1 and 2 workers, side by side in one run.

Runs the same search space for the same wall time with:

* Optuna workers (``vae-automl worker``) sharing one journal-file study: 1, then 2 processes;
* Ray Tune on a local Ray (``--backend ray``), concurrency 1, then 2 (``--skip-ray`` to leave out).

Each configuration gets a fresh study created with ``--trials 0``, then runs
until ``--seconds`` pass (no trial starts after that; running ones finish).
Throughput is completed trials per minute between the first trial's start and
the last trial's end (so process start-up, Ray's included, is left out; the
wall column has it). Every worker and Ray trial runs one thread
(``OMP_NUM_THREADS=1``; Ray sets it from ``--cpus-per-trial 1``): torch's
default of one thread per core in every process oversubscribes the cores as
soon as two run, and OpenMP's spinning then hides any scaling. Early stopping
is turned off (``pruner: none``) so both backends run every trial to the end.
The load average before and after is printed, since other processes on a
shared machine skew the figures.

    .venv/bin/python benchmarks/scaling.py [--space search_spaces/quick.yaml] [--seconds 120] [--skip-ray]

``--synthetic`` measures the orchestration instead (see ``scaling_synthetic.py``):
synthetic trials that sleep a drawn time, 1 to 64 at once, through Optuna workers on
PostgreSQL and through Ray, and ``front`` on a study of 10,000 trials:

    .venv/bin/python benchmarks/scaling.py --synthetic [--json FILE] [--sleep 10 20] [--skip-ray]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).parent / "vae-automl")
MANY_TRIALS = "100000"


@dataclass
class Measurement:
    backend: str
    workers: int
    completed: int
    not_completed: int
    trials_per_min: float
    wall_s: float


def steady_rate(storage: str, study_name: str) -> tuple[int, float, int]:
    """Completed trials, their rate per minute, and the trials that did not complete."""
    from vae_automl.study import open_study

    trials = open_study(storage, study_name).get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        return 0, 0.0, len(trials)
    start = min(t.datetime_start for t in done)
    end = max(t.datetime_complete for t in done)
    minutes = max((end - start).total_seconds(), 1e-9) / 60
    return len(done), len(done) / minutes, len(trials) - len(done)


def create_study(space: Path, storage: str, out: Path) -> None:
    subprocess.run([CLI, "search", str(space), "--trials", "0", "--storage", storage, "--study", "bench",
                    "--out", str(out)], check=True, capture_output=True)


def run_optuna_workers(space: Path, workers: int, seconds: float, root: Path) -> Measurement:
    out = root / f"optuna-{workers}"
    storage = f"journal:{out / 'study.log'}"
    create_study(space, storage, out)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    started = time.monotonic()
    procs = [subprocess.Popen([CLI, "worker", "--storage", storage, "--study", "bench", "--trials", MANY_TRIALS,
                               "--timeout", str(seconds)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for _ in range(workers)]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"worker failed: {err.decode()[-2000:]}")
    completed, rate, other = steady_rate(storage, "bench")
    return Measurement("optuna workers (journal)", workers, completed, other, rate, time.monotonic() - started)


def run_ray(space: Path, concurrency: int, seconds: float, root: Path) -> Measurement:
    out = root / f"ray-{concurrency}"
    storage = f"sqlite:///{out / 'study.db'}"
    create_study(space, storage, out)
    started = time.monotonic()
    proc = subprocess.run([CLI, "search", str(space), "--backend", "ray", "--concurrency", str(concurrency),
                           "--cpus-per-trial", "1", "--scheduler", "none", "--trials", MANY_TRIALS,
                           "--timeout", str(seconds), "--storage", storage, "--study", "bench", "--out", str(out)],
                          capture_output=True)
    if proc.returncode != 0:
        raise SystemExit(f"ray search failed: {proc.stderr.decode()[-2000:]}")
    completed, rate, other = steady_rate(storage, "bench")
    return Measurement("ray tune (local)", concurrency, completed, other, rate, time.monotonic() - started)


def table(rows: list[Measurement]) -> str:
    lines = ["| backend | workers | completed | failed or unfinished | trials/min | vs 1 worker | wall s |",
             "|---------|---------|-----------|----------------------|------------|-------------|--------|"]
    base = {r.backend: r.trials_per_min for r in rows if r.workers == 1}
    for r in rows:
        ratio = r.trials_per_min / base[r.backend] if base.get(r.backend) else float("nan")
        lines.append(f"| {r.backend} | {r.workers} | {r.completed} | {r.not_completed} | {r.trials_per_min:.2f} "
                     f"| {ratio:.2f}x | {r.wall_s:.0f} |")
    return "\n".join(lines)


def main() -> None:
    if "--synthetic" in sys.argv[1:]:
        # deferred: the synthetic mode has its own options and starts its own servers
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import scaling_synthetic

        scaling_synthetic.main([a for a in sys.argv[1:] if a != "--synthetic"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--space", type=Path, default=REPO / "search_spaces" / "quick.yaml")
    parser.add_argument("--seconds", type=float, default=120.0, help="wall time per configuration")
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="vae-scaling-") as tmp:
        root = Path(tmp)
        space = root / args.space.name
        data = yaml.safe_load(args.space.read_text())
        data["pruner"] = {"name": "none"}
        space.write_text(yaml.safe_dump(data))
        for workers in (1, 2):
            rows.append(run_optuna_workers(space, workers, args.seconds, root))
            print(f"optuna workers={workers}: {rows[-1]}", file=sys.stderr, flush=True)
        if not args.skip_ray:
            for concurrency in (1, 2):
                rows.append(run_ray(space, concurrency, args.seconds, root))
                print(f"ray concurrency={concurrency}: {rows[-1]}", file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    print(f"space {args.space.name}, {args.seconds:g} s per configuration, {os.cpu_count()} cores; "
          f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}")
    print(table(rows))


if __name__ == "__main__":
    main()
