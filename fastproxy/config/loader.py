"""Reading configuration: files and folders of YAML/JSON manifests -> one validated `Config`.

* A path may be a file (read whatever its name) or a folder: its `*.yaml`, `*.yml` and `*.json`
  entries, sorted by name, not recursing; names starting with `.` are skipped (a ConfigMap mounted
  by Kubernetes holds `..data` and `..2024_...` entries beside symlinks to the real files).
* A YAML file may hold several `---` documents; a JSON file holds one. A `kind: List` document
  (what `kubectl get -o yaml` prints) contributes each of its `items`. Empty documents are skipped.
* Duplicate mapping keys are errors (YAML would silently keep the last one). YAML timestamps stay
  strings.
* Kinds fastproxy does not use (Deployments, ServiceAccounts, other FSM policies, ...) are listed in
  `Config.ignored` and otherwise skipped.
* Every problem is collected; if there is any, `load` raises `ConfigErrors` with all of them and
  nothing of the load is used.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from fastproxy.config._check import Doc, MISSING, check_keys, type_name
from fastproxy.config import meshconfig as mc
from fastproxy.config import objects as ob
from fastproxy.config import pipyjson as pj
from fastproxy.errors import ConfigError, ConfigErrors

DEFAULT_MESHCONFIG_PATH = Path(__file__).resolve().parent.parent / "data" / "meshconfig-default.yaml"
EXTENSIONS = (".yaml", ".yml", ".json")
TOP_KEYS = ("apiVersion", "kind", "metadata", "spec", "status")

PathLike = Union[str, "os.PathLike[str]"]


# ---------------------------------------------------------------------------------------------
# YAML/JSON decoding


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and leaves timestamps as strings."""


_StrictLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    loader.flatten_mapping(node)
    out: Dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, f"unhashable mapping key {type_name(key)}", key_node.start_mark)
        if key in out:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        out[key] = loader.construct_object(value_node, deep=deep)
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _no_dup_pairs(pairs: List[Tuple[str, Any]]) -> dict:
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def read_documents(path: str) -> List[Any]:
    """The decoded documents of one file. Raises ConfigError naming the file (and line)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror or e}", file=path) from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start})", file=path) from e
    if path.endswith(".json"):
        try:
            return [json.loads(text, object_pairs_hook=_no_dup_pairs)]
        except json.JSONDecodeError as e:
            raise ConfigError(f"JSON syntax error at line {e.lineno}, column {e.colno}: {e.msg}",
                              file=path) from e
        except ValueError as e:
            raise ConfigError(f"JSON error: {e}", file=path) from e
    try:
        return list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(p for p in (e.context, e.problem) if p)
        raise ConfigError(f"YAML syntax error{where}: {what}", file=path) from e
    except yaml.YAMLError as e:
        raise ConfigError(f"YAML error: {e}", file=path) from e


def collect_files(paths: Sequence[PathLike]) -> Tuple[List[str], List[ConfigError]]:
    """The files a list of paths names, in load order, each once."""
    files: List[str] = []
    errors: List[ConfigError] = []
    seen: set = set()

    def add(p: str) -> None:
        real = os.path.realpath(p)
        if real not in seen:
            seen.add(real)
            files.append(p)

    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            try:
                names = sorted(os.listdir(p))
            except OSError as e:
                errors.append(ConfigError(f"cannot list folder: {e.strerror or e}", file=p))
                continue
            for name in names:
                full = os.path.join(p, name)
                if name.startswith(".") or not name.endswith(EXTENSIONS) or not os.path.isfile(full):
                    continue
                add(full)
        elif os.path.isfile(p):
            add(p)
        elif os.path.lexists(p):
            errors.append(ConfigError("not a regular file or folder", file=p))
        else:
            errors.append(ConfigError("no such file or folder", file=p))
    return files, errors


# ---------------------------------------------------------------------------------------------
# The result


@dataclass
class Config:
    """One validated load: the MeshConfig and the objects that matter to the sidecar.

    `service_account`/`namespace` say which sidecar this is; an Egress applies only when one of
    its sources names exactly that pair (see `applicable_egresses`)."""

    mesh: mc.MeshConfig
    files: List[str] = field(default_factory=list)
    egresses: List[ob.Egress] = field(default_factory=list)
    http_route_groups: List[ob.HTTPRouteGroup] = field(default_factory=list)
    upstream_traffic_settings: List[ob.UpstreamTrafficSetting] = field(default_factory=list)
    services: List[ob.Service] = field(default_factory=list)
    pipy: Optional[pj.PipyConfig] = None
    service_account: Optional[str] = None
    namespace: Optional[str] = None
    #: `file: Kind ns/name (apiVersion)` of documents of kinds fastproxy does not use
    ignored: List[str] = field(default_factory=list)

    def applicable_egresses(self) -> List[ob.Egress]:
        """The Egress objects whose sources include this sidecar's identity (none when the
        identity is unknown)."""
        if not self.service_account or not self.namespace:
            return []
        return [e for e in self.egresses if e.applies_to(self.service_account, self.namespace)]

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-able dump (admin /config_dump)."""
        return {
            "files": list(self.files),
            "identity": {"serviceAccount": self.service_account, "namespace": self.namespace},
            "meshConfig": self.mesh.to_dict(),
            "meshConfigSource": self.mesh.file or "<embedded default>",
            "egresses": [e.to_dict() for e in self.egresses],
            "applicableEgresses": [e.ref for e in self.applicable_egresses()],
            "httpRouteGroups": [h.to_dict() for h in self.http_route_groups],
            "upstreamTrafficSettings": [u.to_dict() for u in self.upstream_traffic_settings],
            "services": [s.to_dict() for s in self.services],
            "pipy": self.pipy.to_dict() if self.pipy else None,
            "ignored": list(self.ignored),
        }

    def summary(self) -> str:
        m = self.mesh
        src = "" if m.file else " (embedded default)"
        counts = [(len(self.egresses), "Egress"), (len(self.http_route_groups), "HTTPRouteGroup"),
                  (len(self.upstream_traffic_settings), "UpstreamTrafficSetting"),
                  (len(self.services), "Service"), (1 if self.pipy else 0, "PipyConfig"),
                  (len(self.ignored), "ignored")]
        objs = ", ".join(f"{n} {what}" for n, what in counts if n)
        return (f"{m.ref}{src}: enableEgress={str(m.enable_egress).lower()} "
                f"enableEgressPolicy={str(m.enable_egress_policy).lower()} "
                f"logLevel={m.log_level} sidecarTimeout={m.sidecar_timeout}s"
                + (f"; {objs}" if objs else ""))


# ---------------------------------------------------------------------------------------------
# Documents -> objects


@dataclass
class _Raw:
    """One decoded Kubernetes-style document with its identity."""

    file: str
    index: int  # document number in the file, from 0
    obj: Dict[str, Any]
    group: str
    version: str
    kind: str
    name: str
    namespace: str

    @property
    def ref(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


def _default_spec() -> Dict[str, Any]:
    docs = read_documents(str(DEFAULT_MESHCONFIG_PATH))
    return dict(docs[0]["spec"])


def _identify(file: str, index: int, label: str, obj: Any, errors: List[ConfigError]) -> Optional[_Raw]:
    """Check the envelope (apiVersion, kind, metadata) of one document."""
    doc = Doc(file, label)
    if not isinstance(obj, dict):
        doc.err("", f"a document must be a mapping, not {type_name(obj)}")
        errors.extend(doc.errors)
        return None
    if pj.is_pipy_config(obj):
        return _Raw(file, index, obj, PIPY_GROUP, "", pj.KIND, "", "")
    api = obj.get("apiVersion", MISSING)
    kind = obj.get("kind", MISSING)
    meta = obj.get("metadata", MISSING)
    name = namespace = None
    if isinstance(meta, dict):
        name, namespace = meta.get("name"), meta.get("namespace", "default")
    if isinstance(kind, str) and kind:
        doc.obj = f"{kind} {namespace if isinstance(namespace, str) else '?'}/" \
                  f"{name if isinstance(name, str) and name else '?'}"
    if not isinstance(api, str) or not api:
        doc.err("apiVersion", "is required (a string like config.flomesh.io/v1alpha3)")
    if not isinstance(kind, str) or not kind:
        doc.err("kind", "is required (a string like MeshConfig)")
    if meta is MISSING or meta is None:
        doc.err("metadata", "is required (with at least a name)")
    elif not isinstance(meta, dict):
        doc.err("metadata", f"must be a mapping, not {type_name(meta)}")
    else:
        if not isinstance(name, str) or not name:
            doc.err("metadata.name", "is required (a non-empty string)")
        if not isinstance(namespace, str) or not namespace:
            doc.err("metadata.namespace", "must be a non-empty string")
    if doc.errors:
        errors.extend(doc.errors)
        return None
    group, _, version = api.rpartition("/")
    return _Raw(file, index, obj, group, version, kind, str(name), str(namespace or ""))


def _documents(file: str, errors: List[ConfigError]) -> List[_Raw]:
    try:
        docs = read_documents(file)
    except ConfigError as e:
        errors.append(e)
        return []
    out: List[_Raw] = []
    for i, d in enumerate(docs):
        if d is None:
            continue
        label = f"document {i + 1}"
        if isinstance(d, dict) and d.get("kind") == "List" and d.get("apiVersion") == "v1":
            items = d.get("items")
            if not isinstance(items, list):
                errors.append(ConfigError(f"must be a list, not {type_name(items)}", file=file,
                                          obj=f"List ({label})", field="items"))
                continue
            for j, item in enumerate(items):
                r = _identify(file, i, f"{label}, items[{j}]", item, errors)
                if r is not None:
                    out.append(r)
            continue
        r = _identify(file, i, label, d, errors)
        if r is not None:
            out.append(r)
    return out


PIPY_GROUP = "<pipy>"

#: (group, kind) -> (accepted apiVersions, parser)
_PARSERS: Dict[Tuple[str, str], Tuple[Tuple[str, ...], Any]] = {
    ("policy.flomesh.io", "Egress"): ((ob.EGRESS_API,), ob.parse_egress),
    ("specs.smi-spec.io", "HTTPRouteGroup"): ((ob.HRG_API,), ob.parse_http_route_group),
    ("policy.flomesh.io", "UpstreamTrafficSetting"): ((ob.UTS_API,), ob.parse_upstream_traffic_setting),
    ("", "Service"): (("v1",), ob.parse_service),
}


def load(paths: Sequence[PathLike] = (), service_account: Optional[str] = None,
         namespace: Optional[str] = None) -> Config:
    """Load and validate every object the paths hold, for the sidecar of `service_account` in
    `namespace` (either may be None: then no Egress applies). No paths at all: the embedded
    default. Raises ConfigErrors listing every problem found; nothing is half-applied."""
    files, errors = collect_files(paths)
    raws: List[_Raw] = []
    for f in files:
        raws.extend(_documents(f, errors))

    default_spec = _default_spec()
    meshes: List[mc.MeshConfig] = []
    pipys: List[pj.PipyConfig] = []
    ignored: List[str] = []
    parsed: Dict[str, List[Any]] = {"Egress": [], "HTTPRouteGroup": [], "UpstreamTrafficSetting": [],
                                    "Service": []}
    seen: Dict[Tuple[str, str, str], str] = {}
    egress_docs: Dict[int, Doc] = {}
    for r in raws:
        doc = Doc(r.file, r.ref if r.group != PIPY_GROUP else pj.KIND)
        api = f"{r.group}/{r.version}" if r.group else r.version
        if r.group == PIPY_GROUP:
            p = pj.parse_pipy(doc, r.obj)
            if p is not None:
                pipys.append(p)
        elif r.kind == mc.KIND and r.group == mc.GROUP:
            if api not in mc.API_VERSIONS:
                doc.err("apiVersion", f"unsupported version {api} (supported: {', '.join(mc.API_VERSIONS)})")
            else:
                check_keys(doc, r.obj, "", TOP_KEYS)
                m = mc.parse_meshconfig(doc, r.obj, r.name, r.namespace, default_spec)
                if m is not None:
                    m.document = r.index
                    meshes.append(m)
        elif (r.group, r.kind) in _PARSERS:
            versions, parse = _PARSERS[(r.group, r.kind)]
            key = (r.kind, r.namespace, r.name)
            if api not in versions:
                doc.err("apiVersion", f"unsupported version {api} (supported: {', '.join(versions)})")
            elif key in seen:
                doc.err("metadata.name", f"{r.ref} is defined twice (also in {seen[key]})")
            else:
                seen[key] = r.file
                if r.kind != "Service":
                    check_keys(doc, r.obj, "", TOP_KEYS)
                o = parse(doc, r.obj, r.name, r.namespace)
                if o is not None:
                    parsed[r.kind].append(o)
                    if r.kind == "Egress":
                        egress_docs[id(o)] = doc
        else:
            ignored.append(f"{r.file}: {r.ref} ({api})")
        errors.extend(doc.errors)

    hrgs = {(h.namespace, h.name): h for h in parsed["HTTPRouteGroup"]}
    utss = {(u.namespace, u.name): u for u in parsed["UpstreamTrafficSetting"]}
    for eg in parsed["Egress"]:
        doc = egress_docs[id(eg)]
        ob.resolve_egress(doc, eg, hrgs, utss)
        errors.extend(doc.errors)

    if len(meshes) > 1:
        where = ", ".join(f"{m.file}: {m.ref}" for m in meshes)
        errors.append(ConfigError(f"more than one MeshConfig ({where}); give exactly one",
                                  file=meshes[1].file, obj=meshes[1].ref))
    if len(pipys) > 1:
        errors.append(ConfigError(f"more than one Pipy sidecar config ({', '.join(p.file for p in pipys)})",
                                  file=pipys[1].file, obj=pipys[1].ref))
    mesh = meshes[0] if meshes else None
    pipy = pipys[0] if pipys else None
    if pipy is not None and not errors:
        mesh = _apply_pipy(pipy, mesh, errors)
    if errors:
        raise ConfigErrors(errors)
    return Config(mesh=mesh or default_meshconfig(), files=files, egresses=parsed["Egress"],
                  http_route_groups=parsed["HTTPRouteGroup"],
                  upstream_traffic_settings=parsed["UpstreamTrafficSetting"],
                  services=parsed["Service"], pipy=pipy, service_account=service_account,
                  namespace=namespace, ignored=ignored)


def _apply_pipy(pipy: pj.PipyConfig, mesh: Optional[mc.MeshConfig],
                errors: List[ConfigError]) -> mc.MeshConfig:
    """The mesh settings when a Pipy sidecar config is given: its Spec values on the default
    MeshConfig; alongside a MeshConfig, the two must agree (no silent precedence)."""
    values: Dict[str, Any] = {}
    if pipy.enable_egress is not None:
        values["enable_egress"] = pipy.enable_egress
    if pipy.log_level is not None:
        values["log_level"] = pipy.log_level
    if pipy.sidecar_timeout is not None:
        values["sidecar_timeout"] = pipy.sidecar_timeout
    if mesh is None:
        return dataclasses.replace(default_meshconfig(), **values)
    names = {"enable_egress": "Spec.Traffic.EnableEgress", "log_level": "Spec.SidecarLogLevel",
             "sidecar_timeout": "Spec.SidecarTimeout"}
    for attr, v in values.items():
        if getattr(mesh, attr) != v:
            errors.append(ConfigError(
                f"is {v!r} but {mesh.ref} in {mesh.file} says {getattr(mesh, attr)!r}; make them agree",
                file=pipy.file, obj=pipy.ref, field=names[attr]))
    return mesh


def default_meshconfig() -> mc.MeshConfig:
    """The embedded default MeshConfig (FSM's chart defaults)."""
    path = str(DEFAULT_MESHCONFIG_PATH)
    errs: List[ConfigError] = []
    raws = _documents(path, errs)
    if errs or len(raws) != 1:
        raise ConfigErrors(errs or [ConfigError("must hold exactly one MeshConfig", file=path)])
    doc = Doc(path, raws[0].ref)
    m = mc.parse_meshconfig(doc, raws[0].obj, raws[0].name, raws[0].namespace, {})
    if m is None:
        raise ConfigErrors(doc.errors)
    m.file = None
    return m


def default_config() -> Config:
    """The configuration with no files at all."""
    return Config(mesh=default_meshconfig(), files=[])
