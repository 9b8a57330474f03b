"""fp_chunked_feed(): the incremental chunked-body framer. Fed byte by byte it must agree with fed
whole; it must stop exactly at the end of the body; malformed framing is refused."""
from __future__ import annotations

import os
import sys

import pytest

from fastproxy import _core

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fuzz"))
import peek_inputs as pi  # noqa: E402

BODIES = pi.CHUNKED + [pi.chunked_body(bytes(range(256)) * 40, n) for n in (1, 7, 4096, 20000)]


def run(pieces) -> tuple:
    """Feeds the pieces; returns (consumed, done, data_bytes) or ("error", code, why)."""
    d = _core.ChunkedDecoder()
    total = 0
    try:
        for p in pieces:
            n = d.feed(p)
            assert 0 <= n <= len(p)
            assert n == len(p) or d.done
            total += n
    except _core.PeekError as e:
        return ("error", e.code, e.why)
    assert d.body_bytes == total
    return (total, d.done, d.data_bytes)


def decode_ref(body: bytes) -> bytes:
    """Reference decoder (for well-formed bodies) to check data_bytes."""
    out, pos = b"", 0
    while True:
        eol = body.index(b"\r\n", pos)
        size = int(body[pos:eol].split(b";")[0], 16)
        pos = eol + 2
        if size == 0:
            break
        out += body[pos:pos + size]
        pos += size + 2
    return out


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
def test_whole_bytewise_and_splits_agree(body):
    nxt = b"GET / HTTP/1.1\r\n\r\n"
    whole = run([body + nxt])
    assert whole == (len(body), True, len(decode_ref(body)))
    assert run([bytes([b]) for b in body + nxt]) == whole
    for cut in range(0, len(body) + 1, max(1, len(body) // 97)):
        assert run([body[:cut], body[cut:] + nxt]) == whole, cut
    # the body alone: done exactly at its last byte, not before
    assert run([body]) == whole
    assert run([body[:-1]])[1] is False


def test_feed_after_done_consumes_nothing():
    d = _core.ChunkedDecoder()
    assert d.feed(b"0\r\n\r\nrest") == 5 and d.done
    assert d.feed(b"more") == 0 and d.done
    assert d.feed(b"") == 0


def test_empty_feed_before_done():
    d = _core.ChunkedDecoder()
    assert d.feed(b"") == 0 and not d.done


@pytest.mark.parametrize("body,why", [
    (b"\r\n", "not hex"),
    (b"g\r\n", "not hex"),
    (b"-1\r\n", "not hex"),
    (b" 5\r\nhello\r\n0\r\n\r\n", "not hex"),
    (b"0x5\r\nhello\r\n0\r\n\r\n", "invalid character after chunk size"),
    (b"5 \r\nhello\r\n0\r\n\r\n", "blank after chunk size"),
    (b"5\nhello\r\n0\r\n\r\n", "invalid character after chunk size"),
    (b"5\r\rhello\r\n0\r\n\r\n", "not ended by CRLF"),
    (b"5\r\nhelloX\r\n0\r\n\r\n", "not followed by CRLF"),
    (b"5\r\nhello\n0\r\n\r\n", "not followed by CRLF"),
    (b"5\r\nhello\r\r0\r\n\r\n", "not followed by CRLF"),
    (b"5;a=\x01\r\nhello\r\n0\r\n\r\n", "control character in chunk extension"),
    (b"0\r\nX: a\n\r\n", "control character in a trailer"),
    (b"0\r\nX: a\r\r\n\r\n", "trailer line not ended by CRLF"),
    (b"0\r\n X: folded\r\n\r\n", "invalid trailer line"),
    (b"0\r\nX Y: a\r\n\r\n", "invalid trailer field name"),
    (b"0\r\nX: a\x00\r\n\r\n", "control character in a trailer"),
    (b"0\r\n\n", "invalid trailer line"),
    (b"0\r\n\r\r", "not ended by CRLF"),
    (b"fffffffffffffffff\r\n", "overflows"),
    (b"1000000000000000\r\n", "overflows"),
])
def test_malformed(body, why):
    whole = run([body])
    assert whole[:2] == ("error", _core.PEEK_ERROR) and why in whole[2], whole
    assert run([bytes([b]) for b in body]) == whole


def test_largest_size_accepted():
    d = _core.ChunkedDecoder()
    assert d.feed(b"fffffffffffffff\r\n") == 17        # 2^60 - 1: framed, data still to come
    assert not d.done
    d.feed(b"\x00" * 1000)
    assert d.data_bytes == 1000


def test_leading_zeros_do_not_overflow():
    body = b"0" * 100 + b"3\r\nabc\r\n0\r\n\r\n"
    assert run([body]) == (len(body), True, 3)


def test_error_is_sticky():
    d = _core.ChunkedDecoder()
    with pytest.raises(_core.PeekError) as e1:
        d.feed(b"zz")
    with pytest.raises(_core.PeekError) as e2:
        d.feed(b"0\r\n\r\n")
    assert e1.value.code == e2.value.code == _core.PEEK_ERROR
    assert isinstance(e1.value, __import__("fastproxy.errors").errors.FastproxyError)


def test_limits():
    ext = b"1;" + b"e" * _core.CHUNK_LINE_MAX + b"\r\nx\r\n0\r\n\r\n"
    assert run([ext])[:2] == ("error", _core.PEEK_TOO_LARGE)
    ok_ext = b"1;" + b"e" * (_core.CHUNK_LINE_MAX - 4) + b"\r\nx\r\n0\r\n\r\n"
    assert run([ok_ext]) == (len(ok_ext), True, 1)
    trailers = b"0\r\n" + b"X-T: " + b"v" * 1000 + b"\r\n"
    many = b"0\r\n" + (b"X-T: " + b"v" * 1000 + b"\r\n") * 9 + b"\r\n"
    assert run([many])[:2] == ("error", _core.PEEK_TOO_LARGE)
    few = trailers + (b"X-T: " + b"v" * 1000 + b"\r\n") * 6 + b"\r\n"
    assert run([few]) == (len(few), True, 0)
    long_line = b"0\r\nX: " + b"v" * _core.CHUNK_LINE_MAX + b"\r\n\r\n"
    assert run([long_line])[:2] == ("error", _core.PEEK_TOO_LARGE)
