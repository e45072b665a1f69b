"""OptimizationEnv: the TF-Agents contract, rewards, and agreement with the features module."""

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.environments import tf_py_environment, utils

from rl_optimizer import features
from rl_optimizer.config import EnvironmentConfig, FamilySpec
from rl_optimizer.environment import OptimizationEnv


def _env(horizon=5, **kwargs):
    mix = (FamilySpec("quadratic", 2, {"dim": 3}), FamilySpec("rosenbrock", 1, {"dim": 2}))
    return OptimizationEnv(EnvironmentConfig(mix=mix, horizon=horizon, **kwargs))


def test_validate_py_environment():
    env = _env()
    assert env.batch_size == 2 * 3 + 2
    utils.validate_py_environment(env, episodes=3)


def test_tf_py_environment_wraps_it():
    tf_env = tf_py_environment.TFPyEnvironment(_env())
    step = tf_env.reset()
    assert step.observation.shape == (8, features.OBSERVATION_SIZE)
    step = tf_env.step(tf.zeros([8]))
    assert step.reward.shape == (8,)


def test_episode_ends_by_truncation_and_auto_resets():
    env = _env(horizon=3)
    env.reset()
    for _ in range(3):
        step = env.step(np.zeros(8, np.float32))
    assert step.is_last().all()
    np.testing.assert_array_equal(step.discount, np.ones(8))  # truncation, not termination
    assert env.step(np.zeros(8, np.float32)).is_first().all()


def test_rewards_sum_to_log_gap_decrease_and_are_shared_per_instance():
    env = _env(horizon=20, reward_clip=100.0)
    env.reset()
    total = np.zeros(8)
    for _ in range(20):
        step = env.step(np.zeros(8, np.float32))
        total += step.reward
    batch = env.objective_batch
    gap = np.maximum(batch.normalized_gap(env.values), env.config.gap_floor)
    np.testing.assert_allclose(total, -np.log(gap)[batch.instance_of_coordinate], rtol=1e-4)
    assert len(set(np.round(total[:3], 5))) == 1  # one instance, one reward


def test_zero_action_follows_features_module():
    """The environment's trajectory is the features module's Adam, step for step."""
    env = _env(horizon=10)
    env.reset()
    batch = env.objective_batch
    x, state = batch.initial_point(), features.init_state([batch.size])
    segments = features.Segments(tf.constant(batch.instance_of_coordinate, tf.int32),
                                 len(batch.objectives))
    for _ in range(10):
        _, g = batch.value_and_grad(x)
        update, state = features.apply_action(tf.zeros([batch.size]), tf.constant(g, tf.float32),
                                              state, env.feature_config, segments=segments)
        x = x + update.numpy()
        env.step(np.zeros(batch.size, np.float32))
    np.testing.assert_allclose(env.point, x, rtol=1e-6)


def test_deterministic_given_seed():
    a, b = _env(seed=3), _env(seed=3)
    for _ in range(2):
        a.reset(), b.reset()
        np.testing.assert_array_equal(a.objective_batch.initial_point(),
                                      b.objective_batch.initial_point())


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="unknown objective family 'nope'"):
        OptimizationEnv(EnvironmentConfig(mix=(FamilySpec("nope"),)))


def _network_env(**kwargs):
    mix = (FamilySpec("quadratic", 2, {"dim": 3}),
           FamilySpec("teacher_mlp", 2, {"inputs": 3, "hidden": 4, "layers": 1, "outputs": 2,
                                         "n_samples": 64, "batch_size": 8}))
    return OptimizationEnv(EnvironmentConfig(mix=mix, horizon=4, pool_size=2, **kwargs))


def test_rescaled_instances_random_step_sizes_and_horizons_repeat_by_seed():
    kwargs = dict(rescale=2.0, loss_rescale=3.0, initial_log_lr=2.0, max_horizon=40, seed=5)
    a, b = _network_env(**kwargs), _network_env(**kwargs)
    for env in (a, b):
        env.reset()
    scales = [o.params["x_scale"] for o in a.objective_batch.objectives]
    assert len(set(scales)) == len(scales) and all(1e-2 <= s <= 1e2 for s in scales)
    np.testing.assert_array_equal(a.objective_batch.initial_point(),
                                  b.objective_batch.initial_point())
    log_lr = a._state[features.State._fields.index("log_lr")].numpy()
    assert np.all(np.abs(log_lr) <= 2.0) and np.ptp(log_lr) > 0
    assert 4 <= a._horizon <= 40
    for _ in range(3):  # minibatch gradients: the same seed draws the same batches
        steps = [env.step(np.zeros(env.batch_size, np.float32)) for env in (a, b)]
        np.testing.assert_array_equal(steps[0].observation, steps[1].observation)


def test_network_rewards_follow_the_full_batch_loss():
    env = _network_env(reward_clip=100.0)
    env.reset()
    batch = env.objective_batch
    start = batch.normalized_gap(env.values)
    total = sum(env.step(np.zeros(env.batch_size, np.float32)).reward for _ in range(3))
    full, _ = batch.value_and_grad(env.point)  # no seed: full batch
    expected = np.log(start) - np.log(batch.normalized_gap(full))
    np.testing.assert_allclose(total, expected[batch.instance_of_coordinate], rtol=1e-4,
                               atol=1e-6)


def test_reward_scale_multiplies_a_familys_rewards():
    mix = (FamilySpec("quadratic", 1, {"dim": 3}),
           FamilySpec("quadratic", 1, {"dim": 3}, reward_scale=10.0))
    env = OptimizationEnv(EnvironmentConfig(mix=mix, horizon=5, pool_size=1, reward_clip=100.0))
    env.reset()  # both entries draw the same (only) training instance
    reward = env.step(np.zeros(env.batch_size, np.float32)).reward
    np.testing.assert_allclose(reward[3:], 10.0 * reward[:3], rtol=1e-5)
    assert reward[0] > 0
