/* fuzz_bus: libFuzzer target for the frames between shards: the bus's
 * reader (cy_bus_frame_parse, cy_bus_hello_parse, src/cluster/bus.c), the
 * cluster's frames (cy_cluster_input, src/cluster/cluster.c: interest,
 * PUBLISH, ACK) and the frames of the layers above that the cluster hands
 * to its hook: API_REQ / API_RESP (device/requests.c, device/calls.c) and
 * COAP_IN / COAP_OUT / COAP_KICK (coap/coap.c, coap/endpoint.c).
 *
 * The input is what a peer shard writes on its link to shard 0 of 4: a
 * HELLO, then frames, read the way the bus reads them. The link ends where
 * the bus would close it (a bad HELLO or length, a type-0 frame, a frame
 * flagged as carrying a descriptor: none comes with these bytes) or where
 * the bytes run out mid-frame. Every frame goes to a fresh shard's layers,
 * built as the shard builds them (src/shard/shard.c compose()): a router, a
 * cluster of 4 shards whose links are never up (what it would send to a
 * peer is refused, as when the link is down), the device layer, and the
 * CoAP transport, with a DTLS terminator on a socket nobody reads when a
 * frame asks for one (output datagrams go nowhere: the plain socket is
 * off, the terminator has no sessions). After each frame the pass hooks run (flush, store commit,
 * output), and at the end the layers' deadlines are run far into the future
 * (calls time out, retransmissions give up, endpoints idle out) before
 * everything is freed: that is where a frame's leftovers would crash or
 * leak.
 *
 * Device ids: the registry (made once) holds two devices, whose random ids
 * a seed cannot know; the 24 bytes "@DEVICE-0@@@@@@@@@@@@@@@" and
 * "@DEVICE-1@@@@@@@@@@@@@@@" anywhere in the input are replaced by their ids
 * first. The shard store is made anew every RESET_EVERY inputs, so what
 * peers retain does not pile up over a long run.
 *
 * Answers of devices: cyan draws the message ids and tokens of its
 * requests to a device (calls, reads, messages) at random, so an input
 * cannot know them. The fuzzer reads the last request cyan sent from the
 * CoAP output before each flush (coap_int.h); in a COAP_IN datagram that
 * follows, message id 0xFFFF becomes that request's id, and a token of as
 * many 0xFF bytes as its token becomes its token: a device's piggybacked,
 * separate and Block2 answers, its ACKs and RSTs.
 *
 * Not driven here: a frame that carries a TCP handle (HANDOVER needs a real
 * descriptor), and the requester side of API_RESP (it completes only a
 * request this shard sent to a peer, which needs a link up). Frames are
 * handled the same whichever peer sends them, so one link is enough.
 * Logging is off (set CYAN_FUZZ_LOG=debug to see it); crashes, leaks and
 * UBSan reports are what the run looks for.
 */
#include "cluster/bus.h"
#include "cluster/cluster.h"
#include "coap/coap.h"
#include "coap/coap_int.h"
#include "coap/codec.h"
#include "core/cy_buf.h"
#include "core/cy_clock.h"
#include "core/cy_config.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "device/device.h"
#include "harness.h"
#include "health/metrics.h"
#include "router/router.h"
#include "store/space.h"
#include "store/store.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NSHARDS 4
#define SELF 0
#define RESET_EVERY 512
#define PLACEHOLDER_LEN 24

static const char *const placeholder[2] = {"@DEVICE-0@@@@@@@@@@@@@@@", "@DEVICE-1@@@@@@@@@@@@@@@"};

/* The last request cyan sent a device (class 0, from the CoAP output
 * before it is flushed): what a device's answer in the input echoes. */
typedef struct sent_req {
    bool have;
    uint16_t mid;
    uint8_t tkl;
    uint8_t token[CY_COAP_TOKEN_MAX];
} sent_req;

static struct {
    bool ready;
    char dir[64];
    uv_loop_t loop;
    cy_config cfg;
    cy_registry *registry;
    cy_store *store;
    int dtls_fd; /* a UDP socket the terminator "sends" on; never read */
    char dev[2][CY_DEVICE_ID_LEN + 1];
    unsigned runs;
    sent_req last; /* this input's */
} G;

/* One shard's layers for one input. */
typedef struct layers {
    fz_core c;
    cy_coap *coap;
} layers;

static void store_path(char *p, size_t n)
{
    snprintf(p, n, "%s/shard-%u.db", G.dir, SELF);
}

static void open_store(void)
{
    char p[128];
    store_path(p, sizeof(p));
    CHECK(cy_store_open(p, false, &G.store) == 0);
}

static void cleanup(void)
{
    cy_store_close(G.store);
    cy_registry_close(G.registry);
    fz_remove_dir(G.dir, NSHARDS);
}

static void init(void)
{
    fz_setup("bus", G.dir, sizeof(G.dir), &G.loop, &G.cfg, NSHARDS);
    G.cfg.max_queued = 16;
    G.cfg.max_subscriptions = 16;
    G.cfg.max_retained = 64;
    char p[128];
    snprintf(p, sizeof(p), "%s/registry.db", G.dir);
    CHECK(cy_registry_open(p, &G.registry) == 0);
    for (int i = 0; i < 2; i++) {
        char name[16], secret[CY_DEVICE_SECRET_LEN + 1], psk[CY_DEVICE_PSK_LEN + 1];
        snprintf(name, sizeof(name), "dev-%d", i);
        CHECK(cy_registry_device_add(G.registry, name, G.dev[i], secret, psk) == 0);
    }
    open_store();
    G.dtls_fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    CHECK(G.dtls_fd >= 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    CHECK(bind(G.dtls_fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    atexit(cleanup);
    G.ready = true;
}

/* The shard's hook (shard.c layers_frame): CoAP frames to the transport,
 * the others to the device layer. */
static void layers_frame(void *ctx, unsigned from, uint8_t type, const uint8_t *body, size_t len)
{
    layers *y = ctx;
    if (type == CY_FRAME_COAP_IN || type == CY_FRAME_COAP_OUT || type == CY_FRAME_COAP_KICK)
        cy_coap_on_frame(y->coap, from, type, body, len);
    else
        cy_devices_on_frame(y->c.devices, from, type, body, len);
}

static void adopt(void *ctx, unsigned from, int fd, const cy_handover_info *info,
                  const uint8_t *bytes, size_t len)
{
    (void)ctx, (void)from, (void)info, (void)bytes, (void)len;
    close(fd);
}

static void release(void *ctx, cy_held_owner *o, const uint8_t *bytes, size_t len)
{
    (void)ctx, (void)o, (void)bytes, (void)len;
}

static void layers_open(layers *y, bool dtls)
{
    memset(y, 0, sizeof(*y));
    cy_cluster_hooks h = {.adopt = adopt, .frame = layers_frame, .release = release, .ctx = y};
    fz_core_open(&y->c, &G.loop, &G.cfg, G.store, G.dir, SELF, NSHARDS, &h);
    cy_transport_deps td = {
        .loop = &G.loop,
        .cfg = &G.cfg,
        .store = G.store,
        .registry = G.registry,
        .router = y->c.router,
        .cluster = y->c.cl,
        .devices = y->c.devices,
        .space = &y->c.space,
        .stats = &y->c.stats,
        .sb = NULL,
        .self = SELF,
        .nshards = NSHARDS,
    };
    CHECK(cy_coap_new(&td, &y->coap) == 0);
    /* A terminator costs an SSL_CTX: made only for the inputs that use it. */
    if (dtls) CHECK(cy_coap_open(y->coap, -1, G.dtls_fd) == 0);
}

/* Note the last request among the CoAP output records (coap.c: via, term,
 * address length and bytes, u16 length, datagram). */
static void note_requests(const cy_coap *c)
{
    cy_reader r = cy_reader_of(cy_buf_head(&c->out), cy_buf_size(&c->out));
    while (cy_reader_left(&r)) {
        cy_reader_be(&r, 2);
        size_t alen = (size_t)cy_reader_be(&r, 1);
        cy_reader_take(&r, alen);
        size_t len = (size_t)cy_reader_be(&r, 2);
        const uint8_t *p = cy_reader_take(&r, len);
        cy_coap_msg m;
        CHECK(!r.bad); /* our own records are whole */
        if (cy_coap_decode(p, len, &m) != 0 || CY_COAP_CLASS(m.code) != 0 ||
            m.code == CY_COAP_EMPTY)
            continue;
        G.last.have = true;
        G.last.mid = m.mid;
        G.last.tkl = m.tkl;
        if (m.tkl) memcpy(G.last.token, m.token, m.tkl);
    }
}

/* A device's answer in a COAP_IN frame: message id 0xFFFF stands for the
 * id of the last request cyan sent, a token of as many 0xFF bytes as that
 * request's token for its token (cyan draws both at random). In place. */
static void echo_request(uint8_t *body, size_t len)
{
    if (!G.last.have || len < 3) return;
    size_t at = 3 + (size_t)body[2]; /* via, term, address */
    if (at >= len) return;
    at += 1 + (size_t)body[at]; /* device id */
    if (at + 4 > len) return;
    uint8_t *d = body + at;
    size_t dl = len - at;
    if (d[2] != 0xFF || d[3] != 0xFF) return;
    d[2] = (uint8_t)(G.last.mid >> 8);
    d[3] = (uint8_t)G.last.mid;
    uint8_t tkl = d[0] & 15;
    if (tkl != G.last.tkl || 4 + (size_t)tkl > dl) return;
    for (unsigned i = 0; i < tkl; i++)
        if (d[4 + i] != 0xFF) return;
    memcpy(d + 4, G.last.token, tkl);
}

/* What the shard runs at the end of a loop pass. */
static void pass(layers *y)
{
    cy_cluster_flush(y->c.cl);
    cy_cluster_before_commit(y->c.cl);
    cy_store_commit(G.store);
    note_requests(y->coap);
    cy_coap_flush(y->coap);
    cy_cluster_after_commit(y->c.cl);
    cy_registry_end_reads(G.registry);
}

static void layers_close(layers *y)
{
    /* Every deadline reached: calls answered 504, our confirmable messages
     * retransmitted until they give up, endpoints idle, sessions expired. */
    int64_t mono = cy_mono_ms(), loop_now = (int64_t)uv_now(&G.loop);
    for (int i = 1; i <= 6; i++)
        cy_coap_tick(y->coap, loop_now + (int64_t)i * 60000);
    cy_devices_tick(y->c.devices, mono + 3600000);
    cy_coap_sweep(y->coap, loop_now + 100LL * 86400000);
    cy_devices_sweep(y->c.devices);
    cy_cluster_sweep(y->c.cl);
    pass(y);
    cy_coap_stop(y->coap);
    cy_coap_flush(y->coap);
    uv_run(&G.loop, UV_RUN_NOWAIT); /* the transport's handles close */
    cy_coap_free(y->coap);
    fz_core_close(&y->c, G.store);
}

/* A copy of the input with the device placeholders replaced. */
static uint8_t *substitute(const uint8_t *data, size_t size)
{
    uint8_t *b = malloc(size ? size : 1);
    CHECK(b);
    if (size) memcpy(b, data, size);
    for (size_t i = 0; i + PLACEHOLDER_LEN <= size; i++)
        for (int k = 0; k < 2; k++)
            if (b[i] == '@' && memcmp(b + i, placeholder[k], PLACEHOLDER_LEN) == 0)
                memcpy(b + i, G.dev[k], PLACEHOLDER_LEN);
    return b;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!G.ready) init();
    if (++G.runs % RESET_EVERY == 0) {
        cy_store_close(G.store);
        char p[128];
        store_path(p, sizeof(p));
        fz_remove_db(p);
        open_store();
    }
    uint8_t *in = substitute(data, size);
    cy_bus_frame f;
    int r = cy_bus_frame_parse(in, size, &f);
    CHECK(r == 0 || r == 1 || r == CY_EPROTO);
    unsigned from;
    uint64_t gen;
    /* The link opens with the peer's HELLO, from another shard in range. */
    if (r != 1 || cy_bus_hello_parse(&f, &from, &gen) != 0 || from >= NSHARDS || from == SELF) {
        free(in);
        return 0;
    }
    /* Does a frame ask the DTLS terminator (a datagram to send, a kick)? */
    bool dtls = false;
    for (size_t at = f.total; !dtls && cy_bus_frame_parse(in + at, size - at, &f) == 1;
         at += f.total)
        dtls = f.type == CY_FRAME_COAP_OUT || f.type == CY_FRAME_COAP_KICK;
    layers y;
    layers_open(&y, dtls);
    memset(&G.last, 0, sizeof(G.last));
    CHECK(cy_bus_frame_parse(in, size, &f) == 1);
    size_t pos = f.total;
    for (;;) {
        r = cy_bus_frame_parse(in + pos, size - pos, &f);
        CHECK(r == 0 || r == 1 || r == CY_EPROTO);
        if (r != 1) break; /* a bad length closes the link; a partial frame waits */
        CHECK(f.total == 5 + f.len && f.total <= size - pos && f.body == in + pos + 5);
        if (f.type == 0 || f.handle) break; /* closes the link: no descriptor came */
        if (f.type == CY_FRAME_COAP_IN) echo_request(in + pos + 5, f.len);
        cy_cluster_input(y.c.cl, from, f.type, f.body, f.len);
        pass(&y);
        pos += f.total;
    }
    layers_close(&y);
    free(in);
    return 0;
}
