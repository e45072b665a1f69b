"""TLS material for the server and the client, checked before gRPC sees it.

gRPC reports a certificate that does not match its key as "Failed to bind to address" on the
server and as an unreachable server on the client; checking the PEM files first turns both into
an error naming the files. Mutual TLS: the server verifies client certificates against a CA
(`--tls-client-ca`), the client presents its own (`certificate_chain=`, `private_key=`).
"""

from __future__ import annotations

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization


def read_pem(path: str, what: str) -> bytes:
    """The bytes of `path`; an error naming `what` (a flag, an argument) if it can't be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{what} {path!r}: {e.strerror}") from e


def certificates(pem: bytes, what: str) -> list[x509.Certificate]:
    """The PEM certificates in `pem` (at least one), or an error naming `what`."""
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as e:
        raise ValueError(f"{what} holds no PEM certificate ({e})") from e


def check_key_pair(certificate_chain: bytes, private_key: bytes, cert_what: str,
                   key_what: str) -> None:
    """Raises ValueError unless `private_key` is the key of the chain's first certificate."""
    leaf = certificates(certificate_chain, cert_what)[0]
    try:
        key = serialization.load_pem_private_key(private_key, password=None)
    except (ValueError, TypeError) as e:  # TypeError: an encrypted key
        raise ValueError(f"{key_what} is not an unencrypted PEM private key ({e})") from e
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise ValueError(f"{key_what} is not the private key of the certificate in {cert_what} "
                         f"(subject {leaf.subject.rfc4514_string()})")


def server_credentials(cert_file: str, key_file: str,
                       client_ca_file: str | None = None) -> grpc.ServerCredentials:
    """Server credentials; with `client_ca_file`, clients must present a certificate it signed."""
    cert = read_pem(cert_file, "--tls-cert")
    key = read_pem(key_file, "--tls-key")
    check_key_pair(cert, key, f"--tls-cert {cert_file!r}", f"--tls-key {key_file!r}")
    client_ca = None
    if client_ca_file is not None:
        client_ca = read_pem(client_ca_file, "--tls-client-ca")
        certificates(client_ca, f"--tls-client-ca {client_ca_file!r}")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def channel_credentials(root_certificates: bytes | None = None,
                        certificate_chain: bytes | None = None,
                        private_key: bytes | None = None) -> grpc.ChannelCredentials:
    """Client credentials; `certificate_chain` and `private_key` (both or neither) for mTLS."""
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("a client certificate needs both certificate_chain and private_key")
    if root_certificates is not None:
        certificates(root_certificates, "root_certificates")
    if certificate_chain is not None:
        check_key_pair(certificate_chain, private_key, "certificate_chain", "private_key")
    return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
