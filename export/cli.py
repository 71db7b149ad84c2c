"""`feddetox export`: make device artifacts.

    feddetox export --help

Sub-commands: `bundle` (package an SLM + adapter + guardian for a device) is coming; the guardian bundle is
built by `feddetox guardian build`.
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="feddetox export",
        description="Make device artifacts. Coming: `bundle` (SLM + adapter + guardian for a device). "
        "Guardian bundles: `feddetox guardian build`.",
    )
    parser.add_argument("command", nargs="?", choices=["bundle"], help="bundle (coming)")
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    print("feddetox export bundle: not available yet; build a guardian with `feddetox guardian build`")
    return 2
