/* fastproxy data plane: lookup structures the decision table is built from.
 *
 *   fp_cidr_set  longest-prefix match over IPv4 and IPv6 CIDRs -> uint32 value
 *   fp_host_set  exact host names and "*.suffix" wildcards -> uint32 value (TLS SNI, HTTP Host)
 *   fp_port_map  TCP port 1..65535 -> uint32 value (per-port rule slot)
 *
 * Life cycle: one control thread creates a structure, adds entries, then freezes it with
 * fp_*_build(). A built structure is immutable: any number of worker threads may look up in it at
 * once with no lock; lookups take a const pointer, never allocate, never write, never block.
 * Adding to a built structure fails with -EBUSY (build a new one and swap it in instead).
 *
 * Values are caller-chosen uint32 (a rule slot index, typically). FP_LOOKUP_NONE (0xffffffff) is
 * reserved: it marks "no rule" internally and is refused by the add functions.
 *
 * Duplicates: adding the same key twice (the same normalized prefix, or the same normalized
 * name of the same kind) is not an error; the LATER add wins, as in a dict assignment.
 *
 * Errors are negative errno values; nothing here prints. See each function's contract.
 */
#ifndef FP_LOOKUP_H
#define FP_LOOKUP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FP_LOOKUP_NONE 0xffffffffu

/* Longest DNS name accepted (RFC 1035 presentation form without the trailing dot). */
#define FP_HOST_MAX_LEN 253

/* ---- CIDR longest-prefix match ----------------------------------------------------------------
 *
 * Representation once built, per family: the address space cut into disjoint ranges, each
 * carrying the value of the longest prefix covering it (adjacent ranges with the same value are
 * merged), stored as a sorted array of range starts plus a parallel value array. n prefixes give
 * at most 2n+1 ranges. A lookup picks a bucket from the top k address bits (2^k ~ ranges, k <= 16);
 * a crowded bucket (clustered prefixes, e.g. ClusterIPs in one /12) has a second index on its next
 * bits. The bucket bounds a branch-free binary search over a few ranges: O(1) in practice, O(log n)
 * worst case (IPv6 prefixes crowding below the top 64 bits). Memory is O(n): 8 B (v4) / 20 B (v6)
 * per range plus at most ~20 B per range of index; see fp_cidr_set_mem_bytes().
 */
typedef struct fp_cidr_set fp_cidr_set;

/* Contract: allocates an empty, unbuilt set. Returns NULL only when out of memory. */
fp_cidr_set *fp_cidr_set_new(void);

/* Contract: frees the set and everything it owns. NULL is a no-op. The caller guarantees no
 * lookup is running on it. */
void fp_cidr_set_free(fp_cidr_set *set);

/* Contract: records prefix addr/prefix_len -> value. family is AF_INET (addr: 4 bytes, network
 * order, prefix_len 0..32) or AF_INET6 (16 bytes, prefix_len 0..128). Host bits set in addr
 * (192.0.2.10/24) are cleared, i.e. the prefix is normalized to 192.0.2.0/24, as iptables does.
 * A later add of the same normalized prefix replaces the earlier value.
 * Returns 0, -EINVAL (NULL pointer, bad prefix_len, value == FP_LOOKUP_NONE), -EAFNOSUPPORT
 * (other family), -EBUSY (set already built) or -ENOMEM. */
int fp_cidr_set_add(fp_cidr_set *set, int family, const uint8_t *addr, int prefix_len,
                    uint32_t value);

/* Contract: freezes the set into its lookup form and releases the staging list. Idempotent
 * (a second call returns 0). Returns 0, -EINVAL (NULL) or -ENOMEM (the set stays unbuilt and may
 * be built again or freed). */
int fp_cidr_set_build(fp_cidr_set *set);

/* Contract: finds the LONGEST prefix of `family` that holds addr (4 or 16 bytes, network order)
 * and stores its value in *value_out (if value_out is not NULL). IPv4-mapped IPv6 addresses are
 * not translated: unmap them before looking up. Pure: safe from many threads at once on a built
 * set. Returns 0, -ENOENT (no prefix holds addr), -EINVAL (NULL set/addr, or set not built) or
 * -EAFNOSUPPORT. */
int fp_cidr_set_lookup(const fp_cidr_set *set, int family, const uint8_t *addr,
                       uint32_t *value_out);

/* Contract: number of distinct prefixes (after duplicate folding) in a built set, all families;
 * the number of recorded adds in an unbuilt one. 0 for NULL. */
size_t fp_cidr_set_count(const fp_cidr_set *set);

/* Contract: heap bytes the set holds now (structure, staging list or lookup arrays). */
size_t fp_cidr_set_mem_bytes(const fp_cidr_set *set);

/* ---- host names -------------------------------------------------------------------------------
 *
 * An open-addressing hash table (linear probing, load <= 3/4, 16-byte slots) over one byte arena
 * of names, keyed by a seeded 64-bit multiply-mix hash of the name and its kind (exact or
 * wildcard). A lookup costs one hash and a few probes for the exact name, then at most the same
 * for the name minus its first label: O(length of the name), independent of the number of names.
 */
typedef struct fp_host_set fp_host_set;

/* Contract: allocates an empty, unbuilt host set. Returns NULL only when out of memory. */
fp_host_set *fp_host_set_new(void);

/* Contract: frees the set. NULL is a no-op. The caller guarantees no lookup is running on it. */
void fp_host_set_free(fp_host_set *set);

/* Contract: records name[0..len) -> value. The name is normalized here too (ASCII lower case,
 * one trailing dot removed). Accepted forms: an exact name ("api.example.test"), or a wildcard
 * "*." followed by a suffix ("*.example.test"), which matches names of exactly one more
 * non-empty label. The normalized name (or wildcard suffix) must be 1..FP_HOST_MAX_LEN bytes, with
 * no empty label, no byte <= 0x20 or == 0x7f, and no '*' anywhere else. A later add of the same
 * normalized name and kind replaces the earlier value.
 * Returns 0, -EINVAL (bad name, NULL, value == FP_LOOKUP_NONE), -EBUSY (built) or -ENOMEM. */
int fp_host_set_add(fp_host_set *set, const char *name, size_t len, uint32_t value);

/* Contract: freezes the set into its hash table and releases the staging list. Idempotent.
 * Returns 0, -EINVAL (NULL) or -ENOMEM (the set stays unbuilt). */
int fp_host_set_build(fp_host_set *set);

/* Contract: looks name[0..len) up, ASCII case-insensitively, with one trailing dot ignored
 * (normalized on the fly into a stack buffer: no allocation). The exact name wins; else the
 * wildcard whose suffix equals the name minus its first label (which must be non-empty). Pure:
 * safe from many threads at once on a built set. Returns 0 and stores the value in *value_out (if
 * not NULL), -ENOENT (no match, including names too long or empty), or -EINVAL (NULL set, NULL
 * name with len > 0, or set not built). */
int fp_host_set_lookup(const fp_host_set *set, const char *name, size_t len, uint32_t *value_out);

/* Contract: number of distinct (name, kind) entries in a built set; adds recorded if unbuilt. */
size_t fp_host_set_count(const fp_host_set *set);

/* Contract: heap bytes the set holds now. */
size_t fp_host_set_mem_bytes(const fp_host_set *set);

/* Contract: splits an HTTP Host header value (RFC 9110: uri-host [ ":" port ]) into host and
 * port without copying. On success stores the host's offset and length in *host_off and *host_len
 * (for an IPv6 literal "[::1]:8080" the host is "::1", brackets excluded) and returns the port
 * 1..65535, or 0 when there is no port or it is empty ("example.test:"). Surrounding spaces/tabs
 * are skipped. Returns -EINVAL for a malformed value: empty host, non-digit or out-of-range
 * (0 or > 65535) port, unclosed '[', or a bare IPv6 address with several ':' and no brackets. */
int fp_host_split_port(const char *s, size_t len, size_t *host_off, size_t *host_len);

/* ---- port map ---------------------------------------------------------------------------------
 *
 * Two levels of 256: a top array of 256 page numbers and 1 KiB pages of 256 uint32 values, with
 * page 0 a shared all-empty page. A lookup is two dependent loads (O(1)); memory is 1 KiB plus
 * 1 KiB per distinct high byte of the ports used (a sidecar with ports 80, 443, 3306, 8080 holds
 * ~5 KiB where a flat 65536-entry array would hold 256 KiB per table, and a reload keeps two
 * tables alive). No build step: set everything before sharing the map, then only get.
 */
typedef struct fp_port_map fp_port_map;

/* Contract: allocates an empty map. Returns NULL only when out of memory. */
fp_port_map *fp_port_map_new(void);

/* Contract: frees the map. NULL is a no-op. */
void fp_port_map_free(fp_port_map *map);

/* Contract: maps port (1..65535) to value, replacing any earlier value. value FP_LOOKUP_NONE
 * removes the port. Not safe while other threads read the map. Returns 0, -EINVAL (NULL, port
 * out of range) or -ENOMEM. */
int fp_port_map_set(fp_port_map *map, unsigned port, uint32_t value);

/* Contract: stores the value of port in *value_out (if not NULL). Pure, thread-safe on a map no
 * longer being set. Returns 0, -ENOENT (port unmapped or out of range) or -EINVAL (NULL map). */
int fp_port_map_get(const fp_port_map *map, unsigned port, uint32_t *value_out);

/* Contract: heap bytes the map holds. */
size_t fp_port_map_mem_bytes(const fp_port_map *map);

#ifdef __cplusplus
}
#endif

#endif /* FP_LOOKUP_H */
