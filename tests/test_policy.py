"""LearnedPolicy ↔ SavedModel (issue 3): export, load, signatures, bad paths, atomic versions."""

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from rl_optimizer import export as export_lib
from rl_optimizer import features
from rl_optimizer.export import export_policy
from rl_optimizer.policy import PRETRAINED_DIR, LearnedPolicy, load_policy


def _policy(seed=0, hidden=(8,)) -> LearnedPolicy:
    """A random policy with non-default feature constants and random biases (all must survive)."""
    policy = LearnedPolicy.random(
        hidden=hidden, seed=seed, metadata={"seed": seed, "note": "test"},
        feature_config=features.FeatureConfig(learning_rate=0.05, beta1=0.8, clip=4.0))
    rng = np.random.default_rng(seed)
    for bias in policy.biases:
        bias.assign(rng.normal(size=bias.shape).astype(np.float32))
    return policy


def _weights(policy: LearnedPolicy) -> list[np.ndarray]:
    return [v.numpy() for v in policy.kernels + policy.biases]


def _assert_same_weights(a: LearnedPolicy, b: LearnedPolicy):
    assert len(a.kernels) == len(b.kernels)
    for x, y in zip(_weights(a), _weights(b)):
        np.testing.assert_array_equal(x, y)


def _gradient_and_state(n=300, seed=0):
    """A gradient [N] and a mid-run state [N, S] (t > 0, v > 0, some log_lr and action)."""
    rng = np.random.default_rng(seed)
    gradient = rng.normal(size=n).astype(np.float32)
    columns = {"m": rng.normal(size=n), "v": rng.uniform(0.1, 2.0, n),
               "log_lr": rng.uniform(-3, 1, n), "action": rng.uniform(-1, 1, n),
               "t": rng.integers(1, 50, n)}
    state = np.stack([columns[k] for k in features.State._fields], axis=-1).astype(np.float32)
    return tf.constant(gradient), tf.constant(state)


def _tree(path) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), path)
                  for d, _, files in os.walk(path) for f in files)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(policy, version_dir) of `_policy()` exported once."""
    policy = _policy()
    return policy, export_policy(policy, str(tmp_path_factory.mktemp("models")))


def test_round_trip_keeps_weights_features_metadata_and_steps(exported):
    policy, version_dir = exported
    loaded = load_policy(version_dir)

    _assert_same_weights(loaded, policy)
    assert loaded.feature_config == policy.feature_config
    assert loaded.metadata == policy.metadata
    gradient, state = _gradient_and_state()
    update, new_state = policy.step(gradient, features.unpack(state))
    loaded_update, loaded_state = loaded.step(gradient, features.unpack(state))
    np.testing.assert_array_equal(loaded_update, update)
    np.testing.assert_array_equal(features.pack(loaded_state), features.pack(new_state))


def test_layout_is_tf_serving_with_manifest(exported):
    policy, version_dir = exported
    assert os.path.basename(version_dir) == "1"
    assert os.path.basename(os.path.dirname(version_dir)) == "rl_optimizer"
    assert os.path.isfile(os.path.join(version_dir, "saved_model.pb"))
    with open(os.path.join(version_dir, "assets.extra", "policy.json")) as f:
        manifest = json.load(f)
    assert manifest["hidden"] == [8]
    assert manifest["state_size"] == features.STATE_SIZE
    assert manifest["observation_size"] == features.OBSERVATION_SIZE


def test_loads_from_model_dir_version_dir_and_run_dir(tmp_path):
    first, second = _policy(seed=1), _policy(seed=2, hidden=(4, 3))
    run_dir = tmp_path / "run"
    v1 = export_policy(first, str(run_dir / "export"))
    v2 = export_policy(second, str(run_dir / "export"))

    assert [os.path.basename(v) for v in (v1, v2)] == ["1", "2"]
    _assert_same_weights(load_policy(v1), first)
    for path in (v2, os.path.dirname(v2), str(run_dir / "export"), str(run_dir)):
        _assert_same_weights(load_policy(path), second)


def test_highest_version_is_compared_as_an_integer(tmp_path):
    export_policy(_policy(seed=1), str(tmp_path), version=9)
    export_policy(_policy(seed=2), str(tmp_path), version=10)
    _assert_same_weights(load_policy(str(tmp_path)), _policy(seed=2))


def test_serving_default_signature_is_policy_step(exported):
    policy, version_dir = exported
    step = tf.saved_model.load(version_dir).signatures["serving_default"]
    gradient, state = _gradient_and_state()
    n = gradient.shape[0]
    segments = tf.constant([0] * (n // 2) + [1] * (n - n // 2), tf.int32)

    out = step(gradient=gradient, state=state, segments=segments)

    assert set(out) == {"update", "state"}
    update, new_state = policy.step(gradient, features.unpack(state),
                                    features.Segments(segments, 2))
    np.testing.assert_allclose(out["update"], update, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["state"], features.pack(new_state), rtol=1e-6, atol=1e-7)
    assert out["state"].shape == (n, features.STATE_SIZE)
    one = step(gradient=gradient, state=state, segments=tf.zeros([n], tf.int32))
    np.testing.assert_allclose(one["update"], policy.step(gradient, features.unpack(state))[0],
                               rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("cut,segments,message", [
    ("gradient", None, "same number of coordinates"),
    ("segments", None, "same number of coordinates"),
    (None, -1, "segments must be >= 0"),
    (None, 10, "segments must be < N")])
def test_serving_default_rejects_inconsistent_inputs(exported, cut, segments, message):
    _, version_dir = exported
    step = tf.saved_model.load(version_dir).signatures["serving_default"]
    gradient, state = _gradient_and_state(n=10)
    ids = tf.zeros([10], tf.int32) if segments is None else tf.fill([10], segments)
    inputs = {"gradient": gradient, "state": state, "segments": ids}
    if cut:
        inputs[cut] = inputs[cut][:7]
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        step(**inputs)


def test_an_export_of_another_features_contract_is_refused_clearly(exported, tmp_path):
    import shutil

    _, version_dir = exported
    old = tmp_path / "old"
    shutil.copytree(version_dir, old)
    manifest_path = old / "assets.extra" / "policy.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["format"] = 1
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="features contract 1.*retrain"):
        load_policy(str(old))


def test_action_signature_is_policy_actor(exported):
    policy, version_dir = exported
    action = tf.saved_model.load(version_dir).signatures["action"]
    n = 200
    observation = tf.constant(
        np.random.default_rng(3).uniform(-5, 5, (n, features.OBSERVATION_SIZE)), tf.float32)

    out = action(step_type=tf.zeros([n], tf.int32), reward=tf.zeros([n]),
                 discount=tf.ones([n]), observation=observation)

    np.testing.assert_allclose(out["action"], policy.actor(observation), rtol=1e-6, atol=1e-7)
    assert np.std(out["action"]) > 0.1


def _load_error(path) -> str:
    with pytest.raises(ValueError) as error:
        load_policy(str(path))
    return str(error.value)


def test_load_errors_name_the_path(tmp_path, exported):
    a_file = tmp_path / "policy.txt"
    a_file.write_text("not a policy")
    assert str(a_file) in _load_error(a_file)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty) in _load_error(empty)

    plain = tmp_path / "plain_saved_model"
    tf.saved_model.save(tf.Module(), str(plain))
    message = _load_error(plain)
    assert str(plain) in message and "policy.json" in message

    _, version_dir = exported
    other = tmp_path / "other_state_size"
    shutil.copytree(version_dir, other)
    manifest_path = other / "assets.extra" / "policy.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["state_size"] = features.STATE_SIZE + 1
    manifest_path.write_text(json.dumps(manifest))
    message = _load_error(other)
    assert str(other) in message and "state size" in message


def test_exports_are_new_versions_with_no_temporary_left(tmp_path):
    paths = [export_policy(_policy(seed=s), str(tmp_path)) for s in (1, 2)]

    model_path = tmp_path / "rl_optimizer"
    assert sorted(os.listdir(model_path)) == ["1", "2"]
    assert paths == [str(model_path / "1"), str(model_path / "2")]
    assert _tree(paths[0]) == _tree(paths[1])


def test_failed_export_leaves_nothing_behind(tmp_path, monkeypatch):
    export_policy(_policy(seed=1), str(tmp_path))

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        export_policy(_policy(seed=2), str(tmp_path))
    assert os.listdir(tmp_path / "rl_optimizer") == ["1"]


def test_export_takes_the_next_version_when_another_exporter_won(tmp_path, monkeypatch):
    export_policy(_policy(seed=1), str(tmp_path))
    real_next_version = export_lib.next_version
    stale = iter([1])  # another process wrote version 1 after we looked
    monkeypatch.setattr(export_lib, "next_version",
                        lambda path: next(stale, None) or real_next_version(path))

    path = export_policy(_policy(seed=2), str(tmp_path))

    assert os.path.basename(path) == "2"
    _assert_same_weights(load_policy(str(tmp_path / "rl_optimizer" / "1")), _policy(seed=1))
    assert sorted(os.listdir(tmp_path / "rl_optimizer")) == ["1", "2"]


def test_default_policy_is_shipped_or_the_error_says_so():
    if os.path.isdir(PRETRAINED_DIR):
        assert isinstance(load_policy("default"), LearnedPolicy)
    else:
        with pytest.raises(ValueError, match="pretrained"):
            load_policy("default")


def test_nominal_is_the_shipped_policy_with_a_zero_actor():
    nominal, shipped = load_policy("nominal"), load_policy("default")
    assert nominal.feature_config == shipped.feature_config
    assert nominal.hidden == shipped.hidden
    observation = tf.random.normal([7, features.OBSERVATION_SIZE])
    np.testing.assert_array_equal(nominal.actor(observation), np.zeros(7))
    assert not np.array_equal(shipped.actor(observation), np.zeros(7))
