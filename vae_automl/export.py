"""Export a study's models as verified artifacts: ``DIR/trial-N/{weights.safetensors, model.onnx, model.pt2, ...}``.

The weights file is ``weights.safetensors``, or ``weights.vac`` when the
model is stored in the compact container (which is no safetensors file);
folders exported before that name held compact bytes as
``weights.safetensors`` and still load.

A model is rebuilt exactly from the packed file the search saved
(``record.artifact``, its sha256 checked against the record first),
written in each format, and re-measured from the written files: test ELBO
(a classifier: test accuracy) of the ONNX model in onnxruntime, of the
``torch.export`` program, of the TorchScript module and of the model loaded back from the weights file
(same fixed noise as the search's :func:`vae_automl.train.evaluate_elbo`),
and the byte size of
the weights file. A figure that disagrees with the search
(:data:`TOLERANCES`) stops the export with :class:`ExportError`; the
trial's folder is written to a temporary name and only renamed into place
once every check passed, so a failed export leaves nothing that looks valid.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch

from vae_automl import study as study_mod
from vae_automl.classifier import accuracy_of
from vae_automl.components import MeasureContext
from vae_automl.data import load_images, load_labels, make_splits
from vae_automl.errors import ExportError
from vae_automl.record import TrialRecord
from vae_automl.registry import get_registry
from vae_automl.storage.format import deserialize_model, weights_filename
from vae_automl.study import completed_trials, front_of_study
from vae_automl.vae import VAE, kl_to_prior, reconstruction_nll

if TYPE_CHECKING:
    import optuna

    from vae_automl.config import SearchSpace
    from vae_automl.data import DataSplits
    from vae_automl.registry import Registry
    from vae_automl.vae import VAE

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "vae-automl-export"
MANIFEST_VERSION = 2
"""2 added :data:`MANIFEST_DIGEST`; version 1 folders (no digest) still load, their figures unverified."""
READABLE_MANIFEST_VERSIONS: tuple[int, ...] = (1, 2)
WEIGHTS = "weights.safetensors"
"""The weights file of the safetensors container; the compact one's is ``weights.vac`` (:data:`WEIGHTS_FILES`)."""
DEFAULT_FORMATS: tuple[str, ...] = ("onnx", "pt2", "torchscript", "safetensors")
ELBO = "test_elbo_nats"
ACCURACY = "test_accuracy"
TOLERANCES: dict[str, float] = {
    ELBO: 0.01,
    ACCURACY: 0.005,
    "recon_error": 0.01,
    "size_bytes": 0.0,
    "params": 0.0,
    "theoretical_bits": 0.0,
}
"""Relative tolerance of each re-measured figure against the search's; 0 means exactly equal.

Figures not listed (latency_ms: it depends on the machine and its load) are
re-measured and written to the manifest, but not checked.
"""


@dataclass
class StudyContext:
    """A stored study with what re-measuring its models needs: the search space, registry and test data."""

    study: optuna.Study
    space: SearchSpace
    registry: Registry
    data: DataSplits
    objective_names: list[str]
    directions: list[str]


MANIFEST_DIGEST = "manifest_sha256"
"""The manifest's own key: sha256 of its other content, so an edited figure is refused on load, not believed."""


def manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without :data:`MANIFEST_DIGEST`."""
    body = {k: v for k, v in manifest.items() if k != MANIFEST_DIGEST}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def versions() -> dict[str, str]:
    """Versions of the packages an artifact depends on."""
    import vae_automl

    out = {"vae_automl": vae_automl.__version__, "torch": torch.__version__}
    for dist in ("onnx", "onnxruntime", "safetensors", "optuna"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def open_study_context(
    storage: str, study_name: str, dataset: str | None = None, data_dir: str | None = None, plugins: tuple[str, ...] = ()
) -> StudyContext:
    """Open a study and load its data exactly as the search split it (from the YAML stored in the study).

    Args:
        storage: the Optuna storage URL.
        study_name: the study.
        dataset, data_dir: override the stored space's (as ``search --dataset/--data-dir`` did).
        plugins: extra plugin modules (those whose codecs or architectures the models use).
    """
    registry = get_registry(plugins)
    study = study_mod.open_study(storage, study_name)
    space = study_mod.stored_space(study, registry)
    ds = space.dataset
    if dataset is None:
        # `search --dataset` overrides are not in the YAML, but every record names the spec it used.
        for trial in study_mod.completed_trials(study):
            record = TrialRecord.from_trial(trial)
            dataset = (record.data.get("dataset") if record else None) or None
            if dataset:
                break
    ds = dataclasses.replace(ds, spec=dataset or ds.spec, data_dir=data_dir or ds.data_dir)
    space = dataclasses.replace(space, dataset=ds)
    images = load_images(ds.spec, ds.data_dir, ds.download, registry, ds.image_size, ds.color)
    labels = load_labels(ds.spec, len(images), ds.data_dir, ds.download, registry) if space.needs_labels else None
    data = make_splits(images, ds.split, "cpu", spec=ds.spec, labels=labels)
    names, directions = study_mod.objectives_of(study)
    return StudyContext(study, space, registry, data, names, directions)


def record_of(trial: optuna.trial.FrozenTrial) -> TrialRecord:
    try:
        record = TrialRecord.from_trial(trial)
    except (ValueError, TypeError) as exc:
        raise ExportError(f"trial {trial.number}: its stored record is malformed: {exc}") from exc
    if record is None:
        raise ExportError(f"trial {trial.number} has no stored record with an artifact (made by an older vae-automl?)")
    return record


def load_artifact(record: TrialRecord | dict[str, Any] | None, registry: Registry | None = None) -> tuple[VAE, bytes]:
    """The model a trial saved at search time, after checking the file's sha256 against its record.

    ``record`` may be given as its stored dict; ``registry`` defaults to the process-wide one.
    """
    if record is None:
        raise ExportError("the trial has no stored record, so no saved model")
    if isinstance(record, dict):
        record = TrialRecord.from_dict(record)
    path = Path(record.artifact)
    if not path.is_file():
        raise ExportError(f"trial {record.trial}: saved model {path} is missing (moved out dir?)")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != record.artifact_sha256:
        raise ExportError(
            f"trial {record.trial}: {path} has sha256 {digest}, but the search recorded "
            f"{record.artifact_sha256}; the file changed since the search"
        )
    return deserialize_model(data, registry or get_registry()), data


@torch.no_grad()
def elbo_of(
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    decode: Callable[[torch.Tensor], torch.Tensor],
    likelihood: str,
    log_sigma: torch.Tensor | None,
    x: torch.Tensor,
    seed: int,
    beta: float = 1.0,
    chunk: int = 2048,
) -> float:
    """Negative ELBO per image of any encode/decode pair, with :func:`vae_automl.train.evaluate_elbo`'s noise.

    The same generator, seed and chunking draw the same ``eps``, so a
    faithful export gives the search's figure up to float rounding.
    """

    shim = SimpleNamespace(likelihood=likelihood, log_sigma=log_sigma)
    generator = torch.Generator(device=x.device).manual_seed(seed)
    total = 0.0
    for start in range(0, len(x), chunk):
        xb = x[start : start + chunk]
        mu, logvar = encode(xb)
        eps = torch.randn(len(xb), mu.shape[1], generator=generator, device=x.device)
        decoded = decode(mu + torch.exp(0.5 * logvar) * eps)
        total += float((reconstruction_nll(shim, decoded, xb) + beta * kl_to_prior(mu, logvar)).sum())  # type: ignore[arg-type]
    return total / len(x)


def quality_figure(model: Any) -> str:
    """The figure every exported format is re-measured on: a VAE's test ELBO, any other model's test accuracy."""

    return ELBO if isinstance(model, VAE) else ACCURACY


def remeasure_safetensors(ctx: StudyContext, record: TrialRecord, path: Path) -> dict[str, float]:
    """The search's objectives measured again on the packed weights file (its size is the file's length)."""

    model = deserialize_model(path.read_bytes(), ctx.registry).eval()
    measure_ctx = MeasureContext(
        model=model,
        data=ctx.data,
        device=torch.device("cpu"),
        seed=record.config["seed"],
        latency_batch_size=record.latency.batch_size,
        latency_repeats=record.latency.repeats,
        latency_warmup=ctx.space.latency.warmup,
        latency_target="cpu",
        registry=ctx.registry,
    )
    figures: dict[str, float] = {}
    for name in dict.fromkeys([quality_figure(model), *record.metrics]):
        objective = ctx.registry.objectives.get(name) if name in ctx.registry.objectives else None
        if objective is not None and (objective.tasks is None or ctx.space.task in objective.tasks):
            figures[name] = float(objective.measure(measure_ctx))
    figures["size_bytes"] = float(path.stat().st_size)
    return figures


def remeasure_onnx(ctx: StudyContext, record: TrialRecord, path: Path, model: VAE) -> dict[str, Any]:
    """The quality figure of an ONNX file run by onnxruntime, and which runtime (int8 kernels or not) ran it."""
    # deferred: onnx and onnxruntime load only when a model is exported or deployed
    from vae_automl import runtime

    onnx_bytes = path.read_bytes()
    if quality_figure(model) == ACCURACY:
        return {
            ACCURACY: accuracy_of(runtime.OnnxClassifier(onnx_bytes), ctx.data.test, _test_labels(ctx)),
            "runtime": "onnxruntime",
        }
    onnx_model = runtime.OnnxVAE(onnx_bytes)
    ops = runtime.integer_ops(onnx_bytes)
    elbo = elbo_of(
        onnx_model.encode, onnx_model.decode, model.likelihood, onnx_model.log_sigma(), ctx.data.test, seed=record.config["seed"]
    )
    return {ELBO: elbo, "runtime": runtime.RUNTIME_ORT_INT8 if ops else "onnxruntime", "integer_ops": sorted(set(ops))}


def _test_labels(ctx: StudyContext) -> torch.Tensor:
    if ctx.data.test_labels is None:
        raise ExportError(f"dataset {ctx.data.info.get('dataset')!r} was loaded without labels, but accuracy needs them")
    return ctx.data.test_labels


def remeasure_pt2(ctx: StudyContext, record: TrialRecord, path: Path, model: VAE) -> dict[str, Any]:
    """The quality figure of a ``torch.export`` (.pt2) file, loaded with ``torch.export.load``."""
    program = torch.export.load(str(path)).module()
    if quality_figure(model) == ACCURACY:
        return {ACCURACY: accuracy_of(program, ctx.data.test, _test_labels(ctx))}
    latent_dim, input_shape = model.latent_dim, tuple(model.input_shape)

    # The program maps (x, z) to (mu, logvar, decoded[, log_sigma]): a dummy of the same batch fills the unused input.
    def encode(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = program(x, torch.zeros(len(x), latent_dim, device=x.device))[:2]
        return mu, logvar

    def decode(z: torch.Tensor) -> torch.Tensor:
        return program(torch.zeros(len(z), *input_shape, device=z.device), z)[2]

    log_sigma = None
    if model.likelihood == "gaussian":
        log_sigma = program(torch.zeros(1, *input_shape), torch.zeros(1, latent_dim))[3].detach()
    return {ELBO: elbo_of(encode, decode, model.likelihood, log_sigma, ctx.data.test, seed=record.config["seed"])}


def remeasure_torchscript(ctx: StudyContext, record: TrialRecord, path: Path, model: VAE) -> dict[str, Any]:
    """The quality figure of a TorchScript file, loaded with torch.jit."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream; the file is still valid
        module = torch.jit.load(str(path), map_location="cpu")
    if quality_figure(model) == ACCURACY:
        return {ACCURACY: accuracy_of(module, ctx.data.test, _test_labels(ctx))}
    log_sigma = model.log_sigma.detach() if model.likelihood == "gaussian" else None
    return {ELBO: elbo_of(module.encode, module.decode, model.likelihood, log_sigma, ctx.data.test, seed=record.config["seed"])}


def _check(checks: list[dict[str, Any]], figure: str, file: str, expected: float, got: float) -> None:
    tolerance = TOLERANCES.get(figure)
    if tolerance is None:
        return
    rel = abs(got - expected) / max(abs(expected), 1e-12)
    ok = math.isfinite(got) and (got == expected if tolerance == 0 else rel <= tolerance)
    checks.append(
        {"figure": figure, "file": file, "expected": expected, "got": got, "rel_diff": rel, "tolerance": tolerance, "ok": ok}
    )


def _failures_message(trial: int, checks: list[dict[str, Any]]) -> str:
    lines = [f"trial {trial}: exported files do not reproduce the search's figures:"]
    for c in checks:
        if not c["ok"]:
            allowed = "exactly" if c["tolerance"] == 0 else f"within {c['tolerance']:.0%}"
            lines.append(
                f"  {c['file']}: {c['figure']} expected {c['expected']:.6g} ({allowed}), "
                f"got {c['got']:.6g} (off by {c['rel_diff']:.2%})"
            )
    return "\n".join(lines)


def exporters_of(ctx: StudyContext, formats: Sequence[str]) -> list[Any]:
    """The exporters of ``formats``, safetensors always first (what ``load`` reads); unknown names refused."""
    exporters = []
    for fmt in dict.fromkeys(["safetensors", *formats]):
        if fmt not in ctx.registry.exporters:
            raise ExportError(f"unknown export format {fmt!r}; known: {', '.join(ctx.registry.exporters.names())}")
        exporters.append(ctx.registry.exporters.get(fmt))
    return exporters


def own_files(folder: Path, overwrite: bool) -> set[str]:
    """The files of ``folder`` an earlier export wrote (its manifest lists them), which ``overwrite`` may replace.

    Raises:
        ExportError: ``folder`` holds files and ``overwrite`` is false, or it
            holds a file export did not write (export never deletes those).
    """
    if not folder.exists():
        return set()
    if not folder.is_dir():
        raise ExportError(f"{folder} is a file, not a trial folder; move it or export to another folder")
    present = {p.name for p in folder.iterdir()}
    if not present:
        return set()
    if not overwrite:
        raise ExportError(f"{folder} is not empty ({', '.join(sorted(present))}); pass --overwrite to replace an earlier export")
    own: set[str] = set()
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        if manifest.get("format") == MANIFEST_FORMAT:
            own = {*manifest.get("files", {}), MANIFEST}
    except (OSError, ValueError, AttributeError):
        pass  # no readable manifest: nothing there was written by export
    foreign = sorted(present - own)
    if foreign:
        raise ExportError(
            f"{folder} holds files an export did not write ({', '.join(foreign)}); export deletes only its own "
            "files, so move those or export to another folder"
        )
    return own


def place(tmp: Path, final: Path, overwrite: bool) -> None:
    """Move the verified files of ``tmp`` into ``final``, removing only the earlier export's own files."""
    own = own_files(final, overwrite)
    if not own:
        if final.exists():
            final.rmdir()  # empty: own_files refused anything else
        tmp.rename(final)
        return
    new = sorted(p.name for p in tmp.iterdir())
    for name in sorted(new, key=lambda n: n == MANIFEST):  # the manifest last: it vouches for the others
        (tmp / name).replace(final / name)
    for name in own - set(new):
        (final / name).unlink(missing_ok=True)


def export_trial(
    ctx: StudyContext,
    trial: optuna.trial.FrozenTrial,
    out_dir: str | Path,
    formats: Sequence[str] = DEFAULT_FORMATS,
    overwrite: bool = False,
) -> Path:
    """Export one completed trial into ``out_dir/trial-N/`` and verify it; return that folder.

    A non-empty ``trial-N/`` is refused unless ``overwrite``; even then only
    the files its manifest lists are replaced, never a file export did not write.
    """
    record = record_of(trial)
    if record.data.get("split_sha256") not in (None, ctx.data.info["split_sha256"]):
        raise ExportError(
            f"trial {trial.number}: the data split differs from the search's "
            f"(split sha256 {ctx.data.info['split_sha256']} vs {record.data['split_sha256']}); "
            "pass the --dataset/--data-dir the search used"
        )
    exporters = exporters_of(ctx, formats)
    model, artifact_bytes = load_artifact(record, ctx.registry)
    model = model.to("cpu").eval()
    final = Path(out_dir) / f"trial-{trial.number}"
    own_files(final, overwrite)  # refuse before the minutes of exporting and re-measuring
    tmp = Path(out_dir) / f".trial-{trial.number}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        example = ctx.data.test[:2]
        for exporter in exporters:
            exporter.export(model, str(tmp / exporter.filename_for(model)), example)
        weights = tmp / weights_filename(model)
        if weights.read_bytes() != artifact_bytes:
            raise ExportError(
                f"trial {trial.number}: {weights.name} differs from the search's saved model "
                f"{record.artifact} (packing is not deterministic?)"
            )
        search_metrics = dict(record.metrics)
        # each exporter measures its own file again (an exporter that measures nothing gives {})
        remeasured: dict[str, dict[str, Any]] = {}
        by_file: dict[str, str] = {}
        for exporter in exporters:
            figures = exporter.remeasure(str(tmp / exporter.filename_for(model)), model, ctx, record)
            if figures:
                remeasured[exporter.name], by_file[exporter.name] = figures, exporter.filename_for(model)
        checks: list[dict[str, Any]] = []
        for fmt, figures in remeasured.items():
            for figure, got in figures.items():
                if figure in search_metrics and isinstance(got, float):
                    _check(checks, figure, by_file[fmt], float(search_metrics[figure]), got)
        quality = quality_figure(model)
        if quality not in search_metrics:
            # The study did not measure it: the formats must still agree with the packed weights.
            for fmt, figures in remeasured.items():
                if fmt != "safetensors" and quality in figures:
                    _check(checks, quality, by_file[fmt], remeasured["safetensors"][quality], figures[quality])
        if not any(c["figure"] == "size_bytes" for c in checks):
            _check(checks, "size_bytes", weights.name, float(len(artifact_bytes)), float(weights.stat().st_size))
        if not all(c["ok"] for c in checks):
            raise ExportError(_failures_message(trial.number, checks))
        files = {p.name: {"sha256": sha256_file(p), "size_bytes": p.stat().st_size} for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {
            "format": MANIFEST_FORMAT,
            "manifest_version": MANIFEST_VERSION,
            "study": ctx.study.study_name,
            "trial": trial.number,
            "params": dict(trial.params),
            "pipeline": record.config,
            "model_config": model.config,
            "plugins": record.plugins,
            # a base_model study's trials all start from the user's model (students too: it taught them)
            **(
                {
                    "base_model": {
                        "factory": record.base.extra["base_model"],
                        "checkpoint_sha256": record.base.extra["checkpoint_sha256"],
                    }
                }
                if "checkpoint_sha256" in record.base.extra
                else {}
            ),
            "objectives": dict(zip(ctx.objective_names, ctx.directions)),
            "search": {
                "objectives": record.objectives,
                "metrics": record.metrics,
                "latency": record.latency.as_dict(),
                "device": record.device,
                "data": record.data,
            },
            "remeasured": remeasured,
            "checks": checks,
            "files": files,
            "versions": versions(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        manifest[MANIFEST_DIGEST] = manifest_digest(manifest)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
        place(tmp, final, overwrite)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def select_trials(ctx: StudyContext, trials: str | Sequence[int]) -> list[optuna.trial.FrozenTrial]:
    """The completed trials named by ``trials``: ``"front"`` (the Pareto front) or trial numbers."""

    completed = {t.number: t for t in completed_trials(ctx.study)}
    if isinstance(trials, str):
        if trials != "front":
            raise ExportError(f"trials must be 'front' or a list of trial numbers, but got {trials!r}")
        numbers = [e.trial for e in front_of_study(ctx.study)]
    else:
        numbers = [int(n) for n in trials]
    missing = [n for n in numbers if n not in completed]
    if missing:
        raise ExportError(
            f"trials {missing} are not completed trials of study {ctx.study.study_name!r}; completed: {sorted(completed)}"
        )
    if not numbers:
        raise ExportError(f"study {ctx.study.study_name!r} has no completed trials to export")
    return [completed[n] for n in numbers]


def export_study(
    storage: str,
    study: str,
    out_dir: str | Path,
    trials: str | Sequence[int] = "front",
    formats: Sequence[str] = DEFAULT_FORMATS,
    *,
    dataset: str | None = None,
    data_dir: str | None = None,
    plugins: tuple[str, ...] = (),
    overwrite: bool = False,
) -> list[Path]:
    """Export and verify models of a stored study.

    Args:
        storage: the Optuna storage URL of the study.
        study: the study name.
        out_dir: where ``trial-N/`` folders go.
        trials: ``"front"`` (default) or a list of trial numbers.
        formats: exporter names (``onnx``, ``pt2``, ``torchscript``, ``safetensors``,
            or a plugin's). The weights file (``weights.safetensors``, or ``weights.vac``
            for the compact container) is always written: it is
            what :func:`vae_automl.load` reads and what ``size_bytes`` is checked on.
        dataset, data_dir: the search's ``--dataset`` / ``--data-dir`` if it used them.
        plugins: extra plugin modules (as given to the search).
        overwrite: replace an earlier export's files in ``trial-N/`` (only those its manifest lists).

    Returns:
        The written ``trial-N`` folders, each with a ``manifest.json``.

    Raises:
        ExportError: a saved model changed since the search, an exported
            file does not reproduce the search's figures, or ``trial-N/`` is
            not empty (without ``overwrite``) or holds files export did not write.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ExportError(f"export folder {out}: is a file, not a folder; give a folder for the trial-N/ subfolders")
    ctx = open_study_context(storage, study, dataset, data_dir, plugins)
    chosen = select_trials(ctx, trials)
    exporters_of(ctx, formats)
    for trial in chosen:  # refuse before exporting any, so a refusal leaves nothing half done
        own_files(out / f"trial-{trial.number}", overwrite)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"export folder {out}: cannot create it: {exc.strerror}") from None
    return [export_trial(ctx, trial, out, formats, overwrite) for trial in chosen]


def parse_trials(text: str) -> str | list[int]:
    """``--select``: ``front`` or comma-separated trial numbers (``3,7``), else an error naming the value."""
    if text.strip() == "front":
        return "front"
    numbers = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in numbers if not (n.isascii() and n.isdigit())]
    if bad or not numbers:
        raise ExportError(f"--select must be 'front' or trial numbers like 3,7, but got {text!r}")
    return [int(n) for n in numbers]
