"""Network families (objectives/networks.py): realizable minima, minibatches, rescaling."""

import numpy as np
import pytest
import tensorflow as tf

from rl_optimizer.objectives import ObjectiveBatch, get_family, rescaled

REGRESSIONS = [("teacher_mlp", {"task": "regression", "outputs": 2}),
               ("teacher_mlp", {"task": "regression", "activation": "tanh", "layers": 1}),
               ("teacher_mlp", {"task": "regression", "input_offset": 3.0}),
               ("teacher_rnn", {})]


@pytest.mark.parametrize("name,params", REGRESSIONS)
def test_teacher_is_a_global_minimizer(name, params):
    objective = get_family(name, **params).sample(0)
    f, g = objective.value_and_grad(objective.x_star)
    assert f == pytest.approx(0.0, abs=1e-20)
    assert np.abs(g).max() < 1e-9
    assert objective.value(objective.x0) > 0.1


def test_classification_loss_approaches_zero_but_not_below():
    objective = get_family("teacher_mlp").sample(0)
    assert objective.f_star == 0.0 and objective.x_star is None
    start = objective.value(objective.x0)
    assert start > 0.5  # about log(4) for 4 classes at a Glorot start


def test_autoencoder_is_a_deep_linear_network_with_a_bottleneck():
    family = get_family("teacher_mlp", task="autoencoder", inputs=10, hidden=3)
    objective = family.sample(1)
    assert family.sizes == (10, 3, 10)
    assert objective.dim == 10 * 3 + 3 + 3 * 10 + 10
    # Rank-3 data through a 3-wide linear bottleneck: PCA's reconstruction is exact.
    inputs = objective.params["inputs"]
    assert np.linalg.matrix_rank(inputs) == 3


def test_minibatch_gradients_average_to_the_full_gradient():
    objective = get_family("teacher_mlp", n_samples=64, batch_size=16).sample(2)
    batch = ObjectiveBatch([objective])
    x = tf.constant(objective.x0)
    full_f, full_g = batch.tf_value_and_grad(x)
    draws = [batch.tf_value_and_grad(x, tf.constant([0, k], tf.int64)) for k in range(200)]
    for f, _ in draws:  # values stay full-batch
        np.testing.assert_allclose(f, full_f)
    grads = np.stack([g.numpy() for _, g in draws])
    assert np.abs(grads[0] - grads[1]).max() > 1e-6  # noisy
    error = np.linalg.norm(grads.mean(0) - full_g) / np.linalg.norm(full_g)
    assert error < 0.15
    again = batch.tf_value_and_grad(x, tf.constant([0, 3], tf.int64))[1]
    np.testing.assert_array_equal(again, grads[3])


def test_rescaled_keeps_gaps_and_scales_gradients():
    objective = get_family("teacher_rnn").sample(0)
    scaled = rescaled(objective, 100.0, 1e-3)
    np.testing.assert_allclose(scaled.x0, 100.0 * objective.x0)
    np.testing.assert_allclose(scaled.x_star, 100.0 * objective.x_star)
    f, g = objective.value_and_grad(objective.x0)
    fs, gs = scaled.value_and_grad(scaled.x0)
    assert fs == pytest.approx(1e-3 * f)
    np.testing.assert_allclose(gs, g * 1e-3 / 100.0, rtol=1e-9)
    assert scaled.normalized_gap(fs) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="x_scale"):
        rescaled(objective, 0.0, 1.0)


def test_input_offset_shifts_each_feature_and_keeps_the_targets():
    plain = get_family("teacher_mlp", n_samples=2000).sample(4)
    shifted = get_family("teacher_mlp", n_samples=2000, input_offset=3.0).sample(4)
    np.testing.assert_array_equal(shifted.params["targets"], plain.params["targets"])
    np.testing.assert_array_equal(shifted.x0, plain.x0)
    offset = shifted.params["inputs"] - plain.params["inputs"]
    np.testing.assert_allclose(offset, np.broadcast_to(offset[0], offset.shape))  # per feature
    assert np.all((offset[0] >= 0.0) & (offset[0] <= 3.0)) and np.ptp(offset[0]) > 0.5


@pytest.mark.parametrize("params,name", [({"task": "nope"}, "task"),
                                         ({"input_offset": -1.0}, "input_offset"),
                                         ({"batch_size": 600}, "batch_size"),
                                         ({"task": "autoencoder", "hidden": 9}, "hidden")])
def test_bad_parameters_are_named(params, name):
    with pytest.raises(ValueError, match=name):
        get_family("teacher_mlp", **params)
