/* fuzz_render: libFuzzer target for webhook templates (src/webhooks/render.c):
 * compiling a template of each kind and rendering it, and rendering text
 * templates as a URL and as a header value, against an event.
 *
 * Input: byte 0 picks the body kind (bits 0-1) and a shared event (bit 2:
 * no device id); bytes 1-8 are published_at (big endian, wall ms); then
 * the template text, the event name and the device id, each ended by a NUL
 * byte, and the event data (the rest, any bytes). Missing parts are empty.
 *
 * Whatever the bytes, nothing may crash, and:
 *   - compiling answers 0, CY_EINVAL with a reason, or CY_ERANGE past
 *     CY_WH_TEMPLATE_MAX; a TEXT template compiles exactly when
 *     cy_wh_text_check takes it;
 *   - a compiled template renders (0) or is too long (CY_ERANGE); on an
 *     error the caller's buffer keeps what it held; rendering twice gives
 *     the same bytes;
 *   - a JSON or default body is JSON (render.h promises it, whatever the
 *     event's bytes; checked with jansson, which takes every JSON text but
 *     one with \u0000 in a key); the default one carries the event's fields: its
 *     name and data as they are when they are UTF-8, the data in base64
 *     (with "encoding") when not;
 *   - a form body holds only unreserved characters, %XX, '+', '&' and '=';
 *   - a header value holds no CR, LF or NUL; a URL or header template
 *     without a tag renders as itself (CR and LF as spaces in a header);
 *     text templates fail with CY_EINVAL exactly when cy_wh_text_check
 *     refuses them.
 * Any broken rule is abort(), which libFuzzer reports as a crash.
 */
#include "core/cy_buf.h"
#include "core/cy_err.h"
#include "webhooks/render.h"

#include <jansson.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(c)                                                                                   \
    do {                                                                                           \
        if (!(c)) abort();                                                                         \
    } while (0)

#define PREFIX "prefix:"
#define PREFIX_LEN 7

/* The next NUL-terminated part of the input, copied (caller frees). */
static char *part(const uint8_t **p, const uint8_t *end)
{
    const uint8_t *z = memchr(*p, 0, (size_t)(end - *p));
    size_t n = z ? (size_t)(z - *p) : (size_t)(end - *p);
    char *s = malloc(n + 1);
    CHECK(s);
    if (n) memcpy(s, *p, n);
    s[n] = '\0';
    *p = z ? z + 1 : end;
    return s;
}

/* jansson's notion of UTF-8, which render.c follows. */
static bool utf8(const void *p, size_t n)
{
    if (n == 0) return true;
    json_t *t = json_stringn(p, n); /* NULL when not UTF-8 */
    json_decref(t);
    return t != NULL;
}

static bool str_is(json_t *j, const void *p, size_t n)
{
    return json_is_string(j) && json_string_length(j) == n &&
           (n == 0 || memcmp(json_string_value(j), p, n) == 0);
}

/* Render t into a buffer holding PREFIX; returns rc; the rendered bytes
 * (after the prefix) in *out, *len (caller frees). */
static int render_body(const cy_wh_template *t, const cy_wh_event *e, char **out, size_t *len)
{
    cy_buf b;
    cy_buf_init(&b);
    CHECK(cy_buf_append(&b, PREFIX, PREFIX_LEN) == 0);
    const char *ctype = NULL;
    int rc = cy_wh_render(t, e, &b, &ctype);
    CHECK(rc == 0 || rc == CY_ERANGE);
    CHECK(cy_buf_size(&b) >= PREFIX_LEN && memcmp(cy_buf_head(&b), PREFIX, PREFIX_LEN) == 0);
    if (rc) {
        CHECK(cy_buf_size(&b) == PREFIX_LEN);
        cy_buf_fini(&b);
        return rc;
    }
    CHECK(ctype != NULL);
    *len = cy_buf_size(&b) - PREFIX_LEN;
    CHECK(*len <= CY_WH_BODY_MAX);
    *out = malloc(*len + 1);
    CHECK(*out);
    memcpy(*out, cy_buf_head(&b) + PREFIX_LEN, *len);
    (*out)[*len] = '\0';
    cy_buf_fini(&b);
    return 0;
}

static void check_default(const char *body, size_t len, const cy_wh_event *e)
{
    json_error_t err;
    json_t *o = json_loadb(body, len, JSON_ALLOW_NUL, &err);
    CHECK(json_is_object(o));
    CHECK(str_is(json_object_get(o, "event_id"), e->id, strlen(e->id)));
    if (utf8(e->name, e->name_len))
        CHECK(str_is(json_object_get(o, "name"), e->name, e->name_len));
    else
        CHECK(json_is_string(json_object_get(o, "name")));
    json_t *d = json_object_get(o, "data");
    if (utf8(e->data, e->data_len)) {
        CHECK(str_is(d, e->data, e->data_len));
        CHECK(json_object_get(o, "encoding") == NULL);
    } else {
        size_t n = (e->data_len + 2) / 3 * 4;
        char *b64 = malloc(n + 1);
        CHECK(b64);
        CHECK((size_t)EVP_EncodeBlock((unsigned char *)b64, e->data, (int)e->data_len) == n);
        CHECK(str_is(d, b64, n));
        free(b64);
        CHECK(str_is(json_object_get(o, "encoding"), "base64", 6));
    }
    json_t *dev = json_object_get(o, "device_id");
    if (e->device_id && utf8(e->device_id, strlen(e->device_id)))
        CHECK(str_is(dev, e->device_id, strlen(e->device_id)));
    else if (!e->device_id)
        CHECK(json_is_null(dev));
    CHECK(json_is_string(json_object_get(o, "published_at")));
    json_decref(o);
}

static bool form_byte(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           strchr("-._*%+&=", c) != NULL;
}

static void check_body(cy_wh_body_kind kind, const char *text, const cy_wh_event *e)
{
    cy_wh_template *t = NULL;
    char why[160];
    memset(why, 0x55, sizeof(why));
    int rc = cy_wh_template_new(kind, text, &t, why, sizeof(why));
    CHECK(rc == 0 || rc == CY_EINVAL || rc == CY_ERANGE);
    CHECK(memchr(why, '\0', sizeof(why)) != NULL);
    if (rc) {
        CHECK(t == NULL && why[0] != '\0');
        CHECK(rc != CY_ERANGE || strlen(text) > CY_WH_TEMPLATE_MAX);
        CHECK(kind != CY_WH_BODY_DEFAULT);
    }
    if (kind == CY_WH_BODY_TEXT && strlen(text) <= CY_WH_TEMPLATE_MAX)
        CHECK((rc == 0) == (cy_wh_text_check(text, NULL, 0) == 0));
    if (rc) return;

    char *b1 = NULL, *b2 = NULL;
    size_t l1 = 0, l2 = 0;
    rc = render_body(t, e, &b1, &l1);
    int rc2 = render_body(t, e, &b2, &l2);
    CHECK(rc == rc2);
    if (rc == 0) {
        CHECK(l1 == l2 && memcmp(b1, b2, l1) == 0);
        if (kind == CY_WH_BODY_DEFAULT) check_default(b1, l1, e);
        if (kind == CY_WH_BODY_JSON) {
            json_error_t err;
            json_t *j = json_loadb(b1, l1, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
            /* JSON lets a key hold \u0000 (a key rendered from data that
             * does); jansson alone refuses it. */
            CHECK(j != NULL || json_error_code(&err) == json_error_null_byte_in_key);
            json_decref(j);
        }
        if (kind == CY_WH_BODY_FORM)
            for (size_t i = 0; i < l1; i++)
                CHECK(form_byte((uint8_t)b1[i]));
    }
    free(b1);
    free(b2);
    cy_wh_template_free(t);
}

static void check_text(const char *text, const cy_wh_event *e)
{
    int ok = cy_wh_text_check(text, NULL, 0);
    CHECK(ok == 0 || ok == CY_EINVAL);
    bool plain = strstr(text, "{{") == NULL;
    for (int url = 0; url < 2; url++) {
        cy_buf b;
        cy_buf_init(&b);
        CHECK(cy_buf_append(&b, PREFIX, PREFIX_LEN) == 0);
        int rc = cy_wh_render_text(text, e, url, &b);
        CHECK(rc == 0 || rc == CY_EINVAL || rc == CY_ERANGE);
        CHECK((rc == CY_EINVAL) == (ok == CY_EINVAL));
        CHECK(memcmp(cy_buf_head(&b), PREFIX, PREFIX_LEN) == 0);
        const uint8_t *o = cy_buf_head(&b) + PREFIX_LEN;
        size_t n = cy_buf_size(&b) - PREFIX_LEN;
        if (rc) CHECK(n == 0);
        if (rc == 0 && !url)
            for (size_t i = 0; i < n; i++)
                CHECK(o[i] != '\r' && o[i] != '\n' && o[i] != 0);
        if (rc == 0 && plain) {
            CHECK(n == strlen(text));
            for (size_t i = 0; i < n; i++) {
                uint8_t want = (uint8_t)text[i];
                if (!url && (want == '\r' || want == '\n')) want = ' ';
                CHECK(o[i] == want);
            }
        }
        cy_buf_fini(&b);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 9) return 0;
    cy_wh_body_kind kind = (cy_wh_body_kind)(data[0] & 3);
    bool shared = (data[0] & 4) != 0;
    uint64_t when = 0;
    for (int i = 1; i <= 8; i++)
        when = when << 8 | data[i];
    const uint8_t *p = data + 9, *end = data + size;
    char *text = part(&p, end);
    char *name = part(&p, end);
    char *dev = part(&p, end);
    cy_wh_event e = {.id = "3-1764855332123456",
                     .name = name,
                     .name_len = strlen(name),
                     .data = p,
                     .data_len = (size_t)(end - p),
                     .device_id = shared ? NULL : dev,
                     .published_at = (int64_t)when};
    check_body(kind, text, &e);
    check_text(text, &e);
    free(text);
    free(name);
    free(dev);
    return 0;
}
