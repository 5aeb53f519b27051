/* api_particle: Particle's paths for function calls and variable reads, so
 * that a script written for Particle's cloud works against cyan by changing
 * its base URL and token (docs/api.md, "Particle compatibility").
 *
 *   POST /v1/devices/{id or name}/{function}   arg=on  or  {"arg": "on"}
 *     (or args=, params=: the names Particle's own clients send)
 *     -> {"id", "name", "connected": true, "return_value"}
 *   GET  /v1/devices/{id or name}/{variable}[?format=raw]
 *     -> {"cmd": "VarReturn", "name", "result", "coreInfo": {...}}
 *
 * Nothing here talks to devices: a request becomes the same device request
 * as cyan's own routes (cy_api_device_op in api.c: the same owner shard,
 * deadline, limits and errors), and only its 200 answer is reshaped, from
 * the owner's {"id", "name", "return_value" | "value", "round_trip_ms"}.
 * Errors stay cyan's (status and {"error", "message"}).
 *
 * The idea needed to read the routing: a name right after the device is
 * Particle's only when it is none of cyan's own sub-paths of a device (the
 * route table's literals: psk, events, functions, variables;
 * cy_api_device_subpath). cyan's route wins; a GET or POST that no route
 * takes there is answered by cy_api_particle_shadowed, which says where
 * the function or variable of that name is reached instead.
 *
 * The token comes as for every route, in Authorization: Bearer. Particle
 * also takes access_token=... in a form body; cyan does not, because it
 * refuses a request without a token before reading any of its body (so
 * that strangers trickling bodies cannot hold its connections): such a
 * request gets a 401 that says so (cy_api_particle_form_post).
 *
 * Thread: the shard's loop.
 */
#include "api/api_int.h"

#include "core/cy_alloc.h"
#include "core/cy_clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define FORM_TYPE "application/x-www-form-urlencoded"

/* Whether the Content-Type value ct is type, parameters aside. */
static bool media_is(const char *ct, const char *type)
{
    while (*ct == ' ' || *ct == '\t')
        ct++;
    size_t n = strlen(type);
    return strncasecmp(ct, type, n) == 0 &&
           (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ' || ct[n] == '\t');
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode one form component p[0..n) into out (room for n bytes): '+' is a
 * space, %XX a byte. Returns the decoded length, or -1 for a bad escape. */
static long form_decode(const char *p, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            if (i + 2 >= n) return -1;
            int hi = hex_value(p[i + 1]), lo = hex_value(p[i + 2]);
            if (hi < 0 || lo < 0) return -1;
            c = (char)(hi << 4 | lo);
            i += 2;
        }
        out[o++] = c;
    }
    return (long)o;
}

/* One name=value pair of a form: the next one from *p (before end), its
 * raw name and value. false once there are none. */
typedef struct form_pair {
    const char *name, *value;
    size_t name_len, value_len;
} form_pair;

static bool form_next(const char **p, const char *end, form_pair *f)
{
    while (*p < end) {
        const char *s = *p;
        const char *amp = memchr(s, '&', (size_t)(end - s));
        if (!amp) amp = end;
        *p = amp < end ? amp + 1 : end;
        if (amp == s) continue; /* "&&" */
        const char *eq = memchr(s, '=', (size_t)(amp - s));
        f->name = s;
        f->name_len = (size_t)((eq ? eq : amp) - s);
        f->value = eq ? eq + 1 : amp;
        f->value_len = (size_t)(amp - f->value);
        return true;
    }
    return false;
}

/* The form body[0..len) as a JSON object of its fields (each a string), or
 * NULL after answering 400 bad_request (a bad escape, a NUL, text that is
 * not UTF-8, a field given twice) or 500. */
static json_t *form_object(cy_api *b, cy_http_req *req, const uint8_t *body, size_t len)
{
    json_t *o = json_object();
    char *buf = cy_malloc(len + 2); /* a name, its NUL and its value: at most len + 1 */
    const char *why = NULL;
    char twice[CY_DEVICE_NAME_MAX + 1] = "";
    if (!o || !buf) {
        json_decref(o);
        cy_free(buf);
        cy_api_reply_error(b, req, 500, "internal", NULL, "out of memory");
        return NULL;
    }
    const char *p = (const char *)body, *end = p + len;
    form_pair f;
    while (!why && form_next(&p, end, &f)) {
        long nl = form_decode(f.name, f.name_len, buf);
        long vl = nl < 0 ? -1 : form_decode(f.value, f.value_len, buf + nl + 1);
        if (nl < 0 || vl < 0) {
            why = "a bad %-escape";
            break;
        }
        buf[nl] = '\0';
        if (memchr(buf, '\0', (size_t)nl) || memchr(buf + nl + 1, '\0', (size_t)vl)) {
            why = "a NUL byte (%00)";
            break;
        }
        if (json_object_get(o, buf)) {
            snprintf(twice, sizeof(twice), "%s", buf);
            why = "a field given twice";
            break;
        }
        json_t *v = json_stringn(buf + nl + 1, (size_t)vl);
        if (!v || json_object_set_new(o, buf, v)) { /* jansson takes only UTF-8 */
            why = "text that is not UTF-8";
            break;
        }
    }
    cy_free(buf);
    if (!why) return o;
    json_decref(o);
    cy_api_reply_error(b, req, 400, "bad_request", NULL, "the form body holds %s%s%s", why,
                       twice[0] ? ": " : "", twice);
    return NULL;
}

enum { BODY_JSON, BODY_FORM, BODY_OTHER };

/* What the body of a call is: JSON when its Content-Type says so, or when
 * it starts with '{' and says nothing or the form type; else a form (or,
 * another type, refused). An empty body is JSON's {} (no arg). */
static int body_kind(cy_http_req *req, const uint8_t *body, size_t len)
{
    if (!body || !len) return BODY_JSON;
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n'))
        i++;
    bool brace = i < len && body[i] == '{';
    const char *ct = cy_http_header(req, "Content-Type");
    if (ct) {
        if (media_is(ct, "application/json")) return BODY_JSON;
        /* `curl -d '{"arg":...}'` sends the form type: a form never starts
         * with '{', so such a body is the JSON it looks like (as on cyan's
         * own path), not a field named '{"arg":...}' and no arg. */
        if (media_is(ct, FORM_TYPE)) return brace ? BODY_JSON : BODY_FORM;
        return BODY_OTHER;
    }
    return brace ? BODY_JSON : BODY_FORM;
}

/* The names Particle takes for a call's argument: "arg" (its API
 * reference), "args" (what particle-api-js, and so particle-cli, send) and
 * "params" (the Spark-era examples). A body with one of them is a call
 * with that argument; with two, 400 (which one was meant?); with none, an
 * empty argument. */
static const char *const arg_names[] = {"arg", "args", "params"};

/* The argument's field of o, renamed "arg" in o if it came as an alias;
 * false after answering 400 if two of the names are there. */
static bool arg_field(cy_api *b, cy_http_req *req, json_t *o, bool form)
{
    const char *found = NULL;
    for (size_t i = 0; i < sizeof(arg_names) / sizeof(arg_names[0]); i++) {
        if (!json_object_get(o, arg_names[i])) continue;
        if (found) {
            cy_api_reply_error(b, req, 400, form ? "bad_request" : "bad_json", NULL,
                               "the argument is given twice, as %s and as %s: give one (arg, or "
                               "Particle's args or params)",
                               found, arg_names[i]);
            return false;
        }
        found = arg_names[i];
    }
    if (found && strcmp(found, "arg") != 0) {
        json_t *v = json_object_get(o, found);
        if (!json_is_string(v) && !json_is_null(v)) { /* said under its own name */
            cy_api_reply_error(b, req, 400, "bad_json", NULL, "\"%s\" must be a string", found);
            return false;
        }
        json_incref(v);
        json_object_del(o, found);
        if (json_object_set_new(o, "arg", v)) {
            cy_api_reply_error(b, req, 500, "internal", NULL, "out of memory");
            return false;
        }
    }
    return true;
}

/* POST /v1/devices/{id}/{function}: arg (or args, params) and timeout from
 * a form or JSON body; without a timeout there, ?timeout= (as a variable
 * read takes it). */
static void particle_call(cy_api *b, cy_http_req *req, const cy_device *d, const char *name)
{
    size_t len;
    const uint8_t *body = cy_http_body(req, &len);
    int kind = body_kind(req, body, len);
    if (kind == BODY_OTHER) {
        cy_api_reply_error(b, req, 415, "unsupported_media_type", NULL,
                           "the body is a form (" FORM_TYPE ", arg=...) or JSON ({\"arg\": ...})");
        return;
    }
    json_t *o = kind == BODY_FORM ? form_object(b, req, body, len) : cy_api_body_object(b, req);
    if (!o) return;
    if (!arg_field(b, req, o, kind == BODY_FORM)) {
        json_decref(o);
        return;
    }
    const char *arg = NULL;
    size_t arg_len = 0;
    int64_t ms;
    json_t *tv = json_object_get(o, "timeout");
    if (kind == BODY_FORM) {
        json_t *av = json_object_get(o, "arg");
        if (av) {
            arg = json_string_value(av);
            arg_len = json_string_length(av);
        }
        ms = cy_api_timeout_ms(NULL, tv ? json_string_value(tv) : cy_http_query(req, "timeout"));
    } else {
        if (!cy_api_call_fields(b, req, o, &arg, &arg_len, &ms)) {
            json_decref(o);
            return;
        }
        if (!tv) ms = cy_api_timeout_ms(NULL, cy_http_query(req, "timeout"));
    }
    cy_api_device_op(b, req, d, CY_DEVICE_OP_CALL, name, (const uint8_t *)arg, arg_len, ms,
                     API_SHAPE_PARTICLE);
    json_decref(o); /* after: arg points into it */
}

void cy_api_particle(cy_api *b, cy_http_req *req, const cy_device *d, api_op op, const char *name)
{
    uint8_t dop = op == API_OP_PARTICLE_CALL ? CY_DEVICE_OP_CALL : CY_DEVICE_OP_GET;
    if (!cy_api_op_name_ok(b, req, dop, name)) return;
    if (dop == CY_DEVICE_OP_CALL) {
        particle_call(b, req, d, name);
        return;
    }
    const char *format = cy_http_query(req, "format");
    if (format && strcmp(format, "raw") != 0) {
        cy_api_reply_error(b, req, 400, "bad_request", NULL,
                           "format is raw (the value alone, as text) or not given");
        return;
    }
    cy_api_device_op(b, req, d, dop, name, NULL, 0,
                     cy_api_timeout_ms(NULL, cy_http_query(req, "timeout")),
                     format ? API_SHAPE_PARTICLE_RAW : API_SHAPE_PARTICLE);
}

/* Numbers are written with 15 significant digits: as many as a double
 * keeps, so the owner's text of a value comes back as it was (jansson's
 * default, 17, turns 0.1 into 0.10000000000000001). */
#define PARTICLE_JSON_FLAGS (JSON_COMPACT | JSON_ENCODE_ANY | JSON_REAL_PRECISION(15))

static void reply_text(cy_api *b, cy_http_req *req, const char *type, const char *text, size_t len)
{
    cy_api_answered(b, req);
    cy_http_reply(req, 200, type, text, len, NULL);
}

void cy_api_particle_reply(cy_api *b, const api_wait *w, const char *body, size_t len)
{
    cy_http_req *req = w->req;
    bool call = w->op == CY_DEVICE_OP_CALL;
    /* (A reply may hold a NUL: the owner's JSON escapes it, and so do we.) */
    json_t *in = json_loadb(body, len, JSON_ALLOW_NUL, NULL);
    json_t *v = json_object_get(in, call ? "return_value" : "value");
    json_t *name = json_object_get(in, "name");
    if (!v || !json_is_string(name)) {
        /* Not the owner's usual answer: shown as it came rather than lost. */
        json_decref(in);
        reply_text(b, req, NULL, body, len);
        return;
    }
    if (w->shape == API_SHAPE_PARTICLE_RAW) {
        char *text = json_is_string(v) ? NULL : json_dumps(v, PARTICLE_JSON_FLAGS);
        if (json_is_string(v))
            reply_text(b, req, "text/plain; charset=utf-8", json_string_value(v),
                       json_string_length(v));
        else if (text)
            reply_text(b, req, "text/plain; charset=utf-8", text, strlen(text));
        else
            cy_api_reply_error(b, req, 500, "internal", NULL, "out of memory");
        free(text);
        json_decref(in);
        return;
    }
    json_t *o;
    if (call)
        o = json_pack("{s:s, s:s, s:b, s:O}", "id", w->id, "name", w->name, "connected", 1,
                      "return_value", v);
    else /* the device answered just now: it was heard then */
        o = json_pack("{s:s, s:O, s:O, s:{s:s, s:s, s:b, s:o}}", "cmd", "VarReturn", "name", name,
                      "result", v, "coreInfo", "deviceID", w->id, "name", w->name, "connected", 1,
                      "last_heard", cy_api_time_or_null(cy_wall_ms()));
    json_decref(in);
    char *text = o ? json_dumps(o, PARTICLE_JSON_FLAGS) : NULL;
    json_decref(o);
    if (text)
        reply_text(b, req, NULL, text, strlen(text));
    else
        cy_api_reply_error(b, req, 500, "internal", NULL, "out of memory");
    free(text);
}

bool cy_api_particle_shadowed(cy_api *b, cy_http_req *req, char *const *seg, unsigned nseg,
                              const char *allow)
{
    const char *m = cy_http_method(req);
    bool post = strcmp(m, "POST") == 0;
    if (nseg != 3 || strcmp(seg[0], "devices") != 0 || (!post && strcmp(m, "GET") != 0) ||
        !cy_api_device_subpath(seg[2]))
        return false;
    const char *sub = seg[2];
    char msg[200];
    snprintf(msg, sizeof(msg),
             "%s is one of cyan's own paths under a device, not a %s: a %s named %s is %s at %s "
             "/v1/devices/{id}/%s/%s",
             sub, post ? "function" : "variable", post ? "function" : "variable", sub,
             post ? "called" : "read", m, post ? "functions" : "variables", sub);
    if (allow && allow[0]) {
        const char *h[] = {"Allow", allow, NULL};
        cy_api_reply_error(b, req, 405, "method_not_allowed", h, "%s (allowed here: %s)", msg,
                           allow);
    } else {
        cy_api_reply_error(b, req, 404, "not_found", NULL, "%s", msg);
    }
    return true;
}

bool cy_api_particle_form_post(cy_http_req *req)
{
    const char *ct = cy_http_header(req, "Content-Type");
    return strcmp(cy_http_method(req), "POST") == 0 && !cy_http_header(req, "Authorization") &&
           ct && media_is(ct, FORM_TYPE);
}
