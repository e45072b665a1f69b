"""`rl-optimizer train --collectors N`: every role on this machine, in one command.

The replay server and the learner run in this process; each collector is a child process
(`rl-optimizer collect`, its output in `<run_dir>/collectors/task-I.log`). A collector that
dies is restarted and rejoins; children die with this process (Linux parent-death signal).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading

from rl_optimizer.config import Config
from rl_optimizer.distributed import replay as replay_lib
from rl_optimizer.distributed.learner import learn
from rl_optimizer.train import TrainResult, prepare_run_dir

MAX_RESTARTS = 5
"""Restarts per collector before it is given up (a collector failing at start fails again)."""
FINISH_SECONDS = 5
"""How long collectors get to notice that the learner is done before they are terminated."""
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # Ctrl-C is the learner's to handle (it checkpoints); collectors are stopped after it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class CollectorPool:
    """N `rl-optimizer collect` processes, restarted when they fail, stopped on exit."""

    def __init__(self, address: str, count: int, log_dir: str, log=print):
        self.address, self.log_dir, self.log = address, log_dir, log
        os.makedirs(log_dir, exist_ok=True)
        self.processes = [self._start(task) for task in range(count)]
        self.restarts = [0] * count
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch, daemon=True)
        self._watcher.start()

    def _start(self, task: int) -> subprocess.Popen:
        with open(os.path.join(self.log_dir, f"task-{task}.log"), "a") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "rl_optimizer.cli", "collect", "--address", self.address,
                 "--task", str(task)], stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=_child_setup)
        self.log(f"collector {task} started: pid {process.pid}")
        return process

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            for task, process in enumerate(self.processes):
                code = process.poll()
                if code in (None, 0) or self._stop.is_set():
                    continue  # running, or finished because the learner is done
                if self.restarts[task] >= MAX_RESTARTS:
                    continue
                self.restarts[task] += 1
                self.log(f"collector {task} exited with status {code}; restarting")
                self.processes[task] = self._start(task)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self._stop.set()
        self._watcher.join()
        if exc_type is None:  # the learner is done and has said so: collectors stop by themselves
            for process in self.processes:
                try:
                    process.wait(FINISH_SECONDS)
                except subprocess.TimeoutExpired:
                    pass
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def train_distributed(config: Config | None, run_dir: str, collectors: int, resume: bool = False,
                      progress: bool = True, evaluate_fn=None, log=print) -> TrainResult:
    """`train.train` with a Reverb replay server, `collectors` processes and a learner.

    Resuming restarts the server from the replay table's checkpoint in `<run_dir>/replay` and
    the learner from `<run_dir>/checkpoints`. Not deterministic (collectors race).
    """
    if collectors < 1:
        raise ValueError(f"collectors must be >= 1, got {collectors}")
    config = prepare_run_dir(config, run_dir, resume)
    d = config.distributed
    server = replay_lib.start_server(config, d.port, os.path.join(run_dir, "replay"))
    address = f"{d.host}:{server.port}"
    log(f"replay server at {address}")
    try:
        with CollectorPool(address, collectors, os.path.join(run_dir, "collectors"), log):
            return learn(address, run_dir, resume=resume, progress=progress,
                         evaluate_fn=evaluate_fn, log=log)
    finally:
        server.stop()
