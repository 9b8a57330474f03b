"""`fastproxy inject`: add fastproxy to every pod template of a set of manifests, the way FSM's
injector adds its `fsm-init` container and Pipy sidecar.

For each Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job and
CronJob (and the items of a `kind: List`):
* an init container `fastproxy-init` running `fastproxy iptables --apply` as root with only
  NET_ADMIN and NET_RAW (every other capability dropped), the MeshConfig's interception lists
  merged with the pod's `flomesh.io/outbound-*` annotations;
* the sidecar `fastproxy` (`fastproxy run`), by default as a Kubernetes native sidecar (an init
  container with `restartPolicy: Always` placed right after `fastproxy-init`, so the pod's other
  init containers and its app containers start only once its startup probe passed), with
  `--legacy-sidecar` as the first app container (clusters before 1.29). It runs as UID/GID 1500
  (the UID the interception rules exempt), read-only root filesystem, no privilege escalation, all
  capabilities dropped, the RuntimeDefault seccomp profile;
* the mesh configuration mounted read-only from a ConfigMap at /etc/fastproxy, `SERVICE_ACCOUNT`,
  `POD_NAMESPACE`, `POD_NAME` and `POD_IP` from the downward API;
* startup/readiness probes on the admin's `/ready` and a liveness probe on `/stats`, as `exec`
  probes (`fastproxy probe`): the admin listens on 127.0.0.1 only, a kubelet `httpGet` probe
  would connect to the pod IP;
* the Prometheus annotations FSM's injector sets (`prometheus.io/scrape`, `prometheus.io/port`
  15010, `prometheus.io/path` /stats/prometheus), resource requests.

Injecting is idempotent: a template marked `fastproxy.flomesh.io/injected` first has what an
earlier injection added taken out. Templates annotated `flomesh.io/sidecar-injection: disabled`
and host-network pods (the rules would land in the node's namespace) are left alone; objects
without a pod template pass through unchanged.
"""
from __future__ import annotations

import argparse
import copy
import ipaddress
import re
import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from fastproxy import __version__
from fastproxy.k8s._yaml import ManifestError, dump, dump_all, load_all

INIT_NAME = "fastproxy-init"
SIDECAR_NAME = "fastproxy"
CONFIG_VOLUME = "fastproxy-config"
RUN_VOLUME = "fastproxy-init-run"
CONFIG_DIR = "/etc/fastproxy"
DEFAULT_IMAGE = f"localhost/fastproxy:{__version__}"
DEFAULT_CONFIGMAP = "fastproxy-config"

INJECTED = "fastproxy.flomesh.io/injected"
INJECTION = "flomesh.io/sidecar-injection"  # FSM's per-pod/namespace opt-out annotation
OUT_CIDR_EXCLUDE = "flomesh.io/outbound-ip-range-exclusion-list"
OUT_CIDR_INCLUDE = "flomesh.io/outbound-ip-range-inclusion-list"
OUT_PORT_EXCLUDE = "flomesh.io/outbound-port-exclusion-list"
IN_PORT_EXCLUDE = "flomesh.io/inbound-port-exclusion-list"

PROXY_UID = 1500
OUTBOUND_PORT = 15001
ADMIN_PORT = 15000
METRICS_PORT = 15010
METRICS_PATH = "/stats/prometheus"

#: kind -> where its pod template is ("" : the object is the pod)
TEMPLATE_PATHS: Dict[str, Tuple[str, ...]] = {
    "Pod": (),
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "ReplicationController": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
}


@dataclass(frozen=True)
class InjectOptions:
    """What `fastproxy inject` takes from its command line."""

    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    configmap: str = DEFAULT_CONFIGMAP
    legacy_sidecar: bool = False
    workers: int = 2
    cpu_request: str = "50m"
    memory_request: str = "32Mi"


@dataclass
class InjectResult:
    """One document's outcome: `injected`, `skipped` (why), or `unchanged` (no pod template)."""

    ref: str
    outcome: str
    reason: str = ""


def _ref(obj: Dict[str, Any]) -> str:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
    return f"{obj.get('kind', '?')} {meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def _split(value: Any, what: str, ref: str, annotation: str) -> List[str]:
    if not isinstance(value, str):
        raise ManifestError(f"must be a comma-separated string, not {type(value).__name__}",
                            obj=ref, field=f"metadata.annotations[{annotation}]")
    return [v.strip() for v in value.split(",") if v.strip()]


def _ports(value: Any, ref: str, annotation: str) -> List[int]:
    out = []
    for item in _split(value, "port", ref, annotation):
        if not (item.isascii() and item.isdigit() and len(item) <= 5) or not 1 <= int(item) <= 65535:
            raise ManifestError(f"{item!r} is not a port (1..65535)", obj=ref,
                                field=f"metadata.annotations[{annotation}]")
        if int(item) not in out:
            out.append(int(item))
    return out


def _cidrs(value: Any, ref: str, annotation: str) -> List[str]:
    out = []
    for item in _split(value, "cidr", ref, annotation):
        try:
            net = str(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ManifestError(f"{item!r} is not an IP range (CIDR)", obj=ref,
                                field=f"metadata.annotations[{annotation}]") from None
        if net not in out:
            out.append(net)
    return out


def init_container_args(annotations: Dict[str, Any], ref: str) -> List[str]:
    """`fastproxy iptables` arguments for a pod template's annotations (validated like FSM's
    injector: a bad port or CIDR fails the injection)."""
    args = ["iptables", "--apply", "--config", CONFIG_DIR, "--proxy-uid", str(PROXY_UID),
            "--outbound-port", str(OUTBOUND_PORT)]
    for cidr in _cidrs(annotations.get(OUT_CIDR_EXCLUDE, ""), ref, OUT_CIDR_EXCLUDE):
        args += ["--exclude-cidr", cidr]
    for cidr in _cidrs(annotations.get(OUT_CIDR_INCLUDE, ""), ref, OUT_CIDR_INCLUDE):
        args += ["--include-cidr", cidr]
    for port in _ports(annotations.get(OUT_PORT_EXCLUDE, ""), ref, OUT_PORT_EXCLUDE):
        args += ["--exclude-port", str(port)]
    # Inbound traffic is not intercepted (fastproxy is an egress sidecar): the inbound list is
    # checked as FSM checks it and has nothing to exclude from.
    _ports(annotations.get(IN_PORT_EXCLUDE, ""), ref, IN_PORT_EXCLUDE)
    return args


def _exec_probe(path: str, period: int, failures: int) -> Dict[str, Any]:
    return {"exec": {"command": ["fastproxy", "probe", path, "--admin-port", str(ADMIN_PORT)]},
            "periodSeconds": period, "timeoutSeconds": 3, "failureThreshold": failures}


def init_container(opts: InjectOptions, args: List[str]) -> Dict[str, Any]:
    return {
        "name": INIT_NAME,
        "image": opts.image,
        "imagePullPolicy": opts.image_pull_policy,
        "command": ["fastproxy"],
        "args": args,
        "securityContext": {
            "runAsUser": 0,
            "runAsGroup": 0,
            "runAsNonRoot": False,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}},
        "volumeMounts": [
            {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True},
            # iptables takes its lock in /run/xtables.lock
            {"name": RUN_VOLUME, "mountPath": "/run"},
        ],
    }


def sidecar_container(opts: InjectOptions) -> Dict[str, Any]:
    def field(path: str) -> Dict[str, Any]:
        return {"fieldRef": {"apiVersion": "v1", "fieldPath": path}}

    c: Dict[str, Any] = {
        "name": SIDECAR_NAME,
        "image": opts.image,
        "imagePullPolicy": opts.image_pull_policy,
        "command": ["fastproxy"],
        "args": ["run", "--config", CONFIG_DIR, "--workers", str(opts.workers),
                 "--outbound-port", str(OUTBOUND_PORT), "--admin-port", str(ADMIN_PORT)],
        "env": [
            {"name": "SERVICE_ACCOUNT", "valueFrom": field("spec.serviceAccountName")},
            {"name": "POD_NAMESPACE", "valueFrom": field("metadata.namespace")},
            {"name": "POD_NAME", "valueFrom": field("metadata.name")},
            {"name": "POD_IP", "valueFrom": field("status.podIP")},
        ],
        "ports": [{"name": "proxy-metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": True,
            "privileged": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "resources": {"requests": {"cpu": opts.cpu_request, "memory": opts.memory_request}},
        "volumeMounts": [{"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True}],
        # the app starts only once egress works (native sidecar: the kubelet waits for this)
        "startupProbe": _exec_probe("/ready", 1, 30),
        "readinessProbe": _exec_probe("/ready", 10, 3),
        "livenessProbe": _exec_probe("/stats", 10, 3),
    }
    if not opts.legacy_sidecar:
        c["restartPolicy"] = "Always"
    return c


def volumes(opts: InjectOptions) -> List[Dict[str, Any]]:
    return [{"name": CONFIG_VOLUME, "configMap": {"name": opts.configmap}},
            {"name": RUN_VOLUME, "emptyDir": {"medium": "Memory", "sizeLimit": "1Mi"}}]


def _strip(spec: Dict[str, Any]) -> None:
    """Take out what an earlier injection added (pod spec, in place)."""
    ours = (INIT_NAME, SIDECAR_NAME)
    for key in ("initContainers", "containers"):
        if isinstance(spec.get(key), list):
            spec[key] = [c for c in spec[key] if not (isinstance(c, dict) and c.get("name") in ours)]
            if key == "initContainers" and not spec[key]:
                del spec[key]
    if isinstance(spec.get("volumes"), list):
        spec["volumes"] = [v for v in spec["volumes"]
                           if not (isinstance(v, dict) and v.get("name") in (CONFIG_VOLUME, RUN_VOLUME))]
        if not spec["volumes"]:
            del spec["volumes"]


def _clash(spec: Dict[str, Any], ref: str) -> None:
    for key in ("initContainers", "containers", "volumes"):
        for item in spec.get(key) or []:
            if isinstance(item, dict) and item.get("name") in (INIT_NAME, SIDECAR_NAME, CONFIG_VOLUME, RUN_VOLUME):
                raise ManifestError(f"already has a {key[:-1]} named {item['name']!r} that fastproxy "
                                    f"did not inject (no {INJECTED} annotation)", obj=ref, field=f"spec.{key}")


def _refuse_proxy_uid(spec: Dict[str, Any], ref: str) -> None:
    """An app running as the proxy's UID would be exempt from interception: its egress would
    bypass the sidecar silently (FSM reserves UID 1500 the same way)."""
    ours = (INIT_NAME, SIDECAR_NAME)
    pod_uid = (spec.get("securityContext") or {}).get("runAsUser") if isinstance(
        spec.get("securityContext"), dict) else None
    for key in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(key) or []):
            if not isinstance(c, dict) or c.get("name") in ours:
                continue
            raw = c.get("securityContext")
            sc: Dict[str, Any] = raw if isinstance(raw, dict) else {}
            uid = sc.get("runAsUser", pod_uid)
            if uid == PROXY_UID:
                where = f"spec.{key}[{i}].securityContext.runAsUser" if "runAsUser" in sc \
                    else "spec.securityContext.runAsUser"
                raise ManifestError(f"runs as UID {PROXY_UID}, the proxy's UID: its traffic would "
                                    f"bypass the sidecar", obj=ref, field=where)


def inject_template(template: Dict[str, Any], opts: InjectOptions, ref: str) -> InjectResult:
    """Inject into one pod template (or Pod) in place."""
    meta = template.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise ManifestError("must be a mapping", obj=ref, field="metadata")
    ann = meta.get("annotations")
    if ann is None:
        ann = {}
    if not isinstance(ann, dict):
        raise ManifestError("must be a mapping", obj=ref, field="metadata.annotations")
    spec = template.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("containers"), list):
        raise ManifestError("a pod template needs spec.containers", obj=ref, field="spec.containers")
    if str(ann.get(INJECTION, "")).lower() in ("disabled", "false", "no", "off"):
        return InjectResult(ref, "skipped", f"{INJECTION}: {ann[INJECTION]}")
    if spec.get("hostNetwork") is True:
        return InjectResult(ref, "skipped", "hostNetwork: the interception rules would change the node")
    args = init_container_args(ann, ref)
    _refuse_proxy_uid(spec, ref)
    if ann.get(INJECTED):
        _strip(spec)
    else:
        _clash(spec, ref)
    ann = dict(ann)
    ann[INJECTED] = __version__
    ann["prometheus.io/scrape"] = "true"
    ann["prometheus.io/port"] = str(METRICS_PORT)
    ann["prometheus.io/path"] = METRICS_PATH
    meta["annotations"] = ann

    init = init_container(opts, args)
    side = sidecar_container(opts)
    existing_init = list(spec.get("initContainers") or [])
    if opts.legacy_sidecar:
        # the app's own init containers run before the interception rules exist: nothing would
        # serve their redirected connections yet
        spec["initContainers"] = existing_init + [init]
        spec["containers"] = [side] + list(spec["containers"])
    else:
        spec["initContainers"] = [init, side] + existing_init
    spec["volumes"] = list(spec.get("volumes") or []) + volumes(opts)
    return InjectResult(ref, "injected")


def _template(obj: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    path = TEMPLATE_PATHS.get(obj.get("kind"))  # type: ignore[arg-type]
    if path is None:
        return None
    node: Any = obj
    for key in path:
        if not isinstance(node, dict) or not isinstance(node.get(key), dict):
            return None
        node = node[key]
    return node if isinstance(node, dict) else None


def inject_object(obj: Any, opts: InjectOptions) -> Tuple[Any, List[InjectResult]]:
    """A copy of one document with fastproxy injected into its pod template(s)."""
    if not isinstance(obj, dict):
        return obj, []
    if obj.get("kind") == "List" and isinstance(obj.get("items"), list):
        out = dict(obj)
        results: List[InjectResult] = []
        items = []
        for item in obj["items"]:
            new, res = inject_object(item, opts)
            items.append(new)
            results += res
        out["items"] = items
        return out, results
    tpl = _template(obj)
    if tpl is None:
        return obj, [InjectResult(_ref(obj), "unchanged")]
    new = copy.deepcopy(obj)
    return new, [inject_template(_template(new), opts, _ref(obj))]  # type: ignore[arg-type]


_DOC_START = re.compile(r"(?m)^(?=---(?:[ \t]|$))")


def _pieces(text: str, docs: List[Any], source: str) -> Optional[List[Tuple[str, Any]]]:
    """The stream cut at its `---` lines, each piece with its document (None: only comments),
    or None when cutting it that way does not give back exactly the parsed documents."""
    out: List[Tuple[str, Any]] = []
    for piece in (p for p in _DOC_START.split(text) if p):
        try:
            found = load_all(piece, source)
        except ManifestError:
            return None
        if len(found) > 1:
            return None
        out.append((piece, found[0] if found else None))
    # a column-0 `---` always starts a document in YAML (it may not occur inside a scalar), so
    # the same count means the same documents; comparing them could take exponential time on
    # aliases ("billion laughs")
    if sum(d is not None for _, d in out) != len(docs):
        return None
    return out


def inject_text(text: str, opts: InjectOptions, source: str = "<stdin>") -> Tuple[str, List[InjectResult]]:
    """Inject into every document of a YAML stream; the YAML out and what happened to each.
    Documents nothing was injected into are written back as they were read, comments included
    (when the stream can be cut at its `---` lines; otherwise re-serialized)."""
    docs = load_all(text, source)
    results: List[InjectResult] = []

    def one(d: Any) -> Tuple[Any, bool]:
        try:
            new, res = inject_object(d, opts)
        except ManifestError as e:
            e.file = e.file or source
            raise
        results.extend(res)
        return new, any(r.outcome == "injected" for r in res)

    pieces = _pieces(text, docs, source)
    if pieces is None:
        return dump_all([one(d)[0] for d in docs]), results
    parts: List[str] = []
    for piece, d in pieces:
        if d is not None:
            new, changed = one(d)
            if changed:
                piece = "---\n" + dump(new)
            elif not piece.startswith("---") and parts:
                piece = "---\n" + piece
        parts.append(piece if piece.endswith("\n") else piece + "\n")
    return "".join(parts), results


def register(subparsers: "argparse._SubParsersAction") -> None:
    p = subparsers.add_parser(
        "inject", help="add the fastproxy init container and sidecar to pod templates",
        description="Read Kubernetes manifests (multi-document YAML) and add fastproxy to every "
                    "pod template (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, "
                    "ReplicationController, Job, CronJob): an init container that loads the "
                    "interception rules (fastproxy iptables --apply) and the sidecar, as a native "
                    "sidecar (Kubernetes >= 1.29) unless --legacy-sidecar. Idempotent; other "
                    "objects pass through unchanged. The pod's flomesh.io/outbound-ip-range-"
                    "exclusion-list, -inclusion-list and flomesh.io/outbound-port-exclusion-list "
                    "annotations are added to the MeshConfig's lists.")
    p.add_argument("-f", "--filename", default="-", metavar="FILE", help="manifests to read (- : stdin)")
    p.add_argument("-o", "--output", default="-", metavar="FILE", help="where to write (- : stdout)")
    p.add_argument("--image", default=DEFAULT_IMAGE, help=f"fastproxy image ({DEFAULT_IMAGE})")
    p.add_argument("--image-pull-policy", default="IfNotPresent",
                   choices=("Always", "IfNotPresent", "Never"), help="(IfNotPresent)")
    p.add_argument("--configmap", default=DEFAULT_CONFIGMAP,
                   help="ConfigMap holding the mesh configuration, in the pod's namespace "
                        f"(written by `fastproxy config init`; {DEFAULT_CONFIGMAP})")
    p.add_argument("--legacy-sidecar", action="store_true",
                   help="put the sidecar among the containers (clusters before Kubernetes 1.29)")
    p.add_argument("--workers", type=int, default=2, help="sidecar worker threads (2)")
    p.add_argument("--cpu-request", default="50m", help="sidecar CPU request (50m)")
    p.add_argument("--memory-request", default="32Mi", help="sidecar memory request (32Mi)")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise ManifestError("must be at least 1", field="--workers")
    opts = InjectOptions(image=args.image, image_pull_policy=args.image_pull_policy,
                         configmap=args.configmap, legacy_sidecar=args.legacy_sidecar,
                         workers=args.workers, cpu_request=args.cpu_request,
                         memory_request=args.memory_request)
    source = args.filename
    if source == "-":
        text = sys.stdin.read()
    else:
        try:
            with open(source, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise ManifestError(f"cannot read: {e}", file=source) from e
    out, results = inject_text(text, opts, source)
    for r in results:
        if r.outcome == "skipped":
            print(f"fastproxy inject: {r.ref}: skipped ({r.reason})", file=sys.stderr)
    if args.output == "-":
        sys.stdout.write(out)
    else:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(out)
    return 0
