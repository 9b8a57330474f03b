# Python face of src_c/fp_lookup.[ch]: CidrSet (longest-prefix match), HostSet (exact names and
# "*.suffix" wildcards), PortMap, and host_split_port() for HTTP Host values. The decision table
# is built from the same C structures; these wrappers serve tests and `fastproxy explain`.
#
# Life cycle (as in C): add entries, then build() freezes the structure; lookup() builds it on
# first use. Adding to a built structure raises EngineError(EBUSY): build a new one instead.
# Duplicates: a later add of the same prefix / name replaces the earlier value.
from libc.errno cimport EBUSY, EINVAL, ENOENT, ENOMEM
from libc.stdint cimport uint8_t, uint32_t
from libc.string cimport memchr
from fastproxy._c_lookup cimport *

import ipaddress as _lookup_ipaddress
import os as _lookup_os
import socket as _lookup_socket

from fastproxy.errors import EngineError as _LookupEngineError

cdef int _LOOKUP_AF_INET = _lookup_socket.AF_INET
cdef int _LOOKUP_AF_INET6 = _lookup_socket.AF_INET6


cdef object _lookup_raise(int rc, str what):
    """Raises the Python error for a negative errno returned by fp_lookup.c."""
    if rc == -ENOMEM:
        raise MemoryError(what)
    if rc == -EBUSY:
        raise _LookupEngineError(f"{what}: already built (frozen); build a new one", -rc)
    raise _LookupEngineError(f"{what}: {_lookup_os.strerror(-rc)}", -rc)


cdef bytes _lookup_name_bytes(object name):
    if isinstance(name, bytes):
        return <bytes>name
    if isinstance(name, str):
        return (<str>name).encode("utf-8", "surrogateescape")
    raise TypeError(f"host name must be str or bytes, not {type(name).__name__}")


cdef class CidrSet:
    """Longest-prefix match of IPv4 and IPv6 addresses against CIDR prefixes, each carrying an
    int value (0 .. 2**32-2). add() accepts an `ipaddress` network, interface or address, or a
    string; host bits ("192.0.2.10/24") are cleared, as in C."""

    cdef fp_cidr_set *_set
    cdef bint _built

    def __cinit__(self):
        self._set = fp_cidr_set_new()
        if self._set is NULL:
            raise MemoryError("CidrSet")

    def __dealloc__(self):
        fp_cidr_set_free(self._set)
        self._set = NULL

    def add(self, network, uint32_t value):
        """Records `network` -> `value`; a later add of the same prefix replaces the value."""
        cdef bytes packed
        cdef int prefix_len
        if isinstance(network, str):
            network = _lookup_ipaddress.ip_interface(network)
        if isinstance(network, (_lookup_ipaddress.IPv4Interface, _lookup_ipaddress.IPv6Interface)):
            packed = network.ip.packed
            prefix_len = network.network.prefixlen
        elif isinstance(network, (_lookup_ipaddress.IPv4Network, _lookup_ipaddress.IPv6Network)):
            packed = network.network_address.packed
            prefix_len = network.prefixlen
        elif isinstance(network, (_lookup_ipaddress.IPv4Address, _lookup_ipaddress.IPv6Address)):
            packed = network.packed
            prefix_len = network.max_prefixlen
        else:
            raise TypeError(f"CidrSet.add: not an IP network: {network!r}")
        cdef int family = _LOOKUP_AF_INET if len(packed) == 4 else _LOOKUP_AF_INET6
        cdef int rc = fp_cidr_set_add(self._set, family, <const uint8_t *><char *>packed,
                                      prefix_len, value)
        if rc < 0:
            _lookup_raise(rc, f"CidrSet.add({network})")

    def build(self):
        """Freezes the set into its lookup form (idempotent)."""
        cdef int rc = fp_cidr_set_build(self._set)
        if rc < 0:
            _lookup_raise(rc, "CidrSet.build")
        self._built = True

    def lookup(self, address):
        """Value of the longest prefix holding `address` (an `ipaddress` address, a string or
        4/16 packed bytes), or None. IPv4-mapped IPv6 addresses are not translated."""
        cdef bytes packed
        if isinstance(address, bytes):
            packed = <bytes>address
        else:
            if isinstance(address, str):
                address = _lookup_ipaddress.ip_address(address)
            elif not isinstance(address, (_lookup_ipaddress.IPv4Address,
                                          _lookup_ipaddress.IPv6Address)):
                raise TypeError(f"CidrSet.lookup: not an IP address: {address!r}")
            packed = address.packed
        if len(packed) == 4:
            family = _LOOKUP_AF_INET
        elif len(packed) == 16:
            family = _LOOKUP_AF_INET6
        else:
            raise ValueError("CidrSet.lookup: packed address must be 4 or 16 bytes")
        if not self._built:
            self.build()
        cdef uint32_t value = 0
        cdef int rc = fp_cidr_set_lookup(self._set, family, <const uint8_t *><char *>packed, &value)
        if rc == -ENOENT:
            return None
        if rc < 0:
            _lookup_raise(rc, "CidrSet.lookup")
        return value

    def lookup_many(self, bytes packed, int width):
        """Looks up each `width`-byte (4 or 16) address of `packed`, in C without the GIL, and
        returns how many matched (for benchmarks and bulk checks)."""
        if width not in (4, 16) or len(packed) % width:
            raise ValueError("CidrSet.lookup_many: width must be 4 or 16 and divide len(packed)")
        if not self._built:
            self.build()
        cdef int family = _LOOKUP_AF_INET if width == 4 else _LOOKUP_AF_INET6
        cdef const uint8_t *p = <const uint8_t *><char *>packed
        cdef size_t i, n = len(packed) // width, hits = 0
        cdef uint32_t value
        with nogil:
            for i in range(n):
                if fp_cidr_set_lookup(self._set, family, p + i * width, &value) == 0:
                    hits += 1
        return hits

    @property
    def built(self):
        return self._built

    @property
    def memory_bytes(self):
        """Heap bytes held by the C structure."""
        return fp_cidr_set_mem_bytes(self._set)

    def __len__(self):
        return fp_cidr_set_count(self._set)


cdef class HostSet:
    """Exact host names and "*.suffix" wildcards (exactly one more label) -> int value. Lookups
    ignore ASCII case and one trailing dot; the exact name wins over a wildcard."""

    cdef fp_host_set *_set
    cdef bint _built

    def __cinit__(self):
        self._set = fp_host_set_new()
        if self._set is NULL:
            raise MemoryError("HostSet")

    def __dealloc__(self):
        fp_host_set_free(self._set)
        self._set = NULL

    def add(self, name, uint32_t value):
        """Records `name` (exact, or "*.suffix") -> `value`; a later add replaces the value."""
        cdef bytes b = _lookup_name_bytes(name)
        cdef int rc = fp_host_set_add(self._set, b, len(b), value)
        if rc < 0:
            _lookup_raise(rc, f"HostSet.add({name!r})")

    def build(self):
        """Freezes the set into its hash table (idempotent)."""
        cdef int rc = fp_host_set_build(self._set)
        if rc < 0:
            _lookup_raise(rc, "HostSet.build")
        self._built = True

    def lookup(self, name):
        """Value for `name` (SNI or Host without port), or None."""
        cdef bytes b = _lookup_name_bytes(name)
        if not self._built:
            self.build()
        cdef uint32_t value = 0
        cdef int rc = fp_host_set_lookup(self._set, b, len(b), &value)
        if rc == -ENOENT:
            return None
        if rc < 0:
            _lookup_raise(rc, "HostSet.lookup")
        return value

    def lookup_many(self, bytes names):
        """Looks up each newline-separated name of `names` in C without the GIL; returns how
        many matched (for benchmarks and bulk checks)."""
        if not self._built:
            self.build()
        cdef const char *p = names
        cdef const char *end = p + len(names)
        cdef const char *nl
        cdef size_t hits = 0
        cdef uint32_t value
        with nogil:
            while p < end:
                nl = <const char *>memchr(p, b'\n', <size_t>(end - p))
                if nl == NULL:
                    nl = end
                if nl > p and fp_host_set_lookup(self._set, p, <size_t>(nl - p), &value) == 0:
                    hits += 1
                if nl == end:
                    break
                p = nl + 1
        return hits

    @property
    def built(self):
        return self._built

    @property
    def memory_bytes(self):
        """Heap bytes held by the C structure."""
        return fp_host_set_mem_bytes(self._set)

    def __len__(self):
        return fp_host_set_count(self._set)


cdef class PortMap:
    """TCP port (1..65535) -> int value, two-level sparse table."""

    cdef fp_port_map *_map

    def __cinit__(self):
        self._map = fp_port_map_new()
        if self._map is NULL:
            raise MemoryError("PortMap")

    def __dealloc__(self):
        fp_port_map_free(self._map)
        self._map = NULL

    def set(self, unsigned port, value):
        """Maps `port` to `value`; None removes it."""
        cdef uint32_t v = FP_LOOKUP_NONE if value is None else <uint32_t?>value
        if value is not None and v == FP_LOOKUP_NONE:
            raise _LookupEngineError(f"PortMap.set: value {value} is reserved", EINVAL)
        cdef int rc = fp_port_map_set(self._map, port, v)
        if rc < 0:
            _lookup_raise(rc, f"PortMap.set({port})")

    def get(self, unsigned port):
        """Value for `port`, or None."""
        cdef uint32_t value = 0
        cdef int rc = fp_port_map_get(self._map, port, &value)
        if rc == -ENOENT:
            return None
        if rc < 0:
            _lookup_raise(rc, "PortMap.get")
        return value

    @property
    def memory_bytes(self):
        return fp_port_map_mem_bytes(self._map)


def host_split_port(host):
    """Splits an HTTP Host value into (host, port or None); brackets of an IPv6 literal are
    removed. Raises EngineError(EINVAL) for a malformed value."""
    cdef bytes b = _lookup_name_bytes(host)
    cdef size_t off = 0, hlen = 0
    cdef int rc = fp_host_split_port(b, len(b), &off, &hlen)
    if rc < 0:
        _lookup_raise(rc, f"host_split_port({host!r})")
    part = b[off:off + hlen]
    return (part.decode("utf-8", "surrogateescape") if isinstance(host, str) else part,
            rc if rc else None)
