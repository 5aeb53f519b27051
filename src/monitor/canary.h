/* canary: a synthetic device that walks the real path of one shard.
 *
 * One canary per shard, an internal device (store.h, "Internal devices and
 * tokens") whose id hashes to that shard, so its session lives there. It
 * is a client like any device: it connects to the MQTT listener (MQTT
 * 3.1.1 over TCP, username = client id = its id, password = its secret,
 * clean session), subscribes to its own event and to its function calls,
 * and describes one function, "ping", which returns its argument. Then, every
 * interval, it runs one attempt of each step:
 *
 *   publish  a QoS 1 message on $cyan/canary/<id> (its private topic: only an
 *            internal device may use it, only its own, and no wildcard matches
 *            a $ topic, so no user ever sees it) whose payload
 *            is the attempt's number; it succeeds when both the PUBACK and
 *            the event itself, delivered back through the canary's own
 *            subscription, have arrived. That is the device path: accept,
 *            admit, route (and forward to the other shards' event buffers,
 *            which drop it: canaries' events are not users'), deliver.
 *   call     POST /v1/devices/<id>/functions/ping {"arg": "<number>"} to the
 *            HTTP API with the internal token, answered by the canary over
 *            MQTT; it succeeds when the API answers 200 with that number.
 *            That is the application path: any shard's API, the bus to the
 *            owner, the call topic, the reply.
 *
 * An attempt that has not succeeded by timeout_ms after it began failed
 * ("late is failure"). A step whose attempt is still pending when the next
 * interval comes makes no new attempt (a stuck shard is not sent a pile of
 * requests); so during an outage a step fails about every timeout_ms. While
 * the MQTT connection is down both steps fail at once ("not connected: why").
 * A connection that breaks, is refused or does not come up within
 * timeout_ms is opened again after a backoff (200 ms doubling to 2 s, reset
 * on success); a publish that times out drops the connection too (a fresh
 * one is what a device would try, and it says at once whether the shard
 * takes new clients). The first connect waits CY_REGISTRY_RECHECK_MS (and
 * a little): the credentials were usually made just now, and a shard that
 * checked the old secret keeps it that long. The first attempts start once
 * the canary is connected (or at timeout_ms, failing, if it cannot
 * connect); the next every interval_ms after.
 *
 * Everything runs on the caller's libuv loop and never blocks: the MQTT
 * connection is a uv_tcp_t, the HTTP client libcurl's multi interface
 * driven by the same loop (a uv_poll_t per curl socket and a uv_timer_t),
 * and addresses are numeric only (the listen settings; 0.0.0.0 and :: mean
 * the loopback address of their family), so nothing resolves a name.
 *
 * Cost: per shard and interval, one PUBLISH each way, a PUBACK each way
 * and one HTTP request (on a kept-alive connection) with its call and reply.
 *
 * Ownership: cy_canary_new copies conf and its strings. Results reach the
 * callback as a cy_canary_result valid only during the call. The canary
 * holds libuv handles: cy_canary_free releases it once they have all
 * closed, so the loop must run after it (uv_run until it returns, or the
 * owner's loop going on); the memory is freed exactly once, in the free or
 * in the last close callback.
 * Errors: CY_EINVAL (bad address, id, secret, token or timing), CY_ENOMEM,
 * CY_EIO (libcurl could not start), -errno from libuv.
 * Thread: the loop's thread only. libcurl's global state is set up (and
 * released) by the canaries themselves, reference-counted by libcurl: a
 * process that starts threads should call curl_global_init first.
 */
#ifndef CY_MONITOR_CANARY_H
#define CY_MONITOR_CANARY_H

#include "core/cy_config.h"
#include "store/store.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <uv.h>

#define CY_CANARY_INTERVAL_MS 1000
#define CY_CANARY_TIMEOUT_MS 3000
#define CY_CANARY_MAX_TIMEOUT_MS 60000 /* a call's timeout is at most 60 s (docs/api.md) */
#define CY_CANARY_FUNCTION "ping"
#define CY_CANARY_TOPIC "$cyan/canary/" /* + the device id: its private topic */
#define CY_CANARY_ERROR_MAX 160       /* bytes of an error text, with the NUL */

enum { CY_CANARY_PUBLISH = 0, CY_CANARY_CALL = 1, CY_CANARY_NSTEPS = 2 };

/* "publish", "call" (the label step= of the series); "?" otherwise. */
const char *cy_canary_step_name(int step);

typedef struct cy_canary_conf {
    const char *mqtt_addr; /* mqtt_listen: "host:port" or "[v6]:port", numeric */
    const char *http_addr; /* http_listen, the same form */
    bool http_tls;         /* the API speaks HTTPS: the call goes to the node's own
                            * listener on a loopback or local address, so its
                            * certificate is not verified (it may not name that
                            * address) */
    const char *device_id; /* the internal device: CY_DEVICE_ID_LEN lowercase hex */
    const char *secret;    /* its secret: CY_DEVICE_SECRET_LEN lowercase hex */
    const char *token;     /* the internal API token ("cyt_..."), at most CY_TOKEN_MAX */
    unsigned shard;        /* reported with each result */
    unsigned interval_ms;  /* between attempts; 0: CY_CANARY_INTERVAL_MS */
    unsigned timeout_ms;   /* an attempt's deadline, 1000..CY_CANARY_MAX_TIMEOUT_MS;
                            * 0: CY_CANARY_TIMEOUT_MS */
    bool publish_only;     /* no call step (http_addr unused): the API is off, or
                            * isolate_devices is false and calls cannot reach a device */
} cy_canary_conf;

/* The end of one attempt of one step. */
typedef struct cy_canary_result {
    unsigned shard;
    int step;     /* CY_CANARY_PUBLISH or CY_CANARY_CALL */
    uint64_t seq; /* the step's attempt number, 1, 2, ... (what it sent) */
    bool ok;
    int64_t latency_us; /* from the attempt's start to its end (its deadline when late) */
    const char *error;  /* NULL when ok; else one line, valid during the callback */
} cy_canary_result;

typedef void (*cy_canary_cb)(void *ctx, const cy_canary_result *r);

/* What a step has done so far: the figures the monitor exports as series
 * (cyan_canary_success_total, cyan_canary_failure_total,
 * cyan_canary_latency_seconds, cyan_canary_last_success_timestamp_seconds). */
typedef struct cy_canary_stats {
    uint64_t success, failure;            /* attempts */
    int64_t last_latency_us;              /* of the last success; 0 before any */
    int64_t last_success_ms;              /* wall ms; 0 = never */
    int64_t last_failure_ms;              /* wall ms; 0 = never */
    char last_error[CY_CANARY_ERROR_MAX]; /* of the last failure, "" before any */
} cy_canary_stats;

typedef struct cy_canary cy_canary;

/* Start a canary on loop: it connects at once and reports every attempt
 * to cb (ctx passed back), from the loop, never from inside this call,
 * never after cy_canary_stop.
 * Errors: see the file comment; on error nothing was started and *out is
 * NULL. */
int cy_canary_new(uv_loop_t *loop, const cy_canary_conf *conf, cy_canary_cb cb, void *ctx,
                  cy_canary **out);
/* The figures of step (CY_CANARY_PUBLISH or CY_CANARY_CALL), or NULL for
 * another value. Borrowed: valid until cy_canary_free. */
const cy_canary_stats *cy_canary_stats_of(const cy_canary *c, int step);
/* Whether its MQTT session is up (connected, subscribed, described). */
bool cy_canary_connected(const cy_canary *c);
/* Stop: no more attempts or results; pending ones are abandoned, the
 * connections closed. Idempotent; safe inside the callback. */
void cy_canary_stop(cy_canary *c);
/* Stop, and free once every handle has closed (the loop must run). Safe on
 * NULL and inside the callback. */
void cy_canary_free(cy_canary *c);

/* ---- credentials ----
 * Thread: the registry handle's owner; these write to the registry (a new
 * secret each call, see store.h), so call them once at start, not per
 * attempt. */

/* The internal device of role `role` ("canary" for the monitor, "probe" for
 * `cyan canary`) on shard `shard` of nshards: named "cyan:<role>:<shard>",
 * with an id that cy_shard_of puts on that shard, and a new secret.
 * Errors: CY_EINVAL (role empty or over 40 bytes, shard >= nshards,
 * nshards 0), and those of cy_registry_internal_device. */
int cy_canary_device(cy_registry *r, const char *role, unsigned shard, unsigned nshards,
                     char id_out[CY_DEVICE_ID_LEN + 1], char secret_out[CY_DEVICE_SECRET_LEN + 1]);
/* The internal token of role `role`, "cyan:<role>", made anew (the old one
 * revoked). Errors: CY_EINVAL, and those of cy_registry_internal_token. */
int cy_canary_token(cy_registry *r, const char *role, char id_out[CY_TOKEN_ID_LEN + 1],
                    char token_out[CY_TOKEN_MAX + 1]);

/* ---- pure helpers (exposed for the tests) ---- */

/* Where a client of the listen address text connects: its address, with
 * 0.0.0.0 / "*" made 127.0.0.1 and :: made ::1. Errors: CY_EINVAL. */
int cy_canary_target(const char *listen, struct sockaddr_storage *out);
/* Whether the API's answer to call number seq is right: status 200 and a
 * JSON object whose "return_value" is seq. If not, why (one line) says
 * what came instead. Returns true when right. */
bool cy_canary_answer_ok(long status, const char *body, size_t len, uint64_t seq, char *why,
                         size_t whylen);

/* ---- `cyan canary` ---- */

/* Run the canary path against the running node of cfg now: for shard
 * `shard` (or every shard when shard < 0), with the probe's own internal
 * devices and token (role "probe", so it never takes the monitor's
 * canaries' sessions or credentials; two probes at once take each
 * other's), `count` attempts of each step, one line per result on out, then
 * a summary. Returns the exit status: 0 if every attempt succeeded, 1 if
 * one failed or the probe could not start (said on stderr), 2 for a bad
 * argument.
 * Thread: the caller's (it runs its own loop, and blocks until done: at
 * most about count * timeout). */
int cy_canary_probe(const cy_config *cfg, int shard, unsigned count, FILE *out);

#endif
