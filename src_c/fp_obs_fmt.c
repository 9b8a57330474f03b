/* The access log's line format: one fp_obs_rec as one JSON object on one line.
 *
 * A pure function over a record, so that the drain thread writes lines without building Python
 * objects (about 1 us a record instead of about 15), and so that it can be tested against the
 * reference rendering in tests/accesslog_oracle.py field by field. The text is byte for byte
 * what Python's json.dumps(..., separators=(",", ":")) writes for the same object: keys in the
 * order of the README's access-log table, strings escaped with ensure_ascii (the kept SNI, Host
 * and path bytes are read as Latin-1), duration in milliseconds as Python's repr of
 * round(us / 1000, 3), IPv6 addresses as Python's ipaddress writes them.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>

#include "fp_obs.h"

struct out {
    char *p, *end;
    int full;
};

static void put(struct out *o, const char *s, size_t n)
{
    if (o->full || (size_t)(o->end - o->p) < n) {
        o->full = 1;
        return;
    }
    memcpy(o->p, s, n);
    o->p += n;
}

static void puts_(struct out *o, const char *s)
{
    put(o, s, strlen(s));
}

static void put_u64(struct out *o, uint64_t v)
{
    char b[24];
    int n = snprintf(b, sizeof(b), "%llu", (unsigned long long)v);
    put(o, b, (size_t)n);
}

/* A JSON string of the NUL-terminated bytes s (at most max), each byte one Latin-1 character,
 * escaped as json.dumps does with ensure_ascii. */
static void put_str(struct out *o, const char *s, size_t max)
{
    static const char hex[] = "0123456789abcdef";
    put(o, "\"", 1);
    for (size_t i = 0; i < max && s[i]; i++) {
        unsigned char ch = (unsigned char)s[i];
        char e[6];
        switch (ch) {
        case '"': put(o, "\\\"", 2); continue;
        case '\\': put(o, "\\\\", 2); continue;
        case '\n': put(o, "\\n", 2); continue;
        case '\r': put(o, "\\r", 2); continue;
        case '\t': put(o, "\\t", 2); continue;
        case '\b': put(o, "\\b", 2); continue;
        case '\f': put(o, "\\f", 2); continue;
        }
        if (ch < 0x20 || ch >= 0x7f) { /* json.dumps keeps only " " to "~" */
            e[0] = '\\', e[1] = 'u', e[2] = '0', e[3] = '0';
            e[4] = hex[ch >> 4], e[5] = hex[ch & 15];
            put(o, e, 6);
        } else {
            put(o, (const char *)&ch, 1);
        }
    }
    put(o, "\"", 1);
}

/* An IPv6 address as Python's ipaddress writes it: lower-case hex without leading zeros, the
 * first longest run of two or more zero groups as "::". */
static void put_ip6(struct out *o, const uint8_t a[16])
{
    unsigned g[8];
    for (int i = 0; i < 8; i++)
        g[i] = (unsigned)a[2 * i] << 8 | a[2 * i + 1];
    int best = -1, best_len = 0;
    for (int i = 0; i < 8;) {
        if (g[i]) {
            i++;
            continue;
        }
        int j = i;
        while (j < 8 && !g[j])
            j++;
        if (j - i > best_len)
            best = i, best_len = j - i;
        i = j;
    }
    if (best_len < 2)
        best = -1;
    char b[48];
    int n = 0;
    for (int i = 0; i < 8; i++) {
        if (i == best) {
            n += snprintf(b + n, sizeof(b) - (size_t)n, "::");
            i += best_len - 1;
            continue;
        }
        if (n && b[n - 1] != ':')
            b[n++] = ':';
        n += snprintf(b + n, sizeof(b) - (size_t)n, "%x", g[i]);
    }
    put(o, b, (size_t)n);
}

static void put_endpoint(struct out *o, int family, const uint8_t ip[16], uint16_t port)
{
    char b[24];
    put(o, "\"", 1);
    if (family == 6) {
        put(o, "[", 1);
        put_ip6(o, ip);
        put(o, "]", 1);
    } else {
        int n = snprintf(b, sizeof(b), "%u.%u.%u.%u", ip[0], ip[1], ip[2], ip[3]);
        put(o, b, (size_t)n);
    }
    int n = snprintf(b, sizeof(b), ":%u\"", port);
    put(o, b, (size_t)n);
}

static const char *name_of(const char *const *names, int count, unsigned v, const char *dflt)
{
    return v < (unsigned)count && names[v] ? names[v] : dflt;
}

/* Contract: writes r as one JSON line ending in '\n' into out[0..cap). `by`: the JSON string
 * literal (quotes included) of the object that decided it, or NULL (then a passthrough says
 * "passthrough"). Returns the line's length, or -ENOSPC when cap is too small. */
ssize_t fp_obs_format(const struct fp_obs_rec *r, const struct fp_obs_names *nm, const char *by,
                      char *out, size_t cap)
{
    struct out o = {out, out + cap, 0};
    char b[48];
    time_t secs = (time_t)(r->start_ns / 1000000000u);
    struct tm tm;
    gmtime_r(&secs, &tm);
    size_t n = strftime(b, sizeof(b), "{\"time\":\"%Y-%m-%dT%H:%M:%S", &tm);
    put(&o, b, n);
    n = (size_t)snprintf(b, sizeof(b), ".%06uZ\",\"type\":\"%s\",\"source\":",
                         (unsigned)(r->start_ns % 1000000000u / 1000u),
                         r->kind == FP_REC_HTTP ? "request" : "connection");
    put(&o, b, n);
    put_endpoint(&o, r->family, r->src, r->src_port);
    puts_(&o, ",\"destination\":");
    put_endpoint(&o, r->family, r->dst, r->dst_port);
    const char *action = name_of(nm->action, FP_OBS_ACTIONS, r->action, "undecided");
    puts_(&o, ",\"decision\":\"");
    puts_(&o, r->would_deny ? "would_deny" : action);
    put(&o, "\"", 1);
    if (by) {
        puts_(&o, ",\"by\":");
        puts_(&o, by);
    } else if (!r->would_deny && strcmp(action, "passthrough") == 0) {
        puts_(&o, ",\"by\":\"passthrough\"");
    }
    const char *reason = name_of(nm->reason, FP_OBS_REASONS, r->reason, NULL);
    char reason_num[8];
    if (!reason && r->reason) {
        snprintf(reason_num, sizeof(reason_num), "%u", r->reason);
        reason = reason_num;
    }
    if (reason && reason[0] && (r->would_deny || strcmp(action, "deny") == 0)) {
        puts_(&o, ",\"reason\":");
        put_str(&o, reason, 64);
    }
    if (r->host[0]) {
        puts_(&o, r->tls ? ",\"sni\":" : ",\"host\":");
        put_str(&o, r->host, sizeof(r->host));
    }
    if (r->kind == FP_REC_HTTP) {
        puts_(&o, ",\"method\":");
        put_str(&o, name_of(nm->method, FP_OBS_METHODS, r->method, "OTHER"), 16);
        puts_(&o, ",\"path\":");
        put_str(&o, r->path, sizeof(r->path));
        puts_(&o, ",\"status\":");
        put_u64(&o, r->status);
    }
    puts_(&o, ",\"bytes_sent\":");
    put_u64(&o, r->bytes_c2u);
    puts_(&o, ",\"bytes_received\":");
    put_u64(&o, r->bytes_u2c);
    /* Python's repr of round(us / 1000, 3): the whole milliseconds, then the thousandths
     * without trailing zeros (".0" when there are none) */
    unsigned frac = (unsigned)(r->dur_us % 1000u);
    n = (size_t)snprintf(b, sizeof(b), ",\"duration_ms\":%llu.",
                         (unsigned long long)(r->dur_us / 1000u));
    put(&o, b, n);
    if (frac == 0) {
        put(&o, "0", 1);
    } else {
        n = (size_t)snprintf(b, sizeof(b), "%03u", frac);
        while (n > 1 && b[n - 1] == '0')
            n--;
        put(&o, b, n);
    }
    puts_(&o, ",\"end\":\"");
    char end_num[8];
    const char *end = name_of(nm->end, FP_OBS_ENDS, r->end, NULL);
    if (!end) {
        snprintf(end_num, sizeof(end_num), "%u", r->end);
        end = end_num;
    }
    puts_(&o, end);
    puts_(&o, "\"}\n");
    if (o.full)
        return -ENOSPC;
    return o.p - out;
}
