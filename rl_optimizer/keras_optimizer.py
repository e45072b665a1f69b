"""The learned policy as a tf.keras optimizer (the Keras 2.15 `Optimizer` API).

    model.compile(optimizer=LearnedOptimizer("path/to/export"), loss=...)

Every step is `features.step` with the policy's actor: the same code the agent was trained on and
TF Serving runs, so Keras sees no train/serve skew. Each parameter keeps the state m, v, log_lr
and the last action (or gradient, `FeatureConfig.gradient_memory`) in four slot variables; the
state's step count t is the optimizer's `iterations`, one scalar for all (as in Keras' Adam).
`learning_rate` multiplies every step, as Adam's does: a float, a `LearningRateSchedule`, or a
value callbacks such as `ReduceLROnPlateau` and `LearningRateScheduler` set.

Per variable and step, a gradient with a non-finite value leaves the variable and its slots
unchanged and adds one to `skipped_steps`; otherwise each coordinate moves by at most
`policy.feature_config.max_update`. The optimizer also keeps ‖gradient‖² and ‖update‖² of the
last step (the update as the change each variable took; each estimated from `UPDATE_SAMPLE`
evenly spaced coordinates of a larger variable), summed over its variables, for
`monitor.OptimizerMonitor` to show in TensorBoard.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf

from rl_optimizer import features
from rl_optimizer.policy import LearnedPolicy, check_contract, load_policy

__all__ = ["STATISTICS", "UPDATE_SAMPLE", "LearnedOptimizer", "policy_from_config",
           "policy_to_config"]

STATISTICS = ("update_norm_sq", "gradient_norm_sq")
"""What `LearnedOptimizer.statistics` holds: sums over the variables the last step updated."""

UPDATE_SAMPLE = 4096
"""‖update‖² and ‖gradient‖² of a larger variable are estimated from this many evenly spaced
coordinates."""

_SLOTS = ("m", "v", "log_lr", "action")
"""`features.State` kept per coordinate, one slot each; its step count t is the optimizer's."""


def policy_to_config(policy: LearnedPolicy) -> dict:
    """The policy as plain JSON-able Python: weights, hidden sizes and feature constants."""
    return {
        "contract": features.CONTRACT_VERSION,
        "hidden": list(policy.hidden),
        "kernels": [k.numpy().tolist() for k in policy.kernels],
        "biases": [b.numpy().tolist() for b in policy.biases],
        "feature_config": dataclasses.asdict(policy.feature_config),
    }


def policy_from_config(config: dict) -> LearnedPolicy:
    """Inverse of `policy_to_config`."""
    unknown = set(config) - {"contract", "hidden", "kernels", "biases", "feature_config"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} in a policy config")
    check_contract(config.get("contract"), "in the optimizer's config")
    policy = LearnedPolicy([np.asarray(k, np.float32) for k in config["kernels"]],
                           [np.asarray(b, np.float32) for b in config["biases"]],
                           features.FeatureConfig(**config["feature_config"]))
    if list(policy.hidden) != list(config.get("hidden", policy.hidden)):
        raise ValueError(f"policy config says hidden={config['hidden']}, its kernels have "
                         f"hidden={list(policy.hidden)}")
    return policy


@tf.keras.saving.register_keras_serializable(package="rl_optimizer")
class LearnedOptimizer(tf.keras.optimizers.Optimizer):
    """A trained `LearnedPolicy` as a Keras optimizer.

    Args:
      policy: "default" (the shipped policy), the path of an exported policy (a version
        directory, or a model directory whose highest version is used), a `LearnedPolicy`, or
        the dict `policy_to_config` makes (what `get_config` stores, so a saved model reloads
        without the export).
      learning_rate: the multiplier of every step (a fresh coordinate steps like Adam with
        this learning rate times e^`feature_config.start_log_lr`; the policy then adapts each
        coordinate's step size relative to it): a float, or a
        `tf.keras.optimizers.schedules.LearningRateSchedule`. None: the policy's own
        (`feature_config.learning_rate`; the shipped policy's: 1e-2, whose fresh coordinates
        start at 1e-2 · e^−2.3 ≈ 1e-3, Adam's default). The policy
        finds the scale itself, so it needs no tuning; schedules and callbacks drive it as
        Adam's.
      name: name of the optimizer, the prefix of its slot variables.
      jit_compile: compile each dense variable's update with XLA, also on CPU (Keras' own
        optimizers use XLA only on GPU); the learned update is some 40 elementwise ops and a tiny
        MLP that XLA fuses into a few loops.
      weight_decay: decoupled weight decay, scaled by `learning_rate` (as in Keras' AdamW).
      **kwargs: the other keyword arguments of `tf.keras.optimizers.Optimizer` (`clipnorm`,
        `global_clipnorm`, `use_ema`, ...).

    Sparse gradients (`tf.IndexedSlices`, e.g. from `Embedding`) update only the rows they
    touch, also inside a model compiled with `jit_compile=True` (in a function of your own
    compiled by XLA, pass the indices as an argument: constant indices are refused).
    """

    def __init__(self, policy: str | os.PathLike | LearnedPolicy | dict = "default",
                 learning_rate: float | None = None, name: str = "LearnedOptimizer",
                 jit_compile: bool = True, weight_decay: float | None = None, **kwargs):
        # Keras' `jit_compile` wraps every update, sparse ones too; ours compiles dense ones only.
        super().__init__(name=name, jit_compile=False, weight_decay=weight_decay, **kwargs)
        policy = policy_from_config(policy) if isinstance(policy, dict) else load_policy(policy)
        self._set_policy(policy)
        self.jit_update = bool(jit_compile)
        if learning_rate is None:
            learning_rate = policy.feature_config.learning_rate
        if not isinstance(learning_rate, tf.keras.optimizers.schedules.LearningRateSchedule):
            if isinstance(learning_rate, bool) or not isinstance(learning_rate, int | float) \
                    or not learning_rate > 0:
                raise ValueError("learning_rate must be a number > 0 or a LearningRateSchedule, "
                                 f"got {learning_rate!r}")
        self._learning_rate = self._build_learning_rate(learning_rate)

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def _set_policy(self, policy: LearnedPolicy):
        # Configuration, not state: `get_config` carries it, checkpoints do not.
        self.policy = policy

    def build(self, var_list):
        """Creates the m, v and log_lr slots of each variable and the optimizer's counters."""
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self._built = True
        self.skipped_steps = self.add_variable([], tf.int64, name="skipped_steps")
        self.statistics = self.add_variable([len(STATISTICS)], tf.float64, name="statistics")
        self._slots = [[self.add_variable_from_reference(var, slot) for slot in _SLOTS]
                       for var in var_list]

    def _distributed_apply_gradients_fn(self, distribution, grads_and_vars, **kwargs):
        self.statistics.assign(tf.zeros_like(self.statistics))
        return super()._distributed_apply_gradients_fn(distribution, grads_and_vars, **kwargs)

    def update_step(self, gradient, variable):
        """One `features.step` on `variable`, skipped if `gradient` has a non-finite value."""
        slots = self._slots[self._index_dict[self._var_key(variable)]]
        if isinstance(gradient, tf.IndexedSlices):
            # `apply_gradients` has summed duplicate indices already.
            self._sparse_update(gradient, variable, slots)
        elif self.jit_update:
            self._dense_update(gradient, variable, slots, self._compiled_new_values)
        else:
            self._dense_update(gradient, variable, slots, self._new_values)

    def _dense_update(self, gradient, variable, slots, new_values_fn):
        # The new values are computed, then assigned: assigned inside the compiled step, XLA
        # copies the slots it reads and also overwrites (3 more passes over the variable).
        new_variable, new_values, statistics = new_values_fn(
            gradient, tf.convert_to_tensor(variable), [tf.convert_to_tensor(s) for s in slots])
        variable.assign(new_variable)
        for slot, new in zip(slots, new_values):
            slot.assign(new)
        self.statistics.assign_add(statistics)

    def _new_values(self, gradient, value, values, xla: bool = False):
        """The variable's and its slots' values after one step, and the step's `STATISTICS`."""
        # Under XLA the policy's unrolled actor: same numbers, one fused loop.
        actor = self.policy.unrolled_actor if xla else self.policy.actor
        update, new_values, gradient_sq = self._step(actor, tf.cast(gradient, value.dtype),
                                                     values)
        new_value = value + update
        # ‖update‖² as the change the variable took (none for a skipped step). Sampled from
        # `update` instead, it made XLA keep exp(log_lr) in memory for the sample: two more
        # passes over the variable.
        return new_value, new_values, tf.stack([_estimated_sum_of_squares(new_value, value),
                                                gradient_sq])

    @tf.function(jit_compile=True)
    def _compiled_new_values(self, gradient, value, values):
        return self._new_values(gradient, value, values, xla=True)

    def _sparse_update(self, gradient, variable, slots):
        # Only the rows the gradient touches: gather their state, step, scatter back.
        indices, xla = gradient.indices, features.in_xla_context()
        if xla and gradient.values.shape[0] is not None and indices.shape[0] is None:
            # TensorFlow folds the deduplicated rows' count, XLA pads them to their bound: the
            # gathered state and the gradient would disagree in shape deep inside XLA.
            raise ValueError(
                f"LearnedOptimizer: the sparse gradient of {variable.name} comes from indices "
                "that are constants of a function compiled with jit_compile=True (its "
                f"{gradient.values.shape[0]} unique rows are fixed when traced, which XLA does "
                "not follow); pass the indices to the function as an argument, or compile it "
                "without jit_compile")
        values = [tf.gather(slot, indices) for slot in slots]
        # Under XLA (a model compiled with jit_compile=True) the unrolled actor: the number of
        # rows is known only when the step runs, and XLA cannot prove the actor's reshape of
        # them to [rows * columns, F] and back consistent.
        actor = self.policy.unrolled_actor if xla else self.policy.actor
        update, new_values, gradient_sq = self._step(
            actor, tf.cast(gradient.values, variable.dtype), values)
        variable.scatter_add(tf.IndexedSlices(update, indices))
        for slot, new in zip(slots, new_values):
            slot.scatter_update(tf.IndexedSlices(new, indices))
        self.statistics.assign_add(tf.stack([_estimated_sum_of_squares(update), gradient_sq]))

    def _step(self, actor, gradient, values: list) -> tuple[tf.Tensor, list, tf.Tensor]:
        """`features.step` on the slots' `values`: the update, the slots' new values and the
        (estimated) ‖gradient‖², 0 for a skipped step.

        Where any value of `gradient` is non-finite: no update, no change. The step is taken
        in float32, the policy's precision, whatever the variable's (float64, float16, ...).
        """
        dtype = gradient.dtype
        if dtype != tf.float32:
            update, new_values, gradient_sq = self._step(
                actor, tf.cast(gradient, tf.float32), [tf.cast(value, tf.float32)
                                                       for value in values])
            return (tf.cast(update, dtype), [tf.cast(value, dtype) for value in new_values],
                    gradient_sq)
        # A boolean reduction: a quarter of the memory traffic of a float32 ‖g‖², and no
        # overflow to mistake for a non-finite value (float64 ‖g‖² cost ~0.15x of Adam's step).
        finite = tf.reduce_all(tf.math.is_finite(gradient))
        state = features.State(*values, t=self._step_count(gradient))
        # The skip is the step's `keep` (selects, not a tf.cond: XLA runs a conditional's
        # branches on one thread), so the update is taken from the kept state.
        update, new_state = features.step(actor, gradient, state, self.policy.feature_config,
                                          tf.cast(self.learning_rate, gradient.dtype),
                                          keep=finite)
        new_values = list(new_state)[:len(values)]
        self.skipped_steps.assign_add(tf.cast(tf.logical_not(finite), tf.int64))
        gradient_sq = _estimated_sum_of_squares(gradient)
        return update, new_values, tf.where(finite, gradient_sq, tf.zeros_like(gradient_sq))

    def _step_count(self, gradient) -> tf.Tensor:
        """State's t: the optimizer's step count for every coordinate, as in Keras' Adam.

        Broadcast to the gradient's shape, so the ops (pow, log) are the environment's exactly;
        XLA folds the broadcast away.
        """
        return tf.fill(tf.shape(gradient), tf.cast(self.iterations, gradient.dtype))

    def last_step_statistics(self) -> dict[str, float]:
        """The last step's update/gradient norm ratio and norms, mean log_lr, skipped steps.

        Norms are over the variables the last step updated; mean log_lr is over all coordinates
        now; skipped steps are counted since the start. `{}` before the first step.
        """
        if not getattr(self, "_built", False):
            return {}
        update_sq, gradient_sq = (float(x) for x in self.statistics.numpy())
        log_lrs = [slots[_SLOTS.index("log_lr")] for slots in self._slots]
        coordinates = sum(int(np.prod(v.shape)) for v in log_lrs)
        return {
            "update_gradient_ratio": float(np.sqrt(update_sq / gradient_sq)) if gradient_sq
            else 0.0,
            "update_norm": float(np.sqrt(update_sq)),
            "gradient_norm": float(np.sqrt(gradient_sq)),
            "mean_log_lr": float(sum(tf.reduce_sum(v).numpy() for v in log_lrs)
                                 / max(coordinates, 1)),
            "skipped_steps": float(self.skipped_steps.numpy()),
        }

    def get_config(self):
        config = super().get_config()
        learning_rate = self._serialize_hyperparameter(self._learning_rate)
        if not isinstance(learning_rate, dict):  # a schedule serializes to a dict
            learning_rate = float(learning_rate)  # not numpy's float32: JSON must take it
        config.update(policy=policy_to_config(self.policy), jit_compile=self.jit_update,
                      learning_rate=learning_rate)
        return config


def _estimated_sum_of_squares(x: tf.Tensor, minus: tf.Tensor | None = None) -> tf.Tensor:
    """Σ (x − minus)², in float64, from `UPDATE_SAMPLE` evenly spaced coordinates of a larger
    tensor (exact would cost a pass over it: ~0.15x of Adam's whole step for the gradient's)."""
    size = x.shape.num_elements()
    scale = 1.0
    if size is not None and size > UPDATE_SAMPLE:
        stride = size // UPDATE_SAMPLE
        x, minus = (None if y is None else tf.reshape(y, [-1])[::stride] for y in (x, minus))
        scale = size / x.shape[0]
    x = tf.cast(x, tf.float64)
    if minus is not None:
        x -= tf.cast(minus, tf.float64)
    return tf.reduce_sum(tf.square(x)) * scale
