"""The device service over real gRPC on loopback, against the coordinator as a process.

The devices are in-test gRPC clients (coordinator_helpers.Device) that stand in for the edge client.
"""

from __future__ import annotations

import grpc
import httpx
import numpy as np
import pytest
from coordinator_helpers import CoordinatorProcess, Device, create_run, make_adapter, reason_of, wait_for

from feddetox.adapters import sha256_bytes, to_bytes
from feddetox.protocol import device_pb2 as pb

Code = grpc.StatusCode


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    process = CoordinatorProcess(tmp_path_factory.mktemp("grpc-coordinator")).start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def admin(coordinator):
    with coordinator.admin() as client:
        yield client


def token(admin: httpx.Client) -> str:
    response = admin.post("/enrolment-tokens", json={"note": "test"})
    assert response.status_code == 201, response.text
    return response.json()["token"]


@pytest.fixture(scope="module")
def fleet(coordinator, admin):
    devices = [Device(coordinator.grpc_target).enrol(token(admin), f"grpc-dev-{i}") for i in range(3)]
    yield devices
    for d in devices:
        d.close()


@pytest.fixture
def run(admin, fleet):
    """A running run of one round that selects all three devices; stopped at the end of the test."""
    run_id = create_run(admin, make_adapter(0), rounds=1, max_update_norm=50.0)
    for d in fleet:
        d.heartbeat()
    tasks = [wait_for(d.task, what="a task") for d in fleet]
    assert {t.run_id for t in tasks} == {run_id}
    yield run_id, tasks
    admin.post(f"/runs/{run_id}/stop")


def expect(code: Code, call, reason: str | None = None) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    if reason is not None:
        assert reason_of(info.value) == reason, info.value.details()
        assert info.value.details().startswith(f"{reason}: ")
    return info.value


@pytest.fixture(scope="module")
def other_coordinator(tmp_path_factory):
    """A second coordinator for the tests that enrol extra devices (which would change the fleet's selection)."""
    env = {"FEDDETOX_DEVICE_RATE_PER_S": "0.01", "FEDDETOX_DEVICE_BURST": "3"}  # one call per 100 s after 3
    process = CoordinatorProcess(tmp_path_factory.mktemp("grpc-enrol"), env=env).start()
    yield process
    assert process.stop() == 0, process.log()


def test_enrolment_token_is_one_time(other_coordinator):
    with other_coordinator.admin() as other_admin:
        t = token(other_admin)
        device = Device(other_coordinator.grpc_target).enrol(t, "once")
        assert device.device_id and device.secret.startswith("fds_")
        expect(Code.UNAUTHENTICATED, lambda: Device(other_coordinator.grpc_target).enrol(t, "twice"))
        expect(Code.INVALID_ARGUMENT, lambda: Device(other_coordinator.grpc_target).enrol(token(other_admin), "../x"))
    assert device.heartbeat().poll_interval_s > 0


def test_a_device_over_its_rate_limit_is_refused(other_coordinator):
    with other_coordinator.admin() as other_admin:
        device = Device(other_coordinator.grpc_target).enrol(token(other_admin), "busy")
    for _ in range(3):
        device.heartbeat()
    error = expect(Code.RESOURCE_EXHAUSTED, device.heartbeat)
    assert "retry after" in error.details() and reason_of(error) == "rate_limited"
    device.close()


def test_calls_need_the_device_credential(coordinator, fleet):
    stranger = Device(coordinator.grpc_target)
    expect(Code.UNAUTHENTICATED, stranger.heartbeat)
    stranger.device_id, stranger.secret = fleet[0].device_id, "fds_wrong"
    expect(Code.UNAUTHENTICATED, stranger.task)
    details = expect(Code.UNAUTHENTICATED, stranger.heartbeat).details()
    assert fleet[0].device_id in details


def test_download_resumes_from_an_offset(fleet, run):
    run_id, tasks = run
    device, ref = fleet[0], tasks[0].global_adapter
    whole, sha, total = device.download(run_id, ref.version)
    assert sha256_bytes(whole) == sha == ref.sha256 and total == len(whole) == ref.size_bytes
    assert whole == to_bytes(make_adapter(0))
    head, _, _ = device.download(run_id, ref.version, limit_chunks=2)  # a transfer broken after two chunks
    assert len(head) == 2048  # FEDDETOX_CHUNK_SIZE=1024 in the test process
    tail, _, _ = device.download(run_id, ref.version, offset=len(head))
    assert head + tail == whole
    end, _, _ = device.download(run_id, ref.version, offset=total)
    assert end == b""
    expect(Code.INVALID_ARGUMENT, lambda: device.download(run_id, ref.version, offset=total + 1))
    expect(Code.NOT_FOUND, lambda: device.download(run_id, 99))
    expect(Code.NOT_FOUND, lambda: device.download("0" * 32, 0))


def test_upload_retry_with_the_same_key_returns_the_same_receipt(fleet, run):
    _, tasks = run
    blob = to_bytes(make_adapter(11))
    first = fleet[0].upload(tasks[0], blob, key="retry-key-1")
    again = fleet[0].upload(tasks[0], blob, key="retry-key-1")
    assert not first.duplicate and again.duplicate
    assert again.update_id == first.update_id and again.sha256 == sha256_bytes(blob)
    expect(Code.ALREADY_EXISTS, lambda: fleet[0].upload(tasks[0], to_bytes(make_adapter(12))), "already_reported")


def test_every_refusal_maps_to_its_status(coordinator, admin, fleet, run):
    run_id, tasks = run
    device, task = fleet[1], tasks[1]
    good = to_bytes(make_adapter(21))
    wrong_keys = dict(make_adapter(21), extra=np.zeros(3, np.float32))
    wrong_shape = {k: np.zeros((v.shape[0], 2), np.float32) for k, v in make_adapter(21).items()}
    nan = make_adapter(21)
    next(iter(nan.values()))[:] = np.inf
    cases = [
        (Code.INVALID_ARGUMENT, "bad_header", good, {"num_examples": 0}),
        (Code.RESOURCE_EXHAUSTED, "too_large", good, {"size_bytes": 10**12}),
        (Code.INVALID_ARGUMENT, "unknown_run", good, {"run_id": "f" * 32}),
        (Code.PERMISSION_DENIED, "not_assigned", good, {"assignment_id": tasks[2].assignment_id}),
        (Code.FAILED_PRECONDITION, "stale_base", good, {"base_adapter_version": 3}),
        (Code.INVALID_ARGUMENT, "size_mismatch", good, {"size_bytes": len(good) - 5}),
        (Code.INVALID_ARGUMENT, "checksum_mismatch", good, {"sha256": "a" * 64}),
        (Code.INVALID_ARGUMENT, "malformed", b"\x00" * 64, {}),
        (Code.INVALID_ARGUMENT, "keys", to_bytes(wrong_keys), {}),
        (Code.INVALID_ARGUMENT, "shape", to_bytes(wrong_shape), {}),
        (Code.INVALID_ARGUMENT, "dtype", to_bytes({k: v.astype(np.float16) for k, v in make_adapter(1).items()}), {}),
        (Code.INVALID_ARGUMENT, "non_finite", to_bytes(nan), {}),
        (Code.INVALID_ARGUMENT, "norm", to_bytes({k: v * 1e4 for k, v in make_adapter(21).items()}), {}),
    ]
    for code, reason, blob, header in cases:
        expect(code, lambda b=blob, h=header: device.upload(task, b, header_overrides=h), reason)
    # a message bigger than the gRPC limit (4 MiB) is refused by the transport
    expect(Code.RESOURCE_EXHAUSTED, lambda: device.upload(task, b"\x00" * (5 * 1024 * 1024), chunk=5 * 1024 * 1024))
    # the header must come first
    bad_stream = iter([pb.UploadUpdateRequest(data=b"abc")])
    expect(Code.INVALID_ARGUMENT, lambda: device.stub.UploadUpdate(bad_stream, metadata=device.metadata, timeout=30))
    refused = {d["id"]: d for d in admin.get("/devices").json()["data"]}[device.device_id]["refusals_by_reason"]
    assert {reason for _, reason, _, _ in cases} <= set(refused)
    # after the run stopped, an update is refused as too late
    admin.post(f"/runs/{run_id}/stop")
    expect(Code.FAILED_PRECONDITION, lambda: device.upload(task, good), "run_not_running")


def test_late_update_after_the_round_closed(admin, fleet, run):
    run_id, tasks = run
    for device, task in zip(fleet[:3], tasks, strict=True):
        device.upload(task, to_bytes(make_adapter(30)), key=f"late-{device.device_id}")
    wait_for(lambda: admin.get(f"/runs/{run_id}/rounds/1").json()["status"] == "closed", what="round 1 closed")
    late = fleet[0].upload(tasks[0], to_bytes(make_adapter(30)), key=f"late-{fleet[0].device_id}")
    assert late.duplicate  # the retry of an accepted update still gets its receipt
    expect(Code.FAILED_PRECONDITION, lambda: fleet[0].upload(tasks[0], to_bytes(make_adapter(31))))


def test_report_metrics(admin, fleet, run):
    run_id, tasks = run
    fleet[2].stub.ReportMetrics(
        pb.MetricsReport(
            run_id=run_id,
            round_index=1,
            assignment_id=tasks[2].assignment_id,
            metrics={"failed_steps": 1},
            sanitization=pb.SanitizationCounts(pairs_seen=4, flagged=4, dropped=4, score_histogram=[0] * 9 + [4]),
        ),
        metadata=fleet[2].metadata,
        timeout=30,
    )
    counts = admin.get(f"/runs/{run_id}/rounds/1/metrics").json()["sanitization"]
    assert counts["dropped"] == 4 and counts["score_histogram"][9] == 4
    expect(
        Code.NOT_FOUND,
        lambda: fleet[0].stub.ReportMetrics(
            pb.MetricsReport(run_id=run_id, round_index=1, assignment_id=tasks[2].assignment_id),
            metadata=fleet[0].metadata,
            timeout=30,
        ),
    )
