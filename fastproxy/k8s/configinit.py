"""`fastproxy config init`: the MeshConfig and ConfigMaps `fsm install` would create, from FSM's
Helm value names, so that an install step like `fsm install --set fsm.enableEgress=false` maps to
`fastproxy config init --set fsm.enableEgress=false -o DIR`.

Written (to DIR, or all to stdout):
* `meshconfig.yaml`: the MeshConfig `fsm-mesh-config` in the control-plane namespace (what
  fsm-bootstrap creates from the chart's preset);
* `preset-mesh-config.yaml`: the chart's ConfigMap `preset-mesh-config` (its
  `preset-mesh-config.json` key holds the MeshConfig spec as JSON);
* `fastproxy-config.yaml`: one ConfigMap `fastproxy-config` per application namespace
  (`--namespace`, repeatable), holding the MeshConfig as `meshconfig.yaml`: what `fastproxy
  inject` mounts into every pod at /etc/fastproxy.

Values not given take the chart's defaults (fastproxy's embedded default MeshConfig). `--set`
reads Helm's syntax: `key=value`, several joined by commas, lists as `{a,b}`. A key fastproxy does
not know is refused, with the list of the known ones.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

from fastproxy.config.loader import DEFAULT_MESHCONFIG_PATH, load, read_documents
from fastproxy.errors import ConfigErrors, FastproxyError
from fastproxy.k8s._yaml import dump, dump_all

LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")


class ValuesError(FastproxyError):
    """A `--set` value is unknown or of the wrong type."""


@dataclass(frozen=True)
class Value:
    """One Helm value: where it lands in the MeshConfig spec and what it holds."""

    key: str
    path: Tuple[str, ...]   # under spec; () : not in the spec (namespace)
    kind: str               # bool | int | str | port-list | cidr-list | str-list | one of enum
    choices: Tuple[str, ...] = ()


def _v(key: str, path: str, kind: str, *choices: str) -> Value:
    return Value(key, tuple(path.split(".")) if path else (), kind, tuple(choices))


_FEATURE_FLAGS = ("enableEgressPolicy", "enableSnapshotCacheMode", "enableAsyncProxyServiceMapping",
                  "enableIngressBackendPolicy", "enableAccessControlPolicy", "enableAccessCertPolicy",
                  "enableSidecarPrettyConfig", "enableSidecarActiveHealthChecks", "enableRetryPolicy",
                  "enablePluginPolicy", "enableAutoDefaultRoute",
                  "enableValidateGatewayListenerHostname", "enableValidateHTTPRouteHostnames",
                  "enableValidateGRPCRouteHostnames", "enableValidateTLSRouteHostnames",
                  "useEndpointSlicesForGateway", "dropRouteRuleIfNoAvailableBackends")

#: FSM's chart value names (charts/fsm/templates/preset-mesh-config.yaml) -> the MeshConfig spec
VALUES: Dict[str, Value] = {v.key: v for v in [
    _v("fsm.fsmNamespace", "", "str"),
    _v("fsm.enableEgress", "traffic.enableEgress", "bool"),
    _v("fsm.enablePermissiveTrafficPolicy", "traffic.enablePermissiveTrafficPolicyMode", "bool"),
    _v("fsm.trafficInterceptionMode", "traffic.interceptionMode", "enum", "PodLevel", "NodeLevel"),
    _v("fsm.http1PerRequestLoadBalancing", "traffic.http1PerRequestLoadBalancing", "bool"),
    _v("fsm.http2PerRequestLoadBalancing", "traffic.http2PerRequestLoadBalancing", "bool"),
    _v("fsm.serviceAccessMode", "traffic.serviceAccessMode", "enum", "mixed", "domain", "ip"),
    _v("fsm.outboundPortExclusionList", "traffic.outboundPortExclusionList", "port-list"),
    _v("fsm.inboundPortExclusionList", "traffic.inboundPortExclusionList", "port-list"),
    _v("fsm.outboundIPRangeExclusionList", "traffic.outboundIPRangeExclusionList", "cidr-list"),
    _v("fsm.outboundIPRangeInclusionList", "traffic.outboundIPRangeInclusionList", "cidr-list"),
    _v("fsm.networkInterfaceExclusionList", "traffic.networkInterfaceExclusionList", "str-list"),
    _v("fsm.sidecar.sidecarLogLevel", "sidecar.logLevel", "enum", *LOG_LEVELS),
    _v("fsm.sidecarLogLevel", "sidecar.logLevel", "enum", *LOG_LEVELS),  # older charts' name
    _v("fsm.sidecar.sidecarTimeout", "sidecar.sidecarTimeout", "int"),
    _v("fsm.sidecar.compressConfig", "sidecar.compressConfig", "bool"),
    _v("fsm.sidecar.sidecarDisabledMTLS", "sidecar.sidecarDisabledMTLS", "bool"),
    _v("fsm.enablePrivilegedInitContainer", "sidecar.enablePrivilegedInitContainer", "bool"),
    _v("fsm.maxDataPlaneConnections", "sidecar.maxDataPlaneConnections", "int"),
    _v("fsm.configResyncInterval", "sidecar.configResyncInterval", "str"),
    _v("fsm.localProxyMode", "sidecar.localProxyMode", "enum", "Localhost", "PodIP"),
    _v("fsm.controllerLogLevel", "observability.fsmLogLevel", "str"),
    _v("fsm.enableDebugServer", "observability.enableDebugServer", "bool"),
] + [_v(f"fsm.featureFlags.{f}", f"featureFlags.{f}", "bool") for f in _FEATURE_FLAGS]}

MESHCONFIG_NAME = "fsm-mesh-config"
DEFAULT_FSM_NAMESPACE = "fsm-system"
CONFIGMAP_NAME = "fastproxy-config"


def known_keys() -> List[str]:
    return sorted(VALUES)


def split_set(text: str) -> List[Tuple[str, str]]:
    """Helm's `--set` syntax: `a=1,b={x,y}` -> [("a", "1"), ("b", "{x,y}")]."""
    parts: List[str] = []
    depth = 0
    cur = ""
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise ValuesError(f"unbalanced '}}' in {text!r}", field="--set")
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if depth:
        raise ValuesError(f"unbalanced '{{' in {text!r}", field="--set")
    parts.append(cur)
    out = []
    for p in parts:
        key, sep, val = p.partition("=")
        if not sep or not key.strip():
            raise ValuesError(f"expected KEY=VALUE, got {p!r}", field="--set")
        out.append((key.strip(), val))
    return out


def _items(key: str, raw: str) -> List[str]:
    raw = raw.strip()
    if raw.startswith("{") and raw.endswith("}"):
        raw = raw[1:-1]
    return [x.strip() for x in raw.split(",") if x.strip()]


def coerce(v: Value, raw: str) -> Any:
    """The typed value of `raw` for `v` (Helm's string form)."""
    def bad(what: str) -> ValuesError:
        return ValuesError(f"{raw!r} is not {what}", field=v.key)

    if v.kind == "bool":
        if raw.lower() not in ("true", "false"):
            raise bad("true or false")
        return raw.lower() == "true"
    if v.kind == "int":
        digits = raw.strip().removeprefix("-")
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 18):
            raise bad("an integer")
        return int(raw)
    if v.kind == "enum":
        if raw not in v.choices:
            raise bad("one of " + ", ".join(v.choices))
        return raw
    if v.kind == "str":
        if not raw:
            raise bad("a non-empty string")
        return raw
    items = _items(v.key, raw)
    if v.kind == "port-list":
        out = []
        for i in items:
            if not (i.isascii() and i.isdigit() and len(i) <= 5) or not 1 <= int(i) <= 65535:
                raise ValuesError(f"{i!r} is not a port (1..65535)", field=v.key)
            out.append(int(i))
        return out
    return items  # cidr-list / str-list: the loader checks the CIDRs and names


def parse_sets(sets: Sequence[str]) -> Dict[str, Any]:
    """Every `--set` argument -> {known key: typed value}; unknown keys refused."""
    values: Dict[str, Any] = {}
    for s in sets:
        for key, raw in split_set(s):
            if key not in VALUES:
                raise ValuesError(f"unknown value {key!r}; known values:\n  " + "\n  ".join(known_keys()),
                                  field="--set")
            values[key] = coerce(VALUES[key], raw)
    return values


def meshconfig(values: Dict[str, Any]) -> Dict[str, Any]:
    """The MeshConfig object: the chart's defaults with `values` on top."""
    base = read_documents(str(DEFAULT_MESHCONFIG_PATH))[0]
    spec = copy.deepcopy(base["spec"])
    for key, val in values.items():
        path = VALUES[key].path
        if not path:
            continue
        node = spec
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = val
    ns = values.get("fsm.fsmNamespace", DEFAULT_FSM_NAMESPACE)
    return {"apiVersion": "config.flomesh.io/v1alpha3", "kind": "MeshConfig",
            "metadata": {"name": MESHCONFIG_NAME, "namespace": ns}, "spec": spec}


def manifests(values: Dict[str, Any], namespaces: Sequence[str]) -> Dict[str, List[Dict[str, Any]]]:
    """file name -> the objects it holds."""
    mc = meshconfig(values)
    ns = mc["metadata"]["namespace"]
    preset = {"apiVersion": "v1", "kind": "ConfigMap",
              "metadata": {"name": "preset-mesh-config", "namespace": ns},
              "data": {"preset-mesh-config.json": json.dumps(mc["spec"], indent=2) + "\n"}}
    mounted = dump(mc)
    cms = [{"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": CONFIGMAP_NAME, "namespace": n,
                         "labels": {"app.kubernetes.io/part-of": "fastproxy"}},
            "data": {"meshconfig.yaml": mounted}} for n in namespaces]
    return {"meshconfig.yaml": [mc], "preset-mesh-config.yaml": [preset], "fastproxy-config.yaml": cms}


def _check(mc: Dict[str, Any]) -> None:
    """Load the MeshConfig with fastproxy's own loader (what the sidecar will do)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="fastproxy-config-init-") as d:
        path = os.path.join(d, "meshconfig.yaml")
        with open(path, "w", encoding="utf-8") as f:
            f.write(dump(mc))
        try:
            load([path])
        except ConfigErrors as e:
            for one in e.errors:
                one.file = "--set"
            raise


def register(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "config", help="write configuration manifests (config init)",
        description="Configuration manifests.")
    sub = p.add_subparsers(dest="config_command", metavar="COMMAND")
    sub.required = True
    i = sub.add_parser(
        "init", help="write the MeshConfig and ConfigMaps `fsm install` would",
        description="Write the MeshConfig (fsm-mesh-config), the chart's preset-mesh-config "
                    "ConfigMap and one fastproxy-config ConfigMap per application namespace (what "
                    "`fastproxy inject` mounts), taking FSM's Helm value names: e.g. "
                    "`--set fsm.enableEgress=false` for `fsm install --set fsm.enableEgress=false`.")
    i.add_argument("-o", "--output", default=None, metavar="DIR",
                   help="folder to write meshconfig.yaml, preset-mesh-config.yaml and "
                        "fastproxy-config.yaml into (default: all to stdout)")
    i.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a Helm value (repeatable; several comma-separated; lists as {a,b})")
    i.add_argument("-n", "--namespace", action="append", default=None, metavar="NS",
                   help="application namespace to write a fastproxy-config ConfigMap for "
                        "(repeatable; default: default)")
    i.add_argument("--list-values", action="store_true", help="print the known value names and exit")
    i.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.list_values:
        for k in known_keys():
            print(k)
        return 0
    values = parse_sets(args.set)
    files = manifests(values, args.namespace or ["default"])
    _check(files["meshconfig.yaml"][0])
    if args.output is None:
        sys.stdout.write(dump_all([o for objs in files.values() for o in objs]))
        return 0
    os.makedirs(args.output, exist_ok=True)
    for name, objs in files.items():
        path = os.path.join(args.output, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"# written by `fastproxy config init{''.join(' --set ' + s for s in args.set)}`\n")
            f.write(dump_all(objs))
        print(f"wrote {path}", file=sys.stderr)
    return 0

