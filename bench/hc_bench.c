/* hc_bench: how many requests per second http/client sends from one loop.
 *
 *   hc_bench [requests=200000] [concurrency=64] [body_bytes=256] [max_host_connections=0]
 *
 * A sink runs in a thread of its own with its own libuv loop (so that, on
 * two cores, the client's loop has a core to itself, as a shard would): a
 * keep-alive HTTP/1.1 server on 127.0.0.1 answering every request with 204
 * at once (all the requests one read completed, in one write). The client
 * keeps `concurrency` webhook-like requests in flight (a POST with a JSON
 * body and the Standard Webhooks headers), each answer sending the next,
 * and prints the rate, the connections the sink accepted, and the p50/p99
 * of the client's elapsed_us. Bounded by alarm(60).
 */
#include "http/client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

/* ---- the sink (its own thread and loop) -------------------------------------- */

static const char RESP[] = "HTTP/1.1 204 No Content\r\n\r\n";
#define RESP_LEN (sizeof(RESP) - 1)
#define BATCH 256

static char resp_batch[RESP_LEN * BATCH];
static int sink_port, sink_accepted;
static uv_loop_t sink_loop;
static uv_tcp_t sink_server;
static uv_async_t sink_stop;
static uv_sem_t sink_ready;

typedef struct sconn {
    uv_tcp_t tcp;
    char *buf;
    size_t len, cap;
} sconn;

static void sconn_closed(uv_handle_t *h)
{
    sconn *c = h->data;
    free(c->buf);
    free(c);
}

static void salloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    sconn *c = h->data;
    (void)hint;
    if (c->cap - c->len < 65536) {
        c->cap = c->cap * 2 + 65536;
        c->buf = realloc(c->buf, c->cap);
    }
    *b = uv_buf_init(c->buf + c->len, (unsigned)(c->cap - c->len - 1));
}

static void swritten(uv_write_t *w, int status)
{
    (void)status;
    free(w);
}

static void sread(uv_stream_t *st, ssize_t nread, const uv_buf_t *b)
{
    (void)b;
    sconn *c = st->data;
    if (nread < 0) {
        if (!uv_is_closing((uv_handle_t *)st)) uv_close((uv_handle_t *)st, sconn_closed);
        return;
    }
    c->len += (size_t)nread;
    c->buf[c->len] = '\0';
    size_t off = 0, n = 0;
    for (;;) {
        char *end = strstr(c->buf + off, "\r\n\r\n");
        if (!end) break;
        size_t clen = 0;
        for (char *p = c->buf + off; p < end; p++)
            if ((*p == '\n') && !strncasecmp(p + 1, "content-length:", 15))
                clen = (size_t)atol(p + 16);
        size_t want = (size_t)(end + 4 - c->buf) + clen;
        if (want > c->len) break;
        off = want;
        n++;
    }
    memmove(c->buf, c->buf + off, c->len - off + 1);
    c->len -= off;
    while (n > 0) {
        size_t k = n < BATCH ? n : BATCH;
        uv_write_t *w = malloc(sizeof(*w));
        uv_buf_t out = uv_buf_init(resp_batch, (unsigned)(k * RESP_LEN));
        uv_write(w, st, &out, 1, swritten);
        n -= k;
    }
}

static void sconnect(uv_stream_t *server, int status)
{
    if (status < 0) return;
    sconn *c = calloc(1, sizeof(*c));
    uv_tcp_init(&sink_loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) == 0) {
        sink_accepted++;
        uv_read_start((uv_stream_t *)&c->tcp, salloc, sread);
    } else {
        uv_close((uv_handle_t *)&c->tcp, sconn_closed);
    }
}

static void sclose_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, h->type == UV_TCP && h->data ? sconn_closed : NULL);
}

static void sstop(uv_async_t *a)
{
    (void)a;
    sink_server.data = NULL;
    uv_walk(&sink_loop, sclose_walk, NULL);
}

static void sink_main(void *arg)
{
    (void)arg;
    uv_loop_init(&sink_loop);
    uv_tcp_init(&sink_loop, &sink_server);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    if (uv_tcp_bind(&sink_server, (struct sockaddr *)&a, 0) ||
        uv_listen((uv_stream_t *)&sink_server, 1024, sconnect)) {
        fprintf(stderr, "sink: cannot listen\n");
        exit(1);
    }
    struct sockaddr_in got;
    int gl = sizeof(got);
    uv_tcp_getsockname(&sink_server, (struct sockaddr *)&got, &gl);
    sink_port = ntohs(got.sin_port);
    uv_async_init(&sink_loop, &sink_stop, sstop);
    uv_sem_post(&sink_ready);
    uv_run(&sink_loop, UV_RUN_DEFAULT);
    uv_loop_close(&sink_loop);
}

/* ---- the client ---------------------------------------------------------------- */

static cy_hc *client;
static cy_hc_req req;
static long left, done, ok;
static int64_t *lat;
static uint64_t t_end;

static void on_answer(void *arg, const cy_hc_resp *r)
{
    (void)arg;
    lat[done++] = r->elapsed_us;
    if (r->status == 204)
        ok++;
    else if (ok == 0 && done < 5)
        fprintf(stderr, "answer: %ld %s\n", r->status, r->error);
    if (left > 0) {
        left--;
        if (cy_hc_send(client, &req, on_answer, NULL, NULL) != 0) {
            fprintf(stderr, "send failed\n");
            exit(1);
        }
    } else if (cy_hc_inflight(client) == 0) {
        t_end = uv_hrtime();
    }
}

/* CPU time of the calling thread, in microseconds. */
static double thread_cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 200000;
    long width = argc > 2 ? atol(argv[2]) : 64;
    size_t blen = argc > 3 ? (size_t)atol(argv[3]) : 256;
    unsigned maxconn = argc > 4 ? (unsigned)atoi(argv[4]) : 0;
    if (n <= 0 || width <= 0) return 2;
    alarm(60);
    for (int i = 0; i < BATCH; i++)
        memcpy(resp_batch + i * RESP_LEN, RESP, RESP_LEN);
    uv_sem_init(&sink_ready, 0);
    uv_thread_t th;
    uv_thread_create(&th, sink_main, NULL);
    uv_sem_wait(&sink_ready);

    uv_loop_t loop;
    uv_loop_init(&loop);
    cy_hc_config cfg = {.max_host_connections = maxconn};
    if (cy_hc_new(&loop, &cfg, &client)) return 1;
    char url[96];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/hook/0123456789abcdef01234567", sink_port);
    char *body = malloc(blen + 1);
    memset(body, 'x', blen);
    if (blen >= 2) body[0] = '{', body[blen - 1] = '}';
    const char *hs[] = {"Content-Type: application/json", "webhook-id: 2-1764855332123456",
                        "webhook-timestamp: 1764855332",
                        "webhook-signature: v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=", NULL};
    req = (cy_hc_req){.url = url, .headers = hs, .body = (const uint8_t *)body, .body_len = blen};
    lat = malloc(sizeof(*lat) * (size_t)n);
    left = n;
    uint64_t t0 = uv_hrtime();
    double cpu0 = thread_cpu_us();
    for (long i = 0; i < width && left > 0; i++) {
        left--;
        if (cy_hc_send(client, &req, on_answer, NULL, NULL)) return 1;
    }
    while (done < n)
        uv_run(&loop, UV_RUN_ONCE);
    double s = (double)(t_end - t0) / 1e9;
    double cpu = thread_cpu_us() - cpu0;
    qsort(lat, (size_t)n, sizeof(*lat), cmp64);
    printf("hc_bench: %ld requests (%ld answered 204), %ld at a time, %zu-byte bodies, "
           "%d connections: %.0f requests/s, elapsed p50 %lld us, p99 %lld us; "
           "client loop CPU %.2f us/request (%.0f requests/s per core)\n",
           n, ok, width, blen, sink_accepted, n / s, (long long)lat[n / 2],
           (long long)lat[n * 99 / 100], cpu / n, n / (cpu / 1e6));
    cy_hc_close(client, NULL, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    uv_async_send(&sink_stop);
    uv_thread_join(&th);
    free(lat);
    free(body);
    return ok == n ? 0 : 1;
}
