/* fake_http: http/http.h without sockets, for the API fuzzer; see
 * fake_http.h for what it promises and what it checks.
 *
 * A request lives from fake_http_run until the client leaves (or the
 * server stops): answering it only marks it, as http.c keeps a request
 * until MHD completes it. States: CHECKING (the check runs), HANDLING (the
 * handler runs), PENDING (the application holds it), STREAM, ENDED
 * (stream ended), ANSWERED, GONE (the client left).
 */
#include "fake_http.h"
#include "http/chunk_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"

#include <jansson.h>
#include <stdbool.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

enum { RQ_CHECKING, RQ_HANDLING, RQ_PENDING, RQ_STREAM, RQ_ENDED, RQ_ANSWERED, RQ_GONE };

struct cy_http {
    cy_http_handler handler;
    cy_http_check check;
    void *ctx;
    cy_http_limits lim;
    bool stopping;
    unsigned streams;
    uint64_t answers;
    cy_http_req *reqs;
};

struct cy_http_req {
    cy_http_req *next;
    cy_http *h;
    int state;
    bool streamed;  /* counted in h->streams */
    bool head_done; /* a HEAD stream: completes after the handler */
    char *method, *path, *peer, *addr;
    char **qk, **qv; /* query keys and values (a value may be NULL) */
    unsigned nq;
    char **hk, **hv;
    unsigned nh;
    uint8_t *body;
    size_t body_len;
    int tag;
    int64_t started_us;
    unsigned status;
    size_t backlog;
    void (*on_close)(void *arg, cy_http_req *req);
    void *on_close_arg;
};

static cy_http *last;

static char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    CHECK(d);
    if (n) memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* MHD_http_unescape: %XX decoded, anything else kept; in place. Returns
 * false when the result holds a control character (http.c's check). */
static bool unescape(char *s)
{
    char *w = s;
    for (const char *r = s; *r; r++) {
        int a, b;
        if (*r == '%' && (a = hexval(r[1])) >= 0 && (b = hexval(r[2])) >= 0) {
            *w++ = (char)(a << 4 | b);
            r += 2;
        } else {
            *w++ = *r;
        }
    }
    size_t n = (size_t)(w - s);
    *w = '\0';
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f) return false;
    }
    /* A decoded NUL would have cut the string: MHD hands on a C string. */
    return true;
}

static void req_free(cy_http_req *req)
{
    for (unsigned i = 0; i < req->nq; i++) {
        free(req->qk[i]);
        free(req->qv[i]);
    }
    for (unsigned i = 0; i < req->nh; i++) {
        free(req->hk[i]);
        free(req->hv[i]);
    }
    free(req->qk);
    free(req->qv);
    free(req->hk);
    free(req->hv);
    free(req->method);
    free(req->path);
    free(req->peer);
    free(req->addr);
    free(req->body);
    free(req);
}

/* The application no longer holds req: tell it once (http.c lose()). */
static void lose(cy_http_req *req)
{
    bool held = req->state == RQ_HANDLING || req->state == RQ_PENDING || req->state == RQ_STREAM;
    if (!held) return;
    /* Left waiting with no way to hear of it: nothing would ever answer. */
    CHECK(req->state == RQ_STREAM || req->on_close != NULL);
    req->state = RQ_GONE;
    void (*cb)(void *, cy_http_req *) = req->on_close;
    req->on_close = NULL;
    if (cb) cb(req->on_close_arg, req);
}

static void answered(cy_http_req *req, unsigned status)
{
    req->status = status;
    req->h->answers++;
}

/* ---- what fake_http.h adds ---- */

cy_http *fake_http_last(void)
{
    return last;
}

unsigned fake_http_run(cy_http *h, const fake_http_request *r)
{
    cy_http_req *req = calloc(1, sizeof(*req));
    CHECK(req);
    req->h = h;
    req->next = h->reqs;
    h->reqs = req;
    req->started_us = cy_mono_us();
    req->method = dup_n(r->method, strlen(r->method));
    const char *peer = r->peer ? r->peer : "127.0.0.1:40000";
    req->peer = dup_n(peer, strlen(peer));
    const char *colon = strrchr(peer, ':');
    req->addr = dup_n(peer, colon && colon != peer ? (size_t)(colon - peer) : strlen(peer));
    const char *q = strchr(r->target, '?');
    size_t plen = q ? (size_t)(q - r->target) : strlen(r->target);
    req->path = dup_n(r->target, plen);
    bool bad = !unescape(req->path);
    /* Query arguments: key[=value] separated by '&', each decoded. */
    for (const char *p = q ? q + 1 : NULL; p && *p;) {
        const char *amp = strchr(p, '&');
        size_t n = amp ? (size_t)(amp - p) : strlen(p);
        if (n) {
            const char *eq = memchr(p, '=', n);
            req->qk = realloc(req->qk, (req->nq + 1) * sizeof(char *));
            req->qv = realloc(req->qv, (req->nq + 1) * sizeof(char *));
            CHECK(req->qk && req->qv);
            req->qk[req->nq] = dup_n(p, eq ? (size_t)(eq - p) : n);
            req->qv[req->nq] = eq ? dup_n(eq + 1, n - (size_t)(eq - p) - 1) : NULL;
            bad |= !unescape(req->qk[req->nq]);
            if (req->qv[req->nq]) bad |= !unescape(req->qv[req->nq]);
            req->nq++;
        }
        p = amp ? amp + 1 : NULL;
    }
    for (size_t i = 0; r->headers && r->headers[i]; i += 2) {
        req->hk = realloc(req->hk, (req->nh + 1) * sizeof(char *));
        req->hv = realloc(req->hv, (req->nh + 1) * sizeof(char *));
        CHECK(req->hk && req->hv);
        req->hk[req->nh] = dup_n(r->headers[i], strlen(r->headers[i]));
        req->hv[req->nh] = dup_n(r->headers[i + 1], strlen(r->headers[i + 1]));
        req->nh++;
    }
    if (h->stopping) {
        req->state = RQ_GONE;
        return 0;
    }
    /* What http.c answers itself: the application never sees these. */
    if (bad) {
        req->state = RQ_ANSWERED;
        answered(req, 400);
        return 400;
    }
    req->state = RQ_CHECKING;
    if (h->check) h->check(h->ctx, req);
    if (req->state != RQ_CHECKING) {
        CHECK(req->state == RQ_ANSWERED);
        return req->status;
    }
    if (r->body_len > h->lim.max_body_bytes) {
        req->state = RQ_ANSWERED;
        answered(req, 413);
        return 413;
    }
    if (r->body_len) {
        req->body = malloc(r->body_len);
        CHECK(req->body);
        memcpy(req->body, r->body, r->body_len);
        req->body_len = r->body_len;
    }
    req->state = RQ_HANDLING;
    h->handler(h->ctx, req);
    if (req->state == RQ_HANDLING) req->state = RQ_PENDING;
    if (req->head_done) lose(req);
    return req->state == RQ_ANSWERED || req->state == RQ_ENDED ? req->status : 0;
}

void fake_http_drain(cy_http *h)
{
    for (cy_http_req *r = h->reqs; r; r = r->next)
        r->backlog = 0;
}

void fake_http_leave_all(cy_http *h)
{
    /* One at a time, each freed as soon as its callback returns (http.c
     * frees it then): a pointer kept past that is caught by ASan. */
    while (h->reqs) {
        cy_http_req *r = h->reqs;
        lose(r);
        h->reqs = r->next;
        if (r->streamed) h->streams--;
        req_free(r);
    }
}

uint64_t fake_http_answers(const cy_http *h)
{
    return h->answers;
}

/* ---- http.h ---- */

int cy_http_new(uv_loop_t *loop, int listen_fd, const cy_http_limits *lim, cy_http_handler handler,
                cy_http_check check, void *ctx, cy_http **out)
{
    (void)loop, (void)listen_fd;
    CHECK(handler && out);
    cy_http *h = calloc(1, sizeof(*h));
    CHECK(h);
    h->handler = handler;
    h->check = check;
    h->ctx = ctx;
    if (lim) h->lim = *lim;
    if (!h->lim.max_body_bytes) h->lim.max_body_bytes = 65536;
    if (!h->lim.max_connections) h->lim.max_connections = 1024;
    if (!h->lim.max_stream_backlog) h->lim.max_stream_backlog = 1 << 20;
    last = h;
    *out = h;
    return 0;
}

void cy_http_stop(cy_http *h)
{
    if (!h || h->stopping) return;
    h->stopping = true;
    for (cy_http_req *r = h->reqs; r; r = r->next)
        lose(r);
}

void cy_http_free(cy_http *h)
{
    if (!h) return;
    fake_http_leave_all(h);
    if (last == h) last = NULL;
    free(h);
}

unsigned cy_http_connections(const cy_http *h)
{
    unsigned n = 0;
    for (const cy_http_req *r = h ? h->reqs : NULL; r; r = r->next)
        n += r->state == RQ_PENDING || r->state == RQ_STREAM;
    return n;
}

uint64_t cy_http_requests(const cy_http *h)
{
    return h ? h->answers : 0;
}

unsigned cy_http_streams(const cy_http *h)
{
    return h ? h->streams : 0;
}

unsigned cy_http_stream_limit(const cy_http *h)
{
    if (!h) return 0;
    unsigned max = h->lim.max_connections;
    unsigned reserve = max / 10 > 0 ? max / 10 : 1;
    return max > reserve ? max - reserve : 0;
}

/* The accessors: the request must not have been freed (ASan says so) and
 * its strings are C strings. */
const char *cy_http_method(const cy_http_req *req)
{
    return req->method;
}

const char *cy_http_path(const cy_http_req *req)
{
    return req->path;
}

const char *cy_http_query(const cy_http_req *req, const char *name)
{
    for (unsigned i = 0; i < req->nq; i++)
        if (strcmp(req->qk[i], name) == 0) return req->qv[i];
    return NULL;
}

const char *cy_http_header(const cy_http_req *req, const char *name)
{
    for (unsigned i = 0; i < req->nh; i++)
        if (strcasecmp(req->hk[i], name) == 0) return req->hv[i];
    return NULL;
}

const uint8_t *cy_http_body(const cy_http_req *req, size_t *len)
{
    if (len) *len = req->body_len;
    return req->body_len ? req->body : NULL;
}

const char *cy_http_peer(const cy_http_req *req)
{
    return req->peer;
}

const char *cy_http_peer_addr(const cy_http_req *req)
{
    return req->addr;
}

/* Every request comes from 127.0.0.1, which limits_exempt spares by
 * default: the per-address limits are the integration tests' (no clock
 * here to run their windows). */
const struct sockaddr *cy_http_peer_sockaddr(const cy_http_req *req)
{
    static struct sockaddr_in sin;
    (void)req;
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return (const struct sockaddr *)&sin;
}

/* Headers added to an answer (CORS): checked as http.c checks them, then
 * dropped (no answer here carries headers). */
int cy_http_add_header(cy_http_req *req, const char *name, const char *value)
{
    if (!req || !name || !value || !*name) return CY_EINVAL;
    for (const char *c = name; *c; c++)
        if ((unsigned char)*c < 0x20) return CY_EINVAL;
    for (const char *c = value; *c; c++)
        if ((unsigned char)*c < 0x20 && *c != '\t') return CY_EINVAL;
    return 0;
}

int cy_http_tls_reload(cy_http *h, const char *cert, const char *key, char *buf, size_t len)
{
    (void)h, (void)cert, (void)key;
    snprintf(buf, len, "this server does not serve HTTPS");
    return CY_EINVAL;
}

int cy_http_tls_check(const char *cert, const char *key, char *buf, size_t len)
{
    (void)cert, (void)key;
    snprintf(buf, len, "no TLS in the fuzzer");
    return CY_EINVAL;
}

void cy_http_set_tag(cy_http_req *req, int tag)
{
    req->tag = tag;
}

int cy_http_tag(const cy_http_req *req)
{
    return req->tag;
}

int64_t cy_http_started_us(const cy_http_req *req)
{
    return req->started_us;
}

void cy_http_on_close(cy_http_req *req, void (*cb)(void *arg, cy_http_req *req), void *arg)
{
    req->on_close = cb;
    req->on_close_arg = arg;
}

int cy_http_reply(cy_http_req *req, unsigned status, const char *content_type, const char *body,
                  size_t len, const char *const *headers)
{
    CHECK(req);
    /* A second answer, or one after the client left, is the application
     * losing track of the request (http.c would refuse it, and the first
     * or nobody would be answered). */
    CHECK(req->state == RQ_CHECKING || req->state == RQ_HANDLING || req->state == RQ_PENDING);
    CHECK(status >= 200 && status <= 599);
    CHECK(body != NULL || len == 0);
    for (size_t i = 0; headers && headers[i]; i += 2)
        CHECK(headers[i + 1] != NULL);
    if (!content_type && len) { /* application/json: it must be JSON */
        json_error_t err;
        json_t *j = json_loadb(body, len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
        CHECK(j != NULL || json_error_code(&err) == json_error_null_byte_in_key);
        json_decref(j);
    }
    if (req->h->stopping) return CY_EPIPE;
    req->state = RQ_ANSWERED;
    answered(req, status);
    if (getenv("CYAN_FUZZ_TRACE"))
        fprintf(stderr, "fake_http: %u %.*s\n", status, (int)(len > 300 ? 300 : len),
                body ? body : "");
    return 0;
}

/* An upgrade (GET /mqtt, a WebSocket): the 101 counts as the answer, and
 * the handover fails as when the client leaves at once (fd -1): there is
 * no socket here. The handler must take that without touching req. */
int cy_http_upgrade(cy_http_req *req, const char *const *headers, cy_http_upgrade_cb cb,
                    void *arg)
{
    CHECK(req && cb);
    CHECK(req->state == RQ_HANDLING || req->state == RQ_PENDING);
    for (size_t i = 0; headers && headers[i]; i += 2)
        CHECK(headers[i + 1] != NULL);
    if (req->h->stopping) return CY_EPIPE;
    req->state = RQ_ANSWERED;
    answered(req, 101);
    cb(arg, -1, NULL, 0, NULL);
    return 0;
}

void cy_http_upgraded_close(cy_http_upgraded *u)
{
    CHECK(u == NULL); /* never handed one out */
}

int cy_http_stream_begin(cy_http_req *req, const char *content_type, const char *const *headers)
{
    (void)content_type;
    CHECK(req);
    CHECK(req->state == RQ_HANDLING || req->state == RQ_PENDING);
    for (size_t i = 0; headers && headers[i]; i += 2)
        CHECK(headers[i + 1] != NULL);
    if (req->h->stopping) return CY_EPIPE;
    bool head = strcmp(req->method, "HEAD") == 0;
    if (!head && req->h->streams >= cy_http_stream_limit(req->h)) return CY_EBUSY;
    req->state = RQ_STREAM;
    answered(req, 200);
    if (head) {
        req->head_done = true;
    } else {
        req->streamed = true;
        req->h->streams++;
    }
    return 0;
}

static int can_take(cy_http_req *req, size_t len)
{
    CHECK(req);
    /* Writing to a request that is no stream (or one ended) is a bug; to
     * one whose client left, what http.c answers. */
    CHECK(req->state == RQ_STREAM || req->state == RQ_GONE);
    if (req->state == RQ_GONE || req->h->stopping) return CY_EPIPE;
    if (len > req->h->lim.max_stream_backlog - req->backlog) return CY_ENOBUFS;
    return 0;
}

int cy_http_stream_write(cy_http_req *req, const char *data, size_t len)
{
    int rc = can_take(req, len);
    if (rc) return rc;
    CHECK(data != NULL || len == 0);
    /* Any bytes; read them all, as the socket would (ASan checks memchr's range). */
    if (len) (void)memchr(data, 0x7f, len);
    if (getenv("CYAN_FUZZ_TRACE"))
        fprintf(stderr, "fake_http: stream %.*s\n", (int)(len > 300 ? 300 : len), data);
    req->backlog += len;
    return 0;
}

int cy_http_stream_write_ref(cy_http_req *req, cy_http_chunk *c)
{
    CHECK(c && c->refs > 0);
    int rc = can_take(req, c->len);
    if (rc) return rc;
    if (getenv("CYAN_FUZZ_TRACE"))
        fprintf(stderr, "fake_http: stream %.*s\n", (int)(c->len > 300 ? 300 : c->len), c->data);
    req->backlog += c->len; /* read at once: no reference kept */
    return 0;
}

size_t cy_http_stream_backlog(const cy_http_req *req)
{
    return req ? req->backlog : 0;
}

void cy_http_stream_end(cy_http_req *req)
{
    CHECK(req);
    CHECK(req->state == RQ_STREAM || req->state == RQ_GONE);
    if (req->state != RQ_STREAM) return;
    req->state = RQ_ENDED;
    req->on_close = NULL;
}
