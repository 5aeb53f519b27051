/* session: a device's session and the outbound message flow.
 *
 * The session outlives its link when it is persistent (expiry > 0): its
 * row, subscriptions and deliveries are mirrored into the store as they
 * change, and the store commits once per loop pass, before any
 * acknowledgement is flushed.
 *
 * A session's QoS 1/2 deliveries form one list in the order they were
 * routed: a prefix that is in flight (sent, has an id, waits for its
 * acknowledgement) and the rest, queued, starting at next_send.
 * cy_session_pump moves deliveries from queued to in flight while the
 * window allows: min(max_inflight, the link's own window). Acks may arrive
 * out of order; a delivery is unlinked wherever it is. QoS 0 messages are
 * never queued: they go straight to a connected device (dropped, and
 * counted, while its link is congested) and are not kept for an offline one.
 *
 * With an ACL (acl_file) a message is checked for read access as it goes
 * to the link (Mosquitto does the same), unless the session's every
 * subscription is covered by a read rule under the rules in use and the
 * ACL has no deny rule (then every message of those subscriptions is
 * readable); a refused one is dropped and counted in acl_file_denied.
 *
 * Ownership: the device layer (device.h) owns every session; a session owns
 * its subscriptions (also entered in the router with its cy_subscriber),
 * its cold block (below) and in it its deliveries (each holds a reference
 * on its message) and inbound QoS 2 ids, its will and its username. It
 * borrows its link.
 * Errors: CY_ENOMEM.
 * Thread: the shard's loop thread.
 */
#ifndef CY_SESSION_H
#define CY_SESSION_H

#include "device/device.h"
#include "device/link.h"
#include "router/router.h"

#include <stdbool.h>
#include <stdint.h>

#define CY_ROW_PENDING (-1)

typedef struct cy_delivery {
    struct cy_delivery *prev, *next;
    cy_msg *msg;        /* reference */
    int64_t store_id;   /* row in the store, 0 when the session is not persistent
                         * (CY_ROW_PENDING inside cy_session_deliver: written
                         * once, sent or queued, in the same call) */
    uint16_t packet_id; /* 0 while queued */
    uint8_t qos;        /* effective: min(published, subscribed) */
    uint8_t state;      /* CY_MSG_QUEUED, CY_MSG_SENT, CY_MSG_RELEASED */
    bool retain;        /* retain flag to send */
    uint8_t n_sub_ids;
    uint32_t sub_ids[]; /* n_sub_ids */
} cy_delivery;

typedef struct cy_sub {
    char *filter; /* owned, NUL-terminated */
    uint16_t len;
    uint8_t opts; /* CY_SUBOPT_* */
    uint32_t sub_id;
} cy_sub;

/* What a clean, idle session does not use: its QoS 1/2 flow, the store of
 * its inbound QoS 2 ids and its place in the offline list. Allocated on
 * first use (a delivery queued, an inbound QoS 2 id, a persistent session
 * going offline) and freed as soon as all of it is empty again, so a
 * connected device with nothing in flight carries none of it (s->cold is
 * NULL): 68 bytes of fields that every connected device's session carried
 * (the block is 72, an 80-byte malloc chunk, when it is there). */
typedef struct cy_session_cold {
    /* outbound QoS 1/2: in flight ones first (sent order), then queued */
    cy_delivery *head, *tail;
    cy_delivery *next_send; /* first queued delivery, or NULL */
    /* inbound QoS 2 ids received and not yet released (s->n_inq2 of them) */
    uint16_t *inq2;
    int64_t offline_since; /* mono ms; 0 unless in the device layer's offline list */
    struct cy_session *offline_next, *offline_prev; /* the device layer's offline list */
    uint32_t n_inflight;
    uint32_t n_queued;
    uint32_t cap_inq2;
} cy_session_cold;

/* Fields are ordered by size so the struct has no holes: one of these lives
 * for every connected device, so what it does not need while connected and
 * idle is in its cold block. The client id is stored inline, at the end. */
struct cy_session {
    cy_link *link;     /* NULL while offline */
    cy_subscriber sub; /* as the router sees it (kind "session") */
    /* subscriptions */
    cy_sub *subs;
    /* will message, armed while connected, pending after an abnormal close */
    cy_msg *will;
    /* the username its last connection logged in with, for the ACL: owned,
     * or client_id itself (an isolated device), or NULL (anonymous); owned
     * means one reference to its shared copy (core/cy_intern.h) */
    char *username;
    int64_t will_at;          /* mono ms when a pending will is due; 0 = not pending */
    cy_session_cold *cold;    /* owned; NULL while all of it would be empty */
    struct cy_session *hnext; /* the next in its chain of the sessions map (session_map.c) */
    uint32_t expiry;          /* session expiry interval, s; 0xFFFFFFFF = never */
    uint32_t will_delay;      /* s */
    uint32_t n_subs;          /* in subs (room: session.c, add_sub) */
    uint32_t n_inq2;          /* inbound QoS 2 ids held (in cold->inq2) */
    uint32_t acl_gen;         /* the device layer's acl_gen when every subscription was last
                               * found covered by the ACL; else 0: deliveries checked each */
    uint16_t last_packet_id;
    uint16_t client_id_len;
    uint16_t username_len;
    uint8_t version;   /* protocol version of its last connection */
    bool persistent;   /* expiry > 0: kept in the store */
    bool acl_internal; /* its connection is an internal device's: no ACL */
    char client_id[];  /* NUL-terminated, client_id_len bytes; the key in the sessions map */
};

/* The cold block's fields as a reader sees them: empty while there is
 * none. */
static inline cy_delivery *cy_session_head(const cy_session *s)
{
    return s->cold ? s->cold->head : NULL;
}
static inline cy_delivery *cy_session_next_send(const cy_session *s)
{
    return s->cold ? s->cold->next_send : NULL;
}
static inline uint32_t cy_session_n_inflight(const cy_session *s)
{
    return s->cold ? s->cold->n_inflight : 0;
}
static inline uint32_t cy_session_n_queued(const cy_session *s)
{
    return s->cold ? s->cold->n_queued : 0;
}
/* mono ms since it has been offline (persistent), 0 while it is not */
static inline int64_t cy_session_offline_since(const cy_session *s)
{
    return s->cold ? s->cold->offline_since : 0;
}

/* The session named client_id, or NULL. */
cy_session *cy_session_find(cy_devices *d, const char *client_id, size_t len);
/* How many sessions are held. */
size_t cy_session_count(const cy_devices *d);
cy_session *cy_session_new(cy_devices *d, const char *client_id, size_t len);
/* End the session: drop its subscriptions and queue, delete it from the
 * store, publish a pending will, free it. */
void cy_session_end(cy_devices *d, cy_session *s);
void cy_session_persist(cy_devices *d, cy_session *s);
/* A link takes the session (a new connection or a takeover's): it leaves
 * the offline list; a will waiting for its delay is cancelled. */
void cy_session_attach(cy_devices *d, cy_session *s, cy_link *link);
/* Who s's current connection is, for the ACL (device.h, cy_who): the
 * username it logged in with (copied; NULL: anonymous) and whether it is an
 * internal device. A transport calls it when a link takes the session
 * (after cy_session_attach, before cy_session_resume); s's subscriptions
 * are checked under the ACL in use for this identity. Errors: CY_ENOMEM,
 * CY_EINVAL (a username over 65535 bytes); nothing changed then. */
int cy_session_set_who(cy_devices *d, cy_session *s, const char *username, size_t len,
                       bool internal);
/* s's identity as cy_session_set_who last set it (borrowed from s). */
void cy_session_who(const cy_session *s, cy_who *out);
/* The link went away. abnormal: publish or schedule the will. */
void cy_session_detach(cy_devices *d, cy_session *s, bool abnormal);
/* The session stops being persistent (expiry set to 0): forget its rows. */
void cy_session_forget(cy_devices *d, cy_session *s);
/* Queue (or send now) msg to s at qos with retain flag and sub ids. */
void cy_session_deliver(cy_devices *d, cy_session *s, cy_msg *m, uint8_t qos, bool retain,
                        const uint32_t *sub_ids, uint32_t n_sub_ids);
/* Send queued deliveries while the window allows. */
void cy_session_pump(cy_devices *d, cy_session *s);
/* How many of s's queued deliveries could go to its device now: none
 * while it has no link or its link is not ready, else as many as the
 * window (the smaller of max_inflight and the link's own) leaves room for.
 * cy_session_pump sends exactly these, so it is 0 after a pump: a session
 * whose sendable stays above 0 is work its shard owes (the progress
 * watchdog). Pure, O(1). */
uint32_t cy_session_sendable(const cy_devices *d, const cy_session *s);
/* Resend what was in flight (DUP) after a reconnect, then pump. */
void cy_session_resume(cy_devices *d, cy_session *s);
cy_delivery *cy_session_find_inflight(cy_session *s, uint16_t packet_id);
/* The device acknowledged d (or refused it): the flow of d ends. */
void cy_session_remove_delivery(cy_devices *d, cy_session *s, cy_delivery *dv);
/* QoS 2: the device received d; its release is on the way. */
void cy_session_released(cy_devices *d, cy_session *s, cy_delivery *dv);

/* ---- subscriptions ---- */

cy_sub *cy_session_find_sub(cy_session *s, const char *filter, size_t len);
/* Subscribe s (router, interest, its list, the store): 0, or CY_ENOMEM.
 * *fresh: it is new (not a replacement of the same filter's options). */
int cy_session_subscribe(cy_devices *d, cy_session *s, const char *filter, size_t len, uint8_t opts,
                         uint32_t sub_id, bool *fresh);
/* Errors: CY_ENOENT (s holds no such subscription). */
int cy_session_unsubscribe(cy_devices *d, cy_session *s, const char *filter, size_t len);
/* Deliver the retained messages matching filter, as for a new subscription. */
void cy_session_send_retained(cy_devices *d, cy_session *s, const char *filter, size_t len,
                              uint8_t opts, uint32_t sub_id);

/* ---- inbound QoS 2 ---- */

bool cy_session_has_inq2(const cy_session *s, uint16_t id);
/* Remember id (and store it for a persistent session). */
int cy_session_add_inq2(cy_devices *d, cy_session *s, uint16_t id);
/* Forget id; false if it was not known. */
bool cy_session_del_inq2(cy_devices *d, cy_session *s, uint16_t id);

/* ---- publishing ---- */

/* Route a message s publishes (refusable: before it is acknowledged; see
 * cy_router_publish). Returns 0 or a reason code. */
int cy_session_publish(cy_devices *d, cy_session *s, cy_msg *m, bool refusable);

#endif
