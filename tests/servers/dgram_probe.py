#!/usr/bin/python3
"""One datagram probe for the fail-closed tests (stdlib only); prints one word:
"reply" (the answer came back), "timeout" (none within 1 s) or "blocked: <errno name>" (the
kernel refused to send it, as netfilter's DROP in OUTPUT does).

    dgram_probe.py udp ADDR PORT      a UDP datagram, expects udpecho.py's answer
    dgram_probe.py ping ADDR          an ICMP / ICMPv6 echo request over a raw socket (root)
"""
import errno
import os
import socket
import struct
import sys


def checksum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def main() -> None:
    mode, addr = sys.argv[1], sys.argv[2]
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    if mode == "udp":
        s = socket.socket(fam, socket.SOCK_DGRAM)
        target = (addr, int(sys.argv[3]))
        payload = b"probe-%d" % os.getpid()
        want = lambda d: d == b"echo:" + payload  # noqa: E731
    else:
        proto = socket.IPPROTO_ICMPV6 if fam == socket.AF_INET6 else socket.IPPROTO_ICMP
        s = socket.socket(fam, socket.SOCK_RAW, proto)
        ident = os.getpid() & 0xFFFF
        typ = 128 if fam == socket.AF_INET6 else 8
        head = struct.pack("!BBHHH", typ, 0, 0, ident, 1) + b"fastproxy"
        payload = head if fam == socket.AF_INET6 else \
            head[:2] + struct.pack("!H", checksum(head)) + head[4:]  # the kernel sums ICMPv6
        target = (addr, 0)

        def want(d: bytes) -> bool:
            if fam == socket.AF_INET:
                d = d[(d[0] & 0x0F) * 4:]
            return len(d) >= 8 and d[0] in (0, 129) and struct.unpack("!H", d[4:6])[0] == ident
    s.settimeout(1.0)
    try:
        s.sendto(payload, target)
        while True:
            if want(s.recv(65535)):
                print("reply")
                return
    except socket.timeout:
        print("timeout")
    except OSError as e:
        print(f"blocked: {errno.errorcode.get(e.errno, e.errno)}")


if __name__ == "__main__":
    main()
