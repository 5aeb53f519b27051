/* defs: the webhook definitions a shard delivers to, and the state each
 * takes up again after a restart.
 *
 * Definitions live in the registry (store/hooks.h). A shard reads their
 * generation every WH_DEFS_CHECK_MS and, when it moved, the whole list: a
 * new webhook gets a hook here (with the state this shard saved for it, if
 * any: its cursor, settled counters, retry rows, and the rows past its
 * cursor that the scan will take up again: the adoption map), a changed one
 * its new definition, and a deleted one is forgotten here and in the store.
 * The same check takes this shard's dead-letter replay requests.
 *
 * A webhook this shard has never seen starts at its creation time in the
 * log: it gets every event logged from its creation on, though the shard
 * learns of it up to WH_DEFS_CHECK_MS later.
 */
#include "webhooks/wh_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* ---- the adoption map ---- */

static int adopt_key(char *buf, size_t len, const char *hook, uint64_t seq)
{
    return snprintf(buf, len, "%s/%" PRIu64, hook, seq);
}

static int adopt_put(cy_webhooks *w, const cy_store_hook_row *r, int kind)
{
    char key[64];
    int k = adopt_key(key, sizeof(key), r->hook, r->seq);
    wh_adopt *a = cy_calloc(1, sizeof(*a));
    if (!a) return CY_ENOMEM;
    a->kind = kind;
    a->attempts = r->attempts;
    a->next_at = r->next_at;
    a->trail = r->trail ? cy_strdup(r->trail) : NULL;
    wh_adopt *old = cy_map_get(&w->adopt, key, (size_t)k);
    if (old) cy_wh_adopt_free(old);
    if (cy_map_put(&w->adopt, key, (size_t)k, a)) {
        cy_wh_adopt_free(a);
        return CY_ENOMEM;
    }
    return 0;
}

wh_adopt *cy_wh_adopt_take(cy_webhooks *w, const char *hook, uint64_t seq)
{
    if (!w->adopt.count) return NULL;
    char key[64];
    int k = adopt_key(key, sizeof(key), hook, seq);
    return cy_map_del(&w->adopt, key, (size_t)k);
}

void cy_wh_adopt_free(wh_adopt *a)
{
    if (!a) return;
    cy_free(a->trail);
    cy_free(a);
}

static void adopt_free_cb(void *ctx, void *value)
{
    (void)ctx;
    cy_wh_adopt_free(value);
}

void cy_wh_adopt_clear(cy_webhooks *w)
{
    cy_map_each(&w->adopt, adopt_free_cb, NULL);
    cy_map_fini(&w->adopt);
    cy_map_init(&w->adopt);
}

int cy_wh_state_load(cy_webhooks *w)
{
    (void)w; /* each hook loads its own state when its definition is first seen */
    return 0;
}

/* ---- one hook's saved state ---- */

typedef struct load_ctx {
    cy_webhooks *w;
    wh_hook *h;
    bool found;
    int rc;
} load_ctx;

static int state_row(void *ctx, const cy_store_hook_state *s)
{
    load_ctx *c = ctx;
    if (strcmp(s->hook, c->h->def.id) != 0) return 0;
    c->found = true;
    c->h->cursor = c->h->scan = s->cursor;
    c->h->matched_c = s->matched;
    c->h->delivered_c = s->delivered;
    c->h->dead_c = s->dead;
    return 0;
}

static int retry_row(void *ctx, const cy_store_hook_row *r)
{
    load_ctx *c = ctx;
    wh_hook *h = c->h;
    if (strcmp(r->hook, h->def.id) != 0) return 0;
    if (r->seq > h->cursor) return adopt_put(c->w, r, WH_ADOPT_RETRY);
    wh_entry *e = cy_wh_entry_new(h, r);
    if (!e) return CY_ENOMEM;
    e->in_retries = true;
    e->durable = true;
    e->state = WH_WAIT;
    e->next = h->retries;
    h->retries = e;
    h->n_retry++;
    return 0;
}

static int dead_row(void *ctx, const cy_store_hook_row *r)
{
    load_ctx *c = ctx;
    return adopt_put(c->w, r, WH_ADOPT_DEAD);
}

static wh_hook *hook_new(cy_webhooks *w, const cy_webhook *def)
{
    wh_hook *h = cy_calloc(1, sizeof(*h));
    if (!h) return NULL;
    h->w = w;
    if (cy_wh_def_copy(&h->def, def)) {
        cy_free(h);
        return NULL;
    }
    cy_wh_circuit_init(&h->circuit);
    cy_wh_hook_compile(h);
    load_ctx c = {w, h, false, 0};
    int rc = cy_store_hook_states(w->store, state_row, &c);
    if (!rc && c.found) rc = cy_store_hook_retries(w->store, retry_row, &c);
    if (!rc && c.found) {
        /* Dead letters past the cursor: the window had them when the shard
         * stopped (a window's worth at most). */
        uint64_t after = h->cursor;
        rc = cy_store_hook_dead_list(w->store, h->def.id, after, 1u << 20, dead_row, &c);
    }
    if (rc) {
        cy_warn(NULL, "webhook %s: its saved state cannot be read (%s): starting at the log's end",
                h->def.id, cy_strerror(rc));
    }
    if (!c.found || rc) {
        /* From its creation on: every event logged since has a number at
         * or above its creation time in microseconds (a number is never
         * below its log time), whenever this shard learns of it. */
        uint64_t last = cy_store_event_last(w->store);
        uint64_t from = def->created_at > 0 ? (uint64_t)def->created_at * 1000 : 0;
        h->cursor = h->scan = from && from - 1 < last ? from - 1 : last;
        h->dirty = true;
    }
    return h;
}

void cy_wh_hook_destroy(wh_hook *h)
{
    if (!h) return;
    for (wh_entry *e = h->win_head, *n; e; e = n) {
        n = e->next;
        cy_wh_entry_free(e);
    }
    for (wh_entry *e = h->retries, *n; e; e = n) {
        n = e->next;
        cy_wh_entry_free(e);
    }
    cy_wh_hook_compiled_free(h);
    cy_webhook_fini(&h->def);
    cy_free(h);
}

void cy_wh_hook_release(cy_webhooks *w, wh_hook *h)
{
    (void)w;
    if (h->inflight == 0) cy_wh_hook_destroy(h);
}

/* Forget h: out of the list, its requests cancelled, its rows deleted. */
static void hook_remove(cy_webhooks *w, wh_hook *h)
{
    for (wh_hook **p = &w->hooks; *p; p = &(*p)->next)
        if (*p == h) {
            *p = h->next;
            break;
        }
    cy_store_hook_forget(w->store, h->def.id);
    cy_info(NULL, "webhook %s deleted: forgot its state on this shard", h->def.id);
    h->removed = true;
    if (!h->inflight) {
        cy_wh_hook_destroy(h);
        return;
    }
    /* Cancel each in-flight request; the last callback frees h. Collect
     * them first: a callback may free h. */
    unsigned n = h->inflight;
    cy_hc_xfer **xs = cy_calloc(n, sizeof(*xs));
    if (!xs) return; /* out of memory: they end by themselves, freeing h */
    unsigned k = 0;
    for (wh_entry *e = h->win_head; e && k < n; e = e->next)
        if (e->xfer) xs[k++] = e->xfer;
    for (wh_entry *e = h->retries; e && k < n; e = e->next)
        if (e->xfer) xs[k++] = e->xfer;
    for (unsigned i = 0; i < k; i++)
        cy_hc_cancel(xs[i]);
    cy_free(xs);
}

/* ---- the definitions ---- */

typedef struct defs_ctx {
    cy_webhooks *w;
    uint64_t mark;
} defs_ctx;

static int def_seen(void *ctx, const cy_webhook *d)
{
    defs_ctx *c = ctx;
    cy_webhooks *w = c->w;
    wh_hook *h = cy_wh_hook_find(w, d->id);
    if (!h) {
        h = hook_new(w, d);
        if (!h) return 0; /* out of memory: the next check tries again */
        h->next = w->hooks;
        w->hooks = h;
    } else if (d->updated_at != h->def.updated_at || d->enabled != h->def.enabled) {
        cy_webhook copy;
        if (cy_wh_def_copy(&copy, d) == 0) {
            cy_webhook_fini(&h->def);
            h->def = copy;
            cy_wh_hook_compile(h);
            h->dirty = true;
        }
    }
    h->seen_mark = c->mark; /* seen in this listing */
    return 0;
}

/* ---- dead-letter replays ---- */

typedef struct replay_ctx {
    cy_webhooks *w;
    wh_hook *h;
    uint64_t last;
    unsigned n;
} replay_ctx;

/* One dead letter back to the retries, due now. */
static int replay_row(void *ctx, const cy_store_hook_row *r)
{
    replay_ctx *c = ctx;
    wh_hook *h = c->h;
    c->last = r->seq;
    c->n++;
    /* Still in the window (not yet settled): it turns PARKED in place. */
    for (wh_entry *e = h->win_head; e; e = e->next) {
        if (e->seq != r->seq) continue;
        if (e->state != WH_DEAD) return 0;
        e->next_at = 0;
        e->attempts = 0;
        if (cy_store_hook_dead_delete(c->w->store, h->def.id, r->seq)) return 0;
        h->n_dead--;
        e->state = WH_PARKED;
        h->n_park++;
        /* Its row: put_retry's work, done here with the row we have. */
        cy_store_hook_row row = *r;
        row.attempts = 0;
        row.next_at = 0;
        if (cy_store_hook_retry_put(c->w->store, &row) == 0) e->durable = true;
        h->dirty = true;
        return 0;
    }
    if (r->seq > h->cursor) return 0; /* neither settled nor in the window: gone */
    wh_entry *e = cy_wh_entry_new(h, r);
    if (!e) return CY_ENOMEM;
    e->attempts = 0;
    e->next_at = 0;
    cy_store_hook_row row = *r;
    row.attempts = 0;
    row.next_at = 0;
    if (cy_store_hook_retry_put(c->w->store, &row) ||
        cy_store_hook_dead_delete(c->w->store, h->def.id, r->seq)) {
        cy_wh_entry_free(e);
        return 0; /* the batch fails: the shard exits at its commit */
    }
    e->durable = true;
    e->in_retries = true;
    e->state = WH_WAIT;
    e->next = h->retries;
    h->retries = e;
    h->n_retry++;
    h->dead_c--;
    h->dirty = true;
    h->persist_now = true; /* with the rows, in this batch */
    return 0;
}

static int replay_req(void *ctx, const char *id, uint64_t seq)
{
    cy_webhooks *w = ctx;
    wh_hook *h = cy_wh_hook_find(w, id);
    if (!h) return 0;
    replay_ctx c = {w, h, 0, 0};
    if (seq) {
        cy_store_hook_dead_get(w->store, id, seq, replay_row, &c);
    } else {
        /* Pages of 1000, from where the last one ended. */
        unsigned n;
        do {
            n = c.n;
            cy_store_hook_dead_list(w->store, id, c.last, 1000, replay_row, &c);
        } while (c.n - n == 1000);
    }
    if (c.n) cy_info(NULL, "webhook %s: %u dead letters replayed", id, c.n);
    w->due = true;
    return 0;
}

void cy_wh_defs_check(cy_webhooks *w)
{
    if (!w->registry) return;
    uint64_t gen = 0;
    if (cy_registry_webhooks_gen(w->registry, &gen)) return;
    if (w->defs_loaded && gen == w->defs_gen) return;
    defs_ctx c = {w, ++w->defs_mark};
    if (cy_registry_webhook_list(w->registry, def_seen, &c)) return; /* next check tries again */
    w->defs_gen = gen;
    w->defs_loaded = true;
    for (wh_hook *h = w->hooks, *n; h; h = n) {
        n = h->next;
        if (h->seen_mark != c.mark) hook_remove(w, h);
    }
    cy_registry_webhook_replays_take(w->registry, w->self, replay_req, w);
    w->log_moved = true;
}
