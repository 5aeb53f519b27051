/* coap_bench: a CoAP request-load generator (many devices, confirmable
 * requests), with an MQTT QoS 1 mode of the same shape for comparison.
 *
 * One process, one thread, one level-triggered epoll set. --clients N
 * clients, each with its own socket (so its own source port: a CoAP server
 * answers the address it heard, and cyan keys a plain-CoAP device by the id
 * in its Uri-Query but answers that address), each a device, each keeping
 * --window W requests outstanding (default 1: RFC 7252's NSTART). As soon
 * as a request is answered the client sends the next, so the offered load
 * is as much as the server answers: a closed loop.
 *
 * CoAP (--proto coap): a CON POST to --path (Uri-Path segments, default
 * "e/bench": an event of the device in cyan's convention) with Uri-Query
 * "id=<device id>" and a --size byte payload. The token (8 bytes) is the
 * send time (CLOCK_MONOTONIC ns) of the request's first transmission; the
 * message id (sequential per client) finds the slot, and the token must
 * match it. A request not acknowledged is retransmitted as RFC 7252 4.2
 * says: after ACK_TIMEOUT (2 s) times a random factor up to 1.5, doubling,
 * at most MAX_RETRANSMIT (4) times; then it times out and the slot is
 * reused. An empty ACK stops the retransmissions and the request waits for
 * its separate response (matched by token; a CON one is acknowledged).
 * Every response ends its request: 2.xx counts as done, any other code is
 * counted by code (errors), a RST as "rst", a piggybacked answer with
 * another token as "stale" (the server's saved answer to an earlier message
 * with the same id: a server keeps those for EXCHANGE_LIFETIME, 247 s, so a
 * second run on the same devices within that time gives --mid_base, the
 * first message id of every client, apart from the first run's; default: a
 * random one per client).
 *
 * MQTT (--proto mqtt): a TCP connection per device (MQTT 3.1.1, clean
 * session, client id and user = device id, password = its secret), each
 * keeping W QoS 1 PUBLISHes outstanding on devices/<id>/events/<last path
 * segment>; the round trip is PUBLISH written to PUBACK read.
 *
 * Devices: --ids FILE, one per line "<id> [secret]" (the first N lines are
 * used; fewer lines are reused round robin: never for cyan, whose devices
 * must be distinct), or else ids "<--id_prefix><i>".
 *
 * Timing: --warmup seconds of traffic first, then --duration measured
 * seconds, then sending stops and answers are awaited for at most --drain
 * seconds. Counted in the measured window: answers received (done/s is
 * 2.xx answers over the window), round trips of those (from the first
 * transmission, so a retransmitted request counts its wait), the
 * retransmissions sent, timeouts, and errors by code. With --server_pid,
 * the CPU time (user + system) of that process and its children (cyan's
 * shards) over the window, from /proc; and the generator's own (gen_busy
 * near 1.00 means the generator set the pace, not the server).
 *
 * Output: one line "RESULT workload=W server=S value=<done/s> unit=req/s
 * key=value..." on stdout; diagnostics on stderr. Exit status 0; 1 on usage
 * errors; 2 when the run failed (nothing answered, connections refused, a
 * setup timeout). An alarm() ends the process whatever happens.
 */
#define _GNU_SOURCE
#include "coap/codec.h"
#include "procstat.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define ACK_TIMEOUT_NS 2000000000LL /* RFC 7252 4.8 */
#define MAX_RETRANSMIT 4
#define CONNECTING_MAX 256 /* MQTT: TCP connects in progress at once */
#define RBUF 4096
#define MAX_ID 128

enum { P_COAP, P_MQTT };

typedef struct slot {
    bool busy;
    bool acked;      /* an empty ACK came: the response comes separately */
    uint8_t retx;    /* retransmissions sent */
    uint16_t mid;    /* CoAP message id, or MQTT packet id */
    int64_t sent_ns; /* first transmission (also the token) */
    int64_t due_ns;  /* next retransmission */
    int64_t wait_ns; /* the current timeout */
} slot;

typedef struct client {
    int fd;
    uint32_t idx;
    bool ready;               /* MQTT: CONNACK accepted */
    bool connecting, wantout; /* MQTT: connect() in progress; EPOLLOUT registered */
    uint16_t next_mid;
    uint32_t outstanding;
    slot *slots;  /* window of them */
    uint8_t *msg; /* CoAP: the request (mid and token patched per send); MQTT: the PUBLISH */
    size_t msg_len;
    size_t pid_at; /* MQTT: offset of the packet id in msg */
    char id[MAX_ID], secret[MAX_ID];
    uint8_t in[RBUF]; /* MQTT: an incomplete packet */
    size_t in_len;
    uint8_t *out; /* MQTT: bytes not yet written */
    size_t out_len, out_cap;
} client;

static struct {
    int proto;
    const char *host;
    int port;
    int clients;
    uint32_t window;
    const char *path;
    const char *ids_file;
    const char *id_prefix;
    bool query;
    int size;
    double duration, warmup, drain, setup_timeout;
    int server_pid;
    long mid_base; /* first message id of every client; -1: random per client */
    const char *workload, *server;
} o = {
    .proto = P_COAP,
    .host = "127.0.0.1",
    .port = 5683,
    .clients = 2000,
    .window = 1,
    .path = "e/bench",
    .id_prefix = "bench-",
    .query = true,
    .size = 16,
    .duration = 10,
    .warmup = 1,
    .drain = 1,
    .setup_timeout = 60,
    .mid_base = -1,
    .workload = NULL,
    .server = "?",
};

/* ---- counters ---- */
static struct {
    uint64_t sent, done, errors, rst, stale, retx, timeouts, bad, dup_acks, sep;
    uint64_t by_code[256];
} win, all; /* win: in the measured window; all: the whole run */
static uint32_t *lat_us;
static size_t lat_n, lat_cap;
static int64_t t_meas0, t_meas1; /* the measured window (ns) */
static bool sending = true;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static bool in_window(int64_t t)
{
    return t >= t_meas0 && t < t_meas1;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: coap_bench [--proto coap|mqtt] [--host 127.0.0.1] [--port 5683]\n"
            "  [--clients 2000] [--window 1] [--path e/bench] [--ids FILE | --id_prefix P]\n"
            "  [--no_query] [--size 16] [--duration 10] [--warmup 1] [--drain 1]\n"
            "  [--setup_timeout 60] [--server_pid PID] [--mid_base N] [--workload W]\n"
            "  [--server S]\n");
    exit(1);
}

static void die(const char *what)
{
    fprintf(stderr, "coap_bench: %s: %s\n", what, strerror(errno));
    exit(2);
}

/* ---- CPU time of the server (and its children) and of ourselves ---- */

/* CPU seconds of the server and its descendants (cyan's shards and
 * monitor), read from /proc (procstat.h). */
static double server_cpu(void)
{
    if (o.server_pid <= 0) return 0;
    int pids[256];
    int n = ps_family(o.server_pid, pids, (int)(sizeof(pids) / sizeof(pids[0])));
    return ps_cpu_s(pids, n);
}

static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

/* ---- devices ---- */

static void load_ids(client *cs)
{
    if (!o.ids_file) {
        for (int i = 0; i < o.clients; i++)
            snprintf(cs[i].id, sizeof(cs[i].id), "%s%d", o.id_prefix, i);
        return;
    }
    FILE *f = fopen(o.ids_file, "r");
    if (!f) die(o.ids_file);
    char line[512];
    int n = 0;
    while (n < o.clients && fgets(line, sizeof(line), f)) {
        char id[MAX_ID], secret[MAX_ID] = "";
        if (sscanf(line, "%127s %127s", id, secret) < 1) continue;
        snprintf(cs[n].id, sizeof(cs[n].id), "%s", id);
        snprintf(cs[n].secret, sizeof(cs[n].secret), "%s", secret);
        n++;
    }
    fclose(f);
    if (n == 0) {
        fprintf(stderr, "coap_bench: no ids in %s\n", o.ids_file);
        exit(1);
    }
    if (n < o.clients)
        fprintf(stderr, "coap_bench: %d ids for %d clients: ids are reused\n", n, o.clients);
    for (int i = n; i < o.clients; i++) {
        memcpy(cs[i].id, cs[i % n].id, sizeof(cs[i].id));
        memcpy(cs[i].secret, cs[i % n].secret, sizeof(cs[i].secret));
    }
}

/* ---- latency samples ---- */

static void sample(int64_t rtt_ns)
{
    if (lat_n == lat_cap) {
        size_t cap = lat_cap ? lat_cap * 2 : 1 << 20;
        uint32_t *n = realloc(lat_us, cap * sizeof(*n));
        if (!n) return;
        lat_us = n;
        lat_cap = cap;
    }
    int64_t us = rtt_ns / 1000;
    lat_us[lat_n++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static double pct(double q)
{
    if (!lat_n) return 0;
    size_t i = (size_t)(q * (double)lat_n);
    if (i >= lat_n) i = lat_n - 1;
    return lat_us[i];
}

/* A request of slot s ended at t with code (CODE_RST: a RST; CODE_STALE: an
 * answer with another token, that is the server's saved answer to an
 * earlier message with this id). */
#define CODE_RST 0xff
#define CODE_STALE 0xfe
static void finish(slot *s, uint8_t code, int64_t t)
{
    bool w = in_window(t);
    s->busy = false;
    if (code == CODE_RST) {
        all.rst++;
        if (w) win.rst++;
    } else if (code == CODE_STALE) {
        all.stale++;
        if (w) win.stale++;
    } else if (CY_COAP_CLASS(code) == 2) {
        all.done++;
        if (w) {
            win.done++;
            sample(t - s->sent_ns);
        }
    } else {
        all.errors++;
        all.by_code[code]++;
        if (w) {
            win.errors++;
            win.by_code[code]++;
        }
    }
}

/* ---- CoAP ---- */

static void coap_prepare(client *c)
{
    uint8_t buf[1500];
    static const uint8_t tok0[8];
    cy_coap_writer w;
    cy_coap_w_init(&w, buf, sizeof(buf), CY_COAP_CON, CY_COAP_POST, 0, tok0, 8);
    const char *p = o.path;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        cy_coap_w_opt(&w, CY_COAP_OPT_URI_PATH, p, n);
        p += n;
        if (*p == '/') p++;
    }
    if (o.query) {
        char q[MAX_ID + 4];
        int n = snprintf(q, sizeof(q), "id=%s", c->id);
        cy_coap_w_opt(&w, CY_COAP_OPT_URI_QUERY, q, (size_t)n);
    }
    uint8_t payload[1024];
    for (int i = 0; i < o.size; i++)
        payload[i] = (uint8_t)('a' + (c->idx + (uint32_t)i) % 26);
    cy_coap_w_payload(&w, payload, (size_t)o.size);
    size_t len;
    if (cy_coap_w_end(&w, &len)) {
        fprintf(stderr, "coap_bench: the request does not fit\n");
        exit(1);
    }
    c->msg = malloc(len);
    if (!c->msg) die("malloc");
    memcpy(c->msg, buf, len);
    c->msg_len = len;
}

static void coap_put(client *c, const slot *s)
{
    c->msg[2] = (uint8_t)(s->mid >> 8);
    c->msg[3] = (uint8_t)s->mid;
    uint64_t tok = (uint64_t)s->sent_ns;
    for (int i = 0; i < 8; i++)
        c->msg[4 + i] = (uint8_t)(tok >> (56 - 8 * i));
    ssize_t n = send(c->fd, c->msg, c->msg_len, MSG_DONTWAIT);
    if (n < 0 && errno != EAGAIN && errno != ECONNREFUSED) die("send");
    /* EAGAIN or a refusal (ICMP): lost like a datagram; the timer resends it */
}

static void coap_send_new(client *c, slot *s, int64_t t)
{
    s->busy = true;
    s->acked = false;
    s->retx = 0;
    s->mid = c->next_mid++;
    s->sent_ns = t;
    s->wait_ns = ACK_TIMEOUT_NS + (int64_t)(random() % (ACK_TIMEOUT_NS / 2));
    s->due_ns = t + s->wait_ns;
    all.sent++;
    if (in_window(t)) win.sent++;
    coap_put(c, s);
}

static void fill(client *c, int64_t t);

static void coap_read(client *c, int64_t t)
{
    uint8_t b[1500];
    ssize_t n = recv(c->fd, b, sizeof(b), MSG_DONTWAIT);
    if (n < 0) {
        if (errno == EAGAIN || errno == ECONNREFUSED) return;
        die("recv");
    }
    if (n < 4 || (b[0] >> 6) != 1) {
        all.bad++;
        return;
    }
    uint8_t type = (b[0] >> 4) & 3, tkl = b[0] & 15, code = b[1];
    uint16_t mid = (uint16_t)(b[2] << 8 | b[3]);
    if (tkl > 8 || (size_t)n < 4u + tkl) {
        all.bad++;
        return;
    }
    uint64_t tok = 0;
    for (int i = 0; i < tkl; i++)
        tok = tok << 8 | b[4 + i];
    if (type == CY_COAP_ACK || type == CY_COAP_RST) {
        slot *s = NULL;
        for (uint32_t i = 0; i < o.window; i++)
            if (c->slots[i].busy && !c->slots[i].acked && c->slots[i].mid == mid) s = &c->slots[i];
        if (!s) { /* an answer to a retransmission already answered */
            all.dup_acks++;
            return;
        }
        if (type == CY_COAP_RST) {
            finish(s, CODE_RST, t);
        } else if (code == CY_COAP_EMPTY) {
            s->acked = true; /* a separate response follows */
            all.sep++;
            return;
        } else if (tkl != 8 || tok != (uint64_t)s->sent_ns) {
            finish(s, CODE_STALE, t); /* a piggybacked response carries the request's token */
        } else {
            finish(s, code, t);
        }
    } else { /* CON or NON: a separate response (or a request: not ours) */
        if (type == CY_COAP_CON) {
            uint8_t ack[4];
            size_t k = cy_coap_empty(ack, CY_COAP_ACK, mid);
            (void)send(c->fd, ack, k, MSG_DONTWAIT);
        }
        slot *s = NULL;
        for (uint32_t i = 0; i < o.window; i++)
            if (c->slots[i].busy && tkl == 8 && (uint64_t)c->slots[i].sent_ns == tok)
                s = &c->slots[i];
        if (!s || CY_COAP_CLASS(code) < 2) {
            all.bad++;
            return;
        }
        finish(s, code, t);
    }
    c->outstanding--;
    fill(c, t);
}

/* Retransmissions and timeouts of every client. */
static void coap_timers(client *cs, int64_t t)
{
    for (int i = 0; i < o.clients; i++) {
        client *c = &cs[i];
        if (!c->outstanding) continue;
        for (uint32_t k = 0; k < o.window; k++) {
            slot *s = &c->slots[k];
            if (!s->busy || t < s->due_ns) continue;
            if (s->acked || s->retx >= MAX_RETRANSMIT) { /* gave up */
                all.timeouts++;
                if (in_window(t)) win.timeouts++;
                s->busy = false;
                c->outstanding--;
                fill(c, t);
                continue;
            }
            s->retx++;
            s->wait_ns *= 2;
            s->due_ns = t + s->wait_ns;
            all.retx++;
            if (in_window(t)) win.retx++;
            coap_put(c, s);
        }
    }
}

/* ---- MQTT ---- */

static void put16(uint8_t *p, size_t n)
{
    p[0] = (uint8_t)(n >> 8);
    p[1] = (uint8_t)n;
}

static size_t put_rl(uint8_t *p, size_t n)
{
    size_t k = 0;
    do {
        uint8_t d = n % 128;
        n /= 128;
        p[k++] = (uint8_t)(d | (n ? 128 : 0));
    } while (n);
    return k;
}

static void out_add(client *c, const uint8_t *p, size_t n)
{
    if (c->out_len + n > c->out_cap) {
        size_t cap = (c->out_len + n) * 2;
        uint8_t *b = realloc(c->out, cap);
        if (!b) die("realloc");
        c->out = b;
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

static int ep_fd;

static void out_flush(client *c)
{
    size_t off = 0;
    while (off < c->out_len) {
        ssize_t n = write(c->fd, c->out + off, c->out_len - off);
        if (n < 0) {
            if (errno == EAGAIN) break;
            if (errno == EINTR) continue;
            die("write");
        }
        off += (size_t)n;
    }
    memmove(c->out, c->out + off, c->out_len - off);
    c->out_len -= off;
    bool want = c->out_len > 0;
    if (want != c->wantout) {
        struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = c};
        if (epoll_ctl(ep_fd, EPOLL_CTL_MOD, c->fd, &ev)) die("epoll_ctl");
        c->wantout = want;
    }
}

static void mqtt_prepare(client *c)
{
    /* PUBLISH QoS 1: topic devices/<id>/events/<last segment of --path> */
    const char *name = strrchr(o.path, '/');
    name = name ? name + 1 : o.path;
    char topic[512];
    int tl = snprintf(topic, sizeof(topic), "devices/%s/events/%s", c->id, name);
    size_t body = 2 + (size_t)tl + 2 + (size_t)o.size;
    uint8_t *m = malloc(5 + body);
    if (!m) die("malloc");
    size_t k = 0;
    m[k++] = 0x32;
    k += put_rl(m + k, body);
    put16(m + k, (size_t)tl);
    memcpy(m + k + 2, topic, (size_t)tl);
    k += 2 + (size_t)tl;
    c->pid_at = k;
    k += 2;
    for (int i = 0; i < o.size; i++)
        m[k++] = (uint8_t)('a' + (c->idx + (uint32_t)i) % 26);
    c->msg = m;
    c->msg_len = k;
}

static void mqtt_connect_packet(client *c)
{
    uint8_t b[512];
    size_t il = strlen(c->id), pl = strlen(c->secret);
    size_t body = 10 + 2 + il + 2 + il + 2 + pl, k = 0;
    b[k++] = 0x10;
    k += put_rl(b + k, body);
    memcpy(b + k, "\0\4MQTT\4\xc2\0\x3c", 10); /* level 4, user+pass+clean, keepalive 60 */
    k += 10;
    put16(b + k, il);
    memcpy(b + k + 2, c->id, il);
    k += 2 + il;
    put16(b + k, il);
    memcpy(b + k + 2, c->id, il);
    k += 2 + il;
    put16(b + k, pl);
    memcpy(b + k + 2, c->secret, pl);
    k += 2 + pl;
    out_add(c, b, k);
}

static void mqtt_send_new(client *c, slot *s, int64_t t)
{
    s->busy = true;
    s->acked = false;
    s->retx = 0;
    if (++c->next_mid == 0) c->next_mid = 1;
    s->mid = c->next_mid;
    s->sent_ns = t;
    all.sent++;
    if (in_window(t)) win.sent++;
    put16(c->msg + c->pid_at, s->mid);
    out_add(c, c->msg, c->msg_len);
}

static void fill(client *c, int64_t t)
{
    if (!sending || (o.proto == P_MQTT && !c->ready)) return;
    for (uint32_t k = 0; k < o.window && c->outstanding < o.window; k++) {
        slot *s = &c->slots[k];
        if (s->busy) continue;
        c->outstanding++;
        if (o.proto == P_COAP)
            coap_send_new(c, s, t);
        else
            mqtt_send_new(c, s, t);
    }
    if (o.proto == P_MQTT && c->out_len) out_flush(c);
}

static int n_ready, n_connecting;

static void mqtt_read(client *c, int64_t t)
{
    ssize_t n = read(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return;
        fprintf(stderr, "coap_bench: %s: read: %s\n", c->id, strerror(errno));
        exit(2);
    }
    if (n == 0) {
        fprintf(stderr, "coap_bench: %s: the server closed the connection\n", c->id);
        exit(2);
    }
    c->in_len += (size_t)n;
    size_t p = 0;
    while (c->in_len - p >= 2) {
        size_t rl = 0, mul = 1, k = p + 1;
        bool whole = false;
        while (k < c->in_len && k - p <= 4) {
            rl += (size_t)(c->in[k] & 127) * mul;
            mul *= 128;
            if (!(c->in[k++] & 128)) {
                whole = true;
                break;
            }
        }
        if (!whole || k + rl > c->in_len) break;
        uint8_t type = c->in[p] >> 4;
        if (type == 2) { /* CONNACK */
            if (rl < 2 || c->in[k + 1] != 0) {
                fprintf(stderr, "coap_bench: %s: CONNACK refused (%d)\n", c->id,
                        rl >= 2 ? c->in[k + 1] : -1);
                exit(2);
            }
            c->ready = true;
            n_ready++;
        } else if (type == 4 && rl >= 2) { /* PUBACK */
            uint16_t pid = (uint16_t)(c->in[k] << 8 | c->in[k + 1]);
            slot *s = NULL;
            for (uint32_t i = 0; i < o.window; i++)
                if (c->slots[i].busy && c->slots[i].mid == pid) s = &c->slots[i];
            if (s) {
                finish(s, CY_COAP_CHANGED, t);
                c->outstanding--;
            } else {
                all.bad++;
            }
        } else if (type == 14) {
            fprintf(stderr, "coap_bench: %s: DISCONNECT from the server\n", c->id);
            exit(2);
        }
        p = k + rl;
    }
    memmove(c->in, c->in + p, c->in_len - p);
    c->in_len -= p;
    if (c->in_len == sizeof(c->in)) {
        fprintf(stderr, "coap_bench: %s: a packet over %d bytes\n", c->id, RBUF);
        exit(2);
    }
    fill(c, t);
}

static struct sockaddr_storage srv;
static socklen_t srv_len;

static void mqtt_start_connect(client *c)
{
    c->fd = socket(srv.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(c->fd, (struct sockaddr *)&srv, srv_len) < 0 && errno != EINPROGRESS)
        die("connect");
    c->connecting = true;
    c->wantout = true;
    n_connecting++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    if (epoll_ctl(ep_fd, EPOLL_CTL_ADD, c->fd, &ev)) die("epoll_ctl");
}

static void mqtt_writable(client *c)
{
    if (c->connecting) {
        int err = 0;
        socklen_t l = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err) {
            fprintf(stderr, "coap_bench: connect: %s\n", strerror(err));
            exit(2);
        }
        c->connecting = false;
        n_connecting--;
        mqtt_connect_packet(c);
    }
    out_flush(c);
}

/* ---- main ---- */

static void on_alarm(int sig)
{
    (void)sig;
    static const char m[] = "coap_bench: alarm: the run took too long\n";
    (void)!write(2, m, sizeof(m) - 1);
    _exit(2);
}

static void parse_args(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2)) usage();
        a += 2;
        if (!strcmp(a, "no_query")) {
            o.query = false;
            continue;
        }
        if (i + 1 >= argc) usage();
        const char *v = argv[++i];
        if (!strcmp(a, "proto")) {
            if (!strcmp(v, "coap"))
                o.proto = P_COAP;
            else if (!strcmp(v, "mqtt"))
                o.proto = P_MQTT;
            else
                usage();
        } else if (!strcmp(a, "host"))
            o.host = v;
        else if (!strcmp(a, "port"))
            o.port = atoi(v);
        else if (!strcmp(a, "clients"))
            o.clients = atoi(v);
        else if (!strcmp(a, "window"))
            o.window = (uint32_t)atoi(v);
        else if (!strcmp(a, "path"))
            o.path = v;
        else if (!strcmp(a, "ids"))
            o.ids_file = v;
        else if (!strcmp(a, "id_prefix"))
            o.id_prefix = v;
        else if (!strcmp(a, "size"))
            o.size = atoi(v);
        else if (!strcmp(a, "duration"))
            o.duration = atof(v);
        else if (!strcmp(a, "warmup"))
            o.warmup = atof(v);
        else if (!strcmp(a, "drain"))
            o.drain = atof(v);
        else if (!strcmp(a, "setup_timeout"))
            o.setup_timeout = atof(v);
        else if (!strcmp(a, "server_pid"))
            o.server_pid = atoi(v);
        else if (!strcmp(a, "mid_base"))
            o.mid_base = atol(v);
        else if (!strcmp(a, "workload"))
            o.workload = v;
        else if (!strcmp(a, "server"))
            o.server = v;
        else
            usage();
    }
    if (o.clients < 1 || o.window < 1 || o.window > 1024 || o.size < 0 || o.size > 1024 ||
        o.duration <= 0 || o.warmup < 0 || o.drain < 0 || o.port <= 0 || o.port > 65535 ||
        !*o.path || o.path[0] == '/')
        usage();
    if (!o.workload) o.workload = o.proto == P_COAP ? "coap_con" : "mqtt_qos1";
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm((unsigned)(o.setup_timeout + o.warmup + o.duration + o.drain + 30));
    srandom((unsigned)now_ns());

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)o.clients + 64) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    memset(&srv, 0, sizeof(srv));
    struct sockaddr_in *s4 = (struct sockaddr_in *)&srv;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&srv;
    if (inet_pton(AF_INET, o.host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)o.port);
        srv_len = sizeof(*s4);
    } else if (inet_pton(AF_INET6, o.host, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)o.port);
        srv_len = sizeof(*s6);
    } else {
        fprintf(stderr, "coap_bench: --host takes a numeric address\n");
        return 1;
    }

    client *cs = calloc((size_t)o.clients, sizeof(*cs));
    if (!cs) die("calloc");
    load_ids(cs);
    ep_fd = epoll_create1(EPOLL_CLOEXEC);
    if (ep_fd < 0) die("epoll_create1");
    for (int i = 0; i < o.clients; i++) {
        client *c = &cs[i];
        c->idx = (uint32_t)i;
        c->next_mid = o.mid_base >= 0 ? (uint16_t)o.mid_base : (uint16_t)random();
        c->slots = calloc(o.window, sizeof(slot));
        if (!c->slots) die("calloc");
        c->fd = -1;
        if (o.proto == P_COAP) {
            coap_prepare(c);
            c->fd = socket(srv.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
            if (c->fd < 0) die("socket");
            /* connected: its own port, and only the server's datagrams */
            if (connect(c->fd, (struct sockaddr *)&srv, srv_len)) die("connect");
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
            if (epoll_ctl(ep_fd, EPOLL_CTL_ADD, c->fd, &ev)) die("epoll_ctl");
        } else {
            mqtt_prepare(c);
        }
    }

    /* MQTT: connect everyone (CONNECTING_MAX at a time) before timing */
    struct epoll_event evs[512];
    if (o.proto == P_MQTT) {
        int next = 0;
        int64_t limit = now_ns() + (int64_t)(o.setup_timeout * 1e9);
        while (n_ready < o.clients) {
            while (next < o.clients && n_connecting < CONNECTING_MAX)
                mqtt_start_connect(&cs[next++]);
            if (now_ns() > limit) {
                fprintf(stderr, "coap_bench: %d of %d connected after %.0f s\n", n_ready, o.clients,
                        o.setup_timeout);
                return 2;
            }
            sending = false; /* CONNACKs only */
            int n = epoll_wait(ep_fd, evs, 512, 100);
            for (int i = 0; i < n; i++) {
                client *c = evs[i].data.ptr;
                if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) mqtt_writable(c);
                if (evs[i].events & EPOLLIN) mqtt_read(c, now_ns());
            }
        }
        sending = true;
    }

    int64_t t0 = now_ns();
    t_meas0 = t0 + (int64_t)(o.warmup * 1e9);
    t_meas1 = t_meas0 + (int64_t)(o.duration * 1e9);
    int64_t t_end = t_meas1 + (int64_t)(o.drain * 1e9);
    for (int i = 0; i < o.clients; i++)
        fill(&cs[i], t0);
    bool measuring = false;
    double cpu0 = 0, self0 = 0, cpu1 = 0, self1 = 0;
    int64_t next_timer = t0 + 10000000;
    uint64_t in_flight_end = 0;
    for (;;) {
        int64_t t = now_ns();
        if (!measuring && t >= t_meas0) {
            measuring = true;
            cpu0 = server_cpu();
            self0 = self_cpu();
        }
        if (sending && t >= t_meas1) {
            cpu1 = server_cpu();
            self1 = self_cpu();
            sending = false;
        }
        if (!sending) {
            uint64_t left = 0;
            for (int i = 0; i < o.clients; i++)
                left += cs[i].outstanding;
            in_flight_end = left;
            if (!left || t >= t_end) break;
        }
        if (o.proto == P_COAP && t >= next_timer) {
            coap_timers(cs, t);
            next_timer = t + 10000000;
        }
        int n = epoll_wait(ep_fd, evs, 512, 5);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            client *c = evs[i].data.ptr;
            int64_t tr = now_ns();
            if (o.proto == P_COAP) {
                coap_read(c, tr);
            } else {
                if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) mqtt_writable(c);
                if (evs[i].events & EPOLLIN) mqtt_read(c, tr);
            }
        }
    }

    double secs = (double)(t_meas1 - t_meas0) / 1e9;
    qsort(lat_us, lat_n, sizeof(*lat_us), cmp_u32);
    char codes[512] = "";
    size_t cl = 0;
    for (int k = 0; k < 256; k++) {
        if (!all.by_code[k] || cl >= sizeof(codes) - 32) continue;
        char t[8];
        cl +=
            (size_t)snprintf(codes + cl, sizeof(codes) - cl, "%s%s:%llu", cl ? "," : "",
                             cy_coap_code_text((uint8_t)k, t), (unsigned long long)all.by_code[k]);
    }
    double scpu = cpu1 - cpu0, gcpu = self1 - self0;
    printf("RESULT workload=%s server=%s value=%.0f unit=req/s proto=%s clients=%d window=%u "
           "seconds=%.3f done=%llu sent=%llu p50_us=%.0f p99_us=%.0f p999_us=%.0f max_us=%.0f "
           "retx=%llu retx_total=%llu timeouts=%llu errors=%llu errors_total=%llu rst=%llu "
           "stale=%llu codes=%s dup_acks=%llu separate=%llu bad=%llu unfinished=%llu "
           "server_cpu_s=%.2f "
           "server_core=%.2f server_us_per_req=%.2f gen_busy=%.2f\n",
           o.workload, o.server, (double)win.done / secs, o.proto == P_COAP ? "coap" : "mqtt",
           o.clients, o.window, secs, (unsigned long long)win.done, (unsigned long long)win.sent,
           pct(0.5), pct(0.99), pct(0.999), lat_n ? (double)lat_us[lat_n - 1] : 0.0,
           (unsigned long long)win.retx, (unsigned long long)all.retx,
           (unsigned long long)win.timeouts, (unsigned long long)win.errors,
           (unsigned long long)all.errors, (unsigned long long)all.rst,
           (unsigned long long)all.stale, cl ? codes : "-", (unsigned long long)all.dup_acks,
           (unsigned long long)all.sep, (unsigned long long)all.bad,
           (unsigned long long)in_flight_end, scpu, scpu / secs,
           win.done ? scpu * 1e6 / (double)win.done : 0.0, gcpu / secs);
    if (win.done == 0) {
        fprintf(stderr, "coap_bench: nothing answered 2.xx in the measured window\n");
        return 2;
    }
    return 0;
}
