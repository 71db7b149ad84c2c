"""Liveness during long phases: while a task downloads, sanitizes, trains or uploads, a background thread
heartbeats its phase at the coordinator's poll interval, so that a device whose local step takes minutes is
not taken for gone; a failed heartbeat never stops the task. And the metric names the device reports are
the ones the coordinator, the dashboard and the docs use (`feddetox.protocol.metrics`).

No test depends on timing: the local step is held (a hook before the real trainer) until the coordinator has
seen what the test waits for; the generous deadlines only turn a hang into a failure."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable

import pytest
from edge_helpers import FAST, write_pairs_file
from minimal_coordinator import CoordinatorState, MinimalCoordinator, Round

from edge_client.agent import AgentConfig, EdgeAgent, Liveness, Progress
from edge_client.state import DeviceState
from edge_client.transport import CoordinatorClient
from feddetox.errors import UnavailableError
from feddetox.models.loading import weights_sha256
from feddetox.protocol.metrics import DPO_LOSS, REWARD_ACCURACY, REWARD_MARGIN, UPDATE_METRICS

#: how long a test waits for what must happen within a second or two (a hang fails, it never passes)
PATIENCE_S = 120.0


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + PATIENCE_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {PATIENCE_S:.0f} s")
        time.sleep(0.05)


class HeldTrainer:
    """The real local step, held at its start until `hold()` returns."""

    def __init__(self, trainer, hold: Callable[[], None]) -> None:
        self.trainer, self.hold = trainer, hold

    def train(self, pairs, start_adapter, cfg, *, progress=None):
        self.hold()
        return self.trainer.train(pairs, start_adapter, cfg, progress=progress)


def held_trainers(hold: Callable[[], None]):
    from feddetox.training import LoraDpoTrainer

    return lambda model, lora: HeldTrainer(LoraDpoTrainer(model, lora), hold)


def heartbeat_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("feddetox-heartbeat")]


# -- the heartbeat thread alone -------------------------------------------------------------------------


def test_liveness_beats_a_phase_at_once_and_again_after_a_failed_heartbeat():
    beats: list[str] = []
    arrived = threading.Condition()

    def beat(status: str) -> int:
        with arrived:
            beats.append(status)
            arrived.notify_all()
        if len(beats) == 1:
            raise UnavailableError("coordinator at 127.0.0.1:1 (Heartbeat) is unreachable")
        return 0  # no interval named: the default one

    def wait_for(count: int) -> None:
        with arrived:
            assert arrived.wait_for(lambda: len(beats) >= count, timeout=PATIENCE_S), beats

    with Liveness(beat, interval_s=0.01, min_interval_s=0.01, name="t1") as liveness:
        liveness.phase("training")
        wait_for(2)  # the first heartbeat failed; the thread lives on and beats again an interval later
        liveness.phase("uploading")
        wait_for(len(beats) + 1)
        with arrived:
            assert arrived.wait_for(lambda: "uploading" in beats, timeout=PATIENCE_S)
    assert beats[:2] == ["training", "training"] and set(beats) == {"training", "uploading"}
    assert liveness.sent[0] == ("training", "coordinator at 127.0.0.1:1 (Heartbeat) is unreachable")
    assert all(error is None for _, error in liveness.sent[1:])
    assert not heartbeat_threads(), "leaving the block stops the thread"
    stopped_at = len(beats)
    liveness.phase("training")  # after the stop: nothing is sent
    assert len(beats) == stopped_at


def test_the_interval_is_the_one_the_coordinator_returns():
    liveness = Liveness(lambda status: 7, interval_s=30.0, min_interval_s=1.0)
    assert liveness.interval_s == 30.0
    liveness._send("training")
    assert liveness.interval_s == 7.0
    Liveness(lambda status: 0, interval_s=30.0)._send("training")  # none named: the default stays
    fast = Liveness(lambda status: 0, interval_s=0.001, min_interval_s=1.0)
    assert fast.interval_s == 1.0, "never faster than min_interval_s"


# -- against the minimal coordinator (real gRPC on loopback) ---------------------------------------------


def test_a_failed_heartbeat_does_not_stop_the_task(tmp_path, tiny_llama_path, tiny_bundle, planted, initial_adapter):
    state = CoordinatorState(tokens={"token-a"})
    state.round = Round(
        base_model=str(tiny_llama_path),
        base_model_sha256=weights_sha256(tiny_llama_path),
        adapter=initial_adapter,
        guardian_id=planted["bundle_id"],
        guardian_threshold=planted["threshold"],
    )
    data = write_pairs_file(tmp_path / "pairs.jsonl", planted["client_b"])
    marks: list[int] = []

    def hold() -> None:  # the next heartbeat fails; the step waits until the one after it arrived
        with state.lock:
            state.faults.failing_phase_heartbeats = 1
            marks.append(len(state.heartbeats))
        wait_until(lambda: [s for _, s in state.heartbeats[marks[0] :]].count("training") >= 2, "a second beat")

    with MinimalCoordinator(state) as server:
        client = CoordinatorClient(server.address, retry=FAST)
        agent = EdgeAgent(
            client,
            DeviceState(tmp_path / "dev"),
            AgentConfig(data_path=data, guardian_dir=tiny_bundle, max_rounds=1, max_poll_s=0.0, beat_interval_s=1.0),
            trainer_factory=held_trainers(hold),
            progress=Progress(io.StringIO()),
        )
        assert agent.run(enrol_token="token-a") == 1
        client.close()
    assert state.faults.failing_phase_heartbeats == 0, "the first heartbeat of the held step was refused"
    (update,) = state.updates.values()
    assert update.header.num_examples == 3, "the task went on and its update was accepted"
    assert not heartbeat_threads()
    # the metric names are the protocol's: the loss is `dpo_loss`, every name is a documented one
    names = set(update.header.metrics)
    assert {DPO_LOSS, REWARD_ACCURACY, REWARD_MARGIN} <= names and "loss" not in names
    assert names <= set(UPDATE_METRICS), names - set(UPDATE_METRICS)


# -- against the real coordinator ------------------------------------------------------------------------


@pytest.mark.slow
def test_the_coordinator_records_the_training_phase_while_the_local_step_runs(
    tmp_path, monkeypatch, tiny_llama_path, tiny_bundle, planted, initial_adapter
):
    from feddetox_cli.simulation.federation import Coordinator

    # every heartbeat is written (the default writes a device's last_seen_at at most every 10 s), and the
    # devices are told to beat every second
    monkeypatch.setenv("FEDDETOX_LAST_SEEN_WRITE_S", "0")
    monkeypatch.setenv("FEDDETOX_POLL_INTERVAL_S", "1")
    config = {
        "name": "liveness",
        "base_model": "tiny-llama",
        "base_model_sha256": weights_sha256(tiny_llama_path),
        "lora": {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "rounds": 1,
        "clients_per_round": 1,
        "min_clients": 1,
        "round_deadline_s": 600,
        "training": {"local_steps": 2, "batch_size": 2, "max_prompt_tokens": 32, "max_response_tokens": 32},
        "guardian_id": planted["bundle_id"],
        "guardian_threshold": planted["threshold"],
        "sanitization_policy": "replace",
    }
    data = write_pairs_file(tmp_path / "pairs.jsonl", planted["client_b"])
    seen: dict = {}
    with Coordinator(tmp_path / "coordinator", tick_s=0.2) as coordinator:
        run_id = coordinator.create_run(config, initial_adapter)
        client = CoordinatorClient(coordinator.grpc_address, retry=FAST)

        def training_seen(key: str, after: float = -1.0) -> bool:
            device = coordinator.request("GET", f"/devices/{client.credential.device_id}")
            if device["status"] == "training" and device["last_seen_at"] > after:
                seen[key] = device
            return key in seen

        def hold() -> None:
            # the local step starts once the coordinator has seen the device as "training" twice: a beat at the
            # start of the phase, and a later one while the step is (held) under way
            wait_until(lambda: training_seen("first"), "status 'training'")
            wait_until(lambda: training_seen("later", seen["first"]["last_seen_at"]), "a beat during the step")

        agent = EdgeAgent(
            client,
            DeviceState(tmp_path / "dev"),
            AgentConfig(
                data_path=data, guardian_dir=tiny_bundle, model=str(tiny_llama_path), max_rounds=1, max_poll_s=0.2
            ),
            trainer_factory=held_trainers(hold),
            progress=Progress(io.StringIO()),
        )
        assert agent.run(enrol_token=coordinator.token()) == 1
        client.close()
        coordinator.wait_rounds(run_id, 1, timeout_s=PATIENCE_S)
        metrics = coordinator.request("GET", f"/runs/{run_id}/rounds/1/metrics")
    assert seen["first"]["status"] == seen["later"]["status"] == "training"
    assert seen["later"]["last_seen_at"] > seen["first"]["last_seen_at"]
    assert not heartbeat_threads()
    # the names the server README and the dashboard use are in the round's metrics
    assert {DPO_LOSS, REWARD_ACCURACY, REWARD_MARGIN} <= set(metrics["metrics"]), metrics["metrics"]


def test_the_docs_name_every_metric_a_device_reports():
    from feddetox.settings import REPO_ROOT

    for doc in ("edge_client/README.md", "server/README.md"):
        text = (REPO_ROOT / doc).read_text()
        missing = [name for name in UPDATE_METRICS if f"`{name}`" not in text]
        assert not missing, f"{doc} does not name {missing}"


def test_update_metrics_renames_the_loss_and_leaves_out_what_the_coordinator_would_refuse():
    from feddetox.protocol.metrics import update_metrics

    trained = {"loss": 0.6, "first_loss": 0.69, "reward_accuracy": 0.5, "tokens_per_s": float("inf")}
    assert update_metrics(trained) == {DPO_LOSS: 0.6, "dpo_loss_first": 0.69, REWARD_ACCURACY: 0.5}
