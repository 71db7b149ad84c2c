"""One federated round end to end: two `feddetox edge run` processes against the minimal in-test coordinator
(real gRPC on loopback, see minimal_coordinator.py), with the tiny SLM and the tiny guardian bundle. Every byte
the devices send passes a loopback TCP proxy that records it, for the privacy test."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from edge_helpers import write_pairs_file
from minimal_coordinator import CoordinatorState, MinimalCoordinator, RecordingProxy, Round

from feddetox.adapters import LoraSpec, from_bytes, save_peft
from feddetox.models.loading import weights_sha256
from feddetox.refusals import shipped_templates
from feddetox.settings import REPO_ROOT

pytestmark = pytest.mark.slow

RUN_ARGS = ["--max-rounds", "1", "--max-poll", "0.1", "--give-up-after", "120"]
LORA = LoraSpec(r=4, alpha=8.0, dropout=0.0, target_modules=("q_proj", "v_proj"))


def _edge(*args: str, home: Path) -> subprocess.Popen:
    env = os.environ | {"FEDDETOX_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "FEDDETOX_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "feddetox_cli", "edge", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO_ROOT,
    )


@pytest.fixture(scope="module")
def round_result(tmp_path_factory, tiny_llama_path, tiny_bundle, planted, initial_adapter):
    """Run the round once for every test of this module: (coordinator state, device outputs, bytes sent)."""
    tmp = tmp_path_factory.mktemp("round")
    state = CoordinatorState(tokens={"token-a", "token-b"}, chunk_bytes=16 * 1024)
    state.round = Round(
        base_model="tiny-llama",
        base_model_sha256=weights_sha256(tiny_llama_path),
        adapter=initial_adapter,
        guardian_id=planted["bundle_id"],
        guardian_threshold=planted["threshold"],
        lora_r=LORA.r,
        lora_alpha=LORA.alpha,
        target_modules=LORA.target_modules,
        local_steps=2,
        batch_size=2,
    )
    with MinimalCoordinator(state) as server:
        proxy = RecordingProxy(server.port)
        try:
            devices = []
            for name, token in (("client_a", "token-a"), ("client_b", "token-b")):
                data = write_pairs_file(tmp / f"{name}.jsonl", planted[name])
                args = [
                    "run", "--coordinator", proxy.address, "--enrol-token", token, "--data", str(data),
                    "--guardian", str(tiny_bundle), "--model", str(tiny_llama_path), "--state", str(tmp / name),
                    "--device-name", name, *RUN_ARGS,
                ]  # fmt: skip
                devices.append(_edge(*args, home=tmp / "home"))
            outputs = []
            for device in devices:
                out, _ = device.communicate(timeout=600)
                assert device.returncode == 0, out
                outputs.append(out)
        finally:
            proxy.close()
    return state, outputs, bytes(proxy.sent)


def test_two_devices_complete_a_round(round_result):
    state, outputs, _ = round_result
    assert len(state.updates) == 2
    for out in outputs:
        for phase in ("download:", "sanitize:", "train:", "upload:"):
            assert phase in out, out
        assert "done: 1 task(s)" in out
    by_device = {u.header.assignment_id: u for u in state.updates.values()}
    a, b = by_device["r1-dev-1"].header, by_device["r1-dev-2"].header
    if a.sanitization.pairs_seen != 4:  # the devices enrolled in either order
        a, b = b, a
    assert (a.sanitization.pairs_seen, a.sanitization.flagged, a.sanitization.replaced) == (4, 1, 1)
    assert (b.sanitization.pairs_seen, b.sanitization.flagged, b.sanitization.replaced) == (3, 0, 0)
    assert sum(a.sanitization.score_histogram) == 4 and sum(b.sanitization.score_histogram) == 3
    assert a.num_examples == 4 and b.num_examples == 3
    assert {"dpo_loss", "reward_accuracy", "reward_margin"} <= set(a.metrics) and "loss" not in a.metrics
    assert "1 flagged, 1 replaced" in "".join(outputs)


def test_the_uploaded_adapter_loads_with_peft(round_result, tiny_llama_path, initial_adapter, tmp_path):
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    state, _, _ = round_result
    start = from_bytes(initial_adapter)
    for update in state.updates.values():
        tensors = from_bytes(update.blob)
        assert set(tensors) == set(start) and all(t.dtype.name == "float32" for t in tensors.values())
        folder = save_peft(tmp_path / update.update_id, tensors, LORA, str(tiny_llama_path))
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_path), folder)
        loaded = get_peft_model_state_dict(model)
        for key, value in tensors.items():
            assert torch.equal(loaded[key], torch.from_numpy(value)), key
        moved = max(float(abs(tensors[k] - start[k]).max()) for k in tensors)
        assert moved > 0, "the local step did not change the adapter"


def test_no_local_text_leaves_the_device(round_result, planted):
    """Every byte both devices sent: no prompt or answer of their data, nor any 20-character run of one."""
    _, _, sent = round_result
    assert b"token-a" in sent and b"r1-dev-" in sent  # the recording sees plain message bytes
    texts = [t for name in ("client_a", "client_b") for p in planted[name] for t in (p.prompt, p.chosen, p.rejected)]
    refusals = set(shipped_templates())
    for text in texts:
        if text in refusals:
            continue
        raw = text.encode("utf-8")
        for start in range(0, max(1, len(raw) - 19)):
            window = raw[start : start + 20]
            assert window not in sent, f"{window!r} of local text {text[:40]!r} was sent"
