/* device: the transport-neutral device layer of one shard.
 *
 * What a device is to cyan whatever carries its bytes (MQTT today, CoAP
 * next; each transport is a cy_link, link.h):
 *   - its session (session.h): subscriptions, the QoS 1/2 messages on their
 *     way to it, inbound QoS 2 ids, its will, kept across reconnects and
 *     (when persistent) across restarts;
 *   - the device convention (docs/device-protocol.md): an isolated device
 *     keeps to "devices/<id>/..." and "events/..."; devices/<id>/describe
 *     lists its functions and variables (retained); devices/<id>/reply is
 *     the answer to a call; every input path admits a publish through one
 *     function, cy_device_admit;
 *   - the operator's ACL (acl.h, setting acl_file), on top of isolation:
 *     publishes (cy_device_admit), subscriptions (cy_device_acl) and each
 *     message delivered to a session (session.c) are checked against it,
 *     as the client's connection named itself (cy_who);
 *   - presence (presence.c): online since, protocol, last heard, last
 *     round trip, kept across restarts; status events (cyan/status) when
 *     a device goes online or offline;
 *   - device calls (calls.c): call a function or read a variable on a
 *     device with a deadline, on whichever shard owns it; the callback runs
 *     exactly once.
 *
 * Ownership: cy_devices_new borrows loop, cfg, store, router, cluster,
 * stats and hists, which must outlive it. It owns every session (freed by
 * cy_devices_free, which publishes nothing), every presence record and the
 * ACL in use.
 * Errors: CY_ENOMEM; MQTT 5 reason codes (>= 0x80) from cy_device_admit.
 * Thread: the shard's loop thread.
 */
#ifndef CY_DEVICE_H
#define CY_DEVICE_H

#include "cluster/cluster.h"
#include "core/cy_config.h"
#include "device/acl.h"
#include "core/cy_limit.h"
#include "core/cy_map.h"
#include "device/link.h"
#include "health/metrics.h"
#include "router/router.h"
#include "store/space.h"
#include "store/store.h"

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#define CY_MAX_CLIENT_ID 256
#define CY_DEVICE_ARG_MAX 1024      /* bytes of a function argument */
#define CY_DEVICE_REPLY_MAX 65536   /* bytes of a device's reply */
#define CY_DEVICE_DESCRIBE_MAX 4096 /* bytes of a describe payload */
#define CY_DEVICE_DESCRIBE_NAMES 64 /* functions, and variables, per device */
#define CY_DEVICE_NAME_MAX 64       /* function / variable name */
#define CY_DEVICE_DEFAULT_TIMEOUT_MS 10000
#define CY_DEVICE_MAX_TIMEOUT_MS 60000

typedef struct cy_devices cy_devices;
typedef struct cy_session cy_session;

/* What a transport (a binding of the device layer: src/mqtt, src/coap) is
 * built on: one shard's layers, all borrowed, which must outlive it. A
 * transport uses what it needs of them. */
typedef struct cy_transport_deps {
    uv_loop_t *loop;
    const cy_config *cfg;
    cy_store *store;
    cy_registry *registry; /* device credentials and PSKs */
    cy_router *router;
    cy_cluster *cluster;
    cy_devices *devices;
    cy_space *space; /* the disk-full state */
    cy_counters *stats;
    cy_scoreboard *sb; /* node-wide figures; NULL = this shard only */
    cy_limit *limit;   /* failed logins, connection rates (core/cy_limit.h); NULL = none */
    unsigned self, nshards;
} cy_transport_deps;

/* hists (may be NULL): where the requester side times function calls and
 * variable reads (CY_HIST_DEVICE_CALL, requests.c). */
int cy_devices_new(uv_loop_t *loop, const cy_config *cfg, cy_store *store, cy_router *router,
                   cy_cluster *cluster, cy_counters *stats, cy_hists *hists, unsigned self,
                   unsigned nshards, uint64_t generation, cy_devices **out);
/* Free every session and record (no will is published, nothing stored). */
void cy_devices_free(cy_devices *d);
/* Store loader callbacks (ctx: the device layer). */
int cy_devices_load_session(void *ctx, const cy_store_session *sr);
int cy_devices_load_sub(void *ctx, const char *client_id, const char *filter, uint8_t opts,
                        uint32_t sub_id);
int cy_devices_load_msg(void *ctx, const char *client_id, const cy_store_msg *sm);
int cy_devices_load_inq2(void *ctx, const char *client_id, uint16_t id);
/* After loading: end the sessions whose expiry ran out while cyan was
 * down. Returns how many. */
size_t cy_devices_end_expired(cy_devices *d);
/* Every sweep: publish wills whose delay passed, end offline sessions
 * whose expiry passed, write presence rows when presence_flush_interval
 * has passed. */
void cy_devices_sweep(cy_devices *d);
/* Deadlines: answer 504 for calls the device did not answer, 503 for
 * requests whose owner shard stopped or did not answer; log the status
 * events the rate allows (now: mono ms, cy_mono_ms). Call it about every
 * 100 ms. */
void cy_devices_tick(cy_devices *d, int64_t now);

/* ---- owed work, for the progress watchdog (health/watchdog.h) ---- */

/* QoS 1/2 messages queued to sessions whose device is connected and has
 * window for them (cy_session_sendable): sendable now, so owed by this
 * shard; a healthy one sends them in the pass that made them sendable.
 * Messages waiting for an offline device or for the device's own
 * acknowledgements (a full window) are not owed. Cost: nothing while no
 * connected device has a message queued, else a walk of every session
 * (memory only). */
uint64_t cy_devices_owed_deliveries(const cy_devices *d);
/* Messages queued for sessions with a link (a device connected), whether
 * or not their window lets them go now. O(1): a running count. */
uint64_t cy_devices_online_queued(const cy_devices *d);
/* Operations that owe an answer past their deadline: as the owner, calls
 * and reads the device did not answer in time (a 504 is due); as the
 * requester, requests the owner did not answer in time (a 503 is due).
 * One within its deadline waits for a device or a peer and is not owed.
 * cy_devices_tick answers them, so a healthy shard owes these for at most
 * one tick. now: mono ms. Cost: a walk of the calls and requests. */
uint64_t cy_devices_owed_calls(const cy_devices *d, int64_t now);
/* Units of work done, for the scoreboard's progress: answers given as the
 * owner (replies, 404/409/502/504, presence), requests ended as the
 * requester, queued deliveries sent to their device. */
uint64_t cy_devices_progress(const cy_devices *d);

/* ---- the operator's ACL (acl.h) ---- */

/* Who publishes or subscribes, as the ACL sees a client: its client id and
 * the username its connection logged in with (NULL: anonymous; an isolated
 * device's is its device id). Borrowed. An internal device (a canary) is
 * not subject to the ACL. */
typedef struct cy_who {
    const char *client_id;
    size_t client_id_len;
    const char *username;
    size_t username_len;
    bool internal;
} cy_who;

/* Read the ACL file the settings name (cfg->acl_file; empty: no ACL, every
 * access allowed) and use it from now on: for the next publish, subscribe
 * and delivery. The subscriptions of connected sessions are checked again
 * under the new rules (session.c: those no longer covered make their
 * deliveries checked one by one; none is removed). On an error nothing
 * changes (the rules in use stay) and err says why ("FILE:LINE: what").
 * Returns 0 or CY_ECONFIG. */
int cy_devices_load_acl(cy_devices *d, char *err, size_t errlen);
/* Use ACL a from now on (takes ownership; NULL: none, everything allowed),
 * as cy_devices_load_acl does with the one it reads. */
void cy_devices_set_acl(cy_devices *d, cy_acl *a);
/* The ACL in use (NULL: none), borrowed until the next cy_devices_load_acl. */
const cy_acl *cy_devices_acl(const cy_devices *d);
/* May who have access (CY_ACL_READ, CY_ACL_WRITE, CY_ACL_SUBSCRIBE) to
 * topic (a filter for CY_ACL_SUBSCRIBE, without its $share/<group>/)?
 * Always yes without an ACL, for an application (who NULL) and for an
 * internal device. A refusal is counted (acl_file_denied) and logged, at
 * most one line per client per 10 s. */
bool cy_device_acl(cy_devices *d, const cy_who *who, const char *topic, size_t len, int access);

/* ---- the device convention ---- */

/* What a client may publish, whatever path its bytes take to the router:
 * a PUBLISH, a will (checked at CONNECT, routed at the close), an event of
 * the HTTP API; later a CoAP event. Every path calls this one function, so
 * no path skips a rule:
 *   - the topic is at most max_topic_length and not in a reserved $ space;
 *   - an isolated device (device_id not NULL) keeps to its own spaces
 *     (devices/<id>/... and events/...);
 *   - its describe must be valid, and is always retained (*retain is set);
 *   - its reply topic is a reply, not a message: *reply is set, and a path
 *     that cannot carry a reply (a will) refuses it;
 *   - the ACL (acl_file) lets who write the topic (cy_device_acl); who is
 *     NULL for an application (the HTTP API), which the ACL does not bind.
 * The topic is a valid name already (the caller's decoder checked it).
 * Returns 0, or an MQTT 5 reason code (>= 0x80) with *why naming the rule
 * (static text); counts the refusal. */
int cy_device_admit(cy_devices *d, const char *device_id, size_t id_len, const cy_who *who,
                    const char *topic, size_t len, const uint8_t *payload, size_t plen,
                    bool *retain, bool *reply, const char **why);
/* May the isolated device `id` use topic (or filter) t? */
bool cy_device_topic_ok(const char *id, size_t id_len, const char *t, size_t len);
/* Is payload a valid describe (docs/device-protocol.md)? */
bool cy_device_describe_ok(const uint8_t *payload, size_t len);
/* Could n[0..len) be a function's or a variable's name in a describe (1 to
 * CY_DEVICE_NAME_MAX letters, digits, '_', '-', '.')? */
bool cy_device_op_name_ok(const char *n, size_t len);
/* Is t the device's reply topic, devices/<id>/reply[/<rid>]? */
bool cy_device_is_reply(const char *id, size_t id_len, const char *t, size_t len);
/* The describe of device id (from the retained messages), parsed, or NULL;
 * the caller frees it with json_decref. */
json_t *cy_device_describe(cy_devices *d, const char *id);
/* describe[key] if it is an array, else an empty array (new reference). */
json_t *cy_device_names(json_t *describe, const char *key);

/* ---- presence (presence.c) ----
 *
 * The owner shard keeps each device's presence in memory (online since,
 * protocol, last heard, last round trip) and tells the node when a device
 * goes online or offline: a status event, an event of the device named
 * CY_PRESENCE_EVENT (topic devices/<id>/events/cyan/status), published by
 * the owner into the router at QoS 0 like an API event, so the event log
 * numbers it, webhooks and event streams get it. Its data is JSON:
 *   {"status": "online"|"offline", "reason": cy_presence_reason_name(),
 *    "protocol": "mqtt5"|..., "at": ISO time of the change,
 *    "last_heard": ISO time, "coalesced": N}
 *
 * Floods: a change becomes a record in a queue that the tick drains at
 * most presence_event_rate per second (per shard), so 10,000 devices
 * reconnecting at once become a few seconds of events, each with the time
 * of its change, never a burst the log, the streams and the webhooks must
 * take in one pass. One device may make 4 events quickly, then one per
 * presence_flap_interval (a GCRA, cy_presence_allow): the changes of a
 * flapping device meanwhile are held, and when its time comes one event
 * says its state then, if that differs from the last one announced, with
 * "coalesced" = how many changes it stands for beyond itself. So the last
 * status event of a device is always its state, at most an interval late.
 *
 * Persistence: each device's last heard, last round trip, last protocol
 * and whether the last status event logged said online are a row of the
 * shard's store (store.h, cy_store_presence_*): written in the batch of
 * each status event, and every presence_flush_interval for the devices
 * whose times moved. cy_devices_load_presence reads them at start: a
 * device whose row says online lost its session with the restart and gets
 * an offline event (reason shard_restart).
 *
 * Internal devices (canaries) have presence but no status events and no
 * rows. Applications (not isolated devices) have no presence at all. */

#define CY_PRESENCE_EVENT "cyan/status" /* the status events' name */
/* Event names starting with this are the server's: no client, device or
 * application may publish one (cy_device_admit). */
#define CY_EVENT_RESERVED CY_TOPIC_RESERVED_EVENT /* "cyan/" (router/topic.h) */
#define CY_PRESENCE_BURST 4            /* status events one device makes at once */
#define CY_PRESENCE_QUEUE_MAX 65536    /* records waiting per shard; past it, changes are held */
#define CY_PRESENCE_READY_WAIT_MS 5000 /* at start, events wait this long at most for the bus */

/* Why a device went online or offline, as its status events say. */
typedef enum cy_presence_reason {
    CY_PRESENCE_CONNECT,           /* online: it connected (CoAP: it was heard) */
    CY_PRESENCE_DISCONNECT,        /* it said goodbye: MQTT DISCONNECT */
    CY_PRESENCE_CONNECTION_LOST,   /* the connection ended without one: network, TLS or DTLS
                                    * session end, a CoAP device that stopped acknowledging */
    CY_PRESENCE_KEEPALIVE_TIMEOUT, /* silent past its keep-alive (MQTT: 1.5 x keep-alive;
                                    * CoAP: coap_idle_timeout) */
    CY_PRESENCE_TAKEOVER,          /* another connection of the device took its session */
    CY_PRESENCE_PROTOCOL_ERROR,    /* cyan closed it for what it sent (malformed, a protocol
                                    * error, a publish refused to MQTT 3.1.1) */
    CY_PRESENCE_LIMIT,             /* cyan closed it for a limit (output stall, a quota) */
    CY_PRESENCE_DELETED,           /* the device was deleted */
    CY_PRESENCE_SHUTDOWN,          /* cyan, or its shard, stopped cleanly */
    CY_PRESENCE_SHARD_RESTART,     /* its shard died (crash, SIGKILL, watchdog) and restarted */
    CY_PRESENCE_SERVER_ERROR,      /* cyan closed it after an error of its own (out of memory) */
    CY_PRESENCE_NREASONS
} cy_presence_reason;

/* The reason's name in status events ("keepalive_timeout"); "unknown"
 * out of range. Static storage. Thread: any. */
const char *cy_presence_reason_name(int r);
/* Why a link closed, from the transport-neutral MQTT 5 reason code it was
 * closed with (0: none, cy_reason.h) and whether the device said goodbye
 * (an MQTT DISCONNECT): the code decides when there is one (0x8D keep-alive,
 * 0x8E takeover, 0x8B shutdown, 0x97 limit, 0x80/0x83/0x88/0x89 server
 * error, any other >= 0x80 protocol error), else goodbye is DISCONNECT and
 * its absence CONNECTION_LOST. Pure. Thread: any. */
cy_presence_reason cy_presence_reason_of(uint8_t code, bool goodbye);
/* A generic cell rate limit (GCRA) of `burst` events at once, then one per
 * interval_ms: may an event go at now (ms)? *tat (theoretical arrival time,
 * 0 at first) is advanced when it may; when not, *retry_at (may be NULL)
 * is the first time one may. interval_ms <= 0: always. Pure. Thread: any. */
bool cy_presence_allow(int64_t *tat, int64_t now, int64_t interval_ms, unsigned burst,
                       int64_t *retry_at);
/* A status event's data (the JSON above) into buf (cap bytes, NUL-
 * terminated): its length, or CY_ERANGE when it does not fit (nothing
 * usable in buf). protocol NULL or "": null. Times are wall ms (0: null).
 * Pure. Thread: any. */
int cy_presence_payload(char *buf, size_t cap, bool online, int reason, const char *protocol,
                        int64_t at, int64_t last_heard, uint32_t coalesced);

/* A device's session is connected over link / has lost it (transports
 * call these for isolated devices, online after the session took the link
 * and its identity: cy_session_attach, cy_session_set_who). why: the
 * reason the link ended (cy_presence_reason_of for a transport's close);
 * a link that is not the device's current one changes nothing. */
void cy_device_online(cy_devices *d, cy_session *s, cy_link *link);
void cy_device_offline(cy_devices *d, cy_session *s, cy_link *link, cy_presence_reason why);
/* The device was deleted: close its link (no will; its status event says
 * deleted), end its session, forget its presence and its row. */
void cy_device_kick(cy_devices *d, const char *id);
/* {"online", "protocol", "connected_since", "last_heard",
 * "last_round_trip"} of one device this shard owns (new reference). */
json_t *cy_device_presence(cy_devices *d, const char *id);
/* {id: presence} of every device this shard knows (new reference). */
json_t *cy_device_presence_all(cy_devices *d);
/* ISO 8601 UTC with milliseconds, or null for 0 (new reference). */
json_t *cy_device_time(int64_t wall_ms);
/* At start, after the store's sessions are loaded: read the presence rows
 * (store.h) back, so last heard and last round trip survive the restart,
 * and queue an offline event (reason shard_restart) for every device whose
 * last logged status event said online. A row of a device registry
 * (borrowed; NULL: no check) no longer has (deleted while this shard was
 * down) is removed instead, without an event. Errors: CY_ENOMEM, CY_ESTORE
 * (nothing is lost by going on without them: logged by the caller). */
int cy_devices_load_presence(cy_devices *d, cy_registry *registry);
/* The shard stops cleanly (its transports closed every link already): log
 * every status event waiting or held, whatever the rate, and write every
 * row whose times moved, into the store's current batch (the caller
 * commits). */
void cy_devices_stop(cy_devices *d);
/* Status events waiting in this shard's queue (not yet logged). */
size_t cy_devices_presence_queued(const cy_devices *d);

/* ---- describe fields shown by the API ---- */

/* The firmware-reported strings of a describe that the API shows with a
 * device ("version", "model": each optional, 1 to CY_DEVICE_INFO_MAX
 * printable ASCII characters; cy_device_describe_ok refuses a describe
 * with one that is not). */
#define CY_DEVICE_INFO_MAX 64
/* describe[key] when it is such a string, else null (new reference). */
json_t *cy_device_info(json_t *describe, const char *key);

/* ---- device calls (calls.c) ---- */

enum {
    CY_DEVICE_OP_PRESENCE = 1, /* one device's presence */
    CY_DEVICE_OP_PRESENCE_ALL, /* every device a shard knows */
    CY_DEVICE_OP_CALL,         /* a function call */
    CY_DEVICE_OP_GET,          /* a variable read */
    CY_DEVICE_OP_KICK,         /* the device was deleted: end its session */
};

/* ---- requests (requests.c): any shard asks the owner ---- */

/* The owner gives the device this much less than the caller's deadline,
 * so that its 504 reaches the requester before the requester gives up. */
#define CY_DEVICE_OWNER_MARGIN_MS 100

typedef struct cy_device_request cy_device_request;

/* How a request ended. */
typedef struct cy_device_answer {
    /* The owner's status and JSON body (borrowed for the callback), or 503
     * with `why` when the owner shard is not healthy, did not answer by the
     * deadline, or could not be reached. */
    unsigned status;
    const char *body;
    size_t len;
    const char *why;
    /* Presence operations: each shard's parsed answer (borrowed for the
     * callback), NULL for a shard that did not answer; body is NULL then. */
    json_t *const *presence;
} cy_device_answer;

typedef void (*cy_device_done)(void *ctx, const cy_device_answer *a);

/* Run op (CY_DEVICE_OP_*) about device id on the shard that owns it (every
 * healthy shard for PRESENCE_ALL) with a deadline of timeout_ms. done runs
 * exactly once, unless the request is cancelled first: with the owner's
 * answer (a reply, 404, 409, 504...), or 503 (owner unhealthy, silent past
 * the deadline, unreachable). It may run inside this call (the owner is
 * this shard, or is known to be down): *out is then NULL; otherwise *out is
 * the request, valid until done runs or it is cancelled.
 * Errors: CY_ENOMEM, CY_EINVAL (id or name over 255 bytes); done does not
 * run then. */
int cy_device_request_start(cy_devices *d, uint8_t op, const char *id, const char *name,
                            const uint8_t *arg, size_t arg_len, uint32_t timeout_ms,
                            cy_device_done done, void *ctx, cy_device_request **out);
/* The caller left: done will not run. Safe on NULL. */
void cy_device_request_cancel(cy_device_request *r);
/* Cluster hook: an API_REQ or API_RESP frame from shard `from` (ctx: d). */
void cy_devices_on_frame(void *ctx, unsigned from, uint8_t type, const uint8_t *body, size_t len);

/* Where the owner shard's answer to a requester goes (by default: the
 * request machinery above, locally or as an API_RESP frame): requester shard
 * `from`, its request id, an HTTP status and a JSON body (borrowed). */
typedef void (*cy_device_answer_fn)(void *ctx, unsigned from, uint32_t req_id, unsigned status,
                                    const char *body, size_t len);
void cy_devices_set_answer(cy_devices *d, cy_device_answer_fn fn, void *ctx);
/* (fn NULL: back to the default.) */
/* Run operation op on this shard (the owner of device id) for requester
 * (from, req_id). Exactly one answer goes to the answer function: at once
 * (presence, kick, 400/404/409), on the device's reply (200, 502 for a
 * reply over CY_DEVICE_REPLY_MAX), or at the deadline (504). timeout_ms:
 * 0 = the default; capped at CY_DEVICE_MAX_TIMEOUT_MS. */
void cy_device_op(cy_devices *d, unsigned from, uint32_t req_id, uint8_t op, const char *id,
                  size_t id_len, const char *name, size_t name_len, const uint8_t *arg,
                  size_t arg_len, uint32_t timeout_ms);
/* A device's reply to a call or read, from its transport: rid is the
 * request id the transport found (topic level or correlation data). */
void cy_device_reply(cy_devices *d, cy_session *s, const char *rid, size_t rid_len,
                     const uint8_t *payload, size_t len);
/* The device refused a call or read (a transport's error answer, e.g. a
 * CoAP 4.04): the requester gets 502 device_error with why (copied; at
 * most 200 bytes shown). An unknown rid is ignored. */
void cy_device_reply_error(cy_devices *d, cy_session *s, const char *rid, size_t rid_len,
                           const char *why);

#endif
