/* cluster: routing between the shards of one node.
 *
 * A client id belongs to one shard (cy_shard_of). Any shard may accept a
 * TCP connection; when its CONNECT names a client of another shard, the
 * socket and the bytes read so far are handed to the owner over the bus, if
 * the owner is alive (scoreboard heartbeat fresh, link up); if it is not,
 * the client is refused at once with "server unavailable" (MQTT 5 0x88,
 * 3.1.1 return code 3) instead of waiting on a hung shard.
 *
 * Interest. Each shard tells every peer which filters its local sessions
 * hold (a snapshot when the link comes up, then one frame per filter that
 * gains its first or loses its last local subscriber). A peer's interest
 * lives in the same subscription tree as local sessions, with the peer's
 * cy_peer as owner, so one match of a topic finds local subscribers, the
 * shards to forward to, and for a shared group one member among local
 * sessions and peers (round robin).
 *
 * Forwarding. A publish that reaches peer j is sent to it as one frame. A
 * frame that carries acknowledged work (QoS 1/2 for a persistent session
 * there, or a retained update,
 * which goes to every peer) is durable: it gets the next sequence number
 * for j, is kept in the outbox in memory and in the store, and is written to
 * the bus only after this pass's commit, so a crash can never reuse a
 * sequence number the peer has seen. The peer applies frames in order,
 * stores the last sequence number it applied in the same commit as the work,
 * then acknowledges; the sender drops acknowledged frames. After either side
 * restarts the sender replays what is unacknowledged and the receiver skips
 * what it has applied: at least once on the wire, exactly once in effect.
 * QoS 0 frames are not durable: sent at once when the link is up, else
 * dropped (and counted). Nor is a QoS 1/2 frame whose every target on the
 * peer is a clean session (no subscription it matched there carries
 * CY_SUBOPT_DURABLE, which the peer's interest says): it goes at once like
 * QoS 0. The outbox could save it from nothing: the sessions it was for
 * end with their shard, and the bus breaks only when one does. The
 * publisher's acknowledgement waits (held) until the frame is in the
 * kernel's socket buffer to the peer (the pass's bus flush left nothing of
 * that link unwritten), or else until the peer acknowledges it. Once
 * written the frame no longer depends on us: if we die the peer still
 * reads what was sent before the end of the stream, and if the peer dies
 * its clean sessions go with it. Waiting for the peer's ACK instead cost a
 * wake-up of each shard per batch, and the publisher that time.
 *
 * The outbox is bounded in bytes per peer (max_outbox_bytes), and the bound
 * is enforced before the acknowledgement, never after: a client's publish
 * that needs a durable frame for a peer whose outbox is full is refused
 * whole (admit(), a router hook; MQTT 5 0x97 Quota exceeded, a 3.1.1 client is
 * disconnected), before anything of it is routed. A frame in the outbox is
 * acknowledged work and is only ever removed by the peer's ACK; work that
 * cannot be refused (a will firing, an API publish) goes in past the bound.
 * The pump keeps a cursor on the first frame not yet written on the current
 * link, so a pass costs the frames it writes, not the length of the outbox.
 *
 * Frames (type: body), integers big endian:
 *   1 INTEREST_RESET: u64 its number among the frames of its link (1 on a
 *     new link; more when a snapshot is resent on a link in use)
 *   2 INTEREST_ADD / 3 INTEREST_DEL: filter (ADD: held by clean sessions
 *     only, or no longer by a persistent one)
 *   21 INTEREST_ADD_DURABLE: filter, held by at least one persistent
 *     session (CY_SUBOPT_DURABLE): a QoS 1/2 forward for it is durable
 *   7 INTEREST_END: - (the snapshot that RESET began is complete)
 *   4 PUBLISH: u64 seq (0 = not durable), u8 flags (bits 0-1 QoS, 2 retain
 *     as published, 3 route to local subscribers, 4 set as retained, 5 an
 *     event), i64 expiry_at, i64 retain_ts, [u64 event seq, if an event],
 *     u16 topic len, topic, u32 props len,
 *     props, u8 group count, {u16 len, "$share/g/f"}..., payload (the rest)
 *   5 ACK: u64 frames applied on this link, u64 last durable seq applied
 *   6 HANDOVER (with a TCP handle): the bytes already read from it
 *   20 HANDOVER_TLS (with a TLS terminator's socketpair end): u8 address
 *     length, the device's struct sockaddr, u16 id length, the device id
 *     its client certificate proved, the plaintext bytes already read
 *   8 API_REQ, 9 API_RESP: the HTTP API's requests to owner shards and
 *     their answers (api_int.h); not durable, and never hold an ack
 */
#include "cluster/cluster.h"

#include "cluster/bus.h"
#include "core/cy_map.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

enum {
    F_INTEREST_RESET = 1,
    F_INTEREST_ADD = 2,
    F_INTEREST_DEL = 3,
    F_PUBLISH = 4,
    F_ACK = 5,
    F_HANDOVER = 6,
    F_INTEREST_END = 7,
    /* 8..12: CY_FRAME_* of the layers above */
    F_HANDOVER_TLS = 20, /* a TLS terminator's socketpair: cy_handover_info, then the bytes */
    F_INTEREST_ADD_DURABLE = 21,
};

enum { FL_RETAIN = 4, FL_ROUTE = 8, FL_SET_RETAINED = 16, FL_EVENT = 32 };

/* A frame for a peer shard that must survive until the peer acknowledges it. */
typedef struct cy_outframe {
    struct cy_outframe *next;
    uint64_t seq;
    size_t len;
    uint8_t data[];
} cy_outframe;

/* What this shard knows of one peer shard. Its `sub` is the subscriber of
 * the peer's interest in our router. */
typedef struct cy_peer {
    cy_subscriber sub;
    unsigned index;
    bool up;                     /* our link to it is usable */
    bool resync;                 /* interest changes were lost: send a full snapshot */
    bool state_dirty;            /* last_sent / last_applied to be stored */
    bool ack_due;                /* frames applied since the last ACK we sent */
    bool ack_lazy;               /* of those, only ones nobody waits on: the sweep acknowledges */
    uint64_t last_sent;          /* last sequence number given to a durable frame for it */
    uint64_t last_applied;       /* last durable sequence number applied from it */
    uint64_t acked;              /* highest sequence number it acknowledged */
    uint64_t written;            /* highest sequence number written on the current link */
    uint64_t frames_out;         /* frames sent on the current link (scoreboard bus_sent) */
    uint64_t frames_out_acked;   /* of those, acknowledged (scoreboard bus_acked) */
    uint64_t frames_out_written; /* of those, known to be in the socket (none left queued) */
    uint64_t frames_in;          /* frames applied from its current link */
    cy_outframe *out_head, *out_tail; /* unacknowledged durable frames, by seq */
    cy_outframe *out_next; /* first of them not yet written on this link (seq > written) */
    size_t out_count;
    size_t out_bytes;    /* bytes of their frames, bounded by max_outbox_bytes */
    cy_map filters;      /* its interest: filter -> pfilter */
    uint64_t mark;       /* its current interest snapshot */
    uint64_t generation; /* its spawn number, from the last link's HELLO */
} cy_peer;

/* What a held acknowledgement waits for from one peer: its first
 * `frames` frames on the current link applied (or only written, see
 * cy_held.written), and its durable frames up to `seq` applied. */
typedef struct cy_held_need {
    uint64_t frames;
    uint64_t seq;
    unsigned peer;
} cy_held_need;

/* An acknowledgement held until peer shards have applied what it
 * acknowledges, or until its deadline. One allocation: the header, one
 * need per peer waited for when it was held (usually one), the encoded
 * packet. Kept small: one is made per PUBACK of a message that crossed
 * shards, and a fixed array per shard made each a 1 KiB allocation past
 * malloc's per-thread cache. */
typedef struct cy_held {
    struct cy_held *next;
    cy_held_owner *o;
    int64_t deadline;    /* mono ms */
    uint64_t mask;       /* peers still waited for */
    uint64_t written;    /* of those, the peers whose frames need only be written */
    size_t len;          /* bytes of the packet */
    unsigned n_need;     /* entries of need */
    cy_held_need need[]; /* then the packet's bytes */
} cy_held;

static uint8_t *held_bytes(cy_held *h)
{
    return (uint8_t *)(h->need + h->n_need);
}

/* One local filter and how many local subscribers hold it (interest), of
 * them how many with CY_SUBOPT_DURABLE. */
typedef struct cy_interest {
    uint32_t refs;
    uint32_t durable;
    uint32_t len;
    char filter[];
} cy_interest;

struct cy_cluster {
    uv_loop_t *loop;
    const cy_config *cfg;
    cy_store *store;
    cy_router *router;
    cy_counters *stats;
    cy_scoreboard *sb; /* borrowed, or NULL */
    cy_cluster_hooks hooks;
    unsigned self, nshards;
    uint64_t generation; /* our spawn number */
    cy_bus *bus;         /* NULL with one shard */
    bool stalled;        /* drill: frames from peers are ignored */
    uint64_t progress;   /* work done (cy_cluster_progress): the scoreboard's progress */
    cy_sub_kind peer_kind;
    cy_peer peers[CY_SB_MAX_SHARDS];
    cy_map interest;           /* local filter -> cy_interest */
    uint64_t fwd_mask;         /* routing scratch: peers the message being routed was sent to */
    uint64_t outbox_full;      /* peers whose outbox holds max_outbox_bytes or more */
    cy_logrl outbox_log;       /* refusals at max_outbox_bytes, per peer */
    cy_buf frame;              /* frame encode scratch */
    cy_held *held, *held_tail; /* held acknowledgements, in order */
    uint64_t epoch;            /* release scratch */
    uint64_t hold_mask;        /* scratch while handling a packet: peers to wait for */
    uint64_t hold_written;     /* of those, where the frames written suffice */
    uint64_t hold_frames[CY_SB_MAX_SHARDS];
    uint64_t hold_seq[CY_SB_MAX_SHARDS];
    uint64_t snap_from; /* peers whose interest snapshot we hold (this incarnation) */
};

/* One line per peer per window for refusals at max_outbox_bytes. */
#define OUTBOX_LOG_WINDOW_MS 10000
#define OUTBOX_LOG_BURST 20

unsigned cy_shard_of(const char *client_id, size_t len, unsigned nshards)
{
    return nshards <= 1 ? 0 : (unsigned)(cy_hash(client_id, len) % nshards);
}

/* Acknowledgements wait at most this long for peers (a hung peer is found
 * by the supervisor; its devices, not everyone's, pay for it). */
#define CY_HOLD_MS 1000

/* ---- held acknowledgements ---- */

/* The packet being handled waits for peer j: for its first `frames`
 * frames on the current link to be applied (or only written, if
 * written_ok and nothing else of this packet waits for j), and for the
 * durable frames up to seq to be applied. */
static void hold_need(cy_cluster *cl, unsigned j, uint64_t frames, uint64_t seq, bool written_ok)
{
    uint64_t bit = UINT64_C(1) << j;
    if (!(cl->hold_mask & bit)) {
        cl->hold_mask |= bit;
        cl->hold_frames[j] = cl->hold_seq[j] = 0;
        cl->hold_written |= bit;
    }
    if (!written_ok || seq) cl->hold_written &= ~bit;
    if (frames > cl->hold_frames[j]) cl->hold_frames[j] = frames;
    if (seq > cl->hold_seq[j]) cl->hold_seq[j] = seq;
}

void cy_cluster_hold_begin(cy_cluster *cl)
{
    cl->hold_mask = 0;
}

bool cy_cluster_must_hold(const cy_cluster *cl, const cy_held_owner *o)
{
    return cl->hold_mask || o->n;
}

int cy_cluster_hold(cy_cluster *cl, cy_held_owner *o, bool wait_peers, const uint8_t *bytes,
                    size_t len)
{
    /* Packets queued behind a held one wait for nothing but it. */
    uint64_t mask = wait_peers ? cl->hold_mask : 0;
    unsigned n = (unsigned)__builtin_popcountll(mask);
    cy_held *h = cy_malloc(sizeof(*h) + n * sizeof(cy_held_need) + len);
    if (!h) return CY_ENOMEM;
    h->next = NULL;
    h->o = o;
    /* The loop's clock (the start of this loop iteration; the same
     * monotonic milliseconds as cy_mono_ms): a clock read per held PUBACK
     * was a visible part of a forwarded message's cost. Early by at most
     * the iteration's time so far, against a deadline of a second. */
    h->deadline = (int64_t)uv_now(cl->loop) + CY_HOLD_MS;
    h->mask = mask;
    h->written = mask & cl->hold_written;
    h->n_need = n;
    unsigned k = 0;
    for (uint64_t m = mask; m; m &= m - 1) {
        unsigned j = (unsigned)__builtin_ctzll(m);
        h->need[k++] = (cy_held_need){cl->hold_frames[j], cl->hold_seq[j], j};
    }
    h->len = len;
    memcpy(held_bytes(h), bytes, len);
    if (cl->held_tail)
        cl->held_tail->next = h;
    else
        cl->held = h;
    cl->held_tail = h;
    o->n++;
    return 0;
}

/* Has peer p applied what h waits for from it (need: h's entry for it),
 * or is it down? */
static bool peer_done(const cy_peer *p, const cy_held *h, const cy_held_need *need)
{
    if (!p->up) return true;
    uint64_t frames = (h->written >> need->peer) & 1 ? p->frames_out_written : 0;
    if (p->frames_out_acked > frames) frames = p->frames_out_acked;
    return frames >= need->frames && p->acked >= need->seq;
}

/* May h go now: past its deadline, or every peer it waits for done? No
 * change to h: the owed-work count asks too. */
static bool may_go(const cy_cluster *cl, const cy_held *h, int64_t now)
{
    if (now >= h->deadline) return true;
    for (unsigned k = 0; k < h->n_need; k++) {
        const cy_held_need *need = &h->need[k];
        if ((h->mask >> need->peer) & 1 && !peer_done(&cl->peers[need->peer], h, need))
            return false;
    }
    return true;
}

/* may_go, forgetting the peers h no longer waits for: a peer that caught
 * up, then came back on a new link with its counts reset, holds h no
 * more. */
static bool caught_up(cy_cluster *cl, cy_held *h, int64_t now)
{
    if (now >= h->deadline) return true;
    for (unsigned k = 0; k < h->n_need && h->mask; k++) {
        const cy_held_need *need = &h->need[k];
        if ((h->mask >> need->peer) & 1 && peer_done(&cl->peers[need->peer], h, need))
            h->mask &= ~(UINT64_C(1) << need->peer);
    }
    return h->mask == 0;
}

/* Release in order: an entry waits for the earlier entries of its owner. */
static void release(cy_cluster *cl)
{
    if (!cl->held) return;
    int64_t now = cy_mono_ms();
    uint64_t blocked_epoch = ++cl->epoch; /* marks connections with an earlier entry waiting */
    cy_held **pp = &cl->held, *last = NULL;
    while (*pp) {
        cy_held *h = *pp;
        cy_held_owner *o = h->o;
        bool blocked = o->epoch == blocked_epoch;
        if (!blocked && caught_up(cl, h, now)) {
            o->n--;
            cl->progress++; /* an acknowledgement went */
            *pp = h->next;
            if (cl->hooks.release) cl->hooks.release(cl->hooks.ctx, o, held_bytes(h), h->len);
            cy_free(h);
            continue;
        }
        o->epoch = blocked_epoch;
        last = h;
        pp = &h->next;
    }
    cl->held_tail = last;
}

size_t cy_cluster_owed_held(cy_cluster *cl, int64_t now)
{
    /* As release() would go through them, without releasing: an entry
     * behind one of its owner's that must wait is not owed either. */
    uint64_t blocked_epoch = ++cl->epoch;
    size_t n = 0;
    for (cy_held *h = cl->held; h; h = h->next) {
        if (h->o->epoch != blocked_epoch && may_go(cl, h, now))
            n++;
        else
            h->o->epoch = blocked_epoch;
    }
    return n;
}

void cy_cluster_drop_held(cy_cluster *cl, cy_held_owner *o)
{
    cy_held **pp = &cl->held, *last = NULL;
    while (*pp) {
        cy_held *h = *pp;
        if (h->o == o) {
            *pp = h->next;
            cy_free(h);
            continue;
        }
        last = h;
        pp = &h->next;
    }
    cl->held_tail = last;
    o->n = 0;
}

/* ---- interest ---- */

static void send_counted(cy_cluster *cl, cy_peer *p, uint8_t type, const void *body, size_t len)
{
    if (!p->up) return;
    if (cy_bus_send(cl->bus, p->index, type, body, len) == 0) {
        p->frames_out++;
        /* whoever acknowledges the packet being handled waits for this frame */
        hold_need(cl, p->index, p->frames_out, 0, false);
    } else {
        p->resync = true;
    }
}

int cy_cluster_send(cy_cluster *cl, unsigned j, uint8_t type, const void *a, size_t alen,
                    const void *c, size_t clen)
{
    cy_peer *p = &cl->peers[j];
    if (!p->up) return CY_EPIPE;
    int rc = cy_bus_send2(cl->bus, j, type, a, alen, c, clen);
    if (rc == 0) p->frames_out++;
    return rc;
}

static void broadcast_interest(cy_cluster *cl, uint8_t type, const char *filter, size_t len)
{
    for (unsigned j = 0; j < cl->nshards; j++)
        if (j != cl->self) send_counted(cl, &cl->peers[j], type, filter, len);
}

/* in's durable count moved by delta: tell the peers when it crossed zero. */
static void interest_durable(cy_cluster *cl, cy_interest *in, int delta)
{
    uint32_t was = in->durable;
    in->durable = (uint32_t)((int64_t)in->durable + delta);
    if ((was > 0) != (in->durable > 0))
        broadcast_interest(cl, in->durable ? F_INTEREST_ADD_DURABLE : F_INTEREST_ADD, in->filter,
                           in->len);
}

int cy_cluster_subscribe(cy_cluster *cl, cy_subscriber *s, const char *filter, size_t len,
                         uint8_t opts, uint32_t sub_id)
{
    int prev = cl->nshards > 1 ? cy_router_sub_opts(cl->router, s, filter, len) : CY_ENOENT;
    bool existed = false;
    int rc = cy_router_subscribe(cl->router, s, filter, len, opts, sub_id, &existed);
    if (rc || cl->nshards <= 1) return rc;
    int durable = (opts & CY_SUBOPT_DURABLE) ? 1 : 0;
    cy_interest *in = cy_map_get(&cl->interest, filter, len);
    if (existed) { /* new options: maybe another durability */
        int was = prev >= 0 && (prev & CY_SUBOPT_DURABLE) ? 1 : 0;
        if (in && durable != was) interest_durable(cl, in, durable - was);
        return 0;
    }
    if (in) {
        in->refs++;
        if (durable) interest_durable(cl, in, 1);
        return 0;
    }
    in = cy_malloc(sizeof(*in) + len + 1);
    if (!in) goto fail;
    in->refs = 1;
    in->durable = (uint32_t)durable;
    in->len = (uint32_t)len;
    memcpy(in->filter, filter, len);
    in->filter[len] = '\0';
    if (cy_map_put(&cl->interest, in->filter, len, in)) {
        cy_free(in);
        goto fail;
    }
    broadcast_interest(cl, durable ? F_INTEREST_ADD_DURABLE : F_INTEREST_ADD, filter, len);
    return 0;
fail:
    cy_router_unsubscribe(cl->router, s, filter, len);
    return CY_ENOMEM;
}

void cy_cluster_unsubscribe(cy_cluster *cl, cy_subscriber *s, const char *filter, size_t len)
{
    int prev = cl->nshards > 1 ? cy_router_sub_opts(cl->router, s, filter, len) : CY_ENOENT;
    if (cy_router_unsubscribe(cl->router, s, filter, len) || cl->nshards <= 1) return;
    cy_interest *in = cy_map_get(&cl->interest, filter, len);
    if (!in) return;
    if (--in->refs) {
        if (prev >= 0 && (prev & CY_SUBOPT_DURABLE)) interest_durable(cl, in, -1);
        return;
    }
    cy_map_del(&cl->interest, filter, len);
    broadcast_interest(cl, F_INTEREST_DEL, in->filter, in->len);
    cy_free(in);
}

typedef struct snap_ctx {
    cy_cluster *b;
    cy_peer *p;
} snap_ctx;

static void snap_one(void *ctx, void *v)
{
    snap_ctx *sc = ctx;
    cy_interest *in = v;
    send_counted(sc->b, sc->p, in->durable ? F_INTEREST_ADD_DURABLE : F_INTEREST_ADD, in->filter,
                 in->len);
}

static void send_snapshot(cy_cluster *cl, cy_peer *p)
{
    p->resync = false;
    /* The RESET carries its own number among our frames on this link: 1 on
     * a new link, more for a resync on a link in use, where the peer's
     * count must go on, not restart, or its ACKs stay behind frames_out. */
    uint8_t n[8];
    for (int k = 0; k < 8; k++)
        n[k] = (uint8_t)((p->frames_out + 1) >> (56 - 8 * k));
    send_counted(cl, p, F_INTEREST_RESET, n, sizeof(n));
    snap_ctx sc = {cl, p};
    cy_map_each(&cl->interest, snap_one, &sc);
    send_counted(cl, p, F_INTEREST_END, NULL, 0);
}

/* One filter of a peer's interest. The mark says which snapshot last
 * confirmed it: a new snapshot (RESET, ADD..., END) re-marks what the peer
 * still holds and END sweeps the rest, so the peer's old interest keeps
 * routing until its new one is complete. Clearing at RESET instead would
 * drop acknowledged messages published while the snapshot is in flight. */
typedef struct pfilter {
    uint64_t mark;
    uint32_t len;
    bool durable; /* held by a persistent session there (INTEREST_ADD_DURABLE) */
    char f[];
} pfilter;

typedef struct drop_ctx {
    cy_cluster *cl;
    cy_peer *p;
    pfilter **v;
    size_t n;
} drop_ctx;

static void collect_filter(void *ctx, void *v)
{
    drop_ctx *d = ctx;
    d->v[d->n++] = v;
}

static void drop_filter(cy_cluster *cl, cy_peer *p, pfilter *pf, bool in_tree)
{
    cy_map_del(&p->filters, pf->f, pf->len);
    if (in_tree) cy_router_unsubscribe(cl->router, &p->sub, pf->f, pf->len);
    cy_free(pf);
}

/* Drop peer p's filters not confirmed by the current mark (all of them with
 * keep_current false: broker teardown). */
static void sweep_interest(cy_cluster *cl, cy_peer *p, bool keep_current, bool in_tree)
{
    if (!p->filters.count) return;
    drop_ctx d = {cl, p, cy_calloc(p->filters.count, sizeof(pfilter *)), 0};
    if (!d.v) return;
    cy_map_each(&p->filters, collect_filter, &d);
    for (size_t i = 0; i < d.n; i++)
        if (!keep_current || d.v[i]->mark != p->mark) drop_filter(cl, p, d.v[i], in_tree);
    cy_free(d.v);
}

/* QoS 2 and no options (the peer applies each session's own options), and
 * whether a persistent session holds the filter there. */
static uint8_t peer_opts(bool durable)
{
    return (uint8_t)(2u | (durable ? CY_SUBOPT_DURABLE : 0u));
}

static void interest_add(cy_cluster *cl, cy_peer *p, const uint8_t *f, size_t len, bool durable)
{
    pfilter *pf = cy_map_get(&p->filters, f, len);
    if (pf) {
        pf->mark = p->mark;
        if (pf->durable != durable &&
            cy_router_subscribe(cl->router, &p->sub, pf->f, len, peer_opts(durable), 0, NULL) == 0)
            pf->durable = durable;
        return;
    }
    pf = cy_malloc(sizeof(*pf) + len + 1);
    if (!pf) return;
    pf->mark = p->mark;
    pf->len = (uint32_t)len;
    pf->durable = durable;
    memcpy(pf->f, f, len);
    pf->f[len] = '\0';
    if (cy_router_subscribe(cl->router, &p->sub, pf->f, len, peer_opts(durable), 0, NULL)) {
        cy_free(pf);
        return;
    }
    if (cy_map_put(&p->filters, pf->f, len, pf)) {
        cy_router_unsubscribe(cl->router, &p->sub, pf->f, len);
        cy_free(pf);
    }
}

static void interest_del(cy_cluster *cl, cy_peer *p, const uint8_t *f, size_t len)
{
    pfilter *pf = cy_map_get(&p->filters, f, len);
    if (pf) drop_filter(cl, p, pf, true);
}

/* ---- durable frames ---- */

static bool outbox_full(const cy_cluster *cl, unsigned j)
{
    return (cl->outbox_full >> j) & 1;
}

/* Keep cl->outbox_full in step with p->out_bytes. */
static void outbox_account(cy_cluster *cl, cy_peer *p)
{
    uint64_t bit = UINT64_C(1) << p->index;
    bool full = p->out_bytes >= cl->cfg->max_outbox_bytes;
    if (full == ((cl->outbox_full & bit) != 0)) return;
    if (full) {
        cl->outbox_full |= bit;
        cy_warn(NULL,
                "outbox for shard %u is full (%zu frames, %zu bytes, max_outbox_bytes %u): "
                "refusing publishes that need it until it acknowledges",
                p->index, p->out_count, p->out_bytes, cl->cfg->max_outbox_bytes);
    } else {
        cl->outbox_full &= ~bit;
        cy_info(NULL, "outbox for shard %u has room again (%zu bytes)", p->index, p->out_bytes);
    }
}

static void outbox_append(cy_cluster *cl, cy_peer *p, cy_outframe *f)
{
    f->next = NULL;
    if (p->out_tail)
        p->out_tail->next = f;
    else
        p->out_head = f;
    p->out_tail = f;
    if (!p->out_next) p->out_next = f; /* every frame before it is written */
    p->out_count++;
    p->out_bytes += f->len;
    outbox_account(cl, p);
}

static bool is_sys(const cy_msg *m)
{
    return m->topic_len >= 5 && memcmp(m->topic, "$SYS/", 5) == 0;
}

static cy_peer *peer_of(const cy_subscriber *s)
{
    return (cy_peer *)((char *)s - offsetof(cy_peer, sub));
}

/* Router hook, before anything of a client's publish is done: may it be
 * forwarded within max_outbox_bytes? A durable frame (QoS 1/2 to the peers
 * it matched, or a retained update, which goes to every peer) for a peer
 * whose outbox is full is refused: CY_REASON_QUOTA_EXCEEDED after counting
 * limit_outbox and logging (rate-limited, per peer). The forward itself
 * never drops a durable frame: what was admitted is kept until the peer
 * acknowledges it, so work past the bound that cannot be refused (a will,
 * an API publish) overshoots it rather than being lost. */
static int admit(void *ctx, const cy_route *r)
{
    cy_cluster *cl = ctx;
    const cy_msg *m = r->m;
    if (!cl->outbox_full || is_sys(m)) return 0;
    /* Peers of this run only: an outbox loaded for a shard index the node
     * no longer has (fewer shards than before) waits, it does not refuse. */
    uint64_t peers = (cl->nshards >= 64 ? ~UINT64_C(0) : (UINT64_C(1) << cl->nshards) - 1) &
                     ~(UINT64_C(1) << cl->self);
    uint64_t routed = 0;
    for (uint32_t i = 0; m->qos && i < r->n_matches; i++)
        if (r->matches[i].sub->kind == &cl->peer_kind && r->matches[i].durable)
            routed |= UINT64_C(1) << peer_of(r->matches[i].sub)->index;
    uint64_t need = (r->set_retained ? peers : routed) & peers;
    uint64_t over = need & cl->outbox_full;
    if (!over) return 0;
    unsigned j = 0;
    while (!((over >> j) & 1))
        j++;
    cl->stats->limit_outbox++;
    /* A publisher repeats this at will while the peer is stuck: one line
     * per peer per window, with the count of those held back. */
    if (cl->outbox_log.window_ms == 0)
        cy_logrl_init(&cl->outbox_log, OUTBOX_LOG_WINDOW_MS, OUTBOX_LOG_BURST);
    char key[16];
    snprintf(key, sizeof(key), "shard %u", j);
    char more[CY_LOGRL_MORE];
    if (cy_logrl_line(&cl->outbox_log, key, more)) {
        cy_warn(NULL,
                "publish on %.*s refused: the outbox for shard %u holds %zu bytes "
                "(max_outbox_bytes %u)%s",
                (int)m->topic_len, m->topic, j, cl->peers[j].out_bytes, cl->cfg->max_outbox_bytes,
                more);
    }
    return CY_REASON_QUOTA_EXCEEDED;
}

/* Write unwritten durable frames to peer p, in order, while the bus takes
 * them: from the cursor on, so the cost is what is written. */
static void pump(cy_cluster *cl, cy_peer *p)
{
    if (!p->up) return;
    while (p->out_next) {
        cy_outframe *f = p->out_next;
        if (cy_bus_send(cl->bus, p->index, F_PUBLISH, f->data, f->len)) return;
        p->written = f->seq;
        p->out_next = f->next;
        p->frames_out++;
        cl->progress++; /* a durable frame left for its peer */
    }
}

/* Big-endian stores and loads of the frame fields, n (1..8) bytes: one
 * byte swap and one copy on a little-endian machine. */
static inline uint8_t *be_put(uint8_t *p, uint64_t v, unsigned n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t b = __builtin_bswap64(v << (64 - 8 * n));
    memcpy(p, &b, n);
#else
    for (unsigned i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * (n - 1 - i)));
#endif
    return p + n;
}

static inline uint64_t be_get(const uint8_t *p, unsigned n)
{
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t b = 0;
    memcpy(&b, p, n);
    return __builtin_bswap64(b) >> (64 - 8 * n);
#else
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
#endif
}

/* Bytes of m's PUBLISH frame body (publish_write). */
static size_t publish_size(const cy_msg *m, uint8_t flags, const cy_str *groups, unsigned n_groups)
{
    size_t n = 8 + 1 + 8 + 8 + (flags & FL_EVENT ? 8 : 0) + 2 + m->topic_len + 4 + m->props_len +
               1 + m->payload_len;
    for (unsigned i = 0; i < n_groups; i++)
        n += 2 + groups[i].len;
    return n;
}

/* Write m's PUBLISH frame body, publish_size bytes, at out: into the bus's
 * queue for a frame that goes at once, or into its outbox entry, never
 * through a scratch buffer (one copy of the message per forward). */
static void publish_write(uint8_t *out, const cy_msg *m, uint64_t seq, uint8_t flags,
                          const cy_str *groups, unsigned n_groups)
{
    uint8_t *p = be_put(out, seq, 8);
    *p++ = flags;
    p = be_put(p, (uint64_t)m->expiry_at, 8);
    p = be_put(p, (uint64_t)m->retain_ts, 8);
    if (flags & FL_EVENT) p = be_put(p, m->event_seq, 8);
    p = be_put(p, m->topic_len, 2);
    memcpy(p, m->topic, m->topic_len);
    p = be_put(p + m->topic_len, m->props_len, 4);
    if (m->props_len) memcpy(p, m->props, m->props_len);
    p += m->props_len;
    *p++ = (uint8_t)n_groups;
    for (unsigned i = 0; i < n_groups; i++) {
        p = be_put(p, groups[i].len, 2);
        memcpy(p, groups[i].p, groups[i].len);
        p += groups[i].len;
    }
    if (m->payload_len) memcpy(p, m->payload, m->payload_len);
}

/* Send m to peer j as one frame: routed to its subscribers (with the
 * shared groups it serves) and/or setting the retained message. */
static void forward(cy_cluster *cl, unsigned j, const cy_msg *m, bool routed, bool set_retained,
                    bool for_persistent, const cy_str *groups, unsigned n_groups)
{
    cy_peer *p = &cl->peers[j];
    bool durable = (m->qos > 0 && for_persistent) || set_retained;
    uint8_t flags = (uint8_t)(m->qos | (m->retain ? FL_RETAIN : 0) | (routed ? FL_ROUTE : 0) |
                              (set_retained ? FL_SET_RETAINED : 0) | (m->event_seq ? FL_EVENT : 0));
    size_t len = publish_size(m, flags, groups, n_groups);
    if (!durable) {
        int rc = CY_EPIPE;
        uint8_t *body = p->up ? cy_bus_send_inplace(cl->bus, j, F_PUBLISH, len, &rc) : NULL;
        if (body) {
            publish_write(body, m, 0, flags, groups, n_groups);
            p->frames_out++;
            /* QoS 1/2 for clean sessions: acknowledged once written (or applied) */
            if (m->qos) hold_need(cl, j, p->frames_out, 0, true);
            return;
        }
        /* QoS 0, or the peer is down (the clean sessions it was for went
         * with it): dropped. QoS 1/2 for a peer that is up but not keeping
         * up (its bus backlog is full): the outbox keeps it. */
        if (!m->qos || !p->up) {
            cl->stats->messages_dropped++;
            return;
        }
    }
    /* No bound here: what reaches this point was admitted (or cannot be
     * refused) and is acknowledged; admit() keeps the bound. */
    uint64_t seq = p->last_sent + 1;
    cy_outframe *f = cy_malloc(sizeof(*f) + len);
    if (!f) {
        cl->stats->messages_dropped++;
        return;
    }
    f->seq = seq;
    f->len = len;
    publish_write(f->data, m, seq, flags, groups, n_groups);
    if (cy_store_outbox_put(cl->store, j, seq, f->data, len)) {
        cy_free(f);
        cl->stats->messages_dropped++;
        return;
    }
    p->last_sent = seq;
    p->state_dirty = true;
    outbox_append(cl, p, f);
    if (set_retained && p->up) hold_need(cl, j, 0, seq, false); /* later subscribers see it */
    /* written by pump() after the commit */
}

/* The peer kind's deliver: peer j holds an interest m matches (or was
 * chosen for a shared group). $SYS stays on its shard: each publishes the
 * node's totals itself. */
static void peer_deliver(void *ctx, cy_subscriber *s, const cy_route *r, const cy_match *x)
{
    cy_cluster *cl = ctx;
    if (is_sys(r->m)) return;
    unsigned j = peer_of(s)->index;
    cy_str groups[CY_ROUTE_MAX_GROUPS];
    unsigned ng = 0;
    uint32_t at = (uint32_t)(x - r->matches);
    for (uint32_t i = 0; i < r->n_groups && ng < CY_ROUTE_MAX_GROUPS; i++)
        if (r->groups[i].match == at) groups[ng++] = r->groups[i].filter;
    cl->fwd_mask |= UINT64_C(1) << j;
    forward(cl, j, r->m, true, r->set_retained, x->durable, groups, ng);
}

/* Shared-group member choice: a peer whose link is up (its own members
 * decide there) ranks with an online local session; a peer that is down
 * or whose outbox is full only if no member is better (the frame waits in
 * the outbox; a client's publish is refused rather than sent to a full
 * one). */
static int peer_grade(void *ctx, const cy_subscriber *s, const cy_route *r)
{
    cy_cluster *cl = ctx;
    (void)r;
    const cy_peer *p = peer_of(s);
    return p->up && !outbox_full(cl, p->index) ? 2 : 1;
}

/* Router hook, after the deliveries: a retained update goes to every peer,
 * also those it was not routed to. */
static void routed(void *ctx, const cy_route *r)
{
    cy_cluster *cl = ctx;
    uint64_t sent = cl->fwd_mask;
    cl->fwd_mask = 0;
    if (!r->set_retained || cl->nshards <= 1 || is_sys(r->m)) return;
    for (unsigned j = 0; j < cl->nshards; j++)
        if (j != cl->self && !(sent & (UINT64_C(1) << j)))
            forward(cl, j, r->m, false, true, true, NULL, 0);
}

/* ---- loop pass hooks ---- */

void cy_cluster_flush(cy_cluster *cl)
{
    if (!cl->bus) return;
    cy_bus_flush(cl->bus);
    /* A link with nothing left queued has every frame sent on it in the
     * kernel: acknowledgements that wait only for that may go, in this
     * pass, after the commit with the rest of its replies. */
    bool moved = false;
    for (unsigned j = 0; j < cl->nshards; j++) {
        cy_peer *p = &cl->peers[j];
        if (j == cl->self || !p->up || p->frames_out_written == p->frames_out) continue;
        if (cy_bus_backlog(cl->bus, j) == 0) {
            p->frames_out_written = p->frames_out;
            moved = true;
        }
    }
    if (moved) release(cl);
}

void cy_cluster_before_commit(cy_cluster *cl)
{
    for (unsigned j = 0; j < cl->nshards; j++) {
        cy_peer *p = &cl->peers[j];
        if (j == cl->self || !p->state_dirty) continue;
        if (cy_store_peer_put(cl->store, j, p->last_sent, p->last_applied) == 0)
            p->state_dirty = false;
    }
}

/* Acknowledge everything applied from p (after the commit that holds it). */
static void send_ack(cy_cluster *cl, cy_peer *p)
{
    uint8_t body[16];
    for (int k = 0; k < 8; k++) {
        body[k] = (uint8_t)(p->frames_in >> (56 - 8 * k));
        body[8 + k] = (uint8_t)(p->last_applied >> (56 - 8 * k));
    }
    if (cy_bus_send(cl->bus, p->index, F_ACK, body, sizeof(body)) == 0)
        p->ack_due = p->ack_lazy = false;
}

/* Does an applied frame that nobody waits on (a QoS 0 forward) wait for the
 * sweep's ACK? Acknowledging each at once cost a write here and a wake-up
 * and a read on the sender, per cross-shard message. The ACK only feeds the
 * sender's bus_acked, whose lag the watchdog reads as work owed; a lag of
 * one sweep (250 ms) must stay well inside watchdog_timeout. */
static bool ack_lazily(const cy_cluster *cl)
{
    return cl->cfg->watchdog_timeout >= 4 * CY_SWEEP_MS;
}

void cy_cluster_after_commit(cy_cluster *cl)
{
    for (unsigned j = 0; j < cl->nshards; j++) {
        cy_peer *p = &cl->peers[j];
        if (j == cl->self || !p->up) continue;
        if (p->ack_due) send_ack(cl, p);
        if (p->written < p->last_sent) pump(cl, p);
    }
}

void cy_cluster_sweep(cy_cluster *cl)
{
    release(cl);
    for (unsigned j = 0; j < cl->nshards; j++) {
        cy_peer *p = &cl->peers[j];
        if (j == cl->self || !p->up) continue;
        if (p->resync) send_snapshot(cl, p);
        /* Everything applied was committed by the passes before this timer. */
        if (p->ack_lazy) send_ack(cl, p);
    }
}

/* ---- frames from peers ---- */

/* A bounds-checked cursor over a frame body, inline: a PUBLISH frame is
 * decoded once per forwarded message (cy_reader's calls per field were a
 * visible part of the peer's cost). */
typedef struct frame_rd {
    const uint8_t *p, *end;
    bool bad;
} frame_rd;

static inline const uint8_t *rd_take(frame_rd *r, size_t n)
{
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = true;
        return NULL;
    }
    const uint8_t *q = r->p;
    r->p += n;
    return q;
}

static inline uint64_t rd_be(frame_rd *r, unsigned n)
{
    const uint8_t *q = rd_take(r, n);
    return q ? be_get(q, n) : 0;
}

static void on_publish(cy_cluster *cl, cy_peer *p, const uint8_t *body, size_t len)
{
    frame_rd r = {body, body ? body + len : body, false};
    uint64_t seq = rd_be(&r, 8);
    uint8_t flags = (uint8_t)rd_be(&r, 1);
    int64_t expiry_at = (int64_t)rd_be(&r, 8);
    int64_t retain_ts = (int64_t)rd_be(&r, 8);
    uint64_t event_seq = flags & FL_EVENT ? rd_be(&r, 8) : 0;
    size_t tlen = (size_t)rd_be(&r, 2);
    const uint8_t *topic = rd_take(&r, tlen);
    size_t plen = (size_t)rd_be(&r, 4);
    const uint8_t *props = rd_take(&r, plen);
    unsigned ng = (unsigned)rd_be(&r, 1);
    cy_str groups[8];
    for (unsigned i = 0; i < ng && !r.bad; i++) {
        size_t gl = (size_t)rd_be(&r, 2);
        const uint8_t *g = rd_take(&r, gl);
        if (i < 8) groups[i] = (cy_str){(const char *)g, (uint32_t)gl};
    }
    if (r.bad || tlen == 0) {
        cy_warn(NULL, "bus: malformed PUBLISH frame from shard %u ignored", p->index);
        return;
    }
    p->frames_in++;
    /* a QoS 1/2 frame outside the outbox: its publisher's ack waits on ours */
    if (seq || (flags & 3) || !ack_lazily(cl))
        p->ack_due = true;
    else
        p->ack_lazy = true;
    if (seq) {
        if (seq <= p->last_applied) return; /* a replay of what we applied */
        p->last_applied = seq;
        p->state_dirty = true;
    }
    cl->progress++;
    cy_msg *m = cy_msg_new((const char *)topic, tlen, r.p, (size_t)(r.end - r.p), props, plen,
                           flags & 3, (flags & FL_RETAIN) != 0, expiry_at);
    if (!m) {
        cl->stats->messages_dropped++;
        return;
    }
    m->retain_ts = retain_ts;
    m->event_seq = event_seq;
    m->origin = (uint8_t)p->index;
    if (flags & FL_SET_RETAINED) cy_router_apply_retained(cl->router, m);
    if (flags & FL_ROUTE) cy_router_local(cl->router, m, groups, ng < 8 ? ng : 8);
    cy_msg_unref(m);
}

static void on_ack(cy_cluster *cl, cy_peer *p, const uint8_t *body, size_t len)
{
    cy_reader r = cy_reader_of(body, len);
    uint64_t frames = cy_reader_be(&r, 8);
    uint64_t seq = cy_reader_be(&r, 8);
    if (r.bad) return;
    p->frames_out_acked = frames;
    if (seq <= p->acked) return;
    p->acked = seq;
    while (p->out_head && p->out_head->seq <= seq) {
        cy_outframe *f = p->out_head;
        p->out_head = f->next;
        if (!p->out_head) p->out_tail = NULL;
        p->out_count--;
        p->out_bytes -= f->len;
        cy_free(f);
    }
    /* It applied frames it got on an earlier link (written was reset to
     * acked when this one came up): those need no replay, and the cursor
     * must not point at a frame just freed. */
    if (p->written < seq) {
        p->written = seq;
        p->out_next = p->out_head;
    }
    outbox_account(cl, p);
    cy_store_outbox_ack(cl->store, p->index, seq);
}

void cy_cluster_input(cy_cluster *cl, unsigned from, uint8_t type, const uint8_t *body, size_t len)
{
    if (from >= cl->nshards || from == cl->self || cl->stalled) return;
    cy_peer *p = &cl->peers[from];
    switch (type) {
    case F_INTEREST_RESET: { /* a new snapshot: counts restart at its number */
        cy_reader r = cy_reader_of(body, len);
        uint64_t n = cy_reader_be(&r, 8);
        p->mark++;
        p->frames_in = r.bad || n == 0 ? 1 : n;
        p->ack_due = true;
        return;
    }
    case F_INTEREST_END:
        sweep_interest(cl, p, true, true);
        cl->snap_from |= UINT64_C(1) << from;
        p->frames_in++;
        p->ack_due = true;
        cl->progress++;
        return;
    case F_INTEREST_ADD:
    case F_INTEREST_ADD_DURABLE:
    case F_INTEREST_DEL:
        if (type != F_INTEREST_DEL)
            interest_add(cl, p, body, len, type == F_INTEREST_ADD_DURABLE);
        else
            interest_del(cl, p, body, len);
        p->frames_in++;
        p->ack_due = true;
        cl->progress++;
        return;
    case F_PUBLISH:
        on_publish(cl, p, body, len);
        return;
    case CY_FRAME_API_REQ:
    case CY_FRAME_API_RESP:
    case CY_FRAME_COAP_IN:
    case CY_FRAME_COAP_OUT:
    case CY_FRAME_COAP_KICK:
        p->frames_in++;
        p->ack_due = true;
        cl->progress++;
        if (cl->hooks.frame) cl->hooks.frame(cl->hooks.ctx, from, type, body, len);
        return;
    case F_ACK:
        on_ack(cl, p, body, len);
        release(cl); /* held acknowledgements may now go */
        return;
    default:
        cy_warn(NULL, "bus: unknown frame type %u from shard %u", type, from);
    }
}

/* The bus's on_frame: a whole frame from a peer. */
static void on_frame(void *ctx, unsigned from, uint8_t type, const uint8_t *body, size_t len)
{
    cy_cluster_input(ctx, from, type, body, len);
}

/* ---- peers coming and going ---- */

static void on_peer_up(void *ctx, unsigned peer, uint64_t generation)
{
    cy_cluster *cl = ctx;
    if (peer >= cl->nshards || peer == cl->self) return;
    cy_peer *p = &cl->peers[peer];
    p->up = true;
    p->generation = generation;
    p->frames_out = p->frames_out_acked = p->frames_out_written = 0;
    p->written = p->acked; /* replay everything it has not acknowledged */
    p->out_next = p->out_head;
    if (p->out_count)
        cy_info(NULL, "replaying %zu unacknowledged frames to shard %u (generation %llu)",
                p->out_count, peer, (unsigned long long)generation);
    send_snapshot(cl, p);
    pump(cl, p);
}

static void on_peer_down(void *ctx, unsigned peer)
{
    cy_cluster *cl = ctx;
    if (peer >= cl->nshards || peer == cl->self) return;
    cl->peers[peer].up = false;
    /* Its interest stays: what is published for it meanwhile waits in the outbox. */
    release(cl);
}

bool cy_cluster_peer_up(const cy_cluster *cl, unsigned i, uint64_t *generation)
{
    if (i == cl->self) {
        if (generation) *generation = cl->generation;
        return true;
    }
    if (i >= cl->nshards) return false;
    if (generation) *generation = cl->peers[i].generation;
    return cl->peers[i].up;
}

int cy_cluster_load_peer(void *ctx, unsigned peer, uint64_t last_sent, uint64_t last_applied)
{
    cy_cluster *cl = ctx;
    if (peer >= CY_SB_MAX_SHARDS) return 0;
    cl->peers[peer].last_sent = last_sent;
    cl->peers[peer].last_applied = last_applied;
    return 0;
}

int cy_cluster_load_outbox(void *ctx, unsigned peer, uint64_t seq, const uint8_t *frame, size_t len)
{
    cy_cluster *cl = ctx;
    if (peer >= CY_SB_MAX_SHARDS) return 0;
    cy_peer *p = &cl->peers[peer];
    cy_outframe *f = cy_malloc(sizeof(*f) + len);
    if (!f) return CY_ENOMEM;
    f->seq = seq;
    f->len = len;
    memcpy(f->data, frame, len);
    outbox_append(cl, p, f);
    if (seq > p->last_sent) p->last_sent = seq;
    return 0;
}

static void free_interest(void *ctx, void *v)
{
    (void)ctx;
    cy_free(v);
}

void cy_cluster_free(cy_cluster *cl)
{
    if (!cl) return;
    cy_bus_free(cl->bus);
    cy_map_each(&cl->interest, free_interest, NULL);
    cy_map_fini(&cl->interest);
    while (cl->held) {
        cy_held *h = cl->held;
        cl->held = h->next;
        cy_free(h);
    }
    cl->held_tail = NULL;
    for (unsigned j = 0; j < CY_SB_MAX_SHARDS; j++) {
        cy_peer *p = &cl->peers[j];
        sweep_interest(cl, p, false, false);
        cy_map_fini(&p->filters);
        while (p->out_head) {
            cy_outframe *f = p->out_head;
            p->out_head = f->next;
            cy_free(f);
        }
        p->out_tail = p->out_next = NULL;
        p->out_count = p->out_bytes = 0;
    }
    cy_buf_fini(&cl->frame);
    cy_free(cl);
}

/* ---- connection handover ---- */

bool cy_cluster_shard_ready(const cy_cluster *cl, unsigned i, char *why, size_t whylen)
{
    if (!cl->sb) return true;
    const cy_sb_slot *s = &cl->sb->slots[i];
    int64_t state = cy_sb_load(&s->state);
    if (state != CY_SHARD_RUNNING || !(cy_sb_load(&s->ready) || cy_sb_load(&s->accepting))) {
        snprintf(why, whylen, "shard %u is %s", i,
                 state == CY_SHARD_RUNNING    ? "joining the others"
                 : state == CY_SHARD_STARTING ? "starting"
                                              : "down");
        return false;
    }
    int64_t age = cy_mono_ms() - cy_sb_load(&s->heartbeat_ms);
    int64_t limit = cl->cfg->watchdog_timeout / 2;
    if (limit > 1000) limit = 1000;
    if (limit < 300) limit = 300;
    if (age > limit) {
        snprintf(why, whylen, "shard %u has not moved for %.1f s", i, (double)age / 1000);
        return false;
    }
    if (!cl->peers[i].up) {
        snprintf(why, whylen, "no link to shard %u", i);
        return false;
    }
    return true;
}

int cy_cluster_handover(cy_cluster *cl, unsigned owner, uv_tcp_t *tcp, const cy_handover_info *info,
                        const uint8_t *bytes, size_t len, void (*cb)(void *arg, int status),
                        void *arg)
{
    if (!cl->bus) return CY_EPIPE;
    if (!info) return cy_bus_send_handle(cl->bus, owner, tcp, F_HANDOVER, bytes, len, cb, arg);
    /* u8 address length, the address (struct sockaddr as the kernel gave
     * it), u16 certificate id length, the id, then the bytes. */
    size_t alen = !info->peer                         ? 0
                  : info->peer->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                  : info->peer->sa_family == AF_INET  ? sizeof(struct sockaddr_in)
                                                      : 0;
    if (info->cert_id_len > CY_HANDOVER_CERT_ID_MAX) return CY_EINVAL;
    cy_buf *f = &cl->frame;
    cy_buf_reset(f);
    if (cy_buf_put_u8(f, (uint8_t)alen) || cy_buf_append(f, info->peer, alen) ||
        cy_buf_put_u16(f, (uint16_t)info->cert_id_len) ||
        cy_buf_append(f, info->cert_id, info->cert_id_len) || cy_buf_append(f, bytes, len))
        return CY_ENOMEM;
    return cy_bus_send_handle(cl->bus, owner, tcp, F_HANDOVER_TLS, cy_buf_head(f), cy_buf_size(f),
                              cb, arg);
}

static void free_bus_tcp(uv_handle_t *h)
{
    cy_free(h);
}

static void on_handle(void *ctx, unsigned from, uv_tcp_t *tcp, uint8_t type, const uint8_t *body,
                      size_t len)
{
    cy_cluster *cl = ctx;
    int fd = -1;
    uv_os_fd_t ofd;
    cy_handover_info info, *ip = NULL;
    struct sockaddr_storage peer;
    if (type == F_HANDOVER_TLS) {
        cy_reader r = cy_reader_of(body, len);
        size_t alen = (size_t)cy_reader_be(&r, 1);
        const uint8_t *a = cy_reader_take(&r, alen);
        info.cert_id_len = (size_t)cy_reader_be(&r, 2);
        info.cert_id = (const char *)cy_reader_take(&r, info.cert_id_len);
        memset(&peer, 0, sizeof(peer));
        if (a && alen <= sizeof(peer)) memcpy(&peer, a, alen);
        info.peer = alen ? (const struct sockaddr *)&peer : NULL;
        if (r.bad || alen > sizeof(peer) || info.cert_id_len > CY_HANDOVER_CERT_ID_MAX) {
            uv_close((uv_handle_t *)tcp, free_bus_tcp);
            cy_warn(NULL, "bus: a malformed TLS handover from shard %u", from);
            return;
        }
        body = r.p;
        len = cy_reader_left(&r);
        ip = &info;
    }
    if ((type == F_HANDOVER || type == F_HANDOVER_TLS) && uv_fileno((uv_handle_t *)tcp, &ofd) == 0)
        fd = dup(ofd);
    uv_close((uv_handle_t *)tcp, free_bus_tcp);
    if (fd < 0) {
        cy_warn(NULL, "bus: could not take a connection from shard %u", from);
        return;
    }
    cl->progress++;
    if (cl->hooks.adopt)
        cl->hooks.adopt(cl->hooks.ctx, from, fd, ip, body, len);
    else
        close(fd);
}

/* ---- lifecycle ---- */

int cy_cluster_new(uv_loop_t *loop, const cy_config *cfg, cy_store *store, cy_router *router,
                   cy_counters *stats, const cy_cluster_options *o, cy_cluster **out)
{
    cy_cluster *cl = cy_calloc(1, sizeof(*cl));
    if (!cl) return CY_ENOMEM;
    cl->loop = loop;
    cl->cfg = cfg;
    cl->store = store;
    cl->router = router;
    cl->stats = stats;
    cl->sb = o->sb;
    cl->self = o->self;
    cl->nshards = o->nshards ? o->nshards : 1;
    cl->generation = o->generation;
    cy_map_init(&cl->interest);
    cy_buf_init(&cl->frame);
    cy_logrl_init(&cl->outbox_log, OUTBOX_LOG_WINDOW_MS, OUTBOX_LOG_BURST);
    cl->peer_kind = (cy_sub_kind){.name = "peer shard",
                                  .remote = true,
                                  .deliver = peer_deliver,
                                  .grade = peer_grade,
                                  .ctx = cl};
    for (unsigned j = 0; j < CY_SB_MAX_SHARDS; j++) {
        cl->peers[j].index = j;
        cy_map_init(&cl->peers[j].filters);
        cy_subscriber_init(&cl->peers[j].sub, &cl->peer_kind);
    }
    cy_router_hooks h = {.admit = admit, .routed = routed, .ctx = cl};
    cy_router_set_hooks(router, &h);
    *out = cl;
    return 0;
}

void cy_cluster_set_hooks(cy_cluster *cl, const cy_cluster_hooks *h)
{
    cl->hooks = *h;
}

int cy_cluster_start(cy_cluster *cl)
{
    if (cl->nshards <= 1) return 0;
    char run_dir[600];
    snprintf(run_dir, sizeof(run_dir), "%s/run", cl->cfg->data_dir);
    cy_bus_options o = {
        .run_dir = run_dir,
        .self = cl->self,
        .nshards = cl->nshards,
        .generation = cl->generation,
    };
    cy_bus_callbacks cb = {
        .on_frame = on_frame,
        .on_handle = on_handle,
        .on_peer_up = on_peer_up,
        .on_peer_down = on_peer_down,
    };
    int rc = cy_bus_new(cl->loop, &o, &cb, cl, &cl->bus);
    if (rc) cy_error(NULL, "bus: %s", cy_strerror(rc));
    return rc;
}

void cy_cluster_stop(cy_cluster *cl)
{
    cy_cluster_before_commit(cl);
    if (cl->bus) cy_bus_close(cl->bus, NULL, NULL);
}

void cy_cluster_stall(cy_cluster *cl)
{
    cl->stalled = true;
}

bool cy_cluster_ready(const cy_cluster *cl, char *why, size_t whylen)
{
    for (unsigned j = 0; j < cl->nshards; j++) {
        if (j == cl->self) continue;
        if (!cl->peers[j].up) {
            snprintf(why, whylen, "no link to shard %u yet", j);
            return false;
        }
        if (!(cl->snap_from & (UINT64_C(1) << j))) {
            snprintf(why, whylen, "no subscriptions from shard %u yet", j);
            return false;
        }
    }
    return true;
}

void cy_cluster_beat(const cy_cluster *cl, cy_sb_slot *slot)
{
    for (unsigned j = 0; j < cl->nshards; j++) {
        cy_sb_storeu(&slot->bus_sent[j], cl->peers[j].frames_out);
        cy_sb_storeu(&slot->bus_acked[j], cl->peers[j].frames_out_acked);
    }
}

uint64_t cy_cluster_progress(const cy_cluster *cl)
{
    return cl->progress;
}

size_t cy_cluster_owed_frames(const cy_cluster *cl)
{
    size_t n = 0;
    for (unsigned j = 0; j < cl->nshards; j++) {
        const cy_peer *p = &cl->peers[j];
        /* Sequence numbers of a peer's outbox are consecutive, so the
         * frames past the cursor are last_sent - written. */
        if (j != cl->self && p->up && p->out_next && cy_bus_backlog(cl->bus, j) == 0)
            n += (size_t)(p->last_sent - p->written);
    }
    return n;
}

size_t cy_cluster_outbox_frames(const cy_cluster *cl)
{
    size_t n = 0;
    for (unsigned j = 0; j < cl->nshards; j++)
        n += cl->peers[j].out_count;
    return n;
}
