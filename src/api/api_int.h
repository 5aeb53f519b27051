/* api_int: the HTTP API's state inside one shard, shared by api.c (routes,
 * tokens) and api_events.c (the event buffer and the server-sent event
 * streams).
 *
 * A request about a device is a device request (device.h,
 * device/requests.c): run by the device's owner shard, answered exactly
 * once, 503 when the owner is not healthy or does not answer by the
 * caller's deadline. The HTTP request waits on it in an api_wait; if the
 * client leaves first, the device request is cancelled.
 *
 * Ownership: cy_api is owned by the shard; everything here is freed by
 * cy_api_free. Thread: the shard's loop thread.
 */
#ifndef CY_API_INT_H
#define CY_API_INT_H

#include "api/api.h"
#include "api/api_routes.h"
#include "core/cy_buf.h"
#include "core/cy_map.h"
#include "core/cy_log.h"
#include "http/http.h"

#include <jansson.h>

#define API_TICK_MS 100
#define API_EVENT_DATA_MAX 65536u /* bytes of an event's data published through the API */
/* Presence and list requests wait this long for owner shards. */
#define API_PRESENCE_TIMEOUT_MS 1000
/* Bytes a stream may have queued and not yet taken by its client, shared
 * event bodies counted at their full length (it is how far behind the
 * client is; the memory of a body is paid once however many streams hold
 * it). Past it the stream ends; the client resumes with Last-Event-ID. */
#define API_STREAM_BACKLOG (1u << 20)
/* Longest slice of stream work (fan-out of events, replays) in one pass of
 * the loop; the rest continues in the next passes, so the loop never looks
 * hung to the watchdog however many streams there are. */
#define API_STREAM_SLICE_US 5000
/* At most this many stream writes per slice: each write resumes a
 * connection, and the HTTP server then sends to every resumed connection in
 * one pass, outside the slice's clock (300 slow clients on loopback made
 * that pass 125 ms); the next slice waits for that pass. */
#define API_STREAM_SLICE_WRITES 64
/* How often the tokens of open streams are checked again (revocation,
 * expiry). */
#define API_TOKEN_RECHECK_MS 1000
/* How long (s, as text) a browser may keep the answer to a CORS preflight. */
#define API_CORS_MAX_AGE "600"
/* Failed token checks: one log line per source address per window, and at
 * most this many lines per window from all sources together. */
#define API_AUTH_LOG_WINDOW_MS 10000
#define API_AUTH_LOG_BURST 20

/* Who a request is: what its credential resolved to (api.c,
 * cy_api_authenticate). */
typedef struct api_auth {
    char id[CY_TOKEN_ID_LEN + 1]; /* the token's id; a stream token's parent's */
    unsigned scopes;              /* CY_SCOPE_* bits */
    int64_t expires_at;           /* the (parent) token's, wall ms; 0 = never */
    bool stream_token;            /* came as a stream token (api_stream_token.h) */
} api_auth;

/* How the 200 answer of a function call or a variable read is shown. */
typedef enum api_shape {
    API_SHAPE_CYAN,         /* as the owner made it (docs/api.md, "Functions and variables") */
    API_SHAPE_PARTICLE,     /* Particle's fields (api_particle.c) */
    API_SHAPE_PARTICLE_RAW, /* a variable's value alone, as text (Particle's ?format=raw) */
} api_shape;

/* An HTTP request waiting on a device request (device.h). */
typedef struct api_wait {
    struct cy_api *a;
    cy_http_req *req;
    cy_device_request *r;  /* NULL once done or before it is known */
    uint8_t op;
    uint8_t shape;         /* api_shape of a call's or read's 200 */
    json_t *devices;       /* presence: the registry's device objects */
    int8_t online;         /* a list's ?online=: 1 online only, 0 offline only, -1 all */
    char id[CY_DEVICE_ID_LEN + 1];
    char name[CY_DEVICE_NAME_MAX + 1]; /* the device's name (Particle's replies), or "" */
} api_wait;

/* One buffered event. */
typedef struct api_event {
    cy_msg *m;       /* reference */
    cy_http_chunk *body; /* reference: "event: ...\ndata: ...\n\n", made once when
                          * a stream first needs it; NULL if it cannot be shown */
    bool formatted;  /* body was made (or found impossible) */
    uint64_t seq;    /* origin's event sequence number */
    int64_t at;      /* wall ms when this shard got it */
    uint8_t origin;  /* shard that took it from its publisher */
} api_event;

/* A server-sent event stream. */
typedef struct api_stream {
    struct api_stream *prev, *next;
    struct cy_api *a;
    cy_http_req *req;
    char device[CY_DEVICE_ID_LEN + 1]; /* "" = all devices */
    char *prefix;                      /* owned; "" = every name */
    size_t prefix_len;
    uint64_t cursor[CY_SB_MAX_SHARDS]; /* last seq sent, per origin */
    bool catching_up;                  /* replaying from the ring, paced by its backlog */
    bool revoked;                      /* its token is gone: end it */
    int64_t expires_at;                /* its token's expiry, wall ms (0 = never): end it then */
    uint64_t replay_pos;               /* absolute ring position the replay goes on from */
    char token[CY_TOKEN_ID_LEN + 1];   /* id of the token that opened it (a stream
                                        * token's parent) */
    char addr[64];                     /* client address, without the port */
} api_stream;

typedef struct cy_api cy_api;

struct cy_api {
    uv_loop_t *loop;
    const cy_config *cfg;
    cy_registry *registry;
    cy_router *router;
    cy_cluster *cluster;
    cy_devices *devices;
    cy_counters *stats;
    cy_hists *hists; /* NULL: none */
    cy_scoreboard *sb;
    cy_limit *limit; /* the node's failed logins and connection rates; NULL: none */
    unsigned self, nshards;
    void (*ws_accept)(void *ctx, int fd, const uint8_t *extra, size_t len,
                      const struct sockaddr *peer, cy_http_upgraded *u);
    void *ws_ctx;
    cy_subscriber events_sub; /* the event filters' subscriber (api_events.c) */
    cy_sub_kind events_kind;
    cy_http *http;
    int http_fd;           /* our duplicate of the listening socket until we serve on it */
    uv_timer_t tick;
    bool tick_running;
    /* events */
    api_event *ring;       /* event_buffer entries */
    uint32_t ring_cap, ring_head, ring_count;
    uint64_t evicted[CY_SB_MAX_SHARDS]; /* highest seq dropped from the ring, per origin */
    uint64_t last_seq[CY_SB_MAX_SHARDS]; /* highest seq seen, per origin */
    uint64_t ring_first;   /* absolute position of ring[ring_head]: events ever evicted */
    api_stream *streams;
    unsigned nstreams;
    int64_t next_heartbeat; /* mono ms */
    int64_t next_token_check; /* mono ms */
    cy_buf out;            /* formatting scratch */
    /* Fan-out of new events, in slices (API_STREAM_SLICE_US): events at
     * absolute ring positions [fan_pos, ring_first + ring_count) have not
     * yet been offered to every stream; fan_next is the next stream to
     * offer the one at fan_pos (valid while fan_started). */
    uint64_t fan_pos;
    api_stream *fan_next;
    bool fan_started;
    api_stream *replay_next; /* where the tick's replays go on from, or NULL */
    uv_idle_t fan_idle;    /* runs the next slice in the next pass while work is left */
    bool fan_idle_init, fan_idle_on;
    cy_logrl rl;           /* streams ended or refused, one line per address per window */
    cy_logrl auth_log;     /* failed token checks: one line per source address per window */
    /* The key of stream tokens (api_stream_token.h), derived from the
     * node's key file once it was found. */
    uint8_t stream_key[CY_REGISTRY_SUBKEY_LEN];
    bool have_stream_key;
};

/* api.c */
/* Call just before req is answered (a reply, never a stream): counts it in
 * api_requests and its latency, from the end of its head (cy_http_started_us)
 * to now, in the CY_HIST_API_REQUEST histogram. An event stream is not
 * observed: it lasts as long as its client likes, so its length says
 * nothing about the server's speed; a refused stream (its 429 or 503) is. */
void cy_api_answered(cy_api *b, cy_http_req *req);
/* Answer req with o (takes the reference; NULL: 500), or with
 * {"error": code, "message": ...} and extra headers (NULL-terminated
 * name, value pairs; may be NULL). Both count the answer (cy_api_answered). */
void cy_api_reply_json(cy_api *b, cy_http_req *req, unsigned status, json_t *o,
                       const char *const *headers);
void cy_api_reply_error(cy_api *b, cy_http_req *req, unsigned status, const char *code,
                        const char *const *headers, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
/* {"error": code, "message": msg} as a string the caller frees with free(). */
char *cy_api_error_body(const char *code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The request's body as a JSON object (new reference; {} when empty), or
 * NULL after answering 400 bad_json. */
json_t *cy_api_body_object(cy_api *b, cy_http_req *req);
/* The same, where an empty body is refused too (400 bad_json). */
json_t *cy_api_body_object_required(cy_api *b, cy_http_req *req);
/* Function calls and variable reads, shared by cyan's routes and
 * Particle's (api_particle.c). op is CY_DEVICE_OP_CALL or _GET. */
/* Whether name may be a function's or a variable's (1 to
 * CY_DEVICE_NAME_MAX bytes): true, or false after answering 404
 * function_not_found / variable_not_found. */
bool cy_api_op_name_ok(cy_api *b, cy_http_req *req, uint8_t op, const char *name);
/* A call's "arg" and "timeout" from its JSON body o (borrowed: *arg points
 * into it; NULL, 0 when absent or null): true, or false after answering
 * 400 bad_json for a wrong type. *ms as cy_api_timeout_ms. */
bool cy_api_call_fields(cy_api *b, cy_http_req *req, json_t *o, const char **arg, size_t *arg_len,
                        int64_t *ms);
/* A deadline "timeout" in whole seconds, 1 to 60, from JSON v or else
 * text (a query's or a form field's; both NULL: the default,
 * CY_DEVICE_DEFAULT_TIMEOUT_MS), in ms: -1 when out of range or not a
 * number (text), -2 when v is not an integer. */
int64_t cy_api_timeout_ms(json_t *v, const char *text);
/* Run op of name on device d with the deadline ms and answer req when it
 * ends: its 200 in shape, anything else as cyan's (the owner's error body,
 * 503 shard_unavailable). 400 bad_request at once for ms < 0 or arg over
 * CY_DEVICE_ARG_MAX bytes. arg (may be NULL) and d are borrowed for the
 * call (copied). */
void cy_api_device_op(cy_api *b, cy_http_req *req, const cy_device *d, uint8_t op, const char *name,
                      const uint8_t *arg, size_t arg_len, int64_t ms, api_shape shape);
/* Who req is (its Authorization header, or for an event stream
 * (stream_route) a stream token in the header or in ?stream_token=), into
 * *out: true; or false after answering it (400 token_in_url, 401
 * unauthorized or token_expired, 503 registry_unavailable) and logging
 * the failure (never the token). A long-lived token is never taken from
 * the URL. */
bool cy_api_authenticate(cy_api *b, cy_http_req *req, bool stream_route, api_auth *out);

/* api_events.c */
/* Also makes a->events_sub, the subscriber of kind "events". */
int cy_api_events_init(cy_api *a, uint32_t capacity);
void cy_api_events_free(cy_api *a);
/* Fill the ring with the newest logged events of every shard (read from
 * their files), so a stream resumes across restarts of cyan. Call once,
 * after init and before the first event. */
int cy_api_events_preload(cy_api *a);
/* Open a stream on req (GET .../events...) for the token auth names
 * (borrowed; checked by the caller: the stream belongs to auth->id and
 * ends at auth->expires_at). device may be NULL. Answers 429
 * too_many_streams past sse_max_per_token / sse_max_per_address. */
void cy_api_stream_open(cy_api *b, cy_http_req *req, const char *device, const char *prefix,
                        const api_auth *auth);
/* Replays, heartbeats, and ending the streams of revoked or expired tokens. */
void cy_api_events_tick(cy_api *b, int64_t now);
/* End every stream, and close the fan-out's idle handle (the loop must run
 * once more before cy_api_events_free). */
void cy_api_streams_close(cy_api *a);

/* api_deliveries.c: what became of events (webhooks/webhooks.h, inspect). */
/* A webhook's figures for its GET ("stats"), or NULL. */
json_t *cy_api_webhook_stats(cy_api *b, const char *id);
/* /v1/webhooks/{id}/dead-letters[/{event id}]/replay: op is
 * API_OP_DEAD_LETTERS, _DEAD_REPLAY_ALL or _DEAD_REPLAY_ONE (seg: the path
 * segments after /v1, as the route matched them); the webhook exists. */
void cy_api_dead_letters(cy_api *b, cy_http_req *req, api_op op, char *const *seg);
/* GET /v1/events/{event id}/trace. */
void cy_api_event_trace(cy_api *b, cy_http_req *req, const char *event_id);
/* Whether seg (after /v1) is an event's trace: events/{id}/trace. */
bool cy_api_is_trace(char *const *seg, unsigned nseg);

/* api_webhooks.c */
/* Answer req, a request of a webhook route (op API_OP_WEBHOOK* or
 * API_OP_DEAD_*): seg are its path segments after /v1, as the route matched
 * them. The token's scope was checked before. */
void cy_api_webhooks(cy_api *b, cy_http_req *req, api_op op, char *const *seg);

/* api_tokens.c: token management and stream tokens. */
/* GET /v1/tokens, POST /v1/tokens, DELETE /v1/tokens/{id} (op
 * API_OP_TOKENS_LIST, _TOKEN_CREATE, _TOKEN_REVOKE; seg after /v1). */
void cy_api_tokens(cy_api *b, cy_http_req *req, api_op op, char *const *seg);
/* POST /v1/events/stream-token for the token auth names. */
void cy_api_stream_token(cy_api *b, cy_http_req *req, const api_auth *auth);
/* The stream tokens' key (b->stream_key) once known: 0, or CY_EIO when the
 * key file cannot be had (make: made if missing), CY_ESTORE. */
int cy_api_stream_key(cy_api *b, bool make);
/* wall ms as the API shows times (ISO 8601 UTC), or null for 0. */
json_t *cy_api_time_or_null(int64_t ms);

/* api_particle.c: Particle's paths, POST /v1/devices/{id}/{function} and
 * GET /v1/devices/{id}/{variable} (docs/api.md, "Particle compatibility"). */
/* Answer a request of route op (API_OP_PARTICLE_CALL or _VARIABLE) about
 * device d (borrowed), for the function or variable name; the token's
 * scope was checked before. */
void cy_api_particle(cy_api *b, cy_http_req *req, const cy_device *d, api_op op, const char *name);
/* Answer w's request with the owner's 200 body[0..len) (borrowed) of a
 * call or read, in w's Particle shape. */
void cy_api_particle_reply(cy_api *b, const api_wait *w, const char *body, size_t len);
/* A GET or POST of /v1/devices/{id}/{sub-path} (cy_api_device_subpath)
 * that no route takes (seg after /v1; allow: the methods the path takes,
 * "" for none): answered 405 method_not_allowed (with Allow) or 404
 * not_found, the message naming where Particle's function or variable of
 * that name is: true. false (nothing answered) for any other request. */
bool cy_api_particle_shadowed(cy_api *b, cy_http_req *req, char *const *seg, unsigned nseg,
                              const char *allow);
/* Whether req is a form-encoded POST without Authorization: a script
 * written for Particle that sends access_token=... in its body, which cyan
 * does not read (the 401 says so). */
bool cy_api_particle_form_post(cy_http_req *req);

/* api_ws.c: MQTT over WebSocket at GET /mqtt. */
#define CY_API_WS_PATH "/mqtt"
/* The check (headers in, no body read): a request that is not a valid
 * WebSocket handshake offering subprotocol mqtt is refused here (400, 405,
 * 426; JSON error body), as is one when the shard serves no WebSocket (404). */
void cy_api_ws_check(cy_api *b, cy_http_req *req);
/* The handler: answer 101 and hand the socket to deps->ws_accept. */
void cy_api_ws_upgrade(cy_api *b, cy_http_req *req);
/* Sec-WebSocket-Accept for key (RFC 6455 4.2.2) into out (29 bytes with
 * the NUL). */
void cy_api_ws_accept_key(const char *key, char out[29]);
/* Whether the comma-separated list (an HTTP header's value; NULL = none)
 * holds token, case-insensitively. */
bool cy_api_ws_has_token(const char *list, const char *token);

#endif
