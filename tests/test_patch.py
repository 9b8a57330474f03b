"""`fastproxy patch`: kubectl's merge (RFC 7386) and JSON (RFC 6902) patches applied to the
configuration files, validated by the loader before anything is written, written atomically,
refusals leaving the file byte-for-byte unchanged; and, with a running sidecar in a namespace,
the change in force for new connections within a second while refusals leave it serving."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest
import yaml

import netkit
from fastproxy import patch as P

SEED_PATCH = '{"spec":{"traffic":{"enableEgress":false}}}'

MULTI = """\
# pod identity, kept as written
apiVersion: v1
kind: ServiceAccount
metadata: {name: app, namespace: app}   # flow style stays
---
# the mesh config
apiVersion: config.flomesh.io/v1alpha3
kind: MeshConfig
metadata:
  name: fsm-mesh-config
  namespace: fsm-system
spec:
  traffic:
    enableEgress: true
    outboundPortExclusionList: [22, 2222]
  sidecar:
    logLevel: error
---
apiVersion: v1
kind: Service
metadata:
  name: db   # a comment in another document
  namespace: app
spec:
  clusterIP: 10.96.0.10
  ports:
  - port: 5432
"""


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastproxy", "patch", *args], capture_output=True,
                          text=True, timeout=60, cwd="/")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "mesh.yaml").write_text(MULTI)
    return tmp_path


def docs(path: Path) -> List[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# -- the patch algorithms ------------------------------------------------------------------------

@pytest.mark.parametrize("target,patch,result", [  # RFC 7386 appendix A
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
])
def test_merge_patch_rfc7386_examples(target: object, patch: object, result: object) -> None:
    before = json.dumps(target)
    assert P.merge_patch(target, patch) == result
    assert json.dumps(target) == before  # the input is not changed


def test_json_patch_operations() -> None:
    doc = {"a": {"b": [1, 2]}, "c": 1}
    ops = [{"op": "add", "path": "/a/b/1", "value": 9}, {"op": "add", "path": "/a/b/-", "value": 3},
           {"op": "remove", "path": "/c"}, {"op": "replace", "path": "/a/b/0", "value": 0},
           {"op": "copy", "from": "/a/b", "path": "/d"}, {"op": "move", "from": "/d", "path": "/e"},
           {"op": "test", "path": "/e/1", "value": 9}, {"op": "add", "path": "/x~1y", "value": {}}]
    assert P.json_patch(doc, ops) == {"a": {"b": [0, 9, 2, 3]}, "e": [0, 9, 2, 3], "x/y": {}}
    for bad in ([{"op": "test", "path": "/c", "value": 2}], [{"op": "remove", "path": "/zz"}],
                [{"op": "replace", "path": "/a/b/7", "value": 1}], [{"op": "frob", "path": "/a"}],
                [{"op": "move", "from": "/a", "path": "/a/b/x"}], {"op": "add"}):
        with pytest.raises(P.PatchError):
            P.json_patch(doc, bad)


# -- files ----------------------------------------------------------------------------------------

def test_seed_command_word_for_word(folder: Path) -> None:
    r = cli("meshconfig", "fsm-mesh-config", "-n", "fsm-system", "-p", SEED_PATCH, "--type=merge",
            "--config", str(folder))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "meshconfig.config.flomesh.io/fsm-mesh-config patched"
    text = (folder / "mesh.yaml").read_text()
    d = docs(folder / "mesh.yaml")
    assert d[1]["spec"]["traffic"] == {"enableEgress": False, "outboundPortExclusionList": [22, 2222]}
    # the other documents keep their bytes, comments and layout
    first, _, rest = MULTI.partition("---\n# the mesh config\n")
    assert text.startswith(first + "---\n# the mesh config\n")
    assert text.endswith(MULTI[MULTI.index("---\napiVersion: v1\nkind: Service"):])
    # again: nothing to change, nothing written
    st = os.stat(folder / "mesh.yaml")
    r = cli("meshconfig", "fsm-mesh-config", "-n", "fsm-system", "-p", SEED_PATCH, "--type=merge",
            "--config", str(folder))
    assert r.returncode == 0 and "(no change)" in r.stdout
    assert os.stat(folder / "mesh.yaml").st_ino == st.st_ino


def test_merge_null_deletes_and_arrays_replace(folder: Path) -> None:
    p = '{"spec":{"traffic":{"outboundPortExclusionList":[8080]},"sidecar":{"logLevel":null}}}'
    r = cli("meshconfig/fsm-mesh-config", "-n", "fsm-system", "--type", "merge", "-p", p,
            "--config", str(folder))
    assert r.returncode == 0, r.stderr
    spec = docs(folder / "mesh.yaml")[1]["spec"]
    assert spec["traffic"]["outboundPortExclusionList"] == [8080]
    assert "logLevel" not in spec["sidecar"]


def test_json_patch_type_and_dry_run(folder: Path) -> None:
    before = (folder / "mesh.yaml").read_bytes()
    ops = json.dumps([{"op": "replace", "path": "/spec/traffic/enableEgress", "value": False},
                      {"op": "add", "path": "/spec/traffic/outboundPortExclusionList/-",
                       "value": 3306}])
    r = cli("meshconfig", "fsm-mesh-config", "-n", "fsm-system", "--type=json", "-p", ops,
            "--config", str(folder), "--dry-run")
    assert r.returncode == 0, r.stderr
    shown = yaml.safe_load(r.stdout)
    assert shown["kind"] == "MeshConfig"
    assert shown["spec"]["traffic"] == {"enableEgress": False,
                                        "outboundPortExclusionList": [22, 2222, 3306]}
    assert (folder / "mesh.yaml").read_bytes() == before
    r = cli("meshconfig", "fsm-mesh-config", "-n", "fsm-system", "--type=json", "-p", ops,
            "--config", str(folder), "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == docs(folder / "mesh.yaml")[1] == shown


REFUSALS = [
    # (args, words the message must hold)
    (["-p", '{"spec":{"traffic":{"enableEgress":false}'], ["--patch", "not valid JSON"]),
    (["-p", '{"spec":{"traffic":{"enableEgress":"maybe"}}}'],
     ["mesh.yaml", "MeshConfig fsm-system/fsm-mesh-config", "spec.traffic.enableEgress", "bool"]),
    (["-p", '{"spec":{"traffic":{"enableEgres":false}}}'],
     ["mesh.yaml", "spec.traffic.enableEgres", "unknown field"]),
    (["-p", '{"spec":{"sidecar":{"logLevel":"loud"}}}'], ["spec.sidecar.logLevel"]),
    (["-p", '{"metadata":{"name":"other"}}'], ["metadata.name"]),
    (["-p", '[1]'], ["merge patch must be a JSON object"]),
    (["-p", '{"a":1,"a":2}'], ["duplicate key"]),
]


@pytest.mark.parametrize("extra,words", REFUSALS, ids=[str(i) for i in range(len(REFUSALS))])
def test_refusals_leave_the_file_unchanged(folder: Path, extra: List[str],
                                           words: List[str]) -> None:
    before = (folder / "mesh.yaml").read_bytes()
    listing = sorted(os.listdir(folder))
    r = cli("meshconfig", "fsm-mesh-config", "-n", "fsm-system", "--type=merge", *extra,
            "--config", str(folder))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    for w in words:
        assert w in r.stderr, r.stderr
    assert (folder / "mesh.yaml").read_bytes() == before
    assert sorted(os.listdir(folder)) == listing  # no temporary file left behind


@pytest.mark.parametrize("name,ns,words", [
    ("fsm-mesh-config", "nowhere", ["namespace 'nowhere' not found"]),
    ("other-mesh", "fsm-system", ["MeshConfig fsm-system/other-mesh", "not found"]),
])
def test_missing_object_or_namespace(folder: Path, name: str, ns: str, words: List[str]) -> None:
    before = (folder / "mesh.yaml").read_bytes()
    r = cli("meshconfig", name, "-n", ns, "--type=merge", "-p", SEED_PATCH, "--config", str(folder))
    assert r.returncode == 1
    for w in words:
        assert w in r.stderr, r.stderr
    assert (folder / "mesh.yaml").read_bytes() == before


def test_strategic_is_refused_as_kubectl_does(folder: Path) -> None:
    r = cli("meshconfig", "fsm-mesh-config", "-n", "fsm-system", "-p", SEED_PATCH,
            "--config", str(folder))
    assert r.returncode == 1 and "use --type=merge" in r.stderr


def test_validated_with_the_rest_of_the_folder(folder: Path) -> None:
    """The result must load together with the other files: an Egress elsewhere referring to an
    HTTPRouteGroup that the patch would break is a refusal."""
    (folder / "policy.yaml").write_text("""\
apiVersion: specs.smi-spec.io/v1alpha4
kind: HTTPRouteGroup
metadata: {name: routes, namespace: app}
spec:
  matches:
  - {name: get, pathRegex: "/get", methods: [GET]}
---
apiVersion: policy.flomesh.io/v1alpha1
kind: Egress
metadata: {name: httpbin, namespace: app}
spec:
  sources: [{kind: ServiceAccount, name: app, namespace: app}]
  hosts: [httpbin.test]
  ports: [{number: 80, protocol: http}]
  matches: [{apiGroup: specs.smi-spec.io/v1alpha4, kind: HTTPRouteGroup, name: routes}]
""")
    before = (folder / "policy.yaml").read_bytes()
    r = cli("httproutegroup", "routes", "-n", "app", "--type=merge", "-p",
            '{"metadata":{"name":"routes"},"spec":{"matches":[{"name":"get","pathRegex":"(","methods":["GET"]}]}}',
            "--config", str(folder))
    assert r.returncode == 1 and "policy.yaml" in r.stderr, r.stderr
    assert (folder / "policy.yaml").read_bytes() == before
    # and a good change to another kind goes through
    r = cli("egress", "httpbin", "-n", "app", "--type=merge", "-p",
            '{"spec":{"hosts":["httpbin.test","other.test"]}}', "--config", str(folder))
    assert r.returncode == 0, r.stderr
    assert docs(folder / "policy.yaml")[1]["spec"]["hosts"] == ["httpbin.test", "other.test"]


def test_json_file_and_symlink(tmp_path: Path) -> None:
    real_dir = tmp_path / "real"
    real_dir.mkdir()
    obj = yaml.safe_load(MULTI.split("---\n")[1])
    (real_dir / "mesh.json").write_text(json.dumps(obj, indent=4) + "\n")
    (real_dir / "mesh.json").chmod(0o640)
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    (cfg / "mesh.json").symlink_to(real_dir / "mesh.json")
    r = cli("meshconfig", "fsm-mesh-config", "-n", "fsm-system", "--type=merge", "-p", SEED_PATCH,
            "--config", str(cfg))
    assert r.returncode == 0, r.stderr
    assert (cfg / "mesh.json").is_symlink()  # written through the link
    text = (real_dir / "mesh.json").read_text()
    assert json.loads(text)["spec"]["traffic"]["enableEgress"] is False
    assert text.splitlines()[1].startswith("    \"")  # its indent kept
    assert os.stat(real_dir / "mesh.json").st_mode & 0o777 == 0o640  # its mode kept


def test_read_only_configmap_mount(tmp_path: Path) -> None:
    """A ConfigMap mount: ..data -> ..2026_x/, files are symlinks, the volume is read-only. A
    bind mount made read-only stands in for the volume (needs root and a private mount
    namespace: run in `unshare -m`)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    mnt = tmp_path / "cm"
    ts = mnt / "..2026_11_30_00_00_00.1"
    ts.mkdir(parents=True)
    (ts / "mesh.yaml").write_text(MULTI)
    (mnt / "..data").symlink_to(ts.name)
    (mnt / "mesh.yaml").symlink_to("..data/mesh.yaml")
    script = (f"mount --bind {mnt} {mnt} && mount -o remount,bind,ro {mnt} && "
              f"{sys.executable} -m fastproxy patch meshconfig fsm-mesh-config -n fsm-system "
              f"--type=merge -p '{SEED_PATCH}' --config {mnt}")
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                       capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Read-only file system" in r.stderr and "ConfigMap" in r.stderr, r.stderr
    assert (ts / "mesh.yaml").read_text() == MULTI


# -- with a running sidecar ---------------------------------------------------------------------

@pytest.mark.netns
def test_running_sidecar_picks_up_patches(topo: netkit.Topology, fastproxy_exe: str) -> None:
    """The seed's command denies new connections within a second; every refused patch leaves
    the file byte-for-byte unchanged and the sidecar serving on the last good configuration."""
    folder = topo.tmp / "patch-cfg"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o755)
    cfg = netkit.write_config(folder, "mesh.yaml", MULTI)
    sc = netkit.Sidecar(topo.app, fastproxy_exe, topo.tmp, config=str(folder), drain_seconds=2)
    with sc.serving():
        assert topo.client("connect", netkit.HTTPBIN, netkit.BANNER_PORT)["outcome"] == "data"
        for extra, _ in REFUSALS:
            before = cfg.read_bytes()
            r = topo.app.run([fastproxy_exe, "patch", "meshconfig", "fsm-mesh-config", "-n",
                              "fsm-system", "--type=merge", *extra, "--config", str(folder)],
                             check=False)
            assert r.returncode == 1
            assert cfg.read_bytes() == before
        assert sc.stats()["reloads"] == 0
        assert topo.client("connect", netkit.HTTPBIN, netkit.BANNER_PORT)["outcome"] == "data"
        for egress, outcome in ((False, "reset"), (True, "data")):
            p = json.dumps({"spec": {"traffic": {"enableEgress": egress}}})
            r = topo.app.run([fastproxy_exe, "patch", "meshconfig", "fsm-mesh-config", "-n",
                              "fsm-system", "-p", p, "--type=merge", "--config", str(folder)])
            assert r.returncode == 0, r.stderr
            t0 = time.monotonic()
            while True:
                got = topo.client("connect", netkit.HTTPBIN, netkit.BANNER_PORT)["outcome"]
                if got == outcome:
                    break
                assert time.monotonic() - t0 < 1.0, f"still {got} after 1 s"
                time.sleep(0.02)
        st = sc.stats()
        assert st["reloads"] == 2 and st["reload_failures"] == 0
        # a bad hand edit: one refused line, the sidecar keeps serving
        netkit.write_config(folder, "zz-bad.yaml", "apiVersion: v1\nkind: [\n")
        deadline = time.monotonic() + 2
        while sc.stats()["reload_failures"] == 0:
            assert time.monotonic() < deadline, "the bad file was never looked at"
            time.sleep(0.05)
        assert topo.client("connect", netkit.HTTPBIN, netkit.BANNER_PORT)["outcome"] == "data"
    log = sc.log_tail(20000)
    assert log.count("reload (files changed): applied") == 2, log
    assert "reload (files changed): refused, keeping generation 3: " in log, log
    assert "zz-bad.yaml" in log


def test_hostile_patches_and_files(folder: Path) -> None:
    before = (folder / "mesh.yaml").read_bytes()
    deep = '{"spec":' * 5000 + "1" + "}" * 5000
    r = cli("meshconfig", "fsm-mesh-config", "-n", "fsm-system", "--type=merge", "-p", deep,
            "--config", str(folder))
    assert r.returncode == 1 and "Traceback" not in r.stderr and "--patch" in r.stderr, r.stderr
    deep = '{"spec":' * 200 + "1" + "}" * 200
    r = cli("meshconfig", "fsm-mesh-config", "-n", "fsm-system", "--type=merge", "-p", deep,
            "--config", str(folder))
    assert r.returncode == 1 and "nested deeper" in r.stderr, r.stderr
    assert (folder / "mesh.yaml").read_bytes() == before
    # a file with YAML aliases (a billion-laughs shape) is left alone, quickly
    bomb = MULTI.replace("  sidecar:\n    logLevel: error\n",
                         "  sidecar:\n    logLevel: error\n  observability:\n"
                         "    a: &a [x, x, x, x, x, x, x, x, x, x]\n"
                         + "".join(f"    {chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, "
                                   f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                                   f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                                   f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
                                   for i in range(8)))
    (folder / "mesh.yaml").write_text(bomb)
    t0 = time.monotonic()
    r = cli("meshconfig", "fsm-mesh-config", "-n", "fsm-system", "--type=merge", "-p", SEED_PATCH,
            "--config", str(folder))
    assert r.returncode == 1 and "aliases" in r.stderr, r.stderr
    assert time.monotonic() - t0 < 10
    assert (folder / "mesh.yaml").read_text() == bomb


def test_folder_with_a_broken_file_is_refused(folder: Path) -> None:
    """The result must load with the rest of the folder: a folder that does not load today is
    not made worse, and nothing is written."""
    (folder / "zz-broken.yaml").write_text("apiVersion: v1\nkind: [\n")
    before = (folder / "mesh.yaml").read_bytes()
    r = cli("meshconfig", "fsm-mesh-config", "-n", "fsm-system", "--type=merge", "-p", SEED_PATCH,
            "--config", str(folder))
    assert r.returncode == 1 and "zz-broken.yaml" in r.stderr, r.stderr
    assert (folder / "mesh.yaml").read_bytes() == before
