"""Compiles the reference `CompiledPolicy` (fastproxy.decision) into the decision table the C core
looks up for every connection (fastproxy._core.Table), so both give the same answers.

What the C table cannot express is settled here: route path types other than regex become
anchored POSIX extended regexes; Python regex shorthands the C library lacks (`\\d`, `(?:`) are
translated; route groups without matches give the rule a route no request matches; the host
names a rule dials under `connect_to_host` are resolved here (getaddrinfo), not on the byte path.
"""
from __future__ import annotations

import socket
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from fastproxy import _core
from fastproxy.decision import CompiledPolicy, HostRule, Route
from fastproxy.errors import ConfigError

Resolver = Callable[[str, int], List[str]]

_ERE_SPECIAL = set(".[]()*+?{}|^$\\")
_PY_SHORTHANDS = {r"\d": "[0-9]", r"\D": "[^0-9]"}


def ere_escape(text: str) -> str:
    """`text` as a POSIX extended regex matching it literally."""
    return "".join("\\" + ch if ch in _ERE_SPECIAL else ch for ch in text)


def route_regex(route: Route) -> str:
    """The POSIX ERE the C core searches the request path with."""
    if route.path_type == "exact":
        return "^" + ere_escape(route.path) + "$"
    if route.path_type == "prefix":
        return "^" + ere_escape(route.path)
    return to_ere(route.path)


def to_ere(pattern: str) -> str:
    """Translate the few Python regex shorthands glibc's ERE lacks; other syntax is ERE already
    (or is refused by regcomp, which the caller reports)."""
    out = pattern.replace("(?:", "(")
    for py, ere in _PY_SHORTHANDS.items():
        out = out.replace(py, ere)
    return out


def methods_mask(methods: Sequence[str]) -> int:
    """Bit mask of HTTP methods for a route; empty = any method."""
    if not methods:
        return _core.ALL_METHODS
    mask = 0
    for m in methods:
        mask |= _core.METHOD_BITS.get(m.upper(), _core.METHOD_BITS["OTHER"])
    return mask


def resolve(host: str, port: int) -> List[str]:
    """IP addresses for host (A and AAAA, /etc/hosts included), or [] when it does not resolve."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    seen: List[str] = []
    for info in infos:
        ip = str(info[4][0])
        if ip not in seen:
            seen.append(ip)
    return seen


def _split_hostport(text: str) -> Tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _ms(seconds: Optional[float]) -> int:
    return int(round(seconds * 1000)) if seconds else 0


def build_table(policy: CompiledPolicy, *, peek_timeout_ms: int = 5000,
                resolver: Resolver = resolve) -> "_core.Table":
    """The C table for `policy` (built, ready for Engine.set_table)."""
    return compile_table(policy, peek_timeout_ms=peek_timeout_ms, resolver=resolver)[0]


def compile_table(policy: CompiledPolicy, *, peek_timeout_ms: int = 5000,
                  resolver: Resolver = resolve) -> Tuple["_core.Table", List[str]]:
    """The C table for `policy` and, for each C rule id, the object that made the rule."""
    sources: List[str] = []
    timeout_ms = int(policy.sidecar_timeout) * 1000
    t = _core.Table("passthrough" if policy.enable_egress else "deny",
                    connect_timeout_ms=timeout_ms, idle_timeout_ms=timeout_ms,
                    peek_timeout_ms=peek_timeout_ms, port_narrowing=policy.fsm_port_narrowing)
    for pp in policy.ports:
        # in-mesh ranges and tcp rules: on equal prefixes the first rule wins, as in decide();
        # the C set keeps the last add, so add in reverse
        for m in reversed(pp.mesh):
            t.add_cidr(pp.port, m.cidr, _rule(t, sources, m.source, "mesh"))
        any_rule: Optional[int] = None
        for r in reversed(pp.tcp):
            rid = _rule(t, sources, r.source, "tcp", r.connect_timeout, r.max_connections)
            if r.cidrs:
                for c in r.cidrs:
                    t.add_cidr(pp.port, c, rid)
            else:
                any_rule = rid
        if any_rule is not None:
            t.set_tcp_any(pp.port, any_rule)
        for kind, rules in (("https", pp.https), ("http", pp.http)):
            by_host: Dict[str, List[int]] = {}
            for hr in rules:
                for rid in _host_rules(t, sources, pp.port, kind, hr, resolver):
                    by_host.setdefault(hr.host, []).append(rid)
            for host, rids in by_host.items():
                t.add_host(pp.port, host, rids)
    return t.build(), sources


def _rule(t: "_core.Table", sources: List[str], source: str, kind: str,
          connect_timeout: Optional[float] = None, max_connections: Optional[int] = None) -> int:
    rid = t.add_rule(kind, _ms(connect_timeout), max_connections or 0)
    assert rid == len(sources)
    sources.append(source)
    return rid


def _host_rules(t: "_core.Table", sources: List[str], port: int, kind: str, hr: HostRule,
                resolver: Resolver) -> List[int]:
    """C rules for one host rule: one, or one per route when routes dial their own upstreams.
    Route groups without matches allow nothing: the rule gets a route no method matches."""
    redirect = hr.connect_to_host and not hr.wildcard
    groups: List[Tuple[Optional[Sequence[Route]], str]]
    default_up = hr.upstream or f"{hr.host}:{port}"
    if kind == "http" and hr.routes and redirect and any(r.upstream for r in hr.routes):
        groups = [((r,), r.upstream or default_up) for r in hr.routes]
    else:
        groups = [(hr.routes if kind == "http" else None, default_up)]
    out = []
    for routes, upstream in groups:
        rid = _rule(t, sources, hr.source, kind, hr.connect_timeout, hr.max_connections)
        for c in hr.cidrs:
            t.rule_restrict_cidr(rid, c)
        if redirect:
            host, port = _split_hostport(upstream)
            t.rule_add_upstream(rid)  # marks it redirected: nothing resolved means refused
            for ip in resolver(host, port):
                t.rule_add_upstream(rid, ip, port)
        if kind == "http" and routes is not None and not routes:
            t.rule_add_route(rid, "", 0)  # method mask 0: matches no request
        for route in routes or ():
            try:
                t.rule_add_route(rid, route_regex(route), methods_mask(route.methods),
                                 [(n, to_ere(x)) for n, x in route.headers])
            except ValueError as e:
                what = e.args[0]
                regex = what[1] if what[0] == "path" else f"{what[1]}: {what[2]}"
                raise ConfigError(f"regex {regex!r} is not supported by the data plane "
                                  "(POSIX extended regular expressions)", obj=route.source,
                                  field="pathRegex" if what[0] == "path" else "headers") from None
        out.append(rid)
    return out
