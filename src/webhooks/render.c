/* render: webhook bodies, URLs and header values from templates; see
 * render.h for the variables and the kinds.
 *
 * One scanner reads every template text, whether it stands alone (TEXT, a
 * URL, a header) or is a string inside a JSON or FORM template: literal
 * text up to "{{", then a tag, "{{ name }}" or "{{{ name }}}" (Mustache's
 * "{{& name}}" too). A lone "}}" is literal text, so a TEXT body may hold
 * JSON. Sections, partials, comments and delimiter changes ({{#x}}, {{^x}},
 * {{/x}}, {{>x}}, {{!x}}, {{=x=}}) are refused rather than silently
 * rendered as nothing. Templates are checked once, when made (JSON and
 * FORM ones by rendering them for an empty event, which reaches every
 * string); rendering scans again (a template is short; keeping segments
 * would not pay). A template over CY_WH_TEMPLATE_MAX is CY_ERANGE, with a
 * reason in why as for CY_EINVAL.
 *
 * Values go through one of a few escapes: none (RAW: into a JSON or FORM
 * string first, which is then escaped whole), percent-encoding (URL
 * values), or line breaks to spaces (header values: CR, LF and NUL, in the
 * template's own text as well as in values, since a header can never carry
 * them). Each escape counts its output first, so the body limit is checked
 * before anything grows, and a template that names {{data}} a thousand
 * times fails with CY_ERANGE instead of eating memory.
 *
 * JSON is written here rather than by jansson's dumper: strings are copied
 * in order as rendered (so two keys that render alike both appear: the
 * template asked for it), invalid UTF-8 in a name becomes U+FFFD so the
 * body is always valid JSON, and a real number is written with the fewest
 * digits that read back the same (21.3, not 21.300000000000001).
 *
 * data.a.b walks objects by key and arrays by index (data.list.0). The data
 * is parsed at most once per render, and only when a template asks for a
 * field; base64 of data that is not UTF-8 is likewise made once. jansson
 * cannot tell running out of memory from bad JSON, so data it fails to
 * parse for want of memory reads as data that is not JSON (its fields
 * render empty); likewise a template it fails to parse so is CY_EINVAL
 * unless jansson says it was memory.
 */
#include "webhooks/render.h"

#include "core/cy_alloc.h"
#include "core/cy_err.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

struct cy_wh_template {
    cy_wh_body_kind kind;
    char *text;   /* TEXT: the template; else NULL */
    json_t *tree; /* JSON and FORM: the parsed template; else NULL */
};

enum esc { ESC_RAW, ESC_URL, ESC_HEADER, ESC_FORM, ESC_JSON };

/* Appends to b, refusing to let the part past base exceed CY_WH_BODY_MAX. */
typedef struct sink {
    cy_buf *b;
    size_t base; /* bytes of b that were there before */
} sink;

typedef struct rctx {
    const cy_wh_event *e;
    int data_utf8; /* -1 not yet known, 0 no, 1 yes */
    cy_buf b64;    /* the data as base64 once made (when not UTF-8) */
    bool b64_made;
    json_t *fields; /* the data as a JSON object, or NULL */
    bool parsed;    /* fields was tried */
    cy_buf tmp;     /* one JSON key or value, or FORM key or value, rendered raw */
    cy_buf scratch; /* a JSON value as text, to be escaped */
    char when[96];  /* published_at, once formatted */
    char *why;      /* where a malformed template is explained (may be NULL) */
    size_t why_len;
} rctx;

typedef struct value {
    const char *p; /* text (when j is NULL or a string) */
    size_t n;
    json_t *j; /* a field of the data: borrowed from rctx.fields */
} value;

static void set_why(char *why, size_t why_len, const char *fmt, ...)
{
    if (!why || !why_len) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, why_len, fmt, ap);
    va_end(ap);
}

/* ---- output ---------------------------------------------------------------- */

static int put(sink *s, const void *p, size_t n)
{
    if (cy_buf_size(s->b) - s->base + n > CY_WH_BODY_MAX) return CY_ERANGE;
    return cy_buf_append(s->b, p, n);
}

static int put_str(sink *s, const char *str)
{
    return put(s, str, strlen(str));
}

/* Length of the valid UTF-8 sequence at p (1 to 4), 0 when invalid. The
 * same rules as jansson: no overlong forms, surrogates or code points past
 * U+10FFFF. */
static size_t utf8_seq(const uint8_t *p, size_t n)
{
    uint8_t c = p[0];
    if (c < 0x80) return 1;
    size_t len = c >= 0xc2 && c <= 0xdf   ? 2
                 : c >= 0xe0 && c <= 0xef ? 3
                 : c >= 0xf0 && c <= 0xf4 ? 4
                                          : 0;
    if (len == 0 || n < len) return 0;
    for (size_t i = 1; i < len; i++)
        if ((p[i] & 0xc0) != 0x80) return 0;
    if (c == 0xe0 && p[1] < 0xa0) return 0; /* overlong */
    if (c == 0xed && p[1] > 0x9f) return 0; /* surrogate */
    if (c == 0xf0 && p[1] < 0x90) return 0; /* overlong */
    if (c == 0xf4 && p[1] > 0x8f) return 0; /* past U+10FFFF */
    return len;
}

static bool utf8_valid(const uint8_t *p, size_t n)
{
    for (size_t i = 0, k; i < n; i += k)
        if (!(k = utf8_seq(p + i, n - i))) return false;
    return true;
}

/* Unreserved in a URL (RFC 3986), or kept by form encoding (WHATWG). */
static bool safe(uint8_t c, enum esc e)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == (e == ESC_URL ? '~' : '*');
}

/* The byte (or UTF-8 sequence, for JSON) at p escaped as e says: its
 * length, written to o unless o is NULL; *adv gets the bytes of p used. */
static size_t esc1(enum esc e, const uint8_t *p, size_t n, size_t *adv, uint8_t *o)
{
    static const char hex[] = "0123456789ABCDEF", special[] = "\"\\\n\r\t\b\f",
                      letter[] = "\"\\nrtbf";
    uint8_t c = p[0];
    *adv = 1;
    if (e == ESC_RAW || (e == ESC_JSON && c >= 0x20 && c < 0x80 && c != '"' && c != '\\')) {
        if (o) *o = c; /* the common case, first */
        return 1;
    }
    char b[8] = {0};
    const char *x = NULL, *q;
    size_t len = 1;
    if ((e == ESC_URL || e == ESC_FORM) && !safe(c, e)) {
        if (e == ESC_FORM && c == ' ') {
            c = '+';
        } else {
            b[0] = '%', b[1] = hex[c >> 4], b[2] = hex[c & 15];
            x = b, len = 3;
        }
    } else if (e == ESC_HEADER && (c == '\r' || c == '\n' || c == '\0')) {
        c = ' ';
    } else if (e == ESC_JSON && c && (q = strchr(special, c))) {
        b[0] = '\\', b[1] = letter[q - special];
        x = b, len = 2;
    } else if (e == ESC_JSON && c < 0x20) {
        snprintf(b, sizeof(b), "\\u%04x", c);
        x = b, len = 6;
    } else if (e == ESC_JSON && c >= 0x80) {
        size_t k = utf8_seq(p, n);
        x = k ? (const char *)p : "\\ufffd", len = k ? k : 6;
        *adv = k ? k : 1;
    }
    if (o && x) memcpy(o, x, len);
    if (o && !x) *o = c;
    return len;
}

/* Append p[0..n) escaped as e says (ESC_JSON: with the quotes). */
static int put_esc(sink *s, const void *vp, size_t n, enum esc e)
{
    const uint8_t *p = vp;
    if (e == ESC_RAW) return put(s, p, n);
    size_t need = e == ESC_JSON ? 2 : 0, adv;
    for (size_t i = 0; i < n; i += adv)
        need += esc1(e, p + i, n - i, &adv, NULL);
    if (cy_buf_size(s->b) - s->base + need > CY_WH_BODY_MAX) return CY_ERANGE;
    if (need == 0) return 0; /* an empty buffer may have no memory to point into */
    int rc = cy_buf_reserve(s->b, need);
    if (rc) return rc;
    uint8_t *o = s->b->data + s->b->len;
    if (e == ESC_JSON) *o++ = '"';
    for (size_t i = 0; i < n; i += adv)
        o += esc1(e, p + i, n - i, &adv, o);
    if (e == ESC_JSON) *o = '"';
    s->b->len += need;
    return 0;
}

/* A real with the fewest significant digits that read back the same, and a
 * point or exponent so that it stays a real. */
static int put_real(sink *s, double d)
{
    char b[40];
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(b, sizeof(b), "%.*g", prec, d);
        if (strtod(b, NULL) == d) break;
    }
    if (!strpbrk(b, ".eE")) strcat(b, ".0");
    return put_str(s, b);
}

static int put_text(struct rctx *c, sink *s, const char *str, size_t n, enum esc e);
static int put_string(struct rctx *c, sink *s, const char *str, size_t n);

/* A JSON value, compact: c NULL writes j as it is; otherwise j is a
 * template whose strings (keys too) are rendered. */
static int put_json(struct rctx *c, sink *s, json_t *j)
{
    const char *k;
    size_t n;
    json_t *v;
    char b[32];
    int rc = 0;
    bool first = true;
    switch (json_typeof(j)) {
    case JSON_OBJECT:
        rc = put(s, "{", 1);
        json_object_keylen_foreach(j, k, n, v)
        {
            if (rc == 0 && !first) rc = put(s, ",", 1);
            if (rc == 0) rc = put_text(c, s, k, n, ESC_JSON);
            if (rc == 0) rc = put(s, ":", 1);
            if (rc == 0) rc = put_json(c, s, v);
            first = false;
        }
        return rc ? rc : put(s, "}", 1);
    case JSON_ARRAY:
        rc = put(s, "[", 1);
        json_array_foreach(j, n, v)
        {
            if (rc == 0 && n) rc = put(s, ",", 1);
            if (rc == 0) rc = put_json(c, s, v);
        }
        return rc ? rc : put(s, "]", 1);
    case JSON_STRING:
        return put_string(c, s, json_string_value(j), json_string_length(j));
    case JSON_INTEGER:
        snprintf(b, sizeof(b), "%" JSON_INTEGER_FORMAT, json_integer_value(j));
        return put_str(s, b);
    case JSON_REAL:
        return put_real(s, json_real_value(j));
    default:
        return put_str(s, json_is_true(j) ? "true" : json_is_false(j) ? "false" : "null");
    }
}

/* ---- values ---------------------------------------------------------------- */

static bool is(const char *name, size_t n, const char *lit)
{
    return strlen(lit) == n && memcmp(name, lit, n) == 0;
}

static bool data_utf8(rctx *c)
{
    if (c->data_utf8 < 0) c->data_utf8 = utf8_valid(c->e->data, c->e->data_len);
    return c->data_utf8 == 1;
}

/* The data as text: itself when UTF-8, else its base64 (made once). */
static int data_text(rctx *c, value *v)
{
    const cy_wh_event *e = c->e;
    if (data_utf8(c)) {
        v->p = (const char *)e->data;
        v->n = e->data_len;
        return 0;
    }
    if (!c->b64_made) {
        size_t n = (e->data_len + 2) / 3 * 4;
        if (n > CY_WH_BODY_MAX) return CY_ERANGE; /* could never fit */
        int rc = cy_buf_reserve(&c->b64, n + 1);
        if (rc) return rc;
        c->b64.len = (size_t)EVP_EncodeBlock(c->b64.data, e->data, (int)e->data_len);
        c->b64_made = true;
    }
    v->p = (const char *)cy_buf_head(&c->b64);
    v->n = cy_buf_size(&c->b64);
    return 0;
}

static void format_when(rctx *c)
{
    if (c->when[0]) return;
    int64_t ms = c->e->published_at, sec = ms / 1000, rem = ms % 1000;
    if (rem < 0) {
        rem += 1000;
        sec--;
    }
    time_t t = (time_t)sec;
    struct tm tm;
    if (!gmtime_r(&t, &tm)) return;
    snprintf(c->when, sizeof(c->when), "%04lld-%02d-%02dT%02d:%02d:%02d.%03dZ",
             (long long)tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
             tm.tm_sec, (int)rem);
}

/* Field path (after "data.") of the data, or NULL. */
static json_t *field(rctx *c, const char *path, size_t n)
{
    if (!c->parsed) {
        c->parsed = true;
        if (c->e->data_len && data_utf8(c)) {
            json_t *j = json_loadb((const char *)c->e->data, c->e->data_len, JSON_ALLOW_NUL, NULL);
            if (json_is_object(j))
                c->fields = j;
            else
                json_decref(j);
        }
    }
    json_t *j = c->fields;
    while (j && n) {
        const char *dot = memchr(path, '.', n);
        size_t k = dot ? (size_t)(dot - path) : n;
        if (json_is_object(j)) {
            j = json_object_getn(j, path, k);
        } else if (json_is_array(j) && k > 0 && k <= 9) {
            size_t idx = 0, i = 0;
            for (; i < k && path[i] >= '0' && path[i] <= '9'; i++)
                idx = idx * 10 + (size_t)(path[i] - '0');
            j = i == k ? json_array_get(j, idx) : NULL;
        } else {
            j = NULL;
        }
        path += k;
        n -= k;
        if (dot) {
            path++, n--;
            if (n == 0) j = NULL; /* "data.a." */
        }
    }
    return j;
}

/* The value of variable name; unknown names are empty text. */
static int resolve(rctx *c, const char *name, size_t n, value *v)
{
    const cy_wh_event *e = c->e;
    memset(v, 0, sizeof(*v));
    v->p = "";
    if (is(name, n, "event_id")) {
        v->p = e->id ? e->id : "";
        v->n = strlen(v->p);
    } else if (is(name, n, "name") || is(name, n, "PARTICLE_EVENT_NAME")) {
        v->p = e->name ? e->name : "";
        v->n = e->name ? e->name_len : 0;
    } else if (is(name, n, "data") || is(name, n, "PARTICLE_EVENT_VALUE")) {
        return data_text(c, v);
    } else if (is(name, n, "device_id") || is(name, n, "PARTICLE_DEVICE_ID")) {
        v->p = e->device_id ? e->device_id : "";
        v->n = strlen(v->p);
    } else if (is(name, n, "published_at") || is(name, n, "PARTICLE_PUBLISHED_AT")) {
        format_when(c);
        v->p = c->when;
        v->n = strlen(c->when);
    } else if (n > 5 && memcmp(name, "data.", 5) == 0) {
        v->j = field(c, name + 5, n - 5);
        if (json_is_string(v->j)) {
            v->p = json_string_value(v->j);
            v->n = json_string_length(v->j);
        }
    }
    return 0;
}

/* Append a value escaped as e says; a JSON field that is not a string goes
 * as its JSON text. */
static int put_value(rctx *c, sink *s, const value *v, enum esc e)
{
    if (!v->j || json_is_string(v->j)) return put_esc(s, v->p, v->n, e);
    if (e == ESC_RAW) return put_json(NULL, s, v->j);
    cy_buf_reset(&c->scratch);
    sink t = {&c->scratch, 0};
    int rc = put_json(NULL, &t, v->j);
    return rc ? rc : put_esc(s, cy_buf_head(&c->scratch), cy_buf_size(&c->scratch), e);
}

/* ---- the scanner ----------------------------------------------------------- */

typedef struct tag {
    const char *name; /* trimmed */
    size_t n;
    size_t end; /* offset just past the tag */
} tag;

static bool space(char ch)
{
    return ch == ' ' || ch == '\t';
}

/* The tag at s[i] (which starts "{{"), or CY_EINVAL with why. */
static int tag_at(const char *s, size_t n, size_t i, tag *t, char *why, size_t why_len)
{
    bool triple = i + 2 < n && s[i + 2] == '{';
    const char *open = triple ? "{{{" : "{{", *close = triple ? "}}}" : "}}";
    size_t cn = triple ? 3 : 2, a = i + cn, b = a;
    while (b < n && s[b] != '}' && s[b] != '{' && (unsigned char)s[b] >= 0x20)
        b++;
    if (b == n) {
        set_why(why, why_len, "%s at offset %zu is not closed", open, i);
        return CY_EINVAL;
    }
    if (s[b] != '}') {
        set_why(why, why_len, "%s at offset %zu: a tag cannot hold '{' or control characters", open,
                i);
        return CY_EINVAL;
    }
    if (b + cn > n || memcmp(s + b, close, cn) != 0) {
        bool short_close = triple && b + 2 <= n && memcmp(s + b, "}}", 2) == 0;
        set_why(why, why_len, "%s at offset %zu is %s", open, i,
                short_close ? "closed with }} instead of }}}" : "not closed (a lone '}' in it)");
        return CY_EINVAL;
    }
    t->end = b + cn;
    while (a < b && space(s[a]))
        a++;
    while (b > a && space(s[b - 1]))
        b--;
    if (!triple && a < b && s[a] == '&') /* Mustache's unescaped form */
        for (a++; a < b && space(s[a]);)
            a++;
    if (a == b) {
        set_why(why, why_len, "empty tag at offset %zu", i);
        return CY_EINVAL;
    }
    if (strchr("#^/>=!", s[a])) {
        set_why(why, why_len,
                "tag at offset %zu: sections, partials and comments ({{%c...}}) are not supported",
                i, s[a]);
        return CY_EINVAL;
    }
    t->name = s + a;
    t->n = b - a;
    return 0;
}

/* Check (c NULL) or render s[0..n) into out, values escaped as e says and
 * the template's own text as is (CR and LF to spaces for ESC_HEADER). */
static int walk(rctx *c, const char *s, size_t n, sink *out, enum esc e, char *why, size_t why_len)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && !(s[j] == '{' && j + 1 < n && s[j + 1] == '{'))
            j++;
        int rc = 0;
        if (c && j > i) rc = put_esc(out, s + i, j - i, e == ESC_HEADER ? ESC_HEADER : ESC_RAW);
        if (rc || j == n) return rc;
        tag t;
        rc = tag_at(s, n, j, &t, why, why_len);
        if (rc) return rc;
        if (c) {
            value v;
            rc = resolve(c, t.name, t.n, &v);
            if (rc == 0) rc = put_value(c, out, &v, e);
            if (rc) return rc;
        }
        i = t.end;
    }
    return 0;
}

/* Text escaped as e says: as it is when c is NULL, else rendered first
 * (raw, into c->tmp) as a template. */
static int put_text(rctx *c, sink *s, const char *str, size_t n, enum esc e)
{
    if (!c) return put_esc(s, str, n, e);
    cy_buf_reset(&c->tmp);
    sink t = {&c->tmp, 0};
    int rc = walk(c, str, n, &t, ESC_RAW, c->why, c->why_len);
    return rc ? rc : put_esc(s, cy_buf_head(&c->tmp), cy_buf_size(&c->tmp), e);
}

/* A JSON string of a template (c not NULL) or of a value. */
static int put_string(rctx *c, sink *s, const char *str, size_t n)
{
    tag t;
    if (c && n > 4 && str[0] == '{' && str[1] == '{' && tag_at(str, n, 0, &t, NULL, 0) == 0 &&
        t.end == n) {
        value v; /* exactly one variable: a field keeps its type */
        int rc = resolve(c, t.name, t.n, &v);
        if (rc == 0 && v.j && !json_is_string(v.j)) return put_json(NULL, s, v.j);
        return rc ? rc : put_esc(s, v.p, v.n, ESC_JSON);
    }
    return put_text(c, s, str, n, ESC_JSON);
}

/* ---- JSON and FORM templates ----------------------------------------------- */

static int render_form(rctx *c, sink *s, json_t *j)
{
    const char *k;
    size_t klen;
    json_t *v;
    int rc = 0;
    bool first = true;
    json_object_keylen_foreach(j, k, klen, v)
    {
        if (rc == 0 && !first) rc = put(s, "&", 1);
        if (rc == 0) rc = put_text(c, s, k, klen, ESC_FORM);
        if (rc == 0) rc = put(s, "=", 1);
        if (rc == 0) rc = put_text(c, s, json_string_value(v), json_string_length(v), ESC_FORM);
        first = false;
    }
    return rc;
}

static int render_default(rctx *c, sink *s)
{
    const cy_wh_event *e = c->e;
    value data;
    int rc = data_text(c, &data);
    format_when(c);
    if (rc == 0) rc = put_str(s, "{\"event_id\":");
    if (rc == 0) rc = put_esc(s, e->id ? e->id : "", e->id ? strlen(e->id) : 0, ESC_JSON);
    if (rc == 0) rc = put_str(s, ",\"name\":");
    if (rc == 0) rc = put_esc(s, e->name, e->name ? e->name_len : 0, ESC_JSON);
    if (rc == 0) rc = put_str(s, ",\"data\":");
    if (rc == 0) rc = put_esc(s, data.p, data.n, ESC_JSON);
    if (rc == 0) rc = put_str(s, ",\"device_id\":");
    if (rc == 0 && e->device_id) rc = put_esc(s, e->device_id, strlen(e->device_id), ESC_JSON);
    if (rc == 0 && !e->device_id) rc = put_str(s, "null");
    if (rc == 0) rc = put_str(s, ",\"published_at\":");
    if (rc == 0) rc = put_esc(s, c->when, strlen(c->when), ESC_JSON);
    if (rc == 0 && !data_utf8(c)) rc = put_str(s, ",\"encoding\":\"base64\"");
    return rc ? rc : put(s, "}", 1);
}

/* ---- the interface --------------------------------------------------------- */

static const cy_wh_event no_event = {.id = ""};

/* Render t (or, t NULL, the text template text with values escaped as e
 * says) for ev, appending to out; out is left as it was on an error. */
static int render(const cy_wh_template *t, const char *text, enum esc e, const cy_wh_event *ev,
                  cy_buf *out, char *why, size_t why_len)
{
    if (!ev || (!ev->data && ev->data_len) || (!ev->name && ev->name_len) || !out) return CY_EINVAL;
    rctx c = {.e = ev, .data_utf8 = -1, .why = why, .why_len = why_len};
    sink s = {out, cy_buf_size(out)};
    int rc;
    if (!t)
        rc = walk(&c, text, strlen(text), &s, e, why, why_len);
    else if (t->kind == CY_WH_BODY_JSON)
        rc = put_json(&c, &s, t->tree);
    else if (t->kind == CY_WH_BODY_FORM)
        rc = render_form(&c, &s, t->tree);
    else if (t->kind == CY_WH_BODY_TEXT)
        rc = walk(&c, t->text, strlen(t->text), &s, ESC_RAW, why, why_len);
    else
        rc = render_default(&c, &s);
    cy_buf_fini(&c.b64);
    cy_buf_fini(&c.tmp);
    cy_buf_fini(&c.scratch);
    json_decref(c.fields);
    if (rc) out->len = out->off + s.base; /* nothing half-written */
    return rc;
}

int cy_wh_template_new(cy_wh_body_kind kind, const char *text, cy_wh_template **out, char *why,
                       size_t why_len)
{
    if (why && why_len) why[0] = '\0';
    if (!out) return CY_EINVAL;
    *out = NULL;
    if ((unsigned)kind > CY_WH_BODY_TEXT) {
        set_why(why, why_len, "unknown kind of body");
        return CY_EINVAL;
    }
    if (kind != CY_WH_BODY_DEFAULT && !text) {
        set_why(why, why_len, "no template");
        return CY_EINVAL;
    }
    if (kind != CY_WH_BODY_DEFAULT && strlen(text) > CY_WH_TEMPLATE_MAX) {
        set_why(why, why_len, "template longer than %d bytes", CY_WH_TEMPLATE_MAX);
        return CY_ERANGE;
    }
    cy_wh_template *t = cy_calloc(1, sizeof(*t));
    if (!t) return CY_ENOMEM;
    t->kind = kind;
    int rc = 0;
    if (kind == CY_WH_BODY_TEXT) {
        rc = walk(NULL, text, strlen(text), NULL, ESC_RAW, why, why_len);
        if (rc == 0 && !(t->text = cy_strdup(text))) rc = CY_ENOMEM;
    } else if (kind != CY_WH_BODY_DEFAULT) {
        json_error_t err;
        memset(&err, 0, sizeof(err)); /* jansson leaves it unset when it cannot start */
        size_t flags = JSON_REJECT_DUPLICATES | (kind == CY_WH_BODY_JSON ? JSON_DECODE_ANY : 0);
        const char *k;
        json_t *v;
        if (!(t->tree = json_loads(text, flags, &err))) {
            enum json_error_code code = json_error_code(&err);
            rc = code == json_error_out_of_memory || code == json_error_unknown ? CY_ENOMEM
                                                                                : CY_EINVAL;
            set_why(why, why_len, "bad JSON: %s (line %d, column %d)",
                    rc == CY_ENOMEM ? "out of memory" : err.text, err.line, err.column);
        } else if (kind == CY_WH_BODY_FORM && !json_is_object(t->tree)) {
            set_why(why, why_len, "a form is a JSON object");
            rc = CY_EINVAL;
        }
        json_object_foreach(kind == CY_WH_BODY_FORM ? t->tree : NULL, k, v)
        {
            if (rc == 0 && !json_is_string(v)) {
                set_why(why, why_len, "form field \"%.64s\" is not a string", k);
                rc = CY_EINVAL;
            }
        }
        if (rc == 0) { /* every string (keys too) must be a good template: render one */
            cy_buf b;
            cy_buf_init(&b);
            rc = render(t, NULL, ESC_RAW, &no_event, &b, why, why_len);
            cy_buf_fini(&b);
        }
    }
    if (rc) {
        cy_wh_template_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void cy_wh_template_free(cy_wh_template *t)
{
    if (!t) return;
    cy_free(t->text);
    json_decref(t->tree);
    cy_free(t);
}

int cy_wh_render(const cy_wh_template *t, const cy_wh_event *e, cy_buf *out,
                 const char **content_type)
{
    static const char *types[] = {"application/json", "application/json",
                                  "application/x-www-form-urlencoded", "text/plain"};
    if (!t) return CY_EINVAL;
    int rc = render(t, NULL, ESC_RAW, e, out, NULL, 0);
    if (rc == 0 && content_type) *content_type = types[t->kind];
    return rc;
}

int cy_wh_render_text(const char *tmpl, const cy_wh_event *e, bool url_encode, cy_buf *out)
{
    if (!tmpl) return CY_EINVAL;
    return render(NULL, tmpl, url_encode ? ESC_URL : ESC_HEADER, e, out, NULL, 0);
}

int cy_wh_text_check(const char *tmpl, char *why, size_t why_len)
{
    if (why && why_len) why[0] = '\0';
    if (!tmpl) {
        set_why(why, why_len, "no template");
        return CY_EINVAL;
    }
    return walk(NULL, tmpl, strlen(tmpl), NULL, ESC_RAW, why, why_len);
}
