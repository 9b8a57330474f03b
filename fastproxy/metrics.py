"""Prometheus metrics on 0.0.0.0:15010 at /stats/prometheus (FSM's port and path).

A custom `prometheus_client` collector reads one snapshot of the C counters per scrape (nothing
in Python per packet or per connection):

- FSM's per-cluster series, labelled `sidecar_cluster_name` as FSM names clusters (`ip:port` for
  passthrough, tcp and in-mesh traffic, `host:port` for http policies, the port for https ones):
  `sidecar_cluster_upstream_cx_active`, `sidecar_cluster_upstream_cx_{tx,rx}_bytes_total`, and on
  the http policy path `sidecar_cluster_external_upstream_rq{,_completed,_xx}` and
  `sidecar_cluster_upstream_rq{_total,_xx}` (FSM's exact names; those without `_total` are
  exposed untyped, as Pipy does, so the text stays valid and dashboards keep working);
- `sidecar_server_live`;
- fastproxy's own under `fastproxy_`: decisions by outcome (mesh / allow with the policy,
  passthrough, deny and would_deny with the reason), HTTP responses by code, reloads, peek
  timeouts, pipes in use, splice fallbacks, access-log records written and dropped.

Cardinality is bounded in C: at most `cluster_cap` clusters (1024 by default, `--metrics-clusters`)
are tracked; traffic to clusters seen after that counts under `sidecar_cluster_name="other"`.
Slots are never reused, so every counter only grows for the life of the process.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from fastproxy import _core
from fastproxy.accesslog import policy_label, rule_object

DEFAULT_PORT = 15010
PATH = "/stats/prometheus"
DEFAULT_CLUSTER_CAP = 1024
CL = "sidecar_cluster_name"


class PolicyHits:
    """Mesh and allow decisions per object, summed over every table the sidecar installed.

    A table's per-rule counters live in C; while the engine or an open connection may still use
    a table it is read at each scrape; once only this object holds it (refs == 1, not current)
    its counts are final, folded into `retired` and the table released. So the sums only grow."""

    def __init__(self) -> None:
        self._live: List[Tuple["_core.Table", List[str], List[int]]] = []
        self._retired: Dict[Tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def add(self, table: "_core.Table", sources: Sequence[str]) -> None:
        kinds = _core.table_rule_kinds(table, len(sources))
        with self._lock:
            self._live.append((table, list(sources), kinds))

    def tracking(self) -> bool:
        with self._lock:
            return bool(self._live or self._retired)

    def snapshot(self) -> Dict[Tuple[str, str], int]:
        """(outcome 'mesh'|'allow', object reference) -> decisions."""
        with self._lock:
            out = dict(self._retired)
            keep = []
            for i, (t, sources, kinds) in enumerate(self._live):
                final = _core.table_refs(t) == 1 and i < len(self._live) - 1
                hits = _core.table_rule_hits(t, len(sources))
                for rule, n in enumerate(hits):
                    if not n:
                        continue
                    key = ("mesh" if kinds[rule] == _core.RULE_KINDS["mesh"] else "allow",
                           rule_object(sources, rule))
                    out[key] = out.get(key, 0) + n
                    if final:
                        self._retired[key] = self._retired.get(key, 0) + n
                if not final:
                    keep.append((t, sources, kinds))
            self._live = keep
        return out


class Collector:
    """Reads the engine's counters once per scrape. `extra` supplies the control plane's own
    counters (reloads, reload failures)."""

    def __init__(self, engine: "_core.Engine", hits: PolicyHits,
                 extra: Callable[[], Dict[str, int]]) -> None:
        self.engine: Optional["_core.Engine"] = engine
        self.hits = hits
        self.extra = extra
        self._lock = threading.Lock()

    def detach(self) -> None:
        """No more reads of the engine (it is about to be freed); a scrape in flight finishes
        first."""
        with self._lock:
            self.engine = None

    def describe(self) -> List[Any]:
        return []  # collected on demand: nothing to check at registration

    def collect(self) -> Iterator[Any]:
        with self._lock:
            if self.engine is None:
                return
            st = self.engine.stats()
            obs = _core.obs_counters(self.engine)
            clusters = _core.obs_clusters(self.engine)
        extra = self.extra()
        yield from _cluster_families(clusters)
        live = GaugeMetricFamily("sidecar_server_live", "1 while the sidecar serves")
        live.add_metric([], 1)
        yield live

        dec = CounterMetricFamily("fastproxy_decisions",
                                  "Connections and HTTP requests by decision; policy is the "
                                  "object's namespace/name, reason why no rule allowed it",
                                  labels=["outcome", "policy", "reason"])
        per_policy = self.hits.snapshot()
        for (outcome, obj), n in sorted(per_policy.items()):
            dec.add_metric([outcome, policy_label(obj), ""], n)
        if not self.hits.tracking():  # no table registered (a bare engine): totals only
            for outcome in ("mesh", "allow"):
                dec.add_metric([outcome, "", ""], obs[outcome])
        dec.add_metric(["passthrough", "", ""], obs["passthrough"])
        for outcome in ("deny", "would_deny"):
            for reason, n in sorted(obs[outcome].items()):
                dec.add_metric([outcome, "", reason], n)
        yield dec

        codes = CounterMetricFamily("fastproxy_http_responses",
                                    "HTTP responses on the http policy path, by status code "
                                    "(the sidecar's own 403 and 400 included)", labels=["code"])
        for code, n in sorted(obs["http_codes"].items()):
            codes.add_metric([str(code)], n)
        yield codes

        def counter(name: str, doc: str, value: int) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        def gauge(name: str, doc: str, value: int) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, value=value)

        yield counter("fastproxy_reloads", "Configurations installed after the first",
                      extra.get("reloads", 0))
        yield counter("fastproxy_reload_failures", "Configuration changes refused (the last good "
                      "one stays)", extra.get("reload_failures", 0))
        yield counter("fastproxy_peek_timeouts", "Connections whose ClientHello or request head "
                      "did not come within the peek timeout", st["cx_peek_timeout"])
        yield gauge("fastproxy_pipes_in_use", "Pipes lent to connections now", st["pipes_in_use"])
        yield counter("fastproxy_splice_fallbacks", "Times a direction copied because no pipe was "
                      "free or splice was refused", st["splice_fallbacks"])
        yield counter("fastproxy_access_log_records", "Access-log records handed to the writer",
                      obs["log_records"])
        yield counter("fastproxy_access_log_dropped", "Access-log records dropped because a "
                      "worker's ring was full (traffic is never held back)", obs["log_dropped"])
        yield counter("fastproxy_clusters_overflow", "Upstream connections counted under "
                      "sidecar_cluster_name=\"other\" because the cluster table was full",
                      obs["clusters_overflow"])
        yield gauge("fastproxy_connections_active", "Client connections open now", st["cx_active"])
        yield counter("fastproxy_connections", "Client connections accepted", st["cx_accepted"])


def _cluster_families(clusters: Dict[str, Dict[str, Any]]) -> Iterator[Any]:
    active = GaugeMetricFamily("sidecar_cluster_upstream_cx_active",
                               "Upstream connections open, by cluster", labels=[CL])
    tx = CounterMetricFamily("sidecar_cluster_upstream_cx_tx_bytes",
                             "Bytes sent to the upstream, by cluster", labels=[CL])
    rx = CounterMetricFamily("sidecar_cluster_upstream_cx_rx_bytes",
                             "Bytes received from the upstream, by cluster", labels=[CL])
    # FSM's per-response family (http policy path only), FSM's exact names, untyped as Pipy's
    rq = Metric("sidecar_cluster_external_upstream_rq", "Responses by code (FSM)", "unknown")
    done = Metric("sidecar_cluster_external_upstream_rq_completed", "Responses (FSM)", "unknown")
    xx = Metric("sidecar_cluster_external_upstream_rq_xx", "Responses by code class (FSM)",
                "unknown")
    total = Metric("sidecar_cluster_upstream_rq_total", "Responses (FSM)", "unknown")
    uxx = Metric("sidecar_cluster_upstream_rq_xx", "Responses by code class (FSM)", "unknown")
    for name, c in sorted(clusters.items()):
        active.add_metric([name], c["cx_active"])
        tx.add_metric([name], c["tx_bytes"])
        rx.add_metric([name], c["rx_bytes"])
        if not c["rq_completed"]:
            continue
        done.add_sample(done.name, {CL: name}, c["rq_completed"])
        total.add_sample(total.name, {CL: name}, c["rq_completed"])
        for code, n in sorted(c["codes"].items()):
            rq.add_sample(rq.name, {CL: name, "sidecar_response_code": str(code)}, n)
        for cls, n in sorted(c["rq_class"].items()):
            xx.add_sample(xx.name, {CL: name, "sidecar_response_code_class": str(cls)}, n)
            uxx.add_sample(uxx.name, {CL: name, "sidecar_response_code_class": str(cls)}, n)
    yield from (active, tx, rx, rq, done, xx, total, uxx)


def registry_for(collector: Collector) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    return reg


def renderer(collector: Collector) -> Callable[[], bytes]:
    """The exposition text of one scrape."""
    reg = registry_for(collector)
    return lambda: generate_latest(reg)


def serve(address: Tuple[str, int], render: Callable[[], bytes]) -> Any:
    """A server for `render` at PATH, bound now, started by .start(), stopped by .close(): the
    admin listener's server class (bounded, backs off when out of descriptors), so both share
    its robustness."""
    from fastproxy.admin import HttpServer

    return HttpServer(address, {f"GET {PATH}": lambda _req: (200, render(), CONTENT_TYPE_LATEST)},
                      name="metrics")


def text(engine: "_core.Engine", hits: Optional[PolicyHits] = None,
         extra: Optional[Callable[[], Dict[str, int]]] = None) -> str:
    """One exposition (for tests and tools)."""
    return renderer(Collector(engine, hits or PolicyHits(), extra or dict))().decode()


class Observer:
    """The sidecar's observability: tags each compiled table (its id for the access log, the log
    and audit settings of its MeshConfig), then serves metrics and writes the access log."""

    def __init__(self) -> None:
        from fastproxy.accesslog import RuleNames

        self.names = RuleNames()
        self.hits = PolicyHits()
        self._next_id = 0
        self.server: Any = None
        self.log: Any = None
        self.collector: Optional[Collector] = None

    def tag(self, table: "_core.Table", sources: Sequence[str], mesh: Any) -> None:
        """Set `table`'s access-log and audit settings from MeshConfig `mesh` and remember what
        its rules stand for. Call before the table is handed to the engine."""
        from fastproxy.accesslog import AccessLogSettings

        self._next_id += 1
        s = AccessLogSettings(mesh.access_log_enabled, mesh.access_log_passthrough,
                              mesh.access_log_sample_rate)
        _core.table_set_obs(table, self._next_id, s.enabled, s.passthrough_share(),
                            mesh.egress_audit_mode)
        self.names.add(self._next_id, sources)
        self.hits.add(table, sources)

    def bind(self, engine: "_core.Engine", address: Tuple[str, int], *, ring: int,
             clusters: int, extra: Callable[[], Dict[str, int]]) -> None:
        """Set the engine's rings and cluster tables up and bind the metrics listener (port 0:
        none). Before engine.start()."""
        _core.obs_setup(engine, ring, clusters)
        self.collector = Collector(engine, self.hits, extra)
        if address[1]:
            self.server = serve(address, renderer(self.collector))
        from fastproxy.accesslog import AccessLog

        self.log = AccessLog(engine, self.names)

    def start(self) -> None:
        if self.server:
            self.server.start()
        if self.log:
            self.log.start()

    def close(self) -> None:
        """After engine.shutdown(), before engine.close(): writes the last records."""
        if self.log:
            self.log.close()
        if self.collector:
            self.collector.detach()
        if self.server:
            self.server.close()
