"""TLS: `feddetox certs` makes a development CA and server certificate; the coordinator then serves gRPC with
TLS and REST over HTTPS, and a client that trusts the CA talks to both while a plain client cannot."""

from __future__ import annotations

import grpc
import httpx
import pytest
from coordinator_helpers import CoordinatorProcess, Device

from feddetox.protocol import device_pb2 as pb
from server import certs


def test_tls_on_grpc_and_https_on_rest(tmp_path):
    assert certs.main(["--out", str(tmp_path / "certs"), "--host", "127.0.0.1", "--host", "localhost"]) == 0
    ca = tmp_path / "certs" / "ca.pem"
    env = {
        "FEDDETOX_TLS_CERT": str(tmp_path / "certs/server.pem"),
        "FEDDETOX_TLS_KEY": str(tmp_path / "certs/server.key"),
    }
    coordinator = CoordinatorProcess(tmp_path / "state", env=env, tls_ca=ca).start()
    try:
        with coordinator.admin() as admin:
            token = admin.post("/enrolment-tokens").json()["token"]
        with pytest.raises(httpx.HTTPError):  # the server's certificate is not trusted without the CA
            httpx.get(f"{coordinator.url}/api/v1/health", timeout=10)
        device = Device(coordinator.grpc_target, root_ca=ca.read_bytes()).enrol(token, "tls-device")
        assert device.heartbeat().poll_interval_s > 0
        device.close()
        plain = Device(coordinator.grpc_target)
        with pytest.raises(grpc.RpcError) as info:
            plain.stub.Heartbeat(pb.HeartbeatRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        plain.close()
    finally:
        assert coordinator.stop() == 0, coordinator.log()
