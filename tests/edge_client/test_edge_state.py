"""The device state folder: private credential, cached adapters, the task's phase, the pending update."""

from __future__ import annotations

import os
import stat

import pytest

from edge_client.assignment import Assignment, TrainingSettings
from edge_client.state import Credential, DeviceState, PendingUpdate, idempotency_key
from feddetox.adapters import LoraSpec, sha256_bytes
from feddetox.errors import DataError
from feddetox.sanitize import SanitizeCounts


def _assignment(assignment_id: str = "r1-dev-1") -> Assignment:
    return Assignment(
        run_id="run-1",
        round_index=1,
        assignment_id=assignment_id,
        base_model="tiny",
        base_model_sha256="0" * 64,
        lora=LoraSpec(r=4, alpha=8.0, target_modules=("q_proj", "v_proj")),
        training=TrainingSettings(local_steps=3),
        adapter_version=2,
        adapter_sha256="1" * 64,
        adapter_size=10,
        guardian_id="g1",
        guardian_threshold=None,
        sanitization_policy="replace",
    )


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_credential_file_is_private(tmp_path):
    os.umask(0o022)
    state = DeviceState(tmp_path / "device")
    assert state.load_credential() is None
    state.save_credential(Credential("dev-1", "s3cret", "127.0.0.1:1"))
    assert _mode(state.credential_path) == 0o600
    assert DeviceState(tmp_path / "device").load_credential() == Credential("dev-1", "s3cret", "127.0.0.1:1")
    os.chmod(state.credential_path, 0o644)  # someone loosened it: loading makes it private again
    state.load_credential()
    assert _mode(state.credential_path) == 0o600
    assert not list((tmp_path / "device").glob("*.tmp"))


def test_adapters_are_cached_by_content(tmp_path):
    state = DeviceState(tmp_path)
    blob = b"adapter bytes"
    path = state.store_adapter(blob)
    assert path == state.adapter_path(sha256_bytes(blob))
    assert state.cached_adapter(sha256_bytes(blob)) == blob
    path.write_bytes(b"tampered")
    assert state.cached_adapter(sha256_bytes(blob)) is None and not path.exists()
    with pytest.raises(DataError, match="sha256"):
        state.adapter_path("../../etc/passwd")


def test_task_phases_and_pending_update_survive_a_restart(tmp_path):
    state = DeviceState(tmp_path)
    assert state.current() is None
    state.begin(_assignment())
    state.set_phase("downloaded")
    blob = b"trained adapter"
    update = PendingUpdate(
        assignment_id="r1-dev-1",
        run_id="run-1",
        round_index=1,
        idempotency_key=idempotency_key("dev-1", "r1-dev-1"),
        sha256=sha256_bytes(blob),
        size_bytes=len(blob),
        num_examples=5,
        base_adapter_version=2,
        metrics={"loss": 0.5},
        sanitization=SanitizeCounts(pairs_seen=5, flagged=1, replaced=1),
    )
    state.save_update(update, blob)

    again = DeviceState(tmp_path)  # a new process
    assignment, phase = again.current()
    assert assignment == _assignment() and phase == "trained"
    assert again.pending_update() == (update, blob)

    again.finish("r1-dev-1")
    assert again.current() is None and again.pending_update() is None
    assert again.is_done("r1-dev-1")


def test_a_new_assignment_drops_the_update_of_another(tmp_path):
    state = DeviceState(tmp_path)
    state.begin(_assignment("a"))
    blob = b"x"
    update = PendingUpdate("a", "run-1", 1, "k", sha256_bytes(blob), 1, 1, 0)
    state.save_update(update, blob)
    state.begin(_assignment("b"))
    assert state.pending_update() is None and state.current()[0].assignment_id == "b"


def test_a_mismatched_or_corrupt_update_is_not_kept(tmp_path):
    state = DeviceState(tmp_path)
    state.begin(_assignment())
    with pytest.raises(DataError, match="does not match"):
        state.save_update(PendingUpdate("r1-dev-1", "run-1", 1, "k", "0" * 64, 1, 1, 0), b"x")
    blob = b"y"
    state.save_update(PendingUpdate("r1-dev-1", "run-1", 1, "k", sha256_bytes(blob), 1, 1, 0), blob)
    (tmp_path / "update" / "update.safetensors").write_bytes(b"z")
    assert state.pending_update() is None


def test_idempotency_key_is_fixed_per_device_and_assignment():
    assert idempotency_key("dev-1", "a") == idempotency_key("dev-1", "a")
    assert len({idempotency_key("dev-1", "a"), idempotency_key("dev-2", "a"), idempotency_key("dev-1", "b")}) == 3


def test_a_corrupt_state_file_names_itself(tmp_path):
    state = DeviceState(tmp_path)
    (tmp_path / "task.json").write_text("{not json")
    with pytest.raises(DataError, match="task.json"):
        state.current()


def test_each_round_trains_on_another_order_of_the_local_pairs() -> None:
    """With one seed for every round, 8 pairs per round out of 16 would be the same 8 each round."""
    from edge_client.agent import _train_config
    from edge_client.assignment import Assignment, TrainingSettings
    from feddetox.adapters import LoraSpec
    from feddetox.training.batches import pair_order

    def assignment(round_index: int) -> Assignment:
        return Assignment(
            run_id="r", round_index=round_index, assignment_id="a", base_model="m", base_model_sha256="0" * 64,
            lora=LoraSpec(r=4, alpha=8.0, target_modules=("q_proj",)), adapter_version=1, adapter_sha256="0" * 64,
            training=TrainingSettings(local_steps=4, batch_size=2, seed=3), adapter_size=1, guardian_id="g",
            guardian_threshold=None, sanitization_policy="replace",
        )  # fmt: skip

    seeds = [_train_config(assignment(r)).seed for r in (1, 2, 3)]
    assert len(set(seeds)) == 3
    assert seeds == [_train_config(assignment(r)).seed for r in (1, 2, 3)]  # and the same on every run
    covered = {i for s in seeds[:2] for i in pair_order(16, 8, s)}
    assert len(covered) > 8
