/* Unit tests for webhooks/render: the default body, JSON, FORM and TEXT
 * templates, URL and header rendering, malformed templates, the limits
 * (CY_ERANGE, leaving the caller's buffer as it was) and allocation
 * failure. Expected bodies are written out in full: a test compares bytes,
 * and the JSON ones are parsed back with jansson to prove they are JSON. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include "core/cy_alloc.h"
#include "core/cy_buf.h"
#include "core/cy_err.h"
#include "webhooks/render.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEV "0123456789abcdef01234567"

/* 2025-12-04T13:35:32.123Z */
#define WHEN 1764855332123LL

static cy_wh_event ev(const char *name, const void *data, size_t len, const char *dev)
{
    return (cy_wh_event){.id = "2-1764855332123456",
                         .name = name,
                         .name_len = name ? strlen(name) : 0,
                         .data = data,
                         .data_len = len,
                         .device_id = dev,
                         .published_at = WHEN};
}

static cy_wh_event evs(const char *name, const char *data)
{
    return ev(name, data, strlen(data), DEV);
}

/* Render as kind, returning a NUL-terminated copy (caller frees) or NULL
 * with *rc set. */
static char *render(cy_wh_body_kind kind, const char *tmpl, const cy_wh_event *e, int *rc,
                    const char **ctype)
{
    cy_wh_template *t = NULL;
    char why[200];
    *rc = cy_wh_template_new(kind, tmpl, &t, why, sizeof(why));
    if (*rc) fail_msg("template refused: %s", why);
    cy_buf b;
    cy_buf_init(&b);
    *rc = cy_wh_render(t, e, &b, ctype);
    char *s = NULL;
    if (*rc == 0) {
        s = malloc(cy_buf_size(&b) + 1);
        if (cy_buf_size(&b)) memcpy(s, cy_buf_head(&b), cy_buf_size(&b));
        s[cy_buf_size(&b)] = '\0';
    }
    cy_buf_fini(&b);
    cy_wh_template_free(t);
    return s;
}

static void expect(cy_wh_body_kind kind, const char *tmpl, const cy_wh_event *e, const char *want)
{
    int rc;
    char *got = render(kind, tmpl, e, &rc, NULL);
    if (rc) fail_msg("render failed: %d", rc);
    if (strcmp(got, want) != 0) fail_msg("template %s\n got: %s\nwant: %s", tmpl, got, want);
    if (kind == CY_WH_BODY_JSON || kind == CY_WH_BODY_DEFAULT) {
        json_error_t err;
        json_t *j = json_loads(got, JSON_DECODE_ANY | JSON_ALLOW_NUL, &err);
        if (!j) fail_msg("not JSON: %s: %s", got, err.text);
        json_decref(j);
    }
    free(got);
}

static char *text(const char *tmpl, const cy_wh_event *e, bool url, int *rc)
{
    cy_buf b;
    cy_buf_init(&b);
    *rc = cy_wh_render_text(tmpl, e, url, &b);
    char *s = NULL;
    if (*rc == 0) {
        s = malloc(cy_buf_size(&b) + 1);
        if (cy_buf_size(&b)) memcpy(s, cy_buf_head(&b), cy_buf_size(&b));
        s[cy_buf_size(&b)] = '\0';
    }
    cy_buf_fini(&b);
    return s;
}

static void expect_text(const char *tmpl, const cy_wh_event *e, bool url, const char *want)
{
    int rc;
    char *got = text(tmpl, e, url, &rc);
    if (rc) fail_msg("render_text failed: %d", rc);
    if (strcmp(got, want) != 0) fail_msg("template %s\n got: %s\nwant: %s", tmpl, got, want);
    free(got);
}

static void test_default_body(void **state)
{
    (void)state;
    cy_wh_event e = evs("temp", "21.5");
    int rc;
    const char *ctype = NULL;
    char *got = render(CY_WH_BODY_DEFAULT, NULL, &e, &rc, &ctype);
    assert_string_equal(got, "{\"event_id\":\"2-1764855332123456\",\"name\":\"temp\",\"data\":"
                             "\"21.5\",\"device_id\":\"" DEV "\",\"published_at\":"
                             "\"2025-12-04T13:35:32.123Z\"}");
    assert_string_equal(ctype, "application/json");
    free(got);
    /* Shared event: device_id null; data needing escapes; empty data. */
    e = ev("a/b \"q\"", "line\n\t\"x\"\\\x01", 11, NULL);
    expect(CY_WH_BODY_DEFAULT, "ignored", &e,
           "{\"event_id\":\"2-1764855332123456\",\"name\":\"a/b \\\"q\\\"\",\"data\":"
           "\"line\\n\\t\\\"x\\\"\\\\\\u0001\",\"device_id\":null,\"published_at\":"
           "\"2025-12-04T13:35:32.123Z\"}");
    e = ev("", NULL, 0, DEV);
    e.published_at = 0;
    expect(CY_WH_BODY_DEFAULT, NULL, &e,
           "{\"event_id\":\"2-1764855332123456\",\"name\":\"\",\"data\":\"\",\"device_id\":\"" DEV
           "\",\"published_at\":\"1970-01-01T00:00:00.000Z\"}");
    e.published_at = -1; /* before the epoch: floor, not truncation */
    expect(CY_WH_BODY_DEFAULT, NULL, &e,
           "{\"event_id\":\"2-1764855332123456\",\"name\":\"\",\"data\":\"\",\"device_id\":\"" DEV
           "\",\"published_at\":\"1969-12-31T23:59:59.999Z\"}");
}

static void test_default_binary(void **state)
{
    (void)state;
    /* Not UTF-8: base64 and "encoding". */
    cy_wh_event e = ev("bin", "\xff\x00\x01\xfe", 4, DEV);
    expect(CY_WH_BODY_DEFAULT, NULL, &e,
           "{\"event_id\":\"2-1764855332123456\",\"name\":\"bin\",\"data\":\"/wAB/g==\","
           "\"device_id\":\"" DEV "\",\"published_at\":\"2025-12-04T13:35:32.123Z\","
           "\"encoding\":\"base64\"}");
    /* UTF-8 with a NUL is text; the NUL is escaped. */
    e = ev("t", "a\0\xc3\xa9", 4, DEV);
    expect(CY_WH_BODY_DEFAULT, NULL, &e,
           "{\"event_id\":\"2-1764855332123456\",\"name\":\"t\",\"data\":\"a\\u0000\xc3\xa9\","
           "\"device_id\":\"" DEV "\",\"published_at\":\"2025-12-04T13:35:32.123Z\"}");
    /* Overlong, surrogate, past U+10FFFF, truncated: all base64. */
    static const char *bad[] = {"\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xe2\x82", "\x80"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        e = ev("x", bad[i], strlen(bad[i]), DEV);
        int rc;
        char *got = render(CY_WH_BODY_DEFAULT, NULL, &e, &rc, NULL);
        assert_non_null(strstr(got, "\"encoding\":\"base64\""));
        free(got);
    }
    /* A name that is not UTF-8 still gives JSON (U+FFFD). */
    e = ev("a\xffz", "1", 1, NULL);
    expect(CY_WH_BODY_DEFAULT, NULL, &e,
           "{\"event_id\":\"2-1764855332123456\",\"name\":\"a\\ufffdz\",\"data\":\"1\","
           "\"device_id\":null,\"published_at\":\"2025-12-04T13:35:32.123Z\"}");
}

static void test_text(void **state)
{
    (void)state;
    cy_wh_event e = evs("temp", "{\"t\":21.5,\"o\":{\"k\":[1,\"x\"]}}");
    const char *ctype = NULL;
    int rc;
    char *got = render(CY_WH_BODY_TEXT, "{{name}}: {{ data.t }} {{{device_id}}}", &e, &rc, &ctype);
    assert_string_equal(got, "temp: 21.5 " DEV);
    assert_string_equal(ctype, "text/plain");
    free(got);
    expect(CY_WH_BODY_TEXT, "{{data}}", &e, "{\"t\":21.5,\"o\":{\"k\":[1,\"x\"]}}");
    expect(CY_WH_BODY_TEXT, "[{{event_id}}|{{published_at}}]", &e,
           "[2-1764855332123456|2025-12-04T13:35:32.123Z]");
    expect(CY_WH_BODY_TEXT,
           "{{PARTICLE_EVENT_NAME}} {{PARTICLE_EVENT_VALUE}} {{PARTICLE_DEVICE_ID}} "
           "{{PARTICLE_PUBLISHED_AT}}",
           &e, "temp {\"t\":21.5,\"o\":{\"k\":[1,\"x\"]}} " DEV " 2025-12-04T13:35:32.123Z");
    /* Unknown names and missing fields: nothing. Mustache's {{& x}}. */
    expect(CY_WH_BODY_TEXT, "<{{nope}}{{data.zz}}{{data.t.u}}{{Name}}{{& name}}>", &e, "<temp>");
    /* Fields: objects as JSON text, array indexes. */
    expect(CY_WH_BODY_TEXT, "{{data.o}} {{data.o.k.0}} {{data.o.k.1}} {{data.o.k.2}}", &e,
           "{\"k\":[1,\"x\"]} 1 x ");
    expect(CY_WH_BODY_TEXT, "({{data.o.}})({{data.}})({{data.o.k.x}})({{data.o.k.01}})", &e,
           "()()()(x)");
    /* Literal braces: single ones and a lone }} are text (a TEXT body may be JSON). */
    expect(CY_WH_BODY_TEXT, "{\"a\":{\"b\":\"{{name}}\"}}", &e, "{\"a\":{\"b\":\"temp\"}}");
    expect(CY_WH_BODY_TEXT, "}} { } {{name}}}", &e, "}} { } temp}");
    expect(CY_WH_BODY_TEXT, "", &e, "");
    expect(CY_WH_BODY_TEXT, "no tags", &e, "no tags");
    /* Shared event: device_id empty. Not-JSON data: fields empty. */
    cy_wh_event s = ev("n", "plain", 5, NULL);
    expect(CY_WH_BODY_TEXT, "[{{device_id}}][{{data.x}}][{{data}}]", &s, "[][][plain]");
    cy_wh_event arr = evs("n", "[1,2]"); /* JSON, but not an object */
    expect(CY_WH_BODY_TEXT, "[{{data.0}}]", &arr, "[]");
    /* Not UTF-8: {{data}} is base64, and there are no fields. */
    cy_wh_event bin = ev("n", "\xff{}", 3, DEV);
    expect(CY_WH_BODY_TEXT, "{{data}}|{{data.a}}", &bin, "/3t9|");
}

static void test_json(void **state)
{
    (void)state;
    cy_wh_event e = evs("temp", "{\"temp\":21.3,\"n\":-7,\"ok\":true,\"nil\":null,"
                                "\"obj\":{\"a\":[1,2]},\"list\":[\"x\",false],"
                                "\"msg\":\"he said \\\"hi\\\"\\n\",\"z\":\"a\\u0000b\"}");
    int rc;
    const char *ctype = NULL;
    char *got = render(CY_WH_BODY_JSON, "{\"name\": \"{{name}}\"}", &e, &rc, &ctype);
    assert_string_equal(got, "{\"name\":\"temp\"}");
    assert_string_equal(ctype, "application/json");
    free(got);
    /* One variable alone: a field keeps its type; in a longer string, text. */
    expect(CY_WH_BODY_JSON,
           "{\"t\": \"{{data.temp}}\", \"s\": \"t={{data.temp}}\", \"n\": \"{{ data.n }}\", "
           "\"ok\": \"{{{data.ok}}}\", \"nil\": \"{{data.nil}}\", \"o\": \"{{data.obj}}\", "
           "\"os\": \"o={{data.obj}}\", \"l1\": \"{{data.list.1}}\", \"miss\": \"{{data.nope}}\"}",
           &e,
           "{\"t\":21.3,\"s\":\"t=21.3\",\"n\":-7,\"ok\":true,\"nil\":null,\"o\":{\"a\":[1,2]},"
           "\"os\":\"o={\\\"a\\\":[1,2]}\",\"l1\":false,\"miss\":\"\"}");
    /* Strings are JSON-escaped, keys are templates too, literals stay. */
    expect(CY_WH_BODY_JSON,
           "{\"{{name}}_key\": [1, 2.5, 3.0, 0.1, 1e300, -0.0, true, false, null, "
           "\"{{PARTICLE_EVENT_NAME}}\"], \"q\": \"{{data.msg}}\", \"z\": \"{{data.z}}\", "
           "\"d\": \"{{data}}\", \"nested\": {\"deep\": [{\"x\": \"{{device_id}}\"}]}, "
           "\"lit\": \"tab\\there \\u00e9 \\\"q\\\"\"}",
           &e,
           "{\"temp_key\":[1,2.5,3.0,0.1,1e+300,-0.0,true,false,null,\"temp\"],"
           "\"q\":\"he said \\\"hi\\\"\\n\",\"z\":\"a\\u0000b\","
           "\"d\":\"{\\\"temp\\\":21.3,\\\"n\\\":-7,\\\"ok\\\":true,\\\"nil\\\":null,"
           "\\\"obj\\\":{\\\"a\\\":[1,2]},\\\"list\\\":[\\\"x\\\",false],"
           "\\\"msg\\\":\\\"he said \\\\\\\"hi\\\\\\\"\\\\n\\\",\\\"z\\\":\\\"a\\\\u0000b\\\"}\","
           "\"nested\":{\"deep\":[{\"x\":\"" DEV
           "\"}]},\"lit\":\"tab\\there \xc3\xa9 \\\"q\\\"\"}");
    /* Any JSON document: a bare string, a number, an array. */
    expect(CY_WH_BODY_JSON, "\"{{name}}\"", &e, "\"temp\"");
    expect(CY_WH_BODY_JSON, "\"{{data.obj}}\"", &e, "{\"a\":[1,2]}");
    expect(CY_WH_BODY_JSON, "42", &e, "42");
    expect(CY_WH_BODY_JSON, "[]", &e, "[]");
    expect(CY_WH_BODY_JSON, "{}", &e, "{}");
    /* Not UTF-8 data: {{data}} is its base64 text, fields are empty. */
    cy_wh_event bin = ev("b", "\x01\x02\xff", 3, NULL);
    expect(CY_WH_BODY_JSON,
           "{\"d\": \"{{data}}\", \"f\": \"{{data.x}}\", \"dev\": \"{{device_id}}\"}", &bin,
           "{\"d\":\"AQL/\",\"f\":\"\",\"dev\":\"\"}");
}

static void test_form(void **state)
{
    (void)state;
    cy_wh_event e = evs("temp", "x&y=z \xc3\xbc+~*");
    int rc;
    const char *ctype = NULL;
    char *got =
        render(CY_WH_BODY_FORM, "{\"a b\": \"{{data}}\", \"n\": \"{{name}}\"}", &e, &rc, &ctype);
    assert_string_equal(got, "a+b=x%26y%3Dz+%C3%BC%2B%7E*&n=temp");
    assert_string_equal(ctype, "application/x-www-form-urlencoded");
    free(got);
    expect(CY_WH_BODY_FORM, "{}", &e, "");
    expect(CY_WH_BODY_FORM, "{\"{{name}}\": \"v={{device_id}}\", \"e\": \"\"}", &e,
           "temp=v%3D" DEV "&e=");
    cy_wh_event j = evs("t", "{\"o\":{\"a\":1}}");
    expect(CY_WH_BODY_FORM, "{\"o\": \"{{data.o}}\"}", &j, "o=%7B%22a%22%3A1%7D");
}

static void test_render_text(void **state)
{
    (void)state;
    cy_wh_event e = evs("te mp/x", "a/b c?&=#%\xc3\xa9");
    /* url_encode: values percent-encoded, the template's text as it is. */
    expect_text("https://h.example/x/{{device_id}}/{{data}}?n={{name}}&k=a b", &e, true,
                "https://h.example/x/" DEV "/a%2Fb%20c%3F%26%3D%23%25%C3%A9?n=te%20mp%2Fx&k=a b");
    expect_text("https://h/{{data.nope}}", &e, true, "https://h/");
    cy_wh_event j = evs("n", "{\"id\":\"x y\",\"n\":5,\"o\":[1]}");
    expect_text("/{{data.id}}/{{data.n}}/{{data.o}}", &j, true, "/x%20y/5/%5B1%5D");
    /* Headers: CR, LF and NUL become spaces, in values and in the template. */
    cy_wh_event inj = ev("n", "ok\r\nX-Injected: 1\0z", 19, DEV);
    expect_text("v={{data}}", &inj, false, "v=ok  X-Injected: 1 z");
    expect_text("a\r\nb {{name}}", &inj, false, "a  b n");
    cy_wh_event jn = evs("n", "{\"h\":\"a\\r\\nb\",\"o\":{\"k\":\"\\n\"}}");
    expect_text("{{data.h}}|{{data.o}}", &jn, false, "a  b|{\"k\":\"\\n\"}");
    expect_text("Bearer {{{data.h}}}", &jn, false, "Bearer a  b");
    /* Appends after what is there; malformed text: CY_EINVAL, nothing added. */
    cy_buf b;
    cy_buf_init(&b);
    assert_int_equal(cy_buf_append(&b, "x", 1), 0);
    assert_int_equal(cy_wh_render_text("{{name}}", &e, false, &b), 0);
    assert_int_equal(cy_buf_size(&b), 1 + 7);
    assert_int_equal(cy_wh_render_text("{{name", &e, false, &b), CY_EINVAL);
    assert_int_equal(cy_buf_size(&b), 8);
    assert_int_equal(cy_wh_render_text(NULL, &e, false, &b), CY_EINVAL);
    assert_int_equal(cy_wh_render_text("x", NULL, false, &b), CY_EINVAL);
    assert_int_equal(cy_wh_render_text("x", &e, false, NULL), CY_EINVAL);
    cy_buf_fini(&b);
}

static void bad_text(const char *tmpl, const char *reason)
{
    char why[200] = "";
    if (cy_wh_text_check(tmpl, why, sizeof(why)) != CY_EINVAL) fail_msg("accepted %s", tmpl);
    if (!strstr(why, reason)) fail_msg("%s: why \"%s\" lacks \"%s\"", tmpl, why, reason);
    cy_wh_template *t = (cy_wh_template *)1;
    why[0] = '\0';
    assert_int_equal(cy_wh_template_new(CY_WH_BODY_TEXT, tmpl, &t, why, sizeof(why)), CY_EINVAL);
    assert_null(t);
    assert_non_null(strstr(why, reason));
}

static void bad_json(cy_wh_body_kind kind, const char *tmpl, const char *reason)
{
    char why[200] = "";
    cy_wh_template *t = (cy_wh_template *)1;
    if (cy_wh_template_new(kind, tmpl, &t, why, sizeof(why)) != CY_EINVAL)
        fail_msg("accepted %s", tmpl);
    assert_null(t);
    if (!strstr(why, reason)) fail_msg("%s: why \"%s\" lacks \"%s\"", tmpl, why, reason);
}

static void test_malformed(void **state)
{
    (void)state;
    bad_text("{{name", "not closed");
    bad_text("x {{name}", "not closed");
    bad_text("{{", "not closed");
    bad_text("{{{name}}", "instead of }}}");
    bad_text("{{{name}", "not closed");
    bad_text("{{}}", "empty");
    bad_text("{{  }}", "empty");
    bad_text("{{{}}}", "empty");
    bad_text("{{&}}", "empty");
    bad_text("{{na{me}}", "cannot hold");
    bad_text("{{{{name}}}}", "cannot hold");
    bad_text("{{na\nme}}", "cannot hold");
    bad_text("{{a}b}}", "lone");
    bad_text("{{#items}}x{{/items}}", "not supported");
    bad_text("{{^items}}x{{/items}}", "not supported");
    bad_text("{{! a comment }}", "not supported");
    bad_text("{{> partial}}", "not supported");
    bad_text("{{=<% %>=}}", "not supported");
    bad_text("ok {{name}} then {{bad", "offset 17");
    char why[64] = "x";
    assert_int_equal(cy_wh_text_check("fine {{name}} }}", why, sizeof(why)), 0);
    assert_string_equal(why, "");
    assert_int_equal(cy_wh_text_check(NULL, NULL, 0), CY_EINVAL);
    assert_int_equal(cy_wh_text_check("{{", NULL, 0), CY_EINVAL);

    bad_json(CY_WH_BODY_JSON, "{\"a\": ", "bad JSON");
    bad_json(CY_WH_BODY_JSON, "", "bad JSON");
    bad_json(CY_WH_BODY_JSON, "{\"a\": 1} x", "bad JSON");
    bad_json(CY_WH_BODY_JSON, "{\"a\": 1, \"a\": 2}", "bad JSON");
    bad_json(CY_WH_BODY_JSON, "{\"a\": \"{{name\"}", "not closed");
    bad_json(CY_WH_BODY_JSON, "{\"{{}}\": 1}", "empty");
    bad_json(CY_WH_BODY_JSON, "[1, {\"x\": [\"{{#s}}\"]}]", "not supported");
    bad_json(CY_WH_BODY_FORM, "[\"a\"]", "object");
    bad_json(CY_WH_BODY_FORM, "\"a\"", "bad JSON");
    bad_json(CY_WH_BODY_FORM, "{\"a\": 1}", "\"a\" is not a string");
    bad_json(CY_WH_BODY_FORM, "{\"a\": \"x\", \"b\": {\"c\": \"d\"}}", "\"b\" is not a string");
    bad_json(CY_WH_BODY_FORM, "{\"a\": \"{{x\"}", "not closed");
    bad_json(CY_WH_BODY_FORM, "{\"{{x\": \"y\"}", "not closed");
    bad_json(CY_WH_BODY_JSON, NULL, "no template");
    bad_json(CY_WH_BODY_TEXT, NULL, "no template");
    bad_json((cy_wh_body_kind)7, "x", "unknown");
    bad_json((cy_wh_body_kind)-1, "x", "unknown");
    /* why may be NULL. */
    cy_wh_template *t;
    assert_int_equal(cy_wh_template_new(CY_WH_BODY_JSON, "{", &t, NULL, 0), CY_EINVAL);
    assert_int_equal(cy_wh_template_new(CY_WH_BODY_JSON, "{}", NULL, NULL, 0), CY_EINVAL);
}

static void test_limits(void **state)
{
    (void)state;
    /* A template of CY_WH_TEMPLATE_MAX bytes is fine; one more is not. */
    char *big = malloc(CY_WH_TEMPLATE_MAX + 2);
    memset(big, 'a', CY_WH_TEMPLATE_MAX);
    big[CY_WH_TEMPLATE_MAX] = '\0';
    cy_wh_template *t = NULL;
    char why[128];
    assert_int_equal(cy_wh_template_new(CY_WH_BODY_TEXT, big, &t, why, sizeof(why)), 0);
    cy_wh_template_free(t);
    big[CY_WH_TEMPLATE_MAX] = 'a';
    big[CY_WH_TEMPLATE_MAX + 1] = '\0';
    t = (cy_wh_template *)1;
    assert_int_equal(cy_wh_template_new(CY_WH_BODY_TEXT, big, &t, why, sizeof(why)), CY_ERANGE);
    assert_null(t);
    assert_non_null(strstr(why, "longer"));
    assert_int_equal(cy_wh_template_new(CY_WH_BODY_JSON, big, &t, why, sizeof(why)), CY_ERANGE);
    free(big);

    /* Output: exactly CY_WH_BODY_MAX is fine; a byte more is CY_ERANGE, and
     * the caller's buffer keeps what it had. */
    size_t max = CY_WH_BODY_MAX;
    char *data = malloc(max + 1);
    memset(data, 'd', max + 1);
    cy_wh_event e = ev("n", data, max, DEV);
    cy_buf b;
    cy_buf_init(&b);
    assert_int_equal(cy_buf_append(&b, "keep", 4), 0);
    assert_int_equal(cy_wh_template_new(CY_WH_BODY_TEXT, "{{data}}", &t, NULL, 0), 0);
    assert_int_equal(cy_wh_render(t, &e, &b, NULL), 0); /* the limit counts what is added */
    assert_int_equal(cy_buf_size(&b), 4 + max);
    cy_buf_reset(&b);
    assert_int_equal(cy_buf_append(&b, "keep", 4), 0);
    e.data_len = max + 1;
    assert_int_equal(cy_wh_render(t, &e, &b, NULL), CY_ERANGE);
    assert_int_equal(cy_buf_size(&b), 4);
    assert_memory_equal(cy_buf_head(&b), "keep", 4);
    cy_wh_template_free(t);
    /* Many references to a large value fail early, not after growing. */
    e = ev("n", data, 64 * 1024, DEV);
    char many[400] = "";
    for (int i = 0; i < 20; i++)
        strcat(many, "{{data}}");
    assert_int_equal(cy_wh_template_new(CY_WH_BODY_TEXT, many, &t, NULL, 0), 0);
    assert_int_equal(cy_wh_render(t, &e, &b, NULL), CY_ERANGE);
    assert_int_equal(cy_buf_size(&b), 4);
    cy_wh_template_free(t);
    char many_json[400] = "[";
    for (int i = 0; i < 20; i++)
        strcat(many_json, i ? ",\"{{data}}\"" : "\"{{data}}\"");
    strcat(many_json, "]");
    assert_int_equal(cy_wh_template_new(CY_WH_BODY_JSON, many_json, &t, NULL, 0), 0);
    assert_int_equal(cy_wh_render(t, &e, &b, NULL), CY_ERANGE);
    cy_wh_template_free(t);
    /* Escaping counts: 200 KiB of control bytes is 1.2 MB of \u00XX. */
    memset(data, 1, 200 * 1024);
    e = ev("n", data, 200 * 1024, DEV);
    assert_int_equal(cy_wh_template_new(CY_WH_BODY_DEFAULT, NULL, &t, NULL, 0), 0);
    assert_int_equal(cy_wh_render(t, &e, &b, NULL), CY_ERANGE);
    /* Base64 of data that is not UTF-8 grows by a third. */
    memset(data, 0xff, max);
    e = ev("n", data, max * 3 / 4 + 3, DEV);
    assert_int_equal(cy_wh_render(t, &e, &b, NULL), CY_ERANGE);
    e.data_len = 1000;
    assert_int_equal(cy_wh_render(t, &e, &b, NULL), 0);
    cy_wh_template_free(t);
    /* URL encoding triples. */
    memset(data, '/', max);
    e = ev("n", data, max / 3 + 1, DEV);
    assert_int_equal(cy_wh_render_text("{{data}}", &e, true, &b), CY_ERANGE);
    e.data_len = max / 3 - 100;
    cy_buf_reset(&b);
    assert_int_equal(cy_wh_render_text("{{data}}", &e, true, &b), 0);
    assert_int_equal(cy_buf_size(&b), (max / 3 - 100) * 3);
    cy_buf_fini(&b);
    free(data);
}

static void test_bad_args(void **state)
{
    (void)state;
    cy_wh_template *t;
    assert_int_equal(cy_wh_template_new(CY_WH_BODY_DEFAULT, NULL, &t, NULL, 0), 0);
    cy_buf b;
    cy_buf_init(&b);
    cy_wh_event e = evs("n", "d");
    assert_int_equal(cy_wh_render(NULL, &e, &b, NULL), CY_EINVAL);
    assert_int_equal(cy_wh_render(t, NULL, &b, NULL), CY_EINVAL);
    assert_int_equal(cy_wh_render(t, &e, NULL, NULL), CY_EINVAL);
    e.data = NULL; /* with a length */
    assert_int_equal(cy_wh_render(t, &e, &b, NULL), CY_EINVAL);
    e = evs("n", "d");
    e.name = NULL;
    assert_int_equal(cy_wh_render(t, &e, &b, NULL), CY_EINVAL);
    e.name_len = 0; /* no name at all is fine */
    e.id = NULL;
    assert_int_equal(cy_wh_render(t, &e, &b, NULL), 0);
    assert_int_equal(cy_buf_put_u8(&b, 0), 0);
    assert_non_null(strstr((const char *)cy_buf_head(&b), "\"event_id\":\"\",\"name\":\"\""));
    cy_buf_fini(&b);
    cy_wh_template_free(t);
    cy_wh_template_free(NULL);
}

/* Every allocation of making and rendering a template may fail: the result
 * is CY_ENOMEM (or success) and nothing leaks (ASan, valgrind). Then again
 * with jansson on cy_alloc's functions, so that its allocations fail too:
 * jansson reports some of those as syntax errors, so CY_EINVAL is allowed
 * there, and a failure inside the parse of the data reads as data that is
 * not JSON (its fields render empty: render.c says so), so only the first
 * round compares the output with a clean run. The point of the second is
 * no crash and no leak. */
static void test_alloc_failure(void **state)
{
    (void)state;
    static const struct {
        cy_wh_body_kind kind;
        const char *tmpl;
    } cases[] = {
        {CY_WH_BODY_DEFAULT, NULL},
        {CY_WH_BODY_TEXT, "{{name}} {{data}} {{data.a}}"},
        {CY_WH_BODY_JSON, "{\"{{name}}\": [\"{{data.a}}\", \"x{{data}}\"]}"},
        {CY_WH_BODY_FORM, "{\"k\": \"{{data.a}}\"}"},
    };
    const char *json = "{\"a\":{\"b\":[1,2,\"\xc3\xa9\"]}}";
    cy_wh_event e = ev("n", json, strlen(json), DEV);
    cy_wh_event bin = ev("n", "\xff\xfe", 2, DEV);
    for (int jansson_fails = 0; jansson_fails < 2; jansson_fails++) {
        if (jansson_fails) json_set_alloc_funcs(cy_malloc, cy_free);
        for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
            size_t full = 0;
            for (long n = 0;; n++) {
                cy_alloc_fail_after(n);
                cy_wh_template *t = NULL;
                cy_buf b;
                cy_buf_init(&b);
                int rc = cy_wh_template_new(cases[c].kind, cases[c].tmpl, &t, NULL, 0);
                if (rc == 0) rc = cy_wh_render(t, &e, &b, NULL);
                if (rc == 0) rc = cy_wh_render(t, &bin, &b, NULL);
                if (rc == 0) rc = cy_wh_render_text("{{data}}/{{data.a}}", &e, true, &b);
                cy_alloc_fail_after(-1);
                size_t got = cy_buf_size(&b);
                cy_buf_fini(&b);
                cy_wh_template_free(t);
                if (rc == 0) {
                    /* The same bytes as without failures (rendered once more). */
                    cy_buf_init(&b);
                    assert_int_equal(cy_wh_template_new(cases[c].kind, cases[c].tmpl, &t, NULL, 0),
                                     0);
                    assert_int_equal(cy_wh_render(t, &e, &b, NULL), 0);
                    assert_int_equal(cy_wh_render(t, &bin, &b, NULL), 0);
                    assert_int_equal(cy_wh_render_text("{{data}}/{{data.a}}", &e, true, &b), 0);
                    full = cy_buf_size(&b);
                    cy_buf_fini(&b);
                    cy_wh_template_free(t);
                    if (!jansson_fails) assert_int_equal(got, full);
                    break;
                }
                if (rc != CY_ENOMEM && !(jansson_fails && rc == CY_EINVAL))
                    fail_msg("case %zu, failing after %ld: %d", c, n, rc);
                assert_true(n < 1000);
            }
        }
    }
    json_set_alloc_funcs(malloc, free);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_body), cmocka_unit_test(test_default_binary),
        cmocka_unit_test(test_text),         cmocka_unit_test(test_json),
        cmocka_unit_test(test_form),         cmocka_unit_test(test_render_text),
        cmocka_unit_test(test_malformed),    cmocka_unit_test(test_limits),
        cmocka_unit_test(test_bad_args),     cmocka_unit_test(test_alloc_failure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
