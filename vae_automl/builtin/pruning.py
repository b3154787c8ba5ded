"""Built-in pruning compressors (registered through the compressor hook like any plugin).

Unstructured pruners (magnitude, Taylor, L1-driven) zero weights and mark
them ``"sparse": true`` in ``model.encodings`` so the packer stores only the
non-zeros; fine-tuning afterwards re-applies the mask after every step.
The structured pruner removes whole hidden neurons / channels: it slices
the tensors, updates ``model.config`` and rebuilds the model from that
config, so ``registry.build_model(model.config)`` gives the same shapes and
params, size and latency drop for real.

``magnitude_prune`` ranks weights by ``criterion``: ``|w|``, or from
calibration batches (``wanda``: ``|w|`` times its input's norm; ``kfac``:
also times its output's gradient norm), and may move each pruned weight's
mean contribution into its output's bias (``bias_compensation``).

Which units exist and which tensors they index is declared by the model's
architecture (:meth:`vae_automl.components.Architecture.channel_groups`);
:func:`shrink` is shared with distillation, which starts its student as a
shrunk teacher.

The pruning itself (torch) is in :mod:`vae_automl.builtin.pruning_impl`, imported when a trial prunes;
:func:`~vae_automl.builtin.pruning_impl.shrink` is there too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vae_automl.components import Compressor, Param, code_module_getattr, implemented_in
from vae_automl.plugin_manager import hookimpl

IMPL = "vae_automl.builtin.pruning_impl"
__getattr__ = code_module_getattr(__name__, IMPL)  # the code's names, as imported from here before 0.3

SCOPES = ("global", "layer", "magnitude_layers")
STRUCTURED_CRITERIA = ("magnitude", "taylor")
MAGNITUDE_CRITERIA = ("magnitude", "wanda", "kfac")
SPARSITY = Param("sparsity", "float", 0.5, minimum=0.0, maximum=0.99, help="fraction of weights set to zero")
SCOPE = Param(
    "scope",
    "categorical",
    "global",
    choices=SCOPES,
    help="global: one threshold over all layers; layer: each layer pruned to `sparsity`; magnitude_layers: each layer "
    "keeps as many weights as global magnitude pruning would, those of highest score",
)


FINETUNE_EPOCHS = Param(
    "finetune_epochs", "int", 2, minimum=0, maximum=200, help="fine-tuning epochs after pruning (the mask is kept)"
)


class _UnstructuredPruner(Compressor):
    stage = "prune"
    gives = "masked"
    scores = implemented_in(f"{IMPL}:UnstructuredPrunerCode")
    apply = implemented_in(f"{IMPL}:UnstructuredPrunerCode")


class MagnitudePruner(_UnstructuredPruner):
    name = "magnitude_prune"
    help = (
        "unstructured pruning by |w| or an activation-aware criterion (global or per layer, at once or ramped up "
        "gradually), then masked fine-tuning"
    )
    params = (
        SPARSITY,
        SCOPE,
        FINETUNE_EPOCHS,
        Param(
            "ramp_epochs",
            "int",
            0,
            minimum=0,
            maximum=200,
            help="0: prune at once; else ramp the sparsity up over the first ramp_epochs of fine-tuning "
            "(Zhu & Gupta 2017's cubic schedule), then fine-tune at `sparsity`",
        ),
        Param(
            "criterion",
            "categorical",
            "magnitude",
            choices=MAGNITUDE_CRITERIA,
            help="magnitude: |w|; wanda: |w| x the L2 norm of its input over calibration batches (Sun et al. 2023); "
            "kfac: wanda x the L2 norm of the loss's gradient at its output (OBD with a K-FAC Fisher); "
            "each layer's norms divided by their RMS so that layers compare under global scope",
        ),
        Param(
            "bias_compensation",
            "bool",
            False,
            help="add to each output's bias its pruned weights' contribution on the mean calibration input (FLAP)",
        ),
        Param(
            "batches",
            "int",
            8,
            minimum=1,
            maximum=1000,
            help="training batches of the calibration inputs (wanda, kfac, bias_compensation)",
        ),
    )
    scores = implemented_in(f"{IMPL}:MagnitudePrunerCode")
    apply = implemented_in(f"{IMPL}:MagnitudePrunerCode")

    def validate_params(self, values: dict[str, Any]) -> None:
        ramp, epochs = values.get("ramp_epochs"), values.get("finetune_epochs")
        if isinstance(ramp, int) and isinstance(epochs, int) and ramp > epochs:
            raise ValueError(
                f"`ramp_epochs` ({ramp}) must not exceed `finetune_epochs` ({epochs}): the sparsity ramps up during fine-tuning"
            )
        if isinstance(ramp, int) and ramp > 0:
            # the ramp recomputes its masks by magnitude during fine-tuning; the other options act once, at the start
            others = {k: values.get(k) for k in ("criterion", "bias_compensation", "scope")}
            if (
                others["criterion"] not in (None, "magnitude")
                or others["bias_compensation"]
                or others["scope"] == "magnitude_layers"
            ):
                raise ValueError(
                    "`ramp_epochs` > 0 ramps by magnitude: it does not combine with `criterion` other than magnitude, "
                    "`bias_compensation` or scope magnitude_layers"
                )


class TaylorPruner(_UnstructuredPruner):
    name = "taylor_prune"
    help = "unstructured pruning by first-order Taylor saliency |w * dL/dw| over a few training batches"
    params = (
        SPARSITY,
        SCOPE,
        FINETUNE_EPOCHS,
        Param("batches", "int", 8, minimum=1, maximum=1000, help="training batches the saliency sums over"),
    )
    scores = implemented_in(f"{IMPL}:TaylorPrunerCode")


class L1Pruner(_UnstructuredPruner):
    name = "l1_prune"
    help = "train with an L1 penalty that drives weights to zero, then prune the smallest and fine-tune"
    params = (
        SPARSITY,
        SCOPE,
        FINETUNE_EPOCHS,
        Param(
            "l1_strength",
            "float",
            1e-4,
            minimum=1e-8,
            maximum=1e-1,
            log=True,
            help="weight of sum |w| (nats per image per unit of |w|) during the L1 phase",
        ),
        Param("l1_epochs", "int", 3, minimum=1, maximum=200, help="epochs of L1-regularized training"),
    )
    scores = implemented_in(f"{IMPL}:L1PrunerCode")


class StructuredPruner(Compressor):
    name = "structured_prune"
    stage = "prune"
    gives = "masked"  # an earlier unstructured stage's masks survive the shrinking
    needs_channel_groups = True
    help = "remove whole hidden neurons (MLP) or channels (conv), shrinking the layers and the config; then fine-tune"
    params = (
        Param("ratio", "float", 0.5, minimum=0.0, maximum=0.95, help="fraction of hidden units removed per layer"),
        Param(
            "criterion",
            "categorical",
            "magnitude",
            choices=STRUCTURED_CRITERIA,
            help="magnitude: |w_in| * |w_out| per unit; taylor: |a * dL/da| summed over batches",
        ),
        Param("batches", "int", 8, minimum=1, maximum=1000, help="batches for the taylor criterion"),
        FINETUNE_EPOCHS,
    )
    apply = implemented_in(f"{IMPL}:StructuredPrunerCode")


@hookimpl
def register_compressors(register: Callable[[Compressor], None]) -> None:
    for compressor in (MagnitudePruner(), TaylorPruner(), L1Pruner(), StructuredPruner()):
        register(compressor)
