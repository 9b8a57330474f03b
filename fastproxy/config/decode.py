"""Decoding one configuration file's bytes into documents, within the bounds of
`fastproxy.config.limits`, raising only ConfigError.

YAML is read twice by libyaml (PyYAML's C binding when present): first as a flat event stream,
where nesting depth (aliases expanded), the node count with every alias counted as the size of
what it names, recursive aliases, string lengths and the document count are checked with no
object built and no recursion; then, only if that passed, composed and constructed (the C
composer recurses once per nesting level, so the depth check must come first). JSON is counted
from its bytes (a cheap upper bound of its values) before `json.loads`, whose own recursion guard
is turned into a ConfigError, and the result is walked iteratively for depth and string lengths.

Duplicate mapping keys are errors (YAML and JSON would silently keep the last one); YAML
timestamps stay strings.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Tuple

import yaml

from fastproxy.config import limits
from fastproxy.config._check import type_name
from fastproxy.errors import ConfigError

# libyaml through PyYAML's C binding: about 20 times faster than the pure-Python parser
_CParser: Any = getattr(yaml, "CParser", None) or getattr(getattr(yaml, "cyaml", None), "CParser", None)
_SafeBase: Any = getattr(yaml, "CSafeLoader", None) if _CParser is not None else yaml.SafeLoader


class Budget:
    """What is left of a load's node and document allowance, shared by its files."""

    def __init__(self, nodes: Optional[int] = None, documents: Optional[int] = None,
                 chars: Optional[int] = None) -> None:
        self.nodes = limits.MAX_NODES if nodes is None else nodes
        self.documents = limits.MAX_DOCUMENTS if documents is None else documents
        self.chars = limits.MAX_TEXT_CHARS if chars is None else chars


class StrictLoader(_SafeBase):  # type: ignore[misc, valid-type]
    """PyYAML's safe loader (libyaml when available) that rejects duplicate keys and leaves
    timestamps as strings."""


StrictLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_mapping(loader: Any, node: yaml.MappingNode, deep: bool = False) -> dict:
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


StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _short(parts: List[str]) -> str:
    """A field path from its parts (`a`, `[0]`, `b`), its middle elided when very deep."""
    if len(parts) > 12:
        parts = parts[:6] + [f"[...{len(parts) - 10} levels...]"] + parts[-4:]
    out = ""
    for p in parts:
        out += p if p.startswith("[") or not out else "." + p
    return out


def _path_text(frames: List[List[Any]]) -> str:
    return _short([f"[{f[2]}]" if f[0] == "s" else str(f[2]) for f in frames
                   if f[0] == "s" or f[2] is not None])


# frame: [kind 's'|'m', expecting_key (mappings), key or item count, anchor, nodes at start,
#         deepest absolute depth inside, characters at start]
def scan_yaml(text: str, path: str, budget: Budget) -> None:
    """Check the event stream of `text` against the limits; raise ConfigError on the first
    excess (with the document's object and the field path when known)."""
    parser = _CParser(text) if _CParser is not None else yaml.SafeLoader(text)
    frames: List[List[Any]] = []
    sizes: Dict[str, Tuple[int, int, int]] = {}  # anchor -> (nodes, height, characters)
    open_anchors: set = set()
    doc_no = 0
    ident: Dict[str, str] = {}
    nodes = 0
    chars = 0
    ev: Any = None

    def refuse(message: str) -> None:
        where = ""
        mark = getattr(ev, "start_mark", None)
        if mark is not None:
            where = f" (line {mark.line + 1})"
        obj = (f"{ident['kind']} {ident.get('namespace', 'default')}/{ident.get('name', '?')}"
               if "kind" in ident else f"document {doc_no}")
        raise ConfigError(message + where, file=path, obj=obj, field=_path_text(frames) or None)

    def node_added(count: int, height: int, text: int) -> None:
        # a value (or key) of `count` nodes, `height` levels and `text` characters of strings
        # at the current position
        nonlocal nodes, chars
        nodes += count
        chars += text
        if nodes > budget.nodes:
            refuse(f"more than {limits.MAX_NODES} values in the configuration, YAML aliases "
                   f"counted as what they expand to")
        if chars > budget.chars:
            refuse(f"more than {limits.MAX_TEXT_CHARS} characters of strings in the "
                   f"configuration, YAML aliases counted as what they expand to")
        d = len(frames) + height
        if d > limits.MAX_DEPTH:
            refuse(f"nested deeper than {limits.MAX_DEPTH} levels")
        if frames:
            top = frames[-1]
            if d > top[5]:
                top[5] = d  # carried up to the parent when this frame closes
            if top[0] == "s":
                top[2] += 1
            else:
                top[1] = not top[1]

    try:
        while parser.check_event():
            ev = parser.get_event()
            t = type(ev)
            if t is yaml.ScalarEvent:
                value = ev.value
                if len(value) > limits.MAX_SCALAR_CHARS:
                    refuse(f"a string longer than {limits.MAX_SCALAR_CHARS} characters")
                if frames and frames[-1][0] == "m" and frames[-1][1]:
                    frames[-1][2] = value if len(value) <= 64 else value[:61] + "..."
                elif frames:
                    key = frames[-1][2]
                    if len(frames) == 1 and key == "kind":
                        ident["kind"] = value[:64]
                    elif len(frames) == 2 and frames[0][2] == "metadata" and key in ("name", "namespace"):
                        ident[key] = value[:64]
                if ev.anchor is not None:
                    sizes[ev.anchor] = (1, 1, len(value))
                node_added(1, 1, len(value))
            elif t is yaml.SequenceStartEvent or t is yaml.MappingStartEvent:
                if frames and frames[-1][0] == "m" and frames[-1][1]:
                    frames[-1][2] = "?"  # a complex key
                d = len(frames) + 1
                if d > limits.MAX_DEPTH:
                    refuse(f"nested deeper than {limits.MAX_DEPTH} levels")
                frames.append(["s" if t is yaml.SequenceStartEvent else "m", True,
                               0 if t is yaml.SequenceStartEvent else None, ev.anchor, nodes, d,
                               chars])
                if ev.anchor is not None:
                    open_anchors.add(ev.anchor)
            elif t is yaml.SequenceEndEvent or t is yaml.MappingEndEvent:
                f = frames.pop()
                height = f[5] - len(frames)
                if f[3] is not None:
                    open_anchors.discard(f[3])
                    sizes[f[3]] = (nodes - f[4] + 1, height, chars - f[6])
                inner, inner_chars = nodes - f[4], chars - f[6]
                nodes, chars = f[4], f[6]
                node_added(inner + 1, height, inner_chars)
            elif t is yaml.AliasEvent:
                if ev.anchor in open_anchors:
                    refuse(f"alias *{ev.anchor} refers to a node that contains it")
                node_added(*sizes.get(ev.anchor, (1, 1, 0)))
            elif t is yaml.DocumentStartEvent:
                doc_no += 1
                ident = {}
                sizes.clear()
                budget.documents -= 1
                if budget.documents < 0:
                    refuse(f"more than {limits.MAX_DOCUMENTS} documents in the configuration")
    finally:
        dispose = getattr(parser, "dispose", None)
        if dispose is not None:
            dispose()
    budget.nodes -= nodes
    budget.chars -= chars


def _json_walk(value: Any, path: str, budget: Budget) -> None:
    """Depth, node count and string lengths of a decoded JSON value, iteratively."""
    # each entry: (value, its path as a linked list of parts, depth)
    stack: List[Tuple[Any, Any, int]] = [(value, None, 1)]
    nodes = 0

    def where(link: Any) -> Optional[str]:
        parts: List[str] = []
        while link is not None:
            parts.append(link[0])
            link = link[1]
        return _short(parts[::-1]) or None

    while stack:
        v, link, depth = stack.pop()
        nodes += 1
        if depth > limits.MAX_DEPTH:
            raise ConfigError(f"nested deeper than {limits.MAX_DEPTH} levels", file=path,
                              field=where(link))
        if isinstance(v, dict):
            for k, x in v.items():
                if len(k) > limits.MAX_SCALAR_CHARS:
                    raise ConfigError(f"a key longer than {limits.MAX_SCALAR_CHARS} characters",
                                      file=path, field=where(link))
                nodes += 1
                stack.append((x, (k[:64], link), depth + 1))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                stack.append((x, (f"[{i}]", link), depth + 1))
        elif isinstance(v, str) and len(v) > limits.MAX_SCALAR_CHARS:
            raise ConfigError(f"a string longer than {limits.MAX_SCALAR_CHARS} characters",
                              file=path, field=where(link))
    if nodes > budget.nodes:
        raise ConfigError(f"more than {limits.MAX_NODES} values in the configuration", file=path)
    budget.nodes -= nodes


def no_dup_pairs(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """json.loads' object_pairs_hook that refuses a key given twice (ValueError)."""
    out: Dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def decode_json(text: str, path: str, budget: Budget) -> List[Any]:
    # every value but the first follows a ',' or opens a container, or is a key (':'):
    # an upper bound computed at C speed before anything is built
    # (commas and colons inside strings make it larger, never smaller)
    bound = text.count(",") + text.count("[") + text.count("{") + text.count(":") + 1
    if bound > budget.nodes:
        raise ConfigError(f"more than {limits.MAX_NODES} values in the configuration (counted "
                          f"as the ',', ':', '[' and '{{' it holds)", file=path)
    # libyaml reads JSON's syntax too: its event scan finds excessive depth or long strings
    # before anything is built, and names the object and field; on the rare JSON libyaml does
    # not take, json.loads' recursion guard and the walk below still apply
    try:
        scan_yaml(text, path, Budget(budget.nodes, 1, budget.chars))
    except yaml.YAMLError as e:
        if "nesting depth" in str(e):  # libyaml's own cap (1000 levels)
            raise ConfigError(f"nested deeper than {limits.MAX_DEPTH} levels", file=path) from None
    budget.documents -= 1
    if budget.documents < 0:
        raise ConfigError(f"more than {limits.MAX_DOCUMENTS} documents in the configuration", file=path)
    try:
        value = json.loads(text, object_pairs_hook=no_dup_pairs)
    except json.JSONDecodeError as e:
        raise ConfigError(f"JSON syntax error at line {e.lineno}, column {e.colno}: {e.msg}",
                          file=path) from None
    except RecursionError:
        raise ConfigError(f"nested deeper than {limits.MAX_DEPTH} levels", file=path) from None
    except ValueError as e:
        raise ConfigError(f"JSON error: {e}", file=path) from None
    _json_walk(value, path, budget)
    return [value]


def decode_yaml(text: str, path: str, budget: Budget) -> List[Any]:
    try:
        scan_yaml(text, path, budget)
        return list(yaml.load_all(text, Loader=StrictLoader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = " ".join(p for p in (e.context, e.problem) if p)
        if "maximum nesting depth" in what:  # libyaml's own cap, met while looking ahead
            raise ConfigError(f"nested deeper than {limits.MAX_DEPTH} levels{where}",
                              file=path) from None
        raise ConfigError(f"YAML syntax error{where}: {what}", file=path) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"YAML error: {e}", file=path) from None


def decode(raw: bytes, path: str, budget: Optional[Budget] = None) -> List[Any]:
    """The documents of one file's bytes (`.json`: one JSON document; otherwise YAML, any
    number of `---` documents). Raises ConfigError naming the file, and where it can the
    object and field; never anything else for any input."""
    budget = budget or Budget()
    if len(raw) > limits.MAX_FILE_BYTES:
        raise ConfigError(f"larger than {limits.MAX_FILE_BYTES} bytes", file=path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (byte {e.start})", file=path) from None
    try:
        if path.endswith(".json"):
            return decode_json(text, path, budget)
        return decode_yaml(text, path, budget)
    except ConfigError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError, MemoryError) as e:
        # constructors of scalar types: a 5000-digit integer, a bad !!binary, ...
        raise ConfigError(f"cannot decode: {type(e).__name__}: {str(e)[:200]}", file=path) from None
