/* fastproxy data plane: the engine (listeners, workers, relay) and its decision table.
 *
 * Conventions for everything exported from src_c/:
 *   - every exported symbol starts with fp_ (or FP_ for macros and constants);
 *   - functions return a byte count or 0 on success, or a negative errno on failure;
 *   - nothing here prints; errors travel as return values and counters;
 *   - nothing here calls back into Python: the engine's threads never take the GIL.
 *
 * Threading: fp_engine_start() spawns N worker threads, each with its own epoll loop; they share
 * one listener per address family (EPOLLEXCLUSIVE in each epoll set). All other fp_engine_* functions are called from one control thread
 * (Python's main thread) and talk to the workers through atomics and an eventfd per worker.
 */
#ifndef FP_ENGINE_H
#define FP_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include <netinet/in.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- decision table ------------------------------------------------------------------------ */

/* What to do with an accepted connection (or, in HTTP mode, with one request). */
enum fp_action {
    FP_ACT_DENY = 0,        /* reset the client (SO_LINGER 0); an HTTP request gets a 403 */
    FP_ACT_PASSTHROUGH = 1, /* relay opaque bytes to the original destination */
    FP_ACT_MESH = 2,        /* in-mesh destination: relay to the original destination */
    FP_ACT_ALLOW = 3,       /* an egress rule allowed it (fp_verdict.rule says which) */
    FP_ACT_PEEK_TLS = 4,    /* https rules on this port: decide by the ClientHello's SNI */
    FP_ACT_PEEK_HTTP = 5,   /* http rules on this port: decide each request by its Host */
    FP_ACT_PEEK_ANY = 6,    /* both: a TLS record is decided by SNI, anything else as HTTP */
};

/* What an egress or mesh rule is for. */
enum fp_rule_kind { FP_RULE_MESH = 1, FP_RULE_TCP = 2, FP_RULE_HTTPS = 3, FP_RULE_HTTP = 4 };

/* Why no rule allowed a connection or request (what a deny, an audit-mode "would deny", or a
 * default passthrough fell back from). The decide functions set the first six; the relay sets
 * the ones it alone can see. Access log, metrics and explain name them (fastproxy/reasons.py). */
enum fp_reason {
    FP_WHY_NONE = 0,         /* a rule decided (mesh, allow) or a peek is still needed */
    FP_WHY_NO_POLICY = 1,    /* no rule of the destination's port holds it */
    FP_WHY_NO_SNI = 2,       /* https rules: the ClientHello named no server */
    FP_WHY_SNI = 3,          /* https rules: the SNI is not among the allowed hosts */
    FP_WHY_HOST = 4,         /* http rules: the Host is not among the allowed hosts */
    FP_WHY_ROUTE = 5,        /* http rules: the Host is allowed, no route matches the request */
    FP_WHY_OVER_LIMIT = 6,   /* relay: the rule's connection limit was reached */
    FP_WHY_PEEK_TIMEOUT = 7, /* relay: the bytes a peek needed did not come in time */
    FP_WHY_BAD_REQUEST = 8,  /* relay: unparsable, ambiguous or over-cap ClientHello / request */
    FP_WHY_TUNNEL = 9,       /* relay: a tunnel (CONNECT, Upgrade) the policy does not allow */
};

/* A verdict: the action and, for FP_ACT_MESH / FP_ACT_ALLOW, the rule id (else -1); `reason`
 * (enum fp_reason) says why no rule allowed it when the action fell back to the default. */
struct fp_verdict {
    int action;
    int rule;
    int reason;
};

/* A decision table: immutable once handed to the engine, shared by every worker, reference
 * counted so that connections admitted under it keep it alive across a reload.
 *
 * Building: fp_table_new(), then any number of fp_table_add_* / fp_table_rule_* / setters, then
 * fp_table_build() (freezes the lookup structures); only a built table may be looked up or
 * handed to the engine. Decision order, per destination port (the contract's section 3):
 *   1. an in-mesh CIDR of the port holds the IP: FP_ACT_MESH;
 *   2. with egress policies: a tcp CIDR of the port holds the IP: FP_ACT_ALLOW; else a tcp rule
 *      without CIDRs on the port: FP_ACT_ALLOW; else https / http host rules on the port:
 *      FP_ACT_PEEK_* (then fp_table_decide_sni / fp_table_decide_http per ClientHello / request);
 *   3. otherwise the default (FP_ACT_PASSTHROUGH when enableEgress, else FP_ACT_DENY).
 * With the default passthrough, host rules are not peeked for (every answer would be "relay to
 * the original destination" anyway) unless a host rule of the port redirects its upstream. */
typedef struct fp_table fp_table;

/* Contract: allocates an empty table whose default action is FP_ACT_DENY, connect timeout 60 s,
 * idle timeout 60 s, peek timeout 5 s. Returns NULL only when out of memory. Caller owns one
 * reference. */
fp_table *fp_table_new(void);

/* Contract: adds one reference (the table is shared, the count is atomic). */
void fp_table_ref(fp_table *t);

/* Contract: drops one reference; frees the table when none are left. NULL is a no-op. */
void fp_table_unref(fp_table *t);

/* Contract: sets the action for destinations no rule matches (FP_ACT_DENY or
 * FP_ACT_PASSTHROUGH). Returns 0, -EINVAL, or -EBUSY once built. */
int fp_table_set_default(fp_table *t, int action);

/* Contract: sets the connect and idle timeouts in milliseconds (0 = none). Returns 0, -EINVAL
 * for negative values, -EBUSY once built. Connections keep the timeouts of the table they were
 * admitted under. */
int fp_table_set_timeouts(fp_table *t, int connect_ms, int idle_ms);

/* Contract: turns on FSM's port narrowing: a port carrying egress rules denies what they do not
 * allow even when the default is passthrough. Returns 0 or -EBUSY. */
int fp_table_set_port_narrowing(fp_table *t, int on);

/* Contract: sets how long a connection may take to show the bytes a peek needs (ClientHello,
 * first request head) in milliseconds (> 0). Returns 0, -EINVAL, -EBUSY. */
int fp_table_set_peek_timeout(fp_table *t, int peek_ms);

/* Contract: adds a rule of `kind` (enum fp_rule_kind) with its own connect timeout (ms, 0: the
 * table's) and connection limit (0: none). Returns the rule id (>= 0) or -EINVAL/-ENOMEM/-EBUSY.*/
int fp_table_add_rule(fp_table *t, int kind, int connect_ms, int max_conns);

/* Contract: makes connections allowed by `rule` dial `addr` (sockaddr_in/in6 with the port,
 * resolved by the control plane; several: round robin) instead of their original destination.
 * addr NULL only marks the rule as redirected: with no address added, its connections are
 * refused (the name did not resolve). Returns 0, -EINVAL, -ENOMEM, -EBUSY. */
int fp_table_rule_add_upstream(fp_table *t, int rule, const struct sockaddr *addr);

/* Contract: restricts an https / http `rule` to destination IPs inside the CIDRs added here
 * (none added: any IP). Returns 0, -EINVAL, -ENOMEM, -EBUSY. */
int fp_table_rule_restrict_cidr(fp_table *t, int rule, int family, const uint8_t *addr, int plen);

/* Contract: adds a route match to an http `rule`: a request matches when its path (with query)
 * holds a match (unanchored search) of the RE2 regex `path_regex` (NULL or "": any path; see
 * fp_re2.h for the dialect and caps), its method's bit
 * (1 << enum fp_http_method) is in `methods`, and for each of the `nheaders` headers a header
 * line of that name (case-insensitive) has a value holding a match of its regex. An http rule
 * without routes allows any request. Returns the route
 * index (>= 0), -EINVAL (not an http rule, or a regex fp_re_compile refuses: *bad_regex then says
 * which: 0 path, 1 + i header i), -ENOMEM or -EBUSY. */
int fp_table_rule_add_route(fp_table *t, int rule, const char *path_regex, uint32_t methods,
                            const char *const *header_names, const char *const *header_regexes,
                            int nheaders, int *bad_regex);

/* Contract: maps addr/plen on `port` to `rule` (an FP_RULE_MESH or FP_RULE_TCP rule, which says
 * which set it goes in). Returns 0, -EINVAL, -ENOMEM, -EBUSY. */
int fp_table_add_cidr(fp_table *t, uint16_t port, int family, const uint8_t *addr, int plen,
                      int rule);

/* Contract: makes the FP_RULE_TCP `rule` allow every IP on `port`. Returns 0, -EINVAL, -EBUSY. */
int fp_table_set_tcp_any(fp_table *t, uint16_t port, int rule);

/* Contract: maps host `name` (exact, or "*.suffix") on `port` to the candidate https or http
 * rules[0..nrules) (1..64, all of one kind, in table order; each name added once per port and
 * kind). Among the candidates whose CIDRs (if any) hold the destination IP, the most specific
 * decides: a CIDR match (longest prefix first) before no CIDRs, exact before wildcard, then table
 * order; for http the first of those with a matching route. Returns 0, -EINVAL (bad name or
 * rules), -ENOMEM, -EBUSY. */
int fp_table_add_host(fp_table *t, uint16_t port, const char *name, size_t len, const int *rules,
                      int nrules);

/* Contract: freezes the table's lookup structures. Returns 0 or -ENOMEM. Idempotent. */
int fp_table_build(fp_table *t);

/* Contract: pure lookup for a new connection to `dst` (AF_INET or AF_INET6 sockaddr with port);
 * fills *v. Never blocks, never allocates. Returns 0, or -EINVAL when the table is not built. */
int fp_table_decide(const fp_table *t, const struct sockaddr *dst, struct fp_verdict *v);

/* Contract: decides a connection that fp_table_decide() sent to a TLS peek, by its SNI
 * (sni_len 0: no SNI). Fills *v with FP_ACT_ALLOW and the rule, or the table's default.
 * Returns 0 or -EINVAL. */
int fp_table_decide_sni(const fp_table *t, const struct sockaddr *dst, const char *sni,
                        size_t sni_len, struct fp_verdict *v);

struct fp_http_req;
/* Contract: decides one HTTP request (head[0..req->head_len) parsed by fp_peek_http_request) on
 * a connection to `dst`: FP_ACT_ALLOW with the rule when an http rule of the port has its host
 * (a port in the Host must equal dst's port), the rule's CIDRs (if any) hold dst's IP and one of
 * its routes matches; else the table's default. Returns 0 or -EINVAL. */
int fp_table_decide_http(const fp_table *t, const struct sockaddr *dst, const uint8_t *head,
                         const struct fp_http_req *req, struct fp_verdict *v);

/* Contract: the kind of `rule` (enum fp_rule_kind), or -EINVAL. */
int fp_table_rule_kind(const fp_table *t, int rule);

/* Connection-limit counters that live outside any one table, so that a reload does not reset
 * them: the control plane keeps one fp_limits for the process, gives each limit-bearing setting
 * (an UpstreamTrafficSetting, a Pipy cluster) one stable slot, and attaches the store to every
 * table it builds; rules of one setting share its slot (the limit is per setting). */
typedef struct fp_limits fp_limits;

/* Contract: an empty store (one reference), or NULL when out of memory. */
fp_limits *fp_limits_new(void);

/* Contract: adds / drops one reference (atomic); the last drop frees it. NULL: no-op (unref). */
void fp_limits_ref(fp_limits *l);
void fp_limits_unref(fp_limits *l);

/* Contract: a new counter slot at 0 (control thread only). Returns the slot (>= 0), -ENOSPC past
 * 1,048,576 slots, or -ENOMEM. Slots are never reused or moved. */
int fp_limits_add(fp_limits *l);

/* Contract: the open connections counted in `slot` now, or -EINVAL. */
int fp_limits_active(const fp_limits *l, int slot);

/* Contract: makes the unbuilt table count its rules' connections in `l` (the table keeps a
 * reference). Returns 0, -EINVAL, -EBUSY. */
int fp_table_set_limits(fp_table *t, fp_limits *l);

/* Contract: makes `rule` count against slot `slot` of the table's store (fp_table_set_limits
 * first); its own max_conns stays the limit. Returns 0, -EINVAL, -EBUSY. */
int fp_table_rule_set_limit(fp_table *t, int rule, int slot);

/* ---- engine -------------------------------------------------------------------------------- */

typedef struct fp_engine fp_engine;

struct fp_engine_opts {
    int nworkers;            /* worker threads (>= 1) */
    uint16_t port;           /* outbound listener port (15001) */
    char bind_v4[INET_ADDRSTRLEN];   /* "0.0.0.0"; empty string: no IPv4 listener */
    char bind_v6[INET6_ADDRSTRLEN];  /* "::"; empty string: no IPv6 listener */
    int use_splice;          /* 1: splice() through pooled pipes; 0: copy through a buffer */
    int pipe_size;           /* bytes asked for with F_SETPIPE_SZ (0: kernel default) */
    int pipe_pool_cap;       /* pipes that may exist at once, all workers together (>= 0) */
    int copy_buf_size;       /* bytes of the per-direction buffer used when copying */
    int backlog;             /* listen() backlog */
};

/* Contract: fills `o` with the defaults (1 worker, port 15001, 0.0.0.0 and ::, splice on, 1 MiB
 * pipes, pool sized from /proc/sys/fs/pipe-user-pages-soft, 64 KiB copy buffers, backlog 4096). */
void fp_engine_opts_default(struct fp_engine_opts *o);

/* Contract: creates the engine and binds its listeners (one per family, shared by the workers), so
 * that the caller may drop privileges afterwards. No thread runs yet. On success stores the
 * engine in *out and returns 0; otherwise returns a negative errno (-EADDRINUSE, -EINVAL, ...)
 * and leaves nothing open. An IPv6 listener that cannot be created because the host has no IPv6
 * is skipped silently; any other failure is an error. */
int fp_engine_new(const struct fp_engine_opts *o, fp_table *initial, fp_engine **out);

/* Contract: starts the worker threads (signals blocked in them). Returns 0 or a negative errno. */
int fp_engine_start(fp_engine *e);

/* Contract: installs `t` for new connections (the engine takes over the caller's reference);
 * open connections keep the table they were admitted under. Atomic with respect to workers. */
void fp_engine_set_table(fp_engine *e, fp_table *t);

/* Contract: closes the listeners (pending, not yet accepted connections are reset by the kernel);
 * open connections go on. Returns 0 or a negative errno. Idempotent. */
int fp_engine_stop_accepting(fp_engine *e);

/* Contract: asks the workers to close every open connection with a reset, stops and joins them.
 * Returns 0. After it, only fp_engine_stats() and fp_engine_free() may be called. */
int fp_engine_shutdown(fp_engine *e);

/* Contract: shuts down if still running, closes everything, frees the engine. NULL is a no-op. */
void fp_engine_free(fp_engine *e);

/* Counters, summed over workers. Monotonic except the gauges marked (g). */
struct fp_stats {
    uint64_t cx_accepted;        /* connections accepted */
    uint64_t cx_active;          /* (g) connections open now */
    uint64_t cx_closed;          /* connections finished, however they ended */
    uint64_t cx_passthrough;     /* decided passthrough */
    uint64_t cx_denied;          /* decided deny (reset) */
    uint64_t cx_no_original_dst; /* no original destination, or it was the listener itself */
    uint64_t cx_connect_fail;    /* upstream refused or unreachable: client reset */
    uint64_t cx_connect_timeout; /* upstream connect exceeded the timeout: client reset */
    uint64_t cx_idle_timeout;    /* closed by the idle timeout */
    uint64_t cx_reset_by_client; /* a reset from the client was passed on to the upstream */
    uint64_t cx_reset_by_upstream; /* a reset from the upstream was passed on to the client */
    uint64_t bytes_c2u;          /* bytes delivered client -> upstream */
    uint64_t bytes_u2c;          /* bytes delivered upstream -> client */
    uint64_t pipes_in_use;       /* (g) pipes lent to connections now */
    uint64_t pipes_pooled;       /* (g) idle pipes kept in the pools */
    uint64_t pipes_created;      /* pipes ever created */
    uint64_t splice_fallbacks;   /* times a direction copied because no pipe was free or splice refused */
    uint64_t accept_errors;      /* accept() failures other than EAGAIN (EMFILE, ...) */
    uint64_t cx_mesh;            /* decided in-mesh */
    uint64_t cx_allowed;         /* allowed by an egress rule (tcp, or https by SNI) */
    uint64_t cx_over_limit;      /* refused: the rule's connection limit was reached */
    uint64_t cx_peek_timeout;    /* the bytes a peek needed did not come in time */
    uint64_t cx_http;            /* connections handled request by request (http rules) */
    uint64_t http_allowed;       /* HTTP requests allowed by an http rule */
    uint64_t http_denied;        /* HTTP requests answered 403 */
    uint64_t http_bad;           /* unparsable or ambiguous requests/responses (400 or reset) */
    uint64_t accept_emfile;      /* clients accepted on the reserve fd and reset: out of fds */
    uint64_t fd_exhausted;       /* (g) 1 while the last accept hit EMFILE/ENFILE (no accept since) */
    uint64_t cx_connect_addrnotavail; /* upstream dials failing with EADDRNOTAVAIL (no ephemeral
                                       * port left); also counted in cx_connect_fail */
    uint64_t epoll_errors;       /* epoll_ctl refused a socket: its connection was reset */
    uint64_t tls_hrr;            /* HelloRetryRequests seen on SNI-checked connections */
    uint64_t tls_sni_changed;    /* second ClientHello naming another server: reset */
    uint64_t http_tunnel_denied; /* CONNECT refused: no route names the method */
    uint64_t debug_live_conns;   /* (g) FP_DEBUG only: connection objects allocated */
    uint64_t debug_live_pipes;   /* (g) FP_DEBUG only: pipes open (pooled or lent) */
    uint64_t debug_live_fds;     /* (g) FP_DEBUG only: sockets owned by connections */
};

/* Contract: fills `out` with a snapshot (relaxed reads; each counter is exact, the set is not
 * taken at one instant). Returns 0. */
int fp_engine_stats(fp_engine *e, struct fp_stats *out);

/* Contract: 1 when compiled with FP_DEBUG, else 0. */
int fp_debug_build(void);

#ifdef __cplusplus
}
#endif
#endif
