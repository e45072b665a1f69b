"""Li & Malik's learning problems: fit a small model to freshly sampled synthetic data.

Each instance draws its own data set, and its `f_star` / `x_star` come from `reference_minimum`
(L-BFGS to gradient norm 1e-10 from several starts). Logistic regression is strongly convex,
so that value is the global minimum; robust regression and the MLP are nonconvex, so it is the
best value found, an upper bound on the true minimum.

Li & Malik, "Learning to Optimize", ICLR 2017 (arXiv:1606.01885).
"""

import dataclasses

import numpy as np
import tensorflow as tf

from rl_optimizer.objectives import cache
from rl_optimizer.objectives.base import Objective, ObjectiveFamily, register
from rl_optimizer.objectives.networks import glorot_layers


def _penalised_cross_entropy(logits, params, x):
    """Mean binary cross-entropy over the sample axis plus ½·l2·‖x‖².

    softplus(z) − y·z is −log σ(z) for y = 1 and −log(1 − σ(z)) for y = 0, finite for any z.
    """
    nll = tf.reduce_mean(tf.nn.softplus(logits) - params["labels"] * logits, axis=-1)
    return nll + 0.5 * params["l2"] * tf.reduce_sum(x * x, axis=-1)


def _solved(objective: Objective, starts) -> Objective:
    """`objective` with its best L-BFGS minimum over `starts` as `f_star` and `x_star`."""
    x_star = cache.reference_minimizer(objective, starts)  # reference_minimum's, cached on disk
    # Re-evaluated, so that value(x_star) == f_star holds bit for bit.
    return dataclasses.replace(objective, f_star=objective.value(x_star), x_star=x_star)


def _with_bias_column(features: np.ndarray) -> np.ndarray:
    """Appends a column of ones, so the last weight is the bias."""
    return np.concatenate([features, np.ones((features.shape[0], 1))], axis=1)


def logistic_loss(params, x):
    """Cross-entropy of sigmoid(features · x) plus ½·l2·‖x‖²."""
    logits = tf.einsum("nmd,nd->nm", params["features"], x)
    return _penalised_cross_entropy(logits, params, x)


@register
@dataclasses.dataclass(frozen=True)
class LogisticRegression(ObjectiveFamily):
    """L2-regularised logistic regression on two Gaussian clusters (Li & Malik, 2016).

    Features ~ N(±½·separation·u, I) for a random unit vector u, labels balanced. The bias is
    regularised too, which makes the loss strongly convex: the minimum always exists and is unique.
    """

    name = "logistic_regression"
    dim: int = 10  # weights including the bias
    n_samples: int = 100
    l2: float = 5e-4
    separation: float = 2.0

    def __post_init__(self):
        self.check(2 <= self.dim <= 100, "dim", f"must be in [2, 100], got {self.dim}")
        self.check(2 <= self.n_samples <= 10_000, "n_samples",
                   f"must be in [2, 10000], got {self.n_samples}")
        self.check(self.l2 > 0, "l2", f"must be > 0 so that a minimum exists, got {self.l2}")
        self.check(self.separation >= 0, "separation", f"must be >= 0, got {self.separation}")

    def sample(self, seed):
        rng = np.random.default_rng(seed)
        labels = rng.permutation(np.arange(self.n_samples) % 2).astype(np.float64)
        u = rng.normal(size=self.dim - 1)
        means = np.outer(labels - 0.5, self.separation * u / np.linalg.norm(u))
        features = means + rng.normal(size=(self.n_samples, self.dim - 1))
        params = {"features": _with_bias_column(features), "labels": labels,
                  "l2": np.float64(self.l2)}
        x0 = np.zeros(self.dim)
        objective = Objective(self.name, logistic_loss, params, x0=x0, f_star=np.nan)
        return _solved(objective, [x0, rng.normal(size=self.dim)])


def geman_mcclure_loss(params, x):
    """mean(r² / (1 + r²)) of the residuals r = features · x − targets."""
    r = tf.einsum("nmd,nd->nm", params["features"], x) - params["targets"]
    return tf.reduce_mean(r * r / (1.0 + r * r), axis=-1)


@register
@dataclasses.dataclass(frozen=True)
class RobustLinearRegression(ObjectiveFamily):
    """Linear regression under the Geman–McClure loss, with outliers (Li & Malik, 2016).

    targets = features · w + b + noise·N(0, 1), and a fraction of them replaced by
    N(0, outlier_scale²) draws. The loss is nonconvex: `f_star` is the best of L-BFGS runs from
    x0, the generating weights, least squares and two random points.
    """

    name = "robust_linear_regression"
    dim: int = 5  # weights including the bias
    n_samples: int = 100
    noise: float = 0.1
    outlier_fraction: float = 0.1
    outlier_scale: float = 10.0

    def __post_init__(self):
        self.check(2 <= self.dim <= 100, "dim", f"must be in [2, 100], got {self.dim}")
        self.check(2 <= self.n_samples <= 10_000, "n_samples",
                   f"must be in [2, 10000], got {self.n_samples}")
        self.check(self.noise >= 0, "noise", f"must be >= 0, got {self.noise}")
        self.check(0 <= self.outlier_fraction < 0.5, "outlier_fraction",
                   f"must be in [0, 0.5), got {self.outlier_fraction}")
        self.check(self.outlier_scale > 0, "outlier_scale", f"must be > 0, got "
                   f"{self.outlier_scale}")

    def sample(self, seed):
        rng = np.random.default_rng(seed)
        features = _with_bias_column(rng.normal(size=(self.n_samples, self.dim - 1)))
        w = rng.normal(size=self.dim)
        targets = features @ w + self.noise * rng.normal(size=self.n_samples)
        outliers = rng.random(self.n_samples) < self.outlier_fraction
        targets[outliers] = self.outlier_scale * rng.normal(size=outliers.sum())
        x0 = np.zeros(self.dim)
        objective = Objective(self.name, geman_mcclure_loss,
                              {"features": features, "targets": targets}, x0=x0, f_star=np.nan)
        least_squares = np.linalg.lstsq(features, targets, rcond=None)[0]
        return _solved(objective, [x0, w, least_squares, *rng.normal(size=(2, self.dim))])


def _mlp_loss(params, x, activation):
    """Cross-entropy of a one-hidden-layer net, x = [W1 (in×h), b1 (h), w2 (h), b2], plus L2.

    Sizes come from dynamic shapes: the compiled function may be traced for unknown dims.
    """
    inputs = params["inputs"]
    d_in = tf.shape(inputs)[-1]
    hidden = (tf.shape(x)[-1] - 1) // (d_in + 2)
    w1 = tf.reshape(x[:, :d_in * hidden], [-1, d_in, hidden])
    b1 = x[:, d_in * hidden:(d_in + 1) * hidden]
    w2 = x[:, (d_in + 1) * hidden:-1]
    h = activation(tf.einsum("nmi,nih->nmh", inputs, w1) + b1[:, None, :])
    logits = tf.einsum("nmh,nh->nm", h, w2) + x[:, -1:]
    return _penalised_cross_entropy(logits, params, x)


def mlp_softplus_loss(params, x):
    return _mlp_loss(params, x, tf.nn.softplus)


def mlp_relu_loss(params, x):
    return _mlp_loss(params, x, tf.nn.relu)


_MLP_LOSSES = {"softplus": mlp_softplus_loss, "relu": mlp_relu_loss}


@register
@dataclasses.dataclass(frozen=True)
class MLPClassifier(ObjectiveFamily):
    """A 2 → hidden → 1 classifier on four Gaussian blobs, two per class (Li & Malik, 2016).

    Blob means ~ U[-spread, spread]², unit variance, inputs standardised. The problem is
    nonconvex, and the tiny L2 term makes a minimum exist: `f_star` is the best value found from
    three Glorot initialisations (x0 among them), an upper bound on the true minimum.

    The default activation is softplus, a smooth ReLU with the same dead zones (exponentially
    small gradients): with "relu", L-BFGS stalls on kinks, ~4x slower, at points whose gradient
    norm is still ~1e-2, so `f_star` is a looser bound (starts disagree by ~3%).
    """

    name = "mlp_classifier"
    hidden: int = 4
    n_samples: int = 100
    l2: float = 1e-3
    spread: float = 2.0
    activation: str = "softplus"

    def __post_init__(self):
        self.check(1 <= self.hidden <= 32, "hidden", f"must be in [1, 32], got {self.hidden}")
        self.check(2 <= self.n_samples <= 10_000, "n_samples",
                   f"must be in [2, 10000], got {self.n_samples}")
        self.check(self.l2 > 0, "l2", f"must be > 0 so that a minimum exists, got {self.l2}")
        self.check(self.spread >= 0, "spread", f"must be >= 0, got {self.spread}")
        self.check(self.activation in _MLP_LOSSES, "activation",
                   f"must be one of {sorted(_MLP_LOSSES)}, got {self.activation!r}")

    def glorot_init(self, rng: np.random.Generator, d_in: int = 2) -> np.ndarray:
        """Glorot-uniform weights and zero biases, flattened in `_mlp_loss`'s layout (a
        d_in → hidden → 1 net in `glorot_layers`' layout)."""
        return glorot_layers(rng, (d_in, self.hidden, 1))

    def sample(self, seed):
        rng = np.random.default_rng(seed)
        means = rng.uniform(-self.spread, self.spread, size=(4, 2))
        blob = rng.integers(4, size=self.n_samples)
        inputs = means[blob] + rng.normal(size=(self.n_samples, 2))
        # Centred inputs put every zero-bias unit's kink through the data: no unit starts dead.
        inputs = (inputs - inputs.mean(0)) / inputs.std(0)
        params = {"inputs": inputs, "labels": (blob % 2).astype(np.float64),
                  "l2": np.float64(self.l2)}
        x0 = self.glorot_init(rng)
        objective = Objective(self.name, _MLP_LOSSES[self.activation], params, x0=x0,
                              f_star=np.nan)
        return _solved(objective, [x0, self.glorot_init(rng), self.glorot_init(rng)])
