# Observability of the engine (src_c/fp_obs.h), as module functions over Engine and Table.
# Included by _core.pyx after _engine.pxi.
from libc.stdlib cimport malloc, free
from fastproxy._c_obs cimport *

# Reasons are named by REASONS (_engine.pxi): explain, the access log and metrics agree.
#: enum fp_end, by value
ENDS = ("fin", "reset_by_client", "reset_by_upstream", "idle_timeout", "connect_timeout",
        "connect_refused", "drain", "denied", "error", "client_left")
#: enum fp_http_method, by value
METHODS = ("OTHER", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


def obs_setup(Engine engine not None, int ring_cap=4096, int cluster_cap=1024) -> None:
    """Turn on access-log rings (records per worker) and cluster tables (clusters over all
    workers) before engine.start()."""
    _check(fp_obs_setup(engine._live(), ring_cap, cluster_cap), "observability setup")


def obs_drain(Engine engine not None, int max_records=4096) -> list:
    """Take up to max_records pending access-log records off the rings (one caller at a time).
    Each is a tuple: (kind 'conn'|'http', start_ns, dur_us, src_ip, src_port, dst_ip, dst_port,
    action, rule, reason, would_deny, end, host, tls, method, path, status, bytes_c2u,
    bytes_u2c, table_id)."""
    cdef fp_engine *e = engine._live()
    cdef fp_obs_rec *buf = <fp_obs_rec *>malloc(sizeof(fp_obs_rec) * (max_records if max_records > 0 else 1))
    cdef int n, i
    cdef fp_obs_rec *r
    if buf == NULL:
        raise MemoryError()
    out = []
    try:
        with nogil:
            n = fp_obs_drain(e, buf, max_records)
        for i in range(n):
            r = &buf[i]
            if r.family == 6:
                src = str(_ipaddress.IPv6Address(bytes(r.src[:16])))
                dst = str(_ipaddress.IPv6Address(bytes(r.dst[:16])))
            else:
                src = str(_ipaddress.IPv4Address(bytes(r.src[:4])))
                dst = str(_ipaddress.IPv4Address(bytes(r.dst[:4])))
            action = _ACTION_NAMES.get(r.action, "undecided")
            out.append(("http" if r.kind == 2 else "conn", r.start_ns, r.dur_us, src, r.src_port,
                        dst, r.dst_port, action, r.rule,
                        REASONS.get(r.reason, str(r.reason)),
                        bool(r.would_deny), ENDS[r.end] if r.end < len(ENDS) else str(r.end),
                        (<bytes>r.host).decode("latin-1"), bool(r.tls),
                        METHODS[r.method] if r.method < len(METHODS) else "OTHER",
                        (<bytes>r.path).decode("latin-1"), r.status, r.bytes_c2u, r.bytes_u2c,
                        r.table_id))
    finally:
        free(buf)
    return out


def obs_counters(Engine engine not None) -> dict:
    """Decisions by outcome (deny and would_deny by reason name), HTTP responses by code, access
    log records written and dropped, clusters counted under "other"."""
    cdef fp_obs_counters c
    fp_obs_read_counters(engine._live(), &c)
    denied = [c.denied[i] for i in range(FP_OBS_REASONS)]
    would = [c.would_deny[i] for i in range(FP_OBS_REASONS)]
    codes = [c.http_codes[i] for i in range(600)]
    return {
        "mesh": c.decided_mesh, "allow": c.decided_allow, "passthrough": c.decided_passthrough,
        "deny": {REASONS.get(i, str(i)) or "none": n for i, n in enumerate(denied) if n},
        "would_deny": {REASONS.get(i, str(i)) or "none": n for i, n in enumerate(would) if n},
        "http_codes": {i: n for i, n in enumerate(codes) if n and i >= 100},
        "log_records": c.log_records, "log_dropped": c.log_dropped,
        "clusters_overflow": c.clusters_overflow,
    }


def obs_clusters(Engine engine not None) -> dict:
    """Cluster counters summed over workers: name ("other" for the overflow slot) -> dict of
    cx_active, cx_total, tx_bytes, rx_bytes, rq_completed, rq_class {1..5: n}, codes {code: n}."""
    cdef fp_engine *e = engine._live()
    cdef int need = fp_obs_clusters(e, NULL, 0)
    cdef int n, i, k
    cdef fp_cluster_snap *buf = <fp_cluster_snap *>malloc(sizeof(fp_cluster_snap) * (need + 64))
    if buf == NULL:
        raise MemoryError()
    out = {}
    try:
        with nogil:
            n = fp_obs_clusters(e, buf, need + 64)
        for i in range(n):
            name = (<bytes>buf[i].name).decode("latin-1") or "other"
            d = out.get(name)
            if d is None:
                d = out[name] = {"cx_active": 0, "cx_total": 0, "tx_bytes": 0, "rx_bytes": 0,
                                 "rq_completed": 0, "rq_class": {}, "codes": {}}
            d["cx_active"] += buf[i].cx_active
            d["cx_total"] += buf[i].cx_total
            d["tx_bytes"] += buf[i].tx_bytes
            d["rx_bytes"] += buf[i].rx_bytes
            d["rq_completed"] += buf[i].rq_completed
            for k in range(1, 6):
                if buf[i].rq_class[k]:
                    d["rq_class"][k] = d["rq_class"].get(k, 0) + buf[i].rq_class[k]
            for k in range(FP_OBS_CODE_SLOTS):
                if buf[i].codes[k]:
                    d["codes"][buf[i].codes[k]] = d["codes"].get(buf[i].codes[k], 0) + buf[i].code_count[k]
    finally:
        free(buf)
    return out


def table_set_obs(Table table not None, int table_id, bint log=True, double passthrough=1.0,
                  bint audit=False) -> None:
    """Access log and audit settings of connections admitted under `table` (before handing it to
    the engine): records on/off, share of passthrough records kept (0..1), audit mode."""
    if not 0.0 <= passthrough <= 1.0:
        raise ValueError("passthrough share must be within 0..1")
    _check(fp_table_set_obs(table.t, table_id, log, <uint32_t>(passthrough * 1000000 + 0.5),
                            audit), "table observability")


def table_rule_hits(Table table not None, int nrules) -> list:
    """Connections and requests each rule 0..nrules-1 admitted so far."""
    return [fp_table_rule_hits(table.t, i) for i in range(nrules)]


def table_refs(Table table not None) -> int:
    """References held on the C table (1: only this Python object: no engine, no connection)."""
    return fp_table_refs(table.t)


def table_rule_kinds(Table table not None, int nrules) -> list:
    """enum fp_rule_kind of each rule 0..nrules-1 (values of RULE_KINDS)."""
    return [fp_table_rule_kind(table.t, i) for i in range(nrules)]
