"""The `fastproxy` command: one subcommand per concern, each registered by its own module."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from fastproxy import __version__
from fastproxy.errors import FastproxyError


def build_parser() -> argparse.ArgumentParser:
    from fastproxy import explain, iptables, patch, sidecar

    parser = argparse.ArgumentParser(
        prog="fastproxy",
        description="Transparent egress sidecar for a service mesh, compatible with FSM egress.")
    parser.add_argument("--version", action="version", version=f"fastproxy {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    from fastproxy.config import cli as config_cli

    for module in (sidecar, iptables, config_cli, explain, patch):
        module.register(sub)

    from fastproxy.k8s import configinit, inject, probe  # Kubernetes: inject, config init, probe

    for module in (inject, configinit, probe):
        module.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except FastproxyError as e:
        print(f"fastproxy {args.command}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
