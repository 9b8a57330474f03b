# Observability of the engine (src_c/fp_obs.h), as module functions over Engine and Table.
# Included by _core.pyx after _engine.pxi.
from libc.stdlib cimport malloc, free, realloc
from libc.string cimport memcpy, memset
from fastproxy._c_obs cimport *

# Reasons are named by REASONS (_engine.pxi): explain, the access log and metrics agree.
#: enum fp_end, by value
ENDS = ("fin", "reset_by_client", "reset_by_upstream", "idle_timeout", "connect_timeout",
        "connect_refused", "drain", "denied", "error", "client_left")
#: enum fp_http_method, by value
METHODS = ("OTHER", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")


# The names fp_obs_format writes, from the tables above and in _engine.pxi (one truth): C
# pointers into bytes objects kept alive here for the life of the module.
cdef fp_obs_names _LOG_NAMES
_LOG_NAME_BYTES = []


cdef const char *_keep_name(object name):
    b = str(name).encode("ascii")
    _LOG_NAME_BYTES.append(b)
    return <const char *>b


def _init_log_names() -> None:
    cdef int i
    for i in range(FP_OBS_ACTIONS):
        _LOG_NAMES.action[i] = _keep_name(_ACTION_NAMES[i]) if i in _ACTION_NAMES else NULL
    for i in range(FP_OBS_REASONS):
        _LOG_NAMES.reason[i] = _keep_name(REASONS[i]) if i in REASONS else NULL
    for i in range(FP_OBS_ENDS):
        _LOG_NAMES.end[i] = _keep_name(ENDS[i]) if i < len(ENDS) else NULL
    for i in range(FP_OBS_METHODS):
        _LOG_NAMES.method[i] = _keep_name(METHODS[i]) if i < len(METHODS) else NULL


_init_log_names()


cdef class _LineBuf:
    """A growing C buffer the drain formats lines into."""
    cdef char *p
    cdef size_t len, cap

    def __cinit__(self, size_t cap):
        self.p = <char *>malloc(cap)
        if self.p == NULL:
            raise MemoryError()
        self.len = 0
        self.cap = cap

    def __dealloc__(self):
        free(self.p)

    cdef int reserve(self, size_t more) except -1:
        cdef char *q
        cdef size_t want = self.cap
        while want - self.len < more:
            want *= 2
        if want != self.cap:
            q = <char *>realloc(self.p, want)
            if q == NULL:
                raise MemoryError()
            self.p = q
            self.cap = want
        return 0


cdef int _append_line(_LineBuf out, const fp_obs_rec *r, bytes by) except -1:
    cdef const char *byp = NULL
    cdef ssize_t n
    if by is not None:
        byp = <const char *>by
    out.reserve(4096 + (len(by) if by is not None else 0))  # a line is at most ~2,100 + len(by)
    n = fp_obs_format(r, &_LOG_NAMES, byp, out.p + out.len, out.cap - out.len)
    if n < 0:
        raise MemoryError("access log line longer than its buffer")
    out.len += <size_t>n
    return 0


def obs_drain_lines(Engine engine not None, int max_records, object by_json) -> tuple:
    """Take up to max_records pending access-log records off the rings (one caller at a time)
    and format them as JSON lines in C (fp_obs_format). `by_json(table_id, rule)` gives the
    JSON string literal (bytes, quotes included) of the object a rule id stands for, or None;
    it is asked only for records that name a rule. Returns (lines as bytes, record count)."""
    cdef fp_engine *e = engine._live()
    cdef int cap = max_records if max_records > 0 else 1
    cdef fp_obs_rec *buf = <fp_obs_rec *>malloc(sizeof(fp_obs_rec) * cap)
    cdef int n, i
    cdef fp_obs_rec *r
    if buf == NULL:
        raise MemoryError()
    out = _LineBuf(256 * cap)
    try:
        with nogil:
            n = fp_obs_drain(e, buf, max_records)
        for i in range(n):
            r = &buf[i]
            _append_line(out, r, by_json(r.table_id, r.rule) if r.rule >= 0 else None)
        return (out.p[:out.len], n)
    finally:
        free(buf)


def obs_format(str kind, uint64_t start_ns, uint64_t dur_us, bytes src, uint16_t sport,
               bytes dst, uint16_t dport, uint8_t action, bytes by, uint8_t reason,
               bint would_deny, uint8_t end, bytes host, bint tls, uint8_t method, bytes path,
               uint16_t status, uint64_t c2u, uint64_t u2c) -> bytes:
    """One record, built from its fields (enum values as numbers, addresses packed: 4 or 16
    bytes, host and path as the bytes the relay kept), as the access log writes it. For tests
    of the line format against its reference rendering."""
    cdef fp_obs_rec r
    memset(&r, 0, sizeof(r))
    if len(src) not in (4, 16) or len(dst) != len(src):
        raise ValueError("addresses are 4 or 16 packed bytes, both of one family")
    r.kind = 2 if kind == "http" else 1
    r.start_ns = start_ns
    r.dur_us = dur_us
    r.family = 6 if len(src) == 16 else 4
    memcpy(r.src, <const char *>src, len(src))
    memcpy(r.dst, <const char *>dst, len(dst))
    r.src_port = sport
    r.dst_port = dport
    r.action = action
    r.reason = reason
    r.would_deny = would_deny
    r.end = end
    r.tls = tls
    r.method = method
    r.status = status
    r.bytes_c2u = c2u
    r.bytes_u2c = u2c
    r.rule = -1 if by is None else 0
    memcpy(r.host, <const char *>host, min(len(host), FP_OBS_HOST_MAX - 1))
    memcpy(r.path, <const char *>path, min(len(path), FP_OBS_PATH_MAX - 1))
    out = _LineBuf(256)
    _append_line(out, &r, by)
    return out.p[:out.len]


def obs_setup(Engine engine not None, int ring_cap=4096, int cluster_cap=1024) -> None:
    """Turn on access-log rings (records per worker) and cluster tables (clusters over all
    workers) before engine.start()."""
    _check(fp_obs_setup(engine._live(), ring_cap, cluster_cap), "observability setup")


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
