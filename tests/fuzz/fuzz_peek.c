/* libFuzzer harness for src_c/fp_peek.c (see README.md beside it for the commands).
 *
 * Input: one selector byte, then the bytes handed to a parser.
 *   selector & 3 == 0  fp_peek_tls_sni; with selector & 4: fp_peek_tls_server_hello and
 *                      fp_peek_tls_skip_ccs instead
 *                   1  fp_peek_http_request (+ header iteration)
 *                   2  fp_peek_http_response, request flags = (selector >> 2) & 7
 *                   3  fp_chunked_feed: whole, cut at a point taken from the selector, byte by byte
 * Besides crashes and sanitizer reports it traps on broken invariants: offsets outside the input,
 * a complete message that parses differently once cut to its own length, a valid message that is
 * not NEED_MORE one byte short, pieces that frame a chunked body differently from the whole.
 * Prefixes are re-parsed from exact-size heap copies so that ASan sees any read past their end.
 */
#include "fp_peek.h"

#include <stdlib.h>
#include <string.h>

#define CHECK(x) do { if (!(x)) __builtin_trap(); } while (0)

static uint8_t *dup_prefix(const uint8_t *p, size_t n)
{
    uint8_t *c = malloc(n ? n : 1);
    CHECK(c != NULL);
    if (n)
        memcpy(c, p, n);
    return c;
}

static int valid_rc(int rc)
{
    return rc == FP_PEEK_OK || rc == FP_PEEK_NEED_MORE || rc == FP_PEEK_NOT_THIS_PROTOCOL ||
           rc == FP_PEEK_TOO_LARGE || rc == FP_PEEK_ERROR;
}

static void fuzz_tls(const uint8_t *buf, size_t len)
{
    char out[FP_PEEK_SNI_MAX + 2];
    struct fp_tls_hello res;
    int rc = fp_peek_tls_sni(buf, len, out, sizeof(out), &res);
    CHECK(valid_rc(rc));
    if (rc == FP_PEEK_FOUND) {
        CHECK(res.sni_len == strlen(out) && res.sni_len <= FP_PEEK_SNI_MAX);
        CHECK(res.has_sni == (res.sni_len > 0));
        for (size_t i = 0; i < res.sni_len; i++) {
            char c = out[i];
            CHECK((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
                  c == '.');
        }
        CHECK(res.hello_end >= 9 && res.hello_end <= len && res.hello_end <= FP_PEEK_TLS_CAP);
        char out2[FP_PEEK_SNI_MAX + 2];
        struct fp_tls_hello r2;
        uint8_t *c = dup_prefix(buf, res.hello_end);
        CHECK(fp_peek_tls_sni(c, res.hello_end, out2, sizeof(out2), &r2) == FP_PEEK_FOUND);
        CHECK(strcmp(out, out2) == 0 && r2.hello_end == res.hello_end);
        CHECK(fp_peek_tls_sni(c, res.hello_end - 1, out2, sizeof(out2), &r2) == FP_PEEK_NEED_MORE);
        free(c);
        /* a too-small output buffer is an error, never an overflow */
        char small[4];
        int rs = fp_peek_tls_sni(buf, len, small, sizeof(small), &r2);
        CHECK(rs == FP_PEEK_FOUND || rs == FP_PEEK_ERROR);
        CHECK(strlen(small) < sizeof(small));
        if (rs == FP_PEEK_FOUND)
            CHECK(strcmp(small, out) == 0);
        if (!res.has_sni)
            CHECK(rs == FP_PEEK_FOUND);
        if (res.sni_len >= sizeof(small))
            CHECK(rs == FP_PEEK_ERROR);
    } else {
        CHECK(out[0] == '\0' && res.sni_len == 0);
        if (rc == FP_PEEK_NEED_MORE)
            CHECK(res.need > len && res.need <= FP_PEEK_TLS_CAP);
        else
            CHECK(res.why != NULL);
    }
}

static size_t count_headers(const uint8_t *buf, size_t head_len, size_t headers_off)
{
    struct fp_http_iter it;
    const uint8_t *n, *v;
    size_t nl, vl, count = 0;
    fp_http_iter_init(&it, headers_off);
    while (fp_http_header_next(buf, head_len, &it, &n, &nl, &v, &vl)) {
        CHECK(n >= buf && n + nl <= buf + head_len && nl > 0);
        CHECK(v >= buf && v + vl <= buf + head_len);
        count++;
    }
    return count;
}

static void fuzz_request(const uint8_t *buf, size_t len)
{
    struct fp_http_req r;
    int rc = fp_peek_http_request(buf, len, &r);
    CHECK(valid_rc(rc));
    if (rc != FP_PEEK_OK) {
        CHECK(rc == FP_PEEK_NEED_MORE || r.why != NULL);
        return;
    }
    size_t end = r.head_len;
    CHECK(end <= len && end <= FP_PEEK_HTTP_CAP);
    CHECK(r.method_off + r.method_len <= end && r.method_len > 0);
    CHECK(r.target_off + r.target_len <= end && r.target_len > 0);
    CHECK(r.path_off + r.path_len <= end);
    CHECK(r.host_off + r.host_len <= end);
    CHECK(r.query_off == 0 || (r.query_off < end && buf[r.query_off] == '?'));
    CHECK(r.headers_off <= end);
    CHECK(r.port >= -1 && r.port <= 65535);
    CHECK(r.body <= FP_BODY_CHUNKED && r.version_minor <= 1);
    CHECK(count_headers(buf, end, r.headers_off) == r.nheaders);
    struct fp_http_req r2;
    uint8_t *c = dup_prefix(buf, end);
    CHECK(fp_peek_http_request(c, end, &r2) == FP_PEEK_OK);
    CHECK(memcmp(&r, &r2, sizeof(r)) == 0);
    CHECK(fp_peek_http_request(c, end - 1, &r2) == FP_PEEK_NEED_MORE);
    free(c);
}

static void fuzz_response(const uint8_t *buf, size_t len, unsigned flags)
{
    struct fp_http_resp r;
    int rc = fp_peek_http_response(buf, len, flags, &r);
    CHECK(valid_rc(rc));
    if (rc != FP_PEEK_OK) {
        CHECK(rc == FP_PEEK_NEED_MORE || r.why != NULL);
        return;
    }
    size_t end = r.head_len;
    CHECK(end <= len && end <= FP_PEEK_HTTP_CAP);
    CHECK(r.reason_off + r.reason_len <= end && r.headers_off <= end);
    CHECK(r.status >= 100 && r.status <= 999 && r.body <= FP_BODY_TUNNEL);
    CHECK(!(flags & FP_HTTP_RESP_TO_HEAD) || r.body == FP_BODY_NONE || r.body == FP_BODY_TUNNEL);
    CHECK(count_headers(buf, end, r.headers_off) == r.nheaders);
    struct fp_http_resp r2;
    uint8_t *c = dup_prefix(buf, end);
    CHECK(fp_peek_http_response(c, end, flags, &r2) == FP_PEEK_OK);
    CHECK(memcmp(&r, &r2, sizeof(r)) == 0);
    CHECK(fp_peek_http_response(c, end - 1, flags, &r2) == FP_PEEK_NEED_MORE);
    free(c);
}

/* Feeds buf in pieces ending at the given cut points; returns the total consumed or the error. */
static ssize_t chunked_run(const uint8_t *buf, size_t len, const size_t *cuts, size_t ncuts,
                           struct fp_chunked *st)
{
    fp_chunked_init(st);
    size_t pos = 0;
    ssize_t total = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : len;
        if (end < pos)
            end = pos;
        uint8_t *c = dup_prefix(buf + pos, end - pos);
        ssize_t n = fp_chunked_feed(st, c, end - pos);
        free(c);
        if (n < 0)
            return n;
        CHECK((size_t)n <= end - pos);
        CHECK((size_t)n == end - pos || st->done);
        total += n;
        pos = end;
    }
    CHECK((uint64_t)total == st->body_bytes && st->data_bytes <= st->body_bytes);
    return total;
}

static void fuzz_chunked(const uint8_t *buf, size_t len, uint8_t sel)
{
    struct fp_chunked a, b, c;
    ssize_t whole = chunked_run(buf, len, NULL, 0, &a);
    CHECK(whole >= 0 || whole == FP_PEEK_ERROR || whole == FP_PEEK_TOO_LARGE);
    size_t cut = len ? ((size_t)sel * 2654435761u) % (len + 1) : 0;
    ssize_t split = chunked_run(buf, len, &cut, 1, &b);
    CHECK(split == whole && a.done == b.done && a.data_bytes == b.data_bytes);
    if (len <= 4096) {
        size_t cuts[4096];
        for (size_t i = 0; i < len; i++)
            cuts[i] = i + 1;
        ssize_t bytewise = chunked_run(buf, len, cuts, len, &c);
        CHECK(bytewise == whole && a.done == c.done && a.data_bytes == c.data_bytes);
    }
}

/* The server's first message: a verdict never changes once reached, and a prefix one byte
 * short of where the verdict came is NEED_MORE. skip_ccs stays inside the input. */
static void fuzz_server_hello(const uint8_t *buf, size_t len)
{
    struct fp_tls_server_hello res;
    int rc = fp_peek_tls_server_hello(buf, len, &res);
    CHECK(valid_rc(rc) && rc != FP_PEEK_TOO_LARGE);
    if (rc == FP_PEEK_NEED_MORE)
        CHECK(res.need > len && res.need <= FP_PEEK_TLS_CAP);
    if (rc == FP_PEEK_FOUND) {
        size_t k = len < 256 ? len : 256; /* a verdict needs at most 38 bytes in 39 records */
        struct fp_tls_server_hello r2;
        while (k > 0) {
            uint8_t *c = dup_prefix(buf, k - 1);
            int rc2 = fp_peek_tls_server_hello(c, k - 1, &r2);
            free(c);
            if (rc2 != FP_PEEK_FOUND) {
                CHECK(rc2 == FP_PEEK_NEED_MORE);
                break;
            }
            CHECK(r2.hrr == res.hrr);
            k--;
        }
    }
    ssize_t off = fp_peek_tls_skip_ccs(buf, len);
    CHECK(off == FP_PEEK_NEED_MORE || off == FP_PEEK_ERROR || (off >= 0 && (size_t)off <= len));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t sel = data[0];
    const uint8_t *buf = data + 1;
    size_t len = size - 1;
    switch (sel & 3) {
    case 0:
        if (sel & 4)
            fuzz_server_hello(buf, len);
        else
            fuzz_tls(buf, len);
        break;
    case 1: fuzz_request(buf, len); break;
    case 2: fuzz_response(buf, len, (sel >> 2) & 7); break;
    default: fuzz_chunked(buf, len, sel); break;
    }
    return 0;
}
