"""Export a `LearnedPolicy` as a versioned SavedModel in TF Serving's layout.

    <model_dir>/<name>/<version>/saved_model.pb, variables/, assets.extra/policy.json

Signatures (names are the constants below; the README documents them):

  serving_default  one optimizer step for a flat block of N coordinates:
                   gradient float32[N], state float32[N, S], segments int32[N]
                   → update float32[N], state float32[N, S]
                   The caller applies param ← param + update and keeps the returned state; a fresh
                   coordinate's state is zeros. S is the second dimension of `state`. segments
                   says which parameter tensor each coordinate belongs to (ids in [0, N); all
                   zeros for one tensor): the features' per-tensor statistics group by it.
  action           TF-Agents' policy signature (a `TimeStep` in, the action out):
                   step_type int32[N], reward, discount float32[N], observation float32[N, F]
                   → action float32[N].

Only stock TensorFlow ops: stock TF Serving serves it, no Python at serving time.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile

import tensorflow as tf

from rl_optimizer import features
from rl_optimizer.config import ConfigError, from_dict, parse_override
from rl_optimizer.policy import DEFAULT_MODEL_NAME, MANIFEST, LearnedPolicy

STEP_SIGNATURE = "serving_default"
ACTION_SIGNATURE = "action"
GRADIENT = "gradient"
STATE = "state"
SEGMENTS = "segments"
UPDATE = "update"
OBSERVATION = "observation"
ACTION = "action"
TIME_STEP_INPUTS = ("step_type", "reward", "discount")


class _ServingModule(tf.Module):
    def __init__(self, policy: LearnedPolicy):
        super().__init__()
        self.policy = policy

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.float32, name=GRADIENT),
        tf.TensorSpec([None, features.STATE_SIZE], tf.float32, name=STATE),
        tf.TensorSpec([None], tf.int32, name=SEGMENTS)])
    def step(self, gradient, state, segments):
        n = tf.shape(gradient)[0]
        checks = [
            tf.debugging.assert_equal(
                n, tf.shape(state)[0],
                message="gradient[N] and state[N, S] must have the same number of coordinates N"),
            tf.debugging.assert_equal(
                n, tf.shape(segments)[0],
                message="gradient[N] and segments[N] must have the same number of coordinates N"),
            # Checked before the per-segment sums allocate max(segments) + 1 slots.
            tf.debugging.assert_non_negative(segments, message="segments must be >= 0"),
            tf.debugging.assert_less(segments, tf.maximum(n, 1),
                                     message="segments must be < N (one id per tensor)")]
        with tf.control_dependencies(checks):
            count = tf.reduce_max(tf.concat([segments, [-1]], 0)) + 1
            update, new_state = self.policy.step(gradient, features.unpack(state),
                                                 features.Segments(segments, count))
        return {UPDATE: update, STATE: features.pack(new_state)}

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.int32, name=TIME_STEP_INPUTS[0]),
        tf.TensorSpec([None], tf.float32, name=TIME_STEP_INPUTS[1]),
        tf.TensorSpec([None], tf.float32, name=TIME_STEP_INPUTS[2]),
        tf.TensorSpec([None, features.OBSERVATION_SIZE], tf.float32, name=OBSERVATION)])
    def action(self, step_type, reward, discount, observation):
        del step_type, reward, discount  # a feed-forward policy needs only the observation
        return {ACTION: self.policy.actor(observation)}


def write_text_atomically(path: str, text: str) -> None:
    """Writes `path` through a temporary file and a rename: readers see old or new, never half."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def next_version(model_path: str) -> int:
    """One more than the highest integer version under `model_path` (1 for a new model)."""
    if not os.path.isdir(model_path):
        return 1
    return max([int(d) for d in os.listdir(model_path) if d.isdigit()], default=0) + 1


def export_policy(policy: LearnedPolicy, model_dir: str, name: str = DEFAULT_MODEL_NAME,
                  version: int | None = None) -> str:
    """Writes `policy` as `<model_dir>/<name>/<version>/` and returns that path.

    The version is written into a temporary directory beside it and renamed into place, so a
    server polling `model_dir` never sees half a version. Without `version`, the next integer.
    """
    model_path = os.path.join(model_dir, name)
    os.makedirs(model_path, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-export-", dir=model_path)
    try:
        module = _ServingModule(policy)
        tf.saved_model.save(module, tmp, signatures={
            STEP_SIGNATURE: module.step.get_concrete_function(),
            ACTION_SIGNATURE: module.action.get_concrete_function()})
        os.makedirs(os.path.join(tmp, "assets.extra"))
        with open(os.path.join(tmp, "assets.extra", MANIFEST), "w") as f:
            json.dump(policy.manifest(), f, indent=2, sort_keys=True)
        while True:
            target = os.path.join(model_path, str(version or next_version(model_path)))
            try:
                os.rename(tmp, target)
                return target
            except OSError:
                if version is not None or not os.path.exists(target):
                    raise
                # Another exporter took that version first: take the next one.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def add_arguments(parser) -> None:
    parser.add_argument("--policy", default="default",
                        help="'default' (the shipped policy), a run directory or an export")
    parser.add_argument("--model-dir", required=True, help="TF Serving model base directory")
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help="model name (subdirectory)")
    parser.add_argument("--feature", action="append", default=[], metavar="NAME=VALUE",
                        help="export with this `features.FeatureConfig` field changed (the "
                             "actor's weights as they are; repeatable); the manifest's "
                             "metadata records it under feature_overrides")
    parser.add_argument("--evaluation", default=None, metavar="DIR",
                        help="an `rl-optimizer evaluate` output directory: its summary.json "
                             "goes into <model-dir>/manifest.json with the policy's metadata")


def with_features(policy: LearnedPolicy, overrides: list[str]) -> LearnedPolicy:
    """`policy`'s weights under its `FeatureConfig` with `overrides` (`NAME=VALUE` items, the
    values read as a config's are), recorded in the metadata's `feature_overrides` (merged
    with any there)."""
    changes = dict(parse_override(item, "--feature", "NAME=VALUE") for item in overrides)
    current = dataclasses.asdict(policy.feature_config)
    try:
        config = from_dict(features.FeatureConfig, {**current, **changes}, "FeatureConfig")
    except ConfigError as e:
        raise ConfigError(f"--feature: {e}") from None
    metadata = dict(policy.metadata)
    metadata["feature_overrides"] = {**(metadata.get("feature_overrides") or {}),
                                     **{name: getattr(config, name) for name in changes}}
    return LearnedPolicy([k.numpy() for k in policy.kernels], [b.numpy() for b in policy.biases],
                         config, metadata=metadata)


def write_manifest(policy: LearnedPolicy, model_dir: str, evaluation_dir: str | None) -> str:
    """`<model_dir>/manifest.json`: config, seed, commit, training time, evaluation summary."""
    manifest = dict(policy.metadata)
    if evaluation_dir is not None:
        with open(os.path.join(evaluation_dir, "summary.json")) as f:
            manifest["test_evaluation"] = json.load(f)
    path = os.path.join(model_dir, "manifest.json")
    write_text_atomically(path, json.dumps(manifest, indent=2, sort_keys=True))
    return path


def run_command(args) -> int:
    from rl_optimizer.policy import load_policy

    if args.evaluation and not os.path.isfile(os.path.join(args.evaluation, "summary.json")):
        raise ValueError(f"--evaluation {args.evaluation!r} has no summary.json")
    policy = load_policy(args.policy)
    if args.feature:
        policy = with_features(policy, args.feature)
    path = export_policy(policy, args.model_dir, args.name)
    print(f"exported {args.policy} to {path}")
    if args.evaluation:
        print(f"manifest: {write_manifest(policy, args.model_dir, args.evaluation)}")
    return 0
