/* coap_int: what the files of the CoAP transport share (private).
 *
 * coap.c is the front: the sockets, reading, which shard a datagram is
 * for, the DTLS terminator, frames, the output queue. endpoint.c is the
 * owner's side: one endpoint per device, its link to the device layer, the
 * device convention over CoAP, deduplication and our confirmable messages.
 */
#ifndef CY_COAP_INT_H
#define CY_COAP_INT_H

#include "coap/coap.h"
#include "coap/codec.h"
#include "coap/dtls.h"
#include "core/cy_buf.h"
#include "core/cy_limit.h"
#include "core/cy_log.h"
#include "core/cy_map.h"
#include "device/session.h"

#include <netinet/in.h>
#include <sys/socket.h>

/* RFC 7252 4.8 transmission parameters. */
#define COAP_ACK_TIMEOUT_MS 2000
#define COAP_ACK_RANDOM_FACTOR 1.5
#define COAP_MAX_RETRANSMIT 4
/* Responses remembered per device for deduplication: a device sends one
 * confirmable request at a time (NSTART 1), so its retransmissions only
 * ever repeat one of its last few message ids. */
#define COAP_SEEN 8
#define COAP_SEEN_MS 247000 /* EXCHANGE_LIFETIME */
/* Messages waiting for the one outstanding slot, per device: past it QoS
 * 0 deliveries are dropped (congested) and calls wait for the deadline. */
#define COAP_QUEUE_MAX 64
/* Calls answered by an empty ACK, waiting for their separate response. */
#define COAP_WAITS_MAX 4
#define COAP_WAIT_MS 60000
/* Datagrams read per recvmmsg. */
#define COAP_BATCH 32

/* A peer's address (IPv4 or IPv6). */
typedef struct coap_addr {
    socklen_t len;
    union {
        struct sockaddr sa;
        struct sockaddr_in in4;
        struct sockaddr_in6 in6;
    } u;
} coap_addr;

bool coap_addr_eq(const coap_addr *a, const coap_addr *b);
/* The address as compact key bytes (family, port, address): its length. */
size_t coap_addr_key(const coap_addr *a, uint8_t key[19]);
/* "1.2.3.4:5683" / "[::1]:5683" into buf. */
const char *coap_addr_text(const coap_addr *a, char *buf, size_t len);

/* How a datagram reached the owner, and so how answers go back. */
enum {
    COAP_VIA_PLAIN = 0,  /* the shared plain socket */
    COAP_VIA_DTLS = 1,   /* a DTLS session on shard `term` */
    COAP_VIA_CLOSED = 2, /* (frames only) the DTLS session at addr on `term` ended */
};

/* One message we send the device and keep until it is answered. */
enum { OUT_DELIVERY = 1, OUT_CALL = 2 };
typedef struct coap_out {
    struct coap_out *next;
    uint8_t kind;
    uint8_t qos;     /* deliveries: 0 (NON) or 1 (CON) */
    uint16_t pkt_id; /* deliveries: the session's id of it */
    int8_t obs;      /* a notification: its observation's slot; -1 = none */
    char rid[17];    /* calls: the device layer's request id */
    uint8_t tkl;
    uint8_t token[CY_COAP_TOKEN_MAX];
    uint16_t len;
    uint8_t bytes[]; /* the encoded message; bytes 2..3 (mid) set when sent */
} coap_out;

typedef struct coap_seen {
    int64_t at; /* mono ms; 0 = empty */
    uint16_t mid;
    uint16_t len;  /* of resp; 0 = no response (a NON request) */
    uint8_t *resp; /* owned */
} coap_seen;

typedef struct coap_wait {
    int64_t until; /* mono ms; 0 = empty */
    uint8_t tkl;
    uint8_t token[CY_COAP_TOKEN_MAX];
    char rid[17];
    uint8_t *req; /* owned: the request as sent (to ask for a next Block2 block) */
    uint16_t req_len;
} coap_wait;

/* A call's answer arriving in Block2 blocks, one at a time per device. */
typedef struct coap_block2 {
    uint8_t *buf; /* owned */
    size_t len;
    uint32_t next; /* the block number expected */
    char rid[17];  /* the call's; "" = none */
} coap_block2;

/* An observation (RFC 7641): GET /s/<filter> with Observe 0 subscribed the
 * filter with sub_id COAP_OBS_SUB_ID + its slot; matching messages go as
 * notifications with its token. Soft state: forgotten offline. */
#define COAP_OBS_MAX 8
#define COAP_OBS_SUB_ID 1000
typedef struct coap_obs {
    char *filter; /* owned; NULL = free slot */
    uint16_t flen;
    uint8_t tkl;
    uint8_t token[CY_COAP_TOKEN_MAX];
} coap_obs;

/* A request body arriving in blocks (RFC 7959 Block1), one per device. */
#define COAP_BLOCK1_MAX 65536
typedef struct coap_block1 {
    uint8_t *buf; /* owned */
    size_t len;
    uint32_t next; /* the block number expected */
    uint8_t szx;
    uint8_t code;  /* the method */
    uint64_t path; /* hash of the Uri-Path and Uri-Query: one resource per transfer */
    int64_t at;    /* mono ms of the last block */
} coap_block1;

typedef struct coap_ep {
    cy_link link; /* first: the device layer's view */
    cy_coap *c;
    cy_session *sess;  /* while online */
    coap_addr addr;    /* where it was last heard from */
    uint8_t via;       /* COAP_VIA_PLAIN or COAP_VIA_DTLS */
    uint8_t term;      /* DTLS: the terminator shard */
    uint64_t term_gen; /* DTLS: its spawn number when last heard through it */
    bool online;
    bool busy_linked;   /* on c->busy (has an outstanding message) */
    int64_t last_rx;    /* mono ms */
    int64_t offline_at; /* mono ms it went offline; 0 while online */
    coap_seen seen[COAP_SEEN];
    unsigned seen_next;
    coap_out *q_head, *q_tail; /* waiting for the outstanding slot */
    unsigned n_q;
    coap_out *inflight; /* the outstanding confirmable message, or NULL */
    uint16_t inflight_mid;
    uint8_t retx_n;
    int64_t retx_at;  /* mono ms of the next retransmission */
    uint32_t retx_ms; /* the current timeout */
    uint32_t mid_seq, tok_seq;
    coap_wait waits[COAP_WAITS_MAX];
    coap_obs obs[COAP_OBS_MAX];
    uint32_t obs_seq; /* Observe sequence numbers of notifications */
    coap_block1 blk;
    coap_block2 ans;    /* a call's answer in blocks */
    bool addr_verified; /* plain: this address echoed our Echo value (RFC 9175) */
    cy_pub_rate rate;   /* max_publish_rate, max_publish_bytes_rate (core/cy_limit.h) */
    size_t req_len;     /* the datagram being answered (amplification bound) */
    struct coap_ep *busy_next, *busy_prev;
    uint8_t akey[19]; /* plain: addr as a key of c->by_addr (akey_len 0: not in it) */
    uint8_t akey_len;
    uint16_t id_len;
    char id[]; /* NUL-terminated device id: the key in c->eps */
} coap_ep;

struct cy_coap {
    uv_loop_t *loop;
    const cy_config *cfg;
    cy_registry *registry;
    cy_router *router;
    cy_cluster *cluster;
    cy_devices *devices;
    cy_space *space;
    cy_counters *stats;
    cy_limit *limit;   /* the node's failed logins (DTLS), or NULL */
    cy_logrl auth_log; /* failed and refused DTLS logins: a line per address per 10 s */
    unsigned self, nshards;
    /* sockets */
    int udp_fd, dtls_fd; /* our duplicates; -1 = off */
    uv_poll_t udp_poll, dtls_poll;
    bool udp_polling, dtls_polling, stopping, stalled, accepting;
    cy_dtls *dtls; /* the DTLS terminator, when dtls_fd >= 0 */
    /* plain: which shard owns a source address (learned from requests that
     * name their device), so a device's pings reach its owner */
    cy_map addr_owner;
    /* the owner's side */
    cy_map eps;     /* device id -> coap_ep */
    cy_map by_addr; /* plain endpoints by the address last heard: akey -> coap_ep */
    coap_ep *busy;  /* endpoints with an outstanding message */
    uint32_t online;
    uint8_t echo_key[32]; /* RFC 9175 Echo values: HMAC over the address */
    uint64_t rng;         /* xorshift state (jitter, first ids), seeded from RAND_bytes */
    /* output: records for cy_coap_flush (see coap.c) */
    cy_buf out;
    uint64_t progress;
    size_t req_len; /* bytes of the datagram being handled (bounds plain answers) */
    uint8_t *rbuf;  /* COAP_BATCH datagrams of rbuf_each bytes */
    size_t rbuf_each;
};

/* ---- front (coap.c) ---- */

/* Queue a datagram for the device at addr, reached via (term for DTLS):
 * sent in cy_coap_flush. */
void coap_output(cy_coap *c, uint8_t via, uint8_t term, const coap_addr *a, const uint8_t *p,
                 size_t len);
/* The shard numbered in our messages' ids and tokens (plain routing). */
static inline uint16_t coap_mid_for(const cy_coap *c, uint32_t seq)
{
    uint32_t span = 65536u / c->nshards; /* ids k * nshards + self, k < span */
    return (uint16_t)((seq % span) * c->nshards + c->self);
}

/* A pseudo-random 32-bit number (not for secrets: tokens use RAND_bytes). */
uint32_t coap_rand32(cy_coap *c);

/* ---- owner (endpoint.c) ---- */

/* A datagram for device id (len id_len), decoded as m (raw: its bytes),
 * from addr, via (term). The device exists (plain: checked here). */
void coap_ep_input(cy_coap *c, const char *id, size_t id_len, uint8_t via, uint8_t term,
                   const coap_addr *a, const cy_coap_msg *m, const uint8_t *raw, size_t rawlen);
/* The DTLS session at addr on term ended: a device heard there goes offline. */
void coap_ep_closed(cy_coap *c, const char *id, size_t id_len, uint8_t term, const coap_addr *a);
void coap_ep_tick(cy_coap *c, int64_t now);
void coap_ep_sweep(cy_coap *c, int64_t now);
/* Offline every endpoint and free them all. */
void coap_ep_free_all(cy_coap *c, bool offline);
uint64_t coap_ep_owed(const cy_coap *c, int64_t now);
/* Answer a request m from a that cannot go further (4.01, 5.03, 4.00...):
 * a piggybacked response to a CON, a NON one to a NON; diag: a short
 * diagnostic payload (may be NULL). */
void coap_answer_error(cy_coap *c, uint8_t via, uint8_t term, const coap_addr *a,
                       const cy_coap_msg *m, uint8_t code, const char *diag);

#endif
