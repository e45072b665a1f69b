"""The Keras suite at several seeds: untuned `LearnedOptimizer()` against `Adam()` and tuned Adam.

    python -m rl_optimizer.benchmarks.keras_seeds [--policy default|nominal|PATH] [--tasks a,b]
        [--seeds 0,1,2,3]

`rl-optimizer evaluate` decides each task of the suite (`evaluation.keras_tasks.TASKS`) by one
trajectory (seed 0), and a task's final training loss can move by 2x from one seed to the next
(a Dropout network's by 10x), so one seed's count of wins is mostly chance near a bar. Here each
task's Adam learning rate is tuned once, exactly as `evaluate` tunes it (over `ADAM_GRID`, from
initialisation seed 1, on seed 0's data), and every seed then trains the same initial weights
with the learned optimizer, `Adam()` and Adam at that learning rate (seed s: initial weights,
data split and minibatch order s). A win is a lower final training loss without divergence
(`keras_tasks.beats`). The last two lines are `wins_vs_adam_default: K/N` and
`wins_vs_adam_tuned: K/N` over every seed and task.
"""

from __future__ import annotations

import tensorflow as tf

import rl_optimizer  # noqa: F401  (quiets TensorFlow's start-up banner)
from rl_optimizer.benchmarks.keras_holdout import parse_arguments
from rl_optimizer.evaluation import keras_tasks as kt


def main(argv: list[str] | None = None) -> int:
    from rl_optimizer.keras_optimizer import LearnedOptimizer
    from rl_optimizer.policy import load_policy

    args, names, seeds = parse_arguments(argv, __doc__.splitlines()[0], kt.TASKS, "0,1,2,3",
                                         {"tasks": "wine_mlp", "epochs": 1, "seeds": "0"})
    policy = load_policy(args.policy)
    tuned = {}
    for name in names:
        task = kt.TASKS[name]
        tuned[name], _ = kt.tune(task, tf.keras.optimizers.Adam, args.epochs or task.epochs,
                                 kt.ADAM_GRID, 1, task.data(0))
        print(f"{name}: Adam tuned lr {tuned[name]:g}", flush=True)
    wins = {"adam_default": 0, "adam_tuned": 0}
    for seed in seeds:
        for name in names:
            task = kt.TASKS[name]
            data = task.data(seed)
            epochs = args.epochs or task.epochs
            learned = kt.train(task, LearnedOptimizer(policy), epochs, seed, data)
            runs = {"adam_default": kt.train(task, tf.keras.optimizers.Adam(), epochs, seed, data),
                    "adam_tuned": kt.train(task, tf.keras.optimizers.Adam(tuned[name]), epochs,
                                           seed, data)}
            won = {key: kt.beats(learned, run) for key, run in runs.items()}
            for key in wins:
                wins[key] += won[key]
            verdict = {key: "win" if w else "loss" for key, w in won.items()}
            print(f"seed {seed} {name}: learned {learned['final_loss']:.4g}"
                  f"{' (diverged)' if learned['diverged'] else ''}, Adam() "
                  f"{runs['adam_default']['final_loss']:.4g} ({verdict['adam_default']}), "
                  f"Adam({tuned[name]:g}) {runs['adam_tuned']['final_loss']:.4g} "
                  f"({verdict['adam_tuned']})", flush=True)
    total = len(names) * len(seeds)
    print(f"wins_vs_adam_default: {wins['adam_default']}/{total}")
    print(f"wins_vs_adam_tuned: {wins['adam_tuned']}/{total}")
    return 0


if __name__ == "__main__":
    main()
