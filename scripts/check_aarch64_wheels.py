"""Check that the edge extra installs from binary wheels on an aarch64 board (Raspberry Pi, Jetson).

    python scripts/check_aarch64_wheels.py                        # Python 3.11 (Raspberry Pi OS bookworm)
    python scripts/check_aarch64_wheels.py --python-version 3.10 --output jetson.json   # JetPack 6

Two steps, both against the package index, both for Linux aarch64 and the given Python, binary wheels only:

1. resolve: `uv pip compile --python-platform aarch64-manylinux_2_28 --only-binary :all:` pins every package
   that `pip install 'feddetox[edge]'` needs (the core dependencies, the edge extra, all their dependencies).
   uv evaluates the environment markers for the target; `pip download --platform` evaluates them for the
   machine it runs on, so on an x86_64 host it would resolve x86_64's dependency set, not the board's.
2. download: `pip download --only-binary=:all: --platform manylinux2014_aarch64 --platform
   manylinux_2_28_aarch64 --python-version X --no-deps` of exactly those pins, into a temporary folder,
   which proves that each has an aarch64 (or pure Python) wheel. Each wheel is recorded: name, version,
   file, platform tag, size, sha256. The packages that only a CUDA build of torch pulls (nvidia-*, cuda-*,
   triton; several GB) are listed but downloaded only with --with-cuda.

When step 1 fails, uv's explanation names the package without a wheel. The result is written as JSON
(committed: `docker/aarch64-wheels.json`); the exit status is 1 unless everything resolved.

Local pip settings of the machine (extra indexes, find-links, constraints) are ignored, so the answer is the
package index's. It needs the index (it is not part of the test suite) and about 1 GB of temporary disk.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "docker" / "aarch64-wheels.json"
UV_PLATFORM = "aarch64-manylinux_2_28"  # glibc 2.28+: Raspberry Pi OS bookworm has 2.36, JetPack 6 has 2.35
# manylinux2014 = glibc 2.17; pip expands each tag to the older glibc tags it implies.
PIP_PLATFORMS = ("manylinux2014_aarch64", "manylinux_2_28_aarch64")
# What only a CUDA build of torch needs; a board's CPU build does without.
CUDA_PREFIXES = ("nvidia-", "cuda-", "triton")
# pip settings kept from the environment: the index and how to reach it, nothing machine-local.
KEEP_PIP_ENV = ("PIP_INDEX_URL", "PIP_CERT", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT", "PIP_PROXY")


def edge_requirements(pyproject: Path) -> list[str]:
    """The requirements of `feddetox[edge]` as written: the core dependencies plus the edge extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    return list(project["dependencies"]) + list(project["optional-dependencies"]["edge"])


def clean_env() -> dict[str, str]:
    """The environment without machine-local pip or uv settings (config files, find-links, constraints)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_")) or k in KEEP_PIP_ENV}
    env["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no configuration file at all
    if "PIP_CERT" in env:
        env["SSL_CERT_FILE"] = env["PIP_CERT"]  # the same trust for uv
    return env


def find_uv() -> str:
    for candidate in (Path(sys.executable).parent / "uv", shutil.which("uv")):
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise SystemExit("uv is needed to resolve for another platform: pip install uv")


def resolve(requirements: list[str], python_version: str, workdir: Path) -> tuple[list[str] | None, str]:
    """Pins (`name==version`) as `pip install` on the board would choose them (final releases, wheels
    preferred); (None, uv's explanation) when there is no solution."""
    req_in = workdir / "edge.in"
    req_in.write_text("\n".join(requirements) + "\n")
    cmd = [find_uv(), "pip", "compile", "--no-config", "--quiet", "--no-header", "--no-annotate"]
    cmd += ["--python-platform", UV_PLATFORM, "--python-version", python_version, "--prerelease", "disallow"]
    cmd += [str(req_in)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env())
    if proc.returncode != 0:
        return None, proc.stderr.strip()
    pins = [line.strip() for line in proc.stdout.splitlines() if line.strip() and not line.startswith("#")]
    return pins, ""


def _pip(args: list[str]) -> tuple[int, str]:
    cmd = [sys.executable, "-m", "pip", *args, "--progress-bar", "off", "--disable-pip-version-check"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=clean_env())
    return proc.returncode, proc.stdout + proc.stderr


def pip_download(pins: list[str], dest: Path, python_version: str) -> tuple[int, str]:
    """`pip download --no-deps` of exactly these pins as aarch64 wheels; (exit status, pip's output)."""
    args = ["download", "--no-deps", "--only-binary=:all:", "--dest", str(dest)]
    for plat in PIP_PLATFORMS:
        args += ["--platform", plat]
    abi = "cp" + python_version.replace(".", "")
    args += ["--python-version", python_version, "--implementation", "cp", "--abi", abi, "--abi", "abi3"]
    return _pip(args + ["--abi", "none", *pins])


_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")


def download_wheels(pins: list[str], dest: Path, python_version: str) -> tuple[list[str], str]:
    """Download an aarch64 wheel of every pin; return the pins that have none (pip stops at the first one
    it cannot find, so it is asked again without it) and pip's last error output."""
    left, without, errors = list(pins), [], ""
    while left:
        code, out = pip_download(left, dest, python_version)
        if code == 0:
            break
        errors = "\n".join(line for line in out.splitlines() if "ERROR" in line)
        match = _NO_MATCH.search(out)
        if match is None or match[1] not in left:
            raise SystemExit(f"pip download failed:\n{out[-3000:]}")
        left.remove(match[1])
        without.append(match[1])
    return without, errors


def build_from_source(pin: str, workdir: Path) -> dict:
    """Build a pin that has no aarch64 wheel from its sdist, here; a `none-any` wheel shows it is pure Python,
    so `pip install` builds it on the board too, without a compiler."""
    src, out = workdir / "sdist", workdir / "built"
    code, log = _pip(["download", "--no-deps", "--no-binary=:all:", "--dest", str(src), pin])
    if code != 0:
        return {"requirement": pin, "source": "none", "error": log.strip().splitlines()[-1]}
    sdist = next(p for p in src.iterdir() if canonical(p.name).startswith(canonical(pin.split("==")[0])))
    code, log = _pip(["wheel", "--no-deps", "--wheel-dir", str(out), str(sdist)])
    built = [p for p in out.iterdir()] if out.exists() else []
    wheel = next((p for p in built if canonical(p.name).startswith(canonical(pin.split("==")[0]))), None)
    if code != 0 or wheel is None:
        return {"requirement": pin, "source": sdist.name, "error": "the sdist did not build: " + log[-500:]}
    pure = wheel.name.endswith("-none-any.whl")
    return {"requirement": pin, "source": sdist.name, "built": wheel.name, "pure_python": pure}


_WHEEL = re.compile(
    r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-\d[^-]*)?-(?P<py>[^-]+)-(?P<abi>[^-]+)-(?P<plat>[^-]+)\.whl$"
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def describe_wheel(path: Path) -> dict:
    """Name, version and tags of one downloaded wheel, read from its name (PEP 427), with size and sha256."""
    match = _WHEEL.match(path.name)
    if match is None:
        raise SystemExit(f"pip downloaded {path.name}, which is not a wheel")
    return {
        "name": canonical(match["name"]),
        "version": match["version"],
        "file": path.name,
        "python": match["py"],
        "abi": match["abi"],
        "platform": match["plat"],
        "size_bytes": path.stat().st_size,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }


def check(python_version: str, pyproject: Path, *, with_cuda: bool = False) -> dict:
    requirements = edge_requirements(pyproject)
    result: dict = {
        "what": "wheels for `pip install 'feddetox[edge]'` on Linux aarch64",
        "command": f"python scripts/check_aarch64_wheels.py --python-version {python_version}",
        "python_version": python_version,
        "resolved_for": UV_PLATFORM,
        "downloaded_for": list(PIP_PLATFORMS),
        "checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "requirements": requirements,
        "ok": False,
    }
    with tempfile.TemporaryDirectory(prefix="aarch64-wheels-") as tmp:
        print(f"resolving {len(requirements)} requirements for Python {python_version} on {UV_PLATFORM} ...")
        pins, why = resolve(requirements, python_version, Path(tmp))
        if pins is None:
            result["unresolvable"] = why
            return result
        result["pins"] = pins
        cuda_pins = [p for p in pins if canonical(p).startswith(CUDA_PREFIXES)]
        wanted = pins if with_cuda else [p for p in pins if p not in cuda_pins]
        dest = Path(tmp) / "wheels"
        print(f"downloading {len(wanted)} aarch64 wheels (no dependencies: the pins are the full set) ...", flush=True)
        without, errors = download_wheels(wanted, dest, python_version)
        wheels = [describe_wheel(p) for p in sorted(dest.iterdir())] if dest.exists() else []
        sources = []
        for pin in without:
            print(f"no aarch64 wheel of {pin}: building its sdist here (is it pure Python?)", flush=True)
            sources.append(build_from_source(pin, Path(tmp) / canonical(pin)))
    result["wheels"] = wheels
    result["no_wheel"] = sources
    if errors:
        result["pip_errors"] = errors
    cuda = [w for w in wheels if w["name"].startswith(CUDA_PREFIXES)]
    result["cuda_only"] = {
        "note": "pulled only by a CUDA build of torch; the CPU build of torch for aarch64 needs none of them",
        "pins": cuda_pins,
        "downloaded": with_cuda,
        "bytes": sum(w["size_bytes"] for w in cuda),
    }
    result["total_bytes"] = sum(w["size_bytes"] for w in wheels)
    # ok: every pin has an aarch64 wheel, or is pure Python that pip builds on the board without a compiler
    result["ok"] = all(s.get("pure_python") for s in sources)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python-version", default="3.11", help="the boards' Python, e.g. 3.11 or 3.10")
    parser.add_argument("--pyproject", type=Path, default=REPO_ROOT / "pyproject.toml")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="where to write the JSON result")
    parser.add_argument("--with-cuda", action="store_true", help="also download the CUDA-only packages (GBs)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python_version):
        parser.error(f"--python-version: expected MAJOR.MINOR such as 3.11, got {args.python_version!r}")
    result = check(args.python_version, args.pyproject, with_cuda=args.with_cuda)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    for wheel in result.get("wheels", []):
        print(f"  {wheel['name']:28s} {wheel['version']:16s} {wheel['platform']}")
    for source in result.get("no_wheel", []):
        verdict = "pure Python, builds without a compiler" if source.get("pure_python") else "NEEDS A BUILD"
        print(f"  {source['requirement']:45s} no aarch64 wheel: {verdict} ({source.get('built', source.get('error'))})")
    if "unresolvable" in result:
        print("NO SOLUTION:\n" + result["unresolvable"], file=sys.stderr)
    cuda = result.get("cuda_only", {})
    if cuda.get("pins"):
        how = f"downloaded, {cuda['bytes'] / 1e6:.0f} MB" if cuda["downloaded"] else "not downloaded: --with-cuda"
        print(f"CUDA-only packages ({how}): {', '.join(cuda['pins'])}")
    size = result.get("total_bytes", 0) / 1e6
    count = len(result.get("wheels", []))
    print(f"{'OK' if result['ok'] else 'FAILED'}: {count} wheels, {size:.0f} MB -> {args.output}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
