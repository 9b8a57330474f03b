"""Inputs for the peek parser tests and fuzzers: real TLS ClientHellos made by Python's `ssl`
module (through MemoryBIO, no sockets), a hand-made ClientHello builder for edge cases, HTTP heads
and chunked bodies. `python tests/fuzz/peek_inputs.py DIR` writes them as a libFuzzer seed corpus
(first byte = the harness's parser selector, see fuzz_peek.c)."""
from __future__ import annotations

import os
import ssl
import struct
import subprocess
import sys
import tempfile
from typing import Iterable, List, Optional, Sequence, Tuple

# ---- real ClientHellos ------------------------------------------------------------------------


def client_hello(server_hostname: Optional[str], *, tls13: Optional[bool] = None,
                 alpn: Optional[Sequence[str]] = None,
                 session: Optional[ssl.SSLSession] = None,
                 ctx: Optional[ssl.SSLContext] = None) -> bytes:
    """The first flight of an `ssl` client: the ClientHello records, exactly as OpenSSL sends
    them. tls13=True: TLS 1.3 only; False: TLS 1.2 only; None: both offered."""
    if ctx is None:
        ctx = client_context(tls13)
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=server_hostname, session=session)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def client_context(tls13: Optional[bool] = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if tls13 is True:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    elif tls13 is False:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def _pump(a_out: ssl.MemoryBIO, b_in: ssl.MemoryBIO) -> bool:
    data = a_out.read()
    if data:
        b_in.write(data)
    return bool(data)


def resumption_hello(server_hostname: str, tls13: bool) -> bytes:
    """A ClientHello that resumes a session: a full handshake with an in-memory server (a
    throw-away self-signed certificate made with the openssl command) first, then the second
    ClientHello, which carries the session ticket (TLS 1.2 session_ticket extension, TLS 1.3
    pre_shared_key as the very last extension)."""
    with tempfile.TemporaryDirectory() as d:
        key, crt = os.path.join(d, "k.pem"), os.path.join(d, "c.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-subj", "/CN=peek.test",
                        "-days", "1", "-keyout", key, "-out", crt],
                       check=True, capture_output=True)
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(crt, key)
    cctx = client_context(tls13)
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    cli = cctx.wrap_bio(c_in, c_out, server_hostname=server_hostname)
    srv = sctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(20):
        for obj in (cli, srv):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
        moved = _pump(c_out, s_in) | _pump(s_out, c_in)
        if not moved:
            break
    # TLS 1.3 tickets come after the handshake: let the client read them.
    srv.write(b"x")
    _pump(s_out, c_in)
    try:
        cli.read(1)
    except ssl.SSLWantReadError:
        pass
    session = cli.session
    assert session is not None and session.has_ticket, "server issued no ticket"
    return client_hello(server_hostname, session=session, ctx=cctx)


# ---- hand-made ClientHellos -------------------------------------------------------------------


def u8(b: bytes) -> bytes:
    return struct.pack("!B", len(b)) + b


def u16(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def u24(b: bytes) -> bytes:
    return struct.pack("!I", len(b))[1:] + b


def ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!H", etype) + u16(body)


def sni_ext(*names: bytes, name_type: int = 0) -> bytes:
    return ext(0, u16(b"".join(struct.pack("!B", name_type) + u16(n) for n in names)))


def hello_body(extensions: Optional[bytes], *, session_id: bytes = b"\x11" * 32,
               ciphers: bytes = b"\x13\x01\x13\x02\xc0\x2f", version: int = 0x0303) -> bytes:
    body = struct.pack("!H", version) + bytes(range(32)) + u8(session_id) + u16(ciphers)
    body += u8(b"\x00")
    if extensions is not None:
        body += u16(extensions)
    return body


def handshake(body: bytes, msg_type: int = 1) -> bytes:
    return struct.pack("!B", msg_type) + u24(body)


def records(hs: bytes, sizes: Iterable[int] = (), version: int = 0x0301,
            content_type: int = 22) -> bytes:
    """Splits the handshake bytes into records of the given payload sizes (the rest in
    records of at most 16384)."""
    out, pos = b"", 0
    for n in sizes:
        piece = hs[pos:pos + n]
        out += struct.pack("!BHH", content_type, version, len(piece)) + piece
        pos += n
    while pos < len(hs):
        piece = hs[pos:pos + 16384]
        out += struct.pack("!BHH", content_type, version, len(piece)) + piece
        pos += len(piece)
    return out


def simple_hello(name: Optional[bytes] = b"example.com", sizes: Iterable[int] = (),
                 extra: bytes = b"") -> bytes:
    exts = (sni_ext(name) if name is not None else b"") + extra
    return records(handshake(hello_body(exts)), sizes)


# ---- TLS 1.3 HelloRetryRequest -----------------------------------------------------------------

#: SHA-256("HelloRetryRequest"): the random of a ServerHello that is a HelloRetryRequest
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")
#: TLS 1.3 change_cipher_spec record (middlebox compatibility)
CCS = b"\x14\x03\x03\x00\x01\x01"
X25519, SECP256R1 = 0x001D, 0x0017


def server_hello(hrr: bool, sizes: Iterable[int] = (), group: int = X25519) -> bytes:
    """A TLS 1.3 ServerHello (or, with hrr, a HelloRetryRequest asking for `group`), as records
    of the given payload sizes."""
    random = HRR_RANDOM if hrr else bytes(range(100, 132))
    exts = ext(43, b"\x03\x04") + (ext(51, struct.pack("!H", group)) if hrr
                                   else ext(51, struct.pack("!H", group) + u16(b"\x09" * 32)))
    body = b"\x03\x03" + random + u8(b"\x11" * 32) + b"\x13\x01" + b"\x00" + u16(exts)
    return records(handshake(body, msg_type=2), sizes, version=0x0303)


def tls13_hello(name: Optional[bytes], key_shares: Sequence[Tuple[int, bytes]] = (),
                groups: Sequence[int] = (X25519,), sizes: Iterable[int] = (),
                random: bytes = bytes(range(32))) -> bytes:
    """A TLS 1.3-only ClientHello a real server accepts: SNI `name`, the given key shares (none:
    an empty key_share, which makes a server send a HelloRetryRequest), supported groups,
    ECDSA/RSA-PSS signature algorithms, a 32-byte legacy session id."""
    exts = sni_ext(name) if name is not None else b""
    exts += ext(10, u16(b"".join(struct.pack("!H", g) for g in groups)))       # supported_groups
    exts += ext(13, u16(b"\x04\x03\x08\x04\x08\x05\x08\x06\x05\x03"))              # sig algs
    exts += ext(43, u8(b"\x03\x04"))                                            # TLS 1.3 only
    exts += ext(45, u8(b"\x01"))                                                # psk_dhe_ke
    exts += ext(51, u16(b"".join(struct.pack("!H", g) + u16(k) for g, k in key_shares)))
    body = b"\x03\x03" + random + u8(b"\x22" * 32) + u16(b"\x13\x01\x13\x02\x13\x03")
    body += u8(b"\x00") + u16(exts)
    return records(handshake(body), sizes, version=0x0301)


# ---- HTTP -------------------------------------------------------------------------------------

REQUESTS: List[bytes] = [
    b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"GET /api/v1/items?page=2&sort=asc HTTP/1.1\r\nHost: api.example.com:8080\r\n"
    b"User-Agent: curl/8.5.0\r\nAccept: */*\r\nX-Request-Id: 0f3a9c\r\n\r\n",
    b"POST /upload HTTP/1.1\r\nHost: Upload.Example.COM.\r\nContent-Length: 11\r\n"
    b"Content-Type: text/plain\r\n\r\nhello world",
    b"PUT /x HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: gzip, chunked\r\n"
    b"Expect: 100-continue\r\n\r\n",
    b"GET http://Proxy.Example.com:81/abs?q=1 HTTP/1.1\r\nHost: proxy.example.com\r\n\r\n",
    b"CONNECT db.example.com:5432 HTTP/1.1\r\nHost: db.example.com:5432\r\n\r\n",
    b"GET /chat HTTP/1.1\nHost: ws.example.com\nUpgrade: websocket\nConnection: Upgrade\n\n",
    b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"\r\n\r\nOPTIONS * HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\nConnection: close\r\n\r\n",
]

RESPONSES: List[Tuple[bytes, int]] = [          # (head, FP_HTTP_RESP_TO_* flags)
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\n", 0),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", 0),
    (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 13\r\nConnection: keep-alive\r\n\r\n", 0),
    (b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\n", 0),
    (b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n", 0),
    (b"HTTP/1.1 100 Continue\r\n\r\n", 0),
    (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 4),
    (b"HTTP/1.1 101 Switching Protocols\r\nContent-Length: 0\r\n\r\n", 0),
    (b"HTTP/1.1 200 Connection established\r\n\r\n", 2),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", 1),
]

CHUNKED: List[bytes] = [
    b"0\r\n\r\n",
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"1A;name=value\r\n" + b"a" * 26 + b"\r\n0;last\r\nExpires: never\r\nX-Sum: 1\r\n\r\n",
    b"000010\r\n" + b"z" * 16 + b"\r\n0\r\n\r\n",
]


def chunked_body(data: bytes, chunk: int = 1000) -> bytes:
    out = b""
    for i in range(0, len(data), chunk):
        piece = data[i:i + chunk]
        out += b"%x\r\n" % len(piece) + piece + b"\r\n"
    return out + b"0\r\n\r\n"


def seed_corpus() -> List[bytes]:
    """Seeds for fuzz_peek.c: selector byte (0 TLS, 1 request, 2 response, 3 chunked) + input."""
    seeds = [b"\x00" + client_hello("www.example.com"),
             b"\x00" + client_hello(None, tls13=False),
             b"\x00" + simple_hello(b"a.example", sizes=(7, 20, 3))]
    seeds += [b"\x04" + server_hello(True), b"\x04" + server_hello(False, (1, 3, 40)),
              b"\x04" + CCS + tls13_hello(b"secure.test")]
    seeds += [b"\x01" + r for r in REQUESTS]
    seeds += [bytes([2 | f << 2]) + r for r, f in RESPONSES]
    seeds += [b"\x03" + c for c in CHUNKED]
    return seeds


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "corpus"
    os.makedirs(target, exist_ok=True)
    for i, s in enumerate(seed_corpus()):
        with open(os.path.join(target, f"seed-{i:02d}"), "wb") as f:
            f.write(s)
