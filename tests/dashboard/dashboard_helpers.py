"""Seeding a coordinator for the dashboard tests: devices that report rounds, evaluations, waiting in pages.

The devices are the coordinator tests' in-test gRPC devices (they stand in for the edge client): they upload
seeded random adapters of the run's shapes with the DPO metrics and sanitization counts given here.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import httpx
import numpy as np
from coordinator_helpers import ADMIN_KEY, CoordinatorProcess, Device, create_run, make_adapter, reason_of, wait_for

from feddetox.adapters import from_bytes, to_bytes
from feddetox.protocol import device_pb2 as pb

__all__ = ["ADMIN_KEY", "Fleet", "evaluation_of", "round_metrics_of"]


def round_metrics_of(index: int, device: int) -> dict[str, float]:
    """What device `device` reports in round `index`: the loss falls and the margin grows round after round."""
    return {
        "dpo_loss": 0.69 - 0.08 * index - 0.01 * device,
        "reward_margin": 0.05 + 0.22 * index + 0.02 * device,
        "reward_accuracy": min(1.0, 0.55 + 0.1 * index),
    }


def evaluation_of(index: int) -> dict[str, float]:
    """An evaluation of round `index`'s adapter (0 = the start): ASR falls, compliance and utility hold."""
    return {
        "asr_refusal": max(0.05, 0.62 - 0.14 * index),
        "asr_guardian": max(0.04, 0.55 - 0.13 * index),
        "jailbreak_asr_refusal": max(0.08, 0.77 - 0.12 * index),
        "xstest_safe_compliance": 0.93 - 0.01 * index,
        "xstest_unsafe_refusal": min(0.98, 0.6 + 0.09 * index),
        "truthfulqa_mc1": 0.25 + 0.004 * index,
        "mmlu_acc": 0.31 - 0.002 * index,
    }


@dataclass
class Fleet:
    """n enrolled in-test devices of one coordinator, and an admin REST client."""

    coordinator: CoordinatorProcess
    devices: list[Device]
    admin: httpx.Client

    @classmethod
    def enrol(cls, coordinator: CoordinatorProcess, n: int, prefix: str = "pixel") -> Fleet:
        admin = coordinator.admin()
        devices = []
        for i in range(n):
            token = admin.post("/enrolment-tokens", json={"note": f"{prefix}-{i}"}).json()["token"]
            device = Device(coordinator.grpc_target).enrol(token, f"{prefix}-{i}")
            device.heartbeat()
            devices.append(device)
        return cls(coordinator, devices, admin)

    def close(self) -> None:
        for device in self.devices:
            device.close()
        self.admin.close()

    def heartbeat(self) -> None:
        """Every device says it is alive, so that a round can select any of them (selection wants recent devices)."""
        for device in self.devices:
            device.heartbeat()

    def start_run(self, **overrides) -> str:
        self.heartbeat()
        return create_run(self.admin, make_adapter(0), **overrides)

    def round(self, run_id: str, index: int) -> dict:
        response = self.admin.get(f"/runs/{run_id}/rounds/{index}")
        return response.json() if response.status_code == 200 else {}

    def wait_round(self, run_id: str, index: int, status: str, timeout: float = 60.0) -> dict:
        return wait_for(
            lambda: (r := self.round(run_id, index)).get("status") == status and r,
            timeout=timeout,
            what=f"round {index} of run {run_id} to be {status}",
        )

    def report(self, run_id: str, index: int, count: int | None = None) -> None:
        """The round's selected devices (the first `count`; all by default) take their task, fetch the global
        adapter and upload an update with DPO metrics and sanitization counts."""
        by_id = {d.device_id: (i, d) for i, d in enumerate(self.devices)}
        selected = [a["device_id"] for a in self.round(run_id, index)["assignments"] if a["status"] == "assigned"]
        for device_id in selected[:count]:
            i, device = by_id[device_id]

            def task_of_round(device=device):
                task = device.task()
                return task if task and task.run_id == run_id and task.round_index == index else None

            task = wait_for(task_of_round, what=f"{device.device_id} to get its task of round {index}")
            blob, _, _ = device.download(task.run_id, task.global_adapter.version)
            adapter = {k: v + make_adapter(100 * index + i, scale=0.01)[k] for k, v in from_bytes(blob).items()}
            pairs = 40 + 10 * i
            flagged = 4 + index + i
            counts = pb.SanitizationCounts(
                pairs_seen=pairs, flagged=flagged, replaced=flagged - 1, dropped=0, score_histogram=[pairs // 10] * 10
            )
            device.upload(
                task,
                to_bytes(adapter),
                num_examples=pairs,
                key=task.assignment_id,
                metrics=round_metrics_of(index, i),
                header_overrides={"sanitization": counts},
            )

    def send_bad_update(self, run_id: str, index: int) -> str:
        """The first selected device of round `index` uploads an update with a wrong shape (refused: `shape`);
        its assignment stays open. Returns the device id."""
        device_id = next(a["device_id"] for a in self.round(run_id, index)["assignments"] if a["status"] == "assigned")
        device = next(d for d in self.devices if d.device_id == device_id)
        task = wait_for(lambda: (t := device.task()) and t.run_id == run_id and t.round_index == index and t)
        adapter = make_adapter(7)
        key = next(iter(adapter))
        adapter[key] = np.zeros((adapter[key].shape[0], adapter[key].shape[1] + 1), dtype=np.float32)
        try:
            device.upload(task, to_bytes(adapter))
        except grpc.RpcError as error:
            assert reason_of(error) == "shape", error
        else:
            raise AssertionError("an update with a wrong shape was accepted")
        return device_id

    def play(self, run_id: str, index: int) -> dict:
        """Round `index`: every selected device reports; returns the closed round."""
        self.heartbeat()
        self.wait_round(run_id, index, "collecting")
        self.report(run_id, index)
        return self.wait_round(run_id, index, "closed")

    def evaluate(self, run_id: str, index: int) -> None:
        response = self.admin.post(
            f"/runs/{run_id}/rounds/{index}/evaluation", json={"metrics": evaluation_of(index), "note": "test"}
        )
        assert response.status_code == 201, response.text
