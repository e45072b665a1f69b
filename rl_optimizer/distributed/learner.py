"""The learner: a TF-Agents `Learner` over the replay table; evaluation, selection, export.

    rl-optimizer learn --address HOST:PORT --run-dir D [--resume] [--no-progress]

The config comes from the server (resuming: the run's own config.yaml). One iteration is
`training.train_steps` gradient steps, as in single-process `train`, so `evaluation.every`,
`checkpoint_every` and `log_every` mean the same. After each iteration the learner pushes its
actor weights to the variable table. Evaluation on validation instances, the best policy under
`<run_dir>/best`, the export and summary.json are `train.py`'s own.

Checkpoints (`<run_dir>/checkpoints`) go with a Reverb checkpoint of the replay table (into
the server's `--checkpoint-dir`), so a killed learner continues with `--resume`, and a
restarted server starts from the replay table it had.
"""

from __future__ import annotations

import os
import time

import tensorflow as tf
from tf_agents.train import interval_trigger
from tf_agents.train import learner as learner_lib
from tqdm.auto import tqdm

from rl_optimizer.config import Config, to_dict
from rl_optimizer.distributed import replay as replay_lib
from rl_optimizer.train import (
    TrainResult,
    _BestPolicy,
    evaluate_and_offer,
    evaluation_due,
    finish_run,
    make_evaluate_fn,
    prepare_run_dir,
)


def _same_run(a: Config, b: Config) -> bool:
    # Where the server listens may differ between the run's start and its resumption.
    return {**to_dict(a), "distributed": None} == {**to_dict(b), "distributed": None}


def build_learner(config: Config, address: str, run_dir: str, client):
    """`(learner, agent, train_step)`: a `Learner` restored from `<run_dir>/checkpoints`.

    It checkpoints every `checkpoint_every` iterations, and asks the server (`client`) for a
    Reverb checkpoint of the replay table at the same steps.
    """
    t = config.training
    tf.keras.utils.set_random_seed(t.seed)  # the initial networks are the seed's
    env, agent, train_step = replay_lib.build_role(config)
    every = t.checkpoint_every * t.train_steps
    learner = learner_lib.Learner(
        os.path.join(run_dir, "checkpoints"), train_step, agent,
        experience_dataset_fn=lambda: replay_lib.training_dataset(address, config, agent,
                                                                  env.batch_size),
        triggers=[interval_trigger.IntervalTrigger(every, client.checkpoint)],
        checkpoint_interval=every, summary_interval=0, max_checkpoints_to_keep=2)
    return learner, agent, train_step


def learn(address: str, run_dir: str, resume: bool = False, progress: bool = True,
          evaluate_fn=None, log=print) -> TrainResult:
    """Trains from the replay server at `address` into `run_dir`; returns what `train` does.

    Args:
      address: the replay server, HOST:PORT.
      run_dir: the run directory (same layout as single-process `train`'s).
      resume: continue the run in `run_dir` from its last checkpoint.
      progress: show a progress bar (else print `iteration I/N` every `log_every`).
      evaluate_fn: as `train.train`'s.
      log: where status lines go.
    """
    client = replay_lib.connect(address)
    served = replay_lib.read_config(client)
    config = prepare_run_dir(served, run_dir, resume)
    if not _same_run(config, served):
        raise ValueError(f"the replay server at {address} serves another config than the run "
                         f"in {run_dir!r}; start the server with that run's config.yaml")
    t = config.training
    learner, agent, train_step = build_learner(config, address, run_dir, client)
    iteration = int(train_step.numpy()) // t.train_steps
    if resume:
        log(f"learner: resumed at iteration {iteration}; replay table holds "
            f"{replay_lib.table_size(client)} items")
    push = replay_lib.SharedVariables(address, agent).push
    push(iteration)
    evaluate_fn = evaluate_fn or make_evaluate_fn(config)
    best = _BestPolicy(run_dir)
    writer = tf.summary.create_file_writer(os.path.join(run_dir, "train"))
    evaluation, interrupted, start = {}, False, time.time()
    bar = tqdm(total=t.iterations, initial=iteration, disable=not progress, desc="learn",
               unit="it", dynamic_ncols=True)
    try:
        with writer.as_default():
            if iteration == 0 and evaluation_due(config, 0):
                evaluation = evaluate_and_offer(agent, config, 0, evaluate_fn, best, writer)
            while iteration < t.iterations:
                losses = learner.run(iterations=t.train_steps)
                iteration += 1
                push(iteration)
                if iteration % t.log_every == 0 or iteration == t.iterations:
                    tf.summary.scalar("train/actor_loss", losses.extra.actor_loss, iteration)
                    tf.summary.scalar("train/critic_loss", losses.extra.critic_loss, iteration)
                    if not progress:
                        log(f"iteration {iteration}/{t.iterations}")
                if evaluation_due(config, iteration):
                    evaluation = evaluate_and_offer(agent, config, iteration, evaluate_fn, best,
                                                    writer)
                bar.update(1)
    except KeyboardInterrupt:
        interrupted = True
        log(f"\ninterrupted at iteration {iteration}: checkpointing")
        learner._checkpointer.save(train_step)  # noqa: SLF001  (the Learner offers no save())
        client.checkpoint()
    finally:
        bar.close()
    push(iteration, finished=not interrupted)
    return finish_run(config, run_dir, agent, best, iteration, time.time() - start, evaluation,
                      interrupted)

