/* gateway_int: the MQTT gateway's internal types, shared by its files
 * (conn.c: reading, framing, dispatch, output, the link binding;
 * handle_*.c: the packet handlers; publish.c: messages from packets;
 * proxy.c: the TLS terminator; ws.c: WebSocket bridges).
 *
 * The objects and who owns what:
 *   cy_mqtt   owns every connection (list `conns`).
 *   cy_conn   one TCP connection. Points at its session (device/session.h)
 *             once CONNECT is accepted; the session holds &conn->link.
 *             Freed in its uv close callback, never inside its own read
 *             callback.
 *   cy_conn_ext  what only a connection over TLS (or one a TLS terminator
 *             handed in) has: owned by its connection, freed with it.
 *   cy_proxy  a TLS terminator's socketpair to the device's owner shard:
 *             owned by the gateway (list `proxies`); outlives its device's
 *             connection until the last plaintext for the owner is written.
 *
 * Thread: everything here runs on the shard's loop thread.
 */
#ifndef CY_GATEWAY_INT_H
#define CY_GATEWAY_INT_H

#include "core/cy_buf.h"
#include "core/cy_limit.h"
#include "core/cy_log.h"
#include "core/cy_tls.h"
#include "device/session.h"
#include "mqtt/gateway.h"
#include "mqtt/mqtt.h"
#include "router/topic.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
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
/* The first block of output that starts with an acknowledgement: 136
 * bytes, a 144-byte malloc chunk like an idle connection's and session's
 * (check with sizeof when either changes). */
#define CY_OUT_FIRST 136u

typedef struct cy_conn cy_conn;

/* Output the kernel did not take at once, written as the socket becomes
 * writable (EPOLLOUT is watched only then). Allocated only then, so an
 * idle connection does not carry it. */
typedef struct cy_wstate {
    cy_buf buf;
} cy_wstate;

/* CONN_PROXY: a TLS connection this shard terminates for the device's
 * owner shard (the plaintext goes through a cy_proxy). */
enum { CONN_NEW = 0, CONN_ACTIVE, CONN_CLOSING, CONN_HANDED, CONN_PROXY };

typedef struct cy_proxy cy_proxy;
typedef struct cy_ws cy_ws;

/* What only some connections carry, off the connection so a plain one
 * pays nothing: a TLS session (mqtts_listen), or, for a connection a TLS
 * terminator handed in, the device's address and the id its certificate
 * proved. */
typedef struct cy_conn_ext {
    cy_tls *tls;                  /* the TLS session, or NULL (a terminator's socketpair) */
    cy_proxy *proxy;              /* terminator: the pipe to the owner, or NULL */
    struct sockaddr_storage peer; /* the device's address; ss_family 0 = ask the socket */
    char *cert_id;                /* handed in: the device id its certificate proved, or NULL */
    size_t cert_id_len;
} cy_conn_ext;

/* What only some connections use: the limits a MQTT 5 client declared in
 * CONNECT, topic aliases, the publish rates while max_publish_rate or
 * max_publish_bytes_rate is set, and the acknowledgements held until peer
 * shards caught up (cluster.h). Allocated the first time a client declares
 * a limit, uses an alias, publishes under a rate limit or has an
 * acknowledgement held, so most connections (an idle fleet's) do not carry
 * it (a 3.1.1 client may: its v5 fields are 0). Freed with the connection,
 * after cy_conn_close dropped what is held (held entries point into it). */
typedef struct cy_conn_v5 {
    cy_conn *conn;      /* its connection (cy_mqtt_release_held finds it from held) */
    cy_held_owner held; /* acknowledgements held until peers caught up */
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
    cy_pub_rate rate; /* max_publish_rate, max_publish_bytes_rate (core/cy_limit.h) */
} cy_conn_v5;

/* One client connection. Every idle connection carries one, so its layout
 * is kept tight (check sizeof when adding a field: malloc's chunks go by 16
 * bytes): what only some connections need hangs off a pointer that is NULL
 * most of the time (or, for TLS, an index in the padding: a pointer would
 * cost 16 bytes of malloc's rounding), and the peer's address is not kept
 * (cy_conn_peer asks the socket when a log line needs it). The socket is
 * not a libuv handle (a uv_tcp_t is 248 bytes): it is a descriptor in the
 * gateway's own epoll set, which libuv polls as one descriptor (conn.c,
 * "The sockets"). */
struct cy_conn {
    cy_link link;          /* what the session sees of it (device/link.h) */
    cy_mqtt *g;
    cy_session *sess;
    cy_conn *prev, *next;  /* g->conns */
    cy_conn *dirty_next;   /* g->dirty: connections with output; once the socket is closed
                            * (and the connection off g->dirty), g->closed */
    int64_t last_rx;       /* mono ms of the last packet received; of the accept before CONNECT */
    cy_buf out;            /* output of this pass; no memory while idle */
    cy_buf *in;            /* partial packet carried between reads, or NULL (most of the time) */
    struct cy_wstate *w;   /* output waiting for the socket to be writable, or NULL (most
                            * of the time) */
    cy_conn_v5 *v5;        /* MQTT 5 limits, aliases, publish rates, held acknowledgements,
                            * or NULL (most of the time) */
    uint16_t keepalive;    /* s granted; 0 = none */
    uint8_t state;
    uint8_t version;       /* 0 until CONNECT */
    bool dirty : 1;
    bool clean_disconnect : 1; /* got DISCONNECT 0x00: no will */
    bool said_bye : 1;         /* got DISCONNECT (any reason): its status event says so */
    bool counted : 1;          /* counted in clients_connected */
    bool handed_in : 1;        /* arrived by handover from another shard */
    bool device : 1;           /* an isolated device: client id = device id, own topics only */
    bool internal : 1;         /* an internal device (a canary), client id = its id: it may
                                  use its private $cyan/canary/<id> (cy_conn_canary_topic) */
    bool paused : 1;           /* reading stopped: output over max_output (back-pressure) */
    bool close_at_flush : 1;   /* closing: the socket closes after its last flush */
    bool reading : 1;          /* the socket is read: changed only by set_reading (conn.c) */
    bool delayed : 1;          /* its CONNECT is held for auth_fail_delay (in `in`, unread
                                  socket); last_rx is then when the hold ends */
    bool delay_served : 1;     /* its CONNECT was held once: never again */
    bool throttled : 1;        /* 3.1.1 over max_publish_rate: reading stopped until the rate
                                  allows (the sweep resumes it) */
    bool ws : 1;               /* the MQTT end of a WebSocket bridge of this shard (ws.c) */
    uint16_t paused_s;         /* mono s (mod 65536) when reading stopped; fits the padding */
    uint32_t preauth;          /* bytes of `in` (and a TLS session's) counted in
                                  g->preauth_bytes (before CONNECT) */
    uint32_t ext;              /* 1 + index of its cy_conn_ext in g->exts; 0 = none (plain
                                  TCP: the usual case) */
    int fd;                    /* the socket; -1 once closed */
    uint8_t io;                /* what g->epfd watches of it: IO_IN, IO_OUT (conn.c); 0 = not
                                  in the set */
};

struct cy_mqtt {
    uv_loop_t *loop;
    const cy_config *cfg;
    cy_store *store;
    cy_registry *registry;
    cy_router *router;
    cy_cluster *cluster;
    cy_devices *devices;
    cy_space *space;
    cy_counters *stats;
    cy_scoreboard *sb;
    cy_limit *limit;       /* the node's failed logins and connection rates, or NULL */
    unsigned self, nshards;
    /* The connections' sockets: one epoll set, polled by libuv as one
     * descriptor (conn.c, "The sockets"). */
    int epfd;              /* -1 until the first connection or cy_mqtt_open */
    uv_poll_t epoll;       /* libuv's watch of epfd (initialised with it) */
    uv_check_t reaper;     /* frees g->closed after each poll (initialised with epfd) */
    cy_conn *closed;       /* sockets closed, connections not yet freed (by dirty_next) */
    int reserve_fd;        /* a descriptor given up to refuse a connection at EMFILE */
    int64_t emfile_logged; /* mono ms of the last "out of descriptors" line */
    uint64_t refused_emfile; /* connections refused since */
    int listen_fd;         /* the MQTT listening socket (ours), or -1 */
    uv_poll_t listener;    /* its watch, while listening */
    bool open, stopping;
    bool flushed_last;     /* stopping, and the shard's last flush has run: no pass
                            * will flush again, so a close writes its output at once */
    bool listening;        /* cy_mqtt_accept done: connections are taken from the accept queue */
    bool accept_paused;    /* listeners not watched until the next sweep (accept_pause) */
    bool stalled;          /* drill: input is ignored */
    cy_conn *conns;        /* all connections */
    uint32_t n_conns;
    uint32_t n_not_reading; /* of those, not read by libuv (reading false): the owed-input
                             * scan walks the connections only when there are any */
    uint32_t sweeps;        /* sweeps so far (cy_mqtt_sweep walks the connections at
                             * every SWEEP_IDLE_EVERY-th of a quiet fleet's) */
    bool sweep_all;         /* the next sweep walks them: one needs 250 ms precision */
    size_t preauth_bytes;  /* partial-input bytes held for sockets before CONNECT (preauth_memory) */
    cy_logrl login_log;    /* failed logins and idle sockets: one line per address per window */
    cy_conn *dirty;        /* connections with output to flush, oldest first */
    cy_conn *dirty_tail;   /* the last of them (valid when dirty is not NULL) */
    void (*on_input)(void *ctx); /* cy_mqtt_on_input's, or NULL */
    void *on_input_ctx;
    uint64_t next_assigned_id;
    uint64_t progress;     /* reads done and packets handled (the scoreboard's progress) */
    cy_buf scratch;        /* encode scratch */
    uint8_t rbuf[CY_READ_CHUNK]; /* shared read buffer (plaintext) */
    bool rbuf_busy;
    /* MQTT over TLS (mqtts_listen) */
    int tls_listen_fd;   /* the MQTTS listening socket (ours), or -1 */
    uv_poll_t tls_listener; /* its watch, while listening */
    bool tls_open;       /* tls_listen_fd is the inherited socket */
    cy_tls_ctx *tls_ctx; /* for new connections (a reload replaces it) */
    cy_conn_ext **exts;  /* by cy_conn.ext - 1; NULL = a free slot */
    uint32_t n_exts, cap_exts;
    uint32_t *free_exts; /* free slots below n_exts, a stack */
    uint32_t n_free_exts;
    cy_proxy *proxies;               /* every socketpair of connections we terminate for others */
    cy_ws *wss;                      /* every WebSocket bridge (ws.c) */
    uint8_t tls_rbuf[CY_READ_CHUNK]; /* shared read buffer (ciphertext; WebSocket frames) */
    bool tls_rbuf_busy;
};

/* Clients connected on the whole node (all shards, from the scoreboard). */
uint64_t cy_mqtt_clients_connected(const cy_mqtt *g);

/* publish.c */
/* Build a message from a decoded PUBLISH (or will), keeping the MQTT 5
 * properties that travel with it. topic overrides p->topic (aliases). */
cy_msg *cy_msg_from_publish(const cy_str *topic, const uint8_t *payload, size_t payload_len,
                            const cy_mqtt_props *props, uint8_t qos, bool retain,
                            uint8_t version, cy_buf *scratch);

/* conn.c */
/* The connection as its session sees it: the MQTT binding of cy_link. */
static inline cy_conn *cy_conn_of_link(cy_link *l)
{
    return (cy_conn *)((char *)l - offsetof(cy_conn, link));
}
/* Append bytes to the connection's output; flushed at the end of the pass. */
int cy_conn_send(cy_conn *c, const cy_mqtt_packet *p);
/* Close: MQTT 5 clients past CONNECT get DISCONNECT with reason first
 * (reason 0 = no DISCONNECT). Detaches the session and stops reading at
 * once; what `out` holds (acknowledgements of this pass among it) is
 * written by the next flush, after the store commit, and the socket closed
 * then. Idempotent. */
void cy_conn_close(cy_conn *c, uint8_t reason, const char *why);
void cy_conn_flush(cy_conn *c);
/* Bytes waiting to be written to the client: `out` and the write in flight. */
size_t cy_conn_backlog(const cy_conn *c);
/* Sweep: close (0x97 Quota exceeded, counted in limit_output_stall) a
 * connection whose reading has been stopped for back-pressure for longer
 * than max_output_stall; true if it was closed. now: mono ms. */
bool cy_conn_check_stall(cy_conn *c, int64_t now);
/* The connection's extension (c->ext must be set). */
static inline cy_conn_ext *cy_conn_ext_of(const cy_conn *c)
{
    return c->g->exts[c->ext - 1];
}
/* What the connection summary (core/cy_log.h) calls the connection: plain
 * TCP, TLS or WebSocket ended here, or a socketpair from another shard
 * that ends the device's TLS or WebSocket (which of the two, the owner is
 * not told). */
static inline cy_conn_kind cy_conn_kind_of(const cy_conn *c)
{
    if (c->ws) return CY_CONN_WS;
    if (!c->ext) return CY_CONN_MQTT;
    return cy_conn_ext_of(c)->tls ? CY_CONN_MQTTS : CY_CONN_RELAYED;
}
/* Has the device proved by certificate that it is id (len bytes): a
 * verified client certificate of our TLS session naming it, or the proof a
 * TLS terminator handed in? */
bool cy_conn_cert_is(const cy_conn *c, const char *id, size_t len);
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
 * for the dispatcher to disconnect with; cy_handle_connect may also return
 * CY_CONN_HOLD: nothing done, hold the CONNECT (its bytes and what follows
 * them) for auth_fail_delay and hand it over again then (conn.c). */
#define CY_CONN_HOLD 1
int cy_handle_connect(cy_conn *c, cy_mqtt_connect *p);
int cy_handle_publish(cy_conn *c, cy_mqtt_publish *p);
int cy_handle_puback(cy_conn *c, cy_mqtt_ack *p);
int cy_handle_pubrec(cy_conn *c, cy_mqtt_ack *p);
int cy_handle_pubrel(cy_conn *c, cy_mqtt_ack *p);
int cy_handle_pubcomp(cy_conn *c, cy_mqtt_ack *p);
int cy_handle_subscribe(cy_conn *c, cy_mqtt_subscribe *p);
int cy_handle_unsubscribe(cy_conn *c, cy_mqtt_subscribe *p);
int cy_handle_disconnect(cy_conn *c, cy_mqtt_disconnect *p);

/* conn.c, with the cluster */
/* Send p to c once the peers this packet's handling wrote to have applied
 * it, or at once if there are none (and nothing held before it on c). */
int cy_conn_send_acked(cy_conn *c, const cy_mqtt_packet *p);
/* Pass c (whose first bytes are bytes[0..len)) to shard owner, or refuse
 * it as "server unavailable" when the owner is not able to take it. */
void cy_conn_handover(cy_conn *c, unsigned owner, uint8_t version, const uint8_t *bytes,
                      size_t len);
/* Feed bytes to a connection as if read (used by adopt). */
void cy_conn_feed(cy_conn *c, const uint8_t *bytes, size_t len);
/* The peer's address into ss (a system call; for a socketpair, the device's address it
 * came with): the sockaddr, or NULL. */
const struct sockaddr *cy_conn_addr(const cy_conn *c, struct sockaddr_storage *ss);
/* 3.1.1 publisher over its rate: stop reading it until the rate allows
 * (the sweep resumes it); the rest of what was read waits in `in`. */
void cy_conn_throttle(cy_conn *c);

/* conn.c, for ws.c */
/* A connection on fd (one end of a socketpair; taken over, closed on
 * failure too) as if accepted from peer (copied; may be NULL): it may hand
 * itself over to the owner shard at CONNECT. 0, or CY_ENOMEM (fd closed). */
int cy_conn_open_pair(cy_mqtt *g, int fd, const struct sockaddr *peer);
/* ws.c: close every WebSocket bridge (shutting down). */
void cy_mqtt_ws_stop(cy_mqtt *g);
/* ws.c, every sweep: close bridges whose one side ended connect_timeout
 * ago and whose other side has not taken the last bytes. now: mono ms. */
void cy_mqtt_ws_sweep(cy_mqtt *g, int64_t now);

/* conn.c, for proxy.c */
/* Queue c for the pass's flush. */
void cy_conn_mark_dirty(cy_conn *c);
/* Start or stop reading c's socket (keeps g->n_not_reading). */
int cy_conn_read_start(cy_conn *c);
void cy_conn_read_stop(cy_conn *c);
/* Answer CONNECT with "server unavailable" (in version's form) and close. */
void cy_conn_refuse_unavailable(cy_conn *c, uint8_t version, const char *why);

/* proxy.c: this shard as the TLS terminator of another shard's device
 * (the file comment there says how). */
/* Instead of cy_conn_handover for a TLS connection: hand the owner a
 * socketpair with bytes[0..len) (the CONNECT cp onwards; name: its
 * client's). The owner is told the device id the client certificate
 * proves, if it names the one cp logs in as (its username, else its
 * client id). c becomes CONN_PROXY, or is refused as "server unavailable". */
void cy_proxy_start(cy_conn *c, unsigned owner, const cy_mqtt_connect *cp, const cy_str *name,
                    const uint8_t *bytes, size_t len);
/* The device's input ended (a FIN, a close_notify): pass the end on to the
 * owner once what it sent is written, and keep the device's connection for
 * the owner's answers (it closes when the owner closes, or connect_timeout
 * later). false: nothing to pass it to (the caller closes). */
bool cy_proxy_end_input(cy_proxy *p);
/* Plaintext from the device for the owner (copied if the pair does not
 * take it now). 0, or an error: the owner's end is gone. */
int cy_proxy_up(cy_proxy *p, const uint8_t *data, size_t len);
/* After a read's plaintext went up: write what waits, stop reading the
 * device while too much does. */
void cy_proxy_kick(cy_proxy *p);
/* The device's output drained: read the owner's plaintext again. */
void cy_proxy_resume(cy_proxy *p);
/* The device's connection closes: the pair closes once its last bytes are
 * written. Safe on NULL and twice. */
void cy_proxy_detach(cy_proxy *p);
unsigned cy_proxy_owner(const cy_proxy *p);
/* 1 if the owner's plaintext waits in the pair unread (not paused). */
uint64_t cy_proxy_owed(const cy_proxy *p);
void cy_proxy_stall(cy_mqtt *g);
/* Close pairs whose owner has not read a closed device's last bytes for
 * connect_timeout. now: mono ms. */
void cy_proxy_sweep(cy_mqtt *g, int64_t now);
/* Shutting down: close every pair now. */
void cy_proxy_stop(cy_mqtt *g);

/* Whether topic is the connection's private canary topic: an internal
 * device's $cyan/canary/<its client id>. Only that client may publish and
 * subscribe there, and no wildcard matches a $ topic, so a canary's
 * messages reach nobody else, whatever isolate_devices says. */
static inline bool cy_conn_canary_topic(const cy_conn *c, const char *t, size_t len)
{
    static const char pfx[] = "$cyan/canary/";
    size_t pl = sizeof(pfx) - 1;
    return c->internal && c->sess && len == pl + c->sess->client_id_len &&
           memcmp(t, pfx, pl) == 0 && memcmp(t + pl, c->sess->client_id, len - pl) == 0;
}

#endif
