# Mirrors src_c/fp_peek.h (the pure peek parsers). Nothing but declarations.
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int32_t

cdef extern from "sys/types.h":
    ctypedef long ssize_t

cdef extern from "fp_peek.h" nogil:
    enum fp_peek_rc:
        FP_PEEK_OK
        FP_PEEK_FOUND
        FP_PEEK_NEED_MORE
        FP_PEEK_NOT_THIS_PROTOCOL
        FP_PEEK_TOO_LARGE
        FP_PEEK_ERROR

    const char *fp_peek_rc_name(int rc)

    enum:
        FP_PEEK_TLS_CAP
        FP_PEEK_SNI_MAX

    struct fp_tls_hello:
        size_t need
        size_t hello_end
        size_t sni_len
        uint32_t hello_len
        uint16_t record_version
        uint16_t client_version
        uint16_t records
        uint8_t has_sni
        uint8_t tls13
        const char *why

    int fp_peek_tls_sni(const uint8_t *buf, size_t len, char *out, size_t outcap,
                        fp_tls_hello *res)

    struct fp_tls_server_hello:
        size_t need
        uint16_t server_version
        uint8_t hrr
        const char *why
    int fp_peek_tls_server_hello(const uint8_t *buf, size_t len, fp_tls_server_hello *res)
    ssize_t fp_peek_tls_skip_ccs(const uint8_t *buf, size_t len)

    unsigned FP_PEEK_HTTP_CAP

    enum fp_http_method:
        FP_HTTP_OTHER
        FP_HTTP_GET
        FP_HTTP_HEAD
        FP_HTTP_POST
        FP_HTTP_PUT
        FP_HTTP_DELETE
        FP_HTTP_CONNECT
        FP_HTTP_OPTIONS
        FP_HTTP_TRACE
        FP_HTTP_PATCH

    enum fp_http_body:
        FP_BODY_NONE
        FP_BODY_LENGTH
        FP_BODY_CHUNKED
        FP_BODY_CLOSE
        FP_BODY_TUNNEL

    unsigned FP_HTTP_F_KEEPALIVE
    unsigned FP_HTTP_F_CONN_CLOSE
    unsigned FP_HTTP_F_CONN_KEEP
    unsigned FP_HTTP_F_CONN_UPGR
    unsigned FP_HTTP_F_UPGRADE
    unsigned FP_HTTP_F_EXPECT_100
    unsigned FP_HTTP_F_HOST_HDR
    unsigned FP_HTTP_F_ABS_FORM
    unsigned FP_HTTP_F_AUTH_FORM
    unsigned FP_HTTP_F_INTERIM
    unsigned FP_HTTP_F_TE

    struct fp_http_req:
        size_t head_len
        size_t method_off, method_len
        size_t target_off, target_len
        size_t path_off, path_len
        size_t query_off
        size_t host_off, host_len
        size_t headers_off
        uint64_t content_length
        int32_t port
        uint32_t flags
        uint16_t nheaders
        uint8_t method
        uint8_t version_minor
        uint8_t body
        const char *why

    int fp_peek_http_request(const uint8_t *buf, size_t len, fp_http_req *res)

    unsigned FP_HTTP_RESP_TO_HEAD
    unsigned FP_HTTP_RESP_TO_CONNECT
    unsigned FP_HTTP_RESP_TO_UPGRADE

    struct fp_http_resp:
        size_t head_len
        size_t reason_off, reason_len
        size_t headers_off
        uint64_t content_length
        uint32_t flags
        uint16_t status
        uint16_t nheaders
        uint8_t version_minor
        uint8_t body
        const char *why

    int fp_peek_http_response(const uint8_t *buf, size_t len, unsigned req_flags,
                              fp_http_resp *res)

    struct fp_http_iter:
        size_t pos

    void fp_http_iter_init(fp_http_iter *it, size_t headers_off)
    int fp_http_header_next(const uint8_t *buf, size_t head_len, fp_http_iter *it,
                            const uint8_t **name, size_t *name_len,
                            const uint8_t **val, size_t *val_len)

    unsigned FP_CHUNK_LINE_MAX
    unsigned FP_CHUNK_TRAILER_MAX

    struct fp_chunked:
        uint64_t remaining
        uint64_t data_bytes
        uint64_t body_bytes
        uint32_t line_len
        uint32_t trailer_len
        uint8_t state
        uint8_t done
        uint8_t failed
        int err
        const char *why

    void fp_chunked_init(fp_chunked *st)
    ssize_t fp_chunked_feed(fp_chunked *st, const uint8_t *buf, size_t len)

    int fp_ascii_caseeq(const char *a, size_t alen, const char *b, size_t blen)
    int fp_host_match(const char *pattern, size_t plen, const char *host, size_t hlen)
