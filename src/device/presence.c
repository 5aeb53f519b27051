/* presence: who is online, since when, when last heard, and the status
 * events that tell the node when a device goes online or offline (device.h,
 * "presence"; docs/architecture.md, "Presence").
 *
 * The idea needed to read this file: a change of a device's state becomes
 * at most one *record* (dev_status) in the shard's queue, and the tick logs
 * records at presence_event_rate per second, each as an event of the device
 * named cyan/status published into the router (so the event log numbers
 * it, and streams and webhooks get it like any event). A device that
 * changes faster than its own limit (CY_PRESENCE_BURST at once, then one
 * per presence_flap_interval: cy_presence_allow) is *held* instead: its
 * changes only bump a count, and when its limit allows, one record says the
 * state it is in then, if that differs from what its last record said
 * (`announced`), with the count of the changes it stands for. So the queue
 * holds a few records per device at most, and the last status event of a
 * device always says its state.
 *
 * Rows (store.h, cy_store_presence_*): a device's last heard and last round
 * trip live in memory (last heard read from its link while it has one) and
 * are written to the shard's store in the batch of each status event that
 * is logged, and otherwise by the sweep every presence_flush_interval for
 * the devices whose times moved: a crash loses at most that interval of
 * them, never a write per packet. The row also says whether the last
 * status event *logged* for the device said online (logged_online); a
 * restart finds the rows that do and tells the node those devices went
 * offline (reason shard_restart), since a restart ends every session.
 */
#include "device/device_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "core/cy_reason.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* A held device whose record cannot be queued (a full queue, no memory) is
 * looked at again this much later. */
#define HOLD_RETRY_MS 1000

/* ---- pure parts ---- */

static const char *const reason_names[CY_PRESENCE_NREASONS] = {
    [CY_PRESENCE_CONNECT] = "connect",
    [CY_PRESENCE_DISCONNECT] = "disconnect",
    [CY_PRESENCE_CONNECTION_LOST] = "connection_lost",
    [CY_PRESENCE_KEEPALIVE_TIMEOUT] = "keepalive_timeout",
    [CY_PRESENCE_TAKEOVER] = "takeover",
    [CY_PRESENCE_PROTOCOL_ERROR] = "protocol_error",
    [CY_PRESENCE_LIMIT] = "limit",
    [CY_PRESENCE_DELETED] = "deleted",
    [CY_PRESENCE_SHUTDOWN] = "shutdown",
    [CY_PRESENCE_SHARD_RESTART] = "shard_restart",
    [CY_PRESENCE_SERVER_ERROR] = "server_error",
};

const char *cy_presence_reason_name(int r)
{
    return r >= 0 && r < CY_PRESENCE_NREASONS ? reason_names[r] : "unknown";
}

cy_presence_reason cy_presence_reason_of(uint8_t code, bool goodbye)
{
    switch (code) {
    case 0x8D:
        return CY_PRESENCE_KEEPALIVE_TIMEOUT;
    case CY_REASON_TAKEN_OVER:
        return CY_PRESENCE_TAKEOVER;
    case 0x8B:
        return CY_PRESENCE_SHUTDOWN; /* Server shutting down */
    case CY_REASON_QUOTA_EXCEEDED:
        return CY_PRESENCE_LIMIT;
    case 0x80: /* Unspecified error (out of memory) */
    case 0x83: /* Implementation specific error */
    case 0x88: /* Server unavailable */
    case 0x89: /* Server busy */
        return CY_PRESENCE_SERVER_ERROR;
    default:
        if (code >= 0x80) return CY_PRESENCE_PROTOCOL_ERROR;
        return goodbye ? CY_PRESENCE_DISCONNECT : CY_PRESENCE_CONNECTION_LOST;
    }
}

bool cy_presence_allow(int64_t *tat, int64_t now, int64_t interval_ms, unsigned burst,
                       int64_t *retry_at)
{
    if (interval_ms <= 0) return true;
    if (burst == 0) burst = 1;
    int64_t t = *tat > now ? *tat : now;
    int64_t slack = (int64_t)(burst - 1) * interval_ms;
    if (t - now > slack) {
        if (retry_at) *retry_at = t - slack;
        return false;
    }
    *tat = t + interval_ms;
    return true;
}

/* A JSON string of an ISO time into buf, or null for 0. */
static const char *json_time(int64_t ms, char *buf, size_t cap)
{
    char iso[CY_TIME_ISO_LEN];
    if (!cy_time_iso(ms, iso)[0]) return "null";
    snprintf(buf, cap, "\"%s\"", iso);
    return buf;
}

/* A protocol name is ours ("mqtt5", "coaps"): shown only if it needs no
 * escaping, so the data stays valid JSON whatever a transport says. */
static bool plain(const char *p)
{
    if (!p || !*p || strlen(p) > 16) return false;
    for (; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '.' || *p == '-'))
            return false;
    return true;
}

int cy_presence_payload(char *buf, size_t cap, bool online, int reason, const char *protocol,
                        int64_t at, int64_t last_heard, uint32_t coalesced)
{
    char a[CY_TIME_ISO_LEN + 2], h[CY_TIME_ISO_LEN + 2], p[24];
    if (plain(protocol))
        snprintf(p, sizeof(p), "\"%s\"", protocol);
    else
        snprintf(p, sizeof(p), "null");
    int n = snprintf(buf, cap,
                     "{\"status\":\"%s\",\"reason\":\"%s\",\"protocol\":%s,\"at\":%s,"
                     "\"last_heard\":%s,\"coalesced\":%" PRIu32 "}",
                     online ? "online" : "offline", cy_presence_reason_name(reason), p,
                     json_time(at, a, sizeof(a)), json_time(last_heard, h, sizeof(h)), coalesced);
    if (n < 0 || (size_t)n >= cap) return CY_ERANGE;
    return n;
}

/* ---- records ---- */

void cy_presence_init(cy_devices *d)
{
    cy_map_init(&d->presence);
    d->started = cy_mono_ms();
    d->flush_at = d->started + (int64_t)d->cfg->presence_flush_interval * 1000;
}

dev_presence *cy_presence_get(cy_devices *d, const char *id, size_t len, bool create)
{
    dev_presence *pr = cy_map_get(&d->presence, id, len);
    if (pr || !create || len > CY_DEVICE_ID_LEN) return pr;
    pr = cy_calloc(1, sizeof(*pr));
    if (!pr) return NULL;
    memcpy(pr->id, id, len);
    if (cy_map_put(&d->presence, pr->id, len, pr)) {
        cy_free(pr);
        return NULL;
    }
    return pr;
}

static int64_t wall_of_mono(cy_devices *d, int64_t mono_ms)
{
    return cy_wall_ms() - ((int64_t)uv_now(d->loop) - mono_ms);
}

/* Its last heard now: from its link while it has one. */
static int64_t heard_of(cy_devices *d, const dev_presence *pr)
{
    const cy_link *l = pr->link;
    return l ? wall_of_mono(d, l->ops->last_heard(l)) : pr->last_heard;
}

static void put_row(cy_devices *d, dev_presence *pr)
{
    int64_t heard = heard_of(d, pr);
    cy_store_presence row = {
        .id = pr->id,
        .online = pr->logged_online,
        .protocol = pr->protocol,
        .last_heard = heard,
        .last_rtt = pr->last_rtt,
    };
    /* A failed write fails the batch; the shard exits at its commit. */
    if (cy_store_presence_put(d->store, &row) == 0) {
        pr->saved_heard = heard;
        pr->saved_rtt = pr->last_rtt;
        pr->saved_mono = pr->link ? pr->link->ops->last_heard(pr->link) : 0;
    }
}

/* ---- the held list ---- */

static void hold(cy_devices *d, dev_presence *pr, int64_t until)
{
    pr->held_until = until;
    if (pr->held) return;
    pr->held = true;
    pr->held_prev = NULL;
    pr->held_next = d->held;
    if (d->held) d->held->held_prev = pr;
    d->held = pr;
}

static void unhold(cy_devices *d, dev_presence *pr)
{
    if (!pr->held) return;
    if (pr->held_prev)
        pr->held_prev->held_next = pr->held_next;
    else
        d->held = pr->held_next;
    if (pr->held_next) pr->held_next->held_prev = pr->held_prev;
    pr->held_next = pr->held_prev = NULL;
    pr->held = false;
}

/* ---- the queue ---- */

/* Queue a record saying pr is online (or not), for its latest change.
 * false: no memory (nothing queued). */
static bool enqueue(cy_devices *d, dev_presence *pr, bool online, uint32_t coalesced)
{
    dev_status *r = cy_calloc(1, sizeof(*r));
    if (!r) return false;
    r->at = pr->changed_at;
    r->last_heard = heard_of(d, pr);
    r->coalesced = coalesced;
    r->online = online;
    r->reason = pr->reason;
    snprintf(r->protocol, sizeof(r->protocol), "%s", pr->protocol);
    memcpy(r->id, pr->id, sizeof(r->id));
    if (d->st_tail)
        d->st_tail->next = r;
    else
        d->st_head = r;
    d->st_tail = r;
    d->st_n++;
    pr->announced = online ? PR_ONLINE : PR_OFFLINE;
    return true;
}

static int64_t flap_ms(const cy_devices *d)
{
    return (int64_t)d->cfg->presence_flap_interval * 1000;
}

/* pr changed to online (or not) for reason, now. */
static void change(cy_devices *d, dev_presence *pr, bool online, int reason)
{
    pr->reason = (uint8_t)reason;
    pr->changed_at = cy_wall_ms();
    if (pr->internal) return;
    if (!d->cfg->presence_event_rate) {
        /* Events are off (a reload may turn them on again): counted, and
         * told once they are on if the device is not where its last
         * event said (reconcile). */
        pr->unannounced++;
        d->st_quiet = true;
        return;
    }
    if (pr->held) { /* its release says where it ended */
        pr->unannounced++;
        return;
    }
    if (pr->announced == (online ? PR_ONLINE : PR_OFFLINE)) return; /* nothing new to say */
    int64_t now = cy_mono_ms(), retry = now + HOLD_RETRY_MS;
    if (d->st_n < CY_PRESENCE_QUEUE_MAX &&
        cy_presence_allow(&pr->tat, now, flap_ms(d), CY_PRESENCE_BURST, &retry) &&
        enqueue(d, pr, online, 0))
        return;
    pr->unannounced = 1;
    hold(d, pr, retry);
}

/* pr's time (or the stop) came: announce the state it is in now, if that
 * is news. force: whatever its limit and the queue's length. */
static void release(cy_devices *d, dev_presence *pr, int64_t now, bool force)
{
    bool online = pr->link != NULL;
    if (pr->announced == (online ? PR_ONLINE : PR_OFFLINE)) { /* back where it was */
        d->stats->presence_coalesced += pr->unannounced;
        pr->unannounced = 0;
        unhold(d, pr);
        return;
    }
    int64_t retry = now + HOLD_RETRY_MS;
    if (!force && (d->st_n >= CY_PRESENCE_QUEUE_MAX ||
                   !cy_presence_allow(&pr->tat, now, flap_ms(d), CY_PRESENCE_BURST, &retry))) {
        pr->held_until = retry;
        return;
    }
    uint32_t folded = pr->unannounced ? pr->unannounced - 1 : 0;
    if (!enqueue(d, pr, online, folded)) {
        pr->held_until = now + HOLD_RETRY_MS;
        return;
    }
    d->stats->presence_coalesced += folded;
    pr->unannounced = 0;
    unhold(d, pr);
}

/* Log one record: the event into the router (the event log numbers it),
 * and its device's row in the same batch. */
static void log_status(cy_devices *d, const dev_status *r)
{
    char topic[8 + CY_DEVICE_ID_LEN + 8 + sizeof(CY_PRESENCE_EVENT) + 1];
    int tl = snprintf(topic, sizeof(topic), "devices/%s/events/" CY_PRESENCE_EVENT, r->id);
    char data[256];
    int dl = cy_presence_payload(data, sizeof(data), r->online, r->reason, r->protocol, r->at,
                                 r->last_heard, r->coalesced);
    if (tl > 0 && (size_t)tl < sizeof(topic) && dl > 0) {
        cy_msg *m =
            cy_msg_new(topic, (size_t)tl, (const uint8_t *)data, (size_t)dl, NULL, 0, 0, false, 0);
        if (m) {
            cy_router_publish(d->router, m, NULL, NULL, false);
            cy_msg_unref(m);
            d->stats->presence_events++;
        }
    }
    dev_presence *pr = cy_presence_get(d, r->id, strlen(r->id), false);
    if (pr && !pr->internal) {
        pr->logged_online = r->online;
        put_row(d, pr);
    }
}

static dev_status *pop(cy_devices *d)
{
    dev_status *r = d->st_head;
    if (!r) return NULL;
    d->st_head = r->next;
    if (!d->st_head) d->st_tail = NULL;
    d->st_n--;
    return r;
}

/* Events are on again after changes while they were off: every device not
 * where its last status event said (or online and never announced) is
 * held, to be told by its release like a device that flapped. */
static void reconcile_one(void *ctx, void *v)
{
    cy_devices *d = ctx;
    dev_presence *pr = v;
    if (pr->internal) return;
    bool online = pr->link != NULL;
    if (pr->announced == (online ? PR_ONLINE : PR_OFFLINE) ||
        (pr->announced == PR_NONE && !online)) {
        d->stats->presence_coalesced += pr->unannounced;
        pr->unannounced = 0;
        return;
    }
    if (!pr->unannounced) pr->unannounced = 1;
    hold(d, pr, cy_mono_ms());
}

void cy_presence_tick(cy_devices *d, int64_t now)
{
    if (!d->st_open) {
        /* At start, events wait for the links to the other shards (their
         * streams get copies over them), at most CY_PRESENCE_READY_WAIT_MS. */
        char why[96];
        if (!cy_cluster_ready(d->cluster, why, sizeof(why)) &&
            now - d->started < CY_PRESENCE_READY_WAIT_MS)
            return;
        d->st_open = true;
        d->st_refill = now;
        d->st_tokens = (int64_t)d->cfg->presence_event_rate * 1000; /* a second's worth */
    }
    if (d->st_quiet && d->cfg->presence_event_rate) {
        d->st_quiet = false;
        cy_map_each(&d->presence, reconcile_one, d);
    }
    for (dev_presence *pr = d->held, *next; pr; pr = next) {
        next = pr->held_next;
        if (now >= pr->held_until) release(d, pr, now, false);
    }
    int64_t rate = d->cfg->presence_event_rate; /* 0 (a reload): what waits still goes */
    if (rate) {                                 /* thousandths of an event: rate per ms, exactly */
        if (now > d->st_refill) {
            d->st_tokens += (now - d->st_refill) * rate;
            d->st_refill = now;
        }
        if (d->st_tokens > rate * 1000) d->st_tokens = rate * 1000;
    }
    while (d->st_head && (!rate || d->st_tokens >= 1000)) {
        dev_status *r = pop(d);
        log_status(d, r);
        cy_free(r);
        if (rate) d->st_tokens -= 1000;
    }
}

/* ---- rows ---- */

static void flush_one(void *ctx, void *v)
{
    cy_devices *d = ctx;
    dev_presence *pr = v;
    if (pr->internal) return;
    const cy_link *l = pr->link;
    bool moved = l ? l->ops->last_heard(l) != pr->saved_mono : pr->last_heard != pr->saved_heard;
    if (moved || pr->last_rtt != pr->saved_rtt) put_row(d, pr);
}

void cy_presence_flush(cy_devices *d, int64_t now, bool all)
{
    int64_t every = (int64_t)d->cfg->presence_flush_interval * 1000;
    /* A reload that shortens the interval counts from now, not after the
     * longer one it replaces has run out (up to an hour). */
    if (d->flush_at > now + every) d->flush_at = now + every;
    if (!all && now < d->flush_at) return;
    d->flush_at = now + every;
    cy_map_each(&d->presence, flush_one, d);
}

typedef struct load_ctx {
    cy_devices *d;
    cy_registry *registry; /* borrowed, or NULL: every row's device is taken to exist */
    char (*gone)[CY_DEVICE_ID_LEN + 1]; /* rows of deleted devices, removed after the load */
    size_t n_gone, cap_gone;
} load_ctx;

/* Was device id deleted (while this shard was down: the API deletes the
 * row of a device whose shard runs)? A registry that cannot answer keeps
 * the row. */
static bool deleted(load_ctx *lc, const char *id)
{
    cy_device dev;
    return lc->registry && cy_registry_device_get(lc->registry, id, &dev) == CY_ENOENT;
}

static int load_one(void *ctx, const cy_store_presence *p)
{
    load_ctx *lc = ctx;
    cy_devices *d = lc->d;
    size_t len = strlen(p->id);
    if (len == 0 || len > CY_DEVICE_ID_LEN) return 0; /* not a device's: ignored */
    if (deleted(lc, p->id)) { /* no row, and no shard_restart event for it */
        if (lc->n_gone == lc->cap_gone) {
            size_t cap = lc->cap_gone ? 2 * lc->cap_gone : 16;
            void *g = cy_realloc(lc->gone, cap * sizeof(*lc->gone));
            if (!g) return CY_ENOMEM;
            lc->gone = g;
            lc->cap_gone = cap;
        }
        memcpy(lc->gone[lc->n_gone++], p->id, len + 1);
        return 0;
    }
    dev_presence *pr = cy_presence_get(d, p->id, len, true);
    if (!pr) return CY_ENOMEM;
    pr->last_heard = pr->saved_heard = p->last_heard;
    pr->last_rtt = pr->saved_rtt = p->last_rtt;
    snprintf(pr->protocol, sizeof(pr->protocol), "%s", p->protocol ? p->protocol : "");
    pr->logged_online = p->online;
    pr->announced = p->online ? PR_ONLINE : PR_OFFLINE;
    if (p->online && !pr->link) {
        /* Its session ended with the shard: the node was told it was
         * online, so it is told it is not (once events are on). */
        pr->reason = CY_PRESENCE_SHARD_RESTART;
        pr->changed_at = cy_wall_ms();
        if (!d->cfg->presence_event_rate) {
            pr->unannounced = 1;
            d->st_quiet = true;
        } else if (!enqueue(d, pr, false, 0)) {
            return CY_ENOMEM;
        }
    }
    return 0;
}

int cy_devices_load_presence(cy_devices *d, cy_registry *registry)
{
    size_t before = d->st_n;
    load_ctx lc = {d, registry, NULL, 0, 0};
    int rc = cy_store_presence_load(d->store, load_one, &lc);
    for (size_t i = 0; i < lc.n_gone; i++) cy_store_presence_delete(d->store, lc.gone[i]);
    if (lc.n_gone)
        cy_info(NULL, "presence: %zu devices deleted while this shard was down: their rows removed",
                lc.n_gone);
    cy_free(lc.gone);
    if (d->st_n > before)
        cy_info(NULL,
                "presence: %zu devices were online when this shard last stopped without "
                "telling: each gets an offline event (shard_restart)",
                d->st_n - before);
    return rc;
}

void cy_devices_stop(cy_devices *d)
{
    int64_t now = cy_mono_ms();
    for (dev_presence *pr = d->held, *next; pr; pr = next) {
        next = pr->held_next;
        release(d, pr, now, true);
    }
    size_t n = d->st_n;
    dev_status *r;
    while ((r = pop(d)) != NULL) {
        log_status(d, r);
        cy_free(r);
    }
    if (n) cy_info(NULL, "presence: %zu status events logged at the stop", n);
    cy_presence_flush(d, now, true);
}

size_t cy_devices_presence_queued(const cy_devices *d)
{
    return d->st_n;
}

static void free_presence(void *ctx, void *v)
{
    (void)ctx;
    cy_free(v);
}

void cy_presence_free(cy_devices *d)
{
    dev_status *r;
    while ((r = pop(d)) != NULL)
        cy_free(r);
    d->held = NULL;
    cy_map_each(&d->presence, free_presence, NULL);
    cy_map_fini(&d->presence);
}

/* ---- transitions ---- */

void cy_device_online(cy_devices *d, cy_session *s, cy_link *link)
{
    dev_presence *pr = cy_presence_get(d, s->client_id, s->client_id_len, true);
    if (!pr) return;
    pr->link = link;
    pr->connected_since = cy_wall_ms();
    pr->last_heard = pr->connected_since;
    pr->internal = s->acl_internal;
    pr->kicked = false;
    const char *proto = link->ops->protocol(link);
    snprintf(pr->protocol, sizeof(pr->protocol), "%s", proto ? proto : "");
    change(d, pr, true, CY_PRESENCE_CONNECT);
}

void cy_device_offline(cy_devices *d, cy_session *s, cy_link *link, cy_presence_reason why)
{
    dev_presence *pr = cy_presence_get(d, s->client_id, s->client_id_len, false);
    if (!pr || pr->link != link) return;
    pr->last_heard = heard_of(d, pr);
    pr->link = NULL;
    pr->connected_since = 0;
    change(d, pr, false, pr->kicked ? CY_PRESENCE_DELETED : (int)why);
}

/* ---- what the API shows ---- */

json_t *cy_device_time(int64_t ms)
{
    char buf[CY_TIME_ISO_LEN];
    return cy_time_iso(ms, buf)[0] ? json_string(buf) : json_null();
}

static json_t *presence_json(cy_devices *d, const dev_presence *pr)
{
    cy_link *l = pr ? pr->link : NULL;
    int64_t heard = pr ? heard_of(d, pr) : 0;
    const char *proto = l ? l->ops->protocol(l) : NULL;
    return json_pack("{s:b, s:o, s:o, s:o, s:o}", "online", l != NULL, "protocol",
                     proto ? json_string(proto) : json_null(), "connected_since",
                     cy_device_time(l ? pr->connected_since : 0), "last_heard",
                     cy_device_time(heard), "last_round_trip",
                     cy_device_time(pr ? pr->last_rtt : 0));
}

json_t *cy_device_presence(cy_devices *d, const char *id)
{
    return presence_json(d, cy_presence_get(d, id, strlen(id), false));
}

typedef struct all_ctx {
    cy_devices *d;
    json_t *obj;
} all_ctx;

static void add_presence(void *ctx, void *v)
{
    all_ctx *ac = ctx;
    dev_presence *pr = v;
    json_object_set_new(ac->obj, pr->id, presence_json(ac->d, pr));
}

json_t *cy_device_presence_all(cy_devices *d)
{
    all_ctx ac = {d, json_object()};
    cy_map_each(&d->presence, add_presence, &ac);
    return ac.obj;
}

/* ---- deletion ---- */

void cy_device_kick(cy_devices *d, const char *id)
{
    dev_presence *pr = cy_presence_get(d, id, strlen(id), false);
    if (pr) pr->kicked = true; /* its offline says "deleted" */
    cy_session *s = cy_session_find(d, id, strlen(id));
    if (s) {
        /* No will from a deleted device: neither an armed one (the close
         * below is abnormal) nor one waiting for its delay after an earlier
         * abnormal close (cy_session_end would publish that one). */
        cy_msg_unref(s->will);
        s->will = NULL;
        s->will_at = 0;
    }
    if (s && s->link) s->link->ops->close(s->link, CY_REASON_NOT_AUTHORIZED, "device deleted");
    s = cy_session_find(d, id, strlen(id));
    if (s) cy_session_end(d, s);
    pr = cy_map_del(&d->presence, id, strlen(id));
    if (!pr) return;
    if (pr->held) release(d, pr, cy_mono_ms(), true); /* its last word, before it goes */
    unhold(d, pr);
    if (!pr->internal) cy_store_presence_delete(d->store, pr->id);
    cy_free(pr);
}
