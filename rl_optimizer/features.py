"""The contract every stage shares: gradient history → observation, action → update.

The environment, the Keras optimizer and the exported SavedModel all call these functions, so
what the agent was trained on is exactly what it runs on (no train/serve skew). Everything is
TensorFlow, elementwise, and works on tensors of any shape.

Per coordinate the optimizer keeps S = 4 float32 numbers (a fresh coordinate's are zeros):

  m       exponential average of the gradient (β1), as in Adam;
  v       exponential average of the squared gradient (β2), as in Adam;
  log_lr  the coordinate's last log step size relative to `learning_rate`, set by the policy;
  t       how many steps the coordinate has taken (Adam's step count).

The Keras optimizer keeps m, v and log_lr as slots and takes t from its step counter (a scalar
broadcasts through every function here), so it needs three slots per parameter.

One step, given the gradient g:

  1. t ← t + 1; m, v ← β1·m + (1−β1)·g, β2·v + (1−β2)·g²; m̂, v̂ = m/(1−β1ᵗ), v/(1−β2ᵗ);
  2. observation = scale-free features of the gradient history (`observation`);
  3. action a ∈ [−1, 1] = policy(observation);
  4. log_lr ← a·log_lr_max for a ≥ 0, |a|·log_lr_min for a < 0;
  5. update = −learning_rate·exp(log_lr)·clip(m̂/(√v̂ + ε), ±clip).

So the zero action is Adam with step size `learning_rate`, and the policy sets each coordinate's
step size from what its gradient history shows (agreement of the gradient with its average,
normalised magnitudes, the step count, and its own previous choice, which lets it act as a
step-size controller in the manner of Rprop (Riedmiller & Braun 1993)), on an Adam direction
(Kingma & Ba 2015), with the normalised preprocessing of Andrychowicz et al. (2016). An action
acts on the step it is taken for, which keeps the credit assignment short for the agent.

The update is bounded: |update| ≤ learning_rate·exp(log_lr_max)·clip.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

STATE_SIZE = 4
"""S: float32 numbers of optimizer state per coordinate (m, v, log_lr, t)."""

OBSERVATION_SIZE = 5
"""F: features per coordinate that the policy sees."""

FEATURE_NAMES = ("normalized_gradient", "normalized_momentum", "agreement", "log_lr", "log_step")

_LOG_STEP_SCALE = 7.0  # log(t) / 7 is about 1 after 1000 steps


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Constants of the feature and update rule; a policy is valid only with its own."""

    beta1: float = 0.9
    """Decay of the gradient average m."""
    beta2: float = 0.999
    """Decay of the squared-gradient average v."""
    learning_rate: float = 0.1
    """Step size at log_lr = 0 (what the zero action does)."""
    log_lr_min: float = -7.0
    """log_lr of the action -1 (the smallest step size, relative to `learning_rate`)."""
    log_lr_max: float = 3.0
    """log_lr of the action +1 (the largest step size, relative to `learning_rate`)."""
    clip: float = 5.0
    """Bound on the normalised direction m/√v and on each observation feature."""
    epsilon: float = 1e-12
    """Added to √v̂ so a coordinate with zero gradients takes zero steps."""

    def __post_init__(self):
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"features.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("learning_rate", "clip", "epsilon"):
            if not getattr(self, name) > 0:
                raise ValueError(f"features.{name} must be > 0, got {getattr(self, name)}")
        if not self.log_lr_min < 0.0 < self.log_lr_max:
            raise ValueError("features.log_lr_min < 0 < features.log_lr_max must hold, got "
                             f"{self.log_lr_min}, {self.log_lr_max}")

    @property
    def max_update(self) -> float:
        """The largest |update| any coordinate can take in one step."""
        import math

        return self.learning_rate * math.exp(self.log_lr_max) * self.clip


class State(NamedTuple):
    """Per-coordinate optimizer state; each field has the parameter's shape."""

    m: tf.Tensor
    v: tf.Tensor
    log_lr: tf.Tensor
    t: tf.Tensor


def init_state(shape, dtype=tf.float32) -> State:
    """A fresh coordinate's state: zeros."""
    return State(*(tf.zeros(shape, dtype) for _ in range(STATE_SIZE)))


def pack(state: State) -> tf.Tensor:
    """State → tensor [..., S] (the serving layout)."""
    return tf.stack(list(state), axis=-1)


def unpack(state: tf.Tensor) -> State:
    """Tensor [..., S] → State."""
    return State(*tf.unstack(state, num=STATE_SIZE, axis=-1))


class _Moments(NamedTuple):
    m: tf.Tensor  # new averages, stored in the state
    v: tf.Tensor
    t: tf.Tensor
    direction: tf.Tensor  # m̂ / (√v̂ + ε), clipped
    rms: tf.Tensor  # √v̂ + ε


def _moments(gradient, state: State, config: FeatureConfig) -> _Moments:
    t = state.t + 1.0
    m = config.beta1 * state.m + (1.0 - config.beta1) * gradient
    v = config.beta2 * state.v + (1.0 - config.beta2) * tf.square(gradient)
    # Adam's bias correction (Kingma & Ba 2015, Algorithm 1).
    rms = tf.sqrt(v / (1.0 - tf.pow(config.beta2, t))) + config.epsilon
    m_hat = m / (1.0 - tf.pow(config.beta1, t))
    direction = tf.clip_by_value(m_hat / rms, -config.clip, config.clip)
    return _Moments(m, v, t, direction, rms)


def _features(gradient, state: State, moments: _Moments, config: FeatureConfig) -> tf.Tensor:
    c = config.clip
    ones = tf.ones_like(gradient)
    columns = [
        tf.clip_by_value(gradient / moments.rms, -c, c),
        moments.direction,
        # +1 while the gradient keeps the direction of its average, -1 when it oscillates.
        tf.sign(gradient) * tf.sign(state.m),
        ones * (state.log_lr / max(-config.log_lr_min, config.log_lr_max)),
        ones * (tf.math.log(moments.t) / _LOG_STEP_SCALE),
    ]
    # A non-finite gradient is skipped by `_apply`; its observation must still be a number.
    # Masked column by column, then stacked: under XLA the stack then folds into the actor.
    return tf.stack([tf.where(tf.math.is_finite(x), x, tf.zeros_like(x)) for x in columns],
                    axis=-1)


def observation(gradient: tf.Tensor, state: State, config: FeatureConfig) -> tf.Tensor:
    """Features [..., F] of the gradient history, for each coordinate of `gradient`."""
    return _features(gradient, state, _moments(gradient, state, config), config)


def _apply(action, gradient, state: State, moments: _Moments, config: FeatureConfig):
    action = tf.clip_by_value(action, -1.0, 1.0)
    log_lr = action * tf.where(action > 0, config.log_lr_max, -config.log_lr_min)
    update = -config.learning_rate * tf.exp(log_lr) * moments.direction
    new_state = State(moments.m, moments.v, log_lr, moments.t)
    # A non-finite gradient leaves its coordinate where it was, state included.
    finite = tf.math.is_finite(gradient)
    update = tf.where(finite, update, tf.zeros_like(update))
    new_state = State(*(tf.where(finite, new, old) for new, old in zip(new_state, state)))
    return update, new_state


def apply_action(action: tf.Tensor, gradient: tf.Tensor, state: State,
                 config: FeatureConfig) -> tuple[tf.Tensor, State]:
    """(update, new_state) for a given action ∈ [−1, 1] of each coordinate."""
    return _apply(action, gradient, state, _moments(gradient, state, config), config)


def step(actor: Callable[[tf.Tensor], tf.Tensor], gradient: tf.Tensor, state: State,
         config: FeatureConfig) -> tuple[tf.Tensor, State]:
    """One optimizer step: observe, ask the actor (features [..., F] → action [...]), update."""
    moments = _moments(gradient, state, config)
    action = actor(_features(gradient, state, moments, config))
    return _apply(action, gradient, state, moments, config)
