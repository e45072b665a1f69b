"""What one request may cost the server, checked from the request's shapes before any allocation.

gRPC's message limit bounds the bytes on the wire, not what they decode to: a `TensorProto`
may declare shape [2^31] and carry one value (TensorFlow repeats the last value to fill the
shape), a 73-byte request for 8 GiB. So every input's declared size is checked against the
message limit, the rows (coordinates) against `max_coordinates`, and the response the signature
would return against the message limit too, all before the request is converted or run.

    limits = RequestLimits(max_message_bytes=64 << 20)
    limits.check(signature, shapes={"gradient": (n,), "state": (n, S)}, rows=n,
                 outputs=["update", "state"])      # or ServingError(RESOURCE_EXHAUSTED, ...)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2

from rl_optimizer.serving.models import ServingError

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
"""Largest request or response: about 3M coordinates of step data at S = 4."""
MESSAGE_HEADROOM_BYTES = 64 << 10
"""Bytes a message needs besides its tensors (model spec, names, shapes, framing)."""
DEFAULT_MAX_CONCURRENT_REQUESTS = 64
"""Requests in the server at once (running or waiting for a worker); more get
RESOURCE_EXHAUSTED before their payload is read."""

_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def itemsize(dtype: int) -> int:
    """Bytes per value of a `DataType` enum (1 for strings: at least a length byte each)."""
    try:
        return np.dtype(tf.as_dtype(dtype).as_numpy_dtype).itemsize
    except TypeError:
        return 1


def _output_bytes(info: meta_graph_pb2.TensorInfo, rows: int | None) -> int | None:
    """Bytes of an output for `rows` coordinates; None where the signature leaves it open."""
    if info.tensor_shape.unknown_rank:
        return None
    dims = [d.size for d in info.tensor_shape.dim]
    if any(d < 0 for d in dims[1:]) or (dims and dims[0] < 0 and rows is None):
        return None
    sizes = [rows if i == 0 and d < 0 else d for i, d in enumerate(dims)]
    return math.prod(sizes) * itemsize(info.dtype)


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """A server's per-request bounds (`rl-optimizer serve` flags in brackets)."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    """Largest request and response [--max-message-mb]; decoded inputs count, not wire bytes."""
    max_coordinates: int | None = None
    """Most rows per request [--max-coordinates]; None: as many as the message limit allows,
    for the request and for its response."""

    def __post_init__(self):
        if self.max_message_bytes <= MESSAGE_HEADROOM_BYTES:
            raise ValueError(f"max_message_bytes must be over {MESSAGE_HEADROOM_BYTES} bytes, "
                             f"got {self.max_message_bytes}")
        if self.max_coordinates is not None and self.max_coordinates < 1:
            raise ValueError(f"max_coordinates must be >= 1, got {self.max_coordinates}")

    @property
    def tensor_budget(self) -> int:
        """Bytes of tensors one message may hold."""
        return self.max_message_bytes - MESSAGE_HEADROOM_BYTES

    def max_rows(self, signature: meta_graph_pb2.SignatureDef,
                 outputs: Iterable[str] | None = None) -> int | None:
        """Most coordinates per request for `signature` (its `outputs`, default all); None if
        the signature's shapes leave it open and no `max_coordinates` is set."""
        infos = [*signature.inputs.values(),
                 *(signature.outputs[a] for a in (outputs or signature.outputs))]
        per_row = [_output_bytes(info, 1) for info in infos]
        fit = None
        if all(b is not None for b in per_row) and any(per_row):
            # Inputs and outputs travel in separate messages: the larger side binds.
            inputs_row = sum(per_row[:len(signature.inputs)])
            outputs_row = sum(per_row[len(signature.inputs):])
            fit = self.tensor_budget // max(inputs_row, outputs_row, 1)
        if self.max_coordinates is None:
            return fit
        return self.max_coordinates if fit is None else min(fit, self.max_coordinates)

    def check(self, signature: meta_graph_pb2.SignatureDef,
              shapes: Mapping[str, tuple[int, ...]], rows: int | None,
              outputs: Iterable[str]) -> None:
        """RESOURCE_EXHAUSTED if the request's declared inputs, its `rows` or the response of
        `outputs` exceed the limits; `shapes` are the inputs' declared shapes (non-negative)."""
        outputs = list(outputs)
        sizes = {alias: math.prod(shape) * itemsize(signature.inputs[alias].dtype)
                 for alias, shape in shapes.items()}
        if sum(sizes.values()) > self.tensor_budget:
            shown = ", ".join(f"{a} {list(shapes[a])} ({sizes[a]:,} bytes)" for a in sorted(sizes))
            most = self.max_rows(signature, outputs)
            raise ServingError(_EXHAUSTED, (
                f"request inputs declare {sum(sizes.values()):,} bytes of tensors ({shown}); "
                f"this server takes at most {self.tensor_budget:,} per message "
                f"(--max-message-mb)"
                + ("" if most is None else f": send at most {most:,} coordinates per request")))
        if rows is not None and self.max_coordinates is not None and rows > self.max_coordinates:
            raise ServingError(_EXHAUSTED, (
                f"request has {rows:,} coordinates; this server takes at most "
                f"{self.max_coordinates:,} per request (--max-coordinates)"))
        answer = [_output_bytes(signature.outputs[alias], rows) for alias in outputs]
        if None not in answer and sum(answer) > self.tensor_budget:
            per_row = sum(_output_bytes(signature.outputs[alias], 1) for alias in outputs)
            most = self.tensor_budget // max(per_row, 1)
            raise ServingError(_EXHAUSTED, (
                f"the response for {rows:,} coordinates would hold {sum(answer):,} bytes of "
                f"tensors, over this server's {self.tensor_budget:,} per message "
                f"(--max-message-mb); send at most {most:,} coordinates per request"))
