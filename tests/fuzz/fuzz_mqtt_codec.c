/* fuzz_mqtt_codec: libFuzzer target for the MQTT codec (src/mqtt).
 *
 * The input is decoded as a 3.1.1 packet, as a 5.0 packet and with version 0
 * (what a server uses before CONNECT). Whatever the bytes, decode must not
 * crash, must agree with cy_mqtt_frame, and must call every proper prefix
 * of a packet it accepts "need more" (CY_EAGAIN). Every packet it accepts is
 * encoded again, and that encoding must decode to an equal packet and
 * encode to the very same bytes (the encoder's output is canonical). Any
 * broken rule is abort(), which libFuzzer reports as a crash.
 */
#include "core/cy_buf.h"
#include "core/cy_err.h"
#include "mqtt/mqtt.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

static bool str_eq(cy_str a, cy_str b)
{
    return a.len == b.len && (a.len == 0 || memcmp(a.p, b.p, a.len) == 0);
}

static bool users_eq(const cy_mqtt_props *a, const cy_mqtt_props *b)
{
    size_t pa = 0, pb = 0;
    cy_str ka, va, kb, vb;
    uint32_t n = 0;
    for (;;) {
        int ra = cy_mqtt_props_next_user(a, &pa, &ka, &va);
        int rb = cy_mqtt_props_next_user(b, &pb, &kb, &vb);
        if (ra != rb) return false;
        if (!ra) break;
        if (!str_eq(ka, kb) || !str_eq(va, vb)) return false;
        n++;
    }
    return n == a->n_user && n == b->n_user;
}

static bool props_eq(const cy_mqtt_props *a, const cy_mqtt_props *b)
{
    if (a->present != b->present || a->payload_format != b->payload_format ||
        a->request_problem_info != b->request_problem_info ||
        a->request_response_info != b->request_response_info || a->max_qos != b->max_qos ||
        a->retain_available != b->retain_available ||
        a->wildcard_sub_available != b->wildcard_sub_available ||
        a->sub_id_available != b->sub_id_available ||
        a->shared_sub_available != b->shared_sub_available ||
        a->server_keep_alive != b->server_keep_alive || a->receive_max != b->receive_max ||
        a->topic_alias_max != b->topic_alias_max || a->topic_alias != b->topic_alias ||
        a->message_expiry != b->message_expiry || a->session_expiry != b->session_expiry ||
        a->will_delay != b->will_delay || a->max_packet_size != b->max_packet_size)
        return false;
    if (!str_eq(a->content_type, b->content_type) ||
        !str_eq(a->response_topic, b->response_topic) ||
        !str_eq(a->correlation_data, b->correlation_data) ||
        !str_eq(a->assigned_client_id, b->assigned_client_id) ||
        !str_eq(a->auth_method, b->auth_method) || !str_eq(a->auth_data, b->auth_data) ||
        !str_eq(a->response_info, b->response_info) ||
        !str_eq(a->server_reference, b->server_reference) ||
        !str_eq(a->reason_string, b->reason_string))
        return false;
    if (a->n_sub_ids != b->n_sub_ids ||
        memcmp(a->sub_ids, b->sub_ids, a->n_sub_ids * sizeof(uint32_t)) != 0)
        return false;
    return users_eq(a, b);
}

static bool packet_eq(const cy_mqtt_packet *a, const cy_mqtt_packet *b)
{
    if (a->type != b->type || a->flags != b->flags) return false;
    switch (a->type) {
    case CY_MQTT_CONNECT: {
        const cy_mqtt_connect *x = &a->u.connect, *y = &b->u.connect;
        return x->version == y->version && x->clean_start == y->clean_start &&
               x->keep_alive == y->keep_alive && str_eq(x->client_id, y->client_id) &&
               x->has_username == y->has_username && x->has_password == y->has_password &&
               str_eq(x->username, y->username) && str_eq(x->password, y->password) &&
               x->will == y->will && x->will_qos == y->will_qos &&
               x->will_retain == y->will_retain && str_eq(x->will_topic, y->will_topic) &&
               str_eq(x->will_payload, y->will_payload) && props_eq(&x->props, &y->props) &&
               props_eq(&x->will_props, &y->will_props);
    }
    case CY_MQTT_CONNACK:
        return a->u.connack.session_present == b->u.connack.session_present &&
               a->u.connack.reason == b->u.connack.reason &&
               props_eq(&a->u.connack.props, &b->u.connack.props);
    case CY_MQTT_PUBLISH: {
        const cy_mqtt_publish *x = &a->u.publish, *y = &b->u.publish;
        return x->qos == y->qos && x->dup == y->dup && x->retain == y->retain &&
               str_eq(x->topic, y->topic) && x->packet_id == y->packet_id &&
               x->payload_len == y->payload_len &&
               (x->payload_len == 0 || memcmp(x->payload, y->payload, x->payload_len) == 0) &&
               props_eq(&x->props, &y->props);
    }
    case CY_MQTT_PUBACK:
    case CY_MQTT_PUBREC:
    case CY_MQTT_PUBREL:
    case CY_MQTT_PUBCOMP:
        return a->u.ack.packet_id == b->u.ack.packet_id && a->u.ack.reason == b->u.ack.reason &&
               props_eq(&a->u.ack.props, &b->u.ack.props);
    case CY_MQTT_SUBSCRIBE:
    case CY_MQTT_UNSUBSCRIBE: {
        const cy_mqtt_subscribe *x = &a->u.subscribe, *y = &b->u.subscribe;
        return x->packet_id == y->packet_id && x->count == y->count && x->list_len == y->list_len &&
               memcmp(x->list, y->list, x->list_len) == 0 && props_eq(&x->props, &y->props);
    }
    case CY_MQTT_SUBACK:
    case CY_MQTT_UNSUBACK: {
        const cy_mqtt_suback *x = &a->u.suback, *y = &b->u.suback;
        return x->packet_id == y->packet_id && x->count == y->count &&
               (x->count == 0 || memcmp(x->reasons, y->reasons, x->count) == 0) &&
               props_eq(&x->props, &y->props);
    }
    case CY_MQTT_DISCONNECT:
    case CY_MQTT_AUTH:
        return a->u.disconnect.reason == b->u.disconnect.reason &&
               props_eq(&a->u.disconnect.props, &b->u.disconnect.props);
    default: /* PINGREQ, PINGRESP */
        return true;
    }
}

static void use_raw_users(cy_mqtt_props *p)
{
    p->user_src = p->raw;
    p->user_src_len = p->raw_len;
}

/* Turn a decoded packet into one the encoder takes: user properties from the
 * raw block, SUBSCRIBE/UNSUBSCRIBE lists as arrays (*mem, caller frees). */
static void prepare(cy_mqtt_packet *p, uint8_t version, void **mem)
{
    *mem = NULL;
    switch (p->type) {
    case CY_MQTT_CONNECT:
        use_raw_users(&p->u.connect.props);
        use_raw_users(&p->u.connect.will_props);
        break;
    case CY_MQTT_CONNACK:
        use_raw_users(&p->u.connack.props);
        break;
    case CY_MQTT_PUBLISH:
        use_raw_users(&p->u.publish.props);
        break;
    case CY_MQTT_PUBACK:
    case CY_MQTT_PUBREC:
    case CY_MQTT_PUBREL:
    case CY_MQTT_PUBCOMP:
        use_raw_users(&p->u.ack.props);
        break;
    case CY_MQTT_SUBSCRIBE: {
        cy_mqtt_subscribe *s = &p->u.subscribe;
        use_raw_users(&s->props);
        cy_mqtt_sub_entry *e = malloc(s->count * sizeof(*e));
        CHECK(e);
        size_t pos = 0;
        for (uint32_t i = 0; i < s->count; i++)
            CHECK(cy_mqtt_sub_next(s, version, &pos, &e[i]));
        CHECK(!cy_mqtt_sub_next(s, version, &pos, &(cy_mqtt_sub_entry){0}));
        s->entries = e;
        *mem = e;
        break;
    }
    case CY_MQTT_UNSUBSCRIBE: {
        cy_mqtt_subscribe *s = &p->u.subscribe;
        use_raw_users(&s->props);
        cy_str *f = malloc(s->count * sizeof(*f));
        CHECK(f);
        size_t pos = 0;
        for (uint32_t i = 0; i < s->count; i++)
            CHECK(cy_mqtt_unsub_next(s, &pos, &f[i]));
        CHECK(!cy_mqtt_unsub_next(s, &pos, &(cy_str){0}));
        s->filters = f;
        *mem = f;
        break;
    }
    case CY_MQTT_SUBACK:
    case CY_MQTT_UNSUBACK:
        use_raw_users(&p->u.suback.props);
        break;
    case CY_MQTT_DISCONNECT:
    case CY_MQTT_AUTH:
        use_raw_users(&p->u.disconnect.props);
        break;
    default:
        break;
    }
}

static void run(const uint8_t *data, size_t size, uint8_t version)
{
    cy_mqtt_packet p;
    size_t used = 0, pkt_len = 0;
    int rc = cy_mqtt_decode(data, size, version, &p, &used);
    int frc = cy_mqtt_frame(data, size, 0, &pkt_len);
    CHECK(rc == 0 || rc == CY_EAGAIN || rc == CY_EPROTO || rc == CY_ENOTSUP);
    if (rc == CY_EAGAIN || frc != 0) CHECK(rc == frc);
    if (rc == 0 || rc == CY_ENOTSUP) CHECK(frc == 0 && pkt_len == used && used <= size);
    if (rc == CY_ENOTSUP) CHECK(p.type == CY_MQTT_CONNECT);
    if (rc) return;

    /* Every proper prefix of an accepted packet is "need more". */
    size_t step = used > 4096 ? used / 1024 : 1;
    for (size_t i = 0; i < used; i += step) {
        cy_mqtt_packet t;
        size_t u;
        CHECK(cy_mqtt_decode(data, i, version, &t, &u) == CY_EAGAIN);
    }

    /* Encode, decode, compare; encode again, same bytes. */
    void *mem1, *mem2;
    cy_mqtt_packet q = p;
    prepare(&q, version, &mem1);
    cy_buf b1, b2;
    cy_buf_init(&b1);
    cy_buf_init(&b2);
    CHECK(cy_mqtt_encode(&b1, version, &q) == 0);
    cy_mqtt_packet r;
    size_t used2 = 0;
    CHECK(cy_mqtt_decode(cy_buf_head(&b1), cy_buf_size(&b1), version, &r, &used2) == 0);
    CHECK(used2 == cy_buf_size(&b1));
    CHECK(used2 <= used); /* the encoder never writes more than it must */
    CHECK(packet_eq(&p, &r));
    prepare(&r, version, &mem2);
    CHECK(cy_mqtt_encode(&b2, version, &r) == 0);
    CHECK(cy_buf_size(&b1) == cy_buf_size(&b2));
    CHECK(memcmp(cy_buf_head(&b1), cy_buf_head(&b2), cy_buf_size(&b1)) == 0);
    free(mem1);
    free(mem2);
    cy_buf_fini(&b1);
    cy_buf_fini(&b2);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    run(data, size, CY_MQTT_V311);
    run(data, size, CY_MQTT_V5);
    run(data, size, 0);
    return 0;
}
