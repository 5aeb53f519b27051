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
#include "device/device.h"
#include "device/session.h"
#include "core/cy_buf.h"
#include "core/cy_log.h"
#include "health/scoreboard.h"
#include "core/cy_map.h"
#include "mqtt/mqtt.h"
#include "router/router.h"
#include "router/topic.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

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

typedef struct cy_conn cy_conn;

/* Output the kernel did not take at once, being written by uv_write.
 * Allocated only then, so an idle connection does not carry it. */
typedef struct cy_wstate {
    uv_write_t req;
    cy_buf buf;
    cy_conn *c;
} cy_wstate;

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
    cy_link link;          /* what the session sees of it (device/link.h) */
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
    cy_devices *devices; /* sessions, presence, calls */
    cy_router *router;   /* subscriptions and retained messages */
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
/* The connection as its session sees it: the MQTT binding of cy_link. */
static inline cy_conn *cy_conn_of_link(cy_link *l)
{
    return (cy_conn *)((char *)l - offsetof(cy_conn, link));
}
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
#endif
