from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from vae_automl.config import load_space, load_space_text
from vae_automl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """
architecture:
  mlp:
    latent_dim: {low: 2, high: 8}
"""


def error_of(text: str, file: str = "quick.yaml") -> str:
    with pytest.raises(ConfigError) as info:
        load_space_text(text, file)
    return str(info.value)


def test_shipped_spaces_load() -> None:
    paths = sorted((REPO / "search_spaces").glob("*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        space = load_space(path)
        raw = yaml.safe_load(path.read_text())
        # what the file says, not a default every space has
        assert space.name == raw["name"], path
        if "objectives" in raw:
            assert list(space.objectives) == raw["objectives"], path


def test_minimal_space_defaults() -> None:
    space = load_space_text(MINIMAL, "m.yaml")
    assert space.name == "m"
    assert space.dataset.spec == "digits"
    assert space.objectives == ("test_elbo_nats", "size_bytes")
    latent = space.architectures[0].params["latent_dim"]
    assert (latent.kind, latent.low, latent.high) == ("int", 2, 8)
    assert space.architectures[0].params["hidden_width"].value == 400
    assert "latency_ms" in space.record


def test_value_below_minimum_names_file_and_key() -> None:
    message = error_of("architecture:\n  mlp:\n    latent_dim: 0\n")
    assert message == "quick.yaml: architecture.mlp.latent_dim: `latent_dim` must be in [1, 512], but got latent_dim=0"


def test_range_bound_below_minimum() -> None:
    message = error_of("architecture:\n  mlp:\n    latent_dim: {low: 0, high: 4}\n")
    assert message == "quick.yaml: architecture.mlp.latent_dim.low: `latent_dim` must be in [1, 512], but got latent_dim=0"


def test_unknown_architecture_lists_valid_ones() -> None:
    message = error_of("architecture:\n  transformer: {}\n")
    assert "architecture.transformer" in message and "conv" in message and "mlp" in message


def test_unknown_parameter_lists_parameters() -> None:
    message = error_of("architecture:\n  mlp:\n    latnet_dim: 4\n")
    assert "architecture.mlp.latnet_dim" in message and "latent_dim" in message


def test_unknown_top_level_key() -> None:
    assert "quick.yaml: trails: unknown key" in error_of(MINIMAL + "trails: 3\n")


def test_bad_choice_and_types() -> None:
    assert "activation" in error_of("architecture:\n  mlp:\n    activation: swish\n")
    assert "an integer" in error_of("architecture:\n  mlp:\n    hidden_layers: 1.5\n")
    assert "low 8 is above high 2" in error_of("architecture:\n  mlp:\n    latent_dim: {low: 8, high: 2}\n")
    assert "log range needs low > 0" in error_of("training:\n  beta: {low: 0, high: 1, log: true}\n" + MINIMAL)
    assert "sampler.name" in error_of(MINIMAL + "sampler: cmaes\n")
    assert "objectives.1" in error_of(MINIMAL + "objectives: [test_elbo_nats, accuracy]\n")


@pytest.mark.parametrize("bounds, key", [("{low: null, high: 8}", "low"), ("{low: 2, high: null}", "high")])
def test_a_null_range_end_of_a_nullable_parameter_is_refused_by_key(bounds: str, key: str) -> None:
    # bits_heads may be null (unset) as a value; as a range end it crashed with a TypeError (found by test_fuzz)
    text = MINIMAL + f"compressors:\n  - {{name: uniform, params: {{bits: 4, bits_heads: {bounds}}}}}\n"
    message = error_of(text)
    assert f"quick.yaml: compressors.0.params.bits_heads.{key}: a range needs a number" in message
    assert "bits_heads: null" in message
    assert load_space_text(MINIMAL + "compressors:\n  - {name: uniform, params: {bits: 4, bits_heads: null}}\n", "q.yaml")


def test_exponent_written_without_dot_is_a_number() -> None:
    space = load_space_text(MINIMAL + "training:\n  lr: {low: 1e-4, high: 1e-2, log: true}\n", "m.yaml")
    lr = space.training["lr"]
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True)


def test_search_keyword_takes_whole_range() -> None:
    space = load_space_text("architecture:\n  mlp:\n    activation: search\n    hidden_layers: search\n", "m.yaml")
    params = space.architectures[0].params
    assert set(params["activation"].choices) >= {"relu", "gelu"}
    assert (params["hidden_layers"].low, params["hidden_layers"].high) == (0, 6)


def test_preset_fills_constants() -> None:
    space = load_space_text("architecture:\n  mlp:\n    preset: seed_784_400_20\n", "m.yaml")
    params = space.architectures[0].params
    assert params["hidden_width"].value == 400 and params["latent_dim"].value == 20
    assert "unknown preset" in error_of("architecture:\n  mlp:\n    preset: huge\n")


def test_missing_file_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("architecture: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_space(bad)


def test_split_validation() -> None:
    assert "dataset.split.test" in error_of(MINIMAL + "dataset: {spec: digits, split: {test: -1}}\n")
    assert "dataset.spec" in error_of(MINIMAL + "dataset: {spec: 'nosuch:x'}\n")


def test_median_pruner_of_0_1_runs_the_pareto_rule_with_a_warning() -> None:
    text = MINIMAL + "pruner: {name: median, warmup_epochs: 4, min_trials: 8, percentile: 60}\n"
    with pytest.warns(FutureWarning, match=r"old\.yaml: pruner\.name: 'median' was replaced in 0\.2 by 'pareto'"):
        space = load_space_text(text, "old.yaml")
    assert (space.pruner.name, space.pruner.warmup_epochs, space.pruner.min_trials) == ("pareto", 4, 8)
    # percentile means nothing to the pareto rule: refused there rather than silently ignored
    assert "quick.yaml: pruner.percentile" in error_of(MINIMAL + "pruner: {name: pareto, percentile: 60}\n")


def test_asha_scheduler_of_0_1_runs_pareto(capsys: pytest.CaptureFixture[str]) -> None:
    from vae_automl.cli import _scheduler

    assert _scheduler("asha") == "pareto"
    assert "--scheduler asha was replaced in 0.2 by --scheduler pareto" in capsys.readouterr().err
    assert (_scheduler("none"), _scheduler(None)) == ("none", None)


def test_a_minimal_space_gets_every_documented_default() -> None:
    """The defaults are the dataclasses' own (documented there), not numbers parse_space repeats: every one checked."""
    from vae_automl.config import (
        TRAINING_PARAMS,
        DatasetConfig,
        LatencyConfig,
        ParamSpace,
        PrunerConfig,
        SamplerConfig,
        SearchSpace,
        TrackingConfig,
    )

    space = load_space_text(MINIMAL, "m.yaml")
    assert space.dataset == DatasetConfig()
    assert space.sampler == SamplerConfig() and space.pruner == PrunerConfig() and space.latency == LatencyConfig()
    assert space.tracking == TrackingConfig()
    assert space.training == {p.name: ParamSpace(p.name, "const", p.default) for p in TRAINING_PARAMS}
    fields = SearchSpace.__dataclass_fields__
    for key in ("trials", "timeout_s", "device", "seed", "teacher", "base_model", "reference_point", "targets", "stop_when",
                "task", "needs_labels"):
        assert getattr(space, key) == fields[key].default, key
    assert space.compressors == () and space.source == MINIMAL and space.path == "m.yaml"
    # every built-in figure a VAE can be measured by that is not optimized, in the registry's order (a plugin an
    # earlier test loaded, such as vae_automl.testing.synthetic, may add its own)
    from vae_automl.registry import get_registry

    builtin = [n for n in space.record if get_registry().objectives.plugin_of(n).startswith("vae_automl.builtin.")]
    assert builtin == ["latency_ms", "params", "recon_error", "size_bytes_amortized", "theoretical_bits"]


EVERY_KEY = """
name: every-key
task: vae
dataset:
  spec: digits
  data_dir: /data/digits
  download: true
  split: {validation: 0.25, test: 0.3, seed: 5, shuffle: false, limit: 50}
  image_size: 6
  color: grey
architecture:
  mlp: {preset: seed_784_400_20, latent_dim: 3}
training: {epochs: 4, batch_size: 32, lr: 0.01, lr_schedule: cosine, finetune_lr_schedule: cosine, beta: 0.5,
  weight_decay: 0.001, patience: 2, capture: "off", max_seconds: 60}
compressors:
  - {name: magnitude_prune, params: {sparsity: 0.5}}
  - {choices: [uniform, {name: kmeans, params: {bits: 3}}], optional: true}
objectives: [size_bytes, test_elbo_nats]
record: [params, test_elbo_nats]
sampler: {name: tpe, seed: 3, population_size: 6, n_startup_trials: 2, repeats: true}
pruner: {name: pareto, warmup_epochs: 3, min_trials: 5, reduction_factor: 4, score: compressed}
latency: {batch_size: 16, repeats: 7, warmup: 0, target: cpu}
trials: 0
timeout_s: 90.5
device: cpu
seed: 9
teacher: models/trial-0.safetensors
reference_point: {size_bytes: 1.0e+6, test_elbo_nats: 500}
targets: {params: {max: 5000, min: 10}, size_bytes: {max_relative_to_baseline: 0.5}}
stop_when: first_feasible
tracking: {mlflow: "sqlite:///runs.db", tensorboard: tb}
"""


def test_every_key_of_a_space_is_read_from_the_file() -> None:
    """Each key set away from its default, so a value read from the wrong key or left at its default shows."""
    from vae_automl.config import DatasetConfig, LatencyConfig, PrunerConfig, SamplerConfig, Target, TrackingConfig
    from vae_automl.data import SplitConfig

    space = load_space_text(EVERY_KEY, "every.yaml")
    assert space.name == "every-key" and space.task == "vae" and space.source == EVERY_KEY
    split = SplitConfig(validation=0.25, test=0.3, seed=5, shuffle=False, limit=50)
    assert space.dataset == DatasetConfig("digits", "/data/digits", True, split, (6, 6), "grey")
    (mlp,) = space.architectures
    assert mlp.name == "mlp" and mlp.preset == "seed_784_400_20" and mlp.params["latent_dim"].value == 3
    assert mlp.params["hidden_width"].value == 400  # from the preset; latent_dim above overrides its 20
    assert {k: p.value for k, p in space.training.items()} == {
        "epochs": 4, "batch_size": 32, "lr": 0.01, "lr_schedule": "cosine", "finetune_lr_schedule": "cosine", "beta": 0.5,
        "weight_decay": 0.001, "patience": 2, "capture": "off", "max_seconds": 60}
    prune, quantize = space.compressors
    assert [o.name for o in prune.options] == ["magnitude_prune"] and not prune.optional
    assert prune.options[0].params["sparsity"].value == 0.5
    assert [o.name for o in quantize.options] == ["uniform", "kmeans"] and quantize.optional
    assert quantize.options[1].params["bits"].value == 3
    assert space.objectives == ("size_bytes", "test_elbo_nats") and space.record == ("params",)
    assert space.sampler == SamplerConfig("tpe", 3, 6, 2, True)
    assert space.pruner == PrunerConfig("pareto", 3, 5, 4, "compressed")
    assert space.latency == LatencyConfig(16, 7, 0, "cpu")
    assert (space.trials, space.timeout_s, space.device, space.seed) == (0, 90.5, "cpu", 9)
    assert space.teacher == "models/trial-0.safetensors"
    assert space.reference_point == {"size_bytes": 1.0e6, "test_elbo_nats": 500.0}
    assert space.targets == (Target("params", "max", 5000.0), Target("params", "min", 10.0),
                             Target("size_bytes", "max_relative_to_baseline", 0.5))
    assert space.stop_when == "first_feasible"
    assert space.tracking == TrackingConfig("sqlite:///runs.db", "tb")
    assert space.base_model is None and not space.needs_labels


@pytest.mark.parametrize("dataset, message", [
    ("{spec: digits, bogus: 1}", "dataset.bogus: unknown key; valid keys: spec, data_dir, download, split, image_size, color"),
    ("{spec: 5}", "dataset.spec: expected a dataset spec string, got 5"),
    ("{image_size: 0}", "dataset.image_size: image_size must be a positive int or [height, width], but got [0, 0]"),
    ("{image_size: [3, x]}", "dataset.image_size: image_size must be a positive int or [height, width], but got [3, 'x']"),
])
def test_a_bad_dataset_section_names_the_key(dataset: str, message: str) -> None:
    assert error_of(f"architecture: {{mlp: {{latent_dim: 2}}}}\ndataset: {dataset}\n") == f"quick.yaml: {message}"


SPACE_WITH_MLP = "architecture: {mlp: {latent_dim: 2}}\n"


@pytest.mark.parametrize("text, message", [
    ('task: 5\narchitecture: {mlp: {latent_dim: 2}}\n', 'task: expected a task name, got 5'),
    ('base_model: 5\n', 'base_model: expected a mapping, got int 5'),
    ('name: x\n', 'architecture: at least one architecture is needed, e.g. architecture: {mlp: {latent_dim: {low: 2, high: 32}}}'),  # noqa: E501
    ('architecture: {base_model: {}}\n', "architecture.base_model: a user's model is given as base_model: {factory, checkpoint, ...}, not under architecture:"),  # noqa: E501
    ('architecture: {mlp: {preset: nope}}\n', "architecture.mlp.preset: unknown preset 'nope'; presets of 'mlp': seed_784_400_20"),  # noqa: E501
    (SPACE_WITH_MLP + 'training: {bogus: 1}\n', 'training.bogus: unknown key; valid keys: epochs, batch_size, lr, lr_schedule, finetune_lr_schedule, beta, weight_decay, patience, capture, max_seconds'),  # noqa: E501
    (SPACE_WITH_MLP + 'compressors: 5\n', 'compressors: expected a list of pipeline slots'),
    (SPACE_WITH_MLP + 'compressors: [{name: uniform, bogus: 1}]\n', 'compressors.0.bogus: unknown key; valid keys: name, params, optional, choices'),  # noqa: E501
    (SPACE_WITH_MLP + "compressors: [{name: uniform, optional: 'yes'}]\n", "compressors.0.optional: expected true or false, got 'yes'"),  # noqa: E501
    (SPACE_WITH_MLP + 'compressors: [{choices: [uniform], params: {}}]\n', 'compressors.0: give either name (and params) or choices, not both'),  # noqa: E501
    (SPACE_WITH_MLP + 'compressors: [{choices: [uniform], name: uniform}]\n', 'compressors.0: give either name (and params) or choices, not both'),  # noqa: E501
    (SPACE_WITH_MLP + 'compressors: [{choices: []}]\n', 'compressors.0.choices: expected a non-empty list of {name, params}'),
    (SPACE_WITH_MLP + 'compressors: [{choices: uniform}]\n', 'compressors.0.choices: expected a non-empty list of {name, params}'),  # noqa: E501
    (SPACE_WITH_MLP + 'compressors: [{optional: true}]\n', 'compressors.0: a pipeline slot needs a compressor name (or choices)'),
    (SPACE_WITH_MLP + 'compressors: [{name: nosuch}]\n', "compressors.0.name: unknown compressor 'nosuch'"),
    (SPACE_WITH_MLP + 'compressors: [{choices: [uniform, uniform]}]\n', "compressors.0: a compressor appears twice among the choices: ['uniform', 'uniform']"),  # noqa: E501
    (SPACE_WITH_MLP + 'compressors: [{choices: [uniform, magnitude_prune]}]\n', "compressors.0: the choices of one slot must share a stage, got [('uniform', 'quantize'), ('magnitude_prune', 'prune')]"),  # noqa: E501
    (SPACE_WITH_MLP + 'compressors: [{choices: [{name: uniform, bogus: 1}]}]\n', 'compressors.0.choices.0.bogus: unknown key; valid keys: name, params'),  # noqa: E501
    (SPACE_WITH_MLP + 'compressors: [{choices: [uniform], bogus: 1}]\n', 'compressors.0.bogus: unknown key; valid keys: name, params, optional, choices'),  # noqa: E501
    (SPACE_WITH_MLP + 'compressors: [{name: uniform, params: 5}]\n', 'compressors.0.params: expected a mapping, got int 5'),
    (SPACE_WITH_MLP + 'compressors: [{choices: [{name: uniform, params: [4]}]}]\n', 'compressors.0.choices.0.params: expected a mapping, got list [4]'),  # noqa: E501
    (SPACE_WITH_MLP + 'objectives: []\n', 'objectives: expected a non-empty list of objective names'),
    (SPACE_WITH_MLP + 'objectives: size_bytes\n', 'objectives: expected a non-empty list of objective names'),
    (SPACE_WITH_MLP + 'objectives: [size_bytes, size_bytes]\n', "objectives: an objective is listed twice: ['size_bytes', 'size_bytes']"),  # noqa: E501
    (SPACE_WITH_MLP + 'objectives: [nosuch]\n', "objectives.0: unknown objective 'nosuch'"),
    (SPACE_WITH_MLP + 'record: size_bytes\n', 'record: expected a list of objective names to measure without optimizing'),
    (SPACE_WITH_MLP + 'record: [nosuch]\n', "record.0: unknown objective 'nosuch'"),
    (SPACE_WITH_MLP + 'sampler: {name: tpe, repeats: 1}\n', 'sampler.repeats: expected true or false, got 1'),
    (SPACE_WITH_MLP + 'sampler: {name: nosuch}\n', "sampler.name: `name` must be one of auto, hvi, gp, tpe, nsga2, random, but got name='nosuch'"),  # noqa: E501
    (SPACE_WITH_MLP + 'sampler: {name: tpe, full_epochs: true}\n', 'sampler.full_epochs: only hvi trains every trial for the top of training.epochs, and tpe is chosen; remove full_epochs or set name: hvi'),  # noqa: E501
    (SPACE_WITH_MLP + 'objectives: [test_elbo_nats, size_bytes, latency_ms]\nsampler: {full_epochs: true}\n', 'sampler.full_epochs: only hvi trains every trial for the top of training.epochs, and auto picks tpe for 3 objectives; remove full_epochs or set name: hvi'),  # noqa: E501
    (SPACE_WITH_MLP + 'sampler: {name: tpe, recompress: true}\n', 'sampler.recompress: only hvi recompresses trained bases, and tpe is chosen; remove recompress or set name: hvi'),  # noqa: E501
    (SPACE_WITH_MLP + 'sampler: {recompress: 1}\n', 'sampler.recompress: expected true or false, got 1'),
    (SPACE_WITH_MLP + 'sampler: {bogus: 1}\n', 'sampler.bogus: unknown key; valid keys: name, seed, population_size, n_startup_trials, repeats, full_epochs, recompress'),  # noqa: E501
    (SPACE_WITH_MLP + 'pruner: {name: pareto, percentile: 50}\n', 'pruner.percentile: `percentile` belonged to the 0.1 median rule; the pareto rule has warmup_epochs, min_trials and reduction_factor'),  # noqa: E501
    (SPACE_WITH_MLP + 'pruner: {name: pareto, bogus: 1}\n', 'pruner.bogus: unknown key; valid keys: name, warmup_epochs, min_trials, reduction_factor, score, percentile'),  # noqa: E501
    (SPACE_WITH_MLP + 'pruner: {name: [a]}\n', "pruner.name: `name` must be one of none, pareto, but got name=['a']"),
    (SPACE_WITH_MLP + 'latency: {bogus: 1}\n', 'latency.bogus: unknown key; valid keys: batch_size, repeats, warmup, target'),
    (SPACE_WITH_MLP + 'reference_point: {latency_ms: 1}\n', 'reference_point.latency_ms: unknown key; valid keys: test_elbo_nats, size_bytes'),  # noqa: E501
    (SPACE_WITH_MLP + 'targets: {nosuch: {max: 1}}\n', 'targets.nosuch: no such measured figure; targets may bound the objectives and record entries: test_elbo_nats, size_bytes, ...'),  # noqa: E501
    (SPACE_WITH_MLP + 'targets: {size_bytes: {}}\n', 'targets.size_bytes: expected one of max, min, max_relative_to_baseline, e.g. {max: 200000}'),  # noqa: E501
    (SPACE_WITH_MLP + 'targets: {size_bytes: {below: 1}}\n', 'targets.size_bytes.below: unknown key; valid keys: max, min, max_relative_to_baseline'),  # noqa: E501
    (SPACE_WITH_MLP + 'stop_when: first_feasible\n', 'stop_when: first_feasible needs targets to be feasible against'),
    (SPACE_WITH_MLP + 'stop_when: never\n', "stop_when: `stop_when` must be one of budget, first_feasible, but got stop_when='never'"),  # noqa: E501
    (SPACE_WITH_MLP + "tracking: {mlflow: ''}\n", "tracking.mlflow: expected a URI or folder (a non-empty string), got ''"),
    (SPACE_WITH_MLP + 'tracking: {wandb: x}\n', 'tracking.wandb: unknown key; valid keys: mlflow, tensorboard'),
    (SPACE_WITH_MLP + 'name: [x]\n', "name: expected a string, got ['x']"),
    (SPACE_WITH_MLP + "name: 'a b/c'\n", "name: a study name is a name, not a path (no '/', '\\', '.' or '..'), but got 'a b/c'"),
    (SPACE_WITH_MLP + 'trials: -1\n', 'trials: `trials` must be >= 0, but got trials=-1'),
    (SPACE_WITH_MLP + 'seed: x\n', "seed: `seed` must be an integer, but got seed='x'"),
    (SPACE_WITH_MLP + 'device: tpu\n', "device: device must be cpu, cuda, cuda:N, mps or auto, but got 'tpu'"),
    (SPACE_WITH_MLP + 'dataset: {color: blue}\n', "dataset.color: `color` must be one of grey, rgb, but got color='blue'"),
    (SPACE_WITH_MLP + 'dataset: {split: {shuffle: 2}}\n', 'dataset.split.shuffle: expected true or false, got 2'),
    (SPACE_WITH_MLP + 'dataset: {split: {bogus: 2}}\n', 'dataset.split.bogus: unknown key; valid keys: validation, test, seed, shuffle, limit'),  # noqa: E501
    (SPACE_WITH_MLP + 'dataset: nosuch\n', "dataset.spec: unknown dataset 'nosuch'"),
    (SPACE_WITH_MLP + 'bogus: 1\n', 'bogus: unknown key; valid keys: name, dataset, device, seed, architecture, training, compressors, objectives, record, sampler, pruner, latency, trials, timeout_s, teacher, reference_point, task, base_model, targets, stop_when, tracking'),  # noqa: E501
    ('5\n', 'expected a mapping, got int 5'),
    # the lower bounds of the numbers, each at the first value it refuses
    (SPACE_WITH_MLP + 'pruner: {min_trials: 0}\n', 'pruner.min_trials: `min_trials` must be >= 1, but got min_trials=0'),
    (SPACE_WITH_MLP + 'pruner: {reduction_factor: 1}\n', 'pruner.reduction_factor: `reduction_factor` must be >= 2, but got reduction_factor=1'),  # noqa: E501
    (SPACE_WITH_MLP + 'pruner: {warmup_epochs: 0}\n', 'pruner.warmup_epochs: `warmup_epochs` must be >= 1, but got warmup_epochs=0'),  # noqa: E501
    (SPACE_WITH_MLP + 'latency: {batch_size: 0}\n', 'latency.batch_size: `batch_size` must be >= 1, but got batch_size=0'),
    (SPACE_WITH_MLP + 'latency: {repeats: 0}\n', 'latency.repeats: `repeats` must be >= 1, but got repeats=0'),
    (SPACE_WITH_MLP + 'latency: {warmup: -1}\n', 'latency.warmup: `warmup` must be >= 0, but got warmup=-1'),
    (SPACE_WITH_MLP + 'sampler: {population_size: 1}\n', 'sampler.population_size: `population_size` must be >= 2, but got population_size=1'),  # noqa: E501
    (SPACE_WITH_MLP + 'sampler: {n_startup_trials: -1}\n', 'sampler.n_startup_trials: `n_startup_trials` must be >= 0, but got n_startup_trials=-1'),  # noqa: E501
    (SPACE_WITH_MLP + 'timeout_s: 0\n', 'timeout_s: `timeout_s` must be >= 0.001, but got timeout_s=0'),
    (SPACE_WITH_MLP + 'dataset: {split: {validation: abc}}\n', "dataset.split.validation: `validation` must be a number, but got validation='abc'"),  # noqa: E501
    (SPACE_WITH_MLP + 'task: nosuch\n', "task: unknown task 'nosuch'"),
    ('architecture: 5\n', 'architecture: expected a mapping, got int 5'),
    ('architecture: {mlp: 5}\n', 'architecture.mlp: expected a mapping, got int 5'),
    (SPACE_WITH_MLP + 'compressors: [{name: uniform, params: {bits: 99}}]\n', 'compressors.0.params.bits: `bits` must be in [1, 8], but got bits=99'),  # noqa: E501
    (SPACE_WITH_MLP + 'sampler: {seed: x}\n', "sampler.seed: `seed` must be an integer, but got seed='x'"),
    (SPACE_WITH_MLP + 'latency: {target: tpu}\n', "latency.target: device must be cpu, cuda, cuda:N, mps or auto, but got 'tpu'"),
])
def test_every_refusal_of_a_space_names_the_file_and_the_key(text: str, message: str) -> None:
    """One case per refusal of parse_space, each message read once and pinned: the key path, then what is wrong.

    A lookup's list of registered names is left out (plugins add to it).
    """
    got = error_of(text).removeprefix("quick.yaml: ")
    if "; registered:" in got:
        got = got.split("; registered:")[0]
    # the record entries after the objectives: whatever objectives the loaded plugins registered
    got = re.sub(r"(record entries: test_elbo_nats, size_bytes), .*", r"\1, ...", got)
    assert got == message


def test_a_pruner_without_a_name_keeps_the_default_rule_with_its_settings() -> None:
    from vae_automl.config import PrunerConfig

    space = load_space_text(SPACE_WITH_MLP + "pruner: {warmup_epochs: 3}\nsampler: {seed: 4}\n", "quick.yaml")
    assert space.pruner == PrunerConfig(name="none", warmup_epochs=3) and space.sampler.name == "auto"
    assert space.sampler.seed == 4
    # and at the bounds themselves, accepted
    space = load_space_text(SPACE_WITH_MLP + "pruner: {name: pareto, min_trials: 1, reduction_factor: 2, warmup_epochs: 1}\n"
                            "latency: {batch_size: 1, repeats: 1, warmup: 0}\nsampler: {population_size: 2, n_startup_trials: 0}\n"  # noqa: E501
                            "timeout_s: 0.001\n", "quick.yaml")
    assert (space.pruner.min_trials, space.pruner.reduction_factor, space.pruner.warmup_epochs) == (1, 2, 1)
    assert (space.latency.batch_size, space.latency.repeats, space.latency.warmup) == (1, 1, 0)
    assert (space.sampler.population_size, space.sampler.n_startup_trials, space.timeout_s) == (2, 0, 0.001)


BASE = 'base_model: {factory: "vae_automl.testing.user_model:build", checkpoint: ckpt.safetensors}\n'


def test_a_base_model_space_defers_the_groups_its_compressors_need_to_the_model() -> None:
    """The user's module is traced when it is loaded; parsing records which groups that trace must find."""

    def base_of(compressors: str, base: str = BASE, extra: str = "") -> Any:
        return load_space_text(base + f"compressors: {compressors}\n" + extra, "quick.yaml").base_model

    pruned = base_of("[structured_prune]")  # removes units: channel groups
    assert pruned is not None and (pruned.needs_channel_groups, pruned.needs_groups) == (True, False)
    per_group = base_of("[{name: uniform, params: {bits_encoder: 4}}]")  # per-group bits: layer groups
    assert (per_group.needs_channel_groups, per_group.needs_groups) == (False, True)
    given = base_of("[{name: uniform, params: {bits_encoder: 4}}]",
                    BASE.replace("}\n", ", groups: {encoder: [enc], heads: [fc_mu, fc_logvar], decoder: [dec]}}\n"))
    assert given.needs_groups is False and given.groups == {"encoder": ("enc",), "heads": ("fc_mu", "fc_logvar"),
                                                            "decoder": ("dec",)}
    # a distill stage's needs are its student's (an architecture: family), not the user's model's
    distilled = base_of("[{name: distill, params: {init: teacher}}]", extra="architecture: {mlp: {latent_dim: 2}}\n")
    assert (distilled.needs_channel_groups, distilled.needs_groups) == (False, False)
    both = base_of("[distill, structured_prune]", extra="architecture: {mlp: {latent_dim: 2}}\n")
    assert both.needs_channel_groups is True
    assert base_of("[]").needs_channel_groups is False


@pytest.mark.parametrize("text, message", [
    (BASE + "compressors: [distill]\n", "architecture: with base_model:, a distill stage trains a student of a built-in family "
     "named under architecture: (e.g. architecture: {conv: {base_channels: {low: 4, high: 16}}})"),
    (BASE + "architecture: {mlp: {latent_dim: 2}}\n", "architecture: with base_model:, architecture: names distillation "
     "students; add a distill stage to compressors: or remove architecture:"),
])
def test_a_base_model_space_refuses_students_without_distillation_and_back(text: str, message: str) -> None:
    assert error_of(text) == f"quick.yaml: {message}"


def test_a_slot_that_is_not_a_mapping_names_its_index() -> None:
    assert error_of(SPACE_WITH_MLP + "compressors: [5]\n") == "quick.yaml: compressors.0: expected a mapping, got int 5"


def test_plugin_components_the_space_cannot_use_are_refused_naming_them(register_plugin: Any) -> None:
    from test_layers import NoGroupsArchitecture

    from vae_automl import hookimpl
    from vae_automl.components import Compressor

    class Sharpen(Compressor):
        name = "sharpen"
        stage = "sharpening"  # no stage of the pipeline

        def apply(self, model: Any, params: dict[str, Any], ctx: Any) -> Any:
            return model

    class Plugin:
        @hookimpl
        def register_architectures(self, register: Any) -> None:
            register(NoGroupsArchitecture())

        @hookimpl
        def register_compressors(self, register: Any) -> None:
            register(Sharpen())

    register_plugin(Plugin(), name="odd-components")
    assert error_of(SPACE_WITH_MLP + "compressors: [sharpen]\n") == (
        "quick.yaml: compressors.0.name: compressor 'sharpen' has stage 'sharpening', not one of distill, prune, quantize, code")
    nogroups = "architecture: {nogroups: {hidden_width: 8, latent_dim: 2}}\n"
    assert error_of(nogroups + "compressors: [structured_prune]\n") == (
        "quick.yaml: compressors.0: compressor 'structured_prune' needs channel groups for its units it can remove, "
        "but architecture 'nogroups' declares none")
    # without base_model:, distillation starts the student from the teacher's units (init: teacher, the default): the
    # architecture's own channel groups, which nogroups lacks
    assert error_of(nogroups + "compressors: [distill]\n") == (
        "quick.yaml: compressors.0: compressor 'distill' needs channel groups for its units it can remove, "
        "but architecture 'nogroups' declares none")
    assert load_space_text(nogroups + "compressors: [{name: distill, params: {init: scratch}}]\n", "q.yaml").compressors
    # with base_model:, a distilled student starts from the teacher's units: the teacher's groups, not the student's
    space = load_space_text(BASE + nogroups + "compressors: [{name: distill, params: {init: teacher}}]\n", "quick.yaml")
    assert [a.name for a in space.architectures] == ["nogroups"]


def test_a_split_without_a_limit_may_say_so() -> None:
    space = load_space_text(SPACE_WITH_MLP + "dataset: {split: {limit: null, validation: 0.2}}\n", "quick.yaml")
    assert space.dataset.split.limit is None and space.dataset.split.validation == 0.2


def test_a_space_parsed_from_data_keeps_no_text_and_a_spec_with_an_argument_names_its_dataset() -> None:
    """``parse_space`` on a YAML document already read (no file text): ``source`` stays empty, so a worker
    re-reads nothing stale; a spec ``name:argument`` (npz:/path#key) is looked up by its name alone."""
    from vae_automl.config import parse_space
    from vae_automl.registry import get_registry

    data = yaml.safe_load(SPACE_WITH_MLP + "dataset: {spec: 'npz:/data/x.npz#images'}\n")
    space = parse_space(data, "d.yaml", get_registry())
    assert space.source == "" and space.dataset.spec == "npz:/data/x.npz#images"
    assert parse_space(data, "d.yaml", get_registry(), source="text").source == "text"
    refused = error_of(SPACE_WITH_MLP + "dataset: {spec: 'nosuch:/x'}\n")
    assert refused.startswith("quick.yaml: dataset.spec: unknown dataset 'nosuch'")


def test_a_pruner_named_by_a_string_targets_a_mapping_and_a_task_are_read() -> None:
    space = load_space_text(SPACE_WITH_MLP + "pruner: pareto\n", "quick.yaml")
    assert space.pruner.name == "pareto" and space.task == "vae"
    assert error_of(SPACE_WITH_MLP + "targets: 5\n") == "quick.yaml: targets: expected a mapping, got int 5"
    classifier = load_space_text("task: classifier\narchitecture: {lenet_300_100: {width: 0.1}}\n", "c.yaml")
    assert classifier.task == "classifier" and classifier.needs_labels


def test_a_relative_base_model_path_is_resolved_against_the_yaml_folder(tmp_path: Path) -> None:
    """A space file's ``factory: my_vae.py:build`` and ``checkpoint: ckpt.pt`` sit beside the YAML, not in the
    working directory (the worker and export read the stored text, so the paths must be absolute by then)."""
    text = "base_model: {factory: 'my_vae.py:build', checkpoint: ckpt.pt}\ncompressors: [uniform]\n"
    space = load_space_text(text, "rel.yaml", base_dir=tmp_path)
    assert space.base_model is not None
    assert space.base_model.factory == f"{tmp_path.resolve() / 'my_vae.py'}:build"
    assert space.base_model.checkpoint == str(tmp_path.resolve() / "ckpt.pt")
    # absolute paths stay as written
    absolute = load_space_text(text.replace("ckpt.pt", "/elsewhere/ckpt.pt"), "abs.yaml", base_dir=tmp_path)
    assert absolute.base_model is not None and absolute.base_model.checkpoint == "/elsewhere/ckpt.pt"


def test_a_pipeline_that_cannot_compose_is_refused_naming_the_slot() -> None:
    # uniform gives quantized weights; weight_vae (the same stage, after it) takes only dense or masked ones
    assert error_of(SPACE_WITH_MLP + "compressors: [uniform, weight_vae]\n") == (
        "quick.yaml: compressors.1.name: compressor 'weight_vae' (stage quantize) takes dense, masked, but compressor "
        "'uniform' (stage quantize) before it gives quantized; this pipeline cannot work (reorder, make a stage optional, "
        "or drop one)"
    )
    # among a slot's choices the message names the choice
    choices = "compressors: [uniform, {choices: [{name: pow2}, {name: weight_vae}]}]\n"
    assert error_of(SPACE_WITH_MLP + choices).startswith("quick.yaml: compressors.1.choices.1.name: compressor 'weight_vae'")


def test_a_classifier_needs_labels_whatever_its_objectives() -> None:
    # the task trains on labels even when no objective reads them
    classifier = load_space_text(
        "task: classifier\narchitecture: {lenet_300_100: {width: 0.1}}\nobjectives: [size_bytes, params]\nrecord: []\n", "c.yaml"
    )
    assert classifier.task == "classifier" and classifier.needs_labels
