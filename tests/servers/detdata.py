"""Deterministic pseudo-random test data shared by the test servers, clients and tests.

The stream for (seed, n) is cut into 64 KiB blocks; block k is random.Random(seed, k)'s bytes, so
any process can regenerate it, and a reordering or duplication of whole blocks changes the digest.
"""
from __future__ import annotations

import hashlib
import random
from typing import Iterator

BLOCK = 65536


def blocks(seed: int, n: int) -> Iterator[bytes]:
    """Yields the n bytes of stream `seed` in blocks of at most BLOCK bytes."""
    k = 0
    while n > 0:
        m = min(BLOCK, n)
        yield random.Random(seed * 1_000_003 + k).randbytes(BLOCK)[:m]
        n -= m
        k += 1


def data(seed: int, n: int) -> bytes:
    """The whole stream as one bytes object (fine up to a few tens of MB)."""
    return b"".join(blocks(seed, n))


def sha256(seed: int, n: int) -> str:
    """Hex sha256 of stream `seed` of length n."""
    h = hashlib.sha256()
    for b in blocks(seed, n):
        h.update(b)
    return h.hexdigest()
