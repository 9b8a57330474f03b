"""The C decision table (fastproxy._core.Table, built by fastproxy.tables, asked through
fastproxy.explain as `fastproxy explain` asks it) against an independent oracle (tests/oracle.py,
plain Python with google-re2 for regex semantics): on generated policies, whose routes use every
construct of the accepted RE2 dialect, and generated queries, both must give the same action, and
for allow/mesh the same deciding object, upstream and limits."""
from __future__ import annotations

import ipaddress
from typing import Optional, Tuple

import pytest
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st

from fastproxy import _core
from fastproxy.explain import decide_compiled
from fastproxy.policy import (CompiledPolicy, HostRule, HttpRequest, MeshRange, PortPolicy, Route,
                              TcpRule)
from fastproxy.tables import compile_table
from oracle import decide

PORTS = [80, 443, 8080]
V4 = [f"192.0.2.{i}" for i in (1, 2, 10, 20, 130, 200)]
V6 = [f"2001:db8::{i:x}" for i in (1, 2, 0x10, 0x81)]
HOSTS = ["a.test", "b.test", "*.w.test", "x.w.test", "*.test"]
NAMES = ["a.test", "A.Test.", "b.test", "x.w.test", "y.w.test", "z.y.w.test", "w.test", "c.test", ""]
# every construct of the accepted dialect (RE2): literals, ., anchors (^ $ \A \z), classes
# ([...] [^...] [\d] [[:alpha:]] \d \w \s \D \pL), escapes (\x61 \. \\d), groups ((...) (?:...)
# (?P<n>...)), flags ((?i) (?s) (?m) (?U)), alternation, repetition (* + ? {n} {n,} {n,m} and lazy
# forms), word boundaries (\b \B)
PATHS = ["/get", "^/status", "/a.*b", ".*", "^/$", "[\\d]", "/id/[\\d]+$", "[[:alpha:]]{3}",
         "^/[[:digit:]]", "\\x61", "\\A/get", "get\\z", "\\\\d", "(?i)^/GET", "(?:a|b)b",
         "(?P<n>st)atus", "^/a{2,3}", "^/x{1,}", "/(get|ab)$", "\\bget\\b", "\\Bet", "[^/]+$",
         "\\w+\\?q=\\d", "\\s", "\\D\\d{3}$", "\\pL{3}", "(?s)a.b", "(?U)a+?", "\\.", "^/id/\\]"]
REQ_PATHS = ["/", "/get", "/GET", "/status/200", "/x/get?q=1", "/ab", "/a/zzb", "/id/123",
             "/id/]", "/aa", "/aaab", "/d", "/\\d", "/a.b", "/xx", "/123"]
METHODS = ["GET", "POST", "DELETE", "CONNECT", "PATCH"]


def cidr_st() -> st.SearchStrategy[str]:
    v4 = st.tuples(st.sampled_from(V4), st.integers(20, 32)).map(
        lambda t: str(ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False)))
    v6 = st.tuples(st.sampled_from(V6), st.integers(112, 128)).map(
        lambda t: str(ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False)))
    return st.one_of(v4, v6)


sources = st.sampled_from(["Egress ns/e1", "Egress ns/e2", "Egress ns/e3"])
routes_st = st.lists(st.builds(
    Route, source=st.sampled_from(["HTTPRouteGroup ns/g match m"]), path=st.sampled_from(PATHS),
    methods=st.lists(st.sampled_from(METHODS), max_size=2, unique=True).map(tuple),
    headers=st.lists(st.tuples(st.just("x-env"), st.sampled_from(["^prod$", "dev", "(?i)^PROD",
                                                                   "[[:alpha:]]+x$"])),
                     max_size=1).map(tuple)), max_size=3).map(tuple)
limits = st.tuples(st.sampled_from([None, 1.5, 3.0]), st.sampled_from([None, 5, 100]))


@st.composite
def port_policy(draw, port: int) -> PortPolicy:
    mesh = tuple(MeshRange(c, "Service ns/s") for c in draw(st.lists(cidr_st(), max_size=2)))
    tcp = tuple(TcpRule(draw(st.sampled_from(["tcp", "tcp-server-first"])), draw(sources),
                        tuple(draw(st.lists(cidr_st(), max_size=2))), *draw(limits))
                for _ in range(draw(st.integers(0, 2))))
    def host_rules(proto: str) -> Tuple[HostRule, ...]:
        out = []
        for _ in range(draw(st.integers(0, 3))):
            ct, mc = draw(limits)
            out.append(HostRule(host=draw(st.sampled_from(HOSTS)), protocol=proto, source=draw(sources),
                                cidrs=tuple(draw(st.lists(cidr_st(), max_size=1))),
                                connect_to_host=draw(st.booleans()),
                                connect_timeout=ct, max_connections=mc,
                                routes=draw(st.one_of(st.none(), routes_st)) if proto == "http" else None))
        return tuple(out)
    return PortPolicy(port=port, mesh=mesh, tcp=tcp, https=host_rules("https"), http=host_rules("http"))


@st.composite
def policies(draw) -> CompiledPolicy:
    ports = draw(st.lists(st.sampled_from(PORTS), unique=True, max_size=3))
    return CompiledPolicy(service_account="sa", namespace="ns", mesh_ref="MeshConfig m/m",
                          enable_egress=draw(st.booleans()), enable_egress_policy=True,
                          sidecar_timeout=60, fsm_port_narrowing=draw(st.booleans()),
                          ports=tuple(sorted((draw(port_policy(p)) for p in ports),
                                             key=lambda p: p.port)))


@st.composite
def queries(draw):
    ip = draw(st.sampled_from(V4 + V6))
    port = draw(st.sampled_from(PORTS + [22]))
    kind = draw(st.sampled_from(["none", "sni", "http"]))
    if kind == "sni":
        return ip, port, draw(st.sampled_from(NAMES)), None
    if kind == "http":
        host = draw(st.sampled_from([n for n in NAMES if n]))
        if draw(st.booleans()):
            host += ":" + str(draw(st.sampled_from([port, 8081])))
        req = HttpRequest(host=host, path=draw(st.sampled_from(REQ_PATHS)),
                          method=draw(st.sampled_from(METHODS)),
                          headers=tuple(draw(st.lists(st.tuples(st.just("X-Env"),
                                                                st.sampled_from(["prod", "dev", "prodx"])),
                                                      max_size=2))))
        return ip, port, None, req
    return ip, port, None, None


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policies(), st.lists(queries(), min_size=1, max_size=8))
def test_c_table_agrees_with_reference(policy: CompiledPolicy, qs) -> None:
    ct = compile_table(policy, resolver=lambda host, port: ["198.51.100.99"])
    for ip, port, sni, req in qs:
        if req is not None and req.method == "CONNECT":
            continue  # a CONNECT head names its own authority (the relay's tunnel rules)
        ref = decide(policy, ip, port, sni=sni, http=req)
        got = decide_compiled(ct, ip, port, sni=sni, http=req)
        where = (ip, port, sni, req, ref, got)
        assert got.action == ref.action, where
        if got.action in ("allow", "mesh"):
            assert (got.object, got.upstream) == (ref.object, ref.upstream), where
            assert (got.connect_timeout, got.max_connections) == \
                (ref.connect_timeout, ref.max_connections), where


def test_examples_by_hand() -> None:
    pol = CompiledPolicy(
        service_account="sa", namespace="ns", mesh_ref="MeshConfig m/m", enable_egress=False,
        enable_egress_policy=True, sidecar_timeout=60,
        ports=(PortPolicy(port=80, http=(HostRule("httpbin.test", "http", "Egress ns/h",
                                                  routes=(Route("g", path="/get"),)),)),
               PortPolicy(port=443, https=(HostRule("*.example.test", "https", "Egress ns/s"),),
                          tcp=(TcpRule("tcp", "Egress ns/t", ("192.0.2.10/32",)),))))
    ct = compile_table(pol)
    t, sources = ct.table, ct.sources
    assert t.decide("192.0.2.10", 443) == ("allow", sources.index("Egress ns/t"), "")
    assert ct.rule_object(t.decide("192.0.2.10", 443)[1]) == "Egress ns/t"
    assert t.decide_sni("192.0.2.20", 443, "evil.test")[2] == "sni-not-allowed"
    assert t.decide_sni("192.0.2.20", 443, "")[2] == "no-sni"
    assert t.decide_http("192.0.2.20", 80, b"GET /x HTTP/1.1\r\nHost: httpbin.test\r\n\r\n")[2] == \
        "no-route-matched"
    assert t.decide_http("192.0.2.20", 80, b"GET /x HTTP/1.1\r\nHost: evil.test\r\n\r\n")[2] == \
        "host-not-allowed"
    assert t.decide("192.0.2.20", 22)[2] == "no-policy"
    assert t.decide("192.0.2.20", 443)[0] == "need-sni"
    assert t.decide_sni("192.0.2.20", 443, "a.example.test")[0] == "allow"
    assert t.decide_sni("192.0.2.20", 443, "a.b.example.test")[0] == "deny"
    assert t.decide_http("192.0.2.20", 80, b"GET /get HTTP/1.1\r\nHost: httpbin.test\r\n\r\n")[0] == "allow"
    assert t.decide_http("192.0.2.20", 80, b"GET /status/200 HTTP/1.1\r\nHost: httpbin.test\r\n\r\n")[0] == "deny"
    assert t.decide("192.0.2.20", 22)[0] == "deny"


def test_unsupported_regex_is_a_config_error() -> None:
    from fastproxy.errors import ConfigError
    pol = CompiledPolicy(service_account="sa", namespace="ns", mesh_ref="m", enable_egress=False,
                         enable_egress_policy=True, sidecar_timeout=60,
                         ports=(PortPolicy(port=80, http=(HostRule("a.test", "http", "Egress ns/h",
                                                                   routes=(Route("HTTPRouteGroup ns/g match bad", path="(a*)+\\1c", file="rg.yaml"),)),)),))
    with pytest.raises(ConfigError, match="rg.yaml: HTTPRouteGroup ns/g match bad: pathRegex: .*RE2"):
        compile_table(pol)


def test_route_upstream_without_port_dials_the_rule_port() -> None:
    """A Pipy route endpoint without a port under connect-to-host: no crash, the rule's port."""
    rule = HostRule("a.test", "http", "PipyConfig p", connect_to_host=True,
                    routes=(Route("r0", upstream="backend.test"),
                            Route("r1", path="^/v6", upstream="[2001:db8::1]")))
    pol = CompiledPolicy(service_account="sa", namespace="ns", mesh_ref="m", enable_egress=False,
                         enable_egress_policy=True, sidecar_timeout=60,
                         ports=(PortPolicy(port=80, http=(rule,)),))
    asked = []
    compile_table(pol, resolver=lambda h, p: asked.append((h, p)) or [])
    assert sorted(asked) == [("2001:db8::1", 80), ("backend.test", 80)]


def test_resolution_change_is_a_change_of_address_set() -> None:
    from fastproxy.tables import resolution_changed
    seen = {("a.test", 80): ["192.0.2.1", "192.0.2.2"]}
    assert not resolution_changed(seen, lambda h, p: ["192.0.2.2", "192.0.2.1"])
    assert resolution_changed(seen, lambda h, p: ["192.0.2.2"])
    assert resolution_changed(seen, lambda h, p: ["192.0.2.1", "192.0.2.2", "192.0.2.3"])


def test_limits_are_per_setting_and_survive_a_new_table() -> None:
    """Two rules of one setting share one counter; a second table with the same Limits sees the
    connections counted under the first (what a reload does)."""
    def pol(mc: int) -> CompiledPolicy:
        return CompiledPolicy(
            service_account="sa", namespace="ns", mesh_ref="m", enable_egress=False,
            enable_egress_policy=True, sidecar_timeout=60,
            ports=(PortPolicy(port=5432, tcp=(TcpRule("tcp", "Egress ns/db", ("192.0.2.0/24",),
                                                      max_connections=mc,
                                                      limit_key="UpstreamTrafficSetting ns/u"),)),
                   PortPolicy(port=5433, tcp=(TcpRule("tcp", "Egress ns/db", (),
                                                      max_connections=mc,
                                                      limit_key="UpstreamTrafficSetting ns/u"),))))
    limits = _core.Limits()
    a = compile_table(pol(3), limits=limits)
    b = compile_table(pol(3), limits=limits)
    assert limits.keys() == ["UpstreamTrafficSetting ns/u"]
    r1, r2 = a.table.decide("192.0.2.1", 5432)[1], a.table.decide("198.51.100.1", 5433)[1]
    assert r1 != r2 and a.rule_info(r1).limit_key == "UpstreamTrafficSetting ns/u"
    assert a.rule_object(r1) == "Egress ns/db" and a.rule_object(-1) == ""
    assert a.table._admit(r1) and a.table._admit(r2) and a.table._admit(r1)  # 3 of 3, two rules
    assert limits.active("UpstreamTrafficSetting ns/u") == 3
    nb = b.table.decide("192.0.2.1", 5432)[1]
    assert not b.table._admit(nb)           # the new table sees the 3 open under the old one
    a.table._release(r1)
    assert b.table._admit(nb)
    assert limits.active("UpstreamTrafficSetting ns/u") == 3
