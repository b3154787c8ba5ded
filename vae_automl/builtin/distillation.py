"""Built-in distillation compressor (registered through the compressor hook like any plugin).

The student is the teacher's architecture with its hidden widths (MLP) or
channels (conv) scaled by ``width_ratio`` and, optionally, fewer latent
units (``latent_dim_ratio``). It is trained on

    student negative ELBO
    + alpha * KL(q_student(z|x) || q_teacher(z|x))
    + beta * distance between the two decoders' mean reconstructions

where the distance is the cross-entropy of the student's Bernoulli decoder
against the teacher's mean image (squared error for Gaussian decoders),
per image, in nats like the ELBO.

Latent dimensions of different size: rather than learn a projection, the
student keeps the teacher's *most active* latent units (largest average
KL to the prior on training data), and the KL term compares the student's
posterior with the teacher's posterior restricted to those units. With
``init: teacher`` (the default) the student also starts from the teacher's
weights for the kept units (the neurons / channels the structured pruner
would keep); ``init: scratch`` starts from a fresh random initialization.

A classifier teacher (the ``classifier`` task) is distilled on its logits
(Hinton et al. 2015): the student (``width_ratio`` of its channels and
hidden widths; from the teacher's strongest units with ``init: teacher``)
trains on cross-entropy with the labels + ``alpha`` times
``T**2 * KL(softmax(teacher / T) || softmax(student / T))`` with
``T = temperature``; ``beta`` and ``latent_dim_ratio`` do not apply.

With a user's model as teacher (``base_model:`` in the search space), the
student is a built-in family sampled from the space's ``architecture:``
section (``ctx.student``), trained from scratch; ``width_ratio``,
``latent_dim_ratio`` and ``init`` do not apply, and the KL term compares
the student's first ``min(student, teacher)`` latent units with the
teacher's most active ones.

The training (torch) is in :mod:`vae_automl.builtin.distillation_impl`, imported when a trial distills.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vae_automl.components import Compressor, Param, code_module_getattr, implemented_in
from vae_automl.plugin_manager import hookimpl

IMPL = "vae_automl.builtin.distillation_impl"
__getattr__ = code_module_getattr(__name__, IMPL)  # the code's names, as imported from here before 0.3

INITS = ("teacher", "scratch")


class Distiller(Compressor):
    name = "distill"
    stage = "distill"
    takes = ("dense",)

    def requirements(self, values: dict[str, Any]) -> set[str]:
        # Starting from the teacher's strongest units needs the teacher's channel groups.
        return {"channel_groups"} if values.get("init", "teacher") == "teacher" else set()

    help = (
        "train a narrower student (width_ratio of the teacher's hidden sizes) on ELBO + alpha * posterior KL "
        "+ beta * reconstruction distance to the teacher"
    )
    params = (
        Param("width_ratio", "float", 0.5, minimum=0.05, maximum=1.0, help="student hidden sizes / teacher's"),
        Param(
            "latent_dim_ratio",
            "float",
            1.0,
            minimum=0.05,
            maximum=1.0,
            help="student latent size / teacher's (the teacher's most active units are kept)",
        ),
        Param(
            "alpha",
            "float",
            1.0,
            minimum=0.0,
            maximum=100.0,
            help="weight of KL(q_student || q_teacher); classifiers: of the soft-target loss",
        ),
        Param("beta", "float", 1.0, minimum=0.0, maximum=100.0, help="weight of the reconstruction distance"),
        Param("epochs", "int", 10, minimum=0, maximum=1000, help="student training epochs"),
        Param(
            "init",
            "categorical",
            "teacher",
            choices=INITS,
            help="teacher: start from the teacher's strongest units; scratch: random initialization",
        ),
        Param(
            "temperature",
            "float",
            4.0,
            minimum=0.1,
            maximum=100.0,
            help="classifiers: softmax temperature of the logit distillation",
        ),
    )
    apply = implemented_in(f"{IMPL}:DistillerCode")
    _distill_logits = implemented_in(f"{IMPL}:DistillerCode")
    _shrunk_teacher = implemented_in(f"{IMPL}:DistillerCode")


@hookimpl
def register_compressors(register: Callable[[Compressor], None]) -> None:
    register(Distiller())
