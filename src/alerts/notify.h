/* notify: delivers alert notifications (Alertmanager webhook bodies, see
 * cy_alerts_webhook_json) to webhook receivers: an HTTP POST with
 * Content-Type: application/json to every receiver URL, on the monitor's
 * libuv loop with libcurl's multi interface (curl_multi_socket_action, one
 * uv_poll_t per socket curl opens, one uv_timer_t for curl's timeout).
 * Nothing here blocks the loop (curl resolves names in its threaded
 * resolver when it has one).
 *
 * Each cy_notify_send makes one delivery per receiver. A delivery succeeds
 * on a 2xx answer. It is retried after a connection error, a timeout
 * (timeout_ms per attempt), 408, 429 or a 5xx, waiting retry_base_ms, then
 * twice that, and so on (1 s, 2 s, 4 s, 8 s), for at most max_attempts
 * attempts; other answers (3xx, 4xx) are final at once. A final failure is
 * logged (one line: receiver, attempts, last error) and counted.
 *
 * The queue is bounded: at most queue_max deliveries wait (new, or between
 * attempts) besides the max_inflight being sent; a send that finds it full
 * drops the oldest waiting delivery, logs it and counts it. Older news is
 * the cheaper loss: the newest notification says what is true now.
 *
 * Ownership: the body is copied (shared by its receivers' deliveries). The
 * config's strings are copied. cy_notify_close cancels what is in flight or
 * waiting (not counted as failed or dropped: counted as cancelled), closes
 * every handle and, once all are closed (a later turn of the loop), frees
 * the notifier and runs `cb` exactly once: do not use it after close.
 * Errors: CY_ENOMEM, CY_EINVAL (no receiver, a URL that is not http:// or
 * https://, or a send after close). Thread: the loop's thread only.
 */
#ifndef CY_ALERTS_NOTIFY_H
#define CY_ALERTS_NOTIFY_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define CY_NOTIFY_QUEUE_MAX 256
#define CY_NOTIFY_INFLIGHT_MAX 8
#define CY_NOTIFY_TIMEOUT_MS 5000
#define CY_NOTIFY_RETRY_BASE_MS 1000
#define CY_NOTIFY_MAX_ATTEMPTS 5

typedef struct cy_notify cy_notify;

typedef struct cy_notify_config {
    const char *const *urls; /* receivers (copied) */
    size_t n_urls;
    size_t queue_max;       /* 0 = CY_NOTIFY_QUEUE_MAX */
    size_t max_inflight;    /* 0 = CY_NOTIFY_INFLIGHT_MAX */
    uint32_t timeout_ms;    /* per attempt, 0 = CY_NOTIFY_TIMEOUT_MS */
    uint32_t retry_base_ms; /* first wait, doubled each time; 0 = CY_NOTIFY_RETRY_BASE_MS */
    uint32_t max_attempts;  /* 0 = CY_NOTIFY_MAX_ATTEMPTS */
    const char *user_agent; /* NULL = "cyan-monitor" */
} cy_notify_config;

typedef struct cy_notify_counters {
    uint64_t sent;      /* deliveries answered 2xx */
    uint64_t failed;    /* deliveries given up (retries spent or a final answer) */
    uint64_t dropped;   /* deliveries dropped from a full queue */
    uint64_t retries;   /* attempts after the first */
    uint64_t attempts;  /* HTTP requests made */
    uint64_t cancelled; /* deliveries cancelled by close */
    uint64_t queued;    /* now: waiting plus in flight */
} cy_notify_counters;

/* A notifier on loop (borrowed; it must outlive the notifier). Returns 0 and
 * *out, CY_ENOMEM or CY_EINVAL. Calls curl_global_init (and its cleanup at
 * the close); call it from the main thread before starting other threads. */
int cy_notify_new(cy_notify **out, uv_loop_t *loop, const cy_notify_config *cfg);
/* Queue body[0..len) (copied) for every receiver. Returns 0 (queued, maybe
 * after dropping the oldest), CY_ENOMEM or CY_EINVAL (closing). */
int cy_notify_send(cy_notify *n, const char *body, size_t len);
void cy_notify_counters_get(const cy_notify *n, cy_notify_counters *c);
/* Cancel everything, close the handles; when they are closed, free the
 * notifier and run cb(arg) once (cb may be NULL). Call it once. */
void cy_notify_close(cy_notify *n, void (*cb)(void *arg), void *arg);

#endif
