"""rl_optimizer/benchmarks: every module runs at its smallest setting and prints its figures.

Each module found by pkgutil runs as `python -m rl_optimizer.benchmarks.NAME --quick` in a
process of its own (as a user runs it), so a benchmark that rots, like the serving one that
once crashed on a changed helper, fails here. Figures are not checked: the machine is shared.
"""

import os
import pkgutil
import re
import subprocess
import sys

import pytest

import rl_optimizer.benchmarks

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(m.name for m in pkgutil.iter_modules(rl_optimizer.benchmarks.__path__))
FIGURE = re.compile(r"^\w+: \S", re.MULTILINE)


def test_benchmarks_are_found():
    assert {"serving", "keras_step"} <= set(MODULES)


@pytest.mark.slow
@pytest.mark.parametrize("name", MODULES)
def test_benchmark_runs_quick(name):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]))
    result = subprocess.run([sys.executable, "-m", f"rl_optimizer.benchmarks.{name}", "--quick"],
                            capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert FIGURE.search(result.stdout), f"no `name: value` line in:\n{result.stdout[-3000:]}"


@pytest.mark.slow
def test_keras_holdout_compares_with_tuned_adam(capsys):
    from rl_optimizer.benchmarks import keras_holdout

    keras_holdout.main(["--quick", "--tuned"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.search(r"Adam\(tuned [0-9.e-]+\) \S+: (win|loss)$", lines[0]), lines
    assert re.fullmatch(r"wins_vs_adam_tuned: [01]/1", lines[-2]), lines
    assert re.fullmatch(r"wins_vs_adam_default: [01]/1", lines[-1]), lines


def test_keras_validation_tasks_are_neither_the_suite_nor_the_holdout():
    """Choosing between policies on them must not peek at the test: other names and data;
    each task's model takes its data and gives a finite loss."""
    import numpy as np

    from rl_optimizer.benchmarks import keras_holdout, keras_validation
    from rl_optimizer.evaluation import keras_tasks

    validation = keras_validation.TASKS
    assert len(validation) >= 8
    assert not set(validation) & (set(keras_tasks.TASKS) | set(keras_holdout.TASKS))
    used = {task.data for task in [*keras_tasks.TASKS.values(), *keras_holdout.TASKS.values()]}
    for task in validation.values():
        assert task.data not in used, task.name
        x, y, _, _ = task.data(0)
        loss = task.loss()(y[:4], task.model()(x[:4]))
        assert np.isfinite(loss.numpy()), task.name


def test_a_classifier_left_at_chance_is_marked_where_adam_trained_it():
    """Test accuracy within 0.02 of the majority class's share, where `Adam()`'s is above it;
    never for a regression's metric."""
    import numpy as np

    from rl_optimizer.benchmarks import keras_holdout, keras_validation

    task = keras_validation.TASKS["raw_features_mlp"]
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 3, 3, 3])  # majority share 0.4
    data = (None, None, None, labels)
    at_chance = keras_holdout._at_chance
    assert at_chance(task, data, {"test_metric": 0.41}, {"test_metric": 0.6})
    assert not at_chance(task, data, {"test_metric": 0.45}, {"test_metric": 0.6})
    assert not at_chance(task, data, {"test_metric": 0.41}, {"test_metric": 0.41})
    regression = keras_validation.TASKS["friedman_regression"]
    assert not at_chance(regression, data, {"test_metric": 0.0}, {"test_metric": 1.0})
