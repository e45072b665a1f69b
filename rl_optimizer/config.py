"""Configs: YAML files mapped onto frozen dataclasses, every field documented.

    config = load_config("configs/default.yaml", overrides=["training.iterations=200"])

Unknown keys and ill-typed values are errors naming the key (`agent.actor_lr`) and what is
allowed. The embedded default is `rl_optimizer/configs/default.yaml`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any

import yaml

from rl_optimizer.features import FeatureConfig

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "default.yaml")


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """One entry of the training mix: a family, its parameters, its instances per episode."""

    family: str
    """Name from `rl_optimizer.objectives.list_families()`."""
    instances: int = 1
    """Instances of this family in every episode (their coordinates fill the batch)."""
    params: dict = dataclasses.field(default_factory=dict)
    """Family parameters overriding its defaults (see configs/families.yaml)."""

    def __post_init__(self):
        if self.instances < 1:
            raise ValueError(f"instances must be >= 1, got {self.instances}")


@dataclasses.dataclass(frozen=True)
class EnvironmentConfig:
    """The optimization environment (`rl_optimizer.environment.OptimizationEnv`)."""

    mix: tuple[FamilySpec, ...] = (FamilySpec("quadratic", 8),)
    """Families an episode samples; the batch is all their coordinates."""
    horizon: int = 200
    """Optimizer steps per episode (the shortest, when `max_horizon` is larger)."""
    max_horizon: int = 0
    """Longest episode: lengths are log-uniform in [horizon, max_horizon] (<= horizon: fixed)."""
    gap_floor: float = 1e-8
    """Normalized gap at which the reward's logarithm stops (keeps it finite at a minimum)."""
    rescale: float = 0.0
    """Each instance's parameters are measured in units 10^u, u uniform in ±rescale."""
    loss_rescale: float = 0.0
    """Each instance's loss is multiplied by 10^u, u uniform in ±loss_rescale."""
    initial_log_lr: float = 0.0
    """Each instance's coordinates start at log step size uniform in ±initial_log_lr."""
    reward_clip: float = 2.0
    """Bound on the per-step reward, so one wild step cannot dominate the critic."""
    pool_size: int = 256
    """Episodes draw each family's instances from its first `pool_size` training seeds."""
    seed: int = 0
    """Seed of the episode sampler (instances come from the "train" seed split)."""

    def __post_init__(self):
        if self.pool_size < 1:
            raise ValueError(f"pool_size must be >= 1, got {self.pool_size}")
        if not self.mix:
            raise ValueError("mix must name at least one family")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        if not 0 < self.gap_floor < 1:
            raise ValueError(f"gap_floor must be in (0, 1), got {self.gap_floor}")
        if self.max_horizon < 0:
            raise ValueError(f"max_horizon must be >= 0, got {self.max_horizon}")
        for name in ("rescale", "loss_rescale", "initial_log_lr"):
            if not 0 <= getattr(self, name) <= 10:
                raise ValueError(f"{name} must be in [0, 10], got {getattr(self, name)}")
        if self.reward_clip <= 0:
            raise ValueError(f"reward_clip must be > 0, got {self.reward_clip}")


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Actor and critic networks (both coordinatewise MLPs)."""

    actor_hidden: tuple[int, ...] = (16,)
    """Hidden layer sizes of the actor; small, since it runs once per parameter per step."""
    critic_hidden: tuple[int, ...] = (64, 64)
    """Hidden layer sizes of the critic (training only)."""


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """tf_agents DdpgAgent hyperparameters."""

    actor_lr: float = 1e-4
    """Adam learning rate of the actor."""
    critic_lr: float = 1e-3
    """Adam learning rate of the critic."""
    gamma: float = 0.9
    """Discount: how far ahead a coordinate's step is credited with the progress it makes."""
    target_update_tau: float = 0.01
    """Soft target-network update rate."""
    target_update_period: int = 1
    """Train steps between target updates."""
    ou_stddev: float = 0.2
    """Ornstein-Uhlenbeck exploration noise scale."""
    ou_damping: float = 0.15
    """Ornstein-Uhlenbeck damping."""
    gradient_clipping: float | None = 1.0
    """Global-norm clip of actor and critic gradients (null: none)."""


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """The training loop."""

    iterations: int = 300
    """Collect/train iterations."""
    collect_steps: int = 1
    """Environment steps collected per iteration (each is `batch` coordinate transitions)."""
    train_steps: int = 4
    """Gradient steps per iteration."""
    batch_size: int = 1024
    """Transitions per gradient step."""
    replay_capacity: int = 200
    """Replay buffer capacity, in environment steps (times the coordinates per step)."""
    initial_collect_steps: int = 20
    """Environment steps collected before training starts."""
    checkpoint_every: int = 50
    """Iterations between checkpoints."""
    log_every: int = 10
    """Iterations between TensorBoard scalars."""
    seed: int = 0
    """Global seed (TensorFlow, numpy, the environment's sampler)."""


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """Periodic evaluation on validation instances against learning-rate-tuned Adam."""

    every: int = 100
    """Iterations between evaluations (0: only at the end)."""
    families: tuple[str, ...] = ("quadratic",)
    """Families evaluated."""
    instances: int = 10
    """Validation instances per family."""
    steps: int = 300
    """Optimizer steps per evaluation run."""
    epsilon: float = 1e-3
    """Normalized gap that counts as converged."""


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Distributed training on Reverb (`rl_optimizer.distributed`): one learner, N collectors."""

    host: str = "127.0.0.1"
    """Address the roles of `train --collectors N` reach the replay server at (loopback)."""
    port: int = 0
    """Replay server port of `train --collectors N` (0: a free port, picked at start)."""
    coordinates_per_item: int = 128
    """Coordinates a replay item holds: a step's are shuffled once per episode and split."""
    items_per_batch: int = 8
    """Replay items a training batch draws its coordinate transitions from."""
    pull_every: int = 10
    """Environment steps a collector takes between pulls of the learner's actor weights."""
    rate_tolerance: float = 20.0
    """Environment steps collection may run ahead of (or behind) the train/collect ratio."""
    connect_retries: int = 10
    """Tries to reach the replay server before giving up with an error naming its address."""
    retry_seconds: float = 1.0
    """Wait between those tries."""

    def __post_init__(self):
        _check_range("port", self.port, 0, 65535)
        _check_range("coordinates_per_item", self.coordinates_per_item, 1, None)
        _check_range("items_per_batch", self.items_per_batch, 1, None)
        _check_range("pull_every", self.pull_every, 1, None)
        _check_range("rate_tolerance", self.rate_tolerance, 1, None)
        _check_range("connect_retries", self.connect_retries, 1, None)
        _check_range("retry_seconds", self.retry_seconds, 0, None)


def _check_range(name: str, value, low, high) -> None:
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be {bound}, got {value}")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a training run needs."""

    environment: EnvironmentConfig = EnvironmentConfig()
    """The optimization environment."""
    features: FeatureConfig = FeatureConfig()
    """The feature/update rule the policy is trained with (exported with it)."""
    networks: NetworkConfig = NetworkConfig()
    """Actor and critic networks."""
    agent: AgentConfig = AgentConfig()
    """DDPG hyperparameters."""
    training: TrainingConfig = TrainingConfig()
    """The training loop."""
    evaluation: EvaluationConfig = EvaluationConfig()
    """Periodic evaluation."""
    distributed: DistributedConfig = DistributedConfig()
    """Distributed training (`train --collectors N`, `replay-server`, `collect`, `learn`)."""


def from_dict(cls: type, data: Any, where: str = "config"):
    """Builds dataclass `cls` from nested dicts, naming the offending key on any error."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}" if where != "config" else k)
              for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from None


def _convert(hint, value, where):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        return _convert(next(a for a in args if a is not type(None)), value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "3e-5" (no dot) as a string.
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"{where}: expected float, got {value!r}") from None
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(hint, type) and not isinstance(value, hint) or isinstance(value, bool) \
            and hint is not bool:
        raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _set(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        data = data.setdefault(k, {})
        if not isinstance(data, dict):
            raise ValueError(f"--set {dotted}: {k!r} is not a section")
    data[keys[-1]] = value


def load_config(path: str | None = None, overrides: list[str] = ()) -> Config:
    """Reads a YAML config (the embedded default when `path` is None) with `key=value` overrides."""
    path = path or DEFAULT_CONFIG
    if not os.path.isfile(path):
        raise ValueError(f"config file {path!r} does not exist")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected section.key=value")
        _set(data, key.strip(), yaml.safe_load(raw))
    return from_dict(Config, data)


def to_dict(config) -> dict:
    """The config as plain YAML-able data."""
    def plain(x):
        if isinstance(x, tuple | list):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x
    return plain(dataclasses.asdict(config))
