"""The TF-Agents DDPG agent that learns the optimizer, and its link to `LearnedPolicy`.

The actor is tf_agents' `ActorNetwork` (ReLU MLP, tanh output scaled to the action spec
[-1, 1], so scaling is the identity) over one coordinate's features; the critic is a
`CriticNetwork` over (features, action). Both are coordinatewise: the batch axis is the
coordinate axis. `policy_from_actor` copies the actor's dense layers into a `LearnedPolicy`,
which computes exactly the same function without TF-Agents.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from tf_agents.agents.ddpg import actor_network, critic_network, ddpg_agent

from rl_optimizer.config import Config
from rl_optimizer.policy import LearnedPolicy


def build_agent(time_step_spec, action_spec, config: Config,
                train_step_counter: tf.Variable) -> ddpg_agent.DdpgAgent:
    """A `DdpgAgent` as the config says (Lillicrap et al. 2016)."""
    observation_spec = time_step_spec.observation
    actor = actor_network.ActorNetwork(
        observation_spec, action_spec, fc_layer_params=config.networks.actor_hidden,
        name="actor")
    critic = critic_network.CriticNetwork(
        (observation_spec, action_spec),
        joint_fc_layer_params=config.networks.critic_hidden, name="critic")
    a = config.agent
    agent = ddpg_agent.DdpgAgent(
        time_step_spec, action_spec,
        actor_network=actor, critic_network=critic,
        actor_optimizer=tf.keras.optimizers.Adam(a.actor_lr),
        critic_optimizer=tf.keras.optimizers.Adam(a.critic_lr),
        ou_stddev=a.ou_stddev, ou_damping=a.ou_damping,
        target_update_tau=a.target_update_tau, target_update_period=a.target_update_period,
        td_errors_loss_fn=tf.compat.v1.losses.huber_loss,
        gamma=a.gamma, gradient_clipping=a.gradient_clipping,
        train_step_counter=train_step_counter)
    agent.initialize()
    return agent


def actor_layers(agent: ddpg_agent.DdpgAgent) -> list[tf.keras.layers.Dense]:
    """The actor's dense layers, input to output."""
    # tf_agents keeps them private; a Flatten of the [batch, F] observation is the identity.
    layers = [layer for layer in agent._actor_network._mlp_layers  # noqa: SLF001
              if not isinstance(layer, tf.keras.layers.Flatten)]
    if not all(isinstance(layer, tf.keras.layers.Dense) for layer in layers):
        raise TypeError("the actor has layers other than Dense; LearnedPolicy cannot copy it")
    return layers


def policy_from_actor(agent: ddpg_agent.DdpgAgent, config: Config,
                      metadata: dict | None = None) -> LearnedPolicy:
    """The agent's current actor as a `LearnedPolicy` (a copy of its weights)."""
    layers = actor_layers(agent)
    return LearnedPolicy([np.asarray(layer.kernel) for layer in layers],
                         [np.asarray(layer.bias) for layer in layers],
                         config.features, metadata=metadata)
