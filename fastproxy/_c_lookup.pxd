# Mirrors src_c/fp_lookup.h: CIDR longest-prefix match, host-name sets, port map.
from libc.stdint cimport uint8_t, uint32_t

cdef extern from "fp_lookup.h" nogil:
    uint32_t FP_LOOKUP_NONE
    int FP_HOST_MAX_LEN

    ctypedef struct fp_cidr_set:
        pass
    fp_cidr_set *fp_cidr_set_new()
    void fp_cidr_set_free(fp_cidr_set *set)
    int fp_cidr_set_add(fp_cidr_set *set, int family, const uint8_t *addr, int prefix_len,
                        uint32_t value)
    int fp_cidr_set_build(fp_cidr_set *set)
    int fp_cidr_set_lookup(const fp_cidr_set *set, int family, const uint8_t *addr,
                           uint32_t *value_out)
    size_t fp_cidr_set_count(const fp_cidr_set *set)
    size_t fp_cidr_set_mem_bytes(const fp_cidr_set *set)

    ctypedef struct fp_host_set:
        pass
    fp_host_set *fp_host_set_new()
    void fp_host_set_free(fp_host_set *set)
    int fp_host_set_add(fp_host_set *set, const char *name, size_t len, uint32_t value)
    int fp_host_set_build(fp_host_set *set)
    int fp_host_set_lookup(const fp_host_set *set, const char *name, size_t len,
                           uint32_t *value_out)
    size_t fp_host_set_count(const fp_host_set *set)
    size_t fp_host_set_mem_bytes(const fp_host_set *set)
    int fp_host_split_port(const char *s, size_t len, size_t *host_off, size_t *host_len)

    ctypedef struct fp_port_map:
        pass
    fp_port_map *fp_port_map_new()
    void fp_port_map_free(fp_port_map *map)
    int fp_port_map_set(fp_port_map *map, unsigned port, uint32_t value)
    int fp_port_map_get(const fp_port_map *map, unsigned port, uint32_t *value_out)
    size_t fp_port_map_mem_bytes(const fp_port_map *map)
