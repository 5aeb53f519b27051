/* test_device_presence: presence and status events (src/device/presence.c)
 * on the device layer, driven through a fake link, and their pure parts.
 *
 * The layer and the link are device_testlib.h's (the layer as a shard
 * builds it). A watcher (a subscriber of a fake router kind on
 * devices/+/events/cyan/#) sees the status events as every consumer does:
 * published into the router by the layer's tick. Time is the tick's argument: the tests move it forward
 * instead of sleeping. Restarts are real: everything is freed and the store
 * closed, then opened and loaded again from the same file.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "cluster/cluster.h"
#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_config.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "core/cy_reason.h"
#include "device/device.h"
#include "device/device_int.h"
#include "device/link.h"
#include "device/session.h"
#include "router/msg.h"
#include "router/router.h"
#include "store/store.h"

#include "device_testlib.h"

#define S(lit) lit, sizeof(lit) - 1
#define DEV "0123456789abcdef01234567"
#define DEV2 "89abcdef0123456789abcdef"
#define MAX_SEEN 64

/* A connection as a transport makes it: session, attach, who, online. */
static cy_session *connect_(flink *f, const char *id, bool internal)
{
    cy_session *s = cy_session_find(T.d, id, strlen(id));
    if (s && s->link) s->link->ops->close(s->link, CY_REASON_TAKEN_OVER, "taken over");
    s = cy_session_find(T.d, id, strlen(id));
    if (!s) s = cy_session_new(T.d, id, strlen(id));
    assert_non_null(s);
    cy_session_attach(T.d, s, &f->base);
    assert_int_equal(cy_session_set_who(T.d, s, id, strlen(id), internal), 0);
    f->s = s;
    f->device = true;
    cy_device_online(T.d, s, &f->base);
    return s;
}

static void disconnect_(flink *f, cy_presence_reason why)
{
    cy_session *s = f->s;
    assert_non_null(s);
    f->s = NULL;
    cy_device_offline(T.d, s, &f->base, why);
    cy_session_detach(T.d, s, false);
}

/* ---- a watcher of status events ---- */

typedef struct seen {
    char device[CY_DEVICE_ID_LEN + 1];
    json_t *data;
} seen;

static struct {
    cy_subscriber sub;
    unsigned n;
    seen v[MAX_SEEN];
} W;

static void w_deliver(void *ctx, cy_subscriber *s, const cy_route *r, const cy_match *x)
{
    (void)ctx;
    (void)s;
    (void)x;
    assert_true(W.n < MAX_SEEN);
    seen *e = &W.v[W.n++];
    /* devices/<id>/events/cyan/status */
    assert_true(r->m->topic_len == 8 + CY_DEVICE_ID_LEN + 19);
    assert_memory_equal(r->m->topic + 8 + CY_DEVICE_ID_LEN, "/events/cyan/status", 19);
    memcpy(e->device, r->m->topic + 8, CY_DEVICE_ID_LEN);
    e->device[CY_DEVICE_ID_LEN] = '\0';
    e->data = json_loadb((const char *)r->m->payload, r->m->payload_len, 0, NULL);
    assert_non_null(e->data);
    assert_int_equal(r->m->qos, 0);
}

static const cy_sub_kind w_kind = {.name = "watcher", .deliver = w_deliver};

static void watch(void)
{
    cy_subscriber_init(&W.sub, &w_kind);
    assert_int_equal(cy_router_subscribe(T.r, &W.sub, S("devices/+/events/cyan/#"), 0, 0, NULL), 0);
}

static void unwatch(void)
{
    cy_router_unsubscribe(T.r, &W.sub, S("devices/+/events/cyan/#"));
    for (unsigned i = 0; i < W.n; i++)
        json_decref(W.v[i].data);
    memset(&W, 0, sizeof(W));
}

static const char *field(unsigned i, const char *key)
{
    assert_true(i < W.n);
    return json_string_value(json_object_get(W.v[i].data, key));
}

static json_int_t coalesced(unsigned i)
{
    assert_true(i < W.n);
    return json_integer_value(json_object_get(W.v[i].data, "coalesced"));
}

/* Wall ms of an API time ("2026-11-24T06:00:00.000Z"). */
static int64_t iso_ms(const char *t)
{
    assert_non_null(t);
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    int ms = 0;
    assert_int_equal(sscanf(t, "%4d-%2d-%2dT%2d:%2d:%2d.%3dZ", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                            &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &ms),
                     7);
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000 + ms;
}

/* Two API times a few ms apart at most: a time read from a link is its
 * monotonic time seen through the wall clock, sampled at two moments. */
static void assert_near(json_t *a, json_t *b)
{
    int64_t x = iso_ms(json_string_value(a)), y = iso_ms(json_string_value(b));
    assert_true(x - y <= 50 && y - x <= 50);
}

/* ---- the layer ---- */

/* A restart without the layer's stop (cy_devices_stop): what the layer
 * kept only in memory is gone, as in a crash; then a new start. */
static void layer_restart(void)
{
    unwatch();
    cyt_layer_close();
    memset(&T.stats, 0, sizeof(T.stats));
    cyt_layer_open();
    assert_int_equal(cy_devices_load_presence(T.d, NULL), 0);
    watch();
}

static int setup(void **state)
{
    (void)state;
    memset(&W, 0, sizeof(W));
    if (cyt_layer_setup("/tmp/cyan-presence-XXXXXX")) return -1;
    cyt_layer_open();
    watch();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unwatch();
    cyt_layer_teardown();
    return 0;
}

/* ---- pure parts ---- */

static void test_reasons(void **state)
{
    (void)state;
    for (int i = 0; i < CY_PRESENCE_NREASONS; i++) {
        const char *n = cy_presence_reason_name(i);
        assert_non_null(n);
        assert_string_not_equal(n, "unknown");
        for (int j = 0; j < i; j++)
            assert_string_not_equal(n, cy_presence_reason_name(j));
    }
    assert_string_equal(cy_presence_reason_name(-1), "unknown");
    assert_string_equal(cy_presence_reason_name(CY_PRESENCE_NREASONS), "unknown");
    assert_string_equal(cy_presence_reason_name(CY_PRESENCE_KEEPALIVE_TIMEOUT),
                        "keepalive_timeout");
    assert_string_equal(cy_presence_reason_name(CY_PRESENCE_SHARD_RESTART), "shard_restart");

    assert_int_equal(cy_presence_reason_of(0, true), CY_PRESENCE_DISCONNECT);
    assert_int_equal(cy_presence_reason_of(0, false), CY_PRESENCE_CONNECTION_LOST);
    assert_int_equal(cy_presence_reason_of(0x8D, false), CY_PRESENCE_KEEPALIVE_TIMEOUT);
    assert_int_equal(cy_presence_reason_of(CY_REASON_TAKEN_OVER, false), CY_PRESENCE_TAKEOVER);
    /* a code wins over a goodbye: a shutdown marks every connection clean */
    assert_int_equal(cy_presence_reason_of(0x8B, true), CY_PRESENCE_SHUTDOWN);
    assert_int_equal(cy_presence_reason_of(CY_REASON_QUOTA_EXCEEDED, false), CY_PRESENCE_LIMIT);
    assert_int_equal(cy_presence_reason_of(0x81, false), CY_PRESENCE_PROTOCOL_ERROR);
    assert_int_equal(cy_presence_reason_of(0x82, true), CY_PRESENCE_PROTOCOL_ERROR);
    assert_int_equal(cy_presence_reason_of(CY_REASON_NOT_AUTHORIZED, false),
                     CY_PRESENCE_PROTOCOL_ERROR);
    assert_int_equal(cy_presence_reason_of(0x80, false), CY_PRESENCE_SERVER_ERROR);
    assert_int_equal(cy_presence_reason_of(0x89, false), CY_PRESENCE_SERVER_ERROR);
    assert_int_equal(cy_presence_reason_of(0x04, true), CY_PRESENCE_DISCONNECT);
}

static void test_allow(void **state)
{
    (void)state;
    int64_t tat = 0, retry = -1;
    /* a burst of 4, then one per 10 */
    for (int i = 0; i < 4; i++)
        assert_true(cy_presence_allow(&tat, 1000, 10, 4, &retry));
    assert_false(cy_presence_allow(&tat, 1000, 10, 4, &retry));
    assert_int_equal(retry, 1010);
    assert_false(cy_presence_allow(&tat, 1009, 10, 4, &retry));
    assert_true(cy_presence_allow(&tat, 1010, 10, 4, &retry));
    assert_false(cy_presence_allow(&tat, 1015, 10, 4, &retry));
    assert_int_equal(retry, 1020);
    /* idle long enough: the whole burst again, never more */
    for (int i = 0; i < 4; i++)
        assert_true(cy_presence_allow(&tat, 5000, 10, 4, NULL));
    assert_false(cy_presence_allow(&tat, 5000, 10, 4, NULL));
    /* no interval: no limit; burst 0 counts as 1 */
    int64_t t2 = 0;
    for (int i = 0; i < 100; i++)
        assert_true(cy_presence_allow(&t2, 0, 0, 4, NULL));
    assert_true(cy_presence_allow(&t2, 100, 50, 0, NULL));
    assert_false(cy_presence_allow(&t2, 100, 50, 0, &retry));
    assert_int_equal(retry, 150);
}

static void test_payload(void **state)
{
    (void)state;
    char buf[256];
    int n = cy_presence_payload(buf, sizeof(buf), false, CY_PRESENCE_KEEPALIVE_TIMEOUT, "mqtt5",
                                1700000000123, 1700000000000, 3);
    assert_true(n > 0 && (size_t)n == strlen(buf));
    json_t *o = json_loads(buf, JSON_REJECT_DUPLICATES, NULL);
    assert_non_null(o);
    assert_int_equal(json_object_size(o), 6);
    assert_string_equal(json_string_value(json_object_get(o, "status")), "offline");
    assert_string_equal(json_string_value(json_object_get(o, "reason")), "keepalive_timeout");
    assert_string_equal(json_string_value(json_object_get(o, "protocol")), "mqtt5");
    assert_string_equal(json_string_value(json_object_get(o, "at")), "2023-11-14T22:13:20.123Z");
    assert_string_equal(json_string_value(json_object_get(o, "last_heard")),
                        "2023-11-14T22:13:20.000Z");
    assert_int_equal(json_integer_value(json_object_get(o, "coalesced")), 3);
    json_decref(o);
    /* unknowns are null; a protocol that would need escaping is not shown */
    n = cy_presence_payload(buf, sizeof(buf), true, 99, "a\"b", 0, 0, 0);
    assert_true(n > 0);
    o = json_loads(buf, 0, NULL);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "status")), "online");
    assert_string_equal(json_string_value(json_object_get(o, "reason")), "unknown");
    assert_true(json_is_null(json_object_get(o, "protocol")));
    assert_true(json_is_null(json_object_get(o, "at")));
    assert_true(json_is_null(json_object_get(o, "last_heard")));
    json_decref(o);
    n = cy_presence_payload(buf, sizeof(buf), true, 0, NULL, 1, 1, 0);
    assert_true(n > 0);
    /* too small: refused, never cut */
    assert_int_equal(cy_presence_payload(buf, 40, true, 0, "coap", 1, 1, 0), CY_ERANGE);
    assert_int_equal(cy_presence_payload(buf, (size_t)n, true, 0, NULL, 1, 1, 0), CY_ERANGE);
    assert_int_equal(cy_presence_payload(buf, (size_t)n + 1, true, 0, NULL, 1, 1, 0), n);
}

static void test_reserved_and_describe(void **state)
{
    (void)state;
    bool retain = false, reply = false;
    const char *why = NULL;
    /* cyan/... events are the server's, for everyone */
    assert_int_equal(cy_device_admit(T.d, S(DEV), NULL, S("devices/" DEV "/events/cyan/status"),
                                     NULL, 0, &retain, &reply, &why),
                     CY_REASON_NOT_AUTHORIZED);
    assert_non_null(strstr(why, "cyan/"));
    assert_int_equal(
        cy_device_admit(T.d, S(DEV), NULL, S("events/cyan/x"), NULL, 0, &retain, &reply, &why),
        CY_REASON_NOT_AUTHORIZED);
    assert_int_equal(cy_device_admit(T.d, NULL, 0, NULL, S("events/cyan/status"), NULL, 0, &retain,
                                     &reply, &why),
                     CY_REASON_NOT_AUTHORIZED);
    assert_int_equal(cy_device_admit(T.d, NULL, 0, NULL, S("devices/" DEV2 "/events/cyan/a/b"),
                                     NULL, 0, &retain, &reply, &why),
                     CY_REASON_NOT_AUTHORIZED);
    /* names that only look alike are anyone's */
    assert_int_equal(cy_device_admit(T.d, S(DEV), NULL, S("devices/" DEV "/events/cyanide"), NULL,
                                     0, &retain, &reply, &why),
                     0);
    assert_int_equal(cy_device_admit(T.d, S(DEV), NULL, S("devices/" DEV "/events/cyan"), NULL, 0,
                                     &retain, &reply, &why),
                     0);
    assert_int_equal(cy_device_admit(T.d, S(DEV), NULL, S("events/x/cyan/status"), NULL, 0, &retain,
                                     &reply, &why),
                     0);
    assert_int_equal(cy_device_admit(T.d, S(DEV), NULL, S("devices/" DEV "/cyan/status"), NULL, 0,
                                     &retain, &reply, &why),
                     0);
    assert_int_equal(
        cy_device_admit(T.d, NULL, 0, NULL, S("devices"), NULL, 0, &retain, &reply, &why), 0);

    /* describe: version and model are optional printable strings of 1..64 */
#define OK(text) cy_device_describe_ok((const uint8_t *)(text), strlen(text))
    assert_true(OK("{\"functions\":[\"a\"],\"version\":\"1.4.2\",\"model\":\"boron-lte\"}"));
    assert_true(OK("{\"version\":\"x\"}"));
    assert_true(OK("{\"version\":\""
                   "0123456789012345678901234567890123456789012345678901234567890123"
                   "\"}"));
    assert_false(OK("{\"version\":\""
                    "01234567890123456789012345678901234567890123456789012345678901234"
                    "\"}"));
    assert_false(OK("{\"version\":\"\"}"));
    assert_false(OK("{\"version\":3}"));
    assert_false(OK("{\"model\":null}"));
    assert_false(OK("{\"model\":\"a\\nb\"}"));
    assert_false(OK("{\"model\":\"caf\\u00e9\"}"));
    assert_true(OK("{\"other\":{\"anything\":[1,2]}}")); /* other keys: not shown, not judged */
#undef OK
    json_t *d = json_loads("{\"version\":\"1.4.2\",\"model\":\"a\\tb\"}", 0, NULL);
    json_t *v = cy_device_info(d, "version"), *m = cy_device_info(d, "model"),
           *x = cy_device_info(NULL, "version");
    assert_string_equal(json_string_value(v), "1.4.2");
    assert_true(json_is_null(m));
    assert_true(json_is_null(x));
    json_decref(v);
    json_decref(m);
    json_decref(x);
    json_decref(d);
}

/* ---- status events ---- */

static void test_online_offline(void **state)
{
    (void)state;
    T.cfg.presence_flap_interval = 0; /* no limit per device here: see test_flapping */
    int64_t now = cy_mono_ms();
    flink f;
    flink_init(&f, "mqtt5");
    int64_t t0 = cy_wall_ms();
    connect_(&f, DEV, false);
    assert_int_equal(W.n, 0); /* queued, logged by the tick */
    assert_int_equal(cy_devices_presence_queued(T.d), 1);
    cy_devices_tick(T.d, now);
    assert_int_equal(W.n, 1);
    assert_string_equal(W.v[0].device, DEV);
    assert_string_equal(field(0, "status"), "online");
    assert_string_equal(field(0, "reason"), "connect");
    assert_string_equal(field(0, "protocol"), "mqtt5");
    json_t *lo = cy_device_time(t0), *hi = cy_device_time(cy_wall_ms());
    assert_true(strcmp(field(0, "at"), json_string_value(lo)) >= 0);
    assert_true(strcmp(field(0, "at"), json_string_value(hi)) <= 0);
    json_decref(lo);
    json_decref(hi);
    assert_int_equal(coalesced(0), 0);
    assert_int_equal(T.stats.presence_events, 1);

    disconnect_(&f, CY_PRESENCE_KEEPALIVE_TIMEOUT);
    cy_devices_tick(T.d, now + 100);
    assert_int_equal(W.n, 2);
    assert_string_equal(field(1, "status"), "offline");
    assert_string_equal(field(1, "reason"), "keepalive_timeout");
    assert_string_equal(field(1, "protocol"), "mqtt5");

    /* a takeover: the old link's offline, then the new one's online */
    flink g, h;
    flink_init(&g, "mqtt3.1.1");
    flink_init(&h, "coaps");
    connect_(&g, DEV, false);
    connect_(&h, DEV, false);
    assert_int_equal(g.n_close, 1);
    cy_devices_tick(T.d, now + 200);
    assert_int_equal(W.n, 5);
    assert_string_equal(field(2, "status"), "online");
    assert_string_equal(field(2, "protocol"), "mqtt3.1.1");
    assert_string_equal(field(3, "status"), "offline");
    assert_string_equal(field(3, "reason"), "takeover");
    assert_string_equal(field(4, "status"), "online");
    assert_string_equal(field(4, "protocol"), "coaps");

    /* a stale link's offline changes nothing */
    cy_session *s = cy_session_find(T.d, S(DEV));
    cy_device_offline(T.d, s, &g.base, CY_PRESENCE_CONNECTION_LOST);
    cy_devices_tick(T.d, now + 300);
    assert_int_equal(W.n, 5);

    /* deleted: its last word says so */
    cy_device_kick(T.d, DEV);
    assert_int_equal(h.n_close, 1);
    cy_devices_tick(T.d, now + 400);
    assert_int_equal(W.n, 6);
    assert_string_equal(field(5, "status"), "offline");
    assert_string_equal(field(5, "reason"), "deleted");

    /* canaries and applications: presence without events, or none */
    flink c, a;
    flink_init(&c, "mqtt5");
    flink_init(&a, "mqtt5");
    connect_(&c, DEV2, true);
    cy_session *app = cy_session_new(T.d, S("app"));
    cy_session_attach(T.d, app, &a.base);
    cy_devices_tick(T.d, now + 500);
    disconnect_(&c, CY_PRESENCE_DISCONNECT);
    cy_devices_tick(T.d, now + 600);
    assert_int_equal(W.n, 6);
    assert_int_equal(T.stats.presence_events, 6);
    cy_session_detach(T.d, app, false);
}

/* A flapping device: 4 events at once, then its changes are held and one
 * event says where it ended, with what it stands for. */
static void test_flapping(void **state)
{
    (void)state;
    T.cfg.presence_flap_interval = 10;
    int64_t now = cy_mono_ms();
    flink f[4];
    for (int i = 0; i < 4; i++) { /* on off, on off, on off, on */
        flink_init(&f[i], "mqtt5");
        connect_(&f[i], DEV, false);
        if (i < 3) disconnect_(&f[i], i % 2 ? CY_PRESENCE_DISCONNECT : CY_PRESENCE_CONNECTION_LOST);
    }
    cy_devices_tick(T.d, now);
    assert_int_equal(W.n, 4);
    assert_string_equal(field(3, "status"), "offline");
    /* its limit allows the next one 10 s after the first */
    cy_devices_tick(T.d, now + 5000);
    assert_int_equal(W.n, 4);
    cy_devices_tick(T.d, now + 10100);
    assert_int_equal(W.n, 5);
    assert_string_equal(field(4, "status"), "online");
    assert_string_equal(field(4, "reason"), "connect");
    assert_int_equal(coalesced(4), 2);
    assert_int_equal(T.stats.presence_coalesced, 2);

    /* flapping back to where it was announced: no event, only the count */
    cy_session *s = cy_session_find(T.d, S(DEV));
    assert_non_null(s);
    flink *cur = (flink *)s->link;
    disconnect_(cur, CY_PRESENCE_CONNECTION_LOST); /* held: the limit is spent */
    flink g;
    flink_init(&g, "mqtt5");
    connect_(&g, DEV, false);
    cy_devices_tick(T.d, now + 60000);
    assert_int_equal(W.n, 5);
    assert_int_equal(T.stats.presence_coalesced, 4);
    /* and its next change is told when its limit allows */
    disconnect_(&g, CY_PRESENCE_DISCONNECT);
    cy_devices_tick(T.d, now + 60100);
    assert_int_equal(W.n, 6);
    assert_string_equal(field(5, "status"), "offline");
    assert_string_equal(field(5, "reason"), "disconnect");
    assert_int_equal(coalesced(5), 0);
}

/* The shard's rate: a crowd's events wait in order, each with its time. */
static void test_rate(void **state)
{
    (void)state;
    T.cfg.presence_event_rate = 2;
    int64_t now = cy_mono_ms();
    char ids[5][CY_DEVICE_ID_LEN + 1];
    flink f[5];
    for (int i = 0; i < 5; i++) {
        snprintf(ids[i], sizeof(ids[i]), "aaaaaaaaaaaaaaaaaaaaaaa%d", i);
        flink_init(&f[i], "mqtt5");
        connect_(&f[i], ids[i], false);
    }
    assert_int_equal(cy_devices_presence_queued(T.d), 5);
    cy_devices_tick(T.d, now); /* a second's worth at once */
    assert_int_equal(W.n, 2);
    cy_devices_tick(T.d, now + 499);
    assert_int_equal(W.n, 2);
    cy_devices_tick(T.d, now + 500);
    assert_int_equal(W.n, 3);
    cy_devices_tick(T.d, now + 5000);
    assert_int_equal(W.n, 5);
    for (int i = 0; i < 5; i++)
        assert_string_equal(W.v[i].device, ids[i]); /* in order */
    assert_int_equal(cy_devices_presence_queued(T.d), 0);

    /* 0: no status events at all */
    T.cfg.presence_event_rate = 0;
    disconnect_(&f[0], CY_PRESENCE_DISCONNECT);
    cy_devices_tick(T.d, now + 6000);
    assert_int_equal(W.n, 5);
    assert_int_equal(cy_devices_presence_queued(T.d), 0);
}

/* Last heard and last round trip survive a restart; a device that was
 * online when its shard died is told offline, once. */
static void test_restart(void **state)
{
    (void)state;
    int64_t now = cy_mono_ms();
    flink f, g;
    flink_init(&f, "mqtt5");
    flink_init(&g, "coap");
    connect_(&f, DEV, false);
    connect_(&g, DEV2, false);
    f.heard = (int64_t)uv_now(&T.loop) - 60000; /* a minute ago */
    dev_presence *pr = cy_presence_get(T.d, S(DEV2), false);
    assert_non_null(pr);
    pr->last_rtt = 1700000000123;
    cy_devices_tick(T.d, now);
    assert_int_equal(W.n, 2);
    disconnect_(&g, CY_PRESENCE_DISCONNECT);
    cy_devices_tick(T.d, now + 100);
    assert_int_equal(W.n, 3);
    json_t *before = cy_device_presence(T.d, DEV);
    json_t *before2 = cy_device_presence(T.d, DEV2);
    assert_int_equal(cy_store_commit(T.store), 0);

    layer_restart(); /* killed: DEV's session ends without a word */
    json_t *p = cy_device_presence(T.d, DEV);
    assert_false(json_is_true(json_object_get(p, "online")));
    assert_near(json_object_get(p, "last_heard"), json_object_get(before, "last_heard"));
    json_decref(p);
    p = cy_device_presence(T.d, DEV2);
    assert_true(
        json_equal(json_object_get(p, "last_heard"), json_object_get(before2, "last_heard")));
    assert_string_equal(json_string_value(json_object_get(p, "last_round_trip")),
                        "2023-11-14T22:13:20.123Z");
    json_decref(p);
    json_decref(before);
    json_decref(before2);
    assert_int_equal(cy_devices_presence_queued(T.d), 1);
    cy_devices_tick(T.d, cy_mono_ms());
    assert_int_equal(W.n, 1);
    assert_string_equal(W.v[0].device, DEV);
    assert_string_equal(field(0, "status"), "offline");
    assert_string_equal(field(0, "reason"), "shard_restart");
    assert_string_equal(field(0, "protocol"), "mqtt5");
    assert_int_equal(cy_store_commit(T.store), 0);

    /* told once: the next start has nothing to say */
    layer_restart();
    assert_int_equal(cy_devices_presence_queued(T.d), 0);
    cy_devices_tick(T.d, cy_mono_ms());
    assert_int_equal(W.n, 0);
}

/* Times that moved are written by the sweep's flush, not per packet; a
 * crash loses what moved since. */
static void test_flush(void **state)
{
    (void)state;
    T.cfg.presence_flush_interval = 1;
    int64_t now = cy_mono_ms();
    flink f;
    flink_init(&f, "mqtt5");
    connect_(&f, DEV, false);
    cy_devices_tick(T.d, now);
    assert_int_equal(cy_store_commit(T.store), 0);
    cy_presence_flush(T.d, now, true); /* nothing moved: nothing written; next due at +1 s */
    assert_int_equal(cy_store_pending(T.store), 0);
    /* heard again later: in memory only, until a flush */
    f.heard = (int64_t)uv_now(&T.loop) + 5000;
    json_t *p = cy_device_presence(T.d, DEV);
    json_t *heard = json_incref(json_object_get(p, "last_heard"));
    json_decref(p);
    cy_presence_flush(T.d, now, false); /* not due yet: nothing written */
    assert_int_equal(cy_store_pending(T.store), 0);
    cy_presence_flush(T.d, now + 1500, false);
    assert_int_equal(cy_store_pending(T.store), 1);
    cy_presence_flush(T.d, now + 3000, false); /* nothing moved since */
    assert_int_equal(cy_store_pending(T.store), 1);
    assert_int_equal(cy_store_commit(T.store), 0);
    layer_restart();
    p = cy_device_presence(T.d, DEV);
    assert_near(json_object_get(p, "last_heard"), heard);
    json_decref(p);
    json_decref(heard);
}

/* A clean stop logs what waits, whatever the rate or the limits. */
static void test_stop(void **state)
{
    (void)state;
    T.cfg.presence_event_rate = 1;
    int64_t now = cy_mono_ms();
    flink f, g;
    flink_init(&f, "mqtt5");
    flink_init(&g, "mqtt5");
    connect_(&f, DEV, false);
    connect_(&g, DEV2, false);
    cy_devices_tick(T.d, now);
    assert_int_equal(W.n, 1);
    disconnect_(&f, CY_PRESENCE_SHUTDOWN);
    disconnect_(&g, CY_PRESENCE_SHUTDOWN);
    cy_devices_stop(T.d);
    assert_int_equal(W.n, 4);
    assert_string_equal(W.v[1].device, DEV2);
    assert_string_equal(field(1, "status"), "online");
    assert_string_equal(field(3, "reason"), "shutdown");
    assert_int_equal(cy_devices_presence_queued(T.d), 0);
    assert_int_equal(cy_store_commit(T.store), 0);
    layer_restart(); /* nothing to tell: both were told offline */
    assert_int_equal(cy_devices_presence_queued(T.d), 0);
}

/* No memory for a record: the change is held, not lost, and told later. */
static void test_no_memory(void **state)
{
    (void)state;
    int64_t now = cy_mono_ms();
    flink f;
    flink_init(&f, "mqtt5");
    connect_(&f, DEV, false);
    cy_devices_tick(T.d, now);
    assert_int_equal(W.n, 1);
    cy_alloc_fail_after(0); /* the record's allocation fails */
    disconnect_(&f, CY_PRESENCE_DISCONNECT);
    cy_alloc_fail_after(-1);
    assert_int_equal(cy_devices_presence_queued(T.d), 0);
    cy_devices_tick(T.d, now + 100); /* held for a second */
    assert_int_equal(W.n, 1);
    cy_devices_tick(T.d, now + 2000);
    assert_int_equal(W.n, 2);
    assert_string_equal(field(1, "status"), "offline");
    assert_string_equal(field(1, "reason"), "disconnect");
    assert_int_equal(coalesced(1), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reasons),
        cmocka_unit_test(test_allow),
        cmocka_unit_test(test_payload),
        cmocka_unit_test_setup_teardown(test_reserved_and_describe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_online_offline, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flapping, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart, setup, teardown),
        cmocka_unit_test_setup_teardown(test_flush, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_memory, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
