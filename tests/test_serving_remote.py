"""rl_optimizer/serving/remote.py and examples/remote_training.py: remote steps equal local ones."""

import importlib.util
import os

import numpy as np
import pytest
import tensorflow as tf

from rl_optimizer import features
from rl_optimizer.serving import PolicyClient, RemoteOptimizer

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "remote_training.py")


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("remote_training", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class PerParameterSteps:
    """The in-process reference: `policy.step` on each array with its own state."""

    def __init__(self, policy):
        self.policy, self.state = policy, {}

    def apply(self, params, grads):
        for name, grad in grads.items():
            state = self.state.get(name, features.init_state(grad.shape))
            update, self.state[name] = self.policy.step(tf.constant(grad), state)
            params[name] += update.numpy()


class KerasSteps:
    """`LearnedOptimizer` applying numpy gradients to tf.Variables mirroring the params."""

    def __init__(self, optimizer):
        self.optimizer, self.variables = optimizer, {}

    def apply(self, params, grads):
        if not self.variables:
            self.variables = {k: tf.Variable(params[k]) for k in grads}
        self.optimizer.apply_gradients(
            [(tf.constant(g), self.variables[k]) for k, g in grads.items()])
        for k, variable in self.variables.items():
            params[k][...] = variable.numpy()


def test_remote_optimizer_keeps_state_per_parameter(policy_server, serving_policies):
    rng = np.random.default_rng(0)
    grads = [{"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=4)}
             for _ in range(3)]
    grads[2]["c"] = rng.normal(size=(2,)).astype(np.float32)  # a parameter joins late
    remote = RemoteOptimizer(PolicyClient(policy_server.target))
    local = PerParameterSteps(serving_policies[0])
    for step in grads:
        params = {k: np.zeros_like(g, np.float32) for k, g in step.items()}
        want = {k: v.copy() for k, v in params.items()}
        updates = remote.step(step)
        local.apply(want, {k: g.astype(np.float32) for k, g in step.items()})
        for k, g in step.items():
            assert updates[k].shape == g.shape and updates[k].dtype == g.dtype
            np.testing.assert_allclose(updates[k], want[k], rtol=1e-5, atol=1e-7)
    assert {k: v.shape for k, v in remote.state.items()} == {
        "w": (3, 4, features.STATE_SIZE), "b": (4, features.STATE_SIZE),
        "c": (2, features.STATE_SIZE)}
    restored = RemoteOptimizer(remote.client)
    restored.load_state({k: v.copy() for k, v in remote.state.items()})
    np.testing.assert_array_equal(restored.step(grads[2])["w"], remote.step(grads[2])["w"])
    with pytest.raises(ValueError, match="changed shape"):
        remote.step({"w": np.zeros((4, 3))})


def test_large_parameters_step_alike_remote_and_in_process(policy_server, serving_policies):
    """A parameter over features.STATISTICS_SAMPLE coordinates: its statistics come from a
    strided sample, which the server (by segment) and the Keras optimizer (by slicing, under
    XLA or not) must take alike."""
    from rl_optimizer.keras_optimizer import LearnedOptimizer

    rng = np.random.default_rng(1)
    grads = [{"w": rng.normal(size=(70, 80)).astype(np.float32),
              "b": rng.normal(size=5).astype(np.float32)} for _ in range(4)]
    remote = RemoteOptimizer(PolicyClient(policy_server.target))
    local = PerParameterSteps(serving_policies[0])
    keras = {jit: KerasSteps(LearnedOptimizer(serving_policies[0], jit_compile=jit))
             for jit in (False, True)}
    params = {"remote": {k: np.zeros_like(g) for k, g in grads[0].items()}}
    for name in ("local", False, True):
        params[name] = {k: v.copy() for k, v in params["remote"].items()}
    for step in grads:
        for k, update in remote.step(step).items():
            params["remote"][k] += update
        local.apply(params["local"], step)
        for jit, reference in keras.items():
            reference.apply(params[jit], step)
    for name in ("local", False, True):
        for k in grads[0]:
            np.testing.assert_allclose(params["remote"][k], params[name][k], rtol=1e-5,
                                       atol=1e-7, err_msg=f"{name}: {k}")
    assert np.abs(params["remote"]["w"]).max() > 0


def test_remote_training_equals_in_process(policy_server, serving_policies, example):
    policy = serving_policies[0]
    kwargs = {"epochs": 2, "log": lambda line: None}
    remote_params, remote_losses = example.train(
        RemoteOptimizer(PolicyClient(policy_server.target)), **kwargs)
    references = {"policy.step": PerParameterSteps(policy)}
    try:
        from rl_optimizer.keras_optimizer import LearnedOptimizer
    except ImportError:
        pass  # the Keras optimizer is optional here; the policy.step loop is the reference
    else:
        references["LearnedOptimizer"] = KerasSteps(LearnedOptimizer(policy, jit_compile=False))
    for name, reference in references.items():
        params, losses = example.train(reference, **kwargs)
        np.testing.assert_allclose(remote_losses, losses, rtol=1e-4, err_msg=name)
        for k in params:
            np.testing.assert_allclose(remote_params[k], params[k], rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name}: {k}")
