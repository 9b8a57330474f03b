"""Micro-benchmarks of the peek parsers (pytest-benchmark): `pytest bench/micro/test_peek_bench.py`.

Two views of each parser: the Python call (wrapper and result dict included) and the bare C cost,
measured with peek_repeat(), which loops in C; its figure is per batch of REPEAT calls."""
from __future__ import annotations

import os
import sys

import pytest

from fastproxy import _core

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fuzz"))
import peek_inputs as pi  # noqa: E402

REPEAT = 1000

HELLO = pi.client_hello("api.payments.example.com", alpn=["h2", "http/1.1"])
REQUEST = (b"GET /v1/accounts/42/transactions?limit=50 HTTP/1.1\r\n"
           b"Host: api.payments.example.com\r\nUser-Agent: python-requests/2.31.0\r\n"
           b"Accept-Encoding: gzip, deflate\r\nAccept: application/json\r\nConnection: keep-alive\r\n"
           b"Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2lnbmF0dXJl\r\n"
           b"X-Request-Id: 7d0f5a3e-2b1c-4c8e-9f6a-1d2e3f4a5b6c\r\n\r\n")
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1832\r\n"
            b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\nServer: nginx\r\nConnection: keep-alive\r\n\r\n")
BODY = pi.chunked_body(os.urandom(16 * 1024), 4096)      # 16 KiB in 4 KiB chunks


def test_sni_peek_python(benchmark):
    assert benchmark(_core.peek_tls_sni, HELLO) == (_core.PEEK_FOUND, "api.payments.example.com", 0)


def test_sni_peek_c_x1000(benchmark):
    assert benchmark(_core.peek_repeat, "tls", HELLO, REPEAT) == _core.PEEK_FOUND


def test_host_peek_python(benchmark):
    rc, info = benchmark(_core.peek_http_request, REQUEST)
    assert rc == _core.PEEK_OK and info["host"] == "api.payments.example.com"


def test_host_peek_c_x1000(benchmark):
    assert benchmark(_core.peek_repeat, "request", REQUEST, REPEAT) == _core.PEEK_OK


def test_response_peek_c_x1000(benchmark):
    assert benchmark(_core.peek_repeat, "response", RESPONSE, REPEAT) == _core.PEEK_OK


def test_chunked_16k_python(benchmark):
    def run():
        d = _core.ChunkedDecoder()
        return d.feed(BODY), d.done
    assert benchmark(run) == (len(BODY), True)


def test_chunked_16k_c_x1000(benchmark):
    assert benchmark(_core.peek_repeat, "chunked", BODY, REPEAT) == len(BODY)
