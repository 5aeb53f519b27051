/* router: from one published message to everyone it reaches.
 *
 * The router owns the subscription tree and the retained messages of one
 * shard. It knows nothing of sessions, shards or HTTP: whoever subscribes
 * is a cy_subscriber of some kind (a device session, a peer shard that
 * holds an interest, the API's event buffer; later a webhook), and the
 * kind's functions say what delivering to it means. So a new consumer is a
 * new kind, not a special case in here.
 *
 * Routing one message (cy_router_publish):
 *   1. match: the tree reports every matching subscription; matches are
 *      merged per subscriber (a client with "a/+" and "a/#" gets the
 *      message once, at the highest QoS, with all its subscription ids:
 *      MQTT 5 3.3.4), and a shared group ("$share/g/f") yields one member,
 *      chosen round robin among those its kind grades best;
 *   2. admit: for work that can still be refused (a client's PUBLISH
 *      before it is acknowledged), the hooks' admit may refuse it whole,
 *      before anything of it is kept or sent;
 *   3. seal: the retained stamp is set and each matched kind's seal runs
 *      (an event gets its number): the last writes to the message;
 *   4. the retained message is set (within the retained limits), then
 *      every match is delivered, then the hooks' routed runs (a peer
 *      shard that holds no subscription still gets a retained update).
 * A message that came from a peer shard (cy_router_local) is delivered to
 * local subscribers only: remote kinds never see it.
 *
 * Retained messages: a message with the retain flag replaces its topic's
 * retained message (an empty payload deletes it), in memory and in the
 * store ($SYS topics are kept in memory only: they are rebuilt at start).
 * Every shard holds every retained message, so the node's totals are known
 * on each; the limits (max_retained*) are checked where a message enters
 * the node, against the node's totals and the publishing client's. Each
 * retained message records the client id that set it (its "owner"), on the
 * publisher's own shard; replicas record nobody, which is enough because a
 * client always publishes through its own shard. Replicas converge by
 * last writer wins on retain_ts (wall ms << 8 | origin shard).
 *
 * Ownership: the router borrows cfg, store (NULL: nothing is persisted, for
 * tests) and stats, which must outlive it, and every subscriber (the tree
 * holds pointers; unsubscribe before freeing one). It holds a reference on
 * each retained message. Messages passed in are borrowed; a subscriber that
 * keeps one takes its own reference.
 * Errors: CY_ENOMEM, CY_EINVAL (invalid filter), CY_ENOENT; MQTT 5 reason
 * codes (>= 0x80) where a publish is refused.
 * Thread: one loop thread. Callbacks run synchronously inside the call that
 * routes and must not re-enter the router (no subscribe, unsubscribe or
 * publish): the tree is being walked and the match scratch is shared.
 */
#ifndef CY_ROUTER_H
#define CY_ROUTER_H

#include "core/cy_buf.h"
#include "core/cy_config.h"
#include "core/cy_log.h"
#include "core/cy_reason.h"
#include "health/metrics.h"
#include "router/msg.h"
#include "router/topic.h"
#include "store/store.h"

#include <stdbool.h>
#include <stdint.h>

/* Subscription ids kept per delivery (MQTT 5 allows one per subscription). */
#define CY_ROUTE_MAX_SUB_IDS 32
/* Shared groups carried with one message to one peer shard. */
#define CY_ROUTE_MAX_GROUPS 8

typedef struct cy_router cy_router;
typedef struct cy_subscriber cy_subscriber;

/* One subscriber's match for the message being routed, merged over its
 * matching subscriptions. */
typedef struct cy_match {
    cy_subscriber *sub;
    uint8_t qos;      /* effective: min(published, highest subscribed) */
    bool retain;      /* retain flag to send (retain-as-published, or a retained message) */
    bool rap;         /* scratch: some subscription asked retain-as-published */
    bool durable;     /* some subscription has CY_SUBOPT_DURABLE */
    uint8_t n_sub_ids;
    uint32_t sub_ids[CY_ROUTE_MAX_SUB_IDS];
} cy_match;

/* A shared group ("$share/g/f", borrowed from the tree) for which the
 * subscriber of match `match` was chosen. */
typedef struct cy_route_group {
    uint32_t match;
    cy_str filter;
} cy_route_group;

/* The message being routed, as a kind sees it. */
typedef struct cy_route {
    cy_msg *m;
    const cy_subscriber *from; /* the publisher (no-local), or NULL */
    bool from_peer;            /* it came from a peer shard: local subscribers only */
    bool set_retained;         /* it sets its topic's retained message (on every shard) */
    const cy_match *matches;   /* everything it reaches */
    uint32_t n_matches;
    const cy_route_group *groups; /* shared groups, by match */
    uint32_t n_groups;
} cy_route;

/* What a kind of subscriber does: one per consumer layer and instance
 * (its functions get the layer's ctx). Only deliver is required. */
typedef struct cy_sub_kind {
    const char *name;
    /* It stands for another shard: never given a message that came from a
     * peer (each shard routes to its own subscribers). */
    bool remote;
    /* Take the message. x->qos and x->retain are what to deliver with. */
    void (*deliver)(void *ctx, cy_subscriber *s, const cy_route *r, const cy_match *x);
    /* As a shared group member: 2 take it now, 1 only if no member grades
     * 2, 0 never. NULL: 2. */
    int (*grade)(void *ctx, const cy_subscriber *s, const cy_route *r);
    /* After matching, before the first delivery: the last moment anything
     * may be written to the message (r->m). NULL: nothing. */
    void (*seal)(void *ctx, cy_subscriber *s, cy_route *r);
    void *ctx;
} cy_sub_kind;

/* Embed one in whatever subscribes (as its first member or anywhere). It
 * subscribes in one router only: the scratch below is that router's (a
 * new router counts its publishes from 1 again, so a subscriber moved to
 * one must be initialised again). */
struct cy_subscriber {
    const cy_sub_kind *kind;
    uint64_t match_epoch; /* router scratch: the publish it was last merged for */
    uint32_t match_idx;   /* router scratch: its index in that publish's matches */
};

static inline void cy_subscriber_init(cy_subscriber *s, const cy_sub_kind *kind)
{
    s->kind = kind;
    s->match_epoch = 0;
    s->match_idx = 0;
}

/* The layer that carries messages to other shards (cluster.h) hooks in
 * here. Both may be NULL. */
typedef struct cy_router_hooks {
    /* A refusable publish, matched and not yet sealed: 0, or an MQTT 5
     * reason code (>= 0x80) to refuse it whole. */
    int (*admit)(void *ctx, const cy_route *r);
    /* After the retained update and every delivery. */
    void (*routed)(void *ctx, const cy_route *r);
    void *ctx;
} cy_router_hooks;

/* self: this shard's index (the origin stamped on messages). */
int cy_router_new(const cy_config *cfg, cy_store *store, cy_counters *stats, unsigned self,
                  cy_router **out);
/* Frees the trees and the retained messages; subscribers are not touched.
 * Safe on NULL. */
void cy_router_free(cy_router *r);
void cy_router_set_hooks(cy_router *r, const cy_router_hooks *h);

/* ---- subscriptions ---- */

/* Add s's subscription to filter (copied), or replace its options and id;
 * *existed (may be NULL) says which. Errors: CY_EINVAL, CY_ENOMEM. */
int cy_router_subscribe(cy_router *r, cy_subscriber *s, const char *filter, size_t len,
                        uint8_t opts, uint32_t sub_id, bool *existed);
/* Errors: CY_ENOENT (s has no such subscription). */
int cy_router_unsubscribe(cy_router *r, cy_subscriber *s, const char *filter, size_t len);
/* s's options for filter (>= 0), or CY_ENOENT. */
int cy_router_sub_opts(const cy_router *r, cy_subscriber *s, const char *filter, size_t len);
size_t cy_router_subscriptions(const cy_router *r);

/* ---- routing ---- */

/* Route m, which entered the node here. from: its publisher (no-local),
 * or NULL; owner: the client id a retained message is charged to
 * (borrowed; NULL = nobody). refusable: the publish is not acknowledged
 * yet, so the hooks' admit may refuse it (nothing is then kept or sent).
 * A retained message over a retained limit is routed, not kept (checked
 * here again: a will may fire long after its CONNECT was admitted).
 * Returns 0, or the admit hook's reason code. */
int cy_router_publish(cy_router *r, cy_msg *m, const cy_subscriber *from, const char *owner,
                      bool refusable);
/* Drill (cyan shard drop): from now on cy_router_publish routes nothing
 * and returns 0, so what clients publish here is acknowledged and lost. */
void cy_router_drop_all(cy_router *r);
/* Route a message that came from a peer shard to local subscribers only;
 * groups: the shared groups this shard was chosen to serve for it. */
void cy_router_local(cy_router *r, cy_msg *m, const cy_str *groups, unsigned n_groups);
/* Deliver the retained messages matching filter (not shared) to s, as for
 * a new subscription with options opts and id sub_id (0 = none). */
void cy_router_send_retained(cy_router *r, cy_subscriber *s, const char *filter, size_t len,
                             uint8_t opts, uint32_t sub_id);

/* ---- retained messages ---- */

/* May client_id (NUL-terminated, borrowed; NULL = no client) set m as a
 * retained message within max_retained, max_retained_bytes,
 * max_retained_per_client and max_retained_bytes_per_client? Replacing
 * counts only the difference; an empty payload (clearing), a message
 * without the retain flag and $SYS are always admitted. Returns 0, or
 * CY_RC_QUOTA_EXCEEDED (0x97) after counting limit_retained and logging
 * (at most one line per client per 10 s). */
int cy_router_retain_check(cy_router *r, const char *client_id, const cy_msg *m);
/* Apply a retained update from a peer shard (last writer wins). */
void cy_router_apply_retained(cy_router *r, cy_msg *m);
/* The retained message of topic, or NULL (borrowed). */
cy_msg *cy_router_retained(cy_router *r, const char *topic, size_t len);
/* Store loader: one retained message as stored (charged to its owner). */
int cy_router_load_retained(cy_router *r, const cy_store_msg *sm);


#endif
