/* Tests of the CLI's pure pieces (src/cli/text.c, sse.c, the flag table
 * of cli.c): the API's URL from a listener setting, base URLs checked and
 * refused, the same-node rule that keeps the admin token at home, API
 * times and ages, the line of a setting in a config file, and the
 * server-sent events parser fed whole and byte by byte, with every line
 * end, comments, ids that persist, and a line over the limit.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "cli/cli_int.h"
#include "core/cy_alloc.h"
#include "core/cy_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- listener -> URL ---- */

static void test_cy_cli_listen_url(void **state)
{
    (void)state;
    char out[128];
    assert_int_equal(cy_cli_listen_url("127.0.0.1:8080", false, out, sizeof(out)), 0);
    assert_string_equal(out, "http://127.0.0.1:8080");
    assert_int_equal(cy_cli_listen_url("0.0.0.0:8080", true, out, sizeof(out)), 0);
    assert_string_equal(out, "https://127.0.0.1:8080");
    assert_int_equal(cy_cli_listen_url("*:80", false, out, sizeof(out)), 0);
    assert_string_equal(out, "http://127.0.0.1:80");
    assert_int_equal(cy_cli_listen_url(":9", false, out, sizeof(out)), 0);
    assert_string_equal(out, "http://127.0.0.1:9");
    assert_int_equal(cy_cli_listen_url("[::]:8080", false, out, sizeof(out)), 0);
    assert_string_equal(out, "http://[::1]:8080");
    assert_int_equal(cy_cli_listen_url("[::1]:8080", false, out, sizeof(out)), 0);
    assert_string_equal(out, "http://[::1]:8080");
    assert_int_equal(cy_cli_listen_url("10.1.2.3:1", false, out, sizeof(out)), 0);
    assert_string_equal(out, "http://10.1.2.3:1");
    assert_int_equal(cy_cli_listen_url("", false, out, sizeof(out)), CY_ENOENT);
    assert_int_equal(cy_cli_listen_url(NULL, false, out, sizeof(out)), CY_ENOENT);
    static const char *const bad[] = {"8080",       "host:",    "host:x",  "host:-1",
                                      "host:70000", "::1:8080", "[::1:80", "a b:80",
                                      "a/b:80",     "u@h:80",   "[]:80",   "host:8080 "};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (cy_cli_listen_url(bad[i], false, out, sizeof(out)) != CY_EINVAL)
            fail_msg("'%s' taken", bad[i]);
    char tiny[10];
    assert_int_equal(cy_cli_listen_url("127.0.0.1:8080", false, tiny, sizeof(tiny)), CY_ERANGE);
}

/* ---- base URLs ---- */

static void test_cy_cli_base_url(void **state)
{
    (void)state;
    char out[128];
    const char *why = NULL;
    assert_int_equal(cy_cli_base_url("http://127.0.0.1:8080/", out, sizeof(out), &why), 0);
    assert_string_equal(out, "http://127.0.0.1:8080");
    assert_int_equal(cy_cli_base_url("HTTPS://cyan.example.com", out, sizeof(out), &why), 0);
    assert_string_equal(out, "HTTPS://cyan.example.com");
    assert_int_equal(cy_cli_base_url("https://h/proxy/cyan//", out, sizeof(out), &why), 0);
    assert_string_equal(out, "https://h/proxy/cyan");
    assert_int_equal(cy_cli_base_url("http://[::1]:8080", out, sizeof(out), &why), 0);
    assert_string_equal(out, "http://[::1]:8080");
    static const char *const bad[] = {
        "127.0.0.1:8080",     "ftp://h",         "http://",
        "http://:80",         "http://h:",       "http://h:0",
        "http://h:65536",     "http://h:8x",     "http://u:p@h",
        "http://h/?q=1",      "http://h#f",      "http://h h",
        "http://h\n",         "http://[::1",     "http://[]:80",
        "http://h\x7f",       "http://bad!host", "http://h:99999999999999999999",
        "file:///etc/passwd", "http://[zz]:80",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why = NULL;
        if (cy_cli_base_url(bad[i], out, sizeof(out), &why) != CY_EINVAL)
            fail_msg("'%s' taken", bad[i]);
        assert_non_null(why);
    }
    assert_int_equal(cy_cli_base_url("http://h", out, sizeof(out), NULL), 0);
    assert_int_equal(cy_cli_base_url("http://u@h", out, sizeof(out), NULL), CY_EINVAL);
    char tiny[8];
    assert_int_equal(cy_cli_base_url("http://host", tiny, sizeof(tiny), &why), CY_ERANGE);
}

static void test_cy_cli_same_node(void **state)
{
    (void)state;
    assert_true(cy_cli_same_node("http://127.0.0.1:8080", "http://127.0.0.1:8080"));
    assert_true(cy_cli_same_node("http://localhost:8080", "http://127.0.0.1:8080"));
    assert_true(cy_cli_same_node("http://[::1]:8080/x", "http://127.0.0.2:8080"));
    assert_true(cy_cli_same_node("http://Example.com", "http://example.com:80"));
    assert_true(cy_cli_same_node("https://h", "https://h:443"));
    assert_false(cy_cli_same_node("http://127.0.0.1:8080", "https://127.0.0.1:8080"));
    assert_false(cy_cli_same_node("http://127.0.0.1:8080", "http://127.0.0.1:8081"));
    assert_false(cy_cli_same_node("http://evil.example:8080", "http://127.0.0.1:8080"));
    assert_false(cy_cli_same_node("http://127.0.0.1.evil:8080", "http://127.0.0.1:8080"));
    assert_false(cy_cli_same_node("http://10.0.0.1:8080", "http://10.0.0.2:8080"));
    assert_false(cy_cli_same_node("nonsense", "http://127.0.0.1:8080"));
    assert_false(cy_cli_same_node(NULL, "http://127.0.0.1:8080"));
}

/* ---- times ---- */

static void test_cy_cli_time_ms_and_age(void **state)
{
    (void)state;
    int64_t ms = 0;
    assert_int_equal(cy_cli_time_ms("1970-01-01T00:00:01.250Z", &ms), 0);
    assert_int_equal(ms, 1250);
    assert_int_equal(cy_cli_time_ms("2026-11-24T06:05:00.001Z", &ms), 0);
    assert_int_equal(ms, 1795500300001LL);
    assert_int_equal(cy_cli_time_ms("2026-11-24T06:05:00Z", &ms), 0);
    assert_int_equal(ms, 1795500300000LL);
    assert_int_equal(cy_cli_time_ms("2026-11-24T06:05:00.5Z", &ms), 0);
    assert_int_equal(ms, 1795500300500LL);
    static const char *const bad[] = {"",
                                      "2026-11-24",
                                      "2026-11-24T06:05:00.001",
                                      "2026-11-24T06:05:00.Z",
                                      "2026-13-24T06:05:00Z",
                                      "2026-11-24T25:05:00Z",
                                      "2026-11-24 06:05:00Z",
                                      "2026-11-24T06:05:00Zx",
                                      "x026-11-24T06:05:00Z"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        if (cy_cli_time_ms(bad[i], &ms) != CY_EINVAL) fail_msg("'%s' taken", bad[i]);
    assert_int_equal(cy_cli_time_ms(NULL, &ms), CY_EINVAL);
    char out[32];
    cy_cli_age(-5000, out, sizeof(out));
    assert_string_equal(out, "now");
    cy_cli_age(999, out, sizeof(out));
    assert_string_equal(out, "now");
    cy_cli_age(12000, out, sizeof(out));
    assert_string_equal(out, "12s ago");
    cy_cli_age(119999, out, sizeof(out));
    assert_string_equal(out, "119s ago");
    cy_cli_age(5 * 60000, out, sizeof(out));
    assert_string_equal(out, "5m ago");
    cy_cli_age(3 * 3600000LL, out, sizeof(out));
    assert_string_equal(out, "3h ago");
    cy_cli_age(4 * 86400000LL, out, sizeof(out));
    assert_string_equal(out, "4d ago");
}

/* ---- the line of a setting ---- */

static void test_cy_cli_config_line(void **state)
{
    (void)state;
    const char *t = "# a comment with shards = 9\n"
                    "\n"
                    "  shards = 2   # two\n"
                    "mqtt_listen=127.0.0.1:1\r\n"
                    "shards_x = 3\n"
                    "http_listen # = commented\n"
                    "shards = 4";
    size_t n = strlen(t);
    assert_int_equal(cy_cli_config_line(t, n, "shards"), 7); /* the last one counts */
    assert_int_equal(cy_cli_config_line(t, n, "mqtt_listen"), 4);
    assert_int_equal(cy_cli_config_line(t, n, "shards_x"), 5);
    assert_int_equal(cy_cli_config_line(t, n, "http_listen"), 0);
    assert_int_equal(cy_cli_config_line(t, n, "data_dir"), 0);
    assert_int_equal(cy_cli_config_line(t, n, "shard"), 0);
    assert_int_equal(cy_cli_config_line(t, 20, "shards"), 0); /* the comment alone */
    assert_int_equal(cy_cli_config_line("", 0, "shards"), 0);
    assert_int_equal(cy_cli_config_line(NULL, 0, "shards"), 0);
    /* A byte order mark is skipped, as the loader skips it. */
    assert_int_equal(cy_cli_config_line("\xEF\xBB\xBFshards = 2\n", 14, "shards"), 1);
}

/* ---- server-sent events ---- */

typedef struct seen {
    char text[4096];
    int stop_at; /* return 1 from the nth event (1-based); 0 never */
    int events;
} seen;

static int on_event(void *ctx, const char *type, const char *id, const char *data, size_t len)
{
    seen *s = ctx;
    assert_int_equal(strlen(data), len);
    size_t used = strlen(s->text);
    snprintf(s->text + used, sizeof(s->text) - used, "E[%s|%s|%s]", type, id, data);
    return ++s->events == s->stop_at ? 1 : 0;
}

static int on_comment(void *ctx, const char *text)
{
    seen *s = ctx;
    size_t used = strlen(s->text);
    snprintf(s->text + used, sizeof(s->text) - used, "C[%s]", text);
    return 0;
}

static const char stream_text[] = ": cyan event stream, shard 0\n\n"
                                  "id: 1-5\nevent: temp\ndata: {\"a\":1}\n\n"
                                  ": heartbeat\n\n"
                                  "data: no id yet\r\n"
                                  "data:second line\r\n\r\n"
                                  "id: 2-9\rdata: cr only\r\r"
                                  "event: ignored without data\n\n"
                                  "retry: 10\nunknown: x\nid\ndata\n\n"
                                  "id: 3-1\nevent: last\ndata: x\n\n";

static const char stream_want[] = "C[cyan event stream, shard 0]"
                                  "E[temp|1-5|{\"a\":1}]"
                                  "C[heartbeat]"
                                  "E[|1-5|no id yet\nsecond line]"
                                  "E[|2-9|cr only]"
                                  "E[||]"
                                  "E[last|3-1|x]";

static void test_cy_sse_whole_and_byte_by_byte(void **state)
{
    (void)state;
    for (int bytewise = 0; bytewise < 2; bytewise++) {
        seen s;
        memset(&s, 0, sizeof(s));
        cy_sse p;
        cy_sse_init(&p);
        cy_sse_cb cb = {on_event, on_comment, &s};
        size_t n = strlen(stream_text);
        if (bytewise)
            for (size_t i = 0; i < n; i++)
                assert_int_equal(cy_sse_feed(&p, stream_text + i, 1, &cb), 0);
        else
            assert_int_equal(cy_sse_feed(&p, stream_text, n, &cb), 0);
        assert_string_equal(s.text, stream_want);
        assert_string_equal(p.id, "3-1");
        cy_sse_fini(&p);
    }
}

static void test_cy_sse_stop_partial_and_limits(void **state)
{
    (void)state;
    seen s;
    memset(&s, 0, sizeof(s));
    s.stop_at = 1;
    cy_sse p;
    cy_sse_init(&p);
    cy_sse_cb cb = {on_event, NULL, &s}; /* comments ignored without a callback */
    const char *two = ": hi\ndata: a\n\ndata: b\n\n";
    assert_int_equal(cy_sse_feed(&p, two, strlen(two), &cb), 1);
    assert_string_equal(s.text, "E[||a]");
    cy_sse_fini(&p);

    /* An event cut short (a dropped connection) is never dispatched. */
    memset(&s, 0, sizeof(s));
    cy_sse_init(&p);
    assert_int_equal(cy_sse_feed(&p, "id: 7\ndata: half", 16, &cb), 0);
    assert_string_equal(s.text, "");
    assert_string_equal(p.id, "7");
    cy_sse_fini(&p);

    /* An id too long to resume from is not taken. */
    cy_sse_init(&p);
    char big[CY_SSE_ID_MAX + 16];
    memset(big, 'x', sizeof(big));
    memcpy(big, "id: ", 4);
    big[sizeof(big) - 1] = '\n';
    assert_int_equal(cy_sse_feed(&p, big, sizeof(big), &cb), 0);
    assert_string_equal(p.id, "");
    cy_sse_fini(&p);

    /* A line over the limit, however it is fed. */
    cy_sse_init(&p);
    size_t chunk = 1 << 20;
    char *junk = malloc(chunk);
    assert_non_null(junk);
    memset(junk, 'd', chunk);
    int rc = 0;
    for (int i = 0; i < 6 && rc == 0; i++)
        rc = cy_sse_feed(&p, junk, chunk, &cb);
    assert_int_equal(rc, CY_EMSGSIZE);
    free(junk);
    cy_sse_fini(&p);
}

/* Every allocation the parser makes, failed in turn: CY_ENOMEM, never a
 * crash or a leak (ASan, valgrind), and the parser still usable. */
static void test_cy_sse_alloc_failures(void **state)
{
    (void)state;
    bool completed = false;
    for (long n = 0; n < 64 && !completed; n++) {
        seen s;
        memset(&s, 0, sizeof(s));
        cy_sse p;
        cy_sse_init(&p);
        cy_sse_cb cb = {on_event, on_comment, &s};
        cy_alloc_fail_after(n);
        int rc = cy_sse_feed(&p, stream_text, strlen(stream_text), &cb);
        cy_alloc_fail_after(-1);
        if (rc == 0) {
            assert_string_equal(s.text, stream_want);
            completed = true;
        } else {
            assert_int_equal(rc, CY_ENOMEM);
        }
        cy_sse_fini(&p);
    }
    assert_true(completed);
}

/* ---- flags ---- */

static void test_cy_cli_flags(void **state)
{
    (void)state;
    assert_true(cy_cli_is_flag("--url"));
    assert_true(cy_cli_is_flag("--url=http://x"));
    assert_true(cy_cli_is_flag("--token=t"));
    assert_true(cy_cli_is_flag("--check"));
    assert_false(cy_cli_is_flag("--check=1"));
    assert_false(cy_cli_is_flag("--json=1"));
    assert_false(cy_cli_is_flag("--urlx"));
    assert_false(cy_cli_is_flag("--shards=2"));
    assert_false(cy_cli_is_flag(NULL));
    assert_true(cy_cli_flag_of("call", "--timeout"));
    assert_true(cy_cli_flag_of("get", "--timeout=3"));
    assert_false(cy_cli_flag_of("publish", "--timeout"));
    assert_true(cy_cli_flag_of("subscribe", "--device"));
    assert_false(cy_cli_flag_of("call", "--device"));
    assert_true(cy_cli_flag_of("list", "--json"));
    assert_true(cy_cli_flag_of("device", "--url"));
    assert_true(cy_cli_flag_of("config", "--check"));
    assert_false(cy_cli_flag_of("config", "--url"));
    assert_false(cy_cli_flag_of("status", "--url"));
    assert_false(cy_cli_flag_of("et", "--timeout")); /* not a part of "get" */
    assert_false(cy_cli_flag_of(NULL, "--url"));
    char *call[] = {"call", "d", "f"}, *ren[] = {"device", "rename"}, *dl[] = {"device", "list"};
    char *tok[] = {"token"};
    assert_true(cy_cli_is_command(call, 3));
    assert_true(cy_cli_is_command(ren, 2));
    assert_false(cy_cli_is_command(dl, 2));
    assert_false(cy_cli_is_command(ren, 1));
    assert_false(cy_cli_is_command(tok, 1));
    assert_false(cy_cli_is_command(tok, 0));
}

static void test_cy_cli_control(void **state)
{
    (void)state;
    assert_int_equal(cy_cli_control_at("\x1b[", 2), 1);
    assert_int_equal(cy_cli_control_at("\x7f", 1), 1);
    assert_int_equal(cy_cli_control_at("\xc2\x9b", 2), 2); /* U+009B, CSI */
    assert_int_equal(cy_cli_control_at("\xc2\xa0", 2), 0); /* U+00A0: printable */
    assert_int_equal(cy_cli_control_at("\xc2", 1), 0);      /* cut short: not one */
    assert_int_equal(cy_cli_control_at("a", 1), 0);
    assert_true(cy_cli_has_control("ok\xc2\x85", 4));
    assert_false(cy_cli_has_control("caf\xc3\xa9", 5));
    char s[] = "a\x1b]0;t\x07" "b\xc2\x9b" "1m\xc2\xa0";
    cy_cli_clean(s);
    assert_string_equal(s, "a?]0;t?b?1m\xc2\xa0");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cy_cli_listen_url),
        cmocka_unit_test(test_cy_cli_base_url),
        cmocka_unit_test(test_cy_cli_same_node),
        cmocka_unit_test(test_cy_cli_time_ms_and_age),
        cmocka_unit_test(test_cy_cli_control),
        cmocka_unit_test(test_cy_cli_config_line),
        cmocka_unit_test(test_cy_sse_whole_and_byte_by_byte),
        cmocka_unit_test(test_cy_sse_stop_partial_and_limits),
        cmocka_unit_test(test_cy_sse_alloc_failures),
        cmocka_unit_test(test_cy_cli_flags),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
