"""Coordinate steps per second of the default environment through `TFPyEnvironment`.

    python -m rl_optimizer.benchmarks.env_throughput [--steps 1000] [--config PATH] [--quick]

Random actions, episode resets included; the pool of training instances is sampled (and
solved, or read from the solution cache, `rl_optimizer/objectives/cache.py`) before timing,
as training does at start-up. Prints `name: value` lines:

  startup_seconds              process start to the first timed step: imports, sampling and
                               solving the pool, tracing (the second run reads the cache)
  pool_seconds                 of which sampling and solving the instance pool
  coordinate_steps_per_second  the throughput (last line)

The figures depend on the machine and on what else runs on it: `threads` says how many
TensorFlow may use, and `load_average` how busy the machine was when the run started.
`--quick` runs the smoke config for a few steps (seconds; a test that the benchmark works).
"""

import argparse
import os
import time


def process_start_time() -> float:
    """This process's start, in `time.time()` seconds (import time counts toward start-up)."""
    try:
        import psutil

        return psutil.Process().create_time()
    except ImportError:
        pass
    # Linux without psutil: field 22 of /proc/self/stat is the start in clock ticks after boot.
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def main(argv=None) -> float:
    from rl_optimizer.cli import HelpFormatter

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--config", default=None,
                        help="run config (default: the embedded default.yaml)")
    parser.add_argument("--steps", type=int, default=1000, help="timed environment steps")
    parser.add_argument("--threads", type=int, default=0,
                        help="TensorFlow intra- and inter-op threads (0: TensorFlow's choice)")
    parser.add_argument("--quick", action="store_true",
                        help="the smoke config for 20 steps: seconds, to check it runs")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.threads < 0:
        parser.error(f"--steps must be >= 1 and --threads >= 0, got {args.steps}, {args.threads}")
    started = process_start_time()

    import tensorflow as tf

    if args.threads:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    from tf_agents.environments import tf_py_environment

    from rl_optimizer.config import CONFIG_DIR, load_config
    from rl_optimizer.environment import OptimizationEnv

    if args.quick:
        args.config, args.steps = args.config or os.path.join(CONFIG_DIR, "smoke.yaml"), 20
    config = load_config(args.config)
    py_env = OptimizationEnv(config.environment, config.features)
    pool_start = time.time()
    py_env.prefill_pool(progress=True)
    pool_seconds = time.time() - pool_start
    env = tf_py_environment.TFPyEnvironment(py_env)
    n = env.batch_size
    env.reset()
    for _ in range(10):  # warm up: trace the compiled objective and feature functions
        env.step(tf.random.uniform([n], -1.0, 1.0))
    startup = time.time() - started
    start = time.perf_counter()
    for _ in range(args.steps):
        env.step(tf.random.uniform([n], -1.0, 1.0))
    seconds = time.perf_counter() - start
    rate = args.steps * n / seconds
    print(f"startup_seconds: {startup:.1f}")
    print(f"pool_seconds: {pool_seconds:.1f}")
    threading = tf.config.threading
    print(f"threads: intra_op={threading.get_intra_op_parallelism_threads() or 'default'} "
          f"inter_op={threading.get_inter_op_parallelism_threads() or 'default'} "
          f"cpus={os.cpu_count()}")
    print(f"load_average: {os.getloadavg()[0]:.2f}")
    print(f"coordinates_per_step: {n}")
    print(f"episode_horizon: {config.environment.horizon} (resets included)")
    print(f"seconds: {seconds:.2f}")
    print(f"coordinate_steps_per_second: {rate:.0f}")
    return rate


if __name__ == "__main__":
    main()
