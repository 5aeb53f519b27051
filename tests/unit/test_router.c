/* test_router: the router (router.h) driven through fake subscriber kinds
 * that record what they are given, plus the message (msg.h) it routes.
 *
 * Three kinds stand for the real consumers: "local" (a device session: it
 * grades itself and logs its seal), "event" (the API's event buffer: its
 * seal numbers the message, the one write a kind may make) and "peer" (a
 * remote kind standing for another shard, with no seal). Every seal,
 * delivery and hook call is appended to one log, so the order of the
 * routing steps can be checked; the first delivery of a route snapshots
 * the message and every later delivery and the routed hook compare
 * against it, so a write after the first delivery is caught. Deliveries
 * keep a reference on the message, as a session queue would, so the
 * reference counts can be checked exactly; what is left is freed in the
 * teardown, and LeakSanitizer or valgrind catch the rest.
 *
 * The router runs without a store (NULL): persistence is the store's
 * tests' business and the integration tests'.
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
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "router/msg.h"
#include "router/router.h"

#define S(lit) lit, sizeof(lit) - 1
#define SELF 5u
#define MAX_FSUBS 8
#define MAX_LOG 256

/* ---- fake subscribers ---- */

typedef struct fsub {
    cy_subscriber base;
    const char *name;
    int grade;    /* what the kind's grade answers */
    unsigned n;   /* deliveries */
    cy_msg *last; /* a reference on the last message delivered */
    uint8_t qos;  /* of the last delivery */
    bool retain;
    bool from_peer;
    bool set_retained;
    uint8_t n_sub_ids;
    uint32_t sub_ids[CY_ROUTE_MAX_SUB_IDS];
    unsigned n_groups; /* the groups listed for the last delivery's match */
    char groups[4][64];
} fsub;

/* What of a message may change: copied at the first delivery. */
typedef struct snap {
    uint8_t origin, qos;
    bool retain;
    int64_t retain_ts, expiry_at;
    uint64_t event_seq;
    uint32_t payload_len;
    uint8_t payload[64];
} snap;

static struct {
    cy_config cfg;
    cy_counters stats;
    cy_router *r;
    fsub subs[MAX_FSUBS];
    unsigned n_subs;
    /* one letter per step: 'A' admit, 'S' seal, 'D' deliver, 'R' routed */
    char log[MAX_LOG + 1];
    unsigned n_log;
    fsub *order[MAX_LOG]; /* recipients, in delivery order */
    unsigned n_order;
    bool snapped;
    snap at_first;
    const cy_msg *routing; /* the message of the route being recorded */
    uint64_t seq;          /* the event kind's numbering */
    int admit_rc;
    unsigned admit_calls, routed_calls;
    uint32_t admit_n_matches;
    bool routed_set_retained;
    uint32_t routed_n_matches;
} T;

static void logc(char c)
{
    assert_true(T.n_log < MAX_LOG);
    T.log[T.n_log++] = c;
    T.log[T.n_log] = '\0';
}

static snap take(const cy_msg *m)
{
    snap s = {.origin = m->origin,
              .qos = m->qos,
              .retain = m->retain,
              .retain_ts = m->retain_ts,
              .expiry_at = m->expiry_at,
              .event_seq = m->event_seq,
              .payload_len = m->payload_len};
    assert_true(m->payload_len <= sizeof s.payload);
    memcpy(s.payload, m->payload, m->payload_len);
    return s;
}

static void assert_unchanged(const cy_msg *m)
{
    snap now = take(m);
    assert_true(T.snapped);
    assert_int_equal(now.origin, T.at_first.origin);
    assert_int_equal(now.qos, T.at_first.qos);
    assert_int_equal(now.retain, T.at_first.retain);
    assert_true(now.retain_ts == T.at_first.retain_ts);
    assert_true(now.expiry_at == T.at_first.expiry_at);
    assert_true(now.event_seq == T.at_first.event_seq);
    assert_int_equal(now.payload_len, T.at_first.payload_len);
    assert_memory_equal(now.payload, T.at_first.payload, now.payload_len);
}

static void record(cy_subscriber *s, const cy_route *r, const cy_match *x)
{
    fsub *f = (fsub *)s;
    logc('D');
    /* A route's message is whole and final from its first delivery on. */
    if (T.routing != r->m) {
        T.routing = r->m;
        T.snapped = true;
        T.at_first = take(r->m);
    } else {
        assert_unchanged(r->m);
    }
    assert_ptr_equal(x->sub, s);
    assert_true(x >= r->matches && x < r->matches + r->n_matches);
    f->n++;
    cy_msg_unref(f->last);
    f->last = cy_msg_ref(r->m);
    f->qos = x->qos;
    f->retain = x->retain;
    f->from_peer = r->from_peer;
    f->set_retained = r->set_retained;
    f->n_sub_ids = x->n_sub_ids;
    memcpy(f->sub_ids, x->sub_ids, x->n_sub_ids * sizeof x->sub_ids[0]);
    f->n_groups = 0;
    for (uint32_t i = 0; i < r->n_groups; i++) {
        if (r->groups[i].match != (uint32_t)(x - r->matches)) continue;
        assert_true(f->n_groups < 4 && r->groups[i].filter.len < 64);
        memcpy(f->groups[f->n_groups], r->groups[i].filter.p, r->groups[i].filter.len);
        f->groups[f->n_groups][r->groups[i].filter.len] = '\0';
        f->n_groups++;
    }
    assert_true(T.n_order < MAX_LOG);
    T.order[T.n_order++] = f;
}

static void deliver(void *ctx, cy_subscriber *s, const cy_route *r, const cy_match *x)
{
    assert_ptr_equal(ctx, &T);
    record(s, r, x);
}

static int grade(void *ctx, const cy_subscriber *s, const cy_route *r)
{
    return ((const fsub *)s)->grade;
}

/* Before any delivery of this route, with the stamp already set. */
static void seal_check(cy_route *r)
{
    assert_true(strchr(T.log, 'D') == NULL);
    if (r->set_retained) assert_true(r->m->retain_ts != 0);
    if (!r->from_peer) assert_int_equal(r->m->origin, SELF);
}

static void seal_local(void *ctx, cy_subscriber *s, cy_route *r)
{
    logc('S');
    seal_check(r);
}

static void seal_event(void *ctx, cy_subscriber *s, cy_route *r)
{
    logc('S');
    seal_check(r);
    r->m->event_seq = ++T.seq;
}

static const cy_sub_kind local_kind = {"local", false, deliver, grade, seal_local, &T};
static const cy_sub_kind event_kind = {"event", false, deliver, NULL, seal_event, &T};
static const cy_sub_kind peer_kind = {"peer", true, deliver, grade, NULL, &T};

static fsub *mk(const cy_sub_kind *kind, const char *name)
{
    assert_true(T.n_subs < MAX_FSUBS);
    fsub *f = &T.subs[T.n_subs++];
    cy_subscriber_init(&f->base, kind);
    f->name = name;
    f->grade = 2;
    return f;
}

static void sub(fsub *f, const char *filter, uint8_t opts, uint32_t id)
{
    bool existed = true;
    assert_int_equal(cy_router_subscribe(T.r, &f->base, filter, strlen(filter), opts, id, &existed),
                     0);
    assert_false(existed);
}

/* ---- hooks ---- */

static int admit(void *ctx, const cy_route *r)
{
    assert_ptr_equal(ctx, &T);
    logc('A');
    T.admit_calls++;
    T.admit_n_matches = r->n_matches;
    return T.admit_rc;
}

static void routed(void *ctx, const cy_route *r)
{
    assert_ptr_equal(ctx, &T);
    logc('R');
    T.routed_calls++;
    T.routed_set_retained = r->set_retained;
    T.routed_n_matches = r->n_matches;
    if (T.routing == r->m) assert_unchanged(r->m);
}

static const cy_router_hooks hooks = {admit, routed, &T};

/* ---- helpers ---- */

static cy_msg *msg(const char *topic, const char *payload, uint8_t qos, bool retain)
{
    cy_msg *m = cy_msg_new(topic, strlen(topic), (const uint8_t *)payload, strlen(payload), NULL, 0,
                           qos, retain, 0);
    assert_non_null(m);
    return m;
}

/* Forget what the fakes recorded (their references are kept). */
static void reset(void)
{
    T.n_log = 0;
    T.log[0] = '\0';
    T.n_order = 0;
    T.routing = NULL;
    T.snapped = false;
    T.admit_calls = T.routed_calls = 0;
    T.routed_set_retained = false;
    for (unsigned i = 0; i < T.n_subs; i++)
        T.subs[i].n = 0;
}

static int pub(cy_msg *m, const fsub *from, const char *owner, bool refusable)
{
    reset();
    return cy_router_publish(T.r, m, from ? &from->base : NULL, owner, refusable);
}

/* Publish a new message from nobody and drop the test's reference. */
static void pub1(const char *topic, const char *payload, uint8_t qos, bool retain)
{
    cy_msg *m = msg(topic, payload, qos, retain);
    assert_int_equal(pub(m, NULL, NULL, false), 0);
    cy_msg_unref(m);
}

/* Publish a retained message charged to owner; true if it was kept. */
static bool pub_retained(const char *owner, const char *topic, const char *payload)
{
    cy_msg *m = msg(topic, payload, 0, true);
    assert_int_equal(pub(m, NULL, owner, false), 0);
    bool kept = cy_router_retained(T.r, topic, strlen(topic)) == m;
    assert_int_equal(kept, T.routed_set_retained);
    cy_msg_unref(m);
    return kept;
}

static int setup(void **state)
{
    memset(&T, 0, sizeof T);
    /* The router borrows cfg: a test sets its limits afterwards. */
    assert_int_equal(cy_router_new(&T.cfg, NULL, &T.stats, SELF, &T.r), 0);
    cy_router_set_hooks(T.r, &hooks);
    return 0;
}

static int teardown(void **state)
{
    cy_alloc_fail_after(-1);
    cy_router_free(T.r);
    for (unsigned i = 0; i < T.n_subs; i++)
        cy_msg_unref(T.subs[i].last);
    return 0;
}

#define TEST(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

/* ---- msg ---- */

static void test_msg_new(void **state)
{
    const uint8_t props[] = {0x01, 0x01, 0x26, 0x00, 0x01, 'k', 0x00, 0x01, 'v'};
    cy_msg *m =
        cy_msg_new(S("a/b"), (const uint8_t *)"hello", 5, props, sizeof props, 2, true, 1234);
    assert_non_null(m);
    assert_int_equal(m->refs, 1);
    assert_string_equal(m->topic, "a/b");
    assert_int_equal(m->topic_len, 3);
    assert_int_equal(m->payload_len, 5);
    assert_memory_equal(m->payload, "hello", 5);
    assert_int_equal(m->props_len, sizeof props);
    assert_memory_equal(m->props, props, sizeof props);
    assert_int_equal(m->qos, 2);
    assert_true(m->retain);
    assert_true(m->expiry_at == 1234);
    assert_int_equal(m->origin, 0);
    assert_true(m->retain_ts == 0);
    assert_true(m->event_seq == 0);

    assert_ptr_equal(cy_msg_ref(m), m);
    assert_int_equal(m->refs, 2);
    cy_msg_unref(m);
    assert_int_equal(m->refs, 1);
    cy_msg_unref(m);
    cy_msg_unref(NULL);

    /* No payload, no properties. */
    m = cy_msg_new(S("t"), NULL, 0, NULL, 0, 0, false, 0);
    assert_non_null(m);
    assert_int_equal(m->payload_len, 0);
    assert_int_equal(m->props_len, 0);
    assert_string_equal(m->topic, "t");
    cy_msg_unref(m);

    cy_alloc_fail_after(0);
    assert_null(cy_msg_new(S("t"), NULL, 0, NULL, 0, 0, false, 0));
    cy_alloc_fail_after(-1);
}

static void test_msg_expired(void **state)
{
    cy_msg *m = cy_msg_new(S("t"), NULL, 0, NULL, 0, 0, false, 0);
    assert_false(cy_msg_expired(m, INT64_MAX));
    cy_msg_unref(m);
    m = cy_msg_new(S("t"), NULL, 0, NULL, 0, 0, false, 1000);
    assert_false(cy_msg_expired(m, 999));
    assert_true(cy_msg_expired(m, 1000));
    assert_true(cy_msg_expired(m, 1001));
    cy_msg_unref(m);
}

static void test_msg_store_round_trip(void **state)
{
    const uint8_t props[] = {0x03, 0x00, 0x01, 'x'};
    cy_msg *m = cy_msg_new(S("s/t"), (const uint8_t *)"pay", 3, props, sizeof props, 2, false, 777);
    m->retain_ts = (42 << 8) | 3;
    cy_store_msg sm = cy_msg_to_store(m, 1, true);
    assert_ptr_equal(sm.topic, m->topic);
    assert_int_equal(sm.topic_len, 3);
    assert_ptr_equal(sm.payload, m->payload);
    assert_int_equal(sm.payload_len, 3);
    assert_ptr_equal(sm.props, m->props);
    assert_int_equal(sm.props_len, sizeof props);
    assert_int_equal(sm.qos, 1);
    assert_true(sm.retain);
    assert_true(sm.expiry_at == 777);
    assert_true(sm.ts == m->retain_ts);
    assert_null(sm.owner);

    cy_msg *b = cy_msg_from_store(&sm);
    assert_non_null(b);
    assert_ptr_not_equal(b->topic, m->topic); /* a copy */
    assert_string_equal(b->topic, "s/t");
    assert_memory_equal(b->payload, "pay", 3);
    assert_memory_equal(b->props, props, sizeof props);
    assert_int_equal(b->qos, 1);
    assert_true(b->retain);
    assert_true(b->expiry_at == 777);
    assert_true(b->retain_ts == m->retain_ts);
    assert_int_equal(b->refs, 1);
    cy_msg_unref(b);
    cy_msg_unref(m);
}

/* ---- routing ---- */

static void test_new_free(void **state)
{
    cy_router *r = NULL;
    cy_router_free(NULL);
    for (long n = 0;; n++) {
        cy_alloc_fail_after(n);
        int rc = cy_router_new(&T.cfg, NULL, &T.stats, 0, &r);
        cy_alloc_fail_after(-1);
        if (rc == 0) break;
        assert_int_equal(rc, CY_ENOMEM);
        assert_true(n < 100);
    }
    cy_router_free(r);
}

static void test_subscribe_unsubscribe(void **state)
{
    fsub *a = mk(&local_kind, "a");
    bool existed = true;
    assert_int_equal(cy_router_subscribe(T.r, &a->base, S("t/+"), 1, 3, &existed), 0);
    assert_false(existed);
    assert_int_equal(cy_router_subscribe(T.r, &a->base, S("t/+"), 2, 4, &existed), 0);
    assert_true(existed);
    assert_int_equal(cy_router_subscriptions(T.r), 1);
    assert_int_equal(cy_router_subscribe(T.r, &a->base, S("t/#/x"), 1, 0, NULL), CY_EINVAL);
    assert_int_equal(cy_router_subscriptions(T.r), 1);

    /* The replacement's options and id are what a delivery carries. */
    pub1("t/1", "x", 2, false);
    assert_int_equal(a->n, 1);
    assert_int_equal(a->qos, 2);
    assert_int_equal(a->n_sub_ids, 1);
    assert_int_equal(a->sub_ids[0], 4);

    assert_int_equal(cy_router_unsubscribe(T.r, &a->base, S("t/+")), 0);
    assert_int_equal(cy_router_unsubscribe(T.r, &a->base, S("t/+")), CY_ENOENT);
    assert_int_equal(cy_router_subscriptions(T.r), 0);
    pub1("t/1", "x", 2, false);
    assert_int_equal(a->n, 0);
}

static void test_fanout(void **state)
{
    fsub *a = mk(&local_kind, "a"), *b = mk(&local_kind, "b"), *c = mk(&event_kind, "c");
    fsub *p = mk(&peer_kind, "p"), *x = mk(&local_kind, "x");
    sub(a, "a/b", 1, 0);
    sub(b, "a/+", 1, 0);
    sub(c, "#", 1, 0);
    sub(p, "+/b", 1, 0);
    sub(x, "a/c", 1, 0);
    assert_int_equal(cy_router_subscriptions(T.r), 5);

    cy_msg *m = msg("a/b", "hello", 1, false);
    assert_int_equal(pub(m, NULL, NULL, true), 0);
    for (fsub *f = a; f <= p; f++) {
        assert_int_equal(f->n, 1);
        assert_ptr_equal(f->last, m);
        assert_int_equal(f->qos, 1);
        assert_false(f->retain);
        assert_false(f->from_peer);
        assert_false(f->set_retained);
        assert_int_equal(f->n_sub_ids, 0);
    }
    assert_int_equal(x->n, 0);
    assert_int_equal(T.n_order, 4);
    assert_int_equal(T.admit_calls, 1);
    assert_int_equal(T.admit_n_matches, 4);
    assert_int_equal(T.routed_calls, 1);
    assert_int_equal(T.routed_n_matches, 4);
    /* The test's reference and one per recipient; not retained. */
    assert_int_equal(m->refs, 5);
    assert_null(cy_router_retained(T.r, S("a/b")));
    cy_msg_unref(m);

    /* Nobody subscribed: the hooks still run. */
    pub1("$nobody/here", "x", 0, false);
    assert_int_equal(T.n_order, 0);
    assert_int_equal(T.routed_calls, 1);
    assert_int_equal(T.routed_n_matches, 0);
}

static void test_merge_overlapping(void **state)
{
    fsub *a = mk(&local_kind, "a"), *b = mk(&local_kind, "b");
    sub(a, "a/+", 0, 5);
    sub(a, "a/#", 2 | CY_SUBOPT_RAP, 7);
    sub(a, "a/b", 1, 0); /* no id: none reported for it */
    sub(a, "#", 1, 11);
    sub(b, "a/b", 1, 0);
    sub(b, "+/+", 0, 0);

    cy_msg *m = msg("a/b", "x", 1, true);
    assert_int_equal(pub(m, NULL, NULL, false), 0);
    assert_int_equal(a->n, 1);
    assert_int_equal(b->n, 1);
    assert_int_equal(T.n_order, 2);
    /* Highest subscribed (2), capped at the published 1. */
    assert_int_equal(a->qos, 1);
    assert_int_equal(b->qos, 1);
    /* One of a's subscriptions asked retain-as-published; none of b's. */
    assert_true(a->retain);
    assert_false(b->retain);
    /* Every id, in the tree's walk order ('#' child, exact child, '+'
     * child: topic_tree.c). */
    assert_int_equal(a->n_sub_ids, 3);
    assert_int_equal(a->sub_ids[0], 11);
    assert_int_equal(a->sub_ids[1], 7);
    assert_int_equal(a->sub_ids[2], 5);
    assert_int_equal(b->n_sub_ids, 0);
    cy_msg_unref(m);

    /* Published at 2, subscribed at most 1. */
    pub1("a/b", "x", 2, false);
    assert_int_equal(b->qos, 1);
    assert_int_equal(a->qos, 2);
    assert_false(a->retain); /* not published retained */
    /* Published at 0. */
    pub1("a/b", "x", 0, false);
    assert_int_equal(a->qos, 0);
    assert_int_equal(b->qos, 0);
}

/* More matching subscriptions than ids kept: one delivery, the first 32 ids. */
static void test_merge_many_ids(void **state)
{
    fsub *a = mk(&local_kind, "a");
    const char *lv[4][2] = {{"a", "+"}, {"b", "+"}, {"c", "+"}, {"d", "+"}};
    uint32_t id = 1;
    char f[32];
    for (unsigned bits = 0; bits < 16; bits++) {
        snprintf(f, sizeof f, "%s/%s/%s/%s", lv[0][bits & 1], lv[1][(bits >> 1) & 1],
                 lv[2][(bits >> 2) & 1], lv[3][(bits >> 3) & 1]);
        sub(a, f, 1, id++);
        strcat(f, "/#");
        sub(a, f, 1, id++);
    }
    sub(a, "#", 2, id++);
    assert_int_equal(cy_router_subscriptions(T.r), 33);
    pub1("a/b/c/d", "x", 2, false);
    assert_int_equal(a->n, 1);
    assert_int_equal(a->qos, 2);
    assert_int_equal(a->n_sub_ids, CY_ROUTE_MAX_SUB_IDS);
    /* Distinct ids. */
    for (unsigned i = 0; i < a->n_sub_ids; i++)
        for (unsigned j = i + 1; j < a->n_sub_ids; j++)
            assert_int_not_equal(a->sub_ids[i], a->sub_ids[j]);
}

static void test_no_local(void **state)
{
    fsub *a = mk(&local_kind, "a"), *b = mk(&local_kind, "b"), *c = mk(&local_kind, "c");
    sub(a, "t", 1 | CY_SUBOPT_NO_LOCAL, 0);
    sub(b, "t", 1 | CY_SUBOPT_NO_LOCAL, 0);
    sub(c, "t", 1 | CY_SUBOPT_NO_LOCAL, 0);
    sub(c, "#", 0, 9); /* no-local is per subscription */

    cy_msg *m = msg("t", "x", 1, false);
    assert_int_equal(pub(m, a, NULL, false), 0);
    assert_int_equal(a->n, 0);
    assert_int_equal(b->n, 1);
    assert_int_equal(c->n, 1);
    cy_msg_unref(m);

    /* c's own: it gets it through "#" only. */
    m = msg("t", "x", 1, false);
    assert_int_equal(pub(m, c, NULL, false), 0);
    assert_int_equal(a->n, 1);
    assert_int_equal(b->n, 1);
    assert_int_equal(c->n, 1);
    assert_int_equal(c->qos, 0);
    assert_int_equal(c->n_sub_ids, 1);
    assert_int_equal(c->sub_ids[0], 9);
    cy_msg_unref(m);

    /* From nobody: everyone. */
    pub1("t", "x", 1, false);
    assert_int_equal(a->n + b->n + c->n, 3);
}

static void test_dollar_topics(void **state)
{
    fsub *hash = mk(&local_kind, "hash"), *plus = mk(&local_kind, "plus");
    fsub *sys = mk(&local_kind, "sys"), *sysplus = mk(&local_kind, "sysplus");
    fsub *shared = mk(&local_kind, "shared");
    sub(hash, "#", 0, 0);
    sub(plus, "+/x", 0, 0);
    sub(sys, "$SYS/#", 0, 0);
    sub(sysplus, "$SYS/+", 0, 0);
    sub(shared, "$share/g/#", 0, 0);

    pub1("$SYS/x", "1", 0, false);
    assert_int_equal(hash->n, 0);
    assert_int_equal(plus->n, 0);
    assert_int_equal(shared->n, 0);
    assert_int_equal(sys->n, 1);
    assert_int_equal(sysplus->n, 1);

    pub1("a/x", "1", 0, false);
    assert_int_equal(hash->n, 1);
    assert_int_equal(plus->n, 1);
    assert_int_equal(shared->n, 1);
    assert_int_equal(sys->n, 0);
    assert_int_equal(sysplus->n, 0);
}

static void test_shared_round_robin(void **state)
{
    fsub *m1 = mk(&local_kind, "m1"), *m2 = mk(&local_kind, "m2"), *m3 = mk(&local_kind, "m3");
    fsub *plain = mk(&local_kind, "plain");
    sub(m1, "$share/g/t/+", 1, 1);
    sub(m2, "$share/g/t/+", 2, 2);
    sub(m3, "$share/g/t/+", 1, 3);
    sub(plain, "t/1", 1, 0);

    /* One member per message, in turn from the first added. */
    fsub *want[] = {m1, m2, m3, m1, m2, m3};
    for (unsigned i = 0; i < 6; i++) {
        pub1("t/1", "x", 2, false);
        assert_int_equal(T.n_order, 2);
        assert_int_equal(plain->n, 1);
        fsub *got = T.order[0] == plain ? T.order[1] : T.order[0];
        assert_ptr_equal(got, want[i]);
        assert_int_equal(got->n, 1);
        assert_int_equal(got->n_sub_ids, 1);
        assert_int_equal(got->sub_ids[0], (uint32_t)(want[i] - m1) + 1);
        assert_int_equal(got->qos, got == m2 ? 2 : 1);
        assert_int_equal(got->n_groups, 0); /* groups are listed for remote kinds only */
    }
}

static void test_shared_grades(void **state)
{
    fsub *m1 = mk(&local_kind, "m1"), *m2 = mk(&local_kind, "m2"), *m3 = mk(&local_kind, "m3");
    fsub *plain = mk(&local_kind, "plain");
    sub(m1, "$share/g/t", 1, 0);
    sub(m2, "$share/g/t", 1, 0);
    sub(m3, "$share/g/t", 1, 0);
    sub(plain, "t", 1, 0);

    /* 2 is preferred over 1, every time. */
    m1->grade = 1;
    m2->grade = 0;
    m3->grade = 2;
    for (int i = 0; i < 4; i++) {
        pub1("t", "x", 1, false);
        assert_int_equal(m3->n, 1);
        assert_int_equal(m1->n + m2->n, 0);
    }
    /* No 2: the 1s take turns; a 0 never gets it. */
    m3->grade = 1;
    unsigned got1 = 0, got3 = 0;
    for (int i = 0; i < 6; i++) {
        pub1("t", "x", 1, false);
        assert_int_equal(m2->n, 0);
        assert_int_equal(m1->n + m3->n, 1);
        got1 += m1->n;
        got3 += m3->n;
    }
    assert_int_equal(got1, 3);
    assert_int_equal(got3, 3);
    /* All 0: the group is skipped, plain subscribers still get it. */
    m1->grade = m3->grade = 0;
    pub1("t", "x", 1, false);
    assert_int_equal(m1->n + m2->n + m3->n, 0);
    assert_int_equal(plain->n, 1);
    assert_int_equal(T.n_order, 1);
}

static void test_shared_groups_listed_for_remote(void **state)
{
    fsub *p = mk(&peer_kind, "p"), *q = mk(&peer_kind, "q"), *l = mk(&local_kind, "l");
    sub(p, "$share/g/t", 1, 0);
    sub(p, "$share/h/t", 1, 0);
    sub(p, "t", 1, 0); /* and a plain one: still one match */
    sub(q, "$share/k/#", 1, 0);
    sub(l, "$share/j/t", 1, 0);

    pub1("t", "x", 1, false);
    assert_int_equal(T.n_order, 3);
    assert_int_equal(p->n, 1);
    assert_int_equal(p->n_groups, 2);
    bool g = false, h = false;
    for (unsigned i = 0; i < p->n_groups; i++) {
        g |= strcmp(p->groups[i], "$share/g/t") == 0;
        h |= strcmp(p->groups[i], "$share/h/t") == 0;
    }
    assert_true(g && h);
    assert_int_equal(q->n, 1);
    assert_int_equal(q->n_groups, 1);
    assert_string_equal(q->groups[0], "$share/k/#");
    assert_int_equal(l->n, 1);
    assert_int_equal(l->n_groups, 0);

    /* A local member in two groups: one delivery, both ids. */
    fsub *two = mk(&local_kind, "two");
    sub(two, "$share/a/u", 1, 21);
    sub(two, "$share/b/u", 0, 22);
    pub1("u", "x", 2, false);
    assert_int_equal(two->n, 1);
    assert_int_equal(two->qos, 1);
    assert_int_equal(two->n_sub_ids, 2);
    assert_true((two->sub_ids[0] == 21 && two->sub_ids[1] == 22) ||
                (two->sub_ids[0] == 22 && two->sub_ids[1] == 21));
}

static void test_local_from_peer(void **state)
{
    fsub *p = mk(&peer_kind, "p"), *l = mk(&local_kind, "l"), *e = mk(&event_kind, "e");
    fsub *g1 = mk(&local_kind, "g1"), *h1 = mk(&local_kind, "h1");
    sub(p, "t", 2, 0);
    sub(p, "$share/g/t", 2, 0);
    sub(l, "t", 2, 0);
    sub(e, "#", 2, 0);
    sub(g1, "$share/g/t", 2, 0);
    sub(h1, "$share/h/t", 2, 0);

    /* The peer is first in group g's turn: it must be passed over. */
    for (int i = 0; i < 3; i++) {
        cy_msg *m = msg("t", "x", 2, true);
        m->origin = 3;
        m->retain_ts = 99;
        reset();
        const cy_str groups[] = {{S("$share/g/t")}};
        cy_router_local(T.r, m, groups, 1);
        assert_int_equal(p->n, 0);
        assert_int_equal(l->n, 1);
        assert_true(l->from_peer);
        assert_int_equal(e->n, 1);
        assert_int_equal(g1->n, 1);
        assert_int_equal(h1->n, 0);
        /* Nothing of the publish path: no hooks, no stamp, no retained. */
        assert_int_equal(T.admit_calls, 0);
        assert_int_equal(T.routed_calls, 0);
        assert_int_equal(m->origin, 3);
        assert_true(m->retain_ts == 99);
        assert_null(cy_router_retained(T.r, S("t")));
        /* Sealed like any route, before the first delivery. */
        assert_true(m->event_seq != 0);
        assert_non_null(strchr(T.log, 'S'));
        assert_true(strchr(T.log, 'S') < strchr(T.log, 'D'));
        assert_null(strchr(strchr(T.log, 'D'), 'S'));
        cy_msg_unref(m);
    }

    /* No groups asked for: no shared delivery at all. */
    cy_msg *m = msg("t", "x", 2, false);
    reset();
    cy_router_local(T.r, m, NULL, 0);
    assert_int_equal(p->n + g1->n + h1->n, 0);
    assert_int_equal(l->n + e->n, 2);
    cy_msg_unref(m);

    /* The same from a local publisher reaches the peer, and one member of each group. */
    pub1("t", "x", 2, false);
    assert_int_equal(p->n, 1);
    assert_int_equal(l->n + e->n, 2);
    assert_int_equal(h1->n, 1);
}

static void test_admit_refuses(void **state)
{
    fsub *a = mk(&local_kind, "a"), *e = mk(&event_kind, "e"), *p = mk(&peer_kind, "p");
    sub(a, "t", 1, 0);
    sub(e, "t", 1, 0);
    sub(p, "t", 1, 0);
    T.admit_rc = 0x97;

    cy_msg *m = msg("t", "x", 1, true);
    assert_int_equal(pub(m, NULL, "c1", true), 0x97);
    assert_int_equal(T.admit_calls, 1);
    assert_int_equal(T.admit_n_matches, 3); /* matched, then refused */
    assert_string_equal(T.log, "A");        /* no seal, delivery or routed */
    assert_int_equal(a->n + e->n + p->n, 0);
    assert_null(cy_router_retained(T.r, S("t")));
    assert_int_equal(T.stats.retained_messages, 0);
    assert_true(m->retain_ts == 0);
    assert_true(m->event_seq == 0);
    assert_int_equal(m->refs, 1);
    cy_msg_unref(m);

    /* Not refusable: admit is not asked. */
    m = msg("t", "x", 1, true);
    assert_int_equal(pub(m, NULL, "c1", false), 0);
    assert_int_equal(T.admit_calls, 0);
    assert_int_equal(a->n + e->n + p->n, 3);
    assert_ptr_equal(cy_router_retained(T.r, S("t")), m);
    assert_int_equal(T.routed_calls, 1);
    cy_msg_unref(m);

    /* Admitted: the whole route. */
    T.admit_rc = 0;
    pub1("t", "y", 1, false);
    m = msg("t", "y", 1, false);
    assert_int_equal(pub(m, NULL, NULL, true), 0);
    assert_int_equal(T.admit_calls, 1);
    assert_int_equal(a->n + e->n + p->n, 3);
    assert_int_equal(T.log[0], 'A');
    cy_msg_unref(m);

    /* No hooks at all. */
    cy_router_set_hooks(T.r, NULL);
    pub1("t", "z", 1, false);
    assert_int_equal(a->n + e->n + p->n, 3);
    assert_int_equal(T.routed_calls, 0);
}

static void test_seal_before_deliver(void **state)
{
    fsub *a = mk(&local_kind, "a"), *b = mk(&local_kind, "b"), *e = mk(&event_kind, "e");
    fsub *e2 = mk(&event_kind, "e2"), *p = mk(&peer_kind, "p");
    /* Subscribed in an order that interleaves kinds in the match list. */
    sub(a, "s/#", 1, 0);
    sub(e, "s/x", 1, 0);
    sub(p, "+/x", 1, 0);
    sub(b, "#", 1, 0);
    sub(e2, "s/+", 1, 0);

    cy_msg *m = msg("s/x", "payload", 1, true);
    assert_int_equal(pub(m, NULL, NULL, true), 0);
    /* admit, a seal per kind that has one (4 of 5), 5 deliveries, routed */
    assert_string_equal(T.log, "ASSSSDDDDDR");
    /* The event kind's seals ran: the last one's number is what everyone saw. */
    assert_true(m->event_seq == T.seq);
    assert_int_equal(T.seq, 2);
    for (fsub *f = a; f <= p; f++) {
        assert_int_equal(f->n, 1);
        assert_ptr_equal(f->last, m);
    }
    assert_int_equal(m->refs, 1 + 5 + 1); /* test, recipients, retained */
    cy_msg_unref(m);
}

static void test_origin_and_stamp(void **state)
{
    fsub *a = mk(&local_kind, "a");
    sub(a, "#", 1, 0);

    cy_msg *m = msg("o/1", "x", 1, false);
    assert_int_equal(pub(m, NULL, NULL, false), 0);
    assert_int_equal(m->origin, SELF);
    assert_true(m->retain_ts == 0);
    assert_false(T.routed_set_retained);
    assert_false(a->set_retained);
    cy_msg_unref(m);

    int64_t before = cy_wall_ms();
    m = msg("o/1", "x", 1, true);
    assert_int_equal(pub(m, NULL, NULL, false), 0);
    int64_t after = cy_wall_ms();
    assert_int_equal(m->origin, SELF);
    assert_int_equal(m->retain_ts & 0xff, SELF);
    assert_true((m->retain_ts >> 8) >= before && (m->retain_ts >> 8) <= after);
    assert_true(T.routed_set_retained);
    assert_true(a->set_retained);
    cy_msg_unref(m);

    /* Clearing is a retained update too. */
    m = msg("o/1", "", 1, true);
    assert_int_equal(pub(m, NULL, NULL, false), 0);
    assert_true(T.routed_set_retained);
    assert_true(m->retain_ts != 0);
    assert_int_equal(a->n, 1); /* the empty message is delivered */
    assert_null(cy_router_retained(T.r, S("o/1")));
    cy_msg_unref(m);
}

/* ---- retained messages ---- */

static void test_retained_set_replace_clear(void **state)
{
    fsub *a = mk(&local_kind, "a");
    sub(a, "r/#", 1, 0);

    cy_msg *m1 = msg("r/1", "one", 1, true);
    assert_int_equal(pub(m1, NULL, "c1", false), 0);
    assert_ptr_equal(cy_router_retained(T.r, S("r/1")), m1);
    assert_int_equal(T.stats.retained_messages, 1);
    assert_int_equal(m1->refs, 3); /* test, a, retained */

    /* Not retained: the retained message stays. */
    pub1("r/1", "plain", 1, false);
    assert_ptr_equal(cy_router_retained(T.r, S("r/1")), m1);

    cy_msg *m2 = msg("r/1", "two", 1, true);
    assert_int_equal(pub(m2, NULL, "c1", false), 0);
    assert_ptr_equal(cy_router_retained(T.r, S("r/1")), m2);
    assert_int_equal(T.stats.retained_messages, 1);
    assert_int_equal(m1->refs, 1); /* the retained tree let it go; a holds m2 */
    cy_msg_unref(m1);

    cy_msg *m3 = msg("r/2", "three", 1, true);
    assert_int_equal(pub(m3, NULL, NULL, false), 0);
    assert_int_equal(T.stats.retained_messages, 2);

    /* An empty payload clears; clearing what is not there changes nothing. */
    pub1("r/1", "", 1, true);
    assert_null(cy_router_retained(T.r, S("r/1")));
    assert_int_equal(T.stats.retained_messages, 1);
    assert_int_equal(m2->refs, 1);
    pub1("r/none", "", 1, true);
    assert_int_equal(T.stats.retained_messages, 1);
    assert_ptr_equal(cy_router_retained(T.r, S("r/2")), m3);

    /* Freed with the router. */
    assert_int_equal(m3->refs, 2);
    cy_router_free(T.r);
    T.r = NULL;
    assert_int_equal(m3->refs, 1);
    cy_msg_unref(m3);
    cy_msg_unref(m2);
}

static cy_msg *stamped(const char *topic, const char *payload, int64_t ts)
{
    cy_msg *m = msg(topic, payload, 1, true);
    m->retain_ts = ts;
    return m;
}

static void test_apply_retained_last_writer_wins(void **state)
{
    cy_msg *m1 = stamped("w/1", "one", (1000 << 8) | 1);
    cy_router_apply_retained(T.r, m1);
    assert_ptr_equal(cy_router_retained(T.r, S("w/1")), m1);
    assert_int_equal(T.stats.retained_messages, 1);

    /* Older: ignored, whatever its shard. */
    cy_msg *old = stamped("w/1", "old", (999 << 8) | 7);
    cy_router_apply_retained(T.r, old);
    assert_ptr_equal(cy_router_retained(T.r, S("w/1")), m1);
    assert_int_equal(old->refs, 1);
    /* Same ms, lower shard: older. */
    cy_msg *tie = stamped("w/1", "tie", (1000 << 8) | 0);
    cy_router_apply_retained(T.r, tie);
    assert_ptr_equal(cy_router_retained(T.r, S("w/1")), m1);

    cy_msg *m2 = stamped("w/1", "two", (1000 << 8) | 2);
    cy_router_apply_retained(T.r, m2);
    assert_ptr_equal(cy_router_retained(T.r, S("w/1")), m2);
    assert_int_equal(m1->refs, 1);
    assert_int_equal(T.stats.retained_messages, 1);

    /* An older clear is ignored too; a newer one clears. */
    cy_msg *clr_old = stamped("w/1", "", (500 << 8) | 2);
    cy_router_apply_retained(T.r, clr_old);
    assert_ptr_equal(cy_router_retained(T.r, S("w/1")), m2);
    cy_msg *clr = stamped("w/1", "", (2000 << 8) | 2);
    cy_router_apply_retained(T.r, clr);
    assert_null(cy_router_retained(T.r, S("w/1")));
    assert_int_equal(T.stats.retained_messages, 0);
    assert_int_equal(m2->refs, 1);
    assert_int_equal(clr->refs, 1);

    /* A local publish older than what a peer set (its clock ahead) is
     * delivered and routed but does not replace it. */
    cy_msg *future = stamped("w/2", "future", (cy_wall_ms() + 3600000) << 8 | 1);
    cy_router_apply_retained(T.r, future);
    cy_msg *now = msg("w/2", "now", 1, true);
    assert_int_equal(pub(now, NULL, NULL, false), 0);
    assert_true(T.routed_set_retained);
    assert_ptr_equal(cy_router_retained(T.r, S("w/2")), future);

    cy_msg *all[] = {m1, old, tie, m2, clr_old, clr, future, now};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        cy_msg_unref(all[i]);
}

static void test_send_retained(void **state)
{
    fsub *a = mk(&local_kind, "a");
    cy_msg *q2 = msg("s/a", "2", 2, true), *q1 = msg("s/b", "1", 1, true);
    cy_msg *q0 = msg("s/c/d", "0", 0, true), *sys = msg("$SYS/s", "s", 1, true);
    cy_msg *other = msg("x", "x", 1, true);
    cy_msg *all[] = {q2, q1, q0, sys, other};
    for (size_t i = 0; i < 5; i++)
        assert_int_equal(pub(all[i], NULL, NULL, false), 0);
    assert_int_equal(T.stats.retained_messages, 5);

    reset();
    cy_router_send_retained(T.r, &a->base, S("s/#"), 1, 9);
    assert_int_equal(T.n_order, 3);
    assert_string_equal(T.log, "DDD"); /* no seal, no hooks */
    unsigned seen = 0;
    for (unsigned i = 0; i < T.n_order; i++)
        assert_ptr_equal(T.order[i], a);
    /* The fake keeps only the last; check each by sending one at a time. */
    struct {
        const char *filter;
        cy_msg *m;
        uint8_t opts, qos;
    } cases[] = {
        {"s/a", q2, 1, 1},
        {"s/a", q2, 2, 2},
        {"s/b", q1, 2, 1},
        {"s/+/d", q0, 2, 0},
        {"s/a", q2, 0 | CY_SUBOPT_RAP, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        reset();
        cy_router_send_retained(T.r, &a->base, cases[i].filter, strlen(cases[i].filter),
                                cases[i].opts, (uint32_t)i + 1);
        assert_int_equal(a->n, 1);
        assert_ptr_equal(a->last, cases[i].m);
        assert_int_equal(a->qos, cases[i].qos);
        assert_true(a->retain); /* always set for a retained message */
        assert_false(a->from_peer);
        assert_int_equal(a->n_sub_ids, 1);
        assert_int_equal(a->sub_ids[0], i + 1);
        seen++;
    }
    assert_int_equal(seen, 5);
    /* No id. */
    reset();
    cy_router_send_retained(T.r, &a->base, S("x"), 1, 0);
    assert_int_equal(a->n, 1);
    assert_int_equal(a->n_sub_ids, 0);
    /* '#' does not reach $SYS; "$SYS/#" does; shared filters get nothing. */
    reset();
    cy_router_send_retained(T.r, &a->base, S("#"), 1, 0);
    assert_int_equal(a->n, 4);
    reset();
    cy_router_send_retained(T.r, &a->base, S("$SYS/#"), 1, 0);
    assert_int_equal(a->n, 1);
    assert_ptr_equal(a->last, sys);
    reset();
    cy_router_send_retained(T.r, &a->base, S("$share/g/#"), 1, 0);
    assert_int_equal(a->n, 0);

    for (size_t i = 0; i < 5; i++)
        cy_msg_unref(all[i]);
}

static void test_send_retained_skips_expired(void **state)
{
    fsub *a = mk(&local_kind, "a");
    int64_t now = cy_wall_ms();
    cy_msg *gone = cy_msg_new(S("e/gone"), (const uint8_t *)"x", 1, NULL, 0, 1, true, now - 1000);
    cy_msg *live =
        cy_msg_new(S("e/live"), (const uint8_t *)"x", 1, NULL, 0, 1, true, now + 3600000);
    gone->retain_ts = live->retain_ts = 1;
    cy_router_apply_retained(T.r, gone);
    cy_router_apply_retained(T.r, live);
    assert_int_equal(T.stats.retained_messages, 2);
    reset();
    cy_router_send_retained(T.r, &a->base, S("e/#"), 1, 0);
    assert_int_equal(a->n, 1);
    assert_ptr_equal(a->last, live);
    /* Left for the sweep: still held. */
    assert_ptr_equal(cy_router_retained(T.r, S("e/gone")), gone);
    cy_msg_unref(gone);
    cy_msg_unref(live);
}

static void test_retain_limit_count(void **state)
{
    fsub *a = mk(&local_kind, "a");
    sub(a, "#", 1, 0);
    sub(a, "$SYS/#", 1, 0);
    T.cfg.max_retained = 2;

    assert_true(pub_retained("c1", "l/1", "x"));
    assert_true(pub_retained("c2", "l/2", "x"));
    assert_int_equal(T.stats.limit_retained, 0);

    cy_msg *m = msg("l/3", "x", 1, true);
    assert_int_equal(cy_router_retain_check(T.r, "c1", m), CY_REASON_QUOTA_EXCEEDED);
    assert_int_equal(T.stats.limit_retained, 1);
    assert_int_equal(cy_router_retain_check(T.r, NULL, m), CY_REASON_QUOTA_EXCEEDED);
    assert_int_equal(T.stats.limit_retained, 2);
    /* Published anyway (a will): routed, delivered, not kept, counted. */
    assert_int_equal(pub(m, NULL, "c1", false), 0);
    assert_int_equal(a->n, 1);
    assert_true(a->retain == false);
    assert_false(T.routed_set_retained);
    assert_true(m->retain_ts == 0);
    assert_null(cy_router_retained(T.r, S("l/3")));
    assert_int_equal(T.stats.limit_retained, 3);
    assert_int_equal(T.stats.retained_messages, 2);
    cy_msg_unref(m);

    /* Always admitted: not retained, clearing, $SYS (and $SYS is not charged). */
    m = msg("l/3", "x", 1, false);
    assert_int_equal(cy_router_retain_check(T.r, "c1", m), 0);
    cy_msg_unref(m);
    m = msg("l/3", "", 1, true);
    assert_int_equal(cy_router_retain_check(T.r, "c1", m), 0);
    cy_msg_unref(m);
    assert_true(pub_retained("c1", "$SYS/a", "x"));
    assert_true(pub_retained(NULL, "$SYS/b", "x"));
    assert_int_equal(T.stats.retained_messages, 4);
    /* Replacing an existing topic adds no message. */
    assert_true(pub_retained("c1", "l/1", "xy"));
    assert_int_equal(T.stats.limit_retained, 3);
    /* Clearing makes room, $SYS notwithstanding. */
    pub1("l/2", "", 0, true);
    assert_true(pub_retained("c1", "l/3", "x"));
    assert_false(pub_retained("c1", "l/4", "x"));
    assert_int_equal(T.stats.limit_retained, 4);
    /* A replica is not checked: the origin admitted it. */
    cy_msg *rep = stamped("l/5", "x", 1);
    cy_router_apply_retained(T.r, rep);
    assert_ptr_equal(cy_router_retained(T.r, S("l/5")), rep);
    cy_msg_unref(rep);
}

static void test_retain_limit_bytes(void **state)
{
    /* topic + payload + props: "b/1" + 10 = 13 */
    T.cfg.max_retained_bytes = 20;
    assert_true(pub_retained("c1", "b/1", "0123456789"));
    assert_false(pub_retained("c2", "b/2", "0123456789")); /* 26 */
    assert_true(pub_retained("c2", "b/2", "0123"));        /* 13 + 7 */
    /* Replacing counts the difference: 20 - 7 + 8 = 21. */
    assert_false(pub_retained("c2", "b/2", "01234"));
    /* 20 - 13 + 12 = 19. */
    assert_true(pub_retained("c1", "b/1", "012345678"));
    assert_true(pub_retained("c2", "b/2", "01234"));
    assert_int_equal(T.stats.limit_retained, 2);
    /* Shrinking is always admitted. */
    T.cfg.max_retained_bytes = 5;
    assert_true(pub_retained("c1", "b/1", "0"));
    assert_false(pub_retained("c1", "b/1", "0123456789"));
    /* $SYS costs nothing. */
    assert_true(pub_retained("c1", "$SYS/big", "0123456789012345678901234567890123456789"));
    assert_int_equal(T.stats.limit_retained, 3);
}

static void test_retain_limit_per_client(void **state)
{
    T.cfg.max_retained_per_client = 1;
    assert_true(pub_retained("c1", "p/1", "x"));
    assert_false(pub_retained("c1", "p/2", "x"));
    assert_true(pub_retained("c2", "p/2", "x"));
    assert_true(pub_retained("c1", "p/1", "xyz")); /* its own: a replacement */
    /* Nobody (NULL owner) is no client: only the node's limits hold. */
    assert_true(pub_retained(NULL, "p/3", "x"));
    assert_int_equal(T.stats.limit_retained, 1);
    /* Taking over c2's topic is one more for c1. */
    assert_false(pub_retained("c1", "p/2", "x"));
    /* Clearing its topic frees c1. */
    pub1("p/1", "", 0, true);
    assert_true(pub_retained("c1", "p/4", "x"));
    assert_int_equal(T.stats.limit_retained, 2);

    /* Bytes per client: "q/1" + 3 = 6 each. */
    T.cfg.max_retained_per_client = 0;
    T.cfg.max_retained_bytes_per_client = 12;
    assert_true(pub_retained("d1", "q/1", "abc"));
    assert_true(pub_retained("d1", "q/2", "abc"));
    assert_false(pub_retained("d1", "q/3", "abc"));
    assert_true(pub_retained("d2", "q/3", "abc"));
    assert_false(pub_retained("d1", "q/1", "abcd")); /* 12 - 6 + 7 */
    assert_true(pub_retained("d1", "q/1", "ab"));
}

static void test_load_retained(void **state)
{
    T.cfg.max_retained_per_client = 1;
    cy_store_msg sm = {.topic = "st/1",
                       .topic_len = 4,
                       .payload = (const uint8_t *)"v",
                       .payload_len = 1,
                       .qos = 1,
                       .ts = 12345,
                       .owner = "c1",
                       .owner_len = 2};
    assert_int_equal(cy_router_load_retained(T.r, &sm), 0);
    cy_msg *m = cy_router_retained(T.r, S("st/1"));
    assert_non_null(m);
    assert_true(m->retain);
    assert_int_equal(m->qos, 1);
    assert_true(m->retain_ts == 12345);
    assert_int_equal(T.stats.retained_messages, 1);
    /* Charged to its owner as when it was set. */
    assert_false(pub_retained("c1", "st/2", "x"));
    assert_true(pub_retained("c2", "st/2", "x"));
    /* Loaded again: replaced, counted once. */
    sm.payload = (const uint8_t *)"w";
    assert_int_equal(cy_router_load_retained(T.r, &sm), 0);
    assert_int_equal(T.stats.retained_messages, 2);
    /* Not a valid name: skipped. */
    cy_store_msg bad = sm;
    bad.topic = "a/+";
    bad.topic_len = 3;
    assert_int_equal(cy_router_load_retained(T.r, &bad), 0);
    assert_int_equal(T.stats.retained_messages, 2);
    cy_alloc_fail_after(0);
    assert_int_equal(cy_router_load_retained(T.r, &sm), CY_ENOMEM);
    cy_alloc_fail_after(-1);
}

/* Every allocation of a retained publish failing in turn: nothing leaks,
 * and the counter agrees with what is held. */
static void test_publish_alloc_failures(void **state)
{
    /* Two plain subscribers and a peer that serves a shared group: three
     * matches, one group listed. */
    fsub *subs[3];
    for (int i = 0; i < 3; i++)
        subs[i] = mk(i == 2 ? &peer_kind : &local_kind, "s");
    bool clean = false;
    for (long n = 0; n < 64 && !clean; n++) {
        cy_router_free(T.r);
        memset(&T.stats, 0, sizeof T.stats);
        assert_int_equal(cy_router_new(&T.cfg, NULL, &T.stats, SELF, &T.r), 0);
        cy_router_set_hooks(T.r, &hooks);
        /* A subscriber's match scratch belongs to one router. */
        for (int i = 0; i < 3; i++)
            cy_subscriber_init(&subs[i]->base, subs[i]->base.kind);
        sub(subs[0], "f/+/x", 1, 0);
        sub(subs[1], "f/a/#", 1, 0);
        sub(subs[2], "$share/g/f/#", 1, 0);
        cy_msg *m = msg("f/a/x", "payload", 1, true);
        reset();
        cy_alloc_fail_after(n);
        int rc = cy_router_publish(T.r, m, NULL, "c1", false);
        cy_alloc_fail_after(-1);
        assert_int_equal(rc, 0);
        cy_msg *held = cy_router_retained(T.r, S("f/a/x"));
        assert_true(held == NULL || held == m);
        assert_int_equal(T.stats.retained_messages, held ? 1 : 0);
        unsigned got = subs[0]->n + subs[1]->n + subs[2]->n;
        /* A recipient lost to memory is counted as a drop. */
        assert_int_equal(got + T.stats.messages_dropped, 3);
        assert_int_equal(m->refs, 1 + got + (held ? 1 : 0));
        assert_int_equal(T.routed_calls, 1);
        clean = held && got == 3 && subs[2]->n_groups == 1;
        cy_msg_unref(m);
    }
    assert_true(clean);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_msg_new),
        cmocka_unit_test(test_msg_expired),
        cmocka_unit_test(test_msg_store_round_trip),
        TEST(test_new_free),
        TEST(test_subscribe_unsubscribe),
        TEST(test_fanout),
        TEST(test_merge_overlapping),
        TEST(test_merge_many_ids),
        TEST(test_no_local),
        TEST(test_dollar_topics),
        TEST(test_shared_round_robin),
        TEST(test_shared_grades),
        TEST(test_shared_groups_listed_for_remote),
        TEST(test_local_from_peer),
        TEST(test_admit_refuses),
        TEST(test_seal_before_deliver),
        TEST(test_origin_and_stamp),
        TEST(test_retained_set_replace_clear),
        TEST(test_apply_retained_last_writer_wins),
        TEST(test_send_retained),
        TEST(test_send_retained_skips_expired),
        TEST(test_retain_limit_count),
        TEST(test_retain_limit_bytes),
        TEST(test_retain_limit_per_client),
        TEST(test_load_retained),
        TEST(test_publish_alloc_failures),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
