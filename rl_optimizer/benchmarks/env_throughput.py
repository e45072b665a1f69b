"""Coordinate steps per second of the default environment through `TFPyEnvironment`.

    python -m rl_optimizer.benchmarks.env_throughput [--steps 300] [--config PATH]

Random actions, episode resets included; the pool of training instances is sampled (and
solved) before timing, as training does at start-up. The last line is
`coordinate_steps_per_second: <number>`.
"""

import argparse
import os
import time

import tensorflow as tf
from tf_agents.environments import tf_py_environment

from rl_optimizer.config import load_config
from rl_optimizer.environment import OptimizationEnv


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="run config (default: the embedded one)")
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--quick", action="store_true",
                        help="smallest setting: configs/smoke.yaml's environment, 20 steps")
    args = parser.parse_args(argv)
    if args.quick:
        from rl_optimizer.config import CONFIG_DIR

        args.steps, args.config = 20, args.config or os.path.join(CONFIG_DIR, "smoke.yaml")
    config = load_config(args.config)
    py_env = OptimizationEnv(config.environment, config.features)
    py_env.prefill_pool(progress=True)
    env = tf_py_environment.TFPyEnvironment(py_env)
    n = env.batch_size
    env.reset()
    for _ in range(10):  # warm up: trace the compiled objective and feature functions
        env.step(tf.random.uniform([n], -1.0, 1.0))
    start = time.perf_counter()
    for _ in range(args.steps):
        env.step(tf.random.uniform([n], -1.0, 1.0))
    seconds = time.perf_counter() - start
    rate = args.steps * n / seconds
    print(f"coordinates_per_step: {n}")
    print(f"episode_horizon: {config.environment.horizon} (resets included)")
    print(f"seconds: {seconds:.2f}")
    print(f"coordinate_steps_per_second: {rate:.0f}")
    return rate


if __name__ == "__main__":
    main()
