/* cy_reason: why a layer refused work, as the MQTT 5 reason codes.
 *
 * Layers below the transports (router, cluster, device) refuse with these
 * values; each transport maps them to its own wire (MQTT 5 sends them as
 * they are, MQTT 3.1.1 disconnects or uses its return codes, CoAP maps
 * them to response codes, the HTTP API to statuses). Codes >= 0x80 are
 * refusals; 0 is success.
 */
#ifndef CY_REASON_H
#define CY_REASON_H

enum {
    CY_REASON_NOT_AUTHORIZED = 0x87,  /* outside what this client may do */
    CY_REASON_TAKEN_OVER = 0x8E,      /* the session was taken by another link of its device */
    CY_REASON_TOPIC_INVALID = 0x90,   /* a topic name it may not use (too long) */
    CY_REASON_QUOTA_EXCEEDED = 0x97,  /* a limit, a full outbox, a full disk */
    CY_REASON_PAYLOAD_INVALID = 0x99, /* a payload that breaks its topic's format */
};

#endif
