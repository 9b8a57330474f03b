/* fastproxy data plane: CIDR longest-prefix match, host-name sets and the port map.
 *
 * Theory of operation
 * -------------------
 * Everything here is built once by the control thread and then read by every worker thread for
 * every new connection, so the lookup side is what is optimized: const pointers, no locks, no
 * heap allocation, no writes, and a cost that does not grow with the number of rules.
 *
 * CIDR sets. Prefixes are staged as (family, first address, last address, length, value, order
 * of addition). fp_cidr_set_build() sorts them by (family, first, length), folds duplicates
 * (the later add wins) and sweeps them with a stack of open prefixes - CIDR prefixes are either
 * nested or disjoint - to cut each family's address space into disjoint ranges, each carrying the
 * value of the longest prefix over it (or FP_LOOKUP_NONE). Adjacent ranges with the same value
 * are merged; ranges[0] always starts at address 0, so every address falls in exactly one range:
 * the last one whose start is <= the address. An index over the top k address bits (2^k ~ number
 * of ranges), with a second level under crowded buckets, narrows that search to a few ranges,
 * where a branch-free binary search finishes it.
 *
 * Why sorted ranges rather than a trie: for 10k IPv4 + 10k IPv6 prefixes this takes ~0.2 MB +
 * ~0.5 MB, where a stride-8 multibit trie for IPv6 can take tens of MB and a binary trie costs a
 * pointer chase per bit (up to 128 dependent cache misses); DIR-24-8 alone costs 32 MB for IPv4,
 * beyond an idle sidecar's budget. Ranges give O(1) for prefixes spread over the address space
 * and for clustered ones (the second index level), O(log n) at worst, with simple code.
 *
 * Host sets. Names are staged into one byte arena; build hashes each (name, kind) into an
 * open-addressing table (linear probing, load <= 3/4). Wildcards "*.suffix" are stored as their
 * suffix with kind WILD; a lookup tries the whole name as EXACT, then the name minus its first
 * label as WILD. Names are normalized (ASCII lower case, one trailing dot dropped) on add, and on
 * lookup into a stack buffer.
 *
 * Port map. Two-level table of 256 x 256 with a shared empty page; see fp_lookup.h.
 */
#include "fp_lookup.h"

#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>


/* ================================ CIDR sets ================================================= */

/* An address as an unsigned 128-bit number (IPv4 uses lo's low 32 bits). */
typedef struct {
    uint64_t hi, lo;
} u128;

static inline int u128_cmp(u128 a, u128 b)
{
    if (a.hi != b.hi)
        return a.hi < b.hi ? -1 : 1;
    if (a.lo != b.lo)
        return a.lo < b.lo ? -1 : 1;
    return 0;
}

static inline bool u128_eq(u128 a, u128 b) { return a.hi == b.hi && a.lo == b.lo; }

static inline u128 u128_inc(u128 a)
{
    a.lo++;
    if (a.lo == 0)
        a.hi++;
    return a;
}

/* A staged prefix. */
struct cidr_stage {
    u128 first, last;
    uint32_t value;
    uint32_t seq;    /* order of addition: the later duplicate wins */
    uint8_t family;  /* 4 or 6 */
    uint8_t len;
};

/* The index over the ranges of one family, on the top 64 bits of the address (IPv4 addresses
 * are placed in the top 32). Level 1 splits on the top k bits: bucket b's answer lies in ranges
 * l1[b].lo .. l1[b+1].lo. A bucket holding more than INDEX_CROWD ranges (prefixes clustered in
 * one part of the space, e.g. ClusterIPs in 10.96.0.0/12) gets a level-2 index on its next k2
 * bits, stored in `sub`: sub[off-1] = k2, sub[off + c] = first candidate range of sub-bucket c,
 * sub[off + 2^k2] = the bucket's last candidate. */
struct lpm_l1 {
    uint32_t lo;   /* first candidate range: the last one starting at or before the bucket */
    uint32_t sub;  /* 0, or offset of this bucket's level-2 entries in `sub` */
};

struct lpm_index {
    unsigned k;
    struct lpm_l1 *l1;  /* [2^k + 1] */
    uint32_t *sub;
    size_t nsub;
};

#define INDEX_CROWD 8

/* The built lookup form of one family. */
struct cidr_v4 {
    uint32_t n;       /* ranges */
    uint32_t *start;  /* [n], sorted, start[0] == 0 */
    uint32_t *value;  /* [n] */
    struct lpm_index ix;
};

/* IPv6 range starts are kept as two 64-bit halves: compare hi, then lo. */
struct v6key {
    uint64_t hi, lo;
};

struct cidr_v6 {
    uint32_t n;
    struct v6key *start;
    uint32_t *value;
    struct lpm_index ix;
};

struct fp_cidr_set {
    bool built;
    size_t count;               /* distinct prefixes once built */
    struct cidr_stage *stage;   /* staging list (unbuilt only) */
    size_t nstage, capstage;
    struct cidr_v4 v4;
    struct cidr_v6 v6;
};

fp_cidr_set *fp_cidr_set_new(void)
{
    return calloc(1, sizeof(fp_cidr_set));
}

static void cidr_free_built(fp_cidr_set *set)
{
    free(set->v4.start);
    free(set->v4.value);
    free(set->v4.ix.l1);
    free(set->v4.ix.sub);
    free(set->v6.start);
    free(set->v6.value);
    free(set->v6.ix.l1);
    free(set->v6.ix.sub);
    memset(&set->v4, 0, sizeof(set->v4));
    memset(&set->v6, 0, sizeof(set->v6));
}

void fp_cidr_set_free(fp_cidr_set *set)
{
    if (!set)
        return;
    free(set->stage);
    cidr_free_built(set);
    free(set);
}

/* Big-endian (network order) loads, unaligned-safe. */
static inline uint64_t be64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline uint32_t be32(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

/* Mask of the top `len` bits of a 64-bit word (len 0..64). */
static inline uint64_t top_mask64(int len)
{
    return len <= 0 ? 0 : len >= 64 ? ~(uint64_t)0 : ~(uint64_t)0 << (64 - len);
}

int fp_cidr_set_add(fp_cidr_set *set, int family, const uint8_t *addr, int prefix_len,
                              uint32_t value)
{
    if (!set || !addr || value == FP_LOOKUP_NONE)
        return -EINVAL;
    if (family != AF_INET && family != AF_INET6)
        return -EAFNOSUPPORT;
    if (prefix_len < 0 || prefix_len > (family == AF_INET ? 32 : 128))
        return -EINVAL;
    if (set->built)
        return -EBUSY;
    if (set->nstage == UINT32_MAX)
        return -ENOMEM;
    if (set->nstage == set->capstage) {
        size_t cap = set->capstage ? set->capstage * 2 : 16;
        struct cidr_stage *s = realloc(set->stage, cap * sizeof(*s));
        if (!s)
            return -ENOMEM;
        set->stage = s;
        set->capstage = cap;
    }
    struct cidr_stage *e = &set->stage[set->nstage];
    if (family == AF_INET) {
        uint32_t m = (uint32_t)top_mask64(prefix_len + 32);
        uint32_t a = be32(addr) & m;
        e->first = (u128){0, a};
        e->last = (u128){0, a | ~m};
        e->family = 4;
    } else {
        uint64_t mh = top_mask64(prefix_len), ml = top_mask64(prefix_len - 64);
        uint64_t h = be64(addr) & mh, l = be64(addr + 8) & ml;
        e->first = (u128){h, l};
        e->last = (u128){h | ~mh, l | ~ml};
        e->family = 6;
    }
    e->len = (uint8_t)prefix_len;
    e->value = value;
    e->seq = (uint32_t)set->nstage;
    set->nstage++;
    return 0;
}

static int cidr_stage_cmp(const void *pa, const void *pb)
{
    const struct cidr_stage *a = pa, *b = pb;
    if (a->family != b->family)
        return a->family < b->family ? -1 : 1;
    int c = u128_cmp(a->first, b->first);
    if (c)
        return c;
    if (a->len != b->len)
        return a->len < b->len ? -1 : 1; /* the wider (containing) prefix first */
    return a->seq < b->seq ? -1 : a->seq > b->seq ? 1 : 0;
}

/* Growing list of (start, value) ranges produced by the sweep. */
struct range_list {
    u128 *start;
    uint32_t *value;
    size_t n, cap;
};

/* Appends range [pos, ...) with value v; pos is >= every earlier pos. A range at the same pos
 * replaces the last one; a value equal to the previous range's extends that range instead. */
static int range_emit(struct range_list *r, u128 pos, uint32_t v)
{
    if (r->n && u128_eq(r->start[r->n - 1], pos)) {
        r->value[r->n - 1] = v;
        if (r->n >= 2 && r->value[r->n - 2] == v)
            r->n--;
        return 0;
    }
    if (r->n && r->value[r->n - 1] == v)
        return 0;
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        u128 *s = realloc(r->start, cap * sizeof(*s));
        if (!s)
            return -ENOMEM;
        r->start = s;
        uint32_t *val = realloc(r->value, cap * sizeof(*val));
        if (!val)
            return -ENOMEM;
        r->value = val;
        r->cap = cap;
    }
    r->start[r->n] = pos;
    r->value[r->n] = v;
    r->n++;
    return 0;
}

/* Sweeps the sorted, duplicate-free prefixes p[0..n) of one family (address width `bits`) into
 * disjoint ranges. */
static int cidr_sweep(const struct cidr_stage *p, size_t n, unsigned bits, struct range_list *r)
{
    const struct cidr_stage *stack[130];
    size_t depth = 0;
    u128 max = bits == 32 ? (u128){0, 0xffffffffu} : (u128){~(uint64_t)0, ~(uint64_t)0};
    int rc = range_emit(r, (u128){0, 0}, FP_LOOKUP_NONE);

    for (size_t i = 0; i < n && rc == 0; i++) {
        while (depth && u128_cmp(stack[depth - 1]->last, p[i].first) < 0 && rc == 0) {
            const struct cidr_stage *t = stack[--depth];
            rc = range_emit(r, u128_inc(t->last), depth ? stack[depth - 1]->value : FP_LOOKUP_NONE);
        }
        /* nested prefixes have strictly growing lengths, so depth <= bits + 1 */
        stack[depth++] = &p[i];
        if (rc == 0)
            rc = range_emit(r, p[i].first, p[i].value);
    }
    while (depth && rc == 0) {
        const struct cidr_stage *t = stack[--depth];
        if (!u128_eq(t->last, max))
            rc = range_emit(r, u128_inc(t->last), depth ? stack[depth - 1]->value : FP_LOOKUP_NONE);
    }
    return rc;
}

/* Index bits for n ranges: about log2(n), so a bucket holds a few ranges when they are spread. */
static unsigned index_bits(size_t n)
{
    unsigned k = 0;
    while (k < 16 && ((size_t)1 << (k + 1)) <= n)
        k++;
    return k;
}

/* Range i starts at or before the address whose top 64 bits are B and whose other bits are 0:
 * key[i] holds the top 64 bits of the start, low0[i] whether its other bits are all 0. */
static inline bool starts_by(const uint64_t *key, const uint8_t *low0, size_t i, uint64_t B)
{
    return key[i] < B || (key[i] == B && low0[i]);
}

/* Builds the two-level index over n ranges (n >= 1) whose starts are described by key/low0;
 * `width` is how many of the 64 key bits carry address bits (32 for IPv4, 64 for IPv6). */
static int index_build(struct lpm_index *ix, const uint64_t *key, const uint8_t *low0, size_t n,
                       unsigned width)
{
    unsigned k = index_bits(n);
    size_t nb = (size_t)1 << k;
    ix->k = k;
    ix->l1 = malloc((nb + 1) * sizeof(*ix->l1));
    if (!ix->l1)
        return -ENOMEM;
    size_t i = 0, nsub = 0;
    for (size_t b = 0; b < nb; b++) {
        uint64_t B = k ? (uint64_t)b << (64 - k) : 0;
        while (i + 1 < n && starts_by(key, low0, i + 1, B))
            i++;
        ix->l1[b] = (struct lpm_l1){(uint32_t)i, 0};
    }
    ix->l1[nb] = (struct lpm_l1){(uint32_t)(n - 1), 0};

    /* level 2: size it first, then fill */
    for (int pass = 0; pass < 2; pass++) {
        size_t off = 0;
        for (size_t b = 0; b < nb; b++) {
            size_t lo = ix->l1[b].lo, hi = ix->l1[b + 1].lo, cnt = hi - lo + 1;
            unsigned k2 = index_bits(cnt);
            if (k2 > width - k)
                k2 = width - k;
            if (cnt <= INDEX_CROWD || k2 == 0)
                continue;
            size_t nc = (size_t)1 << k2;
            if (pass == 1) {
                uint64_t base = k ? (uint64_t)b << (64 - k) : 0;
                ix->sub[off] = k2;
                size_t j = lo;
                for (size_t c = 0; c < nc; c++) {
                    uint64_t B = base | ((uint64_t)c << (64 - k - k2));
                    while (j + 1 <= hi && starts_by(key, low0, j + 1, B))
                        j++;
                    ix->sub[off + 1 + c] = (uint32_t)j;
                }
                ix->sub[off + 1 + nc] = (uint32_t)hi;
                ix->l1[b].sub = (uint32_t)(off + 1);
            }
            off += nc + 2;
        }
        if (pass == 0) {
            nsub = off;
            if (nsub == 0)
                break;
            if (nsub >= UINT32_MAX)
                return -ENOMEM;
            ix->sub = malloc(nsub * sizeof(uint32_t));
            if (!ix->sub)
                return -ENOMEM;
        }
    }
    ix->nsub = nsub;
    return 0;
}

/* The candidate ranges [*lo, *hi] for an address whose top 64 bits are x. */
static inline void index_find(const struct lpm_index *ix, uint64_t x, uint32_t *lo, uint32_t *hi)
{
    uint64_t b = ix->k ? x >> (64 - ix->k) : 0;
    const struct lpm_l1 *e = &ix->l1[b];
    if (e->sub == 0) {
        *lo = e->lo;
        *hi = e[1].lo;
        return;
    }
    const uint32_t *sub = ix->sub + e->sub;
    unsigned k2 = sub[-1];
    uint64_t c = (x << ix->k) >> (64 - k2);
    *lo = sub[c];
    *hi = sub[c + 1];
}

static int cidr_freeze(struct range_list *r, bool v6, struct cidr_v4 *t4, struct cidr_v6 *t6)
{
    size_t n = r->n;
    uint64_t *key = malloc(n * sizeof(uint64_t));
    uint8_t *low0 = malloc(n);
    uint32_t *value = malloc(n * sizeof(uint32_t));
    int rc = (key && low0 && value) ? 0 : -ENOMEM;
    if (rc == 0) {
        for (size_t i = 0; i < n; i++) {
            key[i] = v6 ? r->start[i].hi : r->start[i].lo << 32;
            low0[i] = v6 ? r->start[i].lo == 0 : 1;
            value[i] = r->value[i];
        }
        if (v6) {
            t6->n = (uint32_t)n;
            t6->value = value;
            t6->start = malloc(n * sizeof(struct v6key));
            if (!t6->start)
                rc = -ENOMEM;
            for (size_t i = 0; rc == 0 && i < n; i++)
                t6->start[i] = (struct v6key){r->start[i].hi, r->start[i].lo};
            if (rc == 0)
                rc = index_build(&t6->ix, key, low0, n, 64);
        } else {
            t4->n = (uint32_t)n;
            t4->value = value;
            t4->start = malloc(n * sizeof(uint32_t));
            if (!t4->start)
                rc = -ENOMEM;
            for (size_t i = 0; rc == 0 && i < n; i++)
                t4->start[i] = (uint32_t)r->start[i].lo;
            if (rc == 0)
                rc = index_build(&t4->ix, key, low0, n, 32);
        }
    } else {
        free(value);
    }
    free(key);
    free(low0);
    return rc;
}

int fp_cidr_set_build(fp_cidr_set *set)
{
    if (!set)
        return -EINVAL;
    if (set->built)
        return 0;
    struct cidr_stage *p = set->stage;
    size_t n = set->nstage;
    if (n)
        qsort(p, n, sizeof(*p), cidr_stage_cmp);
    /* fold duplicates in place: of equal (family, first, len) keep the last added (largest seq,
     * sorted last) */
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (m && p[m - 1].family == p[i].family && p[m - 1].len == p[i].len &&
            u128_eq(p[m - 1].first, p[i].first))
            p[m - 1] = p[i];
        else
            p[m++] = p[i];
    }
    size_t n4 = 0;
    while (n4 < m && p[n4].family == 4)
        n4++;

    struct range_list r4 = {0}, r6 = {0};
    int rc = cidr_sweep(p, n4, 32, &r4);
    if (rc == 0)
        rc = cidr_sweep(p + n4, m - n4, 128, &r6);
    if (rc == 0)
        rc = cidr_freeze(&r4, false, &set->v4, NULL);
    if (rc == 0)
        rc = cidr_freeze(&r6, true, NULL, &set->v6);
    free(r4.start);
    free(r4.value);
    free(r6.start);
    free(r6.value);
    if (rc) {
        cidr_free_built(set);
        set->nstage = m; /* the folded, sorted list is equivalent to the original */
        return rc;
    }
    free(set->stage);
    set->stage = NULL;
    set->nstage = set->capstage = 0;
    set->count = m;
    set->built = true;
    return 0;
}

int fp_cidr_set_lookup(const fp_cidr_set *set, int family, const uint8_t *addr,
                                 uint32_t *value_out)
{
    if (!set || !addr || !set->built)
        return -EINVAL;
    uint32_t v;
    if (family == AF_INET) {
        const struct cidr_v4 *t = &set->v4;
        uint32_t x = be32(addr), lo, hi;
        index_find(&t->ix, (uint64_t)x << 32, &lo, &hi);
        const uint32_t *base = t->start + lo;
        uint32_t len = hi - lo + 1;
        while (len > 1) {
            uint32_t half = len >> 1;
            base = base[half] <= x ? base + half : base;
            len -= half;
        }
        v = t->value[base - t->start];
    } else if (family == AF_INET6) {
        const struct cidr_v6 *t = &set->v6;
        uint64_t xh = be64(addr), xl = be64(addr + 8);
        uint32_t lo, hi;
        index_find(&t->ix, xh, &lo, &hi);
        const struct v6key *base = t->start + lo;
        uint32_t len = hi - lo + 1;
        while (len > 1) {
            uint32_t half = len >> 1;
            const struct v6key *c = base + half;
            bool le = c->hi < xh || (c->hi == xh && c->lo <= xl);
            base = le ? c : base;
            len -= half;
        }
        v = t->value[base - t->start];
    } else {
        return -EAFNOSUPPORT;
    }
    if (v == FP_LOOKUP_NONE)
        return -ENOENT;
    if (value_out)
        *value_out = v;
    return 0;
}

size_t fp_cidr_set_count(const fp_cidr_set *set)
{
    if (!set)
        return 0;
    return set->built ? set->count : set->nstage;
}

size_t fp_cidr_set_mem_bytes(const fp_cidr_set *set)
{
    if (!set)
        return 0;
    size_t b = sizeof(*set) + set->capstage * sizeof(struct cidr_stage);
    if (set->built) {
        b += (size_t)set->v4.n * 8 + (((size_t)1 << set->v4.ix.k) + 1) * sizeof(struct lpm_l1) +
             set->v4.ix.nsub * 4;
        b += (size_t)set->v6.n * (sizeof(struct v6key) + 4) +
             (((size_t)1 << set->v6.ix.k) + 1) * sizeof(struct lpm_l1) + set->v6.ix.nsub * 4;
    }
    return b;
}

/* ================================ host sets ================================================= */

enum { HOST_EXACT = 1, HOST_WILD = 2 };

struct host_stage {
    uint32_t off;   /* into the arena */
    uint16_t len;
    uint8_t kind;
    uint32_t value;
};

/* A table slot: empty when len == 0 (names are never empty). */
struct host_slot {
    uint32_t hash32;  /* high half of the 64-bit hash, checked before the bytes */
    uint32_t off;
    uint32_t value;
    uint16_t len;
    uint8_t kind;
    uint8_t pad;
};

struct fp_host_set {
    bool built;
    size_t count;
    char *arena;
    size_t narena, caparena;
    struct host_stage *stage;
    size_t nstage, capstage;
    struct host_slot *slot;
    size_t mask;    /* slots - 1 */
    uint64_t seed;
};

#define HOST_SEED 0x8f3c1a7be24d9065ull

/* A seeded 64-bit hash: 8 bytes at a time folded through a 64x64->128 multiply (high ^ low). */
static inline uint64_t fold_mul(uint64_t a, uint64_t b)
{
#ifdef __SIZEOF_INT128__
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
#else
    uint64_t r = a * b;
    return r ^ (r >> 29) ^ ((a >> 32) * (b | 1));
#endif
}

static uint64_t host_hash(const char *s, size_t n, uint64_t seed)
{
    const uint64_t k0 = 0x9e3779b97f4a7c15ull, k1 = 0xd6e8feb86659fd93ull,
                   k2 = 0xa0761d6478bd642full;
    uint64_t h = seed ^ (n * k0);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = fold_mul(h ^ w ^ k2, k1);
        s += 8;
        n -= 8;
    }
    if (n) {
        uint64_t w = 0;
        memcpy(&w, s, n);
        h = fold_mul(h ^ w ^ k0, k2);
    }
    return fold_mul(h ^ (h >> 32), k1 ^ seed);
}

fp_host_set *fp_host_set_new(void)
{
    fp_host_set *set = calloc(1, sizeof(fp_host_set));
    if (set)
        set->seed = HOST_SEED;
    return set;
}

void fp_host_set_free(fp_host_set *set)
{
    if (!set)
        return;
    free(set->arena);
    free(set->stage);
    free(set->slot);
    free(set);
}

static inline char ascii_lower(char c)
{
    return (c >= 'A' && c <= 'Z') ? (char)(c + ('a' - 'A')) : c;
}

/* Lower-cases src[0..len) into dst and drops one trailing dot; returns the new length. */
static size_t host_normalize(char *dst, const char *src, size_t len)
{
    if (len && src[len - 1] == '.')
        len--;
    for (size_t i = 0; i < len; i++)
        dst[i] = ascii_lower(src[i]);
    return len;
}

/* Checks a normalized exact name or wildcard suffix: 1..max bytes, no empty label, no '*', no
 * byte <= 0x20 or 0x7f. */
static bool host_body_ok(const char *s, size_t n, size_t max)
{
    if (n == 0 || n > max || s[0] == '.' || s[n - 1] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c == 0x7f || c == '*')
            return false;
        if (c == '.' && s[i + 1] == '.')
            return false; /* i + 1 < n: s[n-1] is not '.' */
    }
    return true;
}

int fp_host_set_add(fp_host_set *set, const char *name, size_t len, uint32_t value)
{
    if (!set || !name || value == FP_LOOKUP_NONE)
        return -EINVAL;
    if (set->built)
        return -EBUSY;
    if (len == 0 || len > FP_HOST_MAX_LEN + 1)
        return -EINVAL;
    char buf[FP_HOST_MAX_LEN + 1];
    size_t n = host_normalize(buf, name, len);
    if (n == 0 || n > FP_HOST_MAX_LEN)
        return -EINVAL;
    const char *body = buf;
    uint8_t kind = HOST_EXACT;
    size_t max = FP_HOST_MAX_LEN;
    if (n >= 2 && buf[0] == '*' && buf[1] == '.') {
        body += 2;
        n -= 2;
        kind = HOST_WILD;
        max = FP_HOST_MAX_LEN - 2;
    }
    if (!host_body_ok(body, n, max))
        return -EINVAL;
    if (set->nstage >= UINT32_MAX / 2 || set->narena + n > UINT32_MAX)
        return -ENOMEM;
    if (set->nstage == set->capstage) {
        size_t cap = set->capstage ? set->capstage * 2 : 16;
        struct host_stage *s = realloc(set->stage, cap * sizeof(*s));
        if (!s)
            return -ENOMEM;
        set->stage = s;
        set->capstage = cap;
    }
    if (set->narena + n > set->caparena) {
        size_t cap = set->caparena ? set->caparena * 2 : 1024;
        while (cap < set->narena + n)
            cap *= 2;
        char *a = realloc(set->arena, cap);
        if (!a)
            return -ENOMEM;
        set->arena = a;
        set->caparena = cap;
    }
    memcpy(set->arena + set->narena, body, n);
    set->stage[set->nstage++] = (struct host_stage){
        .off = (uint32_t)set->narena, .len = (uint16_t)n, .kind = kind, .value = value};
    set->narena += n;
    return 0;
}

/* Probes for (s, n, kind) with hash h: returns its slot, or the empty slot where it would go. */
static inline const struct host_slot *host_probe(const struct host_slot *slot, size_t mask,
                                                 const char *arena, const char *s, size_t n,
                                                 uint8_t kind, uint64_t h)
{
    uint32_t h32 = (uint32_t)(h >> 32);
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        const struct host_slot *e = &slot[i];
        if (e->len == 0)
            return e;
        if (e->hash32 == h32 && e->len == n && e->kind == kind &&
            memcmp(arena + e->off, s, n) == 0)
            return e;
    }
}

int fp_host_set_build(fp_host_set *set)
{
    if (!set)
        return -EINVAL;
    if (set->built)
        return 0;
    size_t cap = 8;
    while (cap - cap / 4 < set->nstage + 1)
        cap *= 2;
    struct host_slot *slot = calloc(cap, sizeof(*slot));
    if (!slot)
        return -ENOMEM;
    size_t count = 0;
    for (size_t i = 0; i < set->nstage; i++) {
        const struct host_stage *st = &set->stage[i];
        const char *s = set->arena + st->off;
        uint64_t h = host_hash(s, st->len, set->seed ^ st->kind);
        struct host_slot *e = (struct host_slot *)host_probe(slot, cap - 1, set->arena, s,
                                                             st->len, st->kind, h);
        if (e->len == 0) {
            *e = (struct host_slot){.hash32 = (uint32_t)(h >> 32), .off = st->off,
                                    .value = st->value, .len = st->len, .kind = st->kind};
            count++;
        } else {
            e->value = st->value; /* later add wins */
        }
    }
    if (set->narena && set->narena < set->caparena) {
        char *a = realloc(set->arena, set->narena);
        if (a) {
            set->arena = a;
            set->caparena = set->narena;
        }
    }
    free(set->stage);
    set->stage = NULL;
    set->nstage = set->capstage = 0;
    set->slot = slot;
    set->mask = cap - 1;
    set->count = count;
    set->built = true;
    return 0;
}

int fp_host_set_lookup(const fp_host_set *set, const char *name, size_t len,
                                 uint32_t *value_out)
{
    if (!set || !set->built || (!name && len))
        return -EINVAL;
    if (len == 0 || len > FP_HOST_MAX_LEN + 1)
        return -ENOENT;
    char buf[FP_HOST_MAX_LEN + 1];
    size_t n = host_normalize(buf, name, len);
    if (n == 0 || n > FP_HOST_MAX_LEN)
        return -ENOENT;

    const struct host_slot *e = host_probe(set->slot, set->mask, set->arena, buf, n, HOST_EXACT,
                                           host_hash(buf, n, set->seed ^ HOST_EXACT));
    if (e->len == 0) {
        const char *dot = memchr(buf, '.', n);
        if (!dot || dot == buf || dot == buf + n - 1)
            return -ENOENT;
        const char *suf = dot + 1;
        size_t sn = n - (size_t)(suf - buf);
        e = host_probe(set->slot, set->mask, set->arena, suf, sn, HOST_WILD,
                       host_hash(suf, sn, set->seed ^ HOST_WILD));
        if (e->len == 0)
            return -ENOENT;
    }
    if (value_out)
        *value_out = e->value;
    return 0;
}

size_t fp_host_set_count(const fp_host_set *set)
{
    if (!set)
        return 0;
    return set->built ? set->count : set->nstage;
}

size_t fp_host_set_mem_bytes(const fp_host_set *set)
{
    if (!set)
        return 0;
    return sizeof(*set) + set->caparena + set->capstage * sizeof(struct host_stage) +
           (set->built ? (set->mask + 1) * sizeof(struct host_slot) : 0);
}

static inline bool is_ws(char c) { return c == ' ' || c == '\t'; }

int fp_host_split_port(const char *s, size_t len, size_t *host_off, size_t *host_len)
{
    if (!s && len)
        return -EINVAL;
    size_t a = 0, z = len;
    while (a < z && is_ws(s[a]))
        a++;
    while (z > a && is_ws(s[z - 1]))
        z--;
    if (a == z)
        return -EINVAL;
    size_t h0, h1, p; /* host [h0, h1), port digits from p (p == z: none) */
    if (s[a] == '[') {
        const char *close = memchr(s + a, ']', z - a);
        if (!close)
            return -EINVAL;
        h0 = a + 1;
        h1 = (size_t)(close - s);
        size_t after = h1 + 1;
        if (after == z)
            p = z;
        else if (s[after] == ':')
            p = after + 1;
        else
            return -EINVAL;
    } else {
        const char *colon = memchr(s + a, ':', z - a);
        h0 = a;
        if (!colon) {
            h1 = z;
            p = z;
        } else {
            h1 = (size_t)(colon - s);
            p = h1 + 1;
            if (memchr(s + p, ':', z - p))
                return -EINVAL; /* a bare IPv6 address, or junk */
        }
    }
    if (h0 == h1)
        return -EINVAL;
    unsigned port = 0;
    for (size_t i = p; i < z; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -EINVAL;
        port = port * 10 + (unsigned)(s[i] - '0');
        if (port > 65535)
            return -EINVAL;
    }
    if (p < z && port == 0)
        return -EINVAL;
    if (host_off)
        *host_off = h0;
    if (host_len)
        *host_len = h1 - h0;
    return (int)port;
}

/* ================================ port map ================================================== */

typedef uint32_t port_page[256];

struct fp_port_map {
    uint16_t top[256];  /* page number per high byte; 0 = the shared empty page */
    port_page *page;    /* [npages], page[0] all FP_LOOKUP_NONE */
    unsigned npages;
};

static void page_clear(port_page p)
{
    for (int i = 0; i < 256; i++)
        p[i] = FP_LOOKUP_NONE;
}

fp_port_map *fp_port_map_new(void)
{
    fp_port_map *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->page = malloc(sizeof(port_page));
    if (!m->page) {
        free(m);
        return NULL;
    }
    page_clear(m->page[0]);
    m->npages = 1;
    return m;
}

void fp_port_map_free(fp_port_map *map)
{
    if (!map)
        return;
    free(map->page);
    free(map);
}

int fp_port_map_set(fp_port_map *map, unsigned port, uint32_t value)
{
    if (!map || port == 0 || port > 65535)
        return -EINVAL;
    unsigned hi = port >> 8;
    if (map->top[hi] == 0) {
        if (value == FP_LOOKUP_NONE)
            return 0;
        port_page *p = realloc(map->page, (map->npages + 1) * sizeof(port_page));
        if (!p)
            return -ENOMEM;
        map->page = p;
        page_clear(map->page[map->npages]);
        map->top[hi] = (uint16_t)map->npages++;
    }
    map->page[map->top[hi]][port & 0xff] = value;
    return 0;
}

int fp_port_map_get(const fp_port_map *map, unsigned port, uint32_t *value_out)
{
    if (!map)
        return -EINVAL;
    if (port == 0 || port > 65535)
        return -ENOENT;
    uint32_t v = map->page[map->top[port >> 8]][port & 0xff];
    if (v == FP_LOOKUP_NONE)
        return -ENOENT;
    if (value_out)
        *value_out = v;
    return 0;
}

size_t fp_port_map_mem_bytes(const fp_port_map *map)
{
    return map ? sizeof(*map) + map->npages * sizeof(port_page) : 0;
}
