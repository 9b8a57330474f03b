/* fastproxy peek parsers: TLS ClientHello SNI, HTTP/1.x heads, chunked framing. See fp_peek.h for
 * the contracts and the smuggling rules. No function here allocates, does I/O or keeps state
 * outside the structs it is handed.
 */
#include "fp_peek.h"

#include <string.h>

const char *fp_peek_rc_name(int rc)
{
    switch (rc) {
    case FP_PEEK_OK: return "ok";
    case FP_PEEK_NEED_MORE: return "need-more";
    case FP_PEEK_NOT_THIS_PROTOCOL: return "not-this-protocol";
    case FP_PEEK_TOO_LARGE: return "too-large";
    case FP_PEEK_ERROR: return "error";
    default: return "unknown";
    }
}

static inline uint8_t lower(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + 32) : c;
}

/* ================================================================================================
 * TLS ClientHello
 *
 * The ClientHello is read as one "handshake stream" made of the payloads of consecutive handshake
 * records. struct tls_rd walks that stream in place: `pos` is the next byte in buf, `rec_end` the
 * end of the current record's payload in buf (possibly beyond len), `spos` the offset in the
 * handshake stream. Containers (the ClientHello, the extension block, one extension, the name
 * list) are bounds in stream offsets; every length is checked against its container before the
 * bytes are read, so a lying length is an error even before its bytes have arrived.
 * ============================================================================================== */

struct tls_rd {
    const uint8_t *buf;
    size_t len;        /* bytes available in buf */
    size_t pos;        /* next payload byte in buf */
    size_t rec_end;    /* end of the current record payload in buf */
    size_t spos;       /* offset in the handshake stream */
    struct fp_tls_hello *res;
};

#define TLS_REC_MAX 16384u   /* plaintext record payload limit (RFC 8446 5.1) */

/* Makes at least one payload byte available at r->pos, crossing into the next record when the
 * current one is used up. Returns 0 or a negative FP_PEEK_* code with res->need / res->why set. */
static int tls_avail(struct tls_rd *r)
{
    struct fp_tls_hello *res = r->res;
    if (r->pos == r->rec_end) {
        size_t h = r->rec_end;
        if (h + 5 > FP_PEEK_TLS_CAP) {
            res->why = "ClientHello continues beyond the 64 KiB cap";
            return FP_PEEK_TOO_LARGE;
        }
        if (r->len < h + 5) {
            res->need = h + 5;
            res->why = "record header incomplete";
            return FP_PEEK_NEED_MORE;
        }
        const uint8_t *p = r->buf + h;
        if (p[0] != 22) {
            res->why = "non-handshake record inside the ClientHello";
            return FP_PEEK_ERROR;
        }
        if (p[1] != 3) {
            res->why = "record version is not 3.x";
            return FP_PEEK_ERROR;
        }
        size_t rl = ((size_t)p[3] << 8) | p[4];
        if (rl == 0) {
            res->why = "empty handshake record";
            return FP_PEEK_ERROR;
        }
        if (rl > TLS_REC_MAX) {
            res->why = "record longer than 2^14";
            return FP_PEEK_ERROR;
        }
        r->pos = h + 5;
        r->rec_end = h + 5 + rl;
        res->records++;
    }
    if (r->pos >= r->len) {
        if (r->pos >= FP_PEEK_TLS_CAP) {
            res->why = "ClientHello continues beyond the 64 KiB cap";
            return FP_PEEK_TOO_LARGE;
        }
        res->need = r->rec_end < FP_PEEK_TLS_CAP ? r->rec_end : FP_PEEK_TLS_CAP;
        res->why = "record incomplete";
        return FP_PEEK_NEED_MORE;
    }
    return 0;
}

/* Reads a big-endian integer of n (1..3) bytes. Returns 0 or a negative FP_PEEK_* code. */
static int tls_uint(struct tls_rd *r, unsigned n, uint32_t *v)
{
    uint32_t x = 0;
    for (unsigned i = 0; i < n; i++) {
        int rc = tls_avail(r);
        if (rc)
            return rc;
        x = (x << 8) | r->buf[r->pos++];
        r->spos++;
    }
    *v = x;
    return 0;
}

/* Skips n stream bytes. Returns 0 or a negative FP_PEEK_* code. */
static int tls_skip(struct tls_rd *r, size_t n)
{
    while (n) {
        int rc = tls_avail(r);
        if (rc)
            return rc;
        size_t take = r->rec_end - r->pos;
        if (take > r->len - r->pos)
            take = r->len - r->pos;
        if (take > n)
            take = n;
        r->pos += take;
        r->spos += take;
        n -= take;
    }
    return 0;
}

/* Checks that a field of n bytes starting at the current stream offset fits in the container
 * ending at `limit`. */
static int tls_fits(struct tls_rd *r, size_t n, size_t limit, const char *what)
{
    if (r->spos + n > limit) {
        r->res->why = what;
        return FP_PEEK_ERROR;
    }
    return 0;
}

/* Copies a host_name of n bytes into out, lower-cased and validated (letters, digits, '-', '.',
 * '_', no empty label, labels <= 63). Strips one trailing dot. Returns 0 or a FP_PEEK_* code. */
static int tls_name(struct tls_rd *r, size_t n, char *out, size_t outcap)
{
    struct fp_tls_hello *res = r->res;
    if (n == 0) {
        res->why = "empty host_name";
        return FP_PEEK_ERROR;
    }
    if (n > FP_PEEK_SNI_MAX + 1) {
        res->why = "host_name longer than 253";
        return FP_PEEK_ERROR;
    }
    if (outcap == 0 || n > outcap - 1) {
        res->why = "host_name does not fit the output buffer";
        return FP_PEEK_ERROR;
    }
    size_t label = 0;
    for (size_t i = 0; i < n; i++) {
        int rc = tls_avail(r);
        if (rc)
            return rc;
        uint8_t c = lower(r->buf[r->pos++]);
        r->spos++;
        if (c == '.') {
            if (label == 0) {
                res->why = "empty label in host_name";
                return FP_PEEK_ERROR;
            }
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_') {
            if (++label > 63) {
                res->why = "label longer than 63 in host_name";
                return FP_PEEK_ERROR;
            }
        } else {
            res->why = "invalid character in host_name";
            return FP_PEEK_ERROR;
        }
        out[i] = (char)c;
    }
    if (out[n - 1] == '.')
        n--;
    if (n > FP_PEEK_SNI_MAX) {
        res->why = "host_name longer than 253";
        return FP_PEEK_ERROR;
    }
    out[n] = '\0';
    res->sni_len = n;
    return 0;
}

/* server_name extension body of elen bytes (RFC 6066 section 3). */
static int tls_server_name(struct tls_rd *r, size_t elen, char *out, size_t outcap)
{
    struct fp_tls_hello *res = r->res;
    size_t ext_end = r->spos + elen;
    uint32_t list_len;
    int rc;
    if ((rc = tls_fits(r, 2, ext_end, "server_name extension too short")))
        return rc;
    if ((rc = tls_uint(r, 2, &list_len)))
        return rc;
    if (list_len == 0 || r->spos + list_len != ext_end) {
        res->why = "server_name list length does not match its extension";
        return FP_PEEK_ERROR;
    }
    while (r->spos < ext_end) {
        uint32_t type, nlen;
        if ((rc = tls_fits(r, 3, ext_end, "server_name entry overflows its list")))
            return rc;
        if ((rc = tls_uint(r, 1, &type)) || (rc = tls_uint(r, 2, &nlen)))
            return rc;
        if ((rc = tls_fits(r, nlen, ext_end, "host_name overflows its list")))
            return rc;
        if (type == 0) {
            if (res->has_sni) {
                res->why = "more than one host_name";
                return FP_PEEK_ERROR;
            }
            if ((rc = tls_name(r, nlen, out, outcap)))
                return rc;
            res->has_sni = 1;
        } else if ((rc = tls_skip(r, nlen))) {
            return rc;
        }
    }
    return 0;
}

/* supported_versions extension body (client form, RFC 8446 4.2.1). */
static int tls_supported_versions(struct tls_rd *r, size_t elen)
{
    size_t ext_end = r->spos + elen;
    uint32_t vlen, ver;
    int rc;
    if ((rc = tls_fits(r, 1, ext_end, "supported_versions too short")))
        return rc;
    if ((rc = tls_uint(r, 1, &vlen)))
        return rc;
    if (r->spos + vlen != ext_end || vlen < 2 || (vlen & 1)) {
        r->res->why = "supported_versions length does not match its extension";
        return FP_PEEK_ERROR;
    }
    while (r->spos < ext_end) {
        if ((rc = tls_uint(r, 2, &ver)))
            return rc;
        if (ver == 0x0304)
            r->res->tls13 = 1;
    }
    return 0;
}

static int tls_hello(struct tls_rd *r, char *out, size_t outcap)
{
    struct fp_tls_hello *res = r->res;
    const uint8_t *buf = r->buf;
    size_t len = r->len;
    uint32_t v, hlen;
    int rc;

    /* First record header, byte by byte so that non-TLS is recognised from the first byte. */
    if (len >= 1 && buf[0] != 22) {
        res->why = (buf[0] & 0x80) ? "SSLv2-style hello or not TLS" : "not a TLS handshake record";
        return FP_PEEK_NOT_THIS_PROTOCOL;
    }
    if (len >= 2 && buf[1] != 3) {
        res->why = "record version is not 3.x";
        return FP_PEEK_NOT_THIS_PROTOCOL;
    }
    if (len >= 3 && buf[2] > 4) {
        res->why = "record version is not 3.0..3.4";
        return FP_PEEK_NOT_THIS_PROTOCOL;
    }
    if (len >= 3)
        res->record_version = (uint16_t)(0x0300 | buf[2]);

    /* Handshake header. */
    if ((rc = tls_uint(r, 1, &v)))
        return rc;
    if (v != 1) {
        res->why = "first handshake message is not a ClientHello";
        return FP_PEEK_ERROR;
    }
    if ((rc = tls_uint(r, 3, &hlen)))
        return rc;
    res->hello_len = hlen;
    if ((size_t)hlen + 4 + 5 > FP_PEEK_TLS_CAP) {
        res->why = "ClientHello longer than the 64 KiB cap";
        return FP_PEEK_TOO_LARGE;
    }
    size_t end = r->spos + hlen;
    /* legacy_version(2) random(32) session_id(1+) cipher_suites(2+2) compression(1+1) */
    if (hlen < 2 + 32 + 1 + 2 + 2 + 1 + 1) {
        res->why = "ClientHello too short";
        return FP_PEEK_ERROR;
    }
    if ((rc = tls_uint(r, 2, &v)))
        return rc;
    res->client_version = (uint16_t)v;
    if ((v >> 8) != 3) {
        res->why = "ClientHello version is not 3.x";
        return FP_PEEK_ERROR;
    }
    if ((rc = tls_skip(r, 32)))                              /* random */
        return rc;
    if ((rc = tls_uint(r, 1, &v)))                           /* session id */
        return rc;
    if (v > 32) {
        res->why = "session id longer than 32";
        return FP_PEEK_ERROR;
    }
    if ((rc = tls_fits(r, v, end, "session id overflows the ClientHello")) || (rc = tls_skip(r, v)))
        return rc;
    if ((rc = tls_fits(r, 2, end, "cipher suites overflow the ClientHello")) ||
        (rc = tls_uint(r, 2, &v)))
        return rc;
    if (v < 2 || (v & 1)) {
        res->why = "cipher suites length empty or odd";
        return FP_PEEK_ERROR;
    }
    if ((rc = tls_fits(r, v, end, "cipher suites overflow the ClientHello")) ||
        (rc = tls_skip(r, v)))
        return rc;
    if ((rc = tls_fits(r, 1, end, "compression methods overflow the ClientHello")) ||
        (rc = tls_uint(r, 1, &v)))
        return rc;
    if (v < 1) {
        res->why = "no compression method";
        return FP_PEEK_ERROR;
    }
    if ((rc = tls_fits(r, v, end, "compression methods overflow the ClientHello")) ||
        (rc = tls_skip(r, v)))
        return rc;

    if (r->spos == end)                                      /* no extensions at all */
        goto done;
    if ((rc = tls_fits(r, 2, end, "extensions length overflows the ClientHello")) ||
        (rc = tls_uint(r, 2, &v)))
        return rc;
    if (r->spos + v != end) {
        res->why = "extensions length does not match the ClientHello";
        return FP_PEEK_ERROR;
    }
    int seen_sni = 0;
    while (r->spos < end) {
        uint32_t type, elen;
        if ((rc = tls_fits(r, 4, end, "extension header overflows the extensions")))
            return rc;
        if ((rc = tls_uint(r, 2, &type)) || (rc = tls_uint(r, 2, &elen)))
            return rc;
        if ((rc = tls_fits(r, elen, end, "extension overflows the extensions")))
            return rc;
        if (type == 0) {
            if (seen_sni) {
                res->why = "duplicate server_name extension";
                return FP_PEEK_ERROR;
            }
            seen_sni = 1;
            rc = tls_server_name(r, elen, out, outcap);
        } else if (type == 43) {
            rc = tls_supported_versions(r, elen);
        } else {
            rc = tls_skip(r, elen);
        }
        if (rc)
            return rc;
    }
done:
    res->hello_end = r->pos;
    return FP_PEEK_FOUND;
}

int fp_peek_tls_sni(const uint8_t *buf, size_t len, char *out, size_t outcap,
                    struct fp_tls_hello *res)
{
    memset(res, 0, sizeof(*res));
    if (out && outcap)
        out[0] = '\0';
    struct tls_rd r = { .buf = buf, .len = len, .pos = 0, .rec_end = 0, .spos = 0, .res = res };
    int rc = tls_hello(&r, out, outcap);
    if (rc != FP_PEEK_FOUND) {
        if (out && outcap)
            out[0] = '\0';
        res->sni_len = 0;
        res->has_sni = 0;
        if (rc != FP_PEEK_NEED_MORE)
            res->need = 0;
    } else {
        res->why = NULL;
    }
    return rc;
}

/* ================================================================================================
 * TLS ServerHello: HelloRetryRequest or not
 * ============================================================================================== */

/* SHA-256("HelloRetryRequest"), RFC 8446 section 4.1.3 */
static const uint8_t HRR_RANDOM[32] = {
    0xCF, 0x21, 0xAD, 0x74, 0xE5, 0x9A, 0x61, 0x11, 0xBE, 0x1D, 0x8C, 0x02, 0x1E, 0x65, 0xB8, 0x91,
    0xC2, 0xA2, 0x11, 0x16, 0x7A, 0xBB, 0x8C, 0x5E, 0x07, 0x9E, 0x09, 0xE2, 0xC8, 0xA8, 0x33, 0x9C,
};

int fp_peek_tls_server_hello(const uint8_t *buf, size_t len, struct fp_tls_server_hello *res)
{
    memset(res, 0, sizeof(*res));
    struct fp_tls_hello scratch;
    memset(&scratch, 0, sizeof(scratch));
    struct tls_rd r = { .buf = buf, .len = len, .pos = 0, .rec_end = 0, .spos = 0, .res = &scratch };
    int rc;
    uint32_t v, hlen;
    if (len >= 1 && buf[0] != 22) {
        res->why = "first record is not a handshake record";
        return FP_PEEK_NOT_THIS_PROTOCOL;
    }
    if (len >= 2 && buf[1] != 3) {
        res->why = "record version is not 3.x";
        return FP_PEEK_NOT_THIS_PROTOCOL;
    }
    if ((rc = tls_uint(&r, 1, &v)))
        goto out;
    if (v != 2) {
        res->why = "first handshake message is not a ServerHello";
        return FP_PEEK_ERROR;
    }
    if ((rc = tls_uint(&r, 3, &hlen)))
        goto out;
    if (hlen < 2 + 32) {
        res->why = "ServerHello too short";
        return FP_PEEK_ERROR;
    }
    if ((rc = tls_uint(&r, 2, &v)))
        goto out;
    res->server_version = (uint16_t)v;
    int hrr = 1;
    for (int i = 0; i < 32; i++) {
        if ((rc = tls_uint(&r, 1, &v)))
            goto out;
        hrr &= v == HRR_RANDOM[i];
    }
    res->hrr = (uint8_t)hrr;
    return FP_PEEK_FOUND;
out:
    res->need = rc == FP_PEEK_NEED_MORE ? scratch.need : 0;
    res->why = scratch.why;
    return rc;
}

ssize_t fp_peek_tls_skip_ccs(const uint8_t *buf, size_t len)
{
    size_t off = 0;
    while (off < len && buf[off] == 20) {
        if (len - off < 6)
            return FP_PEEK_NEED_MORE;
        if (buf[off + 1] != 3 || buf[off + 3] != 0 || buf[off + 4] != 1 || buf[off + 5] != 1)
            return FP_PEEK_ERROR;
        off += 6;
    }
    return (ssize_t)off;
}

/* ================================================================================================
 * HTTP/1.x heads
 * ============================================================================================== */

/* tchar (RFC 9110 5.6.2) */
static const uint8_t tchar_tab[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1, ['~'] = 1,
    ['0'] = 1, ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1, ['7'] = 1,
    ['8'] = 1, ['9'] = 1,
    ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1, ['F'] = 1, ['G'] = 1, ['H'] = 1,
    ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1, ['N'] = 1, ['O'] = 1, ['P'] = 1,
    ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1, ['V'] = 1, ['W'] = 1, ['X'] = 1,
    ['Y'] = 1, ['Z'] = 1,
    ['a'] = 1, ['b'] = 1, ['c'] = 1, ['d'] = 1, ['e'] = 1, ['f'] = 1, ['g'] = 1, ['h'] = 1,
    ['i'] = 1, ['j'] = 1, ['k'] = 1, ['l'] = 1, ['m'] = 1, ['n'] = 1, ['o'] = 1, ['p'] = 1,
    ['q'] = 1, ['r'] = 1, ['s'] = 1, ['t'] = 1, ['u'] = 1, ['v'] = 1, ['w'] = 1, ['x'] = 1,
    ['y'] = 1, ['z'] = 1,
};

static inline int is_tchar(uint8_t c) { return tchar_tab[c]; }
static inline int is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
static inline int is_ows(uint8_t c) { return c == ' ' || c == '\t'; }
/* field-vchar / SP / HTAB / obs-text */
static inline int is_fvalue(uint8_t c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

int fp_ascii_caseeq(const char *a, size_t alen, const char *b, size_t blen)
{
    if (alen != blen)
        return 0;
    for (size_t i = 0; i < alen; i++)
        if (lower((uint8_t)a[i]) != lower((uint8_t)b[i]))
            return 0;
    return 1;
}

static int token_eq(const uint8_t *p, size_t n, const char *lit)
{
    return fp_ascii_caseeq((const char *)p, n, lit, strlen(lit));
}

int fp_host_match(const char *pattern, size_t plen, const char *host, size_t hlen)
{
    if (plen && pattern[plen - 1] == '.')
        plen--;
    if (hlen && host[hlen - 1] == '.')
        hlen--;
    if (plen == 0 || hlen == 0)
        return 0;
    if (plen >= 3 && pattern[0] == '*' && pattern[1] == '.') {
        size_t slen = plen - 1;                     /* ".example.com" */
        if (hlen <= slen)
            return 0;
        size_t lab = hlen - slen;                   /* the one extra label */
        if (!fp_ascii_caseeq(pattern + 1, slen, host + lab, slen))
            return 0;
        for (size_t i = 0; i < lab; i++)
            if (host[i] == '.')
                return 0;
        return 1;
    }
    return fp_ascii_caseeq(pattern, plen, host, hlen);
}

/* One line of a head: [s, e) is its content, `next` the offset after its terminator. */
struct line {
    size_t s, e, next;
};

/* Splits the line starting at s, whose LF is known to lie before lim. Returns 0, or FP_PEEK_ERROR
 * for a CR anywhere but right before the LF. */
static int get_line(const uint8_t *buf, size_t s, size_t lim, struct line *ln, const char **why)
{
    const uint8_t *lf = memchr(buf + s, '\n', lim - s);
    size_t e = (size_t)(lf - buf);
    ln->s = s;
    ln->next = e + 1;
    if (e > s && buf[e - 1] == '\r')
        e--;
    ln->e = e;
    if (memchr(buf + s, '\r', e - s)) {
        *why = "bare CR in head";
        return FP_PEEK_ERROR;
    }
    return 0;
}

/* Finds the end of the head that starts at `start` within buf[0..lim): the offset after the
 * blank line, or 0 when it is not there yet. */
static size_t find_head_end(const uint8_t *buf, size_t start, size_t lim)
{
    size_t p = start;
    while (p < lim) {
        const uint8_t *lf = memchr(buf + p, '\n', lim - p);
        if (!lf)
            return 0;
        size_t j = (size_t)(lf - buf) + 1;
        if (j < lim && buf[j] == '\n')
            return j + 1;
        if (j + 1 < lim && buf[j] == '\r' && buf[j + 1] == '\n')
            return j + 2;
        p = j;
    }
    return 0;
}

/* Skips the empty lines allowed before a request line. Returns the offset of the first other
 * byte, or (size_t)-1 when the bytes end inside them (need more), or (size_t)-2 for a CR that is
 * not followed by LF. */
static size_t skip_empty_lines(const uint8_t *buf, size_t lim)
{
    size_t i = 0;
    while (i < lim) {
        if (buf[i] == '\n') {
            i++;
        } else if (buf[i] == '\r') {
            if (i + 1 >= lim)
                return (size_t)-1;
            if (buf[i + 1] != '\n')
                return (size_t)-2;
            i += 2;
        } else {
            return i;
        }
    }
    return (size_t)-1;
}

/* Parses "host[:port]" or "[v6]:port" in [s, e). Empty is allowed (host_len 0). Stores the host
 * without port and without one trailing dot. need_port: a port is mandatory (CONNECT). */
static int parse_authority(const uint8_t *buf, size_t s, size_t e, size_t *host_off,
                           size_t *host_len, int32_t *port, int need_port, const char **why)
{
    size_t hs = s, he;
    size_t i = s;
    *port = -1;
    if (memchr(buf + s, '@', e - s)) {
        *why = "userinfo in authority";
        return FP_PEEK_ERROR;
    }
    if (s == e) {
        *host_off = s;
        *host_len = 0;
        if (need_port) {
            *why = "authority without host";
            return FP_PEEK_ERROR;
        }
        return 0;
    }
    if (buf[s] == '[') {
        i = s + 1;
        while (i < e && buf[i] != ']') {
            uint8_t c = buf[i];
            if (!(is_digit(c) || (lower(c) >= 'a' && lower(c) <= 'f') || c == ':' || c == '.')) {
                *why = "invalid character in IPv6 literal host";
                return FP_PEEK_ERROR;
            }
            i++;
        }
        if (i == e || i == s + 1) {
            *why = "unterminated or empty IPv6 literal host";
            return FP_PEEK_ERROR;
        }
        i++;                                    /* past ']' */
        he = i;
        if (i < e && buf[i] != ':') {
            *why = "junk after IPv6 literal host";
            return FP_PEEK_ERROR;
        }
    } else {
        while (i < e && buf[i] != ':') {
            uint8_t c = lower(buf[i]);
            if (!((c >= 'a' && c <= 'z') || is_digit(c) || c == '-' || c == '.' || c == '_')) {
                *why = "invalid character in host";
                return FP_PEEK_ERROR;
            }
            i++;
        }
        he = i;
        if (he > hs && buf[he - 1] == '.')
            he--;
        if (he == hs) {
            *why = "empty host before port or lone dot";
            return FP_PEEK_ERROR;
        }
    }
    if (i < e) {                                /* buf[i] == ':' */
        i++;
        if (i == e) {
            if (need_port) {
                *why = "authority without port";
                return FP_PEEK_ERROR;
            }
        } else {
            uint32_t p = 0;
            if (e - i > 5) {
                *why = "port out of range";
                return FP_PEEK_ERROR;
            }
            for (; i < e; i++) {
                if (!is_digit(buf[i])) {
                    *why = "invalid port";
                    return FP_PEEK_ERROR;
                }
                p = p * 10 + (uint32_t)(buf[i] - '0');
            }
            if (p > 65535) {
                *why = "port out of range";
                return FP_PEEK_ERROR;
            }
            *port = (int32_t)p;
        }
    } else if (need_port) {
        *why = "authority without port";
        return FP_PEEK_ERROR;
    }
    *host_off = hs;
    *host_len = he - hs;
    return 0;
}

/* Framing state gathered from the header lines of one head. */
struct hdrs {
    uint64_t cl;
    uint32_t flags;
    uint16_t nheaders;
    uint8_t has_cl;
    uint8_t has_upgrade_hdr;
    uint8_t te_chunked;        /* chunked seen */
    uint8_t te_last_chunked;   /* the last coding so far is chunked */
    uint8_t te_after_chunked;  /* a coding follows chunked */
    unsigned nhost;
    size_t host_v, host_ve;    /* the Host value */
};

/* Content-Length: 1*DIGIT, or a list of identical values. */
static int hdr_content_length(struct hdrs *h, const uint8_t *v, size_t n, const char **why)
{
    size_t i = 0;
    int any = 0;
    while (i <= n) {
        while (i < n && is_ows(v[i]))
            i++;
        size_t ds = i;
        uint64_t x = 0;
        while (i < n && is_digit(v[i])) {
            if (x > 99999999999999999ULL) {           /* > 10^17: next digit would pass 10^18 */
                *why = "Content-Length too large";
                return FP_PEEK_ERROR;
            }
            x = x * 10 + (uint64_t)(v[i] - '0');
            i++;
        }
        if (i == ds) {
            *why = "Content-Length is not a number";
            return FP_PEEK_ERROR;
        }
        while (i < n && is_ows(v[i]))
            i++;
        if (i < n && v[i] != ',') {
            *why = "Content-Length is not a number";
            return FP_PEEK_ERROR;
        }
        if ((h->has_cl || any) && h->cl != x) {
            *why = "conflicting Content-Length values";
            return FP_PEEK_ERROR;
        }
        h->cl = x;
        any = 1;
        i++;                                        /* past ',' (or past the end) */
    }
    h->has_cl = 1;
    return 0;
}

/* Transfer-Encoding: a list of codings, each a token with optional ";param" parts. */
static int hdr_transfer_encoding(struct hdrs *h, const uint8_t *v, size_t n, const char **why)
{
    size_t i = 0;
    int any = 0;
    h->flags |= FP_HTTP_F_TE;
    while (i < n) {
        while (i < n && (is_ows(v[i]) || v[i] == ','))
            i++;
        if (i == n)
            break;
        size_t ts = i;
        while (i < n && is_tchar(v[i]))
            i++;
        if (i == ts) {
            *why = "invalid Transfer-Encoding";
            return FP_PEEK_ERROR;
        }
        size_t te = i;
        while (i < n && is_ows(v[i]))
            i++;
        if (i < n && v[i] == ';') {                 /* transfer-parameters: skip to ',' */
            while (i < n && v[i] != ',') {
                if (v[i] == '"') {
                    *why = "quoted Transfer-Encoding parameter";
                    return FP_PEEK_ERROR;
                }
                i++;
            }
        } else if (i < n && v[i] != ',') {
            *why = "invalid Transfer-Encoding";
            return FP_PEEK_ERROR;
        }
        any = 1;
        if (token_eq(v + ts, te - ts, "chunked")) {
            if (h->te_chunked) {
                *why = "chunked applied more than once";
                return FP_PEEK_ERROR;
            }
            h->te_chunked = 1;
            h->te_last_chunked = 1;
        } else {
            if (h->te_chunked)
                h->te_after_chunked = 1;
            h->te_last_chunked = 0;
        }
    }
    if (!any) {
        *why = "empty Transfer-Encoding";
        return FP_PEEK_ERROR;
    }
    return 0;
}

/* Connection: a list of tokens. */
static void hdr_connection(struct hdrs *h, const uint8_t *v, size_t n)
{
    size_t i = 0;
    while (i < n) {
        while (i < n && (is_ows(v[i]) || v[i] == ','))
            i++;
        size_t ts = i;
        while (i < n && v[i] != ',' && !is_ows(v[i]))
            i++;
        if (i == ts)
            break;
        if (token_eq(v + ts, i - ts, "close"))
            h->flags |= FP_HTTP_F_CONN_CLOSE;
        else if (token_eq(v + ts, i - ts, "keep-alive"))
            h->flags |= FP_HTTP_F_CONN_KEEP;
        else if (token_eq(v + ts, i - ts, "upgrade"))
            h->flags |= FP_HTTP_F_CONN_UPGR;
    }
}

/* Parses the header lines from `s` up to the blank line that ends at head_end. */
static int parse_headers(const uint8_t *buf, size_t s, size_t head_end, int is_request,
                         struct hdrs *h, const char **why)
{
    size_t p = s;
    for (;;) {
        struct line ln;
        int rc = get_line(buf, p, head_end, &ln, why);
        if (rc)
            return rc;
        if (ln.s == ln.e) {                         /* the blank line */
            if (ln.next == head_end)
                return 0;
            *why = "blank line inside the head";
            return FP_PEEK_ERROR;
        }
        p = ln.next;
        const uint8_t *l = buf + ln.s;
        size_t n = ln.e - ln.s, c = 0;
        if (is_ows(l[0])) {
            *why = "obs-fold or whitespace before a header name";
            return FP_PEEK_ERROR;
        }
        while (c < n && is_tchar(l[c]))
            c++;
        if (c == n || l[c] != ':') {
            *why = (c < n && is_ows(l[c])) ? "whitespace before a header's colon"
                                           : "invalid header name";
            return FP_PEEK_ERROR;
        }
        if (c == 0) {
            *why = "empty header name";
            return FP_PEEK_ERROR;
        }
        size_t vs = c + 1, ve = n;
        for (size_t k = vs; k < ve; k++)
            if (!is_fvalue(l[k])) {
                *why = "control character in a header value";
                return FP_PEEK_ERROR;
            }
        while (vs < ve && is_ows(l[vs]))
            vs++;
        while (ve > vs && is_ows(l[ve - 1]))
            ve--;
        if (h->nheaders == UINT16_MAX) {
            *why = "too many headers";
            return FP_PEEK_ERROR;
        }
        h->nheaders++;
        const uint8_t *v = l + vs;
        size_t vn = ve - vs;
        switch (lower(l[0])) {
        case 'c':
            if (token_eq(l, c, "content-length")) {
                if ((rc = hdr_content_length(h, v, vn, why)))
                    return rc;
            } else if (token_eq(l, c, "connection")) {
                hdr_connection(h, v, vn);
            }
            break;
        case 't':
            if (token_eq(l, c, "transfer-encoding") &&
                (rc = hdr_transfer_encoding(h, v, vn, why)))
                return rc;
            break;
        case 'h':
            if (is_request && token_eq(l, c, "host")) {
                if (++h->nhost > 1) {
                    *why = "more than one Host header";
                    return FP_PEEK_ERROR;
                }
                h->host_v = ln.s + vs;
                h->host_ve = ln.s + ve;
            }
            break;
        case 'u':
            if (token_eq(l, c, "upgrade"))
                h->has_upgrade_hdr = 1;
            break;
        case 'e':
            if (is_request && token_eq(l, c, "expect") && token_eq(v, vn, "100-continue"))
                h->flags |= FP_HTTP_F_EXPECT_100;
            break;
        default:
            break;
        }
    }
}

/* Checks "HTTP/d.d" at p (8 bytes). Returns the minor version (0/1), or a negative code. */
static int parse_version(const uint8_t *p, const char **why)
{
    if (memcmp(p, "HTTP/", 5) != 0 || !is_digit(p[5]) || p[6] != '.' || !is_digit(p[7])) {
        *why = "no HTTP/1.x version";
        return FP_PEEK_NOT_THIS_PROTOCOL;
    }
    if (p[5] != '1') {
        *why = "not HTTP/1.x";
        return FP_PEEK_NOT_THIS_PROTOCOL;
    }
    if (p[7] > '1') {
        *why = "unsupported HTTP/1.x minor version";
        return FP_PEEK_ERROR;
    }
    return p[7] - '0';
}

static uint8_t method_id(const uint8_t *m, size_t n)
{
#define M(lit, id) if (n == sizeof(lit) - 1 && memcmp(m, lit, n) == 0) return id
    M("GET", FP_HTTP_GET);
    M("HEAD", FP_HTTP_HEAD);
    M("POST", FP_HTTP_POST);
    M("PUT", FP_HTTP_PUT);
    M("DELETE", FP_HTTP_DELETE);
    M("CONNECT", FP_HTTP_CONNECT);
    M("OPTIONS", FP_HTTP_OPTIONS);
    M("TRACE", FP_HTTP_TRACE);
    M("PATCH", FP_HTTP_PATCH);
#undef M
    return FP_HTTP_OTHER;
}

/* Request line in [s, e) (terminator excluded). */
static int parse_request_line(const uint8_t *buf, size_t s, size_t e, struct fp_http_req *res)
{
    size_t i = s;
    while (i < e && is_tchar(buf[i]))
        i++;
    if (i == s || i == e || buf[i] != ' ') {
        res->why = "request line does not start with a method";
        return FP_PEEK_NOT_THIS_PROTOCOL;
    }
    res->method_off = s;
    res->method_len = i - s;
    res->method = method_id(buf + s, i - s);
    size_t ts = ++i;
    while (i < e && buf[i] > 0x20 && buf[i] < 0x7f)
        i++;
    if (i == e) {
        res->why = "no HTTP/1.x version";
        return FP_PEEK_NOT_THIS_PROTOCOL;
    }
    if (buf[i] != ' ' || i == ts) {
        res->why = "invalid request-target";
        return FP_PEEK_ERROR;
    }
    res->target_off = ts;
    res->target_len = i - ts;
    i++;
    if (e - i != 8) {
        res->why = e - i < 8 ? "no HTTP/1.x version" : "junk after the HTTP version";
        return e - i < 8 ? FP_PEEK_NOT_THIS_PROTOCOL : FP_PEEK_ERROR;
    }
    int minor = parse_version(buf + i, &res->why);
    if (minor < 0)
        return minor;
    res->version_minor = (uint8_t)minor;
    return 0;
}

/* Splits the request-target into path/query and, for absolute-form and authority-form, host and
 * port. */
static int parse_target(const uint8_t *buf, struct fp_http_req *res, size_t *ah_off,
                        size_t *ah_len, int32_t *aport)
{
    size_t s = res->target_off, e = s + res->target_len;
    const uint8_t *t = buf + s;
    size_t n = res->target_len;
    if (res->method == FP_HTTP_CONNECT) {
        if (parse_authority(buf, s, e, ah_off, ah_len, aport, 1, &res->why))
            return FP_PEEK_ERROR;
        res->flags |= FP_HTTP_F_AUTH_FORM;
        res->path_off = e;
        res->path_len = 0;
        return 0;
    }
    size_t ps;
    if (t[0] == '/') {
        ps = s;
    } else if (n == 1 && t[0] == '*') {
        ps = s;
    } else {
        size_t i = 0;
        uint8_t c0 = lower(t[0]);
        if (!(c0 >= 'a' && c0 <= 'z')) {
            res->why = "invalid request-target";
            return FP_PEEK_ERROR;
        }
        while (i < n && (is_digit(t[i]) || (lower(t[i]) >= 'a' && lower(t[i]) <= 'z') ||
                         t[i] == '+' || t[i] == '-' || t[i] == '.'))
            i++;
        if (i + 3 > n || memcmp(t + i, "://", 3) != 0) {
            res->why = "invalid request-target";
            return FP_PEEK_ERROR;
        }
        size_t as = s + i + 3, ae = as;
        while (ae < e && buf[ae] != '/' && buf[ae] != '?')
            ae++;
        if (memchr(buf + as, '@', ae - as)) {
            res->why = "userinfo in absolute-form target";
            return FP_PEEK_ERROR;
        }
        if (parse_authority(buf, as, ae, ah_off, ah_len, aport, 0, &res->why))
            return FP_PEEK_ERROR;
        if (*ah_len == 0) {
            res->why = "absolute-form target without host";
            return FP_PEEK_ERROR;
        }
        res->flags |= FP_HTTP_F_ABS_FORM;
        ps = ae;
    }
    res->path_off = ps;
    res->path_len = e - ps;
    const uint8_t *q = memchr(buf + ps, '?', e - ps);
    res->query_off = q ? (size_t)(q - buf) : 0;
    return 0;
}

int fp_peek_http_request(const uint8_t *buf, size_t len, struct fp_http_req *res)
{
    memset(res, 0, sizeof(*res));
    res->port = -1;
    size_t lim = len < FP_PEEK_HTTP_CAP ? len : FP_PEEK_HTTP_CAP;
    size_t s = skip_empty_lines(buf, lim);
    if (s == (size_t)-2) {
        res->why = "bare CR before the request line";
        return FP_PEEK_NOT_THIS_PROTOCOL;
    }
    if (s == (size_t)-1) {
        if (len >= FP_PEEK_HTTP_CAP) {
            res->why = "only empty lines within the 8 KiB cap";
            return FP_PEEK_TOO_LARGE;
        }
        res->why = "no request line yet";
        return FP_PEEK_NEED_MORE;
    }
    size_t head_end = find_head_end(buf, s, lim);
    const uint8_t *lf = memchr(buf + s, '\n', (head_end ? head_end : lim) - s);
    struct line rl;
    int rc;
    if (!lf) {
        /* Request line incomplete: reject early what cannot become a method. */
        size_t i = s;
        while (i < lim && is_tchar(buf[i]))
            i++;
        if (i < lim && buf[i] != ' ') {
            res->why = "request line does not start with a method";
            return FP_PEEK_NOT_THIS_PROTOCOL;
        }
        if (i < lim && i == s) {
            res->why = "request line does not start with a method";
            return FP_PEEK_NOT_THIS_PROTOCOL;
        }
    } else {
        if ((rc = get_line(buf, s, lim, &rl, &res->why)))
            return rc;
        if ((rc = parse_request_line(buf, rl.s, rl.e, res)))
            return rc;
    }
    if (!head_end) {
        if (len >= FP_PEEK_HTTP_CAP) {
            res->why = "request head larger than the 8 KiB cap";
            return FP_PEEK_TOO_LARGE;
        }
        res->why = "request head incomplete";
        return FP_PEEK_NEED_MORE;
    }

    res->head_len = head_end;
    res->headers_off = rl.next;
    struct hdrs h;
    memset(&h, 0, sizeof(h));
    if ((rc = parse_headers(buf, rl.next, head_end, 1, &h, &res->why)))
        return rc;
    res->nheaders = h.nheaders;
    res->flags |= h.flags;

    size_t ah_off = 0, ah_len = 0;
    int32_t aport = -1;
    if ((rc = parse_target(buf, res, &ah_off, &ah_len, &aport)))
        return rc;
    if (h.nhost) {
        size_t hh_off, hh_len;
        int32_t hport;
        res->flags |= FP_HTTP_F_HOST_HDR;
        if (parse_authority(buf, h.host_v, h.host_ve, &hh_off, &hh_len, &hport, 0, &res->why))
            return FP_PEEK_ERROR;
        if (res->flags & (FP_HTTP_F_ABS_FORM | FP_HTTP_F_AUTH_FORM)) {
            if (!fp_ascii_caseeq((const char *)buf + hh_off, hh_len,
                                 (const char *)buf + ah_off, ah_len)) {
                res->why = "Host header differs from the target's host";
                return FP_PEEK_ERROR;
            }
        } else {
            ah_off = hh_off;
            ah_len = hh_len;
            aport = hport;
        }
    } else if (res->version_minor == 1) {
        res->why = "HTTP/1.1 request without Host";
        return FP_PEEK_ERROR;
    }
    res->host_off = ah_off;
    res->host_len = ah_len;
    res->port = aport;

    if (h.flags & FP_HTTP_F_TE) {
        if (res->version_minor == 0) {
            res->why = "Transfer-Encoding in an HTTP/1.0 request";
            return FP_PEEK_ERROR;
        }
        if (h.has_cl) {
            res->why = "both Transfer-Encoding and Content-Length";
            return FP_PEEK_ERROR;
        }
        if (!h.te_last_chunked) {
            res->why = "Transfer-Encoding does not end in chunked";
            return FP_PEEK_ERROR;
        }
        res->body = FP_BODY_CHUNKED;
    } else if (h.has_cl) {
        res->body = FP_BODY_LENGTH;
        res->content_length = h.cl;
    } else {
        res->body = FP_BODY_NONE;
    }
    if (h.has_upgrade_hdr && (h.flags & FP_HTTP_F_CONN_UPGR))
        res->flags |= FP_HTTP_F_UPGRADE;
    if (res->version_minor == 1 ? !(h.flags & FP_HTTP_F_CONN_CLOSE)
                                : ((h.flags & FP_HTTP_F_CONN_KEEP) &&
                                   !(h.flags & FP_HTTP_F_CONN_CLOSE)))
        res->flags |= FP_HTTP_F_KEEPALIVE;
    res->why = NULL;
    return FP_PEEK_OK;
}

int fp_peek_http_response(const uint8_t *buf, size_t len, unsigned req_flags,
                          struct fp_http_resp *res)
{
    memset(res, 0, sizeof(*res));
    if (len == 0) {
        res->why = "no status line yet";
        return FP_PEEK_NEED_MORE;
    }
    size_t lim = len < FP_PEEK_HTTP_CAP ? len : FP_PEEK_HTTP_CAP;
    size_t pre = lim < 5 ? lim : 5;
    if (memcmp(buf, "HTTP/", pre) != 0) {
        res->why = "does not start with HTTP/";
        return FP_PEEK_NOT_THIS_PROTOCOL;
    }
    size_t head_end = find_head_end(buf, 0, lim);
    const uint8_t *lf = memchr(buf, '\n', head_end ? head_end : lim);
    if (!lf) {
        if (lim >= 6 && buf[5] != '1') {
            res->why = !is_digit(buf[5]) ? "no HTTP/1.x version" : "not HTTP/1.x";
            return FP_PEEK_NOT_THIS_PROTOCOL;
        }
    } else {
        struct line sl;
        int rc = get_line(buf, 0, lim, &sl, &res->why);
        if (rc)
            return rc;
        size_t n = sl.e;
        if (n < 8) {
            res->why = "no HTTP/1.x version";
            return FP_PEEK_NOT_THIS_PROTOCOL;
        }
        int minor = parse_version(buf, &res->why);
        if (minor < 0)
            return minor;
        res->version_minor = (uint8_t)minor;
        if (n < 12 || buf[8] != ' ' || !is_digit(buf[9]) || !is_digit(buf[10]) || !is_digit(buf[11]) ||
            buf[9] == '0' || (n > 12 && buf[12] != ' ')) {
            res->why = "invalid status line";
            return FP_PEEK_ERROR;
        }
        res->status = (uint16_t)((buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0'));
        res->reason_off = n > 12 ? 13 : 12;
        res->reason_len = n > 12 ? n - 13 : 0;
        for (size_t k = res->reason_off; k < n; k++)
            if (!is_fvalue(buf[k])) {
                res->why = "control character in the reason phrase";
                return FP_PEEK_ERROR;
            }
        res->headers_off = sl.next;
    }
    if (!head_end) {
        if (len >= FP_PEEK_HTTP_CAP) {
            res->why = "response head larger than the 8 KiB cap";
            return FP_PEEK_TOO_LARGE;
        }
        res->why = "response head incomplete";
        return FP_PEEK_NEED_MORE;
    }
    res->head_len = head_end;
    struct hdrs h;
    memset(&h, 0, sizeof(h));
    int rc = parse_headers(buf, res->headers_off, head_end, 0, &h, &res->why);
    if (rc)
        return rc;
    res->nheaders = h.nheaders;
    res->flags |= h.flags;
    if (h.has_upgrade_hdr && (h.flags & FP_HTTP_F_CONN_UPGR))
        res->flags |= FP_HTTP_F_UPGRADE;
    if ((h.flags & FP_HTTP_F_TE) && res->version_minor == 0) {
        res->why = "Transfer-Encoding in an HTTP/1.0 response";
        return FP_PEEK_ERROR;
    }
    if ((h.flags & FP_HTTP_F_TE) && h.has_cl) {
        res->why = "both Transfer-Encoding and Content-Length";
        return FP_PEEK_ERROR;
    }
    unsigned st = res->status;
    if (st == 101 && (req_flags & FP_HTTP_RESP_TO_UPGRADE)) {
        res->body = FP_BODY_TUNNEL;
    } else if (st == 101) {
        res->body = FP_BODY_NONE; /* a switch nobody asked for: a final response, still HTTP */
    } else if ((req_flags & FP_HTTP_RESP_TO_CONNECT) && st >= 200 && st < 300) {
        res->body = FP_BODY_TUNNEL;
    } else if ((req_flags & FP_HTTP_RESP_TO_HEAD) || st < 200 || st == 204 || st == 304) {
        res->body = FP_BODY_NONE;
        if (st < 200)
            res->flags |= FP_HTTP_F_INTERIM;
    } else if (h.flags & FP_HTTP_F_TE) {
        res->body = h.te_last_chunked ? FP_BODY_CHUNKED : FP_BODY_CLOSE;
    } else if (h.has_cl) {
        res->body = FP_BODY_LENGTH;
        res->content_length = h.cl;
    } else {
        res->body = FP_BODY_CLOSE;
    }
    if (res->body != FP_BODY_CLOSE && res->body != FP_BODY_TUNNEL &&
        (res->version_minor == 1 ? !(h.flags & FP_HTTP_F_CONN_CLOSE)
                                 : ((h.flags & FP_HTTP_F_CONN_KEEP) &&
                                    !(h.flags & FP_HTTP_F_CONN_CLOSE))))
        res->flags |= FP_HTTP_F_KEEPALIVE;
    res->why = NULL;
    return FP_PEEK_OK;
}

void fp_http_iter_init(struct fp_http_iter *it, size_t headers_off)
{
    it->pos = headers_off;
}

int fp_http_header_next(const uint8_t *buf, size_t head_len, struct fp_http_iter *it,
                        const uint8_t **name, size_t *name_len,
                        const uint8_t **val, size_t *val_len)
{
    size_t p = it->pos;
    if (p >= head_len || buf[p] == '\r' || buf[p] == '\n')
        return 0;
    const uint8_t *lf = memchr(buf + p, '\n', head_len - p);
    if (!lf)
        return 0;
    size_t e = (size_t)(lf - buf);
    it->pos = e + 1;
    if (e > p && buf[e - 1] == '\r')
        e--;
    const uint8_t *colon = memchr(buf + p, ':', e - p);
    if (!colon)
        return 0;
    size_t c = (size_t)(colon - buf);
    size_t vs = c + 1, ve = e;
    while (vs < ve && is_ows(buf[vs]))
        vs++;
    while (ve > vs && is_ows(buf[ve - 1]))
        ve--;
    *name = buf + p;
    *name_len = c - p;
    *val = buf + vs;
    *val_len = ve - vs;
    return 1;
}

/* ================================================================================================
 * Chunked framing (RFC 9112 section 7.1)
 *
 *   chunk     = chunk-size [ chunk-ext ] CRLF chunk-data CRLF
 *   last      = 1*"0" [ chunk-ext ] CRLF
 *   body      = *chunk last *( field-line CRLF ) CRLF
 * ============================================================================================== */

enum {
    CH_SIZE0 = 0,   /* first hex digit of a size */
    CH_SIZE,        /* more hex digits, ';', blanks before ';', or CR */
    CH_SIZE_WS,     /* blanks after the size: only ';' or more blanks may follow */
    CH_EXT,         /* chunk extension up to CR */
    CH_SIZE_LF,     /* LF after the size line's CR */
    CH_DATA,        /* chunk data */
    CH_DATA_CR,     /* CR after the data */
    CH_DATA_LF,     /* LF after the data */
    CH_TR_START,    /* start of a trailer line, or the CR of the final CRLF */
    CH_TR_NAME,     /* trailer field name up to ':' */
    CH_TR_VALUE,    /* trailer value up to CR */
    CH_TR_LF,       /* LF after a trailer line */
    CH_END_LF,      /* LF of the final CRLF */
    CH_DONE,
};

void fp_chunked_init(struct fp_chunked *st)
{
    memset(st, 0, sizeof(*st));
    st->state = CH_SIZE0;
}

static ssize_t ch_fail(struct fp_chunked *st, int code, const char *why)
{
    st->failed = 1;
    st->err = code;
    st->why = why;
    return code;
}

static inline int hexval(uint8_t c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = lower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

ssize_t fp_chunked_feed(struct fp_chunked *st, const uint8_t *buf, size_t len)
{
    if (st->failed)
        return st->err;
    if (st->state == CH_DONE)
        return 0;
    size_t i = 0;
    while (i < len) {
        uint8_t c = buf[i];
        switch (st->state) {
        case CH_SIZE0:
        case CH_SIZE: {
            int h = hexval(c);
            if (h >= 0) {
                if (st->remaining >> 56)                    /* would pass 2^60 */
                    return ch_fail(st, FP_PEEK_ERROR, "chunk size overflows");
                st->remaining = (st->remaining << 4) | (uint64_t)h;
                st->state = CH_SIZE;
                break;
            }
            if (st->state == CH_SIZE0)
                return ch_fail(st, FP_PEEK_ERROR, "chunk size is not hex");
            if (c == '\r')
                st->state = CH_SIZE_LF;
            else if (c == ';')
                st->state = CH_EXT;
            else if (is_ows(c))
                st->state = CH_SIZE_WS;
            else
                return ch_fail(st, FP_PEEK_ERROR, "invalid character after chunk size");
            break;
        }
        case CH_SIZE_WS:
            if (c == ';')
                st->state = CH_EXT;
            else if (!is_ows(c))
                return ch_fail(st, FP_PEEK_ERROR, "blank after chunk size without extension");
            break;
        case CH_EXT:
            if (c == '\r')
                st->state = CH_SIZE_LF;
            else if (!is_fvalue(c))
                return ch_fail(st, FP_PEEK_ERROR, "control character in chunk extension");
            break;
        case CH_SIZE_LF:
            if (c != '\n')
                return ch_fail(st, FP_PEEK_ERROR, "chunk size line not ended by CRLF");
            st->line_len = 0;
            st->state = st->remaining ? CH_DATA : CH_TR_START;
            i++;
            continue;
        case CH_DATA: {
            size_t take = len - i;
            if ((uint64_t)take > st->remaining)
                take = (size_t)st->remaining;
            st->remaining -= take;
            st->data_bytes += take;
            i += take;
            if (st->remaining == 0)
                st->state = CH_DATA_CR;
            continue;
        }
        case CH_DATA_CR:
            if (c != '\r')
                return ch_fail(st, FP_PEEK_ERROR, "chunk data not followed by CRLF");
            st->state = CH_DATA_LF;
            break;
        case CH_DATA_LF:
            if (c != '\n')
                return ch_fail(st, FP_PEEK_ERROR, "chunk data not followed by CRLF");
            st->state = CH_SIZE0;
            i++;
            st->line_len = 0;
            continue;
        case CH_TR_START:
            if (c == '\r') {
                st->state = CH_END_LF;
                break;
            }
            if (!is_tchar(c))
                return ch_fail(st, FP_PEEK_ERROR, "invalid trailer line");
            st->state = CH_TR_NAME;
            break;
        case CH_TR_NAME:
            if (c == ':')
                st->state = CH_TR_VALUE;
            else if (!is_tchar(c))
                return ch_fail(st, FP_PEEK_ERROR, "invalid trailer field name");
            break;
        case CH_TR_VALUE:
            if (c == '\r')
                st->state = CH_TR_LF;
            else if (!is_fvalue(c))
                return ch_fail(st, FP_PEEK_ERROR, "control character in a trailer");
            break;
        case CH_TR_LF:
            if (c != '\n')
                return ch_fail(st, FP_PEEK_ERROR, "trailer line not ended by CRLF");
            st->state = CH_TR_START;
            st->trailer_len++;
            st->line_len = 0;
            i++;
            continue;
        case CH_END_LF:
            if (c != '\n')
                return ch_fail(st, FP_PEEK_ERROR, "chunked body not ended by CRLF");
            st->state = CH_DONE;
            st->done = 1;
            i++;
            st->body_bytes += i;
            return (ssize_t)i;
        default:
            return ch_fail(st, FP_PEEK_ERROR, "internal state");
        }
        /* A byte of a size line or trailer line: enforce the line and trailer limits. */
        if (++st->line_len > FP_CHUNK_LINE_MAX)
            return ch_fail(st, FP_PEEK_TOO_LARGE, "chunk size or trailer line too long");
        if (st->state >= CH_TR_START && st->state <= CH_END_LF &&
            ++st->trailer_len > FP_CHUNK_TRAILER_MAX)
            return ch_fail(st, FP_PEEK_TOO_LARGE, "trailers too large");
        i++;
    }
    st->body_bytes += len;
    return (ssize_t)len;
}
