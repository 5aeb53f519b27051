/* router: matching, merging, sealing and delivering (router.h).
 *
 * Merging is O(1) per match with no allocation: each subscriber remembers,
 * by an epoch number that changes per publish, its index in the scratch
 * array of matches. Shared groups chosen for a subscriber are listed apart
 * (few, and only peer shards use them), so a plain fan-out does not carry
 * them.
 */
#include "router/router.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <stdio.h>
#include <string.h>

#define RETAIN_LOG_WINDOW_MS 10000
#define RETAIN_LOG_BURST 20

struct cy_router {
    const cy_config *cfg;
    cy_store *store;      /* NULL: nothing persisted */
    cy_counters *stats;
    unsigned self;
    cy_topic_tree *subs;
    cy_retain *retained;
    cy_router_hooks hooks;
    bool dropping; /* the drop drill */
    cy_logrl retain_log;  /* refusals at the retained limits, per client id */
    /* scratch of the publish being routed */
    uint64_t epoch;
    cy_match *matches;
    uint32_t n_matches, cap_matches;
    cy_route_group *groups;
    uint32_t n_groups, cap_groups;
};

/* The walk of one message through the tree. */
typedef struct walk {
    cy_router *r;
    cy_route *route;
    const cy_str *want;   /* a peer's message: the groups we serve */
    unsigned n_want;
} walk;

int cy_router_new(const cy_config *cfg, cy_store *store, cy_counters *stats, unsigned self,
                  cy_router **out)
{
    cy_router *r = cy_calloc(1, sizeof(*r));
    if (!r) return CY_ENOMEM;
    r->cfg = cfg;
    r->store = store;
    r->stats = stats;
    r->self = self;
    cy_logrl_init(&r->retain_log, RETAIN_LOG_WINDOW_MS, RETAIN_LOG_BURST);
    int rc = cy_topic_tree_new(&r->subs);
    if (!rc) rc = cy_retain_new(&r->retained);
    if (rc) {
        cy_router_free(r);
        return rc;
    }
    *out = r;
    return 0;
}

static void release_msg(void *v)
{
    cy_msg_unref(v);
}

void cy_router_free(cy_router *r)
{
    if (!r) return;
    cy_retain_free(r->retained, release_msg);
    cy_topic_tree_free(r->subs);
    cy_free(r->matches);
    cy_free(r->groups);
    cy_free(r);
}

void cy_router_set_hooks(cy_router *r, const cy_router_hooks *h)
{
    r->hooks = h ? *h : (cy_router_hooks){0};
}

/* ---- subscriptions ---- */

int cy_router_subscribe(cy_router *r, cy_subscriber *s, const char *filter, size_t len,
                        uint8_t opts, uint32_t sub_id, bool *existed)
{
    return cy_topic_tree_add(r->subs, filter, len, s, opts, sub_id, existed);
}

int cy_router_unsubscribe(cy_router *r, cy_subscriber *s, const char *filter, size_t len)
{
    return cy_topic_tree_remove(r->subs, filter, len, s);
}

int cy_router_sub_opts(const cy_router *r, cy_subscriber *s, const char *filter, size_t len)
{
    return cy_topic_tree_opts(r->subs, filter, len, s);
}

size_t cy_router_subscriptions(const cy_router *r)
{
    return cy_topic_tree_count(r->subs);
}

/* ---- matching ---- */

static cy_match *merge(cy_router *r, cy_subscriber *s, uint8_t opts, uint32_t sub_id)
{
    cy_match *x;
    if (s->match_epoch == r->epoch) {
        x = &r->matches[s->match_idx];
        if (CY_SUBOPT_QOS(opts) > x->qos) x->qos = CY_SUBOPT_QOS(opts);
    } else {
        if (r->n_matches == r->cap_matches) {
            uint32_t cap = r->cap_matches ? r->cap_matches * 2 : 64;
            cy_match *n = cy_realloc(r->matches, cap * sizeof(*n));
            if (!n) {
                r->stats->messages_dropped++;
                return NULL;
            }
            r->matches = n;
            r->cap_matches = cap;
        }
        s->match_epoch = r->epoch;
        s->match_idx = r->n_matches;
        x = &r->matches[r->n_matches++];
        x->sub = s;
        x->qos = CY_SUBOPT_QOS(opts);
        x->rap = false;
        x->durable = false;
        x->n_sub_ids = 0;
    }
    if (opts & CY_SUBOPT_RAP) x->rap = true;
    if (opts & CY_SUBOPT_DURABLE) x->durable = true;
    if (sub_id && x->n_sub_ids < CY_ROUTE_MAX_SUB_IDS) x->sub_ids[x->n_sub_ids++] = sub_id;
    return x;
}

static void on_sub(void *ctx, void *owner, uint8_t opts, uint32_t sub_id)
{
    walk *w = ctx;
    cy_subscriber *s = owner;
    if (w->route->from_peer && s->kind->remote) return;
    if ((opts & CY_SUBOPT_NO_LOCAL) && s == w->route->from) return;
    merge(w->r, s, opts, sub_id);
}

static void on_shared(void *ctx, void *owner, uint8_t opts, uint32_t sub_id, const char *filter,
                      size_t len)
{
    walk *w = ctx;
    cy_router *r = w->r;
    cy_match *x = merge(r, owner, opts, sub_id);
    if (!x || !((cy_subscriber *)owner)->kind->remote) return;
    /* A peer shard serves this group for this message: it must be told which. */
    if (r->n_groups == r->cap_groups) {
        uint32_t cap = r->cap_groups ? r->cap_groups * 2 : 16;
        cy_route_group *n = cy_realloc(r->groups, cap * sizeof(*n));
        if (!n) return;
        r->groups = n;
        r->cap_groups = cap;
    }
    r->groups[r->n_groups++] = (cy_route_group){(uint32_t)(x - r->matches),
                                                (cy_str){filter, (uint32_t)len}};
}

static int grade(void *ctx, void *owner)
{
    walk *w = ctx;
    const cy_subscriber *s = owner;
    if (w->route->from_peer && s->kind->remote) return 0;
    return s->kind->grade ? s->kind->grade(s->kind->ctx, s, w->route) : 2;
}

static bool want_group(void *ctx, const char *filter, size_t len)
{
    walk *w = ctx;
    for (unsigned i = 0; i < w->n_want; i++)
        if (w->want[i].len == len && memcmp(w->want[i].p, filter, len) == 0) return true;
    return false;
}

/* Find everyone m reaches (r->matches, r->groups) and fill route's view. */
static void match(cy_router *r, cy_route *route, const cy_str *want, unsigned n_want)
{
    r->epoch++;
    r->n_matches = 0;
    r->n_groups = 0;
    walk w = {r, route, want, n_want};
    cy_topic_matcher mt = {on_sub, on_shared, grade, route->from_peer ? want_group : NULL, &w};
    cy_topic_tree_match_with(r->subs, route->m->topic, route->m->topic_len, &mt);
    for (uint32_t i = 0; i < r->n_matches; i++) {
        cy_match *x = &r->matches[i];
        if (x->qos > route->m->qos) x->qos = route->m->qos;
        x->retain = x->rap && route->m->retain;
    }
    route->matches = r->matches;
    route->n_matches = r->n_matches;
    route->groups = r->groups;
    route->n_groups = r->n_groups;
}

static void seal(cy_route *route)
{
    for (uint32_t i = 0; i < route->n_matches; i++) {
        cy_subscriber *s = route->matches[i].sub;
        if (s->kind->seal) s->kind->seal(s->kind->ctx, s, route);
    }
}

static void deliver(const cy_route *route)
{
    for (uint32_t i = 0; i < route->n_matches; i++) {
        const cy_match *x = &route->matches[i];
        x->sub->kind->deliver(x->sub->kind->ctx, x->sub, route, x);
    }
}

/* ---- retained messages ---- */

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

int cy_router_retain_check(cy_router *r, const char *client_id, const cy_msg *m)
{
    if (!m->retain || m->payload_len == 0 || is_sys(m)) return 0;
    const cy_config *cfg = r->cfg;
    cy_retain_limits l = {cfg->max_retained, cfg->max_retained_bytes, cfg->max_retained_per_client,
                          cfg->max_retained_bytes_per_client};
    size_t idlen = client_id ? strlen(client_id) : 0;
    int which = 0;
    if (!cy_retain_admit(r->retained, &l, m->topic, m->topic_len, retained_bytes(m), client_id,
                         idlen, &which))
        return 0;
    r->stats->limit_retained++;
    /* A device can repeat this at will: one line per client per window. */
    char more[CY_LOGRL_MORE];
    if (cy_logrl_line(&r->retain_log, client_id, more)) {
        cy_retain_usage node = cy_retain_usage_total(r->retained);
        cy_retain_usage own = cy_retain_usage_of(r->retained, client_id, idlen);
        cy_warn(client_id,
                "retained message on %s (%llu bytes) refused: over %s (the node holds %llu "
                "messages, %llu bytes; this client %llu, %llu bytes)%s",
                m->topic, (unsigned long long)retained_bytes(m), over_setting[which],
                (unsigned long long)node.count, (unsigned long long)node.bytes,
                (unsigned long long)own.count, (unsigned long long)own.bytes, more);
    }
    return CY_REASON_QUOTA_EXCEEDED;
}

/* Set or clear the retained message of m's topic if m is newer than what
 * is held (last writer wins, so replicas converge). owner: the client id
 * that published it here, or NULL (a replica, or not a client's). */
static void apply_retained(cy_router *r, cy_msg *m, const char *owner)
{
    cy_msg *cur = cy_retain_get(r->retained, m->topic, m->topic_len);
    if (cur && cur->retain_ts > m->retain_ts) return;
    void *old = NULL;
    bool sys = is_sys(m);
    if (m->payload_len == 0) {
        if (cy_retain_set(r->retained, m->topic, m->topic_len, NULL, &old)) return;
        if (old) {
            r->stats->retained_messages--;
            release_msg(old);
            if (!sys && r->store) cy_store_retain_delete(r->store, m->topic, m->topic_len);
        }
        return;
    }
    /* $SYS values are the node's own: held, never charged. */
    size_t olen = owner && !sys ? strlen(owner) : 0;
    if (cy_retain_set_charged(r->retained, m->topic, m->topic_len, cy_msg_ref(m),
                              sys ? 0 : retained_bytes(m), owner, olen, &old)) {
        cy_msg_unref(m);
        return;
    }
    if (old)
        release_msg(old);
    else
        r->stats->retained_messages++;
    if (!sys && r->store) {
        cy_store_msg sm = cy_msg_to_store(m, m->qos, true);
        sm.owner = owner;
        sm.owner_len = olen;
        cy_store_retain_put(r->store, &sm);
    }
}

void cy_router_apply_retained(cy_router *r, cy_msg *m)
{
    apply_retained(r, m, NULL);
}

cy_msg *cy_router_retained(cy_router *r, const char *topic, size_t len)
{
    return cy_retain_get(r->retained, topic, len);
}

int cy_router_load_retained(cy_router *r, const cy_store_msg *sm)
{
    cy_msg *m = cy_msg_new(sm->topic, sm->topic_len, sm->payload, sm->payload_len, sm->props,
                           sm->props_len, sm->qos, true, sm->expiry_at);
    if (!m) return CY_ENOMEM;
    m->retain_ts = sm->ts;
    void *old = NULL;
    /* Charged as when it was set, to the client that set it. */
    int rc = cy_retain_set_charged(r->retained, m->topic, m->topic_len, m, retained_bytes(m),
                                   sm->owner, sm->owner_len, &old);
    if (rc) {
        cy_msg_unref(m);
        return rc == CY_EINVAL ? 0 : rc;
    }
    if (old)
        cy_msg_unref(old);
    else
        r->stats->retained_messages++;
    return 0;
}

/* ---- routing ---- */

int cy_router_publish(cy_router *r, cy_msg *m, const cy_subscriber *from, const char *owner,
                      bool refusable)
{
    /* The retained limits are enforced here, where the message enters the
     * node; the replicas take what this shard took. A PUBLISH was checked
     * (and refused) before; a will is checked again when it fires, since
     * the node may have filled up since its CONNECT: over a limit it is
     * still delivered, only not kept. */
    if (r->dropping) return 0;
    bool set = m->retain && !cy_router_retain_check(r, owner, m);
    m->origin = (uint8_t)r->self;
    cy_route route = {.m = m, .from = from, .set_retained = set};
    match(r, &route, NULL, 0);
    /* Refused here, before anything of it is kept or sent, so that a
     * refusal leaves nothing half done. */
    if (refusable && r->hooks.admit) {
        int rc = r->hooks.admit(r->hooks.ctx, &route);
        if (rc) return rc;
    }
    if (set) m->retain_ts = (cy_wall_ms() << 8) | r->self;
    seal(&route);
    /* From here on m is shared and never written again. */
    if (set) apply_retained(r, m, owner);
    deliver(&route);
    if (r->hooks.routed) r->hooks.routed(r->hooks.ctx, &route);
    return 0;
}

void cy_router_drop_all(cy_router *r)
{
    r->dropping = true;
}

void cy_router_local(cy_router *r, cy_msg *m, const cy_str *groups, unsigned n_groups)
{
    cy_route route = {.m = m, .from_peer = true};
    match(r, &route, groups, n_groups);
    seal(&route);
    deliver(&route);
}

typedef struct retained_walk {
    cy_subscriber *s;
    uint8_t opts;
    uint32_t sub_id;
    int64_t now;
} retained_walk;

static void on_retained(void *ctx, const char *name, size_t len, void *value)
{
    retained_walk *w = ctx;
    cy_msg *m = value;
    (void)name;
    (void)len;
    if (cy_msg_expired(m, w->now)) return; /* left for the sweep to remove */
    cy_match x = {.sub = w->s, .qos = CY_SUBOPT_QOS(w->opts) < m->qos ? CY_SUBOPT_QOS(w->opts)
                                                                      : m->qos,
                  .retain = true};
    if (w->sub_id) x.sub_ids[x.n_sub_ids++] = w->sub_id;
    cy_route route = {.m = m, .matches = &x, .n_matches = 1};
    w->s->kind->deliver(w->s->kind->ctx, w->s, &route, &x);
}

void cy_router_send_retained(cy_router *r, cy_subscriber *s, const char *filter, size_t len,
                             uint8_t opts, uint32_t sub_id)
{
    retained_walk w = {s, opts, sub_id, cy_wall_ms()};
    cy_retain_match(r->retained, filter, len, on_retained, &w);
}
