"""Keras networks for choosing among trained policies: neither the suite nor the holdout.

    python -m rl_optimizer.benchmarks.keras_validation [--policy default|nominal|PATH]
        [--tasks a,b] [--seeds 0,1] [--tuned]

Training keeps the actor that scores best on its validation instances: the analytic families
and small teacher MLPs and RNNs of a few hundred coordinates, no Keras model. These eleven
models are a validation set of what users train, for choosing between policies that training
has already selected, before any of them meets the suite (`rl-optimizer evaluate`) or the
holdout (`keras_holdout`), which stay the test: other data (made in code or bundled with
scikit-learn; never digits, breast cancer, wine, iris, diabetes, moons, nor the suite's
sequences and tokens), other models (BatchNorm in an MLP and a CNN, Dropout, SimpleRNN, an
Embedding with max pooling, an autoencoder, a regression, ELU, a first layer fed
unstandardised inputs, one fed features of mixed scale up to the thousands, a deep Dropout
MLP fed min-max-scaled inputs), and the same comparison as `keras_holdout` (`model.fit`,
batch 32, final training loss; `Adam()`, and with --tuned learning-rate-tuned Adam).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import rl_optimizer  # noqa: F401  (quiets TensorFlow's start-up banner)
from rl_optimizer.benchmarks.keras_holdout import _dense, compare
from rl_optimizer.evaluation import keras_tasks as kt
from rl_optimizer.evaluation.keras_tasks import Task

_L = tf.keras.layers


def _standardized_split(x, y, seed, stratify=True):
    x_train, y_train, x_test, y_test = kt._xy_split(x.astype(np.float32), y, seed, stratify)
    x_train, x_test = kt._standardized(x_train, x_test)
    return x_train, y_train, x_test, y_test


def _circles(seed):
    from sklearn.datasets import make_circles

    x, y = make_circles(1000, noise=0.1, factor=0.5, random_state=100 + seed)
    return _standardized_split(x, y, seed)


def _friedman(seed):
    from sklearn.datasets import make_friedman1

    x, y = make_friedman1(1000, noise=1.0, random_state=100 + seed)
    return _standardized_split(x, y.astype(np.float32), seed, stratify=False)


def _four_classes(seed):
    from sklearn.datasets import make_classification

    x, y = make_classification(1500, 20, n_informative=10, n_classes=4,
                               random_state=100 + seed)
    return _standardized_split(x, y, seed)


def _raw_features(seed):
    """Four classes of 20 features, unstandardised: each feature scaled by 0.1…100 and offset
    by 0.1…100, as raw measurements are (a first layer whose coordinates' gradients differ in
    scale for a reason that is not stale history; `Adam()` still trains it)."""
    from sklearn.datasets import make_classification

    x, y = make_classification(1500, 20, n_informative=10, n_classes=4,
                               random_state=200 + seed)
    rng = np.random.default_rng(6000 + seed)
    x = x * 10 ** rng.uniform(-1, 2, 20) + 10 ** rng.uniform(-1, 2, 20)
    return kt._xy_split(x.astype(np.float32), y, seed)


def _mixed_scale_features(seed):
    """Three classes of 13 features at mixed scales, as raw measurements are (wine's run from
    0.1 to 1000): each feature's mean 0.1…1000 and its spread 5–40% of its mean, so a few
    features in the hundreds or thousands dominate the first layer. 300 samples."""
    from sklearn.datasets import make_classification

    x, y = make_classification(300, 13, n_informative=10, n_redundant=2, n_classes=3,
                               class_sep=2.0, random_state=700 + seed)
    rng = np.random.default_rng(7000 + seed)
    mean, spread = 10 ** rng.uniform(-1, 3, 13), rng.uniform(0.05, 0.4, 13)
    return kt._xy_split((x * mean * spread + mean).astype(np.float32), y, seed)


def _min_max_features(seed):
    """Ten classes of 64 features, each min-max scaled to [0, 1] (as `MinMaxScaler` leaves
    them, and as image pixels are): inputs that are not centred, whose first-layer steps move
    all of a unit's weights together."""
    from sklearn.datasets import make_classification

    x, y = make_classification(1800, 64, n_informative=24, n_redundant=16, n_classes=10,
                               n_clusters_per_class=2, class_sep=2.0, random_state=300 + seed)
    x = (x - x.min(axis=0)) / (x.max(axis=0) - x.min(axis=0))
    return kt._xy_split(x.astype(np.float32), y, seed)


def _blobs(seed):
    from sklearn.datasets import make_blobs

    x, y = make_blobs(1000, 10, centers=5, cluster_std=3.0, random_state=100 + seed)
    return _standardized_split(x, y, seed)


def _swiss_roll(seed):
    from sklearn.datasets import make_swiss_roll

    x, _ = make_swiss_roll(1000, noise=0.1, random_state=100 + seed)
    x_train, _, x_test, _ = _standardized_split(x, np.zeros(len(x)), seed, stratify=False)
    return x_train, x_train, x_test, x_test


def _bars(seed, n=1200, size=12):
    """12x12 images of a horizontal, vertical or diagonal bar at a random place, in noise."""
    rng = np.random.default_rng(3000 + seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(scale=0.5, size=(n, size, size)).astype(np.float32)
    at = rng.integers(2, size - 2, n)
    line = np.arange(size)
    for i in range(n):
        if y[i] == 0:
            x[i, at[i], :] += 1.0
        elif y[i] == 1:
            x[i, :, at[i]] += 1.0
        else:
            x[i, line, (line + at[i]) % size] += 1.0
    return kt._xy_split(x[..., None], y, seed)


def _sequences(seed, n=1200, steps=20, channels=3):
    """Noisy sequences labelled by the sign of Σ_t x0·x1: a product to integrate over time."""
    rng = np.random.default_rng(4000 + seed)
    x = rng.normal(size=(n, steps, channels)).astype(np.float32)
    return kt._xy_split(x, ((x[:, :, 0] * x[:, :, 1]).sum(1) > 0).astype(np.int64), seed)


def _tokens(seed, n=2000, length=20, vocab=500):
    """Token sequences labelled by whether one of twenty trigger tokens (100–119) occurs
    (about half of them). Sparse gradients (`tf.IndexedSlices`)."""
    rng = np.random.default_rng(5000 + seed)
    x = rng.integers(0, vocab, size=(n, length))
    return kt._xy_split(x, ((x >= 100) & (x < 120)).any(1).astype(np.int64), seed)


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("circles_batchnorm", "two circles, MLP 64-BN-64-BN-2", _circles,
         kt._sequential((2,), _dense(64), _L.BatchNormalization, _L.ReLU, _dense(64),
                        _L.BatchNormalization, _L.ReLU, _dense(2)),
         kt._sparse_ce, "accuracy", 30),
    Task("friedman_regression", "Friedman #1 regression, MLP 64-64-1 (tanh)", _friedman,
         kt._sequential((10,), _dense(64, "tanh"), _dense(64, "tanh"), _dense(1)),
         kt._mse, "mse", 40),
    Task("four_class_dropout", "4 classes of 20 features, MLP 128-64 with Dropout 0.3",
         _four_classes,
         kt._sequential((20,), _dense(128, "relu"), lambda: _L.Dropout(0.3),
                        _dense(64, "relu"), lambda: _L.Dropout(0.3), _dense(4)),
         kt._sparse_ce, "accuracy", 30),
    Task("bars_cnn_batchnorm", "12x12 bars, conv16-BN-pool-3", _bars,
         kt._sequential((12, 12, 1), lambda: _L.Conv2D(16, 3, padding="same"),
                        _L.BatchNormalization, _L.ReLU, _L.MaxPooling2D, _L.Flatten,
                        _dense(3)),
         kt._sparse_ce, "accuracy", 10),
    Task("sequence_simple_rnn", "synthetic sequences (Σ x0·x1), SimpleRNN(32)", _sequences,
         kt._sequential((20, 3), lambda: _L.SimpleRNN(32), _dense(2)),
         kt._sparse_ce, "accuracy", 15),
    Task("swiss_roll_autoencoder", "swiss roll, autoencoder 3-16-2-16-3 (tanh)", _swiss_roll,
         kt._sequential((3,), _dense(16, "tanh"), _dense(2), _dense(16, "tanh"), _dense(3)),
         kt._mse, "mse", 40),
    Task("tokens_embedding_max", "trigger tokens, Embedding(500, 16)-max pooling-2", _tokens,
         kt._sequential((20,), lambda: _L.Embedding(500, 16), _L.GlobalMaxPooling1D,
                        _dense(2)),
         kt._sparse_ce, "accuracy", 10),
    Task("blobs_elu", "5 blobs in 10 features, MLP 32-5 (ELU)", _blobs,
         kt._sequential((10,), _dense(32, "elu"), _dense(5)), kt._sparse_ce, "accuracy", 30),
    Task("raw_features_mlp", "4 classes of 20 unstandardised features, MLP 32-4", _raw_features,
         kt._sequential((20,), _dense(32, "relu"), _dense(4)), kt._sparse_ce, "accuracy", 40),
    Task("minmax_deep_dropout", "10 classes of 64 min-max-scaled features, MLP 256-128-64 "
         "with Dropout", _min_max_features,
         kt._sequential((64,), _dense(256, "relu"), lambda: _L.Dropout(0.2), _dense(128, "relu"),
                        _dense(64, "relu"), _dense(10)),
         kt._sparse_ce, "accuracy", 20),
    Task("mixed_scale_features", "3 classes of 13 features with means 0.1…1000, MLP 32-3",
         _mixed_scale_features,
         kt._sequential((13,), _dense(32, "relu"), _dense(3)), kt._sparse_ce, "accuracy", 40),
]}


def main(argv: list[str] | None = None) -> int:
    return compare(argv, __doc__.splitlines()[0], TASKS,
                   {"tasks": "blobs_elu", "epochs": 2})


if __name__ == "__main__":
    main()
