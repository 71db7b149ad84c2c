"""`feddetox edge`: the device agent's commands.

    feddetox edge run --coordinator HOST:PORT --enrol-token T --data pairs.jsonl [--guardian ID|FOLDER] [--model NAME]
    feddetox edge sanitize --data pairs.jsonl [--guardian ID|FOLDER] --out clean.jsonl [--policy replace|drop|none]
    feddetox edge install BUNDLE.tar [--state DIR]   # verify a device bundle, lay it out in the state folder
    feddetox edge install-guardian FOLDER [--state DIR]   # verify a guardian bundle, copy it to the state folder

Where a device keeps its guardians: `STATE/guardians/<bundle id>/`, STATE being the state folder (`--state`,
default `$FEDDETOX_HOME/device`). Both install commands put them there; `run` and `sanitize` take
`--guardian ID` for one of them, or a bundle folder; without `--guardian`, `run` uses the guardian each task
names, from that folder (and `sanitize` the only one installed).

Exit status: 0 done, 2 bad input (data, option, bundle file), 3 coordinator unreachable, 4 credentials
refused, 5 the task needs a model or guardian version this device does not have, 1 any other FedDetox error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from feddetox.errors import (
    AuthError,
    BundleError,
    ConfigError,
    DataError,
    FedDetoxError,
    ModelNotFoundError,
    UnavailableError,
)
from feddetox.settings import home_dir

if TYPE_CHECKING:
    from edge_client.state import DeviceState

EXIT_CODES: tuple[tuple[type[FedDetoxError], int], ...] = (
    (UnavailableError, 3),
    (AuthError, 4),
    (ModelNotFoundError, 5),
    (BundleError, 5),
    (DataError, 2),
    (ConfigError, 2),
)


GUARDIAN_HELP = (
    "a guardian bundle folder, or the id of one installed in the state folder (STATE/guardians/<id>); "
    "default, or empty: the guardian each task names, from STATE/guardians"
)
TEMPLATES_HELP = "your own refusal templates (JSON list or one a line); empty: the shipped ones"


def _optional_path(text: str) -> Path | None:
    """A path option that may be given empty (an unset variable in a service file): empty = not given."""
    return Path(text) if text.strip() else None


def _optional_str(text: str) -> str | None:
    return text if text.strip() else None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="feddetox edge", description="The FedDetox device agent.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="enrol, then take part in federated rounds: download, sanitize, train, upload",
        description="Take part in federated rounds. Local data never leaves the device: only the trained "
        "adapter, its metrics and sanitization counts do.",
    )
    run.add_argument("--coordinator", required=True, metavar="HOST:PORT", help="the coordinator's gRPC address")
    run.add_argument("--enrol-token", metavar="T", help="one-time enrolment token (needed only the first time)")
    run.add_argument("--data", required=True, type=Path, metavar="F", help="local preference pairs (jsonl/csv/parquet)")
    run.add_argument("--guardian", type=_optional_path, metavar="ID|FOLDER", help=GUARDIAN_HELP)
    run.add_argument(
        "--model", type=_optional_str, metavar="NAME", help="the SLM on this device (default: the task's base model)"
    )
    run.add_argument("--state", type=Path, metavar="DIR", help="state folder (default: $FEDDETOX_HOME/device)")
    run.add_argument("--ca-file", type=Path, metavar="F", help="CA certificate (PEM): use TLS and trust this CA")
    run.add_argument("--skip-invalid", action="store_true", help="skip and count invalid data records")
    run.add_argument("--templates", type=_optional_path, metavar="F", help=TEMPLATES_HELP)
    run.add_argument("--device-name", metavar="NAME", help="name shown on the dashboard (default: host name)")
    run.add_argument("--max-rounds", type=int, metavar="N", help="stop after N tasks (default: run until stopped)")
    run.add_argument("--max-poll", type=float, default=30.0, metavar="S", help="longest wait between polls")
    run.add_argument(
        "--give-up-after", type=float, metavar="S", help="stop when the coordinator is unreachable this long"
    )
    run.add_argument("-v", "--verbose", action="store_true", help="log retries and other details")

    bundle = sub.add_parser(
        "install",
        help="verify a device bundle (`feddetox export bundle`) and install it in the state folder",
        description="Check every member of a device bundle against its bundle.json (sha256, size, names: no "
        "absolute path, '..', link or unlisted member) before anything is moved into place, then lay it out in "
        "the state folder: guardians/<id>/, models/<name>/ (when the weights are included), refusals.json, "
        "device.toml (and ca.pem). Prints the `feddetox edge run` line to use. Exit status 2 for a corrupt or "
        "invalid bundle.",
    )
    bundle.add_argument("bundle", type=Path, help="the device bundle archive (.tar or .tar.gz)")
    bundle.add_argument("--state", type=Path, metavar="DIR", help="state folder (default: $FEDDETOX_HOME/device)")

    install = sub.add_parser(
        "install-guardian",
        help="verify a guardian bundle and install it in the state folder",
        description="Check every file of a guardian bundle against its manifest, then copy it to "
        "STATE/guardians/<bundle id>, where `edge install` puts a device bundle's guardian too. `edge run` then "
        "finds it without --guardian (the task names the bundle id), and `--guardian <bundle id>` picks it.",
    )
    install.add_argument("bundle", type=Path, help="the bundle folder (manifest.json, student.pte, tokenizer.json)")
    install.add_argument("--state", type=Path, metavar="DIR", help="state folder (default: $FEDDETOX_HOME/device)")

    san = sub.add_parser(
        "sanitize",
        help="sanitize a data file offline with a guardian and print a report",
        description="Score each pair's (prompt, chosen) with the guardian and apply a policy; writes the "
        "sanitized pairs as JSONL and prints what was flagged.",
    )
    san.add_argument("--data", required=True, type=Path, metavar="F", help="preference pairs (jsonl/csv/parquet)")
    san.add_argument(
        "--guardian",
        type=_optional_path,
        metavar="ID|FOLDER",
        help="a guardian bundle folder, or the id of one installed in the state folder (default: the only one "
        "installed there)",
    )
    san.add_argument("--state", type=Path, metavar="DIR", help="state folder (default: $FEDDETOX_HOME/device)")
    san.add_argument("--out", required=True, type=Path, metavar="F2", help="where to write the sanitized JSONL")
    san.add_argument("--policy", choices=("replace", "drop", "none"), default="replace")
    san.add_argument("--threshold", type=float, metavar="X", help="p_unsafe >= X is unsafe (default: the bundle's)")
    san.add_argument("--templates", type=_optional_path, metavar="F", help=TEMPLATES_HELP)
    san.add_argument("--skip-invalid", action="store_true", help="skip and count invalid data records")
    san.add_argument("--report-json", type=Path, metavar="F", help="also write the counts as JSON")
    san.add_argument("--show", type=int, default=10, metavar="N", help="list at most N flagged pairs (default 10)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "install":
            return _install(args)
        if args.command == "install-guardian":
            return _install_guardian(args)
        return _sanitize(args)
    except FedDetoxError as exc:
        print(f"feddetox edge: error: {exc}", file=sys.stderr)
        return next((code for kind, code in EXIT_CODES if isinstance(exc, kind)), 1)
    except KeyboardInterrupt:
        print("feddetox edge: stopped; the state folder keeps the work done so far", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    _limit_threads()
    # SIGTERM stops like Ctrl-C: the state folder keeps the work done so far
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        return _run_agent(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_agent(args: argparse.Namespace) -> int:
    from edge_client.agent import AgentConfig, EdgeAgent, device_name_of
    from edge_client.state import DeviceState
    from edge_client.transport import CoordinatorClient, RetryPolicy

    if not args.data.is_file():
        raise DataError("data file not found", path=str(args.data))
    if args.max_rounds is not None and args.max_rounds < 1:
        raise ConfigError(f"--max-rounds must be at least 1, got {args.max_rounds}")
    state = DeviceState(args.state or home_dir() / "device")
    config = AgentConfig(
        data_path=args.data,
        guardian_dir=guardian_path(args.guardian, state),
        model=args.model,
        skip_invalid=args.skip_invalid,
        templates_path=args.templates,
        max_rounds=args.max_rounds,
        max_poll_s=args.max_poll,
        give_up_after_s=args.give_up_after,
    )
    if args.device_name:
        config.device_name = device_name_of(args.device_name)
    retry = RetryPolicy() if args.give_up_after is None else RetryPolicy().within(args.give_up_after)
    with CoordinatorClient(args.coordinator, ca_file=args.ca_file, retry=retry) as client:
        agent = EdgeAgent(client, state, config)
        if agent.pinned:
            print(f"guardian {agent.guardian.bundle_id} (threshold {agent.guardian.threshold:g}); state {state.root}")
        else:
            installed = ", ".join(agent.guardian_ids())
            print(f"guardians installed in {state.guardians_dir}: {installed} (each task names its own)")
            print(f"state {state.root}")
        done = agent.run(enrol_token=args.enrol_token)
    print(f"done: {done} task(s)")
    return 0


def guardian_path(value: Path | None, state: DeviceState) -> Path | None:
    """`--guardian`: a bundle folder, the id of a bundle installed in `state` (STATE/guardians/<id>), or None
    (not given: the agent takes each task's guardian from STATE/guardians)."""
    if value is None:
        return None
    if value.is_dir() or len(value.parts) != 1:
        return value
    installed = state.guardian_dir(value.name)
    if installed.is_dir():
        return installed
    others = state.installed_guardians()
    has = f"installed there: {', '.join(others)}" if others else "none is installed there"
    raise BundleError(
        f"guardian bundle {str(value)!r} is neither a folder nor a bundle id installed in {state.guardians_dir} "
        f"({has})",
        hint=f"pass the bundle folder, or install it first with `feddetox edge install-guardian FOLDER --state "
        f"{state.root}`",
    )


def _install(args: argparse.Namespace) -> int:
    from edge_client.install import install_bundle, print_next_steps

    try:
        installed = install_bundle(args.bundle, args.state or home_dir() / "device")
    except BundleError as exc:  # a bad input file here, not a missing model or guardian version: exit 2
        print(f"feddetox edge: error: {exc}", file=sys.stderr)
        return 2
    print_next_steps(installed)
    return 0


def _install_guardian(args: argparse.Namespace) -> int:
    from edge_client.install import install_guardian

    install_guardian(args.bundle, args.state or home_dir() / "device")
    return 0


def _limit_threads() -> None:
    """Honour FEDDETOX_TORCH_THREADS (a board shares its few cores with the OS and the guardian)."""
    threads = os.environ.get("FEDDETOX_TORCH_THREADS")
    if not threads:
        return
    if not threads.isdigit() or int(threads) < 1:
        raise ConfigError(f"FEDDETOX_TORCH_THREADS must be a positive integer, got {threads!r}")
    import torch

    torch.set_num_threads(int(threads))


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _sanitize(args: argparse.Namespace) -> int:
    from edge_client.state import DeviceState
    from feddetox.data.io import read_pairs, write_pairs
    from feddetox.guardian import load_guardian
    from feddetox.refusals import load_templates
    from feddetox.sanitize import sanitize, score_pairs

    templates = load_templates(args.templates)
    read = read_pairs(args.data, skip_invalid=args.skip_invalid)
    folder = args.guardian
    if folder is None or not (folder.is_dir() or len(folder.parts) != 1):  # an id, or none: the state folder's
        state = DeviceState(args.state or home_dir() / "device")
        folder = guardian_path(args.guardian, state)
    if folder is None:
        installed = state.installed_guardians()
        if len(installed) != 1:
            has = f"{len(installed)} are installed in {state.guardians_dir}" + (
                f" ({', '.join(installed)})" if installed else ""
            )
            raise BundleError(f"which guardian? --guardian is not given and {has}", hint="pass --guardian ID|FOLDER")
        folder = state.guardian_dir(installed[0])
    guardian = load_guardian(folder, threshold=args.threshold)
    total = len(read.pairs)
    print(f"scoring {total} pairs of {args.data} with guardian {guardian.bundle_id}", flush=True)
    last = [-1]

    def progress(done: int, total: int) -> None:
        if done * 10 // max(total, 1) > last[0]:
            last[0] = done * 10 // max(total, 1)
            print(f"  {done}/{total}", flush=True)

    scores = score_pairs(guardian, read.pairs, progress=progress)
    result = sanitize(read.pairs, scores, guardian.threshold, args.policy, templates)
    written = write_pairs(args.out, result.pairs)
    print(_report(args, read.pairs, read.skipped, guardian.threshold, scores, result, written))
    if args.report_json:
        report = {
            "data": str(args.data),
            "out": str(args.out),
            "guardian": guardian.bundle_id,
            "policy": args.policy,
            "threshold": guardian.threshold,
            "skipped_invalid": read.skipped,
            "written": written,
            **result.counts.to_json(),
        }
        args.report_json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def _report(args, pairs, skipped, threshold, scores, result, written) -> str:
    c = result.counts
    lines = [
        f"sanitization report ({args.policy}, threshold {threshold:g})",
        f"  pairs seen      {c.pairs_seen}" + (f"  ({skipped} invalid records skipped)" if skipped else ""),
        f"  flagged         {c.flagged}",
        f"  replaced        {c.replaced}",
        f"  dropped         {c.dropped}",
        f"  written         {written} -> {args.out}",
        "  p_unsafe histogram:",
    ]
    peak = max(c.score_histogram) or 1
    for index, count in enumerate(c.score_histogram):
        bar = "#" * round(30 * count / peak)
        lines.append(f"    [{index / 10:.1f}, {(index + 1) / 10:.1f}{']' if index == 9 else ')'} {count:6d} {bar}")
    if result.flagged and args.show > 0:
        lines.append(f"  flagged pairs (first {min(args.show, len(result.flagged))}):")
        for index in result.flagged[: args.show]:
            line = pairs[index].meta.get("line")
            where = f"line {line}" if line is not None else f"pair {index + 1}"
            prompt = " ".join(pairs[index].prompt.split())
            lines.append(f"    {where}: p_unsafe {scores[index]:.3f}  {prompt[:60]!r}")
    return "\n".join(lines)
