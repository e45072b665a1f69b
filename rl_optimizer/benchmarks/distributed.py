"""Distributed training throughput: collection with 1 and 2 collectors; learner vs one process.

    python -m rl_optimizer.benchmarks.distributed [--config PATH] [--seconds S] [--quick]

Collection: a local replay server whose rate limiter never blocks inserts, N collector
processes (`rl-optimizer collect`), and coordinate transitions inserted per second once every
collector has joined and warmed up. Training: gradient steps per second of single-process
`train`'s loop (collect, then `train_steps` steps) against the distributed learner's
(`Learner.run`) fed by 2 collectors under the config's train/collect ratio. The last line is
`collect_scaling_2_vs_1: R`. Needs the [distributed] extra; `--quick` uses configs/smoke.yaml.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import tempfile
import time

from rl_optimizer.config import CONFIG_DIR, load_config
from rl_optimizer.distributed import REPLAY_TABLE
from rl_optimizer.distributed import replay as replay_lib
from rl_optimizer.distributed.learner import build_learner
from rl_optimizer.distributed.local import CollectorPool
from rl_optimizer.train import _initial_collect, _iterate, _Run


def _inserts(client) -> int:
    return client.server_info()[REPLAY_TABLE].rate_limiter_info.insert_stats.completed


def _wait_joined(log_dir: str, count: int, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        logs = [os.path.join(log_dir, f"task-{i}.log") for i in range(count)]
        if all(os.path.isfile(p) and re.search(r"joined", open(p).read()) for p in logs):
            return
        time.sleep(0.2)
    raise TimeoutError(f"collectors did not join within {timeout:.0f} s; see {log_dir}")


@contextlib.contextmanager
def _cluster(config, collectors: int, work_dir: str):
    """`(address, client, batch_size)`: a server, a learner's first weights push, N collectors
    (batch_size: the coordinates of one environment step)."""
    server = replay_lib.start_server(config)
    address = f"127.0.0.1:{server.port}"
    client = replay_lib.connect(address)
    env, agent, _ = replay_lib.build_role(config)
    replay_lib.SharedVariables(address, agent).push(0)
    log_dir = os.path.join(work_dir, f"collectors-{collectors}-{time.time_ns()}")
    try:
        with CollectorPool(address, collectors, log_dir, log=lambda _: None):
            _wait_joined(log_dir, collectors)
            yield address, client, env.batch_size
            # A new client: building a Learner meanwhile drops the eager resources made before.
            replay_lib.SharedVariables(address, agent).push(0, finished=True)
    finally:
        server.stop()


def collection_rate(config, collectors: int, seconds: float, work_dir: str) -> float:
    """Coordinate transitions per second that `collectors` processes insert together."""
    free = dataclasses.replace(config, distributed=dataclasses.replace(
        config.distributed, rate_tolerance=1e12))  # no learner here: never hold inserts
    with _cluster(free, collectors, work_dir) as (_, client, batch_size):
        coordinates = replay_lib.item_layout(free.distributed.coordinates_per_item, batch_size)[0]
        time.sleep(min(seconds, 5))  # every collector has traced its policy and environment
        before, start = _inserts(client), time.perf_counter()
        time.sleep(seconds)
        inserted, elapsed = _inserts(client) - before, time.perf_counter() - start
    return inserted * coordinates / elapsed


def single_process_train_rate(config, iterations: int, work_dir: str) -> float:
    """Gradient steps per second of `train`'s loop (collection included)."""
    run = _Run(config, os.path.join(work_dir, "single"))
    _initial_collect(run, config.training.initial_collect_steps)
    iterator = run.dataset_iterator()
    _iterate(run, iterator)  # trace
    start = time.perf_counter()
    for _ in range(iterations):
        _iterate(run, iterator)
    return iterations * config.training.train_steps / (time.perf_counter() - start)


def learner_train_rate(config, iterations: int, work_dir: str, collectors: int = 2) -> float:
    """Gradient steps per second of the distributed learner fed by `collectors` processes."""
    t = config.training
    with _cluster(config, collectors, work_dir) as (address, client, _):
        learner, _, _ = build_learner(config, address, os.path.join(work_dir, "learner"), client)
        learner.run(iterations=t.train_steps)  # trace, and wait for initial_collect_steps
        start = time.perf_counter()
        for _ in range(iterations):
            learner.run(iterations=t.train_steps)
        return iterations * t.train_steps / (time.perf_counter() - start)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="run config (default: the embedded one)")
    parser.add_argument("--seconds", type=float, default=20.0,
                        help="collection measured over this long per setting")
    parser.add_argument("--iterations", type=int, default=50, help="training iterations timed")
    parser.add_argument("--quick", action="store_true",
                        help="configs/smoke.yaml, 3 s per setting, 10 iterations")
    args = parser.parse_args(argv)
    if args.quick:
        args.config = args.config or os.path.join(CONFIG_DIR, "smoke.yaml")
        args.seconds, args.iterations = 3.0, 10
    config = load_config(args.config)
    with tempfile.TemporaryDirectory() as work_dir:
        rates = {n: collection_rate(config, n, args.seconds, work_dir) for n in (1, 2)}
        # The learner first: single-process `train` turns on op determinism for the process.
        learner = learner_train_rate(config, args.iterations, work_dir)
        single = single_process_train_rate(config, args.iterations, work_dir)
    print(f"cpu_count: {os.cpu_count()}")
    print(f"load_average_1min: {os.getloadavg()[0]:.2f}")
    for n, rate in rates.items():
        print(f"collect_coordinate_transitions_per_second_{n}_collectors: {rate:.0f}")
    print(f"single_process_train_steps_per_second: {single:.1f}")
    print(f"learner_train_steps_per_second_2_collectors: {learner:.1f}")
    print(f"learner_vs_single_process: {learner / single:.2f}")
    scaling = rates[2] / rates[1]
    print(f"collect_scaling_2_vs_1: {scaling:.2f}")
    return scaling


if __name__ == "__main__":
    main()
