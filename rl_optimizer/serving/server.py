"""`rl-optimizer serve`: TF Serving's gRPC API for exported policies, for machines without it.

Implements, with TF Serving's semantics and status codes, the part of its API our clients use:
`PredictionService.Predict` and `GetModelMetadata`, and `ModelService.GetModelStatus`. A stock
`tensorflow_serving.apis` client cannot tell the two servers apart.

    server = PolicyServer("models", port=0).start()     # models/<name>/<version>/
    stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(server.target))

Requests are checked against the signature before TensorFlow runs (dtype, shape, the inputs'
common leading dimension N), so a bad request gets INVALID_ARGUMENT naming the input, and
never reaches a kernel. Requests larger than `max_message_bytes` get RESOURCE_EXHAUSTED from
gRPC itself.
"""

from __future__ import annotations

import logging
import signal
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
from rl_optimizer.serving import tensors
from rl_optimizer.serving.models import ModelManager, ServingError

_log = logging.getLogger(__name__)

DEFAULT_PORT = 8500
DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
"""Largest request or response: 4M coordinates of step data (S = 3) with room to spare."""
SIGNATURE_DEF = "signature_def"
"""The one `GetModelMetadata` field TF Serving knows."""

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


def _check_input(alias: str, proto: tensor_pb2.TensorProto,
                 info: meta_graph_pb2.TensorInfo) -> np.ndarray:
    if proto.dtype != info.dtype:
        raise ServingError(_INVALID, f"input '{alias}' has dtype {tensors.dtype_name(proto.dtype)}"
                                     f", the signature expects {tensors.dtype_name(info.dtype)}")
    shape = tensors.shape_of(proto)
    if not info.tensor_shape.unknown_rank:
        want = [d.size for d in info.tensor_shape.dim]
        bad = [i for i, (s, w) in enumerate(zip(shape, want)) if w >= 0 and s != w]
        if len(shape) != len(want) or bad:
            detail = (f"rank {len(shape)} instead of {len(want)}" if len(shape) != len(want)
                      else f"dimension {bad[0]} must be {want[bad[0]]}")
            raise ServingError(_INVALID, f"input '{alias}' has shape {_shape_text(shape)}, the "
                                         f"signature expects {_shape_text(want)} ({detail})")
    try:
        return tensors.to_ndarray(proto)
    except (ValueError, TypeError) as e:
        raise ServingError(_INVALID, f"tensor parsing error: {alias} ({e})") from e


def check_inputs(signature: meta_graph_pb2.SignatureDef,
                 inputs: Mapping[str, tensor_pb2.TensorProto]) -> dict[str, np.ndarray]:
    """The request's inputs as arrays, or INVALID_ARGUMENT naming what does not fit."""
    _check_names(signature, inputs)
    arrays = {alias: _check_input(alias, inputs[alias], info)
              for alias, info in sorted(signature.inputs.items())}
    # Inputs with an open leading dimension are per-row (per-coordinate) data: one N for all.
    rows = {alias: arrays[alias].shape[0] for alias, info in signature.inputs.items()
            if info.tensor_shape.dim and info.tensor_shape.dim[0].size < 0}
    if len(set(rows.values())) > 1:
        sizes = ", ".join(f"{alias} has {n}" for alias, n in sorted(rows.items()))
        raise ServingError(_INVALID, "inputs must have the same size in dimension 0 (one row "
                                     f"per coordinate): {sizes}")
    return arrays


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
    """`Predict` and `GetModelMetadata`; Classify, Regress, MultiInference stay UNIMPLEMENTED."""

    def __init__(self, models: ModelManager):
        self.models = models

    def Predict(self, request, context):
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
        inputs = check_inputs(signature, request.inputs)
        aliases = _output_aliases(signature, request.output_filter)
        outputs = servable.run(signature_name, inputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature_name
        for alias in aliases:
            tensors.fill(response.outputs[alias], outputs[alias])
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


def _answer(context: grpc.ServicerContext, handler, request):
    try:
        return handler(request)
    except ServingError as e:
        context.abort(e.code, e.message)
    except Exception as e:  # a bug must cost one request, not the server
        _log.exception("request failed")
        context.abort(grpc.StatusCode.INTERNAL, f"{type(e).__name__}: {e}")


class PolicyServer:
    """A gRPC server over a `ModelManager`, polling its directory in a background thread.

    Args:
      model_dir: model base directory, `<model_dir>/<name>/<version>/`.
      host: address to bind; loopback unless you mean to serve other machines.
      port: port to bind; 0 picks a free one (read `port` after `start()`).
      poll_seconds: how often to look for new versions.
      num_versions: versions of each model kept loaded (the highest that load).
      max_message_bytes: largest request and response; larger ones get RESOURCE_EXHAUSTED.
      workers: request threads.
      tls_cert, tls_key: PEM files; with both, the port speaks TLS only.
    """

    def __init__(self, model_dir: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                 poll_seconds: float = 1.0, num_versions: int = 1,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, workers: int = 16,
                 tls_cert: str | None = None, tls_key: str | None = None):
        if (tls_cert is None) != (tls_key is None):
            raise ValueError("TLS needs both a certificate and a key file (--tls-cert, --tls-key)")
        self.models = ModelManager(model_dir, num_versions)
        self.host, self.port = host, port
        self.poll_seconds = poll_seconds
        self._tls = (tls_cert, tls_key) if tls_cert else None
        self._options = [("grpc.max_receive_message_length", max_message_bytes),
                         ("grpc.max_send_message_length", max_message_bytes)]
        self._workers = workers
        self._server: grpc.Server | None = None
        self._stop_polling = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def target(self) -> str:
        """`host:port` for a client."""
        return f"{self.host}:{self.port}"

    def start(self) -> PolicyServer:
        self.models.poll()
        server = grpc.server(futures.ThreadPoolExecutor(self._workers, "rl-optimizer-serve"),
                             options=self._options)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.models), server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.models),
                                                                  server)
        host = f"[{self.host}]" if ":" in self.host and not self.host.startswith("[") else self.host
        self.port = _bind(server, f"{host}:{self.port}", self._tls)
        server.start()
        self._server = server
        self._poller = threading.Thread(target=self._poll_loop, name="rl-optimizer-poll",
                                        daemon=True)
        self._poller.start()
        return self

    def _poll_loop(self) -> None:
        while not self._stop_polling.wait(self.poll_seconds):
            try:
                self.models.poll()
            except Exception:  # e.g. the directory vanished for a moment: try again next time
                _log.exception("polling %s failed", self.models.model_dir)

    def stop(self, grace: float | None = 2.0) -> None:
        """Stops accepting requests, lets in-flight ones finish for `grace` seconds."""
        self._stop_polling.set()
        if self._server is not None:
            self._server.stop(grace).wait()
            self._server = None
        if self._poller is not None:
            self._poller.join()
            self._poller = None

    def wait(self) -> None:
        if self._server is not None:
            self._server.wait_for_termination()

    def __enter__(self) -> PolicyServer:
        return self.start() if self._server is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _bind(server: grpc.Server, address: str, tls: tuple[str, str] | None) -> int:
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            with open(tls[0], "rb") as cert, open(tls[1], "rb") as key:
                credentials = grpc.ssl_server_credentials([(key.read(), cert.read())])
            port = server.add_secure_port(address, credentials)
    except RuntimeError as e:
        raise ValueError(f"cannot listen on {address}: {e}") from e
    if not port:  # older grpcio reports a failed bind with port 0
        raise ValueError(f"cannot listen on {address}")
    return port


def add_arguments(parser) -> None:
    parser.add_argument("--model-dir", required=True,
                        help="model base directory: <model-dir>/<name>/<version>/")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="gRPC port (0: any free)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default loopback; 0.0.0.0 serves other machines)")
    parser.add_argument("--tls-cert", help="PEM certificate file; with --tls-key, serve TLS only")
    parser.add_argument("--tls-key", help="PEM private key file")
    parser.add_argument("--poll-seconds", type=float, default=1.0,
                        help="how often to look for new versions")
    parser.add_argument("--num-versions", type=int, default=1,
                        help="versions of each model kept loaded (the highest that load)")
    parser.add_argument("--max-message-mb", type=float, default=DEFAULT_MAX_MESSAGE_BYTES / 2**20,
                        help="largest request/response in MiB; larger requests get "
                             "RESOURCE_EXHAUSTED")
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
                          workers=args.workers, tls_cert=args.tls_cert, tls_key=args.tls_key)
    server.start()
    print(f"serving {', '.join(server.models.model_names()) or 'no models yet'} from "
          f"{args.model_dir} on {server.target}{' (TLS)' if args.tls_cert else ''}", flush=True)
    # SIGTERM (docker stop, kill) stops gracefully like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.stop).start())
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0
