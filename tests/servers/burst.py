"""N checksummed uploads to the sink, one connection after the other.

Usage: burst.py N HOST PORT [SIZE]. Each connection sends SIZE bytes (default 2000) that differ
per connection, half-closes, and reads the sink's answer ("<length> <sha256>"). Prints how many
answers carried the right length and checksum.
"""
import hashlib
import socket
import sys


def main() -> None:
    n, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    size = int(sys.argv[4]) if len(sys.argv) > 4 else 2000
    good = 0
    for i in range(n):
        data = bytes((i + k) % 251 for k in range(size))
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        ans = b""
        while True:
            b = s.recv(4096)
            if not b:
                break
            ans += b
        s.close()
        if ans.decode().split() == [str(len(data)), hashlib.sha256(data).hexdigest()]:
            good += 1
    print(good)


if __name__ == "__main__":
    main()
