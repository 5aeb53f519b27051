/* bus: frames between shards over unix sockets; see bus.h for the contract.
 *
 * The idea needed to read this file: every link is a libuv IPC pipe
 * (uv_pipe_init(..., ipc=1)) carrying one stream of frames in one direction,
 * plus a single HELLO each way when it opens. Shard i dials shard-<j>.sock
 * (an "olink", the outgoing link to j, on which i writes) and accepts the
 * links the others dialled ("alinks", on which i reads). The handshake is
 * answered: the dialler sends HELLO(self, generation) first; the acceptor
 * checks it (index in range and not its own) and answers on the same socket
 * with its own HELLO(index, generation). The dialler reads exactly that one
 * frame back, and only then is the olink "up": on_peer_up(j, gen) runs once
 * with the generation from the answer, sends are accepted, and
 * on_peer_down(j) runs once when that connection ends. A connection that
 * never got its answer (peer SIGSTOPped before accepting, or gone) never
 * fires either callback. Up therefore means "the peer process that owns
 * shard-<j>.sock now has read our HELLO", which is per connection and needs
 * no coupling between the two directions.
 *
 * Wire format: a frame is a 4-byte big-endian word, a 1-byte type, a body.
 * The low 31 bits of the word are the length of type and body (1 ..
 * CY_BUS_MAX_FRAME); bit 31 set means "this frame carries one descriptor"
 * (CY_BUS_FLAG_HANDLE). Such a frame is written with one uv_write2 whose
 * send_handle is the TCP socket, so the kernel attaches the descriptor to
 * the frame's first byte and it is queued in libuv's pending list before the
 * frame can be complete; the reader pops one pending handle per flagged
 * frame, in order. A flagged frame with no descriptor pending closes the
 * link. Type 0 is the bus's own (HELLO, body: u32 index, u64 generation);
 * any other type-0 frame closes the link.
 *
 * Writing never blocks: an olink keeps a FIFO of segments, each a cy_buf of
 * whole frames (or one handle frame). A send only queues; the frames of a
 * loop pass leave together, when the owner calls cy_bus_flush or at the
 * latest from the bus's prepare handle, just before the loop waits. A flush
 * writes with uv_try_write (one write(2), no request), and only what the
 * socket did not take, or a frame carrying a handle, goes to uv_write, one
 * head segment at a time, whose callback flushes again. Writing through
 * uv_write every time cost two system calls more per frame: its callback is
 * deferred to the next loop iteration (an extra epoll_wait that does not
 * block), and on completion libuv stops POLLOUT, which re-queues the
 * pipe's watcher for an EPOLL_CTL_MOD in the next poll. Frames sent while a
 * uv_write is in flight are appended to the tail segment, so a burst of
 * small frames leaves in few writes, each frame copied once. The
 * backlog is the byte count of all segments; a send that would take it past
 * max_backlog gets CY_EAGAIN (a frame is always accepted when the backlog is
 * 0, so one frame larger than max_backlog can still go). All memory a send
 * needs is reserved before anything is written or queued, so an allocation
 * failure returns CY_ENOMEM and leaves the link as it was.
 *
 * Failures: EOF or an error on any link closes it; an olink that closes
 * reports on_peer_down from its close callback (never from inside a bus
 * call) and is redialled by a 100 ms timer that runs only while some olink
 * is waiting to be dialled or some alink is waiting for its HELLO (5 s
 * deadline). A newer HELLO from the same index replaces an older alink from
 * it, so frames from a dead incarnation never interleave with the new one's.
 * Log lines: one when an up link goes down, one when a link comes up; dial
 * failures in between are silent.
 */
#include "cluster/bus.h"

#include "core/cy_alloc.h"
#include "core/cy_buf.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define CY_BUS_FLAG_HANDLE 0x80000000u
#define REDIAL_MS 100
#define HELLO_TIMEOUT_MS 5000
#define HELLO_BODY 12                 /* u32 index, u64 generation */
#define HELLO_FRAME (5 + HELLO_BODY)  /* bytes on the wire */
#define SEG_MAX (4u << 20)            /* append to a segment up to this many bytes */
#define SPARE_KEEP (64u << 10)        /* keep an idle buffer's memory up to this */
#define READ_CHUNK (64u << 10)        /* bytes offered to each read */
#define LISTEN_BACKLOG 128
#define DEFAULT_MAX_BACKLOG ((size_t)64 << 20)

/* One queued write: whole frames, or exactly one frame with a handle. */
typedef struct seg {
    struct seg *next;
    struct olink *link;
    cy_buf data;       /* frame bytes */
    size_t bytes;      /* bytes counted in the backlog for this segment */
    uv_write_t req;
    uv_tcp_t *handle;  /* borrowed from the sender until done_cb */
    void (*done_cb)(void *arg, int status);
    void *arg;
} seg;

enum olink_state {
    L_IDLE,       /* no handle; the tick dials it */
    L_CONNECTING, /* uv_pipe_connect in progress */
    L_HELLO,      /* connected, our HELLO sent, waiting for the answer */
    L_UP,         /* answer received: sends accepted */
    L_CLOSING     /* uv_close called, waiting for the close callback */
};

typedef struct olink {
    cy_bus *bus;
    unsigned peer;
    enum olink_state state;
    bool was_up;      /* on_peer_up ran for this connection */
    bool quiet;       /* a down line was logged: stay silent until up */
    bool ever_up;
    uint64_t peer_gen;
    uint64_t next_dial; /* uv_now ms before which the tick does not redial */
    char *path;       /* run_dir/shard-<peer>.sock */
    uv_pipe_t pipe;
    uv_connect_t creq;
    uv_write_t hreq;
    uint8_t hello[HELLO_FRAME];
    cy_buf rbuf;      /* the answer */
    seg *head, *tail; /* queued writes; head is in flight when inflight */
    bool inflight;
    size_t backlog;   /* bytes in all segments */
    seg *spare;       /* one recycled data segment */
} olink;

typedef struct alink {
    struct alink *prev, *next;
    cy_bus *bus;
    uv_pipe_t pipe;
    cy_buf rbuf;
    bool hello;       /* HELLO received: peer and gen are valid */
    bool closing;
    unsigned peer;
    uint64_t gen;
    uint64_t deadline; /* uv_now ms by which the HELLO must have arrived */
    uv_write_t wreq;
    uint8_t answer[HELLO_FRAME];
} alink;

struct cy_bus {
    uv_loop_t *loop;
    cy_bus_callbacks cb;
    void *ctx;
    unsigned self, n;
    uint64_t gen;
    size_t max_backlog;  /* bytes per olink */
    char *path;          /* our socket */
    dev_t sock_dev;      /* identity of the socket file we bound, so */
    ino_t sock_ino;      /* close never unlinks a successor's file */
    bool bound;
    bool handles;        /* timer (and listener) initialised */
    bool listening;
    bool accept_pending; /* a connection waits for memory to accept it */
    bool closing;
    bool self_free;      /* cy_bus_new failed late: free when closed */
    unsigned open;       /* handles not yet through their close callback */
    uv_timer_t tick;
    uv_prepare_t flusher; /* active while some olink has frames not yet flushed */
    uv_pipe_t listener;
    olink *out;          /* n entries; out[self] unused */
    alink *accepted;     /* list */
    alink **from;        /* n entries: the current alink from each peer */
    void (*close_cb)(void *ctx);
    void *close_ctx;
};

/* ---- helpers ---------------------------------------------------------- */

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void hello_encode(uint8_t *out, unsigned index, uint64_t gen)
{
    put32(out, 1 + HELLO_BODY);
    out[4] = 0;
    put32(out + 5, index);
    put32(out + 9, (uint32_t)(gen >> 32));
    put32(out + 13, (uint32_t)gen);
}

int cy_bus_frame_parse(const uint8_t *p, size_t have, cy_bus_frame *f)
{
    if (have < 4) return 0;
    uint32_t w = get32(p);
    uint32_t len = w & ~CY_BUS_FLAG_HANDLE;
    if (len == 0 || len > CY_BUS_MAX_FRAME) return CY_EPROTO;
    if (have < 4 + (size_t)len) return 0;
    f->handle = (w & CY_BUS_FLAG_HANDLE) != 0;
    f->type = p[4];
    f->body = p + 5;
    f->len = len - 1;
    f->total = 4 + (size_t)len;
    return 1;
}

/* The frame at the head of b (cy_bus_frame_parse). */
static int frame_next(const cy_buf *b, cy_bus_frame *f)
{
    return cy_bus_frame_parse(cy_buf_head(b), cy_buf_size(b), f);
}

/* Bytes still missing for the frame at the head of b (0 if unknown). */
static size_t frame_missing(const cy_buf *b)
{
    size_t have = cy_buf_size(b);
    if (have < 4) return 0;
    uint32_t len = get32(cy_buf_head(b)) & ~CY_BUS_FLAG_HANDLE;
    if (len == 0 || len > CY_BUS_MAX_FRAME || have >= 4 + (size_t)len) return 0;
    return 4 + (size_t)len - have;
}

int cy_bus_hello_parse(const cy_bus_frame *f, unsigned *index, uint64_t *generation)
{
    if (f->type != 0 || f->handle || f->len != HELLO_BODY) return CY_EPROTO;
    *index = get32(f->body);
    *generation = (uint64_t)get32(f->body + 4) << 32 | get32(f->body + 8);
    return 0;
}

static void read_alloc(cy_buf *rbuf, size_t chunk, uv_buf_t *buf)
{
    size_t want = frame_missing(rbuf);
    if (want < chunk) want = chunk;
    if (cy_buf_reserve(rbuf, want) != 0) {
        *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS: the link closes */
        return;
    }
    size_t room = rbuf->cap - rbuf->len;
    if (room > (1u << 30)) room = 1u << 30;
    *buf = uv_buf_init((char *)rbuf->data + rbuf->len, (unsigned)room);
}

static void handle_free_cb(uv_handle_t *h)
{
    cy_free(h);
}

static char *shard_path(const char *dir, unsigned i)
{
    int n = snprintf(NULL, 0, "%s/shard-%u.sock", dir, i);
    if (n < 0) return NULL;
    char *p = cy_malloc((size_t)n + 1);
    if (p) snprintf(p, (size_t)n + 1, "%s/shard-%u.sock", dir, i);
    return p;
}

static void tick_arm(cy_bus *bus);
static void bus_handle_closed(cy_bus *bus);
static void flush_arm(cy_bus *bus);

/* ---- outgoing links --------------------------------------------------- */

static void seg_free(seg *s)
{
    if (!s) return;
    cy_buf_fini(&s->data);
    cy_free(s);
}

static void seg_recycle(olink *l, seg *s)
{
    s->next = NULL;
    s->handle = NULL;
    s->done_cb = NULL;
    s->arg = NULL;
    s->bytes = 0;
    if (s->data.cap > SPARE_KEEP) cy_buf_fini(&s->data);
    cy_buf_reset(&s->data);
    if (!l->spare)
        l->spare = s;
    else
        seg_free(s);
}

static void olink_close_cb(uv_handle_t *h);

/* Close the current connection of l; everything else happens in the close
 * callback. why is for the log line (one per down, none while quiet). */
static void olink_fail(olink *l, const char *why)
{
    cy_bus *bus = l->bus;
    if (l->state == L_IDLE || l->state == L_CLOSING) return;
    if (!bus->closing) {
        if (l->state == L_UP) {
            cy_warn(NULL, "bus: shard %u: link to shard %u down (%s), redialling every %d ms",
                    bus->self, l->peer, why, REDIAL_MS);
            l->quiet = true;
        } else if (!l->quiet) {
            if (l->ever_up)
                cy_warn(NULL, "bus: shard %u: shard %u not reachable (%s), redialling every %d ms",
                        bus->self, l->peer, why, REDIAL_MS);
            else
                cy_debug(NULL, "bus: shard %u: shard %u not reachable yet (%s)", bus->self,
                         l->peer, why);
            l->quiet = true;
        }
    }
    l->state = L_CLOSING;
    uv_close((uv_handle_t *)&l->pipe, olink_close_cb);
}

static void olink_close_cb(uv_handle_t *h)
{
    olink *l = h->data;
    cy_bus *bus = l->bus;
    /* The in-flight segment already had its write callback (ECANCELED);
     * what is left was never handed to libuv. */
    seg *s = l->head;
    l->head = l->tail = NULL;
    l->inflight = false;
    l->backlog = 0;
    while (s) {
        seg *next = s->next;
        void (*done)(void *, int) = s->done_cb;
        void *arg = s->arg;
        seg_free(s);
        if (done) done(arg, CY_EPIPE);
        s = next;
    }
    cy_buf_fini(&l->rbuf);
    l->state = L_IDLE;
    l->next_dial = uv_now(bus->loop) + REDIAL_MS;
    bool was_up = l->was_up;
    l->was_up = false;
    if (bus->closing) {
        bus_handle_closed(bus);
        return;
    }
    bus->open--;
    tick_arm(bus);
    if (was_up && bus->cb.on_peer_down) bus->cb.on_peer_down(bus->ctx, l->peer);
}

static void seg_write_cb(uv_write_t *req, int status);
static void olink_flush(olink *l);

/* Hand the head segment to libuv (uv_write2 when it carries a handle). */
static void olink_start_write(olink *l)
{
    seg *s = l->head;
    if (!s || l->inflight || l->state != L_UP) return;
    l->inflight = true;
    s->bytes = cy_buf_size(&s->data);
    uv_buf_t b = uv_buf_init((char *)cy_buf_head(&s->data), (unsigned)s->bytes);
    s->req.data = s;
    int rc;
    if (s->handle)
        rc = uv_write2(&s->req, (uv_stream_t *)&l->pipe, &b, 1, (uv_stream_t *)s->handle,
                       seg_write_cb);
    else
        rc = uv_write(&s->req, (uv_stream_t *)&l->pipe, &b, 1, seg_write_cb);
    if (rc < 0) {
        l->inflight = false; /* s stays queued and fails in the close callback */
        olink_fail(l, uv_strerror(rc));
    }
}

static void seg_write_cb(uv_write_t *req, int status)
{
    seg *s = req->data;
    olink *l = s->link;
    l->head = s->next;
    if (!l->head) l->tail = NULL;
    l->inflight = false;
    l->backlog -= s->bytes;
    void (*done)(void *, int) = s->done_cb;
    void *arg = s->arg;
    seg_recycle(l, s);
    if (done) done(arg, status < 0 ? status : 0);
    if (status < 0) {
        if (status != UV_ECANCELED) olink_fail(l, uv_strerror(status));
        return;
    }
    olink_flush(l);
}

/* Write what l has queued: whole segments with uv_try_write while the
 * socket takes them; the rest of a segment, or a frame carrying a handle,
 * with uv_write, whose callback comes back here. */
static void olink_flush(olink *l)
{
    while (l->head && !l->inflight && l->state == L_UP) {
        seg *s = l->head;
        if (s->handle) {
            olink_start_write(l);
            return;
        }
        uv_buf_t b = uv_buf_init((char *)cy_buf_head(&s->data), (unsigned)cy_buf_size(&s->data));
        int n = uv_try_write((uv_stream_t *)&l->pipe, &b, 1);
        if (n == UV_EAGAIN) n = 0; /* socket full, or libuv still writes the HELLO */
        if (n < 0) {
            olink_fail(l, uv_strerror(n)); /* the close callback fails what is queued */
            return;
        }
        cy_buf_consume(&s->data, (size_t)n);
        l->backlog -= (size_t)n;
        if (cy_buf_size(&s->data)) {
            olink_start_write(l); /* the rest when the socket drains */
            return;
        }
        l->head = s->next;
        if (!l->head) l->tail = NULL;
        seg_recycle(l, s); /* a data segment: no done_cb */
    }
}

static void flush_all(cy_bus *bus)
{
    for (unsigned j = 0; j < bus->n && bus->out; j++)
        if (j != bus->self && bus->out[j].head) olink_flush(&bus->out[j]);
}

static void flusher_cb(uv_prepare_t *h)
{
    cy_bus *bus = h->data;
    uv_prepare_stop(h);
    flush_all(bus);
}

/* Flush before the loop next waits, unless the owner calls cy_bus_flush first. */
static void flush_arm(cy_bus *bus)
{
    if (bus->closing || !bus->handles) return;
    if (!uv_is_active((uv_handle_t *)&bus->flusher)) uv_prepare_start(&bus->flusher, flusher_cb);
}

static void olink_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    olink *l = h->data;
    read_alloc(&l->rbuf, 64, buf); /* only the HELLO answer comes this way */
}

static void olink_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    olink *l = st->data;
    cy_bus *bus = l->bus;
    if (nread == 0) return;
    if (nread < 0) {
        olink_fail(l, nread == UV_EOF ? "closed by peer" : uv_strerror((int)nread));
        return;
    }
    if (l->state == L_CLOSING) return;
    l->rbuf.len += (size_t)nread;
    if (l->state != L_HELLO) {
        olink_fail(l, "unexpected bytes from peer");
        return;
    }
    cy_bus_frame f;
    int r = frame_next(&l->rbuf, &f);
    if (r == 0) return;
    unsigned index;
    uint64_t gen;
    if (r < 0 || cy_bus_hello_parse(&f, &index, &gen) != 0 || index != l->peer) {
        cy_warn(NULL, "bus: shard %u: bad HELLO answer on %s", bus->self, l->path);
        olink_fail(l, "bad HELLO answer");
        return;
    }
    cy_buf_consume(&l->rbuf, f.total);
    if (cy_buf_size(&l->rbuf) != 0) {
        olink_fail(l, "unexpected bytes from peer");
        return;
    }
    cy_buf_fini(&l->rbuf);
    l->state = L_UP;
    l->was_up = true;
    l->ever_up = true;
    l->quiet = false;
    l->peer_gen = gen;
    cy_info(NULL, "bus: shard %u: link to shard %u up (generation %llu)", bus->self, l->peer,
            (unsigned long long)gen);
    if (bus->cb.on_peer_up) bus->cb.on_peer_up(bus->ctx, l->peer, gen);
}

static void olink_hello_cb(uv_write_t *req, int status)
{
    olink *l = req->data;
    if (status < 0 && status != UV_ECANCELED) olink_fail(l, uv_strerror(status));
}

static void olink_connect_cb(uv_connect_t *req, int status)
{
    olink *l = req->data;
    if (l->state != L_CONNECTING) return; /* closing: ECANCELED */
    if (status < 0) {
        olink_fail(l, uv_strerror(status));
        return;
    }
    l->state = L_HELLO;
    cy_buf_reset(&l->rbuf);
    hello_encode(l->hello, l->bus->self, l->bus->gen);
    uv_buf_t b = uv_buf_init((char *)l->hello, HELLO_FRAME);
    l->hreq.data = l;
    int rc = uv_write(&l->hreq, (uv_stream_t *)&l->pipe, &b, 1, olink_hello_cb);
    if (rc == 0) rc = uv_read_start((uv_stream_t *)&l->pipe, olink_alloc_cb, olink_read_cb);
    if (rc < 0) olink_fail(l, uv_strerror(rc));
}

static void olink_dial(olink *l)
{
    cy_bus *bus = l->bus;
    uv_pipe_init(bus->loop, &l->pipe, 1);
    l->pipe.data = l;
    bus->open++;
    l->state = L_CONNECTING;
    l->creq.data = l;
    uv_pipe_connect(&l->creq, &l->pipe, l->path, olink_connect_cb); /* errors come to the cb */
}

/* ---- accepted links --------------------------------------------------- */

static void alink_close_cb(uv_handle_t *h)
{
    alink *a = h->data;
    cy_bus *bus = a->bus;
    if (a->prev)
        a->prev->next = a->next;
    else
        bus->accepted = a->next;
    if (a->next) a->next->prev = a->prev;
    cy_buf_fini(&a->rbuf);
    cy_free(a);
    bus_handle_closed(bus);
}

static void alink_fail(alink *a, cy_log_level lvl, const char *why)
{
    cy_bus *bus = a->bus;
    if (a->closing) return;
    a->closing = true;
    if (a->hello && bus->from[a->peer] == a) bus->from[a->peer] = NULL;
    if (!bus->closing && cy_log_enabled(lvl)) {
        if (a->hello)
            cy_log(lvl, NULL, "bus: shard %u: link from shard %u (generation %llu) closed: %s",
                   bus->self, a->peer, (unsigned long long)a->gen, why);
        else
            cy_log(lvl, NULL, "bus: shard %u: closing unidentified link: %s", bus->self, why);
    }
    uv_close((uv_handle_t *)&a->pipe, alink_close_cb);
}

static void alink_alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    alink *a = h->data;
    read_alloc(&a->rbuf, READ_CHUNK, buf);
}

static void alink_answer_cb(uv_write_t *req, int status)
{
    alink *a = req->data;
    if (status < 0 && status != UV_ECANCELED) alink_fail(a, CY_LOG_DEBUG, uv_strerror(status));
}

static int alink_hello(alink *a, const cy_bus_frame *f)
{
    cy_bus *bus = a->bus;
    unsigned index;
    uint64_t gen;
    if (cy_bus_hello_parse(f, &index, &gen) != 0) {
        alink_fail(a, CY_LOG_WARN, "first frame is not a HELLO");
        return -1;
    }
    if (index >= bus->n || index == bus->self) {
        char why[64];
        snprintf(why, sizeof(why), "HELLO with bad shard index %u", index);
        alink_fail(a, CY_LOG_WARN, why);
        return -1;
    }
    alink *old = bus->from[index];
    if (old) {
        cy_debug(NULL, "bus: shard %u: shard %u reconnected (generation %llu), dropping its old link",
                 bus->self, index, (unsigned long long)gen);
        alink_fail(old, CY_LOG_DEBUG, "replaced by a newer link");
    }
    a->hello = true;
    a->peer = index;
    a->gen = gen;
    bus->from[index] = a;
    hello_encode(a->answer, bus->self, bus->gen);
    uv_buf_t b = uv_buf_init((char *)a->answer, HELLO_FRAME);
    a->wreq.data = a;
    int rc = uv_write(&a->wreq, (uv_stream_t *)&a->pipe, &b, 1, alink_answer_cb);
    if (rc < 0) {
        alink_fail(a, CY_LOG_DEBUG, uv_strerror(rc));
        return -1;
    }
    cy_debug(NULL, "bus: shard %u: link from shard %u (generation %llu) open", bus->self, index,
             (unsigned long long)gen);
    return 0;
}

/* Pops the descriptor that came with a flagged frame into a new uv_tcp_t:
 * a TCP socket, or a TLS terminator's AF_UNIX stream socket (libuv names
 * its type a pipe; a uv_tcp_t reads and writes it all the same). */
static int alink_take_handle(alink *a, uv_tcp_t **out)
{
    cy_bus *bus = a->bus;
    if (uv_pipe_pending_count(&a->pipe) <= 0) return CY_EPROTO;
    uv_handle_type ht = uv_pipe_pending_type(&a->pipe);
    if (ht != UV_TCP && ht != UV_NAMED_PIPE) return CY_EPROTO;
    uv_tcp_t *t = cy_malloc(sizeof(*t));
    if (!t) return CY_ENOMEM;
    uv_tcp_init(bus->loop, t);
    int rc = uv_accept((uv_stream_t *)&a->pipe, (uv_stream_t *)t);
    if (rc < 0) {
        uv_close((uv_handle_t *)t, handle_free_cb);
        return rc;
    }
    *out = t;
    return 0;
}

static void alink_read_cb(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    alink *a = st->data;
    cy_bus *bus = a->bus;
    if (nread == 0 || a->closing) return;
    if (nread < 0) {
        if (nread == UV_EOF)
            alink_fail(a, CY_LOG_DEBUG, "closed by peer");
        else
            alink_fail(a, CY_LOG_WARN, uv_strerror((int)nread));
        return;
    }
    a->rbuf.len += (size_t)nread;
    while (!a->closing && !bus->closing) {
        cy_bus_frame f;
        int r = frame_next(&a->rbuf, &f);
        if (r == 0) break;
        if (r < 0) {
            alink_fail(a, CY_LOG_WARN, "frame length 0 or over CY_BUS_MAX_FRAME");
            return;
        }
        if (!a->hello) {
            if (alink_hello(a, &f) != 0) return;
        } else if (f.type == 0) {
            alink_fail(a, CY_LOG_WARN, "frame of reserved type 0");
            return;
        } else if (f.handle) {
            uv_tcp_t *tcp = NULL;
            int rc = alink_take_handle(a, &tcp);
            if (rc < 0) {
                alink_fail(a, CY_LOG_WARN,
                           rc == CY_EPROTO ? "handle frame without a TCP descriptor"
                                           : cy_strerror(rc));
                return;
            }
            if (bus->cb.on_handle)
                bus->cb.on_handle(bus->ctx, a->peer, tcp, f.type, f.body, f.len);
            else
                uv_close((uv_handle_t *)tcp, handle_free_cb);
        } else if (bus->cb.on_frame) {
            bus->cb.on_frame(bus->ctx, a->peer, f.type, f.body, f.len);
        }
        cy_buf_consume(&a->rbuf, f.total);
    }
    /* Keep a read-sized buffer for the next read; give back what a big frame grew. */
    if (!a->closing && cy_buf_size(&a->rbuf) == 0 && a->rbuf.cap > SPARE_KEEP)
        cy_buf_fini(&a->rbuf);
}

/* 0, or <0 when the connection could not be taken now (retried by the tick
 * on CY_ENOMEM, since libuv stops the listener until it is accepted). */
static int accept_one(cy_bus *bus)
{
    alink *a = cy_calloc(1, sizeof(*a));
    if (!a) return CY_ENOMEM;
    a->bus = bus;
    uv_pipe_init(bus->loop, &a->pipe, 1);
    a->pipe.data = a;
    bus->open++;
    a->next = bus->accepted;
    if (a->next) a->next->prev = a;
    bus->accepted = a;
    a->deadline = uv_now(bus->loop) + HELLO_TIMEOUT_MS;
    int rc = uv_accept((uv_stream_t *)&bus->listener, (uv_stream_t *)&a->pipe);
    if (rc == 0) rc = uv_read_start((uv_stream_t *)&a->pipe, alink_alloc_cb, alink_read_cb);
    if (rc < 0) {
        alink_fail(a, CY_LOG_WARN, uv_strerror(rc));
        return 0;
    }
    tick_arm(bus);
    return 0;
}

static void on_connection(uv_stream_t *server, int status)
{
    cy_bus *bus = server->data;
    if (bus->closing) return;
    if (status < 0) {
        cy_warn(NULL, "bus: shard %u: accept failed: %s", bus->self, uv_strerror(status));
        return;
    }
    if (accept_one(bus) == CY_ENOMEM) {
        if (!bus->accept_pending)
            cy_warn(NULL, "bus: shard %u: out of memory accepting a link, retrying", bus->self);
        bus->accept_pending = true;
        tick_arm(bus);
    }
}

/* ---- the tick: redial and HELLO deadlines ----------------------------- */

static void tick_cb(uv_timer_t *t)
{
    cy_bus *bus = t->data;
    bool busy = false;
    if (bus->accept_pending) {
        if (accept_one(bus) == 0)
            bus->accept_pending = false;
        else
            busy = true;
    }
    uint64_t now = uv_now(bus->loop);
    for (unsigned j = 0; j < bus->n; j++) {
        olink *l = &bus->out[j];
        if (j == bus->self || l->state != L_IDLE) continue;
        if (now + 5 >= l->next_dial) /* timer slack: a tick is never early by more */
            olink_dial(l);
        else
            busy = true;
    }
    for (alink *a = bus->accepted; a; a = a->next) {
        if (a->hello || a->closing) continue;
        if (now >= a->deadline)
            alink_fail(a, CY_LOG_WARN, "no HELLO within 5 s");
        else
            busy = true;
    }
    if (!busy) uv_timer_stop(t);
}

/* Keep the tick running while an olink is idle or an alink lacks a HELLO;
 * the tick stops itself when neither holds. */
static void tick_arm(cy_bus *bus)
{
    if (bus->closing || !bus->handles) return;
    if (!uv_is_active((uv_handle_t *)&bus->tick))
        uv_timer_start(&bus->tick, tick_cb, REDIAL_MS, REDIAL_MS);
}

/* ---- lifecycle -------------------------------------------------------- */

static void bus_handle_closed(cy_bus *bus)
{
    bus->open--;
    if (!bus->closing || bus->open > 0) return;
    void (*cb)(void *) = bus->close_cb;
    void *ctx = bus->close_ctx;
    bus->close_cb = NULL;
    if (bus->self_free) {
        cy_bus_free(bus);
        return;
    }
    if (cb) cb(ctx);
}

/* The tick's and the flusher's close callback. */
static void bus_timer_closed(uv_handle_t *h)
{
    bus_handle_closed(h->data);
}

static void bus_listener_closed(uv_handle_t *h)
{
    bus_handle_closed(h->data);
}

static void bus_close(cy_bus *bus)
{
    /* Frames queued this pass get what the sockets take now, as they did
     * when every send wrote at once. */
    if (bus->handles && uv_is_active((uv_handle_t *)&bus->flusher)) {
        uv_prepare_stop(&bus->flusher);
        flush_all(bus);
    }
    bus->closing = true;
    if (bus->bound) {
        struct stat st;
        if (stat(bus->path, &st) == 0 && st.st_dev == bus->sock_dev && st.st_ino == bus->sock_ino)
            unlink(bus->path);
        bus->bound = false;
    }
    if (bus->listening) {
        bus->listening = false;
        uv_close((uv_handle_t *)&bus->listener, bus_listener_closed);
    }
    for (unsigned j = 0; j < bus->n && bus->out; j++) {
        olink *l = &bus->out[j];
        if (j == bus->self || l->state == L_IDLE || l->state == L_CLOSING) continue;
        l->state = L_CLOSING;
        uv_close((uv_handle_t *)&l->pipe, olink_close_cb);
    }
    for (alink *a = bus->accepted; a; a = a->next) alink_fail(a, CY_LOG_DEBUG, "bus closing");
    if (bus->handles) {
        uv_timer_stop(&bus->tick);
        uv_close((uv_handle_t *)&bus->tick, bus_timer_closed);
        uv_close((uv_handle_t *)&bus->flusher, bus_timer_closed);
    }
}

/* Is path a live socket? 0 (absent, or stale and now unlinked), or <0. */
static int clear_stale_socket(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -errno;
    if (!S_ISSOCK(st.st_mode)) {
        cy_error(NULL, "bus: %s exists and is not a socket", path);
        return CY_EEXIST;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -errno;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path) + 1);
    int rc = connect(fd, (struct sockaddr *)&sa, sizeof(sa));
    int err = rc == 0 ? 0 : errno;
    close(fd);
    if (rc == 0 || err == EAGAIN || err == EINPROGRESS) {
        cy_error(NULL, "bus: %s is in use by a live process", path);
        return -EADDRINUSE;
    }
    if (err != ECONNREFUSED) return -err;
    if (unlink(path) != 0 && errno != ENOENT) return -errno;
    cy_info(NULL, "bus: removed stale socket %s", path);
    return 0;
}

static int bind_listener(cy_bus *bus, int *out_fd)
{
    int rc = clear_stale_socket(bus->path);
    if (rc < 0) return rc;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -errno;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, bus->path, strlen(bus->path) + 1);
    struct stat st;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) goto fail;
    if (stat(bus->path, &st) != 0) goto fail;
    bus->sock_dev = st.st_dev;
    bus->sock_ino = st.st_ino;
    bus->bound = true;
    if (listen(fd, LISTEN_BACKLOG) != 0) goto fail;
    *out_fd = fd;
    return 0;
fail:
    rc = -errno;
    cy_error(NULL, "bus: cannot listen on %s: %s", bus->path, strerror(errno));
    close(fd);
    return rc;
}

int cy_bus_new(uv_loop_t *loop, const cy_bus_options *opt, const cy_bus_callbacks *cb, void *ctx,
               cy_bus **out)
{
    if (!loop || !opt || !cb || !out || !opt->run_dir || opt->nshards < 1 || opt->nshards > 64 ||
        opt->self >= opt->nshards)
        return CY_EINVAL;
    *out = NULL;
    int rc = CY_ENOMEM;
    int fd = -1;
    cy_bus *bus = cy_calloc(1, sizeof(*bus));
    if (!bus) return CY_ENOMEM;
    bus->loop = loop;
    bus->cb = *cb;
    bus->ctx = ctx;
    bus->self = opt->self;
    bus->n = opt->nshards;
    bus->gen = opt->generation;
    bus->max_backlog = opt->max_backlog ? opt->max_backlog : DEFAULT_MAX_BACKLOG;

    if (bus->n > 1) {
        bus->out = cy_calloc(bus->n, sizeof(*bus->out));
        bus->from = cy_calloc(bus->n, sizeof(*bus->from));
        bus->path = shard_path(opt->run_dir, bus->self);
        if (!bus->out || !bus->from || !bus->path) goto fail;
        struct sockaddr_un sa;
        for (unsigned j = 0; j < bus->n; j++) {
            olink *l = &bus->out[j];
            l->bus = bus;
            l->peer = j;
            if (j == bus->self) continue;
            l->path = shard_path(opt->run_dir, j);
            if (!l->path) goto fail;
            if (strlen(l->path) >= sizeof(sa.sun_path)) {
                cy_error(NULL, "bus: socket path %s is longer than %zu bytes", l->path,
                         sizeof(sa.sun_path) - 1);
                rc = CY_EINVAL;
                goto fail;
            }
        }
        if (strlen(bus->path) >= sizeof(sa.sun_path)) {
            cy_error(NULL, "bus: socket path %s is longer than %zu bytes", bus->path,
                     sizeof(sa.sun_path) - 1);
            rc = CY_EINVAL;
            goto fail;
        }
        rc = bind_listener(bus, &fd);
        if (rc < 0) goto fail;
    }

    /* From here on handles exist: a failure closes them and the bus frees
     * itself in the last close callback. */
    uv_timer_init(loop, &bus->tick);
    bus->tick.data = bus;
    uv_prepare_init(loop, &bus->flusher);
    bus->flusher.data = bus;
    bus->handles = true;
    bus->open = 2;
    if (bus->n > 1) {
        uv_pipe_init(loop, &bus->listener, 0);
        bus->listener.data = bus;
        bus->open++;
        bus->listening = true;
        rc = uv_pipe_open(&bus->listener, fd);
        if (rc == 0) {
            fd = -1; /* the listener owns it now */
            rc = uv_listen((uv_stream_t *)&bus->listener, LISTEN_BACKLOG, on_connection);
        }
        if (rc < 0) {
            cy_error(NULL, "bus: cannot listen on %s: %s", bus->path, uv_strerror(rc));
            if (fd >= 0) close(fd);
            bus->self_free = true;
            bus_close(bus);
            return rc;
        }
        for (unsigned j = 0; j < bus->n; j++)
            if (j != bus->self) olink_dial(&bus->out[j]);
    }
    *out = bus;
    return 0;

fail:
    if (fd >= 0) close(fd);
    if (bus->bound) unlink(bus->path);
    bus->bound = false;
    cy_bus_free(bus);
    return rc;
}

void cy_bus_close(cy_bus *bus, void (*close_cb)(void *ctx), void *ctx)
{
    if (!bus || bus->closing) return;
    bus->close_cb = close_cb;
    bus->close_ctx = ctx;
    bus_close(bus);
}

void cy_bus_free(cy_bus *bus)
{
    if (!bus) return;
    if (bus->handles && (!bus->closing || bus->open > 0)) {
        cy_error(NULL, "bus: cy_bus_free before the close callback; leaking the bus");
        return;
    }
    for (unsigned j = 0; bus->out && j < bus->n; j++) {
        olink *l = &bus->out[j];
        seg *s = l->head;
        while (s) {
            seg *next = s->next;
            seg_free(s);
            s = next;
        }
        seg_free(l->spare);
        cy_buf_fini(&l->rbuf);
        cy_free(l->path);
    }
    cy_free(bus->out);
    cy_free(bus->from);
    cy_free(bus->path);
    cy_free(bus);
}

/* ---- sending ---------------------------------------------------------- */

static int check_peer(const cy_bus *bus, unsigned peer, uint8_t type)
{
    if (!bus) return CY_EINVAL;
    if (bus->n == 1) return CY_EPIPE;
    if (peer >= bus->n || peer == bus->self || type == 0) return CY_EINVAL;
    return 0;
}

/* The segment the next frame of need bytes goes into, with need bytes
 * reserved; NULL on allocation failure (nothing changed). A fresh segment is
 * linked at the tail. */
static seg *seg_for(olink *l, size_t need, bool fresh)
{
    seg *t = l->tail;
    if (!fresh && t && !t->handle && !(t == l->head && l->inflight) &&
        cy_buf_size(&t->data) + need <= SEG_MAX) {
        if (cy_buf_reserve(&t->data, need) != 0) return NULL;
        return t;
    }
    seg *s = l->spare;
    if (s)
        l->spare = NULL;
    else if (!(s = cy_calloc(1, sizeof(*s))))
        return NULL;
    s->link = l;
    if (cy_buf_reserve(&s->data, need) != 0) {
        seg_recycle(l, s);
        return NULL;
    }
    if (l->tail)
        l->tail->next = s;
    else
        l->head = s;
    l->tail = s;
    return s;
}

static void seg_put(seg *s, uint32_t word, uint8_t type, const uint8_t *a, size_t alen,
                    const uint8_t *b, size_t blen)
{
    uint8_t *p = s->data.data + s->data.len;
    put32(p, word);
    p[4] = type;
    if (alen) memcpy(p + 5, a, alen);
    if (blen) memcpy(p + 5 + alen, b, blen);
    s->data.len += 5 + alen + blen;
}

/* Queue a frame of body length len to peer, its header written: where its
 * body goes, or NULL with *rc set (nothing queued). */
static uint8_t *queue_frame(cy_bus *bus, unsigned peer, uint8_t type, size_t len, int *rc)
{
    *rc = check_peer(bus, peer, type);
    if (*rc) return NULL;
    if (len >= CY_BUS_MAX_FRAME) {
        *rc = CY_EINVAL;
        return NULL;
    }
    olink *l = &bus->out[peer];
    if (bus->closing || l->state != L_UP) {
        *rc = CY_EPIPE;
        return NULL;
    }
    size_t need = 5 + len;
    if (l->backlog && l->backlog + need > bus->max_backlog) {
        *rc = CY_EAGAIN;
        return NULL;
    }
    seg *s = seg_for(l, need, false);
    if (!s) {
        *rc = CY_ENOMEM;
        return NULL;
    }
    uint8_t *p = s->data.data + s->data.len;
    put32(p, (uint32_t)(1 + len));
    p[4] = type;
    s->data.len += need;
    l->backlog += need;
    flush_arm(bus);
    return p + 5;
}

int cy_bus_send2(cy_bus *bus, unsigned peer, uint8_t type, const uint8_t *a, size_t alen,
                 const uint8_t *b, size_t blen)
{
    /* each part below the bound: their sum cannot wrap (refused as too long) */
    size_t len =
        alen < CY_BUS_MAX_FRAME && blen < CY_BUS_MAX_FRAME ? alen + blen : CY_BUS_MAX_FRAME;
    int rc;
    uint8_t *p = queue_frame(bus, peer, type, len, &rc);
    if (!p) return rc;
    if (alen) memcpy(p, a, alen);
    if (blen) memcpy(p + alen, b, blen);
    return 0;
}

uint8_t *cy_bus_send_inplace(cy_bus *bus, unsigned peer, uint8_t type, size_t len, int *rc)
{
    int ignored;
    return queue_frame(bus, peer, type, len, rc ? rc : &ignored);
}

int cy_bus_send(cy_bus *bus, unsigned peer, uint8_t type, const uint8_t *body, size_t len)
{
    return cy_bus_send2(bus, peer, type, body, len, NULL, 0);
}

int cy_bus_send_handle(cy_bus *bus, unsigned peer, uv_tcp_t *tcp, uint8_t type,
                       const uint8_t *body, size_t len, void (*done_cb)(void *arg, int status),
                       void *arg)
{
    int rc = check_peer(bus, peer, type);
    if (rc) return rc;
    uv_os_fd_t fd;
    if (!tcp || tcp->type != UV_TCP || uv_fileno((const uv_handle_t *)tcp, &fd) != 0 ||
        len >= CY_BUS_MAX_FRAME)
        return CY_EINVAL;
    olink *l = &bus->out[peer];
    if (bus->closing || l->state != L_UP) return CY_EPIPE;
    size_t need = 5 + len;
    if (l->backlog && l->backlog + need > bus->max_backlog) return CY_EAGAIN;
    seg *s = seg_for(l, need, true);
    if (!s) return CY_ENOMEM;
    seg_put(s, (uint32_t)(1 + len) | CY_BUS_FLAG_HANDLE, type, body, len, NULL, 0);
    s->handle = tcp;
    s->done_cb = done_cb;
    s->arg = arg;
    l->backlog += need;
    flush_arm(bus);
    return 0;
}

void cy_bus_flush(cy_bus *bus)
{
    if (!bus || bus->closing || !bus->handles || !uv_is_active((uv_handle_t *)&bus->flusher))
        return;
    uv_prepare_stop(&bus->flusher);
    flush_all(bus);
}

int cy_bus_connected(const cy_bus *bus, unsigned peer)
{
    if (!bus || bus->n == 1 || peer >= bus->n || peer == bus->self || bus->closing) return 0;
    return bus->out[peer].state == L_UP;
}

size_t cy_bus_backlog(const cy_bus *bus, unsigned peer)
{
    if (!bus || bus->n == 1 || peer >= bus->n || peer == bus->self) return 0;
    return bus->out[peer].backlog;
}
