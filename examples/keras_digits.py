"""LearnedOptimizer in a real `model.fit`: scikit-learn's bundled 8×8 digits (no download).

    python examples/keras_digits.py [--policy PATH] [--epochs 20] [--log-dir runs/digits]
    tensorboard --logdir runs/digits     # train/, validation/ and the optimizer's own optimizer/

Trains one MLP with the learned optimizer (with the TensorBoard and OptimizerMonitor
callbacks), saves it as a .keras file, reloads it (optimizer state included) and trains it one
more epoch, then trains the same MLP from the same initialisation with Adam and compares.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import rl_optimizer  # noqa: F401  (quiets TensorFlow's start-up banner)
from rl_optimizer.keras_optimizer import LearnedOptimizer
from rl_optimizer.monitor import OptimizerMonitor


def digits(seed: int = 0):
    """(x_train, y_train), (x_test, y_test): 1797 images, pixels scaled to [0, 1]."""
    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(
        (x / 16.0).astype(np.float32), y, test_size=0.25, random_state=seed, stratify=y)
    return (x_train, y_train), (x_test, y_test)


def build_model(seed: int = 0) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(seed)
    return tf.keras.Sequential([tf.keras.Input((64,)),
                                tf.keras.layers.Dense(128, activation="relu"),
                                tf.keras.layers.Dense(10)])


def train(model, optimizer, data, epochs: int, callbacks=()):
    model.compile(optimizer=optimizer, metrics=["accuracy"],
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    (x, y), validation = data
    model.fit(x, y, batch_size=32, epochs=epochs, validation_data=validation, verbose=0,
              callbacks=list(callbacks))
    return model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="default",
                        help="'default' (the shipped policy) or an exported policy's path")
    parser.add_argument("--learning-rate", type=float, default=None,
                        help="the learned optimizer's base step (default: the policy's own)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--log-dir", default=None,
                        help="keep TensorBoard logs here (default: none are kept)")
    args = parser.parse_args(argv)
    # The saved model (and, without --log-dir, the logs) live only as long as the example.
    with tempfile.TemporaryDirectory(prefix="keras_digits-") as work_dir:
        run(args, work_dir, args.log_dir or os.path.join(work_dir, "logs"))
    if args.log_dir:
        print(f"TensorBoard logs: tensorboard --logdir {args.log_dir}")


def run(args, work_dir: str, log_dir: str) -> None:
    data = digits()

    optimizer = LearnedOptimizer(args.policy, learning_rate=args.learning_rate)
    learned = train(build_model(), optimizer, data, args.epochs,
                    [tf.keras.callbacks.TensorBoard(log_dir), OptimizerMonitor(log_dir)])
    print("optimizer:", learned.optimizer.last_step_statistics())
    path = os.path.join(work_dir, "digits.keras")
    learned.save(path)
    reloaded = tf.keras.models.load_model(path)
    print(f"reloaded {path}: optimizer {type(reloaded.optimizer).__name__}, "
          f"{reloaded.optimizer.iterations.numpy()} steps of state")
    (x, y), validation = data
    reloaded.fit(x, y, batch_size=32, epochs=1, validation_data=validation, verbose=0)
    adam = train(build_model(), tf.keras.optimizers.Adam(), data, args.epochs + 1)

    for name, model in (("learned", reloaded), ("adam", adam)):
        train_loss, _ = model.evaluate(x, y, verbose=0)
        test_loss, test_accuracy = model.evaluate(*validation, verbose=0)
        print(f"{name}: train_loss {train_loss:.4f}, test_loss {test_loss:.4f}, "
              f"test_accuracy {test_accuracy:.4f}")


if __name__ == "__main__":
    main()
