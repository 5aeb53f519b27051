/* session: MQTT session state and the outbound message flow.
 *
 * A session's QoS 1/2 deliveries form one list in the order they were
 * routed: a prefix that is in flight (sent, has a packet id, waits for
 * PUBACK, or PUBREC then PUBCOMP) and the rest, queued, starting at
 * next_send. cy_session_pump moves deliveries from queued to in flight
 * while the window allows: min(max_inflight, the client's Receive Maximum).
 * Acks may arrive out of order; a delivery is unlinked wherever it is.
 *
 * QoS 0 messages are never queued: they are written straight to an online
 * client (dropped, and counted, if its output backlog is over the high
 * water mark) and not kept for an offline one.
 *
 * A persistent session (expiry > 0) mirrors its row, subscriptions and
 * deliveries into the store as they change; the store commits once per loop
 * pass, before any acknowledgement is flushed.
 */
#include "broker/broker_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <stddef.h>
#include <string.h>

cy_session *cy_session_new(cy_broker *b, const char *client_id, size_t len)
{
    /* One allocation with the id inline: the map's key points into it. */
    cy_session *s = cy_calloc(1, offsetof(cy_session, client_id) + len + 1);
    if (!s) return NULL;
    memcpy(s->client_id, client_id, len);
    s->client_id[len] = '\0';
    s->client_id_len = (uint16_t)len;
    cy_subscriber_init(&s->sub, &b->session_kind);
    if (cy_map_put(&b->sessions, s->client_id, len, s)) {
        cy_free(s);
        return NULL;
    }
    b->stats.sessions++;
    return s;
}

void cy_offline_link(cy_broker *b, cy_session *s)
{
    if (s->offline_prev || b->offline == s) return;
    s->offline_prev = NULL;
    s->offline_next = b->offline;
    if (b->offline) b->offline->offline_prev = s;
    b->offline = s;
}

void cy_offline_unlink(cy_broker *b, cy_session *s)
{
    if (!s->offline_prev && b->offline != s) return;
    if (s->offline_prev)
        s->offline_prev->offline_next = s->offline_next;
    else
        b->offline = s->offline_next;
    if (s->offline_next) s->offline_next->offline_prev = s->offline_prev;
    s->offline_next = s->offline_prev = NULL;
}

void cy_session_persist(cy_broker *b, cy_session *s)
{
    if (!s->persistent) return;
    cy_store_session sr = {
        .client_id = s->client_id,
        .version = s->version,
        .expiry = s->expiry,
        .disconnected_at = s->conn ? 0 : cy_wall_ms(),
    };
    cy_store_session_put(b->store, &sr);
}

static void publish_will(cy_broker *b, cy_session *s)
{
    cy_msg *m = s->will;
    s->will = NULL;
    s->will_at = 0;
    if (!m) return;
    cy_info(s->client_id, "publishing will on %s", m->topic);
    /* s: a retained will is charged to its client */
    cy_router_publish(b->router, m, &s->sub, s->client_id, false);
    cy_msg_unref(m);
}

/* Free what the session holds. ending: also undo its presence in the tree
 * and the store and publish a pending will (teardown skips all that). */
static void release(cy_broker *b, cy_session *s, bool ending)
{
    if (ending && s->will && s->will_at) publish_will(b, s);
    cy_msg_unref(s->will);
    s->will = NULL;
    for (uint32_t i = 0; i < s->n_subs; i++) {
        if (ending) cy_broker_sub_remove(b, &s->sub, s->subs[i].filter, s->subs[i].len);
        cy_free(s->subs[i].filter);
    }
    b->stats.subscriptions -= s->n_subs;
    cy_free(s->subs);
    cy_delivery *d = s->head;
    while (d) {
        cy_delivery *n = d->next;
        cy_msg_unref(d->msg);
        cy_free(d);
        d = n;
    }
    cy_free(s->inq2);
    if (ending && s->persistent) cy_store_session_delete(b->store, s->client_id);
    cy_offline_unlink(b, s);
    cy_map_del(&b->sessions, s->client_id, s->client_id_len);
    b->stats.sessions--;
    cy_free(s);
}

void cy_session_end(cy_broker *b, cy_session *s)
{
    cy_debug(s->client_id, "session ended");
    release(b, s, true);
}

void cy_session_free(cy_broker *b, cy_session *s)
{
    release(b, s, false);
}

void cy_session_detach(cy_broker *b, cy_session *s, bool abnormal)
{
    if (s->will) {
        if (!abnormal) {
            cy_msg_unref(s->will);
            s->will = NULL;
        } else if (s->will_delay == 0 || !s->persistent) {
            s->will_at = 1; /* due now */
            publish_will(b, s);
        } else {
            uint32_t delay = s->will_delay < s->expiry ? s->will_delay : s->expiry;
            s->will_at = uv_now(b->loop) + (int64_t)delay * 1000;
        }
    }
    if (!s->persistent) {
        cy_session_end(b, s);
        return;
    }
    s->offline_since = uv_now(b->loop);
    if (s->offline_since == 0) s->offline_since = 1;
    cy_offline_link(b, s);
    cy_session_persist(b, s);
}

/* ---- subscriptions ---- */

cy_sub *cy_session_find_sub(cy_session *s, const char *filter, size_t len)
{
    for (uint32_t i = 0; i < s->n_subs; i++)
        if (s->subs[i].len == len && memcmp(s->subs[i].filter, filter, len) == 0)
            return &s->subs[i];
    return NULL;
}

int cy_session_add_sub(cy_session *s, const char *filter, size_t len, uint8_t opts,
                       uint32_t sub_id)
{
    if (s->n_subs == s->cap_subs) {
        uint32_t cap = s->cap_subs ? s->cap_subs * 2 : 4;
        cy_sub *n = cy_realloc(s->subs, cap * sizeof(*n));
        if (!n) return CY_ENOMEM;
        s->subs = n;
        s->cap_subs = cap;
    }
    char *f = cy_strndup(filter, len);
    if (!f) return CY_ENOMEM;
    s->subs[s->n_subs++] = (cy_sub){.filter = f, .len = (uint16_t)len, .opts = opts,
                                    .sub_id = sub_id};
    return 0;
}

void cy_session_del_sub(cy_session *s, cy_sub *sub)
{
    cy_free(sub->filter);
    *sub = s->subs[--s->n_subs];
}

/* ---- inbound QoS 2 ids ---- */

bool cy_session_has_inq2(const cy_session *s, uint16_t id)
{
    for (uint32_t i = 0; i < s->n_inq2; i++)
        if (s->inq2[i] == id) return true;
    return false;
}

int cy_session_add_inq2(cy_session *s, uint16_t id)
{
    if (s->n_inq2 == s->cap_inq2) {
        uint32_t cap = s->cap_inq2 ? s->cap_inq2 * 2 : 4;
        uint16_t *n = cy_realloc(s->inq2, cap * sizeof(*n));
        if (!n) return CY_ENOMEM;
        s->inq2 = n;
        s->cap_inq2 = cap;
    }
    s->inq2[s->n_inq2++] = id;
    return 0;
}

bool cy_session_del_inq2(cy_session *s, uint16_t id)
{
    for (uint32_t i = 0; i < s->n_inq2; i++)
        if (s->inq2[i] == id) {
            s->inq2[i] = s->inq2[--s->n_inq2];
            return true;
        }
    return false;
}

/* ---- outbound ---- */

/* Find or assign an outbound topic alias for topic. Returns the alias (0 =
 * none) and sets *fresh when it was assigned now (the topic must be sent). */
static uint16_t alias_for(cy_conn *c, const cy_msg *m, bool *fresh)
{
    *fresh = false;
    cy_conn_v5 *x = c->v5; /* a client that allows aliases declared it in CONNECT */
    if (!x || !x->peer_alias_max) return 0;
    for (uint16_t i = 0; i < x->n_alias_out; i++)
        if (strcmp(x->alias_out[i], m->topic) == 0) return (uint16_t)(i + 1);
    uint16_t limit = x->peer_alias_max < 64 ? x->peer_alias_max : 64;
    if (x->n_alias_out >= limit) return 0;
    if (!x->alias_out) {
        x->alias_out = cy_calloc(limit, sizeof(char *));
        if (!x->alias_out) return 0;
    }
    char *t = cy_strndup(m->topic, m->topic_len);
    if (!t) return 0;
    x->alias_out[x->n_alias_out++] = t;
    *fresh = true;
    return x->n_alias_out;
}

/* Encode one PUBLISH to c. Returns 0, CY_ETIMEDOUT if the message expired,
 * CY_EMSGSIZE if it is over the client's maximum packet size (nothing sent). */
static int send_publish(cy_broker *b, cy_conn *c, cy_msg *m, uint8_t qos, bool retain, bool dup,
                        uint16_t packet_id, const uint32_t *sub_ids, uint32_t n_sub_ids)
{
    cy_mqtt_packet p;
    p.type = CY_MQTT_PUBLISH;
    cy_mqtt_publish *pub = &p.u.publish;
    pub->qos = qos;
    pub->dup = dup;
    pub->retain = retain;
    pub->topic = (cy_str){m->topic, m->topic_len};
    pub->packet_id = qos ? packet_id : 0;
    pub->payload = m->payload;
    pub->payload_len = m->payload_len;
    pub->props.present = 0;
    pub->props.n_sub_ids = 0;
    pub->props.out_sub_ids = NULL;
    pub->props.user_src = NULL;
    pub->props.user_src_len = 0;
    pub->props.extra = NULL;
    pub->props.extra_len = 0;
    bool fresh = false;
    uint16_t alias = 0;
    if (m->expiry_at) {
        int64_t left = m->expiry_at - cy_wall_ms();
        if (left <= 0) return CY_ETIMEDOUT;
        pub->props.present |= CY_PBIT(CY_PROP_MESSAGE_EXPIRY);
        pub->props.message_expiry = (uint32_t)((left + 999) / 1000);
    }
    if (c->version == CY_MQTT_V5) {
        if (n_sub_ids) {
            pub->props.present |= CY_PBIT(CY_PROP_SUBSCRIPTION_ID);
            pub->props.out_sub_ids = sub_ids;
            pub->props.n_sub_ids = n_sub_ids;
        }
        pub->props.extra = m->props;
        pub->props.extra_len = m->props_len;
        alias = alias_for(c, m, &fresh);
        if (alias) {
            pub->props.present |= CY_PBIT(CY_PROP_TOPIC_ALIAS);
            pub->props.topic_alias = alias;
            if (!fresh) pub->topic.len = 0;
        }
    }
    size_t before = c->out.len;
    int rc = cy_conn_send(c, &p);
    if (rc == 0 && cy_conn_peer_max_packet(c) && c->out.len - before > cy_conn_peer_max_packet(c)) {
        c->out.len = before; /* take it back */
        rc = CY_EMSGSIZE;
    }
    if (rc && fresh) cy_free(c->v5->alias_out[--c->v5->n_alias_out]);
    if (rc == 0) b->stats.publish_sent++;
    return rc;
}

static void drop(cy_broker *b, cy_session *s, const cy_msg *m, int why)
{
    if (why == CY_ETIMEDOUT) {
        b->stats.messages_expired++;
    } else {
        b->stats.messages_dropped++;
        cy_debug(s->client_id, "dropped message on %s: %s", m->topic, cy_strerror(why));
    }
}

void cy_session_remove_delivery(cy_broker *b, cy_session *s, cy_delivery *d)
{
    if (d == s->next_send) s->next_send = d->next;
    if (d->state == CY_MSG_QUEUED)
        s->n_queued--;
    else
        s->n_inflight--;
    if (d->prev)
        d->prev->next = d->next;
    else
        s->head = d->next;
    if (d->next)
        d->next->prev = d->prev;
    else
        s->tail = d->prev;
    if (d->store_id) cy_store_msg_delete(b->store, d->store_id);
    cy_msg_unref(d->msg);
    cy_free(d);
}

cy_delivery *cy_session_find_inflight(cy_session *s, uint16_t packet_id)
{
    for (cy_delivery *d = s->head; d && d != s->next_send; d = d->next)
        if (d->packet_id == packet_id) return d;
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

void cy_session_pump(cy_broker *b, cy_session *s)
{
    cy_conn *c = s->conn;
    if (!c || c->state != CONN_ACTIVE) return;
    uint32_t window = b->cfg->max_inflight;
    if (cy_conn_peer_recv_max(c) && cy_conn_peer_recv_max(c) < window)
        window = cy_conn_peer_recv_max(c);
    while (s->next_send && s->n_inflight < window) {
        cy_delivery *d = s->next_send;
        uint16_t id = next_packet_id(s);
        int rc = send_publish(b, c, d->msg, d->qos, d->retain, false, id, d->sub_ids,
                              d->n_sub_ids);
        if (rc) {
            drop(b, s, d->msg, rc);
            cy_session_remove_delivery(b, s, d);
            if (rc == CY_EPIPE) return;
            continue;
        }
        s->next_send = d->next;
        s->n_queued--;
        s->n_inflight++;
        d->packet_id = id;
        d->state = CY_MSG_SENT;
        if (d->store_id) cy_store_msg_update(b->store, d->store_id, id, CY_MSG_SENT);
    }
}

void cy_session_resume(cy_broker *b, cy_session *s)
{
    cy_conn *c = s->conn;
    cy_delivery *d = s->head;
    while (d && d != s->next_send) {
        cy_delivery *n = d->next;
        if (d->state == CY_MSG_RELEASED) {
            cy_mqtt_packet p;
            memset(&p, 0, sizeof(p));
            p.type = CY_MQTT_PUBREL;
            p.flags = 2;
            p.u.ack.packet_id = d->packet_id;
            cy_conn_send(c, &p);
        } else {
            int rc = send_publish(b, c, d->msg, d->qos, d->retain, true, d->packet_id,
                                  d->sub_ids, d->n_sub_ids);
            if (rc) {
                drop(b, s, d->msg, rc);
                cy_session_remove_delivery(b, s, d);
            }
        }
        d = n;
    }
    cy_session_pump(b, s);
}

void cy_session_deliver(cy_broker *b, cy_session *s, cy_msg *m, uint8_t qos, bool retain,
                        const uint32_t *sub_ids, uint32_t n_sub_ids)
{
    cy_conn *c = s->conn;
    if (qos == 0) {
        if (!c || c->state != CONN_ACTIVE) return;
        if (cy_conn_backlog(c) > CY_OUT_HIGH_WATER) {
            drop(b, s, m, CY_EBUSY);
            return;
        }
        int rc = send_publish(b, c, m, 0, retain, false, 0, sub_ids, n_sub_ids);
        if (rc) drop(b, s, m, rc);
        return;
    }
    if (s->n_inflight + s->n_queued >= b->cfg->max_queued) {
        b->stats.limit_queue_full++;
        drop(b, s, m, CY_EQUOTA);
        return;
    }
    if (n_sub_ids > 255) n_sub_ids = 255;
    cy_delivery *d = cy_malloc(sizeof(*d) + n_sub_ids * sizeof(uint32_t));
    if (!d) {
        drop(b, s, m, CY_ENOMEM);
        return;
    }
    d->msg = cy_msg_ref(m);
    d->store_id = 0;
    d->packet_id = 0;
    d->qos = qos;
    d->state = CY_MSG_QUEUED;
    d->retain = retain;
    d->n_sub_ids = (uint8_t)n_sub_ids;
    if (n_sub_ids) memcpy(d->sub_ids, sub_ids, n_sub_ids * sizeof(uint32_t));
    d->next = NULL;
    d->prev = s->tail;
    if (s->tail)
        s->tail->next = d;
    else
        s->head = d;
    s->tail = d;
    if (!s->next_send) s->next_send = d;
    s->n_queued++;
    if (s->persistent) {
        cy_store_msg sm = cy_msg_to_store(m, qos, retain);
        sm.sub_ids = d->sub_ids;
        sm.n_sub_ids = d->n_sub_ids;
        if (cy_store_msg_put(b->store, s->client_id, &sm) == 0) d->store_id = sm.id;
    }
    if (c) cy_session_pump(b, s);
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
    return s->conn ? 2 : 1;
}

void cy_session_init_kind(cy_broker *b)
{
    b->session_kind = (cy_sub_kind){.name = "session",
                                    .deliver = session_deliver,
                                    .grade = session_grade,
                                    .ctx = b};
}
