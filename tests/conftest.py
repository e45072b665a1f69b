"""Shared fixtures: small, named for what they give; each stage's block below its header."""

import contextlib
import os
import shutil
import socket
import subprocess
import types

import pytest

# --- serving: rl_optimizer/serving (issue 6) ------------------------------------------------

SERVING_BACKENDS = ("rl-optimizer serve", "tensorflow_model_server")


@pytest.fixture(scope="session")
def serving_policies():
    """Two different random policies: a server's version 1 and the one hot-reloaded over it.

    The first one's output layer is scaled down: small actions keep a training run stable (a
    raw random actor drives log_lr to its bound and training chaotic, which amplifies round-off
    and would make "remote equals in-process" a test of chaos).
    """
    from rl_optimizer import LearnedPolicy

    raw = LearnedPolicy.random(seed=0)
    kernels = [k.numpy() for k in raw.kernels]
    kernels[-1] = kernels[-1] * 0.1
    tame = LearnedPolicy(kernels, [b.numpy() for b in raw.biases], raw.feature_config)
    return tame, LearnedPolicy.random(seed=1)


@pytest.fixture(scope="session")
def serving_exports(tmp_path_factory, serving_policies) -> list[str]:
    """Version directories of `serving_policies`, exported once, to copy into model dirs."""
    from rl_optimizer import export_policy

    root = tmp_path_factory.mktemp("serving_exports")
    return [export_policy(p, str(root / str(i))) for i, p in enumerate(serving_policies)]


def _install_version(version_dir: str, model_dir: str, version: int,
                     name: str = "rl_optimizer") -> str:
    """Copies a version in as `<model_dir>/<name>/<version>`, atomically (copy, then rename)."""
    target = os.path.join(model_dir, name, str(version))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copytree(version_dir, target + ".partial")
    os.rename(target + ".partial", target)
    return target


@pytest.fixture(scope="session")
def serving_install():
    """`install(version_dir, model_dir, version)`: a new version appears atomically."""
    return _install_version


@pytest.fixture(scope="module", params=SERVING_BACKENDS)
def serving_backend(request) -> str:
    """Our server, and stock TF Serving where its binary is installed."""
    if request.param == "tensorflow_model_server" and shutil.which(request.param) is None:
        pytest.skip("tensorflow_model_server not on PATH")
    return request.param


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def free_port():
    """`free_port() -> int`: a port free on loopback now (picked at test time, never fixed)."""
    return _free_port


@contextlib.contextmanager
def _running_server(backend: str, model_dir: str, **options):
    """Yields `host:port` of a server on loopback over `model_dir`; options: ours only."""
    from rl_optimizer.benchmarks.serving import terminate
    from rl_optimizer.serving import PolicyClient, PolicyServer

    if backend == "rl-optimizer serve":
        server = PolicyServer(model_dir, port=0, poll_seconds=0.1, **options).start()
        try:
            yield server.target
        finally:
            server.stop(grace=0)
        return
    port = _free_port()
    with open(model_dir.rstrip("/") + ".log", "wb") as log:
        process = subprocess.Popen(
            ["tensorflow_model_server", f"--port={port}", "--rest_api_port=0",
             "--model_name=rl_optimizer", f"--model_base_path={model_dir}/rl_optimizer",
             "--file_system_poll_wait_seconds=1", "--max_num_load_retries=0"],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        with PolicyClient(f"127.0.0.1:{port}") as client:
            client.wait_until_available(timeout=60)
        yield f"127.0.0.1:{port}"
    finally:
        terminate(process, 10)


SERVING_MAX_MESSAGE_BYTES = 8 << 20
"""Our test servers' request limit: 8 MiB, so a 1M-coordinate step (16 MB) is oversized."""


@pytest.fixture(scope="module")
def policy_server(serving_backend, serving_exports, tmp_path_factory):
    """A server (`.target`, `.backend`, `.model_dir`) serving `serving_policies[0]` as version 1."""
    model_dir = str(tmp_path_factory.mktemp("served_models"))
    _install_version(serving_exports[0], model_dir, 1)
    with _running_server(serving_backend, model_dir,
                         **({} if serving_backend != SERVING_BACKENDS[0] else
                            {"max_message_bytes": SERVING_MAX_MESSAGE_BYTES})) as target:
        yield types.SimpleNamespace(target=target, backend=serving_backend, model_dir=model_dir)


@pytest.fixture
def start_policy_server(serving_backend):
    """`start(model_dir, **our_options) -> target`: a server of its own, stopped after the test."""
    with contextlib.ExitStack() as stack:
        yield lambda model_dir, **options: stack.enter_context(
            _running_server(serving_backend, str(model_dir), **options))


def _certificate(subject: str, key, issuer=None, issuer_key=None, ca: bool = False):
    """A certificate for `subject` (SAN localhost, 127.0.0.1), signed by `issuer` or itself."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name)
               .issuer_name(issuer.subject if issuer else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(hours=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    return builder.sign(issuer_key or key, hashes.SHA256())


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """Certificates made for this run: `<who>_cert`/`<who>_key` paths and `<who>_cert_pem`/
    `<who>_key_pem` bytes for who in ca, server, client (both signed by ca) and rogue (a client
    certificate signed by another CA)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    root = tmp_path_factory.mktemp("tls")
    keys = {who: ec.generate_private_key(ec.SECP256R1())
            for who in ("ca", "other_ca", "server", "client", "rogue")}
    ca = _certificate("test CA", keys["ca"], ca=True)
    other_ca = _certificate("other CA", keys["other_ca"], ca=True)
    certs = {"ca": ca,
             "server": _certificate("localhost", keys["server"], ca, keys["ca"]),
             "client": _certificate("client", keys["client"], ca, keys["ca"]),
             "rogue": _certificate("rogue", keys["rogue"], other_ca, keys["other_ca"])}
    files = types.SimpleNamespace()
    for who, cert in certs.items():
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = keys[who].private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())
        for kind, pem in (("cert", cert_pem), ("key", key_pem)):
            path = root / f"{who}_{kind}.pem"
            path.write_bytes(pem)
            setattr(files, f"{who}_{kind}", str(path))
            setattr(files, f"{who}_{kind}_pem", pem)
    return files


# --- keras optimizer: rl_optimizer/keras_optimizer.py (issue 5) -----------------------------


@pytest.fixture(scope="session")
def exported_policy(tmp_path_factory) -> str:
    """Version directory of `LearnedPolicy.random(hidden=(16,), seed=0)`, exported once."""
    from rl_optimizer import LearnedPolicy, export_policy

    root = tmp_path_factory.mktemp("exported_policy")
    return export_policy(LearnedPolicy.random(hidden=(16,), seed=0), str(root))


# --- training: rl_optimizer/train.py, agent.py (issue 3) ------------------------------------


@pytest.fixture(scope="session")
def smoke_config_path() -> str:
    """configs/smoke.yaml: a run that trains in seconds."""
    from rl_optimizer.config import CONFIG_DIR

    return os.path.join(CONFIG_DIR, "smoke.yaml")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, smoke_config_path):
    """A finished smoke run, trained once: `.config`, `.run_dir`, `.result` (a TrainResult).

    Read it, never write to it: tests that change a run work on a copy or a run of their own.
    """
    from rl_optimizer.config import load_config
    from rl_optimizer.train import train

    config = load_config(smoke_config_path)
    run_dir = str(tmp_path_factory.mktemp("smoke_run") / "run")
    result = train(config, run_dir, progress=False)
    return types.SimpleNamespace(config=config, run_dir=run_dir, result=result)
