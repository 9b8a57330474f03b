"""HostSet, PortMap and host_split_port (src_c/fp_lookup.c) against plain-Python references."""
from __future__ import annotations

import random
import threading
from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import given, settings, strategies as st

from fastproxy._core import HostSet, PortMap, host_split_port
from fastproxy.errors import EngineError


def _norm(name: str) -> str:
    name = name[:-1] if name.endswith(".") else name
    return "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in name)


class RefHosts:
    """Exact names in one dict, wildcard suffixes in another; later add wins."""

    def __init__(self) -> None:
        self.exact: Dict[str, int] = {}
        self.wild: Dict[str, int] = {}

    def add(self, name: str, value: int) -> None:
        name = _norm(name)
        if name.startswith("*."):
            self.wild[name[2:]] = value
        else:
            self.exact[name] = value

    def lookup(self, name: str) -> Optional[int]:
        name = _norm(name)
        if not name:
            return None
        if name in self.exact:
            return self.exact[name]
        first, dot, rest = name.partition(".")
        if not first or not dot or not rest:
            return None
        return self.wild.get(rest)


_label = st.sampled_from(["a", "b", "A", "Bc", "xn--d1a", "api", "x-y", "0", "*"])


@st.composite
def host_name(draw, wildcard_ok=True):
    labels = draw(st.lists(_label.filter(lambda s: s != "*"), min_size=1, max_size=4))
    name = ".".join(labels)
    if wildcard_ok and draw(st.booleans()):
        name = "*." + name
    if draw(st.integers(0, 4)) == 0:
        name += "."
    return name


@st.composite
def query_name(draw):
    labels = draw(st.lists(_label, min_size=0, max_size=5))
    name = ".".join(labels)
    if draw(st.integers(0, 3)) == 0:
        name += "."
    if draw(st.integers(0, 5)) == 0:
        name = "." + name
    return name


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(host_name(), st.integers(0, 2**32 - 2)), max_size=30),
       st.lists(query_name(), max_size=30))
def test_matches_reference_on_random_sets(rules, queries):
    hs, ref = HostSet(), RefHosts()
    for name, value in rules:
        hs.add(name, value)
        ref.add(name, value)
    hs.build()
    assert len(hs) == len(ref.exact) + len(ref.wild)
    # every added name, each wildcard instantiated with one, two and zero extra labels
    probes = list(queries)
    for name, _ in rules:
        probes.append(name)
        if name.startswith("*."):
            probes += [name[2:], "q" + name[1:], "Q.q" + name[1:], name.upper()]
        else:
            probes += [name.upper(), "z." + name, name.partition(".")[2]]
    for q in probes:
        assert hs.lookup(q) == ref.lookup(q), (q, rules)


def test_wildcard_matches_exactly_one_more_label():
    hs = HostSet()
    hs.add("*.example.test", 1)
    hs.add("example.test", 2)
    hs.add("a.example.test", 3)
    assert hs.lookup("b.example.test") == 1
    assert hs.lookup("B.Example.TEST.") == 1
    assert hs.lookup("a.example.test") == 3  # exact wins
    assert hs.lookup("example.test") == 2
    assert hs.lookup("a.b.example.test") is None
    assert hs.lookup(".example.test") is None
    assert hs.lookup("example.test..") is None
    assert hs.lookup("xexample.test") is None
    assert hs.lookup("") is None and hs.lookup(".") is None


def test_longest_names_and_too_long_names():
    label = "a" * 63
    name253 = ".".join([label, label, label, "b" * 61])
    assert len(name253) == 253
    hs = HostSet()
    hs.add(name253, 1)
    hs.add("*." + name253[64:], 2)
    with pytest.raises(EngineError):
        HostSet().add("c" + name253, 1)
    assert hs.lookup(name253.upper() + ".") == 1
    assert hs.lookup("z" * 63 + name253[63:]) == 2
    assert hs.lookup("c" + name253) is None
    assert hs.lookup("x" * 5000) is None


@pytest.mark.parametrize("bad", ["", ".", "*", "*.", "*..", "a..b", ".a", "a b", "a\tb",
                                 "a.*.b", "**.a", "*a.b", "a.*", "a.b..", "*.*.a", "x\x7f"])
def test_invalid_names_are_refused(bad):
    with pytest.raises(EngineError) as ei:
        HostSet().add(bad, 1)
    assert ei.value.errno == 22  # EINVAL


def test_lifecycle():
    hs = HostSet()
    hs.add("a.test", 1)
    hs.add("A.TEST.", 5)  # same name after normalization: later wins
    assert hs.lookup("a.test") == 5 and len(hs) == 1
    with pytest.raises(EngineError):
        hs.add("b.test", 2)
    with pytest.raises(EngineError):
        HostSet().add("b.test", 2**32 - 1)


def test_ten_thousand_names_and_concurrent_lookups():
    rng = random.Random(11)
    hs, ref = HostSet(), RefHosts()
    for i in range(10_000):
        name = f"svc{rng.getrandbits(40):x}.ns{i % 97}.example.test"
        if i % 4 == 0:
            name = "*." + name
        hs.add(name, i)
        ref.add(name, i)
    hs.build()
    assert hs.memory_bytes < 1_000_000
    queries: List[str] = []
    for name in list(ref.exact)[:2000]:
        queries += [name, name.upper(), "x." + name]
    for suffix in list(ref.wild)[:1000]:
        queries += ["w." + suffix, suffix, "a.b." + suffix]
    for q in queries:
        assert hs.lookup(q) == ref.lookup(q), q
    blob = "\n".join(queries).encode()
    expect = sum(ref.lookup(q) is not None for q in queries)
    results: List[int] = []
    threads = [threading.Thread(target=lambda: results.append(hs.lookup_many(blob)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expect] * 4


@pytest.mark.parametrize("value,expect", [
    ("example.test", ("example.test", None)),
    ("example.test:8080", ("example.test", 8080)),
    ("example.test:", ("example.test", None)),
    ("  Example.test:80\t", ("Example.test", 80)),
    ("[::1]", ("::1", None)),
    ("[2001:db8::1]:443", ("2001:db8::1", 443)),
    ("192.0.2.1:65535", ("192.0.2.1", 65535)),
    ("h:00080", ("h", 80)),
])
def test_split_port(value: str, expect: Tuple[str, Optional[int]]):
    assert host_split_port(value) == expect
    assert host_split_port(value.encode()) == (expect[0].encode(), expect[1])


@pytest.mark.parametrize("bad", ["", "  ", ":80", "h:0", "h:65536", "h:99999999999", "h:8x",
                                 "::1", "[::1", "[::1]x", "[]:80", "h:-1", "h: 80"])
def test_split_port_rejects_malformed(bad: str):
    with pytest.raises(EngineError):
        host_split_port(bad)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.integers(1, 65535), st.one_of(st.none(), st.integers(0, 2**32 - 2)),
                       max_size=40),
       st.lists(st.integers(0, 70000), max_size=40))
def test_port_map_matches_dict(assignments, probes):
    pm, ref = PortMap(), {}
    for port, value in assignments.items():
        pm.set(port, value)
        if value is None:
            ref.pop(port, None)
        else:
            ref[port] = value
    for port in list(assignments) + probes:
        assert pm.get(port) == ref.get(port)


def test_port_map_bounds_and_memory():
    pm = PortMap()
    empty = pm.memory_bytes
    for port in (80, 443, 3306, 5432, 8080, 8443):
        pm.set(port, port)
    assert pm.get(0) is None and pm.get(65536) is None
    pm.set(65535, 1)
    assert pm.get(65535) == 1 and pm.get(65534) is None
    with pytest.raises(EngineError):
        pm.set(0, 1)
    with pytest.raises(EngineError):
        pm.set(70000, 1)
    # pages only for the high bytes in use: 0, 1, 12, 21, 31, 32, 255
    assert pm.memory_bytes - empty == 7 * 1024
