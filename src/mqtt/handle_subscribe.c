/* handle_subscribe: SUBSCRIBE and UNSUBSCRIBE.
 *
 * Each filter gets its own answer in SUBACK: the granted QoS, or a refusal
 * (MQTT 5 reason code; 3.1.1 has only 0x80): 0x8F for an invalid filter or
 * one over max_topic_length, 0x87 for a filter in a reserved '$' space
 * (anything starting with '$' but "$SYS/" and "$share/"), 0x87 for a filter
 * outside an isolated device's spaces or that the operator's ACL does not
 * let the client read (acl_file; a shared one's filter without its
 * $share/<group>/), 0x97 past max_subscriptions, and 0x97 for every filter
 * of a persistent session while the data folder's disk is full (its
 * subscriptions are stored; those it holds stay). Valid filters in the same
 * packet are granted.
 *
 * After the SUBACK, retained messages matching each new subscription are
 * sent as its retain handling option says (0: always, 1: only if the
 * subscription is new, 2: never); shared subscriptions get none.
 */
#include "mqtt/gateway_int.h"

#include "core/cy_log.h"

#include <string.h>

static bool forbidden(const char *f, size_t len)
{
    if (len == 0 || f[0] != '$') return false;
    if (len >= 5 && memcmp(f, "$SYS/", 5) == 0) return false;
    if (len >= 7 && memcmp(f, "$share/", 7) == 0) return false;
    return true;
}

static uint8_t fail_code(cy_conn *c, uint8_t rc5)
{
    return c->version == CY_MQTT_V5 ? rc5 : 0x80;
}

int cy_handle_subscribe(cy_conn *c, cy_mqtt_subscribe *p)
{
    cy_mqtt *g = c->g;
    cy_session *s = c->sess;
    uint32_t sub_id = 0;
    if (p->props.present & CY_PBIT(CY_PROP_SUBSCRIPTION_ID)) sub_id = p->props.sub_ids[0];
    uint8_t reasons[256];
    uint8_t *rv = p->count <= sizeof(reasons) ? reasons : NULL;
    if (!rv) return CY_RC_QUOTA_EXCEEDED; /* more filters in one packet than we answer */

    /* First pass: validate, add, answer. */
    size_t pos = 0;
    cy_mqtt_sub_entry e;
    uint32_t i = 0;
    bool fresh[256];
    cy_who who;
    cy_session_who(s, &who);
    while (cy_mqtt_sub_next(p, c->version, &pos, &e)) {
        const char *f = e.filter.p;
        size_t len = e.filter.len;
        fresh[i] = false;
        const char *grp, *inner;
        size_t glen, ilen;
        bool shared = cy_topic_split_shared(f, len, &grp, &glen, &inner, &ilen);
        if (shared && e.no_local) return CY_RC_PROTOCOL_ERROR;
        if (len > g->cfg->max_topic_length) {
            g->stats->limit_topic_too_long++;
            rv[i++] = fail_code(c, CY_RC_TOPIC_FILTER_INVALID);
            continue;
        }
        if (!cy_topic_valid_filter(f, len)) {
            rv[i++] = fail_code(c, CY_RC_TOPIC_FILTER_INVALID);
            continue;
        }
        if (cy_conn_canary_topic(c, f, len)) {
            /* its own private topic: allowed, below */
        } else if (forbidden(f, len) ||
            (c->device && !cy_device_topic_ok(c->sess->client_id, c->sess->client_id_len,
                                               shared ? inner : f, shared ? ilen : len))) {
            if (c->device) g->stats->acl_denied++;
            rv[i++] = fail_code(c, CY_RC_NOT_AUTHORIZED);
            continue;
        } else if (!cy_device_acl(g->devices, &who, shared ? inner : f, shared ? ilen : len,
                                  CY_ACL_SUBSCRIBE)) { /* counted and logged there */
            rv[i++] = fail_code(c, CY_RC_NOT_AUTHORIZED);
            continue;
        }
        uint8_t opts = (uint8_t)(e.qos | (e.no_local ? CY_SUBOPT_NO_LOCAL : 0) |
                                 (e.retain_as_published ? CY_SUBOPT_RAP : 0) |
                                 (e.retain_handling << 4));
        if (s->persistent && cy_space_full(g->space)) {
            g->stats->store_full_refusals++;
            cy_debug(s->client_id, "subscription to %.*s refused: the disk is full",
                     (int)(len > 128 ? 128 : len), f);
            rv[i++] = fail_code(c, CY_RC_QUOTA_EXCEEDED);
            continue;
        }
        if (!cy_session_find_sub(s, f, len) && s->n_subs >= g->cfg->max_subscriptions) {
            g->stats->limit_subscriptions++;
            cy_info(s->client_id, "subscription to %.*s refused: max_subscriptions %u",
                    (int)(len > 128 ? 128 : len), f, g->cfg->max_subscriptions);
            rv[i++] = fail_code(c, CY_RC_QUOTA_EXCEEDED);
            continue;
        }
        if (cy_session_subscribe(g->devices, s, f, len, opts, sub_id, &fresh[i])) {
            rv[i++] = fail_code(c, CY_RC_UNSPECIFIED);
            continue;
        }
        cy_debug(s->client_id, "subscribed to %.*s qos %u", (int)len, f, e.qos);
        rv[i++] = e.qos;
    }

    cy_mqtt_packet ack;
    memset(&ack, 0, sizeof(ack));
    ack.type = CY_MQTT_SUBACK;
    ack.u.suback.packet_id = p->packet_id;
    ack.u.suback.reasons = rv;
    ack.u.suback.count = i;
    cy_conn_send_acked(c, &ack); /* after peer shards know the new interest */

    /* Second pass: retained messages for what was granted. */
    pos = 0;
    i = 0;
    while (cy_mqtt_sub_next(p, c->version, &pos, &e)) {
        uint8_t r = rv[i];
        bool is_new = fresh[i++];
        if (r >= 0x80) continue;
        const char *grp, *inner;
        size_t glen, ilen;
        if (cy_topic_split_shared(e.filter.p, e.filter.len, &grp, &glen, &inner, &ilen)) continue;
        if (e.retain_handling == 2 || (e.retain_handling == 1 && !is_new)) continue;
        cy_session_send_retained(g->devices, s, e.filter.p, e.filter.len, e.qos, sub_id);
    }
    return 0;
}

int cy_handle_unsubscribe(cy_conn *c, cy_mqtt_subscribe *p)
{
    cy_mqtt *g = c->g;
    cy_session *s = c->sess;
    uint8_t reasons[256];
    if (p->count > sizeof(reasons)) return CY_RC_QUOTA_EXCEEDED;
    size_t pos = 0;
    cy_str f;
    uint32_t i = 0;
    while (cy_mqtt_unsub_next(p, &pos, &f)) {
        reasons[i++] = cy_session_unsubscribe(g->devices, s, f.p, f.len)
                           ? CY_RC_NO_SUBSCRIPTION_EXISTED
                           : CY_RC_SUCCESS;
    }
    cy_mqtt_packet ack;
    memset(&ack, 0, sizeof(ack));
    ack.type = CY_MQTT_UNSUBACK;
    ack.u.suback.packet_id = p->packet_id;
    ack.u.suback.reasons = reasons;
    ack.u.suback.count = c->version == CY_MQTT_V5 ? i : 0;
    cy_conn_send(c, &ack);
    return 0;
}
