"""Progress: a live line per running trial, a finished line with the study-wide best and the front size, Optuna quiet."""

from __future__ import annotations

import io
import re
from pathlib import Path

import optuna
import pytest

import vae_automl
from vae_automl.backends.optuna import progress_callback
from vae_automl.progress import Progress

OBJECTIVES = ("test_elbo_nats", "size_bytes")
DIRECTIONS = ("minimize", "minimize")


def run_one_trial(progress: Progress, number: int = 3) -> None:
    progress.trial_started(number, epochs=5)
    progress.trial_stage(number, "train")
    for epoch, loss in ((1, 30.0), (2, 27.4)):
        progress.trial_epoch(number, epoch, loss)
    progress.trial_stage(number, "compress")
    progress.trial_stage(number, "measure")
    progress.trial_finished(number, "COMPLETE", [27.0, 1200.0], 1.5, front_size=2)


def test_plain_lines_without_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(4, OBJECTIVES, DIRECTIONS, stream=stream, plain_interval_s=0.0)
    assert not progress.live  # a StringIO is no terminal
    run_one_trial(progress)
    lines = stream.getvalue().splitlines()
    assert lines[:5] == [
        "  trial 3: train",
        "  trial 3: train epoch 1/5, validation loss 30",
        "  trial 3: train epoch 2/5, validation loss 27.4",
        "  trial 3: compress",
        "  trial 3: measure",
    ]
    assert lines[5].startswith("[1/4 completed] trial 3 complete in 1.5s | best test_elbo_nats 27 (#3), size_bytes 1200 (#3)")
    assert "| front 2" in lines[5]
    assert "\r" not in stream.getvalue()


def test_plain_lines_are_rate_limited_per_trial() -> None:
    stream = io.StringIO()
    progress = Progress(4, OBJECTIVES, DIRECTIONS, stream=stream, plain_interval_s=3600.0)
    run_one_trial(progress)
    assert len(stream.getvalue().splitlines()) == 1  # a short trial prints its finished line only


def test_a_tqdm_bar_on_a_terminal() -> None:
    stream = io.StringIO()
    progress = Progress(4, OBJECTIVES, DIRECTIONS, stream=stream, live=True)
    progress.trial_started(3, epochs=5)
    progress.trial_epoch(3, 2, 27.4)
    progress.trial_stage(3, "compress")
    drawn = stream.getvalue()
    assert "trial 3 compress" in drawn and "2/5" in drawn and "loss 27.4" in drawn and "\r" in drawn
    progress.trial_finished(3, "COMPLETE", [27.0, 1200.0], 1.5, front_size=1)
    assert not progress.running
    assert "trial 3 complete in 1.5s" in stream.getvalue()


def test_disabled_progress_prints_nothing_but_counts() -> None:
    stream = io.StringIO()
    progress = Progress(4, OBJECTIVES, DIRECTIONS, stream=stream, enabled=False, live=True)
    run_one_trial(progress)
    assert stream.getvalue() == "" and progress.done == 1


def test_the_best_counts_trials_of_other_runs_and_workers() -> None:
    study = optuna.create_study(directions=list(DIRECTIONS))
    study.set_metric_names(list(OBJECTIVES))
    study.add_trial(optuna.trial.create_trial(values=[25.12, 5000.0]))  # another worker's, or an earlier run's
    trial = study.ask()
    study.tell(trial, [26.22, 900.0])
    stream = io.StringIO()
    progress = Progress(1, OBJECTIVES, DIRECTIONS, stream=stream)
    progress_callback(progress)(study, study.trials[1])
    line = stream.getvalue()
    assert "best test_elbo_nats 25.12 (#0), size_bytes 900 (#1)" in line and "front 2" in line


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    from conftest import TINY_SPACE

    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(name="progress", trials=2, lr="3.0e-3", max_epochs=1, seed=0, pruner="none",
                                       extra_training="", compressors="[]"))
    return space


def test_resumed_search_shows_the_study_wide_best_and_keeps_optuna_quiet(
        tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    verbosity: list[int] = []

    def note(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        verbosity.append(optuna.logging.get_verbosity())

    before = optuna.logging.get_verbosity()
    vae_automl.search(tiny, trials=1, storage=storage, out_dir=tmp_path / "run", show_progress=False, callbacks=[note])
    # an earlier trial no later one can beat: the resumed run's lines must still name it
    optuna.load_study(study_name="progress", storage=storage).add_trial(optuna.trial.create_trial(values=[1.0, 1.0]))
    capsys.readouterr()
    vae_automl.search(tiny, trials=1, storage=storage, out_dir=tmp_path / "run", callbacks=[note], verbose=True)
    err = capsys.readouterr().err
    finished = [line for line in err.splitlines() if re.match(r"\[1/1 completed\] trial 2 complete", line)]
    assert finished and "best test_elbo_nats 1 (#1), size_bytes 1 (#1)" in finished[0], err
    assert verbosity == [optuna.logging.ERROR, optuna.logging.INFO]  # quiet unless verbose
    assert optuna.logging.get_verbosity() == before  # the caller's setting comes back


def test_the_ray_searcher_shows_epochs_and_calls_the_users_callbacks(tiny: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray.tune")
    from vae_automl.backends.ray import VALIDATION_LOSS, _DefineByRun, _make_searcher_class
    from vae_automl.config import load_space
    from vae_automl.registry import get_registry
    from vae_automl.study import create_study, open_storage

    space = load_space(tiny)
    storage = open_storage(f"sqlite:///{tmp_path / 'study.db'}")
    study = create_study(space, storage, "progress", tmp_path, get_registry())
    stream = io.StringIO()
    seen: list[tuple[int, str]] = []
    searcher = _make_searcher_class()(
        space=_DefineByRun(space), metric=list(space.objectives), mode=["min", "min"], sampler=study.sampler,
        study_name="progress", storage=storage, objectives=tuple(space.objectives), target_completed=1, done=0,
        max_failures=3, deadline=None, progress=Progress(1, space.objectives, DIRECTIONS, stream=stream, plain_interval_s=0),
        callbacks=[lambda s, t: seen.append((t.number, t.state.name))],
    )
    assert isinstance(searcher.suggest("t0"), dict)
    searcher.on_trial_result("t0", {VALIDATION_LOSS: 31.5, "epoch": 1})
    searcher.fail_in_flight("test over")
    assert "  trial 0: train epoch 1, validation loss 31.5" in stream.getvalue().splitlines()
    assert seen == [(0, "FAIL")]
