"""A coordinator SIGKILLed after accepting updates loses its in-memory running FedAvg sum; the restarted one
rebuilds it from the stored blobs (in acceptance order, clipped the same way) and closes the round with the
numpy reference aggregate. Clipping is on, so the rebuild must re-apply it exactly.

- mid_round: 2 of 4 updates accepted, SIGKILL, restart, the other 2 accepted (added to a caught-up sum).
- before_close: all 3 accepted and aggregated from memory, SIGKILL before that transaction commits; the
  restarted coordinator has nothing in memory and rebuilds all of them.
"""

from __future__ import annotations

import pytest
from coordinator_helpers import CoordinatorProcess, wait_for
from reliability_helpers import Stored, task_of_round, upload, wide_adapter
from test_faults import Ledger, check_round, enrol, local_update, restart, start_run

from feddetox.adapters import from_bytes
from server import aggregation

pytestmark = pytest.mark.slow
CLIP = 0.5


@pytest.mark.parametrize(
    ("phase", "db"),
    [
        ("mid_round", "sqlite"),
        ("before_close", "sqlite"),
        pytest.param("mid_round", "postgres", marks=pytest.mark.postgres),
    ],
)
def test_killed_coordinator_closes_with_the_numpy_aggregate(request, tmp_path, phase, db):
    database_url = request.getfixturevalue("postgres_cluster").new_database() if db == "postgres" else ""
    marker = tmp_path / "aggregated-not-committed"
    env = {"FEDDETOX_FAULT_PAUSE_BEFORE_AGGREGATE_COMMIT": str(marker)} if phase == "before_close" else {}
    n = 4 if phase == "mid_round" else 3
    coordinator = CoordinatorProcess(tmp_path / "state", database_url=database_url, env=env).start()
    processes, stored, ledger = [coordinator], Stored(database_url, coordinator.state_dir), Ledger()
    try:
        admin = coordinator.admin()
        devices = enrol(coordinator, admin, n, f"sum-{phase}")
        run_id = start_run(admin, clients_per_round=n, min_clients=n, aggregation={"clip_norm": CLIP})
        tasks = [task_of_round(d, 1) for d in devices]
        made = [local_update(d, t, 20 + i) for i, (d, t) in enumerate(zip(devices, tasks, strict=True))]
        base = wide_adapter(0)

        def send(i: int) -> None:
            adapter, blob, weight = made[i]
            receipt = upload(devices[i], tasks[i], blob, key=f"{devices[i].device_id}-r1", num_examples=weight)
            clipped, was = aggregation.clip_update(adapter, base, CLIP)
            assert was  # the reference is the clipped update, as the coordinator must aggregate it
            ledger.take(receipt, clipped, weight)

        first_half = 2 if phase == "mid_round" else n
        for i in range(first_half):
            send(i)
        if phase == "before_close":
            wait_for(marker.exists, what="the scheduler inside the aggregation transaction")
        coordinator.kill()  # the running sum in memory is gone; the blobs and the database remain
        coordinator = restart(coordinator)
        processes.append(coordinator)
        admin.close()
        admin = coordinator.admin()
        for i in range(first_half, n):
            send(i)
        assert check_round(admin, stored, run_id, 1, ledger) == 0
        seqs = stored.rows("SELECT seq FROM updates WHERE run_id = :r ORDER BY seq", r=run_id)
        assert [s for (s,) in seqs] == list(range(1, n + 1))
        version = admin.get(f"/runs/{run_id}/rounds/1").json()["result_version"]
        got = from_bytes(admin.get(f"/runs/{run_id}/adapters/{version}/adapter_model.safetensors").content)
        assert set(got) == set(base)
        for d in devices:
            d.close()
        admin.close()
    finally:
        stored.close()
        for p in processes:
            if p.proc.poll() is None:
                assert p.stop() == 0, p.log()
