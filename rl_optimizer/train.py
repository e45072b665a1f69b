"""Train the learned optimizer: DDPG on the optimization environment, then export the policy.

    rl-optimizer train --config configs/default.yaml --run-dir runs/NAME [--set k=v]
    rl-optimizer train --run-dir runs/NAME --resume     # with the run's own config.yaml

A run directory holds everything a run makes:

    config.yaml           the resolved config (what --resume uses)
    checkpoints/          agent, replay buffer, counters (tf_agents Checkpointer)
    train/                TensorBoard: losses, returns, evaluation, convergence curves
    best/rl_optimizer/    the best policy so far on validation instances (early stopping)
    export/rl_optimizer/  the final policy (the best one), as a TF Serving model version
    summary.json          wall time, final evaluation

Checkpoints are written every `training.checkpoint_every` iterations and on Ctrl-C; a run
killed at any moment continues from its last checkpoint with `--resume` (the episode in
flight restarts; the sampler, replay buffer, networks and counters continue).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import threading
import time

import numpy as np
import tensorflow as tf
import yaml
from tf_agents.drivers import dynamic_step_driver
from tf_agents.environments import tf_py_environment
from tf_agents.metrics import tf_metrics
from tf_agents.replay_buffers import tf_uniform_replay_buffer
from tf_agents.utils import common
from tqdm.auto import tqdm

from rl_optimizer import agent as agent_lib
from rl_optimizer import objectives
from rl_optimizer.config import Config, ConfigError, load_config, to_dict
from rl_optimizer.environment import OptimizationEnv
from rl_optimizer.evaluation import PeriodicValidation, resolve_families
from rl_optimizer.evaluation.validation import DEEP_BASELINE
from rl_optimizer.export import export_policy, write_text_atomically
from rl_optimizer.policy import load_policy


@dataclasses.dataclass
class TrainResult:
    """What `train` returns."""

    run_dir: str
    export_path: str
    iterations: int
    wall_seconds: float
    evaluation: dict
    interrupted: bool = False
    best_iteration: int | None = None


class _Run:
    """The objects of one training run, built from a config (the script part lives in train)."""

    def __init__(self, config: Config, run_dir: str):
        self.config = config
        # Also seeds Python's `random`: Keras initializers without a seed (tf_agents' actor and
        # critic output layers) draw theirs from it, which tf.random.set_seed leaves alone.
        tf.keras.utils.set_random_seed(config.training.seed)
        # Same seed, same run: multi-threaded CPU kernels (oneDNN, reductions) otherwise sum in
        # thread order. Process-wide, as TensorFlow offers it.
        tf.config.experimental.enable_op_determinism()
        self.py_env = OptimizationEnv(config.environment, config.features)
        self.env = tf_py_environment.TFPyEnvironment(self.py_env)
        self.global_step = tf.Variable(0, dtype=tf.int64, name="global_step")
        self.iteration = tf.Variable(0, dtype=tf.int64, name="iteration")
        self.agent = agent_lib.build_agent(self.env.time_step_spec(), self.env.action_spec(),
                                           config, self.global_step)
        t = config.training
        self.replay = tf_uniform_replay_buffer.TFUniformReplayBuffer(
            self.agent.collect_data_spec, batch_size=self.env.batch_size,
            max_length=t.replay_capacity)
        self.average_return = tf_metrics.AverageReturnMetric(batch_size=self.env.batch_size)
        self.collect = common.function(dynamic_step_driver.DynamicStepDriver(
            self.env, self.agent.collect_policy,
            observers=[self.replay.add_batch, self.average_return],
            num_steps=t.collect_steps * self.env.batch_size).run)
        self.train_step = common.function(self.agent.train)
        self.checkpointer = common.Checkpointer(
            os.path.join(run_dir, "checkpoints"), max_to_keep=2, agent=self.agent,
            replay_buffer=self.replay, global_step=self.global_step, iteration=self.iteration,
            average_return=self.average_return)
        self.sampler_state_path = os.path.join(run_dir, "checkpoints", "sampler.json")

    def dataset_iterator(self):
        t = self.config.training
        # One sampling call at a time, when asked for: parallel calls share the sampler's random
        # state in thread order, and a prefetch would sample while the driver adds data, so
        # what it sees would depend on thread timing. Either way runs would not repeat.
        dataset = self.replay.as_dataset(sample_batch_size=t.batch_size, num_steps=2)
        return iter(dataset)

    def save(self):
        self.checkpointer.save(self.global_step)
        write_text_atomically(self.sampler_state_path, json.dumps(self.py_env.get_state()))

    def restore_sampler(self):
        if os.path.isfile(self.sampler_state_path):
            with open(self.sampler_state_path) as f:
                self.py_env.set_state(json.load(f))


def check_resolves(config: Config) -> None:
    """Raises ValueError naming the key when a family or family parameter of `config` is unknown
    or invalid, so that a run fails before it writes anything."""
    for i, spec in enumerate(config.environment.mix):
        try:
            objectives.get_family(spec.family, **spec.params)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"environment.mix[{i}]: {e}") from None
    try:
        resolve_families(config.evaluation.families)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"evaluation.families: {e}") from None


def prepare_run_dir(config: Config, run_dir: str, resume: bool) -> Config:
    """Writes (or, resuming, reads back) the run's config; never overwrites another run.

    Nothing is written unless the config is valid and its families resolve.
    """
    config_path = os.path.join(run_dir, "config.yaml")
    if resume:
        if not os.path.isfile(config_path):
            raise ValueError(f"--resume: {run_dir!r} has no config.yaml; nothing to resume")
        config = load_config(config_path)
        check_resolves(config)
        return config
    if os.path.isdir(os.path.join(run_dir, "checkpoints")):
        raise ValueError(f"run directory {run_dir!r} already holds a run; pass --resume to "
                         "continue it or choose a new --run-dir")
    check_resolves(config)
    os.makedirs(run_dir, exist_ok=True)
    write_text_atomically(config_path, yaml.safe_dump(to_dict(config), sort_keys=False))
    return config


def train(config: Config, run_dir: str, resume: bool = False, progress: bool = True,
          evaluate_fn=None) -> TrainResult:
    """Trains a policy with DDPG and exports it to `<run_dir>/export/rl_optimizer/<version>`.

    Args:
      config: the run's config (ignored when resuming: the run's own config.yaml is used).
      run_dir: where checkpoints, TensorBoard logs and the export go.
      resume: continue the run in `run_dir` from its last checkpoint.
      progress: show a tqdm progress bar.
      evaluate_fn: `(policy, step, writer) -> dict` with at least `win_rate_vs_adam` and
        `divergences`; default: `evaluation.PeriodicValidation` as `config.evaluation` says.

    The exported policy is the one that scored best on validation instances (see
    `selection_score`); the training curve's last policy is exported only if none was scored.
    """
    config = prepare_run_dir(config, run_dir, resume)
    run = _Run(config, run_dir)
    run.py_env.prefill_pool(progress=progress)
    if resume:
        status = run.checkpointer.initialize_or_restore()
        run.restore_sampler()
        if int(run.iteration.numpy()) >= config.training.iterations:
            # Optimizer slots and the exploration noise are created on the first training step
            # and restored then (deferred restoration); a finished run takes none, so their
            # values stay in the checkpoint on purpose, not lost.
            status.expect_partial()
    evaluate_fn = evaluate_fn or make_evaluate_fn(config)
    best = _BestPolicy(run_dir)
    writer = tf.summary.create_file_writer(os.path.join(run_dir, "train"))
    t = config.training
    start = time.time()
    if run.replay.num_frames() == 0:
        _initial_collect(run, t.initial_collect_steps)
    iterator = run.dataset_iterator()
    evaluation, last_eval, interrupted = {}, {}, False
    if int(run.iteration.numpy()) == 0 and evaluation_due(config, 0):
        with writer.as_default():
            evaluation = evaluate_and_offer(run.agent, config, 0, evaluate_fn, best, writer)
        last_eval = {"win_rate": evaluation["win_rate_vs_adam"], "best": best.score}
    bar = tqdm(total=t.iterations, initial=int(run.iteration.numpy()), disable=not progress,
               desc="train", unit="it", dynamic_ncols=True)
    try:
        with writer.as_default(), _StopOnInterrupt() as stop:
            while int(run.iteration.numpy()) < t.iterations:
                if stop.requested:
                    raise KeyboardInterrupt
                losses = _iterate(run, iterator)
                it = int(run.iteration.assign_add(1).numpy())
                stats = {"actor_loss": float(losses.extra.actor_loss),
                         "critic_loss": float(losses.extra.critic_loss),
                         "return": float(run.average_return.result())}
                if it % t.log_every == 0 or it == t.iterations:
                    for name, value in stats.items():
                        tf.summary.scalar(f"train/{name}", value, step=it)
                if evaluation_due(config, it):
                    evaluation = evaluate_and_offer(run.agent, config, it, evaluate_fn, best,
                                                    writer)
                    last_eval = {"win_rate": evaluation["win_rate_vs_adam"], "best": best.score}
                if it % t.checkpoint_every == 0:
                    run.save()
                # The last evaluation stays on the bar until the next one.
                bar.set_postfix({k: f"{v:.3g}" for k, v in {**stats, **last_eval}.items()},
                                refresh=False)
                bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
        print(f"\ninterrupted at iteration {int(run.iteration.numpy())}: checkpointing")
    finally:
        bar.close()
    run.save()
    return finish_run(config, run_dir, run.agent, best, int(run.iteration.numpy()),
                      time.time() - start, evaluation, interrupted)


class _StopOnInterrupt:
    """Turns the first Ctrl-C (SIGINT) into a request the loop reads between iterations.

    A KeyboardInterrupt raised wherever the signal lands can be lost: inside a TF-Agents
    environment callback TensorFlow runs for the driver, it becomes an op error or vanishes, and
    training went on. A second Ctrl-C interrupts at once. Only in the main thread (where Python
    runs signal handlers); elsewhere it does nothing.
    """

    requested = False

    def __enter__(self):
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def make_evaluate_fn(config: Config):
    """The periodic validation `config.evaluation` asks for."""
    e = config.evaluation
    return PeriodicValidation(e.families, e.instances, e.steps, eps=e.epsilon,
                              deep_eps=e.deep_epsilon or None, deep_steps=e.deep_steps)


def evaluation_due(config: Config, iteration: int) -> bool:
    """Whether `iteration` ends with an evaluation (every `evaluation.every`, and the last).

    Iteration 0 is due too: the initial actor is a candidate (its near-zero actions are the
    nominal controller), so training must beat it on validation to be exported.
    """
    every = config.evaluation.every
    return bool(every and iteration % every == 0) or iteration == config.training.iterations


def evaluate_and_offer(agent, config: Config, iteration: int, evaluate_fn, best: _BestPolicy,
                       writer) -> dict:
    """Evaluates the agent's current actor and offers it to `best`; returns the evaluation."""
    policy = agent_lib.policy_from_actor(agent, config)
    evaluation = evaluate_fn(policy, iteration, writer)
    best.offer(policy, selection_score(evaluation), iteration, evaluation)
    return evaluation


def finish_run(config: Config, run_dir: str, agent, best: _BestPolicy, iterations: int,
               wall: float, evaluation: dict, interrupted: bool) -> TrainResult:
    """Exports the best policy (the last actor if none was scored) and writes summary.json."""
    policy = best.policy() or agent_lib.policy_from_actor(agent, config)
    policy.metadata.update(config=to_dict(config), seed=config.training.seed,
                           commit=_source_commit(), iterations=iterations,
                           train_seconds=round(wall, 1))
    export_path = export_policy(policy, os.path.join(run_dir, "export"))
    result = TrainResult(run_dir, export_path, iterations, wall,
                         policy.metadata.get("validation", evaluation), interrupted,
                         best.iteration)
    write_text_atomically(os.path.join(run_dir, "summary.json"),
                          json.dumps(dataclasses.asdict(result), indent=2, default=float))
    return result


def _source_commit() -> str | None:
    """The git commit of the code that trained the policy, when it runs from a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=os.path.dirname(__file__),
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _initial_collect(run: _Run, steps: int) -> None:
    for _ in range(steps):
        run.collect()


def _iterate(run: _Run, iterator):
    run.collect()
    for _ in range(run.config.training.train_steps):
        experience, _ = next(iterator)
        losses = run.train_step(experience)
    return losses


def selection_score(evaluation: dict) -> float:
    """Win rates against tuned baselines, minus one per diverged run (higher is better).

    Over all validation families, the mean of the win rates against tuned Adam in steps to ε
    (problems optimizers solve) and in final gap (which ranks runs where neither reaches ε in
    the budget). Where the validation has network families (minibatch gradients, what users
    train), their final-gap win rate is a part of equal weight: networks are the product, and
    the analytic families outnumber them. So is, where `evaluation.deep_epsilon` asks for it,
    the win rate against tuned Nesterov momentum in steps to that deeper gap. A win rate is at
    most 1, so any policy with a divergence ranks below every policy without one: the quality
    bar allows none.
    """
    steps = float(evaluation["win_rate_vs_adam"])
    parts = [(steps + float(evaluation.get("final_win_rate_vs_adam", steps))) / 2]
    for key in ("network_final_win_rate_vs_adam", f"deep_win_rate_vs_{DEEP_BASELINE}"):
        if key in evaluation:
            parts.append(float(evaluation[key]))
    return float(np.mean(parts)) - float(evaluation["divergences"])


class _BestPolicy:
    """The best-scoring policy so far, exported under `<run_dir>/best` so it survives a kill."""

    def __init__(self, run_dir: str):
        self.model_dir = os.path.join(run_dir, "best")
        self.score, self.iteration = -np.inf, None
        if os.path.isdir(self.model_dir):
            meta = load_policy(self.model_dir).metadata
            self.score, self.iteration = meta["validation_score"], meta["iteration"]

    def offer(self, policy, score: float, iteration: int, evaluation: dict) -> bool:
        if score <= self.score:
            return False
        policy.metadata.update(validation_score=score, iteration=iteration,
                               validation=evaluation)
        export_policy(policy, self.model_dir)
        self.score, self.iteration = score, iteration
        return True

    def policy(self):
        return load_policy(self.model_dir) if self.iteration is not None else None


def add_arguments(parser) -> None:
    parser.add_argument("--config", default=None,
                        help="YAML config (default: the embedded configs/default.yaml)")
    parser.add_argument("--run-dir", required=True, help="directory for this run's outputs")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its last checkpoint, with the "
                             "run's own config.yaml (--config and --set are refused)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--collectors", type=int, default=0, metavar="N",
                        help="N > 0: distributed training on this machine, a Reverb replay "
                             "server, N collector processes and a learner (needs the "
                             "[distributed] extra); 0 (default): one deterministic process")


def run_command(args) -> int:
    if args.resume and (args.set or args.config):
        # A checkpoint only restores into the networks, replay buffer and sampler its own config
        # built; a changed config would fail mid-restore or silently mix two runs.
        given = "--set" if args.set else "--config"
        raise ValueError(f"{given} cannot be combined with --resume: a resumed run continues "
                         f"with its own {os.path.join(args.run_dir, 'config.yaml')}; start a new "
                         "--run-dir to train with other settings")
    config = load_config(args.config, args.set) if not args.resume else None
    if args.collectors < 0:
        raise ValueError(f"--collectors must be >= 0, got {args.collectors}")
    if args.collectors:
        # Imported here: the [distributed] extra (dm-reverb) is optional for single-process runs.
        from rl_optimizer.distributed.commands import require_distributed
        require_distributed("train --collectors")
        from rl_optimizer.distributed.local import train_distributed
        result = train_distributed(config, args.run_dir, args.collectors, resume=args.resume,
                                   progress=not args.no_progress)
    else:
        result = train(config, args.run_dir, resume=args.resume, progress=not args.no_progress)
    print_result(result)
    return 0


def print_result(result: TrainResult) -> None:
    """The closing lines of a training command."""
    print(f"{'interrupted' if result.interrupted else 'trained'} {result.iterations} iterations "
          f"in {result.wall_seconds:.0f} s; policy exported to {result.export_path}", flush=True)
    print(f"TensorBoard: tensorboard --logdir {os.path.join(result.run_dir, 'train')}")
