/* Unit tests of src/http: a real server on 127.0.0.1 and a real loop.
 *
 * The main thread runs the loop with the server; each test's client runs on
 * a second thread with plain blocking sockets (every read has a timeout),
 * and tells the loop it is done through a uv_async. Work that must happen on
 * the loop thread (writing to a stream, answering a held request, stopping
 * the server) is asked for with loop_call, which runs a function there and
 * waits for it. A guard timer ends any test that outlives its deadline, so
 * nothing here can hang. The client thread never asserts (cmocka's jumps are
 * not thread-safe): it records the first failed CHECK, and the main thread
 * asserts that nothing failed once the client is joined. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "http/http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define GUARD_MS 8000
#define RCV_TIMEOUT_MS 3000

/* ---- harness ---------------------------------------------------------------- */

typedef struct srv srv;
typedef void (*loop_fn)(srv *s);

struct srv {
    uv_loop_t loop;
    int lfd;
    int port;
    cy_http *h;
    cy_http_limits lim;
    cy_http_check check; /* NULL: none */
    uv_async_t done;  /* the client finished */
    uv_async_t call;  /* loop_call */
    uv_timer_t guard; /* the test's deadline */
    uv_timer_t delay; /* /delay answers from here */
    cy_http_req *delayed;
    bool timed_out;

    pthread_mutex_t mu;
    pthread_cond_t cv;
    loop_fn call_fn;
    bool call_done;
    long call_arg;
    long call_ret;

    /* recorded on the loop thread */
    atomic_int handled;
    atomic_int closed;
    atomic_int closed_pending, closed_stream;
    atomic_int upgraded;       /* upgrade callbacks with a socket */
    atomic_int upgrade_failed; /* upgrade callbacks without one */
    int held_fd;               /* /upgrade-hold: the socket the application keeps */
    cy_http_upgraded *held;
    atomic_int checked;       /* the check ran */
    atomic_int check_saw_body; /* bytes of body the check could see (must stay 0) */
    int64_t check_started_us;  /* cy_http_started_us as the check saw it */
    cy_http_req *pending;
    cy_http_req *stream;
    char echo[1024];
    int rc_bad_status, rc_second, rc_bad_header;

    /* the client's verdict */
    int fail_line;
    char fail_what[160];
};

static srv *S;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            if (S->fail_line == 0) {                                                               \
                S->fail_line = __LINE__;                                                           \
                snprintf(S->fail_what, sizeof(S->fail_what), "%s", #cond);                         \
            }                                                                                      \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int cpu_ms(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (int)(ru.ru_utime.tv_sec * 1000 + ru.ru_utime.tv_usec / 1000 +
                 ru.ru_stime.tv_sec * 1000 + ru.ru_stime.tv_usec / 1000);
}

/* ---- the application under test (loop thread) ---------------------------------- */

static void on_req_closed(void *arg, cy_http_req *req)
{
    srv *s = arg;
    atomic_fetch_add(&s->closed, 1);
    if (req == s->pending) {
        atomic_fetch_add(&s->closed_pending, 1);
        s->pending = NULL;
    }
    if (req == s->stream) {
        atomic_fetch_add(&s->closed_stream, 1);
        s->stream = NULL;
    }
}

static void on_delay(uv_timer_t *t)
{
    srv *s = t->data;
    if (s->delayed) cy_http_reply(s->delayed, 200, "text/plain", "late", 4, NULL);
    s->delayed = NULL;
}

static void on_delayed_closed(void *arg, cy_http_req *req)
{
    srv *s = arg;
    (void)req;
    s->delayed = NULL;
    atomic_fetch_add(&s->closed, 1);
}

/* The upgraded socket: answer what the client sent past its request (the
 * extra bytes) with those bytes and "!", then close it. */
static void on_upgraded_cb(void *arg, int fd, const uint8_t *extra, size_t len, cy_http_upgraded *u)
{
    srv *s = arg;
    if (fd < 0) {
        atomic_fetch_add(&s->upgrade_failed, 1);
        return;
    }
    atomic_fetch_add(&s->upgraded, 1);
    if (s->held_fd == -2) { /* /upgrade-hold: kept open */
        s->held_fd = fd;
        s->held = u;
        return;
    }
    char out[128];
    int n = snprintf(out, sizeof(out), "[%.*s]!", (int)(len < 64 ? len : 64), (const char *)extra);
    if (write(fd, out, (size_t)n) != n) atomic_fetch_add(&s->upgrade_failed, 100);
    close(fd);
    cy_http_upgraded_close(u);
}

static void handler(void *ctx, cy_http_req *req)
{
    srv *s = ctx;
    atomic_fetch_add(&s->handled, 1);
    const char *path = cy_http_path(req);
    if (strcmp(path, "/sync") == 0) {
        static const char *const hdrs[] = {"Retry-After", "2", NULL};
        cy_http_reply(req, 201, NULL, "{\"ok\":true}", 11, hdrs);
    } else if (strcmp(path, "/echo x/y") == 0) {
        size_t blen = 0;
        const uint8_t *body = cy_http_body(req, &blen);
        const char *a = cy_http_query(req, "a");
        const char *missing = cy_http_query(req, "nope");
        const char *hdr = cy_http_header(req, "x-THING");
        const char *nohdr = cy_http_header(req, "X-Absent");
        char peer[80];
        snprintf(peer, sizeof(peer), "127.0.0.1:");
        int peer_ok = strncmp(cy_http_peer(req), peer, strlen(peer)) == 0;
        int n =
            snprintf(s->echo, sizeof(s->echo), "%s|%s|%s|%s|%s|%s|%.*s|%d", cy_http_method(req),
                     path, a ? a : "(null)", missing ? missing : "(null)", hdr ? hdr : "(null)",
                     nohdr ? nohdr : "(null)", (int)blen, body ? (const char *)body : "", peer_ok);
        cy_http_reply(req, 200, "text/plain", s->echo, (size_t)n, NULL);
    } else if (strcmp(path, "/len") == 0) {
        size_t blen = 0;
        cy_http_body(req, &blen);
        char out[32];
        int n = snprintf(out, sizeof(out), "%zu", blen);
        cy_http_reply(req, 200, "text/plain", out, (size_t)n, NULL);
    } else if (strcmp(path, "/delay") == 0) {
        s->delayed = req;
        cy_http_on_close(req, on_delayed_closed, s);
        uv_timer_start(&s->delay, on_delay, 50, 0);
    } else if (strcmp(path, "/pending") == 0) {
        s->pending = req;
        cy_http_on_close(req, on_req_closed, s);
    } else if (strcmp(path, "/stream") == 0) {
        static const char *const hdrs[] = {"X-Accel-Buffering", "no", NULL};
        s->stream = req;
        cy_http_on_close(req, on_req_closed, s);
        int rc = cy_http_stream_begin(req, NULL, hdrs);
        if (rc != 0) {
            s->stream = NULL;
            cy_http_on_close(req, NULL, NULL);
            cy_http_reply(req, rc == CY_EBUSY ? 503 : 500, NULL, "{\"error\":\"no_stream\"}", 21,
                          NULL);
        }
    } else if (strcmp(path, "/release") == 0) {
        /* Answer the held request from inside this one's handler. */
        int rc = s->pending ? cy_http_reply(s->pending, 200, "text/plain", "freed", 5, NULL) : -1;
        s->pending = NULL;
        char out[16];
        int n = snprintf(out, sizeof(out), "%d", rc);
        cy_http_reply(req, 200, "text/plain", out, (size_t)n, NULL);
    } else if (strcmp(path, "/twice") == 0) {
        static const char *const bad[] = {"Bad\nName", "x", NULL};
        s->rc_bad_status = cy_http_reply(req, 99, NULL, "", 0, NULL);
        s->rc_bad_header = cy_http_reply(req, 200, NULL, "", 0, bad);
        cy_http_reply(req, 200, NULL, "{}", 2, NULL);
        s->rc_second = cy_http_reply(req, 200, NULL, "{}", 2, NULL);
    } else if (strcmp(path, "/tag") == 0) {
        size_t blen = 0;
        cy_http_body(req, &blen);
        char out[32];
        int n = snprintf(out, sizeof(out), "%d|%zu", cy_http_tag(req), blen);
        cy_http_reply(req, 200, "text/plain", out, (size_t)n, NULL);
    } else if (strcmp(path, "/started") == 0) {
        /* When the head was whole, as the check and the handler see it,
         * and now (monotonic us). */
        char out[96];
        int n = snprintf(out, sizeof(out), "%lld|%lld|%lld", (long long)s->check_started_us,
                         (long long)cy_http_started_us(req), (long long)cy_mono_us());
        cy_http_reply(req, 200, "text/plain", out, (size_t)n, NULL);
    } else if (strcmp(path, "/nocontent") == 0) {
        cy_http_reply(req, 204, NULL, "", 0, NULL);
        /* Answered: no more headers. */
        if (cy_http_add_header(req, "X-Late", "x") != CY_EINVAL) s->rc_second = 1000;
    } else if (strcmp(path, "/upgrade-hold") == 0) {
        static const char *const hdrs[] = {"Upgrade", "echo", NULL};
        s->held_fd = -2;
        if (cy_http_upgrade(req, hdrs, on_upgraded_cb, s) != 0)
            cy_http_reply(req, 500, NULL, "{}", 2, NULL);
    } else if (strcmp(path, "/upgrade") == 0) {
        static const char *const hdrs[] = {"Upgrade", "echo", NULL};
        if (cy_http_upgrade(req, hdrs, on_upgraded_cb, s) != 0)
            cy_http_reply(req, 500, NULL, "{}", 2, NULL);
    } else if (strcmp(path, "/stopnow") == 0) {
        s->pending = req;
        cy_http_on_close(req, on_req_closed, s);
        cy_http_stop(s->h);
    } else {
        cy_http_reply(req, 404, NULL, "{\"error\":\"not_found\"}", 21, NULL);
    }
}

/* The pre-body check under test: "X-Key: good" passes (and leaves a tag
 * for the handler), anything else is refused with 401. */
static void check_key(void *ctx, cy_http_req *req)
{
    srv *s = ctx;
    atomic_fetch_add(&s->checked, 1);
    s->check_started_us = cy_http_started_us(req);
    size_t blen = 0;
    cy_http_body(req, &blen);
    atomic_fetch_add(&s->check_saw_body, (int)blen);
    /* No streaming from a check. */
    if (cy_http_stream_begin(req, NULL, NULL) != CY_EINVAL) atomic_fetch_add(&s->check_saw_body, 1000);
    const char *k = cy_http_header(req, "X-Key");
    if (k && strcmp(k, "good") == 0) {
        cy_http_set_tag(req, 42);
        return;
    }
    static const char *const www[] = {"WWW-Authenticate", "Bearer", NULL};
    cy_http_reply(req, 401, NULL, "{\"error\":\"unauthorized\"}", 24, www);
}

/* A check that adds headers every answer of the request carries (as the
 * API's CORS headers are), then works as check_key; it also tries what
 * cy_http_add_header must refuse. */
static void check_extra(void *ctx, cy_http_req *req)
{
    srv *s = ctx;
    int bad = 0;
    bad += cy_http_add_header(req, "Bad\nName", "x") != CY_EINVAL;
    bad += cy_http_add_header(req, "X-Ok", "bad\r\nvalue") != CY_EINVAL;
    bad += cy_http_add_header(req, "", "x") != CY_EINVAL;
    bad += cy_http_add_header(NULL, "X", "x") != CY_EINVAL;
    bad += cy_http_add_header(req, "X-Extra", "one") != 0;
    bad += cy_http_add_header(req, "Vary", "Origin") != 0;
    int n = 2;
    while (cy_http_add_header(req, "X-Fill", "f") == 0)
        n++;
    bad += n != CY_HTTP_EXTRA_HEADERS;
    if (bad) atomic_fetch_add(&s->check_saw_body, 1000 * bad);
    check_key(ctx, req);
}

/* ---- loop plumbing ------------------------------------------------------------ */

static void on_done(uv_async_t *a)
{
    uv_stop(a->loop);
}

static void on_guard(uv_timer_t *t)
{
    srv *s = t->data;
    s->timed_out = true;
    uv_stop(t->loop);
}

static void on_call(uv_async_t *a)
{
    srv *s = a->data;
    pthread_mutex_lock(&s->mu);
    loop_fn fn = s->call_fn;
    pthread_mutex_unlock(&s->mu);
    if (fn == NULL) return;
    fn(s);
    pthread_mutex_lock(&s->mu);
    s->call_fn = NULL;
    s->call_done = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

/* Client thread: run fn(s) on the loop thread and wait for it; returns call_ret. */
static long loop_call(srv *s, loop_fn fn, long arg)
{
    pthread_mutex_lock(&s->mu);
    s->call_fn = fn;
    s->call_arg = arg;
    s->call_done = false;
    uv_async_send(&s->call);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 3;
    while (!s->call_done)
        if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == ETIMEDOUT) break;
    long ret = s->call_done ? s->call_ret : -99999;
    pthread_mutex_unlock(&s->mu);
    return ret;
}

static int make_listener(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 64) != 0) return -1;
    socklen_t al = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &al);
    *port = ntohs(a.sin_port);
    return fd;
}

static void srv_start(srv *s, const cy_http_limits *lim)
{
    assert_int_equal(uv_loop_init(&s->loop), 0);
    s->lfd = make_listener(&s->port);
    assert_true(s->lfd >= 0);
    fcntl(s->lfd, F_SETFL, fcntl(s->lfd, F_GETFL) | O_NONBLOCK);
    if (lim) s->lim = *lim;
    assert_int_equal(cy_http_new(&s->loop, s->lfd, lim, handler, s->check, s, &s->h), 0);
    uv_async_init(&s->loop, &s->done, on_done);
    uv_async_init(&s->loop, &s->call, on_call);
    s->call.data = s;
    uv_timer_init(&s->loop, &s->guard);
    s->guard.data = s;
    uv_timer_init(&s->loop, &s->delay);
    s->delay.data = s;
}

static void *client_main(void *arg);

typedef void (*client_fn)(srv *s);
static client_fn current_client;

static void *client_main(void *arg)
{
    srv *s = arg;
    current_client(s);
    uv_async_send(&s->done);
    return NULL;
}

/* Run the loop while fn runs on a client thread; then join it. */
static void run_client(srv *s, client_fn fn)
{
    pthread_t th;
    current_client = fn;
    uv_timer_start(&s->guard, on_guard, GUARD_MS, 0);
    assert_int_equal(pthread_create(&th, NULL, client_main, s), 0);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_timer_stop(&s->guard);
    pthread_join(th, NULL);
    if (s->fail_line) fail_msg("client check failed at line %d: %s", s->fail_line, s->fail_what);
    assert_false(s->timed_out);
}

static void close_cb(uv_handle_t *h)
{
    (void)h;
}

/* Stop, let the loop run once (the contract), free, and check the loop is empty. */
static void srv_finish(srv *s)
{
    cy_http_stop(s->h);
    uv_run(&s->loop, UV_RUN_NOWAIT);
    cy_http_free(s->h);
    s->h = NULL;
    uv_close((uv_handle_t *)&s->done, close_cb);
    uv_close((uv_handle_t *)&s->call, close_cb);
    uv_close((uv_handle_t *)&s->guard, close_cb);
    uv_close((uv_handle_t *)&s->delay, close_cb);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&s->loop), 0);
    close(s->lfd);
}

static int setup(void **state)
{
    S = calloc(1, sizeof(*S));
    pthread_mutex_init(&S->mu, NULL);
    pthread_cond_init(&S->cv, NULL);
    *state = S;
    return 0;
}

static int teardown(void **state)
{
    srv *s = *state;
    if (s->h) srv_finish(s);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s);
    S = NULL;
    return 0;
}

/* ---- a small blocking HTTP client ------------------------------------------------ */

typedef struct cl {
    int fd;
    size_t len;
    char buf[1 << 17];
} cl;

typedef struct resp {
    int status;
    char head[8192];
    char body[1 << 16];
    size_t body_len;
} resp;

static cl *cl_open(srv *s)
{
    cl *c = calloc(1, sizeof(*c));
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)s->port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct timeval tv = {RCV_TIMEOUT_MS / 1000, (RCV_TIMEOUT_MS % 1000) * 1000};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(c->fd);
        free(c);
        return NULL;
    }
    return c;
}

static void cl_close(cl *c)
{
    if (c == NULL) return;
    close(c->fd);
    free(c);
}

static int cl_send(cl *c, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        if (n <= 0) return -1;
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static int cl_sends(cl *c, const char *s)
{
    return cl_send(c, s, strlen(s));
}

/* Read more: >0 bytes, 0 EOF, -1 error or timeout. */
static int cl_fill(cl *c)
{
    if (c->len == sizeof(c->buf)) return -1;
    ssize_t n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - c->len, 0);
    if (n > 0) c->len += (size_t)n;
    return n < 0 ? -1 : (int)n;
}

static void cl_consume(cl *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

static char *find(cl *c, const char *pat)
{
    size_t pl = strlen(pat);
    for (size_t i = 0; i + pl <= c->len; i++)
        if (memcmp(c->buf + i, pat, pl) == 0) return c->buf + i;
    return NULL;
}

/* Read a response head; 0 or -1. */
static int cl_head(cl *c, resp *r)
{
    char *e;
    while ((e = find(c, "\r\n\r\n")) == NULL)
        if (cl_fill(c) <= 0) return -1;
    size_t hl = (size_t)(e - c->buf) + 4;
    if (hl >= sizeof(r->head)) return -1;
    memcpy(r->head, c->buf, hl);
    r->head[hl] = '\0';
    cl_consume(c, hl);
    r->body_len = 0;
    if (sscanf(r->head, "HTTP/1.%*d %d", &r->status) != 1) return -1;
    return 0;
}

/* The value of header name in r's head (copied into out), or NULL. */
static const char *hdr(const resp *r, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    for (const char *p = strstr(r->head, "\r\n"); p && p[2] != '\r'; p = strstr(p + 2, "\r\n")) {
        const char *line = p + 2;
        if (strncasecmp(line, name, nl) == 0 && line[nl] == ':') {
            const char *v = line + nl + 1;
            while (*v == ' ')
                v++;
            const char *end = strstr(v, "\r\n");
            size_t vl = (size_t)(end - v);
            if (vl >= cap) vl = cap - 1;
            memcpy(out, v, vl);
            out[vl] = '\0';
            return out;
        }
    }
    return NULL;
}

/* One chunk of a chunked body into out; *n = 0 for the last chunk. 0 or -1. */
static int cl_chunk(cl *c, char *out, size_t cap, size_t *n)
{
    char *e;
    while ((e = find(c, "\r\n")) == NULL)
        if (cl_fill(c) <= 0) return -1;
    unsigned long sz = strtoul(c->buf, NULL, 16);
    size_t hl = (size_t)(e - c->buf) + 2;
    while (c->len < hl + sz + 2)
        if (cl_fill(c) <= 0) return -1;
    if (sz > cap) return -1;
    memcpy(out, c->buf + hl, sz);
    cl_consume(c, hl + sz + 2);
    *n = sz;
    return 0;
}

/* A whole response (no body for HEAD). 0 or -1. */
static int cl_response(cl *c, resp *r, bool head_req)
{
    if (cl_head(c, r) != 0) return -1;
    char v[64];
    if (head_req || r->status == 204 || r->status == 304) return 0;
    if (hdr(r, "Content-Length", v, sizeof(v))) {
        size_t n = strtoul(v, NULL, 10);
        if (n >= sizeof(r->body)) return -1;
        while (c->len < n)
            if (cl_fill(c) <= 0) return -1;
        memcpy(r->body, c->buf, n);
        r->body[n] = '\0';
        r->body_len = n;
        cl_consume(c, n);
        return 0;
    }
    if (hdr(r, "Transfer-Encoding", v, sizeof(v)) && strcasecmp(v, "chunked") == 0) {
        size_t n;
        do {
            if (cl_chunk(c, r->body + r->body_len, sizeof(r->body) - 1 - r->body_len, &n) != 0)
                return -1;
            r->body_len += n;
        } while (n > 0);
        r->body[r->body_len] = '\0';
        return 0;
    }
    int k;
    while ((k = cl_fill(c)) > 0) {
    }
    if (k < 0 || c->len >= sizeof(r->body)) return -1;
    memcpy(r->body, c->buf, c->len);
    r->body_len = c->len;
    r->body[c->len] = '\0';
    c->len = 0;
    return 0;
}

/* The server closed the connection: EOF or reset within the read timeout. */
static bool cl_sees_close(cl *c)
{
    char tmp[4096];
    for (;;) {
        ssize_t n = recv(c->fd, tmp, sizeof(tmp), 0);
        if (n == 0) return true;
        if (n < 0) return errno == ECONNRESET;
    }
}

static int64_t trickle_until_cut(cl *c, const char *byte);

static bool wait_atomic(atomic_int *v, int want, int ms)
{
    int64_t end = now_ms() + ms;
    while (atomic_load(v) < want) {
        if (now_ms() > end) return false;
        sleep_ms(5);
    }
    return atomic_load(v) == want;
}

/* ---- loop-thread helpers (for loop_call) ------------------------------------------- */

static void lf_counts(srv *s)
{
    s->call_ret = (long)cy_http_connections(s->h) * 1000000 + (long)cy_http_requests(s->h);
}

static void lf_stream_write(srv *s)
{
    char buf[64];
    int n = snprintf(buf, sizeof(buf), "data: %ld\n\n", s->call_arg);
    s->call_ret = s->stream ? cy_http_stream_write(s->stream, buf, (size_t)n) : -1;
}

static void lf_stream_write_big(srv *s)
{
    /* call_arg bytes of 'x', twice; returns rc1 * 1000 + rc2 (as negative codes), and
     * records the backlog after the first. */
    size_t n = (size_t)s->call_arg;
    char *p = malloc(n);
    memset(p, 'x', n);
    int rc1 = cy_http_stream_write(s->stream, p, n);
    size_t b1 = cy_http_stream_backlog(s->stream);
    int rc2 = cy_http_stream_write(s->stream, p, n);
    free(p);
    s->call_ret = (rc1 == 0 && b1 == n && rc2 == CY_ENOBUFS) ? 1 : 0;
}

static void lf_stream_backlog(srv *s)
{
    s->call_ret = s->stream ? (long)cy_http_stream_backlog(s->stream) : -1;
}

static void lf_stream_end(srv *s)
{
    if (s->stream) cy_http_stream_end(s->stream);
    s->stream = NULL;
}

static void lf_pending_reply(srv *s)
{
    s->call_ret = s->pending ? cy_http_reply(s->pending, 200, "text/plain", "done", 4, NULL) : -1;
    s->pending = NULL;
}

static void lf_streams(srv *s)
{
    s->call_ret = (long)cy_http_streams(s->h) * 1000 + (long)cy_http_stream_limit(s->h);
}

static void lf_stop(srv *s)
{
    cy_http_stop(s->h);
    s->call_ret = atomic_load(&s->closed);
}

/* ---- tests ---------------------------------------------------------------------------- */

static resp R; /* one response at a time, client thread only */

static void c_sync(srv *s)
{
    cl *c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /sync?x=1 HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0);
    char v[64];
    CHECK(R.status == 201);
    CHECK(hdr(&R, "Retry-After", v, sizeof(v)) && strcmp(v, "2") == 0);
    CHECK(hdr(&R, "Content-Type", v, sizeof(v)) && strcmp(v, "application/json") == 0);
    CHECK(strcmp(R.body, "{\"ok\":true}") == 0);
out:
    cl_close(c);
}

static void test_cy_http_reply_sync(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_sync);
    assert_int_equal(atomic_load(&s->handled), 1);
    assert_int_equal(cy_http_requests(s->h), 1);
}

static void c_echo(srv *s)
{
    cl *c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "POST /echo%20x/y?a=b%20c&z HTTP/1.1\r\nHost: t\r\nX-Thing: v1\r\n"
                      "Content-Length: 5\r\n\r\nhello") == 0);
    CHECK(cl_response(c, &R, false) == 0);
    CHECK(R.status == 200);
    CHECK(strcmp(R.body, "POST|/echo x/y|b c|(null)|v1|(null)|hello|1") == 0);
out:
    cl_close(c);
}

static void test_cy_http_request_accessors(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_echo);
}

static void c_delay(srv *s)
{
    cl *c = cl_open(s);
    CHECK(c);
    int64_t t0 = now_ms();
    CHECK(cl_sends(c, "GET /delay HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0);
    CHECK(now_ms() - t0 >= 45);
    CHECK(R.status == 200 && strcmp(R.body, "late") == 0);
    /* The connection is still usable after a delayed answer. */
    CHECK(cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0);
    CHECK(R.status == 201);
out:
    cl_close(c);
}

static void test_cy_http_reply_delayed(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_delay);
    assert_int_equal(atomic_load(&s->closed), 0);
}

static void c_keepalive(srv *s)
{
    cl *c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 201);
    CHECK(cl_sends(c, "GET /len HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200 && strcmp(R.body, "0") == 0);
    CHECK(loop_call(s, lf_counts, 0) == 1 * 1000000 + 2);
    /* Two pipelined requests, the first answered late: answers come in order,
     * and the second request's bytes do not count as the client leaving. */
    CHECK(cl_sends(c,
                   "GET /delay HTTP/1.1\r\nHost: t\r\n\r\nGET /sync HTTP/1.1\r\nHost: t\r\n\r\n") ==
          0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200 && strcmp(R.body, "late") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 201);
    /* HEAD gets the head only, and the connection goes on. */
    CHECK(cl_sends(c, "HEAD /sync HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, true) == 0 && R.status == 201);
    char v[32];
    CHECK(hdr(&R, "Content-Length", v, sizeof(v)) && strcmp(v, "11") == 0);
    /* Connection: close is honoured after the answer. */
    CHECK(cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 201);
    CHECK(cl_sees_close(c));
out:
    cl_close(c);
}

static void test_cy_http_keepalive(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_keepalive);
    assert_int_equal(atomic_load(&s->closed), 0);
    assert_int_equal(cy_http_requests(s->h), 6);
}

static void c_body_content_length(srv *s)
{
    cl *c = cl_open(s);
    CHECK(c);
    /* Refused from the header, before any body is sent. */
    CHECK(cl_sends(c, "POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0);
    CHECK(R.status == 413);
    CHECK(strstr(R.body, "\"error\":\"body_too_large\"") && strstr(R.body, "\"message\":\""));
    CHECK(cl_sees_close(c));
    cl_close(c);
    /* At the limit it passes. */
    c = cl_open(s);
    CHECK(c);
    char req[2048];
    int n =
        snprintf(req, sizeof(req), "POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 1024\r\n\r\n");
    memset(req + n, 'b', 1024);
    CHECK(cl_send(c, req, (size_t)n + 1024) == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200 && strcmp(R.body, "1024") == 0);
    /* Expect: 100-continue: refused without a 100 when too large... */
    CHECK(cl_sends(c, "POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n"
                      "Expect: 100-continue\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 413);
    CHECK(cl_sees_close(c));
    cl_close(c);
    /* ...and invited with one when it fits. */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
                      "Expect: 100-continue\r\n\r\n") == 0);
    CHECK(cl_head(c, &R) == 0 && R.status == 100);
    CHECK(cl_sends(c, "abc") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200 && strcmp(R.body, "3") == 0);
out:
    cl_close(c);
}

static void test_cy_http_body_too_large_content_length(void **state)
{
    srv *s = *state;
    cy_http_limits lim = {.max_body_bytes = 1024};
    srv_start(s, &lim);
    run_client(s, c_body_content_length);
    assert_int_equal(atomic_load(&s->handled), 2);
}

static void c_body_chunked(srv *s)
{
    char v413[32];
    cl *c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "POST /len HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n") == 0);
    char chunk[600];
    int n = snprintf(chunk, sizeof(chunk), "200\r\n");
    memset(chunk + n, 'c', 512);
    memcpy(chunk + n + 512, "\r\n", 2);
    for (int i = 0; i < 4; i++)
        CHECK(cl_send(c, chunk, (size_t)n + 514) == 0);
    CHECK(cl_sends(c, "0\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0);
    CHECK(R.status == 413);
    CHECK(strstr(R.body, "\"error\":\"body_too_large\""));
    CHECK(cl_sees_close(c));
    cl_close(c);
    /* A chunked body under the limit is assembled whole. */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "POST /len HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n") == 0);
    CHECK(cl_send(c, chunk, (size_t)n + 514) == 0);
    CHECK(cl_sends(c, "3\r\nabc\r\n0\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200 && strcmp(R.body, "515") == 0);
    cl_close(c);
    /* Far over it (eight times the limit, and the body goes on): the 413
     * still comes, as soon as the limit is passed, and then the close. */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "POST /len HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n") == 0);
    for (int i = 0; i < 16; i++)
        if (cl_send(c, chunk, (size_t)n + 514) != 0) break;
    CHECK(cl_response(c, &R, false) == 0);
    CHECK(R.status == 413);
    CHECK(strstr(R.body, "\"error\":\"body_too_large\""));
    CHECK(hdr(&R, "Connection", v413, sizeof(v413)) && strcasecmp(v413, "close") == 0);
    /* The rest of the body is read and dropped: no reset loses the answer. */
    cl_sends(c, "0\r\n\r\n");
    CHECK(cl_sees_close(c));
out:
    cl_close(c);
}

static void test_cy_http_body_too_large_chunked(void **state)
{
    srv *s = *state;
    cy_http_limits lim = {.max_body_bytes = 1024};
    srv_start(s, &lim);
    run_client(s, c_body_chunked);
    assert_int_equal(atomic_load(&s->handled), 1);
}

static void c_framing(srv *s)
{
    /* Content-Length and Transfer-Encoding together: which one frames the
     * body is what request smuggling plays on. Refused, connection closed. */
    cl *c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0);
    CHECK(R.status == 400);
    CHECK(strstr(R.body, "\"error\":\"bad_request\""));
    CHECK(cl_sees_close(c));
    cl_close(c);
    /* The other order too. */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "POST /len HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                      "Content-Length: 0\r\n\r\n5\r\nhello\r\n0\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0);
    CHECK(R.status == 400);
    CHECK(cl_sees_close(c));
    cl_close(c);
    /* Two different Content-Lengths. */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                      "Content-Length: 0\r\n\r\nhello") == 0);
    CHECK(cl_response(c, &R, false) == 0);
    CHECK(R.status == 400);
    CHECK(cl_sees_close(c));
    cl_close(c);
    /* A coding other than chunked. */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "POST /len HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n"
                      "\r\n5\r\nhello\r\n0\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0);
    CHECK(R.status == 400 || R.status == 501);
    CHECK(cl_sees_close(c));
    cl_close(c);
    /* Either alone is fine. */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "POST /len HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "5\r\nhello\r\n0\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200 && strcmp(R.body, "5") == 0);
    CHECK(cl_sends(c, "POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200 && strcmp(R.body, "5") == 0);
out:
    cl_close(c);
}

static void test_cy_http_content_length_and_chunked(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_framing);
    assert_int_equal(atomic_load(&s->handled), 2);
}

static void c_control_chars(srv *s)
{
    /* %00 would cut the path short ("/sync%00/x" read as "/sync"); any
     * control character decoded from the path or query is refused. */
    static const char *const bad[] = {
        "/sync%00/x", "/sync%00", "/echo%20x/y%0a", "/sync%1F", "/sync%7f", "/sync?a=%00",
        "/sync?a=b%0d%0aX-Injected:%201", "/sync?%00=1",
    };
    cl *c = NULL;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        c = cl_open(s);
        CHECK(c);
        char req[256];
        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: t\r\n\r\n", bad[i]);
        CHECK(cl_sends(c, req) == 0);
        CHECK(cl_response(c, &R, false) == 0);
        if (R.status != 400) {
            snprintf(S->fail_what, sizeof(S->fail_what), "%s answered %d", bad[i], R.status);
            S->fail_line = __LINE__;
            goto out;
        }
        CHECK(strstr(R.body, "\"error\":\"bad_request\""));
        CHECK(cl_sees_close(c));
        cl_close(c);
        c = NULL;
    }
    /* Printable escapes still decode, and the connection is usable. */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /sync%3F?a=%20 HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 404);
    CHECK(cl_sends(c, "GET /%73ync?x=%2541 HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 201);
out:
    cl_close(c);
}

static void test_cy_http_control_chars_in_target(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_control_chars);
    assert_int_equal(atomic_load(&s->handled), 2);
}

static void c_check(srv *s)
{
    char v[64];
    /* No key: 401 as soon as the headers are in, the body never read
     * (none is sent: the answer must not wait for it), then the close. */
    cl *c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 60000\r\n\r\nxx") == 0);
    CHECK(cl_response(c, &R, false) == 0);
    CHECK(R.status == 401);
    CHECK(strstr(R.body, "\"error\":\"unauthorized\""));
    CHECK(hdr(&R, "WWW-Authenticate", v, sizeof(v)) && strcmp(v, "Bearer") == 0);
    CHECK(hdr(&R, "Connection", v, sizeof(v)) && strcasecmp(v, "close") == 0);
    CHECK(cl_sees_close(c));
    cl_close(c);
    /* Chunked, the same. */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "POST /len HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 401);
    CHECK(cl_sees_close(c));
    cl_close(c);
    /* With the key: the body is read, the handler runs and sees the tag;
     * the check could not see the body even though it came with the head. */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "POST /tag HTTP/1.1\r\nHost: t\r\nX-Key: good\r\nContent-Length: 5\r\n\r\n"
                      "hello") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200 && strcmp(R.body, "42|5") == 0);
    /* Once per request on a kept-alive connection; the tag starts at 0. */
    CHECK(cl_sends(c, "GET /tag HTTP/1.1\r\nHost: t\r\nX-Key: good\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200 && strcmp(R.body, "42|0") == 0);
    CHECK(cl_sends(c, "GET /tag HTTP/1.1\r\nHost: t\r\nX-Key: bad\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 401);
    CHECK(cl_sees_close(c));
out:
    cl_close(c);
}

/* A request's start is when its head was whole: before the check, before
 * its body, one value for both; the body's arrival counts in what follows. */
static void c_started(srv *s)
{
    cl *c = cl_open(s);
    CHECK(c);
    int64_t t0 = cy_mono_us();
    CHECK(cl_sends(c, "POST /started HTTP/1.1\r\nHost: t\r\nX-Key: good\r\n"
                      "Content-Length: 4\r\n\r\n") == 0);
    sleep_ms(200);
    int64_t t1 = cy_mono_us();
    CHECK(cl_sends(c, "body") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200);
    long long in_check = 0, started = 0, handled = 0;
    CHECK(sscanf(R.body, "%lld|%lld|%lld", &in_check, &started, &handled) == 3);
    CHECK(in_check == started);
    CHECK(started >= t0 && started < t1);
    CHECK(handled - started >= 190000);
    /* The next request on the connection has its own start. */
    int64_t t2 = cy_mono_us();
    CHECK(cl_sends(c, "GET /started HTTP/1.1\r\nHost: t\r\nX-Key: good\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200);
    CHECK(sscanf(R.body, "%lld|%lld|%lld", &in_check, &started, &handled) == 3);
    CHECK(in_check == started && started >= t2 && handled >= started);
out:
    cl_close(c);
}

static void test_cy_http_started_us(void **state)
{
    srv *s = *state;
    s->check = check_key;
    srv_start(s, NULL);
    run_client(s, c_started);
    assert_int_equal(atomic_load(&s->handled), 2);
}

static void c_extra_headers(srv *s)
{
    char v[64];
    cl *c = cl_open(s);
    CHECK(c);
    /* A reply, a 204 (no body, no Content-Type), a stream's head: each
     * carries the request's own headers, once. */
    CHECK(cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\nX-Key: good\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 201);
    CHECK(hdr(&R, "X-Extra", v, sizeof(v)) && strcmp(v, "one") == 0);
    CHECK(hdr(&R, "Vary", v, sizeof(v)) && strcmp(v, "Origin") == 0);
    CHECK(hdr(&R, "Retry-After", v, sizeof(v)) && strcmp(v, "2") == 0);
    CHECK(strstr(R.head, "X-Extra") && !strstr(strstr(R.head, "X-Extra") + 1, "X-Extra"));
    CHECK(cl_sends(c, "GET /nocontent HTTP/1.1\r\nHost: t\r\nX-Key: good\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 204);
    CHECK(hdr(&R, "X-Extra", v, sizeof(v)));
    CHECK(!hdr(&R, "Content-Type", v, sizeof(v)));
    CHECK(s->rc_second == 0);
    CHECK(cl_sends(c, "GET /stream HTTP/1.1\r\nHost: t\r\nX-Key: good\r\n\r\n") == 0);
    CHECK(cl_head(c, &R) == 0 && R.status == 200);
    CHECK(hdr(&R, "X-Extra", v, sizeof(v)) && strcmp(v, "one") == 0);
    CHECK(hdr(&R, "X-Accel-Buffering", v, sizeof(v)));
    cl_close(c);
    /* A check's refusal too. */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 401);
    CHECK(hdr(&R, "X-Extra", v, sizeof(v)) && strcmp(v, "one") == 0);
    CHECK(hdr(&R, "WWW-Authenticate", v, sizeof(v)));
out:
    cl_close(c);
}

static void test_cy_http_extra_headers(void **state)
{
    srv *s = *state;
    s->check = check_extra;
    srv_start(s, NULL);
    run_client(s, c_extra_headers);
    assert_int_equal(atomic_load(&s->check_saw_body), 0);
}

static void test_cy_http_check_before_body(void **state)
{
    srv *s = *state;
    s->check = check_key;
    srv_start(s, NULL);
    run_client(s, c_check);
    assert_int_equal(atomic_load(&s->checked), 5);
    assert_int_equal(atomic_load(&s->check_saw_body), 0);
    assert_int_equal(atomic_load(&s->handled), 2);
}

/* Send s one byte every 100 ms until the server closes or answers; the ms
 * that took, or -1 if it did not happen within 4 s. */
static int64_t trickle_until_cut(cl *c, const char *byte)
{
    int64_t t0 = now_ms();
    for (int i = 0; i < 40; i++) {
        sleep_ms(100);
        if (cl_sends(c, byte) != 0) return now_ms() - t0;
        char tmp[16];
        ssize_t k = recv(c->fd, tmp, sizeof(tmp), MSG_PEEK | MSG_DONTWAIT);
        if (k >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) return now_ms() - t0;
    }
    return -1;
}

static void c_request_timeout(srv *s)
{
    /* A new connection's first request has the deadline from the accept:
     * one that sends nothing, or trickles its request line, is closed
     * after 1 s (not idle_timeout_s, 30 s). */
    cl *c = cl_open(s);
    CHECK(c);
    int64_t t0 = now_ms();
    CHECK(cl_sees_close(c));
    CHECK(now_ms() - t0 >= 800 && now_ms() - t0 < 2500);
    cl_close(c);
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /") == 0);
    int64_t dt = trickle_until_cut(c, "a");
    CHECK(dt >= 700 && dt < 2500);
    cl_close(c);
    /* A body trickled one byte at a time: each byte resets MHD's idle
     * clock, but the request's total deadline (1 s) cuts it, with a 408. */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\n") == 0);
    dt = trickle_until_cut(c, "x");
    CHECK(dt >= 800 && dt < 2500);
    CHECK(cl_response(c, &R, false) == 0);
    CHECK(R.status == 408);
    CHECK(strstr(R.body, "\"error\":\"request_timeout\""));
    cl_close(c);
    /* Headers trickled: the same clock, from the request's first line. */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n") == 0);
    dt = trickle_until_cut(c, "X");
    CHECK(dt >= 800 && dt < 2500);
    CHECK(cl_sees_close(c));
    cl_close(c);
    /* A request that is slow but within the deadline is served; and on a
     * kept-alive connection each request has its own deadline, counted
     * from its first line (not from the end of the previous one). */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n") == 0);
    for (int i = 0; i < 4; i++) {
        sleep_ms(120);
        CHECK(cl_sends(c, "y") == 0);
    }
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200 && strcmp(R.body, "4") == 0);
    sleep_ms(700);
    CHECK(cl_sends(c, "POST /len HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\n") == 0);
    for (int i = 0; i < 4; i++) {
        sleep_ms(120);
        CHECK(cl_sends(c, "y") == 0);
    }
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200 && strcmp(R.body, "4") == 0);
    /* The deadline ends when the handler has the request: an answer that
     * takes longer than it still arrives. */
    CHECK(cl_sends(c, "GET /pending HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    sleep_ms(1500);
    CHECK(loop_call(s, lf_pending_reply, 0) == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200 && strcmp(R.body, "done") == 0);
out:
    cl_close(c);
}

static void test_cy_http_request_timeout(void **state)
{
    srv *s = *state;
    cy_http_limits lim = {.request_timeout_s = 1, .idle_timeout_s = 30};
    srv_start(s, &lim);
    run_client(s, c_request_timeout);
    assert_int_equal(atomic_load(&s->handled), 3);
}

static void c_stream_limit(srv *s)
{
    /* max_connections 3: one is kept for ordinary requests, two may stream. */
    cl *a = cl_open(s), *b = cl_open(s), *c = cl_open(s);
    CHECK(a && b && c);
    CHECK(loop_call(s, lf_streams, 0) == 0 * 1000 + 2);
    CHECK(cl_sends(a, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_head(a, &R) == 0 && R.status == 200);
    CHECK(cl_sends(b, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_head(b, &R) == 0 && R.status == 200);
    CHECK(loop_call(s, lf_streams, 0) == 2 * 1000 + 2);
    /* A third stream is refused (the handler answers 503)... */
    CHECK(cl_sends(c, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 503);
    /* ...a HEAD is no stream, and ordinary requests go on. */
    CHECK(cl_sends(c, "HEAD /stream HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, true) == 0 && R.status == 200);
    CHECK(cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 201);
    CHECK(loop_call(s, lf_streams, 0) == 2 * 1000 + 2);
    /* A stream that ends frees its place. */
    cl_close(a);
    a = NULL;
    long k = -1;
    for (int i = 0; i < 200 && k != 1 * 1000 + 2; i++) {
        k = loop_call(s, lf_streams, 0);
        if (k != 1 * 1000 + 2) sleep_ms(5);
    }
    CHECK(k == 1 * 1000 + 2);
    CHECK(cl_sends(c, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_head(c, &R) == 0 && R.status == 200);
    CHECK(loop_call(s, lf_streams, 0) == 2 * 1000 + 2);
out:
    cl_close(a);
    cl_close(b);
    cl_close(c);
}

static void test_cy_http_stream_limit(void **state)
{
    srv *s = *state;
    cy_http_limits lim = {.max_connections = 3};
    srv_start(s, &lim);
    run_client(s, c_stream_limit);
    /* The limit's arithmetic at other sizes. */
    cy_http_limits one = {.max_connections = 1}, big = {.max_connections = 1024};
    srv_finish(s);
    srv_start(s, &one);
    assert_int_equal(cy_http_stream_limit(s->h), 0);
    srv_finish(s);
    srv_start(s, &big);
    assert_int_equal(cy_http_stream_limit(s->h), 1024 - 102);
    assert_int_equal(cy_http_streams(s->h), 0);
}

static void c_headers(srv *s)
{
    static char big[128 << 10];
    cl *c = cl_open(s);
    CHECK(c);
    /* Just over the limit: our JSON 431. */
    int n = snprintf(big, sizeof(big), "GET /sync HTTP/1.1\r\nHost: t\r\nX-Big: ");
    memset(big + n, 'h', 1500);
    memcpy(big + n + 1500, "\r\n\r\n", 5);
    CHECK(cl_sends(c, big) == 0);
    CHECK(cl_response(c, &R, false) == 0);
    CHECK(R.status == 431);
    CHECK(strstr(R.body, "\"error\":\"headers_too_large\""));
    cl_close(c);
    /* Far over it: MHD's own answer, still an error status and no hang. */
    c = cl_open(s);
    CHECK(c);
    memset(big + n, 'h', 100000);
    memcpy(big + n + 100000, "\r\n\r\n", 5);
    cl_sends(c, big); /* MHD may close before it has read it all */
    CHECK(cl_head(c, &R) == 0);
    CHECK(R.status == 431 || R.status == 414 || R.status == 413);
out:
    cl_close(c);
}

static void test_cy_http_headers_too_large(void **state)
{
    srv *s = *state;
    cy_http_limits lim = {.max_header_bytes = 1024};
    srv_start(s, &lim);
    run_client(s, c_headers);
    assert_int_equal(atomic_load(&s->handled), 0);
}

static void c_idle(srv *s)
{
    cl *c = cl_open(s);
    CHECK(c);
    int64_t t0 = now_ms();
    CHECK(cl_sees_close(c));
    int64_t dt = now_ms() - t0;
    CHECK(dt >= 900 && dt < 2500);
    cl_close(c);
    /* A client trickling its request line is cut off by the same clock
     * (until the line is in, no request has begun; then request_timeout_s
     * runs, see test_cy_http_request_timeout). */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /") == 0);
    dt = trickle_until_cut(c, "a");
    CHECK(dt >= 800 && dt < 2500);
    CHECK(cl_sees_close(c));
    cl_close(c);
    /* A request that arrives in time is served. */
    c = cl_open(s);
    CHECK(c);
    sleep_ms(500);
    CHECK(cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 201);
out:
    cl_close(c);
}

static void test_cy_http_idle_timeout(void **state)
{
    srv *s = *state;
    cy_http_limits lim = {.idle_timeout_s = 1, .request_timeout_s = 30};
    srv_start(s, &lim);
    run_client(s, c_idle);
}

static void c_maxconn(srv *s)
{
    cl *a = cl_open(s), *b = cl_open(s), *c = NULL;
    CHECK(a && b);
    CHECK(cl_sends(a, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(a, &R, false) == 0 && R.status == 201);
    CHECK(cl_sends(b, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(b, &R, false) == 0 && R.status == 201);
    CHECK(loop_call(s, lf_counts, 0) / 1000000 == 2);
    /* At the limit the server stops accepting: the third connection waits
     * in the kernel's queue (where another shard could take it)... */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    struct timeval tv = {0, 300 * 1000};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    char tmp[16];
    errno = 0;
    CHECK(recv(c->fd, tmp, sizeof(tmp), 0) < 0 && (errno == EAGAIN || errno == EWOULDBLOCK));
    CHECK(loop_call(s, lf_counts, 0) / 1000000 == 2);
    /* ...and is served as soon as another one closes. */
    tv.tv_sec = RCV_TIMEOUT_MS / 1000;
    tv.tv_usec = 0;
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    cl_close(a);
    a = NULL;
    CHECK(cl_response(c, &R, false) == 0 && R.status == 201);
    CHECK(loop_call(s, lf_counts, 0) / 1000000 == 2);
out:
    cl_close(a);
    cl_close(b);
    cl_close(c);
}

static void test_cy_http_max_connections(void **state)
{
    srv *s = *state;
    cy_http_limits lim = {.max_connections = 2};
    srv_start(s, &lim);
    run_client(s, c_maxconn);
}

/* ---- pressure: idle and silent connections make room ------------------------------- */

#define PRESS_MAX 10 /* max_connections in these tests: under pressure from 9 open */

static int cl_get_sync(cl *c)
{
    if (cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n") != 0) return -1;
    if (cl_response(c, &R, false) != 0) return -1;
    return R.status;
}

/* A server of PRESS_MAX connections whose normal timeouts (30 s) are far
 * longer than the test, so what closes a connection is the pressure. */
static void run_pressure(srv *s, client_fn client)
{
    cy_http_limits lim = {.max_connections = PRESS_MAX, .idle_timeout_s = 30,
                          .request_timeout_s = 30};
    srv_start(s, &lim);
    run_client(s, client);
}

static void close_all(cl **k, int n)
{
    for (int i = 0; i < n; i++)
        cl_close(k[i]);
}

static void c_evict_idle(srv *s)
{
    cl *k[PRESS_MAX] = {0}, *n = NULL;
    /* Every place taken by a kept-alive connection whose request is done. */
    for (int i = 0; i < PRESS_MAX; i++) {
        k[i] = cl_open(s);
        CHECK(k[i]);
        CHECK(cl_get_sync(k[i]) == 201);
    }
    /* A new connection is served at once: the oldest idle one made room
     * (before, it waited for idle_timeout_s, 30 s)... */
    n = cl_open(s);
    CHECK(n);
    CHECK(cl_get_sync(n) == 201);
    /* ...the most recently used is still there, the oldest is gone. */
    CHECK(cl_get_sync(k[PRESS_MAX - 1]) == 201);
    CHECK(cl_sees_close(k[0]));
    CHECK(loop_call(s, lf_counts, 0) / 1000000 <= PRESS_MAX);
out:
    close_all(k, PRESS_MAX);
    cl_close(n);
}

static void test_cy_http_evict_idle_under_pressure(void **state)
{
    run_pressure(*state, c_evict_idle);
}

static void c_pressure_idle(srv *s)
{
    cl *k[PRESS_MAX] = {0};
    /* 8 of 10: no pressure; idle connections keep idle_timeout_s. */
    for (int i = 0; i < PRESS_MAX - 2; i++) {
        k[i] = cl_open(s);
        CHECK(k[i]);
        CHECK(cl_get_sync(k[i]) == 201);
    }
    sleep_ms(1300);
    for (int i = 0; i < PRESS_MAX - 2; i++)
        CHECK(cl_get_sync(k[i]) == 201); /* idle 1.3 s, still open */
    /* The ninth: under pressure, the oldest idle connection is closed once
     * it has been idle a second (not 30); that ends the pressure, and the
     * others stay. */
    k[PRESS_MAX - 2] = cl_open(s);
    CHECK(k[PRESS_MAX - 2]);
    CHECK(cl_get_sync(k[PRESS_MAX - 2]) == 201);
    int64_t t0 = now_ms();
    CHECK(cl_sees_close(k[0]));
    CHECK(now_ms() - t0 < 2500);
    CHECK(cl_get_sync(k[PRESS_MAX - 2]) == 201);
    CHECK(cl_get_sync(k[1]) == 201);
out:
    close_all(k, PRESS_MAX);
}

static void test_cy_http_idle_timeout_under_pressure(void **state)
{
    run_pressure(*state, c_pressure_idle);
}

static void c_pressure_silent(srv *s)
{
    cl *k[PRESS_MAX] = {0}, *n = NULL;
    /* One silent socket and no pressure: it keeps its request_timeout_s. */
    k[0] = cl_open(s);
    CHECK(k[0]);
    sleep_ms(2500);
    CHECK(cl_get_sync(k[0]) == 201);
    cl_close(k[0]);
    k[0] = NULL;
    /* Nine sockets that send no whole request head (one trickles it):
     * under pressure each has 2 s from its accept, not 30, until the
     * pressure ends. */
    int64_t t0 = now_ms();
    for (int i = 0; i < PRESS_MAX - 1; i++) {
        k[i] = cl_open(s);
        CHECK(k[i]);
        if (i == 0) CHECK(cl_sends(k[0], "GET /sync HTTP/1.1\r\nX-A: b\r\n") == 0);
    }
    CHECK(cl_sees_close(k[0]));
    CHECK(now_ms() - t0 < 3000);
    /* A new connection is served; it brings the pressure back, and the
     * next silent one goes too. */
    n = cl_open(s);
    CHECK(n);
    CHECK(cl_get_sync(n) == 201);
    CHECK(cl_sees_close(k[1]));
out:
    close_all(k, PRESS_MAX);
    cl_close(n);
}

static void test_cy_http_head_deadline_under_pressure(void **state)
{
    run_pressure(*state, c_pressure_silent);
}

static void c_per_address(srv *s)
{
    cl *a = cl_open(s), *b = cl_open(s), *c = NULL, *d = NULL;
    CHECK(a && b);
    CHECK(cl_get_sync(a) == 201);
    CHECK(cl_get_sync(b) == 201);
    /* A third from the same address is closed at accept, unanswered. */
    c = cl_open(s);
    CHECK(c);
    cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(cl_sees_close(c));
    CHECK(cl_get_sync(a) == 201);
    /* One closes: another may come. */
    cl_close(a);
    a = NULL;
    int st = -1;
    for (int i = 0; i < 100 && st != 201; i++) {
        cl_close(d);
        d = cl_open(s);
        CHECK(d);
        st = cl_get_sync(d);
        if (st != 201) sleep_ms(20);
    }
    CHECK(st == 201);
    CHECK(loop_call(s, lf_counts, 0) / 1000000 == 2);
out:
    cl_close(a);
    cl_close(b);
    cl_close(c);
    cl_close(d);
}

static void test_cy_http_max_per_address(void **state)
{
    srv *s = *state;
    cy_http_limits lim = {.max_per_address = 2};
    srv_start(s, &lim);
    run_client(s, c_per_address);
}

/* The application's admit: called at each accept with the client's
 * address, before anything; false closes the connection unanswered. */
static int admit_calls;
static bool admit_two(void *ctx, const struct sockaddr *sa)
{
    (void)ctx;
    int n = __atomic_add_fetch(&admit_calls, 1, __ATOMIC_SEQ_CST);
    return sa && sa->sa_family == AF_INET && n <= 2;
}

static void c_admit(srv *s)
{
    cl *a = cl_open(s), *b = cl_open(s), *c = NULL;
    CHECK(a && b);
    CHECK(cl_get_sync(a) == 201);
    CHECK(cl_get_sync(b) == 201);
    c = cl_open(s);
    CHECK(c);
    cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(cl_sees_close(c));
    CHECK(__atomic_load_n(&admit_calls, __ATOMIC_SEQ_CST) == 3);
    /* Requests on admitted connections are not accepts. */
    CHECK(cl_get_sync(a) == 201);
    CHECK(__atomic_load_n(&admit_calls, __ATOMIC_SEQ_CST) == 3);
out:
    cl_close(a);
    cl_close(b);
    cl_close(c);
}

static void test_cy_http_admit(void **state)
{
    srv *s = *state;
    admit_calls = 0;
    cy_http_limits lim = {.admit = admit_two};
    srv_start(s, &lim);
    run_client(s, c_admit);
}

static void c_stream(srv *s)
{
    cl *c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    /* The head arrives before any event is written. */
    CHECK(cl_head(c, &R) == 0);
    char v[64];
    CHECK(R.status == 200);
    CHECK(hdr(&R, "Content-Type", v, sizeof(v)) && strcmp(v, "text/event-stream") == 0);
    CHECK(hdr(&R, "Transfer-Encoding", v, sizeof(v)) && strcasecmp(v, "chunked") == 0);
    CHECK(hdr(&R, "X-Accel-Buffering", v, sizeof(v)) && strcmp(v, "no") == 0);
    CHECK(hdr(&R, "Content-Length", v, sizeof(v)) == NULL);
    CHECK(hdr(&R, "Cache-Control", v, sizeof(v)) && strcmp(v, "no-cache") == 0);
    char chunk[1 << 16];
    size_t n;
    for (long i = 1; i <= 3; i++) {
        CHECK(loop_call(s, lf_stream_write, i) == 0);
        CHECK(cl_chunk(c, chunk, sizeof(chunk), &n) == 0);
        char want[32];
        snprintf(want, sizeof(want), "data: %ld\n\n", i);
        CHECK(n == strlen(want) && memcmp(chunk, want, n) == 0);
    }
    /* Backlog: all taken by the kernel now (the reader has been asked again). */
    long b = -1;
    for (int i = 0; i < 100 && b != 0; i++) {
        b = loop_call(s, lf_stream_backlog, 0);
        if (b != 0) sleep_ms(5);
    }
    CHECK(b == 0);
    /* Two writes before the loop can send: the second is over the limit. */
    CHECK(loop_call(s, lf_stream_write_big, 40 << 10) == 1);
    size_t got = 0;
    while (got < (40u << 10)) {
        CHECK(cl_chunk(c, chunk, sizeof(chunk), &n) == 0 && n > 0);
        for (size_t i = 0; i < n; i++)
            CHECK(chunk[i] == 'x');
        got += n;
    }
    CHECK(got == 40u << 10);
    b = -1;
    for (int i = 0; i < 100 && b != 0; i++) {
        b = loop_call(s, lf_stream_backlog, 0);
        if (b != 0) sleep_ms(5);
    }
    CHECK(b == 0);
    /* An idle stream costs no CPU (the reader suspends, it does not spin). */
    int cpu0 = cpu_ms();
    sleep_ms(400);
    CHECK(cpu_ms() - cpu0 < 60);
    /* End: the last chunk, and the connection goes on. */
    loop_call(s, lf_stream_end, 0);
    CHECK(cl_chunk(c, chunk, sizeof(chunk), &n) == 0 && n == 0);
    CHECK(cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 201);
out:
    cl_close(c);
}

static void test_cy_http_stream(void **state)
{
    srv *s = *state;
    cy_http_limits lim = {.max_stream_backlog = 64 << 10};
    srv_start(s, &lim);
    run_client(s, c_stream);
    assert_int_equal(atomic_load(&s->closed), 0);
}

static void lf_stream_fill(srv *s)
{
    /* One 32 KiB write of byte value (total / 32 KiB); returns the rc, or
     * the backlog (positive) when refused. */
    char p[32 << 10];
    memset(p, 'a' + (int)(s->call_arg % 26), sizeof(p));
    int rc = cy_http_stream_write(s->stream, p, sizeof(p));
    s->call_ret = rc == CY_ENOBUFS ? (long)cy_http_stream_backlog(s->stream) : rc;
}

static void c_stream_slow_reader(srv *s)
{
    /* A client that stops reading: the kernel's buffers fill, then the
     * backlog, then writes are refused; everything accepted arrives. */
    cl *c = NULL;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int small = 4096;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)s->port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    c = calloc(1, sizeof(*c));
    c->fd = fd;
    struct timeval tv = {RCV_TIMEOUT_MS / 1000, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    CHECK(cl_sends(c, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_head(c, &R) == 0 && R.status == 200);
    long accepted = 0, refused_backlog = 0;
    for (long i = 0; i < 400 && refused_backlog == 0; i++) {
        long r = loop_call(s, lf_stream_fill, i);
        CHECK(r >= 0);
        if (r == 0)
            accepted++;
        else
            refused_backlog = r;
        sleep_ms(2);
    }
    CHECK(refused_backlog > 0);
    CHECK(refused_backlog > (256 << 10) - (32 << 10) && refused_backlog <= 256 << 10);
    /* Now read it all, in order. */
    static char chunk[1 << 16];
    size_t n, got = 0;
    while (got < (size_t)accepted * (32 << 10)) {
        CHECK(cl_chunk(c, chunk, sizeof(chunk), &n) == 0 && n > 0);
        for (size_t i = 0; i < n; i++)
            CHECK(chunk[i] == 'a' + (int)(((got + i) / (32 << 10)) % 26));
        got += n;
    }
    long b = -1;
    for (int i = 0; i < 100 && b != 0; i++) {
        b = loop_call(s, lf_stream_backlog, 0);
        if (b != 0) sleep_ms(5);
    }
    CHECK(b == 0);
    loop_call(s, lf_stream_end, 0);
    CHECK(cl_chunk(c, chunk, sizeof(chunk), &n) == 0 && n == 0);
out:
    if (c)
        cl_close(c);
    else
        close(fd);
}

static void test_cy_http_stream_backlog_slow_reader(void **state)
{
    srv *s = *state;
    cy_http_limits lim = {.max_stream_backlog = 256 << 10};
    srv_start(s, &lim);
    run_client(s, c_stream_slow_reader);
    assert_int_equal(atomic_load(&s->closed), 0);
}

static void c_pending_leaves(srv *s)
{
    cl *c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /pending HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(wait_atomic(&s->handled, 1, 2000));
    sleep_ms(50);
    CHECK(atomic_load(&s->closed) == 0);
    cl_close(c);
    c = NULL;
    CHECK(wait_atomic(&s->closed_pending, 1, 2000));
    long k = 1;
    for (int i = 0; i < 100 && k != 0; i++) {
        k = loop_call(s, lf_counts, 0) / 1000000;
        if (k) sleep_ms(5);
    }
    CHECK(k == 0);
    sleep_ms(50);
    CHECK(atomic_load(&s->closed) == 1);
out:
    cl_close(c);
}

/* The departure watch is made at a connection's first suspension and kept
 * for the connection's life: a later suspended request on the same
 * kept-alive connection still hears the client leave; a client leaving
 * between requests (the watch running, nothing suspended) is MHD's to
 * close, and nobody is told of a request. */
static void c_pending_leaves_later(srv *s)
{
    cl *c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /delay HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200 && strcmp(R.body, "late") == 0);
    CHECK(cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 201);
    CHECK(cl_sends(c, "GET /delay HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200 && strcmp(R.body, "late") == 0);
    CHECK(cl_sends(c, "GET /pending HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(wait_atomic(&s->handled, 4, 2000));
    sleep_ms(50);
    CHECK(atomic_load(&s->closed_pending) == 0);
    cl_close(c);
    c = NULL;
    CHECK(wait_atomic(&s->closed_pending, 1, 2000));
    /* Gone between requests: the watch fires with nothing suspended. */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /delay HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200 && strcmp(R.body, "late") == 0);
    cl_close(c);
    c = NULL;
    long k = 1;
    for (int i = 0; i < 100 && k != 0; i++) {
        k = loop_call(s, lf_counts, 0) / 1000000;
        if (k) sleep_ms(5);
    }
    CHECK(k == 0);
    CHECK(atomic_load(&s->closed_pending) == 1);
out:
    cl_close(c);
}

static void test_cy_http_pending_client_leaves_later(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_pending_leaves_later);
    assert_null(s->pending);
    assert_int_equal(cy_http_requests(s->h), 4);
}

static void test_cy_http_pending_client_leaves(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_pending_leaves);
    assert_null(s->pending);
}

static void c_pending_reset(srv *s)
{
    /* The client resets (RST) instead of closing. */
    cl *c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /pending HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(wait_atomic(&s->handled, 1, 2000));
    struct linger lg = {1, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    cl_close(c);
    c = NULL;
    CHECK(wait_atomic(&s->closed_pending, 1, 2000));
    /* A later answer on another request still works. */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /pending HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(wait_atomic(&s->handled, 2, 2000));
    CHECK(loop_call(s, lf_pending_reply, 0) == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200 && strcmp(R.body, "done") == 0);
out:
    cl_close(c);
}

static void c_release(srv *s)
{
    cl *a = cl_open(s), *b = cl_open(s);
    CHECK(a && b);
    CHECK(cl_sends(a, "GET /pending HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(wait_atomic(&s->handled, 1, 2000));
    CHECK(cl_sends(b, "GET /release HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(b, &R, false) == 0 && R.status == 200 && strcmp(R.body, "0") == 0);
    CHECK(cl_response(a, &R, false) == 0 && R.status == 200 && strcmp(R.body, "freed") == 0);
out:
    cl_close(a);
    cl_close(b);
}

static void test_cy_http_reply_from_other_handler(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_release);
    assert_int_equal(atomic_load(&s->closed), 0);
    assert_int_equal(cy_http_requests(s->h), 2);
}

static void test_cy_http_pending_client_resets(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_pending_reset);
    assert_int_equal(atomic_load(&s->closed), 1);
}

static void c_stream_leaves(srv *s)
{
    cl *c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_head(c, &R) == 0 && R.status == 200);
    char chunk[256];
    size_t n;
    CHECK(loop_call(s, lf_stream_write, 7) == 0);
    CHECK(cl_chunk(c, chunk, sizeof(chunk), &n) == 0 && n > 0);
    cl_close(c);
    c = NULL;
    CHECK(wait_atomic(&s->closed_stream, 1, 2000));
    sleep_ms(50);
    CHECK(atomic_load(&s->closed) == 1);
out:
    cl_close(c);
}

static void test_cy_http_stream_client_leaves(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_stream_leaves);
}

static void c_head_stream(srv *s)
{
    /* HEAD on a stream: MHD sends the head and completes the request, so
     * the application hears on_close at once. */
    cl *c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "HEAD /stream HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_head(c, &R) == 0 && R.status == 200);
    CHECK(wait_atomic(&s->closed_stream, 1, 2000));
    CHECK(cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 201);
out:
    cl_close(c);
}

static void test_cy_http_stream_head(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_head_stream);
}

static void c_stop(srv *s)
{
    cl *a = cl_open(s), *b = cl_open(s);
    CHECK(a && b);
    CHECK(cl_sends(a, "GET /pending HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_sends(b, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_head(b, &R) == 0 && R.status == 200);
    CHECK(wait_atomic(&s->handled, 2, 2000));
    /* Both callbacks have run by the time cy_http_stop returns. */
    CHECK(loop_call(s, lf_stop, 0) == 2);
    CHECK(atomic_load(&s->closed_pending) == 1 && atomic_load(&s->closed_stream) == 1);
    CHECK(cl_sees_close(a));
    CHECK(cl_sees_close(b));
out:
    cl_close(a);
    cl_close(b);
}

static void test_cy_http_stop_with_pending_and_stream(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_stop);
    /* Stopping again does nothing; nothing more is reported. */
    cy_http_stop(s->h);
    assert_int_equal(atomic_load(&s->closed), 2);
    assert_int_equal(cy_http_connections(s->h), 0);
}

static void c_stopnow(srv *s)
{
    cl *c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /stopnow HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_sees_close(c));
    CHECK(atomic_load(&s->closed_pending) == 1);
out:
    cl_close(c);
}

static void test_cy_http_stop_from_handler(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_stopnow);
    assert_int_equal(atomic_load(&s->closed), 1);
}

static void c_twice(srv *s)
{
    cl *c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /twice HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0 && R.status == 200 && strcmp(R.body, "{}") == 0);
out:
    cl_close(c);
}

static void test_cy_http_reply_invalid(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_twice);
    assert_int_equal(s->rc_bad_status, CY_EINVAL);
    assert_int_equal(s->rc_bad_header, CY_EINVAL);
    assert_int_equal(s->rc_second, CY_EINVAL);
}

static void lf_fail_next(srv *s)
{
    cy_alloc_fail_after(s->call_arg);
}

static void lf_stream_write_nomem(srv *s)
{
    size_t before = cy_http_stream_backlog(s->stream);
    cy_alloc_fail_after(0);
    int rc = cy_http_stream_write(s->stream, "data: x\n\n", 9);
    cy_alloc_fail_after(-1);
    s->call_ret = rc == CY_ENOMEM && cy_http_stream_backlog(s->stream) == before;
}

static void c_alloc(srv *s)
{
    /* No memory for a connection's deadline: the connection is refused. */
    loop_call(s, lf_fail_next, 0);
    cl *c = cl_open(s);
    CHECK(c);
    cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n");
    CHECK(cl_sees_close(c));
    cl_close(c);
    /* No memory for the request: the connection is closed, nothing handled. */
    loop_call(s, lf_fail_next, 1);
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_sees_close(c));
    CHECK(atomic_load(&s->handled) == 0);
    cl_close(c);
    loop_call(s, lf_fail_next, -1);
    /* No memory for a stream write: refused, nothing queued, the stream goes on. */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /stream HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_head(c, &R) == 0 && R.status == 200);
    CHECK(loop_call(s, lf_stream_write_nomem, 0) == 1);
    CHECK(loop_call(s, lf_stream_write, 5) == 0);
    char chunk[64];
    size_t n;
    CHECK(cl_chunk(c, chunk, sizeof(chunk), &n) == 0 && n == 9 && memcmp(chunk, "data: 5", 7) == 0);
out:
    cl_close(c);
}

static void test_cy_http_alloc_failures(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_alloc);
    cy_alloc_fail_after(-1);
    assert_int_equal(atomic_load(&s->handled), 1);
}

static void test_cy_http_new_invalid(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    cy_http *h = (cy_http *)1;
    /* Not listening. */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(cy_http_new(&loop, fd, NULL, handler, NULL, NULL, &h), CY_EINVAL);
    assert_null(h);
    close(fd);
    /* Not a socket. */
    int p[2];
    assert_int_equal(pipe(p), 0);
    assert_int_equal(cy_http_new(&loop, p[0], NULL, handler, NULL, NULL, &h), CY_EINVAL);
    close(p[0]);
    close(p[1]);
    assert_int_equal(cy_http_new(&loop, -1, NULL, handler, NULL, NULL, &h), CY_EINVAL);
    int port;
    fd = make_listener(&port);
    assert_int_equal(cy_http_new(&loop, fd, NULL, NULL, NULL, NULL, &h), CY_EINVAL);
    /* A blocking listener is made non-blocking (it is shared between shards). */
    assert_false(fcntl(fd, F_GETFL) & O_NONBLOCK);
    assert_int_equal(cy_http_new(&loop, fd, NULL, handler, NULL, NULL, &h), 0);
    assert_true(fcntl(fd, F_GETFL) & O_NONBLOCK);
    cy_http_stop(h);
    cy_http_stop(h);
    uv_run(&loop, UV_RUN_NOWAIT);
    cy_http_free(h);
    cy_http_free(NULL);
    /* Our descriptor is still ours. */
    assert_true(fcntl(fd, F_GETFD) >= 0);
    close(fd);
    /* Allocation failures: each one is CY_ENOMEM and leaves nothing behind. */
    fd = make_listener(&port);
    int rc = CY_ENOMEM;
    for (long n = 0; n < 10 && rc == CY_ENOMEM; n++) {
        cy_alloc_fail_after(n);
        rc = cy_http_new(&loop, fd, NULL, handler, NULL, NULL, &h);
        cy_alloc_fail_after(-1);
        uv_run(&loop, UV_RUN_NOWAIT);
    }
    assert_int_equal(rc, 0);
    cy_http_stop(h);
    uv_run(&loop, UV_RUN_NOWAIT);
    cy_http_free(h);
    close(fd);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static void c_upgrade(srv *s)
{
    cl *c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /upgrade HTTP/1.1\r\nHost: t\r\nUpgrade: echo\r\n"
                      "Connection: Upgrade\r\n\r\nEXTRA") == 0);
    CHECK(cl_head(c, &R) == 0);
    CHECK(R.status == 101);
    char v[64];
    CHECK(hdr(&R, "Upgrade", v, sizeof(v)) && strcmp(v, "echo") == 0);
    /* The socket is the application's: its answer, then its close. */
    while (!find(c, "!"))
        CHECK(cl_fill(c) > 0);
    CHECK(strncmp(c->buf, "[EXTRA]!", 8) == 0 || strncmp(c->buf, "[]!", 3) == 0);
    CHECK(cl_sees_close(c));
    cl_close(c);
    c = NULL;
    /* The server goes on, and the upgraded connection is gone from its count. */
    c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /sync HTTP/1.1\r\nHost: t\r\n\r\n") == 0);
    CHECK(cl_response(c, &R, false) == 0);
    CHECK(R.status == 201);
    CHECK(loop_call(s, lf_counts, 0) / 1000000 == 1);
out:
    cl_close(c);
}

static void test_cy_http_upgrade(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_upgrade);
    assert_int_equal(atomic_load(&s->upgraded), 1);
    assert_int_equal(atomic_load(&s->upgrade_failed), 0);
}

/* The server stops while the application still holds an upgraded
 * connection: MHD lets it go, and the application's later close only frees
 * its handle. */
static void lf_release_held(srv *s)
{
    close(s->held_fd);
    cy_http_upgraded_close(s->held);
    s->held = NULL;
    s->call_ret = 0;
}

static void c_upgrade_stop(srv *s)
{
    cl *c = cl_open(s);
    CHECK(c);
    CHECK(cl_sends(c, "GET /upgrade-hold HTTP/1.1\r\nHost: t\r\nUpgrade: echo\r\n"
                      "Connection: Upgrade\r\n\r\n") == 0);
    CHECK(cl_head(c, &R) == 0);
    CHECK(R.status == 101);
    CHECK(wait_atomic(&s->upgraded, 1, 2000));
    loop_call(s, lf_stop, 0);
    loop_call(s, lf_release_held, 0);
    CHECK(cl_sees_close(c));
out:
    cl_close(c);
}

static void test_cy_http_upgrade_then_stop(void **state)
{
    srv *s = *state;
    srv_start(s, NULL);
    run_client(s, c_upgrade_stop);
    assert_int_equal(atomic_load(&s->upgraded), 1);
}

int main(void)
{
    /* CY_TEST_LOG=debug shows the module's and MHD's lines. */
    cy_log_level lvl = CY_LOG_ERROR;
    if (getenv("CY_TEST_LOG")) cy_log_parse_level(getenv("CY_TEST_LOG"), &lvl);
    cy_log_set_level(lvl);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_cy_http_reply_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_upgrade, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_upgrade_then_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_request_accessors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_reply_delayed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_reply_invalid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_reply_from_other_handler, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_keepalive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_body_too_large_content_length, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_body_too_large_chunked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_content_length_and_chunked, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_control_chars_in_target, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_extra_headers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_check_before_body, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_started_us, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_request_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_stream_limit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_headers_too_large, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_idle_timeout, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_max_connections, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_evict_idle_under_pressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_idle_timeout_under_pressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_head_deadline_under_pressure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_max_per_address, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_admit, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_stream_head, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_stream_backlog_slow_reader, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_pending_client_leaves, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_pending_client_leaves_later, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_pending_client_resets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_stream_client_leaves, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_stop_with_pending_and_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_stop_from_handler, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_alloc_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_http_new_invalid, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
