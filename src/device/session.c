/* session: a device's session and its outbound message flow (session.h).
 *
 * Everything here speaks to the device through its cy_link: the session
 * decides what to send and when (queue, window, QoS, resend after a
 * reconnect), the transport how.
 */
#include "device/device_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_intern.h"
#include "core/cy_log.h"
#include "router/topic.h"

#include <stddef.h>
#include <string.h>

cy_session *cy_session_find(cy_devices *d, const char *client_id, size_t len)
{
    return cy_session_map_get(&d->sessions, client_id, len);
}

size_t cy_session_count(const cy_devices *d)
{
    return d->sessions.count;
}

cy_session *cy_session_new(cy_devices *d, const char *client_id, size_t len)
{
    /* One allocation with the id inline: it is the sessions map's key. */
    cy_session *s = cy_calloc(1, offsetof(cy_session, client_id) + len + 1);
    if (!s) return NULL;
    memcpy(s->client_id, client_id, len);
    s->client_id[len] = '\0';
    s->client_id_len = (uint16_t)len;
    cy_subscriber_init(&s->sub, &d->session_kind);
    if (cy_session_map_put(&d->sessions, s)) {
        cy_free(s);
        return NULL;
    }
    d->stats->sessions++;
    return s;
}

/* ---- the cold block (session.h) ---- */

/* s's cold block, allocated if it has none; NULL: out of memory. */
static cy_session_cold *cold_get(cy_session *s)
{
    if (!s->cold) s->cold = cy_calloc(1, sizeof(*s->cold));
    return s->cold;
}

/* Free s's cold block if all of it is empty: no delivery, no inbound QoS 2
 * id, not in the offline list. */
static void cold_trim(cy_session *s)
{
    cy_session_cold *c = s->cold;
    if (!c || c->head || s->n_inq2 || c->offline_since) return;
    cy_free(c->inq2);
    cy_free(c);
    s->cold = NULL;
}

int cy_offline_link(cy_devices *d, cy_session *s, int64_t since)
{
    cy_session_cold *c = cold_get(s);
    if (!c) return CY_ENOMEM;
    c->offline_since = since > 0 ? since : 1;
    if (c->offline_prev || d->offline == s) return 0;
    c->offline_prev = NULL;
    c->offline_next = d->offline;
    if (d->offline) d->offline->cold->offline_prev = s;
    d->offline = s;
    return 0;
}

void cy_offline_unlink(cy_devices *d, cy_session *s)
{
    cy_session_cold *c = s->cold;
    if (!c) return;
    if (c->offline_prev || d->offline == s) {
        if (c->offline_prev)
            c->offline_prev->cold->offline_next = c->offline_next;
        else
            d->offline = c->offline_next;
        if (c->offline_next) c->offline_next->cold->offline_prev = c->offline_prev;
        c->offline_next = c->offline_prev = NULL;
    }
    c->offline_since = 0;
    cold_trim(s);
}

void cy_session_persist(cy_devices *d, cy_session *s)
{
    if (!s->persistent) return;
    cy_store_session sr = {
        .client_id = s->client_id,
        .version = s->version,
        .expiry = s->expiry,
        .disconnected_at = s->link ? 0 : cy_wall_ms(),
    };
    cy_store_session_put(d->store, &sr);
}

int cy_session_publish(cy_devices *d, cy_session *s, cy_msg *m, bool refusable)
{
    /* s: no-local, and a retained message is charged to its client */
    return cy_router_publish(d->router, m, &s->sub, s->client_id, refusable);
}

void cy_session_publish_will(cy_devices *d, cy_session *s, const char *when)
{
    cy_msg *m = s->will;
    s->will = NULL;
    s->will_at = 0;
    if (!m) return;
    /* Checked at CONNECT, and again now: a reload since may deny it. */
    cy_who w;
    cy_session_who(s, &w);
    if (!cy_device_acl(d, &w, m->topic, m->topic_len, CY_ACL_WRITE)) {
        cy_info(s->client_id, "will on %s not published: acl_file no longer grants it%s", m->topic,
                when);
        cy_msg_unref(m);
        return;
    }
    cy_info(s->client_id, "publishing will on %s%s", m->topic, when);
    cy_session_publish(d, s, m, false);
    cy_msg_unref(m);
}

/* Free what the session holds. ending: also undo its presence in the tree
 * and the store and publish a pending will (teardown skips all that). */
static void release(cy_devices *d, cy_session *s, bool ending)
{
    if (ending && s->will && s->will_at) cy_session_publish_will(d, s, "");
    cy_msg_unref(s->will);
    s->will = NULL;
    for (uint32_t i = 0; i < s->n_subs; i++) {
        if (ending) cy_cluster_unsubscribe(d->cluster, &s->sub, s->subs[i].filter, s->subs[i].len);
        cy_free(s->subs[i].filter);
    }
    d->stats->subscriptions -= s->n_subs;
    cy_free(s->subs);
    if (s->link) d->online_queued -= cy_session_n_queued(s);
    cy_offline_unlink(d, s);
    if (s->cold) {
        cy_delivery *dv = s->cold->head;
        while (dv) {
            cy_delivery *n = dv->next;
            /* the store deletes the session's other rows, not its messages */
            if (ending && s->persistent && dv->store_id > 0)
                cy_store_msg_delete(d->store, dv->store_id);
            cy_msg_unref(dv->msg);
            cy_free(dv);
            dv = n;
        }
        cy_free(s->cold->inq2);
        cy_free(s->cold);
    }
    if (s->username != s->client_id) cy_intern_drop(s->username);
    if (ending && s->persistent) cy_store_session_delete(d->store, s->client_id);
    cy_session_map_del(&d->sessions, s);
    d->stats->sessions--;
    cy_free(s);
}

void cy_session_end(cy_devices *d, cy_session *s)
{
    cy_debug(s->client_id, "session ended");
    release(d, s, true);
}

void cy_session_free(cy_devices *d, cy_session *s)
{
    release(d, s, false);
}

void cy_session_attach(cy_devices *d, cy_session *s, cy_link *link)
{
    cy_offline_unlink(d, s); /* and offline_since 0 */
    if (s->will) {           /* a will waiting for its delay is cancelled by the return */
        cy_msg_unref(s->will);
        s->will = NULL;
        s->will_at = 0;
    }
    if (s->link) d->online_queued -= cy_session_n_queued(s);
    s->link = link;
    if (link) d->online_queued += cy_session_n_queued(s);
}

void cy_session_who(const cy_session *s, cy_who *out)
{
    *out = (cy_who){s->client_id, s->client_id_len, s->username, s->username_len, s->acl_internal};
}

void cy_session_acl_recheck(cy_devices *d, cy_session *s)
{
    s->acl_gen = 0;
    if (!d->acl) return;
    cy_who w;
    cy_session_who(s, &w);
    if (!w.internal)
        for (uint32_t i = 0; i < s->n_subs; i++) {
            const char *f = s->subs[i].filter, *grp, *inner;
            size_t len = s->subs[i].len, glen, ilen;
            if (cy_topic_split_shared(f, len, &grp, &glen, &inner, &ilen)) {
                f = inner;
                len = ilen;
            }
            if (!cy_acl_check(d->acl, w.client_id, w.client_id_len, w.username, w.username_len, f,
                              len, CY_ACL_SUBSCRIBE))
                return;
        }
    s->acl_gen = d->acl_gen;
}

int cy_session_set_who(cy_devices *d, cy_session *s, const char *username, size_t len,
                       bool internal)
{
    char *u = NULL;
    if (len > UINT16_MAX) return CY_EINVAL;
    if (username) {
        if (len == s->client_id_len && memcmp(username, s->client_id, len) == 0)
            u = s->client_id;                             /* an isolated device: no copy */
        else if (!(u = (char *)cy_intern(username, len))) /* a fleet's shared username: one copy */
            return CY_ENOMEM;
    }
    if (s->username != s->client_id) cy_intern_drop(s->username);
    s->username = u;
    s->username_len = (uint16_t)(username ? len : 0);
    s->acl_internal = internal;
    cy_session_acl_recheck(d, s);
    return 0;
}

void cy_session_detach(cy_devices *d, cy_session *s, bool abnormal)
{
    if (s->link) d->online_queued -= cy_session_n_queued(s);
    s->link = NULL;
    if (s->will) {
        if (!abnormal) {
            cy_msg_unref(s->will);
            s->will = NULL;
        } else if (s->will_delay == 0 || !s->persistent) {
            s->will_at = 1; /* due now */
            cy_session_publish_will(d, s, "");
        } else {
            uint32_t delay = s->will_delay < s->expiry ? s->will_delay : s->expiry;
            s->will_at = uv_now(d->loop) + (int64_t)delay * 1000;
        }
    }
    if (!s->persistent) {
        cy_session_end(d, s);
        return;
    }
    if (cy_offline_link(d, s, (int64_t)uv_now(d->loop))) {
        /* Kept (its rows are, and a restart reads them back) but out of
         * the offline list: it cannot expire, nor its will wait, until its
         * device returns or the shard restarts. */
        cy_warn(s->client_id, "out of memory: the session will not expire while offline");
        if (s->will && s->will_at) cy_session_publish_will(d, s, " early (out of memory)");
    }
    cy_session_persist(d, s);
}

void cy_session_forget(cy_devices *d, cy_session *s)
{
    if (!s->persistent) return;
    s->persistent = false;
    /* its subscriptions no longer need stored forwards (best effort: out
     * of memory leaves them durable, which only costs) */
    for (uint32_t i = 0; i < s->n_subs; i++)
        cy_cluster_subscribe(d->cluster, &s->sub, s->subs[i].filter, s->subs[i].len,
                             s->subs[i].opts, s->subs[i].sub_id);
    cy_store_session_delete(d->store, s->client_id);
    for (cy_delivery *dv = cy_session_head(s); dv; dv = dv->next) {
        if (dv->store_id > 0) cy_store_msg_delete(d->store, dv->store_id);
        dv->store_id = 0;
    }
}

/* ---- subscriptions ---- */

cy_sub *cy_session_find_sub(cy_session *s, const char *filter, size_t len)
{
    for (uint32_t i = 0; i < s->n_subs; i++)
        if (s->subs[i].len == len && memcmp(s->subs[i].filter, filter, len) == 0)
            return &s->subs[i];
    return NULL;
}

/* s->subs has room for at least the power of two at or above n_subs (it is
 * grown to 2n when a power of two n is full, and only unsubscribing all
 * shrinks it: freed), so it needs no capacity field; it starts at one
 * subscription, what most devices hold (a 32-byte chunk rather than 80). */
static int add_sub(cy_session *s, const char *filter, size_t len, uint8_t opts, uint32_t sub_id)
{
    uint32_t n_subs = s->n_subs;
    if ((n_subs & (n_subs - 1)) == 0) { /* 0, or a power of two: full */
        uint32_t cap = n_subs ? n_subs * 2 : 1;
        cy_sub *n = cy_realloc(s->subs, cap * sizeof(*n));
        if (!n) return CY_ENOMEM;
        s->subs = n;
    }
    char *f = cy_strndup(filter, len);
    if (!f) return CY_ENOMEM;
    s->subs[s->n_subs++] =
        (cy_sub){.filter = f, .len = (uint16_t)len, .opts = opts, .sub_id = sub_id};
    return 0;
}

/* The options the router and the peers see: the session's, and whether a
 * message for it must be stored (CY_SUBOPT_DURABLE: forwards to it from
 * other shards go through the durable outbox). */
static uint8_t routed_opts(const cy_session *s, uint8_t opts)
{
    return (uint8_t)(s->persistent ? opts | CY_SUBOPT_DURABLE : opts);
}

int cy_session_load_sub(cy_devices *d, cy_session *s, const char *filter, size_t len, uint8_t opts,
                        uint32_t sub_id)
{
    if (cy_cluster_subscribe(d->cluster, &s->sub, filter, len, routed_opts(s, opts), sub_id))
        return CY_ENOMEM;
    if (add_sub(s, filter, len, opts, sub_id)) return CY_ENOMEM;
    d->stats->subscriptions++;
    return 0;
}

int cy_session_subscribe(cy_devices *d, cy_session *s, const char *filter, size_t len, uint8_t opts,
                         uint32_t sub_id, bool *fresh)
{
    *fresh = false;
    cy_sub *sub = cy_session_find_sub(s, filter, len);
    if (cy_cluster_subscribe(d->cluster, &s->sub, filter, len, routed_opts(s, opts), sub_id))
        return CY_ENOMEM;
    if (sub) {
        sub->opts = opts;
        sub->sub_id = sub_id;
    } else if (add_sub(s, filter, len, opts, sub_id)) {
        cy_cluster_unsubscribe(d->cluster, &s->sub, filter, len);
        return CY_ENOMEM;
    } else {
        d->stats->subscriptions++;
        *fresh = true;
    }
    if (s->persistent) cy_store_sub_put(d->store, s->client_id, filter, len, opts, sub_id);
    return 0;
}

int cy_session_unsubscribe(cy_devices *d, cy_session *s, const char *filter, size_t len)
{
    cy_sub *sub = cy_session_find_sub(s, filter, len);
    if (!sub) return CY_ENOENT;
    cy_cluster_unsubscribe(d->cluster, &s->sub, filter, len);
    if (s->persistent) cy_store_sub_delete(d->store, s->client_id, filter, len);
    cy_free(sub->filter);
    *sub = s->subs[--s->n_subs];
    if (!s->n_subs) {
        cy_free(s->subs);
        s->subs = NULL;
    }
    d->stats->subscriptions--;
    return 0;
}

void cy_session_send_retained(cy_devices *d, cy_session *s, const char *filter, size_t len,
                              uint8_t opts, uint32_t sub_id)
{
    cy_router_send_retained(d->router, &s->sub, filter, len, opts, sub_id);
}

/* ---- inbound QoS 2 ids ---- */

bool cy_session_has_inq2(const cy_session *s, uint16_t id)
{
    for (uint32_t i = 0; i < s->n_inq2; i++) /* n_inq2 > 0: s has a cold block */
        if (s->cold->inq2[i] == id) return true;
    return false;
}

int cy_session_load_inq2(cy_session *s, uint16_t id)
{
    cy_session_cold *c = cold_get(s);
    if (!c) return CY_ENOMEM;
    if (s->n_inq2 == c->cap_inq2) {
        uint32_t cap = c->cap_inq2 ? c->cap_inq2 * 2 : 4;
        uint16_t *n = cy_realloc(c->inq2, cap * sizeof(*n));
        if (!n) {
            cold_trim(s);
            return CY_ENOMEM;
        }
        c->inq2 = n;
        c->cap_inq2 = cap;
    }
    c->inq2[s->n_inq2++] = id;
    return 0;
}

int cy_session_add_inq2(cy_devices *d, cy_session *s, uint16_t id)
{
    int rc = cy_session_load_inq2(s, id);
    if (rc == 0 && s->persistent) cy_store_inq2_put(d->store, s->client_id, id);
    return rc;
}

bool cy_session_del_inq2(cy_devices *d, cy_session *s, uint16_t id)
{
    for (uint32_t i = 0; i < s->n_inq2; i++)
        if (s->cold->inq2[i] == id) {
            s->cold->inq2[i] = s->cold->inq2[--s->n_inq2];
            if (s->persistent) cy_store_inq2_delete(d->store, s->client_id, id);
            cold_trim(s);
            return true;
        }
    return false;
}

/* ---- outbound ---- */

/* May s's device read m (the ACL)? Asked per message only when the
 * subscriptions alone do not prove it (session.h). */
static bool may_read(cy_devices *d, cy_session *s, const cy_msg *m)
{
    if (!d->acl || s->acl_internal) return true;
    if (s->acl_gen == d->acl_gen && !cy_acl_has_deny(d->acl)) return true;
    cy_who w;
    cy_session_who(s, &w);
    return cy_device_acl(d, &w, m->topic, m->topic_len, CY_ACL_READ);
}

/* Hand one message to s's link l. Returns 0, CY_EACCES (the ACL refused
 * it: not sent) or the link's error. */
static int send_msg(cy_devices *d, cy_session *s, cy_link *l, cy_msg *m, uint8_t qos, bool retain,
                    bool dup, uint16_t id, const uint32_t *sub_ids, uint32_t n_sub_ids)
{
    if (d->acl && !may_read(d, s, m)) return CY_EACCES;
    cy_link_msg lm = {m, qos, retain, dup, qos ? id : 0, sub_ids, n_sub_ids};
    int rc = l->ops->send(l, &lm);
    if (rc == 0) {
        d->stats->publish_sent++;
        if (qos == 0)
            d->stats->publish_sent_qos0++;
        else if (qos == 1)
            d->stats->publish_sent_qos1++;
        else
            d->stats->publish_sent_qos2++;
    }
    return rc;
}

static void drop(cy_devices *d, cy_session *s, const cy_msg *m, int why)
{
    if (why == CY_EACCES) return; /* counted and logged by cy_device_acl */
    if (why == CY_ETIMEDOUT) {
        d->stats->messages_expired++;
    } else {
        d->stats->messages_dropped++;
        cy_debug(s->client_id, "dropped message on %s: %s", m->topic, cy_strerror(why));
    }
}

void cy_session_remove_delivery(cy_devices *d, cy_session *s, cy_delivery *dv)
{
    cy_session_cold *c = s->cold; /* dv is in it */
    if (dv == c->next_send) c->next_send = dv->next;
    if (dv->state == CY_MSG_QUEUED) {
        c->n_queued--;
        if (s->link) d->online_queued--;
    } else
        c->n_inflight--;
    if (dv->prev)
        dv->prev->next = dv->next;
    else
        c->head = dv->next;
    if (dv->next)
        dv->next->prev = dv->prev;
    else
        c->tail = dv->prev;
    if (dv->store_id > 0) cy_store_msg_delete(d->store, dv->store_id);
    cy_msg_unref(dv->msg);
    cy_free(dv);
    cold_trim(s);
}

void cy_session_released(cy_devices *d, cy_session *s, cy_delivery *dv)
{
    (void)s;
    dv->state = CY_MSG_RELEASED;
    if (dv->store_id > 0)
        cy_store_msg_update(d->store, dv->store_id, dv->packet_id, CY_MSG_RELEASED);
}

cy_delivery *cy_session_find_inflight(cy_session *s, uint16_t packet_id)
{
    if (!s->cold) return NULL;
    for (cy_delivery *dv = s->cold->head; dv && dv != s->cold->next_send; dv = dv->next)
        if (dv->packet_id == packet_id) return dv;
    return NULL;
}

static uint16_t next_packet_id(cy_session *s)
{
    for (;;) {
        uint16_t id = (uint16_t)(s->last_packet_id + 1);
        if (id == 0) id = 1;
        s->last_packet_id = id;
        if (!cy_session_find_inflight(s, id)) return id;
    }
}

/* How many deliveries may be in flight to the device behind l. */
static uint32_t window_of(const cy_devices *d, const cy_link *l)
{
    uint32_t window = d->cfg->max_inflight;
    uint32_t own = l->ops->window(l);
    return own && own < window ? own : window;
}

uint32_t cy_session_sendable(const cy_devices *d, const cy_session *s)
{
    const cy_link *l = s->link;
    const cy_session_cold *c = s->cold;
    if (!l || !c || !c->next_send || !l->ops->ready(l)) return 0;
    uint32_t window = window_of(d, l);
    if (c->n_inflight >= window) return 0;
    uint32_t room = window - c->n_inflight;
    return c->n_queued < room ? c->n_queued : room;
}

/* dv's row, in its state as it is now: queued, or sent with its packet
 * id (one INSERT where a queued row and its UPDATE at the send were two). */
static void put_row(cy_devices *d, cy_session *s, cy_delivery *dv)
{
    cy_store_msg sm = cy_msg_to_store(dv->msg, dv->qos, dv->retain);
    sm.sub_ids = dv->sub_ids;
    sm.n_sub_ids = dv->n_sub_ids;
    sm.packet_id = dv->packet_id;
    sm.state = dv->state;
    dv->store_id = cy_store_msg_put(d->store, s->client_id, &sm) == 0 ? sm.id : 0;
}

void cy_session_pump(cy_devices *d, cy_session *s)
{
    cy_link *l = s->link;
    if (!l || !l->ops->ready(l)) return;
    uint32_t window = window_of(d, l);
    /* s->cold is read again each round: a dropped delivery may free it */
    while (s->cold && s->cold->next_send && s->cold->n_inflight < window) {
        cy_delivery *dv = s->cold->next_send;
        uint16_t id = next_packet_id(s);
        int rc =
            send_msg(d, s, l, dv->msg, dv->qos, dv->retain, false, id, dv->sub_ids, dv->n_sub_ids);
        if (rc == CY_EPIPE) return; /* the link is going: it stays queued for the next one */
        if (rc) {
            drop(d, s, dv->msg, rc);
            cy_session_remove_delivery(d, s, dv);
            continue;
        }
        cy_session_cold *c = s->cold; /* dv is still in it */
        c->next_send = dv->next;
        c->n_queued--;
        d->online_queued--;
        c->n_inflight++;
        d->progress++; /* a queued delivery went out */
        dv->packet_id = id;
        dv->state = CY_MSG_SENT;
        /* A QoS 2 row records its packet id when it goes out: after a
         * crash the receiver may hold that id for exactly-once. A QoS 1
         * row that was queued stays queued on disk (one write fewer per
         * message): if the shard dies before the PUBACK it is sent again
         * as new, with a new packet id; a QoS 1 receiver keeps no state
         * by packet id, and gets the copy it would get with DUP. */
        if (dv->store_id == CY_ROW_PENDING)
            put_row(d, s, dv);
        else if (dv->store_id && dv->qos == 2)
            cy_store_msg_update(d->store, dv->store_id, id, CY_MSG_SENT);
    }
}

void cy_session_resume(cy_devices *d, cy_session *s)
{
    cy_link *l = s->link;
    cy_delivery *dv = cy_session_head(s);
    /* a removal that empties the queue frees the cold block: n is NULL then */
    while (dv && dv != cy_session_next_send(s)) {
        cy_delivery *n = dv->next;
        if (dv->state == CY_MSG_RELEASED) {
            l->ops->send_release(l, dv->packet_id);
        } else {
            int rc = send_msg(d, s, l, dv->msg, dv->qos, dv->retain, true, dv->packet_id,
                              dv->sub_ids, dv->n_sub_ids);
            if (rc == CY_EPIPE) return; /* kept in flight for the next link */
            if (rc) {
                drop(d, s, dv->msg, rc);
                cy_session_remove_delivery(d, s, dv);
            }
        }
        dv = n;
    }
    cy_session_pump(d, s);
}

/* Link a delivery at the tail of the queue (s has a cold block). */
static void enqueue(cy_devices *d, cy_session *s, cy_delivery *dv)
{
    cy_session_cold *c = s->cold;
    if (s->link) d->online_queued++;
    dv->next = NULL;
    dv->prev = c->tail;
    if (c->tail)
        c->tail->next = dv;
    else
        c->head = dv;
    c->tail = dv;
    if (!c->next_send) c->next_send = dv;
    c->n_queued++;
}

void cy_session_deliver(cy_devices *d, cy_session *s, cy_msg *m, uint8_t qos, bool retain,
                        const uint32_t *sub_ids, uint32_t n_sub_ids)
{
    cy_link *l = s->link;
    if (qos == 0) {
        if (!l || !l->ops->ready(l)) return;
        if (l->ops->congested(l)) {
            drop(d, s, m, CY_EBUSY);
            return;
        }
        int rc = send_msg(d, s, l, m, 0, retain, false, 0, sub_ids, n_sub_ids);
        if (rc) drop(d, s, m, rc);
        return;
    }
    /* Refused now rather than queued, stored and dropped at the send (a
     * queued one is checked again as it goes: the rules may change). */
    if (l && d->acl && !may_read(d, s, m)) return;
    if (cy_session_n_inflight(s) + cy_session_n_queued(s) >= d->cfg->max_queued) {
        d->stats->limit_queue_full++;
        drop(d, s, m, CY_EQUOTA);
        return;
    }
    if (n_sub_ids > 255) n_sub_ids = 255;
    cy_delivery *dv = cold_get(s) ? cy_malloc(sizeof(*dv) + n_sub_ids * sizeof(uint32_t)) : NULL;
    if (!dv) {
        cold_trim(s);
        drop(d, s, m, CY_ENOMEM);
        return;
    }
    dv->msg = cy_msg_ref(m);
    dv->store_id = 0;
    dv->packet_id = 0;
    dv->qos = qos;
    dv->state = CY_MSG_QUEUED;
    dv->retain = retain;
    dv->n_sub_ids = (uint8_t)n_sub_ids;
    if (n_sub_ids) memcpy(dv->sub_ids, sub_ids, n_sub_ids * sizeof(uint32_t));
    enqueue(d, s, dv);
    /* Its row is written once, in this call: by the pump if it goes out
     * now (sent, with its packet id), else below (queued). Both are in the
     * pass's commit, before the publisher's acknowledgement. */
    bool row = s->persistent; /* and so not ended by a link closing in the pump */
    if (row) dv->store_id = CY_ROW_PENDING;
    if (l) cy_session_pump(d, s);
    /* Not sent (the window is full, the link not ready), nor dropped by
     * the pump (which frees it): still the queue's tail. */
    cy_session_cold *c = row ? s->cold : NULL; /* NULL too if the pump dropped it */
    if (c && c->tail && c->tail->store_id == CY_ROW_PENDING) put_row(d, s, c->tail);
}

int cy_session_load_msg(cy_devices *d, cy_session *s, const cy_store_msg *sm)
{
    cy_msg *m = cy_msg_new(sm->topic, sm->topic_len, sm->payload, sm->payload_len, sm->props,
                           sm->props_len, sm->qos, sm->retain, sm->expiry_at);
    uint32_t n = sm->n_sub_ids > 255 ? 255 : sm->n_sub_ids;
    cy_delivery *dv = m && cold_get(s) ? cy_malloc(sizeof(*dv) + n * sizeof(uint32_t)) : NULL;
    if (!dv) {
        cold_trim(s);
        cy_msg_unref(m);
        return CY_ENOMEM;
    }
    dv->msg = m;
    dv->store_id = sm->id;
    dv->packet_id = sm->packet_id;
    dv->qos = sm->qos;
    dv->state = sm->state;
    dv->retain = sm->retain;
    dv->n_sub_ids = (uint8_t)n;
    if (n) memcpy(dv->sub_ids, sm->sub_ids, n * sizeof(uint32_t));
    if (dv->state == CY_MSG_QUEUED) {
        enqueue(d, s, dv);
        return 0;
    }
    /* In flight: before the first queued one. */
    cy_session_cold *c = s->cold;
    cy_delivery *before = c->next_send;
    dv->next = before;
    dv->prev = before ? before->prev : c->tail;
    if (dv->prev)
        dv->prev->next = dv;
    else
        c->head = dv;
    if (before)
        before->prev = dv;
    else
        c->tail = dv;
    c->n_inflight++;
    if (dv->packet_id > s->last_packet_id) s->last_packet_id = dv->packet_id;
    return 0;
}

/* ---- the session as a subscriber ---- */

static void session_deliver(void *ctx, cy_subscriber *sub, const cy_route *r, const cy_match *x)
{
    cy_session *s = (cy_session *)((char *)sub - offsetof(cy_session, sub));
    cy_session_deliver(ctx, s, r->m, x->qos, x->retain, x->sub_ids, x->n_sub_ids);
}

/* A shared group prefers a member that is online: an offline one gets the
 * message queued, only when no member is online. */
static int session_grade(void *ctx, const cy_subscriber *sub, const cy_route *r)
{
    (void)ctx;
    (void)r;
    const cy_session *s = (const cy_session *)((const char *)sub - offsetof(cy_session, sub));
    return s->link ? 2 : 1;
}

void cy_session_init_kind(cy_devices *d)
{
    d->session_kind = (cy_sub_kind){
        .name = "session", .deliver = session_deliver, .grade = session_grade, .ctx = d};
}
