/* Observability of the data plane: access-log rings, per-cluster counters, decision counters.
 *
 * Each worker owns a struct fp_obs_worker; only that worker writes it. The control plane reads
 * counters with relaxed loads (each is exact, the set is not one instant) and drains the rings.
 *
 * Ring: records[0..mask]; `head` is written by the worker only, `tail` by the reader only.
 * The worker fills records[head & mask] and publishes it with a release store of head + 1; the
 * reader sees head with an acquire load, copies, and frees the slots with a release store of
 * tail. A worker that finds head - tail == capacity drops the record (log_dropped) and moves on.
 *
 * Clusters: slots[0] is "other"; slots[1..cap] are handed out in order of first use, found
 * through an open-addressing index (hash of the name, linear probing, twice the slots). Names are
 * written before `used` is published (release), so the reader sees only complete names. Slots are
 * never reused: a counter of a series can only grow for the life of the process.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fp_internal.h"

struct fp_cluster_slot {
    struct fp_cluster_snap s;
    uint32_t hash;
};

struct fp_obs_worker {
    struct fp_obs_rec *ring;
    uint32_t mask;
    uint64_t head; /* worker writes (release) */
    uint64_t tail; /* reader writes (release) */
    struct fp_obs_counters c;
    struct fp_cluster_slot *slots;
    int cap;  /* slots besides "other" */
    int used; /* slots handed out, "other" included (release) */
    int32_t *index;
    uint32_t index_mask;
    uint64_t rng;
};

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint32_t next_pow2(uint32_t n)
{
    uint32_t p = 2;
    while (p < n && p < (1u << 30))
        p <<= 1;
    return p;
}

int fp_obs_setup(fp_engine *e, int ring_cap, int cluster_cap)
{
    if (ring_cap < 1 || cluster_cap < 1 || ring_cap > (1 << 24) || cluster_cap > (1 << 20))
        return -EINVAL;
    if (e->running)
        return -EBUSY;
    int per = cluster_cap / e->nworkers;
    if (per < 1)
        per = 1;
    uint32_t rcap = next_pow2((uint32_t)ring_cap);
    uint32_t icap = next_pow2((uint32_t)per * 2 + 2);
    for (int i = 0; i < e->nworkers; i++) {
        struct fp_worker *w = &e->w[i];
        struct fp_obs_worker *o = calloc(1, sizeof(*o));
        if (!o)
            return -ENOMEM;
        o->ring = calloc(rcap, sizeof(*o->ring));
        o->slots = calloc((size_t)per + 1, sizeof(*o->slots));
        o->index = malloc(sizeof(int32_t) * icap);
        if (!o->ring || !o->slots || !o->index) {
            free(o->ring);
            free(o->slots);
            free(o->index);
            free(o);
            return -ENOMEM;
        }
        memset(o->index, 0xff, sizeof(int32_t) * icap); /* -1: empty */
        o->mask = rcap - 1;
        o->cap = per;
        o->used = 1; /* slot 0: "other", name "" */
        o->index_mask = icap - 1;
        o->rng = 0x9e3779b97f4a7c15ull ^ (uint64_t)(i + 1) * 0xbf58476d1ce4e5b9ull;
        fp_obs_worker_free(w);
        w->obs = o;
    }
    return 0;
}

void fp_obs_worker_free(struct fp_worker *w)
{
    struct fp_obs_worker *o = w->obs;
    if (!o)
        return;
    free(o->ring);
    free(o->slots);
    free(o->index);
    free(o);
    w->obs = NULL;
}

int fp_obs_drain(fp_engine *e, struct fp_obs_rec *out, int max)
{
    int n = 0;
    for (int i = 0; i < e->nworkers && n < max; i++) {
        struct fp_obs_worker *o = e->w[i].obs;
        if (!o)
            continue;
        uint64_t head = __atomic_load_n(&o->head, __ATOMIC_ACQUIRE);
        uint64_t tail = o->tail;
        while (tail < head && n < max)
            out[n++] = o->ring[tail++ & o->mask];
        __atomic_store_n(&o->tail, tail, __ATOMIC_RELEASE);
    }
    return n;
}

int fp_obs_read_counters(fp_engine *e, struct fp_obs_counters *out)
{
    memset(out, 0, sizeof(*out));
    uint64_t *dst = (uint64_t *)out;
    size_t n = sizeof(*out) / sizeof(uint64_t);
    for (int i = 0; i < e->nworkers; i++) {
        struct fp_obs_worker *o = e->w[i].obs;
        if (!o)
            continue;
        const uint64_t *src = (const uint64_t *)&o->c;
        for (size_t k = 0; k < n; k++)
            dst[k] += __atomic_load_n(&src[k], __ATOMIC_RELAXED);
    }
    return 0;
}

static void snap_copy(struct fp_cluster_snap *d, const struct fp_cluster_snap *s)
{
    memcpy(d->name, s->name, sizeof(d->name));
    d->cx_active = FP_READ(s->cx_active);
    d->cx_total = FP_READ(s->cx_total);
    d->tx_bytes = FP_READ(s->tx_bytes);
    d->rx_bytes = FP_READ(s->rx_bytes);
    d->rq_completed = FP_READ(s->rq_completed);
    for (int k = 0; k < 6; k++)
        d->rq_class[k] = FP_READ(s->rq_class[k]);
    for (int k = 0; k < FP_OBS_CODE_SLOTS; k++) {
        d->codes[k] = FP_READ(s->codes[k]);
        d->code_count[k] = FP_READ(s->code_count[k]);
    }
}

int fp_obs_clusters(fp_engine *e, struct fp_cluster_snap *out, int max)
{
    int n = 0;
    for (int i = 0; i < e->nworkers; i++) {
        struct fp_obs_worker *o = e->w[i].obs;
        if (!o)
            continue;
        int used = __atomic_load_n(&o->used, __ATOMIC_ACQUIRE);
        for (int k = 0; k < used; k++, n++)
            if (out && n < max)
                snap_copy(&out[n], &o->slots[k].s);
    }
    return out && n > max ? max : n;
}

/* ---- clusters ------------------------------------------------------------------------------ */

static uint32_t hash_name(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 16777619u;
    return h;
}

/* The slot of cluster `name` in the worker's table: found, new, or 0 ("other") when full. */
static int cluster_slot(struct fp_obs_worker *o, const char *name)
{
    uint32_t h = hash_name(name);
    for (uint32_t i = h & o->index_mask;; i = (i + 1) & o->index_mask) {
        int32_t k = o->index[i];
        if (k < 0) {
            if (o->used > o->cap) {
                FP_ADD(o->c.clusters_overflow, 1);
                return 0;
            }
            k = o->used;
            struct fp_cluster_slot *sl = &o->slots[k];
            snprintf(sl->s.name, sizeof(sl->s.name), "%s", name);
            sl->hash = h;
            o->index[i] = k;
            __atomic_store_n(&o->used, k + 1, __ATOMIC_RELEASE);
            return k;
        }
        if (o->slots[k].hash == h && strcmp(o->slots[k].s.name, name) == 0)
            return k;
    }
}

static void format_ip(char *out, size_t len, const struct sockaddr_storage *ss)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const void *)ss;
        inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
        snprintf(out, len, "[%s]:%u", ip, ntohs(s->sin6_port));
    } else {
        const struct sockaddr_in *s = (const void *)ss;
        inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
        snprintf(out, len, "%s:%u", ip, ntohs(s->sin_port));
    }
}

static uint16_t dst_port(const struct fp_conn *c)
{
    return ntohs(c->dst.ss_family == AF_INET6 ? ((const struct sockaddr_in6 *)&c->dst)->sin6_port
                                              : ((const struct sockaddr_in *)&c->dst)->sin_port);
}

/* Contract: an upstream socket for `rule` (-1: the original destination) is being opened: names
 * its cluster as FSM does (host:port for an http rule, the port for an https rule, ip:port
 * otherwise) and counts it open. */
void fp_obs_upstream_open(struct fp_conn *c, int rule)
{
    struct fp_obs_worker *o = c->w->obs;
    if (!o)
        return;
    char name[FP_CLUSTER_NAME_MAX];
    int kind = rule >= 0 ? fp_table_rule_kind(c->table, rule) : 0;
    if (kind == FP_RULE_HTTP && c->obs.host[0])
        snprintf(name, sizeof(name), "%s:%u", c->obs.host, dst_port(c));
    else if (kind == FP_RULE_HTTPS)
        snprintf(name, sizeof(name), "%u", dst_port(c));
    else
        format_ip(name, sizeof(name), &c->dst);
    int k = cluster_slot(o, name);
    c->obs.cluster = k;
    FP_ADD(o->slots[k].s.cx_active, 1);
    FP_ADD(o->slots[k].s.cx_total, 1);
}

/* Contract: the upstream socket counted by fp_obs_upstream_open is closed. Idempotent. */
void fp_obs_upstream_close(struct fp_conn *c)
{
    struct fp_obs_worker *o = c->w->obs;
    if (!o || c->obs.cluster < 0)
        return;
    FP_SUB(o->slots[c->obs.cluster].s.cx_active, 1);
    c->obs.cluster = -1;
}

/* Contract: n bytes were delivered in direction dir (0: to the upstream, 1: to the client). */
void fp_obs_bytes(struct fp_conn *c, int dir, uint64_t n)
{
    c->obs.bytes[dir] += n;
    struct fp_obs_worker *o = c->w->obs;
    if (!o || c->obs.cluster < 0)
        return;
    struct fp_cluster_snap *s = &o->slots[c->obs.cluster].s;
    if (dir == 0)
        FP_ADD(s->tx_bytes, n);
    else
        FP_ADD(s->rx_bytes, n);
}

/* ---- decisions ----------------------------------------------------------------------------- */

/* Contract: records the start of a connection accepted from `peer` (may be NULL). */
void fp_obs_conn_start(struct fp_conn *c, const struct sockaddr_storage *peer)
{
    c->obs.cluster = -1;
    c->obs.rule = -1;
    c->obs.action = 255;
    if (!c->w->obs)
        return;
    c->obs.start_ns = clock_ns(CLOCK_REALTIME);
    c->obs.mono_ns = clock_ns(CLOCK_MONOTONIC);
    if (peer && peer->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const void *)peer;
        c->obs.family = 6;
        memcpy(c->obs.src, &s->sin6_addr, 16);
        c->obs.src_port = ntohs(s->sin6_port);
    } else if (peer && peer->ss_family == AF_INET) {
        const struct sockaddr_in *s = (const void *)peer;
        c->obs.family = 4;
        memcpy(c->obs.src, &s->sin_addr, 4);
        c->obs.src_port = ntohs(s->sin_port);
    }
}

static void count_decision(struct fp_conn *c, int action, int rule, int reason, int would_deny)
{
    struct fp_obs_worker *o = c->w->obs;
    if (would_deny || action == FP_ACT_DENY) {
        if (!o)
            return;
        int r = reason >= 0 && reason < FP_OBS_REASONS ? reason : 0;
        if (would_deny)
            FP_ADD(o->c.would_deny[r], 1);
        else
            FP_ADD(o->c.denied[r], 1);
        return;
    }
    if (rule >= 0 && rule < c->table->nrules && c->table->rule_hits)
        __atomic_add_fetch(&c->table->rule_hits[rule], 1, __ATOMIC_RELAXED);
    if (!o)
        return;
    if (action == FP_ACT_MESH)
        FP_ADD(o->c.decided_mesh, 1);
    else if (action == FP_ACT_ALLOW)
        FP_ADD(o->c.decided_allow, 1);
    else
        FP_ADD(o->c.decided_passthrough, 1);
}

/* Contract: the connection-level verdict `v` was reached (would_deny: audit mode lets a deny
 * through). The relay's own reason of the connection (c->reason), when set, wins. */
void fp_obs_decided(struct fp_conn *c, const struct fp_verdict *v, int would_deny)
{
    int reason = v->reason;
    if (c->reason && v->action != FP_ACT_ALLOW && v->action != FP_ACT_MESH)
        reason = c->reason; /* what the relay alone could tell (peek timeout, tunnel...) */
    c->obs.action = (uint8_t)v->action;
    c->obs.rule = v->action == FP_ACT_ALLOW || v->action == FP_ACT_MESH ? v->rule : -1;
    c->obs.reason = (uint8_t)reason;
    c->obs.would_deny = (uint8_t)would_deny;
    count_decision(c, v->action, c->obs.rule, reason, would_deny);
}

/* Contract: the ClientHello named `sni` (len 0: none). */
void fp_obs_sni(struct fp_conn *c, const char *sni, size_t len)
{
    if (len >= sizeof(c->obs.host))
        len = sizeof(c->obs.host) - 1;
    memcpy(c->obs.host, sni, len);
    c->obs.host[len] = 0;
    c->obs.tls = 1;
}

static void copy_field(char *dst, size_t cap, const uint8_t *src, size_t len)
{
    if (len >= cap)
        len = cap - 1;
    for (size_t i = 0; i < len; i++) /* the log is JSON text: control bytes become '?' */
        dst[i] = src[i] < 0x20 || src[i] == 0x7f ? '?' : (char)src[i];
    dst[len] = 0;
}

static void emit(struct fp_conn *c, int kind);

/* Contract: an HTTP request (head parsed into req) was decided `v`; its record is written when
 * its response is complete (fp_obs_request_done), refused (fp_obs_request_refused) or the
 * connection ends. */
void fp_obs_request(struct fp_conn *c, const uint8_t *head, const struct fp_http_req *req,
                    const struct fp_verdict *v, int would_deny)
{
    if (c->obs.req_open)
        fp_obs_request_done(c);
    copy_field(c->obs.host, sizeof(c->obs.host), head + req->host_off, req->host_len);
    copy_field(c->obs.path, sizeof(c->obs.path), head + req->path_off, req->path_len);
    c->obs.tls = 0;
    c->obs.method = req->method;
    c->obs.status = 0;
    c->obs.req_open = 1;
    c->obs.req_bytes0[0] = c->obs.bytes[0];
    c->obs.req_bytes0[1] = c->obs.bytes[1];
    if (c->w->obs) {
        c->obs.req_start_ns = clock_ns(CLOCK_REALTIME);
        c->obs.req_mono_ns = clock_ns(CLOCK_MONOTONIC);
    }
    fp_obs_decided(c, v, would_deny);
}

static void count_code(struct fp_conn *c, int status)
{
    struct fp_obs_worker *o = c->w->obs;
    if (!o || status < 100 || status > 599)
        return;
    FP_ADD(o->c.http_codes[status], 1);
    if (c->obs.cluster < 0)
        return;
    struct fp_cluster_snap *s = &o->slots[c->obs.cluster].s;
    FP_ADD(s->rq_completed, 1);
    FP_ADD(s->rq_class[status / 100], 1);
    for (int k = 0; k < FP_OBS_CODE_SLOTS; k++) {
        if (s->codes[k] == status || s->codes[k] == 0) {
            if (s->codes[k] == 0)
                __atomic_store_n(&s->codes[k], (uint16_t)status, __ATOMIC_RELAXED);
            FP_ADD(s->code_count[k], 1);
            return;
        }
    }
}

/* Contract: the sidecar answers the request in flight itself with `status` (403, 400) for
 * `reason`; the request's record is written now. */
void fp_obs_request_refused(struct fp_conn *c, int status, int reason)
{
    if (!c->obs.req_open) { /* refused before it could be parsed: no request recorded yet */
        c->obs.req_open = 1;
        c->obs.host[0] = c->obs.path[0] = 0;
        c->obs.method = 0;
        c->obs.req_bytes0[0] = c->obs.bytes[0];
        c->obs.req_bytes0[1] = c->obs.bytes[1];
        if (c->w->obs) {
            c->obs.req_start_ns = clock_ns(CLOCK_REALTIME);
            c->obs.req_mono_ns = clock_ns(CLOCK_MONOTONIC);
        }
        struct fp_verdict v = {.action = FP_ACT_DENY, .rule = -1, .reason = reason};
        fp_obs_decided(c, &v, 0);
    }
    c->obs.reason = (uint8_t)reason;
    c->obs.status = (uint16_t)status;
    struct fp_obs_worker *o = c->w->obs;
    if (o && status >= 100 && status <= 599)
        FP_ADD(o->c.http_codes[status], 1);
    fp_obs_request_done(c);
}

/* Contract: the upstream's final response to the request in flight has `status`. */
void fp_obs_response(struct fp_conn *c, int status)
{
    c->obs.status = (uint16_t)status;
    count_code(c, status);
}

/* Contract: the request in flight is finished (response delivered); writes its record. */
void fp_obs_request_done(struct fp_conn *c)
{
    if (!c->obs.req_open)
        return;
    emit(c, FP_REC_HTTP);
    c->obs.req_open = 0;
    c->obs.pending_u2c = 0;
}

/* Contract: the connection is closing; writes its record (and that of a request in flight). */
void fp_obs_conn_end(struct fp_conn *c)
{
    fp_obs_upstream_close(c);
    if (c->obs.req_open) {
        emit(c, FP_REC_HTTP);
        c->obs.req_open = 0;
    }
    emit(c, FP_REC_CONN);
}

/* ---- records ------------------------------------------------------------------------------- */

static int keep_record(struct fp_obs_worker *o, const struct fp_conn *c)
{
    const fp_table *t = c->table;
    if (!t->log_on)
        return 0;
    if (c->obs.action != FP_ACT_PASSTHROUGH || c->obs.would_deny)
        return 1;
    if (t->log_pt_ppm >= 1000000)
        return 1;
    if (t->log_pt_ppm == 0)
        return 0;
    o->rng ^= o->rng << 13; /* xorshift64 */
    o->rng ^= o->rng >> 7;
    o->rng ^= o->rng << 17;
    return (o->rng % 1000000u) < t->log_pt_ppm;
}

static void emit(struct fp_conn *c, int kind)
{
    struct fp_obs_worker *o = c->w->obs;
    if (!o || !keep_record(o, c))
        return;
    uint64_t head = o->head;
    if (head - __atomic_load_n(&o->tail, __ATOMIC_ACQUIRE) > o->mask) {
        FP_ADD(o->c.log_dropped, 1);
        return;
    }
    struct fp_obs_rec *r = &o->ring[head & o->mask];
    uint64_t now = clock_ns(CLOCK_MONOTONIC);
    int http = kind == FP_REC_HTTP;
    r->kind = (uint8_t)kind;
    r->start_ns = http ? c->obs.req_start_ns : c->obs.start_ns;
    r->dur_us = (now - (http ? c->obs.req_mono_ns : c->obs.mono_ns)) / 1000u;
    r->bytes_c2u = c->obs.bytes[0] - (http ? c->obs.req_bytes0[0] : 0);
    r->bytes_u2c = c->obs.bytes[1] - (http ? c->obs.req_bytes0[1] - c->obs.pending_u2c : 0);
    r->table_id = c->table->obs_id;
    r->rule = c->obs.rule;
    r->family = c->obs.family;
    r->src_port = c->obs.src_port;
    memcpy(r->src, c->obs.src, 16);
    memset(r->dst, 0, 16);
    if (c->dst.ss_family == AF_INET6) {
        memcpy(r->dst, &((const struct sockaddr_in6 *)&c->dst)->sin6_addr, 16);
        if (!r->family)
            r->family = 6;
    } else {
        memcpy(r->dst, &((const struct sockaddr_in *)&c->dst)->sin_addr, 4);
        if (!r->family)
            r->family = 4;
    }
    r->dst_port = dst_port(c);
    r->status = http ? c->obs.status : 0;
    r->action = c->obs.action;
    r->reason = c->obs.reason;
    r->would_deny = c->obs.would_deny;
    r->end = c->obs.end;
    r->method = http ? c->obs.method : 0;
    r->tls = c->obs.tls;
    memcpy(r->host, c->obs.host, sizeof(r->host));
    if (http)
        memcpy(r->path, c->obs.path, sizeof(r->path));
    else
        r->path[0] = 0;
    __atomic_store_n(&o->head, head + 1, __ATOMIC_RELEASE);
    FP_ADD(o->c.log_records, 1);
}

/* ---- table settings ------------------------------------------------------------------------ */

int fp_table_set_obs(fp_table *t, uint64_t id, int log, uint32_t passthrough_ppm, int audit)
{
    if (passthrough_ppm > 1000000)
        return -EINVAL;
    t->obs_id = id;
    t->log_on = log ? 1 : 0;
    t->log_pt_ppm = passthrough_ppm;
    t->audit = audit ? 1 : 0;
    return 0;
}

uint64_t fp_table_rule_hits(const fp_table *t, int rule)
{
    if (!t->rule_hits || rule < 0 || rule >= t->nrules)
        return 0;
    return __atomic_load_n(&t->rule_hits[rule], __ATOMIC_RELAXED);
}

int fp_table_refs(const fp_table *t)
{
    return __atomic_load_n(&t->refs, __ATOMIC_ACQUIRE);
}
