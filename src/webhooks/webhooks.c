/* webhooks: the event log's numbering and one shard's webhook deliveries
 * (webhooks.h says what the cursor, the window and the retries are).
 *
 * The life of a matched event for one webhook, as an entry:
 *
 *   window:  WAIT -> FLIGHT -> OK                  (2xx)
 *                          -> DEAD                 (final answer, or too old)
 *                          -> PARKED (retry row)   (retryable failure)
 *            PARKED -> FLIGHT when its time comes (still in the window)
 *   settle:  the window's head leaves while it is OK, DEAD or PARKED; the
 *            cursor takes its seq; OK and DEAD fold into the settled
 *            counters, PARKED moves to the retry list (its row is settled
 *            from then on: matched = delivered + dead + retry rows).
 *   retries: WAIT -> FLIGHT -> gone (delivered, or dead-lettered) or WAIT
 *            again with a later next_at.
 *
 * An ordered webhook never parks: its head waits in the window until it is
 * delivered or dead, and nothing behind it is sent meanwhile.
 *
 * The counters shown (and kept in hook_state.shown for other processes):
 *   matched   = settled matched + window entries
 *   delivered = settled delivered + window OK
 *   dead      = settled dead + window DEAD
 *   in_flight = window FLIGHT + retries in flight
 *   queued    = window WAIT and PARKED + retries waiting
 * so matched = delivered + queued + in_flight + dead, always.
 */
#include "webhooks/webhooks.h"

#include "core/cy_alloc.h"
#include "core/cy_buf.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "http/client.h"
#include "router/msg.h"
#include "router/topic.h"
#include "store/space.h"
#include "webhooks/policy.h"
#include "webhooks/render.h"
#include "webhooks/sign.h"
#include "webhooks/wh_int.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void event_seal(void *ctx, cy_subscriber *s, cy_route *r);
static void event_deliver(void *ctx, cy_subscriber *s, const cy_route *r, const cy_match *x);
static void send_due(cy_webhooks *w, wh_hook *h, int64_t now);
static void tick_cb(uv_timer_t *t);

/* ---- entries ---- */

static wh_entry *entry_new(wh_hook *h, uint64_t seq, int64_t at, const char *topic,
                           size_t topic_len, const uint8_t *payload, size_t payload_len)
{
    wh_entry *e = cy_calloc(1, sizeof(*e) + topic_len + 1 + payload_len);
    if (!e) return NULL;
    e->h = h;
    e->seq = seq;
    e->at = at;
    e->topic = (char *)(e + 1);
    memcpy(e->topic, topic, topic_len);
    e->topic[topic_len] = '\0';
    e->topic_len = topic_len;
    e->payload = (uint8_t *)e->topic + topic_len + 1;
    if (payload_len) memcpy(e->payload, payload, payload_len);
    e->payload_len = payload_len;
    return e;
}

static void entry_free(wh_entry *e)
{
    cy_free(e);
}

/* Remember an attempt in the entry's trail (the last WH_TRAIL of them). */
static void trail_add(wh_entry *e, int64_t at, long status, const char *error)
{
    wh_attempt *a;
    if (e->n_trail < WH_TRAIL) {
        a = &e->trail[e->n_trail++];
    } else {
        memmove(&e->trail[0], &e->trail[1], sizeof(e->trail[0]) * (WH_TRAIL - 1));
        a = &e->trail[WH_TRAIL - 1];
    }
    a->at = at;
    a->status = status;
    snprintf(a->error, sizeof(a->error), "%.*s", (int)sizeof(a->error) - 1, error ? error : "");
}

/* The trail as JSON text (caller frees with free()). */
static char *trail_json(const wh_entry *e)
{
    json_t *arr = json_array();
    for (unsigned i = 0; arr && i < e->n_trail; i++) {
        const wh_attempt *a = &e->trail[i];
        json_t *o = json_pack("{s:I, s:I}", "at", (json_int_t)a->at, "status", (json_int_t)a->status);
        if (o && a->error[0]) json_object_set_new(o, "error", json_string(a->error));
        json_array_append_new(arr, o);
    }
    char *s = arr ? json_dumps(arr, JSON_COMPACT) : NULL;
    json_decref(arr);
    return s;
}

static void trail_load(wh_entry *e, const char *text)
{
    json_t *arr = text ? json_loads(text, 0, NULL) : NULL;
    size_t i;
    json_t *o;
    json_array_foreach(arr, i, o)
    {
        const char *err = json_string_value(json_object_get(o, "error"));
        trail_add(e, (int64_t)json_integer_value(json_object_get(o, "at")),
                  (long)json_integer_value(json_object_get(o, "status")), err);
    }
    json_decref(arr);
}

static cy_store_hook_row entry_row(const wh_entry *e, const char *trail, int64_t next_at)
{
    return (cy_store_hook_row){.hook = e->h->def.id,
                               .seq = e->seq,
                               .at = e->at,
                               .topic = e->topic,
                               .topic_len = e->topic_len,
                               .payload = e->payload,
                               .payload_len = e->payload_len,
                               .attempts = e->attempts,
                               .next_at = next_at,
                               .trail = trail ? trail : "[]"};
}

static int put_retry(cy_webhooks *w, wh_entry *e)
{
    char *t = trail_json(e);
    cy_store_hook_row r = entry_row(e, t, e->next_at);
    int rc = cy_store_hook_retry_put(w->store, &r);
    free(t);
    if (!rc) e->durable = true;
    return rc;
}

static int put_dead(cy_webhooks *w, wh_entry *e, int64_t now)
{
    char *t = trail_json(e);
    cy_store_hook_row r = entry_row(e, t, now);
    int rc = cy_store_hook_dead_put(w->store, &r);
    free(t);
    if (!rc && e->durable) rc = cy_store_hook_retry_delete(w->store, e->h->def.id, e->seq);
    e->durable = false;
    return rc;
}

/* ---- the event's view ---- */

/* Name and device of an event topic; false if it is not one. */
bool cy_webhooks_event_view(const char *t, size_t len, const char **name, size_t *name_len,
                      const char **device, size_t *device_len)
{
    if (len > 7 && memcmp(t, "events/", 7) == 0) {
        *name = t + 7;
        *name_len = len - 7;
        *device = NULL;
        *device_len = 0;
        return true;
    }
    if (len <= 8 || memcmp(t, "devices/", 8) != 0) return false;
    const char *id = t + 8;
    const char *slash = memchr(id, '/', len - 8);
    if (!slash) return false;
    size_t idl = (size_t)(slash - id);
    size_t rest = len - 8 - idl - 1;
    if (rest <= 7 || memcmp(slash + 1, "events/", 7) != 0) return false;
    *name = slash + 8;
    *name_len = rest - 7;
    *device = id;
    *device_len = idl;
    return true;
}

bool cy_wh_hook_matches(const cy_webhook *d, const char *topic, size_t topic_len)
{
    const char *name, *dev;
    size_t nl, dl;
    if (!cy_webhooks_event_view(topic, topic_len, &name, &nl, &dev, &dl)) return false;
    size_t pl = strlen(d->event);
    if (nl < pl || memcmp(name, d->event, pl) != 0) return false;
    if (d->device_id[0] && (!dev || dl != strlen(d->device_id) || memcmp(dev, d->device_id, dl)))
        return false;
    return true;
}

/* ---- the event log's subscriber ---- */

/* An internal device's event (devices/<id>/events/... of a canary). A
 * registry that cannot answer says no: better a canary's event logged than
 * a user's lost. */
static bool internal_event(cy_webhooks *w, const cy_msg *m)
{
    const char *name, *dev;
    size_t nl, dl;
    return cy_webhooks_event_view(m->topic, m->topic_len, &name, &nl, &dev, &dl) && dev &&
           cy_registry_device_internal(w->registry, dev, dl) == 1;
}

static void event_seal(void *ctx, cy_subscriber *s, cy_route *r)
{
    cy_webhooks *w = ctx;
    (void)s;
    if (r->from_peer || r->m->event_seq || internal_event(w, r->m)) return;
    uint64_t seq;
    /* While the disk is full, durable work is refused before it gets here
     * (store/space.h); a QoS 0 event is still routed and streamed, numbered
     * but not logged: no webhook gets it (at most once, as QoS 0 says). */
    if (r->m->qos == 0 && w->space && cy_space_full(w->space)) {
        r->m->event_seq = cy_store_event_number(w->store, cy_wall_ms());
        return;
    }
    /* A failed append fails the batch: the shard exits at its commit and
     * the publisher is never acknowledged (store.h). */
    if (cy_store_event_append(w->store, cy_wall_ms(), r->m->topic, r->m->topic_len,
                              r->m->payload, r->m->payload_len, &seq) == 0) {
        r->m->event_seq = seq;
        w->stats->events_logged++;
    }
}

static void event_deliver(void *ctx, cy_subscriber *s, const cy_route *r, const cy_match *x)
{
    cy_webhooks *w = ctx;
    (void)s;
    (void)x;
    if (!r->from_peer && r->m->event_seq) w->log_moved = true;
}

/* ---- definitions ---- */

static void hook_compiled_free(wh_hook *h)
{
    cy_wh_template_free(h->tmpl);
    h->tmpl = NULL;
    for (unsigned i = 0; i < h->n_headers; i++) {
        cy_free(h->header_names[i]);
        cy_free(h->header_values[i]);
    }
    cy_free(h->header_names);
    cy_free(h->header_values);
    h->header_names = h->header_values = NULL;
    h->n_headers = 0;
}

/* Copy a definition (strings duplicated) into dst, which owns them. */
static int def_copy(cy_webhook *dst, const cy_webhook *src)
{
    *dst = *src;
    dst->event = cy_strdup(src->event ? src->event : "");
    dst->url = cy_strdup(src->url ? src->url : "");
    dst->headers = src->headers ? cy_strdup(src->headers) : NULL;
    dst->body = src->body ? cy_strdup(src->body) : NULL;
    dst->response_topic = src->response_topic ? cy_strdup(src->response_topic) : NULL;
    dst->error_topic = src->error_topic ? cy_strdup(src->error_topic) : NULL;
    if (!dst->event || !dst->url || (src->headers && !dst->headers) || (src->body && !dst->body) ||
        (src->response_topic && !dst->response_topic) || (src->error_topic && !dst->error_topic)) {
        cy_webhook_fini(dst);
        return CY_ENOMEM;
    }
    return 0;
}

/* Compile the templates of h->def. A definition that does not compile
 * (the API checks them, so only a file edited by hand) is kept, paused,
 * with the reason logged once. */
static int hook_compile(wh_hook *h)
{
    hook_compiled_free(h);
    char why[160] = "";
    int rc = cy_wh_template_new((cy_wh_body_kind)h->def.body_kind, h->def.body, &h->tmpl, why,
                                sizeof(why));
    if (rc) {
        cy_warn(NULL, "webhook %s: its body template does not compile (%s): paused", h->def.id,
                why);
        return rc;
    }
    if (!h->def.headers) return 0;
    json_t *o = json_loads(h->def.headers, 0, NULL);
    if (!json_is_object(o)) {
        json_decref(o);
        return 0;
    }
    size_t n = json_object_size(o);
    h->header_names = cy_calloc(n ? n : 1, sizeof(char *));
    h->header_values = cy_calloc(n ? n : 1, sizeof(char *));
    if (!h->header_names || !h->header_values) {
        json_decref(o);
        return CY_ENOMEM;
    }
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        if (!json_is_string(v)) continue;
        h->header_names[h->n_headers] = cy_strdup(k);
        h->header_values[h->n_headers] = cy_strdup(json_string_value(v));
        if (!h->header_names[h->n_headers] || !h->header_values[h->n_headers]) {
            json_decref(o);
            return CY_ENOMEM;
        }
        if (strcasecmp(k, "Content-Type") == 0) h->own_content_type = true;
        h->n_headers++;
    }
    json_decref(o);
    return 0;
}

static wh_hook *hook_find(cy_webhooks *w, const char *id)
{
    for (wh_hook *h = w->hooks; h; h = h->next)
        if (strcmp(h->def.id, id) == 0) return h;
    return NULL;
}

/* ---- shown figures ---- */

void cy_wh_hook_counts(const wh_hook *h, wh_counts *c)
{
    c->matched = h->matched_c + h->n_window;
    c->delivered = h->delivered_c + h->n_ok;
    c->dead = h->dead_c + h->n_dead;
    c->in_flight = h->n_flight + h->n_retry_flight;
    c->queued = h->n_wait + h->n_park + (h->n_retry - h->n_retry_flight);
}

static const char *hook_status(const wh_hook *h)
{
    if (!h->def.enabled) return "disabled";
    if (h->circuit.state != CY_WH_CLOSED) return "failing";
    if (h->circuit.failures > 0 || h->n_retry > 0 || h->n_park > 0) return "degraded";
    return "healthy";
}

/* The oldest undelivered event's log time (0: none). */
static int64_t hook_oldest(const wh_hook *h)
{
    int64_t oldest = 0;
    for (wh_entry *e = h->win_head; e; e = e->next)
        if (e->state != WH_OK && e->state != WH_DEAD) {
            oldest = e->at;
            break;
        }
    for (wh_entry *e = h->retries; e; e = e->next)
        if (!oldest || e->at < oldest) oldest = e->at;
    if (h->behind_at && (!oldest || h->behind_at < oldest)) oldest = h->behind_at;
    return oldest;
}

static char *hook_shown(cy_webhooks *w, const wh_hook *h)
{
    wh_counts c;
    cy_wh_hook_counts(h, &c);
    json_t *o = json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s}", "status", hook_status(h),
                          "matched", (json_int_t)c.matched, "delivered",
                          (json_int_t)c.delivered, "queued", (json_int_t)c.queued, "in_flight",
                          (json_int_t)c.in_flight, "dead", (json_int_t)c.dead, "behind",
                          (json_int_t)h->behind, "attempts", (json_int_t)h->attempts_total,
                          "circuit",
                          h->circuit.state == CY_WH_CLOSED ? "closed"
                          : h->circuit.state == CY_WH_OPEN ? "open"
                                                           : "half_open");
    if (!o) return NULL;
    json_object_set_new(o, "cursor", json_integer((json_int_t)h->cursor));
    int64_t oldest = hook_oldest(h);
    json_object_set_new(o, "oldest_undelivered_at", oldest ? json_integer(oldest) : json_null());
    json_object_set_new(o, "last_success_at",
                        h->last_ok_at ? json_integer(h->last_ok_at) : json_null());
    if (h->last_err_at) {
        json_t *e = json_pack("{s:I, s:I, s:s}", "at", (json_int_t)h->last_err_at, "status",
                              (json_int_t)h->last_status, "error", h->last_error);
        json_object_set_new(o, "last_error", e);
    } else {
        json_object_set_new(o, "last_error", json_null());
    }
    json_object_set_new(o, "updated_at", json_integer(cy_wall_ms()));
    (void)w;
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return s;
}

/* Write h's state into the batch if it changed since the last write. */
static void hook_persist(cy_webhooks *w, wh_hook *h)
{
    if (!h->dirty) return;
    /* Only a change of settled rows must go in its own batch (persist_now);
     * the rest (the cursor, folds of the window) may lag: a crash then
     * reads a little more of the log again, and the rows past the cursor
     * are taken up as they were (the adoption map). So the state is written
     * at most every WH_PERSIST_MS, not in every pass. */
    int64_t mono = uv_now(w->loop);
    if (!h->persist_now && mono < h->next_persist) return;
    char *shown = hook_shown(w, h);
    if (!shown) return; /* out of memory: the next pass tries again */
    cy_store_hook_state st = {.hook = h->def.id,
                              .cursor = h->cursor,
                              .matched = h->matched_c,
                              .delivered = h->delivered_c,
                              .dead = h->dead_c,
                              .shown = shown};
    if (cy_store_hook_state_put(w->store, &st) == 0) {
        h->dirty = h->persist_now = false;
        h->next_persist = mono + WH_PERSIST_MS;
    }
    free(shown);
}

/* ---- the window ---- */

static void win_push(wh_hook *h, wh_entry *e)
{
    e->next = NULL;
    if (h->win_tail)
        h->win_tail->next = e;
    else
        h->win_head = e;
    h->win_tail = e;
    h->n_window++;
}

static void count_state(wh_hook *h, wh_entry *e, int delta)
{
    unsigned *n = NULL;
    if (e->in_retries) {
        if (e->state == WH_FLIGHT) h->n_retry_flight += (unsigned)delta;
        return;
    }
    switch (e->state) {
    case WH_WAIT: n = &h->n_wait; break;
    case WH_FLIGHT: n = &h->n_flight; break;
    case WH_OK: n = &h->n_ok; break;
    case WH_DEAD: n = &h->n_dead; break;
    case WH_PARKED: n = &h->n_park; break;
    }
    if (n) *n += (unsigned)delta;
}

static void set_state(wh_hook *h, wh_entry *e, int state)
{
    count_state(h, e, -1);
    e->state = (uint8_t)state;
    count_state(h, e, +1);
    h->dirty = true;
}

/* Settle the window's head (see the file comment). */
static void settle(wh_hook *h)
{
    while (h->win_head && h->win_head->state != WH_WAIT && h->win_head->state != WH_FLIGHT) {
        wh_entry *e = h->win_head;
        h->win_head = e->next;
        if (!h->win_head) h->win_tail = NULL;
        h->n_window--;
        count_state(h, e, -1);
        h->cursor = e->seq;
        h->matched_c++;
        h->dirty = true;
        if (e->state == WH_OK) {
            h->delivered_c++;
            entry_free(e);
        } else if (e->state == WH_DEAD) {
            h->dead_c++;
            entry_free(e);
        } else { /* PARKED: to the retries, its row settled from now on */
            e->in_retries = true;
            e->state = WH_WAIT;
            e->next = h->retries;
            h->retries = e;
            h->n_retry++;
        }
    }
    if (!h->win_head && h->cursor < h->scan) {
        h->cursor = h->scan;
        h->dirty = true;
    }
}

/* ---- reading the log into windows ---- */

typedef struct scan_ctx {
    cy_webhooks *w;
    wh_hook *h;
    unsigned taken;
} scan_ctx;

static int scan_row(void *ctx, const cy_store_event *ev)
{
    scan_ctx *c = ctx;
    wh_hook *h = c->h;
    h->scan = ev->seq;
    h->dirty = true;
    if (!cy_wh_hook_matches(&h->def, ev->topic, ev->topic_len)) return 0;
    wh_entry *e = entry_new(h, ev->seq, ev->at, ev->topic, ev->topic_len, ev->payload,
                            ev->payload_len);
    if (!e) return CY_ENOMEM;
    e->state = WH_WAIT;
    /* A row left by the run before the restart: take its place again. */
    wh_adopt *a = cy_wh_adopt_take(c->w, h->def.id, ev->seq);
    if (a) {
        e->attempts = a->attempts;
        e->next_at = a->next_at;
        if (a->trail) trail_load(e, a->trail);
        e->durable = a->kind == WH_ADOPT_RETRY;
        e->state = a->kind == WH_ADOPT_RETRY ? WH_PARKED : WH_DEAD;
        cy_wh_adopt_free(a);
    }
    win_push(h, e);
    count_state(h, e, +1);
    c->taken++;
    return 0;
}

/* Read what the log gained into h's window, up to its room. */
static void scan_hook(cy_webhooks *w, wh_hook *h)
{
    if (!h->def.enabled || h->broken) return;
    uint64_t last = cy_store_event_last(w->store);
    if (h->scan >= last) {
        h->behind = 0;
        h->behind_at = 0;
        return;
    }
    unsigned room = w->window_max > h->n_window ? w->window_max - h->n_window : 0;
    if (room) {
        scan_ctx c = {w, h, 0};
        /* Unmatched events cost a row read each: read in slices, at most a
         * few per pass, so a webhook with a narrow filter behind a busy log
         * catches up without a long pass. */
        for (int slice = 0; slice < 8 && c.taken < room && h->scan < last; slice++)
            if (cy_store_events_read(w->store, h->scan, room * 4 > 256 ? room * 4 : 256,
                                     scan_row, &c))
                break;
        settle(h);
    }
    if (h->scan >= last) {
        h->behind_at = 0;
        h->behind = 0;
        return;
    }
    /* A count walks the rows: once a second is enough for a figure. */
    int64_t mono = uv_now(w->loop);
    if (mono < h->behind_next) return;
    h->behind_next = mono + 1000;
    uint64_t n = 0;
    if (cy_store_events_span(w->store, h->scan, NULL, NULL, &n) == 0) h->behind = n;
    h->behind_at = (int64_t)((h->scan + 1) / 1000); /* seq ~ wall us: the next one's age */
}

/* ---- sending ---- */

static void on_answer(void *arg, const cy_hc_resp *resp);

/* Render, sign and send e. false if it could not be sent (it stays due). */
static bool send_entry(cy_webhooks *w, wh_hook *h, wh_entry *e, int64_t now)
{
    char id[48];
    snprintf(id, sizeof(id), "%u-%" PRIu64, w->self, e->seq);
    const char *name, *dev;
    size_t nl, dl;
    char device[CY_DEVICE_ID_LEN + 1] = "";
    if (!cy_webhooks_event_view(e->topic, e->topic_len, &name, &nl, &dev, &dl)) return false;
    if (dev && dl <= CY_DEVICE_ID_LEN) {
        memcpy(device, dev, dl);
        device[dl] = '\0';
    }
    cy_wh_event ev = {.id = id,
                      .name = name,
                      .name_len = nl,
                      .data = e->payload,
                      .data_len = e->payload_len,
                      .device_id = dev ? device : NULL,
                      .published_at = e->at};
    cy_buf *body = &w->body, *url = &w->url, *hdr = &w->hdr, *sig = &w->sig;
    cy_buf_reset(body);
    cy_buf_reset(url);
    cy_buf_reset(hdr);
    cy_buf_reset(sig);
    const char *ctype = NULL;
    int rc = cy_wh_render(h->tmpl, &ev, body, &ctype);
    rc = rc ? rc : cy_wh_render_text(h->def.url, &ev, true, url);
    rc = rc ? rc : cy_buf_append(url, "", 1);
    const char *secrets[2] = {h->def.secret,
                              h->def.old_secret[0] && cy_wall_ms() < h->def.old_secret_until
                                  ? h->def.old_secret
                                  : NULL};
    int64_t ts = cy_wall_ms() / 1000;
    rc = rc ? rc
            : cy_wh_sign(secrets, 2, id, ts, cy_buf_head(body), cy_buf_size(body), sig);
    rc = rc ? rc : cy_buf_append(sig, "", 1);
    if (rc) {
        /* A template that renders too long for this event: final. */
        trail_add(e, cy_wall_ms(), 0, rc == CY_ERANGE ? "rendered body too large" : "cannot render");
        e->render_failed = true;
        return false;
    }
    /* Header lines, each "Name: value", in one buffer; offsets first. */
    size_t offs[CY_WH_MAX_HEADERS + 6];
    unsigned n = 0;
    char line[256];
    if (!h->own_content_type && ctype) {
        offs[n++] = cy_buf_size(hdr);
        int k = snprintf(line, sizeof(line), "Content-Type: %s", ctype);
        cy_buf_append(hdr, line, (size_t)k + 1);
    }
    for (unsigned i = 0; i < h->n_headers && n < CY_WH_MAX_HEADERS; i++) {
        offs[n++] = cy_buf_size(hdr);
        cy_buf_append(hdr, h->header_names[i], strlen(h->header_names[i]));
        cy_buf_append(hdr, ": ", 2);
        cy_wh_render_text(h->header_values[i], &ev, false, hdr);
        cy_buf_append(hdr, "", 1);
    }
    offs[n++] = cy_buf_size(hdr);
    int k = snprintf(line, sizeof(line), "webhook-id: %s", id);
    cy_buf_append(hdr, line, (size_t)k + 1);
    offs[n++] = cy_buf_size(hdr);
    k = snprintf(line, sizeof(line), "webhook-timestamp: %" PRId64, ts);
    cy_buf_append(hdr, line, (size_t)k + 1);
    offs[n++] = cy_buf_size(hdr);
    cy_buf_append(hdr, "webhook-signature: ", 19);
    if (cy_buf_append(hdr, (const char *)cy_buf_head(sig), cy_buf_size(sig))) return false;
    const char *headers[CY_WH_MAX_HEADERS + 7];
    for (unsigned i = 0; i < n; i++)
        headers[i] = (const char *)cy_buf_head(hdr) + offs[i];
    headers[n] = NULL;
    bool no_body = strcmp(h->def.method, "GET") == 0;
    cy_hc_req req = {.method = h->def.method,
                     .url = (const char *)cy_buf_head(url),
                     .headers = headers,
                     .body = no_body ? NULL : cy_buf_head(body),
                     .body_len = no_body ? 0 : cy_buf_size(body),
                     .timeout_ms = w->cfg->webhook_timeout * 1000};
    if (cy_hc_send(w->hc, &req, on_answer, e, &e->xfer)) return false;
    set_state(h, e, WH_FLIGHT);
    e->attempts++;
    e->sent_at = now;
    h->inflight++;
    h->attempts_total++;
    w->stats->webhook_attempts++;
    return true;
}

bool cy_webhooks_topic_ok(const char *topic, size_t len, const char *device, const char **why)
{
    static const char *const convention[] = {"call", "get", "reply", "describe"};
    const char *w = NULL;
    if (len && topic[0] == '$') {
        w = "a '$' topic";
    } else if (cy_topic_reserved_event(topic, len)) {
        w = "an event name beginning with cyan/, which are cyan's own";
    } else if (len >= 8 && memcmp(topic, "devices/", 8) == 0) {
        const char *id = topic + 8, *end = topic + len;
        const char *slash = memchr(id, '/', (size_t)(end - id));
        size_t idl = (size_t)((slash ? slash : end) - id);
        const char *rest = slash ? slash + 1 : end;
        size_t rl = (size_t)(end - rest);
        if (!device || strlen(device) != idl || memcmp(id, device, idl) != 0) {
            w = "another device's space: under devices/ only the event's own device's "
                "(devices/{{device_id}}/...)";
        } else {
            for (size_t i = 0; i < sizeof(convention) / sizeof(convention[0]) && !w; i++) {
                size_t cl = strlen(convention[i]);
                if (rl >= cl && !memcmp(rest, convention[i], cl) && (rl == cl || rest[cl] == '/'))
                    w = "the device's call/, get/, reply/ or describe topics, which are the "
                        "API's and the device's";
            }
        }
    }
    if (w && why) *why = w;
    return w == NULL;
}

/* Publish text on the webhook's response or error topic for e (Particle's
 * hook-response and hook-error). */
static void publish_back(cy_webhooks *w, wh_hook *h, wh_entry *e, const char *tmpl,
                         const uint8_t *data, size_t len)
{
    if (!tmpl || !tmpl[0]) return;
    const char *name, *dev;
    size_t nl, dl;
    char device[CY_DEVICE_ID_LEN + 1] = "";
    char id[48];
    if (!cy_webhooks_event_view(e->topic, e->topic_len, &name, &nl, &dev, &dl)) return;
    if (dev && dl <= CY_DEVICE_ID_LEN) {
        memcpy(device, dev, dl);
        device[dl] = '\0';
    }
    snprintf(id, sizeof(id), "%u-%" PRIu64, w->self, e->seq);
    cy_wh_event ev = {.id = id, .name = name, .name_len = nl, .data = e->payload,
                      .data_len = e->payload_len, .device_id = dev ? device : NULL,
                      .published_at = e->at};
    cy_buf *t = &w->url;
    cy_buf_reset(t);
    if (cy_wh_render_text(tmpl, &ev, false, t)) return;
    size_t tl = cy_buf_size(t);
    const char *topic = (const char *)cy_buf_head(t);
    /* What the template made of the event (its name, its data: the
     * device's words) carries the receiver's text: never into a '$' space,
     * a status event (cyan/...), another device or a device's calls. */
    if (tl == 0 || tl > w->cfg->max_topic_length || !cy_topic_valid_name(topic, tl) ||
        !cy_webhooks_topic_ok(topic, tl, dev ? device : NULL, NULL))
        return;
    cy_msg *m = cy_msg_new(topic, tl, data, len, NULL, 0, 0, false, 0);
    if (!m) return;
    cy_router_publish(w->router, m, NULL, NULL, false);
    cy_msg_unref(m);
    (void)h;
}

/* The entry leaves the retries (delivered or dead). */
static void retries_remove(wh_hook *h, wh_entry *e)
{
    for (wh_entry **p = &h->retries; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            break;
        }
    h->n_retry--;
}

static void record_error(wh_hook *h, int64_t now, long status, const char *error)
{
    h->last_err_at = now;
    h->last_status = status;
    snprintf(h->last_error, sizeof(h->last_error), "%s", error ? error : "");
}

/* e is done for good: delivered (ok) or dead. */
static void finish(cy_webhooks *w, wh_hook *h, wh_entry *e, bool ok, int64_t now)
{
    if (ok) {
        if (e->durable) cy_store_hook_retry_delete(w->store, h->def.id, e->seq);
        e->durable = false;
        w->stats->webhook_delivered++;
    } else {
        put_dead(w, e, now);
        w->stats->webhook_dead++;
    }
    if (e->in_retries) {
        count_state(h, e, -1);
        retries_remove(h, e);
        if (ok)
            h->delivered_c++;
        else
            h->dead_c++;
        /* The row was settled: matched stays, retry rows fall by one;
         * the counters go in this batch with the row's deletion. */
        h->dirty = true;
        h->persist_now = true;
        entry_free(e);
        return;
    }
    set_state(h, e, ok ? WH_OK : WH_DEAD);
    settle(h);
}

static void on_answer(void *arg, const cy_hc_resp *resp)
{
    wh_entry *e = arg;
    wh_hook *h = e->h;
    cy_webhooks *w = h->w;
    e->xfer = NULL;
    h->inflight--;
    w->due = true; /* room for the next request: this pass's end sends it */
    if (w->stopping || h->removed) {
        /* Cancelled: the event stays where it was (sent again after the
         * restart, or forgotten with its webhook). */
        count_state(h, e, -1);
        e->state = e->durable && !e->in_retries ? WH_PARKED : WH_WAIT;
        count_state(h, e, +1);
        e->attempts--;
        if (h->removed) cy_wh_hook_release(w, h);
        return;
    }
    int64_t now = cy_wall_ms();
    int64_t mono = uv_now(w->loop);
    cy_wh_verdict v = cy_wh_classify(resp->status);
    char err[128];
    if (resp->status == 0)
        snprintf(err, sizeof(err), "%s", resp->error && resp->error[0] ? resp->error : "no answer");
    else
        snprintf(err, sizeof(err), "HTTP %ld", resp->status);
    trail_add(e, now, resp->status, v == CY_WH_DELIVERED ? NULL : err);
    cy_wh_circuit_result(&h->circuit, v != CY_WH_RETRY, mono);
    h->dirty = true;
    if (v == CY_WH_DELIVERED) {
        h->last_ok_at = now;
        publish_back(w, h, e, h->def.response_topic, resp->body, resp->body_len);
        finish(w, h, e, true, now);
        w->progress = true;
        return;
    }
    record_error(h, now, resp->status, err);
    if (v == CY_WH_RETRY) {
        w->stats->webhook_failures++;
        int64_t wait = cy_wh_backoff_ms(e->attempts, w->cfg->webhook_retry_base,
                                        (double)rand() / ((double)RAND_MAX + 1.0));
        int64_t ra = cy_wh_retry_after_ms(resp->retry_after, now);
        if (ra > wait) wait = ra;
        e->next_at = now + wait;
        if (e->next_at - e->at <= (int64_t)w->cfg->webhook_max_age * 1000) {
            if (e->in_retries || (!h->def.ordered && put_retry(w, e) == 0)) {
                if (e->in_retries) put_retry(w, e);
                count_state(h, e, -1);
                e->state = e->in_retries ? WH_WAIT : WH_PARKED;
                count_state(h, e, +1);
                if (!e->in_retries) settle(h);
            } else {
                set_state(h, e, WH_WAIT); /* ordered: the head waits in place */
            }
            return;
        }
        trail_add(e, now, 0, "webhook_max_age passed");
    }
    /* Final: dead-letter it. */
    char payload[256];
    int k = snprintf(payload, sizeof(payload), "{\"event_id\":\"%u-%" PRIu64 "\",\"status\":%ld,\"error\":\"%s\"}",
                     w->self, e->seq, resp->status, v == CY_WH_RETRY ? "expired" : err);
    publish_back(w, h, e, h->def.error_topic, (const uint8_t *)payload, (size_t)k);
    finish(w, h, e, false, now);
    if (v == CY_WH_GONE) {
        cy_info(NULL, "webhook %s answered 410 Gone: disabled", h->def.id);
        cy_registry_webhook_set_enabled(w->registry, h->def.id, false, "410 Gone");
        h->def.enabled = false;
        snprintf(h->def.disabled_reason, sizeof(h->def.disabled_reason), "410 Gone");
        w->defs_dirty = true;
    }
}

/* Send what is due for h, within its concurrency and its circuit. */
static void send_due(cy_webhooks *w, wh_hook *h, int64_t now)
{
    if (!h->def.enabled || h->broken || !w->hc) return;
    unsigned limit = h->def.ordered ? 1 : w->cfg->webhook_concurrency;
    int64_t mono = uv_now(w->loop);
    while (h->inflight < limit) {
        wh_entry *e = NULL;
        if (h->def.ordered) {
            e = h->win_head;
            if (!e && !h->inflight) e = h->retries;
            if (e && (e->state == WH_FLIGHT || e->state == WH_OK || e->state == WH_DEAD)) e = NULL;
        } else {
            for (wh_entry *x = h->win_head; x && !e; x = x->next)
                if ((x->state == WH_WAIT || x->state == WH_PARKED) && x->next_at <= now &&
                    !x->render_failed)
                    e = x;
            for (wh_entry *x = h->retries; x && !e; x = x->next)
                if (x->state == WH_WAIT && x->next_at <= now && !x->render_failed) e = x;
        }
        if (!e || e->next_at > now) return;
        bool probe = false;
        if (!cy_wh_circuit_allow(&h->circuit, mono, &probe)) return;
        if (!send_entry(w, h, e, now)) {
            if (e->render_failed) {
                record_error(h, now, 0, "cannot render the request");
                finish(w, h, e, false, now);
                continue;
            }
            /* Could not start (out of memory): undo the circuit's probe. */
            if (probe) h->circuit.probing = false;
            return;
        }
    }
}

/* ---- the pass ---- */

static void all_pass(cy_webhooks *w, int64_t now)
{
    for (wh_hook *h = w->hooks; h; h = h->next) {
        scan_hook(w, h);
        send_due(w, h, now);
        hook_persist(w, h);
    }
}

void cy_webhooks_pass(void *arg)
{
    cy_webhooks *w = arg;
    if (!w->started || w->stopping) return;
    if (!w->log_moved && !w->due) return;
    w->log_moved = false;
    w->due = false;
    all_pass(w, cy_wall_ms());
}

uint64_t cy_webhooks_owed(const cy_webhooks *w)
{
    if (!w) return 0;
    uint64_t owed = 0;
    int64_t now = cy_wall_ms();
    for (const wh_hook *h = w->hooks; h; h = h->next) {
        if (!h->def.enabled || h->broken || h->circuit.state != CY_WH_CLOSED) continue;
        unsigned limit = h->def.ordered ? 1 : w->cfg->webhook_concurrency;
        if (h->inflight >= limit) continue;
        for (const wh_entry *e = h->win_head; e; e = e->next)
            if (e->state == WH_WAIT && e->next_at <= now) owed++;
    }
    return owed;
}

/* ---- the tick: retries coming due, definitions, trimming, figures ---- */

static void update_metrics(cy_webhooks *w, int64_t now)
{
    uint64_t pending = 0;
    int64_t oldest = 0;
    for (wh_hook *h = w->hooks; h; h = h->next) {
        wh_counts c;
        cy_wh_hook_counts(h, &c);
        pending += c.queued + c.in_flight;
        int64_t o = hook_oldest(h);
        if (o && (!oldest || o < oldest)) oldest = o;
    }
    w->stats->webhook_pending = pending;
    w->stats->webhook_oldest_seconds = oldest && now > oldest ? (uint64_t)(now - oldest) / 1000 : 0;
}

static void trim(cy_webhooks *w, int64_t now)
{
    uint64_t below = cy_store_event_last(w->store);
    for (wh_hook *h = w->hooks; h; h = h->next)
        if (h->cursor < below) below = h->cursor;
    /* The cursor itself was passed: trim what is below cursor + 1. */
    /* At least as many as were logged since the last trim, twice over, so
     * trimming keeps up with the log at any rate. */
    uint64_t logged = w->stats->events_logged - w->trim_logged;
    w->trim_logged = w->stats->events_logged;
    unsigned rows = logged * 2 > WH_TRIM_ROWS ? (unsigned)(logged * 2) : WH_TRIM_ROWS;
    cy_store_events_trim(w->store, below + 1, now - (int64_t)w->cfg->event_retention * 1000,
                         w->cfg->event_log_keep, rows);
}

static void tick_cb(uv_timer_t *t)
{
    cy_webhooks *w = t->data;
    if (w->stopping) return;
    int64_t now = cy_wall_ms();
    int64_t mono = uv_now(w->loop);
    if (mono >= w->next_defs_check || w->defs_dirty) {
        w->next_defs_check = mono + WH_DEFS_CHECK_MS;
        w->defs_dirty = false;
        cy_wh_defs_check(w);
    }
    all_pass(w, now);
    if (mono >= w->next_trim) {
        w->next_trim = mono + WH_TRIM_MS;
        trim(w, now);
    }
    update_metrics(w, now);
}

/* ---- life ---- */

int cy_webhooks_new(const cy_webhooks_deps *d, cy_webhooks **out)
{
    if (!d || !out || !d->store || !d->router || !d->cfg || !d->stats) return CY_EINVAL;
    *out = NULL;
    cy_webhooks *w = cy_calloc(1, sizeof(*w));
    if (!w) return CY_ENOMEM;
    w->loop = d->loop;
    w->cfg = d->cfg;
    w->store = d->store;
    w->registry = d->registry;
    w->router = d->router;
    w->stats = d->stats;
    w->space = d->space;
    w->self = d->self;
    w->nshards = d->nshards;
    w->window_max = 4 * d->cfg->webhook_concurrency;
    if (w->window_max < 64) w->window_max = 64;
    cy_buf_init(&w->body);
    cy_buf_init(&w->url);
    cy_buf_init(&w->hdr);
    cy_buf_init(&w->sig);
    cy_map_init(&w->adopt);
    w->kind = (cy_sub_kind){.name = "eventlog", .deliver = event_deliver, .seal = event_seal,
                            .ctx = w};
    cy_subscriber_init(&w->sub, &w->kind);
    static const char *const filters[] = {"devices/+/events/#", "events/#"};
    int rc = 0;
    for (unsigned i = 0; i < 2 && !rc; i++)
        rc = cy_router_subscribe(d->router, &w->sub, filters[i], strlen(filters[i]), 0, 0, NULL);
    if (!rc) rc = cy_wh_state_load(w);
    if (rc) {
        cy_webhooks_free(w);
        return rc;
    }
    *out = w;
    return 0;
}

static bool addr_ok(void *ctx, const struct sockaddr *sa)
{
    cy_webhooks *w = ctx;
    return w->cfg->webhook_allow_private || !cy_wh_addr_private(sa);
}

int cy_webhooks_start(cy_webhooks *w)
{
    cy_hc_config hc = {.user_agent = "cyan-webhooks",
                       .body_keep = WH_RESPONSE_KEEP,
                       .addr_ok = addr_ok,
                       .addr_ctx = w};
    int rc = cy_hc_new(w->loop, &hc, &w->hc);
    if (rc) return rc;
    uv_timer_init(w->loop, &w->tick);
    w->tick.data = w;
    w->tick_init = true;
    uv_timer_start(&w->tick, tick_cb, WH_TICK_MS, WH_TICK_MS);
    w->started = true;
    cy_wh_defs_check(w);
    w->log_moved = true;
    return 0;
}

static void closed_cb(uv_handle_t *h)
{
    (void)h;
}

void cy_webhooks_stop(cy_webhooks *w)
{
    if (!w || w->stopping) return;
    w->stopping = true;
    if (w->hc) {
        cy_hc_close(w->hc, NULL, NULL); /* cancels: on_answer puts entries back */
        w->hc = NULL;
    }
    if (w->tick_init) {
        uv_timer_stop(&w->tick);
        uv_close((uv_handle_t *)&w->tick, closed_cb);
        w->tick_init = false;
    }
}

void cy_webhooks_free(cy_webhooks *w)
{
    if (!w) return;
    static const char *const filters[] = {"devices/+/events/#", "events/#"};
    for (unsigned i = 0; i < 2; i++)
        cy_router_unsubscribe(w->router, &w->sub, filters[i], strlen(filters[i]));
    while (w->hooks) {
        wh_hook *h = w->hooks;
        w->hooks = h->next;
        cy_wh_hook_destroy(h);
    }
    cy_wh_adopt_clear(w);
    cy_map_fini(&w->adopt);
    cy_buf_fini(&w->body);
    cy_buf_fini(&w->url);
    cy_buf_fini(&w->hdr);
    cy_buf_fini(&w->sig);
    cy_free(w);
}

void cy_webhooks_shard_path(const cy_config *cfg, unsigned shard, char *buf, size_t len)
{
    snprintf(buf, len, "%s/shard-%u.db", cfg->data_dir, shard);
}

int cy_webhooks_event_id_parse(const char *id, unsigned *shard, uint64_t *seq)
{
    if (!id || !shard || !seq) return CY_EINVAL;
    char *end;
    if (id[0] < '0' || id[0] > '9') return CY_EINVAL;
    unsigned long s = strtoul(id, &end, 10);
    if (*end != '-' || s >= CY_SB_MAX_SHARDS || end[1] < '0' || end[1] > '9') return CY_EINVAL;
    unsigned long long q = strtoull(end + 1, &end, 10);
    if (*end || q == 0) return CY_EINVAL;
    *shard = (unsigned)s;
    *seq = q;
    return 0;
}

/* ---- used by defs.c ---- */

int cy_wh_hook_compile(wh_hook *h)
{
    int rc = hook_compile(h);
    h->broken = rc != 0;
    return rc;
}

int cy_wh_def_copy(cy_webhook *dst, const cy_webhook *src)
{
    return def_copy(dst, src);
}

void cy_wh_hook_compiled_free(wh_hook *h)
{
    hook_compiled_free(h);
}

void cy_wh_hook_persist(cy_webhooks *w, wh_hook *h)
{
    hook_persist(w, h);
}

void cy_wh_hook_send_due(cy_webhooks *w, wh_hook *h)
{
    send_due(w, h, cy_wall_ms());
}

void cy_wh_entry_free(wh_entry *e)
{
    entry_free(e);
}

wh_entry *cy_wh_entry_new(wh_hook *h, const cy_store_hook_row *r)
{
    wh_entry *e = entry_new(h, r->seq, r->at, r->topic, r->topic_len, r->payload, r->payload_len);
    if (!e) return NULL;
    e->attempts = r->attempts;
    e->next_at = r->next_at;
    trail_load(e, r->trail);
    return e;
}

wh_hook *cy_wh_hook_find(cy_webhooks *w, const char *id)
{
    return hook_find(w, id);
}
