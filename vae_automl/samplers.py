"""The Optuna sampler of a search: a named one, or ``auto``, the default, chosen by :func:`choose`.

``auto`` is Optuna's TPE with ``constant_liar`` (independent per-parameter
densities, 10 random start-up trials). It was chosen on
``benchmarks/search_quality.py`` (README, "How the search decides"), 10
seeds of 100 trials on two replayed tables. On our conditional quick.yaml
space it reached random search's 100-trial hypervolume in 31 trials, as
fast as any sampler tried (GP 32, NSGA-II 89), with the best hypervolume at
20 trials; Optuna's GPSampler, which OptunaHub's AutoSampler picks below 250
trials, ended higher there at 50 and 100 trials but trailed TPE at every
budget on the public HPOLib table and cost 10-70x more time per trial.
Multivariate/grouped TPE trailed plain TPE on both. :func:`choose` is where
a rule that depends on the space or the budget goes once a benchmark
supports one.

Several workers on one study: TPE's constant liar counts a running trial as
a bad one, so concurrent workers spread out instead of sampling the same
point; Optuna's GPSampler conditions on running trials itself; NSGA-II
breeds from finished generations. TPE, GP and NSGA-II all steer by the
targets' constraint values that trials store (:mod:`vae_automl.constraints`).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import optuna

from vae_automl.config import SamplerConfig, SearchSpace


def choose(space: SearchSpace | None = None, trials: int | None = None) -> str:
    """The sampler ``auto`` stands for (the same on every space and budget benchmarked so far)."""
    return "tpe"


def make_sampler(
    config: SamplerConfig, space: SearchSpace | None = None, trials: int | None = None, seed_offset: int = 0
) -> optuna.samplers.BaseSampler:
    """The sampler ``config`` names (``auto``: :func:`choose` on ``space`` for a budget of ``trials``).

    ``seed_offset`` is added to a fixed seed: a resumed study or a second worker would otherwise draw
    the same random start-up points again.
    """
    name = choose(space, trials) if config.name == "auto" else config.name
    if config.seed is not None and seed_offset:
        config = dataclasses.replace(config, seed=config.seed + seed_offset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "gp":
            kwargs: dict[str, Any] = {"seed": config.seed, "warn_independent_sampling": False}
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
