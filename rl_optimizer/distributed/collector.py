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
    """Writes coordinate-batched trajectories as 2-step items [2, C, ...] into one table.

    tf_agents' `ReverbAddTrajectoryObserver` takes unbatched trajectories only. At each episode
    start the B coordinates are shuffled and split into K = ceil(B / C) groups of C (the last
    one filled up cyclically); each group has its own writer, and every step adds one item per
    group pairing it with the step before, except after an episode boundary (whose "next" step
    is another episode's first).

    Args:
      client: a `reverb.Client` of the server.
      table: the replay table.
      coordinates_per_item: C.
      should_stop: called while a write waits on the rate limiter; True stops collection.
      seed: seeds the shuffles.
      max_in_flight: items per writer that may wait unconfirmed before a write blocks.
    """

    def __init__(self, client: reverb.Client, table: str, coordinates_per_item: int,
                 should_stop, seed: int = 0, max_in_flight: int = 2):
        self._client, self._table, self._per_item = client, table, coordinates_per_item
        self._should_stop, self._max_in_flight = should_stop, max_in_flight
        self._rng = np.random.default_rng(seed)
        self._writers, self._groups = [], None
        self._previous_boundary = None
        self.items = 0

    def _regroup(self, batch_size: int) -> None:
        per_item, count = replay_lib.item_layout(self._per_item, batch_size)
        self._groups = np.resize(self._rng.permutation(batch_size), (count, per_item))
        while len(self._writers) < count:
            # The replay table has no signature to validate items against.
            self._writers.append(self._client.trajectory_writer(num_keep_alive_refs=2,
                                                                validate_items=False))

    def __call__(self, trajectory) -> None:
        if self._previous_boundary in (None, True):  # a new episode: new groups
            self._regroup(trajectory.reward.shape[0])
        # One gather per field ([K, C, ...]); each writer then appends views of it. Columns go
        # flat, in `tf.nest.flatten` order, which is the order the learner's dataset reads them
        # in: nesting them again for each of the K writers cost more than the rest of a step.
        grouped = [np.asarray(x)[self._groups] for x in tf.nest.flatten(trajectory)]
        for k, writer in enumerate(self._writers[:len(self._groups)]):
            writer.append([x[k] for x in grouped])
            if self._previous_boundary is False:
                writer.create_item(self._table, priority=1.0,
                                   trajectory=[column[-2:] for column in writer.history])
                self.items += 1
        if self._previous_boundary is False:
            self._flush(self._max_in_flight)
        self._previous_boundary = bool(np.any(trajectory.is_boundary()))

    def _flush(self, in_flight: int) -> None:
        # The rate limiter holds writes while collection is ahead of the learner; waiting in
        # short slices lets the collector notice that the learner has finished meanwhile.
        for writer in self._writers:
            while True:
                try:
                    writer.flush(in_flight, timeout_ms=FLUSH_TIMEOUT_MS)
                    break
                except reverb.errors.DeadlineExceededError:
                    if self._should_stop():
                        raise LearnerDone from None

    def close(self) -> None:
        """Waits until the server has every item written (unless the learner has finished,
        so the rate limiter may hold them for ever), then closes the writers: a writer closed
        with items in flight drops them (Reverb's own `with` block flushes first too)."""
        try:
            self._flush(0)
        except LearnerDone:
            pass
        finally:
            for writer in self._writers:
                writer.close()


def set_threads(threads: int) -> None:
    """TensorFlow's intra- and inter-op threads of this process (0: leave TF's default).

    Must run before TensorFlow's first op; afterwards it raises an error that says so.
    """
    if threads:
        try:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        except RuntimeError as e:
            raise RuntimeError(f"distributed.collector_threads={threads} must be set before "
                               f"TensorFlow starts in this process: {e}") from None


def collect(address: str, task: int, max_steps: int | None = None, log=print) -> int:
    """Collects into the server at `address` until the learner is done; returns items written."""
    client = replay_lib.connect(address)
    config = replay_lib.read_config(client)
    d = config.distributed
    set_threads(d.collector_threads)
    tf.keras.utils.set_random_seed(config.training.seed + 1 + task)
    env_config = dataclasses.replace(config.environment, seed=config.environment.seed + 1 + task)
    env, agent, _ = replay_lib.build_role(config, env_config)
    env.prefill_pool()
    shared = replay_lib.SharedVariables(address, agent)
    observer = CoordinateBatchObserver(client, REPLAY_TABLE, d.coordinates_per_item,
                                       shared.pull, seed=config.training.seed + 1 + task)
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
    observer.close()
    per_item = replay_lib.item_layout(d.coordinates_per_item, env.batch_size)[0]
    log(f"collector {task}: {observer.items} items ({observer.items * per_item} "
        f"coordinate transitions) in {time.time() - start:.1f} s; learner iteration "
        f"{int(shared.iteration.numpy())}{', done' if shared.done.numpy() else ''}")
    return observer.items

