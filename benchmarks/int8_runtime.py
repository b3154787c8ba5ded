"""Latency of the 784-400-20 MLP VAE (encode + decode via mu), batch 128, on this CPU: float vs int8.

Prints one table, every row measured in the same run: float torch, torchao
int8 (dynamic activation + int8 weight, and int8 weight-only), onnxruntime
float, and onnxruntime int8 (what ``vae_automl.runtime.deployed_runtime``
serves for 8-bit models). Ratios are against float torch.

    .venv/bin/python benchmarks/int8_runtime.py [--repeats 200] [--batch 128]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Callable

import torch

from vae_automl import runtime
from vae_automl.registry import get_registry


def snap_to_int8(model: torch.nn.Module) -> None:
    """Put every Linear weight on the 8-bit symmetric per-row grid and record that encoding."""
    for name in runtime.int8_weight_names(model):
        module = model.get_submodule(name.rsplit(".", 1)[0])
        with torch.no_grad():
            w = module.weight
            scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
            w.copy_(torch.round(w / scale).clamp(-127, 127) * scale)
        model.encodings[name] = {"codec": "uniform", "bits": 8, "symmetric": True, "axis": 0}


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 20) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    config = {"architecture": "mlp", "input_shape": [1, 28, 28], "encoder_widths": [400], "decoder_widths": [400],
              "latent_dim": 20, "activation": "relu", "likelihood": "bernoulli"}
    torch.manual_seed(0)
    model = get_registry().build_model(config).eval()
    snap_to_int8(model)
    x = torch.rand(args.batch, 1, 28, 28)

    def torch_forward(m: torch.nn.Module) -> Callable[[], object]:
        def run() -> object:
            with torch.inference_mode():
                return m.decode(m.encode(x)[0])
        return run

    rows: list[tuple[str, float]] = [("torch float32", median_ms(torch_forward(model), args.repeats))]
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, quantize_

        for label, config_ in (("torchao int8 dyn-act + int8 weight", Int8DynamicActivationInt8WeightConfig()),
                               ("torchao int8 weight-only", Int8WeightOnlyConfig())):
            m = copy.deepcopy(model)
            try:
                quantize_(m, config_)
                rows.append((label, median_ms(torch_forward(m), args.repeats)))
            except Exception as exc:  # a config without a CPU path: say so in the table
                rows.append((f"{label} (failed: {type(exc).__name__}: {str(exc)[:60]})", float("nan")))
    except ImportError:
        rows.append(("torchao not installed", float("nan")))
    float_session = runtime.make_session(runtime.export_onnx(model, runtime.GRAPH_RECONSTRUCT, int8=False))
    rows.append(("onnxruntime float32", median_ms(lambda: float_session.run(None, {"x": x.numpy()}), args.repeats)))
    int8_forward = runtime.deployed_runtime(model, "cpu")
    assert int8_forward is not None
    rows.append(("onnxruntime int8 (MatMulInteger)", median_ms(lambda: int8_forward(x), args.repeats)))
    base = rows[0][1]
    print(f"784-400-20 MLP VAE, encode+decode, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print("| runtime | latency_ms | speedup vs torch float32 |\n|---|---|---|")
    for label, ms in rows:
        print(f"| {label} | {ms:.3f} | {base / ms:.2f}x |")


if __name__ == "__main__":
    main()
