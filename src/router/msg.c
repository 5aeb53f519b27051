/* msg: the published message (msg.h), one allocation per message. */
#include "router/msg.h"

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
    m->origin = 0;
    m->retain_ts = 0;
    m->event_seq = 0;
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

cy_msg *cy_msg_from_store(const cy_store_msg *sm)
{
    cy_msg *m = cy_msg_new(sm->topic, sm->topic_len, sm->payload, sm->payload_len, sm->props,
                           sm->props_len, sm->qos, sm->retain, sm->expiry_at);
    if (m) m->retain_ts = sm->ts;
    return m;
}
