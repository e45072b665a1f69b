"""LearnedOptimizer: the policy as a tf.keras optimizer (issue 5)."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from rl_optimizer import features
from rl_optimizer.keras_optimizer import LearnedOptimizer
from rl_optimizer.monitor import OptimizerMonitor
from rl_optimizer.policy import LearnedPolicy, load_policy


def _tame_policy() -> LearnedPolicy:
    """A random actor with small actions: stable training, so "the loss decreases" is a fact."""
    raw = LearnedPolicy.random(seed=0)
    kernels = [k.numpy() for k in raw.kernels]
    kernels[-1] = kernels[-1] * 0.1
    return LearnedPolicy(kernels, [b.numpy() for b in raw.biases], raw.feature_config)


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype(np.float32)
    return x, (x @ rng.normal(size=(8, 1))).astype(np.float32)


def _model(seed=0, dtype=None):
    tf.keras.utils.set_random_seed(seed)
    return tf.keras.Sequential([tf.keras.Input((8,)),
                                tf.keras.layers.Dense(16, activation="relu", dtype=dtype),
                                tf.keras.layers.Dense(1, dtype="float32")])


def _fit(optimizer, jit_compile=False, epochs=3, model=None):
    model = model or _model()
    model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    x, y = _data()
    history = model.fit(x, y, batch_size=16, epochs=epochs, verbose=0)
    return model, history.history["loss"]


def _gradients(steps, shape=(3, 4), seed=0):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=shape).astype(np.float32)) for _ in range(steps)]


def test_config_round_trips_without_the_export(exported_policy, tmp_path):
    path = shutil.copytree(exported_policy, tmp_path / "1")
    optimizer = LearnedOptimizer(str(path))
    shutil.rmtree(path)
    config = json.loads(json.dumps(optimizer.get_config()))
    restored = LearnedOptimizer.from_config(config)
    assert restored.get_config() == config
    for a, b in zip(optimizer.policy.kernels + optimizer.policy.biases,
                    restored.policy.kernels + restored.policy.biases):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert restored.policy.feature_config == optimizer.policy.feature_config
    again = tf.keras.optimizers.deserialize(tf.keras.optimizers.serialize(optimizer))
    assert isinstance(again, LearnedOptimizer)


@pytest.mark.parametrize("jit_compile", [False, True])
@pytest.mark.parametrize("graph", [False, True])
def test_updates_are_features_step(exported_policy, jit_compile, graph):
    """The env's path (features.step with the policy's actor) and the optimizer agree."""
    policy = load_policy(exported_policy)
    optimizer = LearnedOptimizer(policy, jit_compile=jit_compile)
    # Two variables of one shape: each must keep its own state.
    a, b = tf.Variable(tf.zeros([3, 4])), tf.Variable(tf.ones([3, 4]))
    apply = optimizer.apply_gradients
    if graph:
        apply = tf.function(apply)
    state_a = state_b = features.init_state([3, 4])
    for g in _gradients(4):
        before = a.numpy(), b.numpy()
        apply([(g, a), (-2 * g, b)])
        expected_a, state_a = features.step(policy.actor, g, state_a, policy.feature_config)
        expected_b, state_b = features.step(policy.actor, -2 * g, state_b,
                                            policy.feature_config)
        for var, expected, old in ((a, expected_a, before[0]), (b, expected_b, before[1])):
            if jit_compile or graph:  # XLA / grappler may fuse ops: round-off, not a new rule
                np.testing.assert_allclose(var.numpy(), old + expected, rtol=1e-6, atol=1e-7)
            else:  # param += update, bit for bit
                np.testing.assert_array_equal(var.numpy(), old + expected.numpy())
    slots = optimizer._slots[optimizer._index_dict[optimizer._var_key(a)]]
    for slot, expected in zip(slots, state_a):  # m, v, log_lr, action (t: optimizer's count)
        np.testing.assert_allclose(slot.numpy(), expected, rtol=1e-5 if jit_compile or graph
                                   else 0, atol=1e-8 if jit_compile or graph else 0)


def test_four_slots_per_parameter(exported_policy):
    model, _ = _fit(LearnedOptimizer(exported_policy), epochs=1)
    parameters = model.count_params()
    optimizer = model.optimizer
    slot_size = sum(int(np.prod(v.shape)) for slots in optimizer._slots for v in slots)
    # m, v, log_lr, action; the step count t is the optimizer's
    assert slot_size == (features.STATE_SIZE - 1) * parameters
    # Besides the slots: iterations, skipped_steps and the statistics vector.
    assert len(optimizer.variables) == 3 + 4 * len(model.trainable_variables)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_decreases_the_loss(jit_compile):
    _, losses = _fit(LearnedOptimizer(_tame_policy()), jit_compile=jit_compile, epochs=4)
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]


def test_saved_model_reloads_optimizer_and_slots(exported_policy, tmp_path):
    model, _ = _fit(LearnedOptimizer(exported_policy), epochs=1)
    model.save(tmp_path / "m.keras")
    restored = tf.keras.models.load_model(tmp_path / "m.keras")
    assert isinstance(restored.optimizer, LearnedOptimizer)
    assert len(restored.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(model.optimizer.variables, restored.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    restored.fit(*_data(), batch_size=16, epochs=1, verbose=0)  # and keeps training


def test_checkpoint_restores_slots(exported_policy, tmp_path):
    model, _ = _fit(LearnedOptimizer(exported_policy), epochs=1)
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).save(tmp_path / "ckpt")
    fresh = _model(seed=1)
    fresh.compile(optimizer=LearnedOptimizer(exported_policy), loss="mse")
    fresh.optimizer.build(fresh.trainable_variables)
    tf.train.Checkpoint(model=fresh, optimizer=fresh.optimizer).restore(path).assert_consumed()
    for a, b in zip(model.optimizer.variables, fresh.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_sparse_gradient_updates_only_touched_rows(exported_policy):
    policy = load_policy(exported_policy)
    optimizer = LearnedOptimizer(policy)
    table = tf.Variable(tf.ones([6, 2]))
    values = tf.constant([[1.0, -2.0], [0.5, 0.5], [3.0, 1.0]])
    optimizer.apply_gradients([(tf.IndexedSlices(values, tf.constant([4, 1, 4])), table)])
    # Duplicate rows are summed first: row 4's gradient is [4, -1].
    expected, _ = features.step(policy.actor, tf.constant([[0.5, 0.5], [4.0, -1.0]]),
                                features.init_state([2, 2]), policy.feature_config)
    np.testing.assert_array_equal(table.numpy()[[1, 4]], 1.0 + expected.numpy())
    np.testing.assert_array_equal(table.numpy()[[0, 2, 3, 5]], 1.0)
    for slot in optimizer._slots[0]:
        np.testing.assert_array_equal(slot.numpy()[[0, 2, 3, 5]], 0.0)


def test_embedding_model_trains():
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((3,), dtype="int32"),
                                 tf.keras.layers.Embedding(50, 4),
                                 tf.keras.layers.GlobalAveragePooling1D(),
                                 tf.keras.layers.Dense(1)])
    model.compile(optimizer=LearnedOptimizer(_tame_policy()), loss="mse")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 10, (64, 3)).astype(np.int32)  # rows 10..49 are never touched
    y = x.sum(axis=1, keepdims=True).astype(np.float32) / 10
    before = model.layers[0].embeddings.numpy()
    losses = model.fit(x, y, batch_size=16, epochs=4, verbose=0).history["loss"]
    assert losses[-1] < losses[0]
    np.testing.assert_array_equal(model.layers[0].embeddings.numpy()[10:], before[10:])


@pytest.mark.parametrize("options", [{}, {"rms_sharing": 1.0},
                                     {"rms_sharing": 1.0, "nesterov": 1.0,
                                      "gradient_memory": True},
                                     {"rms_sharing": 1.0, "nesterov": 1.0,
                                      "gradient_memory": True, "determinism_gate": True},
                                     {"rms_sharing": 1.0, "learned_look_ahead": 1.0,
                                      "gradient_memory": True},
                                     {"rms_sharing": 0.5, "nesterov": 1.0,
                                      "gradient_memory": True, "determinism_gate": True,
                                      "startup_boost": 2.0},
                                     {"rms_sharing": 1.0, "sharing_spread": 0.2},
                                     {"rms_sharing": 1.0, "sharing_spread": 0.2,
                                      "spread_ceiling": 3.0},
                                     {"start_log_lr": -2.3, "startup_boost": 4.0},
                                     {"start_log_lr": -2.3, "startup_boost": 4.0,
                                      "surge_warmup": 2.0}])
def test_embedding_model_under_jit_compile_steps_as_without(options):
    """A model compiled with jit_compile=True: the sparse rows' count is known only when XLA
    runs, so their statistics' sample is taken by a mask, not a stride; the updates match
    the uncompiled model's (here 64 x 20 rows of 8: a sample of every third coordinate),
    with the tensor's mean v̂ of `rms_sharing`, the last gradient's alignment of
    `gradient_memory`, the count of `determinism_gate`'s chance level and the sampled step
    count of `startup_boost` (with `max_spread`) and `surge_warmup` too."""
    shipped = load_policy("default")
    policy = LearnedPolicy([k.numpy() for k in shipped.kernels],
                           [b.numpy() for b in shipped.biases],
                           dataclasses.replace(shipped.feature_config, **options))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 300, (64, 20)).astype(np.int32)
    y = (x[:, :1] % 7).astype(np.float32)
    weights = {}
    for jit in (False, True):
        tf.keras.utils.set_random_seed(0)
        model = tf.keras.Sequential([tf.keras.Input((20,), dtype="int32"),
                                     tf.keras.layers.Embedding(300, 8),
                                     tf.keras.layers.GlobalAveragePooling1D(),
                                     tf.keras.layers.Dense(1)])
        model.compile(optimizer=LearnedOptimizer(policy), loss="mse", jit_compile=jit)
        model.fit(x, y, batch_size=64, epochs=3, shuffle=False, verbose=0)
        weights[jit] = model.get_weights()
    # XLA's fused sums differ in the last bits (the embedding's rows by ~2e-4 relative in
    # every config); `startup_boost`'s larger first steps carry that into the dense bias.
    rtol = 3e-4 if options.get("startup_boost") else 1e-4
    for compiled, plain in zip(weights[True], weights[False]):
        np.testing.assert_allclose(compiled, plain, rtol=rtol, atol=1e-6)


def _custom_sparse_steps(jit_compile: bool, indices, target, steps: int = 5):
    """A train step of one's own, compiled with XLA or not, on an embedding-like table."""
    table = tf.Variable(tf.random.stateless_normal([40, 4], seed=[0, 1]))
    w = tf.Variable(tf.fill([4, 1], 0.1))
    optimizer = LearnedOptimizer()

    @tf.function(jit_compile=jit_compile)
    def step(indices):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean((tf.gather(table, indices) @ w - target) ** 2)
        optimizer.apply_gradients(zip(tape.gradient(loss, [table, w]), [table, w]))
        return loss

    return [float(step(indices)) for _ in range(steps)], table.numpy()


def test_sparse_gradient_in_a_custom_jit_function():
    """A custom train step compiled with jit_compile=True: with the indices an argument it
    steps as uncompiled; with them a constant of the function, a clear error."""
    rng = np.random.default_rng(0)
    indices = tf.constant(rng.integers(0, 40, 64), tf.int32)  # with duplicates
    target = tf.constant(rng.normal(size=(64, 1)), tf.float32)
    losses, compiled = _custom_sparse_steps(True, indices, target)
    _, plain = _custom_sparse_steps(False, indices, target)
    assert losses[-1] < losses[0]
    np.testing.assert_allclose(compiled, plain, rtol=1e-4, atol=1e-6)

    table = tf.Variable(tf.zeros([40, 4]))

    @tf.function(jit_compile=True)
    def constant_indices():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.gather(table, indices))
        LearnedOptimizer().apply_gradients([(tape.gradient(loss, table), table)])

    with pytest.raises(ValueError, match="pass the indices to the function as an argument"):
        constant_indices()


_MIRRORED = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from rl_optimizer.keras_optimizer import LearnedOptimizer

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = (x @ rng.normal(size=(8, 1))).astype(np.float32)

    def train(strategy):
        with strategy.scope():
            tf.keras.utils.set_random_seed(0)
            model = tf.keras.Sequential([tf.keras.Input((8,)), tf.keras.layers.Dense(4),
                                         tf.keras.layers.Dense(1)])
            model.compile(optimizer=LearnedOptimizer(sys.argv[1]), loss="mse")
        model.fit(x, y, batch_size=16, epochs=2, verbose=0, shuffle=False)
        return model

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    mirrored, single = train(strategy), train(tf.distribute.get_strategy())
    optimizer = mirrored.optimizer
    for variable in optimizer.variables + mirrored.trainable_variables:
        replicas = [v.numpy() for v in strategy.experimental_local_results(variable)]
        assert len(replicas) == 2 and np.array_equal(*replicas), variable.name
    for a, b in zip(mirrored.get_weights(), single.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert optimizer.skipped_steps.numpy() == 0 and optimizer.iterations.numpy() == 8
    print("ok")
""")


def test_mirrored_strategy_matches_one_device(exported_policy):
    # Logical devices must be set before TensorFlow initialises: a process of its own.
    result = subprocess.run([sys.executable, "-c", _MIRRORED, exported_policy],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]


def test_mixed_float16_through_loss_scale_optimizer():
    tf.keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model, losses = _fit(LearnedOptimizer(_tame_policy()), epochs=3, model=_model())
    finally:
        tf.keras.mixed_precision.set_global_policy("float32")
    assert isinstance(model.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
    inner = model.optimizer.inner_optimizer
    assert isinstance(inner, LearnedOptimizer) and inner.skipped_steps.numpy() == 0
    assert all(slot.dtype == tf.float32 for slots in inner._slots for slot in slots)
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_non_finite_gradient_skips_variable_and_is_counted(exported_policy, jit_compile):
    optimizer = LearnedOptimizer(exported_policy, jit_compile=jit_compile)
    a, b = tf.Variable(tf.zeros([3])), tf.Variable(tf.zeros([2]))
    optimizer.apply_gradients([(tf.constant([1.0, 2.0, 3.0]), a), (tf.ones([2]), b)])
    before = [v.numpy() for v in optimizer.variables[3:]] + [a.numpy(), b.numpy()]
    optimizer.apply_gradients([(tf.constant([1.0, np.nan, 3.0]), a), (tf.ones([2]), b)])
    optimizer.apply_gradients([(tf.constant([np.inf, 1.0, 1.0]), a), (tf.ones([2]), b)])
    assert optimizer.skipped_steps.numpy() == 2
    slots_a = [v.numpy() for v in optimizer._slots[0]]
    k = len(slots_a)  # slots per variable
    for old, new in zip(before[:k] + [before[2 * k]], slots_a + [a.numpy()]):
        np.testing.assert_array_equal(old, new)  # a and its state: untouched
    assert not np.array_equal(before[2 * k + 1], b.numpy())  # b: stepped as usual
    statistics = optimizer.last_step_statistics()
    assert statistics["skipped_steps"] == 2 and np.isfinite(statistics["update_gradient_ratio"])


@pytest.mark.parametrize("dtype", [tf.float64, tf.float16])
def test_other_float_dtypes_step_in_float32(exported_policy, dtype):
    """A float64 (or float16) variable, as `set_floatx("float64")` makes them: the step is the
    float32 one, cast to the variable's dtype, and its slots keep that dtype."""
    policy = load_policy(exported_policy)
    optimizer = LearnedOptimizer(policy)
    variable = tf.Variable(tf.zeros([3, 2], dtype))
    gradient = np.array([[1.0, -2.0], [0.5, 0.25], [3.0, 1.0]])
    optimizer.apply_gradients([(tf.constant(gradient, dtype), variable)])
    expected, _ = features.step(policy.actor, tf.constant(gradient, tf.float32),
                                features.init_state([3, 2]), policy.feature_config)
    assert variable.dtype == dtype and all(s.dtype == dtype for s in optimizer._slots[0])
    # (XLA's unrolled actor and the reference's matmul round apart by an ulp.)
    np.testing.assert_allclose(variable.numpy(), expected.numpy().astype(dtype.as_numpy_dtype),
                               rtol=1e-6 if dtype == tf.float64 else 1e-3)


def test_every_step_is_bounded(exported_policy):
    optimizer = LearnedOptimizer(exported_policy)
    bound = optimizer.policy.feature_config.max_update
    variable = tf.Variable(tf.zeros([200]))
    rng = np.random.default_rng(0)
    for _ in range(30):
        before = variable.numpy()
        gradient = rng.normal(size=200) * 10.0 ** rng.integers(-20, 20, 200)
        optimizer.apply_gradients([(tf.constant(gradient, tf.float32), variable)])
        assert np.all(np.abs(variable.numpy() - before) <= bound * (1 + 1e-6))


def test_bad_policy_path_names_it(tmp_path):
    missing = str(tmp_path / "no-such-policy")
    with pytest.raises(ValueError, match="no-such-policy"):
        LearnedOptimizer(missing)


def test_monitor_writes_optimizer_statistics(exported_policy, tmp_path):
    log_dir = str(tmp_path / "logs")
    model = _model()
    model.compile(optimizer=LearnedOptimizer(exported_policy), loss="mse")
    model.fit(*_data(), batch_size=16, epochs=2, verbose=0,
              callbacks=[tf.keras.callbacks.TensorBoard(log_dir),
                         OptimizerMonitor(log_dir, update_freq=2)])
    tags = set()
    for name in os.listdir(os.path.join(log_dir, "optimizer")):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(log_dir, "optimizer", name)):
            tags |= {value.tag for value in event.summary.value}
    assert {"optimizer/update_gradient_ratio", "optimizer/mean_log_lr",
            "optimizer/skipped_steps"} <= tags
    assert os.path.isdir(os.path.join(log_dir, "train"))
    statistics = model.optimizer.last_step_statistics()
    assert 0 < statistics["update_gradient_ratio"] < np.inf


@pytest.mark.parametrize("jit_compile", [False, True])
def test_statistics_of_a_large_variable_estimate_its_norms(exported_policy, jit_compile):
    """Over UPDATE_SAMPLE coordinates the norms are estimated from evenly spaced ones: they
    must match the update the variable took and its gradient."""
    optimizer = LearnedOptimizer(exported_policy, jit_compile=jit_compile)
    rng = np.random.default_rng(0)
    shape = (96, 512)  # 49152 coordinates: a sample of every 12th
    variable = tf.Variable(rng.normal(size=shape).astype(np.float32))
    for scale in (1.0, 0.3, 2.0):  # three steps: a state that is not a fresh coordinate's
        gradient = tf.constant(scale * rng.normal(size=shape).astype(np.float32)
                               * np.linspace(0.1, 3.0, shape[1], dtype=np.float32))
        before = variable.numpy()
        optimizer.apply_gradients([(gradient, variable)])
    update_sq, gradient_sq = optimizer.statistics.numpy()
    exact_update_sq = np.sum(np.square(variable.numpy().astype(np.float64) - before))
    exact_gradient_sq = np.sum(np.square(gradient.numpy().astype(np.float64)))
    assert update_sq == pytest.approx(exact_update_sq, rel=0.05)
    assert gradient_sq == pytest.approx(exact_gradient_sq, rel=0.05)


def test_learning_rate_multiplies_the_step(exported_policy):
    """learning_rate is the step's multiplier: features.step with it, round-tripped by config."""
    policy = load_policy(exported_policy)
    optimizer = LearnedOptimizer(policy=exported_policy, learning_rate=0.004)
    assert float(optimizer.learning_rate) == pytest.approx(0.004)
    restored = LearnedOptimizer.from_config(optimizer.get_config())
    assert float(restored.learning_rate) == pytest.approx(0.004)
    var = tf.Variable([0.5, -1.0, 2.0])
    grad = tf.constant([0.3, -0.2, 0.1])
    optimizer.apply_gradients([(grad, var)])
    update, _ = features.step(policy.actor, grad, features.init_state([3]),
                              policy.feature_config, learning_rate=0.004)
    np.testing.assert_allclose(var.numpy(), np.array([0.5, -1.0, 2.0]) + update.numpy(),
                               rtol=1e-6)
    for bad in (0.0, -1.0, "fast", True):
        with pytest.raises(ValueError, match="learning_rate"):
            LearnedOptimizer(policy=exported_policy, learning_rate=bad)


def test_default_learning_rate_is_the_policys(exported_policy):
    optimizer = LearnedOptimizer(exported_policy)
    expected = load_policy(exported_policy).feature_config.learning_rate
    assert float(optimizer.learning_rate) == pytest.approx(expected)


def test_learning_rate_schedule_drives_the_step(exported_policy):
    """A LearningRateSchedule, as Keras tests Adam's: the step scales with the schedule."""
    schedule = tf.keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=1,
                                                              decay_rate=0.5)
    optimizer = LearnedOptimizer(exported_policy, learning_rate=schedule)
    fixed = LearnedOptimizer(exported_policy, learning_rate=0.01)
    a, b = tf.Variable(tf.ones([4])), tf.Variable(tf.ones([4]))
    grads = _gradients(3)
    deltas = []
    for g in grads:
        before = a.numpy(), b.numpy()
        optimizer.apply_gradients([(g[0], a)])
        fixed.apply_gradients([(g[0], b)])
        deltas.append((a.numpy() - before[0], b.numpy() - before[1]))
    for t, (scheduled, constant) in enumerate(deltas):
        np.testing.assert_allclose(scheduled, constant * 0.5 ** t, rtol=1e-4, atol=1e-9)
    restored = LearnedOptimizer.from_config(optimizer.get_config())
    assert isinstance(restored._learning_rate, tf.keras.optimizers.schedules.ExponentialDecay)


@pytest.mark.parametrize("callback", ["reduce_on_plateau", "scheduler"])
def test_keras_learning_rate_callbacks(exported_policy, callback):
    if callback == "scheduler":
        cb = tf.keras.callbacks.LearningRateScheduler(lambda epoch, lr: 1e-4 * (epoch + 1))
        expected = 3e-4
    else:  # no improvement counts (min_delta): after the first epoch, each one halves the lr
        cb = tf.keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0,
                                                  min_delta=1e9)
        expected = 1e-3 * 0.5 ** 2
    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
    model.compile(LearnedOptimizer(exported_policy, learning_rate=1e-3), loss="mse")
    x, y = np.ones((8, 2), np.float32), np.zeros((8, 1), np.float32)
    model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=[cb])
    assert float(model.optimizer.learning_rate) == pytest.approx(expected, rel=1e-5)
