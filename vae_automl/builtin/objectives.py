"""Built-in objectives: quality (ELBO, reconstruction error), size (params, bytes, bits), latency."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from vae_automl.components import MeasureContext, Objective
from vae_automl.devices import synchronizer
from vae_automl.plugin_manager import hookimpl
from vae_automl.storage.codec import Codec
from vae_automl.storage.codecs import builtin_codecs
from vae_automl.storage.format import serialize_model, theoretical_bits
from vae_automl.vae import VAE, evaluate_elbo, evaluate_recon_error


class TestElbo(Objective):
    name = "test_elbo_nats"
    unit = "nats/image"
    tasks = ("vae",)
    help = "negative ELBO per test image (single fixed-noise sample, beta=1)"

    def measure(self, ctx: MeasureContext) -> float:
        return evaluate_elbo(ctx.model, ctx.data.test, beta=1.0, seed=ctx.seed)


class ReconError(Objective):
    name = "recon_error"
    unit = "nats/pixel"
    tasks = ("vae",)
    help = "per-pixel binary cross-entropy of the posterior-mean reconstruction, test split"

    def measure(self, ctx: MeasureContext) -> float:
        return evaluate_recon_error(ctx.model, ctx.data.test)


class Params(Objective):
    name = "params"
    unit = "count"
    help = (
        "stored parameters: non-zero values per tensor, or what its codec stores "
        "(a codec's optional stored_values, e.g. the factors of a low-rank codec)"
    )
    needs_training = False

    def measure(self, ctx: MeasureContext) -> float:
        return float(stored_parameters(ctx.model, codecs(ctx)))


def stored_parameters(model: torch.nn.Module, codec_map: dict[str, Codec] | None = None) -> int:
    """Values the packed file stores: a codec's ``stored_values(tensor, spec)`` if it has one, else the non-zeros."""

    known = codec_map if codec_map is not None else builtin_codecs()
    encodings = getattr(model, "encodings", {})
    total = 0
    for name, tensor in model.state_dict().items():
        spec = encodings.get(name, {})
        codec = known.get(spec.get("codec", "dense"))
        count = getattr(codec, "stored_values", None)
        total += int(count(tensor.detach().float().cpu(), spec)) if callable(count) else int(torch.count_nonzero(tensor))
    return total


def codecs(ctx: MeasureContext) -> dict[str, Codec] | None:
    """The registry's codecs (None, the built-in ones, for a context made without a registry)."""
    return ctx.registry.codec_map() if ctx.registry is not None else None


def serialized(ctx: MeasureContext) -> bytes:
    if "serialized" not in ctx.cache:
        ctx.cache["serialized"] = serialize_model(ctx.model, codecs(ctx))
    return ctx.cache["serialized"]


class SizeBytes(Objective):
    name = "size_bytes"
    unit = "bytes"
    help = "byte length of the packed weights file export writes (weights.safetensors)"
    needs_training = False

    def measure(self, ctx: MeasureContext) -> float:
        return float(len(serialized(ctx)))


class TheoreticalBits(Objective):
    name = "theoretical_bits"
    unit = "bits"
    help = "bits the weight encodings need, without container overhead"
    needs_training = False

    def measure(self, ctx: MeasureContext) -> float:
        return float(theoretical_bits(ctx.model, codecs(ctx)))


def deployed_forward(ctx: MeasureContext) -> Callable[[torch.Tensor], object]:
    """The callable that serves a model as deployed: a VAE's reconstruction (int8 onnxruntime for 8-bit VAEs
    on CPU), any other model's forward (a classifier's logits)."""
    from vae_automl import runtime  # deferred: onnx and onnxruntime load only when a model needs them

    deployed = runtime.deployed_runtime(ctx.model, ctx.latency_target, ctx.cache)
    if deployed is not None:
        return deployed
    model = ctx.model
    if not isinstance(model, VAE):
        return model

    def forward(x: torch.Tensor) -> torch.Tensor:
        mu, _ = model.encode(x)
        return model.decode(mu)

    return forward


class LatencyMs(Objective):
    name = "latency_ms"
    unit = "ms"
    help = "median time of one encode+decode batch after warm-up (device and batch size in the record)"
    needs_training = False

    def measure(self, ctx: MeasureContext) -> float:
        device = torch.device(ctx.latency_target if ctx.latency_target != "auto" else ctx.device)
        ctx.model.to(device).eval()
        x = ctx.data.test[: ctx.latency_batch_size].to(device)
        if len(x) < ctx.latency_batch_size:
            x = x.repeat((ctx.latency_batch_size + len(x) - 1) // len(x), 1, 1, 1)[: ctx.latency_batch_size]
        forward = deployed_forward(ctx)
        sync = synchronizer(device)
        timings = []
        with torch.inference_mode():
            for i in range(ctx.latency_warmup + ctx.latency_repeats):
                sync()
                start = time.perf_counter()
                forward(x)
                sync()
                if i >= ctx.latency_warmup:
                    timings.append((time.perf_counter() - start) * 1000.0)
        ctx.model.to(ctx.device)
        return statistics.median(timings)


@hookimpl
def register_objectives(register: Callable[[Objective], None]) -> None:
    for objective in (TestElbo(), ReconError(), Params(), SizeBytes(), TheoreticalBits(), LatencyMs()):
        register(objective)
