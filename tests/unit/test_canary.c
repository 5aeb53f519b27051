/* Unit tests for monitor/canary: the canary client against a fake node on
 * the same loop, and its pure parts.
 *
 * The fake node is a small MQTT 3.1.1 broker (the codec of src/mqtt) and a
 * small HTTP server, both on 127.0.0.1 ports of the test's loop: the broker
 * answers CONNECT (with a return code the test chooses), SUBSCRIBE and QoS
 * 1 PUBLISH, echoes the canary's event back to it (unless told not to);
 * the HTTP server turns POST .../functions/ping into a call PUBLISH to the
 * canary and answers with the canary's reply (or a status the test
 * chooses). So every step of the client runs: success, late PUBACK or
 * delivery, refused CONNECT with its backoff, no CONNACK, no server, an
 * API error, and the lifecycle (stop and free inside the callback, the
 * loop ending with every handle closed).
 *
 * Pure parts: the device id chosen per shard (cy_canary_device, with a
 * registry on disk), the token, the address mapping and the answer check.
 */
#define _GNU_SOURCE /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cluster/cluster.h"
#include "core/cy_buf.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "monitor/canary.h"
#include "mqtt/mqtt.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define ID "0123456789abcdef01234567"
#define SECRET "00112233445566778899aabbccddeeff"
#define TOKEN "cyt_00112233aabb_00112233445566778899aabbccddeeff"

/* ---- the fake node ---- */

typedef struct fake fake;

typedef struct peer {
    uv_tcp_t tcp;
    fake *f;
    cy_buf in;
    bool http;
    bool closed;
    struct peer *next;
} peer;

struct fake {
    uv_loop_t loop;
    uv_timer_t beat; /* every 10 ms: UV_RUN_ONCE never waits longer */
    uv_tcp_t mqtt_srv, http_srv;
    int mqtt_port, http_port;
    peer *peers;
    peer *device;         /* the canary's MQTT connection */
    peer *http_waiting;   /* an HTTP request waiting for the canary's reply */
    /* behaviour */
    int refuse_first;     /* CONNACK with refuse_rc to this many CONNECTs */
    uint8_t refuse_rc;
    bool no_connack;      /* never answer CONNECT */
    bool no_echo;         /* PUBACK the event but do not deliver it back */
    int http_status;      /* 0: call the device; else answer this with an error body */
    /* seen */
    int connects, subscribes, describes, events, calls;
    char user[64], pass[64], client[64];
    int64_t connect_ms[8];
    /* results */
    cy_canary *c;
    int results[CY_CANARY_NSTEPS], ok[CY_CANARY_NSTEPS];
    char last_error[CY_CANARY_NSTEPS][CY_CANARY_ERROR_MAX];
    int stop_after;       /* stop (and free) the canary after this many results */
    bool free_in_cb;
};

static void peer_closed(uv_handle_t *h)
{
    peer *p = h->data;
    cy_buf_fini(&p->in);
    free(p);
}

static void peer_close(peer *p)
{
    if (p->closed) return;
    p->closed = true;
    fake *f = p->f;
    if (f->device == p) f->device = NULL;
    if (f->http_waiting == p) f->http_waiting = NULL;
    for (peer **pp = &f->peers; *pp; pp = &(*pp)->next)
        if (*pp == p) {
            *pp = p->next;
            break;
        }
    uv_close((uv_handle_t *)&p->tcp, peer_closed);
}

static void write_done(uv_write_t *w, int status)
{
    (void)status;
    free(w);
}

static void peer_send(peer *p, const void *data, size_t len)
{
    if (p->closed) return;
    uv_write_t *w = malloc(sizeof(*w) + len);
    assert_non_null(w);
    memcpy(w + 1, data, len);
    uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)len);
    assert_int_equal(uv_write(w, (uv_stream_t *)&p->tcp, &b, 1, write_done), 0);
}

static void mqtt_send(peer *p, const cy_mqtt_packet *pk)
{
    cy_buf b;
    cy_buf_init(&b);
    assert_int_equal(cy_mqtt_encode(&b, CY_MQTT_V311, pk), 0);
    peer_send(p, cy_buf_head(&b), cy_buf_size(&b));
    cy_buf_fini(&b);
}

static void mqtt_publish(peer *p, const char *topic, const char *payload, uint16_t pid)
{
    cy_mqtt_packet pk;
    memset(&pk, 0, sizeof(pk));
    pk.type = CY_MQTT_PUBLISH;
    pk.u.publish.qos = 1;
    pk.u.publish.packet_id = pid;
    pk.u.publish.topic = (cy_str){topic, (uint32_t)strlen(topic)};
    pk.u.publish.payload = (const uint8_t *)payload;
    pk.u.publish.payload_len = strlen(payload);
    mqtt_send(p, &pk);
}

static void http_answer(peer *p, int status, const char *body)
{
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                     "\r\n",
                     status, strlen(body));
    peer_send(p, head, (size_t)n);
    peer_send(p, body, strlen(body));
}

static void on_mqtt_packet(fake *f, peer *p, const cy_mqtt_packet *pk)
{
    cy_mqtt_packet a;
    memset(&a, 0, sizeof(a));
    switch (pk->type) {
    case CY_MQTT_CONNECT: {
        const cy_mqtt_connect *k = &pk->u.connect;
        if (f->connects < 8) f->connect_ms[f->connects] = cy_mono_ms();
        f->connects++;
        snprintf(f->user, sizeof(f->user), "%.*s", (int)k->username.len, k->username.p);
        snprintf(f->pass, sizeof(f->pass), "%.*s", (int)k->password.len, k->password.p);
        snprintf(f->client, sizeof(f->client), "%.*s", (int)k->client_id.len, k->client_id.p);
        assert_int_equal(k->version, CY_MQTT_V311);
        assert_true(k->clean_start);
        if (f->no_connack) return;
        a.type = CY_MQTT_CONNACK;
        a.u.connack.reason = f->refuse_first-- > 0 ? f->refuse_rc : 0;
        mqtt_send(p, &a);
        if (a.u.connack.reason == 0) f->device = p;
        return;
    }
    case CY_MQTT_SUBSCRIBE: {
        f->subscribes++;
        uint8_t granted[4] = {1, 1, 1, 1};
        a.type = CY_MQTT_SUBACK;
        a.u.suback.packet_id = pk->u.subscribe.packet_id;
        a.u.suback.reasons = granted;
        a.u.suback.count = pk->u.subscribe.count;
        mqtt_send(p, &a);
        return;
    }
    case CY_MQTT_PUBLISH: {
        const cy_mqtt_publish *pb = &pk->u.publish;
        char topic[256];
        snprintf(topic, sizeof(topic), "%.*s", (int)pb->topic.len, pb->topic.p);
        if (pb->qos == 1) {
            a.type = CY_MQTT_PUBACK;
            a.u.ack.packet_id = pb->packet_id;
            mqtt_send(p, &a);
        }
        if (!strcmp(topic, "devices/" ID "/describe")) {
            assert_true(pb->retain);
            assert_int_equal(pb->qos, 1);
            f->describes++;
        } else if (!strcmp(topic, CY_CANARY_TOPIC ID)) {
            f->events++;
            char payload[64];
            snprintf(payload, sizeof(payload), "%.*s", (int)pb->payload_len,
                     (const char *)pb->payload);
            if (!f->no_echo) mqtt_publish(p, topic, payload, 1000);
        } else if (!strncmp(topic, "devices/" ID "/reply/", 8 + 24 + 7)) {
            assert_string_equal(topic + 8 + 24 + 7, "rid1");
            if (f->http_waiting) {
                char body[128];
                snprintf(body, sizeof(body), "{\"id\":\"" ID "\",\"name\":\"ping\",\"return_value\":%.*s}",
                         (int)pb->payload_len, (const char *)pb->payload);
                http_answer(f->http_waiting, 200, body);
                f->http_waiting = NULL;
            }
        } else {
            fail_msg("unexpected publish on %s", topic);
        }
        return;
    }
    case CY_MQTT_PUBACK:
    case CY_MQTT_PINGREQ:
        return;
    case CY_MQTT_DISCONNECT:
        peer_close(p);
        return;
    default:
        fail_msg("unexpected packet %s", cy_mqtt_type_name(pk->type));
    }
}

/* One whole HTTP request in p->in (a POST with a Content-Length body). */
static void on_http(fake *f, peer *p)
{
    for (;;) {
        const char *head = (const char *)cy_buf_head(&p->in);
        size_t n = cy_buf_size(&p->in);
        const char *end = memmem(head, n, "\r\n\r\n", 4);
        if (!end) return;
        size_t hl = (size_t)(end - head) + 4;
        const char *cl = memmem(head, hl, "Content-Length: ", 16);
        size_t bl = cl ? (size_t)strtoul(cl + 16, NULL, 10) : 0;
        if (n < hl + bl) return;
        static const char line[] = "POST /v1/devices/" ID "/functions/ping HTTP/1.1\r\n";
        static const char auth[] = "\r\nAuthorization: Bearer " TOKEN "\r\n";
        assert_memory_equal(head, line, sizeof(line) - 1);
        assert_non_null(memmem(head, hl, auth, sizeof(auth) - 1));
        json_error_t err;
        json_t *o = json_loadb(head + hl, bl, 0, &err);
        assert_non_null(o);
        const char *arg = json_string_value(json_object_get(o, "arg"));
        assert_non_null(arg);
        assert_int_equal(json_integer_value(json_object_get(o, "timeout")), 1);
        f->calls++;
        if (f->http_status) {
            http_answer(p, f->http_status,
                        "{\"error\":\"shard_unavailable\",\"message\":\"the owner is down\"}");
        } else if (f->device) {
            f->http_waiting = p;
            mqtt_publish(f->device, "devices/" ID "/call/ping/rid1", arg, 2000);
        } else {
            http_answer(p, 409, "{\"error\":\"device_offline\",\"message\":\"offline\"}");
        }
        json_decref(o);
        cy_buf_consume(&p->in, hl + bl);
    }
}

static void on_alloc(uv_handle_t *h, size_t size, uv_buf_t *buf)
{
    (void)h;
    *buf = uv_buf_init(malloc(size), (unsigned)size);
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    peer *p = s->data;
    fake *f = p->f;
    if (n < 0) {
        free(buf->base);
        peer_close(p);
        return;
    }
    assert_int_equal(cy_buf_append(&p->in, buf->base, (size_t)n), 0);
    free(buf->base);
    if (p->http) {
        on_http(f, p);
        return;
    }
    while (!p->closed) {
        size_t len;
        int rc = cy_mqtt_frame(cy_buf_head(&p->in), cy_buf_size(&p->in), 0, &len);
        if (rc == CY_EAGAIN) return;
        assert_int_equal(rc, 0);
        cy_mqtt_packet pk;
        size_t used;
        assert_int_equal(cy_mqtt_decode(cy_buf_head(&p->in), len, CY_MQTT_V311, &pk, &used), 0);
        on_mqtt_packet(f, p, &pk);
        cy_buf_consume(&p->in, used);
    }
}

static void on_conn(uv_stream_t *srv, int status)
{
    fake *f = srv->data;
    assert_int_equal(status, 0);
    peer *p = calloc(1, sizeof(*p));
    assert_non_null(p);
    p->f = f;
    p->http = srv == (uv_stream_t *)&f->http_srv;
    cy_buf_init(&p->in);
    uv_tcp_init(&f->loop, &p->tcp);
    p->tcp.data = p;
    assert_int_equal(uv_accept(srv, (uv_stream_t *)&p->tcp), 0);
    p->next = f->peers;
    f->peers = p;
    uv_read_start((uv_stream_t *)&p->tcp, on_alloc, on_read);
}

static int listen_on(fake *f, uv_tcp_t *srv)
{
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(&f->loop, srv);
    srv->data = f;
    assert_int_equal(uv_tcp_bind(srv, (const struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)srv, 16, on_conn), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(srv, (struct sockaddr *)&ss, &len);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void beat(uv_timer_t *t)
{
    (void)t;
}

static int setup(void **state)
{
    fake *f = calloc(1, sizeof(*f));
    if (!f || uv_loop_init(&f->loop)) return -1;
    f->mqtt_port = listen_on(f, &f->mqtt_srv);
    f->http_port = listen_on(f, &f->http_srv);
    uv_timer_init(&f->loop, &f->beat);
    uv_timer_start(&f->beat, beat, 10, 10);
    *state = f;
    return 0;
}

static void noop_close(uv_handle_t *h)
{
    (void)h;
}

static int teardown(void **state)
{
    fake *f = *state;
    while (f->peers)
        peer_close(f->peers);
    uv_close((uv_handle_t *)&f->beat, noop_close);
    uv_close((uv_handle_t *)&f->mqtt_srv, noop_close);
    uv_close((uv_handle_t *)&f->http_srv, noop_close);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&f->loop), 0);
    free(f);
    return 0;
}

static void on_result(void *ctx, const cy_canary_result *r)
{
    fake *f = ctx;
    assert_int_equal(r->shard, 3);
    assert_true(r->step == CY_CANARY_PUBLISH || r->step == CY_CANARY_CALL);
    assert_true(r->latency_us >= 0);
    f->results[r->step]++;
    assert_int_equal(r->seq, (uint64_t)f->results[r->step]); /* no attempt skipped here */
    if (r->ok) {
        f->ok[r->step]++;
        assert_null(r->error);
    } else {
        assert_non_null(r->error);
        snprintf(f->last_error[r->step], CY_CANARY_ERROR_MAX, "%s", r->error);
    }
    if (f->stop_after && f->results[0] + f->results[1] >= f->stop_after) {
        if (f->free_in_cb) {
            cy_canary_free(f->c);
            f->c = NULL;
        } else {
            cy_canary_stop(f->c);
        }
    }
}

static int start(fake *f, unsigned interval_ms, const char *mqtt_host, int mqtt_port)
{
    char maddr[64], haddr[64];
    snprintf(maddr, sizeof(maddr), "%s:%d", mqtt_host, mqtt_port);
    snprintf(haddr, sizeof(haddr), "0.0.0.0:%d", f->http_port);
    cy_canary_conf conf = {.mqtt_addr = maddr,
                           .http_addr = haddr,
                           .device_id = ID,
                           .secret = SECRET,
                           .token = TOKEN,
                           .shard = 3,
                           .interval_ms = interval_ms,
                           .timeout_ms = 1000};
    return cy_canary_new(&f->loop, &conf, on_result, f, &f->c);
}

/* Free the canary (if the callback did not); teardown runs the loop until
 * its handles, and the fake's, have closed (uv_loop_close must succeed). */
static void run_to_end(fake *f)
{
    cy_canary_free(f->c);
    f->c = NULL;
}

/* Run the loop for ms milliseconds of wall time. */
static void run_for(fake *f, int64_t ms)
{
    int64_t end = cy_mono_ms() + ms;
    while (cy_mono_ms() < end)
        uv_run(&f->loop, UV_RUN_ONCE);
}

/* ---- the client ---- */

static void test_canary_walks_both_steps(void **state)
{
    fake *f = *state;
    f->stop_after = 6; /* three attempts of each step */
    assert_int_equal(start(f, 200, "0.0.0.0", f->mqtt_port), 0);
    int64_t t0 = cy_mono_ms();
    while (f->results[0] + f->results[1] < 6 && cy_mono_ms() - t0 < 5000)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->ok[CY_CANARY_PUBLISH], 3);
    assert_int_equal(f->ok[CY_CANARY_CALL], 3);
    assert_int_equal(f->connects, 1);
    assert_string_equal(f->user, ID);
    assert_string_equal(f->client, ID);
    assert_string_equal(f->pass, SECRET);
    assert_int_equal(f->subscribes, 1);
    assert_int_equal(f->describes, 1);
    assert_int_equal(f->events, 3);
    assert_int_equal(f->calls, 3);
    const cy_canary_stats *s = cy_canary_stats_of(f->c, CY_CANARY_CALL);
    assert_non_null(s);
    assert_int_equal(s->success, 3);
    assert_int_equal(s->failure, 0);
    assert_true(s->last_latency_us > 0);
    assert_true(s->last_success_ms > 1600000000000);
    assert_null(cy_canary_stats_of(f->c, 2));
    assert_null(cy_canary_stats_of(f->c, -1));
    run_to_end(f);
    /* It said goodbye: the broker's side saw a DISCONNECT (or the close). */
    run_for(f, 100);
    assert_null(f->device);
}

static void test_canary_event_not_delivered_is_late(void **state)
{
    fake *f = *state;
    f->no_echo = true;
    f->stop_after = 2; /* the call's success, then the publish's failure */
    assert_int_equal(start(f, 5000, "127.0.0.1", f->mqtt_port), 0);
    int64_t t0 = cy_mono_ms();
    while (!f->results[CY_CANARY_PUBLISH] && cy_mono_ms() - t0 < 5000)
        uv_run(&f->loop, UV_RUN_ONCE);
    int64_t took = cy_mono_ms() - t0;
    assert_int_equal(f->results[CY_CANARY_PUBLISH], 1);
    assert_int_equal(f->ok[CY_CANARY_PUBLISH], 0);
    assert_non_null(strstr(f->last_error[CY_CANARY_PUBLISH], "event not delivered (PUBACK received)"));
    /* Connected after the settle delay, then the 1 s deadline. */
    assert_true(took >= 1000 + CY_REGISTRY_RECHECK_MS && took < 2500);
    const cy_canary_stats *s = cy_canary_stats_of(f->c, CY_CANARY_PUBLISH);
    assert_int_equal(s->failure, 1);
    assert_string_equal(s->last_error, f->last_error[CY_CANARY_PUBLISH]);
    run_to_end(f);
}

static void test_canary_refused_then_backoff(void **state)
{
    fake *f = *state;
    f->refuse_first = 2;
    f->refuse_rc = CY_RC3_BAD_USER_OR_PASSWORD;
    assert_int_equal(start(f, 300, "127.0.0.1", f->mqtt_port), 0);
    int64_t t0 = cy_mono_ms();
    while (f->ok[CY_CANARY_CALL] < 1 && cy_mono_ms() - t0 < 5000)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->connects, 3);
    /* 200 ms, then 400 ms between the attempts. */
    int64_t d1 = f->connect_ms[1] - f->connect_ms[0], d2 = f->connect_ms[2] - f->connect_ms[1];
    assert_true(d1 >= 190 && d1 < 400);
    assert_true(d2 >= 390 && d2 < 700);
    assert_true(cy_canary_connected(f->c));
    /* The first attempts waited for the session: none failed. */
    assert_int_equal(f->results[CY_CANARY_PUBLISH] - f->ok[CY_CANARY_PUBLISH], 0);
    assert_int_equal(f->results[CY_CANARY_CALL] - f->ok[CY_CANARY_CALL], 0);
    run_to_end(f);
}

static void test_canary_no_connack(void **state)
{
    fake *f = *state;
    f->no_connack = true;
    f->stop_after = 2;
    assert_int_equal(start(f, 200, "127.0.0.1", f->mqtt_port), 0);
    run_for(f, 1600);
    /* The first attempts fail at the timeout, saying why. */
    assert_int_equal(f->results[CY_CANARY_PUBLISH], 1);
    assert_int_equal(f->results[CY_CANARY_CALL], 1);
    assert_int_equal(f->ok[0] + f->ok[1], 0);
    assert_string_equal(f->last_error[CY_CANARY_PUBLISH], "not connected: waiting for the CONNACK");
    assert_string_equal(f->last_error[CY_CANARY_CALL],
                        "device not connected: waiting for the CONNACK");
    assert_false(cy_canary_connected(f->c));
    assert_int_equal(f->calls, 0); /* no HTTP request for a device known to be offline */
    run_to_end(f);
}

static void test_canary_no_server(void **state)
{
    fake *f = *state;
    f->stop_after = 2;
    f->free_in_cb = true; /* and freed inside the callback */
    /* A port nothing listens on: ours, closed. */
    uv_tcp_t t;
    uv_tcp_init(&f->loop, &t);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_bind(&t, (const struct sockaddr *)&a, 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&t, (struct sockaddr *)&ss, &len);
    int port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_close((uv_handle_t *)&t, noop_close);
    assert_int_equal(start(f, 200, "127.0.0.1", port), 0);
    run_for(f, 1600);
    assert_null(f->c);
    assert_int_equal(f->results[0] + f->results[1], 2);
    assert_non_null(strstr(f->last_error[CY_CANARY_PUBLISH], "connect: connection refused"));
    run_to_end(f);
}

static void test_canary_api_error(void **state)
{
    fake *f = *state;
    f->http_status = 503;
    f->stop_after = 2;
    assert_int_equal(start(f, 5000, "127.0.0.1", f->mqtt_port), 0);
    run_for(f, 800);
    assert_int_equal(f->ok[CY_CANARY_PUBLISH], 1);
    assert_int_equal(f->results[CY_CANARY_CALL], 1);
    assert_string_equal(f->last_error[CY_CANARY_CALL],
                        "HTTP 503 shard_unavailable: the owner is down");
    run_to_end(f);
}

/* The server closes the session: a pending publish fails at once, and the
 * canary connects again by itself. */
static void test_canary_reconnects(void **state)
{
    fake *f = *state;
    f->no_echo = true;
    assert_int_equal(start(f, 5000, "127.0.0.1", f->mqtt_port), 0);
    int64_t t0 = cy_mono_ms();
    while (!f->events && cy_mono_ms() - t0 < 3000)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->events, 1);
    assert_non_null(f->device);
    peer_close(f->device);
    while (!f->results[CY_CANARY_PUBLISH] && cy_mono_ms() - t0 < 3000)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_non_null(strstr(f->last_error[CY_CANARY_PUBLISH], "connection lost: "));
    while (f->connects < 2 && cy_mono_ms() - t0 < 3000)
        uv_run(&f->loop, UV_RUN_ONCE);
    assert_int_equal(f->connects, 2);
    run_to_end(f);
}

static void test_canary_new_rejects(void **state)
{
    fake *f = *state;
    cy_canary *c = (cy_canary *)1;
    cy_canary_conf ok = {.mqtt_addr = "127.0.0.1:1883",
                         .http_addr = "127.0.0.1:8080",
                         .device_id = ID,
                         .secret = SECRET,
                         .token = TOKEN};
    cy_canary_conf bad[8];
    for (int i = 0; i < 8; i++)
        bad[i] = ok;
    bad[0].device_id = "0123456789ABCDEF01234567";
    bad[1].secret = "short";
    bad[2].token = "cyt_x\r\nX-Evil: 1";
    bad[3].timeout_ms = 999;
    bad[4].timeout_ms = CY_CANARY_MAX_TIMEOUT_MS + 1;
    bad[5].mqtt_addr = "localhost:1883"; /* no name resolution, ever */
    bad[6].http_addr = "127.0.0.1";
    bad[7].token = NULL;
    for (int i = 0; i < 8; i++) {
        c = (cy_canary *)1;
        assert_int_equal(cy_canary_new(&f->loop, &bad[i], on_result, f, &c), CY_EINVAL);
        assert_null(c);
    }
    assert_int_equal(cy_canary_new(NULL, &ok, on_result, f, &c), CY_EINVAL);
    assert_int_equal(cy_canary_new(&f->loop, &ok, on_result, f, NULL), CY_EINVAL);
    cy_canary_free(NULL);
    cy_canary_stop(NULL);
    assert_false(cy_canary_connected(NULL));
}

/* ---- pure parts ---- */

static void test_canary_target(void **state)
{
    (void)state;
    struct sockaddr_storage ss;
    char text[INET6_ADDRSTRLEN];
    const char *cases[][3] = {
        {"0.0.0.0:1883", "127.0.0.1", "1883"}, {"*:1883", "127.0.0.1", "1883"},
        {"10.1.2.3:5", "10.1.2.3", "5"},       {"[::]:8080", "::1", "8080"},
        {"[fe80::1]:80", "fe80::1", "80"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(cy_canary_target(cases[i][0], &ss), 0);
        unsigned port;
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            inet_ntop(AF_INET, &a->sin_addr, text, sizeof(text));
            port = ntohs(a->sin_port);
        } else {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof(text));
            port = ntohs(a->sin6_port);
        }
        assert_string_equal(text, cases[i][1]);
        assert_int_equal(port, atoi(cases[i][2]));
    }
    assert_int_equal(cy_canary_target("localhost:1883", &ss), CY_EINVAL);
    assert_int_equal(cy_canary_target("1.2.3.4", &ss), CY_EINVAL);
    assert_int_equal(cy_canary_target(NULL, &ss), CY_EINVAL);
}

static void test_canary_answer_ok(void **state)
{
    (void)state;
    char why[CY_CANARY_ERROR_MAX];
    const char *good = "{\"id\":\"x\",\"name\":\"ping\",\"return_value\":7,\"round_trip_ms\":1.5}";
    assert_true(cy_canary_answer_ok(200, good, strlen(good), 7, why, sizeof(why)));
    assert_false(cy_canary_answer_ok(200, good, strlen(good), 8, why, sizeof(why)));
    assert_string_equal(why, "HTTP 200 with return_value 7, expected 8");
    const char *str = "{\"return_value\":\"7\"}";
    assert_false(cy_canary_answer_ok(200, str, strlen(str), 7, why, sizeof(why)));
    assert_string_equal(why, "HTTP 200 with return_value \"7\", expected 7");
    assert_false(cy_canary_answer_ok(200, "{}", 2, 7, why, sizeof(why)));
    assert_string_equal(why, "HTTP 200 with return_value missing, expected 7");
    const char *off = "{\"error\":\"device_offline\",\"message\":\"no connection\"}";
    assert_false(cy_canary_answer_ok(409, off, strlen(off), 7, why, sizeof(why)));
    assert_string_equal(why, "HTTP 409 device_offline: no connection");
    assert_false(cy_canary_answer_ok(502, "<html>", 6, 7, why, sizeof(why)));
    assert_string_equal(why, "HTTP 502");
    assert_false(cy_canary_answer_ok(200, NULL, 0, 7, why, sizeof(why)));
    assert_string_equal(cy_canary_step_name(CY_CANARY_PUBLISH), "publish");
    assert_string_equal(cy_canary_step_name(CY_CANARY_CALL), "call");
    assert_string_equal(cy_canary_step_name(9), "?");
}

/* The device of each shard hashes to it, for several shard counts; asking
 * again keeps the id and rotates the secret. */
static void test_canary_device_per_shard(void **state)
{
    (void)state;
    char dir[] = "/tmp/cyan-canary-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[64];
    snprintf(path, sizeof(path), "%s/registry.db", dir);
    cy_registry *r;
    assert_int_equal(cy_registry_open(path, &r), 0);
    const unsigned counts[] = {1, 2, 4, 7, 64};
    char ids[64][CY_DEVICE_ID_LEN + 1];
    for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]); k++) {
        unsigned n = counts[k];
        for (unsigned i = 0; i < n; i++) {
            char secret[CY_DEVICE_SECRET_LEN + 1];
            assert_int_equal(cy_canary_device(r, "canary", i, n, ids[i], secret), 0);
            assert_int_equal(cy_shard_of(ids[i], CY_DEVICE_ID_LEN, n), i);
            assert_int_equal(cy_registry_device_check(r, ids[i], CY_DEVICE_ID_LEN,
                                                      (const uint8_t *)secret,
                                                      CY_DEVICE_SECRET_LEN),
                             0);
            assert_int_equal(cy_registry_device_internal(r, ids[i], CY_DEVICE_ID_LEN), 1);
        }
        for (unsigned i = 0; i < n; i++)
            for (unsigned j = 0; j < i; j++)
                assert_string_not_equal(ids[i], ids[j]);
    }
    /* Same count again: same ids, new secrets. */
    char again[CY_DEVICE_ID_LEN + 1], s1[CY_DEVICE_SECRET_LEN + 1], s2[CY_DEVICE_SECRET_LEN + 1];
    assert_int_equal(cy_canary_device(r, "canary", 5, 64, again, s1), 0);
    assert_string_equal(again, ids[5]);
    assert_int_equal(cy_canary_device(r, "canary", 5, 64, again, s2), 0);
    assert_string_not_equal(s1, s2);
    assert_int_equal(cy_registry_device_check(r, again, CY_DEVICE_ID_LEN, (const uint8_t *)s1,
                                              CY_DEVICE_SECRET_LEN),
                     CY_EACCES);
    /* The probe's devices are others. */
    char probe[CY_DEVICE_ID_LEN + 1];
    assert_int_equal(cy_canary_device(r, "probe", 5, 64, probe, s1), 0);
    assert_string_not_equal(probe, ids[5]);
    assert_int_equal(cy_shard_of(probe, CY_DEVICE_ID_LEN, 64), 5);
    cy_device d;
    assert_int_equal(cy_registry_internal_get(r, probe, &d), 0);
    assert_string_equal(d.name, "cyan:probe:5");
    /* Bad arguments. */
    assert_int_equal(cy_canary_device(r, "canary", 4, 4, again, s1), CY_EINVAL);
    assert_int_equal(cy_canary_device(r, "canary", 0, 0, again, s1), CY_EINVAL);
    assert_int_equal(cy_canary_device(r, "", 0, 1, again, s1), CY_EINVAL);
    assert_int_equal(cy_canary_device(r, NULL, 0, 1, again, s1), CY_EINVAL);
    assert_int_equal(cy_canary_device(r, "no space", 0, 1, again, s1), CY_EINVAL);
    /* The token. */
    char tid[CY_TOKEN_ID_LEN + 1], tok[CY_TOKEN_MAX + 1];
    assert_int_equal(cy_canary_token(r, "canary", tid, tok), 0);
    cy_token_auth ta;
    assert_int_equal(cy_registry_token_check(r, tok, strlen(tok), cy_wall_ms(), &ta), 0);
    unsigned scope = ta.scopes;
    assert_int_equal(scope, CY_SCOPE_INTERNAL);
    assert_int_equal(cy_canary_token(r, "", tid, tok), CY_EINVAL);
    cy_registry_close(r);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_canary_walks_both_steps, setup, teardown),
        cmocka_unit_test_setup_teardown(test_canary_event_not_delivered_is_late, setup, teardown),
        cmocka_unit_test_setup_teardown(test_canary_refused_then_backoff, setup, teardown),
        cmocka_unit_test_setup_teardown(test_canary_no_connack, setup, teardown),
        cmocka_unit_test_setup_teardown(test_canary_no_server, setup, teardown),
        cmocka_unit_test_setup_teardown(test_canary_api_error, setup, teardown),
        cmocka_unit_test_setup_teardown(test_canary_reconnects, setup, teardown),
        cmocka_unit_test_setup_teardown(test_canary_new_rejects, setup, teardown),
        cmocka_unit_test(test_canary_target),
        cmocka_unit_test(test_canary_answer_ok),
        cmocka_unit_test(test_canary_device_per_shard),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
