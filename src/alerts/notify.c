/* notify: see notify.h. The HTTP is http/client's (cy_hc: libcurl's multi
 * socket interface on the loop, connections kept alive); this file is the
 * queue, the retries and the counting.
 *
 * Deliveries (`job`) wait in one list ordered by when they were first
 * queued (seq), whether new or between attempts, so "drop the oldest" is
 * the head. pump() starts the due ones up to max_inflight and arms
 * retry_timer for the next due time. A job in flight has its cy_hc request;
 * the client's callback (on_answer) decides (outcome). */
#include "alerts/notify.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "http/client.h"

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
} job;

typedef struct jlist {
    job *head, *tail;
    size_t n;
} jlist;

struct cy_notify {
    uv_loop_t *loop;
    cy_hc *hc;
    uv_timer_t retry_timer;
    char **urls;
    size_t nurls;
    size_t queue_max, max_inflight;
    uint32_t timeout_ms, retry_base_ms, max_attempts;
    jlist wait, inflight;
    uint64_t seq;
    cy_notify_counters c;
    int open; /* the timer and the client, not yet closed */
    bool closing;
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

static void closed_one(cy_notify *n)
{
    if (--n->open > 0) return;
    void (*cb)(void *) = n->close_cb;
    void *arg = n->close_arg;
    for (size_t i = 0; i < n->nurls; i++)
        cy_free(n->urls[i]);
    cy_free(n->urls);
    cy_free(n);
    if (cb) cb(arg);
}

static void on_timer_closed(uv_handle_t *h)
{
    closed_one(h->data);
}

static void on_hc_closed(void *arg)
{
    closed_one(arg);
}

/* ---- deliveries ------------------------------------------------------------ */

/* One attempt over: decide. status: the HTTP status, 0 for no answer (why). */
static void outcome(cy_notify *n, job *j, long status, const char *why)
{
    if (status >= 200 && status < 300) {
        n->c.sent++;
        job_free(j);
        return;
    }
    bool retry = status == 0 || status == 408 || status == 429 || status >= 500;
    if (retry && j->attempts < n->max_attempts) {
        uint32_t shift = j->attempts - 1 < 20 ? j->attempts - 1 : 20;
        j->due = uv_now(n->loop) + ((uint64_t)n->retry_base_ms << shift);
        jl_insert_seq(&n->wait, j);
        return;
    }
    char u[256], text[320];
    url_for_log(n->urls[j->url], u, sizeof(u));
    if (status == 0)
        snprintf(text, sizeof(text), "%s", why && why[0] ? why : "no answer");
    else
        snprintf(text, sizeof(text), "HTTP %ld", status);
    cy_warn(NULL, "notify: %s: gave up on a notification after %u attempt%s: %s", u, j->attempts,
            j->attempts == 1 ? "" : "s", text);
    n->c.failed++;
    job_free(j);
}

static void on_answer(void *arg, const cy_hc_resp *r)
{
    job *j = arg;
    cy_notify *n = j->n;
    jl_remove(&n->inflight, j);
    if (n->closing) { /* cancelled by cy_notify_close */
        n->c.cancelled++;
        job_free(j);
        return;
    }
    outcome(n, j, r->status, r->error);
    pump(n);
}

static const char *const json_headers[] = {"Content-Type: application/json", NULL};

/* Start one attempt of j (not in any list). */
static void start(cy_notify *n, job *j)
{
    j->attempts++;
    n->c.attempts++;
    if (j->attempts > 1) n->c.retries++;
    cy_hc_req req = {.method = "POST",
                     .url = n->urls[j->url],
                     .headers = json_headers,
                     .body = (const uint8_t *)j->b->data,
                     .body_len = j->b->len,
                     .timeout_ms = n->timeout_ms};
    jl_append(&n->inflight, j);
    int rc = cy_hc_send(n->hc, &req, on_answer, j, NULL);
    if (rc == 0) return;
    jl_remove(&n->inflight, j);
    outcome(n, j, 0, cy_strerror(rc));
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
    n->urls = cy_calloc(cfg->n_urls, sizeof(char *));
    if (!n->urls) goto fail;
    for (n->nurls = 0; n->nurls < cfg->n_urls; n->nurls++) {
        n->urls[n->nurls] = cy_strdup(cfg->urls[n->nurls]);
        if (!n->urls[n->nurls]) goto fail;
    }
    cy_hc_config hcfg = {.user_agent = cfg->user_agent ? cfg->user_agent : "cyan-monitor"};
    int rc = cy_hc_new(loop, &hcfg, &n->hc);
    if (rc) {
        for (size_t i = 0; i < n->nurls; i++)
            cy_free(n->urls[i]);
        cy_free(n->urls);
        cy_free(n);
        return rc;
    }
    uv_timer_init(loop, &n->retry_timer);
    n->retry_timer.data = n;
    n->open = 2;
    *out = n;
    return 0;
fail:
    for (size_t i = 0; i < n->nurls; i++)
        cy_free(n->urls[i]);
    cy_free(n->urls);
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
    while ((j = n->wait.head) != NULL) {
        jl_remove(&n->wait, j);
        n->c.cancelled++;
        job_free(j);
    }
    uv_timer_stop(&n->retry_timer);
    uv_close((uv_handle_t *)&n->retry_timer, on_timer_closed);
    /* Runs on_answer for each in flight (counted cancelled there). */
    cy_hc_close(n->hc, on_hc_closed, n);
}
