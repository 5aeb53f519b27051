/* route: from one published message to the sessions it reaches.
 *
 * The subscription tree reports every matching subscription; a client with
 * overlapping subscriptions ("a/+" and "a/#") must get the message once, at
 * the highest QoS of those subscriptions, carrying all their subscription
 * identifiers (MQTT 5 3.3.4). Matches are merged per session in a scratch
 * array: each session remembers, by an epoch number that changes per
 * publish, its index in that array, so merging is O(1) with no allocation.
 *
 * Retained messages: a PUBLISH with the retain flag replaces the topic's
 * retained message (an empty payload deletes it), in memory and in the
 * store ($SYS topics are kept in memory only: they are rebuilt at start).
 * Every shard holds every retained message, so the node's totals are known
 * on each; the limits (max_retained*, docs/operations.md) are checked on the
 * shard where the message enters, against the node's totals and the
 * publishing client's. Each retained message records the client id that
 * set it (in the tree and in the store), on the publisher's own shard;
 * replicas record nobody, which is enough because a client always
 * publishes through its own shard (cy_shard_of).
 */
#include "broker/broker_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_log.h"

#include <stdio.h>
#include <string.h>

typedef struct route_ctx {
    cy_broker *b;
    cy_session *from;  /* publisher, for no-local; NULL for wills and peers' messages */
    const cy_str *groups; /* local routing of a peer's message: groups we serve */
    unsigned n_groups;
    bool local;        /* a peer's message: never forward */
    bool event;        /* the API's event filters matched */
} route_ctx;

static void merge(cy_broker *b, cy_session *s, uint8_t opts, uint32_t sub_id)
{
    cy_match *mt;
    if (s->match_epoch == b->epoch) {
        mt = &b->matches[s->match_idx];
        if (CY_SUBOPT_QOS(opts) > mt->qos) mt->qos = CY_SUBOPT_QOS(opts);
    } else {
        if (b->n_matches == b->cap_matches) {
            uint32_t cap = b->cap_matches ? b->cap_matches * 2 : 64;
            cy_match *n = cy_realloc(b->matches, cap * sizeof(*n));
            if (!n) {
                b->stats.messages_dropped++;
                return;
            }
            b->matches = n;
            b->cap_matches = cap;
        }
        s->match_epoch = b->epoch;
        s->match_idx = b->n_matches;
        mt = &b->matches[b->n_matches++];
        mt->sess = s;
        mt->qos = CY_SUBOPT_QOS(opts);
        mt->rap = false;
        mt->n_sub_ids = 0;
    }
    if (opts & CY_SUBOPT_RAP) mt->rap = true;
    if (sub_id && mt->n_sub_ids < CY_MQTT_MAX_SUB_IDS) mt->sub_ids[mt->n_sub_ids++] = sub_id;
}

static void on_sub(void *ctx, void *owner, uint8_t opts, uint32_t sub_id)
{
    route_ctx *rc = ctx;
    cy_broker *b = rc->b;
    if (owner == (void *)b->api) {
        rc->event = true;
        return;
    }
    if (cy_is_peer(b, owner)) {
        if (!rc->local) b->fwd_mask |= UINT64_C(1) << ((cy_peer *)owner)->index;
        return;
    }
    cy_session *s = owner;
    if ((opts & CY_SUBOPT_NO_LOCAL) && s == rc->from) return;
    merge(b, s, opts, sub_id);
}

static void on_shared(void *ctx, void *owner, uint8_t opts, uint32_t sub_id, const char *filter,
                      size_t len)
{
    route_ctx *rc = ctx;
    cy_broker *b = rc->b;
    if (cy_is_peer(b, owner)) { /* that shard serves this group for this message */
        unsigned j = ((cy_peer *)owner)->index;
        b->fwd_mask |= UINT64_C(1) << j;
        if (b->n_fwd_groups[j] < 8)
            b->fwd_groups[j][b->n_fwd_groups[j]++] = (cy_str){filter, (uint32_t)len};
        return;
    }
    merge(b, owner, opts, sub_id);
}

/* Shared-group member choice: an online local session first, then a peer
 * whose link is up (its own members decide there), then an offline local
 * session (it will get the message queued), then a peer that is down or
 * whose outbox is full (the frame waits in the outbox; a client's publish
 * is refused rather than sent to a full one). A peer's message is never
 * sent on. */
static int grade(void *ctx, void *owner)
{
    route_ctx *rc = ctx;
    if (cy_is_peer(rc->b, owner)) {
        const cy_peer *p = owner;
        if (rc->local) return 0;
        return p->up && !cy_cluster_outbox_full(rc->b, p->index) ? 2 : 1;
    }
    return ((cy_session *)owner)->conn ? 2 : 1;
}

static bool want_group(void *ctx, const char *filter, size_t len)
{
    route_ctx *rc = ctx;
    for (unsigned i = 0; i < rc->n_groups; i++)
        if (rc->groups[i].len == len && memcmp(rc->groups[i].p, filter, len) == 0) return true;
    return false;
}

static void release_msg(void *v)
{
    cy_msg_unref(v);
}

static bool is_sys(const cy_msg *m)
{
    return m->topic_len >= 5 && memcmp(m->topic, "$SYS/", 5) == 0;
}

/* What a retained message costs against the limits: its bytes in memory,
 * near enough (the cy_msg header and tree node are not counted). */
static uint64_t retained_bytes(const cy_msg *m)
{
    return (uint64_t)m->topic_len + m->payload_len + m->props_len;
}

/* The setting each CY_RETAIN_OVER_* stands for. */
static const char *const over_setting[] = {
    "",
    "max_retained",
    "max_retained_bytes",
    "max_retained_per_client",
    "max_retained_bytes_per_client",
};

#define RETAIN_LOG_WINDOW_MS 10000
#define RETAIN_LOG_BURST 20

int cy_route_retain_check(cy_broker *b, const char *client_id, const cy_msg *m)
{
    if (!m->retain || m->payload_len == 0 || is_sys(m)) return 0;
    const cy_config *cfg = b->cfg;
    cy_retain_limits l = {cfg->max_retained, cfg->max_retained_bytes, cfg->max_retained_per_client,
                          cfg->max_retained_bytes_per_client};
    size_t idlen = client_id ? strlen(client_id) : 0;
    int which = 0;
    if (!cy_retain_admit(b->retained, &l, m->topic, m->topic_len, retained_bytes(m), client_id,
                         idlen, &which))
        return 0;
    b->stats.limit_retained++;
    /* A device can repeat this at will: one line per client per window. */
    if (b->retain_log.window_ms == 0)
        cy_logrl_init(&b->retain_log, RETAIN_LOG_WINDOW_MS, RETAIN_LOG_BURST);
    char more[CY_LOGRL_MORE];
    if (cy_logrl_line(&b->retain_log, client_id, more)) {
        cy_retain_usage node = cy_retain_usage_total(b->retained);
        cy_retain_usage own = cy_retain_usage_of(b->retained, client_id, idlen);
        cy_warn(client_id,
                "retained message on %s (%llu bytes) refused: over %s (the node holds %llu "
                "messages, %llu bytes; this client %llu, %llu bytes)%s",
                m->topic, (unsigned long long)retained_bytes(m), over_setting[which],
                (unsigned long long)node.count, (unsigned long long)node.bytes,
                (unsigned long long)own.count, (unsigned long long)own.bytes, more);
    }
    return CY_RC_QUOTA_EXCEEDED;
}

/* Set or clear the retained message of m's topic if m is newer than what
 * is held (last writer wins, so replicas converge). owner: the client id
 * that published it here, or NULL (a replica, or not a client's). */
static void apply_retained(cy_broker *b, cy_msg *m, const char *owner)
{
    cy_msg *cur = cy_retain_get(b->retained, m->topic, m->topic_len);
    if (cur && cur->retain_ts > m->retain_ts) return;
    void *old = NULL;
    bool sys = is_sys(m);
    if (m->payload_len == 0) {
        if (cy_retain_set(b->retained, m->topic, m->topic_len, NULL, &old)) return;
        if (old) {
            b->stats.retained_messages--;
            release_msg(old);
            if (!sys) cy_store_retain_delete(b->store, m->topic, m->topic_len);
        }
        return;
    }
    /* $SYS values are the node's own: held, never charged. */
    size_t olen = owner && !sys ? strlen(owner) : 0;
    if (cy_retain_set_charged(b->retained, m->topic, m->topic_len, cy_msg_ref(m),
                              sys ? 0 : retained_bytes(m), owner, olen, &old)) {
        cy_msg_unref(m);
        return;
    }
    if (old)
        release_msg(old);
    else
        b->stats.retained_messages++;
    if (!sys) {
        cy_store_msg sm = cy_msg_to_store(m, m->qos, true);
        sm.owner = owner;
        sm.owner_len = olen;
        cy_store_retain_put(b->store, &sm);
    }
}

void cy_route_apply_retained(cy_broker *b, cy_msg *m)
{
    apply_retained(b, m, NULL);
}

void cy_route_set_retained(cy_broker *b, cy_msg *m, const char *owner)
{
    m->retain_ts = (cy_wall_ms() << 8) | b->self;
    apply_retained(b, m, owner);
}

/* Find who m goes to: local sessions (b->matches), peers (b->fwd_mask). */
static void match(cy_broker *b, cy_msg *m, route_ctx *rc)
{
    b->epoch++;
    b->n_matches = 0;
    b->fwd_mask = 0;
    memset(b->n_fwd_groups, 0, sizeof(b->n_fwd_groups[0]) * b->nshards);
    cy_topic_matcher mt = {on_sub, on_shared, grade, rc->local ? want_group : NULL, rc};
    cy_topic_tree_match_with(b->subs, m->topic, m->topic_len, &mt);
}

static void deliver(cy_broker *b, cy_msg *m)
{
    for (uint32_t i = 0; i < b->n_matches; i++) {
        cy_match *x = &b->matches[i];
        uint8_t qos = x->qos < m->qos ? x->qos : m->qos;
        cy_session_deliver(b, x->sess, m, qos, x->rap && m->retain, x->sub_ids, x->n_sub_ids);
    }
}

static void route(cy_broker *b, cy_msg *m, route_ctx *rc)
{
    match(b, m, rc);
    deliver(b, m);
}

static int publish(cy_broker *b, cy_msg *m, cy_session *from, bool bounded)
{
    /* The retained limits are enforced here, where the message enters the
     * node; the replicas take what this shard took. A PUBLISH was checked
     * (and refused) before; a will is checked again when it fires, since
     * the node may have filled up since its CONNECT: over a limit it is
     * still delivered, only not kept. */
    const char *owner = from ? from->client_id : NULL;
    bool set = m->retain && !cy_route_retain_check(b, owner, m);
    route_ctx rc = {b, from, NULL, 0, false, false};
    match(b, m, &rc);
    /* Refused here, before anything of it is kept or sent, so that a
     * refusal leaves nothing half done. */
    bool fwd = b->nshards > 1 && !is_sys(m);
    if (bounded && fwd) {
        int r = cy_cluster_admit(b, m, set);
        if (r) return r;
    }
    if (set) cy_route_set_retained(b, m, owner);
    deliver(b, m);
    if (rc.event) { /* numbered here, where it entered the node */
        m->origin = (uint8_t)b->self;
        cy_api_event_stamp(b, m);
        cy_api_event(b, m);
    }
    if (fwd) cy_cluster_forward(b, m, set);
    return 0;
}

void cy_route_publish(cy_broker *b, cy_msg *m, cy_session *from)
{
    publish(b, m, from, false);
}

int cy_route_publish_bounded(cy_broker *b, cy_msg *m, cy_session *from)
{
    return publish(b, m, from, true);
}

void cy_route_local(cy_broker *b, cy_msg *m, const cy_str *groups, unsigned n_groups)
{
    route_ctx rc = {b, NULL, groups, n_groups, true, false};
    route(b, m, &rc);
    if (rc.event && m->event_seq) cy_api_event(b, m);
}

typedef struct retained_ctx {
    cy_broker *b;
    cy_session *s;
    uint8_t opts;
    uint32_t sub_id;
    int64_t now;
} retained_ctx;

static void on_retained(void *ctx, const char *name, size_t len, void *value)
{
    retained_ctx *rc = ctx;
    cy_msg *m = value;
    (void)name;
    (void)len;
    if (cy_msg_expired(m, rc->now)) return; /* left for the sweep to remove */
    uint8_t qos = CY_SUBOPT_QOS(rc->opts) < m->qos ? CY_SUBOPT_QOS(rc->opts) : m->qos;
    cy_session_deliver(rc->b, rc->s, m, qos, true, rc->sub_id ? &rc->sub_id : NULL,
                       rc->sub_id ? 1 : 0);
}

void cy_route_retained(cy_broker *b, cy_session *s, const char *filter, size_t len, uint8_t opts,
                       uint32_t sub_id)
{
    retained_ctx rc = {b, s, opts, sub_id, cy_wall_ms()};
    cy_retain_match(b->retained, filter, len, on_retained, &rc);
}
