"""`fastproxy inject`: every workload kind gets the init container and the sidecar, the result is
valid for the oldest and newest Kubernetes schemas kubernetes-validate ships, injection is
idempotent, other objects pass through unchanged, FSM's interception annotations reach the init
container, and hostile input is refused with the object and field named."""
from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

import k8sschema
import netkit
from fastproxy.k8s import inject as inj
from fastproxy.k8s._yaml import ManifestError

ROOT = Path(__file__).resolve().parent.parent
#: the installed command (cwd "/" below: a source checkout must not stand in for the package)
FASTPROXY = str(Path(sys.executable).parent / "fastproxy")

POD_SPEC: Dict[str, Any] = {
    "serviceAccountName": "curl",
    "initContainers": [{"name": "migrate", "image": "busybox", "command": ["true"]}],
    "containers": [{"name": "app", "image": "curlimages/curl", "command": ["sleep", "infinity"]}],
}
TEMPLATE: Dict[str, Any] = {
    "metadata": {"labels": {"app": "curl"},
                 "annotations": {inj.OUT_CIDR_EXCLUDE: "10.0.0.0/8, 192.0.2.1/32",
                                 inj.OUT_PORT_EXCLUDE: "6379,3306",
                                 inj.IN_PORT_EXCLUDE: "8080"}},
    "spec": POD_SPEC,
}
SELECTOR = {"matchLabels": {"app": "curl"}}


def _meta(name: str) -> Dict[str, Any]:
    return {"name": name, "namespace": "curl"}


def workloads() -> List[Dict[str, Any]]:
    t = copy.deepcopy(TEMPLATE)
    job_tpl = copy.deepcopy(TEMPLATE)
    job_tpl["spec"] = dict(job_tpl["spec"], restartPolicy="Never")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": dict(_meta("pod"), **t["metadata"]),
           "spec": t["spec"]}
    return [
        pod,
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta("deploy"),
         "spec": {"replicas": 2, "selector": SELECTOR, "template": copy.deepcopy(TEMPLATE)}},
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta("sts"),
         "spec": {"serviceName": "sts", "selector": SELECTOR, "template": copy.deepcopy(TEMPLATE)}},
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta("ds"),
         "spec": {"selector": SELECTOR, "template": copy.deepcopy(TEMPLATE)}},
        {"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": _meta("rs"),
         "spec": {"selector": SELECTOR, "template": copy.deepcopy(TEMPLATE)}},
        {"apiVersion": "v1", "kind": "ReplicationController", "metadata": _meta("rc"),
         "spec": {"selector": {"app": "curl"}, "template": copy.deepcopy(TEMPLATE)}},
        {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta("job"),
         "spec": {"template": copy.deepcopy(job_tpl)}},
        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": _meta("cron"),
         "spec": {"schedule": "*/5 * * * *", "jobTemplate": {"spec": {"template": copy.deepcopy(job_tpl)}}}},
    ]


PASSTHROUGH: List[Dict[str, Any]] = [
    {"apiVersion": "v1", "kind": "Service", "metadata": _meta("svc"),
     "spec": {"selector": {"app": "curl"}, "ports": [{"port": 80, "targetPort": 8080}]}},
    {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta("cm"),
     "data": {"when": "2024-01-01T00:00:00Z", "text": "a\nb\n", "yes": "on"}},
    {"apiVersion": "policy.flomesh.io/v1alpha1", "kind": "Egress", "metadata": _meta("eg"),
     "spec": {"sources": [{"kind": "ServiceAccount", "name": "curl", "namespace": "curl"}],
              "ports": [{"number": 443, "protocol": "https"}], "hosts": ["httpbin.org"]}},
    # a kind with a template, but none in this object: unchanged too
    {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta("empty"), "spec": {}},
]


def stream(objs: List[Dict[str, Any]]) -> str:
    return yaml.safe_dump_all(objs, sort_keys=False)


def run(objs: List[Dict[str, Any]], **opts: Any) -> List[Dict[str, Any]]:
    out, _ = inj.inject_text(stream(objs), inj.InjectOptions(**opts))
    return list(yaml.safe_load_all(out))


def pod_spec(obj: Dict[str, Any]) -> Dict[str, Any]:
    tpl = inj._template(obj)
    assert tpl is not None
    return tpl["spec"]


def by_name(items: List[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    return {c["name"]: c for c in items}


@pytest.mark.parametrize("legacy", [False, True])
def test_every_workload_kind_gets_init_container_and_sidecar(legacy: bool) -> None:
    out = run(workloads(), legacy_sidecar=legacy, image="registry.test/fastproxy:1")
    assert len(out) == 8
    for obj in out:
        spec = pod_spec(obj)
        inits, apps = spec["initContainers"], spec["containers"]
        if legacy:
            # the app's init containers first (nothing would serve their redirected traffic),
            # the rules last, the sidecar the first app container
            assert [c["name"] for c in inits] == ["migrate", "fastproxy-init"]
            assert [c["name"] for c in apps] == ["fastproxy", "app"]
            side = apps[0]
            assert "restartPolicy" not in side
        else:
            assert [c["name"] for c in inits] == ["fastproxy-init", "fastproxy", "migrate"]
            assert [c["name"] for c in apps] == ["app"]
            side = inits[1]
            assert side["restartPolicy"] == "Always"
        init = by_name(inits)["fastproxy-init"]
        for c in (init, side):
            assert c["image"] == "registry.test/fastproxy:1"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"]
        assert init["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
        assert init["args"][:2] == ["iptables", "--apply"]
        sc = side["securityContext"]
        assert (sc["runAsUser"], sc["runAsNonRoot"]) == (1500, True)
        assert "add" not in sc["capabilities"]
        env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in side["env"]}
        assert env["SERVICE_ACCOUNT"] == "spec.serviceAccountName"
        assert env["POD_NAMESPACE"] == "metadata.namespace"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert side[probe]["exec"]["command"][:2] == ["fastproxy", "probe"]
        assert by_name(spec["volumes"])["fastproxy-config"]["configMap"]["name"] == "fastproxy-config"
        mounts = {m["name"]: m for m in side["volumeMounts"]}
        assert mounts["fastproxy-config"]["mountPath"] == "/etc/fastproxy"
        ann = inj._template(obj)["metadata"]["annotations"]  # type: ignore[index]
        assert (ann["prometheus.io/scrape"], ann["prometheus.io/port"], ann["prometheus.io/path"]) == \
               ("true", "15010", "/stats/prometheus")


def test_injected_manifests_are_valid_for_oldest_and_newest_kubernetes() -> None:
    valid = PASSTHROUGH[:3]  # the last one is deliberately incomplete
    native = run(workloads() + valid)
    legacy = run(workloads() + valid, legacy_sidecar=True)
    newer = [v for v in k8sschema.VERSIONS if v >= k8sschema.NATIVE_SIDECAR_MIN]
    kinds = k8sschema.validate_all(native, [newer[0], k8sschema.NEWEST])
    assert sorted(set(kinds)) == ["ConfigMap", "CronJob", "DaemonSet", "Deployment", "Job", "Pod",
                                  "ReplicaSet", "ReplicationController", "Service", "StatefulSet"]
    k8sschema.validate_all(legacy, [k8sschema.OLDEST, k8sschema.NEWEST])
    # the inputs were valid too (the test would prove nothing otherwise)
    k8sschema.validate_all(workloads(), [k8sschema.OLDEST])


def test_native_sidecar_is_not_in_the_oldest_schema() -> None:
    """The schema check can fail: a native sidecar is unknown before Kubernetes 1.28."""
    native = run(workloads()[:1])
    with pytest.raises(AssertionError, match="restartPolicy"):
        k8sschema.validate_all(native, [k8sschema.OLDEST])


@pytest.mark.parametrize("legacy", [False, True])
def test_injecting_twice_equals_once(legacy: bool) -> None:
    text = stream(workloads() + PASSTHROUGH)
    opts = inj.InjectOptions(legacy_sidecar=legacy)
    once, _ = inj.inject_text(text, opts)
    twice, _ = inj.inject_text(once, opts)
    assert twice == once
    # re-injecting with other options replaces, never duplicates
    other, _ = inj.inject_text(once, inj.InjectOptions(legacy_sidecar=not legacy))
    direct, _ = inj.inject_text(text, inj.InjectOptions(legacy_sidecar=not legacy))
    assert other == direct


def test_objects_without_a_pod_template_pass_through_unchanged() -> None:
    out, results = inj.inject_text(stream(PASSTHROUGH), inj.InjectOptions())
    assert list(yaml.safe_load_all(out)) == PASSTHROUGH
    assert [r.outcome for r in results] == ["unchanged"] * len(PASSTHROUGH)
    # a timestamp-looking string stays a string
    assert "2024-01-01T00:00:00Z" in out


def test_untouched_documents_keep_their_bytes_and_comments() -> None:
    text = ("# the app's manifests\n"
            "apiVersion: v1\nkind: Service   # keep me\nmetadata: {name: s}\n"
            "spec: {ports: [{port: 80}]}\n"
            "--- # second\n"
            + yaml.safe_dump(workloads()[1]) +
            "---\n# only a comment\n"
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: 'on', t: 2024-01-01}\n")
    out, results = inj.inject_text(text, inj.InjectOptions())
    assert [r.outcome for r in results] == ["unchanged", "injected", "unchanged"]
    assert out.startswith("# the app's manifests\napiVersion: v1\nkind: Service   # keep me\n")
    assert "---\n# only a comment\n" in out
    assert out.endswith("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {a: 'on', t: 2024-01-01}\n")
    assert inj.inject_text(out, inj.InjectOptions())[0] == out
    # a stream that cannot be cut at its markers safely is re-serialized, same documents
    tricky = "a: |\n  x\n---\nb: 1\n"
    assert list(yaml.safe_load_all(inj.inject_text(tricky, inj.InjectOptions())[0])) == \
        list(yaml.safe_load_all(tricky))
    block = "--- |\n  text\n---\nkind: Service\n"
    assert list(yaml.safe_load_all(inj.inject_text(block, inj.InjectOptions())[0])) == \
        list(yaml.safe_load_all(block))


def test_list_items_are_injected() -> None:
    lst = {"apiVersion": "v1", "kind": "List", "items": workloads()[:2] + PASSTHROUGH[:1]}
    out = run([lst])[0]
    assert [c["name"] for c in pod_spec(out["items"][1])["initContainers"]][:2] == ["fastproxy-init", "fastproxy"]
    assert out["items"][2] == PASSTHROUGH[0]


def test_annotations_become_init_container_arguments() -> None:
    obj = run(workloads()[:1])[0]
    args = by_name(pod_spec(obj)["initContainers"])["fastproxy-init"]["args"]
    pairs = list(zip(args[::1], args[1::1]))
    assert ("--exclude-cidr", "10.0.0.0/8") in pairs
    assert ("--exclude-cidr", "192.0.2.1/32") in pairs
    assert ("--exclude-port", "6379") in pairs and ("--exclude-port", "3306") in pairs
    assert "--include-cidr" not in args
    tpl = copy.deepcopy(TEMPLATE)
    tpl["metadata"]["annotations"] = {inj.OUT_CIDR_INCLUDE: "203.0.113.0/24,2001:db8::/32"}
    args = inj.init_container_args(tpl["metadata"]["annotations"], "x")
    assert args[-4:] == ["--include-cidr", "203.0.113.0/24", "--include-cidr", "2001:db8::/32"]


def test_init_container_arguments_parse_and_render_the_exclusions(tmp_path: Path) -> None:
    """The injected command lines are accepted by this fastproxy: the init container's renders
    rules with the annotation's exclusions; the sidecar's and the probes' parse."""
    from fastproxy.cli import build_parser

    obj = run(workloads()[:1])[0]
    spec = pod_spec(obj)
    init = by_name(spec["initContainers"])["fastproxy-init"]
    side = by_name(spec["initContainers"])["fastproxy"]
    cfgdir = tmp_path / "etc"
    cfgdir.mkdir()
    (cfgdir / "meshconfig.yaml").write_text(
        "apiVersion: config.flomesh.io/v1alpha3\nkind: MeshConfig\nmetadata: {name: m, namespace: fsm-system}\n"
        "spec: {traffic: {outboundPortExclusionList: [5432]}}\n")
    args = [a if a != inj.CONFIG_DIR else str(cfgdir) for a in init["args"] if a != "--apply"]
    r = subprocess.run([FASTPROXY, *args, "--ipv4-only"], capture_output=True,
                       text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    assert "-d 10.0.0.0/8 -j RETURN" in r.stdout and "-d 192.0.2.1/32 -j RETURN" in r.stdout
    assert "5432" in r.stdout and "6379" in r.stdout and "3306" in r.stdout
    parser = build_parser()
    parser.parse_args(side["args"])
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        parser.parse_args(side[probe]["exec"]["command"][1:])


def test_opt_out_and_host_network_are_left_alone() -> None:
    w = workloads()
    w[1]["spec"]["template"]["metadata"]["annotations"][inj.INJECTION] = "disabled"
    w[2]["spec"]["template"]["spec"]["hostNetwork"] = True
    out, results = inj.inject_text(stream(w[1:3]), inj.InjectOptions())
    assert list(yaml.safe_load_all(out)) == w[1:3]
    assert [r.outcome for r in results] == ["skipped", "skipped"]


@pytest.mark.parametrize("annotation,value,message", [
    (inj.OUT_PORT_EXCLUDE, "80,http", "'http' is not a port"),
    (inj.OUT_PORT_EXCLUDE, "0", "'0' is not a port"),
    (inj.OUT_PORT_EXCLUDE, "65536", "is not a port"),
    (inj.OUT_PORT_EXCLUDE, "8\u00b2", "is not a port"),  # a digit to str.isdigit, not to int()
    (inj.OUT_PORT_EXCLUDE, "9" * 5000, "is not a port"),  # past int()'s digit limit
    (inj.IN_PORT_EXCLUDE, "-1", "is not a port"),
    (inj.OUT_CIDR_EXCLUDE, "10.0.0.0/33", "is not an IP range"),
    (inj.OUT_CIDR_INCLUDE, "example.com", "is not an IP range"),
    (inj.OUT_CIDR_INCLUDE, "10.0.0.0/8; rm -rf /", "is not an IP range"),
])
def test_bad_annotations_fail_the_injection_naming_them(annotation: str, value: str, message: str) -> None:
    w = workloads()[1]
    w["spec"]["template"]["metadata"]["annotations"] = {annotation: value}
    with pytest.raises(ManifestError) as e:
        inj.inject_text(stream([w]), inj.InjectOptions(), "deploy.yaml")
    assert message in str(e.value)
    assert e.value.file == "deploy.yaml" and e.value.obj == "Deployment curl/deploy"
    assert annotation in (e.value.field or "")


def test_hostile_documents() -> None:
    # a name clash with containers fastproxy did not inject
    w = workloads()[0]
    w["spec"]["containers"].append({"name": "fastproxy", "image": "evil"})
    with pytest.raises(ManifestError, match="did not inject"):
        inj.inject_text(stream([w]), inj.InjectOptions())
    # a pod without containers, a template that is not a mapping, scalar documents, bad YAML
    with pytest.raises(ManifestError, match="spec.containers"):
        inj.inject_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {}\n", inj.InjectOptions())
    with pytest.raises(ManifestError, match="annotations"):
        inj.inject_text("apiVersion: v1\nkind: Pod\nmetadata: {name: p, annotations: [a]}\n"
                        "spec: {containers: []}\n", inj.InjectOptions())
    out, res = inj.inject_text("--- 42\n--- [a, b]\n", inj.InjectOptions())
    assert list(yaml.safe_load_all(out)) == [42, ["a", "b"]] and res == []
    with pytest.raises(ManifestError, match="duplicate key"):
        inj.inject_text("kind: Pod\nkind: Pod\n", inj.InjectOptions())
    with pytest.raises(ManifestError, match="YAML syntax error at line"):
        inj.inject_text("a: [\n", inj.InjectOptions())
    with pytest.raises(ManifestError, match="nested too deeply"):
        inj.inject_text("a: " + "[" * 100000 + "]" * 100000 + "\n", inj.InjectOptions())
    # aliases ("billion laughs") are written back as aliases, not expanded
    bomb = "a: &a [x, x]\n" + "".join(f"l{i}: &l{i} [*{'a' if i == 0 else f'l{i-1}'}, "
                                       f"*{'a' if i == 0 else f'l{i-1}'}]\n" for i in range(40))
    out, _ = inj.inject_text(bomb, inj.InjectOptions())
    assert len(out) < 4 * len(bomb)


def test_an_app_running_as_the_proxy_uid_is_refused() -> None:
    """Its traffic would be exempt from interception: a silent bypass."""
    w = workloads()[1]
    w["spec"]["template"]["spec"]["securityContext"] = {"runAsUser": 1500}
    with pytest.raises(ManifestError, match="bypass") as e:
        inj.inject_text(stream([w]), inj.InjectOptions())
    assert e.value.field == "spec.securityContext.runAsUser"
    w["spec"]["template"]["spec"]["securityContext"] = {"runAsUser": 1000}
    w["spec"]["template"]["spec"]["initContainers"][0]["securityContext"] = {"runAsUser": 1500}
    with pytest.raises(ManifestError) as e:
        inj.inject_text(stream([w]), inj.InjectOptions())
    assert e.value.field == "spec.initContainers[0].securityContext.runAsUser"
    # overriding the pod's 1500 in every container is fine; so is injecting again
    w = workloads()[1]
    w["spec"]["template"]["spec"]["securityContext"] = {"runAsUser": 1500}
    for c in w["spec"]["template"]["spec"]["initContainers"] + w["spec"]["template"]["spec"]["containers"]:
        c["securityContext"] = {"runAsUser": 1000}
    once, _ = inj.inject_text(stream([w]), inj.InjectOptions())
    assert inj.inject_text(once, inj.InjectOptions())[0] == once


def test_command_line_reads_stdin_and_writes_file(tmp_path: Path) -> None:
    out = tmp_path / "out.yaml"
    r = subprocess.run([FASTPROXY, "inject", "-o", str(out), "--image", "img:2",
                        "--legacy-sidecar"], input=stream(workloads()[6:8]), text=True,
                       capture_output=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    docs = list(yaml.safe_load_all(out.read_text()))
    assert [c["image"] for c in pod_spec(docs[1])["containers"]][0] == "img:2"
    r = subprocess.run([FASTPROXY, "inject", "-f", str(tmp_path / "missing.yaml")],
                       text=True, capture_output=True, timeout=60, cwd="/")
    assert r.returncode == 1 and "missing.yaml" in r.stderr


@pytest.mark.netns
def test_injected_pod_runs_as_written(topo: netkit.Topology, fastproxy_exe: str, tmp_path: Path) -> None:
    """Play the kubelet for an injected pod in the app namespace: the init container's command,
    the sidecar's command as UID 1500 with its environment, its startup probe until it passes,
    then the app's traffic through it; the probes fail once the sidecar is gone."""
    import json
    import time


    out = run(workloads()[:1])[0]
    spec = pod_spec(out)
    init, side = spec["initContainers"][0], spec["initContainers"][1]
    cfg = topo.tmp / f"etc-{os.getpid()}"  # readable by UID 1500 (pytest's tmp_path is not)
    r = subprocess.run([FASTPROXY, "config", "init", "--set", "fsm.enableEgress=false", "-n", "curl",
                        "-o", str(tmp_path)], capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    cm = list(yaml.safe_load_all((tmp_path / "fastproxy-config.yaml").read_text()))[0]
    cfg.mkdir()
    for key, text in cm["data"].items():
        (cfg / key).write_text(text)
    (cfg / "egress.yaml").write_text(
        "apiVersion: policy.flomesh.io/v1alpha1\nkind: Egress\nmetadata: {name: e, namespace: curl}\n"
        "spec:\n  sources: [{kind: ServiceAccount, name: curl, namespace: curl}]\n"
        "  ports: [{number: 80, protocol: http}]\n  hosts: [httpbin.test]\n")
    for p in (cfg, *cfg.iterdir()):
        p.chmod(0o755 if p.is_dir() else 0o644)

    def argv(c: Dict[str, Any], key: str = "args") -> List[str]:
        cmd = [fastproxy_exe] + (c[key][1:] if key == "command" else c["args"])
        return [str(cfg) if a == inj.CONFIG_DIR else a for a in cmd]

    def probe(name: str) -> int:
        return topo.app.run(argv(side[name]["exec"], "command"), user=inj.PROXY_UID, check=False,
                            timeout=30).returncode

    topo.app.run(argv(init), timeout=60)
    try:
        log = open(tmp_path / "sidecar.log", "wb")
        proc = topo.app.popen(argv(side), user=inj.PROXY_UID, stdout=log, stderr=subprocess.STDOUT,
                              env={"SERVICE_ACCOUNT": "curl", "POD_NAMESPACE": "curl"})
        log.close()
        try:
            deadline = time.monotonic() + 20
            while probe("startupProbe") != 0:
                assert proc.poll() is None, "sidecar exited"
                assert time.monotonic() < deadline, "startup probe never passed"
                time.sleep(0.1)
            assert probe("readinessProbe") == 0 and probe("livenessProbe") == 0
            r = topo.curl("-o", "/dev/null", "-w", "%{http_code}", "http://httpbin.test/get")
            assert r.stdout == "200", r.stderr
            r = topo.curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: other.test",
                          f"http://{netkit.HTTPBIN}/get")
            assert r.stdout == "403", r.stderr  # decided by this pod's Egress: the sidecar is in the path
            stats = json.loads(topo.app.http("GET", "127.0.0.1", inj.ADMIN_PORT, "/stats")[1])
            assert stats["cx_accepted"] >= 2
        finally:
            proc.terminate()
            assert proc.wait(timeout=40) == 0, (tmp_path / "sidecar.log").read_text()
        assert probe("readinessProbe") == 1 and probe("livenessProbe") == 1
    finally:
        topo.app.run([fastproxy_exe, "iptables", "--remove"], timeout=60)
