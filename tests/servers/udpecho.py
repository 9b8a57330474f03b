#!/usr/bin/python3
"""UDP echo server for the fail-closed tests (stdlib only).

    udpecho.py ADDR:PORT ...      ("0.0.0.0:53", "[::]:7777"; IPv6 sockets are IPv6-only)

Answers every datagram with b"echo:" + the datagram, from the address it was sent to. Prints
"ready" once every socket is bound; runs until killed."""
import selectors
import socket
import sys


def main() -> None:
    sel = selectors.DefaultSelector()
    for spec in sys.argv[1:]:
        host, _, port = spec.rpartition(":")
        fam = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_DGRAM)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((host.strip("[]"), int(port)))
        sel.register(s, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            data, peer = key.fileobj.recvfrom(65535)
            key.fileobj.sendto(b"echo:" + data, peer)


if __name__ == "__main__":
    main()
