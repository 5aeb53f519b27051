/* inspect: what the API shows of the webhooks, gathered from every shard's
 * file (cy_store_open_reader), as of each shard's last commit: a
 * webhook's figures (the sum of each shard's `shown`), its dead letters,
 * and the trace of one event.
 *
 * A shard's file is read while the shard writes it (SQLite WAL: readers
 * never block the writer nor see half a batch). A shard whose file cannot
 * be opened is listed as unreadable; the answer is still given.
 */
#include "webhooks/webhooks.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "webhooks/wh_int.h"

#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

static json_t *time_json(int64_t ms)
{
    char buf[CY_TIME_ISO_LEN];
    return cy_time_iso(ms, buf)[0] ? json_string(buf) : json_null();
}

static cy_store *open_shard(const cy_config *cfg, unsigned j)
{
    char path[1200];
    cy_webhooks_shard_path(cfg, j, path, sizeof(path));
    cy_store *r = NULL;
    if (cy_store_open_reader(path, &r)) return NULL;
    return r;
}

/* ---- figures ---- */

typedef struct shown_ctx {
    const char *hook;
    json_t *shown; /* the row's JSON, or NULL */
} shown_ctx;

static int shown_row(void *ctx, const cy_store_hook_state *h)
{
    shown_ctx *c = ctx;
    if (strcmp(h->hook, c->hook) != 0) return 0;
    c->shown = json_loads(h->shown, 0, NULL);
    return 1;
}

static int status_rank(const char *s)
{
    if (!s) return 0;
    if (!strcmp(s, "failing")) return 3;
    if (!strcmp(s, "degraded")) return 2;
    if (!strcmp(s, "disabled")) return 1;
    return 0;
}

static void add_u(json_t *sum, const json_t *from, const char *key)
{
    json_int_t v = json_integer_value(json_object_get(sum, key)) +
                   json_integer_value(json_object_get(from, key));
    json_object_set_new(sum, key, json_integer(v));
}

json_t *cy_webhooks_stats(const cy_config *cfg, unsigned nshards, const char *hook)
{
    static const char *const keys[] = {"matched", "delivered", "queued", "in_flight", "dead",
                                       "behind", "attempts"};
    json_t *sum = json_object();
    json_t *shards = json_array();
    if (!sum || !shards) {
        json_decref(sum);
        json_decref(shards);
        return NULL;
    }
    for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
        json_object_set_new(sum, keys[k], json_integer(0));
    const char *status = "healthy";
    json_int_t last_ok = 0, oldest = 0, last_err_at = 0;
    json_t *last_err = NULL;
    for (unsigned j = 0; j < nshards; j++) {
        cy_store *r = open_shard(cfg, j);
        shown_ctx c = {hook, NULL};
        if (r) cy_store_hook_states(r, shown_row, &c);
        cy_store_close(r);
        if (!c.shown) continue; /* this shard has not logged for it yet */
        for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++)
            add_u(sum, c.shown, keys[k]);
        const char *st = json_string_value(json_object_get(c.shown, "status"));
        if (status_rank(st) > status_rank(status)) status = st;
        json_int_t ok = json_integer_value(json_object_get(c.shown, "last_success_at"));
        if (ok > last_ok) last_ok = ok;
        json_int_t old = json_integer_value(json_object_get(c.shown, "oldest_undelivered_at"));
        if (old && (!oldest || old < oldest)) oldest = old;
        json_t *le = json_object_get(c.shown, "last_error");
        json_int_t at = json_integer_value(json_object_get(le, "at"));
        if (json_is_object(le) && at > last_err_at) {
            last_err_at = at;
            json_decref(last_err);
            last_err = json_deep_copy(le);
        }
        json_object_set_new(c.shown, "shard", json_integer(j));
        json_array_append_new(shards, c.shown);
    }
    json_object_set_new(sum, "status", json_string(status));
    json_object_set_new(sum, "last_success_at", last_ok ? time_json(last_ok) : json_null());
    if (last_err) {
        json_object_set_new(last_err, "at", time_json(last_err_at));
        json_object_set_new(sum, "last_error", last_err);
    } else {
        json_object_set_new(sum, "last_error", json_null());
    }
    json_object_set_new(sum, "oldest_undelivered_at", oldest ? time_json(oldest) : json_null());
    json_object_set_new(sum, "shards", shards);
    return sum;
}

/* ---- an event as JSON ---- */

static json_t *data_json(const uint8_t *p, size_t n, bool *b64)
{
    *b64 = false;
    json_t *d = json_stringn((const char *)p, n);
    if (d) return d;
    size_t m = 4 * ((n + 2) / 3) + 1;
    unsigned char *out = cy_malloc(m);
    if (!out) return json_null();
    EVP_EncodeBlock(out, p, (int)n);
    d = json_string((const char *)out);
    cy_free(out);
    *b64 = true;
    return d ? d : json_null();
}

static json_t *event_json(unsigned shard, uint64_t seq, int64_t at, const char *topic,
                          size_t topic_len, const uint8_t *payload, size_t payload_len)
{
    const char *name, *dev;
    size_t nl, dl;
    char id[48];
    snprintf(id, sizeof(id), "%u-%" PRIu64, shard, seq);
    json_t *o = json_pack("{s:s, s:o}", "event_id", id, "published_at", time_json(at));
    if (!o) return NULL;
    if (cy_webhooks_event_view(topic, topic_len, &name, &nl, &dev, &dl)) {
        json_object_set_new(o, "name", json_stringn(name, nl));
        json_object_set_new(o, "device_id", dev ? json_stringn(dev, dl) : json_null());
    }
    bool b64;
    json_object_set_new(o, "data", data_json(payload, payload_len, &b64));
    if (b64) json_object_set_new(o, "encoding", json_string("base64"));
    return o;
}

static json_t *trail_to_json(const char *trail)
{
    json_t *arr = trail ? json_loads(trail, 0, NULL) : NULL;
    if (!json_is_array(arr)) {
        json_decref(arr);
        return json_array();
    }
    size_t i;
    json_t *a;
    json_array_foreach(arr, i, a)
    {
        json_int_t at = json_integer_value(json_object_get(a, "at"));
        json_object_set_new(a, "at", time_json(at));
    }
    return arr;
}

/* ---- dead letters ---- */

typedef struct dead_ctx {
    unsigned shard;
    json_t *arr;
} dead_ctx;

static int dead_row(void *ctx, const cy_store_hook_row *r)
{
    dead_ctx *c = ctx;
    json_t *o = event_json(c->shard, r->seq, r->at, r->topic, r->topic_len, r->payload,
                           r->payload_len);
    if (!o) return CY_ENOMEM;
    json_object_set_new(o, "attempts", json_integer(r->attempts));
    json_object_set_new(o, "dead_at", time_json(r->next_at));
    json_object_set_new(o, "trail", trail_to_json(r->trail));
    json_array_append_new(c->arr, o);
    return 0;
}

json_t *cy_webhooks_dead_letters(const cy_config *cfg, unsigned nshards, const char *hook,
                                 unsigned limit)
{
    json_t *arr = json_array();
    if (!arr) return NULL;
    for (unsigned j = 0; j < nshards && json_array_size(arr) < limit; j++) {
        cy_store *r = open_shard(cfg, j);
        if (!r) continue;
        dead_ctx c = {j, arr};
        cy_store_hook_dead_list(r, hook, 0, limit - (unsigned)json_array_size(arr), dead_row, &c);
        cy_store_close(r);
    }
    return arr;
}

/* ---- the trace of one event ---- */

typedef struct trace_ctx {
    json_t *event;
    unsigned shard;
    uint64_t cursor;
    bool has_state;
    const char *hook;
    json_t *row; /* a retry or dead row as JSON */
} trace_ctx;

static int trace_event(void *ctx, const cy_store_event *e)
{
    trace_ctx *c = ctx;
    c->event = event_json(c->shard, e->seq, e->at, e->topic, e->topic_len, e->payload,
                          e->payload_len);
    return 0;
}

static int trace_state(void *ctx, const cy_store_hook_state *h)
{
    trace_ctx *c = ctx;
    if (strcmp(h->hook, c->hook) != 0) return 0;
    c->cursor = h->cursor;
    c->has_state = true;
    return 1;
}

static int trace_row(void *ctx, const cy_store_hook_row *r)
{
    trace_ctx *c = ctx;
    if (!c->event)
        c->event = event_json(c->shard, r->seq, r->at, r->topic, r->topic_len, r->payload,
                              r->payload_len);
    c->row = json_pack("{s:i, s:o}", "attempts", (int)r->attempts, "trail",
                       trail_to_json(r->trail));
    if (c->row) json_object_set_new(c->row, "at", time_json(r->next_at));
    return 0;
}

typedef struct hooks_ctx {
    cy_store *r;
    trace_ctx *t;
    uint64_t seq;
    json_t *list;
} hooks_ctx;

static int trace_hook(void *ctx, const cy_webhook *w)
{
    hooks_ctx *h = ctx;
    trace_ctx *t = h->t;
    t->hook = w->id;
    t->has_state = false;
    t->cursor = 0;
    cy_store_hook_states(h->r, trace_state, t);
    json_t *o = json_pack("{s:s}", "webhook_id", w->id);
    if (!o) return CY_ENOMEM;
    const char *state = NULL;
    t->row = NULL;
    if (cy_store_hook_dead_get(h->r, w->id, h->seq, trace_row, t) == 0) {
        state = "dead_lettered";
        json_object_set_new(t->row, "dead_at", json_object_get(t->row, "at"));
        json_incref(json_object_get(t->row, "at"));
        json_object_del(t->row, "at");
    } else if (cy_store_hook_retry_get(h->r, w->id, h->seq, trace_row, t) == 0) {
        state = "retrying";
        json_object_set_new(t->row, "next_attempt_at", json_object_get(t->row, "at"));
        json_incref(json_object_get(t->row, "at"));
        json_object_del(t->row, "at");
    }
    bool matched = false;
    if (t->event) {
        /* Whether its filters take the event (they may have changed since). */
        const char *name = json_string_value(json_object_get(t->event, "name"));
        const char *dev = json_string_value(json_object_get(t->event, "device_id"));
        char topic[1200];
        if (dev)
            snprintf(topic, sizeof(topic), "devices/%s/events/%s", dev, name ? name : "");
        else
            snprintf(topic, sizeof(topic), "events/%s", name ? name : "");
        matched = cy_wh_hook_matches(w, topic, strlen(topic));
    }
    if (!state) {
        if (!t->has_state)
            state = "not_seen"; /* the webhook was made after this shard last wrote */
        else if (!matched)
            state = "not_matched";
        else if (h->seq <= t->cursor)
            state = "delivered";
        else
            state = "pending"; /* queued, in flight, or just delivered: not yet settled */
    }
    json_object_set_new(o, "state", json_string(state));
    json_object_set_new(o, "matches", json_boolean(matched || t->row));
    if (t->row) json_object_update(o, t->row);
    json_decref(t->row);
    t->row = NULL;
    json_array_append_new(h->list, o);
    return 0;
}

int cy_webhooks_trace(const cy_config *cfg, unsigned nshards, cy_registry *registry,
                      const char *event_id, json_t **out)
{
    unsigned shard;
    uint64_t seq;
    *out = NULL;
    if (cy_webhooks_event_id_parse(event_id, &shard, &seq) || shard >= nshards) return CY_EINVAL;
    cy_store *r = open_shard(cfg, shard);
    if (!r) return CY_ENOENT;
    trace_ctx t = {.shard = shard};
    cy_store_event_get(r, seq, trace_event, &t);
    bool in_log = t.event != NULL;
    json_t *list = json_array();
    hooks_ctx h = {r, &t, seq, list};
    if (list && registry) cy_registry_webhook_list(registry, trace_hook, &h);
    cy_store_close(r);
    if (!t.event) {
        json_decref(list);
        return CY_ENOENT; /* never logged, or trimmed with no row left anywhere */
    }
    json_t *o = t.event;
    json_object_set_new(o, "shard", json_integer(shard));
    json_object_set_new(o, "in_log", json_boolean(in_log));
    json_object_set_new(o, "webhooks", list ? list : json_array());
    *out = o;
    return 0;
}
