"""Hostile configuration files (issue 7 items 3 and 6, issue 8 item 2), shared by the loader
tests and the running-sidecar tests: each is a file name, its bytes, and what the refusal must
name (the field path, or a word of the message)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List

from fastproxy.config import limits

HEAD = ("apiVersion: config.flomesh.io/v1alpha3\nkind: MeshConfig\n"
        "metadata: {name: fsm-mesh-config, namespace: fsm-system}\n")


def meshconfig(egress: bool) -> str:
    return HEAD + f"spec:\n  traffic: {{enableEgress: {str(egress).lower()}}}\n"


#: a ConfigMap: a valid document of a kind fastproxy ignores (a folder's harmless JSON file)
IGNORED_JSON = json.dumps({"apiVersion": "v1", "kind": "ConfigMap",
                           "metadata": {"name": "other", "namespace": "app"}, "data": {}})


def _bomb_lines(indent: str) -> str:
    # 9 levels of 10 aliases each: 10^9 nodes once expanded, 200 bytes of text
    out = indent + "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 9):
        refs = ", ".join([f"*a{i - 1}"] * 10)
        out += f"{indent}a{i}: &a{i} [{refs}]\n"
    return out


def deep_yaml(n: int = 800) -> bytes:
    # block nesting inside the MeshConfig's opaque spec.observability, then flow nesting
    body = "".join("  " * (i + 2) + f"k{i}:\n" for i in range(n // 2))
    return (HEAD + "spec:\n  observability:\n" + body + "  " * (n // 2 + 2) + "x: "
            + "[" * (n // 2) + "]" * (n // 2) + "\n").encode()


def deep_json(n: int = 800) -> bytes:
    return ('{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"}, "data": '
            + "[" * n + "]" * n + "}").encode()


def bomb_top() -> bytes:
    return _bomb_lines("").encode()


def bomb_observability() -> bytes:
    return (HEAD + "spec:\n  traffic: {enableEgress: false}\n  observability:\n"
            + _bomb_lines("    ")).encode()


def big_file(size: int = 50 << 20) -> bytes:
    head = ("apiVersion: policy.flomesh.io/v1alpha1\nkind: Egress\n"
            "metadata: {name: big, namespace: app}\nspec:\n  hosts:\n")
    line = "  - host-0000000000.example.test\n"
    return (head + line * ((size - len(head)) // len(line) + 1)).encode()


def many_documents(n: int = limits.MAX_DOCUMENTS * 3) -> bytes:
    return ("---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n" * n).encode()


def pipy_endpoint_without_port() -> bytes:
    return json.dumps({
        "Spec": {"ServiceIdentity": "app.app"},
        "Outbound": {
            "TrafficMatches": {"80": [{"Port": 80, "Protocol": "http",
                                       "HttpHostPort2Service": {"httpbin.test": {"RuleName": "r"}},
                                       "HttpServiceRouteRules": {"r": {"RouteRules": [
                                           {"Path": "/get", "TargetClusters": {"c": 100}}]}}}]},
            "ClustersConfigs": {"c": {"Endpoints": {"httpbin.test": {"Weight": 100}}}},
        }}).encode()


@dataclass
class Bad:
    id: str
    name: str                   # file name (its extension picks YAML or JSON)
    content: Callable[[], bytes]
    expect: List[str]           # each must appear in the refusal

    def write(self, folder: Path) -> Path:
        path = Path(folder) / self.name
        tmp = path.with_name("." + self.name + ".tmp")
        tmp.write_bytes(self.content())
        tmp.chmod(0o644)
        tmp.rename(path)  # the reader sees the whole file or none of it
        return path


BAD: List[Bad] = [
    Bad("deep-yaml", "mesh.yaml", deep_yaml,
        ["MeshConfig fsm-system/fsm-mesh-config", "spec.observability.k0.k1", "nested deeper"]),
    Bad("deep-json", "extra.json", deep_json, ["ConfigMap default/d", "data[0][0]", "nested deeper"]),
    Bad("alias-bomb", "mesh.yaml", bomb_top, ["document 1", "a5[", "aliases"]),
    Bad("alias-bomb-observability", "mesh.yaml", bomb_observability,
        ["MeshConfig fsm-system/fsm-mesh-config", "spec.observability.a", "aliases"]),
    Bad("50MB", "mesh.yaml", big_file, ["bytes, larger than"]),
    Bad("many-documents", "mesh.yaml", many_documents, ["documents"]),
    Bad("endpoint-without-port", "extra.json", pipy_endpoint_without_port,
        ["PipyConfig app.app", "Outbound.ClustersConfigs.c.Endpoints.httpbin.test", "no port"]),
    Bad("empty", "mesh.yaml", lambda: b"", ["holds no configuration document"]),
]
