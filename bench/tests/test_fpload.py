"""The suite's own load tool against itself over loopback: `pytest bench/tests` (needs cc).

These are the checks the benchmark's figures rest on: every request is answered and counted,
bodies are counted exactly, a ClientHello prefix is skipped, idle connections are really held."""
from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest

from bench import deps, measure


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def fpload(tmp_path_factory) -> str:
    return deps.ensure_fpload(tmp_path_factory.mktemp("bin"))


@pytest.fixture(scope="module")
def server(fpload):
    ports = {"http": free_port(), "tls": free_port(), "hold": free_port()}
    p = subprocess.Popen([fpload, "serve", "--bind", "127.0.0.1", "--threads", "2",
                          "--http", str(ports["http"]), "--tls", str(ports["tls"]),
                          "--hold", str(ports["hold"])])
    deadline = time.monotonic() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", ports["hold"]), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                p.kill()
                raise
            time.sleep(0.02)
    yield ports
    p.kill()
    p.wait()


def run(fpload: str, *args: str, timeout: float = 30) -> dict:
    r = subprocess.run([fpload, *args], capture_output=True, text=True, timeout=timeout)
    return json.loads(r.stdout.strip().splitlines()[-1])


def recv_all(s: socket.socket) -> bytes:
    data = b""
    while True:
        b = s.recv(65536)
        if not b:
            return data
        data += b


def test_server_answers_pipelined_requests_and_counts_bodies(server):
    with socket.create_connection(("127.0.0.1", server["http"])) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"POST /u HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n0123456789"
                  b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = recv_all(s)  # the server closes after the third response
    parts = data.split(b"HTTP/1.1 200 OK\r\n")
    assert len(parts) == 4
    assert parts[1].endswith(b"\r\n\r\nok")
    assert parts[2].endswith(b"\r\n\r\n10")
    assert b"Connection: close" in parts[3]


def test_tls_port_skips_one_client_hello_and_answers_it(server):
    """The TLS port answers the ClientHello with one ServerHello record (a proxy that checks the
    server's first handshake message holds the client's next bytes until it sees one), then
    serves HTTP."""
    hello = measure.client_hello("bench.test")
    with socket.create_connection(("127.0.0.1", server["tls"])) as s:
        s.sendall(hello + b"GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n")
        data = recv_all(s)
    assert data[:3] == b"\x16\x03\x03" and data[5] == 2  # a handshake record: ServerHello
    record = 5 + int.from_bytes(data[3:5], "big")
    assert record == 43 and data[record:].startswith(b"HTTP/1.1 200 OK")


def test_rate_answers_every_request(fpload, server):
    d = run(fpload, "rate", "--dst", f"127.0.0.1:{server['http']}", "--rate", "500",
            "--conns", "4", "--secs", "0.4", "--warmup", "0.1")
    assert d["errors"] == 0 and d["lost"] == 0
    assert d["completed"] == d["requests"] >= 200
    assert d["recorded"] >= 180
    assert 0 < d["p50_us"] <= d["p99_us"] <= d["max_us"]


def test_bulk_counts_what_the_server_received(fpload, server):
    d = run(fpload, "bulk", "--dst", f"127.0.0.1:{server['http']}", "--secs", "0.2",
            "--req-bytes", str(1 << 20))
    assert d["requests"] >= 1
    assert d["bytes"] == d["requests"] << 20
    assert d["gbit_s"] > 0


def test_connrate_with_and_without_the_prefix(fpload, server, tmp_path):
    prefix = tmp_path / "hello.bin"
    prefix.write_bytes(measure.client_hello("bench.test"))
    d = run(fpload, "connrate", "--dst", f"127.0.0.1:{server['tls']}", "--secs", "0.3",
            "--conns", "4", "--prefix-file", str(prefix))
    assert d["errors"] == 0 and d["non200"] == 0 and d["completed"] > 10
    d = run(fpload, "connrate", "--dst", f"127.0.0.1:{server['http']}", "--secs", "0.3",
            "--conns", "4")
    assert d["errors"] == 0 and d["non200"] == 0 and d["completed"] > 10
    # without its ClientHello the TLS port never answers: nothing may be counted as done
    d = run(fpload, "connrate", "--dst", f"127.0.0.1:{server['tls']}", "--secs", "0.3",
            "--conns", "2")
    assert d["completed"] == 0


def test_hold_keeps_connections_until_released(fpload, server):
    p = subprocess.Popen([fpload, "hold", "--dst", f"127.0.0.1:{server['hold']}", "--conns",
                          "64", "--timeout", "10"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().split() == ["ready", "64", "0"]
    assert len(list(Path(f"/proc/{p.pid}/fd").iterdir())) >= 64
    out, _ = p.communicate("release\n", timeout=10)
    d = json.loads(out.strip().splitlines()[-1])
    assert d["ready"] == 64 and d["closed"] == 64
