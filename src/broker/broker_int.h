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
#include "core/cy_buf.h"
#include "core/cy_map.h"
#include "mqtt/mqtt.h"
#include "router/topic.h"

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#define CY_MAX_CLIENT_ID 256
#define CY_READ_CHUNK 65536
/* Output a connection may accumulate before QoS 0 messages to it are dropped. */
#define CY_OUT_HIGH_WATER (4u << 20)
/* How often timeouts, expiries and will delays are checked, ms. */
#define CY_SWEEP_MS 250

typedef struct cy_msg {
    uint32_t refs;
    uint8_t qos; /* as published */
    bool retain; /* as published */
    uint16_t topic_len;
    uint32_t payload_len;
    uint32_t props_len;  /* pass-through MQTT 5 properties, encoded */
    int64_t expiry_at;   /* wall ms; 0 = never */
    char *topic;         /* NUL-terminated; in the same allocation */
    uint8_t *payload;    /* in the same allocation */
    uint8_t *props;      /* in the same allocation */
} cy_msg;

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

typedef struct cy_session {
    char *client_id; /* owned, NUL-terminated; the key in broker->sessions */
    uint16_t client_id_len;
    cy_conn *conn;   /* NULL while offline */
    uint8_t version;
    bool persistent;         /* expiry > 0: kept in the store */
    uint32_t expiry;         /* session expiry interval, s; 0xFFFFFFFF = never */
    int64_t offline_since;   /* mono ms; 0 while online */
    /* subscriptions */
    cy_sub *subs;
    uint32_t n_subs, cap_subs;
    /* outbound QoS 1/2: in flight ones first (sent order), then queued */
    cy_delivery *head, *tail;
    cy_delivery *next_send; /* first queued delivery, or NULL */
    uint32_t n_inflight;
    uint32_t n_queued;
    uint16_t last_packet_id;
    /* inbound QoS 2 packet ids received and not yet released by PUBREL */
    uint16_t *inq2;
    uint32_t n_inq2, cap_inq2;
    /* will message, armed while connected, pending after an abnormal close */
    cy_msg *will;
    uint32_t will_delay; /* s */
    int64_t will_at;     /* mono ms when a pending will is due; 0 = not pending */
    /* routing scratch: dedupe of overlapping subscriptions per publish */
    uint64_t match_epoch;
    uint32_t match_idx;
    struct cy_session *offline_next, *offline_prev; /* broker->offline list */
} cy_session;

enum { CONN_NEW = 0, CONN_ACTIVE, CONN_CLOSING };

struct cy_conn {
    uv_tcp_t tcp;
    cy_broker *b;
    cy_session *sess;
    cy_conn *prev, *next;  /* broker->conns */
    cy_conn *dirty_next;   /* broker->dirty list of connections with output */
    bool dirty;
    bool writing;          /* a uv_write of wbuf is in flight */
    uint8_t state;
    uint8_t version;       /* 0 until CONNECT */
    int64_t last_rx;       /* mono ms of the last packet received */
    int64_t accepted_at;   /* mono ms */
    uint32_t keepalive;    /* s granted; 0 = none */
    cy_buf in;             /* partial packet carried between reads */
    cy_buf out;            /* output of this pass */
    cy_buf wbuf;           /* output handed to uv_write */
    uv_write_t wreq;
    /* peer limits (MQTT 5), 0 = none */
    uint32_t peer_max_packet;
    uint16_t peer_recv_max;
    uint16_t peer_alias_max;
    /* topic aliases: inbound (client -> us), index = alias */
    char **alias_in;
    uint16_t *alias_in_len;
    /* outbound aliases (us -> client): topic of each assigned alias */
    char **alias_out;
    uint16_t n_alias_out;
    bool clean_disconnect; /* got DISCONNECT 0x00: no will */
    bool counted;          /* counted in clients_connected */
    char peer[48];         /* ip:port for logs before CONNECT */
};

/* One session a publish reaches, merged over its matching subscriptions. */
typedef struct cy_match {
    cy_session *sess;
    uint8_t qos;
    bool rap;
    uint8_t n_sub_ids;
    uint32_t sub_ids[CY_MQTT_MAX_SUB_IDS];
} cy_match;

struct cy_broker {
    uv_loop_t *loop;
    const cy_config *cfg;
    cy_store *store;
    cy_registry *registry;
    uv_tcp_t listener;
    uv_check_t pass_end; /* commit + flush once per loop pass */
    uv_timer_t sweep;    /* timeouts, expiries, will delays, $SYS */
    bool listening, stopping;
    cy_conn *conns;      /* all connections */
    uint32_t n_conns;
    cy_conn *dirty;      /* connections with output to flush */
    cy_map sessions;     /* client id -> cy_session */
    cy_session *offline; /* sessions that are offline and persistent or have a pending will */
    cy_topic_tree *subs;
    cy_retain *retained;
    cy_counters stats;
    cy_counters sys_last; /* values last published to $SYS */
    int64_t sys_next;     /* mono ms of the next $SYS update */
    uint64_t epoch;       /* routing scratch */
    cy_match *matches;
    uint32_t n_matches, cap_matches;
    uint64_t next_assigned_id;
    cy_buf scratch; /* encode scratch */
    uint8_t rbuf[CY_READ_CHUNK]; /* shared read buffer */
    bool rbuf_busy;
};

/* msg.c */
cy_msg *cy_msg_new(const char *topic, size_t topic_len, const uint8_t *payload, size_t payload_len,
                   const uint8_t *props, size_t props_len, uint8_t qos, bool retain,
                   int64_t expiry_at);
static inline cy_msg *cy_msg_ref(cy_msg *m)
{
    m->refs++;
    return m;
}
void cy_msg_unref(cy_msg *m);
/* Build a message from a decoded PUBLISH (or will), keeping the MQTT 5
 * properties that travel with it. topic overrides p->topic (aliases). */
cy_msg *cy_msg_from_publish(const cy_str *topic, const uint8_t *payload, size_t payload_len,
                            const cy_mqtt_props *props, uint8_t qos, bool retain,
                            uint8_t version, cy_buf *scratch);
bool cy_msg_expired(const cy_msg *m, int64_t now_wall);

/* conn.c */
/* libuv connection callback of the listener (listener.data = broker). */
void cy_conn_on_connection(uv_stream_t *server, int status);
/* Append bytes to the connection's output; flushed at the end of the pass. */
int cy_conn_send(cy_conn *c, const cy_mqtt_packet *p);
/* Close: MQTT 5 clients past CONNECT get DISCONNECT with reason first
 * (reason 0 = no DISCONNECT). Detaches the session. Idempotent. */
void cy_conn_close(cy_conn *c, uint8_t reason, const char *why);
void cy_conn_flush(cy_conn *c);
size_t cy_conn_backlog(const cy_conn *c);
const char *cy_conn_name(const cy_conn *c);

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
void cy_offline_unlink(cy_broker *b, cy_session *s);

/* route.c */
/* Route msg to every matching subscription. from: the publishing session
 * (for no-local), or NULL. Stores or clears the retained message when
 * msg->retain. */
void cy_route_publish(cy_broker *b, cy_msg *m, cy_session *from);
/* Send the retained messages matching filter to s (a new subscription). */
void cy_route_retained(cy_broker *b, cy_session *s, const char *filter, size_t len, uint8_t opts,
                       uint32_t sub_id);
void cy_route_set_retained(cy_broker *b, cy_msg *m);

#endif
