# Python face of the pure C peek parsers (src_c/fp_peek.h): TLS ClientHello SNI, HTTP/1.x request
# and response heads, chunked body framing. For tests and `fastproxy explain`; the data plane calls
# the C functions directly.
from libc.stdint cimport uint8_t
from fastproxy._c_peek cimport *

from fastproxy.errors import FastproxyError as _FastproxyError

PEEK_OK = FP_PEEK_OK
PEEK_FOUND = FP_PEEK_FOUND
PEEK_NEED_MORE = FP_PEEK_NEED_MORE
PEEK_NOT_THIS_PROTOCOL = FP_PEEK_NOT_THIS_PROTOCOL
PEEK_TOO_LARGE = FP_PEEK_TOO_LARGE
PEEK_ERROR = FP_PEEK_ERROR

PEEK_TLS_CAP = FP_PEEK_TLS_CAP
PEEK_HTTP_CAP = FP_PEEK_HTTP_CAP
PEEK_SNI_MAX = FP_PEEK_SNI_MAX
CHUNK_LINE_MAX = FP_CHUNK_LINE_MAX
CHUNK_TRAILER_MAX = FP_CHUNK_TRAILER_MAX

_BODY_NAMES = {FP_BODY_NONE: "none", FP_BODY_LENGTH: "length", FP_BODY_CHUNKED: "chunked",
               FP_BODY_CLOSE: "close", FP_BODY_TUNNEL: "tunnel"}


class PeekError(_FastproxyError):
    """Malformed input to a peek parser (raised by ChunkedDecoder). `code` is a PEEK_* constant,
    `why` the parser's reason."""

    def __init__(self, code, why):
        super().__init__(f"{peek_code_name(code)}: {why}")
        self.code = code
        self.why = why


def peek_code_name(int code):
    """The name of a PEEK_* result code ("ok", "need-more", "not-this-protocol", ...)."""
    return fp_peek_rc_name(code).decode("ascii")


cdef uint8_t _EMPTY[1]


cdef inline const uint8_t *_ptr(const uint8_t[::1] mv):
    return &mv[0] if mv.shape[0] else _EMPTY


cdef inline str _why(const char *why):
    return why.decode("ascii") if why != NULL else ""


def peek_tls_sni(data):
    """Peeks the SNI of the TLS ClientHello at the start of `data` (bytes-like).

    Returns (code, name, need): FOUND with name the lower-cased server name ("" when the
    ClientHello has no SNI), or another PEEK_* code with name None; need is the buffer length to
    come back with on NEED_MORE, else 0."""
    cdef const uint8_t[::1] mv = data
    cdef char out[FP_PEEK_SNI_MAX + 2]
    cdef fp_tls_hello res
    cdef int rc = fp_peek_tls_sni(_ptr(mv), mv.shape[0], out, sizeof(out), &res)
    if rc == FP_PEEK_FOUND:
        return rc, out[:res.sni_len].decode("ascii"), 0
    return rc, None, res.need


def peek_tls_hello(data):
    """Like peek_tls_sni() but returns every detail as a dict (for `fastproxy explain`): code,
    result, name, need, why, has_sni, tls13, hello_end, hello_len, records, record_version,
    client_version."""
    cdef const uint8_t[::1] mv = data
    cdef char out[FP_PEEK_SNI_MAX + 2]
    cdef fp_tls_hello res
    cdef int rc = fp_peek_tls_sni(_ptr(mv), mv.shape[0], out, sizeof(out), &res)
    return {
        "code": rc,
        "result": peek_code_name(rc),
        "name": out[:res.sni_len].decode("ascii") if rc == FP_PEEK_FOUND else None,
        "need": res.need,
        "why": _why(res.why),
        "has_sni": bool(res.has_sni),
        "tls13": bool(res.tls13),
        "hello_end": res.hello_end,
        "hello_len": res.hello_len,
        "records": res.records,
        "record_version": res.record_version,
        "client_version": res.client_version,
    }


cdef list _headers(const uint8_t *buf, size_t head_len, size_t headers_off):
    cdef fp_http_iter it
    cdef const uint8_t *name
    cdef const uint8_t *val
    cdef size_t name_len, val_len
    cdef list out = []
    fp_http_iter_init(&it, headers_off)
    while fp_http_header_next(buf, head_len, &it, &name, &name_len, &val, &val_len):
        out.append(((<const char *>name)[:name_len].decode("latin-1"),
                    (<const char *>val)[:val_len].decode("latin-1")))
    return out


cdef inline str _slice(const uint8_t *buf, size_t off, size_t n):
    return (<const char *>buf)[off:off + n].decode("latin-1")


def peek_tls_server_hello(data):
    """fp_peek_tls_server_hello(): is the server's first handshake message at the start of
    `data` a TLS 1.3 HelloRetryRequest? Returns (code, hrr, need, why): hrr is True/False on
    FOUND, else None; need the buffer length to come back with on NEED_MORE."""
    cdef const uint8_t[::1] mv = data
    cdef fp_tls_server_hello res
    cdef int rc = fp_peek_tls_server_hello(_ptr(mv), mv.shape[0], &res)
    return rc, (bool(res.hrr) if rc == FP_PEEK_FOUND else None), res.need, _why(res.why)


def peek_tls_skip_ccs(data):
    """fp_peek_tls_skip_ccs(): the offset of the first record after the change_cipher_spec
    records at the start of `data`, or PEEK_NEED_MORE / PEEK_ERROR (negative)."""
    cdef const uint8_t[::1] mv = data
    return fp_peek_tls_skip_ccs(_ptr(mv), mv.shape[0])


def peek_http_request(data):
    """Peeks the HTTP/1.x request head at the start of `data` (bytes-like).

    Returns (code, info): on PEEK_OK info is a dict (head_len, method, target, path, query,
    host (lower-case, no port, no trailing dot), port (or None), version, body ("none", "length",
    "chunked"), content_length, keep_alive, connection_close, upgrade, expect_continue,
    host_header, absolute_form, authority_form, headers [(name, value)], spans {field: (offset,
    length)} into data); on NEED_MORE None; on any other code {"why": reason}."""
    cdef const uint8_t[::1] mv = data
    cdef const uint8_t *buf = _ptr(mv)
    cdef fp_http_req r
    cdef int rc = fp_peek_http_request(buf, mv.shape[0], &r)
    if rc == FP_PEEK_NEED_MORE:
        return rc, None
    if rc != FP_PEEK_OK:
        return rc, {"why": _why(r.why)}
    path = _slice(buf, r.path_off, r.path_len)
    query = None
    if r.query_off:
        query = _slice(buf, r.query_off + 1, r.path_off + r.path_len - r.query_off - 1)
        path = path[:r.query_off - r.path_off]
    if not path and r.flags & FP_HTTP_F_ABS_FORM:
        path = "/"
    return rc, {
        "head_len": r.head_len,
        "method": _slice(buf, r.method_off, r.method_len),
        "target": _slice(buf, r.target_off, r.target_len),
        "path": path,
        "query": query,
        "host": _slice(buf, r.host_off, r.host_len).lower(),
        "port": None if r.port < 0 else r.port,
        "version": f"HTTP/1.{r.version_minor}",
        "body": _BODY_NAMES[r.body],
        "content_length": r.content_length if r.body == FP_BODY_LENGTH else None,
        "keep_alive": bool(r.flags & FP_HTTP_F_KEEPALIVE),
        "connection_close": bool(r.flags & FP_HTTP_F_CONN_CLOSE),
        "upgrade": bool(r.flags & FP_HTTP_F_UPGRADE),
        "expect_continue": bool(r.flags & FP_HTTP_F_EXPECT_100),
        "host_header": bool(r.flags & FP_HTTP_F_HOST_HDR),
        "absolute_form": bool(r.flags & FP_HTTP_F_ABS_FORM),
        "authority_form": bool(r.flags & FP_HTTP_F_AUTH_FORM),
        "headers": _headers(buf, r.head_len, r.headers_off),
        "spans": {"method": (r.method_off, r.method_len), "target": (r.target_off, r.target_len),
                  "path": (r.path_off, r.path_len), "host": (r.host_off, r.host_len),
                  "query": r.query_off, "headers": r.headers_off},
    }


def peek_http_response(data, bint head=False, bint connect=False, bint upgrade=False):
    """Peeks the HTTP/1.x response head at the start of `data`; `head` / `connect` / `upgrade`
    say that the request was HEAD / CONNECT / asked for a protocol switch (only then is a 101 a
    tunnel).

    Returns (code, info): on PEEK_OK info is a dict (head_len, status, reason, version, body
    ("none", "length", "chunked", "close", "tunnel"), content_length, keep_alive, interim,
    upgrade, headers, spans); on NEED_MORE None; on any other code {"why": reason}."""
    cdef const uint8_t[::1] mv = data
    cdef const uint8_t *buf = _ptr(mv)
    cdef fp_http_resp r
    cdef unsigned flags = (FP_HTTP_RESP_TO_HEAD if head else 0) | \
        (FP_HTTP_RESP_TO_CONNECT if connect else 0) | (FP_HTTP_RESP_TO_UPGRADE if upgrade else 0)
    cdef int rc = fp_peek_http_response(buf, mv.shape[0], flags, &r)
    if rc == FP_PEEK_NEED_MORE:
        return rc, None
    if rc != FP_PEEK_OK:
        return rc, {"why": _why(r.why)}
    return rc, {
        "head_len": r.head_len,
        "status": r.status,
        "reason": _slice(buf, r.reason_off, r.reason_len),
        "version": f"HTTP/1.{r.version_minor}",
        "body": _BODY_NAMES[r.body],
        "content_length": r.content_length if r.body == FP_BODY_LENGTH else None,
        "keep_alive": bool(r.flags & FP_HTTP_F_KEEPALIVE),
        "connection_close": bool(r.flags & FP_HTTP_F_CONN_CLOSE),
        "interim": bool(r.flags & FP_HTTP_F_INTERIM),
        "upgrade": bool(r.flags & FP_HTTP_F_UPGRADE),
        "headers": _headers(buf, r.head_len, r.headers_off),
        "spans": {"reason": (r.reason_off, r.reason_len), "headers": r.headers_off},
    }


def host_match(pattern, host):
    """fp_host_match(): `host` matches the policy host `pattern` (case-insensitive, one trailing
    dot ignored, "*.example.com" matches exactly one more label)."""
    cdef bytes p = pattern.encode("ascii") if isinstance(pattern, str) else bytes(pattern)
    cdef bytes h = host.encode("ascii") if isinstance(host, str) else bytes(host)
    return bool(fp_host_match(p, len(p), h, len(h)))


cdef class ChunkedDecoder:
    """Incremental framer of one chunked body. feed() returns how many of the given bytes belong
    to the body; fewer than given once the body ended (`done`), the rest is the next message.
    Malformed framing raises PeekError (every later feed raises it again)."""

    cdef fp_chunked st

    def __cinit__(self):
        fp_chunked_init(&self.st)

    def feed(self, data):
        cdef const uint8_t[::1] mv = data
        cdef ssize_t n = fp_chunked_feed(&self.st, _ptr(mv), mv.shape[0])
        if n < 0:
            raise PeekError(<int>n, _why(self.st.why))
        return n

    @property
    def done(self):
        """True once the last chunk, the trailers and the final CRLF were fed."""
        return bool(self.st.done)

    @property
    def data_bytes(self):
        """Chunk-data bytes seen so far (the decoded body length)."""
        return self.st.data_bytes

    @property
    def body_bytes(self):
        """Bytes of the body consumed so far, framing and trailers included."""
        return self.st.body_bytes


def peek_repeat(str kind, data, long n):
    """For micro-benchmarks: runs one parser `n` times over `data` in C (no Python per call) and
    returns the last result code. kind: "tls", "request", "response" or "chunked" (a fresh
    framer per round, fed the whole buffer)."""
    cdef const uint8_t[::1] mv = data
    cdef const uint8_t *buf = _ptr(mv)
    cdef size_t length = mv.shape[0]
    cdef char out[FP_PEEK_SNI_MAX + 2]
    cdef fp_tls_hello tls
    cdef fp_http_req rq
    cdef fp_http_resp rs
    cdef fp_chunked ch
    cdef long i
    cdef long rc = 0
    cdef int k = {"tls": 0, "request": 1, "response": 2, "chunked": 3}[kind]
    with nogil:
        for i in range(n):
            if k == 0:
                rc = fp_peek_tls_sni(buf, length, out, sizeof(out), &tls)
            elif k == 1:
                rc = fp_peek_http_request(buf, length, &rq)
            elif k == 2:
                rc = fp_peek_http_response(buf, length, 0, &rs)
            else:
                fp_chunked_init(&ch)
                rc = fp_chunked_feed(&ch, buf, length)
    return rc
