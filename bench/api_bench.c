/* api_bench: the round trip of a function call, through cyan's HTTP API and,
 * for comparison, as plain MQTT request/response through a broker.
 *
 * One process, two threads. The device thread is an MQTT client written with
 * cyan's own codec (src/mqtt/mqtt.h) over a blocking socket: it connects as a
 * registered device (username and client id = device id, password = secret),
 * subscribes to devices/<id>/call/# at QoS 1, publishes its describe
 * {"functions":["echo"]} retained at QoS 1, and answers every call by
 * publishing the argument back at QoS 1: on devices/<id>/reply/<request id>
 * (the last level of the call's topic) or, for an MQTT 5 call that carries a
 * Response Topic, there with the call's Correlation Data
 * (docs/device-protocol.md, "The device convention"). The main thread is the
 * application, and the idea needed to read it is that it makes one call at a
 * time and times each with CLOCK_MONOTONIC, from just before the request is
 * written to just after the matching answer is decoded:
 *
 *   --mode api   libcurl's easy interface on one kept-alive connection:
 *                POST /v1/devices/<id>/functions/echo {"arg":"<seq>"} with a
 *                bearer token; the answer must be 200 with return_value <seq>.
 *                cyan publishes the call to the device and answers the HTTP
 *                request when the device's reply arrives.
 *   --mode mqtt  the same exchange without HTTP: the application is a second
 *                MQTT client (anonymous) that publishes the call at QoS 1 on
 *                devices/<id>/call/echo/<seq> (MQTT 5: devices/<id>/call/echo
 *                with Response Topic devices/<id>/reply and Correlation Data
 *                <seq>) and waits for the device's reply, which it
 *                acknowledges. This runs against any broker: mosquitto, or
 *                cyan with isolate_devices=false (an isolated device's replies
 *                are taken by the API and never routed to other clients).
 *
 * With several cyan shards, which shard serves a request matters: the HTTP
 * connection is accepted by whichever shard the kernel wakes, and the device
 * lives on the shard its id hashes to. --http_shard same|other keeps opening
 * connections until one is accepted by the device's shard (same) or by
 * another (other); the accepting shard is found through /proc (the process
 * holding the server end of the connection, and its "cyan shard INDEX"
 * command line). In mqtt mode --app_shard same|other picks the application's
 * client id so that cyan places it on the device's shard or on another.
 *
 * Everything is bounded: a per-call timeout (--timeout_ms), the setup
 * (--setup_timeout), the whole run (--max_seconds, also enforced by alarm()).
 * 127.0.0.1 only.
 *
 * Output: one line "RESULT workload=call mode=M server=S count=N p50_us=..."
 * on stdout; progress and errors on stderr. Exit status 0 on a clean run, 1
 * on a usage error, 2 on a failed run (setup failed, or any call failed).
 */
#include "core/cy_buf.h"
#include "core/cy_err.h"
#include "core/cy_map.h"
#include "mqtt/mqtt.h"
#include "netutil.h"
#include "procstat.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define KEEPALIVE_S 600           /* longer than any run: no PINGREQ needed */
#define DEVICE_POLL_NS 50000000LL /* the device thread checks for "stop" this often */
#define MAX_ERRORS 20             /* a run stops after this many failed calls */
#define RESP_MAX (64 * 1024)      /* largest HTTP answer kept, bytes */

enum { MODE_API, MODE_MQTT };
enum { SHARD_ANY, SHARD_SAME, SHARD_OTHER };

/* ---- settings ---- */
static struct {
    int mode;
    char http_host[64];
    int http_port;
    char mqtt_host[64];
    int mqtt_port;
    const char *token;
    const char *device;
    const char *secret;
    int proto;            /* MQTT protocol level of both clients: 4 (3.1.1) or 5 */
    long count;           /* measured calls */
    long warmup;          /* calls before measuring */
    long timeout_ms;      /* per call */
    double setup_timeout; /* seconds: connecting, subscribing, finding a shard */
    double max_seconds;   /* the whole run */
    int http_shard;       /* api mode: SHARD_* */
    int app_shard;        /* mqtt mode: SHARD_* */
    int shards;           /* mqtt mode with --app_shard: cyan's shard count */
    int server_pid;       /* for CPU per call; 0: not measured */
    const char *server;   /* label */
} o = {
    .mode = MODE_API,
    .http_host = "127.0.0.1",
    .http_port = 8080,
    .mqtt_host = "127.0.0.1",
    .mqtt_port = 1883,
    .proto = 4,
    .count = 5000,
    .warmup = 200,
    .timeout_ms = 5000,
    .setup_timeout = 15,
    .max_seconds = 300,
    .server = "server",
};

static void on_alarm(int sig)
{
    (void)sig;
    static const char msg[] = "api_bench: hard time limit reached, exiting\n";
    ssize_t r = write(2, msg, sizeof(msg) - 1);
    (void)r;
    _exit(3);
}

/* ---- a minimal blocking MQTT client on cyan's codec ---- */

typedef struct mq {
    int fd;
    uint8_t version;
    const char *who;  /* "device" or "app", for messages */
    cy_buf in;        /* bytes read and not yet consumed */
    size_t last_used; /* size of the packet handed out last: consumed by the next mq_next */
    cy_buf out;       /* encoded packets not yet written */
    uint16_t next_pid;
} mq;

static uint16_t mq_pid(mq *m)
{
    m->next_pid = (uint16_t)(m->next_pid == 65535 ? 1 : m->next_pid + 1);
    return m->next_pid;
}

static int mq_flush(mq *m)
{
    while (cy_buf_size(&m->out)) {
        ssize_t n = write(m->fd, cy_buf_head(&m->out), cy_buf_size(&m->out));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            fprintf(stderr, "api_bench: %s: write: %s\n", m->who, strerror(errno));
            return -1;
        }
        cy_buf_consume(&m->out, (size_t)n);
    }
    return 0;
}

static int mq_put(mq *m, const cy_mqtt_packet *p)
{
    int rc = cy_mqtt_encode(&m->out, m->version, p);
    if (rc) fprintf(stderr, "api_bench: %s: encode: %s\n", m->who, cy_strerror(rc));
    return rc;
}

/* The next packet from the server into *p (borrowing from m->in until the
 * next call). Returns 1 with a packet, 0 if the deadline (CLOCK_MONOTONIC ns)
 * passed first, -1 if the connection failed or sent something malformed. */
static int mq_next(mq *m, cy_mqtt_packet *p, int64_t deadline)
{
    cy_buf_consume(&m->in, m->last_used);
    m->last_used = 0;
    for (;;) {
        size_t used = 0;
        int rc = cy_mqtt_decode(cy_buf_head(&m->in), cy_buf_size(&m->in), m->version, p, &used);
        if (rc == 0) {
            m->last_used = used;
            return 1;
        }
        if (rc != CY_EAGAIN) {
            fprintf(stderr, "api_bench: %s: bad packet from the server: %s\n", m->who,
                    cy_strerror(rc));
            return -1;
        }
        int64_t left = deadline - bench_now_ns();
        if (left <= 0) return 0;
        struct pollfd pf = {.fd = m->fd, .events = POLLIN};
        int pr = poll(&pf, 1, (int)((left + 999999) / 1000000));
        if (pr < 0 && errno == EINTR) continue;
        if (pr < 0) return -1;
        if (pr == 0) continue; /* the deadline check above ends it */
        if (cy_buf_reserve(&m->in, 64 * 1024)) return -1;
        ssize_t n = read(m->fd, m->in.data + m->in.len, m->in.cap - m->in.len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            fprintf(stderr, "api_bench: %s: connection %s\n", m->who,
                    n == 0 ? "closed by the server" : strerror(errno));
            return -1;
        }
        m->in.len += (size_t)n;
    }
}

/* Wait for a packet of the given type; others are skipped (used during
 * setup only, before anything is subscribed). */
static int mq_expect(mq *m, uint8_t type, cy_mqtt_packet *p, int64_t deadline)
{
    for (;;) {
        int rc = mq_next(m, p, deadline);
        if (rc <= 0) {
            if (rc == 0)
                fprintf(stderr, "api_bench: %s: no %s from the server in time\n", m->who,
                        cy_mqtt_type_name(type));
            return -1;
        }
        if (p->type == type) return 0;
    }
}

static cy_str str_of(const char *s)
{
    return (cy_str){s, (uint32_t)strlen(s)};
}

/* Connect, send CONNECT (user NULL: anonymous), wait for a successful CONNACK. */
static int mq_open(mq *m, const char *who, const char *client_id, const char *user,
                   const char *pass, int64_t deadline)
{
    memset(m, 0, sizeof(*m));
    m->who = who;
    m->version = (uint8_t)o.proto;
    cy_buf_init(&m->in);
    cy_buf_init(&m->out);
    m->fd = bench_tcp_connect(o.mqtt_host, o.mqtt_port);
    if (m->fd < 0) {
        fprintf(stderr, "api_bench: %s: cannot connect to %s:%d: %s\n", who, o.mqtt_host,
                o.mqtt_port, strerror(errno));
        return -1;
    }
    cy_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = CY_MQTT_CONNECT;
    p.u.connect.version = m->version;
    p.u.connect.clean_start = true;
    p.u.connect.keep_alive = KEEPALIVE_S;
    p.u.connect.client_id = str_of(client_id);
    if (user) {
        p.u.connect.has_username = p.u.connect.has_password = true;
        p.u.connect.username = str_of(user);
        p.u.connect.password = str_of(pass);
    }
    if (mq_put(m, &p) || mq_flush(m) || mq_expect(m, CY_MQTT_CONNACK, &p, deadline)) return -1;
    if (p.u.connack.reason != 0) {
        fprintf(stderr, "api_bench: %s: connection refused, reason 0x%02x\n", who,
                p.u.connack.reason);
        return -1;
    }
    return 0;
}

static int mq_subscribe(mq *m, const char *filter, int64_t deadline)
{
    cy_mqtt_sub_entry e = {.filter = str_of(filter), .qos = 1};
    cy_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = CY_MQTT_SUBSCRIBE;
    p.u.subscribe.packet_id = mq_pid(m);
    p.u.subscribe.entries = &e;
    p.u.subscribe.count = 1;
    if (mq_put(m, &p) || mq_flush(m) || mq_expect(m, CY_MQTT_SUBACK, &p, deadline)) return -1;
    if (p.u.suback.count != 1 || p.u.suback.reasons[0] > 2) {
        fprintf(stderr, "api_bench: %s: subscription to %s refused (0x%02x)\n", m->who, filter,
                p.u.suback.count ? p.u.suback.reasons[0] : 0xff);
        return -1;
    }
    return 0;
}

static void mq_close(mq *m)
{
    if (m->fd >= 0) {
        cy_mqtt_packet p;
        memset(&p, 0, sizeof(p));
        p.type = CY_MQTT_DISCONNECT;
        if (mq_put(m, &p) == 0) (void)mq_flush(m);
        close(m->fd);
        m->fd = -1;
    }
    cy_buf_fini(&m->in);
    cy_buf_fini(&m->out);
}

/* ---- the device (its own thread) ---- */

static atomic_int dev_state; /* 0 starting, 1 ready, -1 failed */
static atomic_bool dev_stop;
static atomic_long dev_calls; /* calls answered */
static atomic_long dev_odd;   /* PUBLISHes it could not answer */

static int device_setup(mq *m)
{
    int64_t deadline = bench_now_ns() + (int64_t)(o.setup_timeout * 1e9);
    char filter[160], topic[160];
    if (mq_open(m, "device", o.device, o.device, o.secret, deadline)) return -1;
    snprintf(filter, sizeof(filter), "devices/%s/call/#", o.device);
    if (mq_subscribe(m, filter, deadline)) return -1;
    /* The describe, retained at QoS 1: its PUBACK means cyan holds it on
     * every shard, so the API knows "echo" before the first call. */
    static const char describe[] = "{\"functions\":[\"echo\"]}";
    snprintf(topic, sizeof(topic), "devices/%s/describe", o.device);
    cy_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = CY_MQTT_PUBLISH;
    p.u.publish.qos = 1;
    p.u.publish.retain = true;
    p.u.publish.topic = str_of(topic);
    p.u.publish.packet_id = mq_pid(m);
    p.u.publish.payload = (const uint8_t *)describe;
    p.u.publish.payload_len = sizeof(describe) - 1;
    if (mq_put(m, &p) || mq_flush(m) || mq_expect(m, CY_MQTT_PUBACK, &p, deadline)) return -1;
    if (p.u.ack.reason >= 0x80) {
        fprintf(stderr, "api_bench: device: describe refused (0x%02x)\n", p.u.ack.reason);
        return -1;
    }
    return 0;
}

/* Answer one call: PUBACK it, publish the argument back, one write(2). */
static int device_answer(mq *m, const cy_mqtt_publish *call, const char *call_prefix,
                         size_t prefix_len)
{
    cy_mqtt_packet r;
    memset(&r, 0, sizeof(r));
    if (call->qos == 1) {
        r.type = CY_MQTT_PUBACK;
        r.u.ack.packet_id = call->packet_id;
        if (mq_put(m, &r)) return -1;
        memset(&r, 0, sizeof(r));
    }
    char topic[512];
    r.type = CY_MQTT_PUBLISH;
    r.u.publish.qos = 1;
    r.u.publish.packet_id = mq_pid(m);
    r.u.publish.payload = call->payload;
    r.u.publish.payload_len = call->payload_len;
    const cy_mqtt_props *cp = &call->props;
    if (m->version == CY_MQTT_V5 && (cp->present & CY_PBIT(CY_PROP_RESPONSE_TOPIC))) {
        r.u.publish.topic = cp->response_topic;
        if (cp->present & CY_PBIT(CY_PROP_CORRELATION_DATA)) {
            r.u.publish.props.present = CY_PBIT(CY_PROP_CORRELATION_DATA);
            r.u.publish.props.correlation_data = cp->correlation_data;
        }
    } else {
        /* devices/<id>/call/<function>/<request id>: the request id is the last level */
        const char *t = call->topic.p;
        size_t len = call->topic.len;
        if (len <= prefix_len || memcmp(t, call_prefix, prefix_len) != 0) return 1;
        const char *slash = t + len;
        while (slash > t + prefix_len && slash[-1] != '/')
            slash--;
        slash--; /* at the '/' before the request id, or before the prefix's end */
        if (slash < t + prefix_len || slash + 1 == t + len) return 1;
        int n = snprintf(topic, sizeof(topic), "devices/%s/reply/%.*s", o.device,
                         (int)(t + len - slash - 1), slash + 1);
        if (n < 0 || (size_t)n >= sizeof(topic)) return 1;
        r.u.publish.topic = str_of(topic);
    }
    if (mq_put(m, &r) || mq_flush(m)) return -1;
    return 0;
}

static void *device_main(void *arg)
{
    (void)arg;
    mq m;
    if (device_setup(&m)) {
        atomic_store(&dev_state, -1);
        mq_close(&m);
        return NULL;
    }
    char prefix[160];
    int plen = snprintf(prefix, sizeof(prefix), "devices/%s/call/", o.device);
    atomic_store(&dev_state, 1);
    while (!atomic_load(&dev_stop)) {
        cy_mqtt_packet p;
        int rc = mq_next(&m, &p, bench_now_ns() + DEVICE_POLL_NS);
        if (rc < 0) {
            atomic_store(&dev_state, -1);
            break;
        }
        if (rc == 0 || p.type != CY_MQTT_PUBLISH) continue; /* PUBACKs of its replies */
        rc = device_answer(&m, &p.u.publish, prefix, (size_t)plen);
        if (rc < 0) {
            atomic_store(&dev_state, -1);
            break;
        }
        if (rc == 0)
            atomic_fetch_add(&dev_calls, 1);
        else
            atomic_fetch_add(&dev_odd, 1);
    }
    mq_close(&m);
    return NULL;
}

static int wait_device(void)
{
    int64_t deadline = bench_now_ns() + (int64_t)((o.setup_timeout + 1) * 1e9);
    while (bench_now_ns() < deadline) {
        int s = atomic_load(&dev_state);
        if (s) return s > 0 ? 0 : -1;
        usleep(1000);
    }
    fprintf(stderr, "api_bench: the device did not get ready in time\n");
    return -1;
}

/* ---- samples ---- */

static int64_t *lat;    /* measured round trips, ns */
static double *srv_rtt; /* api mode: round_trip_ms of each answer, as cyan measured it */
static long n_lat, n_srv;
static long n_errors, n_timeouts, n_new_conns;

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest rank: the smallest sample with at least q of them at or below it. */
static size_t rank_of(double q, size_t n)
{
    size_t r = (size_t)(q * (double)n);
    if ((double)r < q * (double)n) r++;
    return r ? r - 1 : 0;
}

static void note_error(const char *fmt, long seq, const char *detail)
{
    n_errors++;
    if (n_errors <= 5) {
        fprintf(stderr, "api_bench: call %ld: ", seq);
        fprintf(stderr, fmt, detail);
        fprintf(stderr, "\n");
    }
}

/* ---- finding the shard that accepted a connection (cyan, through /proc) ---- */

/* Inode of the server's end of the TCP connection 127.0.0.1:client_port ->
 * 127.0.0.1:server_port, or 0. */
static unsigned long server_socket_inode(int server_port, int client_port)
{
    FILE *f = fopen("/proc/net/tcp", "r");
    if (!f) return 0;
    char line[512];
    unsigned long found = 0;
    if (!fgets(line, sizeof(line), f)) line[0] = 0; /* the header */
    while (!found && fgets(line, sizeof(line), f)) {
        unsigned lip, lport, rip, rport, st;
        unsigned long inode;
        if (sscanf(line, " %*d: %8X:%4X %8X:%4X %2X %*X:%*X %*X:%*X %*X %*u %*u %lu", &lip, &lport,
                   &rip, &rport, &st, &inode) == 6 &&
            (int)lport == server_port && (int)rport == client_port && inode)
            found = inode;
    }
    fclose(f);
    return found;
}

/* The shard index of the process holding socket inode `inode`, from its
 * command line "cyan shard INDEX GENERATION ..."; -1 if not found. */
static int shard_holding(unsigned long inode)
{
    char want[64];
    snprintf(want, sizeof(want), "socket:[%lu]", inode);
    DIR *d = opendir("/proc");
    if (!d) return -1;
    struct dirent *e;
    int shard = -1;
    while (shard < 0 && (e = readdir(d))) {
        int pid = atoi(e->d_name);
        if (pid <= 0) continue;
        char path[300], link[64];
        snprintf(path, sizeof(path), "/proc/%d/fd", pid);
        DIR *fd = opendir(path);
        if (!fd) continue;
        struct dirent *fe;
        bool has = false;
        while (!has && (fe = readdir(fd))) {
            if (fe->d_name[0] == '.') continue;
            snprintf(path, sizeof(path), "/proc/%d/fd/%s", pid, fe->d_name);
            ssize_t n = readlink(path, link, sizeof(link) - 1);
            if (n <= 0) continue;
            link[n] = 0;
            has = strcmp(link, want) == 0;
        }
        closedir(fd);
        if (!has) continue;
        char cmd[512];
        snprintf(path, sizeof(path), "/proc/%d/cmdline", pid);
        FILE *f = fopen(path, "r");
        if (!f) continue;
        size_t n = fread(cmd, 1, sizeof(cmd) - 1, f);
        fclose(f);
        cmd[n] = 0;
        /* argv[0] \0 argv[1] \0 argv[2] ... */
        const char *a1 = cmd + strlen(cmd) + 1;
        if (a1 < cmd + n && strcmp(a1, "shard") == 0) {
            const char *a2 = a1 + strlen(a1) + 1;
            if (a2 < cmd + n) shard = atoi(a2);
        } else {
            shard = 0; /* a single-process server */
        }
    }
    closedir(d);
    return shard;
}

/* ---- server CPU (the pid and its children: cyan's shards) ---- */

static int srv_pids[64];
static int n_srv_pids;

static void find_server_pids(void)
{
    if (o.server_pid) n_srv_pids = ps_family(o.server_pid, srv_pids, 64);
}

/* CPU seconds used so far by a thread of this process. */
static double thread_cpu_s(clockid_t clock)
{
    struct timespec ts;
    if (clock_gettime(clock, &ts)) return 0;
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double server_cpu_s(void)
{
    return ps_cpu_s(srv_pids, n_srv_pids);
}

/* ---- api mode ---- */

typedef struct resp {
    char *p;
    size_t len;
} resp;

static size_t on_body(char *data, size_t size, size_t nmemb, void *ctx)
{
    resp *r = ctx;
    size_t n = size * nmemb;
    if (r->len + n > RESP_MAX) return 0; /* fails the transfer */
    memcpy(r->p + r->len, data, n);
    r->len += n;
    r->p[r->len] = 0;
    return n;
}

static struct curl_slist *headers;
static char url_device[256], url_call[256 + 32];
static resp body;

static CURL *http_new(void)
{
    CURL *h = curl_easy_init();
    if (!h) return NULL;
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &body);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, o.timeout_ms);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_PROXY, ""); /* never a proxy from the environment */
    return h;
}

/* GET /v1/devices/<id>; 0 with *dev (caller decrefs), or -1. */
static int get_device(CURL *h, json_t **dev)
{
    body.len = 0;
    body.p[0] = 0;
    curl_easy_setopt(h, CURLOPT_URL, url_device);
    curl_easy_setopt(h, CURLOPT_HTTPGET, 1L);
    CURLcode cc = curl_easy_perform(h);
    long code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    if (cc != CURLE_OK || code != 200) {
        fprintf(stderr, "api_bench: GET %s: %s, status %ld: %.200s\n", url_device,
                curl_easy_strerror(cc), code, body.p);
        return -1;
    }
    *dev = json_loads(body.p, 0, NULL);
    return *dev ? 0 : -1;
}

static bool device_ready(json_t *dev)
{
    if (!json_is_true(json_object_get(dev, "online"))) return false;
    size_t i;
    json_t *f;
    json_array_foreach(json_object_get(dev, "functions"), i, f)
    {
        if (json_is_string(f) && strcmp(json_string_value(f), "echo") == 0) return true;
    }
    return false;
}

/* A connection to the API on which the device is online with "echo", and,
 * with --http_shard, accepted by the wanted shard. */
static CURL *http_setup(int *owner, int *accepted)
{
    int64_t deadline = bench_now_ns() + (int64_t)(o.setup_timeout * 1e9);
    for (int attempt = 1; bench_now_ns() < deadline; attempt++) {
        CURL *h = http_new();
        json_t *dev = NULL;
        if (!h) return NULL;
        if (get_device(h, &dev)) {
            curl_easy_cleanup(h);
            return NULL;
        }
        *owner = (int)json_integer_value(json_object_get(dev, "shard"));
        bool ready = device_ready(dev);
        json_decref(dev);
        long lport = 0;
        curl_easy_getinfo(h, CURLINFO_LOCAL_PORT, &lport);
        unsigned long inode = server_socket_inode(o.http_port, (int)lport);
        *accepted = inode ? shard_holding(inode) : -1;
        if (o.http_shard != SHARD_ANY && *accepted < 0) {
            fprintf(stderr, "api_bench: cannot tell which shard accepted the connection "
                            "(/proc not readable?)\n");
            curl_easy_cleanup(h);
            return NULL;
        }
        bool shard_ok =
            o.http_shard == SHARD_ANY || (o.http_shard == SHARD_SAME) == (*accepted == *owner);
        if (shard_ok && ready) {
            fprintf(stderr,
                    "api_bench: device on shard %d, HTTP connection accepted by shard %d "
                    "(attempt %d)\n",
                    *owner, *accepted, attempt);
            return h;
        }
        curl_easy_cleanup(h); /* closes the connection: the next one may land elsewhere */
        usleep(shard_ok ? 20000 : 1000);
    }
    fprintf(stderr,
            "api_bench: no suitable API connection within %.0f s (device online with "
            "\"echo\", wanted shard)\n",
            o.setup_timeout);
    return NULL;
}

/* One call; returns its round trip in ns, or -1 (counted as an error). */
static int64_t api_call(CURL *h, long seq, bool record)
{
    char req[64], want[32];
    snprintf(want, sizeof(want), "%ld", seq);
    int blen = snprintf(req, sizeof(req), "{\"arg\":\"%ld\"}", seq);
    body.len = 0;
    body.p[0] = 0;
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, req);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)blen);
    int64_t t0 = bench_now_ns();
    CURLcode cc = curl_easy_perform(h);
    int64_t t1 = bench_now_ns();
    long code = 0, conns = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &conns);
    if (record && conns > 0) n_new_conns += conns;
    if (cc != CURLE_OK) {
        if (cc == CURLE_OPERATION_TIMEDOUT) n_timeouts++;
        note_error("%s", seq, curl_easy_strerror(cc));
        return -1;
    }
    if (code != 200) {
        char d[300];
        snprintf(d, sizeof(d), "status %ld: %.200s", code, body.p);
        note_error("%s", seq, d);
        return -1;
    }
    json_t *a = json_loads(body.p, 0, NULL);
    json_t *rv = json_object_get(a, "return_value");
    bool ok = (json_is_integer(rv) && json_integer_value(rv) == seq) ||
              (json_is_string(rv) && strcmp(json_string_value(rv), want) == 0);
    json_t *ms = json_object_get(a, "round_trip_ms");
    if (ok && record && json_is_number(ms)) srv_rtt[n_srv++] = json_number_value(ms);
    json_decref(a);
    if (!ok) {
        note_error("wrong answer: %.200s", seq, body.p);
        return -1;
    }
    return t1 - t0;
}

/* ---- mqtt mode ---- */

static mq app = {.fd = -1}; /* -1: not connected (mq_close skips it) */
static char call_prefix[160];

/* A client id that cyan with o.shards shards places on the wanted shard
 * relative to the device (the same hash as cy_shard_of). */
static void app_client_id(char *buf, size_t len)
{
    snprintf(buf, len, "api-bench-app-%d", (int)getpid());
    if (o.app_shard == SHARD_ANY || o.shards < 2) return;
    unsigned dev = (unsigned)(cy_hash(o.device, strlen(o.device)) % (unsigned)o.shards);
    for (unsigned k = 0; k < 100000; k++) {
        snprintf(buf, len, "api-bench-app-%d-%u", (int)getpid(), k);
        unsigned s = (unsigned)(cy_hash(buf, strlen(buf)) % (unsigned)o.shards);
        if ((s == dev) == (o.app_shard == SHARD_SAME)) return;
    }
}

static int mqtt_setup(void)
{
    int64_t deadline = bench_now_ns() + (int64_t)(o.setup_timeout * 1e9);
    char id[128], filter[160];
    app_client_id(id, sizeof(id));
    if (mq_open(&app, "app", id, NULL, NULL, deadline)) return -1;
    if (o.proto == 5)
        snprintf(filter, sizeof(filter), "devices/%s/reply", o.device);
    else
        snprintf(filter, sizeof(filter), "devices/%s/reply/#", o.device);
    if (mq_subscribe(&app, filter, deadline)) return -1;
    snprintf(call_prefix, sizeof(call_prefix), "devices/%s/call/echo", o.device);
    if (o.shards >= 2)
        fprintf(stderr, "api_bench: device on shard %u, application (%s) on shard %u of %d\n",
                (unsigned)(cy_hash(o.device, strlen(o.device)) % (unsigned)o.shards), id,
                (unsigned)(cy_hash(id, strlen(id)) % (unsigned)o.shards), o.shards);
    return 0;
}

static bool str_is(cy_str s, const char *p, size_t len)
{
    return s.len == len && memcmp(s.p, p, len) == 0;
}

static int64_t mqtt_call(long seq)
{
    char want[32], topic[200], reply_topic[200];
    int wl = snprintf(want, sizeof(want), "%ld", seq);
    cy_mqtt_packet p;
    memset(&p, 0, sizeof(p));
    p.type = CY_MQTT_PUBLISH;
    p.u.publish.qos = 1;
    p.u.publish.packet_id = mq_pid(&app);
    p.u.publish.payload = (const uint8_t *)want;
    p.u.publish.payload_len = (size_t)wl;
    int rtl = 0;
    if (o.proto == 5) {
        p.u.publish.topic = str_of(call_prefix);
        rtl = snprintf(reply_topic, sizeof(reply_topic), "devices/%s/reply", o.device);
        p.u.publish.props.present =
            CY_PBIT(CY_PROP_RESPONSE_TOPIC) | CY_PBIT(CY_PROP_CORRELATION_DATA);
        p.u.publish.props.response_topic = (cy_str){reply_topic, (uint32_t)rtl};
        p.u.publish.props.correlation_data = (cy_str){want, (uint32_t)wl};
    } else {
        snprintf(topic, sizeof(topic), "%s/%s", call_prefix, want);
        p.u.publish.topic = str_of(topic);
        rtl = snprintf(reply_topic, sizeof(reply_topic), "devices/%s/reply/%s", o.device, want);
    }
    if (mq_put(&app, &p)) return -1;
    int64_t t0 = bench_now_ns();
    if (mq_flush(&app)) return -2;
    int64_t deadline = t0 + o.timeout_ms * 1000000LL;
    for (;;) {
        int rc = mq_next(&app, &p, deadline);
        if (rc < 0) return -2;
        if (rc == 0) {
            n_timeouts++;
            note_error("%s", seq, "no reply within the timeout");
            return -1;
        }
        if (p.type != CY_MQTT_PUBLISH) continue; /* the PUBACK of the call */
        int64_t t1 = bench_now_ns();
        cy_mqtt_publish *r = &p.u.publish;
        uint16_t pid = r->packet_id;
        bool mine = o.proto == 5 ? str_is(r->props.correlation_data, want, (size_t)wl)
                                 : str_is(r->topic, reply_topic, (size_t)rtl);
        bool ok = mine && r->payload_len == (size_t)wl && memcmp(r->payload, want, (size_t)wl) == 0;
        if (r->qos == 1) {
            cy_mqtt_packet a;
            memset(&a, 0, sizeof(a));
            a.type = CY_MQTT_PUBACK;
            a.u.ack.packet_id = pid;
            if (mq_put(&app, &a) || mq_flush(&app)) return -2;
        }
        if (!mine) continue; /* a late reply to an earlier call that timed out */
        if (!ok) {
            note_error("%s", seq, "reply with the wrong payload");
            return -1;
        }
        return t1 - t0;
    }
}

/* ---- main ---- */

static void usage(void)
{
    fprintf(stderr,
            "usage: api_bench --mode api|mqtt --device ID --secret S [options]\n"
            "  --mqtt 127.0.0.1:1883     the broker (the device connects here in both modes)\n"
            "  --http 127.0.0.1:8080     api mode: cyan's HTTP API\n"
            "  --token T | --token_file F  api mode: a full-access API token\n"
            "  --count 5000 --warmup 200 calls measured, calls before\n"
            "  --proto 4|5               MQTT version of the device (and the mqtt-mode app)\n"
            "  --timeout_ms 5000         per call;  --setup_timeout 15 --max_seconds 300\n"
            "  --http_shard any|same|other   api mode: the shard accepting the HTTP connection,\n"
            "                            relative to the device's (cyan with several shards)\n"
            "  --app_shard any|same|other --shards N   mqtt mode, cyan: the app's shard\n"
            "  --server_pid PID          server CPU per call (PID and its children)\n"
            "  --server NAME             label of the RESULT line\n");
    exit(1);
}

static void parse_hostport(const char *v, char *host, size_t hlen, int *port)
{
    const char *c = strrchr(v, ':');
    if (!c || (size_t)(c - v) >= hlen) usage();
    memcpy(host, v, (size_t)(c - v));
    host[c - v] = 0;
    *port = atoi(c + 1);
    if (*port <= 0 || *port > 65535 || strcmp(host, "127.0.0.1") != 0) {
        fprintf(stderr, "api_bench: only 127.0.0.1:PORT is allowed (%s)\n", v);
        exit(1);
    }
}

static int parse_shard(const char *v)
{
    if (!strcmp(v, "any")) return SHARD_ANY;
    if (!strcmp(v, "same")) return SHARD_SAME;
    if (!strcmp(v, "other")) return SHARD_OTHER;
    usage();
    return SHARD_ANY;
}

static char *read_token(const char *path)
{
    static char tok[256];
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "api_bench: cannot read %s: %s\n", path, strerror(errno));
        exit(2);
    }
    if (!fgets(tok, sizeof(tok), f)) tok[0] = 0;
    fclose(f);
    tok[strcspn(tok, " \r\n")] = 0;
    return tok;
}

static void parse_args(int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = strchr(a, '=');
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
            if (!strcmp(v, "api"))
                o.mode = MODE_API;
            else if (!strcmp(v, "mqtt"))
                o.mode = MODE_MQTT;
            else
                usage();
        } else if (!strcmp(key, "http"))
            parse_hostport(v, o.http_host, sizeof(o.http_host), &o.http_port);
        else if (!strcmp(key, "mqtt"))
            parse_hostport(v, o.mqtt_host, sizeof(o.mqtt_host), &o.mqtt_port);
        else if (!strcmp(key, "token"))
            o.token = v;
        else if (!strcmp(key, "token_file"))
            o.token = read_token(v);
        else if (!strcmp(key, "device"))
            o.device = v;
        else if (!strcmp(key, "secret"))
            o.secret = v;
        else if (!strcmp(key, "proto"))
            o.proto = atoi(v);
        else if (!strcmp(key, "count"))
            o.count = atol(v);
        else if (!strcmp(key, "warmup"))
            o.warmup = atol(v);
        else if (!strcmp(key, "timeout_ms"))
            o.timeout_ms = atol(v);
        else if (!strcmp(key, "setup_timeout"))
            o.setup_timeout = atof(v);
        else if (!strcmp(key, "max_seconds"))
            o.max_seconds = atof(v);
        else if (!strcmp(key, "http_shard"))
            o.http_shard = parse_shard(v);
        else if (!strcmp(key, "app_shard"))
            o.app_shard = parse_shard(v);
        else if (!strcmp(key, "shards"))
            o.shards = atoi(v);
        else if (!strcmp(key, "server_pid"))
            o.server_pid = atoi(v);
        else if (!strcmp(key, "server"))
            o.server = v;
        else
            usage();
    }
    if (!o.device || !o.secret || strlen(o.device) > 64 || strchr(o.device, '/')) usage();
    if (o.proto != 4 && o.proto != 5) usage();
    if (o.count < 1 || o.count > 10000000 || o.warmup < 0 || o.timeout_ms < 1) usage();
    if (o.setup_timeout <= 0 || o.max_seconds <= 0 || o.max_seconds > 3600) usage();
    if (o.mode == MODE_API && !o.token) {
        fprintf(stderr, "api_bench: api mode needs --token or --token_file\n");
        exit(1);
    }
    if (o.app_shard != SHARD_ANY && o.shards < 2) {
        fprintf(stderr, "api_bench: --app_shard needs --shards N (N >= 2)\n");
        exit(1);
    }
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGALRM, on_alarm);
    alarm((unsigned)(o.max_seconds + o.setup_timeout + 10));
    int64_t t_start = bench_now_ns(), t_limit = t_start + (int64_t)(o.max_seconds * 1e9);
    lat = calloc((size_t)o.count, sizeof(*lat));
    srv_rtt = calloc((size_t)o.count, sizeof(*srv_rtt));
    body.p = malloc(RESP_MAX + 1);
    if (!lat || !srv_rtt || !body.p) return 2;

    curl_global_init(CURL_GLOBAL_DEFAULT); /* before any other thread exists */
    pthread_t dev;
    if (pthread_create(&dev, NULL, device_main, NULL)) return 2;
    int rc = wait_device();
    CURL *h = NULL;
    int owner = -1, accepted = -1;
    if (rc == 0 && o.mode == MODE_API) {
        char auth[300];
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s", o.token);
        headers = curl_slist_append(headers, auth);
        headers = curl_slist_append(headers, "Content-Type: application/json");
        headers = curl_slist_append(headers, "Expect:");
        snprintf(url_device, sizeof(url_device), "http://%s:%d/v1/devices/%s", o.http_host,
                 o.http_port, o.device);
        snprintf(url_call, sizeof(url_call), "%s/functions/echo", url_device);
        h = http_setup(&owner, &accepted);
        if (!h)
            rc = -1;
        else
            curl_easy_setopt(h, CURLOPT_URL, url_call);
    } else if (rc == 0) {
        rc = mqtt_setup();
    }

    /* CPU of the application (this thread: curl or the MQTT app) and of the
     * device thread while measuring, to show how much of a round trip is
     * spent outside the server. */
    clockid_t dev_clock = CLOCK_THREAD_CPUTIME_ID;
    if (pthread_getcpuclockid(dev, &dev_clock)) dev_clock = (clockid_t)-1;
    double cpu0 = 0, app0 = 0, dev0 = 0;
    int64_t t_m0 = 0, t_m1 = 0;
    bool aborted = false;
    long seq = 1;
    for (long i = 0; rc == 0 && i < o.warmup + o.count; i++, seq++) {
        bool record = i >= o.warmup;
        if (i == o.warmup) {
            find_server_pids();
            cpu0 = server_cpu_s();
            app0 = thread_cpu_s(CLOCK_THREAD_CPUTIME_ID);
            if (dev_clock != (clockid_t)-1) dev0 = thread_cpu_s(dev_clock);
            t_m0 = bench_now_ns();
        }
        if (bench_now_ns() > t_limit) {
            fprintf(stderr, "api_bench: --max_seconds reached after %ld calls\n", i);
            aborted = true;
            break;
        }
        int64_t d = o.mode == MODE_API ? api_call(h, seq, record) : mqtt_call(seq);
        if (d == -2) { /* the application's MQTT connection failed */
            aborted = true;
            break;
        }
        if (atomic_load(&dev_state) < 0) {
            fprintf(stderr, "api_bench: the device's connection failed\n");
            aborted = true;
            break;
        }
        if (d >= 0 && record) lat[n_lat++] = d;
        if (n_errors >= MAX_ERRORS) {
            fprintf(stderr, "api_bench: %ld failed calls, stopping\n", n_errors);
            aborted = true;
            break;
        }
    }
    t_m1 = bench_now_ns();
    double cpu1 = server_cpu_s();
    double app1 = thread_cpu_s(CLOCK_THREAD_CPUTIME_ID);
    double dev1 = dev_clock != (clockid_t)-1 ? thread_cpu_s(dev_clock) : 0;

    atomic_store(&dev_stop, true);
    pthread_join(dev, NULL);
    if (h) curl_easy_cleanup(h);
    if (o.mode == MODE_MQTT) mq_close(&app);
    if (rc) {
        fprintf(stderr, "api_bench: setup failed\n");
        return 2;
    }
    if (n_lat == 0) {
        fprintf(stderr, "api_bench: no call succeeded\n");
        return 2;
    }

    qsort(lat, (size_t)n_lat, sizeof(*lat), cmp_i64);
    qsort(srv_rtt, (size_t)n_srv, sizeof(*srv_rtt), cmp_dbl);
    double sum = 0;
    for (long i = 0; i < n_lat; i++)
        sum += (double)lat[i];
    double secs = (double)(t_m1 - t_m0) / 1e9;
    printf("RESULT workload=call mode=%s server=%s proto=%d count=%ld ok=%ld errors=%ld "
           "timeouts=%ld p50_us=%.1f p99_us=%.1f p999_us=%.1f min_us=%.1f max_us=%.1f "
           "mean_us=%.1f calls_per_s=%.0f",
           o.mode == MODE_API ? "api" : "mqtt", o.server, o.proto, o.count, n_lat, n_errors,
           n_timeouts, (double)lat[rank_of(0.5, (size_t)n_lat)] / 1e3,
           (double)lat[rank_of(0.99, (size_t)n_lat)] / 1e3,
           (double)lat[rank_of(0.999, (size_t)n_lat)] / 1e3, (double)lat[0] / 1e3,
           (double)lat[n_lat - 1] / 1e3, sum / (double)n_lat / 1e3, (double)n_lat / secs);
    if (o.mode == MODE_API)
        printf(" owner_shard=%d accept_shard=%d new_conns=%ld server_rtt_p50_us=%.1f", owner,
               accepted, n_new_conns, n_srv ? srv_rtt[rank_of(0.5, (size_t)n_srv)] * 1e3 : -1.0);
    if (o.server_pid) printf(" server_cpu_us_per_call=%.1f", (cpu1 - cpu0) * 1e6 / (double)n_lat);
    printf(" app_cpu_us_per_call=%.1f device_cpu_us_per_call=%.1f",
           (app1 - app0) * 1e6 / (double)n_lat,
           dev0 > 0 ? (dev1 - dev0) * 1e6 / (double)n_lat : -1.0);
    printf(" device_answered=%ld device_odd=%ld\n", atomic_load(&dev_calls), atomic_load(&dev_odd));
    fprintf(stderr, "api_bench: %s %s: %ld calls, p50 %.0f us, p99 %.0f us, %.0f calls/s\n",
            o.mode == MODE_API ? "api" : "mqtt", o.server, n_lat,
            (double)lat[rank_of(0.5, (size_t)n_lat)] / 1e3,
            (double)lat[rank_of(0.99, (size_t)n_lat)] / 1e3, (double)n_lat / secs);
    curl_slist_free_all(headers);
    free(lat);
    free(srv_rtt);
    free(body.p);
    return aborted || n_errors ? 2 : 0;
}
