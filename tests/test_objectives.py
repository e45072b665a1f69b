"""Tests for rl_optimizer.objectives: every registered family against the protocol."""

import dataclasses
import functools
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import yaml

import rl_optimizer.objectives as objectives
from rl_optimizer.objectives import (
    ObjectiveBatch,
    get_family,
    list_families,
    reference_minimum,
    seeds,
)

FAMILIES = list_families()
BASIN_FAMILIES = [n for n in FAMILIES if hasattr(get_family(n), "in_global_basin")]
FAMILIES_YAML = pathlib.Path(objectives.__file__).parents[1] / "configs" / "families.yaml"


@functools.cache
def sample(name, seed=0):
    """One cached instance per (family, seed): the learned families run L-BFGS to sample."""
    return get_family(name).sample(seed)


def finite_difference_grad(objective, x, h=1e-6):
    eye = np.eye(objective.dim)
    return np.array([(objective.value(x + h * e) - objective.value(x - h * e)) / (2 * h)
                     for e in eye])


def assert_gradient_matches_finite_differences(objective, n_points=3):
    rng = np.random.default_rng(0)
    for _ in range(n_points):
        x = objective.x0 + 0.3 * rng.normal(size=objective.dim)
        _, g = objective.value_and_grad(x)
        error = np.max(np.abs(g - finite_difference_grad(objective, x)))
        assert error <= 1e-5 * max(1.0, np.max(np.abs(g))), (objective.family, error)


@pytest.mark.parametrize("name", FAMILIES)
def test_gradient_matches_finite_differences(name):
    assert_gradient_matches_finite_differences(sample(name))


def test_mlp_relu_variant():
    objective = get_family("mlp_classifier", activation="relu").sample(0)
    assert_gradient_matches_finite_differences(objective, n_points=1)
    assert objective.value(objective.x_star) == objective.f_star < objective.value(objective.x0)
    with pytest.raises(ValueError, match="'activation'"):
        get_family("mlp_classifier", activation="tanh")


@pytest.mark.parametrize("name", FAMILIES)
def test_value_at_minimizer_is_f_star(name):
    objective = sample(name)
    if objective.x_star is None:
        pytest.skip("minimum approached, not attained (test_networks.py checks it)")
    assert abs(objective.value(objective.x_star) - objective.f_star) <= 1e-9 * max(
        1.0, abs(objective.f_star))
    assert objective.value(objective.x0) > objective.f_star


@pytest.mark.parametrize("name", FAMILIES)
def test_minimizer_is_a_local_minimum(name):
    # L-BFGS from a nearby point finds nothing lower than f_star, and gets back to it.
    objective = sample(name)
    if objective.x_star is None:
        pytest.skip("minimum approached, not attained (test_networks.py checks it)")
    rng = np.random.default_rng(1)
    start = objective.x_star + 1e-3 * rng.normal(size=objective.dim)
    f, _ = reference_minimum(objective.value_and_grad, [start])
    assert objective.f_star - 1e-9 <= f <= objective.f_star + 1e-8


@pytest.mark.parametrize("name", FAMILIES)
def test_no_random_point_beats_f_star(name):
    objective = sample(name)
    rng = np.random.default_rng(2)
    points = objective.x0 + rng.normal(size=(64, objective.dim)) * np.linspace(0.01, 3, 64)[:, None]
    values, _ = ObjectiveBatch([objective] * len(points)).value_and_grad(points.reshape(-1))
    assert np.all(values >= objective.f_star)


@pytest.mark.parametrize("name", FAMILIES)
def test_start_is_not_stationary(name):
    # A start with zero gradient (e.g. every ReLU dead) would leave gradient methods nothing to do.
    _, g = sample(name).value_and_grad(sample(name).x0)
    assert np.linalg.norm(g) > 1e-6


@pytest.mark.parametrize("name", FAMILIES)
def test_sampling_is_deterministic_and_seeds_differ(name):
    a, b, c = sample(name, 3), get_family(name).sample(3), sample(name, 4)
    assert a.params.keys() == b.params.keys()
    for key in a.params:
        np.testing.assert_array_equal(a.params[key], b.params[key])
    np.testing.assert_array_equal(a.x0, b.x0)
    assert a.f_star == b.f_star
    assert not np.array_equal(a.x0, c.x0) or any(
        not np.array_equal(a.params[k], c.params[k]) for k in a.params)


def test_reference_solver_reaches_known_minimum():
    quadratic = sample("quadratic")
    f, _ = reference_minimum(quadratic.value_and_grad, [quadratic.x0])
    assert abs(f - quadratic.f_star) <= 1e-9
    for name in ["logistic_regression", "robust_linear_regression", "mlp_classifier"]:
        objective = sample(name)
        assert np.linalg.norm(objective.value_and_grad(objective.x_star)[1]) <= 1e-6, name


@pytest.mark.parametrize("name", BASIN_FAMILIES)
def test_in_global_basin(name):
    family, objective = get_family(name), sample(name)
    assert family.in_global_basin(objective, objective.x_star)
    assert not family.in_global_basin(objective, objective.x0)


def test_saddle_start_is_a_strict_saddle():
    objective = sample("saddle")
    center, q0 = objective.params["center"], objective.params["rotation"][:, 0]
    h = 1e-4
    curvature = [(objective.value(center + h * d) - 2 * objective.value(center)
                  + objective.value(center - h * d)) / h**2
                 for d in (q0, objective.params["rotation"][:, 1])]
    assert np.linalg.norm(objective.value_and_grad(center)[1]) < 1e-12
    assert curvature[0] < -1.0 and curvature[1] > 0.5


def test_splits_are_disjoint():
    split_seeds = [set(seeds(split, 1000)) for split in ("train", "validation", "test")]
    for i, a in enumerate(split_seeds):
        for b in split_seeds[i + 1:]:
            assert not a & b
    with pytest.raises(ValueError, match="split"):
        seeds("nope", 1)


def test_get_family_errors_name_the_problem():
    with pytest.raises(ValueError, match="quadratic"):
        get_family("nope")
    with pytest.raises(ValueError, match="'dim'"):
        get_family("quadratic", dim=0)
    with pytest.raises(ValueError, match="nope"):
        get_family("quadratic", nope=1)


@pytest.mark.parametrize("name", FAMILIES)
def test_invalid_parameters_are_named(name):
    field = "hidden" if name == "mlp_classifier" else "dim"
    with pytest.raises(ValueError, match=f"'{field}'"):
        get_family(name, **{field: 0})


def test_families_yaml_lists_every_family_with_its_defaults():
    config = yaml.safe_load(FAMILIES_YAML.read_text())
    assert sorted(config) == FAMILIES
    for name, params in config.items():
        assert dataclasses.asdict(get_family(name)) == params, name


@pytest.mark.parametrize("dtype", [tf.float64, tf.float32])
def test_batch_of_mixed_families_matches_each_objective(dtype):
    batch_objectives = [sample(name, seed) for seed in (0, 1) for name in FAMILIES]
    batch = ObjectiveBatch(batch_objectives, dtype)
    rng = np.random.default_rng(3)
    x = batch.initial_point() + 0.1 * rng.normal(size=batch.size)
    values, grad = batch.value_and_grad(x)
    rtol = 1e-12 if dtype == tf.float64 else 1e-3
    for i, objective in enumerate(batch_objectives):
        f, g = objective.value_and_grad(x[batch.offsets[i]:batch.offsets[i + 1]])
        np.testing.assert_allclose(values[i], f, rtol=rtol)
        np.testing.assert_allclose(grad[batch.offsets[i]:batch.offsets[i + 1]], g, rtol=rtol,
                                   atol=rtol * np.max(np.abs(g)))
