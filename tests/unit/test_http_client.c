/* Unit tests for http/client: requests to an in-process HTTP/1.1 sink (a
 * plain TCP server on 127.0.0.1, port 0, on the same libuv loop, keep-alive,
 * which counts the connections it accepts) whose answer depends on the path:
 *
 *   /ok      200, Content-Type: text/plain, body "hello"
 *   /204     204
 *   /503     503 with Retry-After: 120 and Content-Type: application/json
 *   /big     200 with a body of BIG_LEN bytes ('a' + i % 26)
 *   /hang    no answer ever (the client times out or cancels)
 *   /close   200, Connection: close, then closes
 *   /1xx     a 100 Continue carrying a Retry-After, then 200 without one
 *
 * and which keeps the last request (request line, headers, body) it read.
 * Checks answers and their fields, the copies of requests, timeouts,
 * refused connections, the address check, cancel, close with requests in
 * flight (every callback exactly once, never inside send or close's
 * caller's stack frame before it returns... except cancel's documented
 * one), connection reuse and sending from inside a callback. It prints the
 * rate of 20,000 requests (same loop for sink and client: a floor).
 *
 * Every wait is for an event that must come, bounded by a deadline that
 * fails the test. */
#include "http_testlib.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "http/client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define BIG_LEN 100000

/* ---- the sink -------------------------------------------------------------- */

typedef struct sink {
    uv_tcp_t server;
    int port;
    int accepted; /* connections accepted */
    int open;     /* connections open */
    int requests; /* requests read */
    char line[256];
    char *headers; /* last request's header block */
    char *body;    /* last request's body */
    size_t body_len;
} sink;

typedef struct conn {
    uv_tcp_t tcp;
    sink *s;
    char *buf;
    size_t len, cap;
    bool hung; /* a /hang request: read nothing more */
} conn;

static void conn_closed(uv_handle_t *h)
{
    conn *c = h->data;
    c->s->open--;
    free(c->buf);
    free(c);
}

static void conn_close(conn *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp)) uv_close((uv_handle_t *)&c->tcp, conn_closed);
}

static void alloc_cb(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    conn *c = h->data;
    (void)hint;
    if (c->cap - c->len < 65536) {
        c->cap = c->cap * 2 + 65536;
        c->buf = realloc(c->buf, c->cap);
    }
    *b = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len - 1));
}

typedef struct wreq {
    uv_write_t w;
    conn *c;
    bool close;
    char data[];
} wreq;

static void written(uv_write_t *w, int status)
{
    wreq *r = (wreq *)w;
    (void)status;
    if (r->close) conn_close(r->c);
    free(r);
}

static void respond(conn *c, const char *head, const char *body, size_t blen, bool close)
{
    size_t hl = strlen(head);
    wreq *r = malloc(sizeof(*r) + hl + blen);
    r->c = c;
    r->close = close;
    memcpy(r->data, head, hl);
    if (blen) memcpy(r->data + hl, body, blen);
    uv_buf_t b = uv_buf_init(r->data, (unsigned)(hl + blen));
    if (uv_write(&r->w, (uv_stream_t *)&c->tcp, &b, 1, written) != 0) {
        free(r);
        conn_close(c);
    }
}

/* find_header: http_testlib.h */

/* path (from the request line) is p, with or without a query. */
static bool path_is(const char *path, const char *p)
{
    size_t l = strlen(p);
    return !strncmp(path, p, l) && (path[l] == ' ' || path[l] == '?');
}

/* Answer one whole request: head[0..hlen) then body[0..blen). */
static void handle(conn *c, const char *head, size_t hlen, const char *body, size_t blen)
{
    sink *s = c->s;
    s->requests++;
    size_t l = strcspn(head, "\r\n");
    snprintf(s->line, sizeof(s->line), "%.*s", (int)l, head);
    free(s->headers);
    s->headers = strndup(head, hlen);
    free(s->body);
    s->body = malloc(blen + 1);
    memcpy(s->body, body, blen);
    s->body[blen] = '\0';
    s->body_len = blen;
    const char *path = strchr(s->line, ' ');
    path = path ? path + 1 : "";
    if (path_is(path, "/ok")) {
        respond(c, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\n",
                "hello", 5, false);
    } else if (path_is(path, "/204")) {
        respond(c, "HTTP/1.1 204 No Content\r\n\r\n", NULL, 0, false);
    } else if (path_is(path, "/503")) {
        respond(c,
                "HTTP/1.1 503 Busy\r\nRetry-After:  120 \r\ncontent-type: application/json\r\n"
                "Content-Length: 2\r\n\r\n",
                "{}", 2, false);
    } else if (path_is(path, "/big")) {
        char *b = malloc(BIG_LEN);
        for (size_t i = 0; i < BIG_LEN; i++)
            b[i] = (char)('a' + i % 26);
        char h[128];
        snprintf(h, sizeof(h), "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n", BIG_LEN);
        respond(c, h, b, BIG_LEN, false);
        free(b);
    } else if (path_is(path, "/hang")) {
        c->hung = true;
    } else if (path_is(path, "/close")) {
        respond(c, "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", NULL, 0,
                true);
    } else if (path_is(path, "/1xx")) {
        respond(c,
                "HTTP/1.1 100 Continue\r\nRetry-After: 5\r\n\r\n"
                "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                NULL, 0, false);
    } else {
        respond(c, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n", NULL, 0, false);
    }
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    (void)b;
    conn *c = st->data;
    if (nread < 0) {
        conn_close(c);
        return;
    }
    c->len += (size_t)nread;
    c->buf[c->len] = '\0';
    while (!c->hung) {
        char *end = strstr(c->buf, "\r\n\r\n");
        if (!end) return;
        char cl[32] = "0";
        find_header(c->buf, "Content-Length", cl, sizeof(cl));
        size_t hlen = (size_t)(end + 4 - c->buf);
        size_t want = hlen + (size_t)atol(cl);
        if (c->len < want) return;
        handle(c, c->buf, hlen, c->buf + hlen, want - hlen);
        memmove(c->buf, c->buf + want, c->len - want + 1);
        c->len -= want;
    }
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
    s->accepted++;
    s->open++;
    uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, on_read);
}

static void sink_start(uv_loop_t *loop, sink *s)
{
    memset(s, 0, sizeof(*s));
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_init(loop, &s->server), 0);
    s->server.data = s;
    assert_int_equal(uv_tcp_bind(&s->server, (struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->server, 128, on_conn), 0);
    struct sockaddr_in got;
    int gl = sizeof(got);
    assert_int_equal(uv_tcp_getsockname(&s->server, (struct sockaddr *)&got, &gl), 0);
    s->port = ntohs(got.sin_port);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (h->type == UV_TCP && h->data && !uv_is_closing(h)) {
        conn *c = h->data;
        conn_close(c);
    }
}

static void sink_stop(sink *s)
{
    s->server.data = NULL;
    uv_close((uv_handle_t *)&s->server, NULL);
    /* The sink's open connections (a /hang one the client left). */
    uv_walk(s->server.loop, close_walk, NULL);
    free(s->headers);
    free(s->body);
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

/* ---- the world: a loop, a sink, a client ----------------------------------- */

typedef struct world {
    uv_loop_t loop;
    uv_timer_t tick; /* keeps uv_run(ONCE) from blocking forever */
    sink s;
    cy_hc *c;
    int closed; /* close callbacks run */
} world;

static void tick(uv_timer_t *t)
{
    (void)t;
}

static void world_init(world *w, const cy_hc_config *cfg)
{
    memset(w, 0, sizeof(*w));
    assert_int_equal(uv_loop_init(&w->loop), 0);
    uv_timer_init(&w->loop, &w->tick);
    uv_timer_start(&w->tick, tick, 10, 10);
    sink_start(&w->loop, &w->s);
    assert_int_equal(cy_hc_new(&w->loop, cfg, &w->c), 0);
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

static void on_closed(void *arg)
{
    ((world *)arg)->closed++;
}

static bool is_closed(world *w, void *arg)
{
    (void)arg;
    return w->closed > 0;
}

static void world_fini(world *w)
{
    if (w->c) {
        cy_hc_close(w->c, on_closed, w);
        w->c = NULL;
        assert_int_equal(w->closed, 0); /* on a later turn */
        run_until(w, is_closed, NULL, 5000);
    }
    sink_stop(&w->s);
    uv_close((uv_handle_t *)&w->tick, NULL);
    for (int i = 0; i < 1000 && uv_loop_alive(&w->loop); i++)
        uv_run(&w->loop, UV_RUN_NOWAIT);
    assert_int_equal(uv_loop_close(&w->loop), 0);
    assert_int_equal(w->closed, 1); /* exactly once */
}

/* One answer, copied out of the callback (its pointers die with it). */
typedef struct answer {
    int calls;
    long status;
    char error[300];
    bool timed_out;
    bool has_retry_after, has_ctype;
    char retry_after[64], ctype[64];
    char body[8192];
    size_t body_len;
    int64_t elapsed_us;
    int http_version;
    char remote_ip[64];
    cy_hc_xfer *x; /* the handle send gave */
} answer;

static void on_answer(void *arg, const cy_hc_resp *r)
{
    answer *a = arg;
    a->calls++;
    a->status = r->status;
    assert_non_null(r->error);
    assert_non_null(r->remote_ip);
    snprintf(a->error, sizeof(a->error), "%s", r->error);
    a->timed_out = r->timed_out;
    a->has_retry_after = r->retry_after != NULL;
    a->has_ctype = r->content_type != NULL;
    snprintf(a->retry_after, sizeof(a->retry_after), "%s", r->retry_after ? r->retry_after : "");
    snprintf(a->ctype, sizeof(a->ctype), "%s", r->content_type ? r->content_type : "");
    a->body_len = r->body_len;
    assert_true(r->body_len <= sizeof(a->body));
    if (r->body_len) memcpy(a->body, r->body, r->body_len);
    a->elapsed_us = r->elapsed_us;
    a->http_version = r->http_version;
    snprintf(a->remote_ip, sizeof(a->remote_ip), "%s", r->remote_ip);
}

static bool answered(world *w, void *arg)
{
    (void)w;
    return ((answer *)arg)->calls > 0;
}

static void url_of(world *w, const char *path, char *out, size_t len)
{
    snprintf(out, len, "http://127.0.0.1:%d%s", w->s.port, path);
}

/* Send a GET of path and wait for its answer. */
static void get(world *w, const char *path, uint32_t timeout_ms, answer *a)
{
    char url[128];
    url_of(w, path, url, sizeof(url));
    memset(a, 0, sizeof(*a));
    cy_hc_req r = {.method = "GET", .url = url, .timeout_ms = timeout_ms};
    assert_int_equal(cy_hc_send(w->c, &r, on_answer, a, &a->x), 0);
    assert_non_null(a->x);
    assert_int_equal(a->calls, 0); /* never from inside send */
    run_until(w, answered, a, 10000);
    assert_int_equal(a->calls, 1);
}

/* ---- tests: answers ---------------------------------------------------------- */

static void test_200_and_204(void **state)
{
    (void)state;
    world w;
    world_init(&w, NULL);
    answer a;
    get(&w, "/ok", 0, &a);
    assert_int_equal(a.status, 200);
    assert_string_equal(a.error, "");
    assert_false(a.timed_out);
    assert_true(a.has_ctype);
    assert_string_equal(a.ctype, "text/plain");
    assert_false(a.has_retry_after);
    assert_int_equal(a.body_len, 5);
    assert_memory_equal(a.body, "hello", 5);
    assert_int_equal(a.http_version, 1);
    assert_string_equal(a.remote_ip, "127.0.0.1");
    assert_true(a.elapsed_us > 0 && a.elapsed_us < 5000000);
    assert_string_equal(w.s.line, "GET /ok HTTP/1.1");
    char v[64];
    assert_non_null(find_header(w.s.headers, "User-Agent", v, sizeof(v)));
    assert_string_equal(v, "cyan");
    assert_null(find_header(w.s.headers, "Content-Length", v, sizeof(v)));

    get(&w, "/204", 0, &a);
    assert_int_equal(a.status, 204);
    assert_int_equal(a.body_len, 0);
    assert_false(a.has_ctype);
    assert_int_equal(cy_hc_inflight(w.c), 0);
    assert_int_equal(w.s.accepted, 1); /* the second went on the first's connection */

    get(&w, "/nothing-here", 0, &a);
    assert_int_equal(a.status, 404); /* an answer, not an error */
    assert_string_equal(a.error, "");
    world_fini(&w);
}

static void test_503_retry_after(void **state)
{
    (void)state;
    world w;
    world_init(&w, NULL);
    answer a;
    get(&w, "/503", 0, &a);
    assert_int_equal(a.status, 503);
    assert_true(a.has_retry_after);
    assert_string_equal(a.retry_after, "120");
    assert_string_equal(a.ctype, "application/json");
    assert_int_equal(a.body_len, 2);
    /* A header of a 1xx answer is not the final answer's. */
    get(&w, "/1xx", 0, &a);
    assert_int_equal(a.status, 200);
    assert_false(a.has_retry_after);
    world_fini(&w);
}

static void test_body_capped(void **state)
{
    (void)state;
    cy_hc_config cfg = {.body_keep = 1000};
    world w;
    world_init(&w, &cfg);
    answer a;
    get(&w, "/big", 0, &a);
    assert_int_equal(a.status, 200);
    assert_int_equal(a.body_len, 1000);
    for (size_t i = 0; i < 1000; i++)
        assert_int_equal(a.body[i], 'a' + i % 26);
    /* The rest was read: the connection serves the next request. */
    get(&w, "/ok", 0, &a);
    assert_int_equal(a.status, 200);
    assert_int_equal(w.s.accepted, 1);
    world_fini(&w);

    /* The default keeps 4096. */
    world_init(&w, NULL);
    get(&w, "/big", 0, &a);
    assert_int_equal(a.body_len, 4096);
    world_fini(&w);
}

static void test_request_copied(void **state)
{
    (void)state;
    world w;
    world_init(&w, NULL);
    char url[128], method[8] = "PUT", h1[64] = "X-Key: abc", h2[64] = "Content-Type: text/x";
    url_of(&w, "/ok?q=1", url, sizeof(url));
    const char *hs[] = {h1, h2, NULL};
    /* Over 1 MiB: without "Expect:" curl would wait for a 100-continue. */
    size_t blen = (1 << 20) + 7;
    uint8_t *body = malloc(blen);
    for (size_t i = 0; i < blen; i++)
        body[i] = (uint8_t)(i * 7);
    cy_hc_req r = {.method = method, .url = url, .headers = hs, .body = body, .body_len = blen};
    answer a = {0};
    assert_int_equal(cy_hc_send(w.c, &r, on_answer, &a, NULL), 0);
    /* The caller's memory is its own again. */
    memset(url, 0, sizeof(url));
    memset(method, 0, sizeof(method));
    memset(h1, 0, sizeof(h1));
    memset(h2, 0, sizeof(h2));
    uint8_t *want = malloc(blen);
    memcpy(want, body, blen);
    memset(body, 0, blen);
    run_until(&w, answered, &a, 10000);
    assert_int_equal(a.status, 200);
    assert_string_equal(w.s.line, "PUT /ok?q=1 HTTP/1.1");
    char v[64];
    assert_non_null(find_header(w.s.headers, "X-Key", v, sizeof(v)));
    assert_string_equal(v, "abc");
    assert_non_null(find_header(w.s.headers, "Content-Type", v, sizeof(v)));
    assert_string_equal(v, "text/x");
    assert_null(find_header(w.s.headers, "Expect", v, sizeof(v)));
    assert_int_equal(w.s.body_len, blen);
    assert_memory_equal(w.s.body, want, blen);
    free(body);
    free(want);

    /* POST by default, an empty body has Content-Length: 0; a User-Agent
     * header replaces the default one. */
    url_of(&w, "/204", url, sizeof(url));
    const char *ua[] = {"User-Agent: me/1", NULL};
    cy_hc_req p = {.url = url, .headers = ua};
    memset(&a, 0, sizeof(a));
    assert_int_equal(cy_hc_send(w.c, &p, on_answer, &a, NULL), 0);
    run_until(&w, answered, &a, 10000);
    assert_int_equal(a.status, 204);
    assert_string_equal(w.s.line, "POST /204 HTTP/1.1");
    assert_non_null(find_header(w.s.headers, "Content-Length", v, sizeof(v)));
    assert_string_equal(v, "0");
    assert_non_null(find_header(w.s.headers, "User-Agent", v, sizeof(v)));
    assert_string_equal(v, "me/1");
    assert_null(strstr(w.s.headers, "cyan"));

    /* DELETE without a body sends none. */
    cy_hc_req d = {.method = "DELETE", .url = url};
    memset(&a, 0, sizeof(a));
    assert_int_equal(cy_hc_send(w.c, &d, on_answer, &a, NULL), 0);
    run_until(&w, answered, &a, 10000);
    assert_int_equal(a.status, 204);
    assert_string_equal(w.s.line, "DELETE /204 HTTP/1.1");
    assert_null(find_header(w.s.headers, "Content-Length", v, sizeof(v)));
    assert_null(find_header(w.s.headers, "Content-Type", v, sizeof(v)));
    assert_int_equal(w.s.accepted, 1);
    world_fini(&w);
}

static void test_bad_requests(void **state)
{
    (void)state;
    world w;
    world_init(&w, NULL);
    answer a = {0};
    cy_hc_xfer *x = (cy_hc_xfer *)&a;
    char url[128];
    url_of(&w, "/ok", url, sizeof(url));
    cy_hc_req r = {.url = "ftp://127.0.0.1/"};
    assert_int_equal(cy_hc_send(w.c, &r, on_answer, &a, &x), CY_EINVAL);
    assert_null(x);
    r.url = "file:///etc/passwd";
    assert_int_equal(cy_hc_send(w.c, &r, on_answer, &a, NULL), CY_EINVAL);
    r.url = "127.0.0.1/";
    assert_int_equal(cy_hc_send(w.c, &r, on_answer, &a, NULL), CY_EINVAL);
    r.url = NULL;
    assert_int_equal(cy_hc_send(w.c, &r, on_answer, &a, NULL), CY_EINVAL);
    r.url = url;
    assert_int_equal(cy_hc_send(w.c, NULL, on_answer, &a, NULL), CY_EINVAL);
    assert_int_equal(cy_hc_send(w.c, &r, NULL, &a, NULL), CY_EINVAL);
    const char *inject[] = {"X-A: 1\r\nX-B: 2", NULL};
    r.headers = inject;
    assert_int_equal(cy_hc_send(w.c, &r, on_answer, &a, NULL), CY_EINVAL);
    r.headers = NULL;
    r.method = "GET /x HTTP/1.1\r\n";
    assert_int_equal(cy_hc_send(w.c, &r, on_answer, &a, NULL), CY_EINVAL);
    r.method = "";
    assert_int_equal(cy_hc_send(w.c, &r, on_answer, &a, NULL), CY_EINVAL);
    r.method = "POST";
    r.body_len = 3; /* and no body */
    assert_int_equal(cy_hc_send(w.c, &r, on_answer, &a, NULL), CY_EINVAL);
    assert_int_equal(cy_hc_inflight(w.c), 0);
    /* Uppercase schemes are schemes. */
    snprintf(url, sizeof(url), "HTTP://127.0.0.1:%d/ok", w.s.port);
    r.body_len = 0;
    assert_int_equal(cy_hc_send(w.c, &r, on_answer, &a, NULL), 0);
    run_until(&w, answered, &a, 10000);
    assert_int_equal(a.status, 200);
    /* A URL curl takes but cannot parse: an answer with status 0. */
    memset(&a, 0, sizeof(a));
    r.url = "http://[::1/";
    assert_int_equal(cy_hc_send(w.c, &r, on_answer, &a, NULL), 0);
    assert_int_equal(a.calls, 0);
    run_until(&w, answered, &a, 10000);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.status, 0);
    assert_true(a.error[0] != '\0');
    assert_int_equal(a.http_version, 0);
    world_fini(&w);
}

/* curl refuses a URL over 8 MB at setopt time: the callback still comes
 * from a later turn, and such a request can be cancelled. */
static void test_sync_failure_deferred(void **state)
{
    (void)state;
    world w;
    world_init(&w, NULL);
    size_t n = 9 * 1000 * 1000;
    char *url = malloc(n + 1);
    memcpy(url, "http://127.0.0.1/", 17);
    memset(url + 17, 'a', n - 17);
    url[n] = '\0';
    cy_hc_req r = {.url = url};
    answer a = {0}, b = {0};
    assert_int_equal(cy_hc_send(w.c, &r, on_answer, &a, &a.x), 0);
    assert_int_equal(cy_hc_send(w.c, &r, on_answer, &b, &b.x), 0);
    free(url);
    assert_int_equal(a.calls, 0);
    assert_int_equal(cy_hc_inflight(w.c), 2);
    cy_hc_cancel(b.x);
    assert_int_equal(b.calls, 1);
    assert_string_equal(b.error, "cancelled");
    run_until(&w, answered, &a, 5000);
    assert_int_equal(a.status, 0);
    assert_non_null(strstr(a.error, "curl refused the request"));
    assert_int_equal(b.calls, 1);
    assert_int_equal(cy_hc_inflight(w.c), 0);
    world_fini(&w);
}

/* ---- tests: failures ----------------------------------------------------------- */

static void test_connection_refused(void **state)
{
    (void)state;
    world w;
    world_init(&w, NULL);
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/", dead_port());
    cy_hc_req r = {.url = url, .timeout_ms = 5000};
    answer a = {0};
    assert_int_equal(cy_hc_send(w.c, &r, on_answer, &a, NULL), 0);
    run_until(&w, answered, &a, 5000);
    assert_int_equal(a.status, 0);
    assert_false(a.timed_out);
    assert_true(a.error[0] != '\0');
    assert_int_equal(a.http_version, 0);
    assert_false(a.has_ctype);
    assert_int_equal(a.body_len, 0);
    world_fini(&w);
}

static void test_timeout(void **state)
{
    (void)state;
    world w;
    world_init(&w, NULL);
    answer a;
    get(&w, "/hang", 200, &a);
    assert_int_equal(a.status, 0);
    assert_true(a.timed_out);
    assert_true(a.error[0] != '\0');
    assert_true(a.elapsed_us >= 190000);
    assert_true(a.elapsed_us < 3000000);
    assert_int_equal(w.s.requests, 1);
    /* The timed-out connection is not reused. */
    get(&w, "/ok", 0, &a);
    assert_int_equal(a.status, 200);
    assert_int_equal(w.s.accepted, 2);
    world_fini(&w);
}

typedef struct addr_check {
    int calls;
    bool allow;
    char last[64];
} addr_check;

static bool check_addr(void *ctx, const struct sockaddr *sa)
{
    addr_check *ac = ctx;
    ac->calls++;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, ac->last, sizeof(ac->last));
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, ac->last,
                  sizeof(ac->last));
    return ac->allow;
}

static void test_address_refused(void **state)
{
    (void)state;
    addr_check ac = {0};
    cy_hc_config cfg = {.addr_ok = check_addr, .addr_ctx = &ac};
    world w;
    world_init(&w, &cfg);
    answer a;
    get(&w, "/ok", 10000, &a); /* fails long before the timeout */
    assert_int_equal(a.status, 0);
    assert_false(a.timed_out);
    assert_string_equal(a.error, "address not allowed: 127.0.0.1");
    assert_string_equal(a.remote_ip, "");
    assert_true(a.elapsed_us < 2000000);
    assert_int_equal(ac.calls, 1);
    assert_string_equal(ac.last, "127.0.0.1");
    assert_int_equal(w.s.accepted, 0);

    /* A name: every address it resolves to is asked about. */
    char url[128];
    snprintf(url, sizeof(url), "http://localhost:%d/ok", w.s.port);
    cy_hc_req r = {.url = url, .timeout_ms = 10000};
    memset(&a, 0, sizeof(a));
    ac.calls = 0;
    assert_int_equal(cy_hc_send(w.c, &r, on_answer, &a, NULL), 0);
    run_until(&w, answered, &a, 10000);
    assert_int_equal(a.status, 0);
    assert_false(a.timed_out);
    assert_non_null(strstr(a.error, "address not allowed: "));
    assert_true(ac.calls >= 1);
    assert_int_equal(w.s.accepted, 0);

    /* Allowed: asked once for the connection, not for reuses of it. */
    ac.allow = true;
    ac.calls = 0;
    get(&w, "/ok", 0, &a);
    assert_int_equal(a.status, 200);
    get(&w, "/ok", 0, &a);
    assert_int_equal(a.status, 200);
    assert_int_equal(ac.calls, 1);
    assert_int_equal(w.s.accepted, 1);
    world_fini(&w);
}

/* ---- tests: cancel and close ------------------------------------------------- */

static bool sink_got(world *w, void *arg)
{
    return w->s.requests >= *(int *)arg;
}

static void test_cancel(void **state)
{
    (void)state;
    world w;
    world_init(&w, NULL);
    char url[128];
    url_of(&w, "/hang", url, sizeof(url));
    cy_hc_req r = {.url = url, .timeout_ms = 10000};
    answer a = {0}, b = {0}, c = {0};
    assert_int_equal(cy_hc_send(w.c, &r, on_answer, &a, &a.x), 0);
    int one = 1;
    run_until(&w, sink_got, &one, 5000); /* on the wire, unanswered */
    assert_int_equal(cy_hc_inflight(w.c), 1);
    cy_hc_cancel(a.x);
    assert_int_equal(a.calls, 1); /* from inside cancel */
    assert_int_equal(a.status, 0);
    assert_false(a.timed_out);
    assert_string_equal(a.error, "cancelled");
    assert_int_equal(cy_hc_inflight(w.c), 0);
    /* Cancelled before the loop ever ran it. */
    assert_int_equal(cy_hc_send(w.c, &r, on_answer, &b, &b.x), 0);
    cy_hc_cancel(b.x);
    assert_int_equal(b.calls, 1);
    cy_hc_cancel(NULL);
    /* The client goes on; nothing else arrives for a or b. */
    get(&w, "/ok", 0, &c);
    assert_int_equal(c.status, 200);
    get(&w, "/ok", 0, &c);
    assert_int_equal(a.calls, 1);
    assert_int_equal(b.calls, 1);
    assert_int_equal(w.s.requests, 3);
    world_fini(&w);
}

/* Callbacks that run during close: counted, and a send from them refused. */
static int close_sends_refused;
static cy_hc *close_client;

static void on_answer_send(void *arg, const cy_hc_resp *r)
{
    on_answer(arg, r);
    cy_hc_req q = {.url = "http://127.0.0.1:1/"};
    answer dummy;
    if (cy_hc_send(close_client, &q, on_answer, &dummy, NULL) == CY_EINVAL) close_sends_refused++;
}

static void test_close_in_flight(void **state)
{
    (void)state;
    world w;
    world_init(&w, NULL);
    close_client = w.c;
    close_sends_refused = 0;
    char hang[128], ok[128];
    url_of(&w, "/hang", hang, sizeof(hang));
    url_of(&w, "/ok", ok, sizeof(ok));
    answer a[6];
    memset(a, 0, sizeof(a));
    cy_hc_req rh = {.url = hang, .timeout_ms = 10000}, ro = {.url = ok};
    for (int i = 0; i < 3; i++)
        assert_int_equal(cy_hc_send(w.c, &rh, on_answer_send, &a[i], NULL), 0);
    int three = 3;
    run_until(&w, sink_got, &three, 5000);
    /* Two more that have not started, and one curl refused. */
    assert_int_equal(cy_hc_send(w.c, &ro, on_answer_send, &a[3], NULL), 0);
    assert_int_equal(cy_hc_send(w.c, &ro, on_answer_send, &a[4], NULL), 0);
    size_t n = 9 * 1000 * 1000;
    char *big = malloc(n + 1);
    memcpy(big, "http://127.0.0.1/", 17);
    memset(big + 17, 'a', n - 17);
    big[n] = '\0';
    cy_hc_req rb = {.url = big};
    assert_int_equal(cy_hc_send(w.c, &rb, on_answer_send, &a[5], NULL), 0);
    free(big);
    assert_int_equal(cy_hc_inflight(w.c), 6);
    cy_hc_close(w.c, on_closed, &w);
    w.c = NULL;
    for (int i = 0; i < 6; i++) {
        assert_int_equal(a[i].calls, 1);
        assert_int_equal(a[i].status, 0);
        assert_string_equal(a[i].error, "cancelled");
    }
    assert_int_equal(close_sends_refused, 6);
    assert_int_equal(w.closed, 0); /* on a later turn */
    run_until(&w, is_closed, NULL, 5000);
    for (int i = 0; i < 6; i++)
        assert_int_equal(a[i].calls, 1);
    world_fini(&w);
}

/* A callback closes the client while other answers are ready in the same
 * turn: every request still gets exactly one callback. */
typedef struct closer {
    world *w;
    int calls[16];
    int total;
    int cancelled;
} closer;

typedef struct closer_ref {
    closer *cl;
    int i;
} closer_ref;

static void on_answer_close(void *arg, const cy_hc_resp *r)
{
    closer_ref *ref = arg;
    closer *cl = ref->cl;
    cl->calls[ref->i]++;
    cl->total++;
    if (r->status == 0) cl->cancelled++;
    if (cl->w->c) {
        cy_hc *c = cl->w->c;
        cl->w->c = NULL;
        cy_hc_close(c, on_closed, cl->w);
        cy_hc_close(c, on_closed, cl->w); /* a second close does nothing */
    }
}

static void test_close_from_callback(void **state)
{
    (void)state;
    world w;
    world_init(&w, NULL);
    char url[128];
    url_of(&w, "/ok", url, sizeof(url));
    closer cl = {.w = &w};
    closer_ref refs[16];
    cy_hc_req r = {.url = url};
    for (int i = 0; i < 16; i++) {
        refs[i] = (closer_ref){&cl, i};
        assert_int_equal(cy_hc_send(w.c, &r, on_answer_close, &refs[i], NULL), 0);
    }
    run_until(&w, is_closed, NULL, 5000);
    assert_int_equal(cl.total, 16);
    for (int i = 0; i < 16; i++)
        assert_int_equal(cl.calls[i], 1);
    assert_true(cl.cancelled <= 15);
    world_fini(&w);
}

/* Answers come in one batch; each callback cancels the next request if
 * its callback has not run yet: still exactly one callback each. */
typedef struct canceller {
    cy_hc_xfer *x[16];
    int calls[16];
    bool over[16];
    int cancelled, total;
} canceller;

typedef struct canceller_ref {
    canceller *cn;
    int i;
} canceller_ref;

static void on_answer_cancel(void *arg, const cy_hc_resp *r)
{
    canceller_ref *ref = arg;
    canceller *cn = ref->cn;
    cn->calls[ref->i]++;
    cn->over[ref->i] = true;
    cn->total++;
    if (r->status == 0) {
        assert_string_equal(r->error, "cancelled");
        cn->cancelled++;
    } else {
        assert_int_equal(r->status, 200);
    }
    int j = ref->i + 1;
    if (j < 16 && !cn->over[j]) cy_hc_cancel(cn->x[j]);
}

static bool all_called(world *w, void *arg)
{
    (void)w;
    return ((canceller *)arg)->total == 16;
}

static void test_cancel_from_callback(void **state)
{
    (void)state;
    world w;
    world_init(&w, NULL);
    char url[128];
    url_of(&w, "/ok", url, sizeof(url));
    canceller cn = {0};
    canceller_ref refs[16];
    cy_hc_req r = {.url = url};
    for (int i = 0; i < 16; i++) {
        refs[i] = (canceller_ref){&cn, i};
        assert_int_equal(cy_hc_send(w.c, &r, on_answer_cancel, &refs[i], &cn.x[i]), 0);
    }
    run_until(&w, all_called, &cn, 5000);
    for (int i = 0; i < 16; i++)
        assert_int_equal(cn.calls[i], 1);
    assert_true(cn.cancelled >= 1);
    assert_true(cn.cancelled <= 15); /* a cancelled one cancels the next, and so on */
    assert_int_equal(cy_hc_inflight(w.c), 0);
    /* The client still works (a cancelled transfer's connection was closed). */
    answer a;
    get(&w, "/ok", 0, &a);
    assert_int_equal(a.status, 200);
    world_fini(&w);
}

/* A proxy in the environment is not used: the address check must see the
 * receiver's address, not a proxy's. */
static void test_no_proxy(void **state)
{
    (void)state;
    setenv("http_proxy", "http://127.0.0.1:1", 1);
    setenv("HTTPS_PROXY", "http://127.0.0.1:1", 1);
    setenv("ALL_PROXY", "http://127.0.0.1:1", 1);
    world w;
    world_init(&w, NULL);
    answer a;
    get(&w, "/ok", 0, &a);
    unsetenv("http_proxy");
    unsetenv("HTTPS_PROXY");
    unsetenv("ALL_PROXY");
    assert_int_equal(a.status, 200);
    assert_int_equal(w.s.accepted, 1);
    world_fini(&w);
}

static void test_idle_close(void **state)
{
    (void)state;
    world w;
    world_init(&w, NULL);
    world_fini(&w);
    /* And after requests, with connections in curl's cache. */
    world_init(&w, NULL);
    answer a;
    get(&w, "/ok", 0, &a);
    assert_int_equal(w.s.open, 1);
    world_fini(&w);
}

/* ---- tests: reuse ------------------------------------------------------------- */

typedef struct chain {
    world *w;
    cy_hc_req r;
    int left, done, ok;
    int inflight, max_inflight;
    uint64_t t0, t1;
} chain;

static void on_chain(void *arg, const cy_hc_resp *resp)
{
    chain *ch = arg;
    ch->done++;
    ch->inflight--;
    if (resp->status >= 200 && resp->status < 300) ch->ok++;
    if (ch->left > 0) {
        ch->left--;
        /* Sent from inside a callback. */
        assert_int_equal(cy_hc_send(ch->w->c, &ch->r, on_chain, ch, NULL), 0);
        ch->inflight++;
    }
    if (ch->left == 0 && ch->inflight == 0) ch->t1 = uv_hrtime();
}

static bool chain_done(world *w, void *arg)
{
    (void)w;
    chain *ch = arg;
    return ch->left == 0 && ch->inflight == 0;
}

/* n requests, `width` at a time, each answer sending the next. */
static void run_chain(world *w, chain *ch, const char *path, int n, int width, uint64_t ms)
{
    static char url[128];
    url_of(w, path, url, sizeof(url));
    memset(ch, 0, sizeof(*ch));
    ch->w = w;
    ch->r = (cy_hc_req){.url = url};
    ch->left = n;
    ch->t0 = uv_hrtime();
    for (int i = 0; i < width && ch->left > 0; i++) {
        ch->left--;
        assert_int_equal(cy_hc_send(w->c, &ch->r, on_chain, ch, NULL), 0);
        ch->inflight++;
    }
    run_until(w, chain_done, ch, ms);
    assert_int_equal(ch->done, n);
}

static void test_keepalive_reuse(void **state)
{
    (void)state;
    world w;
    world_init(&w, NULL);
    chain ch;
    run_chain(&w, &ch, "/204", 200, 1, 20000);
    assert_int_equal(ch.ok, 200);
    assert_int_equal(w.s.requests, 200);
    assert_int_equal(w.s.accepted, 1);
    /* A server that closes: a new connection each time, all answered. */
    run_chain(&w, &ch, "/close", 20, 1, 20000);
    assert_int_equal(ch.ok, 20);
    assert_int_equal(w.s.accepted, 20); /* the first went on the kept connection */
    world_fini(&w);
}

static void test_max_host_connections(void **state)
{
    (void)state;
    cy_hc_config cfg = {.max_host_connections = 2};
    world w;
    world_init(&w, &cfg);
    chain ch;
    run_chain(&w, &ch, "/ok", 100, 20, 20000);
    assert_int_equal(ch.ok, 100);
    assert_true(w.s.accepted >= 1);
    assert_true(w.s.accepted <= 2);
    world_fini(&w);
}

static void test_rate(void **state)
{
    (void)state;
    world w;
    world_init(&w, NULL);
    chain ch;
    int n = 20000, width = 32;
    run_chain(&w, &ch, "/204", n, width, 60000);
    assert_int_equal(ch.ok, n);
    assert_true(w.s.accepted <= width);
    double s = (double)(ch.t1 - ch.t0) / 1e9;
    printf("http client: %d requests, %d at a time, %d connections: %.0f requests/s "
           "(sink on the same loop)\n",
           n, width, w.s.accepted, n / s);
    world_fini(&w);
}

/* ---- tests: allocation failure --------------------------------------------- */

static void test_alloc_failure(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    cy_hc *c = NULL;
    int ok = 0;
    for (long i = 0; i < 20 && !ok; i++) {
        cy_alloc_fail_after(i);
        int rc = cy_hc_new(&loop, NULL, &c);
        cy_alloc_fail_after(-1);
        if (rc == 0) {
            ok = 1;
        } else {
            assert_int_equal(rc, CY_ENOMEM);
            assert_null(c);
        }
    }
    assert_true(ok);
    /* Sends that fail for memory: no callback, nothing in flight. */
    answer a = {0};
    const char *hs[] = {"X-A: 1", NULL};
    cy_hc_req r = {
        .url = "http://127.0.0.1:1/", .headers = hs, .body = (const uint8_t *)"b", .body_len = 1};
    int sent = 0;
    for (long i = 0; i < 20 && !sent; i++) {
        cy_alloc_fail_after(i);
        int rc = cy_hc_send(c, &r, on_answer, &a, NULL);
        cy_alloc_fail_after(-1);
        if (rc == 0)
            sent = 1;
        else
            assert_int_equal(rc, CY_ENOMEM);
        assert_int_equal(cy_hc_inflight(c), (size_t)sent);
    }
    assert_true(sent);
    cy_hc_close(c, NULL, NULL);
    assert_int_equal(a.calls, 1);
    assert_string_equal(a.error, "cancelled");
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
    /* Bad arguments. */
    assert_int_equal(cy_hc_new(NULL, NULL, &c), CY_EINVAL);
    cy_hc_config bad = {.user_agent = "x\r\nEvil: 1"};
    assert_int_equal(cy_hc_new(&loop, &bad, &c), CY_EINVAL);
    cy_hc_close(NULL, NULL, NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_200_and_204),
        cmocka_unit_test(test_503_retry_after),
        cmocka_unit_test(test_body_capped),
        cmocka_unit_test(test_request_copied),
        cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_sync_failure_deferred),
        cmocka_unit_test(test_connection_refused),
        cmocka_unit_test(test_timeout),
        cmocka_unit_test(test_address_refused),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_close_in_flight),
        cmocka_unit_test(test_close_from_callback),
        cmocka_unit_test(test_idle_close),
        cmocka_unit_test(test_keepalive_reuse),
        cmocka_unit_test(test_max_host_connections),
        cmocka_unit_test(test_rate),
        cmocka_unit_test(test_alloc_failure),
        cmocka_unit_test(test_cancel_from_callback),
        cmocka_unit_test(test_no_proxy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
