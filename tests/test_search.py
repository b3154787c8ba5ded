"""End to end: the quick search space through the CLI, resumed, read back, on other images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pytest

from vae_automl.cli import main
from vae_automl.study import RECORD_ATTR, load_front

REPO = Path(__file__).resolve().parents[1]
QUICK = str(REPO / "search_spaces" / "quick.yaml")


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    out = tmp_path_factory.mktemp("quick")
    storage = f"sqlite:///{out / 'study.db'}"
    assert main(["search", QUICK, "--n-trials", "10", "--out", str(out), "--storage", storage]) == 0
    return storage, out


def completed(storage: str, name: str = "quick") -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=storage)
    return study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def test_quick_search_front_and_records(quick_study: tuple[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    storage, out = quick_study
    trials = completed(storage)
    assert len(trials) == 10
    front = load_front(storage, "quick")
    assert len(front) >= 2
    # an oracle independent of pareto.py (which load_front calls): brute-force dominance over every completed trial
    points = {t.number: (t.values[0], t.values[1]) for t in trials}

    def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
        return a[0] <= b[0] and a[1] <= b[1] and a != b

    expected = {n for n, p in points.items() if not any(dominates(q, p) for q in points.values())}
    assert {e.trial for e in front} == expected
    record = trials[0].user_attrs[RECORD_ATTR]
    assert set(record["metrics"]) >= {"test_elbo_nats", "size_bytes", "recon_error", "params", "latency_ms"}
    assert record["data"]["split"]["seed"] == 0 and record["latency"]["batch_size"] == 128
    assert record["config"]["architecture"] == "mlp"
    artifact = Path(record["artifact"])
    assert artifact.is_file() and artifact.stat().st_size == record["metrics"]["size_bytes"]


def test_front_json(quick_study: tuple[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    storage, _ = quick_study
    capsys.readouterr()
    assert main(["front", "--storage", storage, "--study", "quick", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"points", "knee", "baseline"} and printed["baseline"] is None  # one shape for every study
    rows = printed["points"]
    assert len(rows) >= 2 and printed["knee"] in {row["trial"] for row in rows}
    for row in rows:
        assert set(row) == {"trial", "params", "objectives"}
        assert set(row["objectives"]) == {"test_elbo_nats", "size_bytes"}
    assert main(["front", "--storage", storage, "--study", "quick"]) == 0
    table = capsys.readouterr().out
    assert "| trial" in table
    # the knee is starred, as in search's table: exactly one front row carries it
    starred = [line for line in table.splitlines() if line.startswith("|") and "*" in line.split("|")[1]]
    assert len(starred) == 1, table


def test_resume_adds_completed_trials(quick_study: tuple[str, Path], tmp_path: Path) -> None:
    # on a copy: the shared study keeps its 10 trials for the tests that count them, in any order
    _, shared_out = quick_study
    shutil.copy(shared_out / "study.db", tmp_path / "study.db")
    storage, out = f"sqlite:///{tmp_path / 'study.db'}", tmp_path / "out"
    assert len(completed(storage)) == 10
    assert main(["search", QUICK, "--n-trials", "4", "--out", str(out), "--storage", storage]) == 0
    assert len(completed(storage)) == 14
    # no --trials: the YAML's budget (10) is already met, so nothing runs
    assert main(["search", QUICK, "--out", str(out), "--storage", storage]) == 0
    assert len(completed(storage)) == 14


def test_resume_on_other_data_is_refused(quick_study: tuple[str, Path], tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    storage, out = quick_study
    before = len(completed(storage))
    npz = tmp_path / "other.npz"
    np.savez(npz, images=np.random.default_rng(0).integers(0, 256, (60, 8, 8), dtype=np.uint8))
    assert main(["search", QUICK, "--n-trials", "1", "--out", str(out), "--storage", storage,
                 "--dataset", f"npz:{npz}#images"]) == 1
    err = capsys.readouterr().err
    assert "was searched on dataset 'digits'" in err and f"npz:{npz}#images" in err and "another --study" in err
    assert len(completed(storage)) == before


def test_unknown_study_is_a_clear_error(quick_study: tuple[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    storage, _ = quick_study
    assert main(["front", "--storage", storage, "--study", "nope"]) == 1
    assert "no study 'nope'" in capsys.readouterr().err


def test_search_on_npz_images(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    # blobs on a 12x12 canvas: structured enough to learn, not digits
    images = np.zeros((300, 12, 12), dtype=np.uint8)
    for img in images:
        r, c = rng.integers(2, 10, size=2)
        img[r - 2:r + 2, c - 2:c + 2] = 255
    npz = tmp_path / "blobs.npz"
    np.savez(npz, images=images)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["search", QUICK, "--n-trials", "2", "--out", str(tmp_path), "--storage", storage,
                 "--study", "blobs", "--dataset", f"npz:{npz}#images"]) == 0
    trials = completed(storage, "blobs")
    assert len(trials) == 2
    assert trials[0].user_attrs[RECORD_ATTR]["data"]["input_shape"] == [1, 12, 12]


def test_plugins_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by_name = {(r["kind"], r["name"]): r for r in rows}
    mlp = by_name[("architecture", "mlp")]
    assert mlp["plugin"] == "vae_automl.builtin.architectures" and mlp["version"]
    assert any(p["name"] == "latent_dim" and p["minimum"] == 1 for p in mlp["params"])
    assert by_name[("objective", "size_bytes")]["direction"] == "minimize"
    assert {("dataset", n) for n in ("digits", "mnist", "fashion-mnist", "kmnist", "npz", "idx")} <= set(by_name)


def test_bad_space_exits_with_named_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("architecture:\n  mlp:\n    latent_dim: 0\n")
    assert main(["search", str(bad), "--out", str(tmp_path)]) == 1
    assert "bad.yaml: architecture.mlp.latent_dim: `latent_dim` must be in [1, 512], but got latent_dim=0" in capsys.readouterr().err
