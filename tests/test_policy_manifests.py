"""The manifests of the policy end-to-end tests (test_policy_e2e.py imports them from here), and
`fastproxy validate` on them: the good set loads, and each kind of mistake an operator makes (a
wrong type, an unknown protocol, a port out of range, a CIDR typo) is rejected with the file, the
object and the field path in the message. Needs no root."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

import netkit

#: The service account and namespace of the sidecar under test (FSM's demo: curl/curl).
SA, NS = "curl", "curl"

MESHCONFIG = netkit.meshconfig({"traffic": {"enableEgress": False},
                                "featureFlags": {"enableEgressPolicy": True},
                                "sidecar": {"logLevel": "info", "sidecarTimeout": 4}})

SOURCES = f"""\
  sources:
  - kind: ServiceAccount
    name: {SA}
    namespace: {NS}
"""


def egress(name: str, body: str, sources: str = SOURCES, namespace: str = NS) -> str:
    """One Egress document; `body` holds the spec lines after `sources` (2-space indented)."""
    return (f"apiVersion: policy.flomesh.io/v1alpha1\nkind: Egress\nmetadata:\n  name: {name}\n"
            f"  namespace: {namespace}\nspec:\n{sources}{body}")


def route_group(name: str, matches: List[Tuple[str, str]]) -> str:
    """An HTTPRouteGroup with (match name, pathRegex) entries."""
    lines = [f"  - name: {m}\n    pathRegex: {rx!r}\n" for m, rx in matches]
    return (f"apiVersion: specs.smi-spec.io/v1alpha4\nkind: HTTPRouteGroup\nmetadata:\n"
            f"  name: {name}\n  namespace: {NS}\nspec:\n  matches:\n" + "".join(lines))


def service(name: str, cluster_ip: str, port: int) -> str:
    return (f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: mesh\n"
            f"spec:\n  clusterIP: {cluster_ip}\n  ports:\n  - name: http\n    port: {port}\n"
            f"    protocol: TCP\n")


#: The four kinds of mistake, each as (name, the bad Egress document, field path in the error).
BAD_EGRESSES: Dict[str, Tuple[str, str]] = {
    "wrong-type": (egress("bad-wrong-type", "  hosts: deny.test\n  ports:\n"
                                            "  - number: 80\n    protocol: http\n"),
                   "spec.hosts"),
    "unknown-protocol": (egress("bad-protocol", "  hosts:\n  - deny.test\n  ports:\n"
                                                "  - number: 80\n    protocol: htttp\n"),
                         "spec.ports[0].protocol"),
    "port-70000": (egress("bad-port", "  hosts:\n  - deny.test\n  ports:\n"
                                      "  - number: 70000\n    protocol: http\n"),
                   "spec.ports[0].number"),
    "cidr-typo": (egress("bad-cidr", "  ipAddresses:\n  - 192.0.2.0/24\n  - 192.0.2.300/32\n"
                                     "  ports:\n  - number: 9000\n    protocol: tcp\n"),
                  "spec.ipAddresses[1]"),
}


def validate(*paths: str) -> subprocess.CompletedProcess:
    """`fastproxy validate PATHS` with this interpreter's installed fastproxy (no sidecar, no
    root); run from / so that the source tree (without its built extension) is not imported."""
    exe = Path(sys.executable).parent / "fastproxy"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "fastproxy"]
    return subprocess.run([*cmd, "validate", *paths], capture_output=True, text=True,
                          timeout=60, cwd="/")


def test_demo_example_validates() -> None:
    root = Path(__file__).resolve().parent.parent / "config" / "examples"
    r = validate(str(root))
    assert r.returncode == 0, r.stderr
    assert "enableEgress=false" in r.stdout and "Egress" in r.stdout


@pytest.mark.parametrize("kind", sorted(BAD_EGRESSES))
def test_bad_manifest_is_rejected_with_file_and_field(tmp_path: Path, kind: str) -> None:
    doc, field = BAD_EGRESSES[kind]
    good = egress("good-one", "  hosts:\n  - httpbin.test\n  ports:\n"
                              "  - number: 80\n    protocol: http\n")
    f = tmp_path / "egress.yaml"
    f.write_text(good + "---\n" + doc)
    r = validate(str(f))
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout == ""  # nothing reported as loaded
    errors = r.stderr.strip().splitlines()
    name = doc.split("name: ", 1)[1].split("\n", 1)[0]
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{f}: Egress {NS}/{name}: {field}: "), errors
    # the same mistake in a folder is found too, and the good file beside it does not hide it
    (tmp_path / "mesh.yaml").write_text(MESHCONFIG)
    r = validate(str(tmp_path))
    assert r.returncode == 1 and f"{field}: " in r.stderr, r.stderr
