"""The code of the built-in objectives (:mod:`vae_automl.builtin.objectives` declares them): the measurements."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from vae_automl.builtin.objectives import LatencyMs, Params, ReconError, SizeBytes, TestElbo, TheoreticalBits
from vae_automl.devices import synchronizer
from vae_automl.storage.codecs import builtin_codecs
from vae_automl.storage.format import serialize_model, theoretical_bits
from vae_automl.vae import VAE, evaluate_elbo, evaluate_recon_error

if TYPE_CHECKING:
    from vae_automl.components import MeasureContext
    from vae_automl.storage.codec import Codec


class TestElboCode(TestElbo):
    """The work of :class:`~vae_automl.builtin.objectives.TestElbo`."""

    def measure(self, ctx: MeasureContext) -> float:
        return evaluate_elbo(ctx.model, ctx.data.test, beta=1.0, seed=ctx.seed)


class ReconErrorCode(ReconError):
    """The work of :class:`~vae_automl.builtin.objectives.ReconError`."""

    def measure(self, ctx: MeasureContext) -> float:
        return evaluate_recon_error(ctx.model, ctx.data.test)


class ParamsCode(Params):
    """The work of :class:`~vae_automl.builtin.objectives.Params`."""

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


class SizeBytesCode(SizeBytes):
    """The work of :class:`~vae_automl.builtin.objectives.SizeBytes`."""

    def measure(self, ctx: MeasureContext) -> float:
        return float(len(serialized(ctx)))


class TheoreticalBitsCode(TheoreticalBits):
    """The work of :class:`~vae_automl.builtin.objectives.TheoreticalBits`."""

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


class LatencyMsCode(LatencyMs):
    """The work of :class:`~vae_automl.builtin.objectives.LatencyMs`."""

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
