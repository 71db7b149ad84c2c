"""The device agent in this process, against the minimal in-test coordinator (real gRPC on loopback), with the
real tiny guardian bundle, the real tiny SLM and the real local LoRA-DPO step: restarts mid-task, coordinator
restarts, the counts-only path, and the checks of the model and guardian a task names."""

from __future__ import annotations

import io

import grpc
import pytest
from edge_helpers import FAST, write_pairs_file
from minimal_coordinator import CoordinatorState, MinimalCoordinator, Round

from edge_client.agent import AgentConfig, EdgeAgent, Progress
from edge_client.state import DeviceState
from edge_client.transport import CoordinatorClient, RetryPolicy
from feddetox.adapters import sha256_bytes
from feddetox.errors import BundleError, ModelNotFoundError, UnavailableError
from feddetox.models.loading import weights_sha256

ONE_TRY = RetryPolicy(initial_s=0.0, max_delay_s=0.0, max_attempts=1)


@pytest.fixture(scope="module")
def trainers():
    """One real trainer per (model, LoRA) for the whole module: the base model loads once, as on a device."""
    return {}


def _round(tiny_llama_path, planted, adapter: bytes, **kwargs) -> Round:
    settings = dict(
        base_model=str(tiny_llama_path),
        base_model_sha256=weights_sha256(tiny_llama_path),
        adapter=adapter,
        guardian_id=planted["bundle_id"],
        guardian_threshold=planted["threshold"],
        local_steps=2,
        batch_size=2,
    )
    return Round(**{**settings, **kwargs})


def _agent(server, state_dir, data, tiny_bundle, trainers, *, retry=FAST, trainer_factory=None, sleep=None, **config):
    from feddetox.training import LoraDpoTrainer

    def real_trainer(model, lora):
        if (model, lora) not in trainers:
            trainers[(model, lora)] = LoraDpoTrainer(model, lora)
        return trainers[(model, lora)]

    out = io.StringIO()
    client = CoordinatorClient(server.address, retry=retry, sleep=lambda s: None)
    agent = EdgeAgent(
        client,
        DeviceState(state_dir),
        AgentConfig(data_path=data, guardian_dir=tiny_bundle, max_poll_s=0.0, **config),
        trainer_factory=trainer_factory or real_trainer,
        progress=Progress(out),
        sleep=sleep or (lambda s: None),
    )
    return agent, out


def _no_training(model, lora):
    raise AssertionError("the update was trained already: a resumed agent must not train again")


def test_restarts_mid_download_and_mid_upload_resume_and_upload_one_update(
    tmp_path, tiny_llama_path, tiny_bundle, planted, initial_adapter, trainers
):
    state = CoordinatorState(tokens={"token-a"}, chunk_bytes=1000)
    state.round = _round(tiny_llama_path, planted, initial_adapter)
    data = write_pairs_file(tmp_path / "pairs.jsonl", planted["client_a"])
    with MinimalCoordinator(state) as server:
        # 1. the connection drops during the download, and the agent dies (no retry left, no patience)
        state.faults.broken_downloads, state.faults.break_after_chunks = 1, 2
        agent, _ = _agent(server, tmp_path / "dev", data, tiny_bundle, trainers, retry=ONE_TRY, give_up_after_s=0)
        with pytest.raises(UnavailableError):
            agent.run(enrol_token="token-a")
        partial = DeviceState(tmp_path / "dev").partial_path(sha256_bytes(initial_adapter))
        assert partial.stat().st_size == 2000

        # 2. a new process resumes the download, trains, and dies when the acknowledgement is lost
        state.faults.lost_acks = 1
        agent, out = _agent(server, tmp_path / "dev", data, tiny_bundle, trainers, retry=ONE_TRY, give_up_after_s=0)
        with pytest.raises(UnavailableError):
            agent.run()
        assert state.download_offsets == [0, 2000]
        assert "train: done" in out.getvalue() and len(state.updates) == 1

        # 3. a third process finds the trained update in its state folder and sends that same update again
        agent, out = _agent(
            server, tmp_path / "dev", data, tiny_bundle, trainers, trainer_factory=_no_training, max_rounds=1
        )
        assert agent.run() == 1
        assert "already received before" in out.getvalue()
    ((key, stored),) = state.updates.items()
    assert state.upload_attempts == [(key, stored.header.sha256)] * 2
    assert stored.header.sanitization.replaced == 1 and stored.header.sanitization.pairs_seen == 4
    assert DeviceState(tmp_path / "dev").is_done(stored.header.assignment_id)


def test_the_agent_survives_a_coordinator_restart_and_reports_counts_when_nothing_is_left(
    tmp_path, tiny_llama_path, tiny_bundle, planted, initial_adapter, trainers
):
    state = CoordinatorState(tokens={"token-a"})
    # policy drop with a threshold that flags every pair: nothing is left to train on, only counts are sent
    state.round = _round(tiny_llama_path, planted, initial_adapter, policy="drop", guardian_threshold=1e-9)
    data = write_pairs_file(tmp_path / "pairs.jsonl", planted["client_b"])
    server = MinimalCoordinator(state).start()
    restarts = []

    def sleep_and_restart(seconds: float) -> None:  # the coordinator comes back while the device waits
        if server._server is None:
            server.start()
            restarts.append(seconds)
            # the wait a device would spend: until its channel has reconnected (an event, not a clock)
            grpc.channel_ready_future(agent.client._channel).result(timeout=60)

    try:
        agent, out = _agent(
            server,
            tmp_path / "dev",
            data,
            tiny_bundle,
            trainers,
            trainer_factory=_no_training,
            sleep=sleep_and_restart,
            max_rounds=1,
        )
        agent.ensure_enrolled("token-a")
        server.stop()  # the coordinator goes down (its state, like a database, survives)
        assert agent.run() == 1
    finally:
        server.stop()
    assert restarts and "unreachable" in out.getvalue()
    (report,) = state.reports
    assert report.sanitization.pairs_seen == 3 and report.sanitization.dropped == 3
    assert report.metrics["num_examples"] == 0 and not state.updates


def test_a_task_for_another_model_or_guardian_is_refused_clearly(
    tmp_path, tiny_llama_path, tiny_bundle, planted, initial_adapter, trainers
):
    state = CoordinatorState(tokens={"token-a"})
    data = write_pairs_file(tmp_path / "pairs.jsonl", planted["client_b"])
    with MinimalCoordinator(state) as server:
        state.round = _round(tiny_llama_path, planted, initial_adapter, base_model_sha256="f" * 64)
        agent, _ = _agent(server, tmp_path / "dev", data, tiny_bundle, trainers, trainer_factory=_no_training)
        with pytest.raises(ModelNotFoundError, match="f{64}.*has [0-9a-f]{64}") as info:
            agent.run(enrol_token="token-a")
        assert "--model" in str(info.value)

        state.round = _round(tiny_llama_path, planted, initial_adapter, prefix="r2", guardian_id="0123456789abcdef")
        agent, _ = _agent(server, tmp_path / "dev", data, tiny_bundle, trainers, trainer_factory=_no_training)
        with pytest.raises(BundleError, match=f"needs guardian '0123456789abcdef'.*has '{planted['bundle_id']}'"):
            agent.run()
    assert not state.updates and not state.download_offsets
