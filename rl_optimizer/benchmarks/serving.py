"""Latency and throughput of optimizer steps over gRPC (loopback), against the same in-process.

    python -m rl_optimizer.benchmarks.serving [--policy PATH|random] [--target HOST:PORT]

For 10k- and 1M-coordinate steps: p50/p99 latency and coordinates per second of `PolicyClient.step`
against `rl-optimizer serve` on 127.0.0.1 (started here unless `--target`), one client and then
`--concurrency` clients at once; and the same step in this process, through the exported
SavedModel's signature (what the server runs) and through `policy.step` compiled with XLA (what
`LearnedOptimizer` runs). Every loop is bounded by its request count.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time

import numpy as np
import tensorflow as tf

from rl_optimizer import features
from rl_optimizer.benchmarks.keras_step import resolve_policy
from rl_optimizer.export import GRADIENT, STATE, STEP_SIGNATURE, UPDATE, export_policy
from rl_optimizer.serving import PolicyClient, PolicyServer

SIZES = (10_000, 1_000_000)


def time_calls(call, n: int, warmup: int = 3) -> np.ndarray:
    """Seconds of each of `n` calls of `call()`, after `warmup` untimed ones."""
    for _ in range(warmup):
        call()
    times = np.empty(n)
    for i in range(n):
        start = time.perf_counter()
        call()
        times[i] = time.perf_counter() - start
    return times


def stepping(step, size: int, seed: int = 0):
    """A call doing one step of `size` coordinates, carrying the state from call to call."""
    rng = np.random.default_rng(seed)
    gradient = rng.normal(size=size).astype(np.float32)
    state = [np.zeros((size, features.STATE_SIZE), np.float32)]

    def call():
        _, state[0] = step(gradient, state[0])

    return call


def concurrent_seconds(target: str, size: int, clients: int, requests: int) -> float:
    """Wall-clock seconds for `clients` clients doing `requests` steps each."""
    calls = [stepping(PolicyClient(target).step, size, seed) for seed in range(clients)]
    for call in calls:
        call()
    threads = [threading.Thread(target=lambda c=c: [c() for _ in range(requests)])
               for c in calls]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start


def in_process_steps(version_dir: str, policy):
    """The step as the server runs it (the SavedModel signature) and as Keras does (XLA)."""
    signature = tf.saved_model.load(version_dir).signatures[STEP_SIGNATURE]

    def saved_model_step(gradient, state):
        out = signature(**{GRADIENT: tf.constant(gradient), STATE: tf.constant(state)})
        return out[UPDATE].numpy(), out[STATE].numpy()

    @tf.function(jit_compile=True)
    def xla(gradient, state):
        update, new_state = policy.step(gradient, features.unpack(state))
        return update, features.pack(new_state)

    def xla_step(gradient, state):
        update, new_state = xla(tf.constant(gradient), tf.constant(state))
        return update.numpy(), new_state.numpy()

    return {"in-process SavedModel signature": saved_model_step,
            "in-process policy.step, XLA": xla_step}


def row(size: int, label: str, seconds: np.ndarray) -> str:
    p50, p99 = np.percentile(seconds, [50, 99]) * 1e3
    return (f"{size:>9,}  {label:<34} {p50:9.2f} {p99:9.2f} "
            f"{size / seconds.mean() / 1e6:11.1f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="default",
                        help="'default', an exported policy's path, or 'random'")
    parser.add_argument("--target", help="host:port of a running server (default: start one)")
    parser.add_argument("--requests", type=int, default=300, help="timed 10k-coordinate steps")
    parser.add_argument("--large-requests", type=int, default=10,
                        help="timed 1M-coordinate steps")
    parser.add_argument("--concurrency", type=int, default=16, help="clients at once")
    args = parser.parse_args(argv)

    policy = resolve_policy(args.policy)
    with tempfile.TemporaryDirectory() as model_dir, contextlib.ExitStack() as stack:
        version_dir = export_policy(policy, model_dir)
        target = args.target or stack.enter_context(PolicyServer(model_dir, port=0)).target
        client = PolicyClient(target)
        local = in_process_steps(version_dir, policy)
        print(f"server {target}; {os.cpu_count()} CPUs, load average "
              f"{os.getloadavg()[0]:.1f} (other processes slow every row alike)\n")
        print(f"{'coords':>9}  {'path':<34} {'p50 ms':>9} {'p99 ms':>9} {'Mcoords/s':>11}")
        for size, n in zip(SIZES, (args.requests, args.large_requests)):
            print(row(size, "gRPC loopback, 1 client", time_calls(stepping(client.step, size), n)))
            each = max(1, n // args.concurrency)
            seconds = concurrent_seconds(target, size, args.concurrency, each)
            total = each * args.concurrency
            print(f"{size:>9,}  {f'gRPC loopback, {args.concurrency} clients':<34} "
                  f"{'':>9} {'':>9} {size * total / seconds / 1e6:11.1f}"
                  f"   ({total / seconds:.0f} requests/s)")
            for label, step in local.items():
                print(row(size, label, time_calls(stepping(step, size), n)))


if __name__ == "__main__":
    main()
