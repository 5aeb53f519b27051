/* Unit tests of src/bus: frames between buses on one loop (deterministic),
 * raw clients that break the handshake, fd passing, and forked shards that
 * are SIGKILLed or SIGSTOPped. Every test runs the loop through run_until,
 * which stops it when a condition holds or a deadline passes, so nothing
 * here can hang. Callbacks only record; assertions happen outside uv_run. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "cluster/bus.h"
#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#define MAXN 4
#define MiB (1u << 20)

/* ---- harness ---------------------------------------------------------- */

typedef struct rec {
    unsigned from;
    uint8_t type;
    int handle; /* came with a descriptor */
    uint8_t *body;
    size_t len;
} rec;

typedef struct node {
    cy_bus *bus;
    unsigned idx;
    rec *frames;
    size_t nframes, cap;
    unsigned up[MAXN], down[MAXN];
    uint64_t upgen[MAXN];
    int closed;
    int handles;         /* on_handle calls */
    int hi_written;      /* "hi" written on a received socket */
    int echo_body;       /* write the frame body on received sockets, not "hi" */
} node;

typedef struct tctx {
    uv_loop_t loop;
    uv_timer_t waiter;
    uv_timer_t beat;
    unsigned beats;
    char dir[64];
    node nodes[MAXN];
    pid_t kids[4];
    int nkids;
} tctx;

static tctx *T;

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

static void hello_bytes(uint8_t out[17], uint32_t index, uint64_t gen)
{
    put32(out, 13);
    out[4] = 0;
    put32(out + 5, index);
    put32(out + 9, (uint32_t)(gen >> 32));
    put32(out + 13, (uint32_t)gen);
}

typedef int (*pred_fn)(void *arg);
static struct {
    pred_fn pred;
    void *arg;
    uint64_t deadline;
    int ok;
} W;

static void waiter_cb(uv_timer_t *h)
{
    if (W.pred(W.arg)) {
        W.ok = 1;
        uv_stop(h->loop);
    } else if (uv_now(h->loop) >= W.deadline) {
        uv_stop(h->loop);
    }
}

/* Run the loop until pred(arg) holds (checked every ms) or ms pass. */
static int run_until(pred_fn pred, void *arg, unsigned ms)
{
    uv_update_time(&T->loop);
    W.pred = pred;
    W.arg = arg;
    W.ok = 0;
    W.deadline = uv_now(&T->loop) + ms;
    if (pred(arg)) return 1;
    uv_timer_start(&T->waiter, waiter_cb, 1, 1);
    uv_run(&T->loop, UV_RUN_DEFAULT);
    uv_timer_stop(&T->waiter);
    return W.ok;
}

static int never(void *arg)
{
    (void)arg;
    return 0;
}

static void run_for(unsigned ms)
{
    run_until(never, NULL, ms);
}

static void beat_cb(uv_timer_t *h)
{
    (void)h;
    T->beats++;
}

/* ---- node callbacks --------------------------------------------------- */

static void record(node *n, unsigned from, uint8_t type, int handle, const uint8_t *body,
                   size_t len)
{
    if (n->nframes == n->cap) {
        n->cap = n->cap ? n->cap * 2 : 64;
        n->frames = realloc(n->frames, n->cap * sizeof(*n->frames));
        assert_non_null(n->frames);
    }
    rec *r = &n->frames[n->nframes++];
    r->from = from;
    r->type = type;
    r->handle = handle;
    r->len = len;
    r->body = malloc(len ? len : 1);
    assert_non_null(r->body);
    if (len) memcpy(r->body, body, len);
}

static void n_on_frame(void *ctx, unsigned from, uint8_t type, const uint8_t *body, size_t len)
{
    record(ctx, from, type, 0, body, len);
}

static void tcp_free_cb(uv_handle_t *h)
{
    cy_free(h);
}

typedef struct hiw {
    uv_write_t req;
    node *n;
    char data[64];
} hiw;

static void hi_written_cb(uv_write_t *req, int status)
{
    hiw *w = (hiw *)req;
    if (status == 0) w->n->hi_written++;
    uv_close((uv_handle_t *)req->handle, tcp_free_cb);
    free(w);
}

/* Owns tcp (bus.h): write "hi" on it, then close and free it. */
static void n_on_handle(void *ctx, unsigned from, uv_tcp_t *tcp, uint8_t type, const uint8_t *body,
                        size_t len)
{
    node *n = ctx;
    record(n, from, type, 1, body, len);
    n->handles++;
    hiw *w = malloc(sizeof(*w));
    assert_non_null(w);
    w->n = n;
    uv_buf_t b = uv_buf_init("hi", 2);
    if (n->echo_body && len <= sizeof(w->data)) {
        memcpy(w->data, body, len);
        b = uv_buf_init(w->data, (unsigned)len);
    }
    if (uv_write(&w->req, (uv_stream_t *)tcp, &b, 1, hi_written_cb) != 0) {
        free(w);
        uv_close((uv_handle_t *)tcp, tcp_free_cb);
    }
}

static void n_on_up(void *ctx, unsigned peer, uint64_t gen)
{
    node *n = ctx;
    n->up[peer]++;
    n->upgen[peer] = gen;
}

static void n_on_down(void *ctx, unsigned peer)
{
    node *n = ctx;
    n->down[peer]++;
}

static const cy_bus_callbacks node_cb = {n_on_frame, n_on_handle, n_on_up, n_on_down};

static void n_closed(void *ctx)
{
    node *n = ctx;
    n->closed++;
}

static int open_bus(unsigned slot, unsigned idx, unsigned nshards, uint64_t gen, size_t backlog)
{
    node *n = &T->nodes[slot];
    memset(n, 0, sizeof(*n));
    n->idx = idx;
    cy_bus_options o = {T->dir, idx, nshards, gen, backlog};
    return cy_bus_new(&T->loop, &o, &node_cb, n, &n->bus);
}

static void free_frames(node *n)
{
    for (size_t i = 0; i < n->nframes; i++) free(n->frames[i].body);
    free(n->frames);
    n->frames = NULL;
    n->nframes = n->cap = 0;
}

static int node_closed(void *arg)
{
    return ((node *)arg)->closed > 0;
}

static void close_bus(unsigned slot)
{
    node *n = &T->nodes[slot];
    if (!n->bus) return;
    cy_bus_close(n->bus, n_closed, n);
    assert_true(run_until(node_closed, n, 2000));
    assert_int_equal(n->closed, 1);
    cy_bus_free(n->bus);
    n->bus = NULL;
}

struct upcond {
    unsigned slot, peer, count;
};

static int up_pred(void *arg)
{
    struct upcond *c = arg;
    return T->nodes[c->slot].up[c->peer] >= c->count;
}

static int wait_up(unsigned slot, unsigned peer, unsigned count)
{
    struct upcond c = {slot, peer, count};
    return run_until(up_pred, &c, 3000);
}

static int down_pred(void *arg)
{
    struct upcond *c = arg;
    return T->nodes[c->slot].down[c->peer] >= c->count;
}

static int wait_down(unsigned slot, unsigned peer, unsigned count)
{
    struct upcond c = {slot, peer, count};
    return run_until(down_pred, &c, 3000);
}

struct nframes_cond {
    unsigned slot;
    size_t n;
};

static int nframes_pred(void *arg)
{
    struct nframes_cond *c = arg;
    return T->nodes[c->slot].nframes >= c->n;
}

static int wait_frames(unsigned slot, size_t count)
{
    struct nframes_cond c = {slot, count};
    return run_until(nframes_pred, &c, 4000);
}

static void sock_path(char *out, size_t cap, unsigned idx)
{
    snprintf(out, cap, "%s/shard-%u.sock", T->dir, idx);
}

static void sun_for(struct sockaddr_un *sa, unsigned idx)
{
    char p[128];
    sock_path(p, sizeof(p), idx);
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    assert_true(strlen(p) < sizeof(sa->sun_path));
    memcpy(sa->sun_path, p, strlen(p) + 1);
}

/* ---- forked shards ---------------------------------------------------- */

typedef struct kid {
    cy_bus *bus;
    uint32_t next; /* expected sequence number of type 3 */
    int ok;
    pid_t parent;
} kid;

static void kid_on_frame(void *ctx, unsigned from, uint8_t type, const uint8_t *body, size_t len)
{
    kid *k = ctx;
    if (type == 1) { /* echo */
        cy_bus_send(k->bus, from, 2, body, len);
    } else if (type == 3) { /* sequence */
        if (len < 4 || get32(body) != k->next) k->ok = 0;
        k->next++;
    } else if (type == 4) { /* report */
        uint8_t r[5];
        put32(r, k->next);
        r[4] = (uint8_t)k->ok;
        cy_bus_send(k->bus, from, 5, r, sizeof(r));
    }
}

static void kid_watch(uv_timer_t *t)
{
    kid *k = t->data;
    if (getppid() != k->parent) _exit(0);
}

static void kid_expire(uv_timer_t *t)
{
    (void)t;
    _exit(0);
}

static void kid_main(unsigned idx, unsigned nshards, uint64_t gen, pid_t parent)
{
    for (int fd = 3; fd < 1024; fd++) close(fd); /* the parent's loop and sockets */
    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) _exit(2);
    kid k = {NULL, 0, 1, parent};
    cy_bus_callbacks cb = {kid_on_frame, NULL, NULL, NULL};
    cy_bus_options o = {T->dir, idx, nshards, gen, 0};
    if (cy_bus_new(&loop, &o, &cb, &k, &k.bus) != 0) _exit(3);
    uv_timer_t watch, expire;
    uv_timer_init(&loop, &watch);
    watch.data = &k;
    uv_timer_start(&watch, kid_watch, 50, 50);
    uv_timer_init(&loop, &expire);
    uv_timer_start(&expire, kid_expire, 20000, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    _exit(0);
}

static pid_t spawn_kid(unsigned idx, unsigned nshards, uint64_t gen)
{
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) kid_main(idx, nshards, gen, parent);
    T->kids[T->nkids++] = pid;
    return pid;
}

static void reap_kid(pid_t pid)
{
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    for (int i = 0; i < T->nkids; i++)
        if (T->kids[i] == pid) T->kids[i] = 0;
}

/* ---- setup / teardown ------------------------------------------------- */

static int setup(void **state)
{
    T = calloc(1, sizeof(*T));
    if (!T) return -1;
    if (uv_loop_init(&T->loop) != 0) return -1;
    uv_timer_init(&T->loop, &T->waiter);
    uv_timer_init(&T->loop, &T->beat);
    snprintf(T->dir, sizeof(T->dir), "/tmp/cybus-XXXXXX");
    if (!mkdtemp(T->dir)) return -1;
    *state = T;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    for (int i = 0; i < T->nkids; i++)
        if (T->kids[i] > 0) reap_kid(T->kids[i]);
    for (unsigned i = 0; i < MAXN; i++) {
        close_bus(i);
        free_frames(&T->nodes[i]);
    }
    uv_close((uv_handle_t *)&T->waiter, NULL);
    uv_close((uv_handle_t *)&T->beat, NULL);
    for (int i = 0; i < 100; i++) uv_run(&T->loop, UV_RUN_NOWAIT);
    int rc = uv_loop_close(&T->loop);
    DIR *d = opendir(T->dir);
    if (d) {
        struct dirent *e;
        char p[512];
        while ((e = readdir(d)) != NULL) {
            if (e->d_name[0] == '.') continue;
            snprintf(p, sizeof(p), "%s/%s", T->dir, e->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(T->dir);
    free(T);
    T = NULL;
    assert_int_equal(rc, 0); /* every handle closed */
    return 0;
}

/* Open buses 0..n-1 in one process and wait until every pair is up. */
static void open_mesh(unsigned n, size_t backlog)
{
    for (unsigned i = 0; i < n; i++) assert_int_equal(open_bus(i, i, n, 100 + i, backlog), 0);
    for (unsigned i = 0; i < n; i++)
        for (unsigned j = 0; j < n; j++) {
            if (i == j) continue;
            assert_true(wait_up(i, j, 1));
            assert_int_equal(T->nodes[i].upgen[j], 100 + j);
            assert_true(cy_bus_connected(T->nodes[i].bus, j));
        }
}

/* ---- frames between buses in one process ------------------------------ */

static void test_cy_bus_send_two_buses(void **state)
{
    (void)state;
    open_mesh(2, 0);
    node *a = &T->nodes[0], *b = &T->nodes[1];
    assert_int_equal(cy_bus_send(a->bus, 1, 7, (const uint8_t *)"a1", 2), 0);
    assert_int_equal(cy_bus_send(a->bus, 1, 8, (const uint8_t *)"a2", 2), 0);
    assert_int_equal(cy_bus_send(a->bus, 1, 255, NULL, 0), 0);
    assert_int_equal(cy_bus_send(b->bus, 0, 9, (const uint8_t *)"b1", 2), 0);
    assert_true(wait_frames(1, 3));
    assert_true(wait_frames(0, 1));
    run_for(20);
    assert_int_equal(b->nframes, 3);
    assert_int_equal(b->frames[0].from, 0);
    assert_int_equal(b->frames[0].type, 7);
    assert_memory_equal(b->frames[0].body, "a1", 2);
    assert_int_equal(b->frames[1].type, 8);
    assert_memory_equal(b->frames[1].body, "a2", 2);
    assert_int_equal(b->frames[2].type, 255);
    assert_int_equal(b->frames[2].len, 0);
    assert_int_equal(a->nframes, 1);
    assert_int_equal(a->frames[0].from, 1);
    assert_int_equal(a->frames[0].type, 9);
    assert_memory_equal(a->frames[0].body, "b1", 2);
    /* up once each, never down */
    assert_int_equal(a->up[1], 1);
    assert_int_equal(b->up[0], 1);
    assert_int_equal(a->down[1] + b->down[0], 0);
}

static void test_cy_bus_send_three_buses(void **state)
{
    (void)state;
    open_mesh(3, 0);
    /* each bus sends 100 numbered frames to each other bus, interleaved */
    for (uint32_t k = 0; k < 100; k++)
        for (unsigned i = 0; i < 3; i++)
            for (unsigned j = 0; j < 3; j++) {
                if (i == j) continue;
                uint8_t body[12];
                put32(body, i);
                put32(body + 4, j);
                put32(body + 8, k);
                assert_int_equal(cy_bus_send(T->nodes[i].bus, j, 1, body, sizeof(body)), 0);
            }
    for (unsigned j = 0; j < 3; j++) assert_true(wait_frames(j, 200));
    for (unsigned j = 0; j < 3; j++) {
        node *n = &T->nodes[j];
        assert_int_equal(n->nframes, 200);
        uint32_t next[3] = {0, 0, 0};
        for (size_t f = 0; f < n->nframes; f++) {
            rec *r = &n->frames[f];
            assert_int_equal(r->len, 12);
            assert_int_equal(get32(r->body), r->from);
            assert_int_equal(get32(r->body + 4), j);
            assert_int_equal(get32(r->body + 8), next[r->from]); /* order per link */
            next[r->from]++;
        }
    }
}

static void test_cy_bus_send_large_frame(void **state)
{
    (void)state;
    open_mesh(2, 0);
    size_t len = MiB;
    uint8_t *big = malloc(len);
    assert_non_null(big);
    for (size_t i = 0; i < len; i++) big[i] = (uint8_t)(i * 2654435761u >> 13);
    assert_int_equal(cy_bus_send(T->nodes[0].bus, 1, 3, big, len), 0);
    assert_int_equal(cy_bus_send(T->nodes[0].bus, 1, 4, (const uint8_t *)"tail", 4), 0);
    assert_int_equal(cy_bus_send(T->nodes[1].bus, 0, 3, big, len), 0);
    free(big); /* copied by the bus */
    assert_true(wait_frames(1, 2));
    assert_true(wait_frames(0, 1));
    node *b = &T->nodes[1];
    assert_int_equal(b->frames[0].len, len);
    for (size_t i = 0; i < len; i++)
        if (b->frames[0].body[i] != (uint8_t)(i * 2654435761u >> 13)) fail();
    assert_int_equal(b->frames[1].type, 4);
    assert_memory_equal(b->frames[1].body, "tail", 4);
    assert_int_equal(T->nodes[0].frames[0].len, len);
    assert_int_equal(cy_bus_backlog(T->nodes[0].bus, 1), 0);
}

static void test_cy_bus_send_many_small(void **state)
{
    (void)state;
    open_mesh(2, 0);
    for (uint32_t k = 0; k < 10000; k++) {
        uint8_t body[8];
        put32(body, k);
        put32(body + 4, ~k);
        assert_int_equal(cy_bus_send(T->nodes[0].bus, 1, 2, body, 4 + k % 5), 0);
    }
    assert_true(wait_frames(1, 10000));
    node *b = &T->nodes[1];
    assert_int_equal(b->nframes, 10000);
    for (uint32_t k = 0; k < 10000; k++) {
        rec *r = &b->frames[k];
        assert_int_equal(r->len, 4 + k % 5);
        assert_int_equal(get32(r->body), k);
        if (r->len == 8) assert_int_equal(get32(r->body + 4), ~k);
    }
}

static void test_cy_bus_send2_equals_concat(void **state)
{
    (void)state;
    open_mesh(2, 0);
    const uint8_t h[] = "header:";
    const uint8_t p[] = "payload-bytes";
    uint8_t cat[sizeof(h) - 1 + sizeof(p) - 1];
    memcpy(cat, h, sizeof(h) - 1);
    memcpy(cat + sizeof(h) - 1, p, sizeof(p) - 1);
    cy_bus *a = T->nodes[0].bus;
    assert_int_equal(cy_bus_send2(a, 1, 5, h, sizeof(h) - 1, p, sizeof(p) - 1), 0);
    assert_int_equal(cy_bus_send(a, 1, 5, cat, sizeof(cat)), 0);
    assert_int_equal(cy_bus_send2(a, 1, 6, h, sizeof(h) - 1, NULL, 0), 0);
    assert_int_equal(cy_bus_send2(a, 1, 6, NULL, 0, h, sizeof(h) - 1), 0);
    assert_true(wait_frames(1, 4));
    node *b = &T->nodes[1];
    assert_int_equal(b->frames[0].len, sizeof(cat));
    assert_int_equal(b->frames[1].len, sizeof(cat));
    assert_memory_equal(b->frames[0].body, cat, sizeof(cat));
    assert_memory_equal(b->frames[1].body, cat, sizeof(cat));
    assert_int_equal(b->frames[2].len, b->frames[3].len);
    assert_memory_equal(b->frames[2].body, b->frames[3].body, b->frames[2].len);
}

/* A frame filled in place arrives as if sent with cy_bus_send, in order
 * with the others; the errors are cy_bus_send's, with nothing queued. */
static void test_cy_bus_send_inplace(void **state)
{
    (void)state;
    int rc = 0;
    assert_int_equal(open_bus(0, 0, 3, 1, 0), 0);
    assert_null(cy_bus_send_inplace(T->nodes[0].bus, 1, 1, 4, &rc));
    assert_int_equal(rc, CY_EPIPE); /* not up yet */
    assert_null(cy_bus_send_inplace(T->nodes[0].bus, 2, 0, 4, &rc));
    assert_int_equal(rc, CY_EINVAL);                                  /* type 0 is the bus's */
    assert_null(cy_bus_send_inplace(T->nodes[0].bus, 0, 1, 4, NULL)); /* self; rc may be NULL */
    assert_null(cy_bus_send_inplace(NULL, 1, 1, 4, &rc));
    assert_int_equal(rc, CY_EINVAL);
    close_bus(0);

    open_mesh(2, 64 << 10);
    cy_bus *a = T->nodes[0].bus;
    assert_null(cy_bus_send_inplace(a, 1, 1, CY_BUS_MAX_FRAME, &rc));
    assert_int_equal(rc, CY_EINVAL);
    assert_int_equal(cy_bus_backlog(a, 1), 0);
    assert_int_equal(cy_bus_send(a, 1, 5, (const uint8_t *)"one", 3), 0);
    uint8_t *p = cy_bus_send_inplace(a, 1, 6, 5, &rc);
    assert_non_null(p);
    memcpy(p, "two!!", 5);
    assert_non_null(cy_bus_send_inplace(a, 1, 7, 0, &rc)); /* an empty body */
    assert_int_equal(cy_bus_backlog(a, 1), 8 + 10 + 5);
    /* past max_backlog: refused, nothing queued */
    uint8_t *big = cy_bus_send_inplace(a, 1, 8, 64 << 10, &rc);
    assert_null(big);
    assert_int_equal(rc, CY_EAGAIN);
    assert_int_equal(cy_bus_backlog(a, 1), 8 + 10 + 5);
    assert_int_equal(cy_bus_send(a, 1, 9, (const uint8_t *)"three", 5), 0);
    assert_true(wait_frames(1, 4));
    node *b = &T->nodes[1];
    assert_int_equal(b->frames[0].type, 5);
    assert_int_equal(b->frames[1].type, 6);
    assert_int_equal(b->frames[1].len, 5);
    assert_memory_equal(b->frames[1].body, "two!!", 5);
    assert_int_equal(b->frames[2].type, 7);
    assert_int_equal(b->frames[2].len, 0);
    assert_int_equal(b->frames[3].type, 9);
    assert_memory_equal(b->frames[3].body, "three", 5);
}

static void test_cy_bus_send_invalid(void **state)
{
    (void)state;
    assert_int_equal(open_bus(0, 0, 3, 1, 0), 0);
    cy_bus *a = T->nodes[0].bus;
    const uint8_t x = 1;
    assert_int_equal(cy_bus_send(a, 1, 1, &x, 1), CY_EPIPE); /* not up yet */
    assert_int_equal(cy_bus_send(a, 1, 0, &x, 1), CY_EINVAL); /* type 0 is the bus's */
    assert_int_equal(cy_bus_send(a, 0, 1, &x, 1), CY_EINVAL); /* self */
    assert_int_equal(cy_bus_send(a, 3, 1, &x, 1), CY_EINVAL); /* out of range */
    assert_int_equal(cy_bus_send(a, 1, 1, &x, CY_BUS_MAX_FRAME), CY_EINVAL);
    assert_int_equal(cy_bus_send2(a, 1, 1, &x, CY_BUS_MAX_FRAME - 1, &x, 1), CY_EINVAL);
    assert_int_equal(cy_bus_send(NULL, 1, 1, &x, 1), CY_EINVAL);
    assert_int_equal(cy_bus_connected(a, 1), 0);
    assert_int_equal(cy_bus_connected(a, 0), 0);
    assert_int_equal(cy_bus_backlog(a, 1), 0);
}

/* Sends beyond max_backlog are refused while the peer does not read (here:
 * the loop does not run), and everything accepted arrives in order. */
static void test_cy_bus_send_backlog_full(void **state)
{
    (void)state;
    size_t max = 64 << 10;
    open_mesh(2, max);
    cy_bus *a = T->nodes[0].bus;
    uint8_t body[1000];
    memset(body, 0xab, sizeof(body));
    uint32_t sent = 0;
    int rc = 0;
    for (int i = 0; i < 100000 && rc == 0; i++) {
        put32(body, sent);
        rc = cy_bus_send(a, 1, 3, body, sizeof(body));
        if (rc == 0) sent++;
    }
    assert_int_equal(rc, CY_EAGAIN);
    assert_true(sent >= 60);
    assert_true(cy_bus_backlog(a, 1) <= max);
    assert_true(cy_bus_backlog(a, 1) + 1005 > max);
    assert_true(wait_frames(1, sent));
    assert_int_equal(cy_bus_backlog(a, 1), 0);
    for (uint32_t k = 0; k < sent; k++) assert_int_equal(get32(T->nodes[1].frames[k].body), k);
    /* one frame bigger than max_backlog still goes when the queue is empty */
    uint8_t *big = calloc(1, 2 * max);
    assert_non_null(big);
    assert_int_equal(cy_bus_send(a, 1, 4, big, 2 * max), 0);
    assert_int_equal(cy_bus_send(a, 1, 4, big, 10), CY_EAGAIN);
    free(big);
    assert_true(wait_frames(1, sent + 1));
    assert_int_equal(T->nodes[1].frames[sent].len, 2 * max);
}

/* Allocation failures on send return CY_ENOMEM and leave the link usable:
 * exactly the frames that were accepted arrive, intact and in order. */
static void test_cy_bus_send_alloc_failure(void **state)
{
    (void)state;
    open_mesh(2, 0);
    cy_bus *a = T->nodes[0].bus;
    size_t len = MiB / 4;
    uint8_t *body = malloc(len);
    assert_non_null(body);
    int ok[8];
    int nok = 0, nfail = 0;
    for (int n = 0; n < 8; n++) {
        memset(body, n, len);
        cy_alloc_fail_after(n < 4 ? n : 0);
        int rc = cy_bus_send2(a, 1, (uint8_t)(10 + n), body, len / 2, body + len / 2,
                              len - len / 2);
        cy_alloc_fail_after(-1);
        assert_true(rc == 0 || rc == CY_ENOMEM);
        ok[n] = rc == 0;
        nok += ok[n];
        nfail += !ok[n];
        assert_true(cy_bus_connected(a, 1));
    }
    assert_true(nfail >= 1);
    assert_int_equal(cy_bus_send(a, 1, 99, (const uint8_t *)"end", 3), 0);
    assert_true(wait_frames(1, (size_t)nok + 1));
    run_for(20);
    node *b = &T->nodes[1];
    assert_int_equal(b->nframes, (size_t)nok + 1);
    size_t f = 0;
    for (int n = 0; n < 8; n++) {
        if (!ok[n]) continue;
        assert_int_equal(b->frames[f].type, 10 + n);
        assert_int_equal(b->frames[f].len, len);
        for (size_t i = 0; i < len; i++)
            if (b->frames[f].body[i] != (uint8_t)n) fail();
        f++;
    }
    assert_int_equal(b->frames[f].type, 99);
    assert_int_equal(cy_bus_backlog(a, 1), 0);
    free(body);
}

/* ---- construction ----------------------------------------------------- */

static void test_cy_bus_new_single_shard(void **state)
{
    (void)state;
    assert_int_equal(open_bus(0, 0, 1, 1, 0), 0);
    char p[128];
    sock_path(p, sizeof(p), 0);
    struct stat st;
    assert_int_equal(stat(p, &st), -1); /* no socket */
    assert_int_equal(cy_bus_send(T->nodes[0].bus, 0, 1, (const uint8_t *)"x", 1), CY_EPIPE);
    assert_int_equal(cy_bus_send(T->nodes[0].bus, 1, 1, (const uint8_t *)"x", 1), CY_EPIPE);
    assert_int_equal(cy_bus_connected(T->nodes[0].bus, 0), 0);
    close_bus(0); /* close_cb runs (asserted inside) */
}

static void test_cy_bus_new_bad_options(void **state)
{
    (void)state;
    cy_bus *b = (cy_bus *)&b;
    cy_bus_options o = {T->dir, 0, 0, 1, 0};
    assert_int_equal(cy_bus_new(&T->loop, &o, &node_cb, NULL, &b), CY_EINVAL);
    o.nshards = 65;
    assert_int_equal(cy_bus_new(&T->loop, &o, &node_cb, NULL, &b), CY_EINVAL);
    o.nshards = 2;
    o.self = 2;
    assert_int_equal(cy_bus_new(&T->loop, &o, &node_cb, NULL, &b), CY_EINVAL);
    o.self = 0;
    o.run_dir = NULL;
    assert_int_equal(cy_bus_new(&T->loop, &o, &node_cb, NULL, &b), CY_EINVAL);
    assert_int_equal(cy_bus_new(&T->loop, NULL, &node_cb, NULL, &b), CY_EINVAL);
    cy_bus_free(NULL);
}

static void test_cy_bus_new_path_too_long(void **state)
{
    (void)state;
    char dir[200];
    memset(dir, 'd', sizeof(dir) - 1);
    dir[sizeof(dir) - 1] = 0;
    memcpy(dir, "/tmp/", 5);
    cy_bus *b = NULL;
    cy_bus_options o = {dir, 0, 2, 1, 0};
    assert_int_equal(cy_bus_new(&T->loop, &o, &node_cb, NULL, &b), CY_EINVAL);
    assert_null(b);
    /* exactly at the limit for a peer but not for ourselves: index 10 is longer */
    char dir2[128];
    size_t room = sizeof(((struct sockaddr_un *)0)->sun_path) - 1 - strlen("/shard-1.sock");
    memset(dir2, 'e', room);
    memcpy(dir2, "/tmp/", 5);
    dir2[room] = 0;
    cy_bus_options o2 = {dir2, 1, 11, 1, 0};
    assert_int_equal(cy_bus_new(&T->loop, &o2, &node_cb, NULL, &b), CY_EINVAL);
    assert_null(b);
}

static void test_cy_bus_new_allocation_failures(void **state)
{
    (void)state;
    for (long n = 0; n < 32; n++) {
        cy_bus *b = NULL;
        cy_bus_options o = {T->dir, 0, 4, 1, 0};
        cy_alloc_fail_after(n);
        int rc = cy_bus_new(&T->loop, &o, &node_cb, NULL, &b);
        cy_alloc_fail_after(-1);
        if (rc == 0) {
            node *nd = &T->nodes[0];
            memset(nd, 0, sizeof(*nd));
            cy_bus_close(b, n_closed, nd);
            assert_true(run_until(node_closed, nd, 2000));
            cy_bus_free(b);
            break;
        }
        assert_int_equal(rc, CY_ENOMEM);
        assert_null(b);
        char p[128];
        struct stat st;
        sock_path(p, sizeof(p), 0);
        assert_int_equal(stat(p, &st), -1); /* nothing left behind */
    }
}

static void test_cy_bus_new_stale_socket(void **state)
{
    (void)state;
    char p[128];
    sock_path(p, sizeof(p), 0);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa;
    sun_for(&sa, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd); /* a dead process's socket file */
    assert_int_equal(open_bus(0, 0, 2, 1, 0), 0);
    /* and it is ours: a client reaches it */
    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close(fd);
    close_bus(0);
    struct stat st;
    assert_int_equal(stat(p, &st), -1); /* close removes our socket file */
}

static void test_cy_bus_new_live_socket(void **state)
{
    (void)state;
    char p[128];
    sock_path(p, sizeof(p), 0);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa;
    sun_for(&sa, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 4), 0);
    cy_bus *b = NULL;
    cy_bus_options o = {T->dir, 0, 2, 1, 0};
    assert_int_equal(cy_bus_new(&T->loop, &o, &node_cb, NULL, &b), -EADDRINUSE);
    assert_null(b);
    struct stat st;
    assert_int_equal(stat(p, &st), 0); /* not ours to remove */
    close(fd);
    /* a regular file in the way is not removed either */
    unlink(p);
    int f = open(p, O_CREAT | O_WRONLY, 0600);
    assert_true(f >= 0);
    close(f);
    assert_int_equal(cy_bus_new(&T->loop, &o, &node_cb, NULL, &b), CY_EEXIST);
    assert_int_equal(stat(p, &st), 0);
}

/* A second bus replacing the first at the same path must not lose its file
 * when the first one closes late. */
static void test_cy_bus_close_keeps_successor_socket(void **state)
{
    (void)state;
    assert_int_equal(open_bus(0, 0, 2, 1, 0), 0);
    char p[128];
    sock_path(p, sizeof(p), 0);
    unlink(p); /* as if a successor had replaced it */
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa;
    sun_for(&sa, 0);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    close_bus(0);
    struct stat st;
    assert_int_equal(stat(p, &st), 0);
    close(fd);
}

static void test_cy_bus_close_while_dialling(void **state)
{
    (void)state;
    assert_int_equal(open_bus(0, 0, 3, 1, 0), 0);
    run_for(250); /* peers absent: a few redials */
    node *a = &T->nodes[0];
    assert_int_equal(a->up[1] + a->up[2] + a->down[1] + a->down[2], 0);
    cy_bus_close(a->bus, n_closed, a);
    cy_bus_close(a->bus, n_closed, a); /* second close is ignored */
    assert_int_equal(cy_bus_send(a->bus, 1, 1, (const uint8_t *)"x", 1), CY_EPIPE);
    assert_true(run_until(node_closed, a, 2000));
    run_for(20);
    assert_int_equal(a->closed, 1);
    cy_bus_free(a->bus);
    a->bus = NULL;
    /* closing immediately after new, before the loop ran */
    assert_int_equal(open_bus(0, 0, 3, 1, 0), 0);
    close_bus(0);
}

/* A peer whose socket accepts connections in the kernel but never answers
 * (a stopped process) is never reported up. */
static void test_cy_bus_peer_up_needs_answer(void **state)
{
    (void)state;
    char p[128];
    sock_path(p, sizeof(p), 1);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un sa;
    sun_for(&sa, 1);
    assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(fd, 4), 0);
    assert_int_equal(open_bus(0, 0, 2, 1, 0), 0);
    run_for(300);
    assert_int_equal(T->nodes[0].up[1], 0);
    assert_int_equal(cy_bus_connected(T->nodes[0].bus, 1), 0);
    assert_int_equal(cy_bus_send(T->nodes[0].bus, 1, 1, (const uint8_t *)"x", 1), CY_EPIPE);
    /* it did dial and say HELLO: accept and read it */
    int c = accept(fd, NULL, NULL);
    assert_true(c >= 0);
    uint8_t got[17], want[17];
    assert_int_equal(recv(c, got, sizeof(got), MSG_WAITALL), 17);
    hello_bytes(want, 0, 1);
    assert_memory_equal(got, want, 17);
    /* answering makes it up, with our generation */
    hello_bytes(want, 1, 77);
    assert_int_equal(write(c, want, 17), 17);
    assert_true(wait_up(0, 1, 1));
    assert_int_equal(T->nodes[0].upgen[1], 77);
    close(c);
    close(fd);
    assert_true(wait_down(0, 1, 1));
}

/* ---- handshake validation with raw clients ---------------------------- */

typedef struct raw {
    int fd;
    uint8_t buf[256];
    size_t len;
    int eof;
} raw;

static void raw_connect(raw *r, unsigned idx)
{
    memset(r, 0, sizeof(*r));
    char p[128];
    sock_path(p, sizeof(p), idx);
    r->fd = socket(AF_UNIX, SOCK_STREAM, 0);
    assert_true(r->fd >= 0);
    struct sockaddr_un sa;
    sun_for(&sa, idx);
    assert_int_equal(connect(r->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
}

static void raw_send(raw *r, const void *p, size_t n)
{
    assert_int_equal(send(r->fd, p, n, MSG_NOSIGNAL), (ssize_t)n);
}

static void raw_poll(raw *r)
{
    for (;;) {
        if (r->len == sizeof(r->buf)) return;
        ssize_t k = recv(r->fd, r->buf + r->len, sizeof(r->buf) - r->len, MSG_DONTWAIT);
        if (k > 0) {
            r->len += (size_t)k;
            continue;
        }
        if (k == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) r->eof = 1;
        return;
    }
}

static int raw_eof_pred(void *arg)
{
    raw *r = arg;
    raw_poll(r);
    return r->eof;
}

static int raw_answer_pred(void *arg)
{
    raw *r = arg;
    raw_poll(r);
    return r->len >= 17 || r->eof;
}

static void test_cy_bus_hello_garbage(void **state)
{
    (void)state;
    assert_int_equal(open_bus(0, 0, 2, 5, 0), 0);
    raw r;
    raw_connect(&r, 0);
    const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    raw_send(&r, junk, sizeof(junk) - 1);
    assert_true(run_until(raw_eof_pred, &r, 2000));
    assert_int_equal(r.len, 0); /* no answer */
    close(r.fd);
    /* a frame that is not a HELLO */
    raw_connect(&r, 0);
    uint8_t f[6] = {0, 0, 0, 2, 1, 'x'};
    raw_send(&r, f, sizeof(f));
    assert_true(run_until(raw_eof_pred, &r, 2000));
    close(r.fd);
    /* a HELLO with the wrong body length */
    raw_connect(&r, 0);
    uint8_t h[9] = {0, 0, 0, 5, 0, 0, 0, 0, 1};
    raw_send(&r, h, sizeof(h));
    assert_true(run_until(raw_eof_pred, &r, 2000));
    close(r.fd);
    assert_int_equal(T->nodes[0].nframes, 0);
}

static void test_cy_bus_hello_bad_index(void **state)
{
    (void)state;
    assert_int_equal(open_bus(0, 0, 2, 5, 0), 0);
    uint32_t bad[] = {2, 0, 1000, 0xffffffffu}; /* out of range, or ourselves */
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        raw r;
        raw_connect(&r, 0);
        uint8_t h[17];
        hello_bytes(h, bad[i], 1);
        raw_send(&r, h, sizeof(h));
        assert_true(run_until(raw_eof_pred, &r, 2000));
        assert_int_equal(r.len, 0);
        close(r.fd);
    }
}

static void test_cy_bus_hello_answered(void **state)
{
    (void)state;
    assert_int_equal(open_bus(0, 0, 2, 0x0102030405060708ull, 0), 0);
    raw r;
    raw_connect(&r, 0);
    uint8_t h[17], want[17];
    hello_bytes(h, 1, 42);
    /* HELLO and a first frame in one write, split oddly */
    uint8_t buf[17 + 7];
    memcpy(buf, h, 17);
    uint8_t fr[7] = {0, 0, 0, 3, 9, 'o', 'k'};
    memcpy(buf + 17, fr, 7);
    raw_send(&r, buf, 3);
    run_for(10);
    raw_send(&r, buf + 3, sizeof(buf) - 3);
    assert_true(run_until(raw_answer_pred, &r, 2000));
    hello_bytes(want, 0, 0x0102030405060708ull);
    assert_int_equal(r.len, 17);
    assert_memory_equal(r.buf, want, 17);
    assert_true(wait_frames(0, 1));
    node *a = &T->nodes[0];
    assert_int_equal(a->frames[0].from, 1);
    assert_int_equal(a->frames[0].type, 9);
    assert_memory_equal(a->frames[0].body, "ok", 2);
    /* a type-0 frame after the HELLO closes the link */
    uint8_t z[5] = {0, 0, 0, 1, 0};
    raw_send(&r, z, sizeof(z));
    assert_true(run_until(raw_eof_pred, &r, 2000));
    close(r.fd);
    assert_int_equal(a->nframes, 1);
}

static void test_cy_bus_hello_oversize_frame(void **state)
{
    (void)state;
    assert_int_equal(open_bus(0, 0, 2, 1, 0), 0);
    raw r;
    raw_connect(&r, 0);
    uint8_t h[17];
    hello_bytes(h, 1, 1);
    raw_send(&r, h, 17);
    uint8_t big[5];
    put32(big, CY_BUS_MAX_FRAME + 1);
    big[4] = 1;
    raw_send(&r, big, 5);
    assert_true(run_until(raw_eof_pred, &r, 2000));
    close(r.fd);
    /* and a zero length */
    raw_connect(&r, 0);
    raw_send(&r, h, 17);
    uint8_t zero[5] = {0, 0, 0, 0, 1};
    raw_send(&r, zero, 5);
    assert_true(run_until(raw_eof_pred, &r, 2000));
    close(r.fd);
    assert_int_equal(T->nodes[0].nframes, 0);
}

/* The handle flag without a descriptor attached closes the link. */
static void test_cy_bus_hello_handle_flag_without_fd(void **state)
{
    (void)state;
    assert_int_equal(open_bus(0, 0, 2, 1, 0), 0);
    raw r;
    raw_connect(&r, 0);
    uint8_t h[17];
    hello_bytes(h, 1, 1);
    raw_send(&r, h, 17);
    uint8_t f[6] = {0x80, 0, 0, 2, 7, 'x'};
    raw_send(&r, f, sizeof(f));
    assert_true(run_until(raw_eof_pred, &r, 2000));
    close(r.fd);
    assert_int_equal(T->nodes[0].nframes, 0);
}

/* Out of memory while accepting: the connection waits and is taken on a
 * later tick; out of memory for a read buffer closes only that link. */
static void test_cy_bus_hello_accept_alloc_failure(void **state)
{
    (void)state;
    assert_int_equal(open_bus(0, 0, 2, 3, 0), 0);
    run_for(10);
    raw r;
    raw_connect(&r, 0);
    uint8_t h[17];
    hello_bytes(h, 1, 1);
    raw_send(&r, h, 17);
    cy_alloc_fail_after(0); /* the link's own allocation */
    run_for(30);
    cy_alloc_fail_after(-1);
    assert_true(run_until(raw_answer_pred, &r, 2000)); /* retried and answered */
    assert_int_equal(r.len, 17);
    assert_false(r.eof);
    close(r.fd);

    raw_connect(&r, 0);
    raw_send(&r, h, 17);
    cy_alloc_fail_after(1); /* the link, then its read buffer */
    run_for(30);
    cy_alloc_fail_after(-1);
    assert_true(run_until(raw_eof_pred, &r, 2000));
    close(r.fd);

    raw_connect(&r, 0); /* and the bus still works */
    raw_send(&r, h, 17);
    assert_true(run_until(raw_answer_pred, &r, 2000));
    assert_int_equal(r.len, 17);
    close(r.fd);
}

/* A newer link from the same shard index replaces the older one. */
static void test_cy_bus_hello_replaces_old_link(void **state)
{
    (void)state;
    assert_int_equal(open_bus(0, 0, 2, 1, 0), 0);
    raw r1, r2;
    uint8_t h[17];
    raw_connect(&r1, 0);
    hello_bytes(h, 1, 1);
    raw_send(&r1, h, 17);
    assert_true(run_until(raw_answer_pred, &r1, 2000));
    raw_connect(&r2, 0);
    hello_bytes(h, 1, 2);
    raw_send(&r2, h, 17);
    assert_true(run_until(raw_answer_pred, &r2, 2000));
    assert_true(run_until(raw_eof_pred, &r1, 2000));
    raw_poll(&r2);
    assert_false(r2.eof);
    uint8_t fr[6] = {0, 0, 0, 2, 3, 'n'};
    raw_send(&r2, fr, sizeof(fr));
    assert_true(wait_frames(0, 1));
    assert_int_equal(T->nodes[0].frames[0].from, 1);
    close(r1.fd);
    close(r2.fd);
}

/* ---- fd passing ------------------------------------------------------- */

typedef struct handover {
    uv_tcp_t srv;
    int done;
    int done_status;
    int client;
    char got[8];
    size_t got_len;
    int send_rc;
} handover;

static handover *H;

static void handover_done(void *arg, int status)
{
    uv_tcp_t *tcp = arg;
    H->done++;
    H->done_status = status;
    uv_close((uv_handle_t *)tcp, tcp_free_cb); /* the sender's copy */
}

static void on_tcp_conn(uv_stream_t *srv, int status)
{
    if (status < 0) return;
    uv_tcp_t *c = cy_malloc(sizeof(*c));
    uv_tcp_init(srv->loop, c);
    if (uv_accept(srv, (uv_stream_t *)c) != 0) {
        uv_close((uv_handle_t *)c, tcp_free_cb);
        return;
    }
    cy_bus *a = T->nodes[0].bus;
    cy_bus_send(a, 1, 20, (const uint8_t *)"before", 6);
    H->send_rc = cy_bus_send_handle(a, 1, c, 21, (const uint8_t *)"conn-body", 9, handover_done, c);
    if (H->send_rc != 0) uv_close((uv_handle_t *)c, tcp_free_cb);
    cy_bus_send(a, 1, 22, (const uint8_t *)"after", 5);
}

static int handover_pred(void *arg)
{
    (void)arg;
    ssize_t k = recv(H->client, H->got + H->got_len, sizeof(H->got) - 1 - H->got_len,
                     MSG_DONTWAIT);
    if (k > 0) H->got_len += (size_t)k;
    return H->got_len >= 2 && H->done && T->nodes[1].nframes >= 3 && T->nodes[1].hi_written;
}

static void test_cy_bus_send_handle_passes_fd(void **state)
{
    (void)state;
    open_mesh(2, 0);
    handover h;
    memset(&h, 0, sizeof(h));
    H = &h;
    uv_tcp_init(&T->loop, &h.srv);
    struct sockaddr_in sin;
    uv_ip4_addr("127.0.0.1", 0, &sin);
    assert_int_equal(uv_tcp_bind(&h.srv, (const struct sockaddr *)&sin, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&h.srv, 8, on_tcp_conn), 0);
    struct sockaddr_in bound;
    int blen = sizeof(bound);
    assert_int_equal(uv_tcp_getsockname(&h.srv, (struct sockaddr *)&bound, &blen), 0);
    h.client = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(connect(h.client, (struct sockaddr *)&bound, sizeof(bound)), 0);
    assert_true(run_until(handover_pred, NULL, 3000));
    run_for(20);
    assert_int_equal(h.send_rc, 0);
    assert_int_equal(h.done, 1);
    assert_int_equal(h.done_status, 0);
    assert_string_equal(h.got, "hi");
    node *b = &T->nodes[1];
    assert_int_equal(b->handles, 1);
    assert_int_equal(b->nframes, 3);
    assert_int_equal(b->frames[0].type, 20); /* order kept around the handle */
    assert_int_equal(b->frames[1].type, 21);
    assert_int_equal(b->frames[1].handle, 1);
    assert_int_equal(b->frames[1].from, 0);
    assert_int_equal(b->frames[1].len, 9);
    assert_memory_equal(b->frames[1].body, "conn-body", 9);
    assert_int_equal(b->frames[2].type, 22);
    close(h.client);
    uv_close((uv_handle_t *)&h.srv, NULL);
    run_for(10);
    H = NULL;
}

/* A TLS terminator hands over one end of a socketpair (AF_UNIX): libuv
 * calls its type a pipe, the bus passes it all the same, and the receiver's
 * uv_tcp_t writes on it. */
static int pair_pred(void *arg)
{
    (void)arg;
    ssize_t k = recv(H->client, H->got + H->got_len, sizeof(H->got) - 1 - H->got_len,
                     MSG_DONTWAIT);
    if (k > 0) H->got_len += (size_t)k;
    return H->got_len >= 2 && H->done && T->nodes[1].hi_written;
}

static void test_cy_bus_send_handle_passes_a_socketpair(void **state)
{
    (void)state;
    open_mesh(2, 0);
    handover h;
    memset(&h, 0, sizeof(h));
    H = &h;
    int sv[2];
    assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
    h.client = sv[0];
    uv_tcp_t *give = cy_malloc(sizeof(*give));
    uv_tcp_init(&T->loop, give);
    assert_int_equal(uv_tcp_open(give, sv[1]), 0);
    assert_int_equal(cy_bus_send_handle(T->nodes[0].bus, 1, give, 21, (const uint8_t *)"pair", 4,
                                        handover_done, give),
                     0);
    assert_true(run_until(pair_pred, NULL, 3000));
    assert_int_equal(h.done_status, 0);
    assert_string_equal(h.got, "hi");
    node *b = &T->nodes[1];
    assert_int_equal(b->handles, 1);
    assert_int_equal(b->frames[0].type, 21);
    assert_memory_equal(b->frames[0].body, "pair", 4);
    close(sv[0]);
    run_for(10);
    H = NULL;
}

/* Several descriptors in one burst, between plain frames: each arrives with
 * its own frame. Each client is identified by its port, which shard B
 * writes back on the socket it received with that body. */
#define NCLIENTS 5
typedef struct multi {
    uv_tcp_t srv;
    uv_tcp_t *acc[NCLIENTS];
    int nacc;
    int fds[NCLIENTS];
    char want[NCLIENTS][16];
    char got[NCLIENTS][16];
    int done, done_ok;
} multi;

static multi *M;

static void multi_done(void *arg, int status)
{
    M->done++;
    M->done_ok += status == 0;
    uv_close((uv_handle_t *)arg, tcp_free_cb);
}

static void multi_conn(uv_stream_t *srv, int status)
{
    if (status < 0 || M->nacc == NCLIENTS) return;
    uv_tcp_t *c = cy_malloc(sizeof(*c));
    uv_tcp_init(srv->loop, c);
    if (uv_accept(srv, (uv_stream_t *)c) != 0) {
        uv_close((uv_handle_t *)c, tcp_free_cb);
        return;
    }
    uv_read_stop((uv_stream_t *)c);
    M->acc[M->nacc++] = c;
    if (M->nacc < NCLIENTS) return;
    cy_bus *a = T->nodes[0].bus;
    for (int i = 0; i < NCLIENTS; i++) {
        struct sockaddr_in peer;
        int plen = sizeof(peer);
        uv_tcp_getpeername(M->acc[i], (struct sockaddr *)&peer, &plen);
        char body[16];
        int n = snprintf(body, sizeof(body), "port=%u", ntohs(peer.sin_port));
        uint8_t seq[1] = {(uint8_t)i};
        cy_bus_send(a, 1, 30, seq, 1);
        if (cy_bus_send_handle(a, 1, M->acc[i], 31, (const uint8_t *)body, (size_t)n, multi_done,
                               M->acc[i]) != 0)
            uv_close((uv_handle_t *)M->acc[i], tcp_free_cb);
    }
    cy_bus_send(a, 1, 32, NULL, 0);
}

static int multi_pred(void *arg)
{
    (void)arg;
    int complete = 0;
    for (int i = 0; i < NCLIENTS; i++) {
        size_t have = strlen(M->got[i]);
        ssize_t k = recv(M->fds[i], M->got[i] + have, sizeof(M->got[i]) - 1 - have, MSG_DONTWAIT);
        if (k > 0) M->got[i][have + (size_t)k] = 0;
        complete += strlen(M->got[i]) == strlen(M->want[i]);
    }
    return complete == NCLIENTS && M->done == NCLIENTS && T->nodes[1].nframes == 2 * NCLIENTS + 1;
}

static void test_cy_bus_send_handle_many(void **state)
{
    (void)state;
    open_mesh(2, 0);
    T->nodes[1].echo_body = 1;
    multi m;
    memset(&m, 0, sizeof(m));
    M = &m;
    uv_tcp_init(&T->loop, &m.srv);
    struct sockaddr_in sin;
    uv_ip4_addr("127.0.0.1", 0, &sin);
    assert_int_equal(uv_tcp_bind(&m.srv, (const struct sockaddr *)&sin, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&m.srv, 8, multi_conn), 0);
    struct sockaddr_in bound;
    int blen = sizeof(bound);
    assert_int_equal(uv_tcp_getsockname(&m.srv, (struct sockaddr *)&bound, &blen), 0);
    for (int i = 0; i < NCLIENTS; i++) {
        m.fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        assert_int_equal(connect(m.fds[i], (struct sockaddr *)&bound, sizeof(bound)), 0);
        struct sockaddr_in me;
        socklen_t ml = sizeof(me);
        getsockname(m.fds[i], (struct sockaddr *)&me, &ml);
        snprintf(m.want[i], sizeof(m.want[i]), "port=%u", ntohs(me.sin_port));
    }
    assert_true(run_until(multi_pred, NULL, 3000));
    run_for(20);
    assert_int_equal(m.done_ok, NCLIENTS);
    for (int i = 0; i < NCLIENTS; i++) assert_string_equal(m.got[i], m.want[i]);
    node *b = &T->nodes[1];
    assert_int_equal(b->handles, NCLIENTS);
    for (int i = 0; i < NCLIENTS; i++) {
        assert_int_equal(b->frames[2 * i].type, 30);
        assert_int_equal(b->frames[2 * i].body[0], i);
        assert_int_equal(b->frames[2 * i + 1].type, 31);
        assert_int_equal(b->frames[2 * i + 1].handle, 1);
    }
    assert_int_equal(b->frames[2 * NCLIENTS].type, 32);
    for (int i = 0; i < NCLIENTS; i++) close(m.fds[i]);
    uv_close((uv_handle_t *)&m.srv, NULL);
    run_for(10);
    M = NULL;
}

static void count_done(void *arg, int status)
{
    int *st = arg;
    st[0]++;
    st[1] = status;
}

/* A handle frame queued behind an unfinished write when the link closes:
 * done_cb runs exactly once, with an error. Refused sends never call it. */
static void test_cy_bus_send_handle_link_closes(void **state)
{
    (void)state;
    open_mesh(2, 0);
    cy_bus *a = T->nodes[0].bus;
    uv_tcp_t tcp;
    uv_tcp_init(&T->loop, &tcp);
    struct sockaddr_in sin;
    uv_ip4_addr("127.0.0.1", 0, &sin);
    assert_int_equal(uv_tcp_bind(&tcp, (const struct sockaddr *)&sin, 0), 0); /* has an fd */
    int st[2] = {0, 0};
    uv_tcp_t unopened;
    uv_tcp_init(&T->loop, &unopened);
    assert_int_equal(cy_bus_send_handle(a, 1, &unopened, 21, NULL, 0, count_done, st), CY_EINVAL);
    assert_int_equal(cy_bus_send_handle(a, 1, &tcp, 0, NULL, 0, count_done, st), CY_EINVAL);
    uint8_t *big = calloc(1, 4 * MiB);
    assert_non_null(big);
    assert_int_equal(cy_bus_send(a, 1, 3, big, 4 * MiB), 0); /* cannot finish before the loop runs */
    free(big);
    assert_int_equal(cy_bus_send_handle(a, 1, &tcp, 21, (const uint8_t *)"b", 1, count_done, st),
                     0);
    close_bus(0);
    assert_int_equal(st[0], 1);
    assert_true(st[1] < 0);
    assert_true(wait_down(1, 0, 1));
    assert_int_equal(cy_bus_send_handle(T->nodes[1].bus, 0, &tcp, 21, NULL, 0, count_done, st),
                     CY_EPIPE);
    run_for(50);
    assert_int_equal(st[0], 1);
    assert_int_equal(T->nodes[1].handles, 0);
    uv_close((uv_handle_t *)&tcp, NULL);
    uv_close((uv_handle_t *)&unopened, NULL);
    run_for(10);
}

/* ---- peers going away ------------------------------------------------- */

static int capture_begin(char *path, size_t cap)
{
    snprintf(path, cap, "%s/log", T->dir);
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
    assert_true(fd >= 0);
    int saved = dup(STDERR_FILENO);
    dup2(fd, STDERR_FILENO);
    close(fd);
    return saved;
}

static int capture_end(int saved, const char *path, const char *needle)
{
    dup2(saved, STDERR_FILENO);
    close(saved);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof(line), f)) {
        fputs(line, stderr);
        if (strstr(line, needle)) n++;
    }
    fclose(f);
    unlink(path);
    return n;
}

static void test_cy_bus_peer_closed_and_back(void **state)
{
    (void)state;
    cy_log_set_level(CY_LOG_INFO);
    char logp[128];
    int saved = capture_begin(logp, sizeof(logp));
    open_mesh(2, 0);
    node *a = &T->nodes[0];
    close_bus(1);
    assert_true(wait_down(0, 1, 1));
    assert_int_equal(cy_bus_send(a->bus, 1, 1, (const uint8_t *)"x", 1), CY_EPIPE);
    assert_int_equal(cy_bus_connected(a->bus, 1), 0);
    run_for(450); /* several redials */
    assert_int_equal(a->down[1], 1);
    assert_int_equal(a->up[1], 1);
    /* a new incarnation */
    assert_int_equal(open_bus(1, 1, 2, 202, 0), 0);
    assert_true(wait_up(0, 1, 2));
    assert_int_equal(a->upgen[1], 202);
    assert_true(wait_up(1, 0, 1));
    assert_int_equal(cy_bus_send(a->bus, 1, 6, (const uint8_t *)"again", 5), 0);
    assert_true(wait_frames(1, 1));
    assert_memory_equal(T->nodes[1].frames[0].body, "again", 5);
    run_for(50);
    assert_int_equal(a->up[1], 2);
    assert_int_equal(a->down[1], 1);
    int downs = capture_end(saved, logp, "link to shard 1 down");
    cy_log_set_level(CY_LOG_WARN);
    assert_int_equal(downs, 1); /* one line, not one per redial */
}

static const rec *find_frame(unsigned slot, uint8_t type)
{
    node *n = &T->nodes[slot];
    for (size_t i = 0; i < n->nframes; i++)
        if (n->frames[i].type == type) return &n->frames[i];
    return NULL;
}

/* Ping the forked shard until its echo comes back: its own link to us may
 * come up a moment after ours to it. */
typedef struct pinger {
    const char *msg;
    uint64_t last;
} pinger;

static int ping_pred(void *arg)
{
    pinger *p = arg;
    if (find_frame(0, 2)) return 1;
    uint64_t now = uv_now(&T->loop);
    if (p->last == 0 || now - p->last >= 50) {
        p->last = now;
        cy_bus_send(T->nodes[0].bus, 1, 1, (const uint8_t *)p->msg, strlen(p->msg));
    }
    return 0;
}

static void test_cy_bus_peer_killed_and_respawned(void **state)
{
    (void)state;
    assert_int_equal(open_bus(0, 0, 2, 9, 0), 0);
    node *a = &T->nodes[0];
    pid_t k1 = spawn_kid(1, 2, 1);
    assert_true(wait_up(0, 1, 1));
    assert_int_equal(a->upgen[1], 1);
    pinger pg = {"ping1", 0};
    assert_true(run_until(ping_pred, &pg, 3000));
    assert_memory_equal(find_frame(0, 2)->body, "ping1", 5);
    reap_kid(k1); /* SIGKILL */
    assert_true(wait_down(0, 1, 1));
    assert_int_equal(cy_bus_send(a->bus, 1, 1, (const uint8_t *)"x", 1), CY_EPIPE);
    run_for(300);
    assert_int_equal(a->down[1], 1);
    assert_int_equal(a->up[1], 1);
    free_frames(a);
    spawn_kid(1, 2, 2); /* new generation; removes the stale socket file */
    assert_true(wait_up(0, 1, 2));
    assert_int_equal(a->upgen[1], 2);
    pinger pg2 = {"ping2", 0};
    assert_true(run_until(ping_pred, &pg2, 3000));
    assert_memory_equal(find_frame(0, 2)->body, "ping2", 5);
    assert_int_equal(a->up[1], 2);
    assert_int_equal(a->down[1], 1);
}

typedef struct pump {
    uint32_t sent, target;
    int report_sent;
    uint64_t report_at;
    uint64_t last_ok;   /* uv_now of the last accepted send */
    int eagain;
    size_t max_seen;    /* largest backlog observed */
} pump;

static void pump_some(pump *p)
{
    cy_bus *a = T->nodes[0].bus;
    uint8_t body[1000];
    memset(body, 0x5a, sizeof(body));
    while (p->sent < p->target) {
        put32(body, p->sent);
        int rc = cy_bus_send(a, 1, 3, body, sizeof(body));
        size_t bl = cy_bus_backlog(a, 1);
        if (bl > p->max_seen) p->max_seen = bl;
        if (rc == CY_EAGAIN) {
            p->eagain++;
            return;
        }
        if (rc != 0) return;
        p->sent++;
        p->last_ok = uv_now(&T->loop);
    }
}

/* While stopped: push until the link has refused for 300 ms straight. */
static int stopped_pred(void *arg)
{
    pump *p = arg;
    pump_some(p);
    return p->eagain && uv_now(&T->loop) - p->last_ok >= 300;
}

static int resumed_pred(void *arg)
{
    pump *p = arg;
    pump_some(p);
    uint64_t now = uv_now(&T->loop);
    if (p->sent == p->target && (!p->report_sent || now - p->report_at >= 200) &&
        cy_bus_send(T->nodes[0].bus, 1, 4, NULL, 0) == 0) {
        p->report_sent = 1; /* resent if the answer is slow: the count is idempotent */
        p->report_at = now;
    }
    return find_frame(0, 5) != NULL;
}

static void test_cy_bus_peer_stopped_backlog(void **state)
{
    (void)state;
    size_t max = 64 << 10;
    assert_int_equal(open_bus(0, 0, 2, 9, max), 0);
    node *a = &T->nodes[0];
    pid_t kid_pid = spawn_kid(1, 2, 1);
    assert_true(wait_up(0, 1, 1));
    assert_int_equal(kill(kid_pid, SIGSTOP), 0);
    int st;
    assert_int_equal(waitpid(kid_pid, &st, WUNTRACED), kid_pid);
    assert_true(WIFSTOPPED(st));

    pump p = {0, 1u << 30, 0, 0, 0, 0, 0};
    p.last_ok = uv_now(&T->loop);
    T->beats = 0;
    uv_timer_start(&T->beat, beat_cb, 10, 10);
    assert_true(run_until(stopped_pred, &p, 4000));
    unsigned beats = T->beats;
    assert_true(beats >= 20); /* the loop kept turning: >= 300 ms of 10 ms ticks */
    assert_true(p.sent > 64);  /* the kernel buffer took some, then the queue */
    assert_true(p.max_seen <= max);
    assert_true(cy_bus_backlog(a->bus, 1) > max - 1005);
    assert_true(cy_bus_connected(a->bus, 1));
    assert_int_equal(a->down[1], 0);

    assert_int_equal(kill(kid_pid, SIGCONT), 0);
    p.target = p.sent + 300;
    assert_true(run_until(resumed_pred, &p, 4000));
    uv_timer_stop(&T->beat);
    const rec *r = find_frame(0, 5);
    assert_int_equal(r->len, 5);
    assert_int_equal(get32(r->body), p.target); /* every frame arrived ... */
    assert_int_equal(r->body[4], 1);            /* ... in order */
    assert_int_equal(a->down[1], 0);
    assert_int_equal(a->up[1], 1);
}

/* The wire format alone (cy_bus_frame_parse, cy_bus_hello_parse): what
 * every link's reader runs, and what fuzz_bus feeds bytes to. */
static void test_cy_bus_frame_parse(void **state)
{
    (void)state;
    cy_bus_frame f;
    memset(&f, 0x55, sizeof(f));
    const uint8_t two[] = {0, 0, 0, 3, 7, 'h', 'i', 0xee};
    for (size_t n = 0; n < 7; n++) assert_int_equal(cy_bus_frame_parse(two, n, &f), 0);
    assert_int_equal(cy_bus_frame_parse(NULL, 0, &f), 0);
    assert_int_equal(cy_bus_frame_parse(two, sizeof(two), &f), 1);
    assert_false(f.handle);
    assert_int_equal(f.type, 7);
    assert_ptr_equal(f.body, two + 5);
    assert_int_equal(f.len, 2);
    assert_int_equal(f.total, 7);
    /* bit 31: a descriptor comes with it; the length is the other bits */
    const uint8_t flagged[] = {0x80, 0, 0, 1, 6};
    assert_int_equal(cy_bus_frame_parse(flagged, sizeof(flagged), &f), 1);
    assert_true(f.handle);
    assert_int_equal(f.len, 0);
    assert_int_equal(f.total, 5);
    /* length 0, with or without the flag, and past CY_BUS_MAX_FRAME */
    const uint8_t zero[] = {0, 0, 0, 0, 1}, zero_flag[] = {0x80, 0, 0, 0},
                  big[] = {0x04, 0, 0, 1};
    assert_int_equal(cy_bus_frame_parse(zero, sizeof(zero), &f), CY_EPROTO);
    assert_int_equal(cy_bus_frame_parse(zero_flag, sizeof(zero_flag), &f), CY_EPROTO);
    assert_int_equal(cy_bus_frame_parse(big, sizeof(big), &f), CY_EPROTO);
    const uint8_t max[] = {0x04, 0, 0, 0}; /* CY_BUS_MAX_FRAME itself: wait for it */
    assert_int_equal(cy_bus_frame_parse(max, sizeof(max), &f), 0);

    /* HELLO: type 0, no flag, u32 index, u64 generation */
    const uint8_t hello[] = {0, 0, 0, 13, 0, 0, 0, 0, 5, 1, 2, 3, 4, 5, 6, 7, 8};
    unsigned index = 0;
    uint64_t gen = 0;
    assert_int_equal(cy_bus_frame_parse(hello, sizeof(hello), &f), 1);
    assert_int_equal(cy_bus_hello_parse(&f, &index, &gen), 0);
    assert_int_equal(index, 5);
    assert_true(gen == 0x0102030405060708ull);
    f.handle = true;
    assert_int_equal(cy_bus_hello_parse(&f, &index, &gen), CY_EPROTO);
    f.handle = false;
    f.type = 1;
    assert_int_equal(cy_bus_hello_parse(&f, &index, &gen), CY_EPROTO);
    f.type = 0;
    f.len = 11;
    assert_int_equal(cy_bus_hello_parse(&f, &index, &gen), CY_EPROTO);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    cy_log_set_level(CY_LOG_WARN);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cy_bus_frame_parse),
        cmocka_unit_test_setup_teardown(test_cy_bus_send_two_buses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_send_three_buses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_send_large_frame, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_send_many_small, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_send2_equals_concat, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_send_invalid, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_send_inplace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_send_backlog_full, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_send_alloc_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_new_single_shard, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_new_bad_options, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_new_path_too_long, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_new_allocation_failures, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_new_stale_socket, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_new_live_socket, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_close_keeps_successor_socket, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_close_while_dialling, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_peer_up_needs_answer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_hello_garbage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_hello_bad_index, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_hello_answered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_hello_oversize_frame, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_hello_handle_flag_without_fd, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_hello_replaces_old_link, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_hello_accept_alloc_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_send_handle_passes_fd, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_send_handle_passes_a_socketpair, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_send_handle_many, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_send_handle_link_closes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_peer_closed_and_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_peer_killed_and_respawned, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cy_bus_peer_stopped_backlog, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
