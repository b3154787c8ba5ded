"""Loading an export folder: every refusal of loading.py, on folders written here (no search needed).

The folder is what ``vae-automl export`` writes, reduced to what loading reads: ``manifest.json`` with
``format``, ``manifest_version``, ``files`` ({name: {sha256, size_bytes}}) and ``plugins``, and the files.
The digests here come from hashlib directly, not from the project's ``sha256_file``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from test_golden_format import GOLDEN, dense_model

from vae_automl.errors import ExportError, IntegrityError, PluginError
from vae_automl.loading import check_plugins, load, read_manifest

BIG = 3 * 1024 * 1024 + 17  # past any hashing chunk (hashlib.file_digest reads 256 KiB at a time) and 1 MiB


def write_manifest(directory: Path, manifest: dict[str, Any], digest: bool = True) -> None:
    """``manifest.json``, with ``manifest_sha256``: the sha256 of its canonical JSON without that key."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    if digest:
        body["manifest_sha256"] = hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(body))


def write_folder(directory: Path, big: bool = True, **overrides: Any) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "weights.safetensors").write_bytes((GOLDEN / "mlp_float32.safetensors").read_bytes())
    if big:
        (directory / "model.bin").write_bytes(bytes(range(256)) * (BIG // 256) + b"x" * (BIG % 256))
    files = {p.name: {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "size_bytes": os.path.getsize(p)}
             for p in sorted(directory.iterdir())}
    manifest = {"format": "vae-automl-export", "manifest_version": 2, "trial": 3, "files": files, "plugins": {},
                **overrides}
    write_manifest(directory, manifest)
    return json.loads((directory / "manifest.json").read_text())


def test_a_valid_folder_loads_the_model_with_its_manifest(tmp_path: Path) -> None:
    manifest = write_folder(tmp_path / "trial-3")
    model = load(tmp_path / "trial-3")
    for name, tensor in dense_model().state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert model.manifest == manifest
    assert not model.training  # eval mode
    assert manifest["files"]["model.bin"]["size_bytes"] == BIG == os.path.getsize(tmp_path / "trial-3" / "model.bin")


@pytest.mark.parametrize("offset", [0, 1024 * 1024 + 5, BIG - 1])
def test_a_changed_byte_anywhere_in_a_large_file_is_refused(tmp_path: Path, offset: int) -> None:
    folder = tmp_path / "trial-3"
    write_folder(folder)
    path = folder / "model.bin"
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 1]))
    with pytest.raises(IntegrityError, match=r"model\.bin: sha256 .* does not match manifest\.json"):
        load(folder)


def test_appended_bytes_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "trial-3"
    write_folder(folder, big=False)
    with open(folder / "weights.safetensors", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(IntegrityError, match="weights.safetensors"):
        load(folder)


def test_a_listed_file_that_is_missing_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "trial-3"
    write_folder(folder)
    (folder / "model.bin").unlink()
    with pytest.raises(IntegrityError, match=r"model\.bin: listed in manifest\.json but missing"):
        load(folder)


@pytest.mark.parametrize("name", ["../weights.safetensors", "sub/model.bin", "/etc/passwd"])
def test_a_file_name_with_a_path_is_refused(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "trial-3"
    manifest = write_folder(folder, big=False)
    manifest["files"][name] = dict(manifest["files"]["weights.safetensors"])
    write_manifest(folder, manifest)
    (tmp_path / "weights.safetensors").write_bytes((folder / "weights.safetensors").read_bytes())  # it would verify
    with pytest.raises(ExportError, match=f"file name {name!r} is not a plain file name"):
        load(folder)


@pytest.mark.parametrize(("change", "message"), [
    ({"manifest_version": 3}, r"manifest_version 3 is not one this version reads \(1, 2\)"),
    ({"manifest_version": 0}, r"manifest_version 0 is not one this version reads \(1, 2\)"),
    ({"manifest_version": None}, r"manifest_version None is not one this version reads \(1, 2\)"),
    ({"format": "something-else"}, "not a vae-automl export manifest"),
    ({"files": []}, "'files' must map each file name"),
    ({"files": {"weights.safetensors": {"size_bytes": 3}}}, "'files' must map each file name"),
    ({"files": {"weights.safetensors": {"sha256": 5}}}, "'files' must map each file name"),
    ({"files": {"weights.safetensors": "abc"}}, "'files' must map each file name"),
    ({"files": {}}, r"'files' lists no weights file \(weights.safetensors or weights.vac\)"),
])
def test_a_malformed_manifest_is_refused(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    folder = tmp_path / "trial-3"
    write_folder(folder, big=False, **change)
    with pytest.raises(ExportError, match=message):
        load(folder)


def test_a_manifest_without_format_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "trial-3"
    manifest = write_folder(folder, big=False)
    del manifest["format"]
    write_manifest(folder, manifest)
    with pytest.raises(ExportError, match="'format' must be 'vae-automl-export'"):
        read_manifest(folder)
    (folder / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ExportError, match="not a vae-automl export manifest"):
        read_manifest(folder)


@pytest.mark.parametrize("content", [b"{not json", b"\xff\xfe\x00garbage"])
def test_a_manifest_that_is_not_json_is_refused(tmp_path: Path, content: bytes) -> None:
    folder = tmp_path / "trial-3"
    write_folder(folder, big=False)
    (folder / "manifest.json").write_bytes(content)
    with pytest.raises(ExportError, match=r"manifest\.json: not valid JSON"):
        load(folder)


def test_no_manifest_is_refused_naming_the_folder(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match=f"no manifest; is {tmp_path} a folder written by `vae-automl export`"):
        load(tmp_path)


def test_weights_that_are_not_a_model_file_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "trial-3"
    (folder).mkdir()
    (folder / "weights.safetensors").write_bytes(b"1234")  # listed with its true digest: verifies, but is no model
    files = {"weights.safetensors": {"sha256": hashlib.sha256(b"1234").hexdigest(), "size_bytes": 4}}
    write_manifest(folder, {"format": "vae-automl-export", "manifest_version": 2, "files": files})
    with pytest.raises(ExportError, match="shorter than its 8-byte length prefix"):
        load(folder)


def test_a_model_made_with_plugins_not_loaded_names_them_and_how_to_install(tmp_path: Path) -> None:
    plugins = {"vae_automl_nni": {"distribution": "vae-automl-nni", "version": "0.1.0", "module": "vae_automl_nni"},
               "my_plugin": {"module": "my_plugin"}}
    folder = tmp_path / "trial-3"
    write_folder(folder, big=False, plugins=plugins)
    with pytest.raises(PluginError) as info:
        load(folder)
    message = str(info.value)
    assert message.startswith(f"{folder / 'manifest.json'}: the model was made with plugins that are not loaded: ")
    assert "plugin 'vae_automl_nni' from vae-automl-nni 0.1.0 (pip install 'vae-automl-nni==0.1.0')" in message
    assert "plugin 'my_plugin' from (no pip package recorded)  (--plugin my_plugin)" in message
    assert message.index("my_plugin") < message.index("vae_automl_nni")  # sorted by name


def test_loaded_plugins_pass_and_a_plugin_without_module_is_named() -> None:
    check_plugins(Path("m.json"), {"plugins": {"a": {}}}, {"a"})  # loaded: nothing to say
    check_plugins(Path("m.json"), {}, set())  # no plugins recorded
    with pytest.raises(PluginError, match=r"plugin 'b' from \(no pip package recorded\)  \(--plugin b\)"):
        check_plugins(Path("m.json"), {"plugins": {"b": {}}}, {"a"})


@pytest.mark.parametrize("edit", ["figure", "no digest", "digest"])
def test_an_edited_manifest_is_refused(tmp_path: Path, edit: str) -> None:
    folder = tmp_path / "trial-3"
    manifest = write_folder(folder, big=False)
    if edit == "figure":
        manifest["trial"] = 4  # the digest no longer matches
        (folder / "manifest.json").write_text(json.dumps(manifest))
    elif edit == "no digest":
        write_manifest(folder, manifest, digest=False)
    else:
        manifest["manifest_sha256"] = "0" * 64
        (folder / "manifest.json").write_text(json.dumps(manifest))
    missing = "(missing)" if edit == "no digest" else ""
    message = r"manifest\.json: its content does not match its manifest_sha256 " + re.escape(missing)
    with pytest.raises(IntegrityError, match=message):
        load(folder)


def test_a_version_1_manifest_without_digest_loads_with_a_warning(tmp_path: Path) -> None:
    """Folders exported before manifests carried their own hash still load; their files are still verified."""
    folder = tmp_path / "trial-3"
    manifest = write_folder(folder, big=False, manifest_version=1)
    write_manifest(folder, {k: v for k, v in manifest.items() if k != "manifest_sha256"}, digest=False)
    with pytest.warns(UserWarning, match="manifest_version 1 has no manifest_sha256"):
        model = load(folder)
    assert model.manifest["manifest_version"] == 1
    (folder / "weights.safetensors").write_bytes(b"x" + (folder / "weights.safetensors").read_bytes()[1:])
    with pytest.raises(IntegrityError, match="sha256"), pytest.warns(UserWarning):
        load(folder)


def test_a_version_1_manifest_with_a_wrong_digest_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "trial-3"
    manifest = write_folder(folder, big=False, manifest_version=1)
    manifest["trial"] = 4
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IntegrityError, match="does not match its manifest_sha256"):
        load(folder)


@pytest.mark.parametrize("name", ["weights.vac", "weights.safetensors"])
def test_a_compact_weights_file_loads_as_weights_vac_and_under_the_old_name(tmp_path: Path, name: str) -> None:
    # weights.vac is what export writes for the compact container now; folders exported before it named the
    # same bytes weights.safetensors, and they must still load.
    from test_compact_storage import GOLDEN as COMPACT_GOLDEN
    from test_compact_storage import zoo_model

    folder = tmp_path / "trial-3"
    folder.mkdir()
    (folder / name).write_bytes(COMPACT_GOLDEN.read_bytes())
    files = {name: {"sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest(), "size_bytes": 1}}
    write_manifest(folder, {"format": "vae-automl-export", "manifest_version": 2, "files": files, "plugins": {}})
    model = load(folder)
    assert model.container == "compact"
    expected = zoo_model().state_dict()
    assert set(model.state_dict()) == set(expected)
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, expected[key]), key
