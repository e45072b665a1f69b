"""A collector: `PyDriver` over `OptimizationEnv`, writing to the replay server.

    rl-optimizer collect --address HOST:PORT --task I [--max-steps N]

The config comes from the server. Task I samples its own episodes (environment seed + 1 + I)
and exploration noise. Every `distributed.pull_every` environment steps it pulls the learner's
actor weights; it stops when the learner says it is done (or after `--max-steps`). Killed, it
can be restarted at any time: it rejoins with the learner's current weights.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import reverb
import tensorflow as tf
from tf_agents.drivers import py_driver
from tf_agents.policies import py_tf_eager_policy

from rl_optimizer.distributed import REPLAY_TABLE
from rl_optimizer.distributed import replay as replay_lib

FLUSH_TIMEOUT_MS = 1000


class LearnerDone(Exception):
    """The learner has finished: collection stops."""


class CoordinateBatchObserver:
    """Writes coordinate-batched trajectories as 2-step items [2, B, ...] into one table.

    tf_agents' `ReverbAddTrajectoryObserver` takes unbatched trajectories only. An item starts at
    every step except an episode boundary (its "next" step is another episode's first).

    Args:
      client: a `reverb.Client` of the server.
      table: the replay table.
      should_stop: called while a write waits on the rate limiter; True stops collection.
      max_in_flight: items that may wait unconfirmed before a write blocks.
    """

    def __init__(self, client: reverb.Client, table: str, should_stop, max_in_flight: int = 2):
        self._writer = client.trajectory_writer(num_keep_alive_refs=2)
        self._table, self._should_stop, self._max_in_flight = table, should_stop, max_in_flight
        self._previous_boundary = None
        self.items = 0

    def __call__(self, trajectory) -> None:
        self._writer.append(trajectory)
        if self._previous_boundary is False:
            self._writer.create_item(
                self._table, priority=1.0,
                trajectory=tf.nest.map_structure(lambda c: c[-2:], self._writer.history))
            self.items += 1
            self._flush(self._max_in_flight)
        self._previous_boundary = bool(np.any(trajectory.is_boundary()))

    def _flush(self, in_flight: int) -> None:
        # The rate limiter holds writes while collection is ahead of the learner; waiting in
        # short slices lets the collector notice that the learner has finished meanwhile.
        while True:
            try:
                self._writer.flush(in_flight, timeout_ms=FLUSH_TIMEOUT_MS)
                return
            except reverb.errors.DeadlineExceededError:
                if self._should_stop():
                    raise LearnerDone from None

    def close(self) -> None:
        self._writer.close()


def collect(address: str, task: int, max_steps: int | None = None, log=print) -> int:
    """Collects into the server at `address` until the learner is done; returns items written."""
    client = replay_lib.connect(address)
    config = replay_lib.read_config(client)
    d = config.distributed
    tf.keras.utils.set_random_seed(config.training.seed + 1 + task)
    env_config = dataclasses.replace(config.environment, seed=config.environment.seed + 1 + task)
    env, agent, _ = replay_lib.build_role(config, env_config)
    env.prefill_pool()
    shared = replay_lib.SharedVariables(address, agent)
    observer = CoordinateBatchObserver(client, REPLAY_TABLE, shared.pull)
    policy = py_tf_eager_policy.PyTFEagerPolicy(agent.collect_policy, use_tf_function=True,
                                                batch_time_steps=False)
    # PyDriver counts transitions, and a step of the batched environment is B of them.
    driver = py_driver.PyDriver(env, policy, [observer],
                                max_steps=d.pull_every * env.batch_size)
    time_step, policy_state = env.reset(), policy.get_initial_state(env.batch_size)
    finished = shared.pull()  # waits for the learner's first weights
    log(f"collector {task}: joined {address} at learner iteration {int(shared.iteration.numpy())}")
    steps, start = 0, time.time()
    try:
        while not finished and (max_steps is None or steps < max_steps):
            time_step, policy_state = driver.run(time_step, policy_state)
            steps += d.pull_every
            finished = shared.pull()
    except LearnerDone:
        pass
    log(f"collector {task}: {observer.items} items ({observer.items * env.batch_size} "
        f"coordinate transitions) in {time.time() - start:.1f} s; learner iteration "
        f"{int(shared.iteration.numpy())}{', done' if shared.done.numpy() else ''}")
    return observer.items

