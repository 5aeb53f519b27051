/* ws: MQTT over WebSocket (RFC 6455, subprotocol "mqtt"), the gateway's
 * side of a connection the HTTP API upgraded at GET /mqtt.
 *
 * The idea: a WebSocket connection is a bridge between the device's socket
 * and one end of a socketpair(AF_UNIX, SOCK_STREAM) whose other end is an
 * ordinary cy_conn of this gateway, as if the device had connected over
 * TCP. libwslay (a server context) does the framing: what the device sends
 * is read into the bridge, unframed (masking required, fragments joined,
 * pings answered, the close handshake done) and the payloads of its data
 * messages (binary; text too, though wslay holds text to UTF-8, which MQTT
 * rarely is: 1007) written to the pair as MQTT bytes; what the
 * cy_conn writes to the pair is queued as one binary message per read and
 * framed onto the device's socket. So the MQTT side is exactly the TCP one
 * (limits, keep-alive, sessions, the login rules), plain TCP connections
 * pay nothing for WebSocket, and when the CONNECT names another shard's
 * client the cy_conn hands its end of the pair over like any socket: this
 * shard stays the device's WebSocket terminator and the owner serves the
 * MQTT, as proxy.c does for TLS (here the socketpair exists from the start,
 * so the ordinary handover is all it takes).
 *
 * Limits: a data message may be at most max_packet_size + 4 KiB (MQTT.js
 * sends one packet per message; a bigger one is closed with 1009), and
 * until the first bytes come back from the MQTT side (the CONNACK: the
 * device logged in) at most max_connect_size + 4 KiB, with that budget
 * counted in the shard's preauth_memory. Back-pressure both ways: over
 * max_output bytes waiting for one side, the other side is not read until
 * half of it is written. The HTTP server keeps the upgraded connection in
 * its count (max_connections, max_per_address) until the bridge closes.
 *
 * Thread: the shard's loop.
 */
#include "mqtt/gateway_int.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "http/http.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <wslay/wslay.h>

#define WS_HEADROOM 4096u
#define WS_KEEP_MAX 16384u /* bytes of an emptied buffer kept for the next write */

struct cy_ws {
    uv_tcp_t sock;  /* the device's socket (a duplicate of the HTTP server's) */
    uv_pipe_t pair; /* our end of the socketpair to the MQTT connection */
    cy_mqtt *g;
    cy_http_upgraded *u; /* the HTTP server's handle, closed with the bridge */
    wslay_event_context_ptr wc;
    cy_ws *prev, *next; /* g->wss */
    const uint8_t *rd;  /* bytes read from the device that wslay has not taken */
    size_t rd_len;
    cy_buf down;   /* frames for the device not yet written */
    cy_buf down_w; /* the part of it a uv_write is writing */
    cy_buf up;     /* MQTT bytes for the pair not yet written */
    cy_buf up_w;
    uv_write_t down_req, up_req;
    size_t preauth;  /* counted in g->preauth_bytes until the device logged in */
    uint8_t handles; /* sock and pair not yet closed */
    bool down_writing, up_writing;
    bool sock_reading, pair_reading;
    bool pair_eof;     /* the MQTT side is gone: close once the device has our last frames */
    bool sock_eof;     /* the device's side ended: close once the MQTT side has its bytes */
    int64_t ending_ms; /* mono ms one side ended (pair_eof or sock_eof); 0 before */
    bool closing;
};

static void ws_close(cy_ws *w, const char *why);
static void pump(cy_ws *w);

/* ---- wslay's callbacks ---- */

static ssize_t on_recv(wslay_event_context_ptr wc, uint8_t *buf, size_t len, int flags, void *ud)
{
    (void)flags;
    cy_ws *w = ud;
    if (!w->rd_len) {
        wslay_event_set_error(wc, WSLAY_ERR_WOULDBLOCK);
        return -1;
    }
    size_t n = len < w->rd_len ? len : w->rd_len;
    memcpy(buf, w->rd, n);
    w->rd += n;
    w->rd_len -= n;
    return (ssize_t)n;
}

static ssize_t on_send(wslay_event_context_ptr wc, const uint8_t *data, size_t len, int flags,
                       void *ud)
{
    (void)flags;
    cy_ws *w = ud;
    if (cy_buf_append(&w->down, data, len)) {
        wslay_event_set_error(wc, WSLAY_ERR_CALLBACK_FAILURE);
        return -1;
    }
    return (ssize_t)len;
}

static void up_written(uv_write_t *req, int status);

/* MQTT bytes from the device for the pair. */
static int to_pair(cy_ws *w, const uint8_t *p, size_t len)
{
    if (w->pair_eof || !len) return 0;
    if (!w->up_writing && !cy_buf_size(&w->up)) {
        uv_buf_t b = uv_buf_init((char *)p, (unsigned)len);
        int n = uv_try_write((uv_stream_t *)&w->pair, &b, 1);
        if (n == (int)len) return 0;
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n != UV_EAGAIN) {
            return n;
        }
    }
    return cy_buf_append(&w->up, p, len);
}

static void on_msg(wslay_event_context_ptr wc, const struct wslay_event_on_msg_recv_arg *arg,
                   void *ud)
{
    (void)wc;
    cy_ws *w = ud;
    if (arg->opcode != WSLAY_BINARY_FRAME && arg->opcode != WSLAY_TEXT_FRAME) return;
    if (to_pair(w, arg->msg, arg->msg_length))
        wslay_event_set_error(wc, WSLAY_ERR_CALLBACK_FAILURE);
}

static int genmask(wslay_event_context_ptr wc, uint8_t *buf, size_t len, void *ud)
{
    (void)wc;
    (void)ud;
    memset(buf, 0, len); /* a server sends unmasked frames: never called */
    return 0;
}

static const struct wslay_event_callbacks callbacks = {
    on_recv, on_send, genmask, NULL, NULL, NULL, on_msg,
};

/* ---- the device's socket ---- */

/* A buffer written out: kept for the next write if small, else freed (an
 * idle WebSocket should not hold its busiest moment's memory). */
static void drained(cy_buf *b)
{
    if (b->cap > WS_KEEP_MAX)
        cy_buf_fini(b);
    else
        cy_buf_reset(b);
}

static void down_written(uv_write_t *req, int status)
{
    cy_ws *w = req->data;
    w->down_writing = false;
    drained(&w->down_w);
    if (status < 0) {
        ws_close(w, "write to the device failed");
        return;
    }
    pump(w);
}

static void up_written(uv_write_t *req, int status)
{
    cy_ws *w = req->data;
    w->up_writing = false;
    drained(&w->up_w);
    if (status < 0) w->pair_eof = true;
    pump(w);
}

static void sock_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void sock_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void pair_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void pair_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void sock_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    cy_ws *w = h->data;
    cy_mqtt *g = w->g;
    if (g->tls_rbuf_busy) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    g->tls_rbuf_busy = true; /* the ciphertext buffer serves as the frames' buffer */
    *buf = uv_buf_init((char *)g->tls_rbuf, sizeof(g->tls_rbuf));
}

/* Frames from the device in `bytes`: through wslay, MQTT bytes to the pair. */
static void feed(cy_ws *w, const uint8_t *bytes, size_t len)
{
    w->rd = bytes;
    w->rd_len = len;
    int rc = wslay_event_recv(w->wc);
    w->rd = NULL;
    w->rd_len = 0;
    if (rc) {
        ws_close(w, "WebSocket read failed");
        return;
    }
    pump(w);
}

static void sock_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    cy_ws *w = s->data;
    cy_mqtt *g = w->g;
    if (buf->base == (char *)g->tls_rbuf) g->tls_rbuf_busy = false;
    if (nread == 0 || nread == UV_ENOBUFS) return; /* no buffer now: read at the next wake-up */
    if (nread == UV_EOF) { /* what it sent before goes to the MQTT side first */
        uv_read_stop(s);
        w->sock_reading = false;
        w->sock_eof = true;
        pump(w);
        return;
    }
    if (nread < 0) {
        ws_close(w, uv_strerror((int)nread));
        return;
    }
    g->progress++;
    feed(w, (const uint8_t *)buf->base, (size_t)nread);
}

/* ---- the pair (the MQTT connection) ---- */

static void pair_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    cy_ws *w = h->data;
    cy_mqtt *g = w->g;
    if (g->rbuf_busy) {
        buf->base = NULL;
        buf->len = 0;
        return;
    }
    g->rbuf_busy = true;
    *buf = uv_buf_init((char *)g->rbuf, sizeof(g->rbuf));
}

static void logged_in(cy_ws *w)
{
    if (!w->preauth) return;
    w->g->preauth_bytes -= w->preauth;
    w->preauth = 0;
    wslay_event_config_set_max_recv_msg_length(w->wc,
                                               (uint64_t)w->g->cfg->max_packet_size + WS_HEADROOM);
}

static void pair_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    cy_ws *w = s->data;
    cy_mqtt *g = w->g;
    if (buf->base == (char *)g->rbuf) g->rbuf_busy = false;
    if (nread == 0 || nread == UV_ENOBUFS) return;
    if (nread < 0) {
        w->pair_eof = true;
        pump(w);
        return;
    }
    /* The first bytes back are the CONNACK (or a refusal, followed by the
     * pair's end): the stranger's budget is over either way. */
    logged_in(w);
    struct wslay_event_msg m = {WSLAY_BINARY_FRAME, (const uint8_t *)buf->base, (size_t)nread};
    if (wslay_event_queue_msg(w->wc, &m) && wslay_event_get_write_enabled(w->wc)) {
        ws_close(w, "out of memory");
        return;
    }
    pump(w);
}

/* ---- moving bytes ---- */

/* Write what waits both ways, start or stop reading each side for
 * back-pressure, and close the bridge once both ends are done. */
static void pump(cy_ws *w)
{
    if (w->closing) return;
    cy_mqtt *g = w->g;
    if ((w->pair_eof || w->sock_eof) && !w->ending_ms) w->ending_ms = (int64_t)uv_now(g->loop);
    if (wslay_event_want_write(w->wc) && wslay_event_send(w->wc)) {
        ws_close(w, "WebSocket write failed");
        return;
    }
    if (!w->down_writing && cy_buf_size(&w->down)) {
        uv_buf_t b = uv_buf_init((char *)cy_buf_head(&w->down), (unsigned)cy_buf_size(&w->down));
        int n = uv_try_write((uv_stream_t *)&w->sock, &b, 1);
        if (n > 0)
            cy_buf_consume(&w->down, (size_t)n);
        else if (n != UV_EAGAIN) {
            ws_close(w, uv_strerror(n));
            return;
        }
        if (!cy_buf_size(&w->down)) drained(&w->down);
        if (cy_buf_size(&w->down)) {
            cy_buf t = w->down_w;
            w->down_w = w->down;
            w->down = t;
            b = uv_buf_init((char *)cy_buf_head(&w->down_w), (unsigned)cy_buf_size(&w->down_w));
            w->down_req.data = w;
            if (uv_write(&w->down_req, (uv_stream_t *)&w->sock, &b, 1, down_written)) {
                ws_close(w, "write to the device failed");
                return;
            }
            w->down_writing = true;
        }
    }
    if (!w->up_writing && cy_buf_size(&w->up) && !w->pair_eof) {
        cy_buf t = w->up_w;
        w->up_w = w->up;
        w->up = t;
        uv_buf_t b = uv_buf_init((char *)cy_buf_head(&w->up_w), (unsigned)cy_buf_size(&w->up_w));
        w->up_req.data = w;
        if (uv_write(&w->up_req, (uv_stream_t *)&w->pair, &b, 1, up_written))
            w->pair_eof = true;
        else
            w->up_writing = true;
    }
    if (w->pair_eof && wslay_event_get_write_enabled(w->wc) && !wslay_event_get_close_sent(w->wc)) {
        /* The MQTT side closed: say so, then close once it is sent. */
        wslay_event_queue_close(w->wc, WSLAY_CODE_NORMAL_CLOSURE, NULL, 0);
        pump(w);
        return;
    }
    size_t down =
        cy_buf_size(&w->down) + cy_buf_size(&w->down_w) + wslay_event_get_queued_msg_length(w->wc);
    size_t up = cy_buf_size(&w->up) + cy_buf_size(&w->up_w);
    bool done_down = !w->down_writing && !cy_buf_size(&w->down) && !wslay_event_want_write(w->wc);
    bool done_up = w->pair_eof || (!w->up_writing && !cy_buf_size(&w->up));
    /* Both sides done: the close handshake (or the MQTT side's end) is
     * written, and the MQTT side has what the device sent before its end. */
    if (done_down && done_up && (w->pair_eof || !wslay_event_get_read_enabled(w->wc)) &&
        (wslay_event_get_close_sent(w->wc) || !wslay_event_get_write_enabled(w->wc))) {
        ws_close(w, NULL);
        return;
    }
    if (w->sock_eof && done_up) {
        ws_close(w, NULL);
        return;
    }
    /* Back-pressure: the device's socket is read while the pair takes what
     * it sends, the pair while the device takes what we frame. */
    bool read_sock = !w->sock_eof && up < g->cfg->max_output &&
                     wslay_event_get_read_enabled(w->wc) &&
                     (w->sock_reading ? true : up <= g->cfg->max_output / 2);
    if (read_sock != w->sock_reading) {
        if (read_sock)
            w->sock_reading = uv_read_start((uv_stream_t *)&w->sock, sock_alloc, sock_read) == 0;
        else {
            uv_read_stop((uv_stream_t *)&w->sock);
            w->sock_reading = false;
        }
    }
    bool read_pair = !w->pair_eof && down < g->cfg->max_output &&
                     (w->pair_reading ? true : down <= g->cfg->max_output / 2);
    if (read_pair != w->pair_reading) {
        if (read_pair)
            w->pair_reading = uv_read_start((uv_stream_t *)&w->pair, pair_alloc, pair_read) == 0;
        else {
            uv_read_stop((uv_stream_t *)&w->pair);
            w->pair_reading = false;
        }
    }
}

/* ---- lifetime ---- */

static void on_closed(uv_handle_t *h)
{
    cy_ws *w = h->data;
    if (--w->handles) return;
    cy_http_upgraded_close(w->u); /* our descriptor is closed: MHD closes its own */
    wslay_event_context_free(w->wc);
    cy_buf_fini(&w->down);
    cy_buf_fini(&w->down_w);
    cy_buf_fini(&w->up);
    cy_buf_fini(&w->up_w);
    cy_free(w);
}

static void ws_close(cy_ws *w, const char *why)
{
    if (w->closing) return;
    w->closing = true;
    cy_mqtt *g = w->g;
    if (why) cy_debug(NULL, "WebSocket connection closed: %s", why);
    if (w->preauth) g->preauth_bytes -= w->preauth;
    w->preauth = 0;
    if (w->prev)
        w->prev->next = w->next;
    else
        g->wss = w->next;
    if (w->next) w->next->prev = w->prev;
    uv_close((uv_handle_t *)&w->sock, on_closed);
    uv_close((uv_handle_t *)&w->pair, on_closed);
}

void cy_mqtt_ws_accept(cy_mqtt *g, int fd, const uint8_t *extra, size_t len,
                       const struct sockaddr *peer, cy_http_upgraded *u)
{
    int sv[2] = {-1, -1};
    size_t budget = (size_t)g->cfg->max_connect_size + WS_HEADROOM;
    cy_ws *w = NULL;
    if (g->stopping) goto fail;
    if (g->n_conns > g->cfg->max_connections + 64u) { /* as at a TCP accept */
        g->stats->limit_connections++;
        goto fail;
    }
    if (g->preauth_bytes + budget > g->cfg->preauth_memory) {
        g->stats->limit_preauth++;
        cy_debug(NULL, /* a stranger repeats it at will: counted, not logged */
                 "WebSocket refused: preauth_memory (%u bytes) spent on sockets that "
                 "have not logged in",
                 g->cfg->preauth_memory);
        goto fail;
    }
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv)) {
        cy_warn(NULL, "WebSocket: socketpair: %s", strerror(errno));
        goto fail;
    }
    w = cy_calloc(1, sizeof(*w));
    if (!w || wslay_event_context_server_init(&w->wc, &callbacks, w)) goto fail;
    w->g = g;
    w->u = u;
    uv_tcp_init(g->loop, &w->sock);
    uv_pipe_init(g->loop, &w->pair, 0);
    w->sock.data = w->pair.data = w;
    w->handles = 2;
    cy_buf_init(&w->down);
    cy_buf_init(&w->down_w);
    cy_buf_init(&w->up);
    cy_buf_init(&w->up_w);
    w->next = g->wss;
    if (g->wss) g->wss->prev = w;
    g->wss = w;
    w->preauth = budget;
    g->preauth_bytes += budget;
    wslay_event_config_set_max_recv_msg_length(w->wc, budget);
    int rc = uv_tcp_open(&w->sock, fd);
    if (rc == 0) {
        fd = -1;
        uv_tcp_nodelay(&w->sock, 1);
        rc = uv_pipe_open(&w->pair, sv[0]);
    }
    if (rc) {
        if (fd >= 0) close(fd);
        close(sv[0]);
        close(sv[1]);
        ws_close(w, uv_strerror(rc));
        return;
    }
    /* The MQTT connection, at the pair's other end, as if accepted. */
    if (cy_conn_open_pair(g, sv[1], peer)) {
        ws_close(w, "out of memory");
        return;
    }
    if (len) {
        feed(w, extra, len);
        return;
    }
    pump(w);
    return;
fail:
    if (w) {
        if (w->wc) wslay_event_context_free(w->wc);
        cy_free(w);
    }
    if (sv[0] >= 0) close(sv[0]);
    if (sv[1] >= 0) close(sv[1]);
    if (fd >= 0) close(fd);
    cy_http_upgraded_close(u);
}

void cy_mqtt_ws_sweep(cy_mqtt *g, int64_t now)
{
    /* One side ended and the other does not take our last bytes (a device
     * that stopped reading, say): closed after connect_timeout, so that it
     * holds neither the bridge nor its HTTP connection. */
    int64_t limit = (int64_t)g->cfg->connect_timeout * 1000;
    for (cy_ws *w = g->wss, *next; w; w = next) {
        next = w->next;
        if (w->ending_ms && now - w->ending_ms > limit)
            ws_close(w, "its last bytes not taken within connect_timeout");
    }
}

void cy_mqtt_ws_stop(cy_mqtt *g)
{
    while (g->wss)
        ws_close(g->wss, NULL);
}
