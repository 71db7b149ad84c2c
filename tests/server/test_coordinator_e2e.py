"""End to end: the coordinator as a process, three devices over real gRPC on loopback, SQLite or PostgreSQL.

The devices are in-test gRPC clients that upload seeded random adapters of the run's shapes; they stand in
for the edge client (which trains) until the two are tested together.
"""

from __future__ import annotations

import numpy as np
import pytest
from coordinator_helpers import CoordinatorProcess, Device, create_run, make_adapter, numpy_fedavg, wait_for

from feddetox.adapters import from_bytes, sha256_bytes, to_bytes

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request) -> str:
    if request.param == "sqlite":
        return ""  # the default: SQLite in the state folder
    return request.getfixturevalue("postgres_cluster").new_database()


def _round(admin, run_id: str, index: int) -> dict:
    response = admin.get(f"/runs/{run_id}/rounds/{index}")
    return response.json() if response.status_code == 200 else {}


def _enrol(coordinator: CoordinatorProcess, admin, n: int) -> list[Device]:
    tokens = [admin.post("/enrolment-tokens").json()["token"] for _ in range(n)]
    devices = [Device(coordinator.grpc_target).enrol(t, f"e2e-{i}") for i, t in enumerate(tokens)]
    for d in devices:
        d.heartbeat()
    return devices


def _train(device: Device, round_index: int, seed: int) -> tuple:
    """What a device does in a round: take the task, fetch and verify the global adapter, upload an update."""
    task = wait_for(lambda: (t := device.task()) and t.round_index == round_index and t, what=f"round {round_index}")
    blob, sha, _ = device.download(task.run_id, task.global_adapter.version)
    assert sha256_bytes(blob) == sha == task.global_adapter.sha256
    adapter = {k: v + make_adapter(seed)[k] for k, v in from_bytes(blob).items()}
    n = 3 + seed % 5
    receipt = device.upload(
        task,
        to_bytes(adapter),
        num_examples=n,
        key=f"{device.device_id}-{round_index}",
        metrics={"dpo_loss": 0.7 - 0.1 * round_index},
    )
    return task, adapter, n, receipt


def test_three_devices_complete_two_rounds(tmp_path, database_url):
    coordinator = CoordinatorProcess(tmp_path / "state", database_url=database_url).start()
    try:
        with coordinator.admin() as admin:
            devices = _enrol(coordinator, admin, 3)
            run_id = create_run(admin, make_adapter(0), rounds=2, clients_per_round=3, min_clients=2)
            accepted = {}
            for round_index in (1, 2):
                sent = [_train(d, round_index, 10 * round_index + i) for i, d in enumerate(devices)]
                accepted[round_index] = [(adapter, n) for _, adapter, n, _ in sent]
                wait_for(
                    lambda r=round_index: _round(admin, run_id, r).get("status") == "closed",
                    what=f"round {round_index} closed",
                )
            run = wait_for(
                lambda: (r := admin.get(f"/runs/{run_id}").json())["status"] == "completed" and r, what="completed"
            )
            assert run["rounds_closed"] == 2 and run["global_version"] == 2
            # the global adapter after round two is the numpy weighted FedAvg of round two's accepted updates
            final = from_bytes(admin.get(f"/runs/{run_id}/adapters/2/adapter_model.safetensors").content)
            expected = numpy_fedavg([a for a, _ in accepted[2]], [n for _, n in accepted[2]])
            for key, value in expected.items():
                np.testing.assert_allclose(final[key], value, rtol=1e-6, atol=1e-7)
            rounds = admin.get(f"/runs/{run_id}/rounds").json()["data"]
            assert [(r["index"], r["status"], r["reported"], r["selected"]) for r in rounds] == [
                (1, "closed", 3, 3),
                (2, "closed", 3, 3),
            ]
            metrics = admin.get(f"/runs/{run_id}/metrics").json()["data"]
            for r, m in zip((1, 2), metrics, strict=True):
                assert m["updates"] == 3 and m["examples"] == sum(n for _, n in accepted[r])
                assert m["metrics"]["dpo_loss"] == pytest.approx(0.7 - 0.1 * r)
                assert m["sanitization"]["pairs_seen"] == m["examples"] and m["sanitization"]["replaced"] == 3
                assert m["aggregation"]["rule"] == "fedavg" and m["aggregation"]["updates"] == 3
            listed = admin.get("/devices").json()["data"]
            assert sorted(d["updates_accepted"] for d in listed) == [2, 2, 2]
            assert all(d["rounds_joined"] == 2 for d in listed)
            for d in devices:
                d.close()
    finally:
        assert coordinator.stop() == 0, coordinator.log()


def test_sigkill_while_collecting_counts_every_update_once(tmp_path, database_url):
    coordinator = CoordinatorProcess(tmp_path / "state", database_url=database_url).start()
    with coordinator.admin() as admin:
        devices = _enrol(coordinator, admin, 3)
        run_id = create_run(admin, make_adapter(0), rounds=1, clients_per_round=3, min_clients=3)
        before = [_train(d, 1, 40 + i) for i, d in enumerate(devices[:2])]
        assert _round(admin, run_id, 1)["reported"] == 2
    coordinator.kill()  # SIGKILL while the round is collecting, two updates accepted
    restarted = CoordinatorProcess(
        tmp_path / "state",
        database_url=database_url,
        rest_port=coordinator.rest_port,
        grpc_port=coordinator.grpc_port,
    ).start()
    try:
        with restarted.admin() as admin:
            assert _round(admin, run_id, 1)["status"] == "collecting"
            # a device that did not hear its receipt retries: the same key gives the same receipt, no new update
            task, adapter, n, receipt = before[0]
            for d in devices:  # the channels reconnect to the restarted process
                d.heartbeat()
            retry = devices[0].upload(task, to_bytes(adapter), num_examples=n, key=f"{devices[0].device_id}-1")
            assert retry.duplicate and retry.update_id == receipt.update_id
            last = _train(devices[2], 1, 42)
            detail = wait_for(lambda: (r := _round(admin, run_id, 1)).get("status") == "closed" and r, what="closed")
            assert detail["reported"] == 3 and detail["metrics"]["updates"] == 3
            assert detail["metrics"]["aggregation"]["updates"] == 3
            accepted = [(a, k) for _, a, k, _ in before] + [(last[1], last[2])]
            assert detail["metrics"]["examples"] == sum(k for _, k in accepted)
            final = from_bytes(admin.get(f"/runs/{run_id}/adapters/1/adapter_model.safetensors").content)
            expected = numpy_fedavg([a for a, _ in accepted], [k for _, k in accepted])
            for key, value in expected.items():
                np.testing.assert_allclose(final[key], value, rtol=1e-6, atol=1e-7)
            closed = admin.get("/events", params={"run_id": run_id, "kind": "round_closed"}).json()["data"]
            assert len(closed) == 1
        for d in devices:
            d.close()
    finally:
        assert restarted.stop() == 0, restarted.log()


@pytest.mark.postgres
def test_two_coordinators_on_one_postgresql_aggregate_each_round_once(tmp_path, postgres_cluster):
    url = postgres_cluster.new_database()
    first = CoordinatorProcess(tmp_path / "state", database_url=url).start()
    second = CoordinatorProcess(tmp_path / "state", database_url=url).start()  # the same blob folder
    try:
        with first.admin() as admin:
            tokens = [admin.post("/enrolment-tokens").json()["token"] for _ in range(3)]
            # devices spread over both coordinators
            devices = [Device((first, second)[i % 2].grpc_target).enrol(t, f"two-{i}") for i, t in enumerate(tokens)]
            for d in devices:
                d.heartbeat()
            run_id = create_run(admin, make_adapter(0), rounds=3, clients_per_round=3, min_clients=3)
            for round_index in (1, 2, 3):
                sent = [_train(d, round_index, 60 + 10 * round_index + i) for i, d in enumerate(devices)]
                wait_for(lambda r=round_index: _round(admin, run_id, r).get("status") == "closed", what="closed")
            wait_for(lambda: admin.get(f"/runs/{run_id}").json()["status"] == "completed", what="completed")
            closed = admin.get("/events", params={"run_id": run_id, "kind": "round_closed"}).json()["data"]
            assert sorted(e["round_index"] for e in closed) == [1, 2, 3]
            assert [a["version"] for a in admin.get(f"/runs/{run_id}/adapters").json()["data"]] == [0, 1, 2, 3]
            final = from_bytes(admin.get(f"/runs/{run_id}/adapters/3/adapter_model.safetensors").content)
            expected = numpy_fedavg([a for _, a, _, _ in sent], [n for _, _, n, _ in sent])
            for key, value in expected.items():
                np.testing.assert_allclose(final[key], value, rtol=1e-6, atol=1e-7)
        for d in devices:
            d.close()
    finally:
        assert first.stop() == 0, first.log()
        assert second.stop() == 0, second.log()
