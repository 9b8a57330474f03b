/* The relay: one accepted connection from decision to close.
 *
 * Theory of operation
 * -------------------
 * A connection is a client socket (cfd, accepted on the outbound listener) and an upstream socket
 * (ufd, dialled to the original destination), and two directions: d[0] client->upstream and d[1]
 * upstream->client. Each direction is a small machine:
 *
 *   - pending: bytes read from src but not yet delivered to dst, held in a borrowed pipe (splice)
 *     or a borrowed buffer (copy). While a direction has pending bytes it does not read: a slow
 *     reader stops the reads on the other side, so memory per connection is one pipe or one
 *     buffer per direction at most;
 *   - eof: src returned 0 (a FIN). Once nothing is pending, the FIN is passed on with
 *     shutdown(dst, SHUT_WR) and the direction is finished (shut);
 *   - a reset read from src, or a write to dst that fails, tears the whole connection down with a
 *     reset on the other socket (SO_LINGER 0), so a reset is passed on as a reset.
 *
 * The epoll interest of each socket is derived from the two directions' states by one function
 * (update_interest): src wants EPOLLIN when its direction has nothing pending and no eof; dst
 * wants EPOLLOUT while its direction has pending bytes. A socket wanting nothing is taken out of
 * the epoll set, so EPOLLHUP/EPOLLERR on a socket we are not using cannot spin the loop.
 *
 * The connection is finished when both directions are shut; it is closed then (FIN already sent
 * both ways). Connections are freed after the event batch (fp_conn_reap), never inside it.
 *
 * Dialling: the upstream socket is non-blocking; until connect completes the client socket is not
 * read (its bytes wait in the kernel) and a refused or unreachable upstream resets the client at
 * once. Timeouts: connect and idle, from the table the connection was admitted under.
 *
 * Syscalls: accept4 (caller), getsockopt(SO_ORIGINAL_DST, SO_ERROR), getsockname, socket,
 * connect, setsockopt(TCP_NODELAY, SO_LINGER), splice, recv, send, shutdown, close, epoll_ctl.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fp_internal.h"

/* From <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h>, which clash with
 * glibc's <netinet/in.h>. */
#ifndef SO_ORIGINAL_DST
#define SO_ORIGINAL_DST 80
#endif
#ifndef IP6T_SO_ORIGINAL_DST
#define IP6T_SO_ORIGINAL_DST 80
#endif

#define PUMP_BUDGET 16

static void set_linger0(int fd)
{
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    (void)setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
}

/* Close a socket owned by a connection; reset = 1 sends an RST instead of a FIN. */
static void close_sock(struct fp_worker *w, int fd, int reset)
{
    if (fd < 0)
        return;
    if (reset)
        set_linger0(fd);
    close(fd);
    FP_DBG_ADD(w->st.debug_live_fds, -1);
}

/* Reset an accepted client that never became a connection. */
static void reject_client(struct fp_worker *w, int cfd)
{
    close_sock(w, cfd, 1);
}

static void list_remove(struct fp_worker *w, struct fp_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

/* Finish the connection: release pipes and buffers, close both sockets (reset_c / reset_u send
 * RSTs), count it, and queue it for freeing after the batch. Idempotent. */
static void conn_close(struct fp_conn *c, int reset_c, int reset_u)
{
    struct fp_worker *w = c->w;
    if (c->state == FP_CS_CLOSED)
        return;
    for (int i = 0; i < 2; i++) {
        fp_pipe_return(w, &c->d[i]);
        fp_buf_return(w, &c->d[i]);
    }
    close_sock(w, c->cfd, reset_c);
    close_sock(w, c->ufd, reset_u);
    c->cfd = c->ufd = -1;
    c->creg = c->ureg = 0;
    c->state = FP_CS_CLOSED;
    list_remove(w, c);
    c->zombie_next = w->zombies;
    w->zombies = c;
    FP_SUB(w->st.cx_active, 1);
    FP_ADD(w->st.cx_closed, 1);
}

/* Contract: frees the connections closed during the last event batch. */
void fp_conn_reap(struct fp_worker *w)
{
    while (w->zombies) {
        struct fp_conn *c = w->zombies;
        w->zombies = c->zombie_next;
        fp_table_unref(c->table);
        free(c);
        FP_DBG_ADD(w->st.debug_live_conns, -1);
    }
}

static void set_interest(struct fp_conn *c, int fd, uint8_t *reg, uint32_t *cur, uint32_t want,
                         uint32_t tag)
{
    if (*reg && want == *cur)
        return;
    struct epoll_event ev = {.events = want, .data.u64 = (uint64_t)(uintptr_t)c | tag};
    if (want == 0) {
        if (*reg)
            (void)epoll_ctl(c->w->epfd, EPOLL_CTL_DEL, fd, NULL);
        *reg = 0;
    } else if (*reg) {
        (void)epoll_ctl(c->w->epfd, EPOLL_CTL_MOD, fd, &ev);
    } else {
        (void)epoll_ctl(c->w->epfd, EPOLL_CTL_ADD, fd, &ev);
        *reg = 1;
    }
    *cur = want;
}

static inline uint32_t pending(const struct fp_dir *d)
{
    return d->in_pipe + d->buf_len;
}

/* The one place the epoll interest is derived from the state. */
static void update_interest(struct fp_conn *c)
{
    uint32_t cw = 0, uw = 0;
    if (c->state == FP_CS_CONNECTING) {
        uw = EPOLLOUT;
    } else if (c->state == FP_CS_RELAY) {
        const struct fp_dir *up = &c->d[0], *down = &c->d[1];
        if (!up->eof && !pending(up))
            cw |= EPOLLIN;
        if (pending(up))
            uw |= EPOLLOUT;
        if (!down->eof && !pending(down))
            uw |= EPOLLIN;
        if (pending(down))
            cw |= EPOLLOUT;
    } else {
        return;
    }
    set_interest(c, c->cfd, &c->creg, &c->cmask, cw, FP_TAG_CLIENT);
    set_interest(c, c->ufd, &c->ureg, &c->umask, uw, FP_TAG_UPSTREAM);
}

/* Outcome of pumping one direction. */
enum { PUMP_OK = 0, PUMP_SRC_RESET = 1, PUMP_DST_RESET = 2 };

/* Deliver pending bytes to dst. Returns bytes written (>= 0) or a negative errno. */
static ssize_t flush_dir(struct fp_dir *d, int dst)
{
    if (d->in_pipe) {
        ssize_t n = splice(d->pipe_r, NULL, dst, NULL, d->in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n < 0)
            return -errno;
        d->in_pipe -= (uint32_t)n;
        return n;
    }
    if (d->buf_len) {
        ssize_t n = send(dst, d->buf + d->buf_off, d->buf_len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0)
            return -errno;
        d->buf_off += (uint32_t)n;
        d->buf_len -= (uint32_t)n;
        if (d->buf_len == 0)
            d->buf_off = 0;
        return n;
    }
    return 0;
}

/* Read from src into the direction's pipe (or buffer). Returns bytes read (0 = EOF) or a negative
 * errno (-EAGAIN: nothing to read now). Borrows a pipe or buffer as needed. */
static ssize_t fill_dir(struct fp_worker *w, struct fp_dir *d, int src)
{
    if (w->e->o.use_splice && !d->copy_only) {
        if (d->pipe_r < 0 && !d->buf && fp_pipe_borrow(w, d) < 0)
            FP_ADD(w->st.splice_fallbacks, 1);
        if (d->pipe_r >= 0) {
            ssize_t n = splice(src, NULL, d->pipe_w, NULL, d->pipe_cap,
                               SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n >= 0) {
                d->in_pipe += (uint32_t)n;
                return n;
            }
            int err = errno;
            if (err != EINVAL && err != ENOSYS)
                return -err;
            /* splice refused on this socket: copy from now on */
            d->copy_only = 1;
            fp_pipe_return(w, d);
            FP_ADD(w->st.splice_fallbacks, 1);
        }
    }
    if (!d->buf && fp_buf_borrow(w, d) < 0)
        return -ENOMEM;
    ssize_t n = recv(src, d->buf, (size_t)w->e->o.copy_buf_size, MSG_DONTWAIT);
    if (n < 0)
        return -errno;
    d->buf_off = 0;
    d->buf_len = (uint32_t)n;
    return n;
}

/* Move bytes src -> dst until src is empty, dst is full, or the budget is spent. */
static int pump(struct fp_conn *c, int dir, uint64_t now_ms)
{
    struct fp_worker *w = c->w;
    struct fp_dir *d = &c->d[dir];
    int src = dir == 0 ? c->cfd : c->ufd;
    int dst = dir == 0 ? c->ufd : c->cfd;
    uint64_t *bytes = dir == 0 ? &w->st.bytes_c2u : &w->st.bytes_u2c;

    if (d->shut)
        return PUMP_OK;
    for (int budget = PUMP_BUDGET; budget > 0; budget--) {
        if (pending(d)) {
            ssize_t n = flush_dir(d, dst);
            if (n < 0) {
                if (n == -EAGAIN || n == -EINTR)
                    return PUMP_OK;
                return PUMP_DST_RESET;
            }
            if (n > 0) {
                FP_ADD(*bytes, (uint64_t)n);
                c->last_ms = now_ms;
            }
            if (pending(d))
                return PUMP_OK; /* dst full: wait for EPOLLOUT */
        }
        /* nothing pending: an idle direction holds no pipe and no buffer */
        fp_pipe_return(w, d);
        fp_buf_return(w, d);
        if (d->eof) {
            (void)shutdown(dst, SHUT_WR);
            d->shut = 1;
            return PUMP_OK;
        }
        ssize_t n = fill_dir(w, d, src);
        if (n > 0) {
            c->last_ms = now_ms;
            continue;
        }
        if (n == 0) {
            d->eof = 1;
            continue;
        }
        if (n == -EAGAIN || n == -EINTR) {
            fp_pipe_return(w, d);
            fp_buf_return(w, d);
            return PUMP_OK;
        }
        return PUMP_SRC_RESET;
    }
    return PUMP_OK;
}

/* Tear down after a reset seen on one side: the other side gets a reset too. */
static void conn_reset_from(struct fp_conn *c, int from_upstream)
{
    struct fp_worker *w = c->w;
    if (from_upstream)
        FP_ADD(w->st.cx_reset_by_upstream, 1);
    else
        FP_ADD(w->st.cx_reset_by_client, 1);
    conn_close(c, 1, 1);
}

static void relay(struct fp_conn *c, int dirs, uint64_t now_ms)
{
    for (int dir = 0; dir < 2; dir++) {
        if (!(dirs & (1 << dir)))
            continue;
        int r = pump(c, dir, now_ms);
        if (r != PUMP_OK) {
            /* dir 0 reads the client and writes the upstream; dir 1 the other way round */
            int upstream_side = (dir == 0) == (r == PUMP_DST_RESET);
            conn_reset_from(c, upstream_side);
            return;
        }
    }
    if (c->d[0].shut && c->d[1].shut) {
        conn_close(c, 0, 0);
        return;
    }
    update_interest(c);
}

static void connect_failed(struct fp_conn *c, int err)
{
    struct fp_worker *w = c->w;
    if (err == ETIMEDOUT)
        FP_ADD(w->st.cx_connect_timeout, 1);
    else
        FP_ADD(w->st.cx_connect_fail, 1);
    conn_close(c, 1, 1);
}

static void connected(struct fp_conn *c, uint64_t now_ms)
{
    c->state = FP_CS_RELAY;
    c->last_ms = now_ms;
    int one = 1;
    (void)setsockopt(c->ufd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* the client may have sent bytes already, and the server may speak first */
    relay(c, 3, now_ms);
}

static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family)
        return 0;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
           memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0;
}

/* Read the original destination of a redirected connection. Returns 0 or a negative errno
 * (-ENOENT: not redirected; -ELOOP: it points at our own listener). */
static int original_dst(int cfd, struct sockaddr_storage *dst, socklen_t *dlen)
{
    struct sockaddr_storage local;
    socklen_t llen = sizeof(local);
    if (getsockname(cfd, (struct sockaddr *)&local, &llen) < 0)
        return -errno;
    *dlen = sizeof(*dst);
    memset(dst, 0, sizeof(*dst));
    int r;
    if (local.ss_family == AF_INET6)
        r = getsockopt(cfd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, dst, dlen);
    else
        r = getsockopt(cfd, SOL_IP, SO_ORIGINAL_DST, dst, dlen);
    if (r < 0)
        return -errno;
    if (same_addr(dst, &local))
        return -ELOOP;
    return 0;
}

/* Contract: takes ownership of an accepted, non-blocking client socket: decides it from the
 * current table and either resets it (deny, no original destination, out of memory) or starts
 * dialling its original destination. Never blocks. */
void fp_conn_accepted(struct fp_worker *w, int cfd, uint64_t now_ms)
{
    FP_ADD(w->st.cx_accepted, 1);
    FP_DBG_ADD(w->st.debug_live_fds, 1);

    struct sockaddr_storage dst;
    socklen_t dlen;
    if (original_dst(cfd, &dst, &dlen) < 0) {
        FP_ADD(w->st.cx_no_original_dst, 1);
        reject_client(w, cfd);
        return;
    }
    fp_table *t = fp_table_acquire(w->e);
    if (fp_table_decide(t, (struct sockaddr *)&dst) != FP_ACT_PASSTHROUGH) {
        FP_ADD(w->st.cx_denied, 1);
        fp_table_unref(t);
        reject_client(w, cfd);
        return;
    }
    FP_ADD(w->st.cx_passthrough, 1);

    struct fp_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        fp_table_unref(t);
        reject_client(w, cfd);
        return;
    }
    FP_DBG_ADD(w->st.debug_live_conns, 1);
    c->w = w;
    c->cfd = cfd;
    c->table = t;
    c->started_ms = c->last_ms = now_ms;
    for (int i = 0; i < 2; i++)
        c->d[i].pipe_r = c->d[i].pipe_w = -1;
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    FP_ADD(w->st.cx_active, 1);

    int one = 1;
    (void)setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    c->ufd = socket(dst.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    if (c->ufd < 0) {
        c->ufd = -1;
        connect_failed(c, errno);
        return;
    }
    FP_DBG_ADD(w->st.debug_live_fds, 1);
    c->state = FP_CS_CONNECTING;
    if (connect(c->ufd, (struct sockaddr *)&dst, dlen) == 0) {
        connected(c, now_ms);
        return;
    }
    if (errno != EINPROGRESS) {
        connect_failed(c, errno);
        return;
    }
    update_interest(c);
}

/* Contract: handles epoll `events` on the client (is_upstream = 0) or upstream socket of `c`. */
void fp_conn_event(struct fp_conn *c, int is_upstream, uint32_t events, uint64_t now_ms)
{
    if (c->state == FP_CS_CLOSED)
        return;
    if (c->state == FP_CS_CONNECTING) {
        if (!is_upstream)
            return;
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(c->ufd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err) {
            connect_failed(c, err);
            return;
        }
        connected(c, now_ms);
        return;
    }
    /* Which directions can move: reading this socket feeds one direction, writing it drains
     * the other. Errors and hang-ups are found by the syscalls of either direction. */
    int rd_dir = is_upstream ? 1 : 0;
    int wr_dir = is_upstream ? 0 : 1;
    int dirs = 0;
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        dirs |= 1 << rd_dir;
    if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
        dirs |= 1 << wr_dir;
    relay(c, dirs, now_ms);
}

/* Contract: closes connections whose connect or idle deadline has passed (connect: client reset;
 * idle: both sides reset, as the peers may still believe the connection is alive). */
void fp_conn_check_timeouts(struct fp_worker *w, uint64_t now_ms)
{
    struct fp_conn *c = w->conns;
    while (c) {
        struct fp_conn *next = c->next;
        const fp_table *t = c->table;
        if (c->state == FP_CS_CONNECTING) {
            if (t->connect_ms && now_ms - c->started_ms >= (uint64_t)t->connect_ms)
                connect_failed(c, ETIMEDOUT);
        } else if (c->state == FP_CS_RELAY) {
            if (t->idle_ms && now_ms - c->last_ms >= (uint64_t)t->idle_ms) {
                FP_ADD(w->st.cx_idle_timeout, 1);
                conn_close(c, 1, 1);
            }
        }
        c = next;
    }
}

/* Contract: resets every open connection of the worker (shutdown past the drain deadline). */
void fp_conn_reset_all(struct fp_worker *w)
{
    while (w->conns)
        conn_close(w->conns, 1, 1);
}
