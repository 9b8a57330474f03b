"""The reference decision: loaded configuration -> `CompiledPolicy` (for one sidecar identity) ->
`decide(policy, dst_ip, dst_port, sni=None, http=None) -> Decision`, exactly as EGRESS.md
section 3 says. Pure Python, no I/O; the C tables built from `CompiledPolicy` must give the same
answers (tests compare the two).

Order of evaluation for a connection to `ip:port`:
1. in the mesh: a `Service` ClusterIP (/32, /128) or a Pipy `DestinationIPRanges` entry on this port
   holds `ip` -> `mesh` (most specific CIDR reported). Egress settings never block it.
2. policies (only when `enableEgressPolicy`), the union of every applicable Egress on this port:
   a. a `tcp`/`tcp-server-first` rule whose `ipAddresses` hold `ip` (longest prefix reported), else
      one without `ipAddresses` (the whole port) -> `allow`, nothing peeked;
   b. `https`/`http` rules whose `ipAddresses` are empty or hold `ip` need the SNI / request head:
      without it the answer is `need-sni`, `need-http-head`, or `need-peek` (both kinds present:
      either a ClientHello or a request head will do). With it: SNI or Host matches a rule's host
      (and, for http, one of its routes) -> `allow`. Rules whose `ipAddresses` hold `ip` are
      reported before rules without, exact hosts before wildcards.
3. passthrough: nothing above allowed and `enableEgress` -> `passthrough` to the original
   destination. FSM narrows a port that carries a policy even with passthrough on; fastproxy keeps
   that off by default (`fsm_port_narrowing=True` in `compile_policy` turns it on: then a port with
   any policy rule for this sidecar denies what the policy does not allow).
4. otherwise `deny` (a reset; `http_status` 403 when the answer was about an HTTP request).

Choices where the contract is open (documented here and in explain output):
* Host matching is the same for http and https: case-insensitive, one trailing dot ignored,
  `*.example.com` matches exactly one more label (FSM's http lookup is exact and case-sensitive).
  An http `Host: name:port` matches only when `port` is the destination port.
* "Any method" means any method (FSM's script allows only its 7-method set).
* `path` is the request target as sent (query included), as Pipy sees it; regexes are searched.
* An SNI or Host of "" (peeked, nothing found, or the peek timed out) matches no host rule.
* Where to connect: the original destination, unless the Egress carries the annotation
  `fastproxy.flomesh.io/upstream: host` or `connect_to_host=True` in `compile_policy` (then an
  http/https allow of that rule connects to the matched host name: the policy's host, or a Pipy
  route's target endpoint when it has one; a wildcard rule still connects to the original
  destination, since the data plane resolves no names at connection time).
* With `enableEgress` on, host rules are not even peeked for (an SNI or Host could only change
  "passthrough" into "allow", both relayed to the original destination), unless
  `connect_to_host` makes a matching host change the upstream, or FSM's port narrowing is on.
  That keeps server-first protocols on such a port from waiting for a peek.
* A header match holds when any header line of that name (case-insensitive) matches its regex.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from fastproxy.config.loader import Config
from fastproxy.config.objects import normalize_host

ACTIONS = ("mesh", "allow", "passthrough", "deny", "need-sni", "need-http-head", "need-peek")


# ---------------------------------------------------------------------------------------------
# compiled form (plain, sorted, deterministic)


@dataclass(frozen=True)
class Route:
    """One HTTP route rule. Empty `methods` = any method; headers are (lower-case name, regex)."""

    source: str
    path: str = ".*"
    path_type: str = "regex"   # regex (searched) | exact | prefix
    methods: Tuple[str, ...] = ()
    headers: Tuple[Tuple[str, str], ...] = ()
    upstream: str = ""         # Pipy: host:port of the route's target cluster

    def describe(self) -> str:
        parts = [f"{self.path_type} {self.path}"]
        parts.append("methods " + (",".join(self.methods) if self.methods else "any"))
        if self.headers:
            parts.append("headers " + ",".join(f"{k}~{v}" for k, v in self.headers))
        return f"{self.source} ({'; '.join(parts)})"


@dataclass(frozen=True)
class HostRule:
    """An http or https allow rule for one host on one port. `cidrs` empty = any destination IP.
    `routes` None = any request (http without HTTPRouteGroups); () = no request (FSM: a referenced
    group with no matches)."""

    host: str
    protocol: str
    source: str
    cidrs: Tuple[str, ...] = ()
    routes: Optional[Tuple[Route, ...]] = None
    upstream: str = ""
    connect_timeout: Optional[float] = None
    max_connections: Optional[int] = None
    connect_to_host: bool = False      # allowed traffic dials `upstream`, not the original IP

    @property
    def wildcard(self) -> bool:
        return self.host.startswith("*.")


@dataclass(frozen=True)
class TcpRule:
    protocol: str                    # tcp | tcp-server-first
    source: str
    cidrs: Tuple[str, ...] = ()      # empty = any IP on the port
    connect_timeout: Optional[float] = None
    max_connections: Optional[int] = None


@dataclass(frozen=True)
class MeshRange:
    cidr: str
    source: str


@dataclass(frozen=True)
class PortPolicy:
    port: int
    mesh: Tuple[MeshRange, ...] = ()
    tcp: Tuple[TcpRule, ...] = ()
    https: Tuple[HostRule, ...] = ()
    http: Tuple[HostRule, ...] = ()

    @property
    def has_policy(self) -> bool:
        return bool(self.tcp or self.https or self.http)


@dataclass(frozen=True)
class CompiledPolicy:
    service_account: Optional[str]
    namespace: Optional[str]
    mesh_ref: str
    enable_egress: bool
    enable_egress_policy: bool
    sidecar_timeout: int
    connect_to_host: bool = False
    fsm_port_narrowing: bool = False
    ports: Tuple[PortPolicy, ...] = ()
    _by_port: Dict[int, PortPolicy] = field(default_factory=dict, compare=False, repr=False)

    def port(self, number: int) -> Optional[PortPolicy]:
        if not self._by_port and self.ports:
            self._by_port.update({p.port: p for p in self.ports})
        return self._by_port.get(number)

    def to_dict(self) -> Dict[str, Any]:
        import dataclasses
        d = dataclasses.asdict(self)
        d.pop("_by_port", None)
        return d


def _host_ip_cidr(ip: str) -> str:
    a = ipaddress.ip_address(ip)
    return f"{a}/{a.max_prefixlen}"


def compile_policy(cfg: Config, service_account: Optional[str] = None, namespace: Optional[str] = None,
                   *, connect_to_host: bool = False, fsm_port_narrowing: bool = False) -> CompiledPolicy:
    """The decision tables for one sidecar. Identity defaults to the one `cfg` was loaded for."""
    sa = service_account if service_account is not None else cfg.service_account
    ns = namespace if namespace is not None else cfg.namespace
    mesh: Dict[int, List[MeshRange]] = {}
    tcp: Dict[int, List[TcpRule]] = {}
    https: Dict[int, List[HostRule]] = {}
    http: Dict[int, List[HostRule]] = {}

    for svc in cfg.services:
        for sp in svc.ports:
            if sp.protocol != "TCP":
                continue
            for ip in svc.cluster_ips:
                mesh.setdefault(sp.port, []).append(MeshRange(_host_ip_cidr(ip), svc.ref))

    policy_on = cfg.mesh.enable_egress_policy
    if policy_on:
        for eg in cfg.egresses:
            if not (sa and ns and eg.applies_to(sa, ns)):
                continue
            u = eg.upstream_traffic_setting
            ct = u.connect_timeout if u else None
            mc = u.max_connections if u else None
            cidrs = tuple(sorted(eg.ip_addresses))
            routes: Optional[Tuple[Route, ...]] = None
            if eg.route_groups:
                routes = tuple(Route(source=f"{g.ref} match {m.name}", path=m.path_regex or ".*",
                                     methods=m.methods, headers=m.headers)
                               for g in eg.route_groups for m in g.matches)
            for p in eg.ports:
                if p.protocol in ("tcp", "tcp-server-first"):
                    tcp.setdefault(p.number, []).append(TcpRule(p.protocol, eg.ref, cidrs, ct, mc))
                    continue
                table = https if p.protocol == "https" else http
                for h in eg.hosts:
                    table.setdefault(p.number, []).append(HostRule(
                        host=h, protocol=p.protocol, source=eg.ref, cidrs=cidrs,
                        routes=routes if p.protocol == "http" else None,
                        upstream="" if h.startswith("*.") else f"{h}:{p.number}",
                        connect_timeout=ct, max_connections=mc,
                        connect_to_host=connect_to_host or eg.connect_to_host))

    if cfg.pipy is not None:
        src = cfg.pipy.ref
        for m in cfg.pipy.matches:
            cidrs = tuple(sorted(m.cidrs))
            if m.kind == "mesh":
                mesh.setdefault(m.port, []).extend(MeshRange(c, src) for c in m.cidrs)
            elif not policy_on:
                continue
            elif m.kind == "tcp":
                tcp.setdefault(m.port, []).append(TcpRule("tcp", src, cidrs))
            elif m.kind == "https":
                for h in m.hosts:
                    https.setdefault(m.port, []).append(HostRule(
                        host=h, protocol="https", source=src, upstream=m.upstreams.get(h, ""),
                        connect_timeout=m.connect_timeout, max_connections=m.max_connections,
                        connect_to_host=connect_to_host))
            elif m.kind == "http":
                for h in m.hosts:
                    rs = m.routes.get(h) or []
                    http.setdefault(m.port, []).append(HostRule(
                        host=h, protocol="http", source=src,
                        routes=tuple(Route(source=f"{src} {m.field_path} route {i}", path=r.path,
                                           path_type=r.path_type, methods=r.methods,
                                           headers=r.headers, upstream=r.upstream)
                                     for i, r in enumerate(rs)),
                        upstream=f"{h}:{m.port}",
                        connect_timeout=m.connect_timeout, max_connections=m.max_connections,
                        connect_to_host=connect_to_host))

    def host_key(r: HostRule) -> Tuple:
        return (r.host, r.cidrs, r.source, r.upstream, repr(r.routes), r.connect_to_host)

    ports = []
    for number in sorted(set(mesh) | set(tcp) | set(https) | set(http)):
        ports.append(PortPolicy(
            port=number,
            mesh=tuple(sorted(set(mesh.get(number, [])), key=lambda r: (r.cidr, r.source))),
            tcp=tuple(sorted(set(tcp.get(number, [])), key=lambda r: (r.cidrs, r.protocol, r.source))),
            https=tuple(sorted(set(https.get(number, [])), key=host_key)),
            http=tuple(sorted(set(http.get(number, [])), key=host_key)),
        ))
    return CompiledPolicy(service_account=sa, namespace=ns, mesh_ref=cfg.mesh.ref,
                          enable_egress=cfg.mesh.enable_egress, enable_egress_policy=policy_on,
                          sidecar_timeout=cfg.mesh.sidecar_timeout, connect_to_host=connect_to_host,
                          fsm_port_narrowing=fsm_port_narrowing, ports=tuple(ports))


# ---------------------------------------------------------------------------------------------
# deciding


@dataclass(frozen=True)
class HttpRequest:
    """A peeked request head. `headers` names are matched case-insensitively."""

    host: str
    path: str = "/"
    method: str = "GET"
    headers: Tuple[Tuple[str, str], ...] = ()

    @staticmethod
    def make(host: str, path: str = "/", method: str = "GET",
             headers: Optional[Mapping[str, str]] = None) -> "HttpRequest":
        return HttpRequest(host, path, method, tuple((k.lower(), v) for k, v in (headers or {}).items()))


@dataclass(frozen=True)
class Decision:
    action: str
    object: str           # Egress ns/name | Service ns/name | MeshConfig ns/name | PipyConfig id
    rule: str             # which port/protocol/host/CIDR/route decided
    upstream: str = ""    # where to connect (ip:port or host:port); "" for deny / need-*
    http_status: Optional[int] = None   # 403 for a denied HTTP request
    connect_timeout: Optional[float] = None
    max_connections: Optional[int] = None

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


@lru_cache(maxsize=4096)
def _net(cidr: str) -> "ipaddress.IPv4Network | ipaddress.IPv6Network":
    return ipaddress.ip_network(cidr)


@lru_cache(maxsize=4096)
def _rx(pattern: str) -> "re.Pattern[str]":
    return re.compile(pattern)


def _best_prefix(cidrs: Iterable[str], ip: "ipaddress.IPv4Address | ipaddress.IPv6Address") -> Optional[str]:
    """The longest of `cidrs` holding `ip` (None: none does)."""
    best: Optional[str] = None
    best_len = -1
    for c in cidrs:
        n = _net(c)
        if n.version == ip.version and ip in n and n.prefixlen > best_len:
            best, best_len = c, n.prefixlen
    return best


def host_matches(pattern: str, name: str) -> bool:
    """`name` (already normalised) against a policy host: exact, or `*.suffix` with exactly one
    more label."""
    if not name:
        return False
    if pattern.startswith("*."):
        suffix = pattern[1:]  # ".example.com"
        if not name.endswith(suffix):
            return False
        label = name[: -len(suffix)]
        return bool(label) and "." not in label
    return name == pattern


def split_host_header(value: str) -> Tuple[str, Optional[int]]:
    """`Host` header -> (normalised name, port or None). `[v6]:port` handled; a bad port gives
    port -1 (never equal to a destination port)."""
    v = value.strip()
    if v.startswith("["):
        end = v.find("]")
        name, rest = (v[1:end], v[end + 1:]) if end > 0 else (v, "")
        port_text = rest[1:] if rest.startswith(":") else None
    else:
        name, sep, port_text = v.rpartition(":")
        if not sep:
            name, port_text = v, None
    port: Optional[int] = None
    if port_text is not None:
        port = int(port_text) if port_text.isdigit() else -1
    return normalize_host(name), port


def _route_matches(r: Route, req: HttpRequest) -> bool:
    if r.methods and req.method not in r.methods:
        return False
    if r.path_type == "exact":
        ok = req.path == r.path
    elif r.path_type == "prefix":
        ok = req.path.startswith(r.path)
    else:
        ok = _rx(r.path).search(req.path) is not None
    if not ok:
        return False
    for name, rx in r.headers:
        if not any(k.lower() == name and _rx(rx).search(v) is not None for k, v in req.headers):
            return False
    return True


def _fmt_addr(ip: "ipaddress.IPv4Address | ipaddress.IPv6Address", port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _order(rules: Iterable[HostRule], ip) -> List[Tuple[HostRule, Optional[str]]]:
    """Host rules applicable to `ip`, most specific first: rules whose CIDRs hold ip (longest
    prefix) before rules without CIDRs; exact hosts before wildcards; then table order."""
    out: List[Tuple[Tuple[int, int, bool, int], HostRule, Optional[str]]] = []
    for i, r in enumerate(rules):
        if r.cidrs:
            c = _best_prefix(r.cidrs, ip)
            if c is None:
                continue
            out.append(((0, -_net(c).prefixlen, r.wildcard, i), r, c))
        else:
            out.append(((1, 0, r.wildcard, i), r, None))
    out.sort(key=lambda t: t[0])
    return [(r, c) for _, r, c in out]


def decide(policy: CompiledPolicy, dst_ip: str, dst_port: int, sni: Optional[str] = None,
           http: Optional[HttpRequest] = None) -> Decision:
    """What to do with a connection to `dst_ip:dst_port` (see the module doc for the order).
    `sni`/`http` None mean "not peeked"; "" / a request without Host mean "peeked, nothing"."""
    ip = ipaddress.ip_address(dst_ip)
    original = _fmt_addr(ip, dst_port)
    pp = policy.port(dst_port)

    # 1. in the mesh
    if pp is not None and pp.mesh:
        best = None
        for m in pp.mesh:
            n = _net(m.cidr)
            if n.version == ip.version and ip in n and (best is None or n.prefixlen > _net(best.cidr).prefixlen):
                best = m
        if best is not None:
            return Decision("mesh", best.source, f"port {dst_port} in-mesh destination {best.cidr}",
                            upstream=original)

    # 2. egress policies
    host_only: Optional[HostRule] = None  # an http rule whose host matched but no route did
    if policy.enable_egress_policy and pp is not None and pp.has_policy:
        tcp_best: Optional[Tuple[int, TcpRule, Optional[str]]] = None
        for tr in pp.tcp:
            if tr.cidrs:
                c = _best_prefix(tr.cidrs, ip)
                if c is None:
                    continue
                rank = _net(c).prefixlen
            else:
                c, rank = None, -1
            if tcp_best is None or rank > tcp_best[0]:
                tcp_best = (rank, tr, c)
        if tcp_best is not None:
            _, tr, c = tcp_best
            what = f"ipAddresses {c}" if c else "any IP (no ipAddresses)"
            return Decision("allow", tr.source, f"port {dst_port}/{tr.protocol} {what}",
                            upstream=original, connect_timeout=tr.connect_timeout,
                            max_connections=tr.max_connections)

        https_rules = _order(pp.https, ip)
        http_rules = _order(pp.http, ip)
        if policy.enable_egress and not policy.fsm_port_narrowing and not (
                any(r.connect_to_host and not r.wildcard for r in pp.https + pp.http)):
            # every answer would be "relay to the original destination": nothing is peeked
            https_rules = http_rules = []
        if https_rules and sni is not None:
            name = normalize_host(sni)
            for r, c in https_rules:
                if host_matches(r.host, name):
                    up = original
                    if r.connect_to_host and not r.wildcard:
                        up = r.upstream or f"{r.host}:{dst_port}"
                    where = f" ipAddresses {c}" if c else ""
                    return Decision("allow", r.source, f"port {dst_port}/https SNI {name} host {r.host}{where}",
                                    upstream=up, connect_timeout=r.connect_timeout,
                                    max_connections=r.max_connections)
        if http_rules and http is not None:
            name, hport = split_host_header(http.host)
            if hport is None or hport == dst_port:
                for r, c in http_rules:
                    if not host_matches(r.host, name):
                        continue
                    route = None
                    if r.routes is not None:
                        route = next((x for x in r.routes if _route_matches(x, http)), None)
                        if route is None:
                            host_only = host_only or r
                            continue
                    up = original
                    if r.connect_to_host and not r.wildcard:
                        up = (route.upstream if route and route.upstream else
                              r.upstream or f"{r.host}:{dst_port}")
                    where = f" ipAddresses {c}" if c else ""
                    rdesc = f" route {route.describe()}" if route else " any request"
                    return Decision("allow", r.source, f"port {dst_port}/http Host {name} host {r.host}{where}{rdesc}",
                                    upstream=up, connect_timeout=r.connect_timeout,
                                    max_connections=r.max_connections)
        need_https = bool(https_rules) and sni is None and http is None
        need_http = bool(http_rules) and http is None and sni is None
        if need_https or need_http:
            action = "need-peek" if (need_https and need_http) else ("need-sni" if need_https else "need-http-head")
            kinds = "/".join(k for k, on in (("https", need_https), ("http", need_http)) if on)
            return Decision(action, "", f"port {dst_port} has {kinds} policy rules for this destination")
        if policy.fsm_port_narrowing:
            return Decision("deny", policy.mesh_ref,
                            f"port {dst_port} carries an egress policy that does not allow this "
                            "(FSM port narrowing)", http_status=403 if http is not None else None)

    # 3. passthrough, 4. deny
    if policy.enable_egress:
        return Decision("passthrough", policy.mesh_ref, "traffic.enableEgress is true", upstream=original)
    why = "no in-mesh destination or egress policy matched and traffic.enableEgress is false"
    if policy.enable_egress_policy and pp is not None and pp.has_policy and http is not None and host_only:
        why = (f"Host matched {host_only.host} of {host_only.source} but none of its routes "
               f"(method/path/headers); traffic.enableEgress is false")
    if not policy.enable_egress_policy:
        why += " (featureFlags.enableEgressPolicy is false)"
    return Decision("deny", policy.mesh_ref, why, http_status=403 if http is not None else None)
