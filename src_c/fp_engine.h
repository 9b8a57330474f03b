/* fastproxy data plane: the engine (listeners, workers, relay) and its decision table.
 *
 * Conventions for everything exported from src_c/:
 *   - every exported symbol starts with fp_ (or FP_ for macros and constants);
 *   - functions return a byte count or 0 on success, or a negative errno on failure;
 *   - nothing here prints; errors travel as return values and counters;
 *   - nothing here calls back into Python: the engine's threads never take the GIL.
 *
 * Threading: fp_engine_start() spawns N worker threads, each with its own epoll loop and its own
 * SO_REUSEPORT listeners. All other fp_engine_* functions are called from one control thread
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

/* What to do with an accepted connection. */
enum fp_action {
    FP_ACT_DENY = 0,        /* reset the client (SO_LINGER 0) */
    FP_ACT_PASSTHROUGH = 1, /* relay opaque bytes to the original destination */
};

/* A decision table: immutable once handed to the engine, shared by every worker, reference
 * counted so that connections admitted under it keep it alive across a reload. */
typedef struct fp_table fp_table;

/* Contract: allocates an empty table whose default action is FP_ACT_DENY, connect timeout 60 s,
 * idle timeout 60 s. Returns NULL only when out of memory. Caller owns one reference. */
fp_table *fp_table_new(void);

/* Contract: adds one reference (the table is shared, the count is atomic). */
void fp_table_ref(fp_table *t);

/* Contract: drops one reference; frees the table when none are left. NULL is a no-op. */
void fp_table_unref(fp_table *t);

/* Contract: sets the action for destinations no rule matches. Returns 0 or -EINVAL. */
int fp_table_set_default(fp_table *t, int action);

/* Contract: sets the connect and idle timeouts in milliseconds (0 = none). Returns 0 or -EINVAL
 * for negative values. Connections keep the timeouts of the table they were admitted under. */
int fp_table_set_timeouts(fp_table *t, int connect_ms, int idle_ms);

/* Contract: pure lookup; returns the fp_action for a connection whose original destination is
 * `dst` (AF_INET or AF_INET6 sockaddr). Never blocks, never allocates. */
int fp_table_decide(const fp_table *t, const struct sockaddr *dst);

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

/* Contract: creates the engine and binds its listeners (SO_REUSEPORT, one set per worker), so
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

/* Contract: returns a new reference to the table new connections are decided by. */
fp_table *fp_engine_get_table(fp_engine *e);

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
