"""`fastproxy validate PATH...`: load each path on its own and report.

Exit 0 with one summary line per path when all are valid; exit 1 with every error, one per line,
on stderr otherwise. `register(subparsers)` is called by fastproxy/cli.py.
"""
from __future__ import annotations

import argparse
import sys
from typing import List, TextIO

from fastproxy.config.loader import load
from fastproxy.errors import ConfigError, ConfigErrors
from fastproxy.tables import check_config


def register(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "validate", help="check configuration files or folders without running",
        description="Load and validate each PATH (a manifest file or a folder of them) on its own.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="file or folder of YAML/JSON manifests")
    p.set_defaults(func=run_validate)


def validate_paths(paths: List[str], out: TextIO, err: TextIO) -> int:
    rc = 0
    for path in paths:
        try:
            cfg = load([path])
            check_config(cfg)  # the compile run and explain do (fastproxy.tables)
        except ConfigErrors as e:
            rc = 1
            for one in e.errors:
                print(str(one), file=err)
            continue
        except ConfigError as e:
            rc = 1
            print(str(e), file=err)
            continue
        print(f"{path}: OK: {len(cfg.files)} file(s); {cfg.summary()}", file=out)
    return rc


def run_validate(args: argparse.Namespace) -> int:
    return validate_paths(list(args.paths), sys.stdout, sys.stderr)
