"""fp_peek_http_request() / fp_peek_http_response(): heads whole and cut at every offset, framing,
keep-alive, and the request-smuggling cases that must be refused."""
from __future__ import annotations

import os
import sys

import pytest

from fastproxy import _core

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fuzz"))
import peek_inputs as pi  # noqa: E402

OK, NEED, NOT, LARGE, ERR = (_core.PEEK_OK, _core.PEEK_NEED_MORE, _core.PEEK_NOT_THIS_PROTOCOL,
                             _core.PEEK_TOO_LARGE, _core.PEEK_ERROR)


def head_end(data: bytes) -> int:
    """Reference: the end of the first head (CRLFCRLF or LFLF, after leading empty lines)."""
    i = 0
    while data[i:i + 1] in (b"\r", b"\n"):
        i += 1
    cands = [p + n for p, n in ((data.find(b"\r\n\r\n", i), 4), (data.find(b"\n\n", i), 2),
                                (data.find(b"\n\r\n", i), 3)) if p >= 0]
    return min(cands)


@pytest.mark.parametrize("data", pi.REQUESTS, ids=range(len(pi.REQUESTS)))
def test_request_every_split(data):
    end = head_end(data)
    rc, whole = _core.peek_http_request(data)
    assert rc == OK, whole
    assert whole["head_len"] == end
    for k in range(end):
        assert _core.peek_http_request(data[:k]) == (NEED, None), k
    for k in range(end, len(data) + 1):
        assert _core.peek_http_request(data[:k]) == (OK, whole), k
    # what follows the head (a body, the next request) does not change the answer
    assert _core.peek_http_request(data + b"GET / HTTP/1.1\r\n\r\n") == (OK, whole)


@pytest.mark.parametrize("data,flags", pi.RESPONSES, ids=range(len(pi.RESPONSES)))
def test_response_every_split(data, flags):
    end = head_end(data)
    kw = {"head": bool(flags & 1), "connect": bool(flags & 2), "upgrade": bool(flags & 4)}
    rc, whole = _core.peek_http_response(data, **kw)
    assert rc == OK, whole
    assert whole["head_len"] == end
    for k in range(end):
        rc, info = _core.peek_http_response(data[:k], **kw)
        assert (rc, info) == (NEED, None), k


def req(data: bytes) -> dict:
    rc, info = _core.peek_http_request(data)
    assert rc == OK, info
    return info


def req_err(data: bytes, code: int = ERR) -> str:
    rc, info = _core.peek_http_request(data)
    assert rc == code, (rc, info)
    return "" if info is None else info["why"]


def test_request_fields():
    r = req(pi.REQUESTS[1])
    assert (r["method"], r["path"], r["query"], r["host"], r["port"]) == \
        ("GET", "/api/v1/items", "page=2&sort=asc", "api.example.com", 8080)
    assert r["target"] == "/api/v1/items?page=2&sort=asc"
    assert r["version"] == "HTTP/1.1" and r["keep_alive"] and r["body"] == "none"
    assert r["headers"] == [("Host", "api.example.com:8080"), ("User-Agent", "curl/8.5.0"),
                            ("Accept", "*/*"), ("X-Request-Id", "0f3a9c")]
    r = req(pi.REQUESTS[2])
    assert (r["host"], r["port"], r["body"], r["content_length"]) == \
        ("upload.example.com", None, "length", 11)
    r = req(pi.REQUESTS[3])
    assert r["body"] == "chunked" and r["expect_continue"] and r["content_length"] is None
    r = req(pi.REQUESTS[4])
    assert r["absolute_form"] and (r["host"], r["port"], r["path"], r["query"]) == \
        ("proxy.example.com", 81, "/abs", "q=1")
    r = req(pi.REQUESTS[5])
    assert r["authority_form"] and (r["method"], r["host"], r["port"], r["path"]) == \
        ("CONNECT", "db.example.com", 5432, "")
    r = req(pi.REQUESTS[6])
    assert r["upgrade"] and r["host"] == "ws.example.com"
    r = req(pi.REQUESTS[7])
    assert r["version"] == "HTTP/1.0" and r["keep_alive"] and r["host"] == ""
    r = req(pi.REQUESTS[8])
    assert (r["method"], r["path"], r["host"], r["port"], r["keep_alive"]) == \
        ("OPTIONS", "*", "[2001:db8::1]", 8443, False)


@pytest.mark.parametrize("target,host,port,path,query", [
    ("http://a.example", "a.example", None, "/", None),
    ("http://a.example?x", "a.example", None, "/", "x"),
    ("HTTP://A.Example:8080/p/q", "a.example", 8080, "/p/q", None),
    ("https://a.example./x", "a.example", None, "/x", None),
    ("http://[::1]:81/", "[::1]", 81, "/", None),
    ("http://a.example:/x", "a.example", None, "/x", None),
])
def test_absolute_form(target, host, port, path, query):
    r = req(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (target.encode(), host.encode()))
    assert (r["host"], r["port"], r["path"], r["query"]) == (host, port, path, query)


@pytest.mark.parametrize("version,conn,keep", [
    ("1.1", None, True), ("1.1", "close", False), ("1.1", "keep-alive", True),
    ("1.1", "Keep-Alive, Close", False), ("1.0", None, False), ("1.0", "keep-alive", True),
    ("1.0", "TE, keep-alive", True), ("1.0", "close", False),
])
def test_keep_alive(version, conn, keep):
    data = b"GET / HTTP/%s\r\nHost: h\r\n" % version.encode()
    if conn:
        data += b"Connection: %s\r\n" % conn.encode()
    assert req(data + b"\r\n")["keep_alive"] is keep


@pytest.mark.parametrize("headers,body,length", [
    (b"Content-Length: 0\r\n", "length", 0),
    (b"Content-Length: 42\r\nContent-Length: 42\r\n", "length", 42),
    (b"Content-Length: 7, 7 ,7\r\n", "length", 7),
    (b"Content-Length:  900000000000000000 \r\n", "length", 900000000000000000),
    (b"Content-Length: 0000012\r\n", "length", 12),
    (b"Transfer-Encoding: CHUNKED\r\n", "chunked", None),
    (b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", "chunked", None),
    (b"Transfer-Encoding: gzip;q=1 , chunked,\r\n", "chunked", None),
    (b"", "none", None),
])
def test_request_framing(headers, body, length):
    r = req(b"POST / HTTP/1.1\r\nHost: h\r\n" + headers + b"\r\n")
    assert (r["body"], r["content_length"]) == (body, length)


@pytest.mark.parametrize("data,why", [
    # request smuggling: both framings, conflicting or malformed lengths
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
     "both Transfer-Encoding and Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
     "both Transfer-Encoding and Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
     "conflicting Content-Length"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 6\r\n\r\n", "conflicting"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\n", "not a number"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", "not a number"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 0x10\r\n\r\n", "not a number"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5 5\r\n\r\n", "not a number"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n", "not a number"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5,\r\n\r\n", "not a number"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n",
     "too large"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", "does not end in chunked"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
     "does not end in chunked"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n",
     "does not end in chunked"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
     "more than once"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n", "does not end"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \"chunked\"\r\n\r\n", "invalid"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n", "empty Transfer-Encoding"),
    (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "HTTP/1.0"),
    # header syntax
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding : chunked\r\n\r\n", "before a header's"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n", "obs-fold"),
    (b"POST / HTTP/1.1\r\n Host: h\r\n\r\n", "obs-fold"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n", "bare CR"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n", "control character"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nX\x7fY: a\r\n\r\n", "invalid header name"),
    (b"POST / HTTP/1.1\r\nHost: h\r\n: a\r\n\r\n", "empty header name"),
    (b"POST / HTTP/1.1\r\nHost: h\r\nNoColon\r\n\r\n", "invalid header name"),
    # Host
    (b"GET / HTTP/1.1\r\n\r\n", "without Host"),
    (b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n", "more than one Host"),
    (b"GET / HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n\r\n", "more than one Host"),
    (b"GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n", "userinfo"),
    (b"GET / HTTP/1.1\r\nHost: a.example:80@b.example\r\n\r\n", "userinfo"),
    (b"GET / HTTP/1.1\r\nHost: a example\r\n\r\n", "invalid character"),
    (b"GET / HTTP/1.1\r\nHost: a.example:99999\r\n\r\n", "port out of range"),
    (b"GET / HTTP/1.1\r\nHost: a.example:123456\r\n\r\n", "port out of range"),
    (b"GET / HTTP/1.1\r\nHost: a.example:8x\r\n\r\n", "invalid port"),
    (b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n", "empty host"),
    (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", "IPv6"),
    (b"GET / HTTP/1.1\r\nHost: [::g]\r\n\r\n", "IPv6"),
    (b"GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n", "differs"),
    (b"GET http://u@a.example/ HTTP/1.1\r\nHost: a.example\r\n\r\n", "userinfo"),
    (b"GET http:///x HTTP/1.1\r\nHost: a.example\r\n\r\n", "without host"),
    (b"CONNECT a.example HTTP/1.1\r\nHost: a.example\r\n\r\n", "without port"),
    (b"CONNECT /x HTTP/1.1\r\nHost: a.example\r\n\r\n", "invalid character"),
    # request line
    (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", "invalid request-target"),
    (b"GET /\x01 HTTP/1.1\r\nHost: h\r\n\r\n", "invalid request-target"),
    (b"GET x HTTP/1.1\r\nHost: h\r\n\r\n", "invalid request-target"),
    (b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", "minor version"),
    (b"GET / HTTP/1.1 \r\nHost: h\r\n\r\n", "junk after"),
])
def test_request_refused(data, why):
    assert why in req_err(data)
    # also when more bytes follow
    assert why in req_err(data + b"0\r\n\r\n")


@pytest.mark.parametrize("data", [
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"SSH-2.0-OpenSSH_9.6\r\n",
    b"GET /\r\n\r\n",
    b"GET / FTP/1.0\r\n\r\n",
    b" GET / HTTP/1.1\r\n\r\n",
    b"\r\r\n",
    b"{\"json\": 1}",
])
def test_request_not_http(data):
    req_err(data, NOT)


def test_request_early_not_http():
    """A method that cannot be a token is refused after its first bytes, not at the cap."""
    for data in (b"\x16", b"\x16\x03\x01", b"GE\x00", b"{", b"SSH-2.0-x "):
        assert _core.peek_http_request(data)[0] == (NOT if data != b"SSH-2.0-x " else NEED)


def test_request_too_large():
    line = b"GET / HTTP/1.1\r\nHost: h\r\n"
    filler = b"X-Pad: " + b"a" * 100 + b"\r\n"
    data = line + filler * 90 + b"\r\n"
    assert len(data) > _core.PEEK_HTTP_CAP
    assert req_err(data[:_core.PEEK_HTTP_CAP], LARGE)
    assert req_err(data, LARGE)
    assert _core.peek_http_request(data[:_core.PEEK_HTTP_CAP - 1])[0] == NEED
    # exactly at the cap is fine
    pad = _core.PEEK_HTTP_CAP - len(line) - len(b"X-Pad: \r\n\r\n")
    data = line + b"X-Pad: " + b"b" * pad + b"\r\n\r\n"
    assert len(data) == _core.PEEK_HTTP_CAP
    assert req(data)["head_len"] == _core.PEEK_HTTP_CAP
    assert req_err(b"\r\n" * (_core.PEEK_HTTP_CAP // 2), LARGE)


def test_many_headers_iterated():
    names = [f"X-H{i}" for i in range(300)]
    data = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"".join(
        b"%s: \t v%d \t\r\n" % (n.encode(), i) for i, n in enumerate(names)) + b"\r\n"
    r = req(data)
    assert r["headers"][1:] == [(n, f"v{i}") for i, n in enumerate(names)]


def test_obs_text_in_values_kept():
    r = req(b"GET / HTTP/1.1\r\nHost: h\r\nX-Name: caf\xc3\xa9\r\nEmpty:\r\n\r\n")
    assert r["headers"][1:] == [("X-Name", "caf\xc3\xa9"), ("Empty", "")]


def test_keep_alive_stream_with_bodies():
    """What the relay does on a keep-alive connection: peek a head, skip its body (counting
    Content-Length, framing chunked), peek the next head - and find every request's Host."""
    bodies = [b"", b"hello", pi.chunked_body(b"x" * 5000, 333), b"", pi.chunked_body(b"")]
    stream, hosts = b"", []
    for i, body in enumerate(bodies):
        host = f"h{i}.example"
        hosts.append(host)
        if body.endswith(b"0\r\n\r\n") and body[:1] != b"h":
            framing = b"Transfer-Encoding: chunked\r\n"
        else:
            framing = b"Content-Length: %d\r\n" % len(body)
        stream += b"POST /%d HTTP/1.1\r\nHost: %s\r\n%s\r\n%s" % (
            i, host.upper().encode(), framing, body)
    seen, pos = [], 0
    while pos < len(stream):
        rc, r = _core.peek_http_request(stream[pos:])
        assert rc == OK, r
        seen.append(r["host"])
        pos += r["head_len"]
        if r["body"] == "length":
            pos += r["content_length"]
        elif r["body"] == "chunked":
            dec = _core.ChunkedDecoder()
            pos += dec.feed(stream[pos:])
            assert dec.done
    assert seen == hosts and pos == len(stream)


def resp(data: bytes, **kw) -> dict:
    rc, info = _core.peek_http_response(data, **kw)
    assert rc == OK, info
    return info


@pytest.mark.parametrize("data,kw,body,length,keep", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", {}, "length", 5, True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", {"head": True}, "none", None, True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", {}, "chunked", None, True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", {}, "close", None, False),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", {}, "close", None, False),
    (b"HTTP/1.1 200 OK\r\n\r\n", {}, "close", None, False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n", {}, "length", 3, False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n", {}, "length", 3,
     True),
    (b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n", {}, "none", None, True),
    (b"HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: chunked\r\n\r\n", {}, "none", None, True),
    (b"HTTP/1.1 100 Continue\r\n\r\n", {}, "none", None, True),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n",
     {"upgrade": True}, "tunnel", None, False),
    # a 101 the request did not ask for (httpbin's /status/101): a final response, still HTTP
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n", {},
     "none", None, True),
    (b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n", {}, "none", None, True),
    (b"HTTP/1.0 101 Switching Protocols\r\n\r\n", {}, "none", None, False),
    (b"HTTP/1.1 200 OK\r\n\r\n", {"connect": True}, "tunnel", None, False),
    (b"HTTP/1.1 407 Proxy Auth\r\nContent-Length: 0\r\n\r\n", {"connect": True}, "length", 0,
     True),
    (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 13\r\nConnection: close\r\n\r\n", {}, "length",
     13, False),
    (b"HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n", {}, "length", 1, True),
    (b"HTTP/1.1 599 \r\nContent-Length: 1\r\n\r\n", {}, "length", 1, True),
])
def test_response_framing(data, kw, body, length, keep):
    r = resp(data, **kw)
    assert (r["body"], r["content_length"], r["keep_alive"]) == (body, length, keep)


def test_response_fields():
    r = resp(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n")
    assert (r["status"], r["reason"], r["interim"]) == (103, "Early Hints", True)
    r = resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
             upgrade=True)
    assert r["upgrade"] and not r["interim"] and r["body"] == "tunnel"
    r = resp(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    assert r["upgrade"] and not r["interim"] and r["body"] == "none"
    r = resp(b"HTTP/1.0 404 Not Found\r\nServer: x\r\n\r\n")
    assert (r["status"], r["reason"], r["version"], r["headers"]) == \
        (404, "Not Found", "HTTP/1.0", [("Server", "x")])


@pytest.mark.parametrize("data,code", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", ERR),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", ERR),
    (b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n", ERR),
    (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", ERR),
    (b"HTTP/1.1 20 OK\r\n\r\n", ERR),
    (b"HTTP/1.1 099 Low\r\n\r\n", ERR),
    (b"HTTP/1.1 2000 OK\r\n\r\n", ERR),
    (b"HTTP/1.1 200OK\r\n\r\n", ERR),
    (b"HTTP/1.1 200 O\x01K\r\n\r\n", ERR),
    (b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n", ERR),
    (b"HTTP/1.3 200 OK\r\n\r\n", ERR),
    (b"HTTP/2 200\r\n\r\n", NOT),
    (b"HTTP/2.0 200 OK\r\n\r\n", NOT),
    (b"HTTX/1.1 200 OK\r\n\r\n", NOT),
    (b"\x16\x03\x03", NOT),
    (b"SSH-2.0-x\r\n", NOT),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 2000, LARGE),
])
def test_response_refused(data, code):
    assert _core.peek_http_response(data)[0] == code


def test_response_early_not_http():
    assert _core.peek_http_response(b"H")[0] == NEED
    assert _core.peek_http_response(b"HTTP/")[0] == NEED
    assert _core.peek_http_response(b"X")[0] == NOT
    assert _core.peek_http_response(b"HTTP/2")[0] == NOT


def _ref_host_match(pattern: str, host: str) -> bool:
    p, h = pattern.lower(), host.lower()
    p = p[:-1] if p.endswith(".") else p
    h = h[:-1] if h.endswith(".") else h
    if not p or not h:
        return False
    if p.startswith("*.") and len(p) > 2:
        head, dot, rest = h.partition(".")
        return bool(head) and bool(dot) and rest == p[2:]
    return p == h


@pytest.mark.parametrize("pattern,host", [
    ("example.com", "example.com"), ("Example.COM.", "example.com"),
    ("example.com", "EXAMPLE.com."), ("example.com", "www.example.com"),
    ("*.example.com", "a.example.com"), ("*.example.com", "A.Example.Com."),
    ("*.example.com", "example.com"), ("*.example.com", "a.b.example.com"),
    ("*.example.com", ".example.com"), ("*.example.com", "aexample.com"),
    ("", ""), ("a", ""), ("", "a"), (".", "."), ("*.", "a."), ("*", "a"),
])
def test_host_match(pattern, host):
    assert _core.host_match(pattern, host) is _ref_host_match(pattern, host)
