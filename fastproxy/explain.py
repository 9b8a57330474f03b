"""`fastproxy explain`: what the sidecar would do with one destination, and which object and rule
decided it (the pure reference in fastproxy.decision, on the configuration given).

    fastproxy explain --config config/ --service-account curl --namespace curl \
        198.51.100.7:80 --host httpbin.org --path /get --method GET --header X-Env=prod
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
from typing import List, Optional, TextIO, Tuple

from fastproxy.config.loader import load
from fastproxy.decision import Decision, HttpRequest, compile_policy, decide
from fastproxy.errors import ConfigError, ConfigErrors


def parse_dest(text: str) -> Tuple[str, int]:
    """`1.2.3.4:80` or `[fd00::1]:443` -> (ip, port); raises ValueError."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ValueError(f"expected [IPv6]:PORT, got {text!r}")
        host, port = text[1:end], text[end + 2:]
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"expected IP:PORT, got {text!r}")
    ip = str(ipaddress.ip_address(host))
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be 1..65535, got {port!r}")
    return ip, int(port)


def register(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "explain", help="show the decision for one destination and what made it",
        description="Decide what the sidecar would do with a connection to DEST (IP:PORT), using "
                    "the pure reference decision on the given configuration.")
    p.add_argument("dest", metavar="DEST", help="original destination, IP:PORT or [IPv6]:PORT")
    p.add_argument("--config", action="append", default=[], metavar="PATH",
                   help="configuration file or folder (repeatable; none: the embedded default)")
    p.add_argument("--service-account", default=os.environ.get("SERVICE_ACCOUNT"),
                   help="this sidecar's service account (default: $SERVICE_ACCOUNT)")
    p.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE"),
                   help="this sidecar's namespace (default: $POD_NAMESPACE)")
    p.add_argument("--sni", help="TLS server name the client sends")
    p.add_argument("--host", help="HTTP Host header (with or without :port)")
    p.add_argument("--path", default="/", help="HTTP request target (default /)")
    p.add_argument("--method", default="GET", help="HTTP method (default GET)")
    p.add_argument("--header", action="append", default=[], metavar="K=V", help="HTTP header (repeatable)")
    p.add_argument("--connect-to-host", action="store_true",
                   help="http/https allows connect to the policy host name instead of the original IP")
    p.add_argument("--fsm-port-narrowing", action="store_true",
                   help="FSM's behaviour: a policy on a port narrows that port even with passthrough on")
    p.add_argument("--json", action="store_true", help="print the decision as JSON")
    p.set_defaults(func=run_explain)


def explain(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        ip, port = parse_dest(args.dest)
    except ValueError as e:
        print(f"explain: DEST: {e}", file=err)
        return 2
    if args.sni is not None and args.host is not None:
        print("explain: give --sni or --host, not both", file=err)
        return 2
    headers = {}
    for h in args.header:
        k, sep, v = h.partition("=")
        if not sep or not k:
            print(f"explain: --header must be K=V, got {h!r}", file=err)
            return 2
        headers[k] = v
    try:
        cfg = load(args.config, service_account=args.service_account, namespace=args.namespace)
    except ConfigErrors as e:
        for one in e.errors:
            print(str(one), file=err)
        return 1
    except ConfigError as e:
        print(str(e), file=err)
        return 1
    policy = compile_policy(cfg, connect_to_host=args.connect_to_host,
                            fsm_port_narrowing=args.fsm_port_narrowing)
    req: Optional[HttpRequest] = None
    if args.host is not None:
        req = HttpRequest.make(args.host, args.path, args.method, headers)
    d = decide(policy, ip, port, sni=args.sni, http=req)
    if args.json:
        json.dump({"destination": f"{ip}:{port}" if ":" not in ip else f"[{ip}]:{port}",
                   "identity": {"serviceAccount": cfg.service_account, "namespace": cfg.namespace},
                   "decision": d.to_dict()}, out, indent=2)
        out.write("\n")
    else:
        for line in format_decision(d, cfg.service_account, cfg.namespace):
            print(line, file=out)
    return 0


def format_decision(d: Decision, sa: Optional[str], ns: Optional[str]) -> List[str]:
    lines = [f"decision:  {d.action}" + (f" (HTTP {d.http_status})" if d.http_status else "")]
    if d.object:
        lines.append(f"by:        {d.object}")
    lines.append(f"rule:      {d.rule}")
    if d.upstream:
        lines.append(f"upstream:  {d.upstream}")
    if d.connect_timeout is not None or d.max_connections is not None:
        lines.append(f"limits:    connectTimeout={d.connect_timeout}s maxConnections={d.max_connections}")
    lines.append(f"identity:  {sa or '?'}/{ns or '?'}" +
                 ("" if sa and ns else " (unknown: no Egress applies; give --service-account/--namespace)"))
    if d.action.startswith("need-"):
        lines.append("note:      the answer depends on bytes not given: pass --sni or --host")
    return lines


def run_explain(args: argparse.Namespace) -> int:
    return explain(args, sys.stdout, sys.stderr)
