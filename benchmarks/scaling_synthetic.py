"""``scaling.py --synthetic``: the orchestration's scaling, measured with trials that sleep instead of train.

Every trial is the synthetic trial of ``vae_automl.testing.synthetic`` (a plugin
loaded like any other): it sleeps a drawn time (``--sleep LOW HIGH`` seconds,
uniform) and returns drawn objectives, after the same sampling, base-model
cache hit, measuring, artifact writing and storage traffic as a real trial.
Its model is the plugin's plain-Python ``synthetic`` architecture, so no
process of the run imports torch. So the machine's two cores hold the
orchestration only, and 64 concurrent trials fit because they mostly sleep
and each process is small.

For each concurrency (1, 4, 16, 64):

* **Optuna**: that many ``vae-automl worker`` processes on one study in a
  throwaway PostgreSQL on 127.0.0.1. They are forked from a process that
  imported the CLI once (``multiprocessing``'s forkserver); each then runs
  the CLI's own ``main(["worker", ...])``.
* **Ray**: one driver (``vae-automl search --backend ray --concurrency N``)
  on a Ray head on 127.0.0.1 that offers 64 logical CPUs; the trials run in
  Ray's worker processes, each a fresh interpreter (Ray, Optuna, numpy, no
  torch: about 150-200 MB). A concurrency whose Ray workers would not fit in
  the memory available (by the memory per trial measured at the levels run
  before it) is not run, and the JSON says why.

Each run gets ``--waves`` times N trials (at least ``--min-trials``). The
speed-up over one worker is taken in the steady part of a run, from the N-th
trial's completion (every worker started) to the last trial's start (no worker
idle yet): the sleep-seconds done in that window per second, relative to the
same figure with one worker. Each completed trial's sleep counts by the share of
its run (Optuna's start to its completion) that lies in the window. Counting
only the trials that complete inside it was biased against Ray: its driver
stores a finished trial in a thread while Tune already asks for the next one, so
the last start precedes the completion of the trial it replaced, whose whole
sleep then fell out of a window it filled (at one trial at a time: a quarter of
the work, reported as ~4 s of overhead per trial that no trial had). Using the
drawn seconds rather than the trial count removes the noise of the draws;
efficiency is speed-up / N. "Of ideal" is that figure over N itself (an ideal run completes N
sleep-seconds per second): the same without the one-worker run in the ratio. The storage's cost per trial is the time every
process spent inside Optuna's ``RDBStorage`` methods (timed in each process,
nested calls once), divided by the trials of the run.

Then a study of ``--big`` trials (10,000) is written to the same PostgreSQL
(bulk inserts of the rows Optuna writes for a trial: each a copy of a real
synthetic trial with its own drawn params, values and record), and
``vae-automl front`` is timed on it.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PLUGIN = "vae_automl.testing.synthetic"
CLI = str(Path(sys.executable).parent / "vae-automl")
LEVELS = (1, 4, 16, 64)
HEARTBEAT_INTERVAL_S = "10"  # the default a user gets
HEARTBEAT_GRACE_S = "120"
"""Not the default 30 s: on a shared 2-core machine, at nice 10, 64 workers were starved of CPU long enough for
live trials to be failed as stale (and their workers to crash on telling them)."""
TIMED_METHODS = (
    "create_new_study", "set_study_user_attr", "set_study_system_attr", "get_study_id_from_name",
    "get_study_name_from_id", "get_study_directions", "get_study_user_attrs", "get_study_system_attrs",
    "get_trial_user_attrs", "get_trial_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
    "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr",
    "set_trial_system_attr", "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials",
    "get_best_trial", "record_heartbeat", "_get_stale_trial_ids",
)  # fmt: skip


# --- in every process that talks to the storage: time spent inside RDBStorage ---------------------------

_timing = threading.local()
_totals = {"seconds": 0.0, "calls": 0}
_totals_lock = threading.Lock()


def _timed(method: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if getattr(_timing, "depth", 0):  # a storage method calling another is counted once
            return method(*args, **kwargs)
        _timing.depth = 1
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            _timing.depth = 0
            with _totals_lock:
                _totals["seconds"] += time.perf_counter() - started
                _totals["calls"] += 1

    wrapper.__name__ = method.__name__
    return wrapper


def time_storage() -> None:
    from optuna.storages import RDBStorage

    for name in TIMED_METHODS:
        setattr(RDBStorage, name, _timed(getattr(RDBStorage, name)))


def run_cli(argv: list[str], timing_file: str, env: dict[str, str]) -> None:
    """A forked child: the CLI's own main, with the storage timed; writes its totals to ``timing_file``."""
    os.environ.update(env)
    time_storage()
    from vae_automl.cli import main

    with open(os.devnull, "w") as devnull:
        sys.stdout = devnull  # the front table of every worker is not wanted
        code = main(argv)
    Path(timing_file).write_text(json.dumps({**_totals, "exit": code}))
    sys.exit(code)


# --- memory of the processes under test --------------------------------------------------------------


def pss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def ray_worker_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmdline.startswith(b"ray::"):
                pids.append(int(entry.name))
    return pids


class MemoryWatch:
    """Samples the PSS of a set of processes every second; keeps the peak total and the peak per process."""

    def __init__(self, pids: Any) -> None:
        self.pids, self.peak_total_mb, self.peak_count = pids, 0.0, 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            pids = self.pids()
            total = sum(pss_mb(p) for p in pids)
            if total > self.peak_total_mb:
                self.peak_total_mb, self.peak_count = total, len(pids)

    def close(self) -> tuple[float, float]:
        """(peak total MB, MB per process at that peak)."""
        self.stop.set()
        self.thread.join()
        return self.peak_total_mb, self.peak_total_mb / max(self.peak_count, 1)


def postgres_cpu_s(url: str) -> float:
    """CPU seconds the PostgreSQL server behind ``url`` has used: its postmaster, its live backends, and the
    backends it already reaped (the postmaster's children times)."""
    port = url.rsplit(":", 1)[1].split("/")[0].encode()
    ticks = os.sysconf("SC_CLK_TCK")
    stats: dict[int, list[str]] = {}
    postmaster = None
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        stats[int(entry.name)] = stat
        if args and args[0].endswith(b"postgres") and port in args and b"-p" in args:
            postmaster = int(entry.name)
    if postmaster is None:
        return float("nan")
    # stat fields after the command: state ppid ... utime(11) stime(12) cutime(13) cstime(14)
    total = sum(int(v) for v in stats[postmaster][11:15])
    total += sum(int(st[11]) + int(st[12]) for pid, st in stats.items() if int(st[1]) == postmaster)
    return total / ticks


def available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return 0.0


def ray_memory_need_mb(measured: list[Run], level: int) -> tuple[float, str]:
    """The PSS ``level`` concurrent Ray trials would take, from the peaks of the Ray levels run before, and how.

    Ray's head agents (its dashboard and runtime-env agents, ~100 MB) hold their memory whatever the level, so a
    per-trial figure from a small level overstates a large one: with two levels measured, the line through the
    two largest (what one more trial adds, plus what none costs); with one, its peak per trial times ``level``
    (an upper bound); with none, nothing is known (0).
    """
    runs = sorted(measured, key=lambda r: r.concurrency)[-2:]
    if not runs:
        return 0.0, "nothing measured yet"
    if len(runs) == 1 or runs[0].concurrency == runs[1].concurrency:
        per = runs[-1].memory_mb_per_process
        return per * level, f"{level} x {per:.0f} MB (the PSS of Ray's processes per trial at {runs[-1].concurrency})"
    (a, b) = runs
    per = max((b.peak_memory_mb - a.peak_memory_mb) / (b.concurrency - a.concurrency), 0.0)
    fixed = max(b.peak_memory_mb - per * b.concurrency, 0.0)
    return fixed + per * level, (
        f"{fixed:.0f} MB + {level} x {per:.0f} MB (the PSS of Ray's processes at {a.concurrency} and {b.concurrency} "
        "trials: what one more trial adds, and what none costs)"
    )


# --- one run -------------------------------------------------------------------------------------------


@dataclass
class Run:
    backend: str
    concurrency: int
    trials: int
    completed: int
    failed: int
    wall_s: float
    trials_per_min: float
    """Completed trials per minute from the first trial's start to the last one's end."""
    work_rate: float
    """Sleep-seconds completed per second in the steady window (the concurrency an ideal run would show)."""
    window_s: float
    storage_ms_per_trial: float
    storage_calls_per_trial: float
    server_cpu_ms_per_trial: float
    """CPU the PostgreSQL server spent per trial (all its processes)."""
    overhead_ms_per_trial: float
    """Wall time per trial beyond its sleep, in the steady window (at concurrency 1: the whole cost of orchestration)."""
    peak_memory_mb: float
    memory_mb_per_process: float
    mean_sleep_s: float
    extra: dict[str, Any] = field(default_factory=dict)


def stamp(moment: datetime) -> float:
    return moment.timestamp()


def measure_study(url: str, name: str, concurrency: int) -> dict[str, Any]:
    import optuna

    trials = optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    done = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.datetime_complete)
    sleep = {t.number: float(t.params["compressor0.synthetic_work.seconds"]) for t in done}
    first_start = min(stamp(t.datetime_start) for t in done)
    last_end = max(stamp(t.datetime_complete) for t in done)
    last_start = max(stamp(t.datetime_start) for t in trials if t.datetime_start is not None)
    window_start = stamp(done[min(concurrency, len(done)) - 1].datetime_complete)
    window_s = last_start - window_start
    # each trial's share of its run inside the window (its sleep is spread over its run from start to completion)
    shares = [
        max(0.0, min(stamp(t.datetime_complete), last_start) - max(stamp(t.datetime_start), window_start))
        / max(stamp(t.datetime_complete) - stamp(t.datetime_start), 1e-9)
        for t in done
    ]
    work_s = sum(sleep[t.number] * share for t, share in zip(done, shares))
    work_rate = work_s / window_s if window_s > 0 and work_s > 0 else float("nan")
    return {
        "trials": len(trials),
        "completed": len(done),
        "failed": sum(t.state == optuna.trial.TrialState.FAIL for t in trials),
        "trials_per_min": len(done) / max(last_end - first_start, 1e-9) * 60,
        "work_rate": work_rate,
        "window_s": window_s,
        "window_trials": sum(shares),
        "mean_sleep_s": sum(sleep.values()) / len(sleep),
    }


def create_study(space_file: Path, url: str, name: str, out: Path, env: dict[str, str]) -> None:
    subprocess.run(
        [CLI, "search", str(space_file), "--trials", "0", "--storage", url, "--study", name, "--out", str(out)],
        check=True,
        capture_output=True,
        env=env,
    )


def run_level(
    backend: str,
    concurrency: int,
    n_trials: int,
    sleep: tuple[float, float],
    url: str,
    root: Path,
    env: dict[str, str],
    ctx: Any,
    ray_address: str | None,
    architecture: str = "synthetic",
) -> Run:
    from vae_automl.testing.synthetic import space_yaml

    name = f"{backend}-{concurrency}"
    out = root / name
    out.mkdir()
    space_file = out / "space.yaml"
    space_file.write_text(space_yaml(name, trials=n_trials, seconds=sleep, seed=concurrency, architecture=architecture))
    create_study(space_file, url, name, out, env)
    common = ["--storage", url, "--study", name]
    started, server_cpu_before = time.monotonic(), postgres_cpu_s(url)
    timing_files = []
    if backend == "optuna":
        procs = []
        for i in range(concurrency):
            timing_files.append(str(out / f"timing-{i}.json"))
            proc = ctx.Process(target=run_cli, args=(["worker", *common], timing_files[-1], env))
            proc.start()
            procs.append(proc)
        watch = MemoryWatch(lambda: [p.pid for p in procs if p.is_alive()])
        for proc in procs:
            proc.join()
        codes = [p.exitcode for p in procs]
    else:
        timing_files.append(str(out / "timing-driver.json"))
        argv = ["search", str(space_file), "--out", str(out), "--backend", "ray", "--address", str(ray_address),
                "--concurrency", str(concurrency), "--cpus-per-trial", "1", *common]  # fmt: skip
        watch = MemoryWatch(ray_worker_pids)
        # the head's token (set by ray_head after the forkserver started, so not in its environment)
        auth = {k: os.environ[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN") if k in os.environ}
        driver = ctx.Process(target=run_cli, args=(argv, timing_files[0], {**env, **auth}))
        driver.start()
        driver.join()
        codes = [driver.exitcode]
    wall_s, server_cpu_s = time.monotonic() - started, postgres_cpu_s(url) - server_cpu_before
    peak_mb, _ = watch.close()
    per_process_mb = peak_mb / concurrency  # Ray's idle workers included: the memory each concurrent trial costs
    crashed = sum(code != 0 for code in codes)
    if crashed == len(codes):
        raise SystemExit(f"{backend} at {concurrency}: every process failed: exit codes {codes}")
    # a crashed process wrote no totals: its storage time is missing from the figure (the table says how many)
    timings = [json.loads(Path(f).read_text()) for f in timing_files if Path(f).is_file()]
    figures = measure_study(url, name, concurrency)
    storage_s = sum(t["seconds"] for t in timings)
    calls = sum(t["calls"] for t in timings)
    return Run(
        backend=backend,
        concurrency=concurrency,
        trials=figures["trials"],
        completed=figures["completed"],
        failed=figures["failed"],
        wall_s=wall_s,
        trials_per_min=figures["trials_per_min"],
        work_rate=figures["work_rate"],
        window_s=figures["window_s"],
        storage_ms_per_trial=storage_s / figures["trials"] * 1000,
        storage_calls_per_trial=calls / figures["trials"],
        server_cpu_ms_per_trial=server_cpu_s / figures["trials"] * 1000,
        overhead_ms_per_trial=(figures["window_s"] - figures["work_rate"] * figures["window_s"] / concurrency)
        / max(figures["window_trials"] / concurrency, 1e-9)
        * 1000,
        peak_memory_mb=peak_mb,
        memory_mb_per_process=per_process_mb,
        mean_sleep_s=figures["mean_sleep_s"],
        extra={"window_trials": figures["window_trials"], "crashed_processes": crashed},
    )


# --- the big study and front ---------------------------------------------------------------------------


def big_study(url: str, template_study: str, size: int, env: dict[str, str]) -> dict[str, Any]:
    """Write ``size`` trials shaped like ``template_study``'s first completed one; time ``vae-automl front`` on them.

    The rows go in with bulk inserts into Optuna's own tables (``optuna.storages._rdb.models``): the same
    rows ``study.add_trials`` writes, without its per-trial transactions (which would take an hour here).
    """
    import optuna
    import sqlalchemy
    from optuna.distributions import distribution_to_json
    from optuna.storages._rdb import models

    from vae_automl.testing.synthetic import objectives_of

    source = optuna.load_study(study_name=template_study, storage=url)
    template = next(t for t in source.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE)
    name = f"big-{size}"
    big = optuna.create_study(study_name=name, storage=url, directions=["minimize", "minimize"])
    for key, value in source.user_attrs.items():
        big.set_user_attr(key, value)
    for key, value in source._storage.get_study_system_attrs(source._study_id).items():
        big._storage.set_study_system_attr(big._study_id, key, value)
    rng = random.Random(size)
    started = time.monotonic()
    engine = sqlalchemy.create_engine(url)
    trials, params, values, user_attrs = [], [], [], []
    for number in range(size):
        x, y = rng.random(), rng.random()
        drawn = {**template.params, "compressor0.synthetic_work.x": x, "compressor0.synthetic_work.y": y}
        objective_values = list(objectives_of(x, y))
        attrs = copy.deepcopy(template.user_attrs)
        record = attrs["record"]
        record.update(trial=number, params=drawn)
        record["objectives"] = dict(zip(record["objectives"], objective_values))
        record["metrics"].update(record["objectives"])
        trials.append(
            {
                "number": number,
                "study_id": big._study_id,
                "state": optuna.trial.TrialState.COMPLETE,
                "datetime_start": template.datetime_start,
                "datetime_complete": template.datetime_complete,
            }
        )
        params.append(
            [
                (k, template.distributions[k].to_internal_repr(v), distribution_to_json(template.distributions[k]))
                for k, v in drawn.items()
            ]
        )
        values.append(objective_values)
        user_attrs.append([(k, json.dumps(v)) for k, v in attrs.items()])
    with engine.begin() as conn:
        conn.execute(sqlalchemy.insert(models.TrialModel.__table__), trials)
        ids = dict(
            conn.execute(
                sqlalchemy.select(models.TrialModel.number, models.TrialModel.trial_id).where(
                    models.TrialModel.study_id == big._study_id
                )
            ).all()
        )
        conn.execute(
            sqlalchemy.insert(models.TrialParamModel.__table__),
            [
                {"trial_id": ids[n], "param_name": k, "param_value": v, "distribution_json": d}
                for n, rows in enumerate(params)
                for k, v, d in rows
            ],
        )
        conn.execute(
            sqlalchemy.insert(models.TrialValueModel.__table__),
            [
                {"trial_id": ids[n], "objective": i, "value": v, "value_type": models.TrialValueModel.TrialValueType.FINITE}
                for n, vs in enumerate(values)
                for i, v in enumerate(vs)
            ],
        )
        conn.execute(
            sqlalchemy.insert(models.TrialUserAttributeModel.__table__),
            [{"trial_id": ids[n], "key": k, "value_json": v} for n, rows in enumerate(user_attrs) for k, v in rows],
        )
    engine.dispose()
    write_s = time.monotonic() - started
    stored = optuna.load_study(study_name=name, storage=url).get_trials(
        deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)
    )
    if len(stored) != size:
        raise SystemExit(f"the big study holds {len(stored)} completed trials, not {size}")
    runs = []
    for _ in range(3):
        t0 = time.monotonic()
        proc = subprocess.run([CLI, "front", "--storage", url, "--study", name, "--json"], capture_output=True, env=env)
        runs.append(time.monotonic() - t0)
        if proc.returncode != 0:
            raise SystemExit(f"front failed: {proc.stderr.decode()[-2000:]}")
    front = json.loads(proc.stdout)["points"]
    return {"trials": size, "write_s": write_s, "front_seconds": sorted(runs)[1], "front_runs_s": runs, "front_size": len(front)}


# --- report --------------------------------------------------------------------------------------------


def crashed_note(run: Run) -> str:
    crashed = run.extra.get("crashed_processes", 0)
    return f" ({crashed} crashed)" if crashed else ""


def table(runs: list[Run], skipped: dict[str, dict[str, str]]) -> str:
    lines = [
        "| backend | concurrent trials | trials (completed) | trials/min | speed-up | efficiency | of ideal | storage ms/trial "
        "| storage calls/trial | PostgreSQL CPU ms/trial | overhead ms/trial | memory MB per trial | wall s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    base = {r.backend: r.work_rate for r in runs if r.concurrency == 1}
    for r in runs:
        speedup = r.work_rate / base[r.backend] if base.get(r.backend) else float("nan")
        lines.append(
            f"| {r.backend} | {r.concurrency} | {r.trials} ({r.completed}) | {r.trials_per_min:.1f} | {speedup:.2f}x "
            f"| {speedup / r.concurrency:.2f} | {r.work_rate / r.concurrency:.2f} | {r.storage_ms_per_trial:.0f} "
            f"| {r.storage_calls_per_trial:.0f} "
            f"| {r.server_cpu_ms_per_trial:.0f} | {r.overhead_ms_per_trial:.0f} | {r.memory_mb_per_process:.0f} "
            f"| {r.wall_s:.0f}{crashed_note(r)} |"
        )
    for backend, levels in skipped.items():
        for level, why in levels.items():
            lines.append(f"| {backend} | {level} | not run: {why} | | | | | | | | | | |")
    return "\n".join(lines)


# Real trial times (README "Performance" and docs' design figures): seconds of one trial's training
REAL_TRIALS = (
    ("30 epochs, one trial per GPU, step in a CUDA graph (369,000 samples/s)", 1, 240_000 / 369_000),
    ("30 epochs, 8 trials per GPU sharing it (297,000 samples/s in all)", 8, 240_000 / (297_000 / 8)),
    ("5 epochs on one CPU core (README throughput table, eager)", 1, 6.46),
)
CLUSTER_GPUS = 64  # 8 nodes x 8 GPUs
DB_CORES = 8


def paper_model(results: dict[str, Any]) -> str:
    """Trials per minute and speed-up on 8 nodes x 8 GPUs, from the measured per-trial costs.

    Optuna workers: each runs trials back to back, a trial costing its time T plus the orchestration
    overhead o measured with one worker; the PostgreSQL server caps the rate at DB_CORES / (its CPU per
    trial). Ray: the same, and the driver, which makes every storage call itself, caps it at
    1 / (its storage time per trial).
    """
    runs = {(r["backend"], r["concurrency"]): r for r in results["runs"]}
    lines = [
        f"Paper model: {CLUSTER_GPUS} GPUs (8 nodes x 8), a PostgreSQL server with {DB_CORES} cores; per-trial costs "
        "measured above (overhead o at one worker, PostgreSQL CPU per trial at the largest concurrency run, "
        "the Ray driver's storage time per trial at one trial).",
        "",
        "| real trial (training only) | T s | concurrent trials | backend | o ms | trials/min | speed-up over 1 | "
        "efficiency | bound by | time training T/(T+o) |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for what, per_gpu, t_s in REAL_TRIALS:
        concurrent = CLUSTER_GPUS * per_gpu
        for backend in ("optuna", "ray"):
            one = runs.get((backend, 1))
            if one is None:
                continue
            largest = max(c for b, c in runs if b == backend)
            o_s = one["overhead_ms_per_trial"] / 1000
            db_s = runs[(backend, largest)]["server_cpu_ms_per_trial"] / 1000
            caps = {"trials": concurrent / (t_s + o_s), "PostgreSQL CPU": DB_CORES / db_s}
            if backend == "ray":
                caps["Ray driver"] = 1 / (one["storage_ms_per_trial"] / 1000)
            bound = min(caps, key=lambda k: caps[k])
            per_s = caps[bound]
            speedup = per_s * (t_s + o_s)
            lines.append(
                f"| {what} | {t_s:.2f} | {concurrent} | {backend} | {o_s * 1000:.0f} | {per_s * 60:,.0f} | {speedup:.0f}x "
                f"| {speedup / concurrent:.2f} | {bound} | {t_s / (t_s + o_s):.0%} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="scaling.py --synthetic", description=__doc__.splitlines()[0])
    parser.add_argument("--levels", type=int, nargs="+", default=list(LEVELS), help="concurrent trials (default 1 4 16 64)")
    parser.add_argument("--sleep", type=float, nargs=2, default=(10.0, 20.0), metavar=("LOW", "HIGH"),
                        help="a trial sleeps a uniform draw in [LOW, HIGH] s (default 10 20)")  # fmt: skip
    parser.add_argument("--waves", type=int, default=4, help="trials per run: this many times the concurrency")
    parser.add_argument("--min-trials", type=int, default=6, help="at least this many trials per run")
    parser.add_argument("--big", type=int, default=10000, help="trials of the study `front` is timed on (0: skip)")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--skip-optuna", action="store_true")
    parser.add_argument(
        "--architecture",
        choices=("synthetic", "mlp"),
        default="synthetic",
        help="the trials' model: the torch-free stand-in (default) or the built-in MLP, one epoch (every process imports "
        "torch: the memory before the trial went torch-free)",
    )
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--paper-model", type=Path, metavar="JSON", help="only print the paper model of a --json file")
    parser.add_argument(
        "--update", action="store_true", help="keep the runs already in the --json file that this run does not redo"
    )
    args = parser.parse_args(argv)
    if args.paper_model:
        print(paper_model(json.loads(args.paper_model.read_text())))
        return

    os.environ["OMP_NUM_THREADS"] = "1"
    # a background job ignores SIGINT: SIGTERM must still stop the servers and remove the temp dir
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    os.environ.setdefault("VAE_AUTOML_DISABLE_PLUGIN_AUTOLOAD", "1")
    # deferred: the loopback servers import the test helpers' package
    from vae_automl.testing.loopback import postgres_server, ray_head

    env = {
        "OMP_NUM_THREADS": "1",
        "VAE_AUTOML_PLUGINS": PLUGIN,
        "VAE_AUTOML_HEARTBEAT_INTERVAL_S": HEARTBEAT_INTERVAL_S,
        "VAE_AUTOML_HEARTBEAT_GRACE_S": HEARTBEAT_GRACE_S,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    full_env = {**os.environ, **env}
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["vae_automl.cli", "vae_automl.worker", "vae_automl.trial", PLUGIN, "sqlalchemy"])
    load_before = os.getloadavg()
    runs: list[Run] = []
    skipped: dict[str, dict[str, str]] = {}
    results: dict[str, Any] = {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="vae-scaling-") as tmp, postgres_server(max_connections=500) as url:
        root = Path(tmp)
        if not args.skip_optuna:
            for level in args.levels:
                n = max(args.waves * level, args.min_trials)
                print(
                    f"[{time.monotonic() - started:.0f} s] optuna workers: {level} concurrent, {n} trials ...",
                    file=sys.stderr,
                    flush=True,
                )
                runs.append(run_level("optuna", level, n, tuple(args.sleep), url, root, env, ctx, None, args.architecture))
                print(f"  {runs[-1]}", file=sys.stderr, flush=True)
        if not args.skip_ray:
            # Ray would otherwise start one idle worker per logical CPU for the first driver: 64 processes of ~100 MB
            os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
            with ray_head(num_cpus=max(args.levels), object_store_bytes=500 * 1024**2) as address:
                for level in args.levels:
                    need_mb, how = ray_memory_need_mb([r for r in runs if r.backend == "ray"], level)
                    have_mb = available_mb()
                    if need_mb > 0.8 * have_mb:
                        skipped.setdefault("ray", {})[str(level)] = (
                            f"{how} = {need_mb / 1024:.1f} GiB, over 80% of the {have_mb / 1024:.1f} GiB available"
                        )
                        print(f"ray: {level} skipped: {skipped['ray'][str(level)]}", file=sys.stderr, flush=True)
                        continue
                    n = max(args.waves * level, args.min_trials)
                    print(
                        f"[{time.monotonic() - started:.0f} s] ray: {level} concurrent, {n} trials ...",
                        file=sys.stderr,
                        flush=True,
                    )
                    runs.append(run_level("ray", level, n, tuple(args.sleep), url, root, env, ctx, address, args.architecture))
                    print(f"  {runs[-1]}", file=sys.stderr, flush=True)
        if args.big:
            print(
                f"[{time.monotonic() - started:.0f} s] writing a study of {args.big} trials and timing `front` on it ...",
                file=sys.stderr,
                flush=True,
            )
            template = next(f"{r.backend}-{r.concurrency}" for r in runs)
            results["big"] = big_study(url, template, args.big, full_env)
    load_after = os.getloadavg()
    if args.update and args.json and args.json.is_file():
        previous = json.loads(args.json.read_text())
        redone = {(r.backend, r.concurrency) for r in runs}
        kept = [Run(**r) for r in previous["runs"] if (r["backend"], r["concurrency"]) not in redone]
        runs = sorted(kept + runs, key=lambda r: (r.backend != "optuna", r.concurrency))
        results.setdefault("big", previous.get("big"))
        results["earlier_run"] = {k: previous.get(k) for k in ("load_average_before", "load_average_after", "seconds")}
        if results.get("big") is None:
            results.pop("big")
    base = {r.backend: r.work_rate for r in runs if r.concurrency == 1}
    speedup: dict[str, dict[str, float | None]] = {}
    for r in runs:
        speedup.setdefault(r.backend, {})[str(r.concurrency)] = r.work_rate / base[r.backend] if r.backend in base else None
    for backend, levels in skipped.items():
        for level in levels:
            speedup.setdefault(backend, {})[level] = None
    results.update(
        speedup=speedup,
        efficiency={b: {k: (v / int(k) if v is not None else None) for k, v in d.items()} for b, d in speedup.items()},
        # sleep-seconds completed per second over N: the fraction of the ideal, with no one-worker run in the ratio
        efficiency_of_ideal={
            b: {str(r.concurrency): r.work_rate / r.concurrency for r in runs if r.backend == b} for b in speedup
        },
        storage_ms_per_trial={b: {str(r.concurrency): r.storage_ms_per_trial for r in runs if r.backend == b} for b in speedup},
        front_seconds={str(results["big"]["trials"]): results["big"]["front_seconds"]} if "big" in results else {},
        skipped=skipped,
        runs=[asdict(r) for r in runs],
        sleep_s=list(args.sleep),
        architecture=args.architecture,
        cores=os.cpu_count(),
        load_average_before=load_before[0],
        load_average_after=load_after[0],
        seconds=time.monotonic() - started,
    )
    print(
        f"synthetic trials sleeping U({args.sleep[0]:g}, {args.sleep[1]:g}) s; {os.cpu_count()} cores; "
        f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}; {results['seconds']:.0f} s in all"
    )
    print(table(runs, skipped))
    if "big" in results:
        big = results["big"]
        print(
            f"front on a study of {big['trials']} trials: {big['front_seconds']:.2f} s (median of 3 runs of "
            f"`vae-automl front --json`, process start included; {big['front_size']} on the front; "
            f"writing the trials took {big['write_s']:.0f} s)"
        )
    print()
    print(paper_model(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
