"""``weight_vae``: a network's weights encoded by a small VAE, its latents entropy-coded, its decoder stored.

Every Linear / Conv weight is scaled to unit standard deviation (the scale
is kept, float16), flattened row-major and cut into chunks of ``chunk``
values (the last one zero-padded). A small VAE learns those chunks:
an encoder (used only here) gives each chunk ``latent_dim`` latents, a
decoder (``latent_dim -> hidden -> chunk``, or linear with ``hidden: 0``)
turns latents back into weights. ``sharing: shared`` fits one VAE to the
chunks of every layer; ``sharing: layer`` fits one per layer, as Entropy
Penalized Reparameterization (Oktay, Ballé et al., ICLR 2020) gives each
layer its own tiny decoder.

Then the network is re-parameterized: each weight *is* the decoder's
output for its latents rounded to a grid of ``step`` (a straight-through
estimator passes the gradient), and latents, decoders and the rest of the
network are fine-tuned on the task's loss plus ``rate_weight`` times the
latents' code length in bits, under a zero-mean quantized Gaussian with a
learned standard deviation per latent unit (uniform noise stands in for
rounding in that term, as in Ballé et al. 2017). That keeps the decoded
network accurate while pushing the latents to cheap codes.

Stored (the ``weight_vae`` storage codec, :class:`~vae_automl.builtin.weight_vae_codec.WeightVAECodec`): per
weight tensor the integer latents, ANS-coded by ``constriction`` with one
frequency table per latent unit (the learned Gaussians only shape the
training; the file codes under the latents' own frequencies, which cost
no more); per decoder its parameters in float16, with the first tensor
that uses it. Loading runs the decoder on the CPU in float32 on exactly
those values, the very computation this compressor used to set the
weights, so the loaded weights equal the trained model's bit for bit and
``size_bytes`` counts the decoder.

Weights an earlier stage pruned (``"sparse": true``) stay zero: the
decoded weight is masked, and the format stores the mask.

``amortize_over`` (N) declares that N models share each decoder (a model
zoo stored with one decoder): the ``size_bytes_amortized`` objective then
counts 1/N of the decoder bytes. ``size_bytes`` is still the file: both
figures are reported.

The chunk VAE, its storage codec and the measurement (torch) are in
:mod:`vae_automl.builtin.weight_vae_impl`, imported when a trial compresses or a model is stored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from vae_automl.components import Compressor, Objective, Param, code_module_getattr, implemented_in
from vae_automl.plugin_manager import hookimpl

if TYPE_CHECKING:
    from vae_automl.storage.codec import Codec

IMPL = "vae_automl.builtin.weight_vae_impl"
__getattr__ = code_module_getattr(__name__, IMPL)  # the code's names, as imported from here before 0.3

SHARINGS = ("shared", "layer")


class WeightVAE(Compressor):
    name = "weight_vae"
    stage = "quantize"
    takes = ("dense", "masked")
    gives = "codec:weight_vae"
    help = (
        "encode every Linear/Conv weight with a small VAE over weight chunks; latents on a grid, "
        "entropy-coded; the decoder is stored and counted; fine-tuned on the task loss + rate"
    )
    params = (
        Param("chunk", "int", 16, minimum=2, maximum=1024, log=True, help="weights per chunk the VAE encodes"),
        Param("latent_dim", "int", 4, minimum=1, maximum=256, log=True, help="latents per chunk"),
        Param("hidden", "int", 32, minimum=0, maximum=4096, help="hidden units of the decoder (0: a linear decoder)"),
        Param(
            "sharing",
            "categorical",
            "shared",
            choices=SHARINGS,
            help="shared: one VAE for every layer; layer: one per layer (EPR)",
        ),
        Param("step", "float", 0.25, minimum=1e-3, maximum=10.0, log=True, help="grid step of the latents"),
        Param(
            "rate_weight",
            "float",
            1e-6,
            minimum=0.0,
            maximum=1.0,
            help="weight of the latents' code length (bits) next to the task loss (per image)",
        ),
        Param("vae_steps", "int", 500, minimum=0, maximum=100_000, log=False, help="Adam steps fitting the chunk VAE"),
        Param("finetune_epochs", "int", 5, minimum=0, maximum=1000, help="epochs fine-tuning latents, decoders and network"),
        Param(
            "finetune_lr",
            "float",
            None,
            minimum=1e-6,
            maximum=1.0,
            log=True,
            help="fine-tuning learning rate (default: the trial's lr)",
        ),
        Param(
            "amortize_over",
            "int",
            1,
            minimum=1,
            maximum=1_000_000,
            help="models declared to share each decoder: size_bytes_amortized counts 1/N of its bytes",
        ),
    )

    def validate_params(self, values: dict[str, Any]) -> None:
        chunk, latent = values.get("chunk"), values.get("latent_dim")
        if isinstance(chunk, int) and isinstance(latent, int) and latent > chunk:
            raise ValueError(
                f"`latent_dim` must be at most `chunk` (a code no smaller than what it encodes saves "
                f"nothing), but got latent_dim={latent}, chunk={chunk}"
            )

    apply = implemented_in(f"{IMPL}:WeightVAECode")
    _finalize = implemented_in(f"{IMPL}:WeightVAECode")


class SizeBytesAmortized(Objective):
    name = "size_bytes_amortized"
    unit = "bytes"
    help = (
        "size_bytes with each weight_vae decoder counted 1/N, N its amortize_over (the models declared to share it); "
        "equal to size_bytes for every other model"
    )
    measure = implemented_in(f"{IMPL}:SizeBytesAmortizedCode")


@hookimpl
def register_compressors(register: Callable[[Compressor], None]) -> None:
    register(WeightVAE())


@hookimpl
def register_codecs(register: Callable[[Codec], None]) -> None:
    # deferred: the codec is torch code; the registry collects codecs only when a model is stored or loaded
    from vae_automl.builtin.weight_vae_codec import WeightVAECodec

    register(WeightVAECodec())


@hookimpl
def register_objectives(register: Callable[[Objective], None]) -> None:
    register(SizeBytesAmortized())
