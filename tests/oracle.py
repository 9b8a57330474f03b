"""An independent reference of the decision (EGRESS.md section 3) in plain Python, for tests only:
the C table (src_c/fp_table.c) is the one decision fastproxy has; this oracle is what
tests/test_tables_agree.py and tests/test_decision.py hold it against. Regex semantics come from
the google-re2 binding (RE2 itself, a separate build), so the comparison also checks that the
data plane's regex shim searches as RE2 does.
"""
from __future__ import annotations

import ipaddress
from functools import lru_cache
from typing import Iterable, List, Optional, Tuple

import re2  # google-re2

from fastproxy.config.objects import normalize_host
from fastproxy.policy import CompiledPolicy, Decision, HostRule, HttpRequest, Route, TcpRule


@lru_cache(maxsize=4096)
def _net(cidr: str) -> "ipaddress.IPv4Network | ipaddress.IPv6Network":
    return ipaddress.ip_network(cidr)


@lru_cache(maxsize=4096)
def _rx(pattern: str) -> "re2._Regexp":
    opts = re2.Options()
    opts.never_capture = True
    return re2.compile(pattern, opts)


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
