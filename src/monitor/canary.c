/* canary: the synthetic device of one shard; see canary.h.
 *
 * One canary is three small state machines on one loop:
 *   - the MQTT session: IDLE (waiting out a backoff) -> TCP (connecting) ->
 *     CONNACK -> SETUP (SUBSCRIBE and the describe sent; both acknowledged
 *     makes it) -> READY. Any failure closes the socket and goes back to
 *     IDLE; the `retry` timer is the backoff in IDLE and the deadline of the
 *     whole connect in the other states. Each connection has a generation:
 *     callbacks of an older one (a write completing after a close) are
 *     ignored.
 *   - two steps, each with at most one attempt pending, a deadline timer,
 *     and `finish`, the one place an attempt ends (stats, callback);
 *   - libcurl's multi handle, driven by uv_poll_t handles that curl asks
 *     for through its socket callback and one timer (curl's own pattern).
 *
 * Closing: every handle's close callback counts down `open`; the canary's
 * memory goes in cy_canary_free if nothing is open any more, else in the
 * last close callback (`free_pending`): exactly once.
 */
#include "monitor/canary.h"

#include "cluster/cluster.h" /* cy_shard_of: which shard owns a client id */
#include "core/cy_alloc.h"
#include "core/cy_buf.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "health/watchdog.h" /* cy_listen_addr_parse */
#include "mqtt/mqtt.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <jansson.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BACKOFF_MIN_MS 200
#define BACKOFF_MAX_MS 2000
#define KEEPALIVE_MIN_S 30
#define MAX_PACKET (1u << 20) /* bytes; what cyan sends a canary is small */
#define MAX_BODY 65536        /* bytes of an API answer kept */
#define TOPIC_MAX 128
#define SETTLE_MS (CY_REGISTRY_RECHECK_MS + 50)

enum { MQ_IDLE, MQ_TCP, MQ_CONNACK, MQ_SETUP, MQ_READY };

/* One uv_poll_t per socket libcurl asked us to watch. */
typedef struct curl_poll {
    uv_poll_t h;
    curl_socket_t fd;
    struct cy_canary *c;
    struct curl_poll *prev, *next;
} curl_poll;

/* One write on the MQTT socket, with its bytes. */
typedef struct wreq {
    uv_write_t req;
    struct cy_canary *c;
    uint64_t gen;
    size_t len;
    uint8_t data[];
} wreq;

typedef struct attempt {
    bool active;
    uint64_t seq;
    int64_t t0_us; /* mono */
    uv_timer_t deadline;
    /* publish */
    uint16_t pid;
    bool acked, delivered;
    /* call */
    CURL *easy;
    cy_buf body;
    char post[96]; /* the request body */
    char error[CURL_ERROR_SIZE];
} attempt;

struct cy_canary {
    uv_loop_t *loop;
    cy_canary_cb cb;
    void *ctx;
    unsigned shard, interval_ms, timeout_ms;
    bool publish_only; /* conf: no call step */
    char id[CY_DEVICE_ID_LEN + 1];
    char secret[CY_DEVICE_SECRET_LEN + 1];
    char auth[CY_TOKEN_MAX + 32]; /* "Authorization: Bearer <token>" */
    char url[160];                /* the call's URL */
    char ev_topic[TOPIC_MAX];     /* $cyan/canary/<id> */
    char call_prefix[TOPIC_MAX];  /* devices/<id>/call/ping/ */
    struct sockaddr_storage mqtt;
    /* MQTT */
    uv_tcp_t tcp;
    uv_connect_t conn_req;
    bool tcp_open;  /* tcp initialised and its close not yet called */
    bool tcp_alive; /* tcp initialised and its close callback not yet run */
    int state;      /* MQ_* */
    uint64_t gen;   /* connection generation */
    uint16_t next_pid;
    uint16_t sub_pid, desc_pid;
    bool sub_ok, desc_ok, ever_ready;
    uint16_t keepalive_s;
    int64_t last_tx_ms; /* mono */
    unsigned backoff_ms;
    uv_timer_t retry;
    char why[CY_CANARY_ERROR_MAX]; /* why the session is not up */
    bool why_logged;
    cy_buf in;
    cy_buf scratch;
    uint8_t rbuf[16384];
    /* rounds */
    uv_timer_t tick;
    uint64_t seq[CY_CANARY_NSTEPS];
    attempt at[CY_CANARY_NSTEPS];
    cy_canary_stats stats[CY_CANARY_NSTEPS];
    /* HTTP */
    CURLM *multi;
    bool curl_global;
    struct curl_slist *headers;
    uv_timer_t curl_timer;
    curl_poll *polls;
    /* life */
    unsigned open; /* handles whose close callback has not run */
    bool stopping, free_pending;
};

static void mq_fail(cy_canary *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void finish(cy_canary *c, int step, bool ok, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

const char *cy_canary_step_name(int step)
{
    return step == CY_CANARY_PUBLISH ? "publish" : step == CY_CANARY_CALL ? "call" : "?";
}

/* ---- life ---- */

static void really_free(cy_canary *c)
{
    for (int i = 0; i < CY_CANARY_NSTEPS; i++)
        cy_buf_fini(&c->at[i].body);
    cy_buf_fini(&c->in);
    cy_buf_fini(&c->scratch);
    if (c->curl_global) curl_global_cleanup();
    OPENSSL_cleanse(c->secret, sizeof(c->secret));
    OPENSSL_cleanse(c->auth, sizeof(c->auth));
    cy_free(c);
}

static void handle_closed(uv_handle_t *h)
{
    cy_canary *c = h->data;
    if (--c->open == 0 && c->free_pending) really_free(c);
}

static void tcp_closed(uv_handle_t *h)
{
    cy_canary *c = h->data;
    c->tcp_alive = false;
    handle_closed(h);
}

static void poll_closed(uv_handle_t *h)
{
    curl_poll *p = h->data;
    cy_canary *c = p->c;
    cy_free(p);
    if (--c->open == 0 && c->free_pending) really_free(c);
}

static void timer_init(cy_canary *c, uv_timer_t *t)
{
    uv_timer_init(c->loop, t);
    t->data = c;
    c->open++;
}

/* ---- helpers ---- */

int cy_canary_target(const char *listen, struct sockaddr_storage *out)
{
    if (!listen || !out) return CY_EINVAL;
    int rc = cy_listen_addr_parse(listen, out);
    if (rc) return rc;
    if (out->ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)out;
        if (a->sin_addr.s_addr == htonl(INADDR_ANY)) a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)out;
        if (IN6_IS_ADDR_UNSPECIFIED(&a->sin6_addr)) a->sin6_addr = in6addr_loopback;
    }
    return 0;
}

bool cy_canary_answer_ok(long status, const char *body, size_t len, uint64_t seq, char *why,
                         size_t whylen)
{
    json_error_t err;
    json_t *o = body && len ? json_loadb(body, len, 0, &err) : NULL;
    bool ok = false;
    if (status == 200) {
        json_t *v = json_is_object(o) ? json_object_get(o, "return_value") : NULL;
        if (json_is_integer(v) && json_integer_value(v) >= 0 &&
            (uint64_t)json_integer_value(v) == seq) {
            ok = true;
        } else {
            char *text = v ? json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
            snprintf(why, whylen, "HTTP 200 with return_value %.60s, expected %" PRIu64,
                     text ? text : "missing", seq);
            free(text);
        }
    } else if (json_is_object(o) && json_is_string(json_object_get(o, "error"))) {
        const char *msg = json_string_value(json_object_get(o, "message"));
        snprintf(why, whylen, "HTTP %ld %s: %.100s", status,
                 json_string_value(json_object_get(o, "error")), msg ? msg : "");
    } else {
        snprintf(why, whylen, "HTTP %ld", status);
    }
    json_decref(o);
    return ok;
}

/* ---- results ---- */

/* End step's pending attempt: the stats, then the callback (last: it may
 * stop or free the canary). fmt: the error, NULL when ok. */
static void finish(cy_canary *c, int step, bool ok, const char *fmt, ...)
{
    attempt *a = &c->at[step];
    if (!a->active) return;
    a->active = false;
    uv_timer_stop(&a->deadline);
    char error[CY_CANARY_ERROR_MAX] = "";
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(error, sizeof(error), fmt, ap);
        va_end(ap);
    }
    int64_t latency = cy_mono_us() - a->t0_us;
    cy_canary_stats *s = &c->stats[step];
    if (ok) {
        s->success++;
        s->last_latency_us = latency;
        s->last_success_ms = cy_wall_ms();
    } else {
        s->failure++;
        s->last_failure_ms = cy_wall_ms();
        memcpy(s->last_error, error, sizeof(error));
    }
    if (c->stopping || !c->cb) return;
    cy_canary_result r = {.shard = c->shard,
                          .step = step,
                          .seq = a->seq,
                          .ok = ok,
                          .latency_us = latency,
                          .error = ok ? NULL : error};
    c->cb(c->ctx, &r);
}

/* An attempt that cannot start (the session is down): it begins, and
 * fails now with the session's trouble. */
static void fail_now(cy_canary *c, int step, uint64_t seq, const char *what)
{
    attempt *a = &c->at[step];
    a->active = true;
    a->seq = seq;
    a->t0_us = cy_mono_us();
    static const char *const doing[] = {
        [MQ_IDLE] = "waiting to connect",
        [MQ_TCP] = "TCP connect under way",
        [MQ_CONNACK] = "waiting for the CONNACK",
        [MQ_SETUP] = "waiting for the SUBACK and the describe's PUBACK",
        [MQ_READY] = "connected",
    };
    finish(c, step, false, "%s: %s", what, c->why[0] ? c->why : doing[c->state]);
}

/* ---- MQTT: output ---- */

static void write_done(uv_write_t *req, int status)
{
    wreq *w = (wreq *)req;
    cy_canary *c = w->c;
    uint64_t gen = w->gen;
    cy_free(w);
    if (status < 0 && status != UV_ECANCELED && gen == c->gen && !c->stopping)
        mq_fail(c, "write: %s", uv_strerror(status));
}

/* Encode p and write it. 0, or the failure was handled (the connection is
 * closing): the caller checks c->state. */
static int mq_send(cy_canary *c, const cy_mqtt_packet *p)
{
    cy_buf_reset(&c->scratch);
    int rc = cy_mqtt_encode(&c->scratch, CY_MQTT_V311, p);
    if (rc) {
        mq_fail(c, "encode %s: %s", cy_mqtt_type_name(p->type), cy_strerror(rc));
        return rc;
    }
    size_t n = cy_buf_size(&c->scratch);
    wreq *w = cy_malloc(sizeof(*w) + n);
    if (!w) {
        mq_fail(c, "out of memory");
        return CY_ENOMEM;
    }
    w->c = c;
    w->gen = c->gen;
    w->len = n;
    memcpy(w->data, cy_buf_head(&c->scratch), n);
    uv_buf_t b = uv_buf_init((char *)w->data, (unsigned)n);
    rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, write_done);
    if (rc) {
        cy_free(w);
        mq_fail(c, "write: %s", uv_strerror(rc));
        return rc;
    }
    c->last_tx_ms = cy_mono_ms();
    return 0;
}

static uint16_t next_pid(cy_canary *c)
{
    if (++c->next_pid == 0) c->next_pid = 1;
    return c->next_pid;
}

static int mq_publish(cy_canary *c, const char *topic, const void *payload, size_t len, uint8_t qos,
                      bool retain, uint16_t pid)
{
    cy_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = CY_MQTT_PUBLISH;
    p.u.publish.qos = qos;
    p.u.publish.retain = retain;
    p.u.publish.topic = (cy_str){topic, (uint32_t)strlen(topic)};
    p.u.publish.packet_id = pid;
    p.u.publish.payload = payload;
    p.u.publish.payload_len = len;
    return mq_send(c, &p);
}

/* ---- MQTT: the session ---- */

static void on_retry(uv_timer_t *t);
static void tick(uv_timer_t *t);

/* The session failed (or could not start): close the socket, fail a
 * pending publish (its answer cannot come on another connection), and
 * open a new connection after the backoff. */
static void mq_fail(cy_canary *c, const char *fmt, ...)
{
    if (c->stopping) return;
    va_list ap;
    va_start(ap, fmt);
    char why[CY_CANARY_ERROR_MAX];
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    bool was_ready = c->state == MQ_READY;
    /* One line per change of trouble, not one per retry. */
    if (was_ready || !c->why_logged || strcmp(why, c->why) != 0)
        cy_warn(c->id, "canary of shard %u: %s%s", c->shard, why,
                was_ready ? " (session lost)" : "");
    c->why_logged = true;
    memcpy(c->why, why, sizeof(why));
    c->gen++;
    c->state = MQ_IDLE;
    if (c->tcp_open) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        uv_close((uv_handle_t *)&c->tcp, tcp_closed);
        c->tcp_open = false;
    }
    cy_buf_reset(&c->in);
    uv_timer_start(&c->retry, on_retry, c->backoff_ms, 0);
    c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
    if (c->at[CY_CANARY_PUBLISH].active)
        finish(c, CY_CANARY_PUBLISH, false, "connection lost: %s", why);
}

static void on_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
    cy_canary *c = h->data;
    (void)size;
    *buf = uv_buf_init((char *)c->rbuf, sizeof(c->rbuf));
}

static const char *connack_text(uint8_t rc)
{
    switch (rc) {
    case CY_RC3_BAD_VERSION:
        return "unacceptable protocol version";
    case CY_RC3_ID_REJECTED:
        return "client id rejected";
    case CY_RC3_SERVER_UNAVAILABLE:
        return "server unavailable (the shard is down, hung or starting)";
    case CY_RC3_BAD_USER_OR_PASSWORD:
        return "bad user name or password";
    case CY_RC3_NOT_AUTHORIZED:
        return "not authorized";
    default:
        return "refused";
    }
}

static void ready(cy_canary *c)
{
    c->state = MQ_READY;
    c->backoff_ms = BACKOFF_MIN_MS;
    uv_timer_stop(&c->retry);
    if (c->why_logged) cy_info(c->id, "canary of shard %u: connected", c->shard);
    c->why_logged = false;
    c->why[0] = '\0';
    if (!c->ever_ready) {
        /* The first attempts now, then every interval. */
        c->ever_ready = true;
        uv_timer_start(&c->tick, tick, 0, c->interval_ms);
    }
}

/* The publish attempt is done when both its halves are in. */
static void publish_check(cy_canary *c)
{
    attempt *a = &c->at[CY_CANARY_PUBLISH];
    if (a->active && a->acked && a->delivered) finish(c, CY_CANARY_PUBLISH, true, NULL);
}

static void on_publish(cy_canary *c, const cy_mqtt_publish *p)
{
    if (p->qos == 1) {
        cy_mqtt_packet ack;
        memset(&ack, 0, sizeof(ack));
        ack.type = CY_MQTT_PUBACK;
        ack.u.ack.packet_id = p->packet_id;
        if (mq_send(c, &ack)) return;
    }
    size_t el = strlen(c->ev_topic), cl = strlen(c->call_prefix);
    if (p->topic.len == el && memcmp(p->topic.p, c->ev_topic, el) == 0) {
        attempt *a = &c->at[CY_CANARY_PUBLISH];
        char num[24];
        int n = snprintf(num, sizeof(num), "%" PRIu64, a->seq);
        if (a->active && p->payload_len == (size_t)n && memcmp(p->payload, num, (size_t)n) == 0) {
            a->delivered = true;
            publish_check(c);
        }
        return;
    }
    if (p->topic.len > cl && p->topic.len - cl <= 64 &&
        memcmp(p->topic.p, c->call_prefix, cl) == 0) {
        /* ping: the reply is the argument. */
        char reply[TOPIC_MAX + 64];
        snprintf(reply, sizeof(reply), "devices/%s/reply/%.*s", c->id, (int)(p->topic.len - cl),
                 p->topic.p + cl);
        mq_publish(c, reply, p->payload, p->payload_len, 0, false, 0);
    }
}

/* One packet from the server. */
static void on_packet(cy_canary *c, const cy_mqtt_packet *p)
{
    switch (p->type) {
    case CY_MQTT_CONNACK:
        if (c->state != MQ_CONNACK) {
            mq_fail(c, "protocol error: a CONNACK out of place");
            return;
        }
        if (p->u.connack.reason != CY_RC3_ACCEPTED) {
            mq_fail(c, "CONNECT refused: return code %u, %s", p->u.connack.reason,
                    connack_text(p->u.connack.reason));
            return;
        }
        c->state = MQ_SETUP;
        {
            char calls[TOPIC_MAX];
            snprintf(calls, sizeof(calls), "devices/%s/call/#", c->id);
            cy_mqtt_sub_entry e[2] = {
                {.filter = {c->ev_topic, (uint32_t)strlen(c->ev_topic)}, .qos = 1},
                {.filter = {calls, (uint32_t)strlen(calls)}, .qos = 1},
            };
            cy_mqtt_packet s;
            memset(&s, 0, sizeof(s));
            s.type = CY_MQTT_SUBSCRIBE;
            c->sub_pid = s.u.subscribe.packet_id = next_pid(c);
            s.u.subscribe.entries = e;
            /* Publishing only: no call will come, so neither the call
             * subscription nor a describe (retained, on the device's
             * topics, which a plain broker's `#` subscriber would see). */
            s.u.subscribe.count = c->publish_only ? 1 : 2;
            if (mq_send(c, &s)) return;
            if (c->publish_only) {
                c->desc_ok = true;
                return;
            }
            /* Described after the SUBSCRIBE: a call can only come once the
             * describe is known, and then the subscription is there. */
            char topic[TOPIC_MAX];
            snprintf(topic, sizeof(topic), "devices/%s/describe", c->id);
            static const char desc[] = "{\"functions\":[\"" CY_CANARY_FUNCTION "\"]}";
            c->desc_pid = next_pid(c);
            mq_publish(c, topic, desc, sizeof(desc) - 1, 1, true, c->desc_pid);
        }
        return;
    case CY_MQTT_SUBACK:
        if (c->state != MQ_SETUP || p->u.suback.packet_id != c->sub_pid) return;
        for (uint32_t i = 0; i < p->u.suback.count; i++)
            if (p->u.suback.reasons[i] >= 0x80) {
                mq_fail(c, "SUBSCRIBE refused (0x%02x)", p->u.suback.reasons[i]);
                return;
            }
        c->sub_ok = true;
        if (c->desc_ok) ready(c);
        return;
    case CY_MQTT_PUBACK:
        if (c->state == MQ_SETUP && p->u.ack.packet_id == c->desc_pid) {
            c->desc_ok = true;
            if (c->sub_ok) ready(c);
        } else if (c->at[CY_CANARY_PUBLISH].active &&
                   p->u.ack.packet_id == c->at[CY_CANARY_PUBLISH].pid) {
            c->at[CY_CANARY_PUBLISH].acked = true;
            publish_check(c);
        }
        return;
    case CY_MQTT_PUBLISH:
        if (c->state == MQ_SETUP || c->state == MQ_READY) on_publish(c, &p->u.publish);
        return;
    case CY_MQTT_PINGRESP:
        return;
    default:
        mq_fail(c, "protocol error: unexpected %s", cy_mqtt_type_name(p->type));
    }
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    cy_canary *c = s->data;
    (void)buf;
    if (n == 0) return;
    if (n < 0) {
        mq_fail(c, "%s", n == UV_EOF ? "the server closed the connection" : uv_strerror((int)n));
        return;
    }
    if (cy_buf_append(&c->in, c->rbuf, (size_t)n)) {
        mq_fail(c, "out of memory");
        return;
    }
    uint64_t gen = c->gen;
    while (cy_buf_size(&c->in) > 0 && gen == c->gen && !c->stopping) {
        size_t len = 0;
        int rc = cy_mqtt_frame(cy_buf_head(&c->in), cy_buf_size(&c->in), MAX_PACKET, &len);
        if (rc == CY_EAGAIN) break;
        cy_mqtt_packet p;
        size_t used = 0;
        if (!rc) rc = cy_mqtt_decode(cy_buf_head(&c->in), len, CY_MQTT_V311, &p, &used);
        if (rc) {
            mq_fail(c, "bad packet from the server: %s", cy_strerror(rc));
            return;
        }
        on_packet(c, &p);
        /* The packet may have closed (or stopped) the canary: its bytes are
         * then gone with the buffer's reset. */
        if (gen != c->gen || c->stopping) return;
        cy_buf_consume(&c->in, used);
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    cy_canary *c = req->data;
    if (c->stopping || c->state != MQ_TCP || req->handle != (uv_stream_t *)&c->tcp || !c->tcp_open)
        return;
    if (status < 0) {
        mq_fail(c, "connect: %s", uv_strerror(status));
        return;
    }
    int rc = uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    if (rc) {
        mq_fail(c, "read: %s", uv_strerror(rc));
        return;
    }
    c->state = MQ_CONNACK;
    cy_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = CY_MQTT_CONNECT;
    cy_mqtt_connect *k = &p.u.connect;
    k->version = CY_MQTT_V311;
    k->clean_start = true;
    k->keep_alive = c->keepalive_s;
    k->client_id = (cy_str){c->id, CY_DEVICE_ID_LEN};
    k->has_username = k->has_password = true;
    k->username = (cy_str){c->id, CY_DEVICE_ID_LEN};
    k->password = (cy_str){c->secret, CY_DEVICE_SECRET_LEN};
    mq_send(c, &p);
}

/* Open a new connection (or, IDLE's backoff over while the last socket is
 * still closing, wait a little more). In the other states the timer is the
 * connect's deadline. */
static void on_retry(uv_timer_t *t)
{
    cy_canary *c = t->data;
    if (c->stopping) return;
    if (c->state != MQ_IDLE) {
        mq_fail(c, "no session within %u ms (%s)", c->timeout_ms,
                c->state == MQ_TCP       ? "TCP connect"
                : c->state == MQ_CONNACK ? "no CONNACK"
                                         : "no SUBACK or describe PUBACK");
        return;
    }
    if (c->tcp_alive) {
        uv_timer_start(&c->retry, on_retry, 10, 0);
        return;
    }
    int rc = uv_tcp_init(c->loop, &c->tcp);
    if (rc) {
        mq_fail(c, "socket: %s", uv_strerror(rc));
        return;
    }
    c->tcp.data = c;
    c->tcp_open = c->tcp_alive = true;
    c->open++;
    uv_tcp_nodelay(&c->tcp, 1);
    c->state = MQ_TCP;
    c->sub_ok = c->desc_ok = false;
    c->conn_req.data = c;
    rc = uv_tcp_connect(&c->conn_req, &c->tcp, (const struct sockaddr *)&c->mqtt, on_connect);
    if (rc) {
        mq_fail(c, "connect: %s", uv_strerror(rc));
        return;
    }
    uv_timer_start(&c->retry, on_retry, c->timeout_ms, 0);
}

/* ---- the steps ---- */

static void on_deadline(uv_timer_t *t)
{
    cy_canary *c = t->data;
    int step = t == &c->at[CY_CANARY_CALL].deadline ? CY_CANARY_CALL : CY_CANARY_PUBLISH;
    attempt *a = &c->at[step];
    if (!a->active) return;
    if (step == CY_CANARY_CALL) {
        curl_multi_remove_handle(c->multi, a->easy);
        curl_easy_cleanup(a->easy);
        a->easy = NULL;
        finish(c, step, false, "no answer from the API within %u ms", c->timeout_ms);
        return;
    }
    finish(c, step, false, "timed out after %u ms: %s", c->timeout_ms,
           !a->acked && !a->delivered ? "no PUBACK, event not delivered"
           : !a->acked                ? "no PUBACK (the event was delivered)"
                                      : "event not delivered (PUBACK received)");
    /* A fresh connection says at once whether the shard takes clients. */
    if (!c->stopping) mq_fail(c, "publish timed out");
}

static void start_publish(cy_canary *c)
{
    attempt *a = &c->at[CY_CANARY_PUBLISH];
    if (a->active) return; /* the last one is still pending: no pile-up */
    uint64_t seq = ++c->seq[CY_CANARY_PUBLISH];
    if (c->state != MQ_READY) {
        fail_now(c, CY_CANARY_PUBLISH, seq, "not connected");
        return;
    }
    a->active = true;
    a->seq = seq;
    a->acked = a->delivered = false;
    a->pid = next_pid(c);
    a->t0_us = cy_mono_us();
    uv_timer_start(&a->deadline, on_deadline, c->timeout_ms, 0);
    char num[24];
    int n = snprintf(num, sizeof(num), "%" PRIu64, seq);
    mq_publish(c, c->ev_topic, num, (size_t)n, 1, false, a->pid);
}

static size_t on_body(char *p, size_t size, size_t n, void *ctx)
{
    attempt *a = ctx;
    size_t len = size * n;
    if (cy_buf_size(&a->body) + len > MAX_BODY) return 0; /* curl fails the transfer */
    return cy_buf_append(&a->body, p, len) ? 0 : len;
}

static void start_call(cy_canary *c)
{
    attempt *a = &c->at[CY_CANARY_CALL];
    if (a->active) return;
    uint64_t seq = ++c->seq[CY_CANARY_CALL];
    if (c->state != MQ_READY) {
        fail_now(c, CY_CANARY_CALL, seq, "device not connected");
        return;
    }
    a->active = true;
    a->seq = seq;
    a->t0_us = cy_mono_us();
    cy_buf_reset(&a->body);
    a->error[0] = '\0';
    snprintf(a->post, sizeof(a->post), "{\"arg\":\"%" PRIu64 "\",\"timeout\":%u}", seq,
             (c->timeout_ms + 999) / 1000);
    CURL *e = curl_easy_init();
    if (!e) {
        finish(c, CY_CANARY_CALL, false, "libcurl: cannot make a request");
        return;
    }
    curl_easy_setopt(e, CURLOPT_URL, c->url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, c->headers);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, a->post);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, a);
    curl_easy_setopt(e, CURLOPT_ERRORBUFFER, a->error);
    curl_easy_setopt(e, CURLOPT_PRIVATE, c);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_PROXY, ""); /* never an http_proxy of the environment */
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)c->timeout_ms + 1000); /* ours comes first */
    if (!strncmp(c->url, "https:", 6)) { /* our own listener: see cy_canary_conf.http_tls */
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    a->easy = e;
    uv_timer_start(&a->deadline, on_deadline, c->timeout_ms, 0);
    CURLMcode mc = curl_multi_add_handle(c->multi, e);
    if (mc != CURLM_OK) {
        a->easy = NULL;
        curl_easy_cleanup(e);
        finish(c, CY_CANARY_CALL, false, "libcurl: %s", curl_multi_strerror(mc));
    }
}

/* Every interval: an attempt of each step, and a PINGREQ if the socket was
 * quiet for half the keep-alive (only with long intervals). */
static void tick(uv_timer_t *t)
{
    cy_canary *c = t->data;
    if (c->stopping) return;
    if (c->state == MQ_READY && cy_mono_ms() - c->last_tx_ms > (int64_t)c->keepalive_s * 500) {
        cy_mqtt_packet p;
        memset(&p, 0, sizeof(p));
        p.type = CY_MQTT_PINGREQ;
        mq_send(c, &p);
    }
    start_publish(c);
    if (!c->stopping && !c->publish_only) start_call(c);
}

/* Before the first session: the first attempts at timeout_ms, failing. */
static void first_tick(uv_timer_t *t)
{
    cy_canary *c = t->data;
    if (c->ever_ready || c->stopping) return;
    c->ever_ready = true; /* the rounds have begun */
    uv_timer_start(&c->tick, tick, 0, c->interval_ms);
}

/* ---- HTTP: libcurl on the loop ---- */

static void curl_done(cy_canary *c)
{
    CURLMsg *m;
    int left;
    while (!c->stopping && (m = curl_multi_info_read(c->multi, &left))) {
        if (m->msg != CURLMSG_DONE) continue;
        attempt *a = &c->at[CY_CANARY_CALL];
        CURL *e = m->easy_handle;
        CURLcode res = m->data.result;
        long status = 0;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        curl_multi_remove_handle(c->multi, e);
        curl_easy_cleanup(e);
        if (e != a->easy || !a->active) continue;
        a->easy = NULL;
        if (res != CURLE_OK) {
            finish(c, CY_CANARY_CALL, false, "HTTP: %s",
                   a->error[0] ? a->error : curl_easy_strerror(res));
            continue;
        }
        char why[CY_CANARY_ERROR_MAX];
        if (cy_canary_answer_ok(status, (const char *)cy_buf_head(&a->body), cy_buf_size(&a->body),
                                a->seq, why, sizeof(why)))
            finish(c, CY_CANARY_CALL, true, NULL);
        else
            finish(c, CY_CANARY_CALL, false, "%s", why);
    }
}

static void on_curl_timer(uv_timer_t *t)
{
    cy_canary *c = t->data;
    int running;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    curl_done(c);
}

static int curl_timer_cb(CURLM *multi, long ms, void *ctx)
{
    cy_canary *c = ctx;
    (void)multi;
    if (ms < 0)
        uv_timer_stop(&c->curl_timer);
    else
        uv_timer_start(&c->curl_timer, on_curl_timer, (uint64_t)ms, 0);
    return 0;
}

static void on_poll(uv_poll_t *h, int status, int events)
{
    curl_poll *p = h->data;
    cy_canary *c = p->c;
    int flags = status < 0 ? CURL_CSELECT_ERR : 0;
    if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    int running;
    curl_multi_socket_action(c->multi, p->fd, flags, &running);
    curl_done(c);
}

static void poll_close(cy_canary *c, curl_poll *p)
{
    uv_poll_stop(&p->h);
    if (p->prev)
        p->prev->next = p->next;
    else
        c->polls = p->next;
    if (p->next) p->next->prev = p->prev;
    uv_close((uv_handle_t *)&p->h, poll_closed);
}

static int curl_socket_cb(CURL *e, curl_socket_t fd, int what, void *ctx, void *sockp)
{
    cy_canary *c = ctx;
    curl_poll *p = sockp;
    (void)e;
    if (what == CURL_POLL_REMOVE) {
        if (p) {
            curl_multi_assign(c->multi, fd, NULL);
            poll_close(c, p);
        }
        return 0;
    }
    if (!p) {
        p = cy_calloc(1, sizeof(*p));
        if (!p) return -1;
        if (uv_poll_init_socket(c->loop, &p->h, fd)) {
            cy_free(p);
            return -1;
        }
        p->h.data = p;
        p->fd = fd;
        p->c = c;
        p->next = c->polls;
        if (c->polls) c->polls->prev = p;
        c->polls = p;
        c->open++;
        curl_multi_assign(c->multi, fd, p);
    }
    int ev = (what & CURL_POLL_IN ? UV_READABLE : 0) | (what & CURL_POLL_OUT ? UV_WRITABLE : 0);
    uv_poll_start(&p->h, ev, on_poll);
    return 0;
}

/* ---- start, stop ---- */

static bool hex_len(const char *s, size_t n)
{
    if (!s || strlen(s) != n) return false;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

static int http_url(const char *listen, bool tls, const char *id, char *url, size_t size)
{
    const char *scheme = tls ? "https" : "http";
    struct sockaddr_storage ss;
    int rc = cy_canary_target(listen, &ss);
    if (rc) return rc;
    char host[INET6_ADDRSTRLEN];
    unsigned port;
    if (ss.ss_family == AF_INET) {
        struct sockaddr_in *a = (struct sockaddr_in *)&ss;
        inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
        port = ntohs(a->sin_port);
        snprintf(url, size, "%s://%s:%u/v1/devices/%s/functions/" CY_CANARY_FUNCTION, scheme, host,
                 port, id);
    } else {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
        inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
        port = ntohs(a->sin6_port);
        snprintf(url, size, "%s://[%s]:%u/v1/devices/%s/functions/" CY_CANARY_FUNCTION, scheme,
                 host, port, id);
    }
    return 0;
}

int cy_canary_new(uv_loop_t *loop, const cy_canary_conf *conf, cy_canary_cb cb, void *ctx,
                  cy_canary **out)
{
    if (!out) return CY_EINVAL;
    *out = NULL;
    if (!loop || !conf || !hex_len(conf->device_id, CY_DEVICE_ID_LEN) ||
        !hex_len(conf->secret, CY_DEVICE_SECRET_LEN) || !conf->token ||
        strlen(conf->token) > CY_TOKEN_MAX || strpbrk(conf->token, "\r\n"))
        return CY_EINVAL;
    unsigned timeout = conf->timeout_ms ? conf->timeout_ms : CY_CANARY_TIMEOUT_MS;
    unsigned interval = conf->interval_ms ? conf->interval_ms : CY_CANARY_INTERVAL_MS;
    if (timeout < 1000 || timeout > CY_CANARY_MAX_TIMEOUT_MS) return CY_EINVAL;
    cy_canary *c = cy_calloc(1, sizeof(*c));
    if (!c) return CY_ENOMEM;
    c->loop = loop;
    c->cb = cb;
    c->ctx = ctx;
    c->shard = conf->shard;
    c->interval_ms = interval;
    c->timeout_ms = timeout;
    c->backoff_ms = BACKOFF_MIN_MS;
    /* Attempts keep the session busy; the keep-alive matters only with
     * long intervals (a PINGREQ then goes with the tick). */
    unsigned ka = interval / 1000 * 3;
    c->keepalive_s = (uint16_t)(ka < KEEPALIVE_MIN_S ? KEEPALIVE_MIN_S : ka > 3600 ? 3600 : ka);
    memcpy(c->id, conf->device_id, CY_DEVICE_ID_LEN + 1);
    memcpy(c->secret, conf->secret, CY_DEVICE_SECRET_LEN + 1);
    snprintf(c->auth, sizeof(c->auth), "Authorization: Bearer %s", conf->token);
    snprintf(c->ev_topic, sizeof(c->ev_topic), CY_CANARY_TOPIC "%s", c->id);
    snprintf(c->call_prefix, sizeof(c->call_prefix), "devices/%s/call/" CY_CANARY_FUNCTION "/",
             c->id);
    cy_buf_init(&c->in);
    cy_buf_init(&c->scratch);
    for (int i = 0; i < CY_CANARY_NSTEPS; i++)
        cy_buf_init(&c->at[i].body);
    int rc = cy_canary_target(conf->mqtt_addr, &c->mqtt);
    c->publish_only = conf->publish_only;
    if (!rc && !c->publish_only) rc = http_url(conf->http_addr, conf->http_tls, c->id, c->url, sizeof(c->url));
    if (rc) {
        really_free(c);
        return CY_EINVAL;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        really_free(c);
        return CY_EIO;
    }
    c->curl_global = true;
    c->multi = curl_multi_init();
    struct curl_slist *h = curl_slist_append(NULL, c->auth);
    c->headers = h ? curl_slist_append(h, "Content-Type: application/json") : NULL;
    if (!c->headers) curl_slist_free_all(h);
    if (!c->multi || !c->headers) {
        curl_multi_cleanup(c->multi);
        curl_slist_free_all(c->headers);
        really_free(c);
        return CY_EIO;
    }
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    /* One connection, kept alive: a call each interval costs no handshake. */
    curl_multi_setopt(c->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, 1L);
    timer_init(c, &c->retry);
    timer_init(c, &c->tick);
    timer_init(c, &c->curl_timer);
    for (int i = 0; i < CY_CANARY_NSTEPS; i++)
        timer_init(c, &c->at[i].deadline);
    /* Connect once every shard has seen the credentials, which were made
     * (rotated) just now: a shard that checked the old ones keeps them for
     * up to CY_REGISTRY_RECHECK_MS. (From the loop either way: results never
     * come from inside this call.) */
    uv_timer_start(&c->retry, on_retry, SETTLE_MS, 0);
    uv_timer_start(&c->tick, first_tick, timeout, 0);
    *out = c;
    return 0;
}

const cy_canary_stats *cy_canary_stats_of(const cy_canary *c, int step)
{
    return c && step >= 0 && step < CY_CANARY_NSTEPS ? &c->stats[step] : NULL;
}

bool cy_canary_connected(const cy_canary *c)
{
    return c && c->state == MQ_READY;
}

void cy_canary_stop(cy_canary *c)
{
    if (!c || c->stopping) return;
    c->stopping = true;
    c->gen++;
    attempt *call = &c->at[CY_CANARY_CALL];
    if (call->easy) {
        curl_multi_remove_handle(c->multi, call->easy);
        curl_easy_cleanup(call->easy);
        call->easy = NULL;
    }
    for (int i = 0; i < CY_CANARY_NSTEPS; i++)
        c->at[i].active = false;
    /* curl closes its cached connection here and asks us to stop watching
     * its socket; whatever it did not ask about is closed after. */
    curl_multi_cleanup(c->multi);
    c->multi = NULL;
    curl_slist_free_all(c->headers);
    c->headers = NULL;
    while (c->polls)
        poll_close(c, c->polls);
    if (c->tcp_open) {
        /* A clean goodbye if it fits in the socket now (it always does). */
        static const uint8_t disconnect[] = {0xE0, 0x00};
        uv_buf_t b = uv_buf_init((char *)disconnect, sizeof(disconnect));
        if (c->state == MQ_READY) uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        uv_read_stop((uv_stream_t *)&c->tcp);
        uv_close((uv_handle_t *)&c->tcp, tcp_closed);
        c->tcp_open = false;
    }
    c->state = MQ_IDLE;
    uv_close((uv_handle_t *)&c->retry, handle_closed);
    uv_close((uv_handle_t *)&c->tick, handle_closed);
    uv_close((uv_handle_t *)&c->curl_timer, handle_closed);
    for (int i = 0; i < CY_CANARY_NSTEPS; i++)
        uv_close((uv_handle_t *)&c->at[i].deadline, handle_closed);
}

void cy_canary_free(cy_canary *c)
{
    if (!c || c->free_pending) return;
    cy_canary_stop(c);
    c->free_pending = true;
    if (c->open == 0) really_free(c);
}

/* ---- credentials ---- */

typedef struct shard_pick {
    unsigned shard, nshards;
} shard_pick;

static bool on_shard(void *ctx, const char *id)
{
    const shard_pick *p = ctx;
    return cy_shard_of(id, strlen(id), p->nshards) == p->shard;
}

#define ROLE_MAX 40

static bool role_ok(const char *role)
{
    return role && role[0] && strlen(role) <= ROLE_MAX;
}

int cy_canary_device(cy_registry *r, const char *role, unsigned shard, unsigned nshards,
                     char id_out[CY_DEVICE_ID_LEN + 1], char secret_out[CY_DEVICE_SECRET_LEN + 1])
{
    if (id_out) id_out[0] = '\0';
    if (secret_out) secret_out[0] = '\0';
    if (!role_ok(role) || nshards == 0 || shard >= nshards) return CY_EINVAL;
    char name[CY_DEVICE_NAME_MAX + 1];
    snprintf(name, sizeof(name), "cyan:%s:%u", role, shard);
    shard_pick p = {shard, nshards};
    /* It gets a DTLS PSK too (every device does); no canary speaks CoAP
     * yet, so it is not kept here. */
    return cy_registry_internal_device(r, name, on_shard, &p, id_out, secret_out, NULL);
}

int cy_canary_token(cy_registry *r, const char *role, char id_out[CY_TOKEN_ID_LEN + 1],
                    char token_out[CY_TOKEN_MAX + 1])
{
    if (id_out) id_out[0] = '\0';
    if (token_out) token_out[0] = '\0';
    if (!role_ok(role)) return CY_EINVAL;
    char name[CY_TOKEN_NAME_MAX + 1];
    snprintf(name, sizeof(name), "cyan:%s", role);
    return cy_registry_internal_token(r, name, id_out, token_out);
}
