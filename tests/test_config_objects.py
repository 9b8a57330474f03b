"""Egress, HTTPRouteGroup, UpstreamTrafficSetting, Service and Pipy JSON loading (phase 2)."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from fastproxy.config import load
from fastproxy.config.objects import parse_duration
from fastproxy.errors import ConfigErrors

REPO = Path(__file__).resolve().parent.parent


def egress(name="e1", ns="curl", **spec):
    base = {"sources": [{"kind": "ServiceAccount", "name": "curl", "namespace": "curl"}],
            "ports": [{"number": 80, "protocol": "http"}], "hosts": ["httpbin.org"]}
    base.update(spec)
    return {"apiVersion": "policy.flomesh.io/v1alpha1", "kind": "Egress",
            "metadata": {"name": name, "namespace": ns}, "spec": base}


def hrg(name="routes", ns="curl", matches=None):
    return {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"matches": matches if matches is not None else [{"name": "get", "pathRegex": "/get"}]}}


def uts(name="limits", ns="curl", **tcp):
    return {"apiVersion": "policy.flomesh.io/v1alpha1", "kind": "UpstreamTrafficSetting",
            "metadata": {"name": name, "namespace": ns},
            "spec": {"host": "httpbin.org", "connectionSettings": {"tcp": tcp}}}


def service(name="svc", ns="app", **spec):
    base = {"clusterIP": "10.96.0.10", "ports": [{"port": 8080}]}
    base.update(spec)
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": base}


def write_docs(tmp_path, *docs, name="objs.yaml"):
    f = tmp_path / name
    f.write_text(yaml.safe_dump_all(list(docs)))
    return f


def errors_of(tmp_path, *docs):
    f = write_docs(tmp_path, *docs)
    with pytest.raises(ConfigErrors) as ei:
        load([f])
    return f, ei.value.errors


def test_sample_manifests_load():
    cfg = load([REPO / "config" / "examples"], service_account="curl", namespace="curl")
    assert cfg.mesh.enable_egress is False
    assert sorted(e.name for e in cfg.applicable_egresses()) == ["httpbin-443", "httpbin-80", "mysql-3306"]
    eg = next(e for e in cfg.egresses if e.name == "httpbin-80")
    assert [h.name for h in eg.route_groups] == ["egress-http-route"]
    assert eg.upstream_traffic_setting.connect_timeout == 5.0
    assert eg.upstream_traffic_setting.max_connections == 100
    json.dumps(cfg.to_dict())
    assert load([REPO / "config"]).mesh.enable_egress is True  # root folder: no recursion


def test_egress_normalisation(tmp_path):
    e = egress(hosts=["HTTPBin.org.", "*.Example.COM", "httpbin.org"], ipAddresses=["192.0.2.0/24"],
               ports=[{"number": 80, "protocol": "HTTP"}, {"number": 3306, "protocol": "TCP-Server-First"}])
    cfg = load([write_docs(tmp_path, e)])
    (eg,) = cfg.egresses
    assert eg.hosts == ["httpbin.org", "*.example.com"]
    assert [(p.number, p.protocol) for p in eg.ports] == [(80, "http"), (3306, "tcp-server-first")]
    assert eg.ip_addresses == ["192.0.2.0/24"]


def test_identity_scoping(tmp_path):
    e1 = egress("a", sources=[{"kind": "ServiceAccount", "name": "curl", "namespace": "curl"}])
    e2 = egress("b", sources=[{"kind": "ServiceAccount", "name": "curl", "namespace": "other"},
                              {"kind": "ServiceAccount", "name": "web", "namespace": "curl"}])
    f = write_docs(tmp_path, e1, e2)
    assert [e.name for e in load([f], service_account="curl", namespace="curl").applicable_egresses()] == ["a"]
    assert [e.name for e in load([f], service_account="web", namespace="curl").applicable_egresses()] == ["b"]
    assert load([f], service_account="nobody", namespace="curl").applicable_egresses() == []
    assert load([f]).applicable_egresses() == []  # identity unknown


BAD_EGRESS = [
    ({"sources": [{"kind": "Pod", "name": "x", "namespace": "y"}]}, "spec.sources[0].kind", "must be one of ServiceAccount"),
    ({"sources": [{"kind": "ServiceAccount", "name": "x"}]}, "spec.sources[0].namespace", "is required"),
    ({"sources": [{"kind": "ServiceAccount", "name": "x", "namespace": "y", "mtls": {"issuer": "fsm"}}]},
     "spec.sources[0].mtls", "not supported"),
    ({"sources": []}, "spec.sources", "at least one"),
    ({"ports": [{"number": 0, "protocol": "tcp"}]}, "spec.ports[0].number", "must be 1..65535"),
    ({"ports": [{"number": 70000, "protocol": "tcp"}]}, "spec.ports[0].number", "must be 1..65535"),
    ({"ports": [{"number": "80", "protocol": "tcp"}]}, "spec.ports[0].number", "must be an integer"),
    ({"ports": [{"number": 80, "protocol": "grpc"}]}, "spec.ports[0].protocol", "unknown protocol 'grpc'"),
    ({"ports": [{"number": 80}]}, "spec.ports[0].protocol", "is required"),
    ({"ports": []}, "spec.ports", "at least one"),
    ({"hosts": ["*"]}, "spec.hosts[0]", "bare '*'"),
    ({"hosts": ["foo.*.com"]}, "spec.hosts[0]", "leftmost label"),
    ({"hosts": ["*foo.com"]}, "spec.hosts[0]", "leftmost label"),
    ({"hosts": ["httpbin.org:80"]}, "spec.hosts[0]", "without port"),
    ({"hosts": ["bad_-.com-"]}, "spec.hosts[0]", "invalid DNS name"),
    ({"hosts": [5]}, "spec.hosts[0]", "must be a host name string"),
    ({"hosts": []}, "spec.hosts", "is required for http ports"),
    ({"ipAddresses": ["192.0.2.1/24"]}, "spec.ipAddresses[0]", "host bits"),
    ({"matches": [{"apiGroup": "v1", "kind": "Service", "name": "x"}]}, "spec.matches[0]", "must reference"),
    ({"matches": [{"kind": "HTTPRouteGroup", "name": "x"}]}, "spec.matches[0].apiGroup", "is required"),
    ({"matches": [{"apiGroup": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup", "name": "nope"}]},
     "spec.matches[0]", "HTTPRouteGroup curl/nope not found"),
    ({"matches": [{"apiGroup": "policy.flomesh.io/v1alpha1", "kind": "UpstreamTrafficSetting", "name": "nope"}]},
     "spec.matches[0]", "UpstreamTrafficSetting curl/nope not found"),
    ({"matches": [{"apiGroup": "policy.flomesh.io/v1alpha1", "kind": "UpstreamTrafficSetting", "name": "a"},
                  {"apiGroup": "policy.flomesh.io/v1alpha1", "kind": "UpstreamTrafficSetting", "name": "b"}]},
     "spec.matches", "at most one UpstreamTrafficSetting"),
    ({"portz": []}, "spec.portz", "unknown field"),
]


@pytest.mark.parametrize("spec,field,fragment", BAD_EGRESS, ids=[f"{b[1]}:{b[2]}" for b in BAD_EGRESS])
def test_bad_egress(tmp_path, spec, field, fragment):
    f, errs = errors_of(tmp_path, egress("bad", **spec), uts("a"), uts("b"))
    match = [e for e in errs if e.field == field and fragment in e.message]
    assert match, [str(e) for e in errs]
    assert match[0].file == str(f) and match[0].obj == "Egress curl/bad"


def test_reference_in_another_namespace_is_not_found(tmp_path):
    e = egress(matches=[{"apiGroup": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup", "name": "routes"}])
    f, errs = errors_of(tmp_path, e, hrg(ns="elsewhere"))
    assert [(x.field, "not found" in x.message) for x in errs] == [("spec.matches[0]", True)]


def test_egress_error_text(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_docs(tmp_path, egress("httpbin-80", ns="default", ports=[{"number": 0, "protocol": "http"}]),
               name="egress.yaml")
    with pytest.raises(ConfigErrors) as ei:
        load(["egress.yaml"])
    assert str(ei.value) == "egress.yaml: Egress default/httpbin-80: spec.ports[0].number: must be 1..65535"


def test_one_bad_document_fails_the_whole_load(tmp_path):
    good = egress("good")
    bad = egress("bad", ports=[{"number": 80, "protocol": "smtp"}])
    f, errs = errors_of(tmp_path, good, bad)
    assert len(errs) == 1 and errs[0].obj == "Egress curl/bad"


def test_duplicate_object(tmp_path):
    f, errs = errors_of(tmp_path, egress("same"), egress("same"))
    assert len(errs) == 1 and "defined twice" in errs[0].message


def test_http_route_group(tmp_path):
    h = hrg(matches=[{"name": "a", "pathRegex": "/a.*", "methods": ["GET", "POST"],
                      "headers": {"X-Debug": "^1$"}},
                     {"name": "b", "methods": ["*"]}, {"name": "c"}])
    cfg = load([write_docs(tmp_path, h)])
    (g,) = cfg.http_route_groups
    a, b, c = g.matches
    assert a.methods == ("GET", "POST") and a.headers == (("x-debug", "^1$"),)
    assert b.methods == () and b.path_regex == "" and c.methods == ()


@pytest.mark.parametrize("matches,field,fragment", [
    ([{"name": "a", "pathRegex": "/a("}], "spec.matches[0].pathRegex", "invalid regular expression"),
    ([{"name": "a", "headers": {"x": "[z"}}], "spec.matches[0].headers.x", "invalid regular expression"),
    ([{"name": "a", "methods": ["get"]}], "spec.matches[0].methods[0]", "must be one of GET"),
    ([{"name": "a", "headers": ["x"]}], "spec.matches[0].headers", "must be a mapping"),
    ([{"pathRegex": "/"}], "spec.matches[0].name", "is required"),
    ([{"name": "a"}, {"name": "a"}], "spec.matches[1].name", "duplicate match name"),
    ([{"name": "a", "path": "/"}], "spec.matches[0].path", "unknown field"),
])
def test_bad_http_route_group(tmp_path, matches, field, fragment):
    f, errs = errors_of(tmp_path, hrg(matches=matches))
    assert [(e.field, fragment in e.message) for e in errs] == [(field, True)], [str(e) for e in errs]
    assert errs[0].obj == "HTTPRouteGroup curl/routes"


def test_upstream_traffic_setting(tmp_path):
    cfg = load([write_docs(tmp_path, uts("a", maxConnections=10, connectTimeout="1500ms"), uts("b", connectTimeout=3))])
    a, b = cfg.upstream_traffic_settings
    assert (a.max_connections, a.connect_timeout) == (10, 1.5)
    assert (b.max_connections, b.connect_timeout) == (None, 3.0)


@pytest.mark.parametrize("tcp,field,fragment", [
    ({"connectTimeout": "5 seconds"}, "spec.connectionSettings.tcp.connectTimeout", "invalid duration"),
    ({"connectTimeout": "0s"}, "spec.connectionSettings.tcp.connectTimeout", "must be > 0"),
    ({"connectTimeout": True}, "spec.connectionSettings.tcp.connectTimeout", "not bool"),
    ({"maxConnections": 0}, "spec.connectionSettings.tcp.maxConnections", "must be 1.."),
    ({"maxConnections": "10"}, "spec.connectionSettings.tcp.maxConnections", "must be an integer"),
    ({"maxConns": 1}, "spec.connectionSettings.tcp.maxConns", "unknown field"),
])
def test_bad_upstream_traffic_setting(tmp_path, tcp, field, fragment):
    f, errs = errors_of(tmp_path, uts("u", **tcp))
    assert [(e.field, fragment in e.message) for e in errs] == [(field, True)], [str(e) for e in errs]


def test_durations():
    assert parse_duration("5s") == 5 and parse_duration("500ms") == 0.5
    assert parse_duration("1m30s") == 90 and parse_duration("1.5h") == 5400
    for bad in ("", "5", "s", "5x", "-5s", "5 s"):
        assert parse_duration(bad) is None, bad


def test_service(tmp_path):
    s1 = service(clusterIPs=["10.96.0.10", "fd00::a"], ports=[{"port": 80, "appProtocol": "http"},
                                                                {"port": 53, "protocol": "UDP"}])
    s2 = service("headless", clusterIP="None")
    cfg = load([write_docs(tmp_path, s1, s2)])
    a, b = cfg.services
    assert a.cluster_ips == ["10.96.0.10", "fd00::a"]
    assert [(p.port, p.protocol, p.app_protocol) for p in a.ports] == [(80, "TCP", "http"), (53, "UDP", "")]
    assert b.cluster_ips == []


@pytest.mark.parametrize("spec,field,fragment", [
    ({"clusterIP": "10.96.0.300"}, "spec.clusterIP", "invalid IP address"),
    ({"ports": [{"port": 0}]}, "spec.ports[0].port", "must be 1..65535"),
    ({"ports": [{"name": "x"}]}, "spec.ports[0].port", "is required"),
    ({"ports": [{"port": 80, "protocol": "tcp"}]}, "spec.ports[0].protocol", "must be one of TCP"),
])
def test_bad_service(tmp_path, spec, field, fragment):
    f, errs = errors_of(tmp_path, service(**spec))
    assert [(e.field, fragment in e.message) for e in errs] == [(field, True)], [str(e) for e in errs]


# --- Pipy JSON -----------------------------------------------------------------------------

PIPY = {
    "Ts": "2024-05-01T10:00:00Z", "Version": "abc", "Metrics": True, "NewFieldFromTheFuture": {"x": 1},
    "Spec": {"ServiceIdentity": "curl.curl", "SidecarLogLevel": "debug", "SidecarTimeout": 30,
             "Traffic": {"EnableEgress": False, "HTTP1PerRequestLoadBalancing": False},
             "FeatureFlags": {"EnableAutoDefaultRoute": False}},
    "Certificate": None, "Inbound": None,
    "Outbound": {
        "TrafficMatches": {
            "80": [{"DestinationIPRanges": None, "Port": 80, "Protocol": "http",
                    "HttpHostPort2Service": {"httpbin.org": {"RuleName": "httpbin.org"},
                                             "httpbin.org:80": {"RuleName": "httpbin.org"}},
                    "HttpServiceRouteRules": {"httpbin.org": {"RouteRules": [
                        {"Path": "/get", "Type": "Regex", "Methods": ["GET"],
                         "Headers": {"X-Env": "prod"}, "TargetClusters": {"httpbin.org:80": 100}}]}}}],
            "443": [{"DestinationIPRanges": None, "Port": 443, "Protocol": "https",
                     "TcpServiceRouteRules": {"TargetClusters": {"443": 100}, "AllowedEgressTraffic": False}}],
            "3306": [{"DestinationIPRanges": {"198.51.100.0/24": None}, "Port": 3306, "Protocol": "tcp",
                      "TcpServiceRouteRules": {"TargetClusters": None, "AllowedEgressTraffic": True}}],
            "14001": [{"DestinationIPRanges": {"10.96.0.20/32": None}, "Port": 14001, "Protocol": "http",
                       "HttpHostPort2Service": {"bookstore": {"RuleName": "bookstore/bookstore"}},
                       "HttpServiceRouteRules": {}}],
        },
        "ClustersConfigs": {
            "httpbin.org:80": {"Endpoints": {"httpbin.org:80": {"Weight": 100}},
                               "ConnectionSettings": {"tcp": {"MaxConnections": 50, "ConnectTimeout": 2.5}}},
            "443": {"Endpoints": {"httpbin.org:443": {"Weight": 100}, "example.com:443": {"Weight": 100}}},
        },
    },
}


def write_pipy(tmp_path, obj, name="config.json"):
    f = tmp_path / name
    f.write_text(json.dumps(obj))
    return f


def test_pipy_config(tmp_path):
    cfg = load([write_pipy(tmp_path, PIPY)])
    m = cfg.mesh
    assert (m.enable_egress, m.log_level, m.sidecar_timeout) == (False, "debug", 30)
    p = cfg.pipy
    assert p.identity == "curl.curl"
    kinds = {(x.port, x.kind): x for x in p.matches}
    assert set(kinds) == {(80, "http"), (443, "https"), (3306, "tcp"), (14001, "mesh")}
    http = kinds[(80, "http")]
    assert http.hosts == ["httpbin.org"]
    (route,) = http.routes["httpbin.org"]
    assert (route.path, route.methods, route.headers, route.upstream) == (
        "/get", ("GET",), (("x-env", "prod"),), "httpbin.org:80")
    assert (http.max_connections, http.connect_timeout) == (50, 2.5)
    assert kinds[(443, "https")].hosts == ["httpbin.org", "example.com"]
    assert kinds[(3306, "tcp")].cidrs == ["198.51.100.0/24"]
    assert kinds[(14001, "mesh")].cidrs == ["10.96.0.20/32"]


@pytest.mark.parametrize("mutate,field,fragment", [
    (lambda d: d["Spec"].__setitem__("SidecarTimeout", "30"), "Spec.SidecarTimeout", "must be an integer"),
    (lambda d: d["Spec"]["Traffic"].__setitem__("EnableEgress", "false"), "Spec.Traffic.EnableEgress", "must be a bool"),
    (lambda d: d["Spec"].__setitem__("SidecarLogLevel", "loud"), "Spec.SidecarLogLevel", "must be one of"),
    (lambda d: d["Outbound"]["TrafficMatches"]["3306"][0].__setitem__("DestinationIPRanges", {"198.51.100.1/24": None}),
     "Outbound.TrafficMatches.3306[0].DestinationIPRanges.198.51.100.1/24", "host bits"),
    (lambda d: d["Outbound"]["TrafficMatches"].__setitem__("http", []), "Outbound.TrafficMatches.http", "decimal port"),
    (lambda d: d["Outbound"]["ClustersConfigs"].pop("443"),
     "Outbound.TrafficMatches.443[0].TcpServiceRouteRules.TargetClusters", "does not have"),
    (lambda d: d["Outbound"]["TrafficMatches"]["80"][0]["HttpServiceRouteRules"]["httpbin.org"]["RouteRules"][0]
     .__setitem__("Path", "/get("),
     "Outbound.TrafficMatches.80[0].HttpServiceRouteRules.httpbin.org.RouteRules[0].Path", "invalid regular"),
])
def test_bad_pipy(tmp_path, mutate, field, fragment):
    d = copy.deepcopy(PIPY)
    mutate(d)
    f = write_pipy(tmp_path, d)
    with pytest.raises(ConfigErrors) as ei:
        load([f])
    errs = ei.value.errors
    assert [(e.field, fragment in e.message) for e in errs] == [(field, True)], [str(e) for e in errs]
    assert errs[0].file == str(f) and errs[0].obj == "PipyConfig curl.curl"


def test_pipy_and_meshconfig_must_agree(tmp_path):
    mc = {"apiVersion": "config.flomesh.io/v1alpha3", "kind": "MeshConfig",
          "metadata": {"name": "m", "namespace": "fsm-system"},
          "spec": {"traffic": {"enableEgress": False}, "sidecar": {"logLevel": "debug", "sidecarTimeout": 30}}}
    write_pipy(tmp_path, PIPY)
    write_docs(tmp_path, mc, name="mesh.yaml")
    assert load([tmp_path]).mesh.file == str(tmp_path / "mesh.yaml")
    mc["spec"]["traffic"]["enableEgress"] = True
    write_docs(tmp_path, mc, name="mesh.yaml")
    with pytest.raises(ConfigErrors) as ei:
        load([tmp_path])
    (e,) = ei.value.errors
    assert e.field == "Spec.Traffic.EnableEgress" and "make them agree" in e.message
