"""Configs: YAML onto dataclasses, errors that name the key."""

import glob
import os

import pytest

from rl_optimizer.config import CONFIG_DIR, Config, load_config, to_dict


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
    ("environment.horizon=0", "environment: horizon must be >= 1"),
    ("features.beta1=2", "features.beta1"),
    ("environment.mix=[{family: quadratic, instances: 0}]", "instances must be >= 1"),
    ("training.iterations", "expected section.key=value"),
])
def test_bad_values_name_the_key(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [override])


def test_missing_file():
    with pytest.raises(ValueError, match="does not exist"):
        load_config("no/such.yaml")


@pytest.mark.parametrize("override,match", [
    ("distributed.port=70000", r"distributed: port must be in \[0, 65535\], got 70000"),
    ("distributed.items_per_batch=0", "distributed: items_per_batch must be >= 1"),
    ("distributed.pull_every=0", "distributed: pull_every must be >= 1"),
    ("distributed.rate_tolerance=0.5", "distributed: rate_tolerance must be >= 1"),
    ("distributed.connect_retries=0", "distributed: connect_retries must be >= 1"),
    ("distributed.retry_seconds=-1", "distributed: retry_seconds must be >= 0"),
])
def test_distributed_section_ranges_name_the_key(override, match):
    with pytest.raises(ValueError, match=match):
        load_config(None, [override])
