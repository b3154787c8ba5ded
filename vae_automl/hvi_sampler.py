"""A two-objective sampler that picks each trial by its optimistic hypervolume improvement over the current front.

Each trial is chosen among candidates drawn from the space itself, through
the define-by-run function the study's trials run, so conditional
parameters (optional compressor slots, each with its own choices) come out
as the space makes them: random points and mutations of the trials on the
front. Each objective is modelled by a
Gaussian process on the encoded parameters (Matérn 5/2, one length scale
per column with a prior centred on ``sqrt(columns) / 2``, fitted by
marginal likelihood), on log scale where the objective's values are all
positive (sizes and losses span orders of magnitude). The candidate whose
lower confidence bounds (mean - 1 sd, an optimistic guess of both
objectives) add the most hypervolume to the front is run. Targets steer it:
only feasible trials form the front, and each target's violation is
modelled too, the improvement weighted by the chance that every target is
met.

Concurrency: trials still running (other workers on the study, Ray's
concurrent trials) count as measured at their predicted values (the
kriging believer, a constant liar with the model's own guess), both on the
front and in the models, so concurrent suggestions spread out; a candidate
with the parameters of a completed, running or stopped trial is never chosen. The
first ``n_startup_trials`` trials are random.

Training length: a searched ``training.epochs`` (``budget_param``) is a budget, not a design choice, while
longer training still pays: no objective charges for it, and with a constant learning rate a shorter run is the
start of a longer one. So every trial, the random start-up included, is drawn at the top of its range as long as
at least half of the completed trials' validation curves (a recompression's, its cached base's, counted once) end
within ``CURVE_TOLERANCE`` of their lowest point
(a trial trained with ``training.patience`` keeps its best epoch's weights, so it counts as ending there; a
shorter run's curve that ends there is no evidence, as it may stop before the model overfits); once most end
above it (the model overfits before the top), epochs are searched like any other parameter. On the
replay of quick.yaml this took the trials to random search's 100-trial hypervolume from 26 to 16 (README).

Trained bases: trials that differ only in their compression share a base,
which the base-model cache trains once (:mod:`vae_automl.trial`). Given
``compression_param`` (which parameters choose the compression), the
candidates include recompressions: a completed trial's base, every other
parameter exactly as it ran, with its compression drawn anew. Such a
candidate costs a compression and a measurement instead of a training, so it
is run whenever its acquisition is at least :data:`REUSE_SHARE` of the best
candidate's. On quick's replay 28 of every 100 trials then reuse a base, at
the same 16 trials to random search's 100-trial hypervolume (README); a
mutation otherwise steps every parameter, so without them 0-4 of 100 did.

Early stopping: a trial stopped at a rung has no final values, but its rung
point (stored by both backends) tells what it would have reached, given a
``rung_layout``: the objectives known before training exactly, the one that
needs training as its rung score plus the median gain that completed trials
made after the same rung, with their spread as extra noise on that point
(:meth:`HypervolumeSampler._stopped_estimates`). So the budget that stopping
frees is not spent again where the stopped trials were.

Measured in ``benchmarks/search_quality.py`` (README, "How the search
decides"); which objective values the configuration fixes before training
(size in bytes) was also tried as known instead of modelled, and as an
extra input of the other objective's model, and neither helped, so every
objective is modelled from the encoded parameters alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from vae_automl import early_stopping
from vae_automl.record import CURVE_ATTR, RECORD_ATTR
from vae_automl.space import base_key, params_key

DrawFunction = Callable[[Any], object]
"""The space as a define-by-run function: calls ``suggest_int/float/categorical`` on the trial it is given."""

BETA = 1.0
"""Standard deviations below the mean that the acquisition takes as each objective's value (minimized)."""
MARGIN = 0.1
"""The reference point: the front's worst value of each objective plus this share of the front's range."""
REUSE_SHARE = 0.8
"""A recompression of a trained base is run when its acquisition is at least this share of the best candidate's:
on quick's replay (10 seeds) 0.8 kept 16 trials to random search's 100-trial hypervolume and made 28 of 100 trials
reuse a base; 1.0 (only when best) made 16 reuse and needed 19 trials; 0.5 made 43 reuse and needed 18; 0.25, 53
and 23."""
CURVE_TOLERANCE = 0.01
"""How far above its lowest point (a share of it) a validation curve may end and still count as falling at its end:
epoch-to-epoch noise; on the quick table 98% of the curves end within 1% of their lowest point at every length."""


def _unit(value: Any, dist: FloatDistribution | IntDistribution) -> float:
    """A numeric parameter on [0, 1] (log scale for a log range)."""
    low, high, v = float(dist.low), float(dist.high), float(value)
    if dist.log:
        low, high, v = math.log(low), math.log(high), math.log(max(v, low))
    return 0.5 if high == low else min(1.0, max(0.0, (v - low) / (high - low)))


def _from_unit(u: float, dist: FloatDistribution | IntDistribution) -> float | int:
    low, high = float(dist.low), float(dist.high)
    v = math.exp(math.log(low) + u * (math.log(high) - math.log(low))) if dist.log else low + u * (high - low)
    if dist.step is not None:  # the distribution's own grid
        v = low + round((v - low) / dist.step) * dist.step
    v = min(high, max(low, v))
    return int(round(v)) if isinstance(dist, IntDistribution) else float(v)


def _top_of(dist: BaseDistribution) -> Any:
    """The top of a numeric range (on its step's grid), the largest of numeric choices, or None (other choices)."""
    if isinstance(dist, CategoricalDistribution):
        numbers = [c for c in dist.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        return max(numbers) if numbers and len(numbers) == len(dist.choices) else None
    assert isinstance(dist, (FloatDistribution, IntDistribution))
    return _from_unit(1.0, dist)


def _holds(dist: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` is one ``dist`` can take (a resumed study may have narrowed a range since it ran)."""
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


class _DrawTrial:
    """What the define-by-run function is handed to make a candidate: answers each ``suggest_*`` at random,
    or near ``parent``'s value (a Gaussian step of ``scale`` on [0, 1]; another category with chance ``flip``);
    the numeric parameter named ``top`` at the top of its range; a parameter in ``fixed`` exactly as ``parent`` has
    it, where the space still holds that value (a recompression's base, whatever its epochs)."""

    def __init__(
        self,
        rng: np.random.Generator,
        parent: Mapping[str, Any] | None = None,
        scale: float = 0.0,
        flip: float = 0.0,
        top: str | None = None,
        fixed: frozenset[str] = frozenset(),
    ) -> None:
        self.rng, self.parent, self.scale, self.flip, self.top = rng, parent or {}, scale, flip, top
        self.fixed = fixed
        self.params: dict[str, Any] = {}
        self.distributions: dict[str, BaseDistribution] = {}

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> float:
        return float(self._take(name, FloatDistribution(low, high, log=log, step=step)))

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return int(self._take(name, IntDistribution(low, high, log=log, step=step)))

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._take(name, CategoricalDistribution(list(choices)))

    def _take(self, name: str, dist: BaseDistribution) -> Any:
        if name in self.params:
            return self.params[name]
        parent = self.parent.get(name)
        if name in self.fixed and name in self.parent and _holds(dist, parent):
            self.params[name], self.distributions[name] = parent, dist
            return parent
        if isinstance(dist, CategoricalDistribution):
            keep = parent is not None and parent in dist.choices and self.rng.random() >= self.flip
            value = parent if keep else dist.choices[int(self.rng.integers(len(dist.choices)))]
            if name == self.top and (top := _top_of(dist)) is not None:
                value = top
        else:
            assert isinstance(dist, (FloatDistribution, IntDistribution))
            if name == self.top:
                u = 1.0
            elif parent is not None and self.scale > 0:
                u = min(1.0, max(0.0, _unit(parent, dist) + self.scale * float(self.rng.normal())))
            else:
                u = float(self.rng.random())
            value = _from_unit(u, dist)
        self.params[name], self.distributions[name] = value, dist
        return value


class _Encoder:
    """Parameters -> feature rows: numeric on [0, 1], categories one-hot; a parameter a point lacks (an
    inactive conditional one) is 0.5, or all zeros for a category (its slot's own category tells which)."""

    def __init__(self) -> None:
        self.dists: dict[str, BaseDistribution] = {}

    def learn(self, distributions: Mapping[str, BaseDistribution]) -> None:
        self.dists.update(distributions)

    def encode(self, points: Sequence[Mapping[str, Any]]) -> np.ndarray:
        columns = []
        for name, dist in self.dists.items():
            if isinstance(dist, CategoricalDistribution):
                for choice in dist.choices:
                    columns.append([1.0 if name in p and p[name] == choice else 0.0 for p in points])
            else:
                assert isinstance(dist, (FloatDistribution, IntDistribution))
                columns.append([_unit(p[name], dist) if name in p else 0.5 for p in points])
        return np.array(columns, dtype=float).T.reshape(len(points), len(columns))


def _matern52(x1: np.ndarray, x2: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The kernel matrix and the scaled squared differences ``(dx / l)**2`` per column."""
    d2 = ((x1[:, None, :] - x2[None, :, :]) / lengths) ** 2
    r = np.sqrt(d2.sum(axis=-1))
    s5r = math.sqrt(5.0) * r
    return (1.0 + s5r + 5.0 / 3.0 * r**2) * np.exp(-s5r), d2


class GaussianProcess:
    """A zero-mean Gaussian process on standardized targets: Matérn 5/2 with one length scale per column, an
    amplitude and a noise variance, fitted by marginal likelihood (L-BFGS with analytic gradients, warm-started
    from the previous fit); the length scales' weak log-normal prior is centred on ``sqrt(columns) / 2``."""

    def __init__(self) -> None:
        self.theta: np.ndarray | None = None

    def fit(self, x: np.ndarray, y: np.ndarray, extra_noise: np.ndarray | None = None) -> None:
        """Fit to targets ``y`` at ``x``; ``extra_noise``: a variance per point (units of ``y`` squared) added to the
        fitted noise, for values only estimated (a stopped trial's, from its rung)."""
        from scipy.optimize import minimize  # deferred: scipy is only needed once a model is fitted

        self.mean, self.std = float(y.mean()), float(y.std()) or 1.0
        z = (y - self.mean) / self.std
        self.extra = np.zeros(len(y)) if extra_noise is None else np.asarray(extra_noise, dtype=float) / self.std**2
        dims = x.shape[1]
        center = math.log(math.sqrt(dims) / 2)
        if self.theta is None or len(self.theta) != dims + 2:  # log length scales, log amplitude, log noise
            self.theta = np.concatenate([np.full(dims, center), [0.0, math.log(1e-2)]])

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            lengths, amp, noise = np.exp(theta[:dims]), math.exp(theta[dims]), math.exp(theta[dims + 1])
            m, d2 = _matern52(x, x, lengths)
            k = amp * m
            k[np.diag_indices_from(k)] += noise + self.extra + 1e-8
            try:
                chol = np.linalg.cholesky(k)
            except np.linalg.LinAlgError:
                return 1e10, np.zeros_like(theta)
            alpha = np.linalg.solve(chol.T, np.linalg.solve(chol, z))
            inverse = np.linalg.solve(chol.T, np.linalg.solve(chol, np.eye(len(z))))
            w = inverse - np.outer(alpha, alpha)
            s5r = math.sqrt(5.0) * np.sqrt(d2.sum(axis=-1))
            dk = amp * 5.0 / 3.0 * (1.0 + s5r) * np.exp(-s5r)  # dK/dlog(l_d) = dk * d2[..., d]
            grad = np.empty_like(theta)
            grad[:dims] = 0.5 * np.einsum("ij,ij,ijd->d", w, dk, d2) + (theta[:dims] - center) / 4.0
            grad[dims] = 0.5 * np.sum(w * m) * amp
            grad[dims + 1] = 0.5 * np.trace(w) * noise
            nll = 0.5 * z @ alpha + np.log(np.diag(chol)).sum() + ((theta[:dims] - center) ** 2).sum() / 8.0
            return float(nll), grad

        bounds = [(math.log(0.02), math.log(20.0))] * dims + [(math.log(1e-2), math.log(10.0)), (math.log(1e-6), 0.0)]
        self.theta = minimize(objective, self.theta, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 60}).x
        self._condition(x, z)

    def _condition(self, x: np.ndarray, z: np.ndarray) -> None:
        assert self.theta is not None
        dims = x.shape[1]
        self.lengths, self.amp, self.noise = np.exp(self.theta[:dims]), math.exp(self.theta[dims]), math.exp(self.theta[dims + 1])
        k = self.amp * _matern52(x, x, self.lengths)[0]
        k[np.diag_indices_from(k)] += self.noise + self.extra + 1e-8
        self.x, self.z = x, z
        self.chol = np.linalg.cholesky(k)
        self.alpha = np.linalg.solve(self.chol.T, np.linalg.solve(self.chol, z))

    def _predict_standardized(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ks = self.amp * _matern52(x, self.x, self.lengths)[0]
        v = np.linalg.solve(self.chol, ks.T)
        return ks @ self.alpha, np.sqrt(np.maximum(self.amp - (v**2).sum(axis=0), 1e-12))

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and standard deviation at ``x``, in the units of the fitted targets."""
        mean, sd = self._predict_standardized(x)
        return self.mean + self.std * mean, self.std * sd

    def believe(self, x: np.ndarray) -> None:
        """Condition on points at their own predicted mean (running trials): the mean stays, the spread there shrinks."""
        if len(x):
            mean, _ = self._predict_standardized(x)
            self.extra = np.concatenate([self.extra, np.zeros(len(x))])
            self._condition(np.vstack([self.x, x]), np.concatenate([self.z, mean]))


def hypervolume_improvement_2d(points: np.ndarray, front: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Hypervolume each of ``points`` (``[n, 2]``, minimized) adds to ``front`` (``[m, 2]``) inside ``reference``.

    The front's dominated region is a staircase: between consecutive front x values its height is the lowest y
    of the front points to their left, so a point's improvement is a sum over those strips.
    """
    front = front[np.all(front < reference, axis=1)] if len(front) else front
    if len(front):
        order = np.argsort(front[:, 0], kind="stable")
        fx, fy = front[order, 0], np.minimum.accumulate(front[order, 1])
        lefts, rights = np.concatenate([[-np.inf], fx]), np.concatenate([fx, [reference[0]]])
        heights = np.concatenate([[reference[1]], fy])
    else:
        lefts, rights, heights = np.array([-np.inf]), np.array([reference[0]]), np.array([reference[1]])
    px, py = points[:, 0:1], points[:, 1:2]
    widths = np.clip(np.minimum(rights, reference[0]) - np.maximum(lefts, px), 0.0, None)
    tall = np.clip(np.minimum(heights, reference[1]) - py, 0.0, None)
    return (widths * tall).sum(axis=1)


def _front_indices(points: np.ndarray) -> list[int]:
    """Indices of the non-dominated rows of ``points`` (minimized)."""
    return [i for i, p in enumerate(points) if not np.any(np.all(points <= p, axis=1) & np.any(points < p, axis=1))]


def _kept_its_best_epoch(trial: FrozenTrial) -> bool:
    """Whether the trial trained with ``training.patience`` (its stored record's config): the trainer then restores
    the weights of its lowest validation loss, so a longer budget could not have made its model worse."""
    record = trial.user_attrs.get(RECORD_ATTR) or {}
    return ((record.get("config") or {}).get("training") or {}).get("patience") is not None


def _took_a_cached_base(trial: FrozenTrial) -> bool:
    """Whether the trial's base came from the base-model cache (its stored record): it carries that base's curve."""
    record = trial.user_attrs.get(RECORD_ATTR) or {}
    return bool((record.get("base") or {}).get("cache_hit"))


def _at_the_top(trial: FrozenTrial, budget_param: str | None) -> bool:
    """Whether ``trial`` trained for the top of ``budget_param``'s range (true where there is none to tell)."""
    if budget_param is None or budget_param not in trial.params or budget_param not in trial.distributions:
        return True
    top = _top_of(trial.distributions[budget_param])
    return top is None or trial.params[budget_param] >= top


def _longer_training_pays(done: Sequence[FrozenTrial], budget_param: str | None = None) -> bool:
    """Whether at least half of the completed trials' validation curves end within ``CURVE_TOLERANCE`` of their
    lowest point (true before any trial has a curve); a trial that kept its best epoch's weights
    (:func:`_kept_its_best_epoch`) ends there whatever its curve did after it.

    A curve that ends near its lowest point tells that training up to the top pays only if it ran to the top of
    ``budget_param``'s range: a shorter one that does is no evidence either way (it may end before the model
    starts to overfit), while one that ends above it shows overfitting before the top whatever its length."""
    evidence = []
    voted: set[tuple[float, ...]] = set()
    for t in done:
        curve = t.user_attrs.get(CURVE_ATTR)
        # a recompression carries the curve of a base a trial here already trained: one vote per base
        if not curve or (_took_a_cached_base(t) and tuple(curve) in voted):
            continue
        voted.add(tuple(curve))
        falling = curve[-1] - min(curve) <= CURVE_TOLERANCE * abs(min(curve)) or _kept_its_best_epoch(t)
        if not falling or _at_the_top(t, budget_param):
            evidence.append(falling)
    return not evidence or 2 * sum(evidence) >= len(evidence)


class HypervolumeSampler(optuna.samplers.BaseSampler):
    """Optimistic hypervolume improvement over candidates drawn from the space (module docstring).

    Args:
        draw: the space as a define-by-run function (``vae_automl.space.suggest`` bound to the space); it
            must ask the same parameters, in the same way, as the study's objective does.
        seed: random seed.
        n_startup_trials: random trials before the models are used (0: from the first completed trial on).
        n_candidates: random candidates each suggestion scores, and as many mutations of the front's trials.
        rung_layout: for each objective, where a stopped trial's rung point (``early_stopping.RUNG_VALUES_ATTR``)
            holds it: 0, the rung's score (a validation loss standing in for an objective that needs training,
            corrected by what completed trials went on to reach from the same rung), k >= 1, the k-th objective
            known before training (exact). None: stopped trials are not modelled.
        budget_param: the parameter that sets how long a trial trains (``training.epochs``): drawn at the top of
            its range while longer training pays (module docstring). None: every parameter is searched.
        compression_param: tells the parameters that choose the compression (``space.is_compression_param``)
            from those that make the trained base: recompressions of trained bases are drawn and preferred
            (module docstring). None: every parameter is stepped alike.
    """

    def __init__(
        self,
        draw: DrawFunction,
        seed: int | None = None,
        n_startup_trials: int = 8,
        n_candidates: int = 256,
        rung_layout: Sequence[int] | None = None,
        budget_param: str | None = None,
        compression_param: Callable[[str], bool] | None = None,
    ) -> None:
        self.draw = draw
        self.compression_param = compression_param
        self.budget_param = budget_param
        self.rung_layout = None if rung_layout is None else tuple(rung_layout)
        self.rng = np.random.default_rng(seed)
        self.n_startup_trials, self.n_candidates = n_startup_trials, n_candidates
        self._fallback = optuna.samplers.RandomSampler(seed=seed)
        self._chosen: dict[int, dict[str, Any]] = {}
        self._models: dict[str, GaussianProcess] = {}
        self._dists: dict[str, BaseDistribution] = {}

    def reseed_rng(self) -> None:
        self.rng = np.random.default_rng()
        self._fallback.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._chosen[trial._trial_id] = self._choose(study, trial)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        chosen = self._chosen.get(trial._trial_id, {})
        if param_name in chosen and _holds(param_distribution, chosen[param_name]):
            return chosen[param_name]
        # a parameter the draw function did not ask (an objective that asks more than the space)
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None) -> None:
        self._chosen.pop(trial._trial_id, None)

    def _one(self, top: str | None, parent: Mapping[str, Any] | None = None, keep_base: bool = False) -> dict[str, Any]:
        if parent is None:
            t = _DrawTrial(self.rng, top=top)
        elif keep_base:  # the parent's base exactly; its compression stepped further, half the categories afresh
            assert self.compression_param is not None
            base = frozenset(name for name in parent if not self.compression_param(name))
            t = _DrawTrial(self.rng, parent, scale=float(self.rng.choice([0.1, 0.25, 0.5])), flip=0.5, top=top, fixed=base)
        else:  # a small, middling or large step, and a fifth of the categories drawn afresh
            t = _DrawTrial(self.rng, parent, scale=float(self.rng.choice([0.03, 0.1, 0.25])), flip=0.2, top=top)
        self.draw(t)
        self._dists.update(t.distributions)
        return t.params

    def _fresh(self, taken: set[tuple[tuple[str, str], ...]], top: str | None) -> dict[str, Any]:
        """A random point no trial has, if one of ``n_candidates`` draws is; with the parameter ``top`` at its top,
        else drawn freely (every point at the top ran, shorter ones are left); else the last draw: the study's
        repeat check decides (a small finite space may be exhausted)."""
        for top_or_none in dict.fromkeys((top, None)):
            for _ in range(self.n_candidates):
                point = self._one(top_or_none)
                if params_key(point) not in taken:
                    return point
        return point

    def _candidates(
        self, parents: Sequence[Mapping[str, Any]], top: str | None, trained: Sequence[Mapping[str, Any]] = ()
    ) -> list[dict[str, Any]]:
        fresh = [self._one(top) for _ in range(self.n_candidates)]
        mutants = [self._one(top, parents[int(self.rng.integers(len(parents)))]) for _ in range(self.n_candidates)]
        # recompressions: any trained base as parent, the front's twice as often (they are in both lists)
        pool = [*parents, *trained]
        reused = [
            self._one(top, pool[int(self.rng.integers(len(pool)))], keep_base=True)
            for _ in range(self.n_candidates if self.compression_param is not None else 0)
        ]
        return fresh + mutants + reused

    def _choose(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
        trials = study.get_trials(deepcopy=False)
        done = [t for t in trials if t.state == TrialState.COMPLETE and t.values is not None]
        pending = [t for t in trials if t.state == TrialState.RUNNING and t.number != trial.number and t.params]
        # a stopped trial (PRUNED: early stopping, or a repeat) is never drawn again; one with rung values is modelled
        stopped = [t for t in trials if t.state == TrialState.PRUNED]
        taken = {params_key(t.params) for t in done + pending + stopped}
        top = self.budget_param if self.budget_param and _longer_training_pays(done, self.budget_param) else None
        # the models need a completed trial to fit: n_startup_trials 0 starts them at the first one
        if len(study.directions) != 2 or len(done) < max(self.n_startup_trials, 1):
            return self._fresh(taken, top)
        signs = np.array([1.0 if d == optuna.study.StudyDirection.MINIMIZE else -1.0 for d in study.directions])
        values = np.array([t.values for t in done], dtype=float)
        logs = [bool(signs[j] > 0 and np.all(values[:, j] > 0)) for j in range(2)]

        def transform(v: np.ndarray) -> np.ndarray:
            out = v * signs
            for j in range(2):
                if logs[j]:
                    out[:, j] = np.log10(v[:, j])
            return out

        y = transform(values)
        feasible = [i for i, t in enumerate(done) if all(c <= 0 for c in (t.constraints or {}).values())]
        front_y = y[feasible] if feasible else np.empty((0, 2))
        parents = [done[feasible[k]].params for k in _front_indices(front_y)] or [t.params for t in done]
        candidates = [c for c in self._candidates(parents, top, [t.params for t in done]) if params_key(c) not in taken]
        if not candidates:  # every candidate already ran
            return self._fresh(taken, top)
        for t in done + pending:
            self._dists.update(t.distributions)
        encoder = _Encoder()
        encoder.learn(self._dists)
        x_done, x_pending, x_cand = (
            encoder.encode([t.params for t in done]),
            encoder.encode([t.params for t in pending]),
            encoder.encode(candidates),
        )
        optimistic, pending_y = np.zeros((len(candidates), 2)), np.zeros((len(pending), 2))
        estimates = self._stopped_estimates(stopped, done, y, signs, logs)
        x_stopped = encoder.encode([t.params for t, _, _ in estimates]) if estimates else np.empty((0, x_done.shape[1]))
        for j in range(2):
            gp = self._models.setdefault(f"objective{j}", GaussianProcess())
            known = [k for k, (_, v, _) in enumerate(estimates) if not np.isnan(v[j])]
            gp.fit(
                np.vstack([x_done, x_stopped[known]]),
                np.concatenate([y[:, j], [estimates[k][1][j] for k in known]]),
                np.concatenate([np.zeros(len(done)), [estimates[k][2][j] for k in known]]),
            )
            if pending:
                pending_y[:, j] = gp.predict(x_pending)[0]
                gp.believe(x_pending)
            mean, sd = gp.predict(x_cand)
            optimistic[:, j] = mean - BETA * sd
        basis = front_y if len(front_y) > 1 else y
        lows, highs = basis.min(axis=0), basis.max(axis=0)
        reference = highs + MARGIN * np.maximum(highs - lows, 1e-9)
        front = np.vstack([front_y, pending_y]) if pending else front_y
        gain = hypervolume_improvement_2d(optimistic, front, reference)
        if not np.any(gain > 0):  # not even optimistically can a candidate improve the front: explore
            seen = np.vstack([x_done, x_pending])
            distance = np.sqrt(((x_cand[:, None, :] - seen[None, :, :]) ** 2).sum(axis=-1)).min(axis=1)
            return candidates[int(np.argmax(distance))]
        # log scale: where no candidate is likely to meet the targets, the likeliest still wins
        score = np.log(gain + 1e-12) + self._log_chance_feasible(done, x_done, x_cand)
        if self.compression_param is not None:
            # the base-model cache trains nothing for these: a compression and a measurement instead of a training
            trained_bases = {base_key(t.params, self.compression_param) for t in done}
            reuse = np.array([base_key(c, self.compression_param) in trained_bases for c in candidates])
            if reuse.any() and score[reuse].max() >= score.max() + math.log(REUSE_SHARE):
                return candidates[int(np.flatnonzero(reuse)[np.argmax(score[reuse])])]
        return candidates[int(np.argmax(score))]

    def _stopped_estimates(
        self, stopped: Sequence[FrozenTrial], done: Sequence[FrozenTrial], y: np.ndarray, signs: np.ndarray, logs: list[bool]
    ) -> list[tuple[FrozenTrial, np.ndarray, np.ndarray]]:
        """What each stopped trial taught, on the models' scale: ``(trial, values, extra noise variances)``, NaN
        for an objective it cannot tell.

        An objective known before training is its rung value, exactly. One that needs training is estimated from
        the rung's score (minimized objectives only, as the score is a loss): the score plus the median of what
        the completed trials that passed the same rung went on to gain (final value less their score there, on
        the model's scale), with the spread of those gains as extra noise; no estimate from fewer than 3 of them.
        """
        if self.rung_layout is None or len(self.rung_layout) != 2:
            return []

        def scale(v: float, j: int) -> float:
            return math.log10(v) if logs[j] else float(signs[j] * v)

        gains: dict[str, list[list[float]]] = {}
        for i, t in enumerate(done):
            for rung, point in (t.user_attrs.get(early_stopping.RUNG_VALUES_ATTR) or {}).items():
                per = gains.setdefault(rung, [[], []])
                for j in range(2):
                    if self.rung_layout[j] == 0 and signs[j] > 0 and (point[0] > 0 or not logs[j]):
                        per[j].append(y[i, j] - scale(point[0], j))
        out = []
        for t in stopped:
            points = t.user_attrs.get(early_stopping.RUNG_VALUES_ATTR) or {}
            rung = str(t.user_attrs.get(early_stopping.STOPPED_AT_ATTR, next(reversed(points), None)))
            if rung not in points:
                continue
            point, values, noise = points[rung], np.full(2, np.nan), np.zeros(2)
            for j, at in enumerate(self.rung_layout):
                if at >= 1 and at < len(point) and (point[at] > 0 or not logs[j]):
                    values[j] = scale(point[at], j)
                elif at == 0 and len(gains.get(rung, [[], []])[j]) >= 3 and (point[0] > 0 or not logs[j]):
                    g = np.array(gains[rung][j])
                    values[j], noise[j] = scale(point[0], j) + float(np.median(g)), float(g.var())
            if not np.all(np.isnan(values)):
                out.append((t, values, noise))
        return out

    def _log_chance_feasible(self, done: Sequence[FrozenTrial], x_done: np.ndarray, x_cand: np.ndarray) -> np.ndarray:
        """Log of the modelled chance that a candidate meets every target (0 where the study has none)."""
        from scipy.stats import norm  # deferred with scipy.optimize: only once a model is fitted

        log_chance = np.zeros(len(x_cand))
        for name in sorted({n for t in done for n in (t.constraints or {})}):
            violation = np.array([float((t.constraints or {}).get(name, 0.0)) for t in done])
            if np.all(violation <= 0):
                continue
            gp = self._models.setdefault(f"target:{name}", GaussianProcess())
            gp.fit(x_done, violation)
            mean, sd = gp.predict(x_cand)
            log_chance += norm.logcdf(-mean / sd)
        return log_chance
