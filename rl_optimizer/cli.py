"""`rl-optimizer`: the command line. Each subcommand lives beside the stage it runs.

A stage module offers `add_arguments(parser)` and `run_command(args) -> int` (or names an object
that does, as `module:name`); this file only registers them, so `rl-optimizer --help` lists
exactly what exists. Every `--help` shows the defaults. `rl-optimizer` alone prints the help
(the subcommands) and exits 2, as any other usage error does; bad input a stage finds
(`ValueError`, `FileNotFoundError`, `ConnectionError`) exits 2 with a message.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

COMMANDS = {
    "train": ("rl_optimizer.train", "train a policy with DDPG and export it"),
    "evaluate": ("rl_optimizer.evaluation.command",
                 "evaluate a policy against tuned baselines: report, CSV, plots"),
    "export": ("rl_optimizer.export", "export a policy as a TF Serving model version"),
    "serve": ("rl_optimizer.serving.server", "serve exported policies over TF Serving's gRPC API"),
    "replay-server": ("rl_optimizer.distributed.commands:replay_server",
                      "distributed training: the Reverb replay server (needs [distributed])"),
    "collect": ("rl_optimizer.distributed.commands:collect",
                "distributed training: a collector feeding the replay server"),
    "learn": ("rl_optimizer.distributed.commands:learn",
              "distributed training: the learner (evaluates, keeps the best policy, exports)"),
}


def _quiet_tensorflow() -> None:
    # The C++ start-up banner is already off (rl_optimizer/__init__.py sets TF_CPP_MIN_LOG_LEVEL
    # before TensorFlow loads); Python-side INFO chatter goes too, warnings stay.
    logging.getLogger("tensorflow").setLevel(logging.WARNING)


def _command(target: str):
    module, _, name = target.partition(":")
    loaded = importlib.import_module(module)
    return getattr(loaded, name) if name else loaded


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none to show (required options,
    flags, None) or the help already states it. For every rl_optimizer command line."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        default = action.default
        # Identity, not ==: a default of 0 is worth showing, and 0 == False.
        if (action.required or any(default is v for v in (None, False, argparse.SUPPRESS))
                or default == [] or "(default" in help_text):
            return help_text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rl-optimizer", description="A reinforcement-learning agent that learns an optimizer.",
        formatter_class=HelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text,
                                 formatter_class=HelpFormatter)
        command.set_defaults(_module=module)
        _command(module).add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_tensorflow()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    try:
        return _command(args._module).run_command(args) or 0
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        print(f"rl-optimizer {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
