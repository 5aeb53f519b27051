/* shard: the composition of a shard's layers and its loop (shard.h).
 *
 * - Start: load persistent state from the store, each part to the layer
 *   that owns it (sessions and their messages to the device layer,
 *   retained messages to the router, peer state and outbox frames to the
 *   cluster); sessions whose expiry ran out while cyan was down are ended.
 * - Each loop pass ends in the check handle: the pass hooks (shard.h).
 *   The first CY_EARLY_PASSES client reads of a pass may end it early
 *   (on_input), when nothing waits for a commit.
 * - busy_poll_us: after a pass that did work, the loop polls without
 *   sleeping (an idle handle) for that long, moved on by each pass that
 *   does more, so input that follows soon is read without a wake-up.
 * - Owed work: every cy_watchdog_owed_interval a timer asks each layer
 *   what work it owes (health/watchdog.h) and writes the sum to the
 *   scoreboard slot's `queued`, so the supervisor finds a shard whose loop
 *   turns but whose own work does not move, even when no peer waits on it.
 * - A sweep timer every CY_SWEEP_MS runs the sweep hooks (connection
 *   timeouts, wills and session expiry, the cluster's retries), asks the
 *   file system whether the disk is still full (store/space.h), gives freed
 *   pages back, and every sys_interval publishes the counters that changed
 *   as retained $SYS/cyan/<name> messages.
 * - Disk full: while the data folder's file system has less than
 *   CY_DISK_LOW free, the layers refuse new durable work before it is
 *   acknowledged (they ask cy_space_full); QoS 0, reads and the work
 *   already taken go on. A commit that fails anyway still ends the process
 *   (see on_pass_end), and the next start begins in the state, refusing,
 *   instead of failing again.
 * - Stop: refuse new work, close connections (MQTT 5 clients get 0x8B),
 *   record offline time of persistent sessions, log the devices' status
 *   events and presence rows (cy_devices_stop), commit, close handles.
 */
#include "shard/shard.h"

#include "api/api.h"
#include "cluster/cluster.h"
#include "coap/coap.h"
#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "device/device.h"
#include "health/watchdog.h"
#include "mqtt/gateway.h"
#include "router/router.h"
#include "store/space.h"
#include "webhooks/webhooks.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Free store pages given back to the file system per sweep (4 KiB each):
 * about 10 ms of work, up to 16 MiB/s reclaimed. */
#define CY_RECLAIM_PAGES 1024
#define MAX_HOOKS 8
/* How often device calls and requests are checked against their deadlines
 * and their owner shard's health. */
#define DEVICE_TICK_MS 100
/* Early pass ends per loop pass: input handled by the first reads of a
 * pass leaves at once; past these, the pass end writes the rest together
 * (a fan-in's thousand reads into one subscriber stay one write). */
#define CY_EARLY_PASSES 8

typedef struct pass_hook {
    void (*fn)(void *ctx);
    bool (*more)(const void *ctx);
    void *ctx;
} pass_hook;

typedef struct sweep_hook {
    void (*fn)(void *ctx, int64_t now);
    void *ctx;
} sweep_hook;

struct cy_shard {
    uv_loop_t *loop;
    const cy_config *cfg;
    cy_store *store;
    cy_registry *registry;
    unsigned self, nshards;
    uint64_t generation; /* our spawn number */
    cy_scoreboard *sb;   /* borrowed, or NULL */
    cy_sb_slot *slot;    /* our scoreboard slot, or NULL */
    cy_limit *limit;     /* borrowed, or NULL */
    cy_counters stats;
    cy_hists hists;       /* latency histograms, published with stats */
    cy_counters sys_last; /* values last published to $SYS */
    int64_t sys_next;     /* mono ms of the next $SYS update */
    cy_space space;       /* the data folder's disk-full state */
    /* the layers, lowest first */
    cy_router *router;
    cy_cluster *cluster;
    cy_devices *devices;
    cy_mqtt *mqtt;
    cy_coap *coap;         /* CoAP and DTLS devices */
    cy_webhooks *webhooks; /* the event log's numbering and webhook deliveries */
    cy_api *api;           /* NULL when http_listen is empty */
    /* the loop */
    uv_check_t pass_end; /* the pass hooks, once per loop pass */
    uv_timer_t sweep;
    uv_timer_t ready;       /* until every shard runs: then accept */
    uv_timer_t device_tick; /* deadlines of device calls and requests */
    uv_timer_t owed_scan;   /* sums the work the layers owe into the slot's queued */
    uv_idle_t spin;         /* busy_poll_us: active while the loop polls without sleeping */
    uint64_t spin_until;    /* uv_hrtime ns the spin ends, unless more work comes */
    uint64_t spin_progress; /* shard_progress when last seen */
    uint64_t owed;          /* that sum at the last scan (cy_shard_beat writes it) */
    uint64_t owed_progress; /* progress when owed work was last seen (a quiet episode) */
    int64_t owed_since;     /* mono ms since work is owed and progress still; 0 = not */
    bool owed_logged;       /* that episode has been logged */
    unsigned early_left;    /* early pass ends this pass may still run (on_input) */
    bool handles, stopping, stalled;
    int64_t started; /* mono ms */
    pass_hook hooks[CY_PASS_NPOINTS][MAX_HOOKS];
    unsigned n_hooks[CY_PASS_NPOINTS];
    sweep_hook sweeps[MAX_HOOKS];
    unsigned n_sweeps;
};

int cy_shard_on_pass(cy_shard *sh, cy_pass_point at, void (*fn)(void *ctx),
                     bool (*more)(const void *ctx), void *ctx)
{
    if (at >= CY_PASS_NPOINTS || sh->n_hooks[at] == MAX_HOOKS) return CY_ENOMEM;
    sh->hooks[at][sh->n_hooks[at]++] = (pass_hook){fn, more, ctx};
    return 0;
}

int cy_shard_on_sweep(cy_shard *sh, void (*fn)(void *ctx, int64_t now), void *ctx)
{
    if (sh->n_sweeps == MAX_HOOKS) return CY_ENOMEM;
    sh->sweeps[sh->n_sweeps++] = (sweep_hook){fn, ctx};
    return 0;
}

static void run_hooks(cy_shard *sh, cy_pass_point at)
{
    for (unsigned i = 0; i < sh->n_hooks[at]; i++)
        sh->hooks[at][i].fn(sh->hooks[at][i].ctx);
}

static bool hooks_have_more(const cy_shard *sh)
{
    for (unsigned at = 0; at < CY_PASS_NPOINTS; at++)
        for (unsigned i = 0; i < sh->n_hooks[at]; i++)
            if (sh->hooks[at][i].more && sh->hooks[at][i].more(sh->hooks[at][i].ctx)) return true;
    return false;
}

/* ---- loading persistent state ---- */

/* The store's loader: each part of the state to the layer that owns it. */
static int load_session(void *ctx, const cy_store_session *sr)
{
    return cy_devices_load_session(((cy_shard *)ctx)->devices, sr);
}

static int load_sub(void *ctx, const char *client_id, const char *filter, uint8_t opts,
                    uint32_t sub_id)
{
    return cy_devices_load_sub(((cy_shard *)ctx)->devices, client_id, filter, opts, sub_id);
}

static int load_msg(void *ctx, const char *client_id, const cy_store_msg *sm)
{
    return cy_devices_load_msg(((cy_shard *)ctx)->devices, client_id, sm);
}

static int load_inq2(void *ctx, const char *client_id, uint16_t id)
{
    return cy_devices_load_inq2(((cy_shard *)ctx)->devices, client_id, id);
}

static int load_retained(void *ctx, const cy_store_msg *sm)
{
    cy_shard *b = ctx;
    return cy_router_load_retained(b->router, sm);
}

static int load_peer(void *ctx, unsigned peer, uint64_t last_sent, uint64_t last_applied)
{
    cy_shard *b = ctx;
    return cy_cluster_load_peer(b->cluster, peer, last_sent, last_applied);
}

static int load_outbox(void *ctx, unsigned peer, uint64_t seq, const uint8_t *frame, size_t len)
{
    cy_shard *b = ctx;
    return cy_cluster_load_outbox(b->cluster, peer, seq, frame, len);
}

/* ---- the end of each loop pass ---- */

/* busy_poll_us: while the idle handle is active, libuv polls with a zero
 * timeout (epoll_wait returns at once) and every turn of the loop ends in
 * on_pass_end, which moves spin_until on while work keeps coming. */
static void on_spin(uv_idle_t *h)
{
    cy_shard *b = h->data;
    if (uv_hrtime() >= b->spin_until) uv_idle_stop(h);
}

static uint64_t shard_progress(const cy_shard *b);

/* After a pass that did work, poll without sleeping for busy_poll_us. */
static void spin_on(cy_shard *b)
{
    uint64_t p = shard_progress(b);
    if (p == b->spin_progress) return;
    b->spin_progress = p;
    b->spin_until = uv_hrtime() + (uint64_t)b->cfg->busy_poll_us * 1000;
    if (!uv_is_active((uv_handle_t *)&b->spin)) uv_idle_start(&b->spin, on_spin);
}

static void on_pass_end(uv_check_t *h)
{
    cy_shard *b = h->data;
    run_hooks(b, CY_PASS_START);
    run_hooks(b, CY_PASS_BEFORE_COMMIT);
    /* Counters reach the scoreboard before any reply leaves: a client that
     * got its CONNACK here and connects again elsewhere must be counted
     * there (max_connections is node-wide). */
    cy_shard_beat(b);
    do {
        if (cy_store_pending(b->store) && cy_store_commit(b->store)) {
            /* The batch was rolled back: memory now holds state the disk
             * does not, and this pass's acknowledgements cover it. Leave
             * without sending them; the next start reloads what is durable
             * and clients resend what was never acknowledged. With a full
             * disk the next start finds it full and refuses durable work
             * from the first CONNECT, so it does not come back here. */
            if (cy_store_no_space(b->store))
                cy_error(NULL, "store commit failed: the data folder's disk is full: exiting "
                               "without sending this pass's acknowledgements; the restart "
                               "refuses new durable work until space returns");
            else
                cy_error(NULL, "store commit failed: exiting without sending this pass's "
                               "acknowledgements");
            _exit(3);
        }
        /* Replies and durable frames leave only after the commit; what they
         * cause (acks that delete outbox rows) the next round commits. */
        run_hooks(b, CY_PASS_AFTER_COMMIT);
        run_hooks(b, CY_PASS_BEFORE_COMMIT);
    } while (hooks_have_more(b) || cy_store_pending(b->store));
    cy_shard_beat(b);
    run_hooks(b, CY_PASS_END);
    b->early_left = CY_EARLY_PASSES;
    if (b->cfg->busy_poll_us && !b->stopping) spin_on(b);
}

/* An early pass end, after a client socket's read callback (the gateway's
 * input hook): the pass end's hooks up to the writes, when they need no
 * commit. Ending the pass there is what the loop would do had the poll
 * returned that one socket, so nothing leaves that the pass end would hold:
 * when the store has writes pending (durable work of this pass, before or
 * after the hooks that route frames), it stops and the pass end commits
 * them with the rest of the pass, as one group. The registry's read
 * transaction and the END hooks stay the pass end's. */
static void on_input(void *ctx)
{
    cy_shard *b = ctx;
    if (!b->early_left || b->stopping || cy_store_pending(b->store)) return;
    b->early_left--;
    run_hooks(b, CY_PASS_START);
    run_hooks(b, CY_PASS_BEFORE_COMMIT);
    if (cy_store_pending(b->store)) return;
    cy_shard_beat(b); /* counters before replies, as in on_pass_end */
    do {
        run_hooks(b, CY_PASS_AFTER_COMMIT);
        run_hooks(b, CY_PASS_BEFORE_COMMIT);
    } while (!cy_store_pending(b->store) && hooks_have_more(b));
}

/* Units of work done by every layer (the slot's progress). */
static uint64_t shard_progress(const cy_shard *b)
{
    return cy_mqtt_progress(b->mqtt) + cy_cluster_progress(b->cluster) +
           cy_devices_progress(b->devices) + cy_coap_progress(b->coap);
}

void cy_shard_beat(cy_shard *b)
{
    cy_sb_slot *s = b->slot;
    if (!s) return;
    int64_t now = cy_mono_ms();
    cy_sb_store(&s->heartbeat_ms, now);
    cy_sb_storeu(&s->loops, s->loops + 1);
    uint64_t progress = shard_progress(b);
    if (progress != cy_sb_loadu(&s->progress)) {
        cy_sb_storeu(&s->progress, progress);
        cy_sb_store(&s->progress_ms, now);
    }
    cy_sb_storeu(&s->queued, b->owed);
    cy_sb_storeu(&s->connections, cy_mqtt_connections(b->mqtt));
    cy_cluster_beat(b->cluster, s);
    b->stats.messages_queued_online = cy_devices_online_queued(b->devices);
    cy_metrics_publish(s, &b->stats, now);
    cy_hists_publish(s, &b->hists);
}

void cy_shard_drop(cy_shard *b)
{
    cy_warn(NULL, "drill: acknowledging and dropping every message published here until killed");
    cy_router_drop_all(b->router);
}

void cy_shard_stall(cy_shard *b)
{
    cy_warn(NULL, "drill: stalling (input ignored, heartbeat kept) until killed");
    b->stalled = true;
    cy_cluster_stall(b->cluster);
    cy_mqtt_stall(b->mqtt);
    cy_coap_stall(b->coap);
}

/* ---- owed work ---- */

/* The work this shard owes (health/watchdog.h, docs/supervision.md): each
 * layer counts its own, summed here into the slot's `queued`, which the
 * supervisor adds to the frames peers sent us and we did not acknowledge.
 * Every cy_watchdog_owed_interval, not every pass: some counts walk every
 * connection or session. Once owed work has stood still (no progress) for
 * half the timeout, one line says what it is, so the log explains the
 * kill that may follow. */
static void on_owed_scan(uv_timer_t *t)
{
    cy_shard *b = t->data;
    int64_t now = cy_mono_ms();
    uint64_t input = cy_mqtt_owed_input(b->mqtt);
    uint64_t deliveries = cy_devices_owed_deliveries(b->devices);
    uint64_t calls = cy_devices_owed_calls(b->devices, now);
    uint64_t held = cy_cluster_owed_held(b->cluster, now);
    uint64_t frames = cy_cluster_owed_frames(b->cluster);
    uint64_t hooks = cy_webhooks_owed(b->webhooks);
    uint64_t coap = cy_coap_owed(b->coap, now);
    b->owed = input + deliveries + calls + held + frames + hooks + coap;
    if (b->slot) cy_sb_storeu(&b->slot->queued, b->owed);
    uint64_t done = shard_progress(b);
    if (!b->owed || !b->owed_since || done != b->owed_progress) {
        b->owed_progress = done;
        b->owed_since = b->owed ? now : 0;
        b->owed_logged = false;
        return;
    }
    if (b->owed_logged || now - b->owed_since < (int64_t)b->cfg->watchdog_timeout / 2) return;
    b->owed_logged = true;
    cy_warn(NULL,
            "owed work has not moved for %.1f s: %llu sockets with unread input or "
            "connections to accept, %llu messages deliverable, %llu calls past their deadline, "
            "%llu held acknowledgements due, %llu frames for peers unwritten, %llu webhook "
            "deliveries due, %llu CoAP datagrams unread or retransmissions late",
            (double)(now - b->owed_since) / 1000.0, (unsigned long long)input,
            (unsigned long long)deliveries, (unsigned long long)calls, (unsigned long long)held,
            (unsigned long long)frames, (unsigned long long)hooks, (unsigned long long)coap);
}

/* ---- the sweep ---- */

static void publish_sys(cy_shard *b)
{
    /* Node-wide totals: every shard's counters, from the scoreboard. */
    uint64_t now[CY_METRICS_N];
    cy_metrics_node_totals(b->sb, b->self, &b->stats, now);
    uint64_t *last = b->sys_last.v;
    bool first = b->sys_next == 0;
    for (size_t i = 0; i < CY_METRICS_N; i++) {
        if (!first && now[i] == last[i]) continue;
        last[i] = now[i];
        char topic[64], payload[24];
        int tl = snprintf(topic, sizeof(topic), "$SYS/cyan/%s", cy_metric_defs[i].name);
        int pl = snprintf(payload, sizeof(payload), "%llu", (unsigned long long)now[i]);
        cy_msg *m = cy_msg_new(topic, (size_t)tl, (const uint8_t *)payload, (size_t)pl, NULL, 0, 0,
                               true, 0);
        if (!m) return;
        cy_router_publish(b->router, m, NULL, NULL, false);
        cy_msg_unref(m);
    }
}

static void on_sweep(uv_timer_t *t)
{
    cy_shard *b = t->data;
    int64_t now = (int64_t)uv_now(b->loop);
    for (unsigned i = 0; i < b->n_sweeps; i++)
        b->sweeps[i].fn(b->sweeps[i].ctx, now);
    cy_space_probe(&b->space, ""); /* the way out of the disk-full state */
    /* Space freed by deletes (cleared retained messages, acknowledged
     * frames) goes back to the file system a slice per sweep. */
    cy_store_reclaim(b->store, CY_RECLAIM_PAGES);
    if (b->cfg->sys_interval && now >= b->sys_next) {
        publish_sys(b);
        b->sys_next = now + (int64_t)b->cfg->sys_interval * 1000;
    }
}

/* ---- hook adapters: a layer's function as a pass or sweep hook ---- */

static void mqtt_flush(void *ctx)
{
    cy_mqtt_flush(ctx);
}

static bool mqtt_more(const void *ctx)
{
    return cy_mqtt_dirty(ctx);
}

static void mqtt_sweep(void *ctx, int64_t now)
{
    cy_mqtt_sweep(ctx, now);
}

static void cluster_flush(void *ctx)
{
    cy_cluster_flush(ctx);
}

static void cluster_before(void *ctx)
{
    cy_cluster_before_commit(ctx);
}

static void cluster_after(void *ctx)
{
    cy_cluster_after_commit(ctx);
}

static void cluster_sweep(void *ctx, int64_t now)
{
    (void)now;
    cy_cluster_sweep(ctx);
}

static void devices_sweep(void *ctx, int64_t now)
{
    (void)now;
    cy_devices_sweep(ctx);
}

static void registry_end_reads(void *ctx)
{
    cy_registry_end_reads(ctx); /* the next pass sees the CLI's changes */
}

static void layers_frame(void *ctx, unsigned from, uint8_t type, const uint8_t *body, size_t len)
{
    cy_shard *b = ctx;
    if (type == CY_FRAME_COAP_IN || type == CY_FRAME_COAP_OUT || type == CY_FRAME_COAP_KICK)
        cy_coap_on_frame(b->coap, from, type, body, len);
    else
        cy_devices_on_frame(b->devices, from, type, body, len);
}

static void coap_flush(void *ctx)
{
    cy_coap_flush(ctx);
}

static bool coap_more(const void *ctx)
{
    return cy_coap_dirty(ctx);
}

static void coap_sweep(void *ctx, int64_t now)
{
    cy_coap_sweep(ctx, now);
}

/* Deadlines of device calls and requests, every DEVICE_TICK_MS. */
static void on_device_tick(uv_timer_t *t)
{
    cy_shard *b = t->data;
    cy_devices_tick(b->devices, cy_mono_ms());
    cy_coap_tick(b->coap, (int64_t)uv_now(b->loop));
}

static void mqtt_adopt(void *ctx, unsigned from, int fd, const cy_handover_info *info,
                       const uint8_t *bytes, size_t len)
{
    cy_mqtt_adopt(((cy_shard *)ctx)->mqtt, from, fd, info, bytes, len);
}

static void mqtt_release(void *ctx, cy_held_owner *o, const uint8_t *bytes, size_t len)
{
    cy_mqtt_release_held(((cy_shard *)ctx)->mqtt, o, bytes, len);
}

/* ---- lifecycle ---- */

/* The layers, lowest first, and the hooks that tie them to the loop. */
static int compose(cy_shard *b)
{
    int rc = cy_router_new(b->cfg, b->store, &b->stats, b->self, &b->router);
    if (rc) return rc;
    cy_cluster_options co = {b->self, b->nshards, b->generation, b->sb};
    rc = cy_cluster_new(b->loop, b->cfg, b->store, b->router, &b->stats, &co, &b->cluster);
    if (rc) return rc;
    cy_cluster_hooks ch = {
        .adopt = mqtt_adopt, .frame = layers_frame, .release = mqtt_release, .ctx = b};
    cy_cluster_set_hooks(b->cluster, &ch);
    rc = cy_devices_new(b->loop, b->cfg, b->store, b->router, b->cluster, &b->stats, &b->hists,
                        b->self, b->nshards, b->generation, &b->devices);
    if (rc) return rc;
    /* The supervisor checked the file before the run began; one broken
     * since (a respawn) refuses every access rather than this shard's
     * start: a file must not turn a crash into a crash loop, nor open the
     * node. */
    char err[320];
    if (cy_devices_load_acl(b->devices, err, sizeof(err))) {
        cy_error(NULL,
                 "shard %u: acl_file %s; every client access is refused (an empty ACL) until a "
                 "reload (SIGHUP) reads a good file",
                 b->self, err);
        cy_acl *none = cy_acl_parse("(deny all)", "", 0, NULL, 0);
        if (!none) return CY_ENOMEM;
        cy_devices_set_acl(b->devices, none);
    }
    /* Both transports stand on the same layers. */
    cy_transport_deps td = {
        .loop = b->loop,
        .cfg = b->cfg,
        .store = b->store,
        .registry = b->registry,
        .router = b->router,
        .cluster = b->cluster,
        .devices = b->devices,
        .space = &b->space,
        .stats = &b->stats,
        .sb = b->sb,
        .limit = b->limit,
        .self = b->self,
        .nshards = b->nshards,
    };
    rc = cy_mqtt_new(&td, &b->mqtt);
    if (rc) return rc;
    rc = cy_coap_new(&td, &b->coap);
    if (rc) return rc;
    cy_webhooks_deps wd = {
        .loop = b->loop,
        .cfg = b->cfg,
        .store = b->store,
        .registry = b->registry,
        .router = b->router,
        .stats = &b->stats,
        .space = &b->space,
        .self = b->self,
        .nshards = b->nshards,
    };
    rc = cy_webhooks_new(&wd, &b->webhooks);
    if (rc) return rc;
    /* Frames routed this pass go before the commit, which may wait for the
     * disk; replies and durable frames after it. */
    if ((rc = cy_shard_on_pass(b, CY_PASS_START, cluster_flush, NULL, b->cluster)) ||
        (rc = cy_shard_on_pass(b, CY_PASS_BEFORE_COMMIT, cluster_before, NULL, b->cluster)) ||
        (rc = cy_shard_on_pass(b, CY_PASS_BEFORE_COMMIT, cy_webhooks_pass, NULL, b->webhooks)) ||
        (rc = cy_shard_on_pass(b, CY_PASS_AFTER_COMMIT, mqtt_flush, mqtt_more, b->mqtt)) ||
        (rc = cy_shard_on_pass(b, CY_PASS_AFTER_COMMIT, coap_flush, coap_more, b->coap)) ||
        (rc = cy_shard_on_pass(b, CY_PASS_AFTER_COMMIT, cluster_after, NULL, b->cluster)) ||
        (rc = cy_shard_on_pass(b, CY_PASS_END, registry_end_reads, NULL, b->registry)) ||
        (rc = cy_shard_on_sweep(b, mqtt_sweep, b->mqtt)) ||
        (rc = cy_shard_on_sweep(b, devices_sweep, b->devices)) ||
        (rc = cy_shard_on_sweep(b, coap_sweep, b->coap)) ||
        (rc = cy_shard_on_sweep(b, cluster_sweep, b->cluster)))
        return rc;
    return 0;
}

int cy_shard_new(uv_loop_t *loop, const cy_config *cfg, cy_store *store, cy_registry *registry,
                 const cy_shard_place *place, cy_shard **out)
{
    cy_shard *b = cy_calloc(1, sizeof(*b));
    if (!b) return CY_ENOMEM;
    b->loop = loop;
    b->cfg = cfg;
    b->store = store;
    b->registry = registry;
    b->self = place ? place->index : 0;
    b->nshards = place && place->count ? place->count : 1;
    b->generation = place ? place->generation : 0;
    b->sb = place ? place->sb : NULL;
    b->limit = place ? place->limit : NULL;
    b->slot = b->sb ? &b->sb->slots[b->self] : NULL;
    cy_space_init(&b->space, store, cfg->data_dir, &b->stats.store_full_refusals);
    int rc = compose(b);
    if (rc) goto fail;
    cy_store_loader l = {
        .session = load_session,
        .sub = load_sub,
        .msg = load_msg,
        .inq2 = load_inq2,
        .retained = load_retained,
        .peer = load_peer,
        .outbox = load_outbox,
    };
    rc = cy_store_load(store, &l, b);
    if (rc) goto fail;
    /* Last heard and last round trip of every device, and an offline event
     * for each that was online when this shard died. Without them the
     * shard still serves: presence then starts from nothing, as before. */
    int prc = cy_devices_load_presence(b->devices, b->registry);
    if (prc) cy_error(NULL, "shard %u: presence not loaded: %s", b->self, cy_strerror(prc));
    /* End what expired while we were down. */
    size_t ended = cy_devices_end_expired(b->devices);
    cy_store_commit(store);
    size_t outbox = cy_cluster_outbox_frames(b->cluster);
    cy_info(NULL,
            "shard %u/%u: loaded %llu sessions, %llu subscriptions, %llu retained messages, "
            "%zu frames for other shards%s",
            b->self, b->nshards, (unsigned long long)b->stats.sessions,
            (unsigned long long)b->stats.subscriptions,
            (unsigned long long)b->stats.retained_messages, outbox,
            ended ? " (expired sessions ended)" : "");
    *out = b;
    return 0;
fail:
    cy_shard_free(b);
    return rc;
}

void cy_shard_reload(cy_shard *b)
{
    cy_mqtt_tls_reload(b->mqtt);
    if (b->api) cy_api_reload_tls(b->api);
    char err[320];
    bool had = cy_devices_acl(b->devices) != NULL;
    if (cy_devices_load_acl(b->devices, err, sizeof(err))) {
        cy_error(NULL, "shard %u: acl_file not reloaded, the rules in use stay: %s", b->self, err);
        return;
    }
    const cy_acl *a = cy_devices_acl(b->devices);
    if (a)
        cy_info(NULL, "shard %u: acl_file %s read: %zu rules, %zu user blocks", b->self,
                b->cfg->acl_file, cy_acl_rule_count(a), cy_acl_user_count(a));
    else if (had)
        cy_info(NULL, "shard %u: acl_file unset: no access control beyond isolation", b->self);
}

static void on_ready(uv_timer_t *t);

/* MQTT over WebSocket: the API upgraded GET /mqtt; the gateway serves it. */
static void ws_accept(void *ctx, int fd, const uint8_t *extra, size_t len,
                      const struct sockaddr *peer, cy_http_upgraded *u)
{
    cy_mqtt_ws_accept(ctx, fd, extra, len, peer, u);
}

int cy_shard_start(cy_shard *b, const cy_shard_fds *fds)
{
    int listen_fd = fds->mqtt, http_fd = fds->http;
    /* Every handle cy_shard_stop closes is initialised before anything
     * here can fail: closing one never initialised aborts the process. */
    uv_check_init(b->loop, &b->pass_end);
    b->pass_end.data = b;
    uv_idle_init(b->loop, &b->spin);
    b->spin.data = b;
    uv_timer_init(b->loop, &b->sweep);
    b->sweep.data = b;
    uv_timer_init(b->loop, &b->ready);
    b->ready.data = b;
    uv_timer_init(b->loop, &b->device_tick);
    b->device_tick.data = b;
    uv_timer_init(b->loop, &b->owed_scan);
    b->owed_scan.data = b;
    b->handles = true;
    int rc = cy_mqtt_open(b->mqtt, listen_fd);
    if (rc) return rc;
    /* Broken certificate files (a reload since the start) cost this shard
     * its TLS listener, not its life: the others take the connections. */
    if (fds->mqtts >= 0) cy_mqtt_open_tls(b->mqtt, fds->mqtts);
    rc = cy_cluster_start(b->cluster);
    if (rc) return rc;
    rc = cy_coap_open(b->coap, fds->coap, fds->coaps);
    if (rc) {
        cy_error(NULL, "coap: %s", cy_strerror(rc));
        return rc;
    }
    rc = cy_webhooks_start(b->webhooks);
    if (rc) {
        cy_error(NULL, "webhooks: %s", cy_strerror(rc));
        return rc;
    }
    if (http_fd >= 0) {
        cy_api_deps ad = {
            .loop = b->loop,
            .cfg = b->cfg,
            .registry = b->registry,
            .router = b->router,
            .cluster = b->cluster,
            .devices = b->devices,
            .stats = &b->stats,
            .hists = &b->hists,
            .sb = b->sb,
            .limit = b->limit,
            .self = b->self,
            .nshards = b->nshards,
            .ws_accept = ws_accept,
            .ws_ctx = b->mqtt,
        };
        rc = cy_api_new(&ad, http_fd, &b->api);
        if (rc) {
            cy_error(NULL, "http api: %s", cy_strerror(rc));
            return rc;
        }
    }
    /* A shard that starts on a full disk refuses durable work from the
     * first client (it may have ended for a commit that found no room). */
    cy_space_probe(&b->space, " at start");
    uv_check_start(&b->pass_end, on_pass_end);
    b->early_left = CY_EARLY_PASSES;
    cy_mqtt_on_input(b->mqtt, on_input, b);
    /* The CONNECTs of one pass share a registry read transaction; the pass
     * end ends it. */
    cy_registry_share_reads(b->registry, true);
    /* Never wait on the registry's lock long enough to look hung. */
    cy_registry_set_busy_timeout(b->registry, b->cfg->watchdog_timeout / 4);
    uv_timer_start(&b->sweep, on_sweep, 0, CY_SWEEP_MS);
    b->started = cy_mono_ms();
    uv_timer_start(&b->ready, on_ready, 0, 20);
    uv_timer_start(&b->device_tick, on_device_tick, DEVICE_TICK_MS, DEVICE_TICK_MS);
    uint64_t every = (uint64_t)cy_watchdog_owed_interval(b->cfg->watchdog_timeout);
    uv_timer_start(&b->owed_scan, on_owed_scan, every, every);
    return 0;
}

/* Accept clients once every shard runs and our links to them are up, so a
 * node that is starting does not refuse the devices of its slower shards;
 * after CY_READY_WAIT_MS, accept anyway: refusals are then the truth. A
 * replacement shard finds its peers running and starts at once. The socket
 * is listening already (the supervisor's), so meanwhile clients wait in its
 * backlog. */
#define CY_READY_WAIT_MS 5000

static void on_ready(uv_timer_t *t)
{
    cy_shard *b = t->data;
    char why[96] = "";
    bool ready = cy_cluster_ready(b->cluster, why, sizeof(why));
    if (ready && b->slot) cy_sb_store(&b->slot->ready, 1);
    for (unsigned j = 0; ready && b->sb && j < b->nshards; j++) {
        const cy_sb_slot *s = &b->sb->slots[j];
        if (j != b->self && (cy_sb_load(&s->state) != CY_SHARD_RUNNING ||
                             !(cy_sb_load(&s->ready) || cy_sb_load(&s->accepting)))) {
            snprintf(why, sizeof(why), "shard %u is not ready", j);
            ready = false;
        }
    }
    bool late = cy_mono_ms() - b->started > CY_READY_WAIT_MS;
    if (!ready && !late) return;
    uv_timer_stop(t);
    if (b->slot) cy_sb_store(&b->slot->accepting, 1);
    if (cy_mqtt_accept(b->mqtt)) return;
    if (cy_coap_accept(b->coap)) cy_error(NULL, "coap: cannot poll its sockets");
    if (b->api) cy_api_listen(b->api);
    if (ready)
        cy_info(NULL, "shard %u/%u serving MQTT on %s", b->self, b->nshards, b->cfg->mqtt_listen);
    else
        cy_warn(NULL, "shard %u/%u serving MQTT on %s while %s", b->self, b->nshards,
                b->cfg->mqtt_listen, why);
}

void cy_shard_stop(cy_shard *b)
{
    if (b->stopping) return;
    b->stopping = true;
    cy_mqtt_stop(b->mqtt);
    cy_coap_stop(b->coap);
    /* Every device went offline (reason shutdown): their status events go
     * into this last batch, and their copies to the peers before the bus
     * closes. */
    cy_devices_stop(b->devices);
    cy_cluster_flush(b->cluster);
    if (b->api) cy_api_stop(b->api);
    cy_cluster_stop(b->cluster);
    cy_webhooks_stop(b->webhooks);
    cy_store_commit(b->store);
    cy_mqtt_flush(b->mqtt); /* the closed connections' last output, after the commit */
    cy_coap_flush(b->coap);
    if (b->handles) {
        uv_close((uv_handle_t *)&b->pass_end, NULL);
        uv_close((uv_handle_t *)&b->sweep, NULL);
        uv_close((uv_handle_t *)&b->ready, NULL);
        uv_close((uv_handle_t *)&b->device_tick, NULL);
        uv_close((uv_handle_t *)&b->owed_scan, NULL);
        uv_close((uv_handle_t *)&b->spin, NULL);
        b->handles = false;
    }
}

void cy_shard_free(cy_shard *b)
{
    if (!b) return;
    /* Highest layer first: each holds references into the ones below. */
    cy_api_free(b->api);
    cy_mqtt_free(b->mqtt);
    cy_coap_free(b->coap);
    cy_webhooks_free(b->webhooks);
    cy_devices_free(b->devices);
    cy_store_commit(b->store);
    cy_cluster_free(b->cluster);
    cy_router_free(b->router);
    cy_free(b);
}
