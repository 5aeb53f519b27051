/* fleet_bench: a fleet of idle MQTT devices against one broker node: how fast
 * they connect, what each costs the server in memory, what their keep-alive
 * costs it in CPU, and how long the whole fleet takes to come back after the
 * node restarts (issue 16, "150k connected devices on one node").
 *
 * The idea needed to read it: one parent process and --procs children, each
 * child a single-threaded epoll loop owning a contiguous slice of the
 * --conns devices (so each stays under the per-process descriptor limit).
 * Device i connects from the loopback address 127.0.0.(2 + i % --sources),
 * bound before connect with IP_BIND_ADDRESS_NO_PORT, so that the ephemeral
 * ports (about 28k per source and destination) do not run out. The parent
 * holds no socket: it drives the phases through a shared page (the phase
 * number), sums the children's counters there (each child writes only its
 * own), and reads the server's memory and CPU from /proc (the --server_pid
 * process and its children, cyan's shards: PSS from smaps_rollup and RSS
 * from status, as bench/cyan_bench.c's idle mode does).
 *
 * A device speaks MQTT 3.1.1 with raw bytes: CONNECT (clean session, client
 * id <--prefix><i>, no credentials: the servers run anonymous), then one
 * PINGREQ every --keepalive seconds counted from its last packet sent, as a
 * real client does. A connection that fails (refused, reset, no CONNACK
 * within --connect_timeout, a CONNACK refusing, the server closing) is
 * retried after a random delay in [0, min(--backoff_max, --backoff_base *
 * 2^attempt)] ("full jitter"); attempt goes back to 0 at each CONNACK.
 *
 * Phases:
 *   connect  every device connects; at most --window connections in progress
 *            per child (the pace of the server's accepts, not a SYN flood);
 *            ends when all are connected, or when the count has not grown
 *            for --stall seconds (a server at its limit: mosquitto)
 *   memory   --settle seconds later (the server's CPU over them: what
 *            holding the fleet costs while it is quiet, if no ping falls in
 *            them: their count is given), the server's memory against its memory
 *            before the first connect, per connected device; and the growth
 *            of the kernel's slab (/proc/meminfo) per connection, which
 *            counts both ends' sockets (the generator's too) and whatever
 *            else the machine did meanwhile: indicative
 *   hold     --hold seconds of keep-alive only: PINGREQs/s, PINGRESPs/s and
 *            the server's CPU over that time (a share of one core and per
 *            ping); memory again at its end
 *   restart  with --restart_cmd: that shell command stops the server
 *            (SIGTERM) and starts it again on the same data, printing a line
 *            "stopped", then "accepting", then "pid N" (the new server); the
 *            devices see their connections close and come back by their
 *            backoff, without a window; the time from the command's start
 *            until 50%, 90%, 99% and all of them are connected again
 *
 * Output: "RESULT workload=fleet server=S value=V unit=U key=value..." lines
 * on stdout, one per figure; progress on stderr. Exit status 0 on a run that
 * finished (whatever it measured: a server stopping short of --conns is a
 * figure, not a failure), 1 on usage errors, 2 if the generator itself
 * failed (fork, mmap, descriptors).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "procstat.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_PROCS 64
#define SCAN_MS 50 /* timers (pings, backoff, timeouts) are looked at this often */

enum { D_IDLE, D_CONNECTING, D_WAIT_CONNACK, D_UP };
enum { P_WAIT, P_CONNECT, P_HOLD, P_RESTART, P_QUIT };

/* One device. next_at: D_IDLE when to (re)connect, D_CONNECTING and
 * D_WAIT_CONNACK the deadline of the CONNACK, D_UP when to ping. */
typedef struct {
    int fd;
    uint8_t state;
    uint8_t attempt; /* failures since its last CONNACK */
    uint8_t rlen;    /* bytes of an incomplete packet in rbuf */
    bool started;    /* its first connect was made */
    uint8_t rbuf[4];
    int64_t next_at; /* mono ms */
} device;

/* One child's counters: written by that child only, read by the parent. */
typedef struct {
    volatile long up;       /* connected now (CONNACK 0 received, not closed) */
    volatile long connacks; /* CONNACKs accepting, ever */
    volatile long attempts; /* connect() calls */
    volatile long refused;  /* ECONNREFUSED */
    volatile long reset;    /* ECONNRESET/EPIPE before the CONNACK */
    volatile long timeout;  /* no CONNACK within connect_timeout (or ETIMEDOUT) */
    volatile long closed;   /* the server closed before the CONNACK (EOF) */
    volatile long rc_bad;   /* a CONNACK refusing */
    volatile long other;    /* other errors (EADDRNOTAVAIL, EMFILE, ...) */
    volatile long drops;    /* connected ones lost (EOF or error) */
    volatile long pings;    /* PINGREQs sent */
    volatile long pongs;    /* PINGRESPs received */
    volatile int ready;     /* the child is set up */
    char pad[64];
} counters;

typedef struct {
    volatile int phase;
    counters c[MAX_PROCS];
} shared;

static struct {
    const char *server;
    int port;
    int conns, procs, sources, window;
    int keepalive;
    double settle, hold, stall, connect_timeout, restart_timeout;
    int backoff_base, backoff_max; /* ms */
    int server_pid;
    const char *prefix;
    const char *restart_cmd;
} o = {.server = "server",
       .port = 1883,
       .conns = 150000,
       .procs = 0,
       .sources = 16,
       .window = 64,
       .keepalive = 60,
       .settle = 2,
       .hold = 60,
       .stall = 15,
       .connect_timeout = 10,
       .restart_timeout = 180,
       .backoff_base = 1000,
       .backoff_max = 32000,
       .server_pid = 0,
       .prefix = "fleet-",
       .restart_cmd = NULL};

static shared *sh;

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- a child: its slice of the fleet ---- */

static device *devs;
static int n_devs, first_dev, epfd, in_progress, next_new;
static counters *me;
static uint32_t rng;

static uint32_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static void backoff(device *d, int64_t now)
{
    int64_t cap = (int64_t)o.backoff_base << (d->attempt < 20 ? d->attempt : 20);
    if (cap > o.backoff_max) cap = o.backoff_max;
    if (d->attempt < 255) d->attempt++;
    d->next_at = now + (int64_t)(rnd() % (uint32_t)(cap + 1));
}

/* Close d (counting nothing) and schedule its retry. */
static void drop(device *d, int64_t now)
{
    if (d->state == D_CONNECTING || d->state == D_WAIT_CONNACK) in_progress--;
    if (d->state == D_UP) {
        me->up--;
        me->drops++;
    }
    close(d->fd);
    d->fd = -1;
    d->state = D_IDLE;
    d->rlen = 0;
    backoff(d, now);
}

static void count_error(int err)
{
    switch (err) {
    case ECONNREFUSED:
        me->refused++;
        break;
    case ECONNRESET:
    case EPIPE:
        me->reset++;
        break;
    case ETIMEDOUT:
        me->timeout++;
        break;
    default:
        me->other++;
        break;
    }
}

static void start(device *d, int64_t now)
{
    int i = first_dev + (int)(d - devs);
    d->started = true;
    me->attempts++;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        me->other++;
        d->state = D_IDLE;
        backoff(d, now);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    struct sockaddr_in src = {.sin_family = AF_INET};
    src.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(i % o.sources));
    struct sockaddr_in dst = {.sin_family = AF_INET, .sin_port = htons((uint16_t)o.port)};
    dst.sin_addr.s_addr = htonl(0x7f000001u);
    d->fd = fd;
    d->state = D_CONNECTING;
    in_progress++;
    d->next_at = now + (int64_t)(o.connect_timeout * 1000);
    if (bind(fd, (struct sockaddr *)&src, sizeof(src)) != 0 ||
        (connect(fd, (struct sockaddr *)&dst, sizeof(dst)) != 0 && errno != EINPROGRESS)) {
        count_error(errno);
        drop(d, now);
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (uint32_t)(d - devs)};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        me->other++;
        drop(d, now);
    }
}

/* The socket connected: send CONNECT. */
static void on_connected(device *d, int64_t now)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(d->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err) {
        count_error(err);
        drop(d, now);
        return;
    }
    char id[64];
    int idl = snprintf(id, sizeof(id), "%s%d", o.prefix, first_dev + (int)(d - devs));
    uint8_t p[96];
    size_t n = 0;
    p[n++] = 0x10;
    p[n++] = (uint8_t)(10 + 2 + idl);
    static const uint8_t vh[] = {0, 4, 'M', 'Q', 'T', 'T', 4, 0x02};
    memcpy(p + n, vh, sizeof(vh));
    n += sizeof(vh);
    p[n++] = (uint8_t)(o.keepalive >> 8);
    p[n++] = (uint8_t)o.keepalive;
    p[n++] = 0;
    p[n++] = (uint8_t)idl;
    memcpy(p + n, id, (size_t)idl);
    n += (size_t)idl;
    if (write(d->fd, p, n) != (ssize_t)n) {
        count_error(errno);
        drop(d, now);
        return;
    }
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(d - devs)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, d->fd, &ev);
    d->state = D_WAIT_CONNACK;
}

static void on_readable(device *d, int64_t now)
{
    uint8_t buf[256];
    ssize_t r = read(d->fd, buf + d->rlen, sizeof(buf) - d->rlen);
    if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (r <= 0) {
        if (r == 0) {
            if (d->state != D_UP) me->closed++;
        } else if (d->state != D_UP) {
            count_error(errno);
        }
        drop(d, now);
        return;
    }
    memcpy(buf, d->rbuf, d->rlen);
    size_t n = d->rlen + (size_t)r, off = 0;
    while (n - off >= 2) {
        uint8_t t = buf[off], l = buf[off + 1];
        if (l > 127 || n - off < 2u + l) break; /* no remaining length over 127 comes here */
        if (t == 0x20 && l == 2 && d->state == D_WAIT_CONNACK) {
            in_progress--;
            if (buf[off + 3] != 0) {
                me->rc_bad++;
                d->state = D_IDLE; /* not in progress any more: drop must not count it */
                close(d->fd);
                d->fd = -1;
                backoff(d, now);
                return;
            }
            d->state = D_UP;
            d->attempt = 0;
            d->next_at =
                now + (int64_t)o.keepalive * 1000; /* a PINGREQ when nothing else is sent */
            me->up++;
            me->connacks++;
        } else if (t == 0xD0 && l == 0) {
            me->pongs++;
        }
        off += 2u + l;
    }
    if (n - off > sizeof(d->rbuf)) {
        me->other++;
        drop(d, now);
        return;
    }
    d->rlen = (uint8_t)(n - off);
    memcpy(d->rbuf, buf + off, d->rlen);
}

/* Pings due, retries due, timeouts. */
static void scan(int64_t now, int phase)
{
    static const uint8_t ping[2] = {0xC0, 0x00};
    for (int i = 0; i < n_devs; i++) {
        device *d = &devs[i];
        if (d->next_at > now) continue;
        switch (d->state) {
        case D_UP:
            if (write(d->fd, ping, 2) == 2) {
                me->pings++;
                d->next_at = now + (int64_t)o.keepalive * 1000;
            } else {
                drop(d, now);
            }
            break;
        case D_CONNECTING:
        case D_WAIT_CONNACK:
            me->timeout++;
            drop(d, now);
            break;
        case D_IDLE:
            /* retries: in the connect phase inside the window, after it alone */
            if (d->started && (phase != P_CONNECT || in_progress < o.window)) start(d, now);
            break;
        }
    }
}

static void child(int k, int first, int count)
{
    me = &sh->c[k];
    first_dev = first;
    n_devs = count;
    rng = 0x9e3779b9u ^ (uint32_t)(k * 7919 + 1);
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* the parent gone (killed, alarm): so are we */
    if (getppid() == 1) _exit(2);
    devs = calloc(count > 0 ? (size_t)count : 1, sizeof(*devs));
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!devs || epfd < 0) _exit(2);
    for (int i = 0; i < count; i++)
        devs[i].fd = -1;
    me->ready = 1;
    while (sh->phase == P_WAIT)
        usleep(1000);
    struct epoll_event evs[512];
    int64_t last_scan = 0;
    for (;;) {
        int phase = sh->phase;
        if (phase == P_QUIT) break;
        int64_t now = now_ms();
        /* the first connect of each device, in order, inside the window */
        while (next_new < n_devs && in_progress < o.window)
            start(&devs[next_new++], now);
        int n = epoll_wait(epfd, evs, 512, 10);
        now = now_ms();
        for (int e = 0; e < n; e++) {
            device *d = &devs[evs[e].data.u32];
            if (d->fd < 0) continue;
            if (d->state == D_CONNECTING) {
                if (evs[e].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(d, now);
            } else if (evs[e].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) {
                on_readable(d, now);
            }
        }
        if (now - last_scan >= SCAN_MS) {
            scan(now, phase);
            last_scan = now;
        }
    }
    /* no TIME_WAIT left behind on the generator's ports: reset, not FIN */
    struct linger lg = {1, 0};
    for (int i = 0; i < n_devs; i++)
        if (devs[i].fd >= 0) {
            setsockopt(devs[i].fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
            close(devs[i].fd);
        }
    _exit(0);
}

/* ---- the parent: the server's memory and CPU (as bench/cyan_bench.c) ---- */

static ps_mem server_mem(void)
{
    ps_mem m = {0, 0, 0};
    if (!o.server_pid) return m;
    int pids[256];
    return ps_memory(pids, ps_family(o.server_pid, pids, 256));
}

/* CPU seconds (user + system) used so far by the server and its children. */
static double server_cpu(void)
{
    if (!o.server_pid) return 0;
    int pids[256];
    return ps_cpu_s(pids, ps_family(o.server_pid, pids, 256));
}

static counters sum(void)
{
    counters t;
    memset(&t, 0, sizeof(t));
    for (int k = 0; k < o.procs; k++) {
        const counters *c = &sh->c[k];
        t.up += c->up;
        t.connacks += c->connacks;
        t.attempts += c->attempts;
        t.refused += c->refused;
        t.reset += c->reset;
        t.timeout += c->timeout;
        t.closed += c->closed;
        t.rc_bad += c->rc_bad;
        t.other += c->other;
        t.drops += c->drops;
        t.pings += c->pings;
        t.pongs += c->pongs;
    }
    return t;
}

static void result(const char *what, double value, const char *unit, const char *extra)
{
    printf("RESULT workload=fleet server=%s what=%s value=%.6g unit=%s %s\n", o.server, what, value,
           unit, extra ? extra : "");
    fflush(stdout);
}

static void failures(char *buf, size_t cap, const counters *a, const counters *b)
{
    snprintf(buf, cap,
             "attempts=%ld refused=%ld reset=%ld timeout=%ld closed_before_connack=%ld "
             "connack_refusing=%ld other=%ld drops=%ld",
             b->attempts - a->attempts, b->refused - a->refused, b->reset - a->reset,
             b->timeout - a->timeout, b->closed - a->closed, b->rc_bad - a->rc_bad,
             b->other - a->other, b->drops - a->drops);
}

/* Sleep up to s seconds, watching that the children live. */
static void nap(double s)
{
    double end = now_s() + s;
    while (now_s() < end)
        usleep(5000);
}

/* Run the restart command; the fleet's way back. */
static void run_restart(void)
{
    int pfd[2];
    if (pipe(pfd) != 0) return;
    counters c0 = sum();
    long n0 = c0.up;
    double t0 = now_s();
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], 1);
        close(pfd[0]);
        close(pfd[1]);
        execl("/bin/sh", "sh", "-c", o.restart_cmd, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    sh->phase = P_RESTART;
    double t_stopped = -1, t_accepting = -1, t_zero = -1, t50 = -1, t90 = -1, t99 = -1, t_all = -1;
    long low = n0;
    char line[256];
    size_t ll = 0;
    bool eof = false;
    fprintf(stderr, "fleet_bench: restart: %ld connected, running the restart command\n", n0);
    while (now_s() - t0 < o.restart_timeout) {
        struct pollfd p = {.fd = pfd[0], .events = POLLIN};
        if (!eof && poll(&p, 1, 5) > 0) {
            ssize_t r = read(pfd[0], line + ll, sizeof(line) - 1 - ll);
            if (r <= 0) {
                eof = true;
            } else {
                ll += (size_t)r;
                line[ll] = 0;
                char *nl;
                while ((nl = strchr(line, '\n'))) {
                    *nl = 0;
                    double t = now_s() - t0;
                    if (!strcmp(line, "stopped"))
                        t_stopped = t;
                    else if (!strcmp(line, "accepting"))
                        t_accepting = t;
                    else if (!strncmp(line, "pid ", 4))
                        o.server_pid = atoi(line + 4);
                    fprintf(stderr, "fleet_bench: restart: %.3f s: %s\n", t, line);
                    size_t rest = ll - (size_t)(nl + 1 - line);
                    memmove(line, nl + 1, rest + 1);
                    ll = rest;
                }
                if (ll == sizeof(line) - 1) ll = 0;
            }
        } else if (eof) {
            usleep(5000);
        }
        long up = sum().up;
        double t = now_s() - t0;
        if (up < low) low = up;
        if (low == 0 && t_zero < 0) t_zero = t;
        if (low < n0 / 2 && t_stopped >= 0) {
            /* the way back counts once the old server is gone */
            if (t50 < 0 && up >= n0 / 2) t50 = t;
            if (t90 < 0 && up >= n0 * 9 / 10) t90 = t;
            if (t99 < 0 && up >= n0 * 99 / 100) t99 = t;
            if (up >= n0) {
                t_all = t;
                break;
            }
        }
    }
    close(pfd[0]);
    waitpid(pid, NULL, 0);
    counters c1 = sum();
    char extra[768];
    int n = snprintf(extra, sizeof(extra),
                     "devices=%ld stopped_s=%.3f all_down_s=%.3f accepting_s=%.3f p50_s=%.3f "
                     "p90_s=%.3f p99_s=%.3f lowest=%ld now_up=%ld backoff_base_ms=%d "
                     "backoff_max_ms=%d ",
                     n0, t_stopped, t_zero, t_accepting, t50, t90, t99, low, c1.up, o.backoff_base,
                     o.backoff_max);
    failures(extra + n, sizeof(extra) - (size_t)n, &c0, &c1);
    result("reconnect_all", t_all, "s", extra);
}

static void usage(void)
{
    fprintf(stderr,
            "usage: fleet_bench [--port P] [--conns N] [--procs K] [--sources S] [--window W]\n"
            "  [--keepalive S] [--settle S] [--hold S] [--stall S] [--connect_timeout S]\n"
            "  [--backoff_base MS] [--backoff_max MS] [--server_pid PID] [--server NAME]\n"
            "  [--prefix ID-PREFIX] [--restart_cmd CMD] [--restart_timeout S]\n");
    exit(1);
}

int main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        if (strncmp(argv[i], "--", 2) != 0 || i + 1 >= argc) usage();
        const char *k = argv[i] + 2, *v = argv[++i];
        if (!strcmp(k, "port"))
            o.port = atoi(v);
        else if (!strcmp(k, "conns"))
            o.conns = atoi(v);
        else if (!strcmp(k, "procs"))
            o.procs = atoi(v);
        else if (!strcmp(k, "sources"))
            o.sources = atoi(v);
        else if (!strcmp(k, "window"))
            o.window = atoi(v);
        else if (!strcmp(k, "keepalive"))
            o.keepalive = atoi(v);
        else if (!strcmp(k, "settle"))
            o.settle = atof(v);
        else if (!strcmp(k, "hold"))
            o.hold = atof(v);
        else if (!strcmp(k, "stall"))
            o.stall = atof(v);
        else if (!strcmp(k, "connect_timeout"))
            o.connect_timeout = atof(v);
        else if (!strcmp(k, "restart_timeout"))
            o.restart_timeout = atof(v);
        else if (!strcmp(k, "backoff_base"))
            o.backoff_base = atoi(v);
        else if (!strcmp(k, "backoff_max"))
            o.backoff_max = atoi(v);
        else if (!strcmp(k, "server_pid"))
            o.server_pid = atoi(v);
        else if (!strcmp(k, "server"))
            o.server = v;
        else if (!strcmp(k, "prefix"))
            o.prefix = v;
        else if (!strcmp(k, "restart_cmd"))
            o.restart_cmd = v;
        else
            usage();
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    long per_max = (long)rl.rlim_cur - 64;
    if (o.procs <= 0) o.procs = (int)((o.conns + 14999) / 15000);
    if (o.conns < 1 || o.procs < 1 || o.procs > MAX_PROCS || o.sources < 1 || o.sources > 250 ||
        o.window < 1 || o.keepalive < 1 || o.keepalive > 65535 || o.port < 1 || o.port > 65535 ||
        o.backoff_base < 1 || o.backoff_max < o.backoff_base || strlen(o.prefix) > 40)
        usage();
    int per = (o.conns + o.procs - 1) / o.procs;
    if (per > per_max) {
        fprintf(stderr,
                "fleet_bench: %d connections per process over the descriptor limit %ld: use "
                "more --procs\n",
                per, (long)rl.rlim_cur);
        return 1;
    }
    sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) return 2;
    sh->phase = P_WAIT;
    signal(SIGPIPE, SIG_IGN);
    pid_t kids[MAX_PROCS];
    for (int k = 0; k < o.procs; k++) {
        int first = k * per, count = o.conns - first < per ? o.conns - first : per;
        if (count < 0) count = 0;
        kids[k] = fork();
        if (kids[k] < 0) return 2;
        if (kids[k] == 0) child(k, first, count);
    }
    /* Every run is bounded: the connect phase by --stall (and N), the others
     * by their seconds; this is the backstop (the children die with us). */
    alarm((unsigned)(900 + o.settle + o.hold + o.restart_timeout));
    for (int k = 0; k < o.procs; k++)
        for (int i = 0; !sh->c[k].ready; i++) {
            if (i > 10000 || waitpid(kids[k], NULL, WNOHANG) == kids[k]) {
                fprintf(stderr, "fleet_bench: generator process %d did not start\n", k);
                return 2;
            }
            usleep(1000);
        }

    /* connect */
    ps_mem m0 = server_mem();
    double slab0 = 0, slab1 = 0; /* the kernel's (both ends' sockets: client and server) */
    ps_read_kb("/proc/meminfo", "Slab:", &slab0);
    double cpu0 = server_cpu();
    counters c0 = sum();
    double t0 = now_s(), last_growth = t0, t_all = -1, t_half = -1;
    long best = 0;
    sh->phase = P_CONNECT;
    fprintf(stderr, "fleet_bench: %s: %d devices from %d processes, %d source addresses\n",
            o.server, o.conns, o.procs, o.sources);
    double next_report = t0 + 5;
    for (;;) {
        usleep(2000);
        long up = sum().up;
        double t = now_s();
        if (up > best) {
            best = up;
            last_growth = t;
        }
        if (t_half < 0 && up >= o.conns / 2) t_half = t - t0;
        if (up >= o.conns) {
            t_all = t - t0;
            break;
        }
        if (t - last_growth > o.stall) break;
        if (t >= next_report) {
            fprintf(stderr, "fleet_bench: %s: %ld connected after %.0f s\n", o.server, up, t - t0);
            next_report += 5;
        }
    }
    double t_conn = (t_all >= 0 ? t_all : last_growth - t0);
    double cpu1 = server_cpu();
    counters c1 = sum();
    char extra[768], fail[512];
    failures(fail, sizeof(fail), &c0, &c1);
    snprintf(extra, sizeof(extra),
             "devices=%d connected=%ld all=%d time_s=%.3f half_s=%.3f server_cpu_s=%.2f "
             "cpu_per_conn_us=%.1f procs=%d sources=%d window=%d %s",
             o.conns, c1.up, t_all >= 0, t_conn, t_half, cpu1 - cpu0,
             c1.up ? (cpu1 - cpu0) * 1e6 / (double)c1.up : 0, o.procs, o.sources, o.window, fail);
    result("connect_rate", c1.up / (t_conn > 0 ? t_conn : 1), "conn/s", extra);

    /* memory; the server's CPU while the fleet is quiet (before the first
     * pings: the cost of holding connections, not of their traffic) */
    counters q0 = sum();
    double qc0 = server_cpu(), qt0 = now_s();
    nap(o.settle);
    double qc1 = server_cpu(), qt = now_s() - qt0;
    counters q1 = sum();
    ps_mem m1 = server_mem();
    ps_read_kb("/proc/meminfo", "Slab:", &slab1);
    long up = sum().up;
    snprintf(extra, sizeof(extra),
             "connected=%ld procs=%d pss_before_kb=%.0f pss_after_kb=%.0f rss_before_kb=%.0f "
             "rss_after_kb=%.0f rss_per_conn_b=%.0f kernel_slab_per_pair_b=%.0f",
             up, m1.nproc, m0.pss_kb, m1.pss_kb, m0.rss_kb, m1.rss_kb,
             up ? (m1.rss_kb - m0.rss_kb) * 1024 / (double)up : 0,
             up ? (slab1 - slab0) * 1024 / (double)up : 0);
    if (o.server_pid)
        result("memory", up ? (m1.pss_kb - m0.pss_kb) * 1024 / (double)up : 0, "B/conn", extra);
    snprintf(extra, sizeof(extra), "connected=%ld seconds=%.1f pings=%ld server_cpu_s=%.3f", up, qt,
             q1.pings - q0.pings, qc1 - qc0);
    if (o.server_pid) result("quiet_cpu", (qc1 - qc0) / qt, "core", extra);

    /* hold: keep-alive only */
    if (o.hold > 0) {
        sh->phase = P_HOLD;
        counters h0 = sum();
        double hc0 = server_cpu(), ht0 = now_s();
        nap(o.hold);
        counters h1 = sum();
        double hc1 = server_cpu(), ht = now_s() - ht0;
        ps_mem m2 = server_mem();
        long pings = h1.pings - h0.pings, pongs = h1.pongs - h0.pongs;
        snprintf(extra, sizeof(extra),
                 "keepalive_s=%d hold_s=%.1f connected=%ld pings=%ld pongs=%ld pongs_per_s=%.1f "
                 "server_cpu_s=%.3f server_core=%.4f cpu_per_ping_us=%.1f drops=%ld "
                 "pss_per_conn_after_b=%.0f rss_per_conn_after_b=%.0f",
                 o.keepalive, ht, h1.up, pings, pongs, (double)pongs / ht, hc1 - hc0,
                 (hc1 - hc0) / ht, pongs ? (hc1 - hc0) * 1e6 / (double)pongs : 0,
                 h1.drops - h0.drops, h1.up ? (m2.pss_kb - m0.pss_kb) * 1024 / (double)h1.up : 0,
                 h1.up ? (m2.rss_kb - m0.rss_kb) * 1024 / (double)h1.up : 0);
        result("keepalive", (double)pings / ht, "ping/s", extra);
    }

    if (o.restart_cmd) run_restart();

    sh->phase = P_QUIT;
    for (int k = 0; k < o.procs; k++)
        waitpid(kids[k], NULL, 0);
    return 0;
}
