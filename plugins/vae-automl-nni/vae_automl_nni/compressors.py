"""NNI 3.0 pruners and quantizers as vae-automl compressors.

``nni_prune`` runs one of ``nni.compression.pruning``'s pruners on a copy of
the model and turns its masks into a vae-automl model:

* ``level`` (LevelPruner, unstructured): the masks zero weights, which are
  marked ``"sparse": true`` and kept at zero through fine-tuning.
* ``l1_norm`` / ``l2_norm`` / ``taylor`` (L1NormPruner, L2NormPruner,
  TaylorPruner; output-channel granularity) on the hidden Linear / Conv2d
  layers: NNI chooses which neurons or channels go. NNI's ``ModelSpeedup``
  would then shrink the layers, but with torch 2.14 its tracer
  (``concrete_trace``) fails on these models (``AttributeError: 'NoneType'
  object has no attribute 'startswith'``), so the units NNI masked are
  removed by vae-automl's own :func:`vae_automl.builtin.pruning_impl.shrink`,
  which updates the config too. Layers NNI's channel masks do not map to
  (transposed convs, the conv decoder's input projection) keep all units.

``nni_quantize`` runs NNI's ``PtqQuantizer`` (post-training, calibrated on
training batches) or ``QATQuantizer`` (quantization-aware fine-tuning) on
the weights of every Linear / Conv layer, reads back NNI's scales and zero
points, and stores the weights on exactly that grid with vae-automl's
``uniform`` codec (asymmetric form ``(c - zero_point) * scale``, float32
scales), so ``size_bytes`` counts NNI's grid bit-packed.

They work on every task: NNI's training steps (QAT, Taylor's gradients,
PTQ's calibration passes) use the trial's loss, a VAE's negative ELBO or a
classifier's cross-entropy (``tests/test_nni_plugin.py`` runs them on a
classifier).

NNI is imported only when a compressor runs, so ``vae-automl plugins`` lists
these even where nni is missing; running one then says how to install it.

These are the declarations (what ``vae-automl plugins`` lists), without torch; the code, which imports
torch and then NNI, is in :mod:`vae_automl_nni.compressors_impl`, loaded when a trial runs one of them.
"""

from __future__ import annotations

from typing import Any

from vae_automl.components import Compressor, Param, code_module_getattr, implemented_in

IMPL = "vae_automl_nni.compressors_impl"
__getattr__ = code_module_getattr(__name__, IMPL)  # the code's names, as imported from here before 0.3

PRUNERS = ("level", "l1_norm", "l2_norm", "taylor")
QUANTIZERS = ("ptq", "qat")
SCHEMES = ("symmetric", "affine")


class NniPruner(Compressor):
    name = "nni_prune"
    stage = "prune"
    gives = "masked"

    def requirements(self, values: dict[str, Any]) -> set[str]:
        # The channel pruners remove units through the architecture's declared channel groups.
        return set() if values.get("pruner") == "level" else {"channel_groups"}

    help = "NNI 3.0 pruners (level: unstructured; l1_norm, l2_norm, taylor: neurons/channels, physically removed)"
    params = (
        Param("pruner", "categorical", "level", choices=PRUNERS, help="which nni.compression.pruning pruner"),
        Param(
            "sparsity",
            "float",
            0.5,
            minimum=0.0,
            maximum=0.99,
            help="NNI's sparse_ratio: fraction of weights (level) or of hidden units (others) removed",
        ),
        Param("finetune_epochs", "int", 2, minimum=0, maximum=200, help="fine-tuning epochs after pruning"),
        Param("taylor_steps", "int", 8, minimum=1, maximum=1000, help="training steps TaylorPruner collects gradients over"),
    )
    apply = implemented_in(f"{IMPL}:NniPrunerCode")
    _masks = implemented_in(f"{IMPL}:NniPrunerCode")
    _unstructured = implemented_in(f"{IMPL}:NniPrunerCode")
    _structured = implemented_in(f"{IMPL}:NniPrunerCode")


class NniQuantizer(Compressor):
    name = "nni_quantize"
    stage = "quantize"
    gives = "quantized"
    help = "NNI 3.0 weight quantization (PtqQuantizer or QATQuantizer), stored bit-packed on NNI's grid"
    params = (
        Param("quantizer", "categorical", "ptq", choices=QUANTIZERS, help="ptq: PtqQuantizer; qat: QATQuantizer"),
        Param("bits", "int", 8, minimum=2, maximum=8, help="NNI quant_dtype int<bits>"),
        Param("scheme", "categorical", "symmetric", choices=SCHEMES, help="NNI quant_scheme"),
        Param(
            "granularity",
            "categorical",
            "out_channel",
            choices=("default", "out_channel"),
            help="NNI granularity: one scale per tensor (default) or per output channel",
        ),
        Param(
            "steps", "int", 32, minimum=1, maximum=100_000, help="calibration (ptq) or quantization-aware training (qat) steps"
        ),
    )
    apply = implemented_in(f"{IMPL}:NniQuantizerCode")
