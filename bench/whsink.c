/* whsink: a fast HTTP/1.1 webhook receiver for benchmarks. It answers every
 * request at once (204 No Content by default), counts them, and can write
 * one line per request: its arrival time and what identifies the event, so
 * that a script can compute the latency from the event's publication (or its
 * PUBACK) to its receipt.
 *
 * One process, one thread, one level-triggered epoll set, non-blocking
 * sockets. The idea needed to read it: each connection has an input buffer
 * that holds what has been read and not yet parsed; after each read(2) every
 * complete request in it is handled (pipelined requests, any split across
 * reads), their answers are appended to one output buffer, and that is
 * written with a single write(2). A request is complete when its header block
 * ("\r\n\r\n") and its body (Content-Length bytes, or chunks up to the last
 * one) are in; an incomplete one waits for more bytes. A connection whose
 * client does not read its answers (more than OUT_HIGH bytes pending) is not
 * read either until they drain.
 *
 * For each request it notes the arrival time (CLOCK_REALTIME, microseconds,
 * taken once per read(2): the requests completed by one read arrived
 * together), the "webhook-id" header, and a mark: the value of an
 * "X-Sent-Us" header or else the token following --mark (default "sent_us=")
 * in the body (letters, digits and ".:_-"). With --out FILE, one line per
 * request: "<arrival_us> <webhook-id or -> <mark or ->".
 *
 * It stops on SIGINT or SIGTERM, after --count requests, after --idle seconds
 * without a request (once one came), or after --max_time seconds, and then
 * prints one line on stdout:
 *   RESULT workload=W server=whsink value=<req/s> unit=req/s count=N
 *     window_s=S conns=C bytes=B marks=M ids=I bad=X cpu_s=T
 * where the rate is over the active window (first to last request), bad
 * counts malformed requests (answered 4xx, connection closed) and cpu_s is
 * the sink's own CPU time (user + system).
 * Exit status 0, 1 on usage errors, 2 when it cannot listen or write.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define READ_CHUNK (64 * 1024) /* bytes asked of one read(2) */
#define HEADER_MAX (64 * 1024) /* a header block longer than this: 431 */
#define BODY_MAX (16 << 20)    /* a body longer than this: 413 */
#define OUT_HIGH (1 << 20)     /* pending answer bytes above which reading pauses */
#define ID_MAX 96              /* longest webhook-id / mark kept, bytes */

typedef struct conn {
    int fd;
    char *in;                 /* bytes read, not yet consumed by a complete request */
    size_t in_len;            /* bytes in `in` */
    size_t in_cap;            /* bytes allocated */
    size_t scan;              /* where the search for "\r\n\r\n" resumes */
    char *out;                /* answers not yet written */
    size_t out_off;           /* first unwritten byte */
    size_t out_len;           /* bytes in `out` */
    size_t out_cap;           /* bytes allocated */
    bool closing;             /* close once `out` is written */
    uint32_t events;          /* epoll interest now */
    struct conn *prev, *next; /* every open connection, to free them at exit */
} conn;

static struct {
    const char *host;
    int port;
    int status;
    uint64_t count;
    double idle, max_time;
    const char *out, *mark, *workload;
} o = {
    .host = "127.0.0.1", .port = 0, .status = 204, .mark = "sent_us=", .workload = "webhook_sink"};

static volatile sig_atomic_t stop_sig;
static int ep = -1;
static FILE *rec;     /* --out */
static char *scratch; /* a chunked body, joined */
static size_t scratch_cap;
static uint64_t n_req, n_marks, n_ids, n_conns, n_bad, n_bytes;
static int64_t t_first, t_last; /* monotonic ns of the first and last request */
static conn *conns;             /* open connections */
static char answer[128];
static size_t answer_len;

static void on_signal(int sig)
{
    stop_sig = sig;
}

static int64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q) {
        fprintf(stderr, "whsink: out of memory\n");
        exit(2);
    }
    return q;
}

static void reserve(char **buf, size_t *cap, size_t need)
{
    if (need <= *cap) return;
    size_t c = *cap ? *cap : 4096;
    while (c < need)
        c *= 2;
    *buf = xrealloc(*buf, c);
    *cap = c;
}

static void out_append(conn *c, const char *p, size_t n)
{
    if (c->out_off == c->out_len) c->out_off = c->out_len = 0;
    reserve(&c->out, &c->out_cap, c->out_len + n);
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
}

static void set_events(conn *c, uint32_t ev)
{
    if (c->events == ev) return;
    struct epoll_event e = {.events = ev, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &e);
    c->events = ev;
}

static void conn_close(conn *c)
{
    close(c->fd); /* also leaves the epoll set */
    if (c->prev)
        c->prev->next = c->next;
    else
        conns = c->next;
    if (c->next) c->next->prev = c->prev;
    free(c->in);
    free(c->out);
    free(c);
}

/* ---- parsing ---- */

/* Copy the token at p (at most n bytes) into dst (ID_MAX with the NUL). */
static void take_token(char *dst, const char *p, size_t n)
{
    size_t k = 0;
    while (k < n && k < ID_MAX - 1) {
        char ch = p[k];
        bool ok = (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') ||
                  (ch >= 'A' && ch <= 'Z') || ch == '.' || ch == ':' || ch == '_' || ch == '-';
        if (!ok) break;
        dst[k] = ch;
        k++;
    }
    dst[k] = 0;
}

static bool name_is(const char *name, size_t len, const char *want)
{
    return strlen(want) == len && strncasecmp(name, want, len) == 0;
}

typedef struct req {
    bool http10, keep_alive, close, chunked, has_cl, bad_cl;
    size_t content_length;
    char id[ID_MAX];
    char mark[ID_MAX];
} req;

/* Parse the header block [p, p+n) (request line, headers, no final blank
 * line). Returns false if malformed. */
static bool parse_head(const char *p, size_t n, req *r)
{
    const char *end = p + n;
    const char *eol = memmem(p, n, "\r\n", 2);
    if (!eol) eol = end;
    /* request line: METHOD SP target SP HTTP/1.x */
    const char *sp1 = memchr(p, ' ', (size_t)(eol - p));
    if (!sp1 || sp1 == p) return false;
    const char *sp2 = memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1));
    if (!sp2 || eol - sp2 != 9 || memcmp(sp2 + 1, "HTTP/1.", 7) != 0) return false;
    r->http10 = sp2[8] == '0';
    const char *line = eol + 2;
    while (line < end) {
        eol = memmem(line, (size_t)(end - line), "\r\n", 2);
        if (!eol) eol = end;
        const char *colon = memchr(line, ':', (size_t)(eol - line));
        if (!colon || colon == line) return false;
        size_t nl = (size_t)(colon - line);
        const char *v = colon + 1;
        while (v < eol && (*v == ' ' || *v == '\t'))
            v++;
        const char *ve = eol;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        size_t vl = (size_t)(ve - v);
        if (name_is(line, nl, "content-length")) {
            size_t cl = 0;
            if (vl == 0 || vl > 12 || r->has_cl) r->bad_cl = true;
            for (size_t i = 0; i < vl; i++) {
                if (v[i] < '0' || v[i] > '9') r->bad_cl = true;
                cl = cl * 10 + (size_t)(v[i] - '0');
            }
            r->has_cl = true;
            r->content_length = cl;
        } else if (name_is(line, nl, "transfer-encoding")) {
            if (vl == 7 && strncasecmp(v, "chunked", 7) == 0)
                r->chunked = true;
            else
                return false; /* only chunked is understood */
        } else if (name_is(line, nl, "connection")) {
            if (memmem(v, vl, "close", 5) || memmem(v, vl, "Close", 5)) r->close = true;
            if (memmem(v, vl, "eep-alive", 9)) r->keep_alive = true;
        } else if (name_is(line, nl, "webhook-id")) {
            take_token(r->id, v, vl);
        } else if (name_is(line, nl, "x-sent-us")) {
            take_token(r->mark, v, vl);
        }
        line = eol + 2;
    }
    if (r->bad_cl || (r->has_cl && r->chunked)) return false;
    return true;
}

/* A chunked body starting at p with n bytes available. Returns the bytes it
 * takes on the wire (body and trailers), 0 if incomplete, -1 if malformed;
 * joins its data into scratch (*len bytes). */
static long parse_chunked(const char *p, size_t n, size_t *len)
{
    size_t pos = 0;
    *len = 0;
    for (;;) {
        const char *eol = memmem(p + pos, n - pos, "\r\n", 2);
        if (!eol) return n - pos > 64 ? -1 : 0;
        size_t size = 0, digits = 0;
        for (const char *q = p + pos; q < eol && *q != ';'; q++) {
            int d = (*q >= '0' && *q <= '9')   ? *q - '0'
                    : (*q >= 'a' && *q <= 'f') ? *q - 'a' + 10
                    : (*q >= 'A' && *q <= 'F') ? *q - 'A' + 10
                                               : -1;
            if (d < 0 || ++digits > 7) return -1;
            size = size * 16 + (size_t)d;
        }
        if (!digits) return -1;
        pos = (size_t)(eol - p) + 2;
        if (size == 0) {
            for (;;) { /* trailers up to a blank line */
                eol = memmem(p + pos, n - pos, "\r\n", 2);
                if (!eol) return n - pos > HEADER_MAX ? -1 : 0;
                bool blank = eol == p + pos;
                pos = (size_t)(eol - p) + 2;
                if (blank) return (long)pos;
            }
        }
        if (*len + size > BODY_MAX) return -1;
        if (n - pos < size + 2) return 0;
        if (memcmp(p + pos + size, "\r\n", 2) != 0) return -1;
        reserve(&scratch, &scratch_cap, *len + size);
        memcpy(scratch + *len, p + pos, size);
        *len += size;
        pos += size + 2;
    }
}

static void record(const req *r, int64_t real_us)
{
    n_req++;
    if (r->id[0]) n_ids++;
    if (r->mark[0]) n_marks++;
    if (rec)
        fprintf(rec, "%lld %s %s\n", (long long)real_us, r->id[0] ? r->id : "-",
                r->mark[0] ? r->mark : "-");
}

static void bad_request(conn *c, const char *status)
{
    char buf[128];
    int n = snprintf(buf, sizeof(buf),
                     "HTTP/1.1 %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", status);
    out_append(c, buf, (size_t)n);
    c->closing = true;
    n_bad++;
}

/* Handle every complete request in c->in. */
static void handle_input(conn *c, int64_t mono_ns, int64_t real_us)
{
    size_t pos = 0;
    while (!c->closing && pos < c->in_len) {
        const char *p = c->in + pos;
        size_t avail = c->in_len - pos;
        size_t from = c->scan > pos + 3 ? c->scan - pos - 3 : 0;
        const char *hend = memmem(p + from, avail - from, "\r\n\r\n", 4);
        if (!hend) {
            c->scan = c->in_len;
            if (avail > HEADER_MAX) bad_request(c, "431 Request Header Fields Too Large");
            break;
        }
        size_t hlen = (size_t)(hend - p) + 4;
        req r;
        memset(&r, 0, sizeof(r));
        if (hlen > HEADER_MAX || !parse_head(p, hlen - 4, &r)) {
            bad_request(c, hlen > HEADER_MAX ? "431 Request Header Fields Too Large"
                                             : "400 Bad Request");
            break;
        }
        const char *body;
        size_t body_len, wire;
        if (r.chunked) {
            long w = parse_chunked(p + hlen, avail - hlen, &body_len);
            if (w < 0) {
                bad_request(c, "400 Bad Request");
                break;
            }
            if (w == 0) {
                c->scan = pos; /* incomplete: parsed again from its start */
                break;
            }
            body = scratch;
            wire = hlen + (size_t)w;
        } else {
            if (r.content_length > BODY_MAX) {
                bad_request(c, "413 Content Too Large");
                break;
            }
            body = p + hlen;
            body_len = r.content_length;
            wire = hlen + body_len;
            if (wire > avail) {
                c->scan = pos; /* the body may hold "\r\n\r\n": find the header end again */
                break;
            }
        }
        if (!r.mark[0] && o.mark[0] && body_len) {
            size_t ml = strlen(o.mark);
            const char *m = memmem(body, body_len, o.mark, ml);
            if (m) take_token(r.mark, m + ml, body_len - (size_t)(m - body) - ml);
        }
        if (!t_first) t_first = mono_ns;
        t_last = mono_ns;
        n_bytes += wire;
        record(&r, real_us);
        bool keep = r.http10 ? r.keep_alive && !r.close : !r.close;
        out_append(c, answer, answer_len);
        if (r.http10 && keep) out_append(c, "Connection: keep-alive\r\n", 24);
        if (!keep) {
            out_append(c, "Connection: close\r\n", 19);
            c->closing = true;
        }
        out_append(c, "\r\n", 2);
        pos += wire;
        c->scan = pos;
        if (o.count && n_req >= o.count) break;
    }
    if (pos) {
        memmove(c->in, c->in + pos, c->in_len - pos);
        c->in_len -= pos;
        c->scan -= c->scan >= pos ? pos : c->scan;
    }
}

/* Write what is pending. Returns false when the connection is done. */
static bool flush_out(conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
        return false;
    }
    size_t pending = c->out_len - c->out_off;
    if (!pending && c->closing) return false;
    uint32_t ev = c->closing || pending > OUT_HIGH ? 0 : EPOLLIN;
    if (pending) ev |= EPOLLOUT;
    set_events(c, ev | EPOLLRDHUP);
    return true;
}

/* One read(2) and what follows. Returns false when the connection is done. */
static bool on_readable(conn *c)
{
    reserve(&c->in, &c->in_cap, c->in_len + READ_CHUNK);
    ssize_t n = read(c->fd, c->in + c->in_len, READ_CHUNK);
    if (n < 0) return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
    if (n == 0) return false;
    c->in_len += (size_t)n;
    handle_input(c, clock_ns(CLOCK_MONOTONIC), clock_ns(CLOCK_REALTIME) / 1000);
    return flush_out(c);
}

static void on_accept(int lfd)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                fprintf(stderr, "whsink: accept: %s\n", strerror(errno));
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        conn *c = calloc(1, sizeof(*c));
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        c->events = EPOLLIN | EPOLLRDHUP;
        struct epoll_event e = {.events = c->events, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e)) {
            close(fd);
            free(c);
            continue;
        }
        c->next = conns;
        if (conns) conns->prev = c;
        conns = c;
        n_conns++;
    }
}

static int listen_on(const char *host, int port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1 ||
        bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 1024)) {
        close(fd);
        return -1;
    }
    return fd;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: whsink --port P [--host 127.0.0.1] [--status 204] [--out FILE]\n"
            "              [--mark sent_us=] [--count N] [--idle S] [--max_time S]\n"
            "              [--workload NAME]\n"
            "  --port 0 picks a free port and prints \"LISTEN port=P\" on stdout first.\n"
            "  --out FILE: one line per request: arrival_us webhook-id mark ('-' if none).\n"
            "  --mark TEXT: the mark is the token after TEXT in the body (\"\": none),\n"
            "              unless an X-Sent-Us header gives it.\n"
            "  Stops on SIGINT/SIGTERM, after N requests, after S seconds without one\n"
            "  (once one came), or after --max_time seconds; then prints a RESULT line.\n");
    exit(1);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "--", 2) != 0 || i + 1 >= argc) usage();
        const char *k = a + 2, *v = argv[++i];
        char *end;
        if (!strcmp(k, "host"))
            o.host = v;
        else if (!strcmp(k, "port"))
            o.port = (int)strtol(v, &end, 10);
        else if (!strcmp(k, "status"))
            o.status = (int)strtol(v, &end, 10);
        else if (!strcmp(k, "count"))
            o.count = strtoull(v, &end, 10);
        else if (!strcmp(k, "idle"))
            o.idle = strtod(v, &end);
        else if (!strcmp(k, "max_time"))
            o.max_time = strtod(v, &end);
        else if (!strcmp(k, "out"))
            o.out = v;
        else if (!strcmp(k, "mark"))
            o.mark = v;
        else if (!strcmp(k, "workload"))
            o.workload = v;
        else
            usage();
        if ((!strcmp(k, "port") || !strcmp(k, "status") || !strcmp(k, "count") ||
             !strcmp(k, "idle") || !strcmp(k, "max_time")) &&
            (*end || !*v))
            usage();
    }
    if (o.port < 0 || o.port > 65535 || o.status < 200 || o.status > 599 || o.idle < 0 ||
        o.max_time < 0)
        usage();
    const char *reason = o.status == 204 ? "No Content" : o.status == 200 ? "OK" : "Status";
    answer_len = (size_t)snprintf(answer, sizeof(answer), "HTTP/1.1 %d %s\r\n%s", o.status, reason,
                                  o.status == 204 ? "" : "Content-Length: 0\r\n");

    if (o.out) {
        rec = fopen(o.out, "w");
        if (!rec) {
            fprintf(stderr, "whsink: %s: %s\n", o.out, strerror(errno));
            return 2;
        }
        setvbuf(rec, NULL, _IOFBF, 1 << 20);
    }
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: epoll_wait returns EINTR */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    int lfd = listen_on(o.host, o.port);
    if (lfd < 0) {
        fprintf(stderr, "whsink: cannot listen on %s:%d: %s\n", o.host, o.port, strerror(errno));
        return 2;
    }
    if (o.port == 0) {
        struct sockaddr_in sa_in;
        socklen_t sl = sizeof(sa_in);
        getsockname(lfd, (struct sockaddr *)&sa_in, &sl);
        printf("LISTEN port=%d\n", ntohs(sa_in.sin_port));
        fflush(stdout);
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event le = {.events = EPOLLIN, .data.ptr = NULL};
    if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &le)) {
        fprintf(stderr, "whsink: epoll: %s\n", strerror(errno));
        return 2;
    }

    int64_t t_start = clock_ns(CLOCK_MONOTONIC);
    static struct epoll_event evs[512];
    while (!stop_sig && !(o.count && n_req >= o.count)) {
        int64_t now = clock_ns(CLOCK_MONOTONIC);
        if (o.max_time > 0 && now - t_start >= (int64_t)(o.max_time * 1e9)) break;
        if (o.idle > 0 && t_last && now - t_last >= (int64_t)(o.idle * 1e9)) break;
        int n = epoll_wait(ep, evs, 512, 100);
        if (n < 0 && errno != EINTR) {
            fprintf(stderr, "whsink: epoll_wait: %s\n", strerror(errno));
            return 2;
        }
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (!c) {
                on_accept(lfd);
                continue;
            }
            uint32_t e = evs[i].events;
            bool alive = true;
            if (e & EPOLLOUT) alive = flush_out(c);
            if (alive && (e & EPOLLIN))
                alive = on_readable(c);
            else if (alive && (e & (EPOLLERR | EPOLLHUP | EPOLLRDHUP)) && !(e & EPOLLOUT))
                alive = false;
            if (!alive) conn_close(c);
        }
    }

    double window = t_last > t_first ? (double)(t_last - t_first) / 1e9 : 0;
    double rate = window > 0 ? (double)(n_req - 1) / window : 0;
    if (rec && fclose(rec)) {
        fprintf(stderr, "whsink: %s: %s\n", o.out, strerror(errno));
        return 2;
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    double cpu = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
                 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
    printf("RESULT workload=%s server=whsink value=%.6g unit=req/s count=%llu window_s=%.3f "
           "conns=%llu bytes=%llu marks=%llu ids=%llu bad=%llu cpu_s=%.2f\n",
           o.workload, rate, (unsigned long long)n_req, window, (unsigned long long)n_conns,
           (unsigned long long)n_bytes, (unsigned long long)n_marks, (unsigned long long)n_ids,
           (unsigned long long)n_bad, cpu);
    fflush(stdout);
    while (conns)
        conn_close(conns);
    free(scratch);
    close(ep);
    close(lfd);
    return 0;
}
