"""Plots of the evaluation report (issue 12): axes fit the data, a failure is drawn as one."""

import numpy as np

from rl_optimizer.evaluation import EvaluationResults, Trajectories, metrics
from rl_optimizer.evaluation.report import convergence_figure, steps_figure

STEPS, N = 50, 4


def _results() -> EvaluationResults:
    t = np.arange(STEPS + 1)[:, None]
    converging = np.repeat(10.0 ** (-9 * t / STEPS), N, axis=1)  # reaches 1e-9 at the end
    stuck = np.full((STEPS + 1, N), 0.5)
    stuck[0] = 1.0
    x = tuple(np.zeros(2) for _ in range(N))
    runs = {"learned": Trajectories("learned", converging, x),
            "sgd": Trajectories("sgd", stuck, x, learning_rate=0.1)}
    return EvaluationResults({"quadratic": runs}, {}, {"quadratic": list(range(N))}, STEPS)


def test_the_convergence_axis_fits_the_data():
    (ax,) = convergence_figure(_results(), "quadratic").axes
    bottom, top = ax.get_ylim()
    assert -10 < bottom < -9  # the data stop at -9: no empty band down to -16
    assert 0 < top <= np.log10(metrics.DIVERGENCE_FACTOR) + 0.5


def test_a_failing_optimizer_is_marked_in_every_box_plot():
    fig = steps_figure(_results(), "quadratic")
    for ax in fig.axes:
        marks = [t for t in ax.texts if t.get_text() == "0% converged"]
        assert len(marks) == 1  # sgd's slot, not learned's
        assert marks[0].get_position()[0] == 2
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert labels == ["learned\n100%", "sgd\n0%"]
