/* fuzz_api: libFuzzer target for the HTTP API's routes and request bodies
 * (src/api: api.c, api_events.c, api_webhooks.c, api_deliveries.c): path
 * splitting and route matching, token checks and scopes, the JSON bodies
 * of POST /v1/devices, /v1/events, a function call's args, POST and PATCH
 * /v1/webhooks (every field of a webhook definition, its templates and
 * URL), query parameters (timeout, last_event_id), event streams with
 * their Last-Event-ID, dead letters and event traces.
 *
 * The API runs as a shard builds it (src/shard/shard.c): a router, a
 * cluster of 2 shards (this is shard 0; its link to shard 1 is never up,
 * and shard 1 has no file, so what shard 1 owns answers 503 as when that
 * shard is down), the device layer, the webhook engine (not started:
 * nothing is delivered), and the API itself on fake_http.c, a stand-in for
 * src/http/http.c that takes requests as values and checks the HTTP
 * contract (every request answered once, with JSON; see fake_http.h).
 * Building the API opens every shard's file to preload the event ring
 * (milliseconds under ASan), so the layers live across inputs and are made
 * anew every RESET_EVERY inputs (and the store every fourth time): an input
 * leaves nothing of its own behind but events (in the ring, at most
 * event_buffer, and in the shard's log) and counters.
 *
 * Input: up to MAX_REQUESTS requests, separated by NUL bytes, run one
 * after the other on the same layers (a stream opened by one sees the
 * events the next ones publish). Each is HTTP-shaped text:
 *     METHOD SP TARGET [SP anything] LF
 *     Name: value LF            (headers, any number; CR before LF is dropped)
 *     LF
 *     body                      (the rest, any bytes)
 * Placeholders anywhere in it are replaced first by what the registry
 * (made once, restored after every input) holds: @FULL@, @READ@ and @INT@
 * by a full, a read-only and an internal token, @DEV0@ and @DEV1@ by the
 * ids of the user devices dev-0 and dev-1 (each has described the
 * functions led and reboot and the variable temp), @IDEV@ by an internal
 * device's id, @HOOK@ by a webhook's id, @EVENT@ by the id of the newest
 * event this shard has numbered (as the previous requests left it). After each request the loop
 * runs once and the event streams' tick runs (replays, heartbeats, token rechecks); at the end
 * every deadline passes (device calls time out), every client still waiting or streaming leaves.
 *
 * Not covered here: src/http/http.c itself and libmicrohttpd (how bytes
 * become a request: framing, limits, timeouts; the integration tests
 * test_api_abuse.py and test_api_streams_abuse.py drive those), answers of
 * devices to calls (no device is online), and what shard 1 would answer.
 * Logging is off (CYAN_FUZZ_LOG=debug shows it; CYAN_FUZZ_TRACE=1 prints
 * each request with the status it got, 0 while it waits or streams).
 */
#include "api/api.h"
#include "api/api_int.h"
#include "cluster/cluster.h"
#include "core/cy_clock.h"
#include "core/cy_config.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "device/device.h"
#include "fake_http.h"
#include "harness.h"
#include "health/metrics.h"
#include "router/msg.h"
#include "router/router.h"
#include "store/hooks.h"
#include "store/space.h"
#include "store/store.h"
#include "webhooks/webhooks.h"

#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NSHARDS 2
#define SELF 0
#define MAX_REQUESTS 8
#define MAX_HEADERS 32
#define RESET_EVERY 256

static struct {
    bool ready;
    char dir[64];
    uv_loop_t loop;
    cy_config cfg;
    cy_registry *registry;
    cy_store *store;
    int http_fd; /* what cy_api_new duplicates; fake_http never reads it */
    char full[CY_TOKEN_MAX + 1], read[CY_TOKEN_MAX + 1], internal[CY_TOKEN_MAX + 1];
    char dev[2][CY_DEVICE_ID_LEN + 1], idev[CY_DEVICE_ID_LEN + 1];
    char hook[CY_WEBHOOK_ID_LEN + 1];
    uint64_t hooks_gen; /* the webhook definitions' generation after the last restore */
    unsigned runs;
    int64_t clock; /* mono ms given to the ticks: only moves forward */
    bool trace;    /* CYAN_FUZZ_TRACE set: each request and its status on stderr */
} G;

static struct layers {
    fz_core c;
    cy_webhooks *webhooks;
    cy_api *api;
    cy_http *http;
    bool open;
} Y;

typedef struct layers layers;

/* ---- the registry and the store ---- */

static void store_path(char *p, size_t n, unsigned shard)
{
    snprintf(p, n, "%s/shard-%u.db", G.dir, shard);
}

static void open_store(void)
{
    char p[128];
    store_path(p, sizeof(p), SELF);
    CHECK(cy_store_open(p, false, &G.store) == 0);
}

static void add_device(int i)
{
    char name[16], secret[CY_DEVICE_SECRET_LEN + 1], psk[CY_DEVICE_PSK_LEN + 1];
    snprintf(name, sizeof(name), "dev-%d", i);
    CHECK(cy_registry_device_add(G.registry, name, G.dev[i], secret, psk) == 0);
}

static void add_hook(void)
{
    cy_webhook w;
    memset(&w, 0, sizeof(w));
    w.event = strdup("temp");
    w.url = strdup("https://example.com/hook/{{device_id}}");
    snprintf(w.method, sizeof(w.method), "POST");
    w.body_kind = 1; /* CY_WH_BODY_JSON */
    w.body = strdup("{\"v\":\"{{data.t}}\",\"n\":\"{{name}}\"}");
    w.headers = strdup("{\"X-Key\":\"k-{{device_id}}\"}");
    w.enabled = true;
    char why[160];
    CHECK(w.event && w.url && w.body && w.headers);
    CHECK(cy_registry_webhook_add(G.registry, &w, 100, why, sizeof(why)) == 0);
    snprintf(G.hook, sizeof(G.hook), "%s", w.id);
    cy_webhook_fini(&w);
}

typedef struct ids {
    char v[64][CY_DEVICE_ID_LEN + 1];
    unsigned n;
} ids;

static int collect_device(void *ctx, const cy_device *d)
{
    ids *x = ctx;
    if (x->n < 64) snprintf(x->v[x->n++], sizeof(x->v[0]), "%s", d->id);
    return 0;
}

static int collect_hook(void *ctx, const cy_webhook *w)
{
    ids *x = ctx;
    if (x->n < 64) snprintf(x->v[x->n++], sizeof(x->v[0]), "%s", w->id);
    return 0;
}

static int drop_replay(void *ctx, const char *id, uint64_t seq)
{
    (void)ctx, (void)id, (void)seq;
    return 0;
}

/* Back to the registry every input starts from: the devices dev-0 and
 * dev-1 and nothing else, the one webhook as made, no replay asked. */
static void restore(void)
{
    ids x;
    bool seen[2] = {false, false};
    do {
        x.n = 0;
        CHECK(cy_registry_device_list(G.registry, collect_device, &x) == 0);
        for (unsigned i = 0; i < x.n; i++) {
            if (!strcmp(x.v[i], G.dev[0]) || !strcmp(x.v[i], G.dev[1])) {
                seen[strcmp(x.v[i], G.dev[0]) != 0] = true;
                continue;
            }
            CHECK(cy_registry_device_remove(G.registry, x.v[i]) == 0);
        }
    } while (x.n == 64);
    for (int i = 0; i < 2; i++)
        if (!seen[i]) add_device(i);
    uint64_t gen = 0;
    CHECK(cy_registry_webhooks_gen(G.registry, &gen) == 0);
    if (gen != G.hooks_gen) {
        do {
            x.n = 0;
            CHECK(cy_registry_webhook_list(G.registry, collect_hook, &x) == 0);
            for (unsigned i = 0; i < x.n; i++)
                CHECK(cy_registry_webhook_delete(G.registry, x.v[i]) == 0);
        } while (x.n == 64);
        for (unsigned j = 0; j < NSHARDS; j++) /* dead-letter replays asked */
            CHECK(cy_registry_webhook_replays_take(G.registry, j, drop_replay, NULL) == 0);
        add_hook();
        CHECK(cy_registry_webhooks_gen(G.registry, &G.hooks_gen) == 0);
    }
}

static void layers_close(layers *y);

static void cleanup(void)
{
    if (Y.open) layers_close(&Y);
    cy_store_close(G.store);
    cy_registry_close(G.registry);
    fz_remove_dir(G.dir, NSHARDS);
}

static void init(void)
{
    G.trace = getenv("CYAN_FUZZ_TRACE") != NULL;
    fz_setup("api", G.dir, sizeof(G.dir), &G.loop, &G.cfg, NSHARDS);
    snprintf(G.cfg.http_listen, sizeof(G.cfg.http_listen), "127.0.0.1:0");
    /* Small limits, so that inputs reach them. */
    G.cfg.http_max_body = 8192;
    G.cfg.event_buffer = 8;
    G.cfg.sse_max_per_token = 2;
    G.cfg.sse_max_per_address = 3;
    G.cfg.webhook_max = 4;
    G.cfg.max_topic_length = 128;
    char p[160];
    snprintf(p, sizeof(p), "%s/registry.db", G.dir);
    CHECK(cy_registry_open(p, &G.registry) == 0);
    char id[CY_TOKEN_ID_LEN + 1], secret[CY_DEVICE_SECRET_LEN + 1], psk[CY_DEVICE_PSK_LEN + 1];
    CHECK(cy_registry_token_create(G.registry, "fuzz-full", CY_SCOPE_ALL, 0, id, G.full) == 0);
    CHECK(cy_registry_token_create(G.registry, "fuzz-read", CY_SCOPE_READ_ONLY, 0, id, G.read) ==
          0);
    CHECK(cy_registry_internal_token(G.registry, "cyan:fuzz", id, G.internal) == 0);
    CHECK(cy_registry_internal_device(G.registry, "cyan:fuzz:0", NULL, NULL, G.idev, secret, psk) ==
          0);
    for (int i = 0; i < 2; i++)
        add_device(i);
    add_hook();
    CHECK(cy_registry_webhooks_gen(G.registry, &G.hooks_gen) == 0);
    open_store();
    G.http_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    CHECK(G.http_fd >= 0);
    atexit(cleanup);
    G.ready = true;
}

/* ---- the layers ---- */

/* GET /mqtt: fake_http hands over no socket (fd -1), so this never runs;
 * set, it lets the handshake's checks run as in a shard. */
static void ws_accept(void *ctx, int fd, const uint8_t *extra, size_t len,
                      const struct sockaddr *peer, cy_http_upgraded *u)
{
    (void)ctx, (void)extra, (void)len, (void)peer, (void)u;
    CHECK(0 && fd);
}

static void layers_open(layers *y)
{
    memset(y, 0, sizeof(*y));
    fz_core_open(&y->c, &G.loop, &G.cfg, G.store, G.dir, SELF, NSHARDS, NULL);
    cy_webhooks_deps wd = {
        .loop = &G.loop,
        .cfg = &G.cfg,
        .store = G.store,
        .registry = G.registry,
        .router = y->c.router,
        .stats = &y->c.stats,
        .space = &y->c.space,
        .self = SELF,
        .nshards = NSHARDS,
    };
    CHECK(cy_webhooks_new(&wd, &y->webhooks) == 0);
    cy_api_deps ad = {
        .loop = &G.loop,
        .cfg = &G.cfg,
        .registry = G.registry,
        .router = y->c.router,
        .cluster = y->c.cl,
        .devices = y->c.devices,
        .stats = &y->c.stats,
        .hists = &y->c.hists,
        .sb = NULL,
        .self = SELF,
        .nshards = NSHARDS,
        .ws_accept = ws_accept,
    };
    CHECK(cy_api_new(&ad, G.http_fd, &y->api) == 0);
    cy_api_listen(y->api);
    y->http = fake_http_last();
    CHECK(y->http);
    y->open = true;
}

/* The user devices have described a function and a variable (retained,
 * as a device's describe is), so calls and reads get past "not described"
 * to the device's presence. Again after restore() made a device anew. */
static void describe(layers *y)
{
    static const char desc[] = "{\"functions\":[\"led\",\"reboot\"],\"variables\":[\"temp\"]}";
    for (int i = 0; i < 2; i++) {
        char topic[64];
        int n = snprintf(topic, sizeof(topic), "devices/%s/describe", G.dev[i]);
        if (cy_router_retained(y->c.router, topic, (size_t)n)) continue;
        cy_msg *m = cy_msg_new(topic, (size_t)n, (const uint8_t *)desc, sizeof(desc) - 1, NULL, 0,
                               1, true, 0);
        CHECK(m);
        cy_router_publish(y->c.router, m, NULL, NULL, false);
        cy_msg_unref(m);
    }
}

/* What the shard runs at the end of a loop pass. */
static void pass(layers *y)
{
    uv_run(&G.loop, UV_RUN_NOWAIT); /* the event fan-out's idle slices */
    cy_cluster_flush(y->c.cl);
    cy_cluster_before_commit(y->c.cl);
    cy_webhooks_pass(y->webhooks);
    cy_store_commit(G.store);
    cy_cluster_after_commit(y->c.cl);
    cy_registry_end_reads(G.registry);
}

/* The end of an input: every deadline passes (device calls and requests
 * time out), every client still waiting or streaming leaves. */
static void settle(layers *y)
{
    G.clock += 3600000;
    cy_devices_tick(y->c.devices, G.clock);
    cy_api_events_tick(y->api, G.clock);
    pass(y);
    fake_http_leave_all(y->http);
    pass(y);
}

static void layers_close(layers *y)
{
    y->open = false;
    cy_api_stop(y->api);
    cy_webhooks_stop(y->webhooks);
    uv_run(&G.loop, UV_RUN_NOWAIT); /* the handles close */
    cy_api_free(y->api);
    cy_webhooks_free(y->webhooks);
    fz_core_close(&y->c, G.store);
}

/* ---- the input ---- */

/* buf gets s[0..n) with the placeholders replaced (NUL-terminated, the
 * caller frees). */
static char *substitute(const char *s, size_t n)
{
    char event[48]; /* the id of the newest event this shard numbered */
    snprintf(event, sizeof(event), "%u-%llu", SELF, (unsigned long long)Y.api->last_seq[SELF]);
    const struct {
        const char *key, *value;
    } subs[] = {{"@FULL@", G.full},   {"@READ@", G.read},   {"@INT@", G.internal},
                {"@DEV0@", G.dev[0]}, {"@DEV1@", G.dev[1]}, {"@IDEV@", G.idev},
                {"@HOOK@", G.hook},   {"@EVENT@", event}};
    size_t cap = n * 12 + 1, len = 0; /* a 6-byte key becomes at most 64 bytes */
    char *out = malloc(cap);
    CHECK(out);
    for (size_t i = 0; i < n;) {
        bool done = false;
        for (size_t k = 0; !done && s[i] == '@' && k < sizeof(subs) / sizeof(subs[0]); k++) {
            size_t kl = strlen(subs[k].key);
            if (kl <= n - i && memcmp(s + i, subs[k].key, kl) == 0) {
                size_t vl = strlen(subs[k].value);
                memcpy(out + len, subs[k].value, vl);
                len += vl;
                i += kl;
                done = true;
            }
        }
        if (!done) out[len++] = s[i++];
    }
    out[len] = '\0';
    return out;
}

/* One request's text (NUL-terminated by substitute; body_len counts the
 * body, which may not hold a NUL anyway) into r. Strings point into text,
 * cut in place. false: no request line. */
static bool parse(char *text, size_t len, fake_http_request *r, const char **hdr)
{
    char *end = text + len;
    char *nl = memchr(text, '\n', len);
    char *line_end = nl ? nl : end;
    if (line_end > text && line_end[-1] == '\r') line_end[-1] = '\0';
    *line_end = '\0';
    char *sp = strchr(text, ' ');
    if (!sp || sp == text) return false;
    *sp = '\0';
    r->method = text;
    r->target = sp + 1;
    char *sp2 = strchr(sp + 1, ' ');
    if (sp2) *sp2 = '\0';
    if (!*r->target) return false;
    unsigned nh = 0;
    char *p = nl ? nl + 1 : end;
    r->body = NULL;
    r->body_len = 0;
    while (p < end) {
        char *e = memchr(p, '\n', (size_t)(end - p));
        char *le = e ? e : end;
        char *next = e ? e + 1 : end;
        if (le > p && le[-1] == '\r') le--;
        if (le == p) { /* the blank line: the body follows */
            r->body = (const uint8_t *)next;
            r->body_len = (size_t)(end - next);
            break;
        }
        *le = '\0';
        char *colon = strchr(p, ':');
        if (colon && colon > p && nh + 2 < MAX_HEADERS * 2) {
            *colon = '\0';
            char *v = colon + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            char *ve = v + strlen(v);
            while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
                *--ve = '\0';
            hdr[nh++] = p;
            hdr[nh++] = v;
        }
        p = next;
    }
    hdr[nh] = NULL;
    r->headers = hdr;
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!G.ready) init();
    layers *y = &Y;
    if (++G.runs % RESET_EVERY == 0 && y->open) {
        /* Fresh layers now and then, which preload the event ring from the
         * log; a fresh store every fourth time: what was published does
         * not pile up over a long run. */
        layers_close(y);
        if (G.runs % (4 * RESET_EVERY) == 0) {
            cy_store_close(G.store);
            char p[128];
            store_path(p, sizeof(p), SELF);
            fz_remove_db(p);
            open_store();
        }
    }
    if (!y->open) {
        layers_open(y);
        G.clock = cy_mono_ms();
    }
    describe(y);
    const uint8_t *p = data, *end = data + size;
    for (unsigned n = 0; n < MAX_REQUESTS && p < end; n++) {
        const uint8_t *z = memchr(p, 0, (size_t)(end - p));
        size_t len = z ? (size_t)(z - p) : (size_t)(end - p);
        char *text = substitute((const char *)p, len);
        p = z ? z + 1 : end;
        fake_http_request r;
        const char *hdr[MAX_HEADERS * 2 + 1];
        memset(&r, 0, sizeof(r));
        if (parse(text, strlen(text), &r, hdr)) {
            unsigned status = fake_http_run(y->http, &r);
            CHECK(status == 0 || status == 101 || (status >= 200 && status <= 599));
            if (G.trace) fprintf(stderr, "fuzz_api: %s %s -> %u\n", r.method, r.target, status);
            pass(y);
            G.clock += 2000; /* heartbeats, token rechecks, replays */
            cy_api_events_tick(y->api, G.clock);
            pass(y);
            fake_http_drain(y->http);
        }
        free(text);
    }
    settle(y);
    restore();
    return 0;
}
