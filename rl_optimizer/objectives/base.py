"""The objective protocol: families that sample problems with known global minima.

An `ObjectiveFamily` is a frozen dataclass of parameters whose `sample(seed)` builds an
`Objective` deterministically (learned_optimization's `TaskFamily.sample`). Every objective is
written once, as a TensorFlow loss over a stack of instances,

    loss_fn(params, x) -> f      params: {name: [n, ...]}, x: [n, dim], f: [n]

and everything else is derived from that one formula: the float64 `value_and_grad` used by the
reference solver and SciPy baselines, and `ObjectiveBatch`, which evaluates many instances (of
several families) at once for the environment and the evaluation sweep.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import ClassVar, NamedTuple

import numpy as np
import scipy.optimize
import tensorflow as tf
import threadpoolctl

LossFn = Callable[[Mapping[str, tf.Tensor], tf.Tensor], tf.Tensor]

# Disjoint seed ranges: training never sees a validation or test instance, and baselines are
# tuned on validation instances only.
SPLITS: Mapping[str, range] = {
    "train": range(0, 1_000_000),
    "validation": range(1_000_000, 1_100_000),
    "test": range(1_100_000, 1_200_000),
}

_REGISTRY: dict[str, type[ObjectiveFamily]] = {}


def seeds(split: str, n: int) -> list[int]:
    """The first `n` seeds of a split ("train", "validation" or "test")."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
    if not 0 <= n <= len(SPLITS[split]):
        raise ValueError(f"n={n} must be in [0, {len(SPLITS[split])}] for split {split!r}")
    return list(SPLITS[split][:n])


@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
    """One problem instance: a loss with a known global minimum value.

    Attributes:
      family: name of the family that sampled it.
      loss_fn: the family's TensorFlow loss, `loss_fn(params, x) -> f` over stacked instances.
      params: this instance's data (float64 arrays, no instance axis).
      x0: the starting point every optimizer uses.
      f_star: the global minimum value (for nonconvex learned models: the best value found).
      x_star: a minimizer, or None where only the value is known.
      batch_size: for a loss that is a mean over samples, the minibatch size of a stochastic
        gradient (`ObjectiveBatch.tf_value_and_grad(x, seed)`); None: always the full batch.
      sample_keys: the params whose first axis is the sample axis (what a minibatch draws).

    `value_and_grad`, `value` and the gap are always over the full batch: a stochastic
    objective is judged by its true loss, as a training loss is.
    """

    family: str
    loss_fn: LossFn
    params: Mapping[str, np.ndarray]
    x0: np.ndarray
    f_star: float
    x_star: np.ndarray | None = None
    batch_size: int | None = None
    sample_keys: tuple[str, ...] = ()

    @property
    def dim(self) -> int:
        return int(self.x0.shape[0])

    def initial_point(self) -> np.ndarray:
        return self.x0.copy()

    @functools.cached_property
    def _tf_params(self) -> dict[str, tf.Tensor]:
        return {k: tf.constant(np.asarray(v, np.float64)[None]) for k, v in self.params.items()}

    def value_and_grad(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """f(x) and its gradient in float64."""
        x = np.asarray(x, np.float64)
        if x.shape != (self.dim,):
            raise ValueError(f"x has shape {x.shape}, expected ({self.dim},) for {self.family}")
        f, g = compiled_value_and_grad(self.loss_fn)(self._tf_params, tf.constant(x[None]))
        return float(f[0]), g.numpy()[0]

    def value(self, x: np.ndarray) -> float:
        return self.value_and_grad(x)[0]

    def normalized_gap(self, f: np.ndarray | float) -> np.ndarray:
        """(f - f*) / (f(x0) - f*): 1 at the start, 0 at the global minimum."""
        return (np.asarray(f) - self.f_star) / (self.value(self.x0) - self.f_star)


@functools.cache
def _rescaled_loss(loss_fn: LossFn) -> LossFn:
    """c·loss_fn(x / s) with per-instance scales s = params["x_scale"], c = params["loss_scale"]."""

    def rescaled(params, x):
        return params["loss_scale"] * loss_fn(params, x / params["x_scale"][:, None])

    rescaled.__name__ = rescaled.__qualname__ = f"rescaled_{loss_fn.__name__}"
    return rescaled


def rescaled(objective: Objective, x_scale: float, loss_scale: float) -> Objective:
    """The same problem with parameters measured in units of 1/x_scale and loss times loss_scale.

    f'(x') = loss_scale·f(x' / x_scale), x0' = x_scale·x0, so f'* = loss_scale·f* and the
    normalized gap of every point is unchanged: only the scale an optimizer must find differs.
    """
    if not (x_scale > 0 and loss_scale > 0):
        raise ValueError(f"x_scale and loss_scale must be > 0, got {x_scale}, {loss_scale}")
    params = {**objective.params, "x_scale": np.float64(x_scale),
              "loss_scale": np.float64(loss_scale)}
    x_star = None if objective.x_star is None else objective.x_star * x_scale
    return dataclasses.replace(objective, loss_fn=_rescaled_loss(objective.loss_fn),
                               params=params, x0=objective.x0 * x_scale,
                               f_star=objective.f_star * loss_scale, x_star=x_star)


@functools.cache
def compiled_value_and_grad(loss_fn: LossFn) -> Callable:
    """One compiled (f, df/dx) per loss; traces once per dtype and shape."""

    @tf.function(reduce_retracing=True, autograph=False)
    def value_and_grad(params, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            f = loss_fn(params, x)
        # Instances are independent, so the gradient of the sum is each instance's gradient.
        return f, tape.gradient(f, x)

    return value_and_grad


@dataclasses.dataclass(frozen=True)
class ObjectiveFamily(abc.ABC):
    """A distribution over objectives; subclasses are frozen dataclasses of their parameters."""

    name: ClassVar[str]

    @abc.abstractmethod
    def sample(self, seed: int) -> Objective:
        """The objective for `seed`; the same seed always gives the same objective."""

    @staticmethod
    def check(condition: bool, param: str, message: str) -> None:
        """Raises ValueError naming `param` when `condition` is false."""
        if not condition:
            raise ValueError(f"invalid parameter {param!r}: {message}")

    def check_range(self, param: str, low, high) -> None:
        """Raises ValueError naming `param` unless low <= its value <= high."""
        value = getattr(self, param)
        self.check(low <= value <= high, param, f"must be in [{low}, {high}], got {value}")


def register(cls: type[ObjectiveFamily]) -> type[ObjectiveFamily]:
    """Class decorator adding a family to `list_families()` / `get_family()`."""
    _REGISTRY[cls.name] = cls
    return cls


def list_families() -> list[str]:
    return sorted(_REGISTRY)


def get_family(name: str, **params) -> ObjectiveFamily:
    """The family `name` with `params` overriding its defaults."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown objective family {name!r}; available: {list_families()}")
    cls = _REGISTRY[name]
    allowed = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for family {name!r}; allowed: {allowed}")
    return cls(**params)


def reference_minimum(
    value_and_grad: Callable[[np.ndarray], tuple[float, np.ndarray]],
    starts: Sequence[np.ndarray],
    gtol: float = 1e-10,
) -> tuple[float, np.ndarray]:
    """The best L-BFGS minimum over several starts, run to gradient norm `gtol`.

    This is how Li & Malik's learning families get their `f_star`: exact for the convex ones,
    and the best value found (a documented upper bound on the true minimum) for the MLP.
    """
    best = None
    # L-BFGS-B calls BLAS on tiny matrices; extra BLAS threads only contend with TensorFlow's
    # and made sampling ~10x slower on 2 cores.
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        for x in starts:
            res = scipy.optimize.minimize(
                value_and_grad, np.asarray(x, np.float64), jac=True, method="L-BFGS-B",
                options={"gtol": gtol, "ftol": 0.0, "maxiter": 20_000, "maxcor": 30},
            )
            if best is None or res.fun < best.fun:
                best = res
    return float(best.fun), np.asarray(best.x)


class ObjectiveBatch:
    """Many objectives as one flat coordinate vector, evaluated in one compiled call.

    Instances of the same family with equal parameter shapes are stacked into one group, so a
    step over hundreds of instances is one TensorFlow call running a handful of batched losses.
    Batches with the same structure (families, dims, group sizes) share one traced function, so
    a new episode's batch costs no retracing. Coordinates are laid out instance after instance,
    in the order given (`offsets[i]:offsets[i + 1]`).
    """

    def __init__(self, objectives: Sequence[Objective], dtype: tf.DType = tf.float64):
        if not objectives:
            raise ValueError("ObjectiveBatch needs at least one objective")
        self.objectives = list(objectives)
        self.dtype = dtype
        dims = np.array([o.dim for o in self.objectives])
        self.offsets = np.concatenate([[0], np.cumsum(dims)])
        self.size = int(self.offsets[-1])
        # Which instance each coordinate belongs to: the per-coordinate reward's lookup table.
        self.instance_of_coordinate = np.repeat(np.arange(len(dims)), dims)
        self.f_star = np.array([o.f_star for o in self.objectives])
        # `structure` is hashable and equal across batches of the same make-up; `tensors` are
        # this batch's data. Code compiling its own step around the objectives takes both and
        # calls `batch_value_and_grad(structure)(*tensors, x)`, as `tf_value_and_grad` does.
        self.structure, self.tensors = self._make_groups(dtype)
        self.f0 = self.value_and_grad(self.initial_point())[0]

    def _make_groups(self, dtype):
        by_key: dict = {}
        for i, o in enumerate(self.objectives):
            shapes = tuple(sorted((k, np.shape(v)) for k, v in o.params.items()))
            key = (o.loss_fn, o.dim, shapes, o.batch_size, tuple(o.sample_keys))
            by_key.setdefault(key, []).append(i)
        structure, params, members, coords = [], [], [], []
        for (loss_fn, dim, _, batch_size, sample_keys), group in by_key.items():
            structure.append(GroupStructure(loss_fn, dim, len(group), batch_size, sample_keys))
            params.append({k: tf.constant(np.stack([self.objectives[i].params[k] for i in group]),
                                          dtype) for k in self.objectives[group[0]].params})
            members.append(tf.constant(group, tf.int32))
            coords.append(tf.constant(np.concatenate(
                [np.arange(self.offsets[i], self.offsets[i + 1]) for i in group]), tf.int32))
        return tuple(structure), (params, members, coords)

    def initial_point(self) -> np.ndarray:
        return np.concatenate([o.x0 for o in self.objectives])

    def tf_value_and_grad(self, x: tf.Tensor, seed=None) -> tuple[tf.Tensor, tf.Tensor]:
        """Values [n_objectives] and flat gradient [size] as tensors; usable inside tf.function.

        With `seed` (an int64 tensor [2], e.g. [run, step]), objectives with a `batch_size` give
        the gradient of a minibatch drawn by that seed; values are always full-batch losses.
        """
        return batch_value_and_grad(self.structure)(*self.tensors, tf.cast(x, self.dtype), seed)

    @property
    def stochastic(self) -> bool:
        """Whether some objective draws minibatch gradients when given a seed."""
        return any(g.batch_size for g in self.structure)

    def value_and_grad(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values [n_objectives] and the flat gradient [size] at the flat point `x`."""
        x = np.asarray(x)
        if x.shape != (self.size,):
            raise ValueError(f"x has shape {x.shape}, expected ({self.size},)")
        f, g = self.tf_value_and_grad(tf.constant(x, self.dtype))
        return f.numpy(), g.numpy()

    def normalized_gap(self, values: np.ndarray) -> np.ndarray:
        """(f - f*) / (f(x0) - f*) per instance."""
        return (values - self.f_star) / (self.f0 - self.f_star)


class GroupStructure(NamedTuple):
    """One group of an `ObjectiveBatch`: same loss, dimension, data shapes and minibatching."""

    loss_fn: LossFn
    dim: int
    instances: int
    batch_size: int | None
    sample_keys: tuple[str, ...]


def _minibatch(params: dict, group: GroupStructure, seed, group_index: int) -> dict:
    """`params` with `group.batch_size` samples (drawn with replacement) per instance."""
    n_samples = tf.shape(params[group.sample_keys[0]])[1]
    seed = tf.cast(seed, tf.int64) + tf.constant([0, 7919], tf.int64) * group_index
    rows = tf.random.stateless_uniform([group.instances, group.batch_size], seed=seed,
                                       maxval=n_samples, dtype=tf.int32)
    return {k: tf.gather(v, rows, batch_dims=1) if k in group.sample_keys else v
            for k, v in params.items()}


@functools.cache
def batch_value_and_grad(structure: tuple[GroupStructure, ...]) -> Callable:
    """One compiled function per batch structure (see `ObjectiveBatch.tf_value_and_grad`)."""

    @tf.function(reduce_retracing=True, autograph=False)
    def value_and_grad(params, members, coords, x, seed=None):
        values, grads = [], []
        for i, (group, p, c) in enumerate(zip(structure, params, coords)):
            xg = tf.reshape(tf.gather(x, c), [-1, group.dim])
            stochastic = group.batch_size is not None and seed is not None
            with tf.GradientTape() as tape:
                tape.watch(xg)
                f = group.loss_fn(_minibatch(p, group, seed, i) if stochastic else p, xg)
            grads.append(tf.reshape(tape.gradient(f, xg), [-1]))
            values.append(group.loss_fn(p, xg) if stochastic else f)
        return tf.dynamic_stitch(members, values), tf.dynamic_stitch(coords, grads)

    return value_and_grad
