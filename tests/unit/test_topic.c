/* test_topic: topic name and filter validation, cy_topic_matches, and the
 * subscription tree (add, replace, remove, prune, overlapping and shared
 * subscriptions, wide and deep trees, allocation failures).
 *
 * The matching table is checked three ways: cy_topic_matches, the
 * subscription tree and the retained tree must all agree with it, and a
 * seeded random test checks the tree against cy_topic_matches on many more
 * filters, including ones deeper than the 64 levels the matcher caches.
 * Leaks are caught by LeakSanitizer (sanitized build) or valgrind.
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
#define OWNER(i) ((void *)(uintptr_t)(i))

/* ---- a collector for match callbacks ---- */

typedef struct hit {
    void *owner;
    uint8_t opts;
    uint32_t sub_id;
    bool shared;
} hit;

typedef struct hits {
    hit h[64];
    size_t n;     /* callbacks seen (h holds the first 64) */
    void *reject; /* owner the accept callback refuses, or NULL */
    bool reject_all;
} hits;

static void collect(void *ctx, void *owner, uint8_t opts, uint32_t sub_id, bool shared)
{
    hits *hs = ctx;
    if (hs->n < 64) hs->h[hs->n] = (hit){owner, opts, sub_id, shared};
    hs->n++;
}

static bool accept_cb(void *ctx, void *owner)
{
    hits *hs = ctx;
    return !hs->reject_all && owner != hs->reject;
}

static size_t match_count(cy_topic_tree *t, const char *name, size_t len)
{
    hits hs = {0};
    cy_topic_tree_match(t, name, len, collect, NULL, &hs);
    return hs.n;
}

static size_t owner_hits(const hits *hs, void *owner, bool shared)
{
    size_t k = 0;
    for (size_t i = 0; i < hs->n && i < 64; i++)
        if (hs->h[i].owner == owner && hs->h[i].shared == shared) k++;
    return k;
}

static void retain_count_cb(void *ctx, const char *name, size_t len, void *value)
{
    (void)name;
    (void)len;
    (void)value;
    (*(size_t *)ctx)++;
}

/* ---- validation ---- */

typedef struct vcase {
    const char *s;
    bool valid;
} vcase;

static void test_cy_topic_valid_name_table(void **state)
{
    static const vcase cases[] = {
        {"a", true},          {"/", true},    {"//", true},     {"a/b", true},   {"a//b", true},
        {"/a", true},         {"a/", true},   {"$SYS/x", true}, {" ", true},     {"a b/c", true},
        {"$share/g/a", true}, {"", false},    {"+", false},     {"#", false},    {"a/+", false},
        {"a/#", false},       {"a+b", false}, {"#a", false},    {"a/b#", false}, {"+/+", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bool got = cy_topic_valid_name(cases[i].s, strlen(cases[i].s));
        if (got != cases[i].valid) fail_msg("valid_name(\"%s\") = %d", cases[i].s, got);
    }
    assert_false(cy_topic_valid_name(NULL, 0));
}

static void test_cy_topic_valid_filter_table(void **state)
{
    static const vcase cases[] = {
        {"a", true},
        {"/", true},
        {"//", true},
        {"+", true},
        {"#", true},
        {"+/+", true},
        {"/+", true},
        {"+/", true},
        {"a/#", true},
        {"/#", true},
        {"+/#", true},
        {"a/+/b", true},
        {"a//b", true},
        {"$SYS/#", true},
        {"$SYS/+/x", true},
        {"$share", true}, /* a plain one-level filter */
        {"$sharex/g/f", true},
        {"a/$share/g", true},
        {"$share/g/#", true},
        {"$share/g/+", true},
        {"$share/g/a/b", true},
        {"$share/g//", true},
        {"$share/g/+/x/#", true},
        {"$share/group-1.x/a", true},
        {"", false},
        {"a/#/b", false},
        {"#/", false},
        {"#/a", false},
        {"a#", false},
        {"#a", false},
        {"a/b#", false},
        {"a/#b", false},
        {"##", false},
        {"a+", false},
        {"+a", false},
        {"a/+b", false},
        {"a/b+/c", false},
        {"++", false},
        {"+#", false},
        {"$share/", false},
        {"$share/g", false},
        {"$share//f", false},
        {"$share/g+/f", false},
        {"$share/g#/f", false},
        {"$share/+/f", false},
        {"$share/#/f", false},
        {"$share/g/", false},
        {"$share/g/a#", false},
        {"$share/g/#/a", false},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bool got = cy_topic_valid_filter(cases[i].s, strlen(cases[i].s));
        if (got != cases[i].valid) fail_msg("valid_filter(\"%s\") = %d", cases[i].s, got);
    }
    assert_false(cy_topic_valid_filter(NULL, 0));
}

static void test_cy_topic_valid_length_limits(void **state)
{
    char *s = malloc(65536);
    assert_non_null(s);
    memset(s, 'a', 65536);
    assert_true(cy_topic_valid_name(s, 65535));
    assert_false(cy_topic_valid_name(s, 65536));
    assert_true(cy_topic_valid_filter(s, 65535));
    assert_false(cy_topic_valid_filter(s, 65536));
    s[65534] = '#';
    s[65533] = '/';
    assert_true(cy_topic_valid_filter(s, 65535));
    assert_false(cy_topic_valid_name(s, 65535));
    free(s);
}

/* Event names of cyan's own (status events): events/cyan/... and
 * devices/<any id>/events/cyan/..., nothing else. */
static void test_cy_topic_reserved_event(void **state)
{
    (void)state;
    static const struct {
        const char *t;
        bool rsv;
    } cases[] = {
        {"events/cyan/status", true},
        {"events/cyan/", true},
        {"devices/0123456789abcdef01234567/events/cyan/status", true},
        {"devices/x/events/cyan/a/b", true},
        {"events/cyan", false}, /* a name "cyan": not under cyan/ */
        {"events/cyanide", false},
        {"events/x/cyan/status", false},
        {"devices/x/events/cyanx", false},
        {"devices/x/cyan/status", false},
        {"devices//events/cyan/status", true},
        {"Events/cyan/status", false},
        {"cyan/status", false},
        {"devices/x/events/", false},
        {"", false},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (cy_topic_reserved_event(cases[i].t, strlen(cases[i].t)) != cases[i].rsv)
            fail_msg("%s: expected %s", cases[i].t, cases[i].rsv ? "reserved" : "not reserved");
    assert_false(cy_topic_reserved_event(NULL, 0));
    /* Not NUL-terminated: only len counts. */
    assert_false(cy_topic_reserved_event("events/cyan/x", 11));
    assert_true(cy_topic_reserved_event("events/cyan/x", 12));
}

static void test_cy_topic_split_shared_cases(void **state)
{
    const char *g, *f;
    size_t gl, fl;
    assert_true(cy_topic_split_shared(S("$share/grp/a/b"), &g, &gl, &f, &fl));
    assert_int_equal(gl, 3);
    assert_memory_equal(g, "grp", 3);
    assert_int_equal(fl, 3);
    assert_memory_equal(f, "a/b", 3);

    assert_true(cy_topic_split_shared(S("$share/g/#"), &g, &gl, &f, &fl));
    assert_int_equal(fl, 1);
    assert_int_equal(f[0], '#');

    /* Not validating: an empty group or filter still splits. */
    assert_true(cy_topic_split_shared(S("$share//f"), &g, &gl, &f, &fl));
    assert_int_equal(gl, 0);
    assert_int_equal(fl, 1);
    assert_true(cy_topic_split_shared(S("$share/g/"), &g, &gl, &f, &fl));
    assert_int_equal(fl, 0);

    assert_false(cy_topic_split_shared(S("$share/g"), &g, &gl, &f, &fl));
    assert_false(cy_topic_split_shared(S("$share/"), &g, &gl, &f, &fl));
    assert_false(cy_topic_split_shared(S("$share"), &g, &gl, &f, &fl));
    assert_false(cy_topic_split_shared(S("$sharex/g/f"), &g, &gl, &f, &fl));
    assert_false(cy_topic_split_shared(S("a/$share/g/f"), &g, &gl, &f, &fl));
    assert_false(cy_topic_split_shared(S("#"), &g, &gl, &f, &fl));
}

/* ---- matching ---- */

typedef struct mcase {
    const char *filter;
    const char *topic;
    bool match;
} mcase;

static const mcase match_table[] = {
    {"a/b/c", "a/b/c", true},
    {"a/b/c", "a/b", false},
    {"a/b", "a/b/c", false},
    {"A/b", "a/b", false},
    {"a/b ", "a/b", false},
    {"a/b", "ab", false},
    {"a/+/c", "a/b/c", true},
    {"a/+/c", "a//c", true},
    {"a/+/c", "a/b/x/c", false},
    {"a/+/+", "a/b", false},
    {"a/+", "a/", true},
    {"a/+", "a", false},
    {"+", "a", true},
    {"+", "/", false},
    {"+", "/finance", false},
    {"+/+", "/", true},
    {"+/+", "/finance", true},
    {"/+", "/", true},
    {"/+", "/finance", true},
    {"+/", "/", true},
    {"+/b", "a/b", true},
    {"+/b", "/b", true},
    {"+/+/+", "a//", true},
    {"/", "/", true},
    {"//", "//", true},
    {"//", "/", false},
    {"/", "//", false},
    {"#", "a", true},
    {"#", "/", true},
    {"#", "a/b/c", true},
    {"a/#", "a", true},
    {"a/#", "a/", true},
    {"a/#", "a/b/c", true},
    {"a/#", "ab", false},
    {"a/#", "b/a", false},
    {"a/b/#", "a", false},
    {"a/b/#", "a/b", true},
    {"+/#", "a", true},
    {"+/#", "/", true},
    {"+/+/#", "a", false},
    {"+/+/#", "a/b", true},
    {"/#", "/a", true},
    {"/#", "/", true},
    {"/#", "a", false},
    {"sport/tennis/player1/#", "sport/tennis/player1", true},
    {"sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", true},
    {"sport/+", "sport", false},
    {"sport/+", "sport/", true},
    {"#", "$SYS/x", false},
    {"#", "$SYS", false},
    {"+", "$SYS", false},
    {"+/x", "$SYS/x", false},
    {"+/#", "$SYS/x", false},
    {"$SYS/#", "$SYS/x", true},
    {"$SYS/#", "$SYS", true},
    {"$SYS/+", "$SYS/x", true},
    {"$SYS/+/y", "$SYS/x/y", true},
    {"$SYS", "$SYS", true},
    {"$SYS/x", "$sys/x", false},
    {"a/$SYS", "a/$SYS", true},
    {"+/$SYS", "a/$SYS", true},
    {"a/+", "a/$x", true},
    {"a/#", "a/$x", true},
    {"$", "$", true},
    {"+", "$", false},
    {"/+", "/$x", true},
};

#define NMATCH (sizeof match_table / sizeof match_table[0])

static void test_cy_topic_matches_table(void **state)
{
    assert_true(NMATCH >= 40);
    for (size_t i = 0; i < NMATCH; i++) {
        const mcase *c = &match_table[i];
        assert_true(cy_topic_valid_filter(c->filter, strlen(c->filter)));
        assert_true(cy_topic_valid_name(c->topic, strlen(c->topic)));
        bool got = cy_topic_matches(c->filter, strlen(c->filter), c->topic, strlen(c->topic));
        if (got != c->match) fail_msg("matches(\"%s\", \"%s\") = %d", c->filter, c->topic, got);
    }
}

static void test_cy_topic_tree_match_table(void **state)
{
    for (size_t i = 0; i < NMATCH; i++) {
        const mcase *c = &match_table[i];
        cy_topic_tree *t;
        assert_int_equal(cy_topic_tree_new(&t), 0);
        assert_int_equal(cy_topic_tree_add(t, c->filter, strlen(c->filter), OWNER(1), 0, 0, NULL),
                         0);
        size_t n = match_count(t, c->topic, strlen(c->topic));
        if (n != (c->match ? 1u : 0u))
            fail_msg("tree \"%s\" on \"%s\": %zu hits", c->filter, c->topic, n);
        cy_topic_tree_free(t);
    }
}

static void test_cy_retain_match_table(void **state)
{
    for (size_t i = 0; i < NMATCH; i++) {
        const mcase *c = &match_table[i];
        cy_retain *r;
        assert_int_equal(cy_retain_new(&r), 0);
        assert_int_equal(cy_retain_set(r, c->topic, strlen(c->topic), OWNER(1), NULL), 0);
        size_t n = 0;
        cy_retain_match(r, c->filter, strlen(c->filter), retain_count_cb, &n);
        if (n != (c->match ? 1u : 0u))
            fail_msg("retain \"%s\" on \"%s\": %zu hits", c->filter, c->topic, n);
        cy_retain_free(r, NULL);
    }
}

/* All the table's filters in one tree, each its own owner: every topic
 * must see exactly the owners whose rows (or cy_topic_matches) say so. */
static void test_cy_topic_tree_match_table_combined(void **state)
{
    cy_topic_tree *t;
    assert_int_equal(cy_topic_tree_new(&t), 0);
    for (size_t i = 0; i < NMATCH; i++) {
        const char *f = match_table[i].filter;
        assert_int_equal(cy_topic_tree_add(t, f, strlen(f), OWNER(i + 1), 0, 0, NULL), 0);
    }
    assert_int_equal(cy_topic_tree_count(t), NMATCH);
    for (size_t j = 0; j < NMATCH; j++) {
        const char *topic = match_table[j].topic;
        size_t want = 0;
        for (size_t i = 0; i < NMATCH; i++) {
            const char *f = match_table[i].filter;
            want += cy_topic_matches(f, strlen(f), topic, strlen(topic));
        }
        assert_int_equal(match_count(t, topic, strlen(topic)), want);
    }
    cy_topic_tree_free(t);
}

/* ---- subscription tree ---- */

static void test_cy_topic_tree_new_enomem(void **state)
{
    cy_topic_tree *t = NULL;
    cy_alloc_fail_after(0);
    assert_int_equal(cy_topic_tree_new(&t), CY_ENOMEM);
    cy_alloc_fail_after(-1);
    cy_topic_tree_free(NULL);
    assert_int_equal(cy_topic_tree_count(NULL), 0);
}

static void test_cy_topic_tree_add_replace(void **state)
{
    cy_topic_tree *t;
    bool existed = true;
    assert_int_equal(cy_topic_tree_new(&t), 0);
    assert_int_equal(cy_topic_tree_add(t, S("a/b"), OWNER(1), 1, 5, &existed), 0);
    assert_false(existed);
    assert_int_equal(cy_topic_tree_count(t), 1);
    assert_int_equal(cy_topic_tree_add(t, S("a/b"), OWNER(1), 0x12, 6, &existed), 0);
    assert_true(existed);
    assert_int_equal(cy_topic_tree_count(t), 1);
    assert_int_equal(cy_topic_tree_add(t, S("a/b"), OWNER(2), 0, 0, NULL), 0);
    assert_int_equal(cy_topic_tree_count(t), 2);

    hits hs = {0};
    cy_topic_tree_match(t, S("a/b"), collect, NULL, &hs);
    assert_int_equal(hs.n, 2);
    for (size_t i = 0; i < hs.n; i++) {
        assert_false(hs.h[i].shared);
        if (hs.h[i].owner == OWNER(1)) {
            assert_int_equal(hs.h[i].opts, 0x12);
            assert_int_equal(hs.h[i].sub_id, 6);
            assert_int_equal(CY_SUBOPT_QOS(hs.h[i].opts), 2);
            assert_int_equal(CY_SUBOPT_RH(hs.h[i].opts), 1);
        }
    }
    cy_topic_tree_free(t);
}

static void test_cy_topic_tree_add_invalid(void **state)
{
    static const char *bad[] = {"",         "a/#/b",     "a#",          "#a",       "a+",
                                "$share/g", "$share//f", "$share/g+/f", "$share/g/"};
    cy_topic_tree *t;
    assert_int_equal(cy_topic_tree_new(&t), 0);
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(cy_topic_tree_add(t, bad[i], strlen(bad[i]), OWNER(1), 0, 0, NULL),
                         CY_EINVAL);
        assert_int_equal(cy_topic_tree_remove(t, bad[i], strlen(bad[i]), OWNER(1)), CY_EINVAL);
    }
    assert_int_equal(cy_topic_tree_count(t), 0);
    assert_int_equal(cy_topic_tree_add(NULL, S("a"), OWNER(1), 0, 0, NULL), CY_EINVAL);
    cy_topic_tree_free(t);
}

static void test_cy_topic_tree_remove_enoent(void **state)
{
    cy_topic_tree *t;
    assert_int_equal(cy_topic_tree_new(&t), 0);
    assert_int_equal(cy_topic_tree_remove(t, S("a/b"), OWNER(1)), CY_ENOENT);
    assert_int_equal(cy_topic_tree_add(t, S("a/b"), OWNER(1), 0, 0, NULL), 0);
    assert_int_equal(cy_topic_tree_remove(t, S("a/b"), OWNER(2)), CY_ENOENT);
    assert_int_equal(cy_topic_tree_remove(t, S("a"), OWNER(1)), CY_ENOENT); /* inner node */
    assert_int_equal(cy_topic_tree_remove(t, S("a/b/c"), OWNER(1)), CY_ENOENT);
    assert_int_equal(cy_topic_tree_remove(t, S("a/+"), OWNER(1)), CY_ENOENT);
    assert_int_equal(cy_topic_tree_remove(t, S("$share/g/a/b"), OWNER(1)), CY_ENOENT);
    assert_int_equal(cy_topic_tree_add(t, S("$share/g/a/b"), OWNER(2), 0, 0, NULL), 0);
    assert_int_equal(cy_topic_tree_remove(t, S("$share/g/a/b"), OWNER(1)), CY_ENOENT);
    assert_int_equal(cy_topic_tree_remove(t, S("$share/h/a/b"), OWNER(2)), CY_ENOENT);
    assert_int_equal(cy_topic_tree_count(t), 2);
    assert_int_equal(cy_topic_tree_remove(t, S("a/b"), OWNER(1)), 0);
    assert_int_equal(cy_topic_tree_remove(t, S("a/b"), OWNER(1)), CY_ENOENT);
    assert_int_equal(cy_topic_tree_remove(t, S("$share/g/a/b"), OWNER(2)), 0);
    assert_int_equal(cy_topic_tree_count(t), 0);
    cy_topic_tree_free(t);
}

/* Adding filter needs exactly `nodes` node allocations plus one for the
 * subscriber array when none of its nodes exist: with the allocation after
 * the first failing, the add fails. If the nodes had survived their last
 * subscriber (no pruning), the add would need one allocation and succeed. */
static void assert_pruned(cy_topic_tree *t, const char *filter)
{
    cy_alloc_fail_after(1);
    int rc = cy_topic_tree_add(t, filter, strlen(filter), OWNER(99), 0, 0, NULL);
    cy_alloc_fail_after(-1);
    assert_int_equal(rc, CY_ENOMEM);
}

static void test_cy_topic_tree_remove_prunes(void **state)
{
    static const char *filters[] = {"a/b/c/d", "a/b/+/d", "a/b/#", "a/+/c",  "+/#",
                                    "#",       "/",       "//x",   "$SYS/+", "a/b"};
    const size_t nf = sizeof filters / sizeof filters[0];
    cy_topic_tree *t;
    assert_int_equal(cy_topic_tree_new(&t), 0);
    for (int owner = 1; owner <= 3; owner++)
        for (size_t i = 0; i < nf; i++)
            assert_int_equal(
                cy_topic_tree_add(t, filters[i], strlen(filters[i]), OWNER(owner), 0, 0, NULL), 0);
    assert_int_equal(cy_topic_tree_count(t), 3 * nf);
    /* Remove in an order that empties leaves and inner nodes both ways. */
    for (size_t i = nf; i-- > 0;)
        for (int owner = 1; owner <= 3; owner++)
            assert_int_equal(cy_topic_tree_remove(t, filters[i], strlen(filters[i]), OWNER(owner)),
                             0);
    assert_int_equal(cy_topic_tree_count(t), 0);
    assert_int_equal(match_count(t, S("a/b/c/d")), 0);
    assert_pruned(t, "a/b/c/d");
    assert_pruned(t, "a/b/+/d");
    assert_pruned(t, "+/#");
    assert_pruned(t, "$SYS/+");
    assert_int_equal(cy_topic_tree_count(t), 0);

    /* Removing a leaf keeps the inner node that still has a subscriber. */
    assert_int_equal(cy_topic_tree_add(t, S("x/y/z"), OWNER(1), 0, 0, NULL), 0);
    assert_int_equal(cy_topic_tree_add(t, S("x/y"), OWNER(1), 0, 0, NULL), 0);
    assert_int_equal(cy_topic_tree_remove(t, S("x/y/z"), OWNER(1)), 0);
    assert_int_equal(match_count(t, S("x/y")), 1);
    assert_int_equal(match_count(t, S("x/y/z")), 0);
    assert_int_equal(cy_topic_tree_remove(t, S("x/y"), OWNER(1)), 0);
    assert_pruned(t, "x/y");
    cy_topic_tree_free(t);
}

static void test_cy_topic_tree_match_overlapping(void **state)
{
    static const char *filters[] = {"a/b", "a/+", "#", "+/b", "a/#", "+/+", "a/b/#"};
    cy_topic_tree *t;
    assert_int_equal(cy_topic_tree_new(&t), 0);
    for (size_t i = 0; i < sizeof filters / sizeof filters[0]; i++)
        assert_int_equal(cy_topic_tree_add(t, filters[i], strlen(filters[i]), OWNER(1), 0,
                                           (uint32_t)i + 1, NULL),
                         0);
    assert_int_equal(cy_topic_tree_add(t, S("a/b"), OWNER(2), 0, 0, NULL), 0);
    assert_int_equal(cy_topic_tree_add(t, S("a/c"), OWNER(3), 0, 0, NULL), 0);
    assert_int_equal(cy_topic_tree_add(t, S("$share/g/a/b"), OWNER(1), 0, 0, NULL), 0);

    hits hs = {0};
    cy_topic_tree_match(t, S("a/b"), collect, NULL, &hs);
    assert_int_equal(owner_hits(&hs, OWNER(1), false), 7);
    assert_int_equal(owner_hits(&hs, OWNER(1), true), 1);
    assert_int_equal(owner_hits(&hs, OWNER(2), false), 1);
    assert_int_equal(owner_hits(&hs, OWNER(3), false), 0);
    assert_int_equal(hs.n, 9);
    /* Each of owner 1's subscriptions is reported once, with its own id. */
    uint32_t ids = 0;
    for (size_t i = 0; i < hs.n; i++)
        if (hs.h[i].owner == OWNER(1) && !hs.h[i].shared) ids |= 1u << hs.h[i].sub_id;
    assert_int_equal(ids, 0xfe);
    cy_topic_tree_free(t);
}

static void test_cy_topic_tree_match_dollar(void **state)
{
    static const char *filters[] = {"#", "+/x", "+", "+/#", "$SYS/#", "$SYS/+", "$SYS/x", "+/+"};
    cy_topic_tree *t;
    assert_int_equal(cy_topic_tree_new(&t), 0);
    for (size_t i = 0; i < sizeof filters / sizeof filters[0]; i++)
        assert_int_equal(
            cy_topic_tree_add(t, filters[i], strlen(filters[i]), OWNER(i + 1), 0, 0, NULL), 0);
    hits hs = {0};
    cy_topic_tree_match(t, S("$SYS/x"), collect, NULL, &hs);
    assert_int_equal(hs.n, 3);
    assert_int_equal(owner_hits(&hs, OWNER(5), false), 1);
    assert_int_equal(owner_hits(&hs, OWNER(6), false), 1);
    assert_int_equal(owner_hits(&hs, OWNER(7), false), 1);
    /* The same levels without the '$' match every wildcard filter. */
    assert_int_equal(match_count(t, S("SYS/x")), 4);
    cy_topic_tree_free(t);
}

static void test_cy_topic_tree_shared_round_robin(void **state)
{
    cy_topic_tree *t;
    assert_int_equal(cy_topic_tree_new(&t), 0);
    for (int i = 1; i <= 3; i++)
        assert_int_equal(cy_topic_tree_add(t, S("$share/g/a/+"), OWNER(i), 1, 10 + i, NULL), 0);
    for (int i = 4; i <= 5; i++)
        assert_int_equal(cy_topic_tree_add(t, S("$share/h/a/+"), OWNER(i), 0, 0, NULL), 0);
    assert_int_equal(cy_topic_tree_add(t, S("a/+"), OWNER(9), 0, 0, NULL), 0);
    assert_int_equal(cy_topic_tree_count(t), 6);

    int g_seq[6], h_seq[6];
    for (int m = 0; m < 6; m++) {
        hits hs = {0};
        cy_topic_tree_match(t, S("a/x"), collect, NULL, &hs);
        assert_int_equal(hs.n, 3); /* one per group, plus the plain subscription */
        assert_int_equal(owner_hits(&hs, OWNER(9), false), 1);
        g_seq[m] = h_seq[m] = 0;
        for (size_t i = 0; i < hs.n; i++) {
            if (!hs.h[i].shared) continue;
            int o = (int)(uintptr_t)hs.h[i].owner;
            if (o <= 3) {
                g_seq[m] = o;
                assert_int_equal(hs.h[i].sub_id, 10 + o);
                assert_int_equal(hs.h[i].opts, 1);
            } else {
                h_seq[m] = o;
            }
        }
    }
    static const int g_want[6] = {1, 2, 3, 1, 2, 3}, h_want[6] = {4, 5, 4, 5, 4, 5};
    assert_memory_equal(g_seq, g_want, sizeof g_want);
    assert_memory_equal(h_seq, h_want, sizeof h_want);
    cy_topic_tree_free(t);
}

/* The shared member picked for one message on "s", or 0. */
static int pick_one(cy_topic_tree *t, hits *hs)
{
    hs->n = 0;
    cy_topic_tree_match(t, S("s"), collect, accept_cb, hs);
    assert_int_equal(hs->n, 1);
    assert_true(hs->h[0].shared);
    return (int)(uintptr_t)hs->h[0].owner;
}

static void test_cy_topic_tree_shared_accept(void **state)
{
    cy_topic_tree *t;
    hits hs = {0};
    assert_int_equal(cy_topic_tree_new(&t), 0);
    for (int i = 1; i <= 3; i++)
        assert_int_equal(cy_topic_tree_add(t, S("$share/g/s"), OWNER(i), 0, 0, NULL), 0);

    /* Member 2 offline: 1, 3, 1, 3. */
    hs.reject = OWNER(2);
    assert_int_equal(pick_one(t, &hs), 1);
    assert_int_equal(pick_one(t, &hs), 3);
    assert_int_equal(pick_one(t, &hs), 1);
    assert_int_equal(pick_one(t, &hs), 3);
    /* Back online: the turn continues after the last chosen (3). */
    hs.reject = NULL;
    assert_int_equal(pick_one(t, &hs), 1);
    assert_int_equal(pick_one(t, &hs), 2);
    /* Nobody accepts: the next in turn gets it anyway. */
    hs.reject_all = true;
    assert_int_equal(pick_one(t, &hs), 3);
    assert_int_equal(pick_one(t, &hs), 1);
    assert_int_equal(pick_one(t, &hs), 2);
    hs.reject_all = false;
    /* A NULL accept callback: plain round robin. */
    hits plain = {0};
    cy_topic_tree_match(t, S("s"), collect, NULL, &plain);
    assert_ptr_equal(plain.h[0].owner, OWNER(3));
    cy_topic_tree_free(t);
}

static void test_cy_topic_tree_shared_remove_member(void **state)
{
    cy_topic_tree *t;
    hits hs = {0};
    assert_int_equal(cy_topic_tree_new(&t), 0);
    for (int i = 1; i <= 4; i++)
        assert_int_equal(cy_topic_tree_add(t, S("$share/g/s"), OWNER(i), 0, 0, NULL), 0);
    assert_int_equal(pick_one(t, &hs), 1);
    assert_int_equal(pick_one(t, &hs), 2);
    /* Removing one before the cursor keeps the turn: next is still 3. */
    assert_int_equal(cy_topic_tree_remove(t, S("$share/g/s"), OWNER(1)), 0);
    assert_int_equal(pick_one(t, &hs), 3);
    /* Removing the next in turn passes the turn to the one after it. */
    assert_int_equal(cy_topic_tree_remove(t, S("$share/g/s"), OWNER(4)), 0);
    assert_int_equal(pick_one(t, &hs), 2);
    assert_int_equal(pick_one(t, &hs), 3);
    /* Replacing a member's options keeps its place. */
    bool existed = false;
    assert_int_equal(cy_topic_tree_add(t, S("$share/g/s"), OWNER(2), 2, 7, &existed), 0);
    assert_true(existed);
    assert_int_equal(pick_one(t, &hs), 2);
    assert_int_equal(hs.h[0].sub_id, 7);
    assert_int_equal(cy_topic_tree_count(t), 2);
    assert_int_equal(cy_topic_tree_remove(t, S("$share/g/s"), OWNER(2)), 0);
    assert_int_equal(cy_topic_tree_remove(t, S("$share/g/s"), OWNER(3)), 0);
    assert_int_equal(cy_topic_tree_count(t), 0);
    assert_int_equal(match_count(t, S("s")), 0);
    assert_pruned(t, "s");
    cy_topic_tree_free(t);
}

static void test_cy_topic_tree_shared_and_plain_same_owner(void **state)
{
    cy_topic_tree *t;
    bool existed = true;
    assert_int_equal(cy_topic_tree_new(&t), 0);
    assert_int_equal(cy_topic_tree_add(t, S("a/#"), OWNER(1), 0, 1, &existed), 0);
    assert_false(existed);
    assert_int_equal(cy_topic_tree_add(t, S("$share/g/a/#"), OWNER(1), 0, 2, &existed), 0);
    assert_false(existed);
    assert_int_equal(cy_topic_tree_add(t, S("$share/h/a/#"), OWNER(1), 0, 3, &existed), 0);
    assert_false(existed);
    assert_int_equal(cy_topic_tree_add(t, S("$share/g/a/#"), OWNER(1), 0, 4, &existed), 0);
    assert_true(existed);
    assert_int_equal(cy_topic_tree_count(t), 3);

    hits hs = {0};
    cy_topic_tree_match(t, S("a/b"), collect, NULL, &hs);
    assert_int_equal(hs.n, 3);
    assert_int_equal(owner_hits(&hs, OWNER(1), false), 1);
    assert_int_equal(owner_hits(&hs, OWNER(1), true), 2);
    uint32_t ids = 0;
    for (size_t i = 0; i < hs.n; i++)
        ids |= 1u << hs.h[i].sub_id;
    assert_int_equal(ids, (1u << 1) | (1u << 3) | (1u << 4));

    assert_int_equal(cy_topic_tree_remove(t, S("$share/g/a/#"), OWNER(1)), 0);
    assert_int_equal(cy_topic_tree_count(t), 2);
    assert_int_equal(match_count(t, S("a")), 2);
    assert_int_equal(cy_topic_tree_remove(t, S("a/#"), OWNER(1)), 0);
    assert_int_equal(cy_topic_tree_remove(t, S("$share/h/a/#"), OWNER(1)), 0);
    assert_int_equal(cy_topic_tree_count(t), 0);
    cy_topic_tree_free(t);
}

/* 100k device ids on one level: the table grows, every id is found, and it
 * empties (and shrinks) again. */
static void test_cy_topic_tree_wide_level(void **state)
{
    enum { N = 100000 };
    char buf[64];
    cy_topic_tree *t;
    assert_int_equal(cy_topic_tree_new(&t), 0);
    for (int i = 0; i < N; i++) {
        int n = snprintf(buf, sizeof buf, "devices/dev%07d/events", i);
        assert_int_equal(cy_topic_tree_add(t, buf, (size_t)n, OWNER(i + 1), 0, 0, NULL), 0);
    }
    assert_int_equal(cy_topic_tree_add(t, S("devices/+/events"), OWNER(N + 1), 0, 0, NULL), 0);
    assert_int_equal(cy_topic_tree_count(t), N + 1);
    for (int i = 0; i < N; i += 997) {
        int n = snprintf(buf, sizeof buf, "devices/dev%07d/events", i);
        hits hs = {0};
        cy_topic_tree_match(t, buf, (size_t)n, collect, NULL, &hs);
        assert_int_equal(hs.n, 2);
        assert_int_equal(owner_hits(&hs, OWNER(i + 1), false), 1);
        assert_int_equal(owner_hits(&hs, OWNER(N + 1), false), 1);
    }
    assert_int_equal(match_count(t, S("devices/nobody/events")), 1);
    assert_int_equal(match_count(t, S("devices/dev0000001/other")), 0);
    /* Remove all but a few; the rest still match. */
    for (int i = 0; i < N; i++) {
        if (i % 25000 == 7) continue;
        int n = snprintf(buf, sizeof buf, "devices/dev%07d/events", i);
        assert_int_equal(cy_topic_tree_remove(t, buf, (size_t)n, OWNER(i + 1)), 0);
    }
    assert_int_equal(cy_topic_tree_count(t), 5);
    for (int i = 7; i < N; i += 25000) {
        int n = snprintf(buf, sizeof buf, "devices/dev%07d/events", i);
        assert_int_equal(match_count(t, buf, (size_t)n), 2);
    }
    assert_int_equal(match_count(t, S("devices/dev0000008/events")), 1);
    cy_topic_tree_free(t); /* frees the remaining subscriptions */
}

/* 65535-byte filters of 32768 levels: nothing recurses, so no stack
 * overflow in add, match, remove or free. */
static void test_cy_topic_tree_deep_filter(void **state)
{
    const size_t len = 65535;
    char *a = malloc(len), *slashes = malloc(len), *plus = malloc(len);
    assert_non_null(a);
    assert_non_null(slashes);
    assert_non_null(plus);
    for (size_t i = 0; i < len; i++) {
        a[i] = (i % 2) ? '/' : 'a';
        plus[i] = (i % 2) ? '/' : '+';
    }
    memset(slashes, '/', len);
    plus[len - 1] = '#';
    cy_topic_tree *t;
    assert_int_equal(cy_topic_tree_new(&t), 0);
    assert_int_equal(cy_topic_tree_add(t, a, len, OWNER(1), 0, 0, NULL), 0);
    assert_int_equal(cy_topic_tree_add(t, slashes, len, OWNER(2), 0, 0, NULL), 0);
    assert_int_equal(cy_topic_tree_add(t, plus, len, OWNER(3), 0, 0, NULL), 0);
    hits hs = {0};
    cy_topic_tree_match(t, a, len, collect, NULL, &hs);
    assert_int_equal(hs.n, 2);
    assert_int_equal(owner_hits(&hs, OWNER(1), false), 1);
    assert_int_equal(owner_hits(&hs, OWNER(3), false), 1);
    memset(&hs, 0, sizeof hs);
    cy_topic_tree_match(t, slashes, len, collect, NULL, &hs);
    assert_int_equal(hs.n, 2);
    assert_int_equal(owner_hits(&hs, OWNER(2), false), 1);
    assert_int_equal(owner_hits(&hs, OWNER(3), false), 1);
    /* "+/.../+/#" needs 32767 levels (the '#' takes the parent); a topic
     * one level shorter matches nothing. */
    assert_int_equal(match_count(t, a, len - 2), 1);
    assert_int_equal(match_count(t, a, len - 4), 0);
    assert_int_equal(cy_topic_tree_remove(t, slashes, len, OWNER(2)), 0);
    assert_int_equal(cy_topic_tree_count(t), 2);
    cy_topic_tree_free(t);
    free(a);
    free(slashes);
    free(plus);
}

/* ---- seeded random cross-check against cy_topic_matches ---- */

/* One level in cut_odds becomes a final '#' in a derived filter: low for
 * shallow trees, high for deep ones so most filters keep their depth. */
static uint32_t cut_odds = 10;
static uint32_t rng_state = 12345;
static uint32_t rnd(uint32_t n)
{
    rng_state = rng_state * 1103515245u + 12345u;
    return (rng_state >> 8) % n;
}

/* A random topic of up to maxlv levels over a tiny alphabet. */
static size_t random_topic(char *out, size_t maxlv)
{
    static const char *lv[] = {"a", "b", "", "$s", "a"};
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

/* A filter derived from topic: some levels become '+', maybe cut by '#'. */
static size_t filter_from(char *out, const char *topic, size_t tlen)
{
    size_t n = 0, i = 0;
    for (;;) {
        const char *slash = memchr(topic + i, '/', tlen - i);
        size_t e = slash ? (size_t)(slash - topic) : tlen;
        uint32_t r = 1 + rnd(9);
        if (rnd(cut_odds) == 0) {
            out[n++] = '#';
            return n;
        }
        if (r <= 2) {
            out[n++] = '+';
        } else if (r == 3 && rnd(cut_odds) < 10) { /* rare in deep filters */
            out[n++] = 'b';
        } else {
            memcpy(out + n, topic + i, e - i);
            n += e - i;
        }
        if (e == tlen) break;
        out[n++] = '/';
        i = e + 1;
    }
    if (rnd(6) == 0) {
        memcpy(out + n, "/#", 2);
        n += 2;
    }
    return n;
}

typedef struct rfilter {
    char s[512];
    size_t len;
    char base[512]; /* the topic the filter was derived from */
    size_t blen;
    bool live;
} rfilter;

static void random_cross_check(size_t maxlv, size_t nfilters, size_t ntopics)
{
    rfilter *fs = calloc(nfilters, sizeof *fs);
    char topic[512];
    assert_non_null(fs);
    cy_topic_tree *t;
    assert_int_equal(cy_topic_tree_new(&t), 0);
    size_t live = 0;
    for (size_t i = 0; i < nfilters; i++) {
        fs[i].blen = random_topic(fs[i].base, maxlv);
        fs[i].len = filter_from(fs[i].s, fs[i].base, fs[i].blen);
        if (!cy_topic_valid_filter(fs[i].s, fs[i].len))
            fail_msg("bad filter \"%.*s\"", (int)fs[i].len, fs[i].s);
        assert_int_equal(cy_topic_tree_add(t, fs[i].s, fs[i].len, OWNER(i + 1), 0, 0, NULL), 0);
        fs[i].live = true;
        live++;
    }
    /* Drop a third of them so pruning is exercised in between. */
    for (size_t i = 0; i < nfilters; i += 3) {
        assert_int_equal(cy_topic_tree_remove(t, fs[i].s, fs[i].len, OWNER(i + 1)), 0);
        fs[i].live = false;
        live--;
    }
    assert_int_equal(cy_topic_tree_count(t), live);
    size_t total = 0;
    for (size_t k = 0; k < ntopics; k++) {
        /* Half the topics are ones some filter was derived from, so deep
         * topics match too, not only through an early '#'. */
        size_t tl;
        if (rnd(2)) {
            const rfilter *b = &fs[rnd((uint32_t)nfilters)];
            memcpy(topic, b->base, b->blen);
            tl = b->blen;
        } else {
            tl = random_topic(topic, maxlv);
        }
        size_t want = 0;
        for (size_t i = 0; i < nfilters; i++)
            if (fs[i].live) want += cy_topic_matches(fs[i].s, fs[i].len, topic, tl);
        size_t got = match_count(t, topic, tl);
        if (got != want) fail_msg("topic \"%.*s\": %zu hits, want %zu", (int)tl, topic, got, want);
        total += got;
    }
    printf("    %zu topics, %zu hits\n", ntopics, total);
    assert_true(total > ntopics); /* the check is not vacuous */
    cy_topic_tree_free(t);
    free(fs);
}

static void test_cy_topic_tree_match_random_shallow(void **state)
{
    rng_state = 1;
    cut_odds = 10;
    random_cross_check(5, 400, 3000);
}

/* Deeper than the 64 levels whose offsets and hashes match caches. */
static void test_cy_topic_tree_match_random_deep(void **state)
{
    rng_state = 2;
    cut_odds = 1000;
    random_cross_check(90, 300, 1500);
}

/* ---- allocation failures ---- */

static const char *const probes[] = {"a/b/c/d/e/f/g/h/i", "a/b", "x/9/z/d/e", "x/1",
                                     "q/r/s/t",           "a",   "$SYS/x",    "/"};
#define NPROBES (sizeof probes / sizeof probes[0])

static void snapshot(cy_topic_tree *t, size_t *out)
{
    for (size_t i = 0; i < NPROBES; i++)
        out[i] = match_count(t, probes[i], strlen(probes[i]));
}

/* Fail the Nth allocation of an add, for every N until the add succeeds:
 * each failure is CY_ENOMEM and leaves the count and every probe's matches
 * as they were (leaks would show at exit under ASan or valgrind). */
static void alloc_walk(cy_topic_tree *t, const char *filter, void *owner)
{
    size_t before[NPROBES], now[NPROBES], count = cy_topic_tree_count(t);
    int rc;
    long n = 0;
    snapshot(t, before);
    do {
        cy_alloc_fail_after(n++);
        rc = cy_topic_tree_add(t, filter, strlen(filter), owner, 1, 2, NULL);
        cy_alloc_fail_after(-1);
        if (rc != 0) {
            assert_int_equal(rc, CY_ENOMEM);
            assert_int_equal(cy_topic_tree_count(t), count);
            snapshot(t, now);
            assert_memory_equal(before, now, sizeof now);
        }
        assert_true(n < 1000);
    } while (rc != 0);
    assert_true(n > 1); /* at least one failure was walked */
    assert_int_equal(cy_topic_tree_count(t), count + 1);
}

static void test_cy_topic_tree_add_alloc_fail_walk(void **state)
{
    cy_topic_tree *t;
    assert_int_equal(cy_topic_tree_new(&t), 0);
    assert_int_equal(cy_topic_tree_add(t, S("a/b/#"), OWNER(1), 0, 0, NULL), 0);
    assert_int_equal(cy_topic_tree_add(t, S("$share/g/a/+/c/#"), OWNER(2), 0, 0, NULL), 0);
    /* Fill "x" to the edge of its inline bucket so the walk includes the
     * (tolerated) failure to grow its child table. */
    for (int i = 0; i < 4; i++) {
        char f[8];
        int n = snprintf(f, sizeof f, "x/%d", i);
        assert_int_equal(cy_topic_tree_add(t, f, (size_t)n, OWNER(3), 0, 0, NULL), 0);
    }
    assert_int_equal(match_count(t, S("a/b/c/d/e/f/g/h/i")), 2);

    alloc_walk(t, "a/b/c/d/e/f/g/h/i", OWNER(4));
    assert_int_equal(match_count(t, S("a/b/c/d/e/f/g/h/i")), 3);
    alloc_walk(t, "x/9/+/d/e/#", OWNER(4));
    assert_int_equal(match_count(t, S("x/9/z/d/e")), 1);
    alloc_walk(t, "$share/g/a/+/c/#", OWNER(5)); /* new member, existing group */
    assert_int_equal(match_count(t, S("a/b/c")), 2);
    alloc_walk(t, "$share/k/q/r/s/+", OWNER(5)); /* new group, new nodes */
    assert_int_equal(match_count(t, S("q/r/s/t")), 1);
    alloc_walk(t, "a/b/#", OWNER(6)); /* grow the subscriber array */
    assert_int_equal(match_count(t, S("a/b")), 2);
    alloc_walk(t, "+/+/+/+/+/+/+/+/+/#", OWNER(7));
    assert_int_equal(match_count(t, S("a/b/c/d/e/f/g/h/i")), 5);
    assert_int_equal(cy_topic_tree_count(t), 12);
    cy_topic_tree_free(t);
}


/* ---- cy_topic_tree_match_with: graded choice, group identity ---- */

typedef struct mw_ctx {
    int grades[8]; /* by owner index */
    void *chosen[16];
    char filters[16][64];
    int n_shared, n_plain;
    const char *only_group; /* want_group filter, or NULL */
} mw_ctx;

static int owner_ix(void *o)
{
    return (int)(intptr_t)o;
}

static void mw_sub(void *ctx, void *owner, uint8_t opts, uint32_t sub_id)
{
    (void)owner, (void)opts, (void)sub_id;
    ((mw_ctx *)ctx)->n_plain++;
}

static void mw_shared(void *ctx, void *owner, uint8_t opts, uint32_t sub_id, const char *f,
                      size_t len)
{
    mw_ctx *c = ctx;
    (void)opts, (void)sub_id;
    c->chosen[c->n_shared] = owner;
    snprintf(c->filters[c->n_shared], sizeof(c->filters[0]), "%.*s", (int)len, f);
    c->n_shared++;
}

static int mw_grade(void *ctx, void *owner)
{
    return ((mw_ctx *)ctx)->grades[owner_ix(owner)];
}

static bool mw_want(void *ctx, const char *f, size_t len)
{
    mw_ctx *c = ctx;
    return !c->only_group || (strlen(c->only_group) == len && !memcmp(c->only_group, f, len));
}

static void test_cy_topic_tree_match_with_grades(void **state)
{
    (void)state;
    cy_topic_tree *t;
    assert_int_equal(cy_topic_tree_new(&t), 0);
    for (intptr_t i = 1; i <= 3; i++)
        assert_int_equal(cy_topic_tree_add(t, "$share/g/a/+", 12, (void *)i, 1, 0, NULL), 0);
    mw_ctx c;
    memset(&c, 0, sizeof(c));
    cy_topic_matcher m = {mw_sub, mw_shared, mw_grade, NULL, &c};
    /* only member 3 is preferred: it is chosen every time */
    c.grades[1] = 1, c.grades[2] = 1, c.grades[3] = 2;
    for (int k = 0; k < 3; k++) cy_topic_tree_match_with(t, "a/x", 3, &m);
    assert_int_equal(c.n_shared, 3);
    for (int k = 0; k < 3; k++) assert_int_equal(owner_ix(c.chosen[k]), 3);
    assert_string_equal(c.filters[0], "$share/g/a/+");
    /* none preferred: the acceptable ones, round robin */
    memset(&c, 0, sizeof(c));
    c.grades[1] = 1, c.grades[2] = 0, c.grades[3] = 1;
    for (int k = 0; k < 4; k++) cy_topic_tree_match_with(t, "a/x", 3, &m);
    assert_int_equal(c.n_shared, 4);
    for (int k = 0; k < 4; k++) assert_int_not_equal(owner_ix(c.chosen[k]), 2);
    assert_int_not_equal(owner_ix(c.chosen[0]), owner_ix(c.chosen[1]));
    /* all refused: the group is skipped */
    memset(&c, 0, sizeof(c));
    cy_topic_tree_match_with(t, "a/x", 3, &m);
    assert_int_equal(c.n_shared, 0);
    cy_topic_tree_free(t);
}

static void test_cy_topic_tree_match_with_group_identity(void **state)
{
    (void)state;
    cy_topic_tree *t;
    assert_int_equal(cy_topic_tree_new(&t), 0);
    assert_int_equal(cy_topic_tree_add(t, "$share/g/a/#", 12, (void *)1, 0, 0, NULL), 0);
    assert_int_equal(cy_topic_tree_add(t, "$share/g/a/+", 12, (void *)2, 0, 0, NULL), 0);
    assert_int_equal(cy_topic_tree_add(t, "$share/h/a/+", 12, (void *)3, 0, 0, NULL), 0);
    assert_int_equal(cy_topic_tree_add(t, "a/+", 3, (void *)4, 0, 0, NULL), 0);
    mw_ctx c;
    memset(&c, 0, sizeof(c));
    cy_topic_matcher m = {mw_sub, mw_shared, NULL, mw_want, &c};
    cy_topic_tree_match_with(t, "a/x", 3, &m);
    assert_int_equal(c.n_plain, 1);
    assert_int_equal(c.n_shared, 3); /* same name, other filter: another group */
    memset(&c, 0, sizeof(c));
    c.only_group = "$share/g/a/+";
    cy_topic_tree_match_with(t, "a/x", 3, &m);
    assert_int_equal(c.n_shared, 1);
    assert_int_equal(owner_ix(c.chosen[0]), 2);
    assert_string_equal(c.filters[0], "$share/g/a/+");
    cy_topic_tree_free(t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cy_topic_valid_name_table),
        cmocka_unit_test(test_cy_topic_valid_filter_table),
        cmocka_unit_test(test_cy_topic_valid_length_limits),
        cmocka_unit_test(test_cy_topic_split_shared_cases),
        cmocka_unit_test(test_cy_topic_reserved_event),
        cmocka_unit_test(test_cy_topic_matches_table),
        cmocka_unit_test(test_cy_topic_tree_match_table),
        cmocka_unit_test(test_cy_retain_match_table),
        cmocka_unit_test(test_cy_topic_tree_match_table_combined),
        cmocka_unit_test(test_cy_topic_tree_new_enomem),
        cmocka_unit_test(test_cy_topic_tree_add_replace),
        cmocka_unit_test(test_cy_topic_tree_add_invalid),
        cmocka_unit_test(test_cy_topic_tree_remove_enoent),
        cmocka_unit_test(test_cy_topic_tree_remove_prunes),
        cmocka_unit_test(test_cy_topic_tree_match_overlapping),
        cmocka_unit_test(test_cy_topic_tree_match_dollar),
        cmocka_unit_test(test_cy_topic_tree_shared_round_robin),
        cmocka_unit_test(test_cy_topic_tree_shared_accept),
        cmocka_unit_test(test_cy_topic_tree_shared_remove_member),
        cmocka_unit_test(test_cy_topic_tree_shared_and_plain_same_owner),
        cmocka_unit_test(test_cy_topic_tree_wide_level),
        cmocka_unit_test(test_cy_topic_tree_deep_filter),
        cmocka_unit_test(test_cy_topic_tree_match_random_shallow),
        cmocka_unit_test(test_cy_topic_tree_match_random_deep),
        cmocka_unit_test(test_cy_topic_tree_add_alloc_fail_walk),
        cmocka_unit_test(test_cy_topic_tree_match_with_grades),
        cmocka_unit_test(test_cy_topic_tree_match_with_group_identity),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
