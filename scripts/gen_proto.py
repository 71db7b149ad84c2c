"""Regenerate the gRPC stubs in feddetox/protocol/ from proto/ (the one script that does it).

python scripts/gen_proto.py [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"


def generate(out: Path) -> list[Path]:
    from grpc_tools import protoc

    sources = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}"]
    if protoc.main(args + sources) != 0:
        raise SystemExit("protoc failed")
    stems = [out / src[: -len(".proto")] for src in sources]
    return sorted(p for stem in stems for p in stem.parent.glob(stem.name + "_pb2*.py*"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT, help="root of the generated tree (default: repository root)")
    for path in generate(parser.parse_args().out):
        print(path)


if __name__ == "__main__":
    sys.exit(main())
