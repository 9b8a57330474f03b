#!/usr/bin/python3
"""Network peer for tests/test_iptables_netns.py, run with /usr/bin/python3 inside test network
namespaces (standard library only, so any UID can run it).

serve NAME@ADDR:PORT ...
    Listen on each address ("0.0.0.0:80", "[::]:80"; IPv6 sockets are IPv6-only), print "ready"
    once all are bound, then answer every connection with one line and close it:
        NAME local=ADDR:PORT orig=ADDR:PORT
    `local` is the accepted socket's own address, `orig` its SO_ORIGINAL_DST (IPv4) or
    IP6T_SO_ORIGINAL_DST (IPv6): the destination before netfilter's REDIRECT, "-" if unknown.
    Runs until killed.

connect ADDR:PORT ...
    Connect to each in turn (3 s timeout) and print one line per target: the peer's answer, or
    "ERR <reason>".
"""
import socket
import struct
import sys
import threading

SO_ORIGINAL_DST = 80  # linux/netfilter_ipv4.h; IP6T_SO_ORIGINAL_DST has the same value


def split_addr(text):
    host, _, port = text.rpartition(":")
    if host.startswith("["):
        return socket.AF_INET6, host[1:-1], int(port)
    return socket.AF_INET, host, int(port)


def fmt(family, host, port):
    return f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"


def original_dst(conn, family):
    try:
        if family == socket.AF_INET:
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port, = struct.unpack_from("!H", raw, 2)
            return fmt(family, socket.inet_ntop(socket.AF_INET, raw[4:8]), port)
        raw = conn.getsockopt(socket.IPPROTO_IPV6, SO_ORIGINAL_DST, 28)
        port, = struct.unpack_from("!H", raw, 2)
        return fmt(family, socket.inet_ntop(socket.AF_INET6, raw[8:24]), port)
    except OSError:
        return "-"


def answer(name, lsock, family):
    while True:
        conn, _ = lsock.accept()
        with conn:
            local = conn.getsockname()
            orig = original_dst(conn, family)
            line = f"{name} local={fmt(family, local[0], local[1])} orig={orig}\n"
            try:
                conn.sendall(line.encode())
            except OSError:
                pass


def serve(specs):
    for spec in specs:
        name, _, addr = spec.partition("@")
        family, host, port = split_addr(addr)
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host, port))
        s.listen(64)
        threading.Thread(target=answer, args=(name, s, family), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


def connect(targets):
    for target in targets:
        family, host, port = split_addr(target)
        try:
            with socket.create_connection((host, port), timeout=3) as c:
                data = b""
                while not data.endswith(b"\n"):
                    chunk = c.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            print(data.decode().strip() or "ERR empty answer", flush=True)
        except OSError as e:
            print(f"ERR {e}", flush=True)


if __name__ == "__main__":
    {"serve": serve, "connect": connect}[sys.argv[1]](sys.argv[2:])
