"""The coordinator's data path, side by side with Flower: aggregation, upload throughput, 1,000 devices.

    python bench/coordinator.py                  # everything, about 15 minutes on 2 cores; writes
                                                 # bench/results/coordinator.json and coordinator.png
    python bench/coordinator.py --parts agg      # one part (agg, upload, load); --devices 100 for a short load

1. Aggregation: K = 10, 100, 1000 updates of a rank-16 LoRA on every attention and MLP projection of
   SmolLM2-135M (30 layers, hidden 576, intermediate 1536, 9 heads, 3 kv heads, head dim 64: 4.88 M
   parameters, 19.5 MB float32), random values seeded per update. Ours: `FedAvgAccumulator`, each update
   generated just before it is added and dropped after (the coordinator streams updates from its blob store
   the same way). Flower: `flwr.server.strategy.aggregate.aggregate` on all K updates held in memory, as
   its API requires. Each (implementation, K) runs in a fresh process; time counts the aggregation only
   (not the generation); memory is the peak RSS minus the RSS after imports (holding nothing).
2. Upload: a 19.5 MB update (the adapter above) through `UploadUpdate` of a real coordinator on loopback
   (validation, blob store with fsync, database commit included) against `sendall` of the same bytes over a
   plain loopback TCP socket to another process; and the same gRPC client against a server that only drains
   the stream (the floor of Python gRPC here).
3. Load: 1,000 devices (`bench/load_devices.py`, 4 processes of threads, one connection per device) against
   one coordinator on SQLite and then on PostgreSQL; one round selects all of them and closes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, Goal, load_average, load_record, write_result  # noqa: E402

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
ADMIN_KEY = "bench-admin-key-0123456789abcdef"
KS = (10, 100, 1000)
FLOWER_MEMORY_LIMIT_GB = 16.0
LOAD_PROCESSES = 4
UPLOAD_CHUNK = 1 << 20  # bytes per UploadUpdate message, as the edge client sends them
TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# --- the adapter ------------------------------------------------------------------------------------------


def smollm2_lora_shapes(
    r: int = 16,
    layers: int = 30,
    hidden: int = 576,
    intermediate: int = 1536,
    heads: int = 9,
    kv_heads: int = 3,
    head_dim: int = 64,
) -> dict[str, tuple[int, int]]:
    """PEFT key -> shape of a rank-r LoRA on q, k, v, o, gate, up and down of every layer (SmolLM2-135M)."""
    q_out, kv_out = heads * head_dim, kv_heads * head_dim  # 576, 192
    linear = {  # module -> (in_features, out_features)
        "self_attn.q_proj": (hidden, q_out),
        "self_attn.k_proj": (hidden, kv_out),
        "self_attn.v_proj": (hidden, kv_out),
        "self_attn.o_proj": (q_out, hidden),
        "mlp.gate_proj": (hidden, intermediate),
        "mlp.up_proj": (hidden, intermediate),
        "mlp.down_proj": (intermediate, hidden),
    }
    shapes = {}
    for layer in range(layers):
        for module, (fan_in, fan_out) in linear.items():
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            shapes[f"{prefix}.lora_A.weight"] = (r, fan_in)
            shapes[f"{prefix}.lora_B.weight"] = (fan_out, r)
    return shapes


def random_update(shapes: dict[str, tuple[int, int]], seed: int) -> dict[str, np.ndarray]:
    """Uniform values in [-0.01, 0.01), float32, one flat buffer cut into the tensors (fast to generate)."""
    total = sum(a * b for a, b in shapes.values())
    flat = np.random.default_rng(seed).random(total, dtype=np.float32)
    flat -= 0.5
    flat *= 0.02
    out, at = {}, 0
    for key, (a, b) in shapes.items():
        out[key] = flat[at : at + a * b].reshape(a, b)
        at += a * b
    return out


def num_examples(seed: int) -> int:
    return 8 + seed % 57  # weights that differ between clients


# --- part 1: aggregation, one (implementation, K) per fresh process ---------------------------------------


def _rss_kb(field: str, pid: int | str = "self") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def _aggregate_child(impl: str, k: int) -> dict:
    """Runs in a fresh process: aggregate k generated updates; time and peak memory above the baseline."""
    from server.aggregation import FedAvgAccumulator

    if impl == "flower":
        from flwr.server.strategy.aggregate import aggregate
    shapes = smollm2_lora_shapes()
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS starts again from the RSS now
    baseline_kb = _rss_kb("VmRSS")
    seconds = cpu_seconds = 0.0
    if impl == "ours":
        acc = FedAvgAccumulator()
        for i in range(k):
            update = random_update(shapes, seed=i)  # generated on the fly, dropped after the add
            start, cpu = time.perf_counter(), time.process_time()
            acc.add(update, num_examples(i))
            seconds += time.perf_counter() - start
            cpu_seconds += time.process_time() - cpu
            del update
        start, cpu = time.perf_counter(), time.process_time()
        result = acc.result()
        seconds += time.perf_counter() - start
        cpu_seconds += time.process_time() - cpu
        first = result[next(iter(shapes))]
    else:
        results = [(list(random_update(shapes, seed=i).values()), num_examples(i)) for i in range(k)]
        start, cpu = time.perf_counter(), time.process_time()
        result = aggregate(results)
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu
        first = result[0]
    peak_kb = _rss_kb("VmHWM")
    return {
        "impl": impl,
        "k": k,
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "peak_above_baseline_gb": (peak_kb - baseline_kb) / 2**20,
        "baseline_gb": baseline_kb / 2**20,
        "checksum": float(np.asarray(first, dtype=np.float64).sum()),
    }


def aggregation_part(ks: tuple[int, ...]) -> dict:
    shapes = smollm2_lora_shapes()
    params = sum(a * b for a, b in shapes.values())
    update_gb = params * 4 / 2**30
    rows, skipped = [], []
    for k in ks:
        for impl in ("ours", "flower"):
            # Flower holds the K updates and their K weighted copies at once
            need_gb = 2 * k * update_gb
            if impl == "flower" and need_gb > FLOWER_MEMORY_LIMIT_GB:
                skipped.append({"impl": impl, "k": k, "needs_gb": round(need_gb, 1)})
                print(f"aggregation: flower K={k} skipped (needs ~{need_gb:.1f} GB)", file=sys.stderr, flush=True)
                continue
            out = subprocess.run(
                [sys.executable, __file__, "_aggregate", impl, str(k)],
                check=True,
                capture_output=True,
                text=True,
                cwd=REPO,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"aggregation: {impl} K={k}: {row['seconds']:.2f} s, peak +{row['peak_above_baseline_gb']:.3f} GB",
                file=sys.stderr,
                flush=True,
            )
    return {
        "adapter": {"tensors": len(shapes), "parameters": params, "mb_float32": round(params * 4 / 1e6, 2)},
        "runs": rows,
        "skipped": skipped,
    }


# --- a coordinator process --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Coordinator:
    """`python -m feddetox_cli coordinator serve` on free loopback ports, in its own state folder."""

    def __init__(self, state_dir: Path, database_url: str = "", **env: str) -> None:
        self.state_dir, self.rest_port, self.grpc_port = state_dir, _free_port(), _free_port()
        self.env = {
            **os.environ,
            "FEDDETOX_ADMIN_KEY": ADMIN_KEY,
            "FEDDETOX_STATE_DIR": str(state_dir),
            "FEDDETOX_TICK_S": "0.5",
            "PYTHONUNBUFFERED": "1",
            **({"FEDDETOX_DATABASE_URL": database_url} if database_url else {}),
            **env,
        }
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}/api/v1"

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> Coordinator:
        import httpx

        self.state_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.state_dir / "coordinator.log", "wb")  # noqa: SIM115 - closed with the process
        args = ["--rest-port", str(self.rest_port), "--grpc-port", str(self.grpc_port)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "feddetox_cli", "coordinator", "serve", *args],
            env=self.env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the coordinator exited: {(self.state_dir / 'coordinator.log').read_text()}")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the coordinator was not ready within 120 s")

    def admin(self):
        import httpx

        return httpx.Client(base_url=self.url, headers={"X-Admin-Key": ADMIN_KEY}, timeout=60)

    def peak_rss_gb(self) -> float:
        return _rss_kb("VmHWM", self.proc.pid) / 2**20

    def cpu_s(self) -> float:
        import psutil

        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def create_run(client, adapter_bytes: bytes, **config) -> str:
    body = {
        "name": "bench",
        "base_model": "smollm2-135m-instruct",
        "lora": {"r": 16, "alpha": 32, "target_modules": list(TARGET_MODULES)},
        "round_deadline_s": 900,
        "device_seen_window_s": 900,
        "training": {"local_steps": 1},
        **config,
    }
    response = client.post("/runs", json=body)
    response.raise_for_status()
    run_id = response.json()["id"]
    response = client.put(f"/runs/{run_id}/adapter", content=adapter_bytes)
    if response.status_code != 200:
        raise RuntimeError(f"the starting adapter was refused: {response.text}")
    client.post(f"/runs/{run_id}/start").raise_for_status()
    return run_id


def issue_tokens(client, n: int) -> list[str]:
    tokens = []
    for _ in range(n):
        response = client.post("/enrolment-tokens", json={"note": "bench"})
        response.raise_for_status()
        tokens.append(response.json()["token"])
    return tokens


def wait_round(client, run_id: str, index: int, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/runs/{run_id}/rounds")
        response.raise_for_status()
        body = response.json()
        rounds = body["data"] if isinstance(body, dict) else body
        for rnd in rounds:
            if rnd["index"] == index and rnd["status"] in ("closed", "failed"):
                return rnd
        time.sleep(0.5)
    raise RuntimeError(f"round {index} of run {run_id} did not close within {timeout} s")


# --- part 2: upload throughput ----------------------------------------------------------------------------


def _tcp_sink() -> None:
    """Runs in another process: receive length-prefixed blobs into memory, answer one byte each."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        print(server.getsockname()[1], flush=True)
        view = memoryview(bytearray(0))
        while True:
            conn, _ = server.accept()
            with conn:
                size = int.from_bytes(conn.recv(8, socket.MSG_WAITALL), "big")
                if size == 0:
                    return
                if len(view) < size:  # one buffer for all repeats, like gRPC's reused buffers
                    view = memoryview(bytearray(size))
                got = 0
                while got < size:
                    got += conn.recv_into(view[got:], size - got)
                conn.sendall(b"k")


def tcp_seconds(blob: bytes, repeats: int) -> list[float]:
    sink = subprocess.Popen([sys.executable, __file__, "_tcp_sink"], stdout=subprocess.PIPE, text=True)
    port = int(sink.stdout.readline())
    times = []
    try:
        for i in range(repeats + 1):
            start = time.perf_counter()
            with socket.create_connection(("127.0.0.1", port)) as conn:
                conn.sendall(len(blob).to_bytes(8, "big"))
                conn.sendall(blob)
                if conn.recv(1) != b"k":
                    raise RuntimeError("the TCP sink did not acknowledge")
            if i:  # the first copy warms up the sink's buffer
                times.append(time.perf_counter() - start)
        with socket.create_connection(("127.0.0.1", port)) as conn:
            conn.sendall((0).to_bytes(8, "big"))
    finally:
        sink.wait(10)
    return times


def _grpc_sink() -> None:
    """Runs in another process: a gRPC server whose UploadUpdate only drains the stream (Python gRPC's floor)."""
    from concurrent import futures

    import grpc

    from feddetox.protocol import device_pb2 as pb
    from feddetox.protocol import device_pb2_grpc as pb_grpc

    class Drain(pb_grpc.DeviceServiceServicer):
        def UploadUpdate(self, request_iterator, context):
            size = sum(len(m.data) for m in request_iterator)
            return pb.UploadReceipt(update_id=str(size))

    options = [("grpc.max_receive_message_length", 8 << 20), ("grpc.max_send_message_length", 8 << 20)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=options)
    pb_grpc.add_DeviceServiceServicer_to_server(Drain(), server)
    print(server.add_insecure_port("127.0.0.1:0"), flush=True)
    server.start()
    sys.stdin.read()  # until the parent closes it
    server.stop(0)


def grpc_drain_seconds(blob: bytes, repeats: int) -> list[float]:
    """The same client, messages and chunks as the upload, against a server that does nothing with them."""
    import grpc

    from feddetox.protocol import device_pb2 as pb
    from feddetox.protocol import device_pb2_grpc as pb_grpc

    sink = subprocess.Popen(
        [sys.executable, __file__, "_grpc_sink"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    port = int(sink.stdout.readline())
    times = []
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.DeviceServiceStub(channel)

            def messages():
                yield pb.UploadUpdateRequest(header=pb.UpdateHeader(size_bytes=len(blob)))
                for at in range(0, len(blob), UPLOAD_CHUNK):
                    yield pb.UploadUpdateRequest(data=blob[at : at + UPLOAD_CHUNK])

            for i in range(repeats + 1):
                start = time.perf_counter()
                stub.UploadUpdate(messages(), timeout=120)
                if i:  # the first warms up the connection
                    times.append(time.perf_counter() - start)
    finally:
        sink.stdin.close()
        sink.wait(30)
    return times


def upload_part(work: Path, rounds: int = 3) -> dict:
    import grpc

    from feddetox.adapters import sha256_bytes, to_bytes
    from feddetox.protocol import device_pb2 as pb
    from feddetox.protocol import device_pb2_grpc as pb_grpc

    shapes = smollm2_lora_shapes()
    zeros = {k: np.zeros(s, dtype=np.float32) for k, s in shapes.items()}
    coordinator = Coordinator(work / "upload", FEDDETOX_POLL_INTERVAL_S="1").start()
    try:
        with coordinator.admin() as client:
            run_id = create_run(
                client, to_bytes(zeros), rounds=rounds, clients_per_round=1, min_clients=1, name="bench upload"
            )
            (token,) = issue_tokens(client, 1)
            channel = grpc.insecure_channel(coordinator.target, options=[("grpc.max_receive_message_length", 8 << 20)])
            stub = pb_grpc.DeviceServiceStub(channel)
            enrolled = stub.Enrol(pb.EnrolRequest(enrolment_token=token, device_name="bench-upload"), timeout=60)
            meta = (("x-feddetox-device-id", enrolled.device_id), ("authorization", f"Bearer {enrolled.device_secret}"))
            upload_s, transport_s, download_s, sizes = [], [], [], []
            for index in range(1, rounds + 1):
                while not (response := stub.GetTask(pb.GetTaskRequest(), metadata=meta, timeout=60)).has_task:
                    time.sleep(0.2)
                task = response.task
                start = time.perf_counter()
                data = b"".join(
                    c.data
                    for c in stub.DownloadAdapter(
                        pb.DownloadAdapterRequest(run_id=run_id, version=task.global_adapter.version),
                        metadata=meta,
                        timeout=120,
                    )
                )
                download_s.append(time.perf_counter() - start)
                blob = to_bytes(random_update(shapes, seed=index))
                sizes.append(len(blob))
                header = pb.UpdateHeader(
                    idempotency_key=task.assignment_id,
                    run_id=run_id,
                    round_index=task.round_index,
                    assignment_id=task.assignment_id,
                    num_examples=num_examples(index),
                    size_bytes=len(blob),
                    sha256=sha256_bytes(blob),
                    base_adapter_version=task.global_adapter.version,
                )

                def messages(head=header, blob=blob):
                    yield pb.UploadUpdateRequest(header=head)
                    for at in range(0, len(blob), UPLOAD_CHUNK):
                        yield pb.UploadUpdateRequest(data=blob[at : at + UPLOAD_CHUNK])

                # the same bytes under a wrong sha256: received in full, hashed once, refused
                # (checksum_mismatch) and nothing stored, so this times the transport
                wrong = pb.UpdateHeader()
                wrong.CopyFrom(header)
                wrong.sha256, wrong.idempotency_key = "0" * 64, f"{task.assignment_id}-wrong"
                start = time.perf_counter()
                try:
                    stub.UploadUpdate(messages(wrong), metadata=meta, timeout=120)
                    raise RuntimeError("an update with a wrong sha256 was accepted")
                except grpc.RpcError as exc:
                    if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                        raise
                transport_s.append(time.perf_counter() - start)
                start = time.perf_counter()
                stub.UploadUpdate(messages(), metadata=meta, timeout=120)
                upload_s.append(time.perf_counter() - start)
                wait_round(client, run_id, index, timeout=120)
                del data
            channel.close()
        tcp_s = tcp_seconds(blob, repeats=7)
        drain_s = grpc_drain_seconds(blob, repeats=7)
    finally:
        coordinator.stop()
    stages = upload_stages(work / "stages", blob, zeros)
    size = sizes[0]
    grpc_mb_s = size / statistics.median(upload_s) / 1e6
    tcp_mb_s = size / statistics.median(tcp_s) / 1e6
    print(
        f"upload: gRPC {grpc_mb_s:.0f} MB/s (transport {size / statistics.median(transport_s) / 1e6:.0f},"
        f" drain-only server {size / statistics.median(drain_s) / 1e6:.0f}), TCP {tcp_mb_s:.0f} MB/s",
        file=sys.stderr,
        flush=True,
    )
    return {
        "bytes": size,
        "chunk_bytes": UPLOAD_CHUNK,
        "grpc_upload_s": upload_s,
        "grpc_download_s": download_s,
        "tcp_s": tcp_s,
        "grpc_drain_s": drain_s,
        "grpc_drain_mb_s": size / statistics.median(drain_s) / 1e6,
        "grpc_drain_fraction_of_loopback": size / statistics.median(drain_s) / 1e6 / tcp_mb_s,
        "grpc_upload_mb_s": grpc_mb_s,
        "grpc_download_mb_s": size / statistics.median(download_s) / 1e6,
        "tcp_mb_s": tcp_mb_s,
        "fraction_of_loopback": grpc_mb_s / tcp_mb_s,
        "grpc_transport_s": transport_s,
        "grpc_transport_mb_s": size / statistics.median(transport_s) / 1e6,
        "transport_fraction_of_loopback": size / statistics.median(transport_s) / 1e6 / tcp_mb_s,
        "server_stages_s": stages,
    }


def upload_stages(folder: Path, blob: bytes, base: dict[str, np.ndarray], repeats: int = 3) -> dict[str, float]:
    """What the coordinator does with an accepted update's bytes, stage by stage (best of `repeats`, seconds).

    On the server the first three overlap the transport (they run per chunk as the chunks arrive) and the
    fsync overlaps the content checks; here each runs alone.
    """
    from feddetox.adapters import sha256_bytes
    from server.aggregation import FedAvgAccumulator, squared_deltas
    from server.blobs import BlobStore
    from server.safetensors_view import tensor_views

    store = BlobStore(folder)
    chunk = 1 << 20
    digest = sha256_bytes(blob)

    def spool(store_it: bool) -> None:  # copy into the buffer, hash, write to the temp file; then fsync + rename
        with store.spool(len(blob)) as incoming:
            for at in range(0, len(blob), chunk):
                incoming.write(blob[at : at + chunk])
            if store_it:
                store.path(digest).unlink(missing_ok=True)
                incoming.store(digest)

    tensors = tensor_views(blob)
    acc = FedAvgAccumulator()
    acc.add(base, 1.0)
    stages = {
        "receive_copy_hash_write": lambda: spool(False),
        "parse_views": lambda: tensor_views(blob),
        "finite_check_and_delta_norm": lambda: sum(sq for _, sq in squared_deltas(tensors, base)),
        "receive_and_store_fsync": lambda: spool(True),
        "running_sum_add": lambda: acc.add(tensors, 8),
    }
    out = {}
    for name, fn in stages.items():
        out[name] = min(_timed(fn) for _ in range(repeats))
    return out


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- part 3: load -----------------------------------------------------------------------------------------


def _postgres_cluster():
    import importlib.util

    spec = importlib.util.spec_from_file_location("feddetox_tests_postgres", REPO / "tests" / "postgres.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    bin_dir = module.find_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    return module.PostgresCluster(bin_dir).start()


def small_adapter() -> dict[str, np.ndarray]:
    """The load run's adapter: rank 4 on q_proj and v_proj of 2 layers of hidden 576 (62 KB)."""
    shapes = {}
    for layer in range(2):
        for module in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            shapes[f"{prefix}.lora_A.weight"] = (4, 576)
            shapes[f"{prefix}.lora_B.weight"] = (576 if module == "q_proj" else 192, 4)
    return {k: np.zeros(s, dtype=np.float32) for k, s in shapes.items()}


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    arr = np.asarray(values) * 1000
    return {
        "n": len(values),
        "p50_ms": round(float(np.percentile(arr, 50)), 2),
        "p99_ms": round(float(np.percentile(arr, 99)), 2),
        "max_ms": round(float(arr.max()), 2),
    }


def load_part(work: Path, database: str, devices: int) -> dict:
    from feddetox.adapters import to_bytes

    cluster, url = None, ""
    if database == "postgres":
        cluster = _postgres_cluster()
        url = cluster.new_database()
    state = work / f"load-{database}"
    coordinator = Coordinator(
        state, url, FEDDETOX_POLL_INTERVAL_S="2", FEDDETOX_DEVICE_RATE_PER_S="20", FEDDETOX_DEVICE_BURST="100"
    )
    try:
        coordinator.start()
        with coordinator.admin() as client:
            tokens = issue_tokens(client, devices)
            token_file = state / "tokens.txt"
            token_file.write_text("\n".join(tokens) + "\n")
            run_id = create_run(
                client,
                to_bytes(small_adapter()),
                rounds=1,
                clients_per_round=devices,
                min_clients=devices,
                name=f"bench load {database}",
                lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]},
            )
            cpu_before, started = coordinator.cpu_s(), time.monotonic()
            per = [devices // LOAD_PROCESSES + (i < devices % LOAD_PROCESSES) for i in range(LOAD_PROCESSES)]
            procs, outs, first = [], [], 0
            for i, count in enumerate(per):
                out = state / f"devices-{i}.json"
                outs.append(out)
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            str(BENCH / "load_devices.py"),
                            "--target",
                            coordinator.target,
                            "--tokens",
                            str(token_file),
                            "--first",
                            str(first),
                            "--count",
                            str(count),
                            "--out",
                            str(out),
                        ],
                        cwd=REPO,
                    )
                )
                first += count
            for proc in procs:
                proc.wait()
            rnd = wait_round(client, run_id, 1, timeout=300)
            wall_s = time.monotonic() - started
            cpu_s = coordinator.cpu_s() - cpu_before
            peak_gb = coordinator.peak_rss_gb()
            updates = client.get(f"/runs/{run_id}/rounds/1").json()
    finally:
        coordinator.stop()
        if cluster is not None:
            cluster.stop()
    parts = [json.loads(p.read_text()) for p in outs]
    latency = {call: [x for p in parts for x in p["latency_s"][call]] for call in parts[0]["latency_s"]}
    errors = [e for p in parts for e in p["errors"]]
    accepted = int(rnd.get("reported", sum(p["uploaded"] for p in parts)))
    summary = {
        "database": database,
        "devices": devices,
        "client_processes": LOAD_PROCESSES,
        "round_status": rnd["status"],
        "accepted_updates": accepted,
        "errors": len(errors),
        "error_samples": errors[:10],
        "wall_s": round(wall_s, 1),
        "coordinator_peak_rss_gb": round(peak_gb, 3),
        "coordinator_cpu_s": round(cpu_s, 1),
        "coordinator_cpu_s_per_accepted_update": round(cpu_s / max(1, accepted), 4),
        "latency": {call: _percentiles(values) for call, values in latency.items()},
        "round": {k: updates.get(k) for k in ("selected", "reported", "status") if isinstance(updates, dict)},
    }
    print(
        f"load {database}: {accepted}/{devices} accepted, {len(errors)} errors, {wall_s:.0f} s,"
        f" peak RSS {peak_gb:.2f} GB, {cpu_s / max(1, accepted) * 1000:.1f} ms CPU/update",
        file=sys.stderr,
        flush=True,
    )
    return summary


# --- the plot and the result --------------------------------------------------------------------------------


def plot(figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = figures.get("aggregation", {}).get("runs", [])
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(10, 4))
    for impl, style in (("ours", "o-"), ("flower", "s--")):
        rows = sorted((r for r in runs if r["impl"] == impl), key=lambda r: r["k"])
        label = "FedDetox (streaming)" if impl == "ours" else "Flower aggregate()"
        ax_t.plot([r["k"] for r in rows], [r["seconds"] for r in rows], style, label=label)
        ax_m.plot([r["k"] for r in rows], [r["peak_above_baseline_gb"] for r in rows], style, label=label)
    for ax, title in ((ax_t, "aggregation time (s)"), (ax_m, "peak memory above baseline (GB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("updates K (rank-16 LoRA of SmolLM2-135M, 19.5 MB each)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def goals_of(figures: dict) -> dict[str, Goal]:
    runs = {(r["impl"], r["k"]): r for r in figures.get("aggregation", {}).get("runs", [])}
    ours100, flower100 = runs.get(("ours", 100)), runs.get(("flower", 100))
    ours10, ours1000 = runs.get(("ours", 10)), runs.get(("ours", 1000))
    upload = figures.get("upload", {})
    loads = figures.get("load", {})
    load_errors = [v["errors"] + (v["devices"] - v["accepted_updates"]) for v in loads.values()]
    rss = [v["coordinator_peak_rss_gb"] for v in loads.values()]
    return {
        "aggregation_speedup_vs_flower": Goal(
            flower100["seconds"] / ours100["seconds"] if ours100 and flower100 else None, 2.0, ">="
        ),
        "aggregation_memory_ratio_k1000_vs_k10": Goal(
            ours1000["peak_above_baseline_gb"] / ours10["peak_above_baseline_gb"] if ours10 and ours1000 else None,
            1.5,
            "<=",
        ),
        "upload_fraction_of_loopback": Goal(upload.get("fraction_of_loopback"), 0.5, ">="),
        "load_1000_errors": Goal(max(load_errors) if load_errors else None, 0, "<="),
        "coordinator_rss_gb_1000": Goal(max(rss) if rss else None, 1.0, "<="),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_aggregate"]:
        print(json.dumps(_aggregate_child(argv[1], int(argv[2]))))
        return 0
    if argv[:1] == ["_tcp_sink"]:
        _tcp_sink()
        return 0
    if argv[:1] == ["_grpc_sink"]:
        _grpc_sink()
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", default="agg,upload,load", help="comma-separated: agg, upload, load")
    parser.add_argument("--devices", type=int, default=1000, help="devices of the load part")
    parser.add_argument("--databases", default="sqlite,postgres")
    parser.add_argument("--ks", default=",".join(map(str, KS)), help="aggregation sizes K")
    parser.add_argument("--name", default="coordinator", help="result name (bench/results/<name>.json)")
    parser.add_argument(
        "--add-to",
        type=Path,
        help="an earlier result: keep its figures of the parts not rerun (and their load), recompute the goals",
    )
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # 1,000 connections need more than 1,024 files
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    before = load_average()
    load_during: list[list[float]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(15):
            load_during.append(load_average())

    threading.Thread(target=sample, daemon=True).start()
    figures: dict = {}
    work = Path(tempfile.mkdtemp(prefix="feddetox-bench-"))
    started = time.monotonic()
    try:
        if "agg" in parts:
            figures["aggregation"] = aggregation_part(tuple(int(k) for k in args.ks.split(",")))
        if "upload" in parts:
            figures["upload"] = upload_part(work)
        if "load" in parts:
            figures["load"] = {db: load_part(work, db, args.devices) for db in args.databases.split(",")}
    finally:
        stop.set()
        shutil.rmtree(work, ignore_errors=True)
    figures["bench_wall_s"] = round(time.monotonic() - started, 1)
    load = load_record(before)
    load["during_1min"] = [x[0] for x in load_during]
    notes = [
        "Aggregation time counts the aggregation only; updates are generated outside the timed region. Memory:"
        " peak RSS (VmHWM, reset after imports) minus the RSS after imports, each (implementation, K) in a fresh"
        " process.",
        "Flower's aggregate() needs the K updates and K weighted copies in memory at once: sizes needing more than"
        f" {FLOWER_MEMORY_LIMIT_GB:g} GB are skipped (figures.aggregation.skipped).",
        "Upload: the whole UploadUpdate call (validation, blob store with fsync, database commit; the running"
        " FedAvg sum is added in memory after the reply) against a plain sendall of the same bytes to another"
        " process over loopback TCP; medians. grpc_drain: the same client and messages against a gRPC server in"
        " another process that only drains the stream: the floor of Python gRPC on this machine.",
        "Load latencies are as the devices see them, from client processes sharing the same 2 cores as the"
        " coordinator (and other work: see load).",
    ]
    if args.add_to:
        earlier = json.loads(args.add_to.read_text())
        kept = []
        for part, key in {"agg": "aggregation", "upload": "upload", "load": "load"}.items():
            if part not in parts and key in earlier["figures"]:
                figures[key] = earlier["figures"][key]
                kept.append(part)
        parts.update(kept)
        load["earlier_parts"] = {"date": earlier["date"], "load": earlier["load"]}
        notes.append(
            f"Parts {', '.join(kept)} are those of the run of {earlier['date']} (load under load.earlier_parts);"
            " the others were rerun."
        )
    goals = goals_of(figures) if parts == {"agg", "upload", "load"} else {}
    path = write_result(
        args.name,
        command="python bench/coordinator.py"
        + (f" --parts {args.parts} --add-to bench/results/{args.add_to.name}" if args.add_to else ""),
        figures=figures,
        goals=goals,
        load=load,
        notes=notes,
        packages=("numpy", "grpcio", "protobuf", "flwr", "sqlalchemy", "psycopg", "feddetox"),
    )
    if "aggregation" in figures:
        plot(figures, RESULTS / f"{args.name}.png")
    print(json.dumps({k: v.to_json() for k, v in goals.items()}, indent=2))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
