"""Configs: YAML onto dataclasses, errors that name the key."""

import dataclasses
import glob
import math
import os
import types
import typing

import pytest

from rl_optimizer.config import (
    CONFIG_DIR,
    Bounds,
    Config,
    ConfigError,
    bounded,
    bounds_of,
    check_bounds,
    from_dict,
    load_config,
    to_dict,
)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml"))))
def test_shipped_configs_load(path):
    if os.path.basename(path) == "families.yaml":
        pytest.skip("families.yaml lists family defaults, not a run config")
    assert isinstance(load_config(path), Config)


def test_default_is_embedded():
    assert load_config() == load_config(os.path.join(CONFIG_DIR, "default.yaml"))


def test_overrides():
    config = load_config(None, ["training.iterations=7", "agent.gamma=0.5",
                                "networks.actor_hidden=[4, 4]"])
    assert config.training.iterations == 7
    assert config.agent.gamma == 0.5
    assert config.networks.actor_hidden == (4, 4)


def test_round_trip(tmp_path):
    import yaml

    config = load_config()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(to_dict(config)))
    assert load_config(str(path)) == config


@pytest.mark.parametrize("override,match", [
    ("training.iterationz=3", r"training: unknown key\(s\) \['iterationz'\]"),
    ("nope.x=1", r"unknown key\(s\) \['nope'\]"),
    ("training.iterations=abc", "training.iterations: expected int"),
    ("environment.horizon=0", r"environment.horizon: must be >= 1, got 0"),
    ("features.beta1=2", r"features.beta1: must be in \[0, 1\)"),
    ("environment.mix=[{family: quadratic, instances: 0}]", r"environment.mix\[0\].instances"),
    ("training.iterations=-5", r"training.iterations: must be >= 1, got -5"),
    ("training.batch_size=0", r"training.batch_size: must be >= 1, got 0"),
    ("agent.gamma=.nan", r"agent.gamma: must be in \[0, 1\], got nan"),
    ("agent.actor_lr=.inf", r"agent.actor_lr: must be > 0, got inf"),
    ("networks.actor_hidden=[8, 0]", r"networks.actor_hidden\[1\]: must be in \[1, 4096\], got 0"),
    ("environment.mix=[]", "mix must name at least one family"),
    ("training.iterations=[", r"--set 'training.iterations=\[':1:\d+: invalid YAML"),
    ("training.iterations", "expected section.key=value"),
])
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [override])


def test_missing_file():
    with pytest.raises(ValueError, match="does not exist"):
        load_config("no/such.yaml")


def test_a_yaml_syntax_error_names_file_line_and_column(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("training:\n  iterations: 3\n  batch_size: [1, 2\nagent: {}\n")

    with pytest.raises(ConfigError, match=rf"{path}:4:\d+: invalid YAML"):
        load_config(str(path))


def test_a_control_character_names_its_line_and_column(tmp_path):
    path = tmp_path / "control.yaml"
    path.write_text("training:\n  iterations: 3\x00\n")
    with pytest.raises(ConfigError, match=rf"{path}:2:16: invalid YAML"):
        load_config(str(path))


@pytest.mark.parametrize("text,match", [
    (b"\xff\xfe garbage", "cannot be read"),
    (b"- just\n- a list\n", "expected a mapping of sections, got list"),
])
def test_an_unusable_file_names_itself(tmp_path, text, match):
    path = tmp_path / "bad.yaml"
    path.write_bytes(text)
    with pytest.raises(ConfigError, match=match) as error:
        load_config(str(path))
    assert str(path) in str(error.value)


# --- every numeric field has a range, and out-of-range values are refused by dotted key ------

def _unwrap(hint):
    """The hint without Optional, and whether it is a tuple of it."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], True
    return hint, False


def _numeric_fields(cls, path=(), key=""):
    """(class, field, type, path into to_dict's data, dotted key) of every int/float field
    reachable from `cls`, through nested sections and tuples of dataclasses."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint, is_tuple = _unwrap(hints[f.name])
        where, name = path + (f.name,), f"{key}.{f.name}" if key else f.name
        if is_tuple:
            where, name = where + (0,), name + "[0]"
        if dataclasses.is_dataclass(hint):
            yield from _numeric_fields(hint, where, name)
        elif hint in (int, float):
            yield cls, f.name, hint, where, name


def _unbounded(cls) -> list[str]:
    return [f"{c.__name__}.{name} ({key})" for c, name, _, _, key in _numeric_fields(cls)
            if name not in bounds_of(c)]


def _outside(bounds: Bounds, kind: type) -> list:
    """Values just outside `bounds` (and NaN for floats)."""
    step = 1 if kind is int else None
    out = [] if kind is int else [math.nan]
    if bounds.ge is not None:
        out.append(bounds.ge - step if step else math.nextafter(bounds.ge, -math.inf))
    if bounds.gt is not None:
        out.append(bounds.gt)
    if bounds.le is not None:
        out.append(bounds.le + step if step else math.nextafter(bounds.le, math.inf))
    if bounds.lt is not None:
        out.append(bounds.lt)
    return [kind(v) for v in out]


NUMERIC_FIELDS = list(_numeric_fields(Config))


def test_every_numeric_field_declares_a_range():
    assert len(NUMERIC_FIELDS) > 30  # the walk reaches every section, the mix and features
    walked = {cls.__name__ for cls, *_ in NUMERIC_FIELDS}
    assert {"FamilySpec", "FeatureConfig", "DistributedConfig"} <= walked
    assert _unbounded(Config) == [], "declare a range: bounded(default, ge=...)"


def test_the_walk_catches_a_field_without_a_range():
    @dataclasses.dataclass(frozen=True)
    class Section:
        ok: int = bounded(1, ge=1)
        missing: float = 0.5
        sizes: tuple[int, ...] = (3,)

    @dataclasses.dataclass(frozen=True)
    class Top:
        section: Section = Section()

    assert _unbounded(Top) == ["Section.missing (section.missing)",
                               "Section.sizes (section.sizes[0])"]


@pytest.mark.parametrize("cls,name,kind,path,key", NUMERIC_FIELDS,
                         ids=[f[4] for f in NUMERIC_FIELDS])
def test_out_of_range_values_are_refused_naming_the_key(cls, name, kind, path, key):
    bounds = bounds_of(cls)[name]
    values = _outside(bounds, kind)
    assert values, f"{key}: a range with no bound at all"
    for value in values:
        data = to_dict(load_config())
        target = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
        with pytest.raises(ConfigError, match=rf"^{_escape(key)}: must be .*got {value!r}"):
            from_dict(Config, data)


def _escape(key: str) -> str:
    return key.replace("[", r"\[").replace("]", r"\]").replace(".", r"\.")


def test_a_feature_range_is_checked_in_python_and_in_a_config_by_one_declaration():
    from rl_optimizer.features import FeatureConfig

    assert bounds_of(FeatureConfig)["beta1"] == Bounds(ge=0.0, lt=1.0)
    with pytest.raises(ConfigError, match=r"^FeatureConfig\.beta1: must be in \[0, 1\), got 1\.5"):
        FeatureConfig(beta1=1.5)
    with pytest.raises(ConfigError, match=r"^features\.beta1: must be in \[0, 1\), got 1\.5"):
        load_config(None, overrides=["features.beta1=1.5"])
    # The one cross-field range, checked by hand, names the field on both paths too.
    with pytest.raises(ValueError, match=r"^FeatureConfig\.floor_log_lr: must be within"):
        FeatureConfig(log_lr_min=-2.0, floor_log_lr=-3.0)
    with pytest.raises(ConfigError, match=r"^features: FeatureConfig\.floor_log_lr: must be"):
        load_config(None, overrides=["features.log_lr_min=-2", "features.floor_log_lr=-3"])


def test_a_dataclass_built_in_python_is_checked_too():
    from rl_optimizer.config import TrainingConfig

    with pytest.raises(ValueError, match="TrainingConfig.iterations: must be >= 1, got -5"):
        TrainingConfig(iterations=-5)
    check_bounds(TrainingConfig())  # the defaults are in range
