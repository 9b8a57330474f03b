"""`fastproxy patch`: `kubectl patch` for the manifests in a configuration folder.

    fastproxy patch meshconfig fsm-mesh-config -n fsm-system --type=merge \\
        -p '{"spec":{"traffic":{"enableEgress":false}}}' --config /etc/fastproxy

The object is found among the documents of the files `--config` names (as the sidecar reads
them), the patch is applied as the API server would (`merge`: RFC 7386 JSON merge patch, `null`
deletes, objects merge, arrays and scalars replace; `json`: RFC 6902 operations), and the whole
configuration is validated with the result in place, by the same loader the sidecar uses, before
anything is written. The file is then replaced atomically (a temporary file in the same folder,
fsync, rename, fsync of the folder): a running sidecar sees the old file or the new one, never a
part, and picks the change up at its next poll. Only the patched document is re-rendered: the
other documents of the file keep their bytes, comments and layout (comments inside the patched
document are lost, as with any YAML round trip). A symlinked file is written through the link
(the link stays). Nothing is written when the patch changes nothing, and no error ever leaves a
file changed.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import secrets
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from fastproxy.config.decode import no_dup_pairs
from fastproxy.errors import ConfigError

#: Largest configuration file `patch` reads.
MAX_FILE_BYTES = 16 << 20
#: Largest patch accepted.
MAX_PATCH_BYTES = 1 << 20
#: Deepest nesting of a patch (Kubernetes objects stay far below it).
MAX_PATCH_DEPTH = 64

#: resource name (as kubectl takes it) -> (API group, kind)
RESOURCES: Dict[str, Tuple[str, str]] = {}
for _group, _kind, _plural, _short in (
        ("config.flomesh.io", "MeshConfig", "meshconfigs", None),
        ("policy.flomesh.io", "Egress", "egresses", None),
        ("policy.flomesh.io", "UpstreamTrafficSetting", "upstreamtrafficsettings", None),
        ("specs.smi-spec.io", "HTTPRouteGroup", "httproutegroups", None),
        ("", "Service", "services", "svc")):
    for _n in (_kind.lower(), _plural, _short):
        if _n:
            RESOURCES[_n] = (_group, _kind)
            if _group:
                RESOURCES[f"{_n}.{_group}"] = (_group, _kind)


class PatchError(ConfigError):
    """A patch was refused; nothing was written."""


# ---------------------------------------------------------------------------------------------
# The patch operations


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: the result of applying merge patch `patch` to `target` (neither is changed)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def _pointer(path: Any, where: str) -> List[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise PatchError(f"{path!r} is not a JSON pointer (RFC 6901)", field=where)
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _walk(doc: Any, tokens: List[str], where: str) -> Any:
    cur = doc
    for i, t in enumerate(tokens):
        if isinstance(cur, dict) and t in cur:
            cur = cur[t]
        elif isinstance(cur, list) and t.isdigit() and (t == "0" or not t.startswith("0")) \
                and int(t) < len(cur):
            cur = cur[int(t)]
        else:
            raise PatchError(f"path /{'/'.join(tokens[:i + 1])} does not exist", field=where)
    return cur


def _index(container: list, t: str, where: str, allow_end: bool) -> int:
    if t == "-" and allow_end:
        return len(container)
    if not t.isdigit() or (t != "0" and t.startswith("0")):
        raise PatchError(f"{t!r} is not an array index", field=where)
    i = int(t)
    if i > len(container) or (i == len(container) and not allow_end):
        raise PatchError(f"index {i} is out of range (array of {len(container)})", field=where)
    return i


def _add(doc: Any, tokens: List[str], value: Any, where: str) -> Any:
    if not tokens:
        return value
    parent = _walk(doc, tokens[:-1], where)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, where, True), value)
    else:
        raise PatchError(f"cannot add below a {type(parent).__name__}", field=where)
    return doc


def _remove(doc: Any, tokens: List[str], where: str) -> Tuple[Any, Any]:
    if not tokens:
        raise PatchError("cannot remove the whole object", field=where)
    parent = _walk(doc, tokens[:-1], where)
    last = tokens[-1]
    if isinstance(parent, dict) and last in parent:
        return doc, parent.pop(last)
    if isinstance(parent, list):
        return doc, parent.pop(_index(parent, last, where, False))
    raise PatchError(f"path /{'/'.join(tokens)} does not exist", field=where)


def json_patch(target: Any, ops: Any) -> Any:
    """RFC 6902: apply the operations in order to a copy of `target`; any failing operation
    refuses the whole patch."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be an array of operations")
    doc = copy.deepcopy(target)
    for n, op in enumerate(ops):
        where = f"patch[{n}]"
        if not isinstance(op, dict) or not isinstance(op.get("op"), str):
            raise PatchError("each operation must be an object with an \"op\"", field=where)
        kind = op["op"]
        path = _pointer(op.get("path"), f"{where}.path")
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"{kind!r} needs a \"value\"", field=where)
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]), where)
        elif kind == "remove":
            doc, _ = _remove(doc, path, where)
        elif kind == "replace":
            _walk(doc, path, where)
            if path:
                doc, _ = _remove(doc, path, where)
            doc = _add(doc, path, copy.deepcopy(op["value"]), where)
        elif kind in ("move", "copy"):
            src = _pointer(op.get("from"), f"{where}.from")
            if kind == "move" and path[:len(src)] == src and path != src:
                raise PatchError("cannot move a value into itself", field=where)
            value = copy.deepcopy(_walk(doc, src, where))
            if kind == "move":
                doc, _ = _remove(doc, src, where)
            doc = _add(doc, path, value, where)
        elif kind == "test":
            if _walk(doc, path, where) != op["value"]:
                raise PatchError(f"test failed: {op.get('path')} is not {json.dumps(op['value'])}",
                                 field=where)
        else:
            raise PatchError(f"unknown operation {kind!r} (add, remove, replace, move, copy, test)",
                             field=where)
    return doc


def parse_patch(text: str, kind: str) -> Any:
    """The patch as JSON (strict: no YAML, no duplicate keys)."""
    if len(text.encode()) > MAX_PATCH_BYTES:
        raise PatchError(f"the patch is larger than {MAX_PATCH_BYTES} bytes", field="--patch")
    try:
        p = json.loads(text, object_pairs_hook=no_dup_pairs)
    except RecursionError:
        raise PatchError("the patch is nested too deeply", field="--patch") from None
    except json.JSONDecodeError as e:
        raise PatchError(f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}",
                         field="--patch") from None
    except ValueError as e:
        raise PatchError(f"not valid JSON: {e}", field="--patch") from None
    if _depth(p) > MAX_PATCH_DEPTH:
        raise PatchError(f"the patch is nested deeper than {MAX_PATCH_DEPTH} levels",
                         field="--patch")
    if kind == "merge" and not isinstance(p, dict):
        raise PatchError("a merge patch must be a JSON object", field="--patch")
    return p


def _depth(value: Any) -> int:
    """Nesting depth of decoded JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def _uses_aliases(text: str) -> bool:
    """True when the YAML text has an alias (`*name`): such a file is not patched (its
    documents share structure that a round trip would multiply)."""
    try:
        return any(isinstance(ev, yaml.AliasEvent) for ev in yaml.parse(text, Loader=yaml.SafeLoader))
    except yaml.YAMLError:
        return False


# ---------------------------------------------------------------------------------------------
# Finding the object


@dataclass
class Located:
    """Where the object lives: the file as listed, its real path, its bytes and decoded
    documents, the document index and (inside a `kind: List`) the item index."""

    file: str
    real: str
    raw: bytes
    docs: List[Any]
    index: int
    item: Optional[int]

    @property
    def obj(self) -> Dict[str, Any]:
        d = self.docs[self.index]
        return d["items"][self.item] if self.item is not None else d


def _identity(obj: Any) -> Optional[Tuple[str, str, str, str]]:
    """(group, kind, namespace, name) of a manifest, or None."""
    if not isinstance(obj, dict):
        return None
    api, kind, meta = obj.get("apiVersion"), obj.get("kind"), obj.get("metadata")
    if not isinstance(api, str) or not isinstance(kind, str) or not isinstance(meta, dict):
        return None
    group = api.rpartition("/")[0]
    return group, kind, str(meta.get("namespace") or "default"), str(meta.get("name"))


def _read(path: str) -> Tuple[bytes, List[Any]]:
    from fastproxy.config.loader import read_documents

    try:
        size = os.stat(path).st_size
    except OSError as e:
        raise PatchError(f"cannot read: {e.strerror or e}", file=path) from None
    if size > MAX_FILE_BYTES:
        raise PatchError(f"larger than {MAX_FILE_BYTES} bytes", file=path)
    with open(path, "rb") as f:
        raw = f.read(MAX_FILE_BYTES + 1)
    try:
        docs = read_documents(path)
    except RecursionError:
        raise PatchError("nested too deeply", file=path) from None
    return raw, docs


def locate(paths: Sequence[str], group: str, kind: str, namespace: str, name: str) -> Located:
    """The one document defining kind namespace/name in the configuration paths."""
    from fastproxy.config.loader import collect_files

    files, errors = collect_files(paths)
    if errors:
        raise PatchError(str(errors[0]).split(": ", 1)[-1], file=errors[0].file)
    found: List[Located] = []
    namespaces = set()
    for f in files:
        raw, docs = _read(f)
        for i, d in enumerate(docs):
            items: List[Tuple[Optional[int], Any]] = [(None, d)]
            if isinstance(d, dict) and d.get("kind") == "List" and isinstance(d.get("items"), list):
                items = list(enumerate(d["items"]))
            for j, o in items:
                ident = _identity(o)
                if ident is None:
                    continue
                namespaces.add(ident[2])
                if ident == (group, kind, namespace, name):
                    found.append(Located(f, os.path.realpath(f), raw, docs, i, j))
    what = f"{kind} {namespace}/{name}"
    if not found:
        where = ", ".join(paths)
        if namespace not in namespaces:
            raise PatchError(f"namespace {namespace!r} not found: no object of the configuration "
                             f"({where}) is in it", obj=what)
        raise PatchError(f"not found in {where}", obj=what)
    if len(found) > 1:
        raise PatchError(f"defined {len(found)} times ({', '.join(x.file for x in found)})",
                         obj=what)
    loc = found[0]
    if not loc.file.endswith(".json") and _uses_aliases(loc.raw.decode("utf-8", "replace")):
        raise PatchError("the file uses YAML anchors and aliases; fastproxy patch leaves such "
                         "files alone (edit it by hand)", file=loc.file, obj=what)
    return loc


# ---------------------------------------------------------------------------------------------
# Rendering, validating, writing


def _dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)


def render(loc: Located, new_obj: Dict[str, Any]) -> bytes:
    """The file's new bytes: only the patched document re-rendered where the YAML parser can
    say where it is; otherwise (or for JSON) the whole file."""
    doc = copy.deepcopy(loc.docs[loc.index])
    if loc.item is not None:
        doc["items"][loc.item] = new_obj
    else:
        doc = new_obj
    new_docs = list(loc.docs)
    new_docs[loc.index] = doc
    text = loc.raw.decode("utf-8")
    if loc.file.endswith(".json"):
        indent = 2
        lines = text.splitlines()
        if len(lines) > 1:
            stripped = lines[1].lstrip(" ")
            indent = (len(lines[1]) - len(stripped)) or 2
        return (json.dumps(doc, indent=indent, ensure_ascii=False) + "\n").encode()
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
        node = nodes[loc.index]
        start, end = node.start_mark.index, node.end_mark.index
        span = text[start:end]
        body = _dump_yaml(doc)
        if not span.endswith("\n"):
            body = body.rstrip("\n")
        out = text[:start] + body + text[end:]
        from fastproxy.config.loader import _StrictLoader  # the loader's own YAML reading

        if list(yaml.load_all(out, Loader=_StrictLoader)) == new_docs:
            return out.encode()
    except (yaml.YAMLError, IndexError, AttributeError):
        pass
    return ("---\n".join(_dump_yaml(d) for d in new_docs if d is not None)).encode()


def validate(paths: Sequence[str], loc: Located, data: bytes) -> None:
    """Load the whole configuration with `data` standing in for the located file, with the
    sidecar's loader; raise PatchError with every problem (named after the real file)."""
    from fastproxy.config import load
    from fastproxy.config.loader import collect_files
    from fastproxy.errors import ConfigErrors

    files, _ = collect_files(paths)
    tmpdir = tempfile.mkdtemp(prefix="fastproxy-patch-")
    try:
        stand_in = os.path.join(tmpdir, os.path.basename(loc.file))
        with open(stand_in, "wb") as f:
            f.write(data)
        swapped = [stand_in if os.path.realpath(f) == loc.real else f for f in files]
        try:
            load(swapped)
        except (ConfigErrors, ConfigError) as e:
            msg = str(e).replace(stand_in, loc.file)
            raise PatchError(f"the patched configuration is not valid; nothing written:\n{msg}") \
                from None
        except RecursionError:
            raise PatchError("the patched object is nested too deeply", file=loc.file) from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _configmap_hint(folder: str) -> str:
    parent = os.path.dirname(folder.rstrip("/"))
    for d in (folder, parent):
        if os.path.lexists(os.path.join(d, "..data")):
            return (" (a mounted ConfigMap: change the ConfigMap itself, e.g. with kubectl "
                    "patch/edit configmap; the kubelet updates the mount)")
    return ""


def write_atomically(loc: Located, data: bytes) -> None:
    """Replace loc.real with `data`: temporary file in the same folder (same mode and owner),
    fsync, check the file did not change since it was read, rename, fsync the folder."""
    folder = os.path.dirname(loc.real) or "."
    tmp = os.path.join(folder, f".{os.path.basename(loc.real)}.fastproxy-patch-{secrets.token_hex(4)}")
    try:
        st = os.stat(loc.real)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise PatchError(f"cannot write in {folder}: {e.strerror or e}{_configmap_hint(folder)}; "
                         "nothing written", file=loc.file) from None
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fchmod(f.fileno(), st.st_mode & 0o7777)
                if os.geteuid() == 0:
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
                os.fsync(f.fileno())
            with open(loc.real, "rb") as f:
                if f.read(MAX_FILE_BYTES + 1) != loc.raw:
                    raise PatchError("changed by someone else while it was being patched; nothing "
                                     "written, try again", file=loc.file)
            os.rename(tmp, loc.real)
        except OSError as e:
            raise PatchError(f"cannot replace the file: {e.strerror or e}; nothing written",
                             file=loc.file) from None
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:
        dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass  # the rename is done; a folder fsync refused is not a failure


@dataclass
class Result:
    obj: Dict[str, Any]
    changed: bool
    file: str
    data: bytes


def patch(paths: Sequence[str], resource: str, name: str, namespace: str, patch_text: str,
          patch_type: str = "merge", dry_run: bool = False) -> Result:
    """Apply a patch to one object of the configuration; see the module docstring."""
    if not paths:
        raise PatchError("--config is required: the file or folder holding the object")
    if resource.lower() not in RESOURCES:
        raise PatchError(f"the server doesn't have a resource type {resource!r} (fastproxy "
                         f"patches: {', '.join(sorted(k for k in RESOURCES if '.' not in k))})")
    group, kind = RESOURCES[resource.lower()]
    if patch_type == "strategic":
        raise PatchError(f"strategic merge patch is not supported for {kind} (a custom "
                         "resource); use --type=merge or --type=json", field="--type")
    p = parse_patch(patch_text, patch_type)
    loc = locate(paths, group, kind, namespace, name)
    before = loc.obj
    what = f"{kind} {namespace}/{name}"
    after = merge_patch(before, p) if patch_type == "merge" else json_patch(before, p)
    if not isinstance(after, dict) or _identity(after) != _identity(before) \
            or after.get("apiVersion") != before.get("apiVersion"):
        raise PatchError("a patch may not change apiVersion, kind, metadata.name or "
                         "metadata.namespace", file=loc.file, obj=what)
    if after == before:
        return Result(after, False, loc.file, loc.raw)
    data = render(loc, after)
    validate(paths, loc, data)
    if not dry_run:
        write_atomically(loc, data)
    return Result(after, True, loc.file, data)


# ---------------------------------------------------------------------------------------------
# `fastproxy patch`


def register(sub: Any) -> None:
    p = sub.add_parser(
        "patch", help="patch an object in the configuration folder, as kubectl patch does",
        description="Apply a JSON merge patch (RFC 7386, --type=merge) or a JSON patch (RFC 6902, "
                    "--type=json) to one object (MeshConfig, Egress, HTTPRouteGroup, "
                    "UpstreamTrafficSetting, Service) in the configuration files, as `kubectl "
                    "patch` does in a cluster. The whole configuration is validated with the "
                    "result before anything is written; the file is replaced atomically and a "
                    "running sidecar picks it up at its next poll (0.2 s).")
    p.add_argument("resource", metavar="TYPE", help="meshconfig, egress, httproutegroup, "
                   "upstreamtrafficsetting, service (or TYPE/NAME)")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("-n", "--namespace", default="default", help="the object's namespace (default: default)")
    p.add_argument("-p", "--patch", default=None, metavar="JSON", help="the patch (JSON)")
    p.add_argument("--patch-file", default=None, metavar="PATH", help="read the patch from a file")
    p.add_argument("--type", default="strategic", choices=("json", "merge", "strategic"),
                   help="merge (RFC 7386) or json (RFC 6902); strategic, kubectl's default, does "
                        "not apply to these custom resources and is refused as kubectl does")
    p.add_argument("--config", action="append", default=[], metavar="PATH", required=True,
                   help="the configuration file or folder the sidecar reads; repeatable")
    p.add_argument("--dry-run", nargs="?", const="client", default="none",
                   choices=("none", "client", "server"),
                   help="validate and print the resulting object, write nothing")
    p.add_argument("-o", "--output", choices=("yaml", "json", "name"), default=None,
                   help="print the resulting object (dry run default: yaml)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    resource, name = args.resource, args.name
    if "/" in resource:
        if name:
            print("fastproxy patch: give TYPE/NAME or TYPE NAME, not both", file=sys.stderr)
            return 1
        resource, name = resource.split("/", 1)
    if not name:
        print("fastproxy patch: NAME is required", file=sys.stderr)
        return 1
    if (args.patch is None) == (args.patch_file is None):
        print("fastproxy patch: give exactly one of -p/--patch and --patch-file", file=sys.stderr)
        return 1
    text = args.patch
    if args.patch_file is not None:
        try:
            with open(args.patch_file, "rb") as f:
                text = f.read(MAX_PATCH_BYTES + 1).decode("utf-8", "replace")
        except OSError as e:
            print(f"fastproxy patch: {args.patch_file}: {e.strerror or e}", file=sys.stderr)
            return 1
    dry = args.dry_run != "none"
    try:
        r = patch(args.config, resource, name, args.namespace, text, args.type, dry)
    except ConfigError as e:  # PatchError, or a file of the folder that cannot be read
        print(f"fastproxy patch: refused: {e}", file=sys.stderr)
        return 1
    group, kind = RESOURCES[resource.lower()]
    ref = f"{kind.lower()}{'.' + group if group else ''}/{name}"
    out = args.output or ("yaml" if dry else None)
    if out == "yaml":
        sys.stdout.write(_dump_yaml(r.obj))
    elif out == "json":
        sys.stdout.write(json.dumps(r.obj, indent=4) + "\n")
    elif out == "name":
        print(ref)
    else:
        suffix = " (dry run)" if dry else "" if r.changed else " (no change)"
        print(f"{ref} patched{suffix}")
    return 0
