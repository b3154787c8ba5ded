from __future__ import annotations

import importlib.metadata
import inspect
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest

from vae_automl import hookimpl, hookspecs
from vae_automl.components import Compressor, Objective, Param
from vae_automl.config import load_space_text
from vae_automl.errors import PluginError
from vae_automl.plugin_manager import new_plugin_manager
from vae_automl.registry import Registry, get_registry
from vae_automl.api import search

REPO = Path(__file__).resolve().parents[1]

TINY_SPACE = """
name: tiny
dataset: {spec: digits, split: {validation: 0.1, test: 0.2, seed: 0, limit: 400}}
device: cpu
architecture:
  mlp:
    hidden_layers: 1
    hidden_width: {low: 8, high: 32}
    latent_dim: 2
training: {epochs: 2, batch_size: 64}
objectives: [test_elbo_nats, size_bytes]
record: [params]
sampler: {name: random, seed: 0}
"""


class ConstantObjective(Objective):
    name = "always_one"
    direction = "maximize"

    def measure(self, ctx: Any) -> float:
        return 1.0


class OneObjectivePlugin:
    @hookimpl
    def register_objectives(self, register: Callable[[Objective], None]) -> None:
        register(ConstantObjective())


def test_plugin_registration_and_metadata(register_plugin: Any) -> None:
    register_plugin(OneObjectivePlugin(), name="one-objective")
    registry = get_registry()
    entry = registry.objectives.entry("always_one")
    assert entry.plugin == "one-objective" and entry.component.direction == "maximize"


def test_plugin_unregistered_after_fixture() -> None:
    from conftest import registered_plugins  # the context manager behind the register_plugin fixture

    # in one test: alone, the check after the `with` passed whatever the cleanup did
    assert "always_one" not in get_registry().objectives
    with pytest.raises(RuntimeError, match="boom"), registered_plugins() as register:
        register(OneObjectivePlugin(), name="one-objective")
        assert "always_one" in get_registry().objectives
        raise RuntimeError("boom")  # a failing test still unregisters (the cleanup runs in finally)
    assert "always_one" not in get_registry().objectives


def test_duplicate_name_names_both_plugins(register_plugin: Any) -> None:
    class Clash:
        @hookimpl
        def register_objectives(self, register: Callable[[Objective], None]) -> None:
            obj = ConstantObjective()
            obj.name = "size_bytes"
            register(obj)

    register_plugin(Clash(), name="clashing-plugin")
    with pytest.raises(PluginError) as info:
        get_registry()
    message = str(info.value)
    assert "'size_bytes' is registered twice" in message
    assert "vae_automl.builtin.objectives" in message and "clashing-plugin" in message


def test_wrong_component_type_is_refused(register_plugin: Any) -> None:
    class Wrong:
        @hookimpl
        def register_compressors(self, register: Callable[[Any], None]) -> None:
            register("not a compressor")

    register_plugin(Wrong(), name="wrong-type")
    with pytest.raises(PluginError, match="plugin 'wrong-type' passed 'not a compressor' to register_compressors"):
        get_registry()


def test_misspelt_hook_fails_loudly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "typo_plugin.py").write_text(textwrap.dedent("""
        from vae_automl.plugin_manager import hookimpl

        @hookimpl
        def register_compresors(register):
            pass
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="typo_plugin.*unknown hook"):
        new_plugin_manager(("typo_plugin",), autoload=False)


def test_plugin_module_not_importable() -> None:
    with pytest.raises(PluginError, match="cannot import plugin module 'no.such.module'"):
        new_plugin_manager(("no.such.module",), autoload=False)


def test_entry_point_plugins_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ep_plugin.py").write_text(textwrap.dedent("""
        from vae_automl.plugin_manager import hookimpl
        from vae_automl.components import Objective

        class Zero(Objective):
            name = "from_entry_point"
            def measure(self, ctx):
                return 0.0

        @hookimpl
        def register_objectives(register):
            register(Zero())
    """))
    monkeypatch.syspath_prepend(str(tmp_path))

    class FakeDist:
        entry_points = [importlib.metadata.EntryPoint(name="ep-plugin", value="ep_plugin", group="vae_automl")]
        metadata = {"name": "vae-automl-ep-plugin"}
        version = "9.9"

    monkeypatch.setattr(importlib.metadata, "distributions", lambda: [FakeDist()])
    registry = Registry.from_plugin_manager(new_plugin_manager(autoload=True))
    assert registry.objectives.plugin_of("from_entry_point") == "ep-plugin"
    assert registry.objectives.entry("from_entry_point").version == "9.9"
    # autoload off (the debugging switch) leaves it out
    assert "from_entry_point" not in Registry.from_plugin_manager(new_plugin_manager(autoload=False)).objectives
    # naming an installed plugin again with --plugin is not a second registration
    registry = Registry.from_plugin_manager(new_plugin_manager(("ep_plugin",), autoload=True))
    assert registry.objectives.plugin_of("from_entry_point") == "ep-plugin"


def test_every_hook_documented_with_signature() -> None:
    docs = (REPO / "docs" / "hooks.md").read_text()
    pm = new_plugin_manager(autoload=False)
    names = [n for n in dir(pm.hook) if not n.startswith("_")]
    assert names, "no hooks found"
    for name in names:
        spec = getattr(hookspecs, name)
        signature = f"`{name}({', '.join(inspect.signature(spec).parameters)})`"
        assert signature in docs, f"{signature} missing from docs/hooks.md"
        assert spec.__doc__ and "Args:" in spec.__doc__ and "Returns:" in spec.__doc__, name


def test_import_is_lean() -> None:
    code = "import sys, vae_automl; print(sorted(m for m in ('torch', 'optuna', 'ray', 'nni') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"


class FailingCompressor(Compressor):
    name = "explodes"
    stage = "prune"
    params = (Param("amount", "float", 0.5, minimum=0.0, maximum=1.0),)

    def apply(self, model: Any, params: dict[str, Any], ctx: Any) -> Any:
        if params["amount"] > 0.5:
            raise RuntimeError("amount too large for this layer")
        return model


class FailingCompressorPlugin:
    @hookimpl
    def register_compressors(self, register: Callable[[Compressor], None]) -> None:
        register(FailingCompressor())


class FlakyObserver:
    @hookimpl
    def on_trial_complete(self, record: dict[str, Any]) -> None:
        if record["trial"] == 1:
            raise ValueError("observer cannot store trial 1")


def test_raising_hooks_fail_their_trial_alone(register_plugin: Any, tmp_path: Path) -> None:
    register_plugin(FailingCompressorPlugin(), name="explosive")
    space_text = TINY_SPACE + "compressors:\n  - {name: explodes, params: {amount: {choices: [0.1, 0.9]}}}\n"
    space = load_space_text(space_text, "tiny.yaml")
    result = search(space, trials=3, out_dir=tmp_path, show_progress=False)
    study = optuna.load_study(study_name="tiny", storage=result.storage)
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert failed, "expected at least one failed trial"
    for t in failed:
        assert t.params["compressor0.explodes.amount"] == 0.9
        assert ("compressor 'explodes' (plugin 'explosive') failed: RuntimeError: amount too large"
                in t.user_attrs["failure_reason"])
    completed = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(t.params["compressor0.explodes.amount"] == 0.1 for t in completed)


def test_an_error_in_on_trial_complete_fails_that_trial_alone(register_plugin: Any, tmp_path: Path) -> None:
    register_plugin(FlakyObserver(), name="flaky-observer")
    result = search(load_space_text(TINY_SPACE, "tiny.yaml"), trials=2, out_dir=tmp_path, show_progress=False)
    study = optuna.load_study(study_name="tiny", storage=result.storage)
    states = {t.number: t.state for t in study.trials}
    # trial 1's observer raised: that trial failed (the error is not swallowed), the search went on to 2 completed
    assert states == {0: optuna.trial.TrialState.COMPLETE, 1: optuna.trial.TrialState.FAIL,
                      2: optuna.trial.TrialState.COMPLETE}
    reason = study.trials[1].user_attrs["failure_reason"]
    assert "on_trial_complete" in reason and "flaky-observer" in reason and "observer cannot store trial 1" in reason


def test_api_functions_survive_submodule_imports() -> None:
    code = ("import vae_automl, vae_automl.api, vae_automl.loading, vae_automl.export; "
            "print(callable(vae_automl.search), callable(vae_automl.load))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "True True"
