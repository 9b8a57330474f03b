"""The one compile: `CompiledPolicy` (fastproxy.policy) -> the C decision table
(fastproxy._core.Table) that the workers look up, plus what the compile knew about each C rule
(`CompiledTable.rule_info(rule_id)`: object, rule text, upstream, limits) so that explain and the
access log can name what decided. validate (`check_config`), explain and run all compile here.

What the C table cannot express is settled here: route path types other than regex become
anchored RE2 regexes of the literal path; route groups without matches give the rule a route no
request matches; the host names a rule dials under `connect_to_host` are resolved here
(getaddrinfo), not on the byte path; connection limits count in the process' `Limits` store,
one counter per setting (`limit_key`), so a reload does not reset them.
"""
from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from fastproxy import _core
from fastproxy.config.loader import Config
from fastproxy.errors import ConfigError, ConfigErrors, EngineError
from fastproxy.policy import CompiledPolicy, HostRule, Route, compile_policy

Resolver = Callable[[str, int], List[str]]

_RE2_SPECIAL = set(".[]()*+?{}|^$\\")


def re2_escape(text: str) -> str:
    """`text` as an RE2 regex matching it literally."""
    return "".join("\\" + ch if ch in _RE2_SPECIAL else ch for ch in text)


def route_regex(route: Route) -> str:
    """The RE2 regex the C core searches the request target with."""
    if route.path_type == "exact":
        return "^" + re2_escape(route.path) + "$"
    if route.path_type == "prefix":
        return "^" + re2_escape(route.path)
    return route.path


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


def resolution_changed(resolved: Dict[Tuple[str, int], List[str]],
                       resolver: Resolver = resolve) -> bool:
    """Whether any name resolves to another set of addresses than when the table was compiled
    (a resolver answering in another order is no change)."""
    return any(set(resolver(h, p)) != set(ips) for (h, p), ips in resolved.items())


def _split_hostport(text: str, default_port: int) -> Tuple[str, int]:
    """`host:port` / `[v6]:port` / `host` -> (host, port); a missing or bad port: default_port."""
    if text.startswith("["):
        end = text.find("]")
        host, rest = (text[1:end], text[end + 1:]) if end > 0 else (text, "")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            host, port = text, ""
    if port.isdigit() and 1 <= int(port) <= 65535:
        return host, int(port)
    return host, default_port


def _ms(seconds: Optional[float]) -> int:
    return int(round(seconds * 1000)) if seconds else 0


class RuleInfo:
    """What the compile knew about one C rule. `text` (the rule as explain prints it) is built
    when first asked for: a table of 100,000 hosts is compiled far more often than explained."""

    __slots__ = ("kind", "object", "port", "upstream", "connect_timeout", "max_connections",
                 "limit_key", "_text", "_host", "_routes")

    def __init__(self, kind: str, obj: str, text: str, port: int, upstream: str = "",
                 connect_timeout: Optional[float] = None, max_connections: Optional[int] = None,
                 limit_key: str = "", host: Optional[HostRule] = None,
                 routes: Optional[Sequence[Route]] = None) -> None:
        self.kind = kind                    # mesh | tcp | https | http
        self.object = obj                   # Egress ns/name | Service ns/name | PipyConfig id
        self.port = port
        self.upstream = upstream            # host:port it dials ("": the original destination)
        self.connect_timeout = connect_timeout
        self.max_connections = max_connections
        self.limit_key = limit_key          # the setting its connection limit counts under
        self._text = text
        self._host = host                   # for a host rule: text built from it on demand
        self._routes = routes

    @property
    def text(self) -> str:
        if not self._text and self._host is not None:
            self._text = _host_rule_text(self.kind, self.port, self._host, self._routes)
        return self._text

    def __repr__(self) -> str:
        return f"RuleInfo({self.kind!r}, {self.object!r}, {self.text!r})"


def _host_rule_text(kind: str, port: int, hr: HostRule, routes: Optional[Sequence[Route]]) -> str:
    where = f" ipAddresses {', '.join(hr.cidrs)}" if hr.cidrs else ""
    if kind == "https":
        return f"port {port}/https SNI host {hr.host}{where}"
    if routes is None:
        return f"port {port}/http Host {hr.host}{where} any request"
    if not routes:
        return f"port {port}/http Host {hr.host}{where} (route groups without matches)"
    return (f"port {port}/http Host {hr.host}{where} routes "
            + " | ".join(r.describe() for r in routes))


@dataclass
class CompiledTable:
    """A built C table and, by C rule id, what made each rule."""

    table: "_core.Table"
    policy: CompiledPolicy
    rules: List[RuleInfo] = field(default_factory=list)
    resolved: Dict[Tuple[str, int], List[str]] = field(default_factory=dict)

    def rule_info(self, rule_id: int) -> Optional[RuleInfo]:
        return self.rules[rule_id] if 0 <= rule_id < len(self.rules) else None

    def rule_object(self, rule_id: int) -> str:
        """The object (`Egress ns/name`, `Service ns/name`, Pipy id) behind a C rule id; "" for
        -1 or an unknown id (access log, metrics)."""
        info = self.rule_info(rule_id)
        return info.object if info else ""

    @property
    def sources(self) -> List[str]:
        """The object of each C rule id, in id order."""
        return [r.object for r in self.rules]

    def __iter__(self) -> Iterator[object]:
        """`table, sources = compile_table(...)`: the pair compile_table used to return."""
        return iter((self.table, self.sources))


def build_table(policy: CompiledPolicy, *, peek_timeout_ms: int = 5000,
                resolver: Resolver = resolve, limits: Optional["_core.Limits"] = None) -> "_core.Table":
    """The C table for `policy` (built, ready for Engine.set_table)."""
    return compile_table(policy, peek_timeout_ms=peek_timeout_ms, resolver=resolver,
                         limits=limits).table


def compile_table(policy: CompiledPolicy, *, peek_timeout_ms: int = 5000,
                  resolver: Resolver = resolve,
                  limits: Optional["_core.Limits"] = None) -> CompiledTable:
    """The C table for `policy` and what made each of its rules. `limits`: the process' counter
    store (kept across reloads); None: the table counts on its own. Raises ConfigError (file,
    object, field) for what the C table refuses."""
    timeout_ms = int(policy.sidecar_timeout) * 1000
    t = _core.Table("passthrough" if policy.enable_egress else "deny",
                    connect_timeout_ms=timeout_ms, idle_timeout_ms=timeout_ms,
                    peek_timeout_ms=peek_timeout_ms, port_narrowing=policy.fsm_port_narrowing)
    if limits is not None:
        t.set_limits(limits)
    out = CompiledTable(t, policy)

    def recording(host: str, port: int) -> List[str]:
        ips = resolver(host, port)
        out.resolved[(host, port)] = list(ips)
        return ips

    c = _Compiler(t, out, limits, recording)
    doing: Tuple[str, str, str, int] = ("", "", "", 0)  # (object, kind, what, port) being added
    try:
        for pp in policy.ports:
            # in-mesh ranges and tcp rules: on equal prefixes the first rule wins; the C set keeps
            # the last add, so add in reverse
            for m in reversed(pp.mesh):
                doing = (m.source, "in-mesh", m.cidr, pp.port)
                rid = c.rule(RuleInfo("mesh", m.source,
                                      f"port {pp.port} in-mesh destination {m.cidr}", pp.port))
                t.add_cidr(pp.port, m.cidr, rid)
            any_rule: Optional[int] = None
            for r in reversed(pp.tcp):
                doing = (r.source, "tcp", ",".join(r.cidrs) or "any IP", pp.port)
                what = f"ipAddresses {', '.join(r.cidrs)}" if r.cidrs else "any IP (no ipAddresses)"
                rid = c.rule(RuleInfo("tcp", r.source, f"port {pp.port}/{r.protocol} {what}",
                                      pp.port, connect_timeout=r.connect_timeout,
                                      max_connections=r.max_connections, limit_key=r.limit_key))
                for cidr in r.cidrs:
                    t.add_cidr(pp.port, cidr, rid)
                if not r.cidrs:
                    any_rule = rid
            if any_rule is not None:
                t.set_tcp_any(pp.port, any_rule)
            for kind, rules in (("https", pp.https), ("http", pp.http)):
                by_host: Dict[str, List[int]] = {}
                for hr in rules:
                    doing = (hr.source, kind, hr.host, pp.port)
                    for rid in c.host_rules(pp.port, kind, hr):
                        by_host.setdefault(hr.host, []).append(rid)
                for host, rids in by_host.items():
                    doing = (out.rules[rids[0]].object, kind, host, pp.port)
                    t.add_host(pp.port, host, rids)
    except EngineError as e:
        obj, kind, what, port = doing
        raise ConfigError(f"the decision table refuses {kind} {what} on port {port}: {e}",
                          obj=obj) from None
    t.build()
    return out


class _Compiler:
    """Adds rules to one table, keeping RuleInfo in step with C rule ids."""

    def __init__(self, t: "_core.Table", out: CompiledTable, limits: Optional["_core.Limits"],
                 resolver: Resolver) -> None:
        self.t, self.out, self.limits, self.resolver = t, out, limits, resolver

    def rule(self, info: RuleInfo) -> int:
        rid = self.t.add_rule(info.kind, _ms(info.connect_timeout), info.max_connections or 0)
        assert rid == len(self.out.rules)
        self.out.rules.append(info)
        if self.limits is not None and info.limit_key and info.max_connections:
            self.t.rule_set_limit(rid, self.limits.slot(info.limit_key))
        return rid

    def host_rules(self, port: int, kind: str, hr: HostRule) -> List[int]:
        """C rules for one host rule: one, or one per route when routes dial their own
        upstreams. Route groups without matches allow nothing: a route no method matches."""
        redirect = hr.connect_to_host and not hr.wildcard
        groups: List[Tuple[Optional[Sequence[Route]], str]]
        default_up = hr.upstream or f"{hr.host}:{port}"
        if kind == "http" and hr.routes and redirect and any(r.upstream for r in hr.routes):
            groups = [((r,), r.upstream or default_up) for r in hr.routes]
        else:
            groups = [(hr.routes if kind == "http" else None, default_up)]
        out = []
        for routes, upstream in groups:
            rid = self.rule(RuleInfo(kind, hr.source, "", port,
                                     upstream if redirect else "", hr.connect_timeout,
                                     hr.max_connections, hr.limit_key, hr, routes))
            for cidr in hr.cidrs:
                self.t.rule_restrict_cidr(rid, cidr)
            if redirect:
                host, uport = _split_hostport(upstream, port)
                self.t.rule_add_upstream(rid)  # marks it redirected: nothing resolved: refused
                for ip in self.resolver(host, uport):
                    self.t.rule_add_upstream(rid, ip, uport)
            if kind == "http" and routes is not None and not routes:
                self.t.rule_add_route(rid, "", 0)  # method mask 0: matches no request
            for route in routes or ():
                self._route(rid, route)
            out.append(rid)
        return out

    def _route(self, rid: int, route: Route) -> None:
        try:
            self.t.rule_add_route(rid, route_regex(route), methods_mask(route.methods),
                                  list(route.headers))
        except ValueError as e:
            what = e.args[0]
            if what[0] == "path":
                fld, regex, why = "pathRegex", what[1], what[2]
            else:
                fld, regex, why = f"headers.{what[1]}", what[2], what[3]
            raise ConfigError(f"regex {regex!r} refused by the data plane's RE2: {why}",
                              file=route.file or None, obj=route.source, field=fld) from None


def check_config(cfg: Config) -> None:
    """validate's compile: every Egress (whatever its sources) and the Pipy config compiled into a
    C table exactly as run would (names not resolved). Raises ConfigErrors."""
    policy = compile_policy(cfg, all_sources=True)
    try:
        compile_table(policy, resolver=lambda h, p: [])
    except ConfigError as e:
        raise ConfigErrors([e]) from None
