"""The public Python API (`import fastproxy`): its examples run as doctests, `__all__` is exactly
the public surface, errors come back as data, decisions agree with `fastproxy explain`, and the
in-process Proxy relays real traffic redirected to it in a network namespace."""
from __future__ import annotations

import doctest
import inspect
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import fastproxy
import netkit
from netkit import Topology

ROOT = Path(__file__).resolve().parent.parent
FASTPROXY = str(Path(sys.executable).parent / "fastproxy")

PUBLIC = {"Config", "ConfigError", "ConfigErrors", "Decision", "FastproxyError", "Policy", "Problem",
          "Proxy", "compile_policy", "explain_decision", "inject", "load_config", "parse_config",
          "problems", "validate_config"}


def test_examples_in_the_api_module_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from fastproxy import _api

    monkeypatch.chdir(ROOT)  # the examples name config/ files relative to the checkout
    result = doctest.testmod(_api, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted >= 15
    assert result.failed == 0


def test_all_is_exactly_the_public_surface() -> None:
    assert set(fastproxy.__all__) == PUBLIC and len(fastproxy.__all__) == len(PUBLIC)
    for name in fastproxy.__all__:
        assert hasattr(fastproxy, name), name
    # every other public-looking attribute is a submodule (internal; documented as such)
    others = {n for n in dir(fastproxy) if not n.startswith("_")} - PUBLIC
    for n in others:
        assert isinstance(getattr(fastproxy, n), types.ModuleType), n
    ns: dict = {}
    exec("from fastproxy import *", ns)
    assert {k for k in ns if not k.startswith("__")} == PUBLIC


def test_public_names_are_documented_and_typed() -> None:
    for name in fastproxy.__all__:
        obj = getattr(fastproxy, name)
        assert inspect.getdoc(obj), f"{name} has no docstring"
        if inspect.isfunction(obj):
            sig = inspect.signature(obj)
            assert sig.return_annotation is not inspect.Signature.empty, name
            for p in sig.parameters.values():
                if p.kind not in (p.VAR_KEYWORD,):
                    assert p.annotation is not inspect.Parameter.empty, f"{name}({p.name})"
        if inspect.isclass(obj) and name in ("Policy", "Proxy"):
            for m, f in inspect.getmembers(obj, inspect.isfunction):
                if not m.startswith("_"):
                    assert inspect.getdoc(f), f"{name}.{m}"


def test_errors_are_data_with_file_object_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: policy.flomesh.io/v1alpha1\nkind: Egress\n"
                   "metadata: {name: e, namespace: ns}\n"
                   "spec: {sources: [{kind: ServiceAccount, name: a, namespace: b}],\n"
                   "       ports: [{number: 99999, protocol: tcp}]}\n")
    problems = fastproxy.validate_config(bad)
    assert problems, "a port of 99999 must be refused"
    p = problems[0]
    assert (p.file, p.object) == (str(bad), "Egress ns/e")
    assert p.field and p.field.startswith("spec.ports[0]")
    assert str(p).startswith(f"{bad}: Egress ns/e: spec.ports[0]")
    with pytest.raises(fastproxy.ConfigErrors) as e:
        fastproxy.load_config(bad)
    assert fastproxy.problems(e.value) == problems
    # text: errors name the given name, never a temporary file
    with pytest.raises(fastproxy.ConfigError) as e2:
        fastproxy.parse_config(bad.read_text(), name="policies.yaml")
    assert [x.file for x in fastproxy.problems(e2.value)] == ["policies.yaml"]
    assert fastproxy.validate_config(tmp_path / "missing.yaml")[0].message == "no such file or folder"
    assert fastproxy.validate_config(text="a: [")[0].message.startswith("YAML syntax error")
    assert fastproxy.validate_config(objects=[{"kind": "MeshConfig"}])[0].field == "apiVersion"
    with pytest.raises(TypeError):
        fastproxy.validate_config(bad, text="x")
    # objects that are not plain data, and a document that is not a mapping
    assert "not plain data" in fastproxy.validate_config(objects={"kind": object()})[0].message
    assert fastproxy.validate_config(objects=[["a"]])[0].object == "document 1"


def test_library_decisions_agree_with_the_command() -> None:
    """Library and `fastproxy explain --json` give the same decision for the demo policies."""
    import json

    paths = [ROOT / "config/examples/egress-policy-demo.yaml",
             ROOT / "config/examples/meshconfig-egress-off.yaml"]
    cfg = fastproxy.load_config(*paths, service_account="curl", namespace="curl")
    policy = fastproxy.compile_policy(cfg)
    cases = [("198.51.100.7:80", ["--host", "httpbin.org", "--path", "/get"], dict(host="httpbin.org", path="/get")),
             ("198.51.100.7:80", ["--host", "httpbin.org", "--path", "/post", "--method", "POST"],
              dict(host="httpbin.org", path="/post", method="POST")),
             ("198.51.100.7:443", ["--sni", "httpbin.org"], dict(sni="httpbin.org")),
             ("198.51.100.7:443", ["--sni", "evil.test"], dict(sni="evil.test")),
             ("203.0.113.9:3306", [], {}),
             ("[2001:db8::5]:22", [], {})]
    actions = set()
    for dest, args, kw in cases:
        r = subprocess.run([FASTPROXY, "explain", "--json", "--service-account", "curl", "--namespace", "curl",
                            *[a for p in paths for a in ("--config", str(p))], dest, *args],
                           capture_output=True, text=True, timeout=60, cwd="/")
        assert r.returncode == 0, r.stderr
        want = json.loads(r.stdout)["decision"]
        got = policy.decide(dest, **kw)
        assert got.to_dict() == want, (dest, kw)
        actions.add(got.action)
    assert {"allow", "deny"} <= actions
    # destinations in every accepted form
    assert policy.decide(("203.0.113.9", 3306)) == policy.decide("203.0.113.9", 3306) == \
           policy.decide("203.0.113.9:3306")
    with pytest.raises(ValueError):
        policy.decide("not-an-ip:80")
    with pytest.raises(ValueError):
        policy.decide("203.0.113.9:80", sni="a", host="b")


@pytest.mark.netns
def test_in_process_proxy_relays_redirected_traffic(topo: Topology, fastproxy_exe: str) -> None:
    """A Proxy started in the app namespace (by this test process, as root: the rules exempt
    UID 0 here) relays what the rules redirect, counts it, reloads, and stops cleanly."""
    port = 15301
    topo.app.run([fastproxy_exe, "iptables", "--apply", "--proxy-uid", "0", "--outbound-port",
                  str(port)], timeout=60)
    mesh_off = fastproxy.parse_config(netkit.meshconfig({"traffic": {"enableEgress": False}}) + "---\n" + f"""
apiVersion: policy.flomesh.io/v1alpha1
kind: Egress
metadata: {{name: httpbin, namespace: curl}}
spec:
  sources: [{{kind: ServiceAccount, name: curl, namespace: curl}}]
  ipAddresses: [{netkit.HTTPBIN}/32]
  ports: [{{number: 80, protocol: tcp}}]
""", service_account="curl", namespace="curl")
    proxy = fastproxy.Proxy(mesh_off, port=port, workers=2, drain_seconds=2)
    topo.app.call(proxy.start)
    try:
        before = proxy.stats()
        r = topo.curl("-o", "/dev/null", "-w", "%{http_code}", "http://httpbin.test/get")
        assert r.stdout == "200", r.stderr
        r = topo.curl("--cacert", topo.cacert, "https://httpbin.test/get")
        assert r.returncode in (7, 35, 56), r  # not allowed: reset (maybe before connect() returned)
        assert proxy.wait(lambda s: s["cx_accepted"] - before["cx_accepted"] >= 2 and s["cx_active"] == 0)
        # passthrough on: https relayed too, without restarting
        proxy.reload(fastproxy.parse_config(netkit.meshconfig({"traffic": {"enableEgress": True}})))
        r = topo.curl("--cacert", topo.cacert, "-o", "/dev/null", "-w", "%{http_code}",
                      "https://httpbin.test/get")
        assert r.stdout == "200", r.stderr
    finally:
        proxy.stop()
        topo.app.run([fastproxy_exe, "iptables", "--remove"], timeout=60)
    with pytest.raises(fastproxy.FastproxyError):
        proxy.stats()
    proxy.stop()  # twice is fine
    # the port is free again: a new Proxy can take it
    with fastproxy.Proxy(port=port, bind="127.0.0.1", bind_v6=None) as again:
        assert again.stats()["cx_active"] == 0


def test_proxy_refuses_a_taken_port() -> None:
    with fastproxy.Proxy(port=0, bind="127.0.0.1", bind_v6=None) as a:
        with pytest.raises(fastproxy.FastproxyError):
            fastproxy.Proxy(port=a.port, bind="127.0.0.1", bind_v6=None).start()


def test_pip_install_gives_library_and_command() -> None:
    """The installed package (pip install .) has the command and the library side by side."""
    r = subprocess.run([FASTPROXY, "--version"], capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0 and r.stdout.strip() == f"fastproxy {fastproxy.__version__}"
    code = "import fastproxy; print(len(fastproxy.__all__), fastproxy.load_config().mesh.enable_egress)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd="/",
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(len(PUBLIC)), "True"]
    # PEP 561: type checkers read the package's own annotations
    assert (Path(fastproxy.__file__).parent / "py.typed").is_file()


def test_readme_example_runs(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    """README "Python library": the example block up to the in-process proxy runs as written."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python library"):]
    code = section[section.index("```python\n") + 10:section.index("```", section.index("```python\n") + 10)]
    runnable = code[:code.index("# the proxy in-process")]
    assert "compile_policy" in runnable and "validate_config" in runnable
    monkeypatch.chdir(ROOT)
    exec(compile(runnable, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "policies/ None None no such file or folder" in out
