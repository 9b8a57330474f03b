/* Observability of the data plane: access-log records and per-cluster counters.
 *
 * Workers write, one control thread reads; nothing here blocks, locks or allocates on the byte
 * path:
 *   - access log: each worker appends fixed-size records (struct fp_obs_rec) to its own
 *     single-producer single-consumer ring; a full ring drops the record and counts it, the
 *     connection never waits. One reader thread drains the rings (fp_obs_drain);
 *   - clusters: FSM's per-cluster counters (sidecar_cluster_*), in a fixed-capacity table per
 *     worker. A cluster seen when the table is full is counted under the reserved "other" slot.
 *     Slots are never evicted, so every counter of every exported series only grows (a series
 *     that vanished and came back from zero would read as a counter reset);
 *   - decisions by outcome and reason, HTTP responses by code, log records dropped.
 */
#ifndef FP_OBS_H
#define FP_OBS_H

#include <stdint.h>
#include <sys/types.h>

#include "fp_engine.h"

#ifdef __cplusplus
extern "C" {
#endif

#define FP_OBS_HOST_MAX 128   /* SNI or Host kept for the log (longer ones are cut) */
#define FP_OBS_PATH_MAX 128   /* request path kept for the log (longer ones are cut) */
#define FP_CLUSTER_NAME_MAX 112
#define FP_OBS_REASONS 16     /* enum fp_reason values counted */
#define FP_OBS_CODE_SLOTS 6   /* distinct response codes counted per cluster */

/* How a connection (or an HTTP request) ended. */
enum fp_end {
    FP_END_FIN = 0,             /* closed in order (both FINs, or response delivered) */
    FP_END_RESET_CLIENT = 1,    /* the client reset (passed on) */
    FP_END_RESET_UPSTREAM = 2,  /* the upstream reset (passed on) */
    FP_END_IDLE_TIMEOUT = 3,
    FP_END_CONNECT_TIMEOUT = 4,
    FP_END_CONNECT_REFUSED = 5, /* refused or unreachable */
    FP_END_DRAIN = 6,           /* reset at shutdown, past the drain deadline */
    FP_END_DENIED = 7,          /* reset by the sidecar: a deny */
    FP_END_ERROR = 8,           /* protocol error or out of memory: reset by the sidecar */
    FP_END_CLIENT_LEFT = 9,     /* the client closed before saying what the decision needed */
};

enum fp_rec_kind { FP_REC_CONN = 1, FP_REC_HTTP = 2 };

/* One access-log line, as the worker hands it over. Strings are NUL-terminated. */
struct fp_obs_rec {
    uint64_t start_ns;        /* CLOCK_REALTIME at accept (connection) or request head */
    uint64_t dur_us;          /* to the end of the connection / response */
    uint64_t bytes_c2u, bytes_u2c;
    uint64_t table_id;        /* fp_table_set_obs id of the table it was admitted under */
    int32_t rule;             /* rule id in that table, -1: none */
    uint16_t src_port, dst_port;
    uint16_t status;          /* HTTP status sent to the client, 0: none */
    uint8_t family;           /* 4 or 6 */
    uint8_t kind;             /* enum fp_rec_kind */
    uint8_t action;           /* enum fp_action (DENY, PASSTHROUGH, MESH, ALLOW); 255: undecided */
    uint8_t reason;           /* enum fp_reason */
    uint8_t would_deny;       /* audit mode let a deny through */
    uint8_t end;              /* enum fp_end */
    uint8_t method;           /* enum fp_http_method */
    uint8_t tls;              /* host is an SNI (else an HTTP Host, or nothing) */
    uint8_t src[16], dst[16];
    char host[FP_OBS_HOST_MAX];
    char path[FP_OBS_PATH_MAX];
};

/* Engine-wide counters (summed over workers). */
struct fp_obs_counters {
    uint64_t decided_mesh, decided_allow, decided_passthrough; /* connections + HTTP requests */
    uint64_t denied[FP_OBS_REASONS];      /* by enum fp_reason */
    uint64_t would_deny[FP_OBS_REASONS];  /* audit mode, by enum fp_reason */
    uint64_t log_records, log_dropped;    /* records written to / dropped from the rings */
    uint64_t clusters_overflow;           /* clusters counted under "other" (table full) */
    uint64_t http_codes[600];             /* responses on the http policy path by status */
};

/* One cluster's counters, as read by fp_obs_clusters. */
struct fp_cluster_snap {
    char name[FP_CLUSTER_NAME_MAX];       /* "" for the "other" slot */
    uint64_t cx_active;                   /* (g) upstream connections open */
    uint64_t cx_total, tx_bytes, rx_bytes;
    uint64_t rq_completed;
    uint64_t rq_class[6];                 /* [1..5]: 1xx..5xx */
    uint16_t codes[FP_OBS_CODE_SLOTS];    /* 0: slot free */
    uint64_t code_count[FP_OBS_CODE_SLOTS];
};

/* Contract: sets up access-log rings of `ring_cap` records per worker (rounded up to a power of
 * two, >= 2) and cluster tables holding `cluster_cap` clusters over all workers (each worker
 * gets cluster_cap / nworkers, at least 1, besides "other"). Only before fp_engine_start().
 * Returns 0, -EINVAL, -EBUSY (running) or -ENOMEM. Without it nothing is recorded. */
int fp_obs_setup(fp_engine *e, int ring_cap, int cluster_cap);

/* Contract: copies up to `max` pending records into out[] (worker by worker, oldest first) and
 * frees their ring slots. One caller at a time (one reader thread). Returns the count. */
int fp_obs_drain(fp_engine *e, struct fp_obs_rec *out, int max);

/* The names the access log writes for enum values, by value; the control plane's own tables
 * (fastproxy/_obs.pxi) are passed in, so that the log, explain and the metrics agree. A NULL or
 * out-of-range entry is written as the number (an action: "undecided"). */
#define FP_OBS_ACTIONS 8
#define FP_OBS_ENDS 16
#define FP_OBS_METHODS 16
struct fp_obs_names {
    const char *action[FP_OBS_ACTIONS];   /* enum fp_action */
    const char *reason[FP_OBS_REASONS];   /* enum fp_reason ("" for none) */
    const char *end[FP_OBS_ENDS];         /* enum fp_end */
    const char *method[FP_OBS_METHODS];   /* enum fp_http_method */
};

/* Contract: writes r as one JSON line ending in '\n' into out[0..cap) (fp_obs_fmt.c: the format
 * json.dumps gives the README's fields). `by`: the JSON string literal, quotes included, of the
 * object that decided it, or NULL. Returns the length, or -ENOSPC when cap is too small. Pure:
 * no state, no I/O. */
ssize_t fp_obs_format(const struct fp_obs_rec *r, const struct fp_obs_names *nm, const char *by,
                      char *out, size_t cap);

/* Contract: fills *out with the summed counters (relaxed reads). Returns 0. */
int fp_obs_read_counters(fp_engine *e, struct fp_obs_counters *out);

/* Contract: copies the used cluster slots of every worker (the same name may appear once per
 * worker: the reader sums them) into out[0..max). Returns the count, or the count needed when
 * out is NULL. */
int fp_obs_clusters(fp_engine *e, struct fp_cluster_snap *out, int max);

/* Contract: sets what the access log and audit mode do for connections admitted under `t`:
 * `id` is echoed in its records (the control plane maps rule ids to objects through it);
 * `log` 0: no records, 1: records; `passthrough_ppm`: share of passthrough connections and
 * requests logged, in millionths (0: none, 1000000: all); `audit` 1: every deny is relayed to
 * the original destination as a "would deny". Call before the table is handed to the engine
 * (built or not). Returns 0 or -EINVAL. */
int fp_table_set_obs(fp_table *t, uint64_t id, int log, uint32_t passthrough_ppm, int audit);

/* Contract: how many connections and requests `rule` of `t` admitted (mesh or allow), or 0.
 * Readable any time (relaxed). */
uint64_t fp_table_rule_hits(const fp_table *t, int rule);

/* Contract: the table's reference count now (1: only the caller holds it). */
int fp_table_refs(const fp_table *t);

/* ---- internal to the engine's C files ------------------------------------------------------ */

/* Per connection: what its access-log record and its cluster counters need. */
struct fp_obs_conn {
    uint64_t start_ns, mono_ns;        /* accept: wall clock, monotonic */
    uint64_t bytes[2];                 /* delivered c->u, u->c */
    uint64_t req_start_ns, req_mono_ns, req_bytes0[2]; /* the HTTP request in flight */
    uint64_t pending_u2c;              /* response bytes not yet delivered when it ended */
    int32_t cluster;                   /* cluster slot of the upstream, -1: none */
    int32_t rule;
    uint16_t src_port;
    uint16_t status;                   /* HTTP: status of the request in flight */
    uint8_t family;
    uint8_t src[16];
    uint8_t action, reason, would_deny, end, tls, method, req_open;
    char host[FP_OBS_HOST_MAX];
    char path[FP_OBS_PATH_MAX];
};

#ifdef __cplusplus
}
#endif
#endif
