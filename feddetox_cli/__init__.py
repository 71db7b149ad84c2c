"""The one `feddetox` command. It only dispatches: each part owns its sub-commands.

feddetox coordinator --help     # server/cli.py
feddetox edge --help            # edge_client/cli.py
feddetox guardian --help        # export/guardian_cli.py
feddetox export --help          # export/cli.py
feddetox models --help          # feddetox/models/cli.py
feddetox data --help            # feddetox/data/cli.py
feddetox eval --help            # feddetox/evaluation/cli.py
feddetox simulate --help        # feddetox_cli/simulate.py
"""

from __future__ import annotations

import importlib
import sys

#: sub-command -> (module with a `main(argv)` function, one-line summary)
COMMANDS: dict[str, tuple[str, str]] = {
    "coordinator": ("server.cli", "run the coordinator (REST + gRPC), migrate its database"),
    "edge": ("edge_client.cli", "the device agent: run, sanitize, install a bundle"),
    "guardian": ("export.guardian_cli", "build, evaluate and use the safety guardian"),
    "export": ("export.cli", "make device artifacts (bundles)"),
    "models": ("feddetox.models.cli", "pull and list the shipped models"),
    "data": ("feddetox.data.cli", "check and fetch the public data sets"),
    "eval": ("feddetox.evaluation.cli", "evaluate a model (+ adapter): ASR, XSTest, utility"),
    "simulate": ("feddetox_cli.simulate", "run a federated simulation: coordinator + devices as processes"),
    "certs": ("server.certs", "make a development CA and server certificate for TLS"),
}


#: third-party loggers that print warnings about optional parts FedDetox does not use (torchao's CUDA kernels,
#: torch's pytree deprecations); FEDDETOX_VERBOSE=1 keeps them
QUIET_LOGGERS = ("torchao", "torch.utils._pytree")


def _quiet_third_party_logs() -> None:
    import logging
    import os

    if os.environ.get("FEDDETOX_VERBOSE"):
        return
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: feddetox COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run `feddetox COMMAND --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from feddetox import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"feddetox: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    _quiet_third_party_logs()
    module = importlib.import_module(COMMANDS[name][0])
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
