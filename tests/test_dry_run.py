"""search --dry-run: the resolved space, parameter counts and sizes, and nothing trained."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vae_automl.cli import main
from vae_automl.config import load_space_text
from vae_automl.packing import serialize_model
from vae_automl.preview import dry_run
from vae_automl.registry import get_registry

SPACE = """
name: dry
dataset: digits
architecture:
  mlp:
    hidden_layers: 1
    hidden_width: {low: 16, high: 32}
    latent_dim: 2
training:
  epochs: 3
  lr: {low: 1.0e-3, high: 1.0e-2, log: true}
compressors:
  - {name: uniform, optional: true, params: {bits: {low: 4, high: 8}}}
objectives: [test_elbo_nats, size_bytes]
trials: 7
"""


def mlp_params(width: int) -> int:
    # 64 -> width -> (mu, logvar: 2 each) ; 2 -> width -> 64, weights and biases
    return (64 * width + width) + 2 * (width * 2 + 2) + (2 * width + width) + (width * 64 + 64)


def test_dry_run_reports_the_space_and_sizes_without_training(monkeypatch: pytest.MonkeyPatch) -> None:
    import vae_automl.train

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a dry run trained a model")

    monkeypatch.setattr(vae_automl.train, "train", no_training)
    result = dry_run(load_space_text(SPACE, "dry.yaml"), samples=40)
    searched = {p.key: p for p in result.searched}
    assert set(searched) == {"mlp.hidden_width", "training.lr", "compressor0", "compressor0.uniform.bits"}
    assert (searched["mlp.hidden_width"].low, searched["mlp.hidden_width"].high) == (16, 32)
    assert searched["training.lr"].log and searched["compressor0"].choices == ("uniform", "none")
    assert result.fixed["training.epochs"] == 3 and result.fixed["mlp.latent_dim"] == 2
    assert (result.params_min, result.params_max) == (mlp_params(16), mlp_params(32))
    assert result.input_shape == [1, 8, 8] and result.n_images == 1797 and result.trials == 7

    arch = get_registry().architectures.get("mlp")
    params = {"hidden_layers": 1, "latent_dim": 2, "activation": "relu", "likelihood": "bernoulli", "width_decay": 1.0}
    largest = arch.build(arch.config_from_params({**params, "hidden_width": 32}, (1, 8, 8)))
    smallest = arch.build(arch.config_from_params({**params, "hidden_width": 16}, (1, 8, 8)))
    assert result.size_bytes_max == len(serialize_model(largest))  # the uncompressed file, measured
    overhead = len(serialize_model(smallest)) - 4 * mlp_params(16)
    assert result.size_bytes_min == overhead + mlp_params(16) * 4 // 8  # 4 bits, the fewest the space allows


def test_cli_dry_run_json_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    space = tmp_path / "dry.yaml"
    space.write_text(SPACE)
    monkeypatch.chdir(tmp_path)
    assert main(["search", str(space), "--dry-run", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"] == {"min": mlp_params(16), "max": mlp_params(32)}
    assert {"key": "compressor0.uniform.bits", "kind": "int", "low": 4, "high": 8} in data["searched"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dry.yaml"]  # no runs/ folder, no study
    assert main(["search", str(space), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "mlp.hidden_width" in text and f"model parameters: {mlp_params(16):,} .. {mlp_params(32):,}" in text
    assert "nothing was trained" in text


@pytest.mark.parametrize(
    ("epochs", "sampler", "note"),
    [
        ("{low: 2, high: 9, step: 3}", "auto", "training.epochs: hvi trains every trial for 8 epochs, the top of the range,"),
        ("{choices: [6, 12, 3]}", "hvi", "training.epochs: hvi trains every trial for 12 epochs, the top of the range,"),
        ("{low: 2, high: 9}", "{name: hvi, full_epochs: false}", None),
        ("{low: 2, high: 9}", "tpe", None),
    ],
)
def test_dry_run_says_when_hvi_holds_epochs_at_the_top(epochs: str, sampler: str, note: str | None) -> None:
    """A searched training.epochs is listed as searched; the note says hvi first trains every trial at its top."""
    text = SPACE.replace("epochs: 3", f"epochs: {epochs}") + f"sampler: {sampler}\n"
    result = dry_run(load_space_text(text, "dry.yaml"), samples=4)
    assert "training.epochs" in {p.key for p in result.searched}
    notes = [n for n in result.notes if n.startswith("training.epochs")]
    if note is None:
        assert notes == []
    else:
        assert len(notes) == 1 and notes[0].startswith(note), notes


@pytest.mark.parametrize(
    ("sampler", "says_it"),
    [("auto", True), ("hvi", True), ("{name: hvi, recompress: false}", False), ("tpe", False)],
)
def test_dry_run_says_when_hvi_recompresses_trained_bases(sampler: str, says_it: bool) -> None:
    result = dry_run(load_space_text(SPACE + f"sampler: {sampler}\n", "dry.yaml"), samples=4)
    notes = [n for n in result.notes if n.startswith("compressors: hvi also runs recompressions")]
    assert len(notes) == (1 if says_it else 0)
