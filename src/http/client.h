/* client: an HTTP client on a libuv loop, with libcurl's multi interface
 * (curl_multi_socket_action; one uv_poll_t per socket curl opens, one
 * uv_timer_t for curl's timeout). Nothing blocks the loop: names resolve in
 * curl's threaded resolver.
 *
 * One client serves many requests at once. Connections are kept alive and
 * reused between requests to the same host (curl's connection cache, shared
 * by the multi handle); HTTP/2 is used over TLS where the server offers it
 * (ALPN) and requests to one host are multiplexed on it; HTTP/1.1
 * otherwise. Redirects are never followed (a 3xx is an answer). Only http
 * and https.
 *
 * Address check: when cfg->addr_ok is set, every address curl is about to
 * connect to (after resolving, each of them) is passed to it first; a
 * refused one fails the request with status 0 and the error "address not
 * allowed: <ip>" (a webhook URL must not reach the operator's own
 * network; see webhooks/policy.h).
 *
 * A request is copied (method, URL, headers, body) when sent. Its callback
 * runs exactly once, on the loop, from a later turn than cy_hc_send (never
 * from inside it): with the answer, or status 0 and an error (connection
 * refused, timeout, DNS, TLS, cancelled, closing). The response's pointers
 * are valid only during the callback. At most cfg->body_keep bytes of the
 * response body are kept (the rest is read and dropped).
 *
 * Ownership: cy_hc_new borrows loop (it must outlive the client); strings
 * in cfg are copied. cy_hc_close cancels everything (their callbacks run,
 * error "cancelled"), closes every handle and, once they are closed (a
 * later turn of the loop), frees the client and runs cb once.
 * Errors: CY_ENOMEM, CY_EINVAL (a URL that is not http:// or https://, a
 * send after close), CY_EIO (curl refused the request).
 * Thread: the loop's thread only. cy_hc_new calls curl_global_init the
 * first time: call it before the process starts other threads.
 */
#ifndef CY_HTTP_CLIENT_H
#define CY_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <uv.h>

/* Idle connections kept open for reuse, over all hosts. */
#define CY_HC_IDLE_MAX 256

typedef struct cy_hc cy_hc;
typedef struct cy_hc_xfer cy_hc_xfer;

typedef struct cy_hc_config {
    const char *user_agent;  /* NULL: "cyan" */
    size_t body_keep;        /* response body bytes kept; 0 = 4096 */
    /* Connections kept open to one host (curl's
     * CURLMOPT_MAX_HOST_CONNECTIONS); 0 = no limit. */
    unsigned max_host_connections;
    /* Called for every address before connecting; NULL = any. */
    bool (*addr_ok)(void *ctx, const struct sockaddr *sa);
    void *addr_ctx;
} cy_hc_config;

typedef struct cy_hc_req {
    const char *method;             /* "POST", "PUT", "GET", ...; NULL = POST */
    const char *url;
    const char *const *headers;     /* "Name: value" strings, NULL-terminated; may be NULL */
    const uint8_t *body;
    size_t body_len;
    uint32_t timeout_ms;            /* whole request, connect included; 0 = 20000 */
} cy_hc_req;

typedef struct cy_hc_resp {
    long status;             /* HTTP status; 0 = no answer */
    const char *error;       /* why there is no answer ("" when status != 0) */
    bool timed_out;          /* status 0 because timeout_ms passed */
    const char *retry_after; /* the Retry-After header's value, or NULL */
    const uint8_t *body;     /* the first body_keep bytes of the body */
    size_t body_len;
    const char *content_type; /* or NULL */
    int64_t elapsed_us;      /* from the send to the end */
    int http_version;        /* 1 (1.0 and 1.1), 2, or 0 when there was no answer */
    const char *remote_ip;   /* the address it talked to, or "" */
} cy_hc_resp;

typedef void (*cy_hc_cb)(void *arg, const cy_hc_resp *resp);

int cy_hc_new(uv_loop_t *loop, const cy_hc_config *cfg, cy_hc **out);
/* Send r; cb(arg, resp) runs exactly once if this returns 0 (never if
 * not). *x (x may be NULL) is a handle for cy_hc_cancel, valid until the
 * callback starts. */
int cy_hc_send(cy_hc *c, const cy_hc_req *r, cy_hc_cb cb, void *arg, cy_hc_xfer **x);
/* Cancel a request whose callback has not run: it runs now, from inside
 * this call, with status 0 and error "cancelled". */
void cy_hc_cancel(cy_hc_xfer *x);
/* Requests sent and not yet answered. */
size_t cy_hc_inflight(const cy_hc *c);
/* See the header comment. Call it once; cb may be NULL. */
void cy_hc_close(cy_hc *c, void (*cb)(void *arg), void *arg);

#endif
