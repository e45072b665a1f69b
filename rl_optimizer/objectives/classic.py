"""Analytic test functions whose global minimum is known exactly: f* = 0 at a known x*.

Instances differ by a seeded start (and, for the multimodal ones, a seeded shift of the
minimum). The multimodal families and the saddle also answer `in_global_basin(objective, x)`:
whether `x` has escaped to where plain local descent reaches the global minimum, the success
criterion for problems where a final gap alone does not tell a trapped run from a slow one.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from rl_optimizer.objectives.base import Objective, ObjectiveFamily, register


def _check_dim(family: ObjectiveFamily, low: int) -> None:
    family.check(low <= family.dim <= 1000, "dim", f"must be in [{low}, 1000], got {family.dim}")


def rosenbrock_loss(params, x):
    del params  # Every instance is the same function; only the start differs.
    a, b = x[:, :-1], x[:, 1:]
    return tf.reduce_sum(100.0 * tf.square(b - a * a) + tf.square(1.0 - a), axis=-1)


@register
@dataclasses.dataclass(frozen=True)
class Rosenbrock(ObjectiveFamily):
    """Σᵢ 100 (x_{i+1} − xᵢ²)² + (1 − xᵢ)², f* = 0 at x* = 1; x0 ~ U[-init_scale, init_scale]ᵈ.

    Rosenbrock, "An automatic method for finding the greatest or least value of a function",
    The Computer Journal 3(3), 1960; the n-dimensional chained form.
    """

    name = "rosenbrock"
    dim: int = 10
    init_scale: float = 2.0

    def __post_init__(self):
        _check_dim(self, 2)
        self.check(self.init_scale > 0, "init_scale", f"must be > 0, got {self.init_scale}")

    def sample(self, seed):
        x0 = np.random.default_rng(seed).uniform(-self.init_scale, self.init_scale, self.dim)
        return Objective(self.name, rosenbrock_loss, {}, x0=x0, f_star=0.0,
                         x_star=np.ones(self.dim))


def saddle_loss(params, x):
    z = tf.einsum("nij,ni->nj", params["rotation"], x - params["center"])
    u = tf.square(z[:, 0] / params["radius"])
    two_pi_u = 2.0 * np.pi * u
    s = 1.0 - u - (1.0 - params["flatness"]) * (
        2.0 / (3.0 * np.pi) * tf.sin(two_pi_u) + 1.0 / (12.0 * np.pi) * tf.sin(2.0 * two_pi_u))
    return 0.5 * tf.reduce_sum(params["curvature"] * z * z, axis=-1) + s * s


@register
@dataclasses.dataclass(frozen=True)
class Saddle(ObjectiveFamily):
    """A strict saddle at the start, then a plateau, then the global minimum.

    In rotated coordinates z = Qᵀ(x − c), with e = z₀, u = e² / radius² and δ = flatness,

        f(x) = ½ Σᵢ λᵢ zᵢ² + s(u)²,   λ₀ = 0, λᵢ log-uniform in [1, 10],
        s(u) = 1 − u − (1 − δ) (2/(3π) sin 2πu + 1/(12π) sin 4πu),

    so s'(u) = −δ − (1 − δ)·(8/3)·cos⁴(πu) ≤ −δ: s falls from 1 to its only zero at u = 1.
    Hence f* = 0 at x* = c ± radius·Q[:, 0] (x_star is the + one) and nowhere else. At x = c the
    gradient vanishes and the Hessian along Q[:, 0] is −4(8 − 5δ)/(3 radius²), so c is a strict
    saddle; x0 = c + perturbation·N(0, I). Around u = ½ (and ³⁄₂) |s'| ≈ δ: a plateau where the
    gradient is ~δ times its size elsewhere. Q, c ~ N(0, I) and λ are drawn per seed.
    """

    name = "saddle"
    dim: int = 10
    radius: float = 2.0
    flatness: float = 1e-3
    perturbation: float = 1e-3

    def __post_init__(self):
        _check_dim(self, 2)
        self.check(self.radius > 0, "radius", f"must be > 0, got {self.radius}")
        self.check(0 < self.flatness < 1, "flatness", f"must be in (0, 1), got {self.flatness}")
        self.check(self.perturbation > 0, "perturbation", f"must be > 0, got "
                   f"{self.perturbation}")

    def sample(self, seed):
        rng = np.random.default_rng(seed)
        rotation, _ = np.linalg.qr(rng.normal(size=(self.dim, self.dim)))
        center = rng.normal(size=self.dim)
        curvature = np.concatenate([[0.0], np.geomspace(1.0, 10.0, self.dim - 1)])
        params = {"rotation": rotation, "center": center, "curvature": curvature,
                  "radius": np.float64(self.radius), "flatness": np.float64(self.flatness)}
        x0 = center + self.perturbation * rng.normal(size=self.dim)
        return Objective(self.name, saddle_loss, params, x0=x0, f_star=0.0,
                         x_star=center + self.radius * rotation[:, 0])

    def in_global_basin(self, objective: Objective, x: np.ndarray) -> bool:
        """Past the plateau: ¾ < u < 5⁄4, where no shelf is left between x and a minimizer."""
        e = objective.params["rotation"][:, 0] @ (np.asarray(x) - objective.params["center"])
        return bool(abs((e / objective.params["radius"]) ** 2 - 1.0) < 0.25)


def rastrigin_loss(params, x):
    # Σ z² + 10 (1 − cos 2πz) rather than 10d + Σ z² − 10 cos 2πz: exactly 0 at z = 0.
    z = x - params["shift"]
    return tf.reduce_sum(z * z + 10.0 * (1.0 - tf.cos(2.0 * np.pi * z)), axis=-1)


@dataclasses.dataclass(frozen=True)
class _ShiftedMultimodal(ObjectiveFamily):
    """A multimodal loss of z = x − shift with f* = 0 at z = 0 and local minima near z ∈ ℤᵈ."""

    loss_fn = None  # set by subclasses
    dim: int = 10
    shift_scale: float = 2.0
    init_scale: float = 5.0

    def __post_init__(self):
        _check_dim(self, 1)
        self.check(self.shift_scale >= 0, "shift_scale", f"must be >= 0, got {self.shift_scale}")
        self.check(self.init_scale > 0, "init_scale", f"must be > 0, got {self.init_scale}")

    def sample(self, seed):
        rng = np.random.default_rng(seed)
        shift = rng.uniform(-self.shift_scale, self.shift_scale, self.dim)
        x0 = rng.uniform(-self.init_scale, self.init_scale, self.dim)
        return Objective(self.name, type(self).loss_fn, {"shift": shift}, x0=x0, f_star=0.0,
                         x_star=shift)

    def in_global_basin(self, objective: Objective, x: np.ndarray) -> bool:
        """Within the unit cell around x*: the nearest local minima sit about 1 away per axis."""
        return bool(np.max(np.abs(np.asarray(x) - objective.x_star)) < 0.5)


@register
@dataclasses.dataclass(frozen=True)
class Rastrigin(_ShiftedMultimodal):
    """Σᵢ zᵢ² + 10 (1 − cos 2πzᵢ), z = x − shift, shift ~ U[-shift_scale, shift_scale]ᵈ.

    f* = 0 at x* = shift, with ~10ᵈ local minima near the integer lattice around it;
    x0 ~ U[-init_scale, init_scale]ᵈ (Rastrigin, 1974; the form of Mühlenbein et al., 1991).
    """

    name = "rastrigin"
    loss_fn = rastrigin_loss
    init_scale: float = 5.12


def ackley_loss(params, x):
    z = x - params["shift"]
    # A smoothed norm: √(mean z² + ε²) − ε is differentiable at z = 0 and exactly 0 there
    # (ε² = 2⁻²⁰ is exact, so is its square root).
    eps = 2.0 ** -10
    rho = tf.sqrt(tf.reduce_mean(z * z, axis=-1) + eps * eps) - eps
    mean_cos = tf.reduce_mean(tf.cos(2.0 * np.pi * z), axis=-1)
    # expm1 makes both terms exactly 0 at z = 0, where a + e − a − e would leave rounding error.
    return -20.0 * tf.math.expm1(-0.2 * rho) - np.e * tf.math.expm1(mean_cos - 1.0)


@register
@dataclasses.dataclass(frozen=True)
class Ackley(_ShiftedMultimodal):
    """20 (1 − exp(−0.2 ρ(z))) + e (1 − exp(mean cos 2πz − 1)), z = x − shift.

    ρ(z) = √(mean z² + ε²) − ε with ε = 2⁻¹⁰ is the root-mean-square of z smoothed at 0. Both
    terms are ≥ 0 and vanish only at z = 0, so f* = 0 at x* = shift exactly; local minima sit
    near the integer lattice. x0 ~ U[-init_scale, init_scale]ᵈ (Ackley, 1987).
    """

    name = "ackley"
    loss_fn = ackley_loss
