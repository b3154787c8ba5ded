"""Issue 16's weak cases: each careless input is a clear error naming the file, key, value or plugin, never a traceback."""

from __future__ import annotations

import importlib.metadata
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vae_automl import trial as trial_mod
from vae_automl import trial_torch
from vae_automl.api import search
from vae_automl.cli import main
from vae_automl.config import load_space, load_space_text
from vae_automl.data import MIN_TRAIN_IMAGES, SplitConfig, make_splits, split_indices, to_unit_float
from vae_automl.errors import ConfigError, DataError, PluginError, TrialFailed, VaeAutomlError
from vae_automl.plugin_manager import DISABLE_AUTOLOAD_ENV, EXTRA_PLUGINS_ENV, new_plugin_manager
from vae_automl.registry import get_registry
from vae_automl.space import resolve
from vae_automl.study import check_limits, open_storage, open_study

SPACE = """
dataset: {spec: digits, split: {test: 0.2, validation: 0.1, limit: 300}}
device: cpu
architecture:
  mlp: {hidden_layers: 1, hidden_width: 16, latent_dim: 2}
training: {epochs: 1, batch_size: 64, lr: {low: 1.0e-3, high: 1.0e-2}}
objectives: [test_elbo_nats, size_bytes]
record: []
"""


def error_of(text: str, file: str = "s.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        load_space_text(text, file)
    return str(info.value)


# --- the YAML ---

def test_non_utf8_yaml_names_the_file_and_the_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(SPACE.encode() + "# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text \(byte 0xe9 at offset \d+\); save it as UTF-8"):
        load_space(path)
    assert main(["search", str(path), "--out", str(tmp_path / "o")]) == 1


@pytest.mark.parametrize("value, message", [
    ("5", "s.yaml: teacher: expected the path of a saved model (.safetensors), got 5"),
    ("''", "s.yaml: teacher: expected the path of a saved model (.safetensors), got ''"),
    ("[a]", "got ['a']"),
])
def test_teacher_must_be_a_path(value: str, message: str) -> None:
    assert message in error_of(SPACE + f"teacher: {value}\n")


def test_teacher_that_is_not_a_model_names_the_key_and_file(tmp_path: Path) -> None:
    from vae_automl.plugin_manager import get_plugin_manager

    notes = tmp_path / "notes.safetensors"
    notes.write_text("not a model")
    space = load_space_text(SPACE + f"teacher: {notes}\n", "s.yaml")
    with pytest.raises(VaeAutomlError, match=rf"s\.yaml: teacher: {notes} is not a model saved by vae-automl"):
        trial_mod.prepare(space, tmp_path / "out", get_registry(), get_plugin_manager())


@pytest.mark.parametrize("split, key, message", [
    ("{seed: abc}", "seed", "`seed` must be an integer, but got seed='abc'"),
    ("{seed: -1}", "seed", "`seed` must be"),
    ("{seed: 1.5}", "seed", "`seed` must be an integer"),
    ("{shuffle: 'yes'}", "shuffle", "expected true or false, got 'yes'"),
    ("{limit: 2}", "limit", "`limit` must be"),
    ("{limit: ten}", "limit", "`limit` must be an integer"),
    ("{test: '0.2'}", "test", "(a string: drop the quotes)"),
])
def test_split_values_are_typed(split: str, key: str, message: str) -> None:
    text = SPACE.replace("split: {test: 0.2, validation: 0.1, limit: 300}", f"split: {split}")
    error = error_of(text)
    assert f"s.yaml: dataset.split.{key}: " in error and message in error


def test_split_boundaries_pass() -> None:
    text = SPACE.replace("split: {test: 0.2, validation: 0.1, limit: 300}", "split: {seed: 0, limit: 3, shuffle: false}")
    assert load_space_text(text, "s.yaml").dataset.split == SplitConfig(seed=0, limit=3, shuffle=False)


@pytest.mark.parametrize("value", ['"10"', "'10'", '"ten"'])
def test_a_quoted_number_is_refused(value: str) -> None:
    error = error_of(SPACE.replace("epochs: 1,", f"epochs: {value},"))
    assert "s.yaml: training.epochs: `epochs` must be an integer, but got epochs=" in error


@pytest.mark.parametrize("value, expected", [("1e-3", 1e-3), ("5E-4", 5e-4), ("0.01", 0.01), ("1.0e-2", 1e-2)])
def test_exponent_numbers_yaml_leaves_as_strings_still_load(value: str, expected: float) -> None:
    space = load_space_text(SPACE.replace("lr: {low: 1.0e-3, high: 1.0e-2}", f"lr: {value}"), "s.yaml")
    assert space.training["lr"].value == expected


# --- limits and budgets, checked up front ---

@pytest.mark.parametrize("trials, timeout, message", [
    (-1, None, "trials (--n-trials) must be a whole number >= 0, but got -1"),
    (1.5, None, "but got 1.5"),
    (True, None, "but got True"),
    (None, -5.0, "timeout (--timeout) must be a finite number of seconds > 0, but got -5.0"),
    (None, 0, "but got 0"),
    (None, math.nan, "but got nan"),
    (None, math.inf, "but got inf"),
])
def test_bad_trial_counts_and_timeouts_are_refused(trials: Any, timeout: Any, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_limits(trials, timeout)
    assert message in str(info.value)


def test_limit_boundaries_pass() -> None:
    check_limits(0, 1e-3)
    check_limits(None, None)


def test_search_checks_limits_before_loading_anything(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--timeout"):
        search(tmp_path / "missing.yaml", timeout_s=math.nan, out_dir=tmp_path / "o", show_progress=False)
    assert not (tmp_path / "o").exists()
    assert main(["search", str(tmp_path / "missing.yaml"), "--timeout", "nan"]) == 1


def test_an_out_folder_that_cannot_be_created_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    space = tmp_path / "s.yaml"
    space.write_text(SPACE)
    with pytest.raises(ConfigError, match=r"--out .*file: is a file, not a folder"):
        search(space, out_dir=blocker, show_progress=False)
    with pytest.raises(ConfigError, match=r"--out .*file/sub: cannot create the output folder"):
        search(space, out_dir=blocker / "sub", show_progress=False)


# --- storages ---

def test_a_corrupt_journal_names_the_file(tmp_path: Path) -> None:
    journal = tmp_path / "study.journal"
    journal.write_bytes(b"\xff\xfe garbage\n")
    with pytest.raises(ConfigError, match=rf"journal file {journal} is corrupt"):
        open_storage(f"journal:{journal}")


@pytest.mark.parametrize("url", ["sqlite:///{p}/typo.db", "journal:{p}/typo.journal", "sqlite:///{p}/sub/typo.db"])
def test_reading_a_mistyped_storage_creates_nothing(tmp_path: Path, url: str) -> None:
    url = url.format(p=tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        open_study(url, "x")
    assert list(tmp_path.iterdir()) == []
    assert main(["front", "--storage", url, "--study", "x"]) == 1
    assert main(["worker", "--storage", url, "--study", "x"]) == 1
    assert list(tmp_path.iterdir()) == []


# --- data ---

@pytest.mark.parametrize("shape", [(20, 1, 1, 1), (20, 1, 28, 1), (20, 3, 1, 8)])
def test_one_pixel_images_are_refused(shape: tuple[int, ...]) -> None:
    with pytest.raises(DataError, match=r"src: images of \d+x\d+ pixels .* at least 2x2"):
        to_unit_float(np.zeros(shape, dtype=np.uint8), "src")
    assert to_unit_float(np.zeros((20, 1, 2, 2), dtype=np.uint8), "src").shape == (20, 1, 2, 2)


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_images_without_channels_are_refused(dtype: type) -> None:
    """A zero-length channel axis (found by test_fuzz): named, not numpy's 'zero-size array' from the range check."""
    with pytest.raises(DataError, match=r"src: images of shape \(1, 0, 2, 2\) have no channels"):
        to_unit_float(np.zeros((1, 0, 2, 2), dtype=dtype), "src")


def test_too_few_training_images_are_refused_naming_the_keys() -> None:
    n = MIN_TRAIN_IMAGES + 2  # one test and one validation image leave exactly the minimum
    assert len(split_indices(n, SplitConfig(test=1, validation=1))[0]) == MIN_TRAIN_IMAGES
    with pytest.raises(DataError, match=r"dataset 'tiny': dataset\.split leaves only 7 training images \(at least 8"):
        make_splits(np.zeros((n, 1, 4, 4), dtype=np.float32), SplitConfig(test=2, validation=1), "cpu", spec="tiny")
    with pytest.raises(DataError, match=r"3 images, split\.test=0\.2 gives 1, split\.validation=0\.1 gives 0"):
        split_indices(3, SplitConfig())


def test_an_oversized_split_names_the_keys() -> None:
    with pytest.raises(DataError, match=r"leaves no training images .* split\.test=5000 gives 5000"):
        split_indices(1797, SplitConfig(test=5000))


# --- plugins ---

def test_a_plugin_with_a_syntax_error_names_module_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "broken_syntax_plugin.py").write_text("x = 1\ndef f(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match=r"--plugin: plugin module 'broken_syntax_plugin' has a syntax error: "
                                          r".*broken_syntax_plugin\.py:2: "):
        new_plugin_manager(("broken_syntax_plugin",), autoload=False)
    assert main(["plugins", "--plugin", "broken_syntax_plugin"]) == 1


@pytest.mark.parametrize("value", ["", " , ", ","])
def test_an_empty_plugins_variable_loads_nothing(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EXTRA_PLUGINS_ENV, value)
    assert len(new_plugin_manager(autoload=False).get_plugins()) == len(new_plugin_manager((), autoload=False).get_plugins())


@pytest.mark.parametrize("value", ["plugins/my_plugin.py", "/abs/path", "my_plugin.py"])
def test_a_path_in_the_plugins_variable_is_named(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(EXTRA_PLUGINS_ENV, value)
    with pytest.raises(PluginError, match=rf"\$VAE_AUTOML_PLUGINS: '{value}' is not a module path"):
        new_plugin_manager(autoload=False)


def test_a_broken_installed_plugin_is_named_with_the_switch_to_skip_it(monkeypatch: pytest.MonkeyPatch) -> None:
    class FakeDist:
        entry_points = [importlib.metadata.EntryPoint(name="broken-ep", value="no_such_module_xyz", group="vae_automl")]
        metadata = {"name": "vae-automl-broken"}
        version = "1.0"

    monkeypatch.setattr(importlib.metadata, "distributions", lambda: [FakeDist()])
    with pytest.raises(PluginError) as info:
        new_plugin_manager(autoload=True)
    message = str(info.value)
    assert "installed plugin 'broken-ep' (entry point broken-ep = no_such_module_xyz) failed to load" in message
    assert f"set {DISABLE_AUTOLOAD_ENV}=1" in message
    assert new_plugin_manager(autoload=False)  # the switch does skip it


# --- one trial: cache, memory, time ---

@pytest.fixture
def env(tmp_path: Path) -> Any:
    from vae_automl.plugin_manager import get_plugin_manager

    space = load_space_text(SPACE, "s.yaml")
    return space, trial_mod.prepare(space, tmp_path, get_registry(), get_plugin_manager())


def test_a_truncated_cache_file_is_named_and_rebuilt(env: Any) -> None:
    space, e = env
    spec = resolve(space, {"training.lr": 0.005})
    first = trial_mod.run_trial(e, spec, 0)
    weights = e.cache_dir / f"base-{first.base.cache_key}.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.warns(UserWarning, match=rf"{weights}: the cached base model cannot be read .* training it again"):
        again = trial_mod.run_trial(e, spec, 1)
    assert not again.base.cache_hit and again.metrics["test_elbo_nats"] == pytest.approx(first.metrics["test_elbo_nats"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert trial_mod.run_trial(e, spec, 2).base.cache_hit  # rebuilt whole


def test_a_model_too_big_for_memory_fails_before_it_is_built(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    space, e = env
    arch = e.registry.architectures.get("mlp")
    config = arch.config_from_params(resolve(space, {"training.lr": 0.004}).architecture_params, e.data.input_shape)
    n_params = sum(p.numel() for p in arch.build(config).parameters())
    need = n_params * trial_torch.BYTES_PER_TRAINED_PARAM
    monkeypatch.setattr(trial_torch, "available_memory_bytes", lambda device: need)
    trial_torch.check_memory(arch, config, e.device)  # exactly enough passes
    monkeypatch.setattr(trial_torch, "available_memory_bytes", lambda device: need - 1)
    with pytest.raises(TrialFailed, match=rf"the model has {n_params:,} parameters: training needs about"):
        trial_torch.check_memory(arch, config, e.device)
    with pytest.raises(TrialFailed, match="narrow the architecture's ranges"):
        trial_mod.run_trial(e, resolve(space, {"training.lr": 0.004}), 0)


def test_max_seconds_bounds_the_stages_after_training(env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    space, e = env
    trial_mod.run_trial(e, resolve(space, {"training.lr": 0.005}), 0)  # the base is cached: no training below
    real = trial_mod.compress

    def slow_compress(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.3)
        return real(*args, **kwargs)

    monkeypatch.setattr(trial_mod, "compress", slow_compress)
    spec = resolve(space, {"training.lr": 0.005})
    spec.training["max_seconds"] = 0.2
    with pytest.raises(TrialFailed, match=r"ran past training\.max_seconds=0\.2 s while compressing"):
        trial_mod.run_trial(e, spec, 1)
    spec.training["max_seconds"] = 30.0
    assert trial_mod.run_trial(e, spec, 2).base.cache_hit  # a limit not reached changes nothing


def test_the_runs_timeout_stops_a_running_trial(env: Any) -> None:
    space, e = env
    e.deadline = time.monotonic() - 1  # the run's --timeout ran out
    with pytest.raises(TrialFailed, match="ran past the run's --timeout before training the base model"):
        trial_mod.run_trial(e, resolve(space, {"training.lr": 0.006}), 0)


def test_a_bad_entry_in_a_manifest_stays_refused_as_before(tmp_path: Path) -> None:
    # the manifest's own digest is checked after its shape: a hand-written one still gets the shape's message
    from vae_automl.loading import read_manifest

    (tmp_path / "manifest.json").write_text(json.dumps({"format": "vae-automl-export", "manifest_version": 2,
                                                        "files": {"weights.safetensors": {"sha256": "ab"}}}))
    with pytest.raises(VaeAutomlError, match=r"manifest_sha256 \(missing\); manifest.json was edited after export"):
        read_manifest(tmp_path)


@pytest.mark.parametrize("text, key", [("timeout_s: 0\n", "timeout_s"), ("timeout_s: -1\n", "timeout_s")])
def test_a_yaml_timeout_that_allows_no_trial_is_refused(text: str, key: str) -> None:
    assert f"s.yaml: {key}: `{key}` must be" in error_of(SPACE + text)
    assert load_space_text(SPACE + "timeout_s: 0.001\n", "s.yaml").timeout_s == 0.001


def test_a_max_seconds_that_allows_no_training_is_refused() -> None:
    text = SPACE.replace("epochs: 1,", "epochs: 1, max_seconds: 0,")
    assert "s.yaml: training.max_seconds: `max_seconds` must be in [0.001," in error_of(text)
    assert load_space_text(text.replace("max_seconds: 0,", "max_seconds: 0.001,"), "s.yaml")


def test_the_ray_trainable_stops_at_the_drivers_timeout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tune = pytest.importorskip("ray.tune")
    from vae_automl.backends import ray as ray_backend

    reports: list[dict[str, Any]] = []
    monkeypatch.setattr(tune, "report", lambda metrics, **_: reports.append(metrics))
    space = load_space_text(SPACE, "s.yaml")
    args = dict(source=space.source, file="s.yaml", dataset=space.dataset, device="cpu", out_dir=str(tmp_path))
    config = {"training.lr": 0.005, ray_backend.NUMBER_KEY: 0}
    ray_backend._trainable(config, **args, deadline_unix_s=time.time() - 1)
    assert reports[-1][ray_backend.FAILURE_KEY] == "the trial ran past the run's --timeout before training the base model"
    ray_backend._trainable(config, **args, deadline_unix_s=time.time() + 600)
    assert ray_backend.FAILURE_KEY not in reports[-1] and reports[-1]["test_elbo_nats"] > 0


@pytest.mark.parametrize("name", ["[]", "{a: 1}"])
def test_a_pruner_name_that_is_not_a_string_is_named(name: str) -> None:
    # hypothesis found `pruner: {name: []}` raising TypeError (unhashable) before the name's own check
    assert "s.yaml: pruner.name" in error_of(SPACE + f"pruner: {{name: {name}}}\n")
