/* mqtt_props: MQTT 5 property blocks, decoded into cy_mqtt_props and back.
 *
 * A property block is a variable byte integer length followed by properties,
 * each an identifier (one byte in MQTT 5.0) and a value whose wire type the
 * identifier fixes: byte, two- or four-byte integer, variable byte integer,
 * UTF-8 string, binary data or a UTF-8 string pair. One table, indexed by
 * identifier, says for each property its wire type, the packets it may
 * appear in (table 2-4 of the specification; context 0 is the will
 * properties of a CONNECT) and where its field lives in cy_mqtt_props, so
 * the decoder, the encoder and the walker are each one loop over that table
 * instead of a switch that would have to be kept in step three times.
 *
 * A property may appear once, except user properties (any number, kept in
 * the raw block and walked on demand) and subscription identifiers in a
 * PUBLISH (one per matching subscription).
 */
#include "mqtt/mqtt_int.h"

#include "core/cy_err.h"

#include <stddef.h>
#include <string.h>

#define C(t) ((uint16_t)(1u << (t)))
#define WILL C(CY_MQTT_CTX_WILL)
#define PUB C(CY_MQTT_PUBLISH)
#define CONN C(CY_MQTT_CONNECT)
#define CACK C(CY_MQTT_CONNACK)
#define DISC C(CY_MQTT_DISCONNECT)
#define AUTH C(CY_MQTT_AUTH)
#define ACKS (C(CY_MQTT_PUBACK) | C(CY_MQTT_PUBREC) | C(CY_MQTT_PUBREL) | C(CY_MQTT_PUBCOMP))
#define ANY                                                                                        \
    (WILL | CONN | CACK | PUB | ACKS | C(CY_MQTT_SUBSCRIBE) | C(CY_MQTT_SUBACK) |                  \
     C(CY_MQTT_UNSUBSCRIBE) | C(CY_MQTT_UNSUBACK) | DISC | AUTH)
#define F(field) ((uint16_t)offsetof(cy_mqtt_props, field))

const cy_mqtt_prop_info cy_mqtt_prop_table[64] = {
    [CY_PROP_PAYLOAD_FORMAT] = {PK_BYTE, PUB | WILL, F(payload_format)},
    [CY_PROP_MESSAGE_EXPIRY] = {PK_U32, PUB | WILL, F(message_expiry)},
    [CY_PROP_CONTENT_TYPE] = {PK_STR, PUB | WILL, F(content_type)},
    [CY_PROP_RESPONSE_TOPIC] = {PK_STR, PUB | WILL, F(response_topic)},
    [CY_PROP_CORRELATION_DATA] = {PK_BIN, PUB | WILL, F(correlation_data)},
    [CY_PROP_SUBSCRIPTION_ID] = {PK_VARINT, PUB | C(CY_MQTT_SUBSCRIBE), 0},
    [CY_PROP_SESSION_EXPIRY] = {PK_U32, CONN | CACK | DISC, F(session_expiry)},
    [CY_PROP_ASSIGNED_CLIENT_ID] = {PK_STR, CACK, F(assigned_client_id)},
    [CY_PROP_SERVER_KEEP_ALIVE] = {PK_U16, CACK, F(server_keep_alive)},
    [CY_PROP_AUTH_METHOD] = {PK_STR, CONN | CACK | AUTH, F(auth_method)},
    [CY_PROP_AUTH_DATA] = {PK_BIN, CONN | CACK | AUTH, F(auth_data)},
    [CY_PROP_REQUEST_PROBLEM_INFO] = {PK_BYTE, CONN, F(request_problem_info)},
    [CY_PROP_WILL_DELAY] = {PK_U32, WILL, F(will_delay)},
    [CY_PROP_REQUEST_RESPONSE_INFO] = {PK_BYTE, CONN, F(request_response_info)},
    [CY_PROP_RESPONSE_INFO] = {PK_STR, CACK, F(response_info)},
    [CY_PROP_SERVER_REFERENCE] = {PK_STR, CACK | DISC, F(server_reference)},
    [CY_PROP_REASON_STRING] = {PK_STR,
                               CACK | ACKS | C(CY_MQTT_SUBACK) | C(CY_MQTT_UNSUBACK) | DISC | AUTH,
                               F(reason_string)},
    [CY_PROP_RECEIVE_MAX] = {PK_U16, CONN | CACK, F(receive_max)},
    [CY_PROP_TOPIC_ALIAS_MAX] = {PK_U16, CONN | CACK, F(topic_alias_max)},
    [CY_PROP_TOPIC_ALIAS] = {PK_U16, PUB, F(topic_alias)},
    [CY_PROP_MAX_QOS] = {PK_BYTE, CACK, F(max_qos)},
    [CY_PROP_RETAIN_AVAILABLE] = {PK_BYTE, CACK, F(retain_available)},
    [CY_PROP_USER] = {PK_PAIR, ANY, 0},
    [CY_PROP_MAX_PACKET_SIZE] = {PK_U32, CONN | CACK, F(max_packet_size)},
    [CY_PROP_WILDCARD_SUB_AVAILABLE] = {PK_BYTE, CACK, F(wildcard_sub_available)},
    [CY_PROP_SUB_ID_AVAILABLE] = {PK_BYTE, CACK, F(sub_id_available)},
    [CY_PROP_SHARED_SUB_AVAILABLE] = {PK_BYTE, CACK, F(shared_sub_available)},
};

/* Properties that have a field in cy_mqtt_props (all but user properties
 * and subscription identifiers): the ones the encoder writes from `present`. */
#define FIELD_MASK                                                                                 \
    (CY_PBIT(CY_PROP_PAYLOAD_FORMAT) | CY_PBIT(CY_PROP_MESSAGE_EXPIRY) |                           \
     CY_PBIT(CY_PROP_CONTENT_TYPE) | CY_PBIT(CY_PROP_RESPONSE_TOPIC) |                             \
     CY_PBIT(CY_PROP_CORRELATION_DATA) | CY_PBIT(CY_PROP_SESSION_EXPIRY) |                         \
     CY_PBIT(CY_PROP_ASSIGNED_CLIENT_ID) | CY_PBIT(CY_PROP_SERVER_KEEP_ALIVE) |                    \
     CY_PBIT(CY_PROP_AUTH_METHOD) | CY_PBIT(CY_PROP_AUTH_DATA) |                                   \
     CY_PBIT(CY_PROP_REQUEST_PROBLEM_INFO) | CY_PBIT(CY_PROP_WILL_DELAY) |                         \
     CY_PBIT(CY_PROP_REQUEST_RESPONSE_INFO) | CY_PBIT(CY_PROP_RESPONSE_INFO) |                     \
     CY_PBIT(CY_PROP_SERVER_REFERENCE) | CY_PBIT(CY_PROP_REASON_STRING) |                          \
     CY_PBIT(CY_PROP_RECEIVE_MAX) | CY_PBIT(CY_PROP_TOPIC_ALIAS_MAX) |                             \
     CY_PBIT(CY_PROP_TOPIC_ALIAS) | CY_PBIT(CY_PROP_MAX_QOS) | CY_PBIT(CY_PROP_RETAIN_AVAILABLE) | \
     CY_PBIT(CY_PROP_MAX_PACKET_SIZE) | CY_PBIT(CY_PROP_WILDCARD_SUB_AVAILABLE) |                  \
     CY_PBIT(CY_PROP_SUB_ID_AVAILABLE) | CY_PBIT(CY_PROP_SHARED_SUB_AVAILABLE))

/* Properties whose value may not be 0 (receive maximum, maximum packet size:
 * 3.1.2.11). A topic alias of 0 is well-formed but invalid: the receiver
 * answers it with DISCONNECT 0x94 Topic Alias invalid (3.3.2.3.4), which is
 * session knowledge, so the broker checks it, not the codec. */
#define NONZERO_MASK (CY_PBIT(CY_PROP_RECEIVE_MAX) | CY_PBIT(CY_PROP_MAX_PACKET_SIZE))

static inline uint8_t *field(cy_mqtt_props *p, unsigned id)
{
    return (uint8_t *)p + cy_mqtt_prop_table[id].off;
}

static inline const uint8_t *cfield(const cy_mqtt_props *p, unsigned id)
{
    return (const uint8_t *)p + cy_mqtt_prop_table[id].off;
}

/* Read a string or binary value at q (its length prefix first), within e. */
static inline int get_str(const uint8_t **q, const uint8_t *e, cy_str *s)
{
    if (e - *q < 2) return CY_EPROTO;
    uint32_t n = cy_mqtt_rd16(*q);
    if ((size_t)(e - *q) - 2 < n) return CY_EPROTO;
    s->p = (const char *)*q + 2;
    s->len = n;
    *q += 2 + n;
    return 0;
}

int cy_mqtt_props_decode(const uint8_t **pp, const uint8_t *end, unsigned ctx, cy_mqtt_props *out)
{
    const uint8_t *q = *pp;
    uint32_t blen;
    size_t n;
    if (q < end && *q < 128) { /* the usual one-byte length */
        blen = *q++;
    } else {
        if (cy_mqtt_varint_decode(q, (size_t)(end - q), &blen, &n)) return CY_EPROTO;
        q += n;
    }
    if (blen > (size_t)(end - q)) return CY_EPROTO;
    const uint8_t *e = q + blen;
    out->raw = q;
    out->raw_len = blen;

    uint64_t present = 0;
    const uint16_t cbit = C(ctx);
    while (q < e) {
        unsigned id = *q++;
        if (id >= 64 || !(cy_mqtt_prop_table[id].allowed & cbit)) return CY_EPROTO;
        uint64_t bit = CY_PBIT(id);
        if ((present & bit) && id != CY_PROP_USER &&
            !(id == CY_PROP_SUBSCRIPTION_ID && ctx == CY_MQTT_PUBLISH))
            return CY_EPROTO;
        present |= bit;

        uint32_t v;
        cy_str s, s2;
        switch (cy_mqtt_prop_table[id].kind) {
        case PK_BYTE:
            if (q == e) return CY_EPROTO;
            /* Every byte property is a flag or, for maximum QoS, 0 or 1. */
            if (*q > 1) return CY_EPROTO;
            *field(out, id) = *q++;
            break;
        case PK_U16:
            if (e - q < 2) return CY_EPROTO;
            v = cy_mqtt_rd16(q);
            q += 2;
            if (!v && (bit & NONZERO_MASK)) return CY_EPROTO;
            memcpy(field(out, id), &(uint16_t){(uint16_t)v}, 2);
            break;
        case PK_U32:
            if (e - q < 4) return CY_EPROTO;
            v = cy_mqtt_rd32(q);
            q += 4;
            if (!v && (bit & NONZERO_MASK)) return CY_EPROTO;
            memcpy(field(out, id), &v, 4);
            break;
        case PK_VARINT: /* the subscription identifier */
            if (cy_mqtt_varint_decode(q, (size_t)(e - q), &v, &n) || v == 0) return CY_EPROTO;
            q += n;
            if (out->n_sub_ids < CY_MQTT_MAX_SUB_IDS) out->sub_ids[out->n_sub_ids++] = v;
            break;
        case PK_STR:
            if (get_str(&q, e, &s) || !cy_mqtt_utf8_valid(s.p, s.len)) return CY_EPROTO;
            /* A response topic is a topic name: not empty, no wildcards. */
            if (id == CY_PROP_RESPONSE_TOPIC &&
                (s.len == 0 || !cy_mqtt_topic_chars_valid(s.p, s.len)))
                return CY_EPROTO;
            memcpy(field(out, id), &s, sizeof(s));
            break;
        case PK_BIN:
            if (get_str(&q, e, &s)) return CY_EPROTO;
            memcpy(field(out, id), &s, sizeof(s));
            break;
        default: /* PK_PAIR: user property */
            if (get_str(&q, e, &s) || get_str(&q, e, &s2) || !cy_mqtt_utf8_valid(s.p, s.len) ||
                !cy_mqtt_utf8_valid(s2.p, s2.len))
                return CY_EPROTO;
            out->n_user++;
            break;
        }
    }
    out->present = present;
    *pp = e;
    return 0;
}

int cy_mqtt_prop_step(const uint8_t *blk, size_t len, size_t *pos, uint8_t *idp,
                      const uint8_t **val, size_t *vlen)
{
    size_t i = *pos;
    if (i >= len) return 0;
    unsigned id = blk[i++];
    if (id >= 64) return -1;
    size_t left = len - i, n = 0, n1;
    uint32_t v;
    switch (cy_mqtt_prop_table[id].kind) {
    case PK_BYTE:
        n = 1;
        break;
    case PK_U16:
        n = 2;
        break;
    case PK_U32:
        n = 4;
        break;
    case PK_VARINT:
        if (cy_mqtt_varint_decode(blk + i, left, &v, &n)) return -1;
        break;
    case PK_STR:
    case PK_BIN:
        if (left < 2) return -1;
        n = 2 + (size_t)cy_mqtt_rd16(blk + i);
        break;
    case PK_PAIR:
        if (left < 2) return -1;
        n1 = 2 + (size_t)cy_mqtt_rd16(blk + i);
        if (left < n1 + 2) return -1;
        n = n1 + 2 + cy_mqtt_rd16(blk + i + n1);
        break;
    default:
        return -1;
    }
    if (n > left) return -1;
    *idp = (uint8_t)id;
    *val = blk + i;
    *vlen = n;
    *pos = i + n;
    return 1;
}

int cy_mqtt_props_next_user(const cy_mqtt_props *p, size_t *pos, cy_str *key, cy_str *value)
{
    uint8_t id;
    const uint8_t *v;
    size_t n;
    while (cy_mqtt_prop_step(p->raw, p->raw_len, pos, &id, &v, &n) == 1) {
        if (id != CY_PROP_USER) continue;
        key->len = cy_mqtt_rd16(v);
        key->p = (const char *)v + 2;
        value->len = cy_mqtt_rd16(v + 2 + key->len);
        value->p = (const char *)v + 4 + key->len;
        return 1;
    }
    return 0;
}

static inline const uint32_t *sub_ids_of(const cy_mqtt_props *p)
{
    return p->out_sub_ids ? p->out_sub_ids : p->sub_ids;
}

int cy_mqtt_props_measure(const cy_mqtt_props *p, size_t *len)
{
    size_t n = 0;
    uint64_t m = p->present & FIELD_MASK;
    while (m) {
        unsigned id = (unsigned)__builtin_ctzll(m);
        m &= m - 1;
        switch (cy_mqtt_prop_table[id].kind) {
        case PK_BYTE:
            n += 2;
            break;
        case PK_U16:
            n += 3;
            break;
        case PK_U32:
            n += 5;
            break;
        default: { /* PK_STR, PK_BIN */
            cy_str s;
            memcpy(&s, cfield(p, id), sizeof(s));
            if (s.len > 65535) return CY_EINVAL;
            n += 3 + (size_t)s.len;
        }
        }
    }
    if (p->present & CY_PBIT(CY_PROP_SUBSCRIPTION_ID)) {
        const uint32_t *ids = sub_ids_of(p);
        if (p->n_sub_ids > CY_MQTT_MAX_SUB_IDS) return CY_EINVAL;
        for (uint32_t i = 0; i < p->n_sub_ids; i++) {
            if (ids[i] == 0 || ids[i] > CY_MQTT_MAX_REMAINING) return CY_EINVAL;
            n += 1 + cy_mqtt_varint_size(ids[i]);
        }
    }
    if (p->user_src_len) {
        if (p->user_src_len > CY_MQTT_MAX_REMAINING) return CY_EMSGSIZE;
        size_t pos = 0, vlen;
        uint8_t id;
        const uint8_t *v;
        while (cy_mqtt_prop_step(p->user_src, p->user_src_len, &pos, &id, &v, &vlen) == 1)
            if (id == CY_PROP_USER) n += 1 + vlen;
    }
    if (p->extra_len > CY_MQTT_MAX_REMAINING) return CY_EMSGSIZE;
    n += p->extra_len;
    if (n > CY_MQTT_MAX_REMAINING) return CY_EMSGSIZE;
    *len = n;
    return 0;
}

uint8_t *cy_mqtt_props_write(uint8_t *w, const cy_mqtt_props *p, size_t len)
{
    w = cy_mqtt_wrvar(w, (uint32_t)len);
    if (!len) return w;
    uint64_t m = p->present & FIELD_MASK;
    while (m) {
        unsigned id = (unsigned)__builtin_ctzll(m);
        m &= m - 1;
        const uint8_t *f = cfield(p, id);
        *w++ = (uint8_t)id;
        switch (cy_mqtt_prop_table[id].kind) {
        case PK_BYTE:
            *w++ = *f;
            break;
        case PK_U16: {
            uint16_t v;
            memcpy(&v, f, 2);
            w = cy_mqtt_wr16(w, v);
            break;
        }
        case PK_U32: {
            uint32_t v;
            memcpy(&v, f, 4);
            w = cy_mqtt_wr32(w, v);
            break;
        }
        default: {
            cy_str s;
            memcpy(&s, f, sizeof(s));
            w = cy_mqtt_wrstr(w, s.p, s.len);
        }
        }
    }
    if (p->present & CY_PBIT(CY_PROP_SUBSCRIPTION_ID)) {
        const uint32_t *ids = sub_ids_of(p);
        for (uint32_t i = 0; i < p->n_sub_ids; i++) {
            *w++ = CY_PROP_SUBSCRIPTION_ID;
            w = cy_mqtt_wrvar(w, ids[i]);
        }
    }
    if (p->user_src_len) {
        size_t pos = 0, vlen;
        uint8_t id;
        const uint8_t *v;
        while (cy_mqtt_prop_step(p->user_src, p->user_src_len, &pos, &id, &v, &vlen) == 1) {
            if (id != CY_PROP_USER) continue;
            *w++ = CY_PROP_USER;
            memcpy(w, v, vlen);
            w += vlen;
        }
    }
    if (p->extra_len) {
        memcpy(w, p->extra, p->extra_len);
        w += p->extra_len;
    }
    return w;
}

size_t cy_mqtt_props_size(const cy_mqtt_props *p)
{
    size_t n;
    return cy_mqtt_props_measure(p, &n) ? 0 : n;
}

int cy_mqtt_props_encode(cy_buf *out, const cy_mqtt_props *p)
{
    size_t n;
    int rc = cy_mqtt_props_measure(p, &n);
    if (rc) return rc;
    size_t total = cy_mqtt_varint_size((uint32_t)n) + n;
    rc = cy_buf_reserve(out, total);
    if (rc) return rc;
    cy_mqtt_props_write(out->data + out->len, p, n);
    out->len += total;
    return 0;
}
