"""The Optuna sampler of a search: a named one, or ``auto``, the default, chosen by :func:`choose`.

``auto`` is :class:`~vae_automl.hvi_sampler.HypervolumeSampler` (``hvi``) on a
space of two objectives, and Optuna's TPE with ``constant_liar`` otherwise.
``hvi`` models each objective with a Gaussian process and runs the candidate,
drawn from the space itself (conditional slots included), whose optimistic
prediction adds the most hypervolume to the front. It was chosen on
``benchmarks/search_quality.py`` (README, "How the search decides"): 10 seeds
of 100 trials replayed on our conditional quick.yaml space and on the public
HPOLib table, where it reaches random search's 100-trial hypervolume in 16
and 24 trials (TPE 31 and 40, Optuna's GPSampler 32 and 67, NSGA-II 89 and
78; 14-17 on three other sets of seeds of quick), drawing a searched
``training.epochs`` at the top of its range (``sampler.full_epochs``) and recompressing trained bases, and is
never behind random search from 20 trials on. Its acquisition is the exact 2-D
hypervolume improvement, so spaces of three or more objectives keep TPE.

Several workers on one study: ``hvi`` counts a running trial as measured at
its predicted values (the kriging believer), TPE's constant liar as a bad
one, so concurrent workers spread out instead of sampling the same point;
Optuna's GPSampler conditions on running trials itself; NSGA-II breeds from
finished generations. All of them steer by the targets' constraint values
that trials store (:mod:`vae_automl.constraints`).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import optuna

from vae_automl import space as space_mod
from vae_automl.config import SamplerConfig, SearchSpace
from vae_automl.hvi_sampler import DrawFunction, HypervolumeSampler
from vae_automl.registry import Registry, get_registry


def choose(space: SearchSpace | None = None, trials: int | None = None, objectives: int | None = None) -> str:
    """The sampler ``auto`` stands for: ``hvi`` for two objectives (the space's, else ``objectives``), else ``tpe``."""
    count = len(space.objectives) if space is not None else objectives
    return "hvi" if count == 2 else "tpe"


@dataclasses.dataclass(frozen=True)
class SpaceDraw:
    """``space`` as the define-by-run function ``hvi`` draws candidates with (a class: Ray pickles the sampler)."""

    space: SearchSpace

    def __call__(self, trial: Any) -> dict[str, Any]:
        return space_mod.suggest(trial, self.space)


def rung_layout(space: SearchSpace, registry: Registry | None = None) -> list[int]:
    """Where a rung point (``[score, *objectives known before training]``, in the space's order) holds each of the
    space's objectives: 0, the score, for one that needs training; k, the k-th known before training.

    ``registry`` is the one the space was loaded with (default: the process-wide one)."""
    known = (registry or get_registry()).known_before_training(space.objectives)
    return [known.index(name) + 1 if name in known else 0 for name in space.objectives]


def _named(config: SamplerConfig, space: SearchSpace) -> str:
    """The sampler ``config`` runs on ``space``: its name, with ``auto`` resolved by :func:`choose`."""
    return choose(space) if config.name == "auto" else config.name


def budget_param(config: SamplerConfig, space: SearchSpace) -> str | None:
    """The parameter ``hvi`` trains at the top of its range while longer training pays (``training.epochs``, where the
    space searches it, the sampler is ``hvi`` and ``full_epochs`` is true), or None."""
    epochs = space.training.get("epochs")
    searched = epochs is not None and epochs.searched
    return "training.epochs" if _named(config, space) == "hvi" and config.full_epochs and searched else None


def recompresses(config: SamplerConfig, space: SearchSpace) -> bool:
    """Whether ``hvi`` draws recompressions of trained bases for ``space``: the sampler is ``hvi``, ``recompress`` is
    true, and the space searches the compression (what a recompression draws anew)."""
    return _named(config, space) == "hvi" and config.recompress and space_mod.searches_compression(space)


def make_sampler(
    config: SamplerConfig,
    space: SearchSpace | None = None,
    trials: int | None = None,
    seed_offset: int = 0,
    draw: DrawFunction | None = None,
    registry: Registry | None = None,
) -> optuna.samplers.BaseSampler:
    """The sampler ``config`` names (``auto``: :func:`choose` on ``space`` for a budget of ``trials``).

    ``seed_offset`` is added to a fixed seed: a resumed study or a second worker would otherwise draw
    the same random start-up points again. ``draw`` stands for the space where there is none (a benchmark
    table's own define-by-run function, two objectives): ``hvi`` draws its candidates with it. ``registry``
    is the one the space was loaded with (default: the process-wide one): ``hvi`` reads which objectives
    need training from it.
    """
    if config.name == "auto":
        name = choose(space, trials, objectives=2 if draw is not None else None)
    else:
        name = config.name
    if config.seed is not None and seed_offset:
        config = dataclasses.replace(config, seed=config.seed + seed_offset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "hvi":
            if draw is None and space is None:
                raise ValueError("sampler hvi draws its candidates from the search space: pass the space")
            kwargs: dict[str, Any] = {"seed": config.seed}
            if config.n_startup_trials is not None:
                kwargs["n_startup_trials"] = config.n_startup_trials
            if space is not None:
                kwargs["rung_layout"] = rung_layout(space, registry)
                as_hvi = dataclasses.replace(config, name="hvi")
                kwargs["budget_param"] = budget_param(as_hvi, space)
                if recompresses(as_hvi, space):
                    kwargs["compression_param"] = space_mod.is_compression_param
            return HypervolumeSampler(draw or SpaceDraw(space), **kwargs)  # type: ignore[arg-type]
        if name == "gp":
            kwargs = {"seed": config.seed, "warn_independent_sampling": False}
            if config.n_startup_trials is not None:
                kwargs["n_startup_trials"] = config.n_startup_trials
            return optuna.samplers.GPSampler(**kwargs)
        if name == "tpe":
            kwargs = {"seed": config.seed, "constant_liar": True}
            if config.n_startup_trials is not None:
                kwargs["n_startup_trials"] = config.n_startup_trials
            return optuna.samplers.TPESampler(**kwargs)
        if name == "nsga2":
            kwargs = {"seed": config.seed}
            if config.population_size:
                kwargs["population_size"] = config.population_size
            return optuna.samplers.NSGAIISampler(**kwargs)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=config.seed)
    raise ValueError(f"unknown sampler {name!r}")
