"""What every benchmark records next to its figures, and how it writes `bench/results/<name>.json`.

    from _common import Goal, machine, peak_rss_gb, write_result
    write_result("dpo_step", command="python bench/dpo_step.py", figures={...},
                 goals={"peak_rss_gb": Goal(1.4, 1.6, "<=")})

A result file holds: `name`, `command`, `date` (UTC), `machine` (CPU model and flags that matter, cores,
memory), `versions` of the packages that matter, `load` (the load average before and after, and whether
other work shared the CPU), `figures`, `goals` as `{name: {"value", "target", "met"}}` and free `notes`.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_PACKAGES = ("torch", "transformers", "peft", "trl", "numpy", "feddetox")
#: CPU flags that change how fast dense arithmetic runs
_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile", "bf16", "asimd", "sve")


@dataclass(frozen=True)
class Goal:
    """A target for one figure: `value` must be `op` (">=" or "<=") `target`."""

    value: float | None
    target: float
    op: str = ">="

    def to_json(self) -> dict[str, Any]:
        if self.value is None:
            met = False
        elif self.op == ">=":
            met = self.value >= self.target
        elif self.op == "<=":
            met = self.value <= self.target
        else:
            raise ValueError(f"Goal op must be '>=' or '<=', not {self.op!r}")
        value = None if self.value is None else round(float(self.value), 4)
        return {"value": value, "target": f"{self.op} {self.target:g}", "met": bool(met)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return [flag for flag in _FLAGS if flag in words]


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def memory_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 2)
    except OSError:
        pass
    return None


def machine() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "arch": platform.machine(),
        "flags": cpu_flags(),
        "cores": usable_cores(),
        "memory_gb": memory_gb(),
        "os": platform.platform(),
        "python": sys.version.split()[0],
    }


def versions(packages: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in packages:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def load_record(before: list[float], after: list[float] | None = None) -> dict[str, Any]:
    """The load averages around a run and whether the CPU was shared (1-minute load above half the cores)."""
    after = after if after is not None else load_average()
    cores = usable_cores()
    busiest = max([before[0] if before else 0.0, after[0] if after else 0.0])
    return {"before": before, "after": after, "cores": cores, "shared": busiest > 0.5 * cores}


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_gb() -> float:
    """This process's resident memory now (GB = 2**30 bytes)."""
    kb = _status_kb("VmRSS")
    if kb is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return kb / 2**20


def peak_rss_gb() -> float:
    """This process's peak resident memory since start or the last `reset_peak_rss()` (GB = 2**30 bytes)."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 2**20


def reset_peak_rss() -> bool:
    """Start `peak_rss_gb()` afresh from the current RSS (Linux); False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def write_result(
    name: str,
    *,
    command: str,
    figures: Mapping[str, Any],
    goals: Mapping[str, Goal] | None = None,
    load: Mapping[str, Any] | None = None,
    notes: Iterable[str] = (),
    packages: Iterable[str] = DEFAULT_PACKAGES,
    results_dir: Path = RESULTS,
) -> Path:
    """Write `results_dir/<name>.json` with the common header; returns the path."""
    record = {
        "name": name,
        "command": command,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "versions": versions(packages),
        "load": dict(load) if load is not None else load_record(load_average()),
        "figures": dict(figures),
        "goals": {key: goal.to_json() for key, goal in (goals or {}).items()},
        "notes": list(notes),
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path
