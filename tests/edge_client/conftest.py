"""Fixtures of the edge client's tests: a minimal in-test coordinator on loopback, fast retries."""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from minimal_coordinator import CoordinatorState, MinimalCoordinator  # noqa: E402

from edge_client.transport import RetryPolicy  # noqa: E402

#: retries without waiting: the tests count tries, they never depend on timing
FAST = RetryPolicy(initial_s=0.0, multiplier=2.0, max_delay_s=0.0, max_attempts=4)


@pytest.fixture
def coordinator():
    with MinimalCoordinator(CoordinatorState(tokens={"token-a", "token-b"})) as server:
        yield server


@pytest.fixture
def no_sleep():
    waits: list[float] = []
    return waits.append


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory) -> dict[str, bytes]:
    """A throwaway CA and a certificate for `localhost` signed by it (PEM bytes)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "feddetox test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return {
        "ca": ca.public_bytes(pem),
        "cert": cert.public_bytes(pem),
        "key": key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    }
