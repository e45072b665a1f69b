"""The optimization environment: a natively batched TF-Agents `PyEnvironment`.

One batch element is one coordinate of one problem instance. Every episode samples a fresh
set of training instances from the configured mix of families and lays all their coordinates
side by side, so the same coordinatewise policy learns from every family and later serves
parameters of any shape.

    observation  features [F] of the coordinate's gradient history (`features.observation`)
    action       one number in [-1, 1] per coordinate (`features.apply_action`)
    reward       the instance's decrease of log max(gap, gap_floor) over the step, where
                 gap = (f - f*) / (f(x0) - f*) is its normalized optimality gap

The reward is scale-free, so families whose losses differ by orders of magnitude train
together; its sum over an episode is log(gap_0 / gap_T), and discounting it rewards getting
there in fewer steps. Below `gap_floor` further progress earns nothing, so the agent is not
paid for polishing digits no one asked for. Every coordinate of an instance shares its reward.

A step whose loss is not finite is undone (the instance stays where it was) and earns
-reward_clip. Episodes end after `horizon` steps as a truncation (discount 1): the
optimization would go on, only the episode stops.
"""

from __future__ import annotations

import functools

import numpy as np
import tensorflow as tf
from tf_agents.environments import py_environment
from tf_agents.specs import array_spec
from tf_agents.trajectories import time_step as ts

from rl_optimizer import features, objectives
from rl_optimizer.config import EnvironmentConfig
from rl_optimizer.features import FeatureConfig


@tf.function(reduce_retracing=True)
def _observe(gradient, state, config):
    return features.observation(gradient, features.State(*state), config)


@tf.function(reduce_retracing=True)
def _apply(action, gradient, state, config):
    update, new_state = features.apply_action(action, gradient, features.State(*state), config)
    return update, tuple(new_state)


@functools.lru_cache(maxsize=4096)
def _sample(family: objectives.ObjectiveFamily, seed: int) -> objectives.Objective:
    # Families with a reference solver take up to half a second per sample: episodes draw
    # from a fixed pool of training seeds, each solved once per process.
    return family.sample(seed)


class OptimizationEnv(py_environment.PyEnvironment):
    """Batched environment: the agent picks every coordinate's step-size correction.

    Args:
      config: the environment config (default: `EnvironmentConfig()`).
      feature_config: the feature/update rule (default: `FeatureConfig()`).
      split: seed split the instances come from ("train" for training).
    """

    def __init__(self, config: EnvironmentConfig | None = None,
                 feature_config: FeatureConfig | None = None, split: str = "train"):
        super().__init__(handle_auto_reset=True)
        self.config = config or EnvironmentConfig()
        self.feature_config = feature_config or FeatureConfig()
        self._families = [(objectives.get_family(s.family, **s.params), s.instances)
                          for s in self.config.mix]
        self._seeds = objectives.SPLITS[split]
        self._rng = np.random.default_rng(self.config.seed)
        self._batch = None
        self._batch_size = sum(n * _sample(family, self._seeds[0]).dim
                               for family, n in self._families)

    @property
    def batched(self) -> bool:
        return True

    @property
    def batch_size(self) -> int:
        return self._batch_size

    def observation_spec(self):
        return array_spec.ArraySpec((features.OBSERVATION_SIZE,), np.float32, "observation")

    def action_spec(self):
        return array_spec.BoundedArraySpec((), np.float32, -1.0, 1.0, "action")

    def get_state(self):
        return self._rng.bit_generator.state

    def set_state(self, state):
        self._rng.bit_generator.state = state

    @property
    def objective_batch(self) -> objectives.ObjectiveBatch | None:
        """The current episode's instances."""
        return self._batch

    def _sample_instances(self) -> list[objectives.Objective]:
        pool = min(self.config.pool_size, len(self._seeds))
        return [_sample(family, self._seeds[int(i)])
                for family, n in self._families
                for i in self._rng.choice(pool, size=n, replace=n > pool)]

    def _reset(self):
        self._batch = objectives.ObjectiveBatch(self._sample_instances())
        self._x = self._batch.initial_point()
        self._values, self._gradient = self._batch.value_and_grad(self._x)
        self._state = tuple(np.zeros(self._batch.size, np.float32)
                            for _ in range(features.STATE_SIZE))
        self._t = 0
        return ts.restart(self._observation(), batch_size=self.batch_size)

    def _step(self, action):
        action = np.asarray(action, np.float32).reshape(self.batch_size)
        update, state = _apply(tf.constant(action), self._float32(self._gradient), self._state,
                               self.feature_config)
        x = self._x + update.numpy().astype(np.float64)
        values, gradient = self._batch.value_and_grad(x)
        reward = self._reward(values)
        # Undo non-finite steps (an instance's point, values and state) so the episode goes on.
        ok = np.isfinite(values) & self._instances_finite(gradient)
        coord_ok = ok[self._batch.instance_of_coordinate]
        self._x = np.where(coord_ok, x, self._x)
        self._values = np.where(ok, values, self._values)
        self._gradient = np.where(coord_ok, gradient, self._gradient)
        self._state = tuple(np.where(coord_ok, new.numpy(), old)
                            for new, old in zip(state, self._state))
        self._t += 1
        reward = reward[self._batch.instance_of_coordinate].astype(np.float32)
        discount = np.ones(self.batch_size, np.float32)
        if self._t >= self.config.horizon:
            return ts.truncation(self._observation(), reward, discount)
        return ts.transition(self._observation(), reward, discount)

    def _instances_finite(self, gradient):
        bad = ~np.isfinite(gradient)
        return np.bincount(self._batch.instance_of_coordinate, weights=bad,
                           minlength=len(self._batch.objectives)) == 0

    def _reward(self, values):
        floor = self.config.gap_floor
        before = np.log(np.maximum(self._batch.normalized_gap(self._values), floor))
        with np.errstate(invalid="ignore", divide="ignore"):
            after = np.log(np.maximum(self._batch.normalized_gap(values), floor))
        reward = np.clip(before - after, -self.config.reward_clip, self.config.reward_clip)
        return np.where(np.isfinite(after), reward, -self.config.reward_clip)

    def _observation(self):
        obs = _observe(self._float32(self._gradient), self._state, self.feature_config)
        return obs.numpy()

    @staticmethod
    def _float32(x):
        return tf.constant(np.asarray(x, np.float32))
