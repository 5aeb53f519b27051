/* broker: lifecycle of one loop's broker, and the work that is not a packet.
 *
 * - Start: load persistent sessions (with their subscriptions, queued and
 *   in-flight messages, inbound QoS 2 ids) and retained messages from the
 *   store; sessions whose expiry ran out while cyan was down are ended.
 * - Each loop pass ends in the check handle: commit the store, then flush
 *   every connection with output (see broker.h for why in that order).
 * - A sweep timer every 250 ms closes sockets that sent no CONNECT within
 *   connect_timeout and clients silent for 1.5 x their keep-alive, publishes
 *   wills whose delay has passed, ends offline sessions whose expiry has
 *   passed, and every sys_interval publishes the counters that changed as
 *   retained $SYS/cyan/<name> messages.
 * - Disk full: while the data folder's file system has less than
 *   CY_DISK_LOW free, new durable work is refused before it is
 *   acknowledged (the handlers ask cy_broker_store_full); QoS 0, reads and
 *   the work already taken go on. The sweep asks the file system again and
 *   the state ends by itself from CY_DISK_OK. A commit that fails anyway
 *   still ends the process (see on_pass_end), and the next start begins in
 *   the state, refusing, instead of failing again.
 * - Stop: refuse new work, close connections (MQTT 5 clients get 0x8B),
 *   record offline time of persistent sessions, commit, close handles.
 */
#include "broker/broker_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* ---- loading persistent state ---- */

/* The store's loader: each part of the state to the layer that owns it. */
static int load_session(void *ctx, const cy_store_session *sr)
{
    return cy_devices_load_session(((cy_broker *)ctx)->devices, sr);
}

static int load_sub(void *ctx, const char *client_id, const char *filter, uint8_t opts,
                    uint32_t sub_id)
{
    return cy_devices_load_sub(((cy_broker *)ctx)->devices, client_id, filter, opts, sub_id);
}

static int load_msg(void *ctx, const char *client_id, const cy_store_msg *sm)
{
    return cy_devices_load_msg(((cy_broker *)ctx)->devices, client_id, sm);
}

static int load_inq2(void *ctx, const char *client_id, uint16_t id)
{
    return cy_devices_load_inq2(((cy_broker *)ctx)->devices, client_id, id);
}

static int load_retained(void *ctx, const cy_store_msg *sm)
{
    cy_broker *b = ctx;
    return cy_router_load_retained(b->router, sm);
}

static int load_peer(void *ctx, unsigned peer, uint64_t last_sent, uint64_t last_applied)
{
    cy_broker *b = ctx;
    return cy_cluster_load_peer(b->cluster, peer, last_sent, last_applied);
}

static int load_outbox(void *ctx, unsigned peer, uint64_t seq, const uint8_t *frame, size_t len)
{
    cy_broker *b = ctx;
    return cy_cluster_load_outbox(b->cluster, peer, seq, frame, len);
}

static void on_api_frame(void *ctx, unsigned from, uint8_t type, const uint8_t *body, size_t len)
{
    cy_api_on_frame(ctx, from, type, body, len);
}

/* ---- the end of each loop pass ---- */

static void on_pass_end(uv_check_t *h)
{
    cy_broker *b = h->data;
    /* Frames routed this pass go before the commit, which may wait for the
     * disk; what the commit releases goes when the bus flushes itself. */
    cy_cluster_flush(b->cluster);
    cy_cluster_before_commit(b->cluster);
    /* Counters reach the scoreboard before any reply leaves: a client that
     * got its CONNACK here and connects again elsewhere must be counted
     * there (max_connections is node-wide). */
    cy_broker_beat(b);
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
        cy_conn *list = b->dirty;
        b->dirty = NULL;
        while (list) {
            cy_conn *c = list;
            list = c->dirty_next;
            c->dirty = false;
            c->dirty_next = NULL;
            cy_conn_flush(c);
        }
        /* Bus acks and durable frames leave only after the commit; acks
         * received may delete outbox rows, which the next round commits. */
        cy_cluster_after_commit(b->cluster);
        cy_cluster_before_commit(b->cluster);
    } while (b->dirty || cy_store_pending(b->store));
    cy_broker_beat(b);
    cy_registry_end_reads(b->registry); /* the next pass sees the CLI's changes */
}

void cy_broker_beat(cy_broker *b)
{
    cy_sb_slot *s = b->slot;
    if (!s) return;
    cy_sb_store(&s->heartbeat_ms, cy_mono_ms());
    cy_sb_storeu(&s->loops, s->loops + 1);
    cy_sb_storeu(&s->progress, b->progress + cy_cluster_progress(b->cluster));
    cy_sb_storeu(&s->connections, b->n_conns);
    cy_cluster_beat(b->cluster, s);
    cy_metrics_publish(s, &b->stats);
}

uint64_t cy_broker_clients_connected(const cy_broker *b)
{
    return cy_metrics_node_total(b->sb, b->self, &b->stats, CY_METRIC_INDEX(clients_connected));
}

void cy_broker_stall(cy_broker *b)
{
    cy_warn(NULL, "drill: stalling (input ignored, heartbeat kept) until killed");
    b->stalled = true;
    cy_cluster_stall(b->cluster);
    for (cy_conn *c = b->conns; c; c = c->next)
        if (c->state != CONN_CLOSING && c->state != CONN_HANDED)
            uv_read_stop((uv_stream_t *)&c->tcp);
}

/* ---- disk full ---- */

/* Enter the disk-full state (one warning; the sweep's probe leaves it). */
static void disk_enter(cy_broker *b, uint64_t free_bytes, const char *when)
{
    if (b->disk_full) return;
    b->disk_full = true;
    b->disk_refused_at = b->stats.store_full_refusals;
    cy_warn(NULL,
            "disk full%s: %llu KiB free in %s (under %u MiB): refusing new durable work "
            "(QoS 1/2 and retained publishes, new persistent sessions and their "
            "subscriptions) until %u MiB are free; QoS 0 and connected clients go on",
            when, (unsigned long long)(free_bytes >> 10), b->cfg->data_dir, CY_DISK_LOW >> 20,
            CY_DISK_OK >> 20);
}

/* Ask the file system how much room is left, and enter or leave the
 * disk-full state (one warning each way). */
static void disk_probe(cy_broker *b, const char *when)
{
    uint64_t free_bytes = 0;
    int rc = cy_store_space(b->store, &free_bytes);
    b->disk_probe_at = (int64_t)uv_now(b->loop);
    b->disk_bytes_at = cy_store_bytes(b->store);
    if (rc) {
        /* Cannot tell (an in-memory store, a statvfs failure): a commit that
         * fails still keeps acknowledgements back; refusing on a guess
         * would not. */
        if (!b->disk_unknown)
            cy_warn(NULL, "cannot ask the data folder's file system for free space (%s): "
                          "durable work is not refused for lack of space",
                    cy_strerror(rc));
        b->disk_unknown = true;
        return;
    }
    b->disk_unknown = false;
    b->disk_free = free_bytes;
    if (!b->disk_full && free_bytes < CY_DISK_LOW) {
        disk_enter(b, free_bytes, when);
    } else if (b->disk_full && free_bytes >= CY_DISK_OK) {
        b->disk_full = false;
        cy_warn(NULL, "disk space back: %llu MiB free in %s: taking durable work again "
                      "(%llu refused meanwhile)",
                (unsigned long long)(free_bytes >> 20), b->cfg->data_dir,
                (unsigned long long)(b->stats.store_full_refusals - b->disk_refused_at));
    }
}

bool cy_broker_store_full(cy_broker *b)
{
    if (b->disk_full) return true;
    if (b->disk_unknown) return false;
    /* The file system is asked at most every CY_DISK_PROBE_MS (other
     * shards write to it too); in between, our own writes since the last
     * answer count twice (the WAL, then the file at the checkpoint). */
    if ((int64_t)uv_now(b->loop) - b->disk_probe_at >= CY_DISK_PROBE_MS) disk_probe(b, "");
    if (b->disk_full) return true;
    uint64_t spent = 2 * (cy_store_bytes(b->store) - b->disk_bytes_at);
    uint64_t left = b->disk_free > spent ? b->disk_free - spent : 0;
    /* Every refusal is made in the state (logged, left by the sweep), so a
     * shard whose estimate runs low between probes does not take and
     * refuse by turns. */
    if (left < CY_DISK_LOW) disk_enter(b, left, " (estimated)");
    return b->disk_full;
}

/* ---- the sweep ---- */

static void publish_sys(cy_broker *b)
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
        cy_msg *m = cy_msg_new(topic, (size_t)tl, (const uint8_t *)payload, (size_t)pl, NULL, 0,
                               0, true, 0);
        if (!m) return;
        cy_router_publish(b->router, m, NULL, NULL, false);
        cy_msg_unref(m);
    }
}

static void on_sweep(uv_timer_t *t)
{
    cy_broker *b = t->data;
    int64_t now = (int64_t)uv_now(b->loop);
    for (cy_conn *c = b->conns; c; c = c->next) {
        if (c->state == CONN_NEW && now - c->last_rx > (int64_t)b->cfg->connect_timeout * 1000) {
            b->stats.connect_timeouts++;
            cy_conn_close(c, 0, "no CONNECT within connect_timeout");
        } else if (cy_conn_check_stall(c, now)) {
            /* closed: it read nothing of its output for max_output_stall */
        } else if (c->state == CONN_ACTIVE && c->keepalive && !c->paused &&
                   now - c->last_rx > (int64_t)c->keepalive * 1500) {
            /* (not while reading is stopped for back-pressure: that silence is ours) */
            b->stats.keepalive_timeouts++;
            cy_conn_close(c, CY_RC_KEEP_ALIVE_TIMEOUT, "keep-alive timeout");
        } else if (c->state == CONN_ACTIVE && c->out.cap && !cy_buf_size(&c->out) && !c->dirty &&
                   now - c->last_rx > 1000) {
            cy_buf_fini(&c->out); /* an idle connection keeps no output buffer */
        }
    }
    cy_devices_sweep(b->devices);
    cy_cluster_sweep(b->cluster);
    disk_probe(b, ""); /* the way out of the disk-full state */
    /* Space freed by deletes (cleared retained messages, acknowledged
     * frames) goes back to the file system a slice per sweep. */
    cy_store_reclaim(b->store, CY_RECLAIM_PAGES);
    if (b->cfg->sys_interval && now >= b->sys_next) {
        publish_sys(b);
        b->sys_next = now + (int64_t)b->cfg->sys_interval * 1000;
    }
}

/* ---- lifecycle ---- */

int cy_broker_new(uv_loop_t *loop, const cy_config *cfg, cy_store *store, cy_registry *registry,
                  const cy_broker_shard *shard, cy_broker **out)
{
    cy_broker *b = cy_calloc(1, sizeof(*b));
    if (!b) return CY_ENOMEM;
    b->loop = loop;
    b->cfg = cfg;
    b->store = store;
    b->registry = registry;
    b->self = shard ? shard->index : 0;
    b->nshards = shard && shard->count ? shard->count : 1;
    b->generation = shard ? shard->generation : 0;
    b->sb = shard ? shard->sb : NULL;
    b->slot = b->sb ? &b->sb->slots[b->self] : NULL;
    cy_logrl_init(&b->login_log, CY_LOGIN_LOG_WINDOW_MS, CY_LOGIN_LOG_BURST);
    cy_buf_init(&b->scratch);
    int rc = cy_router_new(cfg, store, &b->stats, b->self, &b->router);
    if (rc) goto fail;
    cy_cluster_options co = {b->self, b->nshards, b->generation, b->sb};
    rc = cy_cluster_new(loop, cfg, store, b->router, &b->stats, &co, &b->cluster);
    if (rc) goto fail;
    cy_cluster_hooks ch = {.adopt = cy_conn_adopt,
                           .frame = on_api_frame,
                           .release = cy_conn_release_held,
                           .ctx = b};
    cy_cluster_set_hooks(b->cluster, &ch);
    rc = cy_devices_new(loop, cfg, store, b->router, b->cluster, &b->stats, b->self, b->nshards,
                        b->generation, &b->devices);
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
    cy_broker_free(b);
    return rc;
}

static void on_ready(uv_timer_t *t);

int cy_broker_start(cy_broker *b, int listen_fd)
{
    int fd = dup(listen_fd);
    if (fd < 0) return -errno;
    /* Every handle cy_broker_stop closes is initialised before anything
     * here can fail: closing one never initialised aborts the process. */
    uv_tcp_init(b->loop, &b->listener);
    b->listener.data = b;
    uv_check_init(b->loop, &b->pass_end);
    b->pass_end.data = b;
    uv_timer_init(b->loop, &b->sweep);
    b->sweep.data = b;
    uv_timer_init(b->loop, &b->ready);
    b->ready.data = b;
    b->listening = true;
    int rc = uv_tcp_open(&b->listener, fd);
    if (rc) {
        close(fd);
        cy_error(NULL, "listen on inherited socket: %s", uv_strerror(rc));
        return rc;
    }
    rc = cy_cluster_start(b->cluster);
    if (rc) return rc;
    /* A shard that starts on a full disk refuses durable work from the
     * first client (it may have ended for a commit that found no room). */
    disk_probe(b, " at start");
    uv_check_start(&b->pass_end, on_pass_end);
    /* The CONNECTs of one pass share a registry read transaction; the pass
     * end ends it. */
    cy_registry_share_reads(b->registry, true);
    /* Never wait on the registry's lock long enough to look hung. */
    cy_registry_set_busy_timeout(b->registry, b->cfg->watchdog_timeout / 4);
    uv_timer_start(&b->sweep, on_sweep, 0, CY_SWEEP_MS);
    b->started = cy_mono_ms();
    uv_timer_start(&b->ready, on_ready, 0, 20);
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
    cy_broker *b = t->data;
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
    int rc = uv_listen((uv_stream_t *)&b->listener, 1024, cy_conn_on_connection);
    if (rc) {
        cy_error(NULL, "listen: %s", uv_strerror(rc));
        return;
    }
    cy_api_listen(b);
    if (ready)
        cy_info(NULL, "shard %u/%u serving MQTT on %s", b->self, b->nshards, b->cfg->mqtt_listen);
    else
        cy_warn(NULL, "shard %u/%u serving MQTT on %s while %s", b->self, b->nshards,
                b->cfg->mqtt_listen, why);
}

void cy_broker_stop(cy_broker *b)
{
    if (b->stopping) return;
    b->stopping = true;
    cy_info(NULL, "stopping: closing %u connections", b->n_conns);
    for (cy_conn *c = b->conns; c; c = c->next) {
        c->clean_disconnect = true; /* a shutdown is not the client's failure */
        cy_conn_close(c, CY_RC_SERVER_SHUTTING_DOWN, NULL);
    }
    cy_api_stop(b);
    cy_cluster_stop(b->cluster);
    cy_store_commit(b->store);
    if (b->listening) {
        uv_close((uv_handle_t *)&b->listener, NULL);
        uv_close((uv_handle_t *)&b->pass_end, NULL);
        uv_close((uv_handle_t *)&b->sweep, NULL);
        uv_close((uv_handle_t *)&b->ready, NULL);
        b->listening = false;
    }
}

void cy_broker_free(cy_broker *b)
{
    if (!b) return;
    cy_devices_free(b->devices);
    cy_api_free(b); /* holds message references; before the trees go */
    cy_store_commit(b->store);
    cy_cluster_free(b->cluster);
    cy_router_free(b->router);
    cy_buf_fini(&b->scratch);
    cy_free(b);
}
