/* libFuzzer harness for HTTP/1.x message framing over a keep-alive stream (src_c/fp_peek.c):
 * request heads, response heads, Content-Length and chunked bodies, pipelined messages.
 * See README.md beside it for the commands.
 *
 * Input: one selector byte, then a byte stream as one side of a connection sends it.
 *   selector & 1 == 0  a client's stream: pipelined requests (fp_peek_http_request), each body
 *                      framed by Content-Length or by fp_chunked_feed
 *                   1  a server's stream: responses (fp_peek_http_response) answering requests
 *                      with flags (selector >> 1) & 7 (FP_HTTP_RESP_TO_HEAD, _CONNECT, _UPGRADE);
 *                      1xx interim responses, close-delimited bodies and tunnels as the relay
 *                      reads them
 *   selector >> 4      where the stream is cut in two for the piecewise chunked feed
 * The stream is framed into messages [start, end). Besides crashes and sanitizer reports it traps
 * on broken invariants:
 *   - every message lies inside the stream and messages follow one another without gap;
 *   - pipelining is prefix-stable: the stream cut just after message i frames into exactly
 *     messages 0..i with the same bounds (a parser that peeks past a message's end, or frames
 *     a message differently once the next one is behind it, lets a request hide in another);
 *   - a chunked body framed in two pieces (cut anywhere) ends where it ends when fed whole.
 * Every parse reads an exact-size heap copy so that ASan sees any read past the bytes given.
 */
#include "fp_peek.h"

#include <stdlib.h>
#include <string.h>

#define CHECK(x) do { if (!(x)) __builtin_trap(); } while (0)
#ifdef FP_HTTP_RESP_TO_UPGRADE
#define RESP_FLAGS 7u
#else
#define RESP_FLAGS 3u
#endif
#define MAX_MSGS 64

enum { END_EMPTY, END_INCOMPLETE, END_REJECTED, END_OPEN };

struct msg {
    size_t start, head_end, end;
    int body;
};

static int same(const struct msg *a, const struct msg *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (a[i].start != b[i].start || a[i].head_end != b[i].head_end || a[i].end != b[i].end ||
            a[i].body != b[i].body)
            return 0;
    return 1;
}

static uint8_t *dup_bytes(const uint8_t *p, size_t n)
{
    uint8_t *c = malloc(n ? n : 1);
    CHECK(c != NULL);
    if (n)
        memcpy(c, p, n);
    return c;
}

/* Frames a chunked body starting at buf[0..len), fed whole or in two pieces cut at `cut`.
 * Returns its length, -1 when incomplete, -2 when rejected. */
static long long chunked_body(const uint8_t *buf, size_t len, size_t cut)
{
    struct fp_chunked st;
    fp_chunked_init(&st);
    size_t pos = 0;
    size_t ends[2] = {cut < len ? cut : len, len};
    for (int i = 0; i < 2 && !st.done; i++) {
        uint8_t *c = dup_bytes(buf + pos, ends[i] - pos);
        ssize_t n = fp_chunked_feed(&st, c, ends[i] - pos);
        free(c);
        if (n < 0) {
            CHECK(n == FP_PEEK_ERROR || n == FP_PEEK_TOO_LARGE);
            return -2;
        }
        CHECK((size_t)n <= ends[i] - pos);
        pos += (size_t)n;
    }
    CHECK(pos == st.body_bytes && st.data_bytes <= st.body_bytes);
    return st.done ? (long long)pos : -1;
}

/* Splits buf[0..len) into messages; returns how many and sets *how to the way it stopped. */
static size_t frame(const uint8_t *buf, size_t len, int response, unsigned req_flags, size_t cut,
                    struct msg *msgs, int *how)
{
    size_t pos = 0, n = 0;
    *how = END_EMPTY;
    while (pos < len && n < MAX_MSGS) {
        uint8_t *c = dup_bytes(buf + pos, len - pos);
        size_t head = 0;
        uint64_t clen = 0;
        int body = FP_BODY_NONE, rc;
        if (response) {
            struct fp_http_resp r;
            rc = fp_peek_http_response(c, len - pos, req_flags, &r);
            if (rc == FP_PEEK_OK) {
                head = r.head_len;
                body = r.body;
                clen = r.content_length;
                CHECK(!(r.flags & FP_HTTP_F_INTERIM) || body == FP_BODY_NONE);
            }
        } else {
            struct fp_http_req r;
            rc = fp_peek_http_request(c, len - pos, &r);
            if (rc == FP_PEEK_OK) {
                head = r.head_len;
                body = r.body;
                clen = r.content_length;
                CHECK(body <= FP_BODY_CHUNKED);
            }
        }
        free(c);
        if (rc == FP_PEEK_NEED_MORE) {
            *how = END_INCOMPLETE;
            return n;
        }
        if (rc != FP_PEEK_OK) {
            *how = END_REJECTED;
            return n;
        }
        CHECK(head > 0 && head <= len - pos && head <= FP_PEEK_HTTP_CAP);
        size_t body_at = pos + head, end;
        if (body == FP_BODY_NONE) {
            end = body_at;
        } else if (body == FP_BODY_LENGTH) {
            if (clen > len - body_at) {
                *how = END_INCOMPLETE;
                return n;
            }
            end = body_at + (size_t)clen;
        } else if (body == FP_BODY_CHUNKED) {
            size_t rel = cut > body_at ? cut - body_at : 0;
            long long b = chunked_body(buf + body_at, len - body_at, rel);
            if (b < 0) {
                *how = b == -1 ? END_INCOMPLETE : END_REJECTED;
                return n;
            }
            end = body_at + (size_t)b;
        } else {                      /* close-delimited or tunnel: the rest of the stream */
            CHECK(response);
            end = len;
        }
        msgs[n].start = pos;
        msgs[n].head_end = body_at;
        msgs[n].end = end;
        msgs[n].body = body;
        n++;
        if (end == len && (body == FP_BODY_CLOSE || body == FP_BODY_TUNNEL)) {
            *how = END_OPEN;
            return n;
        }
        pos = end;
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t sel = data[0];
    int response = sel & 1;
    unsigned req_flags = (sel >> 1) & RESP_FLAGS;
    const uint8_t *buf = data + 1;
    size_t len = size - 1;
    size_t cut = len ? ((size_t)(sel >> 4) * 2654435761u) % (len + 1) : 0;

    struct msg msgs[MAX_MSGS], again[MAX_MSGS];
    int how, how2;
    size_t n = frame(buf, len, response, req_flags, cut, msgs, &how);
    for (size_t i = 0; i < n; i++) {
        CHECK(msgs[i].start < msgs[i].head_end && msgs[i].head_end <= msgs[i].end);
        CHECK(msgs[i].end <= len);
        CHECK(i == 0 ? msgs[i].start == 0 : msgs[i].start == msgs[i - 1].end);
    }
    /* the same stream fed whole to the chunked framer must frame identically */
    size_t m = frame(buf, len, response, req_flags, len, again, &how2);
    CHECK(m == n && how2 == how);
    CHECK(same(msgs, again, n));
    /* pipelining is prefix-stable */
    for (size_t i = 0; i < n; i++) {
        if (msgs[i].body == FP_BODY_CLOSE || msgs[i].body == FP_BODY_TUNNEL)
            break;
        uint8_t *c = dup_bytes(buf, msgs[i].end);
        m = frame(c, msgs[i].end, response, req_flags, cut, again, &how2);
        free(c);
        CHECK(m == i + 1 && how2 == END_EMPTY);
        CHECK(same(msgs, again, m));
    }
    return 0;
}
