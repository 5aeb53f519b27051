/* api_webhooks: the routes of webhook definitions (docs/api.md,
 * "Webhooks"):
 *   GET    /v1/webhooks              every webhook, in creation order
 *   POST   /v1/webhooks              create: 201 with its signing secret
 *   GET    /v1/webhooks/{id}         one
 *   PATCH  /v1/webhooks/{id}         change any subset of the fields
 *   DELETE /v1/webhooks/{id}         204
 *   POST   /v1/webhooks/{id}/secret  rotate the secret: 200 with the new one
 *
 * The definitions live in the registry (store/hooks.h), which checks their
 * shape again whoever writes them; here the JSON is read, every field is
 * checked with a reason that names it (400 bad_json for a wrong type, 400
 * bad_request for a wrong value), and the templates and the URL are
 * compiled and checked by the webhook rules themselves (webhooks/render.h,
 * webhooks/policy.h), so a webhook that is stored is one the engine can
 * run. A template is compiled once here and thrown away: the engine
 * compiles its own when it loads the definitions.
 *
 * A POST or PATCH builds a whole cy_webhook (a PATCH starts from the
 * stored one) and writes it whole: two PATCHes of one webhook at once end
 * as the later of the two, field for field.
 *
 * The signing secret appears in two answers only: the 201 of its creation
 * and the 200 of a rotation. Never in a GET, never in a log.
 *
 * Scopes: every route here needs webhooks:manage (checked before this
 * file, in api.c, from the route table api_routes.c): a webhook's URL and
 * headers often hold the receiver's own credentials.
 *
 * Ownership: nothing is kept past a request. Thread: the shard's loop.
 */
#include "api/api_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"
#include "core/cy_err.h"
#include "core/cy_log.h"
#include "store/hooks.h"
#include "webhooks/policy.h"
#include "webhooks/render.h"
#include "webhooks/webhooks.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Headers a webhook may set: at most this many, names this long. */
#define HEADERS_MAX_COUNT 64
#define HEADER_NAME_MAX 128
#define HEADERS_JSON_MAX 16384 /* the store's limit of the whole object */

/* ---- answers ---- */

/* The API's own answers (api.c): JSON with optional headers, and errors. */
#define reply_json cy_api_reply_json
#define reply_error cy_api_reply_error

static void registry_error(cy_api *b, cy_http_req *req, int rc)
{
    reply_error(b, req, 503, "registry_unavailable", NULL, "the registry cannot be used: %s",
                cy_strerror(rc));
}

static void not_found(cy_api *b, cy_http_req *req, const char *id)
{
    reply_error(b, req, 404, "not_found", NULL, "no webhook %.32s", id);
}

/* ---- the webhook object ---- */

/* The webhook's delivery figures, summed over the shards
 * (api_deliveries.c), or NULL (out of memory): then no "stats" key. */
static json_t *webhook_stats(cy_api *b, const cy_webhook *w)
{
    return cy_api_webhook_stats(b, w->id);
}

static json_t *opt_string(const char *s)
{
    return s ? json_string(s) : json_null();
}

/* Stored JSON text back as a value (it was written by this file, so it
 * parses; null if it ever does not). */
static json_t *stored_json(const char *text)
{
    json_t *v = text ? json_loads(text, JSON_DECODE_ANY, NULL) : NULL;
    return v ? v : json_null();
}

static json_t *webhook_json(cy_api *b, const cy_webhook *w)
{
    json_t *o = json_object();
    if (!o) return NULL;
    json_object_set_new(o, "id", json_string(w->id));
    json_object_set_new(o, "event", json_string(w->event ? w->event : ""));
    json_object_set_new(o, "url", json_string(w->url));
    json_object_set_new(o, "method", json_string(w->method));
    json_object_set_new(o, "headers", w->headers ? stored_json(w->headers) : json_object());
    if (w->body_kind == CY_WH_BODY_JSON) json_object_set_new(o, "json", stored_json(w->body));
    if (w->body_kind == CY_WH_BODY_FORM) json_object_set_new(o, "form", stored_json(w->body));
    if (w->body_kind == CY_WH_BODY_TEXT) json_object_set_new(o, "body", opt_string(w->body));
    json_object_set_new(o, "device_id", w->device_id[0] ? json_string(w->device_id) : json_null());
    json_object_set_new(o, "response_topic", opt_string(w->response_topic));
    json_object_set_new(o, "error_topic", opt_string(w->error_topic));
    json_object_set_new(o, "ordered", json_boolean(w->ordered));
    json_object_set_new(o, "enabled", json_boolean(w->enabled));
    json_object_set_new(o, "disabled_reason",
                        w->enabled ? json_null() : json_string(w->disabled_reason));
    json_object_set_new(o, "created_at", cy_device_time(w->created_at));
    json_object_set_new(o, "updated_at", cy_device_time(w->updated_at));
    json_t *stats = webhook_stats(b, w);
    if (stats) json_object_set_new(o, "stats", stats);
    return o;
}

/* ---- reading a POST or PATCH body ---- */

/* Why a body was refused: the error code and a message naming the field. */
typedef struct refusal {
    const char *code; /* "bad_json" or "bad_request"; NULL: out of memory */
    char msg[200];
} refusal;

static int refuse(refusal *rf, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int refuse(refusal *rf, const char *code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rf->msg, sizeof(rf->msg), fmt, ap);
    va_end(ap);
    rf->code = code;
    return CY_EINVAL;
}

static int set_str(char **dst, const char *src)
{
    char *s = NULL;
    if (src && !(s = cy_strdup(src))) return CY_ENOMEM;
    cy_free(*dst);
    *dst = s;
    return 0;
}

/* v as text: a JSON string with no NUL inside, at most max bytes. NULL for
 * JSON null when nullable. 0 or CY_EINVAL (refused). */
static int text_field(json_t *v, const char *field, size_t max, bool nullable, const char **out,
                      refusal *rf)
{
    *out = NULL;
    if (nullable && json_is_null(v)) return 0;
    if (!json_is_string(v))
        return refuse(rf, "bad_json", "\"%s\" must be a string%s", field,
                      nullable ? " or null" : "");
    const char *s = json_string_value(v);
    size_t n = json_string_length(v);
    if (strlen(s) != n) return refuse(rf, "bad_request", "\"%s\" holds a NUL character", field);
    if (n > max) return refuse(rf, "bad_request", "\"%s\" is at most %zu bytes", field, max);
    *out = s;
    return 0;
}

/* A text template (a URL, a header value, a topic): well formed. */
static int template_text(const char *s, const char *field, refusal *rf)
{
    char why[160] = "";
    if (cy_wh_text_check(s, why, sizeof(why)) == 0) return 0;
    return refuse(rf, "bad_request", "\"%s\": %s", field, why[0] ? why : "not a valid template");
}

/* An HTTP header name (RFC 9110 token). */
static bool header_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > HEADER_NAME_MAX) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  strchr("!#$%&'*+-.^_`|~", c) != NULL;
        if (!ok) return false;
    }
    return true;
}

/* Headers the request makes itself: the signature's, and framing. */
static bool header_reserved(const char *s)
{
    static const char *const names[] = {"content-length", "transfer-encoding", "host",
                                        "connection",     "upgrade",           "te",
                                        "expect",         "keep-alive",        "proxy-connection"};
    if (strncasecmp(s, "webhook-", 8) == 0) return true;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcasecmp(s, names[i]) == 0) return true;
    return false;
}

static int read_headers(json_t *v, cy_webhook *w, refusal *rf)
{
    if (json_is_null(v)) return set_str(&w->headers, NULL);
    if (!json_is_object(v))
        return refuse(rf, "bad_json", "\"headers\" must be an object of strings or null");
    if (json_object_size(v) > HEADERS_MAX_COUNT)
        return refuse(rf, "bad_request", "\"headers\": at most %d headers", HEADERS_MAX_COUNT);
    const char *name;
    json_t *val;
    json_object_foreach(v, name, val)
    {
        if (!header_name_ok(name))
            return refuse(rf, "bad_request",
                          "\"headers\": \"%.64s\" is not a header name (1 to %d token characters)",
                          name, HEADER_NAME_MAX);
        if (header_reserved(name))
            return refuse(rf, "bad_request", "\"headers\": %.64s is set by cyan itself", name);
        if (!json_is_string(val))
            return refuse(rf, "bad_json", "\"headers\": the value of %.64s must be a string", name);
        const char *s = json_string_value(val);
        if (strlen(s) != json_string_length(val))
            return refuse(rf, "bad_request", "\"headers\": the value of %.64s holds a NUL", name);
        for (const char *p = s; *p; p++)
            if ((unsigned char)*p < 0x20 && *p != '\t')
                return refuse(rf, "bad_request",
                              "\"headers\": the value of %.64s holds a control character", name);
        int rc = template_text(s, "headers", rf);
        if (rc) return rc;
        /* The same name twice, in another case: one would hide the other. */
        const char *other;
        json_t *ov;
        json_object_foreach(v, other, ov)
        {
            if (other == name) break;
            if (strcasecmp(other, name) == 0)
                return refuse(rf, "bad_request", "\"headers\": %.64s is given twice", name);
        }
    }
    char *text = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!text) return CY_ENOMEM;
    int rc = 0;
    if (strlen(text) > HEADERS_JSON_MAX)
        rc =
            refuse(rf, "bad_request", "\"headers\" are at most %d bytes of JSON", HEADERS_JSON_MAX);
    else
        rc = set_str(&w->headers, text);
    free(text);
    return rc;
}

/* The body template: key is "json", "form" or "body"; null returns to the
 * default body. */
static int read_body(const char *key, json_t *v, cy_webhook *w, refusal *rf)
{
    if (json_is_null(v)) {
        w->body_kind = CY_WH_BODY_DEFAULT;
        return set_str(&w->body, NULL);
    }
    cy_wh_body_kind kind;
    char *text = NULL; /* free()d: jansson's */
    const char *src;
    if (!strcmp(key, "json")) {
        kind = CY_WH_BODY_JSON;
        text = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!text) return CY_ENOMEM;
        src = text;
    } else if (!strcmp(key, "form")) {
        kind = CY_WH_BODY_FORM;
        const char *k;
        json_t *fv;
        if (!json_is_object(v)) return refuse(rf, "bad_json", "\"form\" must be an object");
        json_object_foreach(v, k, fv)
        {
            if (!json_is_string(fv))
                return refuse(rf, "bad_json", "\"form\": the value of %.64s must be a string", k);
        }
        text = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
        if (!text) return CY_ENOMEM;
        src = text;
    } else {
        kind = CY_WH_BODY_TEXT;
        int rc = text_field(v, "body", CY_WH_TEMPLATE_MAX, false, &src, rf);
        if (rc) return rc;
    }
    int rc = 0;
    char why[160] = "";
    cy_wh_template *t = NULL;
    if (strlen(src) > CY_WH_TEMPLATE_MAX) {
        rc = refuse(rf, "bad_request", "\"%s\" is at most %d bytes%s", key, CY_WH_TEMPLATE_MAX,
                    kind == CY_WH_BODY_TEXT ? "" : " as compact JSON");
    } else if ((rc = cy_wh_template_new(kind, src, &t, why, sizeof(why))) != 0) {
        if (rc == CY_ENOMEM) goto out;
        rc = refuse(rf, "bad_request", "\"%s\": %s", key, why[0] ? why : "not a valid template");
    } else {
        w->body_kind = kind;
        rc = set_str(&w->body, src);
    }
out:
    cy_wh_template_free(t);
    free(text);
    return rc;
}

static bool lower_hex(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return false;
    return true;
}

/* A response or error topic: null or "" for none. */
static int read_topic(const char *field, json_t *v, char **dst, refusal *rf)
{
    const char *s;
    int rc = text_field(v, field, CY_WEBHOOK_TOPIC_MAX, true, &s, rf);
    if (rc) return rc;
    if (s && !*s) s = NULL;
    if (s && (rc = template_text(s, field, rf))) return rc;
    if (s && (strchr(s, '+') || strchr(s, '#') || s[0] == '$'))
        return refuse(rf, "bad_request", "\"%s\" is a topic: no '+' or '#', not a '$' topic",
                      field);
    /* A topic a webhook may never publish on, rendered for an event of
     * some device (cy_webhooks_topic_ok): refused now rather than dropped
     * at each event. */
    if (s) {
        static const char dev[] = "000000000000000000000000";
        cy_wh_event ev = {.id = "0-0", .name = "x", .name_len = 1, .device_id = dev};
        ev.data = (const uint8_t *)"x";
        ev.data_len = 1;
        cy_buf t;
        cy_buf_init(&t);
        const char *why = NULL;
        bool bad = cy_wh_render_text(s, &ev, false, &t) == 0 &&
                   !cy_webhooks_topic_ok((const char *)cy_buf_head(&t), cy_buf_size(&t), dev, &why);
        cy_buf_fini(&t);
        if (bad) return refuse(rf, "bad_request", "\"%s\" would be %s", field, why);
    }
    return set_str(dst, s);
}

/* Apply the fields of body o to w (a new webhook's defaults, or the stored
 * one for a PATCH). 0, CY_EINVAL (rf says why), CY_ENOMEM. */
static int apply(cy_api *b, json_t *o, cy_webhook *w, bool create, refusal *rf)
{
    static const char *const known[] = {"event",          "url",         "method",  "headers",
                                        "json",           "form",        "body",    "device_id",
                                        "response_topic", "error_topic", "ordered", "enabled"};
    const char *key;
    json_t *v;
    int bodies = 0;
    json_object_foreach(o, key, v)
    {
        bool ok = false;
        for (size_t i = 0; i < sizeof(known) / sizeof(known[0]) && !ok; i++)
            ok = !strcmp(key, known[i]);
        if (!ok) return refuse(rf, "bad_request", "unknown field \"%.64s\"", key);
        bodies += !strcmp(key, "json") || !strcmp(key, "form") || !strcmp(key, "body");
    }
    if (bodies > 1)
        return refuse(rf, "bad_request", "at most one of \"json\", \"form\" and \"body\"");
    int rc = 0;
    const char *s;
    if ((v = json_object_get(o, "event"))) {
        if ((rc = text_field(v, "event", CY_WEBHOOK_EVENT_MAX, true, &s, rf))) return rc;
        if (s && (strchr(s, '+') || strchr(s, '#')))
            return refuse(rf, "bad_request", "\"event\" is a name prefix: no '+' or '#'");
        if ((rc = set_str(&w->event, s ? s : ""))) return rc;
    }
    v = json_object_get(o, "url");
    if (v || create) {
        if (!v) return refuse(rf, "bad_json", "\"url\" must be a string");
        if ((rc = text_field(v, "url", CY_WEBHOOK_URL_MAX, false, &s, rf))) return rc;
        if (!*s) return refuse(rf, "bad_request", "\"url\" is empty");
        if ((rc = template_text(s, "url", rf))) return rc;
        char why[160] = "";
        if (cy_wh_url_check(s, b->cfg->webhook_allow_private, why, sizeof(why)) != 0)
            return refuse(rf, "bad_request", "\"url\": %s", why[0] ? why : "refused");
        if ((rc = set_str(&w->url, s))) return rc;
    }
    if ((v = json_object_get(o, "method"))) {
        static const char *const methods[] = {"POST", "PUT", "PATCH", "GET", "DELETE"};
        if ((rc = text_field(v, "method", 7, false, &s, rf))) {
            if (!strcmp(rf->code, "bad_json")) return rc;
            s = ""; /* too long: not a method */
        }
        bool ok = false;
        for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]) && !ok; i++)
            ok = !strcmp(s, methods[i]);
        if (!ok) return refuse(rf, "bad_request", "\"method\" is POST, PUT, PATCH, GET or DELETE");
        snprintf(w->method, sizeof(w->method), "%s", s);
    }
    if ((v = json_object_get(o, "headers")) && (rc = read_headers(v, w, rf))) return rc;
    static const char *const body_keys[] = {"json", "form", "body"};
    for (size_t i = 0; i < 3; i++)
        if ((v = json_object_get(o, body_keys[i])) && (rc = read_body(body_keys[i], v, w, rf)))
            return rc;
    if ((v = json_object_get(o, "device_id"))) {
        if ((rc = text_field(v, "device_id", CY_DEVICE_ID_LEN, true, &s, rf))) {
            if (!strcmp(rf->code, "bad_json")) return rc;
            s = "-"; /* too long */
        }
        if (!s) s = "";
        if (*s && (strlen(s) != CY_DEVICE_ID_LEN || !lower_hex(s, CY_DEVICE_ID_LEN)))
            return refuse(rf, "bad_request",
                          "\"device_id\" is a device id (24 lowercase hex characters) or null");
        snprintf(w->device_id, sizeof(w->device_id), "%s", s);
    }
    if ((v = json_object_get(o, "response_topic")) &&
        (rc = read_topic("response_topic", v, &w->response_topic, rf)))
        return rc;
    if ((v = json_object_get(o, "error_topic")) &&
        (rc = read_topic("error_topic", v, &w->error_topic, rf)))
        return rc;
    if ((v = json_object_get(o, "ordered"))) {
        if (!json_is_boolean(v)) return refuse(rf, "bad_json", "\"ordered\" must be true or false");
        w->ordered = json_is_true(v);
    }
    if ((v = json_object_get(o, "enabled"))) {
        if (!json_is_boolean(v)) return refuse(rf, "bad_json", "\"enabled\" must be true or false");
        bool on = json_is_true(v);
        /* Disabled by the API, unless it already was for a reason of its
         * own ("410 Gone"): that one still holds. */
        if (!on && (w->enabled || !w->disabled_reason[0]))
            snprintf(w->disabled_reason, sizeof(w->disabled_reason), "by the API");
        if (on) w->disabled_reason[0] = '\0';
        w->enabled = on;
    }
    return 0;
}

/* Answer a failed apply or store write. */
static void refused(cy_api *b, cy_http_req *req, int rc, const refusal *rf, const char *why)
{
    if (rc == CY_EINVAL && rf && rf->code)
        reply_error(b, req, 400, rf->code, NULL, "%s", rf->msg);
    else if (rc == CY_EINVAL)
        reply_error(b, req, 400, "bad_request", NULL, "%s", why && *why ? why : "bad field");
    else if (rc == CY_ENOMEM)
        reply_error(b, req, 500, "internal", NULL, "out of memory");
    else if (rc == CY_ERANGE)
        reply_error(b, req, 409, "limit", NULL, "this node has its most webhooks (webhook_max %u)",
                    b->cfg->webhook_max);
    else
        registry_error(b, req, rc);
}

/* ---- routes ---- */

typedef struct list_ctx {
    cy_api *b;
    json_t *arr;
} list_ctx;

static int list_one(void *ctx, const cy_webhook *w)
{
    list_ctx *lc = ctx;
    json_t *o = webhook_json(lc->b, w);
    return o && json_array_append_new(lc->arr, o) == 0 ? 0 : CY_ENOMEM;
}

static void webhooks_list(cy_api *b, cy_http_req *req)
{
    list_ctx lc = {b, json_array()};
    int rc = lc.arr ? cy_registry_webhook_list(b->registry, list_one, &lc) : CY_ENOMEM;
    if (rc) {
        json_decref(lc.arr);
        refused(b, req, rc, NULL, NULL);
        return;
    }
    reply_json(b, req, 200, lc.arr, NULL);
}

static void webhook_create(cy_api *b, cy_http_req *req)
{
    json_t *o = cy_api_body_object_required(b, req);
    if (!o) return;
    cy_webhook w;
    memset(&w, 0, sizeof(w));
    snprintf(w.method, sizeof(w.method), "POST");
    w.enabled = true;
    refusal rf = {0};
    char why[160] = "";
    int rc = apply(b, o, &w, true, &rf);
    json_decref(o);
    if (!rc && !w.event) rc = set_str(&w.event, "");
    if (!rc) rc = cy_registry_webhook_add(b->registry, &w, b->cfg->webhook_max, why, sizeof(why));
    if (rc) {
        refused(b, req, rc, &rf, why);
        cy_webhook_fini(&w);
        return;
    }
    cy_info(NULL, "api: webhook %s created", w.id);
    json_t *out = webhook_json(b, &w);
    if (out) json_object_set_new(out, "secret", json_string(w.secret));
    char where[64];
    snprintf(where, sizeof(where), "/v1/webhooks/%s", w.id);
    const char *h[] = {"Location", where, NULL};
    reply_json(b, req, 201, out, h);
    cy_webhook_fini(&w);
}

static void webhook_get(cy_api *b, cy_http_req *req, const char *id)
{
    cy_webhook w;
    int rc = cy_registry_webhook_get(b->registry, id, &w);
    if (rc == CY_ENOENT)
        not_found(b, req, id);
    else if (rc)
        refused(b, req, rc, NULL, NULL);
    else
        reply_json(b, req, 200, webhook_json(b, &w), NULL);
    cy_webhook_fini(&w);
}

static void webhook_patch(cy_api *b, cy_http_req *req, const char *id)
{
    json_t *o = cy_api_body_object_required(b, req);
    if (!o) return;
    cy_webhook w;
    int rc = cy_registry_webhook_get(b->registry, id, &w);
    refusal rf = {0};
    char why[160] = "";
    if (!rc) rc = apply(b, o, &w, false, &rf);
    json_decref(o);
    if (!rc) rc = cy_registry_webhook_update(b->registry, &w, why, sizeof(why));
    if (rc == CY_ENOENT)
        not_found(b, req, id);
    else if (rc)
        refused(b, req, rc, &rf, why);
    else {
        cy_info(NULL, "api: webhook %s changed", w.id);
        reply_json(b, req, 200, webhook_json(b, &w), NULL);
    }
    cy_webhook_fini(&w);
}

static void webhook_delete(cy_api *b, cy_http_req *req, const char *id)
{
    int rc = cy_registry_webhook_delete(b->registry, id);
    if (rc == CY_ENOENT) {
        not_found(b, req, id);
        return;
    }
    if (rc) {
        refused(b, req, rc, NULL, NULL);
        return;
    }
    cy_info(NULL, "api: webhook %s deleted", id);
    cy_api_answered(b, req);
    cy_http_reply(req, 204, NULL, NULL, 0, NULL);
}

static void webhook_rotate(cy_api *b, cy_http_req *req, const char *id)
{
    char secret[CY_WEBHOOK_SECRET_LEN];
    int64_t now = cy_wall_ms();
    int rc = cy_registry_webhook_rotate(b->registry, id, secret);
    if (rc == CY_ENOENT) {
        not_found(b, req, id);
        return;
    }
    if (rc) {
        refused(b, req, rc, NULL, NULL);
        return;
    }
    /* The deadline as stored; should the webhook be gone already, the one
     * rotate set (to the millisecond or so). */
    int64_t until = now + CY_WEBHOOK_OLD_SECRET_MS;
    cy_webhook w;
    if (cy_registry_webhook_get(b->registry, id, &w) == 0) until = w.old_secret_until;
    cy_webhook_fini(&w);
    cy_info(NULL, "api: webhook %s has a new secret", id);
    reply_json(
        b, req, 200,
        json_pack("{s:s, s:o}", "secret", secret, "old_secret_valid_until", cy_device_time(until)),
        NULL);
    memset(secret, 0, sizeof(secret));
}

void cy_api_webhooks(cy_api *b, cy_http_req *req, api_op op, char *const *seg)
{
    if (op == API_OP_WEBHOOKS_LIST) {
        webhooks_list(b, req);
    } else if (op == API_OP_WEBHOOK_CREATE) {
        webhook_create(b, req);
    } else if (op == API_OP_WEBHOOK_GET) {
        webhook_get(b, req, seg[1]);
    } else if (op == API_OP_WEBHOOK_PATCH) {
        webhook_patch(b, req, seg[1]);
    } else if (op == API_OP_WEBHOOK_DELETE) {
        webhook_delete(b, req, seg[1]);
    } else if (op == API_OP_WEBHOOK_SECRET) {
        webhook_rotate(b, req, seg[1]);
    } else {
        /* The dead letters of a webhook that exists. */
        cy_webhook w;
        memset(&w, 0, sizeof(w));
        int rc = cy_registry_webhook_get(b->registry, seg[1], &w);
        cy_webhook_fini(&w);
        if (rc == CY_ENOENT)
            not_found(b, req, seg[1]);
        else if (rc)
            registry_error(b, req, rc);
        else
            cy_api_dead_letters(b, req, op, seg);
    }
}
