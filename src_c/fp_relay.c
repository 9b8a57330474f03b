/* The relay: one accepted connection from decision to close.
 *
 * Theory of operation
 * -------------------
 * A connection is a client socket (cfd, accepted on the outbound listener) and an upstream socket
 * (ufd, dialled to the original destination or to a rule's resolved upstream), and two
 * directions: d[0] client->upstream and d[1] upstream->client. Each direction is a small machine:
 *
 *   - pending: bytes read from src but not yet delivered to dst, held in a borrowed pipe (splice)
 *     or a borrowed buffer (copy). While a direction has pending bytes it does not read: a slow
 *     reader stops the reads on the other side, so memory per connection is one pipe or one
 *     buffer per direction at most. d[1] may also carry a response the sidecar writes itself
 *     (403 Access denied, 400), delivered after the bytes before it;
 *   - eof: src returned 0 (a FIN). Once nothing is pending, the FIN is passed on with
 *     shutdown(dst, SHUT_WR) and the direction is finished (shut);
 *   - a reset read from src, or a write to dst that fails, tears the whole connection down with a
 *     reset on the other socket (SO_LINGER 0), so a reset is passed on as a reset.
 *
 * Connection states: PEEKING (the decision needs the first bytes: a TLS ClientHello for its SNI,
 * or an HTTP request head; they are read with MSG_PEEK, never consumed, under the table's peek
 * deadline), CONNECTING (the upstream dial is in flight; the client is not read), RELAY, CLOSED.
 *
 * HTTP mode (a port with http host rules): each request is decided on its own. d[0] walks
 * HEAD -> body (LENGTH or CHUNKED, counted or framed by fp_chunked_feed) -> IDLE until the
 * response is complete -> HEAD; d[1] walks IDLE -> HEAD -> body (LENGTH, CHUNKED or UNTIL_EOF)
 * -> IDLE. Heads are peeked, parsed, then exactly their bytes are consumed, so nothing after a
 * message is ever read as part of it. One request is in flight at a time (pipelined requests
 * wait in the kernel), which keeps a 403 for a denied request in order behind the responses
 * before it. A denied request's body is read and dropped and the connection stays usable. Only
 * what the client asked for turns the connection opaque: a 101 answering a request that carried
 * Upgrade with Connection: upgrade, a 2xx answering an allowed CONNECT (the table allows CONNECT
 * only through a route that names it). Any other 101 is a final response without a body.
 *
 * TLS watch (a connection allowed by its SNI): d[0] relays exactly the checked ClientHello and
 * holds; d[1] peeks the server's first handshake message. A HelloRetryRequest sends d[0] to
 * peek the second ClientHello, whose SNI must equal the first or both sides are reset; anything
 * else ends the watch (see "TLS watch" below).
 *
 * Splice and "pipe full": a splice into a pipe that already holds bytes and returns EAGAIN may
 * mean the pipe ran out of slots (small segments) long before its byte capacity; the direction
 * then stops reading until the pipe drains (pipe_full), so no splice is retried without
 * progress (and src keeps its FP_RDY_IN: the socket may still hold bytes no new edge reports).
 *
 * Readiness, edge-triggered: each socket is added to the epoll set once, for EPOLLIN | EPOLLOUT |
 * EPOLLRDHUP | EPOLLET, and never modified (a new connection costs two epoll_ctl calls, a bulk
 * transfer none). What the edges report is kept per socket (crdy, urdy: FP_RDY_IN, _OUT, _HUP)
 * and taken back only by the syscall that finds it gone: a read or write that returns EAGAIN, a
 * recv that comes back short (the socket is empty; a later arrival is a new edge), a peek whose
 * head is incomplete (it waits for new bytes). A read gated by a cleared bit costs no syscall. A
 * short recv after the peer's FIN was reported (FP_RDY_HUP) is the end of the stream, without
 * the read that would return 0. Every event runs both directions, round after round while a
 * round changed something the other direction may wait for (a phase, pending bytes, an EOF);
 * a connection that still has work when its budget is spent goes on the worker's `again` list,
 * run before the next wait, since no new edge would report bytes already there. Peeked bytes
 * stay in the socket; a decision taken without new bytes (a peek timeout) marks the socket
 * readable again. Connections are freed after the event batch (fp_conn_reap), never inside it.
 *
 * Small transfers are copied through a buffer; a direction switches to splice() through a pooled
 * pipe once one read fills the buffer (a bulk transfer), where splice pays off.
 *
 * Syscalls: getsockopt(SO_ORIGINAL_DST, SO_ERROR), getsockname, socket, connect,
 * setsockopt(TCP_NODELAY, SO_LINGER), splice, recv (MSG_PEEK), send, shutdown, close, epoll_ctl.
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

static const char RESP_403[] = "HTTP/1.1 403 Forbidden\r\n"
                               "content-type: text/plain\r\n"
                               "content-length: 13\r\n"
                               "\r\n"
                               "Access denied";
static const char RESP_403_CLOSE[] = "HTTP/1.1 403 Forbidden\r\n"
                                     "content-type: text/plain\r\n"
                                     "content-length: 13\r\n"
                                     "connection: close\r\n"
                                     "\r\n"
                                     "Access denied";
static const char RESP_400[] = "HTTP/1.1 400 Bad Request\r\n"
                               "content-type: text/plain\r\n"
                               "content-length: 11\r\n"
                               "connection: close\r\n"
                               "\r\n"
                               "Bad request";

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

/* The one writer of c->state. */
static void set_state(struct fp_conn *c, int state)
{
    c->state = (uint8_t)state;
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

/* Close the upstream socket (between HTTP requests, or as part of closing) and release its
 * place under its rule's connection limit. */
static void close_upstream(struct fp_conn *c, int reset)
{
    if (c->ufd >= 0)
        close_sock(c->w, c->ufd, reset); /* close() takes it out of the epoll set */
    fp_obs_upstream_close(c);
    c->ufd = -1;
    c->ureg = 0;
    c->urdy = 0;
    if (c->rule >= 0)
        fp_table_rule_release(c->table, c->rule);
    c->rule = -1;
    c->up_rule = -2;
}

/* Finish the connection: release pipes and buffers, close both sockets (reset_c / reset_u send
 * RSTs), count it, and queue it for freeing after the batch. Idempotent. */
static void conn_close(struct fp_conn *c, int reset_c, int reset_u)
{
    struct fp_worker *w = c->w;
    if (c->state == FP_CS_CLOSED)
        return;
    if (c->obs.end == 255)
        c->obs.end = reset_c || reset_u ? FP_END_ERROR : FP_END_FIN;
    fp_obs_conn_end(c);
    for (int i = 0; i < 2; i++) {
        fp_pipe_return(w, &c->d[i]);
        fp_buf_return(w, &c->d[i]);
    }
    close_upstream(c, reset_u);
    close_sock(w, c->cfd, reset_c);
    c->cfd = -1;
    c->creg = 0;
    c->crdy = 0;
    free(c->sni);
    c->sni = NULL;
    set_state(c, FP_CS_CLOSED);
    list_remove(w, c);
    c->zombie_next = w->zombies;
    w->zombies = c;
    FP_SUB(w->st.cx_active, 1);
    FP_ADD(w->st.cx_closed, 1);
}

/* Contract: frees the connections closed during the last event batch (first taking them off
 * the `again` list). */
void fp_conn_reap(struct fp_worker *w)
{
    for (struct fp_conn **pp = &w->again; *pp;) {
        if ((*pp)->state == FP_CS_CLOSED)
            *pp = (*pp)->again_next;
        else
            pp = &(*pp)->again_next;
    }
    while (w->zombies) {
        struct fp_conn *c = w->zombies;
        w->zombies = c->zombie_next;
        fp_table_unref(c->table);
        free(c);
        FP_DBG_ADD(w->st.debug_live_conns, -1);
    }
}

#define FP_WATCH (EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET)

/* Add fd to the worker's epoll set, once, for every edge (FP_WATCH). The tag names the
 * connection, the socket's role and its generation. Returns 0 or the negative errno of a
 * refused epoll_ctl (ENOMEM, ENOSPC: max_user_watches). */
static int watch(struct fp_conn *c, int fd, uint8_t *reg, uint32_t tag, unsigned gen)
{
    if (fd < 0 || *reg)
        return 0;
    struct epoll_event ev = {.events = FP_WATCH,
                             .data.u64 = (uint64_t)(uintptr_t)c | tag |
                                         ((uint64_t)(gen & 0xffffu) << FP_TAG_GEN_SHIFT)};
#ifdef FP_DEBUG
    unsigned every = c->w->e->dbg_epoll_fail_every;
    if (every && ++c->w->dbg_epoll_calls % every == 0)
        return -ENOSPC; /* injected: what a full max_user_watches answers */
#endif
    if (epoll_ctl(c->w->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return -errno;
    *reg = 1;
    return 0;
}

/* The readiness bits of socket fd of c (the client's or the upstream's). */
static inline uint8_t *rdy(struct fp_conn *c, int fd)
{
    return fd == c->cfd ? &c->crdy : &c->urdy;
}

/* A read of fd found nothing new: wait for the next edge. */
static inline void drained(struct fp_conn *c, int fd)
{
    *rdy(c, fd) &= (uint8_t)~FP_RDY_IN;
}

/* Put c on the worker's `again` list: it has work left that no edge will report. */
static void queue_again(struct fp_conn *c)
{
    if (c->queued || c->state == FP_CS_CLOSED)
        return;
    c->queued = 1;
    c->again_next = c->w->again;
    c->w->again = c;
}

static inline uint32_t pending(const struct fp_conn *c, int dir)
{
    const struct fp_dir *d = &c->d[dir];
    uint32_t n = d->in_pipe + d->buf_len;
    if (dir == 1)
        n += c->inject_len - c->inject_off;
    return n;
}

/* Whether direction `dir` may read its source now: it needs somewhere to deliver to, except a
 * head being peeked or a body being dropped; a held or finished direction reads nothing. */
static int may_read(const struct fp_conn *c, int dir)
{
    const struct fp_dir *d = &c->d[dir];
    int src = dir == 0 ? c->cfd : c->ufd;
    int dst = dir == 0 ? c->ufd : c->cfd;
    if (src < 0 || d->eof || d->shut)
        return 0;
    if (c->state == FP_CS_PEEKING)
        return c->http && dir == 0;
    if (c->state != FP_CS_RELAY)
        return 0;
    switch (d->phase) {
    case FP_PH_HEAD:
    case FP_PH_TLS_SH:
    case FP_PH_TLS_CH2:
        return 1; /* peeks */
    case FP_PH_TLS_HOLD:
        return 0;
    case FP_PH_IDLE:
        return dir == 1; /* an idle upstream may only close; an idle client waits */
    default:
        return dst >= 0 || d->discard;
    }
}

/* Run as every event handler returns: a socket not yet in the epoll set (a new client, a new
 * upstream) is added. A refused epoll_ctl would leave a socket nobody hears from again: the
 * connection is reset and counted instead. */
static void sync_interest(struct fp_conn *c)
{
    if (c->state == FP_CS_CLOSED)
        return;
    if (watch(c, c->cfd, &c->creg, FP_TAG_CLIENT, 0) < 0 ||
        watch(c, c->ufd, &c->ureg, FP_TAG_UPSTREAM, c->ugen) < 0) {
        FP_ADD(c->w->st.epoll_errors, 1);
        conn_close(c, 1, 1);
    }
}

/* Deliver pending bytes to dst. Returns bytes written (>= 0) or a negative errno (-EAGAIN: no
 * room; dst's FP_RDY_OUT is taken back then, and a write it gates costs no syscall). */
static ssize_t flush_dir(struct fp_conn *c, int dir, int dst)
{
    struct fp_dir *d = &c->d[dir];
    uint8_t *r = rdy(c, dst);
    if (!(*r & FP_RDY_OUT))
        return -EAGAIN;
    if (d->in_pipe) {
        ssize_t n = splice(d->pipe_r, NULL, dst, NULL, d->in_pipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n < 0) {
            if (errno == EAGAIN)
                *r &= (uint8_t)~FP_RDY_OUT;
            return -errno;
        }
        d->in_pipe -= (uint32_t)n;
        if (n > 0)
            d->pipe_full = 0; /* room again (slots are freed as pages drain) */
        return n;
    }
    const uint8_t *p;
    uint32_t len;
    if (d->buf_len) {
        p = d->buf + d->buf_off;
        len = d->buf_len;
    } else if (dir == 1 && c->inject_off < c->inject_len) {
        p = (const uint8_t *)c->inject + c->inject_off;
        len = c->inject_len - c->inject_off;
    } else {
        return 0;
    }
    ssize_t n = send(dst, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EAGAIN)
            *r &= (uint8_t)~FP_RDY_OUT;
        return -errno;
    }
    if (d->buf_len) {
        d->buf_off += (uint32_t)n;
        d->buf_len -= (uint32_t)n;
        if (d->buf_len == 0)
            d->buf_off = 0;
    } else {
        c->inject_off += (uint32_t)n;
        if (c->inject_off == c->inject_len)
            c->inject = NULL, c->inject_off = c->inject_len = 0;
    }
    return n;
}

/* Read at most `max` bytes from src into the direction's pipe (or buffer; `copy` forces the
 * buffer); the direction holds nothing when called. Returns bytes read (0 = EOF) or a negative
 * errno (-EAGAIN: nothing to read now; src's FP_RDY_IN is taken back, as after a recv that came
 * back short, when the socket is empty for sure. A short recv after the peer's FIN also marks
 * the direction's EOF, saving the read that would return 0). */
static ssize_t fill_dir(struct fp_conn *c, struct fp_dir *d, int src, uint64_t max, int copy)
{
    struct fp_worker *w = c->w;
    uint8_t *r = rdy(c, src);
    if (!(*r & FP_RDY_IN))
        return -EAGAIN;
    if (w->e->o.use_splice && !d->copy_only && !copy && d->bulk) {
        if (d->pipe_r < 0 && !d->buf && fp_pipe_borrow(w, d) < 0)
            FP_ADD(w->st.splice_fallbacks, 1);
        if (d->pipe_r >= 0) {
            size_t want = d->pipe_cap < max ? d->pipe_cap : (size_t)max;
            ssize_t n = splice(src, NULL, d->pipe_w, NULL, want, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
            if (n >= 0) {
                /* a short splice may mean the pipe ran out of slots: read on until EAGAIN */
                d->in_pipe += (uint32_t)n;
                return n;
            }
            int err = errno;
            if (err == EAGAIN) /* the pipe was empty: the socket is */
                *r &= (uint8_t)~FP_RDY_IN;
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
    size_t want = (size_t)w->e->o.copy_buf_size < max ? (size_t)w->e->o.copy_buf_size : (size_t)max;
    ssize_t n = recv(src, d->buf, want, MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EAGAIN)
            *r &= (uint8_t)~FP_RDY_IN;
        return -errno;
    }
    d->buf_off = 0;
    d->buf_len = (uint32_t)n;
    if ((size_t)n == (size_t)w->e->o.copy_buf_size)
        d->bulk = 1; /* a full buffer: a bulk transfer, splice from now on */
    if (n > 0 && (size_t)n < want) {
        *r &= (uint8_t)~FP_RDY_IN; /* the socket is empty: new bytes are a new edge */
        if (*r & FP_RDY_HUP)
            d->eof = 1; /* and the FIN was already there: nothing more comes */
    }
    return n;
}

/* Peek (without consuming) up to the copy buffer's size from fd into d->buf. Returns the bytes
 * peeked, 0 at EOF, or a negative errno (-EAGAIN: nothing new since the last peek, which the
 * caller said was incomplete with drained(); no syscall then). */
static ssize_t peek_into(struct fp_conn *c, struct fp_dir *d, int fd)
{
    struct fp_worker *w = c->w;
    if (!(*rdy(c, fd) & FP_RDY_IN))
        return -EAGAIN;
    if (!d->buf && fp_buf_borrow(w, d) < 0)
        return -ENOMEM;
    ssize_t n = recv(fd, d->buf, (size_t)w->e->o.copy_buf_size, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && errno == EAGAIN)
        drained(c, fd);
    return n < 0 ? -errno : n;
}

/* Consume exactly n bytes (already peeked) from fd into d->buf, to be delivered (keep = 1) or
 * dropped. Returns 0 or a negative errno. */
static int consume(struct fp_dir *d, int fd, size_t n, int keep)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = recv(fd, d->buf + got, n - got, MSG_DONTWAIT);
        if (r <= 0)
            return r == 0 ? -EPIPE : -errno;
        got += (size_t)r;
    }
    d->buf_off = 0;
    d->buf_len = keep ? (uint32_t)n : 0;
    return 0;
}

/* ---- dialling ------------------------------------------------------------------------------ */

static void connect_failed(struct fp_conn *c, int err)
{
    struct fp_worker *w = c->w;
    if (err == ETIMEDOUT) {
        FP_ADD(w->st.cx_connect_timeout, 1);
    } else {
        FP_ADD(w->st.cx_connect_fail, 1);
        if (err == EADDRNOTAVAIL)
            FP_ADD(w->st.cx_connect_addrnotavail, 1); /* no ephemeral port left */
    }
    c->obs.end = err == ETIMEDOUT ? FP_END_CONNECT_TIMEOUT : FP_END_CONNECT_REFUSED;
    conn_close(c, 1, 1);
}

static void relay(struct fp_conn *c, int dirs, uint64_t now_ms);

static void mark_connected(struct fp_conn *c, uint64_t now_ms)
{
    set_state(c, FP_CS_RELAY);
    c->last_ms = now_ms;
    int one = 1;
    (void)setsockopt(c->ufd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

/* Dial the upstream for `rule` (-1: the original destination): counts the connection against the
 * rule's limit, starts a non-blocking connect. On failure the connection is closed with resets.
 * Never relays (callers may be in the middle of pumping). Returns 1 when connected already, 0
 * while the connect is in flight, -1 when the connection was closed. */
static int dial(struct fp_conn *c, int rule, uint64_t now_ms)
{
    struct fp_worker *w = c->w;
    const struct sockaddr_storage *ups;
    int nups;
    const struct sockaddr *to = (const struct sockaddr *)&c->dst;
    socklen_t tolen = c->dlen;
    if (fp_table_rule_upstreams(c->table, rule, &ups, &nups)) {
        if (nups == 0) {
            connect_failed(c, EHOSTUNREACH);
            return -1;
        }
        to = (const struct sockaddr *)&ups[w->rr++ % (unsigned)nups];
        tolen = to->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
    }
    int admitted = fp_table_rule_admit(c->table, rule) == 0;
    if (!admitted && !c->table->audit) {
        FP_ADD(w->st.cx_over_limit, 1);
        c->reason = FP_WHY_OVER_LIMIT;
        struct fp_verdict ov = {.action = FP_ACT_DENY, .rule = -1, .reason = FP_WHY_OVER_LIMIT};
        fp_obs_decided(c, &ov, 0);
        if (c->obs.req_open)
            fp_obs_request_refused(c, 0, FP_WHY_OVER_LIMIT);
        c->obs.end = FP_END_DENIED;
        conn_close(c, 1, 1);
        return -1;
    }
    if (!admitted) { /* audit mode: over the limit would have been refused */
        FP_ADD(w->st.cx_over_limit, 1);
        c->reason = FP_WHY_OVER_LIMIT;
        struct fp_verdict ov = {.action = FP_ACT_DENY, .rule = -1, .reason = FP_WHY_OVER_LIMIT};
        fp_obs_decided(c, &ov, 1);
        rule = -1;
    }
    c->rule = admitted ? rule : -1;
    c->up_rule = rule;
    c->dial_ms = now_ms;
    c->connect_ms = fp_table_connect_ms(c->table, rule);
    c->ufd = socket(to->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, IPPROTO_TCP);
    if (c->ufd < 0) {
        c->ufd = -1;
        connect_failed(c, errno);
        return -1;
    }
    FP_DBG_ADD(w->st.debug_live_fds, 1);
    fp_obs_upstream_open(c, rule);
    c->ugen++; /* events still queued for an earlier upstream socket are not this one's */
    c->ureg = 0;
    c->urdy = 0; /* its edges come once it is in the epoll set (after the connect started) */
    set_state(c, FP_CS_CONNECTING);
    if (connect(c->ufd, to, tolen) == 0) {
        c->urdy = FP_RDY_OUT;
        mark_connected(c, now_ms);
        return 1;
    }
    if (errno != EINPROGRESS) {
        connect_failed(c, errno);
        return -1;
    }
    return 0;
}

/* Act on a connection-level verdict (after the destination, or after the SNI): reset, or dial and
 * relay opaque bytes. `nested`: called from inside pump(), which goes on relaying itself. */
static void act(struct fp_conn *c, const struct fp_verdict *v, uint64_t now_ms, int nested)
{
    struct fp_worker *w = c->w;
    switch (v->action) {
    case FP_ACT_PASSTHROUGH:
        FP_ADD(w->st.cx_passthrough, 1);
        break;
    case FP_ACT_MESH:
        FP_ADD(w->st.cx_mesh, 1);
        break;
    case FP_ACT_ALLOW:
        FP_ADD(w->st.cx_allowed, 1);
        break;
    default:
        if (c->table->audit) { /* audit mode: relayed to the original destination */
            fp_obs_decided(c, v, 1);
            break;
        }
        FP_ADD(w->st.cx_denied, 1);
        if (!c->reason)
            c->reason = (uint8_t)v->reason;
        fp_obs_decided(c, v, 0);
        c->obs.end = FP_END_DENIED;
        conn_close(c, 1, 1);
        return;
    }
    if (!c->reason)
        c->reason = (uint8_t)v->reason; /* a default passthrough says what it fell back from */
    if (v->action != FP_ACT_DENY)
        fp_obs_decided(c, v, 0);
    fp_buf_return(w, &c->d[0]); /* peeked bytes stay in the socket and are relayed as usual */
    c->crdy |= FP_RDY_IN;        /* (whether or not a peek waited for more: a timeout) */
    int r = dial(c, v->action == FP_ACT_ALLOW ? v->rule : -1, now_ms);
    if (r == 1 && !nested)
        relay(c, 3, now_ms); /* the client may have sent bytes already; the server may speak first */
}

/* The peek found nothing a rule can match (no bytes in time, not the protocol): what a
 * connection naming no host gets (the default, or a deny under FSM's port narrowing). */
static void act_default(struct fp_conn *c, uint64_t now_ms, int nested)
{
    struct fp_verdict v;
    fp_table_decide_sni(c->table, (struct sockaddr *)&c->dst, "", 0, &v);
    c->http = 0;
    c->d[0].phase = c->d[1].phase = FP_PH_OPAQUE;
    act(c, &v, now_ms, nested);
}

/* ---- HTTP mode ----------------------------------------------------------------------------- */

static void inject(struct fp_conn *c, const char *resp, size_t len)
{
    c->inject = resp;
    c->inject_off = 0;
    c->inject_len = (uint32_t)len;
}

/* A message in direction `dir` ended: advance both directions' phases. */
static void message_done(struct fp_conn *c, int dir)
{
    if (dir == 0) {
        c->d[0].discard = 0;
        c->d[0].phase = c->resp_done ? FP_PH_HEAD : FP_PH_IDLE;
        return;
    }
    c->resp_done = 1;
    c->obs.pending_u2c = pending(c, 1); /* the response's last bytes, still on their way */
    fp_obs_request_done(c);
    c->d[1].phase = FP_PH_IDLE;
    if (!c->keepalive)
        c->closing = 1;
    else if (c->d[0].phase == FP_PH_IDLE)
        c->d[0].phase = FP_PH_HEAD;
}

/* Set a direction up for the body a head announced. */
static void start_body(struct fp_conn *c, int dir, int body, uint64_t length)
{
    struct fp_dir *d = &c->d[dir];
    switch (body) {
    case FP_BODY_LENGTH:
        if (length) {
            d->phase = FP_PH_LENGTH;
            d->remaining = length;
            return;
        }
        break;
    case FP_BODY_CHUNKED:
        d->phase = FP_PH_CHUNKED;
        fp_chunked_init(&d->ch);
        return;
    case FP_BODY_CLOSE:
        d->phase = FP_PH_UNTIL_EOF;
        return;
    case FP_BODY_TUNNEL:
        c->http = 0;
        c->d[0].phase = c->d[1].phase = FP_PH_OPAQUE;
        c->d[0].discard = 0;
        return;
    }
    message_done(c, dir);
}

/* Step results for the head parsers. */
enum { STEP_WAIT = 0, STEP_MORE = 1, STEP_GONE = 2 };

/* d[0] in FP_PH_HEAD: peek a request head, decide it, forward or refuse it. */
static int request_head(struct fp_conn *c, uint64_t now_ms)
{
    struct fp_worker *w = c->w;
    struct fp_dir *d = &c->d[0];
    ssize_t n = peek_into(c, d, c->cfd);
    if (n == -EAGAIN || n == -EINTR)
        return STEP_WAIT;
    if (n <= 0) {
        if (n == 0 && c->state == FP_CS_PEEKING) {
            conn_close(c, 0, 0); /* the client left without a request */
            return STEP_GONE;
        }
        if (n == 0) {
            d->eof = 1; /* no more requests: close once what is pending is delivered */
            c->closing = 1;
            return STEP_MORE;
        }
        conn_close(c, 1, 1);
        return STEP_GONE;
    }
    struct fp_http_req req;
    int rc = fp_peek_http_request(d->buf, (size_t)n, &req);
    if (rc == FP_PEEK_NEED_MORE) {
        drained(c, c->cfd);
        return STEP_WAIT;
    }
    if (rc != FP_PEEK_OK) {
        /* Not HTTP, or a head over the cap: no http rule can match it. On the first request
         * that is the connection's answer (relay it opaque, or reset); later, or when the
         * answer is a deny, it gets a 403 and the connection is closed (its end is unknown).
         * Malformed or ambiguous heads get a 400 and a close. */
        struct fp_verdict nv;
        int nomatch = rc == FP_PEEK_NOT_THIS_PROTOCOL || rc == FP_PEEK_TOO_LARGE;
        if (nomatch)
            fp_table_decide_sni(c->table, (struct sockaddr *)&c->dst, "", 0, &nv);
        if (nomatch && c->state == FP_CS_PEEKING &&
            (rc == FP_PEEK_NOT_THIS_PROTOCOL || nv.action != FP_ACT_DENY || c->table->audit)) {
            act_default(c, now_ms, 1);
            return c->state == FP_CS_CLOSED ? STEP_GONE : STEP_MORE;
        }
        c->reason = FP_WHY_BAD_REQUEST;
        if (nomatch) {
            FP_ADD(w->st.http_denied, 1);
            inject(c, RESP_403_CLOSE, sizeof(RESP_403_CLOSE) - 1);
        } else {
            FP_ADD(w->st.http_bad, 1);
            inject(c, RESP_400, sizeof(RESP_400) - 1);
        }
        if (c->obs.req_open)
            fp_obs_request_done(c);
        fp_obs_request_refused(c, nomatch ? 403 : 400, FP_WHY_BAD_REQUEST);
        (void)shutdown(c->cfd, SHUT_RD);
        d->eof = 1;
        c->closing = 1;
        fp_buf_return(w, d);
        if (c->state == FP_CS_PEEKING) {
            FP_ADD(w->st.cx_http, 1);
            set_state(c, FP_CS_RELAY);
        }
        return STEP_MORE;
    }
    if (c->state == FP_CS_PEEKING) {
        FP_ADD(w->st.cx_http, 1);
        set_state(c, FP_CS_RELAY);
    }
    struct fp_verdict v;
    fp_table_decide_http(c->table, (struct sockaddr *)&c->dst, d->buf, &req, &v);
    int allowed = v.action == FP_ACT_ALLOW || v.action == FP_ACT_PASSTHROUGH;
    c->reason = (uint8_t)v.reason;
    if (!allowed && req.method == FP_HTTP_CONNECT && v.reason == FP_WHY_ROUTE) {
        /* the host is allowed but no route names CONNECT (the table never lets "any method"
         * open a tunnel) */
        FP_ADD(w->st.http_tunnel_denied, 1);
        c->reason = FP_WHY_TUNNEL;
    }
    int would_deny = !allowed && c->table->audit; /* audit mode: relayed, logged as such */
    fp_obs_request(c, d->buf, &req, &v, would_deny);
    allowed |= would_deny;
    if (consume(d, c->cfd, req.head_len, allowed) < 0) {
        conn_close(c, 1, 1);
        return STEP_GONE;
    }
    if (!allowed) {
        FP_ADD(w->st.http_denied, 1);
        fp_obs_request_refused(c, 403, c->reason ? c->reason : v.reason);
        inject(c, RESP_403, sizeof(RESP_403) - 1);
        if (!(req.flags & FP_HTTP_F_KEEPALIVE))
            c->closing = 1;
        d->discard = 1;
        start_body(c, 0, req.body, req.content_length);
        return STEP_MORE;
    }
    FP_ADD(w->st.http_allowed, 1);
    int rule = v.action == FP_ACT_ALLOW ? v.rule : -1;
    c->keepalive = (req.flags & FP_HTTP_F_KEEPALIVE) != 0;
    /* Only what the client asked for may turn the connection into a tunnel: a 2xx to this
     * (allowed) CONNECT, a 101 to a request carrying Upgrade with Connection: upgrade. Bytes
     * pipelined behind the request wait in the kernel (d[0] idles until the response). */
    c->resp_flags = (req.method == FP_HTTP_HEAD ? FP_HTTP_RESP_TO_HEAD : 0) |
                    (req.method == FP_HTTP_CONNECT ? FP_HTTP_RESP_TO_CONNECT : 0) |
                    (req.flags & FP_HTTP_F_UPGRADE ? FP_HTTP_RESP_TO_UPGRADE : 0);
    c->resp_done = 0;
    c->d[1].phase = FP_PH_HEAD;
    start_body(c, 0, req.body, req.content_length);
    if (c->ufd >= 0 && c->up_rule != rule) {
        /* another target: the idle upstream connection is not the one to use */
        close_upstream(c, 0);
    }
    if (c->ufd < 0) {
        int r = dial(c, rule, now_ms);
        return r < 0 ? STEP_GONE : r == 1 ? STEP_MORE : STEP_WAIT;
    }
    return STEP_MORE;
}

/* Peek what the server sent so far into d[1]'s buffer, for a response head or its first
 * handshake message. Returns the bytes peeked (> 0), or 0 with *step set: STEP_WAIT (nothing
 * new yet), STEP_GONE (the server closed before it said it all, or reset: the connection is
 * closed, a reset passed on as one). */
static ssize_t peek_upstream(struct fp_conn *c, int *step)
{
    ssize_t n = peek_into(c, &c->d[1], c->ufd);
    if (n > 0)
        return n;
    *step = STEP_GONE;
    if (n == -EAGAIN || n == -EINTR)
        *step = STEP_WAIT;
    else if (n == 0)
        conn_close(c, 0, 0);
    else {
        FP_ADD(c->w->st.cx_reset_by_upstream, 1);
        conn_close(c, 1, 1);
    }
    return 0;
}

/* d[1] in FP_PH_HEAD: peek a response head and forward it. */
static int response_head(struct fp_conn *c)
{
    struct fp_worker *w = c->w;
    struct fp_dir *d = &c->d[1];
    int step;
    ssize_t n = peek_upstream(c, &step);
    if (n == 0)
        return step;
    struct fp_http_resp resp;
    int rc = fp_peek_http_response(d->buf, (size_t)n, c->resp_flags, &resp);
    if (rc == FP_PEEK_NEED_MORE) {
        drained(c, c->ufd);
        return STEP_WAIT;
    }
    if (rc != FP_PEEK_OK) {
        FP_ADD(w->st.http_bad, 1);
        conn_close(c, 1, 1); /* cannot tell where the response ends: nothing safe to do */
        return STEP_GONE;
    }
    if (consume(d, c->ufd, resp.head_len, 1) < 0) {
        conn_close(c, 1, 1);
        return STEP_GONE;
    }
    if (resp.flags & FP_HTTP_F_INTERIM)
        return STEP_MORE; /* 100 Continue and friends: the final response follows */
    fp_obs_response(c, resp.status);
    if (!(resp.flags & FP_HTTP_F_KEEPALIVE))
        c->keepalive = 0;
    start_body(c, 1, resp.body, resp.content_length);
    return STEP_MORE;
}

/* d[1] in FP_PH_IDLE: an idle upstream may only close (then the next request dials again). */
static int upstream_idle(struct fp_conn *c)
{
    uint8_t b;
    if (!(c->urdy & FP_RDY_IN))
        return STEP_WAIT;
    ssize_t n = recv(c->ufd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        drained(c, c->ufd);
        return STEP_WAIT;
    }
    if (n == 0 || (n < 0 && errno == ECONNRESET)) {
        close_upstream(c, 0);
        return STEP_WAIT;
    }
    FP_ADD(c->w->st.http_bad, 1); /* bytes nobody asked for */
    conn_close(c, 1, 1);
    return STEP_GONE;
}

/* ---- TLS watch: every ClientHello checked --------------------------------------------------
 *
 * A connection allowed by the SNI of its ClientHello relays exactly that ClientHello, then
 * holds the client's further bytes until the server's first handshake message is classified.
 * A TLS 1.3 HelloRetryRequest means a second ClientHello follows (after optional
 * change_cipher_spec records): it is peeked and must name the same server (the same normalised
 * name: lower case, one trailing dot removed), or the connection is reset. Any other first
 * message (a ServerHello, an alert) ends the watch and the connection is opaque from there. */

/* Start watching a connection allowed by SNI `sni` of the ClientHello `h`. Returns 0 or -ENOMEM. */
static int tls_watch(struct fp_conn *c, const char *sni, const struct fp_tls_hello *h)
{
    c->sni = strndup(sni, h->sni_len);
    if (!c->sni)
        return -ENOMEM;
    c->d[0].phase = FP_PH_TLS_HELLO;
    c->d[0].remaining = h->hello_end;
    c->d[1].phase = FP_PH_TLS_SH;
    return 0;
}

static void tls_unwatch(struct fp_conn *c)
{
    free(c->sni);
    c->sni = NULL;
    for (int i = 0; i < 2; i++)
        c->d[i].phase = FP_PH_OPAQUE;
}

/* d[1] in FP_PH_TLS_SH: peek the server's first handshake message. */
static int server_hello_step(struct fp_conn *c)
{
    struct fp_worker *w = c->w;
    struct fp_dir *d = &c->d[1];
    int step;
    ssize_t n = peek_upstream(c, &step);
    if (n == 0)
        return step;
    struct fp_tls_server_hello sh;
    int rc = fp_peek_tls_server_hello(d->buf, (size_t)n, &sh);
    if (rc == FP_PEEK_NEED_MORE && (size_t)n < (size_t)w->e->o.copy_buf_size) {
        drained(c, c->ufd);
        return STEP_WAIT;
    }
    if (rc == FP_PEEK_FOUND && sh.hrr && c->d[0].phase == FP_PH_TLS_HOLD) {
        FP_ADD(w->st.tls_hrr, 1);
        c->d[0].phase = FP_PH_TLS_CH2;
        d->phase = FP_PH_OPAQUE; /* the HelloRetryRequest goes to the client */
        return STEP_MORE;
    }
    if ((rc == FP_PEEK_FOUND && !sh.hrr) || rc == FP_PEEK_NOT_THIS_PROTOCOL) {
        tls_unwatch(c);
        return STEP_MORE;
    }
    /* not a ServerHello, a flood of tiny records, or a retry request before the whole first
     * ClientHello was even sent: no server does that */
    c->reason = FP_WHY_BAD_REQUEST;
    struct fp_verdict dv = {.action = FP_ACT_DENY, .rule = -1, .reason = FP_WHY_BAD_REQUEST};
    fp_obs_decided(c, &dv, 0);
    c->obs.end = FP_END_DENIED;
    conn_close(c, 1, 1);
    return STEP_GONE;
}

/* d[0] in FP_PH_TLS_CH2: peek the second ClientHello and compare its SNI with the first. */
static int second_hello_step(struct fp_conn *c)
{
    struct fp_worker *w = c->w;
    struct fp_dir *d = &c->d[0];
    size_t cap = (size_t)w->e->o.copy_buf_size;
    ssize_t n = peek_into(c, d, c->cfd);
    if (n == -EAGAIN || n == -EINTR)
        return STEP_WAIT;
    if (n == 0) {
        d->eof = 1; /* the client gave up: nothing left to check */
        tls_unwatch(c);
        return STEP_MORE;
    }
    if (n < 0) {
        FP_ADD(w->st.cx_reset_by_client, 1);
        conn_close(c, 1, 1);
        return STEP_GONE;
    }
    ssize_t off = fp_peek_tls_skip_ccs(d->buf, (size_t)n);
    char sni[FP_PEEK_SNI_MAX + 2];
    struct fp_tls_hello h;
    int rc = off < 0 ? (int)off : (size_t)off == (size_t)n ? FP_PEEK_NEED_MORE
                     : fp_peek_tls_sni(d->buf + off, (size_t)n - (size_t)off, sni, sizeof(sni), &h);
    if (rc == FP_PEEK_NEED_MORE && (size_t)n < cap) {
        drained(c, c->cfd);
        return STEP_WAIT;
    }
    if (rc == FP_PEEK_FOUND && h.sni_len == strlen(c->sni) && memcmp(sni, c->sni, h.sni_len) == 0) {
        free(c->sni);
        c->sni = NULL;
        d->phase = FP_PH_OPAQUE;
        return STEP_MORE;
    }
    if (rc == FP_PEEK_FOUND) {
        FP_ADD(w->st.tls_sni_changed, 1);
        c->reason = FP_WHY_SNI;
    } else {
        c->reason = FP_WHY_BAD_REQUEST;
    }
    struct fp_verdict dv = {.action = FP_ACT_DENY, .rule = -1, .reason = c->reason};
    if (c->table->audit && rc == FP_PEEK_FOUND) { /* audit mode: the retried hello goes on */
        fp_obs_sni(c, sni, h.sni_len);
        fp_obs_decided(c, &dv, 1);
        free(c->sni);
        c->sni = NULL;
        d->phase = FP_PH_OPAQUE;
        return STEP_MORE;
    }
    FP_ADD(w->st.cx_denied, 1);
    fp_obs_decided(c, &dv, 0);
    c->obs.end = FP_END_DENIED;
    conn_close(c, 1, 1);
    return STEP_GONE;
}

/* ---- pumping --------------------------------------------------------------------------------*/

/* dst is full: while an opaque direction's pipe has room, keep reading into it (the next write
 * then moves more per syscall). The pipe is not empty here, so EAGAIN is read HAProxy's way:
 * the pipe is full (small segments use up its slots long before its bytes), or the socket is
 * empty; either way src is not read again until the pipe drains (pipe_full), so a slow reader
 * cannot make the worker retry splices with nothing to gain. Returns bytes read,
 * 0 (nothing to do, or EOF noted) or a negative errno other than EAGAIN. */
static ssize_t top_up(struct fp_conn *c, int dir, int src)
{
    struct fp_dir *d = &c->d[dir];
    if (d->phase != FP_PH_OPAQUE || d->pipe_r < 0 || d->eof || src < 0 ||
        d->in_pipe >= d->pipe_cap || d->pipe_full || !(*rdy(c, src) & FP_RDY_IN))
        return 0;
    ssize_t n = splice(src, NULL, d->pipe_w, NULL, d->pipe_cap - d->in_pipe,
                       SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
    if (n > 0) {
        d->in_pipe += (uint32_t)n;
        return n;
    }
    if (n == 0) {
        d->eof = 1;
        return 0;
    }
    if (errno == EAGAIN && d->in_pipe > 0)
        d->pipe_full = 1;
    return errno == EAGAIN || errno == EINTR ? 0 : -errno;
}

/* Outcome of pumping one direction. */
enum { PUMP_OK = 0, PUMP_SRC_RESET = 1, PUMP_DST_RESET = 2, PUMP_GONE = 3 };

/* Move bytes src -> dst until src is empty, dst is full, or the budget is spent. */
static int pump(struct fp_conn *c, int dir, uint64_t now_ms)
{
    struct fp_worker *w = c->w;
    struct fp_dir *d = &c->d[dir];
    uint64_t *bytes = dir == 0 ? &w->st.bytes_c2u : &w->st.bytes_u2c;

    for (int budget = PUMP_BUDGET; budget > 0; budget--) {
        int src = dir == 0 ? c->cfd : c->ufd;
        int dst = dir == 0 ? c->ufd : c->cfd;
        if (d->shut)
            return PUMP_OK;
        if (pending(c, dir)) {
            if (dst < 0)
                return PUMP_OK;
            ssize_t n = flush_dir(c, dir, dst);
            if (n < 0) {
                if (n == -EAGAIN || n == -EINTR)
                    return top_up(c, dir, src) < 0 ? PUMP_SRC_RESET : PUMP_OK;
                return PUMP_DST_RESET;
            }
            if (n > 0) {
                FP_ADD(*bytes, (uint64_t)n);
                fp_obs_bytes(c, dir, (uint64_t)n);
                c->last_ms = now_ms;
            }
            if (pending(c, dir))
                continue; /* partial: write again until EAGAIN, which an edge-triggered
                           * registration needs before it reports EPOLLOUT again */
        }
        /* nothing pending: an idle direction holds no pipe and no buffer */
        fp_pipe_return(w, d);
        fp_buf_return(w, d);
        if (dir == 1 && c->closing && c->resp_done) {
            conn_close(c, 0, 0); /* the last response is delivered */
            return PUMP_GONE;
        }
        if (d->eof) {
            /* pass the FIN on; when the other direction is finished too, the close that
             * follows sends it */
            if (dst >= 0 && !c->d[!dir].shut)
                (void)shutdown(dst, SHUT_WR);
            d->shut = 1;
            if (c->http && dir == 1) {
                conn_close(c, 0, 0); /* the response ran until the server closed */
                return PUMP_GONE;
            }
            return PUMP_OK;
        }
        if (!may_read(c, dir))
            return PUMP_OK; /* what arrives meanwhile is kept in the readiness bits */
        ssize_t n;
        switch (d->phase) {
        case FP_PH_HEAD:
        case FP_PH_TLS_SH:
        case FP_PH_TLS_CH2: {
            int r = d->phase == FP_PH_TLS_SH    ? server_hello_step(c)
                    : d->phase == FP_PH_TLS_CH2 ? second_hello_step(c)
                    : dir == 0                  ? request_head(c, now_ms)
                                                : response_head(c);
            if (r == STEP_GONE)
                return PUMP_GONE;
            if (r == STEP_WAIT) {
                if (!pending(c, dir))
                    fp_buf_return(w, d); /* a connection waiting for a head holds no buffer */
                return PUMP_OK;
            }
            continue;
        }
        case FP_PH_IDLE:
            if (dir == 1 && upstream_idle(c) == STEP_GONE)
                return PUMP_GONE;
            return PUMP_OK;
        case FP_PH_LENGTH:
        case FP_PH_TLS_HELLO:
            n = fill_dir(c, d, src, d->remaining, d->discard);
            if (n > 0) {
                d->remaining -= (uint64_t)n;
                if (d->discard)
                    d->buf_len = 0;
                if (d->remaining == 0 && d->phase == FP_PH_TLS_HELLO)
                    d->phase = FP_PH_TLS_HOLD; /* the checked ClientHello is out: wait */
                else if (d->remaining == 0)
                    message_done(c, dir);
            }
            break;
        case FP_PH_CHUNKED: {
            n = peek_into(c, d, src);
            if (n > 0) {
                ssize_t k = fp_chunked_feed(&d->ch, d->buf, (size_t)n);
                if (k < 0) {
                    FP_ADD(w->st.http_bad, 1);
                    conn_close(c, 1, 1);
                    return PUMP_GONE;
                }
                if (consume(d, src, (size_t)k, !d->discard) < 0)
                    return PUMP_SRC_RESET;
                if (d->ch.done)
                    message_done(c, dir);
                n = k ? k : 1; /* a finished body with nothing left to take is still progress */
            }
            break;
        }
        default:
            n = fill_dir(c, d, src, UINT64_MAX, 0);
            break;
        }
        if (n > 0 && d->eof && c->http && dir == 0)
            c->closing = 1; /* the bytes read end with the client's FIN */
        if (n > 0) {
            c->last_ms = now_ms;
            continue;
        }
        if (n == 0) {
            d->eof = 1;
            if (c->http && dir == 0)
                c->closing = 1;
            budget++; /* the FIN is passed on in the next round, whatever the budget */
            continue;
        }
        if (n == -EAGAIN || n == -EINTR) {
            fp_pipe_return(w, d);
            fp_buf_return(w, d);
            return PUMP_OK;
        }
        return PUMP_SRC_RESET;
    }
    /* Budget spent with work left: no new edge would report the bytes already there */
    queue_again(c);
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
    c->obs.end = from_upstream ? FP_END_RESET_UPSTREAM : FP_END_RESET_CLIENT;
    conn_close(c, 1, 1);
}

/* What one direction's progress may change for the other: relay() runs another round while a
 * round changed it. */
struct progress {
    uint32_t pending[2];
    uint8_t phase[2], eof[2], shut[2];
    uint8_t state, closing, resp_done, has_up;
};

static void progress_of(const struct fp_conn *c, struct progress *p)
{
    memset(p, 0, sizeof(*p));
    for (int i = 0; i < 2; i++) {
        p->pending[i] = pending(c, i);
        p->phase[i] = c->d[i].phase;
        p->eof[i] = c->d[i].eof;
        p->shut[i] = c->d[i].shut;
    }
    p->state = c->state;
    p->closing = c->closing;
    p->resp_done = c->resp_done;
    p->has_up = c->ufd >= 0;
}

#define RELAY_ROUNDS 4

/* Pump the directions in `dirs` (bits), then both, round after round while a round changed
 * what the other direction may be waiting for (a response finished, a ServerHello classified,
 * a FIN); every read and write is gated by the sockets' readiness, so a round with nothing to
 * do costs no syscall. */
static void relay(struct fp_conn *c, int dirs, uint64_t now_ms)
{
    struct progress before, after;
    progress_of(c, &before);
    for (int round = 0;; round++) {
        for (int dir = 0; dir < 2; dir++) {
            if (!(dirs & (1 << dir)) || c->state == FP_CS_CLOSED)
                continue;
            int r = pump(c, dir, now_ms);
            if (r == PUMP_GONE)
                return;
            if (r != PUMP_OK) {
                /* dir 0 reads the client and writes the upstream; dir 1 the other way round */
                int upstream_side = (dir == 0) == (r == PUMP_DST_RESET);
                conn_reset_from(c, upstream_side);
                return;
            }
        }
        if (c->state == FP_CS_CLOSED)
            return;
        if (c->queued)
            break; /* a budget was spent: the rest waits its turn on the `again` list */
        progress_of(c, &after);
        if (memcmp(&before, &after, sizeof(before)) == 0)
            break;
        if (round + 1 == RELAY_ROUNDS) {
            queue_again(c); /* still moving: go on after the other connections' events */
            break;
        }
        before = after;
        dirs = c->state == FP_CS_RELAY ? 3 : dirs;
    }
    if (c->d[0].shut && c->d[1].shut)
        conn_close(c, 0, 0);
}

/* ---- peeking ------------------------------------------------------------------------------- */

/* FP_CS_PEEKING: look at the first bytes for what the decision needs. */
static void peek_step(struct fp_conn *c, uint64_t now_ms)
{
    struct fp_worker *w = c->w;
    struct fp_dir *d = &c->d[0];
    if (c->http) {
        relay(c, 1, now_ms);
        return;
    }
    ssize_t n = peek_into(c, d, c->cfd);
    if (n == -EAGAIN || n == -EINTR) {
        fp_buf_return(w, d);
        return;
    }
    if (n <= 0) {
        conn_close(c, n < 0, 0); /* left (or reset) before saying anything */
        return;
    }
    if (c->peek == FP_ACT_PEEK_HTTP || (c->peek == FP_ACT_PEEK_ANY && d->buf[0] != 0x16)) {
        c->http = 1;
        c->d[0].phase = FP_PH_HEAD;
        c->d[1].phase = FP_PH_IDLE;
        c->resp_done = 1;
        c->keepalive = 1;
        relay(c, 1, now_ms);
        return;
    }
    char sni[FP_PEEK_SNI_MAX + 2];
    struct fp_tls_hello hello;
    int rc = fp_peek_tls_sni(d->buf, (size_t)n, sni, sizeof(sni), &hello);
    if (rc == FP_PEEK_NEED_MORE && (size_t)n < (size_t)w->e->o.copy_buf_size) {
        fp_buf_return(w, d); /* peeked again in full when more bytes come */
        drained(c, c->cfd);
        return;
    }
    struct fp_verdict v;
    fp_obs_sni(c, sni, rc == FP_PEEK_FOUND ? hello.sni_len : 0);
    fp_table_decide_sni(c->table, (struct sockaddr *)&c->dst, sni,
                        rc == FP_PEEK_FOUND ? hello.sni_len : 0, &v);
    if (rc != FP_PEEK_FOUND && rc != FP_PEEK_NOT_THIS_PROTOCOL)
        c->reason = FP_WHY_BAD_REQUEST; /* malformed or over the cap */
    if (v.action == FP_ACT_ALLOW && rc == FP_PEEK_FOUND && tls_watch(c, sni, &hello) < 0) {
        conn_close(c, 1, 0);
        return;
    }
    act(c, &v, now_ms, 0);
}

/* ---- entry points -------------------------------------------------------------------------- */

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

/* Read the original destination of a connection accepted on a listener of `family`. Returns 0
 * or a negative errno (-ENOENT: not redirected; -ELOOP: it points at our own listener, e.g. a
 * client that connected to the outbound port directly). */
static int original_dst(int cfd, int family, uint16_t our_port, struct sockaddr_storage *dst,
                        socklen_t *dlen)
{
    *dlen = sizeof(*dst);
    memset(dst, 0, sizeof(*dst));
    int r;
    if (family == AF_INET6)
        r = getsockopt(cfd, SOL_IPV6, IP6T_SO_ORIGINAL_DST, dst, dlen);
    else
        r = getsockopt(cfd, SOL_IP, SO_ORIGINAL_DST, dst, dlen);
    if (r < 0)
        return -errno;
    uint16_t port = dst->ss_family == AF_INET6 ? ((struct sockaddr_in6 *)dst)->sin6_port
                                               : ((struct sockaddr_in *)dst)->sin_port;
    if (ntohs(port) == our_port) { /* only then can it be ourselves: compare the address */
        struct sockaddr_storage local;
        socklen_t llen = sizeof(local);
        if (getsockname(cfd, (struct sockaddr *)&local, &llen) < 0)
            return -errno;
        if (same_addr(dst, &local))
            return -ELOOP;
    }
    *dlen = dst->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    return 0;
}

/* Contract: takes ownership of an accepted, non-blocking client socket: decides it from the
 * current table and resets it (deny, no original destination, out of memory), starts peeking at
 * its first bytes (host rules on its port), or starts dialling. `peer`: the client's address
 * (for the access log; may be NULL). Never blocks. */
void fp_conn_accepted(struct fp_worker *w, int cfd, int family, const struct sockaddr_storage *peer,
                      uint64_t now_ms)
{
    FP_ADD(w->st.cx_accepted, 1);
    FP_DBG_ADD(w->st.debug_live_fds, 1);

    struct fp_conn *c = calloc(1, sizeof(*c));
    if (!c) {
        close_sock(w, cfd, 1);
        FP_ADD(w->st.cx_closed, 1);
        return;
    }
    FP_DBG_ADD(w->st.debug_live_conns, 1);
    c->w = w;
    c->cfd = cfd;
    c->ufd = -1;
    c->rule = -1;
    c->up_rule = -2;
    c->table = fp_table_acquire(w->e);
    c->last_ms = now_ms;
    fp_obs_conn_start(c, peer);
    c->obs.end = 255;
    for (int i = 0; i < 2; i++)
        c->d[i].pipe_r = c->d[i].pipe_w = -1;
    c->crdy = FP_RDY_IN | FP_RDY_OUT; /* a fresh socket: try before waiting for its edges */
    set_state(c, FP_CS_PEEKING);
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    FP_ADD(w->st.cx_active, 1);

    if (original_dst(cfd, family, w->e->o.port, &c->dst, &c->dlen) < 0) {
        FP_ADD(w->st.cx_no_original_dst, 1);
        conn_close(c, 1, 0);
        return;
    }
    /* TCP_NODELAY: inherited from the listener */

    struct fp_verdict v;
    fp_table_decide(c->table, (struct sockaddr *)&c->dst, &v);
    if (v.action >= FP_ACT_PEEK_TLS) {
        c->peek = (uint8_t)v.action;
        c->peek_deadline_ms = now_ms + (uint64_t)c->table->peek_ms;
        peek_step(c, now_ms);
    } else {
        act(c, &v, now_ms, 0);
    }
    sync_interest(c);
}

static void conn_event(struct fp_conn *c, int is_upstream, uint32_t events, uint64_t now_ms)
{
    switch (c->state) {
    case FP_CS_CLOSED:
        return;
    case FP_CS_PEEKING:
        if (!is_upstream && (c->crdy & FP_RDY_IN))
            peek_step(c, now_ms);
        return;
    case FP_CS_CONNECTING:
        if (!is_upstream) {
            relay(c, 2, now_ms); /* only a pending 403 can move while dialling */
            return;
        }
        if (events & (EPOLLERR | EPOLLHUP)) {
            int err = 0;
            socklen_t len = sizeof(err);
            if (getsockopt(c->ufd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
                err = errno;
            connect_failed(c, err ? err : ECONNREFUSED);
            return;
        }
        if (!(events & EPOLLOUT))
            return;
        mark_connected(c, now_ms);
        /* the client's first bytes are likely there; the server may have spoken already (its
         * edge came with this one) */
        relay(c, 3, now_ms);
        return;
    }
    relay(c, 3, now_ms); /* both directions: each read and write is gated by readiness */
}

/* Contract: handles epoll `events` on the client (is_upstream = 0) or upstream socket of `c`;
 * `gen` is the generation the event was registered with (an upstream socket's events are
 * dropped once it was replaced). Sockets new since are added to the epoll set on the way out. */
void fp_conn_event(struct fp_conn *c, int is_upstream, unsigned gen, uint32_t events,
                   uint64_t now_ms)
{
    if (is_upstream && (gen & 0xffffu) != (c->ugen & 0xffffu))
        return; /* queued for an upstream socket closed earlier in this batch */
    if (c->state == FP_CS_CLOSED)
        return;
    uint8_t r = 0;
    if (events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        r |= FP_RDY_IN; /* an error or a hang-up is found by the next read or write */
    if (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))
        r |= FP_RDY_OUT;
    if (events & EPOLLRDHUP)
        r |= FP_RDY_IN | FP_RDY_HUP;
    if (is_upstream)
        c->urdy |= r;
    else
        c->crdy |= r;
    conn_event(c, is_upstream, events, now_ms);
    sync_interest(c);
}

/* Contract: runs the connections that stopped with work left (a spent budget), before the
 * worker waits again. */
void fp_conn_run_again(struct fp_worker *w, uint64_t now_ms)
{
    struct fp_conn *list = w->again;
    w->again = NULL;
    while (list) {
        struct fp_conn *c = list;
        list = c->again_next;
        c->queued = 0;
        if (c->state == FP_CS_RELAY)
            relay(c, 3, now_ms);
        else if (c->state == FP_CS_PEEKING && c->http)
            relay(c, 1, now_ms);
        sync_interest(c);
    }
}

/* Contract: acts on connections whose deadline has passed: a peek that got no answer in time is
 * decided without it (the table's default); a connect past its timeout resets the client; an
 * idle connection is closed with resets (the peers may still believe it alive). */
void fp_conn_check_timeouts(struct fp_worker *w, uint64_t now_ms)
{
    struct fp_conn *c = w->conns;
    while (c) {
        struct fp_conn *next = c->next;
        const fp_table *t = c->table;
        if (c->state == FP_CS_PEEKING) {
            if (now_ms >= c->peek_deadline_ms) {
                FP_ADD(w->st.cx_peek_timeout, 1);
                c->reason = FP_WHY_PEEK_TIMEOUT;
                act_default(c, now_ms, 0);
                sync_interest(c);
            }
        } else if (c->state == FP_CS_CONNECTING) {
            if (c->connect_ms && now_ms - c->dial_ms >= (uint64_t)c->connect_ms)
                connect_failed(c, ETIMEDOUT);
        } else if (c->state == FP_CS_RELAY) {
            if (t->idle_ms && now_ms - c->last_ms >= (uint64_t)t->idle_ms) {
                FP_ADD(w->st.cx_idle_timeout, 1);
                c->obs.end = FP_END_IDLE_TIMEOUT;
                conn_close(c, 1, 1);
            }
        }
        c = next;
    }
}

/* Contract: resets every open connection of the worker (shutdown past the drain deadline). */
void fp_conn_reset_all(struct fp_worker *w)
{
    while (w->conns) {
        w->conns->obs.end = FP_END_DRAIN;
        conn_close(w->conns, 1, 1);
    }
}
