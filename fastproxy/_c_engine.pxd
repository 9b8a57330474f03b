# Mirrors src_c/fp_engine.h: the engine and its decision table.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

from fastproxy._c_peek cimport fp_http_req

cdef extern from "<sys/socket.h>":
    struct sockaddr:
        pass

cdef extern from "fp_engine.h" nogil:
    enum fp_action:
        FP_ACT_DENY
        FP_ACT_PASSTHROUGH
        FP_ACT_MESH
        FP_ACT_ALLOW
        FP_ACT_PEEK_TLS
        FP_ACT_PEEK_HTTP
        FP_ACT_PEEK_ANY

    enum fp_rule_kind:
        FP_RULE_MESH
        FP_RULE_TCP
        FP_RULE_HTTPS
        FP_RULE_HTTP

    enum fp_reason:
        FP_WHY_NONE
        FP_WHY_NO_POLICY
        FP_WHY_NO_SNI
        FP_WHY_SNI
        FP_WHY_HOST
        FP_WHY_ROUTE
        FP_WHY_OVER_LIMIT
        FP_WHY_PEEK_TIMEOUT
        FP_WHY_BAD_REQUEST
        FP_WHY_TUNNEL

    struct fp_verdict:
        int action
        int rule
        int reason

    ctypedef struct fp_table:
        pass
    fp_table *fp_table_new()
    void fp_table_ref(fp_table *t)
    void fp_table_unref(fp_table *t)
    int fp_table_set_default(fp_table *t, int action)
    int fp_table_set_timeouts(fp_table *t, int connect_ms, int idle_ms)
    int fp_table_set_peek_timeout(fp_table *t, int peek_ms)
    int fp_table_set_port_narrowing(fp_table *t, int on)
    int fp_table_add_rule(fp_table *t, int kind, int connect_ms, int max_conns)
    int fp_table_rule_add_upstream(fp_table *t, int rule, const sockaddr *addr)
    int fp_table_rule_restrict_cidr(fp_table *t, int rule, int family, const uint8_t *addr, int plen)
    int fp_table_rule_add_route(fp_table *t, int rule, const char *path_regex, uint32_t methods,
                                const char *const *header_names, const char *const *header_regexes,
                                int nheaders, int *bad_regex)
    int fp_table_add_cidr(fp_table *t, uint16_t port, int family, const uint8_t *addr, int plen,
                          int rule)
    int fp_table_set_tcp_any(fp_table *t, uint16_t port, int rule)
    int fp_table_add_host(fp_table *t, uint16_t port, const char *name, size_t len, const int *rules,
                          int nrules)
    int fp_table_build(fp_table *t)
    int fp_table_decide(const fp_table *t, const sockaddr *dst, fp_verdict *v)
    int fp_table_decide_sni(const fp_table *t, const sockaddr *dst, const char *sni, size_t sni_len,
                            fp_verdict *v)
    int fp_table_decide_http(const fp_table *t, const sockaddr *dst, const uint8_t *head,
                             const fp_http_req *req, fp_verdict *v)
    int fp_table_rule_kind(const fp_table *t, int rule)

    ctypedef struct fp_limits:
        pass
    fp_limits *fp_limits_new()
    void fp_limits_ref(fp_limits *l)
    void fp_limits_unref(fp_limits *l)
    int fp_limits_add(fp_limits *l)
    int fp_limits_active(const fp_limits *l, int slot)
    int fp_table_set_limits(fp_table *t, fp_limits *l)
    int fp_table_rule_set_limit(fp_table *t, int rule, int slot)

    ctypedef struct fp_engine:
        pass

    struct fp_engine_opts:
        int nworkers
        uint16_t port
        char bind_v4[16]
        char bind_v6[46]
        int use_splice
        int pipe_size
        int pipe_pool_cap
        int copy_buf_size
        int backlog

    void fp_engine_opts_default(fp_engine_opts *o)
    int fp_engine_new(const fp_engine_opts *o, fp_table *initial, fp_engine **out)
    int fp_engine_start(fp_engine *e)
    void fp_engine_set_table(fp_engine *e, fp_table *t)
    int fp_engine_stop_accepting(fp_engine *e)
    int fp_engine_shutdown(fp_engine *e)
    void fp_engine_free(fp_engine *e)

    struct fp_stats:
        uint64_t cx_accepted
        uint64_t cx_active
        uint64_t cx_closed
        uint64_t cx_passthrough
        uint64_t cx_denied
        uint64_t cx_no_original_dst
        uint64_t cx_connect_fail
        uint64_t cx_connect_timeout
        uint64_t cx_idle_timeout
        uint64_t cx_reset_by_client
        uint64_t cx_reset_by_upstream
        uint64_t bytes_c2u
        uint64_t bytes_u2c
        uint64_t pipes_in_use
        uint64_t pipes_pooled
        uint64_t pipes_created
        uint64_t splice_fallbacks
        uint64_t accept_errors
        uint64_t cx_mesh
        uint64_t cx_allowed
        uint64_t cx_over_limit
        uint64_t cx_peek_timeout
        uint64_t cx_http
        uint64_t http_allowed
        uint64_t http_denied
        uint64_t http_bad
        uint64_t accept_emfile
        uint64_t fd_exhausted
        uint64_t cx_connect_addrnotavail
        uint64_t epoll_errors
        uint64_t tls_hrr
        uint64_t tls_sni_changed
        uint64_t http_tunnel_denied
        uint64_t debug_live_conns
        uint64_t debug_live_pipes
        uint64_t debug_live_fds

    int fp_engine_stats(fp_engine *e, fp_stats *out)
    int fp_debug_build()


cdef extern from "fp_re2.h" nogil:
    ctypedef struct fp_re:
        pass
    int FP_RE_MAX_LEN
    int FP_RE_MAX_DEPTH
    int FP_RE_MAX_PROG
    int FP_RE_MAX_MEM
    int fp_re_compile(const char *pattern, size_t len, fp_re **out, char *err, size_t errlen)
    int fp_re_search(const fp_re *re, const uint8_t *s, size_t len)
    void fp_re_free(fp_re *re)
