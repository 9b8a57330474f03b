"""Micro-benchmark of the whole per-connection decision (pytest-benchmark): fp_table_decide on a
table compiled from a policy of 10 and of 10,000 rules (Egress tcp rules with ipAddresses, one
CIDR each, plus in-mesh Services), the lookup every accepted connection makes. The goal is a
10k/10 ratio close to 1.

Run: pytest bench/micro/test_decision_bench.py  (a few seconds; bounded rounds)

Each round decides 1000 destinations 100 times in C (Table.decide_loop, no Python per lookup); per-lookup
nanoseconds are in extra_info. test_decision_ratio prints the ratio of the two sizes' medians.
"""
from __future__ import annotations

import ipaddress
import random
import time
from typing import Dict, List

import pytest

from fastproxy._core import Destinations
from fastproxy.policy import CompiledPolicy, MeshRange, PortPolicy, TcpRule
from fastproxy.tables import compile_table

SIZES = (10, 10_000)
NQ = 1000
PORT = 5432


def policy_of(n: int, seed: int = 7) -> CompiledPolicy:
    """n rules on one port: half tcp policies (one CIDR each), half in-mesh /32 Services."""
    rng = random.Random(seed)
    tcp, mesh = [], []
    for i in range(n):
        net = ipaddress.IPv4Network((rng.getrandbits(32), rng.randint(16, 32)), strict=False)
        if i % 2:
            mesh.append(MeshRange(f"{net.network_address}/32", f"Service ns/s{i}"))
        else:
            tcp.append(TcpRule("tcp", f"Egress ns/e{i}", (str(net),)))
    return CompiledPolicy(service_account="sa", namespace="ns", mesh_ref="MeshConfig m/m",
                          enable_egress=False, enable_egress_policy=True, sidecar_timeout=60,
                          ports=(PortPolicy(port=PORT, mesh=tuple(mesh), tcp=tuple(tcp)),))


def queries(seed: int = 11) -> List[str]:
    rng = random.Random(seed)
    return [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(NQ)]


_MEDIANS: Dict[int, float] = {}


@pytest.mark.parametrize("n", SIZES)
def test_decision(benchmark, n: int) -> None:
    table = compile_table(policy_of(n)).table
    dests = Destinations(queries(), PORT)
    benchmark.pedantic(table.decide_loop, args=(dests, 100), rounds=50, iterations=1,
                       warmup_rounds=3)
    per_ns = benchmark.stats.stats.median / (NQ * 100) * 1e9
    benchmark.extra_info["rules"] = n
    benchmark.extra_info["ns_per_decision"] = round(per_ns, 1)
    _MEDIANS[n] = per_ns


def test_decision_ratio() -> None:
    """Prints (and sanity-checks) the 10k/10 ratio measured by the two cases above."""
    if set(_MEDIANS) != set(SIZES):
        pytest.skip("run together with test_decision")
    ratio = _MEDIANS[SIZES[1]] / _MEDIANS[SIZES[0]]
    print(f"\ndecision: {_MEDIANS[10]:.1f} ns at 10 rules, {_MEDIANS[10_000]:.1f} ns at 10,000 "
          f"rules, ratio {ratio:.2f}")
    assert ratio < 20, "lookup cost grows with the number of rules"
