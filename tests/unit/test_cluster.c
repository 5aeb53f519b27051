/* Unit tests of src/cluster/cluster.c: two or three shards in one process,
 * on one uv loop. Each shard has what a real one gives its cluster: a store
 * file (shard-<i>.db in one data folder, whose run/ the buses share), a
 * router, counters, and a loop pass (a uv_check handle doing what
 * broker.c's on_pass_end does for the cluster: flush, store peer state,
 * commit, acknowledge and write durable frames) plus a sweep timer.
 * Subscribers are a fake kind that records what it is given.
 *
 * A shard "dies" by stopping and freeing its cluster and router and closing
 * its store, and comes back by opening the same store and loading peer
 * state and outbox from it, as a respawned shard does. Every wait runs the
 * loop in bounded steps until a condition holds (WAIT); a check that
 * something did not arrive waits for a later thing that must arrive first.
 * Callbacks only record; assertions happen outside uv_run. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cluster/cluster.h"
#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_config.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "health/scoreboard.h"
#include "router/msg.h"
#include "router/router.h"
#include "router/topic.h"
#include "store/store.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NS 3         /* shards at most */
#define MAXGOT 64    /* deliveries recorded per subscriber */
#define MAXREL 16    /* held acknowledgements recorded */
#define MAXCAP 16    /* outbox frames captured while loading */
#define SWEEP_MS 50  /* faster than CY_SWEEP_MS: only latency depends on it */
#define WAIT_MS 5000 /* deadline of one WAIT (a failure, never a normal wait) */

/* ---- fake subscribers ---------------------------------------------------- */

typedef struct got {
    char topic[64];
    char payload[64];
    uint8_t qos;
    bool retain;
} got;

typedef struct fsub {
    cy_subscriber sub;
    unsigned n;   /* recorded (at most MAXGOT) */
    unsigned all; /* delivered */
    got v[MAXGOT];
} fsub;

static void fsub_deliver(void *ctx, cy_subscriber *s, const cy_route *r, const cy_match *x)
{
    (void)ctx;
    fsub *f = (fsub *)s;
    f->all++;
    if (f->n >= MAXGOT) return;
    got *g = &f->v[f->n++];
    snprintf(g->topic, sizeof(g->topic), "%.*s", (int)r->m->topic_len, r->m->topic);
    snprintf(g->payload, sizeof(g->payload), "%.*s", (int)r->m->payload_len,
             (const char *)r->m->payload);
    g->qos = x->qos;
    g->retain = x->retain;
}

static const cy_sub_kind fake_kind = {.name = "test", .deliver = fsub_deliver};

static void fsub_init(fsub *f)
{
    memset(f, 0, sizeof(*f));
    cy_subscriber_init(&f->sub, &fake_kind);
}

/* How many times f got topic. */
static unsigned got_n(const fsub *f, const char *topic)
{
    unsigned n = 0;
    for (unsigned i = 0; i < f->n; i++)
        n += strcmp(f->v[i].topic, topic) == 0;
    return n;
}

/* ---- shards ---------------------------------------------------------------- */

typedef struct frame_rec {
    unsigned from;
    uint8_t type;
    uint8_t *body;
    size_t len;
} frame_rec;

typedef struct rel_rec {
    cy_held_owner *o;
    char bytes[16];
    int64_t at;       /* mono ms */
    size_t peer_subs; /* subscriptions in the other shard's router at that moment */
} rel_rec;

typedef struct captured {
    unsigned peer;
    uint64_t seq;
    uint8_t *frame;
    size_t len;
} captured;

typedef struct shard {
    unsigned idx;
    cy_config cfg;
    char db[600];
    cy_store *store;
    cy_router *router;
    cy_cluster *cl;
    cy_counters stats;
    bool stopped; /* between cy_cluster_stop and cy_cluster_free */
    uint64_t generation;
    uv_check_t pass;
    uv_timer_t sweep;
    int commit_errors;
    frame_rec frames[8];
    unsigned nframes; /* recorded in frames */
    unsigned frames_seen;
} shard;

typedef struct world {
    uv_loop_t loop;
    uv_timer_t tick;
    char dir[64];
    unsigned n;    /* shards of this test */
    bool no_sweep; /* held acknowledgements then go only on ACK or peer down */
    shard s[NS];
    rel_rec rel[MAXREL];
    unsigned nrel;
    bool capture; /* record outbox frames loaded from a store */
    captured cap[MAXCAP];
    unsigned ncap;
} world;

static world *W;

/* The end of a loop pass, as broker.c's on_pass_end does it for the cluster. */
static void on_pass(uv_check_t *h)
{
    shard *s = h->data;
    if (!s->cl || s->stopped) return;
    cy_cluster_flush(s->cl);
    cy_cluster_before_commit(s->cl);
    do {
        if (cy_store_pending(s->store) && cy_store_commit(s->store)) s->commit_errors++;
        cy_cluster_after_commit(s->cl);
        cy_cluster_before_commit(s->cl);
    } while (cy_store_pending(s->store));
}

static void on_sweep(uv_timer_t *h)
{
    shard *s = h->data;
    if (s->cl && !s->stopped && !W->no_sweep) cy_cluster_sweep(s->cl);
}

static void on_tick(uv_timer_t *h)
{
    (void)h; /* keeps every UV_RUN_ONCE short */
}

static void hook_frame(void *ctx, unsigned from, uint8_t type, const uint8_t *body, size_t len)
{
    shard *s = ctx;
    s->frames_seen++;
    if (s->nframes >= 8) return;
    frame_rec *f = &s->frames[s->nframes++];
    f->from = from;
    f->type = type;
    f->len = len;
    f->body = NULL; /* a large frame is only measured */
    if (len > (1u << 20)) return;
    f->body = malloc(len ? len : 1);
    if (!f->body) abort();
    memcpy(f->body, body, len);
}

static void hook_release(void *ctx, cy_held_owner *o, const uint8_t *bytes, size_t len)
{
    shard *s = ctx;
    if (W->nrel >= MAXREL) return;
    rel_rec *r = &W->rel[W->nrel++];
    r->o = o;
    snprintf(r->bytes, sizeof(r->bytes), "%.*s", (int)len, (const char *)bytes);
    r->at = cy_mono_ms();
    shard *other = &W->s[s->idx == 0 ? 1 : 0];
    r->peer_subs = other->router ? cy_router_subscriptions(other->router) : 0;
}

static int load_peer(void *ctx, unsigned peer, uint64_t last_sent, uint64_t last_applied)
{
    return cy_cluster_load_peer(((shard *)ctx)->cl, peer, last_sent, last_applied);
}

static int load_outbox(void *ctx, unsigned peer, uint64_t seq, const uint8_t *frame, size_t len)
{
    if (W->capture && W->ncap < MAXCAP) {
        captured *c = &W->cap[W->ncap++];
        c->peer = peer;
        c->seq = seq;
        c->frame = malloc(len);
        if (!c->frame) abort();
        memcpy(c->frame, frame, len);
        c->len = len;
    }
    return cy_cluster_load_outbox(((shard *)ctx)->cl, peer, seq, frame, len);
}

/* Bring shard i up from its store, as a (re)spawned shard does. */
static void shard_up(unsigned i)
{
    shard *s = &W->s[i];
    assert_null(s->cl);
    assert_int_equal(cy_store_open(s->db, false, &s->store), 0);
    assert_int_equal(cy_router_new(&s->cfg, s->store, &s->stats, i, &s->router), 0);
    cy_cluster_options o = {.self = i, .nshards = W->n, .generation = ++s->generation};
    assert_int_equal(cy_cluster_new(&W->loop, &s->cfg, s->store, s->router, &s->stats, &o, &s->cl),
                     0);
    cy_cluster_hooks h = {.frame = hook_frame, .release = hook_release, .ctx = s};
    cy_cluster_set_hooks(s->cl, &h);
    cy_store_loader l = {.peer = load_peer, .outbox = load_outbox};
    assert_int_equal(cy_store_load(s->store, &l, s), 0);
    s->stopped = false;
}

static void shard_start(unsigned i)
{
    assert_int_equal(cy_cluster_start(W->s[i].cl), 0);
}

static void step(void)
{
    uv_run(&W->loop, UV_RUN_ONCE);
}

/* Run the loop until cond holds; fail the test after ms (WAIT: WAIT_MS). */
#define WAIT_FOR(cond, ms)                                                                         \
    do {                                                                                           \
        int64_t dl_ = cy_mono_ms() + (ms);                                                         \
        while (!(cond) && cy_mono_ms() < dl_)                                                      \
            step();                                                                                \
        assert_true(cond);                                                                         \
    } while (0)
#define WAIT(cond) WAIT_FOR(cond, WAIT_MS)

static void run_for(int64_t ms)
{
    int64_t end = cy_mono_ms() + ms;
    while (cy_mono_ms() < end)
        step();
}

static bool ready(unsigned i)
{
    char why[128];
    return W->s[i].cl && cy_cluster_ready(W->s[i].cl, why, sizeof(why));
}

static bool all_ready(void)
{
    for (unsigned i = 0; i < W->n; i++)
        if (!ready(i)) return false;
    return true;
}

/* Kill shard i: stop its cluster (storing peer state), let the bus close
 * its handles, free cluster and router (its subscribers are gone with it),
 * close its store. The others see the link go. */
static void shard_down(unsigned i)
{
    shard *s = &W->s[i];
    if (!s->cl) return;
    cy_cluster_stop(s->cl);
    s->stopped = true;
    assert_int_equal(cy_store_commit(s->store), 0);
    for (int k = 0; k < 20; k++)
        uv_run(&W->loop, UV_RUN_NOWAIT); /* close callbacks */
    cy_cluster_free(s->cl);
    s->cl = NULL;
    cy_router_free(s->router);
    s->router = NULL;
    cy_store_close(s->store);
    s->store = NULL;
    for (unsigned j = 0; j < W->n; j++)
        if (j != i && W->s[j].cl) WAIT(!ready(j));
}

/* All n shards up, linked, every interest snapshot known. */
static void up_all(void)
{
    for (unsigned i = 0; i < W->n; i++)
        shard_up(i);
    for (unsigned i = 0; i < W->n; i++)
        shard_start(i);
    WAIT(all_ready());
}

static int publish(unsigned i, const char *topic, const char *payload, uint8_t qos, bool retain,
                   bool refusable)
{
    cy_msg *m = cy_msg_new(topic, strlen(topic), (const uint8_t *)payload, strlen(payload), NULL, 0,
                           qos, retain, 0);
    assert_non_null(m);
    int rc = cy_router_publish(W->s[i].router, m, NULL, "tester", refusable);
    cy_msg_unref(m);
    return rc;
}

/* f subscribes as a persistent session does (CY_SUBOPT_DURABLE: QoS 1/2
 * forwards to it are durable), or as a clean one (sub_clean). */
static int sub(unsigned i, fsub *f, const char *filter, uint8_t qos)
{
    return cy_cluster_subscribe(W->s[i].cl, &f->sub, filter, strlen(filter),
                                (uint8_t)(qos | CY_SUBOPT_DURABLE), 0);
}

static int sub_clean(unsigned i, fsub *f, const char *filter, uint8_t qos)
{
    return cy_cluster_subscribe(W->s[i].cl, &f->sub, filter, strlen(filter), qos, 0);
}

static size_t subs(unsigned i)
{
    return cy_router_subscriptions(W->s[i].router);
}

/* Frames shard i wrote to shard j on the current link (cy_cluster_beat). */
static uint64_t bus_sent(unsigned i, unsigned j)
{
    static cy_sb_slot slot;
    cy_cluster_beat(W->s[i].cl, &slot);
    return cy_sb_loadu(&slot.bus_sent[j]);
}

static uint64_t bus_acked(unsigned i, unsigned j)
{
    static cy_sb_slot slot;
    cy_cluster_beat(W->s[i].cl, &slot);
    return cy_sb_loadu(&slot.bus_acked[j]);
}

static size_t outbox(unsigned i)
{
    return cy_cluster_outbox_frames(W->s[i].cl);
}

static int setup_n(void **state, unsigned n)
{
    W = calloc(1, sizeof(*W));
    if (!W) return -1;
    W->n = n;
    if (uv_loop_init(&W->loop)) return -1;
    snprintf(W->dir, sizeof(W->dir), "/tmp/cycl-XXXXXX");
    if (!mkdtemp(W->dir)) return -1;
    char run[128];
    snprintf(run, sizeof(run), "%s/run", W->dir);
    if (mkdir(run, 0700)) return -1;
    uv_timer_init(&W->loop, &W->tick);
    uv_timer_start(&W->tick, on_tick, 1, 1);
    for (unsigned i = 0; i < NS; i++) {
        shard *s = &W->s[i];
        s->idx = i;
        cy_config_defaults(&s->cfg);
        snprintf(s->cfg.data_dir, sizeof(s->cfg.data_dir), "%s", W->dir);
        snprintf(s->db, sizeof(s->db), "%s/shard-%u.db", W->dir, i);
        uv_check_init(&W->loop, &s->pass);
        s->pass.data = s;
        uv_check_start(&s->pass, on_pass);
        uv_timer_init(&W->loop, &s->sweep);
        s->sweep.data = s;
        uv_timer_start(&s->sweep, on_sweep, SWEEP_MS, SWEEP_MS);
    }
    *state = W;
    return 0;
}

static int setup2(void **state)
{
    return setup_n(state, 2);
}

static int setup3(void **state)
{
    return setup_n(state, 3);
}

static void rm_dir(const char *path)
{
    DIR *d = opendir(path);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char p[700];
        snprintf(p, sizeof(p), "%s/%s", path, e->d_name);
        struct stat st;
        if (lstat(p, &st) == 0 && S_ISDIR(st.st_mode))
            rm_dir(p);
        else
            unlink(p);
    }
    closedir(d);
    rmdir(path);
}

static int teardown(void **state)
{
    (void)state;
    for (unsigned i = 0; i < NS; i++) {
        shard *s = &W->s[i];
        if (s->cl) {
            cy_cluster_stop(s->cl);
            s->stopped = true;
        }
    }
    for (int k = 0; k < 20; k++)
        uv_run(&W->loop, UV_RUN_NOWAIT);
    int errors = 0;
    for (unsigned i = 0; i < NS; i++) {
        shard *s = &W->s[i];
        errors += s->commit_errors;
        cy_cluster_free(s->cl);
        cy_router_free(s->router);
        cy_store_close(s->store);
        for (unsigned k = 0; k < s->nframes; k++)
            free(s->frames[k].body);
        uv_close((uv_handle_t *)&s->pass, NULL);
        uv_close((uv_handle_t *)&s->sweep, NULL);
    }
    for (unsigned k = 0; k < W->ncap; k++)
        free(W->cap[k].frame);
    uv_close((uv_handle_t *)&W->tick, NULL);
    for (int k = 0; k < 100; k++)
        uv_run(&W->loop, UV_RUN_NOWAIT);
    int rc = uv_loop_close(&W->loop);
    rm_dir(W->dir);
    free(W);
    W = NULL;
    return rc == 0 && errors == 0 ? 0 : -1;
}

/* ---- tests ------------------------------------------------------------------ */

/* Links come up and every shard is ready once it holds every peer's
 * interest snapshot; a dead peer makes the others not ready again. */
static void test_cy_cluster_ready(void **state)
{
    (void)state;
    for (unsigned i = 0; i < W->n; i++)
        shard_up(i);
    char why[128] = "";
    assert_false(cy_cluster_ready(W->s[0].cl, why, sizeof(why)));
    assert_string_equal(why, "no link to shard 1 yet");
    for (unsigned i = 0; i < W->n; i++)
        shard_start(i);
    WAIT(all_ready());
    shard_down(2);
    assert_false(cy_cluster_ready(W->s[0].cl, why, sizeof(why)));
    assert_string_equal(why, "no link to shard 2 yet");
    shard_up(2);
    shard_start(2);
    WAIT(all_ready());
}

/* A subscriber on B gets what is published on A; after it unsubscribes,
 * A drops B's interest and stops forwarding; a filter two subscribers of
 * B hold stays while one holds it. */
static void test_cy_cluster_subscribe_forwards(void **state)
{
    (void)state;
    up_all();
    fsub fb, fb2, fa;
    fsub_init(&fb);
    fsub_init(&fb2);
    fsub_init(&fa);
    assert_int_equal(sub(1, &fb, "i/a", 1), 0);
    assert_int_equal(sub(1, &fb, "i/b", 1), 0);
    assert_int_equal(sub(1, &fb, "i/c", 1), 0);
    assert_int_equal(sub(1, &fb2, "i/c", 1), 0);
    assert_int_equal(sub(0, &fa, "i/#", 1), 0);
    WAIT(subs(0) == 4); /* fa's filter and B's three */

    assert_int_equal(publish(0, "i/a", "one", 0, false, true), 0);
    assert_int_equal(publish(0, "i/a", "two", 1, false, true), 0);
    WAIT(fb.n == 2);
    assert_string_equal(fb.v[0].topic, "i/a");
    assert_string_equal(fb.v[0].payload, "one");
    assert_int_equal(fb.v[0].qos, 0);
    assert_string_equal(fb.v[1].payload, "two");
    assert_int_equal(fb.v[1].qos, 1);
    assert_int_equal(fa.n, 2); /* local subscribers of A, once each */

    cy_cluster_unsubscribe(W->s[1].cl, &fb.sub, "i/a", 3);
    cy_cluster_unsubscribe(W->s[1].cl, &fb.sub, "i/c", 3); /* fb2 still holds it */
    WAIT(subs(0) == 3);
    assert_int_equal(publish(0, "i/a", "three", 1, false, true), 0);
    assert_int_equal(publish(0, "i/c", "four", 1, false, true), 0);
    assert_int_equal(publish(0, "i/b", "five", 1, false, true), 0);
    WAIT(got_n(&fb, "i/b") == 1);
    assert_int_equal(got_n(&fb, "i/a"), 2);
    assert_int_equal(got_n(&fb, "i/c"), 0);
    assert_int_equal(got_n(&fb2, "i/c"), 1); /* before i/b: one link keeps order */
    assert_int_equal(W->s[0].stats.messages_dropped, 0);
}

/* QoS 1 for a dead peer waits in the outbox, survives the sender's
 * restart from its store, reaches the peer when it is back, and a replay
 * of frames it applied already is skipped: exactly once. */
static void test_cy_cluster_outbox_durable(void **state)
{
    (void)state;
    up_all();
    fsub fb;
    fsub_init(&fb);
    assert_int_equal(sub(1, &fb, "q/#", 1), 0);
    WAIT(subs(0) == 1);

    shard_down(1);
    assert_int_equal(publish(0, "q/1", "p1", 1, false, false), 0);
    assert_int_equal(publish(0, "q/2", "p2", 1, false, true), 0);
    assert_int_equal(publish(0, "q/0", "p0", 0, false, true), 0); /* not durable: dropped */
    assert_int_equal(outbox(0), 2);
    assert_int_equal(W->s[0].stats.messages_dropped, 1);
    run_for(20); /* passes commit the outbox */

    /* A restarts from its store: the frames are still owed. */
    shard_down(0);
    W->capture = true;
    shard_up(0);
    W->capture = false;
    assert_int_equal(outbox(0), 2);
    assert_int_equal(W->ncap, 2);
    shard_start(0);

    /* B comes back; its session subscribes again as it loads. */
    shard_up(1);
    fsub_init(&fb);
    assert_int_equal(sub(1, &fb, "q/#", 1), 0);
    shard_start(1);
    WAIT(fb.n == 2 && outbox(0) == 0);
    assert_string_equal(fb.v[0].topic, "q/1");
    assert_string_equal(fb.v[0].payload, "p1");
    assert_int_equal(fb.v[0].qos, 1);
    assert_string_equal(fb.v[1].topic, "q/2");
    run_for(20);

    /* A crashed before its store dropped the acknowledged frames: both
     * restart, A replays them; B applied them already and skips them. */
    shard_down(1);
    shard_down(0);
    shard_up(0);
    assert_int_equal(outbox(0), 0);
    for (unsigned k = 0; k < W->ncap; k++)
        assert_int_equal(cy_cluster_load_outbox(W->s[0].cl, W->cap[k].peer, W->cap[k].seq,
                                                W->cap[k].frame, W->cap[k].len),
                         0);
    assert_int_equal(outbox(0), 2);
    shard_start(0);
    shard_up(1);
    fsub_init(&fb);
    assert_int_equal(sub(1, &fb, "q/#", 1), 0);
    shard_start(1);
    WAIT(outbox(0) == 0 && all_ready()); /* B acknowledged the replay */
    assert_int_equal(publish(0, "q/3", "p3", 1, false, true), 0);
    WAIT(fb.n >= 1); /* after the replay on the same link: nothing of it was applied */
    assert_int_equal(fb.n, 1);
    assert_string_equal(fb.v[0].topic, "q/3");
    WAIT(outbox(0) == 0);
}

/* A PUBLISH frame from a peer as cluster.c lays it out: every truncation
 * before its payload is malformed and ignored (nothing delivered, no
 * crash), a topic of length 0 too; the whole frame is delivered. */
static void test_cy_cluster_publish_frame_truncated(void **state)
{
    (void)state;
    up_all();
    fsub fb;
    fsub_init(&fb);
    assert_int_equal(sub_clean(1, &fb, "t/#", 1), 0);
    WAIT(subs(0) == 1);
    uint8_t f[64];
    size_t n = 0;
    memset(f, 0, 8 + 1 + 8 + 8); /* seq 0 (not durable), flags, expiry, retain_ts */
    f[8] = 1 | 8;                /* QoS 1, route to local subscribers */
    n = 8 + 1 + 8 + 8;
    f[n++] = 0; /* topic length */
    f[n++] = 3;
    memcpy(f + n, "t/x", 3);
    n += 3;
    f[n++] = 0; /* props length */
    f[n++] = 0;
    f[n++] = 0;
    f[n++] = 1;
    f[n++] = 0x23; /* one property byte, carried as it is */
    f[n++] = 0;    /* no shared groups */
    size_t head = n;
    memcpy(f + n, "hello", 5);
    n += 5;
    for (size_t k = 0; k < head; k++)
        cy_cluster_input(W->s[1].cl, 0, 4, f, k);
    cy_cluster_input(W->s[1].cl, 0, 4, NULL, 0);
    assert_int_equal(fb.all, 0);
    uint8_t z[sizeof(f)];
    memcpy(z, f, n);
    z[8 + 1 + 8 + 8 + 1] = 0; /* topic length 0 */
    cy_cluster_input(W->s[1].cl, 0, 4, z, n);
    assert_int_equal(fb.all, 0);
    cy_cluster_input(W->s[1].cl, 0, 4, f, n);
    assert_int_equal(fb.all, 1);
    assert_string_equal(fb.v[0].topic, "t/x");
    assert_string_equal(fb.v[0].payload, "hello");
    assert_int_equal(fb.v[0].qos, 1);
}

/* Frames written on a link that then broke, before the peer applied them,
 * are written again on its next link (the sender did not restart). */
static void test_cy_cluster_outbox_replay_on_relink(void **state)
{
    (void)state;
    up_all();
    fsub fb;
    fsub_init(&fb);
    assert_int_equal(sub(1, &fb, "q/#", 1), 0);
    WAIT(subs(0) == 1);
    cy_cluster_stall(W->s[1].cl); /* B reads and ignores: nothing applied */
    uint64_t sent = bus_sent(0, 1);
    assert_int_equal(publish(0, "q/1", "p1", 1, false, true), 0);
    assert_int_equal(publish(0, "q/2", "p2", 2, false, true), 0);
    WAIT(bus_sent(0, 1) == sent + 2); /* both written on this link */
    assert_int_equal(outbox(0), 2);
    assert_int_equal(fb.n, 0);
    shard_down(1);
    assert_int_equal(outbox(0), 2);
    shard_up(1);
    fsub_init(&fb);
    assert_int_equal(sub(1, &fb, "q/#", 2), 0);
    shard_start(1);
    WAIT(fb.n == 2 && outbox(0) == 0);
    assert_string_equal(fb.v[0].topic, "q/1");
    assert_string_equal(fb.v[1].topic, "q/2");
    assert_int_equal(fb.v[1].qos, 2);
}

/* max_outbox_bytes: with B down and its outbox full, a client's QoS 1
 * publish that needs it is refused whole (0x97, limit_outbox), a retained
 * one too; QoS 0 and work that cannot be refused go on; once B drains
 * the outbox, publishes are admitted again. */
static void test_cy_cluster_outbox_bound(void **state)
{
    (void)state;
    W->s[0].cfg.max_outbox_bytes = 1; /* the first frame fills it */
    up_all();
    fsub fa, fb;
    fsub_init(&fa);
    fsub_init(&fb);
    assert_int_equal(sub(0, &fa, "o/#", 1), 0);
    assert_int_equal(sub(1, &fb, "o/#", 1), 0);
    WAIT(subs(0) == 2);
    shard_down(1);

    assert_int_equal(publish(0, "o/1", "a", 1, false, true), 0); /* fits: the outbox was empty */
    assert_int_equal(outbox(0), 1);
    assert_int_equal(fa.n, 1);
    assert_int_equal(publish(0, "o/2", "b", 1, false, true), CY_REASON_QUOTA_EXCEEDED);
    assert_int_equal(W->s[0].stats.limit_outbox, 1);
    assert_int_equal(outbox(0), 1);
    assert_int_equal(fa.n, 1); /* refused whole: not delivered here either */
    /* A retained update goes to every peer: refused too, and not kept. */
    assert_int_equal(publish(0, "x/r", "r", 0, true, true), CY_REASON_QUOTA_EXCEEDED);
    assert_int_equal(W->s[0].stats.limit_outbox, 2);
    assert_null(cy_router_retained(W->s[0].router, "x/r", 3));
    /* QoS 0 needs no durable frame. */
    assert_int_equal(publish(0, "o/3", "c", 0, false, true), 0);
    assert_int_equal(fa.n, 2);
    /* Work that cannot be refused overshoots the bound. */
    assert_int_equal(publish(0, "o/4", "d", 1, false, false), 0);
    assert_int_equal(outbox(0), 2);
    assert_int_equal(fa.n, 3);
    assert_int_equal(W->s[0].stats.limit_outbox, 2);
    run_for(20);

    shard_up(1);
    assert_int_equal(sub(1, &fb, "o/#", 1), 0);
    shard_start(1);
    WAIT(fb.n == 2 && outbox(0) == 0);
    assert_string_equal(fb.v[0].topic, "o/1");
    assert_string_equal(fb.v[1].topic, "o/4");
    WAIT(all_ready());
    assert_int_equal(publish(0, "o/5", "e", 1, false, true), 0); /* room again */
    WAIT(fb.n == 3);
    assert_string_equal(fb.v[2].topic, "o/5");
    assert_int_equal(W->s[0].stats.limit_outbox, 2);
}

/* A SUBACK-like acknowledgement held after a subscribe goes through the
 * release hook only after B acknowledged the new interest (no sweep runs:
 * nothing else could release it), and its owner's later entry follows it. */
static void test_cy_cluster_hold_until_acked(void **state)
{
    (void)state;
    up_all();
    W->no_sweep = true;
    fsub fa;
    fsub_init(&fa);
    cy_held_owner o1 = {0}, o2 = {0};
    size_t before = subs(1);

    cy_cluster_hold_begin(W->s[0].cl);
    assert_false(cy_cluster_must_hold(W->s[0].cl, &o1));
    assert_int_equal(sub(0, &fa, "h/x", 1), 0);
    assert_true(cy_cluster_must_hold(W->s[0].cl, &o1));
    assert_int_equal(cy_cluster_hold(W->s[0].cl, &o1, true, (const uint8_t *)"a1", 2), 0);
    cy_cluster_hold_begin(W->s[0].cl);                  /* the next packet writes to nobody */
    assert_true(cy_cluster_must_hold(W->s[0].cl, &o1)); /* o1 has one waiting */
    assert_false(cy_cluster_must_hold(W->s[0].cl, &o2));
    assert_int_equal(cy_cluster_hold(W->s[0].cl, &o1, true, (const uint8_t *)"a2", 2), 0);
    assert_int_equal(o1.n, 2);
    cy_cluster_sweep(W->s[0].cl); /* B cannot have acknowledged: no loop ran */
    assert_int_equal(W->nrel, 0);
    cy_cluster_flush(W->s[0].cl); /* interest frames written: not enough */
    assert_int_equal(W->nrel, 0);

    WAIT(W->nrel == 2);
    assert_string_equal(W->rel[0].bytes, "a1");
    assert_string_equal(W->rel[1].bytes, "a2");
    assert_ptr_equal(W->rel[0].o, &o1);
    assert_int_equal(W->rel[0].peer_subs, before + 1); /* B held the interest */
    assert_int_equal(o1.n, 0);
}

/* With B hung (frames ignored), held acknowledgements go at their
 * deadline (CY_HOLD_MS, 1 s), not before; another owner's entry that waits
 * for no peer goes at the next sweep, ahead of them. */
static void test_cy_cluster_hold_deadline(void **state)
{
    (void)state;
    up_all();
    cy_cluster_stall(W->s[1].cl);
    fsub fa;
    fsub_init(&fa);
    cy_held_owner o1 = {0}, o2 = {0};
    /* the deadline counts from the loop's time when held (uv_now) */
    uv_update_time(&W->loop);
    int64_t t0 = (int64_t)uv_now(&W->loop);
    cy_cluster_hold_begin(W->s[0].cl);
    assert_int_equal(sub(0, &fa, "h/y", 1), 0);
    assert_true(cy_cluster_must_hold(W->s[0].cl, &o1));
    assert_int_equal(cy_cluster_hold(W->s[0].cl, &o1, true, (const uint8_t *)"a1", 2), 0);
    cy_cluster_hold_begin(W->s[0].cl);
    assert_int_equal(cy_cluster_hold(W->s[0].cl, &o1, true, (const uint8_t *)"a2", 2), 0);
    assert_int_equal(cy_cluster_hold(W->s[0].cl, &o2, false, (const uint8_t *)"b1", 2), 0);

    WAIT(W->nrel == 3);
    assert_string_equal(W->rel[0].bytes, "b1");
    assert_string_equal(W->rel[1].bytes, "a1");
    assert_string_equal(W->rel[2].bytes, "a2");
    assert_true(W->rel[0].at - t0 < 1000);
    assert_true(W->rel[1].at - t0 >= 1000);
    assert_int_equal(o1.n + o2.n, 0);
}

/* A peer that goes away releases what waits for it at once (no sweep
 * runs, and the deadline is not reached). */
static void test_cy_cluster_hold_peer_down(void **state)
{
    (void)state;
    up_all();
    W->no_sweep = true;
    cy_cluster_stall(W->s[1].cl);
    fsub fa;
    fsub_init(&fa);
    cy_held_owner o1 = {0};
    cy_cluster_hold_begin(W->s[0].cl);
    assert_int_equal(sub(0, &fa, "h/z", 1), 0);
    assert_int_equal(cy_cluster_hold(W->s[0].cl, &o1, true, (const uint8_t *)"a1", 2), 0);
    /* a dropped owner's entries never go */
    cy_held_owner o3 = {0};
    assert_int_equal(cy_cluster_hold(W->s[0].cl, &o3, true, (const uint8_t *)"c1", 2), 0);
    cy_cluster_drop_held(W->s[0].cl, &o3);
    assert_int_equal(o3.n, 0);
    int64_t t0 = cy_mono_ms();
    shard_down(1);
    WAIT(W->nrel == 1);
    assert_string_equal(W->rel[0].bytes, "a1");
    assert_true(W->rel[0].at - t0 < 1000);
}

/* Held acknowledgements this shard owes (cy_cluster_owed_held): not one
 * that waits for a live peer within its deadline (the peer's work), nor
 * one behind its owner's waiting entry; one that may go and has not (no
 * sweep ran), and every one once past its deadline. Releasing them is
 * progress and leaves nothing owed. */
static void test_cy_cluster_owed_held(void **state)
{
    (void)state;
    up_all();
    W->no_sweep = true;
    cy_cluster_stall(W->s[1].cl); /* B never acknowledges */
    cy_cluster *cl = W->s[0].cl;
    fsub fa;
    fsub_init(&fa);
    cy_held_owner o1 = {0}, o2 = {0};
    int64_t now = cy_mono_ms();
    assert_int_equal(cy_cluster_owed_held(cl, now), 0);
    cy_cluster_hold_begin(cl);
    assert_int_equal(sub(0, &fa, "ow/x", 1), 0); /* an interest frame for B */
    assert_int_equal(cy_cluster_hold(cl, &o1, true, (const uint8_t *)"a1", 2), 0);
    assert_int_equal(cy_cluster_owed_held(cl, now), 0); /* B's to apply */
    cy_cluster_hold_begin(cl);                          /* the next packets write to nobody */
    assert_int_equal(cy_cluster_hold(cl, &o1, true, (const uint8_t *)"a2", 2), 0);
    assert_int_equal(cy_cluster_owed_held(cl, now), 0); /* behind a1 */
    assert_int_equal(cy_cluster_hold(cl, &o2, false, (const uint8_t *)"b1", 2), 0);
    assert_int_equal(cy_cluster_owed_held(cl, now), 1);        /* b1 may go: ours */
    assert_int_equal(cy_cluster_owed_held(cl, now), 1);        /* counting changes nothing */
    assert_int_equal(cy_cluster_owed_held(cl, now + 2000), 3); /* all past the deadline */
    assert_int_equal(W->nrel, 0);

    uint64_t done = cy_cluster_progress(cl);
    cy_cluster_sweep(cl); /* b1 goes; a1, a2 still within their deadline */
    assert_int_equal(W->nrel, 1);
    assert_string_equal(W->rel[0].bytes, "b1");
    assert_int_equal(cy_cluster_progress(cl), done + 1);
    assert_int_equal(cy_cluster_owed_held(cl, cy_mono_ms()), 0);
    W->no_sweep = false;
    WAIT(W->nrel == 3); /* at their deadline */
    assert_int_equal(cy_cluster_progress(cl), done + 3);
    assert_int_equal(cy_cluster_owed_held(cl, cy_mono_ms() + 10000), 0);
}

/* Durable frames this shard owes (cy_cluster_owed_frames): one not yet
 * written to a live peer whose bus has nothing queued, until the pass end
 * writes it (progress); not one written and unacknowledged (the peer's
 * work), nor one for a peer that is down. */
static void test_cy_cluster_owed_frames(void **state)
{
    (void)state;
    up_all();
    fsub fb;
    fsub_init(&fb);
    assert_int_equal(sub(1, &fb, "of/#", 1), 0);
    WAIT(subs(0) == 1);
    cy_cluster *cl = W->s[0].cl;
    assert_int_equal(cy_cluster_owed_frames(cl), 0);
    cy_cluster_stall(W->s[1].cl); /* B reads and applies nothing, sends nothing */
    run_for(20); /* what A queued on the link (its ACKs) is written: the bus is idle */
    uint64_t done = cy_cluster_progress(cl);
    assert_int_equal(publish(0, "of/1", "p1", 1, false, true), 0);
    assert_int_equal(publish(0, "of/2", "p2", 1, false, true), 0);
    assert_int_equal(outbox(0), 2);
    assert_int_equal(cy_cluster_owed_frames(cl), 2); /* the pass end has not run */
    step();
    assert_int_equal(cy_cluster_owed_frames(cl), 0); /* written: B's to acknowledge */
    assert_int_equal(cy_cluster_progress(cl), done + 2);
    assert_int_equal(outbox(0), 2);
    shard_down(1);
    assert_int_equal(publish(0, "of/4", "p4", 1, false, true), 0);
    assert_int_equal(outbox(0), 3);
    assert_int_equal(cy_cluster_owed_frames(cl), 0); /* for a peer that is down */
}

/* An interest frame the bus refused (backlog full) while the link is up
 * is made good by a new snapshot at the next sweep; the frame counts of
 * both ends stay in step across it, so the peer's acknowledgements catch
 * up with what was sent (the watchdog reads a gap as work owed to an idle
 * peer) and later held acknowledgements go on its ACK, not at a deadline. */
static void test_cy_cluster_interest_resync(void **state)
{
    (void)state;
    up_all();
    WAIT(bus_acked(0, 1) == bus_sent(0, 1));
    /* Fill the link's backlog (64 MiB) in one synchronous stretch: nothing
     * is written before the loop runs again. Frames of 1 MiB, not one of
     * 64: valgrind checks a whole buffer on every partial write(2). */
    size_t chunk = (1u << 20) - 5; /* + 5 bytes of frame head: 1 MiB of backlog */
    uint8_t *buf = calloc(1, chunk);
    assert_non_null(buf);
    for (unsigned k = 0; k < 64; k++)
        assert_int_equal(cy_cluster_send(W->s[0].cl, 1, CY_FRAME_API_REQ, buf, chunk, NULL, 0), 0);
    free(buf);
    fsub fa, fa2;
    fsub_init(&fa);
    fsub_init(&fa2);
    assert_int_equal(sub(0, &fa, "rs/a", 1), 0); /* its ADD is refused: backlog full */
    int64_t t0 = cy_mono_ms();
    /* 64 MiB through a socket: seconds under valgrind */
    WAIT_FOR(W->s[1].frames_seen == 64 && subs(1) == 1, 60000); /* the sweep's snapshot */
    fprintf(stderr, "resync test: 64 MiB and a snapshot through the bus in %lld ms\n",
            (long long)(cy_mono_ms() - t0));
    assert_int_equal(W->s[1].frames[0].len, chunk);
    assert_int_equal(publish(1, "rs/a", "x", 1, false, true), 0);
    WAIT(fa.n == 1);
    WAIT(bus_acked(0, 1) == bus_sent(0, 1));

    W->no_sweep = true;
    cy_held_owner o = {0};
    cy_cluster_hold_begin(W->s[0].cl);
    assert_int_equal(sub(0, &fa2, "rs/b", 1), 0);
    assert_true(cy_cluster_must_hold(W->s[0].cl, &o));
    assert_int_equal(cy_cluster_hold(W->s[0].cl, &o, true, (const uint8_t *)"s1", 2), 0);
    WAIT(W->nrel == 1);
    assert_int_equal(W->rel[0].peer_subs, 2);
}

/* Frames of the layers above reach the peer's frame hook as sent. */
static void test_cy_cluster_send(void **state)
{
    (void)state;
    up_all();
    size_t big = 100000;
    uint8_t *body = malloc(big);
    assert_non_null(body);
    for (size_t k = 0; k < big; k++)
        body[k] = (uint8_t)(k * 7);
    assert_int_equal(cy_cluster_send(W->s[0].cl, 1, CY_FRAME_API_REQ, "head", 4, body, big), 0);
    WAIT(W->s[1].nframes == 1);
    frame_rec *f = &W->s[1].frames[0];
    assert_int_equal(f->from, 0);
    assert_int_equal(f->type, CY_FRAME_API_REQ);
    assert_int_equal(f->len, 4 + big);
    assert_memory_equal(f->body, "head", 4);
    assert_memory_equal(f->body + 4, body, big);
    free(body);

    assert_int_equal(cy_cluster_send(W->s[1].cl, 0, CY_FRAME_API_RESP, "ok", 2, NULL, 0), 0);
    WAIT(W->s[0].nframes == 1);
    assert_int_equal(W->s[0].frames[0].from, 1);
    assert_int_equal(W->s[0].frames[0].type, CY_FRAME_API_RESP);
    assert_int_equal(W->s[0].frames[0].len, 2);
    assert_memory_equal(W->s[0].frames[0].body, "ok", 2);

    shard_down(1);
    assert_int_equal(cy_cluster_send(W->s[0].cl, 1, CY_FRAME_API_REQ, "x", 1, NULL, 0), CY_EPIPE);
}

/* cy_shard_of decides which file holds a session: fixed values. */
static void test_cy_shard_of(void **state)
{
    (void)state;
    /* FNV-1a 64: "" 0xcbf29ce484222325, "dev-1" 0x8596fc76092a2e96,
     * "client-42" 0x48479ee4ff52b58f */
    assert_int_equal(cy_shard_of("", 0, 64), 37);
    assert_int_equal(cy_shard_of("dev-1", 5, 2), 0);
    assert_int_equal(cy_shard_of("dev-1", 5, 7), 6);
    assert_int_equal(cy_shard_of("dev-1", 5, 64), 22);
    assert_int_equal(cy_shard_of("client-42", 9, 4), 3);
    assert_int_equal(cy_shard_of("client-42", 9, 3), 2);
    assert_int_equal(cy_shard_of("sensor/7", 8, 7), 6);
    assert_int_equal(cy_shard_of("dev-1", 5, 1), 0);
    assert_int_equal(cy_shard_of("dev-1", 5, 0), 0);
    unsigned seen[8] = {0};
    for (unsigned k = 0; k < 4000; k++) {
        char id[32];
        int len = snprintf(id, sizeof(id), "device-%u", k);
        for (unsigned n = 1; n <= 64; n++)
            assert_true(cy_shard_of(id, (size_t)len, n) < n);
        seen[cy_shard_of(id, (size_t)len, 8)]++;
    }
    for (unsigned j = 0; j < 8; j++)
        assert_true(seen[j] > 0);
}

/* A retained publish on A sets (and an empty one clears) the retained
 * message on B although B has no interest in it; with interest, one
 * frame both routes and sets it. */
static void test_cy_cluster_retained_replication(void **state)
{
    (void)state;
    up_all();
    fsub fb;
    fsub_init(&fb);
    assert_int_equal(sub(1, &fb, "r/u", 1), 0);
    WAIT(subs(0) == 1);

    assert_int_equal(publish(0, "r/t", "v1", 0, true, true), 0);
    cy_msg *ma = cy_router_retained(W->s[0].router, "r/t", 3);
    assert_non_null(ma);
    WAIT(cy_router_retained(W->s[1].router, "r/t", 3) != NULL);
    cy_msg *mb = cy_router_retained(W->s[1].router, "r/t", 3);
    assert_int_equal(mb->payload_len, 2);
    assert_memory_equal(mb->payload, "v1", 2);
    assert_true(mb->retain_ts == ma->retain_ts);
    assert_int_equal(mb->origin, 0);

    assert_int_equal(publish(0, "r/t", "", 0, true, true), 0);
    WAIT(cy_router_retained(W->s[1].router, "r/t", 3) == NULL);

    assert_int_equal(publish(0, "r/u", "v2", 1, true, true), 0);
    WAIT(fb.n == 1 && cy_router_retained(W->s[1].router, "r/u", 3) != NULL);
    assert_string_equal(fb.v[0].payload, "v2");
    assert_int_equal(got_n(&fb, "r/t"), 0);
    WAIT(outbox(0) == 0); /* B acknowledged every frame: it applied them all */
    assert_int_equal(fb.n, 1);
}

/* QoS 1 for clean sessions only skips the outbox: it goes at once, and
 * the publisher's acknowledgement is held until the peer applied it. A
 * persistent subscriber of the same filter on the peer makes the forwards
 * durable again, until it leaves; with the peer down, a forward for clean
 * sessions is dropped and counted (the sessions it was for are gone). */
static void test_cy_cluster_clean_qos1_skips_outbox(void **state)
{
    (void)state;
    up_all();
    W->no_sweep = true; /* held acknowledgements go only on a flush or B's ACK */
    cy_cluster *a = W->s[0].cl;
    fsub fc, fd;
    fsub_init(&fc);
    fsub_init(&fd);
    assert_int_equal(sub_clean(1, &fc, "c/#", 1), 0);
    WAIT(subs(0) == 1);

    cy_held_owner o = {0};
    cy_cluster_hold_begin(a);
    assert_int_equal(publish(0, "c/1", "one", 1, false, true), 0);
    assert_int_equal(outbox(0), 0);
    assert_true(cy_cluster_must_hold(a, &o)); /* the PUBACK waits for the frame */
    assert_int_equal(cy_cluster_hold(a, &o, true, (const uint8_t *)"k1", 2), 0);
    assert_int_equal(W->nrel, 0);
    /* A's pass flushes the bus: the frame is in the socket, so the PUBACK
     * may go, before B has even read it (B's sessions are clean: if B
     * dies they end with it; if A dies, B still reads the frame) */
    cy_cluster_flush(a);
    assert_int_equal(W->nrel, 1);
    assert_int_equal(fc.n, 0);
    WAIT(fc.n == 1);
    assert_int_equal(fc.v[0].qos, 1);

    /* a persistent session on B holds the filter too: durable */
    assert_int_equal(sub(1, &fd, "c/+", 1), 0);
    run_for(50);
    assert_int_equal(publish(0, "c/2", "two", 1, false, true), 0);
    assert_int_equal(outbox(0), 1);
    WAIT(outbox(0) == 0 && fd.n == 1 && fc.n == 2);
    /* an overlapping filter of the clean one only: not durable */
    assert_int_equal(publish(0, "c/2/x", "three", 1, false, true), 0);
    assert_int_equal(outbox(0), 0);
    WAIT(fc.n == 3);
    /* the persistent session leaves: clean only again */
    cy_cluster_unsubscribe(W->s[1].cl, &fd.sub, "c/+", 3);
    run_for(50);
    assert_int_equal(publish(0, "c/3", "four", 1, false, true), 0);
    assert_int_equal(outbox(0), 0);
    WAIT(fc.n == 4);
    /* the same session's options change from clean to persistent */
    assert_int_equal(sub(1, &fc, "c/#", 1), 0);
    run_for(50);
    assert_int_equal(publish(0, "c/4", "five", 1, false, true), 0);
    assert_int_equal(outbox(0), 1);
    WAIT(outbox(0) == 0 && fc.n == 5);
    assert_int_equal(sub_clean(1, &fc, "c/#", 1), 0);
    run_for(50);

    /* B not keeping up (no loop runs while A publishes 72 MiB, past its
     * bus backlog of 64 MiB): what the bus refuses waits in the outbox */
    static uint8_t big[64 << 10];
    memset(big, 'b', sizeof(big));
    unsigned before = fc.all, n_big = 1152;
    for (unsigned k = 0; k < n_big; k++) {
        cy_msg *m = cy_msg_new("c/big", 5, big, sizeof(big), NULL, 0, 1, false, 0);
        assert_non_null(m);
        assert_int_equal(cy_router_publish(W->s[0].router, m, NULL, "tester", true), 0);
        cy_msg_unref(m);
    }
    assert_true(outbox(0) > 0);
    WAIT(fc.all == before + n_big && outbox(0) == 0);

    /* B down: dropped and counted, nothing owed */
    uint64_t dropped = W->s[0].stats.messages_dropped;
    shard_down(1);
    assert_int_equal(publish(0, "c/5", "six", 1, false, true), 0);
    assert_int_equal(outbox(0), 0);
    assert_int_equal(W->s[0].stats.messages_dropped, dropped + 1);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    cy_log_set_level(CY_LOG_ERROR);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cy_shard_of),
        cmocka_unit_test_setup_teardown(test_cy_cluster_ready, setup3, teardown),
        cmocka_unit_test_setup_teardown(test_cy_cluster_subscribe_forwards, setup2, teardown),
        cmocka_unit_test_setup_teardown(test_cy_cluster_publish_frame_truncated, setup2, teardown),
        cmocka_unit_test_setup_teardown(test_cy_cluster_outbox_durable, setup2, teardown),
        cmocka_unit_test_setup_teardown(test_cy_cluster_outbox_replay_on_relink, setup2, teardown),
        cmocka_unit_test_setup_teardown(test_cy_cluster_outbox_bound, setup2, teardown),
        cmocka_unit_test_setup_teardown(test_cy_cluster_hold_until_acked, setup2, teardown),
        cmocka_unit_test_setup_teardown(test_cy_cluster_hold_deadline, setup2, teardown),
        cmocka_unit_test_setup_teardown(test_cy_cluster_hold_peer_down, setup2, teardown),
        cmocka_unit_test_setup_teardown(test_cy_cluster_owed_held, setup2, teardown),
        cmocka_unit_test_setup_teardown(test_cy_cluster_owed_frames, setup2, teardown),
        cmocka_unit_test_setup_teardown(test_cy_cluster_interest_resync, setup2, teardown),
        cmocka_unit_test_setup_teardown(test_cy_cluster_send, setup2, teardown),
        cmocka_unit_test_setup_teardown(test_cy_cluster_retained_replication, setup2, teardown),
        cmocka_unit_test_setup_teardown(test_cy_cluster_clean_qos1_skips_outbox, setup2, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
