"""explain and the data plane give the same answer (issue 7 item 5), through the real sidecar:
`Host: httpbin.test..` (two trailing dots: another name, refused by both), RE2's `[\\d]` (a digit
class, not `\\`, `d`, `]`), and a backtracking killer `(a*)+c` with a 64 KiB path answered at once
(RE2 is linear; glibc's regexec took seconds for 380 bytes). Real curl in the app namespace, the
sidecar as UID 1500."""
from __future__ import annotations

import json
import time
from typing import Iterator, Optional

import pytest

import netkit
from netkit import HTTPBIN, Sidecar, Topology
from test_policy_manifests import NS, SA, egress
from fastproxy.config import load
from fastproxy.explain import explain_decision
from fastproxy.policy import HttpRequest

pytestmark = pytest.mark.netns

MESHCONFIG = netkit.meshconfig({"traffic": {"enableEgress": False},
                                "featureFlags": {"enableEgressPolicy": True},
                                "sidecar": {"sidecarTimeout": 10}})


def _rg(name: str, path_regex: str) -> str:
    return json.dumps({"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
                       "metadata": {"name": name, "namespace": NS},
                       "spec": {"matches": [{"name": "m", "pathRegex": path_regex}]}}) + "\n"


def _routed(name: str, host: str, group: str) -> str:
    return egress(name, f"  hosts: [{host}]\n  ports: [{{number: 80, protocol: http}}]\n"
                        "  matches:\n  - apiGroup: specs.smi-spec.io/v1alpha4\n"
                        f"    kind: HTTPRouteGroup\n    name: {group}\n")


POLICIES = "---\n".join([
    egress("any-80", "  hosts: [httpbin.test]\n  ports: [{number: 80, protocol: http}]\n"),
    _rg("digits", "^/get\\?id=[\\d]"), _routed("digits-80", "digits.test", "digits"),
    _rg("killer", "^/get\\?q=(a*)+c"), _routed("killer-80", "killer.test", "killer"),
] + [_rg(name, rx) + "---\n" + _routed(name + "-80", name + ".test", name) for name, rx in (
    ("alpha", "^/get\\?id=[[:alpha:]]+$"), ("hex", "^/get\\?id=\\x61$"),
    ("ci", "(?i)^/GET\\?ID="), ("named", "^/get\\?(?P<n>id)=1$"), ("start", "\\A/get\\?id=2"),
    ("bslash", "id=\\\\d"))])


@pytest.fixture(scope="module")
def sidecar(topo: Topology, fastproxy_exe: str) -> Iterator[Sidecar]:
    folder = netkit.config_folder(topo, "regex-config", {"meshconfig.yaml": MESHCONFIG,
                                                    "policies.yaml": POLICIES})
    with Sidecar(topo.app, fastproxy_exe, topo.tmp, config=str(folder), drain_seconds=2,
                 extra=["--service-account", SA, "--namespace", NS]).serving() as sc:
        sc.folder = folder  # type: ignore[attr-defined]
        yield sc


def _data_plane(topo: Topology, host: str, path: str) -> str:
    """The status the sidecar gives curl's request (403: denied by policy)."""
    r = topo.curl("-g", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"Host: {host}",
                  f"http://{HTTPBIN}{path}")
    assert r.returncode == 0, r.stderr
    return r.stdout


def _explain(sidecar: Sidecar, host: str, path: str) -> Optional[int]:
    cfg = load([str(sidecar.folder)], service_account=SA, namespace=NS)  # type: ignore[attr-defined]
    d = explain_decision(cfg, HTTPBIN, 80, http=HttpRequest.make(host, path))
    return d.http_status if d.action == "deny" else 200


@pytest.mark.parametrize("host,path,status", [
    ("httpbin.test", "/get", 200),
    ("httpbin.test.", "/get", 200),         # one trailing dot: the same name
    ("httpbin.test..", "/get", 403),        # two: another name, in explain and the data plane
    ("HTTPBIN.test", "/get", 200),
    ("digits.test", "/get?id=7", 200),      # [\d] is a digit class
    ("digits.test", "/get?id=]", 403),      # ... not "\", "d" or "]"
    ("digits.test", "/get?id=d", 403),
    ("alpha.test", "/get?id=abc", 200), ("alpha.test", "/get?id=ab1", 403),
    ("hex.test", "/get?id=a", 200), ("hex.test", "/get?id=x61", 403),
    ("ci.test", "/get?id=1", 200),
    ("named.test", "/get?id=1", 200), ("named.test", "/get?n=1", 403),
    ("start.test", "/get?id=2", 200), ("start.test", "/x/get?id=2", 403),
    ("bslash.test", "/get?id=\\d", 200), ("bslash.test", "/get?id=1", 403),
])
def test_explain_and_data_plane_agree(topo: Topology, sidecar: Sidecar, host: str, path: str,
                                      status: int) -> None:
    assert _explain(sidecar, host, path) == status
    assert _data_plane(topo, host, path) == str(status)


def test_backtracking_killer_answers_at_once(topo: Topology, sidecar: Sidecar) -> None:
    # no "c": a backtracking engine tries 2^n splits (glibc: 7 s for 380 bytes); the longest path
    # a request head may carry (8 KiB cap) is matched by RE2 in microseconds
    path = "/get?q=" + "a" * 8000
    t0 = time.monotonic()
    for _ in range(5):
        assert _data_plane(topo, "killer.test", path) == "403"
    assert time.monotonic() - t0 < 5
    assert _explain(sidecar, "killer.test", path) == 403
    # a 64 KiB path is over the head cap: refused at once
    t0 = time.monotonic()
    r = topo.curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: killer.test",
                  f"http://{HTTPBIN}/get?q=" + "a" * 65536)
    assert r.stdout in ("400", "403", "431", "000"), (r.returncode, r.stdout, r.stderr)
    assert time.monotonic() - t0 < 5
    assert _explain(sidecar, "killer.test", "/get?q=" + "a" * 65536) in (400, 403)
    # and a path the route allows still goes through
    assert _data_plane(topo, "killer.test", "/get?q=aaac") == "200"


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("regex", ["(a{1,1000}){1,1000}", "(a*)+\\1c", "a{4294967296}",
                                   "(" * 1000 + "a" + ")" * 1000])
def test_a_reload_with_a_bad_regex_keeps_the_last_good_config(topo: Topology, sidecar: Sidecar,
                                                              regex: str) -> None:
    """Issue 7 items 3 and 4 at reload: refused at once with file, object and field, the sidecar
    keeps serving the last good configuration, and its memory stays small."""
    assert sidecar.proc is not None
    folder = sidecar.folder  # type: ignore[attr-defined]
    before = sidecar.stats()
    bad = netkit.write_config(folder, "zz-bad.yaml", _rg("bad", regex))
    try:
        deadline = time.monotonic() + 10
        while sidecar.stats()["reload_failures"] == before["reload_failures"]:
            assert time.monotonic() < deadline, sidecar.log_tail()
            time.sleep(0.1)
        err = sidecar.stats()["last_reload_error"]
        assert "zz-bad.yaml" in err and "HTTPRouteGroup curl/bad" in err and "pathRegex" in err, err
        assert sidecar.stats()["reloads"] == before["reloads"]
        assert _data_plane(topo, "digits.test", "/get?id=7") == "200"
        assert _data_plane(topo, "httpbin.test", "/get") == "200"
        assert _data_plane(topo, "evil.test", "/get") == "403"
        assert _rss_mb(sidecar.proc.pid) < 100
    finally:
        bad.unlink()
        deadline = time.monotonic() + 10
        while sidecar.stats()["reloads"] == before["reloads"]:
            assert time.monotonic() < deadline, sidecar.log_tail()
            time.sleep(0.1)
