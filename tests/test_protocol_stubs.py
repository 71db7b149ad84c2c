"""The committed gRPC stubs are exactly what scripts/gen_proto.py makes from proto/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_stubs_match_committed(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--out", str(tmp_path)], check=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    assert generated, "the script generated nothing"
    for rel in generated:
        committed = ROOT / rel
        assert committed.exists(), f"{rel} is generated but not committed: run `python scripts/gen_proto.py`"
        assert committed.read_bytes() == (tmp_path / rel).read_bytes(), (
            f"{rel} differs from what proto/ generates: run `python scripts/gen_proto.py` and commit"
        )


def test_stubs_expose_the_device_service() -> None:
    from feddetox.protocol import device_pb2, device_pb2_grpc

    methods = {m.name for m in device_pb2.DESCRIPTOR.services_by_name["DeviceService"].methods}
    assert methods == {"Enrol", "Heartbeat", "GetTask", "DownloadAdapter", "UploadUpdate", "ReportMetrics"}
    assert hasattr(device_pb2_grpc, "DeviceServiceStub")
