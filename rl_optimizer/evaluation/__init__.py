"""Evaluation: how a learned optimizer compares with traditional ones, in steps to the minimum.

    results = evaluate(policy, ["quadratic", "rosenbrock"], instances=100, steps=1000)
    results.comparison("adam").win_rate
    write_report(results, "eval/")      # report.md, results.csv, PNG plots, TensorBoard

During training, `PeriodicValidation` is the `evaluate_fn` (baselines tuned and run once,
then each call runs only the policy); the final quality-bar check is one more sweep:

    validate = PeriodicValidation(["quadratic"], instances=10, steps=300)
    validate(policy, step, writer)      # {"win_rate_vs_adam": ..., ...}, and TensorBoard
    results = evaluate(policy, QUALITY_BAR_FAMILIES + ("rastrigin", "ackley", "saddle"),
                       instances=40, baselines=("adam", "sgd", "momentum", "rmsprop"))
    results.quality_bar()               # {"passed": ..., "win_rate": ..., "divergences": ...}

The command line, `rl-optimizer evaluate --policy default|PATH --out DIR`, is in `command`.
"""

from __future__ import annotations

from rl_optimizer.evaluation.baselines import (
    BASELINES,
    LR_GRID,
    SCIPY_METHODS,
    TuningResult,
    run_scipy_baseline,
    tune_learning_rate,
    tune_learning_rates,
)
from rl_optimizer.evaluation.metrics import (
    DIVERGENCE_FACTOR,
    EPSILONS,
    HEADLINE_EPS,
    Comparison,
    compare,
    diverged,
    steps_to_gap,
    success_steps,
)
from rl_optimizer.evaluation.report import (
    convergence_figure,
    figure_png,
    headline_table,
    readme_section,
    scalars,
    update_readme,
    write_report,
    write_tensorboard,
)
from rl_optimizer.evaluation.runner import (
    KERAS_OPTIMIZERS,
    LEARNED,
    OptimizerSpec,
    Trajectories,
    run_optimizer,
    run_optimizers,
)
from rl_optimizer.evaluation.sweep import (
    QUALITY_BAR_FAMILIES,
    Benchmark,
    EvaluationResults,
    evaluate,
    family_defaults,
    resolve_families,
)
from rl_optimizer.evaluation.validation import PeriodicValidation

__all__ = [
    "BASELINES", "DIVERGENCE_FACTOR", "EPSILONS", "HEADLINE_EPS", "KERAS_OPTIMIZERS", "LEARNED",
    "LR_GRID", "QUALITY_BAR_FAMILIES", "SCIPY_METHODS", "Benchmark", "Comparison",
    "EvaluationResults", "OptimizerSpec", "PeriodicValidation", "Trajectories", "TuningResult",
    "compare", "convergence_figure", "diverged", "evaluate", "family_defaults", "figure_png",
    "headline_table", "readme_section", "resolve_families", "run_optimizer", "run_optimizers",
    "run_scipy_baseline", "scalars", "steps_to_gap", "success_steps", "tune_learning_rate",
    "tune_learning_rates", "update_readme", "write_report", "write_tensorboard",
]
