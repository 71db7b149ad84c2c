"""`feddetox data`: check and fetch the public data sets.

feddetox data check [--data-dir DIR] [--json]
feddetox data fetch [--dest DIR] [--base-url URL] [--set NAME ...]
feddetox data sets
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from feddetox.data import catalog
from feddetox.errors import FedDetoxError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feddetox data", description="Check and fetch the public data sets.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "check",
        help="verify SHA256SUMS and count every set's records",
        description="Verify the data folder's checksums (its SHA256SUMS and the pinned ones) and print a table "
        "of set, file, records, licence and checksum; exit 1 when a checksum or a record count differs.",
    )
    p.add_argument("--data-dir", type=Path, help="the data folder (default: FEDDETOX_DATA_DIR)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser(
        "fetch",
        help="download the data sets from their public sources, verified against pinned sha256",
        description="Download every catalogued file from its public source (the repositories and commits the "
        "data README names), verify it against the pinned sha256 and move it in place. Files already present "
        "and valid are kept. Exit 1 if any file could not be fetched or was refused.",
    )
    p.add_argument("--dest", type=Path, help="where to put the files (default: FEDDETOX_DATA_DIR)")
    p.add_argument("--base-url", help="a mirror laid out like the data folder: URL/<set>/<file>")
    p.add_argument("--set", dest="sets", action="append", metavar="NAME", help="only this set (repeatable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    sub.add_parser("sets", help="list the catalogued sets, files, expected records and licences")
    return parser


def _check(args: argparse.Namespace) -> int:
    report = catalog.check(args.data_dir)
    if args.json:
        rows = [{**vars(r), "ok": r.ok} for r in report.rows]
        print(json.dumps({"root": str(report.root), "ok": report.ok, "rows": rows, "problems": report.problems}))
    else:
        print(f"data folder: {report.root}")
        print(catalog.format_report(report))
    return 0 if report.ok else 1


def _fetch(args: argparse.Namespace) -> int:
    report = catalog.fetch(args.dest, base_url=args.base_url, sets=args.sets, progress=not args.quiet)
    print(f"{len(report.downloaded)} downloaded, {len(report.present)} already present, {len(report.failed)} failed")
    for path, why in report.failed.items():
        print(f"  refused {path}: {why}", file=sys.stderr)
    if report.ok:
        print(f"now run: feddetox data check --data-dir {report.dest}")
    return 0 if report.ok else 1


def _sets() -> int:
    for entry in catalog.ENTRIES:
        print(f"{entry.set:<24} {entry.pattern:<72} {entry.records:>6}  {entry.license}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "check":
            return _check(args)
        if args.command == "fetch":
            return _fetch(args)
        return _sets()
    except FedDetoxError as exc:
        print(f"feddetox data: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
