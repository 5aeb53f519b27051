/* mqtt_decode: bytes to cy_mqtt_packet, one whole packet at a time.
 *
 * cy_mqtt_decode first frames the packet (so a truncated packet is always
 * CY_EAGAIN, whatever byte it stops at), then decodes its body knowing its
 * exact end: from then on, anything that runs past that end or stops short
 * of it is malformed (CY_EPROTO), never "need more". Each packet type has
 * one function that reads its variable header and payload in wire order and
 * checks each rule of the specification as it reads the field the rule is
 * about. Nothing is allocated and nothing copied: strings, the payload, the
 * topic list of a SUBSCRIBE and the property block point into the input.
 * Only the union member of the decoded type is written (and zeroed first).
 *
 * Version: 5 selects the MQTT 5 rules; anything else the 3.1.1 rules (3.1
 * differs only in its CONNECT, which carries its own version), so a server
 * can decode the first packet of a connection with version 0.
 */
#include "mqtt/mqtt_int.h"

#include "core/cy_err.h"

#include <string.h>

/* Fixed header: type and flags byte, remaining length. Sets *hdr (its size)
 * and *rem. The common one-byte length is the first test. */
static inline int fixed_header(const uint8_t *buf, size_t len, size_t *hdr, uint32_t *rem)
{
    if (len < 2) return CY_EAGAIN;
    if (!(buf[1] & 128u)) {
        *hdr = 2;
        *rem = buf[1];
        return 0;
    }
    size_t n;
    int rc = cy_mqtt_varint_decode(buf + 1, len - 1, rem, &n);
    *hdr = 1 + n;
    return rc;
}

int cy_mqtt_frame(const uint8_t *buf, size_t len, uint32_t max_size, size_t *pkt_len)
{
    size_t hdr;
    uint32_t rem;
    int rc = fixed_header(buf, len, &hdr, &rem);
    if (rc) return rc;
    size_t total = hdr + rem;
    *pkt_len = total;
    if (max_size && total > max_size) return CY_EMSGSIZE;
    return len < total ? CY_EAGAIN : 0;
}

/* ---- readers over [*p, end); each returns CY_EPROTO past the end ---- */

static inline int rd_u8(const uint8_t **p, const uint8_t *end, uint8_t *v)
{
    if (*p == end) return CY_EPROTO;
    *v = *(*p)++;
    return 0;
}

static inline int rd_u16(const uint8_t **p, const uint8_t *end, uint16_t *v)
{
    if (end - *p < 2) return CY_EPROTO;
    *v = cy_mqtt_rd16(*p);
    *p += 2;
    return 0;
}

/* Binary data: two length bytes, then the bytes. */
static inline int rd_bin(const uint8_t **p, const uint8_t *end, cy_str *s)
{
    if (end - *p < 2) return CY_EPROTO;
    uint32_t n = cy_mqtt_rd16(*p);
    if ((size_t)(end - *p) - 2 < n) return CY_EPROTO;
    s->p = (const char *)*p + 2;
    s->len = n;
    *p += 2 + n;
    return 0;
}

/* UTF-8 encoded string. */
static inline int rd_str(const uint8_t **p, const uint8_t *end, cy_str *s)
{
    if (rd_bin(p, end, s) || !cy_mqtt_utf8_valid(s->p, s->len)) return CY_EPROTO;
    return 0;
}

/* A packet identifier, which is never 0. */
static inline int rd_pid(const uint8_t **p, const uint8_t *end, uint16_t *v)
{
    if (rd_u16(p, end, v) || *v == 0) return CY_EPROTO;
    return 0;
}

/* ---- reason codes a packet may carry (MQTT 5 3.x.2.1 tables) ---- */

static const uint8_t rc_connack[] = {0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86,
                                     0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
                                     0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F};
static const uint8_t rc_puback[] = {0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99};
static const uint8_t rc_pubrel[] = {0x00, 0x92};
static const uint8_t rc_suback[] = {0x00, 0x01, 0x02, 0x80, 0x83, 0x87,
                                    0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2};
static const uint8_t rc_suback3[] = {0x00, 0x01, 0x02, 0x80};
static const uint8_t rc_unsuback[] = {0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91};
static const uint8_t rc_disconnect[] = {0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D,
                                        0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
                                        0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2};
static const uint8_t rc_auth[] = {0x00, 0x18, 0x19};

#define RC_OK(list, rc) ((rc) == 0 || memchr((list), (rc), sizeof(list)) != NULL)

/* ---- packets ---- */

static int dec_connect(const uint8_t *p, const uint8_t *end, cy_mqtt_connect *c)
{
    memset(c, 0, sizeof(*c));
    cy_str name;
    uint8_t level, fl;
    if (rd_bin(&p, end, &name) || rd_u8(&p, end, &level)) return CY_EPROTO;
    bool mqtt = name.len == 4 && memcmp(name.p, "MQTT", 4) == 0;
    bool mqisdp = name.len == 6 && memcmp(name.p, "MQIsdp", 6) == 0;
    if (!mqtt && !mqisdp) return CY_EPROTO;
    c->version = level;
    if (mqtt ? level != CY_MQTT_V311 && level != CY_MQTT_V5 : level != CY_MQTT_V31)
        return CY_ENOTSUP;
    bool v5 = level == CY_MQTT_V5;

    if (rd_u8(&p, end, &fl) || rd_u16(&p, end, &c->keep_alive)) return CY_EPROTO;
    if (fl & 0x01) return CY_EPROTO; /* reserved */
    c->clean_start = fl & 0x02;
    c->will = fl & 0x04;
    c->will_qos = (fl >> 3) & 3u;
    c->will_retain = fl & 0x20;
    c->has_password = fl & 0x40;
    c->has_username = fl & 0x80;
    if (c->will_qos == 3) return CY_EPROTO;
    if (!c->will && (c->will_qos || c->will_retain)) return CY_EPROTO;
    if (!v5 && c->has_password && !c->has_username) return CY_EPROTO;

    if (v5) {
        if (cy_mqtt_props_decode(&p, end, CY_MQTT_CONNECT, &c->props)) return CY_EPROTO;
        /* 3.1.2.11.10: authentication data needs a method. */
        if ((c->props.present & CY_PBIT(CY_PROP_AUTH_DATA)) &&
            !(c->props.present & CY_PBIT(CY_PROP_AUTH_METHOD)))
            return CY_EPROTO;
    }
    if (rd_str(&p, end, &c->client_id)) return CY_EPROTO;
    if (c->will) {
        if (v5 && cy_mqtt_props_decode(&p, end, CY_MQTT_CTX_WILL, &c->will_props)) return CY_EPROTO;
        /* The will topic is a topic name: not empty, no wildcards. */
        if (rd_bin(&p, end, &c->will_topic) || c->will_topic.len == 0 ||
            !cy_mqtt_topic_chars_valid(c->will_topic.p, c->will_topic.len))
            return CY_EPROTO;
        if (rd_bin(&p, end, &c->will_payload)) return CY_EPROTO;
    }
    if (c->has_username && rd_str(&p, end, &c->username)) return CY_EPROTO;
    if (c->has_password && rd_bin(&p, end, &c->password)) return CY_EPROTO;
    return p == end ? 0 : CY_EPROTO;
}

static int dec_connack(const uint8_t *p, const uint8_t *end, bool v5, cy_mqtt_connack *c)
{
    memset(c, 0, sizeof(*c));
    uint8_t fl;
    if (rd_u8(&p, end, &fl) || rd_u8(&p, end, &c->reason)) return CY_EPROTO;
    if (fl & 0xFE) return CY_EPROTO; /* reserved */
    c->session_present = fl & 1;
    /* 3.2.2.2: a refused connection has no session. */
    if (c->session_present && c->reason != 0) return CY_EPROTO;
    if (v5) {
        if (!RC_OK(rc_connack, c->reason)) return CY_EPROTO;
        if (cy_mqtt_props_decode(&p, end, CY_MQTT_CONNACK, &c->props)) return CY_EPROTO;
    } else if (c->reason > CY_RC3_NOT_AUTHORIZED) {
        return CY_EPROTO;
    }
    return p == end ? 0 : CY_EPROTO;
}

/* Zero a cy_mqtt_props but for sub_ids[] (only the first n_sub_ids mean
 * anything). For PUBLISH and its acks, the hot path: field by field, as a
 * memset of this size becomes "rep stos", which costs more than the rest of
 * the decode. */
_Static_assert(sizeof(void *) != 8 || sizeof(cy_mqtt_props) == 384,
               "cy_mqtt_props changed: make props_clear zero the new field");

static inline void props_clear(cy_mqtt_props *pr)
{
    static const cy_str z = {NULL, 0};
    pr->present = 0;
    pr->payload_format = pr->request_problem_info = pr->request_response_info = 0;
    pr->max_qos = pr->retain_available = pr->wildcard_sub_available = 0;
    pr->sub_id_available = pr->shared_sub_available = 0;
    pr->server_keep_alive = pr->receive_max = pr->topic_alias_max = pr->topic_alias = 0;
    pr->message_expiry = pr->session_expiry = pr->will_delay = pr->max_packet_size = 0;
    pr->content_type = pr->response_topic = pr->correlation_data = z;
    pr->assigned_client_id = pr->auth_method = pr->auth_data = z;
    pr->response_info = pr->server_reference = pr->reason_string = z;
    pr->n_sub_ids = 0;
    pr->out_sub_ids = NULL;
    pr->n_user = 0;
    pr->user_src = NULL;
    pr->user_src_len = 0;
    pr->extra = NULL;
    pr->extra_len = 0;
    pr->raw = NULL;
    pr->raw_len = 0;
}

static int dec_publish(const uint8_t *p, const uint8_t *end, uint8_t flags, bool v5,
                       cy_mqtt_publish *m)
{
    m->packet_id = 0;
    props_clear(&m->props);
    m->retain = flags & 1;
    m->qos = (flags >> 1) & 3u;
    m->dup = flags & 8;
    if (m->qos == 3) return CY_EPROTO;
    if (m->dup && m->qos == 0) return CY_EPROTO; /* 3.3.1.1 */
    if (rd_bin(&p, end, &m->topic) || !cy_mqtt_topic_chars_valid(m->topic.p, m->topic.len))
        return CY_EPROTO;
    if (m->qos && rd_pid(&p, end, &m->packet_id)) return CY_EPROTO;
    if (v5) {
        if (cy_mqtt_props_decode(&p, end, CY_MQTT_PUBLISH, &m->props)) return CY_EPROTO;
        /* 3.3.2.1: an empty topic only stands for a topic alias. */
        if (m->topic.len == 0 && !(m->props.present & CY_PBIT(CY_PROP_TOPIC_ALIAS)))
            return CY_EPROTO;
    } else if (m->topic.len == 0) {
        return CY_EPROTO;
    }
    m->payload = p;
    m->payload_len = (size_t)(end - p);
    return 0;
}

/* PUBACK, PUBREC, PUBREL, PUBCOMP. */
static int dec_ack(const uint8_t *p, const uint8_t *end, uint8_t type, bool v5, cy_mqtt_ack *a)
{
    a->reason = 0;
    props_clear(&a->props);
    if (rd_pid(&p, end, &a->packet_id)) return CY_EPROTO;
    if (!v5) return p == end ? 0 : CY_EPROTO;
    if (p == end) return 0; /* short form: success, no properties */
    a->reason = *p++;
    bool ok = type == CY_MQTT_PUBACK || type == CY_MQTT_PUBREC ? RC_OK(rc_puback, a->reason)
                                                               : RC_OK(rc_pubrel, a->reason);
    if (!ok) return CY_EPROTO;
    if (p == end) return 0; /* reason, no properties */
    if (cy_mqtt_props_decode(&p, end, type, &a->props)) return CY_EPROTO;
    return p == end ? 0 : CY_EPROTO;
}

/* SUBSCRIBE and UNSUBSCRIBE: validate and count the topic list. */
static int dec_subscribe(const uint8_t *p, const uint8_t *end, uint8_t type, bool v5,
                         cy_mqtt_subscribe *s)
{
    memset(s, 0, sizeof(*s));
    if (rd_pid(&p, end, &s->packet_id)) return CY_EPROTO;
    if (v5 && cy_mqtt_props_decode(&p, end, type, &s->props)) return CY_EPROTO;
    if (p == end) return CY_EPROTO; /* no topic filter */
    s->list = p;
    s->list_len = (size_t)(end - p);
    uint32_t count = 0;
    while (p < end) {
        cy_str f;
        if (rd_str(&p, end, &f) || f.len == 0) return CY_EPROTO;
        if (type == CY_MQTT_SUBSCRIBE) {
            uint8_t o;
            if (rd_u8(&p, end, &o)) return CY_EPROTO;
            /* v5: bits 6-7 reserved, retain handling 3 invalid; 3.1.1: only QoS. */
            if ((o & 3u) == 3 || (v5 ? (o & 0xC0) || (o & 0x30) == 0x30 : (o & 0xFC)))
                return CY_EPROTO;
        }
        count++;
    }
    s->count = count;
    return 0;
}

/* SUBACK and UNSUBACK. */
static int dec_suback(const uint8_t *p, const uint8_t *end, uint8_t type, bool v5,
                      cy_mqtt_suback *s)
{
    memset(s, 0, sizeof(*s));
    if (rd_pid(&p, end, &s->packet_id)) return CY_EPROTO;
    if (!v5 && type == CY_MQTT_UNSUBACK) return p == end ? 0 : CY_EPROTO;
    if (v5 && cy_mqtt_props_decode(&p, end, type, &s->props)) return CY_EPROTO;
    if (p == end) return CY_EPROTO; /* one reason per filter, and there is at least one */
    s->reasons = p;
    s->count = (uint32_t)(end - p);
    for (; p < end; p++) {
        bool ok = type == CY_MQTT_UNSUBACK ? RC_OK(rc_unsuback, *p)
                  : v5                     ? RC_OK(rc_suback, *p)
                                           : RC_OK(rc_suback3, *p);
        if (!ok) return CY_EPROTO;
    }
    return 0;
}

/* DISCONNECT and AUTH in v5 (the caller handles 3.1.1). */
static int dec_disconnect(const uint8_t *p, const uint8_t *end, uint8_t type, cy_mqtt_disconnect *d)
{
    memset(d, 0, sizeof(*d));
    if (p == end) return 0; /* short form: success, no properties */
    d->reason = *p++;
    bool ok = type == CY_MQTT_AUTH ? RC_OK(rc_auth, d->reason) : RC_OK(rc_disconnect, d->reason);
    if (!ok) return CY_EPROTO;
    if (p == end) return 0;
    if (cy_mqtt_props_decode(&p, end, type, &d->props)) return CY_EPROTO;
    return p == end ? 0 : CY_EPROTO;
}

int cy_mqtt_decode(const uint8_t *buf, size_t len, uint8_t version, cy_mqtt_packet *out,
                   size_t *used)
{
    size_t hdr;
    uint32_t rem;
    int rc = fixed_header(buf, len, &hdr, &rem);
    if (rc) return rc;
    if (len - hdr < rem) return CY_EAGAIN;
    *used = hdr + rem;

    const uint8_t *p = buf + hdr, *end = p + rem;
    uint8_t type = buf[0] >> 4, flags = buf[0] & 15u;
    bool v5 = version == CY_MQTT_V5;
    out->type = type;
    out->flags = flags;

    /* Fixed header flags (2.1.3): 0b0010 for these three, PUBLISH its own, 0 otherwise. */
    uint8_t want =
        type == CY_MQTT_PUBREL || type == CY_MQTT_SUBSCRIBE || type == CY_MQTT_UNSUBSCRIBE ? 2 : 0;
    if (type != CY_MQTT_PUBLISH && flags != want) return CY_EPROTO;

    switch (type) {
    case CY_MQTT_PUBLISH:
        return dec_publish(p, end, flags, v5, &out->u.publish);
    case CY_MQTT_PUBACK:
    case CY_MQTT_PUBREC:
    case CY_MQTT_PUBREL:
    case CY_MQTT_PUBCOMP:
        return dec_ack(p, end, type, v5, &out->u.ack);
    case CY_MQTT_CONNECT:
        return dec_connect(p, end, &out->u.connect);
    case CY_MQTT_CONNACK:
        return dec_connack(p, end, v5, &out->u.connack);
    case CY_MQTT_SUBSCRIBE:
    case CY_MQTT_UNSUBSCRIBE:
        return dec_subscribe(p, end, type, v5, &out->u.subscribe);
    case CY_MQTT_SUBACK:
    case CY_MQTT_UNSUBACK:
        return dec_suback(p, end, type, v5, &out->u.suback);
    case CY_MQTT_PINGREQ:
    case CY_MQTT_PINGRESP:
        return rem == 0 ? 0 : CY_EPROTO;
    case CY_MQTT_DISCONNECT:
        if (!v5) {
            memset(&out->u.disconnect, 0, sizeof(out->u.disconnect));
            return rem == 0 ? 0 : CY_EPROTO;
        }
        return dec_disconnect(p, end, type, &out->u.disconnect);
    case CY_MQTT_AUTH:
        return v5 ? dec_disconnect(p, end, type, &out->u.disconnect) : CY_EPROTO;
    default: /* 0 is reserved */
        return CY_EPROTO;
    }
}

int cy_mqtt_sub_next(const cy_mqtt_subscribe *s, uint8_t version, size_t *pos, cy_mqtt_sub_entry *e)
{
    size_t i = *pos;
    if (s->list_len < 3 || i > s->list_len - 3) return 0;
    size_t n = cy_mqtt_rd16(s->list + i);
    if (n > s->list_len - 3 - i) return 0;
    uint8_t o = s->list[i + 2 + n];
    e->filter.p = (const char *)s->list + i + 2;
    e->filter.len = (uint32_t)n;
    e->qos = o & 3u;
    bool v5 = version == CY_MQTT_V5;
    e->no_local = v5 && (o & 0x04);
    e->retain_as_published = v5 && (o & 0x08);
    e->retain_handling = v5 ? (o >> 4) & 3u : 0;
    *pos = i + 3 + n;
    return 1;
}

int cy_mqtt_unsub_next(const cy_mqtt_subscribe *s, size_t *pos, cy_str *filter)
{
    size_t i = *pos;
    if (s->list_len < 2 || i > s->list_len - 2) return 0;
    size_t n = cy_mqtt_rd16(s->list + i);
    if (n > s->list_len - 2 - i) return 0;
    filter->p = (const char *)s->list + i + 2;
    filter->len = (uint32_t)n;
    *pos = i + 2 + n;
    return 1;
}
