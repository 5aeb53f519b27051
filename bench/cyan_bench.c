/* cyan_bench: an MQTT load generator for side-by-side broker benchmarks.
 *
 * One process, one thread, one epoll set, many connections; 127.0.0.1 (or
 * another address given with --host, but the driver only ever uses the
 * loopback). It speaks just enough MQTT 3.1.1 / 5.0 to connect, subscribe,
 * publish at QoS 0 or 1 and acknowledge, with its own minimal packet code
 * (so it measures the broker, not a client library).
 *
 * The idea needed to read it: every published payload starts with a 16-byte
 * stamp (send time in CLOCK_MONOTONIC ns, sequence number, publisher index),
 * so a subscriber knows which publisher a message came from and how long it
 * took. Publishers keep an end-to-end window: publisher p may have at most
 * `window` messages sent but not yet seen by its subscribers (and at QoS 1
 * at most `inflight` without PUBACK). That keeps brokers from dropping QoS 0
 * messages for slow subscribers (both mosquitto and cyan drop QoS 0 above
 * a per-client backlog) while still pipelining hundreds of PUBLISHes per
 * write(2). A window that makes no progress for 200 ms is presumed lost and
 * reopened, so a run never stalls.
 *
 * Modes (--mode):
 *   o2o      --pairs N: publisher i -> subscriber i on bench/i; msg/s delivered
 *   fanout   --subs N: one publisher, N subscribers of bench/fanout; deliveries/s
 *   fanin    --pubs N: N publishers, one subscriber of bench/fanin; msg/s
 *   latency  like o2o but paced at --rate msg/s in total; p50/p99/p99.9. Each
 *            message is stamped just before its own write(2) (a message due
 *            in the same pass as others no longer carries the time before
 *            their writes), and the timer slack is 1 ns so the pacing sleeps
 *            wake when due (the default 50 us slack sent bursts)
 *   idle     --conns N idle connections; memory per connection of --server-pid
 *            (and its descendants: cyan's shards) from /proc smaps_rollup
 *   storm    connect+CONNECT+CONNACK+DISCONNECT, --concurrency at a time; conn/s
 *
 * Every run is bounded: by --duration (plus warm-up and drain), by --count
 * (messages published), by --setup_timeout for connecting, and by an alarm()
 * that ends the process whatever happens.
 *
 * With --tls CAFILE, every connection is MQTT over TLS (OpenSSL, TLS 1.2 or
 * 1.3): after the TCP connect it makes a handshake, verifying the server's
 * certificate against CAFILE and the address --host (127.0.0.1), and then
 * every read and write goes through the connection's SSL object. The socket
 * stays non-blocking and edge-triggered: a handshake step, SSL_read or
 * SSL_write that would block clears the readiness it waits for (and notes
 * when it waits for the other direction), so the same loops drive plain and
 * TLS connections; partial writes and moving buffers are allowed, so the
 * output buffers work unchanged. No session is ever resumed (no tickets, no
 * client session cache): in the storm every connection makes a full
 * handshake, and the run checks that none was resumed. The first handshake
 * prints the negotiated protocol, cipher and key exchange group to stderr,
 * and the RESULT line carries them. Plain connections never reach that
 * code: one test of the connection's SSL pointer per read and per write,
 * and of its tls_wait per epoll event.
 *
 * With --server_pid, the generator also reads the CPU time of the server
 * (that process and its children: cyan's shards) from /proc at the start and
 * end of the measured seconds, and reports the server's share of a core and
 * its CPU per message (or per connection for the storm); and its own CPU use
 * (gen_busy), which near 1.00 means the generator set the pace.
 *
 * Output: one line per figure, "RESULT workload=W server=S value=V unit=U
 * key=value...", on stdout; diagnostics on stderr. Exit status 0 on a clean
 * run, 1 on usage errors, 2 on a failed run (refused, setup timeout, ...).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <dirent.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "cluster/cluster.h"
#include "procstat.h"

#define RBUF_SIZE (64 * 1024)   /* one read(2) per wake-up, at most */
#define WBATCH (64 * 1024)      /* a publisher's batch per write(2), bytes */
#define STAMP 16                /* payload prefix: ts u64, seq u32, src u32 */
#define STALL_NS 200000000LL    /* a window without progress this long reopens */

enum { M_O2O, M_FANOUT, M_FANIN, M_LATENCY, M_IDLE, M_STORM };
enum { R_PUB = 1, R_SUB = 2, R_IDLE = 4, R_STORM = 8 };
enum { S_CONNECTING, S_CONNECT_SENT, S_CONNECTED, S_SUB_SENT, S_READY, S_CLOSING, S_CLOSED };

/* tls_wait: a TLS call waits for the other direction than it was made in */
enum { TW_READ_WANTS_WRITE = 1, TW_WRITE_WANTS_READ = 2 };

typedef struct conn {
    int fd;
    SSL *ssl;              /* --tls: this connection's TLS state; NULL for plain MQTT */
    bool hs_done;          /* --tls: handshake finished */
    bool tls_eof;          /* --tls: the peer closed after data still to be handled */
    uint8_t tls_wait;      /* --tls: TW_* */
    int role;
    int state;
    uint32_t idx;          /* publisher / subscriber / connection index */
    bool readable, writable, in_rlist;
    uint8_t *in;           /* tail of an incomplete packet */
    size_t in_len, in_cap;
    uint8_t *out;          /* bytes not yet written */
    size_t out_len, out_off, out_cap;
    /* publisher */
    uint8_t *hdr;          /* PUBLISH up to (not including) packet id / payload */
    size_t hdr_len;
    uint64_t sent;         /* PUBLISHes written to out */
    uint64_t delivered;    /* deliveries seen at subscribers (for window) */
    uint64_t credited;     /* deliveries presumed lost after a stall */
    uint64_t acked;        /* PUBACKs received */
    uint16_t next_pid;
    int64_t *pid_ts;       /* --percentiles, QoS 1: send time by packet id (ACK_RING) */
    int64_t last_progress; /* ns */
    uint32_t seq;
    /* subscriber */
    uint64_t recv;
    int64_t started;       /* storm: ns of connect() */
} conn;

/* ---- settings ---- */
static struct {
    int mode;
    const char *host;
    int port;
    const char *user, *pass;
    int proto;
    int pairs, subs, pubs, conns, concurrency;
    int qos, size;
    double duration, warmup, drain, setup_timeout, settle;
    uint64_t count;
    uint32_t window, inflight;
    uint32_t batch; /* most PUBLISHes per write; 0: as many as fit in 64 KiB */
    double rate;
    int server_pid;
    int keepalive;
    int plan_shards;
    int dump_slow_us; /* latency: print every sample slower than this to stderr */
    const char *id_prefix;
    const char *workload, *server;
    const char *tls_ca; /* --tls: CA file (PEM); NULL for plain MQTT */
    bool persistent;    /* --session persistent: sessions the server keeps (and stores) */
    bool percentiles;   /* --percentiles: delivery (and PUBACK) latency in every mode */
    int cross;          /* --cross: one-to-one pairs across shards: 0 none, 1 half, 2 all */
} o = {
    .mode = M_O2O, .host = "127.0.0.1", .port = 1883, .proto = 4, .pairs = 8, .subs = 100,
    .pubs = 1000, .conns = 10000, .concurrency = 64, .qos = 0, .size = 16, .duration = 3,
    .warmup = 0.5, .drain = 2, .setup_timeout = 60, .settle = 1, .count = 0, .window = 0,
    .inflight = 32, .rate = 10000, .server_pid = 0, .keepalive = 3600, .plan_shards = 2,
    .id_prefix = "bench", .workload = NULL, .cross = 1,
    .server = "server",
};

/* ---- state ---- */
static int ep = -1;
static conn **all;            /* every connection (not storm) */
static size_t n_all;
static conn **pubs, **subs;
static size_t n_pubs, n_subs;
static uint32_t per_msg_deliveries = 1; /* subscribers per published message */
static conn **rlist;          /* connections with unread input */
static size_t n_rlist;
static uint8_t rbuf[2 * RBUF_SIZE];
static uint8_t *payload_tmpl;
static uint64_t total_sent, total_recv, total_recv_window, total_acked;
static uint64_t refused, errors;
static int64_t t_measure0, t_measure1, t_last_recv;
static bool measuring, sending;
static int64_t *lat;          /* latency samples, ns */
static size_t n_lat, cap_lat;
static int64_t *ack_lat;      /* --percentiles, QoS 1: publish to PUBACK, ns */
static size_t n_ack_lat, cap_ack_lat;
/* Packet ids in flight per publisher are at most --inflight (capped to this),
 * so a ring indexed by the id's low bits holds each one's send time. */
#define ACK_RING 1024
static char run_id[64];
static uint64_t storm_done, storm_started, storm_fail;
static SSL_CTX *tls_ctx;      /* --tls: the one client context */
static char tls_desc[192];    /* --tls: protocol, cipher, group of the first handshake */
static uint64_t tls_handshakes, tls_resumed, tls_failed;

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static double server_cpu(void); /* CPU seconds used so far by --server_pid and its children */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *fmt, const char *arg)
{
    fprintf(stderr, "cyan_bench: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\n");
    exit(2);
}

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "cyan_bench: hard time limit reached, exiting\n";
    ssize_t r = write(2, msg, sizeof(msg) - 1);
    (void)r;
    _exit(3);
}

/* ---- buffers ---- */
static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q) die("%s", "out of memory");
    return q;
}

static uint8_t *out_reserve(conn *c, size_t n)
{
    if (c->out_off && c->out_off == c->out_len) c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        if (c->out_off) {
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        if (c->out_len + n > c->out_cap) {
            size_t cap = c->out_cap ? c->out_cap : 256;
            while (cap < c->out_len + n) cap *= 2;
            c->out = xrealloc(c->out, cap);
            c->out_cap = cap;
        }
    }
    uint8_t *p = c->out + c->out_len;
    c->out_len += n;
    return p;
}

static size_t varint(uint8_t *p, uint32_t v)
{
    size_t n = 0;
    do {
        uint8_t b = v & 0x7f;
        v >>= 7;
        if (v) b |= 0x80;
        p[n++] = b;
    } while (v);
    return n;
}

static size_t put_str(uint8_t *p, const char *s, size_t len)
{
    p[0] = (uint8_t)(len >> 8);
    p[1] = (uint8_t)len;
    memcpy(p + 2, s, len);
    return len + 2;
}

/* ---- packets out ---- */
static void send_connect(conn *c, const char *client_id)
{
    uint8_t body[1024];
    size_t n = 0;
    n += put_str(body + n, "MQTT", 4);
    body[n++] = (uint8_t)o.proto;
    uint8_t flags = o.persistent ? 0x00 : 0x02; /* clean session / clean start */
    if (o.user) flags |= 0x80;
    if (o.user && o.pass) flags |= 0x40;
    body[n++] = flags;
    body[n++] = (uint8_t)(o.keepalive >> 8);
    body[n++] = (uint8_t)o.keepalive;
    if (o.proto == 5 && o.persistent) { /* Session Expiry Interval: 600 s */
        static const uint8_t expiry[] = {5, 0x11, 0, 0, 0x02, 0x58};
        memcpy(body + n, expiry, sizeof(expiry));
        n += sizeof(expiry);
    } else if (o.proto == 5) {
        body[n++] = 0; /* no properties */
    }
    n += put_str(body + n, client_id, strlen(client_id));
    if (o.user) n += put_str(body + n, o.user, strlen(o.user));
    if (o.user && o.pass) n += put_str(body + n, o.pass, strlen(o.pass));
    uint8_t *p = out_reserve(c, n + 5);
    size_t h = 0;
    p[h++] = 0x10;
    h += varint(p + h, (uint32_t)n);
    memcpy(p + h, body, n);
    c->out_len -= 5 - h;
}

static void send_subscribe(conn *c, const char *filter, int qos)
{
    uint8_t body[512];
    size_t n = 0;
    body[n++] = 0;
    body[n++] = 1; /* packet id 1 */
    if (o.proto == 5) body[n++] = 0;
    n += put_str(body + n, filter, strlen(filter));
    body[n++] = (uint8_t)qos;
    uint8_t *p = out_reserve(c, n + 5);
    size_t h = 0;
    p[h++] = 0x82;
    h += varint(p + h, (uint32_t)n);
    memcpy(p + h, body, n);
    c->out_len -= 5 - h;
}

static void send_small(conn *c, uint8_t b0, uint16_t pid, bool with_pid)
{
    uint8_t *p = out_reserve(c, with_pid ? 4 : 2);
    p[0] = b0;
    p[1] = with_pid ? 2 : 0;
    if (with_pid) {
        p[2] = (uint8_t)(pid >> 8);
        p[3] = (uint8_t)pid;
    }
}

/* The fixed part of a publisher's PUBLISH: first byte, remaining length,
 * topic. Then come the packet id (QoS 1), the v5 property length and the
 * payload. */
static void make_pub_header(conn *c, const char *topic)
{
    size_t tl = strlen(topic);
    uint32_t rl = (uint32_t)(2 + tl + (o.qos ? 2 : 0) + (o.proto == 5 ? 1 : 0) + (size_t)o.size);
    c->hdr = xrealloc(NULL, tl + 8);
    size_t n = 0;
    c->hdr[n++] = (uint8_t)(0x30 | (o.qos << 1));
    n += varint(c->hdr + n, rl);
    n += put_str(c->hdr + n, topic, tl);
    c->hdr_len = n;
}

static void append_publish(conn *c, int64_t ts)
{
    size_t n = c->hdr_len + (o.qos ? 2 : 0) + (o.proto == 5 ? 1 : 0) + (size_t)o.size;
    uint8_t *p = out_reserve(c, n);
    memcpy(p, c->hdr, c->hdr_len);
    p += c->hdr_len;
    if (o.qos) {
        uint16_t pid = c->next_pid;
        c->next_pid = (uint16_t)(pid == 65535 ? 1 : pid + 1);
        if (c->pid_ts) c->pid_ts[pid % ACK_RING] = ts;
        *p++ = (uint8_t)(pid >> 8);
        *p++ = (uint8_t)pid;
    }
    if (o.proto == 5) *p++ = 0;
    uint64_t t = (uint64_t)ts;
    uint32_t seq = c->seq++, src = c->idx;
    memcpy(p, &t, 8);
    memcpy(p + 8, &seq, 4);
    memcpy(p + 12, &src, 4);
    if (o.size > STAMP) memcpy(p + STAMP, payload_tmpl, (size_t)o.size - STAMP);
    c->sent++;
    total_sent++;
}

/* ---- TLS (--tls) ---- */
static void rlist_add(conn *c);

/* The client context: TLS 1.2 or 1.3, the server's certificate verified
 * against --tls CAFILE and the address --host, and nothing that would let a
 * later connection resume an earlier one's session. */
static void tls_init(void)
{
    tls_ctx = SSL_CTX_new(TLS_client_method());
    if (!tls_ctx) die("%s", "SSL_CTX_new failed");
    SSL_CTX_set_min_proto_version(tls_ctx, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(tls_ctx, TLS1_3_VERSION);
    /* a full handshake every time: no TLS 1.2 tickets, no client session
     * cache (TLS 1.3 tickets the server sends are read and dropped) */
    SSL_CTX_set_options(tls_ctx, SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_set_session_cache_mode(tls_ctx, SSL_SESS_CACHE_OFF);
    /* out_reserve may move the output buffer between a blocked SSL_write and
     * its retry, and flush_tls wants to know how much went out */
    SSL_CTX_set_mode(tls_ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (o.mode == M_IDLE) {
        /* thousands of connections that say nothing: no buffers while idle */
        SSL_CTX_set_mode(tls_ctx, SSL_MODE_RELEASE_BUFFERS);
    } else {
        /* read up to 64 KiB of records per read(2), not a header and then a
         * body per record, as the plain path reads 64 KiB per wake-up */
        SSL_CTX_set_read_ahead(tls_ctx, 1);
        SSL_CTX_set_default_read_buffer_len(tls_ctx, RBUF_SIZE);
    }
    if (SSL_CTX_load_verify_locations(tls_ctx, o.tls_ca, NULL) != 1)
        die("cannot load the CA file %s (--tls)", o.tls_ca);
    SSL_CTX_set_verify(tls_ctx, SSL_VERIFY_PEER, NULL);
    if (X509_VERIFY_PARAM_set1_ip_asc(SSL_CTX_get0_param(tls_ctx), o.host) != 1)
        die("--host %s is not an IP address to verify the certificate for", o.host);
}

/* Count a failed handshake; say why for the first few. */
static void tls_failure(conn *c, int err)
{
    tls_failed++;
    if (tls_failed <= 3) {
        char why[256] = "connection closed";
        unsigned long e = ERR_peek_error();
        if (e)
            ERR_error_string_n(e, why, sizeof(why));
        else if (err != SSL_ERROR_SYSCALL)
            snprintf(why, sizeof(why), "SSL error %d", err);
        long v = SSL_get_verify_result(c->ssl);
        fprintf(stderr, "cyan_bench: TLS handshake failed: %s%s%s\n", why,
                v != X509_V_OK ? "; certificate: " : "",
                v != X509_V_OK ? X509_verify_cert_error_string(v) : "");
    }
    ERR_clear_error(); /* SSL_get_error reads the queue: leave it empty */
}

/* The first handshake names what was negotiated, once per run. */
static void tls_describe(conn *c)
{
    int nid = (int)SSL_get_negotiated_group(c->ssl);
    const char *group = nid > 0 ? OBJ_nid2sn(nid) : NULL;
    snprintf(tls_desc, sizeof(tls_desc), "tls=%s cipher=%s group=%s", SSL_get_version(c->ssl),
             SSL_get_cipher_name(c->ssl), group ? group : "none");
    fprintf(stderr, "cyan_bench: TLS to %s: %s %s, key exchange %s, certificate verified for %s\n",
            o.server, SSL_get_version(c->ssl), SSL_get_cipher_name(c->ssl), group ? group : "none",
            o.host);
}

/* One step of the handshake. Returns 1 when it is done, 0 while it waits
 * (the readiness it waits for is cleared: an epoll edge sets it again), -1
 * when it failed. */
static int tls_handshake(conn *c)
{
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->hs_done = true;
        tls_handshakes++;
        if (SSL_session_reused(c->ssl)) tls_resumed++;
        if (!tls_desc[0]) tls_describe(c);
        /* what waited for the handshake goes now; a full socket says so
         * again, and read-ahead may hold records epoll will not report */
        c->writable = c->readable = true;
        rlist_add(c);
        return 1;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        /* the socket was tried and would block; the other direction has
         * nothing to do until this one moves */
        c->readable = c->writable = false;
        return 0;
    }
    tls_failure(c, e);
    return -1;
}

/* Read up to want bytes of application data into buf. Returns the count (0:
 * nothing yet), or -1 when the connection is over. Clears c->readable when
 * the socket is drained; leaves it set when buf is full, or when the peer's
 * close comes after data still to be handled (the next call reports it). */
static ssize_t tls_read(conn *c, uint8_t *buf, size_t want)
{
    if (c->tls_eof) return -1;
    if (!c->hs_done) {
        int r = tls_handshake(c);
        if (r <= 0) return r;
    }
    size_t got = 0;
    while (got < want) {
        int n = SSL_read(c->ssl, buf + got, (int)(want - got));
        if (n > 0) {
            got += (size_t)n;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_READ) {
            c->readable = false;
            break;
        }
        if (e == SSL_ERROR_WANT_WRITE) {
            c->readable = false;
            c->tls_wait |= TW_READ_WANTS_WRITE;
            break;
        }
        ERR_clear_error(); /* closed (close_notify or EOF) or broken */
        if (got) {
            c->tls_eof = true;
            break;
        }
        return -1;
    }
    return (ssize_t)got;
}

/* flush_out for a TLS connection: the handshake first, then SSL_write of the
 * pending output, one record or more per call (partial writes). A blocked
 * SSL_write is retried with the same bytes, perhaps more, perhaps moved. */
static bool flush_tls(conn *c)
{
    if (!c->hs_done) {
        int r = tls_handshake(c);
        if (r <= 0) return r == 0;
    }
    while (c->out_off < c->out_len) {
        size_t len = c->out_len - c->out_off;
        int n = SSL_write(c->ssl, c->out + c->out_off, len > INT_MAX ? INT_MAX : (int)len);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        int e = SSL_get_error(c->ssl, n);
        if (e == SSL_ERROR_WANT_WRITE) {
            c->writable = false;
            return true;
        }
        if (e == SSL_ERROR_WANT_READ) {
            c->writable = false;
            c->tls_wait |= TW_WRITE_WANTS_READ;
            return true;
        }
        ERR_clear_error();
        return false;
    }
    c->out_off = c->out_len = 0;
    return true;
}

/* An epoll event for a connection whose last TLS call waited for the other
 * direction: readiness of that direction retries the call. */
static uint32_t tls_events(conn *c, uint32_t e)
{
    if ((c->tls_wait & TW_WRITE_WANTS_READ) && (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))) {
        c->tls_wait &= (uint8_t)~TW_WRITE_WANTS_READ;
        e |= EPOLLOUT;
    }
    if ((c->tls_wait & TW_READ_WANTS_WRITE) && (e & (EPOLLOUT | EPOLLHUP | EPOLLERR))) {
        c->tls_wait &= (uint8_t)~TW_READ_WANTS_WRITE;
        e |= EPOLLIN;
    }
    return e;
}

/* ---- sockets ---- */
static void ep_add(conn *c)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET, .data.ptr = c};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev)) die("epoll_ctl: %s", strerror(errno));
}

static int open_conn(conn *c)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o.port)};
    if (inet_pton(AF_INET, o.host, &sa.sin_addr) != 1) die("bad --host %s", o.host);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return -e;
    }
    c->fd = fd;
    c->state = S_CONNECTING;
    c->readable = c->writable = false;
    c->in_len = 0;
    c->out_len = c->out_off = 0;
    if (tls_ctx) {
        c->ssl = SSL_new(tls_ctx);
        if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1) {
            ERR_clear_error();
            SSL_free(c->ssl);
            c->ssl = NULL;
            close(fd);
            c->fd = -1;
            return -ENOMEM;
        }
        SSL_set_connect_state(c->ssl);
        c->hs_done = c->tls_eof = false;
        c->tls_wait = 0;
    }
    ep_add(c);
    return 0;
}

static void close_conn(conn *c)
{
    if (c->ssl) { /* no close_notify: the bench closes as the plain path does */
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
    if (c->fd >= 0) {
        close(c->fd); /* also removes it from the epoll set */
        c->fd = -1;
    }
    c->state = S_CLOSED;
    c->readable = c->writable = false;
}

/* Write what is pending. Returns false if the connection failed. */
static bool flush_out(conn *c)
{
    if (c->ssl) return flush_tls(c);
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->writable = false;
            return true;
        }
        return false;
    }
    c->out_off = c->out_len = 0;
    return true;
}

/* cyan's shard of a client id: cyan's own function (src/cluster). */
static unsigned shard_of(const char *id, unsigned nshards)
{
    return cy_shard_of(id, strlen(id), nshards);
}

/* Client ids are deterministic, so every run places clients on cyan's shards
 * the same way. In one-to-one modes, with --plan_shards N (default 2), ids
 * are chosen so that subscriber i is on shard i % N and publisher i on the
 * same shard for the first N pairs of every 2N and on the next shard for the
 * others: publishers and subscribers are spread evenly over the shards and
 * half of the traffic crosses shards, as for devices placed at random.
 * --cross none or all puts every publisher on its subscriber's shard, or
 * on the next one. */
static void client_id(char *buf, size_t len, const char *kind, uint64_t i)
{
    snprintf(buf, len, "%s-%s%llu", run_id, kind, (unsigned long long)i);
    bool o2o = o.mode == M_O2O || o.mode == M_LATENCY;
    bool pub = strcmp(kind, "p") == 0, sub = strcmp(kind, "s") == 0;
    if (!o2o || !(pub || sub) || o.plan_shards < 2) return;
    unsigned n = (unsigned)o.plan_shards;
    unsigned target = (unsigned)(i % n);
    bool cross = o.cross == 2 || (o.cross == 1 && (i / n) % 2 == 1);
    if (pub && cross) target = (target + 1) % n;
    for (unsigned k = 0; k < 100000; k++) {
        snprintf(buf, len, "%s-%s%llu-%u", run_id, kind, (unsigned long long)i, k);
        if (shard_of(buf, n) == target) return;
    }
}

/* ---- packets in ---- */
static void on_publish(conn *c, uint8_t b0, const uint8_t *p, size_t rl, int64_t now)
{
    int qos = (b0 >> 1) & 3;
    if (rl < 2) return;
    size_t tl = ((size_t)p[0] << 8) | p[1];
    size_t pos = 2 + tl;
    uint16_t pid = 0;
    if (qos) {
        if (pos + 2 > rl) return;
        pid = (uint16_t)((p[pos] << 8) | p[pos + 1]);
        pos += 2;
    }
    if (o.proto == 5) {
        uint32_t pl = 0, mul = 1;
        while (pos < rl) {
            uint8_t b = p[pos++];
            pl += (uint32_t)(b & 0x7f) * mul;
            mul *= 128;
            if (!(b & 0x80)) break;
        }
        pos += pl;
    }
    if (qos == 1) send_small(c, 0x40, pid, true);
    c->recv++;
    total_recv++;
    t_last_recv = now;
    if (pos + STAMP > rl) return;
    uint64_t ts;
    uint32_t src;
    memcpy(&ts, p + pos, 8);
    memcpy(&src, p + pos + 12, 4);
    if (src < n_pubs) {
        conn *pc = pubs[src];
        pc->delivered++;
        pc->last_progress = now;
    }
    if (measuring) {
        total_recv_window++;
        if (o.mode == M_LATENCY || o.percentiles) {
            if (n_lat == cap_lat) {
                cap_lat = cap_lat ? cap_lat * 2 : 1 << 16;
                lat = xrealloc(lat, cap_lat * sizeof(*lat));
            }
            lat[n_lat++] = now - (int64_t)ts;
            if (o.dump_slow_us && now - (int64_t)ts > (int64_t)o.dump_slow_us * 1000)
                fprintf(stderr, "slow t_ms=%.3f lat_us=%.1f src=%u\n",
                        (double)(now - t_measure0) / 1e6, (double)(now - (int64_t)ts) / 1e3,
                        (unsigned)src);
        }
    }
}

static void on_packet(conn *c, const uint8_t *pkt, size_t hl, size_t rl, int64_t now)
{
    uint8_t b0 = pkt[0];
    const uint8_t *p = pkt + hl;
    switch (b0 >> 4) {
    case 2: /* CONNACK */
        if (rl < 2 || p[1] != 0) {
            refused++;
            if (refused <= 3)
                fprintf(stderr, "cyan_bench: CONNACK refused, code %u\n", rl >= 2 ? p[1] : 255);
            if (c->role == R_STORM) storm_fail++;
            close_conn(c);
            return;
        }
        c->state = S_CONNECTED;
        if (c->role == R_STORM) {
            send_small(c, 0xE0, 0, false); /* DISCONNECT; then wait for the close */
            c->state = S_CLOSING;
        }
        break;
    case 9: /* SUBACK */
        if (rl < 3 || p[rl - 1] >= 0x80) {
            refused++;
            fprintf(stderr, "cyan_bench: SUBACK refused\n");
            close_conn(c);
            return;
        }
        c->state = S_READY;
        break;
    case 3:
        on_publish(c, b0, p, rl, now);
        break;
    case 4: /* PUBACK */
        c->acked++;
        total_acked++;
        if (c->pid_ts && measuring && rl >= 2) {
            uint16_t pid = (uint16_t)((p[0] << 8) | p[1]);
            if (n_ack_lat == cap_ack_lat) {
                cap_ack_lat = cap_ack_lat ? cap_ack_lat * 2 : 1 << 16;
                ack_lat = xrealloc(ack_lat, cap_ack_lat * sizeof(*ack_lat));
            }
            ack_lat[n_ack_lat++] = now - c->pid_ts[pid % ACK_RING];
        }
        break;
    case 14: /* DISCONNECT from the server */
        fprintf(stderr, "cyan_bench: server sent DISCONNECT (reason %u)\n", rl ? p[0] : 0);
        errors++;
        break;
    default:
        break;
    }
}

/* Read once (up to 64 KiB) and handle every complete packet. Returns false
 * when the connection is gone. */
static bool read_conn(conn *c, int64_t now)
{
    size_t have = c->in_len;
    if (have) memcpy(rbuf, c->in, have);
    size_t want = RBUF_SIZE;
    ssize_t n;
    if (c->ssl) {
        n = tls_read(c, rbuf + have, want); /* clears c->readable itself */
        if (n <= 0) return n == 0;
    } else {
        n = read(c->fd, rbuf + have, want);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) {
                c->readable = false;
                return true;
            }
            return false;
        }
        if (n == 0) return false;
        if ((size_t)n < want) c->readable = false; /* drained; edge-triggered re-arms */
    }
    size_t len = have + (size_t)n, pos = 0;
    while (pos + 2 <= len) {
        uint32_t rl = 0, mul = 1;
        size_t i = pos + 1;
        bool ok = false;
        while (i < len && i < pos + 5) {
            uint8_t b = rbuf[i++];
            rl += (uint32_t)(b & 0x7f) * mul;
            mul *= 128;
            if (!(b & 0x80)) {
                ok = true;
                break;
            }
        }
        if (!ok) break;
        size_t hl = i - pos;
        if (pos + hl + rl > len) break;
        on_packet(c, rbuf + pos, hl, rl, now);
        if (c->state == S_CLOSED) return true;
        pos += hl + rl;
    }
    c->in_len = len - pos;
    if (c->in_len) {
        if (c->in_len > c->in_cap) {
            c->in_cap = c->in_len < 4096 ? 4096 : c->in_len;
            c->in = xrealloc(c->in, c->in_cap);
        }
        memcpy(c->in, rbuf + pos, c->in_len);
        if (c->in_len > RBUF_SIZE) die("%s", "packet larger than 64 KiB");
    }
    return true;
}

static void rlist_add(conn *c)
{
    if (c->in_rlist) return;
    c->in_rlist = true;
    rlist[n_rlist++] = c;
}

/* Wait for events (timeout in ns; 0 polls) and note readiness. */
static void poll_events(int64_t timeout_ns, size_t cap)
{
    static struct epoll_event evs[1024];
    struct timespec ts = {.tv_sec = timeout_ns / 1000000000LL, .tv_nsec = timeout_ns % 1000000000LL};
    int n = epoll_pwait2(ep, evs, 1024, &ts, NULL);
    if (n < 0) {
        if (errno == EINTR) return;
        die("epoll_pwait2: %s", strerror(errno));
    }
    (void)cap;
    for (int i = 0; i < n; i++) {
        conn *c = evs[i].data.ptr;
        uint32_t e = evs[i].events;
        if (c->tls_wait) e = tls_events(c, e);
        if (e & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
            c->readable = true;
            rlist_add(c);
        }
        if (e & (EPOLLOUT | EPOLLERR | EPOLLHUP)) {
            c->writable = true;
            if (c->out_len > c->out_off) rlist_add(c);
        }
    }
}

static void conn_failed(conn *c, const char *why)
{
    if (c->role == R_STORM) {
        storm_fail++;
        close_conn(c);
        return;
    }
    if (c->state != S_CLOSED) {
        errors++;
        if (errors <= 5)
            fprintf(stderr, "cyan_bench: connection %s%u lost (%s)\n",
                    c->role == R_PUB ? "pub" : c->role == R_SUB ? "sub" : "conn", c->idx, why);
    }
    close_conn(c);
}

/* Handle all pending reads (one read per connection per pass) and writes of
 * non-publishing output (acks, CONNECT, SUBSCRIBE). */
static void service(int64_t now)
{
    size_t n = n_rlist, keep = 0;
    for (size_t i = 0; i < n; i++) {
        conn *c = rlist[i];
        if (c->fd >= 0 && c->readable) {
            if (!read_conn(c, now)) conn_failed(c, "closed by server");
        }
        if (c->fd >= 0 && c->readable) {
            rlist[keep++] = c;
        } else {
            c->in_rlist = false;
        }
        if (c->fd >= 0 && c->out_len > c->out_off && c->writable && !flush_out(c))
            conn_failed(c, "write failed");
    }
    /* connections added during this pass stay at the end */
    if (n_rlist > n) {
        memmove(rlist + keep, rlist + n, (n_rlist - n) * sizeof(*rlist));
        keep += n_rlist - n;
    }
    n_rlist = keep;
}

/* ---- setup: connect everything, subscribe subscribers ---- */
static conn *new_conn(int role, uint32_t idx)
{
    conn *c = calloc(1, sizeof(*c));
    if (!c) die("%s", "out of memory");
    c->fd = -1;
    c->role = role;
    c->idx = idx;
    c->next_pid = 1;
    c->state = S_CLOSED;
    return c;
}

static void setup(void)
{
    int64_t deadline = now_ns() + (int64_t)(o.setup_timeout * 1e9);
    size_t next = 0, pending = 0, ready = 0;
    size_t limit = (size_t)(o.concurrency > 0 ? o.concurrency : 64);
    if (limit < 256) limit = 256;
    char id[128], topic[64];
    while (ready < n_all) {
        int64_t now = now_ns();
        if (now > deadline) {
            fprintf(stderr, "cyan_bench: setup timed out: %zu of %zu ready\n", ready, n_all);
            exit(2);
        }
        while (next < n_all && pending < limit) {
            conn *c = all[next];
            int rc = open_conn(c);
            if (rc) {
                fprintf(stderr, "cyan_bench: connect: %s\n", strerror(-rc));
                exit(2);
            }
            client_id(id, sizeof(id), c->role == R_PUB ? "p" : c->role == R_SUB ? "s" : "i",
                      c->idx);
            send_connect(c, id);
            c->state = S_CONNECT_SENT;
            next++;
            pending++;
        }
        poll_events(n_rlist ? 0 : 10000000LL, 0);
        for (size_t i = 0; i < next; i++) {
            conn *c = all[i];
            if (c->fd >= 0 && c->writable && c->out_len > c->out_off && !flush_out(c)) {
                fprintf(stderr, "cyan_bench: write failed during setup\n");
                exit(2);
            }
        }
        service(now);
        /* state transitions */
        ready = 0;
        pending = 0;
        for (size_t i = 0; i < next; i++) {
            conn *c = all[i];
            if (c->state == S_CLOSED) {
                fprintf(stderr, "cyan_bench: connection refused or closed during setup\n");
                exit(2);
            }
            if (c->state == S_CONNECTED) {
                if (c->role == R_SUB) {
                    if (o.mode == M_FANOUT)
                        snprintf(topic, sizeof(topic), "bench/fanout");
                    else if (o.mode == M_FANIN)
                        snprintf(topic, sizeof(topic), "bench/fanin");
                    else
                        snprintf(topic, sizeof(topic), "bench/%u", c->idx);
                    send_subscribe(c, topic, o.qos);
                    c->state = S_SUB_SENT;
                    if (c->writable && !flush_out(c)) exit(2);
                } else {
                    c->state = S_READY;
                }
            }
            if (c->state == S_READY)
                ready++;
            else
                pending++;
        }
    }
}

/* ---- throughput / latency run ---- */
static bool window_open(conn *c)
{
    uint64_t seen = (c->delivered + c->credited) / per_msg_deliveries;
    if (c->sent - (seen < c->sent ? seen : c->sent) >= o.window) return false;
    if (o.qos && c->acked < c->sent && c->sent - c->acked >= o.inflight) return false;
    return true;
}

static void pub_fill(conn *c, int64_t now)
{
    if (c->out_len > c->out_off) return; /* previous batch still going */
    size_t pkt = c->hdr_len + (o.qos ? 2 : 0) + (o.proto == 5 ? 1 : 0) + (size_t)o.size;
    size_t max = WBATCH / pkt;
    if (o.batch && o.batch < max) max = o.batch;
    if (max == 0) max = 1;
    for (size_t k = 0; k < max && window_open(c); k++) {
        if (o.count && total_sent >= o.count) break;
        append_publish(c, now);
    }
}

static void check_stall(conn *c, int64_t now)
{
    if (!window_open(c) && now - c->last_progress > STALL_NS) {
        /* presume the outstanding messages lost and go on */
        uint64_t want = c->sent * per_msg_deliveries;
        if (c->delivered + c->credited < want) c->credited = want - c->delivered;
        if (o.qos) c->acked = c->sent;
        c->last_progress = now;
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* --tls: what was negotiated and how many handshakes, for a RESULT line */
static void tls_extra(char *extra, size_t cap)
{
    size_t len = strlen(extra);
    if (!tls_ctx || len >= cap) return;
    snprintf(extra + len, cap - len, " %s handshakes=%llu resumed=%llu tls_failed=%llu",
             tls_desc[0] ? tls_desc : "tls=none", (unsigned long long)tls_handshakes,
             (unsigned long long)tls_resumed, (unsigned long long)tls_failed);
}

static void result(const char *unit, double value, const char *extra)
{
    printf("RESULT workload=%s server=%s value=%.6g unit=%s %s\n", o.workload, o.server, value,
           unit, extra ? extra : "");
    fflush(stdout);
}

/* " <prefix>p50_us=... <prefix>p99_us=..." of n samples (sorted here) onto extra. */
static void percentiles_extra(char *extra, size_t cap, const char *prefix, int64_t *v, size_t n)
{
    if (!n) return;
    qsort(v, n, sizeof(*v), cmp_i64);
    snprintf(extra + strlen(extra), cap - strlen(extra),
             " %ssamples=%zu %sp50_us=%.1f %sp99_us=%.1f %sp999_us=%.1f", prefix, n, prefix,
             (double)v[n / 2] / 1e3, prefix, (double)v[(size_t)((double)n * 0.99)] / 1e3, prefix,
             (double)v[(size_t)((double)n * 0.999)] / 1e3);
}

static void run_traffic(void)
{
    int64_t t0 = now_ns();
    double cpu0 = cpu_s();
    for (size_t i = 0; i < n_pubs; i++) pubs[i]->last_progress = t0;
    t_measure0 = t0 + (int64_t)(o.warmup * 1e9);
    int64_t t_end = t_measure0 + (int64_t)(o.duration * 1e9);
    int64_t t_drain_end = 0;
    double srv_cpu0 = server_cpu(), srv_cpu1 = -1;
    int64_t t_cpu0 = t0, t_cpu1 = 0;
    measuring = o.warmup <= 0;
    sending = true;
    double interval = o.mode == M_LATENCY ? 1e9 / o.rate : 0;
    double next_due = (double)t0;
    size_t rr = 0;
    uint64_t expected_before;
    for (;;) {
        int64_t now = now_ns();
        if (!measuring && sending && now >= t_measure0) {
            measuring = true;
            srv_cpu0 = server_cpu();
            t_cpu0 = now_ns();
        }
        if (sending && (now >= t_end || (o.count && total_sent >= o.count))) {
            sending = false;
            t_drain_end = now + (int64_t)(o.drain * 1e9);
            if (now < t_end) t_end = now;
        }
        if (!sending) {
            uint64_t expected = total_sent * per_msg_deliveries;
            bool acked = !o.qos || total_acked >= total_sent;
            if ((total_recv >= expected && acked) || now >= t_drain_end) break;
        }
        if (measuring && now >= t_end) {
            measuring = false;
            srv_cpu1 = server_cpu();
            t_cpu1 = now_ns();
        }
        /* publish */
        bool more = false;
        if (sending) {
            if (o.mode == M_LATENCY) {
                while ((double)now >= next_due) {
                    conn *c = pubs[rr++ % n_pubs];
                    if (c->fd >= 0) {
                        /* stamped at its own write: the time is the server's */
                        append_publish(c, now_ns());
                        if (c->writable && !flush_out(c)) conn_failed(c, "write failed");
                    }
                    next_due += interval;
                    if (o.count && total_sent >= o.count) break;
                }
                for (size_t i = 0; i < n_pubs; i++) {
                    conn *c = pubs[i];
                    if (c->fd >= 0 && c->writable && c->out_len > c->out_off && !flush_out(c))
                        conn_failed(c, "write failed");
                }
            } else {
                for (size_t i = 0; i < n_pubs; i++) {
                    conn *c = pubs[i];
                    if (c->fd < 0) continue;
                    check_stall(c, now);
                    /* several writes per pass when batches are small */
                    for (int k = 0; k < 64 && c->fd >= 0 && c->writable; k++) {
                        pub_fill(c, now);
                        if (c->out_len == c->out_off) break;
                        if (!flush_out(c)) {
                            conn_failed(c, "write failed");
                            break;
                        }
                        if (!o.batch) break;
                    }
                    if (c->fd >= 0 && c->writable && window_open(c)) more = true;
                }
            }
        }
        /* publishers' acks and subscribers' input */
        int64_t timeout = 0;
        if (!n_rlist && !more) {
            if (o.mode == M_LATENCY && sending) {
                int64_t d = (int64_t)next_due - now_ns();
                timeout = d > 0 ? d : 0;
                if (timeout > 10000000LL) timeout = 10000000LL;
            } else {
                timeout = 5000000LL; /* 5 ms: re-check stalls and deadlines */
            }
        }
        poll_events(timeout, 0);
        service(now_ns());
    }
    t_measure1 = t_end;
    /* the generator's own CPU use: near 1.00 means it, not the server, was the limit */
    double gen_busy = (cpu_s() - cpu0) / ((double)(now_ns() - t0) / 1e9);
    if (srv_cpu1 < 0) { /* count-bounded run: the whole run */
        srv_cpu1 = server_cpu();
        t_cpu1 = now_ns();
    }
    expected_before = total_sent * per_msg_deliveries;
    double secs = (double)(t_measure1 - t_measure0) / 1e9;
    if (o.warmup <= 0 && o.count) {
        /* count-bounded run: the window is first send to last delivery */
        secs = (double)(t_last_recv - t0) / 1e9;
        total_recv_window = total_recv;
    }
    if (secs <= 0) secs = 1e-9;
    uint64_t lost = expected_before > total_recv ? expected_before - total_recv : 0;
    char extra[1024];
    snprintf(extra, sizeof(extra),
             "sent=%llu received=%llu lost=%llu window_s=%.3f errors=%llu pubs=%zu subs=%zu "
             "gen_busy=%.2f",
             (unsigned long long)total_sent, (unsigned long long)total_recv,
             (unsigned long long)lost, secs, (unsigned long long)errors, n_pubs, n_subs, gen_busy);
    if (o.server_pid && total_recv_window)
        snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra),
                 " server_busy=%.2f server_ns_per_msg=%.0f",
                 (srv_cpu1 - srv_cpu0) / ((double)(t_cpu1 - t_cpu0) / 1e9),
                 (srv_cpu1 - srv_cpu0) * 1e9 / (double)total_recv_window);
    tls_extra(extra, sizeof(extra));
    if (o.mode == M_LATENCY) {
        if (n_lat == 0) {
            fprintf(stderr, "cyan_bench: no latency samples\n");
            exit(2);
        }
        qsort(lat, n_lat, sizeof(*lat), cmp_i64);
        double p50 = (double)lat[n_lat / 2] / 1e3;
        double p99 = (double)lat[(size_t)((double)n_lat * 0.99)] / 1e3;
        double p999 = (double)lat[(size_t)((double)n_lat * 0.999)] / 1e3;
        double mx = (double)lat[n_lat - 1] / 1e3;
        snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra),
                 " samples=%zu rate=%.0f p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f", n_lat,
                 (double)total_recv_window / secs, p50, p99, p999, mx);
        result("us_p50", p50, extra);
        printf("RESULT workload=%s server=%s value=%.6g unit=us_p99 %s\n", o.workload, o.server,
               p99, extra);
        printf("RESULT workload=%s server=%s value=%.6g unit=us_p999 %s\n", o.workload, o.server,
               p999, extra);
        fflush(stdout);
    } else {
        if (o.percentiles) {
            percentiles_extra(extra, sizeof(extra), "", lat, n_lat);
            percentiles_extra(extra, sizeof(extra), "ack_", ack_lat, n_ack_lat);
        }
        if (o.persistent) snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra), " session=persistent");
        result(o.mode == M_FANOUT ? "deliveries/s" : "msg/s", (double)total_recv_window / secs,
               extra);
    }
}

/* ---- idle connections: memory ---- */

/* PSS and RSS of root and all its descendants. */
static ps_mem server_mem(int root)
{
    int pids[4096];
    return ps_memory(pids, ps_family(root, pids, 4096));
}

static int srv_pids[64];
static int n_srv_pids = -1;

/* CPU seconds (user + system) used so far by the server's processes; the
 * process list is taken once (cyan: supervisor, shards, monitor). 0
 * without --server_pid. */
static double server_cpu(void)
{
    if (!o.server_pid) return 0;
    if (n_srv_pids < 0) n_srv_pids = ps_family(o.server_pid, srv_pids, 64);
    return ps_cpu_s(srv_pids, n_srv_pids);
}

static void run_idle(void)
{
    ps_mem before = {0, 0, 0};
    if (o.server_pid) before = server_mem(o.server_pid);
    int64_t t0 = now_ns();
    setup();
    int64_t t1 = now_ns();
    /* let the server settle (lazily freed buffers, handed-over sockets) while
     * answering nothing: idle clients send nothing */
    int64_t until = now_ns() + (int64_t)(o.settle * 1e9);
    while (now_ns() < until) {
        poll_events(10000000LL, 0);
        service(now_ns());
    }
    size_t alive = 0;
    for (size_t i = 0; i < n_all; i++) alive += all[i]->fd >= 0;
    ps_mem after = {0, 0, 0};
    if (o.server_pid) after = server_mem(o.server_pid);
    char extra[640];
    double n = (double)o.conns;
    snprintf(extra, sizeof(extra),
             "conns=%d alive=%zu procs=%d pss_before_kb=%.0f pss_after_kb=%.0f rss_before_kb=%.0f "
             "rss_after_kb=%.0f rss_per_conn_b=%.0f setup_s=%.3f",
             o.conns, alive, after.nproc, before.pss_kb, after.pss_kb, before.rss_kb,
             after.rss_kb, (after.rss_kb - before.rss_kb) * 1024 / n, (double)(t1 - t0) / 1e9);
    tls_extra(extra, sizeof(extra));
    if (o.server_pid)
        result("bytes/conn", (after.pss_kb - before.pss_kb) * 1024 / n, extra);
    else
        result("conns", (double)alive, extra);
    if (alive != n_all) {
        fprintf(stderr, "cyan_bench: %zu of %zu idle connections were dropped\n", n_all - alive,
                n_all);
        exit(2);
    }
}

/* ---- connect storm ---- */
static void storm_start(conn *c)
{
    char id[128];
    int rc = open_conn(c);
    if (rc) {
        storm_fail++;
        c->state = S_CLOSED;
        return;
    }
    c->started = now_ns();
    c->role = R_STORM;
    client_id(id, sizeof(id), "c", storm_started++);
    send_connect(c, id);
    c->state = S_CONNECT_SENT;
}

static void run_storm(void)
{
    size_t nc = (size_t)o.concurrency;
    conn **cs = calloc(nc, sizeof(*cs));
    rlist = calloc(nc + 16, sizeof(*rlist));
    if (!cs || !rlist) die("%s", "out of memory");
    for (size_t i = 0; i < nc; i++) cs[i] = new_conn(R_STORM, (uint32_t)i);
    if (tls_ctx)
        fprintf(stderr, "cyan_bench: storm over TLS: a full handshake per connection (no session "
                        "tickets, no client session cache, no resumption)\n");
    int64_t t0 = now_ns();
    double cpu0 = cpu_s();
    int64_t t_m0 = t0 + (int64_t)(o.warmup * 1e9);
    int64_t t_end = t_m0 + (int64_t)(o.duration * 1e9);
    uint64_t done_at_m0 = 0;
    bool m0 = false;
    double srv0 = 0;
    for (size_t i = 0; i < nc; i++) storm_start(cs[i]);
    for (;;) {
        int64_t now = now_ns();
        if (!m0 && now >= t_m0) {
            done_at_m0 = storm_done;
            m0 = true;
            srv0 = server_cpu();
        }
        if (now >= t_end) break;
        poll_events(n_rlist ? 0 : 5000000LL, 0);
        now = now_ns();
        for (size_t i = 0; i < nc; i++) {
            conn *c = cs[i];
            if (c->fd >= 0 && c->writable && c->out_len > c->out_off && !flush_out(c)) {
                storm_fail++;
                close_conn(c);
            }
        }
        /* reads: CONNACK -> DISCONNECT queued; EOF after DISCONNECT = done */
        size_t n = n_rlist;
        for (size_t i = 0; i < n; i++) {
            conn *c = rlist[i];
            c->in_rlist = false;
            if (c->fd < 0 || !c->readable) continue;
            int st = c->state;
            bool ok = read_conn(c, now);
            if (!ok) {
                if (st == S_CLOSING || c->state == S_CLOSING)
                    storm_done++;
                else
                    storm_fail++;
                close_conn(c);
            } else if (c->fd >= 0 && c->readable) {
                rlist_add(c);
            }
            if (c->fd >= 0 && c->out_len > c->out_off && c->writable && !flush_out(c)) {
                storm_fail++;
                close_conn(c);
            }
        }
        if (n_rlist > n) memmove(rlist, rlist + n, (n_rlist - n) * sizeof(*rlist));
        n_rlist -= n;
        /* a connection stuck for 5 s counts as failed */
        for (size_t i = 0; i < nc; i++) {
            conn *c = cs[i];
            if (c->fd >= 0 && now - c->started > 5000000000LL) {
                storm_fail++;
                close_conn(c);
            }
            if (c->fd < 0) {
                c->in_len = 0;
                storm_start(c);
            }
        }
    }
    uint64_t done = storm_done - done_at_m0;
    double secs = (double)(now_ns() - t_m0) / 1e9;
    double srv1 = server_cpu();
    for (size_t i = 0; i < nc; i++) {
        close_conn(cs[i]);
        free(cs[i]->in);
        free(cs[i]->out);
        free(cs[i]);
    }
    free(cs);
    char extra[768];
    double gen_busy = (cpu_s() - cpu0) / ((double)(now_ns() - t0) / 1e9);
    snprintf(extra, sizeof(extra),
             "done=%llu total=%llu failed=%llu refused=%llu concurrency=%zu window_s=%.3f "
             "gen_busy=%.2f",
             (unsigned long long)done, (unsigned long long)storm_done, (unsigned long long)storm_fail,
             (unsigned long long)refused, nc, secs, gen_busy);
    if (o.server_pid && done)
        snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra),
                 " server_busy=%.2f server_us_per_conn=%.1f", (srv1 - srv0) / secs,
                 (srv1 - srv0) * 1e6 / (double)done);
    if (tls_ctx) {
        snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra), " handshake=full");
        tls_extra(extra, sizeof(extra));
    }
    result("conn/s", (double)done / secs, extra);
    if (tls_resumed) {
        fprintf(stderr, "cyan_bench: %llu TLS sessions were resumed, not full handshakes\n",
                (unsigned long long)tls_resumed);
        exit(2);
    }
    if (!done) {
        fprintf(stderr, "cyan_bench: no connection completed (%llu failed)\n",
                (unsigned long long)storm_fail);
        exit(2);
    }
}

/* ---- main ---- */
static void usage(void)
{
    fprintf(stderr,
            "usage: cyan_bench --mode o2o|fanout|fanin|latency|idle|storm [options]\n"
            "  --host 127.0.0.1 --port 1883 --user U --pass P --proto 4|5\n"
            "  --pairs N (o2o, latency)  --subs N (fanout)  --pubs N (fanin)\n"
            "  --conns N --settle S (idle)  --concurrency N (storm)\n"
            "  --server_pid PID: the server (and its children, cyan's shards): memory (idle),\n"
            "             CPU per message or connection while measuring (other modes)\n"
            "  --qos 0|1 --size BYTES(>=16) --duration S --warmup S --drain S --count N\n"
            "  --window N (messages per publisher not yet delivered; default: o2o 64 KiB worth,\n"
            "             fanout 64, fanin 16)  --inflight N (QoS 1 without PUBACK, default 32)\n"
            "  --batch N (most PUBLISHes per write; default: as many as fit in 64 KiB)\n"
            "  --rate MSG/S (latency, total)  --dump_slow_us US (print slower samples)\n"
            "  --keepalive S  --setup_timeout S\n"
            "  --id_prefix bench (client ids)  --plan_shards 2 (one-to-one: half the pairs cross\n"
            "             shards for a cyan with this many shards)  --cross none|half|all\n"
            "  --workload NAME --server NAME (labels of the RESULT lines)\n"
            "  --tls CAFILE: MQTT over TLS 1.2/1.3, the server's certificate verified against\n"
            "             CAFILE (PEM) for the address --host; never a resumed session\n"
            "  --session clean|persistent: persistent = clean session 0 (3.1.1) or clean\n"
            "             start 0 with a session expiry of 600 s (5), ids of this run only\n"
            "  --percentiles 1: latency p50/p99 in every mode: publish to delivery, and\n"
            "             publish to PUBACK at QoS 1\n");
    exit(1);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = strchr(a, '=');
        char key[64];
        if (strncmp(a, "--", 2) != 0) usage();
        if (v) {
            size_t kl = (size_t)(v - a - 2);
            if (kl >= sizeof(key)) usage();
            memcpy(key, a + 2, kl);
            key[kl] = 0;
            v++;
        } else {
            snprintf(key, sizeof(key), "%s", a + 2);
            if (i + 1 >= argc) usage();
            v = argv[++i];
        }
        if (!strcmp(key, "mode")) {
            if (!strcmp(v, "o2o")) o.mode = M_O2O;
            else if (!strcmp(v, "fanout")) o.mode = M_FANOUT;
            else if (!strcmp(v, "fanin")) o.mode = M_FANIN;
            else if (!strcmp(v, "latency")) o.mode = M_LATENCY;
            else if (!strcmp(v, "idle")) o.mode = M_IDLE;
            else if (!strcmp(v, "storm")) o.mode = M_STORM;
            else usage();
        } else if (!strcmp(key, "host")) o.host = v;
        else if (!strcmp(key, "port")) o.port = atoi(v);
        else if (!strcmp(key, "user")) o.user = *v ? v : NULL;
        else if (!strcmp(key, "pass")) o.pass = *v ? v : NULL;
        else if (!strcmp(key, "proto")) o.proto = atoi(v);
        else if (!strcmp(key, "pairs")) o.pairs = atoi(v);
        else if (!strcmp(key, "subs")) o.subs = atoi(v);
        else if (!strcmp(key, "pubs")) o.pubs = atoi(v);
        else if (!strcmp(key, "conns")) o.conns = atoi(v);
        else if (!strcmp(key, "concurrency")) o.concurrency = atoi(v);
        else if (!strcmp(key, "qos")) o.qos = atoi(v);
        else if (!strcmp(key, "size")) o.size = atoi(v);
        else if (!strcmp(key, "duration")) o.duration = atof(v);
        else if (!strcmp(key, "warmup")) o.warmup = atof(v);
        else if (!strcmp(key, "drain")) o.drain = atof(v);
        else if (!strcmp(key, "settle")) o.settle = atof(v);
        else if (!strcmp(key, "setup_timeout")) o.setup_timeout = atof(v);
        else if (!strcmp(key, "count")) o.count = strtoull(v, NULL, 10);
        else if (!strcmp(key, "window")) o.window = (uint32_t)atoi(v);
        else if (!strcmp(key, "inflight")) o.inflight = (uint32_t)atoi(v);
        else if (!strcmp(key, "batch")) o.batch = (uint32_t)atoi(v);
        else if (!strcmp(key, "rate")) o.rate = atof(v);
        else if (!strcmp(key, "server_pid")) o.server_pid = atoi(v);
        else if (!strcmp(key, "keepalive")) o.keepalive = atoi(v);
        else if (!strcmp(key, "plan_shards")) o.plan_shards = atoi(v);
        else if (!strcmp(key, "dump_slow_us")) o.dump_slow_us = atoi(v);
        else if (!strcmp(key, "id_prefix")) o.id_prefix = v;
        else if (!strcmp(key, "workload")) o.workload = v;
        else if (!strcmp(key, "server")) o.server = v;
        else if (!strcmp(key, "tls")) o.tls_ca = v;
        else if (!strcmp(key, "session")) {
            if (!strcmp(v, "persistent")) o.persistent = true;
            else if (strcmp(v, "clean")) usage();
        } else if (!strcmp(key, "percentiles")) o.percentiles = atoi(v) != 0;
        else if (!strcmp(key, "cross")) {
            if (!strcmp(v, "none")) o.cross = 0;
            else if (!strcmp(v, "half")) o.cross = 1;
            else if (!strcmp(v, "all")) o.cross = 2;
            else usage();
        }
        else usage();
    }
    if (o.proto != 4 && o.proto != 5) usage();
    if (o.qos < 0 || o.qos > 1 || o.size < STAMP || o.size > 60000) usage();
    if (o.pairs < 1 || o.subs < 1 || o.pubs < 1 || o.conns < 1 || o.concurrency < 1) usage();
    if (o.duration <= 0 || o.duration > 3600 || o.rate <= 0) usage();
    if (o.inflight < 1) o.inflight = 1;
    if (o.percentiles && o.inflight > ACK_RING) o.inflight = ACK_RING;
    if (o.tls_ca && !*o.tls_ca) usage();
    static const char *names[] = {"o2o", "fanout", "fanin", "latency", "idle", "storm"};
    if (!o.workload) o.workload = names[o.mode];
    if (o.window == 0) {
        /* one-to-one: one 64 KiB batch worth of messages per publisher */
        size_t wire = 3 + 2 + strlen("bench/0") + (o.qos ? 2 : 0) + (o.proto == 5 ? 1 : 0) + (size_t)o.size;
        o.window = o.mode == M_FANIN ? 16 : o.mode == M_FANOUT ? 64 : (uint32_t)(WBATCH / wire);
        if (o.window < 16) o.window = 16;
    }

    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm((unsigned)(o.setup_timeout + o.warmup + o.duration + o.drain + o.settle + 30));
    /* Persistent sessions outlive a run (3.1.1: until the server forgets
     * them): each run has its own ids, so none resumes an older run's. */
    if (o.persistent)
        snprintf(run_id, sizeof(run_id), "%s%ld", o.id_prefix, (long)getpid());
    else
        snprintf(run_id, sizeof(run_id), "%s", o.id_prefix);
    if (o.tls_ca) tls_init();
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1: %s", strerror(errno));
    payload_tmpl = calloc(1, (size_t)o.size);
    if (!payload_tmpl) die("%s", "out of memory");
    for (int i = 0; i < o.size; i++) payload_tmpl[i] = (uint8_t)('a' + i % 26);

    if (o.mode == M_STORM) {
        run_storm();
        return 0;
    }
    size_t np = 0, ns = 0, ni = 0;
    switch (o.mode) {
    case M_O2O:
    case M_LATENCY:
        np = ns = (size_t)o.pairs;
        /* the pacing sleeps (epoll_pwait2 timeouts) end when due, not up to
         * 50 us later in a burst */
        if (o.mode == M_LATENCY) prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
        break;
    case M_FANOUT: np = 1; ns = (size_t)o.subs; per_msg_deliveries = (uint32_t)o.subs; break;
    case M_FANIN: np = (size_t)o.pubs; ns = 1; break;
    case M_IDLE: ni = (size_t)o.conns; break;
    }
    n_all = np + ns + ni;
    all = calloc(n_all, sizeof(*all));
    rlist = calloc(n_all + 16, sizeof(*rlist));
    pubs = calloc(np + 1, sizeof(*pubs));
    subs = calloc(ns + 1, sizeof(*subs));
    if (!all || !rlist || !pubs || !subs) die("%s", "out of memory");
    /* subscribers first, so they are ready before anyone publishes */
    size_t k = 0;
    for (size_t i = 0; i < ns; i++) all[k++] = subs[n_subs++] = new_conn(R_SUB, (uint32_t)i);
    for (size_t i = 0; i < np; i++) {
        conn *c = new_conn(R_PUB, (uint32_t)i);
        char topic[64];
        if (o.mode == M_FANOUT)
            snprintf(topic, sizeof(topic), "bench/fanout");
        else if (o.mode == M_FANIN)
            snprintf(topic, sizeof(topic), "bench/fanin");
        else
            snprintf(topic, sizeof(topic), "bench/%zu", i);
        make_pub_header(c, topic);
        if (o.percentiles && o.qos) {
            c->pid_ts = calloc(ACK_RING, sizeof(*c->pid_ts));
            if (!c->pid_ts) die("%s", "out of memory");
        }
        all[k++] = pubs[n_pubs++] = c;
    }
    for (size_t i = 0; i < ni; i++) all[k++] = new_conn(R_IDLE, (uint32_t)i);

    if (o.mode == M_IDLE) {
        run_idle();
    } else {
        setup();
        run_traffic();
    }
    /* polite goodbye */
    for (size_t i = 0; i < n_all; i++) {
        conn *c = all[i];
        if (c->fd < 0) continue;
        c->out_len = c->out_off = 0;
        if (o.persistent && o.proto == 5) {
            /* Session Expiry Interval 0: the server drops the session now,
             * so runs do not pile up sessions in its store */
            static const uint8_t bye[] = {0xE0, 7, 0x00, 5, 0x11, 0, 0, 0, 0};
            memcpy(out_reserve(c, sizeof(bye)), bye, sizeof(bye));
        } else {
            send_small(c, 0xE0, 0, false);
        }
        if (c->ssl) {
            /* best effort, as below; a write still blocked from before is
             * abandoned (OpenSSL then refuses other bytes, which is fine) */
            if (c->hs_done && SSL_write(c->ssl, c->out, (int)c->out_len) <= 0) ERR_clear_error();
        } else {
            ssize_t r = write(c->fd, c->out, c->out_len);
            (void)r;
        }
        close_conn(c);
    }
    SSL_CTX_free(tls_ctx);
    return errors || refused ? 2 : 0;
}
