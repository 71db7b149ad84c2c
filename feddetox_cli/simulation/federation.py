"""One federated run as a deployment does it: the coordinator and the devices as processes, REST for the operator.

with Coordinator(state_dir) as coord:
    run_id = coord.create_run(config, start_adapter_bytes)
    devices = [Device.start(coord, token, data, guardian, state) for ...]
    coord.wait_rounds(run_id, n)
"""

from __future__ import annotations

import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from feddetox.errors import FedDetoxError, UnavailableError
from feddetox_cli.lifetime import PARENT_PID_ENV

ADMIN_HEADER = "X-Admin-Key"
TERMINAL = {"completed", "failed", "stopped"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _feddetox(*args: str) -> list[str]:
    return [sys.executable, "-m", "feddetox_cli", *args]


def spawn(args: list[str], *, env: dict[str, str], log: Any) -> subprocess.Popen:
    """A child process of this simulation, output to `log`; it ends itself when the simulation dies.

    The child asks the kernel for that itself (`feddetox_cli.lifetime`): a `preexec_fn` here would make
    subprocess fork this process, and gRPC's fork handlers abort a child forked while this process's own gRPC
    channels are live. Linux ties the signal to the thread that started the child: start children from the
    thread that outlives them (the simulation's main thread does).
    """
    env = env | {PARENT_PID_ENV: str(os.getpid())}
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)


class Coordinator:
    """`feddetox coordinator serve` as a child process on free loopback ports, with a small REST client."""

    def __init__(self, state_dir: Path, *, log_path: Path | None = None, tick_s: float = 0.5) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.rest_port, self.grpc_port = free_port(), free_port()
        self.admin_key = secrets.token_urlsafe(24)
        self.log_path = log_path or self.state_dir / "coordinator.log"
        self.tick_s = tick_s
        self.process: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.rest_port}"
        self.grpc_address = f"127.0.0.1:{self.grpc_port}"
        self._http = httpx.Client(base_url=self.url + "/api/v1", headers={ADMIN_HEADER: self.admin_key}, timeout=60)

    def __enter__(self) -> Coordinator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout_s: float = 120.0) -> None:
        env = os.environ | {
            "FEDDETOX_STATE_DIR": str(self.state_dir),
            "FEDDETOX_ADMIN_KEY": self.admin_key,
            "FEDDETOX_TICK_S": str(self.tick_s),
        }
        args = ["coordinator", "serve", "--rest-port", str(self.rest_port), "--grpc-port", str(self.grpc_port)]
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child writes to it for its whole life
        self.process = spawn(_feddetox(*args), env=env, log=log)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise UnavailableError(f"the coordinator exited with {self.process.returncode}; see {self.log_path}")
            try:
                if httpx.get(self.url + "/api/v1/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise UnavailableError(f"the coordinator was not ready within {timeout_s} s; see {self.log_path}")

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            raise FedDetoxError(f"{method} {path}: HTTP {response.status_code}: {response.text[:500]}")
        return response.json() if response.content and "json" in response.headers.get("content-type", "") else response

    def create_run(self, config: dict[str, Any], start_adapter: bytes) -> str:
        run = self.request("POST", "/runs", json=config)
        octet = {"Content-Type": "application/octet-stream"}
        self.request("PUT", f"/runs/{run['id']}/adapter", content=start_adapter, headers=octet)
        self.request("POST", f"/runs/{run['id']}/start")
        return run["id"]

    def token(self) -> str:
        return self.request("POST", "/enrolment-tokens", json={"note": "simulation"})["token"]

    def run(self, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/runs/{run_id}")

    def rounds(self, run_id: str) -> list[dict[str, Any]]:
        return self.request("GET", f"/runs/{run_id}/rounds")["data"]

    def metrics(self, run_id: str) -> Any:
        return self.request("GET", f"/runs/{run_id}/metrics")

    def post_evaluation(self, run_id: str, round_index: int, metrics: dict[str, Any], *, note: str = "") -> None:
        numbers = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}
        self.request("POST", f"/runs/{run_id}/rounds/{round_index}/evaluation", json={"metrics": numbers, "note": note})

    def adapter_bytes(self, run_id: str, version: int) -> bytes:
        return self.request("GET", f"/runs/{run_id}/adapters/{version}/adapter_model.safetensors").content

    def wait_rounds(self, run_id: str, rounds: int, *, timeout_s: float, devices: list[Device] = ()) -> dict:
        """Poll until `rounds` rounds closed; print a line when something changes; fail fast if a device died."""
        deadline, last = time.monotonic() + timeout_s, None
        while True:
            run = self.run(run_id)
            state = (run["status"], run["rounds_closed"])
            if state != last:
                closed, total = run["rounds_closed"], run["config"]["rounds"]
                print(
                    f"  run {run_id[:8]}: {run['status']}, {closed}/{total} rounds closed (wants {rounds})", flush=True
                )
                last = state
            if run["rounds_closed"] >= rounds:
                return run
            if run["status"] in TERMINAL:
                failure = run.get("failure")
                raise FedDetoxError(f"run {run_id} ended {run['status']} ({failure}) after {state[1]} rounds")
            for device in devices:
                if device.process.poll() not in (None, 0):
                    code = device.process.returncode
                    raise FedDetoxError(f"device {device.name} exited with {code}; see {device.log}")
            if time.monotonic() > deadline:
                raise FedDetoxError(f"run {run_id}: {rounds} rounds did not close within {timeout_s} s")
            time.sleep(1.0)


@dataclass
class Device:
    """`feddetox edge run` as a child process: one simulated edge device with its own data and state folder."""

    name: str
    process: subprocess.Popen
    log: Path

    @classmethod
    def start(
        cls,
        coordinator: Coordinator,
        *,
        name: str,
        data: Path,
        guardian: Path,
        state: Path,
        model: str,
        max_rounds: int,
        threads: int = 1,
    ) -> Device:
        state.mkdir(parents=True, exist_ok=True)
        log = state / "edge.log"
        args = [
            "edge", "run", "--coordinator", coordinator.grpc_address, "--enrol-token", coordinator.token(),
            "--data", str(data), "--guardian", str(guardian), "--state", str(state), "--model", model,
            "--device-name", name, "--max-rounds", str(max_rounds), "--max-poll", "2",
        ]  # fmt: skip
        env = os.environ | {"OMP_NUM_THREADS": str(threads), "FEDDETOX_TORCH_THREADS": str(threads)}
        handle = open(log, "ab")  # noqa: SIM115 - the child writes to it for its whole life
        process = spawn(_feddetox(*args), env=env, log=handle)
        return cls(name, process, log)

    def stop(self, timeout_s: float = 30) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
