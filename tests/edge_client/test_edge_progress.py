"""Small pieces of the agent: progress lines and device names."""

from __future__ import annotations

import io

from edge_client.agent import Progress, device_name_of, human_bytes


def test_progress_prints_quarters_and_the_end_once():
    out = io.StringIO()
    progress = Progress(out)
    for done in range(0, 101, 5):
        progress.fraction("download", "download", done, 100, human_bytes)
    progress.fraction("download", "download", 100, 100, human_bytes)
    lines = out.getvalue().splitlines()
    assert lines == [f"download {n} B/100 B ({n}%)" for n in (0, 25, 50, 75, 100)]
    progress.reset()
    progress.fraction("download", "download", 100, 100, suffix=", loss 0.6931")
    assert out.getvalue().splitlines()[-1] == "download 100/100 (100%), loss 0.6931"


def test_sizes_and_device_names():
    assert [human_bytes(n) for n in (12, 1536, 1_800_000)] == ["12 B", "1.5 kB", "1.80 MB"]
    assert device_name_of("my pi (kitchen)") == "my-pi-kitchen"
    assert device_name_of("***") == "device" and len(device_name_of("x" * 80)) == 64
