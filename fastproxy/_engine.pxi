# The engine and its decision table, as Python objects. Included by _core.pyx.
import ipaddress as _ipaddress

from libc.string cimport memset, memcpy, strncpy
from libc.stdint cimport uint8_t, uint16_t
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from fastproxy._c_engine cimport *
from fastproxy._c_peek cimport fp_http_req, fp_peek_http_request

cdef extern from "fp_internal.h" nogil:
    int fp_table_rule_admit(fp_table *t, int rule)
    void fp_table_rule_release(fp_table *t, int rule)

cdef extern from "<netinet/in.h>" nogil:
    ctypedef unsigned short sa_family_t
    struct in_addr:
        unsigned int s_addr
    struct sockaddr_in:
        sa_family_t sin_family
        unsigned short sin_port
        in_addr sin_addr
    struct in6_addr:
        unsigned char s6_addr[16]
    struct sockaddr_in6:
        sa_family_t sin6_family
        unsigned short sin6_port
        in6_addr sin6_addr
    struct sockaddr_storage:
        sa_family_t ss_family
    int AF_INET
    int AF_INET6
    unsigned short htons(unsigned short)

import errno as _errno
import os as _os

from fastproxy.errors import EngineError

DEBUG = bool(fp_debug_build())

ACTIONS = {"deny": FP_ACT_DENY, "passthrough": FP_ACT_PASSTHROUGH, "mesh": FP_ACT_MESH,
           "allow": FP_ACT_ALLOW, "need-sni": FP_ACT_PEEK_TLS, "need-http-head": FP_ACT_PEEK_HTTP,
           "need-peek": FP_ACT_PEEK_ANY}
_ACTION_NAMES = {v: k for k, v in ACTIONS.items()}
# enum fp_reason, as explain, the access log and metrics name it
REASONS = {FP_WHY_NONE: "", FP_WHY_NO_POLICY: "no-policy", FP_WHY_NO_SNI: "no-sni",
           FP_WHY_SNI: "sni-not-allowed", FP_WHY_HOST: "host-not-allowed",
           FP_WHY_ROUTE: "no-route-matched", FP_WHY_OVER_LIMIT: "over-limit",
           FP_WHY_PEEK_TIMEOUT: "peek-timeout", FP_WHY_BAD_REQUEST: "bad-request",
           FP_WHY_TUNNEL: "tunnel-not-allowed"}
REGEX_CAPS = {"max_len": FP_RE_MAX_LEN, "max_depth": FP_RE_MAX_DEPTH,
              "max_program": FP_RE_MAX_PROG, "max_mem": FP_RE_MAX_MEM}
RULE_KINDS = {"mesh": FP_RULE_MESH, "tcp": FP_RULE_TCP, "https": FP_RULE_HTTPS, "http": FP_RULE_HTTP}
# Bits of an http route's method mask (1 << enum fp_http_method); "OTHER" is any other token.
METHOD_BITS = {name: 1 << i for i, name in enumerate(
    ("OTHER", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))}
ALL_METHODS = 0xFFFFFFFF

STAT_FIELDS = (
    "cx_accepted", "cx_active", "cx_closed", "cx_passthrough", "cx_denied", "cx_no_original_dst",
    "cx_connect_fail", "cx_connect_timeout", "cx_idle_timeout", "cx_reset_by_client",
    "cx_reset_by_upstream", "bytes_c2u", "bytes_u2c", "pipes_in_use", "pipes_pooled",
    "pipes_created", "splice_fallbacks", "accept_errors", "cx_mesh", "cx_allowed",
    "cx_over_limit", "cx_peek_timeout", "cx_http", "http_allowed", "http_denied", "http_bad",
    "accept_emfile", "fd_exhausted", "cx_connect_addrnotavail", "epoll_errors", "tls_hrr",
    "tls_sni_changed", "http_tunnel_denied", "debug_live_conns", "debug_live_pipes", "debug_live_fds",
)


cdef int _check(int r, str what) except -1:
    if r < 0:
        raise EngineError(f"{what}: {_os.strerror(-r)}", -r)
    return r


cdef int _fill_sockaddr(sockaddr_storage *ss, object ip, int port) except -1:
    addr = _ipaddress.ip_address(ip)
    cdef sockaddr_in *s4
    cdef sockaddr_in6 *s6
    cdef bytes packed = addr.packed
    memset(ss, 0, sizeof(sockaddr_storage))
    if addr.version == 4:
        s4 = <sockaddr_in *>ss
        s4.sin_family = AF_INET
        s4.sin_port = htons(port)
        memcpy(&s4.sin_addr, <const char *>packed, 4)
    else:
        s6 = <sockaddr_in6 *>ss
        s6.sin6_family = AF_INET6
        s6.sin6_port = htons(port)
        memcpy(&s6.sin6_addr, <const char *>packed, 16)
    return 0


def regex_error(str pattern):
    """Why the data plane's regex engine (RE2, src_c/fp_re2.h) refuses `pattern`, or None when
    it compiles within the caps. The same compile the table does."""
    cdef bytes b = pattern.encode("utf-8", "surrogatepass")
    cdef fp_re *re = NULL
    cdef char err[256]
    cdef int rc = fp_re_compile(b, len(b), &re, err, sizeof(err))
    if rc == 0:
        fp_re_free(re)
        return None
    if rc == -_errno.ENOMEM:
        raise MemoryError()
    return err.decode("utf-8", "replace")


cdef class Regex:
    """One compiled RE2 regex of the data plane (for tests and benchmarks: the table's own)."""

    cdef fp_re *re

    def __cinit__(self, str pattern):
        cdef bytes b = pattern.encode("utf-8", "surrogatepass")
        cdef char err[256]
        cdef int rc = fp_re_compile(b, len(b), &self.re, err, sizeof(err))
        if rc == -_errno.ENOMEM:
            raise MemoryError()
        if rc < 0:
            raise ValueError(err.decode("utf-8", "replace"))

    def __dealloc__(self):
        fp_re_free(self.re)

    def search(self, subject) -> bool:
        """Is there a match anywhere in `subject` (bytes, or str as UTF-8)?"""
        cdef bytes b = subject.encode() if isinstance(subject, str) else bytes(subject)
        cdef const uint8_t *p = <const uint8_t *>b
        cdef size_t n = len(b)
        cdef int r
        with nogil:
            r = fp_re_search(self.re, p, n)
        return r == 1


cdef class Limits:
    """Connection-limit counters kept across table builds (fp_limits): one stable slot per key
    (`UpstreamTrafficSetting ns/name`, ...). The control plane keeps one for the process and
    passes it to every table it compiles, so a reload does not reset what is open."""

    cdef fp_limits *l
    cdef dict slots

    def __cinit__(self):
        self.l = fp_limits_new()
        if self.l == NULL:
            raise MemoryError()
        self.slots = {}

    def __dealloc__(self):
        fp_limits_unref(self.l)
        self.l = NULL

    def slot(self, str key) -> int:
        """The counter slot of `key`, created at 0 on first use."""
        s = self.slots.get(key)
        if s is None:
            s = _check(fp_limits_add(self.l), f"limit counter for {key}")
            self.slots[key] = s
        return s

    def active(self, str key) -> int:
        """Connections open now under `key` (0 for an unknown key)."""
        s = self.slots.get(key)
        return 0 if s is None else _check(fp_limits_active(self.l, s), "limit counter")

    def keys(self):
        return list(self.slots)


cdef class Destinations:
    """A prepared array of destinations (ip, port) for Table.decide_loop."""

    cdef sockaddr_storage *arr
    cdef readonly int n

    def __cinit__(self, ips, int port):
        self.n = len(ips)
        self.arr = <sockaddr_storage *>PyMem_Malloc(sizeof(sockaddr_storage) * (self.n or 1))
        if self.arr == NULL:
            raise MemoryError()
        for i, ip in enumerate(ips):
            _fill_sockaddr(&self.arr[i], ip, port)

    def __dealloc__(self):
        PyMem_Free(self.arr)


cdef class Table:
    """A decision table for the C core (see fp_engine.h for the decision order). Add rules, call
    build(), then hand it to Engine.set_table(); the engine shares it (reference counted), so
    the Python object may go away. The decide*() methods run the same C lookups the workers do."""

    cdef fp_table *t
    cdef readonly bint built

    def __cinit__(self, str default="deny", int connect_timeout_ms=60000, int idle_timeout_ms=60000,
                  int peek_timeout_ms=5000, bint port_narrowing=False):
        self.t = fp_table_new()
        if self.t == NULL:
            raise MemoryError()
        if default not in ("deny", "passthrough"):
            raise ValueError(f"default action must be deny or passthrough, not {default!r}")
        _check(fp_table_set_default(self.t, ACTIONS[default]), "table default")
        _check(fp_table_set_timeouts(self.t, connect_timeout_ms, idle_timeout_ms), "table timeouts")
        _check(fp_table_set_peek_timeout(self.t, peek_timeout_ms), "table peek timeout")
        _check(fp_table_set_port_narrowing(self.t, port_narrowing), "table port narrowing")
        self.built = False

    def __dealloc__(self):
        fp_table_unref(self.t)
        self.t = NULL

    def add_rule(self, str kind, int connect_timeout_ms=0, int max_connections=0) -> int:
        """A new rule of kind mesh, tcp, https or http; returns its id."""
        if kind not in RULE_KINDS:
            raise ValueError(f"rule kind must be one of {sorted(RULE_KINDS)}, not {kind!r}")
        return _check(fp_table_add_rule(self.t, RULE_KINDS[kind], connect_timeout_ms,
                                        max_connections), "add rule")

    def rule_add_upstream(self, int rule, ip=None, int port=0) -> None:
        """Make `rule` dial ip:port instead of the original destination (ip None: redirected,
        but nothing resolved, so its connections are refused)."""
        cdef sockaddr_storage ss
        if ip is None:
            _check(fp_table_rule_add_upstream(self.t, rule, NULL), "rule upstream")
            return
        _fill_sockaddr(&ss, ip, port)
        _check(fp_table_rule_add_upstream(self.t, rule, <sockaddr *>&ss), "rule upstream")

    def rule_restrict_cidr(self, int rule, cidr) -> None:
        net = _ipaddress.ip_network(cidr, strict=False)
        cdef bytes packed = net.network_address.packed
        _check(fp_table_rule_restrict_cidr(self.t, rule, AF_INET if net.version == 4 else AF_INET6,
                                           <const uint8_t *>packed, net.prefixlen), f"rule CIDR {cidr}")

    def rule_add_route(self, int rule, str path_regex, unsigned int methods, headers=()) -> int:
        """Add a route to an http rule. Raises ValueError naming the regex RE2 refused and why:
        ("path", regex, why) or ("header", name, regex, why)."""
        cdef int n = len(headers)
        cdef const char **names = <const char **>PyMem_Malloc(sizeof(char *) * (n or 1))
        cdef const char **regexes = <const char **>PyMem_Malloc(sizeof(char *) * (n or 1))
        cdef int bad = -1
        cdef int r
        if "\0" in path_regex:
            raise ValueError(("path", path_regex, "NUL byte in pattern"))
        for hn, hr in headers:
            if "\0" in hr or "\0" in hn:
                raise ValueError(("header", hn, hr, "NUL byte in pattern"))
        keep = []
        try:
            for i, (hn, hr) in enumerate(headers):
                bn, br = hn.encode(), hr.encode()
                keep += [bn, br]
                names[i] = bn
                regexes[i] = br
            bp = path_regex.encode()
            r = fp_table_rule_add_route(self.t, rule, bp, methods, names, regexes, n, &bad)
        finally:
            PyMem_Free(names)
            PyMem_Free(regexes)
        if r == -_errno.EINVAL and bad >= 0:
            if bad == 0:
                raise ValueError(("path", path_regex, regex_error(path_regex)))
            hn, hr = headers[bad - 1]
            raise ValueError(("header", hn, hr, regex_error(hr)))
        return _check(r, "add route")

    def set_limits(self, Limits limits not None) -> None:
        """Count this table's rules' connections in `limits` (kept across reloads)."""
        _check(fp_table_set_limits(self.t, limits.l), "table limits")

    def rule_set_limit(self, int rule, int slot) -> None:
        """Make `rule` count against slot `slot` of the table's Limits."""
        _check(fp_table_rule_set_limit(self.t, rule, slot), "rule limit")

    def add_cidr(self, int port, cidr, int rule) -> None:
        net = _ipaddress.ip_network(cidr, strict=False)
        cdef bytes packed = net.network_address.packed
        _check(fp_table_add_cidr(self.t, port, AF_INET if net.version == 4 else AF_INET6,
                                 <const uint8_t *>packed, net.prefixlen, rule), f"CIDR {cidr}")

    def set_tcp_any(self, int port, int rule) -> None:
        _check(fp_table_set_tcp_any(self.t, port, rule), f"tcp any on port {port}")

    def add_host(self, int port, str name, rules) -> None:
        """Map host `name` on `port` to candidate rules (ids, in table order)."""
        cdef int n = len(rules)
        cdef int *arr = <int *>PyMem_Malloc(sizeof(int) * (n or 1))
        cdef int r
        try:
            for i, x in enumerate(rules):
                arr[i] = x
            b = name.encode()
            r = fp_table_add_host(self.t, port, b, len(b), arr, n)
        finally:
            PyMem_Free(arr)
        _check(r, f"host {name!r} on port {port}")

    def build(self):
        _check(fp_table_build(self.t), "build table")
        self.built = True
        return self

    def decide(self, ip, int port):
        """(action, rule id or -1, reason) for a new connection to ip:port; reason (REASONS'
        names) says why no rule allowed it, "" when one did or a peek is needed."""
        cdef sockaddr_storage ss
        cdef fp_verdict v
        _fill_sockaddr(&ss, ip, port)
        _check(fp_table_decide(self.t, <sockaddr *>&ss, &v), "decide (build the table first)")
        return _ACTION_NAMES[v.action], v.rule, REASONS[v.reason]

    def _admit(self, int rule) -> bool:
        """Tests: count one connection under `rule` as the relay does (False: over its limit)."""
        return fp_table_rule_admit(self.t, rule) == 0

    def _release(self, int rule) -> None:
        """Tests: undo one successful _admit."""
        fp_table_rule_release(self.t, rule)

    def decide_loop(self, Destinations dests not None, int repeat=1) -> int:
        """Runs fp_table_decide for every destination in `dests`, `repeat` times, in C without
        the GIL (for benchmarks: nothing in Python per lookup). Returns how many lookups were not
        a deny."""
        cdef fp_verdict v
        cdef long hits = 0
        cdef int i, k
        if not self.built:
            raise EngineError("decide: build the table first", _errno.EINVAL)
        with nogil:
            for k in range(repeat):
                for i in range(dests.n):
                    fp_table_decide(self.t, <sockaddr *>&dests.arr[i], &v)
                    if v.action != FP_ACT_DENY:
                        hits += 1
        return hits

    def decide_sni(self, ip, int port, str sni):
        """(action, rule, reason) for a TLS connection to ip:port whose ClientHello names `sni`."""
        cdef sockaddr_storage ss
        cdef fp_verdict v
        _fill_sockaddr(&ss, ip, port)
        b = sni.encode()
        _check(fp_table_decide_sni(self.t, <sockaddr *>&ss, b, len(b), &v), "decide sni")
        return _ACTION_NAMES[v.action], v.rule, REASONS[v.reason]

    def decide_http(self, ip, int port, bytes head):
        """(action, rule, reason) for one HTTP request whose head is `head` (parsed by the C
        parser the relay uses)."""
        cdef sockaddr_storage ss
        cdef fp_verdict v
        cdef fp_http_req req
        _fill_sockaddr(&ss, ip, port)
        rc = fp_peek_http_request(<const uint8_t *>head, len(head), &req)
        if rc != 0:
            raise ValueError(f"not a complete, valid request head (code {rc})")
        _check(fp_table_decide_http(self.t, <sockaddr *>&ss, <const uint8_t *>head, &req, &v),
               "decide http")
        return _ACTION_NAMES[v.action], v.rule, REASONS[v.reason]


cdef class Engine:
    """The data plane: listeners bound at construction (so privileges can be dropped after),
    worker threads started by start(). No Python runs on the byte path."""

    cdef fp_engine *e
    cdef readonly int workers
    cdef readonly int port
    cdef readonly bint splice

    def __cinit__(self, Table table not None, *, int workers=1, int port=15001,
                  str bind_v4="0.0.0.0", str bind_v6="::", bint splice=True,
                  pipe_size=None, pipe_pool_cap=None, copy_buf_size=None, backlog=None):
        cdef fp_engine_opts o
        fp_engine_opts_default(&o)
        o.nworkers = workers
        o.port = port
        b4 = bind_v4.encode()
        b6 = bind_v6.encode()
        if len(b4) >= sizeof(o.bind_v4) or len(b6) >= sizeof(o.bind_v6):
            raise ValueError("bind address too long")
        strncpy(o.bind_v4, b4, sizeof(o.bind_v4))
        strncpy(o.bind_v6, b6, sizeof(o.bind_v6))
        o.use_splice = 1 if splice else 0
        if pipe_size is not None:
            o.pipe_size = pipe_size
        if pipe_pool_cap is not None:
            o.pipe_pool_cap = pipe_pool_cap
        if copy_buf_size is not None:
            o.copy_buf_size = copy_buf_size
        if backlog is not None:
            o.backlog = backlog
        self.e = NULL
        if not table.built:
            table.build()
        cdef int r = fp_engine_new(&o, table.t, &self.e)
        if r < 0:
            self.e = NULL
            raise EngineError(f"cannot listen on port {port}: {_os.strerror(-r)}", -r)
        self.workers = workers
        self.port = port
        self.splice = splice

    def __dealloc__(self):
        if self.e != NULL:
            with nogil:
                fp_engine_free(self.e)
            self.e = NULL

    cdef fp_engine *_live(self) except NULL:
        if self.e == NULL:
            raise EngineError("engine is closed", _errno.EBADF)
        return self.e

    def start(self) -> None:
        _check(fp_engine_start(self._live()), "start workers")

    def set_table(self, Table table not None) -> None:
        """Install `table` for new connections; open ones keep theirs."""
        cdef fp_engine *e = self._live()
        if not table.built:
            table.build()
        fp_table_ref(table.t)
        fp_engine_set_table(e, table.t)

    def stop_accepting(self) -> None:
        _check(fp_engine_stop_accepting(self._live()), "stop accepting")

    def shutdown(self) -> None:
        """Reset every open connection and stop the workers."""
        cdef fp_engine *e = self._live()
        with nogil:
            fp_engine_shutdown(e)

    def close(self) -> None:
        if self.e != NULL:
            with nogil:
                fp_engine_free(self.e)
            self.e = NULL

    def stats(self) -> dict:
        """A snapshot of the counters, summed over workers."""
        cdef fp_stats s
        fp_engine_stats(self._live(), &s)
        cdef dict d = s
        return d
