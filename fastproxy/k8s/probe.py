"""`fastproxy probe PATH`: ask the sidecar's admin listener (127.0.0.1:15000) for PATH and exit 0
on HTTP 200, 1 otherwise. The injected sidecar's startup, readiness and liveness probes run it as
`exec` probes: the admin listens on loopback only (POST /quitquitquit must not be reachable from
the network), while a kubelet `httpGet` probe would connect to the pod IP.

    python -m fastproxy.k8s.probe /ready      # the same, without loading the rest of fastproxy
"""
from __future__ import annotations

import argparse
import http.client
import sys
from typing import List, Optional

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 15000


def check(path: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, timeout: float = 2.0) -> bool:
    """True when GET `path` on the admin listener answers 200 within `timeout` seconds."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        resp.read(4096)
        return resp.status == 200
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", default="/ready", help="admin path to GET (/ready)")
    p.add_argument("--admin-port", type=int, default=DEFAULT_PORT, help="admin port (15000)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds (2)")


def register(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "probe", help="exit 0 when the admin listener answers PATH with 200 (Kubernetes probes)",
        description="GET PATH from the admin listener on 127.0.0.1 and exit 0 on HTTP 200, 1 "
                    "otherwise: the injected sidecar's exec probes.")
    _add_args(p)
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    return 0 if check(args.path, port=args.admin_port, timeout=args.timeout) else 1


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastproxy.k8s.probe")
    _add_args(p)
    return _run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
