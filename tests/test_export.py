"""Export of a real (tiny) study: verified artifacts, vae_automl.load, refusals of tampered files."""

from __future__ import annotations

import ast
import copy
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import vae_automl  # noqa: E402
from vae_automl import runtime  # noqa: E402
from vae_automl.components import Exporter, Objective  # noqa: E402
from vae_automl.errors import ExportError, IntegrityError  # noqa: E402
from vae_automl.export import (  # noqa: E402
    MANIFEST,
    WEIGHTS,
    elbo_of,
    export_study,
    export_trial,
    load_artifact,
    open_study_context,
)
from conftest import digits_space, run_small_study  # noqa: E402
from vae_automl.record import TrialRecord  # noqa: E402
from vae_automl.train import evaluate_elbo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPACE = digits_space("export-test", hidden_width="{low: 16, high: 64}", latent_dim="4", epochs=3, sampler_seed=0,
                     latency_batch_size=32, trials=3,
                     compressors="\n  - {name: uniform, params: {bits: 8, calibration: minmax}, optional: true}")
# Fixed points, so the test knows which trial is which: two float models and the first one quantized to 8 bits.
ENQUEUED = [{"mlp.hidden_width": 48, "compressor0": "none"},
            {"mlp.hidden_width": 16, "compressor0": "none"},
            {"mlp.hidden_width": 48, "compressor0": "uniform"}]
FLOAT_TRIAL, INT8_TRIAL = 0, 2


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A 3-trial study on digits, with trials 0 and 2 exported in every format (run once for the module)."""
    root = tmp_path_factory.mktemp("export")
    storage = searched_study(root)
    folders = export_study(storage, "export-test", root / "export", trials=[FLOAT_TRIAL, INT8_TRIAL])
    yield {"storage": storage, "root": root, "folders": {int(f.name.split("-")[1]): f for f in folders}}


def searched_study(root: Path) -> str:
    """The 3-trial search of :data:`SPACE` in ``root``; return its storage URL.

    Under ``make mutation`` every mutant of export.py would run this same search again (2 of the fixture's 3 s per
    mutant), though no export.py code runs in it: for those mutants a copy of one shared search is used instead.
    The run that makes the shared search records every function called in it and keeps the copy only if none is
    in export.py, so a search that starts calling export.py falls back to searching per mutant. Other mutants, and
    every ordinary test run, search afresh.
    """
    if not os.environ.get("MUTANT_UNDER_TEST", "").startswith("vae_automl.export."):  # set by mutmut only
        return run_small_study(SPACE, root, trials=3, enqueued=ENQUEUED)
    source = "".join(p.read_text() for p in sorted(Path(vae_automl.__file__).parent.rglob("*.py")))
    key = hashlib.sha256(f"{SPACE}{ENQUEUED}{source}".encode()).hexdigest()[:16]
    shared = Path(tempfile.gettempdir()) / "vae-automl-test-export" / key
    if not shared.is_dir():
        shared.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f"{key}.partial-", dir=shared.parent))
        called = calls_into_export(lambda: run_small_study(SPACE, staging, trials=3, enqueued=ENQUEUED))
        if called:  # the shortcut's premise no longer holds: search per mutant
            warnings.warn(f"the export test's search calls export.py ({', '.join(sorted(called))}); not shared", stacklevel=2)
            shutil.rmtree(staging)
            return run_small_study(SPACE, root, trials=3, enqueued=ENQUEUED)
        (staging / "origin").write_text(str(staging))
        try:
            staging.rename(shared)
        except OSError:  # another mutant's run stored it first
            shutil.rmtree(staging)
    shutil.copytree(shared, root, dirs_exist_ok=True)
    origin = (root / "origin").read_text()
    # the records hold absolute paths (the run folder, each trial's artifact): point them at this copy
    with sqlite3.connect(root / "study.db") as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for column in [row[1] for row in db.execute(f"PRAGMA table_info({table})")]:
                sql = f"UPDATE {table} SET {column} = replace({column}, ?, ?) WHERE typeof({column}) = 'text'"
                db.execute(sql, (origin, str(root)))
    return f"sqlite:///{root / 'study.db'}"


def calls_into_export(run: Any) -> set[str]:
    """Call ``run()`` and return the names of the export.py functions it called (in any thread)."""
    called: set[str] = set()

    def profile(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code.co_filename.endswith(os.path.join("vae_automl", "export.py")):
            called.add(frame.f_code.co_name)

    sys.setprofile(profile)
    threading.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)  # type: ignore[arg-type]
    return called


def manifest_of(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST).read_text())


@pytest.mark.parametrize("trial", [FLOAT_TRIAL, INT8_TRIAL])
def test_export_writes_every_format_and_verifies_it(study: dict[str, Any], trial: int) -> None:
    folder = study["folders"][trial]
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "model.onnx", "model.pt", "model.pt2", WEIGHTS]
    manifest = manifest_of(folder)
    assert manifest["study"] == "export-test" and manifest["trial"] == trial
    assert manifest["params"]["mlp.hidden_width"] == ENQUEUED[trial]["mlp.hidden_width"]
    assert manifest["search"]["data"]["dataset"] == "digits" and manifest["search"]["data"]["split_sha256"]
    search_elbo = manifest["search"]["metrics"]["test_elbo_nats"]
    for fmt in ("safetensors", "onnx", "pt2", "torchscript"):
        assert manifest["remeasured"][fmt]["test_elbo_nats"] == pytest.approx(search_elbo, rel=0.01)
    # which onnxruntime ran the model: float kernels, or the integer ones of the 8-bit trial
    onnx = manifest["remeasured"]["onnx"]
    integer = trial == INT8_TRIAL
    assert onnx["runtime"] == (runtime.RUNTIME_ORT_INT8 if integer else "onnxruntime") and bool(onnx["integer_ops"]) == integer
    assert (folder / WEIGHTS).stat().st_size == manifest["search"]["metrics"]["size_bytes"]
    assert all(c["ok"] for c in manifest["checks"]) and {c["file"] for c in manifest["checks"]} >= {
        WEIGHTS, "model.onnx", "model.pt2", "model.pt"}
    for name, entry in manifest["files"].items():
        assert entry["size_bytes"] == os.path.getsize(folder / name)
        assert entry["sha256"] == hashlib.sha256((folder / name).read_bytes()).hexdigest()  # not via sha256_file
    assert set(manifest["versions"]) >= {"vae_automl", "torch", "onnx", "onnxruntime"}
    assert manifest["model_config"]["architecture"] == "mlp"
    assert not list(study["root"].joinpath("export").glob(".*partial"))


def test_load_round_trip_remeasures_the_search_figure(study: dict[str, Any]) -> None:
    folder = study["folders"][FLOAT_TRIAL]
    model = vae_automl.load(folder)
    manifest = manifest_of(folder)
    ctx = open_study_context(study["storage"], "export-test")
    x = ctx.data.test
    assert evaluate_elbo(model, x, seed=0) == pytest.approx(manifest["search"]["metrics"]["test_elbo_nats"], rel=1e-6)
    mu, logvar = model.encode(x[:5])
    assert mu.shape == logvar.shape == (5, 4)
    assert model.decode(mu).shape == (5, 1, 8, 8)
    recon = model.reconstruct(x[:5])
    assert recon.shape == (5, 1, 8, 8) and float(recon.min()) >= 0 and float(recon.max()) <= 1
    # A trained model reconstructs test images better than their mean image does.
    assert float(((recon - x[:5]) ** 2).mean()) < float(((x.mean(0, keepdim=True) - x[:5]) ** 2).mean())
    assert model.sample(3, torch.Generator().manual_seed(0)).shape == (3, 1, 8, 8)
    # The other formats, loaded on their own, give the same figure.
    onnx_model = runtime.OnnxVAE((folder / "model.onnx").read_bytes())
    program = torch.export.load(str(folder / "model.pt2")).module()
    program_mu, _, program_decoded = program(x[:5], mu)
    assert torch.allclose(program_mu, mu, atol=1e-5) and torch.allclose(program_decoded, model.decode(mu), atol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        scripted = torch.jit.load(str(folder / "model.pt"))
    for fmt in (onnx_model, scripted):
        assert elbo_of(fmt.encode, fmt.decode, "bernoulli", None, x, seed=0) == pytest.approx(
            manifest["search"]["metrics"]["test_elbo_nats"], rel=1e-4)


def test_int8_trial_ships_integer_onnx_and_was_timed_in_onnxruntime(study: dict[str, Any]) -> None:
    folder = study["folders"][INT8_TRIAL]
    manifest = manifest_of(folder)
    assert manifest["pipeline"]["pipeline"][0]["compressor"] == "uniform"
    assert manifest["search"]["latency"]["runtime"] == runtime.RUNTIME_ORT_INT8
    assert manifest_of(study["folders"][FLOAT_TRIAL])["search"]["latency"]["runtime"] == runtime.RUNTIME_TORCH
    assert manifest["remeasured"]["onnx"]["runtime"] == runtime.RUNTIME_ORT_INT8
    float_onnx = manifest_of(study["folders"][FLOAT_TRIAL])["remeasured"]["onnx"]
    assert float_onnx["runtime"] == "onnxruntime" and float_onnx["integer_ops"] == []
    ops = runtime.integer_ops((folder / "model.onnx").read_bytes())
    assert manifest["remeasured"]["onnx"]["integer_ops"] == sorted(set(ops))
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    assert runtime.is_int8(vae_automl.load(folder))
    # 8-bit codes plus scales take well under half the float model's bytes.
    float_size = manifest_of(study["folders"][FLOAT_TRIAL])["files"][WEIGHTS]["size_bytes"]
    assert manifest["files"][WEIGHTS]["size_bytes"] < 0.5 * float_size


def test_tampered_weights_are_refused(study: dict[str, Any], tmp_path: Path) -> None:
    folder = shutil.copytree(study["folders"][FLOAT_TRIAL], tmp_path / "trial")
    data = bytearray((folder / WEIGHTS).read_bytes())
    data[-1] ^= 0x01  # one bit of the last float
    (folder / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match=WEIGHTS):
        vae_automl.load(folder)


def test_tampered_onnx_is_refused_too(study: dict[str, Any], tmp_path: Path) -> None:
    folder = shutil.copytree(study["folders"][FLOAT_TRIAL], tmp_path / "trial")
    (folder / "model.onnx").write_bytes(b"not onnx")
    with pytest.raises(IntegrityError, match="model.onnx"):
        vae_automl.load(folder)


@pytest.mark.parametrize("content, message", [
    ("{ this is not json", "not valid JSON"),
    (json.dumps({"format": "something-else"}), "not a vae-automl export manifest"),
    (json.dumps({"format": "vae-automl-export", "manifest_version": 1, "files": {"weights.safetensors": "abc"}}),
     "'files' must map"),
])
def test_corrupted_manifest_is_refused(study: dict[str, Any], tmp_path: Path, content: str, message: str) -> None:
    folder = shutil.copytree(study["folders"][FLOAT_TRIAL], tmp_path / "trial")
    (folder / MANIFEST).write_text(content)
    with pytest.raises(ExportError, match=message):
        vae_automl.load(folder)


def test_changed_search_artifact_is_refused(study: dict[str, Any]) -> None:
    ctx = open_study_context(study["storage"], "export-test")
    trial = ctx.study.trials[FLOAT_TRIAL]
    record = dict(trial.user_attrs["record"], artifact_sha256="0" * 64)
    with pytest.raises(ExportError, match="changed since the search"):
        load_artifact(record)


def test_figure_that_disagrees_with_the_search_stops_the_export(study: dict[str, Any], tmp_path: Path) -> None:
    ctx = open_study_context(study["storage"], "export-test")
    trial = copy.deepcopy(ctx.study.trials[FLOAT_TRIAL])
    metrics = trial.user_attrs["record"]["metrics"]
    metrics["test_elbo_nats"] *= 1.05
    with pytest.raises(ExportError, match=r"model.onnx: test_elbo_nats expected .* got") as info:
        export_trial(ctx, trial, tmp_path, formats=("onnx",))
    assert "within 1%" in str(info.value)
    assert not any(tmp_path.iterdir())  # nothing that looks like a valid export is left behind


def test_cli_export_prints_what_it_wrote(study: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from vae_automl.cli import main

    code = main(["export", "--storage", study["storage"], "--study", "export-test", "--dest", str(tmp_path),
                 "--select", str(FLOAT_TRIAL), "--formats", "safetensors"])
    assert code == 0
    assert sorted(p.name for p in (tmp_path / f"trial-{FLOAT_TRIAL}").iterdir()) == [MANIFEST, WEIGHTS]
    assert f"trial-{FLOAT_TRIAL}" in capsys.readouterr().out
    assert main(["export", "--storage", study["storage"], "--study", "export-test", "--dest", str(tmp_path),
                 "--formats", "tflite"]) == 1
    assert "unknown export format 'tflite'" in capsys.readouterr().err


def _torch_load_calls_without_weights_only(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            if not safe:
                lines.append(node.lineno)
    return lines


def test_every_torch_load_in_the_project_uses_weights_only() -> None:
    sources = [p for folder in ("vae_automl", "tests", "benchmarks", "plugins") for p in (REPO / folder).rglob("*.py")]
    assert sources
    offenders = {str(p.relative_to(REPO)): lines for p in sources if (lines := _torch_load_calls_without_weights_only(p))}
    assert offenders == {}, f"torch.load without weights_only=True (it unpickles arbitrary objects): {offenders}"


def test_the_scan_catches_an_unsafe_call(tmp_path: Path) -> None:
    source = tmp_path / "x.py"
    source.write_text("import torch\ntorch.load('a')\ntorch.load('b', weights_only=True)\ntorch.load('c', weights_only=False)\n")
    assert _torch_load_calls_without_weights_only(source) == [2, 4]


class OffByHalfExporter(Exporter):
    """A third-party format whose re-measured ELBO is 1.5 times the search's: export must refuse it."""

    name = "off-by-half"
    filename = "model.bin"

    def export(self, model: Any, path: str, example: torch.Tensor) -> None:
        Path(path).write_bytes(b"not a model")

    def remeasure(self, path: str, model: Any, ctx: Any, record: Any) -> dict[str, Any]:
        return {"test_elbo_nats": 1.5 * record.metrics["test_elbo_nats"]}


class OffByHalfPlugin:
    @vae_automl.hookimpl
    def register_exporters(self, register: Any) -> None:
        register(OffByHalfExporter())


def test_each_exporter_remeasures_its_own_file(study: dict[str, Any], tmp_path: Path, register_plugin: Any) -> None:
    register_plugin(OffByHalfPlugin(), name="off-by-half")
    ctx = open_study_context(study["storage"], "export-test")
    with pytest.raises(ExportError, match=r"model.bin: test_elbo_nats expected .* got") as info:
        export_trial(ctx, ctx.study.trials[FLOAT_TRIAL], tmp_path, formats=("off-by-half",))
    assert "weights.safetensors" not in str(info.value)  # the packed weights still reproduce the search


# --- export never deletes what it did not write (issue 16) ---

def test_export_refuses_a_non_empty_folder_and_keeps_a_users_file(study: dict[str, Any], tmp_path: Path) -> None:
    mine = tmp_path / f"trial-{FLOAT_TRIAL}" / "notes.txt"
    mine.parent.mkdir()
    mine.write_text("my notes")
    with pytest.raises(ExportError, match=r"trial-0 is not empty \(notes\.txt\); pass --overwrite"):
        export_study(study["storage"], "export-test", tmp_path, trials=[FLOAT_TRIAL], formats=("safetensors",))
    with pytest.raises(ExportError, match=r"holds files an export did not write \(notes\.txt\)"):
        export_study(study["storage"], "export-test", tmp_path, trials=[FLOAT_TRIAL], formats=("safetensors",),
                     overwrite=True)
    assert mine.read_text() == "my notes" and sorted(p.name for p in mine.parent.iterdir()) == ["notes.txt"]


def test_export_into_an_empty_folder_needs_no_overwrite(study: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / f"trial-{FLOAT_TRIAL}").mkdir()
    [folder] = export_study(study["storage"], "export-test", tmp_path, trials=[FLOAT_TRIAL], formats=("safetensors",))
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, WEIGHTS]


def test_overwrite_replaces_only_the_earlier_exports_files(study: dict[str, Any], tmp_path: Path) -> None:
    [folder] = export_study(study["storage"], "export-test", tmp_path, trials=[FLOAT_TRIAL],
                            formats=("safetensors", "torchscript"))
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "model.pt", WEIGHTS]
    before = manifest_of(folder)["created"]
    with pytest.raises(ExportError, match="not empty"):
        export_study(study["storage"], "export-test", tmp_path, trials=[FLOAT_TRIAL], formats=("safetensors",))
    [again] = export_study(study["storage"], "export-test", tmp_path, trials=[FLOAT_TRIAL], formats=("safetensors",),
                           overwrite=True)
    # model.pt was the earlier export's own file: replaced by nothing, so removed; no partial folder left behind
    assert again == folder and sorted(p.name for p in folder.iterdir()) == [MANIFEST, WEIGHTS]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"trial-{FLOAT_TRIAL}"]
    assert manifest_of(folder)["created"] >= before


def test_a_manifest_of_another_format_vouches_for_nothing(tmp_path: Path) -> None:
    from vae_automl.export import own_files

    (tmp_path / MANIFEST).write_text(json.dumps({"format": "other", "files": {"a.bin": {}}}))
    (tmp_path / "a.bin").write_bytes(b"x")
    with pytest.raises(ExportError, match=r"did not write \(a\.bin, manifest\.json\)"):
        own_files(tmp_path, overwrite=True)
    assert own_files(tmp_path / "absent", overwrite=False) == set()


@pytest.mark.parametrize("text, expected", [("front", "front"), ("3", [3]), ("0, 7,", [0, 7])])
def test_trials_option_parses(text: str, expected: Any) -> None:
    from vae_automl.export import parse_trials

    assert parse_trials(text) == expected


@pytest.mark.parametrize("text", ["../../x", "-1", "1.5", "", ",", "²", "front,1"])
def test_trials_option_refuses_what_is_not_a_trial_number(text: str) -> None:
    from vae_automl.export import parse_trials

    with pytest.raises(ExportError, match=r"--select must be 'front' or trial numbers like 3,7, but got"):
        parse_trials(text)


def test_export_out_that_is_a_file_is_refused(study: dict[str, Any], tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ExportError, match=r"export folder .*file: is a file, not a folder"):
        export_study(study["storage"], "export-test", target)


def test_an_edited_figure_in_the_manifest_is_refused_on_load(study: dict[str, Any], tmp_path: Path) -> None:
    folder = shutil.copytree(study["folders"][FLOAT_TRIAL], tmp_path / "trial")
    assert vae_automl.load(folder).manifest["search"]["metrics"]["test_elbo_nats"] > 1.0  # as exported: loads
    manifest = manifest_of(folder)
    manifest["search"]["metrics"]["test_elbo_nats"] = 1.0
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2))
    with pytest.raises(IntegrityError, match=r"manifest\.json: its content does not match its manifest_sha256"):
        vae_automl.load(folder)
    # reformatting alone (another indent, key order) is not an edit
    manifest["search"]["metrics"]["test_elbo_nats"] = manifest_of(study["folders"][FLOAT_TRIAL])["search"]["metrics"][
        "test_elbo_nats"]
    (folder / MANIFEST).write_text(json.dumps(dict(reversed(list(manifest.items())))))
    assert vae_automl.load(folder) is not None


def test_versions_name_every_package_an_artifact_depends_on() -> None:
    from importlib import metadata

    from vae_automl.export import versions

    found = versions()
    assert set(found) == {"vae_automl", "torch", "onnx", "onnxruntime", "safetensors", "optuna"}
    assert found["vae_automl"] == vae_automl.__version__ and found["torch"] == torch.__version__
    for dist in ("onnx", "onnxruntime", "safetensors", "optuna"):
        assert found[dist] == metadata.version(dist), dist


class SettingsProbe(Objective):
    """An objective that records the measuring context export gives it (and measures nothing)."""

    name = "settings_probe"

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def measure(self, ctx: Any) -> float:
        self.seen.append(ctx)
        return 0.0


def test_remeasure_uses_the_searchs_settings_and_the_files_length(study: dict[str, Any], register_plugin: Any) -> None:
    import dataclasses

    from vae_automl import hookimpl
    from vae_automl.export import record_of, remeasure_safetensors

    probe = SettingsProbe()

    class ProbePlugin:
        @hookimpl
        def register_objectives(self, register: Any) -> None:
            register(probe)

    register_plugin(ProbePlugin(), name="settings-probe")
    ctx = open_study_context(study["storage"], "export-test")
    record = record_of(ctx.study.trials[FLOAT_TRIAL])
    # the probe as if the search had recorded it, a figure of a plugin that is not loaded now, and no size_bytes:
    # the size must then come from the file itself
    metrics = {k: v for k, v in record.metrics.items() if k != "size_bytes"}
    record = dataclasses.replace(record, metrics={**metrics, "settings_probe": 0.0, "unloaded_plugins_figure": 1.0})
    path = study["folders"][FLOAT_TRIAL] / WEIGHTS
    figures = remeasure_safetensors(ctx, record, path)
    assert figures["size_bytes"] == os.path.getsize(path)
    assert "unloaded_plugins_figure" not in figures  # nothing measures it: left out, not an error
    assert figures["test_elbo_nats"] == pytest.approx(record.metrics["test_elbo_nats"], rel=1e-3)
    (seen,) = probe.seen
    # the space's latency: {batch_size: 32, repeats: 2, warmup: 1}, none of them MeasureContext's defaults
    assert (seen.latency_batch_size, seen.latency_repeats, seen.latency_warmup) == (32, 2, 1)
    assert (seen.seed, str(seen.device), seen.latency_target) == (record.config["seed"], "cpu", "cpu")
    assert seen.registry is ctx.registry and seen.data is ctx.data


def test_export_of_a_trial_that_did_not_complete_is_refused_naming_it(study: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=r"trials \[99\] are not completed trials of study 'export-test'; completed: \[0, 1, 2\]"):
        export_study(study["storage"], "export-test", tmp_path, trials=[0, 99])
    assert not list(tmp_path.iterdir())  # refused before anything was written


def test_export_picks_the_named_study_among_several(study: dict[str, Any], tmp_path: Path) -> None:
    import optuna

    db = tmp_path / "two.db"
    shutil.copy(study["storage"].removeprefix("sqlite:///"), db)
    optuna.create_study(study_name="another", storage=f"sqlite:///{db}", directions=["minimize", "minimize"])
    (folder,) = export_study(f"sqlite:///{db}", "export-test", tmp_path / "out", trials=[FLOAT_TRIAL], formats=["safetensors"])
    assert manifest_of(folder)["study"] == "export-test" and manifest_of(folder)["trial"] == FLOAT_TRIAL


def test_export_creates_the_folders_it_writes_into(study: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "a" / "b"
    (folder,) = export_study(study["storage"], "export-test", out, trials=[FLOAT_TRIAL], formats=["safetensors"])
    assert folder == tmp_path / "a" / "b" / f"trial-{FLOAT_TRIAL}" and (folder / WEIGHTS).is_file()
    ctx = open_study_context(study["storage"], "export-test")
    folder = export_trial(ctx, ctx.study.trials[FLOAT_TRIAL], tmp_path / "new" / "deeper", formats=["safetensors"])
    assert folder == tmp_path / "new" / "deeper" / f"trial-{FLOAT_TRIAL}" and (folder / WEIGHTS).is_file()
    text = (folder / MANIFEST).read_text()
    assert text.startswith('{\n  "format": ') and text.endswith("}\n")  # indented: people read it too


UNMEASURED = """
name: unmeasured
dataset: {spec: mnist, image_size: 6, split: {validation: 0.1, test: 0.2, seed: 0}}
device: cpu
seed: 0
architecture: {mlp: {hidden_layers: 1, hidden_width: 16, latent_dim: 2, likelihood: gaussian}}
training: {epochs: 1, batch_size: 64}
objectives: [params, latency_ms]
record: []
sampler: {name: random, seed: 0}
latency: {batch_size: 32, repeats: 1, warmup: 0}
trials: 1
"""


def test_export_checks_every_format_of_a_gaussian_vae_on_the_data_its_search_used(tmp_path: Path) -> None:
    """A search run with --dataset digits over a YAML that says mnist (a gaussian VAE), measuring neither the ELBO nor the size.

    Export must find the dataset in the trials' records (the YAML's mnist is absent here, or splits differently),
    keep the YAML's image_size, check every format's ELBO against the weights file's, and the file's size.
    """
    from vae_automl.config import load_space_text

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = vae_automl.search(load_space_text(UNMEASURED, "unmeasured.yaml"), storage=storage, out_dir=tmp_path / "run",
                               dataset="digits", show_progress=False)
    assert result.completed == 1
    formats = ["safetensors", "onnx", "pt2", "torchscript"]
    (folder,) = export_study(storage, "unmeasured", tmp_path / "export", trials=[0], formats=formats)
    manifest = manifest_of(folder)
    assert manifest["model_config"]["input_shape"] == [1, 6, 6]
    # the study's context opens the data the search used (its --dataset), not the YAML's
    assert open_study_context(storage, "unmeasured").space.dataset.spec == "digits"
    assert set(manifest["search"]["metrics"]) == {"params", "latency_ms"}
    checks = {(c["figure"], c["file"]): c for c in manifest["checks"]}
    # params as the search measured it, the other formats' ELBO against the weights file's (not the weights file
    # against itself), and the file's size as no search figure covers it
    assert set(checks) == {("params", WEIGHTS), ("test_elbo_nats", "model.onnx"), ("test_elbo_nats", "model.pt2"),
                           ("test_elbo_nats", "model.pt"), ("size_bytes", WEIGHTS)}
    # each format's ELBO against the weights file's, as the search has no figure; a gaussian model's needs its
    # learned log_sigma, read from each program too
    for fmt, file in (("onnx", "model.onnx"), ("pt2", "model.pt2"), ("torchscript", "model.pt")):
        elbo = checks[("test_elbo_nats", file)]
        assert elbo["ok"] and elbo["expected"] == manifest["remeasured"]["safetensors"]["test_elbo_nats"], fmt
        assert elbo["got"] == manifest["remeasured"][fmt]["test_elbo_nats"], fmt
    size = checks[("size_bytes", WEIGHTS)]
    assert size["ok"] and size["expected"] == size["got"] == os.path.getsize(folder / WEIGHTS)


def test_a_trial_is_not_exported_on_another_split_than_its_search(study: dict[str, Any], tmp_path: Path) -> None:
    import dataclasses

    ctx = open_study_context(study["storage"], "export-test")
    searched = ctx.data.info["split_sha256"]
    other = dataclasses.replace(ctx, data=dataclasses.replace(ctx.data, info={**ctx.data.info, "split_sha256": "0" * 64}))
    differs = rf"trial 0: the data split differs from the search's \(split sha256 0{{64}} vs {searched}\)"
    with pytest.raises(ExportError, match=differs):
        export_trial(other, ctx.study.trials[FLOAT_TRIAL], tmp_path, formats=["safetensors"])
    assert not list(tmp_path.iterdir())


def test_export_without_a_selection_exports_the_front(study: dict[str, Any], tmp_path: Path) -> None:
    import optuna

    handle = optuna.load_study(study_name="export-test", storage=study["storage"])
    done = [t for t in handle.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 3
    # brute-force front (both objectives minimized): no other trial at least as good in both and better in one
    front = [t.number for t in done if not any(
        all(o <= v for o, v in zip(u.values, t.values, strict=True)) and u.values != t.values for u in done)]
    folders = export_study(study["storage"], "export-test", tmp_path, formats=["safetensors"])
    assert sorted(int(f.name.removeprefix("trial-")) for f in folders) == sorted(front)


def test_a_search_dataset_given_to_export_is_the_one_it_opens(study: dict[str, Any], tmp_path: Path) -> None:
    """``dataset=`` wins over the dataset the records name: other images split otherwise, so the trial is refused."""
    import numpy as np

    other = tmp_path / "other.npz"
    np.savez(other, images=np.random.default_rng(0).integers(0, 256, (300, 8, 8), dtype=np.uint8))
    with pytest.raises(ExportError, match="the data split differs from the search's"):
        export_study(study["storage"], "export-test", tmp_path / "out", trials=[FLOAT_TRIAL], formats=["safetensors"],
                     dataset=f"npz:{other}#images")


def test_a_study_whose_first_trial_has_no_record_opens_on_the_records_of_the_others(study: dict[str, Any],
                                                                                    tmp_path: Path) -> None:
    import optuna

    source = optuna.load_study(study_name="export-test", storage=study["storage"])
    storage = f"sqlite:///{tmp_path / 'older.db'}"
    older = optuna.create_study(study_name="export-test", storage=storage, directions=source.directions)
    for key, value in source.user_attrs.items():
        older.set_user_attr(key, value)
    older.add_trial(optuna.trial.create_trial(values=[1.0] * len(source.directions)))  # an older vae-automl: no record
    for trial in source.trials:
        older.add_trial(trial)
    ctx = open_study_context(storage, "export-test")
    assert ctx.data.info["split_sha256"] == open_study_context(study["storage"], "export-test").data.info["split_sha256"]
    with pytest.raises(ExportError, match="trial 0 has no stored record"):
        export_trial(ctx, ctx.study.trials[0], tmp_path / "out", formats=["safetensors"])


def test_export_trial_refuses_its_earlier_folder_unless_told_to_overwrite(study: dict[str, Any], tmp_path: Path) -> None:
    ctx = open_study_context(study["storage"], "export-test")
    trial = ctx.study.trials[FLOAT_TRIAL]
    export_trial(ctx, trial, tmp_path, formats=["safetensors"])
    with pytest.raises(ExportError, match="is not empty"):
        export_trial(ctx, trial, tmp_path, formats=["safetensors"])
    assert export_trial(ctx, trial, tmp_path, formats=["safetensors"], overwrite=True) == tmp_path / f"trial-{FLOAT_TRIAL}"


def test_overwrite_places_the_manifest_last_and_forgives_a_file_already_gone(study: dict[str, Any], tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    (folder,) = export_study(study["storage"], "export-test", tmp_path, trials=[FLOAT_TRIAL],
                             formats=["safetensors", "torchscript"])
    (folder / "model.pt").unlink()  # listed by the manifest, deleted by the user since
    moved: list[str] = []
    replace = Path.replace

    def logged(self: Path, target: Any) -> Path:
        moved.append(self.name)
        return replace(self, target)

    monkeypatch.setattr(Path, "replace", logged)
    export_study(study["storage"], "export-test", tmp_path, trials=[FLOAT_TRIAL], formats=["safetensors"], overwrite=True)
    # the manifest vouches for the files: it must not be in place before them (a crash between would leave it lying)
    assert moved == [WEIGHTS, MANIFEST]
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, WEIGHTS]


def test_a_compact_trial_of_a_base_model_study_exports_its_container_and_manifest_entries(study: dict[str, Any],
                                                                                         tmp_path: Path) -> None:
    from vae_automl.export import manifest_digest
    from vae_automl.storage.format import serialize_model

    ctx = open_study_context(study["storage"], "export-test")
    trial = ctx.study.trials[FLOAT_TRIAL]
    record = copy.deepcopy(trial.user_attrs["record"])
    model, _ = load_artifact(record)
    model.container = "compact"  # what entropy_code's container: compact leaves on the model
    data = serialize_model(model)
    artifact = tmp_path / "trial-0.vac"
    artifact.write_bytes(data)
    checkpoint = "ab" * 32
    record.update(artifact=str(artifact), artifact_sha256=hashlib.sha256(data).hexdigest(),
                  metrics={**record["metrics"], "size_bytes": float(len(data))})
    record["base"].update(base_model="my_vae.py:build", checkpoint_sha256=checkpoint)
    fake = copy.deepcopy(trial)
    fake.user_attrs = {**trial.user_attrs, "record": record}
    folder = export_trial(ctx, fake, tmp_path / "out", formats=["safetensors", "torchscript"])
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, "model.pt", "weights.vac"]
    assert (folder / "weights.vac").read_bytes() == data
    manifest = manifest_of(folder)
    assert manifest["files"]["weights.vac"]["size_bytes"] == os.path.getsize(folder / "weights.vac") == len(data)
    assert manifest["base_model"] == {"factory": "my_vae.py:build", "checkpoint_sha256": checkpoint}
    assert manifest["plugins"] == record["plugins"] and manifest["search"]["latency"] == record["latency"]
    # the digest, recomputed here from its definition: sha256 of the canonical JSON of everything else
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert manifest["manifest_sha256"] == hashlib.sha256(canonical).hexdigest() == manifest_digest(manifest)
    checks = {(c["figure"], c["file"]) for c in manifest["checks"]}
    assert ("size_bytes", "weights.vac") in checks and ("test_elbo_nats", "model.pt") in checks
    assert len(manifest["checks"]) == len(checks)  # each figure of each file checked once (size too)


CLASSIFIER = """
name: export-classifier
task: classifier
dataset: {spec: digits, split: {validation: 0.1, test: 0.2, seed: 0}}
device: cpu
seed: 0
architecture: {lenet_300_100: {width: 0.1}}
objectives: [test_accuracy, size_bytes]
trials: 0
"""


def test_a_classifier_study_opens_with_its_labels_and_every_format_is_judged_by_accuracy(tmp_path: Path) -> None:
    import dataclasses
    from types import SimpleNamespace

    from vae_automl.config import load_space_text
    from vae_automl.export import remeasure_onnx, remeasure_pt2, remeasure_torchscript

    storage = f"sqlite:///{tmp_path / 'study.db'}"
    vae_automl.search(load_space_text(CLASSIFIER, "c.yaml"), storage=storage, out_dir=tmp_path / "run", show_progress=False)
    ctx = open_study_context(storage, "export-classifier")  # no trial yet: the stored space is all it reads
    labels = ctx.data.test_labels
    assert labels is not None and len(labels) == len(ctx.data.test) and set(labels.tolist()) == set(range(10))
    arch = ctx.registry.architectures.get("lenet_300_100")
    torch.manual_seed(0)
    model = arch.build(arch.config_from_params({p.name: p.default for p in arch.params} | {"width": 0.1}, (1, 8, 8))).eval()
    with torch.no_grad():
        expected = 100.0 * float((model(ctx.data.test).argmax(1) == labels).float().mean())  # percent, by hand
    record = SimpleNamespace(config={"seed": 0})
    one = 100.0 / len(labels)  # a near-tie may flip one image between runtimes
    for fmt, remeasure in (("onnx", remeasure_onnx), ("pt2", remeasure_pt2), ("torchscript", remeasure_torchscript)):
        exporter = ctx.registry.exporters.get(fmt)
        path = tmp_path / exporter.filename_for(model)
        exporter.export(model, str(path), ctx.data.test[:2])
        figures = remeasure(ctx, record, path, model)
        assert figures["test_accuracy"] == pytest.approx(expected, abs=one), fmt
        if fmt == "onnx":  # a float classifier runs on onnxruntime's float kernels
            assert figures["runtime"] == "onnxruntime"
        unlabelled = dataclasses.replace(ctx, data=dataclasses.replace(ctx.data, test_labels=None))
        with pytest.raises(ExportError, match="was loaded without labels, but accuracy needs them"):
            remeasure(unlabelled, record, path, model)


def test_an_exact_figure_one_byte_off_stops_the_export_saying_exactly(study: dict[str, Any], tmp_path: Path) -> None:
    ctx = open_study_context(study["storage"], "export-test")
    trial = copy.deepcopy(ctx.study.trials[FLOAT_TRIAL])
    metrics = trial.user_attrs["record"]["metrics"]
    size = metrics["size_bytes"]
    metrics["size_bytes"] = size + 1
    with pytest.raises(ExportError) as info:
        export_trial(ctx, trial, tmp_path, formats=("safetensors",))
    assert str(info.value).splitlines() == [
        f"trial {FLOAT_TRIAL}: exported files do not reproduce the search's figures:",
        f"  {WEIGHTS}: size_bytes expected {size + 1:.6g} (exactly), got {size:.6g} (off by {1 / (size + 1):.2%})",
    ]


def test_each_figure_is_checked_relative_to_the_search_at_its_tolerance_boundary() -> None:
    from vae_automl.export import TOLERANCES, _check

    checks: list[dict[str, Any]] = []
    assert TOLERANCES["test_elbo_nats"] == TOLERANCES["recon_error"] == 0.01 and TOLERANCES["size_bytes"] == 0.0
    _check(checks, "test_elbo_nats", "model.onnx", 100.0, 101.0)  # off by exactly 1%: allowed
    _check(checks, "test_elbo_nats", "model.onnx", 100.0, 101.0001)  # just over
    _check(checks, "recon_error", "model.onnx", 0.5, 0.5055)  # 1.1% of a figure below 1 (0.0055 absolute)
    _check(checks, "size_bytes", WEIGHTS, 1000.0, 1000.0)
    _check(checks, "size_bytes", WEIGHTS, 1000.0, 1001.0)
    _check(checks, "test_elbo_nats", "model.pt", 100.0, float("nan"))
    _check(checks, "latency_ms", "model.pt", 1.0, 9.0)  # no tolerance: machine-dependent, not checked
    assert [c["ok"] for c in checks] == [True, False, False, True, False, False]
    assert checks[2]["rel_diff"] == pytest.approx(0.011)


def test_a_partial_folder_left_by_a_crashed_export_is_cleared_first(study: dict[str, Any], tmp_path: Path) -> None:
    stale = tmp_path / f".trial-{FLOAT_TRIAL}.partial"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half written")
    ctx = open_study_context(study["storage"], "export-test")
    folder = export_trial(ctx, ctx.study.trials[FLOAT_TRIAL], tmp_path, formats=["safetensors"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, WEIGHTS]


def test_the_manifest_says_what_the_search_measured_where_and_when(study: dict[str, Any]) -> None:
    import datetime

    folder = study["folders"][FLOAT_TRIAL]
    manifest = manifest_of(folder)
    record = open_study_context(study["storage"], "export-test").study.trials[FLOAT_TRIAL].user_attrs["record"]
    assert set(manifest) == {"format", "manifest_version", "study", "trial", "params", "pipeline", "model_config",
                             "plugins", "objectives", "search", "remeasured", "checks", "files", "versions", "created",
                             "manifest_sha256"}
    assert manifest["objectives"] == {"test_elbo_nats": "minimize", "size_bytes": "minimize", "latency_ms": "minimize"}
    assert manifest["search"] == {"objectives": record["objectives"], "metrics": record["metrics"],
                                  "latency": record["latency"], "device": record["device"], "data": record["data"]}
    created = datetime.datetime.fromisoformat(manifest["created"])
    assert created.utcoffset() == datetime.timedelta(0)  # UTC, to the second
    assert abs((datetime.datetime.now(datetime.UTC) - created).total_seconds()) < 3600


def test_versions_name_a_missing_package_as_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib import metadata

    from vae_automl.export import versions

    real = metadata.version

    def version(dist: str) -> str:
        if dist == "onnx":
            raise metadata.PackageNotFoundError(dist)
        return real(dist)

    monkeypatch.setattr(metadata, "version", version)
    found = versions()
    assert found["onnx"] == "not installed" and found["onnxruntime"] == real("onnxruntime")


def test_a_manifest_without_a_file_list_owns_only_itself(tmp_path: Path) -> None:
    from vae_automl.export import own_files

    (tmp_path / MANIFEST).write_text(json.dumps({"format": "vae-automl-export"}))
    assert own_files(tmp_path, overwrite=True) == {MANIFEST}
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"holds files an export did not write \(notes.txt\)"):
        own_files(tmp_path, overwrite=True)


# --- the data a study is exported on: a --data-dir given to the search, colour, download, a --plugin dataset ---

MNIST_FROM_A_FOLDER = """
name: mnist-dir
task: classifier
dataset: {spec: mnist, color: rgb, split: {validation: 0.1, test: 0.2, seed: 0}}
device: cpu
seed: 0
architecture: {lenet_300_100: {width: 0.1}}
training: {epochs: 1, batch_size: 64}
objectives: [test_accuracy, size_bytes]
sampler: {name: random, seed: 0}
trials: 1
"""


def write_idx(path: Path, array: Any) -> None:
    """An MNIST-format (IDX) file of uint8 ``array``, gzipped as the MNIST files ship."""
    import gzip
    import struct

    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype("uint8").tobytes()))


def test_a_study_searched_with_a_data_dir_exports_from_the_data_dir_given_to_export(tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """``search --data-dir D`` over a YAML naming no folder: export reads the images and labels from the
    ``data_dir`` it is given, in the YAML's colour, and splits them as the search did."""
    import numpy as np

    from vae_automl.config import load_space_text
    from vae_automl.data import DATA_DIR_ENV
    from vae_automl.errors import DataError

    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (150, 8, 8), dtype=np.uint8)
    labels = np.arange(150) % 10
    write_idx(data_dir / "train-images-idx3-ubyte.gz", images[:120])
    write_idx(data_dir / "train-labels-idx1-ubyte.gz", labels[:120])
    write_idx(data_dir / "t10k-images-idx3-ubyte.gz", images[120:])
    write_idx(data_dir / "t10k-labels-idx1-ubyte.gz", labels[120:])
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    result = vae_automl.search(load_space_text(MNIST_FROM_A_FOLDER, "m.yaml"), storage=storage, out_dir=tmp_path / "run",
                               data_dir=str(data_dir), show_progress=False)
    assert result.completed == 1
    # the folder is not in the stored YAML: without it export cannot find the images
    with pytest.raises(DataError, match="dataset 'mnist' needs a folder"):
        open_study_context(storage, "mnist-dir")

    ctx = open_study_context(storage, "mnist-dir", data_dir=str(data_dir))
    record = TrialRecord.from_trial(ctx.study.trials[0])
    assert record is not None
    assert ctx.data.info["dataset"] == record.data["dataset"] == "mnist"
    assert ctx.data.info["split_sha256"] == record.data["split_sha256"]
    test, test_labels = ctx.data.test.numpy(), ctx.data.test_labels
    assert test.shape == (30, 3, 8, 8) and test_labels is not None
    # oracle: each test image is one written, grey in all three channels, with the label written beside it
    label_of = {image.tobytes(): int(label) for image, label in zip(images, labels, strict=True)}
    for image, label in zip(test, test_labels.tolist(), strict=True):
        assert np.array_equal(image[0], image[1]) and np.array_equal(image[0], image[2])
        assert label_of[np.round(image[0] * 255).astype(np.uint8).tobytes()] == label

    (folder,) = export_study(storage, "mnist-dir", tmp_path / "export", trials=[0], formats=["safetensors"],
                             data_dir=str(data_dir))
    manifest = manifest_of(folder)
    assert manifest["model_config"]["input_shape"] == [3, 8, 8]
    assert manifest["checks"] and all(c["ok"] for c in manifest["checks"])


def test_each_context_data_names_the_dataset_of_the_records(study: dict[str, Any]) -> None:
    ctx = open_study_context(study["storage"], "export-test")
    for trial in ctx.study.trials:
        record = TrialRecord.from_trial(trial)
        assert record is not None and record.data["dataset"] == ctx.data.info["dataset"] == "digits"


MIRROR_PLUGIN = '''
"""A dataset fetched into data_dir from a mirror folder when download is allowed (like MNIST's download: true),
and an architecture of its own (LeNet-300-100 under another name)."""
import shutil
from pathlib import Path

import numpy as np

from vae_automl.builtin.classifiers import LeNet300100
from vae_automl.components import Dataset
from vae_automl.errors import DataError
from vae_automl.plugin_manager import hookimpl

MIRROR = Path({mirror!r})


class MirrorDataset(Dataset):
    name = "mirror"
    help = "images.npy and labels.npy in data_dir, fetched from the mirror with download: true"

    def _read(self, data_dir, download, file):
        path = Path(data_dir) / file
        if not path.is_file() and download:
            shutil.copy(MIRROR / file, path)
        if not path.is_file():
            raise DataError(f"dataset 'mirror': no {{path}}; set download: true to fetch it")
        return np.load(path)

    def load(self, arg, data_dir, download):
        return self._read(data_dir, download, "images.npy")

    def load_labels(self, arg, data_dir, download):
        return self._read(data_dir, download, "labels.npy")


class MirrorNet(LeNet300100):
    name = "mirror_net"


@hookimpl
def register_datasets(register):
    register(MirrorDataset())


@hookimpl
def register_architectures(register):
    register(MirrorNet())
'''

MIRRORED = """
name: {name}
task: classifier
dataset: {{spec: mirror, download: {download}, split: {{validation: 0.1, test: 0.2, seed: 0}}}}
device: cpu
seed: 0
architecture: {{mirror_net: {{width: 0.1}}}}
training: {{epochs: 1, batch_size: 64}}
objectives: [test_accuracy, size_bytes]
sampler: {{name: random, seed: 0}}
trials: {trials}
"""


@pytest.fixture
def mirror_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    """The module name of :data:`MIRROR_PLUGIN` (importable, given as --plugin) and its mirror's images and labels;
    the plugin manager forgets it afterwards."""
    import numpy as np

    from vae_automl.plugin_manager import get_plugin_manager
    from vae_automl.registry import reset_registry

    mirror = tmp_path / "mirror"
    mirror.mkdir()
    rng = np.random.default_rng(7)
    images, labels = rng.integers(0, 256, (150, 8, 8), dtype=np.uint8), np.arange(150) % 10
    np.save(mirror / "images.npy", images)
    np.save(mirror / "labels.npy", labels)
    name = "vae_automl_test_mirror_plugin"
    (tmp_path / f"{name}.py").write_text(MIRROR_PLUGIN.format(mirror=str(mirror)))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)

    def forget() -> None:  # as a new process would start: without the plugin until --plugin names it
        if get_plugin_manager().has_plugin(name):
            get_plugin_manager().unregister(name=name)
        reset_registry()

    try:
        yield name, forget
    finally:
        forget()


def test_export_with_plugin_opens_a_plugin_dataset_and_fetches_it_when_the_study_may_download(
        tmp_path: Path, mirror_plugin: tuple[str, Any]) -> None:
    """``search --plugin P`` then, in another process, ``export --plugin P --data-dir NEW``: the study said
    ``download: true``, so export fetches the images and the labels into the new folder, and builds the
    plugin's architecture."""
    from vae_automl.config import load_space_text
    from vae_automl.errors import ConfigError
    from vae_automl.registry import get_registry

    plugin, forget = mirror_plugin
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    searched, exported = tmp_path / "searched", tmp_path / "exported"
    searched.mkdir()
    exported.mkdir()
    text = MIRRORED.format(name="mirrored", download="true", trials=1)
    space = load_space_text(text, "m.yaml", get_registry((plugin,)))
    result = vae_automl.search(space, storage=storage, out_dir=tmp_path / "run", data_dir=str(searched), plugins=(plugin,),
                               show_progress=False)
    assert result.completed == 1 and space.dataset.download
    assert sorted(p.name for p in searched.iterdir()) == ["images.npy", "labels.npy"]
    forget()
    with pytest.raises(ConfigError, match="unknown dataset 'mirror'"):
        export_study(storage, "mirrored", tmp_path / "out", trials=[0], formats=["safetensors"], data_dir=str(exported))
    (folder,) = export_study(storage, "mirrored", tmp_path / "out", trials=[0], formats=["safetensors"],
                             data_dir=str(exported), plugins=(plugin,))
    assert sorted(p.name for p in exported.iterdir()) == ["images.npy", "labels.npy"]
    assert manifest_of(folder)["model_config"]["architecture"] == "mirror_net"
    assert manifest_of(folder)["checks"] and all(c["ok"] for c in manifest_of(folder)["checks"])

    # a context keeps the plugins it was opened with: its trials export even after the process forgot them
    ctx = open_study_context(storage, "mirrored", data_dir=str(exported), plugins=(plugin,))
    forget()
    again = export_trial(ctx, ctx.study.trials[0], tmp_path / "again", formats=["safetensors"])
    assert (again / WEIGHTS).read_bytes() == (folder / WEIGHTS).read_bytes()


def test_export_of_a_study_that_may_not_download_fetches_nothing(tmp_path: Path, mirror_plugin: tuple[str, Any]) -> None:
    """``download: false``: a folder holding the images but not the labels is refused; nothing is fetched."""
    import numpy as np

    from vae_automl.config import load_space_text
    from vae_automl.errors import DataError
    from vae_automl.registry import get_registry

    plugin, _ = mirror_plugin
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    text = MIRRORED.format(name="offline", download="false", trials=0)
    vae_automl.search(load_space_text(text, "m.yaml", get_registry((plugin,))), storage=storage, out_dir=tmp_path / "run",
                      data_dir=str(tmp_path / "mirror"), plugins=(plugin,), show_progress=False)
    partial = tmp_path / "partial"
    partial.mkdir()
    np.save(partial / "images.npy", np.load(tmp_path / "mirror" / "images.npy"))
    with pytest.raises(DataError, match=r"no .*labels\.npy; set download: true"):
        open_study_context(storage, "offline", data_dir=str(partial), plugins=(plugin,))
    assert sorted(p.name for p in partial.iterdir()) == ["images.npy"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=r"no .*images\.npy; set download: true"):
        open_study_context(storage, "offline", data_dir=str(empty), plugins=(plugin,))
    assert not list(empty.iterdir())


def test_torchscript_remeasure_hides_only_torch_jits_deprecation_warning(study: dict[str, Any],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """torch.jit.load's FutureWarning (TorchScript is deprecated upstream) is noise to a user; any other warning
    raised while loading the file must still reach them."""
    from vae_automl.export import record_of, remeasure_torchscript

    ctx = open_study_context(study["storage"], "export-test")
    record = record_of(ctx.study.trials[FLOAT_TRIAL])
    model, _ = load_artifact(record)
    real_load = torch.jit.load

    def load(*args: Any, **kwargs: Any) -> Any:
        warnings.warn("torch.jit is deprecated", FutureWarning, stacklevel=2)
        warnings.warn("the file was saved by another torch", UserWarning, stacklevel=2)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch.jit, "load", load)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures = remeasure_torchscript(ctx, record, study["folders"][FLOAT_TRIAL] / "model.pt", model)
    assert [(w.category, str(w.message)) for w in caught] == [(UserWarning, "the file was saved by another torch")]
    assert figures["test_elbo_nats"] == manifest_of(study["folders"][FLOAT_TRIAL])["remeasured"]["torchscript"]["test_elbo_nats"]
