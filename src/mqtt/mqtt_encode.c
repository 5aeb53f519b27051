/* mqtt_encode: cy_mqtt_packet to bytes, appended to a cy_buf.
 *
 * Every packet is encoded in two steps: measure (compute the remaining
 * length, checking everything that could make the packet unencodable), then
 * one cy_buf_reserve for the whole packet and a straight write through a
 * pointer. So an error leaves the buffer as it was, and a PUBLISH costs one
 * reserve and two memcpy (topic, payload) plus its few header bytes.
 *
 * The encoder writes what it is given: it refuses only what cannot be put
 * on the wire (a QoS or retain handling above 2, a string over 65535 bytes,
 * an empty topic list, a packet over the maximum size). Checking that a
 * packet makes sense for the session is the caller's job. Version: 5
 * selects the MQTT 5 layout, anything else the 3.1.1 one (properties are
 * then ignored); a CONNECT uses its own version (3, 4 or 5).
 */
#include "mqtt/mqtt_int.h"

#include "core/cy_err.h"

#include <assert.h>
#include <string.h>

#define MAXSTR 65535u

/* Reserve room for the whole packet and write its fixed header; *w is where
 * the body goes. */
static int begin(cy_buf *b, uint8_t first, size_t rem, uint8_t **w)
{
    if (rem > CY_MQTT_MAX_REMAINING) return CY_EMSGSIZE;
    size_t total = 1 + cy_mqtt_varint_size((uint32_t)rem) + rem;
    int rc = cy_buf_reserve(b, total);
    if (rc) return rc;
    uint8_t *q = b->data + b->len;
    *q++ = first;
    *w = cy_mqtt_wrvar(q, (uint32_t)rem);
    return 0;
}

/* Commit what was written up to w. */
static inline int finish(cy_buf *b, uint8_t *w)
{
    b->len = (size_t)(w - b->data);
    assert(b->len <= b->cap);
    return 0;
}

/* Size of an encoded property block with its length prefix, or an error. */
static inline int props_wire(const cy_mqtt_props *p, size_t *body, size_t *wire)
{
    int rc = cy_mqtt_props_measure(p, body);
    if (rc) return rc;
    *wire = cy_mqtt_varint_size((uint32_t)*body) + *body;
    return 0;
}

static int enc_publish(cy_buf *b, bool v5, const cy_mqtt_publish *m)
{
    if (m->qos > 2 || m->topic.len > MAXSTR) return CY_EINVAL;
    if (m->payload_len > CY_MQTT_MAX_REMAINING) return CY_EMSGSIZE;
    size_t pb = 0, pw = 0;
    if (v5) {
        int rc = props_wire(&m->props, &pb, &pw);
        if (rc) return rc;
    }
    size_t rem = 2 + (size_t)m->topic.len + (m->qos ? 2 : 0) + pw + m->payload_len;
    uint8_t first =
        (uint8_t)(CY_MQTT_PUBLISH << 4 | (m->dup ? 8 : 0) | m->qos << 1 | (m->retain ? 1 : 0));
    uint8_t *w;
    int rc = begin(b, first, rem, &w);
    if (rc) return rc;
    w = cy_mqtt_wrstr(w, m->topic.p, m->topic.len);
    if (m->qos) w = cy_mqtt_wr16(w, m->packet_id);
    if (v5) w = cy_mqtt_props_write(w, &m->props, pb);
    if (m->payload_len) {
        memcpy(w, m->payload, m->payload_len);
        w += m->payload_len;
    }
    return finish(b, w);
}

/* PUBACK, PUBREC, PUBREL, PUBCOMP: v5 drops what it can (2.4, 3.4.2.1). */
static int enc_ack(cy_buf *b, uint8_t type, bool v5, const cy_mqtt_ack *a)
{
    size_t pb = 0, pw = 0, rem = 2;
    if (v5) {
        int rc = props_wire(&a->props, &pb, &pw);
        if (rc) return rc;
        if (pb)
            rem = 3 + pw;
        else if (a->reason)
            rem = 3;
    }
    uint8_t first = (uint8_t)(type << 4 | (type == CY_MQTT_PUBREL ? 2 : 0));
    uint8_t *w;
    int rc = begin(b, first, rem, &w);
    if (rc) return rc;
    w = cy_mqtt_wr16(w, a->packet_id);
    if (rem > 2) *w++ = a->reason;
    if (rem > 3) w = cy_mqtt_props_write(w, &a->props, pb);
    return finish(b, w);
}

static int enc_connect(cy_buf *b, const cy_mqtt_connect *c)
{
    const char *name;
    size_t nlen;
    if (c->version == CY_MQTT_V31) {
        name = "MQIsdp";
        nlen = 6;
    } else if (c->version == CY_MQTT_V311 || c->version == CY_MQTT_V5) {
        name = "MQTT";
        nlen = 4;
    } else {
        return CY_EINVAL;
    }
    bool v5 = c->version == CY_MQTT_V5;
    if (c->client_id.len > MAXSTR || c->will_qos > 2) return CY_EINVAL;
    size_t pb = 0, pw = 0, wpb = 0, wpw = 0;
    size_t rem = 2 + nlen + 1 + 1 + 2 + 2 + (size_t)c->client_id.len;
    int rc;
    if (v5) {
        if ((rc = props_wire(&c->props, &pb, &pw))) return rc;
        rem += pw;
    }
    if (c->will) {
        if (c->will_topic.len > MAXSTR || c->will_payload.len > MAXSTR) return CY_EINVAL;
        if (v5 && (rc = props_wire(&c->will_props, &wpb, &wpw))) return rc;
        rem += wpw + 4 + (size_t)c->will_topic.len + c->will_payload.len;
    }
    if (c->has_username) {
        if (c->username.len > MAXSTR) return CY_EINVAL;
        rem += 2 + (size_t)c->username.len;
    }
    if (c->has_password) {
        if (c->password.len > MAXSTR) return CY_EINVAL;
        rem += 2 + (size_t)c->password.len;
    }
    uint8_t fl = (uint8_t)((c->clean_start ? 0x02 : 0) | (c->has_password ? 0x40 : 0) |
                           (c->has_username ? 0x80 : 0));
    if (c->will) fl |= (uint8_t)(0x04 | c->will_qos << 3 | (c->will_retain ? 0x20 : 0));

    uint8_t *w;
    if ((rc = begin(b, CY_MQTT_CONNECT << 4, rem, &w))) return rc;
    w = cy_mqtt_wrstr(w, name, (uint32_t)nlen);
    *w++ = c->version;
    *w++ = fl;
    w = cy_mqtt_wr16(w, c->keep_alive);
    if (v5) w = cy_mqtt_props_write(w, &c->props, pb);
    w = cy_mqtt_wrstr(w, c->client_id.p, c->client_id.len);
    if (c->will) {
        if (v5) w = cy_mqtt_props_write(w, &c->will_props, wpb);
        w = cy_mqtt_wrstr(w, c->will_topic.p, c->will_topic.len);
        w = cy_mqtt_wrstr(w, c->will_payload.p, c->will_payload.len);
    }
    if (c->has_username) w = cy_mqtt_wrstr(w, c->username.p, c->username.len);
    if (c->has_password) w = cy_mqtt_wrstr(w, c->password.p, c->password.len);
    return finish(b, w);
}

static int enc_connack(cy_buf *b, bool v5, const cy_mqtt_connack *c)
{
    size_t pb = 0, pw = 0;
    if (v5) {
        int rc = props_wire(&c->props, &pb, &pw);
        if (rc) return rc;
    }
    uint8_t *w;
    int rc = begin(b, CY_MQTT_CONNACK << 4, 2 + pw, &w);
    if (rc) return rc;
    *w++ = c->session_present ? 1 : 0;
    *w++ = c->reason;
    if (v5) w = cy_mqtt_props_write(w, &c->props, pb);
    return finish(b, w);
}

static int enc_subscribe(cy_buf *b, uint8_t type, bool v5, const cy_mqtt_subscribe *s)
{
    bool sub = type == CY_MQTT_SUBSCRIBE;
    if (s->count == 0 || !(sub ? (const void *)s->entries : (const void *)s->filters))
        return CY_EINVAL;
    size_t pb = 0, pw = 0;
    if (v5) {
        int rc = props_wire(&s->props, &pb, &pw);
        if (rc) return rc;
    }
    size_t rem = 2 + pw;
    for (uint32_t i = 0; i < s->count; i++) {
        if (sub) {
            const cy_mqtt_sub_entry *e = &s->entries[i];
            if (e->filter.len > MAXSTR || e->qos > 2 || e->retain_handling > 2) return CY_EINVAL;
            rem += 3 + (size_t)e->filter.len;
        } else {
            if (s->filters[i].len > MAXSTR) return CY_EINVAL;
            rem += 2 + (size_t)s->filters[i].len;
        }
        if (rem > CY_MQTT_MAX_REMAINING) return CY_EMSGSIZE;
    }
    uint8_t *w;
    int rc = begin(b, (uint8_t)(type << 4 | 2), rem, &w);
    if (rc) return rc;
    w = cy_mqtt_wr16(w, s->packet_id);
    if (v5) w = cy_mqtt_props_write(w, &s->props, pb);
    for (uint32_t i = 0; i < s->count; i++) {
        if (sub) {
            const cy_mqtt_sub_entry *e = &s->entries[i];
            w = cy_mqtt_wrstr(w, e->filter.p, e->filter.len);
            uint8_t o = e->qos;
            if (v5)
                o |= (uint8_t)((e->no_local ? 0x04 : 0) | (e->retain_as_published ? 0x08 : 0) |
                               e->retain_handling << 4);
            *w++ = o;
        } else {
            w = cy_mqtt_wrstr(w, s->filters[i].p, s->filters[i].len);
        }
    }
    return finish(b, w);
}

static int enc_suback(cy_buf *b, uint8_t type, bool v5, const cy_mqtt_suback *s)
{
    bool bare = !v5 && type == CY_MQTT_UNSUBACK; /* 3.1.1 UNSUBACK: packet id only */
    if (!bare && (s->count == 0 || !s->reasons)) return CY_EINVAL;
    size_t pb = 0, pw = 0;
    if (v5) {
        int rc = props_wire(&s->props, &pb, &pw);
        if (rc) return rc;
    }
    size_t rem = 2 + pw + (bare ? 0 : s->count);
    uint8_t *w;
    int rc = begin(b, (uint8_t)(type << 4), rem, &w);
    if (rc) return rc;
    w = cy_mqtt_wr16(w, s->packet_id);
    if (v5) w = cy_mqtt_props_write(w, &s->props, pb);
    if (!bare) {
        memcpy(w, s->reasons, s->count);
        w += s->count;
    }
    return finish(b, w);
}

/* DISCONNECT and AUTH; 3.1.1 DISCONNECT and PINGREQ/PINGRESP are empty. */
static int enc_disconnect(cy_buf *b, uint8_t type, bool v5, const cy_mqtt_disconnect *d)
{
    size_t pb = 0, pw = 0, rem = 0;
    if (v5) {
        int rc = props_wire(&d->props, &pb, &pw);
        if (rc) return rc;
        if (pb)
            rem = 1 + pw;
        else if (d->reason)
            rem = 1;
    }
    uint8_t *w;
    int rc = begin(b, (uint8_t)(type << 4), rem, &w);
    if (rc) return rc;
    if (rem > 0) *w++ = d->reason;
    if (rem > 1) w = cy_mqtt_props_write(w, &d->props, pb);
    return finish(b, w);
}

int cy_mqtt_encode(cy_buf *out, uint8_t version, const cy_mqtt_packet *p)
{
    bool v5 = version == CY_MQTT_V5;
    switch (p->type) {
    case CY_MQTT_PUBLISH:
        return enc_publish(out, v5, &p->u.publish);
    case CY_MQTT_PUBACK:
    case CY_MQTT_PUBREC:
    case CY_MQTT_PUBREL:
    case CY_MQTT_PUBCOMP:
        return enc_ack(out, p->type, v5, &p->u.ack);
    case CY_MQTT_CONNECT:
        return enc_connect(out, &p->u.connect);
    case CY_MQTT_CONNACK:
        return enc_connack(out, v5, &p->u.connack);
    case CY_MQTT_SUBSCRIBE:
    case CY_MQTT_UNSUBSCRIBE:
        return enc_subscribe(out, p->type, v5, &p->u.subscribe);
    case CY_MQTT_SUBACK:
    case CY_MQTT_UNSUBACK:
        return enc_suback(out, p->type, v5, &p->u.suback);
    case CY_MQTT_PINGREQ:
    case CY_MQTT_PINGRESP:
        return enc_disconnect(out, p->type, false, NULL);
    case CY_MQTT_DISCONNECT:
        return enc_disconnect(out, p->type, v5, &p->u.disconnect);
    case CY_MQTT_AUTH:
        return v5 ? enc_disconnect(out, p->type, true, &p->u.disconnect) : CY_EINVAL;
    default:
        return CY_EINVAL;
    }
}
