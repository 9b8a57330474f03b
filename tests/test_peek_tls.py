"""fp_peek_tls_sni(): real ClientHellos from Python's ssl module, fed whole and cut at every
offset, and hand-made edge cases (lying lengths, several records, the 64 KiB cap)."""
from __future__ import annotations

import os
import shutil
import struct
import sys

import pytest

from fastproxy import _core

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "fuzz"))
import peek_inputs as pi  # noqa: E402

FOUND, NEED, NOT, LARGE, ERR = (_core.PEEK_FOUND, _core.PEEK_NEED_MORE,
                                _core.PEEK_NOT_THIS_PROTOCOL, _core.PEEK_TOO_LARGE,
                                _core.PEEK_ERROR)


def record_ends(data: bytes) -> list:
    """Offsets where each TLS record ends (reference walk over the record headers)."""
    ends, off = [], 0
    while off + 5 <= len(data):
        off += 5 + struct.unpack("!H", data[off + 3:off + 5])[0]
        ends.append(off)
    return ends


def extension_types(data: bytes) -> list:
    """Extension types of a single- or multi-record ClientHello (reference parser)."""
    hs, off = b"", 0
    while off < len(data):
        n = struct.unpack("!H", data[off + 3:off + 5])[0]
        hs += data[off + 5:off + 5 + n]
        off += 5 + n
    p = 4 + 2 + 32
    p += 1 + hs[p]
    p += 2 + struct.unpack("!H", hs[p:p + 2])[0]
    p += 1 + hs[p]
    end = p + 2 + struct.unpack("!H", hs[p:p + 2])[0]
    p += 2
    types = []
    while p < end:
        t, n = struct.unpack("!HH", hs[p:p + 4])
        types.append(t)
        p += 4 + n
    return types


def assert_every_split(data: bytes, name: str) -> None:
    """Every proper prefix is NEED_MORE with a sensible `need`; the whole is FOUND(name)."""
    ends = record_ends(data)
    for k in range(len(data)):
        rc, got, need = _core.peek_tls_sni(data[:k])
        assert (rc, got) == (NEED, None), (k, rc, got)
        assert k < need <= len(data), (k, need)
        # `need` is the end of the record the parser waits in, or of the next record header
        assert need in ends or need in [e + 5 for e in [0] + ends], (k, need)
    assert _core.peek_tls_sni(data) == (FOUND, name, 0)
    # trailing bytes after the ClientHello do not change the answer
    assert _core.peek_tls_sni(data + b"\x17\x03\x03\x00\x05hello") == (FOUND, name, 0)


@pytest.mark.parametrize("tls13", [None, True, False], ids=["any", "tls13", "tls12"])
@pytest.mark.parametrize("host,expect", [
    ("www.example.com", "www.example.com"),
    ("API.Example.COM", "api.example.com"),
    ("example.com.", "example.com"),
    ("bücher.example", "xn--bcher-kva.example"),
    ("пример.испытание", "xn--e1afmkfd.xn--80akhbyknj4f"),
    ("my_svc.default.svc.cluster.local", "my_svc.default.svc.cluster.local"),
    ("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61,
     "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61),
])
def test_real_hello_every_split(host, expect, tls13):
    data = pi.client_hello(host, tls13=tls13)
    assert_every_split(data, expect)
    info = _core.peek_tls_hello(data)
    assert info["has_sni"] and info["hello_end"] == len(data) and info["records"] == 1
    assert info["tls13"] == (tls13 is not False)
    assert info["client_version"] == 0x0303


@pytest.mark.parametrize("host", [None, "192.0.2.7", "2001:db8::1"])
def test_real_hello_without_sni(host):
    data = pi.client_hello(host)
    assert 0 not in extension_types(data)
    assert_every_split(data, "")
    assert _core.peek_tls_hello(data)["has_sni"] is False


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("tls13", [True, False], ids=["tls13-psk", "tls12-ticket"])
def test_real_resumption_hello(tls13):
    data = pi.resumption_hello("resume.example.org", tls13)
    types = extension_types(data)
    if tls13:
        assert types[-1] == 41            # pre_shared_key, always last
    else:
        assert 35 in types                # session_ticket with the ticket in it
    assert_every_split(data, "resume.example.org")


@pytest.mark.parametrize("nprotos,nrecords", [(100, 2), (250, 4)])
def test_real_multi_record_hello(nprotos, nrecords):
    """OpenSSL fragments a ClientHello over 16 KiB into several records (big ALPN list here)."""
    alpn = ["p%03d" % i + "x" * 240 for i in range(nprotos)]
    data = pi.client_hello("big.example.net", alpn=alpn)
    assert len(record_ends(data)) == nrecords
    assert_every_split(data, "big.example.net")
    assert _core.peek_tls_hello(data)["records"] == nrecords


def test_need_reports_record_boundaries():
    data = pi.simple_hello(b"x.example", sizes=(10, 30))
    ends = record_ends(data)
    assert _core.peek_tls_sni(b"")[2] == 5
    assert _core.peek_tls_sni(data[:3])[2] == 5
    assert _core.peek_tls_sni(data[:5])[2] == ends[0]
    assert _core.peek_tls_sni(data[:ends[0]])[2] == ends[0] + 5
    assert _core.peek_tls_sni(data[:ends[0] + 5])[2] == ends[1]
    assert _core.peek_tls_sni(data[:ends[1] + 7])[2] == ends[2]


@pytest.mark.parametrize("sizes", [(1,), (4,), (5, 1, 1, 1), (40, 1), tuple([3] * 30)])
def test_hand_made_multi_record(sizes):
    data = pi.simple_hello(b"Split.Example.org.", sizes=sizes)
    assert len(record_ends(data)) >= len(sizes)
    assert_every_split(data, "split.example.org")


def test_one_byte_records():
    body = pi.handshake(pi.hello_body(pi.sni_ext(b"tiny.example")))
    data = pi.records(body, sizes=[1] * len(body))
    assert len(record_ends(data)) == len(body)
    assert _core.peek_tls_sni(data) == (FOUND, "tiny.example", 0)


def test_no_extensions_block():
    data = pi.records(pi.handshake(pi.hello_body(None)))
    assert _core.peek_tls_sni(data) == (FOUND, "", 0)


def test_sni_with_other_name_types_skipped():
    body = pi.u16(b"\x05" + pi.u16(b"zzz") + b"\x00" + pi.u16(b"real.example"))
    data = pi.records(pi.handshake(pi.hello_body(pi.ext(0, body))))
    assert _core.peek_tls_sni(data) == (FOUND, "real.example", 0)


def test_not_tls():
    assert _core.peek_tls_sni(b"GET / HTTP/1.1\r\n")[0] == NOT
    assert _core.peek_tls_sni(b"G")[0] == NOT
    assert _core.peek_tls_sni(b"\x80\x2e\x01\x03\x01")[0] == NOT           # SSLv2 hello
    assert _core.peek_tls_sni(b"\x16\x02\x00")[0] == NOT
    assert _core.peek_tls_sni(b"\x16\x03\x07")[0] == NOT
    assert _core.peek_tls_sni(b"\x17\x03\x03\x00\x10")[0] == NOT           # application data
    assert _core.peek_tls_sni(b"\x16")[0] == NEED


def hs_with(body: bytes) -> bytes:
    return pi.records(pi.handshake(body))


GOOD_EXTS = pi.sni_ext(b"ok.example")


@pytest.mark.parametrize("data,why", [
    (pi.records(pi.handshake(pi.hello_body(GOOD_EXTS), msg_type=2)), "not a ClientHello"),
    (b"\x16\x03\x01\x00\x00", "empty handshake record"),
    (b"\x16\x03\x01\x40\x01" + b"\x01" * 10, "record longer than 2^14"),
    (hs_with(pi.hello_body(GOOD_EXTS)[:-3]), "extensions length does not match"),
    (hs_with(pi.hello_body(GOOD_EXTS) + b"\x00"), "extensions length does not match"),
    (hs_with(pi.hello_body(GOOD_EXTS, session_id=b"s" * 33)), "session id longer"),
    (hs_with(pi.hello_body(GOOD_EXTS, ciphers=b"\x13")), "cipher suites"),
    (hs_with(pi.hello_body(GOOD_EXTS, ciphers=b"")), "cipher suites"),
    (hs_with(pi.hello_body(GOOD_EXTS, version=0x0203)), "version"),
    (hs_with(pi.hello_body(pi.sni_ext(b"a.example") + pi.sni_ext(b"b.example"))),
     "duplicate server_name"),
    (hs_with(pi.hello_body(pi.sni_ext(b"a.example", b"b.example"))), "more than one host_name"),
    (hs_with(pi.hello_body(pi.ext(0, b""))), "server_name extension too short"),
    (hs_with(pi.hello_body(pi.ext(0, pi.u16(b"")))), "server_name list length"),
    (hs_with(pi.hello_body(pi.ext(0, b"\x00\x10\x00\x00\x05abcde"))), "server_name list length"),
    (hs_with(pi.hello_body(pi.ext(0, b"\x00\x08\x00\x00\x09abcde"))), "host_name overflows"),
    (hs_with(pi.hello_body(pi.ext(0, b"\x00\x02\x00\x00"))), "overflows its list"),
    (hs_with(pi.hello_body(pi.sni_ext(b""))), "empty host_name"),
    (hs_with(pi.hello_body(pi.sni_ext(b"bad name.example"))), "invalid character"),
    (hs_with(pi.hello_body(pi.sni_ext(b"a\x00b.example"))), "invalid character"),
    (hs_with(pi.hello_body(pi.sni_ext("bücher.de".encode()))), "invalid character"),
    (hs_with(pi.hello_body(pi.sni_ext(b"a..example"))), "empty label"),
    (hs_with(pi.hello_body(pi.sni_ext(b".example"))), "empty label"),
    (hs_with(pi.hello_body(pi.sni_ext(b"."))), "empty label"),
    (hs_with(pi.hello_body(pi.sni_ext(b"x" * 64 + b".example"))), "label longer than 63"),
    (hs_with(pi.hello_body(pi.sni_ext(b"a." * 127 + b"a"))), "longer than 253"),
    (hs_with(pi.hello_body(pi.sni_ext(b"ab." * 90))), "longer than 253"),
    (hs_with(pi.hello_body(pi.ext(43, b"\x03\x03\x04"))), "supported_versions"),
    (hs_with(pi.hello_body(GOOD_EXTS + b"\x00\x10\x00\x05ab")), "overflow"),
    (hs_with(pi.hello_body(GOOD_EXTS + b"\x00")), "extension header overflows"),
    (pi.records(pi.handshake(pi.hello_body(GOOD_EXTS)), sizes=(20,))[:25] +
     b"\x15\x03\x03\x00\x02\x02\x28", "non-handshake record"),
    (pi.records(b"\x01\x00\x00\x14" + b"\x03" * 20), "too short"),
])
def test_malformed(data, why):
    info = _core.peek_tls_hello(data)
    assert info["code"] == ERR, info
    assert why in info["why"]
    assert info["name"] is None


def test_lying_length_is_error_before_its_bytes_arrive():
    """A length that overflows its container is refused at once, not waited for."""
    data = hs_with(pi.hello_body(pi.ext(0, b"\x00\x08\x00\x00\x09abcde") + b"\x00" * 50))
    cut = data.index(b"abcde")
    assert _core.peek_tls_sni(data[:cut])[0] == ERR


def test_longest_names_accepted():
    name = b".".join([b"a" * 63, b"b" * 63, b"c" * 63, b"d" * 61])
    assert len(name) == 253
    assert _core.peek_tls_sni(pi.simple_hello(name))[:2] == (FOUND, name.decode())
    assert _core.peek_tls_sni(pi.simple_hello(name + b"."))[:2] == (FOUND, name.decode())
    assert _core.peek_tls_sni(pi.simple_hello(name + b"e"))[0] == ERR


def test_too_large():
    big = pi.ext(0xfe01, b"\x00" * 30000)
    data = pi.records(pi.handshake(pi.hello_body(pi.sni_ext(b"big.example") + big,
                                                 ciphers=b"\x13\x01" * 20000)))
    assert len(data) > _core.PEEK_TLS_CAP
    for k in (0, 5, 9, 100, 16389, 65536, len(data)):
        rc = _core.peek_tls_sni(data[:k])[0]
        assert rc == (NEED if k < 9 else LARGE), k
    # handshake length within 64 KiB, but the record headers of 1-byte records push it over
    body = pi.handshake(pi.hello_body(pi.sni_ext(b"x.example") + pi.ext(0xfe01, b"\x00" * 20000)))
    data = pi.records(body, sizes=[1] * len(body))
    assert _core.peek_tls_sni(data[:60000]) == (NEED, None, 60005)
    assert _core.peek_tls_sni(data[:65531]) == (NEED, None, 65532)
    # the next record header (at 65532) would end beyond the cap
    assert _core.peek_tls_sni(data[:65532])[0] == LARGE
    assert _core.peek_tls_sni(data)[0] == LARGE


def test_fits_exactly_the_cap():
    base = pi.handshake(pi.hello_body(pi.sni_ext(b"cap.example") + pi.ext(0xfe01, b"")))
    pad = _core.PEEK_TLS_CAP - 4 * 5 - len(base)
    data = pi.records(pi.handshake(pi.hello_body(pi.sni_ext(b"cap.example") +
                                                 pi.ext(0xfe01, b"\x00" * pad))))
    assert len(data) == _core.PEEK_TLS_CAP and len(record_ends(data)) == 4
    assert _core.peek_tls_sni(data) == (FOUND, "cap.example", 0)
    assert _core.peek_tls_sni(data[:-1])[0] == NEED


# -- the server's first message: HelloRetryRequest or not (fp_peek_tls_server_hello) ------------

@pytest.mark.parametrize("hrr", [True, False], ids=["hrr", "server-hello"])
@pytest.mark.parametrize("sizes", [(), (1,) * 60, (3, 1, 30, 2), (38,), (4,)],
                         ids=["one-record", "1-byte-records", "odd-records", "exact", "header"])
def test_server_hello_every_split(hrr, sizes):
    """Whole, the message is told apart by its random; every prefix is NEED_MORE with a `need`
    that grows and never passes what the verdict needs (38 handshake bytes and their record
    headers): the relay's buffering is bounded however the server cuts its records."""
    data = pi.server_hello(hrr, sizes)
    assert _core.peek_tls_server_hello(data)[:2] == (FOUND, hrr)
    decided_at = None
    for k in range(len(data)):
        rc, got, need, _ = _core.peek_tls_server_hello(data[:k])
        if rc == FOUND:
            decided_at = decided_at if decided_at is not None else k
            assert got == hrr
            continue
        assert rc == NEED and got is None and k < need <= len(data), (k, rc, need)
    assert decided_at is not None and decided_at <= 38 + 5 * 39


def test_server_hello_real_openssl_answer():
    """A real TLS 1.3 ServerHello (Python's ssl client and server over memory BIOs) is no HRR."""
    import ssl
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=x",
                        "-keyout", f"{d}/k", "-out", f"{d}/c"], check=True, capture_output=True)
        sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        sctx.load_cert_chain(f"{d}/c", f"{d}/k")
    sin, sout = ssl.MemoryBIO(), ssl.MemoryBIO()
    server = sctx.wrap_bio(sin, sout, server_side=True)
    sin.write(pi.client_hello("x.test", tls13=True))
    try:
        server.do_handshake()
    except ssl.SSLWantReadError:
        pass
    first = sout.read()
    assert _core.peek_tls_server_hello(first)[:2] == (FOUND, False)


@pytest.mark.parametrize("data,code", [
    (b"\x15\x03\x03\x00\x02\x02\x28", NOT),                        # an alert first
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", NOT),
    (pi.records(pi.handshake(b"\x00" * 40, msg_type=11), version=0x0303), ERR),  # Certificate
    (pi.records(pi.handshake(b"\x03\x03" + b"\x00" * 10, msg_type=2), version=0x0303), ERR),
    (b"\x16\x03\x03\x00\x00", ERR),                                 # empty record
    (pi.server_hello(True, (10,))[:15] + b"\x17\x03\x03\x00\x05hello", ERR),  # interleaved
])
def test_server_hello_not_a_server_hello(data, code):
    assert _core.peek_tls_server_hello(data)[0] == code


def test_skip_ccs():
    ch = pi.tls13_hello(b"secure.test")
    assert _core.peek_tls_skip_ccs(ch) == 0
    assert _core.peek_tls_skip_ccs(b"") == 0
    assert _core.peek_tls_skip_ccs(pi.CCS + ch) == 6
    assert _core.peek_tls_skip_ccs(pi.CCS * 2 + ch) == 12
    for k in range(1, 6):
        assert _core.peek_tls_skip_ccs(pi.CCS[:k]) == NEED
    assert _core.peek_tls_skip_ccs(b"\x14\x03\x03\x00\x02\x01\x01") == ERR
    assert _core.peek_tls_skip_ccs(b"\x14\x03\x03\x00\x01\x02") == ERR


def test_hand_made_tls13_hello_parses():
    """The HelloRetryRequest test client's ClientHellos, with and without a key share."""
    for shares in ((), ((pi.X25519, b"\x09" * 32),)):
        data = pi.tls13_hello(b"Secure.Test.", shares, sizes=(100,))
        info = _core.peek_tls_hello(data)
        assert (info["code"], info["name"], info["tls13"]) == (FOUND, "secure.test", True)
