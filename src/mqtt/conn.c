/* conn: one client TCP connection: reading, framing, dispatch, output.
 *
 * Reading: a wake-up reads up to 64 KiB into the gateway's shared read buffer
 * and every complete packet in it is decoded and handled in place; only the
 * bytes of an incomplete packet are copied into the connection's own `in`
 * buffer, so an idle connection holds no read buffer at all.
 *
 * Writing: handlers append encoded packets to `out` and mark the connection
 * dirty. The shard's pass hook (once per loop pass, after the store
 * commit; or after a read callback, when the shard ends the pass early:
 * cy_mqtt_on_input) calls cy_conn_flush, which tries one write(2) of
 * everything; what the kernel does not take moves to a cy_wstate
 * (allocated for that write only) and is written as the socket becomes
 * writable while `out` collects the next pass. Write readiness is watched
 * only then.
 *
 * The sockets: a connection's socket is a bare descriptor in the gateway's
 * own epoll set (g->epfd), which libuv polls as one descriptor (g->epoll):
 * a libuv stream handle per connection was 248 of the 376 bytes every idle
 * connection carried. One readiness callback (on_sockets) takes up to
 * IO_BATCH events from the set and reads (at most 32 reads while they fill
 * the buffer) and writes each socket as libuv did. The set is level
 * triggered and holds a socket only while it is read or has output
 * waiting (EPOLLIN, EPOLLOUT). A closed socket leaves the set and is
 * closed at once; its connection is freed by g->reaper after the loop's
 * poll phase, so an event of the same batch, a caller up the stack or the
 * pass's dirty list never holds a freed connection.
 *
 * Back-pressure: a client that publishes QoS 1/2 and never reads would make
 * its acknowledgements pile up in `out` without bound. So once the backlog
 * (`out` and the write in flight) is over max_output after a read or a
 * flush, reading that socket stops (its publishes wait in the kernel, then
 * in the client, whose sends block); it starts again when a write brings
 * the backlog to half of max_output. A connection that stays stopped for
 * max_output_stall seconds is closed by the sweep. While stopped, the
 * client's silence is ours, not its own: keep-alive does not run, and on
 * resume the clock of last_rx starts afresh.
 *
 * Before login a socket is a stranger's: its CONNECT may be at most
 * max_connect_size (from the fixed header, before any byte of the body is
 * held), its partial-input buffer grows only to what that header declared,
 * and all such buffers of the shard together stay under preauth_memory. A
 * CONNECT that arrives in one read (every real client's) is decoded in the
 * shared read buffer and holds nothing.
 *
 * Limits against abuse (core/cy_limit.h): a new socket from an address over
 * max_connect_rate_per_address is closed at accept; a CONNECT whose address
 * or device has failed too often is held (handle_connect.c says when): its
 * bytes wait in `in`, the socket is not read, and the sweep hands it over
 * again once auth_fail_delay has passed; a 3.1.1 publisher over
 * max_publish_rate is throttled the same way (handle_publish.c), what it
 * sent after the publish that crossed the rate waiting in `in`.
 * TLS (mqtts_listen): a connection accepted on the TLS listener has a
 * cy_tls session in its extension (cy_conn_ext, off the connection so a
 * plain one pays nothing but a predictable branch). Its ciphertext is read
 * into a second shared buffer, decrypted into the plaintext one and goes
 * through the same process() path; cy_conn_flush encrypts a pass's `out`
 * in one cy_tls_write and writes the records as it writes plaintext. The
 * handshake is part of the stranger's budget: its memory counts in
 * preauth_memory and CONNECT must still come within connect_timeout of the
 * accept. A TLS session cannot move to another process, so a CONNECT for
 * another shard's client makes this shard its terminator (proxy.c): the
 * owner gets one end of a socketpair and the plaintext.
 *
 * Errors are mapped to the wire here, once: a handler returns a MQTT 5
 * reason code and the dispatcher closes with it (DISCONNECT for MQTT 5
 * clients, a bare close for 3.1.1), logs one line naming the client and
 * counts it.
 */
#define _GNU_SOURCE /* accept4 */
#include "mqtt/gateway_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

const char *cy_conn_name(const cy_conn *c)
{
    return c->sess ? c->sess->client_id : cy_conn_peer(c);
}

const char *cy_conn_peer(const cy_conn *c)
{
    /* Asked of the socket when a log line needs it rather than kept: 48
     * bytes on every idle connection for the few lines that name a client
     * by address (before CONNECT, refusals). */
    static char text[64];
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (c->ext && cy_conn_ext_of(c)->peer.ss_family) /* handed in by a TLS terminator */
        ss = cy_conn_ext_of(c)->peer;
    else if (c->fd < 0 || getpeername(c->fd, (struct sockaddr *)&ss, &sl))
        return "unknown peer";
    if (ss.ss_family == AF_INET) {
        uv_ip4_name((struct sockaddr_in *)&ss, ip, sizeof(ip));
        port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    } else if (ss.ss_family == AF_INET6) {
        uv_ip6_name((struct sockaddr_in6 *)&ss, ip, sizeof(ip));
        port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    snprintf(text, sizeof(text), "%s:%d", ip, port);
    return text;
}

const struct sockaddr *cy_conn_addr(const cy_conn *c, struct sockaddr_storage *ss)
{
    /* A socketpair (a WebSocket bridge's, a TLS terminator's) has no
     * address: the device's came with it, and the limits count that. */
    if (c->ext && cy_conn_ext_of(c)->peer.ss_family) {
        *ss = cy_conn_ext_of(c)->peer;
        return (const struct sockaddr *)ss;
    }
    socklen_t sl = sizeof(*ss);
    if (c->fd < 0 || getpeername(c->fd, (struct sockaddr *)ss, &sl)) return NULL;
    return (const struct sockaddr *)ss;
}

void cy_conn_log_stranger(cy_conn *c, const char *kind, const char *fmt, ...)
{
    if (!cy_log_enabled(CY_LOG_INFO)) return;
    cy_mqtt *g = c->g;
    char addr[INET6_ADDRSTRLEN + 8], key[CY_LOGRL_KEY + 64];
    snprintf(addr, sizeof(addr), "%s", cy_conn_peer(c));
    char *colon = strrchr(addr, ':'); /* one source is an address, whatever its port */
    if (colon) *colon = '\0';
    snprintf(key, sizeof(key), "%s %s", kind, addr);
    char more[CY_LOGRL_MORE], text[512];
    if (!cy_logrl_line(&g->login_log, key, more)) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    cy_log(CY_LOG_INFO, NULL, "from %s: %s%s", addr, text, more);
}

cy_conn_v5 *cy_conn_v5_get(cy_conn *c)
{
    if (!c->v5 && (c->v5 = cy_calloc(1, sizeof(*c->v5)))) c->v5->conn = c;
    return c->v5;
}

static void v5_free(cy_mqtt *g, cy_conn_v5 *x)
{
    if (!x) return;
    if (x->alias_in) {
        for (uint32_t i = 0; i <= g->cfg->topic_alias_max; i++) cy_free(x->alias_in[i]);
        cy_free(x->alias_in);
    }
    cy_free(x->alias_in_len);
    if (x->alias_out) {
        for (uint16_t i = 0; i < x->n_alias_out; i++) cy_free(x->alias_out[i]);
        cy_free(x->alias_out);
    }
    cy_free(x);
}

/* ---- connection extensions (TLS) ---- */

/* The ciphertext waiting for the socket of a TLS connection (0 for others). */
static size_t tls_pending(const cy_conn *c)
{
    cy_tls *t = c->ext ? cy_conn_ext_of(c)->tls : NULL;
    return t ? cy_buf_size(cy_tls_out(t)) : 0;
}

/* Give c an extension (zeroed); NULL when out of memory. */
static cy_conn_ext *ext_new(cy_conn *c)
{
    cy_mqtt *g = c->g;
    cy_conn_ext *x = cy_calloc(1, sizeof(*x));
    if (!x) return NULL;
    uint32_t slot;
    if (g->n_free_exts) {
        slot = g->free_exts[--g->n_free_exts];
    } else {
        if (g->n_exts == g->cap_exts) {
            uint32_t cap = g->cap_exts ? g->cap_exts * 2 : 64;
            cy_conn_ext **e = cy_realloc(g->exts, cap * sizeof(*e));
            if (e) g->exts = e;
            uint32_t *f = e ? cy_realloc(g->free_exts, cap * sizeof(*f)) : NULL;
            if (!f) {
                cy_free(x);
                return NULL;
            }
            g->free_exts = f;
            g->cap_exts = cap;
        }
        slot = g->n_exts++;
    }
    g->exts[slot] = x;
    c->ext = slot + 1;
    return x;
}

static void ext_free(cy_conn *c)
{
    if (!c->ext) return;
    cy_mqtt *g = c->g;
    cy_conn_ext *x = cy_conn_ext_of(c);
    if (x->proxy) cy_proxy_detach(x->proxy);
    cy_tls_free(x->tls);
    cy_free(x->cert_id);
    cy_free(x);
    g->exts[c->ext - 1] = NULL;
    g->free_exts[g->n_free_exts++] = c->ext - 1;
    c->ext = 0;
}

bool cy_conn_cert_is(const cy_conn *c, const char *id, size_t len)
{
    if (!c->ext || !len) return false;
    const cy_conn_ext *x = cy_conn_ext_of(c);
    if (x->tls) return cy_tls_peer_is(x->tls, id, len);
    return x->cert_id && x->cert_id_len == len && memcmp(x->cert_id, id, len) == 0;
}

/* Keep g->preauth_bytes equal to the capacity of the partial-input buffers
 * of connections that have not logged in, and what their TLS sessions hold;
 * call after `in`, the state or a handshake changed. */
static void preauth_account(cy_conn *c)
{
    uint32_t now = c->state == CONN_NEW && c->in ? (uint32_t)c->in->cap : 0;
    if (c->state == CONN_NEW && c->ext && cy_conn_ext_of(c)->tls)
        now += cy_tls_established(cy_conn_ext_of(c)->tls) ? CY_TLS_SESSION_BYTES
                                                          : CY_TLS_HANDSHAKE_BYTES;
    c->g->preauth_bytes = c->g->preauth_bytes - c->preauth + now;
    c->preauth = now;
}

/* Free the partial-input buffer (it is allocated only while a packet is
 * split across reads). */
static void in_free(cy_conn *c)
{
    if (!c->in) return;
    cy_buf_fini(c->in);
    cy_free(c->in);
    c->in = NULL;
    preauth_account(c);
}

static const cy_link_ops cy_conn_link_ops;

/* ---- the sockets (see the file comment) ---- */

#define IO_IN 1u
#define IO_OUT 2u
#define IO_BATCH 512 /* events taken from the set per poll */

/* Make what g->epfd watches of c's socket what c needs: input while it is
 * read, writability while output waits. 0, or -errno (nothing changed). */
static int io_sync(cy_conn *c)
{
    unsigned want = (c->reading ? IO_IN : 0) | (c->w ? IO_OUT : 0);
    if (c->fd < 0 || want == c->io) return 0;
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = (want & IO_IN ? EPOLLIN : 0) | (want & IO_OUT ? EPOLLOUT : 0);
    ev.data.ptr = c;
    int op = !c->io ? EPOLL_CTL_ADD : !want ? EPOLL_CTL_DEL : EPOLL_CTL_MOD;
    if (epoll_ctl(c->g->epfd, op, c->fd, &ev)) return -errno;
    c->io = (uint8_t)want;
    return 0;
}

/* Queue c, whose socket is closed and which is not on g->dirty, to be
 * freed (the list goes by dirty_next). */
static void closed_push(cy_conn *c)
{
    c->dirty_next = c->g->closed;
    c->g->closed = c;
}

/* Close c's socket now (it leaves the set first: a descriptor passed to
 * another process keeps its open file, and with it its place in our set)
 * and free c once the loop has left the poll phase (reaper). Once only. */
static void io_close(cy_conn *c)
{
    cy_mqtt *g = c->g;
    c->state = CONN_CLOSING;
    if (c->fd < 0) return;
    if (c->io) epoll_ctl(g->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    c->io = 0;
    close(c->fd);
    c->fd = -1;
    if (c->w) {
        cy_buf_fini(&c->w->buf);
        cy_free(c->w);
        c->w = NULL;
    }
    if (!c->dirty) closed_push(c); /* else cy_mqtt_flush does, once it is off g->dirty */
}

/* Reading a socket starts and stops only through these, so `reading` says
 * whether the set watches its input and g->n_not_reading counts the
 * connections that are not read: the owed-input scan (cy_mqtt_owed_input)
 * looks into those only. */
static void set_reading(cy_conn *c, bool on)
{
    if (c->reading == on) return;
    c->reading = on;
    if (on)
        c->g->n_not_reading--;
    else
        c->g->n_not_reading++;
}

int cy_conn_read_start(cy_conn *c)
{
    if (c->reading) return 0;
    if (c->fd < 0) return UV_EBADF;
    set_reading(c, true);
    int rc = io_sync(c);
    if (rc) set_reading(c, false);
    return rc;
}

void cy_conn_read_stop(cy_conn *c)
{
    if (!c->reading) return;
    set_reading(c, false);
    io_sync(c); /* on failure the set still reports input: it is not read (conn_io) */
}
#define conn_read_start cy_conn_read_start
#define conn_read_stop cy_conn_read_stop

size_t cy_conn_backlog(const cy_conn *c)
{
    return cy_buf_size(&c->out) + (c->w ? cy_buf_size(&c->w->buf) : 0) +
           (c->ext ? tls_pending(c) : 0);
}

/* Stop or resume reading by the output backlog (see the file comment).
 * Only logged-in connections: before CONNECT there is no output to speak
 * of, a handed-over socket belongs to the bus, and a stalled shard (drill)
 * reads nothing. Safe inside the read callback: libuv stops its read loop
 * when the handle is no longer reading. */
static void backpressure(cy_conn *c)
{
    cy_mqtt *g = c->g;
    if (c->state != CONN_ACTIVE || g->stalled) {
        /* A terminator reads the owner's plaintext while the device reads. */
        if (c->state == CONN_PROXY && !g->stalled) cy_proxy_resume(cy_conn_ext_of(c)->proxy);
        return;
    }
    size_t backlog = cy_conn_backlog(c);
    if (!c->paused && backlog > g->cfg->max_output) {
        conn_read_stop(c);
        c->paused = true;
        c->paused_s = (uint16_t)(uv_now(g->loop) / 1000);
        cy_debug(cy_conn_name(c), "reading stopped: %zu bytes of output waiting (max_output %u)",
                 backlog, g->cfg->max_output);
    } else if (c->paused && backlog <= g->cfg->max_output / 2) {
        c->paused = false;
        /* What the client sent meanwhile waits in our socket: it was not
         * silent, we were not listening. */
        c->last_rx = (int64_t)uv_now(g->loop);
        if (c->throttled) return; /* the sweep resumes it when its rate allows */
        int rc = conn_read_start(c);
        if (rc) {
            cy_debug(cy_conn_name(c), "read start: %s", uv_strerror(rc));
            cy_conn_close(c, 0, NULL);
            return;
        }
        cy_debug(cy_conn_name(c), "reading resumed: %zu bytes of output waiting", backlog);
    }
}

bool cy_conn_check_stall(cy_conn *c, int64_t now)
{
    if (!c->paused || c->state != CONN_ACTIVE) return false;
    uint16_t stalled = (uint16_t)((uint16_t)(now / 1000) - c->paused_s); /* mod 65536 */
    if (stalled <= c->g->cfg->max_output_stall) return false; /* whole seconds: never early */
    c->g->stats->limit_output_stall++;
    char why[128];
    snprintf(why, sizeof(why), "not reading its output: over max_output (%u bytes) for %u s",
             c->g->cfg->max_output, (unsigned)stalled);
    cy_conn_close(c, CY_RC_QUOTA_EXCEEDED, why);
    return true;
}

/* Free a connection whose socket is closed (reaper, cy_mqtt_free). */
static void conn_free(cy_conn *c)
{
    cy_mqtt *g = c->g;
    if (c->prev)
        c->prev->next = c->next;
    else
        g->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    g->n_conns--;
    if (!c->reading) g->n_not_reading--;
    in_free(c);
    c->state = CONN_CLOSING;
    preauth_account(c);
    ext_free(c);
    cy_buf_fini(&c->out);
    v5_free(g, c->v5);
    cy_free(c);
}

void cy_conn_mark_dirty(cy_conn *c)
{
    if (c->dirty || c->fd < 0) return; /* a closed socket takes nothing more */
    cy_mqtt *g = c->g;
    c->dirty = true;
    c->dirty_next = NULL;
    /* At the tail: the flush writes the output begun first first (a pass's
     * first delivery does not wait behind the writes of all the others). */
    if (g->dirty)
        g->dirty_tail->dirty_next = c;
    else
        g->dirty = c;
    g->dirty_tail = c;
}
#define mark_dirty cy_conn_mark_dirty

int cy_conn_send(cy_conn *c, const cy_mqtt_packet *p)
{
    if (c->state == CONN_CLOSING) return CY_EPIPE;
    if (c->v5 && c->v5->held.n) return cy_conn_send_acked(c, p); /* keep the wire in order */
    /* Output that starts with an acknowledgement (a CONNACK, a PINGRESP)
     * is most often that packet alone, freed after its write: its block is
     * the size of the connection's and the session's (CY_OUT_FIRST), so
     * the next connection reuses it whole. */
    if (!c->out.cap && p->type != CY_MQTT_PUBLISH &&
        cy_buf_reserve_from(&c->out, 1, CY_OUT_FIRST))
        return CY_ENOMEM;
    int rc = cy_mqtt_encode(&c->out, c->version ? c->version : CY_MQTT_V311, p);
    if (rc) return rc;
    mark_dirty(c);
    return 0;
}

/* The output that waited for the socket is written (status 0) or the
 * write failed (-errno). */
static void write_done(cy_conn *c, int status)
{
    cy_wstate *w = c->w;
    c->w = NULL;
    cy_buf_fini(&w->buf);
    cy_free(w);
    if (status == 0) status = io_sync(c); /* stop watching writability */
    if (status < 0) {
        if (c->state != CONN_CLOSING) {
            cy_debug(cy_conn_name(c), "write failed: %s", uv_strerror(status));
            cy_conn_close(c, 0, NULL);
        }
        return;
    }
    /* What `out` holds now may have been appended in this very pass (a
     * socket's input is handled before its writability), so its store
     * writes are not committed yet: the end of the pass writes it, after
     * the commit. Flushing here let an acknowledgement leave before what it
     * acknowledges was on disk. */
    if (cy_buf_size(&c->out) || (c->ext && tls_pending(c))) mark_dirty(c);
    backpressure(c);
}

/* Encrypt the pass's `out` of a TLS connection, in one cy_tls_write (as
 * few records as their size allows), and return the buffer of ciphertext
 * to write; NULL when the session failed (the connection is closed). */
static cy_buf *tls_seal(cy_conn *c)
{
    cy_tls *t = cy_conn_ext_of(c)->tls;
    size_t n = cy_buf_size(&c->out);
    int rc = n ? cy_tls_write(t, cy_buf_head(&c->out), n) : 0;
    if (rc == CY_EAGAIN) return cy_tls_out(t); /* no handshake yet: `out` waits */
    if (rc) {
        cy_buf_reset(&c->out);
        cy_buf_reset(cy_tls_out(t));
        if (c->state != CONN_CLOSING) {
            cy_debug(cy_conn_name(c), "TLS write failed: %s", cy_tls_why(t));
            cy_conn_close(c, 0, NULL);
        }
        return NULL;
    }
    if (n && c->out.cap <= CY_OUT_KEEP_MIN)
        cy_buf_fini(&c->out);
    else
        cy_buf_reset(&c->out);
    return cy_tls_out(t);
}

/* One write of the bytes at b's head: how many the socket took (0 when it
 * is full), or -errno. */
static ssize_t sock_write(cy_conn *c, const cy_buf *b)
{
    ssize_t n;
    do
        n = send(c->fd, cy_buf_head(b), cy_buf_size(b), MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    if (n >= 0) return n;
    return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
}

/* The socket is writable (or failed) while output waits in c->w. */
static void conn_writable(cy_conn *c)
{
    ssize_t n = sock_write(c, &c->w->buf);
    if (n < 0) {
        write_done(c, (int)n);
        return;
    }
    cy_buf_consume(&c->w->buf, (size_t)n);
    if (cy_buf_size(&c->w->buf) == 0) write_done(c, 0);
}

void cy_conn_flush(cy_conn *c)
{
    cy_buf *b = &c->out; /* what goes to the socket: `out`, or its ciphertext */
    if (c->fd < 0) {
        cy_buf_reset(b);
        return;
    }
    if (!c->w && c->ext && cy_conn_ext_of(c)->tls && !(b = tls_seal(c))) return;
    if (c->w || cy_buf_size(b) == 0) {
        backpressure(c); /* `out` grew behind a write in flight */
        return;
    }
    ssize_t n = sock_write(c, b);
    if (n < 0) {
        cy_buf_reset(b);
        if (c->state != CONN_CLOSING) {
            cy_debug(cy_conn_name(c), "write failed: %s", uv_strerror((int)n));
            cy_conn_close(c, 0, NULL);
        }
        return;
    }
    cy_buf_consume(b, (size_t)n);
    if (cy_buf_size(b) == 0) {
        /* A small emptied buffer is freed now: malloc's per-thread cache
         * hands the same block to the next pass or the next connection, and
         * an idle connection (a CONNACK, a PINGRESP) keeps nothing. A large
         * one is kept for the next pass (freeing it every pass made glibc
         * trim and re-fault it: 10x slower at 1 KiB messages); the sweep
         * frees it once the connection goes idle. */
        if (b->cap <= CY_OUT_KEEP_MIN) cy_buf_fini(b);
        backpressure(c);
        return;
    }
    if (c->state == CONN_CLOSING) return; /* best effort only */
    cy_wstate *w = cy_malloc(sizeof(*w));
    if (!w) {
        cy_buf_reset(b);
        cy_conn_close(c, 0, "out of memory");
        return;
    }
    w->buf = *b; /* the pending bytes move; out starts afresh */
    cy_buf_init(b);
    c->w = w;
    int rc = io_sync(c); /* watch writability */
    if (rc) {
        cy_buf_fini(&w->buf);
        cy_free(w);
        c->w = NULL;
        cy_debug(cy_conn_name(c), "write: %s", uv_strerror(rc));
        cy_conn_close(c, 0, NULL);
        return;
    }
    backpressure(c);
}

void cy_conn_close(cy_conn *c, uint8_t reason, const char *why)
{
    /* A connection being handed over belongs to the bus until its callback. */
    if (c->state == CONN_CLOSING || c->state == CONN_HANDED) return;
    cy_mqtt *g = c->g;
    if (reason && c->version == CY_MQTT_V5 && c->state == CONN_ACTIVE) {
        cy_mqtt_packet p;
        memset(&p, 0, sizeof(p));
        p.type = CY_MQTT_DISCONNECT;
        p.u.disconnect.reason = reason;
        cy_conn_send(c, &p);
    }
    if (why && c->state == CONN_NEW) /* not logged in: a stranger can repeat it at will */
        cy_conn_log_stranger(c, "closed sockets", "disconnecting before login: %s", why);
    else if (why)
        cy_info(cy_conn_name(c), "disconnecting: %s (reason 0x%02x)", why, reason);
    /* Closing before the last flush: a write that fails (the peer reset the
     * socket) must find the connection closing already, or it closes it
     * itself and this call goes on with a connection already closed. */
    c->state = CONN_CLOSING;
    if (c->v5 && c->v5->held.n) cy_cluster_drop_held(g->cluster, &c->v5->held);
    if (c->counted) {
        g->stats->clients_connected--;
        c->counted = false;
        if (!c->internal) cy_connsum_closed(cy_conn_kind_of(c)); /* canaries: not counted */
    }
    if (c->sess) {
        cy_session *s = c->sess;
        if (c->device)
            cy_device_offline(g->devices, s, &c->link, cy_presence_reason_of(reason, c->said_bye));
        c->sess = NULL;
        cy_session_detach(g->devices, s, !c->clean_disconnect);
    }
    conn_read_stop(c);
    if (c->ext) {
        cy_conn_ext *x = cy_conn_ext_of(c);
        if (x->proxy) { /* the owner's end closes once our last plaintext is written */
            cy_proxy_detach(x->proxy);
            x->proxy = NULL;
        }
        if (x->tls) {
            /* What `out` holds is sealed before the close_notify that
             * follows it (the pass's flush adds nothing after a close). */
            if (cy_buf_size(&c->out) && cy_tls_established(x->tls)) tls_seal(c);
            cy_tls_close(x->tls);
        }
    }
    /* `out` may hold acknowledgements of this pass (a PUBLISH and a bad
     * packet in one read, a takeover): they leave with the pass's flush,
     * after the store commit, never before it; the socket closes then. */
    if (cy_buf_size(&c->out) || (c->ext && tls_pending(c))) {
        c->close_at_flush = true;
        mark_dirty(c);
        /* After the shard's last flush (a handover the closing bus
         * cancelled is refused then), nothing else would write it and
         * close the socket: the connection would outlive the loop. */
        if (g->flushed_last) cy_mqtt_flush(g);
        return;
    }
    io_close(c);
}

/* The dispatcher: one switch, errors mapped to the wire by the caller. */
static int dispatch(cy_conn *c, cy_mqtt_packet *p)
{
    if (c->state == CONN_NEW && p->type != CY_MQTT_CONNECT) return CY_RC_PROTOCOL_ERROR;
    switch (p->type) {
    case CY_MQTT_CONNECT:
        if (c->state != CONN_NEW) return CY_RC_PROTOCOL_ERROR;
        return cy_handle_connect(c, &p->u.connect);
    case CY_MQTT_PUBLISH: return cy_handle_publish(c, &p->u.publish);
    case CY_MQTT_PUBACK: return cy_handle_puback(c, &p->u.ack);
    case CY_MQTT_PUBREC: return cy_handle_pubrec(c, &p->u.ack);
    case CY_MQTT_PUBREL: return cy_handle_pubrel(c, &p->u.ack);
    case CY_MQTT_PUBCOMP: return cy_handle_pubcomp(c, &p->u.ack);
    case CY_MQTT_SUBSCRIBE: return cy_handle_subscribe(c, &p->u.subscribe);
    case CY_MQTT_UNSUBSCRIBE: return cy_handle_unsubscribe(c, &p->u.subscribe);
    case CY_MQTT_PINGREQ: {
        cy_mqtt_packet r;
        memset(&r, 0, sizeof(r));
        r.type = CY_MQTT_PINGRESP;
        cy_conn_send(c, &r);
        return 0;
    }
    case CY_MQTT_DISCONNECT: return cy_handle_disconnect(c, &p->u.disconnect);
    default: /* CONNACK, SUBACK, UNSUBACK, PINGRESP, AUTH: not from a client */
        return CY_RC_PROTOCOL_ERROR;
    }
}

static void refuse_version(cy_conn *c, uint8_t level)
{
    /* An unknown level: answer in the 5.0 form if it looks newer, else 3.1.1. */
    static const uint8_t v5[] = {0x20, 0x03, 0x00, CY_RC_UNSUPPORTED_VERSION, 0x00};
    static const uint8_t v3[] = {0x20, 0x02, 0x00, CY_RC3_BAD_VERSION};
    if (level >= CY_MQTT_V5)
        cy_buf_append(&c->out, v5, sizeof(v5));
    else
        cy_buf_append(&c->out, v3, sizeof(v3));
    c->g->stats->connects_refused++;
    cy_conn_log_stranger(c, "refused logins", "connect refused: unsupported protocol level %u",
                         level);
    cy_conn_close(c, 0, NULL);
}

/* Close a socket that has not logged in for exceeding what a stranger may
 * hold (the line is rate-limited per address: see cy_conn_close). */
static void preauth_refused(cy_conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void preauth_refused(cy_conn *c, const char *fmt, ...)
{
    char why[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    c->g->stats->limit_preauth++;
    cy_conn_close(c, 0, why);
}

/* Handle every complete packet in data[0..len); return the bytes consumed. */
static size_t process(cy_conn *c, const uint8_t *data, size_t len)
{
    cy_mqtt *g = c->g;
    size_t off = 0;
    while (off < len && c->state != CONN_CLOSING && !c->delayed && !c->throttled) {
        size_t pkt_len = 0;
        bool login = c->state == CONN_NEW;
        uint32_t limit = login ? g->cfg->max_connect_size : g->cfg->max_packet_size;
        int rc = cy_mqtt_frame(data + off, len - off, limit, &pkt_len);
        if (rc == CY_EAGAIN) break;
        if (rc == CY_EMSGSIZE && login) {
            preauth_refused(c, "CONNECT of %zu bytes over max_connect_size %u", pkt_len, limit);
            return len;
        }
        if (rc == CY_EMSGSIZE) {
            g->stats->limit_packet_too_large++;
            char why[96];
            snprintf(why, sizeof(why), "packet of %zu bytes over max_packet_size %u", pkt_len,
                     g->cfg->max_packet_size);
            cy_conn_close(c, CY_RC_PACKET_TOO_LARGE, why);
            return len;
        }
        cy_mqtt_packet p;
        size_t used = 0;
        if (rc == 0) rc = cy_mqtt_decode(data + off, len - off, c->version, &p, &used);
        if (rc == CY_ENOTSUP && c->state == CONN_NEW) {
            refuse_version(c, p.u.connect.version);
            return len;
        }
        if (rc) {
            g->stats->protocol_errors++;
            char why[96];
            snprintf(why, sizeof(why), "malformed packet (first byte 0x%02x): %s", data[off],
                     cy_strerror(rc));
            cy_conn_close(c, CY_RC_MALFORMED, why);
            return len;
        }
        /* A device's session is named by its device id (the client id, or
         * the username when the client id is empty). */
        const cy_str *name = &p.u.connect.client_id;
        if (rc == 0 && p.type == CY_MQTT_CONNECT && name->len == 0 && g->cfg->isolate_devices &&
            p.u.connect.has_username)
            name = &p.u.connect.username;
        if (p.type == CY_MQTT_CONNECT && c->state == CONN_NEW && g->nshards > 1 &&
            !c->handed_in && name->len) {
            unsigned owner = cy_shard_of(name->p, name->len, g->nshards);
            if (owner != g->self) {
                if (c->ext && cy_conn_ext_of(c)->tls) /* we stay its TLS terminator */
                    cy_proxy_start(c, owner, &p.u.connect, name, data + off, len - off);
                else
                    cy_conn_handover(c, owner, p.u.connect.version, data + off, len - off);
                return len;
            }
        }
        size_t at = off;
        off += used;
        c->last_rx = uv_now(g->loop);
        g->progress++;
        cy_cluster_hold_begin(g->cluster);
        int reason = dispatch(c, &p);
        if (reason == CY_CONN_HOLD) { /* this CONNECT and what follows wait in `in` */
            c->delayed = true;
            g->sweep_all = true; /* its hold ends at 250 ms precision */
            c->last_rx = uv_now(g->loop) + g->cfg->auth_fail_delay;
            conn_read_stop(c);
            return at;
        }
        if (reason >= 0x80) {
            if (reason == CY_RC_PROTOCOL_ERROR || reason == CY_RC_MALFORMED)
                g->stats->protocol_errors++;
            char why[64];
            snprintf(why, sizeof(why), "%s from client refused", cy_mqtt_type_name(p.type));
            cy_conn_close(c, (uint8_t)reason, why);
            return len;
        }
    }
    return off;
}

/* Would a partial-input buffer holding `total` bytes fit the shard's
 * preauth_memory? (cy_buf grows by powers of two from 256.) */
static bool preauth_fits(const cy_conn *c, size_t total)
{
    size_t cap = 256, held = c->in ? c->in->cap : 0;
    while (cap < total) cap *= 2;
    size_t grow = cap > held ? cap - held : 0;
    return c->g->preauth_bytes + grow <= c->g->cfg->preauth_memory;
}

/* How many more bytes a socket that has not logged in may read: the rest of
 * the CONNECT its fixed header declared (a few bytes while the header itself
 * is incomplete); 0 when that would go over preauth_memory. */
static size_t preauth_room(const cy_conn *c)
{
    size_t have = c->in ? cy_buf_size(c->in) : 0, total = 0;
    if (!have || cy_mqtt_frame(cy_buf_head(c->in), have, 0, &total) != CY_EAGAIN || total <= have)
        total = have + 5; /* the fixed header: type byte and up to 4 length bytes */
    return preauth_fits(c, total) ? total - have : 0;
}

/* The buffer the next read of c goes into (len 0: none, UV_ENOBUFS). */
static void read_buffer(cy_conn *c, uv_buf_t *buf)
{
    cy_mqtt *g = c->g;
    if (c->ext && cy_conn_ext_of(c)->tls) {
        /* Ciphertext: OpenSSL takes all of it before the read callback
         * returns (a partial record in its own buffer), so one buffer
         * serves every TLS connection. */
        if (g->tls_rbuf_busy) {
            *buf = uv_buf_init(NULL, 0); /* never: reads do not nest */
            return;
        }
        g->tls_rbuf_busy = true;
        *buf = uv_buf_init((char *)g->tls_rbuf, sizeof(g->tls_rbuf));
        return;
    }
    if (!c->in && !g->rbuf_busy) {
        g->rbuf_busy = true;
        *buf = uv_buf_init((char *)g->rbuf, sizeof(g->rbuf));
        return;
    }
    size_t want = CY_READ_CHUNK;
    if (c->state == CONN_NEW && (want = preauth_room(c)) == 0) {
        *buf = uv_buf_init(NULL, 0); /* read_input sees UV_ENOBUFS */
        return;
    }
    if (!c->in) c->in = cy_calloc(1, sizeof(*c->in));
    if (!c->in || cy_buf_reserve(c->in, want)) {
        *buf = uv_buf_init(NULL, 0); /* UV_ENOBUFS */
        return;
    }
    preauth_account(c);
    *buf = uv_buf_init((char *)c->in->data + c->in->len, (unsigned)(c->in->cap - c->in->len));
}

/* Keep the tail of a read that holds an incomplete packet. */
static void keep_partial(cy_conn *c, const uint8_t *bytes, size_t len)
{
    if (c->state == CONN_NEW && !preauth_fits(c, len + (c->in ? cy_buf_size(c->in) : 0))) {
        preauth_refused(c, "preauth_memory (%u bytes) spent on sockets that have not logged in",
                        c->g->cfg->preauth_memory);
        return;
    }
    if (!c->in) c->in = cy_calloc(1, sizeof(*c->in));
    if (!c->in || cy_buf_append(c->in, bytes, len)) {
        cy_conn_close(c, CY_RC_UNSPECIFIED, "out of memory");
        return;
    }
    preauth_account(c);
}

void cy_conn_feed(cy_conn *c, const uint8_t *bytes, size_t len)
{
    size_t used = process(c, bytes, len);
    if (used < len && c->state != CONN_CLOSING) keep_partial(c, bytes + used, len - used);
}

/* Handles what waits in `in` and keeps the rest; false when that closed
 * the connection. */
static bool process_in(cy_conn *c)
{
    size_t used = process(c, cy_buf_head(c->in), cy_buf_size(c->in));
    if (c->state == CONN_CLOSING) return false;
    cy_buf_consume(c->in, used);
    if (cy_buf_size(c->in) == 0)
        in_free(c);
    else
        preauth_account(c); /* CONNECT handled: what is left is no longer counted */
    return true;
}

/* Plaintext a TLS session decrypted: through process() as if read, with
 * the partial packet of an earlier read first; to the owner shard once we
 * are only its terminator. */
static void tls_plain(cy_conn *c, const uint8_t *data, size_t len)
{
    if (c->state == CONN_PROXY) {
        int rc = cy_proxy_up(cy_conn_ext_of(c)->proxy, data, len);
        if (rc) cy_conn_close(c, 0, NULL); /* the owner's end is gone */
        return;
    }
    if (!c->in) {
        cy_conn_feed(c, data, len);
        return;
    }
    keep_partial(c, data, len);
    if (c->state == CONN_CLOSING) return;
    process_in(c);
}

/* nread bytes of ciphertext in g->tls_rbuf: decrypt into the plaintext
 * buffer, a buffer-full at a time, and handle it. */
static void tls_read(cy_conn *c, size_t nread)
{
    cy_mqtt *g = c->g;
    cy_tls *t = cy_conn_ext_of(c)->tls;
    cy_tls_input(t, g->tls_rbuf, nread);
    bool was_established = cy_tls_established(t);
    if (c->state == CONN_PROXY) c->last_rx = (int64_t)uv_now(g->loop); /* for the idle sweep */
    int rc;
    do {
        size_t have = 0, got = 0;
        while (have < sizeof(g->rbuf) &&
               (rc = cy_tls_read(t, g->rbuf + have, sizeof(g->rbuf) - have, &got)) == 0)
            have += got;
        if (have) {
            g->rbuf_busy = true;
            tls_plain(c, g->rbuf, have);
            g->rbuf_busy = false;
        }
        if (c->state == CONN_CLOSING) { /* the rest of the input goes with the session */
            g->tls_rbuf_busy = false;
            return;
        }
    } while (rc == 0);
    g->tls_rbuf_busy = false;
    if (!was_established && cy_tls_established(t)) g->stats->tls_handshakes++;
    if (cy_buf_size(cy_tls_out(t))) mark_dirty(c); /* the handshake's, a key update's */
    if (rc == CY_EAGAIN) {
        preauth_account(c); /* the handshake may be done */
        if (c->state == CONN_PROXY)
            cy_proxy_kick(cy_conn_ext_of(c)->proxy);
        else
            backpressure(c);
        return;
    }
    if (rc == CY_EPIPE) { /* close_notify: an end, as a FIN */
        if (c->state == CONN_PROXY) {
            conn_read_stop(c);
            if (cy_proxy_end_input(cy_conn_ext_of(c)->proxy)) return;
        }
        if (c->state == CONN_NEW)
            cy_conn_log_stranger(c, "closed sockets", "connection closed before CONNECT");
        else if (c->state == CONN_ACTIVE)
            cy_debug(cy_conn_name(c), "connection lost%s",
                     c->clean_disconnect ? "" : " without DISCONNECT");
        cy_conn_close(c, 0, NULL);
        return;
    }
    if (c->state == CONN_NEW && !cy_tls_established(t)) {
        g->stats->tls_handshake_failures++;
        cy_conn_log_stranger(c, "closed sockets", "TLS handshake failed: %s", cy_tls_why(t));
    } else {
        cy_info(cy_conn_name(c), "TLS error: %s", cy_tls_why(t));
    }
    cy_conn_close(c, 0, NULL); /* an alert OpenSSL wrote goes out first */
}

/* What one read of c gave: nread bytes in buf, 0 (nothing: EAGAIN), or an
 * end (UV_EOF) or error (-errno, UV_ENOBUFS). */
static void read_input(cy_conn *c, ssize_t nread, const uv_buf_t *buf)
{
    cy_mqtt *g = c->g;
    bool shared = buf->base == (char *)g->rbuf;
    /* Input taken from the kernel, bytes or an end: work done, even when it
     * completes no packet (a large one arriving slowly must not look like
     * a shard that reads nothing). */
    if (nread != 0) g->progress++;
    if (buf->base == (char *)g->tls_rbuf) {
        if (nread > 0) {
            tls_read(c, (size_t)nread);
            return;
        }
        g->tls_rbuf_busy = false;
        if (nread == 0) return; /* EAGAIN */
    }
    if (nread < 0) {
        conn_read_stop(c); /* every end or error closes below (but a TLS terminator's
                            * device: its end goes to the owner, proxy.c) */
        if (shared) g->rbuf_busy = false;
        if (nread == UV_ENOBUFS && c->state == CONN_NEW) {
            preauth_refused(c, "preauth_memory (%u bytes) spent on sockets that have not logged in",
                            g->cfg->preauth_memory);
            return;
        }
        if (c->state != CONN_CLOSING) {
            if (nread != UV_EOF) cy_debug(cy_conn_name(c), "read: %s", uv_strerror((int)nread));
            if (c->state == CONN_NEW)
                cy_conn_log_stranger(c, "closed sockets", "connection closed before CONNECT");
            else if (c->state == CONN_PROXY && nread == UV_EOF &&
                     cy_proxy_end_input(cy_conn_ext_of(c)->proxy))
                return; /* the owner answers what it sent, then closes */
            else if (c->state == CONN_PROXY)
                cy_debug(cy_conn_peer(c), "TLS connection for shard %u closed by the device",
                         cy_proxy_owner(cy_conn_ext_of(c)->proxy));
            else
                cy_debug(cy_conn_name(c), "connection lost%s",
                         c->clean_disconnect ? "" : " without DISCONNECT");
            cy_conn_close(c, 0, NULL);
        }
        return;
    }
    if (shared) {
        size_t used = process(c, g->rbuf, (size_t)nread);
        g->rbuf_busy = false;
        if (used < (size_t)nread && c->state != CONN_CLOSING)
            keep_partial(c, g->rbuf + used, (size_t)nread - used);
        backpressure(c);
        return;
    }
    c->in->len += (size_t)nread;
    /* Once the split packet is whole, the connection reads into the shared
     * buffer again. */
    if (!process_in(c)) return;
    backpressure(c);
}

/* c's socket is readable (or ended, or failed): read it while reads fill
 * the buffer, at most 32 times, as long as it is read. After each read the
 * shard may end its pass early (cy_mqtt_on_input). */
static void conn_readable(cy_conn *c)
{
    cy_mqtt *g = c->g;
    for (int count = 32; count > 0 && c->reading && c->fd >= 0; count--) {
        uv_buf_t buf = uv_buf_init(NULL, 0);
        read_buffer(c, &buf);
        ssize_t n = UV_ENOBUFS;
        if (buf.base && buf.len) {
            do
                n = read(c->fd, buf.base, buf.len);
            while (n < 0 && errno == EINTR);
            if (n == 0)
                n = UV_EOF;
            else if (n < 0)
                n = errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -errno;
        }
        read_input(c, n, &buf);
        if (g->on_input) g->on_input(g->on_input_ctx);
        if (n <= 0 || (size_t)n < buf.len) break; /* drained, ended or failed */
    }
}

/* One event of the set for c: input first, then writability (what was
 * read may have closed it). */
static void conn_io(cy_conn *c, uint32_t events)
{
    if (c->fd < 0) return; /* closed by an earlier event of the batch */
    if ((events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && c->reading) conn_readable(c);
    if (c->fd >= 0 && c->w && (events & (EPOLLOUT | EPOLLERR | EPOLLHUP))) conn_writable(c);
    /* An event nobody wants: the set still watches what a failed
     * epoll_ctl could not take back. Level triggered, it would come on
     * every turn of the loop: try again, or give the connection up. */
    if (c->fd >= 0 && !c->reading && !c->w && io_sync(c)) {
        cy_debug(cy_conn_name(c), "epoll: cannot stop watching the socket");
        cy_conn_close(c, 0, NULL);
    }
}

static void on_sockets(uv_poll_t *h, int status, int events)
{
    cy_mqtt *g = h->data;
    struct epoll_event ev[IO_BATCH];
    (void)events;
    if (status < 0) return;
    int n;
    do
        n = epoll_wait(g->epfd, ev, IO_BATCH, 0);
    while (n < 0 && errno == EINTR);
    for (int i = 0; i < n; i++) conn_io(ev[i].data.ptr, ev[i].events);
}

/* After the poll phase: free the connections whose sockets closed. */
static void on_reap(uv_check_t *h)
{
    cy_mqtt *g = h->data;
    cy_conn *list = g->closed;
    g->closed = NULL;
    while (list) {
        cy_conn *c = list;
        list = c->dirty_next;
        conn_free(c);
    }
}

/* The epoll set and its watchers, once (the first connection or
 * cy_mqtt_open); closed by cy_mqtt_stop. 0, or -errno. */
static int io_open(cy_mqtt *g)
{
    if (g->epfd >= 0) return 0;
    if (g->stopping) return UV_ECANCELED;
    int fd = epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0) return -errno;
    int rc = uv_poll_init(g->loop, &g->epoll, fd);
    if (rc) {
        close(fd);
        return rc;
    }
    g->epfd = fd;
    g->epoll.data = g;
    uv_poll_start(&g->epoll, UV_READABLE, on_sockets);
    uv_check_init(g->loop, &g->reaper);
    g->reaper.data = g;
    uv_check_start(&g->reaper, on_reap);
    return 0;
}

/* Handle what waits in `in` (a held CONNECT, a throttled publisher's
 * input), then read the socket again unless something stopped it anew. */
static void resume_input(cy_conn *c)
{
    if (c->in) {
        if (!process_in(c)) return;
        backpressure(c);
    }
    if (c->state == CONN_CLOSING || c->delayed || c->throttled || c->paused || c->reading ||
        c->g->stalled)
        return;
    int rc = conn_read_start(c);
    if (rc) {
        cy_debug(cy_conn_name(c), "read start: %s", uv_strerror(rc));
        cy_conn_close(c, 0, NULL);
    }
}

void cy_conn_throttle(cy_conn *c)
{
    if (c->throttled || c->state != CONN_ACTIVE) return;
    c->throttled = true;
    c->g->sweep_all = true; /* resumed at 250 ms precision */
    c->g->stats->limit_publish_rate++;
    conn_read_stop(c);
}

/* A new connection object for the open socket fd (taken over: closed on
 * failure too), linked into the gateway. */
static cy_conn *conn_new(cy_mqtt *g, int fd)
{
    int rc = io_open(g);
    cy_conn *c = rc ? NULL : cy_calloc(1, sizeof(*c));
    if (!c) {
        cy_error(NULL, "accept: %s", rc ? uv_strerror(rc) : "out of memory");
        close(fd);
        return NULL;
    }
    c->g = g;
    c->fd = fd;
    c->link.ops = &cy_conn_link_ops;
    c->next = g->conns;
    if (g->conns) g->conns->prev = c;
    g->conns = c;
    g->n_conns++;
    g->sweep_all = true; /* connect_timeout at 250 ms precision */
    g->n_not_reading++; /* until conn_read_start */
    return c;
}

/* A connection accepted on the TLS listener: its session, counted as a
 * stranger's memory until CONNECT. 0, or -1 when it was closed. */
static int tls_accept(cy_conn *c)
{
    cy_mqtt *g = c->g;
    if (g->preauth_bytes + CY_TLS_HANDSHAKE_BYTES > g->cfg->preauth_memory) {
        preauth_refused(c, "preauth_memory (%u bytes) spent on sockets that have not logged in",
                        g->cfg->preauth_memory);
        return -1;
    }
    cy_conn_ext *x = ext_new(c);
    if (!x || cy_tls_new(g->tls_ctx, &x->tls)) {
        cy_conn_close(c, 0, "out of memory");
        return -1;
    }
    preauth_account(c);
    return 0;
}

/* Connections refused at once when out of descriptors, per wake-up. */
#define ACCEPT_REFUSE_MAX 1024

/* Take one connection from the listening socket's queue: 1, 0 when the
 * queue is empty, -1 on an error that leaves it (logged; the caller stops
 * taking connections until the next sweep). */
static int accept_one(cy_mqtt *g, int lfd, bool tls)
{
    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ECONNABORTED)
            return errno == ECONNABORTED || errno == EINTR ? 1 : 0;
        if ((errno == EMFILE || errno == ENFILE) && g->reserve_fd >= 0) {
            /* Out of descriptors: refuse what waits (a close the client
             * sees at once) rather than leave the queue to fill while the
             * listening socket reports it ready on every turn of the loop. */
            int err = errno;
            close(g->reserve_fd);
            g->reserve_fd = -1;
            int n = 0;
            while (n < ACCEPT_REFUSE_MAX && (fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0) {
                close(fd);
                n++;
            }
            g->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            g->stats->limit_connections += (uint64_t)n;
            g->refused_emfile += (uint64_t)n;
            g->progress++;
            int64_t now = (int64_t)uv_now(g->loop);
            if (now - g->emfile_logged >= CY_LOGIN_LOG_WINDOW_MS) { /* a line per window */
                cy_warn(NULL, "accept: %s: %" PRIu64 " connections refused", strerror(err),
                        g->refused_emfile);
                g->emfile_logged = now;
                g->refused_emfile = 0;
            }
            return 0;
        }
        cy_warn(NULL, "accept: %s", strerror(errno));
        return -1;
    }
    cy_conn *c = conn_new(g, fd);
    if (!c) return -1;
    c->last_rx = uv_now(g->loop);
    /* Sockets beyond the connection limit get no chance to send CONNECT. */
    if (g->n_conns > g->cfg->max_connections + 64u) {
        g->stats->limit_connections++;
        g->progress++; /* the accept queue's work, done by refusing it */
        cy_conn_close(c, 0, "over max_connections");
        return 1;
    }
    /* Nor do sockets from an address that opens them too fast (the node's
     * accepts together): a getpeername per accept, only while the limit is on. */
    struct sockaddr_storage ss;
    const struct sockaddr *sa;
    if (g->limit && g->cfg->max_connect_rate_per_address && (sa = cy_conn_addr(c, &ss)) &&
        !cy_limit_connect(g->limit, sa, (int64_t)uv_now(g->loop))) {
        g->stats->limit_connect_rate++;
        g->progress++;
        cy_conn_close(c, 0, "over max_connect_rate_per_address");
        return 1;
    }
    if (tls && tls_accept(c)) return 1;
    if (g->stalled) return 1; /* drill: accepted, never read (owed input once it sends) */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    int rc = conn_read_start(c);
    if (rc) {
        cy_debug(NULL, "accept: read start: %s", uv_strerror(rc));
        cy_conn_close(c, 0, NULL);
    }
    return 1;
}

/* The listening socket is readable: take what its queue holds, at most
 * ACCEPT_BATCH (the socket is shared with the other shards, and the loop
 * has other work; it stays readable while more wait). */
#define ACCEPT_BATCH 64

static void on_connection(uv_poll_t *h, int status, int events);

/* An error the queue stays readable with (out of descriptors without the
 * reserve, out of memory): the listening sockets are not watched until
 * the next sweep, or the loop would turn on them without a pause. */
static void accept_pause(cy_mqtt *g, bool pause)
{
    if (pause == g->accept_paused || !g->listening) return;
    g->accept_paused = pause;
    g->sweep_all = true; /* the next sweep (250 ms) resumes */
    if (pause) {
        uv_poll_stop(&g->listener);
        if (g->tls_open) uv_poll_stop(&g->tls_listener);
        return;
    }
    if (g->reserve_fd < 0) g->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    uv_poll_start(&g->listener, UV_READABLE, on_connection);
    if (g->tls_open) uv_poll_start(&g->tls_listener, UV_READABLE, on_connection);
}

static void on_connection(uv_poll_t *h, int status, int events)
{
    cy_mqtt *g = h->data;
    bool tls = h == &g->tls_listener;
    (void)events;
    if (status < 0) {
        cy_warn(NULL, "accept: %s", uv_strerror(status));
        return;
    }
    for (int i = 0; i < ACCEPT_BATCH && g->listening && !g->accept_paused; i++) {
        int rc = accept_one(g, tls ? g->tls_listen_fd : g->listen_fd, tls);
        if (rc < 0) accept_pause(g, true);
        if (rc <= 0) break;
    }
}

/* A connection on fd, handed in by another shard (handed_in) or the
 * MQTT end of a WebSocket bridge here; info as cy_mqtt_adopt's. 0, or -1
 * (fd closed, nothing left). */
static int adopt(cy_mqtt *g, int fd, const cy_handover_info *info, const uint8_t *bytes, size_t len,
                 bool handed_in, bool ws)
{
    int one = 1;
    if (ioctl(fd, FIONBIO, &one)) {
        close(fd);
        return -1;
    }
    cy_conn *c = conn_new(g, fd);
    if (!c) return -1;
    c->handed_in = handed_in;
    c->ws = ws;
    c->last_rx = uv_now(g->loop);
    if (info) {
        /* A TLS terminator's socketpair (AF_UNIX: no Nagle to turn off, no
         * peer address of its own): the device's address and proof. */
        cy_conn_ext *x = ext_new(c);
        if (x && info->peer)
            memcpy(&x->peer, info->peer,
                   info->peer->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
                                                     : sizeof(struct sockaddr_in));
        if (x && info->cert_id_len) {
            x->cert_id = cy_strndup(info->cert_id, info->cert_id_len);
            x->cert_id_len = x->cert_id ? info->cert_id_len : 0;
        }
        if (!x) {
            cy_conn_close(c, 0, "out of memory");
            return -1;
        }
    } else {
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    cy_conn_feed(c, bytes, len);
    /* (stalled: the drill's; what it sends is owed input) */
    if (c->state == CONN_CLOSING || c->delayed || g->stalled) return 0;
    int rc = conn_read_start(c);
    if (rc) {
        cy_debug(cy_conn_name(c), "adopt: read start: %s", uv_strerror(rc));
        cy_conn_close(c, 0, NULL);
    }
    return 0;
}

void cy_mqtt_adopt(void *ctx, unsigned from, int fd, const cy_handover_info *info,
                   const uint8_t *bytes, size_t len)
{
    (void)from;
    adopt(ctx, fd, info, bytes, len, true, false);
}

int cy_conn_open_pair(cy_mqtt *g, int fd, const struct sockaddr *peer)
{
    cy_handover_info info = {peer, NULL, 0};
    return adopt(g, fd, &info, NULL, 0, false, true) ? CY_ENOMEM : 0;
}

/* ---- what the cluster asks of connections ---- */

int cy_conn_send_acked(cy_conn *c, const cy_mqtt_packet *p)
{
    static const cy_held_owner none; /* nothing held: c->v5 need not exist to ask */
    cy_mqtt *g = c->g;
    if (!cy_cluster_must_hold(g->cluster, c->v5 ? &c->v5->held : &none))
        return cy_conn_send(c, p);
    cy_buf_reset(&g->scratch);
    int rc = cy_mqtt_encode(&g->scratch, c->version, p);
    if (rc) return rc;
    if (p->type == CY_MQTT_PUBLISH && cy_conn_peer_max_packet(c) &&
        cy_buf_size(&g->scratch) > cy_conn_peer_max_packet(c))
        return CY_EMSGSIZE;
    /* Only these acknowledge work peers must have applied first; anything
     * else waits only for what is held before it on this connection. */
    bool wait = p->type == CY_MQTT_SUBACK || p->type == CY_MQTT_PUBACK ||
                p->type == CY_MQTT_PUBREC;
    cy_conn_v5 *x = cy_conn_v5_get(c);
    if (x && cy_cluster_hold(g->cluster, &x->held, wait, cy_buf_head(&g->scratch),
                             cy_buf_size(&g->scratch)) == 0)
        return 0;
    /* Out of memory: better early than never. */
    rc = cy_buf_append(&c->out, cy_buf_head(&g->scratch), cy_buf_size(&g->scratch));
    if (rc == 0) mark_dirty(c);
    return rc;
}

void cy_mqtt_release_held(void *ctx, cy_held_owner *o, const uint8_t *bytes, size_t len)
{
    cy_conn *c = ((cy_conn_v5 *)((char *)o - offsetof(cy_conn_v5, held)))->conn;
    (void)ctx;
    if (cy_buf_append(&c->out, bytes, len) == 0) mark_dirty(c);
}

/* ---- handover to the owner shard ---- */

#define refuse_unavailable cy_conn_refuse_unavailable

void cy_conn_refuse_unavailable(cy_conn *c, uint8_t version, const char *why)
{
    static const uint8_t v5[] = {0x20, 0x03, 0x00, CY_RC_SERVER_UNAVAILABLE, 0x00};
    static const uint8_t v3[] = {0x20, 0x02, 0x00, CY_RC3_SERVER_UNAVAILABLE};
    c->state = CONN_NEW;
    if (version == CY_MQTT_V5)
        cy_buf_append(&c->out, v5, sizeof(v5));
    else
        cy_buf_append(&c->out, v3, sizeof(v3));
    c->g->stats->connects_refused++;
    cy_conn_log_stranger(c, "refused logins", "connect refused (server unavailable): %s", why);
    cy_conn_close(c, 0, NULL);
}

/* A handover in flight. The bus passes a libuv TCP handle (uv_write2), so
 * the socket travels as a duplicate in one of those for the while: the
 * connection keeps its own descriptor, to refuse the device if the bus
 * fails, and closes it once the owner has the socket. */
typedef struct handover {
    uv_tcp_t tcp; /* a duplicate of the connection's socket, for the bus */
    cy_conn *c;
    uint8_t version;
    unsigned owner;
    size_t bytes; /* counted in g->preauth_bytes until the bus has written them */
} handover;

static void handover_free(uv_handle_t *t)
{
    cy_free(t->data);
}

static void handed(void *arg, int status)
{
    handover *h = arg;
    cy_conn *c = h->c;
    uv_close((uv_handle_t *)&h->tcp, handover_free);
    c->g->preauth_bytes -= h->bytes;
    if (status < 0) {
        char why[64];
        snprintf(why, sizeof(why), "handover to shard %u failed: %s", h->owner,
                 uv_strerror(status));
        refuse_unavailable(c, h->version, why);
    } else {
        c->state = CONN_NEW; /* so close is a plain close of our copy */
        cy_conn_close(c, 0, NULL);
    }
}

void cy_conn_handover(cy_conn *c, unsigned owner, uint8_t version, const uint8_t *bytes,
                      size_t len)
{
    cy_mqtt *g = c->g;
    char why[96];
    if (!cy_cluster_shard_ready(g->cluster, owner, why, sizeof(why))) {
        refuse_unavailable(c, version, why);
        return;
    }
    /* What is handed over has not logged in yet: its bytes (the CONNECT and
     * whatever came after it in the same read) wait in the bus's buffer,
     * so they count in the shard's preauth_memory until written. */
    if (g->preauth_bytes + len > g->cfg->preauth_memory) {
        g->stats->limit_preauth++;
        refuse_unavailable(c, version, "preauth_memory spent on connections not logged in");
        return;
    }
    handover *h = cy_malloc(sizeof(*h));
    if (!h) {
        refuse_unavailable(c, version, "out of memory");
        return;
    }
    /* uv_tcp_init cannot fail on Linux; uv_tcp_open only on a bad
     * descriptor, and then the handle closes with nothing open. */
    int fd = fcntl(c->fd, F_DUPFD_CLOEXEC, 0);
    int rc = fd < 0 ? -errno : 0;
    if (rc == 0) {
        uv_tcp_init(g->loop, &h->tcp);
        h->tcp.data = h;
        if ((rc = uv_tcp_open(&h->tcp, fd)) != 0) close(fd);
    }
    if (rc) {
        if (fd >= 0)
            uv_close((uv_handle_t *)&h->tcp, handover_free);
        else
            cy_free(h);
        snprintf(why, sizeof(why), "handover to shard %u: %s", owner, uv_strerror(rc));
        refuse_unavailable(c, version, why);
        return;
    }
    h->c = c;
    h->version = version;
    h->owner = owner;
    h->bytes = len;
    g->preauth_bytes += len;
    conn_read_stop(c);
    c->state = CONN_HANDED;
    /* A WebSocket bridge's socketpair has no address of its own: the
     * device's goes with it. */
    cy_handover_info info = {NULL, NULL, 0};
    if (c->ext && cy_conn_ext_of(c)->peer.ss_family)
        info.peer = (const struct sockaddr *)&cy_conn_ext_of(c)->peer;
    rc = cy_cluster_handover(g->cluster, owner, &h->tcp, info.peer ? &info : NULL, bytes, len,
                             handed, h);
    if (rc) {
        g->preauth_bytes -= h->bytes;
        uv_close((uv_handle_t *)&h->tcp, handover_free);
        snprintf(why, sizeof(why), "handover to shard %u: %s", owner, cy_strerror(rc));
        refuse_unavailable(c, version, why);
        return;
    }
    cy_debug(cy_conn_peer(c), "handed to shard %u", owner);
}


/* ---- the MQTT binding of cy_link (device/link.h) ---- */

/* Find or assign an outbound topic alias for topic. Returns the alias (0 =
 * none) and sets *fresh when it was assigned now (the topic must be sent). */
static uint16_t alias_for(cy_conn *c, const cy_msg *m, bool *fresh)
{
    *fresh = false;
    cy_conn_v5 *x = c->v5; /* a client that allows aliases declared it in CONNECT */
    if (!x || !x->peer_alias_max) return 0;
    for (uint16_t i = 0; i < x->n_alias_out; i++)
        if (strcmp(x->alias_out[i], m->topic) == 0) return (uint16_t)(i + 1);
    uint16_t limit = x->peer_alias_max < 64 ? x->peer_alias_max : 64;
    if (x->n_alias_out >= limit) return 0;
    if (!x->alias_out) {
        x->alias_out = cy_calloc(limit, sizeof(char *));
        if (!x->alias_out) return 0;
    }
    char *t = cy_strndup(m->topic, m->topic_len);
    if (!t) return 0;
    x->alias_out[x->n_alias_out++] = t;
    *fresh = true;
    return x->n_alias_out;
}

/* Encode one PUBLISH to c. Returns 0, CY_ETIMEDOUT if the message expired,
 * CY_EMSGSIZE if it is over the client's maximum packet size (nothing sent). */
static int send_publish(cy_conn *c, const cy_msg *m, uint8_t qos, bool retain, bool dup,
                        uint16_t packet_id, const uint32_t *sub_ids, uint32_t n_sub_ids)
{
    cy_mqtt_packet p;
    p.type = CY_MQTT_PUBLISH;
    cy_mqtt_publish *pub = &p.u.publish;
    pub->qos = qos;
    pub->dup = dup;
    pub->retain = retain;
    pub->topic = (cy_str){m->topic, m->topic_len};
    pub->packet_id = qos ? packet_id : 0;
    pub->payload = m->payload;
    pub->payload_len = m->payload_len;
    pub->props.present = 0;
    pub->props.n_sub_ids = 0;
    pub->props.out_sub_ids = NULL;
    pub->props.user_src = NULL;
    pub->props.user_src_len = 0;
    pub->props.extra = NULL;
    pub->props.extra_len = 0;
    bool fresh = false;
    uint16_t alias = 0;
    if (m->expiry_at) {
        int64_t left = m->expiry_at - cy_wall_ms();
        if (left <= 0) return CY_ETIMEDOUT;
        pub->props.present |= CY_PBIT(CY_PROP_MESSAGE_EXPIRY);
        pub->props.message_expiry = (uint32_t)((left + 999) / 1000);
    }
    if (c->version == CY_MQTT_V5) {
        if (n_sub_ids) {
            pub->props.present |= CY_PBIT(CY_PROP_SUBSCRIPTION_ID);
            pub->props.out_sub_ids = sub_ids;
            pub->props.n_sub_ids = n_sub_ids;
        }
        pub->props.extra = m->props;
        pub->props.extra_len = m->props_len;
        alias = alias_for(c, m, &fresh);
        if (alias) {
            pub->props.present |= CY_PBIT(CY_PROP_TOPIC_ALIAS);
            pub->props.topic_alias = alias;
            if (!fresh) pub->topic.len = 0;
        }
    }
    size_t before = c->out.len;
    int rc = cy_conn_send(c, &p);
    if (rc == 0 && cy_conn_peer_max_packet(c) && c->out.len - before > cy_conn_peer_max_packet(c)) {
        c->out.len = before; /* take it back */
        rc = CY_EMSGSIZE;
    }
    if (rc && fresh) cy_free(c->v5->alias_out[--c->v5->n_alias_out]);
    return rc;
}

static int link_send(cy_link *l, const cy_link_msg *lm)
{
    return send_publish(cy_conn_of_link(l), lm->m, lm->qos, lm->retain, lm->dup, lm->id,
                        lm->sub_ids, lm->n_sub_ids);
}

static int link_send_release(cy_link *l, uint16_t id)
{
    cy_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = CY_MQTT_PUBREL;
    p.flags = 2;
    p.u.ack.packet_id = id;
    return cy_conn_send(cy_conn_of_link(l), &p);
}

static uint32_t link_window(const cy_link *l)
{
    return cy_conn_peer_recv_max(cy_conn_of_link((cy_link *)l));
}

static bool link_ready(const cy_link *l)
{
    return cy_conn_of_link((cy_link *)l)->state == CONN_ACTIVE;
}

static bool link_congested(const cy_link *l)
{
    return cy_conn_backlog(cy_conn_of_link((cy_link *)l)) > CY_OUT_HIGH_WATER;
}

static void link_close(cy_link *l, uint8_t reason, const char *why)
{
    cy_conn *c = cy_conn_of_link(l);
    /* The device layer ends a session on purpose (takeover, deletion): not
     * the client's failure, so no will unless the layer kept one. */
    cy_conn_close(c, reason, why);
}

static const char *link_protocol(const cy_link *l)
{
    return cy_conn_of_link((cy_link *)l)->version == CY_MQTT_V5 ? "mqtt5" : "mqtt3.1.1";
}

static int64_t link_last_heard(const cy_link *l)
{
    return cy_conn_of_link((cy_link *)l)->last_rx;
}

/* A call or read goes to the device as a QoS 1 publish on
 * devices/<id>/<verb>/<name>: the request id is the last topic level for
 * 3.1.1, the Correlation Data for 5.0 (with the reply topic as Response
 * Topic), docs/device-protocol.md. It is routed like any publish, so an
 * application subscribed to the device's calls sees them too. */
static int link_call(cy_link *l, const char *verb, const char *name, const char *rid,
                     const uint8_t *arg, size_t len)
{
    cy_conn *c = cy_conn_of_link(l);
    cy_mqtt *g = c->g;
    if (!c->sess) return CY_EPIPE;
    const char *id = c->sess->client_id;
    char topic[8 + CY_MAX_CLIENT_ID + 6 + CY_DEVICE_NAME_MAX + 18 + 1];
    char reply[8 + CY_MAX_CLIENT_ID + 7];
    cy_mqtt_props props;
    memset(&props, 0, sizeof(props));
    if (c->version == CY_MQTT_V5) {
        snprintf(topic, sizeof(topic), "devices/%s/%s/%s", id, verb, name);
        snprintf(reply, sizeof(reply), "devices/%s/reply", id);
        props.present = CY_PBIT(CY_PROP_RESPONSE_TOPIC) | CY_PBIT(CY_PROP_CORRELATION_DATA);
        props.response_topic = (cy_str){reply, (uint32_t)strlen(reply)};
        props.correlation_data = (cy_str){rid, (uint32_t)strlen(rid)};
    } else {
        snprintf(topic, sizeof(topic), "devices/%s/%s/%s/%s", id, verb, name, rid);
    }
    cy_str t = {topic, (uint32_t)strlen(topic)};
    cy_msg *m = cy_msg_from_publish(&t, arg, len, &props, 1, false, c->version, &g->scratch);
    if (!m) return CY_ENOMEM;
    cy_router_publish(g->router, m, NULL, NULL, false);
    cy_msg_unref(m);
    return 0;
}

static const cy_link_ops cy_conn_link_ops = {
    .send = link_send,
    .send_release = link_send_release,
    .window = link_window,
    .ready = link_ready,
    .congested = link_congested,
    .close = link_close,
    .protocol = link_protocol,
    .last_heard = link_last_heard,
    .call = link_call,
};

/* ---- the gateway ---- */

int cy_mqtt_new(const cy_mqtt_deps *deps, cy_mqtt **out)
{
    cy_mqtt *g = cy_calloc(1, sizeof(*g));
    if (!g) return CY_ENOMEM;
    g->loop = deps->loop;
    g->cfg = deps->cfg;
    g->store = deps->store;
    g->registry = deps->registry;
    g->router = deps->router;
    g->cluster = deps->cluster;
    g->devices = deps->devices;
    g->space = deps->space;
    g->stats = deps->stats;
    g->sb = deps->sb;
    g->limit = deps->limit;
    g->self = deps->self;
    g->nshards = deps->nshards ? deps->nshards : 1;
    cy_logrl_init(&g->login_log, CY_LOGIN_LOG_WINDOW_MS, CY_LOGIN_LOG_BURST);
    cy_buf_init(&g->scratch);
    g->epfd = g->listen_fd = g->tls_listen_fd = -1;
    g->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    *out = g;
    return 0;
}

/* A duplicate of the supervisor's listening socket, watched by h (not yet
 * started: cy_mqtt_accept), into *fd. */
static int adopt_listener(cy_mqtt *g, uv_poll_t *h, int *fd, int listen_fd, const char *what)
{
    int rc = io_open(g);
    int d = rc ? -1 : fcntl(listen_fd, F_DUPFD_CLOEXEC, 0);
    if (!rc && d < 0) rc = -errno;
    if (!rc && (rc = uv_poll_init(g->loop, h, d)) != 0) close(d);
    if (rc) {
        cy_error(NULL, "listen on inherited %s socket: %s", what, uv_strerror(rc));
        return rc;
    }
    h->data = g;
    *fd = d;
    return 0;
}

int cy_mqtt_open(cy_mqtt *g, int listen_fd)
{
    int rc = adopt_listener(g, &g->listener, &g->listen_fd, listen_fd, "MQTT");
    if (!rc) g->open = true;
    return rc;
}

/* A TLS context from the settings; NULL (logged) when the files make none. */
static cy_tls_ctx *tls_ctx_load(cy_mqtt *g, const char *when)
{
    cy_tls_options o;
    cy_tls_options_of(g->cfg, &o);
    cy_tls_ctx *ctx = NULL;
    char err[300];
    if (cy_tls_ctx_new(&o, &ctx, err, sizeof(err))) {
        cy_error(NULL, "TLS %s: %s", when, err);
        return NULL;
    }
    return ctx;
}

int cy_mqtt_open_tls(cy_mqtt *g, int listen_fd)
{
    g->tls_ctx = tls_ctx_load(g, "not served by this shard");
    if (!g->tls_ctx) return CY_ECONFIG;
    int rc = adopt_listener(g, &g->tls_listener, &g->tls_listen_fd, listen_fd, "MQTT TLS");
    if (!rc) g->tls_open = true;
    return rc;
}

void cy_mqtt_tls_reload(cy_mqtt *g)
{
    if (!g->tls_open || g->stopping) return;
    cy_tls_ctx *ctx = tls_ctx_load(g, "reload refused, keeping the certificate in use");
    if (!ctx) return;
    cy_tls_ctx_unref(g->tls_ctx); /* established sessions hold their own reference */
    g->tls_ctx = ctx;
    cy_info(NULL, "TLS: certificate %s loaded for new connections", g->cfg->tls_cert);
}

int cy_mqtt_accept(cy_mqtt *g)
{
    if (!g->open) return UV_EBADF;
    int rc = uv_poll_start(&g->listener, UV_READABLE, on_connection);
    if (rc) {
        cy_error(NULL, "listen: %s", uv_strerror(rc));
        return rc;
    }
    g->listening = true;
    if (g->tls_open && (rc = uv_poll_start(&g->tls_listener, UV_READABLE, on_connection)))
        cy_error(NULL, "listen (TLS): %s", uv_strerror(rc));
    return rc;
}

uint64_t cy_mqtt_clients_connected(const cy_mqtt *g)
{
    return cy_metrics_node_total(g->sb, g->self, g->stats, CY_METRIC_INDEX(clients_connected));
}

void cy_mqtt_stall(cy_mqtt *g)
{
    g->stalled = true;
    for (cy_conn *c = g->conns; c; c = c->next)
        if (c->state != CONN_CLOSING && c->state != CONN_HANDED) conn_read_stop(c);
    cy_proxy_stall(g);
}

void cy_mqtt_flush(cy_mqtt *g)
{
    if (g->stopping) g->flushed_last = true; /* cy_shard_stop's, after the commit */
    cy_conn *list = g->dirty;
    g->dirty = NULL;
    while (list) {
        cy_conn *c = list;
        list = c->dirty_next;
        c->dirty = false;
        c->dirty_next = NULL;
        if (c->fd < 0) { /* closed while on the list: it can be freed now */
            cy_buf_reset(&c->out);
            closed_push(c);
            continue;
        }
        cy_conn_flush(c);
        if (c->close_at_flush) {
            c->close_at_flush = false;
            io_close(c);
        }
    }
}

void cy_mqtt_on_input(cy_mqtt *g, void (*fn)(void *ctx), void *ctx)
{
    g->on_input = fn;
    g->on_input_ctx = ctx;
}

bool cy_mqtt_dirty(const cy_mqtt *g)
{
    return g->dirty != NULL;
}

/* Every sweep (CY_SWEEP_MS) walks the connections while one of them needs
 * that precision: a held CONNECT, a throttled publisher, a socket not yet
 * logged in (connect_timeout), one whose reading is stopped; otherwise
 * (a quiet fleet) every SWEEP_IDLE_EVERY-th sweep does, which is still
 * precise enough for keep-alive (1.5 x keepalive s, at most a second late)
 * and for freeing idle buffers. The walk touches every connection's
 * memory: at 150,000 idle devices it was nearly all of the shards' CPU. */
#define SWEEP_IDLE_EVERY 4

void cy_mqtt_sweep(cy_mqtt *g, int64_t now)
{
    if (g->wss) cy_mqtt_ws_sweep(g, now);
    if (g->accept_paused) accept_pause(g, false);
    bool walk = g->sweep_all || ++g->sweeps % SWEEP_IDLE_EVERY == 0;
    g->sweep_all = false;
    for (cy_conn *c = walk ? g->conns : NULL; c; c = c->next) {
        if (c->delayed || c->throttled || c->paused || c->state == CONN_NEW) g->sweep_all = true;
        if (c->delayed) { /* a held CONNECT (last_rx: when the hold ends) */
            if (c->state == CONN_NEW && now >= c->last_rx && !g->stalled) {
                c->delayed = false;
                c->delay_served = true;
                c->last_rx = now; /* connect_timeout runs again from here */
                resume_input(c);
            }
            continue;
        }
        if (c->throttled && c->state == CONN_ACTIVE) {
            const cy_conn_v5 *x = c->v5;
            if (!g->stalled && (!x || cy_pub_rate_wait(&x->rate, g->cfg, now * 1000) == 0)) {
                c->throttled = false;
                c->last_rx = now; /* its silence was ours */
                resume_input(c);
            }
            continue;
        }
        if (c->state == CONN_NEW && now - c->last_rx > (int64_t)g->cfg->connect_timeout * 1000) {
            g->stats->connect_timeouts++;
            cy_conn_close(c, 0, "no CONNECT within connect_timeout");
        } else if (cy_conn_check_stall(c, now)) {
            /* closed: it read nothing of its output for max_output_stall */
        } else if (c->state == CONN_ACTIVE && c->keepalive && !c->paused &&
                   now - c->last_rx > (int64_t)c->keepalive * 1500) {
            /* (not while reading is stopped for back-pressure: that silence is ours) */
            g->stats->keepalive_timeouts++;
            cy_conn_close(c, CY_RC_KEEP_ALIVE_TIMEOUT, "keep-alive timeout");
        } else if (c->state == CONN_ACTIVE && c->out.cap && !cy_buf_size(&c->out) && !c->dirty &&
                   now - c->last_rx > 1000) {
            cy_buf_fini(&c->out); /* an idle connection keeps no output buffer */
        }
        if (c->ext && (c->state == CONN_ACTIVE || c->state == CONN_PROXY) && !c->dirty && !c->w &&
            now - c->last_rx > 1000) {
            cy_tls *t = cy_conn_ext_of(c)->tls;
            if (t && cy_tls_out(t)->cap && !cy_buf_size(cy_tls_out(t))) cy_buf_fini(cy_tls_out(t));
        }
    }
    cy_proxy_sweep(g, now);
    cy_connsum_tick(now, g->cfg->log_summary_interval, g->stats->connects_refused,
                    g->stats->clients_connected, g->stats->coap_online);
}

uint32_t cy_mqtt_connections(const cy_mqtt *g)
{
    return g->n_conns;
}

uint64_t cy_mqtt_progress(const cy_mqtt *g)
{
    return g->progress;
}

/* Only the sockets nobody reads are looked into. libuv reads a socket it
 * polls in the loop iteration where its input arrives, so while the loop
 * turns (the heartbeat says so) bytes can wait in the kernel only on a
 * socket whose reading is stopped. Of those, one paused for back-pressure
 * waits for its own client to read its output (on purpose, bounded by
 * max_output_stall), and one closing or handed over is no longer ours to
 * read. Any other is owed: the stall drill's, one accepted while stalled,
 * one a bug stopped. So a healthy shard makes no system call per
 * connection here (an ioctl costs ~3 us: one on each of 10k connections
 * would take ~30 ms of the loop), a stalled one an ioctl per connection. */
uint64_t cy_mqtt_owed_input(const cy_mqtt *g)
{
    if (g->stopping) return 0;
    uint64_t owed = 0;
    /* Walking 10k connections costs ~1 ms (a cache miss each): skipped
     * while libuv reads every one, the usual case. */
    for (const cy_conn *c = g->n_not_reading ? g->conns : NULL; c; c = c->next) {
        if (c->state == CONN_PROXY) owed += cy_proxy_owed(cy_conn_ext_of(c)->proxy);
        if (c->reading || c->paused || c->delayed || c->throttled ||
            (c->state != CONN_NEW && c->state != CONN_ACTIVE && c->state != CONN_PROXY))
            continue;
        int n = 0;
        if (c->fd >= 0 && ioctl(c->fd, FIONREAD, &n) == 0 && n > 0)
            owed++;
    }
    /* On a listening socket, TCP_INFO's tcpi_unacked is the length of its
     * accept queue (Linux): connections the kernel established and no
     * shard took yet. The socket is shared by every shard, so each counts
     * the same queue; any shard that accepts drains it. */
    struct tcp_info ti;
    socklen_t len = sizeof(ti);
    if (g->listening && getsockopt(g->listen_fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0)
        owed += ti.tcpi_unacked;
    len = sizeof(ti);
    if (g->listening && g->tls_open &&
        getsockopt(g->tls_listen_fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0)
        owed += ti.tcpi_unacked;
    return owed;
}

void cy_mqtt_stop(cy_mqtt *g)
{
    if (g->stopping) return;
    g->stopping = true;
    g->listening = false;
    cy_info(NULL, "stopping: closing %u connections", g->n_conns);
    for (cy_conn *c = g->conns; c; c = c->next) {
        c->clean_disconnect = true; /* a shutdown is not the client's failure */
        cy_conn_close(c, CY_RC_SERVER_SHUTTING_DOWN, NULL);
    }
    cy_proxy_stop(g);
    cy_mqtt_ws_stop(g);
    /* The watchers close; the set stays open for the connections that
     * close later (a handover the bus cancels), cy_mqtt_free frees them. */
    if (g->listen_fd >= 0) {
        uv_close((uv_handle_t *)&g->listener, NULL);
        close(g->listen_fd);
        g->listen_fd = -1;
    }
    if (g->tls_listen_fd >= 0) {
        uv_close((uv_handle_t *)&g->tls_listener, NULL);
        close(g->tls_listen_fd);
        g->tls_listen_fd = -1;
    }
    if (g->epfd >= 0) {
        uv_close((uv_handle_t *)&g->epoll, NULL);
        uv_close((uv_handle_t *)&g->reaper, NULL);
    }
}

void cy_mqtt_free(cy_mqtt *g)
{
    if (!g) return;
    /* Every connection is closed by now (cy_mqtt_stop, the last flush); any
     * left open is closed without a word. */
    while (g->conns) {
        cy_conn *c = g->conns;
        if (c->fd >= 0) io_close(c);
        c->dirty = false;
        g->closed = NULL; /* conn_free unlinks it from g->conns */
        conn_free(c);
    }
    if (g->epfd >= 0) close(g->epfd);
    if (g->reserve_fd >= 0) close(g->reserve_fd);
    cy_buf_fini(&g->scratch);
    cy_tls_ctx_unref(g->tls_ctx);
    cy_free(g->exts);
    cy_free(g->free_exts);
    cy_free(g);
}
