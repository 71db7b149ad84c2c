"""The device's gRPC client against a minimal in-test coordinator (real gRPC on loopback; see
minimal_coordinator.py): enrolment, credentials, retries, resumable download, idempotent upload, TLS."""

from __future__ import annotations

import os
import socket

import pytest
from edge_helpers import FAST
from minimal_coordinator import CoordinatorState, MinimalCoordinator, RecordingProxy, Round

from edge_client.state import Credential, PendingUpdate
from edge_client.transport import CoordinatorClient, RetryPolicy
from feddetox.adapters import sha256_bytes
from feddetox.errors import AuthError, ChecksumError, ConfigError, UnavailableError, UpdateRejected
from feddetox.sanitize import SanitizeCounts

BLOB = os.urandom(20_000)


def _client(server, sleeps=None, **kwargs) -> CoordinatorClient:
    return CoordinatorClient(server.address, retry=FAST, sleep=(sleeps if sleeps is not None else []).append, **kwargs)


def _update(blob: bytes, key: str = "k" * 32) -> PendingUpdate:
    return PendingUpdate(
        assignment_id="r1-dev-1",
        run_id="run-1",
        round_index=1,
        idempotency_key=key,
        sha256=sha256_bytes(blob),
        size_bytes=len(blob),
        num_examples=7,
        base_adapter_version=0,
        metrics={"loss": 0.69},
        sanitization=SanitizeCounts(8, 1, 1, 0, (7, 0, 0, 0, 0, 0, 0, 0, 0, 1)),
    )


def test_enrol_once_then_calls_carry_the_credential(coordinator):
    with _client(coordinator) as client:
        credential = client.enrol("token-a", device_name="pi-1")
        assert credential.device_id == "dev-1" and credential.coordinator == coordinator.address
        assert client.heartbeat("idle") == 0
        assert coordinator.state.heartbeats == [("dev-1", "idle")]
    with _client(coordinator) as again, pytest.raises(AuthError, match="already used") as info:
        again.enrol("token-a", device_name="pi-2")
    assert coordinator.address in str(info.value)
    with _client(coordinator) as wrong, pytest.raises(AuthError, match="token is wrong"):
        wrong.enrol("no-such-token", device_name="pi-3")


def test_a_wrong_secret_is_refused_with_a_hint(coordinator):
    with _client(coordinator) as client:
        device_id = client.enrol("token-a", device_name="pi-1").device_id
        client.credential = Credential(device_id, "not-the-secret")
        with pytest.raises(AuthError, match="enrol again"):
            client.heartbeat()


def test_calls_before_enrolment_are_refused_locally(coordinator):
    with _client(coordinator) as client, pytest.raises(AuthError, match="not enrolled"):
        client.heartbeat()


def test_unreachable_coordinator_is_named_after_bounded_retries():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    sleeps: list[float] = []
    client = CoordinatorClient(f"127.0.0.1:{port}", retry=FAST, sleep=sleeps.append)
    with pytest.raises(UnavailableError, match=f"coordinator at 127.0.0.1:{port} .*unreachable"):
        client.enrol("token-a", device_name="pi-1")
    assert len(sleeps) == FAST.max_attempts - 1
    with pytest.raises(ConfigError, match="HOST:PORT"):
        CoordinatorClient("no-port-here")


def test_transient_failures_are_retried(coordinator):
    coordinator.state.faults.unavailable_calls = 2
    sleeps: list[float] = []
    with _client(coordinator, sleeps) as client:
        client.enrol("token-a", device_name="pi-1")
    assert len(sleeps) == 2


def test_backoff_is_exponential_and_bounded():
    from edge_client.transport import RetryPolicy

    policy = RetryPolicy(initial_s=0.5, multiplier=2.0, max_delay_s=3.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    # a device that has failed thousands of times waits the cap, it does not overflow a float
    assert policy.delay(5000) == 3.0
    assert RetryPolicy(initial_s=0.0, max_delay_s=0.0).delay(1025) == 0.0
    # --give-up-after S: no more tries than fit in S seconds of waiting
    assert [policy.within(s).max_attempts for s in (0, 0.5, 1.4, 1.5, 100)] == [1, 2, 2, 3, 8]


def test_get_task_becomes_an_assignment(coordinator):
    coordinator.state.round = Round(adapter=BLOB, guardian_id="g1", guardian_threshold=-1.0, policy="drop")
    with _client(coordinator) as client:
        client.enrol("token-a", device_name="pi-1")
        assignment, _ = client.get_task(model_sha256=["abc"], guardian_ids=["g1"])
    assert assignment.assignment_id == "r1-dev-1" and assignment.sanitization_policy == "drop"
    assert assignment.guardian_threshold is None and assignment.adapter_sha256 == sha256_bytes(BLOB)
    assert assignment.lora.target_modules == ("q_proj", "v_proj") and assignment.training.local_steps == 2


def test_broken_download_resumes_from_the_partial_file(coordinator, tmp_path):
    coordinator.state.round = Round(adapter=BLOB)
    coordinator.state.faults.broken_downloads, coordinator.state.faults.break_after_chunks = 2, 2
    with _client(coordinator) as client:
        client.enrol("token-a", device_name="pi-1")
        assignment, _ = client.get_task()
        seen: list[int] = []
        data = client.download_adapter(assignment, tmp_path / "a.partial", progress=lambda d, t: seen.append(d))
    assert data == BLOB
    assert coordinator.state.download_offsets == [0, 8192, 16384]
    assert seen[-1] == len(BLOB)


def test_download_resumes_after_the_connection_is_cut(coordinator, tmp_path):
    """A TCP-level cut (the proxy drops every connection after 200 kB) rather than a server-side abort.

    How much of the first 200 kB reaches the partial file depends on what the client's gRPC had handed to the
    application before the reset (on a loaded machine: sometimes nothing, the reset drops what the socket had
    queued), so the retry may start at 0 or past it; either way it starts at a whole chunk inside the blob and the
    download completes intact. Resuming from exactly the partial file's size is checked by the server-side fault
    test above, whose offsets do not depend on the machine.
    """
    blob = os.urandom(400_000)
    coordinator.state.round = Round(adapter=blob)
    coordinator.state.chunk_bytes = 16_000
    proxy = RecordingProxy(coordinator.port, cut_after_received=200_000)
    # small real waits: after a cut, gRPC needs a moment to open a new connection
    retry = RetryPolicy(initial_s=0.05, multiplier=2.0, max_delay_s=1.0, max_attempts=12)
    try:
        with CoordinatorClient(proxy.address, retry=retry) as client:
            client.enrol("token-a", device_name="pi-1")
            assignment, _ = client.get_task()
            assert client.download_adapter(assignment, tmp_path / "a.partial") == blob
    finally:
        proxy.close()
    first, *resumed = coordinator.state.download_offsets
    assert first == 0 and resumed, "the cut did not make the client retry"
    assert all(offset % 16_000 == 0 and offset < len(blob) for offset in resumed), resumed


def test_download_resumes_after_a_restart(coordinator, tmp_path):
    coordinator.state.round = Round(adapter=BLOB)
    partial = tmp_path / "a.partial"
    partial.write_bytes(BLOB[:5000])  # what an earlier process fetched before it stopped
    with _client(coordinator) as client:
        client.enrol("token-a", device_name="pi-1")
        assignment, _ = client.get_task()
        assert client.download_adapter(assignment, partial) == BLOB
    assert coordinator.state.download_offsets == [5000]


def test_a_corrupt_partial_file_is_detected_and_removed(coordinator, tmp_path):
    coordinator.state.round = Round(adapter=BLOB)
    partial = tmp_path / "a.partial"
    partial.write_bytes(b"\0" * 5000)
    with _client(coordinator) as client:
        client.enrol("token-a", device_name="pi-1")
        assignment, _ = client.get_task()
        with pytest.raises(ChecksumError, match="sha256"):
            client.download_adapter(assignment, partial)
        assert not partial.exists()
        assert client.download_adapter(assignment, partial) == BLOB


def test_upload_in_chunks_retried_after_a_lost_ack_stores_one_update(coordinator):
    coordinator.state.faults.lost_acks = 1
    blob = os.urandom(10_000)
    with _client(coordinator) as client:
        client.enrol("token-a", device_name="pi-1")
        receipt = client.upload_update(_update(blob), blob, chunk_bytes=4096)
    assert receipt.duplicate and receipt.update_id == "u1" and receipt.sha256 == sha256_bytes(blob)
    assert len(coordinator.state.updates) == 1
    stored = coordinator.state.updates["k" * 32]
    assert stored.blob == blob and stored.header.num_examples == 7
    assert list(stored.header.sanitization.score_histogram) == [7, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    assert coordinator.state.upload_attempts == [("k" * 32, sha256_bytes(blob))] * 2


def test_a_different_update_under_a_used_key_is_refused(coordinator):
    first, second = os.urandom(1000), os.urandom(1000)
    with _client(coordinator) as client:
        client.enrol("token-a", device_name="pi-1")
        client.upload_update(_update(first), first)
        with pytest.raises(UpdateRejected, match="refused the update"):
            client.upload_update(_update(second), second)
    assert coordinator.state.updates["k" * 32].blob == first


def test_tls_with_a_ca_file(tls_files, tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_bytes(tls_files["ca"])
    state = CoordinatorState(tokens={"token-a"})
    with MinimalCoordinator(state, tls=(tls_files["key"], tls_files["cert"])) as server:
        with CoordinatorClient(server.address, ca_file=ca, retry=FAST, sleep=lambda s: None) as client:
            assert client.enrol("token-a", device_name="pi-1").device_id == "dev-1"
        with CoordinatorClient(server.address, retry=FAST, sleep=lambda s: None) as plain:
            with pytest.raises(UnavailableError):
                plain.enrol("token-b", device_name="pi-2")
    with pytest.raises(ConfigError, match="CA file not found"):
        CoordinatorClient("localhost:1", ca_file=tmp_path / "missing.pem")
