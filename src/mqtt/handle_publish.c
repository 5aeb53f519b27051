/* handle_publish: PUBLISH from a client, and the QoS 1/2 acknowledgements
 * of both directions.
 *
 * Inbound QoS 2 is exactly-once by packet id: the id is remembered (and
 * stored, for a persistent session) when the message is routed; a repeat of
 * the same id before PUBREL is answered with PUBREC again and not routed.
 * PUBREL forgets the id and answers PUBCOMP.
 *
 * Acknowledgements are appended to the output like any packet; they reach
 * the socket after the store commit of this loop pass, so a PUBACK or
 * PUBREC always follows the durable write of what it acknowledges.
 *
 * While the data folder's disk is full (cy_space_full) a QoS 1/2 or
 * retained publish is refused before it is routed: MQTT 5 gets 0x97 Quota
 * exceeded in its PUBACK/PUBREC, a 3.1.1 client is disconnected (it cannot
 * hear a refusal), a retained QoS 0 publish is dropped (MQTT 5) likewise.
 * QoS 0 publishes and the acknowledgements of both directions go on.
 *
 * A connection's publishes are limited to max_publish_rate messages and
 * max_publish_bytes_rate bytes (topic and payload) per second, with bursts
 * of one second's worth (core/cy_limit.h, a token bucket per connection,
 * charged at the loop's cached time: no system call). Over it, a MQTT 5
 * QoS 1/2 publish gets 0x97 Quota exceeded in its PUBACK/PUBREC and a QoS
 * 0 one is dropped, before anything else is done with it. A 3.1.1 client
 * cannot hear a refusal, and closing it would make it reconnect and send
 * the same again: its publish is taken, and once it is over the rate its
 * socket is not read until the rate allows again (as EMQX and HiveMQ
 * throttle), so the client's own sends wait; nothing is lost or refused.
 * The resend of a QoS 2 publish already taken is not charged again.
 */
#include "mqtt/gateway_int.h"

#include "core/cy_alloc.h"
#include "core/cy_log.h"

#include <string.h>

static void send_ack(cy_conn *c, uint8_t type, uint16_t id, uint8_t reason)
{
    cy_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = type;
    p.flags = type == CY_MQTT_PUBREL ? 2 : 0;
    p.u.ack.packet_id = id;
    p.u.ack.reason = c->version == CY_MQTT_V5 ? reason : 0;
    /* A retained update is acknowledged once every shard holds it. */
    cy_conn_send_acked(c, &p);
}

/* A refused PUBLISH: MQTT 5 QoS 1/2 get the reason in the ack; QoS 0 is
 * dropped; a 3.1.1 client, which has no way to hear a refusal, is
 * disconnected rather than acknowledged for a message that was not taken. */
static int refuse(cy_conn *c, cy_mqtt_publish *p, uint8_t reason, const char *why)
{
    if (c->version != CY_MQTT_V5) {
        cy_info(cy_conn_name(c), "publish refused: %s", why);
        return reason;
    }
    cy_debug(cy_conn_name(c), "publish refused: %s", why);
    if (p->qos == 1) send_ack(c, CY_MQTT_PUBACK, p->packet_id, reason);
    if (p->qos == 2) send_ack(c, CY_MQTT_PUBREC, p->packet_id, reason);
    return 0;
}

/* max_publish_rate and max_publish_bytes_rate (see the file comment).
 * True when p was refused or dropped here (answered as it must be). */
static bool over_rate(cy_conn *c, cy_mqtt_publish *p)
{
    cy_mqtt *g = c->g;
    cy_conn_v5 *x = cy_conn_v5_get(c);
    if (!x) return false; /* out of memory: no limit rather than no service */
    int64_t now_us = (int64_t)uv_now(g->loop) * 1000;
    size_t bytes = p->topic.len + p->payload_len;
    if (c->version != CY_MQTT_V5) {
        if (!cy_pub_rate_charge(&x->rate, g->cfg, bytes, now_us)) cy_conn_throttle(c);
        return false;
    }
    if (cy_pub_rate_take(&x->rate, g->cfg, bytes, now_us)) return false;
    g->stats->limit_publish_rate++;
    if (p->qos == 0) {
        cy_debug(cy_conn_name(c), "publish dropped: over max_publish_rate or "
                                  "max_publish_bytes_rate");
        return true;
    }
    refuse(c, p, CY_RC_QUOTA_EXCEEDED, "over max_publish_rate or max_publish_bytes_rate");
    return true;
}

/* The MQTT binding of a device's reply (device/calls.c): the request id
 * is the topic level after "reply" (3.1.1) or the Correlation Data (5.0).
 * Taken here, acknowledged like any publish, never routed. */
static void device_reply(cy_conn *c, const cy_mqtt_publish *p)
{
    cy_session *s = c->sess;
    const char *rest = p->topic.p + 8 + s->client_id_len + 1;
    size_t rlen = p->topic.len - (8 + s->client_id_len + 1);
    const char *rid = NULL;
    size_t ridlen = 0;
    if (rlen > 6) {
        rid = rest + 6;
        ridlen = rlen - 6;
    } else if (p->props.present & CY_PBIT(CY_PROP_CORRELATION_DATA)) {
        rid = p->props.correlation_data.p;
        ridlen = p->props.correlation_data.len;
    }
    cy_device_reply(c->g->devices, s, rid, ridlen, p->payload, p->payload_len);
}

/* Resolve the MQTT 5 topic alias. Returns 0 or a reason code. */
static int resolve_alias(cy_conn *c, cy_mqtt_publish *p)
{
    cy_mqtt *g = c->g;
    uint16_t a = p->props.topic_alias;
    if (a == 0 || a > g->cfg->topic_alias_max) return CY_RC_TOPIC_ALIAS_INVALID;
    cy_conn_v5 *x = cy_conn_v5_get(c);
    if (!x) return CY_RC_UNSPECIFIED;
    if (!x->alias_in) {
        x->alias_in = cy_calloc(g->cfg->topic_alias_max + 1u, sizeof(char *));
        x->alias_in_len = cy_calloc(g->cfg->topic_alias_max + 1u, sizeof(uint16_t));
        if (!x->alias_in || !x->alias_in_len) return CY_RC_UNSPECIFIED;
    }
    if (p->topic.len) {
        char *t = cy_strndup(p->topic.p, p->topic.len);
        if (!t) return CY_RC_UNSPECIFIED;
        cy_free(x->alias_in[a]);
        x->alias_in[a] = t;
        x->alias_in_len[a] = (uint16_t)p->topic.len;
        return 0;
    }
    if (!x->alias_in[a]) return CY_RC_PROTOCOL_ERROR;
    p->topic = (cy_str){x->alias_in[a], x->alias_in_len[a]};
    return 0;
}

int cy_handle_publish(cy_conn *c, cy_mqtt_publish *p)
{
    cy_mqtt *g = c->g;
    cy_session *s = c->sess;
    g->stats->publish_received++;
    if (p->qos == 0)
        g->stats->publish_received_qos0++;
    else if (p->qos == 1)
        g->stats->publish_received_qos1++;
    else
        g->stats->publish_received_qos2++;
    if (p->props.present & CY_PBIT(CY_PROP_TOPIC_ALIAS)) {
        int rc = resolve_alias(c, p);
        if (rc) return rc;
    }
    if (p->props.present & CY_PBIT(CY_PROP_SUBSCRIPTION_ID)) return CY_RC_PROTOCOL_ERROR;
    if (p->topic.len == 0) return CY_RC_PROTOCOL_ERROR;
    if (cy_pub_rate_on(g->cfg) && !(p->qos == 2 && cy_session_has_inq2(s, p->packet_id)) &&
        over_rate(c, p))
        return 0;
    bool retain = p->retain, reply = false;
    const char *why = NULL;
    cy_who who;
    cy_session_who(s, &who);
    int reason = cy_conn_canary_topic(c, p->topic.p, p->topic.len) ? 0 :
                 cy_device_admit(g->devices, c->device ? s->client_id : NULL, s->client_id_len,
                                 &who, p->topic.p, p->topic.len, p->payload, p->payload_len,
                                 &retain, &reply, &why);
    if (reason) return refuse(c, p, (uint8_t)reason, why);

    if (p->qos == 2) {
        if (cy_session_has_inq2(s, p->packet_id)) { /* a resend: already routed */
            send_ack(c, CY_MQTT_PUBREC, p->packet_id, 0);
            return 0;
        }
        if (s->n_inq2 >= g->cfg->max_inflight) {
            g->stats->limit_receive_max++;
            return CY_RC_RECEIVE_MAX_EXCEEDED;
        }
    }

    /* New durable work on a full disk: refused before anything of it is
     * routed, stored or acknowledged. (A QoS 2 resend above was taken
     * before; its PUBREC again costs nothing.) A reply to the API is not
     * stored. */
    if (!reply && (p->qos || retain) && cy_space_full(g->space)) {
        g->stats->store_full_refusals++;
        /* The state was logged once when it began; a 3.1.1 fleet that
         * reconnects and resends must not write a line each. */
        if (c->version != CY_MQTT_V5) {
            cy_debug(cy_conn_name(c), "publish refused: the data folder's disk is full");
            return CY_RC_QUOTA_EXCEEDED;
        }
        return refuse(c, p, CY_RC_QUOTA_EXCEEDED, "the data folder's disk is full");
    }

    /* The device convention: a reply to the API is taken here, acknowledged
     * like any publish and not routed. */
    if (reply) {
        device_reply(c, p);
    } else {
        cy_msg *m = cy_msg_from_publish(&p->topic, p->payload, p->payload_len, &p->props, p->qos,
                                        retain, c->version, &g->scratch);
        if (!m) return refuse(c, p, CY_RC_UNSPECIFIED, "out of memory");
        int rc = retain ? cy_router_retain_check(g->router, s->client_id, m) : 0;
        if (rc) { /* counted and logged by the check */
            cy_msg_unref(m);
            return refuse(c, p, (uint8_t)rc, "over a retained messages limit");
        }
        /* Refused before anything happens when a peer shard that needs it
         * has a full outbox: never acknowledged and then dropped. */
        rc = cy_session_publish(g->devices, s, m, true);
        cy_msg_unref(m);
        if (rc) return refuse(c, p, (uint8_t)rc, "a peer shard's outbox is full");
    }

    if (p->qos == 1) {
        send_ack(c, CY_MQTT_PUBACK, p->packet_id, 0);
    } else if (p->qos == 2) {
        if (cy_session_add_inq2(g->devices, s, p->packet_id)) return CY_RC_UNSPECIFIED;
        send_ack(c, CY_MQTT_PUBREC, p->packet_id, 0);
    }
    return 0;
}

int cy_handle_pubrel(cy_conn *c, cy_mqtt_ack *p)
{
    cy_session *s = c->sess;
    bool known = cy_session_del_inq2(c->g->devices, s, p->packet_id);
    send_ack(c, CY_MQTT_PUBCOMP, p->packet_id, known ? 0 : CY_RC_PACKET_ID_NOT_FOUND);
    return 0;
}

int cy_handle_puback(cy_conn *c, cy_mqtt_ack *p)
{
    cy_session *s = c->sess;
    cy_delivery *d = cy_session_find_inflight(s, p->packet_id);
    if (!d || d->qos != 1) {
        cy_debug(s->client_id, "PUBACK for unknown packet id %u", p->packet_id);
        return 0;
    }
    cy_session_remove_delivery(c->g->devices, s, d);
    cy_session_pump(c->g->devices, s);
    return 0;
}

int cy_handle_pubrec(cy_conn *c, cy_mqtt_ack *p)
{
    cy_session *s = c->sess;
    cy_delivery *d = cy_session_find_inflight(s, p->packet_id);
    if (!d || d->qos != 2 || d->state != CY_MSG_SENT) {
        if (!d) send_ack(c, CY_MQTT_PUBREL, p->packet_id, CY_RC_PACKET_ID_NOT_FOUND);
        return 0;
    }
    if (p->reason >= 0x80) { /* the client refused it: the flow ends here */
        cy_session_remove_delivery(c->g->devices, s, d);
        cy_session_pump(c->g->devices, s);
        return 0;
    }
    cy_session_released(c->g->devices, s, d);
    send_ack(c, CY_MQTT_PUBREL, p->packet_id, 0);
    return 0;
}

int cy_handle_pubcomp(cy_conn *c, cy_mqtt_ack *p)
{
    cy_session *s = c->sess;
    cy_delivery *d = cy_session_find_inflight(s, p->packet_id);
    if (!d || d->state != CY_MSG_RELEASED) return 0;
    cy_session_remove_delivery(c->g->devices, s, d);
    cy_session_pump(c->g->devices, s);
    return 0;
}
