"""What a large policy costs the control plane: 100,000 hosts written as Egress manifests are
loaded and validated, compiled (fastproxy.policy + fastproxy.tables: the same compile validate,
explain and run use) and swapped into a running engine; prints the time of each step and the
memory the C table holds. Goals (issue 7): load + compile + swap under 2 s, table under 64 MB.

    python bench/compile_cost.py [--hosts 100000] [--per-egress 1000] [--routes]

Not a timed test: the figures depend on the machine and on what else runs on it. The engine is
bound to 127.0.0.1 on a free port and never receives traffic.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def write_config(folder: Path, hosts: int, per_egress: int, routes: bool) -> None:
    mesh = {"apiVersion": "config.flomesh.io/v1alpha3", "kind": "MeshConfig",
            "metadata": {"name": "fsm-mesh-config", "namespace": "fsm-system"},
            "spec": {"traffic": {"enableEgress": False},
                     "featureFlags": {"enableEgressPolicy": True}}}
    docs: List[Dict[str, object]] = [mesh]
    if routes:
        docs.append({"apiVersion": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
                     "metadata": {"name": "rg", "namespace": "app"},
                     "spec": {"matches": [{"name": "get", "pathRegex": "^/api/v[0-9]+/items/\\d+$",
                                           "methods": ["GET"]}]}})
    for e in range(0, hosts, per_egress):
        spec: Dict[str, object] = {
            "sources": [{"kind": "ServiceAccount", "name": "app", "namespace": "app"}],
            "hosts": [f"h{i}.svc{e // per_egress}.example.test" for i in range(e, min(hosts, e + per_egress))],
            "ports": [{"number": 443, "protocol": "https"}] if not routes else
                     [{"number": 80, "protocol": "http"}]}
        if routes:
            spec["matches"] = [{"apiGroup": "specs.smi-spec.io/v1alpha4", "kind": "HTTPRouteGroup",
                                "name": "rg"}]
        docs.append({"apiVersion": "policy.flomesh.io/v1alpha1", "kind": "Egress",
                     "metadata": {"name": f"e{e // per_egress}", "namespace": "app"},
                     "spec": spec})
    # JSON is YAML: one document per file keeps the loader's per-file work realistic
    for i, d in enumerate(docs):
        (folder / f"{i:05d}.yaml").write_text(json.dumps(d))


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hosts", type=int, default=100_000)
    ap.add_argument("--per-egress", type=int, default=1000)
    ap.add_argument("--routes", action="store_true", help="http hosts with an RE2 route each")
    args = ap.parse_args(argv)

    from fastproxy import _core
    from fastproxy.config import load
    from fastproxy.policy import compile_policy
    from fastproxy.tables import compile_table

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_config(folder, args.hosts, args.per_egress, args.routes)
        size = sum(p.stat().st_size for p in folder.iterdir())
        engine = _core.Engine(_core.Table().build(), workers=1, port=free_port(),
                              bind_v4="127.0.0.1", bind_v6="")
        engine.start()
        try:
            gc.collect()
            base = rss_mb()
            c0, t0 = time.process_time(), time.perf_counter()
            cfg = load([str(folder)], service_account="app", namespace="app")
            c1, t1 = time.process_time(), time.perf_counter()
            policy = compile_policy(cfg)
            c2, t2 = time.process_time(), time.perf_counter()
            before_table = rss_mb()
            ct = compile_table(policy, limits=_core.Limits())
            c3, t3 = time.process_time(), time.perf_counter()
            engine.set_table(ct.table)
            c4, t4 = time.process_time(), time.perf_counter()
            with_table = rss_mb()
            # the table alone: drop everything Python built on the way, keep the engine's table
            table_rules = len(ct.rules)
            del cfg, policy, ct
            gc.collect()
            after = rss_mb()
        finally:
            engine.shutdown()
            engine.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"hosts={args.hosts} egresses={-(-args.hosts // args.per_egress)} "
          f"files={size / 2**20:.1f} MiB routes={args.routes} rules={table_rules}")
    print("step            wall s    CPU s   (CPU time: less sensitive to a shared machine)")
    print(f"load+validate  {t1 - t0:7.3f}  {c1 - c0:7.3f}")
    print(f"compile_policy {t2 - t1:7.3f}  {c2 - c1:7.3f}")
    print(f"compile_table  {t3 - t2:7.3f}  {c3 - c2:7.3f}   (C table built)")
    print(f"swap           {t4 - t3:7.5f}  {c4 - c3:7.5f}")
    print(f"total          {t4 - t0:7.3f}  {c4 - c0:7.3f}   (goal < 2 s)")
    print(f"C table + rule metadata: +{with_table - before_table:.1f} MB RSS; "
          f"table held by the engine after the Python side is freed: "
          f"+{after - base:.1f} MB over the start (goal < 64 MB); peak RSS {peak:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
