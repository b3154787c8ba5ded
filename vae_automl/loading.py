"""Load an exported model folder (``DIR/trial-N``) back: verified, from safetensors, no unpickling."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vae_automl.errors import ExportError, IntegrityError, PluginError
from vae_automl.export import (
    MANIFEST,
    MANIFEST_DIGEST,
    MANIFEST_FORMAT,
    MANIFEST_VERSION,
    READABLE_MANIFEST_VERSIONS,
    manifest_digest,
    sha256_file,
)
from vae_automl.registry import get_registry
from vae_automl.storage.format import WEIGHTS_FILES, deserialize_model

if TYPE_CHECKING:
    from vae_automl.vae import VAE


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of an export folder; a missing or malformed one raises ExportError."""

    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ExportError(f"{path}: no manifest; is {directory} a folder written by `vae-automl export`?")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise ExportError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ExportError(f"{path}: not a vae-automl export manifest (its 'format' must be {MANIFEST_FORMAT!r})")
    version = manifest.get("manifest_version")
    if version not in READABLE_MANIFEST_VERSIONS:
        readable = ", ".join(map(str, READABLE_MANIFEST_VERSIONS))
        raise ExportError(f"{path}: manifest_version {version!r} is not one this version reads ({readable})")
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in files.values()):
        raise ExportError(f"{path}: 'files' must map each file name to {{sha256, size_bytes}}")
    if not any(name in files for name in WEIGHTS_FILES):
        raise ExportError(f"{path}: 'files' lists no weights file ({' or '.join(WEIGHTS_FILES)})")
    digest = manifest.get(MANIFEST_DIGEST)
    if digest is None and version < MANIFEST_VERSION:
        # exported before manifests carried their own hash: the files are still verified, the figures cannot be
        warnings.warn(
            f"{path}: manifest_version {version} has no {MANIFEST_DIGEST}, so its recorded figures are not verified; "
            "export the trial again to have them checked",
            stacklevel=2,
        )
    elif digest != manifest_digest(manifest):
        # the figures a user reads from model.manifest must be the ones export measured
        raise IntegrityError(
            f"{path}: its content does not match its {MANIFEST_DIGEST} "
            f"({'missing' if digest is None else digest}); manifest.json was edited after export: export the trial again"
        )
    return manifest


def weights_file(directory: str | Path, manifest: dict[str, Any]) -> Path:
    """The weights file an export folder's manifest lists: ``weights.vac`` (compact container) or
    ``weights.safetensors`` (which folders exported before ``weights.vac`` existed use for compact bytes too:
    :func:`~vae_automl.storage.format.deserialize_model` tells the containers apart by their first bytes)."""
    return Path(directory) / next(name for name in WEIGHTS_FILES if name in manifest["files"])


def verify_files(directory: str | Path, manifest: dict[str, Any]) -> None:
    """Check every file listed in the manifest against its sha256; raise IntegrityError naming the first that differs."""

    directory = Path(directory)
    for name, entry in manifest["files"].items():
        path = directory / name
        if Path(name).name != name:
            raise ExportError(f"{directory / 'manifest.json'}: file name {name!r} is not a plain file name")
        if not path.is_file():
            raise IntegrityError(f"{path}: listed in manifest.json but missing")
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise IntegrityError(
                f"{path}: sha256 {digest} does not match manifest.json's {entry['sha256']}; "
                "the file was modified or corrupted after export"
            )


def check_plugins(path: Path, manifest: dict[str, Any], loaded: set[str]) -> None:
    """Raise PluginError naming each plugin the model was made with that is not loaded, and the package providing it."""

    missing = {name: info for name, info in manifest.get("plugins", {}).items() if name not in loaded}
    if missing:
        hints = []
        for name, info in sorted(missing.items()):
            dist = info.get("distribution") or "(no pip package recorded)"
            install = (
                f"pip install '{dist}=={info.get('version')}'"
                if info.get("distribution")
                else f"--plugin {info.get('module') or name}"
            )
            hints.append(f"plugin {name!r} from {dist} {info.get('version', '')} ({install})")
        raise PluginError(f"{path}: the model was made with plugins that are not loaded: {'; '.join(hints)}")


def load(directory: str | Path, plugins: tuple[str, ...] = ()) -> VAE:
    """The model of an export folder, with ``encode``, ``decode``, ``sample`` and ``reconstruct``.

    Every file's sha256 is checked against ``manifest.json`` first; the model
    is rebuilt from ``weights.safetensors`` or ``weights.vac`` (tensors plus a
    JSON header: no pickle). The manifest is attached as ``model.manifest``.

    Args:
        directory: a ``trial-N`` folder written by :func:`vae_automl.export.export_study`.
        plugins: extra plugin modules whose architectures or codecs the model uses.

    Raises:
        PluginError: a plugin the model was made with is not loaded (named, with its package).
        IntegrityError: a file does not match its recorded sha256.
        ExportError: the manifest is missing, malformed or of another version.
    """

    manifest = read_manifest(directory)
    verify_files(directory, manifest)
    registry = get_registry(plugins)
    check_plugins(Path(directory) / "manifest.json", manifest, registry.plugins())
    model = deserialize_model(weights_file(directory, manifest).read_bytes(), registry)
    model.manifest = manifest  # type: ignore[assignment]  # torch types unknown attributes as Tensor | Module
    return model
