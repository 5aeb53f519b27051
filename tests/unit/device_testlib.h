/* device_testlib: what the device-layer unit tests share (test_device,
 * test_device_presence): the layer built as a shard builds it, and a fake
 * link to drive it.
 *
 * The layer (T): a store in a temporary folder, a router, a cluster of one
 * shard (idle: no bus), counters and histograms, a libuv loop of its own
 * and the default settings; each test file lowers the limits it needs
 * before cyt_layer_open. Restarts are real: cyt_layer_close frees
 * everything and closes the store (which commits), a new cyt_layer_open
 * opens the same file.
 *
 * The fake link (flink): sessions talk to their device only through a
 * cy_link. This one records every send, release, close and call; its
 * window, readiness and congestion are set by each test, so what the
 * session decides is checked without any wire. Its close does what a
 * transport does: tells the layer the device went offline (when it is a
 * device) and detaches the session.
 *
 * Header-only (static inline: a test that uses part of it gets no warning
 * for the rest), one per test program; T is that program's. Thread: the
 * test's.
 */
#ifndef CY_DEVICE_TESTLIB_H
#define CY_DEVICE_TESTLIB_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cluster/cluster.h"
#include "core/cy_config.h"
#include "core/cy_log.h"
#include "core/cy_reason.h"
#include "device/device.h"
#include "device/device_int.h"
#include "device/link.h"
#include "device/session.h"
#include "router/router.h"
#include "store/store.h"
#include "store_testlib.h"

#define CYT_MAX_SENT 64

/* ---- the layer ---- */

static struct cyt_layer {
    char dir[64], path[128]; /* the folder, and the shard's file in it */
    uv_loop_t loop;
    cy_config cfg;
    cy_counters stats;
    cy_hists hists;
    cy_store *store;
    cy_router *r;
    cy_cluster *cl;
    cy_devices *d;
} T;

/* A fresh folder from template ("/tmp/cyan-...-XXXXXX"), the loop and the
 * default settings; the layer is not open yet. 0, or -1 (for a cmocka
 * setup). */
static inline int cyt_layer_setup(const char *template)
{
    memset(&T, 0, sizeof(T));
    cy_log_set_level(CY_LOG_ERROR);
    if (cyt_dir_make(T.dir, sizeof(T.dir), template)) return -1;
    snprintf(T.path, sizeof(T.path), "%s/shard.db", T.dir);
    if (uv_loop_init(&T.loop)) return -1;
    cy_config_defaults(&T.cfg);
    return 0;
}

static inline void cyt_layer_open(void)
{
    assert_int_equal(cy_store_open(T.path, false, &T.store), 0);
    assert_int_equal(cy_router_new(&T.cfg, T.store, &T.stats, 0, &T.r), 0);
    cy_cluster_options o = {.self = 0, .nshards = 1, .generation = 1, .sb = NULL};
    assert_int_equal(cy_cluster_new(&T.loop, &T.cfg, T.store, T.r, &T.stats, &o, &T.cl), 0);
    assert_int_equal(
        cy_devices_new(&T.loop, &T.cfg, T.store, T.r, T.cl, &T.stats, &T.hists, 0, 1, 1, &T.d), 0);
}

/* Frees the layer and closes the store (a close commits; a test that
 * stands for a crash commits nothing after its last explicit commit). */
static inline void cyt_layer_close(void)
{
    cy_devices_free(T.d);
    cy_cluster_free(T.cl);
    cy_router_free(T.r);
    cy_store_close(T.store);
    T.d = NULL;
    T.cl = NULL;
    T.r = NULL;
    T.store = NULL;
}

/* The end of a test whose layer is open: close it, the loop, the folder. */
static inline void cyt_layer_teardown(void)
{
    cyt_layer_close();
    uv_run(&T.loop, UV_RUN_NOWAIT);
    uv_loop_close(&T.loop);
    cyt_dir_remove(T.dir);
}

/* ---- the fake link ---- */

typedef struct cyt_sent {
    char topic[64];
    uint16_t id;
    uint8_t qos;
    bool retain, dup;
    uint32_t n_sub_ids;
    uint32_t sub_id0;
} cyt_sent;

typedef struct flink {
    cy_link base;
    const char *proto;
    uint32_t window;
    bool ready, congested;
    int send_rc;   /* what send answers (0: it takes the message) */
    int64_t heard; /* uv_now-based ms of the last packet */
    cy_session *s; /* attached to, for close */
    bool device;   /* an isolated device: close reports it offline */
    unsigned n_send, n_release, n_close, n_call;
    cyt_sent sent[CYT_MAX_SENT];
    uint16_t released[CYT_MAX_SENT];
    uint8_t close_reason;
    char call_verb[8], call_name[CY_DEVICE_NAME_MAX + 1], call_rid[32];
    uint8_t call_arg[64];
    size_t call_len;
} flink;

static inline int f_send(cy_link *l, const cy_link_msg *lm)
{
    flink *f = (flink *)l;
    if (f->send_rc) return f->send_rc;
    assert_true(f->n_send < CYT_MAX_SENT);
    cyt_sent *x = &f->sent[f->n_send++];
    snprintf(x->topic, sizeof(x->topic), "%s", lm->m->topic);
    x->id = lm->id;
    x->qos = lm->qos;
    x->retain = lm->retain;
    x->dup = lm->dup;
    x->n_sub_ids = lm->n_sub_ids;
    x->sub_id0 = lm->n_sub_ids ? lm->sub_ids[0] : 0;
    return 0;
}

static inline int f_send_release(cy_link *l, uint16_t id)
{
    flink *f = (flink *)l;
    assert_true(f->n_release < CYT_MAX_SENT);
    f->released[f->n_release++] = id;
    return 0;
}

static inline uint32_t f_window(const cy_link *l)
{
    return ((const flink *)l)->window;
}

static inline bool f_ready(const cy_link *l)
{
    return ((const flink *)l)->ready;
}

static inline bool f_congested(const cy_link *l)
{
    return ((const flink *)l)->congested;
}

static inline const char *f_protocol(const cy_link *l)
{
    return ((const flink *)l)->proto;
}

static inline int64_t f_last_heard(const cy_link *l)
{
    return ((const flink *)l)->heard;
}

/* As a transport: the link goes, the layer hears of it at once. */
static inline void f_close(cy_link *l, uint8_t reason, const char *why)
{
    (void)why;
    flink *f = (flink *)l;
    f->n_close++;
    f->close_reason = reason;
    f->ready = false;
    cy_session *s = f->s;
    if (!s) return;
    f->s = NULL;
    if (f->device) cy_device_offline(T.d, s, l, cy_presence_reason_of(reason, false));
    cy_session_detach(T.d, s, true);
}

static inline int f_call(cy_link *l, const char *verb, const char *name, const char *rid,
                         const uint8_t *arg, size_t len)
{
    flink *f = (flink *)l;
    f->n_call++;
    snprintf(f->call_verb, sizeof(f->call_verb), "%s", verb);
    snprintf(f->call_name, sizeof(f->call_name), "%s", name);
    snprintf(f->call_rid, sizeof(f->call_rid), "%s", rid);
    assert_true(len <= sizeof(f->call_arg));
    if (len) memcpy(f->call_arg, arg, len);
    f->call_len = len;
    return 0;
}

/* The ops of a link that carries calls (a transport that cannot: a copy
 * with .call = NULL). */
static const cy_link_ops cyt_flink_ops = {
    .send = f_send,
    .send_release = f_send_release,
    .window = f_window,
    .ready = f_ready,
    .congested = f_congested,
    .close = f_close,
    .protocol = f_protocol,
    .last_heard = f_last_heard,
    .call = f_call,
};

/* A link of protocol proto (borrowed: a literal), ready, heard now. */
static inline void flink_init(flink *f, const char *proto)
{
    memset(f, 0, sizeof(*f));
    f->base.ops = &cyt_flink_ops;
    f->proto = proto;
    f->ready = true;
    f->heard = (int64_t)uv_now(&T.loop);
}

#endif
