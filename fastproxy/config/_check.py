"""Small typed readers for decoded YAML/JSON documents that collect errors instead of raising.

Every reader takes a `Doc` (which file, which object) and a field path, and appends a
`ConfigError` naming all three when the value is missing, of the wrong type or out of range.
Callers read every field, then look at `doc.errors` once: a load reports all its problems at once.

Type rules are strict on purpose: YAML `"true"` is not a bool, and a bool is not an int (in
Python `True` is an `int`, so `type(v) is int` is used, never `isinstance`).
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Callable, Iterable, List, Mapping, Optional, TypeVar

from fastproxy.errors import ConfigError

T = TypeVar("T")

#: Sentinel: "the key is absent" (distinct from an explicit YAML null).
MISSING: Any = object()

INT_MAX = 2**31 - 1


class Doc:
    """Where a document came from and the errors found in it so far."""

    def __init__(self, file: str, obj: str) -> None:
        self.file = file
        self.obj = obj
        self.errors: List[ConfigError] = []

    def err(self, field: str, message: str) -> None:
        self.errors.append(ConfigError(message, file=self.file, obj=self.obj, field=field or None))


def type_name(v: Any) -> str:
    """The YAML-ish name of a decoded value's type, for messages."""
    if v is None:
        return "null"
    if type(v) is bool:
        return "bool"
    if type(v) is int:
        return "int"
    if type(v) is float:
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return "mapping"
    return type(v).__name__


def join(path: str, key: "str | int") -> str:
    """`spec` + `ports` -> `spec.ports`; `spec.ports` + 0 -> `spec.ports[0]`."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def check_keys(doc: Doc, m: Mapping[str, Any], path: str, allowed: Iterable[str]) -> None:
    """Every key of `m` must be in `allowed` (case-sensitive, as Kubernetes decodes)."""
    allowed_set = set(allowed)
    for k in m:
        if not isinstance(k, str):
            doc.err(join(path, str(k)), f"key must be a string, not {type_name(k)}")
        elif k not in allowed_set:
            doc.err(join(path, k), "unknown field")


def mapping(doc: Doc, v: Any, path: str, *, required: bool = False) -> Optional[dict]:
    """`v` as a mapping; absent or null gives {} (or an error when required)."""
    if v is MISSING or v is None:
        if required:
            doc.err(path, "is required")
            return None
        return {}
    if not isinstance(v, dict):
        doc.err(path, f"must be a mapping, not {type_name(v)}")
        return None
    return v


def field(doc: Doc, m: Mapping[str, Any], key: str, path: str, *, required: bool) -> "tuple[Any, str]":
    """(value, field path) of `key` in `m`; a missing or null value is MISSING, and an error when
    `required`."""
    v = m.get(key, MISSING)
    p = join(path, key)
    if v is MISSING or v is None:
        if required:
            doc.err(p, "is required")
        return MISSING, p
    return v, p


def boolean(doc: Doc, m: Mapping[str, Any], key: str, path: str, default: Optional[bool]) -> Optional[bool]:
    v, p = field(doc, m, key, path, required=default is None)
    if v is MISSING:
        return default
    if type(v) is not bool:
        doc.err(p, f"must be a bool (true or false), not {type_name(v)}")
        return default
    return v


def integer(doc: Doc, m: Mapping[str, Any], key: str, path: str, default: Optional[int], *,
            lo: int = 0, hi: int = INT_MAX) -> Optional[int]:
    v, p = field(doc, m, key, path, required=default is None)
    if v is MISSING:
        return default
    return int_value(doc, v, p, lo=lo, hi=hi, default=default)


def int_value(doc: Doc, v: Any, p: str, *, lo: int, hi: int, default: Optional[int] = None) -> Optional[int]:
    if type(v) is not int:
        doc.err(p, f"must be an integer, not {type_name(v)}")
        return default
    if not lo <= v <= hi:
        doc.err(p, f"must be {lo}..{hi}")
        return default
    return v


def string(doc: Doc, m: Mapping[str, Any], key: str, path: str, default: Optional[str], *,
           choices: Optional[Iterable[str]] = None, nonempty: bool = False) -> Optional[str]:
    v, p = field(doc, m, key, path, required=default is None)
    if v is MISSING:
        return default
    if not isinstance(v, str):
        doc.err(p, f"must be a string, not {type_name(v)}")
        return default
    if nonempty and not v:
        doc.err(p, "must not be empty")
        return default
    if choices is not None:
        ch = list(choices)
        if v not in ch:
            doc.err(p, f"must be one of {', '.join(ch)}; got {v!r}")
            return default
    return v


def list_of(doc: Doc, m: Mapping[str, Any], key: str, path: str,
            item: Callable[[Doc, Any, str], Optional[T]], *, required: bool = False) -> List[T]:
    """A list whose items are each checked by `item(doc, value, path)`; bad items are dropped
    (their errors recorded). Absent or null gives [] unless required."""
    v, p = field(doc, m, key, path, required=required)
    if v is MISSING:
        return []
    if not isinstance(v, list):
        doc.err(p, f"must be a list, not {type_name(v)}")
        return []
    out: List[T] = []
    for i, x in enumerate(v):
        r = item(doc, x, join(p, i))
        if r is not None:
            out.append(r)
    return out


def cidr_item(doc: Doc, v: Any, p: str) -> Optional[str]:
    """A CIDR (`10.0.0.0/8`, `fd00::/8`), prefix length required, no host bits set.
    Returns the canonical text (`ipaddress` form, IPv6 compressed)."""
    if not isinstance(v, str):
        doc.err(p, f"must be a CIDR string, not {type_name(v)}")
        return None
    if "/" not in v:
        doc.err(p, f"must be a CIDR with a prefix length (like 10.0.0.0/8 or 192.0.2.1/32); got {v!r}")
        return None
    try:
        return str(ipaddress.ip_network(v, strict=True))
    except ValueError as e:
        doc.err(p, f"invalid CIDR {v!r}: {e}")
        return None


def port_item(doc: Doc, v: Any, p: str) -> Optional[int]:
    return int_value(doc, v, p, lo=1, hi=65535)


_IFNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-@]*\+?$")


def ifname_item(doc: Doc, v: Any, p: str) -> Optional[str]:
    """A Linux interface name (1..15 bytes, no `/`, `:` or blanks), optionally ending in the
    iptables wildcard `+` (`veth+`)."""
    if not isinstance(v, str):
        doc.err(p, f"must be an interface name string, not {type_name(v)}")
        return None
    if not 1 <= len(v.encode()) <= 15 or v in (".", "..") or not _IFNAME.match(v):
        doc.err(p, f"invalid network interface name {v!r} (1..15 characters of A-Z a-z 0-9 _ . - @, "
                   "optionally ending in +)")
        return None
    return v


def dedupe(items: Iterable[T]) -> List[T]:
    """Items in first-seen order without repeats (FSM merges these lists as sets)."""
    seen: set = set()
    out: List[T] = []
    for x in items:
        if x not in seen:
            seen.add(x)
            out.append(x)
    return out
