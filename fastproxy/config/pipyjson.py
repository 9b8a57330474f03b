"""The sidecar configuration FSM's controller writes for a Pipy sidecar (`config.json`), read so
that fastproxy can stand where a Pipy sidecar stands.

Recognised as a JSON/YAML document without `apiVersion`/`kind` whose top level has `Spec`.
Unknown keys are tolerated everywhere (FSM adds fields across versions); the keys read below must
have the right types. What is read:
* `Spec.SidecarLogLevel`, `Spec.SidecarTimeout`, `Spec.Traffic.EnableEgress`,
  `Spec.ServiceIdentity` (`<sa>.<ns>`, informational);
* `Outbound.TrafficMatches["<port>"][]` and `Outbound.ClustersConfigs`, classified as FSM's
  scripts would produce them (fsm-egress-notes.md 3.3):
  - `Protocol: tcp` with `TcpServiceRouteRules.AllowedEgressTraffic: true`: an egress tcp rule,
    CIDRs = `DestinationIPRanges` keys (null: any IP on the port);
  - `Protocol: https` without `DestinationIPRanges`: egress https, hosts = the endpoints of the
    clusters its `TcpServiceRouteRules.TargetClusters` name (FSM's `"<port>"` cluster);
  - `Protocol: http`/`grpc` without `DestinationIPRanges`: egress http, hosts = the keys of
    `HttpHostPort2Service` (`host` and `host:port` fold into one host), routes from
    `HttpServiceRouteRules[RuleName].RouteRules` (Path/Type/Methods/Headers), upstream = the first
    endpoint of the first target cluster;
  - anything else with `DestinationIPRanges`: in-mesh destinations on that port.
* cluster `ConnectionSettings.tcp.MaxConnections` / `ConnectTimeout` (seconds) of egress clusters.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from fastproxy.config._check import (
    Doc, MISSING, cidr_item, dedupe, int_value, join, type_name,
)
from fastproxy.config.meshconfig import LOG_LEVELS
from fastproxy.config.objects import host_error, normalize_host, regex_item

KIND = "PipyConfig"
PATH_TYPES = {"Regex": "regex", "Exact": "exact", "Prefix": "prefix"}


def is_pipy_config(obj: Any) -> bool:
    return isinstance(obj, dict) and "Spec" in obj and "apiVersion" not in obj and "kind" not in obj


@dataclass(frozen=True)
class PipyRoute:
    path: str                       # regex, exact path or prefix per path_type
    path_type: str = "regex"        # regex | exact | prefix
    methods: Tuple[str, ...] = ()   # empty = any
    headers: Tuple[Tuple[str, str], ...] = ()
    upstream: str = ""              # host:port of the first endpoint of the first target cluster


@dataclass
class PipyMatch:
    """One outbound match relevant to decisions. kind: mesh | http | https | tcp."""

    port: int
    kind: str
    cidrs: List[str] = field(default_factory=list)     # empty: any IP (egress kinds only)
    hosts: List[str] = field(default_factory=list)
    routes: Dict[str, Optional[List[PipyRoute]]] = field(default_factory=dict)  # http: host -> rules
    upstreams: Dict[str, str] = field(default_factory=dict)  # https: host -> host:port
    max_connections: Optional[int] = None
    connect_timeout: Optional[float] = None
    field_path: str = ""


@dataclass
class PipyConfig:
    file: str
    identity: str
    enable_egress: Optional[bool]
    log_level: Optional[str]
    sidecar_timeout: Optional[int]
    matches: List[PipyMatch] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"{KIND} {self.identity or '?'}"

    def to_dict(self) -> Dict[str, Any]:
        return {"kind": KIND, "identity": self.identity, "enableEgress": self.enable_egress,
                "logLevel": self.log_level, "sidecarTimeout": self.sidecar_timeout,
                "matches": [{"port": m.port, "kind": m.kind, "cidrs": m.cidrs, "hosts": m.hosts}
                            for m in self.matches]}


def _get(doc: Doc, m: Dict[str, Any], key: str, path: str, typ: str) -> Any:
    """m[key] if present and of type `typ` (bool/int/str/dict/list); null and absent give None."""
    v = m.get(key, MISSING)
    if v is MISSING or v is None:
        return None
    ok = {"bool": type(v) is bool, "int": type(v) is int, "num": type(v) in (int, float),
          "str": isinstance(v, str), "dict": isinstance(v, dict), "list": isinstance(v, list)}[typ]
    if not ok:
        doc.err(join(path, key), f"must be {typ_word(typ)}, not {type_name(v)}")
        return None
    return v


def typ_word(typ: str) -> str:
    return {"bool": "a bool", "int": "an integer", "num": "a number", "str": "a string",
            "dict": "a mapping", "list": "a list"}[typ]


def _decimal_port(text: str) -> bool:
    """`text` is an ASCII decimal port 1..65535 (str.isdigit() also takes '²' and '٣')."""
    return 1 <= len(text) <= 5 and text.isascii() and text.isdigit() and 1 <= int(text) <= 65535


def _host_port(doc: Doc, text: str, p: str) -> Optional[Tuple[str, Optional[int]]]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, ""
    h = normalize_host(host)
    why = host_error(h)
    if why:
        doc.err(p, why)
        return None
    if port:
        if not _decimal_port(port):
            doc.err(p, f"invalid port in {text!r}")
            return None
        return h, int(port)
    return h, None


def parse_pipy(doc: Doc, obj: Dict[str, Any]) -> Optional[PipyConfig]:
    n = len(doc.errors)
    spec = _get(doc, obj, "Spec", "", "dict") or {}
    identity = _get(doc, spec, "ServiceIdentity", "Spec", "str") or ""
    if identity:
        doc.obj = f"{KIND} {identity}"
    level = _get(doc, spec, "SidecarLogLevel", "Spec", "str")
    if level is not None and level not in LOG_LEVELS:
        doc.err("Spec.SidecarLogLevel", f"must be one of {', '.join(LOG_LEVELS)}; got {level!r}")
    if level == "warning":
        level = "warn"
    timeout = _get(doc, spec, "SidecarTimeout", "Spec", "int")
    if timeout is not None:
        timeout = int_value(doc, timeout, "Spec.SidecarTimeout", lo=0, hi=2**31 - 1)
    traffic = _get(doc, spec, "Traffic", "Spec", "dict") or {}
    egress = _get(doc, traffic, "EnableEgress", "Spec.Traffic", "bool")

    outbound = _get(doc, obj, "Outbound", "", "dict") or {}
    clusters = _get(doc, outbound, "ClustersConfigs", "Outbound", "dict") or {}
    tm = _get(doc, outbound, "TrafficMatches", "Outbound", "dict") or {}

    def cluster_endpoints(name: str, p: str) -> List[str]:
        """The cluster's endpoints as normalised `host:port` (FSM always writes the port: an
        endpoint without one is an error here, not a crash where it is dialled)."""
        c = clusters.get(name)
        cp = join("Outbound.ClustersConfigs", name)
        if not isinstance(c, dict):
            if c is not None:
                doc.err(cp, f"must be a mapping, not {type_name(c)}")
            else:
                doc.err(p, f"names cluster {name!r}, which Outbound.ClustersConfigs does not have")
            return []
        eps = _get(doc, c, "Endpoints", cp, "dict") or {}
        out: List[str] = []
        for ep in eps:
            ep_path = join(join(cp, "Endpoints"), str(ep))
            hp = _host_port(doc, str(ep), ep_path)
            if hp is None:
                continue
            if hp[1] is None:
                doc.err(ep_path, f"endpoint {ep!r} has no port (write host:port)")
                continue
            out.append(f"{hp[0]}:{hp[1]}")
        return out

    def cluster_limits(name: str) -> Tuple[Optional[int], Optional[float]]:
        c = clusters.get(name)
        if not isinstance(c, dict):
            return None, None
        cp = join("Outbound.ClustersConfigs", name)
        cs = _get(doc, c, "ConnectionSettings", cp, "dict") or {}
        tcp = _get(doc, cs, "tcp", join(cp, "ConnectionSettings"), "dict") or {}
        tp = join(cp, "ConnectionSettings.tcp")
        maxc = _get(doc, tcp, "MaxConnections", tp, "int")
        ct = _get(doc, tcp, "ConnectTimeout", tp, "num")
        return maxc, (float(ct) if ct is not None else None)

    matches: List[PipyMatch] = []
    for port_key in sorted(tm, key=lambda k: (not _decimal_port(str(k)),
                                              int(k) if _decimal_port(str(k)) else 0, str(k))):
        pp = join("Outbound.TrafficMatches", str(port_key))
        if not _decimal_port(str(port_key)):
            doc.err(pp, "port key must be a decimal port 1..65535")
            continue
        port = int(port_key)
        lst = tm[port_key]
        if lst is None:
            continue
        if not isinstance(lst, list):
            doc.err(pp, f"must be a list, not {type_name(lst)}")
            continue
        for i, m in enumerate(lst):
            mp = join(pp, i)
            if not isinstance(m, dict):
                doc.err(mp, f"must be a mapping, not {type_name(m)}")
                continue
            proto = (_get(doc, m, "Protocol", mp, "str") or "").lower()
            ranges = _get(doc, m, "DestinationIPRanges", mp, "dict")
            cidrs = dedupe(c for c in (cidr_item(doc, k, join(join(mp, "DestinationIPRanges"), k))
                                       for k in (ranges or {})) if c is not None)
            tcp_rules = _get(doc, m, "TcpServiceRouteRules", mp, "dict") or {}
            allowed = _get(doc, tcp_rules, "AllowedEgressTraffic", join(mp, "TcpServiceRouteRules"), "bool")
            targets = _get(doc, tcp_rules, "TargetClusters", join(mp, "TcpServiceRouteRules"), "dict") or {}
            if proto == "tcp" and allowed:
                matches.append(PipyMatch(port, "tcp", cidrs=cidrs, field_path=mp))
            elif ranges:
                matches.append(PipyMatch(port, "mesh", cidrs=cidrs, field_path=mp))
            elif proto == "https":
                pm = PipyMatch(port, "https", field_path=mp)
                for cname in targets:
                    for ep in cluster_endpoints(cname, join(mp, "TcpServiceRouteRules.TargetClusters")):
                        host = ep.rpartition(":")[0]
                        pm.hosts.append(host)
                        pm.upstreams.setdefault(host, ep)
                    pm.max_connections, pm.connect_timeout = cluster_limits(cname)
                pm.hosts = dedupe(pm.hosts)
                matches.append(pm)
            elif proto in ("http", "grpc"):
                matches.append(_http_match(doc, m, mp, port, cluster_endpoints, cluster_limits))
            # anything else without ranges produces nothing in FSM's scripts either
    if len(doc.errors) > n:
        return None
    return PipyConfig(file=doc.file, identity=identity, enable_egress=egress,
                      log_level=level, sidecar_timeout=timeout, matches=matches)


def _http_match(doc: Doc, m: Dict[str, Any], mp: str, port: int, cluster_endpoints, cluster_limits) -> PipyMatch:
    pm = PipyMatch(port, "http", field_path=mp)
    h2s = _get(doc, m, "HttpHostPort2Service", mp, "dict") or {}
    rules = _get(doc, m, "HttpServiceRouteRules", mp, "dict") or {}
    for key, svc in h2s.items():
        kp = join(join(mp, "HttpHostPort2Service"), key)
        hp = _host_port(doc, key, kp)
        if not hp:
            continue
        host = hp[0]
        if not isinstance(svc, dict):
            doc.err(kp, f"must be a mapping, not {type_name(svc)}")
            continue
        rule_name = _get(doc, svc, "RuleName", kp, "str")
        if rule_name is None:
            doc.err(join(kp, "RuleName"), "is required")
            continue
        if host in pm.routes:
            continue  # host and host:port name the same rules
        pm.hosts.append(host)
        rp = join(join(mp, "HttpServiceRouteRules"), rule_name)
        group = rules.get(rule_name)
        if not isinstance(group, dict):
            doc.err(rp, "is missing (named by HttpHostPort2Service)" if group is None
                    else f"must be a mapping, not {type_name(group)}")
            continue
        rr = _get(doc, group, "RouteRules", rp, "list")
        routes: List[PipyRoute] = []
        for j, r in enumerate(rr or []):
            p = join(join(rp, "RouteRules"), j)
            if not isinstance(r, dict):
                doc.err(p, f"must be a mapping, not {type_name(r)}")
                continue
            path = _get(doc, r, "Path", p, "str") or ""
            ptype = _get(doc, r, "Type", p, "str") or "Regex"
            if ptype not in PATH_TYPES:
                doc.err(join(p, "Type"), f"must be one of {', '.join(PATH_TYPES)}; got {ptype!r}")
                continue
            if PATH_TYPES[ptype] == "regex" and regex_item(doc, path, join(p, "Path")) is None:
                continue
            methods = _get(doc, r, "Methods", p, "list") or []
            if not all(isinstance(x, str) for x in methods):
                doc.err(join(p, "Methods"), "must be a list of strings")
                continue
            headers = _get(doc, r, "Headers", p, "dict") or {}
            hdrs = []
            for hk, hv in headers.items():
                if regex_item(doc, hv, join(join(p, "Headers"), hk)) is not None:
                    hdrs.append((hk.lower(), hv))
            targets = _get(doc, r, "TargetClusters", p, "dict") or {}
            upstream = ""
            for cname in targets:
                eps = cluster_endpoints(cname, join(p, "TargetClusters"))
                if eps:
                    upstream = eps[0]
                    mc, ct = cluster_limits(cname)
                    pm.max_connections = pm.max_connections if mc is None else mc
                    pm.connect_timeout = pm.connect_timeout if ct is None else ct
                    break
            routes.append(PipyRoute(path=path or ".*", path_type=PATH_TYPES[ptype],
                                    methods=tuple("*" not in methods and methods or ()),
                                    headers=tuple(sorted(hdrs)), upstream=upstream))
        pm.routes[host] = routes
    return pm
