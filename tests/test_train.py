"""Training (issue 3): the run directory, TensorBoard, resume after SIGKILL, Ctrl-C, seeds."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import yaml

from rl_optimizer import cli
from rl_optimizer.config import load_config
from rl_optimizer.policy import LearnedPolicy, load_policy
from rl_optimizer.train import _Run, train

pytestmark = pytest.mark.slow

CHECKPOINT_WAIT_SECONDS = 60


def _steps_by_tag(logdir) -> dict[str, list[int]]:
    """TensorBoard tag → the steps it was written at, over all event files in `logdir`."""
    steps = {}
    for name in sorted(os.listdir(logdir)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(logdir, name)):
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    return steps


def _counters(run_dir) -> tuple[int, int]:
    """(iteration, global_step) of the run's latest checkpoint."""
    reader = tf.train.load_checkpoint(os.path.join(run_dir, "checkpoints"))
    return tuple(int(reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE"))
                 for name in ("iteration", "global_step"))


def _set_iterations(run_dir, iterations: int) -> None:
    """Extends a run: --resume trains to the run's own config.yaml."""
    path = os.path.join(run_dir, "config.yaml")
    with open(path) as f:
        data = yaml.safe_load(f)
    data["training"]["iterations"] = iterations
    with open(path, "w") as f:
        yaml.safe_dump(data, f, sort_keys=False)


def _start_training(smoke_config_path, run_dir, log_path, iterations):
    """`rl-optimizer train` in a child process; evaluation only at the end, checkpoints every 5."""
    with open(log_path, "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "rl_optimizer.cli", "train", "--config", smoke_config_path,
             "--run-dir", str(run_dir), "--no-progress",
             "--set", f"training.iterations={iterations}", "--set", "training.checkpoint_every=5",
             "--set", "evaluation.every=0"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _wait_for_checkpoint(process, run_dir, log_path):
    index = os.path.join(run_dir, "checkpoints", "checkpoint")
    deadline = time.monotonic() + CHECKPOINT_WAIT_SECONDS
    while not os.path.isfile(index):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            with open(log_path) as f:
                pytest.fail(f"no checkpoint in {CHECKPOINT_WAIT_SECONDS} s:\n{f.read()[-3000:]}")
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be interrupted"


def _actor_weights(run_dir) -> list[np.ndarray]:
    policy = load_policy(run_dir)
    return [v.numpy() for v in policy.kernels + policy.biases]


def test_smoke_run_writes_the_run_directory(smoke_run):
    run_dir, config, result = smoke_run.run_dir, smoke_run.config, smoke_run.result

    assert load_config(os.path.join(run_dir, "config.yaml")) == config
    assert os.path.isfile(os.path.join(run_dir, "checkpoints", "checkpoint"))
    assert _counters(run_dir) == (config.training.iterations,
                                  config.training.iterations * config.training.train_steps)
    assert result.iterations == config.training.iterations and not result.interrupted
    assert result.export_path == os.path.join(run_dir, "export", "rl_optimizer", "1")
    policy = load_policy(result.export_path)
    assert policy.hidden == tuple(config.networks.actor_hidden)
    assert policy.metadata["iterations"] == config.training.iterations
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    assert summary["iterations"] == config.training.iterations
    assert summary["export_path"] == result.export_path
    assert "win_rate_vs_adam" in summary["evaluation"]


def test_smoke_run_logs_losses_return_and_evaluation(smoke_run):
    steps = _steps_by_tag(os.path.join(smoke_run.run_dir, "train"))
    t = smoke_run.config.training

    logged = list(range(t.log_every, t.iterations + 1, t.log_every))
    for tag in ("train/actor_loss", "train/critic_loss", "train/return"):
        assert steps.get(tag) == logged, tag
    # Iteration 0 too: the initial actor is a candidate for the exported policy.
    evaluated = list(range(0, t.iterations + 1, smoke_run.config.evaluation.every))
    assert steps.get("eval/win_rate_vs_adam") == evaluated
    assert any(tag.startswith("eval/curves_") for tag in steps), sorted(steps)


def test_second_run_in_the_same_directory_is_refused(smoke_run, tmp_path):
    run_dir = shutil.copytree(smoke_run.run_dir, tmp_path / "run")
    before = (run_dir / "config.yaml").read_text()

    with pytest.raises(ValueError, match="--resume"):
        train(smoke_run.config, str(run_dir), progress=False)

    assert (run_dir / "config.yaml").read_text() == before


def test_resume_continues_the_counters(smoke_config_path, tmp_path):
    run_dir = str(tmp_path / "run")
    config = load_config(smoke_config_path, ["training.iterations=6"])
    train(config, run_dir, progress=False)
    assert _counters(run_dir) == (6, 6 * config.training.train_steps)

    _set_iterations(run_dir, 10)
    result = train(None, run_dir, resume=True, progress=False)

    assert result.iterations == 10
    assert _counters(run_dir) == (10, 10 * config.training.train_steps)
    # Logged at steps 2, 4, 6 by the first run and 8, 10 by the resumed one: none restarted.
    assert _steps_by_tag(os.path.join(run_dir, "train"))["train/actor_loss"] == [2, 4, 6, 8, 10]


def test_run_killed_with_sigkill_resumes_to_the_end(smoke_config_path, tmp_path):
    run_dir, log_path, iterations = tmp_path / "run", tmp_path / "train.log", 150
    process = _start_training(smoke_config_path, run_dir, log_path, iterations)
    _wait_for_checkpoint(process, run_dir, log_path)

    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    killed_at, _ = _counters(run_dir)
    assert 0 < killed_at < iterations

    assert cli.main(["train", "--run-dir", str(run_dir), "--resume", "--no-progress"]) == 0
    train_steps = load_config(smoke_config_path).training.train_steps
    assert _counters(run_dir) == (iterations, iterations * train_steps)
    with open(run_dir / "summary.json") as f:
        assert json.load(f)["iterations"] == iterations


def test_ctrl_c_checkpoints_and_exits_cleanly(smoke_config_path, tmp_path):
    run_dir, log_path = tmp_path / "run", tmp_path / "train.log"
    process = _start_training(smoke_config_path, run_dir, log_path, iterations=100_000)
    _wait_for_checkpoint(process, run_dir, log_path)

    process.send_signal(signal.SIGINT)
    returncode = process.wait(timeout=60)

    output = log_path.read_text()
    assert returncode == 0, output[-3000:]
    match = re.search(r"interrupted at iteration (\d+)", output)
    assert match, output[-3000:]
    iteration, _ = _counters(run_dir)
    assert iteration == int(match.group(1))
    with open(run_dir / "summary.json") as f:
        summary = json.load(f)
    assert summary["interrupted"] and summary["iterations"] == iteration
    assert isinstance(load_policy(str(run_dir)), LearnedPolicy)


def test_same_seed_builds_the_same_networks(smoke_run, tmp_path):
    def initial_weights(name):
        run = _Run(smoke_run.config, str(tmp_path / name))
        variables = [*run.agent.policy.variables(), *run.agent._critic_network.variables]
        return [v.numpy() for v in variables]

    first, second = initial_weights("a"), initial_weights("b")

    for i, (a, b) in enumerate(zip(first, second)):
        np.testing.assert_array_equal(a, b, err_msg=f"variable {i}")


def test_same_seed_trains_the_same_policy(smoke_run, tmp_path):
    """Two runs with one seed export bit-identical actors.

    What it takes on CPU: every seed set (Keras initializers without a seed draw theirs from
    Python's `random`), and replay sampling one call at a time (parallel calls share the sampler's
    random state in thread order). oneDNN's float sums are already repeatable at a fixed thread
    count, so `enable_op_determinism` is not needed.
    """
    result = train(smoke_run.config, str(tmp_path / "run"), progress=False)

    assert result.best_iteration == smoke_run.result.best_iteration
    for a, b in zip(_actor_weights(result.export_path),
                    _actor_weights(smoke_run.result.export_path)):
        np.testing.assert_array_equal(a, b)


def test_selection_score_weighs_steps_and_final_gap_and_disqualifies_divergence():
    from rl_optimizer.train import selection_score

    clean = {"win_rate_vs_adam": 0.2, "final_win_rate_vs_adam": 0.6, "divergences": 0}
    assert selection_score(clean) == pytest.approx(0.4)
    assert selection_score({**clean, "divergences": 1}) < min(0.0, selection_score(
        {**clean, "win_rate_vs_adam": 0.0, "final_win_rate_vs_adam": 0.0}))
    # A validation without the final-gap figure is scored on steps alone.
    assert selection_score({"win_rate_vs_adam": 0.3, "divergences": 0}) == pytest.approx(0.3)
    # With network families, their final-gap win rate is half the score.
    assert selection_score({**clean, "network_final_win_rate_vs_adam": 1.0}) == \
        pytest.approx(0.7)
    # The deep evaluation's win rate (evaluation.deep_epsilon) is a part of the same weight.
    assert selection_score({**clean, "network_final_win_rate_vs_adam": 1.0,
                            "deep_win_rate_vs_nesterov": 0.1}) == pytest.approx(0.5)
    assert selection_score({**clean, "deep_win_rate_vs_nesterov": 1.0}) == pytest.approx(0.7)
