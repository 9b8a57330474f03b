"""The policy model: loaded configuration -> `CompiledPolicy` for one sidecar identity, the plain,
sorted form that `fastproxy.tables` compiles into the C decision table. validate, explain and run
all go through that one compile; the decision itself exists once, in C (src_c/fp_table.c), and
`fastproxy.explain` asks it. A new policy kind touches the loader (fastproxy/config), this
module's `compile_policy` and tables.py's compiler, and the C decision.

What the C table decides, for a connection to `ip:port` (EGRESS.md section 3):
1. in the mesh: a `Service` ClusterIP (/32, /128) or a Pipy `DestinationIPRanges` entry on this port
   holds `ip` -> `mesh`. Egress settings never block it.
2. policies (only when `enableEgressPolicy`), the union of every applicable Egress on this port:
   a. a `tcp`/`tcp-server-first` rule whose `ipAddresses` hold `ip` (longest prefix), else one
      without `ipAddresses` (the whole port) -> `allow`, nothing peeked;
   b. `https`/`http` rules whose `ipAddresses` are empty or hold `ip` need the SNI / request head
      (`need-sni`, `need-http-head`, `need-peek`); SNI or Host matches a rule's host (and, for
      http, one of its routes) -> `allow`. Rules whose `ipAddresses` hold `ip` come before rules
      without, exact hosts before wildcards.
3. passthrough: nothing above allowed and `enableEgress` -> `passthrough` to the original
   destination (FSM's port narrowing, `fsm_port_narrowing=True`, makes a port with any policy
   rule deny what the policy does not allow).
4. otherwise `deny` (a reset; 403 for an HTTP request).

Choices where the contract is open:
* Host matching is the same for http and https: ASCII case-insensitive, exactly one trailing dot
  ignored (`httpbin.test.` is `httpbin.test`; `httpbin.test..` is another name and matches
  nothing), `*.example.com` matches exactly one more label. An http `Host: name:port` matches only
  when `port` is the destination port.
* "Any method" means any method.
* Route regexes are RE2 (src_c/fp_re2.h), searched (unanchored) in the request target as sent,
  query included; a header match holds when any header line of that name (case-insensitive)
  has a value holding a match.
* Where to connect: the original destination, unless the Egress carries the annotation
  `fastproxy.flomesh.io/upstream: host` or `connect_to_host=True` (then an http/https allow of a
  non-wildcard rule dials the policy host, or a Pipy route's target endpoint).
* With `enableEgress` on, host rules are not peeked for unless a matching host would change the
  upstream, or FSM's port narrowing is on.
* Connection limits (UpstreamTrafficSetting `maxConnections`) are per setting: every rule made
  from one setting counts against one counter (`limit_key`), kept across reloads.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

from fastproxy.config.loader import Config

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
    file: str = ""             # where the route was written (for compile errors)

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
    limit_key: str = ""                # the setting the limits come from (one counter per key)

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
    limit_key: str = ""


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
                   *, connect_to_host: bool = False, fsm_port_narrowing: bool = False,
                   all_sources: bool = False) -> CompiledPolicy:
    """The decision tables for one sidecar. Identity defaults to the one `cfg` was loaded for;
    `all_sources` applies every Egress whatever its sources (validate compiles them all)."""
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
            if not all_sources and not (sa and ns and eg.applies_to(sa, ns)):
                continue
            u = eg.upstream_traffic_setting
            ct = u.connect_timeout if u else None
            mc = u.max_connections if u else None
            lk = u.ref if u and mc else ""
            cidrs = tuple(sorted(eg.ip_addresses))
            routes: Optional[Tuple[Route, ...]] = None
            if eg.route_groups:
                routes = tuple(Route(source=f"{g.ref} match {m.name}", path=m.path_regex or ".*",
                                     methods=m.methods, headers=m.headers, file=g.file)
                               for g in eg.route_groups for m in g.matches)
            for p in eg.ports:
                if p.protocol in ("tcp", "tcp-server-first"):
                    tcp.setdefault(p.number, []).append(TcpRule(p.protocol, eg.ref, cidrs, ct, mc, lk))
                    continue
                table = https if p.protocol == "https" else http
                for h in eg.hosts:
                    table.setdefault(p.number, []).append(HostRule(
                        host=h, protocol=p.protocol, source=eg.ref, cidrs=cidrs,
                        routes=routes if p.protocol == "http" else None,
                        upstream="" if h.startswith("*.") else f"{h}:{p.number}",
                        connect_timeout=ct, max_connections=mc,
                        connect_to_host=connect_to_host or eg.connect_to_host, limit_key=lk))

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
                        connect_to_host=connect_to_host,
                        limit_key=f"{src} {m.field_path}" if m.max_connections else ""))
            elif m.kind == "http":
                for h in m.hosts:
                    rs = m.routes.get(h) or []
                    http.setdefault(m.port, []).append(HostRule(
                        host=h, protocol="http", source=src,
                        routes=tuple(Route(source=f"{src} {m.field_path} route {i}", path=r.path,
                                           path_type=r.path_type, methods=r.methods,
                                           headers=r.headers, upstream=r.upstream,
                                           file=cfg.pipy.file)
                                     for i, r in enumerate(rs)),
                        upstream=f"{h}:{m.port}",
                        connect_timeout=m.connect_timeout, max_connections=m.max_connections,
                        connect_to_host=connect_to_host,
                        limit_key=f"{src} {m.field_path}" if m.max_connections else ""))

    route_reprs: Dict[int, str] = {}  # every host of one Egress shares one routes tuple

    def host_key(r: HostRule) -> Tuple:
        rr = route_reprs.get(id(r.routes))
        if rr is None:
            rr = route_reprs[id(r.routes)] = repr(r.routes)
        return (r.host, r.cidrs, r.source, r.upstream, rr, r.connect_to_host, r.protocol,
                r.connect_timeout or 0.0, r.max_connections or 0, r.limit_key)

    def unique_hosts(rules: List[HostRule]) -> Tuple[HostRule, ...]:
        """Sorted, duplicates dropped (keyed without hashing every routes tuple again)."""
        keyed = {host_key(r): r for r in rules}
        return tuple(keyed[k] for k in sorted(keyed))

    ports = []
    for number in sorted(set(mesh) | set(tcp) | set(https) | set(http)):
        ports.append(PortPolicy(
            port=number,
            mesh=tuple(sorted(set(mesh.get(number, [])), key=lambda r: (r.cidr, r.source))),
            tcp=tuple(sorted(set(tcp.get(number, [])), key=lambda r: (r.cidrs, r.protocol, r.source))),
            https=unique_hosts(https.get(number, [])),
            http=unique_hosts(http.get(number, [])),
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
    """What explain reports: the C table's verdict and what the compile knew about its rule."""

    action: str
    object: str           # Egress ns/name | Service ns/name | MeshConfig ns/name | PipyConfig id
    rule: str             # which port/protocol/host/CIDR/route decided
    upstream: str = ""    # where to connect (ip:port or host:port); "" for deny / need-*
    http_status: Optional[int] = None   # 403 for a denied HTTP request
    connect_timeout: Optional[float] = None
    max_connections: Optional[int] = None
    reason: str = ""      # why no rule allowed it (enum fp_reason's name), "" when one did

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


