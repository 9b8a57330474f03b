"""Builds src_c/fp_lookup.c with a small C driver under AddressSanitizer + UndefinedBehavior-
Sanitizer and runs it: random rule sets checked against naive C references, random bytes fed to
every lookup and to fp_host_split_port. Skips when no compiler or no sanitizer runtime, except in
CI (CI=true), where that is a failure."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from conftest import cannot_run

ROOT = Path(__file__).resolve().parent.parent

DRIVER = r"""
#include "fp_lookup.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static unsigned long long rs = 88172645463325252ull;
static unsigned long long rnd(void) { rs ^= rs << 13; rs ^= rs >> 7; rs ^= rs << 17; return rs; }
#define FAIL(...) do { fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); return 1; } while (0)

struct rule { int fam; unsigned char a[16]; int len; unsigned v; };

static int in_prefix(const struct rule *r, int fam, const unsigned char *x)
{
    if (r->fam != fam) return 0;
    for (int i = 0; i < r->len; i++) {
        int bit = 7 - (i & 7);
        if (((r->a[i >> 3] >> bit) & 1) != ((x[i >> 3] >> bit) & 1)) return 0;
    }
    return 1;
}

static int naive_lpm(const struct rule *r, int n, int fam, const unsigned char *x, unsigned *v)
{
    int best = -1;
    for (int i = 0; i < n; i++)
        if (in_prefix(&r[i], fam, x) && r[i].len >= best) { best = r[i].len; *v = r[i].v; }
    return best >= 0 ? 0 : -ENOENT;
}

static void pick_addr(int fam, unsigned char *a, const struct rule *r, int n)
{
    int w = fam == AF_INET ? 4 : 16;
    if (n && rnd() % 3) {            /* near an existing rule */
        const struct rule *b = &r[rnd() % n];
        memcpy(a, b->a, 16);
        if (b->fam != fam) memset(a, (int)(rnd() & 0xff), 16);
        a[w - 1 - rnd() % 2] ^= (unsigned char)(1u << (rnd() % 8));
        if (rnd() % 4 == 0) memset(a + rnd() % w, rnd() % 2 ? 0xff : 0, 1);
    } else {
        for (int i = 0; i < 16; i++) a[i] = (unsigned char)rnd();
    }
}

static int cidr_round(int nrules)
{
    struct rule *r = calloc((size_t)nrules + 1, sizeof(*r));
    fp_cidr_set *s = fp_cidr_set_new();
    if (!r || !s) FAIL("oom");
    for (int i = 0; i < nrules; i++) {
        r[i].fam = rnd() % 2 ? AF_INET : AF_INET6;
        pick_addr(r[i].fam, r[i].a, r, i);
        int w = r[i].fam == AF_INET ? 32 : 128;
        r[i].len = (int)(rnd() % (unsigned)(w + 1));
        r[i].v = (unsigned)(rnd() % 1000);
        if (fp_cidr_set_add(s, r[i].fam, r[i].a, r[i].len, r[i].v)) FAIL("add");
    }
    if (fp_cidr_set_add(s, AF_INET, r[0].a, 33, 1) != -EINVAL) FAIL("len 33");
    if (fp_cidr_set_add(s, 99, r[0].a, 8, 1) != -EAFNOSUPPORT) FAIL("family");
    if (fp_cidr_set_add(s, AF_INET, r[0].a, 8, FP_LOOKUP_NONE) != -EINVAL) FAIL("none value");
    if (fp_cidr_set_lookup(s, AF_INET, r[0].a, NULL) != -EINVAL) FAIL("lookup unbuilt");
    if (fp_cidr_set_build(s) || fp_cidr_set_build(s)) FAIL("build");
    if (fp_cidr_set_add(s, AF_INET, r[0].a, 8, 1) != -EBUSY) FAIL("busy");
    for (int q = 0; q < 4000; q++) {
        int fam = rnd() % 2 ? AF_INET : AF_INET6;
        unsigned char a[16];
        pick_addr(fam, a, r, nrules);
        unsigned got = 0, want = 0;
        int rc = fp_cidr_set_lookup(s, fam, a, &got), wrc = naive_lpm(r, nrules, fam, a, &want);
        if (rc != wrc || (rc == 0 && got != want))
            FAIL("lpm mismatch n=%d rc=%d/%d v=%u/%u", nrules, rc, wrc, got, want);
    }
    fp_cidr_set_free(s);
    free(r);
    return 0;
}

struct hrule { char name[300]; size_t len; unsigned v; };

static void norm(char *d, const char *s, size_t *n)
{
    if (*n && s[*n - 1] == '.') (*n)--;
    for (size_t i = 0; i < *n; i++) d[i] = (s[i] >= 'A' && s[i] <= 'Z') ? s[i] + 32 : s[i];
}

static int naive_host(const struct hrule *r, int n, const char *q, size_t qn, unsigned *v)
{
    char b[400], c[400];
    if (qn > 254) return -ENOENT;
    norm(b, q, &qn);
    if (qn == 0) return -ENOENT;
    int found = 0;
    for (int i = 0; i < n; i++) {
        size_t rn = r[i].len;
        norm(c, r[i].name, &rn);
        if (rn == qn && memcmp(b, c, qn) == 0) { *v = r[i].v; found = 1; }
    }
    if (found) return 0;
    const char *dot = memchr(b, '.', qn);
    if (!dot || dot == b || dot == b + qn - 1) return -ENOENT;
    size_t sn = qn - (size_t)(dot - b);  /* ".suffix" */
    for (int i = 0; i < n; i++) {
        size_t rn = r[i].len;
        norm(c, r[i].name, &rn);
        if (rn == sn + 1 && c[0] == '*' && memcmp(c + 1, dot, sn) == 0) { *v = r[i].v; found = 1; }
    }
    return found ? 0 : -ENOENT;
}

static const char *labels[] = {"a", "B", "api", "xn--d1a", "c-d", "0", "Zz"};

static size_t make_name(char *out, int wild)
{
    size_t n = 0;
    if (wild) { memcpy(out, "*.", 2); n = 2; }
    int k = 1 + (int)(rnd() % 4);
    for (int i = 0; i < k; i++) {
        const char *l = labels[rnd() % 7];
        if (i) out[n++] = '.';
        memcpy(out + n, l, strlen(l));
        n += strlen(l);
    }
    if (rnd() % 5 == 0) out[n++] = '.';
    return n;
}

static int host_round(int nrules)
{
    struct hrule *r = calloc((size_t)nrules + 1, sizeof(*r));
    fp_host_set *s = fp_host_set_new();
    if (!r || !s) FAIL("oom");
    for (int i = 0; i < nrules; i++) {
        r[i].len = make_name(r[i].name, rnd() % 3 == 0);
        r[i].v = (unsigned)(rnd() % 1000);
        if (fp_host_set_add(s, r[i].name, r[i].len, r[i].v)) FAIL("host add %.*s", (int)r[i].len, r[i].name);
    }
    if (fp_host_set_add(s, "a..b", 4, 1) != -EINVAL) FAIL("a..b");
    if (fp_host_set_lookup(s, "a", 1, NULL) != -EINVAL) FAIL("lookup unbuilt");
    if (fp_host_set_build(s)) FAIL("build");
    if (fp_host_set_add(s, "a", 1, 1) != -EBUSY) FAIL("busy");
    char q[600];
    for (int t = 0; t < 4000; t++) {
        size_t qn;
        if (rnd() % 4 == 0) {            /* random bytes, random length: memory safety */
            qn = rnd() % 600;
            for (size_t i = 0; i < qn; i++) q[i] = rnd() % 4 ? "aB.*-"[rnd() % 5] : (char)rnd();
        } else {
            qn = make_name(q, 0);
            if (rnd() % 3 == 0) { memmove(q + 2, q, qn); q[0] = 'q'; q[1] = '.'; qn += 2; }
        }
        char *heap = malloc(qn ? qn : 1);   /* exact-size buffer: ASan sees any over-read */
        memcpy(heap, q, qn);
        unsigned got = 0, want = 0;
        int rc = fp_host_set_lookup(s, heap, qn, &got), wrc = naive_host(r, nrules, heap, qn, &want);
        if (rc != wrc || (rc == 0 && got != want))
            FAIL("host mismatch %.*s rc=%d/%d v=%u/%u", (int)qn, heap, rc, wrc, got, want);
        size_t off = 0, hl = 0;
        int p = fp_host_split_port(heap, qn, &off, &hl);
        if (p >= 0 && off + hl > qn) FAIL("split out of bounds");
        free(heap);
    }
    fp_host_set_free(s);
    free(r);
    return 0;
}

static int port_round(void)
{
    fp_port_map *m = fp_port_map_new();
    static unsigned ref[65536];
    if (!m) FAIL("oom");
    for (unsigned p = 0; p < 65536; p++) ref[p] = FP_LOOKUP_NONE;
    for (int i = 0; i < 3000; i++) {
        unsigned p = 1 + (unsigned)(rnd() % 65535), v = rnd() % 7 ? (unsigned)(rnd() % 100) : FP_LOOKUP_NONE;
        if (fp_port_map_set(m, p, v)) FAIL("set");
        ref[p] = v;
    }
    for (unsigned p = 0; p < 65536; p++) {
        unsigned v = 0;
        int rc = fp_port_map_get(m, p, &v);
        if ((ref[p] == FP_LOOKUP_NONE) != (rc == -ENOENT) || (rc == 0 && v != ref[p])) FAIL("port %u", p);
    }
    fp_port_map_free(m);
    return 0;
}

int main(void)
{
    int sizes[] = {0, 1, 2, 5, 20, 100, 600};
    for (unsigned i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
        for (int round = 0; round < 3; round++)
            if (cidr_round(sizes[i]) || host_round(sizes[i])) return 1;
    if (port_round()) return 1;
    fp_cidr_set_free(NULL); fp_host_set_free(NULL); fp_port_map_free(NULL);
    puts("ok");
    return 0;
}
"""

SAN = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]


def _compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        cannot_run("no C compiler")
    return cc


def test_fp_lookup_under_asan_ubsan(tmp_path: Path):
    cc = _compiler()
    probe = tmp_path / "probe.c"
    probe.write_text("int main(void) { return 0; }\n")
    r = subprocess.run([cc, *SAN, str(probe), "-o", str(tmp_path / "probe")],
                       capture_output=True, text=True, timeout=60)
    if r.returncode != 0:
        cannot_run(f"sanitizers unavailable: {r.stderr.strip()[:200]}")
    driver = tmp_path / "driver.c"
    driver.write_text(DRIVER)
    exe = tmp_path / "driver"
    r = subprocess.run([cc, "-std=gnu11", "-O1", "-g", "-Wall", "-Wextra", "-Werror", *SAN,
                        "-I", str(ROOT / "src_c"), str(ROOT / "src_c" / "fp_lookup.c"),
                        str(driver), "-o", str(exe)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=1:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1")
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120, env=env)
    if r.returncode != 0 and "LeakSanitizer has encountered a fatal error" in r.stderr:
        env["ASAN_OPTIONS"] = "detect_leaks=0"  # LSan cannot run under some ptrace limits
        r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-4000:]
