/* barerelay: the floor of a user-space splice relay, the bench's reference case `bare-relay`.
 *
 *   barerelay [-p PORT] [-t THREADS] [-s PIPE_BYTES]
 *
 * Listens on 0.0.0.0:PORT (15001), reached through the same iptables REDIRECT as every proxy
 * under test; for each accepted connection reads SO_ORIGINAL_DST, connects there (non-blocking)
 * and relays both directions with splice() through a pipe per direction (F_SETPIPE_SZ to
 * PIPE_BYTES, 1 MiB, or whatever the kernel grants). No policy, no peeking, no logging, no
 * timeouts: what is left is what every splice relay pays. TCP_NODELAY on both legs; half-close
 * is passed on (EOF on one side: shutdown(SHUT_WR) on the other once its pipe is drained; both
 * closed when both directions are done); an error on either leg resets both (SO_LINGER 0).
 * Backpressure: a side is not read while its pipe is full; the destination is then watched for
 * EPOLLOUT. A pipe is taken from a small per-thread pool when a direction has bytes to move and
 * given back as soon as it is empty, so idle connections hold no pipe (two descriptors each).
 * With -t N, N threads each run their own epoll loop on their own SO_REUSEPORT listener.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80       /* linux/netfilter_ipv4.h, which clashes with netinet/in.h */
#endif
#define POOL_MAX 64
#define EVENTS 256

struct conn;
struct ep { struct conn *c; int i; };              /* epoll data: leg i of a connection */
struct dir { int p[2]; int cap, n, eof, shut; };   /* bytes from leg i to leg 1-i */
struct conn {
    int fd[2];            /* 0: client (accepted), 1: server (connected) */
    int mask[2];          /* events registered for each leg (0: not in epoll) */
    int connecting, dead;
    struct dir d[2];      /* d[i]: read from fd[i], written to fd[1-i] */
    struct ep ep[2];
    struct conn *next_dead;
};
struct loop {
    int ep, lfd, npool;
    int pool[POOL_MAX][3];   /* read end, write end, capacity */
    struct conn *dead;
};

static int port = 15001, pipe_bytes = 1 << 20;

/* A pipe for a direction: from the pool, else a new one sized to pipe_bytes (or what the
 * kernel grants). Returns 0 or -errno. */
static int pipe_get(struct loop *l, struct dir *d)
{
    if (l->npool) {
        l->npool--;
        d->p[0] = l->pool[l->npool][0], d->p[1] = l->pool[l->npool][1];
        d->cap = l->pool[l->npool][2];
        return 0;
    }
    if (pipe2(d->p, O_NONBLOCK | O_CLOEXEC) < 0)
        return -errno;
    int cap = fcntl(d->p[1], F_SETPIPE_SZ, pipe_bytes);
    if (cap < 0)
        cap = fcntl(d->p[1], F_GETPIPE_SZ);
    d->cap = cap > 0 ? cap : 65536;
    return 0;
}

/* Gives an empty pipe back to the pool (closes it when the pool is full). */
static void pipe_put(struct loop *l, struct dir *d)
{
    if (d->p[0] < 0)
        return;
    if (d->n == 0 && l->npool < POOL_MAX) {
        l->pool[l->npool][0] = d->p[0], l->pool[l->npool][1] = d->p[1];
        l->pool[l->npool][2] = d->cap;
        l->npool++;
    } else {
        close(d->p[0]);
        close(d->p[1]);
    }
    d->p[0] = d->p[1] = -1;
    d->n = 0;
}

static void reset_close(int fd)
{
    struct linger lg = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(fd);
}

/* Ends a connection: both legs closed (reset when `rst`), pipes released, freed after the
 * current batch of events (a later event of the batch may still point at it). */
static void conn_end(struct loop *l, struct conn *c, int rst)
{
    for (int i = 0; i < 2; i++) {
        if (c->fd[i] >= 0) {
            if (rst)
                reset_close(c->fd[i]);
            else
                close(c->fd[i]);      /* close() also removes it from epoll */
            c->fd[i] = -1;
        }
        pipe_put(l, &c->d[i]);        /* a pipe with bytes left is closed, not pooled */
    }
    c->dead = 1;
    c->next_dead = l->dead;
    l->dead = c;
}

/* Registers for each leg the events it needs now; a leg that needs none leaves epoll (so a
 * level-triggered HUP cannot spin). Returns 0 or -errno. */
static int conn_arm(struct loop *l, struct conn *c)
{
    for (int i = 0; i < 2; i++) {
        int want = 0;
        if (c->connecting) {
            want = i == 1 ? EPOLLOUT : 0;
        } else {
            struct dir *out = &c->d[i], *in = &c->d[1 - i];
            if (!out->eof && (out->p[0] < 0 || out->n < out->cap))   /* no pipe: room */
                want |= EPOLLIN;
            if (in->n > 0)
                want |= EPOLLOUT;
        }
        if (want == c->mask[i])
            continue;
        struct epoll_event ev = {.events = want, .data.ptr = &c->ep[i]};
        int op = !c->mask[i] ? EPOLL_CTL_ADD : want ? EPOLL_CTL_MOD : EPOLL_CTL_DEL;
        if (epoll_ctl(l->ep, op, c->fd[i], &ev) < 0)
            return -errno;
        c->mask[i] = want;
    }
    return 0;
}

/* Moves what it can of direction i: when `rd`, splice in from the source and out to the
 * destination, again (up to 16 rounds) only while a read filled the pipe and the write emptied
 * it (a short read means the socket is drained: level-triggered epoll reports what comes
 * next, no read is spent on EAGAIN); else only out. The pipe is taken on demand and given back once empty.
 * Returns 0, or -errno on a leg's error. */
static int pump(struct loop *l, struct conn *c, int i, int rd)
{
    struct dir *d = &c->d[i];
    for (int round = 0; round < 16; round++) {
        ssize_t r = 0, room = 0;
        if (rd && !d->eof && d->p[0] < 0) {
            int e = pipe_get(l, d);
            if (e)
                return e;
        }
        if (rd && !d->eof && d->n < d->cap) {
            room = d->cap - d->n;
            r = splice(c->fd[i], NULL, d->p[1], NULL, room, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (r > 0)
                d->n += r;
            else if (r == 0)
                d->eof = 1;
            else if (errno != EAGAIN)
                return -errno;
        }
        while (d->n > 0) {
            ssize_t w = splice(d->p[0], NULL, c->fd[1 - i], NULL, d->n,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (w > 0)
                d->n -= w;
            else if (w < 0 && errno == EAGAIN)
                break;
            else
                return w < 0 ? -errno : -EPIPE;
        }
        if (r < room || d->n > 0)
            break;        /* source drained or at EOF, or destination full */
    }
    if (d->n == 0)
        pipe_put(l, d);
    if (d->eof && d->n == 0 && !d->shut) {
        shutdown(c->fd[1 - i], SHUT_WR);
        d->shut = 1;
    }
    return 0;
}

static void on_accept(struct loop *l)
{
    for (int k = 0; k < 64; k++) {
        int cfd = accept4(l->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0)
            return;               /* EAGAIN, or out of descriptors: try on the next event */
        struct sockaddr_in dst;
        socklen_t len = sizeof dst;
        int one = 1;
        if (getsockopt(cfd, SOL_IP, SO_ORIGINAL_DST, &dst, &len) < 0) {
            reset_close(cfd);
            continue;
        }
        setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        int sfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (sfd < 0) {
            reset_close(cfd);
            continue;
        }
        setsockopt(sfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c || (connect(sfd, (struct sockaddr *)&dst, len) < 0 && errno != EINPROGRESS)) {
            free(c);
            reset_close(cfd);
            close(sfd);
            continue;
        }
        c->fd[0] = cfd, c->fd[1] = sfd, c->connecting = 1;
        for (int i = 0; i < 2; i++) {
            c->ep[i].c = c, c->ep[i].i = i;
            c->d[i].p[0] = c->d[i].p[1] = -1;
        }
        if (conn_arm(l, c) < 0)
            conn_end(l, c, 1);
    }
}

static void on_event(struct loop *l, struct ep *e, unsigned ev)
{
    struct conn *c = e->c;
    int i = e->i, err = 0;
    if (c->dead)
        return;
    if (c->connecting) {          /* only the server leg is watched until it is connected */
        socklen_t len = sizeof err;
        if (getsockopt(c->fd[1], SOL_SOCKET, SO_ERROR, &err, &len) < 0 || err)
            return conn_end(l, c, 1);
        c->connecting = 0;
        ev = EPOLLOUT;
    }
    if (ev & EPOLLERR)
        return conn_end(l, c, 1);
    if (ev & (EPOLLIN | EPOLLHUP))
        err = pump(l, c, i, 1);
    if (!err && (ev & (EPOLLOUT | EPOLLHUP)))
        err = pump(l, c, 1 - i, 0);
    if (err)
        return conn_end(l, c, 1);
    if (c->d[0].shut && c->d[1].shut)
        return conn_end(l, c, 0);
    if (conn_arm(l, c) < 0)
        conn_end(l, c, 1);
}

static void *run(void *arg)
{
    struct loop *l = arg;
    struct epoll_event evs[EVENTS];
    for (;;) {
        int n = epoll_wait(l->ep, evs, EVENTS, -1);
        for (int k = 0; k < n; k++) {
            if (!evs[k].data.ptr)
                on_accept(l);
            else
                on_event(l, evs[k].data.ptr, evs[k].events);
        }
        while (l->dead) {
            struct conn *c = l->dead;
            l->dead = c->next_dead;
            free(c);
        }
    }
    return NULL;
}

/* One loop: its epoll and its own SO_REUSEPORT listener. Returns NULL on failure. */
static struct loop *loop_new(void)
{
    struct loop *l = calloc(1, sizeof *l);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    int one = 1;
    if (!l)
        return NULL;
    l->lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    l->ep = epoll_create1(EPOLL_CLOEXEC);
    if (l->lfd < 0 || l->ep < 0
        || setsockopt(l->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0
        || setsockopt(l->lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0
        || bind(l->lfd, (struct sockaddr *)&a, sizeof a) < 0 || listen(l->lfd, 65535) < 0)
        return NULL;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(l->ep, EPOLL_CTL_ADD, l->lfd, &ev) < 0)
        return NULL;
    return l;
}

int main(int argc, char **argv)
{
    int threads = 1, opt;
    while ((opt = getopt(argc, argv, "p:t:s:")) != -1) {
        if (opt == 'p')
            port = atoi(optarg);
        else if (opt == 't')
            threads = atoi(optarg);
        else if (opt == 's')
            pipe_bytes = atoi(optarg);
        else {
            fprintf(stderr, "usage: barerelay [-p PORT] [-t THREADS] [-s PIPE_BYTES]\n");
            return 2;
        }
    }
    if (threads < 1 || threads > 256 || port <= 0 || port > 65535 || pipe_bytes < 4096) {
        fprintf(stderr, "barerelay: bad arguments\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct loop *loops[256];
    for (int t = 0; t < threads; t++) {   /* every listener bound before any thread runs */
        loops[t] = loop_new();
        if (!loops[t]) {
            perror("barerelay: listen");
            return 1;
        }
    }
    for (int t = 1; t < threads; t++) {
        pthread_t th;
        if (pthread_create(&th, NULL, run, loops[t]) != 0) {
            fprintf(stderr, "barerelay: cannot start thread %d\n", t);
            return 1;
        }
    }
    run(loops[0]);
    return 0;
}
