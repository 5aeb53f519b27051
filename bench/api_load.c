/* api_load: function calls under load, through cyan's HTTP API and, for
 * comparison, as plain MQTT request/response through a broker.
 *
 * Two threads, each one epoll loop over non-blocking sockets; nothing
 * blocks once the run has started. The device thread is D registered
 * devices (MQTT 3.1.1, cyan's own codec, src/mqtt/mqtt.h), each logged in
 * with its id and secret (username and client id = id, password = secret),
 * subscribed to devices/<id>/call/# at QoS 1, with its describe
 * {"functions":["echo"]} published retained at QoS 1; a call on
 * devices/<id>/call/echo/<rest> is acknowledged and answered with its
 * payload at QoS 1 on devices/<id>/reply/<rest> (for the API, <rest> is
 * the request id: docs/device-protocol.md, "The device convention"). The
 * caller thread is C concurrent callers, each with one call outstanding at
 * a time, each call to a device drawn at random, back to back; each call is
 * timed with CLOCK_MONOTONIC from just before its request is written to
 * just after its answer is parsed:
 *
 *   --mode api   C kept-alive HTTP/1.1 connections (a raw client, not
 *                libcurl: curl's ~80 µs of CPU per call would take the
 *                server's core): POST /v1/devices/<id>/functions/echo
 *                {"arg":"<seq>"} with a bearer token; the answer must be
 *                200 with "return_value" <seq>.
 *   --mode mqtt  C anonymous MQTT clients ("app" k), each subscribed to
 *                devices/+/reply/a<k>/+, publishing the call at QoS 1 on
 *                devices/<id>/call/echo/a<k>/<seq>; the reply must carry
 *                <seq>. The same four QoS 1 PUBLISH/PUBACK exchanges as the
 *                API's MQTT leg, without HTTP (a broker with isolated
 *                devices, cyan's default, routes no device reply to other
 *                clients: cyan needs isolate_devices=false here).
 *
 * --create N --out FILE makes N devices through POST /v1/devices (admin
 * token) and writes "id secret" lines, then exits: the bench script runs it
 * once against a template data folder.
 *
 * Measured: the calls completed in the window that starts --warmup seconds
 * after every caller is ready and lasts --seconds; calls/s, p50/p99/p99.9
 * and max of the round trip, errors, the server's CPU per call (from
 * /proc/<pid>/stat of --server_pid and its children, clock ticks) and the
 * generator's own (its two threads). Everything is bounded: a per-call
 * timeout (a call past it is an error and its connection is retired), the
 * setup (--setup_timeout), the whole process (alarm()). 127.0.0.1 only.
 *
 * Output: one line "RESULT workload=load mode=M server=S ..." on stdout;
 * progress and errors on stderr. Exit status 0 on a clean run, 1 on a usage
 * error, 2 on a failed run (setup failed, or any measured call failed).
 */
#define _GNU_SOURCE /* memmem, strcasestr */
#include "core/cy_buf.h"
#include "core/cy_err.h"
#include "mqtt/mqtt.h"
#include "netutil.h"
#include "procstat.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define KEEPALIVE_S 600     /* longer than any run: no PINGREQ needed */
#define SETUP_INFLIGHT 64   /* devices connecting at once */
#define MAX_CONNS 1024      /* callers */
#define MAX_DEVICES 20000   /* devices */
#define HTTP_RESP_MAX 65536 /* largest HTTP answer taken */
#define ERRORS_SHOWN 5      /* errors described on stderr */

enum { MODE_API, MODE_MQTT };
enum { K_DEV, K_HTTP, K_APP };

static struct {
    int mode;
    char http_host[64];
    int http_port;
    char mqtt_host[64];
    int mqtt_port;
    char token[128];
    const char *devices_file;
    int devices;
    int conns;
    double seconds;
    double warmup;
    long timeout_ms;
    double setup_timeout;
    int server_pid;
    const char *server;
    int create;
    const char *out;
    long count;             /* > 0: make exactly this many calls, no warm-up, then stop */
    const char *start_file; /* wait for this file to exist before the first call */
} o = {
    .mode = MODE_API,
    .http_host = "127.0.0.1",
    .http_port = 8080,
    .mqtt_host = "127.0.0.1",
    .mqtt_port = 1883,
    .devices = 1000,
    .conns = 32,
    .seconds = 5,
    .warmup = 1,
    .timeout_ms = 5000,
    .setup_timeout = 30,
    .server = "server",
};

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "api_load: hard time limit reached, exiting\n";
    ssize_t r = write(2, msg, sizeof(msg) - 1);
    (void)r;
    _exit(3);
}

static cy_str str_of(const char *s)
{
    return (cy_str){s, (uint32_t)strlen(s)};
}

/* xorshift64*: the callers' choice of device. */
static uint64_t rng_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* ---- connections ---- */

typedef struct conn {
    int fd;
    int kind;
    int idx;
    bool ready;    /* set up: logged in (and subscribed) */
    bool dead;     /* retired after an error */
    bool want_out; /* EPOLLOUT registered */
    cy_buf in, out;
    uint16_t next_pid;
    /* devices */
    char id[64];
    char secret[128];
    uint16_t describe_pid;
    bool subscribed, described;
    /* callers */
    bool busy;
    int64_t t0;
    long seq;
} conn;

static uint16_t pid_of(conn *c)
{
    c->next_pid = (uint16_t)(c->next_pid == 65535 ? 1 : c->next_pid + 1);
    return c->next_pid;
}

static int set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* Write what c->out holds; what the socket does not take waits for EPOLLOUT. */
static int conn_flush(int ep, conn *c)
{
    while (cy_buf_size(&c->out)) {
        ssize_t n = write(c->fd, cy_buf_head(&c->out), cy_buf_size(&c->out));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) break;
        if (n <= 0) return -1;
        cy_buf_consume(&c->out, (size_t)n);
    }
    bool want = cy_buf_size(&c->out) > 0;
    if (want != c->want_out) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        c->want_out = want;
    }
    return 0;
}

/* Read what the socket holds into c->in: 0, or -1 (closed, error). */
static int conn_read(conn *c)
{
    for (;;) {
        if (cy_buf_reserve(&c->in, 16384)) return -1;
        ssize_t n = read(c->fd, c->in.data + c->in.len, c->in.cap - c->in.len);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return 0;
        if (n <= 0) return -1;
        c->in.len += (size_t)n;
        if ((size_t)n < c->in.cap - (c->in.len - (size_t)n)) return 0; /* drained */
    }
}

static int put(conn *c, const cy_mqtt_packet *p)
{
    return cy_mqtt_encode(&c->out, CY_MQTT_V311, p) ? -1 : 0;
}

static int mq_connect(conn *c, const char *client_id, const char *user, const char *pass)
{
    cy_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = CY_MQTT_CONNECT;
    p.u.connect.version = CY_MQTT_V311;
    p.u.connect.clean_start = true;
    p.u.connect.keep_alive = KEEPALIVE_S;
    p.u.connect.client_id = str_of(client_id);
    if (user) {
        p.u.connect.has_username = p.u.connect.has_password = true;
        p.u.connect.username = str_of(user);
        p.u.connect.password = str_of(pass);
    }
    return put(c, &p);
}

static int mq_subscribe(conn *c, const char *filter)
{
    cy_mqtt_sub_entry e = {.filter = str_of(filter), .qos = 1};
    cy_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = CY_MQTT_SUBSCRIBE;
    p.u.subscribe.packet_id = pid_of(c);
    p.u.subscribe.entries = &e;
    p.u.subscribe.count = 1;
    return put(c, &p);
}

static int mq_puback(conn *c, uint16_t id)
{
    cy_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = CY_MQTT_PUBACK;
    p.u.ack.packet_id = id;
    return put(c, &p);
}

static int mq_publish(conn *c, const char *topic, size_t tlen, const void *payload, size_t plen,
                      bool retain, uint16_t *pid)
{
    cy_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = CY_MQTT_PUBLISH;
    p.u.publish.qos = 1;
    p.u.publish.retain = retain;
    p.u.publish.topic = (cy_str){topic, (uint32_t)tlen};
    p.u.publish.packet_id = pid_of(c);
    p.u.publish.payload = payload;
    p.u.publish.payload_len = plen;
    if (pid) *pid = p.u.publish.packet_id;
    return put(c, &p);
}

/* ---- results ---- */

static int64_t *lat; /* round trips of the measured calls, ns */
static size_t n_lat, cap_lat;
static long n_errors, n_timeouts, n_warm_errors;
static atomic_long dev_answered, dev_odd;
static atomic_int dev_ready, dev_failed;
static atomic_bool stop_all;
static int64_t win_start, win_end;  /* the measured window, CLOCK_MONOTONIC ns */
static double cpu_at[2], gen_at[2]; /* server's and generator's CPU s at the window's edges */
static int edges_seen;              /* how many of them were read */

static void note(const char *what, long seq, const char *detail, size_t dlen)
{
    if (n_errors + n_warm_errors <= ERRORS_SHOWN)
        fprintf(stderr, "api_load: call %ld: %s: %.*s\n", seq, what, (int)(dlen > 200 ? 200 : dlen),
                detail);
}

static void record(int64_t t0, int64_t t1, bool ok)
{
    bool in = t0 >= win_start && t1 <= win_end;
    if (!ok) {
        if (in)
            n_errors++;
        else
            n_warm_errors++;
        return;
    }
    if (!in) return;
    if (n_lat == cap_lat) {
        size_t nc = cap_lat ? cap_lat * 2 : 65536;
        int64_t *nl = realloc(lat, nc * sizeof(*nl));
        if (!nl) return;
        lat = nl;
        cap_lat = nc;
    }
    lat[n_lat++] = t1 - t0;
}

/* ---- the devices (their own thread) ---- */

static conn *devs;
static int n_devs;

static int dev_start(int ep, conn *c)
{
    c->fd = bench_tcp_connect(o.mqtt_host, o.mqtt_port);
    if (c->fd < 0 || set_nonblock(c->fd)) {
        fprintf(stderr, "api_load: device %s: cannot connect to %s:%d: %s\n", c->id, o.mqtt_host,
                o.mqtt_port, strerror(errno));
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev)) return -1;
    if (mq_connect(c, c->id, c->id, c->secret)) return -1;
    return conn_flush(ep, c);
}

/* The reply topic of call topic t: devices/<id>/call/echo/<rest> ->
 * devices/<id>/reply/<rest>. Its length, or 0 if t is not a call of echo. */
static size_t reply_topic(const conn *c, cy_str t, char *out, size_t cap)
{
    char pre[96];
    int pl = snprintf(pre, sizeof(pre), "devices/%s/call/echo/", c->id);
    if (pl < 0 || t.len <= (uint32_t)pl || memcmp(t.p, pre, (size_t)pl) != 0) return 0;
    int n =
        snprintf(out, cap, "devices/%s/reply/%.*s", c->id, (int)(t.len - (uint32_t)pl), t.p + pl);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* Handle what device c received: 0, or -1 (the device failed). */
static int dev_input(conn *c)
{
    size_t off = 0;
    for (;;) {
        cy_mqtt_packet p;
        size_t used = 0;
        int d = cy_mqtt_decode(c->in.data + off, c->in.len - off, CY_MQTT_V311, &p, &used);
        if (d == CY_EAGAIN) break;
        if (d) {
            fprintf(stderr, "api_load: device %s: bad packet: %s\n", c->id, cy_strerror(d));
            return -1;
        }
        off += used;
        switch (p.type) {
        case CY_MQTT_CONNACK: {
            if (p.u.connack.reason) {
                fprintf(stderr, "api_load: device %s: refused, CONNACK 0x%02x\n", c->id,
                        p.u.connack.reason);
                return -1;
            }
            char f[96], t[96];
            snprintf(f, sizeof(f), "devices/%s/call/#", c->id);
            snprintf(t, sizeof(t), "devices/%s/describe", c->id);
            static const char describe[] = "{\"functions\":[\"echo\"]}";
            if (mq_subscribe(c, f) ||
                mq_publish(c, t, strlen(t), describe, sizeof(describe) - 1, true, &c->describe_pid))
                return -1;
            break;
        }
        case CY_MQTT_SUBACK:
            if (p.u.suback.count != 1 || p.u.suback.reasons[0] > 2) {
                fprintf(stderr, "api_load: device %s: subscription refused\n", c->id);
                return -1;
            }
            c->subscribed = true;
            break;
        case CY_MQTT_PUBACK:
            if (!c->described && p.u.ack.packet_id == c->describe_pid) c->described = true;
            break;
        case CY_MQTT_PUBLISH: {
            const cy_mqtt_publish *call = &p.u.publish;
            if (call->qos == 1 && mq_puback(c, call->packet_id)) return -1;
            char topic[256];
            size_t tl = reply_topic(c, call->topic, topic, sizeof(topic));
            if (!tl) {
                atomic_fetch_add_explicit(&dev_odd, 1, memory_order_relaxed);
                break;
            }
            if (mq_publish(c, topic, tl, call->payload, call->payload_len, false, NULL)) return -1;
            atomic_fetch_add_explicit(&dev_answered, 1, memory_order_relaxed);
            break;
        }
        default:
            break;
        }
    }
    cy_buf_consume(&c->in, off);
    if (!c->ready && c->subscribed && c->described) {
        c->ready = true;
        atomic_fetch_add(&dev_ready, 1);
    }
    return 0;
}

static void *device_main(void *arg)
{
    (void)arg;
    int ep = epoll_create1(EPOLL_CLOEXEC);
    int started = 0;
    struct epoll_event evs[256];
    while (!atomic_load(&stop_all)) {
        /* Setup: keep SETUP_INFLIGHT devices logging in at once. */
        while (started < n_devs && started - atomic_load(&dev_ready) < SETUP_INFLIGHT) {
            if (dev_start(ep, &devs[started])) {
                atomic_store(&dev_failed, 1);
                goto out;
            }
            started++;
        }
        int n = epoll_wait(ep, evs, 256, 50);
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (c->dead) continue;
            if ((evs[i].events & EPOLLOUT) && conn_flush(ep, c)) goto fail_c;
            if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                if (conn_read(c) || dev_input(c) || conn_flush(ep, c)) goto fail_c;
            }
            continue;
        fail_c:
            fprintf(stderr, "api_load: device %s: connection lost\n", c->id);
            c->dead = true;
            atomic_store(&dev_failed, 1);
        }
    }
out:
    for (int i = 0; i < started; i++)
        if (devs[i].fd >= 0) close(devs[i].fd);
    close(ep);
    return NULL;
}

static double server_cpu_s(void);
static double proc_cpu_s(void);

/* ---- the callers ---- */

static conn *calls;
static int n_calls;
static uint64_t rng = 0x9E3779B97F4A7C15ULL;
static long next_seq = 1;
static char http_head[512]; /* the request head up to the device id */

static int caller_send(int ep, conn *c)
{
    int64_t now = bench_now_ns();
    if (now >= win_end || (o.count > 0 && next_seq > o.count)) {
        c->busy = false;
        return 0;
    }
    const conn *d = &devs[rng_next(&rng) % (uint64_t)n_devs];
    c->seq = next_seq++;
    char buf[1024], body[48];
    int bl = snprintf(body, sizeof(body), "{\"arg\":\"%ld\"}", c->seq);
    if (c->kind == K_HTTP) {
        int n = snprintf(buf, sizeof(buf),
                         "POST /v1/devices/%s/functions/echo HTTP/1.1\r\n%sContent-Length: %d\r\n"
                         "\r\n%s",
                         d->id, http_head, bl, body);
        if (n < 0 || (size_t)n >= sizeof(buf) || cy_buf_append(&c->out, buf, (size_t)n)) return -1;
    } else {
        char topic[160], pay[24];
        int tl =
            snprintf(topic, sizeof(topic), "devices/%s/call/echo/a%d/%ld", d->id, c->idx, c->seq);
        int pl = snprintf(pay, sizeof(pay), "%ld", c->seq);
        if (mq_publish(c, topic, (size_t)tl, pay, (size_t)pl, false, NULL)) return -1;
    }
    c->busy = true;
    c->t0 = bench_now_ns();
    return conn_flush(ep, c);
}

/* Does the answer body hold "return_value": seq (a number or a string)? */
static bool body_ok(const char *b, size_t len, long seq)
{
    static const char key[] = "\"return_value\":";
    const char *end = b + len;
    const char *p = memmem(b, len, key, sizeof(key) - 1);
    if (!p) return false;
    p += sizeof(key) - 1;
    while (p < end && *p == ' ')
        p++;
    if (p < end && *p == '"') p++;
    char want[24];
    int wl = snprintf(want, sizeof(want), "%ld", seq);
    return end - p > wl && memcmp(p, want, (size_t)wl) == 0 && !isdigit((unsigned char)p[wl]);
}

/* One HTTP answer in c->in: 1 handled, 0 incomplete, -1 broken. */
static int http_answer(conn *c)
{
    const char *b = (const char *)c->in.data;
    size_t len = c->in.len;
    const char *eoh = memmem(b, len, "\r\n\r\n", 4);
    if (!eoh) return len > HTTP_RESP_MAX ? -1 : 0;
    size_t hlen = (size_t)(eoh - b) + 4;
    if (len < 12 || memcmp(b, "HTTP/1.1 ", 9) != 0) return -1;
    int status = atoi(b + 9);
    long clen = -1;
    for (const char *l = memchr(b, '\n', hlen); l && l < eoh;
         l = memchr(l + 1, '\n', (size_t)(eoh - l))) {
        if ((size_t)(eoh - l) > 16 && strncasecmp(l + 1, "Content-Length:", 15) == 0)
            clen = strtol(l + 16, NULL, 10);
    }
    if (clen < 0 || clen > HTTP_RESP_MAX) return -1;
    if (len < hlen + (size_t)clen) return 0;
    int64_t t1 = bench_now_ns();
    const char *body = b + hlen;
    bool ok = status == 200 && body_ok(body, (size_t)clen, c->seq);
    if (!ok) note(status == 200 ? "wrong answer" : "status", c->seq, b, hlen + (size_t)clen);
    record(c->t0, t1, ok);
    cy_buf_consume(&c->in, hlen + (size_t)clen);
    c->busy = false;
    return 1;
}

/* What MQTT application c received: 1 if its call's answer came, 0 not yet, -1 broken. */
static int app_input(conn *c)
{
    size_t off = 0;
    int done = 0;
    for (;;) {
        cy_mqtt_packet p;
        size_t used = 0;
        int d = cy_mqtt_decode(c->in.data + off, c->in.len - off, CY_MQTT_V311, &p, &used);
        if (d == CY_EAGAIN) break;
        if (d) return -1;
        off += used;
        if (p.type == CY_MQTT_CONNACK) {
            if (p.u.connack.reason) return -1;
            char f[64];
            snprintf(f, sizeof(f), "devices/+/reply/a%d/+", c->idx);
            if (mq_subscribe(c, f)) return -1;
        } else if (p.type == CY_MQTT_SUBACK) {
            if (p.u.suback.count != 1 || p.u.suback.reasons[0] > 2) return -1;
            c->ready = true;
        } else if (p.type == CY_MQTT_PUBLISH) {
            const cy_mqtt_publish *r = &p.u.publish;
            if (r->qos == 1 && mq_puback(c, r->packet_id)) return -1;
            char want[24];
            int wl = snprintf(want, sizeof(want), "%ld", c->seq);
            /* the topic ends in /a<k>/<seq> */
            bool mine = c->busy && r->topic.len > (uint32_t)wl &&
                        memcmp(r->topic.p + r->topic.len - wl, want, (size_t)wl) == 0 &&
                        r->topic.p[r->topic.len - wl - 1] == '/';
            if (!mine) continue; /* a late answer of a call that timed out */
            int64_t t1 = bench_now_ns();
            bool ok = r->payload_len == (size_t)wl && memcmp(r->payload, want, (size_t)wl) == 0;
            if (!ok) note("wrong answer", c->seq, (const char *)r->payload, r->payload_len);
            record(c->t0, t1, ok);
            c->busy = false;
            done = 1;
        }
    }
    cy_buf_consume(&c->in, off);
    return done;
}

static int caller_start(int ep, conn *c)
{
    bool api = c->kind == K_HTTP;
    c->fd = bench_tcp_connect(api ? o.http_host : o.mqtt_host, api ? o.http_port : o.mqtt_port);
    if (c->fd < 0 || set_nonblock(c->fd)) return -1;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev)) return -1;
    if (api) {
        c->ready = true;
        return 0;
    }
    char id[64];
    snprintf(id, sizeof(id), "api-load-app-%d-%d", (int)getpid(), c->idx);
    if (mq_connect(c, id, NULL, NULL)) return -1;
    return conn_flush(ep, c);
}

/* The callers' loop, on the main thread: until win_end and every call answered. */
static int callers_run(void)
{
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event evs[256];
    for (int i = 0; i < n_calls; i++) {
        calls[i].idx = i;
        calls[i].kind = o.mode == MODE_API ? K_HTTP : K_APP;
        if (caller_start(ep, &calls[i])) {
            fprintf(stderr, "api_load: caller %d: cannot connect: %s\n", i, strerror(errno));
            return -1;
        }
    }
    /* The applications log in and subscribe. */
    int64_t deadline = bench_now_ns() + (int64_t)(o.setup_timeout * 1e9);
    for (;;) {
        int ready = 0;
        for (int i = 0; i < n_calls; i++)
            ready += calls[i].ready;
        if (ready == n_calls) break;
        if (bench_now_ns() > deadline) {
            fprintf(stderr, "api_load: %d of %d callers ready in time\n", ready, n_calls);
            return -1;
        }
        int n = epoll_wait(ep, evs, 256, 50);
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (conn_read(c) || app_input(c) < 0 || conn_flush(ep, c)) {
                fprintf(stderr, "api_load: caller %d: setup failed\n", c->idx);
                return -1;
            }
        }
    }
    if (o.start_file) {
        fprintf(stderr, "api_load: ready; waiting for %s\n", o.start_file);
        while (access(o.start_file, F_OK) != 0) {
            if (bench_now_ns() > deadline + (int64_t)60e9) return -1;
            usleep(10000);
        }
    }
    win_start = bench_now_ns() + (int64_t)(o.warmup * 1e9);
    win_end = win_start + (int64_t)(o.seconds * 1e9);
    for (int i = 0; i < n_calls; i++)
        if (caller_send(ep, &calls[i])) return -1;
    int64_t last_check = bench_now_ns();
    for (;;) {
        int busy = 0;
        int n = epoll_wait(ep, evs, 256, 10);
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (c->dead) continue;
            if ((evs[i].events & EPOLLOUT) && conn_flush(ep, c)) goto broken;
            if (!(evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) continue;
            if (conn_read(c)) goto broken;
            int r;
            r = c->kind == K_HTTP ? http_answer(c) : app_input(c);
            if (r < 0) goto broken;
            if (r == 1 && caller_send(ep, c)) goto broken;
            if (conn_flush(ep, c)) goto broken;
            continue;
        broken:
            if (c->busy) record(c->t0, bench_now_ns(), false);
            fprintf(stderr, "api_load: caller %d: connection lost or answer malformed\n", c->idx);
            c->dead = true;
            c->busy = false;
            epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
        }
        int64_t now = bench_now_ns();
        if (edges_seen < 2 && now >= (edges_seen ? win_end : win_start)) {
            cpu_at[edges_seen] = server_cpu_s();
            gen_at[edges_seen] = proc_cpu_s();
            edges_seen++;
        }
        if (now - last_check > 10000000) {
            last_check = now;
            for (int i = 0; i < n_calls; i++) {
                conn *c = &calls[i];
                if (!c->dead && c->busy && now - c->t0 > o.timeout_ms * 1000000LL) {
                    n_timeouts++;
                    record(c->t0, now, false);
                    note("timed out", c->seq, "", 0);
                    c->dead = true; /* its answer may still come: retire the connection */
                    c->busy = false;
                    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                }
            }
        }
        for (int i = 0; i < n_calls; i++)
            busy += calls[i].busy;
        if (busy == 0 && (now >= win_end || (o.count > 0 && next_seq > o.count))) break;
        if (atomic_load(&dev_failed)) {
            fprintf(stderr, "api_load: a device failed during the run\n");
            return -1;
        }
    }
    close(ep);
    return 0;
}

/* ---- the server's CPU (through /proc) ---- */

static int srv_pids[64], n_srv_pids;

/* The server's process and its children (cyan's shards), taken once. */
static void find_server_pids(void)
{
    if (o.server_pid) n_srv_pids = ps_family(o.server_pid, srv_pids, 64);
}

static double server_cpu_s(void)
{
    return ps_cpu_s(srv_pids, n_srv_pids);
}

static double proc_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- device creation (--create) ---- */

/* One blocking HTTP exchange on fd: the answer's status and body (caller frees). */
static int http_once(int fd, const char *req, size_t len, int *status, char **body)
{
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, req + off, len - off);
        if (n <= 0) return -1;
        off += (size_t)n;
    }
    conn c;
    memset(&c, 0, sizeof(c));
    cy_buf_init(&c.in);
    int rc = -1;
    for (;;) {
        if (cy_buf_reserve(&c.in, 4096)) break;
        ssize_t n = read(fd, c.in.data + c.in.len, c.in.cap - c.in.len);
        if (n <= 0) break;
        c.in.len += (size_t)n;
        const char *b = (const char *)c.in.data;
        const char *eoh = memmem(b, c.in.len, "\r\n\r\n", 4);
        if (!eoh) continue;
        const char *cl = strcasestr(b, "\r\nContent-Length:");
        if (!cl || cl > eoh) break;
        size_t hlen = (size_t)(eoh - b) + 4, clen = (size_t)strtoul(cl + 17, NULL, 10);
        if (c.in.len < hlen + clen) continue;
        *status = atoi(b + 9);
        *body = strndup(b + hlen, clen);
        rc = *body ? 0 : -1;
        break;
    }
    cy_buf_fini(&c.in);
    return rc;
}

static int create_devices(void)
{
    FILE *out = fopen(o.out, "w");
    if (!out) {
        fprintf(stderr, "api_load: %s: %s\n", o.out, strerror(errno));
        return 2;
    }
    int fd = bench_tcp_connect(o.http_host, o.http_port);
    if (fd < 0) {
        fprintf(stderr, "api_load: cannot connect to the API: %s\n", strerror(errno));
        fclose(out);
        return 2;
    }
    int rc = 0;
    for (int i = 0; i < o.create && rc == 0; i++) {
        char body[64], req[512];
        int bl = snprintf(body, sizeof(body), "{\"name\":\"load-%d-%d\"}", (int)getpid(), i);
        int n = snprintf(req, sizeof(req),
                         "POST /v1/devices HTTP/1.1\r\n%sContent-Length: %d\r\n\r\n%s", http_head,
                         bl, body);
        int status = 0;
        char *ans = NULL;
        if (http_once(fd, req, (size_t)n, &status, &ans)) {
            fprintf(stderr, "api_load: device %d: no answer\n", i);
            rc = 2;
            break;
        }
        json_t *j = json_loads(ans, 0, NULL);
        const char *id = json_string_value(json_object_get(j, "id"));
        const char *sec = json_string_value(json_object_get(j, "secret"));
        if (status != 201 || !id || !sec) {
            fprintf(stderr, "api_load: device %d: status %d: %.200s\n", i, status, ans);
            rc = 2;
        } else {
            fprintf(out, "%s %s\n", id, sec);
        }
        json_decref(j);
        free(ans);
    }
    close(fd);
    if (fclose(out)) rc = 2;
    if (rc == 0) fprintf(stderr, "api_load: %d devices made, listed in %s\n", o.create, o.out);
    return rc;
}

/* ---- main ---- */

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static double pct_us(double q)
{
    if (!n_lat) return -1;
    size_t r = (size_t)(q * (double)n_lat);
    if ((double)r < q * (double)n_lat) r++;
    return (double)lat[r ? r - 1 : 0] / 1000.0;
}

static int hostport(const char *s, char *host, size_t cap, int *port)
{
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= cap) return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    *port = atoi(colon + 1);
    return *port > 0 && *port < 65536 ? 0 : -1;
}

static int load_devices(void)
{
    FILE *f = fopen(o.devices_file, "r");
    if (!f) {
        fprintf(stderr, "api_load: %s: %s\n", o.devices_file, strerror(errno));
        return -1;
    }
    devs = calloc((size_t)o.devices, sizeof(*devs));
    char id[64], sec[128];
    while (devs && n_devs < o.devices && fscanf(f, "%63s %127s", id, sec) == 2) {
        conn *c = &devs[n_devs];
        c->fd = -1;
        c->kind = K_DEV;
        c->idx = n_devs++;
        snprintf(c->id, sizeof(c->id), "%s", id);
        snprintf(c->secret, sizeof(c->secret), "%s", sec);
    }
    fclose(f);
    if (n_devs < o.devices) {
        fprintf(stderr, "api_load: %s lists %d devices, %d wanted\n", o.devices_file, n_devs,
                o.devices);
        return -1;
    }
    return 0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: api_load --mode api|mqtt --devices_file FILE [options]\n"
            "       api_load --create N --out FILE --http HOST:PORT --token_file FILE\n"
            "  --http HOST:PORT        the API (api mode, --create)\n"
            "  --mqtt HOST:PORT        the broker (devices; applications in mqtt mode)\n"
            "  --token_file FILE       bearer token (api mode, --create)\n"
            "  --devices N             devices connected (default 1000)\n"
            "  --conns C               concurrent callers (default 32)\n"
            "  --seconds S --warmup W  measured window and the warm-up before it (5, 1)\n"
            "  --timeout_ms MS         per call (5000)\n"
            "  --setup_timeout S       logging in every device and caller (30)\n"
            "  --server_pid PID        the server (and its children): CPU per call\n"
            "  --server NAME           label of the RESULT line\n"
            "  --count N               exactly N calls, then stop (with --warmup 0: all measured)\n"
            "  --start_file PATH       after setup, wait for PATH to exist (a tracer attaching)\n");
}

int main(int argc, char **argv)
{
    const char *token_file = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) {
            usage();
            return 1;
        }
        i++;
        if (!strcmp(a, "--mode")) {
            if (!strcmp(v, "api"))
                o.mode = MODE_API;
            else if (!strcmp(v, "mqtt"))
                o.mode = MODE_MQTT;
            else {
                usage();
                return 1;
            }
        } else if (!strcmp(a, "--http")) {
            if (hostport(v, o.http_host, sizeof(o.http_host), &o.http_port)) return usage(), 1;
        } else if (!strcmp(a, "--mqtt")) {
            if (hostport(v, o.mqtt_host, sizeof(o.mqtt_host), &o.mqtt_port)) return usage(), 1;
        } else if (!strcmp(a, "--token_file"))
            token_file = v;
        else if (!strcmp(a, "--devices_file"))
            o.devices_file = v;
        else if (!strcmp(a, "--devices"))
            o.devices = atoi(v);
        else if (!strcmp(a, "--conns"))
            o.conns = atoi(v);
        else if (!strcmp(a, "--seconds"))
            o.seconds = atof(v);
        else if (!strcmp(a, "--warmup"))
            o.warmup = atof(v);
        else if (!strcmp(a, "--timeout_ms"))
            o.timeout_ms = atol(v);
        else if (!strcmp(a, "--setup_timeout"))
            o.setup_timeout = atof(v);
        else if (!strcmp(a, "--server_pid"))
            o.server_pid = atoi(v);
        else if (!strcmp(a, "--server"))
            o.server = v;
        else if (!strcmp(a, "--create"))
            o.create = atoi(v);
        else if (!strcmp(a, "--out"))
            o.out = v;
        else if (!strcmp(a, "--count"))
            o.count = atol(v);
        else if (!strcmp(a, "--start_file"))
            o.start_file = v;
        else {
            usage();
            return 1;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    if (token_file) {
        FILE *f = fopen(token_file, "r");
        if (!f || !fgets(o.token, sizeof(o.token), f)) {
            fprintf(stderr, "api_load: cannot read the token from %s\n", token_file);
            if (f) fclose(f);
            return 1;
        }
        fclose(f);
        o.token[strcspn(o.token, "\r\n")] = 0;
    }
    snprintf(http_head, sizeof(http_head),
             "Host: %s:%d\r\nAuthorization: Bearer %s\r\nContent-Type: application/json\r\n",
             o.http_host, o.http_port, o.token);
    if (o.create > 0) {
        if (!o.out || !token_file) return usage(), 1;
        alarm(600);
        return create_devices();
    }
    if (!o.devices_file || o.devices < 1 || o.devices > MAX_DEVICES || o.conns < 1 ||
        o.conns > MAX_CONNS || o.seconds <= 0 || o.warmup < 0 ||
        (o.mode == MODE_API && !token_file)) {
        usage();
        return 1;
    }
    alarm((unsigned)(o.setup_timeout * 2 + o.seconds + o.warmup + o.timeout_ms / 1000 + 30 +
                     (o.start_file ? 60 : 0)));
    if (load_devices()) return 2;
    n_calls = o.conns;
    calls = calloc((size_t)n_calls, sizeof(*calls));
    if (!calls) return 2;
    for (int i = 0; i < n_calls; i++)
        calls[i].fd = -1;
    find_server_pids();

    pthread_t dt;
    if (pthread_create(&dt, NULL, device_main, NULL)) return 2;
    int64_t t_setup = bench_now_ns(), deadline = t_setup + (int64_t)(o.setup_timeout * 1e9);
    while (atomic_load(&dev_ready) < n_devs && !atomic_load(&dev_failed) && bench_now_ns() < deadline)
        usleep(2000);
    int rc = 0;
    if (atomic_load(&dev_ready) < n_devs) {
        fprintf(stderr, "api_load: %d of %d devices ready in %.0f s\n", atomic_load(&dev_ready),
                n_devs, o.setup_timeout);
        rc = 2;
    } else {
        fprintf(stderr, "api_load: %d devices logged in, subscribed and described in %.2f s\n",
                n_devs, (double)(bench_now_ns() - t_setup) / 1e9);
    }
    if (rc == 0 && callers_run()) rc = 2;
    atomic_store(&stop_all, true);
    pthread_join(dt, NULL);
    if (rc) return rc;
    qsort(lat, n_lat, sizeof(*lat), cmp_i64);
    /* With --count the window closes when the last call is answered. */
    if (o.count > 0 && edges_seen == 1) win_end = bench_now_ns();
    double secs = (double)(win_end - win_start) / 1e9;
    /* CPU is read at the window's edges (within the callers' 10 ms tick),
     * and divided by the calls completed in it. */
    bool cpu_ok = edges_seen == 2 && n_lat > 0;
    printf("RESULT workload=load mode=%s server=%s devices=%d conns=%d seconds=%.1f calls=%zu "
           "calls_per_s=%.0f p50_us=%.0f p99_us=%.0f p999_us=%.0f max_us=%.0f errors=%ld "
           "timeouts=%ld warm_errors=%ld device_odd=%ld",
           o.mode == MODE_API ? "api" : "mqtt", o.server, n_devs, n_calls, secs, n_lat,
           (double)n_lat / secs, pct_us(0.50), pct_us(0.99), pct_us(0.999),
           n_lat ? (double)lat[n_lat - 1] / 1000.0 : -1, n_errors, n_timeouts, n_warm_errors,
           atomic_load(&dev_odd));
    if (o.server_pid && cpu_ok)
        printf(" server_cpu_us_per_call=%.1f", (cpu_at[1] - cpu_at[0]) * 1e6 / (double)n_lat);
    if (cpu_ok) printf(" gen_cpu_us_per_call=%.1f", (gen_at[1] - gen_at[0]) * 1e6 / (double)n_lat);
    printf("\n");
    return n_errors || n_timeouts ? 2 : 0;
}
