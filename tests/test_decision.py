"""The decision as explain reports it (fastproxy.explain: the compile of fastproxy.tables and the
C table's decide functions): table-driven cases for each rule of EGRESS.md section 3, and
hypothesis-generated invariants."""
from __future__ import annotations

import argparse
import io
import json
import random
from pathlib import Path
from typing import List, Optional

import pytest
from hypothesis import given, settings, strategies as st

from fastproxy.config import load
from fastproxy.errors import ConfigErrors
from fastproxy.config.loader import Config
from fastproxy.config.meshconfig import MeshConfig
from fastproxy.config.objects import (
    Egress, EgressPort, EgressSource, HTTPMatch, HTTPRouteGroup, Service, ServicePort,
    UpstreamTrafficSetting,
)
from fastproxy.explain import explain, explain_policy, parse_dest, register
from fastproxy.policy import CompiledPolicy, Decision, HttpRequest, compile_policy
from oracle import host_matches, split_host_header


def decide(p: CompiledPolicy, ip: str, port: int, sni: Optional[str] = None,
           http: Optional[HttpRequest] = None) -> Decision:
    """The C table's answer, through explain (names are not resolved)."""
    return explain_policy(p, ip, port, sni=sni, http=http, resolver=lambda h, n: [])

REPO = Path(__file__).resolve().parent.parent
SA, NS = "curl", "curl"


def eg(name: str, ports, hosts=(), ips=(), routes: Optional[List[HTTPMatch]] = None, uts=None,
       sa: str = SA, ns: str = NS) -> Egress:
    e = Egress(name=name, namespace=NS, file="t.yaml", sources=[EgressSource("ServiceAccount", sa, ns)],
               hosts=list(hosts), ip_addresses=list(ips),
               ports=[EgressPort(n, p) for n, p in ports])
    if routes is not None:
        e.route_groups = [HTTPRouteGroup("rg", NS, "t.yaml", list(routes))]
    e.upstream_traffic_setting = uts
    return e


def cfg(egresses=(), services=(), egress=False, policy=True, sa=SA, ns=NS) -> Config:
    return Config(mesh=MeshConfig(enable_egress=egress, enable_egress_policy=policy),
                  egresses=list(egresses), services=list(services), service_account=sa, namespace=ns)


SVC = Service("web", "app", "t.yaml", ["10.96.0.10", "fd00::10"], [ServicePort(80), ServicePort(53, "UDP")])
HTTPBIN80 = eg("httpbin-80", [(80, "http")], hosts=["httpbin.org"])
HTTPBIN443 = eg("httpbin-443", [(443, "https")], hosts=["httpbin.org", "*.example.com"])
TCP443 = eg("tcp-443", [(443, "tcp")])
TCPNET = eg("db", [(3306, "tcp-server-first")], ips=["198.51.100.0/24", "198.51.100.128/25"])
ROUTED = eg("routed", [(8080, "http")], hosts=["api.example.org"],
            routes=[HTTPMatch("get", "/get", ("GET",)), HTTPMatch("dbg", "/debug", (), (("x-debug", "^1$"),))])
HTTPS_IP = eg("https-ip", [(8443, "https")], hosts=["a.example.org"], ips=["192.0.2.0/28"])
TCP_IP_8443 = eg("tcp-ip", [(8443, "tcp")], ips=["192.0.2.64/26"])
H = HttpRequest.make

CASES = [
    # (id, config, ip, port, sni, http, action, object, rule fragment)
    ("mesh-beats-deny", cfg([], [SVC]), "10.96.0.10", 80, None, None, "mesh", "Service app/web", "10.96.0.10/32"),
    ("mesh-v6", cfg([], [SVC]), "fd00::10", 80, None, None, "mesh", "Service app/web", "fd00::10/128"),
    ("mesh-other-port", cfg([], [SVC]), "10.96.0.10", 81, None, None, "deny", "MeshConfig", "enableEgress is false"),
    ("mesh-udp-port-not-tcp", cfg([], [SVC]), "10.96.0.10", 53, None, None, "deny", "MeshConfig", ""),
    ("mesh-beats-policy", cfg([eg("all80", [(80, "tcp")])], [SVC]), "10.96.0.10", 80, None, None, "mesh", "Service", ""),
    ("passthrough", cfg(egress=True), "192.0.2.1", 25, None, None, "passthrough", "MeshConfig", "enableEgress"),
    ("deny", cfg(), "192.0.2.1", 25, None, None, "deny", "MeshConfig", "enableEgress is false"),
    ("tcp-whole-port", cfg([TCP443]), "203.0.113.9", 443, None, None, "allow", "Egress curl/tcp-443", "any IP"),
    ("tcp-cidr-in", cfg([TCPNET]), "198.51.100.200", 3306, None, None, "allow", "Egress curl/db", "198.51.100.128/25"),
    ("tcp-cidr-out", cfg([TCPNET]), "198.51.101.1", 3306, None, None, "deny", "MeshConfig", ""),
    ("tcp-other-port", cfg([TCPNET]), "198.51.100.1", 3307, None, None, "deny", "MeshConfig", ""),
    ("https-needs-sni", cfg([HTTPBIN443]), "203.0.113.9", 443, None, None, "need-sni", "", "https"),
    ("https-sni-ok", cfg([HTTPBIN443]), "203.0.113.9", 443, "HTTPBin.ORG.", None, "allow", "Egress curl/httpbin-443", "host httpbin.org"),
    ("https-sni-wildcard", cfg([HTTPBIN443]), "203.0.113.9", 443, "api.example.com", None, "allow", "Egress", "*.example.com"),
    ("https-wildcard-two-labels", cfg([HTTPBIN443]), "203.0.113.9", 443, "a.b.example.com", None, "deny", "MeshConfig", ""),
    ("https-wildcard-apex", cfg([HTTPBIN443]), "203.0.113.9", 443, "example.com", None, "deny", "MeshConfig", ""),
    ("https-sni-wrong", cfg([HTTPBIN443]), "203.0.113.9", 443, "evil.org", None, "deny", "MeshConfig", ""),
    ("https-no-sni", cfg([HTTPBIN443]), "203.0.113.9", 443, "", None, "deny", "MeshConfig", ""),
    ("https-wrong-sni-passthrough", cfg([HTTPBIN443], egress=True), "203.0.113.9", 443, "evil.org", None,
     "passthrough", "MeshConfig", ""),
    ("tcp-and-https-same-port", cfg([HTTPBIN443, TCP443]), "203.0.113.9", 443, None, None, "allow", "Egress curl/tcp-443", ""),
    ("tcp-and-https-order-free", cfg([TCP443, HTTPBIN443]), "203.0.113.9", 443, "evil.org", None, "allow", "Egress curl/tcp-443", ""),
    ("http-needs-head", cfg([HTTPBIN80]), "203.0.113.9", 80, None, None, "need-http-head", "", "http"),
    ("http-host", cfg([HTTPBIN80]), "203.0.113.9", 80, None, H("httpbin.org"), "allow", "Egress curl/httpbin-80", "any request"),
    ("http-host-port", cfg([HTTPBIN80]), "203.0.113.9", 80, None, H("HTTPBIN.org:80"), "allow", "Egress", ""),
    ("http-host-wrong-port", cfg([HTTPBIN80]), "203.0.113.9", 80, None, H("httpbin.org:8080"), "deny", "MeshConfig", ""),
    ("http-wrong-host-403", cfg([HTTPBIN80]), "203.0.113.9", 80, None, H("evil.org"), "deny", "MeshConfig", ""),
    ("http-route-ok", cfg([ROUTED]), "203.0.113.9", 8080, None, H("api.example.org", "/v1/get?x=1"), "allow", "Egress curl/routed", "match get"),
    ("http-route-method", cfg([ROUTED]), "203.0.113.9", 8080, None, H("api.example.org", "/get", "POST"), "deny", "MeshConfig", "none of its routes"),
    ("http-route-header", cfg([ROUTED]), "203.0.113.9", 8080, None, H("api.example.org", "/debug", "PUT", {"X-Debug": "1"}), "allow", "Egress", "match dbg"),
    ("http-route-header-missing", cfg([ROUTED]), "203.0.113.9", 8080, None, H("api.example.org", "/debug"), "deny", "MeshConfig", ""),
    ("http-route-header-wrong", cfg([ROUTED]), "203.0.113.9", 8080, None, H("api.example.org", "/debug", headers={"x-debug": "2"}), "deny", "MeshConfig", ""),
    ("https-ip-in", cfg([HTTPS_IP]), "192.0.2.5", 8443, "a.example.org", None, "allow", "Egress curl/https-ip", "192.0.2.0/28"),
    ("https-ip-out", cfg([HTTPS_IP]), "192.0.2.50", 8443, None, None, "deny", "MeshConfig", ""),
    ("tcp-ip-beats-host", cfg([HTTPS_IP, TCP_IP_8443]), "192.0.2.70", 8443, None, None, "allow", "Egress curl/tcp-ip", "192.0.2.64/26"),
    ("host-rule-where-tcp-ip-misses", cfg([HTTPS_IP, TCP_IP_8443]), "192.0.2.5", 8443, None, None, "need-sni", "", ""),
    ("policy-off", cfg([TCP443], policy=False), "203.0.113.9", 443, None, None, "deny", "MeshConfig", "enableEgressPolicy is false"),
    ("other-identity", cfg([TCP443], sa="web"), "203.0.113.9", 443, None, None, "deny", "MeshConfig", ""),
    ("unknown-identity", cfg([TCP443], sa=None, ns=None), "203.0.113.9", 443, None, None, "deny", "MeshConfig", ""),
    ("both-kinds-need-peek", cfg([eg("mix", [(8000, "http"), (8000, "https")], hosts=["x.org"])]),
     "203.0.113.9", 8000, None, None, "need-peek", "", "https/http"),
]


@pytest.mark.parametrize("c,ip,port,sni,http,action,obj,frag", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decision_table(c, ip, port, sni, http, action, obj, frag):
    d = decide(compile_policy(c), ip, port, sni=sni, http=http)
    assert d.action == action, d
    assert d.object.startswith(obj), d
    assert frag in d.rule, d
    if action in ("mesh", "allow", "passthrough"):
        assert d.upstream == (f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}")
    else:
        assert d.upstream == ""
    assert (d.http_status == 403) == (action == "deny" and http is not None)


def test_fsm_port_narrowing_is_opt_in():
    c = cfg([HTTPBIN80], egress=True)
    assert decide(compile_policy(c), "203.0.113.9", 80, http=H("other.org")).action == "passthrough"
    d = decide(compile_policy(c, fsm_port_narrowing=True), "203.0.113.9", 80, http=H("other.org"))
    assert d.action == "deny" and d.http_status == 403 and "narrowing" in d.rule
    # other ports are untouched by narrowing
    assert decide(compile_policy(c, fsm_port_narrowing=True), "203.0.113.9", 81).action == "passthrough"


def test_connect_to_host_and_limits():
    u = UpstreamTrafficSetting("u", NS, "t.yaml", "httpbin.org", max_connections=7, connect_timeout=1.5)
    c = cfg([eg("h", [(80, "http"), (443, "https")], hosts=["httpbin.org", "*.example.com"], uts=u)])
    p = compile_policy(c, connect_to_host=True)
    d = decide(p, "203.0.113.9", 80, http=H("httpbin.org:80"))
    assert (d.upstream, d.connect_timeout, d.max_connections) == ("httpbin.org:80", 1.5, 7)
    # a wildcard names no single host to resolve: the original destination, as the C core does
    assert decide(p, "203.0.113.9", 443, sni="a.example.com").upstream == "203.0.113.9:443"
    assert decide(compile_policy(c), "203.0.113.9", 443, sni="a.example.com").upstream == "203.0.113.9:443"


def test_route_group_without_matches_allows_nothing():
    c = cfg([eg("h", [(80, "http")], hosts=["a.org"], routes=[])])
    assert decide(compile_policy(c), "203.0.113.9", 80, http=H("a.org")).action == "deny"


def test_sample_demo_through_the_loader():
    c = load([REPO / "config" / "examples"], service_account="curl", namespace="curl")
    p = compile_policy(c)
    assert decide(p, "198.51.100.7", 80, http=H("httpbin.org", "/get")).action == "allow"
    assert decide(p, "198.51.100.7", 80, http=H("httpbin.org", "/status/200", "DELETE")).action == "allow"
    d = decide(p, "198.51.100.7", 80, http=H("httpbin.org", "/anything"))
    assert (d.action, d.http_status) == ("deny", 403)
    assert decide(p, "198.51.100.7", 443, sni="httpbin.org").object == "Egress curl/httpbin-443"
    assert decide(p, "10.96.0.20", 14001).action == "mesh"


def test_upstream_annotation_per_policy(tmp_path):
    """`fastproxy.flomesh.io/upstream: host` on one Egress makes only its http/https allows dial
    the policy host; a value other than host / original-destination is an error naming it."""
    base = ("apiVersion: policy.flomesh.io/v1alpha1\nkind: Egress\nmetadata:\n  name: {name}\n"
            "  namespace: curl\n{notes}spec:\n  sources: [{{kind: ServiceAccount, name: curl, "
            "namespace: curl}}]\n  hosts: [{host}]\n  ports: [{{number: 80, protocol: http}}]\n")
    f = tmp_path / "egress.yaml"
    f.write_text(base.format(name="a", host="a.test",
                             notes="  annotations:\n    fastproxy.flomesh.io/upstream: host\n")
                 + "---\n" + base.format(name="b", host="b.test", notes=""))
    p = compile_policy(load([f], service_account="curl", namespace="curl"))
    assert decide(p, "203.0.113.9", 80, http=H("a.test")).upstream == "a.test:80"
    assert decide(p, "203.0.113.9", 80, http=H("b.test")).upstream == "203.0.113.9:80"
    f.write_text(base.format(name="a", host="a.test",
                             notes="  annotations:\n    fastproxy.flomesh.io/upstream: dns\n"))
    with pytest.raises(ConfigErrors) as e:
        load([f], service_account="curl", namespace="curl")
    assert ('egress.yaml: Egress curl/a: metadata.annotations["fastproxy.flomesh.io/upstream"]: '
            "must be one of original-destination, host, not 'dns'") in str(e.value)


def test_pipy_config_decisions(tmp_path):
    from test_config_objects import PIPY  # the same document the loader tests use
    f = tmp_path / "config.json"
    f.write_text(json.dumps(PIPY))
    p = compile_policy(load([f]), connect_to_host=True)
    assert decide(p, "10.96.0.20", 14001).action == "mesh"
    d = decide(p, "203.0.113.9", 80, http=H("httpbin.org", "/get", headers={"X-Env": "prod"}))
    assert (d.action, d.upstream, d.max_connections) == ("allow", "httpbin.org:80", 50)
    assert decide(p, "203.0.113.9", 80, http=H("httpbin.org", "/get")).action == "deny"
    assert decide(p, "203.0.113.9", 443, sni="example.com").upstream == "example.com:443"
    assert decide(p, "198.51.100.9", 3306).action == "allow"
    assert decide(p, "192.0.2.9", 3306).action == "deny"


def test_compiled_policy_is_sorted_and_order_free():
    egs = [HTTPBIN80, HTTPBIN443, TCP443, TCPNET, ROUTED, HTTPS_IP, TCP_IP_8443]
    a = compile_policy(cfg(egs, [SVC]))
    for seed in range(5):
        shuffled = egs[:]
        random.Random(seed).shuffle(shuffled)
        assert compile_policy(cfg(shuffled, [SVC])) == a
    assert [p.port for p in a.ports] == sorted(p.port for p in a.ports)
    json.dumps(a.to_dict())


def test_host_header_parsing():
    assert split_host_header("Example.COM.:8080") == ("example.com", 8080)
    assert split_host_header("example.com") == ("example.com", None)
    assert split_host_header("[fd00::1]:80") == ("fd00::1", 80)
    assert split_host_header("example.com:x")[1] == -1


# --- hypothesis ------------------------------------------------------------------------------

LABELS = st.sampled_from(["a", "b", "api", "www", "x-1"])
NAMES = st.builds(lambda ls, tld: ".".join(ls + [tld]), st.lists(LABELS, min_size=0, max_size=2),
                  st.sampled_from(["example.com", "example.org"]))
PATTERNS = st.one_of(NAMES, NAMES.map(lambda n: "*." + n))
PORTS = st.sampled_from([80, 443, 3306])
CIDRS = st.sampled_from(["192.0.2.0/24", "192.0.2.0/28", "192.0.2.128/25", "198.51.100.0/24"])
IPS = st.builds(lambda net, host: f"{net}.{host}", st.sampled_from(["192.0.2", "198.51.100", "203.0.113"]),
                st.integers(0, 255))


@st.composite
def egresses(draw, i=0):
    ports = draw(st.lists(st.tuples(PORTS, st.sampled_from(["http", "https", "tcp", "tcp-server-first"])),
                          min_size=1, max_size=3, unique=True))
    hosts = draw(st.lists(PATTERNS, min_size=1, max_size=3, unique=True))
    ips = draw(st.lists(CIDRS, max_size=2, unique=True))
    return eg(f"e{draw(st.integers(0, 10**6))}", ports, hosts=hosts, ips=ips)


PEEK = st.one_of(
    st.tuples(st.one_of(NAMES, st.just("")), st.none()),
    st.tuples(st.none(), st.builds(H, NAMES, st.sampled_from(["/", "/get"]))),
)


@settings(max_examples=300, deadline=None)
@given(base=st.lists(egresses(), max_size=3), extra=egresses(), egress_on=st.booleans(), ip=IPS, port=PORTS,
       peek=PEEK)
def test_adding_a_policy_never_denies_what_was_allowed(base, extra, egress_on, ip, port, peek):
    sni, http = peek
    before = decide(compile_policy(cfg(base, egress=egress_on)), ip, port, sni=sni, http=http)
    after = decide(compile_policy(cfg(base + [extra], egress=egress_on)), ip, port, sni=sni, http=http)
    assert not before.action.startswith("need-") and not after.action.startswith("need-")
    if before.action in ("allow", "passthrough", "mesh"):
        assert after.action != "deny", (before, after)
    if before.action == "allow":
        assert after.action == "allow"


@settings(max_examples=200, deadline=None)
@given(egs=st.lists(egresses(), min_size=1, max_size=4), ip=IPS, port=PORTS, peek=PEEK, seed=st.integers(0, 99))
def test_decision_does_not_depend_on_policy_order(egs, ip, port, peek, seed):
    sni, http = peek
    shuffled = egs[:]
    random.Random(seed).shuffle(shuffled)
    a = decide(compile_policy(cfg(egs)), ip, port, sni=sni, http=http)
    b = decide(compile_policy(cfg(shuffled)), ip, port, sni=sni, http=http)
    assert a == b


@settings(max_examples=200, deadline=None)
@given(egs=st.lists(egresses(), max_size=3), ip=IPS, port=PORTS, peek=PEEK)
def test_policy_feature_flag_off_means_no_policy_allows(egs, ip, port, peek):
    sni, http = peek
    d = decide(compile_policy(cfg(egs, policy=False)), ip, port, sni=sni, http=http)
    assert d.action == "deny" and d.object.startswith("MeshConfig")


@settings(max_examples=300, deadline=None)
@given(label=st.text("abcxyz-0", min_size=0, max_size=4), suffix=NAMES, upper=st.booleans(), dot=st.booleans())
def test_wildcard_matches_exactly_one_more_label(label, suffix, upper, dot):
    name = f"{label}.{suffix}" if label else suffix
    sni = (name.upper() if upper else name) + ("." if dot else "")
    c = cfg([eg("w", [(443, "https")], hosts=["*." + suffix])])
    d = decide(compile_policy(c), "203.0.113.1", 443, sni=sni)
    assert (d.action == "allow") == bool(label)
    assert host_matches("*." + suffix, name) == bool(label)
    assert host_matches(suffix, name) == (not label)


# --- explain CLI -----------------------------------------------------------------------------


def run_explain(argv):
    parser = argparse.ArgumentParser(prog="fastproxy")
    register(parser.add_subparsers())
    out, err = io.StringIO(), io.StringIO()
    rc = explain(parser.parse_args(["explain"] + argv), out, err)
    return rc, out.getvalue(), err.getvalue()


def test_explain_text_and_json():
    demo = ["--config", str(REPO / "config" / "examples"), "--service-account", "curl", "--namespace", "curl"]
    rc, out, _ = run_explain(demo + ["198.51.100.7:80", "--host", "httpbin.org", "--path", "/get"])
    assert rc == 0 and "decision:  allow" in out and "by:        Egress curl/httpbin-80" in out
    assert "match get" in out
    rc, out, _ = run_explain(demo + ["--json", "198.51.100.7:443", "--sni", "evil.org"])
    d = json.loads(out)["decision"]
    assert rc == 0 and d["action"] == "deny" and d["object"] == "MeshConfig fsm-system/fsm-mesh-config"
    rc, out, _ = run_explain(["[2001:db8::1]:443"])
    assert rc == 0 and "passthrough" in out and "[2001:db8::1]:443" in out


def test_explain_errors(tmp_path):
    assert run_explain(["nonsense"])[0] == 2
    assert run_explain(["192.0.2.1:0"])[0] == 2
    assert run_explain(["192.0.2.1:80", "--sni", "a", "--host", "b"])[0] == 2
    bad = tmp_path / "m.yaml"
    bad.write_text("apiVersion: config.flomesh.io/v1alpha3\nkind: MeshConfig\nmetadata: {name: m}\n"
                   "spec: {traffic: {enableEgress: maybe}}\n")
    rc, out, err = run_explain(["--config", str(bad), "192.0.2.1:80"])
    assert rc == 1 and "spec.traffic.enableEgress" in err


def test_parse_dest():
    assert parse_dest("192.0.2.1:80") == ("192.0.2.1", 80)
    assert parse_dest("[2001:DB8::1]:443") == ("2001:db8::1", 443)
    for bad in ("192.0.2.1", "host:80", "[::1]443", "1.2.3.4:70000"):
        with pytest.raises(ValueError):
            parse_dest(bad)


@pytest.mark.parametrize("sni", ["httpbin..org", "httpbin.org..", "a b.org", "x" * 254])
def test_explain_reads_the_sni_with_the_data_planes_parser(sni):
    """explain peeks a ClientHello naming the SNI with the relay's own parser: a server name it
    refuses is a deny as bad-request, as the relay resets it."""
    d = decide(compile_policy(cfg([HTTPBIN443])), "203.0.113.9", 443, sni=sni)
    assert (d.action, d.reason) == ("deny", "bad-request"), d
