"""Smoke runs of benchmarks/throughput.py and benchmarks/search_quality.py on the CPU (slow: they spawn and search)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


@pytest.mark.slow
def test_throughput_benchmark_quick_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    proc = run_script([str(ROOT / "benchmarks" / "throughput.py"), "--device", "cpu", "--quick", "--threads", "1",
                       "--concurrent", "2", "--search-trials", "4", "--json", str(out)], tmp_path)
    assert "| (a) DataLoader, per-item transform (seed loop) |" in proc.stdout
    assert "| (c) our trainer, step in a CUDA graph | n/a on cpu |" in proc.stdout
    assert "bases trained: 1, reused: 3" in proc.stdout
    report = json.loads(out.read_text())
    assert report["ratio_trainer_vs_dataloader"] > 0
    assert report["ways"]["trainer_captured"]["samples_per_s"] is None
    for key in ("dataloader", "trainer_eager", "concurrent"):
        way = report["ways"][key]
        assert way["samples_per_s"] > 0 and way["seconds_per_trial"] > 0
    assert report["ways"]["dataloader"]["ratio_to_dataloader"] == 1.0
    assert report["compression_search"] == {**report["compression_search"], "trials": 4, "base_trained": 1,
                                            "base_reused": 3}


@pytest.mark.slow
def test_search_quality_replay_writes_the_issue_keys(tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    proc = run_script([str(ROOT / "benchmarks" / "search_quality.py"), "--replay", "--seeds", "2", "--spaces", "quick",
                       "--samplers", "random,default", "--jobs", "1", "--json", str(out)], tmp_path)
    assert "| default |" in proc.stdout and "reference point" in proc.stdout
    report = json.loads(out.read_text())
    block = report["spaces"][0]
    assert block["space"] == "quick" and block["seeds"] == 2 and len(block["reference_point"]) == 2
    for name in ("random", "default"):
        assert set(block["samplers"][name]["hv_mean"]) == {"10", "20", "50", "100"}
        assert all(0.0 <= v <= 1.0 for v in block["samplers"][name]["hv_mean"].values())
        assert set(block["samplers"][name]["hv_std"]) == {"10", "20", "50", "100"}
    assert set(block["trials_to_random_hv100"]) == {"random", "default"}
    # random's 100 trials draw epochs from quick.yaml's 10-30: between 10 and 30 each, and not all alike
    assert 1000 < block["epochs_to_random_hv100"]["random"] < 3000
    assert block["default_is"] == "hvi" and block["budgets_behind_random_from_20"]["random"] == []
    es = report["early_stopping"]
    assert es["sampler"] == "tpe"  # the default's rules cost about 10 minutes more (--stopping-sampler default)
    assert es["epochs_to_target"]["none"] > 0 and es["epochs_ratio"]["none"] == pytest.approx(1.0, abs=0.01)
    # the default pair of rules (quick.yaml ships none), both measured on the same seeds as the full-budget search
    assert set(es["epochs_to_target"]) == {"none", "3/3/4/base", "5/2/4/compressed"}
    assert es["rules"]["5/2/4/compressed"]["score"] == "compressed" and es["rules"]["none"] is None
    assert all(0.0 <= es["hv_at_epoch_fraction"][k]["0.5"] <= 1.0 for k in es["epochs_to_target"])
    # hindsight stopping: a lower rung never costs more, and some trials always raise the hypervolume
    bound = es["perfect_stopping_epochs_ratio"]
    assert 0.0 < bound["3"] <= bound["5"] <= bound["10"] < 1.0 and es["front_improving_trials_mean"] >= 1
    assert report["replay_error"]["holdout_trials"] == 40
