"""The plugin module named by the entry point: one compressor, registered through the compressor hook."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, Callable

import torch

from vae_automl import hookimpl
from vae_automl.components import Compressor, Param

if TYPE_CHECKING:
    from vae_automl.components import CompressionContext
    from vae_automl.vae import VAE

FLOAT16_MAX = 65504.0


class Float16Compressor(Compressor):
    """Round float32 tensors to float16 and store them as float16: half the bytes, no calibration.

    Tensors with fewer than ``min_numel`` elements (or more than
    ``max_numel``) stay as they are, and so does any tensor an earlier stage
    already encoded (a quantized weight keeps its codec). An earlier
    ``"sparse": true`` is kept, and zeros stay zero since float16 has them.
    """

    name = "template_fp16"
    stage = "quantize"
    takes = ("dense", "masked", "quantized")  # tensors already on a codec are left as they are
    gives = "quantized"
    help = "float16 weights (example plugin from docs/writing-a-compressor-plugin.md)"
    params = (
        Param("min_numel", "int", 0, minimum=0, maximum=10**9, help="leave tensors smaller than this in float32"),
        Param("max_numel", "int", None, minimum=1, maximum=10**9, help="leave tensors larger than this in float32"),
    )

    def validate_params(self, values: dict[str, Any]) -> None:
        low, high = values.get("min_numel"), values.get("max_numel")
        if isinstance(low, int) and isinstance(high, int) and low > high:
            raise ValueError(f"`min_numel` must not exceed `max_numel`, but got min_numel={low}, max_numel={high}")

    def apply(self, model: VAE, params: dict[str, Any], ctx: CompressionContext) -> VAE:
        values = self.resolve_params(params)  # defaults filled, bounds and validate_params checked
        out = copy.deepcopy(model)  # never mutate the input
        low, high = values["min_numel"], values["max_numel"]
        with torch.no_grad():
            for name, tensor in out.state_dict(keep_vars=True).items():
                spec = out.encodings.get(name, {})
                if spec.get("codec", "dense") != "dense" or tensor.numel() < low or (high is not None and tensor.numel() > high):
                    continue
                # The model must hold exactly what is stored: round in place, then record the encoding.
                tensor.copy_(tensor.clamp(-FLOAT16_MAX, FLOAT16_MAX).half().float())
                out.encodings[name] = {**spec, "dtype": "float16"}
        return out


@hookimpl
def register_compressors(register: Callable[[Compressor], None]) -> None:
    register(Float16Compressor())
