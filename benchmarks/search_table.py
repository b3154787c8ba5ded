"""The recorded table of real quick.yaml trials that ``search_quality.py --replay`` replays.

Recording (``python benchmarks/search_quality.py --record``) trains every
base model of a finite grid over search_spaces/quick.yaml once, for the
space's largest epoch count, and measures the real objectives (real
training, real uniform quantizer, real packed size) of every compressor
choice on snapshots taken at :data:`EPOCHS` epochs. Training is a
constant-learning-rate Adam run whose batch order depends only on the seed
and the epoch, so the snapshot at epoch ``e`` *is* the model an ``epochs: e``
trial trains. Every base also stores its validation loss after each
epoch and its training seconds, which the early-stopping replay needs, and
(:func:`record_rungs`) the validation loss of the base after each rung
epoch compressed with each compressor choice and no fine-tuning, which a
``score: compressed`` rule compares.

The replay answers a configuration the grid lacks with its nearest grid
point (per coordinate, on the parameter's own scale: log for log ranges).
The recording also runs :data:`HOLDOUT` configurations drawn at random from
the continuous space, off the grid, as ordinary trials; the replay error
reported next to the tables is how far their nearest grid point's values
are from their measured ones.
"""

from __future__ import annotations

import copy
import gzip
import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vae_automl.files import write_atomic

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "quick.yaml"
TABLE = Path(__file__).resolve().parent / "data" / "search_quality_quick.json.gz"

GRID: dict[str, tuple[Any, ...]] = {
    "mlp.hidden_layers": (1, 2),
    "mlp.hidden_width": (16, 32, 64, 128, 256),
    "mlp.latent_dim": (2, 4, 8, 16),
    "mlp.activation": ("relu", "gelu"),
    "training.lr": (1.0e-3, 2.154e-3, 4.642e-3, 1.0e-2),
}
"""Base-model grid: 320 bases, every one trained once."""
EPOCHS = (10, 15, 20, 25, 30)
"""Snapshots of each base: the ``training.epochs`` values of the grid."""
BITS = (None, 2, 3, 4, 5, 6, 7, 8)
"""Compressor choices measured on every snapshot: none (float32) or uniform n-bit."""
MNIST_SPACE = ROOT / "benchmarks" / "spaces" / "quick_mnist.yaml"
MNIST_TABLE = Path(__file__).resolve().parent / "data" / "search_quality_quick_mnist.json.gz"
"""The second table: the same grid over the same space on real MNIST (:func:`record_with_rungs`; no hold-out
trials)."""
HOLDOUT = 40
RUNG_EPOCHS = (1, 2, 3, 4, 5, 6, 8, 9, 10, 12, 15, 16, 18, 20, 24, 27)
"""Epochs after which :func:`record_rungs` scores the compressed base: the rungs of first rung 1-5 and
reduction factor 2 or 3 (the first 50 bases were recorded at every epoch); NaN elsewhere."""
OBJECTIVES = ("test_elbo_nats", "size_bytes")


@dataclass
class Table:
    """The loaded table: ``values[base, epoch_index, bits_index, objective]`` plus per-base curves and costs."""

    bases: list[dict[str, Any]]
    values: np.ndarray
    validation_curves: np.ndarray
    train_seconds: np.ndarray
    holdout: list[dict[str, Any]]
    meta: dict[str, Any]
    compressed_validation: np.ndarray | None = None
    """``[base, epoch - 1, bits_index]``: validation loss of the base after that epoch, compressed without
    fine-tuning (:func:`record_rungs`); None in a table recorded before it."""

    def index_of(self, params: dict[str, Any]) -> tuple[int, int, int]:
        """Nearest grid point of sampled quick.yaml params: (base, epochs, bits) indices."""
        key = tuple(_nearest(name, GRID[name], params[name]) for name in GRID)
        base = self._base_index[key]
        epoch = _nearest("training.epochs", EPOCHS, params["training.epochs"])
        bits = params.get("compressor0.uniform.bits") if params.get("compressor0", "uniform") != "none" else None
        b = 0 if bits is None else 1 + _nearest("bits", BITS[1:], bits)
        return base, epoch, b

    def __post_init__(self) -> None:
        self._base_index = {tuple(GRID[n].index(base[n]) for n in GRID): i for i, base in enumerate(self.bases)}


def _nearest(name: str, grid: tuple[Any, ...], value: Any) -> int:
    if isinstance(grid[0], str):
        return grid.index(value)
    scale = math.log if name in ("mlp.hidden_width", "mlp.latent_dim", "training.lr") else float
    distances = [abs(scale(float(g)) - scale(float(value))) for g in grid]
    return int(np.argmin(distances))


def load(path: Path = TABLE) -> Table:
    with gzip.open(path, "rt") as handle:
        raw = json.load(handle)
    return Table(raw["bases"], np.array(raw["values"], dtype=float), np.array(raw["validation_curves"], dtype=float),
                 np.array(raw["train_seconds"], dtype=float), raw["holdout"], raw["meta"],
                 np.array(raw["compressed_validation"], dtype=float) if raw.get("compressed_validation") else None)


def _write(path: Path, payload: dict[str, Any]) -> None:
    write_atomic(path, gzip.compress(json.dumps(payload, separators=(",", ":")).encode()))


def _params_of(base: dict[str, Any], epochs: int, bits: int | None) -> dict[str, Any]:
    """The quick.yaml params of ``base`` trained ``epochs`` epochs, then float32 (``bits`` None) or ``bits``-bit."""
    params = {**base, "training.epochs": epochs, "compressor0": "none" if bits is None else "uniform"}
    if bits is not None:
        params["compressor0.uniform.bits"] = bits
    return params


def _measure_all(env: Any, space: Any, registry: Any, model: Any, params: dict[str, Any]) -> list[float]:
    """:data:`OBJECTIVES` of ``model`` compressed as ``params`` asks (the real compressor, the real measures)."""
    from vae_automl import space as space_mod
    from vae_automl import trial as trial_mod
    from vae_automl.train import train_config_from

    spec = space_mod.resolve(space, params, registry)
    compressed = trial_mod.compress(env, model, spec, train_config_from(spec.training))
    values, _ = trial_mod.measure(env, compressed, OBJECTIVES, spec.seed)
    return [values[o] for o in OBJECTIVES]


def _rung_row(env: Any, model: Any, spec: Any, train_config: Any, epoch: int) -> list[float]:
    """After 0-based ``epoch``: each compressor choice's :func:`compressed_validation` at a rung epoch, else NaNs."""
    if epoch + 1 not in RUNG_EPOCHS:
        return [math.nan] * len(BITS)
    return [compressed_validation(env, model, spec, train_config, bits) for bits in BITS]


def record(path: Path = TABLE, log_every: int = 10) -> None:
    """Train the grid and the hold-out trials (resumes from a partial table at ``path``)."""
    import optuna
    import torch

    from vae_automl import space as space_mod
    from vae_automl import trial as trial_mod
    from vae_automl.config import load_space
    from vae_automl.plugin_manager import get_plugin_manager
    from vae_automl.registry import get_registry
    from vae_automl.train import train, train_config_from

    torch.set_num_threads(1)
    registry, pm = get_registry(), get_plugin_manager()
    space = load_space(SPACE, registry)
    env = trial_mod.prepare(space, "/tmp/vae-automl-search-table", registry, pm, device="cpu")
    partial: dict[str, Any] = {"bases": [], "values": [], "validation_curves": [], "train_seconds": [], "holdout": []}
    if path.is_file():
        with gzip.open(path, "rt") as handle:
            partial = json.load(handle)
    done = {json.dumps(b, sort_keys=True) for b in partial["bases"]}
    grid = [dict(zip(GRID, combo)) for combo in itertools.product(*GRID.values())]
    started = time.monotonic()

    def measure_all(model: Any, params: dict[str, Any]) -> list[float]:
        return _measure_all(env, space, registry, model, params)

    def save(final: bool) -> None:
        partial["meta"] = {"space": str(SPACE.relative_to(ROOT)), "grid": GRID, "epochs": EPOCHS,
                           "bits": BITS, "objectives": OBJECTIVES, "data": env.data.info, "complete": final,
                           "torch": torch.__version__, "optuna": optuna.__version__, "threads": 1}
        _write(path, partial)

    for k, base in enumerate(grid):
        if json.dumps(base, sort_keys=True) in done:
            continue
        spec = space_mod.resolve(space, _params_of(base, max(EPOCHS), None), registry)
        arch = registry.architectures.get(spec.architecture)
        snapshots: dict[int, Any] = {}

        def on_epoch(epoch: int, loss: float) -> None:
            if epoch + 1 in EPOCHS:
                snapshots[epoch + 1] = copy.deepcopy(model.state_dict())

        torch.manual_seed(spec.seed)
        model = arch.build(arch.config_from_params(spec.architecture_params, env.data.input_shape))
        result = train(model, env.data, train_config_from(spec.training), seed=spec.seed, on_epoch=on_epoch)
        cube = []
        for epochs in EPOCHS:
            model.load_state_dict(snapshots[epochs])
            cube.append([measure_all(model, _params_of(base, epochs, bits)) for bits in BITS])
        partial["bases"].append(base)
        partial["values"].append(cube)
        partial["validation_curves"].append(result.validation_curve)
        partial["train_seconds"].append(result.seconds)
        if len(partial["bases"]) % log_every == 0:
            save(False)
            print(f"[record] {len(partial['bases'])}/{len(grid)} bases, {time.monotonic() - started:.0f}s", flush=True)
    sampler = optuna.samplers.RandomSampler(seed=12345)
    study = optuna.create_study(sampler=sampler)
    while len(partial["holdout"]) < HOLDOUT:
        trial = study.ask()
        params = space_mod.suggest(trial, space)
        study.tell(trial, 0.0)
        spec = space_mod.resolve(space, params, registry)
        arch = registry.architectures.get(spec.architecture)
        torch.manual_seed(spec.seed)
        model = arch.build(arch.config_from_params(spec.architecture_params, env.data.input_shape))
        train(model, env.data, train_config_from(spec.training), seed=spec.seed)
        partial["holdout"].append({"params": params, "values": measure_all(model, params)})
    save(True)
    print(f"[record] done: {len(partial['bases'])} bases, {len(partial['holdout'])} hold-out trials, "
          f"{time.monotonic() - started:.0f}s; {path} {path.stat().st_size / 1e6:.2f} MB", flush=True)


def compressed_validation(env: Any, model: Any, spec: Any, train_config: Any, bits: int | None) -> float:
    """Validation loss of ``model`` (a base, possibly mid-training) compressed with ``bits`` and no fine-tuning."""
    import torch

    from vae_automl import space as space_mod
    from vae_automl import trial as trial_mod

    params = {**spec.params, "compressor0": "none" if bits is None else "uniform"}
    if bits is not None:
        params["compressor0.uniform.bits"] = bits
    spec = space_mod.resolve(env.space, params, env.registry)
    task = env.registry.tasks.get(env.space.task)
    state = torch.get_rng_state()  # the training run's noise must not see this measurement
    try:
        compressed = trial_mod.compress(env, model, spec, train_config, fine_tuning=False)
        return float(task.validation_loss(compressed, env.data, train_config, spec.seed))
    finally:
        torch.set_rng_state(state)
        model.train()


def record_rungs(path: Path = TABLE, log_every: int = 10) -> None:
    """Add ``compressed_validation[base][epoch - 1][bits]`` to the table: every base retrained (the same run, checked
    against its recorded validation curve), and after each of :data:`RUNG_EPOCHS` the validation loss of the base
    so far compressed with each compressor choice and no fine-tuning (what a ``score: compressed`` rung compares)."""
    import torch

    from vae_automl import space as space_mod
    from vae_automl import trial as trial_mod
    from vae_automl.config import load_space
    from vae_automl.plugin_manager import get_plugin_manager
    from vae_automl.registry import get_registry
    from vae_automl.train import train, train_config_from

    torch.set_num_threads(1)
    registry, pm = get_registry(), get_plugin_manager()
    space = load_space(SPACE, registry)
    env = trial_mod.prepare(space, "/tmp/vae-automl-search-table", registry, pm, device="cpu")
    with gzip.open(path, "rt") as handle:
        raw = json.load(handle)
    rows: list[Any] = raw.setdefault("compressed_validation", [])
    started = time.monotonic()
    for k in range(len(rows), len(raw["bases"])):
        base = raw["bases"][k]
        spec = space_mod.resolve(space, _params_of(base, max(EPOCHS), None), registry)
        train_config = train_config_from(spec.training)
        arch = registry.architectures.get(spec.architecture)
        per_epoch: list[list[float]] = []

        def on_epoch(epoch: int, loss: float) -> None:
            per_epoch.append(_rung_row(env, model, spec, train_config, epoch))

        torch.manual_seed(spec.seed)
        model = arch.build(arch.config_from_params(spec.architecture_params, env.data.input_shape))
        result = train(model, env.data, train_config, seed=spec.seed, on_epoch=on_epoch)
        recorded = np.array(raw["validation_curves"][k])
        if not np.allclose(result.validation_curve, recorded, rtol=1e-5):
            raise RuntimeError(f"base {k} did not retrain to its recorded validation curve: "
                               f"{result.validation_curve[:3]} vs {recorded[:3].tolist()}")
        rows.append(per_epoch)
        if len(rows) % log_every == 0 or len(rows) == len(raw["bases"]):
            _write(path, raw)
            print(f"[record-rungs] {len(rows)}/{len(raw['bases'])} bases, {time.monotonic() - started:.0f}s", flush=True)


def _record_shard(task: tuple[Path, Path, int, int]) -> Path:
    """Train every ``shards``-th base of the grid from ``shard`` on, and measure it as :func:`record` and
    :func:`record_rungs` do, in one run; resumes from the shard's file next to ``path``."""
    import torch

    from vae_automl import space as space_mod
    from vae_automl import trial as trial_mod
    from vae_automl.config import load_space
    from vae_automl.plugin_manager import get_plugin_manager
    from vae_automl.registry import get_registry
    from vae_automl.train import train, train_config_from

    space_path, path, shard, shards = task
    torch.set_num_threads(1)
    registry = get_registry()
    space = load_space(space_path, registry)
    env = trial_mod.prepare(space, f"/tmp/vae-automl-search-table-{shard}", registry, get_plugin_manager(), device="cpu")
    out = path.with_name(f".{path.name}.shard{shard}-of-{shards}.json")
    rows: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    grid = [dict(zip(GRID, combo)) for combo in itertools.product(*GRID.values())]
    started = time.monotonic()
    for k in range(shard, len(grid), shards):
        if str(k) in rows:
            continue
        base = grid[k]
        spec = space_mod.resolve(space, _params_of(base, max(EPOCHS), None), registry)
        arch = registry.architectures.get(spec.architecture)
        train_config = train_config_from(spec.training)
        snapshots: dict[int, Any] = {}
        per_epoch: list[list[float]] = []

        def on_epoch(epoch: int, loss: float) -> None:
            if epoch + 1 in EPOCHS:
                snapshots[epoch + 1] = copy.deepcopy(model.state_dict())  # noqa: B023 (called within this loop step)
            per_epoch.append(_rung_row(env, model, spec, train_config, epoch))  # noqa: B023

        torch.manual_seed(spec.seed)
        model = arch.build(arch.config_from_params(spec.architecture_params, env.data.input_shape))
        result = train(model, env.data, train_config, seed=spec.seed, on_epoch=on_epoch)
        cube = []
        for epochs in EPOCHS:
            model.load_state_dict(snapshots[epochs])
            cube.append([_measure_all(env, space, registry, model, _params_of(base, epochs, bits)) for bits in BITS])
        rows[str(k)] = {"base": base, "values": cube, "validation_curve": result.validation_curve,
                        "train_seconds": result.seconds, "compressed_validation": per_epoch, "data": env.data.info}
        write_atomic(out, json.dumps(rows).encode())
        print(f"[record {space_path.stem} {shard}/{shards}] {len(rows)} bases, {time.monotonic() - started:.0f}s",
              flush=True)
    return out


def record_with_rungs(space_path: Path = MNIST_SPACE, path: Path = MNIST_TABLE, jobs: int = 2) -> None:
    """Record the grid over ``space_path`` (the same parameters as quick.yaml) into ``path``, with the rung scores,
    in ``jobs`` processes (each resumes where it stopped), then merge them in grid order."""
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(jobs) as pool:
        shard_files = list(pool.map(_record_shard, [(space_path, path, n, jobs) for n in range(jobs)]))
    merge_shards(space_path, path, shard_files)


def merge_shards(space_path: Path, path: Path, shard_files: list[Path]) -> None:
    """Write the shards' bases, in grid order, as one table at ``path`` (the layout :func:`load` reads), and
    remove the shard files."""
    import optuna
    import torch

    rows: dict[str, Any] = {}
    for f in shard_files:
        rows.update(json.loads(f.read_text()))
    keys = sorted(rows, key=int)
    expected = math.prod(len(v) for v in GRID.values())
    if len(keys) != expected:
        raise RuntimeError(f"{', '.join(map(str, shard_files))}: {len(keys)} of the grid's {expected} bases recorded; "
                           "record again (each shard resumes) before merging")
    payload = {
        "bases": [rows[k]["base"] for k in keys], "values": [rows[k]["values"] for k in keys],
        "validation_curves": [rows[k]["validation_curve"] for k in keys],
        "train_seconds": [rows[k]["train_seconds"] for k in keys],
        "compressed_validation": [rows[k]["compressed_validation"] for k in keys], "holdout": [],
        "meta": {"space": str(space_path.relative_to(ROOT)), "grid": GRID, "epochs": EPOCHS, "bits": BITS,
                 "rung_epochs": RUNG_EPOCHS, "objectives": OBJECTIVES, "data": rows[keys[0]]["data"], "complete": True,
                 "torch": torch.__version__, "optuna": optuna.__version__, "threads": 1, "processes": len(shard_files)},
    }
    _write(path, payload)
    for f in shard_files:
        f.unlink()
    print(f"[record] {path}: {len(keys)} bases, {path.stat().st_size / 1e6:.2f} MB", flush=True)
