"""The optimization environment: a natively batched TF-Agents `PyEnvironment`.

One batch element is one coordinate of one problem instance. Every episode samples a fresh
set of training instances from the configured mix of families and lays all their coordinates
side by side, so the same coordinatewise policy learns from every family and later serves
parameters of any shape.

    observation  features [F] of the coordinate's gradient history (`features.observation`)
    action       one number in [-1, 1] per coordinate (`features.apply_action`)
    reward       the instance's decrease of log max(gap, gap_floor) over the step, where
                 gap = (f - f*) / (f(x0) - f*) is its normalized optimality gap (of the
                 full-batch loss, also where the optimizer sees minibatch gradients)

The reward is scale-free, so families whose losses differ by orders of magnitude train
together; its sum over an episode is log(gap_0 / gap_T), and discounting it rewards getting
there in fewer steps. `gap_floor` only keeps the logarithm finite at an exact minimum: at
1e-8 (the default) going from 1e-3 to 1e-6 pays as much as going from 1 to 1e-3. Every
coordinate of an instance shares its reward.

So that the policy learns to find a step size rather than remember one, each episode draws
every instance's parameter and loss units (`rescaled`, powers of ten up to `rescale` and
`loss_rescale`) and its starting log step size (uniform in ±`initial_log_lr`), and its length
(log-uniform in [`horizon`, `max_horizon`]): short horizons alone bias learned step sizes down
(Wu et al., ICLR 2018).

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
from tqdm.auto import tqdm

from rl_optimizer import features, objectives
from rl_optimizer.config import EnvironmentConfig
from rl_optimizer.features import FeatureConfig


@tf.function(reduce_retracing=True)
def _observe(gradient, state, config, segment_ids, segment_count):
    return features.observation(tf.cast(gradient, tf.float32), features.State(*state), config,
                                features.Segments(segment_ids, segment_count))


@functools.cache
def _transition_fn(structure):
    """One compiled environment step for batches of this structure (see `ObjectiveBatch`)."""
    value_and_grad = objectives.batch_value_and_grad(structure)

    @tf.function(reduce_retracing=True, autograph=False)
    def transition(tensors, instance_of_coordinate, action, x, values, gradient, state, config,
                   seed):
        state = features.State(*state)
        # Each instance is one tensor for the features' per-tensor statistics.
        segments = features.Segments(instance_of_coordinate, tf.shape(values)[0])
        update, new_state = features.apply_action(action, tf.cast(gradient, tf.float32), state,
                                                  config, segments=segments)
        new_x = x + tf.cast(update, x.dtype)
        new_values, new_gradient = value_and_grad(*tensors, new_x, seed)
        # A step to a non-finite loss or gradient is undone for the whole instance, so the
        # episode goes on from where it was (and the reward says what happened).
        finite = tf.math.unsorted_segment_min(
            tf.cast(tf.math.is_finite(new_gradient), tf.int32), instance_of_coordinate,
            tf.shape(values)[0]) > 0
        ok = tf.math.is_finite(new_values) & finite
        coord_ok = tf.gather(ok, instance_of_coordinate)
        kept_state = features.State(*(tf.where(coord_ok, new, old)
                                      for new, old in zip(new_state, state)))
        kept_gradient = tf.where(coord_ok, new_gradient, gradient)
        observation = features.observation(tf.cast(kept_gradient, tf.float32), kept_state,
                                           config, segments)
        return (tf.where(coord_ok, new_x, x), tf.where(ok, new_values, values), new_values,
                kept_gradient, tuple(kept_state), observation)

    return transition


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
        # Each instance's reward scale, in the order `_sample_instances` lays them out.
        self._reward_scale = np.repeat([s.reward_scale for s in self.config.mix],
                                       [s.instances for s in self.config.mix])
        self._seeds = objectives.SPLITS[split]
        self._rng = np.random.default_rng(self.config.seed)
        self._batch = None
        self._episode = 0
        self._horizon = self.config.horizon
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

    def get_state(self) -> dict:
        """The sampler's state (JSON-able): what a resumed run needs to repeat this one."""
        return {"rng": self._rng.bit_generator.state, "episode": self._episode}

    def set_state(self, state: dict):
        self._rng.bit_generator.state = state["rng"]
        self._episode = int(state["episode"])

    @property
    def objective_batch(self) -> objectives.ObjectiveBatch | None:
        """The current episode's instances."""
        return self._batch

    def prefill_pool(self, progress: bool = False) -> None:
        """Samples (and solves) every instance episodes can draw, instead of on first use."""
        pool = min(self.config.pool_size, len(self._seeds))
        todo = [(family, self._seeds[i]) for family, _ in self._families for i in range(pool)]
        for family, seed in tqdm(todo, desc="sampling training instances", unit="instance",
                                 disable=not progress, leave=False):
            _sample(family, seed)

    def _sample_instances(self) -> list[objectives.Objective]:
        pool = min(self.config.pool_size, len(self._seeds))
        chosen = [_sample(family, self._seeds[int(i)])
                  for family, n in self._families
                  for i in self._rng.choice(pool, size=n, replace=n > pool)]
        c = self.config
        scales = 10.0 ** (self._rng.uniform(-1, 1, size=(len(chosen), 2))
                          * [c.rescale, c.loss_rescale])
        return [objectives.rescaled(o, *s) for o, s in zip(chosen, scales)]

    def _sample_horizon(self) -> int:
        low, high = self.config.horizon, max(self.config.max_horizon, self.config.horizon)
        return int(round(np.exp(self._rng.uniform(np.log(low), np.log(high)))))

    def _initial_state(self) -> tuple:
        spread = self.config.initial_log_lr
        log_lr = self._rng.uniform(-spread, spread, size=len(self._batch.objectives))
        state = features.init_state([self._batch.size])._replace(log_lr=tf.constant(
            log_lr[self._batch.instance_of_coordinate], tf.float32))
        return tuple(state)

    def _seed(self) -> tf.Tensor:
        """The minibatch seed of this step: episode and step, so a run repeats exactly."""
        return tf.constant([self.config.seed * 1_000_003 + self._episode, self._t], tf.int64)

    def _reset(self):
        self._batch = objectives.ObjectiveBatch(self._sample_instances())
        self._transition = _transition_fn(self._batch.structure)
        self._instance_of_coordinate = tf.constant(self._batch.instance_of_coordinate, tf.int32)
        self._episode += 1
        self._horizon = self._sample_horizon()
        self._t = 0
        self._x = tf.constant(self._batch.initial_point(), tf.float64)
        self._values, self._gradient = self._batch.tf_value_and_grad(self._x, self._seed())
        self._state = self._initial_state()
        observation = _observe(self._gradient, self._state, self.feature_config,
                               self._instance_of_coordinate,
                               tf.constant(len(self._batch.objectives), tf.int32))
        return ts.restart(observation.numpy(), batch_size=self.batch_size)

    def _step(self, action):
        action = tf.constant(np.asarray(action, np.float32).reshape(self.batch_size))
        before = self._values.numpy()
        self._x, self._values, new_values, self._gradient, self._state, observation = \
            self._transition(self._batch.tensors, self._instance_of_coordinate, action, self._x,
                             self._values, self._gradient, self._state, self.feature_config,
                             self._seed() + tf.constant([0, 1], tf.int64))
        self._t += 1
        reward = self._reward(before, new_values.numpy())[self._batch.instance_of_coordinate]
        reward = reward.astype(np.float32)
        discount = np.ones(self.batch_size, np.float32)
        if self._t >= self._horizon:
            return ts.truncation(observation.numpy(), reward, discount)
        return ts.transition(observation.numpy(), reward, discount)

    @property
    def point(self) -> np.ndarray:
        """The current flat point of all instances (float64)."""
        return self._x.numpy()

    @property
    def values(self) -> np.ndarray:
        """The current loss of each instance."""
        return self._values.numpy()

    def _reward(self, before, values):
        floor = self.config.gap_floor
        before = np.log(np.maximum(self._batch.normalized_gap(before), floor))
        with np.errstate(invalid="ignore", divide="ignore"):
            after = np.log(np.maximum(self._batch.normalized_gap(values), floor))
        reward = np.clip((before - after) * self._reward_scale, -self.config.reward_clip,
                         self.config.reward_clip)
        return np.where(np.isfinite(after), reward, -self.config.reward_clip)
