"""Built-in quantization compressors (registered through the compressor hook like any plugin).

Three weight-only quantizers, all of stage ``quantize``:

``uniform``
    n-bit uniform grid (1..8 bits), per output channel or per tensor,
    symmetric or asymmetric; stored by the ``uniform`` codec.
``pow2``
    logarithmic levels ``0, +-s, +-s/2, +-s/4, ...`` (2..8 bits) per tensor;
    stored by the ``codebook`` codec.
``kmeans``
    weight sharing: a k-means codebook of ``2**bits`` values per tensor
    (Deep Compression); stored by the ``codebook`` codec. With
    ``qat_codebook: lloyd`` the codebook is not fixed during fine-tuning:
    after each optimizer step each centroid moves to the mean of the latent
    weights nearest to it (one Lloyd step, rounded to the codebook dtype),
    so the shared values train with the weights, as in Deep Compression.

What is quantized: the weights of Linear, Conv and ConvTranspose layers.
Biases and the Gaussian ``log_sigma`` stay as they are (dense float32 unless
an earlier stage chose otherwise): they are a tiny share of the bytes and
the ELBO is sensitive to them. ``bias_bits`` (1..8; 0, the default: left
as they are) stores the biases of those layers too, each on a per-tensor
symmetric uniform grid spanning its largest magnitude (``uniform`` codec,
float16 scale), after the weights' fine-tuning: on a 2,464-parameter CNN
the 48 float32 biases are a fifth of a 1 KB file.

Bit widths per layer group: ``bits_encoder``, ``bits_heads`` (the layers
computing ``mu`` and ``logvar``) and ``bits_decoder`` default to ``bits``;
the groups are those the model's architecture declares
(:meth:`vae_automl.components.Architecture.layer_groups`), a layer in no
group takes ``bits``, and per-group bits on a model without groups are
refused (at YAML load for the search; ValueError here).

Calibration (post-training): the clipping range of each grid is chosen
among 37 candidates (0.1 to 1.0 of the largest magnitude) to minimize
``calibration``: ``output`` (default) the squared error of the layer's
output on a calibration batch of training images, ``||X (W - W_q)^T||^2``
(per output channel when the grid is per channel; transposed convolutions
fall back to weight error), ``mse`` the squared weight error, or
``minmax`` no clipping. Inputs of every layer are those of the float model.

Quantization-aware fine-tuning (``qat_epochs`` > 0): each weight gets a
``torch.nn.utils.parametrize`` fake-quant with a straight-through estimator
(the grid follows the weights: the calibrated clip ratios are kept, the
scale is recomputed; codebooks stay fixed unless ``qat_codebook: lloyd``),
the model is fine-tuned with the trial's training settings, then the final
weights are snapped to the grid and the parametrizations removed, so the
result is a plain VAE.
With ``distill_alpha`` > 0 the fine-tuning loss also pulls the model
towards the trial's teacher (``ctx.teacher``: the space's ``teacher:``
if it names one, else the trial's trained fp32 model): Hinton's soft
targets at ``distill_temperature`` for a classifier, the KL to its
posterior plus the distance to its mean image for a VAE (the ``distill``
compressor's losses), weighted by ``distill_alpha``.

Pruned zeros stay zero (masked during fine-tuning and after quantizing),
and an earlier stage's ``"sparse": true`` is kept; a grid without a zero
level (1-bit symmetric, k-means) turns ``sparse`` on when zeros exist.

The grids, calibration and fine-tuning (torch) are in :mod:`vae_automl.builtin.quantization_impl`,
imported when a trial quantizes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vae_automl.components import GROUP_NAMES, Compressor, Param, code_module_getattr, implemented_in
from vae_automl.plugin_manager import hookimpl

IMPL = "vae_automl.builtin.quantization_impl"
__getattr__ = code_module_getattr(__name__, IMPL)  # the code's names, as imported from here before 0.3

GROUPS = GROUP_NAMES


def group_bits_params(minimum: int) -> tuple[Param, ...]:
    return (
        Param("bits", "int", 8 if minimum <= 8 else minimum, minimum=minimum, maximum=8, help="bits per weight"),
        *(
            Param(f"bits_{g}", "int", None, minimum=minimum, maximum=8, help=f"bits of the {g} layers (default: bits)")
            for g in GROUPS
        ),
    )


COMMON_PARAMS = (
    Param(
        "qat_epochs",
        "int",
        0,
        minimum=0,
        maximum=1000,
        help="quantization-aware fine-tuning epochs with a straight-through estimator (0: post-training only)",
    ),
    Param(
        "qat_lr", "float", None, minimum=1e-7, maximum=1.0, log=True, help="fine-tuning learning rate (default: the trial's lr)"
    ),
    Param(
        "bias_bits",
        "int",
        0,
        minimum=0,
        maximum=8,
        help="bits of the quantized layers' biases on a per-tensor uniform grid after fine-tuning (0: biases unchanged)",
    ),
    Param(
        "distill_alpha",
        "float",
        0.0,
        minimum=0.0,
        maximum=100.0,
        help="weight of matching the teacher (the trial's fp32 model, or the space's teacher:) during fine-tuning "
        "(logits, or a VAE's posterior and mean image)",
    ),
    Param(
        "distill_temperature",
        "float",
        4.0,
        minimum=0.05,
        maximum=100.0,
        log=True,
        help="softmax temperature of distill_alpha's logit matching (classifiers)",
    ),
)


CALIBRATION_SAMPLES = Param(
    "calibration_samples",
    "int",
    256,
    minimum=1,
    maximum=100_000,
    log=True,
    help="training images whose layer inputs calibrate the clipping (calibration: output)",
)


class _Quantizer(Compressor):
    """Shared pipeline: calibrate a grid per layer, optionally fine-tune through fake-quant, snap, record encodings."""

    stage = "quantize"
    takes = ("dense", "masked", "quantized")
    gives = "quantized"
    group_params = tuple(f"bits_{g}" for g in GROUPS)
    min_bits = 1

    def validate_params(self, values: dict[str, Any]) -> None:
        for key in ("bits", *(f"bits_{g}" for g in GROUPS)):
            value = values.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and not self.min_bits <= value <= 8:
                raise ValueError(f"`{key}` must be in {self.min_bits}..8 for {self.name}, but got {key}={value}")
        qat = values.get("qat_epochs")
        if isinstance(qat, int) and qat < 0:
            raise ValueError(f"`qat_epochs` must be >= 0, but got qat_epochs={qat}")
        bias_bits = values.get("bias_bits")
        if isinstance(bias_bits, int) and not isinstance(bias_bits, bool) and not 0 <= bias_bits <= 8:
            raise ValueError(f"`bias_bits` must be in 0..8 (0: biases unchanged), but got bias_bits={bias_bits}")

    fit = implemented_in(f"{IMPL}:QuantizerCode")
    quantize = implemented_in(f"{IMPL}:QuantizerCode")
    spec = implemented_in(f"{IMPL}:QuantizerCode")
    needs_zero_mask = implemented_in(f"{IMPL}:QuantizerCode")
    apply = implemented_in(f"{IMPL}:QuantizerCode")
    _fine_tune = implemented_in(f"{IMPL}:QuantizerCode")
    follows = implemented_in(f"{IMPL}:QuantizerCode")
    follow = implemented_in(f"{IMPL}:QuantizerCode")


class UniformQuantizer(_Quantizer):
    name = "uniform"
    help = "n-bit uniform weights (1..8), per channel or per tensor, symmetric or asymmetric; PTQ + optional QAT"
    params = (
        *group_bits_params(1),
        Param(
            "granularity",
            "categorical",
            "per_channel",
            choices=("per_channel", "per_tensor"),
            help="one scale per output channel (axis 0) or per tensor",
        ),
        Param("symmetric", "bool", True, help="symmetric grid (no zero point) or asymmetric with a zero point"),
        Param(
            "calibration",
            "categorical",
            "output",
            choices=("output", "mse", "minmax"),
            help="clipping: min layer-output error, min weight error, or none",
        ),
        Param("scale_dtype", "categorical", "float16", choices=("float16", "float32"), help="how scales are stored"),
        CALIBRATION_SAMPLES,
        *COMMON_PARAMS,
    )

    def validate_params(self, values: dict[str, Any]) -> None:
        super().validate_params(values)
        if values.get("symmetric") is False:
            for key in ("bits", *(f"bits_{g}" for g in GROUPS)):
                if values.get(key) == 1:
                    raise ValueError(
                        f"an asymmetric grid needs at least 2 bits (its zero point pins one of 2 levels at 0), "
                        f"but got {key}=1 with symmetric=false; 1-bit weights need symmetric: true (levels +-scale)"
                    )

    fit = implemented_in(f"{IMPL}:UniformQuantizerCode")
    quantize = implemented_in(f"{IMPL}:UniformQuantizerCode")
    spec = implemented_in(f"{IMPL}:UniformQuantizerCode")
    needs_zero_mask = implemented_in(f"{IMPL}:UniformQuantizerCode")


class _CodebookQuantizer(_Quantizer):
    quantize = implemented_in(f"{IMPL}:CodebookQuantizerCode")
    spec = implemented_in(f"{IMPL}:CodebookQuantizerCode")
    needs_zero_mask = implemented_in(f"{IMPL}:CodebookQuantizerCode")


class Pow2Quantizer(_CodebookQuantizer):
    name = "pow2"
    help = "logarithmic (power-of-two) levels 0, +-s, +-s/2, ... per tensor (2..8 bits); PTQ + optional QAT"
    min_bits = 2
    params = (
        *group_bits_params(2),
        Param(
            "calibration",
            "categorical",
            "output",
            choices=("output", "mse", "minmax"),
            help="choice of the top level s: min layer-output error, min weight error, or max|w|",
        ),
        CALIBRATION_SAMPLES,
        *COMMON_PARAMS,
    )
    fit = implemented_in(f"{IMPL}:Pow2QuantizerCode")


class KMeansQuantizer(_CodebookQuantizer):
    name = "kmeans"
    help = "weight sharing: a k-means codebook of 2**bits values per tensor + packed indices; PTQ + optional QAT"
    params = (
        *group_bits_params(1),
        Param(
            "init",
            "categorical",
            "linear",
            choices=("linear", "kmeans++"),
            help="centroid init: evenly over [min, max] (deterministic) or k-means++ from the trial seed",
        ),
        Param(
            "codebook_dtype",
            "categorical",
            "float16",
            choices=("float16", "float32", "float8_e4m3"),
            help="how the codebook is stored (float8_e4m3: a byte per entry; centroids rounded to it before fine-tuning)",
        ),
        Param(
            "qat_codebook",
            "categorical",
            "fixed",
            choices=("fixed", "lloyd"),
            help="during QAT: keep the codebook, or move each centroid to the mean of its latent weights after each step",
        ),
        *COMMON_PARAMS,
    )
    fit = implemented_in(f"{IMPL}:KMeansQuantizerCode")
    follows = implemented_in(f"{IMPL}:KMeansQuantizerCode")
    follow = implemented_in(f"{IMPL}:KMeansQuantizerCode")


@hookimpl
def register_compressors(register: Callable[[Compressor], None]) -> None:
    register(UniformQuantizer())
    register(Pow2Quantizer())
    register(KMeansQuantizer())
