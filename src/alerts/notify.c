/* notify: see notify.h. libcurl's multi interface on the libuv loop, the
 * usual way (curl's multi-uv example):
 *
 *   curl -> on_socket(fd, what)   start/stop a uv_poll_t on fd (one `sock`
 *                                 per fd, attached with curl_multi_assign)
 *   curl -> on_timer(ms)          (re)arm curl_timer, or stop it (-1)
 *   uv   -> on_poll / on_curl_timeout -> curl_multi_socket_action, then
 *           drain curl_multi_info_read for finished transfers (done()).
 *
 * curl_multi_socket_action is never called from inside a curl callback
 * (curl forbids it): a timeout of 0 goes through the uv timer.
 *
 * Deliveries (`job`) wait in one list ordered by when they were first
 * queued (seq), whether new or between attempts, so "drop the oldest" is
 * the head. pump() starts the due ones up to max_inflight and arms
 * retry_timer for the next due time. */
#include "alerts/notify.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <curl/curl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

typedef struct body {
    size_t refs;
    size_t len;
    char data[]; /* len bytes and a NUL */
} body;

typedef struct job {
    struct job *prev, *next; /* in wait or inflight */
    cy_notify *n;
    body *b;
    size_t url;        /* receiver index */
    uint64_t seq;      /* order of first queueing */
    uint32_t attempts; /* made so far */
    uint64_t due;      /* uv_now ms when it may start */
    CURL *easy;        /* while in flight */
    char err[CURL_ERROR_SIZE];
} job;

typedef struct sock {
    uv_poll_t poll;
    curl_socket_t fd;
    cy_notify *n;
    struct sock *prev, *next; /* every open poll handle, to close at the end */
} sock;

typedef struct jlist {
    job *head, *tail;
    size_t n;
} jlist;

struct cy_notify {
    uv_loop_t *loop;
    CURLM *multi;
    uv_timer_t curl_timer, retry_timer;
    char **urls;
    size_t nurls;
    size_t queue_max, max_inflight;
    uint32_t timeout_ms, retry_base_ms, max_attempts;
    char *user_agent;
    struct curl_slist *headers;
    jlist wait, inflight;
    sock *socks;
    uint64_t seq;
    cy_notify_counters c;
    int open_handles; /* uv handles not yet closed */
    bool closing, global;
    void (*close_cb)(void *);
    void *close_arg;
};

static void pump(cy_notify *n);

/* ---- lists ---------------------------------------------------------------- */

static void jl_remove(jlist *l, job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        l->head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        l->tail = j->prev;
    j->prev = j->next = NULL;
    l->n--;
}

static void jl_append(jlist *l, job *j)
{
    j->next = NULL;
    j->prev = l->tail;
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
    l->n++;
}

/* Insert by seq (a retried job goes back to its place: it is old news). */
static void jl_insert_seq(jlist *l, job *j)
{
    job *at = l->tail;
    while (at && at->seq > j->seq)
        at = at->prev;
    if (!at) {
        j->prev = NULL;
        j->next = l->head;
        if (l->head)
            l->head->prev = j;
        else
            l->tail = j;
        l->head = j;
    } else {
        j->prev = at;
        j->next = at->next;
        if (at->next)
            at->next->prev = j;
        else
            l->tail = j;
        at->next = j;
    }
    l->n++;
}

static void job_free(job *j)
{
    if (j->b && --j->b->refs == 0) cy_free(j->b);
    cy_free(j);
}

/* The receiver as logs show it: without its query (tokens live there). */
static void url_for_log(const char *url, char *out, size_t len)
{
    size_t l = strcspn(url, "?#");
    if (l >= len) l = len - 1;
    memcpy(out, url, l);
    out[l] = '\0';
}

/* ---- closing ------------------------------------------------------------- */

static void finish_close(cy_notify *n)
{
    void (*cb)(void *) = n->close_cb;
    void *arg = n->close_arg;
    for (size_t i = 0; i < n->nurls; i++)
        cy_free(n->urls[i]);
    cy_free(n->urls);
    cy_free(n->user_agent);
    if (n->headers) curl_slist_free_all(n->headers);
    if (n->global) curl_global_cleanup();
    cy_free(n);
    if (cb) cb(arg);
}

static void on_handle_closed(uv_handle_t *h)
{
    cy_notify *n;
    if (h->type == UV_POLL) {
        sock *s = h->data;
        n = s->n;
        cy_free(s);
    } else {
        n = h->data;
    }
    if (--n->open_handles == 0 && n->closing) finish_close(n);
}

static void sock_close(cy_notify *n, sock *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        n->socks = s->next;
    if (s->next) s->next->prev = s->prev;
    s->prev = s->next = NULL;
    uv_close((uv_handle_t *)&s->poll, on_handle_closed);
}

/* ---- curl <-> uv ---------------------------------------------------------- */

static void check_done(cy_notify *n);

static void on_poll(uv_poll_t *h, int status, int events)
{
    sock *s = h->data;
    cy_notify *n = s->n;
    int flags = 0;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        if (events & UV_READABLE) flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE) flags |= CURL_CSELECT_OUT;
    }
    int running;
    curl_multi_socket_action(n->multi, s->fd, flags, &running);
    check_done(n);
}

static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    cy_notify *n = userp;
    sock *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            uv_poll_stop(&s->poll);
            curl_multi_assign(n->multi, fd, NULL);
            sock_close(n, s);
        }
        return 0;
    }
    if (!s) {
        s = cy_calloc(1, sizeof(*s));
        if (!s) return -1;
        if (uv_poll_init_socket(n->loop, &s->poll, fd) != 0) {
            cy_free(s);
            return -1;
        }
        s->poll.data = s;
        s->fd = fd;
        s->n = n;
        s->next = n->socks;
        if (n->socks) n->socks->prev = s;
        n->socks = s;
        n->open_handles++;
        curl_multi_assign(n->multi, fd, s);
    }
    int ev = 0;
    if (what & CURL_POLL_IN) ev |= UV_READABLE;
    if (what & CURL_POLL_OUT) ev |= UV_WRITABLE;
    return uv_poll_start(&s->poll, ev, on_poll) == 0 ? 0 : -1;
}

static void on_curl_timeout(uv_timer_t *t)
{
    cy_notify *n = t->data;
    int running;
    curl_multi_socket_action(n->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_done(n);
}

static int on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    cy_notify *n = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&n->curl_timer);
    else if (!n->closing)
        uv_timer_start(&n->curl_timer, on_curl_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

static size_t discard(char *p, size_t size, size_t nmemb, void *userp)
{
    (void)p;
    (void)userp;
    return size * nmemb;
}

/* ---- deliveries ------------------------------------------------------------ */

/* One attempt over: decide. res/code: curl's result and the HTTP status. */
static void outcome(cy_notify *n, job *j, CURLcode res, long code)
{
    if (res == CURLE_OK && code >= 200 && code < 300) {
        n->c.sent++;
        job_free(j);
        return;
    }
    bool retry = res != CURLE_OK || code == 408 || code == 429 || code >= 500;
    if (retry && j->attempts < n->max_attempts) {
        uint32_t shift = j->attempts - 1 < 20 ? j->attempts - 1 : 20;
        j->due = uv_now(n->loop) + ((uint64_t)n->retry_base_ms << shift);
        jl_insert_seq(&n->wait, j);
        return;
    }
    char u[256], why[CURL_ERROR_SIZE + 32];
    url_for_log(n->urls[j->url], u, sizeof(u));
    if (res != CURLE_OK)
        snprintf(why, sizeof(why), "%s", j->err[0] ? j->err : curl_easy_strerror(res));
    else
        snprintf(why, sizeof(why), "HTTP %ld", code);
    cy_warn(NULL, "notify: %s: gave up on a notification after %u attempt%s: %s", u, j->attempts,
            j->attempts == 1 ? "" : "s", why);
    n->c.failed++;
    job_free(j);
}

static void check_done(cy_notify *n)
{
    CURLMsg *m;
    int left;
    while ((m = curl_multi_info_read(n->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE) continue;
        CURL *easy = m->easy_handle;
        CURLcode res = m->data.result;
        job *j = NULL;
        long code = 0;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&j);
        curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &code);
        curl_multi_remove_handle(n->multi, easy);
        curl_easy_cleanup(easy);
        j->easy = NULL;
        jl_remove(&n->inflight, j);
        outcome(n, j, res, code);
    }
    pump(n);
}

/* Start one attempt of j (not in any list). */
static void start(cy_notify *n, job *j)
{
    j->attempts++;
    n->c.attempts++;
    if (j->attempts > 1) n->c.retries++;
    j->err[0] = '\0';
    CURL *e = curl_easy_init();
    if (!e) {
        snprintf(j->err, sizeof(j->err), "curl_easy_init failed");
        outcome(n, j, CURLE_OUT_OF_MEMORY, 0);
        return;
    }
    CURLcode rc = CURLE_OK;
#define SET(opt, val)                                                                              \
    if (rc == CURLE_OK) rc = curl_easy_setopt(e, opt, val)
    SET(CURLOPT_URL, n->urls[j->url]);
    SET(CURLOPT_POST, 1L);
    SET(CURLOPT_POSTFIELDS, (const char *)&j->b->data[0]);
    SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)j->b->len);
    SET(CURLOPT_HTTPHEADER, n->headers);
    SET(CURLOPT_USERAGENT, n->user_agent);
    SET(CURLOPT_TIMEOUT_MS, (long)n->timeout_ms);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)n->timeout_ms);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_WRITEFUNCTION, discard);
    SET(CURLOPT_ERRORBUFFER, j->err);
    SET(CURLOPT_PRIVATE, (void *)j);
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
#else
    SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
#undef SET
    if (rc == CURLE_OK) {
        j->easy = e;
        jl_append(&n->inflight, j);
        if (curl_multi_add_handle(n->multi, e) == CURLM_OK) return;
        jl_remove(&n->inflight, j);
        j->easy = NULL;
        rc = CURLE_OUT_OF_MEMORY;
    }
    curl_easy_cleanup(e);
    outcome(n, j, rc, 0);
}

static void on_retry_timer(uv_timer_t *t)
{
    pump(t->data);
}

static void pump(cy_notify *n)
{
    if (n->closing) return;
    uint64_t now = uv_now(n->loop);
    while (n->inflight.n < n->max_inflight) {
        job *j = n->wait.head;
        while (j && j->due > now)
            j = j->next;
        if (!j) break;
        jl_remove(&n->wait, j);
        start(n, j); /* may put it back (a failed start), due later */
    }
    uint64_t next = UINT64_MAX;
    if (n->inflight.n < n->max_inflight)
        for (job *j = n->wait.head; j; j = j->next)
            if (j->due < next) next = j->due;
    if (next == UINT64_MAX)
        uv_timer_stop(&n->retry_timer);
    else
        uv_timer_start(&n->retry_timer, on_retry_timer, next > now ? next - now : 0, 0);
}

/* ---- the interface --------------------------------------------------------- */

int cy_notify_new(cy_notify **out, uv_loop_t *loop, const cy_notify_config *cfg)
{
    *out = NULL;
    if (!cfg || cfg->n_urls == 0 || !cfg->urls) return CY_EINVAL;
    for (size_t i = 0; i < cfg->n_urls; i++)
        if (!cfg->urls[i] ||
            (strncmp(cfg->urls[i], "http://", 7) && strncmp(cfg->urls[i], "https://", 8)))
            return CY_EINVAL;
    cy_notify *n = cy_calloc(1, sizeof(*n));
    if (!n) return CY_ENOMEM;
    n->loop = loop;
    n->queue_max = cfg->queue_max ? cfg->queue_max : CY_NOTIFY_QUEUE_MAX;
    n->max_inflight = cfg->max_inflight ? cfg->max_inflight : CY_NOTIFY_INFLIGHT_MAX;
    n->timeout_ms = cfg->timeout_ms ? cfg->timeout_ms : CY_NOTIFY_TIMEOUT_MS;
    n->retry_base_ms = cfg->retry_base_ms ? cfg->retry_base_ms : CY_NOTIFY_RETRY_BASE_MS;
    n->max_attempts = cfg->max_attempts ? cfg->max_attempts : CY_NOTIFY_MAX_ATTEMPTS;
    n->user_agent = cy_strdup(cfg->user_agent ? cfg->user_agent : "cyan-monitor");
    n->urls = cy_calloc(cfg->n_urls, sizeof(char *));
    if (!n->user_agent || !n->urls) goto fail;
    for (n->nurls = 0; n->nurls < cfg->n_urls; n->nurls++) {
        n->urls[n->nurls] = cy_strdup(cfg->urls[n->nurls]);
        if (!n->urls[n->nurls]) goto fail;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) goto fail;
    n->global = true;
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    if (!h) goto fail;
    n->headers = h;
    /* No "Expect: 100-continue" round trip for bodies over 1 KiB. */
    h = curl_slist_append(n->headers, "Expect:");
    if (!h) goto fail;
    n->multi = curl_multi_init();
    if (!n->multi) goto fail;
    curl_multi_setopt(n->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
    curl_multi_setopt(n->multi, CURLMOPT_SOCKETDATA, n);
    curl_multi_setopt(n->multi, CURLMOPT_TIMERFUNCTION, on_timer);
    curl_multi_setopt(n->multi, CURLMOPT_TIMERDATA, n);
    uv_timer_init(loop, &n->curl_timer);
    uv_timer_init(loop, &n->retry_timer);
    n->curl_timer.data = n;
    n->retry_timer.data = n;
    n->open_handles = 2;
    *out = n;
    return 0;
fail:
    if (n->multi) curl_multi_cleanup(n->multi);
    for (size_t i = 0; i < n->nurls; i++)
        cy_free(n->urls[i]);
    cy_free(n->urls);
    cy_free(n->user_agent);
    if (n->headers) curl_slist_free_all(n->headers);
    if (n->global) curl_global_cleanup();
    cy_free(n);
    return CY_ENOMEM;
}

int cy_notify_send(cy_notify *n, const char *data, size_t len)
{
    if (n->closing) return CY_EINVAL;
    body *b = cy_malloc(sizeof(*b) + len + 1);
    if (!b) return CY_ENOMEM;
    memcpy(b->data, data, len);
    b->data[len] = '\0';
    b->len = len;
    b->refs = 0;
    job **js = cy_calloc(n->nurls, sizeof(*js));
    if (!js) {
        cy_free(b);
        return CY_ENOMEM;
    }
    for (size_t i = 0; i < n->nurls; i++) {
        js[i] = cy_calloc(1, sizeof(job));
        if (!js[i]) {
            for (size_t k = 0; k < i; k++)
                cy_free(js[k]);
            cy_free(js);
            cy_free(b);
            return CY_ENOMEM;
        }
    }
    uint64_t now = uv_now(n->loop);
    for (size_t i = 0; i < n->nurls; i++) {
        if (n->wait.n >= n->queue_max) {
            job *old = n->wait.head;
            char u[256];
            url_for_log(n->urls[old->url], u, sizeof(u));
            cy_warn(NULL,
                    "notify: %s: queue full (%zu waiting): dropped the oldest notification "
                    "(%u attempt%s made)",
                    u, n->wait.n, old->attempts, old->attempts == 1 ? "" : "s");
            jl_remove(&n->wait, old);
            job_free(old);
            n->c.dropped++;
        }
        job *j = js[i];
        j->n = n;
        j->b = b;
        b->refs++;
        j->url = i;
        j->seq = ++n->seq;
        j->due = now;
        jl_append(&n->wait, j);
    }
    cy_free(js);
    pump(n);
    return 0;
}

void cy_notify_counters_get(const cy_notify *n, cy_notify_counters *c)
{
    *c = n->c;
    c->queued = n->wait.n + n->inflight.n;
}

void cy_notify_close(cy_notify *n, void (*cb)(void *arg), void *arg)
{
    if (n->closing) return;
    n->closing = true;
    n->close_cb = cb;
    n->close_arg = arg;
    job *j;
    while ((j = n->inflight.head) != NULL) {
        jl_remove(&n->inflight, j);
        curl_multi_remove_handle(n->multi, j->easy); /* may close polls via on_socket */
        curl_easy_cleanup(j->easy);
        n->c.cancelled++;
        job_free(j);
    }
    while ((j = n->wait.head) != NULL) {
        jl_remove(&n->wait, j);
        n->c.cancelled++;
        job_free(j);
    }
    curl_multi_cleanup(n->multi); /* closes cached connections, may call on_socket */
    n->multi = NULL;
    while (n->socks) {
        uv_poll_stop(&n->socks->poll);
        sock_close(n, n->socks);
    }
    uv_timer_stop(&n->curl_timer);
    uv_timer_stop(&n->retry_timer);
    uv_close((uv_handle_t *)&n->curl_timer, on_handle_closed);
    uv_close((uv_handle_t *)&n->retry_timer, on_handle_closed);
}
