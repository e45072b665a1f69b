"""Run first-order optimizers on many objectives at once, T steps inside one compiled loop.

Every optimizer gets its own copy of every instance; all copies form one `ObjectiveBatch`, so
a step of the whole sweep (all instances × all optimizers) is one batched `value_and_grad`
plus each optimizer's update, and the step loop itself runs inside `tf.function`:

    specs = [OptimizerSpec("adam", 1e-2), OptimizerSpec("learned", policy=policy)]
    adam, learned = run_optimizers(specs, objectives, steps=1000)
    learned.steps_to(1e-3)          # [n_instances], inf where ε was never reached

Objectives are float64; the learned policy works in float32 (`LearnedPolicy.step`), so it sees
the gradient cast to float32 and its update is applied in float64.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from rl_optimizer import features
from rl_optimizer.evaluation import metrics
from rl_optimizer.objectives import Objective, ObjectiveBatch

LEARNED = "learned"
"""`OptimizerSpec.name` of a learned policy."""

KERAS_OPTIMIZERS: dict[str, Callable[[float], tf.keras.optimizers.Optimizer]] = {
    "sgd": lambda lr: tf.keras.optimizers.SGD(lr),
    "momentum": lambda lr: tf.keras.optimizers.SGD(lr, momentum=0.9),
    "nesterov": lambda lr: tf.keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
    "adam": lambda lr: tf.keras.optimizers.Adam(lr),
    "rmsprop": lambda lr: tf.keras.optimizers.RMSprop(lr),
    "adagrad": lambda lr: tf.keras.optimizers.Adagrad(lr),
}
"""The stock tf.keras optimizers (default hyperparameters but the learning rate), by name."""

DEFAULT_CHUNK = 100
"""Steps per compiled call: the progress bar moves this often."""

MINIBATCH_SEED = 20_170_000
"""First word of the minibatch seed [MINIBATCH_SEED, step] of evaluation runs (distinct from
the training environment's seeds)."""


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """One optimizer to run: a `KERAS_OPTIMIZERS` name with its learning rate, or a policy.

    Attributes:
      name: a key of `KERAS_OPTIMIZERS`, or `LEARNED`.
      learning_rate: the Keras optimizer's learning rate (unused for a policy).
      policy: the `LearnedPolicy` when `name == LEARNED`.
      label: how results name it; defaults to `name`.
    """

    name: str
    learning_rate: float | None = None
    policy: object | None = None
    label: str | None = None

    def __post_init__(self):
        if self.name == LEARNED:
            if self.policy is None:
                raise ValueError("OptimizerSpec('learned') needs a policy")
        elif self.name not in KERAS_OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.name!r}; expected one of "
                             f"{sorted(KERAS_OPTIMIZERS)} or {LEARNED!r}")
        elif not (self.learning_rate and self.learning_rate > 0):
            raise ValueError(f"optimizer {self.name!r} needs a learning rate > 0, got "
                             f"{self.learning_rate}")
        if self.label is None:
            object.__setattr__(self, "label", self.name)


@dataclasses.dataclass(frozen=True)
class Trajectories:
    """One optimizer's runs on n instances.

    Attributes:
      optimizer: the optimizer's label.
      gaps: normalized gaps [steps + 1, n]; row t is after t steps (row 0 is all ones).
      final_x: each instance's last point.
      learning_rate: the learning rate used, if any.
      evaluations: [steps + 1, n] value-and-gradient evaluations spent to know row t, counting
        x_0's; None means one per step (t + 1), as for every first-order optimizer.
      in_global_basin: [n] whether the run ended in the global minimum's basin, where the
        family defines basins (multimodal families); else None.
    """

    optimizer: str
    gaps: np.ndarray
    final_x: tuple[np.ndarray, ...]
    learning_rate: float | None = None
    evaluations: np.ndarray | None = None
    in_global_basin: np.ndarray | None = None

    @property
    def steps(self) -> int:
        return self.gaps.shape[0] - 1

    @property
    def n(self) -> int:
        return self.gaps.shape[1]

    @property
    def final_gap(self) -> np.ndarray:
        return self.gaps[-1]

    @property
    def diverged(self) -> np.ndarray:
        return metrics.diverged(self.gaps)

    def steps_to(self, eps: float) -> np.ndarray:
        """First step with gap ≤ eps per instance (inf if never): `metrics.steps_to_gap`."""
        return metrics.steps_to_gap(self.gaps, eps)

    def success_steps(self, eps: float) -> np.ndarray:
        """`steps_to`, with diverged runs as not converged: what comparisons use."""
        return metrics.success_steps(self.gaps, eps)

    def evaluations_to(self, eps: float) -> np.ndarray:
        """Function-and-gradient evaluations until the step that reached eps (inf if never)."""
        steps = self.steps_to(eps)
        if self.evaluations is None:
            return steps + 1
        done = np.isfinite(steps)
        idx = np.where(done, steps, 0).astype(int)
        return np.where(done, self.evaluations[idx, np.arange(self.n)], metrics.NOT_CONVERGED)


class _Loop(tf.Module):
    """Variables, optimizers and the compiled step loop of one `run_optimizers` call."""

    def __init__(self, specs: Sequence[OptimizerSpec], batch: ObjectiveBatch, n_coords: int):
        super().__init__()
        self.specs, self.batch = list(specs), batch
        x0 = batch.initial_point()
        self.points = [tf.Variable(x0[i * n_coords:(i + 1) * n_coords], dtype=tf.float64)
                       for i in range(len(specs))]
        # Each instance is one tensor for a policy's per-tensor features.
        n_instances = len(batch.objectives) // len(specs)
        self.segments = features.Segments(
            tf.constant(batch.instance_of_coordinate[:n_coords], tf.int32), n_instances)
        self.updates = [self._make_update(spec, var) for spec, var in zip(specs, self.points)]
        self.run = tf.function(self._run)

    def _make_update(self, spec: OptimizerSpec, var: tf.Variable) -> Callable:
        if spec.name != LEARNED:
            optimizer = KERAS_OPTIMIZERS[spec.name](spec.learning_rate)
            optimizer.build([var])  # slots exist before tracing: no variables made in the loop
            return lambda grad: optimizer.apply_gradients([(grad, var)])
        state = [tf.Variable(s) for s in features.init_state(var.shape)]

        def update(grad):
            step, new_state = spec.policy.step(tf.cast(grad, tf.float32), features.State(*state),
                                               self.segments)
            var.assign_add(tf.cast(step, tf.float64))
            for v, s in zip(state, new_state):
                v.assign(s)
        return update

    def values(self) -> tf.Tensor:
        return self.batch.tf_value_and_grad(tf.concat(self.points, 0))[0]

    def _run(self, start, n_steps):
        recorded = tf.TensorArray(tf.float64, size=n_steps)
        for t in tf.range(n_steps):
            # Minibatch gradients (stochastic objectives) drawn by step: every run repeats.
            seed = tf.stack([tf.constant(MINIBATCH_SEED, tf.int64), tf.cast(start + t, tf.int64)])
            values, grad = self.batch.tf_value_and_grad(tf.concat(self.points, 0), seed)
            recorded = recorded.write(t, values)
            for update, g in zip(self.updates, tf.split(grad, len(self.points))):
                update(g)
        return recorded.stack()


class _DropRetracingWarnings(logging.Filter):
    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def expected_retracing():
    """Every run traces anew (new variables, a new batch structure): TF's warning about that
    is expected noise here, so it is dropped while a run traces; other warnings pass."""
    drop = _DropRetracingWarnings()
    tf.get_logger().addFilter(drop)
    try:
        yield
    finally:
        tf.get_logger().removeFilter(drop)


def run_optimizers(specs: Sequence[OptimizerSpec], objectives: Sequence[Objective], steps: int,
                   *, chunk: int = DEFAULT_CHUNK,
                   progress: Callable[[int], object] | None = None) -> list[Trajectories]:
    """Runs every optimizer for `steps` steps from each objective's x0, all in one batch.

    Args:
      specs: the optimizers; each gets its own copy of every objective.
      objectives: the instances (any families; same-family instances are stacked).
      steps: T, the steps per run.
      chunk: steps per compiled call (`progress` is called after each with the steps done).
      progress: e.g. a tqdm bar's `update`.

    Returns:
      One `Trajectories` per spec, in order.
    """
    if not specs or not objectives:
        raise ValueError("run_optimizers needs at least one optimizer and one objective")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    with expected_retracing():
        one = ObjectiveBatch(objectives)
        batch = ObjectiveBatch(list(objectives) * len(specs))
        loop = _Loop(specs, batch, one.size)
        values = []
        for start in range(0, steps, chunk):
            n = min(chunk, steps - start)
            values.append(loop.run(tf.constant(start), tf.constant(n)).numpy())
            if progress is not None:
                progress(n)
        values.append(loop.values().numpy()[None])
    with np.errstate(invalid="ignore", over="ignore"):
        gaps = batch.normalized_gap(np.concatenate(values))
    return [_trajectories(spec, gaps[:, i * len(objectives):(i + 1) * len(objectives)],
                          loop.points[i].numpy(), one.offsets) for i, spec in enumerate(specs)]


def _trajectories(spec: OptimizerSpec, gaps: np.ndarray, x: np.ndarray,
                  offsets: np.ndarray) -> Trajectories:
    final_x = tuple(x[a:b] for a, b in zip(offsets[:-1], offsets[1:]))
    lr = None if spec.name == LEARNED else float(spec.learning_rate)
    return Trajectories(spec.label, gaps, final_x, learning_rate=lr)


def run_optimizer(spec: OptimizerSpec, objectives: Sequence[Objective], steps: int,
                  **kwargs) -> Trajectories:
    """`run_optimizers` for a single optimizer."""
    return run_optimizers([spec], objectives, steps, **kwargs)[0]
