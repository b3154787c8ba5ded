"""benchmarks/scaling_synthetic.py's arithmetic: the steady-window work rate and the paper model."""

from __future__ import annotations

import math
import sys
from datetime import datetime, timedelta
from pathlib import Path

import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import scaling_synthetic  # noqa: E402

SECONDS = "compressor0.synthetic_work.seconds"


def test_work_rate_counts_the_sleep_completed_in_the_steady_window(tmp_path: Path) -> None:
    # two workers, trials of 10 s back to back: starts 0,0,10,10,20,20; ends 10,10,20,20,30,30; one failed at 25
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="w", storage=url, directions=["minimize", "minimize"])
    t0 = datetime(2026, 11, 25, 12, 0, 0)
    dist = {SECONDS: optuna.distributions.FloatDistribution(0, 60)}
    for k in range(6):
        start = t0 + timedelta(seconds=10 * (k // 2))
        study.add_trial(optuna.trial.FrozenTrial(
            number=k, state=optuna.trial.TrialState.COMPLETE, value=None, values=[1.0, 2.0], datetime_start=start,
            datetime_complete=start + timedelta(seconds=10), params={SECONDS: 10.0}, distributions=dist,
            user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=k))  # fmt: skip
    study.add_trial(optuna.trial.FrozenTrial(
        number=6, state=optuna.trial.TrialState.FAIL, value=None, values=None, datetime_start=t0 + timedelta(seconds=25),
        datetime_complete=t0 + timedelta(seconds=26), params={SECONDS: 50.0}, distributions=dist,
        user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=6))  # fmt: skip
    figures = scaling_synthetic.measure_study(url, "w", concurrency=2)
    # window: from the 2nd completion (10 s) to the last start (25 s): the two trials of 10-20 s lie in it whole, the
    # two of 20-30 s half; the failed trial's sleep does not count. Two workers never idle: 2 sleep-seconds a second
    assert figures["window_s"] == 15.0
    assert math.isclose(figures["window_trials"], 3.0)
    assert math.isclose(figures["work_rate"], (10 + 10 + 5 + 5) / 15.0)
    assert figures["completed"] == 6 and figures["failed"] == 1
    assert math.isclose(figures["trials_per_min"], 6 / 30 * 60)


def test_a_completion_told_after_the_next_start_keeps_its_work_in_the_window(tmp_path: Path) -> None:
    # the Ray driver: one trial at a time, each stored (told) 0.2 s after Tune asked for the next one
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="r", storage=url, directions=["minimize", "minimize"])
    t0 = datetime(2026, 11, 25, 12, 0, 0)
    dist = {SECONDS: optuna.distributions.FloatDistribution(0, 60)}
    for k in range(6):
        study.add_trial(optuna.trial.FrozenTrial(
            number=k, state=optuna.trial.TrialState.COMPLETE, value=None, values=[1.0, 2.0],
            datetime_start=t0 + timedelta(seconds=10 * k), datetime_complete=t0 + timedelta(seconds=10 * k + 10.2),
            params={SECONDS: 10.0}, distributions=dist, user_attrs={}, system_attrs={}, intermediate_values={},
            trial_id=k))  # fmt: skip
    figures = scaling_synthetic.measure_study(url, "r", concurrency=1)
    # window 10.2 -> 50 s; trials 2 and 3 whole, trials 1 and 4 for 10 of their 10.2 s (counting completions only
    # left trial 4 out: 30 / 39.8 = 0.75, as if each trial carried 3.3 s of overhead)
    assert math.isclose(figures["window_s"], 39.8, rel_tol=1e-6)  # stored to the microsecond
    assert math.isclose(figures["work_rate"], 10 * (2 + 2 * 10 / 10.2) / 39.8, rel_tol=1e-6)
    assert figures["work_rate"] > 0.99


def run(backend: str, concurrency: int, overhead_ms: float, server_ms: float, storage_ms: float) -> dict[str, object]:
    return {"backend": backend, "concurrency": concurrency, "overhead_ms_per_trial": overhead_ms,
            "server_cpu_ms_per_trial": server_ms, "storage_ms_per_trial": storage_ms}  # fmt: skip


def test_paper_model_takes_the_tightest_bound() -> None:
    results = {"runs": [run("optuna", 1, 100.0, 50.0, 30.0), run("optuna", 64, 400.0, 10.0, 30.0),
                        run("ray", 1, 100.0, 10.0, 50.0)]}  # fmt: skip
    text = scaling_synthetic.paper_model(results)
    rows = [line for line in text.splitlines() if line.startswith("| 30 epochs, one trial per GPU")]
    t_s = 240_000 / 369_000 + 0.1
    # Optuna: 64 trials at a time, each T + 0.1 s; PostgreSQL at 10 ms CPU per trial allows 800/s, more than that
    assert f"| {64 / t_s * 60:,.0f} | 64x | 1.00 | trials |" in rows[0]
    # Ray: its driver spends 50 ms in the storage per trial, so at most 20 trials/s
    assert f"| {20 * 60:,.0f} | {20 * t_s:.0f}x | {20 * t_s / 64:.2f} | Ray driver |" in rows[1]


def ray_run(concurrency: int, peak_mb: float) -> scaling_synthetic.Run:
    return scaling_synthetic.Run(
        backend="ray", concurrency=concurrency, trials=4 * concurrency, completed=4 * concurrency, failed=0, wall_s=60.0,
        trials_per_min=1.0, work_rate=1.0, window_s=30.0, storage_ms_per_trial=1.0, storage_calls_per_trial=1.0,
        server_cpu_ms_per_trial=1.0, overhead_ms_per_trial=1.0, peak_memory_mb=peak_mb,
        memory_mb_per_process=peak_mb / concurrency, mean_sleep_s=15.0)  # fmt: skip


def test_ray_memory_need_separates_the_fixed_agents_from_each_trials_worker() -> None:
    # 100 MB of head agents plus 134 MB per trial's worker, as measured at 4 and 16 concurrent trials
    runs = [ray_run(1, 240.0), ray_run(4, 100 + 4 * 134), ray_run(16, 100 + 16 * 134)]
    need, how = scaling_synthetic.ray_memory_need_mb(runs, 64)
    assert math.isclose(need, 100 + 64 * 134)
    assert "4 and 16" in how
    # one level measured: its figure per trial (agents included) times the level, an upper bound
    assert math.isclose(scaling_synthetic.ray_memory_need_mb(runs[:1], 64)[0], 64 * 240.0)
    assert scaling_synthetic.ray_memory_need_mb([], 64)[0] == 0.0
