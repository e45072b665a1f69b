"""The DDPG agent (issue 3): `policy_from_actor` is exactly the TF-Agents actor, and small."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tf_agents.specs import tensor_spec
from tf_agents.trajectories import time_step as ts

from rl_optimizer import features
from rl_optimizer.agent import build_agent, policy_from_actor
from rl_optimizer.config import CONFIG_DIR, load_config
from rl_optimizer.environment import OptimizationEnv


def _agent(config):
    env = OptimizationEnv(config.environment, config.features)
    return build_agent(tensor_spec.from_spec(env.time_step_spec()),
                       tensor_spec.from_spec(env.action_spec()), config,
                       tf.Variable(0, dtype=tf.int64))


def _randomize_actor(agent, seed):
    # Fresh tf_agents actors end in U(±0.003) weights: every action is about 0, which would
    # hide a wrong hidden layer. Weights of order one make every unit count.
    rng = np.random.default_rng(seed)
    for variable in agent.policy.variables():
        variable.assign(rng.normal(size=variable.shape).astype(np.float32))


def _observations(n=257, seed=0):
    rng = np.random.default_rng(seed)
    return tf.constant(rng.uniform(-5.0, 5.0, (n, features.OBSERVATION_SIZE)), tf.float32)


@pytest.fixture(scope="module")
def smoke_config(smoke_config_path):
    return load_config(smoke_config_path)


def test_policy_from_actor_computes_the_tf_agents_actor(smoke_config):
    agent = _agent(smoke_config)
    _randomize_actor(agent, seed=1)
    observation = _observations()

    expected = agent.policy.action(ts.restart(observation, batch_size=observation.shape[0]))
    actions = policy_from_actor(agent, smoke_config).actor(observation)

    assert actions.shape == expected.action.shape == (observation.shape[0],)
    assert np.std(expected.action) > 0.1  # the comparison is not between two near-zero vectors
    np.testing.assert_allclose(actions, expected.action, atol=1e-6)


def test_policy_from_actor_copies_the_weights(smoke_config):
    agent = _agent(smoke_config)
    _randomize_actor(agent, seed=1)
    observation = _observations()
    policy = policy_from_actor(agent, smoke_config, metadata={"iteration": 3})
    before = policy.actor(observation).numpy()

    _randomize_actor(agent, seed=2)  # training goes on after a policy was taken

    np.testing.assert_array_equal(policy.actor(observation), before)
    assert policy.metadata == {"iteration": 3}
    assert policy.feature_config == smoke_config.features


@pytest.mark.parametrize("config_name", ["smoke.yaml", "default.yaml"])
def test_actor_is_the_small_mlp_the_config_asks_for(config_name):
    config = load_config(os.path.join(CONFIG_DIR, config_name))
    policy = policy_from_actor(_agent(config), config)

    hidden = tuple(config.networks.actor_hidden)
    assert policy.hidden == hidden
    sizes = [features.OBSERVATION_SIZE, *hidden, 1]
    parameters = sum(int(np.prod(k.shape)) + int(np.prod(b.shape))
                     for k, b in zip(policy.kernels, policy.biases))
    assert parameters == sum((a + 1) * b for a, b in zip(sizes, sizes[1:]))
    # Per coordinate per step it runs once: it must stay a few hundred weights.
    assert parameters < 1000
