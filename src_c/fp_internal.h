/* Internal structures shared by the engine's C files. Not part of the API (no fp_ prefix needed
 * for static helpers; everything with external linkage still starts with fp_). */
#ifndef FP_INTERNAL_H
#define FP_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>

#include "fp_engine.h"
#include "fp_lookup.h"
#include "fp_obs.h"
#include "fp_peek.h"

/* Single-writer counters: only the owning worker writes, the control thread reads. Relaxed
 * atomics make the cross-thread read well defined and cost a plain load/store on x86. */
#define FP_ADD(field, n) __atomic_store_n(&(field), (field) + (n), __ATOMIC_RELAXED)
#define FP_SUB(field, n) __atomic_store_n(&(field), (field) - (n), __ATOMIC_RELAXED)
#define FP_READ(field) __atomic_load_n(&(field), __ATOMIC_RELAXED)

#ifdef FP_DEBUG
#define FP_DBG_ADD(field, n) FP_ADD(field, n)
#else
#define FP_DBG_ADD(field, n) ((void)0)
#endif

struct fp_rule;
struct fp_port_rules;
struct fp_cands;

struct fp_table {
    int refs; /* atomic */
    int built;
    int default_action; /* enum fp_action */
    int connect_ms;
    int idle_ms;
    int peek_ms;
    int narrow;                   /* FSM's port narrowing */
    fp_port_map *ports;           /* destination port -> index into pr */
    struct fp_port_rules *pr;
    int npr, pr_cap;
    struct fp_rule *rules;
    int nrules, rules_cap;
    struct fp_cands *cands;       /* host name -> rules naming it */
    int ncands, cands_cap;
    int *rule_active;             /* atomic: open connections per rule (connection limits) */
    uint64_t *rule_hits;          /* atomic: connections and requests each rule admitted */
    uint64_t obs_id;              /* fp_table_set_obs: echoed in access-log records */
    int log_on;                   /* access-log records for connections admitted under it */
    uint32_t log_pt_ppm;          /* share of passthrough records kept, in millionths */
    int audit;                    /* audit mode: a deny is relayed as a "would deny" */
    struct fp_limits *limits;     /* shared counters kept across reloads (fp_table.c), or NULL */
};

/* Connection-limit counters that outlive tables (fp_table.c): slot k is chunks[k / CHUNK][k %
 * CHUNK]; chunks never move, so workers may count while the control thread adds slots. */
#define FP_LIMITS_CHUNK 1024
#define FP_LIMITS_MAX_CHUNKS 1024
struct fp_limits {
    int refs; /* atomic */
    int n;    /* slots handed out (control thread only) */
    int *chunks[FP_LIMITS_MAX_CHUNKS];
};

/* fp_table.c, for the relay */
int fp_table_connect_ms(const fp_table *t, int rule);
int fp_table_rule_admit(fp_table *t, int rule);
void fp_table_rule_release(fp_table *t, int rule);
int fp_table_rule_upstreams(const fp_table *t, int rule, const struct sockaddr_storage **ups, int *n);

/* What a direction is doing with the bytes it reads (HTTP mode walks these; opaque relays stay
 * in FP_PH_OPAQUE). */
enum fp_phase {
    FP_PH_OPAQUE = 0,  /* relay everything until EOF */
    FP_PH_HEAD,        /* HTTP: waiting for a complete request (dir 0) / response (dir 1) head */
    FP_PH_LENGTH,      /* HTTP: relay exactly `remaining` body bytes */
    FP_PH_CHUNKED,     /* HTTP: relay a chunked body, framed by `ch` */
    FP_PH_UNTIL_EOF,   /* HTTP response: the body runs until the server closes */
    FP_PH_IDLE,        /* HTTP: nothing expected (dir 0: waiting for the response; dir 1: no
                        * request outstanding, only a close of the idle upstream is expected) */
    FP_PH_TLS_HELLO,   /* TLS watch, dir 0: relay exactly `remaining` bytes (the checked
                        * ClientHello), then hold */
    FP_PH_TLS_HOLD,    /* TLS watch, dir 0: read nothing until the server's first message says
                        * whether a second ClientHello comes */
    FP_PH_TLS_SH,      /* TLS watch, dir 1: peek the server's first handshake message */
    FP_PH_TLS_CH2,     /* TLS watch, dir 0: after a HelloRetryRequest, peek the second
                        * ClientHello and compare its SNI with the first */
};

/* One direction of a relay: bytes read from `src` are delivered to `dst`. */
struct fp_dir {
    int pipe_r, pipe_w;   /* borrowed pipe, -1 when none */
    uint32_t pipe_cap;    /* capacity of the borrowed pipe */
    uint32_t in_pipe;     /* bytes sitting in the pipe */
    uint8_t *buf;         /* copy buffer, NULL when none */
    uint32_t buf_off, buf_len;
    uint8_t eof;          /* src gave EOF */
    uint8_t shut;         /* shutdown(dst, SHUT_WR) done */
    uint8_t copy_only;    /* splice refused on this direction: copy from now on */
    uint8_t bulk;         /* a read filled the copy buffer: splice from now on */
    uint8_t phase;        /* enum fp_phase */
    uint8_t discard;      /* dir 0: the body of a denied request is read and dropped */
    uint8_t pipe_full;    /* a splice into the pipe found no room (out of slots before bytes):
                           * src is not read until the pipe drains */
    uint64_t remaining;   /* FP_PH_LENGTH: body bytes still to relay */
    struct fp_chunked ch; /* FP_PH_CHUNKED */
};

/* What a socket's epoll edges reported (fp_conn.crdy / urdy). */
#define FP_RDY_IN 1u  /* bytes, an EOF or an error may be read */
#define FP_RDY_OUT 2u /* there may be room to write */
#define FP_RDY_HUP 4u /* the peer's FIN arrived: a recv that comes back short ended the stream */

enum fp_conn_state { FP_CS_PEEKING = 1, FP_CS_CONNECTING = 2, FP_CS_RELAY = 3, FP_CS_CLOSED = 4 };

struct fp_worker;

struct fp_conn {
    struct fp_worker *w;
    int cfd, ufd;                /* ufd -1: no upstream (yet, or between HTTP requests) */
    uint8_t state;
    uint8_t creg, ureg;          /* registered in epoll */
    uint8_t peek;                /* FP_CS_PEEKING: FP_ACT_PEEK_TLS / _HTTP / _ANY */
    uint8_t http;                /* HTTP mode: requests are decided one by one */
    uint8_t resp_flags;          /* FP_HTTP_RESP_TO_* of the request in flight */
    uint8_t keepalive;           /* the exchange in flight lets the connection persist */
    uint8_t resp_done;           /* no response outstanding */
    uint8_t closing;             /* close once the response in flight is delivered */
    uint8_t queued;              /* on the worker's `again` list (work left after a budget) */
    uint8_t crdy, urdy;          /* FP_RDY_* of each socket: what epoll's edges said and the last
                                  * syscall did not take back */
    uint8_t req_upgrade;         /* the request in flight asked for a protocol switch */
    uint8_t reason;              /* enum fp_reason of the last deny (connection or request) */
    uint16_t ugen;               /* generation of ufd: epoll tags carry it (a re-dial's old
                                  * events are dropped) */
    char *sni;                   /* TLS watch: the checked SNI (malloc'd, NULL when not watching) */
    struct fp_dir d[2];          /* [0] client->upstream, [1] upstream->client */
    fp_table *table;
    int rule;                    /* rule counted against its limit (-1: none) */
    int up_rule;                 /* HTTP mode: rule whose upstream ufd is dialled to */
    const char *inject;          /* a response the sidecar writes itself (403, 400) */
    uint32_t inject_off, inject_len;
    uint64_t last_ms, peek_deadline_ms, dial_ms;
    int connect_ms;              /* connect timeout of the dial in flight (0: none) */
    struct sockaddr_storage dst; /* original destination */
    socklen_t dlen;
    struct fp_conn *prev, *next; /* worker's list of open connections */
    struct fp_conn *zombie_next; /* freed after the event batch */
    struct fp_conn *again_next;  /* the worker's `again` list */
    struct fp_obs_conn obs;      /* what the access log and the cluster counters need */
};

#define FP_MAX_LISTENERS 2

struct fp_worker {
    struct fp_engine *e;
    int index;
    pthread_t thread;
    int started;
    int epfd;
    int evfd;                          /* control wake-ups */
    int lfd[FP_MAX_LISTENERS];         /* listeners, -1 when none */
    uint64_t accept_paused_until_ms;   /* after EMFILE: listeners out of epoll until then */
    int reserve_fd;                    /* spare fd given up to accept-and-reset on EMFILE (-1) */
    int listeners_registered;
    unsigned rr;                       /* round robin over a rule's upstream addresses */
    struct fp_conn *conns;             /* open connections */
    struct fp_conn *zombies;
    struct fp_conn *again;             /* connections with work left (run before the next wait) */
    /* pipe pool (owned by this worker, no locks) */
    int *pool;                         /* pairs: pool[2i] read end, pool[2i+1] write end */
    uint32_t *pool_caps;
    int pooled;
    int pool_cap;                      /* pipes that may exist: pooled + lent */
    int lent;
    /* copy buffers cache */
    uint8_t **bufs;
    int nbufs;
    struct fp_stats st;
    struct fp_obs_worker *obs;         /* access-log ring and clusters (NULL: not set up) */
#ifdef FP_DEBUG
    unsigned dbg_epoll_calls;          /* connection epoll_ctl ADD calls (fault injection) */
#endif
};

struct fp_engine {
    struct fp_engine_opts o;
    int nworkers;
    struct fp_worker *w;
    pthread_mutex_t tlock;
    fp_table *table;
    int lfd[FP_MAX_LISTENERS]; /* the listeners every worker shares (-1: none / closed) */
    int listening;        /* atomic: workers that have not stopped listening yet */
    int stop_accepting;   /* atomic flag read by workers */
    int shutdown;         /* atomic flag read by workers */
    int running;
#ifdef FP_DEBUG
    unsigned dbg_epoll_fail_every;  /* FASTPROXY_DEBUG_EPOLL_FAIL_EVERY: every Nth connection
                                     * epoll_ctl ADD fails with ENOSPC (tests) */
#endif
};

/* fp_pipe.c: the per-worker pipe pool and copy-buffer cache. */
int fp_pool_init(struct fp_worker *w, int cap);
void fp_pool_destroy(struct fp_worker *w);
int fp_pipe_borrow(struct fp_worker *w, struct fp_dir *d);
void fp_pipe_return(struct fp_worker *w, struct fp_dir *d);
int fp_buf_borrow(struct fp_worker *w, struct fp_dir *d);
void fp_buf_return(struct fp_worker *w, struct fp_dir *d);

/* fp_relay.c: the connection state machine. */
void fp_conn_accepted(struct fp_worker *w, int cfd, int family, const struct sockaddr_storage *peer,
                      uint64_t now_ms);
void fp_conn_event(struct fp_conn *c, int is_upstream, unsigned gen, uint32_t events,
                   uint64_t now_ms);
void fp_conn_check_timeouts(struct fp_worker *w, uint64_t now_ms);
void fp_conn_reset_all(struct fp_worker *w);
void fp_conn_reap(struct fp_worker *w);
void fp_conn_run_again(struct fp_worker *w, uint64_t now_ms);

/* fp_table.c */
fp_table *fp_table_acquire(struct fp_engine *e);

uint64_t fp_now_ms(void);

/* fp_obs.c: hooks called by the relay (each a no-op when observability is not set up). */
void fp_obs_conn_start(struct fp_conn *c, const struct sockaddr_storage *peer);
void fp_obs_decided(struct fp_conn *c, const struct fp_verdict *v, int would_deny);
void fp_obs_sni(struct fp_conn *c, const char *sni, size_t len);
void fp_obs_upstream_open(struct fp_conn *c, int rule);
void fp_obs_upstream_close(struct fp_conn *c);
void fp_obs_bytes(struct fp_conn *c, int dir, uint64_t n);
void fp_obs_request(struct fp_conn *c, const uint8_t *head, const struct fp_http_req *req,
                    const struct fp_verdict *v, int would_deny);
void fp_obs_request_refused(struct fp_conn *c, int status, int reason);
void fp_obs_response(struct fp_conn *c, int status);
void fp_obs_request_done(struct fp_conn *c);
void fp_obs_conn_end(struct fp_conn *c);
void fp_obs_worker_free(struct fp_worker *w);

/* epoll tags: the kind in the low 3 bits of epoll_data.u64, a connection pointer (16-byte
 * aligned, below 2^48 in user space) above them, and the socket's generation in the top 16 bits */
#define FP_TAG_GEN_SHIFT 48
#define FP_TAG_PTR(u) ((u) & ((UINT64_C(1) << FP_TAG_GEN_SHIFT) - 1) & ~(uint64_t)FP_TAG_MASK)
#define FP_TAG_GEN(u) ((unsigned)((u) >> FP_TAG_GEN_SHIFT))
#define FP_TAG_MASK 7u
#define FP_TAG_LISTENER 1u
#define FP_TAG_EVENTFD 2u
#define FP_TAG_CLIENT 3u
#define FP_TAG_UPSTREAM 4u

#endif
