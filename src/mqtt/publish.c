/* publish: a message from a decoded MQTT PUBLISH or will.
 *
 * MQTT 5 properties that travel with a message unchanged from publisher to
 * subscriber (payload format, content type, response topic, correlation
 * data, user properties) are kept in the message already encoded (msg.h);
 * the message expiry interval becomes an absolute deadline.
 */
#include "mqtt/gateway_int.h"

#include "core/cy_clock.h"

#include <string.h>

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
