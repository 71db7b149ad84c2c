"""Faults injected into real rounds: the coordinator SIGKILLed in each phase, a device killed mid-upload, a
straggler after the deadline, a connection cut mid-transfer by a loopback proxy, PostgreSQL restarted under
the coordinator. After each: the round completes (or fails) as configured, every accepted update is counted
exactly once, and the global adapter equals the numpy reference aggregate.

The coordinator is a real process (`feddetox coordinator serve`); the devices are in-test gRPC clients (one
runs as its own process so that it can be killed); they upload seeded random adapters and train nothing.
Nothing here depends on timing: every wait is a bounded poll for a state.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
from coordinator_helpers import CoordinatorProcess, Device, create_run, numpy_fedavg, wait_for
from google.protobuf import json_format
from reliability_helpers import (
    CuttingProxy,
    Stored,
    retry_unavailable,
    task_of_round,
    upload,
    upload_messages,
    wide_adapter,
    wide_lora,
)

from feddetox.adapters import from_bytes, sha256_bytes, to_bytes
from feddetox.protocol import device_pb2 as pb

pytestmark = pytest.mark.slow
REPORT_KIND = "fault"
HERE = Path(__file__).resolve().parent


# --- the round's bookkeeping ---------------------------------------------------------------------------------


class Ledger:
    """What the devices were told was accepted: {update_id: (adapter, num_examples)}."""

    def __init__(self) -> None:
        self.accepted: dict[str, tuple[dict[str, np.ndarray], int]] = {}

    def take(self, receipt, adapter, n: int) -> None:
        if not receipt.duplicate:
            assert receipt.update_id not in self.accepted
            self.accepted[receipt.update_id] = (adapter, n)


def enrol(coordinator: CoordinatorProcess, admin, n: int, name: str) -> list[Device]:
    tokens = [admin.post("/enrolment-tokens").json()["token"] for _ in range(n)]
    devices = [Device(coordinator.grpc_target).enrol(t, f"{name}-{i}") for i, t in enumerate(tokens)]
    for d in devices:
        d.heartbeat()
    return devices


def start_run(admin, **overrides) -> str:
    config = dict(rounds=1, clients_per_round=3, min_clients=3, lora=wide_lora())
    config.update(overrides)
    return create_run(admin, wide_adapter(0), **config)


def local_update(device: Device, task, seed: int) -> tuple[dict[str, np.ndarray], bytes, int]:
    """Download the global adapter (verified) and make this device's update from it."""
    blob, sha, _ = device.download(task.run_id, task.global_adapter.version)
    assert sha256_bytes(blob) == sha == task.global_adapter.sha256
    adapter = {k: v + wide_adapter(seed, scale=0.01)[k] for k, v in from_bytes(blob).items()}
    return adapter, to_bytes(adapter), 3 + seed % 7


def round_detail(admin, run_id: str, index: int) -> dict:
    response = admin.get(f"/runs/{run_id}/rounds/{index}")
    return response.json() if response.status_code == 200 else {}


def check_round(admin, stored: Stored, run_id: str, index: int, ledger: Ledger) -> int:
    """Assert the closed round counted each accepted update once and its aggregate is the reference; returns
    the number of accepted updates that are missing from the round (updates lost)."""
    detail = wait_for(
        lambda: (r := round_detail(admin, run_id, index)).get("status") == "closed" and r,
        timeout=120,
        what=f"round {index} closed",
    )
    rows = stored.rows("SELECT id FROM updates WHERE run_id = :r AND round_index = :i", r=run_id, i=index)
    ids = [r[0] for r in rows]
    assert len(ids) == len(set(ids)) == detail["reported"] == detail["metrics"]["aggregation"]["updates"]
    lost = len(set(ledger.accepted) - set(ids))
    assert lost == 0 and set(ids) == set(ledger.accepted)
    closed = admin.get("/events", params={"run_id": run_id, "kind": "round_closed"}).json()["data"]
    assert [e["round_index"] for e in closed].count(index) == 1  # aggregated once
    versions = [a["version"] for a in admin.get(f"/runs/{run_id}/adapters").json()["data"]]
    assert versions.count(detail["result_version"]) == 1
    got = from_bytes(admin.get(f"/runs/{run_id}/adapters/{detail['result_version']}/adapter_model.safetensors").content)
    adapters, weights = zip(*ledger.accepted.values(), strict=True)
    for key, value in numpy_fedavg(list(adapters), list(weights)).items():
        np.testing.assert_allclose(got[key], value, rtol=1e-6, atol=1e-7)
    return lost


def restart(coordinator: CoordinatorProcess, **env) -> CoordinatorProcess:
    return CoordinatorProcess(
        coordinator.state_dir,
        database_url=coordinator.database_url,
        rest_port=coordinator.rest_port,
        grpc_port=coordinator.grpc_port,
        env=env,
    ).start()


# --- the coordinator SIGKILLed in each phase -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "db"),
    [
        ("collecting", "sqlite"),
        ("upload", "sqlite"),
        ("aggregation", "sqlite"),
        # PostgreSQL where its row locks and rollback matter most (tests/server kills it while collecting)
        pytest.param("upload", "postgres", marks=pytest.mark.postgres),
        pytest.param("aggregation", "postgres", marks=pytest.mark.postgres),
    ],
)
def test_coordinator_sigkill_in_each_phase(request, tmp_path, phase, db, report):
    database_url = request.getfixturevalue("postgres_cluster").new_database() if db == "postgres" else ""
    marker = tmp_path / "aggregated-not-committed"
    env = {"FEDDETOX_FAULT_PAUSE_BEFORE_AGGREGATE_COMMIT": str(marker)} if phase == "aggregation" else {}
    coordinator = CoordinatorProcess(tmp_path / "state", database_url=database_url, env=env).start()
    stored = Stored(database_url, coordinator.state_dir)
    ledger, processes = Ledger(), [coordinator]
    try:
        admin = coordinator.admin()
        devices = enrol(coordinator, admin, 3, f"kill-{phase}")
        run_id = start_run(admin)
        tasks = [task_of_round(d, 1) for d in devices]
        made = [local_update(d, t, 10 + i) for i, (d, t) in enumerate(zip(devices, tasks, strict=True))]
        keys = [f"{d.device_id}-r1" for d in devices]
        first = upload(devices[0], tasks[0], made[0][1], key=keys[0], num_examples=made[0][2])
        ledger.take(first, made[0][0], made[0][2])
        failed_call = ""
        if phase == "collecting":
            ledger.take(upload(devices[1], tasks[1], made[1][1], key=keys[1], num_examples=made[1][2]), *made[1][::2])
            coordinator.kill()
        elif phase == "upload":
            paused, resume, outcome = threading.Event(), threading.Event(), {}

            def halfway_upload() -> None:
                messages = upload_messages(
                    tasks[1],
                    made[1][1],
                    key=keys[1],
                    num_examples=made[1][2],
                    pause_after=32,
                    paused=paused,
                    resume=resume,
                )
                try:
                    stub, meta = devices[1].stub, devices[1].metadata
                    outcome["receipt"] = stub.UploadUpdate(messages, metadata=meta, timeout=60)
                except grpc.RpcError as exc:
                    outcome["code"] = exc.code()

            thread = threading.Thread(target=halfway_upload)
            thread.start()
            assert paused.wait(60), "the upload did not reach its halfway point"
            coordinator.kill()  # the header and 32 of 64 chunks are sent, the rest never will be
            resume.set()
            thread.join(60)
            assert "receipt" not in outcome and outcome["code"] in (
                grpc.StatusCode.UNAVAILABLE,
                grpc.StatusCode.CANCELLED,
                grpc.StatusCode.INTERNAL,
            )
            failed_call = outcome["code"].name
            assert stored.counts()["updates"] == 1  # the half upload left no row
        else:
            for i in (1, 2):
                receipt = upload(devices[i], tasks[i], made[i][1], key=keys[i], num_examples=made[i][2])
                ledger.take(receipt, *made[i][::2])
            wait_for(marker.exists, what="the scheduler inside the aggregation transaction")
            # aggregated, not committed: the round is still collecting and no version 1 exists
            assert stored.rows("SELECT status FROM rounds WHERE run_id = :r", r=run_id) == [("collecting",)]
            assert stored.rows("SELECT version FROM adapter_versions WHERE run_id = :r", r=run_id) == [(0,)]
            coordinator.kill()
        coordinator = restart(coordinator)
        processes.append(coordinator)
        admin.close()
        admin = coordinator.admin()
        if phase != "aggregation":
            # the first device did not hear its receipt: its retry gets the same receipt, no second update
            again, _ = retry_unavailable(
                lambda: upload(devices[0], tasks[0], made[0][1], key=keys[0], num_examples=made[0][2]),
                what="the retry after the restart",
            )
            assert again.duplicate and again.update_id == first.update_id
            if phase == "upload":  # the device whose upload was cut by the kill sends it again with the same key
                again1, _ = retry_unavailable(
                    lambda: upload(devices[1], tasks[1], made[1][1], key=keys[1], num_examples=made[1][2])
                )
                assert not again1.duplicate
                ledger.take(again1, *made[1][::2])
            ledger.take(upload(devices[2], tasks[2], made[2][1], key=keys[2], num_examples=made[2][2]), *made[2][::2])
        lost = check_round(admin, stored, run_id, 1, ledger)
        assert stored.rows("SELECT status FROM runs WHERE id = :r", r=run_id) == [("completed",)]
        report.add(
            f"coordinator SIGKILL during {phase} ({db})",
            f"restarted; round closed with {len(ledger.accepted)} updates, each once; aggregate == numpy FedAvg"
            + (f"; the cut upload got {failed_call} and its retry was accepted" if failed_call else ""),
            updates_accepted=len(ledger.accepted),
            updates_lost=lost,
        )
        for d in devices:
            d.close()
        admin.close()
    finally:
        stored.close()
        for p in processes:
            if p.proc.poll() is None:
                assert p.stop() == 0, p.log()


# --- a device killed mid-upload, then resumed ------------------------------------------------------------------


def test_device_killed_mid_upload_resumes(tmp_path, report):
    coordinator = CoordinatorProcess(tmp_path / "state").start()
    stored = Stored("", coordinator.state_dir)
    ledger = Ledger()
    try:
        with coordinator.admin() as admin:
            devices = enrol(coordinator, admin, 2, "killed-device")
            run_id = start_run(admin, clients_per_round=2, min_clients=2)
            tasks = [task_of_round(d, 1) for d in devices]
            adapter, blob, n = local_update(devices[0], tasks[0], 21)
            (tmp_path / "update.safetensors").write_bytes(blob)
            spec = {
                "target": coordinator.grpc_target,
                "device_id": devices[0].device_id,
                "secret": devices[0].secret,
                "task": json_format.MessageToDict(tasks[0]),
                "blob": str(tmp_path / "update.safetensors"),
                "key": tasks[0].assignment_id,  # stays the same across retries of this upload
                "num_examples": n,
            }
            (tmp_path / "spec.json").write_text(json.dumps(spec))
            script = [sys.executable, str(HERE / "device_upload.py"), str(tmp_path / "spec.json")]
            device = subprocess.Popen([*script, "--stop-halfway"], stdout=subprocess.PIPE, text=True)
            assert device.stdout.readline().strip() == "halfway"
            device.kill()  # SIGKILL: the device dies with half its update sent
            device.wait(30)
            assert stored.counts()["updates"] == 0
            resumed = subprocess.run(script, capture_output=True, text=True, timeout=120)
            assert resumed.returncode == 0, resumed.stdout + resumed.stderr
            receipt = json.loads(resumed.stdout.strip().splitlines()[-1])
            assert receipt["duplicate"] is False and receipt["sha256"] == sha256_bytes(blob)
            ledger.accepted[receipt["updateId"]] = (adapter, n)
            other = local_update(devices[1], tasks[1], 22)
            ledger.take(upload(devices[1], tasks[1], other[1], key="other-r1", num_examples=other[2]), *other[::2])
            lost = check_round(admin, stored, run_id, 1, ledger)
            report.add(
                "device SIGKILLed mid-upload",
                "nothing stored from the half upload; the restarted device resent with the same key and was"
                " accepted once; round closed; aggregate == numpy FedAvg",
                updates_accepted=len(ledger.accepted),
                updates_lost=lost,
            )
            for d in devices:
                d.close()
    finally:
        stored.close()
        assert coordinator.stop() == 0, coordinator.log()


# --- a straggler after the deadline ---------------------------------------------------------------------------


def test_straggler_after_the_deadline_is_refused_and_the_round_closes_with_quorum(tmp_path, report):
    coordinator = CoordinatorProcess(tmp_path / "state").start()
    stored = Stored("", coordinator.state_dir)
    ledger = Ledger()
    try:
        with coordinator.admin() as admin:
            devices = enrol(coordinator, admin, 3, "straggler")
            run_id = start_run(admin, rounds=2, clients_per_round=3, min_clients=2, round_deadline_s=2.0)
            tasks = [task_of_round(d, 1) for d in devices]
            made = [local_update(d, t, 30 + i) for i, (d, t) in enumerate(zip(devices, tasks, strict=True))]
            for i in (0, 1):
                receipt = upload(devices[i], tasks[i], made[i][1], key=f"s{i}", num_examples=made[i][2])
                ledger.take(receipt, *made[i][::2])
            lost = check_round(admin, stored, run_id, 1, ledger)  # closes at the deadline with quorum 2 of 3
            before = stored.snapshot()
            with pytest.raises(grpc.RpcError) as late:
                upload(devices[2], tasks[2], made[2][1], key="s2", num_examples=made[2][2])
            assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert late.value.details().startswith("round_closed: ")
            assert stored.snapshot() == before  # nothing stored
            statuses = {a["device_id"]: a["status"] for a in round_detail(admin, run_id, 1)["assignments"]}
            assert statuses[devices[2].device_id] == "missed"
            admin.post(f"/runs/{run_id}/stop")
            report.add(
                "device reports after the deadline",
                "round closed at the deadline with quorum (2 of 3); the late update refused with"
                " FAILED_PRECONDITION round_closed; nothing stored; aggregate == numpy FedAvg of the two",
                updates_accepted=len(ledger.accepted),
                updates_lost=lost,
            )
            for d in devices:
                d.close()
    finally:
        stored.close()
        assert coordinator.stop() == 0, coordinator.log()


# --- a connection cut by a loopback proxy mid-transfer ---------------------------------------------------------


@pytest.mark.parametrize("direction", ["down", "up"])
def test_connection_cut_mid_transfer(tmp_path, direction, report):
    coordinator = CoordinatorProcess(tmp_path / "state").start()
    proxy = CuttingProxy(coordinator.grpc_port)
    stored = Stored("", coordinator.state_dir)
    ledger = Ledger()
    try:
        with coordinator.admin() as admin:
            tokens = [admin.post("/enrolment-tokens").json()["token"] for _ in range(2)]
            devices = [Device(proxy.target).enrol(tokens[0], "behind-proxy"), Device(coordinator.grpc_target)]
            devices[1].enrol(tokens[1], "direct")
            for d in devices:
                d.heartbeat()
            run_id = start_run(admin, clients_per_round=2, min_clients=2)
            tasks = [task_of_round(d, 1) for d in devices]
            ref = tasks[0].global_adapter
            outcome = ""
            if direction == "down":
                proxy.arm("down", ref.size_bytes // 2)
                got = bytearray()
                with pytest.raises(grpc.RpcError) as cut:
                    for chunk in devices[0].stub.DownloadAdapter(
                        pb.DownloadAdapterRequest(run_id=run_id, version=ref.version, offset=0),
                        metadata=devices[0].metadata,
                        timeout=60,
                    ):
                        got += chunk.data
                assert proxy.cut.is_set() and 0 < len(got) < ref.size_bytes
                # resume from what arrived, over a new connection through the same proxy
                rest, _ = retry_unavailable(lambda: devices[0].download(run_id, ref.version, offset=len(got)))
                whole = bytes(got) + rest[0]
                assert sha256_bytes(whole) == ref.sha256
                outcome = (
                    f"download cut after {len(got)} of {ref.size_bytes} bytes ({cut.value.code().name});"
                    " resumed from that offset, sha256 verified"
                )
            adapter, blob, n = local_update(devices[0], tasks[0], 41)
            if direction == "up":
                proxy.arm("up", len(blob) // 2)
                with pytest.raises(grpc.RpcError) as cut:
                    upload(devices[0], tasks[0], blob, key="cut-key", num_examples=n)
                assert proxy.cut.is_set()
                assert stored.counts()["updates"] == 0  # the cut upload left nothing
                outcome = f"upload cut after half its bytes ({cut.value.code().name}); nothing stored"
            receipt, _ = retry_unavailable(lambda: upload(devices[0], tasks[0], blob, key="cut-key", num_examples=n))
            assert not receipt.duplicate
            ledger.take(receipt, adapter, n)
            other = local_update(devices[1], tasks[1], 42)
            ledger.take(upload(devices[1], tasks[1], other[1], key="direct-key", num_examples=other[2]), *other[::2])
            lost = check_round(admin, stored, run_id, 1, ledger)
            report.add(
                f"connection cut by a proxy mid-{'download' if direction == 'down' else 'upload'}",
                outcome + "; the retry with the same key was accepted once; round closed; aggregate == numpy FedAvg",
                updates_accepted=len(ledger.accepted),
                updates_lost=lost,
            )
            for d in devices:
                d.close()
    finally:
        proxy.close()
        stored.close()
        assert coordinator.stop() == 0, coordinator.log()


# --- PostgreSQL restarted under the coordinator ----------------------------------------------------------------


def _pg(cluster, action: str) -> None:
    options = f"-p {cluster.port} -k {cluster.root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    if action == "stop":
        cluster._run("pg_ctl", "-D", str(cluster.data), "-m", "fast", "-w", "stop")
    else:
        cluster._run("pg_ctl", "-D", str(cluster.data), "-l", str(cluster.log), "-o", options, "-w", "start")


@pytest.mark.postgres
def test_postgresql_restarted_under_the_coordinator(tmp_path, postgres_cluster, report):
    url = postgres_cluster.new_database()
    coordinator = CoordinatorProcess(tmp_path / "state", database_url=url).start()
    stored = Stored(url, coordinator.state_dir)
    ledger = Ledger()
    try:
        with coordinator.admin() as admin:
            devices = enrol(coordinator, admin, 3, "pg-restart")
            run_id = start_run(admin)
            tasks = [task_of_round(d, 1) for d in devices]
            made = [local_update(d, t, 50 + i) for i, (d, t) in enumerate(zip(devices, tasks, strict=True))]
            ledger.take(upload(devices[0], tasks[0], made[0][1], key="pg0", num_examples=made[0][2]), *made[0][::2])
            _pg(postgres_cluster, "stop")
            try:
                codes = {}
                for name, call in {
                    "Heartbeat": devices[1].heartbeat,
                    "GetTask": devices[1].task,
                    "UploadUpdate": lambda: upload(
                        devices[1], tasks[1], made[1][1], key="pg1", num_examples=made[1][2]
                    ),
                }.items():
                    with pytest.raises(grpc.RpcError) as down:
                        call()
                    codes[name] = down.value.code()
                ready = admin.get("/ready").status_code
            finally:
                _pg(postgres_cluster, "start")
            assert set(codes.values()) == {grpc.StatusCode.UNAVAILABLE}, codes
            assert ready == 503
            # the devices retry; the coordinator's pool reconnects
            receipt, _ = retry_unavailable(
                lambda: upload(devices[1], tasks[1], made[1][1], key="pg1", num_examples=made[1][2])
            )
            assert not receipt.duplicate  # the call during the outage stored nothing
            ledger.take(receipt, *made[1][::2])
            ledger.take(upload(devices[2], tasks[2], made[2][1], key="pg2", num_examples=made[2][2]), *made[2][::2])
            lost = check_round(admin, stored, run_id, 1, ledger)
            report.add(
                "PostgreSQL restarted under the coordinator",
                "during the outage Heartbeat, GetTask and UploadUpdate got UNAVAILABLE and /ready 503; the devices"
                " retried; round closed; each update once; aggregate == numpy FedAvg",
                updates_accepted=len(ledger.accepted),
                updates_lost=lost,
            )
            for d in devices:
                d.close()
    finally:
        stored.close()
        assert coordinator.stop() == 0, coordinator.log()
