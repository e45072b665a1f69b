"""Outside the training families: Keras models on scikit-learn's bundled digits, `model.fit`.

    results = run_keras_tasks(policy, epochs=20)
    results["mlp"]["learned"]["loss"]        # training loss per epoch

Each task trains the same architecture from the same initial weights with the learned optimizer
(`rl_optimizer.keras_optimizer.LearnedOptimizer`) and with Adam, whose learning rate is tuned
on final training loss over `ADAM_GRID` from a different initialisation seed (the test split is
never used for tuning). Digits (8×8 images, 10 classes, 1797 samples) ships with scikit-learn:
nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

TASKS = ("mlp", "cnn")
ADAM_GRID: tuple[float, ...] = (3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
TEST_FRACTION = 0.25
BATCH_SIZE = 32


def load_digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): pixels in [0, 1] as 8×8×1 images, stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=TEST_FRACTION, random_state=seed, stratify=digits.target)
    return x_train, y_train, x_test, y_test


def build_model(task: str, seed: int) -> tf.keras.Model:
    """The task's model: an MLP (64-64-10) or a small CNN (two 3×3 conv layers), as logits."""
    tf.keras.utils.set_random_seed(seed)
    layers = tf.keras.layers
    if task == "mlp":
        body = [layers.Flatten(), layers.Dense(64, activation="relu")]
    elif task == "cnn":
        body = [layers.Conv2D(16, 3, padding="same", activation="relu"), layers.MaxPooling2D(),
                layers.Conv2D(32, 3, padding="same", activation="relu"),
                layers.GlobalAveragePooling2D()]
    else:
        raise ValueError(f"unknown Keras task {task!r}; expected one of {list(TASKS)}")
    return tf.keras.Sequential([tf.keras.Input((8, 8, 1)), *body, layers.Dense(10)])


def train(task: str, optimizer: tf.keras.optimizers.Optimizer, epochs: int, seed: int,
          data=None) -> dict[str, list[float]]:
    """Trains with `model.fit`; per epoch the training loss and the test accuracy."""
    x_train, y_train, x_test, y_test = data if data is not None else load_digits_split()
    model = build_model(task, seed)
    model.compile(optimizer=optimizer, metrics=["accuracy"],
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(x_train, y_train, batch_size=BATCH_SIZE, epochs=epochs, verbose=0,
                        validation_data=(x_test, y_test), shuffle=True)
    return {"loss": [float(v) for v in history.history["loss"]],
            "test_accuracy": [float(v) for v in history.history["val_accuracy"]]}


def tune(task: str, make_optimizer, epochs: int, grid: Sequence[float] = ADAM_GRID,
         seed: int = 1, data=None) -> tuple[float, dict[float, float]]:
    """(best learning rate, lr → final training loss) of `make_optimizer(lr)`, from
    initialisation seed `seed`."""
    losses = {lr: train(task, make_optimizer(lr), epochs, seed, data)["loss"][-1] for lr in grid}
    finite = {lr: loss for lr, loss in losses.items() if np.isfinite(loss)}
    if not finite:
        raise RuntimeError(f"diverged at every learning rate of {list(grid)} on {task}")
    return min(finite, key=finite.get), losses


def tune_adam(task: str, epochs: int, grid: Sequence[float] = ADAM_GRID, seed: int = 1,
              data=None) -> tuple[float, dict[float, float]]:
    """(best learning rate, lr → final training loss) of Adam, from initialisation `seed`."""
    return tune(task, tf.keras.optimizers.Adam, epochs, grid, seed, data)


def learned_optimizer_class():
    """`LearnedOptimizer`, or None with the reason when it cannot be imported yet."""
    try:
        from rl_optimizer.keras_optimizer import LearnedOptimizer
    except ImportError as e:
        return None, f"rl_optimizer.keras_optimizer.LearnedOptimizer is not importable: {e}"
    return LearnedOptimizer, None


def run_keras_tasks(policy, tasks: Sequence[str] = TASKS, epochs: int = 20,
                    grid: Sequence[float] = ADAM_GRID, seed: int = 0, progress=None) -> dict:
    """Learned optimizer vs tuned Adam on each task.

    The learned optimizer runs as shipped (the policy's own base step size), and again with
    its base step size (`LearnedOptimizer(learning_rate=...)`) tuned on the same grid and
    criterion as Adam's.

    Returns:
      task → {"adam": {learning_rate, loss, test_accuracy, tuning}, "learned": {loss,
      test_accuracy}, "learned_tuned": {learning_rate, loss, test_accuracy, tuning},
      "epochs": epochs}; or {"skipped": reason} when the learned Keras optimizer is unavailable.
    """
    for task in tasks:
        if task not in TASKS:
            raise ValueError(f"unknown Keras task {task!r}; expected some of {list(TASKS)}")
    optimizer_class, reason = learned_optimizer_class()
    if optimizer_class is None:
        return {"skipped": reason}
    data = load_digits_split(seed)
    results = {}
    for task in tasks:
        lr, tuning = tune_adam(task, epochs, grid, seed=seed + 1, data=data)
        adam = train(task, tf.keras.optimizers.Adam(lr), epochs, seed, data)
        learned = train(task, optimizer_class(policy=policy), epochs, seed, data)

        def make_learned(base_lr):
            return optimizer_class(policy=policy, learning_rate=base_lr)

        base_lr, base_tuning = tune(task, make_learned, epochs, grid, seed=seed + 1, data=data)
        tuned = train(task, make_learned(base_lr), epochs, seed, data)
        results[task] = {"epochs": epochs, "learned": learned,
                         "learned_tuned": {**tuned, "learning_rate": base_lr,
                                           "tuning": base_tuning},
                         "adam": {**adam, "learning_rate": lr, "tuning": tuning}}
        if progress is not None:
            progress(1)
    return results


def keras_figure(results: dict):
    """Training loss and test accuracy per epoch, one column per task (a matplotlib Figure)."""
    from matplotlib.figure import Figure

    tasks = [t for t in TASKS if t in results]
    fig = Figure(figsize=(5 * len(tasks), 6.5))
    axes = fig.subplots(2, len(tasks), squeeze=False)
    for col, task in enumerate(tasks):
        for name, style in (("learned", "-"), ("learned_tuned", "-."), ("adam", "--")):
            run = results[task][name]
            epochs = np.arange(1, len(run["loss"]) + 1)
            label = name if name == "learned" else f"{name} (lr={run['learning_rate']:g})"
            axes[0, col].plot(epochs, run["loss"], style, label=label)
            axes[1, col].plot(epochs, run["test_accuracy"], style, label=label)
        axes[0, col].set(title=f"digits {task}", ylabel="training loss", yscale="log")
        axes[1, col].set(xlabel="epoch", ylabel="test accuracy")
        axes[0, col].legend()
    fig.tight_layout()
    return fig
