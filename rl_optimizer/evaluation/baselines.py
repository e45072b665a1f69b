"""Traditional optimizers to beat: tf.keras first-order methods with tuned learning rates, and
SciPy's L-BFGS and conjugate gradient as Li & Malik's reference points.

    tuned = tune_learning_rates(["adam", "sgd"], validation_objectives, steps=1000)
    tuned["adam"].learning_rate

A learning rate is tuned per family on validation instances (never the test instances) by a
log grid, widened past its edge while the choice sits there; the criterion is the median steps
to `metrics.HEADLINE_EPS`, ties broken by the median final log gap.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import scipy.optimize

from rl_optimizer.evaluation import metrics
from rl_optimizer.evaluation.runner import (
    KERAS_OPTIMIZERS,
    OptimizerSpec,
    Trajectories,
    run_optimizers,
)
from rl_optimizer.objectives import Objective

LR_GRID: tuple[float, ...] = tuple(float(f"{lr:.3g}") for lr in np.logspace(-4, 0, 9))
"""1e-4 … 1 in half-decades."""

SCIPY_METHODS = {"lbfgs": "L-BFGS-B", "cg": "CG"}
"""Baseline name → `scipy.optimize.minimize` method."""

FIRST_ORDER_BASELINES: tuple[str, ...] = tuple(KERAS_OPTIMIZERS)
BASELINES: tuple[str, ...] = FIRST_ORDER_BASELINES + tuple(SCIPY_METHODS)
"""Every baseline of the evaluation, in report order."""

SCIPY_STOP_GAP = 1e-8
"""SciPy runs stop once the normalized gap is this small (below every ε we score)."""


@dataclasses.dataclass(frozen=True)
class TuningResult:
    """The learning-rate search of one optimizer on one family's validation instances.

    Attributes:
      optimizer: the optimizer's name.
      learning_rate: the chosen learning rate.
      table: per grid point {learning_rate, median_steps, median_final_log_gap, divergences}.
      at_grid_edge: the choice is the smallest or largest learning rate tried, even after
        widening (`extend` rounds used up, or nothing converged there).
    """

    optimizer: str
    learning_rate: float
    table: tuple[dict, ...]
    at_grid_edge: bool


EXTEND_ROUNDS = 2
"""Rounds of widening the grid past an edge where the tuned optimizer still converges."""


def _grid_row(lr: float, runs: Trajectories, eps: float) -> dict:
    return {"learning_rate": lr,
            "median_steps": float(np.median(runs.success_steps(eps))),
            "median_final_log_gap": float(np.median(metrics.log_gap(runs.final_gap))),
            "divergences": int(runs.diverged.sum())}


def _best(rows: dict[float, dict]) -> float:
    # Sorted by lr, so a tie goes to the smallest learning rate.
    return min(sorted(rows), key=lambda lr: (rows[lr]["median_steps"],
                                             rows[lr]["median_final_log_gap"]))


def _beyond_edge(rows: dict[float, dict]) -> list[float]:
    """Two more half-decades past the edge the choice sits on, if it converges there."""
    lrs, best = sorted(rows), _best(rows)
    if len(lrs) < 2 or not np.isfinite(rows[best]["median_steps"]):
        return []
    if best == lrs[-1]:
        return [float(f"{best * 10 ** (k / 2):.3g}") for k in (1, 2)]
    if best == lrs[0]:
        return [float(f"{best / 10 ** (k / 2):.3g}") for k in (1, 2)]
    return []


def tune_learning_rates(names: Sequence[str], validation_objectives: Sequence[Objective],
                        grid: Sequence[float] = LR_GRID, steps: int = 1000,
                        eps: float = metrics.HEADLINE_EPS, extend: int = EXTEND_ROUNDS,
                        progress: Callable[[int], object] | None = None,
                        ) -> dict[str, TuningResult]:
    """Picks each optimizer's learning rate on `validation_objectives`; one batched run per round.

    Args:
      names: `KERAS_OPTIMIZERS` names.
      validation_objectives: instances of one family from `seeds("validation", k)`.
      grid: learning rates to try.
      steps: T of each run.
      eps: the target gap of the criterion (median success steps, then median final log gap;
        a diverged run counts as not converged).
      extend: rounds of widening: while a choice sits on the grid's edge and converges there,
        two more half-decades past that edge are tried.
      progress: called with the steps done after each compiled chunk of the first round.
    """
    if not grid:
        raise ValueError("the learning-rate grid is empty")
    rows: dict[str, dict[float, dict]] = {name: {} for name in names}
    todo = {name: sorted(float(lr) for lr in grid) for name in names}
    for round_ in range(extend + 1):
        pairs = [(name, lr) for name, lrs in todo.items() for lr in lrs]
        if not pairs:
            break
        specs = [OptimizerSpec(name, lr, label=f"{name}@{lr:g}") for name, lr in pairs]
        runs = run_optimizers(specs, validation_objectives, steps,
                              progress=progress if round_ == 0 else None)
        for (name, lr), r in zip(pairs, runs):
            rows[name][lr] = _grid_row(lr, r, eps)
        todo = {name: lrs for name in names if (lrs := _beyond_edge(rows[name]))}
    results = {}
    for name in names:
        lrs, best = sorted(rows[name]), _best(rows[name])
        results[name] = TuningResult(name, best, tuple(rows[name][lr] for lr in lrs),
                                     at_grid_edge=len(lrs) > 1 and best in (lrs[0], lrs[-1]))
    return results


def tune_learning_rate(name: str, validation_objectives: Sequence[Objective],
                       grid: Sequence[float] = LR_GRID, steps: int = 1000,
                       eps: float = metrics.HEADLINE_EPS) -> TuningResult:
    """`tune_learning_rates` for one optimizer."""
    return tune_learning_rates([name], validation_objectives, grid, steps, eps)[name]


class _Recorder:
    """Wraps an objective for SciPy: counts evaluations and remembers recent values by point."""

    def __init__(self, objective: Objective):
        self.objective = objective
        self.nfev = 0
        self._recent: dict[bytes, float] = {}

    def __call__(self, x):
        f, g = self.objective.value_and_grad(x)
        self.nfev += 1
        if len(self._recent) > 64:
            self._recent.clear()
        self._recent[np.asarray(x, np.float64).tobytes()] = f
        return f, g

    def value(self, x) -> float:
        """f(x), from memory when SciPy evaluated x (it always has, for an accepted iterate)."""
        key = np.asarray(x, np.float64).tobytes()
        return self._recent[key] if key in self._recent else self.objective.value(x)


def run_scipy(method: str, objective: Objective, max_iterations: int,
              stop_gap: float = SCIPY_STOP_GAP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One SciPy run, recorded per iteration.

    Returns:
      (gaps [k + 1], evaluations [k + 1], final x) for the k ≤ max_iterations iterations run;
      evaluations[i] counts the value-and-gradient calls made until iterate i was accepted.
    """
    recorder = _Recorder(objective)
    f0, _ = recorder(objective.initial_point())
    scale = f0 - objective.f_star
    gaps, evaluations = [1.0], [recorder.nfev]
    last = [objective.initial_point()]

    def callback(xk):
        gaps.append((recorder.value(xk) - objective.f_star) / scale)
        evaluations.append(recorder.nfev)
        last[0] = np.array(xk)
        if gaps[-1] <= stop_gap:
            raise StopIteration

    options = {"maxiter": max_iterations, "gtol": 0.0}
    if method == "L-BFGS-B":
        options.update(ftol=0.0, maxfun=20 * max_iterations)
    with np.errstate(all="ignore"):
        scipy.optimize.minimize(recorder, objective.initial_point(), jac=True, method=method,
                                callback=callback, options=options)
    return np.array(gaps), np.array(evaluations), last[0]


def run_scipy_baseline(name: str, objectives: Sequence[Objective], steps: int,
                       progress: Callable[[int], object] | None = None) -> Trajectories:
    """A `SCIPY_METHODS` baseline on each objective; a run that stopped early keeps its point."""
    if name not in SCIPY_METHODS:
        raise ValueError(f"unknown SciPy baseline {name!r}; expected one of "
                         f"{sorted(SCIPY_METHODS)}")
    gaps = np.empty((steps + 1, len(objectives)))
    evaluations = np.empty_like(gaps)
    final_x = []
    for i, objective in enumerate(objectives):
        g, e, x = run_scipy(SCIPY_METHODS[name], objective, steps)
        g, e = g[:steps + 1], e[:steps + 1]  # maxiter bounds the callbacks; this makes it sure
        gaps[:, i] = np.concatenate([g, np.full(steps + 1 - len(g), g[-1])])
        evaluations[:, i] = np.concatenate([e, np.full(steps + 1 - len(e), e[-1])])
        final_x.append(x)
        if progress is not None:
            progress(1)
    return Trajectories(name, gaps, tuple(final_x), evaluations=evaluations)
