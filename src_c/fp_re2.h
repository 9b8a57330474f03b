/* The one regex engine of fastproxy: RE2 (linear time in the subject, no backtracking) behind a
 * small C API, for the route path and header regexes of http rules. Used by the decision table at
 * compile time (fastproxy validate, explain and run compile the same way) and by the workers.
 *
 * The dialect is RE2's (Perl-like: \d, [[:alpha:]], (?i), (?:...), (?P<name>...), \A, \z, \x61;
 * no backreferences, no lookaround). Searches are unanchored, as EGRESS.md says ("searched").
 * Caps on what a pattern may cost, checked when compiling:
 *   - FP_RE_MAX_LEN bytes of pattern text;
 *   - FP_RE_MAX_DEPTH nested groups;
 *   - RE2's own repetition cap (a{n} with n <= 1000), and FP_RE_MAX_PROG instructions of compiled
 *     program (what nested counted repetitions multiply out to);
 *   - FP_RE_MAX_MEM bytes for the compiled program and its DFA cache (the DFA falls back to the
 *     NFA, still linear, when its cache is full).
 */
#ifndef FP_RE2_H
#define FP_RE2_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FP_RE_MAX_LEN 4096
#define FP_RE_MAX_DEPTH 64
#define FP_RE_MAX_PROG 20000
#define FP_RE_MAX_MEM (2 << 20)

typedef struct fp_re fp_re;

/* Contract: compiles pattern[0..len) (no NUL needed). On success stores the regex in *out and
 * returns 0; identical patterns share one compiled regex (reference counted: each successful
 * call needs its own fp_re_free). Thread-safe. Otherwise returns -EINVAL (RE2 refuses the syntax), -E2BIG (over a cap) or -ENOMEM,
 * and writes a one-line reason (NUL-terminated, cut to errlen) into err when errlen > 0. */
int fp_re_compile(const char *pattern, size_t len, fp_re **out, char *err, size_t errlen);

/* Contract: 1 when `re` finds a match anywhere in s[0..len) (unanchored), else 0. Pure; safe to
 * call from any number of threads at once; linear in len. */
int fp_re_search(const fp_re *re, const uint8_t *s, size_t len);

/* Contract: drops the reference of one fp_re_compile; the last one frees the regex. Any thread
 * (takes a mutex). NULL is a no-op. */
void fp_re_free(fp_re *re);

#ifdef __cplusplus
}
#endif

#endif
