"""Property-based fuzzing (hypothesis) of every peek parser: random bytes and mutations of valid
inputs never crash, every offset stays inside the input, and answers are consistent under
truncation and extension (a complete message parses the same whatever follows it; a valid
message cut short is NEED_MORE)."""
from __future__ import annotations

import os
import re
import sys

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastproxy import _core

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fuzz"))
import peek_inputs as pi  # noqa: E402
from test_peek_http import _ref_host_match  # noqa: E402

FUZZ = settings(max_examples=int(os.environ.get("PEEK_FUZZ_EXAMPLES", "400")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

NAME_RE = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*")
CODES = {_core.PEEK_OK, _core.PEEK_NEED_MORE, _core.PEEK_NOT_THIS_PROTOCOL, _core.PEEK_TOO_LARGE,
         _core.PEEK_ERROR}

TLS_SEEDS = [pi.client_hello("www.example.com"), pi.client_hello(None, tls13=False),
             pi.simple_hello(b"multi.example", sizes=(6, 50, 2)),
             pi.simple_hello(b"x.y", extra=pi.ext(43, b"\x04\x03\x04\x03\x03"))]
REQ_SEEDS = pi.REQUESTS
RESP_SEEDS = [r for r, _ in pi.RESPONSES]


@st.composite
def mutated(draw, seeds):
    """A seed with a few random edits: flip, insert, delete, duplicate a slice, truncate."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "dup", "cut"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0, 1, 0x0a, 0x0d, 0x20, 0x3a, 0x7f, 0x80, 0xff,
                                              ord("0"), ord("f"), ord(";"), ord(",")]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
        elif op == "dup":
            n = draw(st.integers(1, 40))
            data[pos:pos] = data[pos:pos + n]
        elif op == "cut":
            del data[pos:]
    return bytes(data)


def any_input(seeds):
    return st.one_of(st.binary(max_size=600), mutated(seeds))


def check_tls(data: bytes) -> None:
    info = _core.peek_tls_hello(data)
    rc = info["code"]
    assert rc in CODES
    assert _core.peek_tls_sni(data) == (rc, info["name"], info["need"])
    if rc == _core.PEEK_FOUND:
        name = info["name"]
        assert len(name) <= _core.PEEK_SNI_MAX
        assert name == "" or NAME_RE.fullmatch(name), name
        assert info["has_sni"] == (name != "")
        end = info["hello_end"]
        assert 9 <= end <= min(len(data), _core.PEEK_TLS_CAP)
        assert _core.peek_tls_sni(data[:end]) == (rc, name, 0)
        assert _core.peek_tls_sni(data[:end - 1])[0] == _core.PEEK_NEED_MORE
    elif rc == _core.PEEK_NEED_MORE:
        assert len(data) < info["need"] <= _core.PEEK_TLS_CAP
        assert info["name"] is None
    else:
        assert info["why"] and info["need"] == 0 and info["name"] is None


def check_request(data: bytes) -> None:
    rc, r = _core.peek_http_request(data)
    assert rc in CODES
    if rc != _core.PEEK_OK:
        assert (r is None) == (rc == _core.PEEK_NEED_MORE)
        if r is not None:
            assert r["why"]
        return
    end = r["head_len"]
    assert end <= min(len(data), _core.PEEK_HTTP_CAP)
    sp = r["spans"]
    for field in ("method", "target", "path", "host"):
        off, n = sp[field]
        assert off + n <= end, field
    assert r["method"] == data[sp["method"][0]:sum(sp["method"])].decode("latin-1")
    assert r["target"] == data[sp["target"][0]:sum(sp["target"])].decode("latin-1")
    assert sp["query"] == 0 or data[sp["query"]] == ord("?")
    assert sp["headers"] <= end
    assert r["host"] == r["host"].lower() and not r["host"].endswith(".")
    assert r["port"] is None or 0 <= r["port"] <= 65535
    assert r["body"] in ("none", "length", "chunked")
    assert (r["content_length"] is not None) == (r["body"] == "length")
    assert len(r["headers"]) <= end
    assert _core.peek_http_request(data[:end]) == (rc, r)
    assert _core.peek_http_request(data[:end] + b"\x00garbage") == (rc, r)
    assert _core.peek_http_request(data[:end - 1])[0] == _core.PEEK_NEED_MORE


def check_response(data: bytes, head: bool, connect: bool) -> None:
    rc, r = _core.peek_http_response(data, head=head, connect=connect)
    assert rc in CODES
    if rc != _core.PEEK_OK:
        assert (r is None) == (rc == _core.PEEK_NEED_MORE)
        return
    end = r["head_len"]
    assert end <= min(len(data), _core.PEEK_HTTP_CAP)
    off, n = r["spans"]["reason"]
    assert off + n <= end and r["spans"]["headers"] <= end
    assert 100 <= r["status"] <= 999
    assert r["body"] in ("none", "length", "chunked", "close", "tunnel")
    if head:
        assert r["body"] in ("none", "tunnel")
    assert _core.peek_http_response(data[:end], head=head, connect=connect) == (rc, r)
    assert _core.peek_http_response(data[:end - 1], head=head,
                                    connect=connect)[0] == _core.PEEK_NEED_MORE


def chunked_run(pieces):
    d = _core.ChunkedDecoder()
    total = 0
    try:
        for p in pieces:
            n = d.feed(p)
            assert 0 <= n <= len(p) and (n == len(p) or d.done)
            total += n
    except _core.PeekError as e:
        assert e.code in (_core.PEEK_ERROR, _core.PEEK_TOO_LARGE)
        return ("error", e.code, e.why)
    assert d.data_bytes <= total == d.body_bytes
    return (total, d.done, d.data_bytes)


@FUZZ
@given(any_input(TLS_SEEDS))
def test_fuzz_tls(data):
    check_tls(data)


@FUZZ
@given(any_input(REQ_SEEDS))
def test_fuzz_request(data):
    check_request(data)


@FUZZ
@given(any_input(RESP_SEEDS), st.booleans(), st.booleans())
def test_fuzz_response(data, head, connect):
    check_response(data, head, connect)


@FUZZ
@given(any_input(pi.CHUNKED), st.lists(st.integers(0, 700), max_size=6))
def test_fuzz_chunked_splits_agree(data, cuts):
    whole = chunked_run([data])
    cuts = sorted(set(c for c in cuts if c <= len(data)))
    pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
    assert chunked_run(pieces) == whole
    if whole[0] != "error" and whole[1]:
        # done: the body ends exactly at `consumed`, whatever follows
        assert chunked_run([data[:whole[0]]]) == whole


@FUZZ
@given(st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=5))
def test_fuzz_chunked_generated_bodies(datas):
    """Well-formed bodies of random content and chunk sizes: consumed exactly, decoded length."""
    for data in datas:
        body = pi.chunked_body(data, 1 + len(data) % 37)
        assert chunked_run([body + b"HTTP/1.1"]) == (len(body), True, len(data))
        assert chunked_run([bytes([b]) for b in body]) == (len(body), True, len(data))


ALPH = st.text(alphabet="aAbB.*-x", max_size=12)


@FUZZ
@given(ALPH, ALPH)
def test_fuzz_host_match_matches_reference(pattern, host):
    assert _core.host_match(pattern, host) is _ref_host_match(pattern, host)


@FUZZ
@given(st.lists(st.from_regex(r"[a-z0-9_-]{1,20}", fullmatch=True), min_size=1, max_size=6),
       st.booleans(), st.lists(st.integers(1, 60), max_size=5))
def test_fuzz_sni_roundtrip(labels, upper, sizes):
    """Any valid name in a hand-made ClientHello, records cut anywhere, comes back lower-cased."""
    name = ".".join(labels)
    wire = name.upper() if upper else name
    data = pi.simple_hello(wire.encode(), sizes=sizes)
    assert _core.peek_tls_sni(data) == (_core.PEEK_FOUND, name, 0)


SH_SEEDS = [pi.server_hello(True), pi.server_hello(False), pi.server_hello(True, (1,) * 50),
            pi.server_hello(False, (7, 3, 30))]


@FUZZ
@given(any_input(SH_SEEDS))
def test_server_hello_fuzz(data: bytes) -> None:
    """The HelloRetryRequest peek: valid codes, a verdict that more bytes never change, NEED_MORE
    always asking for more than it has; the change_cipher_spec skip stays inside the input."""
    rc, hrr, need, _ = _core.peek_tls_server_hello(data)
    assert rc in CODES and rc != _core.PEEK_TOO_LARGE
    if rc == _core.PEEK_NEED_MORE:
        assert len(data) < need <= _core.PEEK_TLS_CAP
    if rc == _core.PEEK_FOUND:
        assert _core.peek_tls_server_hello(data + b"\x16\x03\x03\x00\x01\x02")[:2] == (rc, hrr)
    off = _core.peek_tls_skip_ccs(data)
    assert off in (_core.PEEK_NEED_MORE, _core.PEEK_ERROR) or 0 <= off <= len(data)
