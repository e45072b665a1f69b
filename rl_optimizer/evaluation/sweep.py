"""The evaluation sweep: a learned policy against tuned baselines on held-out instances.

    benchmark = Benchmark(["quadratic", "rosenbrock"], instances=100, steps=1000)
    results = benchmark.evaluate(policy)        # tunes and runs the baselines once, then cached
    results.comparison("adam").win_rate

`Benchmark` holds fixed instances with tuned baselines, so a training loop can evaluate policy
after policy and pay for the baselines once. Instances come from `seeds("test", n)`, or for
validation during training from `seeds("validation", …)` after the tuning instances; learning
rates are always tuned on the first `tuning_instances` validation seeds, so tuning and scoring
never share an instance.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import threadpoolctl
import tqdm
import yaml

from rl_optimizer.evaluation import metrics
from rl_optimizer.evaluation.baselines import (
    BASELINES,
    LR_GRID,
    SCIPY_METHODS,
    TuningResult,
    run_scipy_baseline,
    tune_learning_rates,
)
from rl_optimizer.evaluation.runner import (
    KERAS_OPTIMIZERS,
    LEARNED,
    OptimizerSpec,
    Trajectories,
    run_optimizers,
)
from rl_optimizer.objectives import Objective, ObjectiveFamily, get_family, list_families, seeds

FAMILIES_FILE = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs",
                             "families.yaml")
"""Every family's default parameters (name → params); the default sweep runs all of them."""

QUALITY_BAR_FAMILIES = ("quadratic", "logistic_regression", "robust_linear_regression",
                        "mlp_classifier", "rosenbrock")
"""Issue 3's quality bar: win rate against tuned Adam pooled over these families."""

QUALITY_BAR_WIN_RATE = 0.6


def family_defaults() -> dict[str, dict]:
    """name → default parameters, from `FAMILIES_FILE` (or every registered family's own)."""
    if not os.path.isfile(FAMILIES_FILE):
        return {name: {} for name in list_families()}
    with open(FAMILIES_FILE) as f:
        return {name: dict(params or {}) for name, params in yaml.safe_load(f).items()}


def resolve_families(families: str | Sequence[str] | Mapping[str, Mapping] | None = None,
                     ) -> dict[str, ObjectiveFamily]:
    """Families by name with their default parameters, or with the parameters given.

    Args:
      families: None (every family in `FAMILIES_FILE`), a comma-separated string, a list of
        names, or a mapping name → parameters.

    Raises:
      ValueError: for an unknown family or parameter, before any work is done.
    """
    defaults = family_defaults()
    if families is None:
        families = list(defaults)
    if isinstance(families, str):
        families = [name.strip() for name in families.split(",") if name.strip()]
    if not isinstance(families, Mapping):
        families = {name: defaults.get(name, {}) for name in families}
    if not families:
        raise ValueError("no families to evaluate")
    return {name: get_family(name, **params) for name, params in families.items()}


def _check_baselines(baselines: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; expected some of {list(BASELINES)}")
    return tuple(b for b in BASELINES if b in baselines)


@dataclasses.dataclass
class EvaluationResults:
    """Runs of a policy and the baselines on each family's instances.

    Attributes:
      runs: family → optimizer label → `Trajectories` (the policy first, then `BASELINES` order).
      tuning: family → optimizer → `TuningResult` of the learning rates tuned in this process.
      seeds: family → the instances' seeds, in run order.
      steps: T, the steps per run.
      policy: the policy's label in `runs`.
      timings: phase → wall seconds.
      extras: anything else a report shows (e.g. the Keras tasks).
    """

    runs: dict[str, dict[str, Trajectories]]
    tuning: dict[str, dict[str, TuningResult]]
    seeds: dict[str, list[int]]
    steps: int
    policy: str = LEARNED
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    extras: dict = dataclasses.field(default_factory=dict)

    @property
    def families(self) -> list[str]:
        return list(self.runs)

    def baselines(self, family: str) -> list[str]:
        return [name for name in self.runs[family] if name != self.policy]

    def learning_rates(self, family: str) -> dict[str, float]:
        return {name: r.learning_rate for name, r in self.runs[family].items()
                if r.learning_rate is not None}

    def comparisons(self, family: str, eps: float = metrics.HEADLINE_EPS,
                    ) -> dict[str, metrics.Comparison]:
        """The policy against each baseline on `family` (see `metrics.compare`)."""
        mine = self.runs[family][self.policy].success_steps(eps)
        return {b: metrics.compare(mine, self.runs[family][b].success_steps(eps), self.steps)
                for b in self.baselines(family)}

    def comparison(self, baseline: str, families: Sequence[str] | None = None,
                   eps: float = metrics.HEADLINE_EPS) -> metrics.Comparison:
        """The policy against `baseline`, instances pooled over `families` (default: all)."""
        families = [f for f in (families or self.families) if f in self.runs]
        if not families:
            raise ValueError("none of the requested families was evaluated")
        mine = np.concatenate([self.runs[f][self.policy].success_steps(eps) for f in families])
        theirs = np.concatenate([self.runs[f][baseline].success_steps(eps) for f in families])
        return metrics.compare(mine, theirs, self.steps)

    def summary(self, family: str) -> list[dict]:
        """Per optimizer: median steps and success rate per ε, divergences, basin rate, lr."""
        out = []
        for name, runs in self.runs[family].items():
            row = {"optimizer": name, "learning_rate": runs.learning_rate, "n": runs.n}
            for eps in metrics.EPSILONS:
                success = runs.success_steps(eps)
                row[f"median_steps_{eps:g}"] = float(np.median(success))
                row[f"success_{eps:g}"] = float(np.mean(np.isfinite(success)))
            row["median_evaluations"] = float(np.median(
                np.where(runs.diverged, np.inf, runs.evaluations_to(metrics.HEADLINE_EPS))))
            row["median_final_gap"] = float(np.median(runs.final_gap))
            row["divergences"] = int(runs.diverged.sum())
            row["global_basin"] = (None if runs.in_global_basin is None
                                   else float(np.mean(runs.in_global_basin)))
            out.append(row)
        return out

    def rows(self) -> list[dict]:
        """The raw results: one dict per (family, optimizer, instance)."""
        out = []
        for family, by_optimizer in self.runs.items():
            for name, runs in by_optimizer.items():
                steps = {eps: runs.steps_to(eps) for eps in metrics.EPSILONS}
                evals = {eps: runs.evaluations_to(eps) for eps in metrics.EPSILONS}
                for i in range(runs.n):
                    row = {"family": family, "optimizer": name, "instance": i,
                           "seed": self.seeds[family][i], "learning_rate": runs.learning_rate}
                    for eps in metrics.EPSILONS:
                        row[f"steps_to_{eps:g}"] = _int_or_none(steps[eps][i])
                    for eps in metrics.EPSILONS:
                        row[f"evaluations_to_{eps:g}"] = _int_or_none(evals[eps][i])
                    row["final_gap"] = float(runs.final_gap[i])
                    row["diverged"] = bool(runs.diverged[i])
                    row["in_global_basin"] = (None if runs.in_global_basin is None
                                              else bool(runs.in_global_basin[i]))
                    out.append(row)
        return out

    def quality_bar(self, baseline: str = "adam", families: Sequence[str] = QUALITY_BAR_FAMILIES,
                    target: float = QUALITY_BAR_WIN_RATE) -> dict:
        """Issue 3's bar: win rate ≥ target against `baseline` pooled over `families`, and zero
        divergences of the policy there. Families not evaluated are left out (and listed)."""
        present = [f for f in families if f in self.runs]
        comparison = self.comparison(baseline, present) if present else None
        divergences = int(sum(self.runs[f][self.policy].diverged.sum() for f in present))
        win_rate = comparison.win_rate if comparison else float("nan")
        # Multimodal families: success is ending in the global basin, policy vs baseline.
        basins = {f: {name: float(np.mean(self.runs[f][name].in_global_basin))
                      for name in (self.policy, baseline)}
                  for f in self.families if self.runs[f][self.policy].in_global_basin is not None
                  and baseline in self.runs[f]}
        return {"baseline": baseline, "families": present,
                "missing": [f for f in families if f not in self.runs],
                "win_rate": win_rate, "median_steps_ratio":
                comparison.median_steps_ratio if comparison else float("nan"),
                "divergences": divergences, "global_basin": basins, "target": target,
                "passed": bool(win_rate >= target and divergences == 0 and len(present) ==
                               len(families))}


def _int_or_none(steps: float) -> int | None:
    return int(steps) if np.isfinite(steps) else None


class _Progress:
    """One tqdm bar over a whole sweep, counted in instances: one instance sampled, or run by
    one optimizer (a learning rate of a tuning grid being an optimizer of its own)."""

    def __init__(self, total: int, enabled: bool):
        self.bar = tqdm.tqdm(total=total, disable=not enabled, unit="instance",
                             dynamic_ncols=True)

    def phase(self, description: str, instances: int, steps: int | None = None,
              ) -> Callable[[int], None]:
        """A callback for a stage over `instances`, called with the instances done, or with
        `steps`: with the steps done by all of them together (one compiled batch)."""
        self.bar.set_description(description)
        reported, counted = [0], [0]

        def tick(n: int) -> None:
            reported[0] += n
            done = reported[0] * instances // steps if steps else reported[0]
            done = min(done, instances)
            self.bar.update(done - counted[0])
            counted[0] = done

        return tick

    def close(self):
        self.bar.close()


class Benchmark:
    """Fixed instances of some families, with baselines tuned and run once.

    Args:
      families: as `resolve_families` takes them (default: every family).
      instances: instances per family.
      steps: T, steps per run (SciPy: iterations).
      baselines: names from `BASELINES`.
      split: "test" (`seeds("test", instances)`), or "validation" for checks during training
        (the validation seeds after the tuning ones).
      tuning_instances: validation instances the learning rates are tuned on.
      tuned_lrs: family → optimizer → learning rate, skipping those searches.
      grid: the learning-rate grid.
      eps: the normalized gap learning rates are tuned for.
      progress: show a tqdm bar.
    """

    def __init__(self, families=None, instances: int = 100, steps: int = 1000, *,
                 baselines: Sequence[str] = BASELINES, split: str = "test",
                 tuning_instances: int = 16,
                 tuned_lrs: Mapping[str, Mapping[str, float]] | None = None,
                 grid: Sequence[float] = LR_GRID, eps: float = metrics.HEADLINE_EPS,
                 progress: bool = False):
        self.families = resolve_families(families)
        self.baselines = _check_baselines(baselines)
        if split not in ("test", "validation"):
            raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
        if instances < 1 or steps < 1 or tuning_instances < 1:
            raise ValueError(f"instances, steps and tuning_instances must be >= 1, got "
                             f"{instances}, {steps}, {tuning_instances}")
        self.instances, self.steps, self.split = instances, steps, split
        self.tuning_instances, self.grid, self.progress = tuning_instances, tuple(grid), progress
        self.eps = eps
        self.tuned_lrs = {f: dict((tuned_lrs or {}).get(f, {})) for f in self.families}
        self.tuning: dict[str, dict[str, TuningResult]] = {f: {} for f in self.families}
        self.timings: dict[str, float] = {}
        self._objectives: dict[str, list[Objective]] = {}
        self._baseline_runs: dict[str, dict[str, Trajectories]] = {}

    def seeds(self, family: str) -> list[int]:
        del family  # every family uses the same seeds; instances differ by family
        if self.split == "test":
            return seeds("test", self.instances)
        return seeds("validation", self.tuning_instances + self.instances)[self.tuning_instances:]

    def objectives(self, family: str, progress: Callable[[int], None] | None = None,
                   ) -> list[Objective]:
        """The instances runs are scored on (sampled once; `progress(1)` after each)."""
        if family not in self._objectives:
            with self._timed("sampling"):
                self._objectives[family] = self._sample(family, self.seeds(family), progress)
        return self._objectives[family]

    def _sample(self, family: str, seeds_: Sequence[int], progress) -> list[Objective]:
        objectives = []
        for seed in seeds_:
            objectives.append(self.families[family].sample(seed))
            if progress is not None:
                progress(1)
        return objectives

    @contextlib.contextmanager
    def _timed(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] = self.timings.get(phase, 0.0) + time.perf_counter() - start

    def _untuned(self, family: str) -> list[str]:
        return [b for b in self.baselines
                if b in KERAS_OPTIMIZERS and b not in self.tuned_lrs[family]]

    def _instances(self, family: str) -> int:
        """What `evaluate` counts on its bar for `family` (see `_Progress`)."""
        total = self.instances * (family not in self._objectives)  # sampling
        total += self.instances  # the policy
        if family in self._baseline_runs:
            return total
        untuned = self._untuned(family)
        if untuned:
            total += self.tuning_instances * (1 + len(untuned) * len(self.grid))
        return total + self.instances * len(self.baselines)

    def _tune(self, family: str, progress: _Progress) -> None:
        untuned = self._untuned(family)
        if not untuned:
            return
        with self._timed("sampling"):
            tick = progress.phase(f"{family}: sampling tuning instances", self.tuning_instances)
            objectives = self._sample(family, seeds("validation", self.tuning_instances), tick)
        with self._timed("tuning"):
            # The grid's first round is counted; widening rounds past an edge are extra.
            tick = progress.phase(f"{family}: tuning lr", self.tuning_instances * len(untuned)
                                  * len(self.grid), self.steps)
            found = tune_learning_rates(untuned, objectives, self.grid, self.steps, self.eps,
                                        progress=tick)
        self.tuning[family].update(found)
        self.tuned_lrs[family].update({name: r.learning_rate for name, r in found.items()})

    def baseline_runs(self, family: str, progress: _Progress | None = None,
                      ) -> dict[str, Trajectories]:
        """Every baseline's runs on `family` (tuned and run on first use, then cached)."""
        if family in self._baseline_runs:
            return self._baseline_runs[family]
        own = progress is None
        progress = progress or _Progress(self._instances(family) - self.instances,
                                         self.progress)
        objectives = self.objectives(family, progress.phase(f"{family}: sampling",
                                                            self.instances))
        self._tune(family, progress)
        keras = [OptimizerSpec(b, self.tuned_lrs[family][b]) for b in self.baselines
                 if b in KERAS_OPTIMIZERS]
        runs = {}
        if keras:
            with self._timed("baselines"):
                tick = progress.phase(f"{family}: baselines", len(keras) * len(objectives),
                                      self.steps)
                runs.update((r.optimizer, r) for r in run_optimizers(
                    keras, objectives, self.steps, progress=tick))
        for name in (b for b in self.baselines if b in SCIPY_METHODS):
            # SciPy's BLAS calls are on tiny matrices: more threads only contend with TF's.
            with self._timed("scipy"), threadpoolctl.threadpool_limits(1, user_api="blas"):
                tick = progress.phase(f"{family}: {name}", len(objectives))
                runs[name] = run_scipy_baseline(name, objectives, self.steps, progress=tick)
        self._baseline_runs[family] = {b: self._with_basins(family, runs[b])
                                       for b in self.baselines}
        if own:
            progress.close()
        return self._baseline_runs[family]

    def _with_basins(self, family: str, runs: Trajectories) -> Trajectories:
        in_basin = getattr(self.families[family], "in_global_basin", None)
        if in_basin is None:
            return runs
        objectives = self.objectives(family)
        return dataclasses.replace(runs, in_global_basin=np.array(
            [in_basin(o, x) for o, x in zip(objectives, runs.final_x)]))

    def evaluate(self, policy, label: str = LEARNED) -> EvaluationResults:
        """The policy (a `LearnedPolicy`) and every baseline on every family."""
        if label in self.baselines:
            raise ValueError(f"the policy's label {label!r} is a baseline's name")
        start, before = time.perf_counter(), dict(self.timings)
        progress = _Progress(sum(self._instances(f) for f in self.families), self.progress)
        runs = {}
        try:
            for family in self.families:
                baselines = self.baseline_runs(family, progress)
                with self._timed("policy"):
                    tick = progress.phase(f"{family}: {label}", self.instances, self.steps)
                    mine = run_optimizers([OptimizerSpec(LEARNED, policy=policy, label=label)],
                                          self.objectives(family), self.steps, progress=tick)[0]
                runs[family] = {label: self._with_basins(family, mine), **baselines}
        finally:
            progress.close()
        # This call's time per phase: cached baselines cost nothing the second time.
        timings = {k: v - before.get(k, 0.0) for k, v in self.timings.items()
                   if v > before.get(k, 0.0)}
        timings["total"] = time.perf_counter() - start
        return EvaluationResults(runs, {f: dict(t) for f, t in self.tuning.items()},
                                 {f: self.seeds(f) for f in self.families}, self.steps,
                                 policy=label, timings=timings)


def evaluate(policy, families=None, instances: int = 100, steps: int = 1000,
             tuned_lrs: Mapping[str, Mapping[str, float]] | None = None,
             **kwargs) -> EvaluationResults:
    """One sweep: `Benchmark(families, instances, steps, ...).evaluate(policy)`.

    Args:
      policy: a `LearnedPolicy`, "default" or the path of an exported policy.
      families, instances, steps, tuned_lrs, kwargs: see `Benchmark`.
    """
    from rl_optimizer.policy import load_policy

    policy = load_policy(policy)  # a bad path fails here, before any work
    return Benchmark(families, instances, steps, tuned_lrs=tuned_lrs, **kwargs).evaluate(policy)
