"""Objective and metric names where Optuna's tools read them: study.metric_names, trials_dataframe, optuna-dashboard."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import optuna
import pytest

from vae_automl.api import search
from vae_automl.study import OBJECTIVES_ATTR, objectives_of, open_study


@pytest.fixture(scope="module")
def named_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A study the search wrote: 2 one-epoch trials on digits, objectives ELBO and bytes."""
    from conftest import TINY_SPACE

    root = tmp_path_factory.mktemp("named")
    space = root / "tiny.yaml"
    space.write_text(TINY_SPACE.format(name="named", trials=2, lr="3.0e-3", max_epochs=1, seed=0, pruner="none",
                                       extra_training="", compressors="[]"))
    storage = f"sqlite:///{root / 'study.db'}"
    result = search(space, trials=2, storage=storage, out_dir=root / "run", show_progress=False)
    assert result.completed == 2
    return storage, "named"


def test_search_names_objectives_and_metrics_for_optuna(named_study: tuple[str, str]) -> None:
    storage, name = named_study
    study = optuna.load_study(study_name=name, storage=storage)
    assert study.metric_names == ["test_elbo_nats", "size_bytes"]
    frame = study.trials_dataframe()
    assert {"values_test_elbo_nats", "values_size_bytes"} <= set(frame.columns)
    assert "values_0" not in frame.columns
    # every recorded figure is its own column, equal to the record's value
    for metric in ("size_bytes", "latency_ms", "recon_error"):
        column = f"user_attrs_metric_{metric}"
        assert column in frame.columns
        assert list(frame[column]) == [t.user_attrs["metrics"][metric] for t in study.trials]
    assert list(frame["values_size_bytes"]) == list(frame["user_attrs_metric_size_bytes"])


def test_a_study_from_before_metric_names_is_upgraded_when_opened(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'old.db'}"
    old = optuna.create_study(storage=storage, study_name="old", directions=["minimize", "maximize"])
    old.set_user_attr(OBJECTIVES_ATTR, ["test_elbo_nats", "psnr_db"])  # how 0.2 kept the names
    old.add_trial(optuna.trial.create_trial(values=[90.0, 30.0]))
    assert optuna.load_study(study_name="old", storage=storage).metric_names is None

    opened = open_study(storage, "old")
    assert opened.metric_names == ["test_elbo_nats", "psnr_db"]
    assert optuna.load_study(study_name="old", storage=storage).metric_names == ["test_elbo_nats", "psnr_db"]
    assert objectives_of(opened) == (["test_elbo_nats", "psnr_db"], ["minimize", "maximize"])


def test_names_come_from_optuna_when_our_attribute_is_absent(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="s", directions=["minimize"] * 2)
    study.set_metric_names(["rate_bytes_per_image", "decoder_bytes"])
    assert objectives_of(study)[0] == ["rate_bytes_per_image", "decoder_bytes"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def test_optuna_dashboard_reads_the_names_back(named_study: tuple[str, str]) -> None:
    """The real optuna-dashboard server on loopback, read through its HTTP API, then stopped."""
    storage, name = named_study
    exe = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent))
    assert exe, "optuna-dashboard is in the dev extra: pip install -e .[dev]"
    port = _free_port()
    proc = subprocess.Popen([exe, storage, "--host", "127.0.0.1", "--port", str(port), "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                studies = _get_json(f"{base}/api/studies")["study_summaries"]
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"optuna-dashboard did not serve: {proc.stderr.read() if proc.stderr else ''}")
                time.sleep(0.2)
        study_id = next(s["study_id"] for s in studies if s["study_name"] == name)
        detail = _get_json(f"{base}/api/studies/{study_id}")
        assert detail["objective_names"] == ["test_elbo_nats", "size_bytes"]
        keys = {a["key"] for a in detail["union_user_attrs"]}
        assert {"metric_latency_ms", "metric_recon_error", "metric_size_bytes"} <= keys
        with urllib.request.urlopen(f"{base}/csv/{study_id}", timeout=5) as response:
            header = response.read().decode().splitlines()[0].split(",")
        assert header[2:4] == ["test_elbo_nats", "size_bytes"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_study_that_cannot_be_upgraded_still_opens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vae_automl import study as study_mod

    storage = f"sqlite:///{tmp_path / 'old.db'}"
    old = optuna.create_study(storage=storage, study_name="old", directions=["minimize", "minimize"])
    old.set_user_attr(OBJECTIVES_ATTR, ["test_elbo_nats", "size_bytes"])

    def read_only(*args: Any) -> None:
        raise optuna.exceptions.StorageInternalError("attempt to write a readonly database")

    monkeypatch.setattr(study_mod, "name_objectives", read_only)
    opened = open_study(storage, "old")  # e.g. `front` on a database it may only read
    assert opened.metric_names is None
    assert objectives_of(opened)[0] == ["test_elbo_nats", "size_bytes"]
