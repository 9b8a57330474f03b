"""Reading configuration: files and folders of YAML/JSON manifests -> one validated `Config`.

* A path may be a file (read whatever its name) or a folder: its `*.yaml`, `*.yml` and `*.json`
  entries, sorted by name, not recursing (fastproxy.config.files). All files are read first, as
  one snapshot, then decoded (fastproxy.config.decode), within the bounds of
  fastproxy.config.limits.
* A YAML file may hold several `---` documents; a JSON file holds one. A `kind: List` document
  (what `kubectl get -o yaml` prints) contributes each of its `items`. Empty documents are skipped,
  but a file with no document at all (empty, only comments: typically a file caught between an
  editor's truncate and its write) is an error, and so are paths that hold no document: only a
  load with no paths at all stands on the embedded default.
* Duplicate mapping keys are errors (YAML would silently keep the last one). YAML timestamps stay
  strings.
* Kinds fastproxy does not use (Deployments, ServiceAccounts, other FSM policies, ...) are listed in
  `Config.ignored` and otherwise skipped.
* Every problem is collected; if there is any, `load` raises `ConfigErrors` with all of them and
  nothing of the load is used.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from fastproxy.config._check import Doc, MISSING, check_keys, type_name
from fastproxy.config import limits
from fastproxy.config.decode import Budget, StrictLoader, decode
from fastproxy.config.files import (  # noqa: F401  (EXTENSIONS, collect_files: re-exported)
    EXTENSIONS, Snapshot, collect_files, read_file, read_snapshot,
)
from fastproxy.config import meshconfig as mc
from fastproxy.config import objects as ob
from fastproxy.config import pipyjson as pj
from fastproxy.errors import ConfigError, ConfigErrors

DEFAULT_MESHCONFIG_PATH = Path(__file__).resolve().parent.parent / "data" / "meshconfig-default.yaml"
TOP_KEYS = ("apiVersion", "kind", "metadata", "spec", "status")

PathLike = Union[str, "os.PathLike[str]"]

#: the loader's YAML reading (fastproxy.config.decode), under the name fastproxy.patch imports
_StrictLoader = StrictLoader


def read_documents(path: str) -> List[Any]:
    """The decoded documents of one file, within the limits. Raises ConfigError naming the
    file (and line)."""
    return decode(read_file(path), path)


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


def _read_embedded() -> bytes:
    """The embedded default's bytes (part of the package: not a configuration file, so not
    counted against the limits of the files a load reads)."""
    with open(DEFAULT_MESHCONFIG_PATH, "rb") as f:
        return f.read()


def _default_spec() -> Dict[str, Any]:
    docs = decode(_read_embedded(), str(DEFAULT_MESHCONFIG_PATH))
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


def _documents(file: str, raw: bytes, budget: Budget, errors: List[ConfigError]) -> List[_Raw]:
    try:
        docs = decode(raw, file, budget)
    except ConfigError as e:
        errors.append(e)
        return []
    if all(d is None for d in docs):
        errors.append(ConfigError("holds no configuration document (an empty file, or one being "
                                  "written?)", file=file))
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
            budget.documents -= len(items)
            if budget.documents < 0:
                errors.append(ConfigError(f"more than {limits.MAX_DOCUMENTS} documents in the "
                                          f"configuration", file=file, obj=f"List ({label})",
                                          field="items"))
                return out
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
         namespace: Optional[str] = None, snapshot: Optional[Snapshot] = None) -> Config:
    """Load and validate every object the paths hold, for the sidecar of `service_account` in
    `namespace` (either may be None: then no Egress applies). No paths at all: the embedded
    default. `snapshot`: the files already read (`read_snapshot(paths)`). Raises ConfigErrors
    listing every problem found (ConfigChanging when the files changed while being read);
    nothing is half-applied, and no other exception escapes."""
    try:
        snap = snapshot if snapshot is not None else (read_snapshot(paths) if paths else Snapshot())
        return _load(paths, snap, service_account, namespace)
    except ConfigError:
        raise
    except (RecursionError, MemoryError) as e:  # a safety net: the limits should prevent these
        where = os.fspath(paths[0]) if len(paths) == 1 else None
        raise ConfigErrors([ConfigError(f"configuration too large or deep to load "
                                        f"({type(e).__name__})", file=where)]) from None


def _load(paths: Sequence[PathLike], snap: Snapshot, service_account: Optional[str],
          namespace: Optional[str]) -> Config:
    errors: List[ConfigError] = list(snap.errors)
    files = snap.files
    budget = Budget()
    raws: List[_Raw] = []
    for f, raw in zip(files, snap.contents):
        if raw is not None:
            raws.extend(_documents(f, raw, budget, errors))
    if paths and not raws and not errors:
        where = ", ".join(os.fspath(p) for p in paths)
        errors.append(ConfigError("holds no configuration document; give a MeshConfig (without "
                                  "any --config path the embedded default applies)", file=where))

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

    _check_totals(parsed["Egress"], parsed["HTTPRouteGroup"], pipys, errors)
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
    if len(errors) > limits.MAX_ERRORS:
        more = len(errors) - limits.MAX_ERRORS
        errors = errors[:limits.MAX_ERRORS] + [ConfigError(f"... and {more} more errors")]
    if errors:
        raise ConfigErrors(errors)
    return Config(mesh=mesh or default_meshconfig(), files=files, egresses=parsed["Egress"],
                  http_route_groups=parsed["HTTPRouteGroup"],
                  upstream_traffic_settings=parsed["UpstreamTrafficSetting"],
                  services=parsed["Service"], pipy=pipy, service_account=service_account,
                  namespace=namespace, ignored=ignored)


def _check_totals(egresses: List[ob.Egress], hrgs: List[ob.HTTPRouteGroup],
                  pipys: List[pj.PipyConfig], errors: List[ConfigError]) -> None:
    """The total hosts and routes caps; the error names the object that crosses one."""
    hosts = routes = entries = 0
    for eg in egresses:
        hosts += len(eg.hosts)
        if hosts > limits.MAX_HOSTS:
            errors.append(ConfigError(f"more than {limits.MAX_HOSTS} hosts in the configuration",
                                      file=eg.file, obj=eg.ref, field="spec.hosts"))
            return
        # the data plane holds each route once per host of the Egress that references it
        entries += len(eg.hosts) * sum(len(g.matches) for g in eg.route_groups)
        if entries > limits.MAX_ROUTE_ENTRIES:
            errors.append(ConfigError(
                f"more than {limits.MAX_ROUTE_ENTRIES} routes once each host is given its "
                f"route groups' matches ({len(eg.hosts)} hosts here)", file=eg.file, obj=eg.ref,
                field="spec.matches"))
            return
    for h in hrgs:
        routes += len(h.matches)
        if routes > limits.MAX_ROUTES:
            errors.append(ConfigError(f"more than {limits.MAX_ROUTES} route matches in the "
                                      f"configuration", file=h.file, obj=h.ref, field="spec.matches"))
            return
    for p in pipys:
        for m in p.matches:
            hosts += len(m.hosts)
            entries += sum(len(r or ()) for r in m.routes.values())  # Pipy: rules per host
            what = ("hosts", limits.MAX_HOSTS) if hosts > limits.MAX_HOSTS else \
                ("routes (per host)", limits.MAX_ROUTE_ENTRIES) \
                if entries > limits.MAX_ROUTE_ENTRIES else None
            if what:
                errors.append(ConfigError(f"more than {what[1]} {what[0]} in the configuration",
                                          file=p.file, obj=p.ref, field=m.field_path))
                return


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
    raws = _documents(path, _read_embedded(), Budget(), errs)
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
