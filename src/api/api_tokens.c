/* api_tokens: API tokens through the API (docs/api.md, "Tokens"):
 *   GET    /v1/tokens                  every token, with scopes, expiry, last use
 *   POST   /v1/tokens                  create: 201 with its text, shown only now
 *   DELETE /v1/tokens/{id}             revoke
 *   POST   /v1/events/stream-token     a stream token (api_stream_token.h)
 * The first three need admin, the last events:read (api_routes.c).
 *
 * A token's text appears in one answer only, the 201 of its creation (with
 * Cache-Control: no-store), never in a GET or a log; the same for a stream
 * token's answer. Times are ISO 8601 UTC; a token's last use is as the
 * registry knows it: written by each shard at most once a minute (store.h,
 * "API tokens"), so it may be up to a minute behind.
 *
 * Ownership: nothing is kept past a request. Thread: the shard's loop.
 */
#include "api/api_int.h"

#include "api/api_stream_token.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"

#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const no_store[] = {"Cache-Control", "no-store", NULL};

json_t *cy_api_time_or_null(int64_t ms)
{
    return ms > 0 ? cy_device_time(ms) : json_null();
}

static json_t *scopes_json(unsigned scopes)
{
    json_t *arr = json_array();
    for (unsigned bit = 1; bit && bit <= CY_SCOPE_INTERNAL; bit <<= 1)
        if ((scopes & bit) && cy_scope_name(bit))
            json_array_append_new(arr, json_string(cy_scope_name(bit)));
    return arr;
}

static json_t *token_json(const cy_token *t, int64_t now)
{
    return json_pack("{s:s, s:s, s:o, s:o, s:o, s:o, s:b}", "id", t->id, "name", t->name, "scopes",
                     scopes_json(t->scopes), "created_at", cy_api_time_or_null(t->created_at),
                     "expires_at", cy_api_time_or_null(t->expires_at), "last_used_at",
                     cy_api_time_or_null(t->last_used_at), "expired",
                     t->expires_at > 0 && now >= t->expires_at);
}

typedef struct list_ctx {
    json_t *arr;
    int64_t now;
} list_ctx;

static int list_one(void *ctx, const cy_token *t)
{
    list_ctx *lc = ctx;
    json_array_append_new(lc->arr, token_json(t, lc->now));
    return 0;
}

static void registry_error(cy_api *b, cy_http_req *req, const char *what, int rc)
{
    cy_api_reply_error(b, req, 503, "registry_unavailable", NULL, "%s: %s", what, cy_strerror(rc));
}

static void tokens_list(cy_api *b, cy_http_req *req)
{
    list_ctx lc = {json_array(), cy_wall_ms()};
    int rc = cy_registry_token_list(b->registry, list_one, &lc);
    if (rc) {
        json_decref(lc.arr);
        registry_error(b, req, "the registry cannot be read", rc);
        return;
    }
    cy_api_reply_json(b, req, 200, lc.arr, NULL);
}

/* "2026-12-04T13:35:32Z" or "...32.123Z" (UTC only) into wall ms. */
static bool parse_time(const char *s, int64_t *ms)
{
    int y, mo, d, h, mi, sec, n = 0;
    if (sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec, &n) != 6 || n != 19)
        return false;
    const char *p = s + n;
    int frac = 0;
    if (*p == '.') {
        int digits = 0;
        for (p++; *p >= '0' && *p <= '9'; p++, digits++)
            if (digits < 3) frac = frac * 10 + (*p - '0');
        if (digits == 0) return false;
        for (; digits < 3; digits++)
            frac *= 10;
    }
    if (strcmp(p, "Z") != 0 || y < 1970 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 ||
        mi > 59 || sec > 60)
        return false;
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = sec};
    time_t t = timegm(&tm);
    if (t == (time_t)-1 || tm.tm_mday != d) return false; /* Feb 30 is March 2 to timegm */
    *ms = (int64_t)t * 1000 + frac;
    return true;
}

/* "expires_in" (whole seconds, or a duration text: "30d") or "expires_at"
 * (ISO 8601 UTC) of o into *expires_at (0: neither); false after answering
 * 400. */
static bool expiry_of(cy_api *b, cy_http_req *req, json_t *o, int64_t now, int64_t *expires_at)
{
    json_t *in = json_object_get(o, "expires_in"), *at = json_object_get(o, "expires_at");
    *expires_at = 0;
    if (in && json_is_null(in)) in = NULL;
    if (at && json_is_null(at)) at = NULL;
    if (in && at) {
        cy_api_reply_error(b, req, 400, "bad_request", NULL,
                           "give \"expires_in\" or \"expires_at\", not both");
        return false;
    }
    int64_t ms = 0;
    if (in) {
        int rc = CY_EINVAL;
        if (json_is_integer(in)) {
            char text[32];
            snprintf(text, sizeof(text), "%lld", (long long)json_integer_value(in));
            rc = json_integer_value(in) <= 0 ? CY_ERANGE : cy_duration_parse(text, &ms);
        } else if (json_is_string(in)) {
            rc = cy_duration_parse(json_string_value(in), &ms);
        }
        if (rc) {
            cy_api_reply_error(b, req, 400, rc == CY_ERANGE ? "bad_request" : "bad_json", NULL,
                               "\"expires_in\" is a number of seconds or a duration like \"30d\", "
                               "\"12h\", \"90m\", from 1 s to 10 years");
            return false;
        }
        *expires_at = now + ms;
    } else if (at) {
        if (!json_is_string(at) || !parse_time(json_string_value(at), &ms)) {
            cy_api_reply_error(b, req, 400, json_is_string(at) ? "bad_request" : "bad_json", NULL,
                               "\"expires_at\" is a UTC time like \"2027-01-31T12:00:00Z\"");
            return false;
        }
        if (ms <= now || ms - now > CY_TOKEN_MAX_LIFETIME_S * 1000) {
            cy_api_reply_error(b, req, 400, "bad_request", NULL,
                               "\"expires_at\" must be in the future, at most 10 years ahead");
            return false;
        }
        *expires_at = ms;
    }
    return true;
}

/* The "scopes" array of o into *scopes; false after answering 400 (an
 * unknown scope is named). */
static bool scopes_of(cy_api *b, cy_http_req *req, json_t *o, unsigned *scopes)
{
    json_t *arr = json_object_get(o, "scopes");
    *scopes = 0;
    if (!json_is_array(arr) || json_array_size(arr) == 0) {
        cy_api_reply_error(b, req, 400, arr && !json_is_array(arr) ? "bad_json" : "bad_request",
                           NULL,
                           "\"scopes\" is a non-empty array of devices:read, devices:call, "
                           "events:read, events:publish, webhooks:manage, admin");
        return false;
    }
    size_t i;
    json_t *v;
    json_array_foreach(arr, i, v)
    {
        unsigned bit;
        if (!json_is_string(v)) {
            cy_api_reply_error(b, req, 400, "bad_json", NULL, "\"scopes\" holds strings only");
            return false;
        }
        if (cy_scope_parse(json_string_value(v), json_string_length(v), &bit)) {
            cy_api_reply_error(b, req, 400, "bad_request", NULL,
                               "unknown scope \"%.40s\": the scopes are devices:read, "
                               "devices:call, events:read, events:publish, webhooks:manage, "
                               "admin",
                               json_string_value(v));
            return false;
        }
        *scopes |= bit;
    }
    return true;
}

static void token_create(cy_api *b, cy_http_req *req)
{
    json_t *o = cy_api_body_object(b, req);
    if (!o) return;
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        if (strcmp(key, "name") && strcmp(key, "scopes") && strcmp(key, "expires_in") &&
            strcmp(key, "expires_at")) {
            cy_api_reply_error(b, req, 400, "bad_request", NULL,
                               "unknown field \"%.40s\": a token has name, scopes, and "
                               "expires_in or expires_at",
                               key);
            json_decref(o);
            return;
        }
    }
    json_t *n = json_object_get(o, "name");
    int64_t now = cy_wall_ms(), expires_at = 0;
    unsigned scopes = 0;
    if (n && !json_is_string(n)) {
        cy_api_reply_error(b, req, 400, "bad_json", NULL, "\"name\" must be a string");
        json_decref(o);
        return;
    }
    if (!scopes_of(b, req, o, &scopes) || !expiry_of(b, req, o, now, &expires_at)) {
        json_decref(o);
        return;
    }
    const char *name = n ? json_string_value(n) : "token";
    char id[CY_TOKEN_ID_LEN + 1], token[CY_TOKEN_MAX + 1];
    int rc = !n || strlen(name) == json_string_length(n)
                 ? cy_registry_token_create(b->registry, name, scopes, expires_at, id, token)
                 : CY_EINVAL;
    if (rc == CY_EINVAL) {
        cy_api_reply_error(b, req, 400, "bad_request", NULL,
                           "a name is 1 to 64 letters, digits, '-', '_' or '.'");
    } else if (rc) {
        registry_error(b, req, "cannot create the token", rc);
    } else {
        char names[128];
        cy_scopes_format(scopes, names, sizeof(names));
        cy_info(NULL, "api: token %s (%s, scopes %s) created through the API", id, name, names);
        cy_token t = {.scopes = scopes, .created_at = now, .expires_at = expires_at};
        memcpy(t.id, id, sizeof(id));
        snprintf(t.name, sizeof(t.name), "%s", name);
        json_t *out = token_json(&t, now);
        json_object_set_new(out, "token", json_string(token));
        cy_api_reply_json(b, req, 201, out, no_store);
    }
    OPENSSL_cleanse(token, sizeof(token));
    json_decref(o);
}

static void token_revoke(cy_api *b, cy_http_req *req, const char *id)
{
    int rc = cy_registry_token_revoke(b->registry, id);
    if (rc == CY_ENOENT) {
        cy_api_reply_error(b, req, 404, "not_found", NULL, "no token %.32s", id);
    } else if (rc) {
        registry_error(b, req, "cannot revoke the token", rc);
    } else {
        cy_info(NULL, "api: token %s revoked through the API", id);
        cy_api_reply_json(b, req, 200, json_pack("{s:s, s:b}", "id", id, "revoked", 1), NULL);
    }
}

void cy_api_tokens(cy_api *b, cy_http_req *req, api_op op, char *const *seg)
{
    if (op == API_OP_TOKENS_LIST)
        tokens_list(b, req);
    else if (op == API_OP_TOKEN_CREATE)
        token_create(b, req);
    else
        token_revoke(b, req, seg[1]);
}

int cy_api_stream_key(cy_api *b, bool make)
{
    if (b->have_stream_key) return 0;
    int rc = cy_registry_subkey(b->registry, CY_STREAM_TOKEN_KEY_LABEL, make, b->stream_key);
    if (rc == 0) b->have_stream_key = true;
    return rc;
}

void cy_api_stream_token(cy_api *b, cy_http_req *req, const api_auth *auth)
{
    json_t *o = cy_api_body_object(b, req);
    if (!o) return;
    int64_t ttl = CY_STREAM_TOKEN_TTL_MS;
    const char *key;
    json_t *v;
    json_object_foreach(o, key, v)
    {
        bool known = !strcmp(key, "expires_in");
        if (!known || !json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > CY_STREAM_TOKEN_TTL_MS / 1000) {
            cy_api_reply_error(b, req, 400, "bad_request", NULL,
                               known ? "\"expires_in\" is a whole number of seconds from 1 to %d"
                                     : "unknown field: a stream token takes only expires_in "
                                       "(1 to %d seconds)",
                               CY_STREAM_TOKEN_TTL_MS / 1000);
            json_decref(o);
            return;
        }
        ttl = (int64_t)json_integer_value(v) * 1000;
    }
    json_decref(o);
    if (auth->stream_token) {
        /* Unreachable through the routes (a stream token opens streams
         * only); said here too, so that one never begets another. */
        cy_api_reply_error(b, req, 403, "forbidden", NULL,
                           "a stream token cannot make another stream token");
        return;
    }
    int rc = cy_api_stream_key(b, true);
    if (rc) {
        cy_api_reply_error(b, req, 503, "registry_unavailable", NULL,
                           "the node's key file cannot be read or made: %s", cy_strerror(rc));
        return;
    }
    int64_t now = cy_wall_ms(), exp = now + ttl;
    /* It dies with its parent anyway; saying so in its expiry is clearer. */
    if (auth->expires_at > 0 && auth->expires_at < exp) exp = auth->expires_at;
    char text[CY_STREAM_TOKEN_LEN + 1];
    rc = cy_stream_token_mint(b->stream_key, auth->id, exp, text);
    if (rc) {
        cy_api_reply_error(b, req, 500, "internal", NULL, "cannot make a stream token: %s",
                           cy_strerror(rc));
        return;
    }
    cy_api_reply_json(b, req, 201,
                      json_pack("{s:s, s:o, s:I}", "stream_token", text, "expires_at",
                                cy_device_time(exp), "expires_in",
                                (json_int_t)((exp - now + 999) / 1000)),
                      no_store);
    OPENSSL_cleanse(text, sizeof(text));
}
