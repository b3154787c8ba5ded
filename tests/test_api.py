"""The Python API: one function per command, Optuna callbacks, the Study returned; the CLI calls these functions."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest

import vae_automl
from vae_automl import api
from vae_automl.cli import main
from vae_automl.study import RECORD_ATTR, load_front

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def searched(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Two one-epoch trials through vae_automl.search with an Optuna callback that notes what it was given."""
    from conftest import TINY_SPACE

    root = tmp_path_factory.mktemp("api")
    space = root / "tiny.yaml"
    space.write_text(TINY_SPACE.format(name="api", trials=2, lr="3.0e-3", max_epochs=1, seed=0, pruner="none",
                                       extra_training="", compressors="[]"))
    seen: list[tuple[int, str, bool, str]] = []

    def note(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        seen.append((trial.number, trial.state.name, RECORD_ATTR in trial.user_attrs, study.study_name))

    result = vae_automl.search(space, trials=2, out_dir=root / "run", show_progress=False, callbacks=[note])
    return {"result": result, "seen": seen, "space": space, "root": root}


def test_search_calls_optuna_callbacks_with_stored_trials_and_returns_the_study(searched: dict[str, Any]) -> None:
    result = searched["result"]
    assert searched["seen"] == [(0, "COMPLETE", True, "api"), (1, "COMPLETE", True, "api")]
    assert isinstance(result.study, optuna.Study)
    assert result.study.study_name == "api" and len(result.study.trials) == 2
    assert [e.trial for e in result.front] == [e.trial for e in load_front(result.storage, "api")]
    assert result.knee in [e.trial for e in result.front]


def test_a_callback_that_stops_the_study_ends_the_run(searched: dict[str, Any]) -> None:
    def stop(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        study.stop()

    root = searched["root"]
    # its own storage and out dir: trial-0's model must not replace the "api" study's, which export checks
    result = vae_automl.search(searched["space"], trials=3, storage=f"sqlite:///{root / 'stop.db'}", out_dir=root / "stop",
                               show_progress=False, callbacks=[stop])
    assert result.completed == 1


def test_front_and_plugins_from_python(searched: dict[str, Any]) -> None:
    result = searched["result"]
    front = vae_automl.front(result.storage, "api")
    assert isinstance(front.study, optuna.Study)
    assert [e.objectives for e in front.entries] == [e.objectives for e in result.front]
    assert front.knee == result.knee and front.baseline is None
    rows = vae_automl.plugins()
    assert {"kind": "compressor", "name": "uniform"}.items() <= next(r for r in rows if r["name"] == "uniform").items()
    assert {r["name"] for r in rows if r["kind"] == "objective"} >= {"test_elbo_nats", "size_bytes", "latency_ms"}


def test_export_and_report_from_python(searched: dict[str, Any], tmp_path: Path) -> None:
    result = searched["result"]
    folders = vae_automl.export(result.storage, "api", tmp_path / "export", trials=[0], formats=["safetensors"])
    assert [f.name for f in folders] == ["trial-0"] and (folders[0] / "manifest.json").is_file()
    assert vae_automl.load(folders[0]) is not None
    files = vae_automl.report(result.storage, "api", tmp_path / "report")
    assert files[-1] == tmp_path / "report" / "index.html" and files[-1].is_file()


def test_worker_from_python(searched: dict[str, Any]) -> None:
    root = searched["root"]
    storage = f"sqlite:///{root / 'worker.db'}"  # a study of its own: the other tests read "api" as the search left it
    made = vae_automl.search(searched["space"], trials=0, storage=storage, out_dir=root / "worker", show_progress=False)
    assert made.completed == 0 and made.knee is None
    seen: list[int] = []
    done = vae_automl.worker(storage, "api", trials=1, show_progress=False,
                             callbacks=[lambda study, trial: seen.append(trial.number)])
    assert done.completed == 1 and seen == [0]
    assert len(done.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 1


def test_the_api_names_stay_functions_after_their_submodules_are_imported() -> None:
    code = ("import vae_automl.export, vae_automl.report, vae_automl.worker\n"
            "from vae_automl.export import export_study\n"
            "import vae_automl, vae_automl.api as api\n"
            "for name in ('search', 'front', 'export', 'report', 'worker', 'plugins'):\n"
            "    assert getattr(vae_automl, name) is getattr(api, name), name\n"
            "import importlib\n"
            "assert importlib.import_module('vae_automl.export').export_study is export_study\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_every_api_function_is_documented_and_typed() -> None:
    import inspect

    for name in vae_automl.api.__all__:
        obj = getattr(api, name)
        if inspect.isfunction(obj) and name in ("search", "front", "export", "report", "worker", "plugins"):
            assert obj.__doc__ and "Returns:" in obj.__doc__, name
            assert "return" in inspect.get_annotations(obj), name


def test_the_cli_calls_the_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def fake(name: str, value: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            calls.append((name, args, kwargs))
            return value
        return call

    monkeypatch.setattr(api, "export", fake("export", [tmp_path]))
    monkeypatch.setattr(api, "report", fake("report", [tmp_path / "index.html"]))
    monkeypatch.setattr(api, "plugins", fake("plugins", []))
    monkeypatch.setattr(api, "front", fake("front", api.Front(None, [], None)))  # type: ignore[arg-type]
    assert main(["export", "--storage", "sqlite:///x.db", "--study", "s", "--dest", str(tmp_path), "--select", "3,5",
                 "--formats", "onnx"]) == 0
    assert main(["report", "--storage", "sqlite:///x.db", "--study", "s", "--dest", str(tmp_path)]) == 0
    assert main(["plugins", "--plugin", "my_mod"]) == 0
    assert main(["front", "--storage", "sqlite:///x.db", "--study", "s"]) == 0
    assert [c[0] for c in calls] == ["export", "report", "plugins", "front"]
    assert calls[0][1][:3] == ("sqlite:///x.db", "s", str(tmp_path))
    assert calls[0][2]["trials"] == [3, 5] and tuple(calls[0][2]["formats"]) == ("onnx",)
    assert calls[2][1] == (("my_mod",),)
    assert "(no completed trials)" in capsys.readouterr().out


@pytest.mark.parametrize("bad", ["dataset", "backend"])
def test_a_search_refused_on_bad_input_leaves_no_run_folder(bad: str, tmp_path: Path) -> None:
    # what `vae-automl search quick.yaml --dataset npz:typo.npz` did: the error, and an empty runs/quick/ behind it
    from conftest import TINY_SPACE

    space = tmp_path / "tiny.yaml"
    space.write_text(TINY_SPACE.format(name="refused", trials=1, lr="3.0e-3", max_epochs=1, seed=0, pruner="none",
                                       extra_training="", compressors="[]"))
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("the user's own file")
    wrong: dict[str, Any] = {"dataset": f"npz:{tmp_path / 'typo.npz'}"} if bad == "dataset" else {"backend": "optuan"}
    for out, gone, stays in ((tmp_path / "runs" / "refused", tmp_path / "runs", None), (kept / "run", kept / "run", kept)):
        with pytest.raises(vae_automl.errors.VaeAutomlError, match="typo.npz" if bad == "dataset" else "optuan"):
            vae_automl.search(space, trials=1, out_dir=out, show_progress=False, **wrong)
        assert not gone.exists()  # every folder the refused run created, parents included
        assert stays is None or (stays / "notes.txt").read_text() == "the user's own file"
