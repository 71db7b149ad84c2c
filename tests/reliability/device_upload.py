"""A device's upload as its own process, so that a test can SIGKILL the device mid-upload.

python device_upload.py SPEC.json [--stop-halfway]

SPEC.json: {"target", "device_id", "secret", "task" (Task as JSON), "blob" (file), "key", "num_examples"}.
With --stop-halfway it sends the header and half the chunks, prints "halfway" and waits for ever (until
killed). Otherwise it sends everything and prints the receipt as JSON; a refusal prints
{"code", "details"} and exits 1.
"""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import grpc
from google.protobuf import json_format

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "server"))

from reliability_helpers import upload_messages  # noqa: E402

from feddetox.protocol import device_pb2 as pb  # noqa: E402
from feddetox.protocol import device_pb2_grpc as pb_grpc  # noqa: E402


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    halfway = "--stop-halfway" in argv
    task = json_format.ParseDict(spec["task"], pb.Task())
    blob = Path(spec["blob"]).read_bytes()
    paused, never = threading.Event(), threading.Event()
    chunks = (len(blob) + 1023) // 1024
    messages = upload_messages(
        task,
        blob,
        key=spec["key"],
        num_examples=spec["num_examples"],
        pause_after=chunks // 2 if halfway else None,
        paused=paused,
        resume=never,
    )

    def watch() -> None:
        paused.wait()
        print("halfway", flush=True)

    threading.Thread(target=watch, daemon=True).start()
    metadata = (("x-feddetox-device-id", spec["device_id"]), ("authorization", f"Bearer {spec['secret']}"))
    with grpc.insecure_channel(spec["target"]) as channel:
        try:
            receipt = pb_grpc.DeviceServiceStub(channel).UploadUpdate(messages, metadata=metadata, timeout=300)
        except grpc.RpcError as exc:
            print(json.dumps({"code": exc.code().name, "details": exc.details()}), flush=True)
            return 1
    print(json_format.MessageToJson(receipt, always_print_fields_with_no_presence=True).replace("\n", ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
