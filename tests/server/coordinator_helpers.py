"""Helpers of the coordinator tests: tiny adapters, a coordinator process, an in-test gRPC device.

The in-test device stands in for the real edge client (built elsewhere): it enrols, polls, downloads and
uploads seeded random adapters of the run's shapes; it trains nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import httpx
import numpy as np

from feddetox.adapters import sha256_bytes, to_bytes
from feddetox.protocol import device_pb2 as pb
from feddetox.protocol import device_pb2_grpc as pb_grpc

ADMIN_KEY = "test-admin-key-0123456789"
HIDDEN, RANK, LAYERS = 16, 4, 2
REPO = Path(__file__).resolve().parents[2]


def adapter_keys(hidden: int = HIDDEN, rank: int = RANK, layers: int = LAYERS) -> dict[str, tuple[int, int]]:
    """PEFT key names and shapes of a LoRA on q_proj and v_proj (default: r=4, a 2-layer model of hidden 16)."""
    keys = {}
    for layer in range(layers):
        for module in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            keys[f"{prefix}.lora_A.weight"] = (rank, hidden)
            keys[f"{prefix}.lora_B.weight"] = (hidden, rank)
    return keys


def make_adapter(
    seed: int, scale: float = 0.1, keys: dict[str, tuple[int, int]] | None = None
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in (keys or adapter_keys()).items()}


def numpy_fedavg(adapters: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    """The reference: sum_i w_i x_i / sum_i w_i in float64."""
    w = np.asarray(weights, dtype=np.float64)
    return {
        k: np.tensordot(w, np.stack([a[k].astype(np.float64) for a in adapters]), axes=1) / w.sum() for k in adapters[0]
    }


def run_config(**overrides) -> dict:
    config = {
        "name": "test-run",
        "base_model": "tiny-test-model",
        "lora": {"r": RANK, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "rounds": 2,
        "clients_per_round": 3,
        "min_clients": 2,
        "round_deadline_s": 600,
        "training": {"local_steps": 1},
        "selection_seed": 7,
    }
    config.update(overrides)
    return config


def wait_for(predicate: Callable[[], object], *, timeout: float = 60.0, what: str = "a state") -> object:
    """Poll `predicate` until it returns something truthy; fail after `timeout` seconds (a bound, not a sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class CoordinatorProcess:
    """`python -m feddetox_cli coordinator serve` as a subprocess on free loopback ports."""

    state_dir: Path
    database_url: str = ""
    rest_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    #: extra environment of the process
    env: dict = field(default_factory=dict)
    #: the CA that signed the server certificate, when the process serves TLS
    tls_ca: Path | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://127.0.0.1:{self.rest_port}"

    @property
    def verify(self) -> str | bool:
        return str(self.tls_ca) if self.tls_ca else True

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 90.0) -> CoordinatorProcess:
        env = {
            **os.environ,
            "FEDDETOX_ADMIN_KEY": ADMIN_KEY,
            "FEDDETOX_STATE_DIR": str(self.state_dir),
            "FEDDETOX_TICK_S": "0.2",
            "FEDDETOX_CHUNK_SIZE": "1024",
            "FEDDETOX_DEVICE_RATE_PER_S": "1000",  # the tests poll fast; the limit has its own test
            "PYTHONUNBUFFERED": "1",
        }
        if self.database_url:
            env["FEDDETOX_DATABASE_URL"] = self.database_url
        env.update(self.env)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.state_dir / f"coordinator-{time.time_ns()}.log"
        args = ["--rest-port", str(self.rest_port), "--grpc-port", str(self.grpc_port)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "feddetox_cli", "coordinator", "serve", *args],
            env=env,
            cwd=REPO,
            stdout=open(self.log_path, "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
        )
        wait_for(self._ready, timeout=timeout, what=f"the coordinator to be ready at {self.url}")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"the coordinator exited with {self.proc.returncode}:\n{self.log()}")
        try:
            return httpx.get(f"{self.url}/api/v1/ready", timeout=2, verify=self.verify).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode if self.proc else 0

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api/v1", headers={"X-Admin-Key": ADMIN_KEY}, timeout=30, verify=self.verify
        )


def create_run(client: httpx.Client, adapter: dict[str, np.ndarray], *, start: bool = True, **overrides) -> str:
    run = client.post("/runs", json=run_config(**overrides))
    assert run.status_code == 201, run.text
    run_id = run.json()["id"]
    put = client.put(f"/runs/{run_id}/adapter", content=to_bytes(adapter))
    assert put.status_code == 200, put.text
    if start:
        assert client.post(f"/runs/{run_id}/start").status_code == 200
    return run_id


class Device:
    """An in-test gRPC device (stands in for the edge client): enrol, poll, download, upload."""

    def __init__(self, target: str, *, root_ca: bytes | None = None) -> None:
        if root_ca is None:
            self.channel = grpc.insecure_channel(target)
        else:
            self.channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root_ca))
        self.stub = pb_grpc.DeviceServiceStub(self.channel)
        self.device_id = ""
        self.secret = ""

    def close(self) -> None:
        self.channel.close()

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-feddetox-device-id", self.device_id), ("authorization", f"Bearer {self.secret}"))

    def enrol(self, token: str, name: str) -> Device:
        response = self.stub.Enrol(
            pb.EnrolRequest(enrolment_token=token, device_name=name, platform="test"), timeout=30
        )
        self.device_id, self.secret = response.device_id, response.device_secret
        return self

    def heartbeat(self) -> pb.HeartbeatResponse:
        return self.stub.Heartbeat(pb.HeartbeatRequest(status="idle"), metadata=self.metadata, timeout=30)

    def task(self) -> pb.Task | None:
        response = self.stub.GetTask(pb.GetTaskRequest(), metadata=self.metadata, timeout=30)
        return response.task if response.has_task else None

    def download(
        self, run_id: str, version: int, offset: int = 0, limit_chunks: int | None = None
    ) -> tuple[bytes, str, int]:
        """(bytes from offset, sha256 of the whole blob, total size); stops after limit_chunks if given."""
        data, sha, total = bytearray(), "", 0
        stream = self.stub.DownloadAdapter(
            pb.DownloadAdapterRequest(run_id=run_id, version=version, offset=offset), metadata=self.metadata, timeout=60
        )
        for i, chunk in enumerate(stream):
            assert chunk.offset == offset + len(data)
            data += chunk.data
            sha, total = chunk.sha256, chunk.total_size
            if limit_chunks is not None and i + 1 >= limit_chunks:
                stream.cancel()
                break
        return bytes(data), sha, total

    def upload(
        self,
        task: pb.Task,
        blob: bytes,
        *,
        num_examples: int = 10,
        key: str | None = None,
        chunk: int = 1000,
        metrics: dict | None = None,
        header_overrides: dict | None = None,
    ) -> pb.UploadReceipt:
        fields = dict(
            idempotency_key=key or uuid.uuid4().hex,
            run_id=task.run_id,
            round_index=task.round_index,
            assignment_id=task.assignment_id,
            num_examples=num_examples,
            size_bytes=len(blob),
            sha256=sha256_bytes(blob),
            base_adapter_version=task.global_adapter.version,
            metrics=metrics or {"dpo_loss": 0.69, "reward_accuracy": 0.5},
            sanitization=pb.SanitizationCounts(
                pairs_seen=num_examples, flagged=1, replaced=1, dropped=0, score_histogram=[1] * 10
            ),
        )
        fields.update(header_overrides or {})

        def messages():
            yield pb.UploadUpdateRequest(header=pb.UpdateHeader(**fields))
            for start in range(0, len(blob), chunk):
                yield pb.UploadUpdateRequest(data=blob[start : start + chunk])

        return self.stub.UploadUpdate(messages(), metadata=self.metadata, timeout=60)


def reason_of(error: grpc.RpcError) -> str:
    return dict(error.trailing_metadata() or ()).get("x-feddetox-reason", "")
