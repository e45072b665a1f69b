"""Latency, throughput, load and memory of `rl-optimizer serve` over gRPC (loopback).

    python -m rl_optimizer.benchmarks.serving [--policy PATH|random] [--target HOST:PORT] [--quick]

Starts `rl-optimizer serve` as a process of its own (unless `--target`), so its memory is its
own, and prints `name: value` lines:

  latency    p50/p99 of `PolicyClient.step` for 10k and 1M coordinates, one client; throughput
             with `--concurrency` clients; the same step in this process, through the exported
             SavedModel's signature (what the server runs) and `policy.step` compiled with XLA
  load       `--load-clients` clients × `--load-requests` steps of 10k coordinates: errors must be 0
  tiny       a 73-byte request declaring 2^24 coordinates: its status code, how long it took, and
             the server's RSS before and after
  bursts     server RSS after a warm-up burst and after each of `--bursts` bursts of
             `--burst-requests` 1M-coordinate requests: the last over the first is `rss_ratio`

Every loop is bounded by its request count. Exits 1 if the load test had errors or the tiny
request was not refused.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from rl_optimizer import features
from rl_optimizer.benchmarks.keras_step import resolve_policy
from rl_optimizer.export import GRADIENT, SEGMENTS, STATE, STEP_SIGNATURE, UPDATE, export_policy
from rl_optimizer.policy import DEFAULT_MODEL_NAME
from rl_optimizer.serving import PolicyClient
from rl_optimizer.serving.memory import rss_bytes

MB = 1 << 20


@contextlib.contextmanager
def server_process(model_dir: str, *flags: str, startup_seconds: float = 300):
    """`rl-optimizer serve --model-dir model_dir --port 0 *flags` as a child process; yields
    (target, pid) once it serves, terminates it (SIGTERM, as `docker stop`) on exit."""
    command = [sys.executable, "-m", "rl_optimizer.cli", "serve", "--model-dir", model_dir,
               "--port", "0", *flags]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    output = collections.deque(maxlen=50)
    try:
        deadline = time.monotonic() + startup_seconds
        for line in process.stdout:  # the log until the "serving ... on HOST:PORT" line
            output.append(line.rstrip())
            if line.startswith("serving ") and " on " in line:
                target = line.split(" on ")[-1].split()[0]
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not up after {startup_seconds} s")
        else:
            raise RuntimeError(f"{' '.join(command)} exited {process.wait()}:\n"
                               + "\n".join(output))
        # Drain the log, so a chatty server never blocks on a full pipe.
        threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()
        yield target, process.pid
    finally:
        terminate(process, 30)


def terminate(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM (a server's graceful stop), then SIGKILL after `grace` seconds."""
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


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


def run_clients(target: str, size: int, clients: int, requests: int,
                **client_options) -> tuple[float, list[Exception]]:
    """`clients` threads doing `requests` steps each (after one untimed step): wall-clock
    seconds and the errors, which end their client's loop."""
    calls = [stepping(PolicyClient(target, **client_options).step, size, seed)
             for seed in range(clients)]
    errors = []

    def run(call, count):
        try:
            for _ in range(count):
                call()
        except Exception as e:  # counted: the load figures report every failure
            errors.append(e)

    for call in calls:
        run(call, 1)
    threads = [threading.Thread(target=run, args=(call, requests)) for call in calls]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, errors


def in_process_steps(version_dir: str, policy):
    """The step as the server runs it (the SavedModel signature) and as Keras does (XLA)."""
    signature = tf.saved_model.load(version_dir).signatures[STEP_SIGNATURE]

    def saved_model_step(gradient, state):
        out = signature(**{GRADIENT: tf.constant(gradient), STATE: tf.constant(state),
                           SEGMENTS: tf.zeros([len(gradient)], tf.int32)})
        return out[UPDATE].numpy(), out[STATE].numpy()

    @tf.function(jit_compile=True)
    def xla(gradient, state):
        update, new_state = policy.step(gradient, features.unpack(state))
        return update, features.pack(new_state)

    def xla_step(gradient, state):
        update, new_state = xla(tf.constant(gradient), tf.constant(state))
        return update.numpy(), new_state.numpy()

    return {"saved_model": saved_model_step, "xla": xla_step}


def tiny_request(coordinates: int = 1 << 24) -> predict_pb2.PredictRequest:
    """A request of a few dozen bytes declaring `coordinates` rows: one gradient value (which
    TensorFlow would repeat to fill the shape) and no state values at all."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = DEFAULT_MODEL_NAME
    gradient, state = request.inputs[GRADIENT], request.inputs[STATE]
    segments = request.inputs[SEGMENTS]
    gradient.dtype = state.dtype = tf.float32.as_datatype_enum
    segments.dtype = tf.int32.as_datatype_enum
    gradient.tensor_shape.dim.add(size=coordinates)
    gradient.float_val.append(0.5)
    state.tensor_shape.dim.add(size=coordinates)
    state.tensor_shape.dim.add(size=features.STATE_SIZE)
    segments.tensor_shape.dim.add(size=coordinates)
    return request


def send_tiny(target: str, pid: int | None) -> dict:
    """Sends `tiny_request()`: its size, status code, milliseconds and the server's RSS delta."""
    request = tiny_request()
    channel = grpc.insecure_channel(target)
    grpc.channel_ready_future(channel).result(timeout=60)  # connecting is not the request's time
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    before = rss_bytes(pid) if pid else 0
    start = time.perf_counter()
    try:
        stub.Predict(request, timeout=60)
        code = "OK"
    except grpc.RpcError as e:
        code = e.code().name
    figures = {"tiny_request_bytes": request.ByteSize(), "tiny_request_code": code,
               "tiny_request_ms": round(1000 * (time.perf_counter() - start), 2)}
    if pid:
        figures["tiny_request_rss_delta_mb"] = round((rss_bytes(pid) - before) / MB, 1)
    return figures


def latency(target: str, local: dict, sizes, counts, concurrency: int) -> dict:
    figures = {}
    client = PolicyClient(target)
    for size, n in zip(sizes, counts):
        cases = {"grpc": client.step, **local}
        for label, step in cases.items():
            seconds = time_calls(stepping(step, size), n)
            p50, p99 = np.percentile(seconds, [50, 99]) * 1e3
            figures[f"{label}_{size}_p50_ms"] = round(p50, 2)
            figures[f"{label}_{size}_p99_ms"] = round(p99, 2)
        each = max(1, n // concurrency)
        seconds, errors = run_clients(target, size, concurrency, each)
        figures[f"grpc_{size}_{concurrency}_clients_mcoords_per_s"] = round(
            size * each * concurrency / seconds / 1e6, 1)
        figures[f"grpc_{size}_{concurrency}_clients_errors"] = len(errors)
    return figures


def bursts(target: str, pid: int, size: int, requests: int, count: int, clients: int) -> dict:
    """Server RSS after a warm-up burst and after each of `count` bursts of `requests`."""
    each = max(1, requests // clients)
    rss, errors = [], 0
    for _ in range(count + 1):
        _, failed = run_clients(target, size, clients, each, chunk_size=size)
        errors += len(failed)
        time.sleep(1.0)  # the server trims its heap once the burst is over
        rss.append(rss_bytes(pid))
    figures = {"burst_requests": each * clients, "burst_coordinates": size,
               "burst_errors": errors, "rss_after_warmup_mb": round(rss[0] / MB, 1)}
    for i, value in enumerate(rss[1:], 1):
        figures[f"rss_after_burst_{i}_mb"] = round(value / MB, 1)
    figures["rss_ratio"] = round(max(rss[1:]) / rss[0], 3)
    return figures


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="default",
                        help="'default', an exported policy's path, or 'random'")
    parser.add_argument("--target", help="host:port of a running server (no memory figures)")
    parser.add_argument("--requests", type=int, default=300, help="timed small steps")
    parser.add_argument("--large-requests", type=int, default=10, help="timed large steps")
    parser.add_argument("--concurrency", type=int, default=16, help="clients at once")
    parser.add_argument("--load-clients", type=int, default=32)
    parser.add_argument("--load-requests", type=int, default=300, help="per load client")
    parser.add_argument("--bursts", type=int, default=3)
    parser.add_argument("--burst-requests", type=int, default=200)
    parser.add_argument("--burst-clients", type=int, default=8)
    parser.add_argument("--quick", action="store_true",
                        help="smallest setting (seconds): tiny sizes and counts")
    args = parser.parse_args(argv)
    args.sizes = (10_000, 1_000_000)
    if args.quick:
        args.sizes = (1000, 100_000)
        args.requests = args.large_requests = args.load_requests = 5
        args.concurrency = args.load_clients = args.burst_clients = 2
        args.burst_requests = 4
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    policy = resolve_policy(args.policy, (16,))
    figures = {}
    with tempfile.TemporaryDirectory() as model_dir, contextlib.ExitStack() as stack:
        version_dir = export_policy(policy, model_dir)
        target, pid = args.target, None
        if target is None:
            target, pid = stack.enter_context(server_process(model_dir))
        print(f"server: {target}" + (f" (pid {pid})" if pid else ""))
        print(f"cpus: {os.cpu_count()}")
        print(f"load_average: {os.getloadavg()[0]:.1f} (other processes slow every figure)")
        PolicyClient(target).wait_until_available(timeout=120)
        small, large = args.sizes
        figures.update(latency(target, in_process_steps(version_dir, policy), args.sizes,
                               (args.requests, args.large_requests), args.concurrency))
        seconds, errors = run_clients(target, small, args.load_clients, args.load_requests)
        figures.update({"load_clients": args.load_clients,
                        "load_requests_per_client": args.load_requests,
                        "load_coordinates": small, "load_errors": len(errors),
                        "load_requests_per_second": round(
                            args.load_clients * args.load_requests / seconds)})
        figures.update(send_tiny(target, pid))
        if pid:
            figures.update(bursts(target, pid, large, args.burst_requests, args.bursts,
                                  args.burst_clients))
    for name, value in figures.items():
        print(f"{name}: {value}")
    return figures


if __name__ == "__main__":
    results = main()
    sys.exit(1 if results["load_errors"] or results["tiny_request_code"] == "OK" else 0)
