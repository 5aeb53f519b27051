/* cluster: routing between the shards of one node.
 *
 * A client id belongs to one shard (cy_shard_of). The cluster of a shard
 * keeps its links to the other shards (the bus, bus.h) and carries over
 * them what routing across shards needs:
 *   - interest: which filters this shard's subscribers hold, told to every
 *     peer; a peer's interest is entered in our router as a subscriber of
 *     the remote kind "peer shard", so one match finds local subscribers
 *     and the shards to forward to;
 *   - forwarding: a message a peer's interest matches goes to it as one
 *     frame; QoS 1/2 and retained updates are durable (outbox in memory and
 *     in the store, replayed until acknowledged, applied once);
 *   - held acknowledgements: an acknowledgement that must not leave before
 *     peers applied what it acknowledges (a SUBACK before the new interest
 *     is known everywhere, a PUBACK of a retained update);
 *   - handover: passing a client's socket to the shard that owns it;
 *   - frames of the layers above (the HTTP API's requests to owner shards)
 *     to their hook.
 * Everything is a no-op with one shard (no bus).
 *
 * Ownership: cy_cluster_new borrows loop, cfg, store, router, stats and sb
 * (NULL: none), which must outlive it. The cluster subscribes its peers'
 * interest in the router; cy_cluster_free removes nothing from the router
 * (free the router after the cluster). Held acknowledgements are copied.
 * Errors: CY_ENOMEM, CY_EPIPE (no link to that peer), -errno from the bus.
 * Thread: the shard's loop thread only.
 */
#ifndef CY_CLUSTER_H
#define CY_CLUSTER_H

#include "core/cy_config.h"
#include "health/metrics.h"
#include "health/scoreboard.h"
#include "router/router.h"
#include "store/store.h"

#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

/* Frame types of the layers above, passed to the frame hook as they come
 * (never durable, never holding an acknowledgement). */
#define CY_FRAME_API_REQ 8
#define CY_FRAME_API_RESP 9
#define CY_FRAME_COAP_IN 10  /* a CoAP datagram for the device's owner (coap.c) */
#define CY_FRAME_COAP_OUT 11 /* a CoAP datagram for a DTLS terminator to send */
#define CY_FRAME_COAP_KICK 12 /* close the DTLS sessions of a device (it was deleted) */

typedef struct cy_cluster cy_cluster;

/* Which shard owns a client id: FNV-1a 64 of its bytes modulo nshards.
 * Stable across versions: it decides which shard file holds a session. */
unsigned cy_shard_of(const char *client_id, size_t len, unsigned nshards);

/* Embedded in whatever sends held acknowledgements (a connection). */
typedef struct cy_held_owner {
    uint64_t epoch; /* release scratch: an earlier entry of this owner still waits */
    uint32_t n;     /* entries held */
} cy_held_owner;

/* What a TLS terminator says about a connection it hands over (one end of
 * a socketpair that carries the device's plaintext; docs/architecture.md,
 * "MQTT over TLS"). Borrowed. */
typedef struct cy_handover_info {
    const struct sockaddr *peer; /* the device's address (for logs), or NULL */
    const char *cert_id;         /* the device id its verified client certificate */
    size_t cert_id_len;          /* names (0: none), for a login without secret */
} cy_handover_info;
#define CY_HANDOVER_CERT_ID_MAX 256

typedef struct cy_cluster_hooks {
    /* A connection handed over by shard `from`: fd is ours, bytes were
     * read from it already. info: NULL for a client's own TCP socket; a
     * TLS terminator's socketpair end carries the device's address and
     * what its certificate proved (borrowed for the call). */
    void (*adopt)(void *ctx, unsigned from, int fd, const cy_handover_info *info,
                  const uint8_t *bytes, size_t len);
    /* A frame of type CY_FRAME_API_REQ, _API_RESP or _COAP_*. */
    void (*frame)(void *ctx, unsigned from, uint8_t type, const uint8_t *body, size_t len);
    /* A held acknowledgement may go now: append bytes to o's output. */
    void (*release)(void *ctx, cy_held_owner *o, const uint8_t *bytes, size_t len);
    void *ctx;
} cy_cluster_hooks;

typedef struct cy_cluster_options {
    unsigned self, nshards; /* nshards 1: no bus, all of this is idle */
    uint64_t generation;    /* our spawn number, for the bus HELLO */
    cy_scoreboard *sb;      /* borrowed, or NULL */
} cy_cluster_options;

/* Also makes the "peer shard" subscriber kind and sets the router's hooks. */
int cy_cluster_new(uv_loop_t *loop, const cy_config *cfg, cy_store *store, cy_router *router,
                   cy_counters *stats, const cy_cluster_options *o, cy_cluster **out);
void cy_cluster_set_hooks(cy_cluster *cl, const cy_cluster_hooks *h);
/* Join the bus (data_dir/run) when there are several shards. */
int cy_cluster_start(cy_cluster *cl);
/* Store peer state, close the bus. */
void cy_cluster_stop(cy_cluster *cl);
/* Free everything (the bus too). Safe on NULL. */
void cy_cluster_free(cy_cluster *cl);
/* Drill: frames from peers are ignored from now on. */
void cy_cluster_stall(cy_cluster *cl);
/* A whole frame from peer shard `from`, type and body (borrowed for the
 * call) as the bus read them: what the bus's on_frame runs. Exported so
 * that the frame decoders can be driven without sockets (the fuzzer,
 * tests/fuzz/fuzz_bus.c). Frames from ourselves, from an index past
 * nshards, or after cy_cluster_stall are ignored. */
void cy_cluster_input(cy_cluster *cl, unsigned from, uint8_t type, const uint8_t *body, size_t len);

/* ---- subscriptions of local subscribers (router + interest) ---- */

int cy_cluster_subscribe(cy_cluster *cl, cy_subscriber *s, const char *filter, size_t len,
                         uint8_t opts, uint32_t sub_id);
void cy_cluster_unsubscribe(cy_cluster *cl, cy_subscriber *s, const char *filter, size_t len);

/* ---- held acknowledgements ---- */

/* Before handling one packet: forget which peers the last one wrote to. */
void cy_cluster_hold_begin(cy_cluster *cl);
/* Must an acknowledgement to o wait (this packet wrote to peers, or o has
 * earlier ones waiting: the wire keeps its order)? */
bool cy_cluster_must_hold(const cy_cluster *cl, const cy_held_owner *o);
/* Hold bytes (copied) for o until the peers this packet wrote to applied
 * it (wait_peers; else only until o's earlier entries went), or
 * CY_HOLD_MS at most (from the loop's time, uv_now, when held). Errors:
 * CY_ENOMEM (then send at once). */
int cy_cluster_hold(cy_cluster *cl, cy_held_owner *o, bool wait_peers, const uint8_t *bytes,
                    size_t len);
/* Forget o's held acknowledgements (it is closing). */
void cy_cluster_drop_held(cy_cluster *cl, cy_held_owner *o);

/* ---- peers ---- */

/* Send a frame of the layers above to peer j (counted for the watchdog,
 * never held): the concatenation of a and c. Errors: CY_EPIPE, bus errors. */
int cy_cluster_send(cy_cluster *cl, unsigned j, uint8_t type, const void *a, size_t alen,
                    const void *c, size_t clen);
/* Is shard i able to take work now (running, beating, linked)? why: filled when not. */
bool cy_cluster_shard_ready(const cy_cluster *cl, unsigned i, char *why, size_t whylen);
/* Is our link to shard i up (always, for ourselves)? *generation (may be
 * NULL): its spawn number as its last link said (ours for ourselves), so a
 * layer that keeps state tied to another shard's process (a DTLS session
 * there) sees that process replaced. */
bool cy_cluster_peer_up(const cy_cluster *cl, unsigned i, uint64_t *generation);
/* Are our links to every peer up and every peer's interest known, so that
 * what our clients publish reaches every subscriber? why: filled when not. */
bool cy_cluster_ready(const cy_cluster *cl, char *why, size_t whylen);
/* Pass the socket tcp (whose first bytes are bytes[0..len)) to shard
 * owner; cb(arg, status) runs once the bus wrote it (status < 0: failed).
 * info (may be NULL; copied): what a TLS terminator tells the owner with
 * a socketpair end (tcp may wrap an AF_UNIX stream socket).
 * Errors: the bus's (then cb does not run), CY_EINVAL (info too large). */
int cy_cluster_handover(cy_cluster *cl, unsigned owner, uv_tcp_t *tcp, const cy_handover_info *info,
                        const uint8_t *bytes, size_t len, void (*cb)(void *arg, int status),
                        void *arg);

/* ---- the shard's loop ---- */

/* Pass hooks (shard.h): at the start of the pass's end, send the frames
 * routed this pass (before the commit, which may wait for the disk);
 * before each commit, store peer state; after it, acknowledge applied
 * frames and write durable frames (never before the commit that holds
 * them). */
void cy_cluster_flush(cy_cluster *cl);
void cy_cluster_before_commit(cy_cluster *cl);
void cy_cluster_after_commit(cy_cluster *cl);
/* The shard's sweep period: cy_cluster_sweep runs this often (lazy ACKs
 * lag by at most one sweep; see ack_lazily in cluster.c). */
#define CY_SWEEP_MS 250
/* Every sweep: release held acknowledgements past their deadline, resend
 * snapshots that failed, send lazy ACKs. */
void cy_cluster_sweep(cy_cluster *cl);
/* Write bus_sent / bus_acked of every peer to our scoreboard slot. */
void cy_cluster_beat(const cy_cluster *cl, cy_sb_slot *slot);
/* Units of work done, for the scoreboard's progress: frames from peers
 * applied, connections adopted, held acknowledgements released, durable
 * frames written to their peer. */
uint64_t cy_cluster_progress(const cy_cluster *cl);

/* ---- owed work, for the progress watchdog (health/watchdog.h) ---- */

/* Held acknowledgements that may go now and have not: past their
 * deadline, or every peer they wait for applied its part (or is down),
 * and no earlier entry of their owner still waits. One that waits for a
 * live peer within its deadline is that peer's work (the peer's backlog
 * shows it), not ours. The sweep releases what reached its deadline, so a
 * healthy shard owes these for at most CY_SWEEP_MS. now: mono ms. Uses the
 * owners' release scratch (no other change). Cost: a walk of the held
 * entries, each checked against the shards it waits for. */
size_t cy_cluster_owed_held(cy_cluster *cl, int64_t now);
/* Durable frames for peers whose link is up, not yet written although the
 * bus would take them now (nothing queued on the link): a healthy shard
 * writes them after the commit of the pass that made them. Frames written
 * and not acknowledged are the peer's work (its backlog); frames for a
 * peer that is down wait for it and are not this shard's fault. Cost:
 * O(shards). */
size_t cy_cluster_owed_frames(const cy_cluster *cl);
/* Durable frames waiting for peers' acknowledgements. */
size_t cy_cluster_outbox_frames(const cy_cluster *cl);

/* ---- store loader callbacks (ctx: the cluster) ---- */

int cy_cluster_load_peer(void *ctx, unsigned peer, uint64_t last_sent, uint64_t last_applied);
int cy_cluster_load_outbox(void *ctx, unsigned peer, uint64_t seq, const uint8_t *frame,
                           size_t len);

#endif
