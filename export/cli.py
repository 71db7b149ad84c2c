"""`feddetox export`: make device artifacts.

    feddetox export bundle --guardian guardian/ --model smollm2-135m-instruct --device-config device.toml \
        --out device-bundle.tar

`bundle` writes one archive for a device: the guardian bundle, the SLM (a registry reference, or its weights
with --include-weights), the refusal templates and the device config; `feddetox edge install` verifies and
installs it on the device. The guardian bundle itself is built by `feddetox guardian build`.

Exit status: 0 done, 2 bad input (an option, the guardian bundle, the templates, the device config),
5 the model is unknown or not pulled, 1 any other FedDetox error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from feddetox.errors import BundleError, ConfigError, DataError, FedDetoxError, ModelNotFoundError

EXIT_CODES: tuple[tuple[type[FedDetoxError], int], ...] = (
    (ModelNotFoundError, 5),
    (BundleError, 2),
    (DataError, 2),
    (ConfigError, 2),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="feddetox export",
        description="Make device artifacts. Guardian bundles are built by `feddetox guardian build`.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    bundle = sub.add_parser(
        "bundle",
        help="write a device bundle: guardian + SLM reference or weights + refusal templates + device config",
        description="Write one tar archive for a device: the guardian bundle, the SLM (its registry name and "
        "weights sha256, or its weights), the refusal templates and the device config, with bundle.json "
        "listing the sha256 of every member. Install it on the device with `feddetox edge install FILE`.",
    )
    bundle.add_argument("--guardian", required=True, type=Path, metavar="DIR", help="the guardian bundle folder")
    bundle.add_argument(
        "--model",
        required=True,
        metavar="NAME_OR_PATH",
        help="a registry name (pulled here; the device pulls it too unless --include-weights) or a model folder "
        "(needs --include-weights)",
    )
    bundle.add_argument(
        "--include-weights", action="store_true", help="put the model's folder in the bundle (no pull on the device)"
    )
    bundle.add_argument(
        "--templates", type=Path, metavar="F", help="refusal templates (JSON list or one a line; default: the shipped)"
    )
    bundle.add_argument(
        "--device-config",
        type=Path,
        metavar="F.toml",
        help="coordinator = 'HOST:PORT', optional ca_file (PEM, relative to the file), data, threads, poll_interval_s",
    )
    bundle.add_argument("--out", required=True, type=Path, metavar="FILE.tar", help="the archive (.tar.gz: gzip)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from export.device_bundle import write_device_bundle

    try:
        manifest = write_device_bundle(
            args.out,
            guardian=args.guardian,
            model=args.model,
            include_weights=args.include_weights,
            templates=args.templates,
            device_config=args.device_config,
        )
    except FedDetoxError as exc:
        print(f"feddetox export: error: {exc}", file=sys.stderr)
        return next((code for kind, code in EXIT_CODES if isinstance(exc, kind)), 1)
    print(f"device bundle {manifest.bundle_id}: {args.out}")
    print(f"install it on the device: feddetox edge install {args.out.name} --state DIR")
    return 0
