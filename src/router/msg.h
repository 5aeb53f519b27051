/* msg: one published message, refcounted and immutable once routed.
 *
 * A message is one allocation: the struct, then the topic (NUL-terminated),
 * the payload, and the properties that travel with it unchanged from
 * publisher to subscriber (for MQTT 5: payload format, content type,
 * response topic, correlation data, user properties), kept already encoded
 * so a fan-out to a thousand subscribers copies bytes instead of
 * re-encoding them. The router treats them as opaque bytes. The expiry
 * interval is kept as an absolute deadline instead, since each delivery
 * must carry what remains of it.
 *
 * Immutability: whoever builds a message sets its fields, and the router
 * sets what only it knows (origin, a retained stamp, an event number:
 * router.h) before the first delivery. From the first delivery on it is
 * shared by every session queue, the retained tree, the event buffer and
 * the outbox, and nothing writes to it again.
 *
 * Ownership: cy_msg_new returns one reference; cy_msg_ref adds one and
 * cy_msg_unref drops one (freeing at zero; safe on NULL).
 * Errors: NULL from cy_msg_new when out of memory.
 * Thread: a message belongs to one shard's loop thread (refcounts are not
 * atomic).
 */
#ifndef CY_MSG_H
#define CY_MSG_H

#include "store/store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct cy_msg {
    uint32_t refs;
    uint8_t qos;         /* as published */
    bool retain;         /* as published */
    uint8_t origin;      /* the shard that took it from its publisher */
    uint16_t topic_len;
    uint32_t payload_len;
    uint32_t props_len;  /* pass-through properties, encoded */
    int64_t expiry_at;   /* wall ms; 0 = never */
    int64_t retain_ts;   /* retained: last-writer-wins stamp, wall ms << 8 | origin shard */
    uint64_t event_seq;  /* an event (API streams): its origin shard's sequence number; 0 = none */
    char *topic;         /* NUL-terminated; in the same allocation */
    uint8_t *payload;    /* in the same allocation */
    uint8_t *props;      /* in the same allocation */
} cy_msg;

/* A new message (one reference) with copies of topic, payload and props;
 * origin, retain_ts and event_seq start at 0. */
cy_msg *cy_msg_new(const char *topic, size_t topic_len, const uint8_t *payload, size_t payload_len,
                   const uint8_t *props, size_t props_len, uint8_t qos, bool retain,
                   int64_t expiry_at);
static inline cy_msg *cy_msg_ref(cy_msg *m)
{
    m->refs++;
    return m;
}
void cy_msg_unref(cy_msg *m);
bool cy_msg_expired(const cy_msg *m, int64_t now_wall);
/* The store's view of m (pointers borrowed from m), to queue at qos/retain. */
cy_store_msg cy_msg_to_store(const cy_msg *m, uint8_t qos, bool retain);
/* A message read back from the store (a queued delivery or a retained
 * message), with its retained stamp. NULL: out of memory. */
cy_msg *cy_msg_from_store(const cy_store_msg *sm);

#endif
