"""Neural networks trained on minibatches: the problems a Keras user's optimizer meets.

Each instance is a student network, Glorot-initialised as Keras initialises Dense layers
(zero biases), trained on data labelled by a teacher network of the same architecture
(teacher–student learning: Gardner & Derrida 1989; Saxe et al. 2014). Because the teacher is
itself a point of the student's parameter space, the data is realizable: the global minimum of
the training loss is exactly 0 (attained for regression, approached for classification, whose
cross-entropy has infimum 0 on separable labels). No solver is needed to know f*.

Gradients are minibatch gradients (`Objective.batch_size`), values are full-batch losses:
what an optimizer sees in `model.fit`, judged by the training loss it reaches.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import tensorflow as tf

from rl_optimizer.objectives.base import Objective, ObjectiveFamily, register

_ACTIVATIONS = {"relu": tf.nn.relu, "tanh": tf.tanh, "linear": tf.identity}
_TASKS = ("classification", "regression", "autoencoder")


def glorot(rng: np.random.Generator, fan_in: int, fan_out: int) -> np.ndarray:
    """A flat fan_in×fan_out Glorot-uniform weight matrix (Keras' Dense default)."""
    return rng.uniform(-1, 1, fan_in * fan_out) * np.sqrt(6 / (fan_in + fan_out))


def glorot_layers(rng: np.random.Generator, sizes) -> np.ndarray:
    """Flat [W (fan_in×fan_out), b] per layer: Glorot-uniform weights, zero biases (Keras')."""
    parts = []
    for a, b in zip(sizes, sizes[1:]):
        parts += [glorot(rng, a, b), np.zeros(b)]
    return np.concatenate(parts)


def _layers(x, sizes):
    """Unflattens `glorot_layers`' layout: [(W [n, a, b], b [n, b])] for stacked instances."""
    out, offset = [], 0
    for a, b in zip(sizes, sizes[1:]):
        w = tf.reshape(x[:, offset:offset + a * b], [-1, a, b])
        out.append((w, x[:, offset + a * b:offset + a * b + b]))
        offset += a * b + b
    return out


def _task_loss(task: str, outputs, params):
    if task == "classification":
        ce = tf.nn.softmax_cross_entropy_with_logits(labels=params["targets"], logits=outputs)
        return tf.reduce_mean(ce, axis=-1)
    return tf.reduce_mean(tf.square(outputs - params["targets"]), axis=[-2, -1])


def mlp_forward(h, x, sizes, activation: str):
    """Outputs [n, m, sizes[-1]] of stacked MLPs x [n, dim] on inputs h [n, m, sizes[0]]."""
    layers = _layers(x, sizes)
    for i, (w, b) in enumerate(layers):
        h = tf.einsum("nma,nab->nmb", h, w) + b[:, None, :]
        if i < len(layers) - 1:
            h = _ACTIVATIONS[activation](h)
    return h


@functools.cache
def mlp_loss(sizes: tuple[int, ...], activation: str, task: str):
    """loss(params, x) of an MLP with layer `sizes`; one function per architecture."""

    def loss(params, x):
        return _task_loss(task, mlp_forward(params["inputs"], x, sizes, activation), params)

    loss.__name__ = loss.__qualname__ = f"mlp_{task}_{activation}_{'x'.join(map(str, sizes))}"
    return loss


def _numpy_forward(forward, inputs: np.ndarray, x: np.ndarray, *args) -> np.ndarray:
    """A teacher's outputs: `forward` on one instance."""
    return forward(tf.constant(inputs[None]), tf.constant(x[None]), *args)[0].numpy()


@register
@dataclasses.dataclass(frozen=True)
class TeacherMLP(ObjectiveFamily):
    """An MLP student fitted to a same-architecture teacher's labels, on minibatches.

    Tasks: "classification" (softmax cross-entropy on the teacher's argmax classes),
    "regression" (mean squared error to the teacher's outputs) and "autoencoder" (a deep linear
    network reconstructing rank-`hidden` inputs through a `hidden`-wide bottleneck: the
    classic nonconvex landscape of Saxe et al. 2014, minimum 0).

    `input_offset` > 0 shifts each input feature by its own offset, uniform in
    [0, input_offset] (the inputs are standard normal before it): features that are not
    centred, as min-max-scaled or raw measurements are. The teacher's function (hence the
    targets) is of the unshifted inputs, so the student's first-layer bias can absorb the
    shift and the minimum stays where it was. A Keras MLP fed min-max-scaled features is where
    the shipped policy's steps, all of a unit's weights moving together, kill the ReLUs
    (README, Results).
    """

    name = "teacher_mlp"
    inputs: int = 8
    hidden: int = 16
    layers: int = 2  # hidden layers
    outputs: int = 4  # classes, or regression outputs (autoencoder: `inputs`)
    task: str = "classification"
    activation: str = "relu"  # hidden layers; the autoencoder is linear
    n_samples: int = 512
    batch_size: int = 32
    input_offset: float = 0.0

    def __post_init__(self):
        self.check_range("inputs", 1, 256)
        self.check_range("input_offset", 0.0, 100.0)
        self.check_range("hidden", 1, 256)
        self.check_range("layers", 1, 4)
        self.check_range("outputs", 1, 64)
        self.check(self.task in _TASKS, "task", f"must be one of {list(_TASKS)}, got {self.task!r}")
        self.check(self.activation in _ACTIVATIONS, "activation",
                   f"must be one of {sorted(_ACTIVATIONS)}, got {self.activation!r}")
        self.check_range("n_samples", 2, 100_000)
        self.check_range("batch_size", 1, self.n_samples)
        if self.task == "autoencoder":
            self.check(self.hidden < self.inputs, "hidden",
                       f"an autoencoder's bottleneck must be below inputs={self.inputs}")

    @property
    def sizes(self) -> tuple[int, ...]:
        if self.task == "autoencoder":
            return (self.inputs, self.hidden, self.inputs)
        return (self.inputs, *[self.hidden] * self.layers, self.outputs)

    @property
    def _activation(self) -> str:
        return "linear" if self.task == "autoencoder" else self.activation

    def sample(self, seed):
        rng = np.random.default_rng(seed)
        sizes = self.sizes
        x_star = None  # where the minimum 0 is only approached, or not worth computing
        if self.task == "autoencoder":
            basis = rng.normal(size=(self.hidden, self.inputs)) / np.sqrt(self.hidden)
            inputs = rng.normal(size=(self.n_samples, self.hidden)) @ basis
            targets = inputs
        else:
            inputs = rng.normal(size=(self.n_samples, self.inputs))
            teacher = glorot_layers(rng, sizes)
            outputs = _numpy_forward(mlp_forward, inputs, teacher, sizes, self._activation)
            if self.task == "classification":
                targets = np.eye(self.outputs)[outputs.argmax(-1)]
            else:
                # Unit-variance targets: the teacher's readout layer scaled, so the teacher
                # still fits them exactly and is a global minimizer.
                scale = outputs.std()
                last = sizes[-2] * sizes[-1] + sizes[-1]
                x_star = np.concatenate([teacher[:-last], teacher[-last:] / scale])
                targets = outputs / scale
        x0 = glorot_layers(rng, sizes)
        if self.input_offset:
            offset = rng.uniform(0.0, self.input_offset, size=self.inputs)
            inputs = inputs + offset
            if x_star is not None:  # the first layer's bias absorbs the shift
                a, b = sizes[0], sizes[1]
                x_star = x_star.copy()
                x_star[a * b:a * b + b] -= offset @ x_star[:a * b].reshape(a, b)
        params = {"inputs": inputs, "targets": targets}
        return Objective(self.name, mlp_loss(sizes, self._activation, self.task), params,
                         x0=x0, f_star=0.0, x_star=x_star,
                         batch_size=self.batch_size, sample_keys=("inputs", "targets"))


def rnn_forward(sequences, x, inputs: int, hidden: int, outputs: int):
    """Readouts [n, m, outputs] of stacked Elman RNNs (tanh) after the last step.

    sequences: [n, m, steps, inputs]; x: [n, dim] laid out as W_in, W_rec, W_out, b_h, b_out.
    """
    offset, weights = 0, []
    for a, b in ((inputs, hidden), (hidden, hidden), (hidden, outputs)):
        weights.append(tf.reshape(x[:, offset:offset + a * b], [-1, a, b]))
        offset += a * b
    w_in, w_rec, w_out = weights
    b_h, b_out = x[:, offset:offset + hidden], x[:, offset + hidden:]
    h = None
    for t in range(sequences.shape[2]):
        z = tf.einsum("nmi,nih->nmh", sequences[:, :, t], w_in) + b_h[:, None, :]
        h = tf.tanh(z if h is None else z + tf.einsum("nmh,nhk->nmk", h, w_rec))
    return tf.einsum("nmh,nho->nmo", h, w_out) + b_out[:, None, :]


@functools.cache
def rnn_loss(inputs: int, hidden: int, outputs: int):
    """loss(params, x) of `rnn_forward`: mean squared error to the targets."""

    def loss(params, x):
        out = rnn_forward(params["inputs"], x, inputs, hidden, outputs)
        return _task_loss("regression", out, params)

    loss.__name__ = loss.__qualname__ = f"rnn_{inputs}x{hidden}x{outputs}"
    return loss


@register
@dataclasses.dataclass(frozen=True)
class TeacherRNN(ObjectiveFamily):
    """A small recurrent student (Elman, tanh) regressing a same-architecture teacher's output.

    Sequences of `steps` Gaussian vectors; the target is the teacher's readout after the last
    step, scaled to unit variance. Realizable, so the minimum is 0.
    """

    name = "teacher_rnn"
    inputs: int = 4
    hidden: int = 8
    outputs: int = 1
    steps: int = 8
    n_samples: int = 256
    batch_size: int = 32

    def __post_init__(self):
        self.check_range("inputs", 1, 64)
        self.check_range("hidden", 1, 64)
        self.check_range("outputs", 1, 16)
        self.check_range("steps", 1, 64)
        self.check_range("n_samples", 2, 100_000)
        self.check_range("batch_size", 1, self.n_samples)

    def _init(self, rng):
        i, h, o = self.inputs, self.hidden, self.outputs
        weights = [glorot(rng, a, b) for a, b in ((i, h), (h, h), (h, o))]
        return np.concatenate([*weights, np.zeros(h + o)])

    def sample(self, seed):
        rng = np.random.default_rng(seed)
        loss = rnn_loss(self.inputs, self.hidden, self.outputs)
        sequences = rng.normal(size=(self.n_samples, self.steps, self.inputs))
        teacher = self._init(rng)
        # Small random biases, so that the teacher's units do not all pass through the origin.
        teacher[-(self.hidden + self.outputs):] = 0.1 * rng.normal(size=self.hidden + self.outputs)
        outputs = _numpy_forward(rnn_forward, sequences, teacher, self.inputs, self.hidden,
                                 self.outputs)
        # Unit-variance targets, and the teacher's readout scaled to fit them exactly.
        scale = outputs.std()
        h, o = self.hidden, self.outputs
        readout = slice(self.inputs * h + h * h, self.inputs * h + h * h + h * o)
        teacher[readout] /= scale
        teacher[-o:] /= scale
        return Objective(self.name, loss, {"inputs": sequences, "targets": outputs / scale},
                         x0=self._init(rng), f_star=0.0, x_star=teacher,
                         batch_size=self.batch_size, sample_keys=("inputs", "targets"))
