/* msg: the published message, immutable and refcounted.
 *
 * A message is one allocation: the struct, then the topic (NUL-terminated),
 * the payload, and the MQTT 5 properties that travel with it unchanged from
 * publisher to subscriber (payload format, content type, response topic,
 * correlation data, user properties), kept already encoded so a fan-out to
 * a thousand MQTT 5 subscribers copies bytes instead of re-encoding them.
 * The message expiry interval is kept as an absolute deadline instead, since
 * each delivery must carry what remains of it.
 */
#include "broker/broker_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"

#include <string.h>

cy_msg *cy_msg_new(const char *topic, size_t topic_len, const uint8_t *payload, size_t payload_len,
                   const uint8_t *props, size_t props_len, uint8_t qos, bool retain,
                   int64_t expiry_at)
{
    cy_msg *m = cy_malloc(sizeof(*m) + topic_len + 1 + payload_len + props_len);
    if (!m) return NULL;
    m->refs = 1;
    m->qos = qos;
    m->retain = retain;
    m->topic_len = (uint16_t)topic_len;
    m->payload_len = (uint32_t)payload_len;
    m->props_len = (uint32_t)props_len;
    m->expiry_at = expiry_at;
    m->retain_ts = 0;
    m->topic = (char *)(m + 1);
    memcpy(m->topic, topic, topic_len);
    m->topic[topic_len] = '\0';
    m->payload = (uint8_t *)m->topic + topic_len + 1;
    if (payload_len) memcpy(m->payload, payload, payload_len);
    m->props = m->payload + payload_len;
    if (props_len) memcpy(m->props, props, props_len);
    return m;
}

void cy_msg_unref(cy_msg *m)
{
    if (m && --m->refs == 0) cy_free(m);
}

#define PASS_THROUGH                                                                               \
    (CY_PBIT(CY_PROP_PAYLOAD_FORMAT) | CY_PBIT(CY_PROP_CONTENT_TYPE) |                             \
     CY_PBIT(CY_PROP_RESPONSE_TOPIC) | CY_PBIT(CY_PROP_CORRELATION_DATA))

cy_msg *cy_msg_from_publish(const cy_str *topic, const uint8_t *payload, size_t payload_len,
                            const cy_mqtt_props *props, uint8_t qos, bool retain,
                            uint8_t version, cy_buf *scratch)
{
    int64_t expiry_at = 0;
    const uint8_t *pp = NULL;
    size_t plen = 0;
    if (version == CY_MQTT_V5 && props) {
        if (props->present & CY_PBIT(CY_PROP_MESSAGE_EXPIRY))
            expiry_at = cy_wall_ms() + (int64_t)props->message_expiry * 1000;
        if ((props->present & PASS_THROUGH) || props->n_user) {
            cy_mqtt_props keep;
            memset(&keep, 0, sizeof(keep));
            keep.present = props->present & PASS_THROUGH;
            keep.payload_format = props->payload_format;
            keep.content_type = props->content_type;
            keep.response_topic = props->response_topic;
            keep.correlation_data = props->correlation_data;
            if (props->n_user) {
                keep.user_src = props->raw;
                keep.user_src_len = props->raw_len;
            }
            cy_buf_reset(scratch);
            size_t before = cy_buf_size(scratch);
            if (cy_mqtt_props_encode(scratch, &keep)) return NULL;
            /* skip the length prefix: messages keep the bare property list */
            uint32_t v;
            size_t used;
            if (cy_mqtt_varint_decode(cy_buf_head(scratch) + before, cy_buf_size(scratch) - before,
                                      &v, &used))
                return NULL;
            pp = cy_buf_head(scratch) + before + used;
            plen = v;
        }
    }
    return cy_msg_new(topic->p, topic->len, payload, payload_len, pp, plen, qos, retain,
                      expiry_at);
}

cy_store_msg cy_msg_to_store(const cy_msg *m, uint8_t qos, bool retain)
{
    cy_store_msg sm = {
        .topic = m->topic,
        .topic_len = m->topic_len,
        .payload = m->payload,
        .payload_len = m->payload_len,
        .props = m->props,
        .props_len = m->props_len,
        .qos = qos,
        .retain = retain,
        .expiry_at = m->expiry_at,
        .ts = m->retain_ts,
    };
    return sm;
}

bool cy_msg_expired(const cy_msg *m, int64_t now_wall)
{
    return m->expiry_at && m->expiry_at <= now_wall;
}
