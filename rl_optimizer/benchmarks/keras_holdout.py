"""Keras networks outside the evaluation suite: untuned `LearnedOptimizer()` against `Adam()`.

    python -m rl_optimizer.benchmarks.keras_holdout [--policy default|nominal|PATH] [--tasks a,b]
        [--seeds 0,1,2,3]

A second check of generalization, on ten models that neither training, model selection nor
`rl-optimizer evaluate`'s suite (`evaluation.keras_tasks.TASKS`) uses: other datasets bundled
with scikit-learn or made in code (iris, two moons, a regression with targets in the
thousands, wine without standardised features), other layers (LSTM, Conv1D, LayerNorm,
BatchNorm in a CNN, Dropout in a deep MLP) and a convex softmax regression. Each task trains
the same initial weights with both optimizers (`model.fit`, batch 32) and compares the final
training loss. Each seed draws other initial weights, data splits and minibatch orders; one
seed decides a task by one trajectory, and a CNN with BatchNorm can blow up on one seed and
not the next. The last line is `wins_vs_adam_default: K/N` over every seed and task (with
more than one seed, a line per seed comes before it). Before those, `learned_at_chance: K/N`
counts the classifiers the learned optimizer left at chance (test accuracy within 0.02 of the
majority class's share) where `Adam()` trained them; each is marked on its line. Its loss
can still win: a network at chance ends near ln(classes), an `Adam()` whose logits grew
overconfident can end above it.

With --tuned, Adam with its learning rate tuned as the suite tunes it (over
`keras_tasks.ADAM_GRID`, on final training loss from initialisation seed + 1) is compared
too, and `wins_vs_adam_tuned: K/N` comes before that line (five more trainings per task and
seed).
"""

from __future__ import annotations

import argparse

import numpy as np
import tensorflow as tf

import rl_optimizer  # noqa: F401  (quiets TensorFlow's start-up banner)
from rl_optimizer.evaluation import keras_tasks as kt
from rl_optimizer.evaluation.keras_tasks import Task

_L = tf.keras.layers


def _moons(seed):
    from sklearn.datasets import make_moons

    x, y = make_moons(1000, noise=0.2, random_state=seed)
    return kt._xy_split(x.astype(np.float32), y, seed)


def _large_targets(seed):
    from sklearn.datasets import make_regression

    x, y = make_regression(1000, 20, noise=10.0, random_state=seed)
    return kt._xy_split(x.astype(np.float32), (10 * y).astype(np.float32), seed, stratify=False)


def _wine_raw(seed):
    from sklearn.datasets import load_wine

    data = load_wine()
    return kt._xy_split(data.data.astype(np.float32), data.target, seed)


def _iris(seed):
    from sklearn.datasets import load_iris

    return kt._tabular(load_iris, seed)


def _digits_flat(seed):
    x_train, y_train, x_test, y_test = kt.load_digits_split(seed)
    return x_train.reshape(len(x_train), -1), y_train, x_test.reshape(len(x_test), -1), y_test


def _dense(units, activation=None):
    return lambda: _L.Dense(units, activation=activation)


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("iris_mlp", "iris, MLP 16-3", _iris,
         kt._sequential((4,), _dense(16, "relu"), _dense(3)), kt._sparse_ce, "accuracy", 50),
    Task("moons_tanh", "two moons, MLP 32-32-2 (tanh)", _moons,
         kt._sequential((2,), _dense(32, "tanh"), _dense(32, "tanh"), _dense(2)),
         kt._sparse_ce, "accuracy", 40),
    Task("large_target_regression", "regression with targets ~1e3, MLP 32-1", _large_targets,
         kt._sequential((20,), _dense(32, "relu"), _dense(1)), kt._mse, "mse", 40),
    Task("wine_raw_features", "wine, unstandardised features, MLP 32-3", _wine_raw,
         kt._sequential((13,), _dense(32, "relu"), _dense(3)), kt._sparse_ce, "accuracy", 40),
    Task("digits_softmax", "digits, softmax regression (convex)", _digits_flat,
         kt._sequential((64,), _dense(10)), kt._sparse_ce, "accuracy", 20),
    Task("digits_deep_dropout", "digits, MLP 256-128-64-10 with Dropout", _digits_flat,
         kt._sequential((64,), _dense(256, "relu"), lambda: _L.Dropout(0.2), _dense(128, "relu"),
                        _dense(64, "relu"), _dense(10)), kt._sparse_ce, "accuracy", 20),
    Task("digits_cnn_batchnorm", "digits, conv32-BatchNorm-10", kt.load_digits_split,
         kt._sequential((8, 8, 1), lambda: _L.Conv2D(32, 3, padding="same"),
                        _L.BatchNormalization, _L.ReLU, _L.Flatten, _dense(10)),
         kt._sparse_ce, "accuracy", 15),
    Task("sequence_lstm", "synthetic sequences, LSTM(32)", kt._sequences,
         kt._sequential((20, 3), lambda: _L.LSTM(32), _dense(2)), kt._sparse_ce, "accuracy", 15),
    Task("sequence_conv1d", "synthetic sequences, Conv1D(16)-max-2", kt._sequences,
         kt._sequential((20, 3), lambda: _L.Conv1D(16, 3, activation="relu"),
                        _L.GlobalMaxPooling1D, _dense(2)), kt._sparse_ce, "accuracy", 15),
    Task("cancer_layernorm", "breast cancer, MLP with LayerNorm", kt._breast_cancer,
         kt._sequential((30,), _dense(64), _L.LayerNormalization, _L.ReLU, _dense(2)),
         kt._sparse_ce, "accuracy", 30),
]}


def parse_arguments(argv, description: str, tasks: dict, seeds: str, quick: dict,
                    flags: dict[str, str] | None = None
                    ) -> tuple[argparse.Namespace, list[str], list[int]]:
    """The Keras benchmarks' command line: (args, task names, seeds), bad values named.

    `tasks`: name → Task to choose from; `seeds`: the default of --seeds; `quick`: the
    attributes --quick sets (its smallest setting); `flags`: more on/off options, name →
    help."""
    parser = argparse.ArgumentParser(description=description)
    for flag, help_text in (flags or {}).items():
        parser.add_argument(flag, action="store_true", help=help_text)
    parser.add_argument("--policy", default="default",
                        help="'default', 'nominal' or an exported policy's path")
    parser.add_argument("--tasks", default=",".join(tasks),
                        help=f"comma-separated, some of {', '.join(tasks)}")
    parser.add_argument("--seeds", default=seeds, help=f"comma-separated seeds (default {seeds})")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of every task (default: each task's own)")
    parser.add_argument("--quick", action="store_true",
                        help="smallest setting (seconds): " + ", ".join(
                            f"{key} {value}" for key, value in quick.items()))
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in quick.items():
            setattr(args, key, value)
    if args.epochs is not None and args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    names = [n.strip() for n in args.tasks.split(",") if n.strip()]
    unknown = [n for n in names if n not in tasks]
    if unknown or not names:
        parser.error(f"unknown task(s) {unknown}; expected some of {list(tasks)}")
    try:
        seed_list = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not seed_list:
        parser.error("--seeds names no seed")
    return args, names, seed_list


def main(argv: list[str] | None = None) -> int:
    return compare(argv, __doc__.splitlines()[0], TASKS, {"tasks": "iris_mlp", "epochs": 2})


def compare(argv, description: str, tasks: dict[str, Task], quick: dict) -> int:
    """Untuned `LearnedOptimizer()` against `Adam()` (and with --tuned, tuned Adam) on
    `tasks`, a line per task and seed, then the win counts (see this module's docstring)."""
    from rl_optimizer.keras_optimizer import LearnedOptimizer
    from rl_optimizer.policy import load_policy

    args, names, seeds = parse_arguments(
        argv, description, tasks, "0", quick,
        {"--tuned": "also against Adam with its learning rate tuned (five more trainings "
                    "per task and seed)"})
    policy = load_policy(args.policy)
    wins, tuned_wins, at_chance = {}, {}, 0
    for seed in seeds:
        wins[seed] = tuned_wins[seed] = 0
        for name in names:
            task = tasks[name]
            data = task.data(seed)
            epochs = args.epochs or task.epochs
            learned = kt.train(task, LearnedOptimizer(policy), epochs, seed, data)
            adam = kt.train(task, tf.keras.optimizers.Adam(), epochs, seed, data)
            win = kt.beats(learned, adam)
            wins[seed] += win
            chance = _at_chance(task, data, learned, adam)
            at_chance += chance
            line = (f"{f'seed {seed} ' if len(seeds) > 1 else ''}{name}: learned "
                    f"{learned['final_loss']:.4g} ({task.metric} {learned['test_metric']:.3f}"
                    f"{', diverged' if learned['diverged'] else ''}"
                    f"{', at chance' if chance else ''}), Adam() "
                    f"{adam['final_loss']:.4g} ({task.metric} {adam['test_metric']:.3f}): "
                    f"{'win' if win else 'loss'}")
            if args.tuned:
                rate, _ = kt.tune(task, tf.keras.optimizers.Adam, epochs, kt.ADAM_GRID,
                                  seed + 1, data)
                tuned = kt.train(task, tf.keras.optimizers.Adam(rate), epochs, seed, data)
                tuned_win = kt.beats(learned, tuned)
                tuned_wins[seed] += tuned_win
                line += (f"; Adam(tuned {rate:g}) {tuned['final_loss']:.4g}: "
                         f"{'win' if tuned_win else 'loss'}")
            print(line, flush=True)
    print(f"learned_at_chance: {at_chance}/{len(names) * len(seeds)}")
    if len(seeds) > 1:
        for seed, count in wins.items():
            print(f"wins_vs_adam_default_seed_{seed}: {count}/{len(names)}")
            if args.tuned:
                print(f"wins_vs_adam_tuned_seed_{seed}: {tuned_wins[seed]}/{len(names)}")
    if args.tuned:
        print(f"wins_vs_adam_tuned: {sum(tuned_wins.values())}/{len(names) * len(seeds)}")
    print(f"wins_vs_adam_default: {sum(wins.values())}/{len(names) * len(seeds)}")
    return 0


CHANCE_MARGIN = 0.02
"""A classifier whose test accuracy is within this of the majority class's share did not
train (its loss can still be below an `Adam()` whose logits grew overconfident)."""


def _at_chance(task: Task, data, learned: dict, adam: dict) -> bool:
    """Whether the learned optimizer left a classifier at chance where `Adam()` trained it."""
    if task.metric != "accuracy":
        return False
    labels = np.asarray(data[3]).ravel().astype(np.int64)
    majority = np.bincount(labels).max() / labels.size
    return (learned["test_metric"] <= majority + CHANCE_MARGIN
            < adam["test_metric"])


if __name__ == "__main__":
    main()
