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

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from fastproxy.config._check import Doc, MISSING, check_keys, type_name
from fastproxy.config import meshconfig as mc
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
    """One validated load: the MeshConfig and the objects that matter to the sidecar."""

    mesh: mc.MeshConfig
    files: List[str] = field(default_factory=list)
    #: `file: Kind ns/name` of documents of kinds fastproxy does not use
    ignored: List[str] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-able dump (admin /config_dump)."""
        return {
            "files": list(self.files),
            "meshConfig": self.mesh.to_dict(),
            "meshConfigSource": self.mesh.file or "<embedded default>",
            "ignored": list(self.ignored),
        }

    def summary(self) -> str:
        m = self.mesh
        src = "" if m.file else " (embedded default)"
        return (f"{m.ref}{src}: enableEgress={str(m.enable_egress).lower()} "
                f"enableEgressPolicy={str(m.enable_egress_policy).lower()} "
                f"logLevel={m.log_level} sidecarTimeout={m.sidecar_timeout}s"
                + (f"; {len(self.ignored)} ignored" if self.ignored else ""))


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
    return _Raw(file, index, obj, group, version, kind, name, namespace)


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


def load(paths: Sequence[PathLike] = ()) -> Config:
    """Load and validate every object the paths hold. No paths at all: the embedded default.
    Raises ConfigErrors listing every problem found."""
    files, errors = collect_files(paths)
    raws: List[_Raw] = []
    for f in files:
        raws.extend(_documents(f, errors))

    default_spec = _default_spec()
    meshes: List[mc.MeshConfig] = []
    ignored: List[str] = []
    for r in raws:
        doc = Doc(r.file, r.ref)
        if r.kind == mc.KIND and r.group == mc.GROUP:
            if f"{r.group}/{r.version}" not in mc.API_VERSIONS:
                doc.err("apiVersion", f"unsupported version {r.group}/{r.version} "
                                      f"(supported: {', '.join(mc.API_VERSIONS)})")
            else:
                check_keys(doc, r.obj, "", TOP_KEYS)
                m = mc.parse_meshconfig(doc, r.obj, r.name, r.namespace, default_spec)
                if m is not None:
                    m.document = r.index
                    meshes.append(m)
        else:
            ignored.append(f"{r.file}: {r.ref} ({r.group + '/' if r.group else ''}{r.version})")
        errors.extend(doc.errors)

    if len(meshes) > 1:
        where = ", ".join(f"{m.file}: {m.ref}" for m in meshes)
        errors.append(ConfigError(f"more than one MeshConfig ({where}); give exactly one",
                                  file=meshes[1].file, obj=meshes[1].ref))
    if errors:
        raise ConfigErrors(errors)
    mesh = meshes[0] if meshes else default_meshconfig()
    return Config(mesh=mesh, files=files, ignored=ignored)


def default_meshconfig() -> mc.MeshConfig:
    """The embedded default MeshConfig (FSM's chart defaults)."""
    path = str(DEFAULT_MESHCONFIG_PATH)
    raws = _documents(path, errs := [])
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
