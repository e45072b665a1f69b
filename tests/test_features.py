"""The features contract: shapes, Adam equivalence of the zero action, bounds, robustness."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from rl_optimizer import features
from rl_optimizer.features import FeatureConfig
from rl_optimizer.policy import load_policy


def _zero_actor(observation):
    return tf.zeros(tf.shape(observation)[:-1], observation.dtype)


def test_zero_action_without_the_nominal_controller_is_keras_adam():
    config = FeatureConfig(learning_rate=0.05, epsilon=1e-12, nominal_gain=0.0)
    rng = np.random.default_rng(0)
    var = tf.Variable(rng.normal(size=7).astype(np.float32))
    adam = tf.keras.optimizers.Adam(0.05, epsilon=1e-12)
    x, state = var.numpy().copy(), features.init_state([7])
    for _ in range(20):
        g = rng.normal(size=7).astype(np.float32)
        adam.apply_gradients([(tf.constant(g), var)])
        update, state = features.step(_zero_actor, tf.constant(g), state, config)
        x = x + update.numpy()
    np.testing.assert_allclose(x, var.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(), (5,), (3, 4), (2, 3, 2)])
def test_any_shape(shape):
    g = tf.ones(shape)
    state = features.init_state(shape)
    obs = features.observation(g, state, FeatureConfig())
    assert obs.shape == (*shape, features.OBSERVATION_SIZE)
    update, new_state = features.step(_zero_actor, g, state, FeatureConfig())
    assert update.shape == shape
    assert all(s.shape == shape for s in new_state)


def test_pack_unpack_round_trip():
    state = features.State(*(tf.fill([3], float(i)) for i in range(features.STATE_SIZE)))
    packed = features.pack(state)
    assert packed.shape == (3, features.STATE_SIZE)
    for a, b in zip(features.unpack(packed), state):
        np.testing.assert_array_equal(a, b)


def test_observation_matches_step():
    """`observation` + `apply_action` (the environment's path) equals `step` (the optimizer's)."""
    config = FeatureConfig()
    rng = np.random.default_rng(1)
    state = features.init_state([6])
    actor = lambda obs: tf.tanh(tf.reduce_sum(obs, -1))  # noqa: E731
    for _ in range(5):
        g = tf.constant(rng.normal(size=6).astype(np.float32))
        action = actor(features.observation(g, state, config))
        split = features.apply_action(action, g, state, config)
        fused = features.step(actor, g, state, config)
        np.testing.assert_array_equal(split[0], fused[0])
        state = fused[1]


def test_update_is_bounded():
    config = FeatureConfig()
    state = features.init_state([4])
    g = tf.constant([1e30, -1e-30, 3.0, 0.0])
    for _ in range(100):
        update, state = features.step(lambda o: tf.ones(tf.shape(o)[:-1]), g, state, config)
        assert np.all(np.abs(update) <= config.max_update * (1 + 1e-6))
    assert np.all(state.log_lr <= config.log_lr_max)


def test_non_finite_gradient_leaves_coordinate_unchanged():
    config = FeatureConfig()
    state = features.State(*(tf.fill([3], 0.5) for _ in range(features.STATE_SIZE)))
    g = tf.constant([np.nan, np.inf, 1.0])
    obs = features.observation(g, state, config)
    assert np.all(np.isfinite(obs))
    update, new_state = features.step(lambda o: tf.zeros(tf.shape(o)[:-1]), g, state, config)
    np.testing.assert_array_equal(update[:2], [0.0, 0.0])
    for new, old in zip(new_state, state):
        np.testing.assert_array_equal(new[:2], old[:2])
    assert update[2] != 0.0


@pytest.mark.parametrize("keep", [True, False])
@pytest.mark.parametrize("config", ["shipped",
                                    FeatureConfig(center_action=True, learned_look_ahead=1.0)])
def test_keep_says_whether_the_step_is_taken_and_xla_takes_it_as_the_graph(config, keep):
    """`keep` False: no update and the state as it was; True: the step without `keep`. Under
    XLA the update is computed from the kept state: the same numbers, up to rounding (as a
    graph's are). "shipped": the shipped policy's feature config."""
    if config == "shipped":
        config = load_policy("default").feature_config
    rng = np.random.default_rng(3)
    shape = (70, 90)  # more coordinates than STATISTICS_SAMPLE: the statistics are sampled
    g = rng.normal(size=shape)
    # The last gradient near this one: a deterministic tensor, whose v̂ is shared and whose
    # step looks ahead (`determinism_gate`).
    state = features.State(*(tf.constant(x.astype(np.float32)) for x in (
        g + rng.normal(size=shape), rng.uniform(0.5, 2.0, shape), rng.normal(size=shape),
        g + 0.1 * rng.normal(size=shape), np.full(shape, 5.0))))
    g = tf.constant(g.astype(np.float32))
    weights = tf.constant(rng.normal(size=features.OBSERVATION_SIZE).astype(np.float32))
    actor = lambda obs: tf.tanh(tf.reduce_sum(obs * weights, -1))  # noqa: E731

    def take(jit_compile):
        return tf.function(lambda: features.step(actor, g, state, config, keep=tf.constant(keep)),
                           jit_compile=jit_compile)()

    expected = features.step(actor, g, state, config) if keep else (tf.zeros(shape), state)
    for result, tolerance in ((take(False), 1e-6), (take(True), 1e-5)):
        for got, want in zip(tf.nest.flatten(result), tf.nest.flatten(expected)):
            np.testing.assert_allclose(got, want, rtol=tolerance,
                                       atol=tolerance * np.max(np.abs(want)))


@pytest.mark.parametrize("config", [FeatureConfig(rms_sharing=0.5),
                                    FeatureConfig(rms_sharing=1.0),
                                    FeatureConfig(rms_sharing=1.0, nesterov=1.0,
                                                  gradient_memory=True)])
def test_non_finite_gradient_leaves_its_tensor_finite(config):
    """The options' tensor mean of v̂ skips a non-finite coordinate: the rest of its tensor
    still steps, by finite amounts."""
    g = tf.constant([np.nan, np.inf, 1.0, -2.0])
    update, state = features.step(_zero_actor, g, features.init_state([4]), config)
    np.testing.assert_array_equal(update[:2], [0.0, 0.0])
    assert np.all(np.isfinite(update)) and np.all(update[2:] != 0.0)
    assert all(np.all(np.isfinite(x)) for x in state)


def test_rms_sharing_mixes_v_with_its_tensors_mean_as_far_as_the_tensor_is_aligned():
    """s = p·|alignment|: a tensor whose momentum points along its gradient (alignment 1)
    divides by √((1 − p)·v̂ + p·mean v̂), each tensor (segment) by its own mean; where there is
    no momentum yet (alignment 0) the direction is Adam's."""
    beta1, beta2 = FeatureConfig().beta1, FeatureConfig().beta2
    g = np.array([3.0, -1.0, 0.5, 2.0, 4.0], np.float32)
    segments = features.Segments(tf.constant([0, 0, 0, 1, 1]), 2)
    aligned = features.State(tf.constant(g), tf.constant(g * g), tf.zeros(5), tf.zeros(5),
                             tf.fill([5], 9.0))  # m, v as if g had come before, t → 10

    def direction(p, state):
        config = FeatureConfig(nominal_gain=0.0, rms_sharing=p)
        update, _ = features.step(_zero_actor, tf.constant(g), state, config, segments=segments)
        return -update.numpy() / config.learning_rate

    m_hat, v_hat = g / (1 - beta1 ** 10), g * g / (1 - beta2 ** 10)
    means = np.repeat([np.mean(v_hat[:3]), np.mean(v_hat[3:])], [3, 2])
    np.testing.assert_allclose(direction(0.0, aligned), m_hat / np.sqrt(v_hat), rtol=1e-5)
    for p in (0.5, 1.0):
        np.testing.assert_allclose(direction(p, aligned),
                                   m_hat / np.sqrt((1 - p) * v_hat + p * means), rtol=1e-5)
    np.testing.assert_allclose(direction(1.0, features.init_state([5])), np.sign(g), rtol=1e-5)


def _three_spreads():
    """Three tensors (segments) whose v̂, at g·g after 10 steps, spread by 0.15, > 4 and 0.06:
    (g, segments, each tensor's slice, v̂, each tensor's ln(arithmetic / geometric mean v̂))."""
    g = np.array([1.0, -1.5, 2.0, 1.0, 30.0, -0.03, 0.5, 0.7], np.float32)
    segments = features.Segments(tf.constant([0, 0, 0, 1, 1, 1, 2, 2]), 3)
    v_hat = g * g / (1 - FeatureConfig().beta2 ** 10)
    ids = [slice(0, 3), slice(3, 6), slice(6, 8)]
    return g, segments, ids, v_hat, [np.log(v_hat[i].mean()) - np.log(v_hat[i]).mean()
                                     for i in ids]


def test_sharing_spread_shares_only_tensors_whose_v_spreads_little():
    """`sharing_spread` S: a tensor's share is scaled by clip(2·(1 − d/S), 0, 1), d = ln of
    its v̂'s arithmetic over geometric mean: full up to S/2, none from S, each tensor by its
    own spread."""
    g, segments, ids, v_hat, spread = _three_spreads()
    m_hat = g / (1 - FeatureConfig().beta1 ** 10)
    aligned = _state_at(g, g * g, 9.0)  # m, v as if g had come before, t → 10
    assert spread[0] < 0.5 and spread[1] > 4.0 and 0.03 < spread[2] < 0.1
    for limit in (1.0, 0.1, 6.0):
        config = FeatureConfig(nominal_gain=0.0, rms_sharing=1.0, sharing_spread=limit)
        update, _ = features.step(_zero_actor, tf.constant(g), aligned, config,
                                  segments=segments)
        expected = []
        for i, d in zip(ids, spread):
            share = np.clip(2.0 * (1.0 - d / limit), 0.0, 1.0)
            expected.append(m_hat[i] / np.sqrt((1 - share) * v_hat[i] + share * v_hat[i].mean()))
        np.testing.assert_allclose(-update.numpy() / config.learning_rate,
                                   np.concatenate(expected), rtol=1e-4)
    with pytest.raises(ValueError, match=r"^FeatureConfig\.sharing_spread: needs rms_sharing"):
        FeatureConfig(sharing_spread=4.0)


def test_spread_ceiling_bounds_the_step_where_v_spreads_not_the_kept_log_lr():
    """`spread_ceiling` C: each tensor's step is taken at log_lr ≤ log_lr_max − C·(1 − gate),
    the gate `sharing_spread`'s; the state keeps the log_lr it would have had."""
    g, segments, ids, _, spread = _three_spreads()
    state = _state_at(g, g * g, 9.0, log_lr=3.5)
    base = FeatureConfig(nominal_gain=0.0, rms_sharing=1.0, sharing_spread=0.2, log_lr_max=4.0)
    free, free_state = features.step(_zero_actor, tf.constant(g), state, base,
                                     segments=segments)
    for ceiling in (1.0, 3.0):
        config = dataclasses.replace(base, spread_ceiling=ceiling)
        update, new_state = features.step(_zero_actor, tf.constant(g), state, config,
                                          segments=segments)
        np.testing.assert_allclose(new_state.log_lr.numpy(), free_state.log_lr.numpy())
        bound = np.concatenate([np.full(i.stop - i.start, 4.0 - ceiling * (
            1 - np.clip(2.0 * (1.0 - d / 0.2), 0.0, 1.0))) for i, d in zip(ids, spread)])
        factor = np.exp(np.minimum(free_state.log_lr.numpy(), bound)
                        - free_state.log_lr.numpy())
        np.testing.assert_allclose(update.numpy(), free.numpy() * factor, rtol=1e-4)
        # The third tensor spreads by under half the limit (0.06 of 0.2) and is not bounded;
        # the second, by more than the limit, is; the first (0.15) between them, less.
        assert factor[6] == 1.0 and factor[3] < factor[0] <= 1.0 and factor[3] < 1.0
    with pytest.raises(ValueError, match=r"^FeatureConfig\.spread_ceiling: needs sharing_spread"):
        FeatureConfig(rms_sharing=1.0, spread_ceiling=3.0)


def test_nesterov_steps_part_of_the_way_to_the_look_ahead():
    """m̂ + p·(1−β1)·(g − m̂): at p = 1 Nesterov's look-ahead β1·m̂ + (1−β1)·g (QHAdam with
    ν = β1)."""
    g, m_old = np.array([3.0, -1.0, 0.5], np.float32), np.array([-1.0, 2.0, 0.5], np.float32)
    state = features.State(tf.constant(m_old), tf.constant(g * g), tf.zeros(3), tf.zeros(3),
                           tf.fill([3], 4.0))  # t → 5
    for p in (0.5, 1.0):
        config = FeatureConfig(nominal_gain=0.0, nesterov=p)
        beta1, beta2 = config.beta1, config.beta2
        update, _ = features.step(_zero_actor, tf.constant(g), state, config)
        m_hat = (beta1 * m_old + (1 - beta1) * g) / (1 - beta1 ** 5)
        v_hat = (beta2 * g * g + (1 - beta2) * g * g) / (1 - beta2 ** 5)
        nu = 1 - p * (1 - beta1)
        np.testing.assert_allclose(-update.numpy() / config.learning_rate,
                                   (nu * m_hat + (1 - nu) * g) / np.sqrt(v_hat), rtol=1e-5)


def test_learned_look_ahead_takes_its_weight_from_the_actions_tensor_mean():
    """s = p·(mean a + 1)/2 per tensor: (m̂ + s·(1−β1)·(g − m̂))/√v̂ (within the clip); a
    constant action is centred away from the step sizes (log_lr stays 0) but sets the
    look-ahead."""
    g = np.array([3.0, -1.0, 0.5, 2.0], np.float32)
    m_old = np.array([-1.0, 2.0, 0.5, 1.0], np.float32)
    state = features.State(tf.constant(m_old), tf.constant(g * g), tf.zeros(4), tf.zeros(4),
                           tf.fill([4], 4.0))  # t → 5
    segments = features.Segments(tf.constant([0, 0, 1, 1], tf.int32), 2)
    for p, a in ((1.0, 1.0), (0.5, 0.2), (1.0, -1.0)):
        config = FeatureConfig(nominal_gain=0.0, center_action=True, learned_look_ahead=p)
        beta1, beta2 = config.beta1, config.beta2
        update, new_state = features.step(lambda obs, a=a: tf.fill(tf.shape(obs)[:-1], a),
                                          tf.constant(g), state, config, segments=segments)
        np.testing.assert_array_equal(new_state.log_lr, np.zeros(4))
        m_hat = (beta1 * m_old + (1 - beta1) * g) / (1 - beta1 ** 5)
        rms = np.sqrt((beta2 * g * g + (1 - beta2) * g * g) / (1 - beta2 ** 5))
        s = p * (a + 1) / 2
        np.testing.assert_allclose(-update.numpy() / config.learning_rate,
                                   (m_hat + s * (1 - beta1) * (g - m_hat)) / rms, rtol=1e-5)


def test_learned_look_ahead_needs_a_centred_action():
    with pytest.raises(ValueError, match=r"^FeatureConfig\.learned_look_ahead: needs center_"):
        FeatureConfig(learned_look_ahead=1.0)


def test_gradient_memory_keeps_the_last_gradient_and_steers_deterministic_tensors_by_it():
    """The fourth state number becomes the gradient (kept where a gradient is non-finite),
    the fifth observation column g_{t−1}/√v̂; each tensor's alignment is a·|c| + c·(1 − |c|),
    c its cosine with the momentum, a with the last gradient."""
    config = FeatureConfig(gradient_memory=True)
    rng = np.random.default_rng(3)
    g = rng.normal(size=9).astype(np.float32)
    g[4] = np.nan
    m, last = rng.normal(size=9).astype(np.float32), rng.normal(size=9).astype(np.float32)
    m[:3] = g[:3]  # the first tensor's momentum nearly along its gradient: |c| near 1
    v = rng.uniform(0.5, 2.0, size=9).astype(np.float32)
    state = features.State(*(tf.constant(x) for x in (m, v, np.zeros(9, np.float32), last)),
                           tf.fill([9], 3.0))
    ids = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2])
    segments = features.Segments(tf.constant(ids, tf.int32), 3)
    obs = features.observation(tf.constant(g), state, config, segments).numpy()
    rms = np.sqrt((config.beta2 * v + (1 - config.beta2) * g ** 2)
                  / (1 - config.beta2 ** 4)) + config.epsilon
    for tensor in range(3):
        picked = (ids == tensor) & np.isfinite(g)
        c = _numpy_alignment(g, m, v, 3.0, config, picked)
        a = _numpy_alignment(g, last, v, 3.0, config, picked)
        column = obs[ids == tensor, features.FEATURE_NAMES.index("tensor_alignment")]
        np.testing.assert_allclose(column, a * abs(c) + c * (1 - abs(c)), rtol=1e-4)
    assert abs(_numpy_alignment(g, m, v, 3.0, config, ids == 0)) > 0.9
    np.testing.assert_allclose(obs[np.isfinite(g), 4],
                               np.clip(last / rms, -config.clip, config.clip)[np.isfinite(g)],
                               rtol=1e-5)
    _, new_state = features.step(_zero_actor, tf.constant(g), state, config, segments=segments)
    want = np.where(np.isfinite(g), g, last)
    np.testing.assert_array_equal(new_state.action.numpy(), want)


def _gated_step(g, last, config, segments=None, t=3.0):
    """One step from a state whose momentum is the last gradient, at t → t + 1."""
    n = g.size
    state = features.State(tf.constant(last), tf.constant(last * last), tf.zeros(n),
                           tf.constant(last), tf.fill([n], t))
    return features.step(_zero_actor, tf.constant(g), state, config, segments=segments)


def _orthogonal_to(g, rng):
    """A random vector orthogonal to `g` (unrelated to it, as minibatch noise is)."""
    noise = rng.normal(size=g.size).astype(np.float32)
    return noise - g * np.dot(g, noise) / np.dot(g, g)


def test_determinism_gate_reads_the_cosine_with_the_last_gradient():
    """w = 1 where the gradient repeats or reverses its last one (a deterministic tensor, at
    rest or oscillating), 0 where the two are unrelated (minibatch noise), and 0 for a tensor
    of one coordinate, whose cosine is ±1 by chance: with w = 0 the look-ahead and the sharing
    are off (the step is heavy-ball Adam's), with w = 1 both are on."""
    gated = dict(gradient_memory=True, determinism_gate=True, nominal_gain=0.0)
    on = FeatureConfig(**gated, nesterov=1.0, rms_sharing=1.0)
    off = FeatureConfig(**gated)
    ungated = FeatureConfig(gradient_memory=True, nominal_gain=0.0, nesterov=1.0)
    rng = np.random.default_rng(11)
    g = rng.normal(size=400).astype(np.float32)
    last = _orthogonal_to(g, rng)
    np.testing.assert_allclose(_gated_step(g, last, on)[0], _gated_step(g, last, off)[0],
                               rtol=1e-6)
    assert not np.allclose(_gated_step(g, last, ungated)[0], _gated_step(g, last, off)[0])
    for last in (g, -g):
        stepped = _gated_step(g, last.copy(), on)[0].numpy()
        assert not np.allclose(stepped, _gated_step(g, last.copy(), off)[0], rtol=1e-3)
        beta1, beta2 = on.beta1, on.beta2
        m_hat = (beta1 * last + (1 - beta1) * g) / (1 - beta1 ** 4)
        v_hat = (beta2 * last * last + (1 - beta2) * g * g) / (1 - beta2 ** 4)
        look_ahead = beta1 * m_hat + (1 - beta1) * g
        np.testing.assert_allclose(-stepped / on.learning_rate,
                                   np.clip(look_ahead / np.sqrt(np.mean(v_hat)), -5, 5),
                                   rtol=1e-4)
    one = np.array([2.0], np.float32)
    np.testing.assert_allclose(_gated_step(one, one.copy(), on)[0],
                               _gated_step(one, one.copy(), off)[0], rtol=1e-6)


def test_startup_boost_speeds_the_climb_where_the_gradient_held():
    """In the first startup_steps steps log_lr moves (1 + b·s) times as far, s = 1 where the
    gradient repeats its last one, 0 where the two are unrelated or reversed; after them, or
    with b = 0, it moves as without the option."""
    memory = dict(gradient_memory=True, nominal_gain=1.5)
    boosted = FeatureConfig(**memory, startup_boost=2.0)
    plain = FeatureConfig(**memory)
    rng = np.random.default_rng(5)
    g = rng.normal(size=300).astype(np.float32)
    orthogonal = _orthogonal_to(g, rng)

    def log_lr(last, config, t=3.0):
        return _gated_step(g, last, config, t=t)[1].log_lr.numpy()

    plain_rise = log_lr(g, plain)
    assert np.all(plain_rise > 0)
    np.testing.assert_allclose(log_lr(g, boosted), 3.0 * plain_rise, rtol=1e-5)
    for last in (orthogonal, -g):
        np.testing.assert_allclose(log_lr(last, boosted), log_lr(last, plain), rtol=1e-6)
    # Step 11 > startup_steps = 10: over.
    np.testing.assert_allclose(log_lr(g, boosted, t=10.0), log_lr(g, plain, t=10.0),
                               rtol=1e-6)


def test_startup_boost_without_gradient_memory_reads_the_momentum():
    """Without `gradient_memory` the gate is Adam's cosine with the momentum: boosted where
    the momentum is the gradient's direction, not where it is orthogonal."""
    boosted = FeatureConfig(nominal_gain=1.5, startup_boost=2.0)
    plain = FeatureConfig(nominal_gain=1.5)
    rng = np.random.default_rng(6)
    g = rng.normal(size=300).astype(np.float32)
    orthogonal = _orthogonal_to(g, rng)

    def log_lr(m, config):
        state = features.State(tf.constant(m), tf.constant(g * g), tf.zeros(300),
                               tf.zeros(300), tf.fill([300], 3.0))
        return features.step(_zero_actor, tf.constant(g), state, config)[1].log_lr.numpy()

    np.testing.assert_allclose(log_lr(g, boosted), 3.0 * log_lr(g, plain), rtol=1e-5)
    np.testing.assert_allclose(log_lr(orthogonal, boosted), log_lr(orthogonal, plain),
                               rtol=1e-6)


def test_start_log_lr_offsets_a_fresh_coordinate_only():
    """At t = 0 the step is the one from a state started at start_log_lr (the floor and the
    bounds read that start too); at t > 0 the offset is gone."""
    started = FeatureConfig(start_log_lr=-2.3, floor_alignment=0.8, floor_log_lr=-2.0)
    plain = FeatureConfig(floor_alignment=0.8, floor_log_lr=-2.0)
    rng = np.random.default_rng(8)
    g = tf.constant(rng.normal(size=50).astype(np.float32))
    fresh = features.init_state([50])
    update, state = features.step(_zero_actor, g, fresh, started)
    want, want_state = features.step(_zero_actor, g, fresh._replace(log_lr=fresh.log_lr - 2.3),
                                     plain)
    np.testing.assert_allclose(update, want, rtol=1e-6)
    np.testing.assert_allclose(state.log_lr, want_state.log_lr, rtol=1e-6)
    assert np.all(state.log_lr.numpy() < -2.1)  # the floor did not lift it to -2
    later = state._replace(t=tf.fill([50], 1.0))
    np.testing.assert_allclose(features.step(_zero_actor, g, later, started)[0],
                               features.step(_zero_actor, g, later, plain)[0], rtol=1e-6)


@pytest.mark.parametrize("field,value,match", [
    ("startup_high", 0.8, r"^FeatureConfig\.startup_high: must be above"),
    ("start_log_lr", -20.0, r"^FeatureConfig\.start_log_lr: must be within"),
])
def test_startup_boost_checks_its_config(field, value, match):
    kwargs = dict(gradient_memory=True, startup_boost=1.0)
    kwargs[field] = value
    with pytest.raises(ValueError, match=match):
        FeatureConfig(**kwargs)


@pytest.mark.parametrize("field,value,match", [
    ("gradient_memory", False, r"^FeatureConfig\.determinism_gate: needs gradient_memory"),
    ("determinism_high", 0.1, r"^FeatureConfig\.determinism_high: must be above"),
])
def test_determinism_gate_checks_its_config(field, value, match):
    kwargs = dict(gradient_memory=True, determinism_gate=True)
    kwargs[field] = value
    with pytest.raises(ValueError, match=match):
        FeatureConfig(**kwargs)


def test_zero_gradient_takes_no_step():
    update, _ = features.step(_zero_actor, tf.zeros([3]), features.init_state([3]),
                              FeatureConfig())
    np.testing.assert_array_equal(update, np.zeros(3))


def _log_lrs(gradients, config, segments=None):
    state = features.init_state(gradients[0].shape)
    for g in gradients:
        _, state = features.step(_zero_actor, tf.constant(g, tf.float32), state, config,
                                 segments=segments)
    return state.log_lr.numpy()


def test_nominal_controller_grows_steps_that_keep_their_direction():
    """Zero action: a steady gradient grows the step size; an alternating one shrinks it."""
    config = FeatureConfig()
    steady = [np.array([1.0, -2.0, 0.5])] * 10
    alternating = [np.array([1.0, -2.0, 0.5]) * (-1) ** t for t in range(10)]
    assert np.all(_log_lrs(steady, config) > 2.0)
    assert np.all(_log_lrs(alternating, config) < -1.0)


def test_blow_up_guard_cuts_steps_when_a_tensors_gradients_surge():
    """A steady direction grows the step size; when the gradients grow 10x at once the guard
    cuts it that very step (the alignment alone still says grow), and it stays out of the way
    while they do not."""
    base = np.array([1.0, -2.0, 0.5, 1.5])
    steady = [base] * 8
    surge = steady + [10 * base]
    plain, guarded = FeatureConfig(), FeatureConfig(surge_gain=3.0, surge_threshold=2.0)
    np.testing.assert_array_equal(_log_lrs(steady, guarded), _log_lrs(steady, plain))
    assert np.all(_log_lrs(surge, plain) > _log_lrs(steady, plain))
    # The surge step: alignment 1 (increment +1 without the guard), and g²/v̂ = r on every
    # coordinate, so the guard takes 3·ln(r / 2) more, beyond the ±1 bound.
    beta2 = guarded.beta2
    v = (1 - beta2) * (sum(beta2 ** (9 - k) for k in range(1, 9)) + 100.0)
    r = 100.0 / (v / (1 - beta2 ** 9))
    assert np.log(r / 2) > 1.0
    np.testing.assert_allclose(
        _log_lrs(surge, guarded),
        _log_lrs(steady, guarded) + guarded.increment * (1 - 3.0 * np.log(r / 2)), rtol=1e-4)


def test_surge_warmup_raises_the_guards_threshold_in_the_first_steps():
    """Gradients that grow 10x at step 9 (g²/v̂ = r ≈ 8 on every coordinate): within
    surge_warmup the guard takes 3·ln(r / surge_warmup_threshold), none below that threshold;
    after the warm-up it cuts as it does without one."""
    base = np.array([1.0, -2.0, 0.5, 1.5])
    steady, surge = [base] * 8, [base] * 8 + [10 * base]
    guarded = FeatureConfig(surge_gain=3.0, surge_threshold=2.0)
    beta2 = guarded.beta2
    r = 100.0 / ((1 - beta2) * (sum(beta2 ** (9 - k) for k in range(1, 9)) + 100.0)
                 / (1 - beta2 ** 9))
    assert 6.0 < r < 10.0
    warm = dataclasses.replace(guarded, surge_warmup=9.0, surge_warmup_threshold=6.0)
    np.testing.assert_allclose(
        _log_lrs(surge, warm),
        _log_lrs(steady, guarded) + guarded.increment * (1 - 3.0 * np.log(r / 6.0)), rtol=1e-4)
    np.testing.assert_array_equal(
        _log_lrs(surge, dataclasses.replace(warm, surge_warmup_threshold=10.0)),
        _log_lrs(surge, FeatureConfig()))
    np.testing.assert_array_equal(
        _log_lrs(surge, dataclasses.replace(warm, surge_warmup=8.0)), _log_lrs(surge, guarded))


def test_anchor_pulls_annealed_step_sizes_back_up():
    """Below anchor_log_lr, log_lr rises by anchor_rate times its distance to it each step;
    at or above it, the anchor does nothing."""
    config = FeatureConfig(nominal_gain=0.0, anchor_rate=0.1, anchor_log_lr=-1.0)
    state = features.init_state([3])._replace(log_lr=tf.constant([-3.0, -1.0, 0.5]))
    _, state = features.step(_zero_actor, tf.constant([1.0, 2.0, 3.0]), state, config)
    np.testing.assert_allclose(state.log_lr, [-2.8, -1.0, 0.5], rtol=1e-6)
    # Against the nominal controller: alternating gradients anneal the step sizes, far less
    # with the anchor.
    alternating = [np.array([1.0, -2.0, 0.5]) * (-1) ** t for t in range(60)]
    free = _log_lrs(alternating, FeatureConfig())
    anchored = _log_lrs(alternating, FeatureConfig(anchor_rate=0.1, anchor_log_lr=-1.0))
    assert np.all(free < -8.0) and np.all(anchored > -5.0)


def test_noise_floor_holds_step_sizes_that_only_noise_anneals():
    """Gradients with negatively correlated noise (alignment -0.1 on average, never below
    -0.4) anneal the nominal controller's step sizes to log_lr_min; the noise floor holds them
    at floor_log_lr. An overshoot (alternating gradients, alignment -1) still goes below it."""
    xi = np.random.default_rng(0).normal(size=(101, 200))
    noise = [xi[t + 1] - 0.2 * xi[t] for t in range(100)]
    floored = FeatureConfig(floor_alignment=0.5, floor_log_lr=-1.0)
    assert np.all(_log_lrs(noise, FeatureConfig()) < -8.0)
    np.testing.assert_allclose(_log_lrs(noise, floored), -1.0)
    alternating = [np.array([1.0, -2.0, 0.5]) * (-1) ** t for t in range(40)]
    assert np.all(_log_lrs(alternating, floored) == floored.log_lr_min)
    # Coming from below (an overshoot took it there), the floor only stops it falling further.
    state = features.init_state([200])._replace(log_lr=tf.fill([200], -3.0))
    for g in noise[:20]:
        _, state = features.step(_zero_actor, tf.constant(g, tf.float32), state, floored)
    assert np.all(state.log_lr.numpy() >= -3.0)


def test_alignment_is_per_tensor():
    """Segments: each tensor's step size follows its own alignment, not its neighbour's."""
    gradients = [np.array([1.0, 2.0, (-1.0) ** t, -(-1.0) ** t], np.float32) for t in range(8)]
    segments = features.Segments(tf.constant([0, 0, 1, 1]), 2)
    log_lr = _log_lrs(gradients, FeatureConfig(), segments)
    assert log_lr[0] == log_lr[1] > 0 > log_lr[2] == log_lr[3]


def test_centered_action_moves_step_sizes_within_a_tensor_only():
    """center_action: an action constant over a tensor changes nothing; one that differs
    within a tensor moves its coordinates apart, leaving the tensor's mean log_lr where the
    nominal controller put it, tensor by tensor."""
    rng = np.random.default_rng(4)
    gradients = [rng.normal(size=6).astype(np.float32) for _ in range(5)]
    segments = features.Segments(tf.constant([0, 0, 0, 1, 1, 1]), 2)
    config = FeatureConfig(center_action=True)
    nominal = _log_lrs(gradients, config, segments)

    def run(actor, config):
        state = features.init_state([6])
        for g in gradients:
            _, state = features.step(actor, tf.constant(g), state, config, segments=segments)
        return state.log_lr.numpy()

    def constant(observation):
        return tf.fill(tf.shape(observation)[:-1], -0.5)

    def spread(observation):  # mean 0 within each tensor
        return tf.constant([0.4, 0.0, -0.4, 0.2, 0.2, -0.4])

    np.testing.assert_allclose(run(constant, config), nominal, atol=1e-6)
    assert np.all(run(constant, FeatureConfig()) < nominal - 0.1)  # uncentered: it shrinks
    assert not np.allclose(run(spread, config), nominal, atol=1e-3)
    # First step: zero momentum, so zero alignment and no clipping; the centred spread moves
    # coordinates apart and each tensor's mean log_lr stays at the nominal 0.
    _, state = features.step(spread, tf.constant(gradients[0]), features.init_state([6]),
                             config, segments=segments)
    log_lr = state.log_lr.numpy()
    np.testing.assert_allclose(log_lr, 0.3 * np.array([0.4, 0.0, -0.4, 0.2, 0.2, -0.4]),
                               atol=1e-6)  # the spread has mean 0 in each tensor already
    np.testing.assert_allclose([log_lr[:3].mean(), log_lr[3:].mean()], [0.0, 0.0], atol=1e-6)


def test_max_spread_bounds_step_sizes_around_their_tensor_mean():
    """A policy that keeps pushing coordinates of one tensor apart: without max_spread their
    log step sizes drift apart step after step; with it they stay within ±max_spread of their
    tensor's mean (taken before the bound), tensor by tensor."""
    rng = np.random.default_rng(5)
    segments = features.Segments(tf.constant([0, 0, 0, 1, 1, 1]), 2)

    def apart(observation):
        return tf.constant([1.0, 0.0, -1.0, 1.0, -1.0, 0.0])

    def run(config):
        state = features.init_state([6])
        for _ in range(30):
            g = tf.constant(rng.normal(size=6).astype(np.float32))
            _, state = features.step(apart, g, state, config, segments=segments)
        return state.log_lr.numpy()

    free = run(FeatureConfig(center_action=True))
    assert free[0] - free[2] > 6.0
    bounded = run(FeatureConfig(center_action=True, max_spread=1.5))
    for tensor in (bounded[:3], bounded[3:]):  # all within ±1.5 of one centre
        assert tensor.max() - tensor.min() <= 2 * 1.5 + 1e-5
    assert bounded[0] - bounded[2] > 2.0  # the policy still moves them apart, up to the bound


def test_scale_free():
    """Gradients scaled by any power of ten give the same observations and step sizes."""
    rng = np.random.default_rng(3)
    gradients = [rng.normal(size=5).astype(np.float32) for _ in range(6)]
    config = FeatureConfig()
    states = [features.init_state([5])] * 2
    for g in gradients:
        obs = [features.observation(tf.constant(g * c), s, config)
               for c, s in zip((1.0, 1e4), states)]
        np.testing.assert_allclose(obs[0], obs[1], rtol=1e-4, atol=1e-5)
        states = [features.step(_zero_actor, tf.constant(g * c), s, config)[1]
                  for c, s in zip((1.0, 1e4), states)]
    np.testing.assert_allclose(states[0].log_lr, states[1].log_lr, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("field,value", [("beta1", 1.0), ("learning_rate", 0.0),
                                         ("log_lr_min", 0.0), ("clip", -1.0),
                                         ("increment", 0.0), ("nominal_gain", -1.0),
                                         ("max_spread", -1.0), ("surge_gain", -1.0),
                                         ("surge_threshold", 1.0), ("surge_warmup", -1.0),
                                         ("surge_warmup_threshold", 1.0), ("anchor_rate", 1.5),
                                         ("anchor_log_lr", -20.0), ("anchor_log_lr", 0.5),
                                         ("floor_alignment", -0.1), ("floor_alignment", 1.5),
                                         ("floor_log_lr", 0.5), ("floor_log_lr", -20.0),
                                         ("rms_sharing", 1.5), ("nesterov", 1.5),
                                         ("sharing_spread", -1.0), ("spread_ceiling", -1.0),
                                         ("learned_look_ahead", 1.5)])
def test_bad_config_names_field(field, value):
    with pytest.raises(ValueError, match=rf"^FeatureConfig\.{field}: must be "):
        FeatureConfig(**{field: value})


@pytest.mark.parametrize("field", ["log_lr_min", "log_lr_max", "nominal_gain", "clip"])
def test_non_finite_config_values_are_refused(field):
    for value in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match=rf"^FeatureConfig\.{field}: must be "):
            FeatureConfig(**{field: value})


def _state_at(m, v, t, log_lr=0.0):
    """A state with momentum m and squared-gradient average v after t steps (log_lr as given,
    the last action 0): what `_numpy_alignment` takes."""
    return features.State(*(tf.constant(x, tf.float32) for x in (
        m, v, np.full_like(m, log_lr), np.zeros_like(m), np.full_like(m, t))))


def _numpy_alignment(g, m, v, t, config, picked):
    v_new = config.beta2 * v + (1 - config.beta2) * g ** 2
    rms = np.sqrt(v_new / (1 - config.beta2 ** (t + 1))) + config.epsilon
    a, b = (g / rms)[picked], (m / rms)[picked]
    return np.dot(a, b) / np.sqrt(np.dot(a, a) * np.dot(b, b))


def test_preconditioned_cosine_is_the_alignments_cosine_per_segment():
    """Each coordinate gets its segment's cosine of g/√v̂ with other/√v̂ (this step's v̂):
    with the momentum, the observation's tensor alignment; under any option the same."""
    rng = np.random.default_rng(8)
    g, m, last = (rng.normal(size=10) for _ in range(3))
    v = rng.uniform(0.5, 2.0, size=10)
    state = _state_at(m, v, 3.0)
    segments = features.Segments(tf.constant([0] * 4 + [1] * 6), 2)
    config = FeatureConfig()
    gated = FeatureConfig(gradient_memory=True, determinism_gate=True, surge_gain=3.0,
                          startup_boost=2.0)
    for other in (m, last):
        want = [_numpy_alignment(g, other, v, 3.0, config, picked)
                for picked in (slice(0, 4), slice(4, 10))]
        for c in (config, gated):
            got = features.preconditioned_cosine(tf.constant(g, tf.float32),
                                                 tf.constant(other, tf.float32), state, c,
                                                 segments)
            np.testing.assert_allclose(got, np.repeat(want, [4, 6]), rtol=1e-5)
    obs = features.observation(tf.constant(g, tf.float32), state, config, segments=segments)
    np.testing.assert_allclose(
        obs[:, features.FEATURE_NAMES.index("tensor_alignment")],
        features.preconditioned_cosine(tf.constant(g, tf.float32), tf.constant(m, tf.float32),
                                       state, config, segments), rtol=1e-6)


def test_large_tensors_statistics_use_a_strided_sample():
    """A tensor over STATISTICS_SAMPLE coordinates: its alignment is the cosine over the
    coordinates at multiples of ⌈size / 4096⌉ (row-major), not over all of them."""
    rng = np.random.default_rng(6)
    shape, config = (90, 100), FeatureConfig()
    stride = -(-9000 // features.STATISTICS_SAMPLE)
    g, m = rng.normal(size=shape), rng.normal(size=shape)
    v = rng.uniform(0.5, 2.0, size=shape)
    # Make the sampled coordinates disagree with the others: the two cosines differ in sign.
    picked = np.arange(9000) % stride == 0
    m.reshape(-1)[picked] = g.reshape(-1)[picked]
    m.reshape(-1)[~picked] = -g.reshape(-1)[~picked]
    state = _state_at(m, v, 3.0)
    obs = features.observation(tf.constant(g, tf.float32), state, config)
    alignment = obs[..., features.FEATURE_NAMES.index("tensor_alignment")].numpy()
    want = _numpy_alignment(g.reshape(-1), m.reshape(-1), v.reshape(-1), 3.0, config, picked)
    assert want > 0.9 and _numpy_alignment(g.reshape(-1), m.reshape(-1), v.reshape(-1), 3.0,
                                           config, slice(None)) < 0
    np.testing.assert_allclose(alignment, want, rtol=1e-4)


@pytest.mark.parametrize("config", [
    FeatureConfig(center_action=True),
    FeatureConfig(center_action=True, max_spread=0.5),
    FeatureConfig(center_action=True, max_spread=0.5, surge_gain=3.0, surge_threshold=1.5,
                  anchor_rate=0.05, anchor_log_lr=-0.5, floor_alignment=0.3, floor_log_lr=-1.0),
    FeatureConfig(center_action=True, rms_sharing=0.5),
    FeatureConfig(center_action=True, rms_sharing=1.0, nesterov=1.0, gradient_memory=True),
    FeatureConfig(center_action=True, rms_sharing=1.0, nesterov=1.0, gradient_memory=True,
                  determinism_gate=True),
    FeatureConfig(center_action=True, rms_sharing=1.0, learned_look_ahead=1.0,
                  gradient_memory=True),
    FeatureConfig(center_action=True, max_spread=0.5, rms_sharing=0.5, nesterov=1.0,
                  gradient_memory=True, determinism_gate=True, startup_boost=2.0),
    FeatureConfig(center_action=True, rms_sharing=1.0, sharing_spread=0.3, nesterov=1.0,
                  gradient_memory=True, determinism_gate=True),
    FeatureConfig(center_action=True, rms_sharing=1.0, sharing_spread=0.3, spread_ceiling=3.0,
                  log_lr_max=2.0),
    FeatureConfig(center_action=True, max_spread=0.5, surge_gain=3.0, surge_threshold=1.5,
                  surge_warmup=3.0, start_log_lr=-1.0)])
def test_sampled_statistics_agree_across_paths(config):
    """One large tensor stepped alone (the Keras path: sliced sample, actor recomputed on it),
    as a segment beside a small one (the serving and environment path: sampled by weights),
    and by observation + apply_action (the environment's split path): the same numbers."""
    rng = np.random.default_rng(7)
    shape = (70, 80)  # 5600 coordinates: stride 2
    actor = lambda obs: tf.tanh(tf.reduce_sum(obs * [0.3, -0.2, 0.5, 0.1, 0.4, -0.3], -1))  # noqa: E731
    alone = features.init_state(shape)
    together = features.init_state([5600 + 7])
    segments = features.Segments(tf.constant([1] * 7 + [0] * 5600), 2)
    held = rng.normal(size=shape)
    for step in range(6):
        # Growing gradients, so that the blow-up guard acts where it is on; where
        # startup_boost is, mostly the same direction each step, so that it boosts.
        g = rng.normal(size=shape) * (0.05 if config.startup_boost else 1.0)
        g = g + (held if config.startup_boost else 0.0)
        g = (g * 1.6 ** step).astype(np.float32)
        small = rng.normal(size=7).astype(np.float32)
        update, alone_next = features.step(actor, tf.constant(g), alone, config)
        obs = features.observation(tf.constant(g), alone, config)
        split, _ = features.apply_action(actor(obs), tf.constant(g), alone, config)
        joint, together = features.step(actor, tf.constant(np.concatenate([small, g.ravel()])),
                                        together, config, segments=segments)
        np.testing.assert_allclose(split, update, rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(joint[7:], update.numpy().ravel(), rtol=1e-5, atol=1e-9)
        np.testing.assert_allclose(together.log_lr[7:], alone_next.log_lr.numpy().ravel(),
                                   rtol=1e-5, atol=1e-6)
        alone = alone_next
    if config.startup_boost:
        # Boosted: more than six unboosted steps' largest rise (the held gradient leaves the
        # actor less to spread).
        assert np.mean(alone.log_lr.numpy()) > 6 * config.increment
        assert np.ptp(alone.log_lr.numpy()) > 0.03
    else:
        assert np.ptp(alone.log_lr.numpy()) > 0.1  # the actor did spread the step sizes
