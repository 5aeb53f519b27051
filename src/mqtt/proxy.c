/* proxy: this shard as the TLS terminator of another shard's device.
 *
 * A TLS session cannot move to another process (no kernel TLS here), so
 * when a CONNECT read over TLS names a client of another shard, the shard
 * that accepted the connection keeps the session and hands the owner one
 * end of a socketpair(AF_UNIX, SOCK_STREAM) through the ordinary handover
 * (cy_cluster_handover, with the device's address and what its client
 * certificate proved), with the plaintext read so far. The owner serves it
 * as any connection: keep-alive, limits, sessions. From then on this file
 * pumps both ways:
 *
 *   device -> owner: what the session decrypts is written to our end of
 *     the pair (uv_try_write; what the socket does not take waits in `up`
 *     and goes by one uv_write at a time). Over max_output waiting, the
 *     device's socket is not read until half of it is written.
 *   owner -> device: what the pair gives is encrypted at once into the
 *     connection's TLS output and written by the pass's flush like any
 *     output. Over max_output of ciphertext waiting, the pair is not read
 *     until the device has taken half of it (the owner's own back-pressure
 *     then sees a slow client, as it would over TCP).
 *
 * An end closes the other: the owner closing the pair closes the device's
 * connection after what it sent (and a close_notify); the device failing
 * detaches the proxy from its connection, and the pair closes once the last
 * plaintext is written (at most connect_timeout later if the owner does not
 * read it). The device's end of input (a FIN or a close_notify: it may still
 * read) is passed on as one: once its last plaintext is written, our end of
 * the pair is shut down for writing, so the owner reads an end after the
 * device's last packets, answers them and closes, and its answers reach the
 * device before the close (the owner has connect_timeout to close). The socketpair's owner end is closed here once
 * the bus has passed it. A proxy is freed when both of its handles are
 * closed, which happens only after it was detached.
 *
 * The owner's end is a uv_tcp_t over an AF_UNIX socket on both sides:
 * libuv reads and writes any stream socket through it, only TCP_NODELAY
 * fails (and is not asked for on an adopted socketpair).
 *
 * Thread: the shard's loop.
 */
#include "mqtt/gateway_int.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

struct cy_proxy {
    uv_pipe_t pipe; /* our end of the socketpair */
    uv_tcp_t give;  /* the owner's end, until the bus has passed it on */
    cy_mqtt *g;
    cy_conn *c;            /* the device's TLS connection; NULL once it closed */
    cy_proxy *prev, *next; /* g->proxies */
    cy_buf up;             /* plaintext for the owner that the pair did not take yet */
    cy_buf wbuf;           /* the part of it uv_write is writing */
    uv_write_t wreq;
    int64_t detached_ms;   /* mono ms the device's connection closed; 0 while open */
    size_t handover_bytes; /* counted in g->preauth_bytes until the bus wrote them */
    unsigned owner;
    uint8_t version; /* of the CONNECT: a refusal answers in its form */
    uint8_t handles; /* pipe and give not closed yet */
    bool writing;    /* wreq in flight */
    bool reading;    /* libuv reads the pipe (g->n_not_reading counts it when not) */
    bool paused;     /* not read: the device's output is over max_output */
    bool pipe_closed;
    bool input_ended;  /* the device sent its last bytes (cy_proxy_end_input) */
    bool pipe_shut;    /* our end of the pair is shut down for writing */
    int64_t ended_ms;  /* mono ms of the device's end of input */
};

/* The device's input ended and all of it is written: pass the end on. */
static void shut_pipe(cy_proxy *p)
{
    uv_os_fd_t fd;
    if (!p->input_ended || p->pipe_shut || p->pipe_closed || p->writing || cy_buf_size(&p->up))
        return;
    p->pipe_shut = true;
    if (uv_fileno((const uv_handle_t *)&p->pipe, &fd) == 0) shutdown(fd, SHUT_WR);
}

/* ---- reading the pair ---- */

static void pipe_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void pipe_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void pipe_read_start(cy_proxy *p)
{
    if (p->reading || p->pipe_closed) return;
    if (uv_read_start((uv_stream_t *)&p->pipe, pipe_alloc, pipe_read) == 0) {
        p->reading = true;
        p->g->n_not_reading--;
    }
}

static void pipe_read_stop(cy_proxy *p)
{
    if (!p->reading) return;
    uv_read_stop((uv_stream_t *)&p->pipe);
    p->reading = false;
    p->g->n_not_reading++;
}

static void unlink_free(cy_proxy *p)
{
    cy_mqtt *g = p->g;
    if (p->prev)
        p->prev->next = p->next;
    else
        g->proxies = p->next;
    if (p->next) p->next->prev = p->prev;
    cy_buf_fini(&p->up);
    cy_buf_fini(&p->wbuf);
    cy_free(p);
}

static void handle_closed(uv_handle_t *h)
{
    cy_proxy *p = h->data;
    if (--p->handles == 0) unlink_free(p); /* detached already: see the file comment */
}

static void close_pipe(cy_proxy *p)
{
    if (p->pipe_closed) return;
    pipe_read_stop(p);
    p->pipe_closed = true;
    p->g->n_not_reading--; /* closed: no longer a socket anyone should read */
    uv_close((uv_handle_t *)&p->pipe, handle_closed);
}

static void pipe_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    cy_proxy *p = h->data;
    (void)suggested;
    if (p->g->rbuf_busy) {
        *buf = uv_buf_init(NULL, 0); /* never: reads do not nest (libuv retries) */
        return;
    }
    p->g->rbuf_busy = true;
    *buf = uv_buf_init((char *)p->g->rbuf, sizeof(p->g->rbuf));
}

/* Plaintext from the owner: encrypted for the device at once. */
static void pipe_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    cy_proxy *p = s->data;
    cy_mqtt *g = p->g;
    if (buf->base == (char *)g->rbuf) g->rbuf_busy = false;
    if (nread == 0 || nread == UV_ENOBUFS) return;
    g->progress++;
    cy_conn *c = p->c;
    if (nread < 0) {
        pipe_read_stop(p);
        if (c) {
            cy_debug(cy_conn_peer(c), "TLS connection closed by its owner shard %u", p->owner);
            cy_conn_close(c, 0, NULL); /* what it sent goes first, then close_notify */
        } else {
            close_pipe(p);
        }
        return;
    }
    if (!c) return;
    cy_tls *t = cy_conn_ext_of(c)->tls;
    int rc = cy_tls_write(t, (const uint8_t *)buf->base, (size_t)nread);
    if (rc) {
        cy_debug(cy_conn_peer(c), "TLS write for shard %u failed: %s", p->owner, cy_tls_why(t));
        cy_conn_close(c, 0, NULL);
        return;
    }
    cy_conn_mark_dirty(c);
    if (cy_conn_backlog(c) > g->cfg->max_output) {
        pipe_read_stop(p);
        p->paused = true;
        cy_debug(cy_conn_peer(c),
                 "pair from shard %u not read: the device reads slowly (%zu "
                 "bytes of output waiting, max_output %u)",
                 p->owner, cy_conn_backlog(c), g->cfg->max_output);
    }
}

void cy_proxy_resume(cy_proxy *p)
{
    if (!p || !p->paused || !p->c || p->g->stalled) return;
    if (cy_conn_backlog(p->c) > p->g->cfg->max_output / 2) return;
    p->paused = false;
    pipe_read_start(p);
}

/* ---- writing the pair ---- */

static int start_write(cy_proxy *p);

static void written(uv_write_t *req, int status)
{
    cy_proxy *p = req->data;
    cy_mqtt *g = p->g;
    p->writing = false;
    cy_buf_fini(&p->wbuf);
    if (status < 0) {
        if (p->c)
            cy_conn_close(p->c, 0, NULL); /* the owner's end is gone */
        else
            close_pipe(p);
        return;
    }
    if (cy_buf_size(&p->up) && start_write(p)) {
        if (p->c)
            cy_conn_close(p->c, 0, NULL);
        else
            close_pipe(p);
        return;
    }
    cy_conn *c = p->c;
    if (!c) {
        if (!p->writing) close_pipe(p); /* the device's last words are the owner's */
        return;
    }
    shut_pipe(p);
    if (c->paused && !g->stalled && !p->input_ended &&
        cy_buf_size(&p->up) + cy_buf_size(&p->wbuf) <= g->cfg->max_output / 2) {
        c->paused = false;
        c->last_rx = (int64_t)uv_now(g->loop);
        if (cy_conn_read_start(c)) cy_conn_close(c, 0, NULL);
    }
}

/* Write what waits in `up` (moved to wbuf). 0, or a libuv error. */
static int start_write(cy_proxy *p)
{
    if (p->writing || !cy_buf_size(&p->up)) return 0;
    if (p->pipe_closed) return UV_EPIPE;
    p->wbuf = p->up;
    cy_buf_init(&p->up);
    p->wreq.data = p;
    uv_buf_t b = uv_buf_init((char *)cy_buf_head(&p->wbuf), (unsigned)cy_buf_size(&p->wbuf));
    int rc = uv_write(&p->wreq, (uv_stream_t *)&p->pipe, &b, 1, written);
    if (rc) {
        cy_buf_fini(&p->wbuf);
        return rc;
    }
    p->writing = true;
    return 0;
}

int cy_proxy_up(cy_proxy *p, const uint8_t *data, size_t len)
{
    if (p->pipe_closed) return CY_EPIPE;
    if (!p->writing && !cy_buf_size(&p->up)) {
        uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
        int n = uv_try_write((uv_stream_t *)&p->pipe, &b, 1);
        if (n == UV_EAGAIN || n == UV_ENOSYS) n = 0;
        if (n < 0) return n;
        data += n;
        len -= (size_t)n;
    }
    return len ? cy_buf_append(&p->up, data, len) : 0;
}

void cy_proxy_kick(cy_proxy *p)
{
    cy_conn *c = p->c;
    if (start_write(p)) {
        if (c) cy_conn_close(c, 0, NULL);
        return;
    }
    cy_mqtt *g = p->g;
    if (c && !c->paused && cy_buf_size(&p->up) + cy_buf_size(&p->wbuf) > g->cfg->max_output) {
        cy_conn_read_stop(c);
        c->paused = true;
        c->paused_s = (uint16_t)(uv_now(g->loop) / 1000);
        cy_debug(cy_conn_peer(c), "reading stopped: shard %u reads its plaintext slowly", p->owner);
    }
}

/* ---- start and end ---- */

static void handed(void *arg, int status)
{
    cy_proxy *p = arg;
    cy_mqtt *g = p->g;
    g->preauth_bytes -= p->handover_bytes;
    p->handover_bytes = 0;
    uv_close((uv_handle_t *)&p->give, handle_closed); /* our copy of the owner's end */
    if (status < 0 && p->c) {
        char why[64];
        snprintf(why, sizeof(why), "handover to shard %u failed: %s", p->owner,
                 uv_strerror(status));
        cy_conn_refuse_unavailable(p->c, p->version, why);
    }
}

void cy_proxy_start(cy_conn *c, unsigned owner, const cy_mqtt_connect *cp, const cy_str *name,
                    const uint8_t *bytes, size_t len)
{
    cy_mqtt *g = c->g;
    uint8_t version = cp->version;
    const cy_str *id = cp->has_username ? &cp->username : &cp->client_id;
    char why[96];
    if (!cy_cluster_shard_ready(g->cluster, owner, why, sizeof(why))) {
        cy_conn_refuse_unavailable(c, version, why);
        return;
    }
    if (g->preauth_bytes + len > g->cfg->preauth_memory) {
        g->stats->limit_preauth++;
        cy_conn_refuse_unavailable(c, version, "preauth_memory spent on connections not logged in");
        return;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv)) {
        snprintf(why, sizeof(why), "socketpair: %s", strerror(errno));
        cy_conn_refuse_unavailable(c, version, why);
        return;
    }
    cy_proxy *p = cy_calloc(1, sizeof(*p));
    if (!p) {
        close(sv[0]);
        close(sv[1]);
        cy_conn_refuse_unavailable(c, version, "out of memory");
        return;
    }
    p->g = g;
    p->owner = owner;
    p->version = version;
    uv_pipe_init(g->loop, &p->pipe, 0);
    p->pipe.data = p;
    uv_tcp_init(g->loop, &p->give);
    p->give.data = p;
    p->handles = 2;
    p->next = g->proxies;
    if (g->proxies) g->proxies->prev = p;
    g->proxies = p;
    g->n_not_reading++; /* until pipe_read_start */
    int rc = uv_pipe_open(&p->pipe, sv[0]);
    if (rc) close(sv[0]);
    int rc2 = uv_tcp_open(&p->give, sv[1]);
    if (rc2) close(sv[1]);
    cy_handover_info info;
    memset(&info, 0, sizeof(info));
    struct sockaddr_storage peer;
    socklen_t sl = sizeof(peer);
    if (c->fd >= 0 && getpeername(c->fd, (struct sockaddr *)&peer, &sl) == 0)
        info.peer = (const struct sockaddr *)&peer;
    if (cy_conn_cert_is(c, id->p, id->len)) {
        info.cert_id = id->p;
        info.cert_id_len = id->len;
    }
    if (!rc && !rc2)
        rc = cy_cluster_handover(g->cluster, owner, &p->give, &info, bytes, len, handed, p);
    if (rc || rc2) {
        close_pipe(p);
        uv_close((uv_handle_t *)&p->give, handle_closed);
        int err = rc2 ? rc2 : rc; /* libuv's (-errno) or the bus's (CY_E*) */
        snprintf(why, sizeof(why), "handover to shard %u: %s", owner,
                 err > -4096 ? uv_strerror(err) : cy_strerror(err));
        cy_conn_refuse_unavailable(c, version, why);
        return;
    }
    p->handover_bytes = len;
    g->preauth_bytes += len;
    p->c = c;
    cy_conn_ext_of(c)->proxy = p;
    c->state = CONN_PROXY;
    pipe_read_start(p);
    cy_debug(cy_conn_peer(c), "TLS terminated here for shard %u, the owner of '%.*s'%s", owner,
             (int)(name->len > 64 ? 64 : name->len), name->p,
             info.cert_id_len ? " (its certificate names it)" : "");
}

unsigned cy_proxy_owner(const cy_proxy *p)
{
    return p->owner;
}

void cy_proxy_detach(cy_proxy *p)
{
    if (!p || !p->c) return;
    cy_mqtt *g = p->g;
    p->c = NULL;
    p->paused = false;
    p->detached_ms = (int64_t)uv_now(g->loop);
    pipe_read_stop(p); /* nobody to send its plaintext to */
    if (g->stopping || (!p->writing && !cy_buf_size(&p->up)) || start_write(p)) close_pipe(p);
    /* else: closed once the owner has the device's last bytes (written) */
}

uint64_t cy_proxy_owed(const cy_proxy *p)
{
    if (!p || !p->c || p->reading || p->paused || p->pipe_closed) return 0;
    int n = 0;
    uv_os_fd_t fd;
    return uv_fileno((const uv_handle_t *)&p->pipe, &fd) == 0 && ioctl(fd, FIONREAD, &n) == 0 &&
           n > 0;
}

void cy_proxy_stall(cy_mqtt *g)
{
    for (cy_proxy *p = g->proxies; p; p = p->next)
        if (p->c) pipe_read_stop(p);
}

bool cy_proxy_end_input(cy_proxy *p)
{
    if (!p || !p->c || p->pipe_closed || p->input_ended) return false;
    p->input_ended = true;
    p->ended_ms = (int64_t)uv_now(p->g->loop);
    cy_debug(cy_conn_peer(p->c), "TLS device's input ended: passed on to shard %u", p->owner);
    p->g->sweep_all = true; /* the owner's close is awaited at 250 ms precision */
    shut_pipe(p);
    return true;
}

void cy_proxy_sweep(cy_mqtt *g, int64_t now)
{
    int64_t limit = (int64_t)g->cfg->connect_timeout * 1000;
    for (cy_proxy *p = g->proxies; p; p = p->next) {
        /* A detached proxy whose owner does not read the device's last bytes. */
        if (!p->c && !p->pipe_closed && now - p->detached_ms > limit) close_pipe(p);
        /* A device whose input ended, and an owner that does not close. */
        if (p->c && p->input_ended && now - p->ended_ms > limit)
            cy_conn_close(p->c, 0, "its owner shard did not close after the device's end");
        else if (p->c && p->input_ended)
            g->sweep_all = true;
    }
}

void cy_proxy_stop(cy_mqtt *g)
{
    for (cy_proxy *p = g->proxies; p; p = p->next)
        close_pipe(p);
}
