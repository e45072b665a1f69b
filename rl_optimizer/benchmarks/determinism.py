"""How deterministic a tensor's gradient looks, along a policy's own trajectories.

    python -m rl_optimizer.benchmarks.determinism [--policy default|PATH] [--families a,b]
        [--instances 10] [--steps 1500] [--quick]

Two per-tensor signals, each the |cosine| of this step's preconditioned gradient g/√v̂ with
something from the last step (`features.preconditioned_cosine`: the features' own sums, so the
signals are the ones the rule reads): with the last gradient g_{t−1}/√v̂ (what `determinism_gate`
reads), and with the momentum m_{t−1}/√v̂ (the alignment, what `rms_sharing` reads without the
gate). A deterministic gradient that converges keeps or reverses its direction from one step
to the next; minibatch noise draws a new one. Each family's validation instances are each one
tensor, stepped by the policy from x0 (minibatches drawn as the evaluation draws them); every
step is filed by the instance's normalized gap then. Per family and gap band: median and
quartiles of both. The last lines pool the band 1e-6…1e-3 over the families without
minibatches and over those with them.
"""

from __future__ import annotations

import argparse

import numpy as np
import tensorflow as tf

import rl_optimizer  # noqa: F401  (quiets TensorFlow's start-up banner)
from rl_optimizer import features
from rl_optimizer.evaluation.runner import MINIBATCH_SEED, expected_retracing
from rl_optimizer.objectives.base import ObjectiveBatch, get_family, seeds
from rl_optimizer.policy import load_policy

FAMILIES = ("quadratic", "logistic_regression", "robust_linear_regression", "mlp_classifier",
            "rosenbrock", "teacher_mlp", "teacher_rnn")
BANDS = ((0.2, np.inf), (1e-3, 0.2), (1e-6, 1e-3), (0.0, 1e-6))
POOLED_BAND = (1e-6, 1e-3)


def trajectories(policy, family: str, instances: int, steps: int):
    """(gaps [T, n], |cos with the last gradient| [T, n], |cos with the momentum| [T, n],
    whether the family draws minibatches)."""
    batch = ObjectiveBatch([get_family(family).sample(s) for s in seeds("validation", instances)])
    ids = tf.constant(batch.instance_of_coordinate, tf.int32)
    segments = features.Segments(ids, instances)
    config = policy.feature_config
    x = tf.Variable(batch.initial_point(), dtype=tf.float64)
    state = [tf.Variable(s) for s in features.init_state(x.shape)]
    last = tf.Variable(tf.zeros(x.shape, tf.float32))
    first = tf.constant(batch.offsets[:-1], tf.int32)  # one coordinate of each instance

    def cosine(gradient, other, old):
        return tf.abs(tf.gather(features.preconditioned_cosine(gradient, other, old, config,
                                                               segments), first))

    @tf.function
    def one(t):
        seed = tf.stack([tf.constant(MINIBATCH_SEED, tf.int64), tf.cast(t, tf.int64)])
        values, gradient = batch.tf_value_and_grad(x, seed)
        gradient = tf.cast(gradient, tf.float32)
        old = features.State(*state)
        signals = (cosine(gradient, last, old), cosine(gradient, old.m, old))
        update, new = policy.step(gradient, old, segments)
        x.assign_add(tf.cast(update, tf.float64))
        for variable, value in zip(state, new):
            variable.assign(value)
        last.assign(gradient)
        return values, signals

    gaps, with_last, with_momentum = [], [], []
    for t in range(steps):
        values, (a, c) = one(tf.constant(t))
        gaps.append(batch.normalized_gap(values.numpy()))
        with_last.append(a.numpy())
        with_momentum.append(c.numpy())
    # Step 0 has no last gradient and no momentum yet.
    return (np.array(gaps)[1:], np.array(with_last)[1:], np.array(with_momentum)[1:],
            batch.stochastic)


def _summary(values: np.ndarray) -> str:
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return f"{median:.2f} ({q1:.2f}-{q3:.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="default")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--instances", type=int, default=10)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--quick", action="store_true", help="2 families, 2 instances, 60 steps")
    args = parser.parse_args(argv)
    families = args.families.split(",")
    if args.quick:
        families, args.instances, args.steps = ["quadratic", "teacher_mlp"], 2, 60
    policy = load_policy(args.policy)
    pooled = {False: ([], []), True: ([], [])}
    for family in families:
        with expected_retracing():  # each family's batch traces its own functions
            gaps, with_last, with_momentum, stochastic = trajectories(
                policy, family, args.instances, args.steps)
        for low, high in BANDS:
            picked = (gaps >= low) & (gaps < high)
            if picked.any():
                print(f"{family} gap {low:g}-{high:g} ({picked.sum()} steps): |cos last "
                      f"gradient| {_summary(with_last[picked])}, |cos momentum| "
                      f"{_summary(with_momentum[picked])}")
        picked = (gaps >= POOLED_BAND[0]) & (gaps < POOLED_BAND[1])
        pooled[stochastic][0].append(with_last[picked])
        pooled[stochastic][1].append(with_momentum[picked])
    for stochastic, name in ((False, "deterministic"), (True, "minibatch")):
        last, momentum = (np.concatenate(x) if x else np.zeros(0) for x in pooled[stochastic])
        if last.size:
            print(f"{name}_last_gradient: {_summary(last)}")
            print(f"{name}_momentum: {_summary(momentum)}")
    return 0


if __name__ == "__main__":
    main()
