"""Built-in objectives: quality (ELBO, reconstruction error), size (params, bytes, bits), latency.

The measurements (torch, the storage format, onnxruntime) are in :mod:`vae_automl.builtin.objectives_impl`,
imported when a trial measures its model.
"""

from __future__ import annotations

from collections.abc import Callable

from vae_automl.components import Objective, code_module_getattr, implemented_in
from vae_automl.plugin_manager import hookimpl

IMPL = "vae_automl.builtin.objectives_impl"
__getattr__ = code_module_getattr(__name__, IMPL)  # the code's names, as imported from here before 0.3


class TestElbo(Objective):
    name = "test_elbo_nats"
    unit = "nats/image"
    tasks = ("vae",)
    help = "negative ELBO per test image (single fixed-noise sample, beta=1)"
    measure = implemented_in(f"{IMPL}:TestElboCode")


class ReconError(Objective):
    name = "recon_error"
    unit = "nats/pixel"
    tasks = ("vae",)
    help = "per-pixel binary cross-entropy of the posterior-mean reconstruction, test split"
    measure = implemented_in(f"{IMPL}:ReconErrorCode")


class Params(Objective):
    name = "params"
    unit = "count"
    help = (
        "stored parameters: non-zero values per tensor, or what its codec stores "
        "(a codec's optional stored_values, e.g. the factors of a low-rank codec)"
    )
    needs_training = False
    measure = implemented_in(f"{IMPL}:ParamsCode")


class SizeBytes(Objective):
    name = "size_bytes"
    unit = "bytes"
    help = "byte length of the packed weights file export writes (weights.safetensors)"
    needs_training = False
    measure = implemented_in(f"{IMPL}:SizeBytesCode")


class TheoreticalBits(Objective):
    name = "theoretical_bits"
    unit = "bits"
    help = "bits the weight encodings need, without container overhead"
    needs_training = False
    measure = implemented_in(f"{IMPL}:TheoreticalBitsCode")


class LatencyMs(Objective):
    name = "latency_ms"
    unit = "ms"
    help = "median time of one encode+decode batch after warm-up (device and batch size in the record)"
    needs_training = False
    measure = implemented_in(f"{IMPL}:LatencyMsCode")


@hookimpl
def register_objectives(register: Callable[[Objective], None]) -> None:
    for objective in (TestElbo(), ReconError(), Params(), SizeBytes(), TheoreticalBits(), LatencyMs()):
        register(objective)
