"""CidrSet (src_c/fp_lookup.c) against a pure-Python longest-prefix reference built on ipaddress."""
from __future__ import annotations

import ipaddress
import itertools
import random
import threading
from typing import Dict, List, Optional, Union

import pytest
from hypothesis import given, settings, strategies as st

from fastproxy._core import CidrSet
from fastproxy.errors import EngineError

Net = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Addr = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


class RefLpm:
    """The obvious implementation: a dict of normalized prefixes (later add wins); a lookup
    tries every prefix length in use, longest first."""

    def __init__(self) -> None:
        self.rules: Dict[Net, int] = {}
        self._by_key: Dict[tuple, int] = {}
        self._lens: Dict[int, set] = {4: set(), 6: set()}

    def add(self, net: Net, value: int) -> None:
        self.rules[net] = value
        width = net.max_prefixlen
        self._by_key[(net.version, int(net.network_address) >> (width - net.prefixlen),
                      net.prefixlen)] = value
        self._lens[net.version].add(net.prefixlen)

    def lookup(self, addr: Addr) -> Optional[int]:
        width, a = addr.max_prefixlen, int(addr)
        for plen in sorted(self._lens[addr.version], reverse=True):
            value = self._by_key.get((addr.version, a >> (width - plen), plen))
            if value is not None:
                return value
        return None


def _boundaries(nets: List[Net]) -> List[Addr]:
    """Every address where the answer can change: first/last of each prefix and their
    neighbours, plus the ends of both address spaces."""
    out: List[Addr] = [ipaddress.IPv4Address(0), ipaddress.IPv4Address(2**32 - 1),
                       ipaddress.IPv6Address(0), ipaddress.IPv6Address(2**128 - 1)]
    for n in nets:
        top = 2**n.max_prefixlen - 1
        first, last = int(n.network_address), int(n.broadcast_address)
        cls = type(n.network_address)
        for v in (first - 1, first, first + 1, last - 1, last, last + 1):
            if 0 <= v <= top:
                out.append(cls(v))
    return out


def _check(rules: List[tuple], extra: List[Addr] = ()) -> None:
    cs, ref = CidrSet(), RefLpm()
    for text, value in rules:
        iface = ipaddress.ip_interface(text)
        cs.add(text, value)
        ref.add(iface.network, value)
    cs.build()
    assert len(cs) == len(ref.rules)
    for a in itertools.chain(_boundaries(list(ref.rules)), extra):
        assert cs.lookup(a) == ref.lookup(a), (a, rules)


# Addresses drawn near a few anchors so that prefixes nest, touch and duplicate often.
_V4_ANCHORS = [0, 0x0A000000, 0xC0000200, 0xFFFFFFFF, 0x7F000001]
_V6_ANCHORS = [0, 0x20010DB8 << 96, (2**128 - 1), 0xFE80 << 112, 0xFFFF << 32]


@st.composite
def v4_rule(draw):
    base = draw(st.sampled_from(_V4_ANCHORS)) ^ draw(st.integers(0, 0xFFFF))
    base = draw(st.one_of(st.just(base), st.integers(0, 2**32 - 1)))
    plen = draw(st.one_of(st.sampled_from([0, 1, 8, 16, 24, 31, 32]), st.integers(0, 32)))
    return f"{ipaddress.IPv4Address(base)}/{plen}", draw(st.integers(0, 2**32 - 2))


@st.composite
def v6_rule(draw):
    base = draw(st.sampled_from(_V6_ANCHORS)) ^ draw(st.integers(0, 2**24)) \
        ^ (draw(st.integers(0, 0xFFFF)) << 80)
    base = draw(st.one_of(st.just(base), st.integers(0, 2**128 - 1)))
    plen = draw(st.one_of(st.sampled_from([0, 1, 32, 48, 63, 64, 65, 127, 128]),
                          st.integers(0, 128)))
    return f"{ipaddress.IPv6Address(base)}/{plen}", draw(st.integers(0, 2**32 - 2))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(v4_rule(), v6_rule()), max_size=40),
       st.lists(st.one_of(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
                          st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address)), max_size=20))
def test_matches_reference_on_random_rule_sets(rules, queries):
    _check(rules, queries)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(28, 32), st.integers(0, 5)),
                min_size=1, max_size=12))
def test_duplicates_later_add_wins(entries):
    # Tiny universe 10.0.0.0/28 with duplicate prefixes written with different host bits.
    rules = [(f"10.0.0.{host}/{plen}", value) for host, plen, value in entries]
    _check(rules, [ipaddress.IPv4Address(0x0A000000 + i) for i in range(17)])


def _all_subsets_exhaustive(base: int, cls, universe_bits: int, top_len: int) -> None:
    # every prefix of length top_len-2 .. top_len within one block, plus ::/0 or 0/0
    prefixes = [(base, 0)]
    for plen in range(top_len - universe_bits, top_len + 1):
        step = 2 ** (top_len - plen)
        for start in range(base, base + 2**universe_bits, step):
            prefixes.append((start, plen))
    addrs = [cls(a) for a in range(base - 1 if base else 0,
                                   min(base + 2**universe_bits + 1, 2**top_len))]
    for mask in range(1, 2 ** len(prefixes)):  # every non-empty subset
        chosen = [p for i, p in enumerate(prefixes) if mask >> i & 1]
        rules = [(f"{cls(a)}/{plen}", i + 1) for i, (a, plen) in enumerate(chosen)]
        _check(rules, addrs)


def test_exhaustive_small_v4_low_end():
    _all_subsets_exhaustive(0, ipaddress.IPv4Address, 2, 32)


def test_exhaustive_small_v4_high_end():
    _all_subsets_exhaustive(2**32 - 4, ipaddress.IPv4Address, 2, 32)


def test_exhaustive_small_v6_high_end():
    _all_subsets_exhaustive(2**128 - 4, ipaddress.IPv6Address, 2, 128)


def test_exhaustive_small_v6_across_64_bit_halves():
    _all_subsets_exhaustive((1 << 64) - 2, ipaddress.IPv6Address, 2, 128)


def test_host_bits_are_normalized_and_families_are_separate():
    cs = CidrSet()
    cs.add("192.0.2.10/24", 1)
    cs.add("0.0.0.0/0", 2)
    cs.add(ipaddress.ip_network("2001:db8::/32"), 3)
    cs.add(ipaddress.ip_address("2001:db8::1"), 4)
    assert cs.lookup("192.0.2.0") == 1
    assert cs.lookup("192.0.2.255") == 1
    assert cs.lookup("192.0.3.0") == 2
    assert cs.lookup("::ffff:192.0.2.1") is None  # v4-mapped is not translated
    assert cs.lookup("2001:db8::1") == 4
    assert cs.lookup("2001:db8::2") == 3
    assert cs.lookup(bytes([192, 0, 2, 7])) == 1


def test_empty_set_and_lifecycle_errors():
    cs = CidrSet()
    assert cs.lookup("10.0.0.1") is None and cs.lookup("::1") is None
    assert cs.built
    with pytest.raises(EngineError) as ei:
        cs.add("10.0.0.0/8", 1)
    assert ei.value.errno == 16  # EBUSY
    fresh = CidrSet()
    with pytest.raises(EngineError):
        fresh.add("10.0.0.0/8", 2**32 - 1)  # reserved FP_LOOKUP_NONE
    with pytest.raises(OverflowError):
        fresh.add("10.0.0.0/8", -1)
    with pytest.raises(TypeError):
        fresh.add(42, 1)


def test_memory_for_ten_thousand_prefixes_per_family_stays_small():
    rng = random.Random(7)
    cs = CidrSet()
    for i in range(10_000):
        cs.add(ipaddress.IPv4Network((rng.getrandbits(32), rng.randint(8, 32)), strict=False), i)
        cs.add(ipaddress.IPv6Network((rng.getrandbits(128), rng.randint(16, 128)), strict=False),
               i)
    cs.build()
    # ranges: <= 2n+1 per family at 8 B (v4) / 20 B (v6), plus the index: level 1 has at most
    # one 8 B bucket per range, level 2 at most (ranges + 2 per crowded bucket) x 4 B
    assert cs.memory_bytes < (2 * 10_000 + 1) * (8 + 20 + 2 * (8 + 12)) + 4096
    assert cs.memory_bytes < 1_000_000


def test_concurrent_lookups_without_gil_agree():
    rng = random.Random(3)
    cs = CidrSet()
    for i in range(2000):
        cs.add(ipaddress.IPv4Network((rng.getrandbits(32), rng.randint(4, 28)), strict=False), i)
    cs.build()
    packed = b"".join(rng.getrandbits(32).to_bytes(4, "big") for _ in range(50_000))
    expect = cs.lookup_many(packed, 4)
    assert expect == sum(cs.lookup(packed[i:i + 4]) is not None for i in range(0, len(packed), 4))
    results: List[int] = []
    threads = [threading.Thread(target=lambda: results.append(cs.lookup_many(packed, 4)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [expect] * 4


@pytest.mark.parametrize("fillers", [0, 5, 60, 700, 5000])
def test_prefixes_touching_index_bucket_boundaries(fillers):
    # The lookup index splits on the top k bits (k grows with the set); ranges that start just
    # before, at or after a bucket start must still be found from the neighbouring bucket.
    rng = random.Random(fillers)
    rules = [("0.0.0.0/0", 1), ("::/0", 2)]
    for i in range(fillers):
        rules.append((f"{ipaddress.IPv4Address(rng.getrandbits(32))}/{rng.randint(12, 32)}", i))
        rules.append((f"{ipaddress.IPv6Address(rng.getrandbits(128))}/{rng.randint(12, 128)}", i))
    for k in range(1, 17):
        for b in (1, 2**k - 1):
            v4, v6 = b << (32 - k), b << (128 - k)
            for off in (-1, 1):
                rules.append((f"{ipaddress.IPv4Address(v4 + off)}/32", 10 + k))
                rules.append((f"{ipaddress.IPv6Address(v6 + off)}/128", 10 + k))
            rules.append((f"{ipaddress.IPv6Address(v6 + (1 << 64))}/128", 30 + k))
    _check(rules)


@pytest.mark.parametrize("n", [9, 40, 300, 4000])
def test_clustered_prefixes_use_the_second_index_level(n):
    # ClusterIPs and pod CIDRs crowd into one level-1 bucket; the level-2 index splits them.
    rng = random.Random(n)
    rules = [("10.0.0.0/8", 1), ("10.96.0.0/12", 2), ("fd00::/8", 3)]
    for i in range(n):
        rules.append((f"{ipaddress.IPv4Address(0x0A600000 | rng.getrandbits(20))}/"
                      f"{rng.choice([32, 32, 30, 28, 24])}", 100 + i))
        rules.append((f"{ipaddress.IPv6Address((0xFD00 << 112) | rng.getrandbits(40) << 64)}/"
                      f"{rng.choice([128, 64, 80, 120])}", 100 + i))
    _check(rules, [ipaddress.IPv4Address(0x0A600000 | rng.getrandbits(20)) for _ in range(300)])
