"""The synthetic trial plugin (vae_automl.testing.synthetic): it sleeps what it drew and reports what it drew."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from vae_automl.api import search
from vae_automl.record import TrialRecord
from vae_automl.testing.synthetic import objectives_of, space_yaml

PLUGIN = "vae_automl.testing.synthetic"


def test_objectives_trade_loss_for_size() -> None:
    # independent arithmetic: loss = 1 - x + y/2, size = sqrt(x) + y/2
    assert objectives_of(0.25, 0.0) == (0.75, 0.5)
    assert objectives_of(1.0, 1.0) == (0.5, 1.5)


def test_a_synthetic_trial_sleeps_its_drawn_time_and_reports_its_drawn_objectives(tmp_path: Path) -> None:
    sleep_s = 0.3
    space = tmp_path / "syn.yaml"
    space.write_text(space_yaml("syn", trials=3, seconds=(sleep_s, sleep_s)))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = search(space, storage=storage, out_dir=tmp_path, show_progress=False, plugins=(PLUGIN,))
    assert result.completed == 3
    trials = optuna.load_study(study_name="syn", storage=storage).get_trials()
    assert len({(t.params["compressor0.synthetic_work.x"], t.params["compressor0.synthetic_work.y"]) for t in trials}) == 3
    for trial in trials:
        record = TrialRecord.from_trial(trial)
        assert record is not None
        x, y = trial.params["compressor0.synthetic_work.x"], trial.params["compressor0.synthetic_work.y"]
        assert trial.values == list(objectives_of(x, y))
        assert record.seconds >= sleep_s
        stored = json.loads((tmp_path / "models" / f"trial-{trial.number}.bin").read_bytes())  # the plain model's bytes
        assert stored["config"]["synthetic"] == {"x": x, "y": y, "seconds": sleep_s}
    assert sum(t.user_attrs["record"]["base"]["cache_hit"] for t in trials) == 2  # one base, trained once


REPO = Path(__file__).resolve().parents[1]
WORKER = """
import json, sys
from vae_automl import space as space_mod
from vae_automl.backends.ray import _worker_env
from vae_automl.config import load_space
from vae_automl.plugin_manager import get_plugin_manager
from vae_automl.registry import get_registry
from vae_automl.trial import run_trial

get_plugin_manager(("vae_automl.testing.synthetic",))
path, out = sys.argv[1], sys.argv[2]
space = load_space(path, get_registry())
env = _worker_env(space.source, space.path, space.dataset, space.device, out)  # what a Ray worker builds first
params = {"compressor0": "synthetic_work", "compressor0.synthetic_work.seconds": 0.0,
          "compressor0.synthetic_work.x": 0.25, "compressor0.synthetic_work.y": 0.5}
records = [run_trial(env, space_mod.resolve(env.space, params, env.registry), n) for n in range(2)]
print(json.dumps({"torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
                  "objectives": records[1].objectives, "cache_hit": [r.base.cache_hit for r in records]}))
"""


def run_worker_path(tmp_path: Path, architecture: str) -> dict[str, object]:
    """Two trials through the Ray worker's own path (``_worker_env``, then ``run_trial``) in a fresh interpreter."""
    space = tmp_path / "syn.yaml"
    space.write_text(space_yaml("syn", trials=2, seconds=(0.0, 0.0), architecture=architecture))
    env = {**os.environ, "VAE_AUTOML_DISABLE_PLUGIN_AUTOLOAD": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", WORKER, str(space), str(tmp_path / "out")], capture_output=True,
                          text=True, env=env, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.splitlines()[-1]))


def test_a_synthetic_trial_on_a_worker_never_imports_torch(tmp_path: Path) -> None:
    # 64 Ray workers holding torch (~300 MB each) do not fit a small machine; the synthetic trial must leave it out
    result = run_worker_path(tmp_path, "synthetic")
    assert result["torch"] == []
    assert result["objectives"] == dict(zip(("synthetic_loss", "synthetic_size"), objectives_of(0.25, 0.5)))
    assert result["cache_hit"] == [False, True]  # the plain base is cached and reused like a torch one


@pytest.mark.slow
def test_the_same_trial_on_the_torch_mlp_imports_torch(tmp_path: Path) -> None:
    # the oracle of the test above: the same code path with a torch architecture does load torch
    result = run_worker_path(tmp_path, "mlp")
    assert "torch" in result["torch"]
    assert result["cache_hit"] == [False, True]
