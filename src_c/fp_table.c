/* The decision table: what the control plane compiled, read by every worker. Built once by the
 * control thread, frozen by fp_table_build(), then immutable and shared; reference counted so a
 * reload never pulls it from under an open connection.
 *
 * Layout: a port map (fp_port_map) from destination port to a slot of per-port rule sets (in-mesh
 * CIDRs, tcp CIDRs, a tcp-any rule, https and http host sets); the sets map to rule ids; a rule
 * carries what applies once it matched (connect timeout, connection limit, upstream override,
 * CIDR restriction, HTTP routes). Every lookup is O(1) or O(log n) in the number of rules.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>

#include "fp_internal.h"
#include "fp_lookup.h"
#include "fp_peek.h"
#include "fp_re2.h"

struct fp_route {
    fp_re *path;       /* NULL: any path */
    uint32_t methods;
    int nheaders;
    char **hnames;
    size_t *hname_lens;
    fp_re **hre;
};

struct fp_rule {
    int kind;
    int connect_ms;
    int max_conns;
    int limit_slot;    /* counter in the table's fp_limits (-1: the table's own per-rule one) */
    struct sockaddr_storage *ups;
    int nups;
    int redirect;      /* dial ups instead of the original destination (none resolved: refuse) */
    fp_cidr_set *only; /* https/http: destination IPs the rule is restricted to (value: prefix
                        * length), NULL: any */
    struct fp_cidr *cidrs; /* the same CIDRs as a list, for the port's union (staging only) */
    int ncidrs;
    struct fp_route *routes;
    int nroutes;
};

/* Host sets of a port, by [protocol: 0 https, 1 http][0 exact names, 1 wildcards]; each name maps
 * to a candidate list (several rules may name the same host with different CIDRs or routes). */
struct fp_port_rules {
    fp_cidr_set *mesh;
    fp_cidr_set *tcp;
    int tcp_any;
    fp_host_set *hosts[2][2];
    int has_hosts[2];
    int unrestricted[2];          /* a host rule of the protocol applies to every IP */
    fp_cidr_set *restricted[2];   /* union of the CIDRs the other host rules are restricted to */
    int redirecting; /* a host rule of this port dials a resolved upstream */
};

struct fp_cidr {
    int family;
    int plen;
    uint8_t addr[16];
};

struct fp_cands {
    int n;
    int *rules; /* in table order */
};

#define FP_MAX_CANDS 64

fp_table *fp_table_new(void)
{
    fp_table *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->refs = 1;
    t->default_action = FP_ACT_DENY;
    t->connect_ms = 60000;
    t->idle_ms = 60000;
    t->peek_ms = 5000;
    t->log_on = 1;
    t->log_pt_ppm = 1000000;
    t->ports = fp_port_map_new();
    if (!t->ports) {
        free(t);
        return NULL;
    }
    return t;
}

void fp_table_ref(fp_table *t)
{
    __atomic_add_fetch(&t->refs, 1, __ATOMIC_RELAXED);
}

static void route_free(struct fp_route *r)
{
    fp_re_free(r->path);
    for (int i = 0; i < r->nheaders; i++) {
        free(r->hnames[i]);
        fp_re_free(r->hre[i]);
    }
    free(r->hnames);
    free(r->hname_lens);
    free(r->hre);
}

static void table_free(fp_table *t)
{
    for (int i = 0; i < t->nrules; i++) {
        struct fp_rule *r = &t->rules[i];
        free(r->ups);
        free(r->cidrs);
        fp_cidr_set_free(r->only);
        for (int k = 0; k < r->nroutes; k++)
            route_free(&r->routes[k]);
        free(r->routes);
    }
    free(t->rules);
    free(t->rule_active);
    free(t->rule_hits);
    fp_limits_unref(t->limits);
    for (int i = 0; i < t->npr; i++) {
        struct fp_port_rules *p = &t->pr[i];
        fp_cidr_set_free(p->mesh);
        fp_cidr_set_free(p->tcp);
        for (int a = 0; a < 2; a++) {
            fp_cidr_set_free(p->restricted[a]);
            for (int b = 0; b < 2; b++)
                fp_host_set_free(p->hosts[a][b]);
        }
    }
    free(t->pr);
    for (int i = 0; i < t->ncands; i++)
        free(t->cands[i].rules);
    free(t->cands);
    fp_port_map_free(t->ports);
    free(t);
}

void fp_table_unref(fp_table *t)
{
    if (t && __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) == 0)
        table_free(t);
}

int fp_table_set_default(fp_table *t, int action)
{
    if (t->built)
        return -EBUSY;
    if (action != FP_ACT_DENY && action != FP_ACT_PASSTHROUGH)
        return -EINVAL;
    t->default_action = action;
    return 0;
}

int fp_table_set_timeouts(fp_table *t, int connect_ms, int idle_ms)
{
    if (t->built)
        return -EBUSY;
    if (connect_ms < 0 || idle_ms < 0)
        return -EINVAL;
    t->connect_ms = connect_ms;
    t->idle_ms = idle_ms;
    return 0;
}

int fp_table_set_port_narrowing(fp_table *t, int on)
{
    if (t->built)
        return -EBUSY;
    t->narrow = on != 0;
    return 0;
}

int fp_table_set_peek_timeout(fp_table *t, int peek_ms)
{
    if (t->built)
        return -EBUSY;
    if (peek_ms <= 0)
        return -EINVAL;
    t->peek_ms = peek_ms;
    return 0;
}

/* Make room for one more element in a growing array (*arr holds n of *cap, each `size` bytes).
 * Returns 0 or -ENOMEM (the array is left as it was). */
static int grow(void **arr, int *cap, int n, size_t size)
{
    if (n < *cap)
        return 0;
    int ncap = *cap ? *cap * 2 : 16;
    void *p = realloc(*arr, (size_t)ncap * size);
    if (!p)
        return -ENOMEM;
    *arr = p;
    *cap = ncap;
    return 0;
}

static struct fp_rule *rule_at(const fp_table *t, int rule)
{
    return rule >= 0 && rule < t->nrules ? &t->rules[rule] : NULL;
}

int fp_table_rule_kind(const fp_table *t, int rule)
{
    const struct fp_rule *r = rule_at(t, rule);
    return r ? r->kind : -EINVAL;
}

int fp_table_add_rule(fp_table *t, int kind, int connect_ms, int max_conns)
{
    if (t->built)
        return -EBUSY;
    if (kind < FP_RULE_MESH || kind > FP_RULE_HTTP || connect_ms < 0 || max_conns < 0)
        return -EINVAL;
    if (grow((void **)&t->rules, &t->rules_cap, t->nrules, sizeof(struct fp_rule)) < 0)
        return -ENOMEM;
    struct fp_rule *r = &t->rules[t->nrules];
    memset(r, 0, sizeof(*r));
    r->kind = kind;
    r->connect_ms = connect_ms;
    r->max_conns = max_conns;
    r->limit_slot = -1;
    return t->nrules++;
}

int fp_table_rule_add_upstream(fp_table *t, int rule, const struct sockaddr *addr)
{
    struct fp_rule *r = rule_at(t, rule);
    if (t->built)
        return -EBUSY;
    if (!r)
        return -EINVAL;
    r->redirect = 1;
    if (!addr)
        return 0;
    if (addr->sa_family != AF_INET && addr->sa_family != AF_INET6)
        return -EINVAL;
    struct sockaddr_storage *n = realloc(r->ups, (size_t)(r->nups + 1) * sizeof(*n));
    if (!n)
        return -ENOMEM;
    r->ups = n;
    memset(&n[r->nups], 0, sizeof(*n));
    memcpy(&n[r->nups], addr,
           addr->sa_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
    r->nups++;
    return 0;
}

int fp_table_rule_restrict_cidr(fp_table *t, int rule, int family, const uint8_t *addr, int plen)
{
    struct fp_rule *r = rule_at(t, rule);
    if (t->built)
        return -EBUSY;
    if (!r || (r->kind != FP_RULE_HTTPS && r->kind != FP_RULE_HTTP))
        return -EINVAL;
    if (!r->only && !(r->only = fp_cidr_set_new()))
        return -ENOMEM;
    int rc = fp_cidr_set_add(r->only, family, addr, plen, (uint32_t)plen);
    if (rc < 0)
        return rc;
    struct fp_cidr *n = realloc(r->cidrs, (size_t)(r->ncidrs + 1) * sizeof(*n));
    if (!n)
        return -ENOMEM;
    r->cidrs = n;
    n[r->ncidrs].family = family;
    n[r->ncidrs].plen = plen;
    memcpy(n[r->ncidrs].addr, addr, family == AF_INET ? 4 : 16);
    r->ncidrs++;
    return 0;
}

int fp_table_rule_add_route(fp_table *t, int rule, const char *path_regex, uint32_t methods,
                            const char *const *header_names, const char *const *header_regexes,
                            int nheaders, int *bad_regex)
{
    struct fp_rule *r = rule_at(t, rule);
    if (t->built)
        return -EBUSY;
    if (!r || r->kind != FP_RULE_HTTP || nheaders < 0 || (nheaders && (!header_names || !header_regexes)))
        return -EINVAL;
    struct fp_route *n = realloc(r->routes, (size_t)(r->nroutes + 1) * sizeof(*n));
    if (!n)
        return -ENOMEM;
    r->routes = n;
    struct fp_route *rt = &n[r->nroutes];
    memset(rt, 0, sizeof(*rt));
    rt->methods = methods;
    if (path_regex && path_regex[0]) {
        int rc = fp_re_compile(path_regex, strlen(path_regex), &rt->path, NULL, 0);
        if (rc < 0) {
            if (bad_regex && rc != -ENOMEM)
                *bad_regex = 0;
            return rc == -ENOMEM ? rc : -EINVAL;
        }
    }
    if (nheaders) {
        rt->hnames = calloc((size_t)nheaders, sizeof(char *));
        rt->hname_lens = calloc((size_t)nheaders, sizeof(size_t));
        rt->hre = calloc((size_t)nheaders, sizeof(fp_re *));
        if (!rt->hnames || !rt->hname_lens || !rt->hre) {
            route_free(rt);
            return -ENOMEM;
        }
        for (int i = 0; i < nheaders; i++) {
            fp_re *re = NULL;
            int rc = fp_re_compile(header_regexes[i], strlen(header_regexes[i]), &re, NULL, 0);
            if (rc < 0) {
                route_free(rt);
                if (bad_regex && rc != -ENOMEM)
                    *bad_regex = 1 + i;
                return rc == -ENOMEM ? rc : -EINVAL;
            }
            rt->hre[i] = re;
            rt->nheaders = i + 1;
            rt->hnames[i] = strdup(header_names[i]);
            if (!rt->hnames[i]) {
                route_free(rt);
                return -ENOMEM;
            }
            rt->hname_lens[i] = strlen(header_names[i]);
        }
    }
    return r->nroutes++;
}

/* The rule set slot of `port`, created on first use. */
static struct fp_port_rules *port_slot(fp_table *t, uint16_t port)
{
    uint32_t idx;
    if (fp_port_map_get(t->ports, port, &idx) == 0)
        return &t->pr[idx];
    if (grow((void **)&t->pr, &t->pr_cap, t->npr, sizeof(struct fp_port_rules)) < 0)
        return NULL;
    if (fp_port_map_set(t->ports, port, (uint32_t)t->npr) < 0)
        return NULL;
    struct fp_port_rules *p = &t->pr[t->npr++];
    memset(p, 0, sizeof(*p));
    p->tcp_any = -1;
    return p;
}

int fp_table_add_cidr(fp_table *t, uint16_t port, int family, const uint8_t *addr, int plen,
                      int rule)
{
    struct fp_rule *r = rule_at(t, rule);
    if (t->built)
        return -EBUSY;
    if (!r || port == 0 || (r->kind != FP_RULE_MESH && r->kind != FP_RULE_TCP))
        return -EINVAL;
    struct fp_port_rules *p = port_slot(t, port);
    if (!p)
        return -ENOMEM;
    fp_cidr_set **set = r->kind == FP_RULE_MESH ? &p->mesh : &p->tcp;
    if (!*set && !(*set = fp_cidr_set_new()))
        return -ENOMEM;
    return fp_cidr_set_add(*set, family, addr, plen, (uint32_t)rule);
}

int fp_table_set_tcp_any(fp_table *t, uint16_t port, int rule)
{
    struct fp_rule *r = rule_at(t, rule);
    if (t->built)
        return -EBUSY;
    if (!r || port == 0 || r->kind != FP_RULE_TCP)
        return -EINVAL;
    struct fp_port_rules *p = port_slot(t, port);
    if (!p)
        return -ENOMEM;
    p->tcp_any = rule;
    return 0;
}

int fp_table_add_host(fp_table *t, uint16_t port, const char *name, size_t len, const int *rules,
                      int nrules)
{
    if (t->built)
        return -EBUSY;
    if (!name || port == 0 || nrules < 1 || nrules > FP_MAX_CANDS || !rules)
        return -EINVAL;
    int kind = fp_table_rule_kind(t, rules[0]);
    if (kind != FP_RULE_HTTPS && kind != FP_RULE_HTTP)
        return -EINVAL;
    int redirect = 0;
    for (int i = 0; i < nrules; i++) {
        if (fp_table_rule_kind(t, rules[i]) != kind)
            return -EINVAL;
        redirect |= t->rules[rules[i]].redirect;
    }
    struct fp_port_rules *p = port_slot(t, port);
    if (!p)
        return -ENOMEM;
    int proto = kind == FP_RULE_HTTP;
    for (int i = 0; i < nrules; i++) {
        const struct fp_rule *r = &t->rules[rules[i]];
        if (!r->only) {
            p->unrestricted[proto] = 1;
            continue;
        }
        if (!p->restricted[proto] && !(p->restricted[proto] = fp_cidr_set_new()))
            return -ENOMEM;
        for (int k = 0; k < r->ncidrs; k++) {
            int rc = fp_cidr_set_add(p->restricted[proto], r->cidrs[k].family, r->cidrs[k].addr,
                                     r->cidrs[k].plen, 0);
            if (rc < 0)
                return rc;
        }
    }
    int wild = len >= 2 && name[0] == '*' && name[1] == '.';
    fp_host_set **set = &p->hosts[proto][wild];
    if (!*set && !(*set = fp_host_set_new()))
        return -ENOMEM;
    if (grow((void **)&t->cands, &t->cands_cap, t->ncands, sizeof(struct fp_cands)) < 0)
        return -ENOMEM;
    struct fp_cands *c = &t->cands[t->ncands];
    c->rules = malloc((size_t)nrules * sizeof(int));
    if (!c->rules)
        return -ENOMEM;
    memcpy(c->rules, rules, (size_t)nrules * sizeof(int));
    c->n = nrules;
    int rc = fp_host_set_add(*set, name, len, (uint32_t)t->ncands);
    if (rc < 0) {
        free(c->rules);
        return rc;
    }
    t->ncands++;
    p->has_hosts[proto] = 1;
    p->redirecting |= redirect;
    return 0;
}

int fp_table_build(fp_table *t)
{
    if (t->built)
        return 0;
    int rc = 0;
    for (int i = 0; i < t->npr && rc == 0; i++) {
        struct fp_port_rules *p = &t->pr[i];
        if (p->mesh)
            rc = fp_cidr_set_build(p->mesh);
        if (!rc && p->tcp)
            rc = fp_cidr_set_build(p->tcp);
        for (int a = 0; a < 2 && !rc; a++) {
            if (p->restricted[a])
                rc = fp_cidr_set_build(p->restricted[a]);
            for (int b = 0; b < 2 && !rc; b++)
                if (p->hosts[a][b])
                    rc = fp_host_set_build(p->hosts[a][b]);
        }
    }
    for (int i = 0; i < t->nrules && rc == 0; i++)
        if (t->rules[i].only)
            rc = fp_cidr_set_build(t->rules[i].only);
    if (rc)
        return rc;
    t->rule_active = calloc((size_t)(t->nrules ? t->nrules : 1), sizeof(int));
    t->rule_hits = calloc((size_t)(t->nrules ? t->nrules : 1), sizeof(uint64_t));
    if (!t->rule_active || !t->rule_hits)
        return -ENOMEM;
    t->built = 1;
    return 0;
}

/* Family, address bytes and port of a sockaddr. */
static int split_dst(const struct sockaddr *dst, int *family, const uint8_t **addr, uint16_t *port)
{
    if (dst->sa_family == AF_INET) {
        const struct sockaddr_in *s = (const void *)dst;
        *family = AF_INET;
        *addr = (const uint8_t *)&s->sin_addr;
        *port = ntohs(s->sin_port);
        return 0;
    }
    if (dst->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s = (const void *)dst;
        *family = AF_INET6;
        *addr = (const uint8_t *)&s->sin6_addr;
        *port = ntohs(s->sin6_port);
        return 0;
    }
    return -EINVAL;
}

static const struct fp_port_rules *port_rules(const fp_table *t, uint16_t port)
{
    uint32_t idx;
    if (fp_port_map_get(t->ports, port, &idx) < 0)
        return NULL;
    return &t->pr[idx];
}

static int cidr_hit(const fp_cidr_set *set, int family, const uint8_t *addr, uint32_t *rule)
{
    return set && fp_cidr_set_lookup(set, family, addr, rule) == 0;
}

/* Does a host rule of `proto` (0 https, 1 http) on the port apply to this IP at all? */
static int hosts_apply(const struct fp_port_rules *p, int proto, int family, const uint8_t *addr)
{
    return p->has_hosts[proto] &&
           (p->unrestricted[proto] || cidr_hit(p->restricted[proto], family, addr, NULL));
}

/* What a connection or request that no rule allowed gets: the default, except that with FSM's
 * port narrowing a port carrying egress rules denies. */
static int fallback(const fp_table *t, const struct fp_port_rules *p)
{
    int has_policy = p && (p->tcp || p->tcp_any >= 0 || p->has_hosts[0] || p->has_hosts[1]);
    return t->narrow && has_policy ? FP_ACT_DENY : t->default_action;
}

/* A destination as the lookups want it. */
struct dst_view {
    int family;
    const uint8_t *addr;
    uint16_t port;
};

/* Common start of every decision: the verdict preset to the default, the destination split, and
 * the port's rule sets (NULL: none). Returns 0, or -EINVAL for an unbuilt table or a bad dst. */
static int begin(const fp_table *t, const struct sockaddr *dst, struct fp_verdict *v,
                 struct dst_view *q, const struct fp_port_rules **p)
{
    v->action = t->default_action;
    v->rule = -1;
    v->reason = FP_WHY_NO_POLICY;
    if (!t->built || split_dst(dst, &q->family, &q->addr, &q->port) < 0)
        return -EINVAL;
    *p = port_rules(t, q->port);
    return 0;
}

int fp_table_decide(const fp_table *t, const struct sockaddr *dst, struct fp_verdict *v)
{
    struct dst_view q;
    const struct fp_port_rules *p;
    uint32_t rule;
    if (begin(t, dst, v, &q, &p) < 0)
        return -EINVAL;
    if (!p)
        return 0;
    int family = q.family;
    const uint8_t *addr = q.addr;
    v->reason = FP_WHY_NONE;
    if (cidr_hit(p->mesh, family, addr, &rule)) {
        v->action = FP_ACT_MESH;
        v->rule = (int)rule;
    } else if (cidr_hit(p->tcp, family, addr, &rule)) {
        v->action = FP_ACT_ALLOW;
        v->rule = (int)rule;
    } else if (p->tcp_any >= 0) {
        v->action = FP_ACT_ALLOW;
        v->rule = p->tcp_any;
    } else if ((hosts_apply(p, 0, family, addr) || hosts_apply(p, 1, family, addr)) &&
               (fallback(t, p) != FP_ACT_PASSTHROUGH || p->redirecting)) {
        int tls = hosts_apply(p, 0, family, addr), http = hosts_apply(p, 1, family, addr);
        v->action = tls && http ? FP_ACT_PEEK_ANY : tls ? FP_ACT_PEEK_TLS : FP_ACT_PEEK_HTTP;
    } else {
        v->action = fallback(t, p);
        v->reason = FP_WHY_NO_POLICY;
    }
    return 0;
}

/* A candidate rule for a host name, with its rank: rules whose CIDRs hold the destination IP
 * first (longest prefix first), then rules without CIDRs; exact names before wildcards; then
 * table order. Rules with CIDRs that do not hold the IP are not candidates. */
struct pick {
    int rule;
    int cidr;  /* 0: CIDR match, 1: no CIDRs */
    int plen;
    int wild;
};

static int pick_before(const struct pick *a, const struct pick *b)
{
    if (a->cidr != b->cidr)
        return a->cidr < b->cidr;
    if (a->plen != b->plen)
        return a->plen > b->plen;
    if (a->wild != b->wild)
        return a->wild < b->wild;
    return a->rule < b->rule;
}

/* Fills picks[] (sorted by rank) with the rules of `proto` (0 https, 1 http) on the port whose
 * host matches name; returns how many. */
static int host_picks(const fp_table *t, const struct fp_port_rules *p, int proto, int family,
                      const uint8_t *addr, const char *name, size_t len, struct pick *picks)
{
    int n = 0;
    for (int wild = 0; wild < 2 && len; wild++) {
        uint32_t ci;
        const fp_host_set *set = p->hosts[proto][wild];
        if (!set || fp_host_set_lookup(set, name, len, &ci) < 0)
            continue;
        const struct fp_cands *c = &t->cands[ci];
        for (int i = 0; i < c->n && n < FP_MAX_CANDS; i++) {
            const struct fp_rule *r = &t->rules[c->rules[i]];
            uint32_t plen = 0;
            if (r->only && fp_cidr_set_lookup(r->only, family, addr, &plen) < 0)
                continue;
            struct pick k = {c->rules[i], r->only ? 0 : 1, (int)plen, wild};
            int j = n++;
            while (j > 0 && pick_before(&k, &picks[j - 1])) {
                picks[j] = picks[j - 1];
                j--;
            }
            picks[j] = k;
        }
    }
    return n;
}

int fp_table_decide_sni(const fp_table *t, const struct sockaddr *dst, const char *sni,
                        size_t sni_len, struct fp_verdict *v)
{
    struct dst_view q;
    const struct fp_port_rules *p;
    if (begin(t, dst, v, &q, &p) < 0)
        return -EINVAL;
    struct pick picks[FP_MAX_CANDS];
    v->action = fallback(t, p);
    v->reason = sni_len ? FP_WHY_SNI : FP_WHY_NO_SNI;
    if (p && host_picks(t, p, 0, q.family, q.addr, sni, sni_len, picks) > 0) {
        v->action = FP_ACT_ALLOW;
        v->rule = picks[0].rule;
        v->reason = FP_WHY_NONE;
    }
    return 0;
}

static int route_matches(const struct fp_route *rt, const uint8_t *head, const struct fp_http_req *req)
{
    if (!(rt->methods & (1u << req->method)))
        return 0;
    if (req->method == FP_HTTP_CONNECT && rt->methods == 0xFFFFFFFFu) /* tunnels: named only */
        return 0;
    if (rt->path && !fp_re_search(rt->path, head + req->path_off, req->path_len))
        return 0;
    for (int i = 0; i < rt->nheaders; i++) {
        struct fp_http_iter it;
        const uint8_t *name, *val;
        size_t nlen, vlen;
        int ok = 0;
        fp_http_iter_init(&it, req->headers_off);
        while (!ok && fp_http_header_next(head, req->head_len, &it, &name, &nlen, &val, &vlen))
            ok = fp_ascii_caseeq((const char *)name, nlen, rt->hnames[i], rt->hname_lens[i]) &&
                 fp_re_search(rt->hre[i], val, vlen);
        if (!ok)
            return 0;
    }
    return 1;
}

int fp_table_decide_http(const fp_table *t, const struct sockaddr *dst, const uint8_t *head,
                         const struct fp_http_req *req, struct fp_verdict *v)
{
    struct dst_view q;
    const struct fp_port_rules *p;
    if (begin(t, dst, v, &q, &p) < 0)
        return -EINVAL;
    v->action = fallback(t, p);
    v->reason = FP_WHY_HOST;
    if (!p || (req->port >= 0 && req->port != q.port))
        return 0;
    /* The head parser already dropped one trailing dot of the Host; one more ("httpbin.test..")
     * is another name, which the lookup (that drops one dot itself) must not see as ours. */
    const char *host = (const char *)head + req->host_off;
    size_t host_len = req->host_len;
    if (host_len && host[host_len - 1] == '.')
        return 0;
    struct pick picks[FP_MAX_CANDS];
    int n = host_picks(t, p, 1, q.family, q.addr, host, host_len, picks);
    for (int k = 0; k < n; k++) {
        const struct fp_rule *r = &t->rules[picks[k].rule];
        int ok = r->nroutes == 0 && req->method != FP_HTTP_CONNECT; /* CONNECT: a route names it */
        for (int i = 0; i < r->nroutes && !ok; i++)
            ok = route_matches(&r->routes[i], head, req);
        if (ok) {
            v->action = FP_ACT_ALLOW;
            v->rule = picks[k].rule;
            v->reason = FP_WHY_NONE;
            return 0;
        }
    }
    if (n > 0)
        v->reason = FP_WHY_ROUTE;
    return 0;
}

/* Contract: returns a new reference to the engine's current table (never NULL once the engine
 * exists). The mutex makes load + ref atomic against fp_engine_set_table's unref. */
fp_table *fp_table_acquire(struct fp_engine *e)
{
    pthread_mutex_lock(&e->tlock);
    fp_table *t = e->table;
    fp_table_ref(t);
    pthread_mutex_unlock(&e->tlock);
    return t;
}

/* Contract: the connect timeout (ms) for a connection under `rule` (-1: none). */
int fp_table_connect_ms(const fp_table *t, int rule)
{
    const struct fp_rule *r = rule_at(t, rule);
    return r && r->connect_ms ? r->connect_ms : t->connect_ms;
}

/* The counter a connection under rule r (id `rule`) of t counts against: its setting's slot in
 * the shared fp_limits (survives reloads), else the table's own per-rule counter. */
static int *rule_counter(fp_table *t, const struct fp_rule *r, int rule)
{
    if (r->limit_slot >= 0 && t->limits)
        return &t->limits->chunks[r->limit_slot / FP_LIMITS_CHUNK][r->limit_slot % FP_LIMITS_CHUNK];
    return &t->rule_active[rule];
}

/* Contract: counts a connection under `rule` against its limit. Returns 0, or -EUSERS when the
 * rule's limit is reached (nothing counted). rule < 0 is always admitted. */
int fp_table_rule_admit(fp_table *t, int rule)
{
    const struct fp_rule *r = rule_at(t, rule);
    if (!r)
        return 0;
    int *c = rule_counter(t, r, rule);
    int n = __atomic_add_fetch(c, 1, __ATOMIC_RELAXED);
    if (r->max_conns && n > r->max_conns) {
        __atomic_sub_fetch(c, 1, __ATOMIC_RELAXED);
        return -EUSERS;
    }
    return 0;
}

/* Contract: undoes one fp_table_rule_admit(t, rule) that returned 0. */
void fp_table_rule_release(fp_table *t, int rule)
{
    const struct fp_rule *r = rule_at(t, rule);
    if (r)
        __atomic_sub_fetch(rule_counter(t, r, rule), 1, __ATOMIC_RELAXED);
}

/* ---- connection-limit counters shared across tables ---------------------------------------- */

fp_limits *fp_limits_new(void)
{
    fp_limits *l = calloc(1, sizeof(*l));
    if (l)
        l->refs = 1;
    return l;
}

void fp_limits_ref(fp_limits *l)
{
    __atomic_add_fetch(&l->refs, 1, __ATOMIC_RELAXED);
}

void fp_limits_unref(fp_limits *l)
{
    if (!l || __atomic_sub_fetch(&l->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    for (int i = 0; i < FP_LIMITS_MAX_CHUNKS && l->chunks[i]; i++)
        free(l->chunks[i]);
    free(l);
}

int fp_limits_add(fp_limits *l)
{
    int slot = l->n;
    int chunk = slot / FP_LIMITS_CHUNK;
    if (chunk >= FP_LIMITS_MAX_CHUNKS)
        return -ENOSPC;
    if (!l->chunks[chunk]) {
        int *c = calloc(FP_LIMITS_CHUNK, sizeof(int));
        if (!c)
            return -ENOMEM;
        __atomic_store_n(&l->chunks[chunk], c, __ATOMIC_RELEASE);
    }
    l->n++;
    return slot;
}

int fp_limits_active(const fp_limits *l, int slot)
{
    if (slot < 0 || slot >= l->n)
        return -EINVAL;
    return __atomic_load_n(&l->chunks[slot / FP_LIMITS_CHUNK][slot % FP_LIMITS_CHUNK],
                           __ATOMIC_RELAXED);
}

int fp_table_set_limits(fp_table *t, fp_limits *l)
{
    if (t->built)
        return -EBUSY;
    if (!l)
        return -EINVAL;
    fp_limits_ref(l);
    fp_limits_unref(t->limits);
    t->limits = l;
    return 0;
}

int fp_table_rule_set_limit(fp_table *t, int rule, int slot)
{
    struct fp_rule *r = rule_at(t, rule);
    if (t->built)
        return -EBUSY;
    if (!r || !t->limits || slot < 0 || slot >= t->limits->n)
        return -EINVAL;
    r->limit_slot = slot;
    return 0;
}

/* Contract: the upstream addresses of `rule`. Returns 0 (dial the original destination), 1 (dial
 * one of *ups[0..*n); *n may be 0: nothing resolved, refuse). */
int fp_table_rule_upstreams(const fp_table *t, int rule, const struct sockaddr_storage **ups, int *n)
{
    const struct fp_rule *r = rule_at(t, rule);
    *n = r ? r->nups : 0;
    *ups = r ? r->ups : NULL;
    return r ? r->redirect : 0;
}
