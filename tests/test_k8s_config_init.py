"""`fastproxy config init`: FSM's Helm value names -> the MeshConfig and ConfigMaps `fsm install`
would write; every written manifest is schema-valid (built-in kinds, oldest and newest Kubernetes)
or loads with fastproxy's loader (the MeshConfig); unknown keys and bad values are refused; the
manifests shipped in config/ pass the same checks."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

import k8sschema
from fastproxy.config import load
from fastproxy.k8s import configinit as ci

ROOT = Path(__file__).resolve().parent.parent
#: the installed command (cwd "/" below: a source checkout must not stand in for the package)
FASTPROXY = str(Path(sys.executable).parent / "fastproxy")
VERSIONS = [k8sschema.OLDEST, k8sschema.NEWEST]


def fastproxy(*args: str) -> subprocess.CompletedProcess:
    """The command in this process (quick); test_seed_install_step runs the real executable."""
    import contextlib
    import io

    from fastproxy.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(list(args))
    return subprocess.CompletedProcess(list(args), rc, out.getvalue(), err.getvalue())


def fastproxy_exe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([FASTPROXY, *args], capture_output=True, text=True, timeout=60, cwd="/")


def docs(path: Path) -> List[Dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_seed_install_step_maps_to_one_command(tmp_path: Path) -> None:
    """`fsm install --set fsm.enableEgress=false` -> `fastproxy config init --set ...`."""
    r = fastproxy_exe("config", "init", "--set", "fsm.enableEgress=false", "-n", "curl", "-n", "app",
                      "-o", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fastproxy-config.yaml", "meshconfig.yaml", "preset-mesh-config.yaml"]
    # the folder loads as fastproxy's configuration (ConfigMaps are ignored kinds)
    v = fastproxy_exe("validate", str(tmp_path))
    assert v.returncode == 0, v.stderr
    assert "enableEgress=false" in v.stdout
    cfg = load([tmp_path / "meshconfig.yaml"])
    assert cfg.mesh.enable_egress is False and cfg.mesh.enable_egress_policy is True
    assert (cfg.mesh.namespace, cfg.mesh.name) == ("fsm-system", "fsm-mesh-config")
    # every built-in object is valid Kubernetes
    objs = [o for f in sorted(tmp_path.iterdir()) for o in docs(f)]
    kinds = k8sschema.validate_all(objs, VERSIONS)
    assert kinds == ["ConfigMap", "ConfigMap", "ConfigMap"]
    # the ConfigMap the sidecar mounts holds the same MeshConfig, in each namespace
    cms = docs(tmp_path / "fastproxy-config.yaml")
    assert [c["metadata"]["namespace"] for c in cms] == ["curl", "app"]
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    (mounted / "meshconfig.yaml").write_text(cms[0]["data"]["meshconfig.yaml"])
    assert load([mounted]).mesh.to_dict() == cfg.mesh.to_dict()
    # the chart's preset ConfigMap holds the spec as JSON
    preset = docs(tmp_path / "preset-mesh-config.yaml")[0]
    assert json.loads(preset["data"]["preset-mesh-config.json"]) == docs(tmp_path / "meshconfig.yaml")[0]["spec"]


def test_defaults_are_the_charts() -> None:
    mc = ci.meshconfig({})
    cfg = load_obj(mc)
    assert cfg.mesh.enable_egress is True and cfg.mesh.log_level == "error"
    assert cfg.mesh.sidecar_timeout == 60


def load_obj(obj: Dict[str, Any]):
    import fastproxy
    return fastproxy.parse_config(obj)


@pytest.mark.parametrize("sets,check", [
    (["fsm.featureFlags.enableEgressPolicy=false"], lambda m: m.enable_egress_policy is False),
    (["fsm.sidecar.sidecarLogLevel=debug"], lambda m: m.log_level == "debug"),
    (["fsm.sidecarLogLevel=warning"], lambda m: m.log_level == "warn"),
    (["fsm.sidecar.sidecarTimeout=5"], lambda m: m.sidecar_timeout == 5),
    (["fsm.outboundIPRangeExclusionList={10.0.0.0/8,192.0.2.0/24}"],
     lambda m: list(m.outbound_ip_range_exclusion_list) == ["10.0.0.0/8", "192.0.2.0/24"]),
    (["fsm.outboundIPRangeInclusionList={203.0.113.0/24}"],
     lambda m: list(m.outbound_ip_range_inclusion_list) == ["203.0.113.0/24"]),
    (["fsm.outboundPortExclusionList={6379,3306}"], lambda m: list(m.outbound_port_exclusion_list) == [6379, 3306]),
    (["fsm.networkInterfaceExclusionList={eth1}"], lambda m: list(m.network_interface_exclusion_list) == ["eth1"]),
    # Helm's comma-joined form, and the last value winning
    (["fsm.enableEgress=false,fsm.outboundPortExclusionList={6379}", "fsm.enableEgress=true"],
     lambda m: m.enable_egress is True and list(m.outbound_port_exclusion_list) == [6379]),
    (["fsm.fsmNamespace=mesh"], lambda m: m.namespace == "mesh"),
])
def test_helm_values_land_in_the_meshconfig(sets: List[str], check: Any) -> None:
    cfg = load_obj(ci.meshconfig(ci.parse_sets(sets)))
    assert check(cfg.mesh), cfg.mesh


def test_every_known_value_is_accepted_and_loads() -> None:
    """Each key with a value of its kind yields a MeshConfig the loader accepts."""
    sample = {"bool": "false", "int": "7", "str": "x1", "port-list": "{1,65535}",
              "cidr-list": "{10.1.0.0/16}", "str-list": "{eth9}"}
    for key, v in ci.VALUES.items():
        raw = v.choices[-1] if v.kind == "enum" else sample[v.kind]
        mc = ci.meshconfig(ci.parse_sets([f"{key}={raw}"]))
        load_obj(mc)


@pytest.mark.parametrize("arg,message", [
    ("fsm.bogus=1", "unknown value 'fsm.bogus'; known values:"),
    ("fsm.enableEgress", "expected KEY=VALUE"),
    ("fsm.enableEgress=yes", "'yes' is not true or false"),
    ("fsm.sidecar.sidecarTimeout=1m", "not an integer"),
    ("fsm.sidecar.sidecarLogLevel=loud", "not one of"),
    ("fsm.outboundPortExclusionList={80,0}", "'0' is not a port"),
    ("fsm.outboundPortExclusionList={80", "unbalanced"),
    ("fsm.trafficInterceptionMode=ebpf", "not one of PodLevel, NodeLevel"),
    ("fsm.sidecar.sidecarTimeout=\u00b2", "not an integer"),
    ("fsm.sidecar.sidecarTimeout=" + "9" * 5000, "not an integer"),
    ("fsm.outboundPortExclusionList={\u0663}", "is not a port"),
])
def test_bad_values_are_refused(arg: str, message: str) -> None:
    r = fastproxy("config", "init", "--set", arg)
    assert r.returncode == 1
    assert message in r.stderr, r.stderr
    if "unknown" in message:
        assert "fsm.enableEgress" in r.stderr and "fsm.featureFlags.enableEgressPolicy" in r.stderr


def test_bad_cidr_is_refused_by_the_loader() -> None:
    r = fastproxy("config", "init", "--set", "fsm.outboundIPRangeExclusionList={10.0.0.0/33}")
    assert r.returncode == 1 and "outboundIPRangeExclusionList[0]" in r.stderr and "10.0.0.0/33" in r.stderr


def test_stdout_stream_and_value_list() -> None:
    r = fastproxy("config", "init")
    assert r.returncode == 0, r.stderr
    objs = list(yaml.safe_load_all(r.stdout))
    assert [o["kind"] for o in objs] == ["MeshConfig", "ConfigMap", "ConfigMap"]
    r = fastproxy("config", "init", "--list-values")
    assert r.stdout.split() == ci.known_keys()


def test_shipped_manifests_are_valid() -> None:
    """config/: built-in kinds against the Kubernetes schemas, FSM's kinds with the loader."""
    files = sorted((ROOT / "config").rglob("*.yaml"))
    assert files
    checked = []
    for f in files:
        checked += k8sschema.validate_all(docs(f), VERSIONS)
        load([f])
    assert "Service" in checked
