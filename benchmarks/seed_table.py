"""Reproduce seed 002's MNIST compression table with vae-automl's compressors (and NNI's, when installed).

    python benchmarks/seed_table.py --data ../shared/data/mnist [--json FILE] [--epochs N]

With only the MNIST test set in DIR (10,000 images) it trains on the first
8,000 and evaluates on the last 2,000; with the full MNIST (train + t10k
files) it uses the standard 60,000 / 10,000 split. Every row is one trial of
the library (``vae_automl.trial.run_trial``): the base model is trained once
and cached, each row's compressors are applied by name through the
registry, and size, ELBO, reconstruction error and CPU latency are the
registered objectives (size is the packed ``weights.safetensors`` length).

Fairness (see DESIGN.md): compressed rows fine-tune after their base was
trained, so each row is compared with an uncompressed baseline trained for
the same total epochs (``baseline``: base + fine-tune epochs, for the
single-stage rows; ``baseline_<N>ep`` for the three-stage combined row).
Every row's epochs and its reference are printed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from vae_automl.builtin.entropy_coding import EntropyCode
from vae_automl.config import load_space_text
from vae_automl.plugin_manager import new_plugin_manager
from vae_automl.registry import Registry
from vae_automl.space import resolve
from vae_automl.storage.format import deserialize_model, serialize_model, theoretical_bits
from vae_automl.trial import prepare, run_trial

NNI_PLUGIN = "vae_automl_nni.plugin"


def rows(finetune_epochs: int, nni: bool) -> list[tuple[str, list[dict[str, Any]], int]]:
    """``(name, pipeline, fine-tune epochs after the base)`` of each table row."""
    f = finetune_epochs
    table: list[tuple[str, list[dict[str, Any]], int]] = [
        ("4bit", [{"name": "uniform", "params": {"bits": 4, "granularity": "per_channel", "qat_epochs": f}}], f),
        ("4bit_kmeans", [{"name": "kmeans", "params": {"bits": 4, "qat_epochs": f}}], f),
        ("2bit", [{"name": "kmeans", "params": {"bits": 2, "qat_epochs": f}}], f),
        ("prune30", [{"name": "magnitude_prune", "params": {"sparsity": 0.3, "finetune_epochs": f}}], f),
        ("prune50", [{"name": "magnitude_prune", "params": {"sparsity": 0.5, "finetune_epochs": f}}], f),
        ("distill", [{"name": "distill", "params": {"width_ratio": 0.5, "epochs": f}}], f),
        # A slightly wider student than the distill row leaves room for 50% sparsity and 4-bit codes
        # within +3% ELBO while staying over 16x smaller than fp32.
        ("combined", [{"name": "distill", "params": {"width_ratio": 0.6, "epochs": f}},
                      {"name": "magnitude_prune", "params": {"sparsity": 0.5, "finetune_epochs": f}},
                      {"name": "kmeans", "params": {"bits": 4, "qat_epochs": f}}], 3 * f),
    ]
    if nni:
        steps = f * 62  # 62 batches of 128 per epoch over 8,000 images: the same training as the QAT rows
        table += [
            ("nni_4bit", [{"name": "nni_quantize", "params": {"quantizer": "qat", "bits": 4, "steps": steps}}], f),
            ("nni_2bit", [{"name": "nni_quantize", "params": {"quantizer": "qat", "bits": 2, "steps": steps}}], f),
            ("nni_prune30", [{"name": "nni_prune", "params": {"pruner": "level", "sparsity": 0.3, "finetune_epochs": f}}], f),
            ("nni_prune50", [{"name": "nni_prune", "params": {"pruner": "level", "sparsity": 0.5, "finetune_epochs": f}}], f),
        ]
    return table


def space_text(data_dir: Path, test_images: int, epochs: int, pipeline: list[dict[str, Any]]) -> str:
    return yaml.safe_dump({
        "name": "seed_table",
        "dataset": {"spec": "mnist", "data_dir": str(data_dir),
                    "split": {"test": test_images, "validation": 0, "shuffle": False}},
        "device": "cpu",
        "seed": 0,
        "architecture": {"mlp": {"preset": "seed_784_400_20"}},
        "training": {"epochs": epochs, "batch_size": 128, "lr": 1.0e-3},
        "compressors": pipeline,
        "objectives": ["test_elbo_nats", "size_bytes", "latency_ms"],
        "record": ["recon_error", "params", "theoretical_bits"],
        "latency": {"batch_size": 128, "repeats": 30, "warmup": 5, "target": "cpu"},
    }, sort_keys=False)


def entropy_coded(artifact: Path, registry: Registry) -> tuple[int, int]:
    """Bytes and theoretical bits of a trial's model with the ``entropy_code`` stage added (the same weights).

    The stage changes no weight, so the row's other figures are the trial's;
    the coded file is checked to decode to the very same tensors.
    """
    model = deserialize_model(artifact.read_bytes(), registry)
    coded = EntropyCode().apply(model, {}, None)  # type: ignore[arg-type]  # the stage reads nothing from ctx
    data = serialize_model(coded, registry.codec_map())
    back = deserialize_model(data, registry)
    if not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values())):
        raise SystemExit(f"{artifact}: the entropy-coded file decodes to other weights")
    return len(data), theoretical_bits(coded, registry.codec_map())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="folder with MNIST IDX files (t10k-images-idx3-ubyte[.gz])")
    parser.add_argument("--json", type=Path, help="also write the rows as a JSON list here")
    parser.add_argument("--epochs", type=int, default=30, help="base training epochs (fine-tuning gets a third)")
    parser.add_argument("--out", type=Path, help="keep the base-model cache and artifacts here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    full = any((args.data / f"train-images-idx3-ubyte{s}").is_file() for s in ("", ".gz"))
    test_images = 10_000 if full else 2_000
    finetune = max(1, args.epochs // 3)

    try:
        import vae_automl_nni  # noqa: F401
        extra: tuple[str, ...] = (NNI_PLUGIN,)
    except ImportError:
        print("vae-automl-nni is not installed: no NNI rows (pip install plugins/vae-automl-nni)", file=sys.stderr)
        extra = ()
    # Built-ins plus NNI named explicitly, so the table does not depend on what else is installed.
    pm = new_plugin_manager(extra_plugins=extra, autoload=False)
    registry = Registry.from_plugin_manager(pm)

    out = args.out or Path(tempfile.mkdtemp(prefix="seed_table_"))
    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    base_epochs = args.epochs
    compressed = rows(finetune, bool(extra))
    totals = sorted({base_epochs + extra_epochs for _, _, extra_epochs in compressed})
    reference = {t: "baseline" if k == 0 else f"baseline_{t}ep" for k, t in enumerate(totals)}
    plan = [(reference[t], [], t, 0) for t in totals]
    plan += [(name, pipeline, base_epochs, extra_epochs) for name, pipeline, extra_epochs in compressed]
    for number, (name, pipeline, epochs, extra_epochs) in enumerate(plan):
        space = load_space_text(space_text(args.data, test_images, epochs, pipeline), f"seed_table:{name}", registry)
        env = prepare(space, out, registry, pm)
        t0 = time.perf_counter()
        record = run_trial(env, resolve(space, {}, registry), number)
        m = record["metrics"]
        results.append({
            "name": name,
            "pipeline": " -> ".join(f"{c['name']}({', '.join(f'{k}={v}' for k, v in c['params'].items())})" for c in pipeline) or "-",
            "epochs": epochs + extra_epochs,
            "recon_error": m["recon_error"],
            "test_elbo_nats": m["test_elbo_nats"],
            "size_bytes": int(m["size_bytes"]),
            "theoretical_bits": int(m["theoretical_bits"]),
            "nonzero_params": int(m["params"]),
            "latency_ms": m["latency_ms"],
            "seconds": time.perf_counter() - t0,
        })
        print(f"[{time.perf_counter() - started:6.0f} s] {name}: elbo {m['test_elbo_nats']:.2f}, "
              f"{int(m['size_bytes'])} bytes", file=sys.stderr, flush=True)
        if pipeline:
            size, bits = entropy_coded(Path(record["artifact"]), registry)
            results.append({**results[-1], "name": f"{name}+entropy", "size_bytes": size, "theoretical_bits": bits,
                            "pipeline": results[-1]["pipeline"] + " -> entropy_code()", "seconds": 0.0})

    by_name = {r["name"]: r for r in results}
    fp32_bytes = 4 * by_name["baseline"]["nonzero_params"]
    for r in results:
        base = by_name[reference[r["epochs"]]]
        r["reference"] = base["name"]
        r["recon_delta_pct"] = 100.0 * (r["recon_error"] / base["recon_error"] - 1.0)
        r["elbo_delta_pct"] = 100.0 * (r["test_elbo_nats"] / base["test_elbo_nats"] - 1.0)
        r["compression_ratio"] = fp32_bytes / r["size_bytes"]

    split = "60,000 train / 10,000 test" if full else "first 8,000 of the MNIST test set / last 2,000"
    print(f"MNIST, {split}; 784-400-20 MLP VAE (preset seed_784_400_20); CPU; "
          f"compression ratio vs fp32 = 4 bytes x {fp32_bytes // 4} baseline params; latency: batch 128, median of 30\n")
    print("| row | pipeline | epochs | vs | recon error | Δ recon % | test ELBO nats | Δ ELBO % | size bytes | ratio vs fp32 | CPU latency ms |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        print(f"| {r['name']} | {r['pipeline']} | {r['epochs']} | {r['reference']} | {r['recon_error']:.4f} | {r['recon_delta_pct']:+.1f} | "
              f"{r['test_elbo_nats']:.2f} | {r['elbo_delta_pct']:+.1f} | {r['size_bytes']:,} | {r['compression_ratio']:.1f}x | "
              f"{r['latency_ms']:.2f} |")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
