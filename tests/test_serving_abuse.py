"""Hostile and careless clients of `rl-optimizer serve` (issue 11): one section per defect found
by an outside abuse test, each test reproducing it; all pass on a server that holds.

Memory is measured on a server process of its own (`rl-optimizer serve`), never by timing.
"""

import logging
import os
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from rl_optimizer import cli, features
from rl_optimizer.benchmarks import serving as serving_benchmark
from rl_optimizer.export import GRADIENT, SEGMENTS, STATE, UPDATE
from rl_optimizer.serving import (
    PolicyClient,
    PolicyServer,
    RemoteOptimizer,
    ServerUnavailableError,
    memory,
    server,
    tensors,
)
from rl_optimizer.serving.limits import MESSAGE_HEADROOM_BYTES, RequestLimits
from rl_optimizer.serving.memory import rss_bytes
from rl_optimizer.serving.models import ModelManager, Servable

S = features.STATE_SIZE
Code = grpc.StatusCode
MB = 1 << 20
REFUSED = (Code.INVALID_ARGUMENT, Code.RESOURCE_EXHAUSTED)


@pytest.fixture(scope="module")
def model_dir(serving_exports, serving_install, tmp_path_factory):
    """A model base directory serving `serving_policies[0]` as rl_optimizer version 1."""
    root = str(tmp_path_factory.mktemp("abuse_models"))
    serving_install(serving_exports[0], root, 1)
    return root


@pytest.fixture(scope="module")
def served_process(model_dir):
    """`rl-optimizer serve` in a process of its own: (target, pid)."""
    with serving_benchmark.server_process(model_dir) as (target, pid):
        PolicyClient(target).wait_until_available(timeout=120)
        yield target, pid


@pytest.fixture
def serve(model_dir):
    """`serve(**options) -> PolicyServer`: a server of ours in this process, stopped after."""
    servers = []

    def start(directory=model_dir, **options):
        options = {"port": 0, "poll_seconds": 0.05, **options}
        servers.append(PolicyServer(str(directory), **options).start())
        return servers[-1]

    yield start
    for running in servers:
        running.stop(grace=0)


def stub(target: str):
    channel = grpc.insecure_channel(target, [("grpc.max_send_message_length", 256 * MB),
                                             ("grpc.max_receive_message_length", 256 * MB)])
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def step_request(n: int, seed: int = 0) -> predict_pb2.PredictRequest:
    rng = np.random.default_rng(seed)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "rl_optimizer"
    tensors.fill(request.inputs[GRADIENT], rng.normal(size=n).astype(np.float32))
    tensors.fill(request.inputs[STATE], np.zeros((n, S), np.float32))
    tensors.fill(request.inputs[SEGMENTS], np.zeros(n, np.int32))
    return request


def refusal(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=60)
    return error.value


def wait_for(condition, what: str, seconds: float = 60):
    """Polls `condition()` until true; fails naming `what` after `seconds` (a bound, not a
    measurement: nothing here depends on how fast it becomes true)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"still not {what} after {seconds} s"
        time.sleep(0.02)


# --- 1. the message limit could be bypassed: a tiny request declaring a huge shape ------------

@pytest.mark.slow
@pytest.mark.parametrize("coordinates", [1 << 24, 1 << 31, 1 << 40])
def test_tiny_request_with_a_huge_shape_costs_nothing(served_process, coordinates):
    target, pid = served_process
    request = serving_benchmark.tiny_request(coordinates)
    assert request.ByteSize() < 128  # a few dozen bytes: three declared inputs, one value
    before = rss_bytes(pid)
    error = refusal(stub(target).Predict, request)
    assert error.code() in REFUSED, error.details()
    assert "Error" not in error.details() and "Traceback" not in error.details()
    # The unfixed server allocated 1.8 GB (2^24), 9 GB (2^31) or died of MemoryError (2^40).
    assert rss_bytes(pid) - before < 32 * MB
    PolicyClient(target).step(np.ones(3, np.float32), np.zeros((3, S), np.float32))


def test_sizes_are_checked_before_anything_is_decoded(serving_exports, monkeypatch):
    signature = _step_signature(serving_exports[0])
    request = serving_benchmark.tiny_request(1 << 24)

    def no_decoding(proto):
        raise AssertionError("decoded a tensor of a request over the limits")

    monkeypatch.setattr(tensors, "to_ndarray", no_decoding)
    with pytest.raises(server.ServingError) as error:
        server.check_inputs(signature, request.inputs, RequestLimits(), [UPDATE, STATE])
    assert error.value.code == Code.RESOURCE_EXHAUSTED
    assert "send at most" in error.value.message


def _step_signature(export: str) -> meta_graph_pb2.SignatureDef:
    from rl_optimizer.serving.models import _read_meta_graph

    return _read_meta_graph(export).signature_def["serving_default"]


# --- 2. oversized responses were found after computing them -----------------------------------

def test_request_whose_response_cannot_fit_is_refused_before_running(serve, monkeypatch):
    limit = 2 * MB
    ours = serve(max_message_bytes=limit)
    runs = []
    monkeypatch.setattr(Servable, "run", lambda self, *a: runs.append(a) or {})
    # Just under the message limit: gRPC lets it in; its rows are more than one message of
    # inputs or of the answer may hold, which the declared shapes tell before anything runs.
    per_row = 4 * (2 + S)  # the larger side: gradient, state and segments
    n = (limit - 1024) // per_row
    request = step_request(n)
    assert request.ByteSize() < limit
    error = refusal(stub(ours.target).Predict, request)
    assert error.code() == Code.RESOURCE_EXHAUSTED, error.details()
    most = (limit - MESSAGE_HEADROOM_BYTES) // per_row
    assert f"send at most {most:,} coordinates" in error.details()
    assert not runs  # refused before the model ran


def test_response_size_counts_where_outputs_outgrow_inputs():
    signature = meta_graph_pb2.SignatureDef()
    signature.inputs["x"].dtype = signature.outputs["y"].dtype = tf.float32.as_datatype_enum
    signature.inputs["x"].tensor_shape.dim.add(size=-1)
    for size in (-1, 8):  # one float in, eight out per row
        signature.outputs["y"].tensor_shape.dim.add(size=size)
    limits = RequestLimits(max_message_bytes=MESSAGE_HEADROOM_BYTES + 32_000)
    assert limits.max_rows(signature) == 1000
    limits.check(signature, {"x": (1000,)}, 1000, ["y"])
    with pytest.raises(server.ServingError, match="the response for 1,001 coordinates"):
        limits.check(signature, {"x": (1001,)}, 1001, ["y"])


def test_max_coordinates(serve):
    ours = serve(max_coordinates=100)
    stub(ours.target).Predict(step_request(100), timeout=60)
    error = refusal(stub(ours.target).Predict, step_request(101))
    assert error.code() == Code.RESOURCE_EXHAUSTED and "--max-coordinates" in error.details()


# --- 3. a second server on a port in use started silently --------------------------------------

def test_port_in_use_is_a_clear_error(serve, model_dir, capsys):
    first = serve()
    with pytest.raises(ValueError, match=f"port {first.port} is already in use"):
        PolicyServer(model_dir, port=first.port).start()
    assert cli.main(["serve", "--model-dir", model_dir, "--port", str(first.port)]) == 2
    assert "already in use" in capsys.readouterr().err
    stub(first.target).Predict(step_request(10), timeout=60)  # the first one is unharmed


# --- 4. no client authentication; a cert/key mismatch said "Failed to bind" --------------------

def test_mutual_tls(serve, tls_files):
    ours = serve(tls_cert=tls_files.server_cert, tls_key=tls_files.server_key,
                 tls_client_ca=tls_files.ca_cert)
    gradient, state = np.ones(10, np.float32), np.zeros((10, S), np.float32)
    trusted = PolicyClient(ours.target, root_certificates=tls_files.ca_cert_pem,
                           certificate_chain=tls_files.client_cert_pem,
                           private_key=tls_files.client_key_pem)
    assert trusted.step(gradient, state)[0].shape == (10,)
    for who in (None, "rogue"):  # no certificate, or one from another CA
        credentials = {} if who is None else {
            "certificate_chain": getattr(tls_files, f"{who}_cert_pem"),
            "private_key": getattr(tls_files, f"{who}_key_pem")}
        client = PolicyClient(ours.target, root_certificates=tls_files.ca_cert_pem,
                              retry_seconds=0, timeout=10, **credentials)
        with pytest.raises(grpc.RpcError) as error:
            client.step(gradient, state)
        assert error.value.code() == Code.UNAVAILABLE, (who, error.value.details())


def test_certificate_and_key_mismatch_is_a_clear_error(serve, tls_files):
    with pytest.raises(ValueError, match="is not the private key of the certificate"):
        serve(tls_cert=tls_files.server_cert, tls_key=tls_files.client_key)
    with pytest.raises(ValueError, match="private_key is not the private key"):
        PolicyClient("127.0.0.1:1", root_certificates=tls_files.ca_cert_pem,
                     certificate_chain=tls_files.client_cert_pem,
                     private_key=tls_files.rogue_key_pem)
    with pytest.raises(ValueError, match="needs --tls-cert"):
        serve(tls_client_ca=tls_files.ca_cert)
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        serve(tls_cert=tls_files.server_key, tls_key=tls_files.server_key)


# --- 5. the client gave up before a restarted server was back ---------------------------------

@pytest.mark.slow
def test_default_client_rides_out_a_5_second_restart(serve, model_dir):
    first = serve()
    client = PolicyClient(first.target)  # default retry window
    gradient, state = np.ones(10, np.float32), np.zeros((10, S), np.float32)
    client.step(gradient, state)
    first.stop(grace=0)  # as kill -9: connections drop, nothing answers
    restart = threading.Timer(5.0, lambda: serve(port=first.port))
    restart.start()
    try:
        update, _ = client.step(gradient, state)
    finally:
        restart.join()
    assert update.shape == (10,)


def test_client_final_error_says_how_long_it_tried():
    dead = PolicyClient("127.0.0.1:1", retry_seconds=0.3, backoff=0.01)
    with pytest.raises(ServerUnavailableError) as error:
        dead.step(np.ones(3, np.float32), np.zeros((3, S), np.float32))
    assert isinstance(error.value, grpc.RpcError) and error.value.code() == Code.UNAVAILABLE
    assert "127.0.0.1:1 still UNAVAILABLE after" in error.value.details()
    assert "retry_seconds" in str(error.value)


# --- 6. a failed version completed in place was never retried; a missing directory flooded ----

def test_failed_version_is_retried_when_a_file_under_it_changes(serving_exports, serving_install,
                                                                tmp_path):
    serving_install(serving_exports[0], str(tmp_path), 1)
    data = os.path.join("variables", "variables.data-00000-of-00001")
    partial = tmp_path / "partial"
    serving_install(serving_exports[1], str(partial), 2)
    (partial / "rl_optimizer" / "2" / data).write_bytes(b"")  # a copy not finished yet
    os.rename(partial / "rl_optimizer" / "2", tmp_path / "rl_optimizer" / "2")
    manager = ModelManager(str(tmp_path))
    manager.poll()
    assert manager.status("rl_optimizer")[2].error_code != Code.OK
    assert manager.servable("rl_optimizer").version == 1
    # The copy completes in place: the directories' and saved_model.pb's mtimes stay as they were.
    with open(os.path.join(serving_exports[1], data), "rb") as source, \
            open(tmp_path / "rl_optimizer" / "2" / data, "r+b") as target:
        target.write(source.read())
    manager.poll()
    assert manager.servable("rl_optimizer").version == 2


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def test_missing_model_directory_is_logged_once_per_change(serve, serving_exports,
                                                           serving_install, tmp_path):
    models = tmp_path / "models"
    serving_install(serving_exports[0], str(models), 1)
    records = Records()
    logger = logging.getLogger("rl_optimizer.serving.server")
    logger.addHandler(records)
    try:
        ours = serve(models)
        for state in ("gone", "back", "gone"):
            if state == "gone":
                os.rename(models, tmp_path / "away")
            else:
                os.rename(tmp_path / "away", models)
            polls = ours.polls
            wait_for(lambda p=polls: ours.polls >= p + 10, "polled 10 times")
        stub(ours.target).Predict(step_request(10), timeout=60)  # serving all along
    finally:
        logger.removeHandler(records)
    lines = [(r.levelname, r.getMessage()) for r in records.records if "polling" in r.msg]
    assert [level for level, _ in lines] == ["ERROR", "INFO", "ERROR"], lines
    assert "does not exist" in lines[0][1] and "\n" not in lines[0][1]
    assert all(r.exc_info is None for r in records.records)


# --- 7. memory was not given back; concurrency was unbounded ---------------------------------

def test_concurrency_beyond_the_limit_is_resource_exhausted(serve, monkeypatch):
    ours = serve(max_concurrent_requests=2, workers=2)
    inside, release = threading.Semaphore(0), threading.Event()
    run = Servable.run

    def held(self, *args):
        inside.release()
        release.wait(60)
        return run(self, *args)

    monkeypatch.setattr(Servable, "run", held)
    predict = stub(ours.target).Predict
    held_requests = [predict.future(step_request(10), timeout=60) for _ in range(2)]
    try:
        for _ in held_requests:
            assert inside.acquire(timeout=60)
        error = refusal(predict, step_request(10))
        assert error.code() == Code.RESOURCE_EXHAUSTED
        assert error.details() == server.OVERLOADED
    finally:
        release.set()
    assert all(f.result().outputs[UPDATE].tensor_shape.dim[0].size == 10 for f in held_requests)


def test_heap_is_trimmed_after_a_large_request(serve):
    if not memory.malloc_trim():
        pytest.skip("no malloc_trim in this C library")
    ours = serve()
    trims = ours.trimmer.trims
    stub(ours.target).Predict(step_request(100_000), timeout=60)  # 2 MB of tensors
    wait_for(lambda: ours.trimmer.trims > trims, "trimmed")


@pytest.mark.slow
def test_rss_stays_near_its_warm_value_after_bursts(served_process):
    target, pid = served_process
    figures = serving_benchmark.bursts(target, pid, size=500_000, requests=6, count=3,
                                       clients=3)
    assert figures["burst_errors"] == 0
    assert figures["rss_ratio"] <= 1.5, figures


# --- 8. RemoteOptimizer lost or misread state ---------------------------------------------------

class CountingStepper:
    """Counts each coordinate's steps in its first state column; the update is -gradient."""

    state_size = S

    def step(self, gradient, state, segments=None):
        state = state.copy()
        state[:, 0] += 1
        return -gradient, state


def test_remote_optimizer_keeps_the_state_of_parameters_left_out():
    optimizer = RemoteOptimizer(CountingStepper())
    a, b = np.ones(3, np.float32), np.ones((2, 2), np.float64)
    optimizer.step({"a": a, "b": b})
    optimizer.step({"a": a})
    before = {k: v.copy() for k, v in optimizer.state.items()}
    params = {"a": np.zeros(3, np.float32)}
    optimizer.apply(params, {})  # nothing to step: nothing changes
    assert params["a"].tolist() == [0, 0, 0]
    for k, v in optimizer.state.items():
        np.testing.assert_array_equal(v, before[k])
    optimizer.step({"b": b, "a": a})
    assert optimizer.state["a"][..., 0].tolist() == [3, 3, 3]
    assert optimizer.state["b"][..., 0].tolist() == [[2, 2], [2, 2]]
    assert optimizer.state["b"].shape == (2, 2, S)


def test_remote_optimizer_load_state_checks_its_layout():
    optimizer = RemoteOptimizer(CountingStepper())
    with pytest.raises(ValueError, match=rf"state\['w'\] has shape \(3, {S + 1}\)"):
        optimizer.load_state({"w": np.zeros((3, S + 1), np.float32)})
    with pytest.raises(ValueError, match="state\\['w'\\] .* dtype int64"):
        optimizer.load_state({"w": np.zeros((3, S), np.int64)})
    optimizer.load_state({"w": np.ones((3, S), np.float32)})
    optimizer.step({"w": np.zeros(3, np.float32)})
    assert optimizer.state["w"][:, 0].tolist() == [2, 2, 2]


def test_remote_optimizer_refuses_integer_gradients():
    optimizer = RemoteOptimizer(CountingStepper())
    with pytest.raises(ValueError, match="gradient 'steps' has dtype int64"):
        optimizer.step({"w": np.ones(2, np.float32), "steps": np.ones(2, np.int64)})


# --- 9. errors leaked other models' names and server paths ------------------------------------

def test_errors_name_nothing_of_the_server(serve, serving_exports, serving_install, tmp_path):
    serving_install(serving_exports[0], str(tmp_path), 1)
    serving_install(serving_exports[0], str(tmp_path), 1, name="secret_model")
    broken = tmp_path / "broken"
    serving_install(serving_exports[1], str(broken), 2)
    # TensorFlow's error for this names the file it looked for, with its full path.
    os.remove(broken / "rl_optimizer" / "2" / "variables" / "variables.index")
    serving_install(str(broken / "rl_optimizer" / "2"), str(tmp_path), 2)
    ours = serve(tmp_path)
    request = step_request(10)
    request.model_spec.name = "nope"
    error = refusal(stub(ours.target).Predict, request)
    assert error.code() == Code.NOT_FOUND
    assert error.details() == "Servable not found for request: Latest(nope)"
    with grpc.insecure_channel(ours.target) as channel:
        status_request = get_model_status_pb2.GetModelStatusRequest()
        status_request.model_spec.name = "rl_optimizer"
        statuses = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(
            status_request, timeout=60).model_version_status
    message = {s.version: s.status.error_message for s in statuses}[2]
    assert "rl_optimizer/2/variables/variables" in message, message
    assert str(tmp_path) not in message and "/tmp" not in message, message


# --- 10. the serving benchmark crashed ---------------------------------------------------------

@pytest.mark.slow
def test_serving_benchmark_runs_and_its_load_has_no_errors(served_process, capsys):
    target, _ = served_process
    figures = serving_benchmark.main(["--quick", "--policy", "random", "--target", target])
    assert figures["load_errors"] == 0
    assert figures["tiny_request_code"] in {code.name for code in REFUSED}
    assert "load_errors: 0" in capsys.readouterr().out
