/* test_device: the transport-neutral device layer (src/device/) driven
 * through a fake link (device_testlib.h: the layer as a shard builds it,
 * and the link that records what the session decides), with a few limits
 * lowered.
 *
 * A "watcher" (a subscriber of a fake router kind) stands for any other
 * consumer of routed messages: it sees wills and describes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

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

#include <sqlite3.h>

#define S(lit) lit, sizeof(lit) - 1
#define DEV "0123456789abcdef01234567"  /* a device id (24 hex) */
#define DEV2 "89abcdef0123456789abcdef" /* another one */
#define MAX_SENT CYT_MAX_SENT
#define MAX_ANSWERS 32

/* answers of device operations */
static struct {
    unsigned n_answers;
    unsigned per_req[MAX_ANSWERS]; /* answers by req_id */
    unsigned last_status;
    uint32_t last_req;
    char last_body[512];
    size_t last_len;
} A;

/* ---- a watcher: a subscriber of another kind ---- */

typedef struct watcher {
    cy_subscriber sub;
    unsigned n;
    char topic[64];
    char payload[64];
} watcher;

static void w_deliver(void *ctx, cy_subscriber *s, const cy_route *r, const cy_match *x)
{
    (void)ctx;
    (void)x;
    watcher *w = (watcher *)s;
    w->n++;
    snprintf(w->topic, sizeof(w->topic), "%s", r->m->topic);
    snprintf(w->payload, sizeof(w->payload), "%.*s", (int)r->m->payload_len,
             (const char *)r->m->payload);
}

static const cy_sub_kind w_kind = {.name = "watcher", .deliver = w_deliver};

static void watch(watcher *w, const char *filter)
{
    memset(w, 0, sizeof(*w));
    cy_subscriber_init(&w->sub, &w_kind);
    assert_int_equal(cy_router_subscribe(T.r, &w->sub, filter, strlen(filter), 1, 0, NULL), 0);
}

static void unwatch(watcher *w, const char *filter)
{
    assert_int_equal(cy_router_unsubscribe(T.r, &w->sub, filter, strlen(filter)), 0);
}

/* ---- answers ---- */

static void on_answer(void *ctx, unsigned from, uint32_t req_id, unsigned status, const char *body,
                      size_t len)
{
    (void)ctx;
    assert_int_equal(from, 3);
    assert_true(req_id < MAX_ANSWERS);
    A.n_answers++;
    A.per_req[req_id]++;
    A.last_status = status;
    A.last_req = req_id;
    A.last_len = len;
    snprintf(A.last_body, sizeof(A.last_body), "%.*s", (int)len, body);
}

/* ---- the layer ---- */

static void layer_open(void)
{
    cyt_layer_open();
    cy_devices_set_answer(T.d, on_answer, NULL);
}

/* A restart: everything freed, then loaded again from the same file. */
/* The message rows in the store's file, once the pending batch is
 * committed (what a restart would find). */
static long long stored_msgs(void)
{
    assert_int_equal(cy_store_commit(T.store), 0);
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(T.path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM msgs", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    long long n = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return n;
}

static void layer_restart(void)
{
    assert_int_equal(cy_store_commit(T.store), 0);
    cyt_layer_close();
    memset(&T.stats, 0, sizeof(T.stats));
    layer_open();
    cy_store_loader l = {.session = cy_devices_load_session,
                         .sub = cy_devices_load_sub,
                         .msg = cy_devices_load_msg,
                         .inq2 = cy_devices_load_inq2};
    assert_int_equal(cy_store_load(T.store, &l, T.d), 0);
}

static int setup(void **state)
{
    (void)state;
    memset(&A, 0, sizeof(A));
    if (cyt_layer_setup("/tmp/cyan-device-XXXXXX")) return -1;
    T.cfg.max_topic_length = 64;
    T.cfg.max_inflight = 3;
    T.cfg.max_queued = 8;
    layer_open();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    cyt_layer_teardown();
    return 0;
}

/* A connection as the MQTT transport makes it (handle_connect.c): find or
 * make the session, set its expiry, attach, presence, resume. */
static cy_session *connect_(flink *f, const char *id, uint32_t expiry, bool device)
{
    cy_session *s = cy_session_find(T.d, id, strlen(id));
    if (!s) s = cy_session_new(T.d, id, strlen(id));
    assert_non_null(s);
    if (expiry == 0) cy_session_forget(T.d, s);
    s->expiry = expiry;
    s->persistent = expiry > 0;
    cy_session_attach(T.d, s, &f->base);
    f->s = s;
    f->ready = true; /* past login */
    f->device = device;
    cy_session_persist(T.d, s);
    if (device) cy_device_online(T.d, s, &f->base);
    cy_session_resume(T.d, s);
    return s;
}

/* The link goes away (abnormal: no clean DISCONNECT). */
static void disconnect_(flink *f, bool abnormal)
{
    cy_session *s = f->s;
    assert_non_null(s);
    f->s = NULL;
    f->ready = false;
    if (f->device)
        cy_device_offline(T.d, s, &f->base,
                          abnormal ? CY_PRESENCE_CONNECTION_LOST : CY_PRESENCE_DISCONNECT);
    cy_session_detach(T.d, s, abnormal);
}

static cy_msg *msg(const char *topic, const char *payload, uint8_t qos, bool retain)
{
    cy_msg *m = cy_msg_new(topic, strlen(topic), (const uint8_t *)payload, strlen(payload), NULL, 0,
                           qos, retain, 0);
    assert_non_null(m);
    return m;
}

/* Publish as an application (NULL) or from session s. */
static void publish(cy_session *from, const char *topic, const char *payload, uint8_t qos,
                    bool retain)
{
    cy_msg *m = msg(topic, payload, qos, retain);
    if (from)
        assert_int_equal(cy_session_publish(T.d, from, m, false), 0);
    else
        assert_int_equal(cy_router_publish(T.r, m, NULL, NULL, false), 0);
    cy_msg_unref(m);
}

/* Give the session a message directly, as the router would. */
static void deliver(cy_session *s, const char *topic, uint8_t qos)
{
    cy_msg *m = msg(topic, "x", qos, false);
    cy_session_deliver(T.d, s, m, qos, false, NULL, 0);
    cy_msg_unref(m);
}

static int admit(const char *id, const char *topic, const char *payload, bool *retain, bool *reply)
{
    const char *why = NULL;
    /* A device is who it is (username = its id); NULL is an application. */
    cy_who w = {id, id ? strlen(id) : 0, id, id ? strlen(id) : 0, false};
    int rc = cy_device_admit(T.d, id, id ? strlen(id) : 0, id ? &w : NULL, topic, strlen(topic),
                             (const uint8_t *)payload, payload ? strlen(payload) : 0, retain, reply,
                             &why);
    if (rc) assert_non_null(why);
    return rc;
}

/* ---- admission ---- */

static void test_admit_topics(void **state)
{
    (void)state;
    bool retain = false, reply = true;
    char longt[80];
    memset(longt, 'a', sizeof(longt) - 1);
    longt[sizeof(longt) - 1] = '\0';
    memcpy(longt, "events/", 7);
    assert_int_equal(admit(NULL, longt, "", &retain, &reply), CY_REASON_TOPIC_INVALID);
    assert_int_equal(T.stats.limit_topic_too_long, 1);
    longt[64] = '\0'; /* exactly max_topic_length */
    assert_int_equal(admit(DEV, longt, "", &retain, &reply), 0);
    assert_int_equal(T.stats.limit_topic_too_long, 1);

    /* $ spaces: nobody */
    assert_int_equal(admit(NULL, "$SYS/x", "", &retain, &reply), CY_REASON_NOT_AUTHORIZED);
    assert_int_equal(admit(DEV, "$share/x", "", &retain, &reply), CY_REASON_NOT_AUTHORIZED);
    assert_int_equal(T.stats.acl_denied, 0);

    /* an isolated device keeps to its spaces */
    assert_int_equal(admit(DEV, "devices/" DEV "/temp", "1", &retain, &reply), 0);
    assert_false(reply);
    assert_false(retain);
    assert_int_equal(admit(DEV, "events/boot", "1", &retain, &reply), 0);
    assert_int_equal(T.stats.acl_denied, 0);
    const char *outside[] = {"other/x",
                             "devices/" DEV2 "/temp",
                             "devices/" DEV "x/temp",
                             "devices/" DEV,
                             "devices/" DEV "/",
                             "events/",
                             "event/x",
                             "devices/0123456789abcdef0123456/x"};
    for (size_t i = 0; i < sizeof(outside) / sizeof(*outside); i++)
        assert_int_equal(admit(DEV, outside[i], "", &retain, &reply), CY_REASON_NOT_AUTHORIZED);
    assert_int_equal(T.stats.acl_denied, sizeof(outside) / sizeof(*outside));

    /* an application may publish anywhere but $, even another's reply */
    reply = true;
    assert_int_equal(admit(NULL, "other/x", "", &retain, &reply), 0);
    assert_false(reply);
    assert_int_equal(admit(NULL, "devices/" DEV "/reply", "", &retain, &reply), 0);
    assert_false(reply);
    assert_false(retain);
    assert_int_equal(T.stats.acl_denied, sizeof(outside) / sizeof(*outside));
}

static void test_admit_reply(void **state)
{
    (void)state;
    bool retain = false, reply = false;
    assert_int_equal(admit(DEV, "devices/" DEV "/reply", "1", &retain, &reply), 0);
    assert_true(reply);
    reply = false;
    assert_int_equal(admit(DEV, "devices/" DEV "/reply/00000000000000ab", "1", &retain, &reply), 0);
    assert_true(reply);
    assert_int_equal(admit(DEV, "devices/" DEV "/replyx", "1", &retain, &reply), 0);
    assert_false(reply);
    assert_int_equal(admit(DEV, "devices/" DEV "/x/reply", "1", &retain, &reply), 0);
    assert_false(reply);
    assert_int_equal(admit(DEV, "devices/" DEV2 "/reply", "1", &retain, &reply),
                     CY_REASON_NOT_AUTHORIZED);
    assert_false(retain);
    assert_true(cy_device_is_reply(S(DEV), S("devices/" DEV "/reply/a")));
    assert_false(cy_device_is_reply(S(DEV), S("devices/" DEV "/repl")));
}

static void test_admit_describe(void **state)
{
    (void)state;
    const char *topic = "devices/" DEV "/describe";
    bool retain = false, reply = false;
    assert_int_equal(admit(DEV, topic,
                           "{\"functions\":[\"reboot\"],\"variables\":[\"t.1\",\"a-b_C\"]}",
                           &retain, &reply),
                     0);
    assert_true(retain); /* always retained */
    assert_false(reply);
    retain = false;
    assert_int_equal(admit(DEV, topic, "{}", &retain, &reply), 0);
    assert_true(retain);
    retain = false;
    assert_int_equal(admit(DEV, topic, "", &retain, &reply), 0); /* clearing it */
    assert_true(retain);

    const char *bad[] = {
        "{\"functions\":[\"reboot\"]", /* not JSON */
        "[\"reboot\"]",                /* not an object */
        "{\"functions\":\"reboot\"}",  /* not an array */
        "{\"functions\":[1]}",         /* not a string */
        "{\"functions\":[\"\"]}",      /* empty name */
        "{\"functions\":[\"a b\"]}",   /* bad character */
        "{\"variables\":[\"a/b\"]}",   /* bad character */
        "{\"functions\":[\".\"]}",     /* no URL can name it */
        "{\"variables\":[\"..\"]}",
        "{\"functions\":[\"a\"],\"functions\":[\"b\"]}", /* duplicate key */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
        retain = false;
        assert_int_equal(admit(DEV, topic, bad[i], &retain, &reply), CY_REASON_PAYLOAD_INVALID);
        assert_false(retain);
    }

    /* names: 64 characters at most, 64 names at most */
    char buf[CY_DEVICE_DESCRIBE_MAX + 64];
    char name[CY_DEVICE_NAME_MAX + 2];
    memset(name, 'n', sizeof(name) - 1);
    name[CY_DEVICE_NAME_MAX] = '\0';
    snprintf(buf, sizeof(buf), "{\"functions\":[\"%s\"]}", name);
    assert_int_equal(admit(DEV, topic, buf, &retain, &reply), 0);
    name[CY_DEVICE_NAME_MAX] = 'n';
    name[CY_DEVICE_NAME_MAX + 1] = '\0';
    snprintf(buf, sizeof(buf), "{\"functions\":[\"%s\"]}", name);
    assert_int_equal(admit(DEV, topic, buf, &retain, &reply), CY_REASON_PAYLOAD_INVALID);
    for (unsigned n = CY_DEVICE_DESCRIBE_NAMES; n <= CY_DEVICE_DESCRIBE_NAMES + 1; n++) {
        size_t o = (size_t)snprintf(buf, sizeof(buf), "{\"variables\":[");
        for (unsigned i = 0; i < n; i++)
            o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%s\"v%u\"", i ? "," : "", i);
        snprintf(buf + o, sizeof(buf) - o, "]}");
        assert_int_equal(admit(DEV, topic, buf, &retain, &reply),
                         n <= CY_DEVICE_DESCRIBE_NAMES ? 0 : CY_REASON_PAYLOAD_INVALID);
    }

    /* 4 KiB at most, even of valid JSON (white space) */
    memset(buf, ' ', sizeof(buf));
    memcpy(buf, "{}", 2);
    buf[CY_DEVICE_DESCRIBE_MAX] = '\0';
    assert_int_equal(admit(DEV, topic, buf, &retain, &reply), 0);
    buf[CY_DEVICE_DESCRIBE_MAX] = ' ';
    buf[CY_DEVICE_DESCRIBE_MAX + 1] = '\0';
    assert_int_equal(admit(DEV, topic, buf, &retain, &reply), CY_REASON_PAYLOAD_INVALID);

    /* an application's publish there is not checked as a describe */
    retain = false;
    assert_int_equal(admit(NULL, topic, "not json", &retain, &reply), 0);
    assert_false(retain);
}

/* ---- sessions ---- */

static void test_qos0(void **state)
{
    (void)state;
    flink f;
    flink_init(&f, "fake1");
    cy_session *s = connect_(&f, "c1", 0, false);
    assert_int_equal(cy_session_count(T.d), 1);
    assert_int_equal(T.stats.sessions, 1);

    deliver(s, "a/1", 0);
    assert_int_equal(f.n_send, 1);
    assert_string_equal(f.sent[0].topic, "a/1");
    assert_int_equal(f.sent[0].qos, 0);
    assert_int_equal(f.sent[0].id, 0);
    assert_false(f.sent[0].dup);
    assert_int_equal(T.stats.publish_sent, 1);
    assert_null(cy_session_head(s)); /* never queued */

    f.congested = true;
    deliver(s, "a/2", 0);
    assert_int_equal(f.n_send, 1);
    assert_int_equal(T.stats.messages_dropped, 1);
    f.congested = false;

    f.ready = false; /* not past login: nothing, and nothing counted */
    deliver(s, "a/3", 0);
    assert_int_equal(f.n_send, 1);
    assert_int_equal(T.stats.messages_dropped, 1);
    f.ready = true;

    f.send_rc = CY_ETIMEDOUT; /* expired on the way */
    deliver(s, "a/4", 0);
    assert_int_equal(T.stats.messages_expired, 1);
    f.send_rc = 0;

    /* offline (a persistent session): QoS 0 is not kept */
    flink g;
    flink_init(&g, "fake1");
    cy_session *p = connect_(&g, "p1", 3600, false);
    disconnect_(&g, false);
    assert_ptr_equal(cy_session_find(T.d, S("p1")), p);
    deliver(p, "a/5", 0);
    assert_null(cy_session_head(p));
    assert_int_equal(cy_session_n_queued(p), 0);
    assert_int_equal(g.n_send, 0);
    assert_int_equal(T.stats.publish_sent, 1);

    /* a non-persistent session ends with its link */
    disconnect_(&f, false);
    assert_null(cy_session_find(T.d, S("c1")));
    assert_int_equal(cy_session_count(T.d), 1);
    assert_int_equal(T.stats.sessions, 1);
}

static void test_qos1_window(void **state)
{
    (void)state;
    flink f;
    flink_init(&f, "fake1");
    f.window = 2; /* the device's own limit, under max_inflight 3 */
    cy_session *s = connect_(&f, "c1", 0, false);
    for (int i = 0; i < 5; i++)
        deliver(s, "q/1", 1);
    assert_int_equal(f.n_send, 2);
    assert_int_equal(f.sent[0].id, 1);
    assert_int_equal(f.sent[1].id, 2);
    assert_int_equal(f.sent[0].qos, 1);
    assert_int_equal(cy_session_n_inflight(s), 2);
    assert_int_equal(cy_session_n_queued(s), 3);

    /* the device acknowledges 1: the next goes */
    cy_delivery *dv = cy_session_find_inflight(s, 1);
    assert_non_null(dv);
    cy_session_remove_delivery(T.d, s, dv);
    cy_session_pump(T.d, s);
    assert_int_equal(f.n_send, 3);
    assert_int_equal(f.sent[2].id, 3);
    assert_int_equal(cy_session_n_inflight(s), 2);
    assert_int_equal(cy_session_n_queued(s), 2);
    assert_null(cy_session_find_inflight(s, 1));

    /* no limit of its own: max_inflight rules */
    f.window = 0;
    cy_session_pump(T.d, s);
    assert_int_equal(f.n_send, 4);
    assert_int_equal(f.sent[3].id, 4);
    assert_int_equal(cy_session_n_inflight(s), 3);
    assert_int_equal(cy_session_n_queued(s), 1);
    f.window = 100;
    cy_session_pump(T.d, s);
    assert_int_equal(f.n_send, 4);

    /* in flight 2, 3, 4; ids wrap past 0 and skip those still in flight */
    s->last_packet_id = 65534;
    cy_session_remove_delivery(T.d, s, cy_session_find_inflight(s, 3)); /* out of order */
    cy_session_pump(T.d, s);
    assert_int_equal(f.n_send, 5);
    assert_int_equal(f.sent[4].id, 65535);
    assert_int_equal(cy_session_n_queued(s), 0);
    deliver(s, "q/2", 1);
    assert_int_equal(cy_session_n_inflight(s), 3); /* 2, 4, 65535: full */
    assert_int_equal(f.n_send, 5);
    cy_session_remove_delivery(T.d, s, cy_session_find_inflight(s, 65535));
    cy_session_pump(T.d, s);
    assert_int_equal(f.n_send, 6);
    assert_int_equal(f.sent[5].id, 1); /* not 0; 1 is free */
    cy_session_remove_delivery(T.d, s, cy_session_find_inflight(s, 1));
    s->last_packet_id = 1;
    deliver(s, "q/3", 1); /* 2 is still in flight: 3 */
    assert_int_equal(f.n_send, 7);
    assert_int_equal(f.sent[6].id, 3);
    assert_int_equal(T.stats.publish_sent, 7);

    /* max_queued 8 counts what is in flight and queued */
    f.ready = false;
    unsigned have = cy_session_n_inflight(s) + cy_session_n_queued(s);
    for (unsigned i = have; i < T.cfg.max_queued + 2; i++)
        deliver(s, "q/4", 1);
    assert_int_equal(cy_session_n_inflight(s) + cy_session_n_queued(s), T.cfg.max_queued);
    assert_int_equal(T.stats.limit_queue_full, 2);
    assert_int_equal(T.stats.messages_dropped, 2);
    assert_int_equal(f.n_send, 7); /* not ready: nothing sent */

    /* a message the device refuses (too large) is dropped, the next goes */
    f.ready = true;
    while (cy_session_head(s) != cy_session_next_send(s))
        cy_session_remove_delivery(T.d, s, cy_session_head(s));
    f.send_rc = CY_EMSGSIZE;
    cy_session_pump(T.d, s);
    assert_null(cy_session_head(s)); /* every one refused */
    assert_int_equal(cy_session_n_queued(s), 0);
    assert_int_equal(cy_session_n_inflight(s), 0);
    f.send_rc = 0;
    deliver(s, "q/5", 2);
    assert_int_equal(f.n_send, 8);
    assert_int_equal(f.sent[7].qos, 2);

    /* a link that is closing (CY_EPIPE) drops nothing: the message stays
     * queued for the next link */
    uint64_t dropped = T.stats.messages_dropped;
    f.send_rc = CY_EPIPE;
    deliver(s, "q/6", 1);
    assert_int_equal(cy_session_n_queued(s), 1);
    assert_non_null(cy_session_next_send(s));
    assert_string_equal(cy_session_next_send(s)->msg->topic, "q/6");
    assert_int_equal(T.stats.messages_dropped, dropped);
    f.send_rc = 0;
    cy_session_pump(T.d, s);
    assert_int_equal(cy_session_n_queued(s), 0);
    assert_string_equal(f.sent[f.n_send - 1].topic, "q/6");
}

static void test_resume(void **state)
{
    (void)state;
    flink f;
    flink_init(&f, "fake1");
    cy_session *s = connect_(&f, "c1", 3600, false);
    deliver(s, "r/1", 1);
    deliver(s, "r/2", 2);
    deliver(s, "r/3", 1);
    assert_int_equal(f.n_send, 3);
    /* r/2 was received: its release is on the way */
    cy_delivery *dv = cy_session_find_inflight(s, 2);
    cy_session_released(T.d, s, dv);
    assert_int_equal(dv->state, CY_MSG_RELEASED);
    /* r/3 was acknowledged */
    cy_session_remove_delivery(T.d, s, cy_session_find_inflight(s, 3));
    disconnect_(&f, false);
    assert_ptr_equal(cy_session_find(T.d, S("c1")), s);
    assert_true(cy_session_offline_since(s) > 0);
    deliver(s, "r/4", 1); /* kept for it */
    assert_int_equal(cy_session_n_queued(s), 1);

    flink g;
    flink_init(&g, "fake1");
    assert_ptr_equal(connect_(&g, "c1", 3600, false), s);
    assert_int_equal(cy_session_offline_since(s), 0);
    /* r/1 again with dup and its id, the release of 2, then r/4 */
    assert_int_equal(g.n_send, 2);
    assert_string_equal(g.sent[0].topic, "r/1");
    assert_true(g.sent[0].dup);
    assert_int_equal(g.sent[0].id, 1);
    assert_int_equal(g.n_release, 1);
    assert_int_equal(g.released[0], 2);
    assert_string_equal(g.sent[1].topic, "r/4");
    assert_false(g.sent[1].dup);
    assert_int_equal(g.sent[1].id, 4); /* ids go on after the last one given */
    assert_int_equal(cy_session_n_inflight(s), 3);
    assert_int_equal(f.n_send, 3); /* the old link was never touched again */
}

static void test_persistence(void **state)
{
    (void)state;
    flink f;
    flink_init(&f, "fake1");
    cy_session *s = connect_(&f, "keep", 3600, false);
    bool fresh = false;
    assert_int_equal(cy_session_subscribe(T.d, s, S("p/#"), 2, 7, &fresh), 0);
    assert_true(fresh);
    assert_int_equal(cy_session_subscribe(T.d, s, S("x/+"), 0, 0, &fresh), 0);
    assert_int_equal(cy_session_unsubscribe(T.d, s, S("x/+")), 0);
    f.window = 2;
    publish(NULL, "p/1", "one", 1, false);
    publish(NULL, "p/2", "two", 2, false);
    publish(NULL, "p/3", "three", 1, false);
    assert_int_equal(f.n_send, 2);
    assert_int_equal(f.sent[0].sub_id0, 7);
    cy_session_released(T.d, s, cy_session_find_inflight(s, 2));
    assert_int_equal(cy_session_add_inq2(T.d, s, 42), 0);
    assert_int_equal(cy_session_add_inq2(T.d, s, 43), 0);
    assert_true(cy_session_del_inq2(T.d, s, 43));
    assert_false(cy_session_del_inq2(T.d, s, 43));
    /* a session that is not persistent leaves no rows */
    flink g;
    flink_init(&g, "fake1");
    cy_session *e = connect_(&g, "ephemeral", 0, false);
    assert_int_equal(cy_session_subscribe(T.d, e, S("p/#"), 1, 0, &fresh), 0);
    publish(NULL, "p/4", "four", 1, false); /* to both; 'keep' queues it */
    assert_int_equal(g.n_send, 1);
    disconnect_(&f, true);

    layer_restart();

    assert_int_equal(cy_session_count(T.d), 1);
    assert_null(cy_session_find(T.d, S("ephemeral")));
    s = cy_session_find(T.d, S("keep"));
    assert_non_null(s);
    assert_true(s->persistent);
    assert_int_equal(s->expiry, 3600);
    assert_null(s->link);
    assert_true(cy_session_offline_since(s) > 0);
    assert_int_equal(T.stats.sessions, 1);
    assert_int_equal(T.stats.subscriptions, 1);
    assert_int_equal(s->n_subs, 1);
    cy_sub *sub = cy_session_find_sub(s, S("p/#"));
    assert_non_null(sub);
    assert_int_equal(sub->opts, 2);
    assert_int_equal(sub->sub_id, 7);
    assert_null(cy_session_find_sub(s, S("x/+")));
    assert_true(cy_session_has_inq2(s, 42));
    assert_false(cy_session_has_inq2(s, 43));
    assert_int_equal(cy_session_n_inflight(s), 2);
    assert_int_equal(cy_session_n_queued(s), 2);
    cy_delivery *dv = cy_session_find_inflight(s, 1);
    assert_non_null(dv);
    assert_int_equal(dv->state, CY_MSG_SENT);
    assert_int_equal(dv->qos, 1);
    assert_int_equal(dv->n_sub_ids, 1);
    assert_int_equal(dv->sub_ids[0], 7);
    dv = cy_session_find_inflight(s, 2);
    assert_non_null(dv);
    assert_int_equal(dv->state, CY_MSG_RELEASED);
    assert_int_equal(dv->qos, 2);

    /* the router knows its subscription again */
    publish(NULL, "p/5", "five", 0, false);
    assert_int_equal(cy_session_n_queued(s), 2); /* QoS 0: not kept for an offline session */
    publish(NULL, "p/6", "six", 1, false);
    assert_int_equal(cy_session_n_queued(s), 3);

    /* the device comes back: in flight first, then the queue in order */
    flink h;
    flink_init(&h, "fake1");
    assert_ptr_equal(connect_(&h, "keep", 3600, false), s);
    assert_int_equal(h.n_send, 2); /* p/1 (dup), then p/3: max_inflight 3 */
    assert_string_equal(h.sent[0].topic, "p/1");
    assert_true(h.sent[0].dup);
    assert_int_equal(h.sent[0].id, 1);
    assert_int_equal(h.n_release, 1);
    assert_int_equal(h.released[0], 2);
    assert_string_equal(h.sent[1].topic, "p/3");
    assert_false(h.sent[1].dup);
    assert_int_equal(h.sent[1].id, 3); /* after the loaded ids */
    assert_int_equal(h.sent[1].sub_id0, 7);

    /* forgetting it (expiry set to 0) removes every row */
    assert_true(stored_msgs() > 0);
    cy_session_forget(T.d, s);
    assert_false(s->persistent);
    for (dv = cy_session_head(s); dv; dv = dv->next)
        assert_int_equal(dv->store_id, 0);
    assert_int_equal(stored_msgs(), 0);
    cy_session_remove_delivery(T.d, s, cy_session_find_inflight(s, 1)); /* no row to touch */
    layer_restart();
    assert_int_equal(cy_session_count(T.d), 0);
    assert_int_equal(T.stats.subscriptions, 0);
}

/* What a crash finds of deliveries that waited in the queue and then went
 * out: QoS 2 in flight with its packet id, QoS 1 queued again (its sending
 * is not written), to go out as new with a new id. */
static void test_queued_then_sent_after_crash(void **state)
{
    (void)state;
    flink f;
    flink_init(&f, "fake1");
    cy_session *s = connect_(&f, "keep", 3600, false);
    bool fresh = false;
    assert_int_equal(cy_session_subscribe(T.d, s, S("p/#"), 2, 0, &fresh), 0);
    f.window = 1;
    publish(NULL, "p/1", "one", 1, false);   /* out at once, id 1 */
    publish(NULL, "p/2", "two", 1, false);   /* queued */
    publish(NULL, "p/3", "three", 2, false); /* queued */
    assert_int_equal(f.n_send, 1);
    cy_session_remove_delivery(T.d, s, cy_session_find_inflight(s, 1)); /* PUBACK */
    f.window = 2;
    cy_session_pump(T.d, s);
    assert_int_equal(f.n_send, 3);
    assert_int_equal(f.sent[1].id, 2);
    assert_int_equal(f.sent[2].id, 3);

    layer_restart(); /* the link is not closed: as if the shard died */

    s = cy_session_find(T.d, S("keep"));
    assert_non_null(s);
    assert_int_equal(cy_session_n_inflight(s), 1);
    assert_int_equal(cy_session_n_queued(s), 1);
    cy_delivery *dv = cy_session_find_inflight(s, 3);
    assert_non_null(dv);
    assert_int_equal(dv->qos, 2);
    assert_int_equal(dv->state, CY_MSG_SENT);
    assert_non_null(cy_session_next_send(s));
    assert_int_equal(cy_session_next_send(s)->qos, 1);
    assert_int_equal(cy_session_next_send(s)->state, CY_MSG_QUEUED);
    assert_int_equal(cy_session_next_send(s)->packet_id, 0);

    /* back: p/3 again with DUP and id 3, then p/2 as new, with a new id */
    flink g;
    flink_init(&g, "fake1");
    assert_ptr_equal(connect_(&g, "keep", 3600, false), s);
    assert_int_equal(g.n_send, 2);
    assert_string_equal(g.sent[0].topic, "p/3");
    assert_true(g.sent[0].dup);
    assert_int_equal(g.sent[0].id, 3);
    assert_string_equal(g.sent[1].topic, "p/2");
    assert_false(g.sent[1].dup);
    assert_int_equal(g.sent[1].id, 4);
}

static void test_expired_at_load(void **state)
{
    (void)state;
    int64_t now = cy_wall_ms();
    cy_store_session gone = {
        .client_id = "gone", .version = 5, .expiry = 10, .disconnected_at = now - 60000};
    cy_store_session kept = {
        .client_id = "kept", .version = 4, .expiry = 3600, .disconnected_at = now - 60000};
    cy_store_session never = {.client_id = "never",
                              .version = 5,
                              .expiry = 0xFFFFFFFFu,
                              .disconnected_at = now - 86400000};
    assert_int_equal(cy_store_session_put(T.store, &gone), 0);
    assert_int_equal(cy_store_session_put(T.store, &kept), 0);
    assert_int_equal(cy_store_session_put(T.store, &never), 0);
    assert_int_equal(cy_store_sub_put(T.store, "gone", S("g/#"), 1, 0), 0);
    cy_store_msg m = {.topic = "g/1",
                      .topic_len = 3,
                      .payload = (const uint8_t *)"x",
                      .payload_len = 1,
                      .qos = 1};
    assert_int_equal(cy_store_msg_put(T.store, "gone", &m), 0);
    layer_restart();
    assert_int_equal(cy_session_count(T.d), 3);
    assert_int_equal(cy_session_find(T.d, S("kept"))->version, 4);
    assert_int_equal(stored_msgs(), 1);
    assert_int_equal(cy_devices_end_expired(T.d), 1);
    assert_int_equal(stored_msgs(), 0); /* its queue went with it */
    assert_null(cy_session_find(T.d, S("gone")));
    assert_non_null(cy_session_find(T.d, S("kept")));
    assert_non_null(cy_session_find(T.d, S("never")));
    assert_int_equal(T.stats.subscriptions, 0);
    assert_int_equal(cy_router_subscriptions(T.r), 0);
    layer_restart(); /* and its rows are gone */
    assert_int_equal(cy_session_count(T.d), 2);
    assert_int_equal(cy_devices_end_expired(T.d), 0);
}

/* ---- wills ---- */

static void set_will(cy_session *s, const char *topic, uint32_t delay)
{
    s->will = msg(topic, "bye", 1, false);
    s->will_delay = delay;
    s->will_at = 0;
}

static void test_will_now(void **state)
{
    (void)state;
    watcher w;
    watch(&w, "wills/#");
    /* a second session subscribed gets it too */
    flink fo;
    flink_init(&fo, "fake1");
    cy_session *other = connect_(&fo, "other", 0, false);
    bool fresh;
    assert_int_equal(cy_session_subscribe(T.d, other, S("wills/+"), 1, 0, &fresh), 0);

    flink f;
    flink_init(&f, "fake1");
    cy_session *s = connect_(&f, "c1", 0, false);
    set_will(s, "wills/c1", 0);
    disconnect_(&f, true);
    assert_int_equal(w.n, 1);
    assert_string_equal(w.topic, "wills/c1");
    assert_string_equal(w.payload, "bye");
    assert_int_equal(fo.n_send, 1);
    assert_string_equal(fo.sent[0].topic, "wills/c1");
    assert_null(cy_session_find(T.d, S("c1")));

    /* a clean close drops it */
    s = connect_(&f, "c2", 0, false);
    set_will(s, "wills/c2", 0);
    disconnect_(&f, false);
    s = connect_(&f, "c3", 3600, false);
    set_will(s, "wills/c3", 0);
    disconnect_(&f, false);
    assert_null(s->will);
    cy_devices_sweep(T.d);
    /* a later will still arrives, and is the next thing seen */
    s = connect_(&f, "c4", 3600, false);
    set_will(s, "wills/c4", 0); /* persistent, no delay: at once */
    disconnect_(&f, true);
    assert_int_equal(w.n, 2);
    assert_string_equal(w.topic, "wills/c4");
    assert_int_equal(fo.n_send, 2);
    assert_string_equal(fo.sent[1].topic, "wills/c4");
    assert_null(s->will);
    unwatch(&w, "wills/#");
}

static void on_timer(uv_timer_t *t)
{
    (void)t;
}

static void test_will_delay(void **state)
{
    (void)state;
    watcher w;
    watch(&w, "wills/#");
    flink fa, fb, fc;
    flink_init(&fa, "fake1");
    flink_init(&fb, "fake1");
    flink_init(&fc, "fake1");
    cy_session *a = connect_(&fa, "a", 3600, false);
    set_will(a, "wills/a", 1);
    cy_session *b = connect_(&fb, "b", 3600, false);
    set_will(b, "wills/b", 1);
    cy_session *c = connect_(&fc, "c", 1, false); /* expiry 1 s cuts a 10 s delay */
    set_will(c, "wills/c", 10);
    disconnect_(&fa, true);
    disconnect_(&fb, true);
    disconnect_(&fc, true);
    assert_int_equal(w.n, 0);
    assert_non_null(a->will);
    assert_true(a->will_at > (int64_t)uv_now(&T.loop));
    cy_devices_sweep(T.d);
    assert_int_equal(w.n, 0);

    /* b comes back: its will is cancelled */
    flink fb2;
    flink_init(&fb2, "fake1");
    assert_ptr_equal(connect_(&fb2, "b", 3600, false), b);
    assert_null(b->will);
    assert_int_equal(b->will_at, 0);

    /* a second later */
    uv_timer_t t;
    uv_timer_init(&T.loop, &t);
    uv_timer_start(&t, on_timer, 1000, 0);
    uv_run(&T.loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&T.loop, UV_RUN_DEFAULT);
    cy_devices_sweep(T.d);
    assert_int_equal(w.n, 2);
    assert_null(a->will);
    assert_non_null(cy_session_find(T.d, S("a"))); /* its session stays */
    assert_null(cy_session_find(T.d, S("c")));     /* expired: ended, will published */
    cy_devices_sweep(T.d);
    assert_int_equal(w.n, 2); /* once */
    /* b's will never came: the last is one of a and c */
    assert_true(strcmp(w.topic, "wills/a") == 0 || strcmp(w.topic, "wills/c") == 0);
    unwatch(&w, "wills/#");
}

/* The subscriptions array has no capacity field (session.c, add_sub):
 * grown at powers of two, freed when the last subscription goes. Walked
 * up and down past several doublings, under ASan. */
static void test_session_subs_array(void **state)
{
    (void)state;
    T.cfg.max_subscriptions = 1000;
    flink f;
    flink_init(&f, "fake1");
    cy_session *s = connect_(&f, "c1", 0, false);
    assert_null(s->subs);
    char fl[32];
    bool fresh;
    for (int round = 0; round < 3; round++) {
        int n = round == 0 ? 1 : round == 1 ? 9 : 40;
        for (int i = 0; i < n; i++) {
            snprintf(fl, sizeof(fl), "t/%d", i);
            assert_int_equal(cy_session_subscribe(T.d, s, fl, strlen(fl), 1, 0, &fresh), 0);
            assert_true(fresh);
        }
        assert_int_equal(s->n_subs, n);
        /* take the odd ones out, put them back, then all out from the top */
        for (int i = 1; i < n; i += 2) {
            snprintf(fl, sizeof(fl), "t/%d", i);
            assert_int_equal(cy_session_unsubscribe(T.d, s, fl, strlen(fl)), 0);
        }
        for (int i = 1; i < n; i += 2) {
            snprintf(fl, sizeof(fl), "t/%d", i);
            assert_int_equal(cy_session_subscribe(T.d, s, fl, strlen(fl), 2, 0, &fresh), 0);
        }
        assert_int_equal(s->n_subs, n);
        for (int i = 0; i < n; i++) {
            snprintf(fl, sizeof(fl), "t/%d", i);
            cy_sub *x = cy_session_find_sub(s, fl, strlen(fl));
            assert_non_null(x);
            assert_int_equal(x->opts, i % 2 ? 2 : 1);
        }
        for (int i = n; i-- > 0;) {
            snprintf(fl, sizeof(fl), "t/%d", i);
            assert_int_equal(cy_session_unsubscribe(T.d, s, fl, strlen(fl)), 0);
        }
        assert_int_equal(s->n_subs, 0);
        assert_null(s->subs);
        assert_int_equal(T.stats.subscriptions, 0);
    }
    /* out of memory at each allocation (the router's, the array, the
     * filter's copy): refused, nothing held */
    int rc = CY_ENOMEM;
    for (long n = 0; rc; n++) {
        assert_true(n < 32);
        cy_alloc_fail_after(n);
        rc = cy_session_subscribe(T.d, s, S("t/x"), 1, 0, &fresh);
        cy_alloc_fail_after(-1);
        if (rc) {
            assert_int_equal(rc, CY_ENOMEM);
            assert_int_equal(s->n_subs, 0);
            assert_int_equal(cy_router_subscriptions(T.r), 0);
        }
    }
    assert_int_equal(s->n_subs, 1); /* freed with the session at the teardown */
}

/* ---- the cold block (session.h) ---- */

/* A connected session with nothing in flight has no cold block; a queued
 * delivery, an inbound QoS 2 id and the offline list each bring it, and
 * it goes when the last of them does. Packet ids keep counting across. */
static void test_session_cold(void **state)
{
    (void)state;
    flink f;
    flink_init(&f, "fake1");
    cy_session *s = connect_(&f, "c1", 0, false);
    assert_null(s->cold);
    deliver(s, "q/0", 0); /* QoS 0 is never queued */
    assert_null(s->cold);

    deliver(s, "q/1", 1);
    assert_non_null(s->cold);
    assert_int_equal(cy_session_n_inflight(s), 1);
    assert_int_equal(f.n_send, 2);
    uint16_t id1 = f.sent[1].id;
    cy_session_remove_delivery(T.d, s, cy_session_find_inflight(s, id1)); /* its PUBACK */
    assert_null(s->cold);
    assert_null(cy_session_find_inflight(s, id1));
    deliver(s, "q/2", 2);
    assert_int_equal(f.n_send, 3);
    assert_int_equal(f.sent[2].id, (uint16_t)(id1 + 1)); /* not reused at once */
    cy_delivery *dv = cy_session_find_inflight(s, f.sent[2].id);
    assert_non_null(dv);
    cy_session_released(T.d, s, dv); /* PUBREC: still held */
    assert_non_null(s->cold);
    cy_session_remove_delivery(T.d, s, dv); /* PUBCOMP */
    assert_null(s->cold);

    /* inbound QoS 2 ids */
    assert_false(cy_session_has_inq2(s, 7));
    assert_int_equal(cy_session_add_inq2(T.d, s, 7), 0);
    assert_int_equal(cy_session_add_inq2(T.d, s, 9), 0);
    assert_non_null(s->cold);
    assert_true(cy_session_has_inq2(s, 7));
    assert_true(cy_session_del_inq2(T.d, s, 7));
    assert_non_null(s->cold);
    assert_false(cy_session_del_inq2(T.d, s, 7));
    assert_true(cy_session_del_inq2(T.d, s, 9));
    assert_null(s->cold);
    assert_false(cy_session_has_inq2(s, 9));
    disconnect_(&f, false);

    /* persistent: offline, it is in the offline list (the cold block) */
    s = connect_(&f, "p1", 3600, false);
    assert_null(s->cold);
    disconnect_(&f, false);
    assert_non_null(s->cold);
    assert_true(cy_session_offline_since(s) > 0);
    assert_ptr_equal(T.d->offline, s);
    deliver(s, "q/3", 1); /* queued for it */
    assert_ptr_equal(connect_(&f, "p1", 3600, false), s);
    assert_int_equal(cy_session_offline_since(s), 0);
    assert_null(T.d->offline);
    assert_non_null(s->cold); /* its delivery went out, waits for its ack */
    assert_int_equal(cy_session_n_inflight(s), 1);
    cy_session_remove_delivery(T.d, s, cy_session_head(s));
    assert_null(s->cold);
    disconnect_(&f, false);
    assert_ptr_equal(connect_(&f, "p1", 3600, false), s); /* back with nothing queued */
    assert_null(s->cold);
    disconnect_(&f, false);
    assert_non_null(s->cold);
}

/* Out of memory for the cold block: a QoS 1 delivery is dropped (counted),
 * an inbound QoS 2 id refused, a persistent session going offline is kept
 * out of the offline list, its delayed will published at once; nothing
 * leaks (ASan) and everything works once memory is back. */
static void test_session_cold_no_memory(void **state)
{
    (void)state;
    watcher w;
    watch(&w, "wills/#");
    flink f;
    flink_init(&f, "fake1");
    cy_session *s = connect_(&f, "p1", 3600, false);
    cy_msg *m = msg("q/1", "x", 1, false);
    uint64_t dropped = T.stats.messages_dropped;
    for (long n = 0; n < 2; n++) { /* the cold block, then the delivery */
        cy_alloc_fail_after(n);
        cy_session_deliver(T.d, s, m, 1, false, NULL, 0);
        cy_alloc_fail_after(-1);
        assert_int_equal(T.stats.messages_dropped, dropped + 1 + (uint64_t)n);
        assert_null(s->cold);
    }
    cy_msg_unref(m);
    assert_int_equal(f.n_send, 0);
    for (long n = 0; n < 2; n++) { /* the cold block, then the ids */
        cy_alloc_fail_after(n);
        assert_int_equal(cy_session_add_inq2(T.d, s, 5), CY_ENOMEM);
        cy_alloc_fail_after(-1);
        assert_null(s->cold);
        assert_int_equal(s->n_inq2, 0);
    }
    deliver(s, "q/2", 1);
    assert_int_equal(f.n_send, 1);
    cy_session_remove_delivery(T.d, s, cy_session_head(s));

    set_will(s, "wills/p1", 60);
    cy_alloc_fail_after(0);
    disconnect_(&f, true);
    cy_alloc_fail_after(-1);
    assert_ptr_equal(cy_session_find(T.d, S("p1")), s); /* kept */
    assert_null(s->cold);
    assert_null(T.d->offline);
    assert_int_equal(w.n, 1); /* its will could not wait */
    assert_null(s->will);
    /* it comes back as usual */
    assert_ptr_equal(connect_(&f, "p1", 3600, false), s);
    deliver(s, "q/3", 1);
    assert_int_equal(f.n_send, 2);
    unwatch(&w, "wills/#");
}

/* A restart reads an offline session back into the offline list (its
 * cold block); out of memory for it, the load fails and leaks nothing. */
static void test_session_cold_load(void **state)
{
    (void)state;
    flink f;
    flink_init(&f, "fake1");
    connect_(&f, "p1", 3600, false);
    disconnect_(&f, false);
    layer_restart();
    cy_session *s = cy_session_find(T.d, S("p1"));
    assert_non_null(s);
    assert_non_null(s->cold);
    assert_ptr_equal(T.d->offline, s);
    assert_true(cy_session_offline_since(s) > 0);

    cyt_layer_close();
    layer_open();
    cy_store_loader l = {.session = cy_devices_load_session};
    bool loaded = false;
    for (long n = 0; n < 8 && !loaded; n++) { /* the session, its map's slots, its cold block */
        cy_alloc_fail_after(n);
        int rc = cy_store_load(T.store, &l, T.d);
        cy_alloc_fail_after(-1);
        if (rc) {
            assert_int_equal(rc, CY_ENOMEM);
            continue;
        }
        assert_true(n > 0); /* the first allocation's failure is seen */
        loaded = true;
        s = cy_session_find(T.d, S("p1"));
        assert_non_null(s);
        assert_ptr_equal(T.d->offline, s);
    }
    assert_true(loaded);
}

/* ---- subscriptions and routing ---- */

static void test_subscribe_route(void **state)
{
    (void)state;
    flink fs, fp;
    flink_init(&fs, "fake1");
    flink_init(&fp, "fake1");
    cy_session *s = connect_(&fs, "sub", 0, false);
    cy_session *p = connect_(&fp, "pub", 0, false);
    bool fresh = false;
    assert_int_equal(cy_session_subscribe(T.d, s, S("t/+"), 1, 5, &fresh), 0);
    assert_true(fresh);
    assert_int_equal(cy_session_subscribe(T.d, s, S("t/+"), 2, 6, &fresh), 0);
    assert_false(fresh); /* a replacement */
    assert_int_equal(s->n_subs, 1);
    assert_int_equal(T.stats.subscriptions, 1);
    assert_int_equal(cy_router_subscriptions(T.r), 1);
    /* the publisher subscribes to the same with no-local, and to more without */
    assert_int_equal(cy_session_subscribe(T.d, p, S("t/+"), 1 | CY_SUBOPT_NO_LOCAL, 0, &fresh), 0);
    assert_int_equal(cy_session_subscribe(T.d, p, S("u/#"), 0, 0, &fresh), 0);
    assert_int_equal(T.stats.subscriptions, 3);

    publish(p, "t/a", "1", 2, false);
    assert_int_equal(fs.n_send, 1);
    assert_int_equal(fs.sent[0].qos, 2);
    assert_int_equal(fs.sent[0].sub_id0, 6);
    assert_int_equal(fp.n_send, 0); /* no-local */
    publish(p, "u/a", "1", 1, false);
    assert_int_equal(fp.n_send, 1); /* its own, where it did not ask no-local */
    assert_int_equal(fp.sent[0].qos, 0);
    publish(NULL, "t/b", "1", 1, false);
    assert_int_equal(fs.n_send, 2);
    assert_int_equal(fs.sent[1].qos, 1);
    assert_int_equal(fp.n_send, 2); /* not its own: no-local does not apply */

    assert_int_equal(cy_session_unsubscribe(T.d, s, S("t/+")), 0);
    assert_int_equal(cy_session_unsubscribe(T.d, s, S("t/+")), CY_ENOENT);
    assert_int_equal(T.stats.subscriptions, 2);
    publish(NULL, "t/c", "1", 1, false);
    assert_int_equal(fs.n_send, 2);
    assert_int_equal(fp.n_send, 3);

    /* retained ones for a new subscription */
    publish(NULL, "r/x", "kept", 0, true);
    assert_int_equal(cy_session_subscribe(T.d, s, S("r/#"), 0, 0, &fresh), 0);
    cy_session_send_retained(T.d, s, S("r/#"), 0, 0);
    assert_int_equal(fs.n_send, 3);
    assert_string_equal(fs.sent[2].topic, "r/x");
    assert_true(fs.sent[2].retain);

    /* ending a session takes its subscriptions out of the router */
    disconnect_(&fp, false);
    assert_int_equal(cy_router_subscriptions(T.r), 1);
    assert_int_equal(T.stats.subscriptions, 1);
    publish(NULL, "u/b", "1", 1, false); /* would reach a freed session otherwise */
}

/* ---- the operator's ACL (acl_file) ---- */

static void write_acl(const char *text)
{
    snprintf(T.cfg.acl_file, sizeof(T.cfg.acl_file), "%s/acl", T.dir);
    FILE *f = fopen(T.cfg.acl_file, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void load_acl(const char *text)
{
    char err[256];
    write_acl(text);
    if (cy_devices_load_acl(T.d, err, sizeof(err))) fail_msg("%s", err);
}

static void drop_acl_file(void)
{
    unlink(T.cfg.acl_file);
    T.cfg.acl_file[0] = '\0';
}

static int admit_as(const cy_who *w, const char *device_id, const char *topic)
{
    bool retain = false, reply = false;
    const char *why = NULL;
    int rc = cy_device_admit(T.d, device_id, device_id ? strlen(device_id) : 0, w, topic,
                             strlen(topic), (const uint8_t *)"1", 1, &retain, &reply, &why);
    if (rc) assert_non_null(why);
    return rc;
}

static void test_acl_admit(void **state)
{
    (void)state;
    bool retain = false, reply = false;
    /* no ACL: everything isolation allows */
    assert_null(cy_devices_acl(T.d));
    assert_int_equal(admit(DEV, "events/boot", "1", &retain, &reply), 0);

    load_acl("topic write anon/#\n"
             "pattern readwrite devices/%u/#\n"
             "user " DEV2 "\n"
             "topic write events/#\n");
    assert_non_null(cy_devices_acl(T.d));
    /* a device: its own space by the pattern; events/ not granted */
    assert_int_equal(admit(DEV, "devices/" DEV "/temp", "1", &retain, &reply), 0);
    assert_int_equal(admit(DEV, "events/boot", "1", &retain, &reply), CY_REASON_NOT_AUTHORIZED);
    assert_int_equal(T.stats.acl_file_denied, 1);
    assert_int_equal(T.stats.acl_denied, 0);
    /* its describe and reply are publishes like any other */
    assert_int_equal(admit(DEV, "devices/" DEV "/reply", "1", &retain, &reply), 0);
    assert_true(reply);
    /* isolation comes first and counts as before */
    assert_int_equal(admit(DEV, "devices/" DEV2 "/x", "1", &retain, &reply),
                     CY_REASON_NOT_AUTHORIZED);
    assert_int_equal(T.stats.acl_denied, 1);
    assert_int_equal(T.stats.acl_file_denied, 1);
    /* its own block */
    assert_int_equal(admit(DEV2, "events/boot", "1", &retain, &reply), 0);
    /* an application is not bound by the ACL */
    assert_int_equal(admit(NULL, "other/x", "1", &retain, &reply), 0);
    /* an anonymous client (plain MQTT): the lines before any user line */
    cy_who anon = {"c1", 2, NULL, 0, false};
    assert_int_equal(admit_as(&anon, NULL, "anon/x"), 0);
    assert_int_equal(admit_as(&anon, NULL, "devices/c1/x"), CY_REASON_NOT_AUTHORIZED);
    /* an internal device is not bound by it */
    cy_who canary = {DEV, strlen(DEV), DEV, strlen(DEV), true};
    assert_int_equal(admit_as(&canary, NULL, "anything/at/all"), 0);
    assert_int_equal(T.stats.acl_file_denied, 2);
    /* subscriptions */
    assert_true(cy_device_acl(T.d, &anon, S("anon/#"), CY_ACL_SUBSCRIBE) == false);
    cy_who dev = {DEV, strlen(DEV), DEV, strlen(DEV), false};
    assert_true(cy_device_acl(T.d, &dev, S("devices/" DEV "/#"), CY_ACL_SUBSCRIBE));
    assert_true(cy_device_acl(T.d, NULL, S("x/#"), CY_ACL_SUBSCRIBE));
    assert_int_equal(T.stats.acl_file_denied, 3);

    /* a broken file: refused, the rules in use stay */
    write_acl("topic write events/#\ntopic wirte x\n");
    char err[256];
    assert_int_equal(cy_devices_load_acl(T.d, err, sizeof(err)), CY_ECONFIG);
    assert_non_null(strstr(err, "/acl:2: unknown access 'wirte'"));
    assert_int_equal(admit(DEV, "events/boot", "1", &retain, &reply), CY_REASON_NOT_AUTHORIZED);
    assert_int_equal(admit(DEV, "devices/" DEV "/temp", "1", &retain, &reply), 0);
    /* a missing one likewise */
    unlink(T.cfg.acl_file);
    assert_int_equal(cy_devices_load_acl(T.d, err, sizeof(err)), CY_ECONFIG);
    assert_non_null(strstr(err, "No such file"));
    assert_int_equal(admit(DEV, "devices/" DEV "/temp", "1", &retain, &reply), 0);
    /* no file named: no ACL */
    drop_acl_file();
    assert_int_equal(cy_devices_load_acl(T.d, err, sizeof(err)), 0);
    assert_null(cy_devices_acl(T.d));
    assert_int_equal(admit(DEV, "events/boot", "1", &retain, &reply), 0);
}

/* Messages a session may not read are not delivered: QoS 0 dropped, QoS 1
 * not queued (or, queued while offline, dropped as they would go). */
static void test_acl_delivery(void **state)
{
    (void)state;
    load_acl("topic read a/#\ntopic deny a/secret\nuser u\ntopic read b/#\n");
    flink f;
    flink_init(&f, "fake1");
    cy_session *s = connect_(&f, "c1", 3600, false);
    assert_int_equal(cy_session_set_who(T.d, s, NULL, 0, false), 0);
    bool fresh;
    assert_int_equal(cy_session_subscribe(T.d, s, S("a/#"), 1, 0, &fresh), 0);
    publish(NULL, "a/secret", "s", 0, false);
    publish(NULL, "a/secret", "s", 1, false);
    publish(NULL, "a/ok", "o", 1, false);
    assert_int_equal(f.n_send, 1);
    assert_string_equal(f.sent[0].topic, "a/ok");
    assert_int_equal(T.stats.acl_file_denied, 2);
    assert_int_equal(T.stats.messages_dropped, 0);
    assert_int_equal(cy_session_n_queued(s) + cy_session_n_inflight(s), 1);

    /* queued while offline (no identity is judged then), dropped as it goes */
    cy_session_remove_delivery(T.d, s, cy_session_head(s));
    disconnect_(&f, false);
    publish(NULL, "a/secret", "s", 1, false);
    publish(NULL, "a/ok2", "o", 1, false);
    assert_int_equal(cy_session_n_queued(s), 2);
    flink_init(&f, "fake1");
    s = connect_(&f, "c1", 3600, false);
    assert_int_equal(f.n_send, 1);
    assert_string_equal(f.sent[0].topic, "a/ok2");
    assert_int_equal(cy_session_n_queued(s) + cy_session_n_inflight(s), 1);
    assert_int_equal(T.stats.acl_file_denied, 3);
    cy_session_remove_delivery(T.d, s, cy_session_head(s));

    /* the same client as user u: only u's block applies */
    assert_int_equal(cy_session_set_who(T.d, s, S("u"), false), 0);
    publish(NULL, "a/ok", "o", 0, false);
    assert_int_equal(f.n_send, 1);
    assert_int_equal(T.stats.acl_file_denied, 4);
    /* an internal device reads everything */
    assert_int_equal(cy_session_set_who(T.d, s, S("u"), true), 0);
    publish(NULL, "a/secret", "s", 0, false);
    assert_int_equal(f.n_send, 2);
    assert_int_equal(T.stats.acl_file_denied, 4);
    disconnect_(&f, false);
}

/* Without deny rules a session whose subscriptions are all covered is not
 * checked per message; one with a subscription that is not (made before the
 * ACL, or under other rules) is. A reload checks connected sessions again. */
static void test_acl_recheck(void **state)
{
    (void)state;
    flink f;
    flink_init(&f, "fake1");
    cy_session *s = connect_(&f, "c1", 0, false);
    assert_int_equal(cy_session_set_who(T.d, s, S("someone"), false), 0);
    assert_non_null(s->username);
    assert_true(s->username != s->client_id);
    bool fresh;
    assert_int_equal(cy_session_subscribe(T.d, s, S("a/#"), 0, 0, &fresh), 0);
    assert_int_equal(cy_session_subscribe(T.d, s, S("$share/g/b/+"), 0, 0, &fresh), 0);
    assert_int_equal(s->acl_gen, 0); /* no ACL: nothing to check */

    load_acl("user someone\ntopic read a/#\ntopic read b/+\n");
    assert_int_equal(s->acl_gen, T.d->acl_gen); /* covered, the shared one by its filter */
    publish(NULL, "a/x", "1", 0, false);
    publish(NULL, "b/x", "1", 0, false);
    assert_int_equal(f.n_send, 2);

    /* a reload that no longer covers b/+: its messages are checked one by one */
    load_acl("user someone\ntopic read a/#\n");
    assert_int_equal(s->acl_gen, 0);
    publish(NULL, "b/x", "1", 0, false);
    publish(NULL, "a/y", "1", 0, false);
    assert_int_equal(f.n_send, 3);
    assert_string_equal(f.sent[2].topic, "a/y");
    assert_int_equal(T.stats.acl_file_denied, 1);
    /* the subscription stays (Mosquitto's way): a later reload gives it back */
    assert_int_equal(s->n_subs, 2);
    load_acl("user someone\ntopic read #\n");
    assert_int_equal(s->acl_gen, T.d->acl_gen);
    publish(NULL, "b/x", "1", 0, false);
    assert_int_equal(f.n_send, 4);

    /* the username of an isolated device is its id: no copy */
    flink g;
    flink_init(&g, "fake1");
    cy_session *d = connect_(&g, DEV, 0, true);
    assert_int_equal(cy_session_set_who(T.d, d, S(DEV), false), 0);
    assert_true(d->username == d->client_id);
    cy_who w;
    cy_session_who(d, &w);
    assert_int_equal(w.username_len, strlen(DEV));
    assert_false(w.internal);
    /* out of memory copying a username: refused, nothing changed */
    cy_alloc_fail_after(0);
    assert_int_equal(cy_session_set_who(T.d, s, S("other"), false), CY_ENOMEM);
    cy_alloc_fail_after(-1);
    assert_string_equal(s->username, "someone");
    disconnect_(&g, false);
    disconnect_(&f, false);
    drop_acl_file();
}

/* ---- device calls ---- */

static void op(uint32_t req, uint8_t o, const char *id, const char *name, const char *arg,
               uint32_t timeout_ms)
{
    /* as the API calls it: "" for no name, an argument of 0 bytes */
    if (!name) name = "";
    if (!arg) arg = "";
    cy_device_op(T.d, 3, req, o, id, strlen(id), name, strlen(name), (const uint8_t *)arg,
                 strlen(arg), timeout_ms);
}

static void do_reply(cy_session *s, const char *rid, const char *payload, size_t len)
{
    cy_device_reply(T.d, s, rid, rid ? strlen(rid) : 0, (const uint8_t *)payload, len);
}

static void test_calls(void **state)
{
    (void)state;
    flink f;
    flink_init(&f, "fake1");
    cy_session *s = connect_(&f, DEV, 0, true);

    op(1, CY_DEVICE_OP_CALL, DEV, "reboot", "now", 0);
    assert_int_equal(A.n_answers, 1);
    assert_int_equal(A.last_status, 404);
    assert_non_null(strstr(A.last_body, "function_not_found"));
    assert_int_equal(f.n_call, 0);

    publish(s, "devices/" DEV "/describe", "{\"functions\":[\"reboot\"],\"variables\":[\"temp\"]}",
            1, true);
    publish(NULL, "devices/" DEV2 "/describe", "{\"functions\":[\"reboot\"]}", 1, true);
    json_t *desc = cy_device_describe(T.d, DEV);
    assert_non_null(desc);
    json_decref(desc);
    assert_null(cy_device_describe(T.d, "ffffffffffffffffffffffff"));

    op(2, CY_DEVICE_OP_GET, DEV, "reboot", NULL, 0); /* a function, not a variable */
    assert_int_equal(A.last_status, 404);
    assert_non_null(strstr(A.last_body, "variable_not_found"));
    op(3, CY_DEVICE_OP_CALL, DEV2, "reboot", NULL, 0); /* described, never connected */
    assert_int_equal(A.last_status, 409);
    assert_non_null(strstr(A.last_body, "device_offline"));
    assert_int_equal(A.n_answers, 3);

    /* a call goes to the link */
    op(4, CY_DEVICE_OP_CALL, DEV, "reboot", "now", 0);
    assert_int_equal(A.n_answers, 3);
    assert_int_equal(f.n_call, 1);
    assert_string_equal(f.call_verb, "call");
    assert_string_equal(f.call_name, "reboot");
    assert_int_equal(f.call_len, 3);
    assert_memory_equal(f.call_arg, "now", 3);
    assert_int_equal(strlen(f.call_rid), 16);
    assert_int_equal(strspn(f.call_rid, "0123456789abcdef"), 16);
    assert_int_equal(T.stats.api_calls, 1);
    char rid[32];
    snprintf(rid, sizeof(rid), "%s", f.call_rid);

    /* another device's session cannot answer it, nor a wrong id */
    flink g;
    flink_init(&g, "fake1");
    cy_session *s2 = connect_(&g, DEV2, 0, true);
    do_reply(s2, rid, S("1"));
    do_reply(s, "0123", S("1"));
    do_reply(s, NULL, S("1"));
    assert_int_equal(A.n_answers, 3);

    do_reply(s, rid, S("{\"ok\":true}"));
    assert_int_equal(A.n_answers, 4);
    assert_int_equal(A.last_req, 4);
    assert_int_equal(A.last_status, 200);
    json_t *body = json_loads(A.last_body, 0, NULL);
    assert_non_null(body);
    assert_string_equal(json_string_value(json_object_get(body, "id")), DEV);
    assert_string_equal(json_string_value(json_object_get(body, "name")), "reboot");
    assert_true(json_is_true(json_object_get(json_object_get(body, "return_value"), "ok")));
    assert_true(json_is_number(json_object_get(body, "round_trip_ms")));
    json_decref(body);
    do_reply(s, rid, S("2")); /* once */
    assert_int_equal(A.n_answers, 4);

    /* a read; a reply that is not JSON is a string */
    op(5, CY_DEVICE_OP_GET, DEV, "temp", NULL, 0);
    assert_int_equal(f.n_call, 2);
    assert_string_equal(f.call_verb, "get");
    assert_string_not_equal(f.call_rid, rid);
    do_reply(s, f.call_rid, S("21 C"));
    assert_int_equal(A.last_status, 200);
    body = json_loads(A.last_body, 0, NULL);
    assert_string_equal(json_string_value(json_object_get(body, "value")), "21 C");
    json_decref(body);

    /* over 64 KiB: 502, once */
    op(6, CY_DEVICE_OP_GET, DEV, "temp", NULL, 0);
    char *big = malloc(CY_DEVICE_REPLY_MAX + 1);
    assert_non_null(big);
    memset(big, '1', CY_DEVICE_REPLY_MAX + 1);
    snprintf(rid, sizeof(rid), "%s", f.call_rid);
    do_reply(s, rid, big, CY_DEVICE_REPLY_MAX + 1);
    assert_int_equal(A.last_status, 502);
    assert_int_equal(A.last_req, 6);
    do_reply(s, rid, big, 1);
    free(big);
    assert_int_equal(A.n_answers, 6);

    /* the deadline: 504, once, counted */
    op(7, CY_DEVICE_OP_CALL, DEV, "reboot", NULL, 1000);
    assert_int_equal(f.n_call, 4);
    snprintf(rid, sizeof(rid), "%s", f.call_rid);
    cy_devices_tick(T.d, cy_mono_ms());
    assert_int_equal(A.n_answers, 6);
    cy_devices_tick(T.d, cy_mono_ms() + 1100);
    assert_int_equal(A.n_answers, 7);
    assert_int_equal(A.last_status, 504);
    assert_non_null(strstr(A.last_body, "device_timeout"));
    assert_int_equal(T.stats.api_call_timeouts, 1);
    cy_devices_tick(T.d, cy_mono_ms() + 120000);
    do_reply(s, rid, S("late"));
    assert_int_equal(A.n_answers, 7);
    /* the default deadline is 10 s, and more than 60 s is capped at 60 s */
    op(8, CY_DEVICE_OP_CALL, DEV, "reboot", NULL, 0);
    op(9, CY_DEVICE_OP_CALL, DEV, "reboot", NULL, CY_DEVICE_MAX_TIMEOUT_MS + 60000);
    cy_devices_tick(T.d, cy_mono_ms() + CY_DEVICE_DEFAULT_TIMEOUT_MS - 1000);
    assert_int_equal(A.n_answers, 7);
    cy_devices_tick(T.d, cy_mono_ms() + CY_DEVICE_DEFAULT_TIMEOUT_MS + 10);
    assert_int_equal(A.n_answers, 8);
    cy_devices_tick(T.d, cy_mono_ms() + CY_DEVICE_MAX_TIMEOUT_MS - 1000);
    assert_int_equal(A.n_answers, 8);
    cy_devices_tick(T.d, cy_mono_ms() + CY_DEVICE_MAX_TIMEOUT_MS + 10);
    assert_int_equal(A.n_answers, 9);
    assert_int_equal(T.stats.api_call_timeouts, 3);

    /* malformed */
    op(10, 99, DEV, "reboot", NULL, 0);
    assert_int_equal(A.last_status, 400);
    op(11, CY_DEVICE_OP_CALL, DEV "0", "reboot", NULL, 0);
    assert_int_equal(A.last_status, 400);

    /* a transport that cannot carry calls: offline for calls */
    cy_link_ops nocall = cyt_flink_ops;
    nocall.call = NULL;
    g.base.ops = &nocall;
    publish(s2, "devices/" DEV2 "/describe", "{\"functions\":[\"reboot\"]}", 1, true);
    op(12, CY_DEVICE_OP_CALL, DEV2, "reboot", NULL, 0);
    assert_int_equal(A.last_status, 409);
    g.base.ops = &cyt_flink_ops;

    /* presence through an operation */
    op(13, CY_DEVICE_OP_PRESENCE, DEV, NULL, NULL, 0);
    assert_int_equal(A.last_status, 200);
    body = json_loads(A.last_body, 0, NULL);
    assert_true(json_is_true(json_object_get(body, "online")));
    assert_true(json_is_string(json_object_get(body, "last_round_trip")));
    json_decref(body);
    op(14, CY_DEVICE_OP_PRESENCE_ALL, DEV, NULL, NULL, 0);
    body = json_loads(A.last_body, 0, NULL);
    assert_int_equal(json_object_size(body), 2);
    json_decref(body);

    /* kick: the link closes (no will), the session ends, presence goes;
     * a call in flight is still answered, by its deadline */
    op(15, CY_DEVICE_OP_CALL, DEV, "reboot", NULL, 100);
    watcher w;
    watch(&w, "wills/#");
    set_will(s, "wills/" DEV, 0);
    op(16, CY_DEVICE_OP_KICK, DEV, NULL, NULL, 0);
    assert_int_equal(A.last_req, 16);
    assert_int_equal(A.last_status, 200);
    assert_int_equal(f.n_close, 1);
    assert_int_equal(f.close_reason, CY_REASON_NOT_AUTHORIZED);
    assert_null(cy_session_find(T.d, S(DEV)));
    assert_int_equal(w.n, 0);
    body = cy_device_presence_all(T.d);
    assert_null(json_object_get(body, DEV));
    assert_int_equal(json_object_size(body), 1);
    json_decref(body);
    cy_devices_tick(T.d, cy_mono_ms() + 200);
    assert_int_equal(A.last_req, 15);
    assert_int_equal(A.last_status, 504);
    unwatch(&w, "wills/#");

    /* every operation answered exactly once */
    assert_int_equal(A.n_answers, 16);
    for (uint32_t i = 1; i <= 16; i++)
        assert_int_equal(A.per_req[i], 1);
}

/* A deleted device's will waiting for its delay is not published either. */
static void test_kick_pending_will(void **state)
{
    (void)state;
    watcher w;
    watch(&w, "devices/#");
    flink f;
    flink_init(&f, "fake1");
    cy_session *s = connect_(&f, DEV, 3600, true);
    set_will(s, "devices/" DEV "/gone", 30);
    disconnect_(&f, true);
    assert_non_null(s->will);
    op(1, CY_DEVICE_OP_KICK, DEV, NULL, NULL, 0);
    assert_int_equal(A.last_status, 200);
    assert_int_equal(f.n_close, 0); /* no link to close */
    assert_null(cy_session_find(T.d, S(DEV)));
    assert_int_equal(w.n, 0);
    unwatch(&w, "devices/#");
}

/* ---- presence ---- */

static void test_presence(void **state)
{
    (void)state;
    json_t *p = cy_device_presence(T.d, DEV); /* never seen */
    assert_false(json_is_true(json_object_get(p, "online")));
    assert_true(json_is_null(json_object_get(p, "protocol")));
    assert_true(json_is_null(json_object_get(p, "connected_since")));
    assert_true(json_is_null(json_object_get(p, "last_heard")));
    assert_true(json_is_null(json_object_get(p, "last_round_trip")));
    json_decref(p);

    flink f;
    flink_init(&f, "fake1");
    f.proto = "coap";
    int64_t before = cy_wall_ms();
    cy_session *s = connect_(&f, DEV, 0, true);
    f.heard = (int64_t)uv_now(&T.loop) - 86400000; /* a day ago */
    p = cy_device_presence(T.d, DEV);
    int64_t after = cy_wall_ms();
    assert_true(json_is_true(json_object_get(p, "online")));
    assert_string_equal(json_string_value(json_object_get(p, "protocol")), "coap");
    json_t *lo = cy_device_time(before), *hi = cy_device_time(after);
    json_t *day_lo = cy_device_time(before - 86400000), *day_hi = cy_device_time(after - 86400000);
    const char *cs = json_string_value(json_object_get(p, "connected_since"));
    const char *lh = json_string_value(json_object_get(p, "last_heard"));
    assert_non_null(cs);
    assert_non_null(lh);
    /* ISO 8601 UTC of one length compares as text */
    assert_int_equal(strlen(cs), 24);
    assert_true(strcmp(cs, json_string_value(lo)) >= 0);
    assert_true(strcmp(cs, json_string_value(hi)) <= 0);
    assert_true(strcmp(lh, json_string_value(day_lo)) >= 0);
    assert_true(strcmp(lh, json_string_value(day_hi)) <= 0);
    json_decref(p);

    /* an application's session has no presence */
    flink g;
    flink_init(&g, "fake1");
    connect_(&g, "app", 0, false);
    p = cy_device_presence_all(T.d);
    assert_int_equal(json_object_size(p), 1);
    assert_true(json_is_true(json_object_get(json_object_get(p, DEV), "online")));
    json_decref(p);

    /* offline: last heard kept */
    (void)s;
    disconnect_(&f, true);
    json_decref(day_hi);
    day_hi = cy_device_time(cy_wall_ms() - 86400000);
    f.heard = (int64_t)uv_now(&T.loop); /* the link is gone: not asked again */
    p = cy_device_presence(T.d, DEV);
    assert_false(json_is_true(json_object_get(p, "online")));
    assert_true(json_is_null(json_object_get(p, "protocol")));
    assert_true(json_is_null(json_object_get(p, "connected_since")));
    lh = json_string_value(json_object_get(p, "last_heard"));
    assert_non_null(lh);
    assert_true(strcmp(lh, json_string_value(day_lo)) >= 0);
    assert_true(strcmp(lh, json_string_value(day_hi)) <= 0);
    json_decref(p);
    p = cy_device_presence_all(T.d);
    assert_false(json_is_true(json_object_get(json_object_get(p, DEV), "online")));
    json_decref(p);

    /* a stale link going offline does not touch the new one's record */
    flink h;
    flink_init(&h, "fake1");
    s = connect_(&h, DEV, 0, true);
    cy_device_offline(T.d, s, &f.base, CY_PRESENCE_CONNECTION_LOST);
    p = cy_device_presence(T.d, DEV);
    assert_true(json_is_true(json_object_get(p, "online")));
    json_decref(p);

    json_t *t = cy_device_time(0);
    assert_true(json_is_null(t));
    json_decref(t);
    t = cy_device_time(1700000000123);
    assert_string_equal(json_string_value(t), "2023-11-14T22:13:20.123Z");
    json_decref(t);
    json_decref(lo);
    json_decref(hi);
    json_decref(day_lo);
    json_decref(day_hi);
}

/* ---- requests: any shard asks the owner (here: one shard, itself) ---- */

static struct {
    int n;
    unsigned status;
    char body[512];
    bool presence;
    char why[128];
} R;

static void req_done(void *ctx, const cy_device_answer *a)
{
    (void)ctx;
    R.n++;
    R.status = a->status;
    snprintf(R.body, sizeof(R.body), "%.*s", a->body ? (int)a->len : 0, a->body ? a->body : "");
    R.presence = a->presence && a->presence[0];
    snprintf(R.why, sizeof(R.why), "%s", a->why ? a->why : "");
}

static void test_requests(void **state)
{
    (void)state;
    memset(&R, 0, sizeof(R));
    cy_devices_set_answer(T.d, NULL, NULL); /* the default: back to the requester */
    flink f;
    flink_init(&f, "fake1");
    cy_session *s = connect_(&f, DEV, 0, true);
    publish(s, "devices/" DEV "/describe", "{\"functions\":[\"reboot\"]}", 1, true);
    cy_device_request *r = NULL;
    const cy_hist *calls = &T.hists.h[CY_HIST_DEVICE_CALL];
    memset(&T.hists, 0, sizeof(T.hists));

    /* answered at once (404): done ran inside, no handle */
    assert_int_equal(cy_device_request_start(T.d, CY_DEVICE_OP_CALL, DEV, "nope", NULL, 0, 2000,
                                             req_done, NULL, &r),
                     0);
    assert_null(r);
    assert_int_equal(R.n, 1);
    assert_int_equal(R.status, 404);
    /* every call is timed at its one end, whatever the answer */
    assert_int_equal(cy_hist_count(calls), 1);
    assert_true(calls->changed_ms > 0);

    /* a call waits for the device; its reply ends it once */
    assert_int_equal(cy_device_request_start(T.d, CY_DEVICE_OP_CALL, DEV, "reboot",
                                             (const uint8_t *)"x", 1, 2000, req_done, NULL, &r),
                     0);
    assert_non_null(r);
    assert_int_equal(R.n, 1);
    assert_int_equal(f.n_call, 1);
    assert_int_equal(cy_hist_count(calls), 1); /* not before its answer */
    char rid[32];
    snprintf(rid, sizeof(rid), "%s", f.call_rid);
    do_reply(s, rid, S("42"));
    assert_int_equal(R.n, 2);
    assert_int_equal(R.status, 200);
    assert_non_null(strstr(R.body, "\"return_value\":42"));
    assert_int_equal(cy_hist_count(calls), 2);
    do_reply(s, rid, S("43"));
    cy_devices_tick(T.d, cy_mono_ms() + 60000);
    assert_int_equal(R.n, 2);
    assert_int_equal(cy_hist_count(calls), 2); /* a late reply is not a second end */

    /* cancelled: the reply and the deadline reach nobody */
    assert_int_equal(cy_device_request_start(T.d, CY_DEVICE_OP_CALL, DEV, "reboot", NULL, 0, 2000,
                                             req_done, NULL, &r),
                     0);
    assert_non_null(r);
    snprintf(rid, sizeof(rid), "%s", f.call_rid);
    cy_device_request_cancel(r);
    do_reply(s, rid, S("1"));
    cy_devices_tick(T.d, cy_mono_ms() + 60000);
    assert_int_equal(R.n, 2);
    assert_int_equal(cy_hist_count(calls), 3); /* its answer came: timed */

    /* the device never answers: the owner's 504 (its deadline is the
     * caller's less the margin) arrives before the requester gives up */
    assert_int_equal(cy_device_request_start(T.d, CY_DEVICE_OP_CALL, DEV, "reboot", NULL, 0, 1000,
                                             req_done, NULL, &r),
                     0);
    assert_non_null(r);
    cy_devices_tick(T.d, cy_mono_ms() + 950);
    assert_int_equal(R.n, 3);
    assert_int_equal(R.status, 504);
    assert_int_equal(cy_hist_count(calls), 4);
    cy_devices_tick(T.d, cy_mono_ms() + 60000);
    assert_int_equal(R.n, 3);
    assert_int_equal(cy_hist_count(calls), 4);

    /* presence of every device this (only) shard knows, at once */
    assert_int_equal(cy_device_request_start(T.d, CY_DEVICE_OP_PRESENCE_ALL, NULL, NULL, NULL, 0,
                                             1000, req_done, NULL, &r),
                     0);
    assert_null(r);
    assert_int_equal(R.n, 4);
    assert_int_equal(R.status, 200);
    assert_true(R.presence);
    assert_int_equal(cy_hist_count(calls), 4); /* presence is not a call */

    /* ids and names are bounded */
    char longname[300];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    assert_int_equal(cy_device_request_start(T.d, CY_DEVICE_OP_CALL, DEV, longname, NULL, 0, 1000,
                                             req_done, NULL, &r),
                     CY_EINVAL);
    assert_int_equal(R.n, 4);
    assert_int_equal(cy_hist_count(calls), 4);
    /* within this test, every call took well under a second; the API's
     * histogram is not the device layer's to touch */
    assert_true(calls->sum_us < 4 * 1000000);
    assert_int_equal(cy_hist_count(&T.hists.h[CY_HIST_API_REQUEST]), 0);
}

/* ---- owed work (the progress watchdog) ---- */

/* device_int.h's online_queued is what it says: the queued deliveries of
 * the sessions that have a link (it lets the count skip its walk). */
static void sum_online(void *ctx, cy_session *s)
{
    if (s->link) *(uint64_t *)ctx += cy_session_n_queued(s);
}

static void check_online_queued(void)
{
    uint64_t n = 0;
    cy_session_map_each(&T.d->sessions, sum_online, &n);
    assert_int_equal(T.d->online_queued, n);
}

/* Deliverable messages are owed only while the device is connected, ready
 * and has window for them; a pump sends exactly those (progress) and
 * leaves nothing owed. Messages for an offline device or behind a full
 * window wait for the device, not for the shard. */
static void test_owed_deliveries(void **state)
{
    (void)state;
    flink f, g;
    flink_init(&f, "fake1");
    flink_init(&g, "fake1");
    f.window = 2; /* under max_inflight 3 */
    cy_session *s = connect_(&f, "o1", 60, false);
    cy_session *s2 = connect_(&g, "o2", 60, false);
    assert_int_equal(cy_devices_owed_deliveries(T.d), 0); /* connected, idle */
    for (int i = 0; i < 5; i++)
        deliver(s, "o/1", 1);
    assert_int_equal(cy_session_n_inflight(s), 2);
    assert_int_equal(cy_session_n_queued(s), 3);
    assert_int_equal(cy_session_sendable(T.d, s), 0); /* the device's window is full */
    assert_int_equal(cy_devices_owed_deliveries(T.d), 0);
    check_online_queued();
    deliver(s, "o/1", 0); /* QoS 0 is never queued */
    assert_int_equal(cy_devices_owed_deliveries(T.d), 0);

    /* the device widens its window: one more may go, and is owed until a
     * pump sends it */
    f.window = 0; /* max_inflight 3 rules */
    assert_int_equal(cy_session_sendable(T.d, s), 1);
    f.window = 100;
    assert_int_equal(cy_session_sendable(T.d, s), 1);
    assert_int_equal(cy_devices_owed_deliveries(T.d), 1);
    uint64_t done = cy_devices_progress(T.d);
    unsigned sent = f.n_send;
    cy_session_pump(T.d, s);
    assert_int_equal(f.n_send, sent + 1);
    assert_int_equal(cy_devices_progress(T.d), done + 1);
    assert_int_equal(cy_devices_owed_deliveries(T.d), 0);

    /* two acknowledged without a pump: two owed (two queued are left) */
    cy_session_remove_delivery(T.d, s, cy_session_head(s));
    cy_session_remove_delivery(T.d, s, cy_session_head(s));
    assert_int_equal(cy_session_sendable(T.d, s), 2);
    /* a second session adds its own */
    g.ready = false;
    deliver(s2, "o/2", 1);
    assert_int_equal(cy_session_n_queued(s2), 1);
    assert_int_equal(cy_session_sendable(T.d, s2), 0); /* its link is not ready */
    g.ready = true;
    assert_int_equal(cy_devices_owed_deliveries(T.d), 3);
    check_online_queued();
    cy_session_pump(T.d, s2);
    cy_session_pump(T.d, s);
    assert_int_equal(cy_devices_owed_deliveries(T.d), 0);
    assert_int_equal(cy_devices_progress(T.d), done + 4);

    /* offline with a queue: it waits for the device */
    for (int i = 0; i < 3; i++)
        deliver(s, "o/1", 1);
    disconnect_(&f, true);
    assert_non_null(cy_session_find(T.d, S("o1")));
    assert_true(cy_session_n_queued(s) > 0);
    assert_int_equal(cy_session_sendable(T.d, s), 0);
    assert_int_equal(cy_devices_owed_deliveries(T.d), 0);
    check_online_queued();

    /* back online: its queue goes out as the window allows, nothing owed;
     * its device does not acknowledge the next ones: nothing owed either */
    flink_init(&f, "fake1");
    f.window = 1;
    connect_(&f, "o1", 60, false);
    check_online_queued();
    assert_int_equal(cy_devices_owed_deliveries(T.d), 0);
    assert_true(cy_session_n_queued(s) > 0);
    /* a restart loads the queue of the offline session */
    disconnect_(&f, true);
    disconnect_(&g, true);
    layer_restart();
    check_online_queued();
    assert_int_equal(cy_devices_owed_deliveries(T.d), 0);
    s = cy_session_find(T.d, S("o1"));
    assert_non_null(s);
    assert_true(cy_session_n_queued(s) > 0);
    flink_init(&f, "fake1");
    connect_(&f, "o1", 60, false);
    check_online_queued();
    assert_int_equal(cy_devices_owed_deliveries(T.d), 0);
    /* the session ends with its queue (a clean start): the count follows */
    disconnect_(&f, false);
    cy_session_end(T.d, s);
    check_online_queued();
    assert_int_equal(T.d->online_queued, 0);
}

/* Calls and requests are owed only past their deadline, until the tick
 * answers them (progress); one waiting for its device within the deadline
 * is not, nor a cancelled one. */
static void test_owed_calls(void **state)
{
    (void)state;
    flink f;
    flink_init(&f, "fake1");
    cy_session *s = connect_(&f, DEV, 0, true);
    publish(s, "devices/" DEV "/describe", "{\"functions\":[\"reboot\"]}", 1, true);
    int64_t now = cy_mono_ms();
    assert_int_equal(cy_devices_owed_calls(T.d, now), 0);
    uint64_t done = cy_devices_progress(T.d);
    op(1, CY_DEVICE_OP_CALL, DEV, "nope", NULL, 0); /* answered at once */
    assert_int_equal(A.n_answers, 1);
    assert_int_equal(cy_devices_progress(T.d), done + 1);
    op(2, CY_DEVICE_OP_CALL, DEV, "reboot", NULL, 1000);
    op(3, CY_DEVICE_OP_CALL, DEV, "reboot", NULL, 5000);
    assert_int_equal(f.n_call, 2);
    assert_int_equal(cy_devices_owed_calls(T.d, now), 0);        /* waiting for the device */
    assert_int_equal(cy_devices_owed_calls(T.d, now + 2000), 1); /* call 2's 504 is due */
    assert_int_equal(cy_devices_owed_calls(T.d, now + 6000), 2);
    done = cy_devices_progress(T.d);
    cy_devices_tick(T.d, now + 2000);
    assert_int_equal(A.last_status, 504);
    assert_int_equal(A.last_req, 2);
    assert_int_equal(cy_devices_progress(T.d), done + 1);
    assert_int_equal(cy_devices_owed_calls(T.d, now + 2000), 0);
    do_reply(s, f.call_rid, S("ok")); /* call 3 answered in time */
    assert_int_equal(A.last_req, 3);
    assert_int_equal(cy_devices_owed_calls(T.d, now + 60000), 0);

    /* the requester's side: a request the owner did not answer in time */
    memset(&R, 0, sizeof(R));
    cy_devices_set_answer(T.d, NULL, NULL); /* back to the requester */
    cy_device_request *r = NULL, *r2 = NULL;
    now = cy_mono_ms();
    assert_int_equal(cy_device_request_start(T.d, CY_DEVICE_OP_CALL, DEV, "reboot", NULL, 0, 1000,
                                             req_done, NULL, &r),
                     0);
    assert_non_null(r);
    assert_int_equal(cy_device_request_start(T.d, CY_DEVICE_OP_CALL, DEV, "reboot", NULL, 0, 1000,
                                             req_done, NULL, &r2),
                     0);
    assert_non_null(r2);
    cy_device_request_cancel(r2); /* its caller left: nobody is owed an answer */
    assert_int_equal(cy_devices_owed_calls(T.d, now), 0);
    /* past both deadlines: the owner's two calls and the request that
     * still has a caller */
    assert_int_equal(cy_devices_owed_calls(T.d, now + 1500), 3);
    cy_devices_tick(T.d, now + 1500);
    assert_int_equal(R.n, 1);
    assert_int_equal(cy_devices_owed_calls(T.d, now + 60000), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_admit_topics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admit_reply, setup, teardown),
        cmocka_unit_test_setup_teardown(test_admit_describe, setup, teardown),
        cmocka_unit_test_setup_teardown(test_qos0, setup, teardown),
        cmocka_unit_test_setup_teardown(test_qos1_window, setup, teardown),
        cmocka_unit_test_setup_teardown(test_resume, setup, teardown),
        cmocka_unit_test_setup_teardown(test_persistence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_queued_then_sent_after_crash, setup, teardown),
        cmocka_unit_test_setup_teardown(test_expired_at_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_will_now, setup, teardown),
        cmocka_unit_test_setup_teardown(test_will_delay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_subscribe_route, setup, teardown),
        cmocka_unit_test_setup_teardown(test_session_subs_array, setup, teardown),
        cmocka_unit_test_setup_teardown(test_session_cold, setup, teardown),
        cmocka_unit_test_setup_teardown(test_session_cold_no_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_session_cold_load, setup, teardown),
        cmocka_unit_test_setup_teardown(test_calls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kick_pending_will, setup, teardown),
        cmocka_unit_test_setup_teardown(test_presence, setup, teardown),
        cmocka_unit_test_setup_teardown(test_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_owed_deliveries, setup, teardown),
        cmocka_unit_test_setup_teardown(test_owed_calls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acl_admit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acl_delivery, setup, teardown),
        cmocka_unit_test_setup_teardown(test_acl_recheck, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
