# The engine and its decision table, as Python objects. Included by _core.pyx.
import ipaddress as _ipaddress

from libc.string cimport memset, memcpy, strncpy
from libc.stdint cimport uint8_t, uint16_t
from fastproxy._c_engine cimport *

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

ACTIONS = {"deny": FP_ACT_DENY, "passthrough": FP_ACT_PASSTHROUGH}
_ACTION_NAMES = {v: k for k, v in ACTIONS.items()}

STAT_FIELDS = (
    "cx_accepted", "cx_active", "cx_closed", "cx_passthrough", "cx_denied", "cx_no_original_dst",
    "cx_connect_fail", "cx_connect_timeout", "cx_idle_timeout", "cx_reset_by_client",
    "cx_reset_by_upstream", "bytes_c2u", "bytes_u2c", "pipes_in_use", "pipes_pooled",
    "pipes_created", "splice_fallbacks", "accept_errors", "debug_live_conns", "debug_live_pipes",
    "debug_live_fds",
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


cdef class Table:
    """A compiled decision table for the C core. Build it, then hand it to Engine.set_table();
    the engine shares it (reference counted), so the Python object may go away."""

    cdef fp_table *t

    def __cinit__(self, str default="deny", int connect_timeout_ms=60000, int idle_timeout_ms=60000):
        self.t = fp_table_new()
        if self.t == NULL:
            raise MemoryError()
        if default not in ACTIONS:
            raise ValueError(f"default action must be one of {sorted(ACTIONS)}, not {default!r}")
        _check(fp_table_set_default(self.t, ACTIONS[default]), "table default")
        _check(fp_table_set_timeouts(self.t, connect_timeout_ms, idle_timeout_ms), "table timeouts")

    def __dealloc__(self):
        fp_table_unref(self.t)
        self.t = NULL

    def decide(self, ip, int port) -> str:
        """What the C core decides for a connection to ip:port (the same lookup workers do)."""
        cdef sockaddr_storage ss
        _fill_sockaddr(&ss, ip, port)
        return _ACTION_NAMES[fp_table_decide(self.t, <sockaddr *>&ss)]


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
