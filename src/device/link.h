/* link: what a device transport gives the device layer.
 *
 * A session (session.h) talks to its device through a cy_link and knows
 * nothing of the wire: an MQTT connection is one link (src/mqtt), a CoAP
 * peer will be another. The transport embeds a cy_link in its connection
 * object and fills ops; the session holds a pointer to it while the device
 * is connected (NULL while offline).
 *
 * Ownership: the transport owns the link; it tells the device layer when
 * the link goes away (cy_session_detach), after which the session never
 * touches it again. Messages passed to send are borrowed for the call.
 * Errors (send): CY_ETIMEDOUT (the message expired: not sent), CY_EMSGSIZE
 * (over what the device accepts: not sent), CY_EPIPE (the link is closing),
 * CY_ENOMEM.
 * Thread: the shard's loop thread.
 */
#ifndef CY_LINK_H
#define CY_LINK_H

#include "router/msg.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct cy_link cy_link;

/* One message to send, as the session decided it. */
typedef struct cy_link_msg {
    const cy_msg *m;
    uint8_t qos;            /* effective QoS */
    bool retain;            /* retain flag to send */
    bool dup;               /* a resend after a reconnect */
    uint16_t id;            /* QoS 1/2: the delivery id (MQTT packet id); 0 for QoS 0 */
    const uint32_t *sub_ids; /* subscription identifiers to report */
    uint32_t n_sub_ids;
} cy_link_msg;

typedef struct cy_link_ops {
    /* Queue one message for the device (written at the end of the pass). */
    int (*send)(cy_link *l, const cy_link_msg *msg);
    /* Resume: the device received QoS 2 message `id` and its release was
     * not yet confirmed: send the release again. */
    int (*send_release)(cy_link *l, uint16_t id);
    /* How many messages the device takes in flight (its own limit, e.g.
     * MQTT 5 Receive Maximum); 0 = no limit of its own. */
    uint32_t (*window)(const cy_link *l);
    /* Is the link up and past login (may it be sent to)? */
    bool (*ready)(const cy_link *l);
    /* Is its output over the high-water mark (QoS 0 is dropped then)? */
    bool (*congested)(const cy_link *l);
    /* Close it; reason: a transport-neutral MQTT 5 reason code (0 = none),
     * why: a log line (NULL = none). The transport calls cy_session_detach. */
    void (*close)(cy_link *l, uint8_t reason, const char *why);
    /* "mqtt3.1.1", "mqtt5", ... */
    const char *(*protocol)(const cy_link *l);
    /* Monotonic ms of the last packet heard from the device. */
    int64_t (*last_heard)(const cy_link *l);
    /* Deliver a function call (verb "call") or variable read ("get") named
     * name with request id rid and argument arg to the device, in the
     * transport's own form (MQTT: a publish on devices/<id>/<verb>/<name>,
     * docs/device-protocol.md). Its answer comes back through
     * cy_device_reply. NULL: the transport cannot carry calls. */
    int (*call)(cy_link *l, const char *verb, const char *name, const char *rid,
                const uint8_t *arg, size_t len);
} cy_link_ops;

struct cy_link {
    const cy_link_ops *ops;
};

#endif
