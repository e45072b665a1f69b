"""Configs: YAML files mapped onto frozen dataclasses, every field documented.

    config = load_config("configs/default.yaml", overrides=["training.iterations=200"])

Unknown keys, ill-typed and out-of-range values, and YAML syntax errors are `ConfigError`s
naming the key (`agent.actor_lr`) or the file, line and column, and what is allowed. The
embedded default is `rl_optimizer/configs/default.yaml`.

Every numeric field declares its range once, where it is defined (`bounded(default, ge=1)`,
here and in `FeatureConfig`); one checker (`check_values`) walks them, both when a config is
read and when a dataclass is built in Python. The mechanism lives in `rl_optimizer.bounds`
(which imports nothing from the package, so `features.py` can use it) and is re-exported here.
A numeric field without a range fails `tests/test_config.py`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from typing import Any

import yaml

from rl_optimizer.bounds import (  # noqa: F401  (re-exported: part of this module's names)
    Bounds,
    ConfigError,
    bounded,
    bounds_of,
    check_bounds,
    check_values,
)
from rl_optimizer.features import FeatureConfig

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "default.yaml")

SEED_MAX = 2**32 - 1
"""numpy's legacy seeding (which `tf.keras.utils.set_random_seed` calls) takes [0, 2**32)."""


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """One entry of the training mix: a family, its parameters, its instances per episode."""

    family: str
    """Name from `rl_optimizer.objectives.list_families()`."""
    instances: int = bounded(1, ge=1, le=100_000)
    """Instances of this family in every episode (their coordinates fill the batch)."""
    params: dict = dataclasses.field(default_factory=dict)
    """Family parameters overriding its defaults (see configs/families.yaml)."""
    reward_scale: float = bounded(1.0, gt=0.0, le=1000.0)
    """Multiplies this family's rewards (before the clip): families whose losses fall slowly,
    such as networks on minibatches, otherwise speak too softly to the critic."""

    __post_init__ = check_bounds


@dataclasses.dataclass(frozen=True)
class EnvironmentConfig:
    """The optimization environment (`rl_optimizer.environment.OptimizationEnv`)."""

    mix: tuple[FamilySpec, ...] = (FamilySpec("quadratic", 8),)
    """Families an episode samples; the batch is all their coordinates."""
    horizon: int = bounded(200, ge=1)
    """Optimizer steps per episode (the shortest, when `max_horizon` is larger)."""
    max_horizon: int = bounded(0, ge=0)
    """Longest episode: lengths are log-uniform in [horizon, max_horizon] (<= horizon: fixed)."""
    gap_floor: float = bounded(1e-8, gt=0.0, lt=1.0)
    """Normalized gap at which the reward's logarithm stops (keeps it finite at a minimum)."""
    rescale: float = bounded(0.0, ge=0.0, le=10.0)
    """Each instance's parameters are measured in units 10^u, u uniform in ±rescale."""
    loss_rescale: float = bounded(0.0, ge=0.0, le=10.0)
    """Each instance's loss is multiplied by 10^u, u uniform in ±loss_rescale."""
    initial_log_lr: float = bounded(0.0, ge=0.0, le=10.0)
    """Each instance's coordinates start at log step size uniform in ±initial_log_lr."""
    reward_clip: float = bounded(2.0, gt=0.0)
    """Bound on the per-step reward, so one wild step cannot dominate the critic."""
    pool_size: int = bounded(256, ge=1, le=1_000_000)
    """Episodes draw each family's instances from its first `pool_size` training seeds."""
    seed: int = bounded(0, ge=0, le=SEED_MAX)
    """Seed of the episode sampler (instances come from the "train" seed split)."""

    def __post_init__(self):
        check_bounds(self)
        if not self.mix:
            raise ValueError("mix must name at least one family")


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
    """Actor and critic networks (both coordinatewise MLPs)."""

    actor_hidden: tuple[int, ...] = bounded((16,), ge=1, le=4096)
    """Hidden layer sizes of the actor; small, since it runs once per parameter per step."""
    critic_hidden: tuple[int, ...] = bounded((64, 64), ge=1, le=4096)
    """Hidden layer sizes of the critic (training only)."""

    __post_init__ = check_bounds


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """tf_agents DdpgAgent hyperparameters."""

    actor_lr: float = bounded(1e-4, gt=0.0)
    """Adam learning rate of the actor."""
    critic_lr: float = bounded(1e-3, gt=0.0)
    """Adam learning rate of the critic."""
    gamma: float = bounded(0.9, ge=0.0, le=1.0)
    """Discount: how far ahead a coordinate's step is credited with the progress it makes."""
    target_update_tau: float = bounded(0.01, gt=0.0, le=1.0)
    """Soft target-network update rate."""
    target_update_period: int = bounded(1, ge=1)
    """Train steps between target updates."""
    ou_stddev: float = bounded(0.2, ge=0.0)
    """Ornstein-Uhlenbeck exploration noise scale."""
    ou_damping: float = bounded(0.15, ge=0.0, le=1.0)
    """Ornstein-Uhlenbeck damping."""
    gradient_clipping: float | None = bounded(1.0, gt=0.0)
    """Global-norm clip of actor and critic gradients (null: none)."""

    __post_init__ = check_bounds


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """The training loop."""

    iterations: int = bounded(300, ge=1)
    """Collect/train iterations."""
    collect_steps: int = bounded(1, ge=1)
    """Environment steps collected per iteration (each is `batch` coordinate transitions)."""
    train_steps: int = bounded(4, ge=1)
    """Gradient steps per iteration."""
    batch_size: int = bounded(1024, ge=1)
    """Transitions per gradient step."""
    replay_capacity: int = bounded(200, ge=2)
    """Replay buffer capacity, in environment steps (times the coordinates per step); >= 2,
    since a transition is sampled as two consecutive steps."""
    initial_collect_steps: int = bounded(20, ge=1)
    """Environment steps collected before training starts (the first sample needs data)."""
    checkpoint_every: int = bounded(50, ge=1)
    """Iterations between checkpoints."""
    log_every: int = bounded(10, ge=1)
    """Iterations between TensorBoard scalars."""
    seed: int = bounded(0, ge=0, le=SEED_MAX)
    """Global seed (TensorFlow, numpy, the environment's sampler)."""

    __post_init__ = check_bounds


@dataclasses.dataclass(frozen=True)
class EvaluationConfig:
    """Periodic evaluation on validation instances against learning-rate-tuned Adam."""

    every: int = bounded(100, ge=0)
    """Iterations between evaluations (0: only at the end)."""
    families: tuple[str, ...] = ("quadratic",)
    """Families evaluated."""
    instances: int = bounded(10, ge=1, le=99_000)
    """Validation instances per family (after the tuning instances, within the split)."""
    steps: int = bounded(300, ge=1)
    """Optimizer steps per evaluation run."""
    epsilon: float = bounded(1e-3, gt=0.0, lt=1.0)
    """Normalized gap that counts as converged."""
    deep_epsilon: float = bounded(0.0, ge=0.0, lt=1.0)
    """A second, deeper gap (e.g. 1e-6; 0: off): the analytic families (those without
    minibatches) are also run for `deep_steps` against learning-rate-tuned Nesterov momentum,
    and the win rate in steps to this gap counts a third of the selection score (`train.
    selection_score`): the race to 1e-3 alone does not see whether a policy converges on."""
    deep_steps: int = bounded(2000, ge=1)
    """Optimizer steps per run of the deep evaluation."""

    __post_init__ = check_bounds


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """Distributed training on Reverb (`rl_optimizer.distributed`): one learner, N collectors."""

    host: str = "127.0.0.1"
    """Address the roles of `train --collectors N` reach the replay server at (loopback)."""
    port: int = bounded(0, ge=0, le=65535)
    """Replay server port of `train --collectors N` (0: a free port, picked at start)."""
    coordinates_per_item: int = bounded(512, ge=1, le=1_000_000)
    """Coordinates a replay item holds: a step's are shuffled once per episode and split.
    Each item costs the server and the collector a fixed overhead: with 128, two collectors on
    two cores were held at 1.4x one collector's throughput by the server; with 512, 1.9x."""
    items_per_batch: int = bounded(8, ge=1, le=1024)
    """Replay items a training batch draws its coordinate transitions from."""
    collector_threads: int = bounded(1, ge=0, le=4096)
    """TensorFlow threads (intra- and inter-op) of each collector process; 0: TensorFlow's
    default, every core. One: N collectors keep N cores busy without contending for them (a
    collector's small ops gain little from a second thread: 1.2x)."""
    pull_every: int = bounded(10, ge=1, le=1_000_000)
    """Environment steps a collector takes between pulls of the learner's actor weights."""
    rate_tolerance: float = bounded(20.0, ge=1, le=1e12)
    """Environment steps collection may run ahead of (or behind) the train/collect ratio."""
    connect_retries: int = bounded(10, ge=1, le=10_000)
    """Tries to reach the replay server before giving up with an error naming its address."""
    retry_seconds: float = bounded(1.0, ge=0, le=3600)
    """Wait between those tries."""

    __post_init__ = check_bounds


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
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    prefix = "" if where == "config" else where
    kwargs = {k: _convert(hints[k], v, f"{prefix}.{k}" if prefix else k)
              for k, v in data.items()}
    check_values(cls, kwargs, prefix)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from None


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
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        # YAML 1.1 reads "3e-5" (no dot) as a string.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected float, got {value!r}") from None
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if isinstance(hint, type) and not isinstance(value, hint) or isinstance(value, bool) \
            and hint is not bool:
        raise ConfigError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def _set(data: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        data = data.setdefault(k, {})
        if not isinstance(data, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section")
    data[keys[-1]] = value


def _parse_yaml(text: str, source: str):
    """`yaml.safe_load(text)`; a syntax error names `source`, line and column (1-based)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        if mark is not None:
            line, column = mark.line, mark.column
        else:  # a reader error (a control character) gives a character offset instead
            position = getattr(e, "position", 0)
            line = text.count("\n", 0, position)
            column = position - (text.rfind("\n", 0, position) + 1)
        where = f"{source}:{line + 1}:{column + 1}"
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None


def read_yaml(path: str):
    """The YAML data of file `path`; an unreadable file or bad YAML is a `ConfigError`."""
    if not os.path.isfile(path):
        problem = "is not a file" if os.path.exists(path) else "does not exist"
        raise ConfigError(f"config file {path!r} {problem}")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path!r} cannot be read: {e}") from None
    return _parse_yaml(text, path)


def load_config(path: str | None = None, overrides: list[str] = ()) -> Config:
    """Reads a YAML config (the embedded default when `path` is None) with `key=value` overrides.

    Raises:
      ConfigError: naming the file (and line and column), the `--set` item or the dotted key.
    """
    path = path or DEFAULT_CONFIG
    data = read_yaml(path)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    for item in overrides:
        _set(data, *parse_override(item, "--set", "section.key=value"))
    return from_dict(Config, data)


def parse_override(item: str, flag: str, form: str) -> tuple[str, Any]:
    """`key=value` of a command-line `flag` as (key, the value read as YAML); a missing `=` or
    key is a `ConfigError` that names the item and the expected `form`."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{flag} {item!r}: expected {form}")
    return key.strip(), _parse_yaml(raw, f"{flag} {item!r}")


def to_dict(config) -> dict:
    """The config as plain YAML-able data."""
    def plain(x):
        if isinstance(x, tuple | list):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        return x
    return plain(dataclasses.asdict(config))
