"""One round with the real coordinator: `feddetox coordinator serve` as a process (SQLite, loopback ports), a run
created over its REST API, and two `feddetox edge run` processes with the tiny SLM and the tiny guardian bundle.
The devices reach the coordinator's gRPC port through a recording loopback proxy, for the privacy check."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from edge_helpers import write_pairs_file
from minimal_coordinator import RecordingProxy

from feddetox.adapters import ADAPTER_CONFIG, ADAPTER_WEIGHTS, from_bytes
from feddetox.models.loading import weights_sha256
from feddetox.settings import REPO_ROOT

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def coordinator_round(tmp_path_factory, tiny_llama_path, tiny_bundle, planted, initial_adapter):
    from feddetox_cli.simulation.federation import Coordinator

    tmp = tmp_path_factory.mktemp("coordinator-round")
    config = {
        "name": "edge-e2e",
        "base_model": "tiny-llama",
        "base_model_sha256": weights_sha256(tiny_llama_path),
        "lora": {"r": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]},
        "rounds": 1,
        "clients_per_round": 2,
        "min_clients": 2,
        "round_deadline_s": 600,
        "training": {"local_steps": 2, "batch_size": 2, "max_prompt_tokens": 32, "max_response_tokens": 32},
        "guardian_id": planted["bundle_id"],
        "guardian_threshold": planted["threshold"],
        "sanitization_policy": "replace",
    }
    env = os.environ | {"FEDDETOX_TORCH_THREADS": "1", "OMP_NUM_THREADS": "1", "FEDDETOX_HOME": str(tmp / "home")}
    with Coordinator(tmp / "coordinator", tick_s=0.2) as coordinator:
        run_id = coordinator.create_run(config, initial_adapter)
        proxy = RecordingProxy(coordinator.grpc_port)
        devices = []
        try:
            for name in ("client_a", "client_b"):
                data = write_pairs_file(tmp / f"{name}.jsonl", planted[name])
                args = [
                    "edge", "run", "--coordinator", proxy.address, "--enrol-token", coordinator.token(),
                    "--data", str(data), "--guardian", str(tiny_bundle), "--model", str(tiny_llama_path),
                    "--state", str(tmp / name), "--device-name", name, "--max-rounds", "1", "--max-poll", "0.2",
                ]  # fmt: skip
                devices.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "feddetox_cli", *args],
                        env=env,
                        cwd=REPO_ROOT,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        text=True,
                    )
                )
            outputs = []
            for device in devices:
                out, _ = device.communicate(timeout=600)
                assert device.returncode == 0, out
                outputs.append(out)
            coordinator.wait_rounds(run_id, 1, timeout_s=120)
            metrics = coordinator.request("GET", f"/runs/{run_id}/rounds/1/metrics")
            weights = coordinator.adapter_bytes(run_id, 1)
            adapter_config = coordinator.request("GET", f"/runs/{run_id}/adapters/1/{ADAPTER_CONFIG}")
        finally:
            for device in devices:
                if device.poll() is None:
                    device.kill()
            proxy.close()
    return {"metrics": metrics, "weights": weights, "config": adapter_config, "outputs": outputs, "sent": proxy.sent}


def test_the_round_closes_with_both_updates_and_the_counts(coordinator_round):
    metrics = coordinator_round["metrics"]
    assert metrics["updates"] == 2 and metrics["examples"] == 7
    sanitization = metrics["sanitization"]
    assert (sanitization["pairs_seen"], sanitization["flagged"], sanitization["replaced"]) == (7, 1, 1)
    assert sum(sanitization["score_histogram"]) == 7
    for out in coordinator_round["outputs"]:
        assert "upload: acknowledged" in out and "done: 1 task(s)" in out


def test_the_new_global_adapter_loads_with_peft(coordinator_round, tiny_llama_path, initial_adapter, tmp_path):
    import torch
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "global-v1"
    folder.mkdir()
    (folder / ADAPTER_WEIGHTS).write_bytes(coordinator_round["weights"])
    (folder / ADAPTER_CONFIG).write_text(json.dumps(coordinator_round["config"]))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama_path), folder)
    loaded, tensors = get_peft_model_state_dict(model), from_bytes(coordinator_round["weights"])
    assert set(tensors) == set(from_bytes(initial_adapter))
    for key, value in tensors.items():
        assert torch.equal(loaded[key], torch.from_numpy(value)), key


def test_no_local_text_reaches_the_coordinator(coordinator_round, planted):
    sent = bytes(coordinator_round["sent"])
    assert b"client_a" in sent  # the device name goes out in plain bytes: the recording sees message content
    for name in ("client_a", "client_b"):
        for pair in planted[name]:
            for text in (pair.prompt, pair.chosen, pair.rejected):
                raw = text.encode()
                for start in range(max(1, len(raw) - 19)):
                    assert raw[start : start + 20] not in sent, f"a run of {text[:40]!r} was sent"
