/* The engine: listeners, worker threads and their epoll loops, control from the Python thread.
 *
 * One listening socket per address family, shared by the workers: each worker's epoll set holds
 * it with EPOLLEXCLUSIVE, so a new connection wakes one worker, the first in the listener's
 * wait queue that is waiting, and a busy worker's share goes to an idle one. On a small pod
 * (two cores shared with the app) that keeps a second worker from costing anything while one
 * keeps up: connections stay with the first worker until it is busy (per-worker SO_REUSEPORT
 * queues would split them evenly, and a worker's queue would wait while it is descheduled).
 * Each worker's epoll set also holds an eventfd the control thread writes to, and the sockets
 * of its connections. Workers share nothing but the decision table (reference counted, swapped under a
 * mutex) and read-only options. Out of descriptors, a worker resets waiting clients with the
 * help of a reserve descriptor (see accept_and_reset). Syscalls: socket, setsockopt, bind,
 * listen, epoll_create1, epoll_wait, epoll_ctl, eventfd, accept4, open (/dev/null), read, write,
 * close, pthread_create/join.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "fp_internal.h"

#define EVENTS_PER_WAIT 256
#define ACCEPTS_PER_EVENT 64
#define TICK_MS 200
#define ACCEPT_PAUSE_MS 100

uint64_t fp_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int fp_debug_build(void)
{
#ifdef FP_DEBUG
    return 1;
#else
    return 0;
#endif
}

/* Read a small integer from a /proc file; returns `dflt` when it cannot. */
static long read_proc_long(const char *path, long dflt)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return dflt;
    long v;
    if (fscanf(f, "%ld", &v) != 1)
        v = dflt;
    fclose(f);
    return v;
}

void fp_engine_opts_default(struct fp_engine_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->nworkers = 1;
    o->port = 15001;
    strcpy(o->bind_v4, "0.0.0.0");
    strcpy(o->bind_v6, "::");
    o->use_splice = 1;
    long max = read_proc_long("/proc/sys/fs/pipe-max-size", 1048576);
    o->pipe_size = (int)(max < 1048576 ? max : 1048576);
    /* An unprivileged UID may hold pipe-user-pages-soft pages of pipe buffers; past that the
     * kernel hands out one-page pipes. Use half of that budget for the pool. */
    long pages = read_proc_long("/proc/sys/fs/pipe-user-pages-soft", 16384);
    long budget = pages > 0 ? pages * 4096 / 2 : 64L << 20;
    long cap = budget / (o->pipe_size > 0 ? o->pipe_size : 65536);
    o->pipe_pool_cap = (int)(cap < 8 ? 8 : cap > 4096 ? 4096 : cap);
    o->copy_buf_size = 65536;
    o->backlog = 4096;
}

/* A spare descriptor, held so that a worker out of descriptors can still accept a client to
 * reset it at once (nginx's and HAProxy's trick). Returns the fd or -1. */
static int open_reserve(void)
{
    return open("/dev/null", O_RDONLY | O_CLOEXEC);
}

/* Bind one listener. Returns the fd or a negative errno. */
static int make_listener(int family, const char *addr, uint16_t port, int backlog)
{
    int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    struct sockaddr_storage ss;
    socklen_t len;
    memset(&ss, 0, sizeof(ss));
    if (family == AF_INET) {
        struct sockaddr_in *s = (struct sockaddr_in *)&ss;
        s->sin_family = AF_INET;
        s->sin_port = htons(port);
        if (inet_pton(AF_INET, addr, &s->sin_addr) != 1)
            goto inval;
        len = sizeof(*s);
    } else {
        struct sockaddr_in6 *s = (struct sockaddr_in6 *)&ss;
        s->sin6_family = AF_INET6;
        s->sin6_port = htons(port);
        if (inet_pton(AF_INET6, addr, &s->sin6_addr) != 1)
            goto inval;
        len = sizeof(*s);
        (void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
    }
    /* accepted sockets inherit TCP_NODELAY: one setsockopt less per connection */
    (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0 ||
        bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, backlog) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
inval:
    close(fd);
    return -EINVAL;
}

/* Open the engine's listeners (IPv4 and/or IPv6, as the options ask). Returns 0 or a negative
 * errno. */
static int open_listeners(fp_engine *e)
{
    const struct fp_engine_opts *o = &e->o;
    if (o->bind_v4[0]) {
        int fd = make_listener(AF_INET, o->bind_v4, o->port, o->backlog);
        if (fd < 0)
            return fd;
        e->lfd[0] = fd;
    }
    if (o->bind_v6[0]) {
        int fd = make_listener(AF_INET6, o->bind_v6, o->port, o->backlog);
        if (fd == -EAFNOSUPPORT || (fd == -EADDRNOTAVAIL && o->bind_v4[0]))
            fd = -1; /* no IPv6 on this host */
        else if (fd < 0)
            return fd;
        e->lfd[1] = fd;
    }
    return e->lfd[0] < 0 && e->lfd[1] < 0 ? -EADDRNOTAVAIL : 0;
}

/* Close the engine's listeners: new connections are refused by the kernel from here on. */
static void close_engine_listeners(fp_engine *e)
{
    for (int i = 0; i < FP_MAX_LISTENERS; i++) {
        if (e->lfd[i] >= 0)
            close(e->lfd[i]);
        e->lfd[i] = -1;
    }
}

/* Stop this worker listening: take the shared listeners out of its epoll set. The last worker to
 * stop closes them (when the workers run; otherwise the caller does). */
static void close_listeners(struct fp_worker *w)
{
    int had = 0;
    for (int i = 0; i < FP_MAX_LISTENERS; i++) {
        if (w->lfd[i] >= 0) {
            if (w->epfd >= 0)
                (void)epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->lfd[i], NULL);
            w->lfd[i] = -1;
            had = 1;
        }
    }
    w->listeners_registered = 0;
    if (had && __atomic_sub_fetch(&w->e->listening, 1, __ATOMIC_ACQ_REL) == 0)
        close_engine_listeners(w->e);
}

static void worker_free(struct fp_worker *w)
{
    fp_conn_reset_all(w);
    fp_conn_reap(w);
    close_listeners(w);
    fp_pool_destroy(w);
    fp_obs_worker_free(w);
    if (w->evfd >= 0)
        close(w->evfd);
    if (w->epfd >= 0)
        close(w->epfd);
    if (w->reserve_fd >= 0)
        close(w->reserve_fd);
    w->evfd = w->epfd = w->reserve_fd = -1;
}

static int set_listeners_registered(struct fp_worker *w, int on)
{
    if (w->listeners_registered == on)
        return 0;
    for (int i = 0; i < FP_MAX_LISTENERS; i++) {
        if (w->lfd[i] < 0)
            continue;
        if (on) {
            /* exclusive: one waiting worker is woken per connection (see the top) */
            struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE,
                                     .data.u64 = ((uint64_t)i << 3) | FP_TAG_LISTENER};
            if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->lfd[i], &ev) < 0 && errno != EEXIST)
                return -errno; /* EEXIST: registered by an earlier, partial attempt */
        } else {
            (void)epoll_ctl(w->epfd, EPOLL_CTL_DEL, w->lfd[i], NULL);
        }
    }
    w->listeners_registered = on;
    return 0;
}

int fp_engine_new(const struct fp_engine_opts *o, fp_table *initial, fp_engine **out)
{
    if (!o || !initial || !out || o->nworkers < 1 || o->nworkers > 1024 ||
        o->copy_buf_size < (int)FP_PEEK_TLS_CAP || !initial->built ||
        o->pipe_pool_cap < 0 || o->port == 0)
        return -EINVAL;
    if (!o->bind_v4[0] && !o->bind_v6[0])
        return -EINVAL;
    fp_engine *e = calloc(1, sizeof(*e));
    if (!e)
        return -ENOMEM;
    e->o = *o;
    e->nworkers = o->nworkers;
    e->listening = o->nworkers; /* workers still holding the shared listeners */
    for (int j = 0; j < FP_MAX_LISTENERS; j++)
        e->lfd[j] = -1;
#ifdef FP_DEBUG
    const char *every = getenv("FASTPROXY_DEBUG_EPOLL_FAIL_EVERY");
    e->dbg_epoll_fail_every = every ? (unsigned)strtoul(every, NULL, 10) : 0;
#endif
    pthread_mutex_init(&e->tlock, NULL);
    fp_table_ref(initial);
    e->table = initial;
    e->w = calloc((size_t)e->nworkers, sizeof(struct fp_worker));
    if (!e->w) {
        fp_engine_free(e);
        return -ENOMEM;
    }
    for (int i = 0; i < e->nworkers; i++) {
        struct fp_worker *w = &e->w[i];
        w->e = e;
        w->index = i;
        w->epfd = w->evfd = w->reserve_fd = -1;
        for (int j = 0; j < FP_MAX_LISTENERS; j++)
            w->lfd[j] = -1;
    }
    int err = 0;
    int per_worker = o->pipe_pool_cap / e->nworkers;
    if (o->pipe_pool_cap > 0 && per_worker < 2)
        per_worker = 2;
    for (int i = 0; i < e->nworkers && !err; i++) {
        struct fp_worker *w = &e->w[i];
        if ((err = fp_pool_init(w, per_worker)) < 0)
            break;
        w->epfd = epoll_create1(EPOLL_CLOEXEC);
        w->evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        w->reserve_fd = open_reserve();
        if (w->epfd < 0 || w->evfd < 0) {
            err = -errno;
            break;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.u64 = FP_TAG_EVENTFD};
        if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->evfd, &ev) < 0) {
            err = -errno;
            break;
        }
        if (i == 0 && (err = open_listeners(e)) < 0)
            break;
        for (int j = 0; j < FP_MAX_LISTENERS; j++)
            w->lfd[j] = e->lfd[j]; /* shared: the engine owns and closes them */
        if ((err = set_listeners_registered(w, 1)) < 0)
            break;
    }
    if (err) {
        fp_engine_free(e);
        return err;
    }
    *out = e;
    return 0;
}

/* Out of descriptors (EMFILE/ENFILE) with clients queued: give up the reserve fd, accept one
 * client on it and reset it (SO_LINGER 0), so that it sees a reset now instead of hanging in the
 * accept queue; then take the reserve back. Returns 1 when a client was reset, 0 when the queue
 * was empty, -1 when there is no reserve to give up (or the slot it freed went elsewhere). */
static int accept_and_reset(struct fp_worker *w, int lfd)
{
    if (w->reserve_fd < 0)
        return -1;
    close(w->reserve_fd);
    int cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
    int err = cfd < 0 ? errno : 0;
    if (cfd >= 0) {
        struct linger l = {.l_onoff = 1, .l_linger = 0};
        (void)setsockopt(cfd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
        close(cfd);
        FP_ADD(w->st.accept_emfile, 1);
    }
    w->reserve_fd = open_reserve(); /* another thread may have taken the slot: -1 */
    if (cfd < 0 && (err == EMFILE || err == ENFILE))
        return -1; /* the freed slot went elsewhere: no progress to be had, back off */
    return cfd >= 0 ? 1 : 0;
}

static void accept_ready(struct fp_worker *w, int li, uint64_t now_ms)
{
    for (int i = 0; i < ACCEPTS_PER_EVENT; i++) {
        struct sockaddr_storage peer;
        socklen_t plen = sizeof(peer);
        int cfd = accept4(w->lfd[li], (struct sockaddr *)&peer, &plen, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            int err = errno;
            if (err == EAGAIN || err == EINTR || err == ECONNABORTED)
                return;
            FP_ADD(w->st.accept_errors, 1);
            if (err == EMFILE || err == ENFILE)
                __atomic_store_n(&w->st.fd_exhausted, 1, __ATOMIC_RELAXED);
            int r = err == EMFILE || err == ENFILE ? accept_and_reset(w, w->lfd[li]) : -1;
            if (r == 1)
                continue; /* progress: the next queued client, if any */
            if (r == 0)
                return; /* queue empty: level-triggered epoll reports the next client */
            if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
                /* out of descriptors and no reserve: stop listening for a moment instead of
                 * spinning */
                set_listeners_registered(w, 0);
                w->accept_paused_until_ms = now_ms + ACCEPT_PAUSE_MS;
            }
            return;
        }
        if (w->st.fd_exhausted)
            __atomic_store_n(&w->st.fd_exhausted, 0, __ATOMIC_RELAXED);
        if (w->reserve_fd < 0)
            w->reserve_fd = open_reserve();
        fp_conn_accepted(w, cfd, li == 0 ? AF_INET : AF_INET6, &peer, now_ms);
    }
}

static void *worker_main(void *arg)
{
    struct fp_worker *w = arg;
    fp_engine *e = w->e;
    struct epoll_event evs[EVENTS_PER_WAIT];
    uint64_t next_tick = fp_now_ms() + TICK_MS;
    int accepting = 1;

    for (;;) {
        if (__atomic_load_n(&e->shutdown, __ATOMIC_ACQUIRE))
            break;
        if (accepting && __atomic_load_n(&e->stop_accepting, __ATOMIC_ACQUIRE)) {
            /* take what is already queued, then close the listeners */
            for (int i = 0; i < FP_MAX_LISTENERS; i++)
                if (w->lfd[i] >= 0)
                    accept_ready(w, i, fp_now_ms());
            close_listeners(w);
            accepting = 0;
        }
        int timeout = -1;
        if (w->conns || w->accept_paused_until_ms) {
            uint64_t now = fp_now_ms();
            timeout = next_tick > now ? (int)(next_tick - now) : 0;
        }
        if (w->again)
            timeout = 0; /* connections with work left: look for events, then go on */
        int n = epoll_wait(w->epfd, evs, EVENTS_PER_WAIT, timeout);
        uint64_t now = fp_now_ms();
        for (int i = 0; i < n; i++) {
            uint64_t u = evs[i].data.u64;
            uint32_t tag = (uint32_t)(u & FP_TAG_MASK);
            void *ptr = (void *)(uintptr_t)FP_TAG_PTR(u);
            switch (tag) {
            case FP_TAG_LISTENER: {
                int li = (int)(u >> 3);
                if (accepting && li < FP_MAX_LISTENERS && w->lfd[li] >= 0)
                    accept_ready(w, li, now);
                break;
            }
            case FP_TAG_EVENTFD: {
                uint64_t v;
                (void)!read(w->evfd, &v, sizeof(v));
                break;
            }
            case FP_TAG_CLIENT:
            case FP_TAG_UPSTREAM:
                fp_conn_event(ptr, tag == FP_TAG_UPSTREAM, FP_TAG_GEN(u), evs[i].events, now);
                break;
            }
        }
        fp_conn_run_again(w, now);
        if (now >= next_tick) {
            fp_conn_check_timeouts(w, now);
            if (w->accept_paused_until_ms && now >= w->accept_paused_until_ms) {
                w->accept_paused_until_ms = 0;
                if (accepting && set_listeners_registered(w, 1) < 0) {
                    /* epoll refused a listener: try again later rather than never */
                    FP_ADD(w->st.epoll_errors, 1);
                    w->accept_paused_until_ms = now + ACCEPT_PAUSE_MS;
                }
            }
            next_tick = now + TICK_MS;
        }
        fp_conn_reap(w);
    }
    fp_conn_reset_all(w);
    fp_conn_reap(w);
    return NULL;
}

int fp_engine_start(fp_engine *e)
{
    if (e->running)
        return -EALREADY;
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old); /* workers inherit: signals go to Python's thread */
    int err = 0;
    for (int i = 0; i < e->nworkers; i++) {
        int r = pthread_create(&e->w[i].thread, NULL, worker_main, &e->w[i]);
        if (r) {
            err = -r;
            break;
        }
        e->w[i].started = 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    e->running = 1;
    if (err)
        fp_engine_shutdown(e);
    return err;
}

static void wake_all(fp_engine *e)
{
    uint64_t one = 1;
    for (int i = 0; i < e->nworkers; i++)
        if (e->w[i].evfd >= 0)
            (void)!write(e->w[i].evfd, &one, sizeof(one));
}

void fp_engine_set_table(fp_engine *e, fp_table *t)
{
    pthread_mutex_lock(&e->tlock);
    fp_table *old = e->table;
    e->table = t;
    pthread_mutex_unlock(&e->tlock);
    fp_table_unref(old);
}

int fp_engine_stop_accepting(fp_engine *e)
{
    __atomic_store_n(&e->stop_accepting, 1, __ATOMIC_RELEASE);
    if (!e->running) {
        for (int i = 0; i < e->nworkers; i++)
            close_listeners(&e->w[i]);
        return 0;
    }
    wake_all(e);
    return 0;
}

int fp_engine_shutdown(fp_engine *e)
{
    __atomic_store_n(&e->shutdown, 1, __ATOMIC_RELEASE);
    wake_all(e);
    for (int i = 0; i < e->nworkers; i++) {
        if (e->w[i].started) {
            pthread_join(e->w[i].thread, NULL);
            e->w[i].started = 0;
        }
    }
    e->running = 0;
    return 0;
}

void fp_engine_free(fp_engine *e)
{
    if (!e)
        return;
    fp_engine_shutdown(e);
    if (e->w) {
        for (int i = 0; i < e->nworkers; i++)
            worker_free(&e->w[i]);
        free(e->w);
    }
    close_engine_listeners(e);
    fp_table_unref(e->table);
    pthread_mutex_destroy(&e->tlock);
    free(e);
}

int fp_engine_stats(fp_engine *e, struct fp_stats *out)
{
    memset(out, 0, sizeof(*out));
    uint64_t *dst = (uint64_t *)out;
    size_t n = sizeof(*out) / sizeof(uint64_t);
    for (int i = 0; i < e->nworkers; i++) {
        uint64_t *src = (uint64_t *)&e->w[i].st;
        for (size_t k = 0; k < n; k++)
            dst[k] += __atomic_load_n(&src[k], __ATOMIC_RELAXED);
    }
    out->fd_exhausted = out->fd_exhausted ? 1 : 0; /* a flag: any worker out of fds */
    return 0;
}
