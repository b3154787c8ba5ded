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
def test_search_quality_benchmark_on_quick_space(tmp_path: Path) -> None:
    out = tmp_path / "quality.json"
    proc = run_script([str(ROOT / "benchmarks" / "search_quality.py"), str(ROOT / "search_spaces" / "quick.yaml"),
                       "--trials", "3", "--json", str(out)], tmp_path)
    assert "| nsga2 | 3 |" in proc.stdout and "| random | 3 |" in proc.stdout
    report = json.loads(out.read_text())
    for run in report["runs"]:
        assert 0.0 <= run["hypervolume"] <= 1.0 and len(run["points"]) == 3
    # The common box covers both runs, so at least one of them has a positive hypervolume.
    assert max(run["hypervolume"] for run in report["runs"]) > 0


def test_compression_search_picks_and_searches_a_compressor() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import throughput
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from vae_automl.components import Compressor, Param
    from vae_automl.registry import Registry

    registry = Registry()
    registry.compressors.add(throughput.BenchRound(), "bench", "0")
    assert throughput.pick_compressor(registry, "auto") == ("bench-round", {"bits": {"low": 2, "high": 8}})

    class Prune(Compressor):
        name, stage = "a_prune", "prune"
        params = (Param("sparsity", "float", 0.5, minimum=0.0, maximum=0.9),)

        def apply(self, model, params, ctx):  # noqa: ANN001, ANN202
            return model

    class Quant(Compressor):
        name, stage = "q", "quantize"
        params = (Param("bits", "int", 8, minimum=1, maximum=8), Param("qat_epochs", "int", 0, minimum=0, maximum=9),
                  Param("symmetric", "bool", True), Param("lr", "float", 1e-3, minimum=1e-6, maximum=1.0))

        def apply(self, model, params, ctx):  # noqa: ANN001, ANN202
            return model

    registry.compressors.add(Prune(), "p", "0")
    registry.compressors.add(Quant(), "p", "0")
    # A registered quantizer wins over pruning and over the benchmark's own; epochs stay at their minimum.
    assert throughput.pick_compressor(registry, "auto") == ("q", {"bits": {"low": 2, "high": 8}, "qat_epochs": 0,
                                                                  "symmetric": "search"})
