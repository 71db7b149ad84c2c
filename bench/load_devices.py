"""Light simulated devices for the coordinator load benchmark: real gRPC clients, no training.

    python bench/load_devices.py --target 127.0.0.1:50051 --tokens tokens.txt --first 0 --count 250 --out part.json

Each device runs in its own thread with its own channel (its own TCP connection): `Enrol` -> `Heartbeat` ->
`GetTask` every poll interval until it is selected -> `DownloadAdapter` (sha256 checked) -> `UploadUpdate` of a
small random update of the downloaded adapter's keys and shapes. Starts are spread over `--ramp-s` seconds.
The latency of every call as the device sees it and every error go to `--out` (JSON); `bench/coordinator.py`
starts a few of these processes and merges their files.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
import uuid
from collections import defaultdict

import grpc
import numpy as np

from feddetox.adapters import from_bytes, sha256_bytes, to_bytes
from feddetox.protocol import device_pb2 as pb
from feddetox.protocol import device_pb2_grpc as pb_grpc

CALLS = ("enrol", "heartbeat", "get_task", "download", "upload")
CHUNK = 1 << 20  # bytes of update data per UploadUpdate message
TIMEOUT_S = 120.0


class Recorder:
    """Latencies per call type and errors, shared by the threads of one process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[dict] = []
        self.uploaded = 0

    def call(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        elapsed = time.perf_counter() - start
        with self.lock:
            self.latency[name].append(elapsed)
        return result

    def error(self, device: int, name: str, exc: grpc.RpcError) -> None:
        with self.lock:
            self.errors.append({"device": device, "call": name, "code": str(exc.code()), "details": exc.details()})


def _download(stub, run_id: str, version: int, metadata) -> bytes:
    data, sha = bytearray(), ""
    for chunk in stub.DownloadAdapter(
        pb.DownloadAdapterRequest(run_id=run_id, version=version), metadata=metadata, timeout=TIMEOUT_S
    ):
        data += chunk.data
        sha = chunk.sha256
    if sha256_bytes(bytes(data)) != sha:
        raise ValueError("downloaded adapter does not match its sha256")
    return bytes(data)


def _update_of(global_bytes: bytes, seed: int) -> bytes:
    """The global adapter plus small seeded noise: the run's keys and shapes, float32."""
    rng = np.random.default_rng(seed)
    base = from_bytes(global_bytes, where="global adapter")
    return to_bytes(
        {k: (v + rng.standard_normal(v.shape, dtype=np.float32) * 0.01).astype(np.float32) for k, v in base.items()}
    )


def _upload(stub, task: pb.Task, blob: bytes, metadata) -> pb.UploadReceipt:
    header = pb.UpdateHeader(
        idempotency_key=task.assignment_id,
        run_id=task.run_id,
        round_index=task.round_index,
        assignment_id=task.assignment_id,
        num_examples=8,
        size_bytes=len(blob),
        sha256=sha256_bytes(blob),
        base_adapter_version=task.global_adapter.version,
        metrics={"dpo_loss": 0.69, "reward_accuracy": 0.5},
    )

    def messages():
        yield pb.UploadUpdateRequest(header=header)
        for start in range(0, len(blob), CHUNK):
            yield pb.UploadUpdateRequest(data=blob[start : start + CHUNK])

    return stub.UploadUpdate(messages(), metadata=metadata, timeout=TIMEOUT_S)


def device_life(index: int, token: str, args: argparse.Namespace, rec: Recorder, stop_at: float) -> None:
    # a local subchannel pool: each device holds its own connection, as separate phones would
    channel = grpc.insecure_channel(args.target, options=[("grpc.use_local_subchannel_pool", 1)])
    stub = pb_grpc.DeviceServiceStub(channel)
    step = "enrol"
    try:
        enrolled = rec.call(
            "enrol",
            stub.Enrol,
            pb.EnrolRequest(enrolment_token=token, device_name=f"load-{index}", platform="bench"),
            timeout=TIMEOUT_S,
        )
        metadata = (
            ("x-feddetox-device-id", enrolled.device_id),
            ("authorization", f"Bearer {enrolled.device_secret}"),
        )
        step = "heartbeat"
        rec.call("heartbeat", stub.Heartbeat, pb.HeartbeatRequest(status="idle"), metadata=metadata, timeout=TIMEOUT_S)
        step = "get_task"
        while True:
            response = rec.call("get_task", stub.GetTask, pb.GetTaskRequest(), metadata=metadata, timeout=TIMEOUT_S)
            if response.has_task:
                break
            if time.monotonic() > stop_at:
                with rec.lock:
                    rec.errors.append({"device": index, "call": "get_task", "code": "no task", "details": ""})
                return
            time.sleep(min(response.retry_after_s, args.poll_s) * random.uniform(0.8, 1.2))
        task = response.task
        step = "download"
        data = rec.call("download", _download, stub, task.run_id, task.global_adapter.version, metadata)
        blob = _update_of(data, seed=index)
        step = "upload"
        receipt = rec.call("upload", _upload, stub, task, blob, metadata)
        if not receipt.duplicate:
            with rec.lock:
                rec.uploaded += 1
    except grpc.RpcError as exc:
        rec.error(index, step, exc)
    finally:
        channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", required=True, help="the coordinator's gRPC host:port")
    parser.add_argument("--tokens", required=True, help="file of enrolment tokens, one a line")
    parser.add_argument("--first", type=int, default=0, help="index of this process's first token")
    parser.add_argument("--count", type=int, required=True, help="devices in this process")
    parser.add_argument("--ramp-s", type=float, default=10.0, help="spread the device starts over this many seconds")
    parser.add_argument("--poll-s", type=float, default=2.0, help="poll at most this often (seconds)")
    parser.add_argument("--max-s", type=float, default=600.0, help="give up polling after this many seconds")
    parser.add_argument("--out", required=True, help="JSON file of latencies and errors")
    args = parser.parse_args(argv)

    tokens = open(args.tokens).read().split()[args.first : args.first + args.count]
    if len(tokens) != args.count:
        parser.error(f"--tokens holds {len(tokens)} tokens from index {args.first}, need {args.count}")
    rec = Recorder()
    stop_at = time.monotonic() + args.max_s
    threads = []
    started = time.monotonic()
    for i, token in enumerate(tokens):
        delay = started + args.ramp_s * i / max(1, args.count) - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        thread = threading.Thread(
            target=device_life, args=(args.first + i, token, args, rec, stop_at), name=f"device-{uuid.uuid4().hex[:6]}"
        )
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    result = {
        "devices": args.count,
        "uploaded": rec.uploaded,
        "wall_s": time.monotonic() - started,
        "latency_s": {k: rec.latency.get(k, []) for k in CALLS},
        "errors": rec.errors,
    }
    with open(args.out, "w") as handle:
        json.dump(result, handle)
    print(f"load_devices: {rec.uploaded}/{args.count} uploaded, {len(rec.errors)} errors", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
