"""Bounded configuration (issue 7 items 3 and 6, "Bounded configuration"; issue 8 item 2): every
hostile file is refused by `fastproxy validate` and `fastproxy run` with file, object and field,
quickly, in little memory, with no traceback; each cap of fastproxy/config/limits.py holds; and a
property test over random and mutated YAML/JSON lets nothing but ConfigError out of the loader."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Tuple

import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

import badconfig
from badconfig import BAD, IGNORED_JSON, Bad
from fastproxy.config import limits, load
from fastproxy.config.files import ConfigChanging, Snapshot, read_snapshot
from fastproxy.config.watch import ConfigWatcher, check_successor
from fastproxy.errors import ConfigError, ConfigErrors

FASTPROXY = str(Path(sys.executable).parent / "fastproxy")
RSS_LIMIT_KB = 100 * 1024


def good_folder(folder: Path) -> Path:
    """A valid folder: a deny-all MeshConfig and an ignored JSON document."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mesh.yaml").write_text(badconfig.meshconfig(False))
    (folder / "extra.json").write_text(IGNORED_JSON)
    return folder


def run_measured(argv: List[str], timeout: float = 30.0) -> Tuple[int, str, float, int]:
    """(exit status, stdout+stderr, seconds, peak RSS in KiB) of a command. The peak comes from
    GNU time (a child forked from this big test process would count its pages until exec)."""
    with tempfile.NamedTemporaryFile() as rss:
        t0 = time.monotonic()
        r = subprocess.run(["/usr/bin/time", "-q", "-o", rss.name, "-f", "%M", *argv],
                           capture_output=True, text=True, timeout=timeout, cwd="/")
        seconds = time.monotonic() - t0
        peak = int(Path(rss.name).read_text().split()[-1])
    return r.returncode, r.stdout + r.stderr, seconds, peak


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_validate_refuses_with_file_object_field(tmp_path: Path, bad: Bad) -> None:
    folder = good_folder(tmp_path / "cfg")
    path = bad.write(folder)
    rc, out, seconds, rss = run_measured([FASTPROXY, "validate", str(folder)])
    assert rc == 1, out
    assert "Traceback" not in out, out
    assert out.startswith(str(path) + ":"), out
    for want in bad.expect:
        assert want in out, (want, out)
    assert seconds < 10, seconds
    assert rss < RSS_LIMIT_KB, f"validate peaked at {rss} KiB"


@pytest.mark.parametrize("bad", BAD, ids=[b.id for b in BAD])
def test_start_refuses_with_one_line(tmp_path: Path, bad: Bad) -> None:
    folder = good_folder(tmp_path / "cfg")
    path = bad.write(folder)
    # ports 0: should the configuration ever load, nothing fixed is taken; it must not load
    rc, out, seconds, rss = run_measured(
        [FASTPROXY, "run", "--config", str(folder), "--outbound-port", "0", "--admin-port", "0",
         "--connect-to-host"], timeout=20)
    assert rc == 1, out
    lines = out.strip().splitlines()
    assert len(lines) == 1 and "configuration rejected: " + str(path) in lines[0], out
    assert all(w in lines[0] for w in bad.expect), out
    assert rss < RSS_LIMIT_KB, f"run peaked at {rss} KiB"


def test_folder_without_documents_refuses_to_start(tmp_path: Path) -> None:
    rc, out, _, _ = run_measured([FASTPROXY, "run", "--config", str(tmp_path),
                                  "--outbound-port", "0", "--admin-port", "0"])
    assert rc == 1 and len(out.strip().splitlines()) == 1, out
    assert "holds no configuration document" in out, out


# --- each cap ---------------------------------------------------------------------------------


def refusal(paths) -> str:
    with pytest.raises(ConfigErrors) as ei:
        load(paths)
    return str(ei.value)


def egress(name: str, hosts: List[str]) -> str:
    return yaml.safe_dump({"apiVersion": "policy.flomesh.io/v1alpha1", "kind": "Egress",
                           "metadata": {"name": name, "namespace": "app"},
                           "spec": {"sources": [{"kind": "ServiceAccount", "name": "a",
                                                 "namespace": "app"}],
                                    "hosts": hosts, "ports": [{"number": 443, "protocol": "https"}]}})


def test_hundred_thousand_hosts_load(tmp_path: Path) -> None:
    hosts = [f"host-{i:06d}.example.test" for i in range(100_000)]
    f = tmp_path / "eg.yaml"
    f.write_text(egress("big", ["h.test"]).replace("  - h.test\n", "".join(f"  - {h}\n" for h in hosts)))
    cfg = load([f], service_account="a", namespace="app")
    assert cfg.egresses[0].hosts[-1] == hosts[-1] and len(cfg.egresses[0].hosts) == 100_000


def test_hosts_cap_names_the_egress(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_HOSTS", 5)
    (tmp_path / "a.yaml").write_text(egress("a", [f"a{i}.test" for i in range(3)]))
    (tmp_path / "b.yaml").write_text(egress("b", [f"b{i}.test" for i in range(3)]))
    msg = refusal([tmp_path])
    assert f"{tmp_path / 'b.yaml'}: Egress app/b: spec.hosts: more than 5 hosts" in msg


def test_routes_cap_names_the_route_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_ROUTES", 3)
    hrg = {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
           "metadata": {"name": "r", "namespace": "app"},
           "spec": {"matches": [{"name": f"m{i}", "pathRegex": f"/p{i}"} for i in range(4)]}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(hrg))
    assert "HTTPRouteGroup app/r: spec.matches: more than 3 route matches" in refusal([tmp_path])


def test_routes_times_hosts_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_ROUTE_ENTRIES", 20)
    hrg = {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
           "metadata": {"name": "r", "namespace": "app"},
           "spec": {"matches": [{"name": f"m{i}", "pathRegex": f"/p{i}"} for i in range(5)]}}
    eg = yaml.safe_load(egress("e", [f"h{i}.test" for i in range(5)]))
    eg["spec"]["ports"] = [{"number": 80, "protocol": "http"}]
    eg["spec"]["matches"] = [{"apiGroup": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
                              "name": "r"}]
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(hrg) + "---\n" + yaml.safe_dump(eg))
    msg = refusal([tmp_path])
    assert "Egress app/e: spec.matches: more than 20 routes once each host" in msg, msg


def test_error_count_and_length_are_bounded(tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"
    keys = "".join(f"  {'k' * 1000}{i}: 1\n" for i in range(1000))  # (YAML keys: <1024)
    f.write_text(badconfig.HEAD + "spec:\n" + keys)
    with pytest.raises(ConfigErrors) as ei:
        load([f])
    errs = ei.value.errors
    assert len(errs) == limits.MAX_ERRORS + 1 and errs[-1].message == "... and 900 more errors"
    assert all(len(str(e)) < 1000 for e in errs) and "unknown field" in str(errs[0])


def test_total_bytes_and_file_count_caps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good_folder(tmp_path)
    (tmp_path / "more.yaml").write_text("# padding\n" * 100 + IGNORED_JSON)
    monkeypatch.setattr(limits, "MAX_TOTAL_BYTES", 1000)
    assert "together are larger than the 1000-byte limit" in refusal([tmp_path])
    monkeypatch.setattr(limits, "MAX_TOTAL_BYTES", 1 << 20)
    monkeypatch.setattr(limits, "MAX_FILES", 2)
    assert "3 configuration files, more than the limit of 2" in refusal([tmp_path])


def test_string_length_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits, "MAX_SCALAR_CHARS", 100)
    f = tmp_path / "m.yaml"
    f.write_text(badconfig.HEAD + "spec:\n  observability: {tracing: {address: " + "x" * 101 + "}}\n")
    assert "spec.observability.tracing.address: a string longer than 100" in refusal([f])
    j = tmp_path / "m.json"
    j.write_text(json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                             "data": {"k": "y" * 101}}))
    assert "ConfigMap default/c: data.k: a string longer than 100" in refusal([j])


@pytest.mark.parametrize("text,want", [
    ("a: &a [1, *a]\n", "a[1]: alias *a refers to a node that contains it"),
    ("a: " + "9" * 5000 + "\n", "cannot decode"),
    ("a: !!binary 'not base64!'\n", "base64"),
    ("a: 1\na: 2\n", "duplicate key 'a'"),
    # 400 aliases of a 100 KB string: 40 M characters once expanded (what /config_dump writes)
    ("a: &a " + "x" * 100_000 + "\nb: [" + "*a, " * 400 + "*a]\n", "b[334]: more than 33554432 characters"),
    ("- " * 3000 + "x\n", "nested deeper than 100"),
    ("{" * 5000, "nested deeper than 100"),
])
def test_hostile_yaml(tmp_path: Path, text: str, want: str) -> None:
    f = tmp_path / "x.yaml"
    f.write_text(text)
    assert want in refusal([f])


@pytest.mark.parametrize("pattern", ["a{4294967296}", "(" * 1000 + "a" + ")" * 1000])
def test_regex_that_crashed_the_loader(tmp_path: Path, pattern: str) -> None:
    # (issue 7 item 3: OverflowError and RecursionError; whichever engine validates, a field error)
    hrg = {"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
           "metadata": {"name": "r", "namespace": "app"},
           "spec": {"matches": [{"name": "m", "pathRegex": pattern}]}}
    f = tmp_path / "r.json"
    f.write_text(json.dumps(hrg))
    msg = refusal([f])
    assert f"{f}: HTTPRouteGroup app/r: spec.matches[0].pathRegex: " in msg, msg
    assert "regular expression" in msg and "Traceback" not in msg, msg


def test_pipy_port_keys_are_ascii_decimal(tmp_path: Path) -> None:
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"Spec": {}, "Outbound": {"TrafficMatches": {"\u00b2": [], "8\u0663": []},
                                                      "ClustersConfigs": {"c": {"Endpoints": {"h.test:\u00b9": {}}}}}}))
    msg = refusal([f])
    assert "Outbound.TrafficMatches.\u00b2: port key must be a decimal port" in msg


# --- a folder read as a whole -----------------------------------------------------------------


def test_snapshot_refuses_a_torn_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = good_folder(tmp_path / "cfg")
    import fastproxy.config.files as files
    real = files.read_file

    def read_then_write(path: str, budget=None) -> bytes:
        data = real(path, budget)
        if path.endswith("extra.json"):  # a writer appends while the folder is being read
            with open(folder / "mesh.yaml", "a") as f:
                f.write("# more\n")
        return data

    monkeypatch.setattr(files, "read_file", read_then_write)
    with pytest.raises(ConfigChanging):
        read_snapshot([folder])
    with pytest.raises(ConfigChanging):
        load([folder])


def test_watcher_waits_for_the_files_to_settle(tmp_path: Path) -> None:
    folder = good_folder(tmp_path / "cfg")
    old = time.time() - 10
    for f in folder.iterdir():
        os.utime(f, (old, old))
    w = ConfigWatcher([folder], settle=0.5)
    assert not w.changed()
    (folder / "mesh.yaml").write_text("")  # an editor's truncate
    assert not w.changed() and 0 < w.next_wait(1.0) <= 0.52
    time.sleep(0.6)
    assert w.changed()
    w.mark(read_snapshot([folder]).signature)
    assert not w.changed()
    # a file renamed over a name (Kubernetes, fastproxy patch, most editors) is read at once
    tmp = folder / ".mesh.yaml.tmp"
    tmp.write_text(badconfig.meshconfig(True))
    tmp.rename(folder / "mesh.yaml")
    assert w.changed()


def test_a_reload_never_falls_back_to_the_embedded_default(tmp_path: Path) -> None:
    folder = good_folder(tmp_path / "cfg")
    old = load([folder])
    (folder / "mesh.yaml").unlink()  # the extra document alone still loads...
    new = load([folder])
    assert new.mesh.file is None and new.mesh.enable_egress  # ...on the default: passthrough
    with pytest.raises(ConfigError) as ei:
        check_successor(old, new)
    assert "MeshConfig fsm-system/fsm-mesh-config is no longer in the configuration" in str(ei.value)
    check_successor(new, new)  # started without a MeshConfig: nothing to lose


# --- robustness: only ConfigError escapes -------------------------------------------------------

SEEDS = [
    badconfig.meshconfig(False),
    badconfig.HEAD + "spec:\n  observability:\n" + badconfig._bomb_lines("    ")[:120],
    egress("e", ["a.test", "*.b.test"]),
    json.dumps({"Spec": {"SidecarLogLevel": "error", "Traffic": {"EnableEgress": False}},
                "Outbound": json.loads(badconfig.pipy_endpoint_without_port())["Outbound"]}),
    "---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: Service, metadata: {name: s}}\n",
]
TOKENS = ["[", "]", "{", "}", ": ", ", ", "- ", "\n", "  ", "&a ", "*a", "<<: ", "!!", "---\n",
          "'", '"', "\\", "#", "?", "|", ">", "%", "@", "\t", "\x00", "\ufeff", "9" * 30, "null",
          "true", "0x", "1e999", ".inf", "kind: MeshConfig", "spec", "Endpoints", "\u00b2"]


def mutate(seed: str, rnd: random.Random, n: int) -> str:
    s = seed
    for _ in range(n):
        i = rnd.randrange(len(s) + 1)
        op = rnd.randrange(4)
        if op == 0:
            s = s[:i] + rnd.choice(TOKENS) + s[i:]
        elif op == 1:
            s = s[:i] + s[i + rnd.randrange(1, 8):]
        elif op == 2 and s:
            j = rnd.randrange(len(s))
            s = s[:i] + s[j:j + rnd.randrange(1, 40)] + s[i:]
        else:
            s = s[:i]  # truncated, as a reader may see a file being written
    return s


@settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.sampled_from(SEEDS), rnd=st.randoms(use_true_random=False),
       n=st.integers(1, 6), ext=st.sampled_from([".yaml", ".json"]),
       extra=st.lists(st.sampled_from(TOKENS), max_size=20).map("".join))
def test_loader_lets_only_config_errors_out(seed: str, rnd: random.Random, n: int, ext: str,
                                            extra: str) -> None:
    raw = (mutate(seed, rnd, n) + extra).encode(errors="surrogatepass")
    name = "/nonexistent/c" + ext  # the bytes are handed over as an already read snapshot
    try:
        cfg = load([name], service_account="app", namespace="app",
                   snapshot=Snapshot(files=[name], contents=[raw]))
    except ConfigError:
        return
    json.dumps(cfg.to_dict())  # a loaded configuration can be dumped (/config_dump)
