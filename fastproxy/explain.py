"""`fastproxy explain`: what the sidecar would do with one destination, and which object and rule
decided it. The configuration is compiled exactly as `fastproxy run` compiles it
(fastproxy.tables) and the answer comes from the C table's own decide functions, with the request
head parsed by the data plane's own parser: explain and the data plane cannot disagree.
`explain_decision()` is the library form.

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

from fastproxy import _core
from fastproxy.config.loader import Config, load
from fastproxy.errors import ConfigError, ConfigErrors
from fastproxy.policy import CompiledPolicy, Decision, HttpRequest, compile_policy
from fastproxy.tables import CompiledTable, Resolver, compile_table, resolve

_NEED = ("need-sni", "need-http-head", "need-peek")


def request_head(req: HttpRequest) -> bytes:
    """The request head the data plane would peek for `req` (HTTP/1.1; no Host line when
    req.host is ""). Raises ValueError for a CR or LF inside a field."""
    parts = [req.method, req.path, req.host] + [x for kv in req.headers for x in kv]
    if any("\r" in p or "\n" in p for p in parts):
        raise ValueError("CR or LF inside a request field")
    lines = [f"{req.method} {req.path} HTTP/1.1"]
    if req.host:
        lines.append(f"Host: {req.host}")
    lines += [f"{k}: {v}" for k, v in req.headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def client_hello(sni: str) -> bytes:
    """A minimal TLS 1.2/1.3 ClientHello naming `sni` in its server_name extension ("" : no
    extension), to be peeked by the data plane's own parser as a client's would be."""
    exts = b""
    if sni:
        name = sni.encode("utf-8", "surrogateescape")
        entry = b"\x00" + len(name).to_bytes(2, "big") + name
        body = len(entry).to_bytes(2, "big") + entry
        exts = b"\x00\x00" + len(body).to_bytes(2, "big") + body
    hello = (b"\x03\x03" + bytes(32) + b"\x00" + b"\x00\x02\x13\x01" + b"\x01\x00"
             + len(exts).to_bytes(2, "big") + exts)
    hs = b"\x01" + len(hello).to_bytes(3, "big") + hello
    return b"\x16\x03\x01" + len(hs).to_bytes(2, "big") + hs


def _fmt_addr(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


_WHY = {
    "no-policy": "no in-mesh destination or egress policy rule of this port holds it",
    "no-sni": "the ClientHello names no server (no SNI)",
    "sni-not-allowed": "the SNI is not among the allowed hosts of this port",
    "host-not-allowed": "the Host is not among the allowed hosts of this port",
    "no-route-matched": "the Host is allowed but none of its routes (method/path/headers) matches",
    "bad-request": "the request head is not one the data plane accepts (400)",
    "bad-hello": "the ClientHello's server name is not one the data plane accepts (reset)",
}


def decide_compiled(ct: CompiledTable, ip: str, port: int, *, sni: Optional[str] = None,
                    http: Optional[HttpRequest] = None) -> Decision:
    """The C table's answer for a connection to ip:port (and its SNI or first request, when
    given), with what the compile knew about the deciding rule."""
    t, policy = ct.table, ct.policy
    original = _fmt_addr(str(ipaddress.ip_address(ip)), port)
    action, rule, reason = t.decide(ip, port)
    if action in _NEED and (sni is not None or http is not None):
        if sni is not None:
            # the server name as the relay reads it: peeked from a ClientHello by the same parser
            code, name, _ = _core.peek_tls_sni(client_hello(sni))
            if code != _core.PEEK_FOUND:
                return Decision("deny", policy.mesh_ref, _WHY["bad-hello"], reason="bad-request")
            action, rule, reason = t.decide_sni(ip, port, name)
        else:
            assert http is not None
            try:
                action, rule, reason = t.decide_http(ip, port, request_head(http))
            except ValueError:
                return Decision("deny", policy.mesh_ref, _WHY["bad-request"], http_status=400,
                                reason="bad-request")
    info = ct.rule_info(rule)
    if action in ("allow", "mesh") and info is not None:
        up = original if action == "mesh" or not info.upstream else info.upstream
        return Decision(action, info.object, info.text, upstream=up,
                        connect_timeout=info.connect_timeout if action == "allow" else None,
                        max_connections=info.max_connections if action == "allow" else None)
    if action in _NEED:
        kinds = {"need-sni": "https", "need-http-head": "http", "need-peek": "https/http"}[action]
        return Decision(action, "", f"port {port} has {kinds} policy rules for this destination")
    status = 403 if http is not None and action == "deny" else None
    if action == "passthrough":
        return Decision("passthrough", policy.mesh_ref, "traffic.enableEgress is true",
                        upstream=original, reason=reason)
    why = _WHY.get(reason, reason or "no rule allowed it")
    if policy.fsm_port_narrowing and reason != "no-policy" and policy.enable_egress:
        why += " (FSM port narrowing: this port carries an egress policy)"
    elif not policy.enable_egress:
        why += "; traffic.enableEgress is false"
    if not policy.enable_egress_policy:
        why += " (featureFlags.enableEgressPolicy is false)"
    return Decision("deny", policy.mesh_ref, why, http_status=status, reason=reason)


def explain_decision(cfg: Config, ip: str, port: int, *, sni: Optional[str] = None,
                     http: Optional[HttpRequest] = None, connect_to_host: bool = False,
                     fsm_port_narrowing: bool = False,
                     resolver: Resolver = resolve) -> Decision:
    """What the sidecar loaded with `cfg` (for cfg's identity) would do with a connection to
    ip:port; `sni` / `http`: the ClientHello's server name / the first request, None when not
    peeked. The same compile and the same C decision as `fastproxy run`. Raises ConfigError
    (file, object, field) when the configuration does not compile."""
    policy = compile_policy(cfg, connect_to_host=connect_to_host,
                            fsm_port_narrowing=fsm_port_narrowing)
    return decide_compiled(compile_table(policy, resolver=resolver), ip, port, sni=sni, http=http)


def explain_policy(policy: CompiledPolicy, ip: str, port: int, *, sni: Optional[str] = None,
                   http: Optional[HttpRequest] = None, resolver: Resolver = resolve) -> Decision:
    """explain_decision for an already compiled policy (tests, tools)."""
    return decide_compiled(compile_table(policy, resolver=resolver), ip, port, sni=sni, http=http)


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
        description="Decide what the sidecar would do with a connection to DEST (IP:PORT): the "
                    "configuration is compiled as `fastproxy run` compiles it and the data "
                    "plane's own decision table answers.")
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
    req: Optional[HttpRequest] = None
    if args.host is not None:
        req = HttpRequest.make(args.host, args.path, args.method, headers)
    try:
        d = explain_decision(cfg, ip, port, sni=args.sni, http=req,
                             connect_to_host=args.connect_to_host,
                             fsm_port_narrowing=args.fsm_port_narrowing)
    except ConfigError as e:
        print(str(e), file=err)
        return 1
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
    if d.reason:
        lines.append(f"reason:    {d.reason}")
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
