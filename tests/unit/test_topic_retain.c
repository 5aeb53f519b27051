/* test_topic_retain: the retained-value trie (cy_retain_*): set, replace,
 * delete and prune, matching with wildcards and the '$' rule, the names
 * handed to the callback, deep names, allocation failures, a seeded
 * random cross-check against cy_topic_matches, and the accounting of what
 * values cost (in all and per owner) with the limits cy_retain_admit holds
 * them to. The (filter, topic) table
 * shared with the subscription tree is run in test_topic.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "router/topic.h"

#define S(lit) lit, sizeof(lit) - 1
#define VAL(i) ((void *)(uintptr_t)(i))

/* Names seen by a match, sorted, joined by ',' for one string compare. */
typedef struct seen {
    char names[64][64];
    void *values[64];
    size_t n;
} seen;

static void collect(void *ctx, const char *name, size_t len, void *value)
{
    seen *s = ctx;
    assert_true(s->n < 64);
    assert_true(len < 64);
    memcpy(s->names[s->n], name, len);
    s->names[s->n][len] = '\0';
    s->values[s->n] = value;
    s->n++;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(a, b);
}

static const char *match_list(cy_retain *r, const char *filter)
{
    static char out[4096];
    seen s = {0};
    cy_retain_match(r, filter, strlen(filter), collect, &s);
    qsort(s.names, s.n, sizeof s.names[0], cmp_name);
    out[0] = '\0';
    for (size_t i = 0; i < s.n; i++) {
        if (i) strcat(out, ",");
        strcat(out, s.names[i]);
    }
    return out;
}

static void count_cb(void *ctx, const char *name, size_t len, void *value)
{
    (*(size_t *)ctx)++;
}

static size_t match_count(cy_retain *r, const char *filter, size_t len)
{
    size_t n = 0;
    cy_retain_match(r, filter, len, count_cb, &n);
    return n;
}

static void test_cy_retain_new_enomem(void **state)
{
    cy_retain *r = NULL;
    cy_alloc_fail_after(0);
    assert_int_equal(cy_retain_new(&r), CY_ENOMEM);
    cy_alloc_fail_after(-1);
    cy_retain_free(NULL, NULL);
    assert_int_equal(cy_retain_count(NULL), 0);
}

static void test_cy_retain_set_replace_delete(void **state)
{
    cy_retain *r;
    void *old = VAL(77);
    assert_int_equal(cy_retain_new(&r), 0);
    assert_int_equal(cy_retain_set(r, S("a/b"), VAL(1), &old), 0);
    assert_null(old);
    assert_int_equal(cy_retain_count(r), 1);
    assert_ptr_equal(cy_retain_get(r, S("a/b")), VAL(1));
    assert_null(cy_retain_get(r, S("a")));
    assert_null(cy_retain_get(r, S("a/b/c")));
    assert_null(cy_retain_get(r, S("a/+")));

    assert_int_equal(cy_retain_set(r, S("a/b"), VAL(2), &old), 0);
    assert_ptr_equal(old, VAL(1));
    assert_int_equal(cy_retain_count(r), 1);
    assert_ptr_equal(cy_retain_get(r, S("a/b")), VAL(2));

    /* An inner node gets a value of its own. */
    assert_int_equal(cy_retain_set(r, S("a"), VAL(3), &old), 0);
    assert_null(old);
    assert_int_equal(cy_retain_count(r), 2);

    assert_int_equal(cy_retain_set(r, S("a/b"), NULL, &old), 0);
    assert_ptr_equal(old, VAL(2));
    assert_int_equal(cy_retain_count(r), 1);
    assert_null(cy_retain_get(r, S("a/b")));
    assert_ptr_equal(cy_retain_get(r, S("a")), VAL(3));
    /* Deleting what is not there: no error, nothing returned. */
    assert_int_equal(cy_retain_set(r, S("a/b"), NULL, &old), 0);
    assert_null(old);
    assert_int_equal(cy_retain_set(r, S("zz/top"), NULL, NULL), 0);
    assert_int_equal(cy_retain_set(r, S("a"), NULL, NULL), 0);
    assert_int_equal(cy_retain_count(r), 0);
    assert_int_equal(match_count(r, S("#")), 0);
    cy_retain_free(r, NULL);
}

static void test_cy_retain_set_invalid(void **state)
{
    static const char *bad[] = {"", "+", "#", "a/+", "a/#", "a+b"};
    cy_retain *r;
    assert_int_equal(cy_retain_new(&r), 0);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        void *old = VAL(5);
        assert_int_equal(cy_retain_set(r, bad[i], strlen(bad[i]), VAL(1), &old), CY_EINVAL);
        assert_null(old);
    }
    assert_int_equal(cy_retain_set(NULL, S("a"), VAL(1), NULL), CY_EINVAL);
    assert_null(cy_retain_get(r, "", 0));
    assert_null(cy_retain_get(NULL, S("a")));
    assert_int_equal(cy_retain_count(r), 0);
    cy_retain_free(r, NULL);
}

static void test_cy_retain_match_wildcards(void **state)
{
    static const char *names[] = {"a",   "a/b",    "a/c",  "a/b/c", "a/$x", "/",
                                  "//x", "$SYS/x", "$SYS", "b",     "a/",   "c/d/e"};
    cy_retain *r;
    assert_int_equal(cy_retain_new(&r), 0);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        assert_int_equal(cy_retain_set(r, names[i], strlen(names[i]), VAL(i + 1), NULL), 0);
    assert_int_equal(cy_retain_count(r), sizeof names / sizeof names[0]);

    assert_string_equal(match_list(r, "a/b"), "a/b");
    assert_string_equal(match_list(r, "a/#"), "a,a/,a/$x,a/b,a/b/c,a/c");
    assert_string_equal(match_list(r, "a/+"), "a/,a/$x,a/b,a/c");
    assert_string_equal(match_list(r, "a/+/c"), "a/b/c");
    assert_string_equal(match_list(r, "+"), "a,b");
    assert_string_equal(match_list(r, "+/+"), "/,a/,a/$x,a/b,a/c");
    assert_string_equal(match_list(r, "+/#"), "/,//x,a,a/,a/$x,a/b,a/b/c,a/c,b,c/d/e");
    assert_string_equal(match_list(r, "#"), "/,//x,a,a/,a/$x,a/b,a/b/c,a/c,b,c/d/e");
    assert_string_equal(match_list(r, "$SYS/#"), "$SYS,$SYS/x");
    assert_string_equal(match_list(r, "$SYS/+"), "$SYS/x");
    assert_string_equal(match_list(r, "$SYS"), "$SYS");
    assert_string_equal(match_list(r, "+/x"), "");
    assert_string_equal(match_list(r, "/+"), "/");
    assert_string_equal(match_list(r, "/#"), "/,//x");
    assert_string_equal(match_list(r, "//+"), "//x");
    assert_string_equal(match_list(r, "+/+/+"), "//x,a/b/c,c/d/e");
    assert_string_equal(match_list(r, "c/+/e/#"), "c/d/e");
    assert_string_equal(match_list(r, "c/d/e/f"), "");
    assert_string_equal(match_list(r, "nothing/#"), "");
    /* Shared and invalid filters match nothing. */
    assert_string_equal(match_list(r, "$share/g/#"), "");
    assert_string_equal(match_list(r, "a/#/b"), "");

    /* Values come with their names. */
    seen s = {0};
    cy_retain_match(r, S("a/b/c"), collect, &s);
    assert_int_equal(s.n, 1);
    assert_ptr_equal(s.values[0], VAL(4));
    cy_retain_free(r, NULL);
}

/* Deleting prunes: re-adding a deleted two-level name must allocate its
 * nodes again, so failing the second allocation fails the set. */
static void test_cy_retain_delete_prunes(void **state)
{
    cy_retain *r;
    assert_int_equal(cy_retain_new(&r), 0);
    assert_int_equal(cy_retain_set(r, S("p/q/r"), VAL(1), NULL), 0);
    assert_int_equal(cy_retain_set(r, S("p/q"), VAL(2), NULL), 0);
    assert_int_equal(cy_retain_set(r, S("p/q/r"), NULL, NULL), 0);
    assert_string_equal(match_list(r, "p/#"), "p/q");
    assert_int_equal(cy_retain_set(r, S("p/q"), NULL, NULL), 0);
    assert_int_equal(cy_retain_count(r), 0);
    cy_alloc_fail_after(1);
    assert_int_equal(cy_retain_set(r, S("p/q"), VAL(3), NULL), CY_ENOMEM);
    cy_alloc_fail_after(-1);
    assert_null(cy_retain_get(r, S("p/q")));
    assert_int_equal(cy_retain_count(r), 0);
    cy_retain_free(r, NULL);
}

static int released;
static void release(void *v)
{
    released++;
}

static void test_cy_retain_free_releases(void **state)
{
    cy_retain *r;
    char buf[32];
    assert_int_equal(cy_retain_new(&r), 0);
    for (int i = 0; i < 1000; i++) {
        int n = snprintf(buf, sizeof buf, "d/%d/e/%d", i % 37, i);
        assert_int_equal(cy_retain_set(r, buf, (size_t)n, VAL(i + 1), NULL), 0);
    }
    assert_int_equal(cy_retain_set(r, S("d"), VAL(5000), NULL), 0);
    assert_int_equal(cy_retain_count(r), 1001);
    assert_int_equal(match_count(r, S("d/+/e/+")), 1000);
    assert_int_equal(match_count(r, S("d/#")), 1001);
    assert_int_equal(match_count(r, S("d/3/#")), 27);
    released = 0;
    cy_retain_free(r, release);
    assert_int_equal(released, 1001);
}

/* A 65535-byte name of 32768 levels: set, get, match "#" and '+'s, free. */
static void test_cy_retain_deep_name(void **state)
{
    const size_t len = 65535;
    char *name = malloc(len), *plus = malloc(len);
    assert_non_null(name);
    assert_non_null(plus);
    for (size_t i = 0; i < len; i++) {
        name[i] = (i % 2) ? '/' : (char)('a' + (i / 2) % 26);
        plus[i] = (i % 2) ? '/' : '+';
    }
    cy_retain *r;
    assert_int_equal(cy_retain_new(&r), 0);
    assert_int_equal(cy_retain_set(r, name, len, VAL(1), NULL), 0);
    assert_int_equal(cy_retain_set(r, S("short"), VAL(2), NULL), 0);
    assert_ptr_equal(cy_retain_get(r, name, len), VAL(1));

    assert_int_equal(match_count(r, S("#")), 2);
    assert_int_equal(match_count(r, plus, len), 1);
    assert_int_equal(match_count(r, plus, len - 2), 0);
    plus[len - 1] = '#';
    assert_int_equal(match_count(r, plus, len), 1);
    assert_int_equal(cy_retain_set(r, name, len, NULL, NULL), 0);
    assert_int_equal(cy_retain_count(r), 1);
    assert_int_equal(cy_retain_set(r, name, len, VAL(3), NULL), 0);
    cy_retain_free(r, NULL);
    free(name);
    free(plus);
}

/* The name handed to the callback for a deep name is the exact bytes. */
typedef struct exact {
    const char *want;
    size_t len;
    int calls;
} exact;

static void exact_cb(void *ctx, const char *name, size_t len, void *value)
{
    exact *e = ctx;
    e->calls++;
    assert_int_equal(len, e->len);
    assert_memory_equal(name, e->want, len);
}

static void test_cy_retain_match_names_exact(void **state)
{
    static const char *names[] = {"//", "/a//", "x", "$SYS/broker/uptime", "a/b/c/d/e/f/g/h"};
    cy_retain *r;
    assert_int_equal(cy_retain_new(&r), 0);
    /* Long first so the name buffer is at its largest; short ones after. */
    char *big = malloc(40000);
    assert_non_null(big);
    for (size_t i = 0; i < 40000; i++)
        big[i] = (i % 7 == 6) ? '/' : 'z';
    assert_int_equal(cy_retain_set(r, big, 40000, VAL(9), NULL), 0);
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        exact e = {names[i], strlen(names[i]), 0};
        assert_int_equal(cy_retain_set(r, names[i], e.len, VAL(i + 1), NULL), 0);
        cy_retain_match(r, names[i], e.len, exact_cb, &e);
        assert_int_equal(e.calls, 1);
    }
    exact e = {big, 40000, 0};
    cy_retain_match(r, big, 40000, exact_cb, &e);
    assert_int_equal(e.calls, 1);
    free(big);
    cy_retain_free(r, NULL);
}

/* Fail every allocation of a set in turn: CY_ENOMEM, and nothing changed. */
static void test_cy_retain_set_alloc_fail_walk(void **state)
{
    static const char *probes[] = {"#", "a/#", "a/b/+/d", "$SYS/#", "+/+"};
    static const char *names[] = {"a/b/c/d/e/f", "a/b/x/d", "a/b/c/z", "$SYS/z/y", "q/r"};
    cy_retain *r;
    assert_int_equal(cy_retain_new(&r), 0);
    assert_int_equal(cy_retain_set(r, S("a/b"), VAL(100), NULL), 0);
    /* 4 children under "k", so the walk also meets a failed table growth. */
    for (int i = 0; i < 4; i++) {
        char f[8];
        int n = snprintf(f, sizeof f, "k/%d", i);
        assert_int_equal(cy_retain_set(r, f, (size_t)n, VAL(200 + i), NULL), 0);
    }
    for (size_t k = 0; k < sizeof names / sizeof names[0] + 1; k++) {
        const char *nm = k < 5 ? names[k] : "k/new";
        size_t before[5], count = cy_retain_count(r);
        for (size_t p = 0; p < 5; p++)
            before[p] = match_count(r, probes[p], strlen(probes[p]));
        int rc;
        long n = 0;
        do {
            void *old = VAL(1);
            cy_alloc_fail_after(n++);
            rc = cy_retain_set(r, nm, strlen(nm), VAL(k + 1), &old);
            cy_alloc_fail_after(-1);
            if (rc != 0) {
                assert_int_equal(rc, CY_ENOMEM);
                assert_null(old);
                assert_null(cy_retain_get(r, nm, strlen(nm)));
                assert_int_equal(cy_retain_count(r), count);
                for (size_t p = 0; p < 5; p++)
                    assert_int_equal(match_count(r, probes[p], strlen(probes[p])), before[p]);
            }
            assert_true(n < 1000);
        } while (rc != 0);
        assert_true(n > 1);
        assert_int_equal(cy_retain_count(r), count + 1);
        assert_ptr_equal(cy_retain_get(r, nm, strlen(nm)), VAL(k + 1));
    }
    assert_string_equal(match_list(r, "a/b/+/d"), "a/b/x/d");
    assert_string_equal(match_list(r, "a/b/c/#"), "a/b/c/d/e/f,a/b/c/z");
    assert_string_equal(match_list(r, "$SYS/#"), "$SYS/z/y");
    assert_int_equal(match_count(r, S("k/+")), 5);
    cy_retain_free(r, NULL);
}

/* ---- seeded random cross-check against cy_topic_matches ---- */

/* One level in cut_odds becomes a final '#' in a derived filter: low for
 * shallow trees, high for deep ones so most filters keep their depth. */
static uint32_t cut_odds = 10;
static uint32_t rng_state;
static uint32_t rnd(uint32_t n)
{
    rng_state = rng_state * 1103515245u + 12345u;
    return (rng_state >> 8) % n;
}

static size_t random_name(char *out, size_t maxlv)
{
    static const char *lv[] = {"a", "b", "", "$s", "c"};
    size_t nlv = 1 + rnd((uint32_t)maxlv), n = 0;
    for (size_t i = 0; i < nlv; i++) {
        if (i) out[n++] = '/';
        const char *l = lv[rnd(i == 0 ? 5 : 3)];
        memcpy(out + n, l, strlen(l));
        n += strlen(l);
    }
    if (n == 0) out[n++] = 'a'; /* a single empty level is not a valid name */
    return n;
}

static size_t random_filter(char *out, size_t maxlv)
{
    static const char *lv[] = {"a", "b", "", "$s", "+", "+"};
    size_t nlv = 1 + rnd((uint32_t)maxlv), n = 0;
    for (size_t i = 0; i < nlv; i++) {
        if (i) out[n++] = '/';
        if (rnd(12) == 0) {
            out[n++] = '#';
            return n;
        }
        const char *l = lv[i == 0 ? rnd(6) : (rnd(2) ? 4 : rnd(3))];
        memcpy(out + n, l, strlen(l));
        n += strlen(l);
    }
    if (n == 0) out[n++] = 'a'; /* a single empty level is not a valid name */
    return n;
}

typedef struct rname {
    char s[512];
    size_t len;  /* 0: deleted or a duplicate */
    size_t orig; /* the length as generated */
} rname;

/* A filter from name n: each level kept, made '+', or the rest cut by '#'. */
static size_t filter_from(char *out, const rname *n)
{
    size_t o = 0, i = 0, len = n->orig;
    const char *s = n->s;
    for (;;) {
        const char *slash = memchr(s + i, '/', len - i);
        size_t e = slash ? (size_t)(slash - s) : len;
        uint32_t r = 1 + rnd(9);
        if (rnd(cut_odds) == 0) {
            out[o++] = '#';
            return o;
        }
        if (r <= 2) {
            out[o++] = '+';
        } else {
            memcpy(out + o, s + i, e - i);
            o += e - i;
        }
        if (e == len) return o;
        out[o++] = '/';
        i = e + 1;
    }
}

static void random_cross_check(size_t maxlv, size_t nnames, size_t nfilters)
{
    rname *ns = calloc(nnames, sizeof *ns);
    assert_non_null(ns);
    cy_retain *r;
    assert_int_equal(cy_retain_new(&r), 0);
    for (size_t i = 0; i < nnames; i++) {
        ns[i].len = ns[i].orig = random_name(ns[i].s, maxlv);
        assert_int_equal(cy_retain_set(r, ns[i].s, ns[i].len, VAL(1), NULL), 0);
    }
    /* Delete every third (duplicates were replaced, so recount after). */
    for (size_t i = 0; i < nnames; i += 3)
        assert_int_equal(cy_retain_set(r, ns[i].s, ns[i].len, NULL, NULL), 0);
    size_t live = 0;
    for (size_t i = 0; i < nnames; i++) {
        bool dup = false;
        for (size_t j = 0; j < i && !dup; j++)
            dup = ns[j].len == ns[i].len && memcmp(ns[j].s, ns[i].s, ns[i].len) == 0;
        if (dup) {
            ns[i].len = 0; /* counted at its first occurrence */
            continue;
        }
        if (cy_retain_get(r, ns[i].s, ns[i].len)) {
            live++;
        } else {
            ns[i].len = 0;
        }
    }
    assert_int_equal(cy_retain_count(r), live);
    char f[512];
    size_t total = 0;
    for (size_t k = 0; k < nfilters; k++) {
        /* Half the filters are a stored name with some levels made '+' or
         * cut by '#', so deep names match too. */
        size_t fl = rnd(2) ? random_filter(f, maxlv) : filter_from(f, &ns[rnd((uint32_t)nnames)]);
        assert_true(cy_topic_valid_filter(f, fl));
        size_t want = 0;
        for (size_t i = 0; i < nnames; i++)
            if (ns[i].len) want += cy_topic_matches(f, fl, ns[i].s, ns[i].len);
        size_t got = match_count(r, f, fl);
        if (got != want) fail_msg("filter \"%.*s\": %zu values, want %zu", (int)fl, f, got, want);
        total += got;
    }
    printf("    %zu filters, %zu values\n", nfilters, total);
    assert_true(total > nfilters); /* the check is not vacuous */
    cy_retain_free(r, NULL);
    free(ns);
}

static void test_cy_retain_match_random_shallow(void **state)
{
    rng_state = 3;
    cut_odds = 10;
    random_cross_check(5, 600, 3000);
}

static void test_cy_retain_match_random_deep(void **state)
{
    rng_state = 4;
    cut_odds = 1000;
    random_cross_check(90, 300, 1500);
}

/* ---- accounting and limits ---- */

#define USE(u, c, b)                                                                               \
    do {                                                                                           \
        cy_retain_usage u_ = (u);                                                                  \
        assert_int_equal(u_.count, (c));                                                           \
        assert_int_equal(u_.bytes, (b));                                                           \
    } while (0)

static void test_cy_retain_set_charged_totals(void **state)
{
    cy_retain *r;
    void *old;
    assert_int_equal(cy_retain_new(&r), 0);
    assert_int_equal(cy_retain_set_charged(r, S("a"), VAL(1), 100, S("X"), NULL), 0);
    assert_int_equal(cy_retain_set_charged(r, S("b"), VAL(2), 50, S("X"), NULL), 0);
    assert_int_equal(cy_retain_set_charged(r, S("c"), VAL(3), 30, S("Y"), NULL), 0);
    /* a replica: charged to the tree, to nobody */
    assert_int_equal(cy_retain_set_charged(r, S("d"), VAL(4), 20, NULL, 0, NULL), 0);
    /* $SYS-like: held, not charged */
    assert_int_equal(cy_retain_set(r, S("$SYS/x"), VAL(5), NULL), 0);
    assert_int_equal(cy_retain_count(r), 5);
    USE(cy_retain_usage_total(r), 4, 200);
    USE(cy_retain_usage_of(r, S("X")), 2, 150);
    USE(cy_retain_usage_of(r, S("Y")), 1, 30);
    USE(cy_retain_usage_of(r, S("Z")), 0, 0);
    USE(cy_retain_usage_of(r, NULL, 0), 0, 0);

    /* Y replaces X's "a": X loses it, Y gains it, the total moves by the difference. */
    assert_int_equal(cy_retain_set_charged(r, S("a"), VAL(6), 10, S("Y"), &old), 0);
    assert_ptr_equal(old, VAL(1));
    USE(cy_retain_usage_total(r), 4, 110);
    USE(cy_retain_usage_of(r, S("X")), 1, 50);
    USE(cy_retain_usage_of(r, S("Y")), 2, 40);
    /* X replaces its own "b": one value still, new size. */
    assert_int_equal(cy_retain_set_charged(r, S("b"), VAL(7), 70, S("X"), &old), 0);
    assert_ptr_equal(old, VAL(2));
    USE(cy_retain_usage_of(r, S("X")), 1, 70);
    /* X clears "b": its record goes. */
    assert_int_equal(cy_retain_set_charged(r, S("b"), NULL, 0, S("X"), &old), 0);
    assert_ptr_equal(old, VAL(7));
    USE(cy_retain_usage_of(r, S("X")), 0, 0);
    USE(cy_retain_usage_total(r), 3, 60);
    /* A replica replaces Y's "c" (owner unknown): Y is uncharged. */
    assert_int_equal(cy_retain_set_charged(r, S("c"), VAL(8), 5, NULL, 0, NULL), 0);
    USE(cy_retain_usage_of(r, S("Y")), 1, 10);
    USE(cy_retain_usage_total(r), 3, 35);
    /* An uncharged set over a charged value uncharges it. */
    assert_int_equal(cy_retain_set(r, S("a"), VAL(9), NULL), 0);
    USE(cy_retain_usage_of(r, S("Y")), 0, 0);
    USE(cy_retain_usage_total(r), 2, 25);
    assert_int_equal(cy_retain_set_charged(r, S("a/+"), VAL(1), 1, S("X"), NULL), CY_EINVAL);
    assert_int_equal(cy_retain_set_charged(r, S("q"), VAL(1), 1, NULL, 3, NULL), CY_EINVAL);
    /* Freed with owners still recorded: ASan would report a leak. */
    assert_int_equal(cy_retain_set_charged(r, S("e"), VAL(1), 1, S("W"), NULL), 0);
    cy_retain_free(r, NULL);
}

static void test_cy_retain_admit_limits(void **state)
{
    cy_retain *r;
    int which;
    cy_retain_limits l = {.count = 4, .bytes = 1000, .owner_count = 2, .owner_bytes = 300};
    assert_int_equal(cy_retain_new(&r), 0);
    /* per owner count */
    assert_int_equal(cy_retain_admit(r, &l, S("x/1"), 100, S("X"), &which), 0);
    assert_int_equal(which, 0);
    assert_int_equal(cy_retain_set_charged(r, S("x/1"), VAL(1), 100, S("X"), NULL), 0);
    assert_int_equal(cy_retain_set_charged(r, S("x/2"), VAL(1), 100, S("X"), NULL), 0);
    assert_int_equal(cy_retain_admit(r, &l, S("x/3"), 1, S("X"), &which), CY_EQUOTA);
    assert_int_equal(which, CY_RETAIN_OVER_OWNER_COUNT);
    /* replacing its own: only the difference counts, within owner_bytes */
    assert_int_equal(cy_retain_admit(r, &l, S("x/1"), 200, S("X"), &which), 0);
    assert_int_equal(cy_retain_admit(r, &l, S("x/1"), 201, S("X"), &which), CY_EQUOTA);
    assert_int_equal(which, CY_RETAIN_OVER_OWNER_BYTES);
    /* clearing is always admitted */
    assert_int_equal(cy_retain_admit(r, &l, S("x/3"), 0, S("X"), &which), 0);
    /* another owner takes X's topic: a new value for Y */
    assert_int_equal(cy_retain_admit(r, &l, S("x/1"), 300, S("Y"), &which), 0);
    assert_int_equal(cy_retain_admit(r, &l, S("x/1"), 301, S("Y"), &which), CY_EQUOTA);
    assert_int_equal(which, CY_RETAIN_OVER_OWNER_BYTES);
    /* node-wide count: 4 values */
    assert_int_equal(cy_retain_set_charged(r, S("y/1"), VAL(1), 100, S("Y"), NULL), 0);
    assert_int_equal(cy_retain_set_charged(r, S("r/1"), VAL(1), 100, NULL, 0, NULL), 0);
    assert_int_equal(cy_retain_admit(r, &l, S("z/1"), 1, S("Z"), &which), CY_EQUOTA);
    assert_int_equal(which, CY_RETAIN_OVER_COUNT);
    /* ... but replacing an existing one is not a new value */
    assert_int_equal(cy_retain_admit(r, &l, S("r/1"), 250, S("Z"), &which), 0);
    /* node-wide bytes: 400 held, 1000 allowed */
    assert_int_equal(cy_retain_set(r, S("r/1"), NULL, NULL), 0);
    assert_int_equal(cy_retain_set_charged(r, S("r/1"), VAL(1), 700, NULL, 0, NULL), 0);
    USE(cy_retain_usage_total(r), 4, 1000);
    assert_int_equal(cy_retain_admit(r, &l, S("x/2"), 101, S("X"), &which), CY_EQUOTA);
    assert_int_equal(which, CY_RETAIN_OVER_BYTES);
    /* shrinking, and growing back to the same size, are fine at the limit */
    assert_int_equal(cy_retain_admit(r, &l, S("x/2"), 100, S("X"), &which), 0);
    assert_int_equal(cy_retain_admit(r, &l, S("x/2"), 1, S("X"), &which), 0);
    /* limits lowered below what is held: shrinking still admitted, growing not */
    cy_retain_limits low = {.count = 1, .bytes = 10, .owner_count = 1, .owner_bytes = 10};
    assert_int_equal(cy_retain_admit(r, &low, S("x/1"), 50, S("X"), &which), 0);
    assert_int_equal(cy_retain_admit(r, &low, S("x/1"), 101, S("X"), &which), CY_EQUOTA);
    /* an owner without an id is held to the node-wide limits only */
    cy_retain_limits own = {.owner_count = 1, .owner_bytes = 1};
    assert_int_equal(cy_retain_admit(r, &own, S("n/1"), 5000, NULL, 0, &which), 0);
    /* no limits at all */
    cy_retain_limits none = {0};
    assert_int_equal(cy_retain_admit(r, &none, S("n/1"), 1u << 30, S("X"), NULL), 0);
    cy_retain_free(r, NULL);
}

static void test_cy_retain_set_charged_alloc_fail(void **state)
{
    cy_retain *r;
    assert_int_equal(cy_retain_new(&r), 0);
    assert_int_equal(cy_retain_set_charged(r, S("a/b"), VAL(1), 10, S("X"), NULL), 0);
    for (const char *owner = "X"; owner; owner = owner[0] == 'X' ? "NEW" : NULL) {
        int rc;
        long n = 0;
        do {
            cy_alloc_fail_after(n++);
            rc = cy_retain_set_charged(r, S("p/q/r"), VAL(2), 7, owner, strlen(owner), NULL);
            cy_alloc_fail_after(-1);
            if (rc) {
                assert_int_equal(rc, CY_ENOMEM);
                assert_null(cy_retain_get(r, S("p/q/r")));
                USE(cy_retain_usage_total(r), 1, 10);
                USE(cy_retain_usage_of(r, S("X")), 1, 10);
                USE(cy_retain_usage_of(r, S("NEW")), 0, 0);
            }
            assert_true(n < 1000);
        } while (rc);
        assert_int_equal(cy_retain_set(r, S("p/q/r"), NULL, NULL), 0);
    }
    USE(cy_retain_usage_total(r), 1, 10);
    cy_retain_free(r, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cy_retain_new_enomem),
        cmocka_unit_test(test_cy_retain_set_replace_delete),
        cmocka_unit_test(test_cy_retain_set_invalid),
        cmocka_unit_test(test_cy_retain_match_wildcards),
        cmocka_unit_test(test_cy_retain_delete_prunes),
        cmocka_unit_test(test_cy_retain_free_releases),
        cmocka_unit_test(test_cy_retain_deep_name),
        cmocka_unit_test(test_cy_retain_match_names_exact),
        cmocka_unit_test(test_cy_retain_set_alloc_fail_walk),
        cmocka_unit_test(test_cy_retain_match_random_shallow),
        cmocka_unit_test(test_cy_retain_match_random_deep),
        cmocka_unit_test(test_cy_retain_set_charged_totals),
        cmocka_unit_test(test_cy_retain_admit_limits),
        cmocka_unit_test(test_cy_retain_set_charged_alloc_fail),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
