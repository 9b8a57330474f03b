/* fpload: the load generators and servers of the fastproxy benchmark suite.
 *
 * One small, dependency-free C program (compiled by the runner with `cc -O2`) so that the tools
 * that measure the proxies cost little CPU themselves and add no interpreter jitter to latency.
 *
 *   fpload serve --bind IP [--http PORT] [--tls PORT] [--hold PORT] [--threads N]
 *       HTTP/1.1 server: keep-alive, pipelining, `Connection: close`, request bodies by
 *       Content-Length (discarded; the response body is the number of body bytes received).
 *       --tls: the same, after skipping the first TLS record of each connection (a ClientHello the
 *       client sends first) and answering it with one ServerHello record (SERVER_HELLO: what a
 *       proxy that checks the server's first handshake message waits for; clients skip it;
 *       client sends so that an SNI policy in the proxy can decide; the proxy relays the rest).
 *       --hold: writes one byte on accept, then discards input until the peer closes.
 *       Every thread has its own epoll loop and its own SO_REUSEPORT listeners.
 *   fpload rate --dst IP:PORT --rate R --conns C --secs S [--warmup W] [--host H]
 *       Fixed-rate HTTP GETs over C keep-alive connections (request i is due at t0 + i/R on
 *       connection i mod C). Latency is taken from the time a request was DUE, not sent, so a
 *       stalled proxy cannot hide its stall by slowing the generator (no coordinated omission).
 *       Prints JSON: percentiles in microseconds, counts and errors.
 *   fpload hold --dst IP:PORT --conns N [--timeout S]
 *       Opens N connections, waits for the server's first byte on each (so the proxy's upstream
 *       leg is established too), prints "ready <ok> <failed>", holds them until a line or EOF
 *       arrives on stdin, closes them and prints JSON.
 *   fpload bulk --dst IP:PORT --secs S [--req-bytes B] [--host H] [--prefix-file F]
 *       One connection; sends the prefix file (a TLS ClientHello) once, then POSTs of B bytes
 *       back to back until S seconds are over, each waiting for its response (so every byte was
 *       received by the server). Prints JSON with the bytes moved and the time taken.
 *   fpload connrate --dst IP:PORT --secs S --conns C [--host H] [--prefix-file F]
 *       New connections per second: C connections at a time, each sending the prefix (a
 *       ClientHello) and one `Connection: close` GET, reading the response to EOF, then closing
 *       and starting over. Counts responses that were `200`. (wrk cannot send a binary prefix:
 *       it insists that every request parses as HTTP.)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define HEAD_MAX 8192
#define SERVER_HELLO_LEN 43 /* the --tls server's answer to a ClientHello (see SERVER_HELLO) */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "fpload: %s: %s\n", what, strerror(errno));
    exit(2);
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static int parse_dst(const char *s, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host)
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)atoi(colon + 1));
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

/* Finds "\r\n\r\n" in buf[0..len); returns the length of the head including it, or 0. */
static size_t head_len(const char *buf, size_t len)
{
    for (size_t i = 3; i < len; i++)
        if (buf[i] == '\n' && buf[i - 1] == '\r' && buf[i - 2] == '\n' && buf[i - 3] == '\r')
            return i + 1;
    return 0;
}

/* Case-insensitive search for header `name` ("content-length") in a head; returns a pointer to
 * its value or NULL. */
static const char *find_header(const char *head, size_t len, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i + n + 1 < len; i++) {
        if ((i == 0 || head[i - 1] == '\n') && strncasecmp(head + i, name, n) == 0 &&
            head[i + n] == ':') {
            const char *v = head + i + n + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            return v;
        }
    }
    return NULL;
}

/* ---- server ------------------------------------------------------------------------------- */

enum kind { K_LISTEN_HTTP, K_LISTEN_TLS, K_LISTEN_HOLD, K_HTTP, K_HOLD };

struct sconn {
    int fd;
    int kind;
    int tls_skip;          /* TLS record bytes still to skip (-1: header not read yet) */
    uint8_t tls_hdr[5];
    int tls_hdr_len;
    size_t inlen;          /* bytes of an incomplete head in in[] */
    uint64_t body_left;    /* body bytes still to discard for the current request */
    uint64_t body_total;
    int close_after;       /* the current request asked for Connection: close */
    char *out;             /* pending output (response not yet fully written) */
    size_t outlen, outoff;
    char in[HEAD_MAX];
};

struct listener {
    int fd;
    int kind;
};

static const char *g_bind = "0.0.0.0";
static int g_http_port, g_tls_port, g_hold_port;

static int make_listener(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (inet_pton(AF_INET, g_bind, &sa.sin_addr) != 1)
        die("bad --bind");
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0)
        die("bind");
    if (listen(fd, 65535) < 0)
        die("listen");
    return fd;
}

static void sconn_close(int ep, struct sconn *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->out);
    free(c);
}

/* Queues `data` for writing on c (writes what the socket takes now). Returns -1 on error. */
static int sconn_send(int ep, struct sconn *c, const char *data, size_t len)
{
    if (c->outlen == c->outoff) {
        ssize_t w = send(c->fd, data, len, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN)
            return -1;
        if (w < 0)
            w = 0;
        data += w;
        len -= (size_t)w;
        if (len == 0)
            return 0;
    }
    size_t pend = c->outlen - c->outoff;
    char *n = malloc(pend + len);
    if (!n)
        return -1;
    memcpy(n, c->out + c->outoff, pend);
    memcpy(n + pend, data, len);
    free(c->out);
    c->out = n;
    c->outlen = pend + len;
    c->outoff = 0;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
    return 0;
}

static int respond(int ep, struct sconn *c)
{
    char resp[160], body[32];
    int blen = c->body_total ? snprintf(body, sizeof body, "%llu", (unsigned long long)c->body_total)
                             : snprintf(body, sizeof body, "ok");
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s", blen,
                     c->close_after ? "Connection: close\r\n" : "", body);
    c->body_total = 0;
    return sconn_send(ep, c, resp, (size_t)n);
}

/* The --tls server's answer to the client's ClientHello record: a TLS 1.2 record holding a
 * minimal ServerHello (type 2, version, a random that is not TLS 1.3's HelloRetryRequest). */
static const char SERVER_HELLO[SERVER_HELLO_LEN] = {
    0x16, 0x03, 0x03, 0x00, 0x26, 0x02, 0x00, 0x00, 0x22, 0x03, 0x03,
    'f', 'p', 'l', 'o', 'a', 'd', ' ', 's', 'e', 'r', 'v', 'e', 'r', ' ', 'h', 'e',
    'l', 'l', 'o', ' ', 'r', 'a', 'n', 'd', 'o', 'm', ' ', 'b', 'y', 't', 'e', 's'};

/* Consumes input bytes of an HTTP (or TLS-prefixed HTTP) connection. Returns 1 to close. */
static int http_input(int ep, struct sconn *c, const char *p, size_t n)
{
    while (n > 0) {
        if (c->tls_skip != 0) {
            if (c->tls_skip < 0) {
                while (n > 0 && c->tls_hdr_len < 5) {
                    c->tls_hdr[c->tls_hdr_len++] = (uint8_t)*p++;
                    n--;
                }
                if (c->tls_hdr_len < 5)
                    return 0;
                c->tls_skip = (c->tls_hdr[3] << 8) | c->tls_hdr[4];
                if (c->tls_skip == 0)
                    continue;
            }
            size_t k = n < (size_t)c->tls_skip ? n : (size_t)c->tls_skip;
            c->tls_skip -= (int)k;
            p += k;
            n -= k;
            if (c->tls_skip == 0 && sconn_send(ep, c, SERVER_HELLO, sizeof SERVER_HELLO) < 0)
                return 1;
            continue;
        }
        if (c->body_left > 0) {
            size_t k = n < c->body_left ? n : (size_t)c->body_left;
            c->body_left -= k;
            c->body_total += k;
            p += k;
            n -= k;
            if (c->body_left == 0) {
                if (respond(ep, c) < 0)
                    return 1;
                if (c->close_after)
                    return 2;
            }
            continue;
        }
        size_t room = sizeof c->in - c->inlen;
        size_t k = n < room ? n : room;
        memcpy(c->in + c->inlen, p, k);
        size_t old = c->inlen;
        c->inlen += k;
        size_t hl = head_len(c->in, c->inlen);
        if (!hl) {
            if (c->inlen == sizeof c->in)
                return 1; /* head too large */
            return 0;
        }
        /* the head ends inside this chunk: consume only up to its end */
        size_t used = hl - old;
        p += used;
        n -= used;
        const char *cl = find_header(c->in, hl, "content-length");
        const char *cn = find_header(c->in, hl, "connection");
        c->close_after = cn && strncasecmp(cn, "close", 5) == 0;
        c->body_left = cl ? strtoull(cl, NULL, 10) : 0;
        c->body_total = 0;
        c->inlen = 0;
        if (c->body_left == 0 && respond(ep, c) < 0)
            return 1;
        if (c->close_after && c->body_left == 0)
            return 2;
    }
    return 0;
}

static void *serve_thread(void *arg)
{
    (void)arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct listener ls[3];
    int nls = 0;
    if (g_http_port)
        ls[nls++] = (struct listener){make_listener(g_http_port), K_LISTEN_HTTP};
    if (g_tls_port)
        ls[nls++] = (struct listener){make_listener(g_tls_port), K_LISTEN_TLS};
    if (g_hold_port)
        ls[nls++] = (struct listener){make_listener(g_hold_port), K_LISTEN_HOLD};
    for (int i = 0; i < nls; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &ls[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, ls[i].fd, &ev);
    }
    static __thread char scratch[262144];
    struct epoll_event evs[256];
    for (;;) {
        int ne = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < ne; i++) {
            struct listener *l = evs[i].data.ptr;
            if (l >= ls && l < ls + nls) {
                for (;;) {
                    int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0)
                        break;
                    struct sconn *c = calloc(1, sizeof *c);
                    if (!c) {
                        close(fd);
                        continue;
                    }
                    int one = 1;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    c->fd = fd;
                    c->kind = l->kind == K_LISTEN_HOLD ? K_HOLD : K_HTTP;
                    c->tls_skip = l->kind == K_LISTEN_TLS ? -1 : 0;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                    if (c->kind == K_HOLD && send(fd, "h", 1, MSG_NOSIGNAL) != 1) {
                        sconn_close(ep, c);
                    }
                }
                continue;
            }
            struct sconn *c = evs[i].data.ptr;
            int done = 0;
            if (evs[i].events & EPOLLOUT) {
                while (c->outoff < c->outlen) {
                    ssize_t w = send(c->fd, c->out + c->outoff, c->outlen - c->outoff,
                                     MSG_NOSIGNAL);
                    if (w < 0) {
                        if (errno != EAGAIN)
                            done = 1;
                        break;
                    }
                    c->outoff += (size_t)w;
                }
                if (!done && c->outoff == c->outlen) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                    if (c->close_after)
                        done = 1;
                }
            }
            if (!done && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) {
                for (int rounds = 0; rounds < 16 && !done; rounds++) {
                    ssize_t r = recv(c->fd, scratch, sizeof scratch, 0);
                    if (r == 0) {
                        done = 1;
                    } else if (r < 0) {
                        if (errno != EAGAIN)
                            done = 1;
                        break;
                    } else if (c->kind == K_HTTP) {
                        int rc = http_input(ep, c, scratch, (size_t)r);
                        if (rc == 1 || (rc == 2 && c->outoff == c->outlen))
                            done = 1;
                    }
                    if (r < (ssize_t)sizeof scratch)
                        break;
                }
            }
            if (done)
                sconn_close(ep, c);
        }
    }
    return NULL;
}

static int cmd_serve(int nthreads)
{
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    pthread_t th[64];
    if (nthreads < 1 || nthreads > 64)
        nthreads = 1;
    for (int i = 1; i < nthreads; i++)
        pthread_create(&th[i], NULL, serve_thread, NULL);
    serve_thread(NULL);
    return 0;
}

/* ---- clients ------------------------------------------------------------------------------ */

static int connect_blocking(const struct sockaddr_in *sa)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (const struct sockaddr *)sa, sizeof *sa) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

struct rconn {
    int fd;
    int busy;
    uint64_t sent_due;     /* due time of the request in flight */
    uint64_t *queue;       /* due times of requests waiting for this connection */
    size_t qhead, qtail, qcap;
    size_t inlen;
    char in[HEAD_MAX];
};

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(const uint64_t *v, size_t n, double p)
{
    if (n == 0)
        return -1;
    size_t i = (size_t)(p / 100.0 * (double)(n - 1) + 0.5);
    return (double)v[i] / 1000.0;
}

static int cmd_rate(const struct sockaddr_in *dst, double rate, int nconns, double secs,
                    double warmup, const char *host)
{
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    char req[256];
    int reqlen = snprintf(req, sizeof req, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", host);
    struct rconn *cs = calloc((size_t)nconns, sizeof *cs);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    uint64_t tc = now_ns();
    for (int i = 0; i < nconns; i++) {
        cs[i].fd = connect_blocking(dst);
        if (cs[i].fd < 0) {
            fprintf(stdout, "{\"error\": \"connect %d: %s\"}\n", i, strerror(errno));
            return 1;
        }
        set_nonblock(cs[i].fd);
        cs[i].qcap = 1024;
        cs[i].queue = malloc(cs[i].qcap * sizeof(uint64_t));
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        epoll_ctl(ep, EPOLL_CTL_ADD, cs[i].fd, &ev);
    }
    double connect_secs = (double)(now_ns() - tc) / 1e9;
    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    struct epoll_event tev = {.events = EPOLLIN, .data.u32 = 0xffffffffu};
    epoll_ctl(ep, EPOLL_CTL_ADD, tfd, &tev);

    uint64_t interval = (uint64_t)(1e9 / rate);
    uint64_t t0 = now_ns() + 1000000; /* first request 1 ms from now */
    uint64_t t_rec = t0 + (uint64_t)(warmup * 1e9);
    uint64_t t_end = t_rec + (uint64_t)(secs * 1e9);
    uint64_t total = (t_end - t0) / interval;
    uint64_t *lat = malloc((size_t)(total + 1) * sizeof(uint64_t));
    size_t nlat = 0;
    uint64_t next_i = 0, completed = 0, errors = 0, late_sends = 0;
    int outstanding = 0;
    uint64_t deadline = t_end + 2000000000ull; /* wait at most 2 s for stragglers */

    for (;;) {
        uint64_t now = now_ns();
        /* hand every due request to its connection */
        while (next_i < total && t0 + next_i * interval <= now) {
            uint64_t due = t0 + next_i * interval;
            struct rconn *c = &cs[next_i % (uint64_t)nconns];
            next_i++;
            outstanding++;
            if (!c->busy) {
                if (send(c->fd, req, (size_t)reqlen, MSG_NOSIGNAL) != reqlen) {
                    errors++;
                    outstanding--;
                    continue;
                }
                c->busy = 1;
                c->sent_due = due;
            } else {
                if (c->qtail - c->qhead == c->qcap) { /* hopelessly behind: count as error */
                    errors++;
                    outstanding--;
                    continue;
                }
                c->queue[c->qtail++ % c->qcap] = due;
                late_sends++;
            }
        }
        if (next_i >= total && outstanding == 0)
            break;
        if (now > deadline)
            break;
        struct itimerspec its = {0};
        uint64_t wake = next_i < total ? t0 + next_i * interval : deadline;
        its.it_value.tv_sec = (time_t)(wake / 1000000000ull);
        its.it_value.tv_nsec = (long)(wake % 1000000000ull);
        timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
        struct epoll_event evs[128];
        int ne = epoll_wait(ep, evs, 128, 100);
        for (int k = 0; k < ne; k++) {
            if (evs[k].data.u32 == 0xffffffffu) {
                uint64_t x;
                if (read(tfd, &x, sizeof x) < 0) { /* nothing: just a wake-up */ }
                continue;
            }
            struct rconn *c = &cs[evs[k].data.u32];
            ssize_t r = recv(c->fd, c->in + c->inlen, sizeof c->in - c->inlen, 0);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN)
                    continue;
                fprintf(stdout, "{\"error\": \"connection closed by peer\"}\n");
                return 1;
            }
            c->inlen += (size_t)r;
            for (;;) {
                size_t hl = head_len(c->in, c->inlen);
                if (!hl)
                    break;
                const char *cl = find_header(c->in, hl, "content-length");
                size_t blen = cl ? (size_t)strtoul(cl, NULL, 10) : 0;
                if (c->inlen < hl + blen)
                    break;
                uint64_t t = now_ns();
                if (!c->busy) {
                    errors++;
                } else {
                    outstanding--;
                    completed++;
                    if (c->sent_due >= t_rec && c->sent_due < t_end)
                        lat[nlat++] = t - c->sent_due;
                    c->busy = 0;
                }
                memmove(c->in, c->in + hl + blen, c->inlen - hl - blen);
                c->inlen -= hl + blen;
                if (c->qhead != c->qtail) {
                    uint64_t due = c->queue[c->qhead++ % c->qcap];
                    if (send(c->fd, req, (size_t)reqlen, MSG_NOSIGNAL) == reqlen) {
                        c->busy = 1;
                        c->sent_due = due;
                    } else {
                        errors++;
                        outstanding--;
                    }
                }
            }
        }
    }
    qsort(lat, nlat, sizeof *lat, cmp_u64);
    double sum = 0;
    for (size_t i = 0; i < nlat; i++)
        sum += (double)lat[i];
    printf("{\"rate\": %.1f, \"conns\": %d, \"secs\": %.3f, \"connect_secs\": %.3f, "
           "\"requests\": %llu, \"completed\": %llu, \"recorded\": %zu, \"lost\": %d, "
           "\"errors\": %llu, \"queued\": %llu, \"mean_us\": %.1f, \"p50_us\": %.1f, "
           "\"p90_us\": %.1f, \"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f}\n",
           rate, nconns, secs, connect_secs, (unsigned long long)total,
           (unsigned long long)completed, nlat, outstanding, (unsigned long long)errors,
           (unsigned long long)late_sends, nlat ? sum / (double)nlat / 1000.0 : -1.0,
           pct(lat, nlat, 50), pct(lat, nlat, 90), pct(lat, nlat, 99), pct(lat, nlat, 99.9),
           nlat ? (double)lat[nlat - 1] / 1000.0 : -1.0);
    return outstanding == 0 && errors == 0 ? 0 : 1;
}

static int cmd_hold(const struct sockaddr_in *dst, int n, double timeout)
{
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    int *fds = malloc((size_t)n * sizeof(int));
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int opened = 0, ready = 0, failed = 0, inflight = 0;
    const int window = 256; /* connections not yet confirmed, at most: keeps SYN backlogs sane */
    uint64_t t0 = now_ns(), tend = t0 + (uint64_t)(timeout * 1e9);
    while (ready + failed < n && now_ns() < tend) {
        while (opened < n && inflight < window) {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (fd < 0) {
                failed += n - opened;
                opened = n;
                break;
            }
            if (connect(fd, (const struct sockaddr *)dst, sizeof *dst) < 0 &&
                errno != EINPROGRESS) {
                close(fd);
                fds[opened++] = -1;
                failed++;
                continue;
            }
            struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)opened};
            epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
            fds[opened++] = fd;
            inflight++;
        }
        struct epoll_event evs[256];
        int ne = epoll_wait(ep, evs, 256, 50);
        for (int k = 0; k < ne; k++) {
            int i = (int)evs[k].data.u32;
            char b;
            ssize_t r = recv(fds[i], &b, 1, 0);
            if (r < 0 && errno == EAGAIN)
                continue;
            epoll_ctl(ep, EPOLL_CTL_DEL, fds[i], NULL);
            inflight--;
            if (r == 1) {
                ready++;
            } else {
                close(fds[i]);
                fds[i] = -1;
                failed++;
            }
        }
    }
    double open_secs = (double)(now_ns() - t0) / 1e9;
    printf("ready %d %d\n", ready, n - ready);
    fflush(stdout);
    char line[64];
    if (!fgets(line, sizeof line, stdin)) { /* EOF: release as well */ }
    int closed = 0;
    for (int i = 0; i < opened; i++)
        if (fds[i] >= 0) {
            close(fds[i]);
            closed++;
        }
    printf("{\"conns\": %d, \"ready\": %d, \"failed\": %d, \"open_secs\": %.3f, \"closed\": %d}\n",
           n, ready, n - ready, open_secs, closed);
    return ready == n ? 0 : 1;
}

static int send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Reads one HTTP response (head + Content-Length body) from a blocking socket; -1 on error. */
static int read_response(int fd)
{
    char buf[HEAD_MAX];
    size_t len = 0;
    for (;;) {
        ssize_t r = recv(fd, buf + len, sizeof buf - len, 0);
        if (r <= 0)
            return -1;
        len += (size_t)r;
        size_t hl = head_len(buf, len);
        if (hl) {
            const char *cl = find_header(buf, hl, "content-length");
            size_t blen = cl ? (size_t)strtoul(cl, NULL, 10) : 0;
            if (len >= hl + blen)
                return 0;
        }
        if (len == sizeof buf)
            return -1;
    }
}

static int cmd_bulk(const struct sockaddr_in *dst, double secs, uint64_t req_bytes,
                    const char *host, const char *prefix_file)
{
    signal(SIGPIPE, SIG_IGN);
    static char data[1 << 18];
    memset(data, 'x', sizeof data);
    int fd = connect_blocking(dst);
    if (fd < 0)
        die("connect");
    /* a relay that stalls must fail the figure, not hold the run for its idle timeout */
    struct timeval stall = {.tv_sec = 10};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &stall, sizeof stall);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &stall, sizeof stall);
    if (prefix_file) {
        FILE *f = fopen(prefix_file, "rb");
        if (!f)
            die("prefix file");
        char pb[65536];
        size_t pn = fread(pb, 1, sizeof pb, f);
        fclose(f);
        if (send_all(fd, pb, pn) < 0)
            die("send prefix");
        char sh[SERVER_HELLO_LEN]; /* the server's answer to the ClientHello */
        for (size_t got = 0; got < sizeof sh;) {
            ssize_t r = recv(fd, sh + got, sizeof sh - got, 0);
            if (r <= 0)
                die("ServerHello (EAGAIN: stalled for 10 s)");
            got += (size_t)r;
        }
    }
    char head[256];
    int hn = snprintf(head, sizeof head,
                      "POST /upload HTTP/1.1\r\nHost: %s\r\nContent-Length: %llu\r\n\r\n", host,
                      (unsigned long long)req_bytes);
    uint64_t t0 = now_ns(), tend = t0 + (uint64_t)(secs * 1e9), moved = 0;
    int reqs = 0;
    do {
        if (send_all(fd, head, (size_t)hn) < 0)
            die("send (request head; EAGAIN: stalled for 10 s)");
        uint64_t left = req_bytes;
        while (left > 0) {
            size_t k = left < sizeof data ? (size_t)left : sizeof data;
            if (send_all(fd, data, k) < 0) {
                fprintf(stderr, "fpload: request %d: %llu of %llu body bytes sent\n", reqs + 1,
                        (unsigned long long)(req_bytes - left), (unsigned long long)req_bytes);
                die("send (body; EAGAIN: stalled for 10 s)");
            }
            left -= k;
        }
        if (read_response(fd) < 0) {
            fprintf(stderr, "fpload: request %d: whole body sent, no response\n", reqs + 1);
            die("response (EAGAIN: stalled for 10 s)");
        }
        moved += req_bytes;
        reqs++;
    } while (now_ns() < tend);
    double el = (double)(now_ns() - t0) / 1e9;
    close(fd);
    printf("{\"bytes\": %llu, \"secs\": %.4f, \"requests\": %d, \"gbit_s\": %.3f}\n",
           (unsigned long long)moved, el, reqs, (double)moved * 8 / el / 1e9);
    return 0;
}

static size_t load_prefix(const char *path, char *buf, size_t cap)
{
    if (!path)
        return 0;
    FILE *f = fopen(path, "rb");
    if (!f)
        die("prefix file");
    size_t n = fread(buf, 1, cap, f);
    fclose(f);
    return n;
}

struct cr {
    int fd;
    int phase;   /* 0: connecting, 1: reading the response */
    size_t skip; /* bytes still to skip before the response: the ServerHello after a prefix */
    size_t got;
    char head[16];
};

static size_t g_skip; /* connrate: the ServerHello each connection skips (0: no prefix) */

static int cr_open(int ep, struct cr *c, const struct sockaddr_in *dst, uint32_t idx)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return -1;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (const struct sockaddr *)dst, sizeof *dst) < 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return -1;
    }
    c->phase = 0;
    c->got = 0;
    c->skip = g_skip;
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = idx};
    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    return 0;
}

static int cmd_connrate(const struct sockaddr_in *dst, double secs, int nconns, const char *host,
                        const char *prefix_file)
{
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    static char req[70000];
    size_t plen = load_prefix(prefix_file, req, 65536);
    g_skip = plen ? SERVER_HELLO_LEN : 0; /* a ClientHello is answered by a ServerHello */
    int hn = snprintf(req + plen, sizeof req - plen,
                      "GET / HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n", host);
    size_t reqlen = plen + (size_t)hn;
    struct cr *cs = calloc((size_t)nconns, sizeof *cs);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    uint64_t ok = 0, errors = 0, non200 = 0;
    uint64_t t0 = now_ns(), tend = t0 + (uint64_t)(secs * 1e9);
    for (int i = 0; i < nconns; i++)
        if (cr_open(ep, &cs[i], dst, (uint32_t)i) < 0)
            errors++;
    char buf[4096];
    while (now_ns() < tend) {
        struct epoll_event evs[256];
        int ne = epoll_wait(ep, evs, 256, 20);
        for (int k = 0; k < ne; k++) {
            uint32_t i = evs[k].data.u32;
            struct cr *c = &cs[i];
            int finished = 0, failed = 0;
            if (c->phase == 0) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err || send(c->fd, req, reqlen, MSG_NOSIGNAL) != (ssize_t)reqlen) {
                    failed = 1;
                } else {
                    c->phase = 1;
                    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = i};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
            } else {
                for (;;) {
                    ssize_t r = recv(c->fd, buf, sizeof buf, 0);
                    if (r > 0) {
                        size_t k2 = 0;
                        while (c->skip && k2 < (size_t)r)
                            c->skip--, k2++;
                        while (c->got < sizeof c->head && k2 < (size_t)r)
                            c->head[c->got++] = buf[k2++];
                        continue;
                    }
                    if (r == 0)
                        finished = 1;
                    else if (errno != EAGAIN)
                        failed = 1;
                    break;
                }
            }
            if (finished) {
                if (c->got >= 12 && memcmp(c->head, "HTTP/1.1 200", 12) == 0)
                    ok++;
                else
                    non200++;
            }
            if (failed)
                errors++;
            if (finished || failed) {
                close(c->fd);
                if (cr_open(ep, c, dst, i) < 0)
                    errors++;
            }
        }
    }
    double el = (double)(now_ns() - t0) / 1e9;
    printf("{\"completed\": %llu, \"errors\": %llu, \"non200\": %llu, \"secs\": %.4f, "
           "\"conns\": %d, \"rate\": %.1f}\n", (unsigned long long)ok,
           (unsigned long long)errors, (unsigned long long)non200, el, nconns,
           (double)ok / el);
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: fpload serve --bind IP [--http P] [--tls P] [--hold P] [--threads N]\n"
            "       fpload rate --dst IP:P --rate R --conns C --secs S [--warmup W] [--host H]\n"
            "       fpload hold --dst IP:P --conns N [--timeout S]\n"
            "       fpload bulk --dst IP:P --secs S [--req-bytes B] [--host H] [--prefix-file F]\n"
            "       fpload connrate --dst IP:P --secs S --conns C [--host H] [--prefix-file F]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    const char *cmd = argv[1];
    struct sockaddr_in dst;
    int have_dst = 0, conns = 1, threads = 1;
    double rate = 1000, secs = 1, warmup = 0.2, timeout = 30;
    uint64_t req_bytes = 16u << 20;
    const char *host = "bench.test", *prefix = NULL;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(a, "--dst")) {
            if (parse_dst(v, &dst) < 0)
                usage();
            have_dst = 1;
        } else if (!strcmp(a, "--bind")) {
            g_bind = v;
        } else if (!strcmp(a, "--http")) {
            g_http_port = atoi(v);
        } else if (!strcmp(a, "--tls")) {
            g_tls_port = atoi(v);
        } else if (!strcmp(a, "--hold")) {
            g_hold_port = atoi(v);
        } else if (!strcmp(a, "--threads")) {
            threads = atoi(v);
        } else if (!strcmp(a, "--rate")) {
            rate = atof(v);
        } else if (!strcmp(a, "--conns")) {
            conns = atoi(v);
        } else if (!strcmp(a, "--secs")) {
            secs = atof(v);
        } else if (!strcmp(a, "--warmup")) {
            warmup = atof(v);
        } else if (!strcmp(a, "--timeout")) {
            timeout = atof(v);
        } else if (!strcmp(a, "--req-bytes")) {
            req_bytes = strtoull(v, NULL, 10);
        } else if (!strcmp(a, "--host")) {
            host = v;
        } else if (!strcmp(a, "--prefix-file")) {
            prefix = v;
        } else {
            usage();
        }
    }
    if (!strcmp(cmd, "serve"))
        return cmd_serve(threads);
    if (!have_dst || conns < 1 || rate <= 0 || secs <= 0)
        usage();
    if (!strcmp(cmd, "rate"))
        return cmd_rate(&dst, rate, conns, secs, warmup, host);
    if (!strcmp(cmd, "hold"))
        return cmd_hold(&dst, conns, timeout);
    if (!strcmp(cmd, "connrate"))
        return cmd_connrate(&dst, secs, conns, host, prefix);
    if (!strcmp(cmd, "bulk"))
        return cmd_bulk(&dst, secs, req_bytes, host, prefix);
    usage();
    return 2;
}
