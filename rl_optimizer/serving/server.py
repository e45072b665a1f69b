"""`rl-optimizer serve`: TF Serving's gRPC API for exported policies, for machines without it.

Implements, with TF Serving's semantics and status codes, the part of its API our clients use:
`PredictionService.Predict` and `GetModelMetadata`, and `ModelService.GetModelStatus`. A stock
`tensorflow_serving.apis` client cannot tell the two servers apart.

    server = PolicyServer("models", port=0).start()     # models/<name>/<version>/
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.target))

Requests are checked against the signature before TensorFlow runs (dtype, shape, the inputs'
common leading dimension N), so a bad request gets INVALID_ARGUMENT naming the input, and
never reaches a kernel. What a request may cost is checked from its declared shapes before any
conversion (limits.py): inputs and the response within the message limit, N within
`max_coordinates`; beyond them, RESOURCE_EXHAUSTED. So are requests beyond
`max_concurrent_requests`, before their payload is read. A failure the server did not foresee
costs one request: one log line, and the client gets TF Serving's words, never Python's.
"""

from __future__ import annotations

import errno
import logging
import math
import signal
import socket
import threading
from collections.abc import Mapping
from concurrent import futures

import grpc
import numpy as np
from tensorflow.core.framework import tensor_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from rl_optimizer.export import STEP_SIGNATURE
from rl_optimizer.serving import memory, tensors, tls
from rl_optimizer.serving.limits import (
    DEFAULT_MAX_CONCURRENT_REQUESTS,
    DEFAULT_MAX_MESSAGE_BYTES,
    RequestLimits,
    itemsize,
)
from rl_optimizer.serving.models import ModelManager, ServingError

_log = logging.getLogger(__name__)

DEFAULT_PORT = 8500
SIGNATURE_DEF = "signature_def"
"""The one `GetModelMetadata` field TF Serving knows."""
OVERLOADED = "Concurrent RPC limit exceeded!"
"""gRPC's RESOURCE_EXHAUSTED details for a request over `max_concurrent_requests`: the one
RESOURCE_EXHAUSTED that a retry can cure."""

_INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _shape_text(dims) -> str:
    return "[" + ", ".join("?" if d < 0 else str(d) for d in dims) + "]"


def _check_names(signature: meta_graph_pb2.SignatureDef, inputs: Mapping) -> None:
    sent, wanted = set(inputs), set(signature.inputs)
    if sent != wanted:  # TF Serving's message, word for word
        raise ServingError(_INVALID, (
            f"input size does not match signature: {len(sent)}!={len(wanted)} "
            f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
            f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
            f"Missing but required: {{{','.join(sorted(wanted - sent))}}}."))


def _check_spec(alias: str, proto: tensor_pb2.TensorProto,
                info: meta_graph_pb2.TensorInfo) -> tuple[int, ...]:
    """The input's declared shape, if its dtype and shape fit the signature (nothing decoded)."""
    if proto.dtype != info.dtype:
        raise ServingError(_INVALID, f"input '{alias}' has dtype {tensors.dtype_name(proto.dtype)}"
                                     f", the signature expects {tensors.dtype_name(info.dtype)}")
    shape = tensors.shape_of(proto)
    if any(size < 0 for size in shape):
        raise ServingError(_INVALID, f"input '{alias}' has a negative dimension in shape "
                                     f"{list(shape)}")
    if not info.tensor_shape.unknown_rank:
        want = [d.size for d in info.tensor_shape.dim]
        bad = [i for i, (s, w) in enumerate(zip(shape, want)) if w >= 0 and s != w]
        if len(shape) != len(want) or bad:
            detail = (f"rank {len(shape)} instead of {len(want)}" if len(shape) != len(want)
                      else f"dimension {bad[0]} must be {want[bad[0]]}")
            raise ServingError(_INVALID, f"input '{alias}' has shape {_shape_text(shape)}, the "
                                         f"signature expects {_shape_text(want)} ({detail})")
    return shape


def _to_array(alias: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    try:
        return tensors.to_ndarray(proto)
    except (ValueError, TypeError) as e:
        raise ServingError(_INVALID, f"tensor parsing error: {alias} ({e})") from e


def check_inputs(signature: meta_graph_pb2.SignatureDef,
                 inputs: Mapping[str, tensor_pb2.TensorProto],
                 limits: RequestLimits | None = None,
                 outputs: list[str] | None = None) -> dict[str, np.ndarray]:
    """The request's inputs as arrays, or INVALID_ARGUMENT naming what does not fit.

    With `limits`, RESOURCE_EXHAUSTED for a request over them (`outputs`: the aliases the
    response will hold, default all), found before anything is decoded.
    """
    _check_names(signature, inputs)
    shapes = {alias: _check_spec(alias, inputs[alias], info)
              for alias, info in sorted(signature.inputs.items())}
    # Inputs with an open leading dimension are per-row (per-coordinate) data: one N for all.
    rows = {alias: shapes[alias][0] for alias, info in signature.inputs.items()
            if info.tensor_shape.dim and info.tensor_shape.dim[0].size < 0 and shapes[alias]}
    if len(set(rows.values())) > 1:
        sizes = ", ".join(f"{alias} has {n}" for alias, n in sorted(rows.items()))
        raise ServingError(_INVALID, "inputs must have the same size in dimension 0 (one row "
                                     f"per coordinate): {sizes}")
    if limits is not None:
        limits.check(signature, shapes, next(iter(rows.values()), None),
                     list(signature.outputs) if outputs is None else outputs)
    return {alias: _to_array(alias, inputs[alias]) for alias in sorted(shapes)}


def _output_aliases(signature: meta_graph_pb2.SignatureDef, output_filter) -> list[str]:
    if len(set(output_filter)) != len(output_filter):
        raise ServingError(_INVALID, f"duplicate output tensor alias in {list(output_filter)}")
    for alias in output_filter:
        if alias not in signature.outputs:
            raise ServingError(_INVALID, (
                f"output tensor alias not found in signature: {alias} Outputs expected to be in "
                f"the set {{{','.join(sorted(signature.outputs))}}}."))
    return list(output_filter) or sorted(signature.outputs)


def _requested_version(spec) -> int | None:
    which = spec.WhichOneof("version_choice")
    if which == "version_label":
        raise ServingError(_INVALID, f"version labels are not supported by rl-optimizer serve "
                                     f"(got '{spec.version_label}'); ask for a version number")
    return spec.version.value if which == "version" else None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """`Predict` and `GetModelMetadata`; Classify, Regress, MultiInference stay UNIMPLEMENTED.

    Args:
      models: the versions to serve.
      limits: per-request bounds; None checks none.
      trimmer: told when a large request has finished (its buffers are freed by then).
    """

    def __init__(self, models: ModelManager, limits: RequestLimits | None = None,
                 trimmer: memory.HeapTrimmer | None = None):
        self.models = models
        self.limits = limits
        self.trimmer = trimmer

    def Predict(self, request, context):
        if self.trimmer is not None and _declared_bytes(request) >= memory.TRIM_AFTER_BYTES:
            context.add_callback(self.trimmer.notify)  # runs once the RPC is over
        return _answer(context, self._predict, request)

    def GetModelMetadata(self, request, context):
        return _answer(context, self._metadata, request)

    def _predict(self, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
        if not request.HasField("model_spec"):
            raise ServingError(_INVALID, "Missing ModelSpec")
        spec = request.model_spec
        servable = self.models.servable(spec.name, _requested_version(spec))
        signature_name = spec.signature_name or STEP_SIGNATURE
        signature = servable.signature(signature_name)
        aliases = _output_aliases(signature, request.output_filter)
        inputs = check_inputs(signature, request.inputs, self.limits, aliases)
        outputs = servable.run(signature_name, inputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for alias in aliases:
            tensors.fill(response.outputs[alias], outputs[alias])
        if self.limits is not None and response.ByteSize() > self.limits.max_message_bytes:
            # Only where the signature leaves an output's size open: else found before running.
            raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, (
                f"the response is {response.ByteSize():,} bytes, over this server's "
                f"{self.limits.max_message_bytes:,} (--max-message-mb)"))
        return response

    def _metadata(self, request):
        if not request.HasField("model_spec"):
            raise ServingError(_INVALID, "Missing ModelSpec")
        if not request.metadata_field:
            raise ServingError(_INVALID, "GetModelMetadataRequest must specify at least one "
                                         "metadata_field")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF:
                raise ServingError(_INVALID, f"Metadata field {field} is not supported")
        servable = self.models.servable(request.model_spec.name,
                                        _requested_version(request.model_spec))
        signature_defs = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in servable.signature_defs.items():
            signature_defs.signature_def[key].CopyFrom(signature)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.metadata[SIGNATURE_DEF].Pack(signature_defs)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """`GetModelStatus`; HandleReloadConfigRequest stays UNIMPLEMENTED (we poll instead)."""

    def __init__(self, models: ModelManager):
        self.models = models

    def GetModelStatus(self, request, context):
        return _answer(context, self._status, request)

    def _status(self, request):
        name, version = request.model_spec.name, _requested_version(request.model_spec)
        versions = self.models.status(name)
        if version is not None:
            if version not in versions:
                raise ServingError(grpc.StatusCode.NOT_FOUND,
                                   f"Could not find version {version} of model {name}")
            versions = {version: versions[version]}
        elif not versions:
            raise ServingError(grpc.StatusCode.NOT_FOUND,
                               f"Could not find any versions of model {name}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for v, status in sorted(versions.items()):
            entry = response.model_version_status.add(version=v, state=status.state)
            entry.status.error_code = status.error_code.value[0]
            entry.status.error_message = status.error_message
        return response


def _declared_bytes(request: predict_pb2.PredictRequest) -> int:
    """Bytes the request's inputs declare (shapes × item sizes), without decoding them."""
    return sum(abs(math.prod(tensors.shape_of(t))) * itemsize(t.dtype)
               for t in request.inputs.values())


def _answer(context: grpc.ServicerContext, handler, request):
    try:
        return handler(request)
    except ServingError as e:
        context.abort(e.code, e.message)
    except MemoryError:  # past the limits' checks: many large requests at once
        _log.error("%s: out of memory", handler.__name__.strip("_"))
        context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                      "OOM when allocating the request's tensors")
    except Exception as e:  # a bug must cost one request, not the server, and stay ours
        text = " ".join(f"{type(e).__name__}: {e}".split())[:500]
        _log.error("%s failed: %s", handler.__name__.strip("_"), text)
        _log.debug("traceback", exc_info=True)
        context.abort(grpc.StatusCode.INTERNAL, "Internal error; the server's log has details")


class PolicyServer:
    """A gRPC server over a `ModelManager`, polling its directory in a background thread.

    Args:
      model_dir: model base directory, `<model_dir>/<name>/<version>/`.
      host: address to bind; loopback unless you mean to serve other machines.
      port: port to bind, exclusively (a port in use is an error); 0 picks a free one (read
        `port` after `start()`).
      poll_seconds: how often to look for new versions.
      num_versions: versions of each model kept loaded (the highest that load).
      max_message_bytes: largest request and response; larger ones get RESOURCE_EXHAUSTED.
      max_coordinates: most coordinates (rows) per request; None: what the message limit
        allows, response included.
      max_concurrent_requests: requests in the server at once; beyond, RESOURCE_EXHAUSTED.
      workers: request threads (requests beyond them wait for one).
      tls_cert, tls_key: PEM files; with both, the port speaks TLS only.
      tls_client_ca: PEM CA certificates; with it, clients must present a certificate it
        signed (mutual TLS).
    """

    def __init__(self, model_dir: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                 poll_seconds: float = 1.0, num_versions: int = 1,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_coordinates: int | None = None,
                 max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
                 workers: int = 16, tls_cert: str | None = None, tls_key: str | None = None,
                 tls_client_ca: str | None = None):
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both a certificate and a key file (--tls-cert, --tls-key)")
        if tls_client_ca is not None and tls_cert is None:
            raise ValueError("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
        if workers < 1 or max_concurrent_requests < 1:
            raise ValueError(f"workers and max_concurrent_requests must be >= 1, got {workers} "
                             f"and {max_concurrent_requests}")
        self.models = ModelManager(model_dir, num_versions)
        self.limits = RequestLimits(max_message_bytes, max_coordinates)
        self.host, self.port = host, port
        self.poll_seconds = poll_seconds
        self.polls = 0
        """Polls of the model directory so far, failed ones included."""
        self._tls = (tls_cert, tls_key, tls_client_ca) if tls_cert else None
        self._options = [("grpc.max_receive_message_length", max_message_bytes),
                         ("grpc.max_send_message_length", max_message_bytes),
                         # gRPC sets SO_REUSEPORT by default: a second server on the port
                         # would start silently and take half of the connections.
                         ("grpc.so_reuseport", 0)]
        self._workers = workers
        self._max_concurrent = max_concurrent_requests
        self.trimmer = memory.HeapTrimmer()
        self._server: grpc.Server | None = None
        self._stop_polling = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def target(self) -> str:
        """`host:port` for a client."""
        return f"{self.host}:{self.port}"

    def start(self) -> PolicyServer:
        credentials = tls.server_credentials(*self._tls) if self._tls else None
        self.models.poll()
        server = grpc.server(futures.ThreadPoolExecutor(self._workers, "rl-optimizer-serve"),
                             options=self._options,
                             maximum_concurrent_rpcs=self._max_concurrent)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.models, self.limits, self.trimmer), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.models),
                                                                  server)
        self.port = _bind(server, self.host, self.port, credentials)
        self.trimmer.start()
        server.start()
        self._server = server
        self._stop_polling.clear()
        self._poller = threading.Thread(target=self._poll_loop, name="rl-optimizer-poll",
                                        daemon=True)
        self._poller.start()
        return self

    def _poll_loop(self) -> None:
        failing = None  # the current failure's text: logged when it starts, changes and ends
        while not self._stop_polling.wait(self.poll_seconds):
            try:
                self.models.poll()
            except Exception as e:  # e.g. the directory vanished: keep serving, poll on
                text = " ".join(f"{type(e).__name__}: {e}".split())
                if text != failing:
                    _log.error("polling %s failed (serving what is loaded, polling on): %s",
                               self.models.model_dir, text)
                failing = text
            else:
                if failing is not None:
                    _log.info("polling %s works again", self.models.model_dir)
                failing = None
            self.polls += 1

    def stop(self, grace: float | None = 2.0) -> None:
        """Stops accepting requests, lets in-flight ones finish for `grace` seconds."""
        self._stop_polling.set()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        if self._poller is not None:
            self._poller.join()
            self._poller = None
        self.trimmer.stop()

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    def __enter__(self) -> PolicyServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _bind(server: grpc.Server, host: str, port: int,
          credentials: grpc.ServerCredentials | None) -> int:
    bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
    address = f"{bracketed}:{port}"
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError:  # gRPC's message ("Failed to bind") does not say why
        bound = 0
    if not bound:
        raise ValueError(f"cannot listen on {address}: {_why_not(host.strip('[]'), port)}")
    return bound


def _why_not(host: str, port: int) -> str:
    """Why binding `host:port` fails, asked of the OS with a plain socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.create_server((host, port), family=family).close()
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return (f"port {port} is already in use (another server?); stop it or choose "
                    f"another --port")
        return e.strerror or str(e)
    return "gRPC could not bind it (GRPC_VERBOSITY=debug tells why)"


def add_arguments(parser) -> None:
    parser.add_argument("--model-dir", required=True,
                        help="model base directory: <model-dir>/<name>/<version>/")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help="gRPC port, used exclusively (0: any free)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default loopback; 0.0.0.0 serves other machines)")
    parser.add_argument("--tls-cert", help="PEM certificate file; with --tls-key, serve TLS only")
    parser.add_argument("--tls-key", help="PEM private key file")
    parser.add_argument("--tls-client-ca",
                        help="PEM CA certificates: require client certificates signed by them "
                             "(mutual TLS; needs --tls-cert, --tls-key)")
    parser.add_argument("--poll-seconds", type=float, default=1.0,
                        help="how often to look for new versions")
    parser.add_argument("--num-versions", type=int, default=1,
                        help="versions of each model kept loaded (the highest that load)")
    parser.add_argument("--max-message-mb", type=float, default=DEFAULT_MAX_MESSAGE_BYTES / 2**20,
                        help="largest request/response in MiB, as declared by the tensors' "
                             "shapes; larger requests get RESOURCE_EXHAUSTED")
    parser.add_argument("--max-coordinates", type=int, default=None,
                        help="most coordinates per request (default: as many as fit in "
                             "--max-message-mb, request and response); more: RESOURCE_EXHAUSTED")
    parser.add_argument("--max-concurrent-requests", type=int,
                        default=DEFAULT_MAX_CONCURRENT_REQUESTS,
                        help="requests in the server at once, running or waiting for a worker; "
                             "more get RESOURCE_EXHAUSTED")
    parser.add_argument("--workers", type=int, default=16, help="request threads")


def run_command(args) -> int:
    # Loads, unloads and broken versions are the server's log; TensorFlow's root handler would
    # drop INFO, so the serving logger gets a handler of its own.
    log = logging.getLogger("rl_optimizer.serving")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(logging.INFO)
    server = PolicyServer(args.model_dir, args.host, args.port, poll_seconds=args.poll_seconds,
                          num_versions=args.num_versions,
                          max_message_bytes=int(args.max_message_mb * 2**20),
                          max_coordinates=args.max_coordinates,
                          max_concurrent_requests=args.max_concurrent_requests,
                          workers=args.workers, tls_cert=args.tls_cert, tls_key=args.tls_key,
                          tls_client_ca=args.tls_client_ca)
    server.start()
    security = " (mutual TLS)" if args.tls_client_ca else " (TLS)" if args.tls_cert else ""
    print(f"serving {', '.join(server.models.model_names()) or 'no models yet'} from "
          f"{args.model_dir} on {server.target}{security}", flush=True)
    # SIGTERM (docker stop, kill) stops gracefully like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.stop).start())
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0
