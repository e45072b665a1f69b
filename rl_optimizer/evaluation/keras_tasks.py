"""The Keras suite: what users do with the optimizer, `model.fit` on networks it never saw.

    results = run_keras_tasks(policy, epochs=None)        # every task, its own epochs
    results["digits_cnn"]["learned"]["final_loss"]

Each task trains one architecture from the same initial weights with

  learned        `LearnedOptimizer()` as shipped: no argument, nothing tuned;
  adam_default   `tf.keras.optimizers.Adam()` (learning rate 1e-3);
  adam_tuned     Adam with its learning rate tuned over `ADAM_GRID`;
  momentum_tuned SGD with Nesterov-free momentum 0.9, learning rate tuned over `MOMENTUM_GRID`;

tuned on final training loss from another initialisation seed (the test split is never used for
tuning, and no task here is used to select policies during training). Per task it records the
training loss per epoch, the final training loss (the full training set, inference mode), the
test metric, divergence, and VeLO's speedup: the epochs tuned Adam needs to reach the learned
optimizer's final loss over the epochs the learned optimizer took (> 1: the learned optimizer
is faster). Data comes with scikit-learn or is made in code: nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

ADAM_GRID: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
MOMENTUM_GRID: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
BATCH_SIZE = 32
TEST_FRACTION = 0.25
DIVERGENCE_FACTOR = 10.0
"""A run diverges when its loss becomes non-finite or exceeds this many times its first."""


@dataclasses.dataclass(frozen=True)
class Task:
    """One Keras task: data, model and loss.

    Attributes:
      name: the task's name.
      description: one line for the report.
      data: `seed -> (x_train, y_train, x_test, y_test)`.
      model: `() -> tf.keras.Model` (weights seeded by the caller).
      loss: a Keras loss.
      metric: the test metric's Keras name ("accuracy", "mse").
      epochs: default epochs.
    """

    name: str
    description: str
    data: Callable
    model: Callable[[], tf.keras.Model]
    loss: Callable[[], tf.keras.losses.Loss]
    metric: str
    epochs: int


def _split(x, y, seed, stratify=True):
    from sklearn.model_selection import train_test_split

    return train_test_split(x, y, test_size=TEST_FRACTION, random_state=seed,
                            stratify=y if stratify else None)


def _xy_split(x, y, seed, stratify=True):
    """(x_train, y_train, x_test, y_test)."""
    x_train, x_test, y_train, y_test = _split(x, y, seed, stratify)
    return x_train, y_train, x_test, y_test


def _standardized(x_train, x_test):
    mean, std = x_train.mean(0), x_train.std(0) + 1e-8
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def load_digits_split(seed: int = 0):
    """Digits (8×8 images, 10 classes): pixels in [0, 1] as 8×8×1 images, stratified split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return _xy_split((digits.images / 16.0).astype(np.float32)[..., None], digits.target, seed)


def _tabular(loader, seed, regression=False):
    data = loader()
    x_train, y_train, x_test, y_test = _xy_split(data.data, data.target, seed,
                                                 stratify=not regression)
    x_train, x_test = _standardized(x_train, x_test)
    if regression:
        mean, std = y_train.mean(), y_train.std()
        y_train, y_test = ((y - mean) / std for y in (y_train, y_test))
        return x_train, y_train.astype(np.float32), x_test, y_test.astype(np.float32)
    return x_train, y_train, x_test, y_test


def _breast_cancer(seed):
    from sklearn.datasets import load_breast_cancer

    return _tabular(load_breast_cancer, seed)


def _wine(seed):
    from sklearn.datasets import load_wine

    return _tabular(load_wine, seed)


def _diabetes(seed):
    from sklearn.datasets import load_diabetes

    return _tabular(load_diabetes, seed, regression=True)


def _breast_cancer_autoencoder(seed):
    x_train, _, x_test, _ = _breast_cancer(seed)
    return x_train, x_train, x_test, x_test


def _sequences(seed, n=1200, steps=20, channels=3):
    """Noisy sequences labelled by whether channel 0's running sum ends above channel 1's:
    a recurrent net must integrate over time. Made in code."""
    rng = np.random.default_rng(1000 + seed)
    x = rng.normal(size=(n, steps, channels)).astype(np.float32)
    y = (x[:, :, 0].sum(1) > x[:, :, 1].sum(1)).astype(np.int64)
    return _xy_split(x, y, seed)


def _tokens(seed, n=2000, length=20, vocab=500):
    """Token sequences labelled by whether "positive" tokens (the first 50) outnumber
    "negative" ones (the next 50), amid neutral tokens: a bag-of-embeddings task whose
    gradients are sparse (`tf.IndexedSlices`). Made in code."""
    rng = np.random.default_rng(2000 + seed)
    x = rng.integers(0, vocab, size=(n, length))
    positive = (x < 50).sum(1)
    negative = ((x >= 50) & (x < 100)).sum(1)
    keep = positive != negative
    return _xy_split(x[keep], (positive > negative)[keep].astype(np.int64), seed)


def _sparse_ce():
    return tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _mse():
    return tf.keras.losses.MeanSquaredError()


_L = tf.keras.layers


def _sequential(input_shape, *layers):
    return lambda: tf.keras.Sequential([tf.keras.Input(input_shape), *(f() for f in layers)])


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("digits_mlp", "digits, MLP 64-64-10", load_digits_split,
         _sequential((8, 8, 1), _L.Flatten, lambda: _L.Dense(64, activation="relu"),
                     lambda: _L.Dense(10)), _sparse_ce, "accuracy", 20),
    Task("digits_cnn", "digits, CNN conv16-pool-conv32-GAP-10", load_digits_split,
         _sequential((8, 8, 1), lambda: _L.Conv2D(16, 3, padding="same", activation="relu"),
                     _L.MaxPooling2D, lambda: _L.Conv2D(32, 3, padding="same",
                                                        activation="relu"),
                     _L.GlobalAveragePooling2D, lambda: _L.Dense(10)),
         _sparse_ce, "accuracy", 20),
    Task("cancer_bn_dropout", "breast cancer, MLP with BatchNorm and Dropout", _breast_cancer,
         _sequential((30,), lambda: _L.Dense(64), _L.BatchNormalization, _L.ReLU,
                     lambda: _L.Dropout(0.3), lambda: _L.Dense(32, activation="relu"),
                     lambda: _L.Dense(2)), _sparse_ce, "accuracy", 30),
    Task("wine_mlp", "wine, MLP 32-32-3 (tanh)", _wine,
         _sequential((13,), lambda: _L.Dense(32, activation="tanh"),
                     lambda: _L.Dense(32, activation="tanh"), lambda: _L.Dense(3)),
         _sparse_ce, "accuracy", 40),
    Task("diabetes_regression", "diabetes, regression MLP 64-1", _diabetes,
         _sequential((10,), lambda: _L.Dense(64, activation="relu"), lambda: _L.Dense(1)),
         _mse, "mse", 40),
    Task("cancer_autoencoder", "breast cancer features, autoencoder 30-16-4-16-30",
         _breast_cancer_autoencoder,
         _sequential((30,), lambda: _L.Dense(16, activation="relu"), lambda: _L.Dense(4),
                     lambda: _L.Dense(16, activation="relu"), lambda: _L.Dense(30)),
         _mse, "mse", 40),
    Task("sequence_gru", "synthetic sequences, GRU(16)", _sequences,
         _sequential((20, 3), lambda: _L.GRU(16), lambda: _L.Dense(2)),
         _sparse_ce, "accuracy", 15),
    Task("tokens_embedding", "synthetic tokens, Embedding(500, 16)-mean-2 (sparse gradients)",
         _tokens, _sequential((20,), lambda: _L.Embedding(500, 16),
                              _L.GlobalAveragePooling1D, lambda: _L.Dense(2)),
         _sparse_ce, "accuracy", 15),
]}
"""The suite, by name."""


def train(task: Task | str, optimizer: tf.keras.optimizers.Optimizer, epochs: int, seed: int,
          data=None) -> dict:
    """`model.fit` from initialisation `seed`: the loss per epoch, the final training loss and
    the test metric (both evaluated in inference mode), and whether the run diverged."""
    task = TASKS[task] if isinstance(task, str) else task
    x_train, y_train, x_test, y_test = data if data is not None else task.data(0)
    tf.keras.utils.set_random_seed(seed)
    model = task.model()
    model.compile(optimizer=optimizer, loss=task.loss(),
                  metrics=["accuracy"] if task.metric == "accuracy" else [])
    history = model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs, verbose=0,
                        shuffle=True)
    losses = [float(v) for v in history.history["loss"]]
    final = float(model.evaluate(x_train, y_train, batch_size=256, verbose=0,
                                 return_dict=True)["loss"])
    test = model.evaluate(x_test, y_test, batch_size=256, verbose=0, return_dict=True)
    metric = float(test["accuracy"] if task.metric == "accuracy" else test["loss"])
    diverged = not all(np.isfinite([*losses, final])) or max(losses) > DIVERGENCE_FACTOR \
        * losses[0]
    return {"loss": losses, "final_loss": final, "test_metric": metric, "diverged": diverged}


def tune(task: Task, make_optimizer, epochs: int, grid: Sequence[float], seed: int,
         data) -> tuple[float, dict[float, float]]:
    """(best learning rate, lr → final training loss) of `make_optimizer(lr)` from `seed`."""
    runs = {lr: train(task, make_optimizer(lr), epochs, seed, data) for lr in grid}
    losses = {lr: (r["final_loss"] if not r["diverged"] else np.inf) for lr, r in runs.items()}
    finite = {lr: loss for lr, loss in losses.items() if np.isfinite(loss)}
    if not finite:
        raise RuntimeError(f"diverged at every learning rate of {list(grid)} on {task.name}")
    return min(finite, key=finite.get), losses


def beats(learned: dict, baseline: dict) -> bool:
    """Whether the `train` result `learned` wins against `baseline`: it did not diverge, and
    the baseline did or ended at a higher final training loss."""
    return bool(not learned["diverged"]
                and (baseline["diverged"] or learned["final_loss"] < baseline["final_loss"]))


def speedup(learned: dict, baseline: dict) -> float:
    """Epochs `baseline` needs to reach `learned`'s last training loss, over `learned`'s
    epochs (VeLO's measure); inf where it never does, 0 where `learned` diverged."""
    if learned["diverged"]:
        return 0.0
    target, epochs = learned["loss"][-1], len(learned["loss"])
    reached = [i + 1 for i, v in enumerate(baseline["loss"]) if v <= target]
    return reached[0] / epochs if reached else np.inf


def learned_optimizer_class():
    """`LearnedOptimizer`, or None with the reason when it cannot be imported."""
    try:
        from rl_optimizer.keras_optimizer import LearnedOptimizer
    except ImportError as e:
        return None, f"rl_optimizer.keras_optimizer.LearnedOptimizer is not importable: {e}"
    return LearnedOptimizer, None


def run_task(task: Task, policy, epochs: int | None = None, seed: int = 0,
             adam_grid: Sequence[float] = ADAM_GRID,
             momentum_grid: Sequence[float] = MOMENTUM_GRID) -> dict:
    """One task's runs (see the module docstring) and comparisons."""
    optimizer_class, reason = learned_optimizer_class()
    if optimizer_class is None:
        raise RuntimeError(reason)
    epochs = epochs or task.epochs
    data = task.data(seed)

    def momentum(lr):
        return tf.keras.optimizers.SGD(lr, momentum=0.9)

    adam_lr, adam_tuning = tune(task, tf.keras.optimizers.Adam, epochs, adam_grid, seed + 1,
                                data)
    momentum_lr, momentum_tuning = tune(task, momentum, epochs, momentum_grid, seed + 1, data)
    runs = {
        "learned": train(task, optimizer_class(policy=policy), epochs, seed, data),
        "adam_default": train(task, tf.keras.optimizers.Adam(), epochs, seed, data),
        "adam_tuned": {**train(task, tf.keras.optimizers.Adam(adam_lr), epochs, seed, data),
                       "learning_rate": adam_lr, "tuning": adam_tuning},
        "momentum_tuned": {**train(task, momentum(momentum_lr), epochs, seed, data),
                           "learning_rate": momentum_lr, "tuning": momentum_tuning},
    }
    learned = runs["learned"]
    wins = {name: beats(learned, r) for name, r in runs.items() if name != "learned"}
    return {"epochs": epochs, "description": task.description, "metric": task.metric,
            "runs": runs, "wins": wins, "speedup_vs_adam_tuned": speedup(learned,
                                                                         runs["adam_tuned"])}


def run_keras_tasks(policy, tasks: Sequence[str] | None = None, epochs: int | None = None,
                    seed: int = 0, progress: Callable[[int], object] | None = None,
                    **grids) -> dict:
    """`run_task` for each of `tasks` (default: all of `TASKS`); task → result.

    `grids` (`adam_grid`, `momentum_grid`) go to `run_task`.

    Returns {"skipped": reason} when the learned Keras optimizer is unavailable. `progress`
    is called with 1 after each task.
    """
    tasks = list(TASKS) if tasks is None else list(tasks)
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown Keras task(s) {unknown}; expected some of {list(TASKS)}")
    _, reason = learned_optimizer_class()
    if reason is not None:
        return {"skipped": reason}
    results = {}
    for name in tasks:
        results[name] = run_task(TASKS[name], policy, epochs, seed, **grids)
        if progress is not None:
            progress(1)
    return results


def suite_summary(results: dict) -> dict:
    """Win rates of the untuned learned optimizer per baseline, its divergences, the median
    speedup against tuned Adam: the issue's Keras bar in numbers."""
    tasks = [r for r in results.values() if isinstance(r, dict) and "runs" in r]
    if not tasks:
        return {}
    baselines = list(tasks[0]["wins"])
    out = {f"win_rate_vs_{b}": float(np.mean([t["wins"][b] for t in tasks])) for b in baselines}
    out["divergences"] = int(sum(t["runs"]["learned"]["diverged"] for t in tasks))
    out["median_speedup_vs_adam_tuned"] = float(np.median([t["speedup_vs_adam_tuned"]
                                                           for t in tasks]))
    out["tasks"] = len(tasks)
    return out


RUN_LABELS = {"learned": "LearnedOptimizer()", "adam_default": "Adam()",
              "adam_tuned": "Adam, tuned lr", "momentum_tuned": "momentum, tuned lr"}


def keras_markdown(results: dict) -> str:
    """The report's Keras section: one row per task and optimizer, then the summary."""
    if "skipped" in results:
        return f"## Keras suite\n\nSkipped: {results['skipped']}\n"
    rows = []
    for name, r in results.items():
        for label, run in r["runs"].items():
            lr = f"{run['learning_rate']:g}" if "learning_rate" in run else (
                "policy" if label == "learned" else "1e-3")
            rows.append([name, RUN_LABELS[label], f"{run['final_loss']:.4g}",
                         f"{r['metric']} {run['test_metric']:.3f}", lr,
                         "yes" if run["diverged"] else "",
                         f"{r['speedup_vs_adam_tuned']:.2f}" if label == "learned" else ""])
    summary = suite_summary(results)
    header = "| " + " | ".join(["task", "optimizer", "final training loss", "test", "lr",
                                "diverged", "speedup vs tuned Adam"]) + " |"
    lines = [header, "|" + "---|" * 7] + ["| " + " | ".join(row) + " |" for row in rows]
    verdict = ", ".join(f"{k} {v:.0%}" if k.startswith("win_rate") else f"{k} {v:g}"
                        for k, v in summary.items())
    return "\n".join([
        "## Keras suite (model.fit, untuned `LearnedOptimizer()`)", "",
        f"Batch size {BATCH_SIZE}, same initial weights for every optimizer; tuned learning "
        "rates chosen on final training loss from another initialisation. Speedup: epochs "
        "tuned Adam needs to reach the learned optimizer's final loss / its epochs (> 1: the "
        "learned optimizer is faster; inf: Adam never reaches it).", "", *lines, "",
        f"Summary: {verdict}.", "", "![keras](keras_suite.png)", ""])


def keras_figure(results: dict):
    """Training loss per epoch, one panel per task (a matplotlib Figure)."""
    from matplotlib.figure import Figure

    names = [n for n in results if isinstance(results[n], dict) and "runs" in results[n]]
    cols = min(4, max(1, len(names)))
    rows = -(-len(names) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names):
        for label, run in results[name]["runs"].items():
            epochs = np.arange(1, len(run["loss"]) + 1)
            ax.plot(epochs, run["loss"], "-" if label == "learned" else "--",
                    label=RUN_LABELS[label])
        ax.set(title=name, xlabel="epoch", ylabel="training loss", yscale="log")
    for ax in axes[len(names):]:
        ax.set_visible(False)
    if names:
        axes[0].legend(fontsize="small")
    fig.tight_layout()
    return fig
