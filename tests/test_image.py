"""The container image (Containerfile, built by tests/image/build.sh without any registry): its
own `fastproxy --version` and `fastproxy validate`, no compiler in it, and a relay through its own
`fastproxy run` (as UID 1500, rules loaded by its own `fastproxy iptables --apply` running the
injected init container's arguments) in test namespaces. The filesystem runs through `buildah
mount` + chroot (tests/image/run-in.sh), since an OCI runtime may not be usable here.

Slow (a debootstrap the first time, then a build of a few minutes): runs only with
FASTPROXY_IMAGE_TEST=1 (needs debootstrap, podman and buildah)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator, List

import pytest
import yaml

import netkit
from conftest import cannot_run
from netkit import Topology

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "tests/image/build.sh"
RUN_IN = ROOT / "tests/image/run-in.sh"

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.environ.get("FASTPROXY_IMAGE_TEST", "") in ("", "0"),
                       reason="image test: set FASTPROXY_IMAGE_TEST=1 (slow: builds the image)"),
]


@pytest.fixture(scope="module")
def image_root() -> Iterator[Path]:
    for tool in ("debootstrap", "podman", "buildah", "unshare", "chroot"):
        if shutil.which(tool) is None:
            cannot_run(f"needs {tool}")
    t0 = time.monotonic()
    r = subprocess.run(["bash", str(BUILD)], capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]
    tag, size = r.stdout.split()[-2:]
    print(f"\nimage {tag}: {int(size) / 1e6:.1f} MB, built in {time.monotonic() - t0:.0f} s")
    ctr = subprocess.run(["buildah", "from", "--pull-never", tag], capture_output=True, text=True,
                         check=True, timeout=120).stdout.strip()
    try:
        root = Path(subprocess.run(["buildah", "mount", ctr], capture_output=True, text=True,
                                   check=True, timeout=60).stdout.strip())
        yield root
    finally:
        subprocess.run(["buildah", "umount", ctr], capture_output=True, timeout=60)
        subprocess.run(["buildah", "rm", ctr], capture_output=True, timeout=60)


def in_image(root: Path, *cmd: str, user: str = "", read_only: bool = False) -> List[str]:
    return ["bash", str(RUN_IN), str(root), *(["--read-only"] if read_only else []),
            *(["--userspec", user] if user else []), *cmd]


def test_version_and_no_compiler(image_root: Path) -> None:
    import fastproxy

    r = subprocess.run(in_image(image_root, "fastproxy", "--version", user="1500:1500"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"fastproxy {fastproxy.__version__}"
    for cc in ("gcc", "g++", "cc", "c++", "x86_64-linux-gnu-gcc-12", "cpp", "ld"):
        assert not (image_root / "usr/bin" / cc).exists(), cc
    # the release build, not the debug one
    r = subprocess.run(in_image(image_root, "python", "-c", "import fastproxy._core as c; print(c.DEBUG)"),
                       capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr


def test_validate(image_root: Path) -> None:
    dest = image_root / "tmp/config"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(ROOT / "config", dest)
    r = subprocess.run(in_image(image_root, "fastproxy", "validate", "/tmp/config", "/tmp/config/examples"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count(": OK:") == 2
    (dest / "bad.yaml").write_text("apiVersion: config.flomesh.io/v1alpha3\nkind: MeshConfig\n"
                                   "metadata: {name: m}\nspec: {traffic: {enableEgress: maybe}}\n")
    r = subprocess.run(in_image(image_root, "fastproxy", "validate", "/tmp/config/bad.yaml"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "spec.traffic.enableEgress" in r.stderr


def test_relay_through_the_images_own_sidecar(image_root: Path, tmp_path: Path) -> None:
    """The pod as `fastproxy inject` writes it, run from the image: the init container's
    command, then the sidecar's as UID 1500 with its probe, then an app's traffic through it."""
    from fastproxy.k8s import inject as inj

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "curl"},
           "spec": {"serviceAccountName": "curl", "containers": [{"name": "app", "image": "x"}]}}
    pod["metadata"]["annotations"] = {inj.OUT_PORT_EXCLUDE: str(netkit.BANNER_PORT)}
    out, _ = inj.inject_text(yaml.safe_dump(pod), inj.InjectOptions())
    spec = yaml.safe_load(out)["spec"]
    init, side = spec["initContainers"][0], spec["initContainers"][1]
    cfg = image_root / inj.CONFIG_DIR.lstrip("/")
    shutil.rmtree(cfg, ignore_errors=True)
    cfg.mkdir(parents=True)
    import sys

    r = subprocess.run([str(Path(sys.executable).parent / "fastproxy"), "config", "init",
                        "--set", "fsm.enableEgress=false", "-n", "curl", "-o", str(tmp_path)],
                       capture_output=True, text=True, timeout=60, cwd="/")
    assert r.returncode == 0, r.stderr
    cm = list(yaml.safe_load_all((tmp_path / "fastproxy-config.yaml").read_text()))[0]
    for key, text in cm["data"].items():
        (cfg / key).write_text(text)
    (cfg / "egress.yaml").write_text("""apiVersion: policy.flomesh.io/v1alpha1
kind: Egress
metadata: {name: httpbin, namespace: curl}
spec:
  sources: [{kind: ServiceAccount, name: curl, namespace: curl}]
  hosts: [httpbin.test]
  ports: [{number: 80, protocol: http}]
""")
    os.chmod(cfg, 0o755)
    with Topology(prefix="fpimg") as topo:
        topo.start_servers(iperf=False)
        # as the pod runs them: read-only root filesystem (the init container's /run is writable)
        assert init["securityContext"]["readOnlyRootFilesystem"]
        assert side["securityContext"]["readOnlyRootFilesystem"]
        touch = topo.app.run(in_image(image_root, "touch", "/written", read_only=True), check=False,
                             timeout=30)
        assert touch.returncode != 0 and "Read-only file system" in touch.stderr
        topo.app.run(in_image(image_root, *init["command"], *init["args"], read_only=True), timeout=60)
        rules = topo.app.run(["iptables-save", "-t", "nat"], timeout=30).stdout
        assert "FSM_PROXY_OUTBOUND" in rules and str(netkit.BANNER_PORT) in rules
        env = {"SERVICE_ACCOUNT": "curl", "POD_NAMESPACE": "curl"}
        log = open(tmp_path / "sidecar.log", "wb")
        proc = topo.app.popen(in_image(image_root, *side["command"], *side["args"], user="1500:1500",
                                       read_only=True),
                              env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            probe = side["startupProbe"]["exec"]["command"]
            deadline = time.monotonic() + 30
            while topo.app.run(in_image(image_root, *probe, user="1500:1500"), check=False,
                               timeout=30).returncode != 0:
                assert proc.poll() is None, (tmp_path / "sidecar.log").read_text()
                assert time.monotonic() < deadline, "startup probe never passed"
                time.sleep(0.2)
            # allowed by the Egress (Host httpbin.test), denied otherwise (passthrough off),
            # the excluded port not intercepted at all
            r = topo.curl("-o", "/dev/null", "-w", "%{http_code}", "http://httpbin.test/get")
            assert r.stdout == "200", r.stderr
            r = topo.curl("-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: evil.test",
                          f"http://{netkit.HTTPBIN}/get")
            assert r.stdout == "403", r.stderr
            status, body = topo.app.http("GET", "127.0.0.1", 15000, "/stats")
            before = json.loads(body)
            assert status == 200 and before["cx_accepted"] >= 2, before
            banner = topo.client("banner", "banner.test", netkit.BANNER_PORT)
            assert banner["banner"].startswith("220 "), banner
            after = json.loads(topo.app.http("GET", "127.0.0.1", 15000, "/stats")[1])
            assert after["cx_accepted"] == before["cx_accepted"]  # excluded: not intercepted
            for p in ("readinessProbe", "livenessProbe"):
                assert topo.app.run(in_image(image_root, *side[p]["exec"]["command"], user="1500:1500"),
                                    check=False, timeout=30).returncode == 0, p
        finally:
            proc.terminate()
            try:
                rc = proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = proc.wait(timeout=10)
            log.close()
        assert rc == 0, (tmp_path / "sidecar.log").read_text()
