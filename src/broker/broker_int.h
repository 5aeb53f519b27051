/* broker_int: the broker's internal types, shared by its files only.
 *
 * The objects and who owns what:
 *   cy_broker   owns every connection (list `conns`), every session (map
 *               `sessions` by client id), the subscription tree, the retained
 *               tree (which holds a reference on each retained cy_msg).
 *   cy_conn     one TCP connection. Points at its session once CONNECT is
 *               accepted (session->conn points back). Freed in its uv close
 *               callback, never inside its own read callback.
 *   cy_session  the MQTT session, which outlives its connection when it is
 *               persistent (expiry > 0). Owns its subscriptions (also entered
 *               in the tree with the session as owner), its outbound
 *               deliveries and the ids of inbound QoS 2 messages not yet
 *               released.
 *   cy_msg      one published message: immutable and refcounted, shared by
 *               every delivery, the retained tree and a pending will.
 *   cy_delivery one QoS 1/2 message on its way to one session: queued, or in
 *               flight with a packet id. Holds a reference on its cy_msg.
 *
 * Thread: everything here runs on the broker's loop thread.
 */
#ifndef CY_BROKER_INT_H
#define CY_BROKER_INT_H

#include "broker/broker.h"
#include "cluster/cluster.h"
#include "core/cy_buf.h"
#include "core/cy_log.h"
#include "health/scoreboard.h"
#include "core/cy_map.h"
#include "mqtt/mqtt.h"
#include "router/router.h"
#include "router/topic.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#define CY_MAX_CLIENT_ID 256
#define CY_READ_CHUNK 65536
/* Failed logins and idle sockets are logged at most once per address per
 * window, and at most this many lines per window from all addresses. */
#define CY_LOGIN_LOG_WINDOW_MS 10000
#define CY_LOGIN_LOG_BURST 20
/* Output a connection may accumulate before QoS 0 messages to it are dropped. */
#define CY_OUT_HIGH_WATER (4u << 20)
/* An output buffer this small is freed as soon as it is written out (malloc
 * recycles it at once); a larger one is kept for the next pass. */
#define CY_OUT_KEEP_MIN 1024u
/* Timeouts, expiries and will delays are checked every CY_SWEEP_MS (cluster.h). */
/* Free store pages given back to the file system per sweep (4 KiB each):
 * about 10 ms of work, up to 16 MiB/s reclaimed. */
#define CY_RECLAIM_PAGES 1024
/* Disk full (broker.c): below CY_DISK_LOW bytes free on the data folder's
 * file system a shard refuses new durable work; it takes it again from
 * CY_DISK_OK (the gap keeps it from flapping). The low mark is the room
 * left for what must still be written: deletes and updates of messages
 * being delivered, sessions going offline, frames from other shards,
 * SQLite's WAL and checkpoints. Between two probes of the file system
 * (at most one per CY_DISK_PROBE_MS while durable work comes, and one per
 * sweep) the shard counts its own writes twice (WAL, then the file). */
#define CY_DISK_LOW (8u << 20)
#define CY_DISK_OK (16u << 20)
#define CY_DISK_PROBE_MS 10

typedef struct cy_delivery {
    struct cy_delivery *prev, *next;
    cy_msg *msg; /* reference */
    int64_t store_id; /* row in the store, 0 when the session is not persistent */
    uint16_t packet_id; /* 0 while queued */
    uint8_t qos;   /* effective: min(published, subscribed) */
    uint8_t state; /* CY_MSG_QUEUED, CY_MSG_SENT, CY_MSG_RELEASED */
    bool retain;   /* retain flag to send */
    uint8_t n_sub_ids;
    uint32_t sub_ids[]; /* n_sub_ids */
} cy_delivery;

typedef struct cy_sub {
    char *filter; /* owned, NUL-terminated */
    uint16_t len;
    uint8_t opts; /* CY_SUBOPT_* */
    uint32_t sub_id;
} cy_sub;

typedef struct cy_conn cy_conn;

/* Output the kernel did not take at once, being written by uv_write.
 * Allocated only then, so an idle connection does not carry it. */
typedef struct cy_wstate {
    uv_write_t req;
    cy_buf buf;
    cy_conn *c;
} cy_wstate;

/* Fields are ordered by size so the struct has no holes: one of these lives
 * for every connected client. The client id is stored inline, at the end. */
typedef struct cy_session {
    cy_conn *conn;   /* NULL while offline */
    /* subscriptions */
    cy_sub *subs;
    /* outbound QoS 1/2: in flight ones first (sent order), then queued */
    cy_delivery *head, *tail;
    cy_delivery *next_send; /* first queued delivery, or NULL */
    /* inbound QoS 2 packet ids received and not yet released by PUBREL */
    uint16_t *inq2;
    /* will message, armed while connected, pending after an abnormal close */
    cy_msg *will;
    int64_t will_at;     /* mono ms when a pending will is due; 0 = not pending */
    int64_t offline_since;   /* mono ms; 0 while online */
    cy_subscriber sub;       /* as the router sees it (kind: b->session_kind) */
    struct cy_session *offline_next, *offline_prev; /* broker->offline list */
    uint32_t expiry;         /* session expiry interval, s; 0xFFFFFFFF = never */
    uint32_t will_delay; /* s */
    uint32_t n_subs, cap_subs;
    uint32_t n_inflight;
    uint32_t n_queued;
    uint32_t n_inq2, cap_inq2;
    uint16_t last_packet_id;
    uint16_t client_id_len;
    uint8_t version;
    bool persistent;         /* expiry > 0: kept in the store */
    char client_id[]; /* NUL-terminated, client_id_len bytes; the key in broker->sessions */
} cy_session;

enum { CONN_NEW = 0, CONN_ACTIVE, CONN_CLOSING, CONN_HANDED };

/* What only some MQTT 5 clients use: the limits they declared in CONNECT and
 * topic aliases. Allocated the first time a client declares a limit or uses
 * an alias, so a 3.1.1 client (and most 5.0 ones) does not carry it. */
typedef struct cy_conn_v5 {
    /* peer limits, 0 = none */
    uint32_t peer_max_packet;
    uint16_t peer_recv_max;
    uint16_t peer_alias_max;
    uint16_t n_alias_out;
    /* topic aliases: inbound (client -> us), index = alias */
    char **alias_in;
    uint16_t *alias_in_len;
    /* outbound aliases (us -> client): topic of each assigned alias */
    char **alias_out;
} cy_conn_v5;

/* One client connection. Every idle connection carries one, so its layout
 * is kept tight (376 bytes on x86-64 with libuv 1.44, 384 with malloc's
 * header; the libuv handle is 248 of them): what only some connections need
 * hangs off a pointer that is NULL most of the time, and the peer's address
 * is not kept (cy_conn_peer asks the socket when a log line needs it). */
struct cy_conn {
    uv_tcp_t tcp;
    cy_broker *b;
    cy_session *sess;
    cy_conn *prev, *next;  /* broker->conns */
    cy_conn *dirty_next;   /* broker->dirty list of connections with output */
    int64_t last_rx;       /* mono ms of the last packet received; of the accept before CONNECT */
    cy_buf out;            /* output of this pass; no memory while idle */
    cy_buf *in;            /* partial packet carried between reads, or NULL (most of the time) */
    struct cy_wstate *w;   /* a uv_write in flight, or NULL (most of the time) */
    cy_conn_v5 *v5;        /* MQTT 5 limits and aliases, or NULL (none declared or used) */
    cy_held_owner held;    /* acknowledgements held until peers caught up (cluster.h) */
    uint16_t keepalive;    /* s granted; 0 = none */
    uint8_t state;
    uint8_t version;       /* 0 until CONNECT */
    bool dirty : 1;
    bool clean_disconnect : 1; /* got DISCONNECT 0x00: no will */
    bool counted : 1;          /* counted in clients_connected */
    bool handed_in : 1;        /* arrived by handover from another shard */
    bool device : 1;           /* an isolated device: client id = device id, own topics only */
    bool paused : 1;           /* reading stopped: output over max_output (back-pressure) */
    uint16_t paused_s;         /* mono s (mod 65536) when reading stopped; fits the padding */
    uint32_t preauth;          /* bytes of `in` counted in b->preauth_bytes (before CONNECT) */
};

struct cy_broker {
    uv_loop_t *loop;
    const cy_config *cfg;
    cy_store *store;
    cy_registry *registry;
    uv_tcp_t listener;
    uv_check_t pass_end; /* commit + flush once per loop pass */
    uv_timer_t sweep;    /* timeouts, expiries, will delays, $SYS */
    uv_timer_t ready;    /* until every shard runs: then accept */
    int64_t started;     /* mono ms */
    bool listening, stopping;
    cy_conn *conns;      /* all connections */
    uint32_t n_conns;
    size_t preauth_bytes;  /* partial-input bytes held for sockets before CONNECT (preauth_memory) */
    cy_logrl login_log;    /* failed logins and idle sockets: one line per address per window */
    cy_conn *dirty;      /* connections with output to flush */
    cy_map sessions;     /* client id -> cy_session */
    cy_session *offline; /* sessions that are offline and persistent or have a pending will */
    cy_router *router;   /* subscriptions and retained messages */
    cy_sub_kind session_kind;
    cy_counters stats;
    cy_counters sys_last; /* values last published to $SYS */
    int64_t sys_next;     /* mono ms of the next $SYS update */
    uint64_t next_assigned_id;
    cy_buf scratch; /* encode scratch */
    /* sharding: with nshards 1 the cluster is idle */
    unsigned self, nshards;
    uint64_t generation;   /* our spawn number */
    cy_cluster *cluster;   /* the other shards */
    cy_sb_slot *slot;      /* our scoreboard slot, or NULL */
    cy_scoreboard *sb;     /* borrowed, or NULL */
    uint64_t progress;     /* units of work done here (scoreboard, with the cluster's) */
    bool stalled;          /* drill: input is ignored, heartbeat goes on */
    struct cy_api *api;    /* the HTTP API, or NULL when it is off */
    uint8_t rbuf[CY_READ_CHUNK]; /* shared read buffer */
    bool rbuf_busy;
    /* disk full (broker.c) */
    bool disk_full;         /* refusing new durable work until space returns */
    bool disk_unknown;      /* the file system could not be asked: do not refuse */
    uint64_t disk_free;     /* bytes free at the last probe */
    uint64_t disk_bytes_at; /* cy_store_bytes at the last probe */
    int64_t disk_probe_at;  /* uv_now of the last probe */
    uint64_t disk_refused_at; /* store_full_refusals when the state began */
};

/* broker.c */
/* Clients connected on the whole node (all shards, from the scoreboard). */
uint64_t cy_broker_clients_connected(const cy_broker *b);
/* Whether new durable work (a QoS 1/2 or retained publish, a new persistent
 * session, a subscription of a persistent session) must be refused now
 * because the data folder's disk is (nearly) full. May ask the file system
 * (a statvfs, at most every CY_DISK_PROBE_MS). The caller counts the
 * refusal in store_full_refusals and answers it. */
bool cy_broker_store_full(cy_broker *b);

/* publish.c */
/* Build a message from a decoded PUBLISH (or will), keeping the MQTT 5
 * properties that travel with it. topic overrides p->topic (aliases). */
cy_msg *cy_msg_from_publish(const cy_str *topic, const uint8_t *payload, size_t payload_len,
                            const cy_mqtt_props *props, uint8_t qos, bool retain,
                            uint8_t version, cy_buf *scratch);

/* conn.c */
/* libuv connection callback of the listener (listener.data = broker). */
void cy_conn_on_connection(uv_stream_t *server, int status);
/* Append bytes to the connection's output; flushed at the end of the pass. */
int cy_conn_send(cy_conn *c, const cy_mqtt_packet *p);
/* Close: MQTT 5 clients past CONNECT get DISCONNECT with reason first
 * (reason 0 = no DISCONNECT). Detaches the session. Idempotent. */
void cy_conn_close(cy_conn *c, uint8_t reason, const char *why);
void cy_conn_flush(cy_conn *c);
/* Bytes waiting to be written to the client: `out` and the write in flight. */
size_t cy_conn_backlog(const cy_conn *c);
/* Sweep: close (0x97 Quota exceeded, counted in limit_output_stall) a
 * connection whose reading has been stopped for back-pressure for longer
 * than max_output_stall; true if it was closed. now: mono ms. */
bool cy_conn_check_stall(cy_conn *c, int64_t now);
/* The client id, or before CONNECT the peer's address (cy_conn_peer). */
const char *cy_conn_name(const cy_conn *c);
/* "ip:port" of the peer, asked of the socket now (the connection does not
 * keep it), or "unknown peer" once the socket is closed or reset. The text
 * is in a buffer of the loop thread, good until the next call. */
const char *cy_conn_peer(const cy_conn *c);
/* c's MQTT 5 block, allocated (zeroed) on first use. NULL: out of memory. */
cy_conn_v5 *cy_conn_v5_get(cy_conn *c);
/* Log an event a stranger can repeat at will (a refused login, an idle or
 * oversized socket before login) at info, at most one line per kind
 * ("refused logins", "closed sockets") and source address per
 * CY_LOGIN_LOG_WINDOW_MS, with a count of what was held back. */
void cy_conn_log_stranger(cy_conn *c, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The client's limits (MQTT 5 CONNECT properties); 0 = none declared. */
static inline uint32_t cy_conn_peer_max_packet(const cy_conn *c)
{
    return c->v5 ? c->v5->peer_max_packet : 0;
}
static inline uint16_t cy_conn_peer_recv_max(const cy_conn *c)
{
    return c->v5 ? c->v5->peer_recv_max : 0;
}

/* handle_*.c: packet handlers. Return 0, or a MQTT 5 reason code >= 0x80
 * for the dispatcher to disconnect with. */
int cy_handle_connect(cy_conn *c, cy_mqtt_connect *p);
int cy_handle_publish(cy_conn *c, cy_mqtt_publish *p);
int cy_handle_puback(cy_conn *c, cy_mqtt_ack *p);
int cy_handle_pubrec(cy_conn *c, cy_mqtt_ack *p);
int cy_handle_pubrel(cy_conn *c, cy_mqtt_ack *p);
int cy_handle_pubcomp(cy_conn *c, cy_mqtt_ack *p);
int cy_handle_subscribe(cy_conn *c, cy_mqtt_subscribe *p);
int cy_handle_unsubscribe(cy_conn *c, cy_mqtt_subscribe *p);
int cy_handle_disconnect(cy_conn *c, cy_mqtt_disconnect *p);

/* session.c */
cy_session *cy_session_new(cy_broker *b, const char *client_id, size_t len);
/* End the session: drop its subscriptions and queue, delete it from the
 * store, publish a pending will, free it. */
void cy_session_end(cy_broker *b, cy_session *s);
/* Free memory only (broker teardown). */
void cy_session_free(cy_broker *b, cy_session *s);
void cy_session_persist(cy_broker *b, cy_session *s);
/* The connection went away. abnormal: publish or schedule the will. */
void cy_session_detach(cy_broker *b, cy_session *s, bool abnormal);
/* Queue (or send now) msg to s at qos with retain flag and sub ids. */
void cy_session_deliver(cy_broker *b, cy_session *s, cy_msg *m, uint8_t qos, bool retain,
                        const uint32_t *sub_ids, uint32_t n_sub_ids);
/* Send queued deliveries while the peer's window allows. */
void cy_session_pump(cy_broker *b, cy_session *s);
/* Resend what was in flight (DUP) after a reconnect, then pump. */
void cy_session_resume(cy_broker *b, cy_session *s);
cy_delivery *cy_session_find_inflight(cy_session *s, uint16_t packet_id);
void cy_session_remove_delivery(cy_broker *b, cy_session *s, cy_delivery *d);
cy_sub *cy_session_find_sub(cy_session *s, const char *filter, size_t len);
int cy_session_add_sub(cy_session *s, const char *filter, size_t len, uint8_t opts,
                       uint32_t sub_id);
void cy_session_del_sub(cy_session *s, cy_sub *sub);
bool cy_session_has_inq2(const cy_session *s, uint16_t id);
int cy_session_add_inq2(cy_session *s, uint16_t id);
bool cy_session_del_inq2(cy_session *s, uint16_t id);
void cy_offline_link(cy_broker *b, cy_session *s);
/* The session kind of subscriber (router.h), set at start. */
void cy_session_init_kind(cy_broker *b);
void cy_offline_unlink(cy_broker *b, cy_session *s);

/* Subscribe / unsubscribe a local subscriber: the router and the interest
 * told to peer shards (cluster.h). */
static inline int cy_broker_sub_add(cy_broker *b, cy_subscriber *s, const char *filter, size_t len,
                                    uint8_t opts, uint32_t sub_id)
{
    return cy_cluster_subscribe(b->cluster, s, filter, len, opts, sub_id);
}
static inline void cy_broker_sub_remove(cy_broker *b, cy_subscriber *s, const char *filter,
                                        size_t len)
{
    cy_cluster_unsubscribe(b->cluster, s, filter, len);
}

/* conn.c, for the cluster */
/* Send p to c once the peers this packet's handling wrote to have applied
 * it, or at once if there are none (and nothing held before it on c). */
int cy_conn_send_acked(cy_conn *c, const cy_mqtt_packet *p);
/* Pass c (whose first bytes are bytes[0..len)) to shard owner, or refuse
 * it as "server unavailable" when the owner is not able to take it. */
void cy_conn_handover(cy_conn *c, unsigned owner, uint8_t version, const uint8_t *bytes,
                      size_t len);
/* Cluster hooks: a connection handed over by a peer; a held
 * acknowledgement released. */
void cy_conn_adopt(void *ctx, unsigned from, int fd, const uint8_t *bytes, size_t len);
void cy_conn_release_held(void *ctx, cy_held_owner *o, const uint8_t *bytes, size_t len);
/* Feed bytes to a connection as if read (used by adopt). */
void cy_conn_feed(cy_conn *c, const uint8_t *bytes, size_t len);

/* api*.c: the HTTP API (details in api_int.h). With http_listen empty,
 * b->api is NULL and only the device rules below apply. */
int cy_api_start(cy_broker *b, int http_fd);
/* Start taking HTTP requests (when the broker starts accepting). */
void cy_api_listen(cy_broker *b);
/* Close every HTTP connection and stream (pending requests end). */
void cy_api_stop(cy_broker *b);
void cy_api_free(cy_broker *b);
void cy_api_on_frame(cy_broker *b, unsigned from, uint8_t type, const uint8_t *body, size_t len);
/* A device's connection was accepted / is closing (presence). */
void cy_api_device_online(cy_broker *b, cy_conn *c);
void cy_api_device_offline(cy_broker *b, cy_conn *c);
/* May the isolated device `id` use topic (or filter) t? */
bool cy_device_topic_ok(const char *id, size_t id_len, const char *t, size_t len);
/* Is payload a valid describe (docs/device-protocol.md)? */
bool cy_device_describe_ok(const uint8_t *payload, size_t len);
/* Is t the device's reply topic, devices/<id>/reply[/<rid>]? */
bool cy_device_is_reply(const char *id, size_t id_len, const char *t, size_t len);
/* A device's reply (cy_device_is_reply) to a call or read: answered to the
 * API, never routed. */
void cy_device_reply(cy_conn *c, const cy_mqtt_publish *p);

/* What a client may publish, whatever path its bytes take to the router:
 * a PUBLISH, a will (checked at CONNECT, routed at the close), an event of
 * the HTTP API; later a CoAP event. Every path calls this one function, so
 * no path skips a rule:
 *   - the topic is at most max_topic_length and not in a reserved $ space;
 *   - an isolated device (device_id not NULL) keeps to its own spaces
 *     (devices/<id>/... and events/...);
 *   - its describe must be valid, and is always retained (*retain is set);
 *   - its reply topic is a reply, not a message: *reply is set, and a path
 *     that cannot carry a reply (a will) refuses it.
 * The topic is a valid name already (the caller's decoder checked it).
 * Returns 0, or an MQTT 5 reason code (>= 0x80) with *why naming the rule
 * (static text); counts the refusal in b->stats. Thread: the shard's. */
int cy_publish_admit(cy_broker *b, const char *device_id, size_t id_len, const char *topic,
                     size_t len, const uint8_t *payload, size_t plen, bool *retain, bool *reply,
                     const char **why);

#endif
