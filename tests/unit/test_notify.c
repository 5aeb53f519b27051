/* Unit tests for monitor/notify: deliveries to an in-process HTTP sink (a
 * plain TCP server on 127.0.0.1, port 0, on the same libuv loop) that
 * answers each request with the next status of its script (0 = never
 * answer). Checks that the body arrives as sent, that a 500 is retried, that
 * an unreachable receiver is given up after max_attempts with the backoff
 * between them, that a timeout is retried, a 404 is final, a full queue
 * drops the oldest, and close cancels and completes once.
 *
 * Every wait is for an event that must come (a counter reaching a value),
 * bounded by a deadline that fails the test. */
#include "http_testlib.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "core/cy_err.h"
#include "alerts/notify.h"

#include <arpa/inet.h>
#include <stdbool.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

/* ---- the sink -------------------------------------------------------------- */

#define SINK_MAX 16

typedef struct req {
    char line[128]; /* "POST /hook HTTP/1.1" */
    char ctype[64]; /* Content-Type value */
    char *body;
} req;

typedef struct sink {
    uv_tcp_t server;
    int port;
    int script[SINK_MAX]; /* status per request; past the end: 200 */
    int nscript;
    req reqs[SINK_MAX];
    int nreqs;
    int conns_open;
} sink;

typedef struct conn {
    uv_tcp_t tcp;
    sink *s;
    char *buf;
    size_t len, cap;
    bool answered;
    char resp[128];
} conn;

static void conn_closed(uv_handle_t *h)
{
    conn *c = h->data;
    c->s->conns_open--;
    free(c->buf);
    free(c);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    conn *c = h->data;
    if (c->cap - c->len < 4096) {
        c->cap = c->cap * 2 + 8192;
        c->buf = realloc(c->buf, c->cap);
    }
    (void)hint;
    *b = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len - 1));
}

static void written(uv_write_t *w, int status)
{
    (void)status;
    conn *c = w->data;
    free(w);
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

/* find_header: http_testlib.h */

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    (void)b;
    conn *c = st->data;
    if (nread < 0) {
        if (!uv_is_closing((uv_handle_t *)st)) uv_close((uv_handle_t *)st, conn_closed);
        return;
    }
    c->len += (size_t)nread;
    c->buf[c->len] = '\0';
    char *end = strstr(c->buf, "\r\n\r\n");
    if (!end || c->answered) return;
    char cl[32] = "0";
    find_header(c->buf, "Content-Length", cl, sizeof(cl));
    size_t want = (size_t)(end + 4 - c->buf) + (size_t)atol(cl);
    if (c->len < want) return;
    sink *s = c->s;
    c->answered = true;
    int status = 200;
    if (s->nreqs < SINK_MAX) {
        req *r = &s->reqs[s->nreqs];
        size_t l = strcspn(c->buf, "\r\n");
        snprintf(r->line, sizeof(r->line), "%.*s", (int)l, c->buf);
        if (!find_header(c->buf, "Content-Type", r->ctype, sizeof(r->ctype))) r->ctype[0] = '\0';
        r->body = strndup(end + 4, (size_t)atol(cl));
        if (s->nreqs < s->nscript) status = s->script[s->nreqs];
        s->nreqs++;
    }
    if (status == 0) return; /* never answer: the client times out */
    char *resp = c->resp;
    int rl = snprintf(resp, sizeof(c->resp),
                      "HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status);
    uv_write_t *w = malloc(sizeof(*w));
    w->data = c;
    uv_buf_t out = uv_buf_init(resp, (unsigned)rl);
    uv_write(w, st, &out, 1, written);
}

static void on_conn(uv_stream_t *server, int status)
{
    assert_int_equal(status, 0);
    sink *s = server->data;
    conn *c = calloc(1, sizeof(*c));
    c->s = s;
    uv_tcp_init(server->loop, &c->tcp);
    c->tcp.data = c;
    assert_int_equal(uv_accept(server, (uv_stream_t *)&c->tcp), 0);
    s->conns_open++;
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
}

static void sink_start(uv_loop_t *loop, sink *s)
{
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_init(loop, &s->server), 0);
    s->server.data = s;
    assert_int_equal(uv_tcp_bind(&s->server, (struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->server, 16, on_conn), 0);
    struct sockaddr_in got;
    int gl = sizeof(got);
    assert_int_equal(uv_tcp_getsockname(&s->server, (struct sockaddr *)&got, &gl), 0);
    s->port = ntohs(got.sin_port);
}

static void sink_stop(sink *s)
{
    uv_close((uv_handle_t *)&s->server, NULL);
    for (int i = 0; i < s->nreqs; i++)
        free(s->reqs[i].body);
}

/* A port nothing listens on: bound then closed. */
static int dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t l = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    return ntohs(a.sin_port);
}

/* ---- running the loop until something happens ----------------------------- */

typedef struct world {
    uv_loop_t loop;
    uv_timer_t tick; /* keeps uv_run(ONCE) from blocking forever */
    cy_notify *n;
    int closed; /* close callbacks run */
} world;

static void tick(uv_timer_t *t)
{
    (void)t;
}

static void world_init(world *w)
{
    memset(w, 0, sizeof(*w));
    assert_int_equal(uv_loop_init(&w->loop), 0);
    uv_timer_init(&w->loop, &w->tick);
    uv_timer_start(&w->tick, tick, 10, 10);
}

typedef bool (*pred)(world *w, void *arg);

/* Run until p holds; fail after timeout_ms. Returns the elapsed ms. */
static uint64_t run_until(world *w, pred p, void *arg, uint64_t timeout_ms)
{
    uv_update_time(&w->loop);
    uint64_t t0 = uv_now(&w->loop);
    while (!p(w, arg)) {
        if (uv_now(&w->loop) - t0 > timeout_ms)
            fail_msg("timed out after %llu ms", (unsigned long long)timeout_ms);
        uv_run(&w->loop, UV_RUN_ONCE);
    }
    return uv_now(&w->loop) - t0;
}

/* arg: {which (0 sent, 1 failed), at least} */
static bool counter_at(world *w, void *arg)
{
    const uint64_t *want = arg;
    cy_notify_counters c;
    cy_notify_counters_get(w->n, &c);
    uint64_t v = want[0] == 0 ? c.sent : want[0] == 1 ? c.failed : c.attempts;
    return v >= want[1];
}

static void on_closed(void *arg)
{
    ((world *)arg)->closed++;
}

static bool is_closed(world *w, void *arg)
{
    (void)arg;
    return w->closed > 0;
}

static void world_fini(world *w, sink *s)
{
    if (w->n) {
        cy_notify_close(w->n, on_closed, w);
        w->n = NULL;
        run_until(w, is_closed, NULL, 5000);
    }
    assert_int_equal(w->closed, 1);
    if (s) sink_stop(s);
    uv_close((uv_handle_t *)&w->tick, NULL);
    /* Let the sink's connections and handles close. */
    for (int i = 0; i < 100 && uv_loop_alive(&w->loop); i++)
        uv_run(&w->loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_close(&w->loop), 0);
    assert_int_equal(w->closed, 1); /* exactly once */
}

static void new_notify(world *w, const char *url, uint32_t base, uint32_t attempts,
                       uint32_t timeout)
{
    const char *urls[] = {url};
    cy_notify_config cfg = {.urls = urls,
                            .n_urls = 1,
                            .retry_base_ms = base,
                            .max_attempts = attempts,
                            .timeout_ms = timeout};
    assert_int_equal(cy_notify_new(&w->n, &w->loop, &cfg), 0);
}

/* ---- tests ---------------------------------------------------------------- */

static void test_delivers_body(void **state)
{
    (void)state;
    world w;
    world_init(&w);
    sink s = {0};
    sink_start(&w.loop, &s);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/hook?token=secret", s.port);
    new_notify(&w, url, 10, 3, 2000);
    /* Over 1 KiB: no Expect: 100-continue stall. */
    char body[3000];
    memset(body, 'x', sizeof(body));
    memcpy(body, "{\"version\":\"4\",\"pad\":\"", 22);
    memcpy(body + sizeof(body) - 2, "\"}", 2);
    assert_int_equal(cy_notify_send(w.n, body, sizeof(body)), 0);
    cy_notify_counters c;
    cy_notify_counters_get(w.n, &c);
    assert_int_equal(c.queued, 1);
    uint64_t want[2] = {0, 1};
    run_until(&w, counter_at, want, 5000);
    assert_int_equal(s.nreqs, 1);
    assert_string_equal(s.reqs[0].line, "POST /hook?token=secret HTTP/1.1");
    assert_string_equal(s.reqs[0].ctype, "application/json");
    assert_int_equal(strlen(s.reqs[0].body), sizeof(body));
    assert_memory_equal(s.reqs[0].body, body, sizeof(body));
    cy_notify_counters_get(w.n, &c);
    assert_int_equal(c.sent, 1);
    assert_int_equal(c.failed, 0);
    assert_int_equal(c.attempts, 1);
    assert_int_equal(c.retries, 0);
    assert_int_equal(c.queued, 0);
    world_fini(&w, &s);
}

static void test_retries_500(void **state)
{
    (void)state;
    world w;
    world_init(&w);
    sink s = {.script = {500, 503, 200}, .nscript = 3};
    sink_start(&w.loop, &s);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", s.port);
    new_notify(&w, url, 20, 5, 2000);
    assert_int_equal(cy_notify_send(w.n, "{\"a\":1}", 7), 0);
    uint64_t want[2] = {0, 1};
    uint64_t ms = run_until(&w, counter_at, want, 5000);
    assert_true(ms >= 20 + 40); /* waited 20 then 40 ms between attempts */
    assert_int_equal(s.nreqs, 3);
    for (int i = 0; i < 3; i++)
        assert_string_equal(s.reqs[i].body, "{\"a\":1}");
    cy_notify_counters c;
    cy_notify_counters_get(w.n, &c);
    assert_int_equal(c.sent, 1);
    assert_int_equal(c.attempts, 3);
    assert_int_equal(c.retries, 2);
    assert_int_equal(c.failed, 0);
    world_fini(&w, &s);
}

static void test_unreachable_gives_up(void **state)
{
    (void)state;
    world w;
    world_init(&w);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", dead_port());
    new_notify(&w, url, 10, 5, 2000);
    assert_int_equal(cy_notify_send(w.n, "{}", 2), 0);
    uint64_t want[2] = {1, 1};
    uint64_t ms = run_until(&w, counter_at, want, 10000);
    assert_true(ms >= 10 + 20 + 40 + 80); /* 1, 2, 4, 8 x base between 5 attempts */
    cy_notify_counters c;
    cy_notify_counters_get(w.n, &c);
    assert_int_equal(c.failed, 1);
    assert_int_equal(c.attempts, 5);
    assert_int_equal(c.retries, 4);
    assert_int_equal(c.sent, 0);
    assert_int_equal(c.queued, 0);
    world_fini(&w, NULL);
}

static void test_final_404(void **state)
{
    (void)state;
    world w;
    world_init(&w);
    sink s = {.script = {404}, .nscript = 1};
    sink_start(&w.loop, &s);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", s.port);
    new_notify(&w, url, 10, 5, 2000);
    assert_int_equal(cy_notify_send(w.n, "{}", 2), 0);
    uint64_t want[2] = {1, 1};
    run_until(&w, counter_at, want, 5000);
    cy_notify_counters c;
    cy_notify_counters_get(w.n, &c);
    assert_int_equal(c.attempts, 1);
    assert_int_equal(s.nreqs, 1);
    world_fini(&w, &s);
}

static void test_timeout_retried(void **state)
{
    (void)state;
    world w;
    world_init(&w);
    sink s = {.script = {0, 0}, .nscript = 2};
    sink_start(&w.loop, &s);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", s.port);
    new_notify(&w, url, 10, 2, 150);
    assert_int_equal(cy_notify_send(w.n, "{}", 2), 0);
    uint64_t want[2] = {1, 1};
    uint64_t ms = run_until(&w, counter_at, want, 5000);
    assert_true(ms >= 150 + 10 + 150);
    assert_int_equal(s.nreqs, 2);
    cy_notify_counters c;
    cy_notify_counters_get(w.n, &c);
    assert_int_equal(c.attempts, 2);
    assert_int_equal(c.failed, 1);
    world_fini(&w, &s);
}

static void test_queue_drops_oldest(void **state)
{
    (void)state;
    world w;
    world_init(&w);
    sink s = {0};
    sink_start(&w.loop, &s);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", s.port);
    const char *urls[] = {url};
    cy_notify_config cfg = {.urls = urls, .n_urls = 1, .queue_max = 2, .max_inflight = 1};
    assert_int_equal(cy_notify_new(&w.n, &w.loop, &cfg), 0);
    /* b1 starts at once; b2, b3 wait; b4 finds the queue full: b2 goes. */
    assert_int_equal(cy_notify_send(w.n, "b1", 2), 0);
    assert_int_equal(cy_notify_send(w.n, "b2", 2), 0);
    assert_int_equal(cy_notify_send(w.n, "b3", 2), 0);
    assert_int_equal(cy_notify_send(w.n, "b4", 2), 0);
    cy_notify_counters c;
    cy_notify_counters_get(w.n, &c);
    assert_int_equal(c.dropped, 1);
    assert_int_equal(c.queued, 3);
    uint64_t want[2] = {0, 3};
    run_until(&w, counter_at, want, 5000);
    assert_int_equal(s.nreqs, 3);
    assert_string_equal(s.reqs[0].body, "b1");
    assert_string_equal(s.reqs[1].body, "b3");
    assert_string_equal(s.reqs[2].body, "b4");
    world_fini(&w, &s);
}

static void test_two_receivers(void **state)
{
    (void)state;
    world w;
    world_init(&w);
    sink a = {0}, b = {.script = {500}, .nscript = 1};
    sink_start(&w.loop, &a);
    sink_start(&w.loop, &b);
    char ua[64], ub[64];
    snprintf(ua, sizeof(ua), "http://127.0.0.1:%d/a", a.port);
    snprintf(ub, sizeof(ub), "http://127.0.0.1:%d/b", b.port);
    const char *urls[] = {ua, ub};
    cy_notify_config cfg = {.urls = urls, .n_urls = 2, .retry_base_ms = 10};
    assert_int_equal(cy_notify_new(&w.n, &w.loop, &cfg), 0);
    assert_int_equal(cy_notify_send(w.n, "{\"x\":2}", 7), 0);
    uint64_t want[2] = {0, 2};
    run_until(&w, counter_at, want, 5000);
    assert_int_equal(a.nreqs, 1);
    assert_int_equal(b.nreqs, 2);
    assert_string_equal(a.reqs[0].line, "POST /a HTTP/1.1");
    assert_string_equal(b.reqs[1].body, "{\"x\":2}");
    sink_stop(&a);
    world_fini(&w, &b);
}

static bool sink_has_request(world *w, void *arg)
{
    (void)w;
    return ((sink *)arg)->nreqs >= 1;
}

static void test_close_cancels(void **state)
{
    (void)state;
    world w;
    world_init(&w);
    sink s = {.script = {0}, .nscript = 1};
    sink_start(&w.loop, &s);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", s.port);
    new_notify(&w, url, 10, 5, 5000);
    assert_int_equal(cy_notify_send(w.n, "one", 3), 0);
    assert_int_equal(cy_notify_send(w.n, "two", 3), 0);
    run_until(&w, sink_has_request, &s, 5000); /* "one" is in flight, unanswered */
    cy_notify_counters c;
    cy_notify_counters_get(w.n, &c);
    assert_int_equal(c.queued, 2);
    cy_notify_close(w.n, on_closed, &w);
    w.n = NULL;
    assert_int_equal(w.closed, 0); /* completes on the loop, not inside close */
    run_until(&w, is_closed, NULL, 5000);
    world_fini(&w, &s);
}

static void test_bad_config(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    cy_notify *n = (cy_notify *)1;
    cy_notify_config cfg = {0};
    assert_int_equal(cy_notify_new(&n, &loop, &cfg), CY_EINVAL);
    assert_null(n);
    const char *bad[] = {"ftp://example.org/"};
    cfg.urls = bad;
    cfg.n_urls = 1;
    assert_int_equal(cy_notify_new(&n, &loop, &cfg), CY_EINVAL);
    assert_int_equal(cy_notify_new(&n, &loop, NULL), CY_EINVAL);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void test_idle_close(void **state)
{
    (void)state;
    world w;
    world_init(&w);
    new_notify(&w, "http://127.0.0.1:1/", 10, 1, 1000);
    cy_notify *n = w.n;
    cy_notify_close(n, on_closed, &w);
    w.n = NULL;
    run_until(&w, is_closed, NULL, 5000);
    world_fini(&w, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_delivers_body),        cmocka_unit_test(test_retries_500),
        cmocka_unit_test(test_unreachable_gives_up), cmocka_unit_test(test_final_404),
        cmocka_unit_test(test_timeout_retried),      cmocka_unit_test(test_queue_drops_oldest),
        cmocka_unit_test(test_two_receivers),        cmocka_unit_test(test_close_cancels),
        cmocka_unit_test(test_bad_config),           cmocka_unit_test(test_idle_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
