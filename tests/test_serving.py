"""rl_optimizer/serving: the server (ours, and stock TF Serving where installed) through the
stock `tensorflow_serving.apis` stubs, and `PolicyClient`."""

import os
import socket
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf.wrappers_pb2 import Int64Value
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from rl_optimizer import LearnedPolicy, features
from rl_optimizer.export import (
    ACTION,
    ACTION_SIGNATURE,
    GRADIENT,
    OBSERVATION,
    SEGMENTS,
    STATE,
    STEP_SIGNATURE,
    TIME_STEP_INPUTS,
    UPDATE,
)
from rl_optimizer.serving import PolicyClient, PolicyServer, server
from rl_optimizer.serving.models import ModelManager

OURS = "rl-optimizer serve"
S = features.STATE_SIZE
Code = grpc.StatusCode
AVAILABLE = get_model_status_pb2.ModelVersionStatus.AVAILABLE
END = get_model_status_pb2.ModelVersionStatus.END


@pytest.fixture(scope="module")
def channel(policy_server):
    options = [("grpc.max_send_message_length", 64 << 20),
               ("grpc.max_receive_message_length", 64 << 20)]
    with grpc.insecure_channel(policy_server.target, options) as channel:
        yield channel


@pytest.fixture(scope="module")
def predictions(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_service(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def step_data(n: int, seed: int = 0, fresh: bool = False):
    """A gradient [n] and a state [n, S] (zeros if `fresh`, else three steps old)."""
    rng = np.random.default_rng(seed)
    state = features.init_state([n])
    for _ in range(0 if fresh else 3):
        _, state = _STATE_MAKER.step(tf.constant(rng.normal(size=n), tf.float32), state)
    return rng.normal(size=n).astype(np.float32), features.pack(state).numpy()


_STATE_MAKER = LearnedPolicy.random(seed=99)


def in_process_step(policy, gradient, state, segments=None):
    """`policy.step` here; all one tensor unless `segments` (contiguous ids 0..k-1)."""
    if segments is not None:
        segments = features.Segments(tf.constant(segments, tf.int32), int(segments.max()) + 1)
    update, new_state = policy.step(tf.constant(gradient), features.unpack(tf.constant(state)),
                                    segments)
    return update.numpy(), features.pack(new_state).numpy()


def step_request(gradient, state, name="rl_optimizer", signature=STEP_SIGNATURE, version=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = version
    request.inputs[GRADIENT].CopyFrom(tf.make_tensor_proto(gradient))
    request.inputs[STATE].CopyFrom(tf.make_tensor_proto(state))
    # All one tensor, as `in_process_step` steps it.
    request.inputs[SEGMENTS].CopyFrom(tf.make_tensor_proto(np.zeros(len(gradient), np.int32)))
    return request


def check_step(predictions, policy, n=1000, seed=0, **kwargs):
    """One Predict of the step signature, checked against `policy.step` in this process."""
    gradient, state = step_data(n, seed)
    response = predictions.Predict(step_request(gradient, state, **kwargs), timeout=30)
    want_update, want_state = in_process_step(policy, gradient, state)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[UPDATE]), want_update,
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[STATE]), want_state,
                               rtol=1e-6, atol=1e-7)
    return response


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh", "stepped"])
def test_predict_matches_policy_step(predictions, serving_policies, fresh):
    gradient, state = step_data(1000, fresh=fresh)
    response = predictions.Predict(step_request(gradient, state), timeout=30)
    want_update, want_state = in_process_step(serving_policies[0], gradient, state)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[UPDATE]), want_update,
                               rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[STATE]), want_state,
                               rtol=1e-6, atol=1e-7)
    assert (response.model_spec.name, response.model_spec.version.value,
            response.model_spec.signature_name) == ("rl_optimizer", 1, STEP_SIGNATURE)


def test_empty_signature_name_means_serving_default(predictions, serving_policies):
    response = check_step(predictions, serving_policies[0], signature="")
    assert response.model_spec.signature_name == STEP_SIGNATURE


def test_output_filter(predictions):
    request = step_request(*step_data(10))
    request.output_filter.append(UPDATE)
    assert set(predictions.Predict(request, timeout=30).outputs) == {UPDATE}


def test_action_signature(predictions, serving_policies):
    observation = np.random.default_rng(0).uniform(-1, 1, (7, features.OBSERVATION_SIZE))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "rl_optimizer"
    request.model_spec.signature_name = ACTION_SIGNATURE
    inputs = dict(zip(TIME_STEP_INPUTS, (np.zeros(7, np.int32), np.zeros(7, np.float32),
                                         np.ones(7, np.float32))))
    inputs[OBSERVATION] = observation.astype(np.float32)
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    response = predictions.Predict(request, timeout=30)
    want = serving_policies[0].actor(tf.constant(inputs[OBSERVATION])).numpy()
    np.testing.assert_allclose(tf.make_ndarray(response.outputs[ACTION]), want, rtol=1e-6)


def test_metadata_is_the_signature_def_map(predictions):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "rl_optimizer"
    response = predictions.GetModelMetadata(request, timeout=30)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    assert response.model_spec.version.value == 1
    assert {STEP_SIGNATURE, ACTION_SIGNATURE} <= set(signatures.signature_def)
    step = signatures.signature_def[STEP_SIGNATURE]
    assert set(step.inputs) == {GRADIENT, STATE, SEGMENTS}
    assert set(step.outputs) == {UPDATE, STATE}
    assert step.inputs[SEGMENTS].dtype == tf.int32.as_datatype_enum
    assert [d.size for d in step.inputs[GRADIENT].tensor_shape.dim] == [-1]
    assert [d.size for d in step.inputs[STATE].tensor_shape.dim] == [-1, S]
    assert step.inputs[STATE].dtype == tf.float32.as_datatype_enum


def test_status(model_service):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "rl_optimizer"
    (status,) = model_service.GetModelStatus(request, timeout=30).model_version_status
    assert (status.version, status.state, status.status.error_code) == (1, AVAILABLE, 0)
    request.model_spec.version.value = 1
    assert len(model_service.GetModelStatus(request, timeout=30).model_version_status) == 1


def _set_input(request, alias, value):
    request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))


def _truncate_content(request, alias):
    request.inputs[alias].tensor_content = request.inputs[alias].tensor_content[:-4]


# (id, how the request goes wrong, its status code, what the message names (ours), ours only)
BAD_PREDICTS = [
    ("dtype", lambda r: _set_input(r, GRADIENT, np.zeros(10, np.float64)),
     Code.INVALID_ARGUMENT, "dtype DT_DOUBLE", False),
    ("N mismatch", lambda r: _set_input(r, STATE, np.zeros((9, S), np.float32)),
     Code.INVALID_ARGUMENT, "gradient has 10, segments has 10, state has 9", False),
    ("state width", lambda r: _set_input(r, STATE, np.zeros((10, S + 1), np.float32)),
     Code.INVALID_ARGUMENT, f"dimension 1 must be {S}", True),
    ("gradient rank", lambda r: _set_input(r, GRADIENT, np.zeros((10, 1), np.float32)),
     Code.INVALID_ARGUMENT, "rank 2 instead of 1", True),
    ("missing input", lambda r: r.inputs.pop(STATE),
     Code.INVALID_ARGUMENT, "Missing but required: {state}", False),
    ("extra input", lambda r: _set_input(r, "momentum", np.zeros(10, np.float32)),
     Code.INVALID_ARGUMENT, "Sent extra: {momentum}", False),
    ("content", lambda r: _truncate_content(r, GRADIENT),
     Code.INVALID_ARGUMENT, "tensor parsing error: gradient", False),
    ("model", lambda r: setattr(r.model_spec, "name", "nope"),
     Code.NOT_FOUND, "Latest(nope)", False),
    ("version", lambda r: r.model_spec.version.MergeFrom(Int64Value(value=7)),
     Code.NOT_FOUND, "Specific(rl_optimizer, 7)", False),
    # TF Serving answers an unknown signature with FAILED_PRECONDITION (predict_util.cc).
    ("signature", lambda r: setattr(r.model_spec, "signature_name", "nope"),
     Code.FAILED_PRECONDITION, 'Serving signature key "nope" not found', False),
    ("output", lambda r: r.output_filter.append("nope"),
     Code.INVALID_ARGUMENT, "output tensor alias not found in signature: nope", False),
]


@pytest.mark.parametrize("spoil, code, names, ours_only", [case[1:] for case in BAD_PREDICTS],
                         ids=[case[0] for case in BAD_PREDICTS])
def test_bad_predict_gets_its_status_code(policy_server, predictions, serving_policies,
                                          spoil, code, names, ours_only):
    if ours_only and policy_server.backend != OURS:
        pytest.skip("TF Serving leaves this check to the graph")
    request = step_request(*step_data(10))
    spoil(request)
    with pytest.raises(grpc.RpcError) as error:
        predictions.Predict(request, timeout=30)
    assert error.value.code() == code, error.value.details()
    if policy_server.backend == OURS:
        assert names in error.value.details()
    check_step(predictions, serving_policies[0])  # and the server keeps serving


def test_oversized_request_is_resource_exhausted(policy_server, predictions, serving_policies):
    if policy_server.backend != OURS:
        pytest.skip("TF Serving's request limit is 2 GiB")
    with pytest.raises(grpc.RpcError) as error:
        predictions.Predict(step_request(*step_data(1 << 20, fresh=True)), timeout=30)
    assert error.value.code() == Code.RESOURCE_EXHAUSTED
    check_step(predictions, serving_policies[0])


def test_bad_metadata_and_status_requests(predictions, model_service):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "rl_optimizer"
    bad = [(predictions.GetModelMetadata, request, Code.INVALID_ARGUMENT)]
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["nope"])
    request.model_spec.name = "rl_optimizer"
    bad.append((predictions.GetModelMetadata, request, Code.INVALID_ARGUMENT))
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "nope"
    bad.append((predictions.GetModelMetadata, request, Code.NOT_FOUND))
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "nope"
    bad.append((model_service.GetModelStatus, request, Code.NOT_FOUND))
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "rl_optimizer"
    request.model_spec.version.value = 7
    bad.append((model_service.GetModelStatus, request, Code.NOT_FOUND))
    for method, request, code in bad:
        with pytest.raises(grpc.RpcError) as error:
            method(request, timeout=30)
        assert error.value.code() == code, (request, error.value.details())


def test_client(policy_server, serving_policies):
    with PolicyClient(policy_server.target) as client:
        assert client.state_size == S
        assert client.metadata().version == 1
        assert [(s.version, s.state, s.error_code) for s in client.status()] == [
            (1, "AVAILABLE", "OK")]
        gradient, state = step_data(1200)
        update, new_state = client.step(gradient.reshape(3, 400), state.reshape(3, 400, S))
        assert update.shape == (3, 400) and new_state.shape == (3, 400, S)
        want_update, want_state = in_process_step(serving_policies[0], gradient, state)
        np.testing.assert_allclose(update.reshape(-1), want_update, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(new_state.reshape(-1, S), want_state, rtol=1e-6, atol=1e-6)
        assert client.last_version == 1
        empty = client.step(np.zeros(0), np.zeros((0, S)))
        assert empty[0].shape == (0,) and empty[1].shape == (0, S)
        with pytest.raises(ValueError, match="state must have"):
            client.step(gradient, state[:-1])
    # Six tensors of 200: requests of at most 250 cut between tensors, so each tensor's
    # statistics are whole and the chunked step equals the one-request step.
    segments = np.repeat(np.arange(6), 200)
    with PolicyClient(policy_server.target) as client:
        update, new_state = client.step(gradient, state, segments)
    want_update, _ = in_process_step(serving_policies[0], gradient, state, segments)
    np.testing.assert_allclose(update, want_update, rtol=1e-6, atol=1e-7)
    chunked = PolicyClient(policy_server.target, chunk_size=250, max_in_flight=2)
    chunked_update, chunked_state = chunked.step(gradient, state, segments)
    # Same math on differently sized blocks: equal up to the last bits of vectorised float32.
    np.testing.assert_allclose(chunked_update, update, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(chunked_state, new_state, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="segments must be integers"):
        chunked.step(gradient, state, segments[:-1])


def test_client_chunks_to_fit_the_message_limit(policy_server, serving_policies):
    # 1M coordinates are 16 MB: twice the test server's limit; the client splits them.
    gradient, state = step_data(1 << 20, fresh=True)
    update, new_state = PolicyClient(policy_server.target, max_message_bytes=8 << 20).step(
        gradient, state)
    want_update, want_state = in_process_step(serving_policies[0], gradient, state)
    np.testing.assert_allclose(update, want_update, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(new_state, want_state, rtol=1e-6, atol=1e-6)


def test_client_step_is_one_versions_even_across_a_reload(
        serving_backend, start_policy_server, serving_exports, serving_policies, serving_install,
        tmp_path):
    if serving_backend != OURS:
        pytest.skip("needs two versions loaded (num_versions=2: ours)")
    for version, export in ((1, serving_exports[0]), (2, serving_exports[1])):
        serving_install(export, str(tmp_path), version)
    client = PolicyClient(start_policy_server(tmp_path, num_versions=2), chunk_size=100)
    predict = client._predict

    class FirstChunkToVersion1:  # as if version 2 arrived while the step's requests went out
        def __call__(self, request, **kwargs):
            return predict(request, **kwargs)

        def future(self, request, **kwargs):
            if not request.model_spec.HasField("version"):
                request.model_spec.version.value = 1
                client._predict = predict
            return predict.future(request, **kwargs)

    client._predict = FirstChunkToVersion1()
    gradient, state = step_data(300)
    segments = np.repeat(np.arange(3), 100)  # one request per tensor
    update, new_state = client.step(gradient, state, segments)
    want_update, want_state = in_process_step(serving_policies[1], gradient, state, segments)
    np.testing.assert_allclose(update, want_update, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(new_state, want_state, rtol=1e-6, atol=1e-6)
    assert client.last_version == 2


def test_client_deadline(policy_server):
    client = PolicyClient(policy_server.target, timeout=1e-3)  # a 256k chunk takes > 10 ms
    with pytest.raises(grpc.RpcError) as error:
        client.step(*step_data(1 << 20, fresh=True))
    assert error.value.code() == Code.DEADLINE_EXCEEDED


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_retries_while_the_server_is_unavailable(policy_server, serving_policies):
    if policy_server.backend != OURS:
        pytest.skip("a client test: it starts a server of ours late, whatever the backend")
    port = _free_port()
    with pytest.raises(grpc.RpcError) as error:
        PolicyClient(f"127.0.0.1:{port}", retry_seconds=0.05, backoff=0.01).step(*step_data(10))
    assert error.value.code() == Code.UNAVAILABLE
    late = PolicyServer(policy_server.model_dir, port=port)
    starter = threading.Timer(0.3, late.start)
    starter.start()
    try:
        client = PolicyClient(f"127.0.0.1:{port}", backoff=0.05)
        gradient, state = step_data(10)
        np.testing.assert_allclose(client.step(gradient, state)[0],
                                   in_process_step(serving_policies[0], gradient, state)[0],
                                   rtol=1e-6, atol=1e-7)
    finally:
        starter.join()
        late.stop(grace=0)


def test_hot_reload_keeps_requests_working(start_policy_server, serving_exports,
                                           serving_policies, serving_install, tmp_path):
    serving_install(serving_exports[0], str(tmp_path), 1)
    client = PolicyClient(start_policy_server(tmp_path))
    gradient, state = step_data(5000)
    want = {v: in_process_step(p, gradient, state)[0] for v, p in zip((1, 2), serving_policies)}
    versions, errors, stop = [], [], threading.Event()

    def hammer():  # requests all through the reload, each checked against its version
        while not stop.is_set() and len(versions) < 20000:
            try:
                update, _ = client.step(gradient, state)
                versions.append(client.last_version)
                np.testing.assert_allclose(update, want[versions[-1]], rtol=1e-6, atol=1e-7)
            except Exception as e:  # every failure is a test failure
                errors.append(e)

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        time.sleep(0.2)
        serving_install(serving_exports[1], str(tmp_path), 2)
        deadline = time.monotonic() + 30
        while 2 not in versions[-1:] and time.monotonic() < deadline and not errors:
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:3]
    assert versions[0] == 1 and versions[-1] == 2 and versions == sorted(versions)
    deadline = time.monotonic() + 30  # TF Serving unloads version 1 in the background
    while time.monotonic() < deadline and client.status()[0].state != "END":
        time.sleep(0.05)
    assert [(s.version, s.state) for s in client.status()] == [(1, "END"), (2, "AVAILABLE")]


def test_broken_version_is_reported_and_the_old_one_keeps_serving(
        start_policy_server, serving_exports, serving_policies, serving_install, tmp_path):
    serving_install(serving_exports[0], str(tmp_path), 1)
    client = PolicyClient(start_policy_server(tmp_path))
    broken = tmp_path / "broken"
    (broken / "variables").mkdir(parents=True)
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    serving_install(str(broken), str(tmp_path), 2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and [s.state for s in client.status()][-1:] != ["END"]:
        time.sleep(0.05)
    (v1, v2) = client.status()
    assert (v1.version, v1.state, v2.version, v2.state) == (1, "AVAILABLE", 2, "END")
    assert v2.error_code != "OK" and v2.error_message
    gradient, state = step_data(100)
    np.testing.assert_allclose(client.step(gradient, state)[0],
                               in_process_step(serving_policies[0], gradient, state)[0],
                               rtol=1e-6, atol=1e-7)
    assert client.last_version == 1


def test_tls(serving_backend, start_policy_server, serving_exports, serving_policies,
             serving_install, tls_files, tmp_path):
    if serving_backend != OURS:
        pytest.skip("TF Serving takes TLS from --ssl_config_file; tested with ours")
    serving_install(serving_exports[0], str(tmp_path / "models"), 1)
    target = start_policy_server(tmp_path / "models", tls_cert=tls_files.server_cert,
                                 tls_key=tls_files.server_key)
    gradient, state = step_data(100)
    update, _ = PolicyClient(target, root_certificates=tls_files.ca_cert_pem).step(gradient,
                                                                                  state)
    np.testing.assert_allclose(update, in_process_step(serving_policies[0], gradient, state)[0],
                               rtol=1e-6, atol=1e-7)
    with pytest.raises(grpc.RpcError) as error:
        PolicyClient(target, retry_seconds=0, timeout=5).step(gradient, state)
    assert error.value.code() == Code.UNAVAILABLE


def test_manager_keeps_num_versions_and_unloads_deleted_ones(serving_exports, serving_install,
                                                             tmp_path):
    for version, export in ((1, serving_exports[0]), (2, serving_exports[1])):
        serving_install(export, str(tmp_path), version)
    manager = ModelManager(str(tmp_path), num_versions=2)
    manager.poll()
    assert manager.servable("rl_optimizer").version == 2
    assert manager.servable("rl_optimizer", 1).version == 1
    os.rename(tmp_path / "rl_optimizer" / "2", tmp_path / "rl_optimizer" / ".deleted")
    manager.poll()
    assert manager.servable("rl_optimizer").version == 1
    assert {v: s.state for v, s in manager.status("rl_optimizer").items()} == {1: AVAILABLE,
                                                                               2: END}


def test_serve_command_arguments(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    server.add_arguments(parser)
    args = parser.parse_args(["--model-dir", str(tmp_path / "missing"), "--port", "0"])
    assert (args.host, args.port, args.poll_seconds) == ("127.0.0.1", 0, 1.0)
    with pytest.raises(ValueError, match="does not exist"):
        server.run_command(args)
    args = parser.parse_args(["--model-dir", str(tmp_path), "--tls-cert", "cert.pem"])
    with pytest.raises(ValueError, match="both a certificate and a key"):
        server.run_command(args)


@pytest.mark.slow
def test_load_32_clients_x_300_requests_of_10k_coordinates(policy_server, serving_policies):
    clients, requests, n = 32, 300, 10_000
    gradient, state = step_data(n)
    results, errors = [None] * clients, []

    def run(i):
        try:
            client, s = PolicyClient(policy_server.target), state
            for _ in range(requests):
                update, s = client.step(gradient, s)
            results[i] = (update, s)
        except Exception as e:  # every failure is a test failure
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    print(f"\nload ({policy_server.backend}): {clients} clients x {requests} requests x {n} "
          f"coordinates in {seconds:.1f} s, {clients * requests / seconds:.0f} requests/s, "
          f"{len(errors)} errors")
    assert not errors, errors[:3]
    for _, final_state in results[1:]:  # same inputs, same trajectory for every client
        np.testing.assert_array_equal(final_state, results[0][1])
    assert np.isfinite(results[0][0]).all()


# --- fidelity to stock TF Serving, without its binary ----------------------------------------

PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
"""Core-registered, but their kernels exist only in a Python process: never in TF Serving."""


def _all_exports(serving_exports) -> list[str]:
    """The test exports and every version shipped in rl_optimizer/pretrained/."""
    from rl_optimizer.policy import PRETRAINED_DIR

    shipped = [os.path.join(root, d) for root, dirs, _ in os.walk(PRETRAINED_DIR)
               for d in dirs if d.isdigit() and os.path.isfile(
                   os.path.join(root, d, "saved_model.pb"))]
    return [*serving_exports, *sorted(shipped)]


def _as_tf_serving_runs(version_dir: str, signature_key: str, n: int = 500):
    """What tensorflow_model_server does: the C++ SavedModel loader ("serve" tag) into a
    Session, then Session::Run feeding and fetching the SignatureDef's tensor names.

    Returns the feeds (made for the signature's own shapes), the outputs and the MetaGraphDef.
    """
    with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], version_dir)
        signature = meta_graph.signature_def[signature_key]
        feeds = _feeds(signature, n)
        outputs = session.run({alias: info.name for alias, info in signature.outputs.items()},
                              {signature.inputs[alias].name: value
                               for alias, value in feeds.items()})
    return feeds, outputs, meta_graph


def _feeds(signature, n: int) -> dict:
    """Inputs for `signature` with n rows: integers zero, the state in [0, 1) (a second moment
    is never negative), other floats in [-1, 1)."""
    rng = np.random.default_rng(n)
    feeds = {}
    for alias, info in sorted(signature.inputs.items()):
        shape = [n if d.size < 0 else d.size for d in info.tensor_shape.dim]
        dtype = tf.as_dtype(info.dtype).as_numpy_dtype
        low = 0.0 if alias == STATE else -1.0
        feeds[alias] = (np.zeros(shape, dtype) if np.issubdtype(dtype, np.integer)
                        else rng.uniform(low, 1.0, shape).astype(dtype))
    return feeds


def _ops(meta_graph) -> set[str]:
    """Op types of the graph and of every function in its library (function calls excepted)."""
    library = meta_graph.graph_def.library.function
    ops = {node.op for node in meta_graph.graph_def.node}
    ops |= {node.op for function in library for node in function.node_def}
    return ops - {function.signature.name for function in library}


def test_exports_run_as_tf_serving_runs_them(serving_exports, serving_install, tmp_path):
    from tensorflow.python.framework import op_def_registry

    exports = _all_exports(serving_exports)
    for version, export in enumerate(exports, 1):
        serving_install(export, str(tmp_path), version)
    with PolicyServer(str(tmp_path), port=0, num_versions=len(exports)) as ours, \
            grpc.insecure_channel(ours.target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for version, export in enumerate(exports, 1):
            for key in (STEP_SIGNATURE, ACTION_SIGNATURE):
                feeds, want, meta_graph = _as_tf_serving_runs(export, key)
                request = predict_pb2.PredictRequest()
                request.model_spec.name, request.model_spec.signature_name = "rl_optimizer", key
                request.model_spec.version.value = version
                for alias, value in feeds.items():
                    request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
                response = stub.Predict(request, timeout=30)
                assert set(response.outputs) == set(want), (export, key)
                for alias, value in want.items():
                    # Equal up to float32 rounding: the two runtimes may pick kernels (vectorised
                    # or not) that round the last bit differently on a few elements.
                    np.testing.assert_allclose(tf.make_ndarray(response.outputs[alias]), value,
                                               rtol=1e-6, atol=1e-7,
                                               err_msg=f"{export} {key} {alias}")
            ops = _ops(meta_graph)
            assert ops, export
            not_core = sorted(op for op in ops if op_def_registry.get(op) is None
                              or not hasattr(tf.raw_ops, op) or op in PYTHON_OPS)
            assert not not_core, f"{export}: ops TF Serving may not have: {not_core}"
