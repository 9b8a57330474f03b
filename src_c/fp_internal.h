/* Internal structures shared by the engine's C files. Not part of the API (no fp_ prefix needed
 * for static helpers; everything with external linkage still starts with fp_). */
#ifndef FP_INTERNAL_H
#define FP_INTERNAL_H

#include <pthread.h>
#include <stdint.h>
#include <sys/socket.h>

#include "fp_engine.h"

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

struct fp_table {
    int refs;           /* atomic */
    int default_action; /* enum fp_action */
    int connect_ms;
    int idle_ms;
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
};

enum fp_conn_state { FP_CS_CONNECTING = 1, FP_CS_RELAY = 2, FP_CS_CLOSED = 3 };

struct fp_worker;

struct fp_conn {
    struct fp_worker *w;
    int cfd, ufd;
    uint8_t state;
    uint8_t creg, ureg;          /* registered in epoll */
    uint32_t cmask, umask;       /* events registered */
    struct fp_dir d[2];          /* [0] client->upstream, [1] upstream->client */
    fp_table *table;
    uint64_t started_ms, last_ms;
    struct fp_conn *prev, *next; /* worker's list of open connections */
    struct fp_conn *zombie_next; /* freed after the event batch */
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
    int listeners_registered;
    struct fp_conn *conns;             /* open connections */
    struct fp_conn *zombies;
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
};

struct fp_engine {
    struct fp_engine_opts o;
    int nworkers;
    struct fp_worker *w;
    pthread_mutex_t tlock;
    fp_table *table;
    int stop_accepting;   /* atomic flag read by workers */
    int shutdown;         /* atomic flag read by workers */
    int running;
};

/* fp_pipe.c: the per-worker pipe pool and copy-buffer cache. */
int fp_pool_init(struct fp_worker *w, int cap);
void fp_pool_destroy(struct fp_worker *w);
int fp_pipe_borrow(struct fp_worker *w, struct fp_dir *d);
void fp_pipe_return(struct fp_worker *w, struct fp_dir *d);
int fp_buf_borrow(struct fp_worker *w, struct fp_dir *d);
void fp_buf_return(struct fp_worker *w, struct fp_dir *d);

/* fp_relay.c: the connection state machine. */
void fp_conn_accepted(struct fp_worker *w, int cfd, uint64_t now_ms);
void fp_conn_event(struct fp_conn *c, int is_upstream, uint32_t events, uint64_t now_ms);
void fp_conn_check_timeouts(struct fp_worker *w, uint64_t now_ms);
void fp_conn_reset_all(struct fp_worker *w);
void fp_conn_reap(struct fp_worker *w);

/* fp_table.c */
fp_table *fp_table_acquire(struct fp_engine *e);

uint64_t fp_now_ms(void);

/* epoll tags in the low bits of epoll_data.u64 */
#define FP_TAG_MASK 7u
#define FP_TAG_LISTENER 1u
#define FP_TAG_EVENTFD 2u
#define FP_TAG_CLIENT 3u
#define FP_TAG_UPSTREAM 4u

#endif
