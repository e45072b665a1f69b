"""Train-step time of `LearnedOptimizer` against Adam on a ~1M-parameter MLP.

    python -m rl_optimizer.benchmarks.keras_step [--policy PATH|random] [--batch 256] [--quick]

Both optimizers train their own copy of the same MLP (784-1024-256-10, 1.07M parameters) with a
compiled step (forward, backward, update). Blocks of steps alternate between the two, so load
from other processes hits both alike; the medians of the per-step times are compared. The last
three lines are `learned_ms`, `adam_ms` and `ratio` (learned / Adam).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import tensorflow as tf

import rl_optimizer  # noqa: F401  (quiets TensorFlow's start-up banner)
from rl_optimizer.keras_optimizer import LearnedOptimizer
from rl_optimizer.policy import LearnedPolicy, load_policy

LAYERS = (784, 1024, 256, 10)


def build_model(seed: int = 0) -> tf.keras.Model:
    tf.keras.utils.set_random_seed(seed)
    return tf.keras.Sequential(
        [tf.keras.Input((LAYERS[0],))]
        + [tf.keras.layers.Dense(n, activation="relu") for n in LAYERS[1:-1]]
        + [tf.keras.layers.Dense(LAYERS[-1])])


def make_step(model: tf.keras.Model, optimizer, jit_compile: bool):
    """A compiled train step (forward, backward, update) returning the loss."""
    loss_fn = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(jit_compile=jit_compile)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


def time_steps(step, x, y, n: int) -> tuple[list[float], float]:
    """Wall-clock seconds of each of `n` steps (each waits for its loss), and their CPU seconds.

    CPU time (all threads of this process) is less disturbed by other processes on the cores.
    """
    times, cpu = [], time.process_time()
    for _ in range(n):
        start = time.perf_counter()
        step(x, y).numpy()
        times.append(time.perf_counter() - start)
    return times, time.process_time() - cpu


def resolve_policy(name: str, hidden: tuple[int, ...]) -> LearnedPolicy:
    """`load_policy(name)`; a random policy for "random", or for "default" while none ships."""
    if name == "random":
        return LearnedPolicy.random(hidden=hidden, seed=0)
    try:
        return load_policy(name)
    except ValueError as error:
        if name != "default":
            raise
        print(f"{error}; using a random policy with hidden {hidden}")
        return LearnedPolicy.random(hidden=hidden, seed=0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="default",
                        help="'default', an exported policy's path, or 'random' (hidden (16,))")
    parser.add_argument("--hidden", default="16",
                        help="hidden sizes of a random policy, comma-separated (default 16)")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=10, help="blocks per optimizer")
    parser.add_argument("--steps", type=int, default=10, help="steps per block")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (tracing, XLA)")
    parser.add_argument("--jit-model", action="store_true",
                        help="compile the whole train step with XLA (both optimizers)")
    parser.add_argument("--quick", action="store_true",
                        help="smallest setting (seconds): batch 32, one block of 2 steps")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.blocks, args.steps, args.warmup = 32, 1, 2, 1

    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(args.batch, LAYERS[0])).astype(np.float32))
    y = tf.constant(rng.integers(0, LAYERS[-1], args.batch))
    hidden = tuple(int(h) for h in args.hidden.split(",") if h)
    optimizers = {"learned": LearnedOptimizer(resolve_policy(args.policy, hidden)),
                  "adam": tf.keras.optimizers.Adam()}
    steps, times, cpu = {}, {}, {}
    for name, optimizer in optimizers.items():
        model = build_model()
        steps[name] = make_step(model, optimizer, args.jit_model)
        time_steps(steps[name], x, y, args.warmup)
        times[name], cpu[name] = [], 0.0
    print(f"parameters: {model.count_params()}, batch {args.batch}, "
          f"{args.blocks} blocks of {args.steps} steps each, jit_model={args.jit_model}")
    for _ in range(args.blocks):
        for name in optimizers:
            block, block_cpu = time_steps(steps[name], x, y, args.steps)
            times[name] += block
            cpu[name] += block_cpu
    for name, seconds in cpu.items():
        print(f"{name}_cpu_ms: {1000 * seconds / len(times[name]):.2f}  (mean CPU time per step)")
    medians = {name: 1000 * statistics.median(t) for name, t in times.items()}
    print(f"learned_ms: {medians['learned']:.2f}")
    print(f"adam_ms: {medians['adam']:.2f}")
    print(f"ratio: {medians['learned'] / medians['adam']:.2f}")


if __name__ == "__main__":
    main()
