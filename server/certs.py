"""`feddetox certs`: a development CA and a server certificate signed by it, for TLS on gRPC and HTTPS on REST.

feddetox certs --out ./certs --host 127.0.0.1 --host localhost
FEDDETOX_TLS_CERT=./certs/server.pem FEDDETOX_TLS_KEY=./certs/server.key feddetox coordinator serve

Devices trust `ca.pem` (gRPC: `grpc.ssl_channel_credentials(root_certificates=...)`). For development only:
a production deployment brings certificates from its own CA.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from feddetox.errors import ConfigError


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "FedDetox development"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])  # fmt: skip


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_certs(out: Path, hosts: list[str], *, days: int = 365) -> dict[str, Path]:
    """Write ca.pem, ca.key, server.pem, server.key into `out`; returns their paths."""
    if not hosts:
        raise ConfigError("--host: at least one host name or IP address for the server certificate")
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("FedDetox development CA"))
        .issuer_name(_name("FedDetox development CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )  # digital_signature, key_cert_sign, crl_sign
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {name: out / name for name in ("ca.pem", "ca.key", "server.pem", "server.key")}
    paths["ca.pem"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["server.pem"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    for name, private in (("ca.key", ca_key), ("server.key", key)):
        paths[name].write_bytes(_pem_key(private))
        os.chmod(paths[name], 0o600)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="feddetox certs", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("./certs"), help="folder for ca.pem/key, server.pem/key")
    parser.add_argument(
        "--host", action="append", help="host name or IP of the server (repeat); default 127.0.0.1, localhost"
    )
    parser.add_argument("--days", type=int, default=365)
    args = parser.parse_args(argv)
    try:
        paths = make_certs(args.out, args.host or ["127.0.0.1", "localhost"], days=args.days)
    except ConfigError as exc:
        print(f"feddetox certs: {exc}")
        return 2
    for name, path in paths.items():
        print(f"{name}: {path}")
    print(f"serve with FEDDETOX_TLS_CERT={paths['server.pem']} FEDDETOX_TLS_KEY={paths['server.key']}")
    return 0
