/* client: see client.h. libcurl's multi socket interface on the libuv loop:
 *
 *   curl -> on_socket(fd, what)   start/stop the uv_poll_t of fd (one `sock`
 *                                 per socket number, in a table by number)
 *   curl -> on_timer(ms)          (re)arm curl_timer, or stop it (-1)
 *   uv   -> on_poll / on_curl_timeout -> curl_multi_socket_action, then
 *           drain curl_multi_info_read for finished transfers (check_done).
 *
 * curl_multi_socket_action is never called from inside a curl callback
 * (curl forbids it): a timeout of 0 goes through the uv timer. Callers'
 * callbacks run only from check_done, cy_hc_cancel, cy_hc_close and the
 * defer timer, never while curl is on the stack, so they may send, cancel
 * and close.
 *
 * A request is an `xfer`: it owns an easy handle and the memory the request
 * needs while curl works on it (the body's copy, the header list, the kept
 * response body, the error buffer). Finished xfers go to a free list and are
 * reused with curl_easy_reset (which keeps nothing of the last request but
 * its handle's caches), so a steady stream of requests allocates nothing of
 * ours: the header list is an array of curl_slist nodes we own, pointing
 * into one text buffer, never curl_slist_append's nodes.
 *
 * The request on the wire: the caller's headers, "Expect:" (no wait for a
 * 100-continue) and "User-Agent: <cfg>" unless the caller gave one. A body
 * (Content-Length, even 0) with POST, PUT, PATCH and any method given one;
 * none with GET, HEAD, DELETE and others given none. curl adds Host, Accept
 * and, with a body, a Content-Type when the caller gave none (form
 * urlencoded). Never through a proxy: the environment's http_proxy and the
 * like are ignored, so the address check sees the receiver's address.
 *
 * An xfer is in exactly one of: the free list, `live` (added to the multi
 * handle), `deferred` (curl refused it synchronously: its callback waits
 * for the defer timer, so that it never runs inside cy_hc_send), or none
 * (its callback is running). */
#include "http/client.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define DEFAULT_BODY_KEEP 4096
#define DEFAULT_TIMEOUT_MS 20000
#define FREE_MAX 256 /* idle xfers kept for reuse (each holds a curl handle, ~20 KiB) */
#define METHOD_MAX 16
#define HDR_VALUE_MAX 128   /* Retry-After and Content-Type kept up to this (truncated) */
#define KEEP_BODY_CAP 65536 /* a reused xfer keeps a request body buffer up to this */

enum xstate { X_FREE, X_LIVE, X_DEFERRED, X_DONE };

struct cy_hc_xfer {
    cy_hc_xfer *prev, *next; /* in free, live or deferred */
    cy_hc *c;
    CURL *easy;
    enum xstate state;
    cy_hc_cb cb;
    void *arg;
    uint64_t t0_ns; /* uv_hrtime at the send */
    /* The request's copies (memory kept across reuses). */
    uint8_t *req_body;
    size_t req_body_cap;
    char *hdr_text; /* "Name: value\0" back to back */
    size_t hdr_text_cap;
    struct curl_slist *hdr_nodes; /* ours: never curl_slist_free_all */
    size_t hdr_nodes_cap;
    /* The response. */
    uint8_t *body; /* at most body_keep bytes kept */
    size_t body_len, body_cap;
    char retry_after[HDR_VALUE_MAX];
    char ctype[HDR_VALUE_MAX];
    bool has_retry_after, has_ctype;
    char remote_ip[INET6_ADDRSTRLEN];
    char refused[INET6_ADDRSTRLEN]; /* set when addr_ok refused an address */
    char err[CURL_ERROR_SIZE + 64];
};

/* The poll handle of one socket number. Kept (stopped) when curl is done
 * with the socket, and started again when curl hands us a socket with the
 * same number: connections taken from curl's cache and put back, request
 * after request, cost no handle init or close. */
typedef struct sock {
    uv_poll_t poll;
    curl_socket_t fd;
    cy_hc *c;
    int events; /* UV_READABLE | UV_WRITABLE being polled; 0: stopped */
} sock;

typedef struct xlist {
    cy_hc_xfer *head, *tail;
    size_t n;
} xlist;

struct cy_hc {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t curl_timer, defer_timer;
    char *user_agent_hdr; /* "User-Agent: ..." */
    size_t body_keep;
    bool (*addr_ok)(void *ctx, const struct sockaddr *sa);
    void *addr_ctx;
    xlist live, deferred, free;
    sock **byfd; /* by socket number; NULL where none was made */
    size_t nbyfd;
    int open_handles; /* uv handles not yet closed */
    bool closing, global;
    void (*close_cb)(void *);
    void *close_arg;
};

/* ---- lists ---------------------------------------------------------------- */

static void xl_remove(xlist *l, cy_hc_xfer *x)
{
    if (x->prev)
        x->prev->next = x->next;
    else
        l->head = x->next;
    if (x->next)
        x->next->prev = x->prev;
    else
        l->tail = x->prev;
    x->prev = x->next = NULL;
    l->n--;
}

static void xl_append(xlist *l, cy_hc_xfer *x)
{
    x->next = NULL;
    x->prev = l->tail;
    if (l->tail)
        l->tail->next = x;
    else
        l->head = x;
    l->tail = x;
    l->n++;
}

static void xfer_free(cy_hc_xfer *x)
{
    if (x->easy) curl_easy_cleanup(x->easy);
    cy_free(x->req_body);
    cy_free(x->hdr_text);
    cy_free(x->hdr_nodes);
    cy_free(x->body);
    cy_free(x);
}

/* ---- closing ------------------------------------------------------------- */

static void finish_close(cy_hc *c)
{
    void (*cb)(void *) = c->close_cb;
    void *arg = c->close_arg;
    cy_free(c->user_agent_hdr);
    if (c->global) curl_global_cleanup();
    cy_free(c);
    if (cb) cb(arg);
}

static void on_handle_closed(uv_handle_t *h)
{
    cy_hc *c;
    if (h->type == UV_POLL) {
        sock *s = h->data;
        c = s->c;
        cy_free(s);
    } else {
        c = h->data;
    }
    if (--c->open_handles == 0 && c->closing) finish_close(c);
}

/* ---- curl <-> uv ---------------------------------------------------------- */

static void check_done(cy_hc *c);

static void on_poll(uv_poll_t *h, int status, int events)
{
    sock *s = h->data;
    cy_hc *c = s->c;
    int flags = 0;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    }
    int running;
    curl_multi_socket_action(c->multi, s->fd, flags, &running);
    check_done(c);
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    (void)socketp;
    cy_hc *c = userp;
    if (fd < 0) return -1;
    sock *s = (size_t)fd < c->nbyfd ? c->byfd[fd] : NULL;
    if (what == CURL_POLL_REMOVE) {
        if (s && s->events) {
            uv_poll_stop(&s->poll);
            s->events = 0;
        }
        return 0;
    }
    if (!s) {
        if ((size_t)fd >= c->nbyfd) {
            size_t n = c->nbyfd ? c->nbyfd : 64;
            while (n <= (size_t)fd)
                n *= 2;
            sock **t = cy_realloc(c->byfd, n * sizeof(*t));
            if (!t) return -1;
            memset(t + c->nbyfd, 0, (n - c->nbyfd) * sizeof(*t));
            c->byfd = t;
            c->nbyfd = n;
        }
        s = cy_calloc(1, sizeof(*s));
        if (!s) return -1;
        if (uv_poll_init_socket(c->loop, &s->poll, fd) != 0) {
            cy_free(s);
            return -1;
        }
        s->poll.data = s;
        s->fd = fd;
        s->c = c;
        c->byfd[fd] = s;
        c->open_handles++;
    }
    int ev = 0;
    if (what & CURL_POLL_IN) ev |= UV_READABLE;
    if (what & CURL_POLL_OUT) ev |= UV_WRITABLE;
    if (ev == s->events) return 0;
    if (uv_poll_start(&s->poll, ev, on_poll) != 0) {
        s->events = 0;
        return -1;
    }
    s->events = ev;
    return 0;
}

static void on_curl_timeout(uv_timer_t *t)
{
    cy_hc *c = t->data;
    int running;
    curl_multi_socket_action(c->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(c);
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    cy_hc *c = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&c->curl_timer);
    else if (!c->closing)
        uv_timer_start(&c->curl_timer, on_curl_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

/* ---- per-transfer curl callbacks ----------------------------------------- */

/* Keep the first body_keep bytes; read and drop the rest. */
static size_t on_body(char *p, size_t size, size_t nmemb, void *userp)
{
    cy_hc_xfer *x = userp;
    size_t n = size * nmemb;
    size_t keep = x->c->body_keep;
    size_t room = x->body_len < keep ? keep - x->body_len : 0;
    size_t take = n < room ? n : room;
    if (take == 0) return n;
    if (x->body_len + take > x->body_cap) {
        size_t cap = x->body_cap ? x->body_cap * 2 : 1024;
        if (cap < x->body_len + take) cap = x->body_len + take;
        if (cap > keep) cap = keep;
        uint8_t *b = cy_realloc(x->body, cap);
        if (!b) return n; /* keep what we have: the answer still counts */
        x->body = b;
        x->body_cap = cap;
    }
    memcpy(x->body + x->body_len, p, take);
    x->body_len += take;
    return n;
}

/* Copy a header's value (after "name:"), trimmed, truncated to fit. */
static void header_value(const char *p, size_t n, char *out)
{
    while (n && (*p == ' ' || *p == '\t')) {
        p++;
        n--;
    }
    while (n && (p[n - 1] == '\r' || p[n - 1] == '\n' || p[n - 1] == ' ' || p[n - 1] == '\t'))
        n--;
    if (n >= HDR_VALUE_MAX) n = HDR_VALUE_MAX - 1;
    memcpy(out, p, n);
    out[n] = '\0';
}

static size_t on_header(char *p, size_t size, size_t nitems, void *userp)
{
    cy_hc_xfer *x = userp;
    size_t n = size * nitems;
    if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
        /* A new status line (after a 1xx): what came before was not the answer. */
        x->has_retry_after = x->has_ctype = false;
    } else if (n >= 12 && strncasecmp(p, "retry-after:", 12) == 0) {
        header_value(p + 12, n - 12, x->retry_after);
        x->has_retry_after = true;
    } else if (n >= 13 && strncasecmp(p, "content-type:", 13) == 0) {
        header_value(p + 13, n - 13, x->ctype);
        x->has_ctype = true;
    }
    return n;
}

static void sockaddr_text(const struct sockaddr *sa, char *out, size_t len)
{
    const void *a = NULL;
    if (sa->sa_family == AF_INET)
        a = &((const struct sockaddr_in *)sa)->sin_addr;
    else if (sa->sa_family == AF_INET6)
        a = &((const struct sockaddr_in6 *)sa)->sin6_addr;
    if (!a || !inet_ntop(sa->sa_family, a, out, (socklen_t)len))
        snprintf(out, len, "(family %d)", (int)sa->sa_family);
}

/* Every address curl connects to passes here first (addr_ok is set). A
 * refused one is CURL_SOCKET_BAD: curl tries the next address, and fails
 * the transfer at once (CURLE_COULDNT_CONNECT) when none is left. */
static curl_socket_t on_open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *a)
{
    cy_hc_xfer *x = clientp;
    cy_hc *c = x->c;
    (void)purpose;
    if (!c->addr_ok(c->addr_ctx, &a->addr)) {
        sockaddr_text(&a->addr, x->refused, sizeof(x->refused));
        return CURL_SOCKET_BAD;
    }
    return socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
}

/* ---- completing ----------------------------------------------------------- */

/* Put x back for reuse (or free it): its callback has returned. */
static void recycle(cy_hc *c, cy_hc_xfer *x)
{
    if (c->closing || c->free.n >= FREE_MAX) {
        xfer_free(x);
        return;
    }
    if (x->req_body_cap > KEEP_BODY_CAP) {
        cy_free(x->req_body);
        x->req_body = NULL;
        x->req_body_cap = 0;
    }
    x->state = X_FREE;
    x->cb = NULL;
    x->arg = NULL;
    xl_append(&c->free, x);
}

/* x is in no list: run its callback with r, then recycle it. */
static void deliver(cy_hc *c, cy_hc_xfer *x, cy_hc_resp *r)
{
    x->state = X_DONE;
    r->elapsed_us = (int64_t)((uv_hrtime() - x->t0_ns) / 1000);
    cy_hc_cb cb = x->cb;
    void *arg = x->arg;
    x->cb = NULL;
    cb(arg, r);
    recycle(c, x);
}

static void fail_with(cy_hc *c, cy_hc_xfer *x, const char *why)
{
    cy_hc_resp r = {.status = 0, .error = why, .remote_ip = ""};
    deliver(c, x, &r);
}

/* A live transfer curl finished with res. */
static void finish(cy_hc *c, cy_hc_xfer *x, CURLcode res)
{
    long code = 0, ver = 0;
    char *ip = NULL;
    curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_getinfo(x->easy, CURLINFO_HTTP_VERSION, &ver);
    curl_easy_getinfo(x->easy, CURLINFO_PRIMARY_IP, &ip);
    snprintf(x->remote_ip, sizeof(x->remote_ip), "%s", ip ? ip : "");
    curl_multi_remove_handle(c->multi, x->easy);
    xl_remove(&c->live, x);
    cy_hc_resp r = {.remote_ip = x->remote_ip};
    if (res == CURLE_OK && code > 0) {
        r.status = code;
        r.error = "";
        r.retry_after = x->has_retry_after ? x->retry_after : NULL;
        r.content_type = x->has_ctype ? x->ctype : NULL;
        r.body = x->body_len ? x->body : NULL;
        r.body_len = x->body_len;
        r.http_version = ver == CURL_HTTP_VERSION_2_0 ? 2 : ver == CURL_HTTP_VERSION_3 ? 3 : 1;
    } else {
        r.timed_out = res == CURLE_OPERATION_TIMEDOUT;
        if (x->refused[0] && !r.timed_out) {
            snprintf(x->err, sizeof(x->err), "address not allowed: %s", x->refused);
            r.remote_ip = "";
        } else if (res == CURLE_OK) {
            snprintf(x->err, sizeof(x->err), "no HTTP status");
        } else if (!x->err[0]) {
            snprintf(x->err, sizeof(x->err), "%s", curl_easy_strerror(res));
        }
        r.error = x->err;
    }
    deliver(c, x, &r);
}

static void check_done(cy_hc *c)
{
    CURLMsg *m;
    int left;
    /* A callback may close the client: stop reading then. */
    while (!c->closing && (m = curl_multi_info_read(c->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE) continue;
        cy_hc_xfer *x = NULL;
        CURLcode res = m->data.result;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
        /* (curl_multi_remove_handle drops a cancelled transfer's message) */
        if (x && x->state == X_LIVE) finish(c, x, res);
    }
}

static void on_defer(uv_timer_t *t)
{
    cy_hc *c = t->data;
    /* Only those there now: one that a callback defers waits for the next turn. */
    size_t n = c->deferred.n;
    while (n-- > 0 && c->deferred.head) {
        cy_hc_xfer *x = c->deferred.head;
        xl_remove(&c->deferred, x);
        fail_with(c, x, x->err);
    }
    if (c->deferred.n && !c->closing) uv_timer_start(&c->defer_timer, on_defer, 0, 0);
}

/* ---- sending ---------------------------------------------------------------- */

static bool is_token(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++) {
        unsigned char ch = (unsigned char)s[n];
        if (ch <= 32 || ch >= 127 || strchr("()<>@,;:\\\"/[]?={}", ch)) return false;
    }
    return n > 0 && n < METHOD_MAX;
}

static int grow(void **p, size_t *cap, size_t want, size_t elem)
{
    if (want <= *cap) return 0;
    size_t n = *cap ? *cap : 8;
    while (n < want)
        n *= 2;
    void *q = cy_realloc(*p, n * elem);
    if (!q) return CY_ENOMEM;
    *p = q;
    *cap = n;
    return 0;
}

/* Copy the body and the header list into x. */
static int copy_request(cy_hc *c, cy_hc_xfer *x, const cy_hc_req *r)
{
    size_t text = 0, nh = 0;
    bool ua = false;
    if (r->headers)
        for (; r->headers[nh]; nh++) {
            const char *h = r->headers[nh];
            if (strpbrk(h, "\r\n")) return CY_EINVAL;
            if (!strncasecmp(h, "user-agent:", 11)) ua = true;
            text += strlen(h) + 1;
        }
    /* "Expect:" keeps curl from waiting for a 100-continue before a large body. */
    static const char expect[] = "Expect:";
    text += sizeof(expect);
    if (!ua) text += strlen(c->user_agent_hdr) + 1;
    size_t nodes = nh + 2;
    if (grow((void **)&x->hdr_text, &x->hdr_text_cap, text, 1) ||
        grow((void **)&x->hdr_nodes, &x->hdr_nodes_cap, nodes, sizeof(struct curl_slist)) ||
        grow((void **)&x->req_body, &x->req_body_cap, r->body_len ? r->body_len : 1, 1))
        return CY_ENOMEM;
    char *t = x->hdr_text;
    size_t k = 0;
    for (size_t i = 0; i < nh + 2; i++) {
        const char *h = i < nh ? r->headers[i] : i == nh ? expect : ua ? NULL : c->user_agent_hdr;
        if (!h) continue;
        size_t l = strlen(h) + 1;
        memcpy(t, h, l);
        x->hdr_nodes[k].data = t;
        x->hdr_nodes[k].next = NULL;
        if (k) x->hdr_nodes[k - 1].next = &x->hdr_nodes[k];
        k++;
        t += l;
    }
    if (r->body_len) memcpy(x->req_body, r->body, r->body_len);
    return 0;
}

/* Set every option of x's request (its easy handle just reset). */
static CURLcode set_options(cy_hc *c, cy_hc_xfer *x, const cy_hc_req *r, const char *method)
{
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    if (rc == CURLE_OK) rc = curl_easy_setopt(x->easy, opt, val)
    CURL *e = x->easy;
    (void)e;
    SET(CURLOPT_URL, r->url);
    SET(CURLOPT_PRIVATE, (void *)x);
    SET(CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
#else
    SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    /* Never through a proxy from the environment (http_proxy, ...): the
     * address check must see the receiver's address. */
    SET(CURLOPT_PROXY, "");
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    /* Over TLS, wait for a connection being set up to this host rather than
     * open another: it may turn out to be HTTP/2 and carry this one too. */
    if (!strncasecmp(r->url, "https:", 6)) SET(CURLOPT_PIPEWAIT, 1L);
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_TIMEOUT_MS, (long)(r->timeout_ms ? r->timeout_ms : DEFAULT_TIMEOUT_MS));
    SET(CURLOPT_HTTPHEADER, x->hdr_nodes);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, (void *)x);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, (void *)x);
    SET(CURLOPT_ERRORBUFFER, x->err);
    if (c->addr_ok) {
        SET(CURLOPT_OPENSOCKETFUNCTION, on_open_socket);
        SET(CURLOPT_OPENSOCKETDATA, (void *)x);
    }
    /* A body for POST, PUT, PATCH and any method given one; GET, HEAD and
     * others without (no Content-Length: 0, no Content-Type). */
    bool post = !strcmp(method, "POST");
    if (post || r->body_len || !strcmp(method, "PUT") || !strcmp(method, "PATCH")) {
        SET(CURLOPT_POST, 1L);
        SET(CURLOPT_POSTFIELDS, (const char *)x->req_body);
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
        if (!post) SET(CURLOPT_CUSTOMREQUEST, method);
    } else if (!strcmp(method, "HEAD")) {
        SET(CURLOPT_NOBODY, 1L);
    } else if (strcmp(method, "GET")) {
        SET(CURLOPT_CUSTOMREQUEST, method);
    }
#undef SET
    return rc;
}

int cy_hc_send(cy_hc *c, const cy_hc_req *r, cy_hc_cb cb, void *arg, cy_hc_xfer **out)
{
    if (out) *out = NULL;
    if (!c || !r || !cb || !r->url || c->closing) return CY_EINVAL;
    if (strncasecmp(r->url, "http://", 7) && strncasecmp(r->url, "https://", 8)) return CY_EINVAL;
    const char *method = r->method ? r->method : "POST";
    if (!is_token(method)) return CY_EINVAL;
    if (r->body_len && !r->body) return CY_EINVAL;

    cy_hc_xfer *x = c->free.head;
    if (x) {
        xl_remove(&c->free, x);
        curl_easy_reset(x->easy);
    } else {
        x = cy_calloc(1, sizeof(*x));
        if (!x) return CY_ENOMEM;
        x->c = c;
        x->easy = curl_easy_init();
        if (!x->easy) {
            cy_free(x);
            return CY_ENOMEM;
        }
    }
    int rc = copy_request(c, x, r);
    if (rc) {
        recycle(c, x);
        return rc;
    }
    x->cb = cb;
    x->arg = arg;
    x->t0_ns = uv_hrtime();
    x->body_len = 0;
    x->has_retry_after = x->has_ctype = false;
    x->refused[0] = x->remote_ip[0] = x->err[0] = '\0';

    CURLcode cc = set_options(c, x, r, method);
    CURLMcode mc = CURLM_OK;
    if (cc == CURLE_OK) {
        mc = curl_multi_add_handle(c->multi, x->easy);
        if (mc == CURLM_OK) {
            x->state = X_LIVE;
            xl_append(&c->live, x);
            if (out) *out = x;
            return 0;
        }
    }
    /* curl refused it: the callback says so from a later turn. */
    if (cc != CURLE_OK)
        snprintf(x->err, sizeof(x->err), "curl refused the request: %s", curl_easy_strerror(cc));
    else
        snprintf(x->err, sizeof(x->err), "curl refused the request: %s", curl_multi_strerror(mc));
    x->state = X_DEFERRED;
    xl_append(&c->deferred, x);
    uv_timer_start(&c->defer_timer, on_defer, 0, 0);
    if (out) *out = x;
    return 0;
}

void cy_hc_cancel(cy_hc_xfer *x)
{
    if (!x) return;
    cy_hc *c = x->c;
    if (x->state == X_LIVE) {
        curl_multi_remove_handle(c->multi, x->easy);
        xl_remove(&c->live, x);
    } else if (x->state == X_DEFERRED) {
        xl_remove(&c->deferred, x);
    } else {
        return; /* its callback is running: nothing left to cancel */
    }
    fail_with(c, x, "cancelled");
}

size_t cy_hc_inflight(const cy_hc *c)
{
    return c->live.n + c->deferred.n;
}

/* ---- life ------------------------------------------------------------------- */

int cy_hc_new(uv_loop_t *loop, const cy_hc_config *cfg, cy_hc **out)
{
    *out = NULL;
    if (!loop) return CY_EINVAL;
    cy_hc_config none = {0};
    if (!cfg) cfg = &none;
    const char *ua = cfg->user_agent ? cfg->user_agent : "cyan";
    if (strpbrk(ua, "\r\n")) return CY_EINVAL;
    cy_hc *c = cy_calloc(1, sizeof(*c));
    if (!c) return CY_ENOMEM;
    c->loop = loop;
    c->body_keep = cfg->body_keep ? cfg->body_keep : DEFAULT_BODY_KEEP;
    c->addr_ok = cfg->addr_ok;
    c->addr_ctx = cfg->addr_ctx;
    size_t ual = strlen(ua);
    c->user_agent_hdr = cy_malloc(ual + sizeof("User-Agent: "));
    if (!c->user_agent_hdr) goto fail;
    memcpy(c->user_agent_hdr, "User-Agent: ", 12);
    memcpy(c->user_agent_hdr + 12, ua, ual + 1);
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) goto fail;
    c->global = true;
    c->multi = curl_multi_init();
    if (!c->multi) goto fail;
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c);
    curl_multi_setopt(c->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    /* Idle connections kept for reuse. curl's default (four per transfer
     * in progress) shrinks as a burst ends, closing connections the next
     * burst must open again. */
    curl_multi_setopt(c->multi, CURLMOPT_MAXCONNECTS, (long)CY_HC_IDLE_MAX);
    if (cfg->max_host_connections)
        curl_multi_setopt(c->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)cfg->max_host_connections);
    uv_timer_init(loop, &c->curl_timer);
    uv_timer_init(loop, &c->defer_timer);
    c->curl_timer.data = c;
    c->defer_timer.data = c;
    c->open_handles = 2;
    *out = c;
    return 0;
fail:
    if (c->multi) curl_multi_cleanup(c->multi);
    if (c->global) curl_global_cleanup();
    cy_free(c->user_agent_hdr);
    cy_free(c);
    return CY_ENOMEM;
}

void cy_hc_close(cy_hc *c, void (*cb)(void *arg), void *arg)
{
    if (!c || c->closing) return;
    c->closing = true;
    c->close_cb = cb;
    c->close_arg = arg;
    /* Callbacks run here may cancel others or try to send (refused). */
    while (c->live.head)
        cy_hc_cancel(c->live.head);
    while (c->deferred.head)
        cy_hc_cancel(c->deferred.head);
    cy_hc_xfer *x;
    while ((x = c->free.head) != NULL) {
        xl_remove(&c->free, x);
        xfer_free(x);
    }
    curl_multi_cleanup(c->multi); /* closes cached connections, may call on_socket */
    c->multi = NULL;
    for (size_t i = 0; i < c->nbyfd; i++)
        if (c->byfd[i]) uv_close((uv_handle_t *)&c->byfd[i]->poll, on_handle_closed);
    cy_free(c->byfd);
    c->byfd = NULL;
    c->nbyfd = 0;
    uv_timer_stop(&c->curl_timer);
    uv_timer_stop(&c->defer_timer);
    uv_close((uv_handle_t *)&c->curl_timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->defer_timer, on_handle_closed);
}
