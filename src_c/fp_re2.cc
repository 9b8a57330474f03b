// The RE2 shim: fp_re2.h's C API over re2::RE2. Nothing here throws past the C boundary, prints,
// or logs (RE2's own error log is off): reasons travel back in the caller's buffer.
#include "fp_re2.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <mutex>
#include <new>
#include <string>
#include <unordered_map>

#include <re2/re2.h>

struct fp_re {
    re2::RE2 *re;
    std::string pattern;
    long refs; // guarded by cache_mu
};

// Identical patterns share one compiled regex (100,000 hosts naming one HTTPRouteGroup compile
// it once, and a reload reuses what the table before it compiled). fp_re_free may run on a worker
// thread (the last connection of an old table), hence the mutex; matching takes no lock.
static std::mutex cache_mu;
static std::unordered_map<std::string, fp_re *> *cache;

// Writes "msg" into err[0..errlen) (cut, NUL-terminated).
static void say(char *err, size_t errlen, const char *msg)
{
    if (errlen)
        snprintf(err, errlen, "%s", msg);
}

// The deepest group nesting of pattern[0..len) (escapes and bracket classes skipped; an upper
// bound is enough: it only guards a cap), and in *big whether a counted repetition names a count
// over 1000 ("a{4294967296}": RE2 would read an over-long count as literal text, which is not what
// its author meant).
static int group_depth(const char *p, size_t len, int *big)
{
    int depth = 0, deepest = 0;
    *big = 0;
    int in_class = 0;
    for (size_t i = 0; i < len; i++) {
        char c = p[i];
        if (c == '\\') {
            i++;
            continue;
        }
        if (in_class) {
            if (c == '[' && i + 1 < len && p[i + 1] == ':') {
                const void *end = memchr(p + i + 2, ']', len - i - 2);
                if (end)
                    i = (size_t)((const char *)end - p);
            } else if (c == ']') {
                in_class = 0;
            }
            continue;
        }
        if (c == '[') {
            in_class = 1;
            if (i + 1 < len && p[i + 1] == '^')
                i++;
            if (i + 1 < len && p[i + 1] == ']')
                i++;  // a ']' first in a class is a literal
        } else if (c == '(') {
            if (++depth > deepest)
                deepest = depth;
        } else if (c == ')' && depth > 0) {
            depth--;
        } else if (c == '{') {
            // {n}, {n,} or {n,m}: each number at most 1000 (RE2's own repetition cap)
            size_t j = i + 1, digits = 0;
            int over = 0;
            unsigned long v = 0;
            for (; j < len && ((p[j] >= '0' && p[j] <= '9') || p[j] == ','); j++) {
                if (p[j] == ',') {
                    v = 0;
                    continue;
                }
                digits++;
                v = v * 10 + (unsigned long)(p[j] - '0');
                if (v > 1000)
                    over = 1;
                if (v > 100000)
                    v = 100000;
            }
            if (j < len && p[j] == '}' && digits && over)
                *big = 1;
        }
    }
    return deepest;
}

extern "C" int fp_re_compile(const char *pattern, size_t len, fp_re **out, char *err, size_t errlen)
{
    *out = nullptr;
    if (len > FP_RE_MAX_LEN) {
        char m[96];
        snprintf(m, sizeof(m), "pattern longer than %d bytes", FP_RE_MAX_LEN);
        say(err, errlen, m);
        return -E2BIG;
    }
    if (memchr(pattern, '\0', len)) {
        say(err, errlen, "NUL byte in pattern");
        return -EINVAL;
    }
    int big;
    if (group_depth(pattern, len, &big) > FP_RE_MAX_DEPTH) {
        char m[96];
        snprintf(m, sizeof(m), "groups nested deeper than %d", FP_RE_MAX_DEPTH);
        say(err, errlen, m);
        return -E2BIG;
    }
    if (big) {
        say(err, errlen, "repetition count over 1000");
        return -E2BIG;
    }
    try {
        std::string key(pattern, len);
        {
            std::lock_guard<std::mutex> g(cache_mu);
            if (cache) {
                auto it = cache->find(key);
                if (it != cache->end()) {
                    it->second->refs++;
                    *out = it->second;
                    return 0;
                }
            }
        }
        re2::RE2::Options o;
        o.set_log_errors(false);
        o.set_never_capture(true);
        o.set_max_mem(FP_RE_MAX_MEM);
        re2::RE2 *re = new re2::RE2(re2::StringPiece(pattern, len), o);
        if (!re->ok()) {
            int rc = re->error_code() == re2::RE2::ErrorPatternTooLarge ? -E2BIG : -EINVAL;
            std::string m = re->error();
            if (rc == -E2BIG)
                m = "pattern too large (compiled program over the memory cap)";
            say(err, errlen, m.c_str());
            delete re;
            return rc;
        }
        if (re->ProgramSize() > FP_RE_MAX_PROG) {
            char m[128];
            snprintf(m, sizeof(m), "pattern too large (program of %d instructions, cap %d)",
                     re->ProgramSize(), FP_RE_MAX_PROG);
            say(err, errlen, m);
            delete re;
            return -E2BIG;
        }
        fp_re *r = new fp_re;
        r->re = re;
        r->pattern = key;
        r->refs = 1;
        std::lock_guard<std::mutex> g(cache_mu);
        if (!cache)
            cache = new std::unordered_map<std::string, fp_re *>();
        auto ins = cache->emplace(key, r);
        if (!ins.second) { // compiled meanwhile by another thread: use that one
            ins.first->second->refs++;
            *out = ins.first->second;
            delete r->re;
            delete r;
            return 0;
        }
        *out = r;
        return 0;
    } catch (const std::bad_alloc &) {
        say(err, errlen, "out of memory");
        return -ENOMEM;
    } catch (...) {
        say(err, errlen, "internal error");
        return -EINVAL;
    }
}

extern "C" int fp_re_search(const fp_re *re, const uint8_t *s, size_t len)
{
    re2::StringPiece text(reinterpret_cast<const char *>(s), len);
    return re->re->Match(text, 0, len, re2::RE2::UNANCHORED, nullptr, 0) ? 1 : 0;
}

extern "C" void fp_re_free(fp_re *re)
{
    if (!re)
        return;
    {
        std::lock_guard<std::mutex> g(cache_mu);
        if (--re->refs > 0)
            return;
        cache->erase(re->pattern);
    }
    delete re->re;
    delete re;
}
