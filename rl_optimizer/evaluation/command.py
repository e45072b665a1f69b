"""`rl-optimizer evaluate`: the sweep, the Keras suite and the report, in one command.

    rl-optimizer evaluate --policy default|PATH [--families a,b] [--instances N] [--steps T]
                          [--keras-tasks all|none|a,b] --out DIR [--readme README.md]

Writes DIR/report.md, DIR/results.csv, PNG plots and TensorBoard events (DIR/tensorboard), and
the README's Results section (DIR/readme_results.md; into --readme between markers). Progress
shows on one bar per stage (the sweep in instances, the Keras tasks as `run_keras_tasks`
reports them); the last line on stdout is the quality bar's verdict. The Keras suite runs by
default only in the full sweep (no --families); --keras-tasks chooses its tasks.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from collections.abc import Sequence

from tqdm.auto import tqdm

from rl_optimizer.evaluation.baselines import BASELINES
from rl_optimizer.evaluation.report import (
    headline_table,
    readme_section,
    update_readme,
    write_report,
)
from rl_optimizer.evaluation.sweep import Benchmark


def add_arguments(parser) -> None:
    parser.add_argument("--policy", default="default",
                        help="'default' (the shipped policy), 'nominal' (its zero-action "
                             "ablation), a run directory or an export")
    parser.add_argument("--families", default=None,
                        help="comma-separated families (default: every family)")
    parser.add_argument("--instances", type=int, default=100, help="test instances per family")
    parser.add_argument("--steps", type=int, default=1000, help="steps per run (T)")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--baselines", default=",".join(BASELINES),
                        help="comma-separated baselines (default: all)")
    parser.add_argument("--tuning-instances", type=int, default=16,
                        help="validation instances per family for learning-rate tuning")
    parser.add_argument("--keras-tasks", default=None, metavar="all|none|TASK,…",
                        help="Keras suite tasks to run (default: all without --families, none "
                             "with it)")
    parser.add_argument("--keras-epochs", type=int, default=None,
                        help="epochs of every Keras suite task (default: each task's own; "
                             "0: skip the suite)")
    parser.add_argument("--readme", default=None, metavar="PATH",
                        help="also write the Results section into this README (between markers)")


def _command_line(args) -> str:
    parts = ["rl-optimizer", "evaluate", "--policy", args.policy]
    if args.families:
        parts += ["--families", args.families]
    parts += ["--instances", str(args.instances), "--steps", str(args.steps)]
    if args.baselines != ",".join(BASELINES):
        parts += ["--baselines", args.baselines]
    if args.tuning_instances != 16:
        parts += ["--tuning-instances", str(args.tuning_instances)]
    tasks = keras_task_names(args)
    parts += ["--keras-tasks", ",".join(tasks) or "none"]
    if tasks and args.keras_epochs is not None:
        parts += ["--keras-epochs", str(args.keras_epochs)]
    parts += ["--out", args.out]
    if args.readme:
        parts += ["--readme", args.readme]
    return shlex.join(parts)


def keras_task_names(args) -> tuple[str, ...]:
    """The Keras suite tasks `--keras-tasks` and `--keras-epochs` (0: none) ask for, checked
    against `keras_tasks.TASKS`."""
    from rl_optimizer.evaluation.keras_tasks import TASKS

    chosen = args.keras_tasks
    if chosen is None:
        chosen = "none" if args.families else "all"
    if chosen.strip() == "all":
        names = tuple(TASKS)
    elif chosen.strip() == "none":
        names = ()
    else:
        names = tuple(name.strip() for name in chosen.split(",") if name.strip())
        unknown = [name for name in names if name not in TASKS]
        if unknown or not names:
            raise ValueError(f"--keras-tasks {chosen!r}: unknown task(s) {unknown}; expected "
                             f"'all', 'none' or some of {list(TASKS)}")
    return names if args.keras_epochs != 0 else ()


def run_command(args) -> int:
    from rl_optimizer.policy import load_policy

    # Every input is checked before the first optimizer step.
    if args.keras_epochs is not None and args.keras_epochs < 0:
        raise ValueError(f"--keras-epochs must be >= 0, got {args.keras_epochs}")
    keras_tasks = keras_task_names(args)
    policy = load_policy(args.policy)
    baselines = [b.strip() for b in args.baselines.split(",") if b.strip()]
    benchmark = Benchmark(args.families, args.instances, args.steps, baselines=baselines,
                          tuning_instances=args.tuning_instances, progress=True)
    os.makedirs(args.out, exist_ok=True)
    results = benchmark.evaluate(policy)
    failed = bool(keras_tasks) and not _keras_tasks(results, policy, args.keras_epochs,
                                                    keras_tasks)
    command = _command_line(args)
    paths = write_report(results, args.out, command)
    section = readme_section(results, command)
    with open(os.path.join(args.out, "readme_results.md"), "w") as f:
        f.write(section)
    if args.readme:
        update_readme(args.readme, section)
    print(headline_table(results))
    print(f"\nwall time {results.timings['total']:.0f} s ("
          + ", ".join(f"{k} {v:.0f} s" for k, v in results.timings.items() if k != "total")
          + f")\nreport: {paths['report']}\nraw results: {paths['csv']}\n"
          f"tensorboard --logdir {paths['tensorboard']}")
    print(verdict(results.quality_bar()))
    return 1 if failed else 0


def verdict(bar: dict) -> str:
    """The quality bar's outcome as one line for the terminal (the report has the details)."""
    if bar["missing"]:
        return (f"quality bar: NOT JUDGED: its families {', '.join(bar['missing'])} were not "
                "evaluated (run without --families for the verdict)")
    outcome = "PASSED" if bar["passed"] else "FAILED"
    return (f"quality bar: {outcome}: win rate {bar['win_rate']:.0%} against tuned "
            f"{bar['baseline']} (target {bar['target']:.0%}), {bar['divergences']} "
            "divergences (allowed: 0)")


def _keras_tasks(results, policy, epochs: int | None, tasks: Sequence[str] | None = None,
                 progress: bool = True) -> bool:
    """Adds the Keras suite to `results.extras`; False if it failed.

    A failure there (the Keras optimizer is a separate stage) is reported, with its traceback,
    without losing the sweep that ran before it.
    """
    import traceback

    from rl_optimizer.evaluation import keras_tasks

    tasks = tuple(keras_tasks.TASKS if tasks is None else tasks)
    start = time.perf_counter()
    # `run_keras_tasks` calls `progress(1)` as each task finishes.
    epochs_text = "each task's epochs" if epochs is None else f"{epochs} epochs"
    bar = tqdm(total=len(tasks), desc=f"keras suite ({epochs_text})", unit="task",
               disable=not progress, dynamic_ncols=True)
    try:
        keras = keras_tasks.run_keras_tasks(policy, tasks=tasks, epochs=epochs,
                                            progress=bar.update)
    except Exception as e:  # any failure: the report still gets written
        traceback.print_exc()
        last_line = ([line for line in str(e).splitlines() if line.strip()] or [""])[-1]
        keras = {"skipped": f"the Keras tasks failed ({type(e).__name__}: {last_line.strip()}); "
                            "traceback on stderr"}
        ok = False
    else:
        ok = True
    finally:
        bar.close()
    total = results.timings.pop("total")
    results.timings["keras"] = time.perf_counter() - start
    results.timings["total"] = total + results.timings["keras"]
    results.extras["keras"] = keras
    if "skipped" in keras:
        print(f"Keras suite skipped: {keras['skipped']}", file=sys.stderr)
    return ok
