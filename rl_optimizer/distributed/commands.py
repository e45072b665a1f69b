"""The command line of the distributed roles: `replay-server`, `collect`, `learn`.

Kept apart from the roles so that `rl-optimizer --help` (which builds every parser) imports no
Reverb: the `[distributed]` extra is needed only to run them.
"""

from __future__ import annotations

import argparse
import signal
import threading
import types


def require_distributed(command: str) -> None:
    """A clear error when the [distributed] extra is missing."""
    try:
        import reverb  # noqa: F401
    except ImportError as e:
        raise ValueError(f"rl-optimizer {command} needs the [distributed] extra (dm-reverb, "
                         f"Linux x86_64): pip install 'rl_optimizer[distributed]' ({e})") from None


def _roles(command: str):
    require_distributed(command)
    from rl_optimizer.distributed import collector, learner, replay
    return types.SimpleNamespace(collector=collector, learner=learner, replay=replay)


def _printer(line: str) -> None:
    print(line, flush=True)


def _replay_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, required=True, help="port to serve on")
    parser.add_argument("--config", default=None,
                        help="the run's YAML config (default: the embedded configs/default.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="Reverb checkpoints: written when the learner checkpoints, the "
                             "latest restored at start (the replay table survives a restart)")


def _replay_server(args) -> int:
    if not 1 <= args.port <= 65535:
        raise ValueError(f"--port must be in [1, 65535], got {args.port}")
    from rl_optimizer.config import load_config

    config = load_config(args.config, args.set)
    replay = _roles("replay-server").replay
    server = replay.start_server(config, args.port, args.checkpoint_dir)
    items = replay.table_size(replay.connect(f"127.0.0.1:{server.port}"))
    _printer(f"replay server on port {server.port} ({items} replay items); Ctrl-C stops it")
    _printer(f"note: Reverb listens on every interface; where others can reach this machine, "
             f"firewall port {server.port}")
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop()
    return 0


def _collect_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", required=True, help="replay server, HOST:PORT")
    parser.add_argument("--task", type=int, default=0,
                        help="this collector's index (seeds its episodes and noise)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="stop after about this many environment steps (default: when the "
                             "learner is done)")


def _collect(args) -> int:
    if args.task < 0:
        raise ValueError(f"--task must be >= 0, got {args.task}")
    _roles("collect").collector.collect(args.address, args.task, args.max_steps, log=_printer)
    return 0


def _learn_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", required=True, help="replay server, HOST:PORT")
    parser.add_argument("--run-dir", required=True, help="directory for this run's outputs")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --run-dir from its last checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _learn(args) -> int:
    from rl_optimizer.train import print_result

    result = _roles("learn").learner.learn(args.address, args.run_dir, resume=args.resume,
                                           progress=not args.no_progress, log=_printer)
    print_result(result)
    return 0


replay_server = types.SimpleNamespace(add_arguments=_replay_server_arguments,
                                      run_command=_replay_server)
collect = types.SimpleNamespace(add_arguments=_collect_arguments, run_command=_collect)
learn = types.SimpleNamespace(add_arguments=_learn_arguments, run_command=_learn)
