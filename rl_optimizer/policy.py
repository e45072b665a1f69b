"""A learned optimizer policy: a tiny coordinatewise actor plus the feature constants it needs.

`LearnedPolicy` is what every consumer holds: the Keras optimizer calls `step` on tensors of any
shape, the exporter saves it as a SavedModel, the serving stack loads that SavedModel back.

    policy = load_policy("default")           # the shipped policy, or a path to an export
    update, state = policy.step(gradient, features.init_state(gradient.shape))
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from rl_optimizer import features

MANIFEST = "policy.json"
"""The policy's description, inside each exported version's `assets.extra/`."""

PRETRAINED_DIR = os.path.join(os.path.dirname(__file__), "pretrained")
DEFAULT_MODEL_NAME = "rl_optimizer"


class LearnedPolicy(tf.Module):
    """Coordinatewise actor (features [..., F] → action [...] ∈ [−1, 1]) and its feature rule.

    The actor is an MLP with ReLU hidden layers and a tanh output: the same layers as
    tf_agents' `ActorNetwork` for a scalar action in [−1, 1], whose weights it takes on export.

    Args:
      kernels: per layer, [fan_in, fan_out]; the first fan_in is `features.OBSERVATION_SIZE`,
        the last fan_out is 1.
      biases: per layer, [fan_out].
      feature_config: the constants the actor was trained with.
      metadata: free-form JSON-able description (training config, commit, evaluation summary).
    """

    def __init__(self, kernels: Sequence[np.ndarray], biases: Sequence[np.ndarray],
                 feature_config: features.FeatureConfig = features.FeatureConfig(),
                 metadata: dict | None = None, name: str = "learned_policy"):
        super().__init__(name=name)
        _check_layers(kernels, biases)
        self.kernels = [tf.Variable(np.asarray(k, np.float32), trainable=False, name=f"kernel_{i}")
                        for i, k in enumerate(kernels)]
        self.biases = [tf.Variable(np.asarray(b, np.float32), trainable=False, name=f"bias_{i}")
                       for i, b in enumerate(biases)]
        self.feature_config = feature_config
        self.metadata = dict(metadata or {})

    @classmethod
    def random(cls, hidden: Sequence[int] = (16,), seed: int = 0, **kwargs) -> LearnedPolicy:
        """A randomly initialised actor (Glorot uniform, zero biases); for tests and baselines."""
        rng = np.random.default_rng(seed)
        sizes = [features.OBSERVATION_SIZE, *hidden, 1]
        kernels = [rng.uniform(-1, 1, (a, b)) * np.sqrt(6 / (a + b))
                   for a, b in zip(sizes, sizes[1:])]
        return cls(kernels, [np.zeros(b) for b in sizes[1:]], **kwargs)

    @property
    def hidden(self) -> tuple[int, ...]:
        return tuple(int(k.shape[1]) for k in self.kernels[:-1])

    def actor(self, observation: tf.Tensor) -> tf.Tensor:
        """Action [...] ∈ [−1, 1] for features [..., F]."""
        flat = tf.reshape(observation, [-1, features.OBSERVATION_SIZE])
        h = flat
        for kernel, bias in zip(self.kernels[:-1], self.biases[:-1]):
            h = tf.nn.relu(tf.matmul(h, tf.cast(kernel, h.dtype)) + tf.cast(bias, h.dtype))
        out = tf.tanh(tf.matmul(h, tf.cast(self.kernels[-1], h.dtype))
                      + tf.cast(self.biases[-1], h.dtype))
        return tf.reshape(out, tf.shape(observation)[:-1])

    def unrolled_actor(self, observation: tf.Tensor) -> tf.Tensor:
        """`actor` unit by unit with scalar weights: the same function, elementwise ops only.

        Under XLA the features and the whole MLP then fuse into one loop over the coordinates,
        instead of [N, hidden] activations going through memory (the Keras benchmark's train
        step: 3.3x Adam's time before, 1.7x after). Without XLA it is many small ops, so
        `actor` stays the default.
        """
        units = tf.unstack(observation, num=features.OBSERVATION_SIZE, axis=-1)
        # The first layer adds the per-tensor columns (the same for every coordinate of a
        # tensor) to the bias first: XLA then folds them into one number per tensor.
        order = [*features.TENSOR_COLUMNS,
                 *(i for i in range(features.OBSERVATION_SIZE)
                   if i not in features.TENSOR_COLUMNS)]
        for i, (kernel, bias) in enumerate(zip(self.kernels, self.biases)):
            rows = [tf.unstack(row) for row in tf.unstack(tf.cast(kernel, observation.dtype))]
            terms = order if i == 0 else range(len(units))
            new_units = []
            for j, b in enumerate(tf.unstack(tf.cast(bias, observation.dtype))):
                total = b
                for k in terms:
                    total = total + units[k] * rows[k][j]
                new_units.append(total)
            units = new_units
            if i < len(self.kernels) - 1:
                units = [tf.nn.relu(u) for u in units]
        return tf.tanh(units[0])

    def step(self, gradient: tf.Tensor, state: features.State,
             segments: features.Segments | None = None) -> tuple[tf.Tensor, features.State]:
        """One optimizer step for coordinates of any shape (see `features.step`); all of them
        one tensor unless `segments` says which tensor each belongs to."""
        return features.step(self.actor, gradient, state, self.feature_config,
                             segments=segments)

    def manifest(self) -> dict:
        """What `load_policy` needs besides the weights, plus the metadata."""
        return {
            "format": features.CONTRACT_VERSION,
            "hidden": list(self.hidden),
            "state_size": features.STATE_SIZE,
            "observation_size": features.OBSERVATION_SIZE,
            "feature_config": dataclasses.asdict(self.feature_config),
            "metadata": self.metadata,
        }


def _check_layers(kernels, biases):
    if len(kernels) != len(biases) or not kernels:
        raise ValueError(f"policy needs as many kernels as biases (>= 1), got {len(kernels)} "
                         f"kernels and {len(biases)} biases")
    fan_in = features.OBSERVATION_SIZE
    for i, (k, b) in enumerate(zip(kernels, biases)):
        k_shape, b_shape = np.shape(k), np.shape(b)
        if len(k_shape) != 2 or k_shape[0] != fan_in or b_shape != (k_shape[1],):
            raise ValueError(f"policy layer {i}: kernel shape {k_shape} / bias shape {b_shape} "
                             f"do not fit fan_in {fan_in}")
        fan_in = k_shape[1]
    if fan_in != 1:
        raise ValueError(f"policy's last layer must have one output, got {fan_in}")


def check_contract(version, where: str) -> None:
    """Raises a clear error unless a policy's features contract `version` is this package's."""
    if version != features.CONTRACT_VERSION:
        raise ValueError(
            f"policy {where!r} was trained under features contract {version}, this version of "
            f"rl_optimizer runs contract {features.CONTRACT_VERSION} (state, observation and "
            "update rule differ): retrain it, or load it with the rl_optimizer that made it")


def resolve_version_dir(path: str) -> str:
    """A version directory (`.../<name>/<version>`) from a version, model or run directory.

    Accepts the version directory itself, a model directory (its highest integer version is
    used), or a directory holding one model directory (a model base path or `<run-dir>/export`,
    or a run directory with `export/`).
    """
    if not os.path.isdir(path):
        raise ValueError(f"policy path {path!r} is not a directory")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    for sub in ("export", DEFAULT_MODEL_NAME):
        if os.path.isdir(os.path.join(path, sub)):
            return resolve_version_dir(os.path.join(path, sub))
    versions = [d for d in os.listdir(path) if d.isdigit()
                and os.path.isfile(os.path.join(path, d, "saved_model.pb"))]
    if versions:
        return os.path.join(path, max(versions, key=int))
    children = [d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))]
    if len(children) == 1:
        return resolve_version_dir(os.path.join(path, children[0]))
    raise ValueError(f"{path!r} is not a policy: no saved_model.pb in it, no integer version "
                     "directories, and no single model directory")


NOMINAL = "nominal"
"""`load_policy`'s name for the ablation: the shipped policy's features, a zero actor."""


def load_policy(policy: str | LearnedPolicy = "default") -> LearnedPolicy:
    """The shipped policy ("default"), an exported policy's directory, or `policy` itself.

    "nominal" is the ablation of what the learning adds: the shipped policy's architecture and
    feature constants with every weight zero, so every action is 0 and the optimizer is the
    nominal step-size controller alone (see `features`).
    """
    if isinstance(policy, LearnedPolicy):
        return policy
    if policy == NOMINAL:
        shipped = load_policy("default")
        return LearnedPolicy([np.zeros_like(k.numpy()) for k in shipped.kernels],
                             [np.zeros_like(b.numpy()) for b in shipped.biases],
                             shipped.feature_config, metadata={"ablation": NOMINAL})
    path = PRETRAINED_DIR if policy == "default" else os.fspath(policy)
    if policy == "default" and not os.path.isdir(path):
        raise ValueError("no pretrained default policy is shipped in this installation "
                         f"({PRETRAINED_DIR} is missing); pass the path of an exported policy")
    version_dir = resolve_version_dir(path)
    manifest_path = os.path.join(version_dir, "assets.extra", MANIFEST)
    if not os.path.isfile(manifest_path):
        raise ValueError(f"{version_dir!r} is a SavedModel but not an rl_optimizer policy "
                         f"(no assets.extra/{MANIFEST})")
    with open(manifest_path) as f:
        manifest = json.load(f)
    check_contract(manifest.get("format"), version_dir)
    if manifest.get("state_size") != features.STATE_SIZE:
        raise ValueError(f"policy {version_dir!r} has state size {manifest.get('state_size')}, "
                         f"this version of rl_optimizer uses {features.STATE_SIZE}")
    try:
        feature_config = features.FeatureConfig(**manifest["feature_config"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"policy {version_dir!r} was made by another version of rl_optimizer: "
                         f"its feature_config does not fit this one ({e})") from None
    reader = tf.train.load_checkpoint(os.path.join(version_dir, "variables", "variables"))
    n = len(manifest["hidden"]) + 1

    def var(kind, i):
        return reader.get_tensor(f"policy/{kind}/{i}/.ATTRIBUTES/VARIABLE_VALUE")

    return LearnedPolicy([var("kernels", i) for i in range(n)],
                         [var("biases", i) for i in range(n)], feature_config,
                         metadata=manifest.get("metadata"))
