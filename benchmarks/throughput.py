"""Trial throughput, measured side by side in one run on one machine.

Ways of training the seed's 784-400-20 MLP VAE (batch 128, 8,000 MNIST images):

(a) the seed documents' loop: the PyTorch VAE example's model and loop over a
    ``DataLoader`` with a per-item transform (PIL image -> ``ToTensor``),
    shuffling, ``loss.item()`` every step;
(b) our trainer, eager (data resident on the device, shuffled by index);
(c) our trainer with the step captured in a CUDA graph (CUDA only);
(d) N concurrent trial processes (spawned), each training the same workload
    with our best single-trial way; the aggregate samples/s of all of them.

Every way is measured ``--repeats`` times, interleaved (a, b, c, d, a, b, ...),
and the median is reported, so load from other processes hits all ways alike.
Then a compression-only search (one fixed architecture and training, only a
compressor's parameters searched) shows that the base model is trained once
and reused by every other trial.

Usage::

    python benchmarks/throughput.py [--device cpu|cuda] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import torch
from torch import nn
from torch.nn import functional as F

from vae_automl import packing
from vae_automl.builtin.architectures import MLPArchitecture
from vae_automl.components import Compressor, Param
from vae_automl.data import DataSplits, SplitConfig, make_splits, to_unit_float
from vae_automl.plugin_manager import hookimpl
from vae_automl.train import TrainConfig, train
from vae_automl.vae import VAE

MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
N_IMAGES = 8000
BATCH_SIZE = 128


# --- workload ---------------------------------------------------------------------------------------------------

def load_workload(data_dir: Path = MNIST_DIR) -> tuple[np.ndarray, str]:
    """8,000 uint8 28x28 images and a note saying where they come from."""
    path = data_dir / "t10k-images-idx3-ubyte.gz"
    if path.is_file():
        from vae_automl.builtin.datasets import read_idx

        return np.ascontiguousarray(read_idx(path)[:N_IMAGES]), f"the first {N_IMAGES} MNIST test images ({data_dir})"
    from sklearn.datasets import load_digits

    # Same shapes and arithmetic as MNIST, so the throughput figures still mean something.
    digits = torch.from_numpy(load_digits().images / 16.0).float()[:, None]
    up = F.interpolate(digits, size=(28, 28), mode="bilinear", align_corners=False)[:, 0]
    reps = -(-N_IMAGES // len(up))
    images = (up.repeat(reps, 1, 1)[:N_IMAGES].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    return images, f"MNIST not found at {data_dir}: {N_IMAGES} scikit-learn digits upsampled to 28x28"


def trainer_data(images: np.ndarray, device: str) -> DataSplits:
    # All 8,000 images train; validation falls back to the first 1,000 of them (evaluated each epoch).
    return make_splits(to_unit_float(images, "workload"), SplitConfig(validation=0, test=1, shuffle=False), device,
                       spec="benchmark")


def seed_model_config() -> dict[str, Any]:
    arch = MLPArchitecture()
    return arch.config_from_params(arch.presets["seed_784_400_20"], (1, 28, 28))


# --- (a) the seed documents' DataLoader loop -----------------------------------------------------------------------

class ExampleVAE(nn.Module):
    """The model of the PyTorch VAE example (examples/vae/main.py), 784-400-20."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h1 = F.relu(self.fc1(x.view(-1, 784)))
        mu, logvar = self.fc21(h1), self.fc22(h1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z)))), mu, logvar


def example_loss(recon_x: torch.Tensor, x: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    return bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())


class PerItemDataset(torch.utils.data.Dataset):
    """uint8 images turned into tensors one item at a time, as torchvision's MNIST with ``ToTensor`` does."""

    def __init__(self, images: np.ndarray) -> None:
        self.images = images
        try:
            from torchvision import transforms

            self.transform: Callable[[Any], torch.Tensor] = transforms.ToTensor()
        except ImportError:  # torchvision is optional; the same conversion by hand
            self.transform = lambda img: torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index], mode="L")), 0


def run_dataloader(images: np.ndarray, device: str, epochs: int, seed: int = 0) -> tuple[int, float]:
    torch.manual_seed(seed)
    model = ExampleVAE().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    kwargs = {"num_workers": 1, "pin_memory": True} if device == "cuda" else {}
    loader = torch.utils.data.DataLoader(PerItemDataset(images), batch_size=BATCH_SIZE, shuffle=True, **kwargs)
    samples, started = 0, time.perf_counter()
    model.train()
    for _ in range(epochs):
        train_loss = 0.0
        for data, _ in loader:
            data = data.to(device)
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(data)
            loss = example_loss(recon_batch, data, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
            samples += len(data)
    return samples, time.perf_counter() - started


# --- (b), (c) our trainer -------------------------------------------------------------------------------------------

def run_trainer(data: DataSplits, epochs: int, capture: str, seed: int = 0) -> tuple[int, float, bool]:
    torch.manual_seed(seed)
    model = MLPArchitecture().build(seed_model_config())
    result = train(model, data, TrainConfig(epochs=epochs, batch_size=BATCH_SIZE, capture=capture), seed=seed)
    return result.samples, result.seconds, result.captured


# --- (d) N concurrent trial processes -------------------------------------------------------------------------------

def _concurrent_worker(images: np.ndarray, device: str, epochs: int, capture: str, threads: int, seed: int,
                       barrier: Any, results: Any) -> None:
    torch.set_num_threads(threads)
    data = trainer_data(images, device)
    run_trainer(trainer_data(images[:BATCH_SIZE * 4], device), 1, capture, seed)  # warm up this process
    barrier.wait()
    samples, seconds, _ = run_trainer(data, epochs, capture, seed)
    results.put((samples, seconds))


def run_concurrent(images: np.ndarray, device: str, epochs: int, capture: str, n: int, threads: int) -> tuple[int, float]:
    """Aggregate (samples, wall seconds) of ``n`` spawned processes started together after their set-up."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(n + 1), ctx.Queue()
    procs = [ctx.Process(target=_concurrent_worker, args=(images, device, epochs, capture, threads, i, barrier, results))
             for i in range(n)]
    for p in procs:
        p.start()
    barrier.wait()
    started = time.perf_counter()
    samples = sum(results.get()[0] for _ in range(n))
    seconds = time.perf_counter() - started
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"a concurrent trial process exited with code {p.exitcode}")
    return samples, seconds


# --- compression-only search: base reuse ----------------------------------------------------------------------------

class BenchRound(Compressor):
    """The benchmark's own quantizer, used when no compressor plugin is registered."""

    name = "bench-round"
    stage = "quantize"
    help = "throughput benchmark's own quantizer: every weight matrix to n-bit symmetric per-tensor codes"
    params = (Param("bits", "int", 8, minimum=2, maximum=8),)

    def apply(self, model: VAE, params: dict[str, Any], ctx: Any) -> VAE:
        out = copy.deepcopy(model)
        codec = packing.CODECS["uniform"]
        half = (1 << (params["bits"] - 1)) - 1
        with torch.no_grad():
            for name, tensor in out.named_parameters():
                if tensor.dim() < 2:
                    continue
                # The scale as the packer stores it (float16), so the stored grid is the one used.
                scale = float(torch.tensor(float(tensor.abs().max()) / half).half()) or 1.0
                spec = {"codec": "uniform", "bits": params["bits"], "symmetric": True, "axis": None, "scale": [scale]}
                codes, _ = codec.codes(tensor.detach().cpu(), spec)
                tensor.copy_(codec.decode(codes, spec))
                out.encodings[name] = spec
        return out


class BenchRoundPlugin:
    """A plugin object registering :class:`BenchRound`."""

    @hookimpl
    def register_compressors(self, register: Callable[[Compressor], None]) -> None:
        register(BenchRound())


def compression_space_yaml(compressor: str, params: dict[str, Any], trials: int) -> str:
    return json.dumps({
        "name": "throughput-compression",
        "dataset": {"spec": "digits", "split": {"validation": 0.1, "test": 0.2, "seed": 0}},
        "device": "cpu",
        "seed": 0,
        "architecture": {"mlp": {"hidden_layers": 1, "hidden_width": 64, "latent_dim": 8}},
        "training": {"epochs": 5, "batch_size": 64, "lr": 3e-3},
        "compressors": [{"name": compressor, "params": params}],
        "objectives": ["test_elbo_nats", "size_bytes"],
        "record": [],
        "sampler": {"name": "random", "seed": 0},
        "pruner": {"name": "none"},
        "trials": trials,
    })


def pick_compressor(registry: Any, wanted: str) -> tuple[str, dict[str, Any]]:
    """A compressor and the params to search.

    ``auto`` takes a registered post-training quantizer (``uniform`` first,
    else the first of stage ``quantize`` other than the benchmark's own),
    else ``bench-round``. Its bit widths and its choices (categorical, bool)
    are searched (bits from 2 up); anything counting epochs stays at its minimum and the rest
    at their defaults, because this search is about reusing the base, and
    each trial should cost only the compression.
    """
    if wanted == "auto":
        quantizers = [n for n in registry.compressors.names()
                      if registry.compressors.get(n).stage == "quantize" and n != BenchRound.name]
        wanted = "uniform" if "uniform" in quantizers else (quantizers[0] if quantizers else BenchRound.name)
    comp = registry.compressors.get(wanted)
    params: dict[str, Any] = {}
    for p in comp.params:
        if "epoch" in p.name and p.minimum is not None:
            params[p.name] = p.minimum
        elif p.name.startswith("bits") and p.type == "int" and p.minimum is not None and p.maximum is not None:
            # From 2 bits up: 1-bit grids refuse some other choices (asymmetric), failing trials.
            low = max(int(p.minimum), min(2, int(p.maximum)))
            params[p.name] = {"low": low, "high": int(p.maximum)} if low < p.maximum else low
        elif p.type == "bool" or p.choices:
            params[p.name] = "search"
    return wanted, params


def run_compression_search(trials: int, compressor: str) -> dict[str, Any]:
    from vae_automl.config import load_space_text
    from vae_automl.plugin_manager import get_plugin_manager
    from vae_automl.registry import get_registry, reset_registry
    from vae_automl.api import search
    from vae_automl.study import FAILURE_ATTR

    plugin = BenchRoundPlugin()
    pm = get_plugin_manager()
    pm.register(plugin, name="throughput-bench")
    reset_registry()
    try:
        registry = get_registry()
        name, params = pick_compressor(registry, compressor)
        space = load_space_text(compression_space_yaml(name, params, trials), "<throughput compression search>", registry)
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            result = search(space, trials=trials, out_dir=out, show_progress=False)
            seconds = time.perf_counter() - started
            study = optuna.load_study(study_name=result.study_name, storage=result.storage)
            failed = [t.user_attrs.get(FAILURE_ATTR, "") for t in study.get_trials(deepcopy=False)
                      if t.state == optuna.trial.TrialState.FAIL]
    finally:
        pm.unregister(plugin)
        reset_registry()
    # A failed trial (a compressor refusing its sampled params) also reuses the base, and is retried.
    return {"compressor": name, "searched_params": params, "trials": result.completed, "seconds": seconds,
            "failed": len(failed), "failure_reasons": sorted(set(failed)),
            "base_trained": result.stats["base_trained"], "base_reused": result.stats["base_reused"]}


# --- driver ---------------------------------------------------------------------------------------------------------

@dataclass
class Way:
    key: str
    label: str
    run: Callable[[], tuple[int, float]] | None
    trials: int = 1
    note: str = ""


def measure(ways: list[Way], repeats: int) -> dict[str, dict[str, Any]]:
    runs: dict[str, list[tuple[int, float]]] = {w.key: [] for w in ways if w.run is not None}
    for _ in range(repeats):
        for way in ways:
            if way.run is not None:
                runs[way.key].append(way.run())
    figures: dict[str, dict[str, Any]] = {}
    for way in ways:
        if way.run is None:
            figures[way.key] = {"label": way.label, "samples_per_s": None, "seconds_per_trial": None, "note": way.note}
            continue
        rates = [s / t for s, t in runs[way.key]]
        seconds = [t / way.trials for _, t in runs[way.key]]
        figures[way.key] = {"label": way.label, "samples_per_s": statistics.median(rates),
                            "seconds_per_trial": statistics.median(seconds), "runs_samples_per_s": rates,
                            "note": way.note}
    base = figures["dataloader"]["samples_per_s"]
    for fig in figures.values():
        fig["ratio_to_dataloader"] = fig["samples_per_s"] / base if fig["samples_per_s"] else None
    return figures


def table(figures: dict[str, dict[str, Any]]) -> str:
    lines = ["| way of training | samples/s | s per trial | vs DataLoader |", "| --- | ---: | ---: | ---: |"]
    for fig in figures.values():
        if fig["samples_per_s"] is None:
            lines.append(f"| {fig['label']} | {fig['note']} | | |")
            continue
        lines.append(f"| {fig['label']} | {fig['samples_per_s']:,.0f} | {fig['seconds_per_trial']:.2f} | "
                     f"{fig['ratio_to_dataloader']:.2f}x |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="fewer epochs, repeats and search trials (a smoke run)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    parser.add_argument("--epochs", type=int, help="epochs per trial (default 5, --quick 1)")
    parser.add_argument("--repeats", type=int, help="interleaved repeats per way, median reported (default 3, --quick 1)")
    parser.add_argument("--concurrent", type=int, help="concurrent trial processes (default: 8 on cuda, CPU cores on cpu)")
    parser.add_argument("--threads", type=int, help="torch CPU threads of a single trial (default: torch's, "
                        f"{torch.get_num_threads()} here); concurrent trials share them")
    parser.add_argument("--search-trials", type=int, help="trials of the compression-only search (default 50, --quick 10)")
    parser.add_argument("--compressor", default="auto",
                        help="compressor of that search (auto: a registered quantizer, else the benchmark's own)")
    parser.add_argument("--data-dir", type=Path, default=MNIST_DIR, help="folder with t10k-images-idx3-ubyte.gz")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    args.epochs = args.epochs or (1 if args.quick else 5)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.concurrent = args.concurrent or (8 if args.device == "cuda" else (os.cpu_count() or 1))
    args.threads = args.threads or torch.get_num_threads()
    args.search_trials = args.search_trials or (10 if args.quick else 50)
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    images, source = load_workload(args.data_dir)
    data = trainer_data(images, args.device)
    cuda = args.device == "cuda"
    # Warm up each way once (allocator, kernels, lazy imports) so no way pays another's start-up.
    run_dataloader(images[:BATCH_SIZE * 2], args.device, 1)
    run_trainer(trainer_data(images[:BATCH_SIZE * 4], args.device), 1, "off")
    best_capture = "on" if cuda else "off"
    n = args.concurrent
    worker_threads = max(1, args.threads // n) if not cuda else args.threads

    def trainer_way(capture: str) -> Callable[[], tuple[int, float]]:
        def run() -> tuple[int, float]:
            samples, seconds, captured = run_trainer(data, args.epochs, capture)
            if capture == "on" and not captured:
                raise RuntimeError("capture was asked for but the step ran eagerly")
            return samples, seconds
        return run

    ways = [
        Way("dataloader", "(a) DataLoader, per-item transform (seed loop)",
            lambda: run_dataloader(images, args.device, args.epochs)),
        Way("trainer_eager", "(b) our trainer, eager", trainer_way("off")),
        Way("trainer_captured", "(c) our trainer, step in a CUDA graph", trainer_way("on") if cuda else None,
            note="" if cuda else "n/a on cpu"),
        Way("concurrent", f"(d) {n} concurrent trials, aggregate ({'captured' if cuda else 'eager'}"
                          f"{'' if cuda else f', {worker_threads} thread(s) each'})",
            lambda: run_concurrent(images, args.device, args.epochs, best_capture, n, worker_threads), trials=n),
    ]
    figures = measure(ways, args.repeats)
    single = [figures[k]["samples_per_s"] for k in ("trainer_eager", "trainer_captured") if figures[k]["samples_per_s"]]
    ratio = max(single) / figures["dataloader"]["samples_per_s"]
    concurrent_vs_single = figures["concurrent"]["samples_per_s"] / max(single)

    device_name = torch.cuda.get_device_name() if cuda else f"CPU, {os.cpu_count()} cores, {args.threads} torch thread(s)"
    print(f"device: {device_name}; workload: 784-400-20 MLP VAE, batch {BATCH_SIZE}, {source}; "
          f"{args.epochs} epoch(s) per trial; median of {args.repeats} interleaved run(s)\n")
    print(table(figures))
    print(f"\nour best single trial vs the DataLoader loop: {ratio:.2f}x")
    print(f"{n} concurrent trials vs one alone: {concurrent_vs_single:.2f}x aggregate samples/s")

    reuse = run_compression_search(args.search_trials, args.compressor)
    print(f"\ncompression-only search ({reuse['trials']} trials of {reuse['compressor']!r} on one architecture, "
          f"{reuse['seconds']:.1f} s): bases trained: {reuse['base_trained']}, reused: {reuse['base_reused']}")
    if reuse["failed"]:
        print(f"({reuse['failed']} more trials failed and were retried, each reusing the base: "
              f"{'; '.join(reuse['failure_reasons'][:3])})")

    report = {
        "device": device_name,
        "workload": source,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "concurrent": n,
        "ratio_trainer_vs_dataloader": ratio,
        "ratio_concurrent_vs_single": concurrent_vs_single,
        "ways": figures,
        "compression_search": reuse,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
