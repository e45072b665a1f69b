"""Distributed training on DeepMind Reverb: one learner, N collectors, any number of machines.

                      ┌──────────── replay server (Reverb) ────────────┐
    collector 0 ──►   │ replay     2-step items of C coordinates, B/C  │   ──► learner
    collector 1 ──►   │            per step; SampleToInsertRatio       │       (Learner, DDPG,
        ...           │ variables  the learner's actor weights         │  ◄──   evaluation,
    collector N ◄──   │ config     the run's config (YAML)             │        best policy,
                      └────────────────────────────────────────────────┘        export)

* `replay.py`: the server's tables, the connection (retries, then an error naming the address)
  and the learner's dataset, which flattens coordinates into training batches.
* `collector.py`: `PyDriver` over `OptimizationEnv`; `CoordinateBatchObserver` splits the
  coordinate-batched trajectories into items; actor weights are pulled every
  `distributed.pull_every` steps.
* `learner.py`: a TF-Agents `Learner`; evaluation, best-policy selection and export are
  `train.py`'s own.
* `local.py`: `rl-optimizer train --collectors N`: all roles on this machine in one command.

Needs the `[distributed]` extra (dm-reverb 0.14.0, Linux x86_64 only). Nothing here is imported
by single-process training.
"""

REPLAY_TABLE = "replay"
"""Table of 2-step items: one item holds C coordinates of two consecutive steps."""
VARIABLE_TABLE = "variables"
"""Table holding the latest actor weights and the learner's progress (`ReverbVariableContainer`)."""
CONFIG_TABLE = "config"
"""Table holding the run's config as YAML, so collectors and learners need no config file."""
