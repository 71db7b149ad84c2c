"""The simulation's child processes do not outlive it: a coordinator started by a killed parent goes too.

Real processes: a parent Python process starts the real coordinator (`feddetox coordinator serve` on loopback)
and is then killed with SIGKILL, which runs none of its `finally` blocks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")

PARENT = """
import sys, time
from pathlib import Path
from feddetox_cli.simulation.federation import Coordinator
coord = Coordinator(Path(sys.argv[1]))
coord.start()
print(coord.process.pid, flush=True)
time.sleep(600)
"""


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_coordinator_dies_with_a_killed_simulation(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "state")], stdout=subprocess.PIPE, text=True
    )
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), f"the parent printed {line!r}; see {tmp_path / 'state' / 'coordinator.log'}"
        child = int(line)
        assert _alive(child)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 60  # a bound for a stuck shutdown, not a speed requirement
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.2)
        alive = _alive(child)
        if alive:
            os.kill(child, signal.SIGKILL)
        assert not alive, "the coordinator outlived the simulation that started it"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_child_whose_parent_is_already_gone_exits() -> None:
    """The parent named in FEDDETOX_PARENT_PID died before the child armed the signal: the child exits at once."""
    env = os.environ | {"FEDDETOX_PARENT_PID": "1"}  # not this child's parent (its parent is the test)
    done = subprocess.run(
        [sys.executable, "-m", "feddetox_cli", "--version"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and "is gone" in done.stderr
    env["FEDDETOX_PARENT_PID"] = str(os.getpid())
    done = subprocess.run(
        [sys.executable, "-m", "feddetox_cli", "--version"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and done.stdout.strip()
