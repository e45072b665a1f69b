"""Tests for rl_optimizer/evaluation: metrics, runner, baselines, sweep, report, CLI."""

import argparse
import csv
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

from rl_optimizer import LearnedPolicy, features
from rl_optimizer.evaluation import (
    KERAS_OPTIMIZERS,
    Benchmark,
    OptimizerSpec,
    PeriodicValidation,
    compare,
    diverged,
    keras_tasks,
    run_optimizer,
    run_optimizers,
    steps_to_gap,
    success_steps,
    tune_learning_rates,
    update_readme,
)
from rl_optimizer.evaluation import baselines as baselines_lib
from rl_optimizer.objectives import get_family, seeds

inf = np.inf


@pytest.fixture(scope="module")
def quadratics():
    return [get_family("quadratic", dim=4, condition=10.0).sample(s) for s in seeds("test", 3)]


# --- metrics ---------------------------------------------------------------------------------


def test_steps_to_gap_first_crossing_and_not_converged():
    gaps = np.array([[1.0, 1.0, 1.0],
                     [0.5, np.nan, 0.2],
                     [1e-3, 1e-4, 0.2],
                     [1e-4, 1e-5, 0.2]])
    np.testing.assert_array_equal(steps_to_gap(gaps, 1e-3), [2, 2, inf])
    np.testing.assert_array_equal(steps_to_gap(gaps, 0.5), [1, 2, 1])
    assert steps_to_gap(gaps[:, 0], 1e-4) == 3


def test_divergence_is_nonfinite_or_ten_times_the_start():
    gaps = np.array([[1.0, 1.0, 1.0, 1.0],
                     [10.0, 10.5, np.nan, np.inf],
                     [0.1, 0.1, 0.1, 0.1]])
    np.testing.assert_array_equal(diverged(gaps), [False, True, True, True])
    # A run that touched ε and then blew up does not count as a success.
    np.testing.assert_array_equal(success_steps(np.array([[1.0], [1e-4], [20.0]]), 1e-3), [inf])


def test_win_rate_semantics():
    policy = [10, 10, inf, 5, inf]
    baseline = [20, inf, 5, 5, inf]  # win, win, loss, tie, tie (both fail)
    c = compare(policy, baseline, max_steps=100)
    assert (c.wins, c.ties, c.losses, c.n) == (2, 2, 1, 5)
    assert c.win_rate == pytest.approx(0.4)
    # Ratios, failures counted as T + 1 = 101: 0.5, 10/101, 101/5, 1, 1 → median 1.
    assert c.median_steps_ratio == pytest.approx(1.0)
    with pytest.raises(ValueError, match="equal-length"):
        compare([1, 2], [1], max_steps=10)


# --- runner and baselines --------------------------------------------------------------------


def test_keras_sgd_in_the_compiled_loop_is_gradient_descent(quadratics):
    # Keras keeps the learning rate in float32: 2⁻⁴ is exact there, so float64 results agree.
    runs = run_optimizer(OptimizerSpec("sgd", 0.0625), quadratics, steps=7, chunk=3)
    assert runs.gaps.shape == (8, 3)
    for objective, x_final, gaps in zip(quadratics, runs.final_x, runs.gaps.T):
        x = objective.initial_point()
        for _ in range(7):
            x = x - 0.0625 * objective.value_and_grad(x)[1]
        np.testing.assert_allclose(x_final, x, rtol=1e-10)
        np.testing.assert_allclose(gaps[-1], objective.normalized_gap(objective.value(x)))
    np.testing.assert_array_equal(runs.gaps[0], 1.0)


def test_every_keras_optimizer_in_the_compiled_loop_matches_eager_keras(quadratics):
    objective = quadratics[0]
    names = list(KERAS_OPTIMIZERS)
    runs = run_optimizers([OptimizerSpec(n, 0.03) for n in names], [objective], steps=5, chunk=2)
    for name, r in zip(names, runs):
        x = tf.Variable(objective.initial_point())
        optimizer = KERAS_OPTIMIZERS[name](0.03)
        for _ in range(5):
            optimizer.apply_gradients([(tf.constant(objective.value_and_grad(x.numpy())[1]), x)])
        np.testing.assert_allclose(r.final_x[0], x.numpy(), rtol=1e-12, err_msg=name)


def test_learned_policy_run_matches_policy_step(quadratics):
    policy = LearnedPolicy.random(seed=3)
    runs = run_optimizer(OptimizerSpec("learned", policy=policy), quadratics[:1], steps=4)
    objective = quadratics[0]
    x, state = objective.initial_point(), features.init_state([objective.dim])
    for _ in range(4):
        g = objective.value_and_grad(x)[1]
        update, state = policy.step(tf.constant(g, tf.float32), state)
        x = x + update.numpy().astype(np.float64)
    np.testing.assert_allclose(runs.final_x[0], x, rtol=1e-6)


def test_tuning_picks_the_obviously_best_learning_rate():
    # f = ½‖x − x*‖²: SGD with lr 1 lands on x* in one step, lr 3 diverges, smaller ones crawl.
    toy = [get_family("quadratic", dim=3, condition=1.0).sample(s) for s in seeds("validation", 2)]
    result = tune_learning_rates(["sgd"], toy, grid=[0.01, 0.1, 1.0, 3.0], steps=20)["sgd"]
    assert result.learning_rate == 1.0
    by_lr = {row["learning_rate"]: row for row in result.table}
    assert by_lr[1.0]["median_steps"] == 1
    assert by_lr[3.0]["divergences"] == 2 and by_lr[3.0]["median_steps"] == inf
    assert not result.at_grid_edge
    assert len(result.table) == 4  # interior choice: the grid is not widened


def test_tuning_widens_the_grid_past_an_edge_that_converges():
    toy = [get_family("quadratic", dim=3, condition=1.0).sample(s) for s in seeds("validation", 2)]
    result = tune_learning_rates(["sgd"], toy, grid=[0.01, 0.1], steps=40)["sgd"]
    assert result.learning_rate == 1.0
    assert [row["learning_rate"] for row in result.table] == [0.01, 0.1, 0.316, 1.0, 3.16, 10.0]


def test_scipy_baselines_report_iterations_and_evaluations(quadratics):
    for name in ("lbfgs", "cg"):
        runs = baselines_lib.run_scipy_baseline(name, quadratics, steps=50)
        assert np.all(np.isfinite(runs.steps_to(1e-6)))
        assert np.all(runs.evaluations_to(1e-6) >= runs.steps_to(1e-6) + 1)
        assert np.all(runs.final_gap <= baselines_lib.SCIPY_STOP_GAP)


def test_benchmark_runs_baselines_once_and_keeps_splits_apart():
    benchmark = Benchmark(["quadratic"], instances=2, steps=20, baselines=["adam"],
                          split="validation", tuning_instances=3,
                          tuned_lrs={"quadratic": {"adam": 0.1}})
    first = benchmark.evaluate(LearnedPolicy.random(seed=0))
    second = benchmark.evaluate(LearnedPolicy.random(seed=1), label="other")
    assert second.runs["quadratic"]["adam"] is first.runs["quadratic"]["adam"]
    assert second.runs["quadratic"]["adam"].learning_rate == 0.1
    assert not set(benchmark.seeds("quadratic")) & set(seeds("validation", 3))
    assert 0.0 <= second.comparison("adam").win_rate <= 1.0


def test_periodic_validation_for_the_training_loop(tmp_path):
    validate = PeriodicValidation(["quadratic", "rastrigin"], instances=2, steps=20,
                                  tuning_instances=2)
    writer = tf.summary.create_file_writer(str(tmp_path))
    first = validate(LearnedPolicy.random(seed=0), step=1, writer=writer)
    assert set(first) == {"win_rate_vs_adam", "median_steps_ratio_vs_adam",
                          "final_win_rate_vs_adam", "success_rate", "divergences"}
    assert 0.0 <= first["final_win_rate_vs_adam"] <= 1.0
    adam = validate.benchmark.baseline_runs("quadratic")["adam"]
    validate(LearnedPolicy.random(seed=1), step=2, writer=writer)
    assert validate.benchmark.baseline_runs("quadratic")["adam"] is adam  # tuned and run once
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path))
    bar = validate.last.quality_bar()
    assert not bar["passed"] and "rosenbrock" in bar["missing"]
    assert set(bar["global_basin"]) == {"rastrigin"}


def test_periodic_validation_races_the_analytic_families_to_a_deeper_gap():
    validate = PeriodicValidation(["quadratic", "teacher_mlp"], instances=2, steps=20,
                                  tuning_instances=2, images=False, deep_eps=1e-6,
                                  deep_steps=30)
    assert list(validate.deep_benchmark.families) == ["quadratic"]  # no minibatch family
    summary = validate(LearnedPolicy.random(seed=0), step=0)
    assert 0.0 <= summary["deep_win_rate_vs_nesterov"] <= 1.0
    assert "network_final_win_rate_vs_adam" in summary
    deep = validate.last_deep
    assert deep.runs["quadratic"]["nesterov"].steps == deep.runs["quadratic"][deep.policy].steps \
        == 30
    assert validate.last.runs["quadratic"]["adam"].steps == 20
    with pytest.raises(ValueError, match="deep_eps needs a family without minibatches"):
        PeriodicValidation(["teacher_mlp"], instances=1, steps=5, deep_eps=1e-6)


# --- command line ----------------------------------------------------------------------------


def _evaluate_cli(argv):
    """`rl-optimizer evaluate ARGV` through cli.main when registered, else the module itself."""
    from rl_optimizer import cli
    from rl_optimizer.evaluation import command

    if "evaluate" in cli.COMMANDS:
        return cli.main(["evaluate", *argv])
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    try:
        return command.run_command(parser.parse_args(argv))
    except ValueError as e:
        print(f"rl-optimizer evaluate: error: {e}", file=sys.stderr)
        return 2


def _fake_keras_tasks(policy, tasks, epochs, progress):
    assert list(tasks) == ["wine_mlp"]
    progress(1)
    run = {"loss": [1.0, 0.5], "final_loss": 0.5, "test_metric": 0.8, "diverged": False}
    runs = {"learned": run, "adam_default": run,
            "adam_tuned": {**run, "learning_rate": 1e-3, "tuning": {}},
            "momentum_tuned": {**run, "learning_rate": 1e-2, "tuning": {}}}
    return {"wine_mlp": {"epochs": epochs, "description": "wine", "metric": "accuracy",
                         "runs": runs, "wins": {k: False for k in runs if k != "learned"},
                         "speedup_vs_adam_tuned": 1.0}}


def test_cli_end_to_end_writes_report_csv_plots_and_tensorboard(tmp_path, exported_policy,
                                                                monkeypatch):
    monkeypatch.setattr(keras_tasks, "run_keras_tasks", _fake_keras_tasks)  # trained below
    out, readme = tmp_path / "eval", tmp_path / "README.md"
    readme.write_text("# Project\n\nIntro.\n")
    rc = _evaluate_cli(["--policy", exported_policy, "--families", "quadratic,rastrigin",
                        "--instances", "3", "--steps", "50", "--tuning-instances", "2",
                        "--keras-tasks", "wine_mlp", "--keras-epochs", "2", "--out", str(out),
                        "--readme", str(readme)])
    assert rc == 0
    report = (out / "report.md").read_text()
    for text in ("## quadratic", "## rastrigin", "vs adam", "global basin", "Quality bar",
                 "## Keras suite"):
        assert text in report
    assert (out / "keras_suite.png").exists()
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 9 * 3
    assert {r["optimizer"] for r in rows} == {"learned", *baselines_lib.BASELINES}
    assert {r["in_global_basin"] for r in rows if r["family"] == "rastrigin"} <= {"True", "False"}
    for family in ("quadratic", "rastrigin"):
        for kind in ("curves", "steps"):
            assert (out / f"{kind}_{family}.png").read_bytes()[:4] == b"\x89PNG"
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(out / "tensorboard"))
    section = (out / "readme_results.md").read_text()
    assert "## Results" in section and "rl-optimizer evaluate --policy" in section
    update_readme(str(readme), section)  # regenerating replaces, never duplicates
    text = readme.read_text()
    assert text.startswith("# Project\n\nIntro.\n") and text.count("## Results") == 1


def test_cli_unknown_family_fails_before_any_work(tmp_path, capsys, exported_policy):
    rc = _evaluate_cli(["--policy", exported_policy, "--families", "quadratic,nonsense",
                        "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "unknown objective family 'nonsense'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_path_that_is_not_a_policy_fails_before_any_work(tmp_path, capsys):
    not_a_policy = tmp_path / "not_a_policy"
    not_a_policy.mkdir()
    (not_a_policy / "weights.txt").write_text("hello")
    rc = _evaluate_cli(["--policy", str(not_a_policy), "--out", str(tmp_path / "out")])
    assert rc == 2
    assert "is not a policy" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


# --- Keras tasks -----------------------------------------------------------------------------


def test_keras_tasks_skip_cleanly_without_the_learned_optimizer(monkeypatch):
    monkeypatch.setitem(sys.modules, "rl_optimizer.keras_optimizer", None)
    result = keras_tasks.run_keras_tasks(LearnedPolicy.random(), epochs=1)
    assert "LearnedOptimizer is not importable" in result["skipped"]


def test_a_failing_keras_part_keeps_the_sweep(monkeypatch, capsys):
    from rl_optimizer.evaluation import EvaluationResults, command

    def boom(policy, **kwargs):
        raise RuntimeError("in user code:\n\n    boom")

    monkeypatch.setattr(keras_tasks, "run_keras_tasks", boom)
    results = EvaluationResults({}, {}, {}, steps=1, timings={"total": 1.0})
    assert not command._keras_tasks(results, policy=None, epochs=1)
    assert "(RuntimeError: boom)" in results.extras["keras"]["skipped"]
    assert "Traceback" in capsys.readouterr().err


def test_keras_suite_runs_learned_adam_and_momentum_and_scores_them():
    policy = LearnedPolicy.random(hidden=(4,), seed=0)
    result = keras_tasks.run_keras_tasks(policy, tasks=["wine_mlp", "tokens_embedding"],
                                         epochs=2, adam_grid=[1e-3, 1e-2],
                                         momentum_grid=[1e-2, 1e-1])
    assert set(result) == {"wine_mlp", "tokens_embedding"}
    for task in result.values():
        runs = task["runs"]
        assert set(runs) == {"learned", "adam_default", "adam_tuned", "momentum_tuned"}
        assert runs["adam_tuned"]["learning_rate"] in (1e-3, 1e-2)
        assert runs["momentum_tuned"]["learning_rate"] in (1e-2, 1e-1)
        for run in runs.values():
            assert len(run["loss"]) == 2 and np.isfinite(run["final_loss"])
            assert 0.0 <= run["test_metric"] <= 1.0
        wins = task["wins"]
        assert wins["adam_default"] == (runs["learned"]["final_loss"]
                                        < runs["adam_default"]["final_loss"])
        assert task["speedup_vs_adam_tuned"] >= 0
    summary = keras_tasks.suite_summary(result)
    assert summary["tasks"] == 2 and 0 <= summary["win_rate_vs_adam_tuned"] <= 1
    assert "| wine_mlp | LearnedOptimizer() |" in keras_tasks.keras_markdown(result)


def test_speedup_is_velos_measure():
    learned = {"loss": [1.0, 0.5, 0.2, 0.1], "diverged": False}
    assert keras_tasks.speedup(learned, {"loss": [1.0, 0.8, 0.4, 0.3]}) == np.inf
    assert keras_tasks.speedup(learned, {"loss": [0.5, 0.2, 0.1, 0.05]}) == 0.75
    assert keras_tasks.speedup({**learned, "diverged": True}, {"loss": [1.0]}) == 0.0


def test_unknown_keras_task_is_named():
    with pytest.raises(ValueError, match="'nope'"):
        keras_tasks.run_keras_tasks(LearnedPolicy.random(), tasks=["nope"])
