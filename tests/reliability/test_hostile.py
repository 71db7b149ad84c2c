"""Hostile input against a real coordinator process: each is refused with its own status and nothing is
stored (database rows and blob files are compared before and after; only the audit log may grow).

The devices are in-test gRPC clients (coordinator_helpers.Device); raw and malformed messages go through a
generic gRPC channel call, without the generated stubs' serializers.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import httpx
import numpy as np
import pytest
from coordinator_helpers import ADMIN_KEY, CoordinatorProcess, Device, create_run
from reliability_helpers import Stored, header_fields, task_of_round, upload, wide_adapter, wide_lora

from feddetox.adapters import to_bytes
from feddetox.protocol import device_pb2 as pb

pytestmark = pytest.mark.slow
REPORT_KIND = "hostile"
Code = grpc.StatusCode
SERVICE = "/" + pb.DESCRIPTOR.services_by_name["DeviceService"].full_name
TEN_KB = "x" * 10_000


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    process = CoordinatorProcess(tmp_path_factory.mktemp("hostile")).start()
    yield process
    assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def world(coordinator):
    """Two devices, round 1 of a run closed (both reported), round 2 collecting with both selected."""
    with coordinator.admin() as admin:
        tokens = [admin.post("/enrolment-tokens").json()["token"] for _ in range(3)]
        devices = [Device(coordinator.grpc_target).enrol(t, f"hostile-{i}") for i, t in enumerate(tokens[:2])]
        for d in devices:
            d.heartbeat()
        run_id = create_run(
            admin, wide_adapter(0), rounds=3, clients_per_round=2, min_clients=2, lora=wide_lora(), max_update_norm=5.0
        )
        round1 = [task_of_round(d, 1) for d in devices]
        blobs1 = [to_bytes({k: v + 0.001 * (i + 1) for k, v in wide_adapter(0).items()}) for i in range(2)]
        for d, t, b in zip(devices, round1, blobs1, strict=True):
            upload(d, t, b, key=f"{d.device_id}-r1")
        round2 = [task_of_round(d, 2) for d in devices]
        stored = Stored("", coordinator.state_dir)
        yield {
            "admin": admin,
            "devices": devices,
            "run_id": run_id,
            "round1": round1,
            "blobs1": blobs1,
            "round2": round2,
            "used_token": tokens[0],
            "fresh_token": tokens[2],
            "stored": stored,
        }
        stored.close()
        for d in devices:
            d.close()


def raw_unary(target: str, method: str, payload: bytes, metadata=()) -> bytes:
    with grpc.insecure_channel(target) as channel:
        return channel.unary_unary(f"{SERVICE}/{method}")(payload, metadata=metadata, timeout=30)


def raw_stream(target: str, method: str, payloads: list[bytes], metadata=()) -> bytes:
    with grpc.insecure_channel(target) as channel:
        return channel.stream_unary(f"{SERVICE}/{method}")(iter(payloads), metadata=metadata, timeout=30)


def refused(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def reason(error: grpc.RpcError) -> str:
    return dict(error.trailing_metadata() or ()).get("x-feddetox-reason", "")


def _adapter(**changes) -> dict[str, np.ndarray]:
    adapter = {k: v + 0.001 for k, v in wide_adapter(0).items()}
    adapter.update(changes)
    return adapter


def test_hostile_grpc_input_is_refused_and_nothing_is_stored(coordinator, world, report):
    devices, stored = world["devices"], world["stored"]
    d0, t0 = devices[0], world["round2"][0]
    good = to_bytes(_adapter())
    first_key = next(iter(wide_adapter(0)))
    nan = _adapter(**{first_key: np.full_like(wide_adapter(0)[first_key], np.nan)})
    inf = _adapter(**{first_key: np.full_like(wide_adapter(0)[first_key], np.inf)})
    wrong_keys = {**_adapter(), "base_model.model.lm_head.lora_A.weight": np.zeros((8, 128), np.float32)}
    wrong_shape = {k: np.zeros((v.shape[1], v.shape[0]), np.float32) for k, v in _adapter().items()}
    far = {k: v * 1000 for k, v in _adapter().items()}
    stranger = Device(coordinator.grpc_target)
    liar = Device(coordinator.grpc_target)
    liar.device_id, liar.secret = d0.device_id, "fds_not-the-secret"
    pathlike = Device(coordinator.grpc_target)
    pathlike.device_id, pathlike.secret = "../../etc/passwd", d0.secret
    longid = Device(coordinator.grpc_target)
    longid.device_id, longid.secret = "a" * 4000, d0.secret
    old_task, old_blob = world["round1"][0], world["blobs1"][0]

    def up(blob: bytes = good, task=t0, **header):
        fields = header_fields(task, blob, key=header.pop("key", "hostile-key"))
        fields.update(header)

        def messages():
            yield pb.UploadUpdateRequest(header=pb.UpdateHeader(**fields))
            for start in range(0, len(blob), 1024):
                yield pb.UploadUpdateRequest(data=blob[start : start + 1024])

        return d0.stub.UploadUpdate(messages(), metadata=d0.metadata, timeout=60)

    header_bytes = pb.UploadUpdateRequest(
        header=pb.UpdateHeader(**header_fields(t0, good, key="raw"))
    ).SerializeToString()
    cases: list[tuple[str, Callable[[], object], Code, str]] = [
        ("no credentials (Heartbeat)", stranger.heartbeat, Code.UNAUTHENTICATED, ""),
        ("no credentials (UploadUpdate)", lambda: upload(stranger, t0, good, key="k-none"), Code.UNAUTHENTICATED, ""),
        ("wrong secret (GetTask)", liar.task, Code.UNAUTHENTICATED, ""),
        ("wrong secret (DownloadAdapter)", lambda: liar.download(world["run_id"], 0), Code.UNAUTHENTICATED, ""),
        ("wrong secret (UploadUpdate)", lambda: upload(liar, t0, good, key="k-liar"), Code.UNAUTHENTICATED, ""),
        (
            "replayed enrolment token",
            lambda: Device(coordinator.grpc_target).enrol(world["used_token"], "again"),
            Code.UNAUTHENTICATED,
            "",
        ),
        (
            "unknown enrolment token",
            lambda: Device(coordinator.grpc_target).enrol("fdt_" + "z" * 40, "guess"),
            Code.UNAUTHENTICATED,
            "",
        ),
        (
            "malformed protobuf (Enrol, raw bytes)",
            lambda: raw_unary(coordinator.grpc_target, "Enrol", b"\xff" * 64),
            Code.INTERNAL,
            "",
        ),
        (
            "malformed protobuf (UploadUpdate stream, raw bytes)",
            lambda: raw_stream(
                coordinator.grpc_target,
                "UploadUpdate",
                [header_bytes, b"\x0a\xff\xff\xff\xff\x0f"],
                metadata=d0.metadata,
            ),
            Code.INTERNAL,
            "",
        ),
        (
            "UploadUpdate without a header first",
            lambda: d0.stub.UploadUpdate(iter([pb.UploadUpdateRequest(data=b"abc")]), metadata=d0.metadata, timeout=30),
            Code.INVALID_ARGUMENT,
            "",
        ),
        (
            "two headers in one UploadUpdate",
            lambda: raw_stream(
                coordinator.grpc_target, "UploadUpdate", [header_bytes, header_bytes], metadata=d0.metadata
            ),
            Code.INVALID_ARGUMENT,
            "",
        ),
        (
            "oversized gRPC message (5 MiB chunk)",
            lambda: upload(d0, t0, b"\0" * (5 << 20), key="big", chunk=5 << 20),
            Code.RESOURCE_EXHAUSTED,
            "",
        ),
        ("oversized announced update (1 TB)", lambda: up(size_bytes=10**12), Code.RESOURCE_EXHAUSTED, "too_large"),
        ("more bytes than announced", lambda: up(size_bytes=len(good) - 100), Code.INVALID_ARGUMENT, "size_mismatch"),
        ("bytes that do not match the sha256", lambda: up(sha256="0" * 64), Code.INVALID_ARGUMENT, "checksum_mismatch"),
        ("not a safetensors file", lambda: up(b"\x07" * 4096), Code.INVALID_ARGUMENT, "malformed"),
        ("NaN values", lambda: up(to_bytes(nan)), Code.INVALID_ARGUMENT, "non_finite"),
        ("Inf values", lambda: up(to_bytes(inf)), Code.INVALID_ARGUMENT, "non_finite"),
        ("wrong keys", lambda: up(to_bytes(wrong_keys)), Code.INVALID_ARGUMENT, "keys"),
        ("wrong shapes", lambda: up(to_bytes(wrong_shape)), Code.INVALID_ARGUMENT, "shape"),
        (
            "wrong dtype (float16)",
            lambda: up(to_bytes({k: v.astype(np.float16) for k, v in _adapter().items()})),
            Code.INVALID_ARGUMENT,
            "dtype",
        ),
        ("update norm x1000 beyond the bound", lambda: up(to_bytes(far)), Code.INVALID_ARGUMENT, "norm"),
        ("negative num_examples", lambda: up(num_examples=-5), Code.INVALID_ARGUMENT, "bad_header"),
        ("non-finite metric", lambda: up(metrics={"dpo_loss": float("nan")}), Code.INVALID_ARGUMENT, "bad_header"),
        (
            "replay of round 1's update under a new key",
            lambda: up(old_blob, task=old_task, key="replay-new"),
            Code.FAILED_PRECONDITION,
            "round_closed",
        ),
        (
            "round 1's assignment sent as round 2",
            lambda: up(old_blob, task=old_task, key="replay-r2", round_index=2),
            Code.PERMISSION_DENIED,
            "not_assigned",
        ),
        (
            "round 1's update on round 2's assignment (stale base)",
            lambda: up(old_blob, base_adapter_version=0),
            Code.FAILED_PRECONDITION,
            "stale_base",
        ),
        (
            "another device's assignment",
            lambda: up(assignment_id=world["round2"][1].assignment_id),
            Code.PERMISSION_DENIED,
            "not_assigned",
        ),
        ("path-like idempotency key", lambda: up(key="../../etc/passwd"), Code.INVALID_ARGUMENT, "bad_header"),
        ("10 kB idempotency key", lambda: up(key=TEN_KB), Code.INVALID_ARGUMENT, "bad_header"),
        ("path-like run id in an update", lambda: up(run_id="../../etc"), Code.INVALID_ARGUMENT, "unknown_run"),
        ("10 kB run id in an update", lambda: up(run_id=TEN_KB), Code.INVALID_ARGUMENT, "unknown_run"),
        (
            "path-like assignment id",
            lambda: up(assignment_id="../../etc/passwd"),
            Code.PERMISSION_DENIED,
            "not_assigned",
        ),
        ("path-like run id in a download", lambda: d0.download("../../etc", 0), Code.NOT_FOUND, ""),
        ("10 kB run id in a download", lambda: d0.download(TEN_KB, 0), Code.NOT_FOUND, ""),
        ("negative download offset", lambda: d0.download(world["run_id"], 0, offset=-1), Code.INVALID_ARGUMENT, ""),
        ("path-like device id", pathlike.heartbeat, Code.UNAUTHENTICATED, ""),
        ("4 kB device id", longid.heartbeat, Code.UNAUTHENTICATED, ""),
        (
            "path-like device name at enrolment",
            lambda: Device(coordinator.grpc_target).enrol(world["fresh_token"], "../../etc"),
            Code.INVALID_ARGUMENT,
            "",
        ),
        (
            "10 kB device name at enrolment",
            lambda: Device(coordinator.grpc_target).enrol(world["fresh_token"], TEN_KB),
            Code.INVALID_ARGUMENT,
            "",
        ),
    ]
    refused_count = 0
    for name, call, code, why in cases:
        # what is stored: rows and content-addressed blobs. A refused stream's temp file is removed by its
        # handler, which gRPC may still be running when the client already holds the status (a stream that
        # fails to parse is ended by gRPC itself); tests/server/test_blob_spool.py checks the removal
        before = stored.snapshot(in_flight=False)
        error = refused(call)
        after = stored.snapshot(in_flight=False)
        got = f"{error.code().name}{' ' + reason(error) if reason(error) else ''}"
        ok = error.code() == code and (not why or reason(error) == why) and after == before
        report.add(
            name,
            f"refused: {got}; nothing stored" if ok else f"got {got}: {error.details()[:200]}",
            ok=ok,
            status=error.code().name,
            reason=reason(error),
            stored_nothing=after == before,
        )
        refused_count += ok
        assert error.code() == code, f"{name}: {error.code()} {error.details()}"
        assert not why or reason(error) == why, f"{name}: reason {reason(error)!r}, expected {why!r}"
        assert after == before, f"{name} stored something: {before} -> {after}"
    # the replay of round 1's update under its own key gets round 1's receipt back, nothing new
    before = stored.snapshot()
    again = upload(d0, old_task, old_blob, key=f"{d0.device_id}-r1")
    assert again.duplicate and stored.snapshot() == before
    report.add(
        "replay of round 1's update under its own key",
        "answered with round 1's receipt (duplicate=true); nothing stored, counted once",
        status="OK duplicate",
        stored_nothing=True,
    )
    # the devices' refusals are in the audit log, by reason
    listed = {d["id"]: d for d in world["admin"].get("/devices").json()["data"]}[d0.device_id]
    assert {"non_finite", "norm", "keys", "shape", "round_closed", "stale_base"} <= set(listed["refusals_by_reason"])
    assert refused_count == len(cases)
    for d in (stranger, liar, pathlike, longid):
        d.close()


def test_hostile_rest_input_is_refused_and_nothing_is_stored(coordinator, world, report):
    stored, run_id = world["stored"], world["run_id"]
    base = f"{coordinator.url}/api/v1"
    key = {"X-Admin-Key": ADMIN_KEY}
    json_type = {**key, "Content-Type": "application/json"}
    good_config = {"name": "x", "base_model": "m", "lora": wide_lora()}
    created = create_run(world["admin"], wide_adapter(0), start=False, lora=wide_lora())  # not started
    nan_adapter = {k: np.full_like(v, np.nan) for k, v in wide_adapter(0).items()}
    with httpx.Client(timeout=30) as http:
        cases = [
            ("no admin key (POST /runs)", lambda: http.post(f"{base}/runs", json=good_config), 401),
            (
                "wrong admin key (POST /runs)",
                lambda: http.post(f"{base}/runs", json=good_config, headers={"X-Admin-Key": "wrong-key-0123456789"}),
                401,
            ),
            ("no admin key (POST /enrolment-tokens)", lambda: http.post(f"{base}/enrolment-tokens"), 401),
            ("no admin key (DELETE /runs/{id})", lambda: http.delete(f"{base}/runs/{run_id}"), 401),
            ("no admin key (POST /runs/{id}/stop)", lambda: http.post(f"{base}/runs/{run_id}/stop"), 401),
            ("malformed JSON", lambda: http.post(f"{base}/runs", content=b'{"name": "x",', headers=json_type), 422),
            ("JSON of the wrong type", lambda: http.post(f"{base}/runs", content=b"[1, 2]", headers=json_type), 422),
            ("not UTF-8", lambda: http.post(f"{base}/runs", content=b'{"name": "\xff\xfe"}', headers=json_type), 400),
            (
                "path-like run name",
                lambda: http.post(f"{base}/runs", json={**good_config, "name": "../../etc"}, headers=key),
                422,
            ),
            (
                "10 kB run name",
                lambda: http.post(f"{base}/runs", json={**good_config, "name": TEN_KB}, headers=key),
                422,
            ),
            (
                "path-like base model",
                lambda: http.post(f"{base}/runs", json={**good_config, "base_model": "../../etc/passwd"}, headers=key),
                422,
            ),
            (
                "oversized body (5 MiB)",
                lambda: http.post(f"{base}/runs", content=b" " * (5 << 20), headers=json_type),
                413,
            ),
            ("path-like run id", lambda: http.get(f"{base}/runs/..%2F..%2Fetc%2Fpasswd"), 404),
            ("10 kB run id", lambda: http.get(f"{base}/runs/{TEN_KB}"), 422),
            ("path-like adapter version", lambda: http.get(f"{base}/runs/{run_id}/adapters/..%2F..%2Fetc"), 404),
            (
                "not a safetensors starting adapter",
                lambda: http.put(f"{base}/runs/{created}/adapter", content=b"\0" * 100, headers=key),
                422,
            ),
            (
                "starting adapter with NaN values",
                lambda: http.put(f"{base}/runs/{created}/adapter", content=to_bytes(nan_adapter), headers=key),
                422,
            ),
            (
                "starting adapter of a started run",
                lambda: http.put(f"{base}/runs/{run_id}/adapter", content=to_bytes(wide_adapter(5)), headers=key),
                409,
            ),
            (
                "enrolment token with a bad ttl",
                lambda: http.post(f"{base}/enrolment-tokens", json={"ttl_s": -1}, headers=key),
                422,
            ),
            ("events with a malformed cursor", lambda: http.get(f"{base}/events", params={"after_id": "abc"}), 422),
        ]
        for name, call, status in cases:
            before = stored.snapshot()
            response = call()
            after = stored.snapshot()
            body_ok = response.headers.get("content-type", "").startswith("application/json")
            ok = response.status_code == status and after == before and body_ok
            report.add(
                name,
                f"refused: HTTP {response.status_code}; nothing stored"
                if ok
                else f"got HTTP {response.status_code}: {response.text[:200]}",
                ok=ok,
                status=response.status_code,
                stored_nothing=after == before,
            )
            assert response.status_code == status, f"{name}: {response.status_code} {response.text[:300]}"
            assert body_ok and "error" in response.json(), f"{name}: {response.text[:300]}"
            assert after == before, f"{name} stored something: {before} -> {after}"
