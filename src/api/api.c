/* api: the HTTP API's routes (docs/api.md), tokens, and requests to the
 * shards that own devices.
 *
 * Every shard serves the API from the same listening socket. A request
 * about a device becomes a device request (device.h): an operation run by
 * the device's owner shard (the same hash as its MQTT session,
 * cy_shard_of), answered exactly once, 503 for an owner that is not
 * healthy or stops being healthy while the request waits on it, so a hung
 * shard never holds an application longer than about a second past what
 * it asked for. The HTTP request waits in an api_wait (wait_on).
 *
 * Every answer is counted (api_requests) and timed from the end of its
 * request's head (api_request_duration_seconds) in one place,
 * cy_api_answered; an event stream, open as long as its client likes, is
 * not timed.
 *
 * Errors are mapped to HTTP once, here: every error body is
 * {"error": code, "message": text} with a stable code.
 *
 * Particle's paths for calls and reads (api_particle.c) start the same
 * device requests through cy_api_device_op; only their 200 is reshaped.
 */
#include "api/api_int.h"

#include "api/api_stream_token.h"
#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <errno.h>
#include <inttypes.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ---- */

char *cy_api_error_body(const char *code, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    json_t *o = json_pack("{s:s, s:s}", "error", code, "message", msg);
    if (!o) {
        /* Not UTF-8: a client's bytes in it (a path's %ff). Said as '?'. */
        for (char *p = msg; *p; p++)
            if ((unsigned char)*p >= 0x80) *p = '?';
        o = json_pack("{s:s, s:s}", "error", code, "message", msg);
    }
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return text;
}

void cy_api_answered(cy_api *b, cy_http_req *req)
{
    b->stats->api_requests++;
    int64_t now = cy_mono_us(), took = now - cy_http_started_us(req);
    cy_hist_observe(b->hists, CY_HIST_API_REQUEST, took > 0 ? (uint64_t)took : 0, now / 1000);
}

static void reply_text(cy_api *b, cy_http_req *req, unsigned status, const char *body,
                       const char *const *headers)
{
    cy_api_answered(b, req);
    if (!body) body = "{\"error\":\"internal\",\"message\":\"out of memory\"}";
    cy_http_reply(req, status, NULL, body, strlen(body), headers);
}

static void reply_json(cy_api *b, cy_http_req *req, unsigned status, json_t *o)
{
    cy_api_reply_json(b, req, status, o, NULL);
}

static void reply_error(cy_api *b, cy_http_req *req, unsigned status, const char *code,
                        const char *const *headers, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

static void reply_error(cy_api *b, cy_http_req *req, unsigned status, const char *code,
                        const char *const *headers, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    char *body = cy_api_error_body(code, "%s", msg);
    reply_text(b, req, status, body, headers);
    free(body);
}

void cy_api_reply_json(cy_api *b, cy_http_req *req, unsigned status, json_t *o,
                       const char *const *headers)
{
    char *text = o ? json_dumps(o, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(o);
    reply_text(b, req, text ? status : 500, text, text ? headers : NULL);
    free(text);
}

void cy_api_reply_error(cy_api *b, cy_http_req *req, unsigned status, const char *code,
                        const char *const *headers, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    reply_error(b, req, status, code, headers, "%s", msg);
}

static void reply_unavailable(cy_api *b, cy_http_req *req, const char *why)
{
    char retry[16];
    unsigned s = (b->cfg->watchdog_timeout + 999) / 1000 + 1;
    snprintf(retry, sizeof(retry), "%u", s);
    const char *h[] = {"Retry-After", retry, NULL};
    b->stats->api_shard_unavailable++;
    reply_error(b, req, 503, "shard_unavailable", h, "%s; retry in a few seconds", why);
}

static void on_tick(uv_timer_t *t)
{
    cy_api *b = t->data;
    cy_api_events_tick(b, cy_mono_ms());
    /* Tokens' last uses, each written at most once a minute (store.h). */
    cy_registry_token_flush(b->registry, cy_wall_ms(), false);
}

/* ---- HTTP requests waiting on device requests ---- */

static void wait_free(api_wait *w)
{
    json_decref(w->devices);
    cy_free(w);
}

/* The client left first: the device request is cancelled. */
static void wait_gone(void *arg, cy_http_req *req)
{
    api_wait *w = arg;
    (void)req;
    cy_device_request_cancel(w->r);
    wait_free(w);
}

/* Presence answers in: complete the registry's device objects (and keep
 * those the list's ?online= asks for: a device whose presence is unknown,
 * its shard not healthy, is neither online nor offline). */
static void finish_presence(cy_api *b, api_wait *w, json_t *const *presence)
{
    size_t i;
    json_t *d;
    json_t *kept = w->online >= 0 ? json_array() : NULL;
    json_array_foreach(w->devices, i, d)
    {
        unsigned j = (unsigned)json_integer_value(json_object_get(d, "shard"));
        const char *id = json_string_value(json_object_get(d, "id"));
        json_t *pr = presence && j < CY_SB_MAX_SHARDS ? presence[j] : NULL;
        bool healthy = pr != NULL;
        json_t *one = NULL;
        if (pr && w->op == CY_DEVICE_OP_PRESENCE) one = pr;
        if (pr && w->op == CY_DEVICE_OP_PRESENCE_ALL) one = json_object_get(pr, id);
        json_object_set_new(d, "shard_healthy", json_boolean(healthy));
        static const char *const keys[] = {"online", "protocol", "connected_since", "last_heard",
                                           "last_round_trip"};
        for (size_t k = 0; k < sizeof(keys) / sizeof(keys[0]); k++) {
            json_t *v = one ? json_object_get(one, keys[k]) : NULL;
            if (v)
                json_object_set(d, keys[k], v);
            else if (healthy && k == 0)
                json_object_set_new(d, keys[k], json_false());
            else
                json_object_set_new(d, keys[k], json_null());
        }
        json_t *on = json_object_get(d, "online");
        if (kept && json_is_boolean(on) && json_is_true(on) == (w->online == 1))
            json_array_append(kept, d);
    }
    if (w->op == CY_DEVICE_OP_PRESENCE)
        reply_json(b, w->req, 200, json_incref(json_array_get(w->devices, 0)));
    else
        reply_json(b, w->req, 200, kept ? kept : json_incref(w->devices));
}

/* The device request ended (exactly once): answer the HTTP request. */
static void wait_done(void *ctx, const cy_device_answer *ans)
{
    api_wait *w = ctx;
    cy_api *b = w->a;
    cy_http_on_close(w->req, NULL, NULL);
    switch (w->op) {
    case CY_DEVICE_OP_PRESENCE:
    case CY_DEVICE_OP_PRESENCE_ALL: finish_presence(b, w, ans->presence); break;
    case CY_DEVICE_OP_KICK:
        if (ans->status == 503) /* deleted; its connection ends when its shard is replaced */
            reply_json(b, w->req, 200,
                       json_pack("{s:s, s:b, s:b}", "id", w->id, "deleted", 1, "session_ended", 0));
        else {
            cy_api_answered(b, w->req);
            cy_http_reply(w->req, ans->status, NULL, ans->body, ans->len, NULL);
        }
        break;
    default:
        if (ans->status == 503) {
            reply_unavailable(b, w->req, ans->why);
        } else if (ans->status == 200 && w->shape != API_SHAPE_CYAN) {
            cy_api_particle_reply(b, w, ans->body, ans->len);
        } else {
            cy_api_answered(b, w->req);
            cy_http_reply(w->req, ans->status, NULL, ans->body, ans->len, NULL);
        }
    }
    wait_free(w);
}

static void wait_on_list(cy_api *b, cy_http_req *req, uint8_t op, const char *id,
                         const char *name, const uint8_t *arg, size_t arg_len,
                         uint32_t timeout_ms, json_t *devices, api_shape shape,
                         const char *dev_name, int8_t online);

/* Run op about device id on its owner (device.h) and answer req when it
 * ends. devices (presence; owned from here on) may be NULL. A call's or
 * read's 200 is shown in shape, with dev_name (may be NULL). */
static void wait_on(cy_api *b, cy_http_req *req, uint8_t op, const char *id, const char *name,
                    const uint8_t *arg, size_t arg_len, uint32_t timeout_ms, json_t *devices,
                    api_shape shape, const char *dev_name)
{
    wait_on_list(b, req, op, id, name, arg, arg_len, timeout_ms, devices, shape, dev_name, -1);
}

/* wait_on, and for a presence list the ?online= filter (-1: none). */
static void wait_on_list(cy_api *b, cy_http_req *req, uint8_t op, const char *id,
                         const char *name, const uint8_t *arg, size_t arg_len,
                         uint32_t timeout_ms, json_t *devices, api_shape shape,
                         const char *dev_name, int8_t online)
{
    api_wait *w = cy_calloc(1, sizeof(*w));
    if (!w) {
        json_decref(devices);
        reply_error(b, req, 500, "internal", NULL, "out of memory");
        return;
    }
    w->a = b;
    w->req = req;
    w->op = op;
    w->devices = devices;
    w->shape = (uint8_t)shape;
    w->online = online;
    if (id) snprintf(w->id, sizeof(w->id), "%s", id);
    if (dev_name) snprintf(w->name, sizeof(w->name), "%s", dev_name);
    cy_device_request *r = NULL;
    int rc = cy_device_request_start(b->devices, op, id, name, arg, arg_len, timeout_ms, wait_done,
                                     w, &r);
    if (rc) {
        wait_free(w);
        reply_error(b, req, 500, "internal", NULL, "%s", cy_strerror(rc));
        return;
    }
    if (!r) return; /* answered already (w is gone) */
    w->r = r;
    cy_http_on_close(req, wait_gone, w);
}

/* ---- tokens and the door ---- */

static void not_allowed(cy_api *b, cy_http_req *req, const char *allow)
{
    const char *h[] = {"Allow", allow, NULL};
    reply_error(b, req, 405, "method_not_allowed", h, "allowed here: %s", allow);
}

/* A failed token check, logged: a stranger can repeat it at will, so one
 * line per source address per window, with the count of those held back.
 * The token itself is never logged (nor the query, which may hold a
 * stream token: cy_http_path is the path alone). */
static void auth_failed_log(cy_api *b, cy_http_req *req, const char *why)
{
    const char *addr = cy_http_peer_addr(req);
    char more[CY_LOGRL_MORE];
    if (!cy_logrl_line(&b->auth_log, addr, more)) return;
    cy_warn(NULL, "api: %s %s from %s refused: %s%s", cy_http_method(req), cy_http_path(req),
            addr, why, more);
}

static const char *const www[] = {"WWW-Authenticate", "Bearer realm=\"cyan\"", NULL};
static const char *const www_expired[] = {
    "WWW-Authenticate",
    "Bearer realm=\"cyan\", error=\"invalid_token\", error_description=\"the token expired\"",
    NULL};

/* 401 for a credential that has expired at ms (what: "token", "stream
 * token", ...). */
static void refuse_expired(cy_api *b, cy_http_req *req, const char *what, int64_t ms,
                           const char *hint)
{
    char when[CY_TIME_ISO_LEN];
    cy_time_iso(ms, when);
    auth_failed_log(b, req, "expired token");
    reply_error(b, req, 401, "token_expired", www_expired, "this %s expired at %s%s", what, when,
                hint);
}

static bool refuse_store(cy_api *b, cy_http_req *req)
{
    auth_failed_log(b, req, "the registry cannot be read");
    reply_error(b, req, 503, "registry_unavailable", NULL, "the registry cannot be read");
    return false;
}

/* limit_gate's answer for a request held before its check (below); the
 * request's tag says so until the hold ends. */
#define API_AUTH_HELD (-1)

/* Failed token checks are limited for the whole node by address
 * (core/cy_limit.h), before the token is looked at: an address locked out
 * gets 429 with Retry-After, even with a valid token; one over
 * auth_fail_burst, unless `held` (it has been held once), gets
 * API_AUTH_HELD: the request is held for auth_fail_delay, then checked
 * (handle, hold_auth). Returns 1 (go on to the token), 0 (answered) or
 * API_AUTH_HELD. A malformed, unknown or revoked token, or a stream token
 * that does not verify, is a failure of its address
 * (cy_api_authenticate, auth_failed); no token at all, or an expired one,
 * is not (a client that forgot it, or kept an old one, guesses nothing).
 * Tokens are not counted by id: a token's id says nothing until its
 * secret matches, and any id could be locked out. */
static int limit_gate(cy_api *b, cy_http_req *req, bool held)
{
    const struct sockaddr *sa = b->limit ? cy_http_peer_sockaddr(req) : NULL;
    int64_t retry = 0;
    switch (cy_limit_auth_check(b->limit, sa, NULL, 0, held, cy_mono_ms(), &retry)) {
    case CY_LIMIT_LOCKED: {
        char s[24];
        snprintf(s, sizeof(s), "%lld", (long long)((retry + 999) / 1000));
        const char *hd[] = {"Retry-After", s, NULL};
        b->stats->auth_locked++;
        auth_failed_log(b, req, "locked out after repeated failed token checks");
        reply_error(b, req, 429, "too_many_failures", hd,
                    "too many failed token checks from this address; retry in %s s", s);
        return 0;
    }
    case CY_LIMIT_DELAY: b->stats->auth_delayed++; return API_AUTH_HELD;
    default: return 1;
    }
}

/* A guess that failed (see limit_gate): counted for its address, logged,
 * answered 401 with why. */
static void auth_failed(cy_api *b, cy_http_req *req, const char *why)
{
    const struct sockaddr *sa = b->limit ? cy_http_peer_sockaddr(req) : NULL;
    b->stats->auth_failures++;
    unsigned bits = cy_limit_auth_failed(b->limit, sa, NULL, 0, false, cy_mono_ms());
    char text[160];
    snprintf(text, sizeof(text), "%s%s", why,
             (bits & CY_LIMIT_ADDR_LOCKED_NOW) ? "; the address is now locked out"
             : (bits & CY_LIMIT_ADDR_SLOW_NOW) ? "; its checks are now held"
                                               : "");
    auth_failed_log(b, req, text);
    reply_error(b, req, 401, "unauthorized", www, "%s", why);
}

/* A stream token (api_stream_token.h): valid, for an event stream, with a
 * parent that is neither revoked nor expired. */
static bool stream_token_auth(cy_api *b, cy_http_req *req, const char *tok, size_t len,
                              bool stream_route, int64_t now, api_auth *out)
{
    if (!stream_route) {
        auth_failed_log(b, req, "a stream token outside an event stream");
        reply_error(b, req, 401, "unauthorized", www,
                    "a stream token only opens event streams (GET /v1/events..., "
                    "GET /v1/devices/{id}/events...)");
        return false;
    }
    char parent[CY_TOKEN_ID_LEN + 1];
    int64_t exp = 0;
    /* No key file: no stream token was ever made, this one included. */
    int rc = cy_api_stream_key(b, false);
    if (rc == CY_ESTORE) return refuse_store(b, req);
    if (rc == 0) rc = cy_stream_token_verify(b->stream_key, tok, len, now, parent, &exp);
    if (rc == CY_ETIMEDOUT) {
        refuse_expired(b, req, "stream token", exp,
                       ": ask for another (POST /v1/events/stream-token)");
        return false;
    }
    if (rc) {
        auth_failed(b, req, "malformed or unknown stream token");
        return false;
    }
    cy_token_auth ta;
    rc = cy_registry_token_auth(b->registry, parent, now, &ta);
    if (rc == CY_ESTORE) return refuse_store(b, req);
    if (rc == CY_ETIMEDOUT) {
        refuse_expired(b, req, "stream token's token", ta.expires_at, "");
        return false;
    }
    if (rc) {
        auth_failed_log(b, req, "the stream token's token is revoked");
        reply_error(b, req, 401, "unauthorized", www,
                    "the token this stream token was made with is revoked");
        return false;
    }
    memcpy(out->id, ta.id, sizeof(out->id));
    out->scopes = ta.scopes;
    out->expires_at = ta.expires_at;
    out->stream_token = true;
    return true;
}

static const api_route *route_of(cy_http_req *req);

bool cy_api_authenticate(cy_api *b, cy_http_req *req, bool stream_route, api_auth *out)
{
    memset(out, 0, sizeof(*out));
    /* A long-lived token never stands in a URL: proxies, browser history
     * and Referer headers keep URLs. Said loudly, whatever else came. */
    if (cy_http_query(req, "access_token")) {
        auth_failed_log(b, req, "a token in the URL (access_token)");
        reply_error(b, req, 400, "token_in_url", NULL,
                    "tokens are never taken from the URL (access_token): send it in an "
                    "Authorization: Bearer header; a browser's EventSource opens streams with a "
                    "stream token (POST /v1/events/stream-token, then ?stream_token=)");
        return false;
    }
    const char *h = cy_http_header(req, "Authorization");
    const char *tok = NULL;
    bool in_url = false;
    if (h) {
        if (strncasecmp(h, "Bearer ", 7) != 0) {
            auth_failed_log(b, req, "Authorization is not a Bearer token");
            reply_error(b, req, 401, "unauthorized", www,
                        "an Authorization: Bearer token is needed");
            return false;
        }
        tok = h + 7;
        while (*tok == ' ')
            tok++;
    } else if ((tok = cy_http_query(req, "stream_token")) != NULL) {
        in_url = true;
    } else {
        auth_failed_log(b, req, "no token");
        /* Particle's scripts may send access_token=... in a form body: it is
         * not read (docs/api.md, "Particle compatibility"), and says so. */
        const api_route *r = cy_api_particle_form_post(req) ? route_of(req) : NULL;
        if (r && r->op == API_OP_PARTICLE_CALL)
            reply_error(b, req, 401, "unauthorized", www,
                        "an Authorization: Bearer token is needed; an access_token in the "
                        "body is not taken (a body is never read before its token is known)");
        else
            reply_error(b, req, 401, "unauthorized", www,
                        "an Authorization: Bearer token is needed");
        return false;
    }
    size_t len = strlen(tok);
    int64_t now = cy_wall_ms();
    if (len >= 4 && memcmp(tok, CY_STREAM_TOKEN_PREFIX, 4) == 0)
        return stream_token_auth(b, req, tok, len, stream_route, now, out);
    if (in_url) {
        auth_failed_log(b, req, "a token in the URL (stream_token)");
        reply_error(b, req, 400, "token_in_url", NULL,
                    "stream_token takes a stream token (cys_...) from POST "
                    "/v1/events/stream-token; a long-lived token is never taken from the URL");
        return false;
    }
    cy_token_auth ta;
    int rc = cy_registry_token_check(b->registry, tok, len, now, &ta);
    if (rc == 0 && ta.scopes != 0) {
        memcpy(out->id, ta.id, sizeof(out->id));
        out->scopes = ta.scopes;
        out->expires_at = ta.expires_at;
        return true;
    }
    if (rc == CY_ESTORE) return refuse_store(b, req);
    if (rc == CY_ETIMEDOUT) {
        refuse_expired(b, req, "token", ta.expires_at, "");
        return false;
    }
    auth_failed(b, req, rc == CY_EINVAL ? "malformed token" : "unknown or revoked token");
    return false;
}

/* The route of req (method and path), or NULL (no path of the API, or
 * out of memory: the handler says which). */
static const api_route *route_of(cy_http_req *req)
{
    char *path = cy_strdup(cy_http_path(req));
    if (!path) return NULL;
    char *seg[API_MAX_SEGMENTS];
    unsigned nseg = cy_api_split(path, seg);
    const api_route *r = nseg ? cy_api_route_find(cy_http_method(req), seg, nseg, NULL, 0) : NULL;
    cy_free(path);
    return r;
}

/* CORS (docs/api.md, "CORS"): an allowed Origin gets
 * Access-Control-Allow-Origin on whatever answers its request, refusals
 * included (a page can read why it was refused), with Vary: Origin so that
 * a cache keeps one answer per origin. cors_origins is read at each use
 * (SIGHUP changes it). Returns whether the origin is allowed. */
static bool cors_headers(cy_api *b, cy_http_req *req)
{
    const char *origin = cy_http_header(req, "Origin");
    const char *allow = origin ? cy_api_cors_allow(b->cfg->cors_origins, origin) : NULL;
    if (!allow) return false;
    cy_http_add_header(req, "Access-Control-Allow-Origin", allow);
    cy_http_add_header(req, "Vary", "Origin");
    cy_http_add_header(req, "Access-Control-Expose-Headers",
                       "Location, Retry-After, WWW-Authenticate");
    return true;
}

static void handle(void *ctx, cy_http_req *req);

/* A request held for auth_fail_delay before its token is checked. */
typedef struct api_hold {
    uv_timer_t t;
    cy_api *b;
    cy_http_req *req; /* NULL once the client left */
} api_hold;

static void hold_closed(uv_handle_t *h)
{
    cy_free(h->data);
}

static void hold_gone(void *arg, cy_http_req *req)
{
    api_hold *ho = arg;
    (void)req;
    ho->req = NULL;
    uv_timer_stop(&ho->t);
    uv_close((uv_handle_t *)&ho->t, hold_closed);
}

static void hold_done(uv_timer_t *t)
{
    api_hold *ho = t->data;
    cy_http_req *req = ho->req;
    cy_http_on_close(req, NULL, NULL);
    uv_close((uv_handle_t *)&ho->t, hold_closed);
    cy_http_set_tag(req, 0);
    if (limit_gate(ho->b, req, true) != 1) return; /* answered: locked out meanwhile */
    const api_route *r = route_of(req);
    api_auth a;
    if (!cy_api_authenticate(ho->b, req, r && r->stream, &a)) return; /* answered */
    cy_http_set_tag(req, (int)a.scopes);
    handle(ho->b, req);
}

static void hold_auth(cy_api *b, cy_http_req *req)
{
    api_hold *ho = cy_calloc(1, sizeof(*ho));
    if (!ho) {
        reply_error(b, req, 503, "internal", NULL, "out of memory");
        return;
    }
    ho->b = b;
    ho->req = req;
    uv_timer_init(b->loop, &ho->t);
    ho->t.data = ho;
    uv_timer_start(&ho->t, hold_done, b->cfg->auth_fail_delay, 0);
    cy_http_on_close(req, hold_gone, ho);
}

/* Before each run of the HTTP server: the requests it reads see the
 * registry as it is now. Tokens and devices are looked up in one read
 * snapshot per run, begun after the run's requests arrived, with the
 * token cache checked against it: a token revoked or a device removed
 * before a request was sent is refused by every shard (docs/api.md,
 * "Tokens"), and a run of many requests pays for one read transaction. */
static void before_run(void *ctx)
{
    cy_api *b = ctx;
    cy_registry_fresh(b->registry);
}

/* The HTTP server's admit: max_connect_rate_per_address, at accept. */
static bool admit(void *ctx, const struct sockaddr *sa)
{
    cy_api *b = ctx;
    if (cy_limit_connect(b->limit, sa, (int64_t)uv_now(b->loop))) return true;
    b->stats->limit_connect_rate++;
    char a[64], key[72], more[CY_LOGRL_MORE];
    cy_limit_addr_text(sa, a, sizeof(a));
    snprintf(key, sizeof(key), "rate %s", a); /* apart from the token failures' lines */
    if (cy_logrl_line(&b->auth_log, key, more))
        cy_info(NULL, "api: connection from %s closed: over max_connect_rate_per_address (%u/s)%s",
                a, b->cfg->max_connect_rate_per_address, more);
    return false;
}

/* The HTTP server's check, run once a request's headers are in and before
 * any of its body is read: every path but /v1/health needs a valid token
 * (or, to open an event stream, a stream token), so a stranger's body is
 * refused (and the connection closed) unread. The scopes found are left
 * on the request for handle(). A GET of /v1/health needs nothing; another
 * method on it is refused here too. OPTIONS (a CORS preflight) needs no
 * token and may have no body: handle() answers it. */
static void check_request(void *ctx, cy_http_req *req)
{
    cy_api *b = ctx;
    cors_headers(b, req);
    const char *m = cy_http_method(req);
    if (strcmp(m, "OPTIONS") == 0) {
        const char *cl = cy_http_header(req, "Content-Length");
        if (cy_http_header(req, "Transfer-Encoding") || (cl && strcmp(cl, "0") != 0))
            reply_error(b, req, 400, "bad_request", NULL, "OPTIONS takes no body");
        return;
    }
    if (strcmp(cy_http_path(req), "/v1/health") == 0) {
        if (strcmp(m, "GET") != 0) not_allowed(b, req, "GET");
        return;
    }
    if (strcmp(cy_http_path(req), CY_API_WS_PATH) == 0) { /* the device logs in over MQTT */
        cy_api_ws_check(b, req);
        return;
    }
    int g = limit_gate(b, req, false);
    if (g == API_AUTH_HELD) cy_http_set_tag(req, API_AUTH_HELD);
    if (g != 1) return;
    const api_route *r = route_of(req);
    api_auth a;
    if (cy_api_authenticate(b, req, r && r->stream, &a)) cy_http_set_tag(req, (int)a.scopes);
}

/* OPTIONS on an API path: 204 with Allow, and for an allowed origin the
 * preflight's answer (every method the path takes, the request headers a
 * page may send, and how long a browser may keep the answer). No token:
 * a browser sends a preflight without one. */
static void options(cy_api *b, cy_http_req *req, char *const *seg, unsigned nseg)
{
    char allow[96];
    cy_api_route_find("OPTIONS", seg, nseg, allow, sizeof(allow));
    if (!allow[0]) {
        reply_error(b, req, 404, "not_found", NULL, "no such endpoint");
        return;
    }
    const char *origin = cy_http_header(req, "Origin");
    bool cors = origin && cy_api_cors_allow(b->cfg->cors_origins, origin);
    const char *h[] = {"Allow",
                       allow,
                       "Access-Control-Allow-Methods",
                       allow,
                       "Access-Control-Allow-Headers",
                       "Authorization, Content-Type, Last-Event-ID",
                       "Access-Control-Max-Age",
                       API_CORS_MAX_AGE,
                       NULL};
    if (!cors) h[2] = NULL;
    cy_api_answered(b, req);
    cy_http_reply(req, 204, NULL, "", 0, h);
}

/* 403 for a token without the route's scope, naming it (and, RFC 6750's
 * way, in WWW-Authenticate). */
static void refuse_scope(cy_api *b, cy_http_req *req, unsigned need, unsigned have)
{
    const char *name = cy_scope_name(need);
    char has[128], hdr[128];
    cy_scopes_format(have, has, sizeof(has));
    snprintf(hdr, sizeof(hdr), "Bearer realm=\"cyan\", error=\"insufficient_scope\", scope=\"%s\"",
             name);
    const char *h[] = {"WWW-Authenticate", hdr, NULL};
    char *body = NULL;
    json_t *o = json_pack("{s:s, s:s+++, s:s}", "error", "forbidden", "message",
                          "this token lacks the scope ", name, "; it has ", has[0] ? has : "none",
                          "scope", name);
    if (o) body = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    reply_text(b, req, 403, body, h);
    free(body);
}

/* The device a path names (id or name), as the base of its JSON object. */
static json_t *device_base(cy_api *b, const cy_device *d)
{
    json_t *desc = cy_device_describe(b->devices, d->id);
    json_t *o = json_pack("{s:s, s:s, s:o, s:i, s:o, s:o, s:o, s:o}", "id", d->id, "name",
                          d->name, "created_at", cy_device_time(d->created_at), "shard",
                          (json_int_t)cy_shard_of(d->id, strlen(d->id), b->nshards), "functions",
                          cy_device_names(desc, "functions"), "variables",
                          cy_device_names(desc, "variables"), "version",
                          cy_device_info(desc, "version"), "model", cy_device_info(desc, "model"));
    json_decref(desc);
    return o;
}

/* The device a path names: a user's by id or name for a user's token; for
 * the internal token, an internal device by id (store.h, "Internal devices
 * and tokens"). Either is 404 to the other. */
static bool find_device(cy_api *b, cy_http_req *req, bool internal, const char *key, cy_device *d)
{
    int rc = internal ? cy_registry_internal_get(b->registry, key, d)
                      : cy_registry_device_get(b->registry, key, d);
    if (rc == 0) return true;
    if (rc == CY_ENOENT)
        reply_error(b, req, 404, "device_not_found", NULL, "no device %.64s", key);
    else
        reply_error(b, req, 503, "registry_unavailable", NULL, "the registry cannot be read: %s",
                    cy_strerror(rc));
    return false;
}

/* Ask the owner of device id (or, id NULL, every shard) for presence. */
static void presence_request(cy_api *b, cy_http_req *req, json_t *devices, const char *id)
{
    wait_on(b, req, id ? CY_DEVICE_OP_PRESENCE : CY_DEVICE_OP_PRESENCE_ALL, id, NULL, NULL, 0,
            API_PRESENCE_TIMEOUT_MS, devices, API_SHAPE_CYAN, NULL);
}

typedef struct list_ctx {
    cy_api *b;
    json_t *arr;
} list_ctx;

static int list_one(void *ctx, const cy_device *d)
{
    list_ctx *lc = ctx;
    json_array_append_new(lc->arr, device_base(lc->b, d));
    return 0;
}

static void devices_list(cy_api *b, cy_http_req *req)
{
    const char *on = cy_http_query(req, "online");
    int8_t online = -1;
    if (on && strcmp(on, "true") == 0)
        online = 1;
    else if (on && strcmp(on, "false") == 0)
        online = 0;
    else if (on) {
        reply_error(b, req, 400, "bad_request", NULL, "\"online\" is true or false");
        return;
    }
    list_ctx lc = {b, json_array()};
    int rc = cy_registry_device_list(b->registry, list_one, &lc);
    if (rc) {
        json_decref(lc.arr);
        reply_error(b, req, 503, "registry_unavailable", NULL, "the registry cannot be read: %s",
                    cy_strerror(rc));
        return;
    }
    wait_on_list(b, req, CY_DEVICE_OP_PRESENCE_ALL, NULL, NULL, NULL, 0, API_PRESENCE_TIMEOUT_MS,
                 lc.arr, API_SHAPE_CYAN, NULL, online);
}

static json_t *body_object(cy_api *b, cy_http_req *req, bool empty_ok)
{
    size_t len;
    const uint8_t *body = cy_http_body(req, &len);
    if (!body || len == 0) {
        if (empty_ok) return json_object();
        reply_error(b, req, 400, "bad_json", NULL, "the body must be a JSON object");
        return NULL;
    }
    json_error_t err;
    json_t *o = json_loadb((const char *)body, len, JSON_REJECT_DUPLICATES, &err);
    if (!o || !json_is_object(o)) {
        json_decref(o);
        /* jansson's text for this one names its flag (JSON_ALLOW_NUL) */
        const char *why = !o && json_error_code(&err) == json_error_null_character
                              ? "a string holds \\u0000, which cyan does not take"
                              : err.text;
        reply_error(b, req, 400, "bad_json", NULL, "the body must be a JSON object%s%s",
                    o ? "" : ": ", o ? "" : why);
        return NULL;
    }
    return o;
}

json_t *cy_api_body_object(cy_api *b, cy_http_req *req)
{
    return body_object(b, req, true);
}

json_t *cy_api_body_object_required(cy_api *b, cy_http_req *req)
{
    return body_object(b, req, false);
}

static void device_create(cy_api *b, cy_http_req *req)
{
    json_t *o = cy_api_body_object(b, req);
    if (!o) return;
    json_t *n = json_object_get(o, "name");
    if (!json_is_string(n)) {
        json_decref(o);
        reply_error(b, req, 400, "bad_json", NULL, "\"name\" must be a string");
        return;
    }
    char id[CY_DEVICE_ID_LEN + 1], secret[CY_DEVICE_SECRET_LEN + 1], psk[CY_DEVICE_PSK_LEN + 1];
    int rc = strlen(json_string_value(n)) == json_string_length(n)
                 ? cy_registry_device_add(b->registry, json_string_value(n), id, secret, psk)
                 : CY_EINVAL;
    if (rc == CY_EEXIST)
        reply_error(b, req, 409, "name_taken", NULL, "a device named %.64s exists",
                    json_string_value(n));
    else if (rc == CY_EINVAL)
        reply_error(b, req, 400, "bad_request", NULL,
                    "a name is 1 to 64 letters, digits, '-', '_' or '.', and not shaped like an id");
    else if (rc)
        reply_error(b, req, 503, "registry_unavailable", NULL, "cannot add the device: %s",
                    cy_strerror(rc));
    else {
        cy_info(id, "device created through the API (name %s)", json_string_value(n));
        reply_json(b, req, 201,
                   json_pack("{s:s, s:s, s:s, s:s}", "id", id, "name", json_string_value(n),
                             "secret", secret, "psk", psk));
    }
    json_decref(o);
}

/* POST /v1/devices/{id}/psk: a new DTLS PSK for device d, shown once. */
static void device_psk(cy_api *b, cy_http_req *req, const cy_device *d)
{
    /* No body, or {}: a Particle-style call of a function named "psk"
     * (arg=...) lands here too, and must not rotate the key by surprise. */
    size_t blen;
    const uint8_t *body = cy_http_body(req, &blen);
    size_t i = 0;
    while (body && i < blen && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' ||
                                body[i] == '\n'))
        i++;
    if (body && i < blen) {
        json_t *o = json_loadb((const char *)body + i, blen - i, 0, NULL);
        bool empty = json_is_object(o) && json_object_size(o) == 0;
        json_decref(o);
        if (!empty) {
            reply_error(b, req, 400, "bad_request", NULL,
                        "POST /v1/devices/{id}/psk issues a new DTLS key and takes no body; a "
                        "function named psk is called at /v1/devices/{id}/functions/psk");
            return;
        }
    }
    char psk[CY_DEVICE_PSK_LEN + 1];
    int rc = cy_registry_device_psk_new(b->registry, d->id, psk);
    if (rc == CY_ENOENT) {
        reply_error(b, req, 404, "device_not_found", NULL, "no device %s", d->id);
    } else if (rc) {
        reply_error(b, req, 503, "registry_unavailable", NULL, "cannot issue a PSK: %s",
                    cy_strerror(rc));
    } else {
        cy_info(d->id, "a new DTLS PSK issued through the API");
        reply_json(b, req, 200, json_pack("{s:s, s:s}", "id", d->id, "psk", psk));
    }
    memset(psk, 0, sizeof(psk));
}

static void clear_describe(cy_api *b, const char *id)
{
    char topic[8 + CY_DEVICE_ID_LEN + 10];
    int n = snprintf(topic, sizeof(topic), "devices/%s/describe", id);
    if (!cy_router_retained(b->router, topic, (size_t)n)) return;
    cy_msg *m = cy_msg_new(topic, (size_t)n, NULL, 0, NULL, 0, 1, true, 0);
    if (!m) return;
    cy_router_publish(b->router, m, NULL, NULL, false);
    cy_msg_unref(m);
}

static void device_delete(cy_api *b, cy_http_req *req, const cy_device *d)
{
    int rc = cy_registry_device_remove(b->registry, d->id);
    if (rc && rc != CY_ENOENT) {
        reply_error(b, req, 503, "registry_unavailable", NULL, "cannot remove the device: %s",
                    cy_strerror(rc));
        return;
    }
    cy_info(d->id, "device deleted through the API");
    clear_describe(b, d->id);
    wait_on(b, req, CY_DEVICE_OP_KICK, d->id, NULL, NULL, 0, API_PRESENCE_TIMEOUT_MS, NULL,
            API_SHAPE_CYAN, NULL);
}

/* PATCH /v1/devices/{id or name} {"name": new}: rename device d. Its id,
 * secret and PSK stay, so a connected device notices nothing. */
static void device_rename(cy_api *b, cy_http_req *req, const cy_device *d)
{
    json_t *o = cy_api_body_object(b, req);
    if (!o) return;
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        if (strcmp(key, "name") != 0) {
            reply_error(b, req, 400, "bad_request", NULL,
                        "unknown field \"%.64s\": only \"name\" may be changed", key);
            json_decref(o);
            return;
        }
    }
    json_t *n = json_object_get(o, "name");
    if (!json_is_string(n)) {
        json_decref(o);
        reply_error(b, req, 400, "bad_json", NULL, "\"name\" must be a string");
        return;
    }
    const char *name = json_string_value(n);
    cy_device out;
    int rc = strlen(name) == json_string_length(n)
                 ? cy_registry_device_rename(b->registry, d->id, name, &out)
                 : CY_EINVAL;
    if (rc == CY_EEXIST)
        reply_error(b, req, 409, "name_taken", NULL, "a device named %.64s exists", name);
    else if (rc == CY_EINVAL)
        reply_error(b, req, 400, "bad_request", NULL,
                    "a name is 1 to 64 letters, digits, '-', '_' or '.', and not shaped like an id");
    else if (rc == CY_ENOENT)
        reply_error(b, req, 404, "device_not_found", NULL, "no device %s", d->id);
    else if (rc)
        reply_error(b, req, 503, "registry_unavailable", NULL, "cannot rename the device: %s",
                    cy_strerror(rc));
    else {
        cy_info(d->id, "device renamed through the API (%s -> %s)", d->name, out.name);
        reply_json(
            b, req, 200,
            json_pack("{s:s, s:s, s:s}", "id", out.id, "name", out.name, "previous_name", d->name));
    }
    json_decref(o);
}

int64_t cy_api_timeout_ms(json_t *v, const char *text)
{
    if (v) {
        if (!json_is_integer(v)) return -2;
        json_int_t s = json_integer_value(v);
        return s >= 1 && s <= 60 ? (int64_t)s * 1000 : -1;
    }
    if (text) {
        char *end;
        long s = strtol(text, &end, 10);
        return *text && !*end && s >= 1 && s <= 60 ? (int64_t)s * 1000 : -1;
    }
    return CY_DEVICE_DEFAULT_TIMEOUT_MS;
}

bool cy_api_op_name_ok(cy_api *b, cy_http_req *req, uint8_t op, const char *name)
{
    /* A name no describe can hold is not asked about (nor echoed: it may
     * be any bytes, %ff, which no JSON answer can carry). */
    if (cy_device_op_name_ok(name, strlen(name))) return true;
    reply_error(b, req, 404, op == CY_DEVICE_OP_CALL ? "function_not_found" : "variable_not_found",
                NULL, "no such name: a %s's name is 1 to 64 letters, digits, '_', '-' or '.'",
                op == CY_DEVICE_OP_CALL ? "function" : "variable");
    return false;
}

bool cy_api_call_fields(cy_api *b, cy_http_req *req, json_t *o, const char **arg, size_t *arg_len,
                        int64_t *ms)
{
    *arg = NULL;
    *arg_len = 0;
    json_t *av = json_object_get(o, "arg");
    if (av && !json_is_string(av) && !json_is_null(av)) {
        reply_error(b, req, 400, "bad_json", NULL, "\"arg\" must be a string");
        return false;
    }
    if (json_is_string(av)) {
        *arg = json_string_value(av);
        *arg_len = json_string_length(av);
    }
    *ms = cy_api_timeout_ms(json_object_get(o, "timeout"), NULL);
    if (*ms == -2) {
        reply_error(b, req, 400, "bad_json", NULL, "\"timeout\" must be a whole number");
        return false;
    }
    return true;
}

void cy_api_device_op(cy_api *b, cy_http_req *req, const cy_device *d, uint8_t op, const char *name,
                      const uint8_t *arg, size_t arg_len, int64_t ms, api_shape shape)
{
    if (ms < 0 || arg_len > CY_DEVICE_ARG_MAX) {
        reply_error(b, req, 400, "bad_request", NULL, "%s",
                    ms < 0 ? "timeout is a whole number of seconds from 1 to 60"
                           : "arg is at most 1024 bytes");
        return;
    }
    wait_on(b, req, op, d->id, name, arg, arg_len, (uint32_t)ms, NULL, shape, d->name);
}

/* cyan's own call and read routes. */
static void device_op(cy_api *b, cy_http_req *req, const cy_device *d, uint8_t op, const char *name)
{
    if (!cy_api_op_name_ok(b, req, op, name)) return;
    const char *arg = NULL;
    size_t arg_len = 0;
    int64_t ms;
    json_t *o = NULL;
    if (op == CY_DEVICE_OP_CALL) {
        o = cy_api_body_object(b, req);
        if (!o) return;
        if (!cy_api_call_fields(b, req, o, &arg, &arg_len, &ms)) {
            json_decref(o);
            return;
        }
    } else {
        ms = cy_api_timeout_ms(NULL, cy_http_query(req, "timeout"));
    }
    cy_api_device_op(b, req, d, op, name, (const uint8_t *)arg, arg_len, ms, API_SHAPE_CYAN);
    json_decref(o); /* after: arg points into it */
}

static void event_publish(cy_api *b, cy_http_req *req)
{
    json_t *o = cy_api_body_object(b, req);
    if (!o) return;
    json_t *n = json_object_get(o, "name"), *dv = json_object_get(o, "data");
    const char *why = NULL;
    if (!json_is_string(n))
        why = "\"name\" must be a string";
    else if (dv && !json_is_string(dv) && !json_is_null(dv))
        why = "\"data\" must be a string";
    if (why) {
        json_decref(o);
        reply_error(b, req, 400, "bad_json", NULL, "%s", why);
        return;
    }
    const char *name = json_string_value(n);
    size_t nl = json_string_length(n);
    /* An event from the API is a publish like a device's: the same
     * admission rules (cy_device_admit), as an application, not a device
     * (not bound by the ACL, which is about clients). */
    char topic[1024];
    int tl = snprintf(topic, sizeof(topic), "events/%s", name);
    bool retain = false, reply = false;
    const char *rule = NULL;
    bool ok = nl > 0 && nl == strlen(name) && (size_t)tl < sizeof(topic) &&
              cy_topic_valid_name(topic, (size_t)tl) &&
              cy_device_admit(b->devices, NULL, 0, NULL, topic, (size_t)tl, NULL, 0, &retain, &reply,
                              &rule) == 0;
    if (!ok) {
        json_decref(o);
        reply_error(b, req, 400, "bad_request", NULL,
                    "an event name is 1 to %u bytes without '+' or '#', not beginning with "
                    "\"" CY_EVENT_RESERVED "\"",
                    b->cfg->max_topic_length - 7);
        return;
    }
    if (json_is_string(dv) && json_string_length(dv) > API_EVENT_DATA_MAX) {
        json_decref(o);
        reply_error(b, req, 400, "bad_request", NULL, "\"data\" is at most %u bytes",
                    API_EVENT_DATA_MAX);
        return;
    }
    const char *data = json_is_string(dv) ? json_string_value(dv) : "";
    size_t dl = json_is_string(dv) ? json_string_length(dv) : 0;
    cy_msg *m = cy_msg_new(topic, (size_t)tl, (const uint8_t *)data, dl, NULL, 0, 0, false, 0);
    if (!m) {
        json_decref(o);
        reply_error(b, req, 500, "internal", NULL, "out of memory");
        return;
    }
    b->stats->publish_received++;
    cy_router_publish(b->router, m, NULL, NULL, false);
    cy_msg_unref(m);
    reply_json(b, req, 202, json_pack("{s:s, s:b}", "name", name, "published", 1));
    json_decref(o);
}

static void health(cy_api *b, cy_http_req *req)
{
    json_t *arr = json_array();
    bool all = true;
    for (unsigned j = 0; j < b->nshards; j++) {
        char why[96] = "";
        bool ok = j == b->self || cy_cluster_shard_ready(b->cluster, j, why, sizeof(why));
        all = all && ok;
        static const char *const states[] = {"down", "starting", "running", "stopping"};
        int64_t st = b->sb ? cy_sb_load(&b->sb->slots[j].state) : CY_SHARD_RUNNING;
        json_t *s = json_pack("{s:i, s:s, s:b}", "shard", (json_int_t)j, "state",
                              st >= 0 && st <= 3 ? states[st] : "unknown", "healthy", ok);
        if (!ok) json_object_set_new(s, "why", json_string(why));
        json_array_append_new(arr, s);
    }
    reply_json(b, req, all ? 200 : 503,
               json_pack("{s:s, s:i, s:o}", "status", all ? "ok" : "degraded", "served_by",
                         (json_int_t)b->self, "shards", arr));
}

/* The prefix of an event stream: what follows ".../events/" in the raw path. */
static const char *events_prefix(const char *path, const char *after)
{
    const char *p = strstr(path, after);
    return p ? p + strlen(after) : "";
}

/* An event stream holds its connection for as long as the client likes, so
 * streams may not take the connections kept for ordinary requests and
 * /v1/health (cy_http_stream_limit). */
static bool stream_room(cy_api *b, cy_http_req *req)
{
    cy_http *h = b->http;
    unsigned limit = cy_http_stream_limit(h);
    if (cy_http_streams(h) < limit) return true;
    static const char *const retry[] = {"Retry-After", "5", NULL};
    reply_error(b, req, 503, "streams_full", retry,
                "this server holds its most event streams (%u); other requests are still served",
                limit);
    return false;
}

/* Open an event stream, naming the token that opened it (the stream
 * limits per token, the end of its streams when it is revoked or expires).
 * The token was checked before the body (check_request); it is looked up
 * once more here for its id and expiry, which only stream opens need. */
static void open_stream(cy_api *b, cy_http_req *req, const char *device, const char *prefix)
{
    api_auth a;
    if (cy_api_authenticate(b, req, true, &a)) cy_api_stream_open(b, req, device, prefix, &a);
}

/* The device routes, once the route and the scope are known: find the
 * device (a 404 never says more than the scope allowed), then act. */
static void device_route(cy_api *b, cy_http_req *req, const api_route *rt, bool internal,
                         char *const *seg, unsigned nseg, const char *raw)
{
    cy_device d;
    if (!find_device(b, req, internal, seg[1], &d)) return;
    switch (rt->op) {
    case API_OP_DEVICE_DELETE:
        device_delete(b, req, &d);
        break;
    case API_OP_DEVICE_RENAME:
        device_rename(b, req, &d);
        break;
    case API_OP_DEVICE_PSK:
        device_psk(b, req, &d);
        break;
    case API_OP_DEVICE_CALL:
        device_op(b, req, &d, CY_DEVICE_OP_CALL, seg[3]);
        break;
    case API_OP_DEVICE_VARIABLE:
        device_op(b, req, &d, CY_DEVICE_OP_GET, seg[3]);
        break;
    case API_OP_PARTICLE_CALL:
    case API_OP_PARTICLE_VARIABLE:
        cy_api_particle(b, req, &d, rt->op, seg[2]);
        break;
    case API_OP_DEVICE_EVENTS: {
        const char *pre = "";
        if (nseg > 3) {
            char after[CY_DEVICE_ID_LEN + 80];
            snprintf(after, sizeof(after), "/%s/events/", seg[1]);
            pre = events_prefix(raw, after);
        }
        if (stream_room(b, req)) open_stream(b, req, d.id, pre);
        break;
    }
    default: {
        json_t *arr = json_array();
        json_array_append_new(arr, device_base(b, &d));
        presence_request(b, req, arr, d.id);
    }
    }
}

static void handle(void *ctx, cy_http_req *req)
{
    cy_api *b = ctx;
    const char *method = cy_http_method(req);
    const char *raw = cy_http_path(req);
    char *path = cy_strdup(raw);
    if (!path) {
        reply_error(b, req, 500, "internal", NULL, "out of memory");
        return;
    }
    if (strcmp(raw, CY_API_WS_PATH) == 0 && strcmp(method, "OPTIONS") != 0) {
        cy_api_ws_upgrade(b, req);
        goto out;
    }
    char *seg[API_MAX_SEGMENTS];
    unsigned nseg = cy_api_split(path, seg);
    char allow[96];
    const api_route *rt = nseg ? cy_api_route_find(method, seg, nseg, allow, sizeof(allow)) : NULL;
    if (nseg && !strcmp(method, "OPTIONS")) {
        options(b, req, seg, nseg);
        goto out;
    }
    if (!rt) {
        if (nseg && cy_api_particle_shadowed(b, req, seg, nseg, allow)) goto out;
        if (nseg && allow[0])
            not_allowed(b, req, allow);
        else
            reply_error(b, req, 404, "not_found", NULL, "no such endpoint");
        goto out;
    }
    if (rt->op == API_OP_HEALTH) {
        health(b, req);
        goto out;
    }
    /* check_request found the token's scopes before the body was read, or
     * found that it must wait (API_AUTH_HELD). */
    if (cy_http_tag(req) == API_AUTH_HELD) {
        hold_auth(b, req);
        goto out;
    }
    unsigned scopes = (unsigned)cy_http_tag(req);
    if (!scopes) {
        api_auth a;
        if (!cy_api_authenticate(b, req, rt->stream, &a)) goto out;
        scopes = a.scopes;
    }
    /* The internal token (the canaries') calls internal devices' functions
     * and nothing else: it sees no user device, list or stream. */
    bool internal = scopes == CY_SCOPE_INTERNAL;
    if (internal && rt->op != API_OP_DEVICE_CALL) {
        reply_error(b, req, 403, "forbidden", NULL,
                    "this token only calls the functions of cyan's internal devices");
        goto out;
    }
    if (!internal && !(scopes & rt->scope)) {
        refuse_scope(b, req, rt->scope, scopes);
        goto out;
    }
    switch (rt->op) {
    case API_OP_DEVICES_LIST:
        devices_list(b, req);
        break;
    case API_OP_DEVICE_CREATE:
        device_create(b, req);
        break;
    case API_OP_DEVICE_GET:
    case API_OP_DEVICE_DELETE:
    case API_OP_DEVICE_RENAME:
    case API_OP_DEVICE_PSK:
    case API_OP_DEVICE_CALL:
    case API_OP_DEVICE_VARIABLE:
    case API_OP_DEVICE_EVENTS:
    case API_OP_PARTICLE_CALL:
    case API_OP_PARTICLE_VARIABLE:
        device_route(b, req, rt, internal, seg, nseg, raw);
        break;
    case API_OP_EVENTS_STREAM:
        if (stream_room(b, req))
            open_stream(b, req, NULL, nseg > 1 ? events_prefix(raw, "/v1/events/") : "");
        break;
    case API_OP_EVENT_PUBLISH:
        event_publish(b, req);
        break;
    case API_OP_EVENT_TRACE:
        cy_api_event_trace(b, req, seg[1]);
        break;
    case API_OP_STREAM_TOKEN: {
        api_auth a;
        if (cy_api_authenticate(b, req, false, &a)) cy_api_stream_token(b, req, &a);
        break;
    }
    case API_OP_TOKENS_LIST:
    case API_OP_TOKEN_CREATE:
    case API_OP_TOKEN_REVOKE:
        cy_api_tokens(b, req, rt->op, seg);
        break;
    case API_OP_HEALTH:
        break; /* answered above */
    default:
        cy_api_webhooks(b, req, rt->op, seg);
        break;
    }
out:
    cy_free(path);
}

/* ---- lifecycle ---- */

int cy_api_new(const cy_api_deps *deps, int http_fd, cy_api **out)
{
    cy_api *a = cy_calloc(1, sizeof(*a));
    if (!a) return CY_ENOMEM;
    a->loop = deps->loop;
    a->cfg = deps->cfg;
    a->registry = deps->registry;
    a->router = deps->router;
    a->cluster = deps->cluster;
    a->devices = deps->devices;
    a->stats = deps->stats;
    a->hists = deps->hists;
    a->sb = deps->sb;
    a->limit = deps->limit;
    a->self = deps->self;
    a->ws_accept = deps->ws_accept;
    a->ws_ctx = deps->ws_ctx;
    a->nshards = deps->nshards ? deps->nshards : 1;
    a->http_fd = -1;
    cy_buf_init(&a->out);
    cy_logrl_init(&a->auth_log, API_AUTH_LOG_WINDOW_MS, API_AUTH_LOG_BURST);
    uv_timer_init(a->loop, &a->tick);
    a->tick.data = a;
    a->tick_running = true;
    int rc = cy_api_events_init(a, a->cfg->event_buffer);
    if (!rc) rc = cy_api_events_preload(a);
    if (rc) goto fail;
    a->http_fd = dup(http_fd);
    if (a->http_fd < 0) {
        rc = -errno;
        goto fail;
    }
    /* Every shard sees every event (api_events.c). Subscribed now, before
     * the links to peers come up, so the first interest snapshot has them. */
    static const char *const filters[] = {"devices/+/events/#", "events/#"};
    for (size_t i = 0; i < 2; i++) {
        rc = cy_cluster_subscribe(a->cluster, &a->events_sub, filters[i], strlen(filters[i]), 0,
                                  0);
        if (rc) goto fail;
    }
    uv_timer_start(&a->tick, on_tick, API_TICK_MS, API_TICK_MS);
    a->next_heartbeat = cy_mono_ms() + (int64_t)a->cfg->sse_heartbeat * 1000;
    *out = a;
    return 0;
fail:
    /* The tick handle was initialised: the caller's stop closes it and runs
     * the loop before freeing. */
    *out = a;
    return rc;
}

void cy_api_reload_tls(cy_api *b)
{
    cy_api *a = b;
    if (!a || !a->http || !b->cfg->tls_cert[0] || !b->cfg->http_tls) return;
    char why[256];
    if (cy_http_tls_reload(a->http, b->cfg->tls_cert, b->cfg->tls_key, why, sizeof(why)))
        cy_error(NULL, "http: reload of the TLS certificate failed, the old one stays in use: %s",
                 why);
    else
        cy_info(NULL, "http: TLS certificate %s loaded for new connections", b->cfg->tls_cert);
}

/* Called when the shard starts accepting (every shard ready, or its wait
 * ran out), so a request is never taken before the answers of the other
 * shards can reach us. */
void cy_api_listen(cy_api *b)
{
    cy_api *a = b;
    if (!a || a->http || a->http_fd < 0) return;
    cy_http_limits lim = {
        .max_header_bytes = 16384,
        .max_body_bytes = b->cfg->http_max_body,
        .max_connections = b->cfg->http_max_connections,
        .idle_timeout_s = b->cfg->http_idle_timeout,
        .max_stream_backlog = API_STREAM_BACKLOG,
        .request_timeout_s = b->cfg->http_request_timeout,
        .max_per_address = b->cfg->http_max_per_address,
        .admit = b->limit ? admit : NULL,
        .admit_ctx = b,
        .before_run = before_run,
        .before_run_ctx = b,
    };
    bool tls = b->cfg->tls_cert[0] && b->cfg->http_tls;
    if (tls) {
        lim.tls_cert = b->cfg->tls_cert;
        lim.tls_key = b->cfg->tls_key;
    }
    int rc = cy_http_new(b->loop, a->http_fd, &lim, handle, check_request, b, &a->http);
    close(a->http_fd); /* the server holds its own duplicate */
    a->http_fd = -1;
    if (rc) {
        cy_error(NULL, "http: cannot serve on %s: %s; this shard serves no API requests",
                 b->cfg->http_listen, cy_strerror(rc));
        return;
    }
    cy_info(NULL, "shard %u serving the HTTP API on %s%s", b->self, b->cfg->http_listen,
            tls ? " (HTTPS)" : "");
}

void cy_api_stop(cy_api *b)
{
    cy_api *a = b;
    if (!a) return;
    cy_api_streams_close(a);
    if (a->http) cy_http_stop(a->http);
    if (a->tick_running) {
        uv_close((uv_handle_t *)&a->tick, NULL);
        a->tick_running = false;
    }
}

void cy_api_free(cy_api *a)
{
    if (!a) return;
    static const char *const filters[] = {"devices/+/events/#", "events/#"};
    for (size_t i = 0; i < 2; i++)
        cy_cluster_unsubscribe(a->cluster, &a->events_sub, filters[i], strlen(filters[i]));
    if (a->http_fd >= 0) close(a->http_fd);
    cy_http_free(a->http);
    cy_api_events_free(a);
    cy_buf_fini(&a->out);
    cy_free(a);
}
