"""Random convex quadratics f(x) = ½ (x − x*)ᵀ A (x − x*) with a chosen condition number."""

import dataclasses

import numpy as np
import tensorflow as tf

from rl_optimizer.objectives.base import Objective, ObjectiveFamily, register


def quadratic_loss(params, x):
    d = x - params["x_star"]
    return 0.5 * tf.einsum("ni,nij,nj->n", d, params["A"], d)


@register
@dataclasses.dataclass(frozen=True)
class Quadratic(ObjectiveFamily):
    """A = Q diag(λ) Qᵀ with λ log-uniform in [1, condition], Q a random rotation; x* ~ N(0, I)."""

    name = "quadratic"
    dim: int = 10
    condition: float = 100.0
    x_scale: float = 1.0

    def __post_init__(self):
        self.check(2 <= self.dim <= 100, "dim", f"must be in [2, 100], got {self.dim}")
        self.check(1.0 <= self.condition <= 1e4, "condition", f"must be in [1, 1e4], got "
                   f"{self.condition}")
        self.check(self.x_scale > 0, "x_scale", f"must be > 0, got {self.x_scale}")

    def sample(self, seed):
        rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(rng.normal(size=(self.dim, self.dim)))
        eig = np.geomspace(1.0, self.condition, self.dim)
        a = (q * rng.permutation(eig)) @ q.T
        x_star = self.x_scale * rng.normal(size=self.dim)
        return Objective(self.name, quadratic_loss, {"A": 0.5 * (a + a.T), "x_star": x_star},
                         x0=np.zeros(self.dim), f_star=0.0, x_star=x_star)
