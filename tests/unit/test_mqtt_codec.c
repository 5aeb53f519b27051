/* Tests of the MQTT codec (src/mqtt): every packet type encoded, decoded and
 * compared field by field in 3.1.1 and 5.0, every proper prefix of each of
 * those encodings is CY_EAGAIN, a table of malformed packets each rejected
 * with its error, the variable byte integer and UTF-8 edge cases, and the
 * encoder's error paths (allocation failure, unencodable input) leaving the
 * output buffer untouched.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/cy_alloc.h"
#include "core/cy_buf.h"
#include "core/cy_err.h"
#include "mqtt/mqtt.h"

#include <stdlib.h>
#include <string.h>

#define S(lit) ((cy_str){(lit), (uint32_t)(sizeof(lit) - 1)})

/* ---- comparing packets ---- */

static void assert_str_eq(cy_str a, cy_str b)
{
    assert_int_equal(a.len, b.len);
    if (a.len) assert_memory_equal(a.p, b.p, a.len);
}

/* The user properties of an encode-side props (user_src, then extra) in
 * order, against those of a decoded one (raw). */
static void assert_users_eq(const cy_mqtt_props *want, const cy_mqtt_props *got)
{
    cy_mqtt_props src[2];
    memset(src, 0, sizeof(src));
    src[0].raw = want->user_src;
    src[0].raw_len = want->user_src_len;
    src[1].raw = want->extra;
    src[1].raw_len = want->extra_len;
    size_t gpos = 0;
    uint32_t n = 0;
    cy_str k1, v1, k2, v2;
    for (int i = 0; i < 2; i++) {
        size_t wpos = 0;
        while (cy_mqtt_props_next_user(&src[i], &wpos, &k1, &v1)) {
            assert_int_equal(cy_mqtt_props_next_user(got, &gpos, &k2, &v2), 1);
            assert_str_eq(k1, k2);
            assert_str_eq(v1, v2);
            n++;
        }
    }
    assert_int_equal(cy_mqtt_props_next_user(got, &gpos, &k2, &v2), 0);
    assert_int_equal(got->n_user, n);
}

static void assert_props_eq(const cy_mqtt_props *w, const cy_mqtt_props *g)
{
    assert_int_equal(w->present, g->present);
    assert_int_equal(w->payload_format, g->payload_format);
    assert_int_equal(w->request_problem_info, g->request_problem_info);
    assert_int_equal(w->request_response_info, g->request_response_info);
    assert_int_equal(w->max_qos, g->max_qos);
    assert_int_equal(w->retain_available, g->retain_available);
    assert_int_equal(w->wildcard_sub_available, g->wildcard_sub_available);
    assert_int_equal(w->sub_id_available, g->sub_id_available);
    assert_int_equal(w->shared_sub_available, g->shared_sub_available);
    assert_int_equal(w->server_keep_alive, g->server_keep_alive);
    assert_int_equal(w->receive_max, g->receive_max);
    assert_int_equal(w->topic_alias_max, g->topic_alias_max);
    assert_int_equal(w->topic_alias, g->topic_alias);
    assert_int_equal(w->message_expiry, g->message_expiry);
    assert_int_equal(w->session_expiry, g->session_expiry);
    assert_int_equal(w->will_delay, g->will_delay);
    assert_int_equal(w->max_packet_size, g->max_packet_size);
    assert_str_eq(w->content_type, g->content_type);
    assert_str_eq(w->response_topic, g->response_topic);
    assert_str_eq(w->correlation_data, g->correlation_data);
    assert_str_eq(w->assigned_client_id, g->assigned_client_id);
    assert_str_eq(w->auth_method, g->auth_method);
    assert_str_eq(w->auth_data, g->auth_data);
    assert_str_eq(w->response_info, g->response_info);
    assert_str_eq(w->server_reference, g->server_reference);
    assert_str_eq(w->reason_string, g->reason_string);
    assert_int_equal(w->n_sub_ids, g->n_sub_ids);
    const uint32_t *ids = w->out_sub_ids ? w->out_sub_ids : w->sub_ids;
    for (uint32_t i = 0; i < w->n_sub_ids; i++)
        assert_int_equal(ids[i], g->sub_ids[i]);
    assert_users_eq(w, g);
}

static void assert_packet_eq(uint8_t version, const cy_mqtt_packet *w, const cy_mqtt_packet *g)
{
    assert_int_equal(w->type, g->type);
    bool v5 = version == CY_MQTT_V5;
    switch (w->type) {
    case CY_MQTT_CONNECT: {
        const cy_mqtt_connect *a = &w->u.connect, *b = &g->u.connect;
        v5 = a->version == CY_MQTT_V5;
        assert_int_equal(a->version, b->version);
        assert_int_equal(a->clean_start, b->clean_start);
        assert_int_equal(a->keep_alive, b->keep_alive);
        assert_str_eq(a->client_id, b->client_id);
        assert_int_equal(a->has_username, b->has_username);
        assert_int_equal(a->has_password, b->has_password);
        assert_str_eq(a->username, b->username);
        assert_str_eq(a->password, b->password);
        assert_int_equal(a->will, b->will);
        assert_int_equal(a->will_qos, b->will_qos);
        assert_int_equal(a->will_retain, b->will_retain);
        assert_str_eq(a->will_topic, b->will_topic);
        assert_str_eq(a->will_payload, b->will_payload);
        if (v5) {
            assert_props_eq(&a->props, &b->props);
            if (a->will) assert_props_eq(&a->will_props, &b->will_props);
        }
        break;
    }
    case CY_MQTT_CONNACK:
        assert_int_equal(w->u.connack.session_present, g->u.connack.session_present);
        assert_int_equal(w->u.connack.reason, g->u.connack.reason);
        if (v5) assert_props_eq(&w->u.connack.props, &g->u.connack.props);
        break;
    case CY_MQTT_PUBLISH: {
        const cy_mqtt_publish *a = &w->u.publish, *b = &g->u.publish;
        assert_int_equal(a->qos, b->qos);
        assert_int_equal(a->dup, b->dup);
        assert_int_equal(a->retain, b->retain);
        assert_int_equal(g->flags, (a->dup ? 8 : 0) | a->qos << 1 | (a->retain ? 1 : 0));
        assert_str_eq(a->topic, b->topic);
        assert_int_equal(a->packet_id, b->packet_id);
        assert_int_equal(a->payload_len, b->payload_len);
        if (a->payload_len) assert_memory_equal(a->payload, b->payload, a->payload_len);
        if (v5) assert_props_eq(&a->props, &b->props);
        break;
    }
    case CY_MQTT_PUBACK:
    case CY_MQTT_PUBREC:
    case CY_MQTT_PUBREL:
    case CY_MQTT_PUBCOMP:
        assert_int_equal(w->u.ack.packet_id, g->u.ack.packet_id);
        if (v5) {
            assert_int_equal(w->u.ack.reason, g->u.ack.reason);
            assert_props_eq(&w->u.ack.props, &g->u.ack.props);
        }
        break;
    case CY_MQTT_SUBSCRIBE:
    case CY_MQTT_UNSUBSCRIBE: {
        const cy_mqtt_subscribe *a = &w->u.subscribe, *b = &g->u.subscribe;
        assert_int_equal(a->packet_id, b->packet_id);
        assert_int_equal(a->count, b->count);
        if (v5) assert_props_eq(&a->props, &b->props);
        size_t pos = 0;
        for (uint32_t i = 0; i < a->count; i++) {
            if (w->type == CY_MQTT_SUBSCRIBE) {
                cy_mqtt_sub_entry e;
                assert_int_equal(cy_mqtt_sub_next(b, version, &pos, &e), 1);
                assert_str_eq(a->entries[i].filter, e.filter);
                assert_int_equal(a->entries[i].qos, e.qos);
                assert_int_equal(v5 && a->entries[i].no_local, e.no_local);
                assert_int_equal(v5 && a->entries[i].retain_as_published, e.retain_as_published);
                assert_int_equal(v5 ? a->entries[i].retain_handling : 0, e.retain_handling);
            } else {
                cy_str f;
                assert_int_equal(cy_mqtt_unsub_next(b, &pos, &f), 1);
                assert_str_eq(a->filters[i], f);
            }
        }
        cy_mqtt_sub_entry e;
        cy_str f;
        assert_int_equal(w->type == CY_MQTT_SUBSCRIBE ? cy_mqtt_sub_next(b, version, &pos, &e)
                                                      : cy_mqtt_unsub_next(b, &pos, &f),
                         0);
        break;
    }
    case CY_MQTT_SUBACK:
    case CY_MQTT_UNSUBACK: {
        const cy_mqtt_suback *a = &w->u.suback, *b = &g->u.suback;
        assert_int_equal(a->packet_id, b->packet_id);
        if (!v5 && w->type == CY_MQTT_UNSUBACK) {
            assert_int_equal(b->count, 0);
            break;
        }
        assert_int_equal(a->count, b->count);
        assert_memory_equal(a->reasons, b->reasons, a->count);
        if (v5) assert_props_eq(&a->props, &b->props);
        break;
    }
    case CY_MQTT_DISCONNECT:
    case CY_MQTT_AUTH:
        if (v5) {
            assert_int_equal(w->u.disconnect.reason, g->u.disconnect.reason);
            assert_props_eq(&w->u.disconnect.props, &g->u.disconnect.props);
        }
        break;
    default:
        break;
    }
}

/* Encode p, decode it back and compare; check every proper prefix is
 * CY_EAGAIN for both frame and decode; check a following packet does not
 * disturb the decode. If bytes is not NULL, the encoding must be exactly
 * those n bytes. */
static void roundtrip_bytes(uint8_t version, const cy_mqtt_packet *p, const uint8_t *bytes,
                            size_t n)
{
    cy_buf b;
    cy_buf_init(&b);
    assert_int_equal(cy_mqtt_encode(&b, version, p), 0);
    const uint8_t *d = cy_buf_head(&b);
    size_t len = cy_buf_size(&b);
    if (bytes) {
        assert_int_equal(len, n);
        assert_memory_equal(d, bytes, n);
    }

    size_t pkt_len = 0, used = 0;
    assert_int_equal(cy_mqtt_frame(d, len, 0, &pkt_len), 0);
    assert_int_equal(pkt_len, len);
    cy_mqtt_packet g;
    memset(&g, 0xA5, sizeof(g)); /* decode must not depend on the output's contents */
    assert_int_equal(cy_mqtt_decode(d, len, version, &g, &used), 0);
    assert_int_equal(used, len);
    assert_packet_eq(version, p, &g);

    for (size_t i = 0; i < len; i++) {
        /* Copy the prefix so ASan catches any read past it. */
        uint8_t *pre = malloc(i ? i : 1);
        assert_non_null(pre);
        memcpy(pre, d, i);
        assert_int_equal(cy_mqtt_frame(pre, i, 0, &pkt_len), CY_EAGAIN);
        assert_int_equal(cy_mqtt_decode(pre, i, version, &g, &used), CY_EAGAIN);
        free(pre);
        if (len > 100000) i += len / 97; /* big payloads: a sample of cut points */
    }

    /* Followed by a PINGREQ: same packet, same length. */
    assert_int_equal(cy_buf_append(&b, "\xC0\x00", 2), 0);
    d = cy_buf_head(&b);
    assert_int_equal(cy_mqtt_decode(d, len + 2, version, &g, &used), 0);
    assert_int_equal(used, len);
    assert_packet_eq(version, p, &g);
    cy_buf_fini(&b);
}

static void roundtrip(uint8_t version, const cy_mqtt_packet *p)
{
    roundtrip_bytes(version, p, NULL, 0);
}

static cy_mqtt_packet pkt(uint8_t type)
{
    cy_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = type;
    return p;
}

/* A property block for user_src: two user properties with a payload format
 * entry between them, which the encoder must skip. */
static const uint8_t USERS[] = {0x26, 0,   3,    'k',  'e',  'y', 0, 5,    'v',  'a', 'l',
                                'u',  'e', 0x01, 0x01, 0x26, 0,   2, 0xC3, 0xA9, 0,   0};

static void set_users(cy_mqtt_props *pr)
{
    pr->user_src = USERS;
    pr->user_src_len = sizeof(USERS);
    pr->present |= CY_PBIT(CY_PROP_USER);
}

/* ---- round trips ---- */

static void test_cy_mqtt_encode_connect_v311(void **state)
{
    (void)state;
    cy_mqtt_packet p = pkt(CY_MQTT_CONNECT);
    cy_mqtt_connect *c = &p.u.connect;
    c->version = CY_MQTT_V311;
    c->clean_start = true;
    c->keep_alive = 60;
    /* What mosquitto_pub -V mqttv311 sends with an empty client id. */
    static const uint8_t want[] = {0x10, 0x0C, 0x00, 0x04, 'M',  'Q',  'T',
                                   'T',  0x04, 0x02, 0x00, 0x3C, 0x00, 0x00};
    roundtrip_bytes(CY_MQTT_V311, &p, want, sizeof(want));

    c->client_id = S("dev-42");
    c->has_username = c->has_password = true;
    c->username = S("user");
    c->password = (cy_str){"\x00\xffpw", 4};
    c->will = true;
    c->will_qos = 2;
    c->will_retain = true;
    c->will_topic = S("devices/42/status");
    c->will_payload = (cy_str){"\x00offline", 8};
    roundtrip(CY_MQTT_V311, &p);
    c->will_qos = 1;
    c->will_retain = false;
    c->clean_start = false;
    roundtrip(0, &p); /* version argument ignored for CONNECT */
}

static void test_cy_mqtt_encode_connect_v31(void **state)
{
    (void)state;
    cy_mqtt_packet p = pkt(CY_MQTT_CONNECT);
    p.u.connect.version = CY_MQTT_V31;
    p.u.connect.client_id = S("old-client");
    p.u.connect.keep_alive = 10;
    roundtrip(CY_MQTT_V31, &p);
}

static void test_cy_mqtt_encode_connect_v5(void **state)
{
    (void)state;
    cy_mqtt_packet p = pkt(CY_MQTT_CONNECT);
    cy_mqtt_connect *c = &p.u.connect;
    c->version = CY_MQTT_V5;
    c->clean_start = true;
    c->keep_alive = 30;
    roundtrip(CY_MQTT_V5, &p);

    c->client_id = S("v5-client");
    c->has_password = true; /* without a user name: allowed in 5.0 */
    c->password = S("secret");
    cy_mqtt_props *pr = &c->props;
    pr->present = CY_PBIT(CY_PROP_SESSION_EXPIRY) | CY_PBIT(CY_PROP_RECEIVE_MAX) |
                  CY_PBIT(CY_PROP_MAX_PACKET_SIZE) | CY_PBIT(CY_PROP_TOPIC_ALIAS_MAX) |
                  CY_PBIT(CY_PROP_REQUEST_RESPONSE_INFO) | CY_PBIT(CY_PROP_REQUEST_PROBLEM_INFO) |
                  CY_PBIT(CY_PROP_AUTH_METHOD) | CY_PBIT(CY_PROP_AUTH_DATA);
    pr->session_expiry = 0xFFFFFFFF;
    pr->receive_max = 20;
    pr->max_packet_size = 1 << 20;
    pr->topic_alias_max = 10;
    pr->request_response_info = 1;
    pr->request_problem_info = 0;
    pr->auth_method = S("SCRAM-SHA-1");
    pr->auth_data = (cy_str){"\x01\x02\x00", 3};
    set_users(pr);
    c->will = true;
    c->will_qos = 1;
    c->will_topic = S("will/topic");
    c->will_payload = S("bye");
    cy_mqtt_props *wp = &c->will_props;
    wp->present = CY_PBIT(CY_PROP_WILL_DELAY) | CY_PBIT(CY_PROP_PAYLOAD_FORMAT) |
                  CY_PBIT(CY_PROP_MESSAGE_EXPIRY) | CY_PBIT(CY_PROP_CONTENT_TYPE) |
                  CY_PBIT(CY_PROP_RESPONSE_TOPIC) | CY_PBIT(CY_PROP_CORRELATION_DATA);
    wp->will_delay = 5;
    wp->payload_format = 1;
    wp->message_expiry = 3600;
    wp->content_type = S("text/plain");
    wp->response_topic = S("reply/here");
    wp->correlation_data = (cy_str){"\x00\x01", 2};
    set_users(wp);
    roundtrip(CY_MQTT_V5, &p);
}

static void test_cy_mqtt_encode_connack(void **state)
{
    (void)state;
    cy_mqtt_packet p = pkt(CY_MQTT_CONNACK);
    p.u.connack.session_present = true;
    static const uint8_t v4[] = {0x20, 0x02, 0x01, 0x00};
    roundtrip_bytes(CY_MQTT_V311, &p, v4, sizeof(v4));
    static const uint8_t v5[] = {0x20, 0x03, 0x01, 0x00, 0x00};
    roundtrip_bytes(CY_MQTT_V5, &p, v5, sizeof(v5));
    p.u.connack.session_present = false;
    p.u.connack.reason = CY_RC3_NOT_AUTHORIZED;
    roundtrip(CY_MQTT_V311, &p);

    p.u.connack.reason = CY_RC_SUCCESS;
    cy_mqtt_props *pr = &p.u.connack.props;
    pr->present = CY_PBIT(CY_PROP_SESSION_EXPIRY) | CY_PBIT(CY_PROP_RECEIVE_MAX) |
                  CY_PBIT(CY_PROP_MAX_QOS) | CY_PBIT(CY_PROP_RETAIN_AVAILABLE) |
                  CY_PBIT(CY_PROP_MAX_PACKET_SIZE) | CY_PBIT(CY_PROP_ASSIGNED_CLIENT_ID) |
                  CY_PBIT(CY_PROP_TOPIC_ALIAS_MAX) | CY_PBIT(CY_PROP_REASON_STRING) |
                  CY_PBIT(CY_PROP_WILDCARD_SUB_AVAILABLE) | CY_PBIT(CY_PROP_SUB_ID_AVAILABLE) |
                  CY_PBIT(CY_PROP_SHARED_SUB_AVAILABLE) | CY_PBIT(CY_PROP_SERVER_KEEP_ALIVE) |
                  CY_PBIT(CY_PROP_RESPONSE_INFO) | CY_PBIT(CY_PROP_SERVER_REFERENCE) |
                  CY_PBIT(CY_PROP_AUTH_METHOD) | CY_PBIT(CY_PROP_AUTH_DATA);
    pr->session_expiry = 7;
    pr->receive_max = 65535;
    pr->max_qos = 1;
    pr->retain_available = 1;
    pr->max_packet_size = 268435460;
    pr->assigned_client_id = S("auto-1234");
    pr->topic_alias_max = 0;
    pr->reason_string = S("welcome");
    pr->wildcard_sub_available = 1;
    pr->sub_id_available = 0;
    pr->shared_sub_available = 1;
    pr->server_keep_alive = 120;
    pr->response_info = S("resp/");
    pr->server_reference = S("other.example");
    pr->auth_method = S("m");
    pr->auth_data = S("d");
    set_users(pr);
    roundtrip(CY_MQTT_V5, &p);
    p.u.connack.reason = CY_RC_QUOTA_EXCEEDED;
    roundtrip(CY_MQTT_V5, &p);
}

static void test_cy_mqtt_encode_publish_v311(void **state)
{
    (void)state;
    cy_mqtt_packet p = pkt(CY_MQTT_PUBLISH);
    cy_mqtt_publish *m = &p.u.publish;
    m->topic = S("a/b");
    m->payload = (const uint8_t *)"hi";
    m->payload_len = 2;
    static const uint8_t q0[] = {0x30, 0x07, 0x00, 0x03, 'a', '/', 'b', 'h', 'i'};
    roundtrip_bytes(CY_MQTT_V311, &p, q0, sizeof(q0));
    m->qos = 1;
    m->packet_id = 0x1234;
    m->retain = true;
    static const uint8_t q1[] = {0x33, 0x09, 0x00, 0x03, 'a', '/', 'b', 0x12, 0x34, 'h', 'i'};
    roundtrip_bytes(CY_MQTT_V311, &p, q1, sizeof(q1));
    m->qos = 2;
    m->dup = true;
    m->packet_id = 65535;
    m->payload_len = 0; /* empty payload */
    m->topic = S("sensors/\xE2\x82\xAC/temp/with/a/long/topic");
    roundtrip(CY_MQTT_V311, &p);

    /* Remaining lengths of 2, 3 and 4 bytes. */
    size_t sizes[] = {200, 20000, 2100000};
    for (size_t i = 0; i < 3; i++) {
        uint8_t *big = malloc(sizes[i]);
        assert_non_null(big);
        for (size_t j = 0; j < sizes[i]; j++)
            big[j] = (uint8_t)(j * 7);
        m->payload = big;
        m->payload_len = sizes[i];
        roundtrip(CY_MQTT_V311, &p);
        free(big);
    }
}

static void test_cy_mqtt_encode_publish_v5(void **state)
{
    (void)state;
    cy_mqtt_packet p = pkt(CY_MQTT_PUBLISH);
    cy_mqtt_publish *m = &p.u.publish;
    m->topic = S("a/b");
    m->payload = (const uint8_t *)"hi";
    m->payload_len = 2;
    static const uint8_t q0[] = {0x30, 0x08, 0x00, 0x03, 'a', '/', 'b', 0x00, 'h', 'i'};
    roundtrip_bytes(CY_MQTT_V5, &p, q0, sizeof(q0));

    m->qos = 1;
    m->packet_id = 9;
    cy_mqtt_props *pr = &m->props;
    pr->present = CY_PBIT(CY_PROP_PAYLOAD_FORMAT) | CY_PBIT(CY_PROP_MESSAGE_EXPIRY) |
                  CY_PBIT(CY_PROP_CONTENT_TYPE) | CY_PBIT(CY_PROP_RESPONSE_TOPIC) |
                  CY_PBIT(CY_PROP_CORRELATION_DATA) | CY_PBIT(CY_PROP_TOPIC_ALIAS) |
                  CY_PBIT(CY_PROP_SUBSCRIPTION_ID);
    pr->payload_format = 1;
    pr->message_expiry = 60;
    pr->content_type = S("application/json");
    pr->response_topic = S("r/1");
    pr->correlation_data = S("corr");
    pr->topic_alias = 3;
    pr->n_sub_ids = 3;
    pr->sub_ids[0] = 1;
    pr->sub_ids[1] = 268435455;
    pr->sub_ids[2] = 128;
    set_users(pr);
    roundtrip(CY_MQTT_V5, &p);

    /* out_sub_ids replaces sub_ids. */
    static const uint32_t ids[] = {16384, 2097152};
    pr->out_sub_ids = ids;
    pr->n_sub_ids = 2;
    roundtrip(CY_MQTT_V5, &p);

    /* Empty topic with a topic alias. */
    m->topic = (cy_str){"", 0};
    memset(pr, 0, sizeof(*pr));
    pr->present = CY_PBIT(CY_PROP_TOPIC_ALIAS);
    pr->topic_alias = 1;
    static const uint8_t alias[] = {0x32, 0x0A, 0x00, 0x00, 0x00, 0x09,
                                    0x03, 0x23, 0x00, 0x01, 'h',  'i'};
    roundtrip_bytes(CY_MQTT_V5, &p, alias, sizeof(alias));

    /* Property fields are ignored in 3.1.1. */
    m->topic = S("t");
    roundtrip(CY_MQTT_V311, &p);
}

static void test_cy_mqtt_encode_publish_extra(void **state)
{
    (void)state;
    /* extra is appended verbatim after fields and user_src. */
    static const uint8_t extra[] = {0x26, 0, 1, 'x', 0, 1, 'y'};
    cy_mqtt_packet p = pkt(CY_MQTT_PUBLISH);
    p.u.publish.topic = S("t");
    p.u.publish.props.present = CY_PBIT(CY_PROP_PAYLOAD_FORMAT) | CY_PBIT(CY_PROP_USER);
    p.u.publish.props.payload_format = 1;
    p.u.publish.props.extra = extra;
    p.u.publish.props.extra_len = sizeof(extra);
    static const uint8_t want[] = {0x30, 0x0d, 0x00, 0x01, 't', 0x09, 0x01, 0x01,
                                   0x26, 0,    1,    'x',  0,   1,    'y'};
    roundtrip_bytes(CY_MQTT_V5, &p, want, sizeof(want));
    assert_int_equal(cy_mqtt_props_size(&p.u.publish.props), 9);
}

static void test_cy_mqtt_encode_acks(void **state)
{
    (void)state;
    static const uint8_t types[] = {CY_MQTT_PUBACK, CY_MQTT_PUBREC, CY_MQTT_PUBREL,
                                    CY_MQTT_PUBCOMP};
    for (size_t i = 0; i < 4; i++) {
        cy_mqtt_packet p = pkt(types[i]);
        p.u.ack.packet_id = 0x0102;
        uint8_t first = (uint8_t)(types[i] << 4 | (types[i] == CY_MQTT_PUBREL ? 2 : 0));
        uint8_t shortf[] = {first, 0x02, 0x01, 0x02};
        roundtrip_bytes(CY_MQTT_V311, &p, shortf, sizeof(shortf));
        roundtrip_bytes(CY_MQTT_V5, &p, shortf, sizeof(shortf));

        uint8_t rc = types[i] == CY_MQTT_PUBREL || types[i] == CY_MQTT_PUBCOMP
                         ? CY_RC_PACKET_ID_NOT_FOUND
                         : CY_RC_NO_MATCHING_SUBSCRIBERS;
        p.u.ack.reason = rc;
        uint8_t reasonf[] = {first, 0x03, 0x01, 0x02, rc};
        roundtrip_bytes(CY_MQTT_V5, &p, reasonf, sizeof(reasonf));

        p.u.ack.props.present = CY_PBIT(CY_PROP_REASON_STRING);
        p.u.ack.props.reason_string = S("why");
        set_users(&p.u.ack.props);
        roundtrip(CY_MQTT_V5, &p);
        p.u.ack.reason = 0;
        roundtrip(CY_MQTT_V5, &p);

        /* The long form of a success without properties decodes too. */
        uint8_t longf[] = {first, 0x04, 0x01, 0x02, 0x00, 0x00};
        cy_mqtt_packet g;
        size_t used;
        assert_int_equal(cy_mqtt_decode(longf, sizeof(longf), CY_MQTT_V5, &g, &used), 0);
        assert_int_equal(used, sizeof(longf));
        assert_int_equal(g.u.ack.packet_id, 0x0102);
        assert_int_equal(g.u.ack.reason, 0);
        assert_int_equal(g.u.ack.props.present, 0);
    }
}

static void test_cy_mqtt_encode_subscribe(void **state)
{
    (void)state;
    cy_mqtt_sub_entry e[3] = {
        {S("a/+/c"), 0, false, false, 0},
        {S("#"), 1, true, true, 2},
        {S("$share/g/x/#"), 2, false, true, 1},
    };
    cy_mqtt_packet p = pkt(CY_MQTT_SUBSCRIBE);
    p.u.subscribe.packet_id = 10;
    p.u.subscribe.entries = e;
    p.u.subscribe.count = 1;
    static const uint8_t v4[] = {0x82, 0x0A, 0x00, 0x0A, 0x00, 0x05, 'a', '/', '+', '/', 'c', 0x00};
    roundtrip_bytes(CY_MQTT_V311, &p, v4, sizeof(v4));
    p.u.subscribe.count = 3;
    roundtrip(CY_MQTT_V311, &p);
    roundtrip(CY_MQTT_V5, &p);
    p.u.subscribe.props.present = CY_PBIT(CY_PROP_SUBSCRIPTION_ID);
    p.u.subscribe.props.n_sub_ids = 1;
    p.u.subscribe.props.sub_ids[0] = 77;
    set_users(&p.u.subscribe.props);
    roundtrip(CY_MQTT_V5, &p);
}

static void test_cy_mqtt_encode_unsubscribe(void **state)
{
    (void)state;
    cy_str f[2] = {S("a/b"), S("c/#")};
    cy_mqtt_packet p = pkt(CY_MQTT_UNSUBSCRIBE);
    p.u.subscribe.packet_id = 3;
    p.u.subscribe.filters = f;
    p.u.subscribe.count = 2;
    static const uint8_t v4[] = {0xA2, 0x0C, 0x00, 0x03, 0x00, 0x03, 'a',
                                 '/',  'b',  0x00, 0x03, 'c',  '/',  '#'};
    roundtrip_bytes(CY_MQTT_V311, &p, v4, sizeof(v4));
    roundtrip(CY_MQTT_V5, &p);
    set_users(&p.u.subscribe.props);
    roundtrip(CY_MQTT_V5, &p);
}

static void test_cy_mqtt_encode_suback(void **state)
{
    (void)state;
    static const uint8_t r4[] = {0x00, 0x01, 0x02, 0x80};
    cy_mqtt_packet p = pkt(CY_MQTT_SUBACK);
    p.u.suback.packet_id = 10;
    p.u.suback.reasons = r4;
    p.u.suback.count = 4;
    static const uint8_t v4[] = {0x90, 0x06, 0x00, 0x0A, 0x00, 0x01, 0x02, 0x80};
    roundtrip_bytes(CY_MQTT_V311, &p, v4, sizeof(v4));
    static const uint8_t r5[] = {0x00, 0x02, 0x97, 0x9E, 0xA1, 0xA2, 0x8F};
    p.u.suback.reasons = r5;
    p.u.suback.count = sizeof(r5);
    roundtrip(CY_MQTT_V5, &p);
    p.u.suback.props.present = CY_PBIT(CY_PROP_REASON_STRING);
    p.u.suback.props.reason_string = S("some refused");
    set_users(&p.u.suback.props);
    roundtrip(CY_MQTT_V5, &p);
}

static void test_cy_mqtt_encode_unsuback(void **state)
{
    (void)state;
    cy_mqtt_packet p = pkt(CY_MQTT_UNSUBACK);
    p.u.suback.packet_id = 0x0203;
    static const uint8_t v4[] = {0xB0, 0x02, 0x02, 0x03};
    roundtrip_bytes(CY_MQTT_V311, &p, v4, sizeof(v4));
    static const uint8_t r[] = {0x00, 0x11, 0x87};
    p.u.suback.reasons = r;
    p.u.suback.count = 3;
    roundtrip_bytes(CY_MQTT_V311, &p, v4, sizeof(v4)); /* reasons dropped in 3.1.1 */
    static const uint8_t v5[] = {0xB0, 0x06, 0x02, 0x03, 0x00, 0x00, 0x11, 0x87};
    roundtrip_bytes(CY_MQTT_V5, &p, v5, sizeof(v5));
    set_users(&p.u.suback.props);
    roundtrip(CY_MQTT_V5, &p);
}

static void test_cy_mqtt_encode_ping_disconnect_auth(void **state)
{
    (void)state;
    cy_mqtt_packet p = pkt(CY_MQTT_PINGREQ);
    static const uint8_t ping[] = {0xC0, 0x00};
    roundtrip_bytes(CY_MQTT_V311, &p, ping, 2);
    roundtrip_bytes(CY_MQTT_V5, &p, ping, 2);
    p = pkt(CY_MQTT_PINGRESP);
    static const uint8_t pong[] = {0xD0, 0x00};
    roundtrip_bytes(CY_MQTT_V311, &p, pong, 2);
    roundtrip_bytes(CY_MQTT_V5, &p, pong, 2);

    p = pkt(CY_MQTT_DISCONNECT);
    static const uint8_t disc[] = {0xE0, 0x00};
    roundtrip_bytes(CY_MQTT_V311, &p, disc, 2);
    roundtrip_bytes(CY_MQTT_V5, &p, disc, 2);
    p.u.disconnect.reason = CY_RC_DISCONNECT_WITH_WILL;
    static const uint8_t disc1[] = {0xE0, 0x01, 0x04};
    roundtrip_bytes(CY_MQTT_V5, &p, disc1, 3);
    roundtrip_bytes(CY_MQTT_V311, &p, disc, 2); /* reason dropped in 3.1.1 */
    p.u.disconnect.props.present = CY_PBIT(CY_PROP_SESSION_EXPIRY) |
                                   CY_PBIT(CY_PROP_REASON_STRING) |
                                   CY_PBIT(CY_PROP_SERVER_REFERENCE);
    p.u.disconnect.props.session_expiry = 0;
    p.u.disconnect.props.reason_string = S("bye");
    p.u.disconnect.props.server_reference = S("elsewhere");
    set_users(&p.u.disconnect.props);
    roundtrip(CY_MQTT_V5, &p);
    p.u.disconnect.reason = 0;
    roundtrip(CY_MQTT_V5, &p);

    p = pkt(CY_MQTT_AUTH);
    static const uint8_t auth[] = {0xF0, 0x00};
    roundtrip_bytes(CY_MQTT_V5, &p, auth, 2);
    p.u.disconnect.reason = 0x18; /* continue authentication */
    p.u.disconnect.props.present =
        CY_PBIT(CY_PROP_AUTH_METHOD) | CY_PBIT(CY_PROP_AUTH_DATA) | CY_PBIT(CY_PROP_REASON_STRING);
    p.u.disconnect.props.auth_method = S("SCRAM-SHA-1");
    p.u.disconnect.props.auth_data = (cy_str){"\x00\x01\x02", 3};
    p.u.disconnect.props.reason_string = S("more");
    roundtrip(CY_MQTT_V5, &p);
}

/* ---- malformed input ---- */

typedef struct bad_case {
    const char *name;
    uint8_t version;
    int err;
    size_t len;
    uint8_t b[48];
} bad_case;

#define B(...)                                                                                     \
    sizeof((uint8_t[]){__VA_ARGS__}),                                                              \
    {                                                                                              \
        __VA_ARGS__                                                                                \
    }

static const bad_case bad[] = {
    {"type 0", 4, CY_EPROTO, B(0x00, 0x00)},
    {"remaining length of 5 bytes", 4, CY_EPROTO, B(0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01)},
    {"remaining length not shortest", 4, CY_EPROTO, B(0xC0, 0x80, 0x00)},
    {"PUBREL flags 0", 4, CY_EPROTO, B(0x60, 0x02, 0x00, 0x01)},
    {"PUBREL flags 3", 5, CY_EPROTO, B(0x63, 0x02, 0x00, 0x01)},
    {"SUBSCRIBE flags 0", 4, CY_EPROTO, B(0x80, 0x06, 0x00, 0x01, 0x00, 0x01, 'a', 0x00)},
    {"UNSUBSCRIBE flags 0", 4, CY_EPROTO, B(0xA0, 0x05, 0x00, 0x01, 0x00, 0x01, 'a')},
    {"PUBACK flags 1", 4, CY_EPROTO, B(0x41, 0x02, 0x00, 0x01)},
    {"CONNACK flags 8", 4, CY_EPROTO, B(0x28, 0x02, 0x00, 0x00)},
    {"PINGREQ flags 2", 4, CY_EPROTO, B(0xC2, 0x00)},
    {"PINGREQ with a body", 4, CY_EPROTO, B(0xC0, 0x01, 0x00)},
    {"PINGRESP with a body", 5, CY_EPROTO, B(0xD0, 0x01, 0x00)},
    {"PUBLISH QoS 3", 4, CY_EPROTO, B(0x36, 0x05, 0x00, 0x01, 'a', 0x00, 0x01)},
    {"PUBLISH dup with QoS 0 (3.1.1)", 4, CY_EPROTO, B(0x38, 0x03, 0x00, 0x01, 'a')},
    {"PUBLISH dup with QoS 0 (5)", 5, CY_EPROTO, B(0x38, 0x04, 0x00, 0x01, 'a', 0x00)},
    {"PUBLISH empty topic (3.1.1)", 4, CY_EPROTO, B(0x30, 0x02, 0x00, 0x00)},
    {"PUBLISH empty topic, no alias", 5, CY_EPROTO, B(0x30, 0x03, 0x00, 0x00, 0x00)},
    {"PUBLISH topic with +", 4, CY_EPROTO, B(0x30, 0x05, 0x00, 0x03, 'a', '/', '+')},
    {"PUBLISH topic with #", 4, CY_EPROTO, B(0x30, 0x03, 0x00, 0x01, '#')},
    {"PUBLISH long topic with # after 8 bytes", 4, CY_EPROTO,
     B(0x30, 0x0D, 0x00, 0x0B, 'a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', '/', '#')},
    {"PUBLISH topic not UTF-8", 4, CY_EPROTO, B(0x30, 0x03, 0x00, 0x01, 0xFF)},
    {"PUBLISH topic with U+0000", 4, CY_EPROTO, B(0x30, 0x04, 0x00, 0x02, 'a', 0x00)},
    {"PUBLISH topic with a surrogate", 4, CY_EPROTO, B(0x30, 0x05, 0x00, 0x03, 0xED, 0xA0, 0x80)},
    {"PUBLISH topic overlong", 4, CY_EPROTO, B(0x30, 0x04, 0x00, 0x02, 0xC0, 0xAF)},
    {"PUBLISH QoS 1 packet id 0", 4, CY_EPROTO, B(0x32, 0x05, 0x00, 0x01, 'a', 0x00, 0x00)},
    {"PUBLISH QoS 2 no packet id", 4, CY_EPROTO, B(0x34, 0x04, 0x00, 0x01, 'a', 0x00)},
    {"PUBLISH topic past the end", 4, CY_EPROTO, B(0x30, 0x03, 0x00, 0x05, 'a')},
    {"PUBLISH topic length cut", 4, CY_EPROTO, B(0x30, 0x01, 0x00)},
    {"PUBLISH no property length", 5, CY_EPROTO, B(0x30, 0x03, 0x00, 0x01, 'a')},
    {"PUBLISH properties past the end", 5, CY_EPROTO, B(0x30, 0x05, 0x00, 0x01, 'a', 0x05, 0x01)},
    {"PUBLISH unknown property 0x04", 5, CY_EPROTO,
     B(0x30, 0x06, 0x00, 0x01, 'a', 0x02, 0x04, 0x00)},
    {"PUBLISH two-byte property id", 5, CY_EPROTO,
     B(0x30, 0x07, 0x00, 0x01, 'a', 0x03, 0x81, 0x01, 0x00)},
    {"PUBLISH session expiry (CONNECT only)", 5, CY_EPROTO,
     B(0x30, 0x09, 0x00, 0x01, 'a', 0x05, 0x11, 0x00, 0x00, 0x00, 0x01)},
    {"PUBLISH will delay (will only)", 5, CY_EPROTO,
     B(0x30, 0x09, 0x00, 0x01, 'a', 0x05, 0x18, 0x00, 0x00, 0x00, 0x01)},
    {"PUBLISH payload format twice", 5, CY_EPROTO,
     B(0x30, 0x08, 0x00, 0x01, 'a', 0x04, 0x01, 0x00, 0x01, 0x01)},
    {"PUBLISH topic alias twice", 5, CY_EPROTO,
     B(0x30, 0x0A, 0x00, 0x01, 'a', 0x06, 0x23, 0x00, 0x01, 0x23, 0x00, 0x02)},
    {"PUBLISH payload format 2", 5, CY_EPROTO, B(0x30, 0x06, 0x00, 0x01, 'a', 0x02, 0x01, 0x02)},
    {"PUBLISH subscription id 0", 5, CY_EPROTO, B(0x30, 0x06, 0x00, 0x01, 'a', 0x02, 0x0B, 0x00)},
    {"PUBLISH subscription id not shortest", 5, CY_EPROTO,
     B(0x30, 0x07, 0x00, 0x01, 'a', 0x03, 0x0B, 0x81, 0x00)},
    {"PUBLISH subscription id of 5 bytes", 5, CY_EPROTO,
     B(0x30, 0x0A, 0x00, 0x01, 'a', 0x06, 0x0B, 0xFF, 0xFF, 0xFF, 0xFF, 0x01)},
    {"PUBLISH message expiry cut", 5, CY_EPROTO,
     B(0x30, 0x07, 0x00, 0x01, 'a', 0x03, 0x02, 0x00, 0x00)},
    {"PUBLISH content type not UTF-8", 5, CY_EPROTO,
     B(0x30, 0x08, 0x00, 0x01, 'a', 0x04, 0x03, 0x00, 0x01, 0xC3)},
    {"PUBLISH response topic with wildcard", 5, CY_EPROTO,
     B(0x30, 0x08, 0x00, 0x01, 'a', 0x04, 0x08, 0x00, 0x01, '+')},
    {"PUBLISH empty response topic", 5, CY_EPROTO,
     B(0x30, 0x07, 0x00, 0x01, 'a', 0x03, 0x08, 0x00, 0x00)},
    {"PUBLISH user property past the block", 5, CY_EPROTO,
     B(0x30, 0x0C, 0x00, 0x01, 'a', 0x05, 0x26, 0x00, 0x01, 'k', 0x00, 0x01, 'v', 'x')},
    {"PUBLISH user property value not UTF-8", 5, CY_EPROTO,
     B(0x30, 0x0B, 0x00, 0x01, 'a', 0x07, 0x26, 0x00, 0x01, 'k', 0x00, 0x01, 0x80)},
    {"CONNECT protocol name MQTX", 4, CY_EPROTO,
     B(0x10, 0x0C, 0x00, 0x04, 'M', 'Q', 'T', 'X', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00)},
    {"CONNECT protocol level 6", 4, CY_ENOTSUP,
     B(0x10, 0x0C, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x06, 0x02, 0x00, 0x3C, 0x00, 0x00)},
    {"CONNECT protocol level 3 with MQTT", 0, CY_ENOTSUP,
     B(0x10, 0x0C, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x03, 0x02, 0x00, 0x3C, 0x00, 0x00)},
    {"CONNECT MQIsdp level 4", 0, CY_ENOTSUP,
     B(0x10, 0x0E, 0x00, 0x06, 'M', 'Q', 'I', 's', 'd', 'p', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00)},
    {"CONNECT flags 1", 4, CY_EPROTO,
     B(0x11, 0x0C, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00)},
    {"CONNECT reserved flag", 4, CY_EPROTO,
     B(0x10, 0x0C, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x03, 0x00, 0x3C, 0x00, 0x00)},
    {"CONNECT will QoS without will", 4, CY_EPROTO,
     B(0x10, 0x0C, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x0A, 0x00, 0x3C, 0x00, 0x00)},
    {"CONNECT will retain without will", 5, CY_EPROTO,
     B(0x10, 0x0D, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x22, 0x00, 0x3C, 0x00, 0x00, 0x00)},
    {"CONNECT will QoS 3", 4, CY_EPROTO,
     B(0x10, 0x11, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x1E, 0x00, 0x3C, 0x00, 0x00, 0x00, 0x01,
       't', 0x00, 0x00)},
    {"CONNECT will topic with wildcard", 4, CY_EPROTO,
     B(0x10, 0x11, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x06, 0x00, 0x3C, 0x00, 0x00, 0x00, 0x01,
       '#', 0x00, 0x00)},
    {"CONNECT empty will topic", 4, CY_EPROTO,
     B(0x10, 0x10, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x06, 0x00, 0x3C, 0x00, 0x00, 0x00, 0x00,
       0x00, 0x00)},
    {"CONNECT password without user name (3.1.1)", 4, CY_EPROTO,
     B(0x10, 0x0E, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x42, 0x00, 0x3C, 0x00, 0x00, 0x00, 0x00)},
    {"CONNECT user name flag, no user name", 4, CY_EPROTO,
     B(0x10, 0x0C, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x82, 0x00, 0x3C, 0x00, 0x00)},
    {"CONNECT trailing byte", 4, CY_EPROTO,
     B(0x10, 0x0D, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x00, 0x00)},
    {"CONNECT client id not UTF-8", 4, CY_EPROTO,
     B(0x10, 0x0D, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00, 0x3C, 0x00, 0x01, 0xFE)},
    {"CONNECT keep alive cut", 4, CY_EPROTO,
     B(0x10, 0x09, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x04, 0x02, 0x00)},
    {"CONNECT receive maximum 0", 5, CY_EPROTO,
     B(0x10, 0x10, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x02, 0x00, 0x3C, 0x03, 0x21, 0x00, 0x00,
       0x00, 0x00)},
    {"CONNECT maximum packet size 0", 5, CY_EPROTO,
     B(0x10, 0x12, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x02, 0x00, 0x3C, 0x05, 0x27, 0x00, 0x00,
       0x00, 0x00, 0x00, 0x00)},
    {"CONNECT request problem information 2", 5, CY_EPROTO,
     B(0x10, 0x0F, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x02, 0x00, 0x3C, 0x02, 0x17, 0x02, 0x00,
       0x00)},
    {"CONNECT request response information 2", 5, CY_EPROTO,
     B(0x10, 0x0F, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x02, 0x00, 0x3C, 0x02, 0x19, 0x02, 0x00,
       0x00)},
    {"CONNECT topic alias (PUBLISH only)", 5, CY_EPROTO,
     B(0x10, 0x10, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x02, 0x00, 0x3C, 0x03, 0x23, 0x00, 0x01,
       0x00, 0x00)},
    {"CONNECT authentication data without method", 5, CY_EPROTO,
     B(0x10, 0x10, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x02, 0x00, 0x3C, 0x03, 0x16, 0x00, 0x00,
       0x00, 0x00)},
    {"CONNECT will property session expiry", 5, CY_EPROTO,
     B(0x10, 0x18, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x06, 0x00, 0x3C, 0x00, 0x00, 0x00, 0x05,
       0x11, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 't', 0x00, 0x00)},
    {"CONNECT no property length", 5, CY_EPROTO,
     B(0x10, 0x0A, 0x00, 0x04, 'M', 'Q', 'T', 'T', 0x05, 0x02, 0x00, 0x3C)},
    {"CONNACK reserved flag bits", 4, CY_EPROTO, B(0x20, 0x02, 0x02, 0x00)},
    {"CONNACK return code 6", 4, CY_EPROTO, B(0x20, 0x02, 0x00, 0x06)},
    {"CONNACK session present with an error", 4, CY_EPROTO, B(0x20, 0x02, 0x01, 0x05)},
    {"CONNACK trailing byte (3.1.1)", 4, CY_EPROTO, B(0x20, 0x03, 0x00, 0x00, 0x00)},
    {"CONNACK no property length (5)", 5, CY_EPROTO, B(0x20, 0x02, 0x00, 0x00)},
    {"CONNACK reason 0x10", 5, CY_EPROTO, B(0x20, 0x03, 0x00, 0x10, 0x00)},
    {"CONNACK maximum QoS 2", 5, CY_EPROTO, B(0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02)},
    {"CONNACK retain available 2", 5, CY_EPROTO, B(0x20, 0x05, 0x00, 0x00, 0x02, 0x25, 0x02)},
    {"CONNACK wildcard available 2", 5, CY_EPROTO, B(0x20, 0x05, 0x00, 0x00, 0x02, 0x28, 0x02)},
    {"CONNACK sub ids available 2", 5, CY_EPROTO, B(0x20, 0x05, 0x00, 0x00, 0x02, 0x29, 0x02)},
    {"CONNACK shared available 2", 5, CY_EPROTO, B(0x20, 0x05, 0x00, 0x00, 0x02, 0x2A, 0x02)},
    {"CONNACK will delay", 5, CY_EPROTO,
     B(0x20, 0x08, 0x00, 0x00, 0x05, 0x18, 0x00, 0x00, 0x00, 0x01)},
    {"PUBACK body of 3 bytes (3.1.1)", 4, CY_EPROTO, B(0x40, 0x03, 0x00, 0x01, 0x00)},
    {"PUBACK body of 1 byte", 5, CY_EPROTO, B(0x40, 0x01, 0x00)},
    {"PUBACK packet id 0", 4, CY_EPROTO, B(0x40, 0x02, 0x00, 0x00)},
    {"PUBCOMP packet id 0", 5, CY_EPROTO, B(0x70, 0x02, 0x00, 0x00)},
    {"PUBACK reason 0x05", 5, CY_EPROTO, B(0x40, 0x03, 0x00, 0x01, 0x05)},
    {"PUBREL reason 0x10", 5, CY_EPROTO, B(0x62, 0x03, 0x00, 0x01, 0x10)},
    {"PUBACK trailing byte after properties", 5, CY_EPROTO,
     B(0x40, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00)},
    {"PUBACK topic alias", 5, CY_EPROTO, B(0x40, 0x07, 0x00, 0x01, 0x00, 0x03, 0x23, 0x00, 0x01)},
    {"SUBSCRIBE no filter", 4, CY_EPROTO, B(0x82, 0x02, 0x00, 0x01)},
    {"SUBSCRIBE no filter (5)", 5, CY_EPROTO, B(0x82, 0x03, 0x00, 0x01, 0x00)},
    {"SUBSCRIBE packet id 0", 4, CY_EPROTO, B(0x82, 0x06, 0x00, 0x00, 0x00, 0x01, 'a', 0x00)},
    {"SUBSCRIBE options above QoS (3.1.1)", 4, CY_EPROTO,
     B(0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 'a', 0x04)},
    {"SUBSCRIBE reserved option bits (5)", 5, CY_EPROTO,
     B(0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 'a', 0x40)},
    {"SUBSCRIBE QoS 3", 4, CY_EPROTO, B(0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 'a', 0x03)},
    {"SUBSCRIBE retain handling 3", 5, CY_EPROTO,
     B(0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, 'a', 0x30)},
    {"SUBSCRIBE empty filter", 4, CY_EPROTO, B(0x82, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00)},
    {"SUBSCRIBE no options byte", 4, CY_EPROTO, B(0x82, 0x05, 0x00, 0x01, 0x00, 0x01, 'a')},
    {"SUBSCRIBE filter not UTF-8", 4, CY_EPROTO, B(0x82, 0x06, 0x00, 0x01, 0x00, 0x01, 0xC1, 0x00)},
    {"SUBSCRIBE two subscription ids", 5, CY_EPROTO,
     B(0x82, 0x0B, 0x00, 0x01, 0x04, 0x0B, 0x01, 0x0B, 0x02, 0x00, 0x01, 'a', 0x00)},
    {"SUBSCRIBE topic alias", 5, CY_EPROTO,
     B(0x82, 0x0A, 0x00, 0x01, 0x03, 0x23, 0x00, 0x01, 0x00, 0x01, 'a', 0x00)},
    {"UNSUBSCRIBE no filter", 4, CY_EPROTO, B(0xA2, 0x02, 0x00, 0x01)},
    {"UNSUBSCRIBE empty filter", 5, CY_EPROTO, B(0xA2, 0x05, 0x00, 0x01, 0x00, 0x00, 0x00)},
    {"UNSUBSCRIBE filter cut", 4, CY_EPROTO, B(0xA2, 0x05, 0x00, 0x01, 0x00, 0x02, 'a')},
    {"UNSUBSCRIBE subscription id", 5, CY_EPROTO,
     B(0xA2, 0x08, 0x00, 0x01, 0x02, 0x0B, 0x01, 0x00, 0x01, 'a')},
    {"SUBACK no reasons", 4, CY_EPROTO, B(0x90, 0x02, 0x00, 0x01)},
    {"SUBACK reason 3 (3.1.1)", 4, CY_EPROTO, B(0x90, 0x03, 0x00, 0x01, 0x03)},
    {"SUBACK reason 0x87 (3.1.1)", 4, CY_EPROTO, B(0x90, 0x03, 0x00, 0x01, 0x87)},
    {"SUBACK reason 0x11 (5)", 5, CY_EPROTO, B(0x90, 0x04, 0x00, 0x01, 0x00, 0x11)},
    {"UNSUBACK trailing byte (3.1.1)", 4, CY_EPROTO, B(0xB0, 0x03, 0x00, 0x01, 0x00)},
    {"UNSUBACK no reasons (5)", 5, CY_EPROTO, B(0xB0, 0x03, 0x00, 0x01, 0x00)},
    {"UNSUBACK reason 0x02 (5)", 5, CY_EPROTO, B(0xB0, 0x04, 0x00, 0x01, 0x00, 0x02)},
    {"DISCONNECT with a body (3.1.1)", 4, CY_EPROTO, B(0xE0, 0x01, 0x00)},
    {"DISCONNECT reason 0x01", 5, CY_EPROTO, B(0xE0, 0x01, 0x01)},
    {"DISCONNECT topic alias", 5, CY_EPROTO, B(0xE0, 0x05, 0x00, 0x03, 0x23, 0x00, 0x01)},
    {"DISCONNECT properties past the end", 5, CY_EPROTO, B(0xE0, 0x03, 0x00, 0x05, 0x11)},
    {"DISCONNECT flags 1", 5, CY_EPROTO, B(0xE1, 0x00)},
    {"AUTH in 3.1.1", 4, CY_EPROTO, B(0xF0, 0x00)},
    {"AUTH reason 0x01", 5, CY_EPROTO, B(0xF0, 0x01, 0x01)},
    {"AUTH session expiry", 5, CY_EPROTO, B(0xF0, 0x07, 0x18, 0x05, 0x11, 0x00, 0x00, 0x00, 0x01)},
};

static void test_cy_mqtt_decode_malformed(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const bad_case *c = &bad[i];
        /* Exactly the packet's bytes, so a read past them is an ASan error. */
        uint8_t *buf = malloc(c->len);
        assert_non_null(buf);
        memcpy(buf, c->b, c->len);
        cy_mqtt_packet p;
        size_t used = 0;
        int rc = cy_mqtt_decode(buf, c->len, c->version, &p, &used);
        if (rc != c->err)
            fail_msg("%s: got %d (%s), want %d", c->name, rc, cy_strerror(rc), c->err);
        free(buf);
    }
}

static void test_cy_mqtt_decode_bad_version(void **state)
{
    (void)state;
    static const uint8_t b[] = {0x10, 0x0C, 0x00, 0x04, 'M',  'Q',  'T',
                                'T',  0x07, 0x02, 0x00, 0x3C, 0x00, 0x00};
    cy_mqtt_packet p;
    size_t used = 0;
    assert_int_equal(cy_mqtt_decode(b, sizeof(b), 0, &p, &used), CY_ENOTSUP);
    assert_int_equal(p.type, CY_MQTT_CONNECT);
    assert_int_equal(p.u.connect.version, 7);
    assert_int_equal(used, sizeof(b));
    /* Truncated, it is still "need more". */
    assert_int_equal(cy_mqtt_decode(b, sizeof(b) - 1, 0, &p, &used), CY_EAGAIN);
}

static void test_cy_mqtt_frame_msgsize(void **state)
{
    (void)state;
    uint8_t b[10] = {0x30, 0x08, 0x00, 0x01, 't'};
    size_t n = 0;
    assert_int_equal(cy_mqtt_frame(b, sizeof(b), 10, &n), 0);
    assert_int_equal(n, 10);
    assert_int_equal(cy_mqtt_frame(b, sizeof(b), 9, &n), CY_EMSGSIZE);
    assert_int_equal(n, 10);
    /* Known from the fixed header alone, before the body arrives. */
    n = 0;
    assert_int_equal(cy_mqtt_frame(b, 2, 9, &n), CY_EMSGSIZE);
    assert_int_equal(n, 10);
    /* A huge announced length. */
    static const uint8_t huge[] = {0x30, 0xFF, 0xFF, 0xFF, 0x7F};
    assert_int_equal(cy_mqtt_frame(huge, sizeof(huge), 1 << 20, &n), CY_EMSGSIZE);
    assert_int_equal(n, 5 + 268435455u);
    assert_int_equal(cy_mqtt_frame(huge, sizeof(huge), 0, &n), CY_EAGAIN);
    assert_int_equal(n, 5 + 268435455u);
    /* Fixed header incomplete or too long. */
    assert_int_equal(cy_mqtt_frame(b, 0, 0, &n), CY_EAGAIN);
    assert_int_equal(cy_mqtt_frame(b, 1, 0, &n), CY_EAGAIN);
    assert_int_equal(cy_mqtt_frame(huge, 4, 0, &n), CY_EAGAIN);
    static const uint8_t five[] = {0x30, 0xFF, 0xFF, 0xFF, 0xFF};
    assert_int_equal(cy_mqtt_frame(five, sizeof(five), 0, &n), CY_EPROTO);
}

/* ---- variable byte integers ---- */

static void test_cy_mqtt_varint_boundaries(void **state)
{
    (void)state;
    static const struct {
        uint32_t v;
        int n;
        uint8_t b[4];
    } t[] = {
        {0, 1, {0x00}},
        {127, 1, {0x7F}},
        {128, 2, {0x80, 0x01}},
        {16383, 2, {0xFF, 0x7F}},
        {16384, 3, {0x80, 0x80, 0x01}},
        {2097151, 3, {0xFF, 0xFF, 0x7F}},
        {2097152, 4, {0x80, 0x80, 0x80, 0x01}},
        {268435455, 4, {0xFF, 0xFF, 0xFF, 0x7F}},
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        uint8_t out[4];
        assert_int_equal(cy_mqtt_varint_encode(out, t[i].v), t[i].n);
        assert_memory_equal(out, t[i].b, (size_t)t[i].n);
        uint32_t v = 1;
        size_t used = 0;
        assert_int_equal(cy_mqtt_varint_decode(t[i].b, (size_t)t[i].n, &v, &used), 0);
        assert_int_equal(v, t[i].v);
        assert_int_equal(used, t[i].n);
        for (int k = 0; k < t[i].n; k++)
            assert_int_equal(cy_mqtt_varint_decode(t[i].b, (size_t)k, &v, &used), CY_EAGAIN);
    }
}

static void test_cy_mqtt_varint_malformed(void **state)
{
    (void)state;
    uint32_t v;
    size_t used;
    static const uint8_t five[] = {0x80, 0x80, 0x80, 0x80, 0x01};
    assert_int_equal(cy_mqtt_varint_decode(five, 5, &v, &used), CY_EPROTO);
    assert_int_equal(cy_mqtt_varint_decode(five, 4, &v, &used), CY_EPROTO);
    static const uint8_t z2[] = {0x80, 0x00};
    assert_int_equal(cy_mqtt_varint_decode(z2, 2, &v, &used), CY_EPROTO);
    static const uint8_t z4[] = {0xFF, 0xFF, 0x80, 0x00};
    assert_int_equal(cy_mqtt_varint_decode(z4, 4, &v, &used), CY_EPROTO);
}

/* ---- UTF-8 ---- */

static void test_cy_mqtt_utf8_valid_table(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        size_t len;
        bool ok;
    } t[] = {
#define U(lit, ok) {lit, sizeof(lit) - 1, ok}
        U("", true),
        U("abc", true),
        U("\x01\x1F\x7F", true), /* control characters: SHOULD NOT, not MUST NOT */
        U("\xC2\x80", true),
        U("\xC3\xA9", true),
        U("\xDF\xBF", true),
        U("\xE0\xA0\x80", true),
        U("\xE2\x82\xAC", true),
        U("\xED\x9F\xBF", true), /* U+D7FF, just below the surrogates */
        U("\xEE\x80\x80", true), /* U+E000, just above */
        U("\xEF\xBB\xBF", true), /* U+FEFF is kept, not skipped */
        U("\xEF\xBF\xBF", true), /* U+FFFF, a noncharacter: allowed */
        U("\xF0\x90\x80\x80", true),
        U("\xF0\x9D\x84\x9E", true),
        U("\xF4\x8F\xBF\xBF", true), /* U+10FFFF */
        U("0123456789abcdef\xC3\xA9xyz0123456789", true),
        U("\x00", false),
        U("ab\x00", false),
        U("0123456789\x00xyz", false),
        U("\x80", false),
        U("\xBF", false),
        U("\xC0\x80", false), /* overlong U+0000 */
        U("\xC1\xBF", false),
        U("\xC3", false),
        U("\xC3\x28", false),
        U("\xE0\x80\x80", false),
        U("\xE0\x9F\xBF", false),
        U("\xE2\x82", false),
        U("\xE2\x28\xAC", false),
        U("\xED\xA0\x80", false), /* U+D800 */
        U("\xED\xBF\xBF", false), /* U+DFFF */
        U("\xF0\x80\x80\x80", false),
        U("\xF0\x8F\xBF\xBF", false),
        U("\xF0\x9D\x84", false),
        U("\xF4\x90\x80\x80", false), /* U+110000 */
        U("\xF5\x80\x80\x80", false),
        U("\xF8\x88\x80\x80\x80", false),
        U("\xFE", false),
        U("\xFF", false),
        U("0123456789abcdef\xFF", false),
#undef U
    };
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        /* A heap copy of the exact length, so ASan sees any overread. */
        char *s = malloc(t[i].len ? t[i].len : 1);
        assert_non_null(s);
        memcpy(s, t[i].s, t[i].len);
        if (cy_mqtt_utf8_valid(s, t[i].len) != t[i].ok)
            fail_msg("case %zu: want %s", i, t[i].ok ? "valid" : "invalid");
        free(s);
    }
    assert_true(cy_mqtt_utf8_valid(NULL, 0));
}

/* ---- walkers and helpers ---- */

static void test_cy_mqtt_sub_next_versions(void **state)
{
    (void)state;
    /* A v5 list decoded, walked in v5: options come out; walked as 3.1.1
     * (the options bits beyond QoS do not exist there): zero. */
    static const uint8_t b[] = {0x82, 0x0D, 0x00, 0x01, 0x00, 0x00, 0x01, 'a',
                                0x2D, 0x00, 0x03, 'b',  '/',  'c',  0x00};
    cy_mqtt_packet p;
    size_t used, pos = 0;
    assert_int_equal(cy_mqtt_decode(b, sizeof(b), CY_MQTT_V5, &p, &used), 0);
    assert_int_equal(p.u.subscribe.count, 2);
    cy_mqtt_sub_entry e;
    assert_int_equal(cy_mqtt_sub_next(&p.u.subscribe, CY_MQTT_V5, &pos, &e), 1);
    assert_int_equal(e.qos, 1);
    assert_true(e.no_local);
    assert_true(e.retain_as_published);
    assert_int_equal(e.retain_handling, 2);
    assert_int_equal(cy_mqtt_sub_next(&p.u.subscribe, CY_MQTT_V5, &pos, &e), 1);
    assert_str_eq(e.filter, S("b/c"));
    assert_int_equal(e.qos, 0);
    assert_int_equal(cy_mqtt_sub_next(&p.u.subscribe, CY_MQTT_V5, &pos, &e), 0);
    pos = 0;
    assert_int_equal(cy_mqtt_sub_next(&p.u.subscribe, CY_MQTT_V311, &pos, &e), 1);
    assert_int_equal(e.qos, 1);
    assert_false(e.no_local);
    assert_int_equal(e.retain_handling, 0);
}

static void test_cy_mqtt_props_next_user_order(void **state)
{
    (void)state;
    cy_mqtt_props p;
    memset(&p, 0, sizeof(p));
    p.raw = USERS;
    p.raw_len = sizeof(USERS);
    size_t pos = 0;
    cy_str k, v;
    assert_int_equal(cy_mqtt_props_next_user(&p, &pos, &k, &v), 1);
    assert_str_eq(k, S("key"));
    assert_str_eq(v, S("value"));
    assert_int_equal(cy_mqtt_props_next_user(&p, &pos, &k, &v), 1);
    assert_str_eq(k, S("\xC3\xA9"));
    assert_int_equal(v.len, 0);
    assert_int_equal(cy_mqtt_props_next_user(&p, &pos, &k, &v), 0);
    memset(&p, 0, sizeof(p));
    pos = 0;
    assert_int_equal(cy_mqtt_props_next_user(&p, &pos, &k, &v), 0);
}

static void test_cy_mqtt_props_encode_block(void **state)
{
    (void)state;
    cy_mqtt_props p;
    memset(&p, 0, sizeof(p));
    cy_buf b;
    cy_buf_init(&b);
    assert_int_equal(cy_mqtt_props_size(&p), 0);
    assert_int_equal(cy_mqtt_props_encode(&b, &p), 0);
    assert_int_equal(cy_buf_size(&b), 1);
    assert_int_equal(cy_buf_head(&b)[0], 0);
    cy_buf_reset(&b);
    /* Ascending id order, whatever order fields are set in. */
    p.present = CY_PBIT(CY_PROP_TOPIC_ALIAS) | CY_PBIT(CY_PROP_PAYLOAD_FORMAT) |
                CY_PBIT(CY_PROP_SUBSCRIPTION_ID);
    p.topic_alias = 0x0102;
    p.payload_format = 1;
    p.n_sub_ids = 1;
    p.sub_ids[0] = 300;
    static const uint8_t want[] = {0x08, 0x01, 0x01, 0x23, 0x01, 0x02, 0x0B, 0xAC, 0x02};
    assert_int_equal(cy_mqtt_props_size(&p), 8);
    assert_int_equal(cy_mqtt_props_encode(&b, &p), 0);
    assert_int_equal(cy_buf_size(&b), sizeof(want));
    assert_memory_equal(cy_buf_head(&b), want, sizeof(want));
    cy_buf_fini(&b);
}

static void test_cy_mqtt_type_name_all(void **state)
{
    (void)state;
    assert_string_equal(cy_mqtt_type_name(CY_MQTT_PUBLISH), "PUBLISH");
    assert_string_equal(cy_mqtt_type_name(CY_MQTT_AUTH), "AUTH");
    assert_string_equal(cy_mqtt_type_name(CY_MQTT_UNSUBSCRIBE), "UNSUBSCRIBE");
    assert_string_equal(cy_mqtt_type_name(0), "?");
    assert_string_equal(cy_mqtt_type_name(16), "?");
}

/* ---- encoder errors ---- */

/* A buffer with bytes in it and a consumed prefix, and a snapshot of what
 * it holds. */
typedef struct snap {
    size_t size;
    uint8_t bytes[256];
} snap;

/* Full to its capacity (256, the first allocation) but for the one consumed
 * byte, so encoding any packet compacts it and then has to grow it. */
static void fill(cy_buf *b, snap *s)
{
    cy_buf_init(b);
    for (int i = 0; i < 256; i++)
        assert_int_equal(cy_buf_put_u8(b, (uint8_t)(i * 13)), 0);
    assert_int_equal(b->cap, 256);
    cy_buf_consume(b, 1);
    s->size = cy_buf_size(b);
    memcpy(s->bytes, cy_buf_head(b), s->size);
}

static void assert_unchanged(const cy_buf *b, const snap *s)
{
    assert_int_equal(cy_buf_size(b), s->size);
    assert_memory_equal(cy_buf_head(b), s->bytes, s->size);
}

static void test_cy_mqtt_encode_enomem(void **state)
{
    (void)state;
    static uint8_t payload[5000];
    cy_mqtt_sub_entry e = {S("x/#"), 1, false, false, 0};
    cy_str f = S("x/#");
    static const uint8_t reasons[] = {0};
    cy_mqtt_packet ps[16];
    size_t n = 0;
    ps[n] = pkt(CY_MQTT_CONNECT);
    ps[n].u.connect.version = CY_MQTT_V5;
    ps[n].u.connect.client_id = (cy_str){(const char *)payload, 1000};
    memset(payload, 'a', sizeof(payload));
    n++;
    ps[n] = pkt(CY_MQTT_CONNACK);
    ps[n++].u.connack.props.reason_string = (cy_str){(const char *)payload, 1000};
    ps[n - 1].u.connack.props.present = CY_PBIT(CY_PROP_REASON_STRING);
    ps[n] = pkt(CY_MQTT_PUBLISH);
    ps[n].u.publish.topic = S("t");
    ps[n].u.publish.payload = payload;
    ps[n++].u.publish.payload_len = sizeof(payload);
    ps[n] = pkt(CY_MQTT_PUBACK);
    ps[n++].u.ack.packet_id = 1;
    ps[n] = pkt(CY_MQTT_SUBSCRIBE);
    ps[n].u.subscribe.packet_id = 2;
    ps[n].u.subscribe.entries = &e;
    ps[n++].u.subscribe.count = 1;
    ps[n] = pkt(CY_MQTT_UNSUBSCRIBE);
    ps[n].u.subscribe.packet_id = 3;
    ps[n].u.subscribe.filters = &f;
    ps[n++].u.subscribe.count = 1;
    ps[n] = pkt(CY_MQTT_SUBACK);
    ps[n].u.suback.packet_id = 4;
    ps[n].u.suback.reasons = reasons;
    ps[n++].u.suback.count = 1;
    ps[n++] = pkt(CY_MQTT_PINGREQ);
    ps[n++] = pkt(CY_MQTT_DISCONNECT);
    ps[n++] = pkt(CY_MQTT_AUTH);

    for (size_t i = 0; i < n; i++) {
        for (int v = 4; v <= 5; v++) {
            if (ps[i].type == CY_MQTT_AUTH && v == 4) continue;
            /* An empty buffer: the first allocation fails. */
            cy_buf b;
            cy_buf_init(&b);
            cy_alloc_fail_after(0);
            assert_int_equal(cy_mqtt_encode(&b, (uint8_t)v, &ps[i]), CY_ENOMEM);
            cy_alloc_fail_after(-1);
            assert_int_equal(cy_buf_size(&b), 0);
            assert_null(b.data);
            /* A buffer with content that has to grow. */
            snap s;
            fill(&b, &s);
            cy_alloc_fail_after(0);
            assert_int_equal(cy_mqtt_encode(&b, (uint8_t)v, &ps[i]), CY_ENOMEM);
            cy_alloc_fail_after(-1);
            assert_unchanged(&b, &s);
            /* And then it works, after the old bytes. */
            assert_int_equal(cy_mqtt_encode(&b, (uint8_t)v, &ps[i]), 0);
            assert_true(cy_buf_size(&b) > s.size);
            assert_memory_equal(cy_buf_head(&b), s.bytes, s.size);
            cy_mqtt_packet g;
            size_t used;
            assert_int_equal(cy_mqtt_decode(cy_buf_head(&b) + s.size, cy_buf_size(&b) - s.size,
                                            (uint8_t)v, &g, &used),
                             0);
            assert_int_equal(used, cy_buf_size(&b) - s.size);
            cy_buf_fini(&b);
        }
    }
    /* props_encode too. */
    cy_buf b;
    cy_buf_init(&b);
    cy_alloc_fail_after(0);
    assert_int_equal(cy_mqtt_props_encode(&b, &ps[1].u.connack.props), CY_ENOMEM);
    cy_alloc_fail_after(-1);
    assert_int_equal(cy_buf_size(&b), 0);
    cy_buf_fini(&b);
}

static void test_cy_mqtt_encode_invalid(void **state)
{
    (void)state;
    static char big[70000];
    cy_str huge = {big, 65536};
    cy_buf b;
    snap s;
    fill(&b, &s);

    cy_mqtt_packet p = pkt(CY_MQTT_PUBLISH);
    p.u.publish.topic = S("t");
    p.u.publish.qos = 3;
    assert_int_equal(cy_mqtt_encode(&b, 4, &p), CY_EINVAL);
    p.u.publish.qos = 0;
    p.u.publish.topic = huge;
    assert_int_equal(cy_mqtt_encode(&b, 4, &p), CY_EINVAL);
    p.u.publish.topic = S("t");
    p.u.publish.payload = (const uint8_t *)big;
    p.u.publish.payload_len = CY_MQTT_MAX_REMAINING; /* never read: too big with the topic */
    assert_int_equal(cy_mqtt_encode(&b, 4, &p), CY_EMSGSIZE);
    p.u.publish.payload_len = (size_t)CY_MQTT_MAX_REMAINING + 1;
    assert_int_equal(cy_mqtt_encode(&b, 5, &p), CY_EMSGSIZE);
    p.u.publish.payload_len = 0;
    p.u.publish.props.present = CY_PBIT(CY_PROP_SUBSCRIPTION_ID);
    p.u.publish.props.n_sub_ids = 1;
    p.u.publish.props.sub_ids[0] = 0;
    assert_int_equal(cy_mqtt_encode(&b, 5, &p), CY_EINVAL);
    p.u.publish.props.sub_ids[0] = 268435456;
    assert_int_equal(cy_mqtt_encode(&b, 5, &p), CY_EINVAL);
    p.u.publish.props.n_sub_ids = CY_MQTT_MAX_SUB_IDS + 1;
    assert_int_equal(cy_mqtt_encode(&b, 5, &p), CY_EINVAL);
    p.u.publish.props.present = CY_PBIT(CY_PROP_CONTENT_TYPE);
    p.u.publish.props.content_type = huge;
    assert_int_equal(cy_mqtt_encode(&b, 5, &p), CY_EINVAL);
    assert_int_equal(cy_mqtt_props_encode(&b, &p.u.publish.props), CY_EINVAL);
    assert_int_equal(cy_mqtt_encode(&b, 4, &p), 0); /* properties ignored in 3.1.1 */
    b.len = b.off + s.size;                         /* drop it again */

    p = pkt(CY_MQTT_CONNECT);
    p.u.connect.version = 6;
    assert_int_equal(cy_mqtt_encode(&b, 5, &p), CY_EINVAL);
    p.u.connect.version = 4;
    p.u.connect.client_id = huge;
    assert_int_equal(cy_mqtt_encode(&b, 4, &p), CY_EINVAL);
    p.u.connect.client_id = S("c");
    p.u.connect.will = true;
    p.u.connect.will_qos = 3;
    p.u.connect.will_topic = S("w");
    assert_int_equal(cy_mqtt_encode(&b, 4, &p), CY_EINVAL);
    p.u.connect.will_qos = 0;
    p.u.connect.will_payload = huge;
    assert_int_equal(cy_mqtt_encode(&b, 4, &p), CY_EINVAL);
    p.u.connect.will_payload = S("");
    p.u.connect.has_username = true;
    p.u.connect.username = huge;
    assert_int_equal(cy_mqtt_encode(&b, 4, &p), CY_EINVAL);
    p.u.connect.username = S("u");
    p.u.connect.has_password = true;
    p.u.connect.password = huge;
    assert_int_equal(cy_mqtt_encode(&b, 4, &p), CY_EINVAL);

    cy_mqtt_sub_entry e = {S("a"), 3, false, false, 0};
    p = pkt(CY_MQTT_SUBSCRIBE);
    p.u.subscribe.entries = &e;
    assert_int_equal(cy_mqtt_encode(&b, 4, &p), CY_EINVAL); /* count 0 */
    p.u.subscribe.count = 1;
    assert_int_equal(cy_mqtt_encode(&b, 4, &p), CY_EINVAL); /* QoS 3 */
    e.qos = 0;
    e.retain_handling = 3;
    assert_int_equal(cy_mqtt_encode(&b, 5, &p), CY_EINVAL);
    e.retain_handling = 0;
    e.filter = huge;
    assert_int_equal(cy_mqtt_encode(&b, 5, &p), CY_EINVAL);
    p.type = CY_MQTT_UNSUBSCRIBE; /* no filters */
    assert_int_equal(cy_mqtt_encode(&b, 5, &p), CY_EINVAL);

    p = pkt(CY_MQTT_SUBACK);
    assert_int_equal(cy_mqtt_encode(&b, 4, &p), CY_EINVAL); /* no reasons */
    p.type = CY_MQTT_UNSUBACK;
    assert_int_equal(cy_mqtt_encode(&b, 5, &p), CY_EINVAL);
    p = pkt(CY_MQTT_AUTH);
    assert_int_equal(cy_mqtt_encode(&b, 4, &p), CY_EINVAL);
    p = pkt(0);
    assert_int_equal(cy_mqtt_encode(&b, 4, &p), CY_EINVAL);
    p = pkt(16);
    assert_int_equal(cy_mqtt_encode(&b, 5, &p), CY_EINVAL);
    assert_unchanged(&b, &s);
    cy_buf_fini(&b);
}


/* A topic alias of 0 is well-formed; the broker refuses it with 0x94. */
static void test_cy_mqtt_decode_topic_alias_zero_is_wellformed(void **state)
{
    (void)state;
    static const uint8_t in[] = {0x30, 0x07, 0x00, 0x01, 'a', 0x03, 0x23, 0x00, 0x00};
    cy_mqtt_packet p;
    size_t used = 0;
    assert_int_equal(cy_mqtt_decode(in, sizeof(in), CY_MQTT_V5, &p, &used), 0);
    assert_int_equal(used, sizeof(in));
    assert_true(p.u.publish.props.present & CY_PBIT(CY_PROP_TOPIC_ALIAS));
    assert_int_equal(p.u.publish.props.topic_alias, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cy_mqtt_decode_topic_alias_zero_is_wellformed),
        cmocka_unit_test(test_cy_mqtt_encode_connect_v311),
        cmocka_unit_test(test_cy_mqtt_encode_connect_v31),
        cmocka_unit_test(test_cy_mqtt_encode_connect_v5),
        cmocka_unit_test(test_cy_mqtt_encode_connack),
        cmocka_unit_test(test_cy_mqtt_encode_publish_v311),
        cmocka_unit_test(test_cy_mqtt_encode_publish_v5),
        cmocka_unit_test(test_cy_mqtt_encode_publish_extra),
        cmocka_unit_test(test_cy_mqtt_encode_acks),
        cmocka_unit_test(test_cy_mqtt_encode_subscribe),
        cmocka_unit_test(test_cy_mqtt_encode_unsubscribe),
        cmocka_unit_test(test_cy_mqtt_encode_suback),
        cmocka_unit_test(test_cy_mqtt_encode_unsuback),
        cmocka_unit_test(test_cy_mqtt_encode_ping_disconnect_auth),
        cmocka_unit_test(test_cy_mqtt_decode_malformed),
        cmocka_unit_test(test_cy_mqtt_decode_bad_version),
        cmocka_unit_test(test_cy_mqtt_frame_msgsize),
        cmocka_unit_test(test_cy_mqtt_varint_boundaries),
        cmocka_unit_test(test_cy_mqtt_varint_malformed),
        cmocka_unit_test(test_cy_mqtt_utf8_valid_table),
        cmocka_unit_test(test_cy_mqtt_sub_next_versions),
        cmocka_unit_test(test_cy_mqtt_props_next_user_order),
        cmocka_unit_test(test_cy_mqtt_props_encode_block),
        cmocka_unit_test(test_cy_mqtt_type_name_all),
        cmocka_unit_test(test_cy_mqtt_encode_enomem),
        cmocka_unit_test(test_cy_mqtt_encode_invalid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
