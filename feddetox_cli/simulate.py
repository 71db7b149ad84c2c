"""`feddetox simulate`: the federated comparison on this machine, coordinator and devices as processes.

feddetox simulate --config configs/demo.toml           # the README's main command runs this
feddetox simulate --config configs/paper.toml --out artifacts/paper
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from feddetox.errors import FedDetoxError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feddetox simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True, help="simulation TOML (see configs/)")
    parser.add_argument(
        "--out",
        type=Path,
        help="output folder (default: artifacts/<name>); finished steps resume when the config is the same",
    )
    parser.add_argument("--conditions", help="comma-separated subset: benign,none,drop,replace,centralized")
    parser.add_argument("--rounds", type=int, help="override the number of rounds")
    parser.add_argument("--guardian", help="a guardian bundle folder, or build:PRESET")
    return parser


def main(argv: list[str] | None = None) -> int:
    """SIGTERM (`kill`, a container stop) ends the simulation like Ctrl-C: its `finally` blocks stop the devices
    and the coordinator (set in the main thread only, where Python allows it; restored on return)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return _main(argv)
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return _main(argv)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    from feddetox_cli.simulation.config import load_config
    from feddetox_cli.simulation.report import markdown_table, plot_rounds
    from feddetox_cli.simulation.runner import Simulation

    overrides: dict = {}
    if args.conditions:
        overrides["conditions"] = [c.strip() for c in args.conditions.split(",") if c.strip()]
    if args.rounds:
        overrides["rounds"] = args.rounds
    if args.guardian:
        overrides["guardian"] = args.guardian
    try:
        cfg = load_config(args.config, overrides)
        out = args.out or Path("artifacts") / cfg.name
        result = Simulation(cfg, out).run()
    except FedDetoxError as exc:
        print(f"feddetox simulate: {exc}", file=sys.stderr)
        return 2
    table = markdown_table(result)
    (out / "table.md").write_text(table + "\n")
    plot = plot_rounds(result, out / "rounds.png")
    print("\n" + table + "\n")
    print(f"results: {out / 'results.json'}\nplot:    {plot}\nstate:   {out} (coordinator state per condition)")
    print(json.dumps({"seconds": result["seconds"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
