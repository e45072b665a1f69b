"""`RemoteOptimizer`: the learned optimizer for any framework, one request per step.

The framework keeps its parameters; this object keeps each coordinate's optimizer state (zeros
at first) and turns a dict of gradients into a dict of updates:

    optimizer = RemoteOptimizer(PolicyClient("127.0.0.1:8500"))
    for batch in data:
        grads = compute_gradients(params, batch)          # {name: np.ndarray}
        optimizer.apply(params, grads)                    # params[k] += updates[k]

All parameters travel as one flat block (the client splits it into requests), so a step costs
one round trip however many arrays the model has; each array is one segment, one tensor to the
policy's per-tensor features, as each variable is to `LearnedOptimizer`.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Protocol

import numpy as np


class Stepper(Protocol):
    """What `RemoteOptimizer` needs: `PolicyClient`, or anything stepping flat blocks."""

    state_size: int

    def step(self, gradient: np.ndarray, state: np.ndarray,
             segments: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        ...


class RemoteOptimizer:
    """Per-coordinate learned optimizer over a dict of numpy arrays; the state stays here.

    A parameter missing from a step keeps its state for the step it comes back in (a frozen
    layer, a sparse update); `step({})` changes nothing.

    Args:
      client: a `PolicyClient` (or any `Stepper`).
    """

    def __init__(self, client: Stepper):
        self.client = client
        self._layout: tuple[tuple[str, tuple[int, ...]], ...] = ()
        self._state = np.zeros((0, 0), np.float32)
        self._resting: dict[str, np.ndarray] = {}
        """State of parameters absent from the latest step."""

    @property
    def state(self) -> dict[str, np.ndarray]:
        """Each parameter's state, shape `param.shape + (S,)` (views; copy to checkpoint)."""
        return {**self._resting, **dict(self._split(self._state))}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Restores what `state` returned (parameters not in it start from zeros).

        Raises:
          ValueError: an entry is not floating-point or its last dimension is not the served
            policy's S (`features.STATE_SIZE` for our exports): another policy's state.
        """
        size = self.client.state_size
        checked = {}
        for name, value in state.items():
            value = np.asarray(value)
            if not np.issubdtype(value.dtype, np.floating) or value.ndim < 1 \
                    or value.shape[-1] != size:
                raise ValueError(f"state[{name!r}] has shape {value.shape} and dtype "
                                 f"{value.dtype}; the served policy keeps S = {size} floats per "
                                 f"coordinate: shape param.shape + ({size},)")
            checked[name] = value.astype(np.float32)
        self._layout, self._state = (), np.zeros((0, size), np.float32)
        self._resting = checked

    def step(self, grads: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Updates (same keys, shapes and dtypes as `grads`) to add to the parameters.

        Raises:
          ValueError: a gradient is not floating-point (an integer parameter has no gradient
            step: its update would round to zero).
        """
        for name, g in grads.items():
            dtype = np.asarray(g).dtype
            if not np.issubdtype(dtype, np.floating):
                raise ValueError(f"gradient {name!r} has dtype {dtype}; the optimizer steps "
                                 f"floating-point parameters only")
        if not grads:
            return {}
        layout = tuple((k, np.shape(g)) for k, g in grads.items())
        if layout != self._layout:
            self._relayout(layout)
        flat = np.concatenate([np.ravel(g).astype(np.float32, copy=False)
                               for g in grads.values()])
        # One segment per parameter: the policy's per-tensor features group by it.
        segments = np.repeat(np.arange(len(grads)), [np.size(g) for g in grads.values()])
        update, self._state = self.client.step(flat, self._state, segments)
        return {k: u.astype(np.asarray(grads[k]).dtype, copy=False)
                for k, u in self._split(update)}

    def apply(self, params: MutableMapping[str, np.ndarray],
              grads: Mapping[str, np.ndarray]) -> None:
        """`params[k] += update[k]` for each gradient, in place."""
        for k, update in self.step(grads).items():
            params[k] += update

    def _split(self, flat: np.ndarray):
        offset = 0
        for name, shape in self._layout:
            size = int(np.prod(shape, dtype=np.int64))
            yield name, flat[offset:offset + size].reshape(shape + flat.shape[1:])
            offset += size

    def _relayout(self, layout) -> None:
        # New parameters start from zeros; known ones keep their state, in the new order;
        # those left out rest until they come back.
        old = self.state
        shapes = dict(layout)
        for name, values in old.items():
            if name in shapes and values.shape[:-1] != shapes[name]:
                raise ValueError(f"parameter {name!r} changed shape from {values.shape[:-1]} to "
                                 f"{shapes[name]}; its optimizer state does not fit any more")
        size = self.client.state_size
        self._layout = layout
        self._state = np.zeros((sum(int(np.prod(s, dtype=np.int64)) for _, s in layout), size),
                               np.float32)
        for name, values in self._split(self._state):
            if name in old:
                values[...] = old[name]
        self._resting = {k: v.copy() for k, v in old.items() if k not in shapes}
