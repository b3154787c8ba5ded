"""Built-in ``entropy_code`` compressor: Deep Compression's third stage, as the last stage of any pipeline.

It changes no weight. It turns on ``"entropy": true`` in the encoding spec
of every tensor of a built-in codec that has something to code: codes of
the grid codecs (uniform, codebook), a sparse mask, or float16 values.
Tensors of other codecs (``weight_vae`` codes its own latents) are left as
they are. The packed
file then ANS-codes those parts wherever that is smaller (see :mod:`vae_automl.storage.entropy`). The
loaded model is bit for bit the one before this stage, and ``size_bytes``
is still the file's length.

``container: compact`` also stores the model in the compact container
(:mod:`vae_automl.storage.compact`): the same parts under a deflated header
of tens of bytes instead of safetensors' kilobytes, which is most of a tiny
model's file. ``mask_lines: true`` adds ``"mask_lines": true`` to the spec
of every sparse tensor: its mask may then be coded per row or per column.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vae_automl.components import Compressor, Param
from vae_automl.plugin_manager import hookimpl

if TYPE_CHECKING:
    from vae_automl.components import CompressionContext

CODED_CODECS = ("uniform", "codebook")
"""Codecs whose ``""`` part is ``bits``-wide codes, the part entropy coding codes."""


class EntropyCode(Compressor):
    name = "entropy_code"
    stage = "code"
    help = "entropy-code (ANS, constriction) the stored codes, sparse masks and float16 codebooks/scales; weights unchanged"
    # weight_vae's codec codes its latents itself: its tensors pass through untouched.
    takes = ("dense", "masked", "quantized", "codec:weight_vae")
    gives = "entropy_coded"
    params = (
        Param(
            "container",
            "categorical",
            "safetensors",
            choices=("safetensors", "compact"),
            help="the file: safetensors, or the compact container (a deflated header of tens of bytes, for tiny models)",
        ),
        Param(
            "mask_lines",
            "bool",
            False,
            help="also try coding each sparse mask per row and per column (its own keep frequency each), "
            "keeping the smallest: pays where kept weights concentrate in some rows or columns",
        ),
    )
    compresses = False  # on a dense float32 model there is nothing it can code smaller

    def apply(self, model: Any, params: dict[str, Any], ctx: CompressionContext) -> Any:
        values = self.resolve_params(params)
        out = copy.deepcopy(model)
        out.container = values["container"]
        out.compact_version = None  # a newly coded model is written in the current version
        for name in out.state_dict():
            spec = out.encodings.get(name, {})
            codec = spec.get("codec", "dense")
            if codec in CODED_CODECS or (codec == "dense" and (spec.get("sparse") or spec.get("dtype") == "float16")):
                coded = {**spec, "entropy": True}
                if values["mask_lines"] and spec.get("sparse"):
                    coded["mask_lines"] = True
                out.encodings[name] = coded
        return out


@hookimpl
def register_compressors(register: Callable[[Compressor], None]) -> None:
    register(EntropyCode())
