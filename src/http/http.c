/* http: libmicrohttpd (MHD 0.9.75) driven from a libuv loop; see http.h.
 *
 * The idea needed to read this file: MHD runs with no thread of its own
 * (MHD_USE_EPOLL, external polling). All its sockets sit in one epoll set;
 * a uv_poll_t watches that set's descriptor and calls MHD_run when it is
 * readable, and one uv_timer_t is re-armed from MHD_get_timeout after every
 * MHD_run (MHD may hold work that no socket will announce: buffered input,
 * timeouts, resumed connections). Every MHD callback therefore runs inside
 * run_mhd (or inside MHD_stop_daemon), on the loop thread.
 *
 * A request is the access handler's con_cls (cy_http_req). MHD calls the
 * handler once with the headers (where the limits on the head and the
 * application's check run, before any body is read), once per piece of
 * body, and once more when the body is complete; only then does the
 * application's handler run. If it
 * answered, the answer is queued before the access handler returns. If not,
 * the connection is suspended (MHD stops reading and timing it out) until
 * cy_http_reply stores the answer and resumes it: MHD then calls the access
 * handler again with nothing new, and that call queues the stored answer.
 * MHD_queue_response is thus only ever called from the access handler,
 * which every MHD version supports.
 *
 * A stream is a response of unknown size (chunked) whose content reader
 * hands out the request's byte queue: runs of copied bytes and references
 * to shared chunks (one event's bytes, written to a thousand streams, are
 * held once), copied into MHD's buffer only as the client takes them. With the queue empty the
 * reader suspends the connection and returns 0 (MHD's documented way not to spin);
 * cy_http_stream_write or cy_http_stream_end resumes it. MHD calls the reader
 * for a chunk only after the previous chunk has entirely reached the kernel,
 * so "bytes accepted minus the reader's pos" is exactly what the kernel has
 * not taken: that is the backlog.
 *
 * MHD does not notice a client leaving while its connection is suspended,
 * so a connection's first suspension starts a uv_poll_t on its socket for
 * UV_DISCONNECT (EPOLLRDHUP, plus the HUP/ERR that epoll always reports),
 * which then runs for the life of the connection: a kept-alive client
 * making call after call costs no epoll_ctl for it (it cost 5 per request,
 * and an ioctl, when each suspension made its own). Readability is not
 * watched: a pipelined next request is not a departure. When it fires on a
 * suspended request the application hears cy_http_on_close at once, the
 * request turns GONE, and the connection is resumed so that MHD closes it
 * (the access handler answers MHD_NO, the reader END_WITH_ERROR). When it
 * fires with nothing suspended, MHD will see the departure itself: the
 * watch stops (the event is level-triggered) and the next suspension starts
 * it again. It is closed when MHD tells us the connection is closed (before
 * MHD closes the descriptor) or hands it to an upgrade, so it never
 * outlives the descriptor. A client that half-closes (shutdown(SHUT_WR))
 * while waiting counts as gone, as it does for nginx.
 *
 * MHD's inactivity timeout (idle_timeout_s) resets on every byte, so on its
 * own it would let a client trickle a request forever. Each connection
 * therefore also has a deadline of its own, in one of two phases: waiting
 * for a request, idle_timeout_s after it was accepted or after its previous
 * request completed; and receiving one, request_timeout_s after the
 * request's first line arrived (MHD's URI callback) until its body is
 * complete and the application's handler has it. A connection past its
 * deadline is shut down (shutdown(2), which MHD sees as the client
 * leaving), after a 408 if its body was arriving. A new connection starts
 * in the second phase (its first request's clock runs from the accept),
 * unless idle_timeout_s is the shorter. A third clock runs while a
 * request's head is not yet whole (from the accept, or from a later
 * request's first line); it counts only under pressure (open connections
 * in the last tenth of max_connections), when it allows PRESSURE_HEAD_MS,
 * and the idle phase allows PRESSURE_IDLE_MS. Each clock's connections
 * form a FIFO by the time they joined, and at any moment all members of
 * one have a deadline of the same length (pressure changes it for all at
 * once), so its head expires first and one timer serves the earliest of
 * the three heads: O(1) per event. Under pressure a new connection also
 * closes the head of the idle FIFO, or else of the head FIFO, when that
 * one has no request under way (see evictable()): that needs no headroom
 * above MHD's connection limit, which stays max_connections. The limit
 * per client address is MHD's accept policy callback, before MHD makes a
 * connection, with counts kept in a map.
 *
 * Two things MHD 0.9.75 cannot do are worked around here. It takes no
 * response while a body is arriving, so a chunked body that outgrows
 * max_body_bytes gets its 413 written to the socket directly (nothing else
 * is being sent on the connection while its body arrives: any 100 Continue
 * went out before the body was read), then the write side is shut and the
 * rest of the body read and dropped until it ends (the connection then
 * closes) or the request deadline cuts it: closing with unread input would
 * send a reset that can destroy the answer on its way. And at
 * max_connections it leaves the listening socket out of its epoll set until
 * a later MHD_run notices a slot is free, so a closed connection asks for
 * that run.
 *
 * The request target is decoded by our unescape callback (MHD's decoder,
 * plus a look at the result): a control character there (a NUL would cut
 * the C string short) marks the connection, and the request is refused
 * with its headers.
 *
 * Requests are freed in MHD's completion callback, after the application
 * has heard cy_http_on_close if it still held them.
 */
#include "http/http.h"
#include "http/chunk_int.h"

#include "core/cy_alloc.h"
#include "core/cy_buf.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "core/cy_map.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <microhttpd.h>

#define DEF_MAX_HEADER ((size_t)16 << 10)
#define DEF_MAX_BODY ((size_t)64 << 10)
#define DEF_MAX_CONN 1024u
#define DEF_IDLE_S 60u
#define DEF_REQUEST_S 10u
#define DEF_MAX_BACKLOG ((size_t)1 << 20)
#define STREAM_BLOCK ((size_t)16 << 10) /* bytes MHD may take from a stream per chunk */
#define MIN_POOL ((size_t)32 << 10)     /* MHD's own default connection memory */
/* Under pressure (see pressure()): how long a connection may wait between
 * requests, and how long it has to send a whole request head (from the
 * accept, or from a later request's first line). Short enough that idle or
 * silent sockets turn over faster than a stranger can open them from one
 * address; long enough for any client that means to send a request. */
#define PRESSURE_IDLE_MS 1000
#define PRESSURE_HEAD_MS 2000
#define REFUSE_LOG_WINDOW_MS 10000
#define REFUSE_LOG_BURST 20

typedef enum {
    RQ_RECEIVING, /* headers in, body arriving; the application has not seen it */
    RQ_CHECKING,  /* inside the application's check (headers in, no body read) */
    RQ_HANDLING,  /* inside the application's handler, no answer yet */
    RQ_PENDING,   /* the application holds it unanswered; connection suspended */
    RQ_ANSWERED,  /* a reply is stored or queued; the application let go */
    RQ_STREAM,    /* a stream is open; the application holds it */
    RQ_ENDED,     /* stream ended by the application; MHD drains the queue */
    RQ_GONE,      /* client left or server stopped; on_close ran; MHD to finish */
} rq_state;

typedef struct hconn hconn;
struct dqueue;

/* A connection's place in one of the FIFO queues below. */
typedef struct dlink {
    hconn *prev, *next;
    struct dqueue *q; /* NULL when not in a queue */
    int64_t since_ms; /* monotonic: when it joined q */
} dlink;

/* Connections that joined in turn, earliest first. Every member of a queue
 * has a deadline of the same length from the time it joined (a length that
 * may change with pressure, for all of them at once), so the head is always
 * the first to expire. slot: which of hconn's links the queue uses. */
typedef struct dqueue {
    hconn *head, *tail;
    int slot;
} dqueue;

/* Connections from one client address (cy_http.addrs), for
 * max_per_address. The key lives here. */
typedef struct addr_count {
    unsigned n;
    size_t len;
    uint8_t key[17]; /* family byte + 4 or 16 address bytes */
} addr_count;

/* A connection's departure watch (see the file's comment), allocated on
 * its own: uv_close needs it after the hconn is freed. */
typedef struct cwatch {
    uv_poll_t p;
    hconn *hc; /* NULL once closing */
    bool on;   /* started */
} cwatch;

/* Per connection (MHD's socket context): its deadlines and its request. */
struct hconn {
    dlink link[2]; /* [0]: idle_q or req_q (its phase); [1]: head_q */
    int fd;
    struct cy_http_req *req; /* the request MHD has shown us, until it completes */
    addr_count *ac;          /* its address's count; NULL without one */
    bool bad_target;         /* a control character decoded from the request target */
    bool line_seen;          /* a request line has arrived on it (on_uri) */
    bool cut;                /* shut down by us; MHD is about to close it */
    bool upgraded;           /* handed to the application (cy_http_upgrade): no deadline */
    cwatch *watch;           /* from its first suspension until it closes; NULL before */
};

/* An upgrade, from cy_http_upgrade until its owner closes it. */
struct cy_http_upgraded {
    cy_http *h;                            /* NULL once the server stopped */
    struct MHD_UpgradeResponseHandle *urh; /* NULL until upgraded, and after stop */
    hconn *hc;                             /* its connection, once upgraded */
    cy_http_upgrade_cb cb;                 /* NULL once called */
    void *arg;
    cy_http_upgraded *prev, *next; /* cy_http.upgraded */
};

/* One piece of a stream's queue: the next len bytes of out (ref NULL), or
 * bytes [off, ref->len) of a shared chunk. A stream writing the same chunk
 * as a thousand others holds a reference, not a copy. */
typedef struct oseg {
    struct oseg *next;
    cy_http_chunk *ref;
    size_t len; /* ref NULL: bytes of out this piece stands for */
    size_t off; /* ref: bytes of the chunk already handed to MHD */
} oseg;

struct cy_http_req {
    cy_http *h;
    struct MHD_Connection *conn;
    cy_http_req *prev, *next; /* cy_http.reqs: every request MHD has shown us */
    rq_state state;
    const char *method, *path; /* MHD's strings, valid until MHD completes the request */
    uint8_t *body;
    size_t body_len, body_cap;
    size_t discarded;          /* body bytes dropped after the body was rejected */
    unsigned reject;           /* status decided while the body arrived (413, 503); 0 none */
    bool raw_answered;         /* that answer was written to the socket directly */
    bool streamed;             /* counted in cy_http.streams */
    int tag;                   /* the application's (cy_http_set_tag) */
    int64_t started_us;        /* monotonic us when its head was whole (cy_http_started_us) */
    bool suspended;            /* by us, with its connection's watch running */
    struct MHD_Response *resp; /* answer stored, to be queued by the access handler */
    unsigned status;
    cy_http_upgraded *upg; /* an upgrade answered, until its callback has run */
    void (*on_close)(void *arg, cy_http_req *req);
    void *on_close_arg;
    cy_buf out;            /* copied stream bytes not yet handed to MHD */
    oseg *q_head, *q_tail; /* the stream's queue, in order: runs of out, shared chunks */
    uint64_t out_total;    /* stream bytes accepted from the application */
    uint64_t out_sent;     /* stream bytes the kernel has taken (the reader's last pos) */
    char peer[64];         /* "ip:port" */
    char addr[48];         /* "ip" */
    char *extra[2 * CY_HTTP_EXTRA_HEADERS]; /* name, value pairs (owned) for every answer */
    unsigned nextra;                        /* pairs in extra */
};

struct cy_http {
    uv_loop_t *loop;
    struct MHD_Daemon *d;
    cy_http_limits lim;
    cy_http_handler handler;
    cy_http_check check; /* NULL: none */
    void *ctx;
    uv_poll_t epoll_w;   /* MHD's epoll descriptor */
    uv_timer_t timer;    /* MHD_get_timeout, or 0 ms to run MHD soon */
    uv_timer_t deadline; /* the earliest of the queues' first deadlines */
    int handles;         /* of the three above, those initialised and not yet closed */
    dqueue idle_q;       /* waiting for a request: idle_timeout_s (PRESSURE_IDLE_MS) */
    dqueue req_q;        /* receiving one: request_timeout_s */
    dqueue head_q;       /* its request's head not yet whole: PRESSURE_HEAD_MS, under pressure */
    unsigned nconns;     /* connections with an hconn (MHD's, less any it never told us of) */
    unsigned ncut;       /* of those, shut down by us and not yet closed by MHD */
    cy_map addrs;        /* address key -> addr_count, for max_per_address */
    cy_logrl refuse_log; /* connections refused for their address */
    unsigned streams;    /* requests that began a stream and are not completed */
    cy_http_req *reqs;
    cy_http_upgraded *upgraded; /* every upgrade answered and not yet closed */
    uint64_t requests;          /* answers queued since start */
    bool in_run;                /* inside MHD_run: do not re-enter, defer */
    bool rerun;                 /* something asked for MHD_run while in_run */
    bool stop_deferred;         /* cy_http_stop called from inside MHD_run */
    bool stopping;              /* cy_http_stop has begun */
    bool freed;                 /* cy_http_free ran; free when the last handle closes */
    struct tls_creds *creds;    /* HTTPS: the pair new handshakes get; NULL = plain */
};

static void run_mhd(cy_http *h);
static void do_stop(cy_http *h);
static void watch_close(hconn *hc);

/* ---- loop glue ------------------------------------------------------------ */

static void on_timer(uv_timer_t *t)
{
    run_mhd(t->data);
}

static void on_epoll(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    run_mhd(p->data);
}

/* Ask for MHD_run soon, from the loop (never re-entering MHD). */
static void kick(cy_http *h)
{
    if (h->stopping) return;
    if (h->in_run)
        h->rerun = true;
    else
        uv_timer_start(&h->timer, on_timer, 0, 0);
}

static void run_mhd(cy_http *h)
{
    if (h->d == NULL || h->stopping) return;
    if (h->lim.before_run) h->lim.before_run(h->lim.before_run_ctx);
    h->in_run = true;
    h->rerun = false;
    MHD_run(h->d);
    h->in_run = false;
    if (h->stop_deferred) {
        do_stop(h);
        return;
    }
    MHD_UNSIGNED_LONG_LONG ms = 0;
    if (h->rerun) {
        h->rerun = false;
        uv_timer_start(&h->timer, on_timer, 0, 0);
    } else if (MHD_get_timeout(h->d, &ms) == MHD_YES) {
        uv_timer_start(&h->timer, on_timer, (uint64_t)ms, 0);
    } else {
        uv_timer_stop(&h->timer);
    }
}

/* MHD's messages about one client's conduct (it left, it sent too much, we
 * closed it on purpose) are routine: debug. Anything else is about the
 * server (epoll, memory, descriptors, the connection limit): warn. */
static const char *const client_msgs[] = {
    "Closing connection",
    "Error processing request",
    "Application reported internal error",
    "Connection socket is closed",
    "Socket has been disconnected",
    "Connection was closed by remote",
    "Failed to send",
    "Received HTTP/1.1 request without",
    "Too large value of 'Content-Length'",
    "Failed to parse `Content-Length'",
    "Not enough memory in pool",
    "Too late",
    /* TLS: a client that failed or abandoned its handshake, or sent
     * records that do not decrypt; a stranger can cause these at will. */
    "Error: received handshake message out of context",
    "TLS encryption or decryption error",
};

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof(line), fmt, ap);
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        line[--n] = '\0';
    for (size_t i = 0; i < sizeof(client_msgs) / sizeof(client_msgs[0]); i++)
        if (strncmp(line, client_msgs[i], strlen(client_msgs[i])) == 0) {
            cy_debug(NULL, "http: %s", line);
            return;
        }
    cy_warn(NULL, "http: %s", line);
}

/* ---- request deadlines ------------------------------------------------------ */

static void on_deadline(uv_timer_t *t);

/* Connections open and not shut down by us. */
static unsigned live(const cy_http *h)
{
    return h->nconns - h->ncut;
}

/* A tenth of max_connections (0 below 10): connections kept free for
 * bursts. Past max_connections less this reserve the server is under
 * pressure: idle and silent connections get short deadlines, and each new
 * connection pushes out an idle one. */
static unsigned reserve(const cy_http *h)
{
    return h->lim.max_connections / 10;
}

static bool pressure(const cy_http *h)
{
    return live(h) + reserve(h) >= h->lim.max_connections;
}

/* The length of q's deadlines now, ms; -1 when q has none. */
static int64_t q_len(const cy_http *h, const dqueue *q)
{
    if (q == &h->idle_q)
        return pressure(h) ? PRESSURE_IDLE_MS : (int64_t)h->lim.idle_timeout_s * 1000;
    if (q == &h->req_q) return (int64_t)h->lim.request_timeout_s * 1000;
    return pressure(h) ? PRESSURE_HEAD_MS : -1;
}

/* The deadline of q's head, or INT64_MAX. */
static int64_t q_first(const cy_http *h, const dqueue *q)
{
    int64_t len = q_len(h, q);
    if (q->head == NULL || len < 0) return INT64_MAX;
    int64_t since = q->head->link[q->slot].since_ms;
    if (len > INT64_MAX - since) return INT64_MAX;
    return since + len;
}

static void deadline_timer_update(cy_http *h)
{
    if (h->stopping) return;
    int64_t first = q_first(h, &h->idle_q), r = q_first(h, &h->req_q), hd = q_first(h, &h->head_q);
    if (r < first) first = r;
    if (hd < first) first = hd;
    if (first == INT64_MAX) {
        uv_timer_stop(&h->deadline);
        return;
    }
    int64_t wait = first - cy_mono_ms();
    uv_timer_start(&h->deadline, on_deadline, wait > 0 ? (uint64_t)wait : 0, 0);
}

static void q_remove(hconn *hc, int slot)
{
    dlink *l = &hc->link[slot];
    dqueue *q = l->q;
    if (q == NULL) return;
    if (l->prev)
        l->prev->link[slot].next = l->next;
    else
        q->head = l->next;
    if (l->next)
        l->next->link[slot].prev = l->prev;
    else
        q->tail = l->prev;
    l->prev = l->next = NULL;
    l->q = NULL;
}

/* Append hc to q, joining now (the latest of q's members). */
static void q_push(cy_http *h, hconn *hc, dqueue *q)
{
    q_remove(hc, q->slot);
    dlink *l = &hc->link[q->slot];
    l->since_ms = cy_mono_ms();
    l->q = q;
    l->prev = q->tail;
    if (q->tail)
        q->tail->link[q->slot].next = hc;
    else
        q->head = hc;
    q->tail = hc;
    if (q->head == hc) deadline_timer_update(h);
}

/* hc leaves its phase's queue (idle_q or req_q). */
static void disarm(cy_http *h, hconn *hc)
{
    (void)h;
    if (hc) q_remove(hc, 0);
}

static void arm(cy_http *h, hconn *hc, dqueue *q)
{
    if (hc && !hc->upgraded) q_push(h, hc, q);
}

static void arm_idle(cy_http *h, hconn *hc)
{
    arm(h, hc, &h->idle_q);
}

static bool raw_send(cy_http_req *req, int fd, const char *out, size_t n);
static void upgrade_failed(cy_http_upgraded *u);
static bool raw_answer(cy_http_req *req, int fd, unsigned status, const char *code, const char *fmt,
                       ...) __attribute__((format(printf, 5, 6)));

typedef enum { CUT_DEADLINE, CUT_EVICT } cut_why;

/* Close hc from our side: MHD reads EOF next and closes the connection as
 * if the client left. */
static void cut(cy_http *h, hconn *hc, cut_why why)
{
    if (hc->cut) return;
    cy_http_req *req = hc->req;
    bool receiving = hc->link[0].q == &h->req_q;
    bool idle = hc->link[0].q == &h->idle_q;
    bool head = hc->link[1].q == &h->head_q;
    bool press = pressure(h);
    q_remove(hc, 0);
    q_remove(hc, 1);
    hc->cut = true;
    h->ncut++;
    if (why == CUT_DEADLINE && receiving && req && req->state == RQ_RECEIVING && !req->raw_answered)
        raw_answer(req, hc->fd, 408, "request_timeout", "request not complete within %us",
                   h->lim.request_timeout_s);
    shutdown(hc->fd, SHUT_RDWR);
    const char *peer = req ? req->peer : "a client";
    if (why == CUT_EVICT)
        cy_debug(NULL, "http: %u connections open, an idle one closed to make room", live(h) + 1);
    else if (receiving && !(head && press))
        cy_debug(NULL, "http: %s request not complete within %us, connection closed", peer,
                 h->lim.request_timeout_s);
    else if (idle && !press)
        cy_debug(NULL, "http: no request within %us, connection closed", h->lim.idle_timeout_s);
    else
        cy_debug(NULL,
                 "http: %u connections open: one with no whole request head within "
                 "%dms closed",
                 live(h) + 1, idle ? PRESSURE_IDLE_MS : PRESSURE_HEAD_MS);
}

static void on_deadline(uv_timer_t *t)
{
    cy_http *h = t->data;
    int64_t now = cy_mono_ms();
    bool any = false;
    dqueue *qs[3] = {&h->idle_q, &h->req_q, &h->head_q};
    for (int i = 0; i < 3; i++)
        while (q_first(h, qs[i]) <= now) {
            cut(h, qs[i]->head, CUT_DEADLINE);
            any = true;
        }
    deadline_timer_update(h);
    if (any) kick(h);
}

static hconn *conn_ctx(struct MHD_Connection *c)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

/* ---- connection limits ------------------------------------------------------ */

/* The key of a client address: family byte and address bytes; 0 if none. */
static size_t addr_key(const struct sockaddr *sa, uint8_t key[17])
{
    if (sa == NULL) return 0;
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;
        key[0] = 4;
        memcpy(key + 1, &s4->sin_addr, 4);
        return 5;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;
        key[0] = 6;
        memcpy(key + 1, &s6->sin6_addr, 16);
        return 17;
    }
    return 0;
}

/* MHD's accept policy, before a connection exists: refuse (MHD closes the
 * socket at once) what the application's admit refuses, and an address
 * that holds max_per_address connections. */
static enum MHD_Result on_accept(void *cls, const struct sockaddr *addr, socklen_t addrlen)
{
    cy_http *h = cls;
    (void)addrlen;
    if (h->lim.admit && !h->lim.admit(h->lim.admit_ctx, addr)) return MHD_NO;
    if (h->lim.max_per_address == 0) return MHD_YES;
    uint8_t key[17];
    size_t kl = addr_key(addr, key);
    addr_count *ac = kl ? cy_map_get(&h->addrs, key, kl) : NULL;
    if (ac == NULL || ac->n < h->lim.max_per_address) return MHD_YES;
    char ip[INET6_ADDRSTRLEN] = "?";
    inet_ntop(key[0] == 4 ? AF_INET : AF_INET6, key + 1, ip, sizeof(ip));
    char more[CY_LOGRL_MORE];
    if (cy_logrl_line(&h->refuse_log, ip, more)) {
        cy_warn(NULL,
                "http: connection from %s refused: it has %u open, the most one address "
                "may (http_max_per_address)%s",
                ip, ac->n, more);
    }
    return MHD_NO;
}

/* Count hc against its address. False when out of memory. */
static bool addr_add(cy_http *h, hconn *hc, struct MHD_Connection *c)
{
    if (h->lim.max_per_address == 0) return true;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    uint8_t key[17];
    size_t kl = ci ? addr_key(ci->client_addr, key) : 0;
    if (kl == 0) return true;
    addr_count *ac = cy_map_get(&h->addrs, key, kl);
    if (ac == NULL) {
        ac = cy_calloc(1, sizeof(*ac));
        if (ac == NULL) return false;
        memcpy(ac->key, key, kl);
        ac->len = kl;
        if (cy_map_put(&h->addrs, ac->key, kl, ac) != 0) {
            cy_free(ac);
            return false;
        }
    }
    ac->n++;
    hc->ac = ac;
    return true;
}

static void addr_del(cy_http *h, hconn *hc)
{
    addr_count *ac = hc->ac;
    hc->ac = NULL;
    if (ac == NULL || --ac->n > 0) return;
    cy_map_del(&h->addrs, ac->key, ac->len);
    cy_free(ac);
}

/* Whether hc may be closed to make room: it has no request under way (it
 * waits for its next request, or has not sent a whole first request line)
 * and no bytes are waiting in its socket (a request that has arrived is
 * never thrown away). */
static bool evictable(const cy_http *h, const hconn *hc, const hconn *fresh)
{
    (void)h;
    if (hc == NULL || hc == fresh || hc->cut || hc->line_seen || hc->upgraded) return false;
    char b;
    return recv(hc->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) <= 0;
}

/* A new connection (fresh) took the server past max_connections less its
 * reserve: close the connection that has waited longest with no request
 * under way, if any, so that idle sockets never crowd out new requests. */
static void evict_one(cy_http *h, hconn *fresh)
{
    hconn *a = h->idle_q.head, *b = h->head_q.head;
    if (evictable(h, a, fresh))
        cut(h, a, CUT_EVICT);
    else if (evictable(h, b, fresh))
        cut(h, b, CUT_EVICT);
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                          enum MHD_ConnectionNotificationCode toe)
{
    cy_http *h = cls;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        hconn *hc = cy_calloc(1, sizeof(*hc));
        if (hc == NULL || ci == NULL || !addr_add(h, hc, c)) {
            /* No memory for the deadline: refuse the connection rather than
             * serve one that could be held open forever. */
            cy_free(hc);
            if (ci) shutdown(ci->connect_fd, SHUT_RDWR);
            *socket_context = NULL;
            return;
        }
        hc->link[0].q = hc->link[1].q = NULL;
        hc->fd = ci->connect_fd;
        *socket_context = hc;
        h->nconns++;
        /* A new connection has no reason to wait before its first request:
         * that request's deadline runs from the accept (or the idle one,
         * if shorter), so that a socket that sends nothing, or trickles its
         * first line, holds its place no longer than a slow request. */
        if (h->lim.request_timeout_s <= h->lim.idle_timeout_s)
            arm(h, hc, &h->req_q);
        else
            arm_idle(h, hc);
        arm(h, hc, &h->head_q);
        if (live(h) > h->lim.max_connections - reserve(h)) evict_one(h, hc);
        /* Pressure may have begun: the queues' deadlines may be shorter. */
        deadline_timer_update(h);
    } else {
        hconn *hc = *socket_context;
        *socket_context = NULL;
        if (hc) {
            watch_close(hc); /* MHD closes the descriptor after telling us */
            q_remove(hc, 0);
            q_remove(hc, 1);
            addr_del(h, hc);
            h->nconns--;
            if (hc->cut) h->ncut--;
            cy_free(hc);
        }
        deadline_timer_update(h);
        /* At max_connections MHD takes the listening socket out of its epoll
         * set, and puts it back only at the start of a later MHD_run; no
         * event would bring that run, so ask for it. */
        kick(h);
    }
}

/* A request's first line is in: from now its headers and body have
 * request_timeout_s, whatever the pace of their bytes, and under pressure
 * its head has PRESSURE_HEAD_MS. */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
    cy_http *h = cls;
    (void)uri;
    hconn *hc = conn_ctx(c);
    if (h->stopping || hc == NULL || hc->cut) return NULL;
    hc->line_seen = true;
    /* On a new connection the clocks have run since the accept already. */
    if (hc->link[0].q != &h->req_q) arm(h, hc, &h->req_q);
    if (hc->link[1].q != &h->head_q) arm(h, hc, &h->head_q);
    return NULL; /* the access handler's first call still sees *con_cls NULL */
}

/* MHD's own decoding of the path and of each query key and value, then a
 * look at the result: MHD hands the application C strings, so a decoded
 * NUL would cut one short, and no control character belongs in a target. */
static size_t on_unescape(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls;
    size_t n = MHD_http_unescape(s);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f) {
            hconn *hc = conn_ctx(c);
            if (hc) hc->bad_target = true;
            break;
        }
    }
    return n;
}

/* ---- request lifetime ------------------------------------------------------- */

static bool app_holds(const cy_http_req *req)
{
    return req->state == RQ_HANDLING || req->state == RQ_PENDING || req->state == RQ_STREAM;
}

static void req_free_mem(cy_http_req *req)
{
    if (req->upg) upgrade_failed(req->upg);
    if (req->streamed) req->h->streams--;
    for (unsigned i = 0; i < 2 * req->nextra; i++)
        cy_free(req->extra[i]);
    if (req->resp) MHD_destroy_response(req->resp);
    cy_free(req->body);
    cy_buf_fini(&req->out);
    while (req->q_head) {
        oseg *g = req->q_head;
        req->q_head = g->next;
        cy_http_chunk_unref(g->ref);
        cy_free(g);
    }
    cy_free(req);
}

static void on_cwatch_closed(uv_handle_t *hd)
{
    cy_free(hd->data);
}

static void on_watch(uv_poll_t *p, int status, int events);

/* Make (once per connection) and start req's connection's watch. */
static void watch_start(cy_http_req *req)
{
    hconn *hc = conn_ctx(req->conn);
    if (hc == NULL) {
        cy_warn(NULL, "http: cannot watch %s for departure", req->peer);
        return;
    }
    cwatch *w = hc->watch;
    if (w == NULL) {
        w = cy_calloc(1, sizeof(*w));
        if (w == NULL || uv_poll_init(req->h->loop, &w->p, hc->fd) != 0) {
            cy_free(w);
            cy_warn(NULL, "http: cannot watch %s for departure", req->peer);
            return;
        }
        w->p.data = w;
        w->hc = hc;
        hc->watch = w;
    }
    if (!w->on && uv_poll_start(&w->p, UV_DISCONNECT, on_watch) == 0) w->on = true;
}

/* Close hc's watch: MHD is about to close the descriptor, or hands it over. */
static void watch_close(hconn *hc)
{
    cwatch *w = hc->watch;
    if (w == NULL) return;
    hc->watch = NULL;
    w->hc = NULL;
    uv_close((uv_handle_t *)&w->p, on_cwatch_closed); /* stops it: off the loop's epoll now */
}

/* From the access handler or the content reader only (MHD's rule). */
static void suspend(cy_http_req *req)
{
    MHD_suspend_connection(req->conn);
    req->suspended = true;
    watch_start(req);
}

/* The watch keeps running: a departure while MHD has the connection is
 * MHD's to see, and on_watch then stops it. */
static void resume(cy_http_req *req)
{
    if (!req->suspended) return;
    req->suspended = false;
    MHD_resume_connection(req->conn);
    kick(req->h);
}

/* The application loses req: tell it once. */
static void lose(cy_http_req *req)
{
    if (!app_holds(req)) return;
    req->state = RQ_GONE;
    void (*cb)(void *, cy_http_req *) = req->on_close;
    req->on_close = NULL;
    if (cb) cb(req->on_close_arg, req);
}

static void on_watch(uv_poll_t *p, int status, int events)
{
    (void)status;
    (void)events;
    cwatch *w = p->data;
    cy_http_req *req = w->hc ? w->hc->req : NULL;
    uv_poll_stop(p); /* level-triggered: it would fire again at once */
    w->on = false;
    if (req == NULL || !req->suspended) return; /* MHD has it, and sees the departure */
    cy_debug(NULL, "http: %s left while %s", req->peer,
             req->state == RQ_PENDING ? "waiting for an answer" : "streaming");
    lose(req);
    /* MHD must now close it: the access handler answers MHD_NO, the reader
     * END_WITH_ERROR. An ended stream still drains; MHD hits the error. */
    resume(req);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    cy_http *h = cls;
    cy_http_req *req = *con_cls;
    *con_cls = NULL;
    /* The connection waits for its next request now (also after an answer
     * MHD made itself, when the access handler never saw the request). */
    hconn *hc = conn_ctx(c);
    if (hc) {
        hc->req = NULL;
        hc->bad_target = false;
        hc->line_seen = false;
        q_remove(hc, 1);
    }
    if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && !h->stopping) arm_idle(h, hc);
    if (req == NULL) return;
    if (req->state == RQ_STREAM || req->state == RQ_PENDING)
        cy_debug(NULL, "http: %s %s %s ended (reason %d)", req->peer, req->method, req->path,
                 (int)toe);
    req->suspended = false;
    lose(req);
    if (req->prev)
        req->prev->next = req->next;
    else
        h->reqs = req->next;
    if (req->next) req->next->prev = req->prev;
    req_free_mem(req);
}

/* ---- answers ---------------------------------------------------------------- */

static struct MHD_Response *make_response(const char *content_type, const char *body, size_t len,
                                          const char *const *headers, int *err)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)(len ? body : ""), MHD_RESPMEM_MUST_COPY);
    if (r == NULL) {
        *err = CY_ENOMEM;
        return NULL;
    }
    /* "": no Content-Type at all (a 204 has no content). */
    if ((!content_type || content_type[0]) &&
        MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                                content_type ? content_type : "application/json") != MHD_YES)
        goto bad;
    for (size_t i = 0; headers && headers[i]; i += 2) {
        if (headers[i + 1] == NULL ||
            MHD_add_response_header(r, headers[i], headers[i + 1]) != MHD_YES)
            goto bad;
    }
    return r;
bad:
    MHD_destroy_response(r);
    *err = CY_EINVAL;
    return NULL;
}

/* An error produced by this module: {"error":code,"message":text}. */
static struct MHD_Response *error_response(const char *code, const char *msg, bool close)
{
    char body[256];
    int n = snprintf(body, sizeof(body), "{\"error\":\"%s\",\"message\":\"%s\"}", code, msg);
    static const char *const close_hdr[] = {MHD_HTTP_HEADER_CONNECTION, "close", NULL};
    int err;
    return make_response(NULL, body, (size_t)n, close ? close_hdr : NULL, &err);
}

static enum MHD_Result queue(cy_http_req *req, struct MHD_Response *r, unsigned status)
{
    enum MHD_Result ok = r ? MHD_queue_response(req->conn, status, r) : MHD_NO;
    if (r) MHD_destroy_response(r);
    if (ok == MHD_YES) req->h->requests++;
    return ok;
}

static enum MHD_Result queue_error(cy_http_req *req, unsigned status, const char *code,
                                   const char *msg)
{
    req->state = RQ_ANSWERED;
    return queue(req, error_response(code, msg, true), status);
}

/* An error answer written to the socket directly, for when MHD will not
 * take one (a body is arriving): the connection is to close after it, so
 * nothing of MHD's can follow it. True if the whole answer was taken. */
static bool raw_answer(cy_http_req *req, int fd, unsigned status, const char *code, const char *fmt,
                       ...)
{
    char msg[128], body[256], out[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    int bl = snprintf(body, sizeof(body), "{\"error\":\"%s\",\"message\":\"%s\"}", code, msg);
    const char *reason = MHD_get_reason_phrase_for(status);
    int n = snprintf(out, sizeof(out),
                     "HTTP/1.1 %u %s\r\nConnection: close\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\n\r\n%s",
                     status, reason ? reason : "Error", bl, body);
    req->raw_answered = true;
    if (!raw_send(req, fd, out, (size_t)n)) return false;
    req->h->requests++;
    return true;
}

/* The request's own headers (cy_http_add_header) onto its answer r. */
static bool add_extra(const cy_http_req *req, struct MHD_Response *r)
{
    for (unsigned i = 0; i < req->nextra; i++)
        if (MHD_add_response_header(r, req->extra[2 * i], req->extra[2 * i + 1]) != MHD_YES)
            return false;
    return true;
}

int cy_http_reply(cy_http_req *req, unsigned status, const char *content_type, const char *body,
                  size_t len, const char *const *headers)
{
    if (req == NULL || status < 200 || status > 599 || (body == NULL && len > 0)) return CY_EINVAL;
    if (req->state == RQ_GONE) return CY_EPIPE;
    if (req->state != RQ_HANDLING && req->state != RQ_PENDING && req->state != RQ_CHECKING)
        return CY_EINVAL;
    if (req->h->stopping) return CY_EPIPE;
    int err = 0;
    struct MHD_Response *r =
        make_response(status == 204 ? "" : content_type, body, len, headers, &err);
    if (r == NULL) return err;
    if (!add_extra(req, r)) {
        MHD_destroy_response(r);
        return CY_EINVAL;
    }
    req->resp = r;
    req->status = status;
    req->state = RQ_ANSWERED;
    resume(req);
    return 0;
}

/* ---- upgrades --------------------------------------------------------------- */

static void upg_unlink(cy_http_upgraded *u)
{
    if (u->h == NULL) return;
    if (u->prev)
        u->prev->next = u->next;
    else
        u->h->upgraded = u->next;
    if (u->next) u->next->prev = u->prev;
    u->prev = u->next = NULL;
    u->h = NULL;
}

/* The 101 never went out (the client left, the server stopped): tell the
 * application, once, and forget the handle. */
static void upgrade_failed(cy_http_upgraded *u)
{
    if (u->urh) return; /* upgraded: its owner closes it */
    upg_unlink(u);
    cy_http_upgrade_cb cb = u->cb;
    u->cb = NULL;
    if (cb) cb(u->arg, -1, NULL, 0, NULL);
    cy_free(u);
}

/* MHD's upgrade handler, inside MHD_run, once the 101 is in the kernel. */
static void on_upgraded(void *cls, struct MHD_Connection *c, void *con_cls, const char *extra_in,
                        size_t extra_in_size, MHD_socket sock,
                        struct MHD_UpgradeResponseHandle *urh)
{
    cy_http_upgraded *u = cls;
    cy_http_req *req = con_cls;
    if (req && req->upg == u) req->upg = NULL;
    if (u->h == NULL) { /* the server is stopping (its last MHD_run): no new connection */
        MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
        cy_http_upgrade_cb cb = u->cb;
        u->cb = NULL;
        if (cb) cb(u->arg, -1, NULL, 0, NULL);
        cy_free(u);
        return;
    }
    hconn *hc = conn_ctx(c);
    if (hc) { /* no deadline, no eviction from now on: the connection is the application's */
        watch_close(hc);
        hc->upgraded = true;
        q_remove(hc, 0);
        q_remove(hc, 1);
    }
    u->urh = urh;
    u->hc = hc;
    int fd = fcntl(sock, F_DUPFD_CLOEXEC, 0);
    cy_http_upgrade_cb cb = u->cb;
    u->cb = NULL;
    if (fd < 0) {
        cy_warn(NULL, "http: upgrade: dup: %s", strerror(errno));
        cb(u->arg, -1, NULL, 0, NULL);
        cy_http_upgraded_close(u);
        return;
    }
    cb(u->arg, fd, (const uint8_t *)extra_in, extra_in_size, u);
}

int cy_http_upgrade(cy_http_req *req, const char *const *headers, cy_http_upgrade_cb cb, void *arg)
{
    if (req == NULL || cb == NULL) return CY_EINVAL;
    if (req->state == RQ_GONE) return CY_EPIPE;
    if (req->state != RQ_HANDLING && req->state != RQ_PENDING) return CY_EINVAL;
    cy_http *h = req->h;
    if (h->stopping) return CY_EPIPE;
    cy_http_upgraded *u = cy_calloc(1, sizeof(*u));
    if (u == NULL) return CY_ENOMEM;
    struct MHD_Response *r = MHD_create_response_for_upgrade(on_upgraded, u);
    bool ok = r != NULL;
    for (size_t i = 0; ok && headers && headers[i]; i += 2)
        ok = headers[i + 1] && MHD_add_response_header(r, headers[i], headers[i + 1]) == MHD_YES;
    if (ok) ok = add_extra(req, r);
    if (!ok) {
        if (r) MHD_destroy_response(r);
        cy_free(u);
        return r ? CY_EINVAL : CY_ENOMEM;
    }
    u->cb = cb;
    u->arg = arg;
    u->h = h;
    u->next = h->upgraded;
    if (h->upgraded) h->upgraded->prev = u;
    h->upgraded = u;
    req->upg = u;
    req->resp = r;
    req->status = MHD_HTTP_SWITCHING_PROTOCOLS;
    req->state = RQ_ANSWERED;
    resume(req);
    return 0;
}

void cy_http_upgraded_close(cy_http_upgraded *u)
{
    if (u == NULL) return;
    cy_http *h = u->h;
    upg_unlink(u);
    if (h && u->urh) {
        /* Over HTTPS, MHD ends its relay only once the client's side ends
         * too: a client that never closes would keep the connection, so it
         * gets the idle deadline from now (cut then, if MHD has not closed
         * it first). Plain HTTP: MHD closes it in its next run. */
        if (u->hc) {
            u->hc->upgraded = false;
            arm_idle(h, u->hc);
        }
        cy_debug(NULL, "http: an upgraded connection closed by the application");
        MHD_upgrade_action(u->urh, MHD_UPGRADE_ACTION_CLOSE);
        kick(h); /* MHD frees the connection in its next run */
    }
    cy_free(u);
}

/* ---- streams ---------------------------------------------------------------- */

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    cy_http_req *req = cls;
    req->out_sent = pos;
    if (req->state == RQ_GONE) return MHD_CONTENT_READER_END_WITH_ERROR;
    size_t n = 0;
    while (req->q_head && n < max) {
        oseg *g = req->q_head;
        size_t k;
        bool done;
        if (g->ref) {
            k = g->ref->len - g->off;
            if (k > max - n) k = max - n;
            memcpy(buf + n, g->ref->data + g->off, k);
            g->off += k;
            done = g->off == g->ref->len;
        } else {
            k = g->len < max - n ? g->len : max - n;
            memcpy(buf + n, cy_buf_head(&req->out), k);
            cy_buf_consume(&req->out, k);
            g->len -= k;
            done = g->len == 0;
        }
        n += k;
        if (!done) break;
        req->q_head = g->next;
        if (!req->q_head) req->q_tail = NULL;
        cy_http_chunk_unref(g->ref);
        cy_free(g);
    }
    if (req->q_head == NULL) cy_buf_shrink(&req->out);
    if (n > 0) return (ssize_t)n;
    if (req->state == RQ_ENDED) return MHD_CONTENT_READER_END_OF_STREAM;
    suspend(req);
    return 0;
}

int cy_http_stream_begin(cy_http_req *req, const char *content_type, const char *const *headers)
{
    if (req == NULL) return CY_EINVAL;
    if (req->state == RQ_GONE) return CY_EPIPE;
    if (req->state != RQ_HANDLING && req->state != RQ_PENDING) return CY_EINVAL;
    if (req->h->stopping) return CY_EPIPE;
    /* MHD 0.9.75 answers HEAD with a chunked response by sending the head
     * and then a stray "0\r\n\r\n", which the client reads as the start of
     * the next response. A HEAD gets an empty answer with the same head
     * instead; the request completes at once and on_close tells the caller
     * the stream is over, as it would for any stream the client ends. */
    bool head = strcmp(req->method, MHD_HTTP_METHOD_HEAD) == 0;
    if (!head && req->h->streams >= cy_http_stream_limit(req->h)) return CY_EBUSY;
    struct MHD_Response *r =
        head ? MHD_create_response_from_buffer(0, (void *)"", MHD_RESPMEM_PERSISTENT)
             : MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, stream_read, req,
                                                 NULL);
    if (r == NULL) return CY_ENOMEM;
    int err = CY_EINVAL;
    if (MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
                                content_type ? content_type : "text/event-stream") != MHD_YES)
        goto bad;
    bool cache_set = false;
    for (size_t i = 0; headers && headers[i]; i += 2) {
        if (headers[i + 1] == NULL ||
            MHD_add_response_header(r, headers[i], headers[i + 1]) != MHD_YES)
            goto bad;
        cache_set |= strcasecmp(headers[i], MHD_HTTP_HEADER_CACHE_CONTROL) == 0;
    }
    /* Events are not to be cached, unless the caller says otherwise. */
    if (!cache_set &&
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache") != MHD_YES)
        goto bad;
    if (!add_extra(req, r)) goto bad;
    req->resp = r;
    req->status = 200;
    req->state = RQ_STREAM;
    if (!head) {
        req->streamed = true;
        req->h->streams++;
    }
    resume(req);
    return 0;
bad:
    MHD_destroy_response(r);
    return err;
}

size_t cy_http_stream_backlog(const cy_http_req *req)
{
    return req ? (size_t)(req->out_total - req->out_sent) : 0;
}

/* Checks shared by both writes: 0, or why len more bytes cannot be queued. */
static int stream_can_take(const cy_http_req *req, size_t len)
{
    if (req->state == RQ_GONE || req->h->stopping) return CY_EPIPE;
    if (req->state != RQ_STREAM) return CY_EINVAL;
    size_t backlog = cy_http_stream_backlog(req);
    if (backlog > req->h->lim.max_stream_backlog || len > req->h->lim.max_stream_backlog - backlog)
        return CY_ENOBUFS;
    return 0;
}

/* Append a piece to the queue (g is the caller's allocation). */
static void stream_queue(cy_http_req *req, oseg *g)
{
    if (req->q_tail)
        req->q_tail->next = g;
    else
        req->q_head = g;
    req->q_tail = g;
}

int cy_http_stream_write(cy_http_req *req, const char *data, size_t len)
{
    if (req == NULL || (data == NULL && len > 0)) return CY_EINVAL;
    int rc = stream_can_take(req, len);
    if (rc || len == 0) return rc;
    oseg *g = NULL;
    if (!req->q_tail || req->q_tail->ref) { /* else the run at the tail grows */
        g = cy_calloc(1, sizeof(*g));
        if (g == NULL) return CY_ENOMEM;
    }
    if (cy_buf_append(&req->out, data, len) != 0) {
        cy_free(g);
        return CY_ENOMEM;
    }
    if (g) stream_queue(req, g);
    req->q_tail->len += len;
    req->out_total += len;
    resume(req);
    return 0;
}

int cy_http_stream_write_ref(cy_http_req *req, cy_http_chunk *c)
{
    if (req == NULL || c == NULL) return CY_EINVAL;
    int rc = stream_can_take(req, c->len);
    if (rc || c->len == 0) return rc;
    oseg *g = cy_calloc(1, sizeof(*g));
    if (g == NULL) return CY_ENOMEM;
    g->ref = cy_http_chunk_ref(c);
    stream_queue(req, g);
    req->out_total += c->len;
    resume(req);
    return 0;
}

void cy_http_stream_end(cy_http_req *req)
{
    if (req == NULL || req->state != RQ_STREAM) return;
    req->state = RQ_ENDED;
    req->on_close = NULL;
    resume(req);
}

/* ---- the access handler ------------------------------------------------------ */

static cy_http_req *req_new(cy_http *h, struct MHD_Connection *c, const char *url,
                            const char *method)
{
    cy_http_req *req = cy_calloc(1, sizeof(*req));
    if (req == NULL) return NULL;
    req->h = h;
    req->conn = c;
    req->started_us = cy_mono_us(); /* MHD shows us a request once its head is whole */
    req->method = method;
    req->path = url;
    cy_buf_init(&req->out);
    snprintf(req->peer, sizeof(req->peer), "?");
    snprintf(req->addr, sizeof(req->addr), "?");
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (ci && ci->client_addr) {
        char ip[INET6_ADDRSTRLEN];
        const struct sockaddr *sa = ci->client_addr;
        if (sa->sa_family == AF_INET) {
            const struct sockaddr_in *s4 = (const struct sockaddr_in *)(const void *)sa;
            inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
            snprintf(req->peer, sizeof(req->peer), "%s:%u", ip, ntohs(s4->sin_port));
            snprintf(req->addr, sizeof(req->addr), "%s", ip);
        } else if (sa->sa_family == AF_INET6) {
            const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)(const void *)sa;
            inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
            snprintf(req->peer, sizeof(req->peer), "[%s]:%u", ip, ntohs(s6->sin6_port));
            snprintf(req->addr, sizeof(req->addr), "%s", ip);
        }
    }
    req->next = h->reqs;
    if (h->reqs) h->reqs->prev = req;
    h->reqs = req;
    hconn *hc = conn_ctx(c);
    if (hc) hc->req = req;
    return req;
}

/* The framing headers, counted (MHD keeps every line, and looks up the first). */
typedef struct framing {
    unsigned cl, te;       /* Content-Length, Transfer-Encoding lines */
    const char *cl0, *te0; /* the first of each */
} framing;

static enum MHD_Result count_framing(void *cls, enum MHD_ValueKind kind, const char *key,
                                     const char *value)
{
    framing *f = cls;
    (void)kind;
    if (strcasecmp(key, MHD_HTTP_HEADER_CONTENT_LENGTH) == 0 && f->cl++ == 0) f->cl0 = value;
    if (strcasecmp(key, MHD_HTTP_HEADER_TRANSFER_ENCODING) == 0 && f->te++ == 0) f->te0 = value;
    return MHD_YES;
}

/* Let the application's check look at the head; queue its refusal, if any. */
static enum MHD_Result run_check(cy_http *h, cy_http_req *req, bool *refused)
{
    *refused = false;
    if (h->check == NULL) return MHD_YES;
    req->state = RQ_CHECKING;
    h->check(h->ctx, req);
    if (h->stopping) return MHD_NO;
    if (req->state == RQ_CHECKING) {
        req->state = RQ_RECEIVING;
        return MHD_YES;
    }
    /* Answered: close after it, so that the body is never read. */
    *refused = true;
    struct MHD_Response *r = req->resp;
    req->resp = NULL;
    if (r && MHD_add_response_header(r, MHD_HTTP_HEADER_CONNECTION, "close") != MHD_YES) {
        MHD_destroy_response(r);
        r = NULL;
    }
    return queue(req, r, req->status);
}

/* First call: headers complete, body not read. Decide the limits now. */
static enum MHD_Result on_headers(cy_http *h, cy_http_req *req)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_REQUEST_HEADER_SIZE);
    if (ci && ci->header_size > h->lim.max_header_bytes) {
        char msg[96];
        snprintf(msg, sizeof(msg), "request headers exceed %zu bytes", h->lim.max_header_bytes);
        return queue_error(req, 431, "headers_too_large", msg);
    }
    hconn *hc = conn_ctx(req->conn);
    if (hc && hc->bad_target)
        return queue_error(req, 400, "bad_request",
                           "control character in the request path or query");
    /* One reading of where the body ends, or none: a proxy in front that
     * picked the other header would see another request in this body. */
    framing f = {0};
    MHD_get_connection_values(req->conn, MHD_HEADER_KIND, count_framing, &f);
    if (f.cl && f.te)
        return queue_error(req, 400, "bad_request",
                           "Content-Length and Transfer-Encoding together");
    if (f.cl > 1) return queue_error(req, 400, "bad_request", "more than one Content-Length");
    if (f.te > 1 || (f.te && strcasecmp(f.te0, "chunked") != 0))
        return queue_error(req, 400, "bad_request",
                           "the only Transfer-Encoding accepted is chunked");
    bool refused;
    enum MHD_Result ok = run_check(h, req, &refused);
    if (refused || ok != MHD_YES) return ok;
    const char *cl = f.cl0;
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno || end == cl || n > h->lim.max_body_bytes) {
            char msg[96];
            snprintf(msg, sizeof(msg), "request body exceeds %zu bytes", h->lim.max_body_bytes);
            return queue_error(req, 413, "body_too_large", msg);
        }
        if (n > 0) {
            req->body = cy_malloc((size_t)n);
            if (req->body == NULL)
                return queue_error(req, 503, "out_of_memory", "server out of memory");
            req->body_cap = (size_t)n;
        }
    }
    return MHD_YES;
}

/* The body cannot be taken (too large, no memory): answer now, straight to
 * the socket (MHD takes no response while a body arrives), shut our side,
 * and drop the rest of the body as it comes. */
static enum MHD_Result reject_body(cy_http *h, cy_http_req *req, unsigned status, size_t len)
{
    req->reject = status;
    req->discarded = len;
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (ci == NULL) return MHD_NO;
    bool sent = status == 413
                    ? raw_answer(req, ci->connect_fd, 413, "body_too_large",
                                 "request body exceeds %zu bytes", h->lim.max_body_bytes)
                    : raw_answer(req, ci->connect_fd, 503, "out_of_memory", "server out of memory");
    if (!sent) return MHD_NO;
    shutdown(ci->connect_fd, SHUT_WR);
    return MHD_YES;
}

/* A piece of body: keep it, or drop it once the body is rejected. */
static enum MHD_Result on_body(cy_http *h, cy_http_req *req, const char *data, size_t len)
{
    if (req->reject) {
        /* Answered already; the request deadline bounds how long this lasts. */
        req->discarded += len;
        return MHD_YES;
    }
    if (len > h->lim.max_body_bytes - req->body_len) return reject_body(h, req, 413, len);
    if (req->body_len + len > req->body_cap) {
        size_t cap = req->body_cap ? req->body_cap * 2 : 1024;
        while (cap < req->body_len + len)
            cap *= 2;
        if (cap > h->lim.max_body_bytes) cap = h->lim.max_body_bytes;
        uint8_t *p = cy_realloc(req->body, cap);
        if (p == NULL) return reject_body(h, req, 503, len);
        req->body = p;
        req->body_cap = cap;
    }
    memcpy(req->body + req->body_len, data, len);
    req->body_len += len;
    return MHD_YES;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *c, const char *url,
                                 const char *method, const char *version, const char *upload_data,
                                 size_t *upload_data_size, void **con_cls)
{
    (void)version;
    cy_http *h = cls;
    cy_http_req *req = *con_cls;
    if (req == NULL) {
        if (h->stopping) return MHD_NO;
        /* The head is whole: the pressure deadline on it ends. */
        hconn *hc = conn_ctx(c);
        if (hc) q_remove(hc, 1);
        req = req_new(h, c, url, method);
        if (req == NULL) return MHD_NO;
        *con_cls = req;
        return on_headers(h, req);
    }
    if (*upload_data_size > 0) {
        size_t len = *upload_data_size;
        *upload_data_size = 0;
        return on_body(h, req, upload_data, len);
    }
    switch (req->state) {
    case RQ_RECEIVING:
        /* The body ended after its answer went out directly: close. */
        if (req->reject) return MHD_NO;
        if (h->stopping) return MHD_NO;
        /* The whole request is in: its deadline ends; the application's
         * own deadlines take over. */
        disarm(h, conn_ctx(c));
        deadline_timer_update(h);
        req->state = RQ_HANDLING;
        h->handler(h->ctx, req);
        if (req->state == RQ_HANDLING) {
            req->state = RQ_PENDING;
            suspend(req);
            return MHD_YES;
        }
        break;
    case RQ_GONE:
        return MHD_NO;
    case RQ_PENDING:
        /* Resumed with no answer (should not happen): wait again. */
        suspend(req);
        return MHD_YES;
    default:
        break;
    }
    if (req->resp == NULL) return MHD_YES; /* already queued */
    struct MHD_Response *r = req->resp;
    req->resp = NULL;
    return queue(req, r, req->status);
}

/* ---- the server ------------------------------------------------------------- */

/* ---- HTTPS -------------------------------------------------------------
 *
 * MHD speaks TLS through GnuTLS. The certificate is not given to MHD as
 * bytes but through its certificate callback, which GnuTLS calls in each
 * handshake: it hands out the server's current pair, so a reload is a swap
 * of that pointer and no connection is dropped. GnuTLS neither copies nor
 * frees what the callback returns, and a handshake under way may still use
 * the pair it was given, so a replaced pair is kept (a list through
 * `older`) until the server is freed: a few KiB per reload.
 *
 * The callback has no argument of ours, so a process has at most one HTTPS
 * server (`tls_server`); the shard has one (the API), the monitor one (the
 * operations listener). */

#define TLS_MAX_CHAIN 8
/* TLS 1.2 and 1.3 only, AEAD ciphers with forward secrecy. */
#define TLS_PRIORITIES                                                                             \
    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:-CIPHER-ALL:+CHACHA20-POLY1305:+AES-256-GCM:"      \
    "+AES-128-GCM:-MAC-ALL:+AEAD:-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:%SERVER_PRECEDENCE"

typedef struct tls_creds {
    struct tls_creds *older;
    gnutls_pcert_st chain[TLS_MAX_CHAIN];
    unsigned n;
    gnutls_privkey_t key;
} tls_creds;

static cy_http *tls_server;

static void creds_free(tls_creds *c)
{
    while (c) {
        tls_creds *o = c->older;
        for (unsigned i = 0; i < c->n; i++)
            gnutls_pcert_deinit(&c->chain[i]);
        if (c->key) gnutls_privkey_deinit(c->key);
        cy_free(c);
        c = o;
    }
}

/* Do the public keys of the certificate and of the private key agree? */
static bool key_matches(gnutls_pubkey_t cert_pub, gnutls_privkey_t key)
{
    gnutls_pubkey_t pub = NULL;
    gnutls_datum_t a = {0}, b = {0};
    bool same = false;
    if (gnutls_pubkey_init(&pub) >= 0 && gnutls_pubkey_import_privkey(pub, key, 0, 0) >= 0 &&
        gnutls_pubkey_export2(pub, GNUTLS_X509_FMT_DER, &a) >= 0 &&
        gnutls_pubkey_export2(cert_pub, GNUTLS_X509_FMT_DER, &b) >= 0)
        same = a.size == b.size && memcmp(a.data, b.data, a.size) == 0;
    gnutls_free(a.data);
    gnutls_free(b.data);
    if (pub) gnutls_pubkey_deinit(pub);
    return same;
}

/* Load a certificate chain and its key; NULL with the reason in buf. */
static tls_creds *creds_load(const char *cert, const char *key, char *buf, size_t len)
{
    tls_creds *c = cy_calloc(1, sizeof(*c));
    if (c == NULL) {
        snprintf(buf, len, "out of memory");
        return NULL;
    }
    unsigned n = TLS_MAX_CHAIN;
    int rc =
        gnutls_pcert_list_import_x509_file(c->chain, &n, cert, GNUTLS_X509_FMT_PEM, NULL, NULL, 0);
    if (rc < 0 || n == 0) {
        snprintf(buf, len, "certificate %s: %s", cert,
                 rc == GNUTLS_E_SHORT_MEMORY_BUFFER ? "more than 8 certificates in the chain"
                 : rc < 0                           ? gnutls_strerror(rc)
                                                    : "no certificate in the file");
        goto fail;
    }
    c->n = n;
    gnutls_datum_t d = {0};
    if ((rc = gnutls_load_file(key, &d)) < 0) {
        snprintf(buf, len, "key %s: %s", key, gnutls_strerror(rc));
        goto fail;
    }
    rc = gnutls_privkey_init(&c->key);
    if (rc >= 0) rc = gnutls_privkey_import_x509_raw(c->key, &d, GNUTLS_X509_FMT_PEM, NULL, 0);
    gnutls_memset(d.data, 0, d.size);
    gnutls_free(d.data);
    if (rc < 0) {
        snprintf(buf, len, "key %s: %s", key, gnutls_strerror(rc));
        goto fail;
    }
    if (!key_matches(c->chain[0].pubkey, c->key)) {
        snprintf(buf, len, "key %s is not the key of certificate %s", key, cert);
        goto fail;
    }
    return c;
fail:
    creds_free(c);
    return NULL;
}

static int tls_retrieve(gnutls_session_t s, const gnutls_datum_t *req_ca_rdn, int nreqs,
                        const gnutls_pk_algorithm_t *algos, int nalgos, gnutls_pcert_st **pcert,
                        unsigned int *pcert_length, gnutls_privkey_t *pkey)
{
    (void)s, (void)req_ca_rdn, (void)nreqs, (void)algos, (void)nalgos;
    tls_creds *c = tls_server ? tls_server->creds : NULL;
    if (c == NULL) return -1;
    *pcert = c->chain;
    *pcert_length = c->n;
    *pkey = c->key;
    return 0;
}

int cy_http_tls_check(const char *cert, const char *key, char *buf, size_t len)
{
    if (cert == NULL || key == NULL || !cert[0] || !key[0]) {
        snprintf(buf, len, "both a certificate and a key are needed");
        return CY_EINVAL;
    }
    tls_creds *c = creds_load(cert, key, buf, len);
    if (c == NULL) return CY_EINVAL;
    creds_free(c);
    return 0;
}

int cy_http_tls_reload(cy_http *h, const char *cert, const char *key, char *buf, size_t len)
{
    if (h == NULL || h->creds == NULL) {
        snprintf(buf, len, "this server does not serve HTTPS");
        return CY_EINVAL;
    }
    tls_creds *c = cy_http_tls_check(cert, key, buf, len) ? NULL : creds_load(cert, key, buf, len);
    if (c == NULL) return CY_EINVAL;
    c->older = h->creds;
    h->creds = c;
    return 0;
}

/* Bytes for the client written past MHD (raw_answer): through the TLS
 * session when there is one. Non-blocking; true if all were taken. */
static bool raw_send(cy_http_req *req, int fd, const char *out, size_t n)
{
    if (req->h->creds) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_GNUTLS_SESSION);
        if (ci == NULL || ci->tls_session == NULL) return false;
        return gnutls_record_send((gnutls_session_t)ci->tls_session, out, n) == (ssize_t)n;
    }
    return send(fd, out, n, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)n;
}

static void http_free(cy_http *h)
{
    if (tls_server == h) tls_server = NULL;
    creds_free(h->creds);
    cy_free(h);
}

static void on_handle_closed(uv_handle_t *hd)
{
    cy_http *h = hd->data;
    if (--h->handles == 0 && h->freed) http_free(h);
}

int cy_http_new(uv_loop_t *loop, int listen_fd, const cy_http_limits *lim, cy_http_handler handler,
                cy_http_check check, void *ctx, cy_http **out)
{
    if (loop == NULL || listen_fd < 0 || handler == NULL || out == NULL) return CY_EINVAL;
    *out = NULL;
    int type = 0, acc = 0;
    socklen_t sl = sizeof(type);
    if (getsockopt(listen_fd, SOL_SOCKET, SO_TYPE, &type, &sl) != 0 || type != SOCK_STREAM)
        return CY_EINVAL;
    sl = sizeof(acc);
    if (getsockopt(listen_fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &sl) != 0 || !acc) return CY_EINVAL;

    int err = CY_ENOMEM;
    int fd = -1;
    cy_http *h = cy_calloc(1, sizeof(*h));
    if (h == NULL) goto fail;
    h->loop = loop;
    h->handler = handler;
    h->check = check;
    h->ctx = ctx;
    h->head_q.slot = 1;
    cy_map_init(&h->addrs);
    cy_logrl_init(&h->refuse_log, REFUSE_LOG_WINDOW_MS, REFUSE_LOG_BURST);
    if (lim) h->lim = *lim;
    if (h->lim.max_header_bytes == 0) h->lim.max_header_bytes = DEF_MAX_HEADER;
    if (h->lim.max_body_bytes == 0) h->lim.max_body_bytes = DEF_MAX_BODY;
    if (h->lim.max_connections == 0) h->lim.max_connections = DEF_MAX_CONN;
    if (h->lim.idle_timeout_s == 0) h->lim.idle_timeout_s = DEF_IDLE_S;
    if (h->lim.max_stream_backlog == 0) h->lim.max_stream_backlog = DEF_MAX_BACKLOG;
    if (h->lim.request_timeout_s == 0) h->lim.request_timeout_s = DEF_REQUEST_S;

    /* Every shard accepts from this socket: a blocking one would stall this
     * loop in accept() whenever another shard took the connection first.
     * O_NONBLOCK lives in the shared open file, so this fixes it for all. */
    err = CY_EIO;
    fd = fcntl(listen_fd, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) goto fail;
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0 || (!(fl & O_NONBLOCK) && fcntl(fd, F_SETFL, fl | O_NONBLOCK) != 0)) goto fail;
    if (!(fl & O_NONBLOCK))
        cy_warn(NULL, "http: listening socket was blocking; made it non-blocking");

    /* MHD's per-connection pool holds the request head (and its parsed
     * headers) plus the response head: room for twice the header limit, so
     * that a head just over it still reaches on_headers and gets our 431. */
    size_t pool = h->lim.max_header_bytes * 2 + ((size_t)16 << 10);
    if (pool < MIN_POOL) pool = MIN_POOL;
    /* HTTPS: the pair first, so a bad file fails before anything starts. */
    struct MHD_OptionItem tls_opts[3] = {{MHD_OPTION_END, 0, NULL}};
    unsigned flags =
        MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_ALLOW_UPGRADE | MHD_USE_ERROR_LOG;
    if (h->lim.tls_cert && h->lim.tls_cert[0]) {
        char why[256];
        err = CY_EBUSY;
        if (tls_server != NULL) {
            cy_error(NULL, "http: a second HTTPS server in one process is not supported");
            goto fail;
        }
        err = CY_EINVAL;
        if (!h->lim.tls_key || !h->lim.tls_key[0] ||
            (h->creds = creds_load(h->lim.tls_cert, h->lim.tls_key, why, sizeof(why))) == NULL) {
            cy_error(NULL, "http: %s", h->lim.tls_key && h->lim.tls_key[0] ? why : "no key");
            goto fail;
        }
        tls_server = h;
        flags |= MHD_USE_TLS;
        tls_opts[0] =
            (struct MHD_OptionItem){MHD_OPTION_HTTPS_CERT_CALLBACK, 0, (void *)tls_retrieve};
        tls_opts[1] =
            (struct MHD_OptionItem){MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)TLS_PRIORITIES};
    }
    /* The strings are the caller's: not kept. */
    h->lim.tls_cert = h->lim.tls_key = NULL;
    err = CY_EIO;
    h->d = MHD_start_daemon(
        flags, 0, on_accept, h, on_access, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, h,
        MHD_OPTION_ARRAY, tls_opts, MHD_OPTION_LISTEN_SOCKET, (MHD_socket)fd,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, pool, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned int)h->lim.max_connections, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned int)h->lim.idle_timeout_s, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, h, MHD_OPTION_URI_LOG_CALLBACK, on_uri, h,
        MHD_OPTION_UNESCAPE_CALLBACK, on_unescape, h, MHD_OPTION_END);
    if (h->d == NULL) goto fail;
    fd = -1; /* MHD's now: it closes it in MHD_stop_daemon */
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_EPOLL_FD);
    if (di == NULL) goto fail;
    if (uv_poll_init(loop, &h->epoll_w, di->epoll_fd) != 0) goto fail;
    /* From here on the three handles exist and do_stop closes them. */
    uv_timer_init(loop, &h->timer);
    uv_timer_init(loop, &h->deadline);
    h->epoll_w.data = h->timer.data = h->deadline.data = h;
    h->handles = 3;
    if (uv_poll_start(&h->epoll_w, UV_READABLE, on_epoll) != 0) goto fail;
    uv_timer_start(&h->timer, on_timer, 0, 0);
    *out = h;
    return 0;

fail:
    if (fd >= 0) {
        /* MHD_start_daemon failed, and may have closed the socket itself
         * (the descriptor number cannot be reused meanwhile: one thread). */
        if (fcntl(fd, F_GETFD) >= 0) close(fd);
    }
    if (h) {
        cy_http_stop(h);
        cy_http_free(h);
    }
    return err;
}

static void free_addr(void *ctx, void *value)
{
    (void)ctx;
    cy_free(value);
}

static void do_stop(cy_http *h)
{
    h->stopping = true;
    h->stop_deferred = false;
    if (h->handles > 0) {
        uv_close((uv_handle_t *)&h->epoll_w, on_handle_closed);
        uv_close((uv_handle_t *)&h->timer, on_handle_closed);
        uv_close((uv_handle_t *)&h->deadline, on_handle_closed);
    }
    /* Tell the application first, then let MHD close everything. The list
     * does not change meanwhile: requests leave it only in on_completed,
     * which runs inside MHD. */
    for (cy_http_req *req = h->reqs; req; req = req->next) {
        lose(req);
        if (req->suspended) {
            req->suspended = false;
            MHD_resume_connection(req->conn);
        }
    }
    /* Upgraded connections: MHD closes them (its stop requires it); their
     * owners' handles only free themselves from now on. */
    while (h->upgraded) {
        cy_http_upgraded *u = h->upgraded;
        struct MHD_UpgradeResponseHandle *urh = u->urh;
        u->urh = NULL;
        upg_unlink(u);
        if (urh) MHD_upgrade_action(urh, MHD_UPGRADE_ACTION_CLOSE);
    }
    if (h->d) {
        /* Let the resumed connections reach the access handler / reader,
         * which close them, before MHD_stop_daemon (MHD forbids stopping
         * with connections suspended). */
        MHD_run(h->d);
        MHD_stop_daemon(h->d);
        h->d = NULL;
    }
    h->idle_q.head = h->idle_q.tail = h->req_q.head = h->req_q.tail = NULL;
    h->head_q.head = h->head_q.tail = NULL;
    /* MHD told us of every connection's close; any count left is freed. */
    cy_map_each(&h->addrs, free_addr, NULL);
    cy_map_fini(&h->addrs);
    /* on_completed freed every request MHD had shown us; any left over is a
     * request MHD never completed: release it here. */
    while (h->reqs) {
        cy_http_req *req = h->reqs;
        h->reqs = req->next;
        req_free_mem(req);
    }
}

void cy_http_stop(cy_http *h)
{
    if (h == NULL || h->stopping) return;
    if (h->in_run) {
        h->stop_deferred = true;
        return;
    }
    do_stop(h);
}

void cy_http_free(cy_http *h)
{
    if (h == NULL) return;
    cy_http_stop(h);
    h->freed = true;
    if (h->handles == 0) http_free(h);
}

unsigned cy_http_connections(const cy_http *h)
{
    if (h == NULL || h->d == NULL) return 0;
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_CURRENT_CONNECTIONS);
    return di ? di->num_connections : 0;
}

uint64_t cy_http_requests(const cy_http *h)
{
    return h ? h->requests : 0;
}

unsigned cy_http_streams(const cy_http *h)
{
    return h ? h->streams : 0;
}

unsigned cy_http_stream_limit(const cy_http *h)
{
    if (h == NULL) return 0;
    unsigned max = h->lim.max_connections;
    unsigned reserve = max / 10 > 0 ? max / 10 : 1;
    return max > reserve ? max - reserve : 0;
}

/* ---- accessors -------------------------------------------------------------- */

const char *cy_http_method(const cy_http_req *req)
{
    return req->method;
}

const char *cy_http_path(const cy_http_req *req)
{
    return req->path;
}

const char *cy_http_query(const cy_http_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

const char *cy_http_header(const cy_http_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const uint8_t *cy_http_body(const cy_http_req *req, size_t *len)
{
    if (len) *len = req->body_len;
    return req->body_len ? req->body : NULL;
}

const char *cy_http_peer(const cy_http_req *req)
{
    return req->peer;
}

const char *cy_http_peer_addr(const cy_http_req *req)
{
    return req->addr;
}

static bool header_text_ok(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return false;
    return true;
}

int cy_http_add_header(cy_http_req *req, const char *name, const char *value)
{
    if (!req || !name || !value || !*name || !header_text_ok(name) || !header_text_ok(value))
        return CY_EINVAL;
    if (req->state != RQ_CHECKING && req->state != RQ_RECEIVING && req->state != RQ_HANDLING &&
        req->state != RQ_PENDING)
        return CY_EINVAL;
    if (req->nextra == CY_HTTP_EXTRA_HEADERS) return CY_ENOBUFS;
    char *n = cy_strdup(name), *v = cy_strdup(value);
    if (!n || !v) {
        cy_free(n);
        cy_free(v);
        return CY_ENOMEM;
    }
    req->extra[2 * req->nextra] = n;
    req->extra[2 * req->nextra + 1] = v;
    req->nextra++;
    return 0;
}

const struct sockaddr *cy_http_peer_sockaddr(const cy_http_req *req)
{
    const union MHD_ConnectionInfo *ci =
        req->state == RQ_GONE
            ? NULL
            : MHD_get_connection_info(req->conn, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    return ci ? ci->client_addr : NULL;
}

void cy_http_set_tag(cy_http_req *req, int tag)
{
    req->tag = tag;
}

int cy_http_tag(const cy_http_req *req)
{
    return req->tag;
}

int64_t cy_http_started_us(const cy_http_req *req)
{
    return req->started_us;
}

void cy_http_on_close(cy_http_req *req, void (*cb)(void *arg, cy_http_req *req), void *arg)
{
    req->on_close = cb;
    req->on_close_arg = arg;
}
