/* fastproxy peek parsers: decide a connection from bytes peeked (MSG_PEEK) without consuming them.
 *
 *   fp_peek_tls_sni()        TLS ClientHello -> server_name (SNI), across several records.
 *   fp_peek_http_request()   HTTP/1.0/1.1 request head -> method, target, Host, body framing.
 *   fp_peek_http_response()  HTTP/1.x response head -> status, body framing.
 *   fp_chunked_feed()        incremental chunked-body framer: where does this body end?
 *   fp_http_header_next()    iterate the header lines of a head already accepted above.
 *   fp_host_match() ...      case-insensitive host comparison helpers.
 *
 * Every function here is pure: bytes in, a result struct out. No allocation, no I/O, no
 * printing, no global state; safe from any thread. Every length field read from the input is
 * checked against its container before it is used. The caller always passes EVERYTHING it has
 * peeked so far (the parsers are restartable from scratch, never from a saved position), except
 * the chunked framer, which is a real incremental state machine fed with consecutive pieces.
 *
 * Keep-alive HTTP and smuggling: the relay must agree with the upstream server on where each
 * request ends, or a second request hidden in a "body" would reach the server unchecked. So the
 * request parser refuses (FP_PEEK_ERROR) everything that RFC 9112 calls ambiguous framing:
 * Transfer-Encoding together with Content-Length, Content-Length values that disagree or are not
 * plain digits, Transfer-Encoding whose final coding is not chunked, Transfer-Encoding in an
 * HTTP/1.0 message, obs-fold continuation lines, whitespace before a header's colon, bare CR,
 * more than one Host. Chunk framing lines must end in CRLF exactly. A relay that gets
 * FP_PEEK_ERROR should answer 400 (or reset) and close, never guess.
 */
#ifndef FP_PEEK_H
#define FP_PEEK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- result codes (shared by every parser) ------------------------------------------------- */

enum fp_peek_rc {
    FP_PEEK_OK = 0,                 /* parsed; the result struct is filled */
    FP_PEEK_FOUND = 0,              /* same as FP_PEEK_OK, reads better for the SNI peek */
    FP_PEEK_NEED_MORE = -1,         /* a valid prefix so far: peek again with more bytes */
    FP_PEEK_NOT_THIS_PROTOCOL = -2, /* the bytes are not this protocol at all */
    FP_PEEK_TOO_LARGE = -3,         /* the message cannot be complete within the cap */
    FP_PEEK_ERROR = -4,             /* this protocol, but malformed or ambiguous */
};

/* Contract: a static, constant name for a result code ("need-more", ...); "unknown" otherwise. */
const char *fp_peek_rc_name(int rc);

/* ---- TLS ClientHello ----------------------------------------------------------------------- */

#define FP_PEEK_TLS_CAP 65536u   /* bytes of records (headers included) a ClientHello may take */
#define FP_PEEK_SNI_MAX 253u     /* longest host name accepted (DNS limit, trailing dot removed) */

struct fp_tls_hello {
    size_t need;              /* NEED_MORE: total bytes the buffer must hold to get further (from
                               * the record headers; 5 before the first header is known) */
    size_t hello_end;         /* OK: offset just past the last ClientHello byte (records included) */
    size_t sni_len;           /* OK: length of the name written to out (0: no SNI) */
    uint32_t hello_len;       /* handshake body length, once known */
    uint16_t record_version;  /* first record's legacy_record_version (0x0301, ...) */
    uint16_t client_version;  /* ClientHello legacy_version (0x0303 for TLS 1.2 and 1.3) */
    uint16_t records;         /* records the ClientHello spans so far */
    uint8_t has_sni;          /* OK: 1 when a server_name extension with a host_name was present */
    uint8_t tls13;            /* OK: 1 when supported_versions offers TLS 1.3 (0x0304) */
    const char *why;          /* not OK: static text saying what was wrong or missing */
};

/* Contract: parses the TLS records at the start of buf[0..len) and the ClientHello they carry,
 * which may be fragmented over several handshake records (read in place, nothing copied but the
 * name). Returns:
 *   FP_PEEK_FOUND  the whole ClientHello is present and valid; out holds the server name
 *                  lower-cased, one trailing dot removed, NUL-terminated, res->sni_len its length;
 *                  no server_name extension (or no host_name in it) is FOUND with out = "" and
 *                  res->has_sni = 0;
 *   FP_PEEK_NEED_MORE  valid so far; res->need is the buffer length to come back with;
 *   FP_PEEK_NOT_THIS_PROTOCOL  not a TLS handshake record (SSLv2 hello, HTTP, garbage);
 *   FP_PEEK_TOO_LARGE  the ClientHello would need more than FP_PEEK_TLS_CAP bytes;
 *   FP_PEEK_ERROR  TLS but malformed: a length overflowing its container, a first handshake
 *                  message that is not a ClientHello, an interleaved non-handshake record, a
 *                  duplicate server_name extension or host_name, a name with characters other
 *                  than letters, digits, '-', '.', '_' or an empty label or longer than
 *                  FP_PEEK_SNI_MAX, or a name that does not fit in outcap-1 bytes.
 * out must hold at least FP_PEEK_SNI_MAX + 2 bytes to take every valid name. res must not be NULL.
 * out is "" unless FP_PEEK_FOUND with a name. Bytes after the ClientHello are ignored. */
int fp_peek_tls_sni(const uint8_t *buf, size_t len, char *out, size_t outcap,
                    struct fp_tls_hello *res);

/* ---- TLS ServerHello / HelloRetryRequest --------------------------------------------------- */

struct fp_tls_server_hello {
    size_t need;              /* NEED_MORE: total bytes the buffer must hold to get further */
    uint16_t server_version;  /* ServerHello legacy_version */
    uint8_t hrr;              /* FOUND: 1 when the random is the HelloRetryRequest value */
    const char *why;          /* not FOUND: static text saying what was wrong or missing */
};

/* Contract: reads the first handshake message the server sends, at the start of buf[0..len),
 * far enough to tell a TLS 1.3 HelloRetryRequest (a ServerHello whose random is
 * SHA-256("HelloRetryRequest"), RFC 8446 4.1.3) from any other ServerHello. The message header
 * and random may be split over several handshake records; at most the first 38 bytes of the
 * handshake stream are needed, so a caller's buffering stays under FP_PEEK_TLS_CAP. Returns
 * FP_PEEK_FOUND (res->hrr says which), FP_PEEK_NEED_MORE (res->need), FP_PEEK_NOT_THIS_PROTOCOL
 * (the first record is not a handshake record: an alert, or not TLS), FP_PEEK_TOO_LARGE (the
 * bytes needed lie beyond FP_PEEK_TLS_CAP: a flood of tiny records), FP_PEEK_ERROR (the first
 * handshake message is not a ServerHello, or a record is malformed). res must not be NULL. */
int fp_peek_tls_server_hello(const uint8_t *buf, size_t len, struct fp_tls_server_hello *res);

/* Contract: skips the change_cipher_spec records (type 20, one byte 0x01: TLS 1.3's middlebox
 * compatibility) at the start of buf[0..len) that a client may send between a HelloRetryRequest
 * and its second ClientHello. Returns the offset of the first other record (>= 0; 0 when there
 * is none), FP_PEEK_NEED_MORE when the bytes end inside such a record, or FP_PEEK_ERROR for a
 * change_cipher_spec record of another form. */
ssize_t fp_peek_tls_skip_ccs(const uint8_t *buf, size_t len);

/* ---- HTTP/1.x heads ------------------------------------------------------------------------ */

#define FP_PEEK_HTTP_CAP 8192u   /* bytes a request or response head may take, blank line included */

enum fp_http_method {
    FP_HTTP_OTHER = 0, FP_HTTP_GET, FP_HTTP_HEAD, FP_HTTP_POST, FP_HTTP_PUT, FP_HTTP_DELETE,
    FP_HTTP_CONNECT, FP_HTTP_OPTIONS, FP_HTTP_TRACE, FP_HTTP_PATCH,
};

/* How the body after a head is delimited. */
enum fp_http_body {
    FP_BODY_NONE = 0,     /* no body: the next message starts right after the head */
    FP_BODY_LENGTH = 1,   /* exactly content_length bytes (the relay counts them) */
    FP_BODY_CHUNKED = 2,  /* chunked: run fp_chunked_feed() over the bytes after the head */
    FP_BODY_CLOSE = 3,    /* responses only: the body runs until the server closes */
    FP_BODY_TUNNEL = 4,   /* responses only: 101 to an upgrade request or 2xx to CONNECT, opaque
                           * bytes from here on */
};

/* Flags of a parsed head (fp_http_req.flags, fp_http_resp.flags). */
#define FP_HTTP_F_KEEPALIVE   0x0001u /* the connection persists after this exchange (version
                                       * default, overridden by Connection: close/keep-alive) */
#define FP_HTTP_F_CONN_CLOSE  0x0002u /* Connection lists "close" */
#define FP_HTTP_F_CONN_KEEP   0x0004u /* Connection lists "keep-alive" */
#define FP_HTTP_F_CONN_UPGR   0x0008u /* Connection lists "upgrade" */
#define FP_HTTP_F_UPGRADE     0x0010u /* Upgrade header present and Connection lists "upgrade" */
#define FP_HTTP_F_EXPECT_100  0x0020u /* request: Expect: 100-continue */
#define FP_HTTP_F_HOST_HDR    0x0040u /* request: a Host header was present */
#define FP_HTTP_F_ABS_FORM    0x0080u /* request: absolute-form target (http://host/path) */
#define FP_HTTP_F_AUTH_FORM   0x0100u /* request: authority-form target (CONNECT host:port) */
#define FP_HTTP_F_INTERIM     0x0200u /* response: 1xx other than 101, the final one follows */
#define FP_HTTP_F_TE          0x0400u /* a Transfer-Encoding header was present */

/* A request head. Every *_off is an offset into the caller's buf; text is not copied. */
struct fp_http_req {
    size_t head_len;          /* bytes of the head, leading empty lines and final blank line
                               * included: the body (or the next request) starts here */
    size_t method_off, method_len;
    size_t target_off, target_len;   /* the request-target as sent */
    size_t path_off, path_len;       /* path and query ("" for absolute-form without a path,
                                      * meaning "/"; "*" for asterisk-form; "" for CONNECT) */
    size_t query_off;                /* offset of '?' within buf, or 0 when there is no query */
    size_t host_off, host_len;       /* host without port and without one trailing dot; from the
                                      * absolute-form or authority-form target, else from Host;
                                      * IPv6 literals keep their brackets; len 0: no host */
    size_t headers_off;              /* first header line: start for fp_http_header_next() */
    uint64_t content_length;         /* FP_BODY_LENGTH: body bytes */
    int32_t port;                    /* port from the target or Host, -1 if none was given */
    uint32_t flags;                  /* FP_HTTP_F_* */
    uint16_t nheaders;
    uint8_t method;                  /* enum fp_http_method */
    uint8_t version_minor;           /* 0 or 1 (HTTP/1.0, HTTP/1.1) */
    uint8_t body;                    /* enum fp_http_body: NONE, LENGTH or CHUNKED */
    const char *why;                 /* not OK: static text saying what was wrong */
};

/* Contract: parses the request head at the start of buf[0..len) (leading CRLFs skipped, lines
 * ending in CRLF or a bare LF). Returns:
 *   FP_PEEK_OK  the head is complete and valid; res describes it (res->head_len bytes);
 *   FP_PEEK_NEED_MORE  no end of head yet and nothing wrong so far;
 *   FP_PEEK_NOT_THIS_PROTOCOL  the request line does not look like HTTP/1.x (a non-token method,
 *                  TLS bytes, the HTTP/2 preface "PRI * HTTP/2.0", no "HTTP/" version);
 *   FP_PEEK_TOO_LARGE  no end of head within FP_PEEK_HTTP_CAP bytes;
 *   FP_PEEK_ERROR  HTTP/1.x but malformed or ambiguous (see the file comment): bad request line,
 *                  version other than 1.0/1.1, invalid header line, obs-fold, no Host in an
 *                  HTTP/1.1 request, duplicate Host, absolute-form target whose host differs
 *                  from the Host header, invalid host or port, userinfo in the target, bad or
 *                  conflicting Content-Length, Transfer-Encoding with Content-Length or not
 *                  ending in chunked or in HTTP/1.0, CONNECT without an authority-form target.
 * Request bodies are never close-delimited: without Transfer-Encoding or Content-Length the body
 * is FP_BODY_NONE. res must not be NULL. */
int fp_peek_http_request(const uint8_t *buf, size_t len, struct fp_http_req *res);

/* Flags for fp_peek_http_response(): what the request this response answers was. */
#define FP_HTTP_RESP_TO_HEAD     0x1u   /* the request was HEAD: no body, whatever the headers say */
#define FP_HTTP_RESP_TO_CONNECT  0x2u   /* the request was CONNECT: 2xx turns into a tunnel */
#define FP_HTTP_RESP_TO_UPGRADE  0x4u   /* the request asked for a protocol switch (Upgrade with
                                         * Connection: upgrade): 101 turns into a tunnel */

/* A response head. Offsets into the caller's buf. */
struct fp_http_resp {
    size_t head_len;          /* bytes of the head, final blank line included */
    size_t reason_off, reason_len;
    size_t headers_off;       /* first header line: start for fp_http_header_next() */
    uint64_t content_length;  /* FP_BODY_LENGTH: body bytes */
    uint32_t flags;           /* FP_HTTP_F_* */
    uint16_t status;          /* 100..999 */
    uint16_t nheaders;
    uint8_t version_minor;    /* 0 or 1 */
    uint8_t body;             /* enum fp_http_body */
    const char *why;          /* not OK: static text saying what was wrong */
};

/* Contract: parses the response head at the start of buf[0..len). `req_flags` are
 * FP_HTTP_RESP_TO_* for the request it answers. Body framing follows RFC 9112 section 6.3: no
 * body for HEAD, 1xx, 204 and 304; a tunnel for 101 to a request that asked for an upgrade
 * (FP_HTTP_RESP_TO_UPGRADE) and for 2xx to CONNECT; a 101 nobody asked for is a final response
 * without a body (not a tunnel, not interim: the connection stays HTTP); chunked when
 * Transfer-Encoding ends in chunked, close-delimited when it does not; Content-Length; else
 * close-delimited. Transfer-Encoding together with Content-Length is FP_PEEK_ERROR (the relay
 * should stop pipelining and close after relaying opaque bytes). A status line without a reason
 * phrase ("HTTP/1.1 200\r\n") is accepted. Other return codes as fp_peek_http_request(); bytes
 * that do not start with "HTTP/" are FP_PEEK_NOT_THIS_PROTOCOL. res must not be NULL. */
int fp_peek_http_response(const uint8_t *buf, size_t len, unsigned req_flags,
                          struct fp_http_resp *res);

/* Header iteration over a head that fp_peek_http_request/response() returned FP_PEEK_OK for. */
struct fp_http_iter {
    size_t pos;
};

/* Contract: starts an iteration at res->headers_off. */
void fp_http_iter_init(struct fp_http_iter *it, size_t headers_off);

/* Contract: stores the next header line's name and value (value without surrounding blanks,
 * both pointing into buf) and returns 1; returns 0 after the last header. buf[0..head_len) must
 * be a head that a parser above accepted (the iterator trusts it and does not re-validate). */
int fp_http_header_next(const uint8_t *buf, size_t head_len, struct fp_http_iter *it,
                        const uint8_t **name, size_t *name_len,
                        const uint8_t **val, size_t *val_len);

/* ---- chunked bodies ------------------------------------------------------------------------ */

#define FP_CHUNK_LINE_MAX   4096u   /* chunk-size line (with extensions) and each trailer line */
#define FP_CHUNK_TRAILER_MAX 8192u  /* all trailer lines together */

/* State of one chunked body. Zero it with fp_chunked_init(); opaque beyond the fields below. */
struct fp_chunked {
    uint64_t remaining;     /* chunk-data bytes still expected in the current chunk */
    uint64_t data_bytes;    /* chunk-data bytes seen so far (the decoded body length) */
    uint64_t body_bytes;    /* bytes consumed so far (framing, data and trailers) */
    uint32_t line_len;      /* bytes of the current size or trailer line */
    uint32_t trailer_len;   /* bytes of trailers so far */
    uint8_t state;          /* internal */
    uint8_t done;           /* 1 once the whole body (last chunk, trailers, final CRLF) was fed */
    uint8_t failed;         /* 1 after an error: every later feed returns the same error */
    int err;                /* the error code once failed */
    const char *why;        /* static text saying what was wrong */
};

/* Contract: prepares st for a new chunked body. */
void fp_chunked_init(struct fp_chunked *st);

/* Contract: consumes the next bytes of a chunked body, buf[0..len) following directly after the
 * bytes fed before. Returns how many bytes at the start of buf belong to the body (0..len);
 * fewer than len only when the body ended inside buf (st->done is then 1 and the rest belongs to
 * the next message). Once done, returns 0. Returns FP_PEEK_ERROR for malformed framing (a chunk
 * size that is not hex, is empty or overflows 2^60, a framing line not ending in CRLF, data not
 * followed by CRLF, a bad trailer line), FP_PEEK_TOO_LARGE for a size line or trailers over
 * the limits above; once failed it returns that code for every later call. Feeding a body in
 * any number of pieces gives the same total and the same outcome as feeding it whole. */
ssize_t fp_chunked_feed(struct fp_chunked *st, const uint8_t *buf, size_t len);

/* ---- host comparison helpers --------------------------------------------------------------- */

/* Contract: 1 when a[0..alen) and b[0..blen) are equal ignoring ASCII case, else 0. */
int fp_ascii_caseeq(const char *a, size_t alen, const char *b, size_t blen);

/* Contract: 1 when `host` matches the policy host `pattern`: equal ignoring ASCII case and one
 * trailing dot on either side; a pattern "*.example.com" matches exactly one more non-empty label
 * ("a.example.com", not "example.com" nor "a.b.example.com"). A port in host is NOT stripped:
 * pass the host part only. Empty host or pattern never match. */
int fp_host_match(const char *pattern, size_t plen, const char *host, size_t hlen);

#ifdef __cplusplus
}
#endif
#endif
