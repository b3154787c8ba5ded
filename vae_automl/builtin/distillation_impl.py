"""The code of the built-in distiller (:mod:`vae_automl.builtin.distillation` declares it): students and their losses."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from vae_automl.builtin.distillation import Distiller
from vae_automl.builtin.pruning_impl import keep_top, magnitude_unit_scores, shrink
from vae_automl.classifier import logit_distillation
from vae_automl.layers import channel_groups
from vae_automl.vae import VAE

if TYPE_CHECKING:
    from vae_automl.components import CompressionContext


WIDTH_KEYS = ("encoder_widths", "decoder_widths", "encoder_channels", "decoder_channels", "conv_channels", "hidden_widths")


def gaussian_kl(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor, logvar_p: torch.Tensor) -> torch.Tensor:
    """Per-image KL(N(mu_q, var_q) || N(mu_p, var_p)) for diagonal Gaussians, in nats."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).pow(2)) / logvar_p.exp() - 1.0).sum(1)


def reconstruction_distance(student: VAE, student_out: torch.Tensor, teacher_mean: torch.Tensor) -> torch.Tensor:
    """Per-image distance between the student's decoder output and the teacher's mean image, in nats."""
    if student.likelihood == "bernoulli":
        distance = F.binary_cross_entropy_with_logits(student_out, teacher_mean, reduction="none")
    else:
        distance = 0.5 * (student_out - teacher_mean).pow(2)
    return distance.flatten(1).sum(1)


def student_config(teacher_config: dict[str, Any], width_ratio: float, latent_dim: int | None) -> dict[str, Any]:
    """The teacher's config with every hidden width / channel count scaled by ``width_ratio``.

    ``latent_dim`` is set too, if given.
    """
    keys = [k for k in WIDTH_KEYS if k in teacher_config]
    if not keys:
        raise ValueError(
            f"distillation scales {', '.join(WIDTH_KEYS)} of the teacher's config, but architecture "
            f"{teacher_config.get('architecture')!r} has none of them"
        )
    config = copy.deepcopy(teacher_config)
    for key in keys:
        config[key] = [max(1, round(w * width_ratio)) for w in teacher_config[key]]
    if latent_dim is not None:
        config["latent_dim"] = latent_dim
    return config


@torch.no_grad()
def active_latent_units(teacher: VAE, x: torch.Tensor, count: int, chunk: int = 2048) -> torch.Tensor:
    """Indices of the ``count`` latent units with the largest mean KL to the prior over ``x``, sorted."""
    total = torch.zeros(teacher.latent_dim, device=x.device)
    for start in range(0, len(x), chunk):
        mu, logvar = teacher.encode(x[start : start + chunk])
        total += (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).sum(0)
    return torch.topk(total, count).indices.sort().values


def teacher_matching_loss(
    teacher: Any, alpha: float, temperature: float, student: Any = None
) -> Callable[[Any, torch.Tensor], torch.Tensor]:
    """An ``extra_loss`` that pulls a model of the teacher's shape towards the (frozen) teacher's outputs.

    A classifier matches the teacher's logits (:func:`~vae_automl.classifier.logit_distillation` at
    ``temperature``); a VAE its posterior (KL, every latent unit) and its mean image, as the distiller does.
    Both weighted by ``alpha``. Used by fine-tuning stages (quantization-aware training) that keep the shape.
    ``student``, if given, is checked against the teacher now rather than at the first batch.
    """
    frozen = copy.deepcopy(teacher).eval()
    frozen.requires_grad_(False)

    if not isinstance(frozen, VAE):

        def soft_targets(m: Any, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                teacher_logits = frozen(x)
            return alpha * logit_distillation(m(x), teacher_logits, temperature)

        return soft_targets

    def check(m: VAE) -> None:
        if m.latent_dim != frozen.latent_dim:
            raise ValueError(
                f"matching the teacher's posterior (distill_alpha) needs its latent size, but the model has "
                f"{m.latent_dim} latent units and the teacher {frozen.latent_dim} (a `teacher:` of another size, or an "
                "earlier distill stage that shrank it?)"
            )

    if student is not None:
        check(student)

    def posterior_and_image(m: VAE, x: torch.Tensor) -> torch.Tensor:
        check(m)
        with torch.no_grad():
            mu_t, logvar_t = frozen.encode(x)
            teacher_mean = frozen.mean_image(frozen.decode(mu_t))
        mu_s, logvar_s = m.encode(x)
        loss = gaussian_kl(mu_s, logvar_s, mu_t, logvar_t) + reconstruction_distance(m, m.decode(mu_s), teacher_mean)
        return alpha * loss.mean()

    return posterior_and_image


class DistillerCode(Distiller):
    """The work of :class:`~vae_automl.builtin.distillation.Distiller`."""

    def apply(self, model: VAE, params: dict[str, Any], ctx: CompressionContext) -> VAE:
        values = self.resolve_params(params)
        if ctx.build_model is None:
            raise ValueError("distillation builds its student from a config and needs ctx.build_model")
        # A private frozen copy: the caller's teacher (and the input model) keep their mode and weights.
        teacher = copy.deepcopy(ctx.teacher if ctx.teacher is not None else model).to(ctx.device).eval()
        teacher.requires_grad_(False)
        torch.manual_seed(ctx.seed)
        if not isinstance(teacher, VAE):
            return self._distill_logits(teacher, values, ctx)
        if ctx.student is not None:
            # A user's teacher (base_model:): the student is a built-in family the search chose; its
            # latent units are matched with the teacher's most active ones, the rest train on ELBO alone.
            student = ctx.build_model(ctx.student).to(ctx.device)
            latent_dim = min(student.latent_dim, teacher.latent_dim)
        else:
            latent_dim = max(1, round(teacher.latent_dim * values["latent_dim_ratio"]))
        latent_idx = active_latent_units(teacher, ctx.data.train, latent_dim)
        if ctx.student is None and values["init"] == "teacher":
            student = self._shrunk_teacher(teacher, values["width_ratio"], latent_idx, ctx)
        elif ctx.student is None:
            student = ctx.build_model(student_config(teacher.config, values["width_ratio"], latent_dim)).to(ctx.device)
        alpha, beta = float(values["alpha"]), float(values["beta"])

        def distillation_loss(m: VAE, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                mu_full, logvar_full = teacher.encode(x)
                teacher_mean = teacher.mean_image(teacher.decode(mu_full))
                mu_t, logvar_t = mu_full[:, latent_idx], logvar_full[:, latent_idx]
            mu_s, logvar_s = m.encode(x)
            loss = alpha * gaussian_kl(mu_s[:, :latent_dim], logvar_s[:, :latent_dim], mu_t, logvar_t)
            if beta:
                loss = loss + beta * reconstruction_distance(m, m.decode(mu_s), teacher_mean)
            return loss.mean()

        if values["epochs"] > 0:
            extra = distillation_loss if (alpha or beta) else None
            ctx.fine_tune(student, values["epochs"], extra_loss=extra)
        return student.eval()

    @staticmethod
    def _distill_logits(teacher: Any, values: dict[str, Any], ctx: CompressionContext) -> Any:
        """A classifier's student, trained on its task loss + alpha * the soft-target loss of the teacher's logits."""
        if values["init"] == "teacher":
            groups = channel_groups(teacher, architecture=ctx.architecture)
            counts = [max(1, round(g.size * values["width_ratio"])) for g in groups]
            student = shrink(teacher, groups, keep_top(groups, magnitude_unit_scores(teacher, groups), counts), ctx.build_model)  # type: ignore[arg-type]
            student.encodings = {}
            student.requires_grad_(True)
        else:
            student = ctx.build_model(student_config(teacher.config, values["width_ratio"], None)).to(ctx.device)  # type: ignore[misc]
        alpha, temperature = float(values["alpha"]), float(values["temperature"])
        if values["epochs"] > 0:
            extra = teacher_matching_loss(teacher, alpha, temperature) if alpha else None
            ctx.fine_tune(student, values["epochs"], extra_loss=extra)
        return student.eval()

    @staticmethod
    def _shrunk_teacher(teacher: VAE, width_ratio: float, latent_idx: torch.Tensor, ctx: CompressionContext) -> VAE:
        groups = channel_groups(teacher, include_latent=True, architecture=ctx.architecture)
        scores = magnitude_unit_scores(teacher, groups)
        counts = [max(1, round(g.size * width_ratio)) for g in groups]
        keep = keep_top(groups, scores, counts)
        keep[-1] = latent_idx  # the latent group is last; keep the units the KL term compares against
        student = shrink(teacher, groups, keep, ctx.build_model)  # type: ignore[arg-type]
        student.encodings = {}
        student.requires_grad_(True)
        return student
