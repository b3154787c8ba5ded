"""The synthetic trial plugin (vae_automl.testing.synthetic): it sleeps what it drew and reports what it drew."""

from __future__ import annotations

from pathlib import Path

import optuna

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
        assert (tmp_path / "models" / f"trial-{trial.number}.safetensors").is_file()
    assert sum(t.user_attrs["record"]["base"]["cache_hit"] for t in trials) == 2  # one base, trained once
