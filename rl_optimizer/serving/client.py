"""`PolicyClient`: optimizer steps from a policy server, over the stock TF Serving stubs.

Works against `rl-optimizer serve` and stock TF Serving alike:

    client = PolicyClient("127.0.0.1:8500")
    state = np.zeros((n, client.state_size), np.float32)     # a fresh coordinate's state
    update, state = client.step(gradient, state)              # param ← param + update

Every call has a deadline; UNAVAILABLE (server restarting, connection refused) and an
overloaded server's RESOURCE_EXHAUSTED are retried with exponential backoff for `retry_seconds`
(long enough for a server to restart), then `ServerUnavailableError` says for how long and
why; other errors surface at once as `grpc.RpcError`.
A step larger than `chunk_size` coordinates goes out as several requests, a few in flight at a
time, so no message exceeds the channel's size limit.
"""

from __future__ import annotations

import collections
import random
import time
from typing import NamedTuple

import grpc
import numpy as np
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from rl_optimizer.export import GRADIENT, SEGMENTS, STATE, STEP_SIGNATURE, UPDATE
from rl_optimizer.policy import DEFAULT_MODEL_NAME
from rl_optimizer.serving import tensors
from rl_optimizer.serving.limits import DEFAULT_MAX_MESSAGE_BYTES, MESSAGE_HEADROOM_BYTES
from rl_optimizer.serving.server import OVERLOADED, SIGNATURE_DEF
from rl_optimizer.serving.tls import channel_credentials

_STATES = get_model_status_pb2.ModelVersionStatus.State
_CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
DEFAULT_RETRY_SECONDS = 30.0
"""How long a client retries a server that is down: a restart (5 s on a loaded 2-core machine,
more while a large model loads) with room to spare."""


class ServerUnavailableError(grpc.RpcError):
    """The server stayed unavailable (or overloaded) for the whole retry window.

    A `grpc.RpcError`: `code()` and `details()` are the last attempt's, `details()` prefixed
    with how long and how often the client tried.
    """

    def __init__(self, target: str, seconds: float, attempts: int, last: grpc.RpcError):
        self.target, self.seconds, self.attempts, self.last = target, seconds, attempts, last
        super().__init__(self.details())

    def code(self) -> grpc.StatusCode:
        return self.last.code()

    def details(self) -> str:
        return (f"{self.target} still {self.last.code().name} after {self.seconds:.1f} s and "
                f"{self.attempts} attempts (PolicyClient retry_seconds): {self.last.details()}")


def _retryable(error: grpc.RpcError) -> bool:
    code = error.code()
    return code == grpc.StatusCode.UNAVAILABLE or (
        code == grpc.StatusCode.RESOURCE_EXHAUSTED and error.details() == OVERLOADED)


class ModelMetadata(NamedTuple):
    name: str
    version: int
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]


class VersionStatus(NamedTuple):
    version: int
    state: str
    """AVAILABLE, LOADING, END, ... (`ModelVersionStatus.State` names)."""
    error_code: str
    """OK, or why the version is not serving (a gRPC status code name)."""
    error_message: str


class PolicyClient:
    """A policy service's client: `step`, `metadata`, `status`.

    Args:
      target: `host:port` of the server.
      model_name: the model to ask.
      version: pin one version; None follows the highest the server serves.
      signature_name: the step signature.
      timeout: deadline of each request, seconds.
      retry_seconds: how long to retry UNAVAILABLE (and an overloaded server); the wait between
        attempts doubles from `backoff` seconds up to 2 s. 0: no retries.
      chunk_size: most coordinates per request (also capped by `max_message_bytes`). 256k
        (4 MB requests) with 4 in flight steps 1M coordinates over loopback twice as fast as
        one 1M request: the server computes one chunk while the next one travels.
      max_message_bytes: the channel's send and receive limits.
      max_in_flight: requests of one chunked step in flight at a time.
      root_certificates: PEM roots to verify the server with; turns TLS on.
      certificate_chain, private_key: PEM client certificate and its key, for a server that
        requires them (mutual TLS, `--tls-client-ca`); turn TLS on.
      tls: TLS with the system's roots (implied by the three above).
      channel: use this channel instead of opening one (the options above then don't apply).
    """

    def __init__(self, target: str, model_name: str = DEFAULT_MODEL_NAME, *,
                 version: int | None = None, signature_name: str = STEP_SIGNATURE,
                 timeout: float = 30.0, retry_seconds: float = DEFAULT_RETRY_SECONDS,
                 backoff: float = 0.05, chunk_size: int = 1 << 18,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, max_in_flight: int = 4,
                 root_certificates: bytes | None = None, certificate_chain: bytes | None = None,
                 private_key: bytes | None = None, tls: bool = False,
                 channel: grpc.Channel | None = None):
        if chunk_size < 1 or max_in_flight < 1 or retry_seconds < 0 or backoff <= 0:
            raise ValueError("chunk_size and max_in_flight must be >= 1, retry_seconds >= 0 and "
                             f"backoff > 0, got {chunk_size}, {max_in_flight}, {retry_seconds}, "
                             f"{backoff}")
        self.target = target
        self.timeout, self.retry_seconds, self.backoff = timeout, retry_seconds, backoff
        self.chunk_size, self.max_in_flight = chunk_size, max_in_flight
        self.max_message_bytes = max_message_bytes
        self.spec = model_pb2.ModelSpec(name=model_name, signature_name=signature_name)
        if version is not None:
            self.spec.version.value = version
        self.last_version: int | None = None
        """The version that answered the latest request."""
        self._state_size: int | None = None
        if channel is None:
            options = [("grpc.max_send_message_length", max_message_bytes),
                       ("grpc.max_receive_message_length", max_message_bytes),
                       # Reconnect about as eagerly as `step` retries (gRPC's default waits 1 s+).
                       ("grpc.initial_reconnect_backoff_ms", max(1, int(1000 * backoff))),
                       ("grpc.max_reconnect_backoff_ms", 2000)]
            if tls or root_certificates is not None or certificate_chain is not None \
                    or private_key is not None:
                credentials = channel_credentials(root_certificates, certificate_chain,
                                                  private_key)
                channel = grpc.secure_channel(target, credentials, options)
            else:
                channel = grpc.insecure_channel(target, options)
        self._channel = channel
        predictions = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        self._predict = predictions.Predict
        self._get_metadata = predictions.GetModelMetadata
        self._get_status = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method, request, error: grpc.RpcError | None = None,
              retry_seconds: float | None = None):
        """`method(request)` with the deadline, retried while the server is unavailable or
        overloaded, for `retry_seconds` (default the client's; `error`: a first failure)."""
        start = time.monotonic()
        window = self.retry_seconds if retry_seconds is None else retry_seconds
        delay, attempts = self.backoff, 0 if error is None else 1
        while True:
            if error is None:
                try:
                    return method(request, timeout=self.timeout)
                except grpc.RpcError as e:
                    error, attempts = e, attempts + 1
            if not _retryable(error):
                raise error
            left = start + window - time.monotonic()
            if left <= 0:
                if window == 0:
                    raise error
                raise ServerUnavailableError(self.target, time.monotonic() - start, attempts,
                                             error) from error
            # Jitter keeps clients out of lockstep; the last wait ends with the window.
            time.sleep(min(left, delay * random.uniform(1.0, 1.5)))
            delay, error = min(2 * delay, 2.0), None

    @property
    def state_size(self) -> int:
        """S, the state floats per coordinate, as the served step signature declares it."""
        if self._state_size is None:
            signature = self.metadata().signature_defs[self.spec.signature_name or STEP_SIGNATURE]
            self._state_size = signature.inputs[STATE].tensor_shape.dim[-1].size
        return self._state_size

    def step(self, gradient: np.ndarray, state: np.ndarray,
             segments: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One optimizer step for coordinates of any shape: (update, new state).

        Args:
          gradient: float32-convertible array, any shape.
          state: `gradient.shape + (S,)`; zeros for coordinates never stepped.
          segments: integers of the gradient's shape: which parameter tensor each coordinate
            belongs to, for the policy's per-tensor features (None: all one tensor). A step
            larger than one request is split at tensor boundaries; a tensor larger than a
            request is split too, each piece then its own tensor.
        """
        gradient = np.asarray(gradient, np.float32)
        state = np.asarray(state, np.float32)
        if state.shape[:-1] != gradient.shape or state.ndim != gradient.ndim + 1:
            raise ValueError(f"state must have the gradient's shape {gradient.shape} plus one "
                             f"dimension of size S, got {state.shape}")
        if segments is None:
            segments = np.zeros(gradient.shape, np.int64)
        segments = np.asarray(segments)
        if segments.shape != gradient.shape or not np.issubdtype(segments.dtype, np.integer):
            raise ValueError(f"segments must be integers of the gradient's shape "
                             f"{gradient.shape}, got {segments.dtype} {segments.shape}")
        size = state.shape[-1]
        flat_gradient, flat_state = gradient.reshape(-1), state.reshape(-1, size)
        flat_segments = segments.reshape(-1)
        update = np.empty(flat_gradient.shape, np.float32)
        new_state = np.empty(flat_state.shape, np.float32)
        # gradient, state and segments: 4 bytes each per coordinate and state column.
        chunk = max(1, min(self.chunk_size,
                           (self.max_message_bytes - MESSAGE_HEADROOM_BYTES) // (4 * (2 + size))))
        bounds = chunk_bounds(flat_segments, chunk)
        pending, versions = collections.deque(), {}

        def collect():
            lo, hi, request, future = pending.popleft()
            versions[lo, hi] = self._collect(lo, hi, request, future, update, new_state)

        try:
            for lo, hi in bounds:
                request = self._request(flat_gradient[lo:hi], flat_state[lo:hi],
                                        flat_segments[lo:hi], self.spec)
                pending.append((lo, hi, request,
                                self._predict.future(request, timeout=self.timeout)))
                if len(pending) >= self.max_in_flight:
                    collect()
            while pending:
                collect()
        finally:
            for *_, future in pending:
                future.cancel()
        if versions:
            self.last_version = self._one_version(versions, flat_gradient, flat_state,
                                                  flat_segments, update, new_state)
        return update.reshape(gradient.shape), new_state.reshape(state.shape)

    @staticmethod
    def _request(gradient: np.ndarray, state: np.ndarray, segments: np.ndarray,
                 spec) -> predict_pb2.PredictRequest:
        request = predict_pb2.PredictRequest()
        request.model_spec.CopyFrom(spec)
        tensors.fill(request.inputs[GRADIENT], gradient)
        tensors.fill(request.inputs[STATE], state)
        # Ids renumbered 0..k-1 within the request, as the signature requires (< N).
        ids = np.unique(segments, return_inverse=True)[1].astype(np.int32)
        tensors.fill(request.inputs[SEGMENTS], ids.reshape(segments.shape))
        return request

    def _one_version(self, versions, gradient, state, segments, update, new_state) -> int:
        """Redoes chunks an older version answered (a reload between two requests of one step)
        with the newest, so a step is one policy's; returns that version."""
        newest = max(versions.values())
        spec = model_pb2.ModelSpec(name=self.spec.name, signature_name=self.spec.signature_name)
        spec.version.value = newest
        for lo, hi in (chunk for chunk, version in versions.items() if version != newest):
            request = self._request(gradient[lo:hi], state[lo:hi], segments[lo:hi], spec)
            self._collect(lo, hi, request, None, update, new_state)
        return newest

    def _collect(self, lo, hi, request, future, update, new_state) -> int:
        """Writes a chunk's answer (`future`'s, or a new request's) in place; its version."""
        if future is None:
            response = self._call(self._predict, request)
        else:
            try:
                response = future.result()
            except grpc.RpcError as e:
                response = self._call(self._predict, request, error=e)
        chunk_update = tensors.to_ndarray(response.outputs[UPDATE])
        chunk_state = tensors.to_ndarray(response.outputs[STATE])
        if chunk_update.shape != (hi - lo,) or chunk_state.shape != new_state[lo:hi].shape:
            raise ValueError(f"server answered update {chunk_update.shape} and state "
                             f"{chunk_state.shape} for {hi - lo} coordinates")
        update[lo:hi] = chunk_update
        new_state[lo:hi] = chunk_state
        return response.model_spec.version.value

    def metadata(self) -> ModelMetadata:
        """The model's signatures (`GetModelMetadata`'s `signature_def` field)."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=[SIGNATURE_DEF])
        request.model_spec.name = self.spec.name
        if self.spec.HasField("version"):
            request.model_spec.version.CopyFrom(self.spec.version)
        response = self._call(self._get_metadata, request)
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        response.metadata[SIGNATURE_DEF].Unpack(signature_defs)
        return ModelMetadata(response.model_spec.name, response.model_spec.version.value,
                             dict(signature_defs.signature_def))

    def status(self, retry_seconds: float | None = None) -> list[VersionStatus]:
        """Every version the server knows of this model, loaded or not, lowest first
        (`retry_seconds`: this call's retry window, default the client's)."""
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = self.spec.name
        if self.spec.HasField("version"):
            request.model_spec.version.CopyFrom(self.spec.version)
        response = self._call(self._get_status, request, retry_seconds=retry_seconds)
        return sorted(VersionStatus(s.version, _STATES.Name(s.state),
                                    _CODE_NAMES.get(s.status.error_code, str(s.status.error_code)),
                                    s.status.error_message)
                      for s in response.model_version_status)

    def wait_until_available(self, timeout: float = 60.0, version: int | None = None) -> int:
        """Blocks until a version (`version`, or any) is AVAILABLE; returns the highest one."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                statuses = self.status(retry_seconds=max(0.0, deadline - time.monotonic()))
                available = [s.version for s in statuses if s.state == "AVAILABLE"
                             and version in (None, s.version)]
                if available:
                    return max(available)
            except grpc.RpcError as e:
                if e.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAVAILABLE):
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.spec.name} version {version or 'any'} not available "
                                   f"at {self.target} after {timeout} s")
            time.sleep(0.1)


def chunk_bounds(segments: np.ndarray, chunk: int) -> list[tuple[int, int]]:
    """[lo, hi) request bounds of at most `chunk` coordinates, cut between runs of equal
    segment ids (tensors) wherever a run fits, so each tensor's statistics stay whole."""
    n = len(segments)
    if n == 0:
        return []
    starts = np.flatnonzero(np.r_[True, segments[1:] != segments[:-1]])
    if len(starts) > n // 4 + 1:  # ids not laid out tensor by tensor: plain chunks
        return [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    bounds, lo = [], 0
    for start, end in zip(starts, np.r_[starts[1:], n]):
        if end - lo > chunk and start > lo:
            bounds.append((lo, int(start)))
            lo = int(start)
        while end - lo > chunk:
            bounds.append((lo, lo + chunk))
            lo += chunk
    bounds.append((lo, n))
    return bounds
