/* Unit tests of the API's pure pieces: the route table (every route needs
 * exactly one scope, is found by its own path, and is in docs/api.md's
 * table of scopes with that scope), the matcher's 404/405 answers, path
 * splitting, CORS origin matching, and stream tokens (mint and verify with
 * an injected clock: expiry to the millisecond, any change of the text
 * refused, another key refused).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "api/api_int.h"
#include "api/api_routes.h"
#include "api/api_stream_token.h"
#include "core/cy_err.h"
#include "store/store.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the route table ---- */

static unsigned popcount(unsigned v)
{
    unsigned n = 0;
    for (; v; v &= v - 1)
        n++;
    return n;
}

/* A path that pattern matches: "*" becomes a segment of its own ("x<i>";
 * an event id "0-1" before "trace"), "**" two segments. seg points into
 * buf. */
static unsigned example(const char *pattern, char *buf, size_t cap, char *seg[API_MAX_SEGMENTS])
{
    size_t used = 0;
    unsigned n = 0;
    char tmp[128];
    snprintf(tmp, sizeof(tmp), "%s", pattern);
    char *save = NULL;
    for (char *t = strtok_r(tmp, "/", &save); t; t = strtok_r(NULL, "/", &save)) {
        const char *parts[2] = {t, NULL};
        char star[16];
        if (!strcmp(t, "*")) {
            snprintf(star, sizeof(star), "x%u", n);
            parts[0] = star;
            if (!strcmp(pattern, "events/*/trace")) parts[0] = "0-1";
        } else if (!strcmp(t, "**")) {
            parts[0] = "a";
            parts[1] = "b";
        }
        for (int k = 0; k < 2 && parts[k]; k++) {
            size_t len = strlen(parts[k]) + 1;
            assert_true(used + len <= cap);
            memcpy(buf + used, parts[k], len);
            seg[n++] = buf + used;
            used += len;
        }
    }
    return n;
}

static void test_api_routes_each_needs_one_scope_and_is_found(void **state)
{
    (void)state;
    size_t n;
    const api_route *rt = cy_api_routes(&n);
    assert_true(n > 20);
    unsigned used = 0;
    for (size_t i = 0; i < n; i++) {
        const api_route *r = &rt[i];
        if (r->op == API_OP_HEALTH) {
            assert_int_equal(r->scope, 0); /* the one public route */
            assert_string_equal(r->pattern, "health");
        } else {
            assert_int_equal(popcount(r->scope), 1);
            assert_true((r->scope & CY_SCOPE_ALL) == r->scope);
            assert_non_null(cy_scope_name(r->scope));
        }
        used |= r->scope;
        assert_true(!strcmp(r->method, "GET") || !strcmp(r->method, "POST") ||
                    !strcmp(r->method, "PATCH") || !strcmp(r->method, "DELETE"));
        /* Streams are GETs of events, and the only routes a stream token opens. */
        if (r->stream) {
            assert_string_equal(r->method, "GET");
            assert_int_equal(r->scope, CY_SCOPE_EVENTS_READ);
        }
        char buf[256], *seg[API_MAX_SEGMENTS];
        unsigned nseg = example(r->pattern, buf, sizeof(buf), seg);
        const api_route *got = cy_api_route_find(r->method, seg, nseg, NULL, 0);
        assert_non_null(got);
        assert_int_equal(got->op, r->op);
        assert_int_equal(got->scope, r->scope);
        /* No two routes of one method take the same path (but the trace,
         * which the stream pattern also matches). */
        for (size_t j = 0; j < n; j++) {
            if (j == i || strcmp(rt[j].method, r->method) || strcmp(rt[j].pattern, r->pattern))
                continue;
            fail_msg("%s %s twice", r->method, r->pattern);
        }
    }
    assert_int_equal(used, CY_SCOPE_ALL); /* every scope opens something */
}

static const api_route *find(const char *method, const char *path, char *allow, size_t cap)
{
    static char buf[512];
    static char *seg[API_MAX_SEGMENTS];
    snprintf(buf, sizeof(buf), "%s", path);
    unsigned nseg = cy_api_split(buf, seg);
    if (!nseg) {
        if (allow) allow[0] = '\0';
        return NULL;
    }
    return cy_api_route_find(method, seg, nseg, allow, cap);
}

static void test_api_routes_scopes_of_the_issue(void **state)
{
    (void)state;
    struct {
        const char *method, *path;
        unsigned scope;
    } want[] = {
        {"GET", "/v1/devices", CY_SCOPE_DEVICES_READ},
        {"GET", "/v1/devices/kitchen", CY_SCOPE_DEVICES_READ},
        {"POST", "/v1/devices", CY_SCOPE_ADMIN},
        {"DELETE", "/v1/devices/kitchen", CY_SCOPE_ADMIN},
        {"PATCH", "/v1/devices/kitchen", CY_SCOPE_ADMIN},
        {"POST", "/v1/devices/kitchen/psk", CY_SCOPE_ADMIN},
        {"POST", "/v1/devices/kitchen/functions/led", CY_SCOPE_DEVICES_CALL},
        {"GET", "/v1/devices/kitchen/variables/temp", CY_SCOPE_DEVICES_CALL},
        {"GET", "/v1/devices/kitchen/events", CY_SCOPE_EVENTS_READ},
        {"GET", "/v1/devices/kitchen/events/a/b/c", CY_SCOPE_EVENTS_READ},
        {"GET", "/v1/events", CY_SCOPE_EVENTS_READ},
        {"GET", "/v1/events/temp/inside", CY_SCOPE_EVENTS_READ},
        {"GET", "/v1/events/2-17/trace", CY_SCOPE_EVENTS_READ},
        {"POST", "/v1/events", CY_SCOPE_EVENTS_PUBLISH},
        {"POST", "/v1/events/stream-token", CY_SCOPE_EVENTS_READ},
        {"GET", "/v1/webhooks", CY_SCOPE_WEBHOOKS_MANAGE},
        {"GET", "/v1/webhooks/wh_1", CY_SCOPE_WEBHOOKS_MANAGE},
        {"GET", "/v1/webhooks/wh_1/dead-letters", CY_SCOPE_WEBHOOKS_MANAGE},
        {"POST", "/v1/webhooks/wh_1/dead-letters/2-5/replay", CY_SCOPE_WEBHOOKS_MANAGE},
        {"GET", "/v1/tokens", CY_SCOPE_ADMIN},
        {"POST", "/v1/tokens", CY_SCOPE_ADMIN},
        {"DELETE", "/v1/tokens/0123456789ab", CY_SCOPE_ADMIN},
        {"POST", "/v1/devices/kitchen/led", CY_SCOPE_DEVICES_CALL},
        {"GET", "/v1/devices/kitchen/temp", CY_SCOPE_DEVICES_CALL},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        const api_route *r = find(want[i].method, want[i].path, NULL, 0);
        if (!r) fail_msg("%s %s: no route", want[i].method, want[i].path);
        if (r->scope != want[i].scope)
            fail_msg("%s %s: scope %s", want[i].method, want[i].path, cy_scope_name(r->scope));
    }
    /* A trace only for an event id: else a stream of that prefix. */
    assert_int_equal(find("GET", "/v1/events/2-17/trace", NULL, 0)->op, API_OP_EVENT_TRACE);
    assert_int_equal(find("GET", "/v1/events/temp/trace", NULL, 0)->op, API_OP_EVENTS_STREAM);
    assert_true(find("GET", "/v1/events/x", NULL, 0)->stream);
    assert_false(find("GET", "/v1/devices/x", NULL, 0)->stream);
}

static void test_api_routes_404_and_405(void **state)
{
    (void)state;
    char allow[96];
    assert_null(find("PUT", "/v1/devices", allow, sizeof(allow)));
    assert_string_equal(allow, "GET, POST");
    assert_null(find("POST", "/v1/devices/x", allow, sizeof(allow)));
    assert_string_equal(allow, "GET, PATCH, DELETE");
    assert_null(find("GET", "/v1/devices/x/functions/f", allow, sizeof(allow)));
    assert_string_equal(allow, "POST");
    assert_non_null(find("DELETE", "/v1/webhooks/w", allow, sizeof(allow)));
    assert_null(find("PUT", "/v1/webhooks/w", allow, sizeof(allow)));
    assert_string_equal(allow, "GET, PATCH, DELETE");
    assert_null(find("HEAD", "/v1/events/2-1/trace", allow, sizeof(allow)));
    assert_string_equal(allow, "GET"); /* once, though two GET routes match */
    assert_null(find("OPTIONS", "/v1/events", allow, sizeof(allow)));
    assert_string_equal(allow, "GET, POST");
    assert_null(find("GET", "/v1/nothing", allow, sizeof(allow)));
    assert_string_equal(allow, "");
    assert_null(find("GET", "/v1/devices/x/y/z", allow, sizeof(allow)));
    assert_string_equal(allow, "");
    assert_null(find("PUT", "/v1/devices/x/y", allow, sizeof(allow)));
    assert_string_equal(allow, "POST, GET"); /* Particle's function and variable */
    assert_null(find("GET", "/v2/devices", allow, sizeof(allow)));
    assert_string_equal(allow, "");
    /* A short buffer is cut, never overrun. */
    char tiny[6];
    assert_null(find("PUT", "/v1/webhooks/w", tiny, sizeof(tiny)));
    assert_true(strlen(tiny) < sizeof(tiny));
}

/* Particle's paths: a name right after the device, unless it is one of
 * cyan's own sub-paths, whose routes (or 404, 405) win whatever the method. */
static void test_api_routes_particle_paths(void **state)
{
    (void)state;
    char allow[96];
    assert_int_equal(find("POST", "/v1/devices/x/led", NULL, 0)->op, API_OP_PARTICLE_CALL);
    assert_int_equal(find("GET", "/v1/devices/x/temp", NULL, 0)->op, API_OP_PARTICLE_VARIABLE);
    assert_false(find("GET", "/v1/devices/x/temp", NULL, 0)->stream);
    /* Not the names the table uses after devices/{id}/. */
    assert_int_equal(find("POST", "/v1/devices/x/psk", NULL, 0)->op, API_OP_DEVICE_PSK);
    assert_null(find("GET", "/v1/devices/x/psk", allow, sizeof(allow)));
    assert_string_equal(allow, "POST");
    assert_int_equal(find("GET", "/v1/devices/x/events", NULL, 0)->op, API_OP_DEVICE_EVENTS);
    assert_null(find("POST", "/v1/devices/x/events", allow, sizeof(allow)));
    assert_string_equal(allow, "GET");
    const char *none[] = {"/v1/devices/x/functions", "/v1/devices/x/variables"};
    for (size_t i = 0; i < 2; i++) {
        assert_null(find("GET", none[i], allow, sizeof(allow)));
        assert_string_equal(allow, "");
        assert_null(find("POST", none[i], allow, sizeof(allow)));
        assert_string_equal(allow, "");
    }
    /* Only whole segments: a name that starts like a sub-path is a name. */
    const char *names[] = {"pskx", "ps", "event", "eventsx", "function", "variables2", "*", "-"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        assert_false(cy_api_device_subpath(names[i]));
        char path[64];
        snprintf(path, sizeof(path), "/v1/devices/x/%s", names[i]);
        const api_route *r = find("POST", path, NULL, 0);
        if (!r || r->op != API_OP_PARTICLE_CALL) fail_msg("POST %s is not Particle's", path);
    }
    const char *subs[] = {"psk", "events", "functions", "variables"};
    for (size_t i = 0; i < 4; i++)
        assert_true(cy_api_device_subpath(subs[i]));
    assert_false(cy_api_device_subpath(""));
}

static void test_api_split(void **state)
{
    (void)state;
    char *seg[API_MAX_SEGMENTS];
    char p1[] = "/v1/devices/abc/functions/led";
    assert_int_equal(cy_api_split(p1, seg), 4);
    assert_string_equal(seg[0], "devices");
    assert_string_equal(seg[3], "led");
    char p2[] = "/v2/devices";
    assert_int_equal(cy_api_split(p2, seg), 0);
    char p3[] = "/v1/";
    assert_int_equal(cy_api_split(p3, seg), 0);
    char p4[] = "/v1/events/a/b/c/d/e/f/g/h/i/j";
    assert_int_equal(cy_api_split(p4, seg), API_MAX_SEGMENTS);
}

/* docs/api.md has a row "| `METHOD /v1/path` | `scope` |" for every route,
 * with {name} for "*" and {prefix} for "**"; and no row the table lacks. */
static void normalise(const char *in, char *out, size_t cap)
{
    size_t o = 0;
    for (const char *p = in; *p && o + 3 < cap; p++) {
        if (*p == '{') {
            bool prefix = !strncmp(p, "{prefix}", 8);
            const char *close = strchr(p, '}');
            if (!close) break;
            out[o++] = '*';
            if (prefix) out[o++] = '*';
            p = close;
        } else {
            out[o++] = *p;
        }
    }
    out[o] = '\0';
}

static void test_api_routes_match_the_docs(void **state)
{
    (void)state;
    char path[512];
    snprintf(path, sizeof(path), "%s", __FILE__);
    char *t = strstr(path, "tests/unit/");
    assert_non_null(t);
    strcpy(t, "docs/api.md");
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n;
    const api_route *rt = cy_api_routes(&n);
    bool *seen = calloc(n, sizeof(bool));
    char line[512];
    unsigned rows = 0;
    while (fgets(line, sizeof(line), f)) {
        char method[16], target[200], scope[40];
        if (sscanf(line, "| `%15s /v1/%199[^`]` | `%39[^`]` |", method, target, scope) != 3)
            continue;
        /* Only the scopes table: other tables of routes say what they answer. */
        unsigned bit;
        if (strcmp(scope, "none") && cy_scope_parse(scope, strlen(scope), &bit)) continue;
        rows++;
        char pattern[200];
        normalise(target, pattern, sizeof(pattern));
        bool found = false;
        for (size_t i = 0; i < n; i++) {
            if (strcmp(rt[i].method, method) || strcmp(rt[i].pattern, pattern)) continue;
            found = true;
            seen[i] = true;
            const char *want = rt[i].scope ? cy_scope_name(rt[i].scope) : "none";
            if (strcmp(want, scope))
                fail_msg("docs/api.md: %s /v1/%s says %s, the table %s", method, target, scope,
                         want);
        }
        if (!found) fail_msg("docs/api.md: %s /v1/%s is no route", method, target);
    }
    fclose(f);
    for (size_t i = 0; i < n; i++)
        if (!seen[i]) fail_msg("docs/api.md lacks %s /v1/%s", rt[i].method, rt[i].pattern);
    assert_int_equal(rows, n);
    free(seen);
}

/* ---- CORS ---- */

static void test_api_cors_allow(void **state)
{
    (void)state;
    const char *list = "https://app.example.com, http://localhost:3000";
    assert_string_equal(cy_api_cors_allow(list, "https://app.example.com"),
                        "https://app.example.com");
    assert_string_equal(cy_api_cors_allow(list, "http://localhost:3000"), "http://localhost:3000");
    assert_string_equal(cy_api_cors_allow(list, "HTTPS://APP.example.com"),
                        "HTTPS://APP.example.com");
    const char *no[] = {"https://evil.example.com",
                        "https://app.example.com.evil.com",
                        "https://app.example.co",
                        "http://app.example.com",
                        "http://localhost:30000",
                        "http://localhost",
                        "null",
                        "",
                        "*"};
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        if (cy_api_cors_allow(list, no[i])) fail_msg("%s allowed", no[i]);
    assert_null(cy_api_cors_allow("", "https://app.example.com"));
    assert_null(cy_api_cors_allow(NULL, "https://app.example.com"));
    assert_null(cy_api_cors_allow(list, NULL));
    assert_string_equal(cy_api_cors_allow("*", "https://anything.example"), "*");
    assert_string_equal(cy_api_cors_allow(" * ", "null"), "*");
    assert_null(cy_api_cors_allow("*", ""));
    assert_string_equal(cy_api_cors_allow(",,https://a.example,", "https://a.example"),
                        "https://a.example");
}

/* ---- stream tokens ---- */

static const uint8_t key[CY_REGISTRY_SUBKEY_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
static const char parent[] = "0123456789ab";
#define T0 1764855332000LL

static void test_stream_token_round_trip(void **state)
{
    (void)state;
    char tok[CY_STREAM_TOKEN_LEN + 1], got[CY_TOKEN_ID_LEN + 1];
    int64_t exp = 0;
    assert_int_equal(cy_stream_token_mint(key, parent, T0 + 60000, tok), 0);
    assert_int_equal(strlen(tok), CY_STREAM_TOKEN_LEN);
    assert_memory_equal(tok, "cys_0123456789ab_", 17);
    assert_int_equal(cy_stream_token_verify(key, tok, strlen(tok), T0, got, &exp), 0);
    assert_string_equal(got, parent);
    assert_int_equal(exp, T0 + 60000);
    /* Valid to the last millisecond before its expiry, not at it. */
    assert_int_equal(cy_stream_token_verify(key, tok, strlen(tok), T0 + 59999, got, &exp), 0);
    assert_int_equal(cy_stream_token_verify(key, tok, strlen(tok), T0 + 60000, got, &exp),
                     CY_ETIMEDOUT);
    assert_string_equal(got, parent); /* said, for the log and the answer */
    assert_int_equal(exp, T0 + 60000);
    /* The same inputs make the same text: nothing random, nothing stored. */
    char again[CY_STREAM_TOKEN_LEN + 1];
    assert_int_equal(cy_stream_token_mint(key, parent, T0 + 60000, again), 0);
    assert_string_equal(tok, again);
    /* Not NUL-terminated: the length counts. */
    char buf[CY_STREAM_TOKEN_LEN + 4];
    memcpy(buf, tok, CY_STREAM_TOKEN_LEN);
    memcpy(buf + CY_STREAM_TOKEN_LEN, "xyz", 4);
    assert_int_equal(cy_stream_token_verify(key, buf, CY_STREAM_TOKEN_LEN, T0, got, &exp), 0);
}

static void test_stream_token_any_change_refused(void **state)
{
    (void)state;
    char tok[CY_STREAM_TOKEN_LEN + 1], got[CY_TOKEN_ID_LEN + 1];
    int64_t exp = 0;
    assert_int_equal(cy_stream_token_mint(key, parent, T0 + 1000, tok), 0);
    /* Every hex character changed to another: refused, as forged
     * (CY_EACCES), never as anything else. A later expiry is the forgery
     * that matters most. */
    for (size_t i = 4; i < CY_STREAM_TOKEN_LEN; i++) {
        if (tok[i] == '_') continue;
        char t[CY_STREAM_TOKEN_LEN + 1];
        memcpy(t, tok, sizeof(t));
        t[i] = t[i] == 'f' ? '0' : (t[i] == '9' ? 'a' : (char)(t[i] + 1));
        int rc = cy_stream_token_verify(key, t, CY_STREAM_TOKEN_LEN, T0, got, &exp);
        if (rc != CY_EACCES) fail_msg("changed at %zu: %d", i, rc);
        assert_string_equal(got, "");
        assert_int_equal(exp, 0);
    }
    /* Another key (another node). */
    uint8_t other[CY_REGISTRY_SUBKEY_LEN] = {9};
    assert_int_equal(cy_stream_token_verify(other, tok, CY_STREAM_TOKEN_LEN, T0, got, &exp),
                     CY_EACCES);
}

static void test_stream_token_malformed(void **state)
{
    (void)state;
    char tok[CY_STREAM_TOKEN_LEN + 1], got[CY_TOKEN_ID_LEN + 1];
    int64_t exp;
    assert_int_equal(cy_stream_token_mint(key, parent, T0 + 1000, tok), 0);
    assert_int_equal(cy_stream_token_verify(key, tok, CY_STREAM_TOKEN_LEN - 1, T0, got, &exp),
                     CY_EINVAL);
    assert_int_equal(cy_stream_token_verify(key, tok, CY_STREAM_TOKEN_LEN + 1, T0, got, &exp),
                     CY_EINVAL);
    const size_t at[] = {0, 3, 16, 29, 5, 20, 40};
    const char with[] = {'x', '-', 'x', '-', 'A', 'G', '\0'};
    for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
        char t[CY_STREAM_TOKEN_LEN + 1];
        memcpy(t, tok, sizeof(t));
        t[at[i]] = with[i];
        assert_int_equal(cy_stream_token_verify(key, t, CY_STREAM_TOKEN_LEN, T0, got, &exp),
                         CY_EINVAL);
    }
    /* A long-lived token is no stream token. */
    const char *cyt = "cyt_0123456789ab_0123456789abcdef0123456789abcdef";
    assert_int_equal(cy_stream_token_verify(key, cyt, strlen(cyt), T0, got, &exp), CY_EINVAL);
    assert_int_equal(cy_stream_token_verify(NULL, tok, CY_STREAM_TOKEN_LEN, T0, got, &exp),
                     CY_EINVAL);
    assert_int_equal(cy_stream_token_verify(key, NULL, 0, T0, got, &exp), CY_EINVAL);
    assert_int_equal(cy_stream_token_verify(key, tok, CY_STREAM_TOKEN_LEN, T0, NULL, &exp),
                     CY_EINVAL);
    assert_int_equal(cy_stream_token_verify(key, tok, CY_STREAM_TOKEN_LEN, T0, got, NULL),
                     CY_EINVAL);
    /* Mint refuses what it cannot write. */
    assert_int_equal(cy_stream_token_mint(key, "0123456789AB", T0, tok), CY_EINVAL);
    assert_string_equal(tok, "");
    assert_int_equal(cy_stream_token_mint(key, "0123", T0, tok), CY_EINVAL);
    assert_int_equal(cy_stream_token_mint(key, parent, 0, tok), CY_EINVAL);
    assert_int_equal(cy_stream_token_mint(key, parent, (int64_t)1 << 48, tok), CY_EINVAL);
    assert_int_equal(cy_stream_token_mint(key, NULL, T0, tok), CY_EINVAL);
    assert_int_equal(cy_stream_token_mint(NULL, parent, T0, tok), CY_EINVAL);
    assert_int_equal(cy_stream_token_mint(key, parent, T0, NULL), CY_EINVAL);
}

/* RFC 6455's own example (section 1.3), and the token lists of the
 * handshake's headers. */
static void test_api_ws_handshake_pieces(void **state)
{
    (void)state;
    char out[29];
    cy_api_ws_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out);
    assert_string_equal(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    assert_true(cy_api_ws_has_token("mqtt", "mqtt"));
    assert_true(cy_api_ws_has_token("wamp, MQTT", "mqtt"));
    assert_true(cy_api_ws_has_token(" keep-alive ,Upgrade ", "upgrade"));
    assert_true(cy_api_ws_has_token(",,mqtt,", "mqtt"));
    assert_false(cy_api_ws_has_token("mqttv3.1", "mqtt"));
    assert_false(cy_api_ws_has_token("xmqtt", "mqtt"));
    assert_false(cy_api_ws_has_token("mq tt", "mqtt"));
    assert_false(cy_api_ws_has_token("", "mqtt"));
    assert_false(cy_api_ws_has_token(NULL, "mqtt"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_api_routes_each_needs_one_scope_and_is_found),
        cmocka_unit_test(test_api_ws_handshake_pieces),
        cmocka_unit_test(test_api_routes_scopes_of_the_issue),
        cmocka_unit_test(test_api_routes_404_and_405),
        cmocka_unit_test(test_api_routes_particle_paths),
        cmocka_unit_test(test_api_split),
        cmocka_unit_test(test_api_routes_match_the_docs),
        cmocka_unit_test(test_api_cors_allow),
        cmocka_unit_test(test_stream_token_round_trip),
        cmocka_unit_test(test_stream_token_any_change_refused),
        cmocka_unit_test(test_stream_token_malformed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
