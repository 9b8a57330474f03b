"""The policy objects besides MeshConfig: `Egress`, `HTTPRouteGroup`, `UpstreamTrafficSetting`
(FSM/SMI CRDs) and Kubernetes `Service`, their models and validation.

Decisions where fastproxy is stricter than FSM (contract section 2: bad input is an error, never a
silent drop):
* `Egress.spec.sources[].kind` must be `ServiceAccount` (FSM ignores other kinds);
  `sources[].mtls` (TLS origination by the sidecar) is not supported and is an error.
* `ports[].protocol` must be http, https, tcp or tcp-server-first (any case); FSM drops others.
* `ports[].number` must be 1..65535 (FSM's CRD has no range).
* http and https ports need at least one entry in `hosts` (without one they could match nothing).
* `hosts` are DNS names (an IPv4 literal passes too), lower-cased, a trailing dot stripped; a `*.`
  wildcard is allowed only as the whole leftmost label; no port.
* `matches[]` need `apiGroup`; the references must resolve in the Egress' namespace (FSM skips the
  whole policy when an UpstreamTrafficSetting is missing and 403s everything when an HTTPRouteGroup
  is); here a missing reference fails the load, naming the field.
* HTTPRouteGroup regexes are RE2 (what the data plane matches with, src_c/fp_re2.h; close to,
  not identical with, the JavaScript regexes Pipy uses: no backreferences, no lookaround; size
  caps); methods are the HTTP method names or `*`.
* UpstreamTrafficSetting: only `connectionSettings.tcp` (maxConnections, connectTimeout) is acted on;
  `connectionSettings.http`, `rateLimit` and `httpRoutes` are validated for type and kept.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from fastproxy.config._check import (
    Doc, MISSING, check_keys, cidr_item, dedupe, int_value, join, list_of, mapping, string, type_name,
)

EGRESS_GROUP = "policy.flomesh.io"
EGRESS_API = "policy.flomesh.io/v1alpha1"
HRG_GROUP = "specs.smi-spec.io"
HRG_API = "specs.smi-spec.io/v1alpha4"
UTS_API = "policy.flomesh.io/v1alpha1"

PROTOCOLS = ("http", "https", "tcp", "tcp-server-first")
HTTP_METHODS = ("GET", "HEAD", "PUT", "POST", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
UINT32_MAX = 2**32 - 1


# ---------------------------------------------------------------------------------------------
# shared value checks

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def normalize_host(name: str) -> str:
    """Lower-case and strip one trailing dot (the form hosts are compared in)."""
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


def host_error(host: str) -> Optional[str]:
    """Why `host` (already normalised) is not an acceptable policy host, or None."""
    if not host:
        return "must not be empty"
    if ":" in host or "/" in host:
        return f"must be a host name without port or path; got {host!r}"
    if len(host) > 253:
        return "is longer than 253 characters"
    labels = host.split(".")
    if labels[0] == "*":
        if len(labels) < 2:
            return "a bare '*' is not allowed (use tcp without ipAddresses to allow a whole port)"
        labels = labels[1:]
    for lab in labels:
        if "*" in lab:
            return f"'*' is allowed only as the whole leftmost label (like *.example.com); got {host!r}"
        if not _LABEL.match(lab):
            return f"invalid DNS name {host!r}"
    return None


def host_item(doc: Doc, v: Any, p: str) -> Optional[str]:
    if not isinstance(v, str):
        doc.err(p, f"must be a host name string, not {type_name(v)}")
        return None
    h = normalize_host(v.strip())
    why = host_error(h)
    if why:
        doc.err(p, why)
        return None
    return h


_DUR_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DUR_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> Optional[float]:
    """A Go/Kubernetes duration (`5s`, `500ms`, `1m30s`, `1.5h`) in seconds, or None if malformed."""
    if not text:
        return None
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DUR_PART.match(text, pos)
        if not m:
            return None
        total += float(m.group(1)) * _DUR_UNIT[m.group(2)]
        pos = m.end()
    return total


def duration_item(doc: Doc, v: Any, p: str) -> Optional[float]:
    """A positive duration: a string like `5s`/`500ms`, or an int meaning seconds."""
    if type(v) is int:
        if v <= 0:
            doc.err(p, "must be > 0")
            return None
        return float(v)
    if not isinstance(v, str):
        doc.err(p, f"must be a duration like 5s or 500ms (or an integer of seconds), not {type_name(v)}")
        return None
    secs = parse_duration(v)
    if secs is None:
        doc.err(p, f"invalid duration {v!r} (use forms like 5s, 500ms, 1m30s)")
        return None
    if secs <= 0:
        doc.err(p, "must be > 0")
        return None
    return secs


def regex_item(doc: Doc, v: Any, p: str) -> Optional[str]:
    if not isinstance(v, str):
        doc.err(p, f"must be a regular expression string, not {type_name(v)}")
        return None
    # the data plane's own engine (RE2, with its caps) decides what a valid pattern is
    from fastproxy._core import regex_error
    why = regex_error(v)
    if why is not None:
        doc.err(p, f"invalid regular expression {v[:200]!r} (RE2: linear time, no backreferences or "
                   f"lookaround): {why}")
        return None
    return v


# ---------------------------------------------------------------------------------------------
# HTTPRouteGroup


@dataclass(frozen=True)
class HTTPMatch:
    """One named match of an HTTPRouteGroup. Empty `path_regex` / `methods` mean any."""

    name: str
    path_regex: str = ""
    methods: Tuple[str, ...] = ()
    headers: Tuple[Tuple[str, str], ...] = ()   # (lower-cased name, regex), sorted


@dataclass
class HTTPRouteGroup:
    name: str
    namespace: str
    file: str
    matches: List[HTTPMatch] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"HTTPRouteGroup {self.namespace}/{self.name}"

    def to_dict(self) -> Dict[str, Any]:
        return {"apiVersion": HRG_API, "kind": "HTTPRouteGroup",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"matches": [
                    {"name": m.name, "pathRegex": m.path_regex, "methods": list(m.methods),
                     "headers": dict(m.headers)} for m in self.matches]}}


def parse_http_route_group(doc: Doc, obj: Dict[str, Any], name: str, namespace: str) -> Optional[HTTPRouteGroup]:
    n = len(doc.errors)
    spec = mapping(doc, obj.get("spec", MISSING), "spec", required=True)
    if spec is None:
        return None
    check_keys(doc, spec, "spec", ("matches",))

    def one(d: Doc, v: Any, p: str) -> Optional[HTTPMatch]:
        m = mapping(d, v, p, required=True)
        if m is None:
            return None
        check_keys(d, m, p, ("name", "pathRegex", "methods", "headers"))
        mname = string(d, m, "name", p, None, nonempty=True)
        path = m.get("pathRegex")
        path = regex_item(d, path, join(p, "pathRegex")) if path not in (None, MISSING) else ""

        def method(d2: Doc, x: Any, p2: str) -> Optional[str]:
            if x != "*" and x not in HTTP_METHODS:
                d2.err(p2, f"must be one of {', '.join(HTTP_METHODS)} or *; got {x!r}")
                return None
            return x
        methods = list_of(d, m, "methods", p, method)
        headers_raw = mapping(d, m.get("headers", MISSING), join(p, "headers"))
        headers: List[Tuple[str, str]] = []
        for hk, hv in (headers_raw or {}).items():
            hp = join(join(p, "headers"), str(hk))
            if not isinstance(hk, str) or not hk:
                d.err(hp, "header name must be a non-empty string")
                continue
            rx = regex_item(d, hv, hp)
            if rx is not None:
                headers.append((hk.lower(), rx))
        if mname is None or path is None:
            return None
        any_method = "*" in methods
        return HTTPMatch(name=mname, path_regex=path,
                         methods=() if any_method else tuple(dedupe(methods)),
                         headers=tuple(sorted(headers)))

    matches = list_of(doc, spec, "matches", "spec", one, required=True)
    seen: Dict[str, int] = {}
    for i, m in enumerate(matches):
        if m.name in seen:
            doc.err(f"spec.matches[{i}].name", f"duplicate match name {m.name!r}")
        seen[m.name] = i
    if len(doc.errors) > n:
        return None
    return HTTPRouteGroup(name=name, namespace=namespace, file=doc.file, matches=matches)


# ---------------------------------------------------------------------------------------------
# UpstreamTrafficSetting


@dataclass
class UpstreamTrafficSetting:
    """Only `max_connections` and `connect_timeout` (seconds) are enforced; `http`, `rate_limit`
    and `http_routes` are kept for the dump."""

    name: str
    namespace: str
    file: str
    host: str
    max_connections: Optional[int] = None
    connect_timeout: Optional[float] = None
    http: Dict[str, Any] = field(default_factory=dict)
    rate_limit: Dict[str, Any] = field(default_factory=dict)
    http_routes: List[Any] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return f"UpstreamTrafficSetting {self.namespace}/{self.name}"

    def to_dict(self) -> Dict[str, Any]:
        tcp: Dict[str, Any] = {}
        if self.max_connections is not None:
            tcp["maxConnections"] = self.max_connections
        if self.connect_timeout is not None:
            tcp["connectTimeout"] = f"{self.connect_timeout:g}s"
        return {"apiVersion": UTS_API, "kind": "UpstreamTrafficSetting",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"host": self.host,
                         "connectionSettings": {"tcp": tcp, "http": self.http},
                         "rateLimit": self.rate_limit, "httpRoutes": self.http_routes}}


_UTS_HTTP_INTS = ("maxRequests", "maxRequestsPerConnection", "maxPendingRequests", "maxRetries")


def parse_upstream_traffic_setting(doc: Doc, obj: Dict[str, Any], name: str,
                                   namespace: str) -> Optional[UpstreamTrafficSetting]:
    n = len(doc.errors)
    spec = mapping(doc, obj.get("spec", MISSING), "spec", required=True)
    if spec is None:
        return None
    check_keys(doc, spec, "spec", ("host", "connectionSettings", "rateLimit", "httpRoutes"))
    host = string(doc, spec, "host", "spec", None, nonempty=True)
    cs = mapping(doc, spec.get("connectionSettings", MISSING), "spec.connectionSettings") or {}
    check_keys(doc, cs, "spec.connectionSettings", ("tcp", "http"))
    tcp = mapping(doc, cs.get("tcp", MISSING), "spec.connectionSettings.tcp") or {}
    tp = "spec.connectionSettings.tcp"
    check_keys(doc, tcp, tp, ("maxConnections", "connectTimeout"))
    maxc = None
    if tcp.get("maxConnections") is not None:
        maxc = int_value(doc, tcp["maxConnections"], join(tp, "maxConnections"), lo=1, hi=UINT32_MAX)
    ctimeout = None
    if tcp.get("connectTimeout") is not None:
        ctimeout = duration_item(doc, tcp["connectTimeout"], join(tp, "connectTimeout"))
    http = mapping(doc, cs.get("http", MISSING), "spec.connectionSettings.http") or {}
    hp = "spec.connectionSettings.http"
    check_keys(doc, http, hp, _UTS_HTTP_INTS + ("circuitBreaking",))
    for k in _UTS_HTTP_INTS:
        if http.get(k) is not None:
            int_value(doc, http[k], join(hp, k), lo=0, hi=UINT32_MAX)
    mapping(doc, http.get("circuitBreaking", MISSING), join(hp, "circuitBreaking"))
    rate = mapping(doc, spec.get("rateLimit", MISSING), "spec.rateLimit") or {}
    routes = spec.get("httpRoutes")
    if routes is not None and not isinstance(routes, list):
        doc.err("spec.httpRoutes", f"must be a list, not {type_name(routes)}")
    if len(doc.errors) > n or host is None:
        return None
    return UpstreamTrafficSetting(name=name, namespace=namespace, file=doc.file, host=host,
                                  max_connections=maxc, connect_timeout=ctimeout, http=dict(http),
                                  rate_limit=dict(rate), http_routes=list(routes or []))


# ---------------------------------------------------------------------------------------------
# Egress


@dataclass(frozen=True)
class EgressSource:
    kind: str
    name: str
    namespace: str


@dataclass(frozen=True)
class EgressPort:
    number: int
    protocol: str  # lower-cased, one of PROTOCOLS


@dataclass(frozen=True)
class TypedRef:
    api_group: str
    kind: str
    name: str


@dataclass
class Egress:
    name: str
    namespace: str
    file: str
    sources: List[EgressSource]
    hosts: List[str]
    ip_addresses: List[str]
    ports: List[EgressPort]
    matches: List[TypedRef] = field(default_factory=list)
    #: resolved by the loader from `matches`
    route_groups: List[HTTPRouteGroup] = field(default_factory=list)
    upstream_traffic_setting: Optional[UpstreamTrafficSetting] = None
    #: annotation UPSTREAM_ANNOTATION = "host": http/https traffic it allows dials the policy's
    #: host name (resolved by the sidecar) instead of the original destination
    connect_to_host: bool = False

    @property
    def ref(self) -> str:
        return f"Egress {self.namespace}/{self.name}"

    def applies_to(self, service_account: Optional[str], namespace: Optional[str]) -> bool:
        return any(s.name == service_account and s.namespace == namespace for s in self.sources)

    def to_dict(self) -> Dict[str, Any]:
        meta: Dict[str, Any] = {"name": self.name, "namespace": self.namespace}
        if self.connect_to_host:
            meta["annotations"] = {UPSTREAM_ANNOTATION: "host"}
        return {"apiVersion": EGRESS_API, "kind": "Egress", "metadata": meta,
                "spec": {
                    "sources": [{"kind": s.kind, "name": s.name, "namespace": s.namespace}
                                for s in self.sources],
                    "hosts": list(self.hosts), "ipAddresses": list(self.ip_addresses),
                    "ports": [{"number": p.number, "protocol": p.protocol} for p in self.ports],
                    "matches": [{"apiGroup": m.api_group, "kind": m.kind, "name": m.name}
                                for m in self.matches]}}


#: Egress annotation choosing where traffic an http/https policy allows is sent: "host" (the
#: policy's host name, resolved by the sidecar, so a forged Host or SNI reaches nothing new) or
#: "original-destination" (the default, as FSM does for https and tcp).
UPSTREAM_ANNOTATION = "fastproxy.flomesh.io/upstream"
UPSTREAM_CHOICES = ("original-destination", "host")

_MATCH_KINDS = {("specs.smi-spec.io/v1alpha4", "HTTPRouteGroup"),
                ("policy.flomesh.io/v1alpha1", "UpstreamTrafficSetting")}


def parse_egress(doc: Doc, obj: Dict[str, Any], name: str, namespace: str) -> Optional[Egress]:
    n = len(doc.errors)
    spec = mapping(doc, obj.get("spec", MISSING), "spec", required=True)
    if spec is None:
        return None
    check_keys(doc, spec, "spec", ("sources", "hosts", "ipAddresses", "ports", "matches"))

    def source(d: Doc, v: Any, p: str) -> Optional[EgressSource]:
        m = mapping(d, v, p, required=True)
        if m is None:
            return None
        check_keys(d, m, p, ("kind", "name", "namespace", "mtls"))
        if m.get("mtls") is not None:
            d.err(join(p, "mtls"), "TLS origination (mtls) is not supported by fastproxy")
        kind = string(d, m, "kind", p, None, choices=("ServiceAccount",))
        sname = string(d, m, "name", p, None, nonempty=True)
        sns = string(d, m, "namespace", p, None, nonempty=True)
        if kind is None or sname is None or sns is None:
            return None
        return EgressSource(kind, sname, sns)

    def port(d: Doc, v: Any, p: str) -> Optional[EgressPort]:
        m = mapping(d, v, p, required=True)
        if m is None:
            return None
        check_keys(d, m, p, ("number", "protocol"))
        num = m.get("number", MISSING)
        number = None
        if num is MISSING or num is None:
            d.err(join(p, "number"), "is required")
        else:
            number = int_value(d, num, join(p, "number"), lo=1, hi=65535)
        proto = m.get("protocol", MISSING)
        protocol = None
        if proto is MISSING or proto is None:
            d.err(join(p, "protocol"), "is required")
        elif not isinstance(proto, str):
            d.err(join(p, "protocol"), f"must be a string, not {type_name(proto)}")
        elif proto.lower() not in PROTOCOLS:
            d.err(join(p, "protocol"), f"unknown protocol {proto!r} (must be one of {', '.join(PROTOCOLS)})")
        else:
            protocol = proto.lower()
        if number is None or protocol is None:
            return None
        return EgressPort(number, protocol)

    def match(d: Doc, v: Any, p: str) -> Optional[TypedRef]:
        m = mapping(d, v, p, required=True)
        if m is None:
            return None
        check_keys(d, m, p, ("apiGroup", "kind", "name"))
        group = string(d, m, "apiGroup", p, None, nonempty=True)
        kind = string(d, m, "kind", p, None, nonempty=True)
        mname = string(d, m, "name", p, None, nonempty=True)
        if group is None or kind is None or mname is None:
            return None
        if (group, kind) not in _MATCH_KINDS:
            d.err(p, f"must reference an HTTPRouteGroup of specs.smi-spec.io/v1alpha4 or an "
                     f"UpstreamTrafficSetting of policy.flomesh.io/v1alpha1; got {kind} of {group}")
            return None
        return TypedRef(group, kind, mname)

    sources = list_of(doc, spec, "sources", "spec", source, required=True)
    if "sources" in spec and isinstance(spec["sources"], list) and not spec["sources"]:
        doc.err("spec.sources", "must list at least one ServiceAccount")
    hosts = dedupe(list_of(doc, spec, "hosts", "spec", host_item))
    ips = dedupe(list_of(doc, spec, "ipAddresses", "spec", cidr_item))
    ports = dedupe(list_of(doc, spec, "ports", "spec", port, required=True))
    if "ports" in spec and isinstance(spec["ports"], list) and not spec["ports"]:
        doc.err("spec.ports", "must list at least one port")
    matches = list_of(doc, spec, "matches", "spec", match)
    uts = [i for i, m in enumerate(matches) if m.kind == "UpstreamTrafficSetting"]
    if len(uts) > 1:
        doc.err("spec.matches", "at most one UpstreamTrafficSetting may be referenced")
    if not hosts and spec.get("hosts") in (None, MISSING, []):
        for i, p in enumerate(ports):
            if p.protocol in ("http", "https"):
                doc.err("spec.hosts", f"is required for {p.protocol} ports (spec.ports has "
                                      f"{p.number}/{p.protocol})")
                break
    upstream = "original-destination"
    meta = obj.get("metadata")
    notes = meta.get("annotations") if isinstance(meta, dict) else None
    apath = f'metadata.annotations["{UPSTREAM_ANNOTATION}"]'
    if notes is not None and not isinstance(notes, dict):
        doc.err("metadata.annotations", f"must be a mapping, not {type_name(notes)}")
    elif notes and UPSTREAM_ANNOTATION in notes:
        upstream = notes[UPSTREAM_ANNOTATION]
        if upstream not in UPSTREAM_CHOICES:
            doc.err(apath, f"must be one of {', '.join(UPSTREAM_CHOICES)}, not {upstream!r}")
    if len(doc.errors) > n:
        return None
    return Egress(name=name, namespace=namespace, file=doc.file, sources=sources, hosts=hosts,
                  ip_addresses=ips, ports=ports, matches=matches,
                  connect_to_host=upstream == "host")


def resolve_egress(doc: Doc, eg: Egress, route_groups: Dict[Tuple[str, str], HTTPRouteGroup],
                   uts: Dict[Tuple[str, str], UpstreamTrafficSetting]) -> None:
    """Fill `route_groups` / `upstream_traffic_setting` from `matches` (same namespace)."""
    for i, m in enumerate(eg.matches):
        key = (eg.namespace, m.name)
        if m.kind == "HTTPRouteGroup":
            hrg = route_groups.get(key)
            if hrg is None:
                doc.err(f"spec.matches[{i}]", f"HTTPRouteGroup {eg.namespace}/{m.name} not found")
            else:
                eg.route_groups.append(hrg)
        else:
            u = uts.get(key)
            if u is None:
                doc.err(f"spec.matches[{i}]", f"UpstreamTrafficSetting {eg.namespace}/{m.name} not found")
            else:
                eg.upstream_traffic_setting = u
    if eg.route_groups and not any(p.protocol == "http" for p in eg.ports):
        doc.err("spec.matches", "HTTPRouteGroup matches apply to http ports only, and spec.ports has none")


# ---------------------------------------------------------------------------------------------
# Service


@dataclass(frozen=True)
class ServicePort:
    port: int
    protocol: str = "TCP"
    name: str = ""
    app_protocol: str = ""


@dataclass
class Service:
    """A Kubernetes Service: its cluster IPs and TCP ports are in-mesh destinations."""

    name: str
    namespace: str
    file: str
    cluster_ips: List[str]
    ports: List[ServicePort]

    @property
    def ref(self) -> str:
        return f"Service {self.namespace}/{self.name}"

    def to_dict(self) -> Dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Service",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"clusterIPs": list(self.cluster_ips),
                         "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol,
                                    **({"appProtocol": p.app_protocol} if p.app_protocol else {})}
                                   for p in self.ports]}}


def parse_service(doc: Doc, obj: Dict[str, Any], name: str, namespace: str) -> Optional[Service]:
    """Only `spec.clusterIP(s)` and `spec.ports` are read; the rest of a Service's spec (selector,
    type, sessionAffinity, ...) is accepted as is. Headless (`None`) and empty cluster IPs give no
    in-mesh address."""
    import ipaddress

    n = len(doc.errors)
    spec = mapping(doc, obj.get("spec", MISSING), "spec", required=True)
    if spec is None:
        return None
    ips: List[str] = []
    cip = spec.get("clusterIP")
    raw_ips: List[Tuple[str, Any]] = []
    if cip is not None:
        raw_ips.append(("spec.clusterIP", cip))
    cips = spec.get("clusterIPs")
    if cips is not None:
        if not isinstance(cips, list):
            doc.err("spec.clusterIPs", f"must be a list, not {type_name(cips)}")
        else:
            raw_ips.extend((f"spec.clusterIPs[{i}]", v) for i, v in enumerate(cips))
    for p, v in raw_ips:
        if not isinstance(v, str):
            doc.err(p, f"must be an IP address string, not {type_name(v)}")
            continue
        if v in ("", "None"):
            continue
        try:
            ips.append(str(ipaddress.ip_address(v)))
        except ValueError:
            doc.err(p, f"invalid IP address {v!r}")

    def sport(d: Doc, v: Any, p: str) -> Optional[ServicePort]:
        m = mapping(d, v, p, required=True)
        if m is None:
            return None
        check_keys(d, m, p, ("name", "port", "protocol", "appProtocol", "targetPort", "nodePort"))
        pv = m.get("port", MISSING)
        if pv is MISSING or pv is None:
            d.err(join(p, "port"), "is required")
            return None
        num = int_value(d, pv, join(p, "port"), lo=1, hi=65535)
        proto = string(d, m, "protocol", p, "TCP", choices=("TCP", "UDP", "SCTP"))
        pname = string(d, m, "name", p, "")
        app = string(d, m, "appProtocol", p, "")
        if num is None or proto is None:
            return None
        return ServicePort(num, proto, pname or "", app or "")

    ports = list_of(doc, spec, "ports", "spec", sport)
    if len(doc.errors) > n:
        return None
    return Service(name=name, namespace=namespace, file=doc.file, cluster_ips=dedupe(ips), ports=ports)
