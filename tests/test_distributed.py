"""Distributed training (issue 10): Reverb server, collectors, learner; Keras under MWMS.

End to end on loopback with the smoke config: every process started here is killed at teardown,
every port is picked free at test time.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("reverb", reason="needs the [distributed] extra (Linux x86_64)")

pytestmark = pytest.mark.slow

WAIT_SECONDS = 180


@pytest.fixture
def spawn(tmp_path):
    """`spawn(name, *cli_args) -> (process, log_path)`: `rl-optimizer ...` in its own session."""
    processes = []

    def start(name, *args, argv=None):
        log_path = tmp_path / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                argv or [sys.executable, "-m", "rl_optimizer.cli", *args],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        processes.append(process)
        return process, log_path

    yield start
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _wait_for(log_path, pattern, process=None, timeout=WAIT_SECONDS) -> re.Match:
    """The first match of `pattern` in the log; fails if `process` exits or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        match = re.search(pattern, text)
        if match:
            return match
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.2)
    pytest.fail(f"{pattern!r} never appeared in {log_path}:\n{text[-3000:]}")


def _finish(process, log_path, timeout=WAIT_SECONDS) -> str:
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        code = None
    text = log_path.read_text(errors="replace")
    assert code == 0, f"exit status {code}:\n{text[-3000:]}"
    return text


def _smoke(*overrides):
    from rl_optimizer.config import CONFIG_DIR

    args = ["--config", os.path.join(CONFIG_DIR, "smoke.yaml")]
    for item in ("evaluation.every=0", *overrides):
        args += ["--set", item]
    return args


def _iteration(log_path) -> int:
    found = re.findall(r"iteration (\d+)/", log_path.read_text())
    return int(found[-1]) if found else 0


def test_role_commands_two_collectors_kill_rejoin_and_learner_resume(spawn, tmp_path,
                                                                     free_port):
    port = free_port()
    address = f"127.0.0.1:{port}"
    server, server_log = spawn("server", "replay-server", "--port", str(port),
                               *_smoke("training.iterations=200"),
                               "--checkpoint-dir", str(tmp_path / "replay"))
    _wait_for(server_log, r"replay server on port \d+", server)
    run_dir = str(tmp_path / "run")
    learner, learner_log = spawn("learner", "learn", "--address", address, "--run-dir", run_dir,
                                 "--no-progress")
    collectors = [spawn(f"collector{i}", "collect", "--address", address, "--task", str(i))
                  for i in range(2)]
    _wait_for(learner_log, r"iteration 2/200", learner)
    # Frozen, the learner cannot finish while collector 1 is killed and restarted.
    os.kill(learner.pid, signal.SIGSTOP)
    paused_at = _iteration(learner_log)
    _wait_for(collectors[1][1], r"collector 1: joined", collectors[1][0])
    os.killpg(collectors[1][0].pid, signal.SIGKILL)
    rejoined, rejoined_log = spawn("collector1-again", "collect", "--address", address,
                                   "--task", "1")
    joined_at = int(_wait_for(rejoined_log, r"collector 1: joined .* iteration (\d+)",
                              rejoined).group(1))
    assert joined_at >= paused_at >= 2  # it pulled the learner's current weights
    os.kill(learner.pid, signal.SIGCONT)
    _wait_for(learner_log, rf"iteration {max(paused_at + 10, 12)}/200", learner)
    os.killpg(learner.pid, signal.SIGKILL)  # after a checkpoint (every 5 iterations)
    learner.wait()
    resumed, resumed_log = spawn("resumed", "learn", "--address", address, "--run-dir", run_dir,
                                 "--no-progress", "--resume")
    text = _finish(resumed, resumed_log)
    match = re.search(r"resumed at iteration (\d+); replay table holds (\d+) items", text)
    assert match and int(match.group(1)) >= 10 and int(match.group(2)) > 0, text[-2000:]
    assert "trained 200 iterations" in text
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["iterations"] == 200 and os.path.isdir(summary["export_path"])
    # Every live collector saw the learner finish and stopped by itself, having written items.
    for process, log in (collectors[0], (rejoined, rejoined_log)):
        _finish(process, log, timeout=60)
        assert re.search(r"collector \d: [1-9]\d* items .* iteration 200, done",
                         log.read_text()), log.read_text()[-2000:]


def test_local_run_restarts_a_killed_collector_and_resumes_with_its_replay_table(spawn,
                                                                                 tmp_path):
    run_dir = tmp_path / "run"
    train, log = spawn("train", "train", *_smoke("training.iterations=200"),
                       "--run-dir", str(run_dir), "--collectors", "1", "--no-progress")
    pid = int(_wait_for(log, r"collector 0 started: pid (\d+)", train).group(1))
    _wait_for(log, r"iteration 12/200", train)
    os.kill(pid, signal.SIGKILL)
    _wait_for(log, r"collector 0 exited with status -9; restarting", train)
    os.killpg(train.pid, signal.SIGKILL)  # the server dies too: only its checkpoint remains
    train.wait()
    resumed, resumed_log = spawn("resumed", "train", "--run-dir", str(run_dir), "--resume",
                                 "--collectors", "1", "--no-progress")
    text = _finish(resumed, resumed_log)
    match = re.search(r"resumed at iteration (\d+); replay table holds (\d+) items", text)
    assert match and int(match.group(1)) >= 10 and int(match.group(2)) > 0, text[-2000:]
    assert "trained 200 iterations" in text


def test_unreachable_server_is_retried_then_named(free_port):
    from rl_optimizer.distributed import replay

    address = f"127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=re.escape(address) + ".* after 3 tries"):
        replay.connect(address, retries=3, retry_seconds=0.2)
    assert time.monotonic() - start >= 0.4  # it did wait between tries


def test_collector_threads_are_set_in_a_fresh_process_and_refused_once_tensorflow_runs():
    import tensorflow as tf

    from rl_optimizer.distributed import collector

    script = ("import tensorflow as tf\n"
              "from rl_optimizer.distributed.collector import set_threads\n"
              "set_threads(1)\n"
              "print(tf.config.threading.get_intra_op_parallelism_threads(),"
              " tf.config.threading.get_inter_op_parallelism_threads())\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[-2:] == ["1", "1"]
    tf.constant(1.0) + 1.0  # this process's TensorFlow has started
    with pytest.raises(RuntimeError, match="distributed.collector_threads=2"):
        collector.set_threads(2)
    collector.set_threads(0)  # TensorFlow's default: nothing to set


def test_observer_writes_two_step_items_and_the_dataset_flattens_coordinates(
        smoke_config_path, tmp_path):
    import dataclasses

    from tf_agents.drivers import py_driver
    from tf_agents.policies import random_py_policy

    from rl_optimizer.config import load_config
    from rl_optimizer.distributed import REPLAY_TABLE, replay
    from rl_optimizer.distributed.collector import CoordinateBatchObserver

    config = load_config(smoke_config_path)
    # 11 coordinates in items of 4: 3 items per step, the last one filled up cyclically.
    config = dataclasses.replace(
        config, environment=dataclasses.replace(config.environment, horizon=3),
        distributed=dataclasses.replace(config.distributed, coordinates_per_item=4))
    server = replay.start_server(config, checkpoint_dir=str(tmp_path / "replay"))
    try:
        address = f"127.0.0.1:{server.port}"
        client = replay.connect(address)
        assert replay.read_config(client) == config
        env, agent, _ = replay.build_role(config)
        observer = CoordinateBatchObserver(client, REPLAY_TABLE, 4, should_stop=lambda: True)
        policy = random_py_policy.RandomPyPolicy(env.time_step_spec(), env.action_spec(),
                                                 outer_dims=(env.batch_size,))
        # PyDriver counts non-boundary transitions: 6 of them are 7 trajectories of 3-step
        # episodes, FIRST MID MID LAST|boundary FIRST MID MID. Items pair each with the next,
        # except the boundary with the next episode's first: 5, times 3 items per step.
        py_driver.PyDriver(env, policy, [observer], max_steps=6 * env.batch_size).run(
            env.reset())
        observer.close()
        assert env.batch_size == 11
        assert observer.items == replay.table_size(client) == 15
        batch, _ = next(iter(replay.training_dataset(address, config, agent, env.batch_size)))
        assert batch.observation.shape == (config.training.batch_size, 2,
                                           *env.observation_spec().shape)
        # Each row is one coordinate's transition: never from an episode's last step.
        assert not np.any(batch.step_type.numpy()[:, 0] == 2)
        client.checkpoint()
    finally:
        server.stop()
    restarted = replay.start_server(config, checkpoint_dir=str(tmp_path / "replay"))
    try:
        assert replay.table_size(replay.connect(f"127.0.0.1:{restarted.port}")) == 15
    finally:
        restarted.stop()


# --- Keras: LearnedOptimizer under MultiWorkerMirroredStrategy ----------------------------

GLOBAL_BATCH = 16
STEPS = 5


def _mwms_worker(workers: list[str], index: int, out: str) -> None:
    """Trains a small model with `LearnedOptimizer` as worker `index`; saves its weights."""
    os.environ["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers},
                                          "task": {"type": "worker", "index": index}})
    import tensorflow as tf

    from rl_optimizer import LearnedOptimizer, LearnedPolicy

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(GLOBAL_BATCH, 4)).astype(np.float32)
    y = rng.normal(size=(GLOBAL_BATCH,)).astype(np.float32)
    share = GLOBAL_BATCH // len(workers)
    x, y = x[index * share:(index + 1) * share], y[index * share:(index + 1) * share]
    with strategy.scope():
        glorot = tf.keras.initializers.GlorotUniform
        model = tf.keras.Sequential([tf.keras.layers.Dense(8, "tanh", kernel_initializer=glorot(1)),
                                     tf.keras.layers.Dense(1, kernel_initializer=glorot(2))])
        model.build((None, 4))
        optimizer = LearnedOptimizer(LearnedPolicy.random(seed=0), learning_rate=0.01)

    @tf.function
    def step(x, y):
        def replica(x, y):
            with tf.GradientTape() as tape:
                loss = tf.nn.compute_average_loss(tf.square(model(x)[:, 0] - y),
                                                  global_batch_size=GLOBAL_BATCH)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
        strategy.run(replica, args=(x, y))

    for _ in range(STEPS):
        step(tf.constant(x), tf.constant(y))
    np.savez(out, *[w.numpy() for w in model.trainable_variables])


def test_learned_optimizer_multi_worker_mirrored_matches_one_worker(spawn, tmp_path,
                                                                     free_port):
    two = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    runs = {"worker0": (two, 0), "worker1": (two, 1), "single": ([f"127.0.0.1:{free_port()}"], 0)}
    started = {name: spawn(name, argv=[sys.executable, __file__, json.dumps(workers), str(i),
                                       str(tmp_path / f"{name}.npz")])
               for name, (workers, i) in runs.items()}
    for process, log in started.values():
        _finish(process, log)
    single = np.load(tmp_path / "single.npz")
    for name in ("worker0", "worker1"):
        weights = np.load(tmp_path / f"{name}.npz")
        for key in single.files:
            np.testing.assert_allclose(weights[key], single[key], rtol=1e-5, atol=1e-6)
    # The optimizer moved the weights (the check would pass trivially otherwise).
    assert not np.allclose(single["arr_0"], _initial_kernel())


def _initial_kernel():
    import tensorflow as tf

    return tf.keras.initializers.GlorotUniform(1)((4, 8)).numpy()


if __name__ == "__main__":  # one worker of the MultiWorkerMirroredStrategy test
    _mwms_worker(json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
