"""The replay server: Reverb tables, the connection to them, and the learner's dataset.

    rl-optimizer replay-server --port 8000 [--config C] [--set k=v] [--checkpoint-dir D]

One replay item is two consecutive environment steps of `distributed.coordinates_per_item`
coordinates ([2, C, ...]): a collector shuffles a step's B coordinates once per episode and
splits them into K = ceil(B / C) items, so a batch drawn from a few items mixes instances,
steps and episodes, and the learner reads only about the coordinates it trains on. The rate
limiter counts items, so "train_steps gradient steps per collect_steps environment steps"
becomes `samples_per_insert = train_steps * items_per_batch / (collect_steps * K)`.

Reverb 0.14's server listens on every interface (its C++ server binds `[::]:port`; there is
no option to bind one address). The roles here only ever connect over the address they are
given (127.0.0.1 by default); on a machine reachable from others, firewall the port.
"""

from __future__ import annotations

import math
import os
import time

import numpy as np
import reverb
import tensorflow as tf
import yaml
from tf_agents.experimental.distributed import reverb_variable_container
from tf_agents.replay_buffers import reverb_replay_buffer
from tf_agents.specs import tensor_spec

from rl_optimizer import agent as agent_lib
from rl_optimizer.config import Config, DistributedConfig, from_dict, to_dict
from rl_optimizer.distributed import CONFIG_TABLE, REPLAY_TABLE, VARIABLE_TABLE
from rl_optimizer.environment import OptimizationEnv


def build_role(config: Config, env_config=None):
    """`(env, agent, train_step)` as every role builds them from the run's config."""
    env = OptimizationEnv(env_config or config.environment, config.features)
    train_step = tf.Variable(0, dtype=tf.int64, name="train_step")
    agent = agent_lib.build_agent(tensor_spec.from_spec(env.time_step_spec()),
                                  tensor_spec.from_spec(env.action_spec()), config, train_step)
    return env, agent, train_step


def _shared(agent, iteration: tf.Variable, done: tf.Variable) -> dict:
    # The greedy and the collect policy share the actor network, so setting the greedy
    # policy's variables updates what collectors act with (their noise stays their own).
    return {"actor": agent.policy.variables(), "iteration": iteration, "done": done}


def _progress_variables() -> tuple[tf.Variable, tf.Variable]:
    return (tf.Variable(0, dtype=tf.int64, name="iteration"),
            tf.Variable(0, dtype=tf.int64, name="done"))


class SharedVariables:
    """The variable table: the learner pushes its actor and progress, collectors pull them."""

    def __init__(self, address: str, agent):
        self.iteration, self.done = _progress_variables()
        self.variables = _shared(agent, self.iteration, self.done)
        self.container = reverb_variable_container.ReverbVariableContainer(address,
                                                                           [VARIABLE_TABLE])

    def push(self, iteration: int, finished: bool = False) -> None:
        self.iteration.assign(iteration)
        self.done.assign(int(finished))
        self.container.push(self.variables, VARIABLE_TABLE)

    def pull(self) -> bool:
        """Sets the actor to the learner's latest weights; True once the learner is done.

        Waits for the learner's first push."""
        self.container.update(self.variables, VARIABLE_TABLE)
        return bool(self.done.numpy())

    @staticmethod
    def signature(agent):
        return tf.nest.map_structure(lambda v: tf.TensorSpec(v.shape, v.dtype),
                                     _shared(agent, *_progress_variables()))


def item_layout(coordinates_per_item: int, batch_size: int) -> tuple[int, int]:
    """`(C, K)`: coordinates per replay item and items per environment step of B coordinates,
    for `distributed.coordinates_per_item` (C is at most B)."""
    per_item = min(coordinates_per_item, batch_size)
    return per_item, -(-batch_size // per_item)


def samples_per_insert(config: Config, batch_size: int) -> float:
    t = config.training
    items_per_step = item_layout(config.distributed.coordinates_per_item, batch_size)[1]
    return t.train_steps * config.distributed.items_per_batch / (t.collect_steps * items_per_step)


def make_tables(config: Config, batch_size: int, variable_signature) -> list[reverb.Table]:
    """The replay table (rate-limited to the config's train/collect ratio) and two 1-slot tables."""
    t = config.training
    items_per_step = item_layout(config.distributed.coordinates_per_item, batch_size)[1]
    ratio = samples_per_insert(config, batch_size)
    # error_buffer is how far (in samples) the ratio may drift: rate_tolerance environment steps.
    limiter = reverb.rate_limiters.SampleToInsertRatio(
        samples_per_insert=ratio, min_size_to_sample=max(1, t.initial_collect_steps) *
        items_per_step,
        error_buffer=config.distributed.rate_tolerance * max(1.0, ratio * items_per_step))

    def one_slot(name, signature):  # a rate limiter serves one table: a new one each
        return reverb.Table(name, sampler=reverb.selectors.Fifo(),
                            remover=reverb.selectors.Fifo(), max_size=1,
                            rate_limiter=reverb.rate_limiters.MinSize(1), signature=signature)

    return [
        reverb.Table(REPLAY_TABLE, sampler=reverb.selectors.Uniform(),
                     remover=reverb.selectors.Fifo(),
                     max_size=t.replay_capacity * items_per_step, rate_limiter=limiter),
        one_slot(VARIABLE_TABLE, variable_signature),
        one_slot(CONFIG_TABLE, tf.TensorSpec((), tf.string)),
    ]


def start_server(config: Config, port: int = 0, checkpoint_dir: str | None = None
                 ) -> reverb.Server:
    """A Reverb server for `config`'s run; restores its tables from `checkpoint_dir`'s latest.

    Args:
      config: the run's config; collectors and learners read it back from the server.
      port: the port (0: a free one, see `server.port`).
      checkpoint_dir: where `client.checkpoint()` writes (the learner asks at each of its
        checkpoints); a server started on a directory holding one starts from it.
    """
    env, agent, _ = build_role(config)
    signature = SharedVariables.signature(agent)
    checkpointer = None
    if checkpoint_dir:
        os.makedirs(checkpoint_dir, exist_ok=True)
        checkpointer = reverb.checkpointers.DefaultCheckpointer(checkpoint_dir)
    server = reverb.Server(make_tables(config, env.batch_size, signature), port=port or None,
                           checkpointer=checkpointer)
    client = reverb.Client(f"127.0.0.1:{server.port}")
    # A 1-slot FIFO table: this replaces a config restored from a checkpoint.
    client.insert(np.array(yaml.safe_dump(to_dict(config), sort_keys=False).encode(), object),
                  priorities={CONFIG_TABLE: 1.0})
    return server


def connect(address: str, retries: int | None = None,
            retry_seconds: float | None = None) -> reverb.Client:
    """A client of the server at `address`, once it answers; retries, then names the address.

    The defaults are `DistributedConfig`'s: a role learns the run's own settings only from the
    server it is connecting to.
    """
    defaults = DistributedConfig()
    retries = defaults.connect_retries if retries is None else retries
    retry_seconds = defaults.retry_seconds if retry_seconds is None else retry_seconds
    last = None
    for attempt in range(retries):
        client = reverb.Client(address)
        try:
            client.server_info(timeout=max(1, math.ceil(retry_seconds)))
            return client
        except (reverb.errors.DeadlineExceededError, RuntimeError) as e:
            last = e
        if attempt + 1 < retries:
            time.sleep(retry_seconds)
    raise ConnectionError(f"cannot reach the replay server at {address} after {retries} "
                          f"tries, {retry_seconds:g} s apart ({type(last).__name__}: "
                          f"{str(last).splitlines()[0] if str(last) else ''})")


def read_config(client: reverb.Client) -> Config:
    """The run's config, as the server holds it."""
    sample = next(client.sample(CONFIG_TABLE, num_samples=1))
    text = sample[0].data[0]
    return from_dict(Config, yaml.safe_load(text.item().decode()))


def table_size(client: reverb.Client, table: str = REPLAY_TABLE) -> int:
    return int(client.server_info()[table].current_size)


def training_dataset(address: str, config: Config, agent, batch_size: int) -> tf.data.Dataset:
    """Batches of `training.batch_size` coordinate transitions [batch, 2, ...] for DDPG.

    Each batch draws its coordinates uniformly (with replacement, as `TFUniformReplayBuffer`
    does) from `distributed.items_per_batch` items sampled from the replay table, so one batch
    mixes several steps and episodes, and the rate limiter counts whole batches. `batch_size`
    is the environment's (B coordinates per step).
    """
    items = config.distributed.items_per_batch
    batch = config.training.batch_size
    per_item = -(-batch // items)
    coordinates = item_layout(config.distributed.coordinates_per_item, batch_size)[0]
    data_spec = tensor_spec.add_outer_dims_nest(agent.collect_data_spec, (coordinates,))
    buffer = reverb_replay_buffer.ReverbReplayBuffer(
        data_spec, REPLAY_TABLE, sequence_length=2, server_address=address)

    def flatten(trajectory, info):
        index = tf.random.uniform([items, per_item], 0, coordinates, tf.int32)

        def pick(x):  # [items, 2, C, ...] -> [batch, 2, ...]
            x = tf.gather(x, index, axis=2, batch_dims=1)
            x = tf.transpose(x, [0, 2, 1] + list(range(3, x.shape.rank)))
            return tf.reshape(x, [-1, 2, *x.shape[3:]])[:batch]

        return tf.nest.map_structure(pick, trajectory), ()

    dataset = buffer.as_dataset(sample_batch_size=items, num_steps=2)
    return dataset.map(flatten).prefetch(1)

